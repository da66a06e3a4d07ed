/*
 * provider: the interface between the SMS core (sms.c) and one SMS
 * provider adapter (sandbox now; twilio, telnyx, vonage later). One const
 * sms_provider_ops per provider, found by conf->provider.name. The core
 * validates addresses, applies policy and splits long bodies; a provider
 * only turns one part into one API request (or, for the sandbox, a log
 * line and a file line) and reports how it went.
 *
 * send() has the transport's contract: it returns 0 and later calls done
 * exactly once, never from inside send(), or returns -1 with err filled
 * and never calls done. Errors say temporary (retry) or permanent.
 */
#ifndef POSTERN_SMS_PROVIDER_H
#define POSTERN_SMS_PROVIDER_H

#include <stddef.h>

#include "transport.h"
#include "util.h"

/* One provider request. All pointers borrowed for the duration of send(). */
struct sms_part {
    const char *gw;           /* gateway JID */
    const char *from;         /* E.164, the user's claimed number */
    const char *to;           /* E.164 */
    const char *body;         /* NULL when media only */
    const char *const *media; /* URLs; only the first part carries media */
    size_t n_media;
    unsigned index; /* 0-based part number ... */
    unsigned count; /* ... of count parts of one message */
};

struct sms_provider_ops {
    const char *name; /* conf->provider.name */
    size_t max_chars; /* body limit per request, in Unicode code points */
    /*
     * Checks t->conf->provider and returns the provider's state, or NULL
     * with err filled. Contacts nothing and creates no files (postern
     * --check may configure). t is borrowed and outlives the state.
     */
    void *(*init)(struct transport *t, struct error *err);
    /* Optional: opens files, registers webhooks. */
    int (*start)(void *state, struct error *err);
    int (*send)(void *state, const struct sms_part *part, send_done_fn *done,
                void *arg, struct error *err);
    /*
     * NULL-safe, never fails. Completions still pending are dropped without
     * calling their done (the core drains before it frees).
     */
    void (*free)(void *state);
};

extern const struct sms_provider_ops sms_provider_sandbox;

#endif
