"""SPEC 1: SIGTERM/SIGINT close the XMPP stream cleanly and exit 0 within
10 s; SIGHUP keeps the process serving."""

import re
import signal
import time

import rig
from rig import NS_PING, SMS_JID, to_str


class TestSignals(rig.StackTest):
    def fresh_postern(self):
        st = self.stack
        if not st.postern.proc.alive():
            st.postern.start()
        return st.postern

    def stop_with(self, sig):
        st = self.stack
        p = self.fresh_postern()
        before = st.server.log()
        a = self.client("alice")
        r = a.iq(SMS_JID, "get", "<ping xmlns='%s'/>" % NS_PING)
        self.assertEqual(r.get("type"), "result", to_str(r))
        t0 = time.monotonic()
        p.proc.send_signal(sig)
        rc = p.proc.wait(timeout=12)
        took = time.monotonic() - t0
        self.assertIsNotNone(rc, "postern still running 12 s after %s" % sig)
        self.assertEqual(rc, 0, "exit status %s after %s:\n%s"
                         % (rc, sig, rig.tail(p.log_path)))
        self.assertLess(took, 10.0)
        # Prosody saw </stream:stream>, not a dropped TCP connection
        def closed():
            new = st.server.log()[len(before):]
            return ("Received </stream:stream>" in new and
                    re.search(r"component disconnected: %s"
                              % re.escape(SMS_JID), new))
        rig.wait_until(closed, 5, "Prosody to log the stream close",
                       [st.server.log_path])
        report = p.sanitizer_report()
        self.assertIsNone(report, report)

    def test_sigterm(self):
        self.stop_with(signal.SIGTERM)

    def test_sigint(self):
        self.stop_with(signal.SIGINT)

    def test_sighup_keeps_serving(self):
        p = self.fresh_postern()
        p.proc.send_signal(signal.SIGHUP)
        a = self.client("bob")
        r = a.iq(SMS_JID, "get", "<ping xmlns='%s'/>" % NS_PING)
        self.assertEqual(r.get("type"), "result", to_str(r))
        self.assertTrue(p.proc.alive())
        self.assertEqual(p.healthz()[0], 200)


if __name__ == "__main__":
    rig.main()
