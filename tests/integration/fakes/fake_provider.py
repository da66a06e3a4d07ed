#!/usr/bin/python3
"""A fake SMS provider for integration tests: one aiohttp server that speaks
the send APIs of Twilio, Telnyx and Vonage closely enough for a gateway
(request shapes, auth, response and error JSON: protocol-facts.md §1-§2),
records every API request, injects faults on command, and sends inbound
and delivery-status webhooks signed the way each provider signs them.

It binds 127.0.0.1 only, prints "TELNYX_PUBLIC_KEY <base64>" and then
"LISTENING <port>" on stdout, and exits on SIGTERM or SIGINT. See
README.md next to this file for the control API.

The signing functions (twilio_signature, telnyx_sign, vonage_signature)
are importable; test_fake_provider_selftest.py checks them against the
official vectors.
"""

import argparse
import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import signal
import socket
import sys
import time
import urllib.parse
import uuid

from aiohttp import ClientSession, ClientTimeout, web

E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")
VONAGE_NUMBER = re.compile(r"^[0-9]{7,15}$")
TWILIO_API_VERSION = "2010-04-01"

# ---------------------------------------------------------------- signing


def twilio_signature(auth_token, url, params=()):
    """X-Twilio-Signature (§1.5): base64(HMAC-SHA1(token, url + names and
    values sorted by name, each name's values de-duplicated and sorted)).
    params is a mapping or a sequence of (name, value) pairs (repeats
    allowed); values are the decoded form values."""
    items = params.items() if hasattr(params, "items") else params
    by_name = {}
    for k, v in items:
        by_name.setdefault(k, set()).add(v)
    data = url
    for k in sorted(by_name):
        for v in sorted(by_name[k]):
            data += k + v
    mac = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode()


def telnyx_private_key(seed):
    """An Ed25519 private key from its 32-byte seed."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import \
        Ed25519PrivateKey
    return Ed25519PrivateKey.from_private_bytes(seed)


def telnyx_public_b64(key):
    from cryptography.hazmat.primitives import serialization
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def telnyx_sign(key, timestamp, body):
    """telnyx-signature-ed25519 (§2.1.3): base64 of the Ed25519 signature
    of "<timestamp>|<raw body>". body is bytes."""
    msg = str(timestamp).encode() + b"|" + body
    return base64.b64encode(key.sign(msg)).decode()


def vonage_signature(params, secret, method="md5hash"):
    """Vonage sig (§2.2.4): every param but sig, '&' and '=' in values
    replaced by '_', sorted by name, "&name=value" concatenated, then
    MD5(string + secret) for md5hash or HMAC-<method>(secret, string);
    lowercase hex."""
    data = ""
    for k in sorted(params):
        if k == "sig":
            continue
        v = str(params[k]).replace("&", "_").replace("=", "_")
        data += "&" + k + "=" + v
    if method == "md5hash":
        return hashlib.md5((data + secret).encode()).hexdigest()
    if method not in ("md5", "sha1", "sha256", "sha512"):
        raise ValueError("unknown Vonage signature method " + method)
    return hmac.new(secret.encode(), data.encode(), method).hexdigest()


# ---------------------------------------------------------------- segments

GSM7_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
GSM7_EXT = set("\f^{}\\[~]|€")


def count_segments(text):
    """(gsm7, segments) as in §3: 160/153 septets or 70/67 UTF-16 units,
    two-unit characters never split. Used for num_segments and Vonage's
    server-side split."""
    gsm7 = all(c in GSM7_BASIC or c in GSM7_EXT for c in text)
    if gsm7:
        costs = [2 if c in GSM7_EXT else 1 for c in text]
        single, cap = 160, 153
    else:
        costs = [2 if ord(c) > 0xFFFF else 1 for c in text]
        single, cap = 70, 67
    if sum(costs) <= single:
        return gsm7, 1
    segs, used = 1, 0
    for c in costs:
        if used + c > cap:
            segs, used = segs + 1, 0
        used += c
    return gsm7, segs


# ---------------------------------------------------------------- errors

TWILIO_ERRORS = {
    20003: (401, "Authenticate"),
    20404: (404, "The requested resource {path} was not found"),
    20429: (429, "Too Many Requests"),
    20500: (500, "Internal Server Error"),
    20503: (503, "Service Unavailable"),
    21211: (400, "The 'To' number {to} is not a valid phone number."),
    21212: (400, "The 'From' number {from_} is not a valid phone number, "
                 "shortcode, or alphanumeric sender ID."),
    21408: (400, "Permission to send an SMS has not been enabled for the "
                 "region indicated by the 'To' number: {to}."),
    21603: (400, "A 'From' phone number is required."),
    21606: (400, "The 'From' phone number provided is not a valid "
                 "message-capable Twilio phone number for this "
                 "destination/account."),
    21608: (400, "The number {to} is unverified."),
    21610: (400, "Attempt to send to unsubscribed recipient"),
    21611: (400, "This 'From' number has exceeded the maximum number of "
                 "queued messages"),
    21612: (400, "The 'To' phone number: {to}, is not currently reachable "
                 "using the 'From' phone number: {from_} via SMS."),
    21614: (400, "'To' number is not a valid mobile number"),
    21617: (400, "The concatenated message body exceeds the 1600 "
                 "character limit."),
    21619: (400, "A Message Body, Media URL or Content SID is required"),
    21623: (400, "The number of media URLs exceeds the limit of 10"),
}

# Twilio test-credential magic numbers (§1.2), honoured with any
# credentials so that tests can provoke provider errors without faults.
TWILIO_MAGIC_FROM = {"+15005550001": 21212, "+15005550007": 21606,
                     "+15005550008": 21611}
TWILIO_MAGIC_TO = {"+15005550001": 21211, "+15005550002": 21612,
                   "+15005550003": 21408, "+15005550004": 21610,
                   "+15005550009": 21614}

TELNYX_ERRORS = {
    "10007": (500, "Unexpected error"),
    "10009": (401, "Authentication failed"),
    "10011": (429, "Too many requests"),
    "10015": (400, "Bad Request"),
    "10016": (400, "Phone number must be in +E.164 format"),
    "40300": (400, "Blocked due to STOP message"),
    "40310": (400, "Invalid 'to' address"),
}

VONAGE_ERRORS = {
    "1": "Throttled", "2": "Missing Parameters", "3": "Invalid Parameters",
    "4": "Invalid Credentials", "5": "Internal Error",
    "6": "Invalid Message", "7": "Number Barred",
    "8": "Partner Account Barred", "9": "Partner Quota Violation",
    "10": "Too Many Existing Binds", "11": "Account Not Enabled For HTTP",
    "12": "Message Too Long", "14": "Invalid Signature",
    "15": "Invalid Sender Address", "22": "Invalid Network Code",
    "23": "Invalid Callback Url", "29": "Non-Whitelisted Destination",
    "32": "Signature And API Secret Disallowed", "33": "Number De-activated",
}


def twilio_error(code, status=None, **kw):
    st, msg = TWILIO_ERRORS.get(int(code), (400, "Error %s" % code))
    kw.setdefault("to", "")
    kw.setdefault("from_", "")
    kw.setdefault("path", "")
    status = status or st
    body = {"code": int(code), "message": msg.format(**kw),
            "more_info": "https://www.twilio.com/docs/errors/%s" % code,
            "status": status}
    return status, body


def telnyx_error(code, status=None, detail=None, pointer=None):
    code = str(code)
    st, title = TELNYX_ERRORS.get(code, (400, "Error"))
    err = {"code": code, "title": title, "detail": detail or title,
           "meta": {"url": "https://developers.telnyx.com/docs/overview/"
                           "errors/%s" % code}}
    if pointer:
        err["source"] = {"pointer": pointer}
    return status or st, {"errors": [err]}


def status_error_body(provider, status):
    """The body of an injected HTTP error status, in the provider's
    shape."""
    if provider == "twilio":
        code = {401: 20003, 404: 20404, 429: 20429, 503: 20503}.get(
            status, 20500 if status >= 500 else 20000 + status)
        return twilio_error(code, status)[1]
    if provider == "telnyx":
        code = {401: "10009", 429: "10011"}.get(
            status, "10007" if status >= 500 else "10015")
        return telnyx_error(code, status)[1]
    return {"type": "https://developer.nexmo.com/api-errors",
            "title": "HTTP %d" % status, "detail": "injected fault"}


# ---------------------------------------------------------------- state


class Fake:
    def __init__(self, args):
        self.args = args
        self.records = []
        self.seq = 0
        self.faults = []          # FIFO of one-shot fault entries
        self.latency_ms = 0
        self.messages = {}        # provider message id -> stored message
        self.hanging = set()
        self.stats = {"requests": 0, "by_provider": {}, "responses": {},
                      "faults": {"fail": 0, "hang": 0, "close": 0,
                                 "error_code": 0},
                      "webhooks_sent": 0}
        self.record_file = open(args.record, "a") if args.record else None
        self.telnyx_key = telnyx_private_key(args.telnyx_seed)
        self.session = None

    # -- recording

    def record(self, rec):
        if self.record_file:
            self.record_file.write(json.dumps(rec, sort_keys=True) + "\n")
            self.record_file.flush()

    # -- faults

    def take_fault(self, provider):
        for f in self.faults:
            if f.get("provider") in (None, provider):
                f["remaining"] -= 1
                if f["remaining"] <= 0:
                    self.faults.remove(f)
                return f
        return None


FAKE = None


async def read_request(request, provider):
    """Builds the record of one API request and parses its body."""
    raw = await request.read()
    FAKE.seq += 1
    rec = {"seq": FAKE.seq, "time": time.time(), "provider": provider,
           "method": request.method, "path": request.path,
           "query": request.query_string,
           "headers": dict(request.headers),
           "body": raw.decode("utf-8", "replace"),
           "response_status": None, "response_body": None, "fault": None}
    ctype = request.headers.get("Content-Type", "")
    if ctype.startswith("application/x-www-form-urlencoded"):
        pairs = urllib.parse.parse_qsl(raw.decode("utf-8", "replace"),
                                       keep_blank_values=True)
        form = {}
        for k, v in pairs:
            form.setdefault(k, []).append(v)
        rec["form"] = form
    elif ctype.startswith("application/json"):
        try:
            rec["json"] = json.loads(raw)
        except ValueError:
            rec["json"] = None
    FAKE.records.append(rec)
    FAKE.stats["requests"] += 1
    bp = FAKE.stats["by_provider"]
    bp[provider] = bp.get(provider, 0) + 1
    return rec


def finish(rec, status, body, headers=None):
    rec["response_status"] = status
    rec["response_body"] = body
    r = FAKE.stats["responses"]
    r[str(status)] = r.get(str(status), 0) + 1
    FAKE.record(rec)
    text = body if isinstance(body, str) else json.dumps(body)
    return web.Response(status=status, text=text, headers=headers or {},
                        content_type="application/json")


async def apply_faults(request, rec, provider):
    """Latency first, then the next one-shot fault for this provider.
    Returns a response to send instead of the real one, or None."""
    if FAKE.latency_ms:
        await asyncio.sleep(FAKE.latency_ms / 1000.0)
    f = FAKE.take_fault(provider)
    if not f:
        return None
    kind = f["kind"]
    FAKE.stats["faults"][kind] += 1
    rec["fault"] = kind
    if kind == "hang":
        FAKE.record(rec)
        fut = asyncio.get_running_loop().create_future()
        FAKE.hanging.add(fut)
        try:
            # Debian's aiohttp 3.8 does not cancel a handler when its
            # client goes away, so watch the connection; clear and
            # shutdown cancel fut.
            while not fut.done():
                tr = request.transport
                if tr is None or tr.is_closing():
                    break
                await asyncio.wait([fut], timeout=0.05)
        finally:
            FAKE.hanging.discard(fut)
        raise asyncio.CancelledError()
    if kind == "close":
        FAKE.record(rec)
        request.transport.abort()
        raise asyncio.CancelledError()
    headers = {}
    if f.get("retry_after") is not None:
        headers["Retry-After"] = str(f["retry_after"])
    if kind == "error_code":
        return provider_error(provider, rec, f["error_code"],
                              f.get("status"), headers)
    status = int(f.get("status") or 500)
    return finish(rec, status, status_error_body(provider, status), headers)


def provider_error(provider, rec, code, status=None, headers=None):
    """A permanent provider error with code, in the provider's shape."""
    if provider == "twilio":
        form = rec.get("form", {})
        st, body = twilio_error(code, status, to=form.get("To", [""])[0],
                                from_=form.get("From", [""])[0])
        return finish(rec, st, body, headers)
    if provider == "telnyx":
        st, body = telnyx_error(code, status)
        return finish(rec, st, body, headers)
    code = str(code)
    body = {"message-count": "1", "messages": [
        {"status": code,
         "error-text": VONAGE_ERRORS.get(code, "Error %s" % code)}]}
    return finish(rec, int(status or 200), body, headers)


# ---------------------------------------------------------------- Twilio


def twilio_auth_ok(request):
    auth = request.headers.get("Authorization", "")
    if not auth.startswith("Basic "):
        return False
    try:
        user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return (hmac.compare_digest(user, FAKE.args.twilio_account_sid) and
            hmac.compare_digest(pw, FAKE.args.twilio_auth_token))


def twilio_message_json(m):
    return {k: m[k] for k in m if not k.startswith("_")}


async def twilio_create(request):
    rec = await read_request(request, "twilio")
    if not twilio_auth_ok(request):
        return finish(rec, *twilio_error(20003))
    sid = request.match_info["sid"]
    if sid != FAKE.args.twilio_account_sid:
        return finish(rec, *twilio_error(20404, path=request.path))
    early = await apply_faults(request, rec, "twilio")
    if early is not None:
        return early
    form = rec.get("form", {})
    one = {k: v[0] for k, v in form.items()}
    to, from_ = one.get("To", ""), one.get("From", "")
    body = one.get("Body", "")
    media = form.get("MediaUrl", [])
    if not E164.match(to) and not to.startswith("whatsapp:"):
        return finish(rec, *twilio_error(21211, to=to))
    if not from_ and not one.get("MessagingServiceSid"):
        return finish(rec, *twilio_error(21603))
    if from_ in TWILIO_MAGIC_FROM:
        return finish(rec, *twilio_error(TWILIO_MAGIC_FROM[from_], to=to,
                                         from_=from_))
    if to in TWILIO_MAGIC_TO:
        return finish(rec, *twilio_error(TWILIO_MAGIC_TO[to], to=to,
                                         from_=from_))
    if not body and not media and not one.get("ContentSid"):
        return finish(rec, *twilio_error(21619))
    if len(body) > 1600:
        return finish(rec, *twilio_error(21617))
    if len(media) > 10:
        return finish(rec, *twilio_error(21623))
    msid = ("MM" if media else "SM") + secrets.token_hex(16)
    now = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
    acct = FAKE.args.twilio_account_sid
    base = "/%s/Accounts/%s/Messages/%s" % (TWILIO_API_VERSION, acct, msid)
    m = {"account_sid": acct, "api_version": TWILIO_API_VERSION,
         "body": body, "date_created": now, "date_sent": None,
         "date_updated": now, "direction": "outbound-api",
         "error_code": None, "error_message": None, "from": from_ or None,
         "messaging_service_sid": one.get("MessagingServiceSid"),
         "num_media": str(len(media)),
         "num_segments": str(count_segments(body)[1]),
         "price": None, "price_unit": "USD", "sid": msid,
         "status": "accepted" if one.get("MessagingServiceSid")
         else "queued",
         "subresource_uris": {"media": base + "/Media.json"},
         "to": to, "uri": base + ".json",
         "_provider": "twilio", "_status_callback":
         one.get("StatusCallback")}
    FAKE.messages[msid] = m
    return finish(rec, 201, twilio_message_json(m))


async def twilio_fetch(request):
    rec = await read_request(request, "twilio")
    if not twilio_auth_ok(request):
        return finish(rec, *twilio_error(20003))
    m = FAKE.messages.get(request.match_info["msid"])
    if not m or m["_provider"] != "twilio":
        return finish(rec, *twilio_error(20404, path=request.path))
    return finish(rec, 200, twilio_message_json(m))


# ---------------------------------------------------------------- Telnyx


def now_iso():
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + \
        ".%03d+00:00" % int((t % 1) * 1000)


async def telnyx_create(request):
    rec = await read_request(request, "telnyx")
    auth = request.headers.get("Authorization", "")
    if not hmac.compare_digest(auth, "Bearer " + FAKE.args.telnyx_api_key):
        return finish(rec, *telnyx_error(
            "10009", detail="The API key provided is invalid or missing."))
    early = await apply_faults(request, rec, "telnyx")
    if early is not None:
        return early
    req = rec.get("json")
    if not isinstance(req, dict):
        return finish(rec, *telnyx_error(
            "10015", detail="The request body must be a JSON object."))
    to, from_ = req.get("to"), req.get("from")
    text, media = req.get("text"), req.get("media_urls") or []
    if not isinstance(to, str) or not E164.match(to):
        return finish(rec, *telnyx_error("40310", pointer="/to",
                                         detail="The 'to' address should "
                                         "be in +E.164 format."))
    if not req.get("messaging_profile_id") and (
            not isinstance(from_, str) or not E164.match(from_)):
        return finish(rec, *telnyx_error("10016", pointer="/from"))
    if not text and not media:
        return finish(rec, *telnyx_error("10015", pointer="/text",
                                         detail="The 'text' parameter is "
                                         "required for SMS."))
    if not isinstance(media, list):
        return finish(rec, *telnyx_error("10015", pointer="/media_urls"))
    gsm7, parts = count_segments(text or "")
    mid = str(uuid.uuid4())
    m = {"record_type": "message", "direction": "outbound", "id": mid,
         "type": "MMS" if media else "SMS",
         "messaging_profile_id": req.get("messaging_profile_id"),
         "organization_id": "00000000-0000-4000-8000-000000000000",
         "from": {"phone_number": from_, "carrier": "TELNYX LLC",
                  "line_type": "VoIP"},
         "to": [{"phone_number": to, "status": "queued",
                 "carrier": "T-MOBILE USA, INC.", "line_type": "Wireless"}],
         "cc": [], "text": text, "subject": req.get("subject"),
         "media": [{"url": u, "content_type": None, "sha256": None,
                    "size": None} for u in media],
         "webhook_url": req.get("webhook_url"),
         "webhook_failover_url": req.get("webhook_failover_url"),
         "encoding": "GSM-7" if gsm7 else "UCS-2", "parts": parts,
         "tags": [], "cost": None, "received_at": now_iso(),
         "sent_at": None, "completed_at": None, "valid_until": None,
         "errors": [], "_provider": "telnyx"}
    FAKE.messages[mid] = m
    return finish(rec, 200, {"data": twilio_message_json(m)})


# ---------------------------------------------------------------- Vonage


async def vonage_send(request):
    rec = await read_request(request, "vonage")
    params = {k: v[0] for k, v in rec.get("form", {}).items()}
    for k, v in request.query.items():
        params.setdefault(k, v)
    a = FAKE.args

    def fail(code, text=None):
        body = {"message-count": "1", "messages": [
            {"status": code, "error-text": text or VONAGE_ERRORS[code]}]}
        return finish(rec, 200, body)

    for p in ("api_key", "from", "to"):
        if not params.get(p):
            return fail("2", "Missing %s param" % p)
    if "sig" in params:
        if "api_secret" in params:
            return fail("32")
        want = vonage_signature(params, a.vonage_signature_secret,
                                a.vonage_signature_method)
        if not hmac.compare_digest(params["sig"].lower(), want):
            return fail("14")
    elif not params.get("api_secret"):
        return fail("2", "Missing api_secret param")
    if params["api_key"] != a.vonage_api_key or (
            "sig" not in params and
            not hmac.compare_digest(params["api_secret"],
                                    a.vonage_api_secret)):
        return fail("4", "Bad Credentials")
    early = await apply_faults(request, rec, "vonage")
    if early is not None:
        return early
    if not VONAGE_NUMBER.match(params["to"]):
        return fail("3", "Invalid to param")
    text = params.get("text", "")
    if not text and params.get("type", "text") in ("text", "unicode"):
        return fail("2", "Missing text param")
    gsm7, parts = count_segments(text)
    msgs = []
    for _ in range(parts):
        mid = secrets.token_hex(8).upper()
        entry = {"to": params["to"], "message-id": mid, "status": "0",
                 "remaining-balance": "38.07243628",
                 "message-price": "0.04120000", "network": "23420"}
        if "client-ref" in params:
            entry["client-ref"] = params["client-ref"]
        msgs.append(entry)
        FAKE.messages[mid] = {"_provider": "vonage", "to": params["to"],
                              "from": params["from"],
                              "client-ref": params.get("client-ref"),
                              "_status_callback": params.get("callback")}
    return finish(rec, 200, {"message-count": str(parts), "messages": msgs})


async def unknown(request):
    rec = await read_request(request, "unknown")
    return finish(rec, 404, {"error": "no such endpoint on the fake",
                             "path": request.path})


# ---------------------------------------------------------------- control


async def ctl_faults(request):
    try:
        spec = await request.json()
    except ValueError:
        return web.json_response({"error": "JSON body expected"}, status=400)
    if not isinstance(spec, dict):
        return web.json_response({"error": "JSON object expected"},
                                 status=400)
    if spec.get("clear"):
        FAKE.faults.clear()
        FAKE.latency_ms = 0
        for fut in list(FAKE.hanging):
            fut.cancel()
    if "latency_ms" in spec:
        FAKE.latency_ms = max(0, int(spec["latency_ms"]))
    entry = None
    common = {k: spec[k] for k in ("provider", "retry_after") if k in spec}
    if "hang" in spec:
        entry = dict(common, kind="hang", remaining=int(spec["hang"]))
    elif "close" in spec:
        entry = dict(common, kind="close", remaining=int(spec["close"]))
    elif "error_code" in spec:
        entry = dict(common, kind="error_code",
                     error_code=spec["error_code"],
                     status=spec.get("status"),
                     remaining=int(spec.get("fail", 1)))
    elif "fail" in spec or "status" in spec:
        entry = dict(common, kind="fail", status=int(spec.get("status",
                                                              500)),
                     remaining=int(spec.get("fail", 1)))
    if entry and entry["remaining"] > 0:
        FAKE.faults.append(entry)
    return web.json_response({"faults": FAKE.faults,
                              "latency_ms": FAKE.latency_ms})


async def ctl_requests(request):
    recs = FAKE.records
    prov = request.query.get("provider")
    since = int(request.query.get("since", 0))
    out = [r for r in recs if r["seq"] > since and
           (not prov or r["provider"] == prov)]
    return web.json_response(out)


async def ctl_reset(request):
    FAKE.records.clear()
    FAKE.faults.clear()
    FAKE.latency_ms = 0
    for fut in list(FAKE.hanging):
        fut.cancel()
    return web.json_response({"ok": True})


async def ctl_stats(request):
    s = dict(FAKE.stats, pending_faults=FAKE.faults,
             latency_ms=FAKE.latency_ms, hanging=len(FAKE.hanging),
             messages=len(FAKE.messages))
    return web.json_response(s)


async def ctl_keys(request):
    return web.json_response(
        {"telnyx_public_key": telnyx_public_b64(FAKE.telnyx_key),
         "twilio_account_sid": FAKE.args.twilio_account_sid})


# ---------------------------------------------------------------- webhooks


def plain(num):
    return num[1:] if isinstance(num, str) and num.startswith("+") else num


def media_items(spec):
    out = []
    for i, m in enumerate(spec.get("media") or []):
        if isinstance(m, str):
            m = {"url": m}
        out.append({"url": m["url"],
                    "content_type": m.get("content_type", "image/jpeg")})
    return out


def build_twilio(spec, kind):
    a = FAKE.args
    mid = spec.get("message_id")
    if kind == "inbound":
        media = media_items(spec)
        mid = mid or ("MM" if media else "SM") + secrets.token_hex(16)
        body = spec.get("body", "")
        params = [("ToCountry", "US"), ("ToState", ""),
                  ("SmsMessageSid", mid), ("NumMedia", str(len(media))),
                  ("ToCity", ""), ("FromZip", ""), ("SmsSid", mid),
                  ("FromState", ""), ("SmsStatus", "received"),
                  ("FromCity", ""), ("Body", body), ("FromCountry", "US"),
                  ("To", spec.get("to", "")), ("ToZip", ""),
                  ("NumSegments", str(count_segments(body)[1])),
                  ("MessageSid", mid), ("AccountSid", a.twilio_account_sid),
                  ("From", spec.get("from", "")),
                  ("ApiVersion", TWILIO_API_VERSION)]
        for i, m in enumerate(media):
            params += [("MediaContentType%d" % i, m["content_type"]),
                       ("MediaUrl%d" % i, m["url"])]
    else:
        stored = FAKE.messages.get(mid, {})
        status = spec.get("status", "delivered")
        params = [("SmsSid", mid), ("SmsStatus", status),
                  ("MessageStatus", status),
                  ("To", spec.get("to", stored.get("to", ""))),
                  ("MessageSid", mid), ("AccountSid", a.twilio_account_sid),
                  ("From", spec.get("from", stored.get("from") or "")),
                  ("ApiVersion", TWILIO_API_VERSION)]
        code = spec.get("error_code")
        if code is None and status in ("failed", "undelivered"):
            code = 30008
        if code is not None:
            params += [("ErrorCode", str(code))]
        if stored.get("messaging_service_sid"):
            params.append(("MessagingServiceSid",
                           stored["messaging_service_sid"]))
    params += list((spec.get("extra") or {}).items())
    body = urllib.parse.urlencode(params).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded",
               "User-Agent": "TwilioProxy/1.1",
               "I-Twilio-Idempotency-Token": str(uuid.uuid4())}
    sign = spec.get("sign", True)
    if sign == "stale":
        raise ValueError("Twilio signatures carry no timestamp: "
                         "'stale' does not apply")
    if sign:
        token = a.twilio_auth_token + ("x" if sign == "bad" else "")
        headers["X-Twilio-Signature"] = twilio_signature(
            token, spec.get("sign_url", spec["url"]), params)
    return "POST", spec["url"], headers, body, mid


def build_telnyx(spec, kind):
    mid = spec.get("message_id") or str(uuid.uuid4())
    if kind == "inbound":
        payload = {
            "record_type": "message", "direction": "inbound", "id": mid,
            "type": "MMS" if spec.get("media") else "SMS",
            "messaging_profile_id": "0f512bda-ae1e-4597-8e11-e5f5686b97d3",
            "organization_id": "b448f9cc-a842-4784-98e9-03c1a5872950",
            "from": {"phone_number": spec.get("from", ""),
                     "carrier": "T-MOBILE USA, INC.",
                     "line_type": "Wireless"},
            "to": [{"phone_number": spec.get("to", ""),
                    "status": "webhook_delivered",
                    "carrier": "TELNYX LLC", "line_type": "VoIP"}],
            "cc": [], "text": spec.get("body", ""), "subject": None,
            "media": [{"url": m["url"], "content_type": m["content_type"],
                       "hash_sha256": hashlib.sha256(
                           m["url"].encode()).hexdigest(), "size": 1024}
                      for m in media_items(spec)],
            "encoding": "GSM-7" if count_segments(
                spec.get("body", ""))[0] else "UCS-2",
            "parts": count_segments(spec.get("body", ""))[1],
            "received_at": now_iso(), "tags": []}
        event = "message.received"
    else:
        stored = FAKE.messages.get(mid, {})
        status = spec.get("status", "delivered")
        st = {"failed": "sending_failed",
              "undelivered": "delivery_failed"}.get(status, status)
        errors = []
        code = spec.get("error_code")
        if code is None and st in ("sending_failed", "delivery_failed"):
            code = 40008
        if code is not None:
            errors.append({"code": str(code), "title": "Undeliverable",
                           "detail": "The message could not be delivered."})
        sfrom = stored.get("from", {})
        payload = {
            "record_type": "message", "direction": "outbound", "id": mid,
            "type": stored.get("type", "SMS"),
            "from": {"phone_number": spec.get(
                "from", sfrom.get("phone_number") if isinstance(sfrom, dict)
                else None)},
            "to": [{"phone_number": spec.get(
                "to", (stored.get("to") or [{}])[0].get("phone_number")),
                "status": st}],
            "text": stored.get("text"), "errors": errors,
            "completed_at": now_iso(), "sent_at": now_iso()}
        event = "message.sent" if st == "sent" else "message.finalized"
    doc = {"data": {"event_type": event, "id": str(uuid.uuid4()),
                    "occurred_at": now_iso(), "payload": payload,
                    "record_type": "event"},
           "meta": {"attempt": 1, "delivered_to": spec["url"]}}
    body = json.dumps(doc, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json",
               "User-Agent": "telnyx-webhooks"}
    sign = spec.get("sign", True)
    if sign:
        ts = int(spec.get("timestamp", time.time()))
        key = FAKE.telnyx_key
        if sign == "stale":
            ts -= 600
        if sign == "bad":
            key = telnyx_private_key(os.urandom(32))
        headers["telnyx-timestamp"] = str(ts)
        headers["telnyx-signature-ed25519"] = telnyx_sign(key, ts, body)
    return "POST", spec["url"], headers, body, mid


def build_vonage(spec, kind):
    a = FAKE.args
    mid = spec.get("message_id") or secrets.token_hex(8).upper()
    now = time.time()
    ts_text = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now))
    if kind == "inbound":
        text = spec.get("body", "")
        params = {"api-key": a.vonage_api_key,
                  "msisdn": plain(spec.get("from", "")),
                  "to": plain(spec.get("to", "")), "messageId": mid,
                  "text": text,
                  "type": "text" if count_segments(text)[0] else "unicode",
                  "keyword": (text.split() or [""])[0].upper(),
                  "message-timestamp": ts_text}
    else:
        stored = FAKE.messages.get(mid, {})
        status = spec.get("status", "delivered")
        st = {"undelivered": "rejected"}.get(status, status)
        code = spec.get("error_code")
        if code is None:
            code = 0 if st in ("delivered", "accepted", "buffered") else 5
        params = {"msisdn": plain(spec.get("to", stored.get("to", ""))),
                  "to": plain(spec.get("from", stored.get("from", ""))),
                  "network-code": "23420", "messageId": mid,
                  "price": "0.04120000", "status": st,
                  "scts": time.strftime("%y%m%d%H%M", time.gmtime(now)),
                  "err-code": str(code), "api-key": a.vonage_api_key,
                  "message-timestamp": ts_text}
        if stored.get("client-ref"):
            params["client-ref"] = stored["client-ref"]
    params.update({k: str(v) for k, v in (spec.get("extra") or {}).items()})
    sign = spec.get("sign", True)
    if sign:
        ts = int(spec.get("timestamp", now))
        if sign == "stale":
            ts -= 600
        params["timestamp"] = str(ts)
        params["nonce"] = str(uuid.uuid4())
        secret = a.vonage_signature_secret + ("x" if sign == "bad" else "")
        params["sig"] = vonage_signature(params, secret,
                                         a.vonage_signature_method)
    method = spec.get("method", "POST").upper()
    url = spec["url"]
    headers = {"User-Agent": "Nexmo/MessagingHUB/v1.0"}
    if method == "GET":
        sep = "&" if "?" in url else "?"
        return "GET", url + sep + urllib.parse.urlencode(params), headers, \
            None, mid
    if method == "JSON":
        headers["Content-Type"] = "application/json"
        return "POST", url, headers, json.dumps(params).encode(), mid
    headers["Content-Type"] = "application/x-www-form-urlencoded; " \
                              "charset=UTF-8"
    return "POST", url, headers, urllib.parse.urlencode(params).encode(), mid


BUILDERS = {"twilio": build_twilio, "telnyx": build_telnyx,
            "vonage": build_vonage}


async def send_webhook(request, kind):
    try:
        spec = await request.json()
        builder = BUILDERS[spec.get("provider")]
        if not spec.get("url"):
            raise ValueError("url is required")
        if kind == "status" and not spec.get("message_id"):
            raise ValueError("message_id is required")
        method, url, headers, body, mid = builder(spec, kind)
    except (ValueError, KeyError, TypeError) as e:
        return web.json_response({"error": "bad webhook spec: %r" % (e,)},
                                 status=400)
    timeout = ClientTimeout(total=float(spec.get("timeout", 10)))
    sent = {"method": method, "url": url, "headers": headers,
            "body": body.decode() if body else None, "message_id": mid}
    FAKE.stats["webhooks_sent"] += 1
    try:
        async with FAKE.session.request(method, url, data=body,
                                        headers=headers,
                                        timeout=timeout) as resp:
            text = await resp.text(errors="replace")
            out = {"status": resp.status, "body": text,
                   "headers": dict(resp.headers), "sent": sent}
    except (OSError, asyncio.TimeoutError) as e:
        out = {"status": None, "error": repr(e), "sent": sent}
    return web.json_response(out)


async def ctl_send_inbound(request):
    return await send_webhook(request, "inbound")


async def ctl_send_status(request):
    return await send_webhook(request, "status")


# ---------------------------------------------------------------- main


def make_app():
    app = web.Application(client_max_size=4 * 1024 * 1024)
    r = app.router
    r.add_post("/%s/Accounts/{sid}/Messages.json" % TWILIO_API_VERSION,
               twilio_create)
    r.add_get("/%s/Accounts/{sid}/Messages/{msid}.json" %
              TWILIO_API_VERSION, twilio_fetch)
    r.add_post("/v2/messages", telnyx_create)
    r.add_route("*", "/sms/json", vonage_send)
    r.add_post("/_fake/faults", ctl_faults)
    r.add_get("/_fake/requests", ctl_requests)
    r.add_post("/_fake/reset", ctl_reset)
    r.add_get("/_fake/stats", ctl_stats)
    r.add_get("/_fake/keys", ctl_keys)
    r.add_post("/_fake/send_inbound", ctl_send_inbound)
    r.add_post("/_fake/send_status", ctl_send_status)
    r.add_route("*", "/{tail:.*}", unknown)
    return app


def parse_seed(text):
    text = text.strip()
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        return bytes.fromhex(text)
    seed = base64.b64decode(text, validate=True)
    if len(seed) != 32:
        raise argparse.ArgumentTypeError("Ed25519 seed must be 32 bytes")
    return seed


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--record", help="append every API request as a JSON "
                   "line to this file")
    p.add_argument("--twilio-account-sid",
                   default="AC" + "0" * 31 + "1")
    p.add_argument("--twilio-auth-token", default="twilio-test-token")
    p.add_argument("--telnyx-api-key", default="KEYtelnyx-test-key")
    p.add_argument("--telnyx-private-key", dest="telnyx_seed",
                   type=parse_seed, default=None,
                   help="Ed25519 seed, base64 or hex (32 bytes); "
                   "generated when absent")
    p.add_argument("--vonage-api-key", default="abcd1234")
    p.add_argument("--vonage-api-secret", default="vonage-test-secret")
    p.add_argument("--vonage-signature-secret",
                   default="vonage-signature-secret")
    p.add_argument("--vonage-signature-method", default="md5hash",
                   choices=["md5hash", "md5", "sha1", "sha256", "sha512"])
    p.add_argument("--exit-with-parent", action="store_true",
                   help="get SIGTERM when the parent process dies "
                   "(Linux), so a crashed test leaves no server behind")
    a = p.parse_args(argv)
    if a.telnyx_seed is None:
        a.telnyx_seed = os.urandom(32)
    return a


async def serve(args):
    global FAKE
    FAKE = Fake(args)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    FAKE.session = ClientSession()
    runner = web.AppRunner(make_app(), access_log=None,
                           handle_signals=False)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    site = web.SockSite(runner, sock, shutdown_timeout=0.5)
    await site.start()
    print("TELNYX_PUBLIC_KEY %s" % telnyx_public_b64(FAKE.telnyx_key),
          flush=True)
    print("LISTENING %d" % sock.getsockname()[1], flush=True)
    await stop.wait()
    for fut in list(FAKE.hanging):
        fut.cancel()
    await FAKE.session.close()
    await runner.cleanup()
    if FAKE.record_file:
        FAKE.record_file.close()


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.exit_with_parent:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:
            sys.exit("fake_provider: parent already gone")
    # A hung or closed request cancels its handler on purpose; that is
    # not an error worth a traceback.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
