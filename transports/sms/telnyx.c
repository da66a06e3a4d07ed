/*
 * telnyx: the Telnyx Messaging API v2 adapter (protocol-facts §2.1).
 *
 * Send: POST {api_url}/v2/messages, Authorization: Bearer api_key, a JSON
 * body {from, to, text, media_urls, webhook_url, messaging_profile_id}
 * (the optional ones only when set). 2xx -> data.id; 429 and 5xx ->
 * temporary (Retry-After honoured); 401/403 (10009) -> bad credentials;
 * other 4xx -> permanent with errors[0], 40310 as an invalid number.
 *
 * Webhooks are JSON events signed with Ed25519: telnyx-signature-ed25519
 * is base64 of the signature of "<telnyx-timestamp>|<raw body>" under the
 * account's public key (provider.public_key, base64 of 32 bytes). A
 * timestamp more than 300 s away from our clock is refused (replay).
 * Telnyx posts every event of a message to one URL, so both parsers look
 * at data.event_type: message.received is an inbound message,
 * message.sent/message.finalized a delivery report (to[0].status
 * delivered, delivery_failed/sending_failed with errors[]); anything else
 * is answered and ignored.
 *
 * Pure apart from init/free: no I/O; never logs the key or a body.
 */
#include "provider.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "config.h"
#include "crypto.h"
#include "log.h"
#include "sms.h"

#define TELNYX_TOLERANCE_S 300

struct telnyx {
    struct transport *t;
    char *url;
    char *authorization;
    const char *profile; /* messaging_profile_id or NULL */
    unsigned char key[CRYPTO_ED25519_KEY];
    const char *module;
};

static void *telnyx_init(struct transport *t, struct error *err)
{
    const struct provider_conf *pc = &t->conf->provider;
    struct telnyx *tx;
    unsigned char key[CRYPTO_ED25519_KEY + 1];

    if (!pc->api_key || !*pc->api_key) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "provider.api_key: missing (telnyx needs it)");
        return NULL;
    }
    if (!pc->public_key ||
        crypto_base64_decode(pc->public_key, key, sizeof(key)) !=
            CRYPTO_ED25519_KEY) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "provider.public_key: not a base64 Ed25519 public key "
                  "(32 bytes)");
        return NULL;
    }
    if (!pc->api_url || !*pc->api_url) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "provider.api_url: missing");
        return NULL;
    }
    tx = xcalloc(1, sizeof(*tx));
    tx->t = t;
    tx->module = t->module;
    memcpy(tx->key, key, CRYPTO_ED25519_KEY);
    tx->url = xasprintf("%s/v2/messages", pc->api_url);
    tx->authorization = xasprintf("Bearer %s", pc->api_key);
    if (pc->messaging_profile_id && *pc->messaging_profile_id)
        tx->profile = pc->messaging_profile_id;
    return tx;
}

static void telnyx_free(void *state)
{
    struct telnyx *tx = state;

    if (!tx)
        return;
    free(tx->url);
    if (tx->authorization) {
        memset(tx->authorization, 0, strlen(tx->authorization));
        free(tx->authorization);
    }
    free(tx);
}

static int telnyx_build(void *state, const struct sms_part *part,
                        const char *status_url, struct sms_request *out,
                        struct error *err)
{
    struct telnyx *tx = state;
    json_t *o = json_object();
    char *s;

    json_object_set_new(o, "from", json_string(part->from));
    json_object_set_new(o, "to", json_string(part->to));
    if (part->body && *part->body) {
        json_t *text = json_string(part->body);
        if (!text) {
            json_decref(o);
            error_set(err, COND_BAD_REQUEST, false,
                      "the message is not valid UTF-8");
            return -1;
        }
        json_object_set_new(o, "text", text);
    }
    if (part->n_media > 0) {
        json_t *a = json_array();
        for (size_t i = 0; i < part->n_media; i++) {
            json_t *u = json_string(part->media[i]);
            if (u)
                json_array_append_new(a, u);
        }
        json_object_set_new(o, "media_urls", a);
    }
    if (status_url)
        json_object_set_new(o, "webhook_url", json_string(status_url));
    if (tx->profile)
        json_object_set_new(o, "messaging_profile_id",
                            json_string(tx->profile));
    s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!s) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "cannot encode the request");
        return -1;
    }
    out->url = xstrdup(tx->url);
    out->body = s;
    out->body_len = strlen(s);
    out->content_type = "application/json";
    out->authorization = xstrdup(tx->authorization);
    return 0;
}

/* ---- responses ---------------------------------------------------------*/

/*
 * errors[0] of a Telnyx error body: code, title, detail (NULL when
 * absent). A numeric code is written into buf and *code points there.
 */
static void first_error(json_t *doc, char buf[24], const char **code,
                        const char **title, const char **detail)
{
    json_t *e = json_array_get(json_object_get(doc, "errors"), 0);
    json_t *c = json_object_get(e, "code");

    *code = json_string_value(c);
    *title = json_string_value(json_object_get(e, "title"));
    *detail = json_string_value(json_object_get(e, "detail"));
    if (json_is_integer(c)) {
        snprintf(buf, 24, "%lld", (long long)json_integer_value(c));
        *code = buf;
    }
}

static int telnyx_response(void *state, const struct http_response *resp,
                           int64_t now, char **provider_id, struct error *err)
{
    struct telnyx *tx = state;
    json_t *doc = json_loadb(resp->body, resp->body_len, 0, NULL);
    const char *code = NULL, *title = NULL, *detail = NULL;
    char why[120], buf[24];
    int rc = -1;

    if (doc)
        first_error(doc, buf, &code, &title, &detail);
    sms_clean_text(why, sizeof(why), detail ? detail : (title ? title : ""));
    if (resp->status >= 200 && resp->status < 300) {
        const char *id = json_string_value(
            json_object_get(json_object_get(doc, "data"), "id"));
        if (id && *id)
            *provider_id = xstrdup(id);
        else
            log_warn(tx ? tx->module : "telnyx",
                     "telnyx: HTTP %d without data.id; no delivery receipt "
                     "will match",
                     resp->status);
        rc = 0;
    } else if (resp->status == 429 || resp->status >= 500 ||
               (code && strcmp(code, "10011") == 0)) {
        error_set(err, COND_REMOTE_SERVER_TIMEOUT, true,
                  "the SMS provider is %s (HTTP %d); will retry",
                  resp->status >= 500 ? "unavailable" : "throttling us",
                  resp->status);
        err->retry_after_s = sms_retry_after(resp->retry_after, now);
    } else if (resp->status == 401 || resp->status == 403 ||
               (code && strcmp(code, "10009") == 0)) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "provider authentication failed: check api_key");
        log_err(tx ? tx->module : "telnyx",
                "telnyx: authentication failed (HTTP %d): check "
                "provider.api_key",
                resp->status);
    } else if (resp->status >= 400) {
        if (code && strcmp(code, "40310") == 0)
            error_set(err, COND_ITEM_NOT_FOUND, false,
                      "invalid number: %s (Telnyx error 40310)",
                      *why ? why : "invalid 'to' address");
        else if (code && strcmp(code, "40300") == 0)
            error_set(err, COND_NOT_ACCEPTABLE, false,
                      "recipient has opted out (STOP)");
        else
            error_set(err, COND_NOT_ACCEPTABLE, false,
                      "the provider refused the message: %s (Telnyx %s%s)",
                      *why ? why : "no reason given", code ? "error " : "HTTP",
                      code ? code : "");
        if (!code && !*why)
            error_set(err, COND_NOT_ACCEPTABLE, false,
                      "the provider refused the message (HTTP %d)",
                      resp->status);
    } else {
        error_set(err, COND_REMOTE_SERVER_TIMEOUT, true,
                  "unexpected answer from the SMS provider (HTTP %d); will "
                  "retry",
                  resp->status);
    }
    json_decref(doc);
    return rc;
}

/* ---- webhooks ------------------------------------------------------*/

static int telnyx_verify(void *state, const struct sms_webhook *wh,
                         struct error *err)
{
    struct telnyx *tx = state;
    const char *sig_b64 =
        wh->header(wh->header_ctx, "telnyx-signature-ed25519");
    const char *ts = wh->header(wh->header_ctx, "telnyx-timestamp");
    unsigned char sig[CRYPTO_ED25519_SIG + 1];
    long long t = 0;
    struct strbuf msg;
    bool ok;

    if (!sig_b64 || !*sig_b64 || !ts || !*ts) {
        error_set(err, COND_FORBIDDEN, false,
                  "no telnyx-signature-ed25519/telnyx-timestamp header");
        return -1;
    }
    for (const char *p = ts; *p; p++) {
        if (*p < '0' || *p > '9' || t > 100000000000LL) {
            error_set(err, COND_FORBIDDEN, false,
                      "telnyx-timestamp is not a number");
            return -1;
        }
        t = t * 10 + (*p - '0');
    }
    if (t > wh->now + TELNYX_TOLERANCE_S || t < wh->now - TELNYX_TOLERANCE_S) {
        error_set(err, COND_FORBIDDEN, false,
                  "telnyx-timestamp is %lld s away from our clock (limit "
                  "%d s)",
                  (long long)(t > wh->now ? t - wh->now : wh->now - t),
                  TELNYX_TOLERANCE_S);
        return -1;
    }
    if (crypto_base64_decode(sig_b64, sig, sizeof(sig)) != CRYPTO_ED25519_SIG) {
        error_set(err, COND_FORBIDDEN, false,
                  "telnyx-signature-ed25519 is not 64 bytes of base64");
        return -1;
    }
    sb_init(&msg);
    sb_puts(&msg, ts);
    sb_putc(&msg, '|');
    sb_append(&msg, wh->body, wh->body_len);
    ok = crypto_ed25519_verify(tx->key, msg.s, msg.len, sig);
    sb_free(&msg);
    if (!ok) {
        error_set(err, COND_FORBIDDEN, false,
                  "telnyx-signature-ed25519 does not verify");
        return -1;
    }
    return 0;
}

/* data.event_type and data.payload of an event, or -1 (err filled). */
static int load_event(const struct sms_webhook *wh, json_t **doc,
                      const char **type, json_t **payload, struct error *err)
{
    json_t *data;

    *doc = json_loadb(wh->body, wh->body_len, 0, NULL);
    data = json_object_get(*doc, "data");
    *type = json_string_value(json_object_get(data, "event_type"));
    *payload = json_object_get(data, "payload");
    if (!*type || !json_is_object(*payload)) {
        json_decref(*doc);
        *doc = NULL;
        error_set(err, COND_BAD_REQUEST, false,
                  "not a Telnyx event (data.event_type, data.payload)");
        return -1;
    }
    return 0;
}

/* "to" is an array of {phone_number,status}; older events had a string. */
static json_t *first_to(json_t *payload)
{
    json_t *to = json_object_get(payload, "to");
    return json_is_array(to) ? json_array_get(to, 0) : to;
}

static int telnyx_parse_inbound(void *state, const struct sms_webhook *wh,
                                struct sms_inbound *out, struct error *err)
{
    json_t *doc, *payload, *to, *media;
    const char *type, *id, *from, *to_num, *text;
    size_t i;

    (void)state;
    memset(out, 0, sizeof(*out));
    if (load_event(wh, &doc, &type, &payload, err) < 0)
        return SMS_PARSE_MALFORMED;
    if (strcmp(type, "message.received") != 0) {
        json_decref(doc);
        return SMS_PARSE_OTHER;
    }
    id = json_string_value(json_object_get(payload, "id"));
    from = json_string_value(
        json_object_get(json_object_get(payload, "from"), "phone_number"));
    to = first_to(payload);
    to_num = json_is_string(to)
                 ? json_string_value(to)
                 : json_string_value(json_object_get(to, "phone_number"));
    text = json_string_value(json_object_get(payload, "text"));
    if (!id || !*id || !from || !*from || !to_num || !*to_num) {
        json_decref(doc);
        error_set(err, COND_BAD_REQUEST, false,
                  "message.received needs payload.id, from.phone_number "
                  "and to[0].phone_number");
        return SMS_PARSE_MALFORMED;
    }
    out->msg.provider_id = xstrdup(id);
    out->msg.from_addr = xstrdup(from);
    out->msg.to_addr = xstrdup(to_num);
    media = json_object_get(payload, "media");
    for (i = 0;
         i < json_array_size(media) && out->msg.n_media < INMSG_MAX_MEDIA;
         i++) {
        const char *u =
            json_string_value(json_object_get(json_array_get(media, i), "url"));
        if (u && *u)
            out->msg.media[out->msg.n_media++] = xstrdup(u);
    }
    if ((text && *text) || out->msg.n_media == 0)
        out->msg.body = xstrdup(text ? text : "");
    json_decref(doc);
    return SMS_PARSE_OK;
}

static int telnyx_parse_status(void *state, const struct sms_webhook *wh,
                               struct sms_status *out, struct error *err)
{
    json_t *doc, *payload, *to;
    const char *type, *id, *st, *code, *title, *detail;
    char why[110], buf[24];

    (void)state;
    memset(out, 0, sizeof(*out));
    if (load_event(wh, &doc, &type, &payload, err) < 0)
        return SMS_PARSE_MALFORMED;
    if (strcmp(type, "message.received") == 0) {
        json_decref(doc);
        return SMS_PARSE_OTHER;
    }
    if (strcmp(type, "message.sent") != 0 &&
        strcmp(type, "message.finalized") != 0) {
        json_decref(doc); /* another event: nothing to report */
        return SMS_PARSE_OK;
    }
    id = json_string_value(json_object_get(payload, "id"));
    to = first_to(payload);
    st = json_string_value(json_object_get(to, "status"));
    if (!id || !*id || !st) {
        json_decref(doc);
        error_set(err, COND_BAD_REQUEST, false,
                  "%s needs payload.id and to[0].status", type);
        return SMS_PARSE_MALFORMED;
    }
    out->provider_id = xstrdup(id);
    if (strcmp(st, "delivered") == 0) {
        out->state = DELIVERY_DELIVERED;
    } else if (strcmp(st, "delivery_failed") == 0 ||
               strcmp(st, "sending_failed") == 0) {
        out->state = DELIVERY_FAILED;
        first_error(payload, buf, &code, &title, &detail);
        if (title && detail)
            snprintf(why, sizeof(why), "%s: %s", title, detail);
        else
            snprintf(why, sizeof(why), "%s",
                     title ? title : (detail ? detail : "no reason given"));
        sms_clean_text(why, sizeof(why), why);
        error_set(&out->err, COND_RECIPIENT_UNAVAILABLE, false,
                  "the SMS was not delivered (%s): %s%s%s%s", st, why,
                  code ? " (Telnyx error " : "", code ? code : "",
                  code ? ")" : "");
    } else {
        out->state = DELIVERY_SENT;
    }
    json_decref(doc);
    return SMS_PARSE_OK;
}

const struct sms_provider_ops sms_provider_telnyx = {
    .name = "telnyx",
    .max_chars = SMS_MAX_CHARS,
    .init = telnyx_init,
    .build = telnyx_build,
    .response = telnyx_response,
    .accept_get = false,
    .verify = telnyx_verify,
    .parse_inbound = telnyx_parse_inbound,
    .parse_status = telnyx_parse_status,
    .inbound_status = 204,
    .free = telnyx_free,
};
