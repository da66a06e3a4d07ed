/*
 * queue: the durable inbound queue (see queue.h) and the JSON form of an
 * inbound message. Owns one Redis stream per registered gateway
 * ("in:<gw>", group "postern") and the polling that feeds its deliver_fn.
 *
 * Per gateway, at most one batch is in flight. Its entries are handed to
 * deliver_fn all at once, in stream order, so that the owner lookups they
 * need travel to Redis together (hiredis pipelines commands issued in one
 * loop turn); the deliver_fn keeps the order of what it emits (the
 * router's delivery chain: stream order, and nothing after an entry that
 * came back DELIVER_RETRY). The entries that are done (DELIVER_OK,
 * DELIVER_DROP, malformed payloads, which are logged so they can never
 * block the stream) are acknowledged together (one XACK + XDEL) once the
 * whole batch is back, and the next read is issued in the same loop turn.
 * DELIVER_RETRY leaves the entry pending on this consumer: it is read
 * again (with whatever followed it) with store_stream_read_own after a
 * backoff, before anything new, or reclaimed by any process once idle for
 * RECLAIM_IDLE_MS (a crashed peer). An entry is never handed to XMPP
 * twice at the same time by this process: a re-read skips entries whose
 * acknowledgement is in flight or waiting to be retried. The per-entry
 * delivery count comes from the stream's pending list (exact for Redis
 * >= 6.2).
 *
 * Order guaranteed: within one process, inbound entries of a gateway
 * reach XMPP in stream order (and so, for one conversation, in the order
 * the provider's webhooks were persisted), except that an entry
 * redelivered after a failure comes after entries another process
 * delivered meanwhile. Outbound sends run concurrently (up to
 * outbound_conf.concurrency): their order at the provider is not
 * guaranteed, as with any concurrent provider API client.
 *
 * Only this file uses jansson for messages. Never: block, deliver while
 * the gateway's ready() is false, log a message body above debug.
 */
#include "queue.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>
#include <jansson.h>

#include "addr.h"
#include "log.h"
#include "metrics.h"

#define MOD "queue"
#define GROUP "postern"
#define POLL_MS 150
#define BATCH 64
#define RECLAIM_IDLE_MS 30000
#define RETRY_BASE_MS 500
#define RETRY_CAP_MS 30000
#define DEDUPE_TTL_S (7 * 24 * 3600)
#define PAYLOAD_MAX (4u << 20)
#define MAX_PENDING_ACKS 1024

/* ---- JSON codec --------------------------------------------------------*/

void inmsg_free_fields(struct inmsg *m)
{
    if (!m)
        return;
    free(m->to_addr);
    free(m->from_addr);
    free(m->body);
    free(m->subject);
    free(m->thread);
    free(m->provider_id);
    for (size_t i = 0; i < m->n_media && i < INMSG_MAX_MEDIA; i++)
        free(m->media[i]);
    free(m->extra);
    free(m->jid);
    free(m->contact);
    free(m->ref_id);
    free(m->text);
    memset(m, 0, sizeof(*m));
}

/* Length of a valid UTF-8 sequence at p (max n bytes), 0 when invalid. */
static size_t utf8_seq(const unsigned char *p, size_t n)
{
    size_t len;
    unsigned cp;

    if (p[0] < 0x80)
        return 1;
    if (p[0] >= 0xc2 && p[0] <= 0xdf) {
        len = 2;
        cp = p[0] & 0x1f;
    } else if (p[0] >= 0xe0 && p[0] <= 0xef) {
        len = 3;
        cp = p[0] & 0x0f;
    } else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
        len = 4;
        cp = p[0] & 0x07;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

/*
 * A JSON string for s; invalid UTF-8 (a provider's garbage) becomes
 * U+FFFD rather than making the message unstorable.
 */
static json_t *jstr(const char *s)
{
    json_t *j = json_string(s);
    struct strbuf b;
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);

    if (j)
        return j;
    sb_init(&b);
    for (size_t i = 0; i < n;) {
        size_t l = utf8_seq(p + i, n - i);
        if (l == 0) {
            sb_puts(&b, "\xef\xbf\xbd");
            i++;
        } else {
            sb_append(&b, s + i, l);
            i += l;
        }
    }
    j = json_string(b.s ? b.s : "");
    sb_free(&b);
    if (!j)
        fatal("out of memory (json)");
    return j;
}

static void set_opt(json_t *o, const char *key, const char *v)
{
    if (v)
        json_object_set_new(o, key, jstr(v));
}

char *inmsg_to_json(const struct inmsg *m)
{
    json_t *o = json_object();
    char *out;

    if (!o)
        fatal("out of memory (json)");
    json_object_set_new(o, "v", json_integer(1));
    json_object_set_new(o, "to", jstr(m->to_addr ? m->to_addr : ""));
    json_object_set_new(o, "from", jstr(m->from_addr ? m->from_addr : ""));
    set_opt(o, "body", m->body);
    set_opt(o, "subject", m->subject);
    set_opt(o, "thread", m->thread);
    set_opt(o, "provider_id", m->provider_id);
    set_opt(o, "extra", m->extra);
    if (m->n_media) {
        json_t *a = json_array();
        for (size_t i = 0; i < m->n_media && i < INMSG_MAX_MEDIA; i++)
            json_array_append_new(a, jstr(m->media[i]));
        json_object_set_new(o, "media", a);
    }
    if (m->kind != INMSG_MESSAGE) {
        json_object_set_new(
            o, "k",
            json_string(m->kind == INMSG_RECEIPT ? "receipt" : "error"));
        set_opt(o, "jid", m->jid);
        set_opt(o, "contact", m->contact);
        set_opt(o, "ref", m->ref_id);
        set_opt(o, "text", m->text);
        if (m->kind == INMSG_ERROR) {
            json_object_set_new(o, "cond", json_integer(m->cond));
            json_object_set_new(o, "temp", json_boolean(m->temporary));
        }
    }
    out = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!out)
        fatal("out of memory (json)");
    return out;
}

/* Optional string member: 0 absent/null, 1 copied, -1 wrong type. */
static int get_opt(json_t *o, const char *key, char **out)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v))
        return -1;
    *out = xstrndup(json_string_value(v), json_string_length(v));
    return 1;
}

/* The members of a notice; NULL when valid, else what is wrong. */
static const char *notice_from_json(json_t *o, struct inmsg *out)
{
    json_t *c;

    if (get_opt(o, "jid", &out->jid) <= 0 || !*out->jid)
        return "\"jid\" missing or not a non-empty string";
    if (get_opt(o, "contact", &out->contact) <= 0 || !*out->contact)
        return "\"contact\" missing or not a non-empty string";
    if (get_opt(o, "ref", &out->ref_id) < 0 ||
        get_opt(o, "text", &out->text) < 0 ||
        get_opt(o, "body", &out->body) < 0)
        return "a text member is not a string";
    if (out->kind != INMSG_ERROR)
        return NULL;
    c = json_object_get(o, "cond");
    if (!json_is_integer(c) || json_integer_value(c) <= COND_NONE ||
        json_integer_value(c) > COND_UNDEFINED_CONDITION)
        return "\"cond\" is not a known condition";
    out->cond = (int)json_integer_value(c);
    out->temporary = json_is_true(json_object_get(o, "temp"));
    return NULL;
}

int inmsg_from_json(const char *json, struct inmsg *out, struct error *err)
{
    json_error_t je;
    json_t *o = NULL, *media, *kind;
    const char *bad = NULL;

    memset(out, 0, sizeof(*out));
    if (!json || strlen(json) > PAYLOAD_MAX) {
        bad = "missing or oversized payload";
        goto fail;
    }
    o = json_loads(json, JSON_REJECT_DUPLICATES, &je);
    if (!o) {
        bad = "not valid JSON";
        goto fail;
    }
    if (!json_is_object(o)) {
        bad = "not a JSON object";
        goto fail;
    }
    kind = json_object_get(o, "k");
    if (kind && !json_is_null(kind)) {
        const char *k = json_is_string(kind) ? json_string_value(kind) : "";
        if (strcmp(k, "receipt") == 0)
            out->kind = INMSG_RECEIPT;
        else if (strcmp(k, "error") == 0)
            out->kind = INMSG_ERROR;
        else if (strcmp(k, "msg") != 0) {
            bad = "\"k\" is not msg, receipt or error";
            goto fail;
        }
    }
    if (out->kind != INMSG_MESSAGE) {
        bad = notice_from_json(o, out);
        if (bad)
            goto fail;
        json_decref(o);
        return 0;
    }
    if (get_opt(o, "to", &out->to_addr) <= 0 || !*out->to_addr) {
        bad = "\"to\" missing or not a non-empty string";
        goto fail;
    }
    if (get_opt(o, "from", &out->from_addr) <= 0 || !*out->from_addr) {
        bad = "\"from\" missing or not a non-empty string";
        goto fail;
    }
    if (get_opt(o, "body", &out->body) < 0 ||
        get_opt(o, "subject", &out->subject) < 0 ||
        get_opt(o, "thread", &out->thread) < 0 ||
        get_opt(o, "provider_id", &out->provider_id) < 0 ||
        get_opt(o, "extra", &out->extra) < 0) {
        bad = "a text member is not a string";
        goto fail;
    }
    media = json_object_get(o, "media");
    if (media && !json_is_null(media)) {
        if (!json_is_array(media) || json_array_size(media) > INMSG_MAX_MEDIA) {
            bad = "\"media\" is not an array of at most 10 URLs";
            goto fail;
        }
        for (size_t i = 0; i < json_array_size(media); i++) {
            json_t *u = json_array_get(media, i);
            if (!json_is_string(u) || json_string_length(u) == 0) {
                bad = "\"media\" holds something other than a URL string";
                goto fail;
            }
            out->media[out->n_media++] =
                xstrndup(json_string_value(u), json_string_length(u));
        }
    }
    if (!out->body && !out->n_media && !out->subject && !out->extra) {
        bad = "no body, subject, media or extra";
        goto fail;
    }
    json_decref(o);
    return 0;
fail:
    json_decref(o);
    inmsg_free_fields(out);
    error_set(err, COND_BAD_REQUEST, false, "malformed inbound message: %s",
              bad);
    return -1;
}

/* ---- the queue ---------------------------------------------------------*/

struct qitem;
struct qack;

struct qgw {
    struct queue *q;
    struct qgw *next;
    char *gw;
    char *stream; /* "in:<gw>" */
    deliver_fn *fn;
    ready_fn *ready;
    void *arg;

    bool reading;        /* a store read is in flight */
    bool reading_own;    /* ... of our own pending entries */
    bool in_start;       /* batch_start is on the stack */
    bool want_read;      /* something may be waiting: read without a tick */
    struct qitem *items; /* the batch being delivered */
    size_t n, n_done;

    bool retry; /* own pending entries wait for a retry */
    unsigned retry_attempt;
    uint64_t retry_at;

    struct qack *acking; /* acknowledgements in flight */
    char **acks;         /* ids whose ack failed: retried first */
    size_t n_acks;
};

struct qout;
struct opush;

struct queue {
    struct event_base *base;
    struct store *store;
    char *consumer;
    struct qgw *gws;
    struct qout *outs;
    struct opush *pushes; /* outbound pushes not yet answered */
    size_t n_push;
    struct event *poll_ev;
    struct event *kick_ev;
    bool tick; /* poll_all runs from the timer (not a kick) */
    bool stopped;
    bool freed;
    unsigned ops; /* store callbacks and deliveries outstanding */
};

static void poll_all(struct queue *q);
static void batch_free(struct qgw *g);
static void outs_destroy(struct queue *q);
static void pushes_abort(struct queue *q);
static void outs_abort(struct queue *q);

static void queue_destroy(struct queue *q)
{
    outs_destroy(q);
    while (q->gws) {
        struct qgw *g = q->gws;
        q->gws = g->next;
        batch_free(g);
        for (size_t i = 0; i < g->n_acks; i++)
            free(g->acks[i]);
        free(g->acks);
        free(g->gw);
        free(g->stream);
        free(g);
    }
    if (q->poll_ev)
        event_free(q->poll_ev);
    if (q->kick_ev)
        event_free(q->kick_ev);
    free(q->consumer);
    free(q);
}

/* Every asynchronous step holds the queue; the last one frees it. */
static void q_hold(struct queue *q)
{
    q->ops++;
}

static bool q_release(struct queue *q)
{
    q->ops--;
    if (q->freed && q->ops == 0) {
        queue_destroy(q);
        return true;
    }
    return q->freed;
}

static void poll_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    poll_all(arg);
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct queue *q = arg;
    (void)fd;
    (void)what;
    q->tick = true;
    poll_all(q);
    q->tick = false;
}

struct queue *queue_new(struct event_base *base, struct store *store,
                        const char *consumer)
{
    struct queue *q = xcalloc(1, sizeof(*q));
    struct timeval tv = {0, POLL_MS * 1000};

    q->base = base;
    q->store = store;
    q->consumer = xstrdup(consumer);
    q->poll_ev = event_new(base, -1, EV_PERSIST, tick_cb, q);
    q->kick_ev = event_new(base, -1, 0, poll_cb, q);
    event_add(q->poll_ev, &tv);
    return q;
}

void queue_free(struct queue *q)
{
    if (!q)
        return;
    q->stopped = true;
    q->freed = true;
    event_del(q->poll_ev);
    event_del(q->kick_ev);
    /* each holds the queue: the last one may free it */
    q->ops++;
    pushes_abort(q);
    outs_abort(q);
    q->ops--;
    if (q->ops == 0)
        queue_destroy(q);
}

/*
 * The poll timer keeps running: acknowledgements that failed are retried
 * and sends in flight keep their entries (idle refresh).
 */
void queue_stop(struct queue *q)
{
    q->stopped = true;
    event_del(q->kick_ev);
}

/* Runs poll_all once in this loop turn (many kicks, one poll). */
static void kick(struct queue *q)
{
    if (!q->stopped)
        event_active(q->kick_ev, EV_TIMEOUT, 0);
}

static void outs_want_read(struct queue *q);

/* From outside (reconnect, a transport's push): every stream may hold work. */
void queue_kick(struct queue *q)
{
    for (struct qgw *g = q->gws; g; g = g->next)
        g->want_read = true;
    outs_want_read(q);
    kick(q);
}

static struct qgw *find_gw(struct queue *q, const char *gw)
{
    for (struct qgw *g = q->gws; g; g = g->next)
        if (str_ieq(g->gw, gw))
            return g;
    return NULL;
}

void queue_inbound_register(struct queue *q, const char *gw, deliver_fn *fn,
                            ready_fn *ready, void *arg)
{
    struct qgw *g = find_gw(q, gw);

    if (!g) {
        g = xcalloc(1, sizeof(*g));
        g->q = q;
        g->gw = xstrdup(gw);
        g->stream = xasprintf("in:%s", gw);
        g->next = q->gws;
        q->gws = g;
    }
    g->fn = fn;
    g->ready = ready;
    g->arg = arg;
    g->want_read = true;
    kick(q);
}

/* ---- push --------------------------------------------------------------*/

struct push {
    struct queue *q;
    char *gw;
    store_done_fn *fn;
    void *arg;
};

static void push_done(const struct error *err, const char *id, void *arg)
{
    struct push *p = arg;
    struct queue *q = p->q;
    if (err) {
        log_warn(MOD, "in[%s]: cannot persist a message: %s", p->gw, err->msg);
    } else if (!id) {
        log_info(MOD, "in[%s]: duplicate provider message ignored", p->gw);
    } else {
        log_debug(MOD, "in[%s]: persisted %s", p->gw, id);
    }
    p->fn(err, p->arg);
    if (!q_release(q) && !err && id) {
        struct qgw *g = find_gw(q, p->gw);
        if (g) {
            g->want_read = true;
            kick(q);
        }
    }
    free(p->gw);
    free(p);
}

void queue_inbound_push(struct queue *q, const char *gw, const struct inmsg *m,
                        store_done_fn *fn, void *arg)
{
    struct push *p = xcalloc(1, sizeof(*p));
    char *json = inmsg_to_json(m);
    char *stream = xasprintf("in:%s", gw);

    p->q = q;
    p->gw = xstrdup(gw);
    p->fn = fn;
    p->arg = arg;
    q_hold(q);
    /* an empty provider id cannot identify a duplicate */
    store_stream_add(q->store, stream,
                     m->provider_id && *m->provider_id ? m->provider_id : NULL,
                     DEDUPE_TTL_S, json, push_done, p);
    free(stream);
    free(json);
}

/* ---- acks --------------------------------------------------------------*/

struct qack {
    struct qgw *g;
    struct qack *next;
    char **ids;
    size_t n;
};

static void ack_done(const struct error *err, void *arg)
{
    struct qack *a = arg;
    struct qgw *g = a->g;
    struct queue *q = g->q;

    for (struct qack **pp = &g->acking; *pp; pp = &(*pp)->next) {
        if (*pp == a) {
            *pp = a->next;
            break;
        }
    }
    if (err && !q->freed) {
        /* delivered but not acknowledged: keep them so a re-read of our
         * pending entries does not deliver them a second time */
        log_warn(MOD, "in[%s]: ack of %zu entr%s failed (%s); will retry",
                 g->gw, a->n, a->n == 1 ? "y" : "ies", err->msg);
        for (size_t i = 0; i < a->n; i++) {
            if (g->n_acks >= MAX_PENDING_ACKS)
                break;
            g->acks = xrealloc(g->acks, (g->n_acks + 1) * sizeof(*g->acks));
            g->acks[g->n_acks++] = a->ids[i];
            a->ids[i] = NULL;
        }
    }
    for (size_t i = 0; i < a->n; i++)
        free(a->ids[i]);
    free(a->ids);
    free(a);
    q_release(q);
}

/* Takes ids (n > 0): one XACK + XDEL for all of them. */
static void ack_many(struct qgw *g, char **ids, size_t n)
{
    struct qack *a = xcalloc(1, sizeof(*a));

    a->g = g;
    a->ids = ids;
    a->n = n;
    a->next = g->acking;
    g->acking = a;
    q_hold(g->q);
    store_stream_ack_many(g->q->store, g->stream, GROUP,
                          (const char *const *)ids, n, ack_done, a);
}

static bool ack_pending(const struct qgw *g, const char *id)
{
    for (size_t i = 0; i < g->n_acks; i++)
        if (strcmp(g->acks[i], id) == 0)
            return true;
    for (const struct qack *a = g->acking; a; a = a->next)
        for (size_t i = 0; i < a->n; i++)
            if (strcmp(a->ids[i], id) == 0)
                return true;
    return false;
}

/* ---- delivery ----------------------------------------------------------*/

enum qitem_state {
    QI_SKIP,  /* not handed over (stopped, not ready): stays pending */
    QI_WAIT,  /* handed to deliver_fn, done not called yet */
    QI_DONE,  /* delivered or dropped: acknowledge */
    QI_RETRY, /* deliver_fn asked for a retry: stays pending */
};

struct qitem {
    struct qgw *g;
    struct store_entry e; /* owned copies of id and payload */
    struct inmsg msg;
    enum qitem_state state;
};

static void batch_free(struct qgw *g)
{
    for (size_t i = 0; i < g->n; i++) {
        free(g->items[i].e.id);
        free(g->items[i].e.payload);
        inmsg_free_fields(&g->items[i].msg);
    }
    free(g->items);
    g->items = NULL;
    g->n = g->n_done = 0;
}

static void set_retry(struct qgw *g, uint64_t delay_ms)
{
    uint64_t at = now_ms() + delay_ms;
    if (!g->retry || at < g->retry_at)
        g->retry_at = at;
    g->retry = true;
}

/* The whole batch is back: acknowledge what is done, read on. */
static void batch_end(struct qgw *g)
{
    struct queue *q = g->q;
    char **ids = NULL;
    size_t n_ids = 0;
    bool full = g->n >= BATCH;

    if (!q->freed) {
        for (size_t i = 0; i < g->n; i++) {
            if (g->items[i].state != QI_DONE)
                continue;
            if (!ids)
                ids = xcalloc(g->n, sizeof(*ids));
            ids[n_ids++] = g->items[i].e.id;
            g->items[i].e.id = NULL;
        }
    }
    batch_free(g);
    if (n_ids)
        ack_many(g, ids, n_ids);
    /* more may be waiting: look again now rather than at the next tick
     * (issued in this loop turn, so it travels with the ack) */
    if (!q->freed && !q->stopped && !g->retry) {
        if (full || n_ids)
            g->want_read = true;
        kick(q);
    }
}

static void deliver_done(enum deliver_result r, void *arg)
{
    struct qitem *it = arg;
    struct qgw *g = it->g;
    struct queue *q = g->q;

    inmsg_free_fields(&it->msg);
    if (q->freed) {
        it->state = QI_SKIP;
    } else if (r == DELIVER_RETRY) {
        uint64_t d = backoff_ms(g->retry_attempt, RETRY_BASE_MS, RETRY_CAP_MS);
        if (!g->retry && g->retry_attempt < 20)
            g->retry_attempt++;
        set_retry(g, d);
        it->state = QI_RETRY;
        log_info(MOD, "in[%s]: delivery of %s postponed (%u ms)", g->gw,
                 it->e.id, (unsigned)d);
    } else {
        if (r == DELIVER_DROP)
            log_info(MOD, "in[%s]: %s dropped as undeliverable", g->gw,
                     it->e.id);
        else
            g->retry_attempt = 0;
        it->state = QI_DONE;
    }
    g->n_done++;
    if (!g->in_start && g->n_done == g->n)
        batch_end(g);
    q_release(q);
}

/* Hands the whole batch over, in order; done may run synchronously. */
static void batch_start(struct qgw *g)
{
    struct queue *q = g->q;
    struct error err;
    bool hold = q->stopped || (g->ready && !g->ready(g->arg));

    g->in_start = true;
    q_hold(q);
    for (size_t i = 0; i < g->n; i++) {
        struct qitem *it = &g->items[i];
        if (hold || q->freed) {
            /* left pending on us: re-read after a short wait */
            it->state = QI_SKIP;
            g->n_done++;
            continue;
        }
        if (inmsg_from_json(it->e.payload, &it->msg, &err) < 0) {
            log_warn(MOD, "in[%s]: entry %s: %s; dropped", g->gw, it->e.id,
                     err.msg);
            it->state = QI_DONE;
            g->n_done++;
            continue;
        }
        if (it->e.deliveries > 1)
            log_info(MOD, "in[%s]: delivering %s again (delivery %u)", g->gw,
                     it->e.id, it->e.deliveries);
        it->state = QI_WAIT;
        q_hold(q);
        g->fn(g->arg, &it->msg, deliver_done, it);
    }
    if (hold)
        set_retry(g, RETRY_BASE_MS);
    g->in_start = false;
    if (g->n_done == g->n)
        batch_end(g);
    q_release(q);
}

static void read_done(const struct error *err,
                      const struct store_entry *entries, size_t n, void *arg)
{
    struct qgw *g = arg;
    struct queue *q = g->q;

    bool own = g->reading_own;

    g->reading = false;
    g->reading_own = false;
    if (q->freed) {
        q_release(q);
        return;
    }
    if (err) {
        log_warn(MOD, "in[%s]: cannot read the queue: %s", g->gw, err->msg);
        if (own)
            set_retry(g, RETRY_BASE_MS);
        q_release(q);
        return;
    }
    if (own && n >= BATCH) {
        /* more of our own may be waiting: read those before new ones */
        g->retry = true;
        g->retry_at = 0;
    }
    g->items = xcalloc(n + 1, sizeof(*g->items));
    g->n = 0;
    g->n_done = 0;
    for (size_t i = 0; i < n; i++) {
        /* an entry delivered whose ack is in flight or to be retried */
        if (ack_pending(g, entries[i].id))
            continue;
        struct qitem *it = &g->items[g->n++];
        it->g = g;
        it->e.id = xstrdup(entries[i].id);
        it->e.payload = xstrdup(entries[i].payload);
        it->e.deliveries = entries[i].deliveries;
    }
    if (g->n == 0) {
        batch_free(g);
        if (n >= BATCH && !q->stopped) {
            g->want_read = true;
            kick(q);
        }
    } else {
        batch_start(g);
    }
    q_release(q);
}

static void poll_gw(struct queue *q, struct qgw *g)
{
    if (q->stopped)
        return;
    if (g->reading || g->n || !g->fn)
        return;
    if (g->ready && !g->ready(g->arg))
        return;
    if (g->n_acks) {
        /* finish acknowledging before anything is read again */
        char **ids = g->acks;
        size_t n = g->n_acks;
        g->acks = NULL;
        g->n_acks = 0;
        ack_many(g, ids, n);
        return;
    }
    /* retried entries go first: nothing new overtakes them */
    if (g->retry && now_ms() < g->retry_at)
        return;
    if (!g->retry && !g->want_read && !q->tick)
        return;
    g->reading = true;
    g->want_read = false;
    q_hold(q);
    if (g->retry) {
        g->retry = false;
        g->reading_own = true;
        store_stream_read_own(q->store, g->stream, GROUP, q->consumer, BATCH, 0,
                              read_done, g);
    } else {
        store_stream_read(q->store, g->stream, GROUP, q->consumer, BATCH,
                          RECLAIM_IDLE_MS, read_done, g);
    }
}

static void poll_outs(struct queue *q);

static void poll_all(struct queue *q)
{
    if (q->freed || !store_connected(q->store))
        return;
    for (struct qgw *g = q->gws; g; g = g->next)
        poll_gw(q, g);
    poll_outs(q);
}

/* ---- outbound codec ----------------------------------------------------*/

void outmsg_free_fields(struct outmsg *m)
{
    if (!m)
        return;
    free(m->uid);
    free(m->from_jid);
    free(m->id);
    free(m->to_jid);
    free(m->from_addr);
    free(m->to_addr);
    free(m->body);
    free(m->subject);
    free(m->thread);
    for (size_t i = 0; i < m->n_media && i < OUTMSG_MAX_MEDIA; i++)
        free(m->media[i]);
    free(m->last_error);
    free(m->sender_addr);
    memset(m, 0, sizeof(*m));
}

char *outmsg_to_json(const struct outmsg *m)
{
    json_t *o = json_object();
    char *out;

    if (!o)
        fatal("out of memory (json)");
    json_object_set_new(o, "v", json_integer(1));
    json_object_set_new(o, "uid", jstr(m->uid ? m->uid : ""));
    json_object_set_new(o, "jid", jstr(m->from_jid ? m->from_jid : ""));
    json_object_set_new(o, "contact", jstr(m->to_jid ? m->to_jid : ""));
    json_object_set_new(o, "from", jstr(m->from_addr ? m->from_addr : ""));
    json_object_set_new(o, "to", jstr(m->to_addr ? m->to_addr : ""));
    set_opt(o, "id", m->id);
    set_opt(o, "body", m->body);
    set_opt(o, "subject", m->subject);
    set_opt(o, "thread", m->thread);
    set_opt(o, "last_error", m->last_error);
    if (m->n_media) {
        json_t *a = json_array();
        for (size_t i = 0; i < m->n_media && i < OUTMSG_MAX_MEDIA; i++)
            json_array_append_new(a, jstr(m->media[i]));
        json_object_set_new(o, "media", a);
    }
    if (m->receipt)
        json_object_set_new(o, "receipt", json_true());
    json_object_set_new(o, "at", json_integer(m->enqueued_at));
    json_object_set_new(o, "attempt", json_integer(m->attempt));
    out = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!out)
        fatal("out of memory (json)");
    return out;
}

/* A required non-empty string member. */
static int get_req(json_t *o, const char *key, char **out)
{
    if (get_opt(o, key, out) <= 0)
        return -1;
    return **out ? 0 : -1;
}

int outmsg_from_json(const char *json, struct outmsg *out, struct error *err)
{
    json_error_t je;
    json_t *o = NULL, *v;
    const char *bad = NULL;

    memset(out, 0, sizeof(*out));
    if (!json || strlen(json) > PAYLOAD_MAX) {
        bad = "missing or oversized payload";
        goto fail;
    }
    o = json_loads(json, JSON_REJECT_DUPLICATES, &je);
    if (!o || !json_is_object(o)) {
        bad = "not a JSON object";
        goto fail;
    }
    if (get_req(o, "uid", &out->uid) < 0 ||
        get_req(o, "jid", &out->from_jid) < 0 ||
        get_req(o, "contact", &out->to_jid) < 0 ||
        get_req(o, "from", &out->from_addr) < 0 ||
        get_req(o, "to", &out->to_addr) < 0) {
        bad = "uid, jid, contact, from or to missing";
        goto fail;
    }
    if (get_opt(o, "id", &out->id) < 0 || get_opt(o, "body", &out->body) < 0 ||
        get_opt(o, "subject", &out->subject) < 0 ||
        get_opt(o, "thread", &out->thread) < 0 ||
        get_opt(o, "last_error", &out->last_error) < 0) {
        bad = "a text member is not a string";
        goto fail;
    }
    v = json_object_get(o, "media");
    if (v && !json_is_null(v)) {
        if (!json_is_array(v) || json_array_size(v) > OUTMSG_MAX_MEDIA) {
            bad = "\"media\" is not an array of at most 10 URLs";
            goto fail;
        }
        for (size_t i = 0; i < json_array_size(v); i++) {
            json_t *u = json_array_get(v, i);
            if (!json_is_string(u) || json_string_length(u) == 0) {
                bad = "\"media\" holds something other than a URL string";
                goto fail;
            }
            out->media[out->n_media++] =
                xstrndup(json_string_value(u), json_string_length(u));
        }
    }
    if (!out->body && !out->n_media) {
        bad = "no body and no media";
        goto fail;
    }
    out->receipt = json_is_true(json_object_get(o, "receipt"));
    v = json_object_get(o, "at");
    if (!json_is_integer(v) || json_integer_value(v) < 0) {
        bad = "\"at\" is not a time";
        goto fail;
    }
    out->enqueued_at = json_integer_value(v);
    v = json_object_get(o, "attempt");
    if (v && (!json_is_integer(v) || json_integer_value(v) < 0 ||
              json_integer_value(v) > 1000000)) {
        bad = "\"attempt\" is not a count";
        goto fail;
    }
    out->attempt = v ? (unsigned)json_integer_value(v) : 0;
    json_decref(o);
    return 0;
fail:
    json_decref(o);
    outmsg_free_fields(out);
    error_set(err, COND_BAD_REQUEST, false, "malformed outbound message: %s",
              bad);
    return -1;
}

void outref_free_fields(struct outref *r)
{
    if (!r)
        return;
    free(r->jid);
    free(r->id);
    free(r->contact);
    memset(r, 0, sizeof(*r));
}

char *outref_to_json(const struct outref *r)
{
    json_t *o = json_object();
    char *out;

    if (!o)
        fatal("out of memory (json)");
    json_object_set_new(o, "jid", jstr(r->jid ? r->jid : ""));
    json_object_set_new(o, "contact", jstr(r->contact ? r->contact : ""));
    set_opt(o, "id", r->id);
    json_object_set_new(o, "receipt", json_boolean(r->receipt));
    out = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!out)
        fatal("out of memory (json)");
    return out;
}

int outref_from_json(const char *json, struct outref *out, struct error *err)
{
    json_error_t je;
    json_t *o;

    memset(out, 0, sizeof(*out));
    o = json ? json_loads(json, JSON_REJECT_DUPLICATES, &je) : NULL;
    if (!o || !json_is_object(o) || get_req(o, "jid", &out->jid) < 0 ||
        get_req(o, "contact", &out->contact) < 0 ||
        get_opt(o, "id", &out->id) < 0) {
        json_decref(o);
        outref_free_fields(out);
        error_set(err, COND_BAD_REQUEST, false, "malformed receipt mapping");
        return -1;
    }
    out->receipt = json_is_true(json_object_get(o, "receipt"));
    json_decref(o);
    return 0;
}

/* ---- outbound queue ----------------------------------------------------*/

#define OUT_CONCURRENCY 64
/* reads of one outbound stream in flight at once, entries per read */
#define OUT_MAX_READS 2
#define OUT_READ_MAX 64
/* how often a reader also reclaims a dead peer's entries (XAUTOCLAIM) */
#define OUT_CLAIM_EVERY_MS 1000
#define OUT_MAX_AGE_S 86400
#define OUT_RETRY_BASE_MS 1000
#define OUT_RETRY_CAP_MS 300000
#define OUT_CLAIM_IDLE_MS 35000
#define MOVE_MS 500
#define MOVE_BATCH 100
#define RECEIPT_TTL_S (7 * 24 * 3600)
#define PUSH_WINDOW_MS 30000
#define PUSH_BASE_MS 200
#define PUSH_CAP_MS 5000
#define UID_TTL_S 3600
#define FINISH_BASE_MS 200
#define FINISH_CAP_MS 5000

enum ojob_state {
    OJ_SENDING,     /* the send fn has not called done yet */
    OJ_FINISHING,   /* the finish script is in flight */
    OJ_FINISH_WAIT, /* the finish script failed: retried from the poll */
};

struct ojob;

struct qout {
    struct queue *q;
    struct qout *next;
    char *gw;
    char *stream; /* "out:<gw>" */
    char *dead;   /* "dead:out:<gw>" */
    char *in;     /* "in:<gw>": notices for senders */
    struct outbound_conf c;
    outbound_send_fn *fn;
    void *arg;
    unsigned reads;    /* reads in flight */
    unsigned reserved; /* entries those reads may bring */
    bool want_read;    /* something may be waiting: read without a tick */
    bool moving, touching;
    uint64_t next_move, next_touch, next_claim;
    struct ojob *jobs; /* entries this process holds, by state */
    size_t n_jobs;
};

struct ojob {
    struct qout *o;
    struct ojob *prev, *next;
    char *id;
    struct outmsg m;
    bool have_msg;
    enum ojob_state state;
    bool send_done; /* the send fn called done */
    /* the finish, kept as it is retried */
    struct store_finish f;
    char *rcpt_value, *rcpt_pid, *retry_payload, *dead_payload, *notice;
    unsigned finish_attempt;
    uint64_t finish_at;
};

struct opush {
    struct queue *q;
    struct opush *prev, *next;
    char *gw, *stream, *uid, *json;
    char *sender; /* bare JID of the sender; NULL if malformed */
    store_done_fn *fn;
    void *arg;
    uint64_t deadline;
    unsigned attempt;
    struct event *timer;
};

/* Wall-clock milliseconds: shared with other processes through Redis. */
static uint64_t wall_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void conf_defaults(struct outbound_conf *c)
{
    if (!c->concurrency)
        c->concurrency = OUT_CONCURRENCY;
    if (!c->max_age_s)
        c->max_age_s = OUT_MAX_AGE_S;
    if (!c->retry_base_ms)
        c->retry_base_ms = OUT_RETRY_BASE_MS;
    if (!c->retry_cap_ms)
        c->retry_cap_ms = OUT_RETRY_CAP_MS;
    if (c->retry_cap_ms < c->retry_base_ms)
        c->retry_cap_ms = c->retry_base_ms;
    if (!c->claim_idle_ms)
        c->claim_idle_ms = OUT_CLAIM_IDLE_MS;
}

static struct qout *find_out(struct queue *q, const char *gw)
{
    for (struct qout *o = q->outs; o; o = o->next)
        if (str_ieq(o->gw, gw))
            return o;
    return NULL;
}

void queue_outbound_register(struct queue *q, const char *gw,
                             const struct outbound_conf *c,
                             outbound_send_fn *fn, void *arg)
{
    struct qout *o = find_out(q, gw);

    if (!o) {
        o = xcalloc(1, sizeof(*o));
        o->q = q;
        o->gw = xstrdup(gw);
        o->stream = xasprintf("out:%s", gw);
        o->dead = xasprintf("dead:out:%s", gw);
        o->in = xasprintf("in:%s", gw);
        o->next = q->outs;
        q->outs = o;
    }
    if (c)
        o->c = *c;
    conf_defaults(&o->c);
    o->fn = fn;
    o->arg = arg;
    o->want_read = true;
    kick(q);
}

static void outs_want_read(struct queue *q)
{
    for (struct qout *o = q->outs; o; o = o->next)
        o->want_read = true;
}

size_t queue_inflight(const struct queue *q)
{
    size_t n = q->n_push;

    for (const struct qout *o = q->outs; o; o = o->next)
        n += o->n_jobs;
    return n;
}

/* ---- jobs ----*/

static void job_free(struct ojob *j)
{
    struct qout *o = j->o;
    struct queue *q = o->q;

    if (j->prev)
        j->prev->next = j->next;
    else
        o->jobs = j->next;
    if (j->next)
        j->next->prev = j->prev;
    o->n_jobs--;
    free(j->id);
    outmsg_free_fields(&j->m);
    free(j->rcpt_value);
    free(j->rcpt_pid);
    free(j->retry_payload);
    free(j->dead_payload);
    free(j->notice);
    free(j);
    q_release(q);
}

static struct ojob *job_find(const struct qout *o, const char *id)
{
    for (struct ojob *j = o->jobs; j; j = j->next)
        if (strcmp(j->id, id) == 0)
            return j;
    return NULL;
}

static void finish_done(const struct error *err, const char *value, void *arg)
{
    struct ojob *j = arg;
    struct qout *o = j->o;
    struct queue *q = o->q;

    if (q->freed) {
        job_free(j);
        return;
    }
    if (err) {
        uint64_t d =
            backoff_ms(j->finish_attempt, FINISH_BASE_MS, FINISH_CAP_MS);
        if (j->finish_attempt < 20)
            j->finish_attempt++;
        /* kept (and its idle time refreshed): re-reading it would send
         * it a second time */
        log_warn(MOD, "out[%s]: cannot acknowledge %s (%s); retrying in %u ms",
                 o->gw, j->id, err->msg, (unsigned)d);
        j->state = OJ_FINISH_WAIT;
        j->finish_at = now_ms() + d;
        return;
    }
    if (value && strcmp(value, "0") == 0)
        log_notice(MOD,
                   "out[%s]: %s was taken over by another process; its "
                   "outcome is theirs",
                   o->gw, j->id);
    if (j->notice) {
        /* the script wrote a notice for the sender into "in:<gw>" */
        struct qgw *g = find_gw(q, o->gw);
        if (g)
            g->want_read = true;
        kick(q);
    }
    if (o->want_read)
        kick(q);
    job_free(j);
}

static void run_finish(struct ojob *j)
{
    struct qout *o = j->o;
    struct queue *q = o->q;

    j->state = OJ_FINISHING;
    j->f.receipt_id = j->rcpt_pid;
    j->f.receipt_value = j->rcpt_value;
    j->f.retry_payload = j->retry_payload;
    j->f.dead_payload = j->dead_payload;
    j->f.notice_payload = j->notice;
    store_stream_finish(q->store, o->stream, GROUP, q->consumer, j->id, &j->f,
                        finish_done, j);
}

/* An error notice for the sender of j->m, as JSON (owned). */
static char *error_notice(const struct outmsg *m, int cond, bool temporary,
                          const char *text)
{
    struct inmsg n;
    char *json;

    memset(&n, 0, sizeof(n));
    n.kind = INMSG_ERROR;
    n.jid = m->from_jid;
    n.contact = m->to_jid;
    n.ref_id = m->id;
    n.cond = cond;
    n.temporary = temporary;
    n.text = (char *)(uintptr_t)text;
    n.body = m->body;
    /* borrowed fields: never freed through n */
    json = inmsg_to_json(&n);
    return json;
}

static char *with_error(const struct outmsg *m, unsigned attempt,
                        const char *why)
{
    struct outmsg c = *m;

    c.attempt = attempt;
    c.last_error = (char *)(uintptr_t)why;
    return outmsg_to_json(&c);
}

/* Out of time: dead letter + remote-server-timeout to the sender. */
static void job_expire(struct ojob *j, const char *why)
{
    struct qout *o = j->o;
    char text[160];
    unsigned hours = (o->c.max_age_s + 3599) / 3600;

    log_notice(MOD, "out[%s]: %s not sent within %u s; dead letter (%s)", o->gw,
               j->id, o->c.max_age_s, why);
    snprintf(text, sizeof(text),
             "Not sent: the provider could not be reached for %u hour%s "
             "(%.80s)",
             hours, hours == 1 ? "" : "s", why);
    j->f.check_owner = true;
    j->f.dead_name = o->dead;
    j->dead_payload = with_error(&j->m, j->m.attempt, why);
    j->f.notice_name = o->in;
    j->notice = error_notice(&j->m, COND_REMOTE_SERVER_TIMEOUT, true, text);
    metrics_dead_letter(o->gw);
    run_finish(j);
}

static void out_send_done(void *arg, const struct error *err,
                          const char *provider_id, unsigned retry_after_ms)
{
    struct ojob *j = arg;
    struct qout *o = j->o;
    struct queue *q = o->q;
    uint64_t now = wall_ms();
    uint64_t deadline;

    if (j->send_done) {
        log_err(MOD, "out[%s]: send of %s completed twice (ignored)", o->gw,
                j->id);
        return;
    }
    j->send_done = true;
    if (q->freed) {
        /* nothing may touch the store now: the entry stays pending and
         * is reclaimed at the next start */
        job_free(j);
        return;
    }
    deadline = (uint64_t)j->m.enqueued_at + (uint64_t)o->c.max_age_s * 1000u;
    if (!err) {
        if (provider_id && *provider_id) {
            struct outref r = {j->m.from_jid, j->m.id, j->m.to_jid,
                               j->m.receipt};
            j->rcpt_pid = xstrdup(provider_id);
            j->rcpt_value = outref_to_json(&r);
            j->f.receipt_gw = o->gw;
            j->f.receipt_ttl_s = RECEIPT_TTL_S;
        }
        if (now >= (uint64_t)j->m.enqueued_at)
            metrics_latency(o->gw,
                            (double)(now - (uint64_t)j->m.enqueued_at) / 1e3);
        log_info(MOD, "out[%s]: %s sent (attempt %u)", o->gw, j->id,
                 j->m.attempt + 1);
        run_finish(j);
        return;
    }
    if (err->temporary) {
        metrics_provider_error(o->gw, "temporary");
        if (now >= deadline) {
            job_expire(j, err->msg);
            return;
        }
        uint64_t d = backoff_ms(j->m.attempt < 30 ? j->m.attempt : 30,
                                o->c.retry_base_ms, o->c.retry_cap_ms);
        /* the provider's Retry-After, within our own cap */
        uint64_t ra = retry_after_ms;
        if ((uint64_t)err->retry_after_s * 1000u > ra)
            ra = (uint64_t)err->retry_after_s * 1000u;
        if (ra > o->c.retry_cap_ms)
            ra = o->c.retry_cap_ms;
        if (ra > d)
            d = ra;
        uint64_t due = now + d < deadline ? now + d : deadline;
        j->f.check_owner = true;
        j->retry_payload = with_error(&j->m, j->m.attempt + 1, err->msg);
        j->f.retry_due_ms = due;
        metrics_retry(o->gw);
        log_info(MOD, "out[%s]: %s failed (%s); retry %u in %llu ms", o->gw,
                 j->id, err->msg, j->m.attempt + 1,
                 (unsigned long long)(due - now));
        run_finish(j);
        return;
    }
    metrics_provider_error(o->gw, "permanent");
    log_info(MOD, "out[%s]: %s refused: %s", o->gw, j->id, err->msg);
    j->f.check_owner = true;
    j->f.notice_name = o->in;
    j->notice = error_notice(
        &j->m, err->code != COND_NONE ? err->code : COND_NOT_ACCEPTABLE, false,
        err->msg[0] ? err->msg : "Not sent");
    run_finish(j);
}

static void job_start(struct qout *o, const struct store_entry *e)
{
    struct queue *q = o->q;
    struct ojob *j = xcalloc(1, sizeof(*j));
    struct error err;

    j->o = o;
    j->id = xstrdup(e->id);
    j->next = o->jobs;
    if (o->jobs)
        o->jobs->prev = j;
    o->jobs = j;
    o->n_jobs++;
    q_hold(q);
    if (outmsg_from_json(e->payload, &j->m, &err) < 0) {
        /* kept as it was for the operator: never silently dropped */
        log_warn(MOD, "out[%s]: entry %s: %s; dead letter", o->gw, e->id,
                 err.msg);
        j->f.check_owner = true;
        j->f.dead_name = o->dead;
        j->dead_payload = xstrdup(e->payload);
        metrics_dead_letter(o->gw);
        run_finish(j);
        return;
    }
    j->have_msg = true;
    if (e->owner_checked) {
        j->m.sender_checked = true;
        j->m.sender_addr = e->owner ? xstrdup(e->owner) : NULL;
    }
    if (wall_ms() >=
        (uint64_t)j->m.enqueued_at + (uint64_t)o->c.max_age_s * 1000u) {
        job_expire(j, j->m.last_error ? j->m.last_error
                                      : "waited too long in the queue");
        return;
    }
    if (e->deliveries > 1)
        log_notice(MOD,
                   "out[%s]: %s reclaimed from a stalled or dead process "
                   "(delivery %u); sending it",
                   o->gw, e->id, e->deliveries);
    j->state = OJ_SENDING;
    o->fn(o->arg, &j->m, out_send_done, j);
}

struct oread {
    struct qout *o;
    unsigned n; /* entries asked for (reserved) */
};

static void out_read_done(const struct error *err,
                          const struct store_entry *entries, size_t n,
                          void *arg)
{
    struct oread *r = arg;
    struct qout *o = r->o;
    struct queue *q = o->q;

    o->reads--;
    o->reserved -= r->n;
    if (err && !q->freed)
        log_warn(MOD, "out[%s]: cannot read the queue: %s", o->gw, err->msg);
    for (size_t i = 0; !err && !q->freed && i < n; i++) {
        /* our own send still in flight, reclaimed by XAUTOCLAIM */
        if (job_find(o, entries[i].id))
            continue;
        job_start(o, &entries[i]);
    }
    /* a full read: more may be waiting */
    if (!err && n >= r->n)
        o->want_read = true;
    if (o->want_read && !q->freed)
        kick(q);
    free(r);
    q_release(q);
}

/*
 * Reads as many entries as there are free send slots (reads in flight
 * count theirs), at most OUT_MAX_READS reads at once. Issued right after
 * a local push, so that the push and the read travel in one write and one
 * round trip. The senders' registrations come back with the entries.
 */
static void out_read(struct qout *o)
{
    struct queue *q = o->q;
    size_t busy = o->n_jobs + o->reserved;
    struct store_read rd;
    struct oread *r;
    uint64_t now;
    unsigned n;

    if (q->stopped || q->freed || !o->fn || !store_connected(q->store))
        return;
    if (o->reads >= OUT_MAX_READS || busy >= o->c.concurrency) {
        o->want_read = true; /* a read or a send completing reads again */
        return;
    }
    n = (unsigned)(o->c.concurrency - busy);
    if (n > OUT_READ_MAX)
        n = OUT_READ_MAX;
    now = now_ms();
    memset(&rd, 0, sizeof(rd));
    rd.group = GROUP;
    rd.consumer = q->consumer;
    rd.count = n;
    rd.min_idle_ms = o->c.claim_idle_ms;
    rd.claim = now >= o->next_claim;
    if (rd.claim)
        o->next_claim = now + OUT_CLAIM_EVERY_MS;
    rd.owner_gw = o->gw;
    r = xcalloc(1, sizeof(*r));
    r->o = o;
    r->n = n;
    o->reads++;
    o->reserved += n;
    o->want_read = false;
    q_hold(q);
    store_stream_read_ex(q->store, o->stream, &rd, out_read_done, r);
}

static void move_done(const struct error *err, const char *value, void *arg)
{
    struct qout *o = arg;
    struct queue *q = o->q;
    long moved = value ? atol(value) : 0;

    o->moving = false;
    if (err && !q->freed)
        log_warn(MOD, "out[%s]: cannot move due retries: %s", o->gw, err->msg);
    if (!err && moved > 0 && !q->freed) {
        log_debug(MOD, "out[%s]: %ld retries due", o->gw, moved);
        if (moved >= MOVE_BATCH)
            o->next_move = 0;
        kick(q);
    }
    q_release(q);
}

static void touch_done(const struct error *err, void *arg)
{
    struct qout *o = arg;
    struct queue *q = o->q;

    o->touching = false;
    if (err && !q->freed) {
        log_warn(MOD, "out[%s]: cannot refresh sends in flight: %s", o->gw,
                 err->msg);
        o->next_touch = now_ms() + 1000;
    }
    q_release(q);
}

static void poll_out(struct queue *q, struct qout *o)
{
    uint64_t now = now_ms();

    for (struct ojob *j = o->jobs; j; j = j->next)
        if (j->state == OJ_FINISH_WAIT && j->finish_at <= now)
            run_finish(j);
    if (o->jobs && !o->touching && now >= o->next_touch) {
        struct strbuf b;
        sb_init(&b);
        for (struct ojob *j = o->jobs; j; j = j->next)
            sb_printf(&b, "%s%s", b.len ? "," : "", j->id);
        o->touching = true;
        o->next_touch = now + o->c.claim_idle_ms / 4;
        q_hold(q);
        store_stream_touch(q->store, o->stream, GROUP, q->consumer, b.s,
                           touch_done, o);
        sb_free(&b);
    }
    if (q->stopped || !o->fn)
        return;
    if (!o->moving && now >= o->next_move) {
        o->moving = true;
        o->next_move = now + MOVE_MS;
        q_hold(q);
        store_retry_move(q->store, o->stream, wall_ms(), MOVE_BATCH, move_done,
                         o);
    }
    /* the tick reads once in a while (other processes' pushes, reclaim);
     * otherwise only when something may be waiting */
    if (o->want_read || (q->tick && o->reads == 0))
        out_read(o);
}

static void poll_outs(struct queue *q)
{
    for (struct qout *o = q->outs; o; o = o->next)
        poll_out(q, o);
}

/* queue_free: waiting acknowledgements can no longer be retried. */
static void outs_abort(struct queue *q)
{
    for (struct qout *o = q->outs; o; o = o->next) {
        struct ojob *j = o->jobs;
        while (j) {
            struct ojob *next = j->next;
            if (j->state == OJ_FINISH_WAIT) {
                log_warn(MOD,
                         "out[%s]: %s stays pending (unacknowledged at exit)",
                         o->gw, j->id);
                job_free(j);
            }
            j = next;
        }
    }
}

static void outs_destroy(struct queue *q)
{
    while (q->outs) {
        struct qout *o = q->outs;
        q->outs = o->next;
        /* only jobs whose send never completed can be left */
        while (o->jobs) {
            struct ojob *j = o->jobs;
            o->jobs = j->next;
            free(j->id);
            outmsg_free_fields(&j->m);
            free(j->rcpt_value);
            free(j->rcpt_pid);
            free(j->retry_payload);
            free(j->dead_payload);
            free(j->notice);
            free(j);
        }
        free(o->gw);
        free(o->stream);
        free(o->dead);
        free(o->in);
        free(o);
    }
}

/* ---- push ----*/

static void opush_free(struct opush *p)
{
    struct queue *q = p->q;

    if (p->prev)
        p->prev->next = p->next;
    else
        q->pushes = p->next;
    if (p->next)
        p->next->prev = p->prev;
    q->n_push--;
    if (p->timer)
        event_free(p->timer);
    free(p->gw);
    free(p->stream);
    free(p->uid);
    free(p->json);
    free(p->sender);
    free(p);
    q_release(q);
}

static void opush_send(struct opush *p);

static void opush_done(const struct error *err, const char *id, void *arg)
{
    struct opush *p = arg;
    struct queue *q = p->q;

    if (err && err->temporary && !q->freed && now_ms() < p->deadline) {
        struct timeval tv;
        uint64_t d = backoff_ms(p->attempt, PUSH_BASE_MS, PUSH_CAP_MS);
        if (p->attempt < 20)
            p->attempt++;
        log_warn(MOD,
                 "out[%s]: cannot persist a message (%s); retrying in %u "
                 "ms",
                 p->gw, err->msg, (unsigned)d);
        tv.tv_sec = (time_t)(d / 1000);
        tv.tv_usec = (suseconds_t)((d % 1000) * 1000);
        event_add(p->timer, &tv);
        return;
    }
    if (err)
        log_warn(MOD, "out[%s]: message not persisted: %s", p->gw, err->msg);
    else
        log_debug(MOD, "out[%s]: persisted %s (%s)", p->gw, p->uid,
                  id ? id : "already there");
    p->fn(err, p->arg);
    if (!err && !q->freed) {
        struct qout *o = find_out(q, p->gw);
        if (o && o->want_read)
            kick(q);
    }
    opush_free(p);
}

static void opush_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    opush_send(arg);
}

static void opush_send(struct opush *p)
{
    struct qout *o = find_out(p->q, p->gw);

    /* the uid makes a repeated add (its first answer timed out, yet Redis
     * ran it) a no-op; the sender lets the reader check the registration
     * in its own script */
    store_stream_add_sender(p->q->store, p->stream, p->uid, UID_TTL_S, p->json,
                            p->sender, opush_done, p);
    /* pipelined behind the add: Redis runs it after, so it sees the entry */
    if (o)
        out_read(o);
}

void queue_outbound_push(struct queue *q, const char *gw,
                         const struct outmsg *m, store_done_fn *fn, void *arg)
{
    struct opush *p = xcalloc(1, sizeof(*p));
    struct outmsg c = *m;
    char uid[33];

    if (!c.uid || !*c.uid) {
        random_hex(uid, 16);
        c.uid = uid;
    }
    if (!c.enqueued_at)
        c.enqueued_at = (int64_t)wall_ms();
    p->q = q;
    p->gw = xstrdup(gw);
    p->stream = xasprintf("out:%s", gw);
    p->uid = xstrdup(c.uid);
    p->json = outmsg_to_json(&c);
    {
        char bare[JID_MAX];
        if (c.from_jid && jid_bare(c.from_jid, bare, sizeof(bare)) == 0)
            p->sender = xstrdup(bare);
    }
    p->fn = fn;
    p->arg = arg;
    p->deadline = now_ms() + PUSH_WINDOW_MS;
    p->timer = event_new(q->base, -1, 0, opush_timer, p);
    p->next = q->pushes;
    if (q->pushes)
        q->pushes->prev = p;
    q->pushes = p;
    q->n_push++;
    q_hold(q);
    opush_send(p);
}

/* queue_free: pushes waiting for a retry fail now. */
static void pushes_abort(struct queue *q)
{
    struct opush *p = q->pushes;

    while (p) {
        struct opush *next = p->next;
        if (event_pending(p->timer, EV_TIMEOUT, NULL)) {
            struct error e;
            error_set(&e, COND_REMOTE_SERVER_TIMEOUT, true,
                      "The message could not be stored; try again later");
            event_del(p->timer);
            p->fn(&e, p->arg);
            opush_free(p);
        }
        p = next;
    }
}
