"""smtp_out.c (libESMTP on worker threads) against the aiosmtpd sink,
through smtp_driver: exact delivery, batching several messages per
session, STARTTLS required/optional/off with certificate checks, AUTH
PLAIN and LOGIN, 4xx/5xx at MAIL, RCPT and DATA, refused connections,
stalled relays and shutdown with sessions in flight."""

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SINK = os.path.join(HERE, "smtp_sink.py")
PY = "/usr/bin/python3"

# enum cond in src/util.h
COND_ITEM_NOT_FOUND = 6
COND_NOT_ACCEPTABLE = 8
COND_REMOTE_SERVER_TIMEOUT = 14

FROM = "alice@mail.example.org"


def driver_path():
    p = os.environ.get("SMTP_DRIVER_BIN")
    if not p and os.environ.get("POSTERN_ADMIN_BIN"):
        p = os.path.join(os.path.dirname(os.environ["POSTERN_ADMIN_BIN"]),
                         "smtp_driver")
    if not p or not os.access(p, os.X_OK):
        sys.exit("test_smtp_out: smtp_driver not built "
                 "(set SMTP_DRIVER_BIN)")
    return p


def message(n, rcpt=None, body=None):
    rcpt = rcpt or "bob%d@example.com" % n
    body = body if body is not None else "message number %d\r\n" % n
    return {
        "from": FROM,
        "rcpt": rcpt,
        "data": ("From: Alice <%s>\r\nTo: %s\r\n"
                 "Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
                 "Message-ID: <m%d@mail.example.org>\r\n"
                 "Subject: test %d\r\n\r\n%s") % (FROM, rcpt, n, n, body),
    }


class Sink:
    def __init__(self, tmp, *args):
        self.record = os.path.join(tmp, "sink-%d.jsonl" % id(self))
        self.cert = None
        self.proc = subprocess.Popen(
            [PY, SINK, "--record", self.record] + list(args),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=None if os.environ.get("VERBOSE") else subprocess.DEVNULL,
            text=True, bufsize=1)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 20
        while True:
            line = self.line(deadline - time.monotonic())
            if line.startswith("CERT "):
                self.cert = line.split(" ", 1)[1]
            elif line.startswith("LISTENING "):
                self.port = int(line.split()[1])
                break

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def line(self, timeout):
        try:
            line = self.lines.get(timeout=max(timeout, 0.01))
        except queue.Empty:
            raise AssertionError("smtp_sink: no answer")
        if line is None:
            raise AssertionError("smtp_sink exited")
        return line

    def control(self, cmd):
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        assert self.line(10) == "OK"

    def messages(self):
        if not os.path.exists(self.record):
            return []
        with open(self.record, encoding="utf-8") as f:
            return [json.loads(l) for l in f if l.strip()]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class SmtpOutTest(unittest.TestCase):
    def setUp(self):
        self.tmpdir = tempfile.TemporaryDirectory(prefix="postern-smtp-")
        self.tmp = self.tmpdir.name
        self.sinks = []

    def tearDown(self):
        for s in self.sinks:
            s.stop()
        self.tmpdir.cleanup()

    def sink(self, *args):
        s = Sink(self.tmp, *args)
        self.sinks.append(s)
        return s

    def drive(self, port, messages, env=None, **kw):
        spec = {"host": "127.0.0.1", "port": port, "starttls": "off",
                "timeout": 5, "workers": 1, "helo": "postern.test",
                "messages": messages}
        spec.update(kw)
        path = os.path.join(self.tmp, "spec.json")
        with open(path, "w") as f:
            json.dump(spec, f)
        e = dict(os.environ)
        e.pop("SSL_CERT_FILE", None)
        e.pop("SSL_CERT_DIR", None)
        e.update(env or {})
        t0 = time.monotonic()
        p = subprocess.run([driver_path(), path], capture_output=True,
                           text=True, timeout=120, env=e)
        self.elapsed = time.monotonic() - t0
        self.stderr = p.stderr
        if os.environ.get("VERBOSE"):
            sys.stderr.write(p.stdout + p.stderr)
        lines = [json.loads(l) for l in p.stdout.splitlines() if l.strip()]
        self.assertTrue(lines and lines[-1].get("done"),
                        "driver did not finish (rc %d): %s\n%s"
                        % (p.returncode, p.stdout, p.stderr))
        self.assertEqual(lines[-1]["inflight"], 0)
        out = {}
        for l in lines[:-1]:
            self.assertNotIn(l["i"], out, "two outcomes for one message")
            out[l["i"]] = l
        self.assertEqual(sorted(out), list(range(len(messages))),
                         "missing outcomes: %s" % p.stdout)
        self.assertIn(p.returncode, (0, 2))
        return out

    def assert_ok(self, r):
        self.assertTrue(r["ok"], "expected success, got %r" % r)

    def assert_temp(self, r, *words):
        self.assertFalse(r["ok"], r)
        self.assertTrue(r["temporary"], r)
        self.assertEqual(r["cond"], COND_REMOTE_SERVER_TIMEOUT, r)
        for w in words:
            self.assertIn(w, r["msg"])

    def assert_perm(self, r, cond, *words):
        self.assertFalse(r["ok"], r)
        self.assertFalse(r["temporary"], r)
        self.assertEqual(r["cond"], cond, r)
        for w in words:
            self.assertIn(w, r["msg"])

    # ------------------------------------------------------------ delivery

    def test_plain_delivery_exact_data(self):
        s = self.sink()
        m = message(1, body="line one\r\n.leading dot\r\n..two dots\r\n"
                            "caf\u00e9\r\n")
        out = self.drive(s.port, [m])
        self.assert_ok(out[0])
        got = s.messages()
        self.assertEqual(len(got), 1)
        self.assertEqual(got[0]["mail_from"], FROM)
        self.assertEqual(got[0]["rcpt_tos"], [m["rcpt"]])
        self.assertEqual(got[0]["helo"], "postern.test")
        self.assertFalse(got[0]["tls"])
        self.assertEqual(got[0]["data"].encode("latin-1"),
                         m["data"].encode("utf-8"))

    def test_missing_final_crlf_is_added(self):
        s = self.sink()
        m = message(2, body="no newline at the end")
        out = self.drive(s.port, [m])
        self.assert_ok(out[0])
        self.assertEqual(s.messages()[0]["data"].encode("latin-1"),
                         m["data"].encode() + b"\r\n")

    def test_null_reverse_path(self):
        s = self.sink()
        m = message(3)
        m["from"] = ""
        out = self.drive(s.port, [m])
        self.assert_ok(out[0])
        self.assertEqual(s.messages()[0]["mail_from"], "<>")

    def test_several_messages_per_session(self):
        s = self.sink()
        msgs = [message(i) for i in range(12)]
        out = self.drive(s.port, msgs, workers=1)
        for i in range(12):
            self.assert_ok(out[i])
        got = s.messages()
        self.assertEqual(sorted(g["rcpt_tos"][0] for g in got),
                         sorted(m["rcpt"] for m in msgs))
        by_rcpt = {g["rcpt_tos"][0]: g for g in got}
        for m in msgs:
            self.assertEqual(by_rcpt[m["rcpt"]]["data"].encode("latin-1"),
                             m["data"].encode())
        # the first send opens a session at once; the other 11 queue and
        # go out 10 per session: 1 + 10 + 1
        sessions = {}
        for g in got:
            sessions[g["session"]] = sessions.get(g["session"], 0) + 1
        self.assertEqual(sorted(sessions.values()), [1, 1, 10])

    def test_parallel_workers(self):
        s = self.sink("--latency", "data:0.3")
        msgs = [message(i) for i in range(6)]
        out = self.drive(s.port, msgs, workers=3)
        for i in range(6):
            self.assert_ok(out[i])
        got = s.messages()
        self.assertEqual(len(got), 6)
        # three sessions of one message start at once, the other three
        # messages share the first session to finish
        self.assertEqual(len({g["session"] for g in got}), 4)
        # 6 DATA replies of 0.3 s each take 1.8 s one after another
        self.assertLess(self.elapsed, 1.6)

    # ----------------------------------------------------------- STARTTLS

    def test_starttls_required_verified(self):
        s = self.sink("--tls-dir", self.tmp)
        # several sessions: libESMTP used to hang in some TLS 1.3 sessions
        out = self.drive(s.port, [message(i) for i in range(8)],
                         starttls="required", workers=4,
                         env={"SSL_CERT_FILE": s.cert})
        for i in range(8):
            self.assert_ok(out[i])
        got = s.messages()
        self.assertEqual(len(got), 8)
        self.assertTrue(all(g["tls"] for g in got))
        self.assertEqual(len({g["session"] for g in got}), 5)
        self.assertLess(self.elapsed, 4)

    def test_starttls_required_untrusted_certificate(self):
        s = self.sink("--tls-dir", self.tmp)
        out = self.drive(s.port, [message(1)], starttls="required")
        self.assert_temp(out[0], "certificate")
        self.assertEqual(s.messages(), [])

    def test_starttls_required_wrong_name(self):
        s = self.sink("--tls-dir", self.tmp, "--no-ip-san")
        out = self.drive(s.port, [message(1)], starttls="required",
                         env={"SSL_CERT_FILE": s.cert})
        self.assert_temp(out[0], "certificate")
        self.assertEqual(s.messages(), [])

    def test_starttls_required_not_offered(self):
        s = self.sink()
        out = self.drive(s.port, [message(1), message(2)],
                         starttls="required")
        self.assert_temp(out[0], "STARTTLS")
        self.assert_temp(out[1], "STARTTLS")
        self.assertEqual(s.messages(), [])

    def test_starttls_optional_is_opportunistic(self):
        s = self.sink("--tls-dir", self.tmp)  # self-signed, not trusted
        out = self.drive(s.port, [message(1)], starttls="optional")
        self.assert_ok(out[0])
        self.assertTrue(s.messages()[0]["tls"])
        plain = self.sink()
        out = self.drive(plain.port, [message(2)], starttls="optional")
        self.assert_ok(out[0])
        self.assertFalse(plain.messages()[0]["tls"])

    def test_starttls_off_stays_plain(self):
        s = self.sink("--tls-dir", self.tmp)
        out = self.drive(s.port, [message(1)], starttls="off")
        self.assert_ok(out[0])
        self.assertFalse(s.messages()[0]["tls"])

    # ---------------------------------------------------------------- AUTH

    def test_auth_plain(self):
        s = self.sink("--auth", "relayuser:s3cret pass", "--auth-mechs",
                      "PLAIN")
        out = self.drive(s.port, [message(1)], user="relayuser",
                         password="s3cret pass")
        self.assert_ok(out[0])
        self.assertEqual(s.messages()[0]["auth"], "relayuser")

    def test_auth_login(self):
        s = self.sink("--auth", "relayuser:pw", "--auth-mechs", "LOGIN")
        out = self.drive(s.port, [message(1)], user="relayuser",
                         password="pw")
        self.assert_ok(out[0])
        self.assertEqual(s.messages()[0]["auth"], "relayuser")

    def test_auth_over_starttls(self):
        s = self.sink("--tls-dir", self.tmp, "--require-tls", "--auth",
                      "relayuser:pw")
        out = self.drive(s.port, [message(1)], user="relayuser",
                         password="pw", starttls="required",
                         env={"SSL_CERT_FILE": s.cert})
        self.assert_ok(out[0])
        got = s.messages()[0]
        self.assertTrue(got["tls"])
        self.assertEqual(got["auth"], "relayuser")

    def test_auth_wrong_password_is_temporary(self):
        s = self.sink("--auth", "relayuser:right")
        out = self.drive(s.port, [message(1), message(2)], user="relayuser",
                         password="wrong")
        # an operator problem: keep the mail and retry
        self.assert_temp(out[0], "AUTH", "535")
        self.assert_temp(out[1], "AUTH", "535")
        self.assertEqual(s.messages(), [])
        self.assertNotIn("wrong", self.stderr)  # never log the password

    # ------------------------------------------------ replies of the relay

    def test_rcpt_550_is_permanent_with_server_text(self):
        s = self.sink("--fail", "rcpt:550:5.1.1 <nobody@example.com>: "
                      "Recipient address rejected:1")
        out = self.drive(s.port, [message(1), message(2)])
        self.assert_perm(out[0], COND_ITEM_NOT_FOUND, "RCPT", "550",
                         "5.1.1", "Recipient address rejected")
        self.assert_ok(out[1])
        self.assertEqual([g["rcpt_tos"] for g in s.messages()],
                         [[message(2)["rcpt"]]])

    def test_rcpt_451_is_temporary(self):
        s = self.sink("--fail", "rcpt:451:4.7.1 Greylisted, try later:0")
        out = self.drive(s.port, [message(1)])
        self.assert_temp(out[0], "451", "Greylisted")
        self.assertEqual(s.messages(), [])

    def test_data_554_is_permanent(self):
        s = self.sink()
        s.control("fail data 554 1 5.7.1 Message rejected as spam")
        out = self.drive(s.port, [message(1), message(2)])
        self.assert_perm(out[0], COND_NOT_ACCEPTABLE, "DATA", "554",
                         "rejected as spam")
        self.assert_ok(out[1])

    def test_data_452_is_temporary(self):
        s = self.sink()
        s.control("fail data 452 0 4.3.1 Insufficient system storage")
        out = self.drive(s.port, [message(1)])
        self.assert_temp(out[0], "452", "Insufficient")
        self.assertEqual(s.messages(), [])

    def test_mail_553_is_permanent(self):
        s = self.sink("--fail", "mail:553:5.7.1 Sender not allowed:0")
        out = self.drive(s.port, [message(1)])
        self.assert_perm(out[0], COND_NOT_ACCEPTABLE, "MAIL", "553",
                         "Sender not allowed")

    def test_mixed_outcomes_in_one_session(self):
        s = self.sink()
        msgs = [message(i) for i in range(5)]
        s.control("reject rcpt %s 550 5.1.1 unknown user" % msgs[2]["rcpt"])
        s.control("reject data %s 451 4.3.0 try again" % msgs[3]["rcpt"])
        # message 0 goes alone; 1..4 share the next session, whose
        # smtp_start_session "succeeds" although 2 and 3 were refused
        out = self.drive(s.port, msgs)
        self.assert_ok(out[0])
        self.assert_ok(out[1])
        self.assert_perm(out[2], COND_ITEM_NOT_FOUND, "550", "unknown user")
        self.assert_temp(out[3], "451", "try again")
        self.assert_ok(out[4])
        got = s.messages()
        self.assertEqual(sorted(g["rcpt_tos"][0] for g in got),
                         sorted(msgs[i]["rcpt"] for i in (0, 1, 4)))
        self.assertEqual(len({g["session"] for g in got}), 2)

    # ------------------------------------------------ network failures

    def test_connection_refused_is_temporary(self):
        out = self.drive(free_port(), [message(1), message(2)])
        self.assert_temp(out[0])
        self.assert_temp(out[1])
        self.assertLess(self.elapsed, 5)

    def test_stalled_relay_times_out(self):
        s = self.sink("--stall")
        out = self.drive(s.port, [message(1)], timeout=2)
        self.assert_temp(out[0], "2 s")
        self.assertGreater(out[0]["ms"], 1500)
        self.assertLess(out[0]["ms"], 6000)

    def test_slow_data_reply_times_out(self):
        s = self.sink("--latency", "data:8")
        out = self.drive(s.port, [message(1)], timeout=2)
        self.assert_temp(out[0])
        self.assertLess(out[0]["ms"], 6000)

    # ------------------------------------------------------------ shutdown

    def test_shutdown_reports_real_outcome_of_running_session(self):
        s = self.sink("--latency", "data:1")
        msgs = [message(i) for i in range(3)]
        out = self.drive(s.port, msgs, free_after_ms=200)
        # message 0 was in a session: its real outcome is reported
        self.assert_ok(out[0])
        # 1 and 2 were still queued: failed at once, kept for retry
        for i in (1, 2):
            self.assert_temp(out[i], "shut down")
            self.assertLess(out[i]["ms"], out[0]["ms"])
        self.assertEqual(len(s.messages()), 1)

    # ------------------------------------------------------------- input

    def test_header_injection_in_envelope_refused(self):
        s = self.sink()
        bad = message(1, rcpt="bob@example.com\r\nRCPT TO:<evil@x.org>")
        out_path = os.path.join(self.tmp, "spec.json")
        with open(out_path, "w") as f:
            json.dump({"port": s.port, "messages": [bad, message(2)]}, f)
        p = subprocess.run([driver_path(), out_path], capture_output=True,
                           text=True, timeout=60)
        lines = [json.loads(l) for l in p.stdout.splitlines()]
        self.assertEqual(p.returncode, 2)
        self.assertEqual(lines[0], {"i": 0, "send_error":
                                    "bad envelope recipient",
                                    "temporary": False})
        self.assertTrue(any(l.get("i") == 1 and l.get("ok") for l in lines))
        self.assertEqual([g["rcpt_tos"] for g in s.messages()],
                         [[message(2)["rcpt"]]])


if __name__ == "__main__":
    unittest.main(verbosity=2)
