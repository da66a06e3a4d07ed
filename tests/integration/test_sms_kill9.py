"""SPEC 6: postern is SIGKILLed in the middle of a burst of 300 outbound
messages (all persisted, about a third sent) and started again. Every
message is then sent (or bounced to its sender); duplicates happen only
for sends that were in flight at the kill, so their number is at most the
consumer's concurrency (32 sends in flight per gateway). Counts of lost
and duplicated messages are printed."""

import time

import rig
import sms_rig
from rig import SMS_JID, contact

N = 300
CONCURRENCY = 32        # queue.c OUT_CONCURRENCY, sends in flight
LATENCY_MS = 100


class TestSmsKill9(sms_rig.SmsStackTest):
    provider = "twilio"
    provider_timeout = 2   # reclaim after 2 * 2 s + 5 s
    log_level = "info"

    @classmethod
    def prepare(cls):
        cls.alice = cls.stack.client("alice")
        cls.stack.register(cls.alice, "+15550001111")

    def persisted_or_sent(self):
        """Bodies known to be persisted: in Redis now, or already at the
        fake (the stream is read before the fake, so a message that moves
        from one to the other in between is still seen)."""
        st = self.stack
        queued = {m.get("body") for m in sms_rig.out_stream_payloads(st)}
        at_fake = {sms_rig.req_field(r, "body")
                   for r in st.fake.records("twilio")}
        return queued | at_fake

    def test_kill9_mid_burst(self):
        st = self.stack
        st.fake.faults(latency_ms=LATENCY_MS)
        bodies = sms_rig.message_burst(self.alice, "k9", N,
                                       contact("+15551340001"))

        rig.wait_until(lambda: set(bodies) <= self.persisted_or_sent(), 30,
                       "all %d messages persisted" % N,
                       [st.postern.log_path])
        rig.wait_until(lambda: len(st.sends()) >= N // 3, 30,
                       "a third of the burst sent", [st.postern.log_path])
        st.postern.proc.kill()
        t_kill = time.time()
        timeouts = st.postern.log().count("timeout after")
        before = st.body_counts("k9-")
        self.assertLess(sum(before.values()), N,
                        "the burst finished before the kill")
        # what the dead process had claimed and not acknowledged: the
        # sends in flight (the group's pending entries do not change
        # until a live consumer reclaims them)
        in_flight = sms_rig.out_pending_bodies(st)
        print("killed with %d sent, %d sends in flight (pending)"
              % (sum(before.values()), len(in_flight)))
        self.assertLessEqual(len(in_flight), CONCURRENCY)

        st.postern.start()
        t_restart = time.monotonic()

        def settled():
            sent = st.body_counts("k9-")
            bounced = {rig.body(e) for e in self.alice.inbox
                       if e.get("type") == "error"}
            return all(sent.get(b) or b in bounced for b in bodies)
        deadline = time.monotonic() + 60
        while not settled() and time.monotonic() < deadline:
            st.pump(0.5)
        print("settled %.1fs after the restart" %
              (time.monotonic() - t_restart))
        rig.wait_until(lambda: (lambda q: q.get("out") == 0 and
                                q.get("retry") == 0)(st.queues()), 20,
                       "queues drained", [st.postern.log_path])
        self.alice.barrier(SMS_JID)
        st.pump(1.0)

        counts = st.body_counts("k9-")
        bounced = [e for e in self.alice.inbox if e.get("type") == "error"]
        bounced_bodies = {rig.body(e) for e in bounced}
        lost = [b for b in bodies if not counts.get(b) and
                b not in bounced_bodies]
        dup = {b: n for b, n in counts.items() if n > 1}
        sms_rig.report("kill -9 mid-burst", bodies, lost, dup)
        print("bounced: %d" % len(bounced))
        self.assertEqual(lost, [], "accepted messages lost")
        # a duplicate whose second send came before the kill is a retry
        # after provider.timeout (the request did reach the provider):
        # allowed, once per logged timeout; one after the kill must be a
        # send the dead process had in flight
        times = {}
        for r in st.sends(lambda r: (sms_rig.req_field(r, "body") or "")
                          .startswith("k9-")):
            times.setdefault(sms_rig.req_field(r, "body"), []).append(
                r["time"])
        pre = {b for b in dup if sorted(times[b])[1] < t_kill}
        post = {b: n for b, n in dup.items() if b not in pre}
        print("duplicates: %d after a provider timeout before the kill "
              "(%d timeouts logged), %d from the kill (%d in flight)"
              % (len(pre), timeouts, len(post), len(in_flight)))
        self.assertLessEqual(len(pre), timeouts)
        self.assertLessEqual(sum(n - 1 for n in post.values()),
                             len(in_flight),
                             "more duplicates than sends in flight")
        for b, n in post.items():
            self.assertIn(b, in_flight,
                          "%s duplicated but was not in flight at the kill"
                          % b)
            self.assertEqual(n, 2, "%s sent %d times" % (b, n))

if __name__ == "__main__":
    rig.main()
