"""SPEC 7: GET /healthz is 200 JSON when every gateway stream is up and
Redis answers, 503 JSON naming what is down otherwise, and recovers by
itself when Redis comes back."""

import urllib.error
import urllib.request

import rig
from rig import SMS_JID


class TestHealthz(rig.StackTest):
    def test_up(self):
        status, doc = self.stack.postern.healthz()
        self.assertEqual(status, 200, doc)
        self.assertIsInstance(doc, dict, "healthz body is not JSON: %r"
                              % (doc,))
        self.assertIn(SMS_JID, str(doc))

    def test_redis_down_then_back(self):
        st = self.stack
        st.redis.stop()
        status, doc = st.postern.wait_unhealthy(timeout=20)
        self.assertIsInstance(doc, dict, "503 body is not JSON: %r" % (doc,))
        self.assertIn("redis", str(doc).lower(), doc)
        st.redis.start()            # same port, empty data
        st.postern.wait_healthy(timeout=40)
        # and the gateway still works end to end
        a = self.client("alice")
        st.register(a, "+15550001111")
        a.message(rig.contact("+15552220001"), "after redis restart")
        st.wait_outbox(lambda o: o["to"] == "+15552220001", timeout=15)

    def test_unknown_path_404(self):
        url = "http://127.0.0.1:%d/no/such/path" % self.stack.http_port
        with self.assertRaises(urllib.error.HTTPError) as cm:
            urllib.request.urlopen(url, timeout=5)
        self.assertEqual(cm.exception.code, 404)


if __name__ == "__main__":
    rig.main()
