/*
 * ratelimit: the per-user sending policy of a gateway, decided before a
 * message is queued (SPEC 8, SMS pumping protection):
 *
 *  1. max_segments (0 = unlimited), checked without Redis: a longer
 *     message is refused with policy-violation, permanent (the XMPP type
 *     comes from stanza_error_type; "modify" is what fits: the user can
 *     shorten it), text "message is N SMS segments; this gateway allows
 *     at most M". It is not counted against the rate limits.
 *  2. per_user_per_minute / per_user_per_day (0 = unlimited): fixed-window
 *     counters in Redis (UTC minute, UTC day), checked and incremented by
 *     one script (store_limit_count). Over a limit: policy-violation,
 *     temporary (wait), "rate limit: at most 30 messages per minute; try
 *     again in 17 s"; a refused message is not counted, so a user who
 *     waits gets the full allowance back. When both limits are hit, the
 *     day limit is reported (its wait is the one that matters).
 *  3. Redis unavailable: remote-server-timeout, temporary, so the router
 *     can retry or bounce; the message is not counted.
 *
 * Limits are read from gc->limits at every call: SIGHUP replaces them in
 * place. A message is one count whatever its segment count.
 *
 * Must never: call done twice or from inside ratelimit_check, touch Redis
 * when no rate limit is configured, or log a JID unmasked at info.
 */
#include "ratelimit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "config.h"
#include "log.h"
#include "store.h"
#include "util.h"

#define MOD "limits"

static ratelimit_clock_fn *clock_fn;

void ratelimit_set_clock(ratelimit_clock_fn *fn)
{
    clock_fn = fn;
}

static long long clock_now(void)
{
    return clock_fn ? clock_fn() : (long long)now_unix();
}

struct check {
    ratelimit_done_fn *done;
    void *arg;
    bool failed;
    struct error err;
    /* what was asked, for the error text and logs */
    unsigned per_minute;
    unsigned per_day;
    long long now;
    char *gw;
    char *jid;
};

static void check_finish(struct check *c)
{
    c->done(c->arg, c->failed ? &c->err : NULL);
    free(c->gw);
    free(c->jid);
    free(c);
}

static void deferred_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    check_finish(arg);
}

/* Answers from a zero-delay event: never inside ratelimit_check. */
static void defer(struct store *s, struct check *c)
{
    struct timeval tv = {0, 0};

    if (event_base_once(store_event_base(s), -1, EV_TIMEOUT, deferred_cb, c,
                        &tv) != 0) {
        /* only fails without memory, which aborts everywhere else too */
        log_err(MOD, "cannot schedule a callback");
        abort();
    }
}

/* "17 s", "42 min", "3 h 12 min" (rounded up: never "try again" early). */
static void format_wait(char *buf, size_t size, long long s)
{
    if (s < 120) {
        snprintf(buf, size, "%lld s", s);
    } else if (s < 3600) {
        snprintf(buf, size, "%lld min", (s + 59) / 60);
    } else {
        long long m = (s + 59) / 60;
        snprintf(buf, size, "%lld h %lld min", m / 60, m % 60);
    }
}

static const char *plural(unsigned n)
{
    return n == 1 ? "message" : "messages";
}

static void counted(const struct error *err, const long long *v, size_t n,
                    void *arg)
{
    struct check *c = arg;
    char mask[128], wait[48];

    if (err) {
        c->failed = true;
        if (err->temporary) {
            error_set(&c->err, COND_REMOTE_SERVER_TIMEOUT, true,
                      "cannot check the sending limits now (storage "
                      "unavailable); try again later");
        } else {
            log_err(MOD, "%s: rate limit check failed: %s", c->gw, err->msg);
            error_set(&c->err, COND_INTERNAL_SERVER_ERROR, false,
                      "the gateway cannot check its sending limits");
        }
        check_finish(c);
        return;
    }
    if (n < 3 || v[0] < 0 || v[0] > 2) {
        c->failed = true;
        error_set(&c->err, COND_INTERNAL_SERVER_ERROR, false,
                  "the gateway cannot check its sending limits");
        log_err(MOD, "%s: unexpected answer from the limit script", c->gw);
        check_finish(c);
        return;
    }
    if (v[0] == 1) {
        c->failed = true;
        format_wait(wait, sizeof(wait), 60 - c->now % 60);
        error_set(&c->err, COND_POLICY_VIOLATION, true,
                  "rate limit: at most %u %s per minute; try again in %s",
                  c->per_minute, plural(c->per_minute), wait);
        log_info(MOD, "%s: %s over the per-minute limit (%u)", c->gw,
                 log_mask(c->jid, mask, sizeof(mask)), c->per_minute);
    } else if (v[0] == 2) {
        c->failed = true;
        format_wait(wait, sizeof(wait), 86400 - c->now % 86400);
        error_set(&c->err, COND_POLICY_VIOLATION, true,
                  "rate limit: at most %u %s per day; try again in %s "
                  "(the count restarts at 00:00 UTC)",
                  c->per_day, plural(c->per_day), wait);
        log_info(MOD, "%s: %s over the daily limit (%u)", c->gw,
                 log_mask(c->jid, mask, sizeof(mask)), c->per_day);
    }
    check_finish(c);
}

void ratelimit_check(struct store *s, const struct gateway_conf *gc,
                     const char *bare_jid, unsigned n_segments,
                     ratelimit_done_fn *done, void *arg)
{
    const struct limits_conf *l = &gc->limits;
    struct check *c = xcalloc(1, sizeof(*c));

    c->done = done;
    c->arg = arg;
    c->per_minute = l->per_user_per_minute;
    c->per_day = l->per_user_per_day;
    c->now = clock_now();
    if (c->now < 0)
        c->now = 0;
    c->gw = xstrdup(gc->jid);
    c->jid = xstrdup(bare_jid);

    if (l->max_segments && n_segments > l->max_segments) {
        c->failed = true;
        error_set(&c->err, COND_POLICY_VIOLATION, false,
                  "message is %u SMS segments; this gateway allows at most "
                  "%u",
                  n_segments, l->max_segments);
        defer(s, c);
        return;
    }
    if (!c->per_minute && !c->per_day) {
        defer(s, c);
        return;
    }
    store_limit_count(s, c->gw, c->jid, (int64_t)c->now, c->per_minute,
                      c->per_day, counted, c);
}
