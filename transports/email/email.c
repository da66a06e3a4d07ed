/*
 * email: the email transport core (SPEC 5). It owns the address rules, the
 * glue between the durable queues and the mail modules beside it
 * (smtp_out.c sends, lmtp_in.c receives, mime.c writes and reads
 * messages, threads.c holds the pure rules), and the mapping between XMPP
 * <thread/> ids and mail Message-IDs in Redis (store.h, "email threads").
 *
 * Addresses: a contact JID's node is the address escaped per XEP-0106
 * (Prosody's rules, see addr.h); human-typed addresses are normalised; a
 * user may claim only an address in the gateway's mail_domain, and it is
 * registered lower-case (the gateway's addresses are case-insensitive).
 *
 * Outbound (send, called by the queue consumer): From and the envelope
 * sender are the user's registered address, To the contact's address.
 * Subject: the message's <subject/>; else "Re: " and the subject of the
 * mail thread the message continues; else default_subject; else (default
 * "") no Subject header at all. OOB media URLs are appended to the text.
 * When <thread/> names a thread known for the user's address, the mail
 * carries In-Reply-To (the thread's newest Message-ID) and References (the
 * thread's chain, RFC 5322 3.6.4). Once the relay accepted it, the new
 * Message-ID is recorded under that thread -- or, for a message without a
 * usable <thread/>, under a fresh UUID, so that a reply by mail arrives
 * with a <thread/> the client can continue. The provider id is the
 * Message-ID. A relay's 4xx, timeouts and connection failures are
 * temporary (the queue retries), 5xx permanent with the server's text.
 * There are no delivery receipts: a relay's 250 is not a delivery.
 *
 * Inbound (LMTP): each RCPT in mail_domain is looked up (exact, then with
 * the local part lower-cased): owned -> 250, nobody -> 550 5.1.1, Redis
 * failing -> 451 4.3.0. After DATA the mail is parsed once; a mail that is
 * no message at all (or over the parser's bounds) is refused 554 5.6.0
 * for every recipient, one without any usable sender address 550 5.1.7;
 * malformed MIME otherwise delivers what could be read. Per recipient: the
 * thread is found from In-Reply-To, then References newest first, else a
 * fresh UUID (a mail seen before keeps its thread), the mail's Message-ID
 * is recorded under it, and one inbound message is queued (deduplicated by
 * Message-ID + recipient, or a SHA-256 of the mail when it has none);
 * 250 only after that push is durable, 451 4.3.0 otherwise.
 *
 * Shutdown: stop() refuses new sends and new recipients (451) and closes
 * the LMTP listener once no delivery waits for Redis; inflight() counts
 * sends and LMTP work not yet finished. destroy() frees the SMTP client
 * (which reports every queued send, see smtp_out_free) and the listener;
 * work still waiting for Redis is orphaned and completes on its own.
 *
 * It must never block, never call a send's done from inside send, never
 * log an address unmasked at info or a body above debug.
 */
#include <event2/event.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "addr.h"
#include "config.h"
#include "crypto.h"
#include "email/lmtp_in.h"
#include "email/mime.h"
#include "email/smtp_out.h"
#include "email/threads.h"
#include "log.h"
#include "queue.h"
#include "store.h"
#include "transport.h"

/* Declared where it is used (registry.c); email has no header yet. */
extern const struct transport_ops email_transport_ops;

/* How long thread mappings live after their last use. */
#define THREAD_TTL_S (180u * 24 * 3600)

struct email_send;
struct email_in;
struct email_check;

struct email_priv {
    struct smtp_out *smtp;
    struct lmtp_server *lmtp;
    struct event *close_ev; /* closes the LMTP server after stop() */
    size_t inflight;        /* sends whose done has not run */
    size_t lmtp_pending;    /* RCPT checks and DATA deliveries pending */
    bool stopping;
    bool destroying;
    struct email_send *sends; /* waiting for Redis or the relay */
    struct email_in *ins;
    struct email_check *checks;
};

static struct email_priv *priv_of(const struct transport *t)
{
    return t->priv;
}

/* Doubly linked lists of pending work, so destroy can orphan it. */
#define LIST_ADD(head, x)                                                      \
    do {                                                                       \
        (x)->prev = NULL;                                                      \
        (x)->next = (head);                                                    \
        if (head)                                                              \
            (head)->prev = (x);                                                \
        (head) = (x);                                                          \
    } while (0)
#define LIST_DEL(head, x)                                                      \
    do {                                                                       \
        if ((x)->prev)                                                         \
            (x)->prev->next = (x)->next;                                       \
        else if ((head) == (x))                                                \
            (head) = (x)->next;                                                \
        if ((x)->next)                                                         \
            (x)->next->prev = (x)->prev;                                       \
        (x)->prev = (x)->next = NULL;                                          \
    } while (0)

/* ---- configuration and addresses ---- */

static int email_configure(struct transport *t, struct error *err)
{
    const char *d = t->conf->mail_domain;
    char probe[EMAIL_MAX + 1];

    /* an address in the domain must itself be valid, or nobody can claim */
    if (!d || !*d ||
        snprintf(probe, sizeof(probe), "postmaster@%s", d) >=
            (int)sizeof(probe) ||
        !email_valid(probe)) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "mail_domain: \"%.60s\" is not a mail domain "
                  "(e.g. mail.example.org)",
                  d ? d : "");
        return -1;
    }
    return 0;
}

static int email_addr_parse(const struct transport *t, const char *node,
                            char *out, size_t size, struct error *err)
{
    char raw[EMAIL_MAX + 1];

    (void)t;
    if (jid_unescape_node(node, raw, sizeof(raw)) < 0 || !email_valid(raw) ||
        email_normalize(raw, out, size) < 0) {
        error_set(err, COND_JID_MALFORMED, false,
                  "\"%.60s\" is not an escaped email address; write the "
                  "address with @ as \\40, e.g. bob\\40example.com",
                  node);
        return -1;
    }
    return 0;
}

static int email_addr_to_node(const struct transport *t, const char *addr,
                              char *out, size_t size)
{
    (void)t;
    return jid_escape_node(addr, out, size);
}

static int email_addr_from_human(const struct transport *t, const char *typed,
                                 char *out, size_t size, struct error *err)
{
    (void)t;
    if (email_normalize(typed, out, size) < 0) {
        error_set(err, COND_NOT_ACCEPTABLE, false,
                  "\"%.60s\" is not an email address; type it as "
                  "name@example.com",
                  typed);
        return -1;
    }
    return 0;
}

static bool in_mail_domain(const struct transport *t, const char *addr)
{
    const char *domain = email_domain(addr);
    const char *want = t->conf->mail_domain ? t->conf->mail_domain : "";
    return domain && str_ieq(domain, want);
}

/* addr with its local part lower-cased too (the domain already is); addr
 * may be out. */
static void lower_addr(const char *addr, char *out, size_t size)
{
    size_t i;

    for (i = 0; addr[i] && i + 1 < size; i++)
        out[i] =
            (addr[i] >= 'A' && addr[i] <= 'Z') ? (char)(addr[i] + 32) : addr[i];
    out[i] = '\0';
}

static int email_claim(const struct transport *t, const char *typed, char *out,
                       size_t size, struct error *err)
{
    const char *want = t->conf->mail_domain ? t->conf->mail_domain : "";

    if (email_normalize(typed, out, size) < 0) {
        error_set(err, COND_NOT_ACCEPTABLE, false,
                  "\"%.60s\" is not an email address; enter yours as "
                  "name@%s",
                  typed, want);
        return -1;
    }
    if (!in_mail_domain(t, out)) {
        error_set(err, COND_NOT_ACCEPTABLE, false,
                  "%.80s is not an address of this gateway; use one "
                  "ending in @%s",
                  out, want);
        return -1;
    }
    /* Our addresses are case-insensitive, as MTAs and people treat them:
     * stored lower-case, so mail to Alice@ and alice@ finds one owner. */
    lower_addr(out, out, size);
    return 0;
}

/* ---- outbound -------------------------------------------------------- */

/* One outbound mail from send() until its done. */
struct email_send {
    struct email_send *prev, *next;
    struct transport *t; /* NULL once destroy orphaned it */
    send_done_fn *done;
    void *arg;
    char *from, *to, *body, *subject;
    char *thread; /* the message's usable <thread/>, or NULL */
    char *tid;    /* the thread the Message-ID is recorded under */
    char *refs;   /* the thread's chain before this mail */
    char *thread_subject;
    char *subject_used;
    char *msgid;
    bool sent; /* the relay accepted it */
};

static void send_free(struct email_send *j)
{
    free(j->from);
    free(j->to);
    free(j->body);
    free(j->subject);
    free(j->thread);
    free(j->tid);
    free(j->refs);
    free(j->thread_subject);
    free(j->subject_used);
    free(j->msgid);
    free(j);
}

/* Ends the send: exactly one done call, then j is gone. */
static void send_finish(struct email_send *j, const struct error *err)
{
    send_done_fn *done = j->done;
    void *arg = j->arg;
    char *id = NULL;

    if (j->t) {
        struct email_priv *p = priv_of(j->t);
        LIST_DEL(p->sends, j);
        p->inflight--;
    }
    if (!err && j->msgid)
        id = xstrdup(j->msgid);
    send_free(j);
    done(arg, err, id);
    free(id);
}

/* A callback reached a send whose transport is gone. */
static void send_finish_orphan(struct email_send *j)
{
    struct error e;

    if (j->sent) { /* the mail went out: a retry would send it twice */
        send_finish(j, NULL);
        return;
    }
    error_set(&e, COND_SERVICE_UNAVAILABLE, true,
              "the email gateway is shutting down; will retry");
    send_finish(j, &e);
}

static void on_thread_put(const struct error *err, const char *value, void *arg)
{
    struct email_send *j = arg;
    char mask[128];

    (void)value;
    if (err && j->t)
        /* the mail is out; only the threading of replies suffers */
        log_warn(j->t->module,
                 "mail to %s sent, but its thread was not recorded: %s",
                 log_mask(j->to, mask, sizeof(mask)), err->msg);
    send_finish(j, NULL);
}

static void on_smtp_done(void *arg, const struct error *err)
{
    struct email_send *j = arg;
    struct transport *t = j->t;
    struct email_priv *p;
    struct store_mail_put put;
    struct error e;
    char mask[128];
    char *chain;

    if (!t) {
        send_finish_orphan(j);
        return;
    }
    p = priv_of(t);
    log_mask(j->to, mask, sizeof(mask));
    if (err) {
        e = *err;
        if (e.code == COND_NONE)
            e.code =
                e.temporary ? COND_REMOTE_SERVER_TIMEOUT : COND_NOT_ACCEPTABLE;
        if (!e.temporary)
            /* the user reads this in the error stanza */
            snprintf(e.msg, sizeof(e.msg),
                     "The mail server refused the mail: %.120s", err->msg);
        log_info(t->module, "mail to %s not sent (%s): %s", mask,
                 e.temporary ? "temporary" : "permanent", err->msg);
        send_finish(j, &e);
        return;
    }
    j->sent = true;
    log_info(t->module, "mail to %s accepted by the relay, Message-ID <%s>",
             mask, j->msgid);
    if (p->destroying || !t->host || !t->host->store) {
        send_finish(j, NULL);
        return;
    }
    chain = email_refs_chain_str(j->refs, j->msgid, EMAIL_THREAD_MAX_REFS);
    memset(&put, 0, sizeof(put));
    put.msgid = j->msgid;
    put.thread = j->tid;
    put.refs = chain;
    put.subject = j->subject_used;
    put.ttl_s = THREAD_TTL_S;
    store_mail_thread_put(t->host->store, t->conf->jid, j->from, &put,
                          on_thread_put, j);
    free(chain);
}

/* Composes the mail and hands it to the relay; -1 with err, nothing sent. */
static int send_submit(struct email_send *j, struct error *err)
{
    struct transport *t = j->t;
    struct email_priv *p = priv_of(t);
    const char *dflt = t->conf->default_subject;
    struct mail_compose c;
    struct smtp_msg sm;
    char *in_reply_to = NULL, *data;
    size_t len;
    int rc;

    if (j->subject && !str_blank(j->subject))
        j->subject_used = xstrdup(j->subject);
    else if (j->thread_subject)
        j->subject_used = email_reply_subject(j->thread_subject);
    else if (dflt && *dflt)
        j->subject_used = xstrdup(dflt);
    if (j->refs && *j->refs)
        in_reply_to = email_refs_last(j->refs);
    if (!j->tid) {
        char fresh[EMAIL_THREAD_UUID_SIZE];
        email_thread_new(fresh);
        j->tid = xstrdup(fresh);
    }
    memset(&c, 0, sizeof(c));
    c.from = j->from;
    c.to = j->to;
    c.subject = j->subject_used;
    c.body = j->body;
    c.msgid_domain = t->conf->mail_domain;
    c.in_reply_to = in_reply_to;
    c.references = j->refs && *j->refs ? j->refs : NULL;
    data = mime_compose(&c, &len, &j->msgid, err);
    free(in_reply_to);
    if (!data)
        return -1;
    log_debug(t->module, "mail <%s> in thread %s:\n%.*s", j->msgid, j->tid,
              (int)(len > 4096 ? 4096 : len), data);
    memset(&sm, 0, sizeof(sm));
    sm.mail_from = j->from;
    sm.rcpt = j->to;
    sm.data = data;
    sm.len = len;
    rc = smtp_out_send(p->smtp, &sm, on_smtp_done, j, err);
    free(data);
    return rc;
}

static void on_thread_loaded(const struct error *err, const char *refs,
                             const char *subject, void *arg)
{
    struct email_send *j = arg;
    struct error e;

    if (!j->t) {
        send_finish_orphan(j);
        return;
    }
    if (err) {
        error_set(&e, COND_REMOTE_SERVER_TIMEOUT, true,
                  "cannot read the mail thread (%s); will retry", err->msg);
        send_finish(j, &e);
        return;
    }
    if (refs && *refs)
        j->refs = xstrdup(refs);
    if (subject && *subject)
        j->thread_subject = xstrdup(subject);
    error_clear(&e);
    if (send_submit(j, &e) < 0)
        send_finish(j, &e);
}

/* The mail's text: the body, then each media URL on a line of its own. */
static char *mail_text(const struct msg *m)
{
    struct strbuf b;

    sb_init(&b);
    if (m->body)
        sb_puts(&b, m->body);
    for (size_t i = 0; i < m->n_media; i++) {
        if (b.len)
            sb_puts(&b, i == 0 ? "\n\n" : "\n");
        sb_puts(&b, m->media[i]);
    }
    sb_puts(&b, "");
    return sb_steal(&b);
}

static int email_send(struct transport *t, const struct msg *m,
                      send_done_fn *done, void *arg, struct error *err)
{
    struct email_priv *p = priv_of(t);
    struct email_send *j;
    char *text;

    if (p->stopping) {
        error_set(err, COND_SERVICE_UNAVAILABLE, true,
                  "the email gateway is shutting down; try again shortly");
        return -1;
    }
    if (!p->smtp) {
        error_set(err, COND_SERVICE_UNAVAILABLE, true,
                  "the email gateway has not started");
        return -1;
    }
    if (!m->to_addr || !email_valid(m->to_addr)) {
        error_set(err, COND_JID_MALFORMED, false,
                  "the recipient is not an email address; write it with "
                  "@ as \\40, e.g. bob\\40example.com");
        return -1;
    }
    if (!m->from_addr || !email_valid(m->from_addr)) {
        error_set(err, COND_REGISTRATION_REQUIRED, false,
                  "you have no email address on this gateway; register "
                  "one first");
        return -1;
    }
    text = mail_text(m);
    if (str_blank(text)) {
        free(text);
        error_set(err, COND_BAD_REQUEST, false, "nothing to send");
        return -1;
    }

    j = xcalloc(1, sizeof(*j));
    j->t = t;
    j->done = done;
    j->arg = arg;
    j->from = xstrdup(m->from_addr);
    j->to = xstrdup(m->to_addr);
    j->body = text;
    j->subject = m->subject ? xstrdup(m->subject) : NULL;
    if (m->thread && email_thread_id_ok(m->thread)) {
        j->thread = xstrdup(m->thread);
        j->tid = xstrdup(m->thread);
    }
    if (j->thread && t->host && t->host->store) {
        store_mail_thread_get(t->host->store, t->conf->jid, j->from, j->thread,
                              on_thread_loaded, j);
    } else if (send_submit(j, err) < 0) {
        send_free(j);
        return -1;
    }
    LIST_ADD(p->sends, j);
    p->inflight++;
    return 0;
}

/* ---- inbound: recipient checks ---------------------------------------- */

/*
 * The registered form of an address of ours: exact first, then with the
 * local part lower-cased (registrations keep the case the user typed,
 * MTAs pass what the sender wrote).
 */
struct email_lookup;
typedef void lookup_fn(struct email_lookup *l, const struct error *err,
                       const char *owner_addr);
struct email_lookup {
    struct store *store;
    const char *gw;
    char addr[EMAIL_MAX + 1];
    char lower[EMAIL_MAX + 1];
    bool tried_lower;
    lookup_fn *cb;
};

static void on_lookup(const struct error *err, const char *value, void *arg)
{
    struct email_lookup *l = arg;

    if (err) {
        l->cb(l, err, NULL);
        return;
    }
    if (value) {
        l->cb(l, NULL, l->tried_lower ? l->lower : l->addr);
        return;
    }
    if (!l->tried_lower && strcmp(l->addr, l->lower) != 0) {
        l->tried_lower = true;
        store_reg_get_jid(l->store, l->gw, l->lower, on_lookup, l);
        return;
    }
    l->cb(l, NULL, NULL);
}

/* l->addr must be set; cb runs exactly once, never inside. */
static void lookup_start(struct email_lookup *l, struct store *s,
                         const char *gw, lookup_fn *cb)
{
    l->store = s;
    l->gw = gw;
    l->cb = cb;
    l->tried_lower = false;
    lower_addr(l->addr, l->lower, sizeof(l->lower));
    store_reg_get_jid(s, gw, l->addr, on_lookup, l);
}

/* One RCPT waiting for its owner lookup. */
struct email_check {
    struct email_check *prev, *next;
    struct transport *t; /* NULL once destroy orphaned it */
    lmtp_rcpt_done_fn *done;
    void *ctx;
    struct email_lookup l; /* first member lookups hand back */
};

static void lmtp_idle_check(struct transport *t);

static void on_check_owner(struct email_lookup *l, const struct error *err,
                           const char *owner)
{
    struct email_check *c =
        (struct email_check *)((char *)l - offsetof(struct email_check, l));
    struct transport *t = c->t;
    enum lmtp_rcpt_result r;
    char mask[128];

    if (!t) {
        r = LMTP_RCPT_TEMPFAIL;
    } else {
        struct email_priv *p = priv_of(t);
        log_mask(l->addr, mask, sizeof(mask));
        LIST_DEL(p->checks, c);
        p->lmtp_pending--;
        if (err) {
            log_warn(t->module, "LMTP: RCPT %s: owner lookup failed: %s", mask,
                     err->msg);
            r = LMTP_RCPT_TEMPFAIL;
        } else if (!owner) {
            log_info(t->module, "LMTP: RCPT %s: nobody owns it", mask);
            r = LMTP_RCPT_UNKNOWN;
        } else {
            r = LMTP_RCPT_OK;
        }
    }
    c->done(c->ctx, r);
    free(c);
    if (t)
        lmtp_idle_check(t);
}

static void lmtp_rcpt(void *arg, const char *rcpt, lmtp_rcpt_done_fn *done,
                      void *ctx)
{
    struct transport *t = arg;
    struct email_priv *p = priv_of(t);
    struct email_check *c;
    char addr[EMAIL_MAX + 1], mask[128];

    if (p->stopping || !t->host->store) {
        done(ctx, LMTP_RCPT_TEMPFAIL);
        return;
    }
    if (email_normalize(rcpt, addr, sizeof(addr)) < 0 ||
        !in_mail_domain(t, addr)) {
        log_info(t->module, "LMTP: RCPT %s: not an address of %s",
                 log_mask(rcpt, mask, sizeof(mask)), t->conf->mail_domain);
        done(ctx, LMTP_RCPT_UNKNOWN);
        return;
    }
    c = xcalloc(1, sizeof(*c));
    c->t = t;
    c->done = done;
    c->ctx = ctx;
    snprintf(c->l.addr, sizeof(c->l.addr), "%s", addr);
    LIST_ADD(p->checks, c);
    p->lmtp_pending++;
    lookup_start(&c->l, t->host->store, t->conf->jid, on_check_owner);
}

/* ---- inbound: delivery ------------------------------------------------- */

struct email_in;

/* One recipient of one mail. */
struct email_in_rcpt {
    struct email_in *in;
    size_t i;
    struct email_lookup l;
    char *owner_addr;
};

/* One mail after DATA, until every recipient has its answer. */
struct email_in {
    struct email_in *prev, *next;
    struct transport *t; /* NULL once destroy orphaned it */
    lmtp_data_done_fn *done;
    void *ctx;
    char *mail_from;
    struct mail_parsed mail;
    char digest[2 * 32 + 1];
    char *candidates; /* ids whose thread this mail joins */
    char *chain;      /* the thread's chain after this mail */
    size_t n, pending;
    struct lmtp_result *results;
    struct email_in_rcpt *r;
};

static const struct lmtp_result RES_OK = {0, NULL, NULL};
static const struct lmtp_result RES_TEMPFAIL = {
    451, "4.3.0", "cannot accept the message now; try again later"};
static const struct lmtp_result RES_UNKNOWN = {550, "5.1.1",
                                               "no such user here"};

static void in_free(struct email_in *in)
{
    for (size_t i = 0; i < in->n; i++)
        free(in->r[i].owner_addr);
    free(in->r);
    free(in->results);
    mime_parsed_free(&in->mail);
    free(in->mail_from);
    free(in->candidates);
    free(in->chain);
    free(in);
}

/* Answers the MTA once every recipient is done. */
static void in_rcpt_done(struct email_in_rcpt *r, const struct lmtp_result *res)
{
    struct email_in *in = r->in;
    struct transport *t = in->t;

    in->results[r->i] = *res;
    if (--in->pending > 0)
        return;
    if (t) {
        struct email_priv *p = priv_of(t);
        LIST_DEL(p->ins, in);
        p->lmtp_pending--;
    }
    in->done(in->ctx, in->results);
    in_free(in);
    if (t)
        lmtp_idle_check(t);
}

static void on_in_pushed(const struct error *err, void *arg)
{
    struct email_in_rcpt *r = arg;
    struct transport *t = r->in->t;
    char mask[128];

    if (err) {
        if (t)
            log_warn(t->module, "LMTP: mail for %s not queued: %s",
                     log_mask(r->owner_addr, mask, sizeof(mask)), err->msg);
        in_rcpt_done(r, &RES_TEMPFAIL);
        return;
    }
    in_rcpt_done(r, &RES_OK);
}

static void on_in_thread(const struct error *err, const char *tid, void *arg)
{
    struct email_in_rcpt *r = arg;
    struct email_in *in = r->in;
    struct transport *t = in->t;
    struct inmsg m;
    struct error e;
    char mf[128], mt[128];

    if (!t || err || !tid) {
        if (t)
            log_warn(t->module, "LMTP: thread of a mail for %s: %s",
                     log_mask(r->owner_addr, mt, sizeof(mt)),
                     err ? err->msg : "no thread id");
        in_rcpt_done(r, &RES_TEMPFAIL);
        return;
    }
    error_clear(&e);
    if (email_build_inmsg(&in->mail, r->owner_addr, in->mail_from, tid,
                          in->mail.message_id ? NULL : in->digest, &m,
                          &e) < 0) {
        /* checked for the whole mail before; kept for safety */
        static const struct lmtp_result bad = {550, "5.1.7",
                                               "no usable sender address"};
        in_rcpt_done(r, &bad);
        return;
    }
    log_info(t->module,
             "LMTP: mail %s from %s to %s, %zu attachment(s), thread %s",
             in->mail.message_id ? in->mail.message_id : "(no Message-ID)",
             log_mask(m.from_addr, mf, sizeof(mf)),
             log_mask(m.to_addr, mt, sizeof(mt)), in->mail.n_attachments, tid);
    log_debug(t->module, "LMTP: mail %s text: %s",
              in->mail.message_id ? in->mail.message_id : "-",
              m.body ? m.body : "");
    queue_inbound_push(t->host->queue, t->conf->jid, &m, on_in_pushed, r);
    inmsg_free_fields(&m);
}

static void on_in_owner(struct email_lookup *l, const struct error *err,
                        const char *owner)
{
    struct email_in_rcpt *r =
        (struct email_in_rcpt *)((char *)l - offsetof(struct email_in_rcpt, l));
    struct email_in *in = r->in;
    struct transport *t = in->t;
    struct store_mail_put put;
    char fresh[EMAIL_THREAD_UUID_SIZE], mask[128];

    if (!t || err) {
        if (t)
            log_warn(t->module, "LMTP: owner of %s: %s",
                     log_mask(l->addr, mask, sizeof(mask)), err->msg);
        in_rcpt_done(r, &RES_TEMPFAIL);
        return;
    }
    if (!owner) { /* unregistered since RCPT */
        in_rcpt_done(r, &RES_UNKNOWN);
        return;
    }
    r->owner_addr = xstrdup(owner);
    email_thread_new(fresh);
    memset(&put, 0, sizeof(put));
    put.msgid = in->mail.message_id;
    put.find_ids = in->candidates;
    put.thread = fresh;
    put.refs = in->chain;
    put.subject = in->mail.subject;
    put.ttl_s = THREAD_TTL_S;
    store_mail_thread_put(t->host->store, t->conf->jid, r->owner_addr, &put,
                          on_in_thread, r);
}

static void lmtp_data(void *arg, const char *mail_from, char *const *rcpts,
                      size_t n, const char *data, size_t len,
                      lmtp_data_done_fn *done, void *ctx)
{
    struct transport *t = arg;
    struct email_priv *p = priv_of(t);
    struct email_in *in;
    struct error e;
    char sender[EMAIL_MAX + 1];
    unsigned char dg[CRYPTO_MAX_DIGEST];
    size_t dn;

    in = xcalloc(1, sizeof(*in));
    in->t = t;
    in->done = done;
    in->ctx = ctx;
    in->n = n;
    in->results = xcalloc(n ? n : 1, sizeof(*in->results));
    in->r = xcalloc(n ? n : 1, sizeof(*in->r));
    in->mail_from = xstrdup(mail_from ? mail_from : "");
    error_clear(&e);

    if (n == 0) { /* lmtp_in never does this; nothing to answer */
        done(ctx, in->results);
        in_free(in);
        return;
    }
    if (!t->host->store || !t->host->queue) {
        for (size_t i = 0; i < n; i++)
            in->results[i] = RES_TEMPFAIL;
        done(ctx, in->results);
        in_free(in);
        return;
    }
    if (mime_parse(data, len, &in->mail, &e) < 0) {
        log_info(t->module, "LMTP: mail refused: %s", e.msg);
        for (size_t i = 0; i < n; i++)
            in->results[i] = (struct lmtp_result){
                554, "5.6.0", "the message could not be read"};
        done(ctx, in->results);
        in_free(in);
        return;
    }
    if (email_sender_addr(&in->mail, in->mail_from, sender, sizeof(sender)) <
        0) {
        log_info(t->module, "LMTP: mail %s refused: no usable sender",
                 in->mail.message_id ? in->mail.message_id : "-");
        for (size_t i = 0; i < n; i++)
            in->results[i] = (struct lmtp_result){
                550, "5.1.7", "the message has no usable sender address"};
        done(ctx, in->results);
        in_free(in);
        return;
    }
    if (!in->mail.message_id) {
        dn = crypto_digest(CRYPTO_SHA256, data, len, dg);
        if (dn)
            crypto_hex(dg, dn, in->digest);
    }
    in->candidates =
        email_thread_candidates(&in->mail, EMAIL_THREAD_MAX_CANDIDATES);
    in->chain = email_refs_chain(in->mail.references, in->mail.n_references,
                                 in->mail.in_reply_to, in->mail.message_id,
                                 EMAIL_THREAD_MAX_REFS);
    LIST_ADD(p->ins, in);
    p->lmtp_pending++;
    in->pending = n;
    for (size_t i = 0; i < n; i++) {
        struct email_in_rcpt *r = &in->r[i];
        r->in = in;
        r->i = i;
        if (email_normalize(rcpts[i], r->l.addr, sizeof(r->l.addr)) < 0 ||
            !in_mail_domain(t, r->l.addr)) {
            in_rcpt_done(r, &RES_UNKNOWN);
            continue;
        }
        lookup_start(&r->l, t->host->store, t->conf->jid, on_in_owner);
    }
}

/* ---- life cycle -------------------------------------------------------- */

static void on_close_ev(evutil_socket_t fd, short what, void *arg)
{
    struct transport *t = arg;
    struct email_priv *p = priv_of(t);

    (void)fd;
    (void)what;
    if (p->lmtp && p->lmtp_pending == 0) {
        lmtp_server_free(p->lmtp);
        p->lmtp = NULL;
        log_info(t->module, "LMTP listener closed");
    }
}

/* After stop(), closes the listener once no LMTP work is pending (from a
 * zero-delay event: never inside one of lmtp_in's callbacks). */
static void lmtp_idle_check(struct transport *t)
{
    struct email_priv *p = priv_of(t);

    if (p->stopping && p->lmtp && p->lmtp_pending == 0 && p->close_ev)
        event_active(p->close_ev, EV_TIMEOUT, 0);
}

static int email_start(struct transport *t, struct error *err)
{
    struct email_priv *p = priv_of(t);
    const struct gateway_conf *c = t->conf;
    struct lmtp_callbacks cbs = {lmtp_rcpt, lmtp_data, t};

    if (!t->host || !t->host->base)
        return 0; /* no loop (address tests): nothing to run */
    mime_global_init();
    p->smtp = smtp_out_new(t->host->base, &c->smtp, c->mail_domain, err);
    if (!p->smtp)
        return -1;
    p->close_ev = event_new(t->host->base, -1, 0, on_close_ev, t);
    if (c->lmtp.listen && *c->lmtp.listen) {
        p->lmtp = lmtp_server_new(t->host->base, c->lmtp.listen,
                                  c->lmtp.max_message_size, c->mail_domain,
                                  &cbs, err);
        if (!p->lmtp) {
            char why[sizeof(err->msg)];
            snprintf(why, sizeof(why), "%s", err->msg);
            error_set(err, COND_INTERNAL_SERVER_ERROR, false, "lmtp.listen: %s",
                      why);
            return -1;
        }
        log_info(t->module, "LMTP listening on port %d for @%s",
                 lmtp_server_port(p->lmtp), c->mail_domain);
    } else {
        log_notice(t->module, "lmtp.listen is empty: no inbound mail");
    }
    return 0;
}

static size_t email_inflight(const struct transport *t)
{
    const struct email_priv *p = priv_of(t);
    return p->inflight + p->lmtp_pending;
}

static void email_stop(struct transport *t)
{
    struct email_priv *p = priv_of(t);

    p->stopping = true;
    lmtp_idle_check(t);
}

static void email_destroy(struct transport *t)
{
    struct email_priv *p;

    if (!t || !t->priv)
        return;
    p = priv_of(t);
    p->destroying = true;
    p->stopping = true;
    /* the listener first: no new work while the rest winds down */
    lmtp_server_free(p->lmtp);
    p->lmtp = NULL;
    /* reports every send it holds (on_smtp_done sees destroying) */
    smtp_out_free(p->smtp);
    p->smtp = NULL;
    if (p->close_ev)
        event_free(p->close_ev);
    p->close_ev = NULL;
    /* what waits for Redis completes later on its own */
    for (struct email_send *j = p->sends, *next; j; j = next) {
        next = j->next;
        j->t = NULL;
        j->prev = j->next = NULL;
    }
    p->sends = NULL;
    for (struct email_in *in = p->ins, *next; in; in = next) {
        next = in->next;
        in->t = NULL;
        in->prev = in->next = NULL;
    }
    p->ins = NULL;
    for (struct email_check *c = p->checks, *next; c; c = next) {
        next = c->next;
        c->t = NULL;
        c->prev = c->next = NULL;
    }
    p->checks = NULL;
    p->inflight = p->lmtp_pending = 0;
}

const struct transport_ops email_transport_ops = {
    .abi = TRANSPORT_ABI,
    .name = "email",
    .caps = TCAP_SEND | TCAP_RECEIVE | TCAP_LISTENER,
    .priv_size = sizeof(struct email_priv),
    .identity_type = "smtp",
    .contact_type = "pc",
    .reg_field = "email",
    .reg_label = "Your email address on this gateway",
    .instructions =
        "Enter the email address this gateway gave you (it ends in this "
        "gateway's mail domain). You can then email anyone by messaging "
        "their address with @ written as \\40, e.g. "
        "bob\\40example.com@ this gateway; replies come back to you.",
    .gateway_desc = "Enter the email address you want to write to, e.g. "
                    "bob@example.com.",
    .gateway_prompt = "Email address",
    .configure = email_configure,
    .start = email_start,
    .addr_parse = email_addr_parse,
    .addr_to_node = email_addr_to_node,
    .addr_from_human = email_addr_from_human,
    .claim = email_claim,
    .send = email_send,
    .inflight = email_inflight,
    .stop = email_stop,
    .destroy = email_destroy,
};
