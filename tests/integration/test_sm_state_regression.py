"""DESIGN 7.1: libstrophe 0.12 in component mode left conn->sm_state NULL
and crashed on the first stanza after the handshake. A component that
receives one stanza must stay up, also after a reconnect (new handshake)."""

import rig
from rig import NS_DISCO_INFO, SMS_JID, to_str


class TestSmStateRegression(rig.StackTest):
    def one_stanza(self, c):
        r = c.iq(SMS_JID, "get", "<query xmlns='%s'/>" % NS_DISCO_INFO)
        self.assertEqual(r.get("type"), "result", to_str(r))
        self.assertTrue(self.stack.postern.proc.alive(),
                        rig.tail(self.stack.postern.log_path))

    def test_first_stanza_after_handshake(self):
        self.one_stanza(self.client("alice"))

    def test_first_stanza_after_reconnect(self):
        st = self.stack
        st.server.stop()            # graceful: closes the component stream
        st.postern.wait_unhealthy()
        st.server.start()
        st.postern.wait_healthy(timeout=60)
        self.one_stanza(self.client("bob"))
        self.one_stanza(self.client("bob"))


if __name__ == "__main__":
    rig.main()
