/*
 * fast_provider: see fast_provider.h. Owns one thread, its event_base,
 * an evhttp server on 127.0.0.1, the held requests and the per-seq
 * arrival times.
 *
 * It must stay cheap, so that what the benchmark measures is postern and
 * not this server: no logging per request, one form parse, one reply.
 * Other threads only touch atomics; a 10 ms timer on the provider's own
 * loop notices release and stop requests, so libevent needs no locking.
 * A held request whose connection closes is forgotten (evhttp frees it),
 * never answered.
 */
#include "fast_provider.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>

#define TICK_US 10000
#define MAX_BODY 65536
#define TWIML_EMPTY "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>"

struct held {
    struct held *next;
    struct fast_provider *fp;
    struct evhttp_request *req;
    struct evhttp_connection *evcon;
    struct event *timer;
    char *json;
};

struct fast_provider {
    struct fp_conf conf;
    struct event_base *base;
    struct evhttp *http;
    struct event *tick;
    pthread_t thread;
    bool started;
    int port;
    uint64_t sid_counter;
    struct held *held;
    atomic_bool stop;
    atomic_bool release;
    bool released; /* provider thread's view */
    atomic_size_t received, answered, unique, dups, bad;
    atomic_llong *arrival_ns; /* 0: none yet */
};

static long long now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* The request body as a NUL-terminated copy (free it), or NULL. */
static char *body_copy(struct evhttp_request *req)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    char *s = malloc(len + 1);

    if (!s)
        return NULL;
    if (evbuffer_copyout(in, s, len) != (ev_ssize_t)len) {
        free(s);
        return NULL;
    }
    s[len] = '\0';
    return s;
}

static void reply(struct evhttp_request *req, int code, const char *reason,
                  const char *ctype, const char *body)
{
    struct evbuffer *out = evbuffer_new();

    if (ctype)
        evhttp_add_header(evhttp_request_get_output_headers(req),
                          "Content-Type", ctype);
    if (out && body)
        evbuffer_add(out, body, strlen(body));
    evhttp_send_reply(req, code, reason, out);
    if (out)
        evbuffer_free(out);
}

/* JSON string contents: quotes, backslashes and controls escaped. */
static void json_escape(char *out, size_t size, const char *s)
{
    size_t o = 0;

    for (; s && *s && o + 7 < size; s++) {
        unsigned char c = (unsigned char)*s;

        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20) {
            o += (size_t)snprintf(out + o, size - o, "\\u%04x", c);
        } else {
            out[o++] = (char)c;
        }
    }
    out[o] = '\0';
}

/* Parses "b<digits>" at the start of body; -1 when it is not there. */
static long long seq_of(const char *body)
{
    long long v = 0;
    const char *p;

    if (!body || body[0] != 'b' || body[1] < '0' || body[1] > '9')
        return -1;
    for (p = body + 1; *p >= '0' && *p <= '9'; p++) {
        v = v * 10 + (*p - '0');
        if (v > (1LL << 40))
            return -1;
    }
    return v;
}

static void record_arrival(struct fast_provider *fp, const char *body)
{
    long long seq = seq_of(body);
    long long expected = 0;

    if (seq < 0 || (size_t)seq >= fp->conf.max_seq) {
        atomic_fetch_add(&fp->bad, 1);
        return;
    }
    if (atomic_compare_exchange_strong(&fp->arrival_ns[seq], &expected,
                                       now_ns()))
        atomic_fetch_add(&fp->unique, 1);
    else
        atomic_fetch_add(&fp->dups, 1);
}

static char *twilio_json(struct fast_provider *fp, const char *sid,
                         struct evkeyvalq *form)
{
    char sm[40], body[512], from[64], to[64];
    char *json = NULL;
    int n;

    snprintf(sm, sizeof(sm), "SM%016llx%016llx", 0x5057ULL,
             (unsigned long long)++fp->sid_counter);
    json_escape(body, sizeof(body), evhttp_find_header(form, "Body"));
    json_escape(from, sizeof(from), evhttp_find_header(form, "From"));
    json_escape(to, sizeof(to), evhttp_find_header(form, "To"));
    n = asprintf(
        &json,
        "{\"account_sid\": \"%s\", \"api_version\": \"2010-04-01\", "
        "\"body\": \"%s\", "
        "\"date_created\": \"Thu, 30 Jul 2015 20:12:31 +0000\", "
        "\"date_sent\": null, "
        "\"date_updated\": \"Thu, 30 Jul 2015 20:12:31 +0000\", "
        "\"direction\": \"outbound-api\", \"error_code\": null, "
        "\"error_message\": null, \"from\": \"%s\", "
        "\"messaging_service_sid\": null, \"num_media\": \"0\", "
        "\"num_segments\": \"1\", \"price\": null, \"price_unit\": \"USD\", "
        "\"sid\": \"%s\", \"status\": \"queued\", "
        "\"subresource_uris\": {\"media\": "
        "\"/2010-04-01/Accounts/%s/Messages/%s/Media.json\"}, "
        "\"to\": \"%s\", "
        "\"uri\": \"/2010-04-01/Accounts/%s/Messages/%s.json\"}",
        sid, body, from, sm, sid, sm, to, sid, sm);
    return n < 0 ? NULL : json;
}

static void held_unlink(struct fast_provider *fp, struct held *h)
{
    for (struct held **pp = &fp->held; *pp; pp = &(*pp)->next) {
        if (*pp == h) {
            *pp = h->next;
            return;
        }
    }
}

static void held_free(struct held *h)
{
    if (h->timer)
        event_free(h->timer);
    free(h->json);
    free(h);
}

static void held_answer(struct held *h)
{
    reply(h->req, 201, "Created", "application/json", h->json);
    atomic_fetch_add(&h->fp->answered, 1);
}

static void held_fire(evutil_socket_t fd, short what, void *arg)
{
    struct held *h = arg;

    (void)fd;
    (void)what;
    held_unlink(h->fp, h);
    held_answer(h);
    held_free(h);
}

static void conn_closed(struct evhttp_connection *evcon, void *arg)
{
    struct fast_provider *fp = arg;
    struct held **pp = &fp->held;

    while (*pp) {
        struct held *h = *pp;

        if (h->evcon == evcon) {
            *pp = h->next;
            held_free(h);
        } else {
            pp = &h->next;
        }
    }
}

/* "/2010-04-01/Accounts/{sid}/Messages.json" -> sid in out, else -1. */
static int messages_path(const char *path, char *out, size_t size)
{
    static const char pre[] = "/2010-04-01/Accounts/";
    static const char post[] = "/Messages.json";
    size_t len, plen = strlen(path);

    if (strncmp(path, pre, sizeof(pre) - 1) != 0 ||
        plen < sizeof(pre) - 1 + sizeof(post) - 1 + 1)
        return -1;
    len = plen - (sizeof(pre) - 1) - (sizeof(post) - 1);
    if (strcmp(path + plen - (sizeof(post) - 1), post) != 0 || len >= size)
        return -1;
    memcpy(out, path + sizeof(pre) - 1, len);
    out[len] = '\0';
    return strchr(out, '/') ? -1 : 0;
}

static void on_twilio(struct fast_provider *fp, struct evhttp_request *req,
                      const char *path, struct evkeyvalq *form)
{
    char sid[64];
    const char *auth = evhttp_find_header(evhttp_request_get_input_headers(req),
                                          "Authorization");
    char *json;
    struct held *h;

    if (messages_path(path, sid, sizeof(sid)) < 0) {
        reply(req, 404, "Not Found", "application/json",
              "{\"code\": 20404, \"message\": \"The requested resource was "
              "not found\", \"status\": 404}");
        atomic_fetch_add(&fp->bad, 1);
        atomic_fetch_add(&fp->answered, 1);
        return;
    }
    if (!auth || strncmp(auth, "Basic ", 6) != 0) {
        reply(req, 401, "Unauthorized", "application/json",
              "{\"code\": 20003, \"message\": \"Authenticate\", "
              "\"status\": 401}");
        atomic_fetch_add(&fp->bad, 1);
        atomic_fetch_add(&fp->answered, 1);
        return;
    }
    record_arrival(fp, evhttp_find_header(form, "Body"));
    json = twilio_json(fp, sid, form);
    if (!fp->conf.hold_ms || fp->released || !json) {
        reply(req, json ? 201 : 500, json ? "Created" : "Error",
              "application/json", json ? json : "{}");
        free(json);
        atomic_fetch_add(&fp->answered, 1);
        return;
    }
    h = calloc(1, sizeof(*h));
    if (!h) {
        reply(req, 201, "Created", "application/json", json);
        free(json);
        atomic_fetch_add(&fp->answered, 1);
        return;
    }
    h->fp = fp;
    h->req = req;
    h->json = json;
    h->evcon = evhttp_request_get_connection(req);
    h->timer = evtimer_new(fp->base, held_fire, h);
    evhttp_connection_set_closecb(h->evcon, conn_closed, fp);
    h->next = fp->held;
    fp->held = h;
    if (h->timer) {
        struct timeval tv = {.tv_sec = fp->conf.hold_ms / 1000,
                             .tv_usec = (fp->conf.hold_ms % 1000) * 1000};
        evtimer_add(h->timer, &tv);
    }
}

static void on_request(struct evhttp_request *req, void *arg)
{
    struct fast_provider *fp = arg;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    struct evkeyvalq form;
    char *body;

    atomic_fetch_add(&fp->received, 1);
    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST || !path) {
        reply(req, 405, "Method Not Allowed", NULL, NULL);
        atomic_fetch_add(&fp->bad, 1);
        atomic_fetch_add(&fp->answered, 1);
        return;
    }
    TAILQ_INIT(&form);
    body = body_copy(req);
    if (!body || evhttp_parse_query_str(body, &form) < 0 ||
        TAILQ_EMPTY(&form)) {
        reply(req, 400, "Bad Request", NULL, NULL);
        atomic_fetch_add(&fp->bad, 1);
        atomic_fetch_add(&fp->answered, 1);
        goto out;
    }
    if (fp->conf.kind == FP_CEILING) {
        reply(req, 200, "OK", "text/xml", TWIML_EMPTY);
        atomic_fetch_add(&fp->answered, 1);
    } else {
        on_twilio(fp, req, path, &form);
    }
out:
    evhttp_clear_headers(&form);
    free(body);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct fast_provider *fp = arg;

    (void)fd;
    (void)what;
    if (atomic_load(&fp->release) && !fp->released) {
        fp->released = true;
        while (fp->held) {
            struct held *h = fp->held;

            fp->held = h->next;
            held_answer(h);
            held_free(h);
        }
    }
    if (atomic_load(&fp->stop))
        event_base_loopbreak(fp->base);
}

static void *thread_main(void *arg)
{
    struct fast_provider *fp = arg;

    event_base_dispatch(fp->base);
    return NULL;
}

static void destroy(struct fast_provider *fp)
{
    while (fp->held) {
        struct held *h = fp->held;

        fp->held = h->next;
        held_free(h);
    }
    if (fp->tick)
        event_free(fp->tick);
    if (fp->http)
        evhttp_free(fp->http);
    if (fp->base)
        event_base_free(fp->base);
    free(fp->arrival_ns);
    free(fp);
}

struct fast_provider *fast_provider_start(const struct fp_conf *c)
{
    struct fast_provider *fp = calloc(1, sizeof(*fp));
    struct evhttp_bound_socket *bound;
    struct sockaddr_in sin;
    socklen_t slen = sizeof(sin);
    struct timeval tick = {.tv_sec = 0, .tv_usec = TICK_US};

    if (!fp)
        return NULL;
    fp->conf = *c;
    if (fp->conf.max_seq == 0)
        fp->conf.max_seq = 1;
    fp->arrival_ns = calloc(fp->conf.max_seq, sizeof(*fp->arrival_ns));
    fp->base = event_base_new();
    fp->http = fp->base ? evhttp_new(fp->base) : NULL;
    if (!fp->arrival_ns || !fp->http) {
        fprintf(stderr, "fast_provider: out of memory\n");
        goto fail;
    }
    for (size_t i = 0; i < fp->conf.max_seq; i++)
        atomic_init(&fp->arrival_ns[i], 0);
    evhttp_set_max_body_size(fp->http, MAX_BODY);
    evhttp_set_max_headers_size(fp->http, 16384);
    evhttp_set_timeout(fp->http, 120);
    evhttp_set_gencb(fp->http, on_request, fp);
    bound = evhttp_bind_socket_with_handle(fp->http, "127.0.0.1",
                                           (ev_uint16_t)c->port);
    if (!bound) {
        fprintf(stderr, "fast_provider: cannot bind 127.0.0.1:%d\n", c->port);
        goto fail;
    }
    if (getsockname(evhttp_bound_socket_get_fd(bound), (struct sockaddr *)&sin,
                    &slen) < 0)
        goto fail;
    fp->port = ntohs(sin.sin_port);
    fp->tick = event_new(fp->base, -1, EV_PERSIST, on_tick, fp);
    if (!fp->tick || event_add(fp->tick, &tick) < 0)
        goto fail;
    if (pthread_create(&fp->thread, NULL, thread_main, fp) != 0) {
        fprintf(stderr, "fast_provider: pthread_create failed\n");
        goto fail;
    }
    fp->started = true;
    return fp;
fail:
    destroy(fp);
    return NULL;
}

int fast_provider_port(const struct fast_provider *fp)
{
    return fp->port;
}

void fast_provider_release(struct fast_provider *fp)
{
    atomic_store(&fp->release, true);
}

size_t fast_provider_received(const struct fast_provider *fp)
{
    return atomic_load(&fp->received);
}

size_t fast_provider_answered(const struct fast_provider *fp)
{
    return atomic_load(&fp->answered);
}

size_t fast_provider_unique(const struct fast_provider *fp)
{
    return atomic_load(&fp->unique);
}

size_t fast_provider_dups(const struct fast_provider *fp)
{
    return atomic_load(&fp->dups);
}

size_t fast_provider_bad(const struct fast_provider *fp)
{
    return atomic_load(&fp->bad);
}

double fast_provider_arrival(const struct fast_provider *fp, size_t seq)
{
    long long ns;

    if (seq >= fp->conf.max_seq)
        return -1.0;
    ns = atomic_load(&fp->arrival_ns[seq]);
    return ns ? (double)ns / 1e9 : -1.0;
}

void fast_provider_stop(struct fast_provider *fp)
{
    if (!fp)
        return;
    if (fp->started) {
        atomic_store(&fp->stop, true);
        pthread_join(fp->thread, NULL);
    }
    destroy(fp);
}
