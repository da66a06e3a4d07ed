/*
 * threads: see threads.h. Pure functions for email.c: thread ids, the
 * RFC 5322 References chain, reply subjects, attachment summaries and the
 * inbound message built from a parsed mail. No I/O, no globals other than
 * the random source behind random_hex; must never log or touch Redis.
 */
#include "threads.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "addr.h"

void email_thread_uuid(const unsigned char rnd[16],
                       char out[EMAIL_THREAD_UUID_SIZE])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char b[16];
    size_t o = 0;

    memcpy(b, rnd, sizeof(b));
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    for (size_t i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[b[i] >> 4];
        out[o++] = hex[b[i] & 0x0f];
    }
    out[o] = '\0';
}

void email_thread_new(char out[EMAIL_THREAD_UUID_SIZE])
{
    char h[33];
    unsigned char b[16];

    random_hex(h, 16);
    for (size_t i = 0; i < 16; i++)
        b[i] =
            (unsigned char)(hex_value(h[2 * i]) * 16 + hex_value(h[2 * i + 1]));
    email_thread_uuid(b, out);
}

bool email_thread_id_ok(const char *tid)
{
    size_t n;

    if (!tid)
        return false;
    n = strlen(tid);
    if (n == 0 || n > EMAIL_THREAD_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)tid[i];
        if (c <= 0x20 || c == 0x7f)
            return false;
    }
    return true;
}

/* ---- References ---- */

struct idlist {
    const char **v;
    size_t n, cap;
};

static void idlist_add(struct idlist *l, const char *id)
{
    if (!id || !*id)
        return;
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->v[i], id) == 0)
            return; /* a chain names each message once */
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 16;
        l->v = xrealloc(l->v, l->cap * sizeof(*l->v));
    }
    l->v[l->n++] = id;
}

/* Joins l with spaces, keeping the first and the max - 1 newest ids. */
static char *idlist_join(const struct idlist *l, size_t max)
{
    struct strbuf b;
    size_t from = 1;

    if (l->n == 0 || max == 0)
        return NULL;
    if (l->n > max)
        from = l->n - (max - 1);
    sb_init(&b);
    sb_puts(&b, l->v[0]);
    for (size_t i = from; i < l->n && max > 1; i++) {
        sb_putc(&b, ' ');
        sb_puts(&b, l->v[i]);
    }
    return sb_steal(&b);
}

char *email_refs_chain(char *const *refs, size_t n_refs,
                       const char *in_reply_to, const char *msgid, size_t max)
{
    struct idlist l = {0};
    char *res;

    if (n_refs > 0) {
        for (size_t i = 0; i < n_refs; i++)
            idlist_add(&l, refs[i]);
    } else if (in_reply_to) {
        idlist_add(&l, in_reply_to);
    }
    idlist_add(&l, msgid);
    res = idlist_join(&l, max);
    free(l.v);
    return res;
}

/* Splits a space-separated chain in place into at most cap ids. */
static size_t split_chain(char *s, char **v, size_t cap)
{
    size_t n = 0;
    char *save = NULL;

    for (char *w = strtok_r(s, " \t", &save); w && n < cap;
         w = strtok_r(NULL, " \t", &save))
        v[n++] = w;
    return n;
}

char *email_refs_chain_str(const char *refs, const char *msgid, size_t max)
{
    char *copy = xstrdup(refs ? refs : "");
    size_t cap = strlen(copy) / 2 + 1;
    char **v = xcalloc(cap, sizeof(*v));
    size_t n = split_chain(copy, v, cap);
    char *res = email_refs_chain(v, n, NULL, msgid, max);

    free(v);
    free(copy);
    return res;
}

char *email_refs_last(const char *chain)
{
    const char *end, *start;

    if (!chain)
        return NULL;
    end = chain + strlen(chain);
    while (end > chain && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    start = end;
    while (start > chain && start[-1] != ' ' && start[-1] != '\t')
        start--;
    return end > start ? xstrndup(start, (size_t)(end - start)) : NULL;
}

char *email_thread_candidates(const struct mail_parsed *p, size_t max)
{
    struct idlist l = {0};
    struct strbuf b;

    idlist_add(&l, p->in_reply_to);
    for (size_t i = p->n_references; i > 0; i--)
        idlist_add(&l, p->references[i - 1]);
    sb_init(&b);
    sb_puts(&b, "");
    for (size_t i = 0; i < l.n && i < max; i++) {
        if (i)
            sb_putc(&b, ' ');
        sb_puts(&b, l.v[i]);
    }
    free(l.v);
    return sb_steal(&b);
}

/* ---- subjects and attachments ---- */

char *email_reply_subject(const char *subject)
{
    if (!subject || str_blank(subject))
        return NULL;
    while (*subject == ' ' || *subject == '\t')
        subject++;
    if (strncasecmp(subject, "re:", 3) == 0)
        return xstrdup(subject);
    return xasprintf("Re: %s", subject);
}

void email_format_size(size_t bytes, char *buf, size_t size)
{
    if (bytes < 1024) {
        snprintf(buf, size, "%zu byte%s", bytes, bytes == 1 ? "" : "s");
    } else if (bytes < 1024u * 1024) {
        snprintf(buf, size, "%zu KB", (bytes + 1023) / 1024);
    } else {
        /* tenths of a MB, rounded up so nothing looks smaller than it is */
        unsigned long long t =
            ((unsigned long long)bytes * 10 + 1024 * 1024 - 1) / (1024 * 1024);
        snprintf(buf, size, "%llu.%llu MB", t / 10, t % 10);
    }
}

char *email_attachment_summary(const struct mail_attachment *a, size_t n)
{
    struct strbuf b;
    char sz[32];

    if (n == 0)
        return NULL;
    sb_init(&b);
    sb_puts(&b, "Attachments: ");
    for (size_t i = 0; i < n; i++) {
        email_format_size(a[i].size, sz, sizeof(sz));
        sb_printf(&b, "%s%s (%s)", i ? ", " : "",
                  a[i].name && *a[i].name ? a[i].name : "unnamed", sz);
    }
    return sb_steal(&b);
}

/* ---- inbound messages ---- */

/* s cut at most max bytes, never inside a UTF-8 sequence; owned. */
static char *cut_text(const char *s, size_t max)
{
    size_t n = strlen(s), k;
    char more[32];

    if (n <= max)
        return xstrdup(s);
    k = max;
    while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80)
        k--;
    email_format_size(n - k, more, sizeof(more));
    return xasprintf("%.*s\n[... message cut: %s more]", (int)k, s, more);
}

int email_sender_addr(const struct mail_parsed *p, const char *mail_from,
                      char *out, size_t size)
{
    if (p->from_addr && email_normalize(p->from_addr, out, size) == 0)
        return 0;
    if (mail_from && *mail_from && email_normalize(mail_from, out, size) == 0)
        return 0;
    return -1;
}

int email_build_inmsg(const struct mail_parsed *p, const char *rcpt,
                      const char *mail_from, const char *thread,
                      const char *digest_hex, struct inmsg *out,
                      struct error *err)
{
    char from[EMAIL_MAX + 1];

    memset(out, 0, sizeof(*out));
    if (email_sender_addr(p, mail_from, from, sizeof(from)) < 0) {
        error_set(err, COND_BAD_REQUEST, false,
                  "the mail has no usable sender address");
        return -1;
    }
    out->kind = INMSG_MESSAGE;
    out->to_addr = xstrdup(rcpt);
    out->from_addr = xstrdup(from);
    if (p->subject && !str_blank(p->subject))
        out->subject = xstrdup(p->subject);
    if (thread)
        out->thread = xstrdup(thread);
    out->extra = email_attachment_summary(p->attachments, p->n_attachments);
    if (p->text && !str_blank(p->text))
        out->body = cut_text(p->text, EMAIL_MAX_TEXT);
    else if (out->subject)
        /* clients that hide <subject/> still show something */
        out->body = xstrdup(out->subject);
    else if (!out->extra)
        out->body = xstrdup("(empty message)");
    if (p->message_id)
        out->provider_id = xasprintf("%s:%s", p->message_id, rcpt);
    else if (digest_hex && *digest_hex)
        out->provider_id = xasprintf("sha256:%s:%s", digest_hex, rcpt);
    return 0;
}
