/*
 * store: owns the one hiredis async connection, every Redis key name and
 * every command postern sends (see store.h for the key layout).
 *
 * hiredis 0.14 has no timeouts and no reconnect, so this module adds:
 *  - a timer per command: at redis.timeout_ms the caller gets a temporary
 *    error (exactly once); the command stays queued inside hiredis and its
 *    late reply is dropped. If it is still unanswered after three times
 *    the timeout the link is declared dead and torn down.
 *  - a handshake (AUTH, SELECT, PING) under its own timer before the link
 *    counts as up; commands issued while it is not up fail at once,
 *    through a zero-delay event so no callback runs inside the call.
 *  - reconnect for ever with capped exponential backoff and jitter.
 *
 * hiredis frees its context itself after the disconnect callback and after
 * a failed connect; we only drop our pointer there and reconnect from a
 * timer. A command's bookkeeping (struct cmd) lives until both the caller
 * has been answered and hiredis has returned the privdata, so a late reply
 * never touches freed memory.
 *
 * Lua scripts go out as EVALSHA: every script of this file is loaded with
 * SCRIPT LOAD during the connection handshake (pipelined before the PING
 * that makes the link count as up), and its SHA-1 is computed here once.
 * A NOSCRIPT answer (SCRIPT FLUSH, a failover to a replica that never saw
 * the load) re-sends that one command as EVAL with the full text, which
 * also caches it again; a script that never ran has no effect, so the
 * re-send cannot apply anything twice. Only script commands keep a copy of
 * their arguments for that re-send.
 *
 * Never: block the loop, log a password, free the hiredis context from
 * inside one of its callbacks, or call a caller's callback twice.
 */
#include "store.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "crypto.h"
#include "log.h"

#define MOD "store"
#define RECONNECT_BASE_MS 100
#define RECONNECT_CAP_MS 5000
#define DEAD_LINK_FACTOR 3
#define MAX_ARGS 24

enum cmd_kind { K_INTERNAL, K_DONE, K_STR, K_LIST, K_ENTRIES };

struct cmd;
/* Turns a (non-error) reply into the caller's callback. */
typedef void finish_fn(struct cmd *c, redisReply *r);

struct cmd {
    struct store *s; /* NULL once store_free detached it */
    struct cmd *prev, *next;
    struct event *timer;
    enum cmd_kind kind;
    finish_fn *finish;
    union {
        store_done_fn *done;
        store_str_fn *str;
        store_list_fn *list;
        store_entries_fn *entries;
    } fn;
    void *arg;
    unsigned gen;     /* link generation the command was sent on */
    bool completed;   /* the caller has been answered */
    bool in_redis;    /* hiredis still holds this as privdata */
    bool timed_out;   /* first timer phase passed */
    bool deferred;    /* the timer delivers err (never sent) */
    bool deferred_ok; /* ... and it is a success (K_DONE only) */
    bool resent;      /* NOSCRIPT: already re-sent as EVAL */
    int script;       /* index of the script sent with EVALSHA, -1 if none */
    /* script commands only: the arguments, for a re-send as EVAL */
    int argc;
    const char **argv;
    size_t *lens;
    struct error err;
};

struct store {
    struct event_base *base;
    char *prefix;
    unsigned timeout_ms;
    /* parsed URL */
    char *host;
    int port;
    char *unix_path;
    char *user;
    char *password;
    int db;

    redisAsyncContext *ac;
    unsigned gen;
    bool up;
    bool closing;
    unsigned attempt;
    bool was_up;
    struct event *retry_ev;
    struct event *connect_ev;
    struct cmd *cmds;
    int depth;
    bool free_pending;
    store_state_fn *state_fn;
    void *state_arg;
};

static void store_destroy(struct store *s);
static void link_open(struct store *s);

/* ---- URL ---------------------------------------------------------------*/

static int parse_uint(const char *p, size_t n, long max, long *out)
{
    long v = 0;
    if (n == 0 || n > 10)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    if (v > max)
        return -1;
    *out = v;
    return 0;
}

static int parse_url(struct store *s, const char *url, struct error *err)
{
    long v;

    s->port = 6379;
    if (str_has_prefix(url, "unix:")) {
        const char *p = url + 5;
        const char *q;
        if (str_has_prefix(p, "//"))
            p += 2;
        q = strchr(p, '?');
        if (*p != '/' || (q && q == p))
            goto bad;
        s->unix_path = q ? xstrndup(p, (size_t)(q - p)) : xstrdup(p);
        if (q) {
            if (!str_has_prefix(q, "?db=") ||
                parse_uint(q + 4, strlen(q + 4), INT_MAX, &v) < 0)
                goto bad;
            s->db = (int)v;
        }
        return 0;
    }
    if (!str_has_prefix(url, "redis://"))
        goto bad;
    const char *p = url + 8;
    const char *end = p + strcspn(p, "/");
    const char *at = NULL;
    for (const char *x = p; x < end; x++)
        if (*x == '@')
            at = x;
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (!colon) /* "redis://password@host" is a common spelling */
            colon = p - 1;
        if (colon >= p) {
            s->user = pct_decode(p, (size_t)(colon - p), false);
            if (!s->user)
                goto bad;
            if (!*s->user) {
                free(s->user);
                s->user = NULL;
            }
        }
        s->password = pct_decode(colon + 1, (size_t)(at - colon - 1), false);
        if (!s->password)
            goto bad;
        p = at + 1;
    }
    const char *hend;
    if (*p == '[') {
        const char *rb = memchr(p, ']', (size_t)(end - p));
        if (!rb || rb == p + 1)
            goto bad;
        s->host = xstrndup(p + 1, (size_t)(rb - p - 1));
        hend = rb + 1;
        if (hend != end && *hend != ':')
            goto bad;
    } else {
        const char *colon = memchr(p, ':', (size_t)(end - p));
        hend = colon ? colon : end;
        if (hend == p)
            goto bad;
        s->host = xstrndup(p, (size_t)(hend - p));
    }
    if (hend < end && *hend == ':') {
        if (parse_uint(hend + 1, (size_t)(end - hend - 1), 65535, &v) < 0 ||
            v == 0)
            goto bad;
        s->port = (int)v;
    }
    if (*end == '/' && end[1]) {
        if (parse_uint(end + 1, strlen(end + 1), INT_MAX, &v) < 0)
            goto bad;
        s->db = (int)v;
    }
    return 0;
bad:
    /* never echo the URL: it may hold a password */
    error_set(err, COND_INTERNAL_SERVER_ERROR, false,
              "malformed Redis URL (expected redis://[[user]:password@]"
              "host[:port][/db] or unix:/path[?db=N])");
    return -1;
}

/* ---- commands ----------------------------------------------------------*/

static void cmd_unlink(struct cmd *c)
{
    struct store *s = c->s;
    if (!s)
        return;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->cmds = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    c->s = NULL;
}

static void cmd_free(struct cmd *c)
{
    cmd_unlink(c);
    if (c->timer)
        event_free(c->timer);
    free(c->argv); /* one block with lens and the bytes */
    free(c);
}

/* Answers the caller with an error (its callback shape decides the rest). */
static void cmd_answer_error(struct cmd *c, const struct error *e)
{
    switch (c->kind) {
    case K_INTERNAL:
        break;
    case K_DONE:
        c->fn.done(e, c->arg);
        break;
    case K_STR:
        c->fn.str(e, NULL, c->arg);
        break;
    case K_LIST:
        c->fn.list(e, 0, NULL, NULL, c->arg);
        break;
    case K_ENTRIES:
        c->fn.entries(e, NULL, 0, c->arg);
        break;
    }
}

/*
 * Marks c answered and stops its timer. After the caller's callback the
 * command may only be freed (when hiredis no longer holds it).
 */
static void cmd_complete_begin(struct cmd *c)
{
    c->completed = true;
    if (c->timer)
        event_del(c->timer);
}

static void cmd_timer_cb(evutil_socket_t fd, short what, void *arg);
static void redis_cb(redisAsyncContext *ac, void *reply, void *privdata);
static int script_find(const char *body);
static const char *script_sha(int i);
static void scripts_load(struct store *s);
static void finish_str(struct cmd *c, redisReply *r);
static void finish_entries(struct cmd *c, redisReply *r);

static struct cmd *cmd_new(struct store *s, enum cmd_kind kind,
                           finish_fn *finish, void *arg)
{
    struct cmd *c = xcalloc(1, sizeof(*c));
    c->s = s;
    c->kind = kind;
    c->finish = finish;
    c->arg = arg;
    c->script = -1;
    c->next = s->cmds;
    if (s->cmds)
        s->cmds->prev = c;
    s->cmds = c;
    if (kind != K_INTERNAL)
        c->timer = event_new(s->base, -1, 0, cmd_timer_cb, c);
    return c;
}

static struct cmd *new_done(struct store *s, finish_fn *finish,
                            store_done_fn *fn, void *arg)
{
    struct cmd *c = cmd_new(s, K_DONE, finish, arg);
    c->fn.done = fn;
    return c;
}

static struct cmd *new_str(struct store *s, store_str_fn *fn, void *arg)
{
    struct cmd *c = cmd_new(s, K_STR, finish_str, arg);
    c->fn.str = fn;
    return c;
}

static struct cmd *new_list(struct store *s, finish_fn *finish,
                            store_list_fn *fn, void *arg)
{
    struct cmd *c = cmd_new(s, K_LIST, finish, arg);
    c->fn.list = fn;
    return c;
}

static struct cmd *new_entries(struct store *s, store_entries_fn *fn, void *arg)
{
    struct cmd *c = cmd_new(s, K_ENTRIES, finish_entries, arg);
    c->fn.entries = fn;
    return c;
}

static void ms_to_tv(unsigned ms, struct timeval *tv)
{
    tv->tv_sec = (time_t)(ms / 1000);
    tv->tv_usec = (suseconds_t)((ms % 1000) * 1000);
}

static void cmd_defer_error(struct cmd *c, const char *why)
{
    struct timeval tv = {0, 0};
    error_set(&c->err, COND_INTERNAL_SERVER_ERROR, true, "Redis %s", why);
    c->deferred = true;
    event_add(c->timer, &tv);
}

static bool is_temporary_redis_error(const char *msg)
{
    static const char *const temp[] = {"LOADING",     "BUSY",      "TRYAGAIN",
                                       "MASTERDOWN",  "READONLY",  "OOM",
                                       "CLUSTERDOWN", "NOREPLICAS"};
    for (size_t i = 0; i < ARRAY_SIZE(temp); i++)
        if (str_has_prefix(msg, temp[i]))
            return true;
    return false;
}

static void link_drop(struct store *s, const char *why);

static void cmd_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct cmd *c = arg;
    struct store *s = c->s;
    struct error e;
    (void)fd;
    (void)what;

    if (c->deferred) {
        e = c->err;
        cmd_complete_begin(c);
        cmd_unlink(c);
        if (c->deferred_ok)
            c->fn.done(NULL, c->arg);
        else
            cmd_answer_error(c, &e);
        cmd_free(c);
        return;
    }
    if (!s)
        return;
    if (!c->timed_out) {
        struct timeval tv;
        c->timed_out = true;
        /* keep watching: a reply that never comes means a dead link */
        ms_to_tv(s->timeout_ms * (DEAD_LINK_FACTOR - 1), &tv);
        event_add(c->timer, &tv);
        if (!c->completed) {
            c->completed = true;
            error_set(&e, COND_REMOTE_SERVER_TIMEOUT, true,
                      "Redis did not answer within %u ms", s->timeout_ms);
            cmd_answer_error(c, &e);
        }
        return; /* c is still held by hiredis: no free here */
    }
    if (c->in_redis && c->gen == s->gen && s->ac)
        link_drop(s, "no reply for too long");
}

/* hiredis reply callback for every command. */
static void redis_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct cmd *c = privdata;
    redisReply *r = reply;
    struct error e;
    (void)ac;

    c->in_redis = false;
    if (c->completed || !c->s) {
        cmd_free(c);
        return;
    }
    if (r && r->type == REDIS_REPLY_ERROR && c->argv && !c->resent &&
        str_has_prefix(r->str, "NOSCRIPT") && c->s->ac == ac) {
        /* the script never ran: send its text once (Redis caches it);
         * c->argv holds the EVAL form */
        c->resent = true;
        if (redisAsyncCommandArgv(ac, redis_cb, c, c->argc, c->argv, c->lens) ==
            REDIS_OK) {
            c->in_redis = true;
            return;
        }
    }
    cmd_complete_begin(c);
    /* the caller may free the store from its callback: detach first */
    cmd_unlink(c);
    if (!r) {
        error_set(&e, COND_INTERNAL_SERVER_ERROR, true,
                  "Redis connection lost");
        cmd_answer_error(c, &e);
    } else if (r->type == REDIS_REPLY_ERROR) {
        error_set(&e, COND_INTERNAL_SERVER_ERROR,
                  is_temporary_redis_error(r->str), "Redis error: %.120s",
                  r->str);
        cmd_answer_error(c, &e);
    } else {
        c->finish(c, r);
    }
    cmd_free(c);
}

/*
 * Sends argv; on a down link the caller's callback gets a temporary error
 * from a zero-delay event.
 */
static void cmd_send(struct store *s, struct cmd *c, int argc,
                     const char **argv)
{
    size_t lens_small[MAX_ARGS] = {0};
    size_t *lens = lens_small;
    const char *sha_argv[MAX_ARGS];
    const char **send_argv = argv;
    struct timeval tv;
    int rc;

    if (!s->up || s->closing || !s->ac) {
        cmd_defer_error(c, "is unavailable");
        return;
    }
    if (argc > MAX_ARGS)
        lens = xcalloc((size_t)argc, sizeof(*lens));
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    if (argc >= 3 && argc <= MAX_ARGS && strcmp(argv[0], "EVAL") == 0 &&
        (c->script = script_find(argv[1])) >= 0) {
        /* one block: pointers, lengths, then the bytes (EVAL form) */
        size_t bytes = 0;
        char *p;
        for (int i = 0; i < argc; i++)
            bytes += lens[i] + 1;
        c->argv =
            xmalloc((size_t)argc * (sizeof(char *) + sizeof(size_t)) + bytes);
        c->lens = (size_t *)(void *)(c->argv + argc);
        p = (char *)(c->lens + argc);
        for (int i = 0; i < argc; i++) {
            memcpy(p, argv[i], lens[i]);
            p[lens[i]] = '\0';
            c->argv[i] = p;
            c->lens[i] = lens[i];
            p += lens[i] + 1;
        }
        c->argc = argc;
        memcpy(sha_argv, argv, (size_t)argc * sizeof(*argv));
        sha_argv[0] = "EVALSHA";
        sha_argv[1] = script_sha(c->script);
        lens[0] = 7;
        lens[1] = 40;
        send_argv = sha_argv;
    }
    rc = redisAsyncCommandArgv(s->ac, redis_cb, c, argc, send_argv, lens);
    if (lens != lens_small)
        free(lens);
    if (rc != REDIS_OK) {
        cmd_defer_error(c, "connection is closing");
        return;
    }
    c->in_redis = true;
    c->gen = s->gen;
    if (c->timer) {
        ms_to_tv(s->timeout_ms, &tv);
        event_add(c->timer, &tv);
    }
}

/* ---- link management ---------------------------------------------------*/

static void notify_state(struct store *s, bool up)
{
    if (s->state_fn)
        s->state_fn(up, s->state_arg);
}

static void schedule_reconnect(struct store *s)
{
    struct timeval tv;
    uint64_t d;

    if (s->closing)
        return;
    d = backoff_ms(s->attempt, RECONNECT_BASE_MS, RECONNECT_CAP_MS);
    if (s->attempt < 30)
        s->attempt++;
    ms_to_tv((unsigned)d, &tv);
    event_add(s->retry_ev, &tv);
    log_debug(MOD, "reconnecting in %u ms", (unsigned)d);
}

/* Marks the link down; returns true when that is a transition. */
static bool mark_down(struct store *s, const char *why)
{
    bool was = s->up;
    s->up = false;
    if (s->connect_ev)
        event_del(s->connect_ev);
    if (was)
        log_warn(MOD, "Redis link down: %s", why);
    else if (s->attempt == 0)
        log_warn(MOD, "cannot reach Redis: %s", why);
    else
        log_debug(MOD, "cannot reach Redis: %s", why);
    return was;
}

/*
 * Tears the link down from outside hiredis (a timer). hiredis answers
 * every queued command with a NULL reply from inside redisAsyncFree, and
 * those callbacks may free the store: hold it meanwhile.
 */
static void link_drop(struct store *s, const char *why)
{
    redisAsyncContext *ac = s->ac;
    bool was;

    if (!ac)
        return;
    s->ac = NULL;
    ac->data = NULL;
    s->gen++;
    was = mark_down(s, why);
    s->depth++;
    redisAsyncFree(ac);
    s->depth--;
    if (s->free_pending && s->depth == 0) {
        store_destroy(s);
        return;
    }
    schedule_reconnect(s);
    if (was)
        notify_state(s, false);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct store *s = ac->data;
    if (!s || status == REDIS_OK)
        return;
    /* hiredis frees ac right after this callback */
    s->ac = NULL;
    s->gen++;
    mark_down(s, ac->errstr[0] ? ac->errstr : "connect failed");
    schedule_reconnect(s);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct store *s = ac->data;
    bool was;
    (void)status;
    if (!s)
        return;
    /* hiredis frees ac right after this callback: only drop our pointer */
    s->ac = NULL;
    s->gen++;
    was = mark_down(s, ac->err ? ac->errstr : "connection closed");
    schedule_reconnect(s);
    if (was)
        notify_state(s, false);
}

static void handshake_reply(struct cmd *c, redisReply *r)
{
    (void)c;
    (void)r;
}

/* Internal command callback: handshake steps. */
static void hs_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct cmd *c = privdata;
    struct store *s = c->s;
    redisReply *r = reply;
    bool last = c->arg != NULL;
    unsigned gen = c->gen;

    cmd_free(c);
    if (!s || !r || gen != s->gen || s->ac != ac)
        return;
    if (r->type == REDIS_REPLY_ERROR) {
        if (!s->connect_ev || !event_pending(s->connect_ev, EV_TIMEOUT, NULL))
            return; /* an earlier step already failed */
        event_del(s->connect_ev);
        /* once per outage: a wrong password must not flood the log */
        if (s->attempt == 0)
            log_err(MOD, "Redis refused the connection setup: %.120s", r->str);
        else
            log_debug(MOD, "Redis refused the connection setup: %.120s",
                      r->str);
        /* after the remaining replies, hiredis closes and calls
         * on_disconnect, which reconnects with backoff */
        redisAsyncDisconnect(ac);
        return;
    }
    if (!last || !event_pending(s->connect_ev, EV_TIMEOUT, NULL))
        return;
    event_del(s->connect_ev);
    s->up = true;
    s->attempt = 0;
    if (s->unix_path)
        log_notice(MOD, "Redis link up (%s, db %d)", s->unix_path, s->db);
    else
        log_notice(MOD, "Redis link up (%s:%d, db %d)", s->host, s->port,
                   s->db);
    notify_state(s, true);
}

static void hs_send(struct store *s, int argc, const char **argv, bool last)
{
    size_t lens[MAX_ARGS];
    struct cmd *c =
        cmd_new(s, K_INTERNAL, handshake_reply, last ? (void *)s : NULL);
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    c->gen = s->gen;
    if (redisAsyncCommandArgv(s->ac, hs_cb, c, argc, argv, lens) != REDIS_OK)
        cmd_free(c);
    else
        c->in_redis = true;
}

static void connect_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    struct store *s = arg;
    (void)fd;
    (void)what;
    if (s->ac)
        link_drop(s, "connect or setup timed out");
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    link_open(arg);
}

static void link_open(struct store *s)
{
    redisAsyncContext *ac;
    struct timeval tv;
    char dbs[16];

    if (s->closing || s->ac)
        return;
    /* redisAsyncConnect resolves the host name with getaddrinfo(); use an
     * IP address or "localhost" so that never waits on DNS */
    if (s->unix_path)
        ac = redisAsyncConnectUnix(s->unix_path);
    else
        ac = redisAsyncConnect(s->host, s->port);
    if (!ac)
        fatal("out of memory (hiredis)");
    if (ac->err) {
        mark_down(s, ac->errstr);
        redisAsyncFree(ac);
        schedule_reconnect(s);
        return;
    }
    ac->data = s;
    if (redisLibeventAttach(ac, s->base) != REDIS_OK) {
        redisAsyncFree(ac);
        mark_down(s, "cannot attach to the event loop");
        schedule_reconnect(s);
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    s->ac = ac;
    s->gen++;
    ms_to_tv(s->timeout_ms, &tv);
    event_add(s->connect_ev, &tv);

    /* hiredis queues these until the socket connects */
    if (s->password) {
        if (s->user) {
            const char *argv[] = {"AUTH", s->user, s->password};
            hs_send(s, 3, argv, false);
        } else {
            const char *argv[] = {"AUTH", s->password};
            hs_send(s, 2, argv, false);
        }
    }
    if (s->db) {
        snprintf(dbs, sizeof(dbs), "%d", s->db);
        const char *argv[] = {"SELECT", dbs};
        hs_send(s, 2, argv, false);
    }
    if (s->ac)
        scripts_load(s);
    const char *argv[] = {"PING"};
    if (s->ac)
        hs_send(s, 1, argv, true);
}

/* ---- life cycle --------------------------------------------------------*/

struct store *store_new(struct event_base *base, const char *url,
                        const char *prefix, unsigned timeout_ms,
                        struct error *err)
{
    struct store *s = xcalloc(1, sizeof(*s));

    s->base = base;
    s->prefix = xstrdup(prefix && *prefix ? prefix : "postern");
    s->timeout_ms = timeout_ms ? timeout_ms : 2000;
    if (parse_url(s, url ? url : "", err) < 0) {
        store_destroy(s);
        return NULL;
    }
    s->retry_ev = event_new(base, -1, 0, retry_cb, s);
    s->connect_ev = event_new(base, -1, 0, connect_timeout_cb, s);
    link_open(s);
    return s;
}

static void store_destroy(struct store *s)
{
    struct error e;

    s->closing = true;
    s->up = false;
    error_set(&e, COND_INTERNAL_SERVER_ERROR, true, "Redis client closed");
    /* answer everything still waiting; a callback may add commands, which
     * land at the head of the list and are answered by the next pass */
    for (;;) {
        struct cmd *c = s->cmds;
        while (c && c->completed)
            c = c->next;
        if (!c)
            break;
        cmd_complete_begin(c);
        cmd_answer_error(c, &e);
    }
    if (s->ac) {
        redisAsyncContext *ac = s->ac;
        s->ac = NULL;
        ac->data = NULL;
        /* every command is answered: NULL replies just free bookkeeping */
        redisAsyncFree(ac);
    }
    while (s->cmds) {
        struct cmd *c = s->cmds;
        if (c->in_redis) {
            /* hiredis defers its free while inside its own callback; the
             * command is freed when hiredis finally hands it back */
            cmd_unlink(c);
            if (c->timer) {
                event_free(c->timer);
                c->timer = NULL;
            }
        } else {
            cmd_free(c);
        }
    }
    if (s->retry_ev)
        event_free(s->retry_ev);
    if (s->connect_ev)
        event_free(s->connect_ev);
    free(s->prefix);
    free(s->host);
    free(s->unix_path);
    free(s->user);
    if (s->password)
        explicit_bzero(s->password, strlen(s->password));
    free(s->password);
    free(s);
}

void store_free(struct store *s)
{
    if (!s)
        return;
    if (s->depth > 0) {
        s->free_pending = true;
        s->closing = true;
        return;
    }
    store_destroy(s);
}

bool store_connected(const struct store *s)
{
    return s->up;
}

void store_on_state(struct store *s, store_state_fn *fn, void *arg)
{
    s->state_fn = fn;
    s->state_arg = arg;
}

const char *store_prefix(const struct store *s)
{
    return s->prefix;
}

/* ---- reply helpers -----------------------------------------------------*/

static void finish_done(struct cmd *c, redisReply *r)
{
    (void)r;
    c->fn.done(NULL, c->arg);
}

static void finish_str(struct cmd *c, redisReply *r)
{
    char num[32];
    const char *v = NULL;

    if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) {
        v = r->str;
    } else if (r->type == REDIS_REPLY_INTEGER) {
        snprintf(num, sizeof(num), "%lld", r->integer);
        v = num;
    }
    c->fn.str(NULL, v, c->arg);
}

static void answer_bad_reply(struct cmd *c)
{
    struct error e;
    error_set(&e, COND_INTERNAL_SERVER_ERROR, false,
              "unexpected reply from Redis");
    cmd_answer_error(c, &e);
}

/* Array of strings: keys only (SMEMBERS) or key/value pairs (HGETALL). */
static void finish_list_common(struct cmd *c, redisReply *r, bool pairs)
{
    size_t n, step = pairs ? 2 : 1;
    char **keys, **vals = NULL;

    if (r->type != REDIS_REPLY_ARRAY || r->elements % step) {
        answer_bad_reply(c);
        return;
    }
    n = r->elements / step;
    keys = xcalloc(n + 1, sizeof(*keys));
    if (pairs)
        vals = xcalloc(n + 1, sizeof(*vals));
    for (size_t i = 0; i < n; i++) {
        redisReply *k = r->element[i * step];
        if (k->type != REDIS_REPLY_STRING ||
            (pairs && r->element[i * 2 + 1]->type != REDIS_REPLY_STRING)) {
            free(keys);
            free(vals);
            answer_bad_reply(c);
            return;
        }
        keys[i] = k->str;
        if (pairs)
            vals[i] = r->element[i * 2 + 1]->str;
    }
    c->fn.list(NULL, n, keys, vals, c->arg);
    free(keys);
    free(vals);
}

static void finish_pairs(struct cmd *c, redisReply *r)
{
    finish_list_common(c, r, true);
}

static void finish_keys(struct cmd *c, redisReply *r)
{
    finish_list_common(c, r, false);
}

/*
 * Flat triples id, payload, deliveries from the read scripts, or
 * quadruples with the owner (string, nil, or -1 = not looked up).
 */
static void finish_entries_n(struct cmd *c, redisReply *r, size_t stride)
{
    struct store_entry *v;
    size_t n;

    if (r->type == REDIS_REPLY_NIL) {
        c->fn.entries(NULL, NULL, 0, c->arg);
        return;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements % stride) {
        answer_bad_reply(c);
        return;
    }
    n = r->elements / stride;
    v = xcalloc(n + 1, sizeof(*v));
    for (size_t i = 0; i < n; i++) {
        redisReply *id = r->element[i * stride],
                   *p = r->element[i * stride + 1],
                   *d = r->element[i * stride + 2];
        if (id->type != REDIS_REPLY_STRING || p->type != REDIS_REPLY_STRING ||
            d->type != REDIS_REPLY_INTEGER) {
            free(v);
            answer_bad_reply(c);
            return;
        }
        v[i].id = id->str;
        v[i].payload = p->str;
        v[i].deliveries =
            d->integer < 1
                ? 1
                : (d->integer > UINT_MAX ? UINT_MAX : (unsigned)d->integer);
        if (stride == 4) {
            redisReply *o = r->element[i * stride + 3];
            if (o->type == REDIS_REPLY_STRING) {
                v[i].owner_checked = true;
                v[i].owner = o->str;
            } else if (o->type == REDIS_REPLY_NIL) {
                v[i].owner_checked = true;
            }
        }
    }
    c->fn.entries(NULL, v, n, c->arg);
    free(v);
}

static void finish_entries(struct cmd *c, redisReply *r)
{
    finish_entries_n(c, r, 3);
}

static void finish_entries4(struct cmd *c, redisReply *r)
{
    finish_entries_n(c, r, 4);
}

/* Reg set script: 1 bound, 0 conflict. */
static void finish_reg_set(struct cmd *c, redisReply *r)
{
    struct error e;
    if (r->type != REDIS_REPLY_INTEGER) {
        answer_bad_reply(c);
        return;
    }
    if (r->integer == 0) {
        error_set(&e, COND_CONFLICT, false,
                  "that address is registered to another JID");
        c->fn.done(&e, c->arg);
        return;
    }
    c->fn.done(NULL, c->arg);
}

/* ---- commands ----------------------------------------------------------*/

void store_ping(struct store *s, store_done_fn *fn, void *arg)
{
    const char *argv[] = {"PING"};
    cmd_send(s, new_done(s, finish_done, fn, arg), 1, argv);
}

static char *reg_key(const struct store *s, const char *gw, const char *dir)
{
    return xasprintf("%s:reg:%s:%s", s->prefix, gw, dir);
}

static char *contacts_key(const struct store *s, const char *gw,
                          const char *jid)
{
    return xasprintf("%s:contacts:%s:%s", s->prefix, gw, jid);
}

static char *stream_key(const struct store *s, const char *name)
{
    return xasprintf("%s:stream:%s", s->prefix, name);
}

void store_reg_get_addr(struct store *s, const char *gw, const char *bare_jid,
                        store_str_fn *fn, void *arg)
{
    char *k = reg_key(s, gw, "j2a");
    const char *argv[] = {"HGET", k, bare_jid};
    cmd_send(s, new_str(s, fn, arg), 3, argv);
    free(k);
}

void store_reg_get_jid(struct store *s, const char *gw, const char *addr,
                       store_str_fn *fn, void *arg)
{
    char *k = reg_key(s, gw, "a2j");
    const char *argv[] = {"HGET", k, addr};
    cmd_send(s, new_str(s, fn, arg), 3, argv);
    free(k);
}

/* KEYS j2a a2j; ARGV jid addr. Both directions change together or not. */
static const char reg_set_lua[] =
    "local owner = redis.call('HGET', KEYS[2], ARGV[2])\n"
    "if owner and owner ~= ARGV[1] then return 0 end\n"
    "local old = redis.call('HGET', KEYS[1], ARGV[1])\n"
    "if old and old ~= ARGV[2] and "
    "redis.call('HGET', KEYS[2], old) == ARGV[1] then\n"
    "  redis.call('HDEL', KEYS[2], old)\n"
    "end\n"
    "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])\n"
    "redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])\n"
    "return 1\n";

void store_reg_set(struct store *s, const char *gw, const char *bare_jid,
                   const char *addr, store_done_fn *fn, void *arg)
{
    char *j2a = reg_key(s, gw, "j2a"), *a2j = reg_key(s, gw, "a2j");
    const char *argv[] = {"EVAL", reg_set_lua, "2", j2a, a2j, bare_jid, addr};
    cmd_send(s, new_done(s, finish_reg_set, fn, arg), 7, argv);
    free(j2a);
    free(a2j);
}

/* KEYS j2a a2j contacts; ARGV jid. Returns the removed address or nil. */
static const char reg_remove_lua[] =
    "local addr = redis.call('HGET', KEYS[1], ARGV[1])\n"
    "redis.call('DEL', KEYS[3])\n"
    "if not addr then return false end\n"
    "redis.call('HDEL', KEYS[1], ARGV[1])\n"
    "if redis.call('HGET', KEYS[2], addr) == ARGV[1] then\n"
    "  redis.call('HDEL', KEYS[2], addr)\n"
    "end\n"
    "return addr\n";

void store_reg_remove(struct store *s, const char *gw, const char *bare_jid,
                      store_str_fn *fn, void *arg)
{
    char *j2a = reg_key(s, gw, "j2a"), *a2j = reg_key(s, gw, "a2j");
    char *ck = contacts_key(s, gw, bare_jid);
    const char *argv[] = {"EVAL", reg_remove_lua, "3", j2a, a2j, ck, bare_jid};
    cmd_send(s, new_str(s, fn, arg), 7, argv);
    free(j2a);
    free(a2j);
    free(ck);
}

void store_reg_list(struct store *s, const char *gw, store_list_fn *fn,
                    void *arg)
{
    char *k = reg_key(s, gw, "j2a");
    const char *argv[] = {"HGETALL", k};
    cmd_send(s, new_list(s, finish_pairs, fn, arg), 2, argv);
    free(k);
}

void store_contact_add(struct store *s, const char *gw, const char *bare_jid,
                       const char *contact_node, store_done_fn *fn, void *arg)
{
    char *k = contacts_key(s, gw, bare_jid);
    const char *argv[] = {"SADD", k, contact_node};
    cmd_send(s, new_done(s, finish_done, fn, arg), 3, argv);
    free(k);
}

void store_contact_remove(struct store *s, const char *gw, const char *bare_jid,
                          const char *contact_node, store_done_fn *fn,
                          void *arg)
{
    char *k = contacts_key(s, gw, bare_jid);
    const char *argv[] = {"SREM", k, contact_node};
    cmd_send(s, new_done(s, finish_done, fn, arg), 3, argv);
    free(k);
}

void store_contact_list(struct store *s, const char *gw, const char *bare_jid,
                        store_list_fn *fn, void *arg)
{
    char *k = contacts_key(s, gw, bare_jid);
    const char *argv[] = {"SMEMBERS", k};
    cmd_send(s, new_list(s, finish_keys, fn, arg), 2, argv);
    free(k);
}

/*
 * KEYS stream seen; ARGV payload ttl sender. nil when seen before. An
 * empty sender adds no "k" field.
 */
static const char stream_add_lua[] =
    "if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then\n"
    "  return false\n"
    "end\n"
    "if ARGV[3] ~= '' then\n"
    "  return redis.call('XADD', KEYS[1], '*', 'p', ARGV[1], 'k', ARGV[3])\n"
    "end\n"
    "return redis.call('XADD', KEYS[1], '*', 'p', ARGV[1])\n";

void store_stream_add_sender(struct store *s, const char *name,
                             const char *dedupe_id, unsigned dedupe_ttl_s,
                             const char *payload, const char *sender,
                             store_str_fn *fn, void *arg)
{
    char *k = stream_key(s, name);
    struct cmd *c = new_str(s, fn, arg);

    if (sender && !*sender)
        sender = NULL;
    if (dedupe_id) {
        char *seen = xasprintf("%s:seen:%s:%s", s->prefix, name, dedupe_id);
        char ttl[16];
        snprintf(ttl, sizeof(ttl), "%u", dedupe_ttl_s ? dedupe_ttl_s : 1);
        const char *argv[] = {
            "EVAL", stream_add_lua, "2", k,
            seen,   payload,        ttl, sender ? sender : ""};
        cmd_send(s, c, 8, argv);
        free(seen);
    } else if (sender) {
        const char *argv[] = {"XADD", k, "*", "p", payload, "k", sender};
        cmd_send(s, c, 7, argv);
    } else {
        const char *argv[] = {"XADD", k, "*", "p", payload};
        cmd_send(s, c, 5, argv);
    }
    free(k);
}

void store_stream_add(struct store *s, const char *name, const char *dedupe_id,
                      unsigned dedupe_ttl_s, const char *payload,
                      store_str_fn *fn, void *arg)
{
    store_stream_add_sender(s, name, dedupe_id, dedupe_ttl_s, payload, NULL, fn,
                            arg);
}

/*
 * Shared Lua: the "p" field of an entry's field list ("" when missing,
 * which the reader treats as malformed and acknowledges).
 */
#define LUA_FIELD_P                                                            \
    "local function pfield(f)\n"                                               \
    "  if type(f) ~= 'table' then return '' end\n"                             \
    "  for i = 1, #f - 1, 2 do\n"                                              \
    "    if f[i] == 'p' then return f[i + 1] end\n"                            \
    "  end\n"                                                                  \
    "  return ''\n"                                                            \
    "end\n"

/*
 * KEYS stream; ARGV group consumer count min_idle. XAUTOCLAIM (Redis 7
 * returns cursor, entries, deleted ids; 6.2 has no third element and
 * shows deleted entries as nil) then XREADGROUP >. The delivery count of
 * a reclaimed entry comes from XPENDING right after the claim (which
 * already counted it). No BLOCK: the caller polls.
 */
static const char stream_read_lua[] = LUA_FIELD_P
    "local key, g, c = KEYS[1], ARGV[1], ARGV[2]\n"
    "local n = tonumber(ARGV[3])\n"
    "local out = {}\n"
    "local got = 0\n"
    "local r = redis.pcall('XAUTOCLAIM', key, g, c, ARGV[4], '0-0',\n"
    "                      'COUNT', n)\n"
    "if type(r) == 'table' and r.err then\n"
    "  if not string.find(r.err, 'NOGROUP') then return r end\n"
    "  local x = redis.pcall('XGROUP', 'CREATE', key, g, '0', 'MKSTREAM')\n"
    "  if type(x) == 'table' and x.err and\n"
    "     not string.find(x.err, 'BUSYGROUP') then return x end\n"
    "  r = {'0-0', {}}\n"
    "end\n"
    "for _, e in ipairs(r[2]) do\n"
    "  if type(e) == 'table' and e[1] then\n"
    "    local d = 1\n"
    "    local pe = redis.call('XPENDING', key, g, e[1], e[1], 1)\n"
    "    if pe[1] then d = pe[1][4] end\n"
    "    out[#out + 1] = e[1]\n"
    "    out[#out + 1] = pfield(e[2])\n"
    "    out[#out + 1] = d\n"
    "    got = got + 1\n"
    "  end\n"
    "end\n"
    "if got < n then\n"
    "  local x = redis.call('XREADGROUP', 'GROUP', g, c, 'COUNT', n - got,\n"
    "                       'STREAMS', key, '>')\n"
    "  if x and x[1] then\n"
    "    for _, e in ipairs(x[1][2]) do\n"
    "      out[#out + 1] = e[1]\n"
    "      out[#out + 1] = pfield(e[2])\n"
    "      out[#out + 1] = 1\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return out\n";

void store_stream_read(struct store *s, const char *name, const char *group,
                       const char *consumer, unsigned count,
                       unsigned min_idle_ms, store_entries_fn *fn, void *arg)
{
    char *k = stream_key(s, name);
    char cnt[16], idle[16];
    snprintf(cnt, sizeof(cnt), "%u", count ? count : 1);
    snprintf(idle, sizeof(idle), "%u", min_idle_ms);
    const char *argv[] = {"EVAL", stream_read_lua, "1", k,
                          group,  consumer,        cnt, idle};
    cmd_send(s, new_entries(s, fn, arg), 8, argv);
    free(k);
}

/*
 * KEYS stream; ARGV group consumer count min_idle. This consumer's own
 * pending entries idle for at least min_idle, claimed again (XCLAIM resets
 * the idle time, so a peer's XAUTOCLAIM cannot take them meanwhile, and
 * counts the delivery). Entries deleted meanwhile are dropped from the PEL.
 */
static const char stream_read_own_lua[] = LUA_FIELD_P
    "local key, g, c = KEYS[1], ARGV[1], ARGV[2]\n"
    "local out = {}\n"
    "local p = redis.pcall('XPENDING', key, g, 'IDLE', ARGV[4], '-', '+',\n"
    "                      tonumber(ARGV[3]), c)\n"
    "if type(p) == 'table' and p.err then\n"
    "  if string.find(p.err, 'NOGROUP') then return out end\n"
    "  return p\n"
    "end\n"
    "for _, pe in ipairs(p) do\n"
    "  local cl = redis.call('XCLAIM', key, g, c, 0, pe[1])\n"
    "  if type(cl[1]) == 'table' and cl[1][1] then\n"
    "    out[#out + 1] = cl[1][1]\n"
    "    out[#out + 1] = pfield(cl[1][2])\n"
    "    out[#out + 1] = pe[4] + 1\n"
    "  else\n"
    "    redis.call('XACK', key, g, pe[1])\n"
    "  end\n"
    "end\n"
    "return out\n";

void store_stream_read_own(struct store *s, const char *name, const char *group,
                           const char *consumer, unsigned count,
                           unsigned min_idle_ms, store_entries_fn *fn,
                           void *arg)
{
    char *k = stream_key(s, name);
    char cnt[16], idle[16];
    snprintf(cnt, sizeof(cnt), "%u", count ? count : 1);
    snprintf(idle, sizeof(idle), "%u", min_idle_ms);
    const char *argv[] = {
        "EVAL", stream_read_own_lua, "1", k, group, consumer, cnt, idle};
    cmd_send(s, new_entries(s, fn, arg), 8, argv);
    free(k);
}

static const char stream_ack_lua[] =
    "redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])\n"
    "return redis.call('XDEL', KEYS[1], ARGV[2])\n";

void store_stream_ack(struct store *s, const char *name, const char *group,
                      const char *id, store_done_fn *fn, void *arg)
{
    char *k = stream_key(s, name);
    const char *argv[] = {"EVAL", stream_ack_lua, "1", k, group, id};
    cmd_send(s, new_done(s, finish_done, fn, arg), 6, argv);
    free(k);
}

/*
 * KEYS stream; ARGV group ids... One XACK and one XDEL for all of them.
 */
static const char stream_ack_many_lua[] =
    "redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))\n"
    "return redis.call('XDEL', KEYS[1], unpack(ARGV, 2))\n";

void store_stream_ack_many(struct store *s, const char *name, const char *group,
                           const char *const *ids, size_t n, store_done_fn *fn,
                           void *arg)
{
    char *k;
    const char **argv;
    struct cmd *c = new_done(s, finish_done, fn, arg);

    if (n == 0) {
        /* nothing to send, still answered from the loop */
        struct timeval tv = {0, 0};
        c->deferred = true;
        c->deferred_ok = true;
        event_add(c->timer, &tv);
        return;
    }
    k = stream_key(s, name);
    argv = xcalloc(n + 5, sizeof(*argv));
    argv[0] = "EVAL";
    argv[1] = stream_ack_many_lua;
    argv[2] = "1";
    argv[3] = k;
    argv[4] = group;
    for (size_t i = 0; i < n; i++)
        argv[5 + i] = ids[i];
    cmd_send(s, c, (int)(n + 5), argv);
    free(argv);
    free(k);
}

/*
 * KEYS stream j2a; ARGV group consumer count min_idle claim lookup.
 * Like stream_read_lua (claim "1": XAUTOCLAIM first), returning
 * quadruples id, payload, deliveries, owner: with lookup "1" and a "k"
 * field in the entry, owner is HGET j2a k (nil when not registered);
 * otherwise -1 (not looked up).
 */
static const char stream_read_ex_lua[] =
    "local key, g, c = KEYS[1], ARGV[1], ARGV[2]\n"
    "local n = tonumber(ARGV[3])\n"
    "local lookup = ARGV[6] == '1'\n"
    "local out = {}\n"
    "local got = 0\n"
    "local function add(e, d)\n"
    "  local p, k = '', false\n"
    "  local f = e[2]\n"
    "  if type(f) == 'table' then\n"
    "    for i = 1, #f - 1, 2 do\n"
    "      if f[i] == 'p' then p = f[i + 1]\n"
    "      elseif f[i] == 'k' then k = f[i + 1] end\n"
    "    end\n"
    "  end\n"
    "  out[#out + 1] = e[1]\n"
    "  out[#out + 1] = p\n"
    "  out[#out + 1] = d\n"
    "  if lookup and k then\n"
    "    out[#out + 1] = redis.call('HGET', KEYS[2], k)\n"
    "  else\n"
    "    out[#out + 1] = -1\n"
    "  end\n"
    "  got = got + 1\n"
    "end\n"
    "local function mkgroup()\n"
    "  local x = redis.pcall('XGROUP', 'CREATE', key, g, '0', 'MKSTREAM')\n"
    "  if type(x) == 'table' and x.err and\n"
    "     not string.find(x.err, 'BUSYGROUP') then return x end\n"
    "  return nil\n"
    "end\n"
    "if ARGV[5] == '1' then\n"
    "  local r = redis.pcall('XAUTOCLAIM', key, g, c, ARGV[4], '0-0',\n"
    "                        'COUNT', n)\n"
    "  if type(r) == 'table' and r.err then\n"
    "    if not string.find(r.err, 'NOGROUP') then return r end\n"
    "    local x = mkgroup()\n"
    "    if x then return x end\n"
    "    r = {'0-0', {}}\n"
    "  end\n"
    "  for _, e in ipairs(r[2]) do\n"
    "    if type(e) == 'table' and e[1] then\n"
    "      local d = 1\n"
    "      local pe = redis.call('XPENDING', key, g, e[1], e[1], 1)\n"
    "      if pe[1] then d = pe[1][4] end\n"
    "      add(e, d)\n"
    "    end\n"
    "  end\n"
    "end\n"
    "if got < n then\n"
    "  local x = redis.pcall('XREADGROUP', 'GROUP', g, c, 'COUNT', n - got,\n"
    "                        'STREAMS', key, '>')\n"
    "  if type(x) == 'table' and x.err then\n"
    "    if not string.find(x.err, 'NOGROUP') then return x end\n"
    "    local y = mkgroup()\n"
    "    if y then return y end\n"
    "    x = redis.call('XREADGROUP', 'GROUP', g, c, 'COUNT', n - got,\n"
    "                   'STREAMS', key, '>')\n"
    "  end\n"
    "  if x and x[1] then\n"
    "    for _, e in ipairs(x[1][2]) do add(e, 1) end\n"
    "  end\n"
    "end\n"
    "return out\n";

void store_stream_read_ex(struct store *s, const char *name,
                          const struct store_read *rd, store_entries_fn *fn,
                          void *arg)
{
    char *k = stream_key(s, name);
    char *j2a = rd->owner_gw ? reg_key(s, rd->owner_gw, "j2a")
                             : xasprintf("%s:reg:-", s->prefix);
    char cnt[16], idle[16];
    struct cmd *c = new_entries(s, fn, arg);

    c->finish = finish_entries4;
    snprintf(cnt, sizeof(cnt), "%u", rd->count ? rd->count : 1);
    snprintf(idle, sizeof(idle), "%u", rd->min_idle_ms);
    const char *argv[] = {"EVAL",
                          stream_read_ex_lua,
                          "2",
                          k,
                          j2a,
                          rd->group,
                          rd->consumer,
                          cnt,
                          idle,
                          rd->claim ? "1" : "0",
                          rd->owner_gw ? "1" : "0"};
    cmd_send(s, c, (int)ARRAY_SIZE(argv), argv);
    free(k);
    free(j2a);
}

void store_stream_len(struct store *s, const char *name, store_str_fn *fn,
                      void *arg)
{
    char *k = stream_key(s, name);
    const char *argv[] = {"XLEN", k};
    cmd_send(s, new_str(s, fn, arg), 2, argv);
    free(k);
}

/*
 * KEYS stream rcpt retry dead notice; ARGV group consumer id check_owner
 * rcpt_value ttl due retry_payload dead_payload notice_payload. An empty
 * value skips its action. The owner check keeps a process whose entry
 * was reclaimed (it stalled past the claim idle) from scheduling a retry
 * or a notice for an entry that another process now sends.
 */
static const char stream_finish_lua[] =
    "local s, g, c, id = KEYS[1], ARGV[1], ARGV[2], ARGV[3]\n"
    "if ARGV[4] == '1' then\n"
    "  local pe = redis.pcall('XPENDING', s, g, id, id, 1)\n"
    "  if type(pe) ~= 'table' or pe.err or not pe[1] or\n"
    "     pe[1][2] ~= c then return 0 end\n"
    "end\n"
    "redis.pcall('XACK', s, g, id)\n"
    "redis.call('XDEL', s, id)\n"
    "if ARGV[5] ~= '' then\n"
    "  redis.call('SET', KEYS[2], ARGV[5], 'EX', ARGV[6])\n"
    "end\n"
    "if ARGV[8] ~= '' then redis.call('ZADD', KEYS[3], ARGV[7], ARGV[8]) end\n"
    "if ARGV[9] ~= '' then redis.call('XADD', KEYS[4], '*', 'p', ARGV[9]) end\n"
    "if ARGV[10] ~= '' then\n"
    "  redis.call('XADD', KEYS[5], '*', 'p', ARGV[10])\n"
    "end\n"
    "return 1\n";

static char *retry_key(const struct store *s, const char *name)
{
    return xasprintf("%s:retry:%s", s->prefix, name);
}

static char *rcpt_key(const struct store *s, const char *gw, const char *id)
{
    return xasprintf("%s:rcpt:%s:%s", s->prefix, gw, id);
}

static const char *or_empty(const char *v)
{
    return v ? v : "";
}

void store_stream_finish(struct store *s, const char *name, const char *group,
                         const char *consumer, const char *id,
                         const struct store_finish *f, store_str_fn *fn,
                         void *arg)
{
    bool rcpt = f->receipt_gw && f->receipt_id && f->receipt_value;
    char *k = stream_key(s, name);
    char *rk = rcpt ? rcpt_key(s, f->receipt_gw, f->receipt_id)
                    : xasprintf("%s:rcpt:-", s->prefix);
    char *zk = retry_key(s, name);
    char *dk = stream_key(s, f->dead_name ? f->dead_name : "-");
    char *nk = stream_key(s, f->notice_name ? f->notice_name : "-");
    char ttl[16], due[24];

    snprintf(ttl, sizeof(ttl), "%u", f->receipt_ttl_s ? f->receipt_ttl_s : 1);
    snprintf(due, sizeof(due), "%llu", (unsigned long long)f->retry_due_ms);
    const char *argv[] = {
        "EVAL",
        stream_finish_lua,
        "5",
        k,
        rk,
        zk,
        dk,
        nk,
        group,
        consumer,
        id,
        f->check_owner ? "1" : "0",
        rcpt ? f->receipt_value : "",
        ttl,
        due,
        or_empty(f->retry_payload),
        f->dead_name ? or_empty(f->dead_payload) : "",
        f->notice_name ? or_empty(f->notice_payload) : "",
    };
    cmd_send(s, new_str(s, fn, arg), (int)ARRAY_SIZE(argv), argv);
    free(k);
    free(rk);
    free(zk);
    free(dk);
    free(nk);
}

/* KEYS retry stream; ARGV now count. */
static const char retry_move_lua[] =
    "local items = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1],\n"
    "                         'LIMIT', 0, tonumber(ARGV[2]))\n"
    "for _, p in ipairs(items) do\n"
    "  redis.call('XADD', KEYS[2], '*', 'p', p)\n"
    "  redis.call('ZREM', KEYS[1], p)\n"
    "end\n"
    "return #items\n";

void store_retry_move(struct store *s, const char *name, uint64_t now_unix_ms,
                      unsigned count, store_str_fn *fn, void *arg)
{
    char *zk = retry_key(s, name), *k = stream_key(s, name);
    char now[24], cnt[16];

    snprintf(now, sizeof(now), "%llu", (unsigned long long)now_unix_ms);
    snprintf(cnt, sizeof(cnt), "%u", count ? count : 1);
    const char *argv[] = {"EVAL", retry_move_lua, "2", zk, k, now, cnt};
    cmd_send(s, new_str(s, fn, arg), 7, argv);
    free(zk);
    free(k);
}

void store_retry_len(struct store *s, const char *name, store_str_fn *fn,
                     void *arg)
{
    char *zk = retry_key(s, name);
    const char *argv[] = {"ZCARD", zk};
    cmd_send(s, new_str(s, fn, arg), 2, argv);
    free(zk);
}

/* KEYS stream; ARGV group consumer ids. */
static const char stream_touch_lua[] =
    "for id in string.gmatch(ARGV[3], '[^,]+') do\n"
    "  local pe = redis.pcall('XPENDING', KEYS[1], ARGV[1], id, id, 1)\n"
    "  if type(pe) == 'table' and not pe.err and pe[1] and\n"
    "     pe[1][2] == ARGV[2] then\n"
    "    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'JUSTID')\n"
    "  end\n"
    "end\n"
    "return 1\n";

void store_stream_touch(struct store *s, const char *name, const char *group,
                        const char *consumer, const char *ids_csv,
                        store_done_fn *fn, void *arg)
{
    char *k = stream_key(s, name);
    const char *argv[] = {"EVAL", stream_touch_lua, "1",    k,
                          group,  consumer,         ids_csv};
    cmd_send(s, new_done(s, finish_done, fn, arg), 7, argv);
    free(k);
}

/* KEYS stream; ARGV start count. Triples like the read scripts. */
static const char stream_range_lua[] = LUA_FIELD_P
    "local out = {}\n"
    "local r = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT',\n"
    "                     tonumber(ARGV[2]))\n"
    "for _, e in ipairs(r) do\n"
    "  out[#out + 1] = e[1]\n"
    "  out[#out + 1] = pfield(e[2])\n"
    "  out[#out + 1] = 0\n"
    "end\n"
    "return out\n";

void store_stream_range(struct store *s, const char *name, const char *start,
                        unsigned count, store_entries_fn *fn, void *arg)
{
    char *k = stream_key(s, name);
    char cnt[16];

    snprintf(cnt, sizeof(cnt), "%u", count ? count : 1);
    const char *argv[] = {"EVAL", stream_range_lua, "1", k, start, cnt};
    cmd_send(s, new_entries(s, fn, arg), 6, argv);
    free(k);
}

/* KEYS from to; ARGV id payload. */
static const char stream_move_lua[] =
    "if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return false end\n"
    "return redis.call('XADD', KEYS[2], '*', 'p', ARGV[2])\n";

void store_stream_move(struct store *s, const char *from, const char *id,
                       const char *to, const char *payload, store_str_fn *fn,
                       void *arg)
{
    char *fk = stream_key(s, from), *tk = stream_key(s, to);
    const char *argv[] = {"EVAL", stream_move_lua, "2", fk, tk, id, payload};
    cmd_send(s, new_str(s, fn, arg), 7, argv);
    free(fk);
    free(tk);
}

void store_stream_del(struct store *s, const char *name, const char *id,
                      store_str_fn *fn, void *arg)
{
    char *k = stream_key(s, name);
    const char *argv[] = {"XDEL", k, id};
    cmd_send(s, new_str(s, fn, arg), 3, argv);
    free(k);
}

void store_receipt_get(struct store *s, const char *gw, const char *provider_id,
                       store_str_fn *fn, void *arg)
{
    char *k = rcpt_key(s, gw, provider_id);
    const char *argv[] = {"GET", k};
    cmd_send(s, new_str(s, fn, arg), 2, argv);
    free(k);
}

/* ---- limits ---- */
/*
 * Commands for limits.c (per-user rate counters) and metrics.c (queue
 * depths). Keys:
 *   <prefix>:limit:<gw>:<jid>:m:<unix minute>  string  messages that minute
 *   <prefix>:limit:<gw>:<jid>:d:<yyyymmdd>     string  messages that UTC day
 * Each counter expires a while after its window ends (the slack covers
 * clock skew between postern processes sharing Redis).
 */

#include <time.h>

#define LIMIT_MINUTE_SLACK_S 60
#define LIMIT_DAY_SLACK_S 3600

struct event_base *store_event_base(const struct store *s)
{
    return s->base;
}

/* The caller's ints callback travels behind a K_STR command. */
struct ints_ctx {
    store_ints_fn *fn;
    void *arg;
};

/* Only reached with an error: successes go through finish_ints. */
static void ints_error(const struct error *err, const char *value, void *arg)
{
    struct ints_ctx *x = arg;
    (void)value;
    x->fn(err, NULL, 0, x->arg);
    free(x);
}

static void finish_ints(struct cmd *c, redisReply *r)
{
    struct ints_ctx *x = c->arg;
    long long v[8];
    size_t n;

    if (r->type != REDIS_REPLY_ARRAY || r->elements > ARRAY_SIZE(v)) {
        answer_bad_reply(c);
        return;
    }
    n = r->elements;
    for (size_t i = 0; i < n; i++) {
        if (r->element[i]->type != REDIS_REPLY_INTEGER) {
            answer_bad_reply(c);
            return;
        }
        v[i] = r->element[i]->integer;
    }
    x->fn(NULL, v, n, x->arg);
    free(x);
}

static struct cmd *new_ints(struct store *s, store_ints_fn *fn, void *arg)
{
    struct ints_ctx *x = xcalloc(1, sizeof(*x));
    struct cmd *c;

    x->fn = fn;
    x->arg = arg;
    c = cmd_new(s, K_STR, finish_ints, x);
    c->fn.str = ints_error;
    return c;
}

/*
 * KEYS minute day; ARGV per_minute per_day minute_ttl day_ttl (0 = no
 * limit: that key is not touched). Refuses without counting: the day
 * limit first (its wait is the longer one), then the minute limit.
 */
static const char limit_count_lua[] =
    "local lm, ld = tonumber(ARGV[1]), tonumber(ARGV[2])\n"
    "local cm, cd = 0, 0\n"
    "if lm > 0 then cm = tonumber(redis.call('GET', KEYS[1]) or 0) or 0 end\n"
    "if ld > 0 then cd = tonumber(redis.call('GET', KEYS[2]) or 0) or 0 end\n"
    "if ld > 0 and cd >= ld then return {2, cm, cd} end\n"
    "if lm > 0 and cm >= lm then return {1, cm, cd} end\n"
    "if lm > 0 then\n"
    "  cm = redis.call('INCR', KEYS[1])\n"
    "  redis.call('EXPIRE', KEYS[1], ARGV[3])\n"
    "end\n"
    "if ld > 0 then\n"
    "  cd = redis.call('INCR', KEYS[2])\n"
    "  redis.call('EXPIRE', KEYS[2], ARGV[4])\n"
    "end\n"
    "return {0, cm, cd}\n";

void store_limit_count(struct store *s, const char *gw, const char *bare_jid,
                       int64_t now, unsigned per_minute, unsigned per_day,
                       store_ints_fn *fn, void *arg)
{
    char day[40], lm[16], ld[16], ttl_m[16], ttl_d[16];
    struct tm tmv;
    time_t t;

    if (now < 0)
        now = 0;
    t = (time_t)now;
    if (!gmtime_r(&t, &tmv))
        memset(&tmv, 0, sizeof(tmv));
    snprintf(day, sizeof(day), "%04d%02d%02d", tmv.tm_year + 1900,
             tmv.tm_mon + 1, tmv.tm_mday);
    snprintf(lm, sizeof(lm), "%u", per_minute);
    snprintf(ld, sizeof(ld), "%u", per_day);
    snprintf(ttl_m, sizeof(ttl_m), "%d",
             (int)(60 - now % 60 + LIMIT_MINUTE_SLACK_S));
    snprintf(ttl_d, sizeof(ttl_d), "%d",
             (int)(86400 - now % 86400 + LIMIT_DAY_SLACK_S));
    char *km = xasprintf("%s:limit:%s:%s:m:%lld", s->prefix, gw, bare_jid,
                         (long long)(now / 60));
    char *kd = xasprintf("%s:limit:%s:%s:d:%s", s->prefix, gw, bare_jid, day);
    const char *argv[] = {"EVAL", limit_count_lua, "2",  km, kd, lm,
                          ld,     ttl_m,           ttl_d};
    cmd_send(s, new_ints(s, fn, arg), 9, argv);
    free(km);
    free(kd);
}

/* KEYS out in retry dead. Missing keys count 0. */
static const char queue_depths_lua[] =
    "return {redis.call('XLEN', KEYS[1]), redis.call('XLEN', KEYS[2]),\n"
    "        redis.call('ZCARD', KEYS[3]), redis.call('XLEN', KEYS[4])}\n";

void store_queue_depths(struct store *s, const char *gw, store_ints_fn *fn,
                        void *arg)
{
    char *out = xasprintf("%s:stream:out:%s", s->prefix, gw);
    char *in = xasprintf("%s:stream:in:%s", s->prefix, gw);
    char *retry = xasprintf("%s:retry:out:%s", s->prefix, gw);
    char *dead = xasprintf("%s:stream:dead:out:%s", s->prefix, gw);
    const char *argv[] = {"EVAL", queue_depths_lua, "4", out, in, retry, dead};
    cmd_send(s, new_ints(s, fn, arg), 7, argv);
    free(out);
    free(in);
    free(retry);
    free(dead);
}

/* ---- sms provider support (vonage multipart) ---- */

/*
 * KEYS concat hash; ARGV part total text id ttl. Stores one part and
 * returns every text in order plus the first part's id once all parts are
 * present, else an empty array. The hash stays until the caller drops it
 * (after the joined message is persisted) or it expires.
 */
static const char sms_concat_add_lua[] =
    "local part, total = tonumber(ARGV[1]), tonumber(ARGV[2])\n"
    "redis.call('HSET', KEYS[1], 't' .. part, ARGV[3])\n"
    "redis.call('HSET', KEYS[1], 'i' .. part, ARGV[4])\n"
    "redis.call('EXPIRE', KEYS[1], ARGV[5])\n"
    "local out = {}\n"
    "for i = 1, total do\n"
    "  local v = redis.call('HGET', KEYS[1], 't' .. i)\n"
    "  if not v then return {} end\n"
    "  out[#out + 1] = v\n"
    "end\n"
    "out[#out + 1] = redis.call('HGET', KEYS[1], 'i1') or ''\n"
    "return out\n";

static char *sms_concat_key(const struct store *s, const char *gw,
                            const char *ref)
{
    return xasprintf("%s:concat:%s:%s", s->prefix, gw, ref);
}

void store_sms_concat_add(struct store *s, const char *gw, const char *ref,
                          unsigned part, unsigned total, const char *text,
                          const char *provider_id, unsigned ttl_s,
                          store_list_fn *fn, void *arg)
{
    char *k = sms_concat_key(s, gw, ref);
    char p[16], n[16], ttl[16];

    snprintf(p, sizeof(p), "%u", part);
    snprintf(n, sizeof(n), "%u", total);
    snprintf(ttl, sizeof(ttl), "%u", ttl_s ? ttl_s : 1);
    const char *argv[] = {"EVAL", sms_concat_add_lua,
                          "1",    k,
                          p,      n,
                          text,   provider_id ? provider_id : "",
                          ttl};
    cmd_send(s, new_list(s, finish_keys, fn, arg), 9, argv);
    free(k);
}

void store_sms_concat_drop(struct store *s, const char *gw, const char *ref,
                           store_done_fn *fn, void *arg)
{
    char *k = sms_concat_key(s, gw, ref);
    const char *argv[] = {"DEL", k};
    cmd_send(s, new_done(s, finish_done, fn, arg), 2, argv);
    free(k);
}

/* ---- email threads ---- */

/* The caller's thread callback travels behind a K_STR command. */
struct mail_thread_ctx {
    store_mail_thread_fn *fn;
    void *arg;
};

/* Only reached with an error: replies go through finish_mail_thread. */
static void mail_thread_error(const struct error *err, const char *value,
                              void *arg)
{
    struct mail_thread_ctx *x = arg;
    (void)value;
    x->fn(err, NULL, NULL, x->arg);
    free(x);
}

/* HMGET refs subject: two strings or nils. */
static void finish_mail_thread(struct cmd *c, redisReply *r)
{
    struct mail_thread_ctx *x = c->arg;
    const char *v[2] = {NULL, NULL};

    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
        answer_bad_reply(c);
        return;
    }
    for (size_t i = 0; i < 2; i++) {
        redisReply *e = r->element[i];
        if (e->type == REDIS_REPLY_STRING)
            v[i] = e->str;
        else if (e->type != REDIS_REPLY_NIL) {
            answer_bad_reply(c);
            return;
        }
    }
    x->fn(NULL, v[0], v[1], x->arg);
    free(x);
}

void store_mail_thread_get(struct store *s, const char *gw, const char *addr,
                           const char *thread, store_mail_thread_fn *fn,
                           void *arg)
{
    struct mail_thread_ctx *x = xcalloc(1, sizeof(*x));
    char *k = xasprintf("%s:mthread:%s:%s:%s", s->prefix, gw, addr, thread);
    const char *argv[] = {"HMGET", k, "refs", "subject"};
    struct cmd *c;

    x->fn = fn;
    x->arg = arg;
    c = cmd_new(s, K_STR, finish_mail_thread, x);
    c->fn.str = mail_thread_error;
    cmd_send(s, c, 4, argv);
    free(k);
}

/*
 * ARGV: mid-key prefix, thread-key prefix, msgid, find ids, thread, refs,
 * subject, ttl ("" = none). Returns the thread id used.
 */
static const char mail_thread_put_lua[] =
    "local tid = false\n"
    "if ARGV[3] ~= '' then tid = redis.call('GET', ARGV[1] .. ARGV[3]) end\n"
    "if not tid then\n"
    "  for id in string.gmatch(ARGV[4], '%S+') do\n"
    "    tid = redis.call('GET', ARGV[1] .. id)\n"
    "    if tid then break end\n"
    "  end\n"
    "end\n"
    "if not tid then tid = ARGV[5] end\n"
    "local tk = ARGV[2] .. tid\n"
    "if ARGV[6] ~= '' then redis.call('HSET', tk, 'refs', ARGV[6]) end\n"
    "if ARGV[7] ~= '' then redis.call('HSET', tk, 'subject', ARGV[7]) end\n"
    "redis.call('EXPIRE', tk, ARGV[8])\n"
    "if ARGV[3] ~= '' then\n"
    "  redis.call('SET', ARGV[1] .. ARGV[3], tid, 'EX', ARGV[8])\n"
    "end\n"
    "return tid\n";

void store_mail_thread_put(struct store *s, const char *gw, const char *addr,
                           const struct store_mail_put *p, store_str_fn *fn,
                           void *arg)
{
    char *mid = xasprintf("%s:mid:%s:%s:", s->prefix, gw, addr);
    char *tk = xasprintf("%s:mthread:%s:%s:", s->prefix, gw, addr);
    char ttl[16];

    snprintf(ttl, sizeof(ttl), "%u", p->ttl_s ? p->ttl_s : 1);
    const char *argv[] = {"EVAL",
                          mail_thread_put_lua,
                          "0",
                          mid,
                          tk,
                          or_empty(p->msgid),
                          or_empty(p->find_ids),
                          or_empty(p->thread),
                          or_empty(p->refs),
                          or_empty(p->subject),
                          ttl};
    cmd_send(s, new_str(s, fn, arg), 11, argv);
    free(mid);
    free(tk);
}

/* ---- script registry ---------------------------------------------------*/

/* Every script sent with EVAL above: loaded at connect, sent by SHA-1. */
static const char *const script_bodies[] = {
    reg_set_lua,         reg_remove_lua,      stream_add_lua,
    stream_read_lua,     stream_read_own_lua, stream_ack_lua,
    stream_ack_many_lua, stream_read_ex_lua,  stream_finish_lua,
    retry_move_lua,      stream_touch_lua,    stream_range_lua,
    stream_move_lua,     limit_count_lua,     queue_depths_lua,
    sms_concat_add_lua,  mail_thread_put_lua,
};
static char script_shas[ARRAY_SIZE(script_bodies)][41];

static int script_find(const char *body)
{
    for (size_t i = 0; i < ARRAY_SIZE(script_bodies); i++) {
        if (script_bodies[i] != body)
            continue;
        if (!script_shas[i][0]) {
            unsigned char d[CRYPTO_MAX_DIGEST];
            if (crypto_digest(CRYPTO_SHA1, body, strlen(body), d) != 20)
                return -1; /* sent as EVAL then */
            crypto_hex(d, 20, script_shas[i]);
        }
        return (int)i;
    }
    return -1;
}

static const char *script_sha(int i)
{
    return script_shas[i];
}

static void script_load_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
    (void)ac;
    (void)reply;
    /* an error (say, an ACL without SCRIPT) only means EVAL on NOSCRIPT */
    cmd_free(privdata);
}

/* Pipelined in the handshake, before the PING that brings the link up. */
static void scripts_load(struct store *s)
{
    for (size_t i = 0; i < ARRAY_SIZE(script_bodies); i++) {
        const char *argv[] = {"SCRIPT", "LOAD", script_bodies[i]};
        size_t lens[] = {6, 4, strlen(script_bodies[i])};
        struct cmd *c = cmd_new(s, K_INTERNAL, handshake_reply, NULL);
        c->gen = s->gen;
        if (redisAsyncCommandArgv(s->ac, script_load_cb, c, 3, argv, lens) !=
            REDIS_OK) {
            cmd_free(c);
            return;
        }
        c->in_redis = true;
    }
}
