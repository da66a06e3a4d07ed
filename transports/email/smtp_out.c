/*
 * smtp_out: outbound SMTP through libESMTP on worker threads, see
 * smtp_out.h.
 *
 * Owns a worker pool of conf->workers threads, one SSL_CTX shared by the
 * sessions (read-only once built; libESMTP takes a reference per
 * session), the copied relay settings (immutable after smtp_out_new, so
 * workers read them without a lock) and a loop-thread queue of messages
 * not yet taken by a session. On the loop thread, pump() forms batches of
 * up to SMTP_OUT_BATCH messages while fewer than conf->workers sessions
 * run, so the pool never holds a job that has not started: shutdown fails
 * only what no session took, and waits for nothing but live sessions.
 *
 * A session job (worker thread) builds one libESMTP session, adds every
 * message of its batch, runs smtp_start_session and reads the status of
 * MAIL FROM, RCPT TO and DATA for each message, since a session that
 * "succeeds" may still have refused them. It writes only into its batch.
 * libESMTP continues without AUTH when AUTH is refused, so a protocol
 * monitor notices the AUTH exchange and its result; a refused message is
 * then reported as the authentication failure (temporary). Certificate
 * checks are ours: the SSL_CTX verifies the chain and the relay's name
 * (X509_VERIFY_PARAM host or IP), libESMTP reports the outcome through
 * its event callback and we accept or refuse there.
 *
 * Must never: share a libESMTP session between threads; call libESMTP on
 * the loop thread; log from a worker thread (the done callback on the
 * loop logs); log or copy into an error the password, the AUTH exchange
 * or the message body (bodies only at debug, and not here at all);
 * log an address unmasked at info; call a done from smtp_out_send.
 */
#include "email/smtp_out.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

/* auth-client.h first: libesmtp.h declares smtp_auth_set_context only then */
#include <auth-client.h>
#include <libesmtp.h>

#include "log.h"
#include "worker.h"

#define MOD "smtp_out"

/* user and password: the PLAIN/LOGIN plugins copy into 255-byte fields */
#define SMTP_CRED_MAX 255
#define SMTP_ADDR_MAX 320
#define SMTP_TEXT_MAX 120

struct smtp_item {
    char *from; /* "" = null reverse path */
    char *rcpt;
    char *data;
    size_t len;
    smtp_done_fn *done;
    void *arg;
    struct smtp_item *next;
    /* worker thread while its batch runs, then the loop thread */
    bool given; /* message callback handed out the data */
    bool failed;
    struct error err;
    int code; /* final SMTP code seen, for the log */
};

enum auth_phase { AUTH_IDLE, AUTH_SENT, AUTH_OVER };

struct smtp_batch {
    struct smtp_out *so;
    struct smtp_item *items[SMTP_OUT_BATCH];
    size_t n;
    /* written by the worker thread only while the job runs */
    enum auth_phase auth_phase;
    bool auth_tried, auth_ok, auth_refused;
    char auth_text[SMTP_TEXT_MAX];
    char line[512]; /* partial server line during AUTH */
    size_t line_len;
    char tls_problem[SMTP_TEXT_MAX];
    bool tls_ok;
    uint64_t started_ms, ended_ms;
};

struct smtp_out {
    struct event_base *base;
    struct worker_pool *pool;
    SSL_CTX *ssl_ctx; /* NULL when starttls is off */

    /* immutable after smtp_out_new: read by the workers */
    char *host;
    char *hostport;
    char *helo; /* NULL: libESMTP uses the host name */
    char *user; /* NULL: no AUTH */
    char *password;
    enum starttls_option tls;
    long timeout_ms;

    /* loop thread only */
    unsigned workers;
    unsigned running; /* batches handed to the pool */
    struct smtp_item *qhead, *qtail;
    size_t inflight;
    bool closing;
    bool in_done;
};

/* auth_client_exit() unloads the SASL plugins for the whole process. */
static pthread_mutex_t auth_mu = PTHREAD_MUTEX_INITIALIZER;
static unsigned auth_users;

static void auth_ref(void)
{
    pthread_mutex_lock(&auth_mu);
    if (auth_users++ == 0)
        auth_client_init();
    pthread_mutex_unlock(&auth_mu);
}

static void auth_unref(void)
{
    pthread_mutex_lock(&auth_mu);
    if (--auth_users == 0)
        auth_client_exit();
    pthread_mutex_unlock(&auth_mu);
}

/* Copies server text, control characters turned into spaces, trimmed. */
static void clean_text(char *out, size_t size, const char *in)
{
    size_t n = 0;

    if (!in)
        in = "";
    for (; *in && n + 1 < size; in++)
        out[n++] = ((unsigned char)*in < 0x20 || *in == 0x7f) ? ' ' : *in;
    while (n > 0 && out[n - 1] == ' ')
        n--;
    out[n] = '\0';
}

/* ------------------------------------------------------------ worker side */

static const char *on_message(void **ctx, int *len, void *arg)
{
    struct smtp_item *it = arg;

    (void)ctx;
    if (!len) { /* rewind */
        it->given = false;
        return NULL;
    }
    if (!it->given) {
        it->given = true;
        *len = (int)it->len;
        return it->data;
    }
    *len = 0;
    return it->data;
}

static int on_interact(auth_client_request_t req, char **result, int fields,
                       void *arg)
{
    struct smtp_batch *b = arg;

    for (int i = 0; i < fields; i++) {
        if (req[i].flags & AUTH_USER)
            result[i] = b->so->user;
        else if (req[i].flags & AUTH_PASS)
            result[i] = b->so->password;
        else
            return 0; /* realm and the like: we have none */
    }
    return 1;
}

/* One complete server line while an AUTH exchange is open. */
static void auth_line(struct smtp_batch *b, const char *line)
{
    int code;

    if (strlen(line) < 3 || line[0] < '2' || line[0] > '5')
        return;
    if (line[3] == '-')
        return; /* continuation; the last line decides */
    code = atoi(line);
    if (code == 334)
        return; /* challenge: the exchange goes on */
    b->auth_phase = AUTH_IDLE;
    if (code / 100 == 2) {
        b->auth_ok = true;
        b->auth_refused = false;
    } else {
        b->auth_refused = true;
        clean_text(b->auth_text, sizeof(b->auth_text), line);
    }
}

/*
 * Protocol monitor: only the AUTH command and the server lines that answer
 * it are looked at; credentials pass through unread and are never kept.
 */
static void on_monitor(const char *buf, int buflen, int writing, void *arg)
{
    struct smtp_batch *b = arg;

    if (b->auth_phase == AUTH_OVER || buflen <= 0)
        return;
    if (writing == SMTP_CB_WRITING) {
        if (buflen >= 5 && strncasecmp(buf, "AUTH ", 5) == 0) {
            b->auth_phase = AUTH_SENT;
            b->auth_tried = true;
            b->line_len = 0;
        } else if (buflen >= 5 && strncasecmp(buf, "MAIL ", 5) == 0) {
            b->auth_phase = AUTH_OVER; /* nothing after MAIL matters */
        }
        return;
    }
    if (writing != SMTP_CB_READING || b->auth_phase != AUTH_SENT)
        return;
    for (int i = 0; i < buflen && b->auth_phase == AUTH_SENT; i++) {
        char c = buf[i];

        if (c == '\n') {
            b->line[b->line_len] = '\0';
            if (b->line_len > 0 && b->line[b->line_len - 1] == '\r')
                b->line[b->line_len - 1] = '\0';
            auth_line(b, b->line);
            b->line_len = 0;
        } else if (b->line_len + 1 < sizeof(b->line)) {
            b->line[b->line_len++] = c;
        }
    }
}

/* libESMTP's verdict on the certificate comes through here. */
static void on_event(smtp_session_t s, int event, void *arg, ...)
{
    struct smtp_batch *b = arg;
    bool optional = b->so->tls == Starttls_ENABLED;
    va_list ap;
    int *ok;
    long vfy;
    SSL *ssl;

    (void)s;
    va_start(ap, arg);
    switch (event) {
    case SMTP_EV_EXTNA_STARTTLS:
        snprintf(b->tls_problem, sizeof(b->tls_problem),
                 "STARTTLS required but not offered by the relay");
        break;
    case SMTP_EV_STARTTLS_OK:
        b->tls_ok = true;
        break;
    case SMTP_EV_INVALID_PEER_CERTIFICATE:
        vfy = va_arg(ap, long);
        ok = va_arg(ap, int *);
        *ok = optional;
        if (!optional)
            snprintf(b->tls_problem, sizeof(b->tls_problem),
                     "TLS certificate of the relay refused: %s",
                     X509_verify_cert_error_string(vfy));
        break;
    case SMTP_EV_WRONG_PEER_CERTIFICATE:
        ok = va_arg(ap, int *);
        (void)va_arg(ap, char *);
        ssl = va_arg(ap, SSL *);
        /*
         * libESMTP matches DNS names only; OpenSSL already checked the
         * name or IP we configured (X509_VERIFY_PARAM) with the chain.
         */
        *ok = optional || SSL_get_verify_result(ssl) == X509_V_OK;
        if (!*ok && !b->tls_problem[0])
            snprintf(b->tls_problem, sizeof(b->tls_problem),
                     "TLS certificate does not match the relay's name");
        break;
    case SMTP_EV_NO_PEER_CERTIFICATE:
        ok = va_arg(ap, int *);
        *ok = optional;
        if (!optional)
            snprintf(b->tls_problem, sizeof(b->tls_problem),
                     "relay presented no TLS certificate");
        break;
    case SMTP_EV_WEAK_CIPHER:
        (void)va_arg(ap, int);
        ok = va_arg(ap, int *);
        *ok = optional;
        if (!optional)
            snprintf(b->tls_problem, sizeof(b->tls_problem),
                     "relay offered only a weak TLS cipher");
        break;
    default:
        break;
    }
    va_end(ap);
}

static void item_fail(struct smtp_item *it, bool temporary, int cond, int code,
                      const char *fmt, ...) PRINTF_LIKE(5, 6);

static void item_fail(struct smtp_item *it, bool temporary, int cond, int code,
                      const char *fmt, ...)
{
    va_list ap;

    it->failed = true;
    it->code = code;
    it->err.code = temporary ? COND_REMOTE_SERVER_TIMEOUT : cond;
    it->err.temporary = temporary;
    va_start(ap, fmt);
    vsnprintf(it->err.msg, sizeof(it->err.msg), fmt, ap);
    va_end(ap);
}

/* Fails a message that got no status: why the session ended early. */
static void fail_session(struct smtp_item *it, const struct smtp_batch *b,
                         int serr)
{
    char ebuf[128];
    uint64_t took = b->ended_ms - b->started_ms;

    if (b->tls_problem[0]) {
        item_fail(it, true, 0, 0, "%s", b->tls_problem);
        return;
    }
    if (b->auth_refused) {
        item_fail(it, true, 0, 0, "SMTP AUTH refused: %s", b->auth_text);
        return;
    }
    if (serr == 0) {
        item_fail(it, true, 0, 0, "the relay ended the session early");
        return;
    }
    smtp_strerror(serr, ebuf, sizeof(ebuf));
    if ((long)took + 200 >= b->so->timeout_ms &&
        (serr == SMTP_ERR_DROPPED_CONNECTION || serr == ETIMEDOUT))
        item_fail(it, true, 0, 0, "no answer from the relay within %ld s (%s)",
                  b->so->timeout_ms / 1000, ebuf);
    else
        item_fail(it, true, 0, 0, "%s", ebuf);
}

/* A reply of 400 or more at one step of one message: permanent or not. */
static void status_fail(struct smtp_item *it, const struct smtp_batch *b,
                        const smtp_status_t *st, const char *step, int cond)
{
    char text[SMTP_TEXT_MAX];
    char enh[24] = "";

    clean_text(text, sizeof(text), st->text);
    if (st->enh_class > 0)
        snprintf(enh, sizeof(enh), "%d.%d.%d ", st->enh_class, st->enh_subject,
                 st->enh_detail);
    if (b->auth_refused)
        item_fail(it, true, 0, st->code,
                  "SMTP AUTH refused (%s); then %s: %d %s%s", b->auth_text,
                  step, st->code, enh, text);
    else if (st->code >= 500)
        item_fail(it, false, cond, st->code, "%s refused: %d %s%s", step,
                  st->code, enh, text);
    else
        item_fail(it, true, 0, st->code, "%s deferred: %d %s%s", step, st->code,
                  enh, text);
}

static void judge(struct smtp_item *it, const struct smtp_batch *b,
                  smtp_message_t m, smtp_recipient_t r, int serr)
{
    const smtp_status_t *st;

    st = smtp_reverse_path_status(m);
    if (st && st->code >= 400) {
        status_fail(it, b, st, "MAIL FROM", COND_NOT_ACCEPTABLE);
        return;
    }
    st = smtp_recipient_status(r);
    if (st && st->code >= 400) {
        status_fail(it, b, st, "RCPT TO", COND_ITEM_NOT_FOUND);
        return;
    }
    st = smtp_message_transfer_status(m);
    if (st && st->code >= 200 && st->code < 300) {
        it->code = st->code;
        return;
    }
    if (st && st->code >= 400) {
        status_fail(it, b, st, "DATA", COND_NOT_ACCEPTABLE);
        return;
    }
    fail_session(it, b, serr);
}

static void session_job(void *arg)
{
    struct smtp_batch *b = arg;
    const struct smtp_out *so = b->so;
    smtp_message_t msgs[SMTP_OUT_BATCH];
    smtp_recipient_t rcpts[SMTP_OUT_BATCH];
    auth_context_t auth = NULL;
    smtp_session_t s;
    static const int which[] = {Timeout_GREETING, Timeout_ENVELOPE,
                                Timeout_DATA, Timeout_TRANSFER, Timeout_DATA2};
    bool setup_ok = true;
    int ok, serr = 0;

    b->started_ms = now_ms();
    s = smtp_create_session();
    if (!s) {
        for (size_t i = 0; i < b->n; i++)
            item_fail(b->items[i], true, 0, 0, "cannot create an SMTP session");
        return;
    }
    setup_ok = smtp_set_server(s, so->hostport) &&
               (!so->helo || smtp_set_hostname(s, so->helo)) &&
               smtp_set_eventcb(s, on_event, b);
    for (size_t i = 0; i < ARRAY_SIZE(which); i++)
        setup_ok =
            setup_ok &&
            smtp_set_timeout(s, which[i] | Timeout_OVERRIDE_RFC2822_MINIMUM,
                             so->timeout_ms);
    setup_ok = setup_ok && smtp_starttls_enable(s, so->tls);
    if (so->ssl_ctx)
        setup_ok = setup_ok && smtp_starttls_set_ctx(s, so->ssl_ctx);
    if (so->user) {
        auth = auth_create_context();
        setup_ok = setup_ok && auth &&
                   auth_set_mechanism_flags(auth, AUTH_PLUGIN_PLAIN, 0) &&
                   auth_set_interact_cb(auth, on_interact, b) &&
                   smtp_auth_set_context(s, auth) &&
                   smtp_set_monitorcb(s, on_monitor, b, 0);
    }
    for (size_t i = 0; setup_ok && i < b->n; i++) {
        struct smtp_item *it = b->items[i];

        msgs[i] = smtp_add_message(s);
        setup_ok =
            msgs[i] &&
            smtp_set_reverse_path(msgs[i], it->from[0] ? it->from : NULL) &&
            (rcpts[i] = smtp_add_recipient(msgs[i], it->rcpt)) &&
            smtp_set_messagecb(msgs[i], on_message, it);
    }
    if (!setup_ok) {
        char ebuf[128];

        smtp_strerror(smtp_errno(), ebuf, sizeof(ebuf));
        for (size_t i = 0; i < b->n; i++)
            item_fail(b->items[i], true, 0, 0,
                      "cannot set up the SMTP session: %s", ebuf);
        goto out;
    }

    ok = smtp_start_session(s);
    /* meaningful even when ok: a required extension may have been missing */
    serr = smtp_errno();
    b->ended_ms = now_ms();
    for (size_t i = 0; i < b->n; i++) {
        if (ok)
            judge(b->items[i], b, msgs[i], rcpts[i], serr);
        else
            fail_session(b->items[i], b, serr);
    }
out:
    smtp_destroy_session(s); /* before the auth context it points to */
    if (auth)
        auth_destroy_context(auth);
    /* OpenSSL's per-thread error queue would otherwise grow on failures */
    ERR_clear_error();
}

/* -------------------------------------------------------------- loop side */

static void item_free(struct smtp_item *it)
{
    free(it->from);
    free(it->rcpt);
    free(it->data);
    free(it);
}

static void item_finish(struct smtp_out *so, struct smtp_item *it)
{
    char mask[SMTP_ADDR_MAX + 8];

    log_mask(it->rcpt, mask, sizeof(mask));
    if (!it->failed)
        log_info(MOD, "to %s: accepted (%d)", mask, it->code);
    else if (strncmp(it->err.msg, "SMTP AUTH refused", 17) == 0)
        log_err(MOD, "to %s: %s (check smtp user/password)", mask, it->err.msg);
    else
        log_warn(MOD, "to %s: %s (%s)", mask, it->err.msg,
                 it->err.temporary ? "temporary" : "permanent");
    so->inflight--;
    so->in_done = true;
    it->done(it->arg, it->failed ? &it->err : NULL);
    so->in_done = false;
    item_free(it);
}

static void pump(struct smtp_out *so);

static void session_done(void *arg)
{
    struct smtp_batch *b = arg;
    struct smtp_out *so = b->so;

    so->running--;
    if (so->user)
        for (size_t i = 0; i < b->n; i++)
            if (!b->auth_ok && !b->items[i]->failed) {
                log_warn(MOD, "relay accepted mail without SMTP AUTH%s",
                         b->auth_tried ? " after refusing it"
                                       : " (AUTH not offered)");
                break;
            }
    for (size_t i = 0; i < b->n; i++)
        item_finish(so, b->items[i]);
    free(b);
    if (!so->closing)
        pump(so);
}

static void pump(struct smtp_out *so)
{
    while (so->qhead && so->running < so->workers) {
        struct smtp_batch *b = xcalloc(1, sizeof(*b));

        b->so = so;
        while (so->qhead && b->n < SMTP_OUT_BATCH) {
            struct smtp_item *it = so->qhead;

            so->qhead = it->next;
            if (!so->qhead)
                so->qtail = NULL;
            it->next = NULL;
            b->items[b->n++] = it;
        }
        if (worker_submit(so->pool, session_job, session_done, b) < 0)
            fatal("smtp_out: worker pool refused a session");
        so->running++;
    }
}

/* An envelope address: no controls, spaces, angle brackets; bounded. */
static bool addr_ok(const char *a, bool empty_ok)
{
    size_t n;

    if (!a)
        return false;
    n = strlen(a);
    if (n == 0)
        return empty_ok;
    if (n > SMTP_ADDR_MAX || !strchr(a, '@'))
        return false;
    for (const char *p = a; *p; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f || *p == '<' || *p == '>')
            return false;
    return true;
}

int smtp_out_send(struct smtp_out *so, const struct smtp_msg *m,
                  smtp_done_fn *done, void *arg, struct error *err)
{
    struct smtp_item *it;
    bool crlf;

    if (!so || !m || !done) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "smtp_out_send: missing argument");
        return -1;
    }
    if (so->closing) {
        error_set(err, COND_REMOTE_SERVER_TIMEOUT, true,
                  "SMTP client is shutting down");
        return -1;
    }
    if (!addr_ok(m->mail_from, true)) {
        error_set(err, COND_NOT_ACCEPTABLE, false, "bad envelope sender");
        return -1;
    }
    if (!addr_ok(m->rcpt, false)) {
        error_set(err, COND_JID_MALFORMED, false, "bad envelope recipient");
        return -1;
    }
    if (!m->data || m->len == 0 || m->len > SMTP_OUT_MAX_DATA) {
        error_set(err, COND_NOT_ACCEPTABLE, false,
                  "message empty or larger than %u bytes", SMTP_OUT_MAX_DATA);
        return -1;
    }
    it = xcalloc(1, sizeof(*it));
    it->from = xstrdup(m->mail_from);
    it->rcpt = xstrdup(m->rcpt);
    /* libESMTP needs the last line terminated */
    crlf = m->len >= 2 && m->data[m->len - 2] == '\r' &&
           m->data[m->len - 1] == '\n';
    it->data = xmalloc(m->len + 3);
    memcpy(it->data, m->data, m->len);
    it->len = m->len;
    if (!crlf) {
        memcpy(it->data + it->len, "\r\n", 2);
        it->len += 2;
    }
    it->data[it->len] = '\0';
    it->done = done;
    it->arg = arg;
    if (so->qtail)
        so->qtail->next = it;
    else
        so->qhead = it;
    so->qtail = it;
    so->inflight++;
    pump(so);
    return 0;
}

size_t smtp_out_inflight(const struct smtp_out *so)
{
    return so ? so->inflight : 0;
}

static bool is_ip_literal(const char *h)
{
    unsigned char buf[16];

    return inet_pton(AF_INET, h, buf) == 1 || inet_pton(AF_INET6, h, buf) == 1;
}

static SSL_CTX *make_ssl_ctx(const char *host, bool verify, struct error *err)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    X509_VERIFY_PARAM *vp;
    int ok;

    if (!ctx) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "smtp: cannot create a TLS context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /*
     * TLS 1.2 at most: libESMTP 1.1's loop (protocol.c + siobuf.c) polls
     * for read and write together after STARTTLS and handles the read
     * first; a TLS 1.3 NewSessionTicket arriving then makes it block in
     * SSL_read for the EHLO reply before it has flushed EHLO, until the
     * timeout (reproduced with the aiosmtpd sink in about half the
     * sessions). TLS 1.2 has no post-handshake messages.
     */
    SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION);
    /*
     * The handshake itself never fails on the certificate: libESMTP
     * reads SSL_get_verify_result afterwards and asks on_event, which
     * gives a precise error instead of a handshake failure.
     */
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    if (verify) {
        if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
            error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                      "smtp: cannot load the system CA certificates");
            SSL_CTX_free(ctx);
            return NULL;
        }
        vp = SSL_CTX_get0_param(ctx);
        if (is_ip_literal(host))
            ok = X509_VERIFY_PARAM_set1_ip_asc(vp, host);
        else
            ok = X509_VERIFY_PARAM_set1_host(vp, host, 0);
        if (ok != 1) {
            error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                      "smtp: bad host name for certificate checks");
            SSL_CTX_free(ctx);
            return NULL;
        }
    }
    return ctx;
}

struct smtp_out *smtp_out_new(struct event_base *base,
                              const struct smtp_conf *conf,
                              const char *helo_name, struct error *err)
{
    struct smtp_out *so;
    enum starttls_option tls;
    const char *tls_name = conf && conf->starttls ? conf->starttls : "required";
    bool v6;

    if (!base || !conf || !conf->host || !conf->host[0]) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false, "smtp.host: missing");
        return NULL;
    }
    if (conf->port < 1 || conf->port > 65535) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "smtp.port: must be 1..65535");
        return NULL;
    }
    if (strcmp(tls_name, "required") == 0)
        tls = Starttls_REQUIRED;
    else if (strcmp(tls_name, "optional") == 0)
        tls = Starttls_ENABLED;
    else if (strcmp(tls_name, "off") == 0)
        tls = Starttls_DISABLED;
    else {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "smtp.starttls: must be required, optional or off");
        return NULL;
    }
    if (conf->user && strlen(conf->user) > SMTP_CRED_MAX) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "smtp.user: longer than %d bytes", SMTP_CRED_MAX);
        return NULL;
    }
    if (conf->user && conf->user[0] &&
        (!conf->password || strlen(conf->password) > SMTP_CRED_MAX)) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "smtp.password: missing or longer than %d bytes",
                  SMTP_CRED_MAX);
        return NULL;
    }
    if (conf->timeout == 0 || conf->timeout > 3600) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "smtp.timeout: must be 1..3600 seconds");
        return NULL;
    }

    so = xcalloc(1, sizeof(*so));
    so->base = base;
    so->host = xstrdup(conf->host);
    /* libESMTP splits at the last ':'; an IPv6 literal needs brackets */
    v6 = strchr(conf->host, ':') != NULL && conf->host[0] != '[';
    so->hostport = xasprintf(v6 ? "[%s]:%d" : "%s:%d", conf->host, conf->port);
    so->helo = helo_name && helo_name[0] ? xstrdup(helo_name) : NULL;
    if (conf->user && conf->user[0]) {
        so->user = xstrdup(conf->user);
        so->password = xstrdup(conf->password);
    }
    so->tls = tls;
    so->timeout_ms = (long)conf->timeout * 1000L;
    so->workers = conf->workers ? conf->workers : 1;
    if (tls != Starttls_DISABLED) {
        so->ssl_ctx = make_ssl_ctx(so->host, tls == Starttls_REQUIRED, err);
        if (!so->ssl_ctx)
            goto fail;
    }
    so->pool = worker_pool_new(base, so->workers, err);
    if (!so->pool)
        goto fail;
    auth_ref();
    log_info(MOD, "relay %s, STARTTLS %s, AUTH %s, %u worker(s)", so->hostport,
             tls_name, so->user ? "on" : "off", so->workers);
    return so;
fail:
    SSL_CTX_free(so->ssl_ctx);
    free(so->host);
    free(so->hostport);
    free(so->helo);
    free(so->user);
    free(so->password);
    free(so);
    return NULL;
}

void smtp_out_free(struct smtp_out *so)
{
    if (!so)
        return;
    if (so->in_done)
        fatal("smtp_out_free() called from a done callback");
    so->closing = true;
    while (so->qhead) {
        struct smtp_item *it = so->qhead;

        so->qhead = it->next;
        if (!so->qhead)
            so->qtail = NULL;
        item_fail(it, true, 0, 0, "SMTP client shut down before sending");
        item_finish(so, it);
    }
    /* waits for the running sessions and runs session_done for each */
    worker_pool_free(so->pool);
    SSL_CTX_free(so->ssl_ctx);
    if (so->password)
        explicit_bzero(so->password, strlen(so->password));
    free(so->host);
    free(so->hostport);
    free(so->helo);
    free(so->user);
    free(so->password);
    free(so);
    auth_unref();
}
