/*
 * sms: the SMS transport core. It owns what every provider shares: the
 * contact address rules (strict E.164 JID nodes, human-typed numbers,
 * which numbers a user may claim), the destination country policy
 * (limits.allowed_countries), splitting long bodies into provider-sized
 * parts, and the count of sends in flight. Each provider adapter behind
 * provider.h turns one part into one request.
 *
 * Providers are chosen by conf->provider.name. Only "sandbox" is built
 * now. "twilio", "telnyx" and "vonage" are refused by configure (so
 * postern refuses to start, naming the gateway) with a permanent error
 * "provider twilio is not built yet": failing at start is better than
 * accepting messages that could never be sent.
 *
 * A long body is sent as several requests, one after the other, in order;
 * only the first carries the media. The message's provider id (for
 * delivery receipts) is the last part's. If a later part fails after
 * earlier ones went out, the failure is reported as permanent, naming the
 * part, because a retry of the whole message would send the earlier parts
 * twice.
 *
 * It must never block, never call done from inside send, never log a
 * body above debug or a number unmasked at info.
 */
#include "sms.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "addr.h"
#include "config.h"
#include "log.h"
#include "provider.h"

struct sms_job;

struct sms_priv {
    const struct sms_provider_ops *provider;
    void *pstate;
    const char *default_cc;
    size_t inflight;
    bool stopping;
    struct sms_job *jobs; /* in flight, freed by destroy if never done */
};

/* One outbound message while its parts are being sent. */
struct sms_job {
    struct sms_job *prev, *next;
    struct transport *t;
    char *gw, *from, *to;
    char **parts; /* NUL-terminated bodies; NULL entry when media only */
    unsigned n_parts;
    unsigned cur;
    char *media[MSG_MAX_MEDIA];
    size_t n_media;
    send_done_fn *done;
    void *arg;
};

/*
 * Providers known to postern but not written yet: refused by name, with a
 * message that tells the operator it is not a typo.
 */
static const char *const unbuilt_providers[] = {"twilio", "telnyx", "vonage"};

static const struct sms_provider_ops *const providers[] = {
    &sms_provider_sandbox,
};

static bool is_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' ||
           c == '\f';
}

/* Byte length of the code point at s (at least 1; stops at NUL). */
static size_t cp_len(const char *s)
{
    size_t n = 1;
    while (s[n] && ((unsigned char)s[n] & 0xC0) == 0x80)
        n++;
    return n;
}

size_t sms_count_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            n++;
    return n;
}

/* End of the text before the whitespace run that contains s[i]. */
static size_t text_end_before(const char *s, size_t i)
{
    while (i > 0 && is_space((unsigned char)s[i - 1]))
        i--;
    return i;
}

size_t sms_split_next(const char *s, size_t limit, size_t *next)
{
    size_t i = 0, n = 0, cut = 0;

    while (s[i] && n < limit) {
        if (is_space((unsigned char)s[i])) {
            size_t e = text_end_before(s, i);
            if (e > 0)
                cut = e;
        }
        i += cp_len(s + i);
        n++;
    }
    if (!s[i]) {
        *next = i;
        return i;
    }
    /* whitespace right after the limit is as good a cut as any before */
    if (is_space((unsigned char)s[i])) {
        size_t e = text_end_before(s, i);
        if (e > 0)
            cut = e;
    }
    if (!cut)
        cut = i; /* i sits on a code point boundary */
    *next = cut;
    while (s[*next] && is_space((unsigned char)s[*next]))
        (*next)++;
    return cut;
}

static struct sms_priv *priv_of(const struct transport *t)
{
    return t->priv;
}

static int sms_configure(struct transport *t, struct error *err)
{
    struct sms_priv *p = priv_of(t);
    const struct gateway_conf *c = t->conf;
    const char *name = c->provider.name ? c->provider.name : "";

    for (size_t i = 0; i < c->numbers.n; i++) {
        if (!e164_valid(c->numbers.v[i])) {
            error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                      "numbers: \"%.40s\" is not an E.164 number "
                      "(+ and 2 to 15 digits)",
                      c->numbers.v[i]);
            return -1;
        }
    }
    p->default_cc = c->default_country_code && *c->default_country_code
                        ? c->default_country_code
                        : "1";

    for (size_t i = 0; i < ARRAY_SIZE(providers); i++)
        if (strcmp(providers[i]->name, name) == 0)
            p->provider = providers[i];
    if (!p->provider) {
        for (size_t i = 0; i < ARRAY_SIZE(unbuilt_providers); i++) {
            if (strcmp(unbuilt_providers[i], name) == 0) {
                error_set(err, COND_FEATURE_NOT_IMPLEMENTED, false,
                          "provider %s is not built yet (use \"sandbox\")",
                          name);
                return -1;
            }
        }
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "provider.name: unknown SMS provider \"%.40s\"", name);
        return -1;
    }
    p->pstate = p->provider->init(t, err);
    return p->pstate ? 0 : -1;
}

static int sms_start(struct transport *t, struct error *err)
{
    struct sms_priv *p = priv_of(t);

    if (p->provider->start)
        return p->provider->start(p->pstate, err);
    return 0;
}

static int sms_addr_parse(const struct transport *t, const char *node,
                          char *out, size_t size, struct error *err)
{
    (void)t;
    if (!e164_valid(node)) {
        error_set(err, COND_JID_MALFORMED, false,
                  "\"%.40s\" is not a phone number in international "
                  "format: write + then the country code and number, "
                  "e.g. +15551234567",
                  node);
        return -1;
    }
    if (strlen(node) >= size) {
        error_set(err, COND_JID_MALFORMED, false, "phone number too long");
        return -1;
    }
    strcpy(out, node);
    return 0;
}

static int sms_addr_to_node(const struct transport *t, const char *addr,
                            char *out, size_t size)
{
    (void)t;
    if (strlen(addr) >= size)
        return -1;
    strcpy(out, addr);
    return 0;
}

static int sms_addr_from_human(const struct transport *t, const char *typed,
                               char *out, size_t size, struct error *err)
{
    const struct sms_priv *p = priv_of(t);

    if (e164_from_human(typed, p->default_cc, out, size) < 0) {
        error_set(err, COND_NOT_ACCEPTABLE, false,
                  "\"%.40s\" is not a phone number; type it with its "
                  "country code, e.g. +44 20 7946 0958",
                  typed);
        return -1;
    }
    return 0;
}

static int sms_claim(const struct transport *t, const char *typed, char *out,
                     size_t size, struct error *err)
{
    const struct sms_priv *p = priv_of(t);

    if (e164_from_human(typed, p->default_cc, out, size) < 0) {
        error_set(err, COND_NOT_ACCEPTABLE, false,
                  "\"%.40s\" is not a phone number; enter your number "
                  "with its country code, e.g. +15550001111",
                  typed);
        return -1;
    }
    if (!strlist_contains(&t->conf->numbers, out)) {
        error_set(err, COND_NOT_ACCEPTABLE, false,
                  "%s is not one of this gateway's numbers; ask your "
                  "administrator which number you may use",
                  out);
        return -1;
    }
    return 0;
}

static bool country_allowed(const struct gateway_conf *c, const char *to)
{
    const struct strlist *l = &c->limits.allowed_countries;

    if (l->n == 0)
        return true;
    for (size_t i = 0; i < l->n; i++)
        if (e164_has_prefix(to, l->v[i]))
            return true;
    return false;
}

static void country_list(const struct gateway_conf *c, char *buf, size_t size)
{
    const struct strlist *l = &c->limits.allowed_countries;
    size_t o = 0;

    buf[0] = '\0';
    for (size_t i = 0; i < l->n && o + 1 < size; i++) {
        int w = snprintf(buf + o, size - o, "%s%s", i ? ", " : "", l->v[i]);
        if (w < 0)
            break;
        o += (size_t)w;
    }
}

static void job_free(struct sms_job *j)
{
    for (unsigned i = 0; i < j->n_parts; i++)
        free(j->parts[i]);
    free(j->parts);
    for (size_t i = 0; i < j->n_media; i++)
        free(j->media[i]);
    free(j->gw);
    free(j->from);
    free(j->to);
    free(j);
}

static void job_unlink(struct sms_priv *p, struct sms_job *j)
{
    if (j->prev)
        j->prev->next = j->next;
    else
        p->jobs = j->next;
    if (j->next)
        j->next->prev = j->prev;
}

static void split_body(struct sms_job *j, const char *body, size_t limit)
{
    size_t cap = 4, off = 0;

    j->parts = xcalloc(cap, sizeof(*j->parts));
    if (!body || !*body) {
        j->n_parts = 1; /* media only: one request without a body */
        return;
    }
    while (body[off]) {
        size_t next, len = sms_split_next(body + off, limit, &next);
        if (j->n_parts == cap) {
            cap *= 2;
            j->parts = xrealloc(j->parts, cap * sizeof(*j->parts));
        }
        j->parts[j->n_parts++] = xstrndup(body + off, len);
        off += next;
    }
}

static int job_send_current(struct sms_job *j, struct error *err);

/* Ends the job: exactly one done call, then the job is gone. */
static void job_finish(struct sms_job *j, const struct error *err,
                       const char *provider_id)
{
    struct sms_priv *p = priv_of(j->t);
    send_done_fn *done = j->done;
    void *arg = j->arg;

    job_unlink(p, j);
    p->inflight--;
    job_free(j);
    done(arg, err, provider_id);
}

static void part_done(void *arg, const struct error *err,
                      const char *provider_id)
{
    struct sms_job *j = arg;
    struct error e;

    if (err) {
        if (j->cur == 0) {
            job_finish(j, err, NULL);
            return;
        }
        error_set(&e, err->code, false, "part %u of %u not sent: %s",
                  j->cur + 1, j->n_parts, err->msg);
        job_finish(j, &e, NULL);
        return;
    }
    if (++j->cur == j->n_parts) {
        job_finish(j, NULL, provider_id);
        return;
    }
    /* we are in the provider's deferred callback, not inside send() */
    if (job_send_current(j, &e) < 0) {
        struct error e2;
        error_set(&e2, e.code, false, "part %u of %u not sent: %s", j->cur + 1,
                  j->n_parts, e.msg);
        job_finish(j, &e2, NULL);
    }
}

static int job_send_current(struct sms_job *j, struct error *err)
{
    struct sms_priv *p = priv_of(j->t);
    struct sms_part part = {
        .gw = j->gw,
        .from = j->from,
        .to = j->to,
        .body = j->parts[j->cur],
        .media = j->cur == 0 ? (const char *const *)j->media : NULL,
        .n_media = j->cur == 0 ? j->n_media : 0,
        .index = j->cur,
        .count = j->n_parts,
    };

    return p->provider->send(p->pstate, &part, part_done, j, err);
}

static int sms_send(struct transport *t, const struct msg *m,
                    send_done_fn *done, void *arg, struct error *err)
{
    struct sms_priv *p = priv_of(t);
    struct sms_job *j;
    char masked[32];

    if (p->stopping) {
        error_set(err, COND_SERVICE_UNAVAILABLE, true,
                  "the SMS gateway is shutting down; try again shortly");
        return -1;
    }
    if (!m->to_addr || !e164_valid(m->to_addr)) {
        error_set(err, COND_JID_MALFORMED, false,
                  "the recipient is not a phone number in international "
                  "format (e.g. +15551234567)");
        return -1;
    }
    if (!m->from_addr || !e164_valid(m->from_addr)) {
        error_set(err, COND_REGISTRATION_REQUIRED, false,
                  "you have no phone number on this gateway; register one "
                  "first");
        return -1;
    }
    if ((!m->body || !*m->body) && m->n_media == 0) {
        error_set(err, COND_BAD_REQUEST, false, "nothing to send");
        return -1;
    }
    if (m->n_media > MSG_MAX_MEDIA) {
        error_set(err, COND_NOT_ACCEPTABLE, false,
                  "at most %d attachments per SMS", MSG_MAX_MEDIA);
        return -1;
    }
    if (!country_allowed(t->conf, m->to_addr)) {
        char list[100];
        country_list(t->conf, list, sizeof(list));
        log_info(t->module, "send to %s refused: country not allowed",
                 log_mask(m->to_addr, masked, sizeof(masked)));
        error_set(err, COND_NOT_ACCEPTABLE, false,
                  "this gateway does not send SMS to %s; allowed country "
                  "codes: %s",
                  m->to_addr, list);
        return -1;
    }

    j = xcalloc(1, sizeof(*j));
    j->t = t;
    j->gw = xstrdup(m->gw ? m->gw : t->conf->jid);
    j->from = xstrdup(m->from_addr);
    j->to = xstrdup(m->to_addr);
    for (size_t i = 0; i < m->n_media; i++)
        j->media[i] = xstrdup(m->media[i]);
    j->n_media = m->n_media;
    j->done = done;
    j->arg = arg;
    split_body(j, m->body, p->provider->max_chars);

    if (job_send_current(j, err) < 0) {
        job_free(j);
        return -1;
    }
    if (j->n_parts > 1)
        log_debug(t->module, "send to %s: body split into %u parts",
                  log_mask(m->to_addr, masked, sizeof(masked)), j->n_parts);
    j->next = p->jobs;
    if (p->jobs)
        p->jobs->prev = j;
    p->jobs = j;
    p->inflight++;
    return 0;
}

static size_t sms_inflight(const struct transport *t)
{
    return priv_of(t)->inflight;
}

static void sms_stop(struct transport *t)
{
    priv_of(t)->stopping = true;
}

static void sms_destroy(struct transport *t)
{
    struct sms_priv *p;

    if (!t || !t->priv)
        return;
    p = priv_of(t);
    /* first the provider, so no completion can reach a freed job */
    if (p->provider && p->pstate)
        p->provider->free(p->pstate);
    p->pstate = NULL;
    while (p->jobs) {
        struct sms_job *j = p->jobs;
        job_unlink(p, j);
        job_free(j);
    }
    p->inflight = 0;
}

const struct transport_ops sms_transport_ops = {
    .abi = TRANSPORT_ABI,
    .name = "sms",
    .caps =
        TCAP_SEND | TCAP_RECEIVE | TCAP_RECEIPTS | TCAP_WEBHOOK | TCAP_MEDIA,
    .priv_size = sizeof(struct sms_priv),
    .identity_type = "sms",
    .contact_type = "sms",
    .reg_field = "phone",
    .reg_label = "Your phone number on this gateway",
    .instructions =
        "Enter the phone number this gateway gave you, with its country "
        "code (e.g. +15550001111). You can then text any number by "
        "messaging +<number>@ this gateway, e.g. +15551234567, and "
        "replies come back to you.",
    .gateway_desc = "Enter the phone number you want to text, with its "
                    "country code (e.g. +44 20 7946 0958). Numbers "
                    "without one use this gateway's default country.",
    .gateway_prompt = "Phone number",
    .configure = sms_configure,
    .start = sms_start,
    .addr_parse = sms_addr_parse,
    .addr_to_node = sms_addr_to_node,
    .addr_from_human = sms_addr_from_human,
    .claim = sms_claim,
    .send = sms_send,
    .inflight = sms_inflight,
    .stop = sms_stop,
    .destroy = sms_destroy,
};
