/*
 * worker: a fixed pool of threads for calls that block (libESMTP). Jobs go
 * in through a mutex+condvar queue; finished jobs come back through a
 * second queue and an eventfd watched by the loop, so every done callback
 * runs on the loop thread, after its job, exactly once (memcached's
 * thread.c pattern). Nothing else is shared between the threads.
 *
 * Threading contract: worker_pool_new, worker_submit, worker_pending and
 * worker_pool_free are called from the loop thread only. A job must not
 * touch loop-owned state (libevent, log, store, ...); it works on its arg
 * and hands results back through it. Worker threads block every signal,
 * so SIGPIPE from a write to a closed socket never kills the process and
 * SIGTERM/SIGHUP always reach the loop thread.
 */
#ifndef POSTERN_WORKER_H
#define POSTERN_WORKER_H

#include <stddef.h>

#include "util.h"

struct event_base;
struct worker_pool;

/* Runs on a worker thread. */
typedef void worker_job_fn(void *arg);
/* Runs on the loop thread after the job, exactly once. */
typedef void worker_done_fn(void *arg);

/* Largest pool worker_pool_new accepts. */
#define WORKER_MAX_THREADS 64

/*
 * base: borrowed, must outlive the pool. threads: 1..WORKER_MAX_THREADS.
 * Returned owned (free with worker_pool_free); NULL with err filled.
 */
struct worker_pool *worker_pool_new(struct event_base *base, unsigned threads,
                                    struct error *err);

/*
 * Queues job(arg) for a worker thread; done(arg) follows on the loop
 * thread, never from inside this call. job and done must be non-NULL; arg
 * is borrowed until done has run. Returns -1 (and will call nothing) when
 * the pool is being freed. Done callbacks may submit further jobs.
 */
int worker_submit(struct worker_pool *p, worker_job_fn *job,
                  worker_done_fn *done, void *arg);

/* Jobs submitted whose done callback has not run yet. */
size_t worker_pending(const struct worker_pool *p);

/*
 * Stops the pool: refuses new jobs, lets the threads run every job already
 * queued (jobs are never cancelled, so a done never has to tell "ran" from
 * "cancelled"), joins the threads, then runs every done callback still
 * owed, on the calling (loop) thread, before returning. Callers that want
 * a quick stop keep their own queue and hand the pool only as many jobs as
 * it has threads (as smtp_out does). Must not be called from inside a done
 * callback of the same pool (aborts). NULL-safe.
 */
void worker_pool_free(struct worker_pool *p);

#endif
