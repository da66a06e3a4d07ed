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
 * Only this file parses the stored JSON (jansson only as a fallback). Never:
 * block, deliver while the gateway's ready() is false, log a message body above
 * debug.
 */
#include "queue.h"

#include <inttypes.h>
#include <limits.h>
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

/*
 * The codec writes JSON directly and reads it with a small parser built
 * for these flat objects (strings, integers, booleans, null, arrays of
 * strings): building and walking jansson's hash tables cost more than the
 * rest of a message's handling. The parser accepts exactly what jansson
 * (JSON_REJECT_DUPLICATES) accepts: whatever it does not model (nested
 * objects, arrays holding anything but strings, numbers that are not
 * integers, nesting deeper than it follows) is handed to jansson and
 * converted, so both paths share one validation.
 */

/* ,"key":"value" (the first member opens the object). */
static void jw_key(struct strbuf *b, const char *key)
{
    sb_putc(b, b->len ? ',' : '{');
    sb_putc(b, '"');
    sb_puts(b, key);
    sb_puts(b, "\":");
}

static void jw_kstr(struct strbuf *b, const char *key, const char *v)
{
    jw_key(b, key);
    json_quote(b, v);
}

static void jw_opt(struct strbuf *b, const char *key, const char *v)
{
    if (v)
        jw_kstr(b, key, v);
}

static void jw_kint(struct strbuf *b, const char *key, long long v)
{
    jw_key(b, key);
    sb_printf(b, "%lld", v);
}

static void jw_kbool(struct strbuf *b, const char *key, bool v)
{
    jw_key(b, key);
    sb_puts(b, v ? "true" : "false");
}

static void jw_media(struct strbuf *b, char *const *media, size_t n)
{
    jw_key(b, "media");
    sb_putc(b, '[');
    for (size_t i = 0; i < n; i++) {
        if (i)
            sb_putc(b, ',');
        json_quote(b, media[i]);
    }
    sb_putc(b, ']');
}

static char *jw_end(struct strbuf *b)
{
    sb_putc(b, '}');
    return sb_steal(b);
}

/* ---- reading ---- */

enum jtype { JT_STR, JT_INT, JT_TRUE, JT_FALSE, JT_NULL, JT_STRARR, JT_OTHER };

struct jfield {
    char *key;
    enum jtype t;
    char *s; /* JT_STR */
    long long i;
    char **arr; /* JT_STRARR */
    size_t n_arr;
};

struct jdoc {
    struct jfield *f;
    size_t n, cap;
};

static void jdoc_free(struct jdoc *d)
{
    for (size_t i = 0; i < d->n; i++) {
        free(d->f[i].key);
        free(d->f[i].s);
        for (size_t k = 0; k < d->f[i].n_arr; k++)
            free(d->f[i].arr[k]);
        free(d->f[i].arr);
    }
    free(d->f);
    memset(d, 0, sizeof(*d));
}

static const struct jfield *jdoc_get(const struct jdoc *d, const char *key)
{
    for (size_t i = 0; i < d->n; i++)
        if (strcmp(d->f[i].key, key) == 0)
            return &d->f[i];
    return NULL;
}

static struct jfield *jdoc_add(struct jdoc *d, char *key)
{
    struct jfield *f;

    if (d->n == d->cap) {
        d->cap = d->cap ? d->cap * 2 : 16;
        d->f = xrealloc(d->f, d->cap * sizeof(*d->f));
    }
    f = &d->f[d->n++];
    memset(f, 0, sizeof(*f));
    f->key = key;
    return f;
}

enum { JP_OK = 0, JP_BAD = -1, JP_JANSSON = 1 };

struct jp {
    const char *p, *end;
};

static void jp_ws(struct jp *j)
{
    while (j->p < j->end &&
           (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

static int hex4(const char *p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int h = p[i];
        if (h >= '0' && h <= '9')
            h -= '0';
        else if (h >= 'a' && h <= 'f')
            h -= 'a' - 10;
        else if (h >= 'A' && h <= 'F')
            h -= 'A' - 10;
        else
            return -1;
        v = v * 16 + (unsigned)h;
    }
    *out = v;
    return 0;
}

static void put_utf8(struct strbuf *b, unsigned cp)
{
    char u[4];
    size_t n;

    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xc0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xe0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        u[2] = (char)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        u[0] = (char)(0xf0 | (cp >> 18));
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
        u[3] = (char)(0x80 | (cp & 0x3f));
        n = 4;
    }
    sb_append(b, u, n);
}

/*
 * A string at j->p ('"'), decoded into out (owned) when out is non-NULL.
 * As jansson: control characters, invalid UTF-8, lone surrogates and
 * \u0000 are errors.
 */
static int jp_string(struct jp *j, char **out)
{
    struct strbuf b;
    const char *run;

    if (j->p >= j->end || *j->p != '"')
        return JP_BAD;
    j->p++;
    sb_init(&b);
    run = j->p;
    for (;;) {
        unsigned char ch;
        if (j->p >= j->end)
            goto bad;
        ch = (unsigned char)*j->p;
        if (ch == '"') {
            sb_append(&b, run, (size_t)(j->p - run));
            j->p++;
            break;
        }
        if (ch < 0x20)
            goto bad;
        if (ch >= 0x80) {
            size_t l = utf8_seq_len((const unsigned char *)j->p,
                                    (size_t)(j->end - j->p));
            if (!l)
                goto bad;
            j->p += l;
            continue;
        }
        if (ch != '\\') {
            j->p++;
            continue;
        }
        sb_append(&b, run, (size_t)(j->p - run));
        if (j->end - j->p < 2)
            goto bad;
        j->p++;
        switch (*j->p++) {
        case '"':
            sb_putc(&b, '"');
            break;
        case '\\':
            sb_putc(&b, '\\');
            break;
        case '/':
            sb_putc(&b, '/');
            break;
        case 'b':
            sb_putc(&b, '\b');
            break;
        case 'f':
            sb_putc(&b, '\f');
            break;
        case 'n':
            sb_putc(&b, '\n');
            break;
        case 'r':
            sb_putc(&b, '\r');
            break;
        case 't':
            sb_putc(&b, '\t');
            break;
        case 'u': {
            unsigned cp, lo;
            if (j->end - j->p < 4 || hex4(j->p, &cp) < 0)
                goto bad;
            j->p += 4;
            if (cp >= 0xd800 && cp <= 0xdbff) {
                if (j->end - j->p < 6 || j->p[0] != '\\' || j->p[1] != 'u' ||
                    hex4(j->p + 2, &lo) < 0 || lo < 0xdc00 || lo > 0xdfff)
                    goto bad;
                j->p += 6;
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            } else if (cp >= 0xdc00 && cp <= 0xdfff) {
                goto bad;
            }
            if (cp == 0)
                goto bad;
            put_utf8(&b, cp);
            break;
        }
        default:
            goto bad;
        }
        run = j->p;
    }
    if (out)
        *out = sb_steal(&b);
    else
        sb_free(&b);
    return JP_OK;
bad:
    sb_free(&b);
    return JP_BAD;
}

/* A number: JT_INT, or JP_JANSSON for one with a fraction or exponent. */
static int jp_number(struct jp *j, long long *out)
{
    bool neg = false;
    unsigned long long v = 0;

    if (j->p < j->end && *j->p == '-') {
        neg = true;
        j->p++;
    }
    if (j->p >= j->end || *j->p < '0' || *j->p > '9')
        return JP_BAD;
    if (*j->p == '0' && j->p + 1 < j->end && j->p[1] >= '0' && j->p[1] <= '9')
        return JP_BAD;
    while (j->p < j->end && *j->p >= '0' && *j->p <= '9') {
        unsigned d = (unsigned)(*j->p - '0');
        if (v > (ULLONG_MAX - d) / 10)
            return JP_JANSSON;
        v = v * 10 + d;
        j->p++;
    }
    if (j->p < j->end && (*j->p == '.' || *j->p == 'e' || *j->p == 'E'))
        return JP_JANSSON;
    if (v > (unsigned long long)LLONG_MAX + (neg ? 1u : 0u))
        return JP_JANSSON; /* jansson: "too big integer", an error */
    *out = neg ? (long long)(0 - v) : (long long)v;
    return JP_OK;
}

static int jp_literal(struct jp *j, const char *lit)
{
    size_t n = strlen(lit);
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, lit, n) != 0)
        return JP_BAD;
    j->p += n;
    return JP_OK;
}

/* The value of f: anything beyond the model goes to jansson. */
static int jp_value(struct jp *j, struct jfield *f)
{
    int rc;

    jp_ws(j);
    if (j->p >= j->end)
        return JP_BAD;
    switch (*j->p) {
    case '"':
        f->t = JT_STR;
        return jp_string(j, &f->s);
    case 't':
        f->t = JT_TRUE;
        return jp_literal(j, "true");
    case 'f':
        f->t = JT_FALSE;
        return jp_literal(j, "false");
    case 'n':
        f->t = JT_NULL;
        return jp_literal(j, "null");
    case '[':
        j->p++;
        f->t = JT_STRARR;
        jp_ws(j);
        if (j->p < j->end && *j->p == ']') {
            j->p++;
            return JP_OK;
        }
        for (;;) {
            char *s = NULL;
            jp_ws(j);
            if (j->p >= j->end)
                return JP_BAD;
            if (*j->p != '"')
                return JP_JANSSON;
            rc = jp_string(j, &s);
            if (rc != JP_OK)
                return rc;
            f->arr = xrealloc(f->arr, (f->n_arr + 1) * sizeof(*f->arr));
            f->arr[f->n_arr++] = s;
            jp_ws(j);
            if (j->p < j->end && *j->p == ',') {
                j->p++;
                continue;
            }
            if (j->p < j->end && *j->p == ']') {
                j->p++;
                return JP_OK;
            }
            return JP_BAD;
        }
    case '{':
        return JP_JANSSON;
    default:
        f->t = JT_INT;
        return jp_number(j, &f->i);
    }
}

static int jp_object(const char *json, size_t len, struct jdoc *d)
{
    struct jp j = {json, json + len};

    jp_ws(&j);
    if (j.p >= j.end)
        return JP_BAD;
    if (*j.p == '[')
        return JP_JANSSON; /* valid JSON, not an object: jansson says so */
    if (*j.p != '{')
        return JP_BAD;
    j.p++;
    jp_ws(&j);
    if (j.p < j.end && *j.p == '}') {
        j.p++;
    } else {
        for (;;) {
            char *key = NULL;
            struct jfield *f;
            int rc;

            jp_ws(&j);
            if (jp_string(&j, &key) != JP_OK)
                return JP_BAD;
            if (jdoc_get(d, key)) {
                free(key);
                return JP_BAD; /* JSON_REJECT_DUPLICATES */
            }
            f = jdoc_add(d, key);
            jp_ws(&j);
            if (j.p >= j.end || *j.p != ':')
                return JP_BAD;
            j.p++;
            rc = jp_value(&j, f);
            if (rc != JP_OK)
                return rc;
            jp_ws(&j);
            if (j.p < j.end && *j.p == ',') {
                j.p++;
                continue;
            }
            if (j.p < j.end && *j.p == '}') {
                j.p++;
                break;
            }
            return JP_BAD;
        }
    }
    jp_ws(&j);
    return j.p == j.end ? JP_OK : JP_BAD;
}

/* The fallback: jansson's view of the same text, as a jdoc. */
static int jdoc_from_jansson(const char *json, struct jdoc *d)
{
    json_error_t je;
    json_t *o = json_loads(json, JSON_REJECT_DUPLICATES, &je);
    const char *key;
    json_t *v;

    if (!o)
        return JP_BAD;
    if (!json_is_object(o)) {
        json_decref(o);
        return JP_BAD;
    }
    json_object_foreach(o, key, v)
    {
        struct jfield *f = jdoc_add(d, xstrdup(key));
        if (json_is_string(v)) {
            f->t = JT_STR;
            f->s = xstrndup(json_string_value(v), json_string_length(v));
        } else if (json_is_integer(v)) {
            f->t = JT_INT;
            f->i = json_integer_value(v);
        } else if (json_is_true(v)) {
            f->t = JT_TRUE;
        } else if (json_is_false(v)) {
            f->t = JT_FALSE;
        } else if (json_is_null(v)) {
            f->t = JT_NULL;
        } else if (json_is_array(v)) {
            size_t n = json_array_size(v);
            f->t = JT_STRARR;
            for (size_t i = 0; i < n; i++)
                if (!json_is_string(json_array_get(v, i)))
                    f->t = JT_OTHER;
            if (f->t == JT_STRARR && n) {
                f->arr = xcalloc(n, sizeof(*f->arr));
                for (size_t i = 0; i < n; i++) {
                    json_t *u = json_array_get(v, i);
                    f->arr[f->n_arr++] =
                        xstrndup(json_string_value(u), json_string_length(u));
                }
            }
        } else {
            f->t = JT_OTHER;
        }
    }
    json_decref(o);
    return JP_OK;
}

/* Parses an object; JP_BAD when it is not valid JSON or not an object. */
static int jdoc_parse(const char *json, struct jdoc *d)
{
    int rc = jp_object(json, strlen(json), d);

    if (rc == JP_JANSSON) {
        jdoc_free(d);
        rc = jdoc_from_jansson(json, d);
    }
    if (rc != JP_OK)
        jdoc_free(d);
    return rc;
}

char *inmsg_to_json(const struct inmsg *m)
{
    struct strbuf b;

    sb_init(&b);
    jw_kint(&b, "v", 1);
    jw_kstr(&b, "to", m->to_addr ? m->to_addr : "");
    jw_kstr(&b, "from", m->from_addr ? m->from_addr : "");
    jw_opt(&b, "body", m->body);
    jw_opt(&b, "subject", m->subject);
    jw_opt(&b, "thread", m->thread);
    jw_opt(&b, "provider_id", m->provider_id);
    jw_opt(&b, "extra", m->extra);
    if (m->n_media)
        jw_media(&b, m->media,
                 m->n_media < INMSG_MAX_MEDIA ? m->n_media : INMSG_MAX_MEDIA);
    if (m->kind != INMSG_MESSAGE) {
        jw_kstr(&b, "k", m->kind == INMSG_RECEIPT ? "receipt" : "error");
        jw_opt(&b, "jid", m->jid);
        jw_opt(&b, "contact", m->contact);
        jw_opt(&b, "ref", m->ref_id);
        jw_opt(&b, "text", m->text);
        if (m->kind == INMSG_ERROR) {
            jw_kint(&b, "cond", m->cond);
            jw_kbool(&b, "temp", m->temporary);
        }
    }
    return jw_end(&b);
}

/* Optional string member: 0 absent/null, 1 copied, -1 wrong type. */
static int get_opt(const struct jdoc *d, const char *key, char **out)
{
    const struct jfield *f = jdoc_get(d, key);
    if (!f || f->t == JT_NULL)
        return 0;
    if (f->t != JT_STR)
        return -1;
    *out = xstrdup(f->s);
    return 1;
}

static bool is_true(const struct jdoc *d, const char *key)
{
    const struct jfield *f = jdoc_get(d, key);
    return f && f->t == JT_TRUE;
}

/* An array of up to max non-empty URL strings into media; else why not. */
static const char *get_media(const struct jdoc *d, char **media, size_t *n,
                             size_t max)
{
    const struct jfield *f = jdoc_get(d, "media");

    if (!f || f->t == JT_NULL)
        return NULL;
    if (f->t != JT_STRARR || f->n_arr > max)
        return "\"media\" is not an array of at most 10 URLs";
    for (size_t i = 0; i < f->n_arr; i++)
        if (!f->arr[i][0])
            return "\"media\" holds something other than a URL string";
    for (size_t i = 0; i < f->n_arr; i++)
        media[(*n)++] = xstrdup(f->arr[i]);
    return NULL;
}

/* The members of a notice; NULL when valid, else what is wrong. */
static const char *notice_from_json(const struct jdoc *d, struct inmsg *out)
{
    const struct jfield *c;

    if (get_opt(d, "jid", &out->jid) <= 0 || !*out->jid)
        return "\"jid\" missing or not a non-empty string";
    if (get_opt(d, "contact", &out->contact) <= 0 || !*out->contact)
        return "\"contact\" missing or not a non-empty string";
    if (get_opt(d, "ref", &out->ref_id) < 0 ||
        get_opt(d, "text", &out->text) < 0 ||
        get_opt(d, "body", &out->body) < 0)
        return "a text member is not a string";
    if (out->kind != INMSG_ERROR)
        return NULL;
    c = jdoc_get(d, "cond");
    if (!c || c->t != JT_INT || c->i <= COND_NONE ||
        c->i > COND_UNDEFINED_CONDITION)
        return "\"cond\" is not a known condition";
    out->cond = (int)c->i;
    out->temporary = is_true(d, "temp");
    return NULL;
}

int inmsg_from_json(const char *json, struct inmsg *out, struct error *err)
{
    struct jdoc d;
    const struct jfield *kind;
    const char *bad = NULL;

    memset(out, 0, sizeof(*out));
    memset(&d, 0, sizeof(d));
    if (!json || strlen(json) > PAYLOAD_MAX) {
        bad = "missing or oversized payload";
        goto fail;
    }
    if (jdoc_parse(json, &d) != JP_OK) {
        bad = "not valid JSON or not a JSON object";
        goto fail;
    }
    kind = jdoc_get(&d, "k");
    if (kind && kind->t != JT_NULL) {
        const char *k = kind->t == JT_STR ? kind->s : "";
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
        bad = notice_from_json(&d, out);
        if (bad)
            goto fail;
        jdoc_free(&d);
        return 0;
    }
    if (get_opt(&d, "to", &out->to_addr) <= 0 || !*out->to_addr) {
        bad = "\"to\" missing or not a non-empty string";
        goto fail;
    }
    if (get_opt(&d, "from", &out->from_addr) <= 0 || !*out->from_addr) {
        bad = "\"from\" missing or not a non-empty string";
        goto fail;
    }
    if (get_opt(&d, "body", &out->body) < 0 ||
        get_opt(&d, "subject", &out->subject) < 0 ||
        get_opt(&d, "thread", &out->thread) < 0 ||
        get_opt(&d, "provider_id", &out->provider_id) < 0 ||
        get_opt(&d, "extra", &out->extra) < 0) {
        bad = "a text member is not a string";
        goto fail;
    }
    bad = get_media(&d, out->media, &out->n_media, INMSG_MAX_MEDIA);
    if (bad)
        goto fail;
    if (!out->body && !out->n_media && !out->subject && !out->extra) {
        bad = "no body, subject, media or extra";
        goto fail;
    }
    jdoc_free(&d);
    return 0;
fail:
    jdoc_free(&d);
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
        if (own && n > 0) {
            /* all ours with acks in flight: look again once they land */
            g->retry = true;
            g->retry_at = now_ms() + RETRY_BASE_MS;
        } else if (n >= BATCH && !q->stopped) {
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
    struct strbuf b;

    sb_init(&b);
    jw_kint(&b, "v", 1);
    jw_kstr(&b, "uid", m->uid ? m->uid : "");
    jw_kstr(&b, "jid", m->from_jid ? m->from_jid : "");
    jw_kstr(&b, "contact", m->to_jid ? m->to_jid : "");
    jw_kstr(&b, "from", m->from_addr ? m->from_addr : "");
    jw_kstr(&b, "to", m->to_addr ? m->to_addr : "");
    jw_opt(&b, "id", m->id);
    jw_opt(&b, "body", m->body);
    jw_opt(&b, "subject", m->subject);
    jw_opt(&b, "thread", m->thread);
    jw_opt(&b, "last_error", m->last_error);
    if (m->n_media)
        jw_media(&b, m->media,
                 m->n_media < OUTMSG_MAX_MEDIA ? m->n_media : OUTMSG_MAX_MEDIA);
    if (m->receipt)
        jw_kbool(&b, "receipt", true);
    jw_kint(&b, "at", m->enqueued_at);
    jw_kint(&b, "attempt", m->attempt);
    return jw_end(&b);
}

/* A required non-empty string member. */
static int get_req(const struct jdoc *d, const char *key, char **out)
{
    if (get_opt(d, key, out) <= 0)
        return -1;
    return **out ? 0 : -1;
}

int outmsg_from_json(const char *json, struct outmsg *out, struct error *err)
{
    struct jdoc d;
    const struct jfield *v;
    const char *bad = NULL;

    memset(out, 0, sizeof(*out));
    memset(&d, 0, sizeof(d));
    if (!json || strlen(json) > PAYLOAD_MAX) {
        bad = "missing or oversized payload";
        goto fail;
    }
    if (jdoc_parse(json, &d) != JP_OK) {
        bad = "not a JSON object";
        goto fail;
    }
    if (get_req(&d, "uid", &out->uid) < 0 ||
        get_req(&d, "jid", &out->from_jid) < 0 ||
        get_req(&d, "contact", &out->to_jid) < 0 ||
        get_req(&d, "from", &out->from_addr) < 0 ||
        get_req(&d, "to", &out->to_addr) < 0) {
        bad = "uid, jid, contact, from or to missing";
        goto fail;
    }
    if (get_opt(&d, "id", &out->id) < 0 ||
        get_opt(&d, "body", &out->body) < 0 ||
        get_opt(&d, "subject", &out->subject) < 0 ||
        get_opt(&d, "thread", &out->thread) < 0 ||
        get_opt(&d, "last_error", &out->last_error) < 0) {
        bad = "a text member is not a string";
        goto fail;
    }
    bad = get_media(&d, out->media, &out->n_media, OUTMSG_MAX_MEDIA);
    if (bad)
        goto fail;
    if (!out->body && !out->n_media) {
        bad = "no body and no media";
        goto fail;
    }
    out->receipt = is_true(&d, "receipt");
    v = jdoc_get(&d, "at");
    if (!v || v->t != JT_INT || v->i < 0) {
        bad = "\"at\" is not a time";
        goto fail;
    }
    out->enqueued_at = v->i;
    v = jdoc_get(&d, "attempt");
    if (v && (v->t != JT_INT || v->i < 0 || v->i > 1000000)) {
        bad = "\"attempt\" is not a count";
        goto fail;
    }
    out->attempt = v ? (unsigned)v->i : 0;
    jdoc_free(&d);
    return 0;
fail:
    jdoc_free(&d);
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
    struct strbuf b;

    sb_init(&b);
    jw_kstr(&b, "jid", r->jid ? r->jid : "");
    jw_kstr(&b, "contact", r->contact ? r->contact : "");
    jw_opt(&b, "id", r->id);
    jw_kbool(&b, "receipt", r->receipt);
    return jw_end(&b);
}

int outref_from_json(const char *json, struct outref *out, struct error *err)
{
    struct jdoc d;

    memset(out, 0, sizeof(*out));
    memset(&d, 0, sizeof(d));
    if (!json || jdoc_parse(json, &d) != JP_OK ||
        get_req(&d, "jid", &out->jid) < 0 ||
        get_req(&d, "contact", &out->contact) < 0 ||
        get_opt(&d, "id", &out->id) < 0) {
        jdoc_free(&d);
        outref_free_fields(out);
        error_set(err, COND_BAD_REQUEST, false, "malformed receipt mapping");
        return -1;
    }
    out->receipt = is_true(&d, "receipt");
    jdoc_free(&d);
    return 0;
}

/* ---- outbound queue ----------------------------------------------------*/

#define OUT_CONCURRENCY 32
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
