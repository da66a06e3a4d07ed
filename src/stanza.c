/*
 * stanza: pure builders for the stanzas postern answers with (errors,
 * results, messages), the error table of SPEC 3 (condition -> XMPP error
 * type) and the XEP-0115 verification string, with the small SHA-1 and
 * base64 it needs. It owns no state and does no I/O; it must never
 * include strophe.h (component.c converts libstrophe stanzas to xnode).
 */
#include "stanza.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const char *const cond_names[] = {
    [COND_NONE] = "undefined-condition",
    [COND_BAD_REQUEST] = "bad-request",
    [COND_CONFLICT] = "conflict",
    [COND_FEATURE_NOT_IMPLEMENTED] = "feature-not-implemented",
    [COND_FORBIDDEN] = "forbidden",
    [COND_INTERNAL_SERVER_ERROR] = "internal-server-error",
    [COND_ITEM_NOT_FOUND] = "item-not-found",
    [COND_JID_MALFORMED] = "jid-malformed",
    [COND_NOT_ACCEPTABLE] = "not-acceptable",
    [COND_NOT_ALLOWED] = "not-allowed",
    [COND_NOT_AUTHORIZED] = "not-authorized",
    [COND_POLICY_VIOLATION] = "policy-violation",
    [COND_RECIPIENT_UNAVAILABLE] = "recipient-unavailable",
    [COND_REGISTRATION_REQUIRED] = "registration-required",
    [COND_REMOTE_SERVER_TIMEOUT] = "remote-server-timeout",
    [COND_RESOURCE_CONSTRAINT] = "resource-constraint",
    [COND_SERVICE_UNAVAILABLE] = "service-unavailable",
    [COND_UNDEFINED_CONDITION] = "undefined-condition",
};

const char *stanza_cond_name(int cond)
{
    if (cond < 0 || (size_t)cond >= ARRAY_SIZE(cond_names) || !cond_names[cond])
        return "undefined-condition";
    return cond_names[cond];
}

/*
 * The SPEC 3 table fixes the type of the conditions it names; the rest
 * follow RFC 6120 8.3.3. Conditions that only say "something failed"
 * (internal-server-error, service-unavailable, undefined-condition) become
 * 'wait' when the failure is temporary, so clients know to retry.
 */
const char *stanza_error_type(int cond, bool temporary)
{
    switch (cond) {
    case COND_REGISTRATION_REQUIRED:
    case COND_FORBIDDEN:
    case COND_NOT_AUTHORIZED:
        return "auth";
    case COND_BAD_REQUEST:
    case COND_JID_MALFORMED:
        return "modify";
    case COND_POLICY_VIOLATION:
        /* over a rate limit: wait; a message too long for the policy:
         * change it (SPEC 3 lists the rate-limit case) */
        return temporary ? "wait" : "modify";
    case COND_RECIPIENT_UNAVAILABLE:
        /* a carrier's final "undelivered" is not worth waiting for */
        return temporary ? "wait" : "cancel";
    case COND_REMOTE_SERVER_TIMEOUT:
    case COND_RESOURCE_CONSTRAINT:
        return "wait";
    case COND_CONFLICT:
    case COND_FEATURE_NOT_IMPLEMENTED:
    case COND_ITEM_NOT_FOUND:
    case COND_NOT_ACCEPTABLE:
    case COND_NOT_ALLOWED:
        return "cancel";
    default:
        return temporary ? "wait" : "cancel";
    }
}

/* A sentence for errors raised without one (clients show <text/>). */
static const char *default_text(int cond)
{
    switch (cond) {
    case COND_REGISTRATION_REQUIRED:
        return "You are not registered with this gateway";
    case COND_NOT_ALLOWED:
        return "Your server is not allowed to use this gateway";
    case COND_JID_MALFORMED:
        return "Not a valid address for this gateway";
    case COND_BAD_REQUEST:
        return "Bad request";
    case COND_POLICY_VIOLATION:
        return "Rate limit exceeded; try again later";
    case COND_REMOTE_SERVER_TIMEOUT:
        return "The provider could not be reached";
    case COND_SERVICE_UNAVAILABLE:
        return "Service unavailable";
    default:
        return "The request failed";
    }
}

static void add_error(struct xnode *st, const struct error *err)
{
    int cond =
        err && err->code != COND_NONE ? err->code : COND_UNDEFINED_CONDITION;
    bool temporary = err && err->temporary;
    const char *text = err && err->msg[0] ? err->msg : default_text(cond);
    struct xnode *e = xnode_add(st, "error");

    xnode_set_attr(e, "type", stanza_error_type(cond, temporary));
    xnode_add_ns(e, stanza_cond_name(cond), NS_STANZAS);
    struct xnode *t = xnode_add_ns(e, "text", NS_STANZAS);
    xnode_set_text(t, text);
}

static struct xnode *error_head(const char *name, const char *from,
                                const char *to, const char *id)
{
    struct xnode *st = xnode_new(name);

    xnode_set_attr(st, "type", "error");
    xnode_set_attr(st, "from", from);
    xnode_set_attr(st, "to", to);
    xnode_set_attr(st, "id", id);
    return st;
}

struct xnode *stanza_error_reply(const struct xnode *orig,
                                 const struct error *err)
{
    struct xnode *st =
        error_head(orig->name, xnode_attr(orig, "to"), xnode_attr(orig, "from"),
                   xnode_attr(orig, "id"));

    if (strcmp(orig->name, "message") == 0) {
        const char *body = xnode_child_text(orig, "body", NULL);
        if (body)
            xnode_add_text(st, "body", body);
    }
    add_error(st, err);
    return st;
}

struct xnode *stanza_error_to(const char *name, const char *from,
                              const char *to, const char *id,
                              const struct error *err)
{
    struct xnode *st = error_head(name, from, to, id);

    add_error(st, err);
    return st;
}

struct xnode *stanza_iq_result(const struct xnode *iq)
{
    struct xnode *st = xnode_new("iq");

    xnode_set_attr(st, "type", "result");
    xnode_set_attr(st, "from", xnode_attr(iq, "to"));
    xnode_set_attr(st, "to", xnode_attr(iq, "from"));
    xnode_set_attr(st, "id", xnode_attr(iq, "id"));
    return st;
}

struct xnode *stanza_message(const char *from, const char *to, const char *type,
                             const char *body)
{
    struct xnode *st = xnode_new("message");

    xnode_set_attr(st, "type", type);
    xnode_set_attr(st, "from", from);
    xnode_set_attr(st, "to", to);
    if (body)
        xnode_add_text(st, "body", body);
    return st;
}

void stanza_new_id(char out[24])
{
    memcpy(out, "pst-", 4);
    random_hex(out + 4, 8);
}

/* SHA-1 (FIPS 180-4), only for the XEP-0115 hash. */
struct sha1 {
    uint32_t h[5];
    uint64_t len;
    unsigned char buf[64];
    size_t n;
};

static uint32_t rol(uint32_t x, unsigned k)
{
    return (x << k) | (x >> (32 - k));
}

static void sha1_block(struct sha1 *c, const unsigned char *p)
{
    uint32_t w[80];
    uint32_t a = c->h[0], b = c->h[1], d3 = c->h[2], d = c->h[3], e = c->h[4];

    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | (uint32_t)p[4 * i + 3];
    for (int i = 16; i < 80; i++)
        w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20) {
            f = (b & d3) | (~b & d);
            k = 0x5a827999;
        } else if (i < 40) {
            f = b ^ d3 ^ d;
            k = 0x6ed9eba1;
        } else if (i < 60) {
            f = (b & d3) | (b & d) | (d3 & d);
            k = 0x8f1bbcdc;
        } else {
            f = b ^ d3 ^ d;
            k = 0xca62c1d6;
        }
        uint32_t t = rol(a, 5) + f + e + k + w[i];
        e = d;
        d = d3;
        d3 = rol(b, 30);
        b = a;
        a = t;
    }
    c->h[0] += a;
    c->h[1] += b;
    c->h[2] += d3;
    c->h[3] += d;
    c->h[4] += e;
}

static void sha1_init(struct sha1 *c)
{
    static const uint32_t iv[5] = {0x67452301, 0xefcdab89, 0x98badcfe,
                                   0x10325476, 0xc3d2e1f0};
    memcpy(c->h, iv, sizeof(iv));
    c->len = 0;
    c->n = 0;
}

static void sha1_update(struct sha1 *c, const void *data, size_t len)
{
    const unsigned char *p = data;

    c->len += len;
    while (len > 0) {
        size_t take = 64 - c->n;
        if (take > len)
            take = len;
        memcpy(c->buf + c->n, p, take);
        c->n += take;
        p += take;
        len -= take;
        if (c->n == 64) {
            sha1_block(c, c->buf);
            c->n = 0;
        }
    }
}

static void sha1_final(struct sha1 *c, unsigned char out[20])
{
    uint64_t bits = c->len * 8;
    unsigned char pad[72] = {0x80};
    size_t padlen = (c->n < 56 ? 56 : 120) - c->n;
    unsigned char lenbuf[8];

    for (int i = 0; i < 8; i++)
        lenbuf[i] = (unsigned char)(bits >> (56 - 8 * i));
    sha1_update(c, pad, padlen);
    sha1_update(c, lenbuf, 8);
    for (int i = 0; i < 5; i++) {
        out[4 * i] = (unsigned char)(c->h[i] >> 24);
        out[4 * i + 1] = (unsigned char)(c->h[i] >> 16);
        out[4 * i + 2] = (unsigned char)(c->h[i] >> 8);
        out[4 * i + 3] = (unsigned char)c->h[i];
    }
}

/* Standard base64 with padding; out must hold 4 * ceil(n / 3) + 1. */
static void base64(const unsigned char *in, size_t n, char *out)
{
    static const char tbl[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t i = 0;

    for (; i + 2 < n; i += 3) {
        uint32_t v =
            (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        *out++ = tbl[v >> 18];
        *out++ = tbl[(v >> 12) & 63];
        *out++ = tbl[(v >> 6) & 63];
        *out++ = tbl[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)in[i + 1] << 8;
        *out++ = tbl[v >> 18];
        *out++ = tbl[(v >> 12) & 63];
        *out++ = i + 1 < n ? tbl[(v >> 6) & 63] : '=';
        *out++ = '=';
    }
    *out = '\0';
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/*
 * XEP-0115 5.1: S = category/type/lang/name< then each feature< in octet
 * order. postern advertises one identity without xml:lang and no forms.
 */
void stanza_caps_ver(const char *category, const char *type, const char *name,
                     const char *const *features, size_t n_features, char *out,
                     size_t size)
{
    const char **sorted = xcalloc(n_features, sizeof(*sorted));
    struct sha1 c;
    unsigned char digest[20];
    char b64[29];

    if (n_features > 0) {
        memcpy(sorted, features, n_features * sizeof(*sorted));
        qsort(sorted, n_features, sizeof(*sorted), cmp_str);
    }
    sha1_init(&c);
    sha1_update(&c, category, strlen(category));
    sha1_update(&c, "/", 1);
    sha1_update(&c, type, strlen(type));
    sha1_update(&c, "//", 2);
    if (name)
        sha1_update(&c, name, strlen(name));
    sha1_update(&c, "<", 1);
    for (size_t i = 0; i < n_features; i++) {
        sha1_update(&c, sorted[i], strlen(sorted[i]));
        sha1_update(&c, "<", 1);
    }
    sha1_final(&c, digest);
    free(sorted);
    base64(digest, sizeof(digest), b64);
    if (size > 0) {
        size_t len = strlen(b64);
        if (len >= size)
            len = size - 1;
        memcpy(out, b64, len);
        out[len] = '\0';
    }
}
