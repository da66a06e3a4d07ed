"""SPEC 4: XMPP -> SMS through the Twilio REST API (the fake Twilio):
one request per message from the claimed number with the exact body,
StatusCallback = public_url + /sms/<jid>/status and Basic auth; a body
over 1,600 characters becomes several requests, in order, cut at
whitespace; an XEP-0066 URL becomes MediaUrl (no Body when the body is
just that URL), at most 10 of them."""

import base64

import rig
import sms_rig
from rig import SMS_JID, contact

LIMIT = 1600
NUMBER = "+15550001111"


def header(rec, name):
    for k, v in rec["headers"].items():
        if k.lower() == name.lower():
            return v
    return None


def oob(url):
    return "<x xmlns='jabber:x:oob'><url>%s</url></x>" % url


class TestSmsTwilioSend(sms_rig.SmsStackTest):
    provider = "twilio"

    @classmethod
    def prepare(cls):
        cls.alice = cls.stack.client("alice")
        cls.stack.register(cls.alice, NUMBER)

    def to(self, number, count=1, timeout=15):
        return self.stack.wait_sends(
            lambda r: sms_rig.req_field(r, "to") == number, count, timeout,
            "request(s) to %s" % number)

    def test_request_shape(self):
        mid = self.alice.message(contact("+15551240001"), "Hello Twilio")
        (r,) = self.to("+15551240001")
        self.assertEqual(r["method"], "POST")
        self.assertEqual(r["path"], "/2010-04-01/Accounts/%s/Messages.json"
                         % sms_rig.TW_SID)
        form = r["form"]
        self.assertEqual(form["From"], [NUMBER])
        self.assertEqual(form["To"], ["+15551240001"])
        self.assertEqual(form["Body"], ["Hello Twilio"])
        self.assertEqual(form["StatusCallback"],
                         [self.stack.hook_url("status")])
        self.assertNotIn("MediaUrl", form)
        want = "Basic " + base64.b64encode(
            ("%s:%s" % (sms_rig.TW_SID, sms_rig.TW_TOKEN)).encode()).decode()
        self.assertEqual(header(r, "Authorization"), want)
        self.assertIn("application/x-www-form-urlencoded",
                      header(r, "Content-Type") or "")
        self.assertEqual(r["response_status"], 201)
        self.alice.barrier(SMS_JID)
        self.assertNoErrors(self.alice, mid)

    def test_unicode_body_exact(self):
        text = "caf\u00e9 \u2603 <b>&amp; \U0001F600 \"q\" +&=%"
        self.alice.message(contact("+15551240002"), text)
        (r,) = self.to("+15551240002")
        self.assertEqual(r["form"]["Body"], [text])

    def test_long_body_split_in_order(self):
        words = ["w%04d" % i for i in range(700)]    # 4199 characters
        to = "+15551240003"
        mid = self.alice.message(contact(to), " ".join(words))
        self.to(to, count=3, timeout=20)
        self.alice.barrier(SMS_JID)
        self.stack.pump(1.0)
        parts = self.stack.sends(lambda r: sms_rig.req_field(r, "to") == to)
        self.assertEqual(len(parts), 3, [len(sms_rig.req_field(p, "body"))
                                         for p in parts])
        self.assertEqual([p["seq"] for p in parts],
                         sorted(p["seq"] for p in parts))
        bodies = [sms_rig.req_field(p, "body") for p in parts]
        for b in bodies:
            self.assertLessEqual(len(b), LIMIT)
        self.assertEqual(" ".join(bodies).split(), words,
                         "parts out of order or a word was cut")
        for p in parts:
            self.assertEqual(p["form"]["From"], [NUMBER])
        self.assertNoErrors(self.alice, mid)

    def test_oob_url_only_becomes_media_without_body(self):
        url = "https://upload.example.org/a1/cat.jpg"
        to = "+15551240004"
        self.alice.message(contact(to), url, extra=oob(url))
        (r,) = self.to(to)
        self.assertEqual(r["form"].get("MediaUrl"), [url])
        self.assertNotIn("Body", r["form"], "the URL was also sent as Body")
        self.assertEqual(r["form"]["From"], [NUMBER])

    def test_oob_with_text_keeps_body(self):
        url = "https://upload.example.org/a2/dog.png"
        to = "+15551240005"
        self.alice.message(contact(to), "look at this", extra=oob(url))
        (r,) = self.to(to)
        self.assertEqual(r["form"].get("MediaUrl"), [url])
        self.assertEqual(r["form"].get("Body"), ["look at this"])

    def test_ten_media(self):
        urls = ["https://upload.example.org/m%d.jpg" % i for i in range(10)]
        to = "+15551240006"
        mid = self.alice.message(contact(to), "ten",
                                 extra="".join(oob(u) for u in urls))
        (r,) = self.to(to)
        self.assertEqual(r["form"].get("MediaUrl"), urls)
        self.alice.barrier(SMS_JID)
        self.assertNoErrors(self.alice, mid)

    def test_eleven_media_refused(self):
        urls = ["https://upload.example.org/n%d.jpg" % i for i in range(11)]
        to = "+15551240007"
        mid = self.alice.message(contact(to), "eleven",
                                 extra="".join(oob(u) for u in urls))
        err = self.alice.wait(lambda e: e.get("id") == mid and
                              e.get("type") == "error", 15,
                              "error for 11 attachments")
        etype, cond, text = rig.stanza_error(err)
        self.assertIn(cond, ("bad-request", "not-acceptable",
                             "policy-violation"), rig.to_str(err))
        self.assertIn("10", text or "")
        self.alice.barrier(SMS_JID)
        self.stack.pump(0.5)
        sent = [r for r in self.stack.fake.records("twilio")
                if sms_rig.req_field(r, "to") == to]
        self.assertEqual(sent, [], "11 attachments reached the provider")


if __name__ == "__main__":
    rig.main()
