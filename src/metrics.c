/*
 * metrics: owns the process-wide registry of counters, gauges and
 * histograms, its rendering to the Prometheus text format 0.0.4, the
 * postern metric set and the timer that refreshes the queue-depth gauges
 * from Redis.
 *
 * The registry is a list of metrics, each with a list of series (one per
 * label-value combination, created on first use, never removed except by
 * metrics_clear). Lookups are linear: a scrape-sized registry holds a few
 * dozen series, and the event loop is the only thread.
 *
 * Must never: block (the queue poller only issues asynchronous store
 * calls), allocate per event once a series exists, keep a caller's
 * pointer, or render a sample line that Prometheus could misparse (label
 * values and HELP text are escaped, numbers printed in Go float syntax).
 */
#include "metrics.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "config.h"
#include "log.h"
#include "store.h"

#define MOD "metrics"

enum mtype { M_COUNTER, M_GAUGE, M_HISTOGRAM };

struct series {
    struct series *next;
    char *values[METRICS_MAX_LABELS];
    double value;      /* counter, gauge */
    double sum;        /* histogram */
    uint64_t count;    /* histogram */
    uint64_t *buckets; /* histogram: per bucket, not cumulative; n_bounds+1 */
};

struct metric {
    struct metric *next;
    enum mtype type;
    char *name;
    char *help;
    char *labels[METRICS_MAX_LABELS];
    size_t n_labels;
    double *bounds;
    size_t n_bounds;
    struct series *series;
    struct series **tail;
};

static struct metric *g_metrics;
static struct metric **g_tail = &g_metrics;

static const double default_bounds[] = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};

static void postern_forget(void);

/* ---- registration ---- */

static bool valid_name(const char *s, bool colon)
{
    if (!*s || (*s >= '0' && *s <= '9'))
        return false;
    for (; *s; s++) {
        char c = *s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '_' || (colon && c == ':')))
            return false;
    }
    return true;
}

static const char *type_name(enum mtype t)
{
    switch (t) {
    case M_COUNTER:
        return "counter";
    case M_GAUGE:
        return "gauge";
    case M_HISTOGRAM:
        return "histogram";
    }
    return "untyped";
}

/* Splits "a,b" into m->labels; fatal on a bad or reserved name. */
static void parse_labels(struct metric *m, const char *label_names)
{
    const char *p = label_names;

    if (!p || !*p)
        return;
    for (;;) {
        size_t n = strcspn(p, ",");
        char *l = xstrndup(p, n);
        if (m->n_labels == METRICS_MAX_LABELS)
            fatal("metric %s: more than %d labels", m->name,
                  METRICS_MAX_LABELS);
        if (!valid_name(l, false) || str_has_prefix(l, "__") ||
            (m->type == M_HISTOGRAM && strcmp(l, "le") == 0))
            fatal("metric %s: invalid label name \"%s\"", m->name, l);
        for (size_t i = 0; i < m->n_labels; i++)
            if (strcmp(m->labels[i], l) == 0)
                fatal("metric %s: label \"%s\" twice", m->name, l);
        m->labels[m->n_labels++] = l;
        if (!p[n])
            break;
        p += n + 1;
    }
}

static bool same_labels(const struct metric *m, const char *label_names)
{
    struct metric tmp;
    bool same;

    memset(&tmp, 0, sizeof(tmp));
    tmp.name = m->name;
    tmp.type = m->type;
    parse_labels(&tmp, label_names);
    same = tmp.n_labels == m->n_labels;
    for (size_t i = 0; i < tmp.n_labels; i++) {
        if (same && strcmp(tmp.labels[i], m->labels[i]) != 0)
            same = false;
        free(tmp.labels[i]);
    }
    return same;
}

static struct metric *find_metric(const char *name)
{
    for (struct metric *m = g_metrics; m; m = m->next)
        if (strcmp(m->name, name) == 0)
            return m;
    return NULL;
}

static struct series *series_new(struct metric *m, const char *const *values)
{
    struct series *s = xcalloc(1, sizeof(*s));

    for (size_t i = 0; i < m->n_labels; i++)
        s->values[i] = xstrdup(values[i] ? values[i] : "");
    if (m->type == M_HISTOGRAM)
        s->buckets = xcalloc(m->n_bounds + 1, sizeof(*s->buckets));
    *m->tail = s;
    m->tail = &s->next;
    return s;
}

static struct metric *metric_register(enum mtype type, const char *name,
                                      const char *help, const char *label_names,
                                      const double *bounds, size_t n)
{
    struct metric *m = find_metric(name);

    if (m) {
        if (m->type != type || !same_labels(m, label_names))
            fatal("metric %s registered twice with different types or "
                  "labels",
                  name);
        return m;
    }
    if (!valid_name(name, true))
        fatal("invalid metric name \"%s\"", name);
    m = xcalloc(1, sizeof(*m));
    m->type = type;
    m->name = xstrdup(name);
    m->help = xstrdup(help ? help : "");
    m->tail = &m->series;
    parse_labels(m, label_names);
    if (type == M_HISTOGRAM) {
        if (!bounds) {
            bounds = default_bounds;
            n = ARRAY_SIZE(default_bounds);
        }
        for (size_t i = 0; i < n; i++)
            if (!isfinite(bounds[i]) || (i && bounds[i] <= bounds[i - 1]))
                fatal("metric %s: bucket bounds must be finite and "
                      "increasing",
                      name);
        m->bounds = xcalloc(n ? n : 1, sizeof(*m->bounds));
        if (n)
            memcpy(m->bounds, bounds, n * sizeof(*bounds));
        m->n_bounds = n;
    }
    /* a metric without labels has exactly one series: show it at once */
    if (m->n_labels == 0)
        series_new(m, NULL);
    *g_tail = m;
    g_tail = &m->next;
    return m;
}

struct metric *metrics_counter(const char *name, const char *help,
                               const char *label_names)
{
    return metric_register(M_COUNTER, name, help, label_names, NULL, 0);
}

struct metric *metrics_gauge(const char *name, const char *help,
                             const char *label_names)
{
    return metric_register(M_GAUGE, name, help, label_names, NULL, 0);
}

struct metric *metrics_histogram(const char *name, const char *help,
                                 const char *label_names, const double *bounds,
                                 size_t n)
{
    return metric_register(M_HISTOGRAM, name, help, label_names, bounds, n);
}

/* ---- updates ---- */

static struct series *series_get(struct metric *m, va_list ap)
{
    const char *values[METRICS_MAX_LABELS];
    struct series *s;

    for (size_t i = 0; i < m->n_labels; i++) {
        values[i] = va_arg(ap, const char *);
        if (!values[i])
            values[i] = "";
    }
    for (s = m->series; s; s = s->next) {
        size_t i;
        for (i = 0; i < m->n_labels; i++)
            if (strcmp(s->values[i], values[i]) != 0)
                break;
        if (i == m->n_labels)
            return s;
    }
    return series_new(m, values);
}

static void counter_add(struct metric *m, double v, va_list ap)
{
    struct series *s;

    if (m->type != M_COUNTER) {
        log_err(MOD, "%s is not a counter", m->name);
        return;
    }
    s = series_get(m, ap);
    /* a counter only goes up; a bad delta must not corrupt it */
    if (v >= 0 && isfinite(v))
        s->value += v;
}

/* Creates the series (if missing) without changing it. */
static void series_touch(struct metric *m, ...)
{
    va_list ap;
    va_start(ap, m);
    series_get(m, ap);
    va_end(ap);
}

void metrics_inc(struct metric *m, ...)
{
    va_list ap;
    va_start(ap, m);
    counter_add(m, 1, ap);
    va_end(ap);
}

void metrics_add(struct metric *m, double v, ...)
{
    va_list ap;
    va_start(ap, v);
    counter_add(m, v, ap);
    va_end(ap);
}

void metrics_set(struct metric *m, double v, ...)
{
    va_list ap;

    if (m->type != M_GAUGE) {
        log_err(MOD, "%s is not a gauge", m->name);
        return;
    }
    va_start(ap, v);
    series_get(m, ap)->value = v;
    va_end(ap);
}

void metrics_observe(struct metric *m, double v, ...)
{
    struct series *s;
    size_t i;
    va_list ap;

    if (m->type != M_HISTOGRAM) {
        log_err(MOD, "%s is not a histogram", m->name);
        return;
    }
    if (isnan(v))
        return;
    va_start(ap, v);
    s = series_get(m, ap);
    va_end(ap);
    for (i = 0; i < m->n_bounds; i++)
        if (v <= m->bounds[i])
            break;
    s->buckets[i]++;
    s->count++;
    s->sum += v;
}

static void series_free(struct series *s)
{
    for (size_t i = 0; i < METRICS_MAX_LABELS; i++)
        free(s->values[i]);
    free(s->buckets);
    free(s);
}

void metrics_clear(struct metric *m)
{
    struct series *s = m->series;

    while (s) {
        struct series *next = s->next;
        series_free(s);
        s = next;
    }
    m->series = NULL;
    m->tail = &m->series;
    if (m->n_labels == 0)
        series_new(m, NULL);
}

void metrics_free_all(void)
{
    struct metric *m = g_metrics;

    while (m) {
        struct metric *next = m->next;
        struct series *s = m->series;
        while (s) {
            struct series *sn = s->next;
            series_free(s);
            s = sn;
        }
        for (size_t i = 0; i < m->n_labels; i++)
            free(m->labels[i]);
        free(m->bounds);
        free(m->name);
        free(m->help);
        free(m);
        m = next;
    }
    g_metrics = NULL;
    g_tail = &g_metrics;
    postern_forget();
}

/* ---- rendering ---- */

/* Go's float syntax: shortest of %.15g / %.17g that reads back exactly. */
static void put_number(struct strbuf *b, double v)
{
    char buf[40];

    if (isnan(v)) {
        sb_puts(b, "NaN");
        return;
    }
    if (isinf(v)) {
        sb_puts(b, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    if (v == 0) {
        sb_putc(b, '0'); /* never "-0" */
        return;
    }
    snprintf(buf, sizeof(buf), "%.15g", v);
    if (strtod(buf, NULL) != v)
        snprintf(buf, sizeof(buf), "%.17g", v);
    sb_puts(b, buf);
}

static void put_u64(struct strbuf *b, uint64_t v)
{
    sb_printf(b, "%llu", (unsigned long long)v);
}

/* HELP text escapes backslash and newline; label values also '"'. */
static void put_escaped(struct strbuf *b, const char *s, bool quote)
{
    for (; *s; s++) {
        if (*s == '\\')
            sb_puts(b, "\\\\");
        else if (*s == '\n')
            sb_puts(b, "\\n");
        else if (quote && *s == '"')
            sb_puts(b, "\\\"");
        else
            sb_putc(b, *s);
    }
}

/* name{l1="v1",...,extra="x"}; extra_name NULL for none. */
static void put_head(struct strbuf *b, const struct metric *m,
                     const char *suffix, const struct series *s,
                     const char *extra_name, const char *extra_value)
{
    bool any = false;

    sb_puts(b, m->name);
    if (suffix)
        sb_puts(b, suffix);
    for (size_t i = 0; i < m->n_labels; i++) {
        sb_puts(b, any ? "," : "{");
        any = true;
        sb_puts(b, m->labels[i]);
        sb_puts(b, "=\"");
        put_escaped(b, s->values[i], true);
        sb_putc(b, '"');
    }
    if (extra_name) {
        sb_puts(b, any ? "," : "{");
        any = true;
        sb_printf(b, "%s=\"%s\"", extra_name, extra_value);
    }
    if (any)
        sb_putc(b, '}');
    sb_putc(b, ' ');
}

static void render_histogram(struct strbuf *b, const struct metric *m,
                             const struct series *s)
{
    uint64_t cum = 0;
    char le[40];

    for (size_t i = 0; i <= m->n_bounds; i++) {
        struct strbuf tmp;
        cum += s->buckets[i];
        if (i < m->n_bounds) {
            sb_init(&tmp);
            put_number(&tmp, m->bounds[i]);
            snprintf(le, sizeof(le), "%s", tmp.s);
            sb_free(&tmp);
        } else {
            snprintf(le, sizeof(le), "+Inf");
        }
        put_head(b, m, "_bucket", s, "le", le);
        put_u64(b, cum);
        sb_putc(b, '\n');
    }
    put_head(b, m, "_sum", s, NULL, NULL);
    put_number(b, s->sum);
    sb_putc(b, '\n');
    put_head(b, m, "_count", s, NULL, NULL);
    put_u64(b, s->count);
    sb_putc(b, '\n');
}

void metrics_render(struct strbuf *out)
{
    for (const struct metric *m = g_metrics; m; m = m->next) {
        sb_printf(out, "# HELP %s ", m->name);
        put_escaped(out, m->help, false);
        sb_printf(out, "\n# TYPE %s %s\n", m->name, type_name(m->type));
        for (const struct series *s = m->series; s; s = s->next) {
            if (m->type == M_HISTOGRAM) {
                render_histogram(out, m, s);
                continue;
            }
            put_head(out, m, NULL, s, NULL, NULL);
            put_number(out, s->value);
            sb_putc(out, '\n');
        }
    }
}

/* ---- the postern metric set ---- */

static struct {
    struct metric *messages;
    struct metric *provider_errors;
    struct metric *retries;
    struct metric *dead_letters;
    struct metric *latency;
    struct metric *queue_depth;
    struct metric *redis_up;
    struct metric *gateway_up;
} pm;

static void postern_forget(void)
{
    memset(&pm, 0, sizeof(pm));
}

static const char *const error_classes[] = {"temporary", "permanent", "timeout",
                                            "auth"};

void metrics_postern_init(void)
{
    if (pm.messages)
        return;
    pm.messages = metrics_counter(
        "postern_messages_total",
        "Messages bridged, by gateway and direction (out: XMPP to "
        "SMS/email, accepted; in: SMS/email to XMPP, delivered).",
        "gateway,direction");
    pm.provider_errors = metrics_counter(
        "postern_provider_errors_total",
        "Failed provider requests by class (temporary, permanent, timeout, "
        "auth).",
        "gateway,class");
    pm.retries =
        metrics_counter("postern_retries_total",
                        "Outbound sends scheduled for a retry.", "gateway");
    pm.dead_letters = metrics_counter(
        "postern_dead_letters_total",
        "Outbound messages moved to the dead-letter stream.", "gateway");
    pm.latency = metrics_histogram(
        "postern_send_latency_seconds",
        "Time from the XMPP stanza's arrival to the provider's answer.",
        "gateway", NULL, 0);
    pm.queue_depth = metrics_gauge(
        "postern_queue_depth",
        "Entries waiting in Redis, by gateway and queue (out, in, retry, "
        "dead).",
        "gateway,queue");
    pm.redis_up =
        metrics_gauge("postern_redis_up", "Whether Redis is connected.", NULL);
    pm.gateway_up =
        metrics_gauge("postern_gateway_up",
                      "Whether the gateway's XMPP stream is up.", "gateway");
}

void metrics_message(const char *gw, const char *direction)
{
    metrics_postern_init();
    metrics_inc(pm.messages, gw, direction);
}

void metrics_provider_error(const char *gw, const char *cls)
{
    metrics_postern_init();
    metrics_inc(pm.provider_errors, gw, cls);
}

void metrics_retry(const char *gw)
{
    metrics_postern_init();
    metrics_inc(pm.retries, gw);
}

void metrics_dead_letter(const char *gw)
{
    metrics_postern_init();
    metrics_inc(pm.dead_letters, gw);
}

void metrics_latency(const char *gw, double seconds)
{
    metrics_postern_init();
    metrics_observe(pm.latency, seconds < 0 ? 0 : seconds, gw);
}

void metrics_queue_depth(const char *gw, const char *queue, double n)
{
    metrics_postern_init();
    metrics_set(pm.queue_depth, n, gw, queue);
}

void metrics_redis_up(bool up)
{
    metrics_postern_init();
    metrics_set(pm.redis_up, up ? 1 : 0);
}

void metrics_gateway_up(const char *gw, bool up)
{
    metrics_postern_init();
    metrics_set(pm.gateway_up, up ? 1 : 0, gw);
    /* adding 0 creates the series without changing them */
    metrics_add(pm.messages, 0, gw, "in");
    metrics_add(pm.messages, 0, gw, "out");
    for (size_t i = 0; i < ARRAY_SIZE(error_classes); i++)
        metrics_add(pm.provider_errors, 0, gw, error_classes[i]);
    metrics_add(pm.retries, 0, gw);
    metrics_add(pm.dead_letters, 0, gw);
    series_touch(pm.latency, gw);
}

/* ---- queue depth poller ---- */

static const char *const queue_names[] = {"out", "in", "retry", "dead"};

struct poller {
    struct event *timer;
    struct store *s;
    const struct config *cfg;
    unsigned pending; /* store calls not answered yet */
    bool stopped;     /* freed by the last answer */
};

struct poll_req {
    struct poller *p;
    char *gw;
};

static struct poller *g_poller;

static void depth_cb(const struct error *err, const long long *v, size_t n,
                     void *arg)
{
    struct poll_req *r = arg;
    struct poller *p = r->p;

    p->pending--;
    if (!p->stopped) {
        if (err) {
            log_debug(MOD, "queue depths of %s: %s", r->gw, err->msg);
        } else {
            for (size_t i = 0; i < n && i < ARRAY_SIZE(queue_names); i++)
                metrics_queue_depth(r->gw, queue_names[i], (double)v[i]);
        }
    }
    free(r->gw);
    free(r);
    if (p->stopped && p->pending == 0)
        free(p);
}

static void poll_tick(evutil_socket_t fd, short what, void *arg)
{
    struct poller *p = arg;
    (void)fd;
    (void)what;

    /* a slow Redis must not pile up rounds */
    if (p->pending || !store_connected(p->s))
        return;
    for (size_t i = 0; i < p->cfg->n_gateways; i++) {
        struct poll_req *r = xcalloc(1, sizeof(*r));
        r->p = p;
        r->gw = xstrdup(p->cfg->gateways[i].jid);
        p->pending++;
        store_queue_depths(p->s, r->gw, depth_cb, r);
    }
}

void metrics_queue_poll_start(struct event_base *base, struct store *s,
                              const struct config *cfg, unsigned interval_ms)
{
    struct poller *p;
    struct timeval tv;

    metrics_queue_poll_stop();
    if (!interval_ms)
        interval_ms = 5000;
    p = xcalloc(1, sizeof(*p));
    p->s = s;
    p->cfg = cfg;
    p->timer = event_new(base, -1, EV_PERSIST, poll_tick, p);
    if (!p->timer)
        fatal("metrics: cannot create the queue poll timer");
    tv.tv_sec = (time_t)(interval_ms / 1000);
    tv.tv_usec = (suseconds_t)((interval_ms % 1000) * 1000);
    event_add(p->timer, &tv);
    g_poller = p;
}

void metrics_queue_poll_stop(void)
{
    struct poller *p = g_poller;

    if (!p)
        return;
    g_poller = NULL;
    event_free(p->timer);
    p->timer = NULL;
    if (p->pending) {
        p->stopped = true;
        return;
    }
    free(p);
}
