#!/usr/bin/python3
"""SMTP sink for integration tests (aiosmtpd, Debian's python3-aiosmtpd).

Listens on 127.0.0.1 only, on --port (0 = a free port), and prints
"LISTENING <port>" on stdout once bound (with --tls-dir also
"CERT <path>" before it: the self-signed certificate, for SSL_CERT_FILE).

Every accepted message is appended to --record as one JSON line:
  {"kind": "message", "session": N, "helo": ..., "tls": bool,
   "auth": login or null, "mail_from": ..., "rcpt_tos": [...],
   "data": raw bytes after dot-unstuffing, decoded as latin-1 (encode
           with latin-1 to get the exact bytes back)}
"session" numbers connections from 1, so messages sent over one
connection share it.

Options:
  --tls-dir DIR     generate a key and a self-signed certificate (openssl
                    req -x509 -newkey rsa:2048 -nodes -days 1
                    -subj /CN=localhost, plus subjectAltName DNS:localhost,
                    IP:127.0.0.1 unless --no-ip-san) and offer STARTTLS
  --require-tls     refuse MAIL before STARTTLS (530)
  --auth USER:PASS  offer AUTH and require it before MAIL (530)
  --auth-mechs M,.. mechanisms to offer (default PLAIN,LOGIN)
  --fail STEP:CODE:TEXT:N
                    answer CODE TEXT at STEP (mail, rcpt, data) for the
                    next N times (N = 0: always); repeatable
  --reject STEP:ADDR:CODE:TEXT
                    answer CODE TEXT at STEP (rcpt, data) whenever the
                    recipient is ADDR; repeatable
  --latency STEP:SECONDS
                    sleep before answering STEP (mail, rcpt, data)
  --stall           accept connections and never say anything (for
                    client timeouts); no SMTP at all

Control on stdin, one command per line, each answered "OK" (or "ERR ...")
on stdout:
  fail STEP CODE N TEXT...     like --fail
  reject STEP ADDR CODE TEXT...  like --reject
  latency STEP SECONDS         like --latency (0 clears)
  clear                        forget every fault and latency
"""

import argparse
import asyncio
import json
import os
import ssl
import subprocess
import sys
import threading

from asyncio import sslproto

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

STEPS = ("mail", "rcpt", "data")


class Faults:
    def __init__(self):
        self.lock = threading.Lock()
        self.clear()

    def clear(self):
        with self.lock:
            self.fail = {s: [] for s in STEPS}  # list of [reply, remaining]
            self.latency = {s: 0.0 for s in STEPS}
            self.reject = {s: {} for s in STEPS}  # addr -> reply

    def add_reject(self, step, addr, code, text):
        with self.lock:
            self.reject[step][addr] = "%d %s" % (code, text)

    def rejected(self, step, addrs):
        with self.lock:
            for a in addrs:
                if a in self.reject[step]:
                    return self.reject[step][a]
            return None

    def add_fail(self, step, code, text, n):
        with self.lock:
            self.fail[step].append(["%d %s" % (code, text), n])

    def set_latency(self, step, secs):
        with self.lock:
            self.latency[step] = secs

    def take(self, step):
        """The reply to force at this step, or None; and the latency."""
        with self.lock:
            reply = None
            q = self.fail[step]
            if q:
                reply = q[0][0]
                if q[0][1] > 0:
                    q[0][1] -= 1
                    if q[0][1] == 0:
                        q.pop(0)
            return reply, self.latency[step]


class Handler:
    def __init__(self, record, faults):
        self.record = record
        self.faults = faults
        self.sessions = 0

    def sid(self, session):
        if not hasattr(session, "sink_id"):
            self.sessions += 1
            session.sink_id = self.sessions
        return session.sink_id

    async def step(self, name, addrs=()):
        reply, delay = self.faults.take(name)
        if delay:
            await asyncio.sleep(delay)
        return reply or self.faults.rejected(name, addrs)

    async def handle_MAIL(self, server, session, envelope, address,
                          mail_options):
        self.sid(session)
        reply = await self.step("mail")
        if reply:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address,
                          rcpt_options):
        reply = await self.step("rcpt", [address])
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        reply = await self.step("data", envelope.rcpt_tos)
        if reply:
            return reply
        login = session.login_data
        if isinstance(login, bytes):
            login = login.decode("utf-8", "replace")
        rec = {
            "kind": "message",
            "session": self.sid(session),
            "helo": session.host_name,
            "tls": session.ssl is not None,
            "auth": login if session.authenticated else None,
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "data": envelope.original_content.decode("latin-1"),
        }
        with open(self.record, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        return "250 2.0.0 Ok: queued"


class SinkSMTP(SMTP):
    """aiosmtpd 1.4.3 answers STARTTLS with 220 and only then swaps in the
    TLS protocol; a client quick enough sends its ClientHello in between,
    the plain reader swallows it and the handshake hangs. Reading is paused
    across the swap so those bytes wait in the socket for the TLS layer."""

    async def smtp_STARTTLS(self, arg):
        if arg or not self.tls_context or self._tls_protocol:
            return await super().smtp_STARTTLS(arg)
        raw = self.transport
        raw.pause_reading()
        await self.push("220 Ready to start TLS")
        waiter = self.loop.create_future()
        self._tls_protocol = sslproto.SSLProtocol(
            self.loop, self, self.tls_context, waiter, server_side=True)
        self._original_transport = raw
        raw.set_protocol(self._tls_protocol)
        self.transport = self._tls_protocol._app_transport
        self._tls_protocol.connection_made(raw)
        raw.resume_reading()
        await waiter


def make_cert(d, ip_san):
    os.makedirs(d, exist_ok=True)
    cert = os.path.join(d, "sink-cert.pem")
    key = os.path.join(d, "sink-key.pem")
    san = "subjectAltName=DNS:localhost"
    if ip_san:
        san += ",IP:127.0.0.1"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
         "-days", "1", "-subj", "/CN=localhost", "-addext", san,
         "-keyout", key, "-out", cert],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return cert, key


def parse_fail(spec):
    step, code, rest = spec.split(":", 2)
    text, n = rest.rsplit(":", 1)
    if step not in STEPS:
        raise ValueError("bad step " + step)
    return step, int(code), text, int(n)


def control_thread(loop, faults):
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        try:
            if words[0] == "fail":
                step, code, n = words[1], int(words[2]), int(words[3])
                if step not in STEPS:
                    raise ValueError("bad step")
                faults.add_fail(step, code, " ".join(words[4:]), n)
            elif words[0] == "reject":
                if words[1] not in STEPS:
                    raise ValueError("bad step")
                faults.add_reject(words[1], words[2], int(words[3]),
                                  " ".join(words[4:]))
            elif words[0] == "latency":
                if words[1] not in STEPS:
                    raise ValueError("bad step")
                faults.set_latency(words[1], float(words[2]))
            elif words[0] == "clear":
                faults.clear()
            else:
                raise ValueError("unknown command")
            answer = "OK"
        except (ValueError, IndexError) as e:
            answer = "ERR %s" % e
        print(answer, flush=True)


async def stall_client(reader, writer):
    try:
        await reader.read()  # until the client gives up
    finally:
        writer.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--record", default=os.devnull)
    ap.add_argument("--tls-dir")
    ap.add_argument("--no-ip-san", action="store_true")
    ap.add_argument("--require-tls", action="store_true")
    ap.add_argument("--auth")
    ap.add_argument("--auth-mechs", default="PLAIN,LOGIN")
    ap.add_argument("--fail", action="append", default=[])
    ap.add_argument("--reject", action="append", default=[])
    ap.add_argument("--latency", action="append", default=[])
    ap.add_argument("--stall", action="store_true")
    args = ap.parse_args()

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    faults = Faults()
    for spec in args.fail:
        faults.add_fail(*parse_fail(spec))
    for spec in args.reject:
        step, addr, code, text = spec.split(":", 3)
        faults.add_reject(step, addr, int(code), text)
    for spec in args.latency:
        step, secs = spec.split(":", 1)
        faults.set_latency(step, float(secs))

    if args.stall:
        server = loop.run_until_complete(
            asyncio.start_server(stall_client, "127.0.0.1", args.port))
    else:
        handler = Handler(args.record, faults)
        kw = {"hostname": "sink.test", "decode_data": False,
              "auth_require_tls": False}
        if args.tls_dir:
            cert, key = make_cert(args.tls_dir, not args.no_ip_san)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            kw["tls_context"] = ctx
            kw["require_starttls"] = args.require_tls
            print("CERT %s" % cert, flush=True)
        if args.auth:
            user, password = args.auth.split(":", 1)
            offered = {m.strip().upper() for m in args.auth_mechs.split(",")}

            def authenticator(server, session, envelope, mechanism, data):
                ok = (isinstance(data, LoginPassword)
                      and data.login == user.encode()
                      and data.password == password.encode())
                if ok:
                    return AuthResult(success=True, auth_data=data)
                # handled=False: aiosmtpd then answers 535 5.7.8 itself
                return AuthResult(success=False, handled=False)

            kw["authenticator"] = authenticator
            kw["auth_required"] = True
            kw["auth_exclude_mechanism"] = [
                m for m in ("PLAIN", "LOGIN") if m not in offered]

        def factory():
            return SinkSMTP(handler, loop=loop, **kw)

        server = loop.run_until_complete(
            loop.create_server(factory, "127.0.0.1", args.port))
    port = server.sockets[0].getsockname()[1]
    threading.Thread(target=control_thread, args=(loop, faults),
                     daemon=True).start()
    print("LISTENING %d" % port, flush=True)
    try:
        loop.run_forever()
    finally:
        server.close()


if __name__ == "__main__":
    main()
