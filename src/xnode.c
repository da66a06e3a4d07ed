/*
 * xnode: see xnode.h. Plain heap tree; no sharing, no reference counts.
 */
#include "xnode.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

struct xnode *xnode_new(const char *name)
{
    struct xnode *n = xcalloc(1, sizeof(*n));
    n->name = xstrdup(name);
    return n;
}

void xnode_append(struct xnode *parent, struct xnode *child)
{
    parent->kids =
        xrealloc(parent->kids, (parent->nkids + 1) * sizeof(*parent->kids));
    parent->kids[parent->nkids++] = child;
    child->parent = parent;
}

struct xnode *xnode_add(struct xnode *parent, const char *name)
{
    struct xnode *n = xnode_new(name);
    xnode_append(parent, n);
    return n;
}

struct xnode *xnode_add_ns(struct xnode *parent, const char *name,
                           const char *ns)
{
    struct xnode *n = xnode_add(parent, name);
    xnode_set_attr(n, "xmlns", ns);
    return n;
}

struct xnode *xnode_add_text(struct xnode *parent, const char *name,
                             const char *text)
{
    struct xnode *n = xnode_add(parent, name);
    xnode_set_text(n, text);
    return n;
}

struct xnode *xnode_copy(const struct xnode *n)
{
    struct xnode *c = xnode_new(n->name);
    if (n->text)
        c->text = xstrdup(n->text);
    for (size_t i = 0; i < n->nattrs; i++)
        xnode_set_attr(c, n->attrs[i].name, n->attrs[i].value);
    for (size_t i = 0; i < n->nkids; i++)
        xnode_append(c, xnode_copy(n->kids[i]));
    return c;
}

void xnode_free(struct xnode *n)
{
    if (!n)
        return;
    for (size_t i = 0; i < n->nkids; i++)
        xnode_free(n->kids[i]);
    for (size_t i = 0; i < n->nattrs; i++) {
        free(n->attrs[i].name);
        free(n->attrs[i].value);
    }
    free(n->kids);
    free(n->attrs);
    free(n->text);
    free(n->name);
    free(n);
}

void xnode_set_attr(struct xnode *n, const char *name, const char *value)
{
    for (size_t i = 0; i < n->nattrs; i++) {
        if (strcmp(n->attrs[i].name, name) != 0)
            continue;
        if (value) {
            char *v = xstrdup(value);
            free(n->attrs[i].value);
            n->attrs[i].value = v;
        } else {
            free(n->attrs[i].name);
            free(n->attrs[i].value);
            n->attrs[i] = n->attrs[--n->nattrs];
        }
        return;
    }
    if (!value)
        return;
    n->attrs = xrealloc(n->attrs, (n->nattrs + 1) * sizeof(*n->attrs));
    n->attrs[n->nattrs].name = xstrdup(name);
    n->attrs[n->nattrs].value = xstrdup(value);
    n->nattrs++;
}

const char *xnode_attr(const struct xnode *n, const char *name)
{
    for (size_t i = 0; i < n->nattrs; i++)
        if (strcmp(n->attrs[i].name, name) == 0)
            return n->attrs[i].value;
    return NULL;
}

void xnode_set_text(struct xnode *n, const char *text)
{
    char *t = text ? xstrdup(text) : NULL;
    free(n->text);
    n->text = t;
}

const char *xnode_text(const struct xnode *n)
{
    return n->text;
}

const char *xnode_ns(const struct xnode *n)
{
    for (; n; n = n->parent) {
        const char *ns = xnode_attr(n, "xmlns");
        if (ns)
            return ns;
    }
    return NULL;
}

struct xnode *xnode_child(const struct xnode *n, const char *name,
                          const char *ns)
{
    for (size_t i = 0; i < n->nkids; i++) {
        struct xnode *k = n->kids[i];
        if (name && strcmp(k->name, name) != 0)
            continue;
        if (ns) {
            const char *kns = xnode_ns(k);
            if (!kns || strcmp(kns, ns) != 0)
                continue;
        }
        return k;
    }
    return NULL;
}

const char *xnode_child_text(const struct xnode *n, const char *name,
                             const char *ns)
{
    struct xnode *k = xnode_child(n, name, ns);
    return k ? k->text : NULL;
}

/* Length of a valid UTF-8 sequence at s that is an XML character, or 0. */
static size_t utf8_len(const unsigned char *s)
{
    size_t len = utf8_seq_len(s, strnlen((const char *)s, 4));

    /* U+FFFE and U+FFFF are valid UTF-8 but not XML characters */
    if (len == 3 && s[0] == 0xef && s[1] == 0xbf &&
        (s[2] == 0xbe || s[2] == 0xbf))
        return 0;
    return len;
}

static void escape(struct strbuf *b, const char *s, bool attr)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned char c = *p;
        switch (c) {
        case '&':
            sb_puts(b, "&amp;");
            break;
        case '<':
            sb_puts(b, "&lt;");
            break;
        case '>':
            sb_puts(b, "&gt;");
            break;
        case '"':
            sb_puts(b, attr ? "&quot;" : "\"");
            break;
        case '\'':
            sb_puts(b, attr ? "&apos;" : "'");
            break;
        case '\r':
            /* a raw CR would be turned into LF by the receiver's parser */
            sb_puts(b, "&#13;");
            break;
        case '\t':
        case '\n':
            if (attr)
                sb_printf(b, "&#%u;", c);
            else
                sb_putc(b, (char)c);
            break;
        default:
            if (c < 0x20)
                break; /* not allowed in XML 1.0: dropped */
            if (c >= 0x80) {
                size_t len = utf8_len(p);
                if (!len) {
                    p++; /* invalid UTF-8 byte: dropped */
                    continue;
                }
                sb_append(b, (const char *)p, len);
                p += len;
                continue;
            }
            sb_putc(b, (char)c);
        }
        p++;
    }
}

static void render(struct strbuf *b, const struct xnode *n)
{
    sb_putc(b, '<');
    sb_puts(b, n->name);
    for (size_t i = 0; i < n->nattrs; i++) {
        sb_putc(b, ' ');
        sb_puts(b, n->attrs[i].name);
        sb_puts(b, "=\"");
        escape(b, n->attrs[i].value, true);
        sb_putc(b, '"');
    }
    if (!n->nkids && (!n->text || !*n->text)) {
        sb_puts(b, "/>");
        return;
    }
    sb_putc(b, '>');
    if (n->text)
        escape(b, n->text, false);
    for (size_t i = 0; i < n->nkids; i++)
        render(b, n->kids[i]);
    sb_puts(b, "</");
    sb_puts(b, n->name);
    sb_putc(b, '>');
}

char *xnode_render(const struct xnode *n, size_t *len)
{
    struct strbuf b;
    sb_init(&b);
    render(&b, n);
    if (len)
        *len = b.len;
    return sb_steal(&b);
}
