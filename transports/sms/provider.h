/*
 * provider: the interface between the SMS core (sms.c) and one SMS
 * provider adapter (sandbox, twilio, telnyx, vonage). One const
 * sms_provider_ops per provider, found by conf->provider.name. The core
 * validates addresses, applies policy and splits long bodies; a provider
 * only turns one part into one API request and reports how it went, and
 * checks and decodes the webhooks the provider sends back.
 *
 * Sending, two ways:
 *  - an HTTP provider (twilio, telnyx, vonage) sets build and response,
 *    both pure: build turns a part into a request, response maps the HTTP
 *    answer to a provider message id or an error. sms.c runs the request
 *    on host->http_client with provider.timeout, maps transport failures
 *    (timeout, refused, reset) to temporary errors, and calls done once,
 *    never from inside send.
 *  - a provider that sends otherwise (sandbox) sets send, with the
 *    transport's contract: it returns 0 and later calls done exactly once,
 *    never from inside send(), or returns -1 with err filled and never
 *    calls done.
 *
 * Errors: temporary (HTTP 5xx, 429, timeouts, throttling: the queue
 * retries, honouring err->retry_after_s when the provider sent a
 * Retry-After) or permanent with a sentence the user can act on and a
 * condition: COND_ITEM_NOT_FOUND for an invalid number, COND_NOT_ACCEPTABLE
 * for opt-outs, carrier filtering and other refusals, and
 * COND_INTERNAL_SERVER_ERROR for the gateway's own faults (bad
 * credentials), which the provider also logs at error level.
 *
 * Webhooks (POST /sms/<jid>/inbound and /sms/<jid>/status, routed by
 * sms.c): verify first (failure -> 403, nothing changes), then
 * parse_inbound or parse_status. A provider whose webhooks can carry
 * either kind (Telnyx posts every event to one URL) answers
 * SMS_PARSE_OTHER for the kind it did not get, and sms.c tries the other
 * parser. The sandbox has no webhook functions: sms.c accepts
 * Twilio-shaped form webhooks for it without any signature, so tests and
 * demos can drive inbound SMS over HTTP (never use sandbox in production).
 */
#ifndef POSTERN_SMS_PROVIDER_H
#define POSTERN_SMS_PROVIDER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http_client.h"
#include "queue.h"
#include "transport.h"
#include "util.h"

/* One provider request. All pointers borrowed for the duration of send(). */
struct sms_part {
    const char *gw;           /* gateway JID */
    const char *from;         /* E.164, the user's claimed number */
    const char *to;           /* E.164 */
    const char *body;         /* NULL when media only */
    const char *const *media; /* URLs; only the first part carries media */
    size_t n_media;
    unsigned index; /* 0-based part number ... */
    unsigned count; /* ... of count parts of one message */
};

/* An HTTP request built by a provider; free with sms_request_free. */
struct sms_request {
    char *url;  /* api_url + the API path */
    char *body; /* form or JSON */
    size_t body_len;
    const char *content_type; /* static string */
    char *authorization;      /* the whole Authorization header value */
};
void sms_request_free(struct sms_request *r);

/* Reads one request header (case-insensitive); NULL when absent. */
typedef const char *sms_header_fn(const void *ctx, const char *name);

/* One webhook request, all borrowed. */
struct sms_webhook {
    const char *method; /* "POST", "GET" */
    /*
     * The URL the provider called, as it saw it: http.public_url followed
     * by the request's path and query exactly as received.
     */
    const char *url;
    const char *query;        /* raw query string (after '?'), or NULL */
    const char *content_type; /* or NULL */
    const char *body;         /* raw body, NUL-terminated, never NULL */
    size_t body_len;
    sms_header_fn *header;
    const void *header_ctx;
    int64_t now; /* wall clock, Unix seconds (tests inject it) */
};

/* An inbound message decoded from a webhook. */
struct sms_inbound {
    struct inmsg msg; /* from_addr/to_addr in E.164; provider_id set */
    /*
     * One part of a concatenated SMS the provider did not reassemble
     * (Vonage): concat_ref names the set (unique per sender and receiver),
     * concat_part counts from 1 up to concat_total. NULL/0 otherwise.
     */
    char *concat_ref;
    unsigned concat_part;
    unsigned concat_total;
};
/* Frees the fields (not s itself) and zeroes them. NULL-safe. */
void sms_inbound_free(struct sms_inbound *s);

/* A delivery report decoded from a status webhook. */
struct sms_status {
    char *provider_id; /* owned; NULL: an event with nothing to report */
    enum delivery_state state;
    struct error err; /* DELIVERY_FAILED: condition and reason */
};
void sms_status_free(struct sms_status *s);

enum sms_parse_result {
    SMS_PARSE_MALFORMED = -1, /* err says why (answered 400) */
    SMS_PARSE_OK = 0,
    SMS_PARSE_OTHER = 1, /* a valid webhook of the other kind */
};

struct sms_provider_ops {
    const char *name; /* conf->provider.name */
    size_t max_chars; /* body limit per request, in Unicode code points */
    /*
     * Checks t->conf->provider (required keys, decodable keys) and returns
     * the provider's state, or NULL with err filled. Contacts nothing and
     * creates no files (postern --check may configure). t is borrowed and
     * outlives the state.
     */
    void *(*init)(struct transport *t, struct error *err);
    /* Optional: opens files. */
    int (*start)(void *state, struct error *err);
    /* Optional: a provider that does not send over HTTP. */
    int (*send)(void *state, const struct sms_part *part, send_done_fn *done,
                void *arg, struct error *err);
    /*
     * HTTP providers (pure). status_url is where delivery reports should
     * go (NULL when http.public_url is unset: ask for none).
     */
    int (*build)(void *state, const struct sms_part *part,
                 const char *status_url, struct sms_request *out,
                 struct error *err);
    /*
     * Maps a response: 0 with *provider_id (owned, may stay NULL) or -1
     * with err. now is the wall clock for an HTTP-date Retry-After.
     */
    int (*response)(void *state, const struct http_response *resp, int64_t now,
                    char **provider_id, struct error *err);
    /* Webhooks; all NULL for the sandbox. */
    bool accept_get; /* the provider may be set to send GET webhooks */
    /* 0 when authentic, else -1 with a reason in err (for the log). */
    int (*verify)(void *state, const struct sms_webhook *wh, struct error *err);
    int (*parse_inbound)(void *state, const struct sms_webhook *wh,
                         struct sms_inbound *out, struct error *err);
    int (*parse_status)(void *state, const struct sms_webhook *wh,
                        struct sms_status *out, struct error *err);
    /* The answer to an inbound webhook once persisted. */
    int inbound_status;        /* e.g. 200 or 204 */
    const char *inbound_ctype; /* NULL with no body */
    const char *inbound_body;  /* NULL with no body */
    /*
     * NULL-safe, never fails. Completions still pending are dropped without
     * calling their done (the core drains before it frees).
     */
    void (*free)(void *state);
};

extern const struct sms_provider_ops sms_provider_sandbox;
extern const struct sms_provider_ops sms_provider_twilio;
extern const struct sms_provider_ops sms_provider_telnyx;
extern const struct sms_provider_ops sms_provider_vonage;

/* ---- helpers shared by the adapters (sms.c) ---------------------------*/

/* application/x-www-form-urlencoded, decoded ('+' is a space). */
struct sms_form {
    char **names;
    char **values;
    size_t n;
};
/*
 * Decodes s (len bytes) into out, keeping order and repeated names.
 * Returns -1 (out empty) on a malformed escape or an embedded NUL.
 */
int sms_form_parse(const char *s, size_t len, struct sms_form *out);
/* The first value of name, or NULL. */
const char *sms_form_get(const struct sms_form *f, const char *name);
void sms_form_free(struct sms_form *f);

/*
 * Seconds from an HTTP Retry-After value (delta-seconds or an HTTP-date,
 * relative to now), capped at one day; 0 when absent or unparsable.
 */
unsigned sms_retry_after(const char *value, int64_t now);

/* Copies at most size-1 bytes of s, replacing control characters. */
void sms_clean_text(char *out, size_t size, const char *s);

#endif
