/*
 * lmtp_in.c with a real event loop in-process: the server listens on
 * 127.0.0.1 port 0 and a plain-socket client speaks LMTP to it. Every wait
 * drives the loop until enough reply lines arrived, bounded by a deadline;
 * no test sleeps. The fake callbacks answer asynchronously (a zero-delay
 * event) or hold their completion for the test to release.
 *
 * Covers the greeting and LHLO, a transaction with accepted, unknown and
 * temporarily failing recipients and one DATA reply per accepted recipient
 * in order, pipelining, dot-unstuffing, SIZE= and oversized data (552),
 * command-order errors (503), RSET, QUIT, VRFY, HELO/EHLO, unknown and
 * overlong commands, the idle timeout, the connection cap, and clients or
 * a server that go away while a callback is out (late completions must be
 * harmless: run under ASan). The pure command parser is tested directly.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "email/lmtp_in.h"
#include "log.h"
#include "util.h"

#define WAIT_MS 5000
#define MAX_HELD 8

struct held {
    bool used;
    bool is_data;
    lmtp_rcpt_done_fn *rdone;
    lmtp_data_done_fn *ddone;
    void *ctx;
    enum lmtp_rcpt_result r;
};

struct t {
    struct event_base *base;
    struct lmtp_server *srv;
    int port;
    bool sync;      /* callbacks complete inside the call */
    bool hold_rcpt; /* keep rcpt completions for the test */
    bool hold_data; /* keep data completions for the test */
    struct held held[MAX_HELD];
    /* what the data callback saw */
    int data_calls;
    char mail_from[256];
    char rcpts[8][256];
    size_t nrcpts;
    char *data;
    size_t data_len;
    int rcpt_calls;
};

static struct t *cur;

/* ---- fake callbacks ---- */

static enum lmtp_rcpt_result verdict(const char *rcpt)
{
    if (strncmp(rcpt, "unknown", 7) == 0)
        return LMTP_RCPT_UNKNOWN;
    if (strncmp(rcpt, "temp", 4) == 0)
        return LMTP_RCPT_TEMPFAIL;
    return LMTP_RCPT_OK;
}

struct deferred {
    lmtp_rcpt_done_fn *rdone;
    lmtp_data_done_fn *ddone;
    void *ctx;
    enum lmtp_rcpt_result r;
    size_t n;
    char rcpts[8][256];
};

static void data_results(struct deferred *d, lmtp_data_done_fn *done, void *ctx)
{
    struct lmtp_result res[8];

    /* "full..." is over quota, "bounce..." fails for good, else fine */
    for (size_t i = 0; i < d->n; i++) {
        if (strncmp(d->rcpts[i], "full", 4) == 0)
            res[i] = (struct lmtp_result){452, "4.2.2", "over quota"};
        else if (strncmp(d->rcpts[i], "bounce", 6) == 0)
            res[i] = (struct lmtp_result){550, NULL, "line1\r\nline2"};
        else
            res[i] = (struct lmtp_result){0, NULL, NULL};
    }
    done(ctx, res);
}

static void deferred_cb(evutil_socket_t fd, short what, void *arg)
{
    struct deferred *d = arg;

    (void)fd;
    (void)what;
    if (d->rdone)
        d->rdone(d->ctx, d->r);
    else
        data_results(d, d->ddone, d->ctx);
    free(d);
}

static void defer(struct deferred *d)
{
    struct timeval tv = {0, 0};

    assert_int_equal(
        event_base_once(cur->base, -1, EV_TIMEOUT, deferred_cb, d, &tv), 0);
}

static struct held *hold(void)
{
    for (size_t i = 0; i < MAX_HELD; i++)
        if (!cur->held[i].used) {
            cur->held[i].used = true;
            return &cur->held[i];
        }
    fail_msg("too many held completions");
    abort(); /* fail_msg jumps away; this tells the compiler so */
}

static void fake_rcpt(void *arg, const char *rcpt, lmtp_rcpt_done_fn *done,
                      void *ctx)
{
    struct t *t = arg;
    struct deferred *d;

    t->rcpt_calls++;
    if (t->hold_rcpt) {
        struct held *h = hold();
        h->rdone = done;
        h->ctx = ctx;
        h->r = verdict(rcpt);
        return;
    }
    if (t->sync) {
        done(ctx, verdict(rcpt));
        return;
    }
    d = xcalloc(1, sizeof(*d));
    d->rdone = done;
    d->ctx = ctx;
    d->r = verdict(rcpt);
    defer(d);
}

static void fake_data(void *arg, const char *mail_from, char *const *rcpts,
                      size_t n, const char *data, size_t len,
                      lmtp_data_done_fn *done, void *ctx)
{
    struct t *t = arg;
    struct deferred *d = xcalloc(1, sizeof(*d));

    t->data_calls++;
    snprintf(t->mail_from, sizeof(t->mail_from), "%s", mail_from);
    assert_true(n <= 8);
    t->nrcpts = n;
    d->n = n;
    for (size_t i = 0; i < n; i++) {
        snprintf(t->rcpts[i], sizeof(t->rcpts[i]), "%s", rcpts[i]);
        snprintf(d->rcpts[i], sizeof(d->rcpts[i]), "%s", rcpts[i]);
    }
    free(t->data);
    t->data = xmalloc(len + 1);
    memcpy(t->data, data, len);
    t->data[len] = '\0';
    t->data_len = len;
    if (t->hold_data) {
        struct held *h = hold();
        h->is_data = true;
        h->ddone = done;
        h->ctx = ctx;
        free(d);
        return;
    }
    if (t->sync) {
        data_results(d, done, ctx);
        free(d);
        return;
    }
    d->ddone = done;
    d->ctx = ctx;
    defer(d);
}

/* Completes every held callback (after the client or server went). */
static void release_held(struct t *t)
{
    for (size_t i = 0; i < MAX_HELD; i++) {
        struct held *h = &t->held[i];
        if (!h->used)
            continue;
        h->used = false;
        if (h->is_data) {
            struct lmtp_result res[8];
            for (size_t k = 0; k < 8; k++)
                res[k] = (struct lmtp_result){0, NULL, NULL};
            h->ddone(h->ctx, res);
        } else {
            h->rdone(h->ctx, h->r);
        }
    }
}

/* ---- client ---- */

struct client {
    int fd;
    char buf[65536];
    size_t len;
    bool eof;
};

static void client_connect(struct t *t, struct client *c)
{
    struct sockaddr_in sa = {0};

    memset(c, 0, sizeof(*c));
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(c->fd >= 0);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)t->port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
}

static void client_send(struct client *c, const char *s)
{
    size_t n = strlen(s), off = 0;

    while (off < n) {
        ssize_t w = send(c->fd, s + off, n - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            event_base_loop(cur->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
            continue;
        }
        assert_true(w > 0);
        off += (size_t)w;
    }
}

/* Final reply lines ("xyz " after the code) in the buffer. */
static int final_lines(const struct client *c)
{
    int n = 0;
    const char *p = c->buf, *end = c->buf + c->len;

    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol)
            break;
        if (eol - p >= 4 && p[3] == ' ')
            n++;
        p = eol + 1;
    }
    return n;
}

static void pump(struct client *c)
{
    event_base_loop(cur->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    if (c && !c->eof && c->len < sizeof(c->buf) - 1) {
        ssize_t r = recv(c->fd, c->buf + c->len, sizeof(c->buf) - 1 - c->len,
                         MSG_DONTWAIT);
        if (r > 0)
            c->len += (size_t)r;
        else if (r == 0)
            c->eof = true;
        c->buf[c->len] = '\0';
    }
}

/*
 * Waits for n final replies and returns them (all lines, CRLF kept);
 * the client buffer is emptied. Returned owned.
 */
static char *expect(struct client *c, int n)
{
    uint64_t deadline = now_ms() + WAIT_MS;
    char *res;

    while (final_lines(c) < n && !c->eof && now_ms() < deadline)
        pump(c);
    if (final_lines(c) < n)
        fail_msg("wanted %d replies, got: \"%s\"%s", n, c->buf,
                 c->eof ? " (closed)" : "");
    /* a few more turns: nothing extra may arrive */
    for (int i = 0; i < 20; i++)
        pump(c);
    if (final_lines(c) != n)
        fail_msg("wanted exactly %d replies, got: \"%s\"", n, c->buf);
    res = xstrndup(c->buf, c->len);
    c->len = 0;
    c->buf[0] = '\0';
    return res;
}

static void expect_eq(struct client *c, int n, const char *want)
{
    char *got = expect(c, n);

    assert_string_equal(got, want);
    free(got);
}

static void wait_closed(struct client *c)
{
    uint64_t deadline = now_ms() + WAIT_MS;

    while (!c->eof && now_ms() < deadline)
        pump(c);
    assert_true(c->eof);
}

static void wait_until(bool (*cond)(struct t *), struct t *t)
{
    uint64_t deadline = now_ms() + WAIT_MS;

    while (!cond(t) && now_ms() < deadline)
        pump(NULL);
    assert_true(cond(t));
}

static bool no_conns(struct t *t)
{
    return lmtp_server_connections(t->srv) == 0;
}

static bool data_seen(struct t *t)
{
    return t->data_calls > 0;
}

static bool rcpt_seen(struct t *t)
{
    return t->rcpt_calls > 0;
}

static void client_close(struct client *c)
{
    close(c->fd);
    c->fd = -1;
}

/* Greeting and LHLO. */
static void hello(struct client *c)
{
    char *g = expect(c, 1);
    assert_string_equal(g, "220 gw.example.org LMTP postern ready\r\n");
    free(g);
    client_send(c, "LHLO mta.example.org\r\n");
    expect_eq(c, 1,
              "250-gw.example.org\r\n250-PIPELINING\r\n"
              "250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n"
              "250-SIZE 100000\r\n250 OK\r\n");
}

/* ---- fixtures ---- */

static int setup(void **state)
{
    struct lmtp_callbacks cbs = {fake_rcpt, fake_data, NULL};
    struct error err;
    struct t *t = xcalloc(1, sizeof(*t));

    t->base = event_base_new();
    assert_non_null(t->base);
    cbs.arg = t;
    t->srv = lmtp_server_new(t->base, "127.0.0.1:0", 100000, "gw.example.org",
                             &cbs, &err);
    if (!t->srv)
        fail_msg("%s", err.msg);
    t->port = lmtp_server_port(t->srv);
    assert_true(t->port > 0);
    cur = t;
    *state = t;
    return 0;
}

static int teardown(void **state)
{
    struct t *t = *state;

    lmtp_server_free(t->srv);
    /* late completions after the server is gone are harmless */
    release_held(t);
    /* run the zero-delay completions still queued */
    for (int i = 0; i < 10; i++)
        event_base_loop(t->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    event_base_free(t->base);
    free(t->data);
    free(t);
    cur = NULL;
    return 0;
}

/* ---- tests ---- */

static void test_transaction(void **state)
{
    struct t *t = *state;
    struct client c;

    client_connect(t, &c);
    hello(&c);
    client_send(&c, "MAIL FROM:<alice@example.com> BODY=8BITMIME\r\n");
    expect_eq(&c, 1, "250 2.1.0 OK\r\n");
    client_send(&c, "RCPT TO:<+14155552671@sms.example.org>\r\n");
    expect_eq(&c, 1, "250 2.1.5 OK\r\n");
    client_send(&c, "RCPT TO:<unknown@sms.example.org>\r\n");
    expect_eq(&c, 1, "550 5.1.1 No such user here\r\n");
    client_send(&c, "RCPT TO:<temp@sms.example.org>\r\n");
    expect_eq(&c, 1,
              "451 4.3.0 Cannot accept this recipient now, try again "
              "later\r\n");
    client_send(&c, "RCPT TO:<full@sms.example.org>\r\n");
    expect_eq(&c, 1, "250 2.1.5 OK\r\n");
    client_send(&c, "RCPT TO:<bounce@sms.example.org>\r\n");
    expect_eq(&c, 1, "250 2.1.5 OK\r\n");
    client_send(&c, "DATA\r\n");
    expect_eq(&c, 1, "354 Start mail input; end with <CRLF>.<CRLF>\r\n");
    client_send(&c, "Subject: hi\r\n\r\nHello\r\n.\r\n");
    /* one reply per accepted recipient, in RCPT order */
    expect_eq(&c, 3,
              "250 2.0.0 <+14155552671@sms.example.org> delivered\r\n"
              "452 4.2.2 <full@sms.example.org> over quota\r\n"
              "550 5.0.0 <bounce@sms.example.org> line1  line2\r\n");
    assert_int_equal(t->data_calls, 1);
    assert_string_equal(t->mail_from, "alice@example.com");
    assert_int_equal(t->nrcpts, 3);
    assert_string_equal(t->rcpts[0], "+14155552671@sms.example.org");
    assert_string_equal(t->rcpts[1], "full@sms.example.org");
    assert_string_equal(t->rcpts[2], "bounce@sms.example.org");
    assert_string_equal(t->data, "Subject: hi\r\n\r\nHello\r\n");

    /* a second transaction on the same connection */
    client_send(&c, "MAIL FROM:<>\r\n");
    expect_eq(&c, 1, "250 2.1.0 OK\r\n");
    client_send(&c, "RCPT TO:<x@sms.example.org>\r\n");
    expect_eq(&c, 1, "250 2.1.5 OK\r\n");
    client_send(&c, "DATA\r\n");
    expect_eq(&c, 1, "354 Start mail input; end with <CRLF>.<CRLF>\r\n");
    client_send(&c, "\r\n.\r\n");
    expect_eq(&c, 1, "250 2.0.0 <x@sms.example.org> delivered\r\n");
    assert_int_equal(t->data_calls, 2);
    assert_string_equal(t->mail_from, "");

    client_send(&c, "QUIT\r\n");
    expect_eq(&c, 1, "221 2.0.0 gw.example.org closing connection\r\n");
    wait_closed(&c);
    client_close(&c);
    wait_until(no_conns, t);
}

/* The same with callbacks that complete inside the call. */
static void test_transaction_sync(void **state)
{
    struct t *t = *state;
    struct client c;

    t->sync = true;
    client_connect(t, &c);
    hello(&c);
    client_send(&c, "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@x.org>\r\n"
                    "RCPT TO:<unknown@x.org>\r\nDATA\r\nbody\r\n.\r\n");
    expect_eq(&c, 5,
              "250 2.1.0 OK\r\n250 2.1.5 OK\r\n"
              "550 5.1.1 No such user here\r\n"
              "354 Start mail input; end with <CRLF>.<CRLF>\r\n"
              "250 2.0.0 <b@x.org> delivered\r\n");
    client_close(&c);
    wait_until(no_conns, t);
}

static void test_pipelining(void **state)
{
    struct t *t = *state;
    struct client c;

    client_connect(t, &c);
    free(expect(&c, 1));
    /* everything in one write; replies must keep command order although
     * each RCPT waits for an asynchronous check */
    client_send(&c, "LHLO mta\r\nMAIL FROM:<a@example.com> SIZE=500\r\n"
                    "RCPT TO:<one@x.org>\r\nRCPT TO:<unknown@x.org>\r\n"
                    "RCPT TO:<temp@x.org>\r\nRCPT TO:<two@x.org>\r\n"
                    "DATA\r\nline\r\n.\r\nNOOP\r\n");
    expect_eq(&c, 10,
              "250-gw.example.org\r\n250-PIPELINING\r\n"
              "250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n"
              "250-SIZE 100000\r\n250 OK\r\n"
              "250 2.1.0 OK\r\n250 2.1.5 OK\r\n"
              "550 5.1.1 No such user here\r\n"
              "451 4.3.0 Cannot accept this recipient now, try again "
              "later\r\n"
              "250 2.1.5 OK\r\n"
              "354 Start mail input; end with <CRLF>.<CRLF>\r\n"
              "250 2.0.0 <one@x.org> delivered\r\n"
              "250 2.0.0 <two@x.org> delivered\r\n"
              "250 2.0.0 OK\r\n");
    assert_string_equal(t->data, "line\r\n");
    client_close(&c);
    wait_until(no_conns, t);
}

static void test_dot_unstuffing(void **state)
{
    struct t *t = *state;
    struct client c;

    client_connect(t, &c);
    hello(&c);
    client_send(&c, "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@x.org>\r\n"
                    "DATA\r\n");
    free(expect(&c, 3));
    /* sent in pieces that split the markers */
    client_send(&c, "..leading dot\r\n.");
    pump(&c);
    client_send(&c, ".\r\nmiddle . dot\r\n...\r\nend.\r");
    pump(&c);
    client_send(&c, "\n.");
    pump(&c);
    client_send(&c, "\r\n");
    expect_eq(&c, 1, "250 2.0.0 <b@x.org> delivered\r\n");
    assert_string_equal(t->data, ".leading dot\r\n.\r\nmiddle . dot\r\n"
                                 "..\r\nend.\r\n");
    client_close(&c);
    wait_until(no_conns, t);
}

static void test_size_limits(void **state)
{
    struct t *t = *state;
    struct client c;
    struct strbuf big;

    client_connect(t, &c);
    hello(&c);
    /* declared too big: refused at once */
    client_send(&c, "MAIL FROM:<a@example.com> SIZE=100001\r\n");
    expect_eq(&c, 1,
              "552 5.3.4 Message size exceeds fixed limit of 100000\r\n");
    client_send(&c, "MAIL FROM:<a@example.com> SIZE=100000\r\n");
    expect_eq(&c, 1, "250 2.1.0 OK\r\n");
    client_send(&c, "RCPT TO:<b@x.org>\r\nRCPT TO:<c@x.org>\r\nDATA\r\n");
    free(expect(&c, 3));
    /* larger than announced: read to the end, not kept, 552 for each */
    sb_init(&big);
    for (int i = 0; i < 3000; i++)
        sb_puts(&big, "0123456789012345678901234567890123456789\r\n");
    sb_puts(&big, ".\r\n");
    client_send(&c, big.s);
    sb_free(&big);
    expect_eq(&c, 2,
              "552 5.3.4 Message size exceeds fixed limit of 100000\r\n"
              "552 5.3.4 Message size exceeds fixed limit of 100000\r\n");
    assert_int_equal(t->data_calls, 0);
    /* the connection goes on with a fresh transaction */
    client_send(&c, "DATA\r\n");
    expect_eq(&c, 1, "503 5.5.1 No valid recipients\r\n");
    client_send(&c, "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@x.org>\r\n"
                    "DATA\r\nsmall\r\n.\r\n");
    free(expect(&c, 4));
    assert_int_equal(t->data_calls, 1);
    assert_string_equal(t->data, "small\r\n");
    client_close(&c);
    wait_until(no_conns, t);
}

static void test_order_errors(void **state)
{
    struct t *t = *state;
    struct client c;

    client_connect(t, &c);
    free(expect(&c, 1));
    client_send(&c, "MAIL FROM:<a@example.com>\r\n");
    expect_eq(&c, 1, "503 5.5.1 Send LHLO first\r\n");
    client_send(&c, "HELO mta\r\n");
    expect_eq(&c, 1, "500 5.5.1 This is LMTP: use LHLO\r\n");
    client_send(&c, "EHLO mta\r\n");
    expect_eq(&c, 1, "500 5.5.1 This is LMTP: use LHLO\r\n");
    client_send(&c, "LHLO\r\n");
    expect_eq(&c, 1, "501 5.5.4 Syntax: LHLO hostname\r\n");
    client_send(&c, "LHLO mta\r\n");
    free(expect(&c, 1));
    client_send(&c, "RCPT TO:<b@x.org>\r\n");
    expect_eq(&c, 1, "503 5.5.1 Need MAIL before RCPT\r\n");
    client_send(&c, "DATA\r\n");
    expect_eq(&c, 1, "503 5.5.1 No valid recipients\r\n");
    client_send(&c, "MAIL FROM:<a@example.com>\r\n");
    expect_eq(&c, 1, "250 2.1.0 OK\r\n");
    client_send(&c, "MAIL FROM:<a@example.com>\r\n");
    expect_eq(&c, 1, "503 5.5.1 Nested MAIL command\r\n");
    /* only unknown recipients: DATA still refused */
    client_send(&c, "RCPT TO:<unknown@x.org>\r\n");
    expect_eq(&c, 1, "550 5.1.1 No such user here\r\n");
    client_send(&c, "DATA\r\n");
    expect_eq(&c, 1, "503 5.5.1 No valid recipients\r\n");
    /* RSET drops the accepted recipient */
    client_send(&c, "RCPT TO:<b@x.org>\r\n");
    expect_eq(&c, 1, "250 2.1.5 OK\r\n");
    client_send(&c, "RSET\r\n");
    expect_eq(&c, 1, "250 2.0.0 OK\r\n");
    client_send(&c, "DATA\r\n");
    expect_eq(&c, 1, "503 5.5.1 No valid recipients\r\n");
    client_send(&c, "RCPT TO:<b@x.org>\r\n");
    expect_eq(&c, 1, "503 5.5.1 Need MAIL before RCPT\r\n");
    client_send(&c, "NOOP\r\n");
    expect_eq(&c, 1, "250 2.0.0 OK\r\n");
    client_send(&c, "VRFY bob\r\n");
    expect_eq(&c, 1,
              "252 2.5.0 Cannot VRFY user, but will accept message and "
              "attempt delivery\r\n");
    client_send(&c, "STARTTLS\r\n");
    expect_eq(&c, 1, "500 5.5.2 Command not recognized\r\n");
    client_send(&c, "MAIL FROM:<a@example.com> FOO=bar\r\n");
    expect_eq(&c, 1, "555 5.5.4 Unsupported MAIL parameter\r\n");
    client_send(&c, "MAIL FROM:a@example.com\r\n");
    expect_eq(&c, 1, "501 5.5.4 Syntax: address must be in <>\r\n");
    assert_int_equal(t->data_calls, 0);
    client_send(&c, "QUIT\r\n");
    free(expect(&c, 1));
    wait_closed(&c);
    client_close(&c);
    wait_until(no_conns, t);
}

static void test_long_line(void **state)
{
    struct t *t = *state;
    struct client c;
    char line[LMTP_MAX_LINE * 3];

    client_connect(t, &c);
    hello(&c);
    memset(line, 'A', sizeof(line) - 3);
    memcpy(line, "NOOP ", 5);
    line[sizeof(line) - 3] = '\r';
    line[sizeof(line) - 2] = '\n';
    line[sizeof(line) - 1] = '\0';
    client_send(&c, line);
    expect_eq(&c, 1, "500 5.5.6 Line too long\r\n");
    client_send(&c, "NOOP\r\n");
    expect_eq(&c, 1, "250 2.0.0 OK\r\n");
    client_close(&c);
    wait_until(no_conns, t);
}

/* The client hangs up while the delivery callback is out. */
static void test_disconnect_during_data(void **state)
{
    struct t *t = *state;
    struct client c;

    t->hold_data = true;
    client_connect(t, &c);
    hello(&c);
    client_send(&c, "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@x.org>\r\n"
                    "DATA\r\nbody\r\n.\r\n");
    free(expect(&c, 3));
    wait_until(data_seen, t);
    client_close(&c);
    wait_until(no_conns, t);
    /* completes into nothing */
    release_held(t);
    for (int i = 0; i < 10; i++)
        pump(NULL);

    /* the server still works */
    t->hold_data = false;
    client_connect(t, &c);
    hello(&c);
    client_close(&c);
    wait_until(no_conns, t);
}

static void test_disconnect_during_rcpt(void **state)
{
    struct t *t = *state;
    struct client c;

    t->hold_rcpt = true;
    client_connect(t, &c);
    hello(&c);
    client_send(&c, "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@x.org>\r\n"
                    "RCPT TO:<c@x.org>\r\n");
    free(expect(&c, 1));
    wait_until(rcpt_seen, t);
    /* the second RCPT waits behind the first */
    assert_int_equal(t->rcpt_calls, 1);
    client_close(&c);
    wait_until(no_conns, t);
    release_held(t);
    for (int i = 0; i < 10; i++)
        pump(NULL);
    assert_int_equal(t->rcpt_calls, 1);
}

/* The server is freed with a callback out (teardown releases it). */
static void test_free_with_pending(void **state)
{
    struct t *t = *state;
    struct client c;

    t->hold_data = true;
    client_connect(t, &c);
    hello(&c);
    client_send(&c, "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@x.org>\r\n"
                    "DATA\r\nbody\r\n.\r\n");
    free(expect(&c, 3));
    wait_until(data_seen, t);
    lmtp_server_free(t->srv);
    t->srv = NULL;
    release_held(t);
    wait_closed(&c);
    client_close(&c);
}

static void test_idle_timeout(void **state)
{
    struct t *t = *state;
    struct client c;

    lmtp_server_set_limits(t->srv, 200, 0);
    client_connect(t, &c);
    hello(&c);
    expect_eq(&c, 1,
              "421 4.4.2 gw.example.org Idle timeout, closing connection\r\n");
    wait_closed(&c);
    client_close(&c);
    wait_until(no_conns, t);
}

static void test_connection_cap(void **state)
{
    struct t *t = *state;
    struct client a, b;

    lmtp_server_set_limits(t->srv, 0, 1);
    client_connect(t, &a);
    free(expect(&a, 1));
    client_connect(t, &b);
    expect_eq(&b, 1,
              "421 4.3.2 gw.example.org Too many connections, try again "
              "later\r\n");
    wait_closed(&b);
    client_close(&b);
    client_send(&a, "NOOP\r\n");
    expect_eq(&a, 1, "250 2.0.0 OK\r\n");
    client_close(&a);
    wait_until(no_conns, t);
}

static void test_parse_command(void **state)
{
    struct lmtp_cmd cmd;
    (void)state;

#define P(s) lmtp_parse_command(s, strlen(s), &cmd)
    P("mail from:<A@B.c> size=123 body=7bit");
    assert_int_equal(cmd.verb, LMTP_V_MAIL);
    assert_null(cmd.error);
    assert_string_equal(cmd.addr, "A@B.c");
    assert_int_equal(cmd.size, 123);

    P("MAIL FROM: <a@b.c>");
    assert_null(cmd.error);
    assert_string_equal(cmd.addr, "a@b.c");
    assert_int_equal(cmd.size, -1);

    P("MAIL FROM:<>");
    assert_null(cmd.error);
    assert_string_equal(cmd.addr, "");

    P("RCPT TO:<>");
    assert_non_null(cmd.error);

    P("RCPT TO:<@relay.example,@r2.example:u@x.org>");
    assert_null(cmd.error);
    assert_string_equal(cmd.addr, "u@x.org");

    P("RCPT TO:<\"a b>c\"@x.org>");
    assert_null(cmd.error);
    assert_string_equal(cmd.addr, "\"a b>c\"@x.org");

    P("RCPT TO:<a@x.org> NOTIFY=NEVER");
    assert_string_equal(cmd.error, "555 5.5.4 Unsupported RCPT parameter");

    P("RCPT TO:<a b@x.org>");
    assert_non_null(cmd.error);
    P("RCPT TO:<a@x.org");
    assert_non_null(cmd.error);
    P("RCPT TO:<a@x.org>junk");
    assert_non_null(cmd.error);
    P("MAIL FROM:<a@x.org> SIZE=12x");
    assert_string_equal(cmd.error, "501 5.5.4 Bad SIZE parameter");
    P("MAIL FROM:<a@x.org> SIZE=99999999999999999999");
    assert_non_null(cmd.error);
    P("MAIL TO:<a@x.org>");
    assert_non_null(cmd.error);

    lmtp_parse_command("RCPT TO:<a\0b@x.org>", 19, &cmd);
    assert_non_null(cmd.error);
    P("RCPT TO:<a\rb@x.org>");
    assert_non_null(cmd.error);

    char longaddr[400];
    memset(longaddr, 'a', sizeof(longaddr));
    memcpy(longaddr, "RCPT TO:<", 9);
    memcpy(longaddr + sizeof(longaddr) - 7, "@x.org>", 7);
    lmtp_parse_command(longaddr, sizeof(longaddr), &cmd);
    assert_string_equal(cmd.error, "501 5.1.3 Address too long");

    P("DATA");
    assert_int_equal(cmd.verb, LMTP_V_DATA);
    assert_null(cmd.error);
    P("data x");
    assert_non_null(cmd.error);
    P("LHLO mta.example.org");
    assert_int_equal(cmd.verb, LMTP_V_LHLO);
    assert_string_equal(cmd.addr, "mta.example.org");
    P("EHLO x");
    assert_int_equal(cmd.verb, LMTP_V_HELO);
    P("BDAT 10 LAST");
    assert_int_equal(cmd.verb, LMTP_V_UNKNOWN);
    P("");
    assert_int_equal(cmd.verb, LMTP_V_UNKNOWN);
    P("QUITX");
    assert_int_equal(cmd.verb, LMTP_V_UNKNOWN);
#undef P
}

static void test_bad_config(void **state)
{
    struct lmtp_callbacks cbs = {fake_rcpt, fake_data, NULL};
    struct event_base *base = event_base_new();
    struct error err;
    (void)state;

    assert_null(lmtp_server_new(base, "nohost", 10, "h", &cbs, &err));
    assert_null(lmtp_server_new(base, "example.org:24", 10, "h", &cbs, &err));
    assert_null(lmtp_server_new(base, "127.0.0.1:99999", 10, "h", &cbs, &err));
    assert_null(
        lmtp_server_new(base, "127.0.0.1:0", 10, "bad host", &cbs, &err));
    assert_null(lmtp_server_new(base, "127.0.0.1:0", 0, "h", &cbs, &err));
    cbs.data = NULL;
    assert_null(lmtp_server_new(base, "127.0.0.1:0", 10, "h", &cbs, &err));
    event_base_free(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_transaction, setup, teardown),
        cmocka_unit_test_setup_teardown(test_transaction_sync, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pipelining, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dot_unstuffing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_size_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_order_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_line, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disconnect_during_data, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_disconnect_during_rcpt, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_free_with_pending, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_idle_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connection_cap, setup, teardown),
        cmocka_unit_test(test_parse_command),
        cmocka_unit_test(test_bad_config),
    };
    log_init(L_WARNING, false, NULL, NULL);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
