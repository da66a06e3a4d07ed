/*
 * sms: the SMS transport core. It owns what every provider shares: the
 * contact address rules (strict E.164 JID nodes, human-typed numbers,
 * which numbers a user may claim), the destination country policy
 * (limits.allowed_countries), splitting long bodies into provider-sized
 * parts, and the count of sends in flight. Each provider adapter behind
 * provider.h turns one part into one request.
 *
 * Providers are chosen by conf->provider.name: sandbox, twilio, telnyx,
 * vonage. An HTTP provider builds its request and maps its answer (pure
 * functions, see provider.h); this module runs the request on the host's
 * HTTP client with provider.timeout and reports a transport failure
 * (timeout, refused, reset) as temporary.
 *
 * Webhooks: when the host has an HTTP server, start() routes
 * /sms/<jid>/inbound and /sms/<jid>/status. Only POST (and GET for a
 * provider that may be configured to send GET) is accepted, else 405. The
 * signature is verified against http.public_url + the request URI (403
 * "invalid signature" and nothing stored when it fails); then the body is
 * parsed (400 with a reason when malformed). An inbound message is pushed
 * to the durable inbound queue (deduplicated by the provider's message id)
 * and answered with the provider's expected 2xx only once persisted, 503
 * when Redis is unavailable. Parts of a concatenated SMS the provider did
 * not join (Vonage) wait in Redis (24 h) until all have arrived; the
 * joined text is then queued once. A status report goes to
 * host->delivery and is answered 204. The sandbox provider has no
 * signatures: its webhooks are Twilio-shaped forms accepted unsigned, for
 * demos and tests only.

 * A long body is sent as several requests, one after the other, in order;
 * only the first carries the media. The message's provider id (for
 * delivery receipts) is the last part's. If a later part fails after
 * earlier ones went out, the failure is reported as permanent, naming the
 * part, because a retry of the whole message would send the earlier parts
 * twice.
 *
 * It must never block, never call done from inside send, never log a
 * body above debug or a number unmasked at info.
 */
#include "sms.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "addr.h"
#include "config.h"
#include "http_client.h"
#include "http_server.h"
#include "log.h"
#include "provider.h"
#include "queue.h"
#include "segments.h"
#include "store.h"

/* How long parts of a concatenated inbound SMS wait for the rest. */
#define CONCAT_TTL_S (24 * 3600)

struct sms_job;
struct sms_http;
struct sms_hook;

struct sms_priv {
    const struct sms_provider_ops *provider;
    void *pstate;
    const char *default_cc;
    size_t inflight;
    bool stopping;
    struct sms_job *jobs;   /* in flight, freed by destroy if never done */
    struct sms_http *http;  /* provider requests in flight */
    struct sms_hook *hooks; /* webhooks waiting for Redis */
    char *status_url;       /* public_url/sms/<jid>/status, or NULL */
    char *route;            /* "/sms/<jid>/" */
};

/* One provider HTTP request in flight. */
struct sms_http {
    struct sms_http *prev, *next;
    struct transport *t; /* NULL once destroy orphaned it */
    send_done_fn *done;
    void *arg;
    char *to; /* for the log */
    struct sms_request req;
};

/* One outbound message while its parts are being sent. */
struct sms_job {
    struct sms_job *prev, *next;
    struct transport *t;
    char *gw, *from, *to;
    char **parts; /* NUL-terminated bodies; NULL entry when media only */
    unsigned n_parts;
    unsigned cur;
    char *media[MSG_MAX_MEDIA];
    size_t n_media;
    send_done_fn *done;
    void *arg;
};

static const struct sms_provider_ops *const providers[] = {
    &sms_provider_sandbox,
    &sms_provider_twilio,
    &sms_provider_telnyx,
    &sms_provider_vonage,
};

static bool is_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' ||
           c == '\f';
}

/* Byte length of the code point at s (at least 1; stops at NUL). */
static size_t cp_len(const char *s)
{
    size_t n = 1;
    while (s[n] && ((unsigned char)s[n] & 0xC0) == 0x80)
        n++;
    return n;
}

size_t sms_count_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            n++;
    return n;
}

/* End of the text before the whitespace run that contains s[i]. */
static size_t text_end_before(const char *s, size_t i)
{
    while (i > 0 && is_space((unsigned char)s[i - 1]))
        i--;
    return i;
}

size_t sms_split_next(const char *s, size_t limit, size_t *next)
{
    size_t i = 0, n = 0, cut = 0;

    while (s[i] && n < limit) {
        if (is_space((unsigned char)s[i])) {
            size_t e = text_end_before(s, i);
            if (e > 0)
                cut = e;
        }
        i += cp_len(s + i);
        n++;
    }
    if (!s[i]) {
        *next = i;
        return i;
    }
    /* whitespace right after the limit is as good a cut as any before */
    if (is_space((unsigned char)s[i])) {
        size_t e = text_end_before(s, i);
        if (e > 0)
            cut = e;
    }
    if (!cut)
        cut = i; /* i sits on a code point boundary */
    *next = cut;
    while (s[*next] && is_space((unsigned char)s[*next]))
        (*next)++;
    return cut;
}

static struct sms_priv *priv_of(const struct transport *t)
{
    return t->priv;
}

static int sms_configure(struct transport *t, struct error *err)
{
    struct sms_priv *p = priv_of(t);
    const struct gateway_conf *c = t->conf;
    const char *name = c->provider.name ? c->provider.name : "";

    for (size_t i = 0; i < c->numbers.n; i++) {
        if (!e164_valid(c->numbers.v[i])) {
            error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                      "numbers: \"%.40s\" is not an E.164 number "
                      "(+ and 2 to 15 digits)",
                      c->numbers.v[i]);
            return -1;
        }
    }
    p->default_cc = c->default_country_code && *c->default_country_code
                        ? c->default_country_code
                        : "1";

    for (size_t i = 0; i < ARRAY_SIZE(providers); i++)
        if (strcmp(providers[i]->name, name) == 0)
            p->provider = providers[i];
    if (!p->provider) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "provider.name: unknown SMS provider \"%.40s\"", name);
        return -1;
    }
    {
        const struct config *cfg = t->host ? t->host->config : NULL;
        if (cfg && cfg->http.public_url && *cfg->http.public_url)
            p->status_url =
                xasprintf("%s/sms/%s/status", cfg->http.public_url, c->jid);
    }
    p->pstate = p->provider->init(t, err);
    return p->pstate ? 0 : -1;
}

static void webhook(struct http_request *req, void *arg);

static int sms_start(struct transport *t, struct error *err)
{
    struct sms_priv *p = priv_of(t);

    if (p->provider->start && p->provider->start(p->pstate, err) < 0)
        return -1;
    if (t->host && t->host->http) {
        free(p->route);
        p->route = xasprintf("/sms/%s/", t->conf->jid);
        http_server_route(t->host->http, p->route, webhook, t);
    }
    return 0;
}

static int sms_addr_parse(const struct transport *t, const char *node,
                          char *out, size_t size, struct error *err)
{
    (void)t;
    if (!e164_valid(node)) {
        error_set(err, COND_JID_MALFORMED, false,
                  "\"%.40s\" is not a phone number in international "
                  "format: write + then the country code and number, "
                  "e.g. +15551234567",
                  node);
        return -1;
    }
    if (strlen(node) >= size) {
        error_set(err, COND_JID_MALFORMED, false, "phone number too long");
        return -1;
    }
    strcpy(out, node);
    return 0;
}

static int sms_addr_to_node(const struct transport *t, const char *addr,
                            char *out, size_t size)
{
    (void)t;
    if (strlen(addr) >= size)
        return -1;
    strcpy(out, addr);
    return 0;
}

static int sms_addr_from_human(const struct transport *t, const char *typed,
                               char *out, size_t size, struct error *err)
{
    const struct sms_priv *p = priv_of(t);

    if (e164_from_human(typed, p->default_cc, out, size) < 0) {
        error_set(err, COND_NOT_ACCEPTABLE, false,
                  "\"%.40s\" is not a phone number; type it with its "
                  "country code, e.g. +44 20 7946 0958",
                  typed);
        return -1;
    }
    return 0;
}

static int sms_claim(const struct transport *t, const char *typed, char *out,
                     size_t size, struct error *err)
{
    const struct sms_priv *p = priv_of(t);

    if (e164_from_human(typed, p->default_cc, out, size) < 0) {
        error_set(err, COND_NOT_ACCEPTABLE, false,
                  "\"%.40s\" is not a phone number; enter your number "
                  "with its country code, e.g. +15550001111",
                  typed);
        return -1;
    }
    if (!strlist_contains(&t->conf->numbers, out)) {
        error_set(err, COND_NOT_ACCEPTABLE, false,
                  "%s is not one of this gateway's numbers; ask your "
                  "administrator which number you may use",
                  out);
        return -1;
    }
    return 0;
}

static bool country_allowed(const struct gateway_conf *c, const char *to)
{
    const struct strlist *l = &c->limits.allowed_countries;

    if (l->n == 0)
        return true;
    for (size_t i = 0; i < l->n; i++)
        if (e164_has_prefix(to, l->v[i]))
            return true;
    return false;
}

static void country_list(const struct gateway_conf *c, char *buf, size_t size)
{
    const struct strlist *l = &c->limits.allowed_countries;
    size_t o = 0;

    buf[0] = '\0';
    for (size_t i = 0; i < l->n && o + 1 < size; i++) {
        int w = snprintf(buf + o, size - o, "%s%s", i ? ", " : "", l->v[i]);
        if (w < 0)
            break;
        o += (size_t)w;
    }
}

static void job_free(struct sms_job *j)
{
    for (unsigned i = 0; i < j->n_parts; i++)
        free(j->parts[i]);
    free(j->parts);
    for (size_t i = 0; i < j->n_media; i++)
        free(j->media[i]);
    free(j->gw);
    free(j->from);
    free(j->to);
    free(j);
}

static void job_unlink(struct sms_priv *p, struct sms_job *j)
{
    if (j->prev)
        j->prev->next = j->next;
    else
        p->jobs = j->next;
    if (j->next)
        j->next->prev = j->prev;
}

static void split_body(struct sms_job *j, const char *body, size_t limit)
{
    size_t cap = 4, off = 0;

    j->parts = xcalloc(cap, sizeof(*j->parts));
    if (!body || !*body) {
        j->n_parts = 1; /* media only: one request without a body */
        return;
    }
    while (body[off]) {
        size_t next, len = sms_split_next(body + off, limit, &next);
        if (j->n_parts == cap) {
            cap *= 2;
            j->parts = xrealloc(j->parts, cap * sizeof(*j->parts));
        }
        j->parts[j->n_parts++] = xstrndup(body + off, len);
        off += next;
    }
}

static int job_send_current(struct sms_job *j, struct error *err);
static int http_send(struct transport *t, const struct sms_part *part,
                     send_done_fn *done, void *arg, struct error *err);

/* Ends the job: exactly one done call, then the job is gone. */
static void job_finish(struct sms_job *j, const struct error *err,
                       const char *provider_id)
{
    struct sms_priv *p = priv_of(j->t);
    send_done_fn *done = j->done;
    void *arg = j->arg;

    job_unlink(p, j);
    p->inflight--;
    job_free(j);
    done(arg, err, provider_id);
}

static void part_done(void *arg, const struct error *err,
                      const char *provider_id)
{
    struct sms_job *j = arg;
    struct error e;

    if (err) {
        if (j->cur == 0) {
            job_finish(j, err, NULL);
            return;
        }
        error_set(&e, err->code, false, "part %u of %u not sent: %s",
                  j->cur + 1, j->n_parts, err->msg);
        job_finish(j, &e, NULL);
        return;
    }
    if (++j->cur == j->n_parts) {
        job_finish(j, NULL, provider_id);
        return;
    }
    /* we are in the provider's deferred callback, not inside send() */
    if (job_send_current(j, &e) < 0) {
        struct error e2;
        error_set(&e2, e.code, false, "part %u of %u not sent: %s", j->cur + 1,
                  j->n_parts, e.msg);
        job_finish(j, &e2, NULL);
    }
}

static int job_send_current(struct sms_job *j, struct error *err)
{
    struct sms_priv *p = priv_of(j->t);
    struct sms_part part = {
        .gw = j->gw,
        .from = j->from,
        .to = j->to,
        .body = j->parts[j->cur],
        .media = j->cur == 0 ? (const char *const *)j->media : NULL,
        .n_media = j->cur == 0 ? j->n_media : 0,
        .index = j->cur,
        .count = j->n_parts,
    };

    if (p->provider->send)
        return p->provider->send(p->pstate, &part, part_done, j, err);
    return http_send(j->t, &part, part_done, j, err);
}

static int sms_send(struct transport *t, const struct msg *m,
                    send_done_fn *done, void *arg, struct error *err)
{
    struct sms_priv *p = priv_of(t);
    struct sms_job *j;
    char masked[32];

    if (p->stopping) {
        error_set(err, COND_SERVICE_UNAVAILABLE, true,
                  "the SMS gateway is shutting down; try again shortly");
        return -1;
    }
    if (!m->to_addr || !e164_valid(m->to_addr)) {
        error_set(err, COND_JID_MALFORMED, false,
                  "the recipient is not a phone number in international "
                  "format (e.g. +15551234567)");
        return -1;
    }
    if (!m->from_addr || !e164_valid(m->from_addr)) {
        error_set(err, COND_REGISTRATION_REQUIRED, false,
                  "you have no phone number on this gateway; register one "
                  "first");
        return -1;
    }
    if ((!m->body || !*m->body) && m->n_media == 0) {
        error_set(err, COND_BAD_REQUEST, false, "nothing to send");
        return -1;
    }
    if (m->n_media > MSG_MAX_MEDIA) {
        error_set(err, COND_NOT_ACCEPTABLE, false,
                  "at most %d attachments per SMS", MSG_MAX_MEDIA);
        return -1;
    }
    if (!country_allowed(t->conf, m->to_addr)) {
        char list[100];
        country_list(t->conf, list, sizeof(list));
        log_info(t->module, "send to %s refused: country not allowed",
                 log_mask(m->to_addr, masked, sizeof(masked)));
        error_set(err, COND_NOT_ACCEPTABLE, false,
                  "this gateway does not send SMS to %s; allowed country "
                  "codes: %s",
                  m->to_addr, list);
        return -1;
    }

    j = xcalloc(1, sizeof(*j));
    j->t = t;
    j->gw = xstrdup(m->gw ? m->gw : t->conf->jid);
    j->from = xstrdup(m->from_addr);
    j->to = xstrdup(m->to_addr);
    for (size_t i = 0; i < m->n_media; i++)
        j->media[i] = xstrdup(m->media[i]);
    j->n_media = m->n_media;
    j->done = done;
    j->arg = arg;
    split_body(j, m->body, p->provider->max_chars);

    if (job_send_current(j, err) < 0) {
        job_free(j);
        return -1;
    }
    if (j->n_parts > 1)
        log_debug(t->module, "send to %s: body split into %u parts",
                  log_mask(m->to_addr, masked, sizeof(masked)), j->n_parts);
    j->next = p->jobs;
    if (p->jobs)
        p->jobs->prev = j;
    p->jobs = j;
    p->inflight++;
    return 0;
}

static size_t sms_inflight(const struct transport *t)
{
    return priv_of(t)->inflight;
}

static void sms_stop(struct transport *t)
{
    priv_of(t)->stopping = true;
}

static void hooks_orphan(struct sms_priv *p);

static void sms_destroy(struct transport *t)
{
    struct sms_priv *p;

    if (!t || !t->priv)
        return;
    p = priv_of(t);
    /* first the provider, so no completion can reach a freed job */
    if (p->provider && p->pstate)
        p->provider->free(p->pstate);
    p->pstate = NULL;
    /* requests still in curl complete later into orphans that free
     * themselves; so do webhooks waiting for Redis */
    for (struct sms_http *h = p->http; h; h = h->next)
        h->t = NULL;
    p->http = NULL;
    hooks_orphan(p);
    free(p->status_url);
    free(p->route);
    p->status_url = p->route = NULL;
    while (p->jobs) {
        struct sms_job *j = p->jobs;
        job_unlink(p, j);
        job_free(j);
    }
    p->inflight = 0;
}

/* ---- helpers shared by the provider adapters --------------------------*/

void sms_request_free(struct sms_request *r)
{
    if (!r)
        return;
    free(r->url);
    free(r->body);
    if (r->authorization) {
        /* it holds credentials */
        memset(r->authorization, 0, strlen(r->authorization));
        free(r->authorization);
    }
    memset(r, 0, sizeof(*r));
}

void sms_inbound_free(struct sms_inbound *s)
{
    if (!s)
        return;
    inmsg_free_fields(&s->msg);
    free(s->concat_ref);
    memset(s, 0, sizeof(*s));
}

void sms_status_free(struct sms_status *s)
{
    if (!s)
        return;
    free(s->provider_id);
    memset(s, 0, sizeof(*s));
}

int sms_form_parse(const char *s, size_t len, struct sms_form *out)
{
    size_t i = 0, cap = 0;

    memset(out, 0, sizeof(*out));
    while (i < len) {
        size_t end = i, eq;
        char *name, *value;

        while (end < len && s[end] != '&')
            end++;
        if (end == i) { /* "a=1&&b=2" */
            i = end + 1;
            continue;
        }
        eq = i;
        while (eq < end && s[eq] != '=')
            eq++;
        name = pct_decode(s + i, eq - i, true);
        value =
            eq < end ? pct_decode(s + eq + 1, end - eq - 1, true) : xstrdup("");
        if (!name || !value) {
            free(name);
            free(value);
            sms_form_free(out);
            return -1;
        }
        if (out->n == cap) {
            cap = cap ? cap * 2 : 16;
            out->names = xrealloc(out->names, cap * sizeof(*out->names));
            out->values = xrealloc(out->values, cap * sizeof(*out->values));
        }
        out->names[out->n] = name;
        out->values[out->n++] = value;
        i = end + 1;
    }
    return 0;
}

const char *sms_form_get(const struct sms_form *f, const char *name)
{
    for (size_t i = 0; i < f->n; i++)
        if (strcmp(f->names[i], name) == 0)
            return f->values[i];
    return NULL;
}

void sms_form_free(struct sms_form *f)
{
    for (size_t i = 0; i < f->n; i++) {
        free(f->names[i]);
        free(f->values[i]);
    }
    free(f->names);
    free(f->values);
    memset(f, 0, sizeof(*f));
}

unsigned sms_retry_after(const char *value, int64_t now)
{
    const unsigned cap = 24 * 3600;
    struct tm tm;
    const char *end;

    if (!value)
        return 0;
    while (*value == ' ' || *value == '\t')
        value++;
    if (*value >= '0' && *value <= '9') {
        unsigned long v = 0;
        for (; *value >= '0' && *value <= '9'; value++) {
            v = v * 10 + (unsigned long)(*value - '0');
            if (v > cap)
                v = cap;
        }
        while (*value == ' ' || *value == '\t')
            value++;
        return *value ? 0 : (unsigned)v;
    }
    /* IMF-fixdate, e.g. "Sun, 06 Nov 1994 08:49:37 GMT" */
    memset(&tm, 0, sizeof(tm));
    end = strptime(value, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (!end || *end) {
        return 0;
    } else {
        int64_t at = (int64_t)timegm(&tm);
        if (at <= now)
            return 0;
        return at - now > cap ? cap : (unsigned)(at - now);
    }
}

void sms_clean_text(char *out, size_t size, const char *s)
{
    size_t o = 0;

    if (size == 0)
        return;
    for (; *s && o + 1 < size; s++)
        out[o++] = ((unsigned char)*s < 0x20 || *s == 0x7f) ? ' ' : *s;
    /* never end inside a UTF-8 sequence */
    if (*s && o > 0) {
        size_t k = o;
        while (k > 0 && ((unsigned char)out[k - 1] & 0xC0) == 0x80)
            k--;
        if (k > 0 && ((unsigned char)out[k - 1] & 0x80))
            o = k - 1;
    }
    out[o] = '\0';
}

/* ---- sending over HTTP ----------------------------------------------*/

static void http_unlink(struct sms_priv *p, struct sms_http *h)
{
    if (h->prev)
        h->prev->next = h->next;
    else if (p && p->http == h)
        p->http = h->next;
    if (h->next)
        h->next->prev = h->prev;
    h->prev = h->next = NULL;
}

static void http_free(struct sms_http *h)
{
    sms_request_free(&h->req);
    free(h->to);
    free(h);
}

static void http_done(void *arg, const struct error *herr,
                      const struct http_response *resp)
{
    struct sms_http *h = arg;
    struct transport *t = h->t;
    struct sms_priv *p;
    send_done_fn *done = h->done;
    void *done_arg = h->arg;
    char *id = NULL, masked[32];
    struct error e;
    int rc;

    if (!t) { /* the transport is gone; nobody waits for this */
        http_free(h);
        return;
    }
    p = priv_of(t);
    http_unlink(p, h);
    error_clear(&e);
    log_mask(h->to, masked, sizeof(masked));
    if (herr) {
        error_set(&e, COND_REMOTE_SERVER_TIMEOUT, true,
                  "the SMS provider could not be reached (%s); will retry",
                  herr->msg);
        rc = -1;
        log_warn(t->module, "%s: send to %s: %s", p->provider->name, masked,
                 herr->msg);
    } else {
        rc = p->provider->response(p->pstate, resp, now_unix(), &id, &e);
        if (rc == 0)
            log_info(t->module, "%s: send to %s: HTTP %d in %.3f s, id %s",
                     p->provider->name, masked, resp->status, resp->total_s,
                     id ? id : "(none)");
        else
            log_info(t->module, "%s: send to %s: HTTP %d (%s): %s",
                     p->provider->name, masked, resp->status,
                     e.temporary ? "temporary" : "permanent", e.msg);
    }
    http_free(h);
    done(done_arg, rc == 0 ? NULL : &e, id);
    free(id);
}

static int http_send(struct transport *t, const struct sms_part *part,
                     send_done_fn *done, void *arg, struct error *err)
{
    struct sms_priv *p = priv_of(t);
    struct http_header hdr[3];
    struct http_req_spec spec;
    struct sms_http *h;
    size_t nh = 0;

    if (!t->host || !t->host->http_client) {
        error_set(err, COND_SERVICE_UNAVAILABLE, true,
                  "the SMS gateway has no HTTP client");
        return -1;
    }
    h = xcalloc(1, sizeof(*h));
    if (p->provider->build(p->pstate, part, p->status_url, &h->req, err) < 0) {
        http_free(h);
        return -1;
    }
    hdr[nh++] = (struct http_header){"Content-Type", h->req.content_type};
    hdr[nh++] = (struct http_header){"Accept", "application/json"};
    if (h->req.authorization)
        hdr[nh++] = (struct http_header){"Authorization", h->req.authorization};
    memset(&spec, 0, sizeof(spec));
    spec.method = "POST";
    spec.url = h->req.url;
    spec.headers = hdr;
    spec.n_headers = nh;
    spec.body = h->req.body;
    spec.body_len = h->req.body_len;
    if (t->conf->provider.timeout > 0)
        spec.timeout_ms = (unsigned)(t->conf->provider.timeout * 1000.0);
    h->t = t;
    h->done = done;
    h->arg = arg;
    h->to = xstrdup(part->to);
    if (http_client_request(t->host->http_client, &spec, http_done, h, err) <
        0) {
        err->temporary = true;
        http_free(h);
        return -1;
    }
    h->next = p->http;
    if (p->http)
        p->http->prev = h;
    p->http = h;
    return 0;
}

/* ---- webhooks ---------------------------------------------------------*/

/* A webhook waiting for Redis before it can be answered. */
struct sms_hook {
    struct sms_hook *prev, *next;
    struct transport *t; /* NULL once destroy orphaned it */
    struct http_request *req;
    struct sms_inbound in;
    int ok_status;
    const char *ok_ctype, *ok_body;
};

static void hook_unlink(struct sms_hook *k)
{
    if (k->t) {
        struct sms_priv *p = priv_of(k->t);
        if (k->prev)
            k->prev->next = k->next;
        else if (p->hooks == k)
            p->hooks = k->next;
        if (k->next)
            k->next->prev = k->prev;
    }
    k->prev = k->next = NULL;
}

static void hooks_orphan(struct sms_priv *p)
{
    for (struct sms_hook *k = p->hooks; k; k = k->next)
        k->t = NULL;
    p->hooks = NULL;
}

static void reply_text(struct http_request *req, int status, const char *text)
{
    http_reply(req, status, "text/plain; charset=utf-8", text, strlen(text));
}

/* Answers the provider and frees k. */
static void hook_finish(struct sms_hook *k, const struct error *err)
{
    if (err) {
        if (k->t)
            log_warn(k->t->module,
                     "webhook: inbound SMS not persisted (%s); "
                     "answering 503 so the provider retries",
                     err->msg);
        reply_text(k->req, 503, "temporarily unavailable, retry later\n");
    } else {
        http_reply(k->req, k->ok_status, k->ok_ctype, k->ok_body,
                   k->ok_body ? strlen(k->ok_body) : 0);
    }
    hook_unlink(k);
    sms_inbound_free(&k->in);
    free(k);
}

static void concat_dropped(const struct error *err, void *arg)
{
    (void)err; /* the parts expire anyway */
    (void)arg;
}

static void hook_pushed(const struct error *err, void *arg)
{
    struct sms_hook *k = arg;

    if (!err && k->t && k->in.concat_ref && k->t->host->store)
        /* the joined text is durable: the parts may go (or expire) */
        store_sms_concat_drop(k->t->host->store, k->t->conf->jid,
                              k->in.concat_ref, concat_dropped, NULL);
    if (!err && k->t && k->t->host->queue)
        queue_kick(k->t->host->queue);
    hook_finish(k, err);
}

static void log_inbound(struct transport *t, const struct inmsg *m)
{
    char mf[32], mt[32];

    log_info(t->module, "webhook: inbound SMS %s from %s to %s, %zu media",
             m->provider_id ? m->provider_id : "(no id)",
             log_mask(m->from_addr, mf, sizeof(mf)),
             log_mask(m->to_addr, mt, sizeof(mt)), m->n_media);
    log_debug(t->module, "webhook: inbound SMS %s body: %s",
              m->provider_id ? m->provider_id : "(no id)",
              m->body ? m->body : "");
}

static void hook_push(struct sms_hook *k)
{
    struct transport *t = k->t;

    log_inbound(t, &k->in.msg);
    queue_inbound_push(t->host->queue, t->conf->jid, &k->in.msg, hook_pushed,
                       k);
}

static void concat_stored(const struct error *err, size_t n, char *const *keys,
                          char *const *values, void *arg)
{
    struct sms_hook *k = arg;
    struct strbuf b;

    (void)values;
    if (err || !k->t) {
        struct error e;
        if (!err)
            error_set(&e, COND_SERVICE_UNAVAILABLE, true, "shutting down");
        hook_finish(k, err ? err : &e);
        return;
    }
    if (n == 0 || n != (size_t)k->in.concat_total + 1) {
        log_debug(k->t->module, "webhook: part %u of %u of %s stored",
                  k->in.concat_part, k->in.concat_total, k->in.concat_ref);
        hook_finish(k, NULL);
        return;
    }
    sb_init(&b);
    for (size_t i = 0; i + 1 < n; i++)
        sb_puts(&b, keys[i]);
    free(k->in.msg.body);
    k->in.msg.body = sb_steal(&b);
    if (*keys[n - 1]) {
        free(k->in.msg.provider_id);
        k->in.msg.provider_id = xstrdup(keys[n - 1]);
    }
    hook_push(k);
}

static const char *req_header(const void *ctx, const char *name)
{
    return http_req_header(ctx, name);
}

static void handle_inbound(struct transport *t, struct http_request *req,
                           struct sms_inbound *in,
                           const struct sms_provider_ops *ops)
{
    struct sms_priv *p = priv_of(t);
    struct sms_hook *k;

    if (!t->host->queue || !t->host->store) {
        sms_inbound_free(in);
        reply_text(req, 503, "no queue\n");
        return;
    }
    k = xcalloc(1, sizeof(*k));
    k->t = t;
    k->req = req;
    k->in = *in;
    memset(in, 0, sizeof(*in));
    k->ok_status = ops->inbound_status ? ops->inbound_status : 204;
    k->ok_ctype = ops->inbound_ctype;
    k->ok_body = ops->inbound_body;
    k->next = p->hooks;
    if (p->hooks)
        p->hooks->prev = k;
    p->hooks = k;
    if (k->in.concat_ref) {
        store_sms_concat_add(
            t->host->store, t->conf->jid, k->in.concat_ref, k->in.concat_part,
            k->in.concat_total, k->in.msg.body ? k->in.msg.body : "",
            k->in.msg.provider_id, CONCAT_TTL_S, concat_stored, k);
        return;
    }
    hook_push(k);
}

/* The status is durable (or needs no notice): 204; else 503 so the
 * provider sends it again. */
static void status_done(void *arg, const struct error *err)
{
    struct http_request *req = arg;

    if (err)
        http_reply(req, 503, "text/plain", "status not stored; retry\n", 25);
    else
        http_reply(req, 204, NULL, NULL, 0);
}

static void handle_status(struct transport *t, struct http_request *req,
                          struct sms_status *st)
{
    static const char *const names[] = {"sent", "delivered", "failed"};

    if (st->provider_id && t->host->delivery) {
        log_info(t->module, "webhook: status of %s: %s%s%s", st->provider_id,
                 names[st->state], st->state == DELIVERY_FAILED ? ": " : "",
                 st->state == DELIVERY_FAILED ? st->err.msg : "");
        t->host->delivery(t->host->delivery_arg, t, st->provider_id, st->state,
                          st->state == DELIVERY_FAILED ? &st->err : NULL,
                          status_done, req);
        sms_status_free(st);
        return;
    }
    sms_status_free(st);
    http_reply(req, 204, NULL, NULL, 0);
}

static void webhook(struct http_request *req, void *arg)
{
    struct transport *t = arg;
    struct sms_priv *p = priv_of(t);
    const struct sms_provider_ops *ops = p->provider;
    const struct config *cfg = t->host->config;
    const char *path = http_req_path(req), *method = http_req_method(req);
    const char *what, *body;
    bool inbound;
    struct sms_webhook wh;
    struct sms_inbound in;
    struct sms_status st;
    struct error e;
    char *url;
    size_t len;
    int rc;

    what = path + strlen(p->route);
    if (strcmp(what, "inbound") == 0)
        inbound = true;
    else if (strcmp(what, "status") == 0)
        inbound = false;
    else {
        reply_text(req, 404, "not found\n");
        return;
    }
    if (!ops->verify) /* sandbox: unsigned Twilio-shaped forms */
        ops = &sms_provider_twilio;
    if (strcmp(method, "POST") != 0 &&
        !(strcmp(method, "GET") == 0 && ops->accept_get)) {
        reply_text(req, 405, "method not allowed\n");
        return;
    }
    body = http_req_body(req, &len);
    if (cfg && cfg->http.public_url && *cfg->http.public_url) {
        url = xasprintf("%s%s", cfg->http.public_url, http_req_uri(req));
    } else {
        const char *host = http_req_header(req, "Host");
        url = xasprintf("http://%s%s", host ? host : "localhost",
                        http_req_uri(req));
    }
    memset(&wh, 0, sizeof(wh));
    wh.method = method;
    wh.url = url;
    wh.query = http_req_query(req);
    wh.content_type = http_req_header(req, "Content-Type");
    wh.body = body ? body : "";
    wh.body_len = body ? len : 0;
    wh.header = req_header;
    wh.header_ctx = req;
    wh.now = now_unix();
    error_clear(&e);

    if (ops == p->provider && ops->verify(p->pstate, &wh, &e) < 0) {
        log_warn(t->module, "webhook %s from %s refused: %s", what,
                 http_req_peer(req), e.msg);
        free(url);
        reply_text(req, 403, "invalid signature\n");
        return;
    }
    rc = inbound ? ops->parse_inbound(p->pstate, &wh, &in, &e)
                 : ops->parse_status(p->pstate, &wh, &st, &e);
    if (rc == SMS_PARSE_OTHER) {
        inbound = !inbound;
        rc = inbound ? ops->parse_inbound(p->pstate, &wh, &in, &e)
                     : ops->parse_status(p->pstate, &wh, &st, &e);
        if (rc == SMS_PARSE_OTHER) { /* an event we have no use for */
            free(url);
            http_reply(req, 204, NULL, NULL, 0);
            return;
        }
    }
    free(url);
    if (rc != SMS_PARSE_OK) {
        char msg[200];
        log_warn(t->module, "webhook %s from %s malformed: %s", what,
                 http_req_peer(req), e.msg);
        snprintf(msg, sizeof(msg), "%s\n", e.msg);
        reply_text(req, 400, msg);
        return;
    }
    if (inbound)
        handle_inbound(t, req, &in, ops);
    else
        handle_status(t, req, &st);
}

/*
 * Billed SMS segments of a message (for max_segments): each provider part
 * is counted on its own, since it is sent as its own SMS; media only is
 * one. Invalid UTF-8 cannot come from XMPP; count it as one segment per
 * 67 bytes to stay on the safe side.
 */
static unsigned sms_segments(const struct transport *t, const struct msg *m)
{
    const struct sms_priv *p = t->priv;
    size_t limit = p->provider && p->provider->max_chars
                       ? p->provider->max_chars
                       : SMS_MAX_CHARS;
    const char *s = m->body;
    unsigned total = 0;

    if (!s || !*s)
        return 1;
    while (*s) {
        size_t next, len = sms_split_next(s, limit, &next);
        char *part = xstrndup(s, len);
        struct segments_info info;
        if (segments_count(part, &info) == 0)
            total += (unsigned)info.segments;
        else
            total += (unsigned)(len / 67 + 1);
        free(part);
        s += next;
    }
    return total ? total : 1;
}

const struct transport_ops sms_transport_ops = {
    .abi = TRANSPORT_ABI,
    .name = "sms",
    .caps =
        TCAP_SEND | TCAP_RECEIVE | TCAP_RECEIPTS | TCAP_WEBHOOK | TCAP_MEDIA,
    .priv_size = sizeof(struct sms_priv),
    .identity_type = "sms",
    .contact_type = "sms",
    .reg_field = "phone",
    .reg_label = "Your phone number on this gateway",
    .instructions =
        "Enter the phone number this gateway gave you, with its country "
        "code (e.g. +15550001111). You can then text any number by "
        "messaging +<number>@ this gateway, e.g. +15551234567, and "
        "replies come back to you.",
    .gateway_desc = "Enter the phone number you want to text, with its "
                    "country code (e.g. +44 20 7946 0958). Numbers "
                    "without one use this gateway's default country.",
    .gateway_prompt = "Phone number",
    .configure = sms_configure,
    .start = sms_start,
    .addr_parse = sms_addr_parse,
    .addr_to_node = sms_addr_to_node,
    .addr_from_human = sms_addr_from_human,
    .claim = sms_claim,
    .send = sms_send,
    .inflight = sms_inflight,
    .stop = sms_stop,
    .destroy = sms_destroy,
    .segments = sms_segments,
};
