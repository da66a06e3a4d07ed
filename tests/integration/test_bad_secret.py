"""SPEC 3: a rejected handshake (wrong secret) is logged clearly and
retried with backoff, never in a tight loop; the secret never appears in
the log and healthz says the gateway is down."""

import re
import time

import rig
from rig import SMS_JID

WINDOW = 8.0
WRONG = "definitely-the-wrong-secret-7781"


class TestBadSecret(rig.StackTest):
    @classmethod
    def setUpClass(cls):
        cls.stack = rig.Stack(sms_secret=WRONG, start_postern=False).start()

    def count(self, text, pattern):
        return len(re.findall(pattern, text))

    def test_backoff_and_clear_log(self):
        st = self.stack
        st.postern.start(wait=False)
        # the measurement window itself is the point of this test
        t_end = time.monotonic() + WINDOW
        while time.monotonic() < t_end:
            self.assertTrue(st.postern.proc.alive(),
                            rig.tail(st.postern.log_path))
            time.sleep(0.2)
        plog = st.server.log()
        attempts = self.count(plog, "Incoming Jabber component connection")
        failures = self.count(plog, "Component authentication failed for "
                              + re.escape(SMS_JID))
        print("%d connection attempts, %d rejected handshakes in %.0fs"
              % (attempts, failures, WINDOW))
        self.assertGreaterEqual(failures, 1, "handshake never tried:\n"
                                + rig.tail(st.postern.log_path))
        self.assertGreaterEqual(attempts, 2, "no retry after the rejected "
                                "handshake in %.0fs" % WINDOW)
        self.assertLessEqual(attempts, 10, "tight reconnect loop: %d attempts"
                             " in %.0fs" % (attempts, WINDOW))

        status, doc = st.postern.healthz()
        self.assertEqual(status, 503, doc)
        self.assertIn(SMS_JID, str(doc))

        log = st.postern.log()
        self.assertNotIn(WRONG, log, "secret leaked into the log")
        lines = [l for l in log.splitlines() if SMS_JID in l and re.search(
            r"handshake|secret|not.authori[sz]ed|authenticat", l, re.I)]
        self.assertTrue(lines, "no clear log line about the rejected "
                        "handshake:\n" + rig.tail(st.postern.log_path))


if __name__ == "__main__":
    rig.main()
