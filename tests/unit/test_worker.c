/*
 * Unit tests of worker.c: every job runs once on a worker thread and its
 * done once on the loop thread after it, never from inside submit; many
 * jobs; real parallelism; chained submits from a done; freeing with jobs
 * queued and running (all run, all dones paid before free returns);
 * submits refused while freeing; signals blocked in the workers;
 * argument checks.
 *
 * Waits drive the loop until a condition holds, with a deadline.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "util.h"
#include "worker.h"

struct item {
    atomic_int job_runs;
    atomic_bool job_on_loop; /* a job ran on the loop thread: wrong */
    int done_runs;
    bool done_before_job;
    bool done_off_loop;
    unsigned sleep_us;
};

struct fx {
    struct event_base *base;
    struct event *tick;
    pthread_t loop_thread;
};

static pthread_t g_loop;
static int g_dones;

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    struct timeval tv = {0, 50 * 1000};

    f->base = event_base_new();
    /* keeps EVLOOP_ONCE from blocking for ever when nothing happens */
    f->tick = event_new(f->base, -1, EV_PERSIST, on_tick, NULL);
    event_add(f->tick, &tv);
    f->loop_thread = pthread_self();
    g_loop = f->loop_thread;
    g_dones = 0;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;

    event_free(f->tick);
    event_base_free(f->base);
    free(f);
    return 0;
}

/* Runs the loop until *counter reaches want or 10 s pass. */
static void run_until(struct fx *f, const int *counter, int want)
{
    uint64_t deadline = now_ms() + 10000;

    while (*counter < want && now_ms() < deadline)
        event_base_loop(f->base, EVLOOP_ONCE);
    assert_int_equal(*counter, want);
}

static void job_count(void *arg)
{
    struct item *it = arg;

    if (pthread_equal(pthread_self(), g_loop))
        atomic_store(&it->job_on_loop, true);
    if (it->sleep_us)
        usleep(it->sleep_us);
    atomic_fetch_add(&it->job_runs, 1);
}

static void done_count(void *arg)
{
    struct item *it = arg;

    if (atomic_load(&it->job_runs) == 0)
        it->done_before_job = true;
    if (!pthread_equal(pthread_self(), g_loop))
        it->done_off_loop = true;
    it->done_runs++;
    g_dones++;
}

static void check_items(struct item *items, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(atomic_load(&items[i].job_runs), 1);
        assert_false(atomic_load(&items[i].job_on_loop));
        assert_int_equal(items[i].done_runs, 1);
        assert_false(items[i].done_before_job);
        assert_false(items[i].done_off_loop);
    }
}

static void test_exactly_once_many(void **state)
{
    struct fx *f = *state;
    struct error err;
    enum { N = 5000 };
    struct item *items = calloc(N, sizeof(*items));
    struct worker_pool *p = worker_pool_new(f->base, 4, &err);

    assert_non_null(p);
    for (size_t i = 0; i < N; i++)
        assert_int_equal(worker_submit(p, job_count, done_count, &items[i]), 0);
    /* nothing is paid from inside submit */
    assert_int_equal(g_dones, 0);
    assert_int_equal(worker_pending(p), N);
    run_until(f, &g_dones, N);
    assert_int_equal(worker_pending(p), 0);
    check_items(items, N);
    worker_pool_free(p);
    check_items(items, N); /* free pays nothing twice */
    free(items);
}

static void test_single_thread_pool(void **state)
{
    struct fx *f = *state;
    struct error err;
    struct item items[50];
    struct worker_pool *p = worker_pool_new(f->base, 1, &err);

    memset(items, 0, sizeof(items));
    assert_non_null(p);
    for (size_t i = 0; i < ARRAY_SIZE(items); i++)
        assert_int_equal(worker_submit(p, job_count, done_count, &items[i]), 0);
    run_until(f, &g_dones, (int)ARRAY_SIZE(items));
    check_items(items, ARRAY_SIZE(items));
    worker_pool_free(p);
}

/* Jobs that only finish when `want` of them run at the same time. */
static pthread_mutex_t par_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t par_cv = PTHREAD_COND_INITIALIZER;
static int par_arrived, par_want, par_saw_all;

static void job_meet(void *arg)
{
    struct timespec until;

    (void)arg;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 5;
    pthread_mutex_lock(&par_mu);
    par_arrived++;
    pthread_cond_broadcast(&par_cv);
    while (par_arrived < par_want)
        if (pthread_cond_timedwait(&par_cv, &par_mu, &until) != 0)
            break;
    if (par_arrived >= par_want)
        par_saw_all++;
    pthread_mutex_unlock(&par_mu);
}

static void done_plain(void *arg)
{
    (void)arg;
    g_dones++;
}

static void test_parallel(void **state)
{
    struct fx *f = *state;
    struct error err;
    struct worker_pool *p = worker_pool_new(f->base, 4, &err);

    assert_non_null(p);
    par_arrived = 0;
    par_want = 4;
    par_saw_all = 0;
    for (int i = 0; i < 4; i++)
        assert_int_equal(worker_submit(p, job_meet, done_plain, NULL), 0);
    run_until(f, &g_dones, 4);
    assert_int_equal(par_saw_all, 4);
    worker_pool_free(p);
}

/* A done that submits the next job until a count is reached. */
struct chain {
    struct worker_pool *p;
    int remaining;
    atomic_int jobs;
    int dones;
};

static void job_chain(void *arg)
{
    struct chain *c = arg;

    atomic_fetch_add(&c->jobs, 1);
}

static void done_chain(void *arg)
{
    struct chain *c = arg;

    c->dones++;
    g_dones++;
    if (--c->remaining > 0)
        assert_int_equal(worker_submit(c->p, job_chain, done_chain, c), 0);
}

static void test_submit_from_done(void **state)
{
    struct fx *f = *state;
    struct error err;
    struct chain c = {.remaining = 100};

    c.p = worker_pool_new(f->base, 2, &err);
    assert_non_null(c.p);
    assert_int_equal(worker_submit(c.p, job_chain, done_chain, &c), 0);
    run_until(f, &g_dones, 100);
    assert_int_equal(atomic_load(&c.jobs), 100);
    assert_int_equal(c.dones, 100);
    assert_int_equal(worker_pending(c.p), 0);
    worker_pool_free(c.p);
}

static void test_free_with_pending(void **state)
{
    struct fx *f = *state;
    struct error err;
    enum { N = 200 };
    struct item *items = calloc(N, sizeof(*items));
    struct worker_pool *p = worker_pool_new(f->base, 2, &err);

    assert_non_null(p);
    for (size_t i = 0; i < N; i++) {
        items[i].sleep_us = 200;
        assert_int_equal(worker_submit(p, job_count, done_count, &items[i]), 0);
    }
    /* some jobs running, most still queued, no done paid yet */
    worker_pool_free(p);
    assert_int_equal(g_dones, N);
    check_items(items, N);
    free(items);
}

/* A done run by worker_pool_free tries to submit: refused. */
struct refuse {
    struct worker_pool *p;
    int submit_rc;
    int dones;
};

static void job_nop(void *arg)
{
    (void)arg;
}

static void done_refuse(void *arg)
{
    struct refuse *r = arg;

    r->dones++;
    r->submit_rc = worker_submit(r->p, job_nop, done_refuse, r);
}

static void test_submit_refused_while_freeing(void **state)
{
    struct fx *f = *state;
    struct error err;
    struct refuse r = {.submit_rc = 99};

    r.p = worker_pool_new(f->base, 1, &err);
    assert_non_null(r.p);
    assert_int_equal(worker_submit(r.p, job_nop, done_refuse, &r), 0);
    worker_pool_free(r.p);
    assert_int_equal(r.dones, 1);
    assert_int_equal(r.submit_rc, -1);
}

static atomic_int sigpipe_blocked = -1;

static void job_sigmask(void *arg)
{
    sigset_t cur;

    (void)arg;
    pthread_sigmask(SIG_SETMASK, NULL, &cur);
    atomic_store(&sigpipe_blocked,
                 sigismember(&cur, SIGPIPE) && sigismember(&cur, SIGTERM));
}

static void test_signals_blocked_in_workers(void **state)
{
    struct fx *f = *state;
    struct error err;
    sigset_t cur;
    struct worker_pool *p = worker_pool_new(f->base, 1, &err);

    assert_non_null(p);
    assert_int_equal(worker_submit(p, job_sigmask, done_plain, NULL), 0);
    run_until(f, &g_dones, 1);
    assert_int_equal(atomic_load(&sigpipe_blocked), 1);
    /* the loop thread's own mask is left as it was */
    pthread_sigmask(SIG_SETMASK, NULL, &cur);
    assert_false(sigismember(&cur, SIGTERM));
    worker_pool_free(p);
}

static void test_bad_args(void **state)
{
    struct fx *f = *state;
    struct error err;

    error_clear(&err);
    assert_null(worker_pool_new(f->base, 0, &err));
    assert_true(err.msg[0] != '\0');
    error_clear(&err);
    assert_null(worker_pool_new(f->base, WORKER_MAX_THREADS + 1, &err));
    assert_true(err.msg[0] != '\0');
    assert_null(worker_pool_new(NULL, 1, &err));
    assert_int_equal(worker_submit(NULL, job_nop, done_plain, NULL), -1);
    assert_int_equal(worker_pending(NULL), 0);
    worker_pool_free(NULL);
}

static void test_submit_null_callbacks(void **state)
{
    struct fx *f = *state;
    struct error err;
    struct worker_pool *p = worker_pool_new(f->base, 1, &err);

    assert_non_null(p);
    assert_int_equal(worker_submit(p, NULL, done_plain, NULL), -1);
    assert_int_equal(worker_submit(p, job_nop, NULL, NULL), -1);
    assert_int_equal(worker_pending(p), 0);
    worker_pool_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_exactly_once_many, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_single_thread_pool, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_parallel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_submit_from_done, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_with_pending, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_submit_refused_while_freeing,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_signals_blocked_in_workers, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_bad_args, setup, teardown),
        cmocka_unit_test_setup_teardown(test_submit_null_callbacks, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
