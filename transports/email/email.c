/*
 * email: the email transport core. For now it owns only the address rules:
 * a contact JID's node is the address escaped per XEP-0106 (Prosody's
 * rules, see addr.h), human-typed addresses are normalised, and a user may
 * claim only an address in the gateway's mail_domain. Sending answers
 * feature-not-implemented; SMTP out and LMTP in come with the email work
 * (smtp_out.c, lmtp_in.c, mime.c beside this file).
 *
 * Disco type of contact JIDs: "pc". The registry (XEP-0030 categories)
 * has no "email" client type; "sms" would make clients such as Cheogram
 * and Conversations treat the contact as a phone number, and "pc" is the
 * neutral "someone at a computer" that clients show without surprises.
 *
 * It must never block, never log an address unmasked at info, and never
 * send anything over the network from this file.
 */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "addr.h"
#include "config.h"
#include "transport.h"

/* Declared where it is used (registry.c); email has no header yet. */
extern const struct transport_ops email_transport_ops;

struct email_priv {
    size_t inflight; /* always 0 until sending exists */
    bool stopping;
};

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

static int email_start(struct transport *t, struct error *err)
{
    (void)t;
    (void)err;
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

static int email_claim(const struct transport *t, const char *typed, char *out,
                       size_t size, struct error *err)
{
    const char *want = t->conf->mail_domain ? t->conf->mail_domain : "";
    const char *domain;

    if (email_normalize(typed, out, size) < 0) {
        error_set(err, COND_NOT_ACCEPTABLE, false,
                  "\"%.60s\" is not an email address; enter yours as "
                  "name@%s",
                  typed, want);
        return -1;
    }
    domain = email_domain(out);
    if (!domain || !str_ieq(domain, want)) {
        error_set(err, COND_NOT_ACCEPTABLE, false,
                  "%.80s is not an address of this gateway; use one "
                  "ending in @%s",
                  out, want);
        return -1;
    }
    return 0;
}

static int email_send(struct transport *t, const struct msg *m,
                      send_done_fn *done, void *arg, struct error *err)
{
    (void)t;
    (void)m;
    (void)done;
    (void)arg;
    error_set(err, COND_FEATURE_NOT_IMPLEMENTED, false,
              "email sending is not built yet");
    return -1;
}

static size_t email_inflight(const struct transport *t)
{
    const struct email_priv *p = t->priv;
    return p->inflight;
}

static void email_stop(struct transport *t)
{
    struct email_priv *p = t->priv;
    p->stopping = true;
}

static void email_destroy(struct transport *t)
{
    (void)t; /* priv holds nothing that needs freeing yet */
}

const struct transport_ops email_transport_ops = {
    .abi = TRANSPORT_ABI,
    .name = "email",
    /* RECEIVE and LISTENER arrive with LMTP, MEDIA with attachments */
    .caps = TCAP_SEND,
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
