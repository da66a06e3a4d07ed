/*
 * router: the XMPP behaviour of one gateway (SPEC 3). It owns the
 * answers to disco, version, ping, XEP-0077 registration and its XEP-0050
 * command, jabber:iq:gateway, presence (XEP-0100 subscriptions, XEP-0115
 * caps), the chat commands, the hand-off of messages to the transport,
 * and the delivery of inbound messages from the queue.
 *
 * Every stanza that calls for an answer gets exactly one (a result or an
 * error). Anything that needs Redis or the transport runs as an "op": a
 * heap record holding copies of what the answer needs, linked into the
 * router so router_inflight() can count it and router_free() can orphan
 * it (an orphaned op finishes quietly when its callback comes back).
 *
 * It must never block, never send a stanza that is not addressed from the
 * gateway's domain, never log a message body above debug, and never keep
 * a pointer into a stanza or a store reply past the call that lent it.
 */
#include "router.h"

#include <ctype.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "addr.h"
#include "config.h"
#include "ratelimit.h"
#include "log.h"
#include "metrics.h"
#include "stanza.h"
#include "store.h"
#include "transport.h"
#include "xnode.h"

#ifndef POSTERN_VERSION
#define POSTERN_VERSION "0.0.0"
#endif

/* XEP-0115 node: the software's URI; documented in the README. */
#define CAPS_NODE "https://postern.invalid/caps"
#define ADDR_MAX 512
#define NODE_MAX 1024 /* a JID node, RFC 7622 */
#define FEATURES_MAX 12

struct feature_set {
    const char *v[FEATURES_MAX];
    size_t n;
    char ver[32]; /* XEP-0115 ver of the identity + these features */
};

struct op;

struct router {
    struct transport *t;
    struct router_sink sink;
    struct store *store;
    struct queue *queue; /* t->host->queue */
    const char *gw;      /* t->conf->jid */
    const char *mod;     /* t->module, the log prefix */
    char *gw_name;       /* disco identity name */
    const char *contact_type;
    struct feature_set gw_features;
    struct feature_set contact_features;
    bool stopped;
    struct op *ops; /* in flight */
    size_t n_ops;
    /*
     * The delivery chain: inbound entries in the order the queue handed
     * them over. Their owner lookups run concurrently, but what they emit
     * goes out from the head only, in that order, and after one came back
     * DELIVER_RETRY nothing behind it is emitted (the queue hands them
     * over again, in order) until the chain has emptied.
     */
    struct op *dq_head, *dq_tail;
    bool dq_failed;
    bool dq_draining;
};

/* Who is waiting for the outcome of a registration lookup or change. */
enum origin {
    ORIGIN_IQ,       /* jabber:iq:register */
    ORIGIN_ADHOC,    /* XEP-0050 command jabber:iq:register */
    ORIGIN_CHAT,     /* chat command to the gateway JID */
    ORIGIN_PRESENCE, /* probe / available from the user */
    ORIGIN_NONE,     /* nobody: log failures only */
};

struct op {
    struct router *r; /* NULL once the router is freed */
    struct op *prev, *next;
    enum origin origin;
    struct xnode *st; /* copy of the stanza being answered; may be NULL */
    char *from;       /* sender's full JID */
    char *bare;       /* sender's bare JID */
    char *addr;       /* address being registered, or contact address */
    char *sessionid;  /* XEP-0050 */
    char **contacts;  /* contact nodes (unregistration) */
    size_t n_contacts;
    /* router_deliver */
    const struct inmsg *m;
    deliver_done_fn *done;
    void *done_arg;
    struct op *dq_next; /* delivery chain */
    bool dq_resolved;   /* the owner lookup answered */
    bool dq_err;        /* ... with an error (dq_errmsg) */
    char *dq_value;     /* ... the owner, NULL when none */
    char dq_errmsg[160];
    /* router_send */
    const struct outmsg *om;
    outbound_done_fn *odone;
    void *odone_arg;
    /* router_on_delivery */
    enum delivery_state dstate;
    struct error derr;
    bool has_derr;
    router_delivery_done_fn *ddone;
    void *ddone_arg;
    /* message_to_contact: sender lookup retried while Redis is away */
    uint64_t started;
    unsigned attempts;
};

/* A stanza as received, with its addresses split once. */
struct in {
    const struct xnode *st;
    const char *from;
    const char *to;
    const char *type;
    struct jid to_jid;
    char bare[JID_MAX];
    char domain[1024];
    bool allowed; /* sender's domain is in allowed_domains */
};

/* ---- ops --------------------------------------------------------------- */

static struct op *op_new(struct router *r, enum origin origin,
                         const struct in *in)
{
    struct op *op = xcalloc(1, sizeof(*op));

    op->r = r;
    op->origin = origin;
    if (in) {
        op->st = xnode_copy(in->st);
        op->from = xstrdup(in->from);
        op->bare = xstrdup(in->bare);
    }
    op->next = r->ops;
    if (r->ops)
        r->ops->prev = op;
    r->ops = op;
    r->n_ops++;
    return op;
}

static void op_free(struct op *op)
{
    struct router *r = op->r;

    if (r) {
        if (op->prev)
            op->prev->next = op->next;
        else
            r->ops = op->next;
        if (op->next)
            op->next->prev = op->prev;
        r->n_ops--;
    }
    for (size_t i = 0; i < op->n_contacts; i++)
        free(op->contacts[i]);
    free(op->contacts);
    xnode_free(op->st);
    free(op->from);
    free(op->bare);
    free(op->addr);
    free(op->sessionid);
    free(op->dq_value);
    free(op);
}

/*
 * The router went away while op waited: finish without touching it. A
 * delivery is handed back for a retry so its done still runs once.
 */
static bool op_orphaned(struct op *op)
{
    deliver_done_fn *done = op->done;
    void *done_arg = op->done_arg;
    outbound_done_fn *odone = op->odone;
    void *odone_arg = op->odone_arg;
    router_delivery_done_fn *ddone = op->ddone;
    void *ddone_arg = op->ddone_arg;
    struct error e;

    if (op->r)
        return false;
    op_free(op);
    if (done)
        done(DELIVER_RETRY, done_arg);
    if (ddone) {
        error_set(&e, COND_SERVICE_UNAVAILABLE, true,
                  "The gateway is shutting down");
        ddone(ddone_arg, &e);
    }
    if (odone) {
        error_set(&e, COND_SERVICE_UNAVAILABLE, true,
                  "The gateway is shutting down");
        odone(odone_arg, &e, NULL, 0);
    }
    return true;
}

/* ---- sending ----------------------------------------------------------- */

/* Takes n. A stanza that cannot go out is logged and dropped. */
static int emit(struct router *r, struct xnode *n)
{
    struct error err;
    int rc;

    error_clear(&err);
    rc = r->sink.send(r->sink.arg, n, &err);
    if (rc < 0)
        log_warn(r->mod, "cannot send <%s type='%s'/>: %s", n->name,
                 xnode_attr(n, "type") ? xnode_attr(n, "type") : "",
                 err.msg[0] ? err.msg : "stream down");
    xnode_free(n);
    return rc;
}

static void reply_error(struct router *r, const struct xnode *st,
                        const struct error *err)
{
    emit(r, stanza_error_reply(st, err));
}

static void reply_cond(struct router *r, const struct xnode *st, int cond,
                       bool temporary, const char *text)
{
    struct error err;

    error_set(&err, cond, temporary, "%s", text);
    reply_error(r, st, &err);
}

/* A store or transport error without a condition still needs one. */
static void fix_error(struct error *e)
{
    if (e->code == COND_NONE) {
        e->code = COND_INTERNAL_SERVER_ERROR;
        e->temporary = true;
    }
    if (!e->msg[0])
        snprintf(e->msg, sizeof(e->msg), "%s",
                 "The gateway could not complete the request");
}

static struct xnode *presence(const char *from, const char *to,
                              const char *type)
{
    struct xnode *p = xnode_new("presence");

    xnode_set_attr(p, "from", from);
    xnode_set_attr(p, "to", to);
    xnode_set_attr(p, "type", type);
    return p;
}

static void add_caps(struct xnode *p, const struct feature_set *fs)
{
    struct xnode *c = xnode_add_ns(p, "c", NS_CAPS);

    xnode_set_attr(c, "hash", "sha-1");
    xnode_set_attr(c, "node", CAPS_NODE);
    xnode_set_attr(c, "ver", fs->ver);
}

static void send_available(struct router *r, const char *from, const char *to,
                           const struct feature_set *fs)
{
    struct xnode *p = presence(from, to, NULL);

    add_caps(p, fs);
    emit(r, p);
}

static char *contact_jid(const struct router *r, const char *node)
{
    return xasprintf("%s@%s", node, r->gw);
}

/* Plain chat from the gateway JID, in the thread of orig when it had one. */
static void send_chat(struct router *r, const char *to,
                      const struct xnode *orig, const char *text)
{
    struct xnode *m = stanza_message(r->gw, to, "chat", text);
    const char *thread = orig ? xnode_child_text(orig, "thread", NULL) : NULL;

    if (thread)
        xnode_add_text(m, "thread", thread);
    emit(r, m);
}

/* ---- service discovery ------------------------------------------------- */

static void features_add(struct feature_set *fs, const char *f)
{
    if (fs->n < FEATURES_MAX)
        fs->v[fs->n++] = f;
}

static bool media_capable(const struct router *r)
{
    return (r->t->ops->caps & TCAP_MEDIA) != 0;
}

static void build_features(struct router *r)
{
    struct feature_set *g = &r->gw_features;
    struct feature_set *c = &r->contact_features;

    features_add(g, NS_DISCO_INFO);
    features_add(g, NS_DISCO_ITEMS);
    features_add(g, NS_COMMANDS);
    features_add(g, NS_REGISTER);
    features_add(g, NS_GATEWAY);
    features_add(g, NS_VERSION);
    features_add(g, NS_PING);
    features_add(g, NS_RECEIPTS);
    features_add(c, NS_DISCO_INFO);
    features_add(c, NS_VERSION);
    features_add(c, NS_PING);
    features_add(c, NS_RECEIPTS);
    if (media_capable(r)) {
        features_add(g, NS_OOB);
        features_add(c, NS_OOB);
    }
    stanza_caps_ver("gateway", r->t->ops->identity_type, r->gw_name, g->v, g->n,
                    g->ver, sizeof(g->ver));
    stanza_caps_ver("client", r->contact_type, NULL, c->v, c->n, c->ver,
                    sizeof(c->ver));
}

static struct xnode *result_query(const struct xnode *iq, const char *ns)
{
    struct xnode *res = stanza_iq_result(iq);

    xnode_add_ns(res, "query", ns);
    return res;
}

static void add_identity(struct xnode *q, const char *category,
                         const char *type, const char *name)
{
    struct xnode *id = xnode_add(q, "identity");

    xnode_set_attr(id, "category", category);
    xnode_set_attr(id, "type", type);
    xnode_set_attr(id, "name", name);
}

static void add_features(struct xnode *q, const struct feature_set *fs)
{
    for (size_t i = 0; i < fs->n; i++)
        xnode_set_attr(xnode_add(q, "feature"), "var", fs->v[i]);
}

/* A disco node is ours when absent or CAPS_NODE#ver (XEP-0115 6.2). */
static bool caps_node_matches(const char *node, const struct feature_set *fs)
{
    size_t len = strlen(CAPS_NODE);

    if (!node)
        return true;
    return strncmp(node, CAPS_NODE, len) == 0 && node[len] == '#' &&
           strcmp(node + len + 1, fs->ver) == 0;
}

static void gw_disco_info(struct router *r, const struct in *in,
                          const struct xnode *q)
{
    const char *node = xnode_attr(q, "node");
    struct xnode *res;
    struct xnode *rq;

    if (caps_node_matches(node, &r->gw_features)) {
        res = result_query(in->st, NS_DISCO_INFO);
        rq = res->kids[0];
        xnode_set_attr(rq, "node", node);
        add_identity(rq, "gateway", r->t->ops->identity_type, r->gw_name);
        add_features(rq, &r->gw_features);
    } else if (strcmp(node, NS_COMMANDS) == 0) {
        res = result_query(in->st, NS_DISCO_INFO);
        rq = res->kids[0];
        xnode_set_attr(rq, "node", node);
        add_identity(rq, "automation", "command-list", "Commands");
    } else if (strcmp(node, NS_REGISTER) == 0) {
        res = result_query(in->st, NS_DISCO_INFO);
        rq = res->kids[0];
        xnode_set_attr(rq, "node", node);
        add_identity(rq, "automation", "command-node", "Register");
        xnode_set_attr(xnode_add(rq, "feature"), "var", NS_COMMANDS);
        xnode_set_attr(xnode_add(rq, "feature"), "var", NS_DATA);
    } else {
        reply_cond(r, in->st, COND_ITEM_NOT_FOUND, false, "No such node");
        return;
    }
    emit(r, res);
}

static void gw_disco_items(struct router *r, const struct in *in,
                           const struct xnode *q)
{
    const char *node = xnode_attr(q, "node");
    struct xnode *res;
    struct xnode *rq;

    if (node && strcmp(node, NS_COMMANDS) != 0 &&
        strcmp(node, NS_REGISTER) != 0) {
        reply_cond(r, in->st, COND_ITEM_NOT_FOUND, false, "No such node");
        return;
    }
    res = result_query(in->st, NS_DISCO_ITEMS);
    rq = res->kids[0];
    xnode_set_attr(rq, "node", node);
    if (node && strcmp(node, NS_COMMANDS) == 0) {
        struct xnode *it = xnode_add(rq, "item");
        xnode_set_attr(it, "jid", r->gw);
        xnode_set_attr(it, "node", NS_REGISTER);
        xnode_set_attr(it, "name", "Register");
    }
    emit(r, res);
}

static void version_result(struct router *r, const struct in *in)
{
    struct xnode *res = result_query(in->st, NS_VERSION);

    xnode_add_text(res->kids[0], "name", "postern");
    xnode_add_text(res->kids[0], "version", POSTERN_VERSION);
    emit(r, res);
}

/* ---- registration ------------------------------------------------------ */

static const char *reg_field(const struct router *r)
{
    return r->t->ops->reg_field ? r->t->ops->reg_field : "username";
}

/* An example of what users may claim, for prompts and help texts. */
static char *reg_example(const struct router *r)
{
    const struct gateway_conf *c = r->t->conf;

    if (c->numbers.n > 0)
        return xstrdup(c->numbers.v[0]);
    if (c->mail_domain && c->mail_domain[0])
        return xasprintf("you@%s", c->mail_domain);
    return xasprintf("<%s>", reg_field(r));
}

static void add_field(struct xnode *x, const char *var, const char *type,
                      const char *label, const char *value, bool required)
{
    struct xnode *f = xnode_add(x, "field");

    xnode_set_attr(f, "var", var);
    xnode_set_attr(f, "type", type);
    xnode_set_attr(f, "label", label);
    if (required)
        xnode_add(f, "required");
    if (value)
        xnode_add_text(f, "value", value);
}

/* XEP-0004 form with FORM_TYPE jabber:iq:register and the one field. */
static void add_reg_form(const struct router *r, struct xnode *parent,
                         const char *current)
{
    struct xnode *x = xnode_add_ns(parent, "x", NS_DATA);
    const char *instr = r->t->ops->instructions;

    xnode_set_attr(x, "type", "form");
    xnode_add_text(x, "title", r->gw_name);
    if (instr)
        xnode_add_text(x, "instructions", instr);
    add_field(x, "FORM_TYPE", "hidden", NULL, NS_REGISTER, false);
    add_field(x, reg_field(r), "text-single",
              r->t->ops->reg_label ? r->t->ops->reg_label : reg_field(r),
              current, true);
}

/* The value of field var in a submitted form, or NULL. */
static const char *form_value(const struct xnode *x, const char *var)
{
    for (size_t i = 0; i < x->nkids; i++) {
        const struct xnode *f = x->kids[i];
        const char *v = xnode_attr(f, "var");
        if (strcmp(f->name, "field") == 0 && v && strcmp(v, var) == 0)
            return xnode_child_text(f, "value", NULL);
    }
    return NULL;
}

static struct xnode *command_reply(const struct op *op, const char *status)
{
    struct xnode *res = stanza_iq_result(op->st);
    struct xnode *c = xnode_add_ns(res, "command", NS_COMMANDS);

    xnode_set_attr(c, "node", NS_REGISTER);
    xnode_set_attr(c, "sessionid", op->sessionid);
    xnode_set_attr(c, "status", status);
    return res;
}

static void log_reg(struct router *r, const char *what, const char *bare,
                    const char *addr)
{
    char mj[128], ma[128];

    log_info(r->mod, "%s %s as %s", what, log_mask(bare, mj, sizeof(mj)),
             addr ? log_mask(addr, ma, sizeof(ma)) : "-");
}

/* Answers a registration lookup (get, command execute, status, probe). */
static void reg_lookup_answer(struct router *r, struct op *op,
                              const char *current);
static void presence_contacts(struct router *r, struct op *op);

static void on_reg_get(const struct error *err, const char *value, void *arg)
{
    struct op *op = arg;
    struct router *r;
    struct error e;

    if (op_orphaned(op))
        return;
    r = op->r;
    if (err) {
        e = *err;
        fix_error(&e);
        switch (op->origin) {
        case ORIGIN_CHAT: {
            char *text =
                xasprintf("Cannot look up your registration: %s", e.msg);
            send_chat(r, op->from, op->st, text);
            free(text);
            break;
        }
        case ORIGIN_PRESENCE:
        case ORIGIN_NONE:
            log_warn(r->mod, "registration lookup failed: %s", e.msg);
            break;
        default:
            reply_error(r, op->st, &e);
        }
        op_free(op);
        return;
    }
    if (op->origin == ORIGIN_PRESENCE && value) {
        presence_contacts(r, op); /* continues with op */
        return;
    }
    reg_lookup_answer(r, op, value);
    op_free(op);
}

static void reg_lookup_answer(struct router *r, struct op *op,
                              const char *current)
{
    switch (op->origin) {
    case ORIGIN_IQ: {
        struct xnode *res = result_query(op->st, NS_REGISTER);
        struct xnode *q = res->kids[0];
        if (r->t->ops->instructions)
            xnode_add_text(q, "instructions", r->t->ops->instructions);
        if (current)
            xnode_add(q, "registered");
        xnode_add_text(q, reg_field(r), current ? current : "");
        add_reg_form(r, q, current);
        emit(r, res);
        break;
    }
    case ORIGIN_ADHOC: {
        struct xnode *res = command_reply(op, "executing");
        struct xnode *c = res->kids[0];
        struct xnode *actions = xnode_add(c, "actions");
        xnode_set_attr(actions, "execute", "complete");
        xnode_add(actions, "complete");
        add_reg_form(r, c, current);
        emit(r, res);
        break;
    }
    case ORIGIN_CHAT: {
        char *text;
        if (current) {
            text = xasprintf("You are registered as %s.", current);
        } else {
            char *ex = reg_example(r);
            text = xasprintf("You are not registered. Send: register %s", ex);
            free(ex);
        }
        send_chat(r, op->from, op->st, text);
        free(text);
        break;
    }
    default:
        break; /* presence from an unregistered user: nothing to say */
    }
}

/* XEP-0100 4.1: the gateway asks for the user's presence. */
static void after_register(struct router *r, const struct op *op)
{
    emit(r, presence(r->gw, op->bare, "subscribe"));
}

static void reg_finish(struct router *r, struct op *op, const struct error *err)
{
    switch (op->origin) {
    case ORIGIN_IQ:
        if (err)
            reply_error(r, op->st, err);
        else
            emit(r, stanza_iq_result(op->st));
        break;
    case ORIGIN_ADHOC:
        if (err) {
            reply_error(r, op->st, err);
        } else {
            struct xnode *res = command_reply(op, "completed");
            char *text = xasprintf("Registered as %s.", op->addr);
            struct xnode *note = xnode_add_text(res->kids[0], "note", text);
            xnode_set_attr(note, "type", "info");
            free(text);
            emit(r, res);
        }
        break;
    case ORIGIN_CHAT: {
        char *text = err ? xasprintf("Registration failed: %s", err->msg)
                         : xasprintf("Registered as %s. Message contacts as "
                                     "<address>@%s.",
                                     op->addr, r->gw);
        send_chat(r, op->from, op->st, text);
        free(text);
        break;
    }
    default:
        break;
    }
    if (!err) {
        log_reg(r, "registered", op->bare, op->addr);
        after_register(r, op);
    }
    op_free(op);
}

static void on_reg_set(const struct error *err, void *arg)
{
    struct op *op = arg;
    struct error e;

    if (op_orphaned(op))
        return;
    if (err) {
        e = *err;
        fix_error(&e);
        reg_finish(op->r, op, &e);
        return;
    }
    reg_finish(op->r, op, NULL);
}

/* Claims typed for op->bare and binds it in the store. Takes op. */
static void reg_begin(struct router *r, struct op *op, const char *typed)
{
    char addr[ADDR_MAX];
    struct error err;
    char *value = xstrdup(typed ? typed : "");

    error_clear(&err);
    str_trim(value);
    if (!value[0]) {
        error_set(&err, COND_NOT_ACCEPTABLE, false, "Missing %s", reg_field(r));
    } else if (!r->t->ops->claim ||
               r->t->ops->claim(r->t, value, addr, sizeof(addr), &err) < 0) {
        if (err.code == COND_NONE)
            err.code = COND_NOT_ACCEPTABLE;
        if (!err.msg[0])
            snprintf(err.msg, sizeof(err.msg), "You cannot claim %s", value);
    }
    free(value);
    if (err.code != COND_NONE) {
        reg_finish(r, op, &err);
        return;
    }
    op->addr = xstrdup(addr);
    store_reg_set(r->store, r->gw, op->bare, op->addr, on_reg_set, op);
}

/* ---- unregistration ---------------------------------------------------- */

/*
 * XEP-0100 4.3: the gateway and each contact end both subscriptions
 * and go offline for the user.
 */
static void say_goodbye(struct router *r, const char *from, const char *to)
{
    emit(r, presence(from, to, "unsubscribe"));
    emit(r, presence(from, to, "unsubscribed"));
    emit(r, presence(from, to, "unavailable"));
}

static void unreg_finish(struct router *r, struct op *op,
                         const struct error *err)
{
    switch (op->origin) {
    case ORIGIN_IQ:
        if (err)
            reply_error(r, op->st, err);
        else
            emit(r, stanza_iq_result(op->st));
        break;
    case ORIGIN_CHAT:
        send_chat(r, op->from, op->st,
                  err ? err->msg
                      : "Unregistered. Nothing more will be sent "
                        "or delivered for you.");
        break;
    default:
        break;
    }
    if (!err) {
        log_reg(r, "unregistered", op->bare, op->addr);
        for (size_t i = 0; i < op->n_contacts; i++) {
            char *cj = contact_jid(r, op->contacts[i]);
            say_goodbye(r, cj, op->bare);
            free(cj);
        }
        say_goodbye(r, r->gw, op->bare);
    }
    op_free(op);
}

static void on_unreg_removed(const struct error *err, const char *value,
                             void *arg)
{
    struct op *op = arg;
    struct error e;

    if (op_orphaned(op))
        return;
    if (err) {
        e = *err;
        fix_error(&e);
        unreg_finish(op->r, op, &e);
    } else if (!value) {
        error_set(&e, COND_REGISTRATION_REQUIRED, false,
                  "You are not registered");
        unreg_finish(op->r, op, &e);
    } else {
        op->addr = xstrdup(value);
        unreg_finish(op->r, op, NULL);
    }
}

static void on_unreg_contacts(const struct error *err, size_t n,
                              char *const *keys, char *const *values, void *arg)
{
    struct op *op = arg;
    struct error e;

    (void)values;
    if (op_orphaned(op))
        return;
    if (err) {
        e = *err;
        fix_error(&e);
        unreg_finish(op->r, op, &e);
        return;
    }
    op->contacts = xcalloc(n, sizeof(*op->contacts));
    for (size_t i = 0; i < n; i++)
        if (keys[i])
            op->contacts[op->n_contacts++] = xstrdup(keys[i]);
    /* Listed first: removing the registration drops the contact set. */
    store_reg_remove(op->r->store, op->r->gw, op->bare, on_unreg_removed, op);
}

static void unreg_begin(struct router *r, struct op *op)
{
    store_contact_list(r->store, r->gw, op->bare, on_unreg_contacts, op);
}

/* ---- IQ ---------------------------------------------------------------- */

static void iq_register(struct router *r, const struct in *in,
                        const struct xnode *q, bool set)
{
    struct op *op;

    if (!in->allowed) {
        reply_cond(r, in->st, COND_NOT_ALLOWED, false,
                   "Your server is not allowed to register with this "
                   "gateway");
        return;
    }
    op = op_new(r, ORIGIN_IQ, in);
    if (!set) {
        store_reg_get_addr(r->store, r->gw, in->bare, on_reg_get, op);
    } else if (xnode_child(q, "remove", NULL)) {
        unreg_begin(r, op);
    } else {
        const struct xnode *x = xnode_child(q, "x", NS_DATA);
        const char *v = x ? form_value(x, reg_field(r)) : NULL;
        if (!v)
            v = xnode_child_text(q, reg_field(r), NULL);
        reg_begin(r, op, v);
    }
}

/* XEP-0050, node jabber:iq:register. Sessions are stateless: the form
 * carries everything, so any sessionid we handed out is accepted. */
static void iq_command(struct router *r, const struct in *in,
                       const struct xnode *cmd)
{
    const char *node = xnode_attr(cmd, "node");
    const char *action = xnode_attr(cmd, "action");
    const char *sid = xnode_attr(cmd, "sessionid");
    const struct xnode *x = xnode_child(cmd, "x", NS_DATA);
    const char *xtype = x ? xnode_attr(x, "type") : NULL;
    struct op *op;
    char fresh[24];

    if (!node || strcmp(node, NS_REGISTER) != 0) {
        reply_cond(r, in->st, COND_ITEM_NOT_FOUND, false, "No such command");
        return;
    }
    if (!in->allowed) {
        reply_cond(r, in->st, COND_NOT_ALLOWED, false,
                   "Your server is not allowed to register with this "
                   "gateway");
        return;
    }
    if (!action)
        action = "execute";
    if (strcmp(action, "cancel") == 0 || (xtype && !strcmp(xtype, "cancel"))) {
        struct xnode *res = stanza_iq_result(in->st);
        struct xnode *c = xnode_add_ns(res, "command", NS_COMMANDS);
        xnode_set_attr(c, "node", node);
        xnode_set_attr(c, "sessionid", sid);
        xnode_set_attr(c, "status", "canceled");
        emit(r, res);
        return;
    }
    if (strcmp(action, "execute") != 0 && strcmp(action, "complete") != 0 &&
        strcmp(action, "next") != 0) {
        reply_cond(r, in->st, COND_BAD_REQUEST, false,
                   "This command has a single step");
        return;
    }
    bool submitted = x && xtype && strcmp(xtype, "submit") == 0;
    if (!submitted && strcmp(action, "execute") != 0) {
        reply_cond(r, in->st, COND_BAD_REQUEST, false,
                   "The registration form is missing");
        return;
    }
    op = op_new(r, ORIGIN_ADHOC, in);
    if (sid) {
        op->sessionid = xstrdup(sid);
    } else {
        stanza_new_id(fresh);
        op->sessionid = xstrdup(fresh);
    }
    if (submitted)
        reg_begin(r, op, form_value(x, reg_field(r)));
    else
        store_reg_get_addr(r->store, r->gw, in->bare, on_reg_get, op);
}

static void iq_gateway(struct router *r, const struct in *in,
                       const struct xnode *q, bool set)
{
    const struct transport_ops *ops = r->t->ops;
    struct xnode *res;

    if (!set) {
        res = result_query(in->st, NS_GATEWAY);
        if (ops->gateway_desc)
            xnode_add_text(res->kids[0], "desc", ops->gateway_desc);
        xnode_add_text(res->kids[0], "prompt",
                       ops->gateway_prompt ? ops->gateway_prompt : "Address");
        emit(r, res);
        return;
    }
    const char *typed = xnode_child_text(q, "prompt", NULL);
    char addr[ADDR_MAX], node[NODE_MAX];
    struct error err;

    error_clear(&err);
    if (!typed || str_blank(typed)) {
        error_set(&err, COND_BAD_REQUEST, false, "Missing <prompt/>");
    } else if (!ops->addr_from_human || !ops->addr_to_node ||
               ops->addr_from_human(r->t, typed, addr, sizeof(addr), &err) <
                   0) {
        if (err.code == COND_NONE)
            error_set(&err, COND_NOT_ACCEPTABLE, false, "Not a valid address");
    } else if (ops->addr_to_node(r->t, addr, node, sizeof(node)) < 0) {
        error_set(&err, COND_NOT_ACCEPTABLE, false, "Not a valid address");
    }
    if (err.code != COND_NONE) {
        reply_error(r, in->st, &err);
        return;
    }
    res = result_query(in->st, NS_GATEWAY);
    char *jid = contact_jid(r, node);
    xnode_add_text(res->kids[0], "jid", jid);
    free(jid);
    emit(r, res);
}

static void iq_to_gateway(struct router *r, const struct in *in,
                          const struct xnode *q, bool set)
{
    const char *ns = xnode_ns(q);

    if (!ns) {
        /* fall through to service-unavailable */
    } else if (strcmp(ns, NS_DISCO_INFO) == 0 && !set) {
        gw_disco_info(r, in, q);
        return;
    } else if (strcmp(ns, NS_DISCO_ITEMS) == 0 && !set) {
        gw_disco_items(r, in, q);
        return;
    } else if (strcmp(ns, NS_VERSION) == 0 && !set) {
        version_result(r, in);
        return;
    } else if (strcmp(ns, NS_PING) == 0 && !set) {
        emit(r, stanza_iq_result(in->st));
        return;
    } else if (strcmp(ns, NS_REGISTER) == 0 && !strcmp(q->name, "query")) {
        iq_register(r, in, q, set);
        return;
    } else if (strcmp(ns, NS_GATEWAY) == 0 && !strcmp(q->name, "query")) {
        iq_gateway(r, in, q, set);
        return;
    } else if (strcmp(ns, NS_COMMANDS) == 0 && set &&
               !strcmp(q->name, "command")) {
        iq_command(r, in, q);
        return;
    }
    reply_cond(r, in->st, COND_SERVICE_UNAVAILABLE, false,
               "Not supported by this gateway");
}

/* Contact JID node -> address, or an error condition already set. */
static int parse_contact(struct router *r, const char *node, char *addr,
                         size_t size, struct error *err)
{
    error_clear(err);
    if (!r->t->ops->addr_parse ||
        r->t->ops->addr_parse(r->t, node, addr, size, err) < 0) {
        err->code = COND_JID_MALFORMED;
        err->temporary = false;
        if (!err->msg[0])
            snprintf(err->msg, sizeof(err->msg), "%s",
                     "Not a valid address for this gateway");
        return -1;
    }
    return 0;
}

static void iq_to_contact(struct router *r, const struct in *in,
                          const struct xnode *q, bool set)
{
    const char *ns = xnode_ns(q);
    char addr[ADDR_MAX];
    struct error err;

    if (parse_contact(r, in->to_jid.node, addr, sizeof(addr), &err) < 0) {
        reply_error(r, in->st, &err);
        return;
    }
    if (ns && !set && strcmp(ns, NS_DISCO_INFO) == 0 &&
        caps_node_matches(xnode_attr(q, "node"), &r->contact_features)) {
        struct xnode *res = result_query(in->st, NS_DISCO_INFO);
        xnode_set_attr(res->kids[0], "node", xnode_attr(q, "node"));
        add_identity(res->kids[0], "client", r->contact_type, NULL);
        add_features(res->kids[0], &r->contact_features);
        emit(r, res);
    } else if (ns && !set && strcmp(ns, NS_DISCO_ITEMS) == 0 &&
               !xnode_attr(q, "node")) {
        emit(r, result_query(in->st, NS_DISCO_ITEMS));
    } else if (ns && !set && strcmp(ns, NS_VERSION) == 0) {
        version_result(r, in);
    } else if (ns && !set && strcmp(ns, NS_PING) == 0) {
        emit(r, stanza_iq_result(in->st));
    } else if (ns && (strcmp(ns, NS_DISCO_INFO) == 0 ||
                      strcmp(ns, NS_DISCO_ITEMS) == 0)) {
        reply_cond(r, in->st, COND_ITEM_NOT_FOUND, false, "No such node");
    } else {
        reply_cond(r, in->st, COND_SERVICE_UNAVAILABLE, false,
                   "Not supported by this contact");
    }
}

static void handle_iq(struct router *r, const struct in *in)
{
    bool set;
    const struct xnode *q = NULL;

    if (!in->type)
        return;
    if (strcmp(in->type, "get") == 0)
        set = false;
    else if (strcmp(in->type, "set") == 0)
        set = true;
    else
        return; /* result / error: postern sends no queries */
    for (size_t i = 0; i < in->st->nkids && !q; i++)
        if (strcmp(in->st->kids[i]->name, "error") != 0)
            q = in->st->kids[i];
    if (!q) {
        reply_cond(r, in->st, COND_BAD_REQUEST, false, "Empty request");
        return;
    }
    if (in->to_jid.node[0])
        iq_to_contact(r, in, q, set);
    else
        iq_to_gateway(r, in, q, set);
}

/* ---- presence ---------------------------------------------------------- */

static void on_pres_contacts(const struct error *err, size_t n,
                             char *const *keys, char *const *values, void *arg)
{
    struct op *op = arg;
    struct router *r;

    (void)values;
    if (op_orphaned(op))
        return;
    r = op->r;
    send_available(r, r->gw, op->bare, &r->gw_features);
    if (err) {
        log_warn(r->mod, "cannot list contacts: %s", err->msg);
        n = 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (!keys[i])
            continue;
        char *cj = contact_jid(r, keys[i]);
        send_available(r, cj, op->bare, &r->contact_features);
        free(cj);
    }
    op_free(op);
}

static void presence_contacts(struct router *r, struct op *op)
{
    store_contact_list(r->store, r->gw, op->bare, on_pres_contacts, op);
}

static void on_contact_stored(const struct error *err, void *arg)
{
    struct op *op = arg;

    if (op_orphaned(op))
        return;
    if (err)
        log_warn(op->r->mod, "cannot update contacts: %s", err->msg);
    op_free(op);
}

static void presence_to_gateway(struct router *r, const struct in *in,
                                const char *type)
{
    if (strcmp(type, "subscribe") == 0) {
        if (!in->allowed) {
            emit(r, presence(r->gw, in->bare, "unsubscribed"));
            return;
        }
        emit(r, presence(r->gw, in->bare, "subscribed"));
        send_available(r, r->gw, in->bare, &r->gw_features);
    } else if (strcmp(type, "unsubscribe") == 0) {
        emit(r, presence(r->gw, in->bare, "unsubscribed"));
    } else if (!in->allowed) {
        return;
    } else if (strcmp(type, "probe") == 0 || strcmp(type, "available") == 0) {
        struct op *op = op_new(r, ORIGIN_PRESENCE, in);
        store_reg_get_addr(r->store, r->gw, in->bare, on_reg_get, op);
    } else if (strcmp(type, "unavailable") == 0) {
        emit(r, presence(r->gw, in->from, "unavailable"));
    }
}

static void presence_to_contact(struct router *r, const struct in *in,
                                const char *type)
{
    char addr[ADDR_MAX], node[NODE_MAX];
    struct error err;
    bool sub = strcmp(type, "subscribe") == 0;
    bool unsub = strcmp(type, "unsubscribe") == 0;
    bool probe = strcmp(type, "probe") == 0;

    if (!sub && !unsub && !probe)
        return; /* subscribed, unsubscribed, directed presence */
    if (parse_contact(r, in->to_jid.node, addr, sizeof(addr), &err) < 0) {
        if (sub || probe)
            reply_error(r, in->st, &err);
        return;
    }
    /* Store and address contacts by their canonical node. */
    if (!r->t->ops->addr_to_node ||
        r->t->ops->addr_to_node(r->t, addr, node, sizeof(node)) < 0)
        snprintf(node, sizeof(node), "%s", in->to_jid.node);
    char *cj = contact_jid(r, node);
    if (!in->allowed) {
        if (sub)
            emit(r, presence(cj, in->bare, "unsubscribed"));
    } else if (sub) {
        emit(r, presence(cj, in->bare, "subscribed"));
        /* Subscribing back makes Conversations inline media (CAT2). */
        emit(r, presence(cj, in->bare, "subscribe"));
        send_available(r, cj, in->bare, &r->contact_features);
        struct op *op = op_new(r, ORIGIN_NONE, in);
        store_contact_add(r->store, r->gw, in->bare, node, on_contact_stored,
                          op);
    } else if (unsub) {
        emit(r, presence(cj, in->bare, "unsubscribed"));
        struct op *op = op_new(r, ORIGIN_NONE, in);
        store_contact_remove(r->store, r->gw, in->bare, node, on_contact_stored,
                             op);
    } else {
        send_available(r, cj, in->bare, &r->contact_features);
    }
    free(cj);
}

static void handle_presence(struct router *r, const struct in *in)
{
    const char *type = in->type ? in->type : "available";

    if (strcmp(type, "error") == 0)
        return;
    if (in->to_jid.node[0])
        presence_to_contact(r, in, type);
    else
        presence_to_gateway(r, in, type);
}

/* ---- messages ---------------------------------------------------------- */

static char *help_text(const struct router *r)
{
    char *ex = reg_example(r);
    char *text = xasprintf("%s. Commands:\n"
                           "help - this text\n"
                           "register %s - claim this %s\n"
                           "unregister - remove your registration\n"
                           "status - show your registration\n"
                           "Once registered, message contacts as <address>@%s.",
                           r->gw_name, ex, reg_field(r), r->gw);
    free(ex);
    return text;
}

static void chat_command(struct router *r, const struct in *in,
                         const char *body)
{
    char *cmd = xstrdup(body ? body : "");
    char *arg;

    if (!in->allowed) {
        reply_cond(r, in->st, COND_NOT_ALLOWED, false,
                   "Your server is not allowed to use this gateway");
        free(cmd);
        return;
    }
    str_trim(cmd);
    for (arg = cmd; *arg && !isspace((unsigned char)*arg); arg++)
        *arg = (char)tolower((unsigned char)*arg);
    if (*arg) {
        *arg++ = '\0';
        str_trim(arg);
    }
    if (strcmp(cmd, "register") == 0 && *arg) {
        reg_begin(r, op_new(r, ORIGIN_CHAT, in), arg);
    } else if (strcmp(cmd, "unregister") == 0) {
        unreg_begin(r, op_new(r, ORIGIN_CHAT, in));
    } else if (strcmp(cmd, "status") == 0) {
        store_reg_get_addr(r->store, r->gw, in->bare, on_reg_get,
                           op_new(r, ORIGIN_CHAT, in));
    } else {
        char *help = help_text(r);
        char *text;
        if (strcmp(cmd, "help") == 0)
            text = xstrdup(help);
        else if (strcmp(cmd, "register") == 0)
            text = xasprintf("Usage: register <%s>\n\n%s", reg_field(r), help);
        else
            text = xasprintf("Unknown command.\n\n%s", help);
        send_chat(r, in->from, in->st, text);
        free(text);
        free(help);
    }
    free(cmd);
}

static bool is_oob(const struct xnode *k)
{
    const char *ns = xnode_ns(k);
    return strcmp(k->name, "x") == 0 && ns && strcmp(ns, NS_OOB) == 0 &&
           xnode_child_text(k, "url", NULL);
}

static size_t count_media(const struct xnode *st)
{
    size_t n = 0;

    for (size_t i = 0; i < st->nkids; i++)
        if (is_oob(st->kids[i]))
            n++;
    return n;
}

/* Fills m from the owned stanza copy (URLs trimmed in place). */
static void build_msg(struct router *r, struct op *op, const char *from_addr,
                      struct msg *m)
{
    struct xnode *st = op->st;

    memset(m, 0, sizeof(*m));
    m->gw = r->gw;
    m->from_jid = op->from;
    m->from_addr = from_addr;
    m->to_jid = xnode_attr(st, "to");
    m->to_addr = op->addr;
    m->id = xnode_attr(st, "id");
    m->body = xnode_child_text(st, "body", NULL);
    m->subject = xnode_child_text(st, "subject", NULL);
    m->thread = xnode_child_text(st, "thread", NULL);
    m->receipt = xnode_child(st, "request", NS_RECEIPTS) != NULL;
    for (size_t i = 0; i < st->nkids && m->n_media < MSG_MAX_MEDIA; i++) {
        if (!is_oob(st->kids[i]))
            continue;
        struct xnode *u = xnode_child(st->kids[i], "url", NULL);
        m->media[m->n_media++] = str_trim(u->text);
    }
    if (m->body && m->n_media > 0) {
        /* Clients put the URL in the body for those without OOB. */
        char *b = xstrdup(m->body);
        str_trim(b);
        if (!b[0] || (m->n_media == 1 && strcmp(b, m->media[0]) == 0))
            m->body = NULL;
        free(b);
    }
}

static char *dup_opt(const char *s)
{
    return s ? xstrdup(s) : NULL;
}

/*
 * ---- the outbound message path ----
 * owner lookup -> segment count (transport op) -> ratelimit_check (the
 * "limits check": max_segments and rate limits, async, may refuse with
 * policy-violation) -> queue_outbound_push. Nothing is
 * sent from here: the queue's consumer calls router_send later, and the
 * outcome (errors, receipts) comes back as notices through the inbound
 * queue. Success is silent.
 */
static void on_pushed(const struct error *err, void *arg)
{
    struct op *op = arg;
    struct router *r;
    struct error e;

    if (op_orphaned(op))
        return;
    r = op->r;
    if (err) {
        error_set(&e, COND_REMOTE_SERVER_TIMEOUT, true,
                  "The gateway cannot store your message right now (%.100s); "
                  "it was not sent, try again later",
                  err->msg);
        reply_error(r, op->st, &e);
    } else {
        metrics_message(r->gw, "out");
    }
    op_free(op);
}

static void push_message(struct router *r, struct op *op)
{
    struct msg m;
    struct outmsg om;

    build_msg(r, op, op->sessionid, &m);
    memset(&om, 0, sizeof(om));
    om.from_jid = xstrdup(m.from_jid);
    om.id = dup_opt(m.id);
    om.to_jid = xstrdup(m.to_jid ? m.to_jid : "");
    om.from_addr = xstrdup(m.from_addr);
    om.to_addr = xstrdup(m.to_addr);
    om.body = dup_opt(m.body);
    om.subject = dup_opt(m.subject);
    om.thread = dup_opt(m.thread);
    for (size_t i = 0; i < m.n_media && i < OUTMSG_MAX_MEDIA; i++)
        om.media[om.n_media++] = xstrdup(m.media[i]);
    om.receipt = m.receipt;
    log_debug(r->mod, "message %s: %s", m.id ? m.id : "-",
              m.body ? m.body : "(media)");
    queue_outbound_push(r->queue, r->gw, &om, on_pushed, op);
    outmsg_free_fields(&om);
}

static void on_limits(void *arg, const struct error *err)
{
    struct op *op = arg;
    struct router *r;
    struct error e;

    if (op_orphaned(op))
        return;
    r = op->r;
    if (err) {
        e = *err;
        fix_error(&e);
    } else if (r->stopped) {
        error_set(&e, COND_SERVICE_UNAVAILABLE, true,
                  "The gateway is shutting down; try again later");
    } else {
        push_message(r, op);
        return; /* on_pushed finishes op */
    }
    reply_error(r, op->st, &e);
    op_free(op);
}

/*
 * While Redis is unreachable (a restart takes seconds) the sender's message
 * is kept in memory and its lookup retried; only after OWNER_RETRY_MS does
 * the sender get remote-server-timeout (SPEC 6).
 */
#define OWNER_RETRY_MS 30000

static void on_msg_owner(const struct error *err, const char *value, void *arg);

static void on_owner_retry(evutil_socket_t fd, short what, void *arg)
{
    struct op *op = arg;
    (void)fd;
    (void)what;
    if (op_orphaned(op))
        return;
    store_reg_get_addr(op->r->store, op->r->gw, op->bare, on_msg_owner, op);
}

static void on_msg_owner(const struct error *err, const char *value, void *arg)
{
    struct op *op = arg;
    struct router *r;
    struct error e;
    struct msg m;
    unsigned segments = 1;

    if (op_orphaned(op))
        return;
    r = op->r;
    if (err && err->temporary && !r->stopped &&
        now_ms() - op->started < OWNER_RETRY_MS) {
        uint64_t ms = backoff_ms(op->attempts++, 250, 4000);
        struct timeval tv = {(time_t)(ms / 1000),
                             (suseconds_t)(ms % 1000) * 1000};
        event_base_once(store_event_base(r->store), -1, EV_TIMEOUT,
                        on_owner_retry, op, &tv);
        return;
    }
    if (err && err->temporary) {
        error_set(&e, COND_REMOTE_SERVER_TIMEOUT, true,
                  "The gateway cannot reach its storage (%s); the message "
                  "was not sent, try again later",
                  err->msg);
    } else if (err) {
        e = *err;
        fix_error(&e);
    } else if (!value) {
        error_set(&e, COND_REGISTRATION_REQUIRED, false,
                  "Register with %s before sending messages", r->gw);
    } else if (r->stopped || !r->queue) {
        error_set(&e, COND_SERVICE_UNAVAILABLE, true,
                  "The gateway is shutting down; try again later");
    } else {
        /* the registered address rides along in sessionid (unused here) */
        op->sessionid = xstrdup(value);
        build_msg(r, op, value, &m);
        if (r->t->ops->segments)
            segments = r->t->ops->segments(r->t, &m);
        /* ratelimit_check also applies limits.max_segments */
        ratelimit_check(r->store, r->t->conf, op->bare, segments, on_limits,
                        op);
        return; /* on_limits finishes op */
    }
    reply_error(r, op->st, &e);
    op_free(op);
}

static void message_to_contact(struct router *r, const struct in *in,
                               const char *body)
{
    char addr[ADDR_MAX];
    struct error err;
    size_t n_media = count_media(in->st);
    struct op *op;

    if (!in->allowed) {
        reply_cond(r, in->st, COND_NOT_ALLOWED, false,
                   "Your server is not allowed to use this gateway");
        return;
    }
    if (parse_contact(r, in->to_jid.node, addr, sizeof(addr), &err) < 0) {
        reply_error(r, in->st, &err);
        return;
    }
    if ((!body || str_blank(body)) && n_media == 0) {
        reply_cond(r, in->st, COND_BAD_REQUEST, false, "Empty message");
        return;
    }
    if (n_media > MSG_MAX_MEDIA) {
        error_set(&err, COND_BAD_REQUEST, false,
                  "At most %d attachments per message", MSG_MAX_MEDIA);
        reply_error(r, in->st, &err);
        return;
    }
    if (r->stopped || !r->t->ops->send) {
        reply_cond(r, in->st, COND_SERVICE_UNAVAILABLE, r->stopped,
                   r->stopped ? "The gateway is shutting down; try again "
                                "later"
                              : "This gateway cannot send messages");
        return;
    }
    op = op_new(r, ORIGIN_NONE, in);
    op->addr = xstrdup(addr);
    op->started = now_ms();
    store_reg_get_addr(r->store, r->gw, in->bare, on_msg_owner, op);
}

static void handle_message(struct router *r, const struct in *in)
{
    const char *type = in->type ? in->type : "normal";
    const struct xnode *body;

    if (strcmp(type, "groupchat") == 0 || strcmp(type, "error") == 0)
        return;
    body = xnode_child(in->st, "body", NULL);
    if (!body)
        return; /* chat states, receipts, markers: nothing to bridge */
    if (in->to_jid.node[0])
        message_to_contact(r, in, body->text);
    else
        chat_command(r, in, body->text);
}

/* ---- inbound delivery -------------------------------------------------- */

static struct xnode *inbound_message(const char *from, const char *to,
                                     const char *type, const char *body,
                                     const char *thread)
{
    struct xnode *st = stanza_message(from, to, type, body);
    char id[24];

    stanza_new_id(id);
    xnode_set_attr(st, "id", id);
    if (thread)
        xnode_add_text(st, "thread", thread);
    return st;
}

static enum deliver_result deliver_to(struct router *r, const struct inmsg *m,
                                      const char *owner)
{
    char node[NODE_MAX];
    char *from;
    char *text = NULL;
    bool sent = false;
    enum deliver_result res = DELIVER_OK;
    char mask[128];
    /* Mail is "normal" (RFC 6121: a message outside a one-to-one chat,
     * expecting a reply; XEP-0201: a reply keeps its <thread/>); clients
     * such as Conversations show it like chat. SMS is chat. */
    const char *type =
        strcmp(r->t->ops->name, "email") == 0 ? "normal" : "chat";

    if (!r->t->ops->addr_to_node ||
        r->t->ops->addr_to_node(r->t, m->from_addr, node, sizeof(node)) < 0) {
        log_warn(r->mod, "inbound from %s: not a contact address; dropped",
                 log_mask(m->from_addr, mask, sizeof(mask)));
        return DELIVER_DROP;
    }
    /* Checked first so that a down stream does not split a message. */
    if (!r->sink.up(r->sink.arg))
        return DELIVER_RETRY;
    from = contact_jid(r, node);
    if (m->body && m->extra)
        text = xasprintf("%s\n\n%s", m->body, m->extra);
    else if (m->body || m->extra)
        text = xstrdup(m->body ? m->body : m->extra);
    if (text) {
        struct xnode *st = inbound_message(from, owner, type, text, m->thread);
        if (m->subject)
            xnode_add_text(st, "subject", m->subject);
        if (emit(r, st) < 0)
            res = DELIVER_RETRY;
        sent = true;
    }
    /* One message per item, body exactly the URL, for inline display. */
    for (size_t i = 0; i < m->n_media && res == DELIVER_OK; i++) {
        struct xnode *st =
            inbound_message(from, owner, type, m->media[i], m->thread);
        struct xnode *x = xnode_add_ns(st, "x", NS_OOB);
        xnode_add_text(x, "url", m->media[i]);
        if (emit(r, st) < 0)
            res = DELIVER_RETRY;
        sent = true;
    }
    if (!sent)
        log_info(r->mod, "inbound from %s is empty; dropped",
                 log_mask(m->from_addr, mask, sizeof(mask)));
    else if (res == DELIVER_OK)
        log_debug(r->mod, "delivered from %s to %s", from, owner);
    free(text);
    free(from);
    return res;
}

/* A notice for a sender: an XEP-0184 receipt or an error stanza. */
static enum deliver_result emit_notice(struct router *r, const struct inmsg *m)
{
    struct xnode *st;
    struct error e;
    char id[24];

    if (m->kind == INMSG_RECEIPT) {
        st = stanza_message(m->contact, m->jid, NULL, NULL);
        stanza_new_id(id);
        xnode_set_attr(st, "id", id);
        xnode_set_attr(xnode_add_ns(st, "received", NS_RECEIPTS), "id",
                       m->ref_id);
    } else {
        error_set(&e, m->cond, m->temporary, "%s",
                  m->text && *m->text ? m->text : "Not sent");
        st = stanza_error_to("message", m->contact, m->jid, m->ref_id, &e);
        if (m->body)
            xnode_add_text(st, "body", m->body);
    }
    return emit(r, st) < 0 ? DELIVER_RETRY : DELIVER_OK;
}

/* What the head of the chain comes to, once its lookup answered. */
static enum deliver_result dq_result(struct router *r, struct op *op)
{
    const struct inmsg *m = op->m;
    bool notice = m->kind != INMSG_MESSAGE;
    char mask[128];

    if (r->dq_failed)
        return DELIVER_RETRY; /* keep the order behind a postponed one */
    if (op->dq_err) {
        if (notice)
            log_warn(r->mod, "cannot look up %s: %s",
                     log_mask(op->bare, mask, sizeof(mask)), op->dq_errmsg);
        else
            log_warn(r->mod, "cannot look up the owner of %s: %s",
                     log_mask(m->to_addr, mask, sizeof(mask)), op->dq_errmsg);
        return DELIVER_RETRY;
    }
    if (!op->dq_value) {
        if (notice)
            /* unregistered meanwhile: nothing is delivered to it any more */
            log_info(r->mod, "notice for %s dropped: not registered",
                     log_mask(op->bare, mask, sizeof(mask)));
        else
            log_notice(r->mod, "nobody owns %s; inbound message dropped",
                       log_mask(m->to_addr, mask, sizeof(mask)));
        return DELIVER_DROP;
    }
    if (!notice)
        return deliver_to(r, m, op->dq_value);
    if (!r->sink.up(r->sink.arg))
        return DELIVER_RETRY;
    return emit_notice(r, m);
}

/* Finishes the resolved ops at the head of the chain, in order. */
static void dq_drain(struct router *r)
{
    if (r->dq_draining)
        return; /* a done() below led back here: the loop carries on */
    r->dq_draining = true;
    while (r->dq_head && r->dq_head->dq_resolved) {
        struct op *op = r->dq_head;
        deliver_done_fn *done = op->done;
        void *done_arg = op->done_arg;
        enum deliver_result res;

        r->dq_head = op->dq_next;
        if (!r->dq_head)
            r->dq_tail = NULL;
        res = dq_result(r, op);
        if (res == DELIVER_RETRY)
            r->dq_failed = true;
        op_free(op);
        done(res, done_arg);
    }
    if (!r->dq_head)
        r->dq_failed = false;
    r->dq_draining = false;
}

static void on_dq_owner(const struct error *err, const char *value, void *arg)
{
    struct op *op = arg;

    if (op_orphaned(op))
        return;
    op->dq_resolved = true;
    if (err) {
        op->dq_err = true;
        snprintf(op->dq_errmsg, sizeof(op->dq_errmsg), "%s", err->msg);
    } else if (value) {
        op->dq_value = xstrdup(value);
    }
    dq_drain(op->r);
}

/* Appends an op for m to the chain; its lookup is issued by the caller. */
static struct op *dq_push(struct router *r, const struct inmsg *m,
                          deliver_done_fn *done, void *done_arg)
{
    struct op *op = op_new(r, ORIGIN_NONE, NULL);

    op->m = m;
    op->done = done;
    op->done_arg = done_arg;
    if (r->dq_tail)
        r->dq_tail->dq_next = op;
    else
        r->dq_head = op;
    r->dq_tail = op;
    return op;
}

static void deliver_notice(struct router *r, const struct inmsg *m,
                           deliver_done_fn *done, void *done_arg)
{
    struct jid cj;
    char bare[JID_MAX];
    struct op *op;

    if (!m->jid || !m->contact || jid_bare(m->jid, bare, sizeof(bare)) < 0 ||
        jid_parse(m->contact, &cj) < 0 || strcmp(cj.domain, r->gw) != 0) {
        log_warn(r->mod, "malformed notice; dropped");
        done(DELIVER_DROP, done_arg);
        return;
    }
    op = dq_push(r, m, done, done_arg);
    op->bare = xstrdup(bare);
    store_reg_get_addr(r->store, r->gw, bare, on_dq_owner, op);
}

void router_deliver(void *router, const struct inmsg *m, deliver_done_fn *done,
                    void *done_arg)
{
    struct router *r = router;
    struct op *op;

    if (m->kind != INMSG_MESSAGE) {
        deliver_notice(r, m, done, done_arg);
        return;
    }
    if (!m->to_addr || !m->from_addr) {
        log_warn(r->mod, "inbound message without addresses; dropped");
        done(DELIVER_DROP, done_arg);
        return;
    }
    op = dq_push(r, m, done, done_arg);
    /* concurrent with the other lookups of the batch: one round trip */
    store_reg_get_jid(r->store, r->gw, m->to_addr, on_dq_owner, op);
}

/* ---- outbound sends (queue consumer) ------------------------------------ */

static void on_send_done(void *arg, const struct error *err,
                         const char *provider_id)
{
    struct op *op = arg;
    outbound_done_fn *done = op->odone;
    void *done_arg = op->odone_arg;
    struct error e;

    if (op_orphaned(op))
        return;
    if (err) {
        e = *err;
        if (e.code == COND_NONE)
            e.code =
                e.temporary ? COND_REMOTE_SERVER_TIMEOUT : COND_NOT_ACCEPTABLE;
    }
    op_free(op);
    done(done_arg, err ? &e : NULL, provider_id,
         err && err->temporary ? err->retry_after_s * 1000u : 0);
}

/*
 * The sender's registration as looked up (by the queue's read, or here)
 * just before the send: SPEC 3, nothing is sent for a JID after it
 * unregistered, nor from an address it no longer holds.
 */
static void on_send_owner(const struct error *err, const char *value, void *arg)
{
    struct op *op = arg;
    struct router *r;
    const struct outmsg *om;
    outbound_done_fn *done = op->odone;
    void *done_arg = op->odone_arg;
    struct error e;
    struct msg m;

    if (op_orphaned(op))
        return;
    r = op->r;
    om = op->om;
    error_clear(&e);
    if (err) {
        e = *err;
        e.temporary = true;
    } else if (!value || strcmp(value, om->from_addr) != 0) {
        /* SPEC 3: nothing is sent for a JID after it unregistered */
        error_set(&e, COND_REGISTRATION_REQUIRED, false,
                  "Not sent: you are no longer registered with %s as %s", r->gw,
                  om->from_addr);
    } else {
        memset(&m, 0, sizeof(m));
        m.gw = r->gw;
        m.from_jid = om->from_jid;
        m.from_addr = om->from_addr;
        m.to_jid = om->to_jid;
        m.to_addr = om->to_addr;
        m.id = om->id;
        m.body = om->body;
        m.subject = om->subject;
        m.thread = om->thread;
        for (size_t i = 0; i < om->n_media && i < MSG_MAX_MEDIA; i++)
            m.media[m.n_media++] = om->media[i];
        m.receipt = om->receipt;
        if (r->t->ops->send(r->t, &m, on_send_done, op, &e) == 0)
            return; /* on_send_done finishes op */
        if (e.code == COND_NONE)
            e.code =
                e.temporary ? COND_REMOTE_SERVER_TIMEOUT : COND_NOT_ACCEPTABLE;
    }
    if (!e.msg[0])
        snprintf(e.msg, sizeof(e.msg), "%s", "Not sent");
    op_free(op);
    done(done_arg, &e, NULL, 0);
}

void router_send(void *router, const struct outmsg *m, outbound_done_fn *done,
                 void *done_arg)
{
    struct router *r = router;
    char bare[JID_MAX];
    struct op *op;
    struct error e;

    if (jid_bare(m->from_jid, bare, sizeof(bare)) < 0 || !r->t->ops->send) {
        error_set(&e, COND_BAD_REQUEST, false, "Not sent: malformed sender");
        done(done_arg, &e, NULL, 0);
        return;
    }
    op = op_new(r, ORIGIN_NONE, NULL);
    op->bare = xstrdup(bare);
    op->om = m;
    op->odone = done;
    op->odone_arg = done_arg;
    if (m->sender_checked) {
        /* the queue's read looked it up in the same script: no second
         * round trip (done may run synchronously, which the queue allows) */
        on_send_owner(NULL, m->sender_addr, op);
        return;
    }
    store_reg_get_addr(r->store, r->gw, bare, on_send_owner, op);
}

/* ---- delivery status (provider webhooks) --------------------------------- */

/* Ends a delivery-status op: the webhook learns whether it is durable. */
static void delivery_finish(struct op *op, const struct error *err)
{
    router_delivery_done_fn *done = op->ddone;
    void *arg = op->ddone_arg;

    op_free(op);
    if (done)
        done(arg, err);
}

static void on_notice_pushed(const struct error *err, void *arg)
{
    struct op *op = arg;

    if (op_orphaned(op))
        return;
    if (err)
        log_warn(op->r->mod,
                 "delivery status for %s not stored (%s): the provider is "
                 "asked to send it again",
                 op->addr, err->msg);
    delivery_finish(op, err);
}

static void on_receipt_map(const struct error *err, const char *value,
                           void *arg)
{
    struct op *op = arg;
    struct router *r;
    struct outref ref;
    struct error e;
    struct inmsg n;

    if (op_orphaned(op))
        return;
    r = op->r;
    if (err) {
        log_warn(r->mod, "delivery status for %s: cannot look it up: %s",
                 op->addr, err->msg);
        delivery_finish(op, err);
        return;
    }
    if (!value || outref_from_json(value, &ref, &e) < 0) {
        log_info(r->mod, "delivery status for unknown message %s ignored",
                 op->addr);
        delivery_finish(op, NULL);
        return;
    }
    if (op->dstate == DELIVERY_DELIVERED && !ref.receipt) {
        log_debug(r->mod, "%s delivered (no receipt requested)", op->addr);
        outref_free_fields(&ref);
        delivery_finish(op, NULL);
        return;
    }
    memset(&n, 0, sizeof(n));
    n.jid = ref.jid;
    n.contact = ref.contact;
    n.ref_id = ref.id;
    /* the first final status of a provider message wins */
    n.provider_id = xasprintf("status:%s", op->addr);
    if (op->dstate == DELIVERY_DELIVERED) {
        n.kind = INMSG_RECEIPT;
    } else {
        n.kind = INMSG_ERROR;
        n.cond = op->has_derr && op->derr.code != COND_NONE &&
                         op->derr.code != COND_INTERNAL_SERVER_ERROR
                     ? op->derr.code
                     : COND_RECIPIENT_UNAVAILABLE;
        n.temporary = false;
        n.text = xasprintf("Not delivered: %s",
                           op->has_derr && op->derr.msg[0]
                               ? op->derr.msg
                               : "the carrier could not deliver the message");
    }
    /* ref's strings now belong to n */
    memset(&ref, 0, sizeof(ref));
    queue_inbound_push(r->queue, r->gw, &n, on_notice_pushed, op);
    inmsg_free_fields(&n);
}

static void delivery_noop(evutil_socket_t fd, short what, void *arg)
{
    struct op *op = arg;
    (void)fd;
    (void)what;
    if (op_orphaned(op))
        return;
    delivery_finish(op, NULL);
}

void router_on_delivery(struct router *r, const char *provider_id,
                        enum delivery_state state, const struct error *err,
                        router_delivery_done_fn *done, void *done_arg)
{
    struct op *op;

    op = op_new(r, ORIGIN_NONE, NULL);
    op->ddone = done;
    op->ddone_arg = done_arg;
    if (state == DELIVERY_SENT || !provider_id || !*provider_id || !r->queue) {
        /* nothing to tell the user; still answer after this call */
        event_base_once(store_event_base(r->store), -1, EV_TIMEOUT,
                        delivery_noop, op, NULL);
        return;
    }
    op->addr = xstrdup(provider_id);
    op->dstate = state;
    if (err) {
        op->derr = *err;
        op->has_derr = true;
    }
    store_receipt_get(r->store, r->gw, provider_id, on_receipt_map, op);
}

bool router_ready(void *router)
{
    struct router *r = router;

    return r->sink.up(r->sink.arg);
}

/* ---- lifecycle --------------------------------------------------------- */

/* XEP-0100: after (re)connecting, ask every registered user for presence;
 * their answers bring the gateway's and the contacts' presence back. */
static void on_reg_list(const struct error *err, size_t n, char *const *keys,
                        char *const *values, void *arg)
{
    struct op *op = arg;
    struct router *r;

    (void)values;
    if (op_orphaned(op))
        return;
    r = op->r;
    if (err) {
        log_warn(r->mod, "cannot list registrations: %s", err->msg);
        n = 0;
    }
    for (size_t i = 0; i < n && r->sink.up(r->sink.arg); i++)
        if (keys[i])
            emit(r, presence(r->gw, keys[i], "probe"));
    op_free(op);
}

void router_on_state(void *router, bool up)
{
    struct router *r = router;

    log_info(r->mod, "stream %s", up ? "up" : "down");
    if (up)
        store_reg_list(r->store, r->gw, on_reg_list,
                       op_new(r, ORIGIN_NONE, NULL));
}

/* Stanzas that must be answered when they cannot be handled. */
static bool wants_reply(const struct xnode *n, const char *type)
{
    if (strcmp(n->name, "iq") == 0)
        return type && (!strcmp(type, "get") || !strcmp(type, "set"));
    if (strcmp(n->name, "message") == 0)
        return xnode_child(n, "body", NULL) &&
               (!type || (strcmp(type, "error") && strcmp(type, "groupchat")));
    return false;
}

void router_on_stanza(void *router, const struct xnode *n)
{
    struct router *r = router;
    struct in in;

    memset(&in, 0, sizeof(in));
    in.st = n;
    in.from = xnode_attr(n, "from");
    in.to = xnode_attr(n, "to");
    in.type = xnode_attr(n, "type");
    if (!in.to)
        in.to = r->gw;
    if (!in.from || jid_bare(in.from, in.bare, sizeof(in.bare)) < 0 ||
        jid_domain(in.from, in.domain, sizeof(in.domain)) < 0) {
        log_debug(r->mod, "<%s/> without a valid sender ignored", n->name);
        return;
    }
    if (jid_parse(in.to, &in.to_jid) < 0) {
        if (wants_reply(n, in.type))
            reply_cond(r, n, COND_JID_MALFORMED, false, "Malformed address");
        return;
    }
    if (strcmp(in.to_jid.domain, r->gw) != 0) {
        if (wants_reply(n, in.type))
            reply_cond(r, n, COND_SERVICE_UNAVAILABLE, false,
                       "Not served by this gateway");
        return;
    }
    in.allowed = strlist_contains_ci(&r->t->conf->allowed_domains, in.domain);
    if (strcmp(n->name, "iq") == 0)
        handle_iq(r, &in);
    else if (strcmp(n->name, "message") == 0)
        handle_message(r, &in);
    else if (strcmp(n->name, "presence") == 0)
        handle_presence(r, &in);
}

static char *identity_name(const struct transport_ops *ops)
{
    if (strcmp(ops->name, "sms") == 0)
        return xstrdup("postern SMS gateway");
    return xasprintf("postern %s gateway", ops->name);
}

struct router *router_new(struct transport *t, const struct router_sink *sink,
                          struct store *s)
{
    struct router *r = xcalloc(1, sizeof(*r));

    r->t = t;
    r->sink = *sink;
    r->store = s;
    r->queue = t->host ? t->host->queue : NULL;
    r->gw = t->conf->jid;
    r->mod = t->module;
    r->gw_name = identity_name(t->ops);
    r->contact_type =
        t->ops->contact_type ? t->ops->contact_type : t->ops->identity_type;
    build_features(r);
    return r;
}

void router_free(struct router *r)
{
    if (!r)
        return;
    /*
     * Deliveries whose lookup answered but that wait behind the head of
     * the chain get no further callback: hand them back for a retry.
     */
    while (r->dq_head) {
        struct op *op = r->dq_head;
        r->dq_head = op->dq_next;
        op->dq_next = NULL;
        if (op->dq_resolved) {
            deliver_done_fn *done = op->done;
            void *done_arg = op->done_arg;
            op_free(op);
            done(DELIVER_RETRY, done_arg);
        }
    }
    r->dq_tail = NULL;
    /* Orphan what is still in flight; its callbacks finish on their own. */
    for (struct op *op = r->ops, *next; op; op = next) {
        next = op->next;
        op->r = NULL;
        op->prev = op->next = NULL;
    }
    free(r->gw_name);
    free(r);
}

void router_stop(struct router *r)
{
    r->stopped = true;
}

size_t router_inflight(const struct router *r)
{
    return r->n_ops;
}
