/*
 * fuzz_xnode_render: untrusted bytes (an SMS body, an email subject, a
 * provider's field) as element text and attribute values, rendered with
 * xnode_render(). The output is parsed back by a small strict reader
 * written here: it must be well-formed, valid UTF-8 with only XML 1.0
 * characters, keep markup characters escaped, and give back exactly the
 * input when the input was clean (otherwise a subsequence of it: bytes
 * are only ever dropped). A copy must render identically.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"
#include "xnode.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "fuzz_xnode_render: %s:%d: %s\n", __FILE__,        \
                    __LINE__, #cond);                                          \
            abort();                                                           \
        }                                                                      \
    } while (0)

/*
 * Length of one XML 1.0 Char encoded in UTF-8 at s (n bytes left), 0 when
 * it is not one. Written independently of xnode.c on purpose.
 */
static size_t xml_char_len(const unsigned char *s, size_t n)
{
    uint32_t cp;
    size_t len;

    if (n == 0)
        return 0;
    if (s[0] < 0x80) {
        if (s[0] < 0x20 && s[0] != '\t' && s[0] != '\n' && s[0] != '\r')
            return 0;
        return 1;
    }
    if ((s[0] & 0xe0) == 0xc0) {
        len = 2;
        cp = s[0] & 0x1f;
    } else if ((s[0] & 0xf0) == 0xe0) {
        len = 3;
        cp = s[0] & 0x0f;
    } else if ((s[0] & 0xf8) == 0xf0) {
        len = 4;
        cp = s[0] & 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[len])
        return 0; /* overlong */
    if ((cp >= 0xd800 && cp <= 0xdfff) || cp == 0xfffe || cp == 0xffff ||
        cp > 0x10ffff)
        return 0;
    return len;
}

static bool all_xml_chars(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    while (n) {
        size_t l = xml_char_len(p, n);
        if (!l)
            return false;
        p += l;
        n -= l;
    }
    return true;
}

/* Equal byte strings; an empty strbuf may hold a NULL pointer. */
static bool same(const char *a, size_t alen, const char *b, size_t blen)
{
    return alen == blen && (alen == 0 || memcmp(a, b, alen) == 0);
}

/* true when a is b with some bytes removed. */
static bool is_subsequence(const char *a, size_t alen, const char *b,
                           size_t blen)
{
    size_t j = 0;
    for (size_t i = 0; i < alen; i++) {
        while (j < blen && b[j] != a[i])
            j++;
        if (j == blen)
            return false;
        j++;
    }
    return true;
}

/* A strict reader for the subset xnode_render() produces. */
struct reader {
    const char *s;
    size_t len, pos;
};

static bool peek(const struct reader *r, const char *lit)
{
    size_t n = strlen(lit);
    return r->len - r->pos >= n && memcmp(r->s + r->pos, lit, n) == 0;
}

static void expect(struct reader *r, const char *lit)
{
    CHECK(peek(r, lit));
    r->pos += strlen(lit);
}

/*
 * Decodes character data up to the terminator ('<' for text, '"' for an
 * attribute) into b. Only the references xnode emits are accepted.
 */
static void read_chars(struct reader *r, bool attr, struct strbuf *b)
{
    static const struct {
        const char *ref;
        char c;
        bool attr_only;
    } refs[] = {
        {"&amp;", '&', false}, {"&lt;", '<', false},   {"&gt;", '>', false},
        {"&quot;", '"', true}, {"&apos;", '\'', true}, {"&#9;", '\t', true},
        {"&#10;", '\n', true}, {"&#13;", '\r', false},
    };

    while (r->pos < r->len) {
        unsigned char c = (unsigned char)r->s[r->pos];
        size_t l;

        if (c == (attr ? '"' : '<'))
            return;
        /* Raw markup never appears in character data. */
        CHECK(c != '<' && c != '>');
        /* CR is always a reference: a parser turns a raw one into LF */
        CHECK(c != '\r');
        if (attr)
            CHECK(c != '\t' && c != '\n');
        if (c == '&') {
            size_t i;
            for (i = 0; i < ARRAY_SIZE(refs); i++)
                if (peek(r, refs[i].ref) && (attr || !refs[i].attr_only))
                    break;
            CHECK(i < ARRAY_SIZE(refs));
            sb_putc(b, refs[i].c);
            r->pos += strlen(refs[i].ref);
            continue;
        }
        l = xml_char_len((const unsigned char *)r->s + r->pos, r->len - r->pos);
        CHECK(l > 0);
        sb_append(b, r->s + r->pos, l);
        r->pos += l;
    }
    CHECK(!"unterminated character data");
}

/* Reads one element and compares it with n. */
static void read_element(struct reader *r, const struct xnode *n)
{
    struct strbuf b;

    expect(r, "<");
    expect(r, n->name);
    for (size_t i = 0; i < n->nattrs; i++) {
        const char *v = n->attrs[i].value;
        expect(r, " ");
        expect(r, n->attrs[i].name);
        expect(r, "=\"");
        sb_init(&b);
        read_chars(r, true, &b);
        expect(r, "\"");
        if (all_xml_chars(v, strlen(v)))
            CHECK(same(b.s, b.len, v, strlen(v)));
        else
            CHECK(is_subsequence(b.s, b.len, v, strlen(v)));
        sb_free(&b);
    }
    if (peek(r, "/>")) {
        CHECK(n->nkids == 0 && (!n->text || !*n->text));
        r->pos += 2;
        return;
    }
    expect(r, ">");
    sb_init(&b);
    read_chars(r, false, &b);
    if (n->text && all_xml_chars(n->text, strlen(n->text)))
        CHECK(same(b.s, b.len, n->text, strlen(n->text)));
    else if (n->text)
        CHECK(is_subsequence(b.s, b.len, n->text, strlen(n->text)));
    else
        CHECK(b.len == 0);
    sb_free(&b);
    for (size_t i = 0; i < n->nkids; i++)
        read_element(r, n->kids[i]);
    expect(r, "</");
    expect(r, n->name);
    expect(r, ">");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct xnode *root, *kid, *copy;
    struct reader r;
    char *in, *half, *out, *out2;
    size_t len, out_len, out2_len;

    if (size > 16384)
        return 0;
    in = xstrndup((const char *)data, size);
    len = strlen(in);
    half = xstrdup(in + len / 2);

    root = xnode_new("message");
    xnode_set_attr(root, "to", in);
    xnode_set_attr(root, "type", "chat");
    xnode_set_text(xnode_add(root, "body"), in);
    kid = xnode_add_ns(root, "x", "urn:example:fuzz");
    xnode_set_attr(kid, "a", half);
    xnode_set_attr(kid, "b", in);
    xnode_set_text(kid, half);
    xnode_add_text(kid, "empty", "");
    /* Replacing and removing must leave consistent attributes. */
    xnode_set_attr(kid, "a", in);
    xnode_set_attr(kid, "b", NULL);

    out = xnode_render(root, &out_len);
    CHECK(out && out_len == strlen(out));
    r.s = out;
    r.len = out_len;
    r.pos = 0;
    read_element(&r, root);
    CHECK(r.pos == r.len);

    copy = xnode_copy(root);
    out2 = xnode_render(copy, &out2_len);
    CHECK(out2_len == out_len && memcmp(out, out2, out_len) == 0);

    free(out2);
    free(out);
    xnode_free(copy);
    xnode_free(root);
    free(half);
    free(in);
    return 0;
}
