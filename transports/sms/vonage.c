/*
 * vonage: the Vonage (Nexmo) SMS API adapter (protocol-facts §2.2).
 *
 * Send: POST {api_url}/sms/json, a form with api_key, api_secret, from and
 * to without '+', text, type=unicode when the text is not GSM-7, and
 * status-report-req=1 + callback when http.public_url is set. The SMS API
 * has no MMS: media URLs are appended to the text, one per line. Vonage
 * answers HTTP 200 even for failures; each messages[] entry (one per
 * part Vonage cut the text into) has its own status, "0" meaning sent.
 * The provider id is the last part's message-id (its delivery report
 * closes the message). A failure after earlier parts were sent is
 * permanent (a retry would send them twice). Status 1 (throttled), 5
 * (internal error), 9 (out of credit: the operator can top up) and 10 are
 * temporary; 4/14/32 are bad credentials (logged at error).
 *
 * Webhooks arrive as GET, form POST or JSON POST, as set in the Vonage
 * dashboard. Signed webhooks carry sig: every other parameter sorted by
 * name as "&name=value" ('&' and '=' in values replaced by '_'), then
 * hex MD5(string + secret) ("md5hash") or HMAC-MD5/SHA1/SHA256/SHA512
 * keyed with signature_secret. The method is not configured: it follows
 * from the length of sig (32 hex digits: md5hash or HMAC-MD5 both
 * tried). Unsigned webhooks are refused, and so is a timestamp more than
 * 300 s from our clock (replay). Inbound: msisdn, to, text, messageId and,
 * for the parts of a long SMS that Vonage does not join, concat-ref,
 * concat-total, concat-part (sms.c joins them). Delivery receipts:
 * messageId, status (delivered / failed, rejected, expired / others) and
 * err-code.
 *
 * Pure apart from init/free: no I/O; never logs a secret or a body.
 */
#include "provider.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "config.h"
#include "crypto.h"
#include "log.h"
#include "segments.h"
#include "sms.h"

#define VONAGE_TOLERANCE_S 300

struct vonage {
    struct transport *t;
    char *url;
    const char *api_key, *api_secret, *sig_secret; /* borrowed */
    const char *module;
};

static void *vonage_init(struct transport *t, struct error *err)
{
    const struct provider_conf *pc = &t->conf->provider;
    struct vonage *v;

    if (!pc->api_key || !*pc->api_key || !pc->api_secret || !*pc->api_secret) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "provider.api_key and provider.api_secret: vonage needs "
                  "both");
        return NULL;
    }
    if (!pc->signature_secret || !*pc->signature_secret) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "provider.signature_secret: missing (vonage webhooks are "
                  "verified with it)");
        return NULL;
    }
    if (!pc->api_url || !*pc->api_url) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "provider.api_url: missing");
        return NULL;
    }
    v = xcalloc(1, sizeof(*v));
    v->t = t;
    v->module = t->module;
    v->url = xasprintf("%s/sms/json", pc->api_url);
    v->api_key = pc->api_key;
    v->api_secret = pc->api_secret;
    v->sig_secret = pc->signature_secret;
    return v;
}

static void vonage_free(void *state)
{
    struct vonage *v = state;

    if (!v)
        return;
    free(v->url);
    free(v);
}

static const char *no_plus(const char *n)
{
    return n[0] == '+' ? n + 1 : n;
}

static int vonage_build(void *state, const struct sms_part *part,
                        const char *status_url, struct sms_request *out,
                        struct error *err)
{
    struct vonage *v = state;
    struct segments_info si;
    struct strbuf text, b;

    sb_init(&text);
    if (part->body)
        sb_puts(&text, part->body);
    for (size_t i = 0; i < part->n_media; i++) {
        if (text.len)
            sb_putc(&text, '\n');
        sb_puts(&text, part->media[i]);
    }
    sb_puts(&text, "");
    if (segments_count(text.s, &si) < 0) {
        sb_free(&text);
        error_set(err, COND_BAD_REQUEST, false,
                  "the message is not valid UTF-8");
        return -1;
    }
    sb_init(&b);
    http_form_add(&b, "api_key", v->api_key);
    http_form_add(&b, "api_secret", v->api_secret);
    http_form_add(&b, "from", no_plus(part->from));
    http_form_add(&b, "to", no_plus(part->to));
    http_form_add(&b, "text", text.s);
    if (!si.gsm7)
        http_form_add(&b, "type", "unicode");
    if (status_url) {
        http_form_add(&b, "status-report-req", "1");
        http_form_add(&b, "callback", status_url);
    }
    sb_free(&text);
    out->url = xstrdup(v->url);
    out->body_len = b.len;
    out->body = sb_steal(&b);
    out->content_type = "application/x-www-form-urlencoded";
    out->authorization = NULL; /* the credentials are in the form */
    return 0;
}

/* ---- responses ---------------------------------------------------------*/

/* Maps a messages[].status != "0" (facts §2.2.1). */
static void map_status(struct vonage *v, long st, const char *text,
                       struct error *err)
{
    char m[100];
    const char *mod = v ? v->module : "vonage";

    sms_clean_text(m, sizeof(m), text ? text : "");
    switch (st) {
    case 1:
    case 5:
    case 10:
        error_set(err, COND_REMOTE_SERVER_TIMEOUT, true,
                  "the SMS provider is %s (Vonage status %ld); will retry",
                  st == 1 ? "throttling us" : "having trouble", st);
        return;
    case 9:
        error_set(err, COND_REMOTE_SERVER_TIMEOUT, true,
                  "the SMS provider account is out of credit (Vonage "
                  "status 9); will retry");
        log_err(mod, "vonage: account out of credit (status 9): top it up");
        return;
    case 4:
    case 14:
    case 32:
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "provider authentication failed: check api_key/"
                  "api_secret");
        log_err(mod,
                "vonage: authentication failed (status %ld): check "
                "provider.api_key and provider.api_secret",
                st);
        return;
    case 7:
        error_set(err, COND_NOT_ACCEPTABLE, false,
                  "the recipient's number is barred (Vonage status 7)");
        return;
    case 33:
        error_set(err, COND_ITEM_NOT_FOUND, false,
                  "invalid number: the recipient's number is deactivated "
                  "(Vonage status 33)");
        return;
    case 29:
        error_set(err, COND_NOT_ACCEPTABLE, false,
                  "this destination is not whitelisted for the provider "
                  "account (Vonage status 29)");
        return;
    case 8:
    case 11:
    case 15:
    case 23:
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "the SMS provider refused the gateway's request: %s "
                  "(Vonage status %ld)",
                  *m ? m : "account or sender problem", st);
        log_err(mod,
                "vonage: status %ld (%s): check the account and the "
                "sending numbers",
                st, m);
        return;
    default:
        error_set(err, COND_NOT_ACCEPTABLE, false,
                  "the provider refused the message: %s (Vonage status %ld)",
                  *m ? m : "no reason given", st);
        return;
    }
}

static int vonage_response(void *state, const struct http_response *resp,
                           int64_t now, char **provider_id, struct error *err)
{
    struct vonage *v = state;
    json_t *doc, *msgs;
    const char *last = NULL;
    size_t n;

    if (resp->status == 429 || resp->status >= 500) {
        error_set(err, COND_REMOTE_SERVER_TIMEOUT, true,
                  "the SMS provider is %s (HTTP %d); will retry",
                  resp->status == 429 ? "throttling us" : "unavailable",
                  resp->status);
        err->retry_after_s = sms_retry_after(resp->retry_after, now);
        return -1;
    }
    if (resp->status == 401 || resp->status == 403) {
        map_status(v, 4, NULL, err);
        return -1;
    }
    if (resp->status < 200 || resp->status >= 300) {
        error_set(err,
                  resp->status >= 400 ? COND_NOT_ACCEPTABLE
                                      : COND_REMOTE_SERVER_TIMEOUT,
                  resp->status < 400,
                  "unexpected answer from the SMS provider (HTTP %d)",
                  resp->status);
        return -1;
    }
    doc = json_loadb(resp->body, resp->body_len, 0, NULL);
    msgs = json_object_get(doc, "messages");
    n = json_array_size(msgs);
    if (n == 0) {
        json_decref(doc);
        /* we cannot tell whether it was sent: retrying risks a duplicate,
         * not retrying risks a loss; a loss the user hears about is the
         * lesser evil */
        error_set(err, COND_UNDEFINED_CONDITION, false,
                  "the SMS provider's answer could not be understood; the "
                  "message may not have been sent");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(msgs, i);
        const char *st = json_string_value(json_object_get(m, "status"));
        long code = st ? strtol(st, NULL, 10) : -1;
        if (!st || code != 0) {
            map_status(v, code,
                       json_string_value(json_object_get(m, "error-text")),
                       err);
            if (i > 0) {
                struct error e = *err;
                error_set(err,
                          e.code == COND_REMOTE_SERVER_TIMEOUT
                              ? COND_UNDEFINED_CONDITION
                              : e.code,
                          false, "only %zu of %zu parts were sent: %s", i, n,
                          e.msg);
            }
            json_decref(doc);
            return -1;
        }
        last = json_string_value(json_object_get(m, "message-id"));
    }
    if (last && *last)
        *provider_id = xstrdup(last);
    json_decref(doc);
    return 0;
}

/* ---- webhooks ----------------------------------------------------------*/

/* A JSON object's scalar members as a form. */
static int json_params(const struct sms_webhook *wh, struct sms_form *f)
{
    json_t *doc = json_loadb(wh->body, wh->body_len, 0, NULL), *val;
    const char *key;
    size_t cap;

    memset(f, 0, sizeof(*f));
    if (!json_is_object(doc)) {
        json_decref(doc);
        return -1;
    }
    cap = json_object_size(doc);
    f->names = xcalloc(cap + 1, sizeof(*f->names));
    f->values = xcalloc(cap + 1, sizeof(*f->values));
    json_object_foreach(doc, key, val)
    {
        char *s;
        if (json_is_string(val))
            s = xstrdup(json_string_value(val));
        else if (json_is_integer(val))
            s = xasprintf("%lld", (long long)json_integer_value(val));
        else if (json_is_true(val))
            s = xstrdup("true");
        else if (json_is_false(val))
            s = xstrdup("false");
        else
            continue;
        f->names[f->n] = xstrdup(key);
        f->values[f->n++] = s;
    }
    json_decref(doc);
    return 0;
}

static int load_params(const struct sms_webhook *wh, struct sms_form *f,
                       struct error *err)
{
    int rc;

    if (wh->method && strcmp(wh->method, "GET") == 0)
        rc = sms_form_parse(wh->query ? wh->query : "",
                            wh->query ? strlen(wh->query) : 0, f);
    else if (wh->content_type &&
             str_has_prefix(wh->content_type, "application/json"))
        rc = json_params(wh, f);
    else
        rc = sms_form_parse(wh->body, wh->body_len, f);
    if (rc < 0)
        error_set(err, COND_BAD_REQUEST, false,
                  "the parameters are neither a form nor a JSON object");
    return rc;
}

struct kv {
    const char *k, *v;
};

static int kv_cmp(const void *a, const void *b)
{
    return strcmp(((const struct kv *)a)->k, ((const struct kv *)b)->k);
}

/* "&k=v" for every parameter but sig, sorted, values sanitised. */
static char *sign_string(const struct sms_form *f)
{
    struct kv *v = xcalloc(f->n + 1, sizeof(*v));
    struct strbuf b;
    size_t n = 0;

    for (size_t i = 0; i < f->n; i++) {
        bool dup = false;
        if (strcmp(f->names[i], "sig") == 0)
            continue;
        for (size_t j = 0; j < n && !dup; j++)
            dup = strcmp(v[j].k, f->names[i]) == 0;
        if (!dup) {
            v[n].k = f->names[i];
            v[n++].v = f->values[i];
        }
    }
    qsort(v, n, sizeof(*v), kv_cmp);
    sb_init(&b);
    sb_puts(&b, "");
    for (size_t i = 0; i < n; i++) {
        sb_putc(&b, '&');
        sb_puts(&b, v[i].k);
        sb_putc(&b, '=');
        for (const char *p = v[i].v; *p; p++)
            sb_putc(&b, *p == '&' || *p == '=' ? '_' : *p);
    }
    free(v);
    return sb_steal(&b);
}

static bool hex_matches(const unsigned char *d, size_t n, const char *sig)
{
    char hex[2 * CRYPTO_MAX_DIGEST + 1];

    crypto_hex(d, n, hex);
    return crypto_streq(hex, sig);
}

static int vonage_verify(void *state, const struct sms_webhook *wh,
                         struct error *err)
{
    struct vonage *v = state;
    const char *sig_in, *ts;
    unsigned char d[CRYPTO_MAX_DIGEST];
    char sig[2 * CRYPTO_MAX_DIGEST + 1], *str;
    struct sms_form f;
    size_t len, sl = strlen(v->sig_secret);
    bool ok = false;

    if (load_params(wh, &f, err) < 0) {
        err->code = COND_FORBIDDEN;
        return -1;
    }
    sig_in = sms_form_get(&f, "sig");
    len = sig_in ? strlen(sig_in) : 0;
    if (len != 32 && len != 40 && len != 64 && len != 128) {
        sms_form_free(&f);
        error_set(err, COND_FORBIDDEN, false,
                  sig_in ? "sig is not a hex digest" : "unsigned webhook");
        return -1;
    }
    for (size_t i = 0; i <= len; i++)
        sig[i] = (sig_in[i] >= 'A' && sig_in[i] <= 'F')
                     ? (char)(sig_in[i] - 'A' + 'a')
                     : sig_in[i];
    str = sign_string(&f);
    if (len == 32) {
        struct strbuf b;
        sb_init(&b);
        sb_puts(&b, str);
        sb_puts(&b, v->sig_secret);
        ok = hex_matches(d, crypto_digest(CRYPTO_MD5, b.s, b.len, d), sig);
        sb_free(&b);
        if (!ok)
            ok = hex_matches(
                d,
                crypto_hmac(CRYPTO_MD5, v->sig_secret, sl, str, strlen(str), d),
                sig);
    } else {
        enum crypto_alg alg = len == 40   ? CRYPTO_SHA1
                              : len == 64 ? CRYPTO_SHA256
                                          : CRYPTO_SHA512;
        ok = hex_matches(
            d, crypto_hmac(alg, v->sig_secret, sl, str, strlen(str), d), sig);
    }
    free(str);
    ts = sms_form_get(&f, "timestamp");
    if (ok) {
        char *end = NULL;
        long long t = ts ? strtoll(ts, &end, 10) : 0;
        if (!ts || !*ts || *end) {
            error_set(err, COND_FORBIDDEN, false, "signed without timestamp");
            ok = false;
        } else if (t > wh->now + VONAGE_TOLERANCE_S ||
                   t < wh->now - VONAGE_TOLERANCE_S) {
            error_set(err, COND_FORBIDDEN, false,
                      "timestamp is %lld s away from our clock (limit %d s)",
                      t > wh->now ? t - wh->now : wh->now - t,
                      VONAGE_TOLERANCE_S);
            ok = false;
        }
    } else {
        error_set(err, COND_FORBIDDEN, false, "sig does not match");
    }
    sms_form_free(&f);
    return ok ? 0 : -1;
}

static char *e164_of(const char *n)
{
    return n[0] == '+' ? xstrdup(n) : xasprintf("+%s", n);
}

static bool parse_uint(const char *s, unsigned long max, unsigned *out)
{
    char *end;
    unsigned long v;

    if (!s || *s < '0' || *s > '9')
        return false;
    v = strtoul(s, &end, 10);
    if (*end || v > max)
        return false;
    *out = (unsigned)v;
    return true;
}

static int vonage_parse_inbound(void *state, const struct sms_webhook *wh,
                                struct sms_inbound *out, struct error *err)
{
    struct sms_form f;
    const char *from, *to, *id, *text, *type, *ref;

    (void)state;
    memset(out, 0, sizeof(*out));
    if (load_params(wh, &f, err) < 0)
        return SMS_PARSE_MALFORMED;
    from = sms_form_get(&f, "msisdn");
    to = sms_form_get(&f, "to");
    id = sms_form_get(&f, "messageId");
    text = sms_form_get(&f, "text");
    type = sms_form_get(&f, "type");
    if (!text && sms_form_get(&f, "status") && sms_form_get(&f, "err-code")) {
        sms_form_free(&f);
        return SMS_PARSE_OTHER; /* a delivery receipt */
    }
    if (!from || !*from || !to || !*to || !id || !*id) {
        sms_form_free(&f);
        error_set(err, COND_BAD_REQUEST, false,
                  "an inbound message needs msisdn, to and messageId");
        return SMS_PARSE_MALFORMED;
    }
    out->msg.from_addr = e164_of(from);
    out->msg.to_addr = e164_of(to);
    out->msg.provider_id = xstrdup(id);
    if (type && strcmp(type, "binary") == 0)
        out->msg.body = xstrdup("[binary SMS, not shown]");
    else
        out->msg.body = xstrdup(text ? text : "");
    ref = sms_form_get(&f, "concat-ref");
    if (ref && *ref) {
        unsigned total, part;
        if (!parse_uint(sms_form_get(&f, "concat-total"), 255, &total) ||
            !parse_uint(sms_form_get(&f, "concat-part"), 255, &part) ||
            total < 1 || part < 1 || part > total) {
            sms_inbound_free(out);
            sms_form_free(&f);
            error_set(err, COND_BAD_REQUEST, false,
                      "concat-ref needs concat-total and concat-part "
                      "(1 <= part <= total <= 255)");
            return SMS_PARSE_MALFORMED;
        }
        if (total > 1) {
            /* the reference is only unique per sender and receiver */
            out->concat_ref = xasprintf("%s:%s:%s", out->msg.from_addr,
                                        out->msg.to_addr, ref);
            out->concat_part = part;
            out->concat_total = total;
        }
    }
    sms_form_free(&f);
    return SMS_PARSE_OK;
}

static int vonage_parse_status(void *state, const struct sms_webhook *wh,
                               struct sms_status *out, struct error *err)
{
    struct sms_form f;
    const char *id, *st, *code_s;
    long code = 0;

    (void)state;
    memset(out, 0, sizeof(*out));
    if (load_params(wh, &f, err) < 0)
        return SMS_PARSE_MALFORMED;
    id = sms_form_get(&f, "messageId");
    st = sms_form_get(&f, "status");
    if (!st && sms_form_get(&f, "text") && sms_form_get(&f, "msisdn")) {
        sms_form_free(&f);
        return SMS_PARSE_OTHER; /* an inbound message */
    }
    if (!id || !*id || !st || !*st) {
        sms_form_free(&f);
        error_set(err, COND_BAD_REQUEST, false,
                  "a delivery receipt needs messageId and status");
        return SMS_PARSE_MALFORMED;
    }
    out->provider_id = xstrdup(id);
    code_s = sms_form_get(&f, "err-code");
    if (code_s)
        code = strtol(code_s, NULL, 10);
    if (strcmp(st, "delivered") == 0) {
        out->state = DELIVERY_DELIVERED;
    } else if (strcmp(st, "failed") == 0 || strcmp(st, "rejected") == 0 ||
               strcmp(st, "expired") == 0) {
        out->state = DELIVERY_FAILED;
        if (code == 9)
            error_set(&out->err, COND_NOT_ACCEPTABLE, false,
                      "the SMS was not delivered (%s): the recipient has "
                      "opted out or the number is barred (Vonage err-code "
                      "9)",
                      st);
        else
            error_set(&out->err, COND_RECIPIENT_UNAVAILABLE, false,
                      "the SMS was not delivered (%s, Vonage err-code %ld)", st,
                      code);
    } else {
        out->state = DELIVERY_SENT;
    }
    sms_form_free(&f);
    return SMS_PARSE_OK;
}

const struct sms_provider_ops sms_provider_vonage = {
    .name = "vonage",
    .max_chars = SMS_MAX_CHARS,
    .init = vonage_init,
    .build = vonage_build,
    .response = vonage_response,
    .accept_get = true,
    .verify = vonage_verify,
    .parse_inbound = vonage_parse_inbound,
    .parse_status = vonage_parse_status,
    .inbound_status = 204,
    .free = vonage_free,
};
