"""SPEC 6: several postern processes share one Redis and, on ejabberd,
one component JID (ejabberd accepts several connections for a component
and spreads stanzas over them). Both consume the same outbound stream;
500 messages are each sent exactly once, and both processes take part."""

import re
import time

import rig
import sms_rig
from rig import SMS_JID, contact

N = 500


def sent_by(postern_obj, port):
    """Completed provider requests of one process, from its /metrics."""
    st, text = sms_rig._http("GET", "http://127.0.0.1:%d/metrics" % port)
    if st != 200:
        return None
    m = re.search(r'^postern_send_latency_seconds_count\{[^}]*gateway="%s"'
                  r'[^}]*\}\s+([0-9.e+]+)$' % re.escape(SMS_JID), text,
                  re.M)
    return int(float(m.group(1))) if m else 0


class TestSmsTwoProcesses(sms_rig.SmsStackTest):
    server = "ejabberd"
    provider = "twilio"
    log_level = "info"

    @classmethod
    def prepare(cls):
        st = cls.stack
        port2 = rig.free_port()
        cls.p2 = sms_rig.ExtraPostern(st, "postern2", port2,
                                      sms_rig.sms_config(st, port2))
        cls.p2.start()
        cls.alice = st.client("alice")
        st.register(cls.alice, "+15550001111")

    @classmethod
    def tearDownClass(cls):
        report = None
        if getattr(cls, "p2", None):
            cls.p2.stop()
            report = cls.p2.sanitizer_report()
        super().tearDownClass()
        if report:
            raise AssertionError("sanitizer report in postern2:\n" + report)

    def test_no_double_send(self):
        st = self.stack
        self.assertTrue(self.p2.proc.alive())
        st.fake.faults(latency_ms=40)
        t0 = time.monotonic()
        bodies = sms_rig.message_burst(self.alice, "two", N,
                                       contact("+15551350001"))
        st.wait_sends(lambda r: (sms_rig.req_field(r, "body") or "")
                      .startswith("two-"), N, 90, "all %d sends" % N)
        print("%d sent in %.1fs" % (N, time.monotonic() - t0))
        rig.wait_until(lambda: (lambda q: q.get("out") == 0 and
                                q.get("retry") == 0)(st.queues()), 20,
                       "queues drained", [st.postern.log_path])
        self.alice.barrier(SMS_JID)
        st.pump(2.0)
        counts = st.body_counts("two-")
        lost, dup = sms_rig.loss_dup(bodies, counts)
        sms_rig.report("two processes, one Redis", bodies, lost, dup)
        a = sent_by(st.postern, st.http_port)
        b = sent_by(self.p2, self.p2.http_port)
        print("sends completed per process: %s / %s" % (a, b))
        self.assertEqual(lost, [])
        self.assertEqual(dup, {})
        errs = [e for e in self.alice.inbox if e.get("type") == "error"]
        self.assertEqual(errs, [], [rig.to_str(e) for e in errs[:3]])
        self.assertTrue(a and b, "one process did all the work (%s / %s): "
                        "the test did not exercise sharing" % (a, b))
        self.assertGreaterEqual(a + b, N)


if __name__ == "__main__":
    rig.main()
