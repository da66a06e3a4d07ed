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
#include <stdlib.h>
#include <string.h>

#include "addr.h"
#include "config.h"
#include "log.h"
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
    const char *gw;  /* t->conf->jid */
    const char *mod; /* t->module, the log prefix */
    char *gw_name;   /* disco identity name */
    const char *contact_type;
    struct feature_set gw_features;
    struct feature_set contact_features;
    bool stopped;
    struct op *ops; /* in flight */
    size_t n_ops;
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
    free(op);
}

/*
 * The router went away while op waited: finish without touching it. A
 * delivery is handed back for a retry so its done still runs once.
 */
static bool op_orphaned(struct op *op)
{
    if (op->r)
        return false;
    if (op->done)
        op->done(DELIVER_RETRY, op->done_arg);
    op_free(op);
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
static void fix_error(struct error *err, const struct error *src)
{
    *err = *src;
    if (err->code == COND_NONE) {
        err->code = COND_INTERNAL_SERVER_ERROR;
        err->temporary = true;
    }
    if (!err->msg[0])
        snprintf(err->msg, sizeof(err->msg), "%s",
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

static void send_available(struct router *r, const char *from,
                           const char *to, const struct feature_set *fs)
{
    struct xnode *p = presence(from, to, NULL);

    add_caps(p, fs);
    emit(r, p);
}

static char *contact_jid(const struct router *r, const char *node)
{
    return xasprintf("%s@%s", node, r->gw);
}

