/*
 * queue: durable inbound delivery (provider webhook or postern-admin ->
 * Redis stream -> XMPP). A message is persisted before the caller answers
 * its peer (2xx, 250); delivery to XMPP happens only while the gateway's
 * stream is up, and an entry is acknowledged only after its delivery
 * completed. Several postern processes can share the streams (consumer
 * groups); entries of a crashed process are reclaimed after min idle.
 *
 * Stream per gateway: "in:<gw jid>", consumer group "postern".
 */
#ifndef POSTERN_QUEUE_H
#define POSTERN_QUEUE_H

#include <stdbool.h>
#include <stddef.h>

#include "store.h"
#include "util.h"

#define INMSG_MAX_MEDIA 10

/* An inbound message as persisted (JSON in the stream). */
struct inmsg {
    char *to_addr;     /* our side: the number/address that was written to */
    char *from_addr;   /* the remote side: E.164 or email address */
    char *body;        /* may be NULL when only media */
    char *subject;     /* email */
    char *thread;      /* email */
    char *provider_id; /* provider message id, for dedupe; may be NULL */
    char *media[INMSG_MAX_MEDIA];
    size_t n_media;
    char *extra;       /* free-form text appended (attachments list); NULL */
};

void inmsg_free_fields(struct inmsg *m);
/* JSON codec, returned owned; parse returns -1 on malformed input. */
char *inmsg_to_json(const struct inmsg *m);
int inmsg_from_json(const char *json, struct inmsg *out, struct error *err);

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
typedef void deliver_fn(void *arg, const struct inmsg *m,
                        deliver_done_fn *done, void *done_arg);
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
/* Polls at once (after reconnect or a local push). */
void queue_kick(struct queue *q);
/* Stops polling; in-flight deliveries complete. */
void queue_stop(struct queue *q);

#endif
