"""SPEC 5/6: relay faults. A relay answering 451 keeps the mail queued (no
error to the user) and once it recovers the mail is delivered exactly
once; 550 at RCPT and 554 at DATA give the user an error stanza for the
original message with the server's text, and nothing is delivered; a
relay that is down altogether is retried like a 451."""

import rig
from rig import to_str

import email_rig
from email_rig import EMAIL_JID, MAIL_DOMAIN, contact, send_xmpp

ALICE = "alice@" + MAIL_DOMAIN


class TestSmtpFaults(email_rig.EmailTest):
    @classmethod
    def prepare(cls):
        cls.alice = cls.stack.client("alice")
        cls.stack.register_email(cls.alice, ALICE)

    def setUp(self):
        self.stack.sink.control("clear")

    def tearDown(self):
        self.stack.sink.control("clear")

    def quiet(self, seconds):
        """Lets postern work for a while (several retry rounds at the
        rig's 200 ms base) while the XMPP client keeps reading."""
        self.alice.barrier(EMAIL_JID)
        self.stack.pump(seconds)

    def test_451_then_recovers_once(self):
        to = "later@example.com"
        self.stack.sink.control("reject rcpt %s 451 4.3.0 Try again later"
                                % to)
        mid = send_xmpp(self.alice, contact(to), "retry me")
        self.quiet(2.5)
        self.assertEqual(self.stack.mails_to(to), [])
        self.assertNoErrors(self.alice, mid)
        self.stack.sink.control("clear")
        m = self.stack.wait_mail_to(to, timeout=15, client=self.alice,
                                    mid=mid)
        self.assertEqual(m.text().strip(), "retry me")
        self.quiet(2.0)
        self.assertEqual(len(self.stack.mails_to(to)), 1,
                         "delivered more than once")
        self.assertNoErrors(self.alice, mid)

    def test_451_at_data_and_mail(self):
        to = "flaky@example.com"
        # two temporary failures at different steps, then success
        self.stack.sink.control("fail mail 451 1 4.3.2 System not accepting")
        self.stack.sink.control("fail data 451 1 4.3.0 Local problem")
        mid = send_xmpp(self.alice, contact(to), "flaky relay")
        m = self.stack.wait_mail_to(to, timeout=20, client=self.alice,
                                    mid=mid)
        self.assertEqual(m.text().strip(), "flaky relay")
        self.quiet(2.0)
        self.assertEqual(len(self.stack.mails_to(to)), 1)
        self.assertNoErrors(self.alice, mid)

    def test_550_at_rcpt(self):
        to = "nosuchuser@example.com"
        self.stack.sink.control("reject rcpt %s 550 5.1.1 No such user here"
                                % to)
        mid = send_xmpp(self.alice, contact(to), "to nobody")
        e = self.wait_error(self.alice, mid, timeout=15)
        et, cond, text = rig.stanza_error(e)
        self.assertEqual(et, "cancel", to_str(e))
        self.assertIn(cond, ("item-not-found", "not-acceptable"), to_str(e))
        self.assertIn("No such user here", text or "", to_str(e))
        self.assertEqual(rig.bare(e.get("from")).lower(),
                         contact(to).lower(), to_str(e))
        self.quiet(1.5)
        self.assertEqual(self.stack.mails_to(to), [])
        self.assertEqual(len(self.alice.errors_for(mid)), 1,
                         "error sent more than once")

    def test_554_at_data(self):
        to = "policy@example.com"
        self.stack.sink.control("reject data %s 554 5.7.1 Rejected by "
                                "content policy" % to)
        mid = send_xmpp(self.alice, contact(to), "spammy words")
        e = self.wait_error(self.alice, mid, timeout=15)
        et, cond, text = rig.stanza_error(e)
        self.assertEqual(et, "cancel", to_str(e))
        self.assertIn(cond, ("not-acceptable", "item-not-found"), to_str(e))
        self.assertIn("Rejected by content policy", text or "", to_str(e))
        self.quiet(1.5)
        self.assertEqual(self.stack.mails_to(to), [])
        self.assertEqual(len(self.alice.errors_for(mid)), 1)

    def test_other_mail_unaffected_by_a_rejected_one(self):
        bad, good = "bad-rcpt@example.com", "good-rcpt@example.com"
        self.stack.sink.control("reject rcpt %s 550 5.1.1 Unknown" % bad)
        mid_bad = send_xmpp(self.alice, contact(bad), "to the bad one")
        mid_good = send_xmpp(self.alice, contact(good), "to the good one")
        self.wait_error(self.alice, mid_bad, timeout=15)
        m = self.stack.wait_mail_to(good, client=self.alice, mid=mid_good)
        self.assertEqual(m.text().strip(), "to the good one")

    def test_relay_down_then_back(self):
        to = "down@example.com"
        sink = self.stack.sink
        sink.stop()
        try:
            mid = send_xmpp(self.alice, contact(to), "while relay is down")
            self.quiet(2.0)
            self.assertNoErrors(self.alice, mid)
            self.assertTrue(self.stack.postern.proc.alive())
        finally:
            sink.start()
        m = self.stack.wait_mail_to(to, timeout=15, client=self.alice,
                                    mid=mid)
        self.assertEqual(m.text().strip(), "while relay is down")
        self.quiet(1.5)
        self.assertEqual(len(self.stack.mails_to(to)), 1)


if __name__ == "__main__":
    email_rig.main()
