"""Self-test of tests/integration/fakes/fake_provider.py, so that later
integration tests can trust it: the signing code reproduces the official
vectors of protocol-facts.md (T1-T10 Twilio, T11 Telnyx, T12-T18 Vonage),
and a started fake answers each provider API shape, applies each fault
knob, records requests, and sends webhooks that an independent verifier
accepts when signed and refuses when unsigned, badly signed or stale."""

import base64
import hashlib
import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "fakes"))

import fake_provider as fp  # noqa: E402

from cryptography.exceptions import InvalidSignature  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import \
    Ed25519PublicKey  # noqa: E402

# ------------------------------------------------------------ vectors

TW_TOKEN = "12345"
TW_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
TW_PARAMS = {"CallSid": "CA1234567890ABCDE", "Digits": "1234",
             "From": "+14158675309", "To": "+18005551212",
             "Caller": "+14158675309"}

T11_SEED = bytes.fromhex(
    "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
T11_BODY = (
    '{"data":{"event_type":"message.received","id":"b301ed3f-1490-491f-'
    '995f-6e64e69674d4","occurred_at":"2023-11-14T22:13:20.000+00:00",'
    '"payload":{"direction":"inbound","from":{"phone_number":"+131255500'
    '01"},"id":"84cca175-9755-4859-b67f-4730d7f58aa3","record_type":"mes'
    'sage","text":"Hello, World!","to":[{"phone_number":"+17735550002",'
    '"status":"webhook_delivered"}],"type":"SMS"},"record_type":"event"},'
    '"meta":{"attempt":1,"delivered_to":"https://example.com/webhooks"}}'
).encode()


class Vectors(unittest.TestCase):
    def test_twilio_t1_t6(self):
        cases = [
            (TW_URL, "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
            ("https://mycompany.com:443/myapp.php?foo=1&bar=2",
             "kvajT1Ptam85bY51eRf/AJRuM3w="),
            ("http://mycompany.com:80/myapp.php?foo=1&bar=2",
             "0ZXoZLH/DfblKGATFgpif+LLRf4="),
            ("http://mycompany.com:1234/myapp.php?foo=1&bar=2",
             "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="),
            ("https://mycompany.com:1234/myapp.php?foo=1&bar=2",
             "CYn1h0gLBdNxDGkKJg6hYohgeD8="),
            ("https://MyCompany.com/myapp.php?foo=1&bar=2",
             "g9IN/x4Cft2g517EjYvEvM/W7LU="),
            ("https://MyCompany.com:1234/myapp.php?foo=1&bar=2",
             "PCqOZm8cnu/L6+u5i5fuEd+Iac4="),
            ("http://MyCompany.com/myapp.php?foo=1&bar=2",
             "XY7AlKOKL6im4yWyX84gldUrtis="),
            ("http://username:password@MyCompany.com/myapp.php?foo=1&bar=2",
             "PJ08CxXr7KLPjEQCTc8LkUSMwSM="),
            ("HTTP://username:password@MyCompany.com/myapp.php?foo=1&bar=2",
             "hy/l8pca+LFms4cvRdv8uiP6NGc="),
            ("http://Username:Password@MyCompany.com/myapp.php?foo=1&bar=2",
             "SkTSKyDJH9kUlhItI0slbgZ1UsI="),
        ]
        for url, want in cases:
            self.assertEqual(fp.twilio_signature(TW_TOKEN, url, TW_PARAMS),
                             want, url)
        self.assertNotEqual(fp.twilio_signature("123456", TW_URL, TW_PARAMS),
                            "RSOYDt4T1cUTdK1PDd93/VVr8B8=")

    def test_twilio_t7_duplicates(self):
        params = [("Sid", "CA123"), ("SidAccount", "AC123"),
                  ("Digits", "5678"), ("Digits", "1234"), ("Digits", "1234")]
        self.assertEqual(fp.twilio_signature(TW_TOKEN, TW_URL, params),
                         "IK+Dwps556ElfBT0I3Rgjkr1wJU=")

    def test_twilio_t8_json_body(self):
        body = b'{"property": "value", "boolean": true}'
        h = hashlib.sha256(body).hexdigest()
        self.assertEqual(h, "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7c"
                            "f19632632f96e6620")
        self.assertEqual(fp.twilio_signature(
            TW_TOKEN, TW_URL + "&bodySHA256=" + h),
            "a9nBmqA0ju/hNViExpshrM61xv4=")
        self.assertEqual(fp.twilio_signature(
            TW_TOKEN, "https://mycompany.com/myapp.php?bodySHA256=" + h),
            "y77kIzt2vzLz71DgmJGsen2scGs=")

    def test_twilio_t9_t10_sms_webhooks(self):
        t9 = ("ToCountry=US&ToState=District+Of+Columbia&SmsMessageSid=SMe2"
              "87d7109a5a925f182f0e07fe5b223b&NumMedia=0&ToCity=&FromZip=0"
              "1022&SmsSid=SMe287d7109a5a925f182f0e07fe5b223b&FromState=MA&"
              "SmsStatus=received&FromCity=CHICOPEE&Body=Msg&FromCountry=US"
              "&To=%2B12028831111&ToZip=&NumSegments=1&MessageSid=SMe287d71"
              "09a5a925f182f0e07fe5b223b&AccountSid=acctid&From=%2B14133881"
              "111&ApiVersion=2010-04-01")
        self.assertEqual(fp.twilio_signature(
            "6789", "https://gw.example.com/twilio/sms",
            urllib.parse.parse_qsl(t9, keep_blank_values=True)),
            "3YnSJVFeEjv7A5mtZASYB4ui8Bc=")
        t10 = ("MessageSid=SM00000000000000000000000000000001&From=%2B150055"
               "50006&To=%2B14155552671&Body=Hello+%C3%A9t%C3%A9+%F0%9F%98%"
               "80&NumMedia=1&MediaUrl0=https%3A%2F%2Fapi.twilio.com%2F2010"
               "-04-01%2FAccounts%2FAC00000000000000000000000000000000%2FMes"
               "sages%2FMM1%2FMedia%2FME1&MediaContentType0=image%2Fjpeg&Acc"
               "ountSid=AC00000000000000000000000000000000")
        self.assertEqual(fp.twilio_signature(
            "12345", "https://gw.example.com/twilio/sms?tenant=a",
            urllib.parse.parse_qsl(t10, keep_blank_values=True)),
            "0KX3v5lELjC5ty7Mkc2os7ebYMo=")

    def test_telnyx_t11(self):
        self.assertEqual(len(T11_BODY), 466)
        self.assertEqual(hashlib.sha256(T11_BODY).hexdigest(),
                         "a167a7515aa5fa5553af70887121c2216061b5e6a4bbce17"
                         "c628dd694f4b2f97")
        key = fp.telnyx_private_key(T11_SEED)
        self.assertEqual(fp.telnyx_public_b64(key),
                         "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=")
        # RFC 8032 TEST 1 sanity vector: the empty message.
        self.assertEqual(key.sign(b"").hex(),
                         "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974"
                         "d873e065224901555fb8821590a33bacc61e39701cf9b46b"
                         "d25bf5f0595bbe24655141438e7a100b")
        self.assertEqual(fp.telnyx_sign(key, 1700000000, T11_BODY),
                         "sdah7+HzVNhAWGH5EpD/VVgg1UjPmIAXr5+7p7k5qdH82l3wV"
                         "GiLo6dC0bU5Yom0YLqcrjZstbwpVXzYUFgSBw==")

    def test_vonage_t12_t16_legacy(self):
        params = {"a": "1", "b": "2", "timestamp": "1461605396"}
        want = {
            "md5hash": "6af838ef94998832dbfc29020b564830",
            "md5": "c15c21ced558c93a226c305f58f902f2",
            "sha1": "3e19a4e6880fdc2c1426bfd0587c98b9532f0210",
            "sha256": "a321e824b9b816be7c3f28859a31749a098713d39f613c80d45"
                      "5bbaffae1cd24",
            "sha512": "812a18f76680fa0fe1b8bd9ee1625466ceb1bd96242e4d050d2"
                      "cfd9a7b40166c63ed26ec9702168781b6edcf1633db8ff95af9"
                      "341701004eec3fcf9550572ee8",
        }
        for method, sig in want.items():
            self.assertEqual(fp.vonage_signature(params, "secret", method),
                             sig, method)
        # sig itself never takes part in the signature.
        self.assertEqual(fp.vonage_signature(dict(params, sig="x"),
                                             "secret", "md5hash"),
                         want["md5hash"])

    def test_vonage_t17_t18_new_sdk(self):
        s = "signature_secret"
        p12 = {"param1": "value1", "param2": "value2",
               "timestamp": 1234567890}
        self.assertEqual(fp.vonage_signature(p12, s, "sha256"),
                         "280c4320703dbc98bfa22db676655ed2acfbfe8792b062ff"
                         "7622e67f1183c287")
        self.assertEqual(fp.vonage_signature(p12, s, "md5"),
                         "724c2bf6ca423c36e20631b11d1c5753")
        self.assertEqual(fp.vonage_signature(
            {"param1": "value&1", "param2": "value=2",
             "timestamp": 1234567890}, s, "md5"),
            "2bbf0abafb2c55e5af6231513896a2ac")
        self.assertEqual(fp.vonage_signature(
            {"param": "value", "timestamp": 1234567890}, s, "md5"),
            "655a4d0b7f064dff438defc52b012cf5")
        self.assertEqual(fp.vonage_signature(
            dict(p12, timestamp=12345), s, "md5"),
            "bc7e95bb4e341090b3a202a2885903a5")

    def test_segments_t22(self):
        cases = [("1" * 160, True, 1), ("1" * 161, True, 2),
                 ("1" * 307, True, 3), ("😜" + "1" * 68, False, 1),
                 ("😜" + "1" * 69, False, 2), ("😜" + "1" * 133, False, 3),
                 ("€" + "1" * 158, True, 1), ("€" + "1" * 159, True, 2),
                 ("ç" * 70, False, 1), ("ç" * 71, False, 2),
                 ("€" * 81, True, 2), ("😀" * 35, False, 1),
                 ("😀" * 36, False, 2), ("ç" * 135, False, 3),
                 ("Hello ` world", False, 1)]
        for text, gsm7, n in cases:
            self.assertEqual(fp.count_segments(text), (gsm7, n), text[:8])


# ------------------------------------------------------------ live fake

SID = "AC" + "ab" * 16
TOKEN = "tok-" + "9" * 28
TELNYX_KEY = "KEY0123456789"
VKEY, VSECRET, VSIG = "a1b2c3d4", "vsecret", "vsigsecret"


class Receiver:
    """A stand-in gateway: verifies each webhook independently and
    answers 200 (valid) or 403, recording what arrived."""

    def __init__(self, telnyx_pub_b64):
        self.got = []
        pub = Ed25519PublicKey.from_public_bytes(
            base64.b64decode(telnyx_pub_b64))
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _handle(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                url = "http://127.0.0.1:%d%s" % (outer.port, self.path)
                ok = outer.verify(self.path, dict(self.headers), body, url,
                                  pub)
                outer.got.append({"path": self.path, "body": body,
                                  "headers": dict(self.headers), "ok": ok})
                text = (b'<?xml version="1.0" encoding="UTF-8"?>'
                        b"<Response />") if ok else b"forbidden"
                self.send_response(200 if ok else 403)
                self.send_header("Content-Type",
                                 "text/xml" if ok else "text/plain")
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            do_POST = do_GET = _handle

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def verify(self, path, headers, body, url, pub):
        h = {k.lower(): v for k, v in headers.items()}
        if path.startswith("/twilio"):
            sig = h.get("x-twilio-signature")
            params = urllib.parse.parse_qsl(body.decode(),
                                            keep_blank_values=True)
            return sig == fp.twilio_signature(TOKEN, url, params)
        if path.startswith("/telnyx"):
            try:
                ts = int(h["telnyx-timestamp"])
                pub.verify(base64.b64decode(h["telnyx-signature-ed25519"]),
                           str(ts).encode() + b"|" + body)
            except (KeyError, ValueError, InvalidSignature):
                return False
            return abs(time.time() - ts) <= 300
        if path.startswith("/vonage"):
            if "?" in path:
                params = dict(urllib.parse.parse_qsl(
                    path.split("?", 1)[1], keep_blank_values=True))
            elif h.get("content-type", "").startswith("application/json"):
                params = json.loads(body)
            else:
                params = dict(urllib.parse.parse_qsl(
                    body.decode(), keep_blank_values=True))
            if "sig" not in params:
                return False
            if abs(time.time() - int(params["timestamp"])) > 300:
                return False
            return params["sig"] == fp.vonage_signature(params, VSIG,
                                                        "sha256")
        return False

    def stop(self):
        self.srv.shutdown()
        self.srv.server_close()


class Live(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="postern-fake-")
        cls.rec_path = os.path.join(cls.tmp, "requests.jsonl")
        cls.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "fakes", "fake_provider.py"),
             "--port", "0", "--record", cls.rec_path, "--exit-with-parent",
             "--twilio-account-sid", SID, "--twilio-auth-token", TOKEN,
             "--telnyx-api-key", TELNYX_KEY,
             "--telnyx-private-key", base64.b64encode(T11_SEED).decode(),
             "--vonage-api-key", VKEY, "--vonage-api-secret", VSECRET,
             "--vonage-signature-secret", VSIG,
             "--vonage-signature-method", "sha256"],
            stdout=subprocess.PIPE, text=True)
        cls.pub = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            line = cls.proc.stdout.readline()
            if not line:
                raise RuntimeError("fake_provider exited early")
            if line.startswith("TELNYX_PUBLIC_KEY "):
                cls.pub = line.split()[1]
            if line.startswith("LISTENING "):
                cls.port = int(line.split()[1])
                break
        cls.base = "http://127.0.0.1:%d" % cls.port
        cls.recv = Receiver(cls.pub)
        cls.hook = "http://127.0.0.1:%d" % cls.recv.port

    @classmethod
    def tearDownClass(cls):
        cls.recv.stop()
        cls.proc.send_signal(signal.SIGTERM)
        try:
            rc = cls.proc.wait(10)
        except subprocess.TimeoutExpired:
            cls.proc.kill()
            raise
        shutil.rmtree(cls.tmp, ignore_errors=True)
        assert rc == 0, "fake_provider exit status %s" % rc

    def setUp(self):
        self.ctl("/_fake/reset", {})

    # -- helpers

    def http(self, method, path, data=None, headers=None, timeout=5):
        req = urllib.request.Request(self.base + path, data=data,
                                     method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def ctl(self, path, obj=None):
        data = None if obj is None else json.dumps(obj).encode()
        st, _, body = self.http("POST" if data is not None else "GET", path,
                                data, {"Content-Type": "application/json"},
                                timeout=15)
        self.assertEqual(st, 200, body)
        return json.loads(body)

    def twilio(self, fields, sid=SID, token=TOKEN, timeout=5):
        auth = base64.b64encode(("%s:%s" % (sid, token)).encode()).decode()
        return self.http(
            "POST", "/2010-04-01/Accounts/%s/Messages.json" % sid,
            urllib.parse.urlencode(fields).encode(),
            {"Authorization": "Basic " + auth,
             "Content-Type": "application/x-www-form-urlencoded",
             "Accept": "application/json"}, timeout)

    def telnyx(self, obj, key=TELNYX_KEY):
        return self.http("POST", "/v2/messages", json.dumps(obj).encode(),
                         {"Authorization": "Bearer " + key,
                          "Content-Type": "application/json"})

    def vonage(self, fields):
        return self.http("POST", "/sms/json",
                         urllib.parse.urlencode(fields).encode(),
                         {"Content-Type":
                          "application/x-www-form-urlencoded"})

    TW_OK = [("To", "+14155552671"), ("From", "+14155550100"),
             ("Body", "hello"),
             ("StatusCallback", "https://gw.example.org/sms/x/status")]

    # -- Twilio

    def test_twilio_create(self):
        fields = self.TW_OK + [("MediaUrl", "https://m.example/1.jpg"),
                               ("MediaUrl", "https://m.example/2.jpg")]
        st, _, body = self.twilio(fields)
        self.assertEqual(st, 201, body)
        m = json.loads(body)
        self.assertRegex(m["sid"], r"^MM[0-9a-f]{32}$")
        self.assertEqual(m["status"], "queued")
        self.assertEqual(m["to"], "+14155552671")
        self.assertEqual(m["num_media"], "2")
        self.assertEqual(m["num_segments"], "1")
        self.assertIsNone(m["error_code"])
        st, _, body = self.twilio(self.TW_OK)
        sms = json.loads(body)
        self.assertRegex(sms["sid"], r"^SM[0-9a-f]{32}$")
        recs = self.ctl("/_fake/requests?provider=twilio")
        self.assertEqual(len(recs), 2)
        self.assertEqual(recs[0]["form"]["MediaUrl"],
                         ["https://m.example/1.jpg",
                          "https://m.example/2.jpg"])
        self.assertEqual(recs[0]["response_status"], 201)
        # The same requests reached the --record file.
        with open(self.rec_path) as f:
            lines = [json.loads(x) for x in f]
        seqs = {r["seq"] for r in lines}
        self.assertTrue({r["seq"] for r in recs} <= seqs)
        # Fetch by sid.
        auth = base64.b64encode(("%s:%s" % (SID, TOKEN)).encode()).decode()
        st, _, body = self.http(
            "GET", "/2010-04-01/Accounts/%s/Messages/%s.json" %
            (SID, sms["sid"]), headers={"Authorization": "Basic " + auth})
        self.assertEqual((st, json.loads(body)["sid"]), (200, sms["sid"]))

    def test_twilio_errors(self):
        st, _, body = self.twilio(self.TW_OK, token="wrong")
        self.assertEqual(st, 401)
        self.assertEqual(json.loads(body)["code"], 20003)
        st, _, body = self.twilio([("To", "5551234567"),
                                   ("From", "+14155550100"),
                                   ("Body", "x")])
        err = json.loads(body)
        self.assertEqual((st, err["code"], err["status"]), (400, 21211, 400))
        self.assertIn("5551234567", err["message"])
        self.assertEqual(err["more_info"],
                         "https://www.twilio.com/docs/errors/21211")
        st, _, body = self.twilio([("To", "+14155552671"),
                                   ("From", "+14155550100")])
        self.assertEqual((st, json.loads(body)["code"]), (400, 21619))
        st, _, body = self.twilio([("To", "+15005550004"),
                                   ("From", "+14155550100"),
                                   ("Body", "x")])
        self.assertEqual((st, json.loads(body)["code"]), (400, 21610))

    # -- Telnyx

    def test_telnyx(self):
        st, _, body = self.telnyx({"from": "+13125550001",
                                   "to": "+17735550002", "text": "hi",
                                   "media_urls": ["https://m.example/a.png"],
                                   "webhook_url": "https://gw/x"})
        self.assertEqual(st, 200, body)
        d = json.loads(body)["data"]
        self.assertRegex(d["id"], r"^[0-9a-f-]{36}$")
        self.assertEqual(d["record_type"], "message")
        self.assertEqual(d["to"][0]["phone_number"], "+17735550002")
        self.assertEqual(d["to"][0]["status"], "queued")
        self.assertEqual(d["type"], "MMS")
        st, _, body = self.telnyx({"from": "+13125550001",
                                   "to": "+17735550002", "text": "x"},
                                  key="nope")
        self.assertEqual(st, 401)
        self.assertEqual(json.loads(body)["errors"][0]["code"], "10009")
        st, _, body = self.telnyx({"from": "+13125550001", "to": "7735550002",
                                   "text": "x"})
        e = json.loads(body)["errors"][0]
        self.assertEqual((st, e["code"], e["source"]["pointer"]),
                         (400, "40310", "/to"))
        self.assertEqual(e["title"], "Invalid 'to' address")

    # -- Vonage

    def test_vonage(self):
        ok = {"api_key": VKEY, "api_secret": VSECRET, "from": "14155550100",
              "to": "447700900000", "text": "hello", "client-ref": "r1"}
        st, _, body = self.vonage(ok)
        r = json.loads(body)
        self.assertEqual((st, r["message-count"]), (200, "1"))
        self.assertEqual(r["messages"][0]["status"], "0")
        self.assertEqual(r["messages"][0]["to"], "447700900000")
        self.assertEqual(r["messages"][0]["client-ref"], "r1")
        self.assertTrue(r["messages"][0]["message-id"])
        # Long text is split server-side: one entry per part.
        st, _, body = self.vonage(dict(ok, text="a" * 161))
        r = json.loads(body)
        self.assertEqual((r["message-count"], len(r["messages"])), ("2", 2))
        for bad, status in ((dict(ok, api_secret="no"), "4"),
                            (dict(ok, to="+447700900000"), "3"),
                            ({k: v for k, v in ok.items() if k != "to"},
                             "2")):
            st, _, body = self.vonage(bad)
            m = json.loads(body)["messages"][0]
            self.assertEqual((st, m["status"]), (200, status))
            self.assertTrue(m["error-text"])
        # Signed request instead of api_secret.
        signed = {k: v for k, v in ok.items() if k != "api_secret"}
        signed["timestamp"] = str(int(time.time()))
        signed["sig"] = fp.vonage_signature(signed, VSIG, "sha256")
        st, _, body = self.vonage(signed)
        self.assertEqual(json.loads(body)["messages"][0]["status"], "0")
        st, _, body = self.vonage(dict(signed, sig="00" * 32))
        self.assertEqual(json.loads(body)["messages"][0]["status"], "14")
        st, _, body = self.vonage(dict(signed, api_secret=VSECRET))
        self.assertEqual(json.loads(body)["messages"][0]["status"], "32")

    # -- faults

    def test_fault_fail_then_recover(self):
        self.ctl("/_fake/faults", {"fail": 2, "status": 503})
        for _ in range(2):
            st, _, body = self.twilio(self.TW_OK)
            self.assertEqual(st, 503)
            self.assertEqual(json.loads(body)["code"], 20503)
        st, _, _ = self.twilio(self.TW_OK)
        self.assertEqual(st, 201)
        stats = self.ctl("/_fake/stats")
        self.assertGreaterEqual(stats["faults"]["fail"], 2)
        self.assertEqual(stats["pending_faults"], [])

    def test_fault_429_retry_after(self):
        self.ctl("/_fake/faults", {"status": 429, "retry_after": 2,
                                   "fail": 1, "provider": "telnyx"})
        # Scoped to telnyx: twilio is untouched.
        self.assertEqual(self.twilio(self.TW_OK)[0], 201)
        st, hdrs, body = self.telnyx({"from": "+13125550001",
                                      "to": "+17735550002", "text": "x"})
        self.assertEqual((st, hdrs.get("Retry-After")), (429, "2"))
        self.assertEqual(json.loads(body)["errors"][0]["code"], "10011")
        self.assertEqual(self.telnyx({"from": "+13125550001",
                                      "to": "+17735550002",
                                      "text": "x"})[0], 200)

    def test_fault_error_code(self):
        self.ctl("/_fake/faults", {"error_code": 21610, "fail": 1})
        st, _, body = self.twilio(self.TW_OK)
        e = json.loads(body)
        self.assertEqual((st, e["code"]), (400, 21610))
        self.assertEqual(e["message"],
                         "Attempt to send to unsubscribed recipient")
        self.ctl("/_fake/faults", {"error_code": 7, "fail": 1,
                                   "provider": "vonage"})
        st, _, body = self.vonage({"api_key": VKEY, "api_secret": VSECRET,
                                   "from": "1415", "to": "447700900000",
                                   "text": "x"})
        m = json.loads(body)["messages"][0]
        self.assertEqual((st, m["status"], m["error-text"]),
                         (200, "7", "Number Barred"))

    def test_fault_hang(self):
        self.ctl("/_fake/faults", {"hang": 1})
        t0 = time.monotonic()
        with self.assertRaises(OSError):  # socket.timeout is an OSError
            self.twilio(self.TW_OK, timeout=0.7)
        self.assertGreaterEqual(time.monotonic() - t0, 0.6)
        self.assertEqual(self.twilio(self.TW_OK)[0], 201)
        recs = self.ctl("/_fake/requests")
        self.assertEqual(recs[0]["fault"], "hang")
        self.assertIsNone(recs[0]["response_status"])
        # The fake notices the client gave up.
        deadline = time.monotonic() + 3
        while self.ctl("/_fake/stats")["hanging"] and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.ctl("/_fake/stats")["hanging"], 0)

    def test_fault_close(self):
        self.ctl("/_fake/faults", {"close": 1})
        with self.assertRaises((OSError, http.client.HTTPException)):
            self.twilio(self.TW_OK)
        self.assertEqual(self.twilio(self.TW_OK)[0], 201)

    def test_fault_latency_and_clear(self):
        self.ctl("/_fake/faults", {"latency_ms": 400})
        t0 = time.monotonic()
        self.assertEqual(self.twilio(self.TW_OK)[0], 201)
        self.assertGreaterEqual(time.monotonic() - t0, 0.4)
        self.ctl("/_fake/faults", {"fail": 5})
        r = self.ctl("/_fake/faults", {"clear": True})
        self.assertEqual((r["faults"], r["latency_ms"]), ([], 0))
        t0 = time.monotonic()
        self.assertEqual(self.twilio(self.TW_OK)[0], 201)
        self.assertLess(time.monotonic() - t0, 0.4)

    # -- webhooks

    def send(self, kind, spec):
        return self.ctl("/_fake/send_" + kind, spec)

    def test_twilio_webhooks(self):
        spec = {"provider": "twilio", "url": self.hook + "/twilio/in",
                "from": "+14155550100", "to": "+14155552671",
                "body": "Hello été 😀", "media": ["https://m/1.jpg"]}
        r = self.send("inbound", spec)
        self.assertEqual(r["status"], 200, r)
        self.assertIn("<Response", r["body"])
        got = dict(urllib.parse.parse_qsl(self.recv.got[-1]["body"].decode(),
                                          keep_blank_values=True))
        self.assertEqual(got["Body"], "Hello été 😀")
        self.assertEqual(got["From"], "+14155550100")
        self.assertEqual((got["NumMedia"], got["MediaUrl0"]),
                         ("1", "https://m/1.jpg"))
        self.assertEqual(got["AccountSid"], SID)
        self.assertTrue(got["MessageSid"].startswith("MM"))
        for sign in (False, "bad"):
            self.assertEqual(self.send("inbound", dict(spec, sign=sign))
                             ["status"], 403, sign)
        self.assertNotIn("X-Twilio-Signature",
                         self.recv.got[-2]["headers"])
        # Status callback for a message sent through the fake.
        sid = json.loads(self.twilio(self.TW_OK)[2])["sid"]
        r = self.send("status", {"provider": "twilio", "message_id": sid,
                                 "url": self.hook + "/twilio/st",
                                 "status": "undelivered",
                                 "error_code": 30005})
        self.assertEqual(r["status"], 200)
        got = dict(urllib.parse.parse_qsl(self.recv.got[-1]["body"].decode()))
        self.assertEqual((got["MessageSid"], got["MessageStatus"],
                          got["ErrorCode"], got["To"]),
                         (sid, "undelivered", "30005", "+14155552671"))

    def test_telnyx_webhooks(self):
        spec = {"provider": "telnyx", "url": self.hook + "/telnyx/in",
                "from": "+13125550001", "to": "+17735550002",
                "body": "hi", "media": [{"url": "https://m/a.png",
                                         "content_type": "image/png"}]}
        r = self.send("inbound", spec)
        self.assertEqual(r["status"], 200, r)
        ev = json.loads(self.recv.got[-1]["body"])
        self.assertEqual(ev["data"]["event_type"], "message.received")
        p = ev["data"]["payload"]
        self.assertEqual((p["from"]["phone_number"], p["text"]),
                         ("+13125550001", "hi"))
        self.assertEqual(p["media"][0]["content_type"], "image/png")
        for sign in (False, "bad", "stale"):
            self.assertEqual(self.send("inbound", dict(spec, sign=sign))
                             ["status"], 403, sign)
        mid = json.loads(self.telnyx({"from": "+13125550001",
                                      "to": "+17735550002",
                                      "text": "x"})[2])["data"]["id"]
        r = self.send("status", {"provider": "telnyx", "message_id": mid,
                                 "url": self.hook + "/telnyx/st",
                                 "status": "delivered"})
        self.assertEqual(r["status"], 200)
        ev = json.loads(self.recv.got[-1]["body"])["data"]
        self.assertEqual((ev["event_type"], ev["payload"]["id"],
                          ev["payload"]["to"][0]["status"]),
                         ("message.finalized", mid, "delivered"))

    def test_vonage_webhooks(self):
        spec = {"provider": "vonage", "url": self.hook + "/vonage/in",
                "from": "+447700900001", "to": "447700900000",
                "body": "stop now"}
        r = self.send("inbound", spec)
        self.assertEqual(r["status"], 200, r)
        got = dict(urllib.parse.parse_qsl(self.recv.got[-1]["body"].decode()))
        self.assertEqual((got["msisdn"], got["text"], got["keyword"],
                          got["type"]),
                         ("447700900001", "stop now", "STOP", "text"))
        self.assertEqual(self.send("inbound", dict(spec, method="GET"))
                         ["status"], 200)
        self.assertIn("?", self.recv.got[-1]["path"])
        for sign in (False, "bad", "stale"):
            self.assertEqual(self.send("inbound", dict(spec, sign=sign))
                             ["status"], 403, sign)
        r = self.send("status", {"provider": "vonage", "message_id": "0A1",
                                 "url": self.hook + "/vonage/st",
                                 "to": "447700900000", "status": "failed",
                                 "error_code": 9})
        self.assertEqual(r["status"], 200)
        got = dict(urllib.parse.parse_qsl(self.recv.got[-1]["body"].decode()))
        self.assertEqual((got["messageId"], got["status"], got["err-code"]),
                         ("0A1", "failed", "9"))

    def test_webhook_unreachable_and_bad_spec(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead = s.getsockname()[1]
        r = self.send("inbound", {"provider": "twilio", "from": "+1",
                                  "url": "http://127.0.0.1:%d/x" % dead})
        self.assertIsNone(r["status"])
        self.assertIn("error", r)
        st, _, _ = self.http("POST", "/_fake/send_inbound",
                             json.dumps({"provider": "nope"}).encode(),
                             {"Content-Type": "application/json"})
        self.assertEqual(st, 400)


if __name__ == "__main__":
    unittest.main(verbosity=2)
