"""Integration test rig: private redis-server, Prosody or ejabberd, postern.

Everything binds 127.0.0.1 on free ports, lives in a private temp dir and is
stopped by PID (in close(), and again from atexit if a test died half-way).
Readiness is always a poll with a deadline; on timeout the process's log is
put into the failure message. No fixed sleeps except "nothing happened"
checks, which first use a ping round-trip as a barrier.

A Stack is one redis + one XMPP server + one postern:

    stack = rig.Stack(server="prosody")   # or "ejabberd"
    stack.start()
    alice = stack.client("alice")         # logged-in slixmpp client
    ...
    stack.close()

SMS gateway JID is sms.<domain> (numbers NUMBERS, sandbox provider writing
stack.outbox); optional email gateway email.<domain>. Users: USERS on the
main domain, OTHER_USERS on a second domain that is not in allowed_domains
(Prosody only).
"""

import asyncio
import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET

import slixmpp
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher.base import MatcherBase

DOMAIN = "localhost"
OTHER_DOMAIN = "other.localhost"
SMS_JID = "sms." + DOMAIN
EMAIL_JID = "email." + DOMAIN
MAIL_DOMAIN = "mail.example.org"
NUMBERS = ["+15550001111", "+15550002222", "+15550003333",
           "+15550004444", "+15550005555", "+15550006666"]
USERS = ["alice", "bob", "carol", "dave", "erin", "frank"]
OTHER_USERS = ["mallory"]
PASSWORD = "pw-test-1"
SMS_SECRET = "sms-component-secret-42"
EMAIL_SECRET = "email-component-secret-43"

NS_CLIENT = "jabber:client"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_CAPS = "http://jabber.org/protocol/caps"
NS_REGISTER = "jabber:iq:register"
NS_GATEWAY = "jabber:iq:gateway"
NS_VERSION = "jabber:iq:version"
NS_PING = "urn:xmpp:ping"
NS_COMMANDS = "http://jabber.org/protocol/commands"
NS_DATA = "jabber:x:data"
NS_OOB = "jabber:x:oob"
NS_RECEIPTS = "urn:xmpp:receipts"

DEFAULT_TIMEOUT = 10.0

# ---------------------------------------------------------------- helpers

_live_procs = []


def _cleanup_all():
    for p in list(_live_procs):
        p.stop(timeout=3)


atexit.register(_cleanup_all)


def _on_sigterm(signum, _frame):
    # ctest's timeout sends SIGTERM: unwind so finally blocks and atexit
    # stop every child by PID.
    raise SystemExit(128 + signum)


signal.signal(signal.SIGTERM, _on_sigterm)

try:
    import ctypes
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:
    _libc = None


def _die_with_parent():
    # PR_SET_PDEATHSIG: even a SIGKILLed test run leaves no server behind.
    if _libc is not None:
        _libc.prctl(1, signal.SIGKILL, 0, 0, 0)


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def tail(path, n=60):
    try:
        with open(path, "r", errors="replace") as f:
            lines = f.readlines()
    except OSError as e:
        return "(no log %s: %s)" % (path, e)
    return "".join(lines[-n:])


def wait_until(pred, timeout, what, logs=()):
    """Polls pred() until it returns a true value; returns that value."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    last_exc = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # the predicate may fail while starting
            last_exc = e
        if time.monotonic() > deadline:
            msg = "timed out after %.1fs waiting for %s" % (timeout, what)
            if last_exc is not None:
                msg += " (last error: %r)" % (last_exc,)
            for p in logs:
                msg += "\n----- %s -----\n%s" % (p, tail(p))
            raise AssertionError(msg)
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def port_open(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class Proc:
    """A child process with its output in a log file, stopped by PID."""

    def __init__(self, name, argv, log_path, env=None, cwd=None):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.popen = None

    def start(self):
        logf = open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=logf,
            stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd,
            start_new_session=True, preexec_fn=_die_with_parent)
        logf.close()
        _live_procs.append(self)
        return self

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen is not None and self.popen.poll() is None

    def send_signal(self, sig):
        if self.alive():
            os.kill(self.popen.pid, sig)

    def wait(self, timeout):
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout=10, sig=signal.SIGTERM):
        """SIGTERM, then SIGKILL after timeout. Returns the exit status."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            try:
                os.kill(self.popen.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        if self in _live_procs:
            _live_procs.remove(self)
        return self.popen.returncode

    def kill(self):
        if self.alive():
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait()
        if self in _live_procs:
            _live_procs.remove(self)

    def log(self):
        return tail(self.log_path, 100000)


# ---------------------------------------------------------------- servers


class Redis:
    def __init__(self, tmp):
        self.tmp = tmp
        self.port = free_port()
        self.dir = os.path.join(tmp, "redis")
        os.makedirs(self.dir, exist_ok=True)
        self.log_path = os.path.join(tmp, "redis.log")
        self.proc = None

    @property
    def url(self):
        return "redis://127.0.0.1:%d/0" % self.port

    def start(self):
        self.proc = Proc("redis", [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", self.dir,
            "--daemonize", "no"], self.log_path).start()
        wait_until(self.ping, 10, "redis-server on %d" % self.port,
                   [self.log_path])

    def ping(self):
        with socket.create_connection(("127.0.0.1", self.port), 1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")

    def stop(self):
        if self.proc:
            self.proc.stop()


class Prosody:
    """Private Prosody 0.12: c2s + component port, two virtual hosts."""

    kind = "prosody"

    def __init__(self, tmp, components):
        self.tmp = tmp
        self.dir = os.path.join(tmp, "prosody")
        os.makedirs(os.path.join(self.dir, "data"), exist_ok=True)
        self.c2s_port = free_port()
        self.component_port = free_port()
        self.components = dict(components)  # jid -> secret
        self.config_path = os.path.join(self.dir, "prosody.cfg.lua")
        self.log_path = os.path.join(self.dir, "prosody.log")
        self.out_path = os.path.join(self.dir, "prosody.out")
        self.domains = [DOMAIN, OTHER_DOMAIN]
        self.proc = None
        self.write_config()

    def write_config(self):
        comps = "".join('Component "%s"\n    component_secret = "%s"\n'
                        % (j, s) for j, s in self.components.items())
        cfg = f"""
run_as_root = true
pidfile = "{self.dir}/prosody.pid"
data_path = "{self.dir}/data"
plugin_paths = {{}}
interfaces = {{ "127.0.0.1" }}
local_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {self.c2s_port} }}
c2s_interfaces = {{ "127.0.0.1" }}
component_ports = {{ {self.component_port} }}
component_interfaces = {{ "127.0.0.1" }}
s2s_ports = {{}}
http_ports = {{}}
https_ports = {{}}
c2s_direct_tls_ports = {{}}
modules_enabled = {{ "roster"; "saslauth"; "disco"; "ping"; "version"; "posix";
                    "offline" }}
modules_disabled = {{ "s2s"; "tls" }}
authentication = "internal_plain"
storage = "internal"
c2s_require_encryption = false
s2s_require_encryption = false
allow_unencrypted_plain_auth = true
log = {{ {{ levels = {{ min = "debug" }}, to = "file", filename = "{self.log_path}" }} }}
VirtualHost "{DOMAIN}"
VirtualHost "{OTHER_DOMAIN}"
{comps}
"""
        with open(self.config_path, "w") as f:
            f.write(cfg)

    def start(self):
        self.proc = Proc("prosody", ["prosody", "--config", self.config_path,
                                     "-F"], self.out_path).start()
        wait_until(lambda: self._ready(), 20,
                   "prosody c2s %d / component %d" % (self.c2s_port,
                                                      self.component_port),
                   [self.out_path, self.log_path])

    def _ready(self):
        if not self.proc.alive():
            raise AssertionError("prosody exited:\n" + tail(self.out_path)
                                 + tail(self.log_path))
        return port_open(self.c2s_port) and port_open(self.component_port)

    def register(self, user, host, password):
        r = subprocess.run(["prosodyctl", "--config", self.config_path,
                            "register", user, host, password],
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise AssertionError("prosodyctl register %s@%s failed: %s%s"
                                 % (user, host, r.stdout, r.stderr))

    def stop(self):
        if self.proc:
            return self.proc.stop()

    def kill(self):
        if self.proc:
            self.proc.kill()

    def log(self):
        return tail(self.log_path, 1000000)


class Ejabberd:
    """Private ejabberd run with erl directly: no epmd, no distribution."""

    kind = "ejabberd"
    ERL_LIBS = "/usr/lib/x86_64-linux-gnu"

    def __init__(self, tmp, components):
        self.tmp = tmp
        self.dir = os.path.join(tmp, "ejabberd")
        os.makedirs(self.dir, exist_ok=True)
        self.c2s_port = free_port()
        self.component_port = free_port()
        self.http_port = free_port()
        self.components = dict(components)
        self.config_path = os.path.join(self.dir, "ejabberd.yml")
        self.log_path = os.path.join(self.dir, "ejabberd.log")
        self.out_path = os.path.join(self.dir, "erl.out")
        self.domains = [DOMAIN]
        self.proc = None
        self.write_config()

    def write_config(self):
        hosts = "".join('      "%s":\n        password: "%s"\n' % (j, s)
                        for j, s in self.components.items())
        cfg = f"""hosts:
  - "{DOMAIN}"
loglevel: debug
log_rotate_count: 0
auth_method: internal
auth_password_format: plain
listen:
  - port: {self.c2s_port}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    starttls_required: false
  - port: {self.component_port}
    ip: "127.0.0.1"
    module: ejabberd_service
    hosts:
{hosts}  - port: {self.http_port}
    ip: "127.0.0.1"
    module: ejabberd_http
    request_handlers:
      /api: mod_http_api
acl:
  loopback:
    ip:
      - 127.0.0.0/8
api_permissions:
  "admin access":
    who:
      - acl: loopback
    what: "*"
access_rules:
  local:
    allow: all
modules:
  mod_disco: {{}}
  mod_ping: {{}}
  mod_roster: {{}}
  mod_http_api: {{}}
"""
        with open(self.config_path, "w") as f:
            f.write(cfg)

    def start(self):
        env = dict(os.environ, ERL_LIBS=self.ERL_LIBS,
                   HOME=self.dir, ERL_CRASH_DUMP=self.dir + "/erl_crash.dump")
        argv = ["erl", "-noinput", "-start_epmd", "false",
                "-ejabberd", "config", '"%s"' % self.config_path,
                "log_path", '"%s"' % self.log_path,
                "-mnesia", "dir", '"%s/db"' % self.dir,
                "-s", "ejabberd"]
        self.proc = Proc("ejabberd", argv, self.out_path, env=env,
                         cwd=self.dir).start()
        wait_until(self._ready, 60, "ejabberd ports",
                   [self.out_path, self.log_path])

    def _ready(self):
        if not self.proc.alive():
            raise AssertionError("ejabberd exited:\n" + tail(self.out_path))
        if not (port_open(self.c2s_port) and port_open(self.component_port)):
            return False
        return self.api("status", {}) is not None

    def api(self, cmd, args):
        req = urllib.request.Request(
            "http://127.0.0.1:%d/api/%s" % (self.http_port, cmd),
            data=json.dumps(args).encode(), method="POST",
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read().decode() or "null")

    def register(self, user, host, password):
        self.api("register", {"user": user, "host": host,
                              "password": password})

    def stop(self):
        if self.proc:
            return self.proc.stop(timeout=15)

    def kill(self):
        if self.proc:
            self.proc.kill()

    def log(self):
        return tail(self.log_path, 1000000)


# ---------------------------------------------------------------- postern


def postern_bin():
    b = os.environ.get("POSTERN_BIN")
    if not b:
        for cand in ("/tmp/rig/build/postern",):
            if os.path.exists(cand):
                return cand
        raise unittest.SkipTest("POSTERN_BIN not set")
    return b


def admin_bin():
    b = os.environ.get("POSTERN_ADMIN_BIN")
    if not b:
        b = os.path.join(os.path.dirname(postern_bin()), "postern-admin")
    return b


def _lc_list(items):
    return "[ " + ", ".join('"%s"' % i for i in items) + " ]"


def postern_config(stack, sms_secret=None, email=False, limits=None,
                   log_level="debug", extra=""):
    """libconfig text for a postern attached to stack's server."""
    limits = dict(limits or {})
    limits.setdefault("per_user_per_minute", 1000)
    limits.setdefault("per_user_per_day", 10000)
    limits.setdefault("max_segments", 0)
    lim = " ".join("%s = %d;" % kv for kv in sorted(limits.items()))
    gws = [f"""  {{ transport = "sms";
    jid = "{SMS_JID}";
    secret = "{sms_secret or SMS_SECRET}";
    allowed_domains = [ "{DOMAIN}" ];
    numbers = {_lc_list(NUMBERS)};
    provider = {{ name = "sandbox"; outbox_file = "{stack.outbox}"; }};
    limits = {{ {lim} }};
  }}"""]
    if email:
        gws.append(f"""  {{ transport = "email";
    jid = "{EMAIL_JID}";
    secret = "{EMAIL_SECRET}";
    allowed_domains = [ "{DOMAIN}" ];
    mail_domain = "{MAIL_DOMAIN}";
    smtp = {{ host = "127.0.0.1"; port = {stack.smtp_port}; starttls = "off"; }};
    lmtp = {{ listen = "127.0.0.1:{stack.lmtp_port}"; }};
  }}""")
    return f"""# generated by tests/integration/rig.py
log = {{ level = "{log_level}"; format = "text"; }};
redis = {{ url = "{stack.redis.url}"; prefix = "{stack.prefix}"; }};
http = {{ listen = "127.0.0.1:{stack.http_port}";
         public_url = "http://127.0.0.1:{stack.http_port}"; }};
xmpp = {{ host = "127.0.0.1"; port = {stack.server.component_port}; }};
{extra}
gateways = (
{(","+chr(10)).join(gws)}
);
"""


class Postern:
    def __init__(self, stack, config_text):
        self.stack = stack
        self.config_path = os.path.join(stack.tmp, "postern.conf")
        with open(self.config_path, "w") as f:
            f.write(config_text)
        self.log_path = os.path.join(stack.tmp, "postern.log")
        self.proc = None

    def start(self, wait=True):
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        self.proc = Proc("postern", [postern_bin(), "-c", self.config_path],
                         self.log_path, env=env).start()
        if wait:
            self.wait_healthy()
        return self

    def healthz(self):
        """(status, parsed JSON or raw text)."""
        url = "http://127.0.0.1:%d/healthz" % self.stack.http_port
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                body = r.read().decode()
                status = r.status
        except urllib.error.HTTPError as e:
            body = e.read().decode()
            status = e.code
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body

    def _check_alive(self):
        if not self.proc.alive():
            raise AssertionError("postern exited (%s):\n%s" % (
                self.proc.popen.returncode, tail(self.log_path)))

    def wait_healthy(self, timeout=30):
        def ok():
            self._check_alive()
            return self.healthz()[0] == 200
        wait_until(ok, timeout, "postern /healthz 200",
                   [self.log_path, self.stack.server.log_path])

    def wait_unhealthy(self, timeout=20):
        def bad():
            self._check_alive()
            st, body = self.healthz()
            return (st, body) if st == 503 else None
        return wait_until(bad, timeout, "postern /healthz 503",
                          [self.log_path])

    def stop(self, timeout=10):
        return self.proc.stop(timeout=timeout) if self.proc else None

    def log(self):
        return tail(self.log_path, 1000000)

    def sanitizer_report(self):
        log = self.log()
        for pat in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                    "runtime error:", "Segmentation fault"):
            i = log.find(pat)
            if i >= 0:
                return log[max(0, i - 200):i + 3000]
        return None


# ---------------------------------------------------------------- XMPP client


class _MatchAll(MatcherBase):
    def __init__(self):
        super().__init__(None)

    def match(self, xml):
        return True


def local(tag):
    return tag.split("}", 1)[-1]


def child(el, ns, name):
    return el.find("{%s}%s" % (ns, name))


def stanza_error(el):
    """(type, condition, text) of an error stanza, or None."""
    if el.get("type") != "error":
        return None
    err = el.find("{%s}error" % NS_CLIENT)
    if err is None:
        return ("?", None, None)
    cond = None
    text = None
    for c in err:
        if c.tag.startswith("{%s}" % NS_STANZAS):
            if local(c.tag) == "text":
                text = c.text
            else:
                cond = local(c.tag)
    return (err.get("type"), cond, text)


def to_str(el):
    return ET.tostring(el, encoding="unicode")


def bare(jid):
    return (jid or "").split("/", 1)[0]


class Client:
    """A logged-in slixmpp client driven synchronously from the test."""

    _ids = 0

    def __init__(self, jid, password, port, loop):
        self.jid = jid
        self.loop = loop
        self.port = port
        self.inbox = []       # every stanza received, as ET elements
        self.taken = set()    # id()s of stanzas a wait() returned
        asyncio.set_event_loop(loop)
        x = slixmpp.ClientXMPP(jid, password)
        x.loop = loop
        x.register_plugin("feature_mechanisms",
                          pconfig={"unencrypted_plain": True})
        x.auto_authorize = True
        x.auto_subscribe = False
        self.session = loop.create_future()
        x.add_event_handler("session_start", self._session_start)
        x.add_event_handler("failed_auth", self._failed)
        x.register_handler(Callback("rig-catch-all", _MatchAll(),
                                    self._on_stanza))
        self.x = x

    def _session_start(self, _ev):
        if not self.session.done():
            self.session.set_result(True)

    def _failed(self, _ev):
        if not self.session.done():
            self.session.set_exception(AssertionError("auth failed for %s"
                                                      % self.jid))

    def _on_stanza(self, stanza):
        if local(stanza.xml.tag) in ("message", "presence", "iq"):
            self.inbox.append(stanza.xml)

    def connect(self, presence=True, timeout=20):
        self.x.connect(address=("127.0.0.1", self.port),
                       disable_starttls=True, force_starttls=False)
        try:
            self.run(asyncio.wait_for(asyncio.shield(self.session), timeout))
        except asyncio.TimeoutError:
            raise AssertionError("login of %s on port %d timed out after "
                                 "%.0fs" % (self.jid, self.port, timeout))
        if presence:
            self.send_raw("<presence/>")
        return self

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def pump(self, seconds=0.0):
        self.run(asyncio.sleep(seconds))

    @classmethod
    def new_id(cls):
        cls._ids += 1
        return "rig%d" % cls._ids

    def send_raw(self, xml):
        self.x.send_raw(xml)
        self.pump(0)

    def wait(self, pred, timeout=DEFAULT_TIMEOUT, what="stanza"):
        """First not-yet-taken stanza matching pred, else AssertionError."""
        deadline = time.monotonic() + timeout
        while True:
            for el in self.inbox:
                if id(el) in self.taken:
                    continue
                if pred(el):
                    self.taken.add(id(el))
                    return el
            if time.monotonic() > deadline:
                raise AssertionError(
                    "%s: timed out after %.1fs waiting for %s; received:\n%s"
                    % (self.jid, timeout, what,
                       "\n".join(to_str(e) for e in self.inbox[-15:])))
            self.pump(0.05)

    def iq(self, to, type_, payload, timeout=DEFAULT_TIMEOUT):
        """Sends an IQ and returns the reply element (result or error)."""
        iid = self.new_id()
        self.send_raw("<iq type='%s' to='%s' id='%s'>%s</iq>"
                      % (type_, to, iid, payload))
        return self.wait(lambda e: local(e.tag) == "iq" and e.get("id") ==
                         iid and e.get("type") in ("result", "error"),
                         timeout, "reply to iq %s (%s)" % (iid, payload))

    def message(self, to, body=None, type_="chat", extra="", mid=None):
        mid = mid or self.new_id()
        b = "" if body is None else "<body>%s</body>" % _esc(body)
        self.send_raw("<message to='%s' type='%s' id='%s'>%s%s</message>"
                      % (to, type_, mid, b, extra))
        return mid

    def barrier(self, to, timeout=DEFAULT_TIMEOUT):
        """Ping round-trip through the gateway: everything it was going to
        answer before this point has been answered by now (plus a little
        grace for asynchronous lookups)."""
        r = self.iq(to, "get", "<ping xmlns='urn:xmpp:ping'/>", timeout)
        self.pump(0.5)
        return r

    def messages_from(self, jid):
        return [e for e in self.inbox if local(e.tag) == "message"
                and bare(e.get("from")) == jid]

    def errors_for(self, mid):
        return [e for e in self.inbox if e.get("id") == mid
                and e.get("type") == "error"]

    def disconnect(self):
        try:
            self.x.disconnect()
            self.pump(0.2)
        except Exception:
            pass


def _esc(s):
    return (s.replace("&", "&amp;").replace("<", "&lt;")
            .replace(">", "&gt;"))


# ---------------------------------------------------------------- the stack


class Stack:
    def __init__(self, server="prosody", email=False, sms_secret=None,
                 limits=None, log_level="debug", start_postern=True,
                 extra=""):
        self.tmp = tempfile.mkdtemp(prefix="postern-it-")
        self.server_kind = server
        self.email = email
        self.sms_secret = sms_secret
        self.limits = limits
        self.log_level = log_level
        self.start_postern = start_postern
        self.extra = extra
        self.http_port = free_port()
        self.smtp_port = free_port()
        self.lmtp_port = free_port()
        self.prefix = "pit%d" % os.getpid()
        self.outbox = os.path.join(self.tmp, "outbox.jsonl")
        self.redis = Redis(self.tmp)
        comps = {SMS_JID: SMS_SECRET}
        if email:
            comps[EMAIL_JID] = EMAIL_SECRET
        cls = Prosody if server == "prosody" else Ejabberd
        self.server = cls(self.tmp, comps)
        self.postern = None
        self.clients = []
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.failed = False

    def start(self):
        try:
            self.redis.start()
            self.server.start()
            for u in USERS:
                self.server.register(u, DOMAIN, PASSWORD)
            if OTHER_DOMAIN in self.server.domains:
                for u in OTHER_USERS:
                    self.server.register(u, OTHER_DOMAIN, PASSWORD)
            self.postern = Postern(self, self.config_text())
            if self.start_postern:
                self.postern.start()
        except BaseException:
            self.close()
            raise
        return self

    def config_text(self, **kw):
        args = dict(sms_secret=self.sms_secret, email=self.email,
                    limits=self.limits, log_level=self.log_level,
                    extra=self.extra)
        args.update(kw)
        return postern_config(self, **args)

    def client(self, user, domain=DOMAIN, presence=True):
        c = Client("%s@%s" % (user, domain), PASSWORD, self.server.c2s_port,
                   self.loop)
        self.clients.append(c)
        try:
            return c.connect(presence=presence)
        except AssertionError as e:
            raise AssertionError("%s\n----- %s -----\n%s" % (
                e, self.server.log_path, tail(self.server.log_path)))

    def outbox_lines(self):
        try:
            with open(self.outbox) as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def wait_outbox(self, pred, timeout=DEFAULT_TIMEOUT, what="outbox line",
                    count=1):
        def got():
            hits = [o for o in self.outbox_lines() if pred(o)]
            return hits if len(hits) >= count else None
        # keep the XMPP clients responsive while polling the file
        deadline = time.monotonic() + timeout
        while True:
            hits = got()
            if hits:
                return hits
            if time.monotonic() > deadline:
                raise AssertionError(
                    "timed out waiting for %s; outbox:\n%s\n--- postern ---\n"
                    "%s" % (what, json.dumps(self.outbox_lines(), indent=1),
                            tail(self.postern.log_path)))
            self.loop.run_until_complete(asyncio.sleep(0.05))

    def admin(self, *args, check=True, timeout=20):
        r = subprocess.run([admin_bin(), "-c", self.postern.config_path]
                           + list(args), capture_output=True, text=True,
                           timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError("postern-admin %s failed (%d): %s%s"
                                 % (" ".join(args), r.returncode, r.stdout,
                                    r.stderr))
        return r

    def register(self, client, number, gw=SMS_JID):
        r = client.iq(gw, "set", "<query xmlns='jabber:iq:register'>"
                      "<phone>%s</phone></query>" % number)
        if r.get("type") != "result":
            raise AssertionError("registration of %s failed: %s"
                                 % (client.jid, to_str(r)))
        return r

    def close(self):
        for c in self.clients:
            c.disconnect()
        self.clients = []
        report = None
        if self.postern and self.postern.proc:
            self.postern.stop()
            report = self.postern.sanitizer_report()
        self.server.stop()
        self.redis.stop()
        try:
            pending = asyncio.all_tasks(self.loop)
            for t in pending:
                t.cancel()
            self.loop.run_until_complete(
                asyncio.gather(*pending, return_exceptions=True))
            self.loop.close()
        except Exception:
            pass
        if report is None and not os.environ.get("RIG_KEEP"):
            shutil.rmtree(self.tmp, ignore_errors=True)
        if report:
            raise AssertionError("sanitizer/crash report in postern log (%s):"
                                 "\n%s" % (self.tmp, report))


class StackTest(unittest.TestCase):
    """One stack for the whole class (keeps each file well under 60 s)."""

    server = "prosody"
    email = False
    limits = None
    extra = ""
    stack = None

    @classmethod
    def setUpClass(cls):
        cls.stack = Stack(server=cls.server, email=cls.email,
                          limits=cls.limits, extra=cls.extra).start()
        try:
            cls.prepare()
        except BaseException:
            cls.stack.close()
            cls.stack = None
            raise

    @classmethod
    def prepare(cls):
        """Per-class setup after the stack is up (clients, registrations)."""

    @classmethod
    def tearDownClass(cls):
        if cls.stack:
            cls.stack.close()

    def client(self, user, domain=DOMAIN, presence=True):
        return self.stack.client(user, domain, presence)

    def assertError(self, el, etype, cond, msg=""):
        e = stanza_error(el)
        self.assertIsNotNone(e, "expected an error stanza, got %s %s"
                             % (to_str(el), msg))
        self.assertEqual((e[0], e[1]), (etype, cond),
                         "wrong error in %s %s" % (to_str(el), msg))
        self.assertTrue(e[2] and e[2].strip(),
                        "error without human <text/>: %s" % to_str(el))
        return e

    def assertNoErrors(self, client, mid):
        errs = client.errors_for(mid)
        self.assertEqual(errs, [], "unexpected error(s): %s"
                         % [to_str(e) for e in errs])


def caps_ver(query):
    """XEP-0115 sha-1 verification string of a disco#info <query/>."""
    import base64
    import hashlib
    q = "{%s}" % NS_DISCO_INFO
    ids = sorted("%s/%s/%s/%s" % (i.get("category", ""), i.get("type", ""),
                                  i.get("{http://www.w3.org/XML/1998/"
                                        "namespace}lang", ""),
                                  i.get("name", ""))
                 for i in query.findall(q + "identity"))
    feats = sorted(f.get("var") for f in query.findall(q + "feature"))
    s = "".join(i + "<" for i in ids) + "".join(f + "<" for f in feats)
    forms = []
    for x in query.findall("{%s}x" % NS_DATA):
        fields = {}
        ftype = None
        for f in x.findall("{%s}field" % NS_DATA):
            vals = sorted(v.text or "" for v in
                          f.findall("{%s}value" % NS_DATA))
            if f.get("var") == "FORM_TYPE":
                ftype = vals[0] if vals else ""
            else:
                fields[f.get("var")] = vals
        fs = (ftype or "") + "<"
        for k in sorted(fields):
            fs += k + "<" + "".join(v + "<" for v in fields[k])
        forms.append((ftype or "", fs))
    s += "".join(fs for _, fs in sorted(forms))
    return base64.b64encode(hashlib.sha1(s.encode()).digest()).decode()


def repo_root():
    return os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))


def is_msg(el, frm=None, with_body=True):
    if local(el.tag) != "message" or el.get("type") == "error":
        return False
    if frm is not None and bare(el.get("from")) != frm:
        return False
    return (not with_body) or child(el, NS_CLIENT, "body") is not None


def body(el):
    b = child(el, NS_CLIENT, "body")
    return None if b is None else (b.text or "")


def contact(number, gw=SMS_JID):
    return "%s@%s" % (number, gw)


def main():
    unittest.main(verbosity=2)
