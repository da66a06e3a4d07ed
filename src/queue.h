/*
 * queue: durable outbound sending (XMPP -> Redis stream -> transport) and
 * durable inbound delivery (provider webhook or postern-admin ->
 * Redis stream -> XMPP). A message is persisted before the caller answers
 * its peer (2xx, 250); delivery to XMPP happens only while the gateway's
 * stream is up, and an entry is acknowledged only after its delivery
 * completed. Several postern processes can share the streams (consumer
 * groups); entries of a crashed process are reclaimed after min idle.
 *
 * Streams per gateway (consumer group "postern"): "in:<gw>" inbound
 * messages and notices for XMPP users; "out:<gw>" outbound messages;
 * "dead:out:<gw>" outbound messages that ran out of retries (no group).
 * Delayed retries wait in the zset "retry:out:<gw>" (store.h).
 *
 * Outbound: queue_outbound_push persists a message before anything is
 * sent. Each process runs a consumer per gateway with at most
 * outbound_conf.concurrency sends in flight. A send that succeeds is
 * acknowledged together with its receipt mapping (provider id ->
 * outref, 7 days); a temporary failure is acknowledged together with a
 * copy in the retry zset (attempt + 1, due after capped exponential
 * backoff with jitter, or the provider's Retry-After when later); once
 * max_age has passed it goes to the dead letters instead and the sender
 * gets remote-server-timeout; a permanent failure gives the sender an
 * error. Notices for the sender (errors, receipts) are inbound entries of
 * kind != INMSG_MESSAGE, written in the same script as the ack, so they
 * are neither lost while the XMPP stream is down nor sent twice.
 * Entries of a dead process are reclaimed after claim_idle_ms; a live
 * process keeps resetting the idle time of its own sends in flight.
 */
#ifndef POSTERN_QUEUE_H
#define POSTERN_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store.h"
#include "util.h"

#define INMSG_MAX_MEDIA 10

enum inmsg_kind {
    INMSG_MESSAGE = 0, /* a message from a contact */
    INMSG_RECEIPT,     /* XEP-0184 <received/> for an outbound message */
    INMSG_ERROR,       /* an outbound message failed: error stanza */
};

/* An inbound message or notice as persisted (JSON in the stream). */
struct inmsg {
    char *to_addr;     /* our side: the number/address that was written to */
    char *from_addr;   /* the remote side: E.164 or email address */
    char *body;        /* may be NULL when only media */
    char *subject;     /* email */
    char *thread;      /* email */
    char *provider_id; /* provider message id, for dedupe; may be NULL */
    char *media[INMSG_MAX_MEDIA];
    size_t n_media;
    char *extra; /* free-form text appended (attachments list); NULL */
    /*
     * Notices (kind != INMSG_MESSAGE) go from contact to jid and need
     * neither address; body is the original body (errors, optional).
     */
    enum inmsg_kind kind;
    char *jid;      /* the sender's full JID */
    char *contact;  /* the contact JID the notice comes from */
    char *ref_id;   /* the original stanza id; may be NULL */
    int cond;       /* INMSG_ERROR: enum cond */
    bool temporary; /* INMSG_ERROR: wait rather than cancel */
    char *text;     /* INMSG_ERROR: the reason, for <text/> */
};

void inmsg_free_fields(struct inmsg *m);
/* JSON codec, returned owned; parse returns -1 on malformed input. */
char *inmsg_to_json(const struct inmsg *m);
int inmsg_from_json(const char *json, struct inmsg *out, struct error *err);

#define OUTMSG_MAX_MEDIA 10

/* An outbound message as persisted (JSON in "out:<gw>"). */
struct outmsg {
    char *uid;       /* unique per message; push fills it when NULL */
    char *from_jid;  /* the sender's full JID */
    char *id;        /* stanza id; may be NULL */
    char *to_jid;    /* contact JID as addressed */
    char *from_addr; /* the sender's registered number / address */
    char *to_addr;   /* the contact's number / address */
    char *body;      /* may be NULL when media only */
    char *subject;
    char *thread;
    char *media[OUTMSG_MAX_MEDIA];
    size_t n_media;
    bool receipt;        /* XEP-0184 requested */
    int64_t enqueued_at; /* unix ms; push fills it when 0 */
    unsigned attempt;    /* failed sends so far */
    char *last_error;    /* retries and dead letters: the last failure */
    /*
     * Not persisted: set by the outbound consumer when its read looked up
     * the sender's registration (bare JID of from_jid) in the same
     * script. sender_addr is the registered address then, NULL when the
     * sender is not registered. sender_checked false: nobody looked.
     */
    bool sender_checked;
    char *sender_addr;
};

void outmsg_free_fields(struct outmsg *m);
char *outmsg_to_json(const struct outmsg *m);
int outmsg_from_json(const char *json, struct outmsg *out, struct error *err);

/* The receipt mapping stored for a provider message id. */
struct outref {
    char *jid;     /* sender's full JID */
    char *id;      /* original stanza id; may be NULL */
    char *contact; /* contact JID */
    bool receipt;  /* a receipt was requested */
};
void outref_free_fields(struct outref *r);
char *outref_to_json(const struct outref *r);
int outref_from_json(const char *json, struct outref *out, struct error *err);

struct queue;
struct event_base;

enum deliver_result {
    DELIVER_OK,    /* handed to XMPP: acknowledge */
    DELIVER_DROP,  /* permanently undeliverable (nobody owns it): ack + log */
    DELIVER_RETRY, /* try again later (stream down, Redis error) */
};
typedef void deliver_done_fn(enum deliver_result r, void *done_arg);
/*
 * Called for each entry; must call done exactly once (may be synchronous).
 * m and its strings are borrowed until done is called.
 */
typedef void deliver_fn(void *arg, const struct inmsg *m, deliver_done_fn *done,
                        void *done_arg);
/* true when the gateway can deliver now (its XMPP stream is up). */
typedef bool ready_fn(void *arg);

/* consumer: a name unique per process (host:pid). */
struct queue *queue_new(struct event_base *base, struct store *store,
                        const char *consumer);
void queue_free(struct queue *q);

/* Registers a gateway's inbound stream and starts polling it. */
void queue_inbound_register(struct queue *q, const char *gw, deliver_fn *fn,
                            ready_fn *ready, void *arg);
/*
 * Persists m for gw. fn gets err NULL once it is durable (also for a
 * duplicate provider_id, which is not stored twice); a temporary error when
 * Redis is unavailable (answer 503/451).
 */
void queue_inbound_push(struct queue *q, const char *gw, const struct inmsg *m,
                        store_done_fn *fn, void *arg);
/* Per-gateway outbound settings (0 = the default in brackets). */
struct outbound_conf {
    unsigned concurrency;   /* sends in flight per process [32] */
    unsigned max_age_s;     /* retry for at most this long [86400] */
    unsigned retry_base_ms; /* first retry delay [1000] */
    unsigned retry_cap_ms;  /* longest retry delay [300000] */
    unsigned claim_idle_ms; /* reclaim a dead process's sends [35000] */
};

/*
 * How a send went: err NULL = accepted (provider_id may be NULL);
 * err->temporary = retry later, not before retry_after_ms (or
 * err->retry_after_s, whichever is longer; e.g. HTTP Retry-After), capped
 * by retry_cap_ms; else permanent.
 */
typedef void outbound_done_fn(void *done_arg, const struct error *err,
                              const char *provider_id, unsigned retry_after_ms);
/*
 * Sends m; must call done exactly once (may be synchronous). m and its
 * strings are borrowed until done is called.
 */
typedef void outbound_send_fn(void *arg, const struct outmsg *m,
                              outbound_done_fn *done, void *done_arg);

/* Registers a gateway's outbound stream and starts consuming it. c copied. */
void queue_outbound_register(struct queue *q, const char *gw,
                             const struct outbound_conf *c,
                             outbound_send_fn *fn, void *arg);
/*
 * Persists m for gw (uid and enqueued_at filled in a copy when unset).
 * When Redis is unavailable the push is retried with backoff for up to
 * 30 s; fn then gets a temporary error. Idempotent per uid.
 */
void queue_outbound_push(struct queue *q, const char *gw,
                         const struct outmsg *m, store_done_fn *fn, void *arg);
/* Pushes, sends and acknowledgements not yet completed (for draining). */
size_t queue_inflight(const struct queue *q);

/* Polls at once (after reconnect or a local push). */
void queue_kick(struct queue *q);
/*
 * Stops polling and reading; in-flight deliveries and sends complete and
 * are acknowledged. What is not yet sent stays in Redis.
 */
void queue_stop(struct queue *q);

#endif
