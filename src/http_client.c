/*
 * http_client: outbound HTTP(S) for provider APIs, see http_client.h.
 *
 * Owns one CURLM per client, the libevent events that watch curl's
 * sockets, one libevent timer for curl's timeouts, a list of running
 * requests and a small free list of easy handles. curl tells us what to
 * watch (socket callback) and when to wake it (timer callback); our
 * libevent callbacks hand readiness back with curl_multi_socket_action()
 * and then collect finished transfers with curl_multi_info_read().
 *
 * Must never: block the loop (no curl_easy_perform, no curl_multi_wait);
 * call curl_multi_socket_action() from inside a curl callback (curl is
 * not re-entrant there); call a done callback from inside
 * http_client_request(); log or put into an error message the URL, the
 * request headers, the body or the userpwd (they carry credentials and
 * phone numbers).
 *
 * Re-entrancy: a done callback may start new requests on the same client
 * (curl_multi_add_handle is allowed outside curl's own callbacks). It may
 * not free the client: that is a broken invariant and aborts via fatal().
 *
 * http_form_add() percent-encodes exactly like curl_easy_escape(): the
 * RFC 3986 unreserved characters A-Z a-z 0-9 - . _ ~ stay, every other
 * byte becomes %XX (upper-case hex), so a space is %20, not '+'. Providers
 * decode both; Twilio signs the parameters it decoded, not our encoding,
 * so the choice does not affect webhook signatures.
 */
#include "http_client.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>
#include <event2/event.h>

#include "log.h"
#include "util.h"

#ifndef POSTERN_VERSION
#define POSTERN_VERSION "0"
#endif

#define MOD "http_client"

/* Provider replies are small JSON documents; anything bigger is wrong. */
#define HTTP_BODY_MAX (1024 * 1024)
/* Retry-After and Content-Type values we keep; longer ones are cut. */
#define HTTP_HDR_VALUE_MAX 256
/* Idle easy handles kept for reuse (their DNS cache and buffers). */
#define HTTP_EASY_POOL_MAX 16

struct http_req {
    struct http_client *hc;
    CURL *easy;
    struct curl_slist *headers;
    http_done_fn *done;
    void *arg;
    unsigned timeout_ms;
    struct strbuf body;
    char *retry_after;
    char *content_type;
    bool too_big;
    struct http_req *prev, *next;
};

/* One per socket curl asks us to watch; attached with curl_multi_assign. */
struct http_sock {
    struct http_client *hc;
    curl_socket_t fd;
    struct event *ev;
    struct http_sock *prev, *next;
};

struct http_client {
    struct event_base *base;
    CURLM *multi;
    struct event *timer;
    struct http_client_opts opts;
    struct http_req *reqs; /* running, doubly linked */
    size_t inflight;
    struct http_sock *socks;
    CURL *pool[HTTP_EASY_POOL_MAX];
    size_t n_pool;
    unsigned in_done; /* > 0 while a done callback runs */
    bool closing;
};

static void check_finished(struct http_client *hc);

/* --- curl -> libevent ---------------------------------------------------- */

static void sock_event_cb(evutil_socket_t fd, short what, void *arg)
{
    struct http_sock *s = arg;
    struct http_client *hc = s->hc;
    int action = 0;
    int running = 0;

    if (what & EV_READ)
        action |= CURL_CSELECT_IN;
    if (what & EV_WRITE)
        action |= CURL_CSELECT_OUT;
    /* s may be freed inside this call (CURL_POLL_REMOVE): do not touch it */
    curl_multi_socket_action(hc->multi, fd, action, &running);
    check_finished(hc);
}

static void sock_unlink(struct http_client *hc, struct http_sock *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        hc->socks = s->next;
    if (s->next)
        s->next->prev = s->prev;
    event_free(s->ev);
    free(s);
}

static int socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp,
                     void *socketp)
{
    struct http_client *hc = userp;
    struct http_sock *s = socketp;
    short kind = EV_PERSIST;

    (void)easy;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            curl_multi_assign(hc->multi, fd, NULL);
            sock_unlink(hc, s);
        }
        return 0;
    }
    if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
        kind |= EV_READ;
    if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
        kind |= EV_WRITE;

    if (!s) {
        s = xcalloc(1, sizeof(*s));
        s->hc = hc;
        s->fd = fd;
        s->ev = event_new(hc->base, fd, kind, sock_event_cb, s);
        if (!s->ev) {
            free(s);
            return -1;
        }
        s->next = hc->socks;
        if (hc->socks)
            hc->socks->prev = s;
        hc->socks = s;
        curl_multi_assign(hc->multi, fd, s);
    } else {
        event_del(s->ev);
        event_assign(s->ev, hc->base, fd, kind, sock_event_cb, s);
    }
    if (event_add(s->ev, NULL) < 0)
        return -1;
    return 0;
}

static void timer_event_cb(evutil_socket_t fd, short what, void *arg)
{
    struct http_client *hc = arg;
    int running = 0;

    (void)fd;
    (void)what;
    curl_multi_socket_action(hc->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_finished(hc);
}

/* Only arms the libevent timer: socket_action must not run in here. */
static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    struct http_client *hc = userp;
    struct timeval tv;

    (void)multi;
    if (timeout_ms < 0) {
        evtimer_del(hc->timer);
        return 0;
    }
    tv.tv_sec = timeout_ms / 1000;
    tv.tv_usec = (timeout_ms % 1000) * 1000;
    return evtimer_add(hc->timer, &tv) < 0 ? -1 : 0;
}

/* --- per-request callbacks ------------------------------------------------ */

static size_t write_cb(char *data, size_t size, size_t nmemb, void *userp)
{
    struct http_req *r = userp;
    size_t n = size * nmemb;

    if (n > HTTP_BODY_MAX - r->body.len) {
        r->too_big = true;
        return 0; /* anything but n aborts with CURLE_WRITE_ERROR */
    }
    sb_append(&r->body, data, n);
    return n;
}

static char *header_value(const char *line, size_t n, const char *name)
{
    size_t nl = strlen(name);
    size_t vlen;

    if (n <= nl || line[nl] != ':' || strncasecmp(line, name, nl) != 0)
        return NULL;
    line += nl + 1;
    n -= nl + 1;
    while (n > 0 && (*line == ' ' || *line == '\t')) {
        line++;
        n--;
    }
    vlen = n;
    while (vlen > 0 && (line[vlen - 1] == '\r' || line[vlen - 1] == '\n' ||
                        line[vlen - 1] == ' ' || line[vlen - 1] == '\t'))
        vlen--;
    if (vlen > HTTP_HDR_VALUE_MAX)
        vlen = HTTP_HDR_VALUE_MAX;
    return xstrndup(line, vlen);
}

static size_t header_cb(char *data, size_t size, size_t nitems, void *userp)
{
    struct http_req *r = userp;
    size_t n = size * nitems;
    char *v;

    /* A new status line (after 100 Continue, say) starts a new header set */
    if (n >= 5 && strncmp(data, "HTTP/", 5) == 0) {
        free(r->retry_after);
        free(r->content_type);
        r->retry_after = NULL;
        r->content_type = NULL;
    } else if ((v = header_value(data, n, "Retry-After"))) {
        free(r->retry_after);
        r->retry_after = v;
    } else if ((v = header_value(data, n, "Content-Type"))) {
        free(r->content_type);
        r->content_type = v;
    }
    return n;
}

/* --- request lifecycle ---------------------------------------------------- */

static CURL *easy_get(struct http_client *hc)
{
    if (hc->n_pool > 0) {
        CURL *e = hc->pool[--hc->n_pool];
        curl_easy_reset(e);
        return e;
    }
    return curl_easy_init();
}

static void easy_put(struct http_client *hc, CURL *e)
{
    if (!e)
        return;
    if (!hc->closing && hc->n_pool < HTTP_EASY_POOL_MAX)
        hc->pool[hc->n_pool++] = e;
    else
        curl_easy_cleanup(e);
}

static void req_free(struct http_req *r)
{
    easy_put(r->hc, r->easy);
    curl_slist_free_all(r->headers);
    sb_free(&r->body);
    free(r->retry_after);
    free(r->content_type);
    free(r);
}

static void req_unlink(struct http_client *hc, struct http_req *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        hc->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
    hc->inflight--;
}

/* Turns a curl failure into a message without URL, headers or userpwd. */
static void describe_failure(const struct http_req *r, CURLcode rc,
                             struct error *err)
{
    const struct http_client *hc = r->hc;
    curl_off_t connect_us = 0;
    long os_errno = 0;

    if (r->too_big) {
        error_set(err, COND_SERVICE_UNAVAILABLE, true,
                  "response body larger than %d bytes", HTTP_BODY_MAX);
        return;
    }
    switch (rc) {
    case CURLE_OPERATION_TIMEDOUT:
        curl_easy_getinfo(r->easy, CURLINFO_CONNECT_TIME_T, &connect_us);
        if (connect_us == 0 && hc->opts.connect_timeout_ms < r->timeout_ms)
            error_set(err, COND_REMOTE_SERVER_TIMEOUT, true,
                      "connect timeout after %u ms",
                      hc->opts.connect_timeout_ms);
        else
            error_set(err, COND_REMOTE_SERVER_TIMEOUT, true,
                      "timeout after %u ms", r->timeout_ms);
        return;
    case CURLE_FILESIZE_EXCEEDED:
        error_set(err, COND_SERVICE_UNAVAILABLE, true,
                  "response body larger than %d bytes", HTTP_BODY_MAX);
        return;
    case CURLE_COULDNT_CONNECT:
        curl_easy_getinfo(r->easy, CURLINFO_OS_ERRNO, &os_errno);
        if (os_errno == ECONNREFUSED) {
            error_set(err, COND_SERVICE_UNAVAILABLE, true,
                      "connection refused");
            return;
        }
        if (os_errno != 0) {
            error_set(err, COND_SERVICE_UNAVAILABLE, true, "cannot connect: %s",
                      strerror((int)os_errno));
            return;
        }
        break;
    default:
        break;
    }
    error_set(err, COND_SERVICE_UNAVAILABLE, true, "%s",
              curl_easy_strerror(rc));
}

static void req_complete(struct http_req *r, CURLcode rc, const char *why)
{
    struct http_client *hc = r->hc;
    struct http_response resp;
    struct error err;
    long status = 0;
    double total_s = 0;

    req_unlink(hc, r);
    memset(&resp, 0, sizeof(resp));
    error_clear(&err);
    if (why) {
        error_set(&err, COND_SERVICE_UNAVAILABLE, true, "%s", why);
    } else if (rc != CURLE_OK) {
        describe_failure(r, rc, &err);
    } else {
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_getinfo(r->easy, CURLINFO_TOTAL_TIME, &total_s);
        resp.status = (int)status;
        resp.body = r->body.s ? r->body.s : "";
        resp.body_len = r->body.len;
        resp.retry_after = r->retry_after;
        resp.content_type = r->content_type;
        resp.total_s = total_s;
    }

    if (err.msg[0])
        log_debug(MOD, "request failed: %s", err.msg);
    else
        log_debug(MOD, "HTTP %d in %.3f s", resp.status, resp.total_s);

    hc->in_done++;
    if (err.msg[0])
        r->done(r->arg, &err, NULL);
    else
        r->done(r->arg, NULL, &resp);
    hc->in_done--;
    req_free(r);
}

static void check_finished(struct http_client *hc)
{
    CURLMsg *m;
    int left;

    while ((m = curl_multi_info_read(hc->multi, &left))) {
        char *priv = NULL;
        CURL *easy = m->easy_handle;
        CURLcode rc = m->data.result;

        if (m->msg != CURLMSG_DONE)
            continue;
        /* m is invalid after remove_handle: copy what we need first */
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, &priv);
        curl_multi_remove_handle(hc->multi, easy);
        if (priv)
            req_complete((struct http_req *)(void *)priv, rc, NULL);
    }
}

/* --- public ----------------------------------------------------------------
 */

struct http_client *http_client_new(struct event_base *base,
                                    const struct http_client_opts *opts,
                                    struct error *err)
{
    struct http_client *hc;

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "curl_global_init failed");
        return NULL;
    }
    hc = xcalloc(1, sizeof(*hc));
    hc->base = base;
    if (opts)
        hc->opts = *opts;
    if (!hc->opts.max_host_connections)
        hc->opts.max_host_connections = 8;
    if (!hc->opts.connect_timeout_ms)
        hc->opts.connect_timeout_ms = 5000;
    if (!hc->opts.total_timeout_ms)
        hc->opts.total_timeout_ms = 15000;

    hc->timer = evtimer_new(base, timer_event_cb, hc);
    hc->multi = curl_multi_init();
    if (!hc->timer || !hc->multi) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "cannot create the HTTP client");
        goto fail;
    }
    curl_multi_setopt(hc->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(hc->multi, CURLMOPT_SOCKETDATA, hc);
    curl_multi_setopt(hc->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(hc->multi, CURLMOPT_TIMERDATA, hc);
    curl_multi_setopt(hc->multi, CURLMOPT_MAX_HOST_CONNECTIONS,
                      (long)hc->opts.max_host_connections);
    return hc;

fail:
    if (hc->multi)
        curl_multi_cleanup(hc->multi);
    if (hc->timer)
        event_free(hc->timer);
    free(hc);
    curl_global_cleanup();
    return NULL;
}

void http_client_free(struct http_client *hc)
{
    if (!hc)
        return;
    if (hc->in_done)
        fatal("http_client_free() called from a done callback");
    hc->closing = true;
    while (hc->reqs) {
        struct http_req *r = hc->reqs;
        curl_multi_remove_handle(hc->multi, r->easy);
        req_complete(r, CURLE_OK, "HTTP client shut down");
    }
    for (size_t i = 0; i < hc->n_pool; i++)
        curl_easy_cleanup(hc->pool[i]);
    hc->n_pool = 0;
    /* closes the cached connections, calling socket_cb(REMOVE) for some */
    curl_multi_cleanup(hc->multi);
    while (hc->socks)
        sock_unlink(hc, hc->socks);
    event_free(hc->timer);
    free(hc);
    curl_global_cleanup();
}

size_t http_client_inflight(const struct http_client *hc)
{
    return hc ? hc->inflight : 0;
}

static bool has_ctl(const char *s)
{
    for (; *s; s++)
        if (*s == '\r' || *s == '\n')
            return true;
    return false;
}

/* Everything that can be refused before curl sees the request. */
static int check_spec(const struct http_req_spec *spec, struct error *err)
{
    if (!spec->method || !spec->method[0] || has_ctl(spec->method) ||
        strchr(spec->method, ' ')) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "invalid HTTP method");
        return -1;
    }
    if (!spec->url || (strncasecmp(spec->url, "http://", 7) != 0 &&
                       strncasecmp(spec->url, "https://", 8) != 0)) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "URL must be http:// or https://");
        return -1;
    }
    if (has_ctl(spec->url)) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "URL contains a line break");
        return -1;
    }
    if (!spec->body && spec->body_len) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "body_len without body");
        return -1;
    }
    for (size_t i = 0; i < spec->n_headers; i++) {
        const struct http_header *h = &spec->headers[i];
        if (!h->name || !h->value || !h->name[0] || has_ctl(h->name) ||
            has_ctl(h->value) || strchr(h->name, ':')) {
            error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                      "invalid request header #%zu", i);
            return -1;
        }
    }
    return 0;
}

static int setup_easy(struct http_req *r, const struct http_req_spec *spec)
{
    struct http_client *hc = r->hc;
    CURL *e = r->easy;
    CURLcode rc = CURLE_OK;

#define SET(opt, val)                                                          \
    do {                                                                       \
        if (rc == CURLE_OK)                                                    \
            rc = curl_easy_setopt(e, opt, val);                                \
    } while (0)

    SET(CURLOPT_PRIVATE, r);
    SET(CURLOPT_URL, spec->url);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_CONNECTTIMEOUT_MS, (long)hc->opts.connect_timeout_ms);
    SET(CURLOPT_TIMEOUT_MS, (long)r->timeout_ms);
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_FOLLOWLOCATION, 0L);
    SET(CURLOPT_USERAGENT, "postern/" POSTERN_VERSION);
    SET(CURLOPT_WRITEFUNCTION, write_cb);
    SET(CURLOPT_WRITEDATA, r);
    SET(CURLOPT_HEADERFUNCTION, header_cb);
    SET(CURLOPT_HEADERDATA, r);
    SET(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)HTTP_BODY_MAX);
    if (spec->userpwd) {
        SET(CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
        SET(CURLOPT_USERPWD, spec->userpwd);
    }

    if (strcmp(spec->method, "GET") == 0 && !spec->body) {
        SET(CURLOPT_HTTPGET, 1L);
    } else if (strcmp(spec->method, "HEAD") == 0 && !spec->body) {
        SET(CURLOPT_NOBODY, 1L);
    } else {
        /* POSTFIELDS makes curl send the body; CUSTOMREQUEST renames it */
        SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)spec->body_len);
        SET(CURLOPT_COPYPOSTFIELDS, spec->body ? spec->body : "");
        if (strcmp(spec->method, "POST") != 0)
            SET(CURLOPT_CUSTOMREQUEST, spec->method);
    }

    for (size_t i = 0; i < spec->n_headers; i++) {
        char *line =
            xasprintf("%s: %s", spec->headers[i].name, spec->headers[i].value);
        struct curl_slist *l = curl_slist_append(r->headers, line);
        free(line);
        if (!l)
            return -1;
        r->headers = l;
    }
    /*
     * "Expect: 100-continue" costs a round trip (or a 1 s wait when the
     * server ignores it) on bodies above 1 KiB; provider APIs never need it.
     */
    {
        struct curl_slist *l = curl_slist_append(r->headers, "Expect:");
        if (!l)
            return -1;
        r->headers = l;
    }
    SET(CURLOPT_HTTPHEADER, r->headers);
#undef SET
    return rc == CURLE_OK ? 0 : -1;
}

int http_client_request(struct http_client *hc,
                        const struct http_req_spec *spec, http_done_fn *done,
                        void *arg, struct error *err)
{
    struct http_req *r;
    CURLMcode mc;

    if (hc->closing) {
        error_set(err, COND_SERVICE_UNAVAILABLE, true,
                  "HTTP client shutting down");
        return -1;
    }
    if (check_spec(spec, err) < 0)
        return -1;

    r = xcalloc(1, sizeof(*r));
    r->hc = hc;
    r->done = done;
    r->arg = arg;
    r->timeout_ms =
        spec->timeout_ms ? spec->timeout_ms : hc->opts.total_timeout_ms;
    sb_init(&r->body);
    r->easy = easy_get(hc);
    if (!r->easy || setup_easy(r, spec) < 0) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, true,
                  "cannot set up the HTTP request");
        goto fail;
    }
    /* may call timer_cb (arms a zero-delay timer), never done */
    mc = curl_multi_add_handle(hc->multi, r->easy);
    if (mc != CURLM_OK) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, true,
                  "cannot start the HTTP request: %s", curl_multi_strerror(mc));
        goto fail;
    }
    r->next = hc->reqs;
    if (hc->reqs)
        hc->reqs->prev = r;
    hc->reqs = r;
    hc->inflight++;
    return 0;

fail:
    req_free(r);
    return -1;
}

void http_form_add(struct strbuf *b, const char *name, const char *value)
{
    static const char hex[] = "0123456789ABCDEF";
    const char *parts[2] = {name, value};

    if (b->len > 0)
        sb_putc(b, '&');
    for (int i = 0; i < 2; i++) {
        if (i == 1)
            sb_putc(b, '=');
        for (const unsigned char *p = (const unsigned char *)parts[i]; *p;
             p++) {
            if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
                (*p >= '0' && *p <= '9') || *p == '-' || *p == '.' ||
                *p == '_' || *p == '~') {
                sb_putc(b, (char)*p);
            } else {
                char enc[3] = {'%', hex[*p >> 4], hex[*p & 15]};
                sb_append(b, enc, 3);
            }
        }
    }
}
