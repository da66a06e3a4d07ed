"""SPEC 6 (nothing accepted is lost): the provider answers 5xx for 60 s
while 1,000 messages are queued; once it recovers every message is sent
exactly once (counted at the fake by body), none is bounced to the user,
and the queues drain. retry_cap_ms is small so that retries are frequent
and the test stays bounded."""

import os
import time

import rig
import sms_rig
from rig import SMS_JID, contact

N = 1000
OUTAGE_S = float(os.environ.get("SMS_OUTAGE_S", "60"))


class TestSmsProviderOutage(sms_rig.SmsStackTest):
    provider = "twilio"
    queue = {"retry_base_ms": 250, "retry_cap_ms": 4000, "max_age": 3600}
    log_level = "info"

    @classmethod
    def prepare(cls):
        cls.alice = cls.stack.client("alice")
        cls.stack.register(cls.alice, "+15550001111")

    def test_outage_then_recovery(self):
        st = self.stack
        # the fault is applied per request, after auth: 5xx until cleared
        st.fake.faults(fail=10 ** 9, status=503, provider="twilio")
        t0 = time.monotonic()
        bodies = sms_rig.message_burst(self.alice, "outage", N,
                                       contact("+15551290001"))
        self.alice.barrier(SMS_JID, timeout=30)
        print("queued %d messages in %.1fs" % (N, time.monotonic() - t0))

        # during the outage: attempts fail, nothing is accepted or bounced
        rig.wait_until(lambda: len(st.fake.records("twilio")) >= N, 40,
                       "a first attempt for every message",
                       [st.postern.log_path])
        while time.monotonic() - t0 < OUTAGE_S:
            st.pump(1.0)
            errs = [e for e in self.alice.inbox if e.get("type") == "error"]
            self.assertEqual(errs, [], "bounced during the outage: %s"
                             % [rig.to_str(e) for e in errs[:3]])
        attempts = len(st.fake.records("twilio"))
        self.assertEqual(st.sends(), [])
        q = st.queues()
        print("after %.0fs of 503: %d attempts, queues %s"
              % (time.monotonic() - t0, attempts, q))
        self.assertEqual(q.get("dead"), 0, q)
        self.assertGreater(q.get("out", 0) + q.get("retry", 0), 0, q)

        st.fake.clear()
        t1 = time.monotonic()
        st.wait_sends(lambda r: sms_rig.req_field(r, "body")
                      .startswith("outage-"), N, 45,
                      "sends after the provider recovered")
        print("all %d sent %.1fs after recovery" % (N, time.monotonic() - t1))

        rig.wait_until(lambda: (lambda q: q.get("out") == 0 and
                                q.get("retry") == 0)(st.queues()), 20,
                       "out and retry queues empty", [st.postern.log_path])
        st.pump(2.0)
        counts = st.body_counts("outage-")
        lost, dup = sms_rig.loss_dup(bodies, counts)
        sms_rig.report("provider outage", bodies, lost, dup)
        self.assertEqual(lost, [])
        self.assertEqual(dup, {})
        errs = [e for e in self.alice.inbox if e.get("type") == "error"]
        self.assertEqual(errs, [], [rig.to_str(e) for e in errs[:3]])
        self.assertEqual(st.queues().get("dead"), 0)


if __name__ == "__main__":
    rig.main()
