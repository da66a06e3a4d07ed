/*
 * html_text: see html_text.h. Owns the HTML-to-text rendering used for
 * mails that carry only an HTML body. libxml2 parses (with recovery, no
 * network, no diagnostics on stderr); this file walks the tree without
 * recursion, so a deeply nested document cannot exhaust the stack, and
 * writes text with a tiny line-layout state (pending space, pending line
 * breaks). It must never fetch anything, never use regular expressions on
 * markup, and never print libxml2 diagnostics.
 */
#include <stdbool.h>
#include <string.h>
#include <strings.h>

#include <libxml/HTMLparser.h>
#include <libxml/parser.h>
#include <libxml/tree.h>

#include "html_text.h"
#include "util.h"

struct out {
    struct strbuf sb;
    bool space;      /* a collapsed space waits before the next word */
    unsigned breaks; /* line breaks waiting (at most 2: one blank line) */
    unsigned pre;    /* inside <pre> (nesting count) */
};

static const char *const skipped[] = {
    "script", "style", "head", "template", "title", "noscript",
};

static const char *const blocks[] = {
    "address",    "article", "aside",  "blockquote", "center", "dd",
    "details",    "dialog",  "div",    "dl",         "dt",     "fieldset",
    "figcaption", "figure",  "footer", "form",       "h1",     "h2",
    "h3",         "h4",      "h5",     "h6",         "header", "hr",
    "main",       "nav",     "ol",     "p",          "pre",    "section",
    "summary",    "table",   "tbody",  "thead",      "tfoot",  "tr",
    "ul",         "li",      "body",   "html",
};

static bool name_in(const xmlNode *n, const char *const *list, size_t count)
{
    const char *name = (const char *)n->name;

    if (!name)
        return false;
    for (size_t i = 0; i < count; i++)
        if (strcasecmp(name, list[i]) == 0)
            return true;
    return false;
}

static bool is_elem(const xmlNode *n, const char *name)
{
    return n->type == XML_ELEMENT_NODE && n->name &&
           strcasecmp((const char *)n->name, name) == 0;
}

static void want_breaks(struct out *o, unsigned n)
{
    /* Nothing written yet: leading blank lines are never wanted. */
    if (o->sb.len == 0)
        return;
    if (o->breaks < n)
        o->breaks = n;
    o->space = false;
}

static void flush_layout(struct out *o)
{
    if (o->breaks) {
        for (unsigned i = 0; i < o->breaks; i++)
            sb_putc(&o->sb, '\n');
        o->breaks = 0;
        o->space = false;
    } else if (o->space) {
        if (o->sb.len && o->sb.s[o->sb.len - 1] != '\n')
            sb_putc(&o->sb, ' ');
        o->space = false;
    }
}

static bool ws(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' ||
           c == '\v';
}

static void put_text(struct out *o, const char *s)
{
    if (o->pre) {
        if (*s)
            flush_layout(o);
        for (; *s; s++)
            if (*s != '\r')
                sb_putc(&o->sb, *s);
        return;
    }
    while (*s) {
        if (ws((unsigned char)*s)) {
            if (o->sb.len && !o->breaks)
                o->space = true;
            while (ws((unsigned char)*s))
                s++;
            continue;
        }
        const char *w = s;
        while (*s && !ws((unsigned char)*s))
            s++;
        flush_layout(o);
        sb_append(&o->sb, w, (size_t)(s - w));
    }
}

static void put_word(struct out *o, const char *s)
{
    flush_layout(o);
    sb_puts(&o->sb, s);
}

/* The text written since start, without surrounding whitespace. */
static bool written_equals(const struct out *o, size_t start, const char *s)
{
    const char *b = o->sb.s ? o->sb.s + start : "";
    size_t n = o->sb.len - start;

    while (n && ws((unsigned char)*b)) {
        b++;
        n--;
    }
    while (n && ws((unsigned char)b[n - 1]))
        n--;
    return strlen(s) == n && memcmp(b, s, n) == 0;
}

struct anchor {
    const xmlNode *node;
    size_t start;
};

static void enter(struct out *o, const xmlNode *n)
{
    if (is_elem(n, "br")) {
        /* A <br> is a hard break even where a block break is pending. */
        if (o->sb.len) {
            flush_layout(o);
            sb_putc(&o->sb, '\n');
        }
        o->space = false;
        return;
    }
    if (is_elem(n, "li")) {
        want_breaks(o, 1);
        put_word(o, "- ");
        return;
    }
    if (is_elem(n, "td") || is_elem(n, "th")) {
        if (o->sb.len && o->sb.s[o->sb.len - 1] != '\n')
            o->space = true;
        return;
    }
    if (name_in(n, blocks, ARRAY_SIZE(blocks))) {
        bool para = is_elem(n, "p") || n->name[0] == 'h' ||
                    is_elem(n, "blockquote") || is_elem(n, "pre");
        want_breaks(o, para ? 2 : 1);
    }
    if (is_elem(n, "pre"))
        o->pre++;
}

static void leave(struct out *o, const xmlNode *n)
{
    if (is_elem(n, "pre") && o->pre)
        o->pre--;
    if (is_elem(n, "li") || is_elem(n, "br"))
        return;
    if (name_in(n, blocks, ARRAY_SIZE(blocks))) {
        bool para = is_elem(n, "p") || n->name[0] == 'h' ||
                    is_elem(n, "blockquote") || is_elem(n, "pre");
        want_breaks(o, para ? 2 : 1);
    }
}

static void end_anchor(struct out *o, const struct anchor *a)
{
    xmlChar *href = xmlGetProp(a->node, (const xmlChar *)"href");
    const char *h = (const char *)href;

    if (h) {
        while (ws((unsigned char)*h))
            h++;
        bool skip = !*h || *h == '#' || strncasecmp(h, "javascript:", 11) == 0;
        bool same = written_equals(o, a->start, h) ||
                    (strncasecmp(h, "mailto:", 7) == 0 &&
                     written_equals(o, a->start, h + 7));
        if (!skip && !same && strchr(h, '\n') == NULL) {
            if (o->sb.len > a->start)
                o->space = true;
            flush_layout(o);
            sb_putc(&o->sb, '<');
            sb_puts(&o->sb, h);
            sb_putc(&o->sb, '>');
        }
    }
    xmlFree(href);
}

void html_text_init(void)
{
    static bool done;

    if (!done) {
        xmlInitParser();
        done = true;
    }
}

char *html_text_convert(const char *html, size_t len)
{
    struct out o = {.space = false};
    struct anchor *anchors = NULL;
    size_t nanchors = 0, capanchors = 0;
    const xmlNode *n;
    htmlDocPtr doc;
    char *res;

    html_text_init();
    sb_init(&o.sb);
    if (!html || len == 0 || len > (size_t)INT32_MAX)
        return sb_steal(&o.sb);
    doc = htmlReadMemory(html, (int)len, NULL, "UTF-8",
                         HTML_PARSE_NOERROR | HTML_PARSE_NOWARNING |
                             HTML_PARSE_NONET | HTML_PARSE_RECOVER);
    if (!doc)
        return sb_steal(&o.sb);

    n = xmlDocGetRootElement(doc);
    while (n) {
        bool descend = false;

        if (n->type == XML_TEXT_NODE || n->type == XML_CDATA_SECTION_NODE) {
            if (n->content)
                put_text(&o, (const char *)n->content);
        } else if (n->type == XML_ELEMENT_NODE &&
                   !name_in(n, skipped, ARRAY_SIZE(skipped))) {
            enter(&o, n);
            if (is_elem(n, "a")) {
                if (nanchors == capanchors) {
                    capanchors = capanchors ? capanchors * 2 : 8;
                    anchors = xrealloc(anchors, capanchors * sizeof(*anchors));
                }
                anchors[nanchors].node = n;
                anchors[nanchors].start = o.sb.len;
                nanchors++;
            }
            descend = n->children != NULL;
            if (!descend) {
                if (nanchors && anchors[nanchors - 1].node == n)
                    end_anchor(&o, &anchors[--nanchors]);
                leave(&o, n);
            }
        }
        if (descend) {
            n = n->children;
            continue;
        }
        /* Climb until a sibling exists, closing each element left. */
        while (n && !n->next) {
            n = n->parent;
            if (!n || n->type != XML_ELEMENT_NODE)
                n = NULL;
            else {
                if (nanchors && anchors[nanchors - 1].node == n)
                    end_anchor(&o, &anchors[--nanchors]);
                leave(&o, n);
            }
        }
        if (n)
            n = n->next;
    }
    free(anchors);
    xmlFreeDoc(doc);

    /* Trailing blanks and pending breaks go; the text ends at its last
     * visible character. */
    while (o.sb.len && ws((unsigned char)o.sb.s[o.sb.len - 1]))
        o.sb.s[--o.sb.len] = '\0';
    res = sb_steal(&o.sb);
    return res;
}
