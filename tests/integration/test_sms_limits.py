"""SPEC 8: per-user limits before anything reaches the provider:
per_user_per_minute = 3 -> the 4th message in a minute is refused with
policy-violation (wait) naming the limit, and is not sent; max_segments
-> policy-violation naming the segment count and the limit;
allowed_countries -> other destinations refused (not-acceptable), listed
ones sent."""

import time

import rig
import sms_rig
from rig import SMS_JID, contact


class TestSmsLimits(sms_rig.SmsStackTest):
    provider = "twilio"
    limits = {"per_user_per_minute": 3, "per_user_per_day": 100,
              "max_segments": 2, "allowed_countries": ["+1", "+44"]}

    @classmethod
    def prepare(cls):
        cls.alice = cls.stack.client("alice")
        cls.stack.register(cls.alice, "+15550001111")
        cls.bob = cls.stack.client("bob")
        cls.stack.register(cls.bob, "+15550002222")
        cls.carol = cls.stack.client("carol")
        cls.stack.register(cls.carol, "+15550003333")

    def error_of(self, client, mid):
        return client.wait(lambda e: e.get("id") == mid and
                           e.get("type") == "error", 15,
                           "error stanza for %s" % mid)

    def sent_bodies(self):
        return [sms_rig.req_field(r, "body")
                for r in self.stack.fake.records("twilio")]

    def test_per_minute(self):
        # the window is the UTC minute: do not start right before it ends
        while time.time() % 60 > 45:
            self.stack.pump(0.5)
        to = contact("+15551280001")
        mids = [self.alice.message(to, "rate %d" % i) for i in range(4)]
        err = self.error_of(self.alice, mids[3])
        etype, cond, text = self.assertError(err, "wait", "policy-violation")
        self.assertIn("3", text)
        self.assertIn("minute", text)
        self.stack.wait_sends(lambda r: sms_rig.req_field(r, "body")
                              .startswith("rate "), 3, 15)
        self.alice.barrier(SMS_JID)
        self.stack.pump(1.0)
        for m in mids[:3]:
            self.assertNoErrors(self.alice, m)
        self.assertEqual(sorted(b for b in self.sent_bodies()
                                if b.startswith("rate ")),
                         ["rate 0", "rate 1", "rate 2"])

    def test_max_segments(self):
        to = contact("+15551280002")
        long_text = "x" * 400          # GSM-7: 3 segments of 153
        mid = self.bob.message(to, long_text)
        err = self.error_of(self.bob, mid)
        etype, cond, text = rig.stanza_error(err)
        self.assertEqual(cond, "policy-violation", rig.to_str(err))
        self.assertIn("3", text)
        self.assertIn("2", text)
        ok = self.bob.message(to, "y" * 300)   # 2 segments: allowed
        self.stack.wait_sends(lambda r: sms_rig.req_field(r, "body") ==
                              "y" * 300, 1, 15)
        self.bob.barrier(SMS_JID)
        self.assertNoErrors(self.bob, ok)
        self.assertNotIn(long_text, self.sent_bodies())

    def test_allowed_countries(self):
        mid = self.carol.message(contact("+33612345678"), "to France")
        err = self.error_of(self.carol, mid)
        etype, cond, text = rig.stanza_error(err)
        self.assertEqual(etype, "cancel", rig.to_str(err))
        self.assertIn(cond, ("not-acceptable", "not-allowed",
                             "policy-violation", "forbidden"),
                      rig.to_str(err))
        self.assertTrue(text)
        ok = self.carol.message(contact("+447700900123"), "to the UK")
        self.stack.wait_sends(lambda r: sms_rig.req_field(r, "to") ==
                              "+447700900123", 1, 15)
        self.carol.barrier(SMS_JID)
        self.stack.pump(0.5)
        self.assertNoErrors(self.carol, ok)
        self.assertNotIn("to France", self.sent_bodies())


if __name__ == "__main__":
    rig.main()
