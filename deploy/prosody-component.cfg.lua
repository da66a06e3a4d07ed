-- Prosody: attach postern as external components (XEP-0114).
--
-- Put the global settings in the global section of prosody.cfg.lua (before
-- any VirtualHost) and one Component block per postern gateway, at the end
-- of the file or in /etc/prosody/conf.d/postern.cfg.lua. Each Component
-- name is a gateway's `jid` in postern.conf and its component_secret is
-- that gateway's `secret` (or the content of its `secret_file`).
-- Then: prosodyctl check config && prosodyctl reload
-- (a new Component host needs a restart on older Prosody versions).

-- Global section. 5347 is the default; listen on loopback only unless
-- postern runs on another host (then firewall the port: the secret is the
-- only protection and the stream is not encrypted).
component_ports = { 5347 }
component_interfaces = { "127.0.0.1" }

Component "sms.example.org"
    component_secret = "replace-with-the-sms-gateway-secret"

Component "email.example.org"
    component_secret = "replace-with-the-email-gateway-secret"

-- Notes:
-- * Prosody accepts one connection per component: run one postern process
--   per gateway JID (several processes sharing Redis are fine on ejabberd).
-- * While postern is disconnected Prosody bounces stanzas sent to the
--   component with an error instead of queueing them; users see the error.
-- * The users' VirtualHost needs no change. Users find the gateway by
--   service discovery on their server if you also list it:
--       disco_items = { { "sms.example.org", "SMS gateway" } }
--   (in the VirtualHost block).
