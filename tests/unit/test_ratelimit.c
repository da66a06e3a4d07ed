/*
 * limits.c against a real redis-server (started here on a free loopback
 * port, stopped by PID): fixed-window per-minute and per-day counters
 * under an injected clock, refusals not counted, max_segments without
 * Redis, unlimited without Redis, limits changed in place (SIGHUP), and
 * Redis down -> one temporary error. Every callback is checked to run
 * exactly once and never inside ratelimit_check.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>

#include "config.h"
#include "ratelimit.h"
#include "metrics.h"
#include "store.h"
#include "util.h"

#define GW "sms.example.org"
#define JID "alice@example.org"
/* 2023-11-14 22:13:20 UTC; minute boundary at ...040 */
#define T0 1700000040LL
#define MIDNIGHT 1700006400LL /* 2023-11-15 00:00:00 UTC */

static struct event_base *base;
static struct store *st;
static redisContext *rc; /* the test's own view of Redis */
static pid_t redis_pid;
static char redis_dir[64];
static int redis_port;
static long long fake_now;
static bool in_call;

struct result {
    int calls;
    bool failed;
    struct error err;
};

static long long fake_clock(void)
{
    return fake_now;
}

static void done_cb(void *arg, const struct error *err)
{
    struct result *r = arg;
    if (in_call)
        fail_msg("limits: callback ran inside ratelimit_check");
    r->calls++;
    r->failed = err != NULL;
    if (err)
        r->err = *err;
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    event_base_loopbreak(base);
}

/* Runs the loop in 10 ms steps until *flag or timeout. */
static void run_until(const int *calls, int want, unsigned timeout_ms)
{
    struct event *tick = event_new(base, -1, EV_PERSIST, tick_cb, NULL);
    struct timeval tv = {0, 10 * 1000};
    uint64_t end = now_ms() + timeout_ms;

    event_add(tick, &tv);
    while ((!calls || *calls < want) && now_ms() < end)
        event_base_loop(base, EVLOOP_ONCE);
    event_free(tick);
}

static struct result check(struct store *s, const struct gateway_conf *gc,
                           unsigned segments)
{
    struct result r;
    memset(&r, 0, sizeof(r));
    in_call = true;
    ratelimit_check(s, gc, JID, segments, done_cb, &r);
    in_call = false;
    assert_int_equal(r.calls, 0);
    run_until(&r.calls, 1, 5000);
    assert_int_equal(r.calls, 1);
    /* and never a second time */
    run_until(NULL, 0, 30);
    assert_int_equal(r.calls, 1);
    return r;
}

static void gc_init(struct gateway_conf *gc, unsigned per_minute,
                    unsigned per_day, unsigned max_segments)
{
    memset(gc, 0, sizeof(*gc));
    gc->jid = (char *)(uintptr_t)GW;
    gc->kind = TRANSPORT_SMS;
    gc->limits.per_user_per_minute = per_minute;
    gc->limits.per_user_per_day = per_day;
    gc->limits.max_segments = max_segments;
}

static long long redis_int(const char *fmt, ...)
{
    va_list ap;
    redisReply *r;
    long long v = -1;

    va_start(ap, fmt);
    r = redisvCommand(rc, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    if (r->type == REDIS_REPLY_INTEGER)
        v = r->integer;
    else if (r->type == REDIS_REPLY_STRING)
        v = atoll(r->str);
    else if (r->type == REDIS_REPLY_NIL)
        v = -2; /* missing */
    freeReplyObject(r);
    return v;
}

static char *minute_key(long long now)
{
    return xasprintf("t:limit:%s:%s:m:%lld", GW, JID, now / 60);
}

static void assert_allowed(struct result r)
{
    if (r.failed)
        fail_msg("refused: %s", r.err.msg);
}

static void assert_refused(struct result r, int cond, bool temporary,
                           const char *text)
{
    assert_true(r.failed);
    assert_int_equal(r.err.code, cond);
    assert_int_equal(r.err.temporary, temporary);
    assert_string_equal(r.err.msg, text);
}

/* ---- fixture ---- */

static int free_port(void)
{
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0), port;

    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0)
        abort();
    port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static int group_setup(void **state)
{
    char port[16];
    struct error err;
    uint64_t end;
    (void)state;

    snprintf(redis_dir, sizeof(redis_dir), "/tmp/postern-limits-XXXXXX");
    if (!mkdtemp(redis_dir))
        return -1;
    redis_port = free_port();
    snprintf(port, sizeof(port), "%d", redis_port);
    redis_pid = fork();
    if (redis_pid < 0)
        return -1;
    if (redis_pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        dup2(null, 2);
        execlp("redis-server", "redis-server", "--port", port, "--bind",
               "127.0.0.1", "--save", "", "--appendonly", "no", "--dir",
               redis_dir, (char *)NULL);
        _exit(127);
    }
    end = now_ms() + 10000;
    while (now_ms() < end) {
        int status;
        if (waitpid(redis_pid, &status, WNOHANG) == redis_pid) {
            fprintf(stderr, "test_limits: redis-server did not start\n");
            redis_pid = 0;
            return -1;
        }
        rc = redisConnect("127.0.0.1", redis_port);
        if (rc && !rc->err) {
            redisReply *r = redisCommand(rc, "PING");
            bool ok = r && r->type == REDIS_REPLY_STATUS;
            if (r)
                freeReplyObject(r);
            if (ok)
                break;
        }
        if (rc)
            redisFree(rc);
        rc = NULL;
        usleep(20000);
    }
    if (!rc)
        return -1;

    base = event_base_new();
    char *url = xasprintf("redis://127.0.0.1:%d/0", redis_port);
    st = store_new(base, url, "t", 1000, &err);
    free(url);
    if (!st)
        return -1;
    end = now_ms() + 5000;
    while (!store_connected(st) && now_ms() < end)
        run_until(NULL, 0, 20);
    ratelimit_set_clock(fake_clock);
    return store_connected(st) ? 0 : -1;
}

static void redis_stop(void)
{
    if (redis_pid > 0) {
        kill(redis_pid, SIGTERM);
        waitpid(redis_pid, NULL, 0);
        redis_pid = 0;
    }
}

static int group_teardown(void **state)
{
    (void)state;
    ratelimit_set_clock(NULL);
    if (st)
        store_free(st);
    if (base)
        event_base_free(base);
    if (rc)
        redisFree(rc);
    redis_stop();
    if (*redis_dir) {
        char *p = xasprintf("%s/dump.rdb", redis_dir);
        unlink(p);
        free(p);
        rmdir(redis_dir);
    }
    return 0;
}

static int flush(void **state)
{
    (void)state;
    fake_now = T0 + 10;
    redis_int("FLUSHALL");
    return 0;
}

/* ---- tests ---- */

static void per_minute(void **state)
{
    struct gateway_conf gc;
    char *k, *k2;
    long long ttl;
    (void)state;

    gc_init(&gc, 3, 0, 0);
    k = minute_key(fake_now);
    for (int i = 0; i < 3; i++)
        assert_allowed(check(st, &gc, 1));
    assert_int_equal(redis_int("GET %s", k), 3);
    ttl = redis_int("TTL %s", k);
    /* 50 s left in the minute + 60 s slack */
    assert_true(ttl > 100 && ttl <= 110);

    assert_refused(check(st, &gc, 1), COND_POLICY_VIOLATION, true,
                   "rate limit: at most 3 messages per minute; try again "
                   "in 50 s");
    fake_now += 30;
    assert_refused(check(st, &gc, 1), COND_POLICY_VIOLATION, true,
                   "rate limit: at most 3 messages per minute; try again "
                   "in 20 s");
    /* refusals are not counted */
    assert_int_equal(redis_int("GET %s", k), 3);
    /* per-day unlimited: no day key at all */
    assert_int_equal(redis_int("EXISTS t:limit:%s:%s:d:20231114", GW, JID), 0);

    /* the next minute is a new window */
    fake_now = T0 + 60;
    k2 = minute_key(fake_now);
    assert_string_not_equal(k, k2);
    assert_allowed(check(st, &gc, 1));
    assert_int_equal(redis_int("GET %s", k2), 1);
    assert_int_equal(redis_int("GET %s", k), 3);
    free(k);
    free(k2);
}

static void per_day(void **state)
{
    struct gateway_conf gc;
    (void)state;

    gc_init(&gc, 0, 5, 0);
    /* 3 h 12 min 30 s before midnight UTC */
    fake_now = MIDNIGHT - (3 * 3600 + 12 * 60 + 30);
    for (int i = 0; i < 5; i++) {
        assert_allowed(check(st, &gc, 2));
        fake_now += 61; /* across minutes: only the day counts */
    }
    assert_int_equal(redis_int("GET t:limit:%s:%s:d:20231114", GW, JID), 5);
    long long ttl = redis_int("TTL t:limit:%s:%s:d:20231114", GW, JID);
    assert_true(ttl > 3 * 3600 && ttl <= 4 * 3600 + 13 * 60);
    fake_now = MIDNIGHT - (3 * 3600 + 12 * 60 + 30);
    assert_refused(check(st, &gc, 1), COND_POLICY_VIOLATION, true,
                   "rate limit: at most 5 messages per day; try again in "
                   "3 h 13 min (the count restarts at 00:00 UTC)");
    fake_now = MIDNIGHT - 30;
    assert_refused(check(st, &gc, 1), COND_POLICY_VIOLATION, true,
                   "rate limit: at most 5 messages per day; try again in "
                   "30 s (the count restarts at 00:00 UTC)");
    assert_int_equal(redis_int("GET t:limit:%s:%s:d:20231114", GW, JID), 5);
    /* no minute keys when the minute limit is off */
    assert_int_equal(redis_int("DBSIZE"), 1);

    fake_now = MIDNIGHT + 5;
    assert_allowed(check(st, &gc, 1));
    assert_int_equal(redis_int("GET t:limit:%s:%s:d:20231115", GW, JID), 1);
}

static void day_reported_first_and_singular(void **state)
{
    struct gateway_conf gc;
    (void)state;

    gc_init(&gc, 1, 1, 0);
    assert_allowed(check(st, &gc, 1));
    /* both limits reached: the day is what the user must wait for */
    assert_refused(check(st, &gc, 1), COND_POLICY_VIOLATION, true,
                   "rate limit: at most 1 message per day; try again in "
                   "1 h 46 min (the count restarts at 00:00 UTC)");
    gc.limits.per_user_per_day = 100; /* SIGHUP: read at each call */
    assert_refused(check(st, &gc, 1), COND_POLICY_VIOLATION, true,
                   "rate limit: at most 1 message per minute; try again in "
                   "50 s");
    gc.limits.per_user_per_minute = 2;
    assert_allowed(check(st, &gc, 1));
    assert_int_equal(redis_int("GET t:limit:%s:%s:d:20231114", GW, JID), 2);
    /* another user has its own counters */
    struct result r;
    memset(&r, 0, sizeof(r));
    ratelimit_check(st, &gc, "bob@example.org", 1, done_cb, &r);
    run_until(&r.calls, 1, 5000);
    assert_int_equal(r.calls, 1);
    assert_false(r.failed);
}

static void max_segments(void **state)
{
    struct gateway_conf gc;
    (void)state;

    gc_init(&gc, 30, 500, 3);
    assert_refused(check(st, &gc, 4), COND_POLICY_VIOLATION, false,
                   "message is 4 SMS segments; this gateway allows at "
                   "most 3");
    /* refused before counting */
    assert_int_equal(redis_int("DBSIZE"), 0);
    assert_allowed(check(st, &gc, 3));
    assert_int_equal(redis_int("DBSIZE"), 2);
    gc.limits.max_segments = 0; /* unlimited */
    assert_allowed(check(st, &gc, 1000));
}

static void unlimited_needs_no_redis(void **state)
{
    struct gateway_conf gc;
    struct store *dead;
    struct error err;
    char *url = xasprintf("redis://127.0.0.1:%d/0", free_port());
    (void)state;

    dead = store_new(base, url, "t", 500, &err);
    free(url);
    assert_non_null(dead);
    gc_init(&gc, 0, 0, 0);
    assert_allowed(check(dead, &gc, 100));
    gc.limits.max_segments = 2;
    assert_refused(check(dead, &gc, 3), COND_POLICY_VIOLATION, false,
                   "message is 3 SMS segments; this gateway allows at "
                   "most 2");
    /* with a rate limit, an unreachable Redis is a temporary error */
    gc.limits.per_user_per_day = 10;
    assert_refused(check(dead, &gc, 1), COND_REMOTE_SERVER_TIMEOUT, true,
                   "cannot check the sending limits now (storage "
                   "unavailable); try again later");
    store_free(dead);
}

/* metrics.c's poller reads the queue depths through store.c. */
static void queue_depth_poller(void **state)
{
    struct gateway_conf gc;
    struct config cfg;
    struct strbuf b;
    uint64_t end;
    (void)state;

    gc_init(&gc, 0, 0, 0);
    memset(&cfg, 0, sizeof(cfg));
    cfg.gateways = &gc;
    cfg.n_gateways = 1;
    for (int i = 0; i < 3; i++)
        redis_int("XADD t:stream:out:%s * p x", GW);
    redis_int("XADD t:stream:in:%s * p x", GW);
    redis_int("ZADD t:retry:out:%s 1 a 2 b", GW);
    metrics_queue_poll_start(base, st, &cfg, 20);
    sb_init(&b);
    end = now_ms() + 3000;
    while (now_ms() < end) {
        run_until(NULL, 0, 30);
        b.len = 0;
        metrics_render(&b);
        if (b.s && strstr(b.s, "queue=\"dead\"} 0"))
            break;
    }
    assert_non_null(b.s);
    assert_non_null(strstr(
        b.s, "postern_queue_depth{gateway=\"" GW "\",queue=\"out\"} 3\n"
             "postern_queue_depth{gateway=\"" GW "\",queue=\"in\"} 1\n"
             "postern_queue_depth{gateway=\"" GW "\",queue=\"retry\"} 2\n"
             "postern_queue_depth{gateway=\"" GW "\",queue=\"dead\"} 0\n"));
    sb_free(&b);
    /* stopping with a round in flight drops its answer safely */
    metrics_queue_poll_start(base, st, &cfg, 1);
    run_until(NULL, 0, 5);
    metrics_queue_poll_stop();
    run_until(NULL, 0, 50);
    metrics_free_all();
}

/* Last: stops the shared redis-server. */
static void redis_goes_down(void **state)
{
    struct gateway_conf gc;
    (void)state;

    gc_init(&gc, 30, 500, 10);
    assert_allowed(check(st, &gc, 1));
    redis_stop();
    struct result r = check(st, &gc, 1);
    assert_refused(r, COND_REMOTE_SERVER_TIMEOUT, true,
                   "cannot check the sending limits now (storage "
                   "unavailable); try again later");
    /* the store is reconnecting meanwhile: still exactly one answer */
    run_until(NULL, 0, 300);
    assert_int_equal(r.calls, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(per_minute, flush),
        cmocka_unit_test_setup(per_day, flush),
        cmocka_unit_test_setup(day_reported_first_and_singular, flush),
        cmocka_unit_test_setup(max_segments, flush),
        cmocka_unit_test_setup(unlimited_needs_no_redis, flush),
        cmocka_unit_test_setup(queue_depth_poller, flush),
        cmocka_unit_test_setup(redis_goes_down, flush),
    };
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
