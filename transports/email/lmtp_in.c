/*
 * lmtp_in: see lmtp_in.h. Owns the LMTP listener, its connections and the
 * protocol state of each: greeting, LHLO, one mail transaction at a time,
 * the dot-terminated data stream, and one reply per accepted recipient
 * after it (RFC 2033 4.2).
 *
 * Commands are handled strictly one at a time. While a recipient check or
 * a delivery is out with the callbacks, later (pipelined) commands wait in
 * the input buffer, which is how replies stay in command order; the read
 * high-watermark bounds what waits. Each outstanding callback holds an op
 * that points back at its connection; closing a connection detaches the
 * op, so a late completion finds no connection and only frees the op. A
 * connection is freed from its own zero-delay event, never inside a
 * bufferevent callback.
 *
 * Message data is unstuffed as it arrives and stops being kept as soon as
 * it passes max_message_size (the rest is read and thrown away, then every
 * recipient gets 552). It must never block, never log message contents
 * above debug, and never let one client's input grow memory beyond the
 * line limit, the watermark and max_message_size.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "lmtp_in.h"
#include "netaddr.h"
#include "log.h"
#include "util.h"

#define MOD "lmtp"
/* Input held while a callback is pending (pipelined commands). */
#define READ_HIGH (256 * 1024)
/* Bad commands tolerated on one connection before 421. */
#define MAX_ERRORS 20

enum phase { PH_CMD, PH_DATA };

/* Where the data parser stands relative to the start of a line. */
enum dstate { D_BOL, D_MID, D_CR, D_DOT, D_DOT_CR };

struct lmtp_conn;

/* One callback out: a recipient check or a delivery. */
struct lmtp_op {
    struct lmtp_conn *conn; /* NULL once the connection has gone */
    char *rcpt;             /* RCPT: the address asked about */
    /* DATA: the transaction, owned here until done */
    char *mail_from;
    char **rcpts;
    size_t n;
    char *data;
};

struct lmtp_conn {
    struct lmtp_server *srv;
    struct lmtp_conn *prev, *next;
    struct bufferevent *bev;
    struct event *later; /* resume processing, or free when dead */
    struct lmtp_op *op;  /* pending callback */
    enum phase phase;
    bool greeted;    /* LHLO seen */
    bool closing;    /* flush output, then close */
    bool dead;       /* free at the next turn */
    bool discarding; /* inside an overlong command line */
    unsigned errors;
    /* transaction */
    char *mail_from; /* NULL outside a transaction */
    char **rcpts;
    size_t nrcpts;
    /* data */
    enum dstate dstate;
    char *data;
    size_t dlen, dcap;
    bool oversized;
};

struct lmtp_server {
    struct event_base *base;
    struct evconnlistener *lis;
    size_t max_size;
    char *hostname;
    struct lmtp_callbacks cbs;
    struct lmtp_conn *conns;
    size_t nconns;
    size_t max_conns;
    unsigned idle_ms;
};

/* ---- command parser (pure) ---- */

static bool cmd_is(const char *line, size_t vlen, const char *verb)
{
    return vlen == strlen(verb) && strncasecmp(line, verb, vlen) == 0;
}

/* Parses "<path>" at *pp; fills out; 0 or -1 with cmd->error set. */
/* The line is not NUL-terminated: check [s, s+n) against the route set. */
static bool route_chars_ok(const char *s, size_t n)
{
    static const char ok[] = "@.,-[]0123456789abcdefghijklmnopqrstuvwxyz"
                             "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    for (size_t i = 0; i < n; i++)
        if (!s[i] || !strchr(ok, s[i]))
            return false;
    return true;
}

static int parse_path(const char **pp, const char *end, struct lmtp_cmd *cmd,
                      bool allow_empty)
{
    const char *p = *pp, *start;
    bool quoted = false;
    size_t n;

    while (p < end && *p == ' ')
        p++;
    if (p >= end || *p != '<') {
        cmd->error = "501 5.5.4 Syntax: address must be in <>";
        return -1;
    }
    start = ++p;
    for (; p < end; p++) {
        if (*p == '\t') {
            cmd->error = "501 5.1.3 Bad address syntax";
            return -1;
        }
        if (quoted) {
            if (*p == '\\' && p + 1 < end) {
                if (*++p == '\t') {
                    cmd->error = "501 5.1.3 Bad address syntax";
                    return -1;
                }
            } else if (*p == '"')
                quoted = false;
            continue;
        }
        if (*p == '"')
            quoted = true;
        else if (*p == '>')
            break;
        else if (*p == ' ' || *p == '<') {
            cmd->error = "501 5.1.3 Bad address syntax";
            return -1;
        }
    }
    if (p >= end) {
        cmd->error = "501 5.5.4 Syntax: missing >";
        return -1;
    }
    n = (size_t)(p - start);
    /* RFC 5321 4.1.2: a source route is accepted and ignored. */
    if (n && *start == '@') {
        const char *colon = memchr(start, ':', n);
        size_t rlen = colon ? (size_t)(colon - start) : 0;
        /* a route is "@host,@host": hosts, dots, commas, literals */
        if (!colon || !route_chars_ok(start, rlen)) {
            cmd->error = "501 5.1.3 Bad address syntax";
            return -1;
        }
        n -= (size_t)(colon + 1 - start);
        start = colon + 1;
    }
    if (n >= sizeof(cmd->addr)) {
        cmd->error = "501 5.1.3 Address too long";
        return -1;
    }
    if (n == 0 && !allow_empty) {
        cmd->error = "501 5.1.3 Bad address syntax";
        return -1;
    }
    memcpy(cmd->addr, start, n);
    cmd->addr[n] = '\0';
    *pp = p + 1;
    return 0;
}

static int parse_size(const char *v, size_t n, long long *out)
{
    long long x = 0;

    if (n == 0 || n > 18)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        x = x * 10 + (v[i] - '0');
    }
    *out = x;
    return 0;
}

/* ESMTP parameters after the path. */
static void parse_params(const char *p, const char *end, struct lmtp_cmd *cmd,
                         bool mail)
{
    while (p < end) {
        const char *k, *eq, *v;
        size_t kn, vn;

        if (*p == ' ') {
            p++;
            continue;
        }
        k = p;
        while (p < end && *p != ' ')
            p++;
        eq = memchr(k, '=', (size_t)(p - k));
        kn = eq ? (size_t)(eq - k) : (size_t)(p - k);
        v = eq ? eq + 1 : p;
        vn = (size_t)(p - v);
        if (!mail) {
            cmd->error = "555 5.5.4 Unsupported RCPT parameter";
            return;
        }
        if (kn == 4 && strncasecmp(k, "SIZE", 4) == 0) {
            if (!eq || parse_size(v, vn, &cmd->size) != 0) {
                cmd->error = "501 5.5.4 Bad SIZE parameter";
                return;
            }
        } else if (kn == 4 && strncasecmp(k, "BODY", 4) == 0) {
            if (!eq || !((vn == 4 && strncasecmp(v, "7BIT", 4) == 0) ||
                         (vn == 8 && strncasecmp(v, "8BITMIME", 8) == 0))) {
                cmd->error = "501 5.5.4 Bad BODY parameter";
                return;
            }
        } else {
            cmd->error = "555 5.5.4 Unsupported MAIL parameter";
            return;
        }
    }
}

void lmtp_parse_command(const char *line, size_t len, struct lmtp_cmd *cmd)
{
    const char *end = line + len, *p = line;
    size_t vlen;

    memset(cmd, 0, sizeof(*cmd));
    cmd->size = -1;
    while (p < end && *p != ' ')
        p++;
    vlen = (size_t)(p - line);
    cmd->has_args = p < end;

    if (cmd_is(line, vlen, "LHLO"))
        cmd->verb = LMTP_V_LHLO;
    else if (cmd_is(line, vlen, "HELO") || cmd_is(line, vlen, "EHLO"))
        cmd->verb = LMTP_V_HELO;
    else if (cmd_is(line, vlen, "MAIL"))
        cmd->verb = LMTP_V_MAIL;
    else if (cmd_is(line, vlen, "RCPT"))
        cmd->verb = LMTP_V_RCPT;
    else if (cmd_is(line, vlen, "DATA"))
        cmd->verb = LMTP_V_DATA;
    else if (cmd_is(line, vlen, "RSET"))
        cmd->verb = LMTP_V_RSET;
    else if (cmd_is(line, vlen, "NOOP"))
        cmd->verb = LMTP_V_NOOP;
    else if (cmd_is(line, vlen, "QUIT"))
        cmd->verb = LMTP_V_QUIT;
    else if (cmd_is(line, vlen, "VRFY"))
        cmd->verb = LMTP_V_VRFY;
    else
        cmd->verb = LMTP_V_UNKNOWN;

    for (const char *q = line; q < end; q++) {
        unsigned char c = (unsigned char)*q;
        if ((c < 0x20 && c != '\t') || c == 0x7f) {
            cmd->error = "501 5.5.2 Invalid character in command";
            return;
        }
    }
    if (cmd->verb == LMTP_V_UNKNOWN)
        return;

    switch (cmd->verb) {
    case LMTP_V_LHLO:
    case LMTP_V_HELO: {
        const char *a;
        while (p < end && *p == ' ')
            p++;
        a = p;
        while (p < end && *p != ' ')
            p++;
        if (p == a) {
            cmd->error = "501 5.5.4 Syntax: LHLO hostname";
            return;
        }
        if ((size_t)(p - a) >= sizeof(cmd->addr)) {
            cmd->error = "501 5.5.4 Hostname too long";
            return;
        }
        memcpy(cmd->addr, a, (size_t)(p - a));
        cmd->addr[p - a] = '\0';
        return;
    }
    case LMTP_V_MAIL:
    case LMTP_V_RCPT: {
        bool mail = cmd->verb == LMTP_V_MAIL;
        const char *kw = mail ? "FROM:" : "TO:";
        size_t kwn = strlen(kw);

        if (p < end)
            p++;
        if ((size_t)(end - p) < kwn || strncasecmp(p, kw, kwn) != 0) {
            cmd->error = mail ? "501 5.5.4 Syntax: MAIL FROM:<address>"
                              : "501 5.5.4 Syntax: RCPT TO:<address>";
            return;
        }
        p += kwn;
        if (parse_path(&p, end, cmd, mail) != 0)
            return;
        if (p < end && *p != ' ') {
            cmd->error = "501 5.5.4 Syntax: space expected after address";
            return;
        }
        parse_params(p, end, cmd, mail);
        return;
    }
    case LMTP_V_DATA:
    case LMTP_V_RSET:
    case LMTP_V_QUIT:
        /* trailing spaces are harmless; anything else is not */
        for (const char *q = p; q < end; q++)
            if (*q != ' ') {
                cmd->error = "501 5.5.4 Syntax: no parameters allowed";
                return;
            }
        return;
    default:
        return;
    }
}

/* ---- connections ---- */

static void reply(struct lmtp_conn *c, const char *fmt, ...) PRINTF_LIKE(2, 3);

static void reply(struct lmtp_conn *c, const char *fmt, ...)
{
    struct evbuffer *out;
    va_list ap;

    if (c->dead)
        return;
    out = bufferevent_get_output(c->bev);
    va_start(ap, fmt);
    evbuffer_add_vprintf(out, fmt, ap);
    va_end(ap);
    evbuffer_add(out, "\r\n", 2);
}

static void set_idle_timeout(struct lmtp_conn *c, bool on)
{
    struct timeval tv = {.tv_sec = c->srv->idle_ms / 1000,
                         .tv_usec = (c->srv->idle_ms % 1000) * 1000};

    if (on)
        bufferevent_set_timeouts(c->bev, &tv, &tv);
    else
        bufferevent_set_timeouts(c->bev, NULL, NULL);
}

static void reset_transaction(struct lmtp_conn *c)
{
    free(c->mail_from);
    c->mail_from = NULL;
    for (size_t i = 0; i < c->nrcpts; i++)
        free(c->rcpts[i]);
    free(c->rcpts);
    c->rcpts = NULL;
    c->nrcpts = 0;
    free(c->data);
    c->data = NULL;
    c->dlen = c->dcap = 0;
    c->oversized = false;
}

static void op_free(struct lmtp_op *op)
{
    free(op->rcpt);
    free(op->mail_from);
    for (size_t i = 0; i < op->n; i++)
        free(op->rcpts[i]);
    free(op->rcpts);
    free(op->data);
    free(op);
}

/* Stops all I/O now; the memory goes at the next loop turn. */
static void conn_kill(struct lmtp_conn *c)
{
    if (c->dead)
        return;
    c->dead = true;
    if (c->op) {
        c->op->conn = NULL;
        c->op = NULL;
    }
    bufferevent_disable(c->bev, EV_READ | EV_WRITE);
    event_active(c->later, EV_TIMEOUT, 0);
}

static void conn_free(struct lmtp_conn *c)
{
    struct lmtp_server *s = c->srv;

    if (c->op)
        c->op->conn = NULL;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->nconns--;
    bufferevent_free(c->bev);
    event_free(c->later);
    reset_transaction(c);
    free(c);
}

static void resume(struct lmtp_conn *c)
{
    if (!c->dead)
        event_active(c->later, EV_TIMEOUT, 0);
}

/* After a final reply: close once the output has gone out. */
static void close_after_flush(struct lmtp_conn *c)
{
    c->closing = true;
    bufferevent_disable(c->bev, EV_READ);
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
        conn_kill(c);
}

static void count_error(struct lmtp_conn *c)
{
    if (++c->errors >= MAX_ERRORS) {
        reply(c, "421 4.7.0 %s Too many errors, closing", c->srv->hostname);
        close_after_flush(c);
    }
}

static void rcpt_done(void *ctx, enum lmtp_rcpt_result r)
{
    struct lmtp_op *op = ctx;
    struct lmtp_conn *c = op->conn;

    if (c) {
        c->op = NULL;
        switch (r) {
        case LMTP_RCPT_OK:
            c->rcpts = xrealloc(c->rcpts, (c->nrcpts + 1) * sizeof(*c->rcpts));
            c->rcpts[c->nrcpts++] = op->rcpt;
            op->rcpt = NULL;
            reply(c, "250 2.1.5 OK");
            break;
        case LMTP_RCPT_UNKNOWN:
            reply(c, "550 5.1.1 No such user here");
            break;
        default:
            reply(c, "451 4.3.0 Cannot accept this recipient now, try "
                     "again later");
            break;
        }
        set_idle_timeout(c, true);
        resume(c);
    }
    op_free(op);
}

/* One reply line for a delivery result; text never spans lines. */
static void data_reply(struct lmtp_conn *c, const char *rcpt,
                       const struct lmtp_result *r)
{
    int code = r ? r->code : 451;
    const char *enh = r ? r->enhanced : NULL;
    const char *text = r ? r->text : NULL;
    char clean[200];
    size_t n = 0;

    if (code == 0 || (code >= 200 && code < 300)) {
        reply(c, "250 2.0.0 <%s> delivered", rcpt);
        return;
    }
    if (code < 400 || code > 599)
        code = 451;
    if (!enh || strlen(enh) > 15 || strspn(enh, "0123456789.") != strlen(enh) ||
        enh[0] != (code >= 500 ? '5' : '4'))
        enh = code >= 500 ? "5.0.0" : "4.0.0";
    if (!text)
        text = code >= 500 ? "Delivery failed" : "Try again later";
    for (const char *p = text; *p && n + 1 < sizeof(clean); p++) {
        unsigned char ch = (unsigned char)*p;
        clean[n++] = (ch < 0x20 || ch == 0x7f) ? ' ' : (char)ch;
    }
    clean[n] = '\0';
    reply(c, "%d %s <%s> %s", code, enh, rcpt, clean);
}

static void data_done(void *ctx, const struct lmtp_result *results)
{
    struct lmtp_op *op = ctx;
    struct lmtp_conn *c = op->conn;

    if (c) {
        c->op = NULL;
        for (size_t i = 0; i < op->n; i++)
            data_reply(c, op->rcpts[i], results ? &results[i] : NULL);
        set_idle_timeout(c, true);
        resume(c);
    }
    op_free(op);
}

static void start_rcpt(struct lmtp_conn *c, const char *addr)
{
    struct lmtp_op *op = xcalloc(1, sizeof(*op));
    struct lmtp_server *s = c->srv;

    op->conn = c;
    op->rcpt = xstrdup(addr);
    c->op = op;
    set_idle_timeout(c, false);
    s->cbs.rcpt(s->cbs.arg, op->rcpt, rcpt_done, op);
}

static void start_data(struct lmtp_conn *c)
{
    struct lmtp_op *op = xcalloc(1, sizeof(*op));
    struct lmtp_server *s = c->srv;
    size_t len = c->dlen;

    op->conn = c;
    op->mail_from = c->mail_from;
    op->rcpts = c->rcpts;
    op->n = c->nrcpts;
    op->data = c->data ? c->data : xstrdup("");
    c->mail_from = NULL;
    c->rcpts = NULL;
    c->nrcpts = 0;
    c->data = NULL;
    reset_transaction(c);
    c->op = op;
    set_idle_timeout(c, false);
    log_debug(MOD, "message of %zu bytes for %zu recipient(s)", len, op->n);
    s->cbs.data(s->cbs.arg, op->mail_from, op->rcpts, op->n, op->data, len,
                data_done, op);
}

static void handle_command(struct lmtp_conn *c, const char *line, size_t len)
{
    struct lmtp_server *s = c->srv;
    struct lmtp_cmd cmd;

    lmtp_parse_command(line, len, &cmd);
    if (cmd.verb == LMTP_V_UNKNOWN) {
        reply(c, "500 5.5.2 Command not recognized");
        count_error(c);
        return;
    }
    if (cmd.error) {
        reply(c, "%s", cmd.error);
        count_error(c);
        return;
    }
    switch (cmd.verb) {
    case LMTP_V_HELO:
        reply(c, "500 5.5.1 This is LMTP: use LHLO");
        count_error(c);
        return;
    case LMTP_V_LHLO:
        reset_transaction(c);
        c->greeted = true;
        reply(c, "250-%s", s->hostname);
        reply(c, "250-PIPELINING");
        reply(c, "250-ENHANCEDSTATUSCODES");
        reply(c, "250-8BITMIME");
        reply(c, "250-SIZE %zu", s->max_size);
        reply(c, "250 OK");
        return;
    case LMTP_V_MAIL:
        if (!c->greeted) {
            reply(c, "503 5.5.1 Send LHLO first");
            count_error(c);
        } else if (c->mail_from) {
            reply(c, "503 5.5.1 Nested MAIL command");
            count_error(c);
        } else if (cmd.size >= 0 && (unsigned long long)cmd.size >
                                        (unsigned long long)s->max_size) {
            reply(c, "552 5.3.4 Message size exceeds fixed limit of %zu",
                  s->max_size);
        } else {
            c->mail_from = xstrdup(cmd.addr);
            reply(c, "250 2.1.0 OK");
        }
        return;
    case LMTP_V_RCPT:
        if (!c->mail_from) {
            reply(c, "503 5.5.1 Need MAIL before RCPT");
            count_error(c);
        } else if (c->nrcpts >= LMTP_MAX_RCPTS) {
            reply(c, "452 4.5.3 Too many recipients");
        } else {
            start_rcpt(c, cmd.addr);
        }
        return;
    case LMTP_V_DATA:
        if (!c->mail_from || c->nrcpts == 0) {
            reply(c, "503 5.5.1 No valid recipients");
            count_error(c);
            return;
        }
        reply(c, "354 Start mail input; end with <CRLF>.<CRLF>");
        c->phase = PH_DATA;
        c->dstate = D_BOL;
        c->dlen = 0;
        c->oversized = false;
        return;
    case LMTP_V_RSET:
        reset_transaction(c);
        reply(c, "250 2.0.0 OK");
        return;
    case LMTP_V_NOOP:
        reply(c, "250 2.0.0 OK");
        return;
    case LMTP_V_VRFY:
        reply(c, "252 2.5.0 Cannot VRFY user, but will accept message and "
                 "attempt delivery");
        return;
    case LMTP_V_QUIT:
        reply(c, "221 2.0.0 %s closing connection", s->hostname);
        close_after_flush(c);
        return;
    default:
        reply(c, "500 5.5.2 Command not recognized");
        return;
    }
}

static void data_put(struct lmtp_conn *c, char ch)
{
    if (c->oversized)
        return;
    if (c->dlen + 1 > c->srv->max_size) {
        /* Stop keeping the message; the rest is read and dropped. */
        c->oversized = true;
        free(c->data);
        c->data = NULL;
        c->dlen = c->dcap = 0;
        return;
    }
    if (c->dlen == c->dcap) {
        c->dcap = c->dcap ? c->dcap * 2 : 16384;
        if (c->dcap > c->srv->max_size)
            c->dcap = c->srv->max_size;
        c->data = xrealloc(c->data, c->dcap);
    }
    c->data[c->dlen++] = ch;
}

/* Feeds one byte; true at the end of the data (the final ".\r\n"). */
static bool data_byte(struct lmtp_conn *c, char ch)
{
    switch (c->dstate) {
    case D_DOT:
        if (ch == '\r') {
            c->dstate = D_DOT_CR;
            return false;
        }
        if (ch == '\n')
            return true; /* ".\n": clients that send bare LF */
        /* a leading dot is transparency padding (RFC 5321 4.5.2) */
        data_put(c, ch);
        c->dstate = D_MID;
        return false;
    case D_DOT_CR:
        if (ch == '\n')
            return true;
        data_put(c, '\r');
        c->dstate = D_CR;
        return data_byte(c, ch);
    case D_BOL:
        if (ch == '.') {
            c->dstate = D_DOT;
            return false;
        }
        break;
    default:
        break;
    }
    data_put(c, ch);
    if (ch == '\n')
        c->dstate = D_BOL;
    else if (ch == '\r')
        c->dstate = D_CR;
    else
        c->dstate = D_MID;
    return false;
}

/* Consumes data from the input; true when the message is complete. */
static bool read_data(struct lmtp_conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    struct evbuffer_iovec v[8];
    size_t used = 0;
    bool done = false;
    int n;

    n = evbuffer_peek(in, -1, NULL, v, ARRAY_SIZE(v));
    if (n > (int)ARRAY_SIZE(v))
        n = (int)ARRAY_SIZE(v);
    for (int i = 0; i < n && !done; i++) {
        const char *p = v[i].iov_base;
        for (size_t k = 0; k < v[i].iov_len; k++) {
            used++;
            if (data_byte(c, p[k])) {
                done = true;
                break;
            }
        }
    }
    evbuffer_drain(in, used);
    return done;
}

static void finish_data(struct lmtp_conn *c)
{
    c->phase = PH_CMD;
    if (c->oversized) {
        for (size_t i = 0; i < c->nrcpts; i++)
            reply(c, "552 5.3.4 Message size exceeds fixed limit of %zu",
                  c->srv->max_size);
        reset_transaction(c);
        return;
    }
    start_data(c);
}

static void process(struct lmtp_conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);

    while (!c->op && !c->closing && !c->dead) {
        size_t n = 0;
        char *line;

        if (c->phase == PH_DATA) {
            if (!read_data(c)) {
                /* peek sees 8 chunks at a time: go on while input is left */
                if (evbuffer_get_length(in) > 0)
                    continue;
                break;
            }
            finish_data(c);
            continue;
        }
        if (c->discarding) {
            struct evbuffer_ptr eol =
                evbuffer_search_eol(in, NULL, NULL, EVBUFFER_EOL_LF);
            if (eol.pos < 0) {
                evbuffer_drain(in, evbuffer_get_length(in));
                break;
            }
            evbuffer_drain(in, (size_t)eol.pos + 1);
            c->discarding = false;
            reply(c, "500 5.5.6 Line too long");
            count_error(c);
            continue;
        }
        line = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF);
        if (!line) {
            if (evbuffer_get_length(in) > LMTP_MAX_LINE) {
                evbuffer_drain(in, evbuffer_get_length(in));
                c->discarding = true;
            }
            break;
        }
        if (n + 2 > LMTP_MAX_LINE) {
            reply(c, "500 5.5.6 Line too long");
            count_error(c);
        } else {
            handle_command(c, line, n);
        }
        free(line);
    }
}

static void later_cb(evutil_socket_t fd, short what, void *arg)
{
    struct lmtp_conn *c = arg;

    (void)fd;
    (void)what;
    if (c->dead) {
        conn_free(c);
        return;
    }
    process(c);
}

static void read_cb(struct bufferevent *bev, void *arg)
{
    struct lmtp_conn *c = arg;

    (void)bev;
    if (!c->dead)
        process(c);
}

static void write_cb(struct bufferevent *bev, void *arg)
{
    struct lmtp_conn *c = arg;

    (void)bev;
    if (c->closing && !c->dead)
        conn_kill(c);
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct lmtp_conn *c = arg;

    (void)bev;
    if (c->dead)
        return;
    if (what & BEV_EVENT_TIMEOUT) {
        log_info(MOD, "connection idle for %u ms, closing", c->srv->idle_ms);
        reply(c, "421 4.4.2 %s Idle timeout, closing connection",
              c->srv->hostname);
        close_after_flush(c);
        return;
    }
    /* EOF or error: a pending callback completes into nothing. */
    conn_kill(c);
}

static void accept_cb(struct evconnlistener *lis, evutil_socket_t fd,
                      struct sockaddr *sa, int salen, void *arg)
{
    struct lmtp_server *s = arg;
    struct lmtp_conn *c;

    (void)lis;
    (void)sa;
    (void)salen;
    c = xcalloc(1, sizeof(*c));
    c->srv = s;
    c->bev = bufferevent_socket_new(s->base, fd, BEV_OPT_CLOSE_ON_FREE);
    c->later = event_new(s->base, -1, 0, later_cb, c);
    if (!c->bev || !c->later) {
        log_err(MOD, "cannot set up a connection");
        if (c->bev)
            bufferevent_free(c->bev);
        else
            evutil_closesocket(fd);
        if (c->later)
            event_free(c->later);
        free(c);
        return;
    }
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    bufferevent_setcb(c->bev, read_cb, write_cb, event_cb, c);
    bufferevent_setwatermark(c->bev, EV_READ, 0, READ_HIGH);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    set_idle_timeout(c, true);
    if (s->nconns > s->max_conns) {
        log_warn(MOD, "connection cap of %zu reached, refusing a client",
                 s->max_conns);
        reply(c, "421 4.3.2 %s Too many connections, try again later",
              s->hostname);
        close_after_flush(c);
        return;
    }
    log_debug(MOD, "client connected (%zu open)", s->nconns);
    reply(c, "220 %s LMTP postern ready", s->hostname);
}

static void accept_error_cb(struct evconnlistener *lis, void *arg)
{
    (void)lis;
    (void)arg;
    log_warn(MOD, "accept failed: %s", strerror(errno));
}

static bool hostname_ok(const char *h)
{
    if (!h || !*h || strlen(h) > 253)
        return false;
    for (; *h; h++) {
        unsigned char c = (unsigned char)*h;
        if (c <= 0x20 || c >= 0x7f)
            return false;
    }
    return true;
}

struct lmtp_server *lmtp_server_new(struct event_base *base, const char *listen,
                                    size_t max_message_size,
                                    const char *hostname,
                                    const struct lmtp_callbacks *cbs,
                                    struct error *err)
{
    struct sockaddr_storage ss;
    socklen_t sslen = 0;
    struct lmtp_server *s;

    if (!cbs || !cbs->rcpt || !cbs->data) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "lmtp: callbacks missing");
        return NULL;
    }
    if (max_message_size == 0) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "lmtp: max_message_size must be positive");
        return NULL;
    }
    if (hostname && !hostname_ok(hostname)) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "lmtp: hostname must be printable ASCII without spaces");
        return NULL;
    }
    if (netaddr_parse_listen(listen, &ss, &sslen) != 0) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "lmtp: bad listen address \"%.60s\" (want host:port or "
                  "[v6]:port with a numeric host)",
                  listen ? listen : "");
        return NULL;
    }
    s = xcalloc(1, sizeof(*s));
    s->base = base;
    s->max_size = max_message_size;
    s->hostname = xstrdup(hostname ? hostname : "localhost");
    s->cbs = *cbs;
    s->max_conns = LMTP_MAX_CONNS;
    s->idle_ms = LMTP_IDLE_TIMEOUT * 1000u;
    s->lis = evconnlistener_new_bind(base, accept_cb, s,
                                     LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE,
                                     -1, (struct sockaddr *)&ss, (int)sslen);
    if (!s->lis) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "lmtp: cannot listen on %.60s: %s", listen, strerror(errno));
        free(s->hostname);
        free(s);
        return NULL;
    }
    evconnlistener_set_error_cb(s->lis, accept_error_cb);
    log_info(MOD, "listening on %s (port %d)", listen, lmtp_server_port(s));
    return s;
}

int lmtp_server_port(const struct lmtp_server *s)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);

    if (!s || !s->lis ||
        getsockname(evconnlistener_get_fd(s->lis), (struct sockaddr *)&ss,
                    &len) != 0)
        return -1;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return -1;
}

size_t lmtp_server_connections(const struct lmtp_server *s)
{
    return s ? s->nconns : 0;
}

void lmtp_server_set_limits(struct lmtp_server *s, unsigned idle_ms,
                            size_t max_conns)
{
    if (idle_ms)
        s->idle_ms = idle_ms;
    if (max_conns)
        s->max_conns = max_conns;
}

void lmtp_server_free(struct lmtp_server *s)
{
    if (!s)
        return;
    while (s->conns)
        conn_free(s->conns);
    evconnlistener_free(s->lis);
    free(s->hostname);
    free(s);
}
