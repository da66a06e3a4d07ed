"""SPEC 3: registration as the XEP-0050 ad-hoc command jabber:iq:register
(the Cheogram/SGX convention)."""

import rig
from rig import NS_COMMANDS, NS_DATA, NS_REGISTER, SMS_JID, child, to_str

NS_ITEMS = "http://jabber.org/protocol/disco#items"


class TestRegisterAdhoc(rig.StackTest):
    def execute(self, c, sessionid=None, number=None, action="execute"):
        sid = " sessionid='%s'" % sessionid if sessionid else ""
        form = ""
        if number is not None:
            form = ("<x xmlns='jabber:x:data' type='submit'><field var='phone'>"
                    "<value>%s</value></field></x>" % number)
        r = c.iq(SMS_JID, "set", "<command xmlns='%s' node='jabber:iq:register'"
                 " action='%s'%s>%s</command>" % (NS_COMMANDS, action, sid,
                                                  form))
        return r

    def registered_number(self, c):
        r = c.iq(SMS_JID, "get", "<query xmlns='%s'/>" % NS_REGISTER)
        q = child(r, NS_REGISTER, "query")
        if child(q, NS_REGISTER, "registered") is None:
            return None
        return child(q, NS_REGISTER, "phone").text

    def test_listed_in_command_items(self):
        c = self.client("alice")
        r = c.iq(SMS_JID, "get", "<query xmlns='%s' node='%s'/>"
                 % (NS_ITEMS, NS_COMMANDS))
        self.assertEqual(r.get("type"), "result", to_str(r))
        nodes = [i.get("node") for i in
                 child(r, NS_ITEMS, "query").findall("{%s}item" % NS_ITEMS)]
        self.assertIn("jabber:iq:register", nodes, to_str(r))

    def test_register_through_command(self):
        c = self.client("bob")
        r = self.execute(c)
        self.assertEqual(r.get("type"), "result", to_str(r))
        cmd = child(r, NS_COMMANDS, "command")
        self.assertEqual(cmd.get("status"), "executing", to_str(r))
        sid = cmd.get("sessionid")
        self.assertTrue(sid, to_str(r))
        x = child(cmd, NS_DATA, "x")
        self.assertIsNotNone(x, to_str(r))
        self.assertIn("phone", [f.get("var") for f in
                                x.findall("{%s}field" % NS_DATA)])

        r = self.execute(c, sid, "+15550002222", action="complete")
        self.assertEqual(r.get("type"), "result", to_str(r))
        cmd = child(r, NS_COMMANDS, "command")
        self.assertEqual(cmd.get("status"), "completed", to_str(r))
        self.assertEqual(self.registered_number(c), "+15550002222")

    def test_bad_number_through_command(self):
        c = self.client("carol")
        r = self.execute(c)
        sid = child(r, NS_COMMANDS, "command").get("sessionid")
        r = self.execute(c, sid, "+15559990000", action="complete")
        # Either an IQ error or a completed command carrying an error note;
        # in both cases nothing is registered.
        if r.get("type") == "result":
            cmd = child(r, NS_COMMANDS, "command")
            notes = [n.get("type") for n in
                     cmd.findall("{%s}note" % NS_COMMANDS)]
            self.assertIn("error", notes, to_str(r))
        else:
            self.assertEqual(rig.stanza_error(r)[1], "not-acceptable",
                             to_str(r))
        self.assertIsNone(self.registered_number(c))


if __name__ == "__main__":
    rig.main()
