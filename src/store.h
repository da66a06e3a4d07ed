/*
 * store: every Redis key and command postern uses, on hiredis 0.14's async
 * API with the libevent adapter. hiredis 0.14 has neither command timeouts
 * nor reconnect, so store.c adds both: each command has a timer
 * (redis.timeout_ms) and the connection is re-established with capped
 * exponential backoff and jitter, for ever. Commands issued while the link
 * is down fail at once (temporary error) -- they never wait unbounded.
 *
 * Keys (all under <prefix>:, <gw> is the gateway JID):
 *   <prefix>:reg:<gw>:j2a          hash  bare JID -> address
 *   <prefix>:reg:<gw>:a2j          hash  address  -> bare JID
 *   <prefix>:contacts:<gw>:<jid>   set   contact nodes the user subscribed to
 *   <prefix>:stream:<name>         stream  durable queues (queue.c names them:
 *                                  "in:<gw>", "out:<gw>", "dead:out:<gw>")
 *   <prefix>:retry:<name>          zset    delayed retries of stream <name>
 *                                  (member = payload, score = due unix ms)
 *   <prefix>:seen:<name>:<id>      string  dedupe markers with expiry
 *   <prefix>:rcpt:<gw>:<prov. id>  string  receipt mapping (JSON, expiry)
 *
 * Contract of every asynchronous call: the callback runs exactly once,
 * never before the call returns, with err NULL on success. Pointers passed
 * to a callback are borrowed for the duration of the callback only.
 */
#ifndef POSTERN_STORE_H
#define POSTERN_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

struct event_base;
struct store;

typedef void store_done_fn(const struct error *err, void *arg);
typedef void store_str_fn(const struct error *err, const char *value,
                          void *arg);
typedef void store_list_fn(const struct error *err, size_t n, char *const *keys,
                           char *const *values, void *arg);
typedef void store_state_fn(bool up, void *arg);

/*
 * url: redis://[[user]:password@]host[:port][/db] or unix:/path[?db=N].
 * Starts connecting at once (asynchronously). Returns NULL with err
 * filled when the URL is malformed. Free with store_free.
 */
struct store *store_new(struct event_base *base, const char *url,
                        const char *prefix, unsigned timeout_ms,
                        struct error *err);
/* Fails outstanding commands (callbacks run with an error), disconnects. */
void store_free(struct store *s);
bool store_connected(const struct store *s);
/* Called on every transition up/down. */
void store_on_state(struct store *s, store_state_fn *fn, void *arg);
const char *store_prefix(const struct store *s);

void store_ping(struct store *s, store_done_fn *fn, void *arg);

/* Registrations. value = address / bare JID, NULL when none. */
void store_reg_get_addr(struct store *s, const char *gw, const char *bare_jid,
                        store_str_fn *fn, void *arg);
void store_reg_get_jid(struct store *s, const char *gw, const char *addr,
                       store_str_fn *fn, void *arg);
/*
 * Atomically (one Lua script) binds bare_jid <-> addr. Fails with
 * COND_CONFLICT when another JID holds addr. Re-registering replaces the
 * JID's previous address.
 */
void store_reg_set(struct store *s, const char *gw, const char *bare_jid,
                   const char *addr, store_done_fn *fn, void *arg);
/* Removes the binding and the user's contacts; value = removed addr/NULL. */
void store_reg_remove(struct store *s, const char *gw, const char *bare_jid,
                      store_str_fn *fn, void *arg);
/* keys = bare JIDs, values = addresses. */
void store_reg_list(struct store *s, const char *gw, store_list_fn *fn,
                    void *arg);

/* Contacts a user subscribed to (values NULL in the list callback). */
void store_contact_add(struct store *s, const char *gw, const char *bare_jid,
                       const char *contact_node, store_done_fn *fn, void *arg);
void store_contact_remove(struct store *s, const char *gw, const char *bare_jid,
                          const char *contact_node, store_done_fn *fn,
                          void *arg);
void store_contact_list(struct store *s, const char *gw, const char *bare_jid,
                        store_list_fn *fn, void *arg);

/* Durable streams (Redis Streams with one consumer group per stream). */
struct store_entry {
    char *id;            /* stream entry id */
    char *payload;       /* the "p" field */
    unsigned deliveries; /* times delivered to a consumer (1 = first) */
    /*
     * store_stream_read_ex with owner_gw only: the entry was added with a
     * sender (store_stream_add_sender) and owner is that sender's
     * registered address (HGET reg:<gw>:j2a sender) at the time of the
     * read, NULL when not registered. owner_checked false: not looked up.
     */
    bool owner_checked;
    char *owner;
};
typedef void store_entries_fn(const struct error *err,
                              const struct store_entry *entries, size_t n,
                              void *arg);

/*
 * XADD payload to stream <name>. When dedupe_id is non-NULL, the add
 * happens only if <prefix>:seen:<name>:<dedupe_id> did not exist (set with
 * dedupe_ttl_s expiry in the same script); value is the new entry id, or
 * NULL for a duplicate (still a success).
 */
void store_stream_add(struct store *s, const char *name, const char *dedupe_id,
                      unsigned dedupe_ttl_s, const char *payload,
                      store_str_fn *fn, void *arg);
/*
 * store_stream_add with a "k" field naming the sender (a bare JID), so
 * that store_stream_read_ex can look up its registration in the same
 * round trip as the read. sender NULL or "": as store_stream_add.
 */
void store_stream_add_sender(struct store *s, const char *name,
                             const char *dedupe_id, unsigned dedupe_ttl_s,
                             const char *payload, const char *sender,
                             store_str_fn *fn, void *arg);
/*
 * Reads up to count entries for consumer in group (created with MKSTREAM
 * when missing): first entries pending longer than min_idle_ms for any
 * consumer (XAUTOCLAIM: crashed or slow peers), then new ones (XREADGROUP
 * >). Never blocks the connection.
 */
void store_stream_read(struct store *s, const char *name, const char *group,
                       const char *consumer, unsigned count,
                       unsigned min_idle_ms, store_entries_fn *fn, void *arg);
/*
 * Re-reads up to count entries already pending for this consumer whose
 * last delivery is at least min_idle_ms old, claiming them again (resets
 * their idle time, counts the delivery). For retrying after a failed
 * delivery without waiting for another consumer's reclaim.
 */
void store_stream_read_own(struct store *s, const char *name, const char *group,
                           const char *consumer, unsigned count,
                           unsigned min_idle_ms, store_entries_fn *fn,
                           void *arg);
/* What store_stream_read_ex does. Strings borrowed for the call. */
struct store_read {
    const char *group;
    const char *consumer;
    unsigned count;
    bool claim; /* XAUTOCLAIM entries idle >= min_idle_ms first */
    unsigned min_idle_ms;
    const char *owner_gw; /* non-NULL: fill store_entry.owner (reg. of gw) */
};
/*
 * store_stream_read with the reclaim optional (a reader that reclaims on
 * a timer need not scan the pending list at every read) and the senders'
 * registrations looked up in the same script.
 */
void store_stream_read_ex(struct store *s, const char *name,
                          const struct store_read *rd, store_entries_fn *fn,
                          void *arg);
/* XACK + XDEL. */
void store_stream_ack(struct store *s, const char *name, const char *group,
                      const char *id, store_done_fn *fn, void *arg);
/*
 * XACK + XDEL of n ids (one script, one round trip). n == 0 succeeds
 * without a command (still never inside the call).
 */
void store_stream_ack_many(struct store *s, const char *name, const char *group,
                           const char *const *ids, size_t n, store_done_fn *fn,
                           void *arg);
/* XLEN; value is the decimal length. */
void store_stream_len(struct store *s, const char *name, store_str_fn *fn,
                      void *arg);

/*
 * What happens, in one script, when a consumer is done with an entry.
 * Every member is optional (NULL / 0 = not done).
 */
struct store_finish {
    /* only when id is still pending on this consumer: else nothing at all
     * happens and value is "0" (another process took the entry over) */
    bool check_owner;
    const char *receipt_gw; /* SET <prefix>:rcpt:<gw>:<id> value EX ttl */
    const char *receipt_id;
    const char *receipt_value;
    unsigned receipt_ttl_s;
    const char *retry_payload; /* ZADD <prefix>:retry:<name> due payload */
    uint64_t retry_due_ms;
    const char *dead_name; /* XADD stream dead_name p dead_payload */
    const char *dead_payload;
    const char *notice_name; /* XADD stream notice_name p notice_payload */
    const char *notice_payload;
};
/*
 * XACK + XDEL of id in stream <name> and the actions of f, atomically.
 * value "1" done, "0" skipped (check_owner and the entry is not ours).
 */
void store_stream_finish(struct store *s, const char *name, const char *group,
                         const char *consumer, const char *id,
                         const struct store_finish *f, store_str_fn *fn,
                         void *arg);
/*
 * Moves up to count retries due at now_unix_ms from <prefix>:retry:<name>
 * into stream <name> (XADD + ZREM per item in one script, so two
 * processes never move one item twice). value = number moved.
 */
void store_retry_move(struct store *s, const char *name, uint64_t now_unix_ms,
                      unsigned count, store_str_fn *fn, void *arg);
/* ZCARD of <prefix>:retry:<name>. */
void store_retry_len(struct store *s, const char *name, store_str_fn *fn,
                     void *arg);
/*
 * Resets the idle time of the entries ids_csv ("id,id,...") that are
 * still pending on consumer (XCLAIM ... JUSTID: no delivery counted), so
 * no peer reclaims a long send; entries owned by others are untouched.
 */
void store_stream_touch(struct store *s, const char *name, const char *group,
                        const char *consumer, const char *ids_csv,
                        store_done_fn *fn, void *arg);
/* XRANGE from start ("-" or an id, inclusive), up to count; deliveries 0. */
void store_stream_range(struct store *s, const char *name, const char *start,
                        unsigned count, store_entries_fn *fn, void *arg);
/*
 * Atomically deletes id from stream from and, only if it was there, adds
 * payload to stream to. value = the new id, NULL when id was not in from.
 */
void store_stream_move(struct store *s, const char *from, const char *id,
                       const char *to, const char *payload, store_str_fn *fn,
                       void *arg);
/* XDEL; value "1" deleted, "0" no such entry. */
void store_stream_del(struct store *s, const char *name, const char *id,
                      store_str_fn *fn, void *arg);
/* GET <prefix>:rcpt:<gw>:<provider_id>; value NULL when unknown/expired. */
void store_receipt_get(struct store *s, const char *gw, const char *provider_id,
                       store_str_fn *fn, void *arg);

/* ---- limits ---- */
/* Rate-limit counters and queue depths (limits.c, metrics.c). */

/* Integer results (v has n elements, NULL on error). */
typedef void store_ints_fn(const struct error *err, const long long *v,
                           size_t n, void *arg);

/* The loop the store runs on (for deferring callbacks). Borrowed. */
struct event_base *store_event_base(const struct store *s);

/*
 * One Lua script: counts a message for bare_jid in the fixed windows
 * <prefix>:limit:<gw>:<jid>:m:<now/60> and :d:<yyyymmdd UTC of now>
 * unless that would exceed per_minute / per_day (0 = no limit, that
 * counter is not touched). A refused message is not counted.
 * v = {status, minute count, day count}; status 0 counted, 1 over the
 * minute limit, 2 over the day limit (checked first).
 */
void store_limit_count(struct store *s, const char *gw, const char *bare_jid,
                       int64_t now, unsigned per_minute, unsigned per_day,
                       store_ints_fn *fn, void *arg);

/*
 * v = {XLEN stream out:<gw>, XLEN stream in:<gw>, ZCARD
 * <prefix>:retry:out:<gw>, XLEN stream dead:out:<gw>}.
 */
void store_queue_depths(struct store *s, const char *gw, store_ints_fn *fn,
                        void *arg);

/* ---- sms provider support (vonage multipart) ---- */
/*
 * Parts of a concatenated inbound SMS the provider did not reassemble,
 * kept in <prefix>:concat:<gw>:<ref> (hash, expiring after ttl_s).
 * store_sms_concat_add stores part (1-based) of total; the list callback
 * gets n == 0 while parts are missing, else n == total + 1: keys[0..total)
 * are the texts in order and keys[total] the first part's provider_id
 * (values NULL). Drop the set once the joined message is persisted.
 */
void store_sms_concat_add(struct store *s, const char *gw, const char *ref,
                          unsigned part, unsigned total, const char *text,
                          const char *provider_id, unsigned ttl_s,
                          store_list_fn *fn, void *arg);
void store_sms_concat_drop(struct store *s, const char *gw, const char *ref,
                           store_done_fn *fn, void *arg);

/* ---- email threads ---- */
/*
 * Mail threads of the email transport, per gateway and per address of the
 * gateway (the user's side), so that a thread id or Message-ID one user
 * knows never reaches another user's mail:
 *   <prefix>:mthread:<gw>:<addr>:<thread>  hash  "refs": the thread's
 *        References chain (Message-IDs without <>, space-separated, oldest
 *        first; the last one is the message a reply answers), "subject"
 *   <prefix>:mid:<gw>:<addr>:<msgid>       string  thread id
 * Both expire ttl_s after their last write. The scripts build these keys
 * from prefixes (standalone Redis, like the rest of postern).
 */

/* refs and subject NULL when the thread (or that field) is unknown. */
typedef void store_mail_thread_fn(const struct error *err, const char *refs,
                                  const char *subject, void *arg);
void store_mail_thread_get(struct store *s, const char *gw, const char *addr,
                           const char *thread, store_mail_thread_fn *fn,
                           void *arg);

/* Every string borrowed for the call; "" counts as NULL. */
struct store_mail_put {
    const char *msgid;    /* this message's id; NULL: nothing to map */
    const char *find_ids; /* space-separated ids whose thread this message
                             joins, first hit wins; NULL: none */
    const char *thread;   /* the thread otherwise (required) */
    const char *refs;     /* the thread's chain after this message; NULL
                             keeps the stored one */
    const char *subject;  /* NULL keeps the stored one */
    unsigned ttl_s;
};
/*
 * One script: the thread is msgid's when msgid is already mapped (a
 * message seen before keeps its thread), else the first of find_ids that
 * is mapped, else p->thread; then the thread's refs/subject are set, msgid
 * is mapped to it and both expire after ttl_s. value = the thread id.
 */
void store_mail_thread_put(struct store *s, const char *gw, const char *addr,
                           const struct store_mail_put *p, store_str_fn *fn,
                           void *arg);

#endif
