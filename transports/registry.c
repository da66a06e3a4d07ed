/*
 * registry: the static table of compiled-in transports and the lifecycle
 * of one transport instance (allocate, configure, free). It owns the
 * struct transport and its priv area, nothing inside priv. It never looks
 * at configuration beyond the gateway JID and never does I/O.
 */
#include "transport.h"

#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "sms/sms.h"

/* Defined in email/email.c; it has no header of its own yet. */
extern const struct transport_ops email_transport_ops;

static const struct transport_ops *const transports[] = {
    &sms_transport_ops,
    &email_transport_ops,
};

const struct transport_ops *transport_lookup(const char *name)
{
    if (!name)
        return NULL;
    for (size_t i = 0; i < ARRAY_SIZE(transports); i++)
        if (strcmp(transports[i]->name, name) == 0)
            return transports[i];
    return NULL;
}

struct transport *transport_new(const struct transport_ops *ops,
                                struct gateway_conf *conf,
                                const struct transport_host *host,
                                struct error *err)
{
    struct transport *t;

    if (!ops || !conf) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "transport_new: no transport or no gateway configuration");
        return NULL;
    }
    if (ops->abi != TRANSPORT_ABI) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "transport %s has ABI %u, postern needs %u", ops->name,
                  ops->abi, TRANSPORT_ABI);
        return NULL;
    }
    t = xcalloc(1, sizeof(*t));
    t->ops = ops;
    t->conf = conf;
    t->host = host;
    t->priv = xcalloc(1, ops->priv_size);
    snprintf(t->module, sizeof(t->module), "%s[%s]", ops->name,
             conf->jid ? conf->jid : "?");
    if (ops->configure && ops->configure(t, err) < 0) {
        /* destroy copes with a half-configured priv, so nothing leaks */
        transport_free(t);
        return NULL;
    }
    return t;
}

void transport_free(struct transport *t)
{
    if (!t)
        return;
    if (t->ops->destroy)
        t->ops->destroy(t);
    free(t->priv);
    free(t);
}
