/*
 * store_driver: a line-oriented front end to store.c and queue.c for the
 * integration tests (test_store_redis.py). Reads one command per line on
 * stdin, answers one line on stdout when the callback runs; delivery
 * events from queue.c come as lines starting with "EV ". Aborts when a
 * callback runs twice or from inside the call that started it, so the
 * tests see contract violations as a crash.
 *
 * Outbound: "oreg" registers a fake transport on a gateway's outbound
 * stream; every send prints "EV send BODY ATTEMPT MONO_MS" and ends as
 * "omode" says (ok, temp, perm, hold, flaky N: temporary for the first N
 * attempts, ra S: temporary with Retry-After S seconds on the first).
 *
 * usage: store_driver REDIS_URL PREFIX TIMEOUT_MS [CONSUMER]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "log.h"
#include "queue.h"
#include "store.h"

struct req {
    bool answered;
};

static struct event_base *base;
static struct store *st;
static struct queue *qu;
static bool in_call;
static unsigned issued, answered;
static char linebuf[65536];
static size_t linelen;
static struct event *wait_ev;
static int waiting_for = -1; /* 1 up, 0 down */

/* queue test state */
static const char *deliver_mode = "ok";
static bool gw_ready = true;
static deliver_done_fn *held_done;
static void *held_arg;

static struct req *req_new(void)
{
    struct req *r = xcalloc(1, sizeof(*r));
    issued++;
    return r;
}

static void req_answer(struct req *r)
{
    if (in_call) {
        fprintf(stderr, "store_driver: callback inside the call\n");
        abort();
    }
    if (r->answered) {
        fprintf(stderr, "store_driver: callback ran twice\n");
        abort();
    }
    r->answered = true;
    answered++;
    /* kept (leaked on purpose until exit would hide double calls): free */
    free(r);
}

static void print_err(const struct error *e)
{
    printf("err %s %d %s\n", e->temporary ? "temp" : "perm", e->code, e->msg);
}

static void done_cb(const struct error *err, void *arg)
{
    req_answer(arg);
    if (err)
        print_err(err);
    else
        printf("ok\n");
    fflush(stdout);
}

static void str_cb(const struct error *err, const char *v, void *arg)
{
    req_answer(arg);
    if (err)
        print_err(err);
    else if (v)
        printf("val %s\n", v);
    else
        printf("nil\n");
    fflush(stdout);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void list_cb(const struct error *err, size_t n, char *const *keys,
                    char *const *values, void *arg)
{
    char **lines;
    req_answer(arg);
    if (err) {
        print_err(err);
        fflush(stdout);
        return;
    }
    lines = xcalloc(n + 1, sizeof(*lines));
    for (size_t i = 0; i < n; i++)
        lines[i] =
            values ? xasprintf("%s=%s", keys[i], values[i]) : xstrdup(keys[i]);
    qsort(lines, n, sizeof(*lines), cmp_str);
    printf("list");
    for (size_t i = 0; i < n; i++) {
        printf(" %s", lines[i]);
        free(lines[i]);
    }
    printf("\n");
    fflush(stdout);
    free(lines);
}

static void entries_cb(const struct error *err, const struct store_entry *e,
                       size_t n, void *arg)
{
    req_answer(arg);
    if (err) {
        print_err(err);
        fflush(stdout);
        return;
    }
    printf("entries");
    for (size_t i = 0; i < n; i++)
        printf(" %s:%u:%s", e[i].id, e[i].deliveries, e[i].payload);
    printf("\n");
    fflush(stdout);
}

static void state_cb(bool up, void *arg)
{
    (void)arg;
    printf("EV state %s\n", up ? "up" : "down");
    fflush(stdout);
    if (waiting_for == (int)up) {
        waiting_for = -1;
        event_del(wait_ev);
        printf("%s\n", up ? "up" : "down");
        fflush(stdout);
    }
    if (up && qu)
        queue_kick(qu);
}

static void wait_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    waiting_for = -1;
    printf("timeout\n");
    fflush(stdout);
}

static void deliver(void *arg, const struct inmsg *m, deliver_done_fn *done,
                    void *done_arg)
{
    (void)arg;
    if (m->kind != INMSG_MESSAGE) {
        printf("EV notice %s %d %s %s %s\n",
               m->kind == INMSG_RECEIPT ? "receipt" : "error", m->cond,
               m->ref_id ? m->ref_id : "-", m->jid, m->contact);
        fflush(stdout);
        done(DELIVER_OK, done_arg);
        return;
    }
    printf("EV deliver %s %s %s\n", m->from_addr, m->to_addr,
           m->body ? m->body : "-");
    fflush(stdout);
    if (strcmp(deliver_mode, "hold") == 0) {
        held_done = done;
        held_arg = done_arg;
        return;
    }
    done(strcmp(deliver_mode, "retry") == 0  ? DELIVER_RETRY
         : strcmp(deliver_mode, "drop") == 0 ? DELIVER_DROP
                                             : DELIVER_OK,
         done_arg);
}

static bool ready(void *arg)
{
    (void)arg;
    return gw_ready;
}

/* ---- fake outbound transport ---- */

static char out_mode[16] = "ok";
static unsigned out_mode_n;

struct fake_done {
    outbound_done_fn *done;
    void *arg;
    int kind; /* 0 ok, 1 temp, 2 perm */
    unsigned retry_after_s;
    char *pid;
};

static struct fake_done held_out[256];
static size_t n_held_out;

static void fake_complete(struct fake_done *f)
{
    struct error e;

    if (f->kind == 0) {
        f->done(f->arg, NULL, f->pid, 0);
    } else {
        if (f->kind == 1)
            error_set(&e, COND_REMOTE_SERVER_TIMEOUT, true, "HTTP 503");
        else
            error_set(&e, COND_ITEM_NOT_FOUND, false, "no such number");
        e.retry_after_s = f->retry_after_s;
        f->done(f->arg, &e, NULL, 0);
    }
    free(f->pid);
}

static void fake_later(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    fake_complete(arg);
    free(arg);
}

static void fake_out_send(void *arg, const struct outmsg *m,
                          outbound_done_fn *done, void *done_arg)
{
    struct fake_done f = {done, done_arg, 0, 0, NULL};

    (void)arg;
    printf("EV send %s %u %llu\n", m->body ? m->body : "-", m->attempt,
           (unsigned long long)now_ms());
    fflush(stdout);
    f.pid = xasprintf("P-%s", m->body ? m->body : "-");
    if (strcmp(out_mode, "temp") == 0)
        f.kind = 1;
    else if (strcmp(out_mode, "perm") == 0)
        f.kind = 2;
    else if (strcmp(out_mode, "flaky") == 0)
        f.kind = m->attempt < out_mode_n ? 1 : 0;
    else if (strcmp(out_mode, "ra") == 0) {
        f.kind = m->attempt == 0 ? 1 : 0;
        f.retry_after_s = out_mode_n;
    }
    if (strcmp(out_mode, "hold") == 0 && n_held_out < 256) {
        held_out[n_held_out++] = f;
        return;
    }
    struct fake_done *p = xcalloc(1, sizeof(*p));
    *p = f;
    event_base_once(base, -1, EV_TIMEOUT, fake_later, p, NULL);
}

#define ARG(i) (argc > (i) ? argv[i] : "")

static void run_line(char *line)
{
    char *argv[8];
    int argc = 0;
    char *save = NULL;
    struct timeval tv;

    for (char *t = strtok_r(line, " ", &save); t && argc < 8;
         t = strtok_r(NULL, " ", &save))
        argv[argc++] = t;
    if (argc == 0)
        return;
    const char *c = argv[0];
    in_call = true;
    if (strcmp(c, "quit") == 0) {
        event_base_loopbreak(base);
    } else if (strcmp(c, "wait_up") == 0 || strcmp(c, "wait_down") == 0) {
        bool want = strcmp(c, "wait_up") == 0;
        if (store_connected(st) == want) {
            printf("%s\n", want ? "up" : "down");
        } else {
            long ms = atol(ARG(1));
            waiting_for = want;
            tv.tv_sec = ms / 1000;
            tv.tv_usec = (ms % 1000) * 1000;
            event_add(wait_ev, &tv);
        }
    } else if (strcmp(c, "ping") == 0) {
        store_ping(st, done_cb, req_new());
    } else if (strcmp(c, "reg_set") == 0) {
        store_reg_set(st, ARG(1), ARG(2), ARG(3), done_cb, req_new());
    } else if (strcmp(c, "reg_get_addr") == 0) {
        store_reg_get_addr(st, ARG(1), ARG(2), str_cb, req_new());
    } else if (strcmp(c, "reg_get_jid") == 0) {
        store_reg_get_jid(st, ARG(1), ARG(2), str_cb, req_new());
    } else if (strcmp(c, "reg_remove") == 0) {
        store_reg_remove(st, ARG(1), ARG(2), str_cb, req_new());
    } else if (strcmp(c, "reg_list") == 0) {
        store_reg_list(st, ARG(1), list_cb, req_new());
    } else if (strcmp(c, "contact_add") == 0) {
        store_contact_add(st, ARG(1), ARG(2), ARG(3), done_cb, req_new());
    } else if (strcmp(c, "contact_remove") == 0) {
        store_contact_remove(st, ARG(1), ARG(2), ARG(3), done_cb, req_new());
    } else if (strcmp(c, "contact_list") == 0) {
        store_contact_list(st, ARG(1), ARG(2), list_cb, req_new());
    } else if (strcmp(c, "sadd") == 0) {
        store_stream_add(st, ARG(1), strcmp(ARG(2), "-") ? ARG(2) : NULL, 60,
                         ARG(3), str_cb, req_new());
    } else if (strcmp(c, "sread") == 0 || strcmp(c, "sown") == 0) {
        void (*fn)(struct store *, const char *, const char *, const char *,
                   unsigned, unsigned, store_entries_fn *, void *) =
            strcmp(c, "sread") == 0 ? store_stream_read : store_stream_read_own;
        fn(st, ARG(1), "g", ARG(2), (unsigned)atoi(ARG(3)),
           (unsigned)atoi(ARG(4)), entries_cb, req_new());
    } else if (strcmp(c, "sack") == 0) {
        store_stream_ack(st, ARG(1), "g", ARG(2), done_cb, req_new());
    } else if (strcmp(c, "slen") == 0) {
        store_stream_len(st, ARG(1), str_cb, req_new());
    } else if (strcmp(c, "qreg") == 0) {
        queue_inbound_register(qu, ARG(1), deliver, ready, NULL);
        printf("ok\n");
    } else if (strcmp(c, "qpush") == 0) {
        struct inmsg m;
        memset(&m, 0, sizeof(m));
        m.from_addr = argv[2];
        m.to_addr = argv[3];
        m.body = argv[4];
        m.provider_id = argc > 5 ? argv[5] : NULL;
        queue_inbound_push(qu, ARG(1), &m, done_cb, req_new());
    } else if (strcmp(c, "qmode") == 0) {
        static char mode[16];
        snprintf(mode, sizeof(mode), "%s", ARG(1));
        deliver_mode = mode;
        printf("ok\n");
    } else if (strcmp(c, "qready") == 0) {
        gw_ready = atoi(ARG(1)) != 0;
        printf("ok\n");
    } else if (strcmp(c, "qrelease") == 0) {
        deliver_done_fn *d = held_done;
        held_done = NULL;
        printf("ok\n");
        fflush(stdout);
        in_call = false;
        if (d)
            d(strcmp(ARG(1), "retry") == 0 ? DELIVER_RETRY : DELIVER_OK,
              held_arg);
    } else if (strcmp(c, "oreg") == 0) {
        struct outbound_conf oc = {
            .concurrency = (unsigned)atoi(ARG(2)),
            .max_age_s = (unsigned)atoi(ARG(3)),
            .retry_base_ms = (unsigned)atoi(ARG(4)),
            .retry_cap_ms = (unsigned)atoi(ARG(5)),
            .claim_idle_ms = (unsigned)atoi(ARG(6)),
        };
        queue_outbound_register(qu, ARG(1), &oc, fake_out_send, NULL);
        printf("ok\n");
    } else if (strcmp(c, "opush") == 0) {
        struct outmsg m;
        char cj[128], fj[] = "alice@example.org/phone", fa[] = "+15550001111",
                      ta[] = "+15551234567";
        memset(&m, 0, sizeof(m));
        snprintf(cj, sizeof(cj), "+15551234567@%s", ARG(1));
        m.from_jid = fj;
        m.id = argv[2];
        m.to_jid = cj;
        m.from_addr = fa;
        m.to_addr = ta;
        m.body = argv[2];
        m.receipt = argc > 3;
        queue_outbound_push(qu, ARG(1), &m, done_cb, req_new());
    } else if (strcmp(c, "omode") == 0) {
        snprintf(out_mode, sizeof(out_mode), "%s", ARG(1));
        out_mode_n = (unsigned)atoi(ARG(2));
        printf("ok\n");
    } else if (strcmp(c, "orelease") == 0) {
        size_t n = n_held_out;
        n_held_out = 0;
        printf("ok\n");
        fflush(stdout);
        in_call = false;
        for (size_t i = 0; i < n; i++) {
            held_out[i].kind = strcmp(ARG(1), "temp") == 0 ? 1 : 0;
            fake_complete(&held_out[i]);
        }
    } else if (strcmp(c, "qstop") == 0) {
        queue_stop(qu);
        printf("ok\n");
    } else if (strcmp(c, "inflight") == 0) {
        printf("val %zu\n", queue_inflight(qu));
    } else if (strcmp(c, "stats") == 0) {
        printf("stats %u %u\n", issued, answered);
    } else {
        printf("unknown\n");
    }
    in_call = false;
    fflush(stdout);
}

static void stdin_cb(evutil_socket_t fd, short what, void *arg)
{
    ssize_t n;
    (void)what;
    (void)arg;

    if (linelen >= sizeof(linebuf) - 1)
        linelen = 0;
    n = read(fd, linebuf + linelen, sizeof(linebuf) - 1 - linelen);
    if (n <= 0) {
        event_base_loopbreak(base);
        return;
    }
    linelen += (size_t)n;
    for (;;) {
        char *nl = memchr(linebuf, '\n', linelen);
        if (!nl)
            break;
        *nl = '\0';
        run_line(linebuf);
        size_t used = (size_t)(nl - linebuf) + 1;
        memmove(linebuf, nl + 1, linelen - used);
        linelen -= used;
    }
}

int main(int argc, char **argv)
{
    struct error err;
    struct event *in;

    if (argc != 4 && argc != 5) {
        fprintf(stderr, "usage: store_driver URL PREFIX TIMEOUT_MS "
                        "[CONSUMER]\n");
        return 2;
    }
    log_init(L_DEBUG, false, NULL, &err);
    base = event_base_new();
    st = store_new(base, argv[1], argv[2], (unsigned)atoi(argv[3]), &err);
    if (!st) {
        printf("err %s\n", err.msg);
        return 1;
    }
    store_on_state(st, state_cb, NULL);
    qu = queue_new(base, st, argc == 5 ? argv[4] : "driver");
    wait_ev = event_new(base, -1, 0, wait_timeout, NULL);
    in = event_new(base, 0, EV_READ | EV_PERSIST, stdin_cb, NULL);
    event_add(in, NULL);
    event_base_dispatch(base);
    event_free(in);
    event_free(wait_ev);
    for (size_t i = 0; i < n_held_out; i++)
        free(held_out[i].pid);
    queue_free(qu);
    store_free(st);
    event_base_free(base);
    return 0;
}
