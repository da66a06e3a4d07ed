/*
 * http_server.c with a real event loop in-process: the server listens on
 * 127.0.0.1 port 0 and a plain-socket client talks HTTP/1.1 to it. Every
 * wait drives the loop until a condition holds, bounded by a deadline; no
 * test sleeps. Covers routing (longest prefix, 404), the accessors,
 * percent-decoding, the body and header limits, HEAD/GET/POST and the
 * methods evhttp refuses, keep-alive, asynchronous replies, clients that
 * go away before the reply, freeing the server with a request pending,
 * the wall-clock request deadline and the connection cap.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "http_server.h"
#include "log.h"
#include "util.h"

#define WAIT_MS 5000

struct t;

struct tag {
    struct t *t;
    const char *name;
};

struct t {
    struct event_base *base;
    struct http_server *srv;
    struct event *tick;
    struct event *reply_ev;
    int port;
    struct tag tags[8];

    /* what the last handler saw */
    int calls;
    char name[32];
    char method[16];
    char path[256];
    char uri[256];
    char query[256];
    bool query_null;
    char xtest[64];
    bool missing_null;
    char peer[64];
    char *body;
    size_t body_len;
    bool body_nul;

    struct http_request *held;
    int replied;
};

/* ---- loop driving ---- */

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
}

typedef bool cond_fn(void *arg);

/* Drives the loop until cond holds; false when WAIT_MS passed first. */
static bool run_until(struct t *t, cond_fn *cond, void *arg)
{
    uint64_t end = now_ms() + WAIT_MS;

    while (!cond(arg)) {
        if (now_ms() > end)
            return false;
        event_base_loop(t->base, EVLOOP_ONCE);
    }
    return true;
}

/* ---- handlers ---- */

static void record(struct t *t, const char *name, struct http_request *req)
{
    const char *q = http_req_query(req);
    const char *x = http_req_header(req, "x-TEST");
    size_t len;
    const char *body = http_req_body(req, &len);

    t->calls++;
    snprintf(t->name, sizeof(t->name), "%s", name);
    snprintf(t->method, sizeof(t->method), "%s", http_req_method(req));
    snprintf(t->path, sizeof(t->path), "%s", http_req_path(req));
    snprintf(t->uri, sizeof(t->uri), "%s", http_req_uri(req));
    t->query_null = q == NULL;
    snprintf(t->query, sizeof(t->query), "%s", q ? q : "");
    snprintf(t->xtest, sizeof(t->xtest), "%s", x ? x : "");
    t->missing_null = http_req_header(req, "X-Absent") == NULL;
    snprintf(t->peer, sizeof(t->peer), "%s", http_req_peer(req));
    free(t->body);
    t->body = xmalloc(len + 1);
    memcpy(t->body, body, len + 1);
    t->body_len = len;
    t->body_nul = body[len] == '\0';
}

/* Answers at once with the route's name so the client sees who ran. */
static void h_name(struct http_request *req, void *arg)
{
    struct tag *tag = arg;
    char out[64];
    int n;

    record(tag->t, tag->name, req);
    n = snprintf(out, sizeof(out), "route=%s\n", tag->name);
    http_reply(req, 200, "text/plain", out, (size_t)n);
}

/* No type, no body: 204 with our text/plain, never evhttp's text/html. */
static void h_empty(struct http_request *req, void *arg)
{
    struct tag *tag = arg;

    record(tag->t, tag->name, req);
    http_reply(req, 204, NULL, NULL, 0);
}

/* Keeps the request; the test answers it later. */
static void h_hold(struct http_request *req, void *arg)
{
    struct tag *tag = arg;

    record(tag->t, tag->name, req);
    tag->t->held = req;
}

static void on_reply_timer(evutil_socket_t fd, short what, void *arg)
{
    struct t *t = arg;
    static const char json[] = "{\"ok\":true}";

    (void)fd;
    (void)what;
    if (!t->held)
        return;
    http_reply(t->held, 202, "application/json", json, sizeof(json) - 1);
    t->held = NULL;
    t->replied++;
}

/* Holds the request, then answers from a timer (the webhook pattern). */
static void h_async(struct http_request *req, void *arg)
{
    struct tag *tag = arg;
    struct timeval tv = {0, 10 * 1000};

    h_hold(req, arg);
    evtimer_add(tag->t->reply_ev, &tv);
}

/* ---- fixture ---- */

static struct t *t_new(size_t max_body, unsigned timeout_s)
{
    struct t *t = xcalloc(1, sizeof(*t));
    struct error err;
    struct timeval tv = {0, 5 * 1000};
    static const char *names[] = {"sms",  "special", "health", "a",
                                  "hold", "async",   "root2",  "spare"};

    t->base = event_base_new();
    assert_non_null(t->base);
    t->tick = event_new(t->base, -1, EV_PERSIST, on_tick, NULL);
    event_add(t->tick, &tv);
    t->reply_ev = evtimer_new(t->base, on_reply_timer, t);
    error_clear(&err);
    t->srv = http_server_new(t->base, "127.0.0.1:0", max_body, timeout_s, &err);
    assert_non_null(t->srv);
    t->port = http_server_port(t->srv);
    assert_true(t->port > 0);
    for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
        t->tags[i].t = t;
        t->tags[i].name = names[i];
    }
    http_server_route(t->srv, "/sms/", h_name, &t->tags[0]);
    http_server_route(t->srv, "/sms/special/", h_name, &t->tags[1]);
    http_server_route(t->srv, "/healthz", h_name, &t->tags[2]);
    http_server_route(t->srv, "/a", h_name, &t->tags[3]);
    http_server_route(t->srv, "/hold", h_hold, &t->tags[4]);
    http_server_route(t->srv, "/async", h_async, &t->tags[5]);
    http_server_route(t->srv, "/empty", h_empty, &t->tags[7]);
    return t;
}

static void t_free(struct t *t)
{
    if (t->srv)
        http_server_free(t->srv);
    /* let libevent run the finalizers of the freed bufferevents */
    event_base_loop(t->base, EVLOOP_NONBLOCK);
    event_free(t->reply_ev);
    event_free(t->tick);
    event_base_free(t->base);
    free(t->body);
    free(t);
}

/* ---- client ---- */

struct resp {
    int fd;
    struct strbuf raw;
    bool closed;
    int status;
    const char *headers; /* into raw */
    const char *body;    /* into raw */
    size_t body_len;
};

static int cli_connect(int port)
{
    struct sockaddr_in sa;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    assert_true(fd >= 0);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* loopback: the kernel completes the handshake from its backlog */
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return fd;
}

static void cli_send(int fd, const char *s, size_t n)
{
    while (n) {
        ssize_t w = send(fd, s, n, MSG_NOSIGNAL);
        assert_true(w > 0);
        s += w;
        n -= (size_t)w;
    }
}

/* Reads what is there; true once the server closed the connection. */
static bool cli_closed(void *arg)
{
    struct resp *r = arg;
    char buf[4096];

    for (;;) {
        ssize_t n = recv(r->fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n > 0) {
            sb_append(&r->raw, buf, (size_t)n);
            continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
            r->closed = true;
            return true;
        }
        return false;
    }
}

static void resp_parse(struct resp *r)
{
    char *end;

    r->status = 0;
    r->headers = r->body = NULL;
    r->body_len = 0;
    if (!r->raw.s || sscanf(r->raw.s, "HTTP/1.%*d %d", &r->status) != 1)
        return;
    end = strstr(r->raw.s, "\r\n\r\n");
    if (!end)
        return;
    end[2] = '\0'; /* headers end with their own CRLF */
    r->headers = r->raw.s;
    r->body = end + 4;
    r->body_len = r->raw.len - (size_t)(r->body - r->raw.s);
}

/* Header value (copied into out) or NULL; case-insensitive name. */
static const char *resp_header(const struct resp *r, const char *name,
                               char *out, size_t size)
{
    const char *p = r->headers ? strstr(r->headers, "\r\n") : NULL;
    size_t nl = strlen(name);

    while (p && p[2]) {
        const char *line = p + 2, *eol = strstr(line, "\r\n");
        if (!eol)
            break;
        if (strncasecmp(line, name, nl) == 0 && line[nl] == ':') {
            const char *v = line + nl + 1;
            while (*v == ' ')
                v++;
            snprintf(out, size, "%.*s", (int)(eol - v), v);
            return out;
        }
        p = eol;
    }
    return NULL;
}

/* One request on a fresh connection; waits until the server closes. */
static void exchange(struct t *t, const char *req, size_t len, struct resp *r)
{
    memset(r, 0, sizeof(*r));
    sb_init(&r->raw);
    r->fd = cli_connect(t->port);
    cli_send(r->fd, req, len);
    assert_true(run_until(t, cli_closed, r));
    close(r->fd);
    r->fd = -1;
    resp_parse(r);
}

static void get(struct t *t, const char *method, const char *target,
                struct resp *r)
{
    char req[1024];
    int n = snprintf(req, sizeof(req),
                     "%s %s HTTP/1.1\r\nHost: test\r\n"
                     "Connection: close\r\n\r\n",
                     method, target);
    exchange(t, req, (size_t)n, r);
}

static void resp_free(struct resp *r)
{
    if (r->fd >= 0)
        close(r->fd);
    sb_free(&r->raw);
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    int n = 0;

    assert_non_null(d);
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1; /* the DIR's own descriptor */
}

struct fd_goal {
    int want;
};

static bool fds_at(void *arg)
{
    struct fd_goal *g = arg;
    return count_fds() == g->want;
}

static bool held(void *arg)
{
    struct t *t = arg;
    return t->held != NULL;
}

/* ---- tests ---- */

static void expect_route(struct t *t, const char *target, int status,
                         const char *name)
{
    struct resp r;
    char want[64];
    int calls = t->calls;

    get(t, "GET", target, &r);
    assert_int_equal(r.status, status);
    if (name) {
        snprintf(want, sizeof(want), "route=%s\n", name);
        assert_non_null(r.body);
        assert_string_equal(r.body, want);
        assert_int_equal(t->calls, calls + 1);
        assert_string_equal(t->name, name);
    } else {
        assert_int_equal(t->calls, calls);
    }
    resp_free(&r);
}

static void test_routing(void **state)
{
    struct t *t = t_new(4096, 5);
    struct resp r;
    char v[64];

    (void)state;
    expect_route(t, "/healthz", 200, "health");
    expect_route(t, "/healthz?full=1", 200, "health");
    expect_route(t, "/healthz/deep", 200, "health");
    expect_route(t, "/healthzz", 404, NULL);
    expect_route(t, "/sms/sms.example.org/inbound", 200, "sms");
    expect_route(t, "/sms/special/x", 200, "special");
    expect_route(t, "/sms/special/", 200, "special");
    /* "/sms/special" lacks the trailing '/' of the longer route */
    expect_route(t, "/sms/special", 200, "sms");
    expect_route(t, "/sms", 404, NULL);
    expect_route(t, "/", 404, NULL);
    expect_route(t, "/nothing/here", 404, NULL);

    /* registering a prefix again replaces its handler */
    http_server_route(t->srv, "/healthz", h_name, &t->tags[6]);
    expect_route(t, "/healthz", 200, "root2");

    get(t, "GET", "/missing", &r);
    assert_int_equal(r.status, 404);
    assert_string_equal(r.body, "not found\n");
    assert_non_null(resp_header(&r, "Content-Type", v, sizeof(v)));
    assert_string_equal(resp_header(&r, "Content-Length", v, sizeof(v)), "10");
    assert_string_equal(resp_header(&r, "Cache-Control", v, sizeof(v)),
                        "no-store");
    resp_free(&r);
    t_free(t);
}

static void test_accessors(void **state)
{
    struct t *t = t_new(4096, 5);
    struct resp r;
    static const char req[] = "POST /a/b%20c?x=1&y=%41 HTTP/1.1\r\n"
                              "Host: test\r\n"
                              "X-Test: hello there\r\n"
                              "Content-Type: application/x-www-form-"
                              "urlencoded\r\n"
                              "Content-Length: 11\r\n"
                              "Connection: close\r\n\r\n"
                              "k=v&z=1&q=2";

    (void)state;
    exchange(t, req, sizeof(req) - 1, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(t->calls, 1);
    assert_string_equal(t->name, "a");
    assert_string_equal(t->method, "POST");
    assert_string_equal(t->path, "/a/b c");
    assert_string_equal(t->uri, "/a/b%20c?x=1&y=%41");
    assert_false(t->query_null);
    assert_string_equal(t->query, "x=1&y=%41");
    assert_string_equal(t->xtest, "hello there");
    assert_true(t->missing_null);
    assert_string_equal(t->peer, "127.0.0.1");
    assert_int_equal(t->body_len, 11);
    assert_string_equal(t->body, "k=v&z=1&q=2");
    assert_true(t->body_nul);
    resp_free(&r);

    /* no query string: NULL; no body: "" of length 0 */
    get(t, "GET", "/a", &r);
    assert_int_equal(r.status, 200);
    assert_true(t->query_null);
    assert_string_equal(t->uri, "/a");
    assert_int_equal(t->body_len, 0);
    assert_string_equal(t->body, "");
    assert_string_equal(t->xtest, "");
    resp_free(&r);
    t_free(t);
}

static void test_percent_decoding(void **state)
{
    struct t *t = t_new(4096, 5);
    struct resp r;

    (void)state;
    get(t, "GET", "/%61/x%2Fy%3f", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(t->name, "a");
    assert_string_equal(t->path, "/a/x/y?");
    assert_string_equal(t->uri, "/%61/x%2Fy%3f");
    resp_free(&r);

    /* an encoded route prefix routes like the plain one */
    get(t, "GET", "/%73ms/x", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(t->name, "sms");
    resp_free(&r);

    /* dots inside a segment are just characters */
    get(t, "GET", "/a/..x/.y/z..", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(t->path, "/a/..x/.y/z..");
    resp_free(&r);

    static const char *const bad[] = {
        "/a%00b",  "/a%",           "/a%4", "/a%zz",  "/a%4g",
        "/a/../b", "/sms/%2e%2e/x", "/a/.", "/a/./b", "/sms/..",
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        int calls = t->calls;
        get(t, "GET", bad[i], &r);
        assert_int_equal(r.status, 400);
        assert_int_equal(t->calls, calls);
        resp_free(&r);
    }
    t_free(t);
}

static void test_body_limit(void **state)
{
    struct t *t = t_new(1024, 5);
    struct resp r;
    struct strbuf req;
    char *body = xmalloc(1024);

    (void)state;
    memset(body, 'b', 1024);
    sb_init(&req);
    sb_puts(&req, "POST /a HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
                  "Content-Length: 1024\r\n\r\n");
    sb_append(&req, body, 1024);
    exchange(t, req.s, req.len, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(t->calls, 1);
    assert_int_equal(t->body_len, 1024);
    assert_memory_equal(t->body, body, 1024);
    resp_free(&r);
    sb_free(&req);

    /* one byte over: refused from the headers, before any body is read */
    static const char big[] = "POST /a HTTP/1.1\r\nHost: test\r\n"
                              "Content-Length: 1025\r\n\r\n";
    exchange(t, big, sizeof(big) - 1, &r);
    assert_int_equal(r.status, 413);
    assert_int_equal(t->calls, 1);
    resp_free(&r);
    free(body);
    t_free(t);
}

static void test_header_limit(void **state)
{
    struct t *t = t_new(1024, 5);
    struct resp r;
    struct strbuf req;
    char *pad = xmalloc(20001);

    (void)state;
    memset(pad, 'h', 20000);
    pad[20000] = '\0';

    /* 8 KiB of headers pass */
    pad[8000] = '\0';
    sb_init(&req);
    sb_printf(&req,
              "GET /a HTTP/1.1\r\nHost: test\r\nX-Pad: %s\r\n"
              "Connection: close\r\n\r\n",
              pad);
    exchange(t, req.s, req.len, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(t->calls, 1);
    resp_free(&r);
    sb_free(&req);

    /* 20 KB do not */
    pad[8000] = 'h';
    sb_init(&req);
    sb_printf(&req,
              "GET /a HTTP/1.1\r\nHost: test\r\nX-Pad: %s\r\n"
              "Connection: close\r\n\r\n",
              pad);
    exchange(t, req.s, req.len, &r);
    /* evhttp answers an over-long header block with 400 */
    assert_int_equal(r.status, 400);
    assert_int_equal(t->calls, 1);
    resp_free(&r);
    sb_free(&req);
    free(pad);
    t_free(t);
}

static void test_methods(void **state)
{
    struct t *t = t_new(1024, 5);
    struct resp r;
    char v[64], glen[16];

    (void)state;
    get(t, "GET", "/healthz", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(t->method, "GET");
    assert_string_equal(r.body, "route=health\n");
    assert_string_equal(resp_header(&r, "Content-Type", v, sizeof(v)),
                        "text/plain");
    assert_string_equal(resp_header(&r, "Cache-Control", v, sizeof(v)),
                        "no-store");
    snprintf(glen, sizeof(glen), "%s",
             resp_header(&r, "Content-Length", v, sizeof(v)));
    assert_string_equal(glen, "13");
    resp_free(&r);

    /* HEAD: the GET's headers, no body */
    get(t, "HEAD", "/healthz", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(t->method, "HEAD");
    assert_string_equal(resp_header(&r, "Content-Length", v, sizeof(v)), glen);
    assert_int_equal(r.body_len, 0);
    resp_free(&r);

    static const char post[] = "POST /healthz HTTP/1.1\r\nHost: test\r\n"
                               "Content-Length: 2\r\n"
                               "Connection: close\r\n\r\nhi";
    exchange(t, post, sizeof(post) - 1, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(t->method, "POST");
    assert_string_equal(t->body, "hi");
    resp_free(&r);

    get(t, "POST", "/empty", &r);
    assert_int_equal(r.status, 204);
    assert_string_equal(t->name, "spare");
    assert_int_equal(r.body_len, 0);
    assert_string_equal(resp_header(&r, "Content-Type", v, sizeof(v)),
                        "text/plain; charset=utf-8");
    assert_null(resp_header(&r, "Content-Length", v, sizeof(v)));
    resp_free(&r);

    /* anything else never reaches a handler */
    static const char *const refused[] = {"PUT", "DELETE", "OPTIONS", "PATCH",
                                          "TRACE"};
    for (size_t i = 0; i < ARRAY_SIZE(refused); i++) {
        int calls = t->calls;
        get(t, refused[i], "/healthz", &r);
        assert_true(r.status >= 400);
        assert_int_equal(t->calls, calls);
        resp_free(&r);
    }

    /* keep-alive: two pipelined requests on one connection */
    static const char two[] = "GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"
                              "GET /sms/x HTTP/1.1\r\nHost: test\r\n"
                              "Connection: close\r\n\r\n";
    exchange(t, two, sizeof(two) - 1, &r);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "route=health\n"));
    assert_non_null(strstr(r.body, "HTTP/1.1 200"));
    assert_non_null(strstr(r.body, "route=sms\n"));
    resp_free(&r);
    t_free(t);
}

static void test_async_reply(void **state)
{
    struct t *t = t_new(1024, 5);
    struct resp r;
    char v[64];

    (void)state;
    get(t, "POST", "/async/x", &r);
    assert_int_equal(r.status, 202);
    assert_int_equal(t->replied, 1);
    assert_null(t->held);
    assert_string_equal(r.body, "{\"ok\":true}");
    assert_string_equal(resp_header(&r, "Content-Type", v, sizeof(v)),
                        "application/json");
    assert_string_equal(resp_header(&r, "Content-Length", v, sizeof(v)), "11");
    resp_free(&r);
    t_free(t);
}

/*
 * The client goes away (FIN, then RST) while the handler still holds the
 * request; the late reply must be harmless and the server must release
 * the connection. ASan turns any use after free into a failure.
 */
static void test_client_gone(void **state)
{
    (void)state;
    for (int rst = 0; rst < 2; rst++) {
        struct t *t = t_new(1024, 5);
        struct fd_goal g = {count_fds()};
        static const char req[] = "GET /hold HTTP/1.1\r\nHost: test\r\n\r\n";
        int fd = cli_connect(t->port);

        cli_send(fd, req, sizeof(req) - 1);
        assert_true(run_until(t, held, t));
        if (rst) {
            struct linger lg = {1, 0};
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        }
        close(fd);
        /* answer from a timer, as a real handler would */
        event_active(t->reply_ev, EV_TIMEOUT, 0);
        assert_true(run_until(t, fds_at, &g));
        assert_int_equal(t->replied, 1);
        assert_null(t->held);
        t_free(t);
    }
}

/* Freeing the server with a request pending; the reply comes after. */
static void test_free_with_pending(void **state)
{
    struct t *t = t_new(1024, 5);
    struct fd_goal g = {count_fds()};
    static const char req[] = "POST /hold HTTP/1.1\r\nHost: test\r\n"
                              "Content-Length: 3\r\n\r\nabc";
    struct resp r;

    (void)state;
    memset(&r, 0, sizeof(r));
    sb_init(&r.raw);
    r.fd = cli_connect(t->port);
    cli_send(r.fd, req, sizeof(req) - 1);
    assert_true(run_until(t, held, t));
    http_server_free(t->srv);
    t->srv = NULL;
    /* the request's data stays readable until the reply */
    assert_string_equal(http_req_body(t->held, NULL), "abc");
    assert_string_equal(http_req_path(t->held), "/hold");
    http_reply(t->held, 200, "text/plain", "late", 4);
    t->held = NULL;
    /* the server closed its side without answering */
    assert_true(run_until(t, cli_closed, &r));
    assert_int_equal(r.raw.len, 0);
    resp_free(&r);
    g.want -= 1; /* the listening socket is gone too */
    assert_true(run_until(t, fds_at, &g));
    t_free(t);
}

struct drip {
    struct t *t;
    struct resp r;
    struct event *ev;
    int sent;
};

static void on_drip(evutil_socket_t fd, short what, void *arg)
{
    struct drip *d = arg;

    (void)fd;
    (void)what;
    if (d->r.closed || d->sent >= 10)
        return;
    if (send(d->r.fd, "x", 1, MSG_NOSIGNAL) == 1)
        d->sent++;
}

/*
 * A client that sends one body byte every 300 ms never trips evhttp's
 * per-read timeout of 1 s; the wall-clock deadline closes it after 1 s.
 */
static void test_request_deadline(void **state)
{
    struct t *t = t_new(1024, 1);
    struct drip d;
    struct timeval tv = {0, 300 * 1000};
    static const char req[] = "POST /a HTTP/1.1\r\nHost: test\r\n"
                              "Content-Length: 10\r\n\r\n";
    uint64_t start = now_ms(), took;

    (void)state;
    memset(&d, 0, sizeof(d));
    d.t = t;
    sb_init(&d.r.raw);
    d.r.fd = cli_connect(t->port);
    cli_send(d.r.fd, req, sizeof(req) - 1);
    d.ev = event_new(t->base, -1, EV_PERSIST, on_drip, &d);
    event_add(d.ev, &tv);
    assert_true(run_until(t, cli_closed, &d.r));
    took = now_ms() - start;
    assert_true(took >= 900);
    assert_true(d.sent < 10);
    assert_true(d.sent >= 3); /* really did outlive one read timeout */
    assert_int_equal(t->calls, 0);
    event_free(d.ev);
    resp_free(&d.r);
    t_free(t);
}

/*
 * The cap is 1024 connections: the 1025th waits in the kernel's backlog
 * until one of the others closes, then it is served.
 */
#define CAP 1024
struct cap {
    struct t *t;
    int base_fds;
    int want;
};

static bool cap_fds(void *arg)
{
    struct cap *c = arg;
    return count_fds() >= c->want;
}

static void test_connection_cap(void **state)
{
    struct rlimit rl;
    struct t *t;
    struct cap c;
    int *fds = xcalloc(CAP, sizeof(*fds));
    struct resp extra, probe;
    static const char req[] = "GET /healthz HTTP/1.1\r\nHost: test\r\n"
                              "Connection: close\r\n\r\n";

    (void)state;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < 3 * CAP) {
        rl.rlim_cur = rl.rlim_max < 4 * CAP ? rl.rlim_max : 4 * CAP;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur < 2 * CAP + 64) {
        free(fds);
        skip();
    }
    t = t_new(1024, 30);
    c.t = t;
    c.base_fds = count_fds();
    /* in batches, so that the listen backlog never overflows */
    for (int i = 0; i < CAP; i++) {
        fds[i] = cli_connect(t->port);
        if ((i + 1) % 64 == 0) {
            c.want = c.base_fds + 2 * (i + 1);
            assert_true(run_until(t, cap_fds, &c));
        }
    }

    /* one more: connected by the kernel, not accepted by the server */
    memset(&extra, 0, sizeof(extra));
    sb_init(&extra.raw);
    extra.fd = cli_connect(t->port);
    cli_send(extra.fd, req, sizeof(req) - 1);

    /* an admitted connection is still served... */
    memset(&probe, 0, sizeof(probe));
    sb_init(&probe.raw);
    probe.fd = fds[0];
    fds[0] = -1;
    cli_send(probe.fd, req, sizeof(req) - 1);
    assert_true(run_until(t, cli_closed, &probe));
    resp_parse(&probe);
    assert_int_equal(probe.status, 200);
    /* ...while the extra one got nothing and was never accepted */
    assert_false(cli_closed(&extra));
    assert_int_equal(extra.raw.len, 0);
    assert_int_equal(t->calls, 1);

    /* the probe's close freed a slot: the extra one is served now */
    resp_free(&probe);
    assert_true(run_until(t, cli_closed, &extra));
    resp_parse(&extra);
    assert_int_equal(extra.status, 200);
    assert_int_equal(t->calls, 2);
    resp_free(&extra);

    for (int i = 0; i < CAP; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    free(fds);
    t_free(t);
}

static void test_bad_listen(void **state)
{
    struct event_base *base = event_base_new();
    struct error err;
    static const char *const bad[] = {
        "",          "8080",     "127.0.0.1",       "127.0.0.1:",
        "1.2.3.4:x", "1.2.3:80", "127.0.0.1:65536", "[::1]80",
        "[::1:80",   "::1:80",   "host.example:80", "127.0.0.1:-1",
    };

    (void)state;
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        error_clear(&err);
        assert_null(http_server_new(base, bad[i], 1024, 5, &err));
        assert_true(err.msg[0] != '\0');
    }
    assert_null(http_server_new(base, NULL, 1024, 5, &err));
    event_base_free(base);
}

static void test_ipv6(void **state)
{
    struct event_base *base = event_base_new();
    struct error err;
    struct http_server *srv;
    int fd;
    struct sockaddr_in6 sa;

    (void)state;
    error_clear(&err);
    fd = socket(AF_INET6, SOCK_STREAM, 0);
    memset(&sa, 0, sizeof(sa));
    sa.sin6_family = AF_INET6;
    sa.sin6_addr = in6addr_loopback;
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        if (fd >= 0)
            close(fd);
        event_base_free(base);
        skip();
    }
    close(fd);
    srv = http_server_new(base, "[::1]:0", 1024, 5, &err);
    assert_non_null(srv);
    assert_true(http_server_port(srv) > 0);
    http_server_free(srv);
    event_base_free(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_routing),
        cmocka_unit_test(test_accessors),
        cmocka_unit_test(test_percent_decoding),
        cmocka_unit_test(test_body_limit),
        cmocka_unit_test(test_header_limit),
        cmocka_unit_test(test_methods),
        cmocka_unit_test(test_async_reply),
        cmocka_unit_test(test_client_gone),
        cmocka_unit_test(test_free_with_pending),
        cmocka_unit_test(test_request_deadline),
        cmocka_unit_test(test_connection_cap),
        cmocka_unit_test(test_bad_listen),
        cmocka_unit_test(test_ipv6),
    };

    log_set_level(L_ERR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
