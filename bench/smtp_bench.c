/*
 * smtp_bench: outbound SMTP throughput of transports/email/smtp_out
 * (docs/benchmarks.md, "Email"). Drives smtp_out directly on a libevent
 * loop and sends N messages to a fast local SMTP sink that this program
 * runs on its own threads (one blocking thread per connection), once per
 * worker count given on the command line. Prints one line per run:
 * messages/s, sessions (connections the sink accepted) and failures.
 *
 * The sink speaks just enough SMTP for libESMTP (greeting, EHLO with
 * PIPELINING, MAIL/RCPT/DATA/RSET/NOOP/QUIT) and answers a whole
 * pipelined group in one write; it never checks or stores the mail. It
 * is a benchmark tool only: it must never be pointed at by a real config.
 *
 * Usage: smtp_bench [-n N] [-s SIZE] WORKERS...
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
#include "config.h"
#include "log.h"
#include "smtp_out.h"
#include "util.h"

static atomic_ulong sink_sessions;
static atomic_ulong sink_messages;

struct sink_out {
    char buf[4096];
    size_t len;
};

static int out_flush(int fd, struct sink_out *o)
{
    size_t off = 0;

    while (off < o->len) {
        ssize_t w = write(fd, o->buf + off, o->len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        off += (size_t)w;
    }
    o->len = 0;
    return 0;
}

static int out_add(int fd, struct sink_out *o, const char *s)
{
    size_t n = strlen(s);

    if (o->len + n > sizeof o->buf && out_flush(fd, o) < 0)
        return -1;
    memcpy(o->buf + o->len, s, n);
    o->len += n;
    return 0;
}

static bool verb_is(const char *line, size_t len, const char *verb)
{
    size_t n = strlen(verb);

    return len >= n && strncasecmp(line, verb, n) == 0;
}

/* One connection, blocking; returns when the client quits or goes. */
static void *sink_conn(void *p)
{
    int fd = (int)(intptr_t)p;
    static char greet[] = "220 sink ESMTP\r\n";
    char in[65536];
    size_t have = 0;
    bool in_data = false, quit = false;
    struct sink_out o = {.len = 0};

    atomic_fetch_add(&sink_sessions, 1);
    if (write(fd, greet, sizeof greet - 1) < 0)
        goto out;
    while (!quit) {
        ssize_t r = read(fd, in + have, sizeof in - have);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        have += (size_t)r;
        size_t start = 0;
        for (;;) {
            char *nl = memchr(in + start, '\n', have - start);
            if (!nl)
                break;
            const char *line = in + start;
            size_t len = (size_t)(nl - line);
            if (len && line[len - 1] == '\r')
                len--;
            start = (size_t)(nl - in) + 1;
            int rc = 0;
            if (in_data) {
                if (len == 1 && line[0] == '.') {
                    in_data = false;
                    atomic_fetch_add(&sink_messages, 1);
                    rc = out_add(fd, &o, "250 2.0.0 queued\r\n");
                }
            } else if (verb_is(line, len, "EHLO")) {
                rc = out_add(fd, &o,
                             "250-sink\r\n250-PIPELINING\r\n"
                             "250-8BITMIME\r\n250 SIZE 104857600\r\n");
            } else if (verb_is(line, len, "DATA")) {
                in_data = true;
                rc = out_add(fd, &o, "354 go ahead\r\n");
            } else if (verb_is(line, len, "QUIT")) {
                rc = out_add(fd, &o, "221 bye\r\n");
                quit = true;
                break;
            } else {
                /* MAIL, RCPT, RSET, NOOP, HELO: all fine. */
                rc = out_add(fd, &o, "250 ok\r\n");
            }
            if (rc < 0)
                goto out;
        }
        memmove(in, in + start, have - start);
        have -= start;
        if (have == sizeof in) /* a line longer than the buffer: skip */
            have = 0;
        if (out_flush(fd, &o) < 0)
            break;
    }
    out_flush(fd, &o);
out:
    close(fd);
    return NULL;
}

static void *sink_accept(void *p)
{
    int lfd = (int)(intptr_t)p;

    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return NULL;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        pthread_t t;
        if (pthread_create(&t, NULL, sink_conn, (void *)(intptr_t)fd) != 0) {
            close(fd);
            continue;
        }
        pthread_detach(t);
    }
}

static int sink_start(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t al = sizeof a;
    int one = 1;
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    pthread_t t;

    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (lfd < 0 ||
        setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(lfd, (struct sockaddr *)&a, sizeof a) < 0 ||
        listen(lfd, 128) < 0 ||
        getsockname(lfd, (struct sockaddr *)&a, &al) < 0 ||
        pthread_create(&t, NULL, sink_accept, (void *)(intptr_t)lfd) != 0) {
        perror("smtp_bench: sink");
        exit(1);
    }
    pthread_detach(t);
    return ntohs(a.sin_port);
}

struct run {
    struct event_base *base;
    size_t want, done, failed;
    double t_last;
    char first_err[160];
};

static void on_done(void *arg, const struct error *err)
{
    struct run *r = arg;

    if (err) {
        if (r->failed++ == 0)
            snprintf(r->first_err, sizeof r->first_err, "%s", err->msg);
    }
    if (++r->done == r->want) {
        r->t_last = bench_now();
        event_base_loopbreak(r->base);
    }
}

static char *make_message(size_t size, size_t *len)
{
    static const char head[] = "From: <bench@example.org>\r\n"
                               "To: <sink@example.net>\r\n"
                               "Subject: smtp_bench\r\n"
                               "Message-ID: <bench@example.org>\r\n"
                               "Date: Sun, 22 Nov 2026 06:00:00 +0000\r\n"
                               "MIME-Version: 1.0\r\n"
                               "Content-Type: text/plain; charset=utf-8\r\n"
                               "\r\n";
    size_t n = strlen(head);
    char *m = xmalloc(n + size + 80);

    memcpy(m, head, n);
    while (n < size) {
        /* 72-character lines, one starting with '.' to exercise
         * dot-stuffing */
        memcpy(m + n,
               ".the quick brown fox jumps over the lazy dog, "
               "0123456789 abcdefghijklmn\r\n",
               74);
        n += 74;
    }
    *len = n;
    return m;
}

int main(int argc, char **argv)
{
    size_t n = 5000, size = 1024;
    int opt;
    struct error err;

    while ((opt = getopt(argc, argv, "n:s:")) != -1) {
        if (opt == 'n')
            n = strtoul(optarg, NULL, 10);
        else if (opt == 's')
            size = strtoul(optarg, NULL, 10);
        else {
            fprintf(stderr, "usage: smtp_bench [-n N] [-s SIZE] WORKERS...\n");
            return 2;
        }
    }
    if (optind >= argc || n == 0) {
        fprintf(stderr, "usage: smtp_bench [-n N] [-s SIZE] WORKERS...\n");
        return 2;
    }
    if (log_init(L_WARNING, false, "", &err) < 0) {
        fprintf(stderr, "smtp_bench: log: %s\n", err.msg);
        return 1;
    }
    int port = sink_start();
    size_t len;
    char *data = make_message(size, &len);
    struct event_base *base = event_base_new();
    int status = 0;
    /* smtp_conf holds mutable strings (config.c owns them); these are
     * only read by smtp_out_new. */
    char host[] = "127.0.0.1", off[] = "off", empty[] = "";

    printf("%-8s %8s %8s %10s %9s %7s\n", "workers", "messages", "bytes",
           "seconds", "msgs/s", "sessions");
    for (int i = optind; i < argc; i++) {
        unsigned workers = (unsigned)strtoul(argv[i], NULL, 10);
        struct smtp_conf conf = {
            .host = host,
            .port = port,
            .starttls = off,
            .user = empty,
            .password = empty,
            .timeout = 30,
            .workers = workers,
        };
        struct run r = {.base = base, .want = n};
        struct smtp_out *so = smtp_out_new(base, &conf, "bench.local", &err);
        if (!so) {
            fprintf(stderr, "smtp_bench: smtp_out_new: %s\n", err.msg);
            return 1;
        }
        unsigned long s0 = atomic_load(&sink_sessions);
        unsigned long m0 = atomic_load(&sink_messages);
        struct smtp_msg m = {.mail_from = "bench@example.org",
                             .rcpt = "sink@example.net",
                             .data = data,
                             .len = len};
        double t0 = bench_now();
        for (size_t k = 0; k < n; k++) {
            if (smtp_out_send(so, &m, on_done, &r, &err) < 0) {
                fprintf(stderr, "smtp_bench: send: %s\n", err.msg);
                return 1;
            }
        }
        event_base_dispatch(base);
        double secs = r.t_last - t0;
        smtp_out_free(so);
        unsigned long sessions = atomic_load(&sink_sessions) - s0;
        unsigned long got = atomic_load(&sink_messages) - m0;
        printf("%-8u %8zu %8zu %10.3f %9.0f %7lu\n", workers, n, len, secs,
               (double)(n - r.failed) / secs, sessions);
        if (r.failed || got != n) {
            fprintf(stderr,
                    "smtp_bench: %zu failed (first: %s), sink got %lu\n",
                    r.failed, r.first_err, got);
            status = 1;
        }
        fflush(stdout);
    }
    event_base_free(base);
    free(data);
    log_close();
    return status;
}
