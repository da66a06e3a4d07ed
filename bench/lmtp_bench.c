/*
 * lmtp_bench: inbound LMTP throughput of transports/email/lmtp_in, and
 * mime_parse throughput (docs/benchmarks.md, "Email").
 *
 * The LMTP server runs in this process on a libevent loop (main thread)
 * with callbacks that accept every recipient and deliver every message at
 * once, so the figure is the protocol engine alone: in the daemon each
 * message also costs a GMime parse and a Redis push. K client threads
 * (blocking sockets) share N messages of about SIZE bytes; each keeps one
 * connection, says LHLO once, then per message pipelines MAIL, RCPT and
 * DATA, sends the body after 354 and waits for the 250. Then mime_parse
 * runs M times on the same message. Benchmark tool only.
 *
 * Usage: lmtp_bench [-n N] [-s SIZE] [-m M] K...
 */
#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bench.h"
#include "lmtp_in.h"
#include "log.h"
#include "mime.h"
#include "util.h"

static atomic_ulong srv_msgs;

static void on_rcpt(void *arg, const char *rcpt, lmtp_rcpt_done_fn *done,
                    void *ctx)
{
    (void)arg;
    (void)rcpt;
    done(ctx, LMTP_RCPT_OK);
}

static void on_data(void *arg, const char *mail_from, char *const *rcpts,
                    size_t n, const char *data, size_t len,
                    lmtp_data_done_fn *done, void *ctx)
{
    struct lmtp_result res[LMTP_MAX_RCPTS];

    (void)arg;
    (void)mail_from;
    (void)rcpts;
    (void)data;
    (void)len;
    memset(res, 0, sizeof res);
    atomic_fetch_add(&srv_msgs, 1);
    done(ctx, res);
    (void)n;
}

struct client {
    pthread_t t;
    int port;
    size_t count;
    const char *msg;
    size_t len;
    atomic_int *ready;
    atomic_int *go;
    atomic_int *finished;
    int failed;
    char in[8192];
    size_t have;
};

/* Reads one reply (all its lines); returns its code or -1. */
static int read_reply(int fd, struct client *c)
{
    for (;;) {
        char *nl;
        size_t start = 0;
        while ((nl = memchr(c->in + start, '\n', c->have - start))) {
            const char *line = c->in + start;
            size_t llen = (size_t)(nl - line) + 1;
            start += llen;
            if (llen >= 4 && line[3] == ' ') {
                int code = atoi(line);
                memmove(c->in, c->in + start, c->have - start);
                c->have -= start;
                return code;
            }
        }
        memmove(c->in, c->in + start, c->have - start);
        c->have -= start;
        if (c->have == sizeof c->in)
            return -1;
        ssize_t r = read(fd, c->in + c->have, sizeof c->in - c->have);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        c->have += (size_t)r;
    }
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void *client_main(void *p)
{
    struct client *c = p;
    struct sockaddr_in a = {.sin_family = AF_INET};
    static const char cmds[] = "MAIL FROM:<sender@example.net>\r\n"
                               "RCPT TO:<user@mail.example.org>\r\n"
                               "DATA\r\n";
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    a.sin_port = htons((uint16_t)c->port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        c->failed = 1;
        atomic_fetch_add(c->ready, 1);
        goto out;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (read_reply(fd, c) != 220 ||
        write_all(fd, "LHLO bench.local\r\n", 18) < 0 ||
        read_reply(fd, c) != 250)
        c->failed = 1;
    atomic_fetch_add(c->ready, 1);
    while (!atomic_load(c->go))
        usleep(100);
    for (size_t i = 0; i < c->count && !c->failed; i++) {
        if (write_all(fd, cmds, sizeof cmds - 1) < 0 ||
            read_reply(fd, c) != 250 || read_reply(fd, c) != 250 ||
            read_reply(fd, c) != 354 || write_all(fd, c->msg, c->len) < 0 ||
            write_all(fd, ".\r\n", 3) < 0 || read_reply(fd, c) != 250)
            c->failed = 1;
    }
    if (!c->failed &&
        (write_all(fd, "QUIT\r\n", 6) < 0 || read_reply(fd, c) != 221))
        c->failed = 1;
out:
    if (fd >= 0)
        close(fd);
    atomic_fetch_add(c->finished, 1);
    return NULL;
}

struct waiter {
    struct event_base *base;
    atomic_int ready, go, finished;
    int k;
    double t0, t_end;
};

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct waiter *w = arg;

    (void)fd;
    (void)what;
    if (!atomic_load(&w->go) && atomic_load(&w->ready) == w->k) {
        w->t0 = bench_now();
        atomic_store(&w->go, 1);
    }
    if (atomic_load(&w->finished) == w->k) {
        w->t_end = bench_now();
        event_base_loopbreak(w->base);
    }
}

/* About size bytes: a plain-text mail as an MTA would hand it over. */
static char *make_message(size_t size, size_t *len)
{
    static const char head[] =
        "Return-Path: <sender@example.net>\r\n"
        "Received: from mx.example.net (mx.example.net [192.0.2.25])\r\n"
        "\tby mail.example.org (Postfix) with ESMTPS id 4Bench\r\n"
        "\tfor <user@mail.example.org>; Sun, 22 Nov 2026 06:00:00 +0000\r\n"
        "From: \"Sender Name\" <sender@example.net>\r\n"
        "To: <user@mail.example.org>\r\n"
        "Subject: =?UTF-8?Q?Bench_message_=C3=A9?=\r\n"
        "Date: Sun, 22 Nov 2026 06:00:00 +0000\r\n"
        "Message-ID: <bench.1@example.net>\r\n"
        "In-Reply-To: <prev.1@mail.example.org>\r\n"
        "References: <root.1@example.net> <prev.1@mail.example.org>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8; format=flowed\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n";
    static const char line[] = "Lorem ipsum dolor sit amet, consectetur "
                               "adipiscing elit, sed do eiusmod.\r\n";
    size_t n = strlen(head);
    char *m = xmalloc(n + size + sizeof line);

    memcpy(m, head, n);
    while (n + sizeof line - 1 <= size) {
        memcpy(m + n, line, sizeof line - 1);
        n += sizeof line - 1;
    }
    *len = n;
    return m;
}

static int run_lmtp(struct event_base *base, int port, int k, size_t n,
                    const char *msg, size_t len)
{
    struct client *cl = xcalloc((size_t)k, sizeof *cl);
    struct waiter w = {.base = base, .k = k};
    struct timeval tv = {0, 1000};
    struct event *tick = event_new(base, -1, EV_PERSIST, on_tick, &w);
    unsigned long m0 = atomic_load(&srv_msgs);
    int failed = 0;

    for (int i = 0; i < k; i++) {
        cl[i].port = port;
        cl[i].count = n / (size_t)k + ((size_t)i < n % (size_t)k);
        cl[i].msg = msg;
        cl[i].len = len;
        cl[i].ready = &w.ready;
        cl[i].go = &w.go;
        cl[i].finished = &w.finished;
        if (pthread_create(&cl[i].t, NULL, client_main, &cl[i]) != 0)
            fatal("pthread_create");
    }
    /* Timing starts when every client is connected and has said LHLO. */
    event_add(tick, &tv);
    event_base_dispatch(base);
    event_free(tick);
    for (int i = 0; i < k; i++) {
        pthread_join(cl[i].t, NULL);
        failed |= cl[i].failed;
    }
    double secs = w.t_end - w.t0;
    unsigned long got = atomic_load(&srv_msgs) - m0;
    printf("%-6d %8zu %7zu %9.3f %9.0f %9.1f\n", k, n, len, secs,
           (double)got / secs, (double)got * (double)len / secs / 1e6);
    fflush(stdout);
    free(cl);
    if (failed || got != n) {
        fprintf(stderr, "lmtp_bench: K=%d failed, server got %lu of %zu\n", k,
                got, n);
        return -1;
    }
    return 0;
}

static int run_mime(size_t m, const char *msg, size_t len)
{
    struct error err;
    struct mail_parsed p;

    mime_global_init();
    double t0 = bench_now();
    for (size_t i = 0; i < m; i++) {
        if (mime_parse(msg, len, &p, &err) < 0) {
            fprintf(stderr, "lmtp_bench: mime_parse: %s\n", err.msg);
            mime_parsed_free(&p);
            return -1;
        }
        if (i == 0 && (!p.from_addr || !p.subject || !p.text[0])) {
            fprintf(stderr, "lmtp_bench: mime_parse: fields missing\n");
            mime_parsed_free(&p);
            return -1;
        }
        mime_parsed_free(&p);
    }
    double secs = bench_now() - t0;
    printf("mime_parse %zu x %zu bytes: %.3f s, %.0f parses/s, %.1f us each\n",
           m, len, secs, (double)m / secs, secs / (double)m * 1e6);
    mime_global_cleanup();
    return 0;
}

int main(int argc, char **argv)
{
    size_t n = 20000, size = 2048, m = 20000;
    int opt, status = 0;
    struct error err;

    while ((opt = getopt(argc, argv, "n:s:m:")) != -1) {
        if (opt == 'n')
            n = strtoul(optarg, NULL, 10);
        else if (opt == 's')
            size = strtoul(optarg, NULL, 10);
        else if (opt == 'm')
            m = strtoul(optarg, NULL, 10);
        else {
            fprintf(stderr, "usage: lmtp_bench [-n N] [-s SIZE] [-m M] K...\n");
            return 2;
        }
    }
    if (optind >= argc || n == 0) {
        fprintf(stderr, "usage: lmtp_bench [-n N] [-s SIZE] [-m M] K...\n");
        return 2;
    }
    if (log_init(L_WARNING, false, "", &err) < 0) {
        fprintf(stderr, "lmtp_bench: log: %s\n", err.msg);
        return 1;
    }
    size_t len;
    char *msg = make_message(size, &len);
    struct event_base *base = event_base_new();
    struct lmtp_callbacks cbs = {.rcpt = on_rcpt, .data = on_data};
    struct lmtp_server *srv = lmtp_server_new(
        base, "127.0.0.1:0", 10u * 1024 * 1024, "bench.local", &cbs, &err);
    if (!srv) {
        fprintf(stderr, "lmtp_bench: lmtp_server_new: %s\n", err.msg);
        return 1;
    }
    printf("%-6s %8s %7s %9s %9s %9s\n", "conns", "messages", "bytes",
           "seconds", "msgs/s", "MB/s");
    for (int i = optind; i < argc; i++) {
        int k = atoi(argv[i]);
        if (k < 1 || k > LMTP_MAX_CONNS) {
            fprintf(stderr, "lmtp_bench: K must be 1..%d\n", LMTP_MAX_CONNS);
            return 2;
        }
        if (run_lmtp(base, lmtp_server_port(srv), k, n, msg, len) < 0)
            status = 1;
    }
    lmtp_server_free(srv);
    event_base_free(base);
    if (m && run_mime(m, msg, len) < 0)
        status = 1;
    free(msg);
    log_close();
    return status;
}
