/* ratelimit: per-user rate limits and segment policy (see ratelimit.c). */
#ifndef POSTERN_RATELIMIT_H
#define POSTERN_RATELIMIT_H

struct store;
struct gateway_conf;
struct error;

/* err NULL = allowed; otherwise borrowed for the call (condition, type and
 * a <text/> for the user, see ratelimit.c). */
typedef void ratelimit_done_fn(void *arg, const struct error *err);

/*
 * Counts one message of n_segments for bare_jid; calls done exactly once,
 * never inside. Reads gc->limits at each call (SIGHUP may change them).
 * s, gc, bare_jid: borrowed for the call only.
 */
void ratelimit_check(struct store *s, const struct gateway_conf *gc,
                     const char *bare_jid, unsigned n_segments,
                     ratelimit_done_fn *done, void *arg);

/* Test hook: the wall clock (unix seconds) ratelimit_check reads; NULL = real.
 */
typedef long long ratelimit_clock_fn(void);
void ratelimit_set_clock(ratelimit_clock_fn *fn);

#endif
