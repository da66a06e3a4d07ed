"""SPEC 6: Redis is restarted (its data saved to disk first).

Inbound: while Redis is down, webhooks get 503, never 2xx (so the
provider retries) and /healthz says so; when it is back the refused
webhooks, sent again as a provider would, are delivered, and so are the
ones accepted before; nothing lost or duplicated.

Outbound: messages sent while Redis is down for a few seconds are kept
and sent once Redis is back (the design: the push is retried for ~30 s
before remote-server-timeout); never both sent and bounced, never
silently dropped, never sent twice."""

import hashlib
import time
import unittest

import rig
import sms_rig
from rig import SMS_JID, body, contact, is_msg

OWNER = "+15550001111"
FROM = "+15551330001"


class TestSmsRedisRestart(sms_rig.SmsStackTest):
    provider = "twilio"

    @classmethod
    def prepare(cls):
        cls.alice = cls.stack.client("alice")
        cls.stack.register(cls.alice, OWNER)

    def hook(self, text):
        return self.stack.inbound(FROM, OWNER, text,
                                  message_id="SM" + hashlib.md5(text.encode()).hexdigest())

    def outage(self, during, seconds=4.0):
        """Stops Redis, runs during(), keeps it down for seconds in all,
        starts it again and waits until postern is healthy."""
        st = self.stack
        sms_rig.redis_restart_begin(st)
        t_down = time.monotonic()
        status, doc = st.postern.wait_unhealthy(timeout=20)
        self.assertIn("redis", str(doc).lower())
        res = during()
        st.pump(max(0.0, seconds - (time.monotonic() - t_down)))
        sms_rig.redis_restart_end(st)
        st.postern.wait_healthy(timeout=30)
        return res

    def test_inbound_503_then_resume(self):
        st = self.stack
        before = ["before-%d" % i for i in range(5)]
        for b in before:
            r = self.hook(b)
            self.assertTrue(200 <= r["status"] < 300, r)
        down = ["down-%d" % i for i in range(5)]
        down_status = self.outage(lambda: [self.hook(b)["status"]
                                           for b in down])
        print("webhook answers while Redis was down: %s" % down_status)
        self.assertEqual(down_status, [503] * len(down))

        for b in down:      # the provider retries what it was refused
            r = self.hook(b)
            self.assertTrue(200 <= r["status"] < 300, r)
        after = ["after-%d" % i for i in range(5)]
        for b in after:
            r = self.hook(b)
            self.assertTrue(200 <= r["status"] < 300, r)
        want = before + down + after

        def have():
            return [body(e) for e in self.alice.messages_from(contact(FROM))
                    if is_msg(e, contact(FROM))]
        deadline = time.monotonic() + 20
        while not set(want) <= set(have()) and time.monotonic() < deadline:
            self.alice.pump(0.2)
        self.alice.barrier(SMS_JID)
        st.pump(1.0)
        got = have()
        counts = {b: got.count(b) for b in set(got)}
        lost, dup = sms_rig.loss_dup(want, counts)
        sms_rig.report("redis restart (inbound)", want, lost, dup)
        self.assertEqual(lost, [])
        self.assertEqual(dup, {})

        # and ordinary work goes on
        mid = self.alice.message(contact("+15551330003"), "after restart")
        st.wait_sends(lambda r: sms_rig.req_field(r, "body") ==
                      "after restart", 1, 15)
        self.alice.barrier(SMS_JID)
        self.assertNoErrors(self.alice, mid)

    # A message sent while Redis restarts is kept in memory and its
    # sender lookup retried (router.c, OWNER_RETRY_MS), then queued.
    def test_outbound_kept_across_restart(self):
        st = self.stack
        out_down = ["out-down-%d" % i for i in range(3)]
        mids = self.outage(lambda: [
            self.alice.message(contact("+15551330002"), b)
            for b in out_down])

        def settled(b, mid):
            return (st.sends(lambda r: sms_rig.req_field(r, "body") == b) or
                    self.alice.errors_for(mid))
        rig.wait_until(lambda: all(settled(b, m) for b, m in
                                   zip(out_down, mids)), 45,
                       "outbound messages from the outage settled",
                       [st.postern.log_path])
        self.alice.barrier(SMS_JID)
        st.pump(1.0)
        ocounts = st.body_counts("out-down-")
        bounced = [b for b, m in zip(out_down, mids)
                   if self.alice.errors_for(m)]
        print("outbound during the outage: %d sent, %d bounced (%s)"
              % (sum(1 for b in out_down if ocounts.get(b)), len(bounced),
                 [rig.stanza_error(e) for m in mids
                  for e in self.alice.errors_for(m)][:1]))
        for b, m in zip(out_down, mids):
            n = ocounts.get(b, 0)
            self.assertFalse(n and self.alice.errors_for(m),
                             "%s both sent and bounced" % b)
            self.assertLessEqual(n, 1, "%s sent %d times" % (b, n))
        olost = [b for b in out_down if not ocounts.get(b) and
                 b not in bounced]
        sms_rig.report("redis restart (outbound)", out_down, olost,
                       {b: n for b, n in ocounts.items() if n > 1})
        self.assertEqual(olost, [])
        # Redis was back within seconds, well inside the ~30 s a push is
        # retried: nothing may be bounced
        self.assertEqual(bounced, [], "bounced although Redis came back "
                         "within seconds")


if __name__ == "__main__":
    rig.main()
