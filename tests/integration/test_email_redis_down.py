"""SPEC 5/6: Redis unavailable during LMTP. With redis-server stopped an
LMTP delivery for a registered address is answered 451 4.3.0 (at RCPT or
after DATA) so the MTA keeps it, and postern stays up; Redis stopped
between RCPT and DATA gives 451 4.3.0 after DATA. Once Redis is back the
MTA's retries get 250 and each mail is delivered, once."""

import rig

import email_rig
from email_rig import MAIL_DOMAIN, build_mail, new_msgid, subject_of

ALICE = "alice@" + MAIL_DOMAIN


def tempfail(r, rcpt):
    """The 4xx reply r gave rcpt (RCPT or after DATA), or None."""
    for reply in (r.rcpt.get(rcpt), r.data.get(rcpt), r.data_cmd, r.mail):
        if reply and 400 <= reply[0] < 500:
            return reply
    return None


class TestEmailRedisDown(email_rig.EmailTest):
    @classmethod
    def prepare(cls):
        cls.alice = cls.stack.client("alice")
        cls.stack.register_email(cls.alice, ALICE)

    def test_lmtp_451_while_redis_down(self):
        st = self.stack
        frm = "sender@example.net"
        # sanity: delivered while Redis is up
        r = st.lmtp(frm, [ALICE], build_mail(frm, ALICE, "before", "up\n"))
        self.assertEqual(r.data.get(ALICE, (None,))[0], 250, r)
        self.wait_msg(self.alice, frm)

        msgid = new_msgid()
        data = build_mail(frm, ALICE, "while down", "redis was down\n",
                          msgid=msgid)
        # keep the registrations across the restart (the rig's Redis has
        # no persistence of its own): the dump is loaded at start
        self.assertEqual(st.redis_cli("SAVE"), "OK")
        st.redis.stop()
        try:
            for attempt in range(2):
                r = st.lmtp(frm, [ALICE], data)
                reply = tempfail(r, ALICE)
                self.assertIsNotNone(reply, "attempt %d: no 4xx with Redis "
                                     "down: %r" % (attempt, r))
                self.assertEqual(reply[0], 451, r)
                self.assertIn("4.3.0", reply[1], r)
                self.assertTrue(st.postern.proc.alive(),
                                rig.tail(st.postern.log_path))
        finally:
            st.redis.start()

        self.redeliver(data, "while down")
        m = self.wait_msg(self.alice, frm, timeout=15)
        self.assertEqual(subject_of(m), "while down")
        self.assertIn("redis was down", rig.body(m))

        # Redis going away between RCPT (answered 250) and the end of
        # DATA: the delivery itself must not be acknowledged
        data2 = build_mail(frm, ALICE, "mid-transaction", "stopped inside\n")
        self.assertEqual(st.redis_cli("SAVE"), "OK")
        try:
            r = st.lmtp(frm, [ALICE], data2, before_data=st.redis.stop)
            self.assertEqual(r.rcpt[ALICE][0], 250, r)
            self.assertEqual(r.data.get(ALICE, (None,))[0], 451, r)
            self.assertIn("4.3.0", r.data[ALICE][1], r)
            self.assertTrue(st.postern.proc.alive())
        finally:
            st.redis.start()
        self.redeliver(data2, "mid-transaction")
        m = self.wait_msg(self.alice, frm, timeout=15)
        self.assertEqual(subject_of(m), "mid-transaction")

        # the deliveries answered 451 left nothing behind: one each
        self.alice.barrier(email_rig.EMAIL_JID)
        for subject in ("while down", "mid-transaction"):
            got = [e for e in self.alice.inbox
                   if email_rig.is_email_msg(e, frm)
                   and subject_of(e) == subject]
            self.assertEqual(len(got), 1, [rig.to_str(e) for e in got])
        self.assertTrue(st.postern.proc.alive())

    def redeliver(self, data, what):
        """The MTA retrying until postern has its Redis back: 451 until
        then, never anything else, and 250 in the end."""
        st = self.stack

        def retried():
            r = st.lmtp("sender@example.net", [ALICE], data)
            code = r.data.get(ALICE, r.rcpt.get(ALICE, (None,)))[0]
            self.assertIn(code, (250, 451), r)
            if code != 250:
                st.pump(0.3)
            return code == 250

        st.poll(retried, 30, "LMTP 250 for %r after Redis came back" % what)


if __name__ == "__main__":
    email_rig.main()
