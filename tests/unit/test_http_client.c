/*
 * Unit tests of http_client.c against an in-process evhttp server that
 * shares the client's event_base: statuses and bodies, Basic auth, the
 * captured Retry-After and Content-Type, total timeouts, refused
 * connections, the response size limit, the per-host connection cap under
 * 200 concurrent requests, keep-alive reuse, shutdown with requests in
 * flight, input validation and the form encoder.
 *
 * Every wait drives the loop until a condition holds, with a deadline;
 * nothing sleeps for a fixed time.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>

#include "http_client.h"
#include "util.h"

#define SLOW_MAX 16
#define BIG_SIZE (2 * 1024 * 1024)

struct fixture {
    struct event_base *base;
    struct event *tick;
    struct evhttp *http;
    int port;
    int hang_fd; /* listening, never accepts: requests hang */
    int hang_port;
    int dead_port;     /* nothing listens */
    unsigned conns;    /* connections the evhttp server accepted */
    unsigned requests; /* requests the evhttp server received */
    struct evhttp_request *slow[SLOW_MAX];
    size_t n_slow;
};

/* What one request's done callback saw. */
struct call {
    int calls;
    bool failed;
    struct error err;
    int status;
    char *body;
    size_t body_len;
    char *retry_after;
    char *content_type;
    bool retry_refused; /* free test: a new request was refused */
    struct http_client *hc;
};

static void call_reset(struct call *c)
{
    free(c->body);
    free(c->retry_after);
    free(c->content_type);
    memset(c, 0, sizeof(*c));
}

static void on_done(void *arg, const struct error *err,
                    const struct http_response *resp)
{
    struct call *c = arg;

    c->calls++;
    /* resp is NULL exactly when err is set */
    assert_true((err == NULL) != (resp == NULL));
    if (err) {
        c->failed = true;
        c->err = *err;
        return;
    }
    assert_non_null(resp->body);
    assert_int_equal(resp->body[resp->body_len], '\0');
    free(c->body);
    free(c->retry_after);
    free(c->content_type);
    c->status = resp->status;
    c->body = xstrndup(resp->body, resp->body_len);
    c->body_len = resp->body_len;
    c->retry_after = resp->retry_after ? xstrdup(resp->retry_after) : NULL;
    c->content_type = resp->content_type ? xstrdup(resp->content_type) : NULL;
}

/* --- the server ----------------------------------------------------------- */

static const char *req_header(struct evhttp_request *req, const char *name)
{
    const char *v =
        evhttp_find_header(evhttp_request_get_input_headers(req), name);
    return v ? v : "";
}

static void handle_echo(struct evhttp_request *req)
{
    static const char *const methods[] = {"GET",   "POST",    "HEAD",
                                          "PUT",   "DELETE",  "OPTIONS",
                                          "TRACE", "CONNECT", "PATCH"};
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    const char *method = "?";
    size_t len = evbuffer_get_length(in);
    char *body = xmalloc(len + 1);
    struct evbuffer *out = evbuffer_new();
    json_t *j;
    char *s;

    for (size_t i = 0; i < ARRAY_SIZE(methods); i++)
        if ((unsigned)cmd == (1u << i))
            method = methods[i];
    evbuffer_remove(in, body, len);
    body[len] = '\0';
    j = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "method", method, "body",
                  body, "auth", req_header(req, "Authorization"), "ctype",
                  req_header(req, "Content-Type"), "ua",
                  req_header(req, "User-Agent"), "xtest",
                  req_header(req, "X-Test"));
    s = json_dumps(j, JSON_COMPACT);
    evbuffer_add(out, s, strlen(s));
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "application/json");
    evhttp_send_reply(req, 200, "OK", out);
    free(s);
    json_decref(j);
    evbuffer_free(out);
    free(body);
}

static void handle_big(struct evhttp_request *req, bool chunked)
{
    struct evbuffer *out = evbuffer_new();
    char *big = xmalloc(BIG_SIZE);

    memset(big, 'x', BIG_SIZE);
    evbuffer_add(out, big, BIG_SIZE);
    free(big);
    if (chunked) {
        evhttp_send_reply_start(req, 200, "OK");
        evhttp_send_reply_chunk(req, out);
        evhttp_send_reply_end(req);
    } else {
        evhttp_send_reply(req, 200, "OK", out);
    }
    evbuffer_free(out);
}

static void handle(struct evhttp_request *req, void *arg)
{
    struct fixture *fx = arg;
    const char *uri = evhttp_request_get_uri(req);
    struct evkeyvalq *oh = evhttp_request_get_output_headers(req);
    struct evbuffer *out;

    fx->requests++;
    if (strcmp(uri, "/echo") == 0) {
        handle_echo(req);
    } else if (strcmp(uri, "/429") == 0) {
        evhttp_add_header(oh, "Retry-After", "3");
        evhttp_add_header(oh, "Content-Type", "application/json");
        out = evbuffer_new();
        evbuffer_add_printf(out, "{\"code\":20429}");
        evhttp_send_reply(req, 429, "Too Many Requests", out);
        evbuffer_free(out);
    } else if (strcmp(uri, "/503") == 0) {
        out = evbuffer_new();
        evbuffer_add_printf(out, "down");
        evhttp_send_reply(req, 503, "Service Unavailable", out);
        evbuffer_free(out);
    } else if (strcmp(uri, "/big") == 0) {
        handle_big(req, false);
    } else if (strcmp(uri, "/bigchunk") == 0) {
        handle_big(req, true);
    } else if (strcmp(uri, "/slow") == 0 && fx->n_slow < SLOW_MAX) {
        fx->slow[fx->n_slow++] = req; /* answered in teardown */
    } else {
        evhttp_send_error(req, 404, NULL);
    }
}

/* evhttp asks for a bufferevent once per accepted connection. */
static struct bufferevent *count_conn(struct event_base *base, void *arg)
{
    struct fixture *fx = arg;

    fx->conns++;
    return bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
}

static int sock_port(int fd)
{
    struct sockaddr_in sin;
    socklen_t len = sizeof(sin);

    assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
    return ntohs(sin.sin_port);
}

static int listen_loopback(void)
{
    struct sockaddr_in sin;
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    assert_true(fd >= 0);
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(listen(fd, 64), 0);
    return fd;
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
}

static int setup(void **state)
{
    struct fixture *fx = xcalloc(1, sizeof(*fx));
    struct evhttp_bound_socket *bound;
    struct timeval tv = {0, 20 * 1000};
    int fd;

    fx->base = event_base_new();
    assert_non_null(fx->base);
    /* keeps EVLOOP_ONCE from blocking for long while we poll conditions */
    fx->tick = event_new(fx->base, -1, EV_PERSIST, tick_cb, NULL);
    event_add(fx->tick, &tv);
    fx->http = evhttp_new(fx->base);
    evhttp_set_gencb(fx->http, handle, fx);
    evhttp_set_bevcb(fx->http, count_conn, fx);
    evhttp_set_allowed_methods(fx->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST |
                                             EVHTTP_REQ_PUT |
                                             EVHTTP_REQ_DELETE);
    bound = evhttp_bind_socket_with_handle(fx->http, "127.0.0.1", 0);
    assert_non_null(bound);
    fx->port = sock_port(evhttp_bound_socket_get_fd(bound));

    fx->hang_fd = listen_loopback();
    fx->hang_port = sock_port(fx->hang_fd);

    fd = listen_loopback();
    fx->dead_port = sock_port(fd);
    close(fd);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;

    /* the clients are gone: evhttp frees each request once it is answered */
    for (size_t i = 0; i < fx->n_slow; i++)
        evhttp_send_reply(fx->slow[i], 200, "OK", NULL);
    event_base_loop(fx->base, EVLOOP_NONBLOCK);
    evhttp_free(fx->http);
    event_free(fx->tick);
    close(fx->hang_fd);
    event_base_free(fx->base);
    free(fx);
    return 0;
}

typedef bool cond_fn(const void *arg);

/* Drives the loop until cond holds; fails the test after timeout_ms. */
static void run_until(struct fixture *fx, cond_fn *cond, const void *arg,
                      unsigned timeout_ms)
{
    uint64_t deadline = now_ms() + timeout_ms;

    while (!cond(arg)) {
        if (now_ms() > deadline)
            fail_msg("condition not met within %u ms", timeout_ms);
        event_base_loop(fx->base, EVLOOP_ONCE);
    }
}

static bool call_done(const void *arg)
{
    const struct call *c = arg;
    return c->calls > 0;
}

static bool client_idle(const void *arg)
{
    return http_client_inflight(arg) == 0;
}

/* Lets any stray second completion show up before counting calls. */
static void run_a_little(struct fixture *fx)
{
    for (int i = 0; i < 5; i++)
        event_base_loop(fx->base, EVLOOP_NONBLOCK);
}

static struct http_client *new_client(struct fixture *fx, unsigned cap)
{
    struct http_client_opts opts = {.max_host_connections = cap};
    struct error err;
    struct http_client *hc = http_client_new(fx->base, &opts, &err);

    assert_non_null(hc);
    return hc;
}

static char *url(const struct fixture *fx, int port, const char *path)
{
    (void)fx;
    return xasprintf("http://127.0.0.1:%d%s", port, path);
}

/* Starts one request and checks that done is not called synchronously. */
static void start(struct http_client *hc, const struct http_req_spec *spec,
                  struct call *c)
{
    struct error err;

    error_clear(&err);
    assert_int_equal(http_client_request(hc, spec, on_done, c, &err), 0);
    assert_int_equal(c->calls, 0);
}

static void request_once(struct fixture *fx, struct http_client *hc,
                         const struct http_req_spec *spec, struct call *c)
{
    start(hc, spec, c);
    run_until(fx, call_done, c, 5000);
    run_a_little(fx);
    assert_int_equal(c->calls, 1);
    assert_int_equal(http_client_inflight(hc), 0);
}

/* --- tests ---------------------------------------------------------------- */

static void test_post_echo_basic_auth(void **state)
{
    struct fixture *fx = *state;
    struct http_client *hc = new_client(fx, 0);
    struct http_header hdrs[] = {
        {"Content-Type", "application/x-www-form-urlencoded"},
        {"X-Test", "yes"},
    };
    char *u = url(fx, fx->port, "/echo");
    struct http_req_spec spec = {
        .method = "POST",
        .url = u,
        .headers = hdrs,
        .n_headers = ARRAY_SIZE(hdrs),
        .body = "To=%2B15551234567&Body=hi",
        .body_len = strlen("To=%2B15551234567&Body=hi"),
        .userpwd = "user:pa ss",
    };
    struct call c = {0};
    json_t *j;

    request_once(fx, hc, &spec, &c);
    assert_false(c.failed);
    assert_int_equal(c.status, 200);
    assert_string_equal(c.content_type, "application/json");
    assert_null(c.retry_after);
    j = json_loads(c.body, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "method")),
                        "POST");
    assert_string_equal(json_string_value(json_object_get(j, "body")),
                        "To=%2B15551234567&Body=hi");
    /* base64("user:pa ss") */
    assert_string_equal(json_string_value(json_object_get(j, "auth")),
                        "Basic dXNlcjpwYSBzcw==");
    assert_string_equal(json_string_value(json_object_get(j, "ctype")),
                        "application/x-www-form-urlencoded");
    assert_string_equal(json_string_value(json_object_get(j, "xtest")), "yes");
    assert_true(str_has_prefix(json_string_value(json_object_get(j, "ua")),
                               "postern/"));
    json_decref(j);
    call_reset(&c);
    free(u);
    http_client_free(hc);
}

static void test_get_and_put(void **state)
{
    struct fixture *fx = *state;
    struct http_client *hc = new_client(fx, 0);
    char *u = url(fx, fx->port, "/echo");
    struct http_req_spec spec = {.method = "GET", .url = u};
    struct call c = {0};
    json_t *j;

    request_once(fx, hc, &spec, &c);
    assert_int_equal(c.status, 200);
    j = json_loads(c.body, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "method")), "GET");
    assert_string_equal(json_string_value(json_object_get(j, "body")), "");
    /* no userpwd: no Authorization header */
    assert_string_equal(json_string_value(json_object_get(j, "auth")), "");
    json_decref(j);
    call_reset(&c);

    spec.method = "PUT";
    spec.body = "{\"a\":1}";
    spec.body_len = 7;
    request_once(fx, hc, &spec, &c);
    assert_int_equal(c.status, 200);
    j = json_loads(c.body, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "method")), "PUT");
    assert_string_equal(json_string_value(json_object_get(j, "body")),
                        "{\"a\":1}");
    json_decref(j);
    call_reset(&c);
    free(u);
    http_client_free(hc);
}

static void test_429_retry_after(void **state)
{
    struct fixture *fx = *state;
    struct http_client *hc = new_client(fx, 0);
    char *u = url(fx, fx->port, "/429");
    struct http_req_spec spec = {
        .method = "POST", .url = u, .body = "x", .body_len = 1};
    struct call c = {0};

    request_once(fx, hc, &spec, &c);
    assert_false(c.failed);
    assert_int_equal(c.status, 429);
    assert_non_null(c.retry_after);
    assert_string_equal(c.retry_after, "3");
    assert_string_equal(c.body, "{\"code\":20429}");
    call_reset(&c);
    free(u);
    http_client_free(hc);
}

static void test_503_is_a_response(void **state)
{
    struct fixture *fx = *state;
    struct http_client *hc = new_client(fx, 0);
    char *u = url(fx, fx->port, "/503");
    struct http_req_spec spec = {.method = "POST", .url = u};
    struct call c = {0};

    request_once(fx, hc, &spec, &c);
    assert_false(c.failed);
    assert_int_equal(c.status, 503);
    assert_string_equal(c.body, "down");
    assert_int_equal(c.body_len, 4);
    assert_null(c.retry_after);
    call_reset(&c);
    free(u);
    http_client_free(hc);
}

static void test_total_timeout(void **state)
{
    struct fixture *fx = *state;
    struct http_client *hc = new_client(fx, 0);
    char *u = url(fx, fx->hang_port, "/");
    struct http_req_spec spec = {.method = "POST",
                                 .url = u,
                                 .body = "x",
                                 .body_len = 1,
                                 .timeout_ms = 300};
    struct call c = {0};
    uint64_t t0 = now_ms();
    uint64_t took;

    request_once(fx, hc, &spec, &c);
    took = now_ms() - t0;
    assert_true(c.failed);
    assert_true(c.err.temporary);
    assert_string_equal(c.err.msg, "timeout after 300 ms");
    assert_true(took >= 280);
    assert_true(took < 3000);
    call_reset(&c);
    free(u);
    http_client_free(hc);
}

static void test_connection_refused(void **state)
{
    struct fixture *fx = *state;
    struct http_client *hc = new_client(fx, 0);
    char *u = url(fx, fx->dead_port, "/");
    struct http_req_spec spec = {
        .method = "GET", .url = u, .userpwd = "AC123:secret-token"};
    struct call c = {0};

    request_once(fx, hc, &spec, &c);
    assert_true(c.failed);
    assert_true(c.err.temporary);
    assert_string_equal(c.err.msg, "connection refused");
    call_reset(&c);
    free(u);
    http_client_free(hc);
}

static void test_body_limit(void **state)
{
    struct fixture *fx = *state;
    struct http_client *hc = new_client(fx, 0);
    const char *paths[] = {"/big", "/bigchunk"};

    for (size_t i = 0; i < ARRAY_SIZE(paths); i++) {
        char *u = url(fx, fx->port, paths[i]);
        struct http_req_spec spec = {.method = "GET", .url = u};
        struct call c = {0};

        request_once(fx, hc, &spec, &c);
        assert_true(c.failed);
        assert_true(c.err.temporary);
        assert_non_null(strstr(c.err.msg, "larger than"));
        call_reset(&c);
        free(u);
    }
    http_client_free(hc);
}

#define N_CONCURRENT 200

static void test_concurrency_cap(void **state)
{
    struct fixture *fx = *state;
    struct http_client *hc = new_client(fx, 4);
    char *u = url(fx, fx->port, "/echo");
    struct call *calls = xcalloc(N_CONCURRENT, sizeof(*calls));
    char bodies[N_CONCURRENT][16];

    for (int i = 0; i < N_CONCURRENT; i++) {
        struct http_req_spec spec = {.method = "POST", .url = u};
        snprintf(bodies[i], sizeof(bodies[i]), "n=%d", i);
        spec.body = bodies[i];
        spec.body_len = strlen(bodies[i]);
        start(hc, &spec, &calls[i]);
    }
    assert_int_equal(http_client_inflight(hc), N_CONCURRENT);
    run_until(fx, client_idle, hc, 20000);
    run_a_little(fx);
    for (int i = 0; i < N_CONCURRENT; i++) {
        json_t *j;
        assert_int_equal(calls[i].calls, 1);
        assert_false(calls[i].failed);
        assert_int_equal(calls[i].status, 200);
        j = json_loads(calls[i].body, 0, NULL);
        assert_non_null(j);
        assert_string_equal(json_string_value(json_object_get(j, "body")),
                            bodies[i]);
        json_decref(j);
        call_reset(&calls[i]);
    }
    assert_int_equal(fx->requests, N_CONCURRENT);
    assert_true(fx->conns >= 1);
    assert_true(fx->conns <= 4);
    free(calls);
    free(u);
    http_client_free(hc);
}

/* Each completion starts the next request from inside the done callback. */
struct chain {
    struct http_client *hc;
    const char *url;
    int started, completed, failures, limit;
};

static void chain_next(struct chain *ch);

static void chain_done(void *arg, const struct error *err,
                       const struct http_response *resp)
{
    struct chain *ch = arg;

    ch->completed++;
    if (err || resp->status != 200)
        ch->failures++;
    if (ch->started < ch->limit)
        chain_next(ch);
}

static void chain_next(struct chain *ch)
{
    struct http_req_spec spec = {
        .method = "POST", .url = ch->url, .body = "k=v", .body_len = 3};
    struct error err;
    int before = ch->completed;

    assert_int_equal(http_client_request(ch->hc, &spec, chain_done, ch, &err),
                     0);
    assert_int_equal(ch->completed, before);
    ch->started++;
}

static bool chain_finished(const void *arg)
{
    const struct chain *ch = arg;
    return ch->completed == ch->limit;
}

static void test_keepalive_reuse(void **state)
{
    struct fixture *fx = *state;
    char *u = url(fx, fx->port, "/echo");
    struct chain ch = {.hc = new_client(fx, 0), .url = u, .limit = 100};

    chain_next(&ch);
    run_until(fx, chain_finished, &ch, 20000);
    run_a_little(fx);
    assert_int_equal(ch.started, 100);
    assert_int_equal(ch.completed, 100);
    assert_int_equal(ch.failures, 0);
    assert_int_equal(fx->requests, 100);
    assert_true(fx->conns >= 1);
    assert_true(fx->conns <= 2);
    free(u);
    http_client_free(ch.hc);
}

/* A done callback during shutdown tries to start another request. */
static void on_done_retry(void *arg, const struct error *err,
                          const struct http_response *resp)
{
    struct call *c = arg;
    char *u = xasprintf("http://127.0.0.1:1/");
    struct http_req_spec spec = {.method = "GET", .url = u};
    struct error e2;

    on_done(arg, err, resp);
    c->retry_refused = http_client_request(c->hc, &spec, on_done, c, &e2) < 0;
    free(u);
}

static bool slow_arrived(const void *arg)
{
    const struct fixture *fx = arg;
    return fx->n_slow == 5;
}

static void test_free_in_flight(void **state)
{
    struct fixture *fx = *state;
    struct http_client *hc = new_client(fx, 0);
    char *slow = url(fx, fx->port, "/slow");
    char *hang = url(fx, fx->hang_port, "/");
    struct call calls[8];
    struct error err;

    memset(calls, 0, sizeof(calls));
    for (int i = 0; i < 8; i++) {
        struct http_req_spec spec = {.method = "GET",
                                     .url = i < 5 ? slow : hang};
        calls[i].hc = hc;
        assert_int_equal(
            http_client_request(hc, &spec, on_done_retry, &calls[i], &err), 0);
    }
    /* the server holds 5 requests, 3 sit in a listen queue */
    run_until(fx, slow_arrived, fx, 5000);
    assert_int_equal(http_client_inflight(hc), 8);
    for (int i = 0; i < 8; i++)
        assert_int_equal(calls[i].calls, 0);
    http_client_free(hc);
    for (int i = 0; i < 8; i++) {
        assert_int_equal(calls[i].calls, 1);
        assert_true(calls[i].failed);
        assert_true(calls[i].err.temporary);
        assert_true(calls[i].retry_refused);
        call_reset(&calls[i]);
    }
    free(slow);
    free(hang);
}

/* Freed before the loop ever ran: nothing was connected yet. */
static void test_free_before_loop(void **state)
{
    struct fixture *fx = *state;
    struct http_client *hc = new_client(fx, 0);
    char *u = url(fx, fx->port, "/echo");
    struct http_req_spec spec = {.method = "GET", .url = u};
    struct call c = {0};

    start(hc, &spec, &c);
    http_client_free(hc);
    assert_int_equal(c.calls, 1);
    assert_true(c.failed);
    run_a_little(fx);
    assert_int_equal(c.calls, 1);
    call_reset(&c);
    free(u);
}

static void test_invalid_requests(void **state)
{
    struct fixture *fx = *state;
    struct http_client *hc = new_client(fx, 0);
    struct http_header bad_hdr[] = {{"X-Evil", "a\r\nInjected: 1"}};
    struct http_header bad_name[] = {{"X:Y", "v"}};
    struct http_req_spec specs[] = {
        {.method = "GET", .url = "ftp://127.0.0.1/"},
        {.method = "GET", .url = "file:///etc/passwd"},
        {.method = "GET", .url = NULL},
        {.method = NULL, .url = "http://127.0.0.1/"},
        {.method = "GET X", .url = "http://127.0.0.1/"},
        {.method = "GET", .url = "http://127.0.0.1/\r\nX: 1"},
        {.method = "GET",
         .url = "http://127.0.0.1/",
         .headers = bad_hdr,
         .n_headers = 1},
        {.method = "GET",
         .url = "http://127.0.0.1/",
         .headers = bad_name,
         .n_headers = 1},
        {.method = "POST",
         .url = "http://127.0.0.1/",
         .body = NULL,
         .body_len = 3},
    };
    struct call c = {0};

    for (size_t i = 0; i < ARRAY_SIZE(specs); i++) {
        struct error err;
        error_clear(&err);
        assert_int_equal(http_client_request(hc, &specs[i], on_done, &c, &err),
                         -1);
        assert_true(err.msg[0] != '\0');
    }
    run_a_little(fx);
    assert_int_equal(c.calls, 0);
    assert_int_equal(http_client_inflight(hc), 0);
    http_client_free(hc);
    assert_int_equal(c.calls, 0);
}

static char *form(const char *name, const char *value)
{
    struct strbuf b;
    sb_init(&b);
    http_form_add(&b, name, value);
    return sb_steal(&b);
}

static void test_form_add(void **state)
{
    struct strbuf b;
    char *s;
    CURL *easy;
    (void)state;

    sb_init(&b);
    http_form_add(&b, "To", "+15551234567");
    http_form_add(&b, "From", "+15005550006");
    http_form_add(&b, "Body", "Hello été 😀 a&b=c/d?e~f_g.h-i");
    assert_string_equal(b.s, "To=%2B15551234567&From=%2B15005550006&Body="
                             "Hello%20%C3%A9t%C3%A9%20%F0%9F%98%80%20a%26b%"
                             "3Dc%2Fd%3Fe~f_g.h-i");
    sb_free(&b);

    s = form("", "");
    assert_string_equal(s, "=");
    free(s);
    s = form("MediaUrl", "https://x.example/a b");
    assert_string_equal(s, "MediaUrl=https%3A%2F%2Fx.example%2Fa%20b");
    free(s);

    /* every byte encodes exactly as curl_easy_escape does */
    easy = curl_easy_init();
    assert_non_null(easy);
    for (int c = 1; c < 256; c++) {
        char in[2] = {(char)c, '\0'};
        char *want = curl_easy_escape(easy, in, 1);
        char *got = form(in, in);
        char *exp = xasprintf("%s=%s", want, want);
        assert_string_equal(got, exp);
        free(exp);
        free(got);
        curl_free(want);
    }
    curl_easy_cleanup(easy);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_post_echo_basic_auth, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_get_and_put, setup, teardown),
        cmocka_unit_test_setup_teardown(test_429_retry_after, setup, teardown),
        cmocka_unit_test_setup_teardown(test_503_is_a_response, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_total_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connection_refused, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_body_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrency_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keepalive_reuse, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_before_loop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_invalid_requests, setup, teardown),
        cmocka_unit_test(test_form_add),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
