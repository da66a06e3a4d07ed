/*
 * component: one XEP-0114 stream per gateway, libstrophe 0.12.2 driven
 * from the libevent loop.
 *
 * Owns: a libstrophe context and connection per component, the socket's
 * read/write events, a flush event, a 200 ms tick (libstrophe runs its
 * connect and handshake timeouts only inside xmpp_run_once), the resolver
 * request for xmpp.host and the reconnect timer.
 *
 * Must never: call xmpp_run_once from inside a libstrophe handler, block
 * on DNS (the host is resolved with evdns and libstrophe only ever sees a
 * numeric address), hand libstrophe a socket >= FD_SETSIZE (its select()
 * aborts), or send while the stream is down (libstrophe drops it silently).
 *
 * Sending: component_send only queues the stanza in libstrophe and
 * activates the flush event once per loop turn; its xmpp_run_once writes
 * everything queued in that turn (libstrophe writes its queue before it
 * polls). The write event is armed only while libstrophe is left holding
 * data the socket did not take, so a busy stream costs no epoll_ctl per
 * stanza.
 *
 * Workarounds for libstrophe 0.12.2:
 *  - xmpp_connect_component() leaves conn->sm_state NULL and the server's
 *    <handshake/> (and any disconnect) dereferences it. A first
 *    xmpp_connect_client() towards 127.0.0.1 whose sockopt callback refuses
 *    the socket allocates sm_state, sends nothing, never calls the handler,
 *    and the state survives every later reconnect.
 *  - A socket >= FD_SETSIZE is moved onto a low descriptor reserved at
 *    start (component_global_init), inside the sockopt callback. When
 *    libstrophe closes it the slot is reserved again at once.
 */
#include "component.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <strophe.h>

#include "log.h"
#include "xnode.h"

#define TICK_MS 200
#define BACKOFF_BASE_MS 500
#define BACKOFF_CAP_MS 30000
/* A stream that stayed up this long resets the backoff. */
#define STABLE_MS 10000

enum cstate {
    CS_IDLE,       /* not started or stopped */
    CS_RESOLVING,  /* waiting for evdns */
    CS_CONNECTING, /* TCP connect / handshake in progress */
    CS_UP,         /* handshake accepted */
    CS_BACKOFF,    /* waiting to reconnect */
    CS_CLOSING,    /* </stream:stream> sent, waiting for the close */
};

struct component {
    struct event_base *base;
    struct evdns_base *dns;
    struct evdns_getaddrinfo_request *dns_req;
    xmpp_ctx_t *ctx;
    xmpp_conn_t *conn;
    xmpp_log_t logger;
    char *host;
    int port;
    char *jid;
    char module[300];
    struct component_cbs cbs;

    enum cstate state;
    int fd;             /* socket as libstrophe uses it, -1 if none */
    int slot;           /* reserved low fd index, -1 if none */
    bool refuse_socket; /* sockopt callback refuses (sm_state trick) */
    bool write_armed;
    bool flush_pending; /* ev_flush is active */
    bool stopping;
    unsigned attempt;
    uint64_t up_since;
    char addr[INET6_ADDRSTRLEN];

    struct event *ev_read;
    struct event *ev_write;
    struct event *ev_tick;
    struct event *ev_retry;
    struct event *ev_done;  /* defers the stop callback */
    struct event *ev_flush; /* writes what this loop turn queued */
    void (*stop_done)(void *);
    void *stop_arg;
};

/* Reserved low descriptors (held open on /dev/null until needed). */
static int *g_slots;
static size_t g_nslots;
static bool g_slot_used[64];

void component_global_init(size_t n)
{
    /* libstrophe writes with send() and flags 0: a peer reset must not
     * kill the process */
    signal(SIGPIPE, SIG_IGN);
    xmpp_initialize();
    if (n > ARRAY_SIZE(g_slot_used))
        n = ARRAY_SIZE(g_slot_used);
    g_slots = xcalloc(n, sizeof(*g_slots));
    g_nslots = n;
    for (size_t i = 0; i < n; i++) {
        g_slots[i] = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (g_slots[i] < 0 || g_slots[i] >= FD_SETSIZE)
            fatal("cannot reserve a descriptor below %d for the XMPP "
                  "socket",
                  FD_SETSIZE);
    }
}

void component_global_cleanup(void)
{
    for (size_t i = 0; i < g_nslots; i++)
        if (!g_slot_used[i] && g_slots[i] >= 0)
            close(g_slots[i]);
    free(g_slots);
    g_slots = NULL;
    g_nslots = 0;
    xmpp_shutdown();
}

static int slot_take(void)
{
    for (size_t i = 0; i < g_nslots; i++)
        if (!g_slot_used[i]) {
            g_slot_used[i] = true;
            return (int)i;
        }
    return -1;
}

/* libstrophe closed the socket living on the slot: hold the number again */
static void slot_release(int i)
{
    if (i < 0 || (size_t)i >= g_nslots)
        return;
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd >= 0 && fd != g_slots[i]) {
        /* someone took the number in between: use the one we got if low */
        if (dup2(fd, g_slots[i]) < 0 && fd < FD_SETSIZE) {
            g_slots[i] = fd;
            fd = -1;
        }
        if (fd >= 0)
            close(fd);
    }
    g_slot_used[i] = false;
}

static void strophe_log(void *arg, xmpp_log_level_t level, const char *area,
                        const char *msg)
{
    struct component *c = arg;
    int ours;

    switch (level) {
    case XMPP_LEVEL_ERROR:
        ours = L_ERR;
        break;
    case XMPP_LEVEL_WARN:
        ours = L_WARNING;
        break;
    case XMPP_LEVEL_INFO:
        ours = L_INFO;
        break;
    default:
        ours = L_DEBUG;
        break;
    }
    /* libstrophe's debug lines carry whole stanzas: only at debug */
    if (ours < L_DEBUG && level == XMPP_LEVEL_INFO)
        ours = L_DEBUG;
    if (!log_enabled(ours))
        return;
    /* never log the handshake digest, even at debug */
    if (strstr(msg, "<handshake") || strstr(msg, "handshake digest"))
        return;
    log_write(ours, c->module, "libstrophe %s: %s", area, msg);
}

static void update_events(struct component *c);
static void schedule_retry(struct component *c);

static void run_once(struct component *c)
{
    xmpp_run_once(c->ctx, 0);
    update_events(c);
}

/* Readable or writable: libstrophe's select() sorts out which. */
static void on_socket(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    run_once(arg);
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    struct component *c = arg;
    (void)fd;
    (void)what;
    c->flush_pending = false;
    if (c->fd >= 0)
        run_once(c);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct component *c = arg;
    (void)fd;
    (void)what;
    if (c->fd >= 0)
        run_once(c);
}

static void drop_socket_events(struct component *c)
{
    if (c->ev_read) {
        event_del(c->ev_read);
        event_free(c->ev_read);
        c->ev_read = NULL;
    }
    if (c->ev_write) {
        event_del(c->ev_write);
        event_free(c->ev_write);
        c->ev_write = NULL;
    }
    c->write_armed = false;
}

/*
 * Watch the socket: always for reading, for writing while the TCP connect
 * is pending or libstrophe holds unsent data.
 */
static void update_events(struct component *c)
{
    if (c->fd < 0 || !c->ev_write)
        return;
    bool want = c->state == CS_CONNECTING && !xmpp_conn_is_connected(c->conn);
    /* a pending flush writes first; the event only if data is left */
    if (xmpp_conn_is_connected(c->conn) && !c->flush_pending &&
        xmpp_conn_send_queue_len(c->conn) > 0)
        want = true;
    if (want && !c->write_armed) {
        event_add(c->ev_write, NULL);
        c->write_armed = true;
    } else if (!want && c->write_armed) {
        event_del(c->ev_write);
        c->write_armed = false;
    }
}

/*
 * libstrophe 0.12 gives the sockopt callback no userdata: components are
 * found by connection in this small table (a handful of gateways).
 */
static struct component **g_comps;
static size_t g_ncomps;

static void comp_register(struct component *c)
{
    g_comps = xrealloc(g_comps, (g_ncomps + 1) * sizeof(*g_comps));
    g_comps[g_ncomps++] = c;
}

static void comp_unregister(struct component *c)
{
    for (size_t i = 0; i < g_ncomps; i++)
        if (g_comps[i] == c) {
            g_comps[i] = g_comps[--g_ncomps];
            break;
        }
    if (!g_ncomps) {
        free(g_comps);
        g_comps = NULL;
    }
}

static struct component *comp_by_conn(const xmpp_conn_t *conn)
{
    for (size_t i = 0; i < g_ncomps; i++)
        if (g_comps[i]->conn == conn)
            return g_comps[i];
    return NULL;
}

static int sockopt_cb(xmpp_conn_t *conn, void *sockp)
{
    struct component *c = comp_by_conn(conn);
    int *sock = sockp;

    if (!c || c->refuse_socket)
        return -1;
    if (*sock >= FD_SETSIZE) {
        int slot = slot_take();
        if (slot < 0) {
            log_err(c->module,
                    "socket %d is above FD_SETSIZE and no low descriptor "
                    "is free",
                    *sock);
            return -1;
        }
        if (dup2(*sock, g_slots[slot]) < 0) {
            log_err(c->module, "dup2: %s", strerror(errno));
            g_slot_used[slot] = false;
            return -1;
        }
        close(*sock);
        *sock = g_slots[slot];
        c->slot = slot;
        log_info(c->module, "moved the XMPP socket onto descriptor %d", *sock);
    }
    int one = 1;
    setsockopt(*sock, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    c->fd = *sock;
    return 0;
}

/* libstrophe stanza -> xnode (text children are concatenated). */
static struct xnode *convert(xmpp_stanza_t *st)
{
    const char *name = xmpp_stanza_get_name(st);
    struct xnode *n = xnode_new(name ? name : "unknown");
    const char *attrs[64];
    int na = xmpp_stanza_get_attributes(st, attrs, (int)ARRAY_SIZE(attrs));
    struct strbuf text;

    for (int i = 0; i + 1 < na; i += 2)
        xnode_set_attr(n, attrs[i], attrs[i + 1]);
    sb_init(&text);
    for (xmpp_stanza_t *k = xmpp_stanza_get_children(st); k;
         k = xmpp_stanza_get_next(k)) {
        if (xmpp_stanza_is_text(k)) {
            const char *t = xmpp_stanza_get_text_ptr(k);
            if (t)
                sb_puts(&text, t);
        } else if (xmpp_stanza_is_tag(k)) {
            xnode_append(n, convert(k));
        }
    }
    if (text.len)
        xnode_set_text(n, text.s);
    sb_free(&text);
    return n;
}

static int stanza_handler(xmpp_conn_t *conn, xmpp_stanza_t *st, void *arg)
{
    struct component *c = arg;
    (void)conn;

    if (c->state != CS_UP || !c->cbs.stanza)
        return 1;
    struct xnode *n = convert(st);
    c->cbs.stanza(c->cbs.arg, n);
    xnode_free(n);
    return 1;
}

static const char *stream_error_name(xmpp_error_type_t t)
{
    switch (t) {
    case XMPP_SE_CONFLICT:
        return "conflict";
    case XMPP_SE_HOST_UNKNOWN:
        return "host-unknown";
    case XMPP_SE_NOT_AUTHORIZED:
        return "not-authorized";
    case XMPP_SE_INVALID_NS:
        return "invalid-namespace";
    case XMPP_SE_SYSTEM_SHUTDOWN:
        return "system-shutdown";
    case XMPP_SE_POLICY_VIOLATION:
        return "policy-violation";
    case XMPP_SE_CONN_TIMEOUT:
        return "connection-timeout";
    case XMPP_SE_INVALID_XML:
        return "invalid-xml";
    case XMPP_SE_BAD_FORMAT:
        return "bad-format";
    case XMPP_SE_INTERNAL_SERVER_ERROR:
        return "internal-server-error";
    default:
        return "stream-error";
    }
}

static void conn_handler(xmpp_conn_t *conn, xmpp_conn_event_t event, int error,
                         xmpp_stream_error_t *serr, void *arg)
{
    struct component *c = arg;
    (void)conn;

    if (event == XMPP_CONN_CONNECT) {
        c->state = CS_UP;
        c->up_since = now_ms();
        log_notice(c->module, "stream up (connected to %s:%d)", c->addr,
                   c->port);
        if (c->cbs.state)
            c->cbs.state(c->cbs.arg, true);
        return;
    }
    if (event != XMPP_CONN_DISCONNECT && event != XMPP_CONN_FAIL)
        return;

    bool was_up = c->state == CS_UP;
    /* libstrophe closed the socket before calling us */
    drop_socket_events(c);
    c->fd = -1;
    if (c->slot >= 0) {
        slot_release(c->slot);
        c->slot = -1;
    }
    if (was_up && now_ms() - c->up_since >= STABLE_MS)
        c->attempt = 0;

    if (c->stopping) {
        log_notice(c->module, "stream closed");
    } else if (serr) {
        if (serr->type == XMPP_SE_NOT_AUTHORIZED)
            log_err(c->module,
                    "the server refused the handshake (not-authorized: %s): "
                    "check this gateway's secret",
                    serr->text ? serr->text : "wrong secret");
        else if (serr->type == XMPP_SE_HOST_UNKNOWN)
            log_err(c->module,
                    "the server does not know the component %s "
                    "(host-unknown: %s): check its component configuration",
                    c->jid, serr->text ? serr->text : "");
        else
            log_err(c->module, "stream error %s%s%s",
                    stream_error_name(serr->type), serr->text ? ": " : "",
                    serr->text ? serr->text : "");
    } else if (was_up) {
        log_warn(c->module, "stream closed%s%s", error ? ": " : "",
                 error ? strerror(error) : "");
    } else {
        log_warn(c->module, "cannot connect to %s:%d%s%s", c->addr, c->port,
                 error ? ": " : "", error ? strerror(error) : "");
    }
    c->state = CS_BACKOFF;
    if (was_up && c->cbs.state)
        c->cbs.state(c->cbs.arg, false);
    if (c->stopping) {
        c->state = CS_IDLE;
        if (c->stop_done)
            event_active(c->ev_done, 0, 0);
        return;
    }
    schedule_retry(c);
}

static void connect_now(struct component *c)
{
    c->state = CS_CONNECTING;
    c->fd = -1;
    int rc = xmpp_connect_component(c->conn, c->addr, (unsigned short)c->port,
                                    conn_handler, c);
    if (rc != 0 || c->fd < 0) {
        log_warn(c->module, "cannot open a connection to %s:%d (%d)", c->addr,
                 c->port, rc);
        c->state = CS_BACKOFF;
        schedule_retry(c);
        return;
    }
    c->ev_read = event_new(c->base, c->fd, EV_READ | EV_PERSIST, on_socket, c);
    c->ev_write =
        event_new(c->base, c->fd, EV_WRITE | EV_PERSIST, on_socket, c);
    event_add(c->ev_read, NULL);
    update_events(c);
    log_info(c->module, "connecting to %s:%d", c->addr, c->port);
}

static void on_resolved(int result, struct evutil_addrinfo *res, void *arg)
{
    struct component *c = arg;

    c->dns_req = NULL;
    if (result == EVUTIL_EAI_CANCEL) {
        if (res)
            evutil_freeaddrinfo(res);
        return;
    }
    if (result != 0 || !res) {
        log_err(c->module, "cannot resolve %s: %s", c->host,
                evutil_gai_strerror(result));
        if (res)
            evutil_freeaddrinfo(res);
        c->state = CS_BACKOFF;
        schedule_retry(c);
        return;
    }
    const void *a =
        res->ai_family == AF_INET6
            ? (const void *)&((struct sockaddr_in6 *)res->ai_addr)->sin6_addr
            : (const void *)&((struct sockaddr_in *)res->ai_addr)->sin_addr;
    evutil_inet_ntop(res->ai_family, a, c->addr, sizeof(c->addr));
    evutil_freeaddrinfo(res);
    connect_now(c);
}

static void begin_attempt(struct component *c)
{
    struct evutil_addrinfo hints;

    if (c->stopping)
        return;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    /* numeric addresses need no resolver round trip */
    hints.ai_flags = EVUTIL_AI_NUMERICHOST;
    struct evutil_addrinfo *res = NULL;
    if (evutil_getaddrinfo(c->host, NULL, &hints, &res) == 0 && res) {
        evutil_freeaddrinfo(res);
        snprintf(c->addr, sizeof(c->addr), "%s", c->host);
        connect_now(c);
        return;
    }
    if (!c->dns)
        c->dns = evdns_base_new(c->base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
    if (!c->dns) {
        log_err(c->module, "cannot set up the DNS resolver");
        c->state = CS_BACKOFF;
        schedule_retry(c);
        return;
    }
    hints.ai_flags = 0;
    c->state = CS_RESOLVING;
    c->dns_req =
        evdns_getaddrinfo(c->dns, c->host, NULL, &hints, on_resolved, c);
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    begin_attempt(arg);
}

static void schedule_retry(struct component *c)
{
    uint64_t ms = backoff_ms(c->attempt, BACKOFF_BASE_MS, BACKOFF_CAP_MS);
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};

    if (c->attempt < 32)
        c->attempt++;
    c->state = CS_BACKOFF;
    log_info(c->module, "reconnecting in %llu ms", (unsigned long long)ms);
    evtimer_add(c->ev_retry, &tv);
}

static void on_done(evutil_socket_t fd, short what, void *arg)
{
    struct component *c = arg;
    (void)fd;
    (void)what;
    if (c->stop_done) {
        void (*fn)(void *) = c->stop_done;
        c->stop_done = NULL;
        fn(c->stop_arg);
    }
}

struct component *component_new(struct event_base *base, const char *host,
                                int port, const char *jid, const char *secret,
                                const struct component_cbs *cbs,
                                struct error *err)
{
    struct component *c = xcalloc(1, sizeof(*c));

    c->base = base;
    c->host = xstrdup(host);
    c->port = port;
    c->jid = xstrdup(jid);
    c->fd = -1;
    c->slot = -1;
    c->cbs = *cbs;
    snprintf(c->module, sizeof(c->module), "xmpp[%s]", jid);

    c->logger.handler = strophe_log;
    c->logger.userdata = c;
    c->ctx = xmpp_ctx_new(NULL, &c->logger);
    if (!c->ctx)
        goto fail;
    c->conn = xmpp_conn_new(c->ctx);
    if (!c->conn)
        goto fail;
    comp_register(c);
    xmpp_conn_set_jid(c->conn, jid);
    xmpp_conn_set_pass(c->conn, secret);
    xmpp_conn_set_sockopt_callback(c->conn, sockopt_cb);
    xmpp_handler_add(c->conn, stanza_handler, NULL, NULL, NULL, c);

    /*
     * libstrophe 0.12.2: allocate conn->sm_state through the client path
     * (see the prose block). The refused socket means nothing is sent and
     * the handler is never called.
     */
    c->refuse_socket = true;
    (void)xmpp_connect_client(c->conn, "127.0.0.1", 1, conn_handler, c);
    c->refuse_socket = false;
    if (!xmpp_conn_is_disconnected(c->conn)) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "libstrophe did not stay disconnected while preparing "
                  "the component connection");
        component_free(c);
        return NULL;
    }

    c->ev_tick = event_new(base, -1, EV_PERSIST, on_tick, c);
    c->ev_retry = evtimer_new(base, on_retry, c);
    c->ev_done = event_new(base, -1, 0, on_done, c);
    c->ev_flush = event_new(base, -1, 0, on_flush, c);
    struct timeval tick = {0, TICK_MS * 1000};
    event_add(c->ev_tick, &tick);
    return c;

fail:
    error_set(err, COND_INTERNAL_SERVER_ERROR, false,
              "cannot create the libstrophe connection for %s", jid);
    component_free(c);
    return NULL;
}

void component_start(struct component *c)
{
    if (c->state != CS_IDLE)
        return;
    c->stopping = false;
    begin_attempt(c);
}

bool component_up(const struct component *c)
{
    return c->state == CS_UP && !c->stopping;
}

const char *component_jid(const struct component *c)
{
    return c->jid;
}

size_t component_queue_len(const struct component *c)
{
    int n = xmpp_conn_send_queue_len(c->conn);
    return n > 0 ? (size_t)n : 0;
}

int component_send(struct component *c, const struct xnode *n,
                   struct error *err)
{
    if (!component_up(c)) {
        error_set(err, COND_REMOTE_SERVER_TIMEOUT, true,
                  "the XMPP stream of %s is down", c->jid);
        return -1;
    }
    size_t len;
    char *xml = xnode_render(n, &len);
    xmpp_send_raw(c->conn, xml, len);
    free(xml);
    if (!c->flush_pending) {
        c->flush_pending = true;
        event_active(c->ev_flush, EV_TIMEOUT, 0);
    }
    return 0;
}

void component_stop(struct component *c, void (*done)(void *), void *arg)
{
    c->stop_done = done;
    c->stop_arg = arg;
    c->stopping = true;
    evtimer_del(c->ev_retry);
    if (c->dns_req) {
        evdns_getaddrinfo_cancel(c->dns_req);
        c->dns_req = NULL;
    }
    if (c->fd >= 0 && !xmpp_conn_is_disconnected(c->conn)) {
        /* queues </stream:stream>; libstrophe closes the socket when the
         * server answers or after its disconnect timeout (run by the tick) */
        bool was_up = c->state == CS_UP;
        xmpp_disconnect(c->conn);
        c->state = CS_CLOSING;
        if (was_up && c->cbs.state)
            c->cbs.state(c->cbs.arg, false);
        update_events(c);
        return;
    }
    c->state = CS_IDLE;
    if (done)
        event_active(c->ev_done, 0, 0);
}

void component_free(struct component *c)
{
    if (!c)
        return;
    if (c->dns_req)
        evdns_getaddrinfo_cancel(c->dns_req);
    c->dns_req = NULL;
    /* releasing a live connection runs conn_handler once more: make it a
     * no-op before anything it touches goes away */
    c->cbs.stanza = NULL;
    c->cbs.state = NULL;
    c->stop_done = NULL;
    c->stopping = true;
    if (c->conn)
        xmpp_conn_release(c->conn);
    c->conn = NULL;
    drop_socket_events(c);
    if (c->ev_tick)
        event_free(c->ev_tick);
    if (c->ev_retry)
        event_free(c->ev_retry);
    if (c->ev_done)
        event_free(c->ev_done);
    if (c->ev_flush)
        event_free(c->ev_flush);
    if (c->slot >= 0)
        slot_release(c->slot);
    comp_unregister(c);
    if (c->ctx)
        xmpp_ctx_free(c->ctx);
    if (c->dns)
        evdns_base_free(c->dns, 0);
    free(c->host);
    free(c->jid);
    free(c);
}
