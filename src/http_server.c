/*
 * http_server: see http_server.h. Owns the evhttp instance, its listener,
 * the route table and one struct http_request per request that reached a
 * handler and has not been answered yet. It is the only file that
 * includes evhttp headers.
 *
 * Lifetime of a request. evhttp frees its request object when the reply
 * has been written, when the connection fails, and when the server is
 * freed; a handler may answer much later than any of these. So everything
 * a handler can read (method, path, URI, query, headers, body, peer) is
 * copied into our struct at dispatch, and the evhttp request is reached
 * only through a pointer that the connection's close callback clears
 * (evhttp 2.1 calls it from evhttp_connection_free() before it frees the
 * requests queued on the connection). http_reply() on a request whose
 * connection or server is gone just frees our struct.
 *
 * evhttp 2.1 limits: body and header sizes are unlimited and the timeout
 * is per read unless set (DESIGN.md section 7, pitfall 7), so this module
 * always sets them. It has no connection limit; this module adds one by
 * counting connections from the bufferevent callback (evhttp_set_bevcb)
 * and pausing the listener at MAX_CONNS (further clients wait in the
 * kernel's backlog); the evhttp connection is then found as the
 * bufferevent's callback argument, which evhttp 2.1 sets to it. It also
 * closes connections whose
 * request has not arrived whole within timeout_s of wall-clock time (a
 * client dripping one byte per second defeats evhttp's per-read timeout).
 *
 * Must never: block, include evhttp anywhere else, log bodies above debug,
 * or touch an evhttp request after its connection's close callback ran.
 */
#include "http_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>

#include "log.h"
#include "netaddr.h"

#define MOD "http"
#define MAX_HEADERS_SIZE (16 * 1024)
#define DEFAULT_TIMEOUT_S 10
#define MAX_CONNS 1024
#define CONN_BUCKETS 256
#define TEXT_PLAIN "text/plain; charset=utf-8"

struct route {
    char *prefix;
    size_t len;
    http_handler_fn *fn;
    void *arg;
};

struct header {
    const char *name;
    const char *value;
};

/*
 * One accepted connection. evhttp hands us only the bufferevent when it
 * accepts (evhttp_set_bevcb); the evhttp connection that wraps it is
 * learned from the bufferevent's callback argument one loop turn later.
 * We hold a reference on the bufferevent so that this lookup is safe even
 * if evhttp freed the connection in between.
 */
struct conn {
    struct http_server *srv;
    struct bufferevent *bev;         /* referenced until conn_release */
    struct evhttp_connection *evcon; /* NULL until resolved */
    struct event *deadline;          /* request must arrive before it */
    struct http_request *pending;    /* dispatched, not yet answered */
    bool resolved;
    struct conn *prev, *next; /* srv->conns */
    struct conn *hnext;       /* srv->buckets, by evcon */
};

struct http_request {
    struct http_server *srv;         /* NULL once the server is freed */
    struct evhttp_request *ev;       /* NULL once evhttp dropped it */
    struct evhttp_connection *evcon; /* NULL once it closed */
    struct conn *conn;               /* NULL once the connection closed */
    const char *method;              /* static string */
    bool head;
    char *path;
    char *uri;
    char *query; /* NULL when the URI has none */
    char *peer;
    char *body;
    size_t body_len;
    struct header *headers; /* one allocation with the strings */
    size_t nheaders;
    struct http_request *prev, *next; /* srv->pending */
};

struct http_server {
    struct event_base *base;
    struct evhttp *http;
    struct evhttp_bound_socket *bound;
    struct event *resolve_ev; /* resolves new connections */
    struct route *routes;
    size_t nroutes;
    int port;
    unsigned timeout_s;
    unsigned max_conns;
    unsigned nconns;
    bool paused; /* listener disabled at the connection cap */
    struct conn *conns;
    struct conn *buckets[CONN_BUCKETS];
    struct http_request *pending;
};

/* ---- paths ---- */

/* A "." or ".." segment: a proxy in front would resolve it, we would not. */
static bool has_dot_segment(const char *path)
{
    for (const char *p = path; (p = strchr(p, '/')); p++) {
        const char *s = p + 1;
        if (s[0] == '.' && (s[1] == '/' || s[1] == '\0' ||
                            (s[1] == '.' && (s[2] == '/' || s[2] == '\0'))))
            return true;
    }
    return false;
}

/*
 * Returned owned (free with free()), or NULL when the path is not
 * absolute, has a malformed escape, decodes to a NUL byte or has a dot
 * segment: each of these would let two spellings of one path route
 * differently here and in a proxy in front of us.
 */
static char *decode_path(const char *raw)
{
    char *out;

    if (raw[0] != '/')
        return NULL;
    out = pct_decode(raw, strlen(raw), false);
    if (out && has_dot_segment(out)) {
        free(out);
        return NULL;
    }
    return out;
}

/* ---- routes ---- */

static bool route_matches(const struct route *r, const char *path)
{
    if (strncmp(path, r->prefix, r->len) != 0)
        return false;
    if (r->prefix[r->len - 1] == '/')
        return true;
    return path[r->len] == '\0' || path[r->len] == '/';
}

static const struct route *route_find(const struct http_server *srv,
                                      const char *path)
{
    const struct route *best = NULL;

    for (size_t i = 0; i < srv->nroutes; i++) {
        const struct route *r = &srv->routes[i];
        if (route_matches(r, path) && (!best || r->len > best->len))
            best = r;
    }
    return best;
}

/* ---- connections ---- */

static size_t conn_bucket(const struct evhttp_connection *evcon)
{
    return ((uintptr_t)evcon >> 4) % CONN_BUCKETS;
}

static struct conn *conn_lookup(const struct http_server *srv,
                                const struct evhttp_connection *evcon)
{
    struct conn *c;

    if (!evcon)
        return NULL;
    for (c = srv->buckets[conn_bucket(evcon)]; c; c = c->hnext)
        if (c->evcon == evcon)
            return c;
    return NULL;
}

static void listener_update(struct http_server *srv)
{
    struct evconnlistener *lis;
    bool full = srv->nconns >= srv->max_conns;

    if (!srv->bound || full == srv->paused)
        return;
    lis = evhttp_bound_socket_get_listener(srv->bound);
    if (full) {
        evconnlistener_disable(lis);
        log_warn(MOD, "connection limit %u reached; not accepting",
                 srv->max_conns);
    } else {
        evconnlistener_enable(lis);
        log_notice(MOD, "accepting connections again");
    }
    srv->paused = full;
}

static void request_detach(struct http_request *r, bool ev_alive);

/*
 * Forgets c; its evhttp connection is being freed (ev_alive: its requests
 * are not freed yet) or is gone already.
 */
static void conn_release(struct conn *c, bool ev_alive)
{
    struct http_server *srv = c->srv;

    if (c->pending)
        request_detach(c->pending, ev_alive);
    if (c->evcon) {
        struct conn **pp = &srv->buckets[conn_bucket(c->evcon)];
        while (*pp != c)
            pp = &(*pp)->hnext;
        *pp = c->hnext;
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    event_free(c->deadline);
    bufferevent_decref(c->bev);
    free(c);
    srv->nconns--;
    listener_update(srv);
}

/*
 * evhttp_connection_free() calls this before it frees the requests queued
 * on the connection, so a pending request is detached here.
 */
static void on_conn_close(struct evhttp_connection *evcon, void *arg)
{
    struct conn *c = arg;

    (void)evcon;
    conn_release(c, true);
}

/* The same for a connection we could not count (see on_new_bev). */
static void on_uncounted_close(struct evhttp_connection *evcon, void *arg)
{
    struct http_server *srv = arg;
    struct http_request *r, *next;

    for (r = srv->pending; r; r = next) {
        next = r->next;
        if (r->evcon == evcon && !r->conn)
            request_detach(r, true);
    }
}

static void deadline_arm(struct conn *c)
{
    struct timeval tv = {.tv_sec = c->srv->timeout_s, .tv_usec = 0};
    event_add(c->deadline, &tv);
}

/*
 * The whole request (headers and body) did not arrive in time. Only
 * armed while evhttp is reading, never while a handler owns the request,
 * so freeing the connection cannot drop a request a handler holds.
 */
static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;

    (void)fd;
    (void)what;
    if (c->pending || !c->evcon)
        return;
    log_info(MOD, "closing a connection whose request took over %u s",
             c->srv->timeout_s);
    /*
     * evhttp then fails the connection as on its own read timeout. The
     * deferral keeps c (freed by on_conn_close) alive until we return.
     */
    bufferevent_trigger_event(c->bev, BEV_EVENT_READING | BEV_EVENT_TIMEOUT,
                              BEV_TRIG_DEFER_CALLBACKS);
}

/*
 * A zero-delay event: by now evhttp has wrapped every new bufferevent in
 * its connection and set itself as the callback argument.
 */
static void on_resolve(evutil_socket_t fd, short what, void *arg)
{
    struct http_server *srv = arg;
    struct conn *c, *next;

    (void)fd;
    (void)what;
    for (c = srv->conns; c; c = next) {
        bufferevent_event_cb eventcb;
        void *cbarg;

        next = c->next;
        if (c->resolved)
            continue;
        c->resolved = true;
        bufferevent_getcb(c->bev, NULL, NULL, &eventcb, &cbarg);
        if (!eventcb || !cbarg) {
            /* evhttp already freed it (bufferevent_free clears the cbs) */
            conn_release(c, false);
            continue;
        }
        c->evcon = cbarg;
        c->hnext = srv->buckets[conn_bucket(c->evcon)];
        srv->buckets[conn_bucket(c->evcon)] = c;
        evhttp_connection_set_closecb(c->evcon, on_conn_close, c);
        deadline_arm(c);
    }
}

static struct bufferevent *on_new_bev(struct event_base *base, void *arg)
{
    struct http_server *srv = arg;
    struct bufferevent *bev;
    struct conn *c;

    bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (!bev)
        return NULL; /* evhttp then makes its own; it goes uncounted */
    c = xcalloc(1, sizeof(*c));
    c->srv = srv;
    c->bev = bev;
    bufferevent_incref(bev);
    c->deadline = evtimer_new(base, on_deadline, c);
    if (!c->deadline)
        fatal("http: cannot allocate a timer");
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    srv->nconns++;
    event_active(srv->resolve_ev, EV_TIMEOUT, 0);
    listener_update(srv);
    return bev;
}

/* ---- requests ---- */

static void pending_unlink(struct http_request *r)
{
    struct http_server *srv = r->srv;

    if (!srv)
        return;
    if (r->prev)
        r->prev->next = r->next;
    else
        srv->pending = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
}

/*
 * The connection went away. ev_alive: evhttp has not freed r->ev yet and
 * will unless it already let go of it (on EOF or timeout while the
 * request waited for us), in which case nobody else frees it.
 */
static void request_detach(struct http_request *r, bool ev_alive)
{
    if (ev_alive && r->ev && !evhttp_request_get_connection(r->ev))
        evhttp_request_free(r->ev);
    r->ev = NULL;
    r->evcon = NULL;
    if (r->conn) {
        r->conn->pending = NULL;
        r->conn = NULL;
    }
}

static void request_free(struct http_request *r)
{
    pending_unlink(r);
    if (r->conn)
        r->conn->pending = NULL;
    free(r->path);
    free(r->uri);
    free(r->query);
    free(r->peer);
    free(r->body);
    free(r->headers);
    free(r);
}

static const char *method_name(enum evhttp_cmd_type t)
{
    switch (t) {
    case EVHTTP_REQ_GET:
        return "GET";
    case EVHTTP_REQ_POST:
        return "POST";
    case EVHTTP_REQ_HEAD:
        return "HEAD";
    case EVHTTP_REQ_PUT:
        return "PUT";
    case EVHTTP_REQ_DELETE:
        return "DELETE";
    case EVHTTP_REQ_OPTIONS:
        return "OPTIONS";
    case EVHTTP_REQ_TRACE:
        return "TRACE";
    case EVHTTP_REQ_CONNECT:
        return "CONNECT";
    case EVHTTP_REQ_PATCH:
        return "PATCH";
    }
    return "UNKNOWN";
}

static void copy_headers(struct http_request *r, struct evhttp_request *ev)
{
    struct evkeyvalq *q = evhttp_request_get_input_headers(ev);
    struct evkeyval *kv;
    size_t n = 0, bytes = 0;
    char *p;

    for (kv = q->tqh_first; kv; kv = kv->next.tqe_next) {
        n++;
        bytes += strlen(kv->key) + strlen(kv->value) + 2;
    }
    r->headers = xmalloc(n * sizeof(*r->headers) + bytes);
    p = (char *)(r->headers + n);
    for (kv = q->tqh_first; kv; kv = kv->next.tqe_next) {
        size_t kl = strlen(kv->key) + 1, vl = strlen(kv->value) + 1;
        struct header *h = &r->headers[r->nheaders++];
        memcpy(p, kv->key, kl);
        h->name = p;
        p += kl;
        memcpy(p, kv->value, vl);
        h->value = p;
        p += vl;
    }
}

static void copy_body(struct http_request *r, struct evhttp_request *ev)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(ev);
    size_t len = in ? evbuffer_get_length(in) : 0;

    /* evhttp already bounded len by max_body */
    r->body = xmalloc(len + 1);
    if (len)
        evbuffer_copyout(in, r->body, len);
    r->body[len] = '\0';
    r->body_len = len;
}

static void reply_text(struct http_request *r, int status, const char *text)
{
    http_reply(r, status, TEXT_PLAIN, text, strlen(text));
}

static void on_request(struct evhttp_request *ev, void *arg)
{
    struct http_server *srv = arg;
    struct evhttp_connection *evcon = evhttp_request_get_connection(ev);
    const struct evhttp_uri *u = evhttp_request_get_evhttp_uri(ev);
    const char *raw_path = u ? evhttp_uri_get_path(u) : NULL;
    const char *query = u ? evhttp_uri_get_query(u) : NULL;
    struct http_request *r = xcalloc(1, sizeof(*r));
    const struct route *route;
    char *addr = NULL;
    ev_uint16_t port = 0;

    r->srv = srv;
    r->ev = ev;
    r->evcon = evcon;
    r->method = method_name(evhttp_request_get_command(ev));
    r->head = evhttp_request_get_command(ev) == EVHTTP_REQ_HEAD;
    r->uri = xstrdup(evhttp_request_get_uri(ev));
    r->query = query ? xstrdup(query) : NULL;
    if (evcon)
        evhttp_connection_get_peer(evcon, &addr, &port);
    r->peer = xstrdup(addr ? addr : "");
    copy_headers(r, ev);
    copy_body(r, ev);

    r->next = srv->pending;
    if (srv->pending)
        srv->pending->prev = r;
    srv->pending = r;

    r->conn = conn_lookup(srv, evcon);
    if (r->conn) {
        r->conn->pending = r;
        event_del(r->conn->deadline);
    } else if (evcon) {
        evhttp_connection_set_closecb(evcon, on_uncounted_close, srv);
    }

    r->path = decode_path(raw_path && *raw_path ? raw_path : "/");
    if (!r->path) {
        log_debug(MOD, "%s %s from %s: bad path", r->method, r->uri, r->peer);
        r->path = xstrdup("");
        reply_text(r, 400, "bad request path\n");
        return;
    }
    route = route_find(srv, r->path);
    if (!route) {
        log_debug(MOD, "%s %s from %s: no route", r->method, r->path, r->peer);
        reply_text(r, 404, "not found\n");
        return;
    }
    log_debug(MOD, "%s %s from %s (%zu body bytes)", r->method, r->path,
              r->peer, r->body_len);
    route->fn(r, route->arg);
}

/*
 * A keep-alive connection now waits for its next request: restart the
 * clock for it.
 */
static void on_complete(struct evhttp_request *ev, void *arg)
{
    struct http_server *srv = arg;
    struct conn *c = conn_lookup(srv, evhttp_request_get_connection(ev));

    if (c && !c->pending)
        deadline_arm(c);
}

/* ---- public ---- */

struct http_server *http_server_new(struct event_base *base, const char *listen,
                                    size_t max_body, unsigned timeout_s,
                                    struct error *err)
{
    struct http_server *srv = NULL;
    struct sockaddr_storage ss;
    socklen_t sslen = 0;
    struct evconnlistener *lis;
    evutil_socket_t fd;

    if (netaddr_parse_listen(listen, &ss, &sslen) != 0) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "http: bad listen address \"%s\" (want host:port or "
                  "[v6]:port with a numeric host)",
                  listen ? listen : "");
        return NULL;
    }
    srv = xcalloc(1, sizeof(*srv));
    srv->base = base;
    srv->timeout_s = timeout_s ? timeout_s : DEFAULT_TIMEOUT_S;
    srv->max_conns = MAX_CONNS;
    srv->http = evhttp_new(base);
    srv->resolve_ev = event_new(base, -1, 0, on_resolve, srv);
    if (!srv->http || !srv->resolve_ev) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "http: cannot allocate the server");
        goto fail;
    }
    if (max_body > (size_t)SSIZE_MAX)
        max_body = (size_t)SSIZE_MAX;
    evhttp_set_max_body_size(srv->http, (ev_ssize_t)max_body);
    evhttp_set_max_headers_size(srv->http, MAX_HEADERS_SIZE);
    evhttp_set_timeout(srv->http, (int)srv->timeout_s);
    evhttp_set_allowed_methods(srv->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST |
                                              EVHTTP_REQ_HEAD);
    /* labels evhttp's own error pages (400, 413, 501) */
    evhttp_set_default_content_type(srv->http, TEXT_PLAIN);
    evhttp_set_gencb(srv->http, on_request, srv);
    evhttp_set_bevcb(srv->http, on_new_bev, srv);

    lis = evconnlistener_new_bind(base, NULL, NULL,
                                  LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_FREE |
                                      LEV_OPT_CLOSE_ON_EXEC,
                                  128, (struct sockaddr *)&ss, (int)sslen);
    if (!lis) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, true,
                  "http: cannot listen on %s: %s", listen, strerror(errno));
        goto fail;
    }
    srv->bound = evhttp_bind_listener(srv->http, lis);
    if (!srv->bound) {
        evconnlistener_free(lis);
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "http: cannot serve on %s", listen);
        goto fail;
    }
    fd = evhttp_bound_socket_get_fd(srv->bound);
    sslen = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &sslen) != 0) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "http: getsockname: %s", strerror(errno));
        goto fail;
    }
    srv->port = ss.ss_family == AF_INET6
                    ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                    : ntohs(((struct sockaddr_in *)&ss)->sin_port);
    log_info(MOD, "listening on %s (port %d)", listen, srv->port);
    return srv;
fail:
    http_server_free(srv);
    return NULL;
}

void http_server_free(struct http_server *srv)
{
    struct http_request *r, *next;

    if (!srv)
        return;
    srv->bound = NULL; /* evhttp_free frees it */
    /* closes every connection: on_conn_close detaches pending requests */
    if (srv->http)
        evhttp_free(srv->http);
    /* any left were freed by evhttp without a close callback */
    while (srv->conns)
        conn_release(srv->conns, false);
    for (r = srv->pending; r; r = next) {
        next = r->next;
        request_detach(r, false);
        r->srv = NULL;
        r->prev = r->next = NULL;
    }
    if (srv->resolve_ev)
        event_free(srv->resolve_ev);
    for (size_t i = 0; i < srv->nroutes; i++)
        free(srv->routes[i].prefix);
    free(srv->routes);
    free(srv);
}

int http_server_port(const struct http_server *srv)
{
    return srv->port;
}

void http_server_route(struct http_server *srv, const char *prefix,
                       http_handler_fn *fn, void *arg)
{
    struct route *r;

    if (!prefix || prefix[0] != '/')
        fatal("http: route \"%s\" must start with '/'",
              prefix ? prefix : "(null)");
    for (size_t i = 0; i < srv->nroutes; i++) {
        if (strcmp(srv->routes[i].prefix, prefix) == 0) {
            srv->routes[i].fn = fn;
            srv->routes[i].arg = arg;
            return;
        }
    }
    srv->routes =
        xrealloc(srv->routes, (srv->nroutes + 1) * sizeof(*srv->routes));
    r = &srv->routes[srv->nroutes++];
    r->prefix = xstrdup(prefix);
    r->len = strlen(prefix);
    r->fn = fn;
    r->arg = arg;
}

const char *http_req_method(const struct http_request *req)
{
    return req->method;
}

const char *http_req_path(const struct http_request *req)
{
    return req->path;
}

const char *http_req_uri(const struct http_request *req)
{
    return req->uri;
}

const char *http_req_query(const struct http_request *req)
{
    return req->query;
}

const char *http_req_header(const struct http_request *req, const char *name)
{
    for (size_t i = 0; i < req->nheaders; i++)
        if (str_ieq(req->headers[i].name, name))
            return req->headers[i].value;
    return NULL;
}

const char *http_req_body(const struct http_request *req, size_t *len)
{
    if (len)
        *len = req->body_len;
    return req->body;
}

const char *http_req_peer(const struct http_request *req)
{
    return req->peer;
}

void http_reply(struct http_request *req, int status, const char *ctype,
                const char *body, size_t len)
{
    struct evhttp_request *ev = req->ev;
    struct evkeyvalq *out;
    struct evbuffer *buf;
    char clen[32];
    bool send_body;

    if (!ev || !req->srv) {
        log_debug(MOD, "%s %s: client gone before the %d reply", req->method,
                  req->path, status);
        request_free(req);
        return;
    }
    /* no body for HEAD, 1xx, 204, 304 (RFC 9110 section 6.4.1) */
    send_body = !req->head && status >= 200 && status != 204 && status != 304;
    if (!body)
        len = 0;
    out = evhttp_request_get_output_headers(ev);
    /* never evhttp's default, text/html */
    if (!ctype || !*ctype)
        ctype = TEXT_PLAIN;
    if (evhttp_add_header(out, "Content-Type", ctype) != 0) {
        log_warn(MOD, "invalid Content-Type replaced");
        evhttp_add_header(out, "Content-Type", TEXT_PLAIN);
    }
    if (status >= 200 && status != 204 && status != 304) {
        snprintf(clen, sizeof(clen), "%zu", len);
        evhttp_add_header(out, "Content-Length", clen);
    }
    evhttp_add_header(out, "Cache-Control", "no-store");
    evhttp_add_header(out, "X-Content-Type-Options", "nosniff");
    evhttp_request_set_on_complete_cb(ev, on_complete, req->srv);

    buf = evbuffer_new();
    if (!buf)
        fatal("http: out of memory");
    if (send_body && len)
        evbuffer_add(buf, body, len);
    log_debug(MOD, "%s %s -> %d (%zu bytes)", req->method, req->path, status,
              len);
    request_free(req);
    evhttp_send_reply(ev, status, NULL, buf);
    evbuffer_free(buf);
}
