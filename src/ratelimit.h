/*
 * ratelimit: per-user rate limits and segment policy (see limits.c).
 * Named ratelimit.h, not limits.h: the build puts src/ on the include
 * path with -I, so a src/limits.h would shadow the C library's
 * <limits.h> for every file (store.c, http_client.c via curl, ...).
 */
#ifndef POSTERN_RATELIMIT_H
#define POSTERN_RATELIMIT_H

struct limits;
struct store;
struct gateway_conf;
struct error;
typedef void limits_done_fn(void *arg,
                            const struct error *err); /* err NULL = allowed */
/*
 * Counts one message of n_segments for bare_jid; calls done exactly once,
 * never inside.
 */
void limits_check(struct store *s, const struct gateway_conf *gc,
                  const char *bare_jid, unsigned n_segments,
                  limits_done_fn *done, void *arg);

#endif
