/*
 * http_server: the evhttp listener for webhooks, /healthz and /metrics.
 * Sets what evhttp leaves unlimited: body and header sizes and the
 * per-connection timeout. Routes are path prefixes; the longest match
 * wins; anything else gets 404. Only http_server.c includes evhttp.
 *
 * A handler must answer each request exactly once with http_reply(),
 * now or later; a request whose client went away is answered into the
 * void safely (the request stays valid until http_reply).
 */
#ifndef POSTERN_HTTP_SERVER_H
#define POSTERN_HTTP_SERVER_H

#include <stddef.h>

#include "util.h"

struct event_base;
struct http_server;
struct http_request;

typedef void http_handler_fn(struct http_request *req, void *arg);

/* listen: "host:port" or "[v6]:port". NULL with err on failure. */
struct http_server *http_server_new(struct event_base *base, const char *listen,
                                    size_t max_body, unsigned timeout_s,
                                    struct error *err);
void http_server_free(struct http_server *srv);
/* The bound port (useful with port 0). */
int http_server_port(const struct http_server *srv);
/* prefix: "/healthz" (exact or prefix match), "/sms/". Copies prefix. */
void http_server_route(struct http_server *srv, const char *prefix,
                       http_handler_fn *fn, void *arg);

/* "GET", "POST", ... */
const char *http_req_method(const struct http_request *req);
/* Percent-decoded path without the query string. */
const char *http_req_path(const struct http_request *req);
/* The request URI exactly as sent (path and query), for signatures. */
const char *http_req_uri(const struct http_request *req);
/* Raw query string or NULL. */
const char *http_req_query(const struct http_request *req);
/* Case-insensitive header lookup; NULL when absent. */
const char *http_req_header(const struct http_request *req, const char *name);
/* Body (NUL-terminated copy); *len set when non-NULL. */
const char *http_req_body(const struct http_request *req, size_t *len);
/* Peer address as text. */
const char *http_req_peer(const struct http_request *req);

/* Answers and releases req. body may be NULL. */
void http_reply(struct http_request *req, int status, const char *ctype,
                const char *body, size_t len);

#endif
