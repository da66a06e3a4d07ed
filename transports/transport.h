/*
 * transport: the interface between the core and a transport (sms, email).
 * One const transport_ops per transport, compiled in and found by name in
 * a static registry (transport_lookup); many configured instances, each a
 * struct transport with its own zeroed priv area. A transport reaches the
 * rest of postern only through its host table, never through globals, so
 * unit tests can hand it fakes.
 *
 * send() contract: returns 0 and later calls done exactly once (never from
 * inside send), or returns -1 with err filled and never calls done. Errors
 * carry temporary (retry: HTTP 429/5xx, SMTP 4xx, timeouts) or permanent
 * (bounce now), which also picks the XMPP error type (wait or cancel).
 */
#ifndef POSTERN_TRANSPORT_H
#define POSTERN_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"
#include "util.h"

#define TRANSPORT_ABI 1u

enum transport_caps {
    TCAP_SEND = 1u << 0,
    TCAP_RECEIVE = 1u << 1,
    TCAP_RECEIPTS = 1u << 2,
    TCAP_WEBHOOK = 1u << 3,
    TCAP_LISTENER = 1u << 4,
    TCAP_MEDIA = 1u << 5,
};

struct event_base;
struct store;
struct queue;
struct http_server;
struct http_client;
struct transport;

/* A provider's report on a message it accepted earlier. */
enum delivery_state {
    DELIVERY_SENT,      /* handed to the carrier: nothing to tell */
    DELIVERY_DELIVERED, /* -> XEP-0184 <received/> */
    DELIVERY_FAILED,    /* undelivered/failed -> error stanza */
};

/* Services the core lends every transport instance (all borrowed). */
struct transport_host {
    struct event_base *base;
    struct store *store;
    struct queue *queue;
    struct http_server *http;        /* NULL when http.listen is "" */
    struct http_client *http_client; /* NULL in tests without HTTP */
    const struct config *config;
    /*
     * A delivery status for provider_id arrived (status webhook). err is
     * the provider's reason for DELIVERY_FAILED, else NULL. The core maps
     * provider_id back to the sender and stanza id and persists what the
     * user must be told; then done runs exactly once (never inside the
     * call) with NULL, or with a temporary error when Redis could not take
     * it -- the webhook then answers 503 so the provider retries. May be
     * NULL in tests.
     */
    void (*delivery)(void *arg, struct transport *t, const char *provider_id,
                     enum delivery_state state, const struct error *err,
                     void (*done)(void *done_arg, const struct error *err),
                     void *done_arg);
    void *delivery_arg;
};

#define MSG_MAX_MEDIA 10

/* An outbound message, all strings borrowed for the duration of send(). */
struct msg {
    const char *gw;        /* gateway JID */
    const char *from_jid;  /* sender's full JID */
    const char *from_addr; /* sender's registered number / address */
    const char *to_jid;    /* contact JID as addressed */
    const char *to_addr;   /* contact's number / address (normalised) */
    const char *id;        /* stanza id, may be NULL */
    const char *body;      /* may be NULL when media only */
    const char *subject;   /* may be NULL */
    const char *thread;    /* may be NULL */
    const char *media[MSG_MAX_MEDIA];
    size_t n_media;
    bool receipt; /* XEP-0184 requested */
};

/*
 * err NULL on success; provider_id may be NULL. A temporary err may carry
 * err->retry_after_s (> 0): the provider asked for that many seconds
 * before the next attempt (HTTP 429/503 Retry-After); the queue should
 * wait at least that long (capped by its own retry_cap_ms).
 */
typedef void send_done_fn(void *arg, const struct error *err,
                          const char *provider_id);

struct transport;

struct transport_ops {
    unsigned abi;               /* TRANSPORT_ABI */
    const char *name;           /* "sms", "email" */
    unsigned caps;              /* enum transport_caps */
    size_t priv_size;           /* core allocates t->priv, zeroed */
    const char *identity_type;  /* disco gateway type: "sms", "smtp" */
    const char *contact_type;   /* disco type of contact JIDs: "sms", ... */
    const char *reg_field;      /* XEP-0077 legacy field: "phone", "email" */
    const char *reg_label;      /* form label */
    const char *instructions;   /* XEP-0077 instructions */
    const char *gateway_desc;   /* jabber:iq:gateway <desc/> */
    const char *gateway_prompt; /* jabber:iq:gateway <prompt/> */

    /* Checks t->conf beyond what config.c checked; sets up priv. */
    int (*configure)(struct transport *t, struct error *err);
    /* Registers webhooks / listeners; may start timers. */
    int (*start)(struct transport *t, struct error *err);
    /* Contact JID node -> address (pure). COND_JID_MALFORMED on failure. */
    int (*addr_parse)(const struct transport *t, const char *node, char *out,
                      size_t size, struct error *err);
    /* Address -> contact JID node (pure). */
    int (*addr_to_node)(const struct transport *t, const char *addr, char *out,
                        size_t size);
    /* jabber:iq:gateway: human-typed -> address. COND_NOT_ACCEPTABLE. */
    int (*addr_from_human)(const struct transport *t, const char *typed,
                           char *out, size_t size, struct error *err);
    /*
     * Registration value (typed by the user) -> address a user may claim.
     * COND_NOT_ACCEPTABLE with a reason when malformed or not claimable.
     */
    int (*claim)(const struct transport *t, const char *typed, char *out,
                 size_t size, struct error *err);
    int (*send)(struct transport *t, const struct msg *m, send_done_fn *done,
                void *arg, struct error *err);
    /* Sends in flight (for draining at shutdown). */
    size_t (*inflight)(const struct transport *t);
    /* Stop accepting work; in-flight sends still complete. */
    void (*stop)(struct transport *t);
    /* Frees priv contents; never fails. */
    void (*destroy)(struct transport *t);
    /*
     * Optional (NULL = 1): what m costs in the transport's billing units
     * (SMS segments, transports/sms/segments.h), for limits.max_segments
     * and the rate limits. Pure.
     */
    unsigned (*segments)(const struct transport *t, const struct msg *m);
};

struct transport {
    const struct transport_ops *ops;
    struct gateway_conf *conf; /* borrowed, owned by the config */
    const struct transport_host *host;
    void *priv;
    char module[300]; /* log prefix: "sms[sms.example.org]" */
};

/* Static registry lookup; NULL when unknown. */
const struct transport_ops *transport_lookup(const char *name);
/*
 * Creates an instance and runs ops->configure. Returns NULL with err
 * filled on failure. Free with transport_free.
 */
struct transport *transport_new(const struct transport_ops *ops,
                                struct gateway_conf *conf,
                                const struct transport_host *host,
                                struct error *err);
void transport_free(struct transport *t);

#endif
