"""SPEC 3/4: a provider's permanent refusal becomes an error stanza with
the original id, from the contact JID, type cancel, and the provider's
reason in <text/>; it is not retried. Twilio 21211 (invalid To) ->
item-not-found/not-acceptable; 21610 (opted out) -> not-acceptable
"opted out". Both through the fake's error_code fault and through
Twilio's magic test numbers."""

import rig
import sms_rig
from rig import SMS_JID, contact


class TestSmsPermanentErrors(sms_rig.SmsStackTest):
    provider = "twilio"

    @classmethod
    def prepare(cls):
        cls.alice = cls.stack.client("alice")
        cls.stack.register(cls.alice, "+15550001111")

    def bounce(self, to, text, conds, reason):
        mid = self.alice.message(contact(to), text)
        err = self.alice.wait(lambda e: e.get("id") == mid and
                              e.get("type") == "error", 15,
                              "error stanza for %s" % to)
        self.assertEqual(rig.bare(err.get("from")), contact(to))
        etype, cond, etext = rig.stanza_error(err)
        self.assertEqual(etype, "cancel", rig.to_str(err))
        self.assertIn(cond, conds, rig.to_str(err))
        self.assertIn(reason, (etext or "").lower(), rig.to_str(err))
        # permanent: exactly one attempt, no retry
        self.alice.barrier(SMS_JID)
        self.stack.pump(1.5)
        tries = [r for r in self.stack.fake.records("twilio")
                 if sms_rig.req_field(r, "body") == text]
        self.assertEqual(len(tries), 1, "a permanent error was retried "
                         "%d times" % (len(tries) - 1))
        self.assertEqual(len(self.alice.errors_for(mid)), 1)
        return etext

    def test_21211_invalid_number_fault(self):
        self.stack.fake.faults(error_code=21211, fail=1, provider="twilio")
        text = self.bounce("+15551270001", "invalid number",
                           ("item-not-found", "not-acceptable"),
                           "not a valid phone number")
        self.assertIn("21211", text)

    def test_21610_opted_out_fault(self):
        self.stack.fake.faults(error_code=21610, fail=1, provider="twilio")
        self.bounce("+15551270002", "opted out", ("not-acceptable",),
                    "opted out")

    def test_magic_numbers(self):
        self.bounce("+15005550001", "magic invalid",
                    ("item-not-found", "not-acceptable"), "21211")
        self.bounce("+15005550004", "magic opted out", ("not-acceptable",),
                    "opted out")

    def test_next_message_unaffected(self):
        self.stack.fake.faults(error_code=21610, fail=1, provider="twilio")
        self.bounce("+15551270003", "first bounces", ("not-acceptable",),
                    "opted out")
        mid = self.alice.message(contact("+15551270003"), "second goes")
        self.stack.wait_sends(lambda r: sms_rig.req_field(r, "body") ==
                              "second goes", 1, 15)
        self.alice.barrier(SMS_JID)
        self.assertNoErrors(self.alice, mid)


if __name__ == "__main__":
    rig.main()
