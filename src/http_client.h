/*
 * http_client: outbound HTTP(S) for provider APIs. One CURLM driven by the
 * libevent loop through curl's multi_socket_action API (the hiperfifo
 * pattern: socket callback -> events, timer callback -> one libevent timer;
 * socket_action is never called from inside curl's timer callback).
 * Keep-alive connections are reused; connections per host are capped;
 * every request has a connect and a total timeout; CURLOPT_NOSIGNAL is set.
 * Only http_client.c includes curl.h.
 *
 * Completion contract: http_client_request() returns 0 and later calls
 * done exactly once (never from inside the call), or returns -1 with err
 * filled and never calls done. http_client_free() completes every request
 * still running with a temporary error before returning.
 */
#ifndef POSTERN_HTTP_CLIENT_H
#define POSTERN_HTTP_CLIENT_H

#include <stddef.h>

#include "util.h"

struct event_base;
struct http_client;

struct http_client_opts {
    unsigned max_host_connections; /* per host; 0 = 8 */
    unsigned connect_timeout_ms;   /* 0 = 5000 */
    unsigned total_timeout_ms;     /* 0 = 15000 */
};

struct http_header {
    const char *name;
    const char *value;
};

struct http_req_spec {
    const char *method; /* "GET", "POST", ... */
    const char *url;
    const struct http_header *headers; /* extra request headers */
    size_t n_headers;
    const char *body; /* may be NULL */
    size_t body_len;
    const char *userpwd; /* "user:password" for Basic auth, or NULL */
    unsigned timeout_ms; /* 0 = the client's total timeout */
};

/* Borrowed for the duration of the callback. */
struct http_response {
    int status;       /* HTTP status, 0 when no response */
    const char *body; /* NUL-terminated, never NULL */
    size_t body_len;
    const char *retry_after;  /* Retry-After header value or NULL */
    const char *content_type; /* or NULL */
    double total_s;           /* time the request took */
};

/*
 * err NULL when a response arrived (any status); otherwise a transport
 * failure (timeout, connection refused/reset, DNS): temporary, with a
 * message naming the cause. resp is NULL exactly when err is non-NULL.
 */
typedef void http_done_fn(void *arg, const struct error *err,
                          const struct http_response *resp);

struct http_client *http_client_new(struct event_base *base,
                                    const struct http_client_opts *opts,
                                    struct error *err);
void http_client_free(struct http_client *hc);
int http_client_request(struct http_client *hc,
                        const struct http_req_spec *spec, http_done_fn *done,
                        void *arg, struct error *err);
/* Requests started and not yet completed. */
size_t http_client_inflight(const struct http_client *hc);

/* application/x-www-form-urlencoded helpers (curl's escaping). */
/* Appends "&name=value" (no '&' when b is empty), both percent-encoded. */
void http_form_add(struct strbuf *b, const char *name, const char *value);

#endif
