"""SPEC 3: XEP-0077 registration with XEP-0100 semantics (get, set, form,
not-allowed, not-acceptable, conflict, replace, remove, presence)."""

import rig
from rig import (NS_DATA, NS_REGISTER, OTHER_DOMAIN, SMS_JID, child, contact,
                 local, to_str)


def form_set(number):
    return ("<query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' "
            "type='submit'><field var='FORM_TYPE'><value>jabber:iq:register"
            "</value></field><field var='phone'><value>%s</value></field>"
            "</x></query>" % number)


class TestRegister(rig.StackTest):
    def get(self, c):
        r = c.iq(SMS_JID, "get", "<query xmlns='%s'/>" % NS_REGISTER)
        self.assertEqual(r.get("type"), "result", to_str(r))
        return child(r, NS_REGISTER, "query")

    def set(self, c, payload):
        return c.iq(SMS_JID, "set", payload)

    def phone(self, number):
        return ("<query xmlns='jabber:iq:register'><phone>%s</phone></query>"
                % number)

    def test_get_unregistered(self):
        q = self.get(self.client("carol"))
        ins = child(q, NS_REGISTER, "instructions")
        self.assertTrue(ins is not None and ins.text.strip(), to_str(q))
        self.assertIsNotNone(child(q, NS_REGISTER, "phone"), to_str(q))
        self.assertIsNone(child(q, NS_REGISTER, "registered"), to_str(q))
        x = child(q, NS_DATA, "x")
        self.assertIsNotNone(x, "no data form: %s" % to_str(q))
        self.assertEqual(x.get("type"), "form")
        fields = {f.get("var") for f in x.findall("{%s}field" % NS_DATA)}
        self.assertIn("phone", fields, to_str(x))

    def test_set_get_replace_remove(self):
        c = self.client("bob")
        r = self.set(c, self.phone("+15550002222"))
        self.assertEqual(r.get("type"), "result", to_str(r))
        # XEP-0100: the gateway asks for the user's presence.
        c.wait(lambda e: local(e.tag) == "presence" and
               e.get("from") == SMS_JID and e.get("type") == "subscribe",
               what="presence subscribe from the gateway")
        q = self.get(c)
        self.assertIsNotNone(child(q, NS_REGISTER, "registered"), to_str(q))
        self.assertEqual(child(q, NS_REGISTER, "phone").text,
                         "+15550002222", to_str(q))

        # Re-registering replaces: the old number becomes free again.
        r = self.set(c, self.phone("+15550003333"))
        self.assertEqual(r.get("type"), "result", to_str(r))
        self.assertEqual(child(self.get(c), NS_REGISTER, "phone").text,
                         "+15550003333")
        d = self.client("dave")
        r = self.set(d, self.phone("+15550002222"))
        self.assertEqual(r.get("type"), "result",
                         "old number not released: %s" % to_str(r))

        # Remove: afterwards nothing is sent for this JID.
        r = self.set(c, "<query xmlns='jabber:iq:register'><remove/></query>")
        self.assertEqual(r.get("type"), "result", to_str(r))
        self.assertIsNone(child(self.get(c), NS_REGISTER, "registered"))
        mid = c.message(contact("+15557770001"), "after remove")
        e = c.wait(lambda e: e.get("id") == mid and e.get("type") == "error",
                   what="registration-required after remove")
        self.assertError(e, "auth", "registration-required")
        c.barrier(SMS_JID)
        self.assertEqual([o for o in self.stack.outbox_lines()
                          if o["to"] == "+15557770001"], [])
        # ... and nothing is delivered: an SMS to bob's former number is
        # not routed to bob; one to dave's number (sent after it) arrives.
        self.stack.admin("sms-inject", SMS_JID, "--from", "+15557770002",
                         "--to", "+15550003333", "to a released number",
                         check=False)
        self.stack.admin("sms-inject", SMS_JID, "--from", "+15557770003",
                         "--to", "+15550002222", "to dave")
        d.wait(lambda e: rig.is_msg(e, contact("+15557770003")),
               what="SMS to dave")
        c.barrier(SMS_JID)
        self.assertEqual(c.messages_from(contact("+15557770002")), [])

    def test_set_with_data_form(self):
        c = self.client("erin")
        r = self.set(c, form_set("+15550005555"))
        self.assertEqual(r.get("type"), "result", to_str(r))
        self.assertEqual(child(self.get(c), NS_REGISTER, "phone").text,
                         "+15550005555")

    def test_not_allowed_domain(self):
        m = self.client("mallory", OTHER_DOMAIN)
        r = self.set(m, self.phone("+15550006666"))
        self.assertError(r, "cancel", "not-allowed")

    def test_not_acceptable(self):
        c = self.client("frank")
        # malformed, too short, well-formed but not in `numbers`
        for bad in ("not-a-number", "+1555", "+15559990000"):
            r = self.set(c, self.phone(bad))
            e = rig.stanza_error(r)
            self.assertIsNotNone(e, "%r accepted: %s" % (bad, to_str(r)))
            self.assertEqual(e[1], "not-acceptable", to_str(r))
            # SPEC names no type; RFC 6120 allows modify, cancel is common
            self.assertIn(e[0], ("modify", "cancel"), to_str(r))
            self.assertTrue(e[2], "no <text/>: %s" % to_str(r))
        self.assertIsNone(child(self.get(c), NS_REGISTER, "registered"))

    def test_conflict(self):
        a = self.client("alice")
        r = self.set(a, self.phone("+15550001111"))
        self.assertEqual(r.get("type"), "result", to_str(r))
        f = self.client("frank")
        r = self.set(f, self.phone("+15550001111"))
        self.assertError(r, "cancel", "conflict")
        # the holder keeps it
        self.assertEqual(child(self.get(a), NS_REGISTER, "phone").text,
                         "+15550001111")


if __name__ == "__main__":
    rig.main()
