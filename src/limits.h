/* limits: per-user rate limits and segment policy (see limits.c). */

/*
 * This file shadows the C library's <limits.h> for every file compiled
 * with -Isrc (the project's include path), so it forwards to the real one
 * first: #include <limits.h> keeps giving INT_MAX and friends.
 */
#include_next <limits.h>

#ifndef POSTERN_LIMITS_H
#define POSTERN_LIMITS_H

struct limits;
struct store;
struct gateway_conf;
struct error;

/* err NULL = allowed; otherwise borrowed for the call (condition, type and
 * a <text/> for the user, see limits.c). */
typedef void limits_done_fn(void *arg, const struct error *err);

/*
 * Counts one message of n_segments for bare_jid; calls done exactly once,
 * never inside. Reads gc->limits at each call (SIGHUP may change them).
 * s, gc, bare_jid: borrowed for the call only.
 */
void limits_check(struct store *s, const struct gateway_conf *gc,
                  const char *bare_jid, unsigned n_segments,
                  limits_done_fn *done, void *arg);

/* Test hook: the wall clock (unix seconds) limits_check reads; NULL = real. */
typedef long long limits_clock_fn(void);
void limits_set_clock(limits_clock_fn *fn);

#endif
