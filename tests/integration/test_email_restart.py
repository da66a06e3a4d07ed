"""SPEC 1/6: nothing accepted is lost across a restart. Mail is queued
while the relay answers 451; postern is stopped with SIGTERM (exit 0
within 10 s), the relay recovers, postern starts again and every queued
mail is delivered exactly once, with no error to the sender."""

import signal
import time

import rig

import email_rig
from email_rig import EMAIL_JID, MAIL_DOMAIN, contact, send_xmpp

ALICE = "alice@" + MAIL_DOMAIN
N = 4


class TestEmailRestart(email_rig.EmailTest):
    @classmethod
    def prepare(cls):
        cls.alice = cls.stack.client("alice")
        cls.stack.register_email(cls.alice, ALICE)

    def test_queued_mail_survives_restart(self):
        st = self.stack
        st.sink.control("fail rcpt 451 0 4.3.0 Relay busy, try later")
        rcpts = ["queued%d@example.com" % i for i in range(N)]
        mids = [send_xmpp(self.alice, contact(r), "queued mail %d" % i)
                for i, r in enumerate(rcpts)]
        # several retry rounds (200 ms base) against the failing relay
        self.alice.barrier(EMAIL_JID)
        st.pump(2.5)
        self.assertEqual(st.mails(), [])
        for mid in mids:
            self.assertNoErrors(self.alice, mid)

        t0 = time.monotonic()
        st.postern.proc.send_signal(signal.SIGTERM)
        rc = st.postern.proc.wait(12)
        self.assertEqual(rc, 0, "postern exit status %r after SIGTERM "
                         "(%.1fs)\n%s" % (rc, time.monotonic() - t0,
                                          rig.tail(st.postern.log_path)))
        self.assertLess(time.monotonic() - t0, 10.5)
        self.assertIsNone(st.postern.sanitizer_report())
        # nothing slipped out during shutdown
        self.assertEqual(st.mails(), [])

        st.sink.control("clear")
        st.postern.start()
        mails = st.wait_mails(lambda m: m.rcpt_tos[0] in rcpts, N,
                              timeout=30, what="queued mails after restart",
                              errors=(self.alice, mids))
        st.pump(2.0)
        mails = st.mails()
        self.assertEqual(sorted(m.rcpt_tos[0] for m in mails), rcpts,
                         "each queued mail exactly once")
        for m in mails:
            i = rcpts.index(m.rcpt_tos[0])
            self.assertEqual(m.text().strip(), "queued mail %d" % i)
            self.assertEqual(m.mail_from, ALICE)
        for mid in mids:
            self.assertNoErrors(self.alice, mid)

        # and it keeps working normally afterwards
        mid = send_xmpp(self.alice, contact("after@example.com"), "after")
        st.wait_mail_to("after@example.com", client=self.alice, mid=mid)


if __name__ == "__main__":
    email_rig.main()
