"""The basics against ejabberd instead of Prosody: disco, registration,
sending through the sandbox and inbound delivery (sms-inject)."""

import rig
from rig import (NS_DISCO_INFO, NS_OOB, NS_REGISTER, SMS_JID, body, child,
                 contact, is_msg, to_str)


class TestEjabberdBasics(rig.StackTest):
    server = "ejabberd"

    def test_1_disco(self):
        a = self.client("alice")
        r = a.iq(SMS_JID, "get", "<query xmlns='%s'/>" % NS_DISCO_INFO)
        self.assertEqual(r.get("type"), "result", to_str(r))
        q = child(r, NS_DISCO_INFO, "query")
        ids = [(i.get("category"), i.get("type"))
               for i in q.findall("{%s}identity" % NS_DISCO_INFO)]
        self.assertIn(("gateway", "sms"), ids)
        feats = {f.get("var") for f in q.findall("{%s}feature"
                                                 % NS_DISCO_INFO)}
        self.assertIn(NS_REGISTER, feats)

    def test_2_register_send_inbound(self):
        st = self.stack
        a = self.client("alice")
        st.register(a, "+15550001111")
        r = a.iq(SMS_JID, "get", "<query xmlns='%s'/>" % NS_REGISTER)
        q = child(r, NS_REGISTER, "query")
        self.assertIsNotNone(child(q, NS_REGISTER, "registered"), to_str(r))

        b = self.client("bob")
        r = b.iq(SMS_JID, "set", "<query xmlns='%s'><phone>+15550001111"
                 "</phone></query>" % NS_REGISTER)
        self.assertError(r, "cancel", "conflict")

        mid = a.message(contact("+15553330001"), "via ejabberd")
        (o,) = st.wait_outbox(lambda o: o["to"] == "+15553330001")
        self.assertEqual((o["from"], o["body"]),
                         ("+15550001111", "via ejabberd"))
        self.assertNoErrors(a, mid)

        url = "https://media.example.org/e/1.jpg"
        st.admin("sms-inject", SMS_JID, "--from", "+15553330002", "--to",
                 "+15550001111", "--media", url, "hello ejabberd")
        frm = contact("+15553330002")
        got = [a.wait(lambda e: is_msg(e, frm), what="inbound via ejabberd")
               for _ in range(2)]
        self.assertEqual(sorted(body(m) for m in got),
                         sorted(["hello ejabberd", url]))
        (m,) = [m for m in got if body(m) == url]
        self.assertIsNotNone(child(m, NS_OOB, "x"), to_str(m))

    def test_3_error_from_contact(self):
        c = self.client("carol")       # not registered
        mid = c.message(contact("+15553330003"), "hello")
        e = c.wait(lambda e: e.get("id") == mid and e.get("type") == "error",
                   what="registration-required via ejabberd")
        self.assertError(e, "auth", "registration-required")


if __name__ == "__main__":
    rig.main()
