"""SPEC 3: service discovery, caps, version and ping on the gateway JID and
on contact JIDs."""

import rig
from rig import (NS_CAPS, NS_DISCO_INFO, NS_PING, NS_VERSION,
                 SMS_JID, child, contact, local, to_str)

GATEWAY_FEATURES = ["jabber:iq:register", "jabber:iq:gateway",
                    "urn:xmpp:receipts", "urn:xmpp:ping", "jabber:iq:version",
                    "http://jabber.org/protocol/disco#info"]


def identities(query):
    return [(i.get("category"), i.get("type"))
            for i in query.findall("{%s}identity" % NS_DISCO_INFO)]


def features(query):
    return {f.get("var") for f in query.findall("{%s}feature" % NS_DISCO_INFO)}


class TestDisco(rig.StackTest):
    def disco(self, c, to, node=None):
        attr = " node='%s'" % node if node else ""
        r = c.iq(to, "get", "<query xmlns='%s'%s/>" % (NS_DISCO_INFO, attr))
        self.assertEqual(r.get("type"), "result", to_str(r))
        self.assertEqual(r.get("from"), to)
        q = child(r, NS_DISCO_INFO, "query")
        self.assertIsNotNone(q, to_str(r))
        return q

    def test_gateway_identity_and_features(self):
        c = self.client("alice")
        q = self.disco(c, SMS_JID)
        self.assertIn(("gateway", "sms"), identities(q))
        missing = set(GATEWAY_FEATURES) - features(q)
        self.assertEqual(missing, set(), "missing features in %s" % to_str(q))

    def test_contact_identity_and_receipts(self):
        c = self.client("alice")
        q = self.disco(c, contact("+15551234567"))
        self.assertIn(("client", "sms"), identities(q))
        self.assertIn("urn:xmpp:receipts", features(q))

    def test_version(self):
        c = self.client("alice")
        r = c.iq(SMS_JID, "get", "<query xmlns='%s'/>" % NS_VERSION)
        self.assertEqual(r.get("type"), "result", to_str(r))
        q = child(r, NS_VERSION, "query")
        name = child(q, NS_VERSION, "name")
        version = child(q, NS_VERSION, "version")
        self.assertTrue(name is not None and name.text, to_str(r))
        self.assertTrue(version is not None and version.text, to_str(r))

    def test_ping_gateway_and_contact(self):
        c = self.client("alice")
        for to in (SMS_JID, contact("+15551234567")):
            r = c.iq(to, "get", "<ping xmlns='%s'/>" % NS_PING)
            self.assertEqual(r.get("type"), "result", to_str(r))
            self.assertEqual(r.get("from"), to)

    def test_caps_on_presence_match_disco(self):
        # Registration makes the gateway send presence (XEP-0100); that
        # presence must carry caps whose hash matches its disco#info.
        c = self.client("bob")
        self.stack.register(c, "+15550002222")
        p = c.wait(lambda e: local(e.tag) == "presence"
                   and e.get("from") == SMS_JID and e.get("type") is None
                   and child(e, NS_CAPS, "c") is not None,
                   what="available presence with caps from the gateway")
        caps = child(p, NS_CAPS, "c")
        self.assertEqual(caps.get("hash"), "sha-1", to_str(p))
        self.assertTrue(caps.get("node"), to_str(p))
        q = self.disco(c, SMS_JID)
        self.assertEqual(caps.get("ver"), rig.caps_ver(q),
                         "caps ver does not match disco#info %s" % to_str(q))
        # The node#ver form must be answered with the same information.
        q2 = self.disco(c, SMS_JID, "%s#%s" % (caps.get("node"),
                                               caps.get("ver")))
        self.assertEqual(rig.caps_ver(q2), caps.get("ver"), to_str(q2))

    def test_postern_survives_first_stanza(self):
        # libstrophe sm_state regression (DESIGN 7.1): answered above, and
        # the process is still alive afterwards.
        c = self.client("carol")
        self.disco(c, SMS_JID)
        self.assertTrue(self.stack.postern.proc.alive(),
                        self.stack.postern.log())


if __name__ == "__main__":
    rig.main()
