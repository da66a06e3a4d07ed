/*
 * twilio: the Twilio Programmable Messaging adapter (protocol-facts §1).
 *
 * Send: POST {api_url}/2010-04-01/Accounts/{account_sid}/Messages.json,
 * Basic auth account_sid:auth_token, form fields To, From, Body,
 * MediaUrl (repeated, at most 10) and StatusCallback (only when
 * http.public_url is set). 2xx -> the message sid; 429 and 5xx ->
 * temporary (Retry-After honoured); 4xx -> permanent, mapped from
 * Twilio's error code (21211 invalid number, 21610 opted out, 30007/30034
 * carrier filtering, 20003 bad credentials...), the provider's message
 * otherwise.
 *
 * Webhooks: X-Twilio-Signature is base64(HMAC-SHA1(auth_token, URL +
 * the sorted, de-duplicated POST parameters as name+value)). Like the
 * official validators we accept the URL as configured, without its port,
 * or with the scheme's default port added, so a proxy that adds or drops
 * ":443" does not break verification. A JSON webhook carries
 * bodySHA256=<hex> in its query: the URL alone is signed and the body
 * hash is checked separately. Inbound: From, To, Body, MessageSid,
 * MediaUrl0..N; status: MessageSid, MessageStatus, ErrorCode,
 * ErrorMessage. The inbound answer is empty TwiML (text/xml), never
 * text/plain, which Twilio would send back as an SMS.
 *
 * Pure apart from init/free: it never performs I/O, never logs a token,
 * a body, or an unmasked number above debug.
 */
#include "provider.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "config.h"
#include "crypto.h"
#include "log.h"
#include "sms.h"

#define TWILIO_API_VERSION "2010-04-01"

struct twilio {
    struct transport *t;
    char *url;           /* the Messages.json URL */
    char *authorization; /* "Basic base64(sid:token)" */
    const char *token;   /* borrowed from the config */
    const char *module;
};

static void *twilio_init(struct transport *t, struct error *err)
{
    const struct provider_conf *pc = &t->conf->provider;
    struct twilio *tw;
    char *cred, *b64;

    if (!pc->account_sid || !*pc->account_sid) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "provider.account_sid: missing (twilio needs it)");
        return NULL;
    }
    if (!pc->auth_token || !*pc->auth_token) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "provider.auth_token: missing (twilio needs it)");
        return NULL;
    }
    if (!pc->api_url || !*pc->api_url) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "provider.api_url: missing");
        return NULL;
    }
    tw = xcalloc(1, sizeof(*tw));
    tw->t = t;
    tw->module = t->module;
    tw->token = pc->auth_token;
    tw->url = xasprintf("%s/" TWILIO_API_VERSION "/Accounts/%s/Messages.json",
                        pc->api_url, pc->account_sid);
    cred = xasprintf("%s:%s", pc->account_sid, pc->auth_token);
    b64 = crypto_base64_encode(cred, strlen(cred));
    tw->authorization = xasprintf("Basic %s", b64);
    /* the credentials are secret: do not leave them in freed memory */
    memset(cred, 0, strlen(cred));
    free(cred);
    free(b64);
    return tw;
}

static void twilio_free(void *state)
{
    struct twilio *tw = state;

    if (!tw)
        return;
    free(tw->url);
    free(tw->authorization);
    free(tw);
}

static int twilio_build(void *state, const struct sms_part *part,
                        const char *status_url, struct sms_request *out,
                        struct error *err)
{
    struct twilio *tw = state;
    struct strbuf b;

    if (part->n_media > MSG_MAX_MEDIA) {
        error_set(err, COND_NOT_ACCEPTABLE, false,
                  "at most %d attachments per message", MSG_MAX_MEDIA);
        return -1;
    }
    sb_init(&b);
    http_form_add(&b, "To", part->to);
    http_form_add(&b, "From", part->from);
    if (part->body && *part->body)
        http_form_add(&b, "Body", part->body);
    for (size_t i = 0; i < part->n_media; i++)
        http_form_add(&b, "MediaUrl", part->media[i]);
    if (status_url)
        http_form_add(&b, "StatusCallback", status_url);
    out->url = xstrdup(tw->url);
    out->body_len = b.len;
    out->body = sb_steal(&b);
    out->content_type = "application/x-www-form-urlencoded";
    out->authorization = xstrdup(tw->authorization);
    return 0;
}

/* ---- responses ---------------------------------------------------------*/

/* Twilio error codes with a reason of our own (facts §1.2, §1.4). */
static void map_code(long code, const char *message, struct error *err)
{
    char m[120];

    sms_clean_text(m, sizeof(m), message && *message ? message : "");
    switch (code) {
    case 21211: /* invalid To */
    case 21614: /* not a mobile number */
        error_set(err, COND_ITEM_NOT_FOUND, false,
                  "invalid number: %s (Twilio error %ld)",
                  *m ? m : "the provider does not know this number", code);
        return;
    case 21610:
        error_set(err, COND_NOT_ACCEPTABLE, false,
                  "recipient has opted out (STOP); they must text START "
                  "before they can receive messages again");
        return;
    case 21612:
        error_set(err, COND_NOT_ACCEPTABLE, false,
                  "the provider cannot route messages to this number "
                  "(Twilio error 21612)");
        return;
    case 21408:
        error_set(err, COND_NOT_ACCEPTABLE, false,
                  "sending to this country is not enabled for this gateway "
                  "(Twilio error 21408)");
        return;
    case 30007:
        error_set(err, COND_NOT_ACCEPTABLE, false,
                  "message blocked by carrier filtering (Twilio error "
                  "30007)");
        return;
    case 30034:
        error_set(err, COND_NOT_ACCEPTABLE, false,
                  "message blocked: the sending number is not registered "
                  "for A2P 10DLC (Twilio error 30034)");
        return;
    case 20003:
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "provider authentication failed: check account_sid/"
                  "auth_token");
        return;
    default:
        break;
    }
    if (*m)
        error_set(err, COND_NOT_ACCEPTABLE, false,
                  "the provider refused the message: %s (Twilio error %ld)", m,
                  code);
    else
        error_set(err, COND_NOT_ACCEPTABLE, false,
                  "the provider refused the message (Twilio error %ld)", code);
}

/* Past the JSON string at p ('"'); NULL when it does not end. */
static const char *skip_string(const char *p, const char *end, bool *escaped)
{
    for (p++; p < end; p++) {
        if (*p == '\\') {
            *escaped = true;
            p++;
        } else if (*p == '"') {
            return p + 1;
        }
    }
    return NULL;
}

/*
 * The top-level "sid" of a successful answer without building a document
 * (jansson's tree for Twilio's ~700-byte message resource cost more than
 * the rest of a send): walks the top-level members, skipping nested
 * values by depth. Returns the sid owned, or NULL when the answer is not
 * the simple shape expected (the caller then asks jansson).
 */
static char *scan_sid(const char *p, size_t len)
{
    const char *end = p + len;
    int depth = 0;
    bool want_key = true, is_sid = false;

    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
        p++;
    if (p >= end || *p != '{')
        return NULL;
    for (p++; p < end; p++) {
        char c = *p;
        if (c == '"') {
            bool esc = false;
            const char *q = skip_string(p, end, &esc);
            if (!q)
                return NULL;
            if (depth == 0 && want_key) {
                is_sid = !esc && q - p == 5 && memcmp(p + 1, "sid", 3) == 0;
            } else if (depth == 0 && is_sid) {
                if (esc || q - p < 3)
                    return NULL;
                return xstrndup(p + 1, (size_t)(q - p - 2));
            }
            p = q - 1;
        } else if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            if (depth-- == 0)
                return NULL;
        } else if (depth == 0 && c == ':') {
            want_key = false;
        } else if (depth == 0 && c == ',') {
            want_key = true;
            is_sid = false;
        }
    }
    return NULL;
}

static int twilio_response(void *state, const struct http_response *resp,
                           int64_t now, char **provider_id, struct error *err)
{
    struct twilio *tw = state;
    json_t *doc;
    const char *message = NULL;
    long code = 0;
    int rc = -1;

    if (resp->status >= 200 && resp->status < 300 && resp->body) {
        char *sid = scan_sid(resp->body, resp->body_len);
        if (sid) {
            *provider_id = sid;
            return 0;
        }
    }
    doc = json_loadb(resp->body, resp->body_len, 0, NULL);
    if (doc && json_is_object(doc)) {
        json_t *c = json_object_get(doc, "code");
        message = json_string_value(json_object_get(doc, "message"));
        if (json_is_integer(c))
            code = (long)json_integer_value(c);
        else if (json_is_string(c))
            code = strtol(json_string_value(c), NULL, 10);
    }
    if (resp->status >= 200 && resp->status < 300) {
        const char *sid =
            doc ? json_string_value(json_object_get(doc, "sid")) : NULL;
        if (sid && *sid)
            *provider_id = xstrdup(sid);
        else
            log_warn(tw ? tw->module : "twilio",
                     "twilio: HTTP %d without a message sid; no delivery "
                     "receipt will match",
                     resp->status);
        rc = 0;
    } else if (resp->status == 429 || code == 20429 || resp->status >= 500) {
        error_set(err, COND_REMOTE_SERVER_TIMEOUT, true,
                  "the SMS provider is %s (HTTP %d); will retry",
                  resp->status == 429 || code == 20429 ? "throttling us"
                                                       : "unavailable",
                  resp->status);
        err->retry_after_s = sms_retry_after(resp->retry_after, now);
    } else if (resp->status == 401 || code == 20003) {
        map_code(20003, message, err);
        log_err(tw ? tw->module : "twilio",
                "twilio: authentication failed (HTTP %d): check "
                "provider.account_sid and provider.auth_token",
                resp->status);
    } else if (resp->status >= 400) {
        map_code(code ? code : resp->status, message, err);
    } else {
        error_set(err, COND_REMOTE_SERVER_TIMEOUT, true,
                  "unexpected answer from the SMS provider (HTTP %d); will "
                  "retry",
                  resp->status);
    }
    json_decref(doc);
    return rc;
}

/* ---- signatures ----------------------------------------------------------*/

struct kv {
    const char *k, *v;
};

static int kv_cmp(const void *a, const void *b)
{
    const struct kv *x = a, *y = b;
    int c = strcmp(x->k, y->k);
    return c ? c : strcmp(x->v, y->v);
}

/* The sorted, de-duplicated name+value string of a form. */
static void append_params(struct strbuf *b, const struct sms_form *f)
{
    struct kv *v;

    if (f->n == 0)
        return;
    v = xcalloc(f->n, sizeof(*v));
    for (size_t i = 0; i < f->n; i++) {
        v[i].k = f->names[i];
        v[i].v = f->values[i];
    }
    qsort(v, f->n, sizeof(*v), kv_cmp);
    for (size_t i = 0; i < f->n; i++) {
        if (i > 0 && kv_cmp(&v[i - 1], &v[i]) == 0)
            continue;
        sb_puts(b, v[i].k);
        sb_puts(b, v[i].v);
    }
    free(v);
}

/*
 * The URL without its port (strip) or with the scheme's default port
 * added when it has none; NULL when that variant equals the URL itself.
 */
static char *url_port_variant(const char *url, bool strip)
{
    const char *auth = strstr(url, "://"), *end, *host, *colon = NULL;
    size_t scheme_len;
    const char *def;

    if (!auth)
        return NULL;
    scheme_len = (size_t)(auth - url);
    auth += 3;
    end = auth + strcspn(auth, "/?#");
    host = auth;
    for (const char *p = auth; p < end; p++)
        if (*p == '@')
            host = p + 1;
    if (*host == '[') {
        const char *rb = memchr(host, ']', (size_t)(end - host));
        if (rb && rb + 1 < end && rb[1] == ':')
            colon = rb + 1;
    } else {
        for (const char *p = host; p < end; p++)
            if (*p == ':')
                colon = p;
    }
    if (strip) {
        if (!colon)
            return NULL;
        return xasprintf("%.*s%s", (int)(colon - url), url, end);
    }
    if (colon)
        return NULL;
    if (scheme_len == 5 && strncasecmp(url, "https", 5) == 0)
        def = ":443";
    else if (scheme_len == 4 && strncasecmp(url, "http", 4) == 0)
        def = ":80";
    else
        return NULL;
    return xasprintf("%.*s%s%s", (int)(end - url), url, def, end);
}

static bool sig_matches(const char *token, const char *url, const char *params,
                        const char *sig)
{
    unsigned char mac[CRYPTO_MAX_DIGEST];
    struct strbuf b;
    size_t n;
    char *b64;
    bool ok;

    sb_init(&b);
    sb_puts(&b, url);
    sb_puts(&b, params);
    n = crypto_hmac(CRYPTO_SHA1, token, strlen(token), b.s, b.len, mac);
    sb_free(&b);
    if (n == 0)
        return false;
    b64 = crypto_base64_encode(mac, n);
    ok = crypto_streq(b64, sig);
    free(b64);
    return ok;
}

/* The value of name in the query part of url, or NULL (owned). */
static char *url_query_param(const char *url, const char *name)
{
    const char *q = strchr(url, '?');
    struct sms_form f;
    char *v = NULL;

    if (!q)
        return NULL;
    q++;
    if (sms_form_parse(q, strcspn(q, "#"), &f) < 0)
        return NULL;
    if (sms_form_get(&f, name))
        v = xstrdup(sms_form_get(&f, name));
    sms_form_free(&f);
    return v;
}

static int twilio_verify(void *state, const struct sms_webhook *wh,
                         struct error *err)
{
    const char *token = ((struct twilio *)state)->token;
    const char *sig = wh->header(wh->header_ctx, "X-Twilio-Signature");
    char *body_hash = url_query_param(wh->url, "bodySHA256");
    struct strbuf params;
    bool ok = false;

    if (!sig || !*sig) {
        free(body_hash);
        error_set(err, COND_FORBIDDEN, false, "no X-Twilio-Signature header");
        return -1;
    }
    sb_init(&params);
    if (body_hash) {
        unsigned char d[CRYPTO_MAX_DIGEST];
        char hex[2 * CRYPTO_MAX_DIGEST + 1];
        size_t n = crypto_digest(CRYPTO_SHA256, wh->body, wh->body_len, d);
        crypto_hex(d, n, hex);
        if (!crypto_streq(hex, body_hash)) {
            free(body_hash);
            sb_free(&params);
            error_set(err, COND_FORBIDDEN, false,
                      "bodySHA256 does not match the body");
            return -1;
        }
    } else if (wh->method && strcmp(wh->method, "POST") == 0) {
        struct sms_form f;
        if (sms_form_parse(wh->body, wh->body_len, &f) < 0) {
            sb_free(&params);
            error_set(err, COND_FORBIDDEN, false,
                      "the body is not a valid form");
            return -1;
        }
        append_params(&params, &f);
        sms_form_free(&f);
    }
    free(body_hash);
    sb_puts(&params, ""); /* params.s is never NULL below */

    ok = sig_matches(token, wh->url, params.s, sig);
    for (int strip = 0; strip < 2 && !ok; strip++) {
        char *u = url_port_variant(wh->url, strip == 0);
        if (u)
            ok = sig_matches(token, u, params.s, sig);
        free(u);
    }
    sb_free(&params);
    if (!ok) {
        error_set(err, COND_FORBIDDEN, false,
                  "X-Twilio-Signature does not match");
        return -1;
    }
    return 0;
}

/* ---- webhooks --------------------------------------------------------*/

/* Webhook parameters: the form body for POST, the query for GET. */
static int load_params(const struct sms_webhook *wh, struct sms_form *f,
                       struct error *err)
{
    int rc;

    if (wh->method && strcmp(wh->method, "GET") == 0)
        rc = wh->query ? sms_form_parse(wh->query, strlen(wh->query), f)
                       : sms_form_parse("", 0, f);
    else
        rc = sms_form_parse(wh->body, wh->body_len, f);
    if (rc < 0)
        error_set(err, COND_BAD_REQUEST, false,
                  "the body is not application/x-www-form-urlencoded");
    return rc;
}

static const char *first_of(const struct sms_form *f, const char *a,
                            const char *b, const char *c)
{
    const char *v = sms_form_get(f, a);
    if ((!v || !*v) && b)
        v = sms_form_get(f, b);
    if ((!v || !*v) && c)
        v = sms_form_get(f, c);
    return v && *v ? v : NULL;
}

/* Shared with the sandbox's unsigned webhooks (sms.c); state unused. */
static int twilio_parse_inbound(void *state, const struct sms_webhook *wh,
                                struct sms_inbound *out, struct error *err)
{
    struct sms_form f;
    const char *from, *to, *sid, *body, *nm;
    long n_media = -1;

    (void)state;
    memset(out, 0, sizeof(*out));
    if (load_params(wh, &f, err) < 0)
        return SMS_PARSE_MALFORMED;
    from = sms_form_get(&f, "From");
    to = sms_form_get(&f, "To");
    sid = first_of(&f, "MessageSid", "SmsMessageSid", "SmsSid");
    if (!from || !*from || !to || !*to || !sid) {
        if (sid && !sms_form_get(&f, "Body") &&
            first_of(&f, "MessageStatus", "SmsStatus", NULL)) {
            sms_form_free(&f);
            return SMS_PARSE_OTHER;
        }
        error_set(err, COND_BAD_REQUEST, false,
                  "an inbound message needs From, To and MessageSid");
        sms_form_free(&f);
        return SMS_PARSE_MALFORMED;
    }
    out->msg.from_addr = xstrdup(from);
    out->msg.to_addr = xstrdup(to);
    out->msg.provider_id = xstrdup(sid);
    body = sms_form_get(&f, "Body");
    if (body && *body)
        out->msg.body = xstrdup(body);
    nm = sms_form_get(&f, "NumMedia");
    if (nm && *nm) {
        char *end;
        n_media = strtol(nm, &end, 10);
        if (*end || n_media < 0)
            n_media = -1;
    }
    for (long i = 0; out->msg.n_media < INMSG_MAX_MEDIA; i++) {
        char name[32];
        const char *u;
        if (n_media >= 0 && i >= n_media)
            break;
        snprintf(name, sizeof(name), "MediaUrl%ld", i);
        u = sms_form_get(&f, name);
        if (!u)
            break;
        if (*u)
            out->msg.media[out->msg.n_media++] = xstrdup(u);
    }
    sms_form_free(&f);
    if (!out->msg.body && out->msg.n_media == 0) {
        /* an empty SMS is still a message; deliver it as such */
        out->msg.body = xstrdup("");
    }
    return SMS_PARSE_OK;
}

/* A readable reason for delivery error codes (facts §1.2). */
static const char *delivery_reason(long code)
{
    switch (code) {
    case 30003:
        return "unreachable destination handset";
    case 30004:
        return "message blocked by the recipient or carrier";
    case 30005:
        return "unknown destination handset";
    case 30006:
        return "landline or unreachable carrier";
    case 30007:
        return "message blocked by carrier filtering";
    case 30008:
        return "unknown error from the carrier";
    case 30034:
        return "sending number not registered for A2P 10DLC";
    case 21610:
        return "recipient has opted out (STOP)";
    default:
        return NULL;
    }
}

static int twilio_parse_status(void *state, const struct sms_webhook *wh,
                               struct sms_status *out, struct error *err)
{
    struct sms_form f;
    const char *sid, *st, *code_s, *msg;
    long code = 0;
    char m[100];

    (void)state;
    memset(out, 0, sizeof(*out));
    if (load_params(wh, &f, err) < 0)
        return SMS_PARSE_MALFORMED;
    sid = first_of(&f, "MessageSid", "SmsSid", NULL);
    st = first_of(&f, "MessageStatus", "SmsStatus", NULL);
    if (!sid || !st) {
        error_set(err, COND_BAD_REQUEST, false,
                  "a status callback needs MessageSid and MessageStatus");
        sms_form_free(&f);
        return SMS_PARSE_MALFORMED;
    }
    if (strcmp(st, "received") == 0 && sms_form_get(&f, "Body")) {
        sms_form_free(&f);
        return SMS_PARSE_OTHER;
    }
    out->provider_id = xstrdup(sid);
    code_s = sms_form_get(&f, "ErrorCode");
    if (code_s && *code_s)
        code = strtol(code_s, NULL, 10);
    msg = sms_form_get(&f, "ErrorMessage");
    sms_clean_text(m, sizeof(m), msg ? msg : "");
    if (strcmp(st, "delivered") == 0 || strcmp(st, "read") == 0) {
        out->state = DELIVERY_DELIVERED;
    } else if (strcmp(st, "failed") == 0 || strcmp(st, "undelivered") == 0 ||
               strcmp(st, "canceled") == 0) {
        const char *why = *m ? m : delivery_reason(code);
        out->state = DELIVERY_FAILED;
        if (code)
            error_set(&out->err,
                      code == 21610 ? COND_NOT_ACCEPTABLE
                                    : COND_RECIPIENT_UNAVAILABLE,
                      false,
                      "the SMS was not delivered (%s): %s (Twilio "
                      "error %ld)",
                      st, why ? why : "no reason given", code);
        else
            error_set(&out->err, COND_RECIPIENT_UNAVAILABLE, false,
                      "the SMS was not delivered (%s)%s%s", st, *m ? ": " : "",
                      m);
    } else {
        out->state = DELIVERY_SENT;
    }
    sms_form_free(&f);
    return SMS_PARSE_OK;
}

const struct sms_provider_ops sms_provider_twilio = {
    .name = "twilio",
    .max_chars = SMS_MAX_CHARS,
    .init = twilio_init,
    .build = twilio_build,
    .response = twilio_response,
    .accept_get = false,
    .verify = twilio_verify,
    .parse_inbound = twilio_parse_inbound,
    .parse_status = twilio_parse_status,
    .inbound_status = 200,
    .inbound_ctype = "text/xml",
    .inbound_body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>"
                    "<Response></Response>",
    .free = twilio_free,
};
