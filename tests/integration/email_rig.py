"""Shared helpers for the email integration tests (test_email_*.py).

An EmailStack is rig.Stack (private redis-server + Prosody) plus the SMTP
sink (smtp_sink.py, aiosmtpd) as the relay, with a postern whose only
gateway is the email gateway email.localhost:

    mail_domain     "mail.localhost"
    default_subject DEFAULT_SUBJECT
    smtp            127.0.0.1:<sink>, starttls/user/password per test
    lmtp            127.0.0.1:<free port>, max_message_size per test
    queue           fast retries (base 200 ms, cap 1 s)

The MTA side is Python's smtplib.LMTP (lmtp_transaction), which returns
the reply to every RCPT and every per-recipient reply after DATA (RFC 2033
4.2: one reply per accepted recipient; smtplib itself reads only one).

Sink records are the sink's JSON lines; mail() parses one into an
email.message.EmailMessage (policy default, so headers are decoded) and
keeps the raw bytes next to it for checks on the wire form.
"""

import asyncio
import email
import email.policy
import email.utils
import json
import os
import queue
import re
import signal
import smtplib
import subprocess
import threading
import time

import rig
from rig import DOMAIN, EMAIL_JID, EMAIL_SECRET, local

MAIL_DOMAIN = "mail.localhost"
DEFAULT_SUBJECT = "Message from XMPP"
HERE = os.path.dirname(os.path.abspath(__file__))
SINK = os.path.join(HERE, "smtp_sink.py")
PY = "/usr/bin/python3"


# ---------------------------------------------------------------- addresses

_ESC = {" ": "\\20", '"': "\\22", "&": "\\26", "'": "\\27", "/": "\\2f",
        ":": "\\3a", "<": "\\3c", ">": "\\3e", "@": "\\40", "\\": "\\5c"}


def escape_node(addr):
    """XEP-0106 escaping of an email address as a JID node."""
    return "".join(_ESC.get(ch, ch) for ch in addr)


def contact(addr):
    """Contact JID for an email address (bob@example.com ->
    bob\\40example.com@email.localhost)."""
    return "%s@%s" % (escape_node(addr), EMAIL_JID)


def xml_attr(s):
    return (s.replace("&", "&amp;").replace("<", "&lt;")
            .replace(">", "&gt;").replace("'", "&apos;"))


def xml_text(s):
    """Escapes s for element content; CR and LF become character
    references so an XML parser keeps them (a literal CR would be
    normalised away before postern sees it)."""
    return (s.replace("&", "&amp;").replace("<", "&lt;")
            .replace(">", "&gt;").replace("\r", "&#13;")
            .replace("\n", "&#10;"))


# ---------------------------------------------------------------- the sink


class Sink:
    """smtp_sink.py as a child process: stdin for control, stdout for its
    LISTENING/CERT/OK lines, accepted messages in a JSON-lines record."""

    def __init__(self, tmp, port, args=()):
        self.tmp = tmp
        self.port = port
        self.tls_dir = os.path.join(tmp, "sink-tls")
        # "{tls}" in an argument stands for the sink's own TLS directory
        self.args = [a.replace("{tls}", self.tls_dir) for a in args]
        self.record = os.path.join(tmp, "sink.jsonl")
        self.log_path = os.path.join(tmp, "sink.log")
        self.cert = None
        self.proc = None
        self.popen = None

    def start(self, timeout=20):
        argv = [PY, SINK, "--port", str(self.port), "--record",
                self.record] + self.args
        logf = open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=logf, text=True, bufsize=1, start_new_session=True,
            preexec_fn=rig._die_with_parent)
        logf.close()
        rig._live_procs.append(self)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, args=(self.popen, self.lines),
                         daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:
            line = self._line(deadline - time.monotonic())
            if line.startswith("CERT "):
                self.cert = line.split(" ", 1)[1]
            elif line.startswith("LISTENING "):
                got = int(line.split()[1])
                assert got == self.port, (got, self.port)
                return self

    @staticmethod
    def _read(popen, lines):
        for line in popen.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    def _line(self, timeout):
        try:
            line = self.lines.get(timeout=max(timeout, 0.01))
        except queue.Empty:
            raise AssertionError("smtp_sink: no answer\n" +
                                 rig.tail(self.log_path))
        if line is None:
            raise AssertionError("smtp_sink exited:\n" +
                                 rig.tail(self.log_path))
        return line

    def control(self, cmd):
        """fail STEP CODE N TEXT / reject STEP ADDR CODE TEXT / latency
        STEP SECONDS / clear (see smtp_sink.py)."""
        self.popen.stdin.write(cmd + "\n")
        self.popen.stdin.flush()
        answer = self._line(10)
        if answer != "OK":
            raise AssertionError("smtp_sink %r: %s" % (cmd, answer))

    def alive(self):
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout=5):
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        for f in (self.popen.stdin, self.popen.stdout):
            try:
                f.close()
            except Exception:
                pass
        if self in rig._live_procs:
            rig._live_procs.remove(self)
        return self.popen.returncode

    def records(self):
        try:
            with open(self.record, encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []


class Mail:
    """One message the sink accepted: envelope, raw bytes, parsed form."""

    def __init__(self, rec):
        self.rec = rec
        self.mail_from = rec["mail_from"]
        self.rcpt_tos = rec["rcpt_tos"]
        self.raw = rec["data"].encode("latin-1")
        self.msg = email.message_from_bytes(self.raw,
                                            policy=email.policy.default)

    def header(self, name):
        return self.msg.get(name)

    def headers(self, name):
        return self.msg.get_all(name) or []

    def raw_headers(self):
        """[(name, raw value with folding)] exactly as on the wire."""
        head = self.raw.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        out = []
        for line in head.split("\r\n"):
            if line[:1] in (" ", "\t") and out:
                out[-1] = (out[-1][0], out[-1][1] + "\r\n" + line)
            else:
                name, _, value = line.partition(":")
                out.append((name, value))
        return out

    def text(self):
        part = self.msg.get_body(preferencelist=("plain",))
        return None if part is None else part.get_content()

    def msgid(self):
        """Message-ID without the angle brackets."""
        return strip_id(self.header("Message-ID"))

    def __repr__(self):
        return "<Mail to %s: %r>" % (self.rcpt_tos, self.raw[:600])


def strip_id(v):
    v = (str(v) if v is not None else "").strip()
    if v.startswith("<") and v.endswith(">"):
        v = v[1:-1]
    return v


def ids(v):
    """Message ids in a References/In-Reply-To value, without <>."""
    return re.findall(r"<([^<>\s]+)>", str(v or ""))


# ---------------------------------------------------------------- postern


class EmailPostern(rig.Postern):
    def __init__(self, stack, config_text, env):
        super().__init__(stack, config_text)
        self.extra_env = dict(env)

    def start(self, wait=True):
        env = dict(os.environ)
        env.pop("SSL_CERT_FILE", None)
        env.pop("SSL_CERT_DIR", None)
        env.update(self.extra_env)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        self.proc = rig.Proc("postern", [rig.postern_bin(), "-c",
                                         self.config_path],
                             self.log_path, env=env).start()
        if wait:
            self.wait_healthy()
        return self


def email_config(stack):
    smtp = ['host = "127.0.0.1";', "port = %d;" % stack.smtp_port,
            'starttls = "%s";' % stack.starttls, "timeout = 5;"]
    if stack.smtp_user:
        smtp.append('user = "%s";' % stack.smtp_user)
        smtp.append('password = "%s";' % stack.smtp_password)
    lmtp = ['listen = "127.0.0.1:%d";' % stack.lmtp_port]
    if stack.max_message_size:
        lmtp.append("max_message_size = %d;" % stack.max_message_size)
    return f"""# generated by tests/integration/email_rig.py
log = {{ level = "{stack.log_level}"; format = "text"; }};
redis = {{ url = "{stack.redis.url}"; prefix = "{stack.prefix}"; }};
http = {{ listen = "127.0.0.1:{stack.http_port}";
         public_url = "http://127.0.0.1:{stack.http_port}"; }};
xmpp = {{ host = "127.0.0.1"; port = {stack.server.component_port}; }};
queue = {{ max_age = {stack.max_age}; retry_base_ms = 200;
          retry_cap_ms = 1000; }};
gateways = (
  {{ transport = "email";
    jid = "{EMAIL_JID}";
    secret = "{EMAIL_SECRET}";
    allowed_domains = [ "{DOMAIN}" ];
    mail_domain = "{MAIL_DOMAIN}";
    default_subject = "{DEFAULT_SUBJECT}";
    smtp = {{ {" ".join(smtp)} }};
    lmtp = {{ {" ".join(lmtp)} }};
  }}
);
"""


class EmailStack(rig.Stack):
    def __init__(self, starttls="off", smtp_user=None, smtp_password=None,
                 sink_args=(), max_message_size=None, max_age=600,
                 cert_env=True, log_level="debug"):
        super().__init__(server="prosody", email=True, log_level=log_level)
        self.starttls = starttls
        self.smtp_user = smtp_user
        self.smtp_password = smtp_password
        self.max_message_size = max_message_size
        self.max_age = max_age
        self.cert_env = cert_env
        self.sink = Sink(self.tmp, self.smtp_port, sink_args)

    def config_text(self, **kw):
        return email_config(self)

    def start(self):
        try:
            self.sink.start()
            self.redis.start()
            self.server.start()
            for u in rig.USERS:
                self.server.register(u, DOMAIN, rig.PASSWORD)
            for u in rig.OTHER_USERS:
                self.server.register(u, rig.OTHER_DOMAIN, rig.PASSWORD)
            env = {}
            if self.cert_env and self.sink.cert:
                # smtp_out verifies with OpenSSL's default paths, which
                # honour SSL_CERT_FILE: trust exactly the sink's cert
                env["SSL_CERT_FILE"] = self.sink.cert
            self.postern = EmailPostern(self, self.config_text(), env)
            self.postern.start()
        except BaseException:
            self.close()
            raise
        return self

    def close(self):
        try:
            self.sink.stop()
        finally:
            super().close()

    # ---- helpers

    def pump(self, seconds):
        self.loop.run_until_complete(asyncio.sleep(seconds))

    def poll(self, pred, timeout=rig.DEFAULT_TIMEOUT, what="condition"):
        """Like rig.wait_until, but keeps the XMPP clients running."""
        deadline = time.monotonic() + timeout
        while True:
            v = pred()
            if v:
                return v
            if time.monotonic() > deadline:
                raise AssertionError(
                    "timed out after %.0fs waiting for %s\n--- postern ---"
                    "\n%s" % (timeout, what,
                               rig.tail(self.postern.log_path, 40)))
            self.pump(0.05)

    def mails(self, pred=None):
        out = [Mail(r) for r in self.sink.records()]
        return [m for m in out if pred is None or pred(m)]

    def wait_mails(self, pred, count=1, timeout=rig.DEFAULT_TIMEOUT,
                   what="mail at the sink", errors=None):
        """At least count sink messages matching pred. errors: (client,
        [stanza ids]) whose error stanzas end the wait at once."""
        deadline = time.monotonic() + timeout
        while True:
            hits = self.mails(pred)
            if len(hits) >= count:
                return hits
            errs = []
            if errors:
                for mid in errors[1]:
                    errs += errors[0].errors_for(mid)
            if errs or time.monotonic() > deadline:
                raise AssertionError(
                    "%s waiting for %s (%d); sink has %d message(s): %s%s"
                    "\n--- postern ---\n%s"
                    % ("error stanza" if errs else
                       "timed out after %.0fs" % timeout, what, count,
                       len(self.mails()), [m.rcpt_tos for m in self.mails()],
                       "".join("\n" + rig.to_str(e) for e in errs),
                       rig.tail(self.postern.log_path, 40)))
            self.pump(0.05)

    def mails_to(self, addr):
        return self.mails(lambda m: addr in m.rcpt_tos)

    def wait_mail_to(self, addr, timeout=rig.DEFAULT_TIMEOUT, client=None,
                     mid=None):
        """The one mail to addr; an error stanza for (client, mid) fails
        the wait early."""
        errors = (client, [mid]) if client is not None else None
        (m,) = self.wait_mails(lambda m: addr in m.rcpt_tos, 1, timeout,
                               "mail to %s" % addr, errors)
        return m

    def register_email(self, client, addr):
        r = client.iq(EMAIL_JID, "set", "<query xmlns='jabber:iq:register'>"
                      "<email>%s</email></query>" % xml_text(addr))
        if r.get("type") != "result":
            raise AssertionError("registration of %s as %s failed: %s"
                                 % (client.jid, addr, rig.to_str(r)))
        return r

    def lmtp(self, mail_from, rcpts, data, **kw):
        return lmtp_transaction(self.lmtp_port, mail_from, rcpts, data, **kw)

    def redis_cli(self, *args):
        r = subprocess.run(["redis-cli", "-p", str(self.redis.port)]
                           + [str(a) for a in args], capture_output=True,
                           text=True, timeout=20)
        return r.stdout.strip()

    def key(self, *parts):
        return ":".join((self.prefix,) + parts)


def send_xmpp(client, to, body, subject=None, thread=None, type_="chat",
              mid=None, extra=""):
    """XMPP message from client to the JID to (see contact()); returns its
    id. body/subject/thread go through xml_text, so CR/LF reach postern."""
    mid = mid or client.new_id()
    parts = []
    if subject is not None:
        parts.append("<subject>%s</subject>" % xml_text(subject))
    if body is not None:
        parts.append("<body>%s</body>" % xml_text(body))
    if thread is not None:
        parts.append("<thread>%s</thread>" % xml_text(thread))
    client.send_raw("<message to='%s' type='%s' id='%s'>%s%s</message>"
                    % (xml_attr(to), type_, mid, "".join(parts), extra))
    return mid


# ---------------------------------------------------------------- LMTP


class LmtpResult:
    def __init__(self):
        self.lhlo = None
        self.mail = None
        self.rcpt = {}     # address -> (code, text)
        self.data = {}     # address -> (code, text), accepted rcpts only
        self.data_cmd = None  # reply to DATA itself when not 354

    def __repr__(self):
        return ("LmtpResult(mail=%r, rcpt=%r, data=%r, data_cmd=%r)"
                % (self.mail, self.rcpt, self.data, self.data_cmd))


def _reply(code, msg):
    if isinstance(msg, bytes):
        msg = msg.decode("utf-8", "replace")
    return (code, msg)


def lmtp_transaction(port, mail_from, rcpts, data, mail_options=(),
                     timeout=30, before_data=None):
    """One LMTP transaction; data is bytes with CRLF line ends (the
    terminating dot is added here). before_data() runs after the last
    RCPT. Returns an LmtpResult."""
    res = LmtpResult()
    lm = smtplib.LMTP("127.0.0.1", port, timeout=timeout)
    try:
        res.lhlo = _reply(*lm.ehlo("mta.test"))
        res.mail = _reply(*lm.mail(mail_from, list(mail_options)))
        if res.mail[0] != 250:
            return res
        accepted = []
        for r in rcpts:
            res.rcpt[r] = _reply(*lm.rcpt(r))
            if res.rcpt[r][0] == 250:
                accepted.append(r)
        if not accepted:
            lm.rset()
            return res
        if before_data is not None:
            before_data()
        lm.putcmd("data")
        code, msg = lm.getreply()
        if code != 354:
            res.data_cmd = _reply(code, msg)
            return res
        q = smtplib._quote_periods(data)
        if not q.endswith(b"\r\n"):
            q += b"\r\n"
        lm.send(q + b".\r\n")
        for r in accepted:
            res.data[r] = _reply(*lm.getreply())
        try:
            lm.quit()
        except smtplib.SMTPException:
            pass
    finally:
        lm.close()
    return res


def build_mail(frm, to, subject, body, msgid=None, in_reply_to=None,
               references=None, html=None, attachments=(),
               charset="utf-8"):
    """A simple inbound mail as bytes (CRLF)."""
    from email.message import EmailMessage
    m = EmailMessage(policy=email.policy.SMTP)
    m["From"] = frm
    m["To"] = to
    if subject is not None:
        m["Subject"] = subject
    m["Date"] = email.utils.formatdate()
    m["Message-ID"] = "<%s>" % (msgid or new_msgid())
    if in_reply_to:
        m["In-Reply-To"] = "<%s>" % in_reply_to
    if references:
        m["References"] = " ".join("<%s>" % r for r in references)
    if body is not None:
        m.set_content(body, charset=charset)
        if html is not None:
            m.add_alternative(html, subtype="html")
    elif html is not None:
        m.set_content(html, subtype="html")
    for name, ctype, payload in attachments:
        if not m.is_multipart() or m.get_content_type() != \
                "multipart/mixed":
            m.make_mixed()
        maintype, subtype = ctype.split("/", 1)
        m.add_attachment(payload, maintype=maintype, subtype=subtype,
                         filename=name)
    return m.as_bytes(policy=email.policy.SMTP)


_msgid_n = [0]


def new_msgid(domain="example.net"):
    _msgid_n[0] += 1
    return "t%d.%d.%d@%s" % (os.getpid(), int(time.time() * 1000),
                             _msgid_n[0], domain)


def thread_of(el):
    t = el.find("{jabber:client}thread")
    return None if t is None else (t.text or "").strip()


def subject_of(el):
    s = el.find("{jabber:client}subject")
    return None if s is None else (s.text or "")


def is_email_msg(el, frm_addr=None):
    """A non-error message from the contact of frm_addr (or any contact)."""
    if local(el.tag) != "message" or el.get("type") == "error":
        return False
    f = rig.bare(el.get("from")).lower()
    if frm_addr is None:
        return f.endswith("@" + EMAIL_JID)
    return f == contact(frm_addr).lower()


class EmailTest(rig.StackTest):
    """One EmailStack per class; class attributes configure it."""

    starttls = "off"
    smtp_user = None
    smtp_password = None
    sink_args = ()
    max_message_size = None
    max_age = 600
    cert_env = True

    @classmethod
    def setUpClass(cls):
        cls.stack = EmailStack(
            starttls=cls.starttls, smtp_user=cls.smtp_user,
            smtp_password=cls.smtp_password, sink_args=cls.sink_args,
            max_message_size=cls.max_message_size, max_age=cls.max_age,
            cert_env=cls.cert_env).start()
        try:
            cls.prepare()
        except BaseException:
            cls.stack.close()
            cls.stack = None
            raise

    def wait_msg(self, client, frm_addr, timeout=rig.DEFAULT_TIMEOUT,
                 what=None):
        return client.wait(lambda e: is_email_msg(e, frm_addr) and
                           rig.body(e) is not None, timeout,
                           what or "message from %s" % frm_addr)

    def wait_error(self, client, mid, timeout=rig.DEFAULT_TIMEOUT):
        return client.wait(lambda e: e.get("id") == mid and
                           e.get("type") == "error", timeout,
                           "error stanza for %s" % mid)


def main():
    rig.main()
