/*
 * fuzz_addr: every parser of addr.c on the input as a NUL-terminated
 * string, with the invariants the router relies on: XEP-0106 escaping
 * round-trips and yields a usable JID node, normalised numbers and
 * addresses are valid and normalise to themselves, JID parts rebuild the
 * input, and too small output buffers fail instead of overflowing (every
 * buffer is heap-allocated at its exact size so ASan sees overruns).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "addr.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "fuzz_addr: %s:%d: %s\n", __FILE__, __LINE__,      \
                    #cond);                                                    \
            abort();                                                           \
        }                                                                      \
    } while (0)

static char *dup_bytes(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    CHECK(d);
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

/* Runs fn with an out buffer of exactly size bytes; copies result out. */
typedef int (*codec_fn)(const char *in, char *out, size_t size);

static int call_sized(codec_fn fn, const char *in, size_t size, char *copy)
{
    char *out = malloc(size ? size : 1);
    int rc;

    CHECK(out);
    rc = fn(in, out, size);
    if (rc == 0) {
        CHECK(strlen(out) < size);
        if (copy)
            strcpy(copy, out);
    }
    free(out);
    return rc;
}

static void check_jid(const char *s, size_t len)
{
    struct jid *j = malloc(sizeof(*j));
    char *bare, *dom;
    int rc;

    CHECK(j);
    rc = jid_parse(s, j);
    bare = malloc(JID_MAX + 1);
    dom = malloc(1024);
    CHECK(bare && dom);
    if (rc == 0) {
        size_t nl = strlen(j->node), dl = strlen(j->domain);
        size_t rl = strlen(j->resource);
        const char *slash = strchr(s, '/');

        CHECK(dl > 0 && dl < 1024 && nl < 1024 && rl < 1024);
        CHECK(!strchr(j->node, '@') && !strchr(j->node, '/'));
        CHECK(!strchr(j->domain, '@') && !strchr(j->domain, '/'));
        for (const char *p = j->domain; *p; p++)
            CHECK(!(*p >= 'A' && *p <= 'Z') && (unsigned char)*p > 0x20);
        CHECK((rl > 0) == (slash != NULL));
        /* The parts rebuild the input (the domain up to case). */
        CHECK((nl ? nl + 1 : 0) + dl + (slash ? rl + 1 : 0) == len);
        CHECK(strncmp(s, j->node, nl) == 0);
        CHECK(strncasecmp(s + (nl ? nl + 1 : 0), j->domain, dl) == 0);
        if (slash)
            CHECK(strcmp(slash + 1, j->resource) == 0);

        CHECK(jid_bare(s, bare, JID_MAX + 1) == 0);
        CHECK(jid_domain(s, dom, 1024) == 0);
        CHECK(strcmp(dom, j->domain) == 0);
        {
            struct jid *b = malloc(sizeof(*b));
            CHECK(b);
            CHECK(jid_parse(bare, b) == 0);
            CHECK(strcmp(b->node, j->node) == 0);
            CHECK(strcmp(b->domain, j->domain) == 0);
            CHECK(b->resource[0] == '\0');
            free(b);
        }
        /* Exact-size buffer works, one byte less fails. */
        CHECK(call_sized(jid_bare, s, strlen(bare) + 1, NULL) == 0);
        CHECK(call_sized(jid_bare, s, strlen(bare), NULL) == -1);
        CHECK(call_sized(jid_domain, s, dl + 1, NULL) == 0);
        CHECK(call_sized(jid_domain, s, dl, NULL) == -1);
    } else {
        CHECK(jid_bare(s, bare, JID_MAX + 1) == -1);
        CHECK(jid_domain(s, dom, 1024) == -1);
    }
    free(dom);
    free(bare);
    free(j);
}

static int escape_fn(const char *in, char *out, size_t size)
{
    return jid_escape_node(in, out, size);
}

static int unescape_fn(const char *in, char *out, size_t size)
{
    return jid_unescape_node(in, out, size);
}

static void check_xep0106(const char *s, size_t len)
{
    size_t cap = 3 * len + 1;
    char *esc = malloc(cap), *back = malloc(cap), *un = malloc(len + 1);
    size_t elen;

    CHECK(esc && back && un);
    CHECK(jid_escape_node(s, esc, cap) == 0);
    elen = strlen(esc);
    CHECK(elen >= len && elen <= 3 * len);
    /* Nothing a JID node forbids survives escaping. */
    CHECK(strcspn(esc, " \"&'/:<>@") == elen);
    CHECK(jid_unescape_node(esc, back, cap) == 0);
    CHECK(strcmp(back, s) == 0);
    CHECK(call_sized(escape_fn, s, elen + 1, NULL) == 0);
    CHECK(call_sized(escape_fn, s, elen, NULL) == -1);

    /* The escaped form is a JID node as it stands. */
    if (elen > 0 && elen < 1024) {
        struct jid *j = malloc(sizeof(*j));
        char *jid = malloc(elen + 32);
        CHECK(j && jid);
        sprintf(jid, "%s@email.example.org", esc);
        CHECK(jid_parse(jid, j) == 0);
        CHECK(strcmp(j->node, esc) == 0);
        free(jid);
        free(j);
    }

    /* Unescaping arbitrary input never grows it. */
    CHECK(jid_unescape_node(s, un, len + 1) == 0);
    CHECK(strlen(un) <= len);
    CHECK(call_sized(unescape_fn, s, strlen(un) + 1, NULL) == 0);
    CHECK(call_sized(unescape_fn, s, strlen(un), NULL) == -1);

    free(un);
    free(back);
    free(esc);
}

static void check_e164(const char *s)
{
    static const char *const ccs[] = {"1", "44", "+33", "358", NULL, "", "0"};
    char out[E164_MAX + 1], again[E164_MAX + 1];
    char digits[8];
    size_t nd = 0;

    for (const char *p = s; *p && nd < sizeof(digits) - 1; p++)
        if (*p >= '0' && *p <= '9')
            digits[nd++] = *p;
    digits[nd] = '\0';

    if (e164_valid(s)) {
        CHECK(strlen(s) <= E164_MAX);
        CHECK(e164_from_human(s, "1", out, sizeof(out)) == 0);
        CHECK(strcmp(out, s) == 0);
        CHECK(e164_has_prefix(s, s));
        CHECK(e164_has_prefix(s, s + 1));
    }
    for (size_t i = 0; i < sizeof(ccs) / sizeof(ccs[0]); i++) {
        if (e164_from_human(s, ccs[i], out, sizeof(out)) != 0)
            continue;
        CHECK(e164_valid(out));
        CHECK(e164_from_human(out, ccs[i], again, sizeof(again)) == 0);
        CHECK(strcmp(again, out) == 0);
        /* A number typed without '+' or an international prefix is
         * national: it gets the default country code. */
        if (ccs[i] && !strchr(s, '+') && strncmp(digits, "00", 2) != 0 &&
            !(strcmp(ccs[i], "1") == 0 && strncmp(digits, "011", 3) == 0))
            CHECK(e164_has_prefix(out, ccs[i]));
    }
    /* has_prefix never accepts a prefix with anything but digits. */
    CHECK(!e164_has_prefix("+15551234567", s) ||
          strspn(s + (s[0] == '+'), "0123456789") == strlen(s + (s[0] == '+')));
}

static void check_email(const char *s)
{
    char out[EMAIL_MAX + 1], again[EMAIL_MAX + 1];
    const char *dom;

    if (email_valid(s)) {
        dom = email_domain(s);
        CHECK(dom && dom > s && dom[-1] == '@');
        CHECK(strlen(s) <= EMAIL_MAX);
        CHECK(strcspn(s, " \t\r\n<>\"") == strlen(s));
        CHECK(email_normalize(s, out, sizeof(out)) == 0);
        CHECK(strlen(out) == strlen(s));
        CHECK(strncmp(out, s, (size_t)(dom - s)) == 0);
        CHECK(strcasecmp(out + (dom - s), dom) == 0);
    } else {
        CHECK(email_domain(s) == NULL);
    }
    if (email_normalize(s, out, sizeof(out)) == 0) {
        CHECK(email_valid(out));
        dom = email_domain(out);
        CHECK(dom);
        for (const char *p = dom; *p; p++)
            CHECK(!(*p >= 'A' && *p <= 'Z'));
        CHECK(email_normalize(out, again, sizeof(again)) == 0);
        CHECK(strcmp(again, out) == 0);
        CHECK(call_sized(email_normalize, s, strlen(out) + 1, NULL) == 0);
        CHECK(call_sized(email_normalize, s, strlen(out), NULL) == -1);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s;
    size_t len;

    if (size > 8192)
        return 0;
    s = dup_bytes((const char *)data, size);
    len = strlen(s); /* the string stops at an embedded NUL */
    check_jid(s, len);
    check_xep0106(s, len);
    check_e164(s);
    check_email(s);
    free(s);
    return 0;
}
