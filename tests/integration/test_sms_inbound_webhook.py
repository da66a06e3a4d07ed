"""SPEC 4/6/8: inbound SMS through signed provider webhooks (fake Twilio,
fake Telnyx): delivered to the owner of the To number from +E164@gateway;
each MMS media item as its own message whose body is exactly the URL with
jabber:x:oob; the same webhook twice is delivered once; a forged or
missing signature gets 403 and delivers nothing (Telnyx: a stale
timestamp too); a number nobody owns is acknowledged (2xx), logged and
not delivered."""

import rig
import sms_rig
from rig import NS_OOB, body, contact, is_msg

OWNER_NUMBER = "+15550001111"


def bodies_from(client, frm):
    return [body(e) for e in client.messages_from(frm)
            if is_msg(e, frm)]


class InboundCases:
    """Shared by the Twilio and Telnyx classes."""

    def hook(self, frm, text, **kw):
        res = self.stack.inbound(frm, OWNER_NUMBER, text, **kw)
        self.assertIsNotNone(res.get("status"), res)
        return res

    def ok(self, res):
        self.assertTrue(200 <= res["status"] < 300,
                        "inbound webhook answered %s: %s"
                        % (res["status"], res.get("body")))

    def wait_body(self, frm, text):
        return self.alice.wait(lambda e: is_msg(e, contact(frm)) and
                               body(e) == text, 15,
                               "%r from %s" % (text, frm))

    def test_signed_inbound_delivered(self):
        frm = "+15551260001"
        res = self.hook(frm, "hello from a phone \u2603")
        self.ok(res)
        m = self.wait_body(frm, "hello from a phone \u2603")
        self.assertEqual(rig.bare(m.get("to")), "alice@" + rig.DOMAIN)
        self.assertEqual(m.get("from").split("/")[0], contact(frm))

    def test_mms_each_media_its_own_message(self):
        frm = "+15551260002"
        urls = ["https://media.example.net/one.jpg",
                "https://media.example.net/two.png"]
        self.ok(self.hook(frm, "pictures", media=urls))
        self.wait_body(frm, "pictures")
        for u in urls:
            m = self.wait_body(frm, u)
            x = rig.child(m, NS_OOB, "x")
            self.assertIsNotNone(x, "no jabber:x:oob: %s" % rig.to_str(m))
            self.assertEqual(rig.child(x, NS_OOB, "url").text, u)

    def test_duplicate_webhook_delivered_once(self):
        frm = "+15551260003"
        if self.provider == "twilio":
            mid = "SM" + "d" * 32
        else:
            mid = "2d0b2f4e-2a0c-4c4d-9d7e-0d1f5f5e5e01"
        for _ in range(3):
            self.ok(self.hook(frm, "only once", message_id=mid))
        # a later message is the barrier: the inbound stream is in order
        self.ok(self.hook(frm, "after the duplicates"))
        self.wait_body(frm, "after the duplicates")
        self.stack.pump(1.0)
        got = bodies_from(self.alice, contact(frm))
        print("duplicate webhook x3 -> delivered %d time(s)"
              % got.count("only once"))
        self.assertEqual(got.count("only once"), 1, got)

    def test_bad_and_missing_signature_refused(self):
        frm = "+15551260004"
        for sign in ("bad", False):
            res = self.hook(frm, "forged %s" % sign, sign=sign)
            self.assertEqual(res["status"], 403, res)
        self.ok(self.hook(frm, "genuine"))
        self.wait_body(frm, "genuine")
        self.stack.pump(1.0)
        got = bodies_from(self.alice, contact(frm))
        self.assertEqual(got, ["genuine"], "forged webhooks were delivered")

    def test_unowned_number_acknowledged_not_delivered(self):
        frm = "+15551260005"
        res = self.stack.inbound(frm, "+15550006666", "to nobody")
        self.ok(res)
        self.ok(self.hook(frm, "to alice"))
        self.wait_body(frm, "to alice")
        self.stack.pump(1.0)
        for c in self.stack.clients:
            self.assertNotIn("to nobody", bodies_from(c, contact(frm)))
        rig.wait_until(lambda: "nobody owns" in self.stack.postern.log(), 10,
                       "a log line about the unowned number",
                       [self.stack.postern.log_path])
        q = self.stack.queues()
        self.assertEqual(q.get("in"), 0, "unowned message left queued: %s"
                         % q)


class TestSmsInboundTwilio(InboundCases, sms_rig.SmsStackTest):
    provider = "twilio"

    @classmethod
    def prepare(cls):
        cls.alice = cls.stack.client("alice")
        cls.stack.register(cls.alice, OWNER_NUMBER)

    def test_twiml_answer(self):
        res = self.hook("+15551260006", "twiml?")
        self.ok(res)
        ctype = {k.lower(): v for k, v in res["headers"].items()}.get(
            "content-type", "")
        self.assertIn("xml", ctype, res)
        self.assertIn("<Response", res["body"])

    def test_signature_over_other_url_refused(self):
        # signed for a different URL (e.g. a proxy rewrote it): 403
        res = self.hook("+15551260007", "wrong url",
                        sign_url=self.stack.hook_url("inbound") + "x")
        self.assertEqual(res["status"], 403, res)


class TestSmsInboundTelnyx(InboundCases, sms_rig.SmsStackTest):
    provider = "telnyx"

    @classmethod
    def prepare(cls):
        cls.alice = cls.stack.client("alice")
        cls.stack.register(cls.alice, OWNER_NUMBER)

    def test_stale_timestamp_refused(self):
        frm = "+15551260008"
        res = self.hook(frm, "replayed", sign="stale")
        self.assertEqual(res["status"], 403, res)
        self.ok(self.hook(frm, "fresh"))
        self.wait_body(frm, "fresh")
        self.stack.pump(1.0)
        self.assertEqual(bodies_from(self.alice, contact(frm)), ["fresh"])


if __name__ == "__main__":
    rig.main()
