"""postern-admin against a real redis-server: registrations (add, conflict,
replace, list, remove), queues, dead letters, sms-inject, usage errors and exit codes,
and a Redis that cannot be reached."""

import json
import os
import subprocess
import sys
import tempfile
import time

from redis_fixture import Redis, free_port

SMS = "sms.example.org"
EMAIL = "email.example.org"

CONFIG = """
log:   { level = "warning"; format = "text"; };
redis: { url = "%(url)s"; prefix = "adm"; };
http:  { listen = "127.0.0.1:%(http)d"; public_url = "http://127.0.0.1"; };
xmpp:  { host = "127.0.0.1"; port = 5347; };
gateways = (
  { transport = "sms";
    jid = "sms.example.org";
    secret = "component-secret";
    allowed_domains = [ "example.org" ];
    numbers = [ "+15550001111", "+15550002222" ];
    provider = { name = "sandbox"; };
  },
  { transport = "email";
    jid = "email.example.org";
    secret = "component-secret";
    allowed_domains = [ "example.org" ];
    mail_domain = "mail.example.org";
    smtp = { host = "127.0.0.1"; port = 2525; starttls = "off"; };
    lmtp = { listen = "127.0.0.1:%(lmtp)d"; };
  }
);
"""


def admin_bin():
    p = os.environ.get("POSTERN_ADMIN_BIN")
    if not p or not os.access(p, os.X_OK):
        sys.exit("test_admin: POSTERN_ADMIN_BIN is not set or not built")
    return p


def write_config(d, url):
    path = os.path.join(d, "postern.conf")
    with open(path, "w") as f:
        f.write(CONFIG % {"url": url, "http": free_port(),
                          "lmtp": free_port()})
    return path


def run(conf, *args, timeout=30):
    p = subprocess.run([admin_bin(), "-c", conf] + list(args),
                       capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def expect(conf, rc, *args):
    got, out, err = run(conf, *args)
    assert got == rc, "%s: rc %d (want %d)\nstdout: %s\nstderr: %s" % (
        " ".join(args), got, rc, out, err)
    return out, err


def check_registrations(conf, r):
    expect(conf, 0, "add", SMS, "alice@example.org", "+15550001111")
    assert r.cli("HGET", "adm:reg:%s:a2j" % SMS,
                 "+15550001111").strip() == "alice@example.org"
    # somebody else's number: refused, nothing changes
    _, err = expect(conf, 1, "add", SMS, "bob@example.org", "+15550001111")
    assert "already registered" in err, err
    assert r.cli("HGET", "adm:reg:%s:j2a" % SMS,
                 "bob@example.org").strip() == ""
    # re-registering replaces, freeing the old number
    expect(conf, 0, "add", SMS, "alice@example.org", "+15550002222")
    expect(conf, 0, "add", SMS, "bob@example.org", "+15550001111")
    expect(conf, 0, "add", EMAIL, "alice@example.org",
           "alice@mail.example.org")
    out, _ = expect(conf, 0, "list")
    assert out.splitlines() == [
        "%s\talice@example.org\t+15550002222" % SMS,
        "%s\tbob@example.org\t+15550001111" % SMS,
        "%s\talice@example.org\talice@mail.example.org" % EMAIL,
    ], out
    out, _ = expect(conf, 0, "list", EMAIL)
    assert out.splitlines() == [
        "%s\talice@example.org\talice@mail.example.org" % EMAIL], out

    expect(conf, 0, "remove", SMS, "alice@example.org")
    _, err = expect(conf, 1, "remove", SMS, "alice@example.org")
    assert "not registered" in err, err
    out, _ = expect(conf, 0, "list", SMS)
    assert out.splitlines() == ["%s\tbob@example.org\t+15550001111" % SMS]
    assert r.cli("HGET", "adm:reg:%s:a2j" % SMS,
                 "+15550002222").strip() == ""

    # values users could not claim
    expect(conf, 1, "add", SMS, "carol@example.org", "not-a-number")
    _, err = expect(conf, 1, "add", SMS, "carol@example.org", "+15559998888")
    assert "--force" in err, err
    expect(conf, 0, "add", SMS, "carol@example.org", "+15559998888",
           "--force")
    expect(conf, 1, "add", EMAIL, "carol@example.org", "carol@other.org")
    expect(conf, 1, "add", SMS, "carol@example.org/phone", "+15550002222")
    expect(conf, 1, "add", "nope.example.org", "carol@example.org",
           "+15550002222")
    expect(conf, 2, "add", SMS, "carol@example.org")


def check_queues_and_inject(conf, r):
    out, _ = expect(conf, 0, "queues")
    assert out.splitlines() == ["%s\t%s\t0" % (g, q) for g in (SMS, EMAIL)
                                for q in ("out", "retry", "dead", "in")], out
    expect(conf, 0, "sms-inject", SMS, "--from", "+15551234567", "--to",
           "+15550001111", "--media", "https://example.com/a.jpg",
           "hello", "there")
    expect(conf, 0, "sms-inject", SMS, "--to", "+15550001111", "--from",
           "+15557654321", "second")
    out, _ = expect(conf, 0, "queues")
    assert out.splitlines()[3] == "%s\tin\t2" % SMS, out
    raw = r.cli("XRANGE", "adm:stream:in:%s" % SMS, "-", "+").splitlines()
    payloads = [json.loads(raw[i + 1]) for i, x in enumerate(raw)
                if x == "p"]
    assert len(payloads) == 2, raw
    m = payloads[0]
    assert m["from"] == "+15551234567" and m["to"] == "+15550001111"
    assert m["body"] == "hello there"
    assert m["media"] == ["https://example.com/a.jpg"]
    assert payloads[1]["body"] == "second"
    assert "media" not in payloads[1]

    expect(conf, 1, "sms-inject", SMS, "--from", "5551234567", "--to",
           "+15550001111", "x")
    expect(conf, 1, "sms-inject", EMAIL, "--from", "+15551234567", "--to",
           "+15550001111", "x")
    expect(conf, 2, "sms-inject", SMS, "--from", "+15551234567", "x")
    expect(conf, 2, "sms-inject", SMS, "--from", "+15551234567", "--to",
           "+15550001111")
    out, _ = expect(conf, 0, "queues")
    assert out.splitlines()[3] == "%s\tin\t2" % SMS, out


def dead_letter(r, body):
    m = {"v": 1, "uid": "u-" + body, "jid": "bob@example.org/phone",
         "contact": "+15551234567@" + SMS, "from": "+15550001111",
         "to": "+15551234567", "id": body, "body": body, "at": 1000,
         "attempt": 7, "last_error": "HTTP 503"}
    return r.cli("XADD", "adm:stream:dead:out:%s" % SMS, "*", "p",
                 json.dumps(m)).strip()


def check_dead_letters(conf, r):
    out_key = "adm:stream:out:%s" % SMS
    ids = [dead_letter(r, "d%d" % i) for i in range(3)]
    out, _ = expect(conf, 0, "dead", "list", SMS)
    lines = out.splitlines()
    assert [x.split("\t")[0] for x in lines] == ids, out
    f = lines[0].split("\t")
    assert f[2:] == ["bob@example.org/phone", "+15551234567", "7",
                     "HTTP 503"], f
    out, _ = expect(conf, 0, "queues")
    assert "%s\tdead\t3" % SMS in out.splitlines(), out
    # one back into the outbound queue, with a fresh start
    expect(conf, 0, "dead", "retry", SMS, ids[0])
    raw = r.cli("XRANGE", out_key, "-", "+").splitlines()
    m = json.loads([x for x in raw if x.startswith("{")][0])
    assert m["body"] == "d0" and m["attempt"] == 0, m
    assert m["at"] > 1000 and "last_error" not in m, m
    expect(conf, 1, "dead", "retry", SMS, ids[0])     # gone now
    expect(conf, 0, "dead", "drop", SMS, ids[1])
    expect(conf, 1, "dead", "drop", SMS, ids[1])
    expect(conf, 0, "dead", "retry", SMS, "all")
    assert r.cli("XLEN", out_key).strip() == "2"
    assert r.cli("XLEN", "adm:stream:dead:out:%s" % SMS).strip() == "0"
    dead_letter(r, "d9")
    expect(conf, 0, "dead", "drop", SMS, "all")
    out, _ = expect(conf, 0, "dead", "list", SMS)
    assert out == "", out
    expect(conf, 2, "dead", "list")
    expect(conf, 2, "dead", "bury", SMS)
    expect(conf, 1, "dead", "drop", SMS, "not-an-id")
    expect(conf, 1, "dead", "list", "nope.example.org")


def check_usage(conf):
    p = subprocess.run([admin_bin(), "--help"], capture_output=True,
                       text=True, timeout=10)
    assert p.returncode == 0 and "sms-inject" in p.stdout, p
    p = subprocess.run([admin_bin(), "-c", conf], capture_output=True,
                       text=True, timeout=10)
    assert p.returncode == 2, p
    expect(conf, 2, "frobnicate")
    expect(conf, 2, "list", SMS, "extra")
    expect(conf, 2, "--bogus-option", "list")
    p = subprocess.run([admin_bin(), "-c", "/nonexistent/postern.conf",
                        "list"], capture_output=True, text=True, timeout=10)
    assert p.returncode == 1 and p.stderr, p


def check_unreachable(tmp):
    conf = write_config(tmp, "redis://127.0.0.1:%d/0" % free_port())
    t0 = time.monotonic()
    rc, _, err = run(conf, "--timeout", "2", "list")
    took = time.monotonic() - t0
    assert rc == 1, (rc, err)
    assert "Redis" in err, err
    assert took < 8, took


def check_postern_admin_subcommand(conf):
    pb = os.environ.get("POSTERN_BIN")
    if not pb or not os.access(pb, os.X_OK):
        return
    p = subprocess.run([pb, "admin", "-c", conf, "list", SMS],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p
    assert "bob@example.org\t+15550001111" in p.stdout, p.stdout


def main():
    with Redis() as r, tempfile.TemporaryDirectory() as tmp:
        conf = write_config(tmp, r.url())
        check_usage(conf)
        check_registrations(conf, r)
        check_queues_and_inject(conf, r)
        check_dead_letters(conf, r)
        check_postern_admin_subcommand(conf)
        check_unreachable(tmp)
    print("test_admin: ok")


if __name__ == "__main__":
    main()
