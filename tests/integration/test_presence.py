"""SPEC 3: presence. The gateway subscribes to a registered user's
presence (XEP-0100), approves subscriptions to contact JIDs, and contact
JIDs then send presence with XEP-0115 caps."""

import rig
from rig import NS_CAPS, SMS_JID, child, contact, local, to_str


def presence(frm, type_=None):
    return lambda e: (local(e.tag) == "presence" and rig.bare(e.get("from"))
                      == frm and e.get("type") == type_)


class TestPresence(rig.StackTest):
    def subscription(self, c, who):
        r = c.iq(rig.bare(c.jid), "get", "<query xmlns='jabber:iq:roster'/>")
        items = {i.get("jid"): i.get("subscription") for i in
                 r.iter("{jabber:iq:roster}item")}
        return items.get(who)

    def test_gateway_subscribes_after_registration(self):
        c = self.client("alice")
        self.stack.register(c, "+15550001111")
        c.wait(presence(SMS_JID, "subscribe"),
               what="subscribe from the gateway")
        # slixmpp approves it (auto_authorize); the gateway is then online
        c.wait(lambda e: presence(SMS_JID)(e)
               and child(e, NS_CAPS, "c") is not None,
               what="available presence with caps from the gateway")

    def test_contact_subscription_is_approved(self):
        c = self.client("bob")
        self.stack.register(c, "+15550002222")
        who = contact("+15557654321")
        c.send_raw("<presence to='%s' type='subscribe'/>" % who)
        # Prosody turns the contact's <subscribed/> into a roster push rather
        # than forwarding it, so the approval is checked in the roster.
        p = c.wait(lambda e: presence(who)(e) and
                   child(e, NS_CAPS, "c") is not None,
                   what="available presence with caps from %s" % who)
        self.assertTrue(child(p, NS_CAPS, "c").get("ver"), to_str(p))
        # the roster now holds the contact with a 'to' subscription
        self.assertIn(self.subscription(c, who), ("to", "both"))

    def test_probe_answered_for_subscribed_contact(self):
        c = self.client("carol")
        self.stack.register(c, "+15550003333")
        who = contact("+15557650000")
        c.send_raw("<presence to='%s' type='subscribe'/>" % who)
        c.wait(presence(who), what="first available presence")
        self.assertIn(self.subscription(c, who), ("to", "both"))
        c.disconnect()
        # On next login the server probes the contact; it must answer.
        c2 = self.client("carol")
        c2.wait(presence(who), what="presence after probe on re-login")


if __name__ == "__main__":
    rig.main()
