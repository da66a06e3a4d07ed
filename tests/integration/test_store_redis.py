"""store.c and queue.c against a real redis-server, through the
store_driver front end: registrations, streams, the inbound queue, the
command timeout, reconnect after a Redis restart, AUTH and SELECT."""

import os
import queue
import signal
import subprocess
import sys
import threading
import time

from redis_fixture import Redis

HERE = os.path.dirname(os.path.abspath(__file__))
COND_CONFLICT = 2


def driver_path():
    p = os.environ.get("STORE_DRIVER_BIN")
    if not p and os.environ.get("POSTERN_ADMIN_BIN"):
        p = os.path.join(os.path.dirname(os.environ["POSTERN_ADMIN_BIN"]),
                         "store_driver")
    if not p or not os.access(p, os.X_OK):
        sys.exit("test_store_redis: store_driver not built "
                 "(set STORE_DRIVER_BIN)")
    return p


class Driver:
    def __init__(self, url, prefix="t", timeout_ms=1000):
        self.proc = subprocess.Popen(
            [driver_path(), url, prefix, str(timeout_ms)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=open(os.devnull, "w") if not os.environ.get("VERBOSE")
            else None, text=True, bufsize=1)
        self.lines = queue.Queue()
        self.events = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _next(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("driver: no answer")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                raise AssertionError("driver: no answer")
            if line is None:
                raise AssertionError("driver died (rc %s)" % self.proc.wait())
            if line.startswith("EV "):
                self.events.append(line[3:])
                continue
            return line

    def cmd(self, line, timeout=10.0):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self._next(timeout)

    def ok(self, line, timeout=10.0):
        r = self.cmd(line, timeout)
        assert r == "ok", "%s -> %s" % (line, r)

    def wait_event(self, pred, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, e in enumerate(self.events):
                if pred(e):
                    del self.events[i]
                    return e
            try:
                line = self.lines.get(timeout=0.05)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError("driver died")
            assert line.startswith("EV "), "unexpected line %r" % line
            self.events.append(line[3:])
        return None

    def drain_events(self, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                line = self.lines.get(timeout=0.05)
            except queue.Empty:
                continue
            if line is not None and line.startswith("EV "):
                self.events.append(line[3:])

    def close(self):
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        except OSError:
            pass
        rc = self.proc.wait(20)
        assert rc == 0, "driver exit %d (sanitizer report?)" % rc


def check_registrations(d):
    gw = "sms.example.org"
    d.ok("reg_set %s alice@example.org +15550001111" % gw)
    assert d.cmd("reg_get_addr %s alice@example.org" % gw) == \
        "val +15550001111"
    assert d.cmd("reg_get_jid %s +15550001111" % gw) == \
        "val alice@example.org"
    # another JID may not take a held number
    r = d.cmd("reg_set %s bob@example.org +15550001111" % gw)
    assert r.startswith("err perm %d " % COND_CONFLICT), r
    assert d.cmd("reg_get_addr %s bob@example.org" % gw) == "nil"
    # the holder may re-register the same number, and replace it
    d.ok("reg_set %s alice@example.org +15550001111" % gw)
    d.ok("reg_set %s alice@example.org +15550002222" % gw)
    assert d.cmd("reg_get_jid %s +15550001111" % gw) == "nil"
    assert d.cmd("reg_get_jid %s +15550002222" % gw) == \
        "val alice@example.org"
    d.ok("reg_set %s bob@example.org +15550001111" % gw)
    assert d.cmd("reg_list %s" % gw) == \
        "list alice@example.org=+15550002222 bob@example.org=+15550001111"
    # contacts go with the registration
    d.ok("contact_add %s alice@example.org +15559990000" % gw)
    d.ok("contact_add %s alice@example.org +15559990001" % gw)
    d.ok("contact_remove %s alice@example.org +15559990001" % gw)
    assert d.cmd("contact_list %s alice@example.org" % gw) == \
        "list +15559990000"
    assert d.cmd("reg_remove %s alice@example.org" % gw) == \
        "val +15550002222"
    assert d.cmd("reg_remove %s alice@example.org" % gw) == "nil"
    assert d.cmd("contact_list %s alice@example.org" % gw) == "list"
    assert d.cmd("reg_get_jid %s +15550002222" % gw) == "nil"
    assert d.cmd("reg_list %s" % gw) == "list bob@example.org=+15550001111"
    # gateways are separate namespaces
    assert d.cmd("reg_list email.example.org") == "list"


def parse_entries(line):
    assert line.startswith("entries"), line
    out = []
    for tok in line.split()[1:]:
        ident, deliveries, payload = tok.split(":", 2)
        out.append((ident, int(deliveries), payload))
    return out


def check_streams(d, r):
    assert d.cmd("slen s1") == "val 0"
    id1 = d.cmd("sadd s1 - one")
    assert id1.startswith("val "), id1
    id2 = d.cmd("sadd s1 pid-7 two")
    assert id2.startswith("val "), id2
    assert d.cmd("sadd s1 pid-7 two-again") == "nil"   # duplicate
    assert d.cmd("slen s1") == "val 2"
    assert r.cli("TTL", "t:seen:s1:pid-7").strip() not in ("-1", "-2")

    e = parse_entries(d.cmd("sread s1 c1 10 30000"))
    assert [(x[1], x[2]) for x in e] == [(1, "one"), (1, "two")], e
    # nothing new, nothing idle long enough to reclaim
    assert parse_entries(d.cmd("sread s1 c1 10 30000")) == []
    # our own pending entries come back, counted
    e = parse_entries(d.cmd("sown s1 c1 10 0"))
    assert [(x[1], x[2]) for x in e] == [(2, "one"), (2, "two")], e
    assert parse_entries(d.cmd("sown s1 c2 10 0")) == []
    # another consumer reclaims them after min idle
    time.sleep(0.3)
    assert parse_entries(d.cmd("sread s1 c2 10 60000")) == []
    e = parse_entries(d.cmd("sread s1 c2 1 200"))
    assert [(x[1], x[2]) for x in e] == [(3, "one")], e
    e = parse_entries(d.cmd("sread s1 c2 10 200"))
    assert [(x[1], x[2]) for x in e] == [(3, "two")], e
    for ident, _, _ in parse_entries(d.cmd("sown s1 c2 10 0")):
        d.ok("sack s1 %s" % ident)
    assert d.cmd("slen s1") == "val 0"
    assert parse_entries(d.cmd("sown s1 c2 10 0")) == []
    # an entry without the "p" field reads as an empty payload
    r.cli("XADD", "t:stream:s1", "*", "x", "y")
    e = parse_entries(d.cmd("sread s1 c1 10 30000"))
    assert len(e) == 1 and e[0][2] == "", e


def deliveries(d, body, seconds):
    d.drain_events(seconds)
    n = len([e for e in d.events
             if e.startswith("deliver") and e.endswith(" " + body)])
    d.events = [e for e in d.events if not e.endswith(" " + body)]
    return n


def check_queue(d, r):
    gw = "sms.example.org"
    key = "t:stream:in:" + gw
    d.ok("qreg " + gw)
    d.ok("qpush %s +15551234567 +15550001111 hello SM1" % gw)
    assert d.wait_event(lambda e: e == "deliver +15551234567 "
                        "+15550001111 hello", 5), d.events
    # a webhook retried by the provider is delivered once
    d.ok("qpush %s +15551234567 +15550001111 hello-dup SM1" % gw)
    assert deliveries(d, "hello-dup", 1.0) == 0
    assert deliveries(d, "hello", 0.5) == 0
    deadline = time.monotonic() + 5
    while r.cli("XLEN", key).strip() != "0" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert r.cli("XLEN", key).strip() == "0"

    # not ready: nothing is delivered, then it is
    d.ok("qready 0")
    d.ok("qpush %s +15551234567 +15550001111 later" % gw)
    assert deliveries(d, "later", 1.0) == 0
    d.ok("qready 1")
    assert d.wait_event(lambda e: e.endswith(" later"), 5)

    # a malformed entry is dropped, and does not block what follows
    r.cli("XADD", key, "*", "p", "{garbage")
    d.ok("qpush %s +15551234567 +15550001111 after-garbage" % gw)
    assert d.wait_event(lambda e: e.endswith(" after-garbage"), 5)

    # retry: stays pending, comes back, is not lost or doubled
    d.ok("qmode retry")
    d.ok("qpush %s +15551234567 +15550001111 flaky" % gw)
    assert d.wait_event(lambda e: e.endswith(" flaky"), 5)
    d.ok("qmode hold")
    assert d.wait_event(lambda e: e.endswith(" flaky"), 10)
    # held (in flight): never handed out a second time meanwhile
    assert deliveries(d, "flaky", 1.5) == 0
    d.ok("qrelease ok")
    assert deliveries(d, "flaky", 1.5) == 0
    d.ok("qmode ok")
    deadline = time.monotonic() + 5
    while r.cli("XLEN", key).strip() != "0" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert r.cli("XLEN", key).strip() == "0"
    pending = r.cli("XPENDING", key, "postern").split()
    assert pending and pending[0] == "0", pending


def check_timeout(d, r):
    d.ok("ping")
    sleeper = threading.Thread(target=r.cli, args=("DEBUG", "SLEEP", "2.5"))
    sleeper.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    res = d.cmd("ping", timeout=5)
    took = time.monotonic() - t0
    assert res.startswith("err temp "), res
    assert 0.8 <= took <= 2.0, took
    sleeper.join()
    time.sleep(0.5)
    # the late PONG was swallowed: every call answered exactly once
    issued, answered = map(int, d.cmd("stats").split()[1:])
    assert issued == answered, (issued, answered)
    d.ok("ping")
    assert "state down" not in d.events, d.events


def check_stopped_server(d, r):
    r.send_signal(signal.SIGSTOP)
    try:
        res = d.cmd("ping", timeout=5)
        assert res.startswith("err temp "), res
        # silence for 3x the timeout: link declared dead
        assert d.cmd("wait_down 6000", timeout=8) == "down"
        res = d.cmd("ping", timeout=5)
        assert res.startswith("err temp "), res
    finally:
        r.send_signal(signal.SIGCONT)
    assert d.cmd("wait_up 15000", timeout=20) == "up"
    d.ok("ping")


def check_restart(d, r):
    gw = "sms.example.org"
    r.stop(signal.SIGKILL)
    assert d.cmd("wait_down 5000", timeout=8) == "down"
    res = d.cmd("ping")
    assert res.startswith("err temp "), res
    res = d.cmd("qpush %s +15551234567 +15550001111 while-down" % gw)
    assert res.startswith("err temp "), res
    time.sleep(1.0)
    r.start()
    assert d.cmd("wait_up 15000", timeout=20) == "up"
    d.ok("ping")
    d.ok("qpush %s +15551234567 +15550001111 after-restart" % gw)
    assert d.wait_event(lambda e: e.endswith(" after-restart"), 5)
    issued, answered = map(int, d.cmd("stats").split()[1:])
    assert issued == answered, (issued, answered)


def check_auth_select():
    with Redis(password="s3cret-pw") as r:
        d = Driver(r.url(db=3))
        try:
            assert d.cmd("wait_up 5000") == "up"
            d.ok("reg_set sms.example.org carol@example.org +15550003333")
            assert r.cli("-n", "3", "HGET", "t:reg:sms.example.org:j2a",
                         "carol@example.org").strip() == "+15550003333"
            assert r.cli("HGET", "t:reg:sms.example.org:j2a",
                         "carol@example.org").strip() == ""
        finally:
            d.close()
        bad = Driver(r.url(db=3).replace("s3cret-pw", "wrong"))
        try:
            assert bad.cmd("wait_up 1500") == "timeout"
            res = bad.cmd("ping")
            assert res.startswith("err temp "), res
        finally:
            bad.close()


def main():
    with Redis() as r:
        d = Driver(r.url(), timeout_ms=1000)
        try:
            assert d.cmd("wait_up 5000") == "up"
            check_registrations(d)
            check_streams(d, r)
            check_queue(d, r)
            check_timeout(d, r)
            check_stopped_server(d, r)
            check_restart(d, r)
        finally:
            d.close()
    check_auth_select()
    print("test_store_redis: ok")


if __name__ == "__main__":
    main()
