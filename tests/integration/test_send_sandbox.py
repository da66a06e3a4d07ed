"""SPEC 3/4: XMPP -> SMS through the sandbox provider: the outbox line has
the claimed number as From, the contact as To and the exact body; long
bodies are split in order; chat/normal/headline are bridged; an OOB URL
becomes media; a sender sends only from its own number."""

import rig
from rig import SMS_JID, contact

LIMIT = 1600


class TestSendSandbox(rig.StackTest):
    @classmethod
    def prepare(cls):
        cls.alice = cls.stack.client("alice")
        cls.stack.register(cls.alice, "+15550001111")

    def sent(self, to, count=1, timeout=rig.DEFAULT_TIMEOUT):
        return self.stack.wait_outbox(lambda o: o["to"] == to, timeout,
                                      "%d outbox line(s) to %s" % (count, to),
                                      count=count)

    def test_simple_send(self):
        mid = self.alice.message(contact("+15551230001"), "Hello from XMPP")
        (o,) = self.sent("+15551230001")
        self.assertEqual(o["from"], "+15550001111")
        self.assertEqual(o["gateway"], SMS_JID)
        self.assertEqual(o["body"], "Hello from XMPP")
        self.assertEqual(o["media"], [])
        self.assertTrue(o["id"])
        self.assertNoErrors(self.alice, mid)

    def test_unicode_and_markup_body(self):
        text = "caf\u00e9 \u2603 <b>&amp; \U0001F600 \"quoted\""
        self.alice.message(contact("+15551230002"), text)
        (o,) = self.sent("+15551230002")
        self.assertEqual(o["body"], text)

    def test_message_types_bridged(self):
        for i, t in enumerate(("chat", "normal", "headline")):
            to = "+1555123001%d" % i
            self.alice.message(contact(to), "type %s" % t, type_=t)
            (o,) = self.sent(to)
            self.assertEqual(o["body"], "type %s" % t)

    def test_long_body_split_in_order(self):
        words = ["w%04d" % i for i in range(700)]     # 4199 characters
        text = " ".join(words)
        to = "+15551230003"
        self.alice.message(contact(to), text)
        parts = self.sent(to, count=3)
        self.alice.barrier(SMS_JID)
        parts = [o for o in self.stack.outbox_lines() if o["to"] == to]
        self.assertGreaterEqual(len(parts), 3)
        for p in parts:
            self.assertLessEqual(len(p["body"]), LIMIT, p["body"][:80])
            self.assertEqual(p["from"], "+15550001111")
        # in order, split at whitespace: no word is cut
        joined = " ".join(p["body"].strip() for p in parts)
        self.assertEqual(joined.split(), words)

    def test_oob_url_becomes_media(self):
        url = "https://upload.example.org/abc/cat.jpg"
        to = "+15551230004"
        self.alice.message(contact(to), url, extra="<x xmlns='jabber:x:oob'>"
                           "<url>%s</url></x>" % url)
        (o,) = self.sent(to)
        self.assertEqual(o["media"], [url])
        self.assertEqual(o["from"], "+15550001111")

    def test_each_user_sends_from_own_number(self):
        bob = self.client("bob")
        self.stack.register(bob, "+15550002222")
        bob.message(contact("+15551230005"), "from bob")
        (o,) = self.sent("+15551230005")
        self.assertEqual(o["from"], "+15550002222")

    def test_contact_jid_in_other_notation_normalised(self):
        # the contact node is E.164; the resource must not matter
        self.alice.message(contact("+15551230006") + "/phone", "res")
        (o,) = self.sent("+15551230006")
        self.assertEqual(o["body"], "res")


if __name__ == "__main__":
    rig.main()
