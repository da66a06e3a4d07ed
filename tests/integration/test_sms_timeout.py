"""SPEC 4/6: a provider request with no answer within provider.timeout
(1 s here) counts as a temporary failure and is retried; a message whose
provider keeps failing past queue.max_age (5 s here) is reported to the
sender as remote-server-timeout (wait) and kept as a dead letter, visible
in `postern-admin queues` and `dead list`; `dead retry` sends it once the
provider is healthy again, exactly once."""

import time

import rig
import sms_rig
from rig import SMS_JID, contact

TIMEOUT_S = 1.0
MAX_AGE_S = 5


class TestSmsTimeout(sms_rig.SmsStackTest):
    provider = "twilio"
    provider_timeout = TIMEOUT_S
    queue = {"retry_base_ms": 200, "retry_cap_ms": 1000,
             "max_age": MAX_AGE_S}

    @classmethod
    def prepare(cls):
        cls.alice = cls.stack.client("alice")
        cls.stack.register(cls.alice, "+15550001111")

    def attempts(self, text):
        return [r for r in self.stack.fake.records("twilio")
                if sms_rig.req_field(r, "body") == text]

    def test_hang_counts_as_temporary(self):
        self.stack.fake.faults(hang=1, provider="twilio")
        text = "answer me"
        mid = self.alice.message(contact("+15551310001"), text)
        self.stack.wait_sends(lambda r: sms_rig.req_field(r, "body") == text,
                              1, 20, "send after a hung request")
        tries = self.attempts(text)
        self.assertEqual([t["fault"] for t in tries], ["hang", None])
        gap = tries[1]["time"] - tries[0]["time"]
        print("hung attempt retried after %.2fs" % gap)
        self.assertGreaterEqual(gap, TIMEOUT_S - 0.1,
                                "retried before provider.timeout")
        self.alice.barrier(SMS_JID)
        self.stack.pump(0.5)
        self.assertNoErrors(self.alice, mid)
        self.assertEqual(len(self.attempts(text)), 2)

    def test_max_age_dead_letter_and_retry(self):
        st = self.stack
        st.fake.faults(hang=10 ** 6, provider="twilio")
        text = "doomed for now"
        to = "+15551310002"
        t0 = time.monotonic()
        mid = self.alice.message(contact(to), text)
        err = self.alice.wait(lambda e: e.get("id") == mid and
                              e.get("type") == "error", MAX_AGE_S + 15,
                              "remote-server-timeout after max_age")
        waited = time.monotonic() - t0
        tries = len(self.attempts(text))
        print("bounced after %.1fs and %d attempts" % (waited, tries))
        self.assertError(err, "wait", "remote-server-timeout")
        self.assertEqual(rig.bare(err.get("from")), contact(to))
        self.assertGreaterEqual(waited, MAX_AGE_S - 0.5)
        self.assertGreaterEqual(tries, 2, "not retried before max_age")
        self.assertEqual(st.sends(lambda r: sms_rig.req_field(r, "body") ==
                                  text), [])

        q = st.queues()
        self.assertEqual((q.get("dead"), q.get("out"), q.get("retry")),
                         (1, 0, 0), q)
        lines = [ln for ln in st.admin("dead", "list", SMS_JID)
                 .stdout.splitlines() if ln.strip()]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("alice@" + rig.DOMAIN, lines[0])
        self.assertIn(to, lines[0])

        st.fake.clear()
        r = st.admin("dead", "retry", SMS_JID, "all")
        self.assertIn("requeued 1", r.stdout)
        st.wait_sends(lambda r: sms_rig.req_field(r, "body") == text, 1, 20,
                      "send of the requeued dead letter")
        rig.wait_until(lambda: st.queues().get("dead") == 0 and
                       st.queues().get("out") == 0, 10, "queues empty")
        st.pump(1.5)
        n = len(st.sends(lambda r: sms_rig.req_field(r, "body") == text))
        print("dead letter retried: sent %d time(s)" % n)
        self.assertEqual(n, 1)
        self.assertEqual(len(self.alice.errors_for(mid)), 1,
                         "more than one bounce for one message")


if __name__ == "__main__":
    rig.main()
