/*
 * worker: the thread pool, see worker.h.
 *
 * Owns the threads, one mutex that guards both queues (waiting jobs and
 * finished jobs) and the stopping flag, one condvar the idle threads wait
 * on, and an eventfd plus a persistent libevent read event. A worker pops
 * a job, runs it without the lock, appends it to the finished queue and
 * writes 1 to the eventfd; the loop's read callback takes the whole
 * finished queue under the lock and runs the done callbacks without it.
 * The eventfd counter coalesces wake-ups, so one read may serve many jobs.
 *
 * Must never: run a done callback on a worker thread or twice; hold the
 * lock while calling a job or a done; touch libevent from a worker
 * thread (only the eventfd write crosses); log from a worker thread.
 */
#include "worker.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <event2/event.h>

#include "util.h"

struct wjob {
    worker_job_fn *job;
    worker_done_fn *done;
    void *arg;
    struct wjob *next;
};

struct wqueue {
    struct wjob *head, *tail;
};

struct worker_pool {
    struct event_base *base;
    struct event *ev;
    int efd;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct wqueue todo;     /* mu */
    struct wqueue finished; /* mu */
    bool stopping;          /* mu */

    pthread_t *threads;
    unsigned n_threads;

    /* loop thread only */
    size_t outstanding; /* submitted, done not yet run */
    bool in_done;
    bool refusing; /* worker_pool_free started */
};

static void wq_push(struct wqueue *q, struct wjob *j)
{
    j->next = NULL;
    if (q->tail)
        q->tail->next = j;
    else
        q->head = j;
    q->tail = j;
}

static struct wjob *wq_pop(struct wqueue *q)
{
    struct wjob *j = q->head;

    if (j) {
        q->head = j->next;
        if (!q->head)
            q->tail = NULL;
        j->next = NULL;
    }
    return j;
}

static void *worker_main(void *arg)
{
    struct worker_pool *p = arg;
    const uint64_t one = 1;

    pthread_mutex_lock(&p->mu);
    for (;;) {
        struct wjob *j;

        while (!p->todo.head && !p->stopping)
            pthread_cond_wait(&p->cv, &p->mu);
        j = wq_pop(&p->todo);
        if (!j)
            break; /* stopping and nothing left to run */
        pthread_mutex_unlock(&p->mu);

        j->job(j->arg);

        pthread_mutex_lock(&p->mu);
        wq_push(&p->finished, j);
        /*
         * Under the lock so the loop cannot miss it: either its read
         * callback has not yet taken the queue (and will see this job), or
         * it will be woken again by this write. EAGAIN (counter at its
         * maximum) still leaves the fd readable, so it is harmless.
         */
        if (write(p->efd, &one, sizeof(one)) < 0 && errno != EAGAIN)
            fatal("worker: eventfd write: %s", strerror(errno));
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* Runs the done callbacks of every finished job; loop thread. */
static void run_finished(struct worker_pool *p)
{
    struct wqueue batch;

    pthread_mutex_lock(&p->mu);
    batch = p->finished;
    p->finished.head = p->finished.tail = NULL;
    pthread_mutex_unlock(&p->mu);

    for (struct wjob *j = wq_pop(&batch); j; j = wq_pop(&batch)) {
        worker_done_fn *done = j->done;
        void *arg = j->arg;

        free(j);
        p->outstanding--;
        p->in_done = true;
        done(arg);
        p->in_done = false;
    }
}

static void on_eventfd(evutil_socket_t fd, short what, void *arg)
{
    struct worker_pool *p = arg;
    uint64_t n;

    (void)what;
    /* Reset the counter first: a worker finishing meanwhile re-arms it. */
    if (read(fd, &n, sizeof(n)) < 0 && errno != EAGAIN && errno != EINTR)
        fatal("worker: eventfd read: %s", strerror(errno));
    run_finished(p);
}

/* Joins the first n threads after telling them to stop. */
static void stop_threads(struct worker_pool *p, unsigned n)
{
    pthread_mutex_lock(&p->mu);
    p->stopping = true;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (unsigned i = 0; i < n; i++)
        pthread_join(p->threads[i], NULL);
}

struct worker_pool *worker_pool_new(struct event_base *base, unsigned threads,
                                    struct error *err)
{
    struct worker_pool *p;
    sigset_t all, old;
    unsigned started = 0;
    int rc = 0;

    if (!base || threads == 0 || threads > WORKER_MAX_THREADS) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "worker pool: threads must be 1..%d", WORKER_MAX_THREADS);
        return NULL;
    }
    p = xcalloc(1, sizeof(*p));
    p->base = base;
    p->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (p->efd < 0) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, true,
                  "worker pool: eventfd: %s", strerror(errno));
        free(p);
        return NULL;
    }
    p->ev = event_new(base, p->efd, EV_READ | EV_PERSIST, on_eventfd, p);
    if (!p->ev || event_add(p->ev, NULL) < 0) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, true,
                  "worker pool: cannot watch the eventfd");
        if (p->ev)
            event_free(p->ev);
        close(p->efd);
        free(p);
        return NULL;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->threads = xcalloc(threads, sizeof(*p->threads));

    /* Threads inherit the creator's mask: block everything for them. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    for (; started < threads; started++) {
        rc = pthread_create(&p->threads[started], NULL, worker_main, p);
        if (rc != 0)
            break;
        pthread_setname_np(p->threads[started], "postern-worker");
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);

    if (started < threads) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, true,
                  "worker pool: pthread_create: %s", strerror(rc));
        stop_threads(p, started);
        event_free(p->ev);
        close(p->efd);
        pthread_cond_destroy(&p->cv);
        pthread_mutex_destroy(&p->mu);
        free(p->threads);
        free(p);
        return NULL;
    }
    p->n_threads = threads;
    return p;
}

int worker_submit(struct worker_pool *p, worker_job_fn *job,
                  worker_done_fn *done, void *arg)
{
    struct wjob *j;

    if (!p || !job || !done || p->refusing)
        return -1;
    j = xcalloc(1, sizeof(*j));
    j->job = job;
    j->done = done;
    j->arg = arg;
    p->outstanding++;
    pthread_mutex_lock(&p->mu);
    wq_push(&p->todo, j);
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    return 0;
}

size_t worker_pending(const struct worker_pool *p)
{
    return p ? p->outstanding : 0;
}

void worker_pool_free(struct worker_pool *p)
{
    if (!p)
        return;
    if (p->in_done)
        fatal("worker_pool_free() called from a done callback");
    p->refusing = true;
    /* The threads drain the queue before they exit (see worker_main). */
    stop_threads(p, p->n_threads);
    /* Every job has finished now; pay what is owed. */
    while (p->outstanding > 0) {
        size_t before = p->outstanding;

        run_finished(p);
        if (p->outstanding == before)
            fatal("worker: %zu done callbacks lost", before);
    }
    event_free(p->ev);
    close(p->efd);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p->threads);
    free(p);
}
