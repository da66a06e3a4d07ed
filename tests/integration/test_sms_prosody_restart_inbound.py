"""SPEC 6: Prosody is restarted while signed inbound webhooks keep
arriving. Every webhook is answered 2xx (persisted, the XMPP stream is not
needed for that), and after postern has reconnected every message reaches
the user exactly once (counted at the client; the user is offline during
the restart so Prosody keeps them as offline messages)."""

import threading
import time

import rig
import sms_rig
from rig import body, contact, is_msg

N = 60
OWNER = "+15550001111"
FROM = "+15551320001"


class TestSmsProsodyRestartInbound(sms_rig.SmsStackTest):
    provider = "twilio"

    @classmethod
    def prepare(cls):
        a = cls.stack.client("alice")
        cls.stack.register(a, OWNER)
        a.barrier(rig.SMS_JID)
        a.disconnect()

    def test_restart_during_webhooks(self):
        st = self.stack
        results = [None] * N
        sent = [0]

        def fire():
            for i in range(N):
                try:
                    results[i] = st.inbound(FROM, OWNER, "restart-%03d" % i)
                except Exception as e:  # reported below
                    results[i] = {"status": None, "error": repr(e)}
                sent[0] = i + 1
                time.sleep(0.08)

        th = threading.Thread(target=fire, daemon=True)
        th.start()
        rig.wait_until(lambda: sent[0] >= 15, 30, "first webhooks")
        st.server.stop()
        down_at = sent[0]
        st.postern.wait_unhealthy(timeout=20)
        time.sleep(1.0)
        st.server.start()
        up_at = sent[0]
        th.join(60)
        self.assertFalse(th.is_alive(), "webhook sender stuck")
        print("webhooks %d..%d arrived while Prosody was down" %
              (down_at, up_at))
        bad = [(i, r) for i, r in enumerate(results)
               if not r or r.get("status") is None or
               not 200 <= r["status"] < 300]
        self.assertEqual(bad, [], "webhooks not answered 2xx")

        st.postern.wait_healthy(timeout=60)
        alice = st.client("alice")
        want = ["restart-%03d" % i for i in range(N)]

        def got_all():
            have = {body(e) for e in alice.messages_from(contact(FROM))
                    if is_msg(e, contact(FROM))}
            return set(want) <= have
        deadline = time.monotonic() + 30
        while not got_all() and time.monotonic() < deadline:
            alice.pump(0.2)
        alice.barrier(rig.SMS_JID)
        alice.pump(1.0)
        got = [body(e) for e in alice.messages_from(contact(FROM))
               if is_msg(e, contact(FROM))]
        counts = {b: got.count(b) for b in set(got)}
        lost, dup = sms_rig.loss_dup(want, counts)
        sms_rig.report("prosody restart (inbound)", want, lost, dup)
        self.assertEqual(lost, [], "lost after the restart")
        self.assertEqual(dup, {}, "delivered twice")
        self.assertEqual(st.queues().get("in"), 0)


if __name__ == "__main__":
    rig.main()
