"""Helpers shared by the SMS provider integration tests (test_sms_*.py).

An SmsStack is a rig.Stack (private redis-server, Prosody or ejabberd,
postern) whose SMS gateway talks to a real provider API shape: the fake
Twilio/Telnyx/Vonage of fakes/fake_provider.py, started on a free port
with --exit-with-parent. postern gets

    provider = { name = "twilio"; api_url = "http://127.0.0.1:FAKE"; ... }
    http.public_url = "http://127.0.0.1:<postern http port>"
    queue = { max_age; retry_base_ms; retry_cap_ms }   (small in tests)

so StatusCallback URLs point back at postern and the fake can send signed
inbound/status webhooks to it. rig.py's postern_config only knows the
sandbox provider, so the config is generated here.

    class T(sms_rig.SmsStackTest):
        provider = "twilio"
        queue = {"retry_cap_ms": 500}
        ...
        st.fake.faults(fail=3, status=500)
        st.fake.sent_bodies()          # bodies the fake accepted (2xx)

Counting is done at the fake: FakeProvider.records() pulls the request log
incrementally (GET /_fake/requests?since=SEQ), so long tests do not fetch
thousands of records again and again.
"""

import asyncio
import collections
import json
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request

import rig
from rig import DOMAIN, SMS_JID, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))
FAKE_PY = os.path.join(HERE, "fakes", "fake_provider.py")

TW_SID = "AC" + "5" * 31 + "7"
TW_TOKEN = "tw-integration-token-3141"
TELNYX_KEY = "KEYtelnyx-integration-2718"
# a fixed Ed25519 seed: the fake prints the matching public key
TELNYX_SEED = "4f" * 32
VONAGE_KEY = "vk12ab34"
VONAGE_SECRET = "vonage-api-secret-1618"
VONAGE_SIG_SECRET = "vonage-sig-secret-1414"


def _http(method, url, obj=None, timeout=30):
    data = None
    headers = {}
    if obj is not None:
        data = json.dumps(obj).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method,
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class FakeProvider:
    """fakes/fake_provider.py as a child process, stopped by PID."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.log_path = os.path.join(tmp, "fake_provider.log")
        self.record_path = os.path.join(tmp, "fake_requests.jsonl")
        self.port = None
        self.telnyx_public_key = None
        self.proc = None
        self._records = []
        self._last_seq = 0

    def start(self):
        argv = ["/usr/bin/python3", FAKE_PY, "--port", "0", "--exit-with-parent",
                "--record", self.record_path,
                "--twilio-account-sid", TW_SID,
                "--twilio-auth-token", TW_TOKEN,
                "--telnyx-api-key", TELNYX_KEY,
                "--telnyx-private-key", TELNYX_SEED,
                "--vonage-api-key", VONAGE_KEY,
                "--vonage-api-secret", VONAGE_SECRET,
                "--vonage-signature-secret", VONAGE_SIG_SECRET,
                "--vonage-signature-method", "md5hash"]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = rig.Proc("fake_provider", argv, self.log_path,
                             env=env).start()

        def listening():
            if not self.proc.alive():
                raise AssertionError("fake_provider exited:\n"
                                     + rig.tail(self.log_path))
            port = key = None
            with open(self.log_path, errors="replace") as f:
                for line in f:
                    if line.startswith("TELNYX_PUBLIC_KEY "):
                        key = line.split()[1]
                    elif line.startswith("LISTENING "):
                        port = int(line.split()[1])
            return (port, key) if port and key else None
        self.port, self.telnyx_public_key = wait_until(
            listening, 20, "fake provider LISTENING line", [self.log_path])
        return self

    def stop(self):
        if self.proc:
            self.proc.stop(timeout=5)

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    # ---- control API

    def ctl(self, method, path, obj=None, timeout=30):
        st, text = _http(method, self.url + path, obj, timeout)
        if st >= 300:
            raise AssertionError("fake %s %s -> %d %s" % (method, path, st,
                                                          text))
        return json.loads(text)

    def faults(self, **spec):
        return self.ctl("POST", "/_fake/faults", spec)

    def clear(self):
        return self.faults(clear=True)

    def stats(self):
        return self.ctl("GET", "/_fake/stats")

    def records(self, provider=None):
        """Every API request so far, oldest first. Fetched incrementally:
        records up to the first one still waiting for its answer are
        final and kept; that one and the later ones are fetched again."""
        new = self.ctl("GET", "/_fake/requests?since=%d" % self._last_seq)
        self._records = [r for r in self._records
                         if r["seq"] <= self._last_seq] + new
        for r in new:
            if not _final(r):
                break
            self._last_seq = r["seq"]
        return [r for r in self._records
                if provider is None or r["provider"] == provider]

    def send_inbound(self, **spec):
        spec.setdefault("timeout", 15)
        return self.ctl("POST", "/_fake/send_inbound", spec)

    def send_status(self, **spec):
        spec.setdefault("timeout", 15)
        return self.ctl("POST", "/_fake/send_status", spec)


def _final(rec):
    """The fake has answered (or will never answer) this request."""
    return (rec.get("response_status") is not None or
            rec.get("fault") in ("hang", "close"))


def accepted(rec):
    """True when the fake accepted this send (2xx and no provider error)."""
    st = rec.get("response_status")
    if st is None or not 200 <= st < 300:
        return False
    if rec["provider"] == "vonage":
        msgs = (rec.get("response_body") or {}).get("messages") or []
        return bool(msgs) and all(m.get("status") == "0" for m in msgs)
    return True


def req_field(rec, name):
    """A send request's field (first value), in provider-neutral names:
    to, from, body, media (list)."""
    p = rec["provider"]
    if p == "twilio":
        f = rec.get("form") or {}
        one = {"to": "To", "from": "From", "body": "Body"}
        if name == "media":
            return f.get("MediaUrl", [])
        if name == "status_callback":
            return (f.get("StatusCallback") or [None])[0]
        return (f.get(one[name]) or [None])[0]
    if p == "telnyx":
        j = rec.get("json") or {}
        return {"to": j.get("to"), "from": j.get("from"),
                "body": j.get("text"), "media": j.get("media_urls") or [],
                "status_callback": j.get("webhook_url")}[name]
    f = {k: v[0] for k, v in (rec.get("form") or {}).items()}
    for k, v in urllib.parse.parse_qsl(rec.get("query") or ""):
        f.setdefault(k, v)
    return {"to": f.get("to"), "from": f.get("from"), "body": f.get("text"),
            "media": [], "status_callback": f.get("callback")}[name]


def provider_id(rec):
    b = rec.get("response_body") or {}
    if rec["provider"] == "twilio":
        return b.get("sid")
    if rec["provider"] == "telnyx":
        return (b.get("data") or {}).get("id")
    msgs = b.get("messages") or []
    return msgs[-1].get("message-id") if msgs else None


def provider_block(provider, fake, timeout=None, extra=""):
    t = "" if timeout is None else "timeout = %s; " % timeout
    if provider == "twilio":
        creds = 'account_sid = "%s"; auth_token = "%s";' % (TW_SID, TW_TOKEN)
    elif provider == "telnyx":
        creds = 'api_key = "%s"; public_key = "%s";' % (
            TELNYX_KEY, fake.telnyx_public_key)
    elif provider == "vonage":
        creds = ('api_key = "%s"; api_secret = "%s"; '
                 'signature_secret = "%s";'
                 % (VONAGE_KEY, VONAGE_SECRET, VONAGE_SIG_SECRET))
    else:
        raise ValueError(provider)
    return ('provider = { name = "%s"; api_url = "%s"; %s %s %s };'
            % (provider, fake.url, creds, t, extra))


def sms_config(stack, http_port=None, log_level=None):
    """libconfig text: one SMS gateway on stack.provider at the fake."""
    limits = dict(stack.limits or {})
    limits.setdefault("per_user_per_minute", 0)
    limits.setdefault("per_user_per_day", 0)
    limits.setdefault("max_segments", 0)
    lim = " ".join("%s = %s;" % (k, v if not isinstance(v, list) else
                                 rig._lc_list(v))
                   for k, v in sorted(limits.items()))
    queue = dict(max_age=3600, retry_base_ms=200, retry_cap_ms=2000)
    queue.update(stack.queue or {})
    q = " ".join("%s = %d;" % kv for kv in sorted(queue.items()))
    port = http_port or stack.http_port
    return f"""# generated by tests/integration/sms_rig.py
log = {{ level = "{log_level or stack.log_level}"; format = "text"; }};
redis = {{ url = "{stack.redis.url}"; prefix = "{stack.prefix}"; }};
http = {{ listen = "127.0.0.1:{port}";
         public_url = "http://127.0.0.1:{port}"; }};
xmpp = {{ host = "127.0.0.1"; port = {stack.server.component_port}; }};
queue = {{ {q} }};
gateways = (
  {{ transport = "sms";
    jid = "{SMS_JID}";
    secret = "{rig.SMS_SECRET}";
    allowed_domains = [ "{DOMAIN}" ];
    numbers = {rig._lc_list(rig.NUMBERS)};
    {provider_block(stack.provider, stack.fake, stack.provider_timeout)}
    limits = {{ {lim} }};
  }}
);
"""


class ExtraPostern(rig.Postern):
    """A further postern process on the same stack (own HTTP port, config
    and log), e.g. a second consumer of the same Redis."""

    def __init__(self, stack, name, http_port, config_text):
        self.stack = stack
        self.http_port = http_port
        self.config_path = os.path.join(stack.tmp, name + ".conf")
        with open(self.config_path, "w") as f:
            f.write(config_text)
        self.log_path = os.path.join(stack.tmp, name + ".log")
        self.proc = None

    def healthz(self):
        url = "http://127.0.0.1:%d/healthz" % self.http_port
        st, text = _http("GET", url, timeout=2)
        try:
            return st, json.loads(text)
        except ValueError:
            return st, text


class SmsStack(rig.Stack):
    def __init__(self, provider="twilio", queue=None, provider_timeout=None,
                 **kw):
        super().__init__(**kw)
        self.provider = provider
        self.queue = queue
        self.provider_timeout = provider_timeout
        self.fake = FakeProvider(self.tmp)

    def start(self):
        try:
            self.fake.start()
        except BaseException:
            self.close()
            raise
        return super().start()

    def config_text(self, **kw):
        return sms_config(self)

    def close(self):
        try:
            super().close()
        finally:
            self.fake.stop()

    # ---- URLs postern serves

    def hook_url(self, kind, port=None):
        return "http://127.0.0.1:%d/sms/%s/%s" % (port or self.http_port,
                                                  SMS_JID, kind)

    def inbound(self, frm, to, body="", **kw):
        """Has the fake send a signed inbound webhook; returns its answer
        ({"status", "body", ...})."""
        return self.fake.send_inbound(provider=self.provider,
                                      url=self.hook_url("inbound"),
                                      to=to, body=body, **{"from": frm},
                                      **kw)

    def status(self, message_id, status, **kw):
        return self.fake.send_status(provider=self.provider,
                                     url=self.hook_url("status"),
                                     message_id=message_id, status=status,
                                     **kw)

    # ---- counting at the fake

    def sends(self, pred=None):
        """Send requests the fake accepted, oldest first."""
        return [r for r in self.fake.records(self.provider)
                if r["method"] in ("POST", "GET") and accepted(r)
                and (pred is None or pred(r))]

    def wait_sends(self, pred, count=1, timeout=rig.DEFAULT_TIMEOUT,
                   what="accepted send(s)"):
        deadline = time.monotonic() + timeout
        while True:
            hits = self.sends(pred)
            if len(hits) >= count:
                return hits
            if time.monotonic() > deadline:
                raise AssertionError(
                    "timed out after %.0fs waiting for %d %s (have %d)\n"
                    "--- fake stats ---\n%s\n--- postern ---\n%s"
                    % (timeout, count, what, len(hits),
                       json.dumps(self.fake.stats()),
                       rig.tail(self.postern.log_path, 40)))
            self.loop.run_until_complete(asyncio.sleep(0.1))

    def body_counts(self, prefix=""):
        """Counter body -> accepted sends (whole bodies only)."""
        return collections.Counter(
            req_field(r, "body") for r in self.sends()
            if (req_field(r, "body") or "").startswith(prefix))

    def queues(self):
        """{name: count} from `postern-admin queues` for the SMS gateway."""
        out = {}
        for line in self.admin("queues").stdout.splitlines():
            parts = line.split("\t")
            if len(parts) == 3 and parts[0] == SMS_JID:
                out[parts[1]] = int(parts[2])
        return out

    def pump(self, seconds):
        """Keeps every client's XMPP stream serviced for seconds."""
        self.loop.run_until_complete(asyncio.sleep(seconds))


# ---------------------------------------------------------------- Redis


def _resp_read(f):
    line = f.readline()
    if not line:
        raise ConnectionError("redis closed the connection")
    t, rest = line[:1], line[1:-2]
    if t == b"+":
        return rest.decode()
    if t == b"-":
        raise RuntimeError("redis: " + rest.decode())
    if t == b":":
        return int(rest)
    if t == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2].decode(errors="replace")
    if t == b"*":
        n = int(rest)
        return None if n < 0 else [_resp_read(f) for _ in range(n)]
    raise RuntimeError("redis: unexpected reply %r" % line)


def redis_cmd(port, *args):
    """One command on a fresh connection; the parsed reply."""
    with socket.create_connection(("127.0.0.1", port), 5) as s:
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        s.sendall(out)
        with s.makefile("rb") as f:
            return _resp_read(f)


def out_stream_payloads(stack, gw=SMS_JID):
    """Outbound messages persisted and not yet finished: the JSON of every
    entry of the out stream and of the retry zset."""
    port = stack.redis.port
    out = []
    for _id, fields in redis_cmd(port, "XRANGE", "%s:stream:out:%s"
                                 % (stack.prefix, gw), "-", "+") or []:
        kv = dict(zip(fields[::2], fields[1::2]))
        out.append(json.loads(kv["p"]))
    for m in redis_cmd(port, "ZRANGE", "%s:retry:out:%s"
                       % (stack.prefix, gw), "0", "-1") or []:
        out.append(json.loads(m))
    return out


def out_pending_bodies(stack, gw=SMS_JID, group="postern"):
    """Bodies of the outbound entries claimed by a consumer and not yet
    acknowledged (the sends in flight, XPENDING of the group)."""
    key = "%s:stream:out:%s" % (stack.prefix, gw)
    port = stack.redis.port
    out = []
    for pid, _consumer, _idle, _n in redis_cmd(port, "XPENDING", key, group,
                                               "-", "+", "10000") or []:
        for _id, fields in redis_cmd(port, "XRANGE", key, pid, pid) or []:
            kv = dict(zip(fields[::2], fields[1::2]))
            out.append(json.loads(kv["p"]).get("body"))
    return out


def redis_restart_begin(stack):
    """Stops the stack's redis-server after writing its data to disk
    (SHUTDOWN SAVE: the rig runs it without save points)."""
    try:
        redis_cmd(stack.redis.port, "SHUTDOWN", "SAVE")
    except (ConnectionError, OSError):
        pass  # the server closes the connection as it exits
    if stack.redis.proc.wait(10) is None:
        raise AssertionError("redis-server did not exit after SHUTDOWN")
    stack.redis.proc.stop()


def redis_restart_end(stack):
    """Starts redis-server again on the same port and directory."""
    stack.redis.start()


def loss_dup(expected, counts):
    """(lost, duplicated) given the expected bodies and a Counter."""
    lost = [b for b in expected if counts.get(b, 0) == 0]
    dup = {b: n for b, n in counts.items() if n > 1 and b in expected}
    return lost, dup


def report(name, expected, lost, dup):
    print("%s: %d expected, %d lost, %d duplicated (%d extra sends)"
          % (name, len(expected), len(lost), len(dup),
             sum(n - 1 for n in dup.values())), flush=True)


class SmsStackTest(rig.StackTest):
    provider = "twilio"
    queue = None
    provider_timeout = None
    log_level = "debug"

    @classmethod
    def setUpClass(cls):
        cls.stack = SmsStack(provider=cls.provider, queue=cls.queue,
                             provider_timeout=cls.provider_timeout,
                             server=cls.server, limits=cls.limits,
                             log_level=cls.log_level).start()
        try:
            cls.prepare()
        except BaseException:
            cls.stack.close()
            cls.stack = None
            raise

    def setUp(self):
        # one test's faults never leak into the next
        self.stack.fake.clear()


def fill_client(stack, user, number):
    c = stack.client(user)
    stack.register(c, number)
    return c


def message_burst(client, prefix, n, to, receipt=False, chunk=100):
    """Sends n messages with bodies "<prefix>-<i>"; returns the bodies."""
    bodies = []
    extra = "<request xmlns='urn:xmpp:receipts'/>" if receipt else ""
    for i in range(n):
        b = "%s-%04d" % (prefix, i)
        client.x.send_raw("<message to='%s' type='chat' id='%s-id'>"
                          "<body>%s</body>%s</message>" % (to, b, b, extra))
        bodies.append(b)
        if (i + 1) % chunk == 0:
            client.pump(0.05)
    client.pump(0.2)
    return bodies
