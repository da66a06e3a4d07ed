/*
 * queue: the durable inbound queue (see queue.h) and the JSON form of an
 * inbound message. Owns one Redis stream per registered gateway
 * ("in:<gw>", group "postern") and the polling that feeds its deliver_fn.
 *
 * Per gateway, at most one batch is in flight and its entries are
 * delivered one after the other, so order is kept and an entry is never
 * handed to XMPP twice at the same time by this process. An entry is
 * acknowledged (XACK + XDEL) only after DELIVER_OK or DELIVER_DROP; a
 * malformed payload is logged and acknowledged so it can never block the
 * stream. DELIVER_RETRY ends the batch and leaves it and the rest of the
 * batch pending on this consumer: they are read again with
 * store_stream_read_own after a backoff, or reclaimed by any process once
 * idle for RECLAIM_IDLE_MS (a crashed peer). The per-entry delivery count
 * comes from the stream's pending list (exact for Redis >= 6.2).
 *
 * Only this file uses jansson for messages. Never: block, deliver while
 * the gateway's ready() is false, log a message body above debug.
 */
#include "queue.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <jansson.h>

#include "log.h"

#define MOD "queue"
#define GROUP "postern"
#define POLL_MS 150
#define BATCH 16
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

int inmsg_from_json(const char *json, struct inmsg *out, struct error *err)
{
    json_error_t je;
    json_t *o = NULL, *media;
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

struct qgw {
    struct queue *q;
    struct qgw *next;
    char *gw;
    char *stream; /* "in:<gw>" */
    deliver_fn *fn;
    ready_fn *ready;
    void *arg;

    bool reading;              /* a store read is in flight */
    bool reading_own;          /* ... of our own pending entries */
    bool delivering;           /* deliver_fn has not called done yet */
    bool in_next;              /* batch_next is on the stack */
    struct store_entry *batch; /* owned copies */
    size_t n, pos;
    struct inmsg msg; /* the entry being delivered */

    bool retry; /* own pending entries wait for a retry */
    unsigned retry_attempt;
    uint64_t retry_at;

    char **acks; /* ids whose ack failed: retried first */
    size_t n_acks;
};

struct queue {
    struct event_base *base;
    struct store *store;
    char *consumer;
    struct qgw *gws;
    struct event *poll_ev;
    struct event *kick_ev;
    bool stopped;
    bool freed;
    unsigned ops; /* store callbacks and deliveries outstanding */
};

static void poll_all(struct queue *q);

static void queue_destroy(struct queue *q)
{
    while (q->gws) {
        struct qgw *g = q->gws;
        q->gws = g->next;
        for (size_t i = 0; i < g->n; i++) {
            free(g->batch[i].id);
            free(g->batch[i].payload);
        }
        free(g->batch);
        inmsg_free_fields(&g->msg);
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

struct queue *queue_new(struct event_base *base, struct store *store,
                        const char *consumer)
{
    struct queue *q = xcalloc(1, sizeof(*q));
    struct timeval tv = {0, POLL_MS * 1000};

    q->base = base;
    q->store = store;
    q->consumer = xstrdup(consumer);
    q->poll_ev = event_new(base, -1, EV_PERSIST, poll_cb, q);
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
    if (q->ops == 0)
        queue_destroy(q);
}

void queue_stop(struct queue *q)
{
    q->stopped = true;
    event_del(q->poll_ev);
    event_del(q->kick_ev);
}

void queue_kick(struct queue *q)
{
    if (!q->stopped)
        event_active(q->kick_ev, EV_TIMEOUT, 0);
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
    queue_kick(q);
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
    if (!q_release(q) && !err && id && find_gw(q, p->gw))
        queue_kick(q);
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

struct ack {
    struct qgw *g;
    char *id;
};

static void ack_done(const struct error *err, void *arg)
{
    struct ack *a = arg;
    struct qgw *g = a->g;
    struct queue *q = g->q;

    if (err && !q->freed) {
        /* delivered but not acknowledged: keep it so a re-read of our
         * pending entries does not deliver it a second time */
        log_warn(MOD, "in[%s]: ack of %s failed (%s); will retry", g->gw, a->id,
                 err->msg);
        if (g->n_acks < MAX_PENDING_ACKS) {
            g->acks = xrealloc(g->acks, (g->n_acks + 1) * sizeof(*g->acks));
            g->acks[g->n_acks++] = a->id;
            a->id = NULL;
        }
    }
    free(a->id);
    free(a);
    q_release(q);
}

static void ack(struct qgw *g, const char *id)
{
    struct ack *a = xcalloc(1, sizeof(*a));
    a->g = g;
    a->id = xstrdup(id);
    q_hold(g->q);
    store_stream_ack(g->q->store, g->stream, GROUP, id, ack_done, a);
}

static bool ack_pending(const struct qgw *g, const char *id)
{
    for (size_t i = 0; i < g->n_acks; i++)
        if (strcmp(g->acks[i], id) == 0)
            return true;
    return false;
}

/* ---- delivery ----------------------------------------------------------*/

static void batch_free(struct qgw *g)
{
    for (size_t i = 0; i < g->n; i++) {
        free(g->batch[i].id);
        free(g->batch[i].payload);
    }
    free(g->batch);
    g->batch = NULL;
    g->n = g->pos = 0;
}

static void batch_next(struct qgw *g);

static void deliver_done(enum deliver_result r, void *arg)
{
    struct qgw *g = arg;
    struct queue *q = g->q;
    struct store_entry *e = &g->batch[g->pos];

    g->delivering = false;
    inmsg_free_fields(&g->msg);
    if (q->freed) {
        g->pos = g->n;
    } else if (r == DELIVER_RETRY) {
        uint64_t d = backoff_ms(g->retry_attempt, RETRY_BASE_MS, RETRY_CAP_MS);
        if (g->retry_attempt < 20)
            g->retry_attempt++;
        g->retry = true;
        g->retry_at = now_ms() + d;
        log_info(MOD, "in[%s]: delivery of %s postponed (%u ms)", g->gw, e->id,
                 (unsigned)d);
        /* the rest of the batch stays pending too, to keep the order */
        g->pos = g->n;
    } else {
        if (r == DELIVER_DROP)
            log_info(MOD, "in[%s]: %s dropped as undeliverable", g->gw, e->id);
        else
            g->retry_attempt = 0;
        ack(g, e->id);
        g->pos++;
    }
    if (!g->in_next)
        batch_next(g);
    q_release(q);
}

/* Delivers the batch in order; done may run synchronously. */
static void batch_next(struct qgw *g)
{
    struct queue *q = g->q;
    struct error err;

    g->in_next = true;
    while (g->pos < g->n && !g->delivering) {
        struct store_entry *e = &g->batch[g->pos];
        if (q->freed || q->stopped || (g->ready && !g->ready(g->arg))) {
            /* left pending on us: re-read after a short wait */
            g->retry = true;
            g->retry_at = now_ms() + RETRY_BASE_MS;
            g->pos = g->n;
            break;
        }
        if (inmsg_from_json(e->payload, &g->msg, &err) < 0) {
            log_warn(MOD, "in[%s]: entry %s: %s; dropped", g->gw, e->id,
                     err.msg);
            ack(g, e->id);
            g->pos++;
            continue;
        }
        if (e->deliveries > 1)
            log_info(MOD, "in[%s]: delivering %s again (delivery %u)", g->gw,
                     e->id, e->deliveries);
        g->delivering = true;
        q_hold(q);
        g->fn(g->arg, &g->msg, deliver_done, g);
    }
    g->in_next = false;
    if (g->pos >= g->n && !g->delivering) {
        batch_free(g);
        /* more may be waiting: look again now rather than in POLL_MS */
        if (!q->freed && !q->stopped && !g->retry)
            queue_kick(q);
    }
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
        if (own) {
            g->retry = true;
            g->retry_at = now_ms() + RETRY_BASE_MS;
        }
        q_release(q);
        return;
    }
    if (own && n >= BATCH) {
        /* more of our own may be waiting: read those before new ones */
        g->retry = true;
        g->retry_at = 0;
    }
    g->batch = xcalloc(n + 1, sizeof(*g->batch));
    g->n = 0;
    g->pos = 0;
    for (size_t i = 0; i < n; i++) {
        /* an entry delivered whose ack is still to be retried */
        if (ack_pending(g, entries[i].id))
            continue;
        g->batch[g->n].id = xstrdup(entries[i].id);
        g->batch[g->n].payload = xstrdup(entries[i].payload);
        g->batch[g->n].deliveries = entries[i].deliveries;
        g->n++;
    }
    if (g->n == 0) {
        batch_free(g);
    } else {
        batch_next(g);
    }
    q_release(q);
}

static void poll_gw(struct queue *q, struct qgw *g)
{
    if (g->reading || g->delivering || g->n || !g->fn)
        return;
    if (g->ready && !g->ready(g->arg))
        return;
    if (g->n_acks) {
        /* finish acknowledging before anything is read again */
        size_t n = g->n_acks;
        char **ids = g->acks;
        g->acks = NULL;
        g->n_acks = 0;
        for (size_t i = 0; i < n; i++) {
            ack(g, ids[i]);
            free(ids[i]);
        }
        free(ids);
        return;
    }
    /* retried entries go first: nothing new overtakes them */
    if (g->retry && now_ms() < g->retry_at)
        return;
    g->reading = true;
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

static void poll_all(struct queue *q)
{
    if (q->stopped || !store_connected(q->store))
        return;
    for (struct qgw *g = q->gws; g; g = g->next)
        poll_gw(q, g);
}
