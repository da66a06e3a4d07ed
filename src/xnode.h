/*
 * xnode: a small XML element tree for stanzas. The router reads and
 * builds stanzas with it; stanza.c converts from libstrophe on input and
 * xnode_render() serialises on output, so nothing outside component.c and
 * stanza.c depends on libstrophe. Pure code.
 *
 * An element has a name, attributes, text and child elements. Text is
 * rendered before the children (XMPP stanzas never need mixed content).
 * The namespace is the "xmlns" attribute; xnode_ns() inherits it from the
 * parent when absent.
 */
#ifndef POSTERN_XNODE_H
#define POSTERN_XNODE_H

#include <stddef.h>

struct xattr {
    char *name;
    char *value;
};

struct xnode {
    char *name;
    char *text; /* NULL when none */
    struct xattr *attrs;
    size_t nattrs;
    struct xnode **kids;
    size_t nkids;
    struct xnode *parent; /* borrowed */
};

/* Returned owned (free with xnode_free). */
struct xnode *xnode_new(const char *name);
/* Adds a child element; returns it (borrowed, owned by parent). */
struct xnode *xnode_add(struct xnode *parent, const char *name);
/* Same with an xmlns attribute. */
struct xnode *xnode_add_ns(struct xnode *parent, const char *name,
                           const char *ns);
/* Adds a child with text content: <name>text</name>. Returns it. */
struct xnode *xnode_add_text(struct xnode *parent, const char *name,
                             const char *text);
/* Appends child (taken). */
void xnode_append(struct xnode *parent, struct xnode *child);
/* Deep copy, returned owned; the copy has no parent. */
struct xnode *xnode_copy(const struct xnode *n);
void xnode_free(struct xnode *n);

/* value NULL removes the attribute. Copies name and value. */
void xnode_set_attr(struct xnode *n, const char *name, const char *value);
/* Borrowed, NULL when absent. */
const char *xnode_attr(const struct xnode *n, const char *name);
/* Copies text; NULL clears. */
void xnode_set_text(struct xnode *n, const char *text);
/* Borrowed; NULL when the element has no text. */
const char *xnode_text(const struct xnode *n);
/* Effective namespace: own xmlns or the nearest ancestor's; NULL if none. */
const char *xnode_ns(const struct xnode *n);

/*
 * First child element with this name (NULL: any) and namespace (NULL:
 * any). Borrowed.
 */
struct xnode *xnode_child(const struct xnode *n, const char *name,
                          const char *ns);
/* Text of the first matching child, or NULL. */
const char *xnode_child_text(const struct xnode *n, const char *name,
                             const char *ns);

/*
 * Serialises to XML. Attribute values and text are escaped; characters
 * not allowed in XML 1.0 (C0 controls other than TAB, LF, CR) are
 * dropped. Returned owned (free()); *len set when len is non-NULL.
 */
char *xnode_render(const struct xnode *n, size_t *len);

#endif
