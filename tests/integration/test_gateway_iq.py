"""SPEC 3: jabber:iq:gateway (XEP-0100 section 6.3) with the three typed
examples from the SPEC."""

import rig
from rig import EMAIL_JID, NS_GATEWAY, SMS_JID, child, to_str


class GatewayIq:
    gw = None

    def query(self, c, type_, prompt=None):
        inner = "" if prompt is None else "<prompt>%s</prompt>" % prompt
        r = c.iq(self.gw, type_, "<query xmlns='%s'>%s</query>"
                 % (NS_GATEWAY, inner))
        self.assertEqual(r.get("type"), "result", to_str(r))
        return child(r, NS_GATEWAY, "query")

    def translate(self, c, typed):
        q = self.query(c, "set", typed)
        j = child(q, NS_GATEWAY, "jid")
        self.assertIsNotNone(j, "no <jid/> for %r: %s" % (typed, to_str(q)))
        return j.text

    def test_get_desc_and_prompt(self):
        c = self.client("alice")
        q = self.query(c, "get")
        for name in ("desc", "prompt"):
            el = child(q, NS_GATEWAY, name)
            self.assertTrue(el is not None and (el.text or "").strip(),
                            "no <%s/>: %s" % (name, to_str(q)))


class TestGatewayIqSms(GatewayIq, rig.StackTest):
    gw = SMS_JID

    def test_us_national_number(self):
        c = self.client("alice")
        self.assertEqual(self.translate(c, "(555) 123-4567"),
                         "+15551234567@" + SMS_JID)

    def test_international_number(self):
        c = self.client("alice")
        self.assertEqual(self.translate(c, "+44 20 7946 0958"),
                         "+442079460958@" + SMS_JID)


class TestGatewayIqEmail(GatewayIq, rig.StackTest):
    gw = EMAIL_JID
    email = True

    def test_email_address(self):
        c = self.client("alice")
        jid = self.translate(c, "Bob@Example.com")
        # XEP-0106 escaping; the node is case-folded by nodeprep anyway.
        self.assertEqual(jid.lower(), "bob\\40example.com@" + EMAIL_JID)


if __name__ == "__main__":
    rig.main()
