"""SPEC 4: inbound SMS (postern-admin sms-inject) reach the JID owning the
To number from +E164@gateway; each media URL is its own message whose body
is exactly the URL, with jabber:x:oob."""

import rig
from rig import NS_OOB, SMS_JID, body, child, contact, is_msg, to_str


class TestInboundSandbox(rig.StackTest):
    @classmethod
    def prepare(cls):
        cls.alice = cls.stack.client("alice")
        cls.stack.register(cls.alice, "+15550001111")

    def inject(self, frm, to, text, media=()):
        args = ["sms-inject", SMS_JID, "--from", frm, "--to", to]
        for m in media:
            args += ["--media", m]
        return self.stack.admin(*(args + [text]))

    def test_text_delivered(self):
        self.inject("+15557654321", "+15550001111", "hi there \u00e9")
        m = self.alice.wait(lambda e: is_msg(e, contact("+15557654321")),
                            what="inbound SMS")
        self.assertEqual(body(m), "hi there \u00e9")
        self.assertEqual(m.get("type"), "chat", to_str(m))
        self.assertEqual(rig.bare(m.get("to")), "alice@" + rig.DOMAIN)

    def test_media_each_own_message(self):
        urls = ["https://media.example.org/1/cat.jpg",
                "https://media.example.org/2/dog.png"]
        frm = contact("+15557650001")
        self.inject("+15557650001", "+15550001111", "look", urls)
        got = []
        for _ in range(3):
            got.append(self.alice.wait(lambda e: is_msg(e, frm),
                                       what="inbound MMS part"))
        bodies = [body(m) for m in got]
        self.assertIn("look", bodies)
        for u in urls:
            (m,) = [m for m in got if body(m) == u]
            x = child(m, NS_OOB, "x")
            self.assertIsNotNone(x, "no jabber:x:oob in %s" % to_str(m))
            self.assertEqual(child(x, NS_OOB, "url").text, u)

    def test_media_only(self):
        url = "https://media.example.org/3/only.gif"
        frm = contact("+15557650002")
        self.inject("+15557650002", "+15550001111", "", [url])
        m = self.alice.wait(lambda e: is_msg(e, frm), what="media message")
        self.assertEqual(body(m), url)
        self.alice.barrier(SMS_JID)
        self.assertEqual([body(e) for e in self.alice.messages_from(frm)],
                         [url], "empty text part was delivered")

    def test_unowned_number_dropped(self):
        # the admin tool may accept or refuse it; either is fine here
        self.stack.admin("sms-inject", SMS_JID, "--from", "+15557650003",
                         "--to", "+15550009999", "nobody owns this",
                         check=False)
        # a later message to an owned number still goes through (the
        # unowned one did not wedge the queue), and nobody got the first
        self.inject("+15557650004", "+15550001111", "after unowned")
        self.alice.wait(lambda e: is_msg(e, contact("+15557650004")),
                        what="message after the unowned one")
        self.assertEqual(self.alice.messages_from(contact("+15557650003")),
                         [])
        self.assertTrue(self.stack.postern.proc.alive())


if __name__ == "__main__":
    rig.main()
