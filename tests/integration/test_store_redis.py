"""store.c and queue.c against a real redis-server, through the
store_driver front end: registrations, streams, the inbound queue, the
outbound queue (send, retry with backoff and Retry-After, max age and
dead letters, permanent errors, reclaim from a killed process, idle
refresh of a long send, two processes on one stream), the command
timeout, reconnect after a Redis restart, AUTH and SELECT."""

import json
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
    def __init__(self, url, prefix="t", timeout_ms=1000, consumer=None):
        self.proc = subprocess.Popen(
            [driver_path(), url, prefix, str(timeout_ms)] +
            ([consumer] if consumer else []),
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


OGW = "out.example.org"


def wait_until(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def out_driver(r, prefix, consumer="c1", conc=8, max_age=600, base=100,
               cap=5000, claim=35000):
    d = Driver(r.url(), prefix=prefix, consumer=consumer)
    assert d.cmd("wait_up 5000") == "up"
    d.ok("qreg " + OGW)
    d.ok("oreg %s %d %d %d %d %d" % (OGW, conc, max_age, base, cap, claim))
    return d


def sends_of(d, body):
    """(attempt, mono_ms) of every send of body seen so far (consumed)."""
    out, keep = [], []
    for e in d.events:
        f = e.split()
        if f[0] == "send" and f[1] == body:
            out.append((int(f[2]), int(f[3])))
        else:
            keep.append(e)
    d.events = keep
    return out


def keys(r, prefix):
    return {
        "out": "%s:stream:out:%s" % (prefix, OGW),
        "dead": "%s:stream:dead:out:%s" % (prefix, OGW),
        "in": "%s:stream:in:%s" % (prefix, OGW),
        "retry": "%s:retry:out:%s" % (prefix, OGW),
    }


def empty_out(r, prefix):
    k = keys(r, prefix)
    return (r.cli("XLEN", k["out"]).strip() == "0" and
            r.cli("ZCARD", k["retry"]).strip() == "0")


def check_outbound(r):
    p = "o1"
    k = keys(r, p)
    d = out_driver(r, p)
    try:
        # push -> send -> ack with the receipt mapping, nothing for the user
        d.ok("opush %s hello-out receipt" % OGW)
        assert d.wait_event(lambda e: e.startswith("send hello-out 0 "), 5)
        assert wait_until(lambda: empty_out(r, p))
        m = json.loads(r.cli("GET", "%s:rcpt:%s:P-hello-out" % (p, OGW)))
        assert m == {"jid": "alice@example.org/phone", "id": "hello-out",
                     "contact": "+15551234567@" + OGW, "receipt": True}, m
        ttl = int(r.cli("TTL", "%s:rcpt:%s:P-hello-out" % (p, OGW)))
        assert 6 * 86400 < ttl <= 7 * 86400, ttl
        assert r.cli("XPENDING", k["out"], "postern").split()[0] == "0"

        # Retry-After: the provider's 2 s beat the 100 ms backoff
        d.ok("omode ra 2")
        d.ok("opush %s ra-out" % OGW)
        assert wait_until(lambda: (d.drain_events(0.1) or True) and
                          len([e for e in d.events
                               if e.startswith("send ra-out ")]) >= 2, 8)
        got = sends_of(d, "ra-out")
        assert [a for a, _ in got] == [0, 1], got
        gap = got[1][1] - got[0][1]
        assert 1900 <= gap <= 4000, gap
        assert wait_until(lambda: empty_out(r, p))

        # permanent: an error notice for the sender now, no retry
        d.ok("omode perm")
        d.ok("opush %s perm-out" % OGW)
        e = d.wait_event(lambda e: e.startswith("notice error"), 5)
        assert e == ("notice error 6 perm-out alice@example.org/phone "
                     "+15551234567@" + OGW), e
        d.drain_events(1.0)
        assert len(sends_of(d, "perm-out")) == 1
        assert r.cli("XLEN", k["dead"]).strip() == "0"
        assert wait_until(lambda: empty_out(r, p))
        # the notice was acknowledged by its delivery
        assert wait_until(lambda: r.cli("XLEN", k["in"]).strip() == "0")
    finally:
        d.close()


def check_flaky_counts(r):
    p = "o2"
    d = out_driver(r, p)
    try:
        d.ok("omode flaky 2")
        d.ok("opush %s count-out" % OGW)
        assert wait_until(lambda: (d.drain_events(0.1) or True) and
                          r.cli("EXISTS", "%s:rcpt:%s:P-count-out" %
                                (p, OGW)).strip() == "1", 10)
        d.drain_events(1.5)
        got = sends_of(d, "count-out")
        # two failures, then exactly one success
        assert [a for a, _ in got] == [0, 1, 2], got
        # capped exponential backoff with jitter: [base/2, base], then
        # [base, 2 base] (base 100 ms), plus the 500 ms mover period
        assert 50 <= got[1][1] - got[0][1] <= 800, got
        assert 100 <= got[2][1] - got[1][1] <= 900, got
        assert wait_until(lambda: empty_out(r, p))
    finally:
        d.close()


def check_max_age(r):
    p = "o3"
    k = keys(r, p)
    d = out_driver(r, p, max_age=2, base=200, cap=400)
    try:
        d.ok("omode temp")
        d.ok("opush %s old-out" % OGW)
        e = d.wait_event(lambda e: e.startswith("notice error"), 8)
        # remote-server-timeout (14) to the sender, original id
        assert e == ("notice error 14 old-out alice@example.org/phone "
                     "+15551234567@" + OGW), e
        d.drain_events(1.0)
        got = sends_of(d, "old-out")
        assert len(got) >= 3, got
        assert [a for a, _ in got] == list(range(len(got))), got
        assert r.cli("XLEN", k["dead"]).strip() == "1"
        dead = r.cli("XRANGE", k["dead"], "-", "+").split("\n")
        payload = json.loads([x for x in dead if x.startswith("{")][0])
        assert payload["last_error"] == "HTTP 503", payload
        assert payload["body"] == "old-out"
        assert wait_until(lambda: empty_out(r, p))
        # and nothing more is sent
        d.drain_events(1.0)
        assert sends_of(d, "old-out") == []
    finally:
        d.close()


def check_reclaim(r):
    p = "o4"
    k = keys(r, p)
    # a process dies with a send in flight: another one takes it over
    d1 = out_driver(r, p, consumer="c1", claim=1500)
    d1.ok("omode hold")
    d1.ok("opush %s orphan-out" % OGW)
    assert d1.wait_event(lambda e: e.startswith("send orphan-out 0 "), 5)
    d1.proc.kill()
    d1.proc.wait()
    d2 = out_driver(r, p, consumer="c2", claim=1500)
    try:
        assert d2.wait_event(lambda e: e.startswith("send orphan-out "), 8)
        d2.drain_events(1.0)
        assert sends_of(d2, "orphan-out") == []
        assert wait_until(lambda: empty_out(r, p))
        assert r.cli("XPENDING", k["out"], "postern").split()[0] == "0"

        # a live process keeps a long send: no reclaim while it refreshes
        d3 = out_driver(r, p, consumer="c3", claim=1500)
        try:
            d2.ok("qstop")  # only d3 reads new entries
            d3.ok("omode hold")
            d3.ok("opush %s long-out" % OGW)
            assert d3.wait_event(lambda e: e.startswith("send long-out 0"), 5)
            d2.drain_events(4.0)   # > 2x the claim idle
            assert sends_of(d2, "long-out") == []
            d3.ok("orelease ok")
            assert wait_until(lambda: empty_out(r, p))
            d3.drain_events(0.5)
            assert sends_of(d3, "long-out") == []
        finally:
            d3.close()
    finally:
        d2.close()


def check_two_consumers(r):
    p = "o5"
    n = 60
    a = out_driver(r, p, consumer="a", conc=4)
    b = out_driver(r, p, consumer="b", conc=4)
    try:
        for d in (a, b):
            d.ok("omode flaky 1")
        for i in range(n):
            (a if i % 2 else b).ok("opush %s m%d-out" % (OGW, i))
        assert wait_until(lambda: (a.drain_events(0.05) or True) and
                          (b.drain_events(0.05) or True) and
                          empty_out(r, p) and
                          r.cli("XPENDING", keys(r, p)["out"],
                                "postern").split()[0] == "0", 30)
        a.drain_events(1.0)
        b.drain_events(1.0)
        total = 0
        for i in range(n):
            body = "m%d-out" % i
            got = sends_of(a, body) + sends_of(b, body)
            # one failure then one success, never a send twice
            assert sorted(x for x, _ in got) == [0, 1], (body, got)
            total += len(got)
        assert total == 2 * n
        both = [len([e for e in d.events if e.startswith("send")])
                for d in (a, b)]
        assert both == [0, 0], both
        rc = r.cli("KEYS", "%s:rcpt:*" % p).split()
        assert len(rc) == n, len(rc)
    finally:
        a.close()
        b.close()


def main():
    with Redis() as r:
        check_outbound(r)
        check_flaky_counts(r)
        check_max_age(r)
        check_reclaim(r)
        check_two_consumers(r)
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
