"""SPEC 4 (delivery): a message that asked for a XEP-0184 receipt gets
<received id=orig/> from the contact JID once the provider's signed status
webhook says "delivered"; "undelivered"/"failed" after acceptance give the
sender an error stanza (original id, from the contact) carrying the
provider's reason. No receipt without a request; a repeated status is
answered once."""

import rig
import sms_rig
from rig import NS_RECEIPTS, SMS_JID, contact

RECEIPT = "<request xmlns='urn:xmpp:receipts'/>"


def receipt_for(mid, frm):
    def pred(e):
        if rig.local(e.tag) != "message" or e.get("type") == "error":
            return False
        r = rig.child(e, NS_RECEIPTS, "received")
        return r is not None and r.get("id") == mid and \
            rig.bare(e.get("from")) == frm
    return pred


class TestSmsReceipts(sms_rig.SmsStackTest):
    provider = "twilio"

    @classmethod
    def prepare(cls):
        cls.alice = cls.stack.client("alice")
        cls.stack.register(cls.alice, "+15550001111")

    def send(self, to, body, receipt=True):
        mid = self.alice.message(contact(to), body,
                                 extra=RECEIPT if receipt else "")
        (r,) = self.stack.wait_sends(
            lambda r: sms_rig.req_field(r, "body") == body, 1, 15,
            "send of %r" % body)
        sid = sms_rig.provider_id(r)
        self.assertTrue(sid, r)
        return mid, sid

    def webhook(self, sid, status, **kw):
        res = self.stack.status(sid, status, **kw)
        self.assertIsNotNone(res.get("status"), res)
        self.assertTrue(200 <= res["status"] < 300,
                        "status webhook answered %s: %s"
                        % (res["status"], res.get("body")))
        return res

    def test_delivered_gives_receipt(self):
        to = "+15551250001"
        mid, sid = self.send(to, "receipt please")
        self.alice.barrier(SMS_JID)
        self.assertEqual([e for e in self.alice.inbox
                          if receipt_for(mid, contact(to))(e)], [],
                         "receipt before the provider said delivered")
        self.webhook(sid, "sent")     # not final: no receipt yet
        self.webhook(sid, "delivered")
        rec = self.alice.wait(receipt_for(mid, contact(to)), 15,
                              "receipt for %s" % mid)
        self.assertEqual(rig.bare(rec.get("to")), "alice@" + rig.DOMAIN)
        # the same status again is delivered once
        self.webhook(sid, "delivered")
        self.alice.barrier(SMS_JID)
        self.stack.pump(1.0)
        n = [e for e in self.alice.inbox if receipt_for(mid, contact(to))(e)]
        self.assertEqual(len(n), 1, "duplicate status gave %d receipts"
                         % len(n))
        self.assertNoErrors(self.alice, mid)

    def test_no_receipt_when_not_requested(self):
        to = "+15551250002"
        mid, sid = self.send(to, "no receipt wanted", receipt=False)
        self.webhook(sid, "delivered")
        self.alice.barrier(SMS_JID)
        self.stack.pump(1.0)
        self.assertEqual([e for e in self.alice.inbox
                          if receipt_for(mid, contact(to))(e)], [])
        self.assertNoErrors(self.alice, mid)

    def check_failure(self, to, status, code):
        mid, sid = self.send(to, "will be %s" % status)
        self.webhook(sid, status, error_code=code)
        err = self.alice.wait(lambda e: e.get("id") == mid and
                              e.get("type") == "error", 15,
                              "error stanza for %s message" % status)
        self.assertEqual(rig.bare(err.get("from")), contact(to))
        etype, cond, text = rig.stanza_error(err)
        self.assertEqual(etype, "cancel", rig.to_str(err))
        self.assertIn(cond, ("recipient-unavailable", "not-acceptable",
                             "item-not-found"), rig.to_str(err))
        self.assertIn(str(code), text or "",
                      "the provider's reason is not in <text/>: %r" % text)
        self.alice.barrier(SMS_JID)
        self.assertEqual([e for e in self.alice.inbox
                          if receipt_for(mid, contact(to))(e)], [])
        return text

    def test_undelivered_gives_error(self):
        self.check_failure("+15551250003", "undelivered", 30005)

    def test_failed_gives_error(self):
        self.check_failure("+15551250004", "failed", 30008)

    def test_unsigned_status_changes_nothing(self):
        to = "+15551250005"
        mid, sid = self.send(to, "forged status")
        res = self.stack.status(sid, "failed", sign=False)
        self.assertEqual(res.get("status"), 403, res)
        res = self.stack.status(sid, "failed", sign="bad")
        self.assertEqual(res.get("status"), 403, res)
        self.alice.barrier(SMS_JID)
        self.stack.pump(1.0)
        self.assertEqual(self.alice.errors_for(mid), [])
        # the genuine one still works afterwards
        self.webhook(sid, "delivered")
        self.alice.wait(receipt_for(mid, contact(to)), 15, "receipt")

    def test_unknown_message_id_acknowledged(self):
        res = self.webhook("SM" + "0" * 32, "delivered")
        self.assertTrue(200 <= res["status"] < 300)


if __name__ == "__main__":
    rig.main()
