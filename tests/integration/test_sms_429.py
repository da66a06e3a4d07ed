"""SPEC 6: HTTP 429 from the provider is temporary and its Retry-After is
honoured: the next attempt comes no earlier than Retry-After although
queue.retry_base_ms would retry much sooner; the message is then sent
exactly once and the sender sees no error."""

import rig
import sms_rig
from rig import SMS_JID, contact

RETRY_AFTER = 3


class TestSms429(sms_rig.SmsStackTest):
    provider = "twilio"
    queue = {"retry_base_ms": 200, "retry_cap_ms": 10000, "max_age": 3600}

    @classmethod
    def prepare(cls):
        cls.alice = cls.stack.client("alice")
        cls.stack.register(cls.alice, "+15550001111")

    def attempts(self, text):
        return [r for r in self.stack.fake.records("twilio")
                if sms_rig.req_field(r, "body") == text]

    def test_retry_after_honoured(self):
        self.stack.fake.faults(status=429, retry_after=RETRY_AFTER, fail=2,
                               provider="twilio")
        text = "throttled message"
        mid = self.alice.message(contact("+15551300001"), text)
        self.stack.wait_sends(lambda r: sms_rig.req_field(r, "body") == text,
                              1, 20, "send after two 429s")
        self.alice.barrier(SMS_JID)
        self.stack.pump(1.0)
        tries = self.attempts(text)
        gaps = [b["time"] - a["time"] for a, b in zip(tries, tries[1:])]
        print("attempts: %s; gaps %s" % ([t["response_status"]
                                          for t in tries],
                                         ["%.2fs" % g for g in gaps]))
        self.assertEqual([t["response_status"] for t in tries],
                         [429, 429, 201])
        for g in gaps:
            # 0.2 s of slack for clock granularity and scheduling
            self.assertGreaterEqual(g, RETRY_AFTER - 0.2,
                                    "retried before Retry-After")
        self.assertEqual(len(self.stack.sends(
            lambda r: sms_rig.req_field(r, "body") == text)), 1)
        self.assertNoErrors(self.alice, mid)

    def test_429_without_retry_after_uses_backoff(self):
        # control: without Retry-After the retry comes from the backoff
        # (base 200 ms), so the gap above is due to the header
        self.stack.fake.faults(status=429, fail=1, provider="twilio")
        text = "throttled without header"
        mid = self.alice.message(contact("+15551300002"), text)
        self.stack.wait_sends(lambda r: sms_rig.req_field(r, "body") == text,
                              1, 20)
        tries = self.attempts(text)
        self.assertEqual([t["response_status"] for t in tries], [429, 201])
        gap = tries[1]["time"] - tries[0]["time"]
        print("gap without Retry-After: %.2fs" % gap)
        self.assertLess(gap, RETRY_AFTER - 0.5)
        self.alice.barrier(SMS_JID)
        self.assertNoErrors(self.alice, mid)


if __name__ == "__main__":
    rig.main()
