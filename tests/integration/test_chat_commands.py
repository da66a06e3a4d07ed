"""SPEC 3: chat commands to the bare gateway JID: help, register,
unregister, status. Answers come back as plain chat."""

import rig
from rig import NS_REGISTER, SMS_JID, body, child, is_msg, to_str


class TestChatCommands(rig.StackTest):
    def command(self, c, text):
        c.message(SMS_JID, text)
        m = c.wait(lambda e: is_msg(e, SMS_JID),
                   what="chat reply to %r" % text)
        self.assertEqual(m.get("type"), "chat", to_str(m))
        self.assertTrue(body(m).strip(), to_str(m))
        return body(m)

    def registered_number(self, c):
        r = c.iq(SMS_JID, "get", "<query xmlns='%s'/>" % NS_REGISTER)
        q = child(r, NS_REGISTER, "query")
        if child(q, NS_REGISTER, "registered") is None:
            return None
        return child(q, NS_REGISTER, "phone").text

    def test_help_lists_commands(self):
        c = self.client("alice")
        text = self.command(c, "help").lower()
        for word in ("register", "unregister", "status"):
            self.assertIn(word, text)

    def test_register_status_unregister(self):
        c = self.client("bob")
        self.command(c, "register +15550002222")
        self.assertEqual(self.registered_number(c), "+15550002222")
        self.assertIn("+15550002222", self.command(c, "status"))
        self.command(c, "unregister")
        self.assertIsNone(self.registered_number(c))
        self.assertNotIn("+15550002222", self.command(c, "status"))

    def test_register_refused_number(self):
        c = self.client("carol")
        reply = self.command(c, "register +15559990000")
        self.assertIsNone(self.registered_number(c),
                          "refused number registered; reply was %r" % reply)

    def test_register_taken_number(self):
        a = self.client("dave")
        self.command(a, "register +15550004444")
        e = self.client("erin")
        self.command(e, "register +15550004444")
        self.assertIsNone(self.registered_number(e))
        self.assertEqual(self.registered_number(a), "+15550004444")

    def test_unknown_command_answers_not_bridged(self):
        c = self.client("frank")
        self.command(c, "frobnicate")
        c.barrier(SMS_JID)
        self.assertEqual(self.stack.outbox_lines(), [])


if __name__ == "__main__":
    rig.main()
