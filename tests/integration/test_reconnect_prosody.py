"""SPEC 3/6: Prosody is SIGKILLed and restarted on the same ports; postern
notices (healthz 503 naming the gateway), reconnects by itself (healthz 200)
and bridges again. An SMS injected while the stream is down is delivered
after the reconnect (queued, not lost)."""

import time

import rig
from rig import SMS_JID, body, contact, is_msg


class TestReconnectProsody(rig.StackTest):
    def test_kill_and_restart(self):
        st = self.stack
        a = self.client("alice")
        st.register(a, "+15550001111")
        a.message(contact("+15551110001"), "before")
        st.wait_outbox(lambda o: o["to"] == "+15551110001")

        st.server.kill()
        status, doc = st.postern.wait_unhealthy(timeout=20)
        self.assertIn(SMS_JID, str(doc), "healthz does not name the gateway:"
                      " %r" % (doc,))
        # while XMPP is down, inbound work is accepted and waits
        st.admin("sms-inject", SMS_JID, "--from", "+15551110002", "--to",
                 "+15550001111", "sent while down")

        st.server.start()
        t0 = time.monotonic()
        st.postern.wait_healthy(timeout=60)
        print("reconnected %.1fs after restart" % (time.monotonic() - t0))

        a2 = self.client("alice")   # old c2s session died with Prosody
        m = a2.wait(lambda e: is_msg(e, contact("+15551110002")), timeout=20,
                    what="SMS injected while the component was down")
        self.assertEqual(body(m), "sent while down")
        mid = a2.message(contact("+15551110003"), "after")
        (o,) = st.wait_outbox(lambda o: o["to"] == "+15551110003",
                              timeout=15)
        self.assertEqual((o["from"], o["body"]), ("+15550001111", "after"))
        self.assertNoErrors(a2, mid)
        self.assertTrue(st.postern.proc.alive())


if __name__ == "__main__":
    rig.main()
