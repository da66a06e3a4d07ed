/*
 * Unit tests of xnode.c: building trees, attributes, namespace
 * inheritance, child lookup, deep copy and the escaping done by
 * xnode_render().
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "xnode.h"

/* Renders n and compares with want, including the reported length. */
static void assert_renders(const struct xnode *n, const char *want)
{
    size_t len = 12345;
    char *s = xnode_render(n, &len);

    assert_non_null(s);
    assert_string_equal(s, want);
    assert_int_equal(len, strlen(want));
    free(s);
}

/* Renders an element <t> with text, and <a v="..."/> with the value. */
static void assert_text_renders(const char *text, const char *want_inner)
{
    struct xnode *n = xnode_new("t");
    char *want = malloc(strlen(want_inner) + 8);

    xnode_set_text(n, text);
    /* Non-empty text whose bytes are all dropped still gives <t></t>. */
    sprintf(want, "<t>%s</t>", want_inner);
    assert_renders(n, want);
    free(want);
    xnode_free(n);
}

static void assert_attr_renders(const char *value, const char *want_inner)
{
    struct xnode *n = xnode_new("a");
    char *want = malloc(strlen(want_inner) + 16);

    xnode_set_attr(n, "v", value);
    sprintf(want, "<a v=\"%s\"/>", want_inner);
    assert_renders(n, want);
    free(want);
    xnode_free(n);
}

static void test_build_message(void **state)
{
    struct xnode *m = xnode_new("message");
    struct xnode *body, *req;
    (void)state;

    xnode_set_attr(m, "to", "alice@example.org/phone");
    xnode_set_attr(m, "from", "+15551234567@sms.example.org");
    xnode_set_attr(m, "type", "chat");
    xnode_set_attr(m, "id", "m1");
    body = xnode_add_text(m, "body", "Hello");
    req = xnode_add_ns(m, "request", "urn:xmpp:receipts");

    assert_string_equal(m->name, "message");
    assert_int_equal(m->nkids, 2);
    assert_ptr_equal(m->kids[0], body);
    assert_ptr_equal(m->kids[1], req);
    assert_ptr_equal(body->parent, m);
    assert_ptr_equal(req->parent, m);
    assert_null(m->parent);
    assert_string_equal(xnode_text(body), "Hello");
    assert_null(xnode_text(req));
    assert_null(xnode_text(m));

    assert_renders(m, "<message to=\"alice@example.org/phone\" "
                      "from=\"+15551234567@sms.example.org\" type=\"chat\" "
                      "id=\"m1\"><body>Hello</body>"
                      "<request xmlns=\"urn:xmpp:receipts\"/></message>");
    xnode_free(m);
}

static void test_empty_and_text_elements(void **state)
{
    struct xnode *n = xnode_new("x");
    char *s;
    (void)state;

    assert_renders(n, "<x/>");
    xnode_set_text(n, "");
    assert_string_equal(xnode_text(n), "");
    assert_renders(n, "<x/>");
    xnode_set_text(n, "t");
    assert_renders(n, "<x>t</x>");
    xnode_set_text(n, NULL);
    assert_null(xnode_text(n));
    assert_renders(n, "<x/>");

    /* Text is rendered before children. */
    xnode_set_text(n, "t");
    xnode_add(n, "k");
    assert_renders(n, "<x>t<k/></x>");

    /* len may be NULL. */
    s = xnode_render(n, NULL);
    assert_string_equal(s, "<x>t<k/></x>");
    free(s);
    xnode_free(n);
}

static void test_set_text_self(void **state)
{
    struct xnode *n = xnode_new("x");
    (void)state;

    xnode_set_text(n, "same");
    xnode_set_text(n, xnode_text(n));
    assert_string_equal(xnode_text(n), "same");
    xnode_free(n);
}

static void test_attr_replace_remove(void **state)
{
    struct xnode *n = xnode_new("iq");
    (void)state;

    assert_null(xnode_attr(n, "id"));
    xnode_set_attr(n, "id", "1");
    xnode_set_attr(n, "type", "get");
    xnode_set_attr(n, "to", "a@b");
    assert_int_equal(n->nattrs, 3);

    /* Replacing keeps one attribute of that name. */
    xnode_set_attr(n, "type", "result");
    assert_int_equal(n->nattrs, 3);
    assert_string_equal(xnode_attr(n, "type"), "result");

    /* Replacing with its own value (aliasing). */
    xnode_set_attr(n, "to", xnode_attr(n, "to"));
    assert_string_equal(xnode_attr(n, "to"), "a@b");

    /* Removing the first keeps the others. */
    xnode_set_attr(n, "id", NULL);
    assert_int_equal(n->nattrs, 2);
    assert_null(xnode_attr(n, "id"));
    assert_string_equal(xnode_attr(n, "type"), "result");
    assert_string_equal(xnode_attr(n, "to"), "a@b");

    /* Removing an absent attribute changes nothing. */
    xnode_set_attr(n, "id", NULL);
    assert_int_equal(n->nattrs, 2);

    xnode_set_attr(n, "to", NULL);
    assert_renders(n, "<iq type=\"result\"/>");
    xnode_set_attr(n, "type", NULL);
    assert_int_equal(n->nattrs, 0);
    assert_renders(n, "<iq/>");

    /* Names are case-sensitive; an empty value is a value. */
    xnode_set_attr(n, "ID", "");
    assert_null(xnode_attr(n, "id"));
    assert_string_equal(xnode_attr(n, "ID"), "");
    assert_renders(n, "<iq ID=\"\"/>");
    xnode_free(n);
}

static void test_namespace_inheritance(void **state)
{
    struct xnode *iq = xnode_new("iq");
    struct xnode *q, *item, *deep, *reset;
    (void)state;

    assert_null(xnode_ns(iq));
    xnode_set_attr(iq, "xmlns", "jabber:component:accept");
    q = xnode_add_ns(iq, "query", "http://jabber.org/protocol/disco#info");
    item = xnode_add(q, "identity");
    deep = xnode_add(item, "deep");
    reset = xnode_add_ns(q, "other", "");

    assert_string_equal(xnode_ns(iq), "jabber:component:accept");
    assert_string_equal(xnode_ns(q), "http://jabber.org/protocol/disco#info");
    assert_string_equal(xnode_ns(item),
                        "http://jabber.org/protocol/disco#info");
    assert_string_equal(xnode_ns(deep),
                        "http://jabber.org/protocol/disco#info");
    /* xmlns="" undeclares: the element has no namespace. */
    assert_string_equal(xnode_ns(reset), "");

    /* Changing the ancestor's namespace is seen by descendants. */
    xnode_set_attr(q, "xmlns", NULL);
    assert_string_equal(xnode_ns(deep), "jabber:component:accept");
    xnode_free(iq);
}

static void test_child_lookup(void **state)
{
    struct xnode *m = xnode_new("message");
    struct xnode *b1, *b2, *x1, *x2, *x3;
    (void)state;

    xnode_set_attr(m, "xmlns", "jabber:client");
    b1 = xnode_add_text(m, "body", "first");
    x1 = xnode_add_ns(m, "x", "jabber:x:oob");
    b2 = xnode_add_ns(m, "body", "urn:example:other");
    xnode_set_text(b2, "second");
    x2 = xnode_add_ns(m, "x", "jabber:x:conference");
    x3 = xnode_add(m, "x");

    assert_ptr_equal(xnode_child(m, NULL, NULL), b1);
    assert_ptr_equal(xnode_child(m, "body", NULL), b1);
    assert_ptr_equal(xnode_child(m, "body", "jabber:client"), b1);
    assert_ptr_equal(xnode_child(m, "body", "urn:example:other"), b2);
    assert_ptr_equal(xnode_child(m, "x", NULL), x1);
    assert_ptr_equal(xnode_child(m, "x", "jabber:x:conference"), x2);
    /* The inherited namespace counts. */
    assert_ptr_equal(xnode_child(m, "x", "jabber:client"), x3);
    assert_ptr_equal(xnode_child(m, NULL, "jabber:x:oob"), x1);
    assert_null(xnode_child(m, "subject", NULL));
    assert_null(xnode_child(m, "x", "urn:none"));
    assert_null(xnode_child(b1, NULL, NULL));

    assert_string_equal(xnode_child_text(m, "body", NULL), "first");
    assert_string_equal(xnode_child_text(m, "body", "urn:example:other"),
                        "second");
    assert_null(xnode_child_text(m, "x", NULL));
    assert_null(xnode_child_text(m, "subject", NULL));

    /* Without any namespace in the tree, a namespace filter never
     * matches. */
    xnode_set_attr(m, "xmlns", NULL);
    assert_null(xnode_child(m, "body", "jabber:client"));
    assert_ptr_equal(xnode_child(m, "x", "jabber:x:oob"), x1);
    xnode_free(m);
}

static void test_append_and_copy(void **state)
{
    struct xnode *m = xnode_new("message");
    struct xnode *body, *c, *cbody, *extra;
    char *before, *after;
    (void)state;

    xnode_set_attr(m, "xmlns", "jabber:client");
    xnode_set_attr(m, "type", "chat");
    body = xnode_add_text(m, "body", "hi & bye");
    xnode_add_text(xnode_add_ns(m, "thread", NULL), "t", "x");
    extra = xnode_new("active");
    xnode_set_attr(extra, "xmlns", "http://jabber.org/protocol/chatstates");
    xnode_append(m, extra);
    assert_ptr_equal(extra->parent, m);
    assert_ptr_equal(m->kids[m->nkids - 1], extra);

    before = xnode_render(m, NULL);
    c = xnode_copy(m);
    assert_non_null(c);
    assert_ptr_not_equal(c, m);
    assert_null(c->parent);
    assert_int_equal(c->nkids, m->nkids);
    assert_int_equal(c->nattrs, m->nattrs);
    for (size_t i = 0; i < c->nkids; i++) {
        assert_ptr_not_equal(c->kids[i], m->kids[i]);
        assert_ptr_equal(c->kids[i]->parent, c);
    }
    after = xnode_render(c, NULL);
    assert_string_equal(before, after);
    free(after);

    /* The copy shares nothing with the original. */
    cbody = xnode_child(c, "body", NULL);
    assert_ptr_not_equal(xnode_text(cbody), xnode_text(body));
    xnode_set_text(body, "changed");
    xnode_set_attr(m, "type", "normal");
    xnode_add(m, "new");
    assert_string_equal(xnode_text(cbody), "hi & bye");
    assert_string_equal(xnode_attr(c, "type"), "chat");
    after = xnode_render(c, NULL);
    assert_string_equal(before, after);
    free(after);
    free(before);
    xnode_free(m);

    /* The copy outlives the original and keeps inherited namespaces of
     * its own descendants. */
    assert_string_equal(xnode_ns(cbody), "jabber:client");
    xnode_free(c);
}

static void test_copy_of_subtree_has_no_parent(void **state)
{
    struct xnode *m = xnode_new("message");
    struct xnode *body, *c;
    (void)state;

    xnode_set_attr(m, "xmlns", "jabber:client");
    body = xnode_add_text(m, "body", "x");
    c = xnode_copy(body);
    assert_null(c->parent);
    /* Documented: the copy has no parent, so nothing to inherit. */
    assert_null(xnode_ns(c));
    assert_renders(c, "<body>x</body>");
    xnode_free(c);
    xnode_free(m);
}

static void test_render_escapes_markup(void **state)
{
    (void)state;

    assert_text_renders("a & b < c > d", "a &amp; b &lt; c &gt; d");
    assert_text_renders("</body><script>", "&lt;/body&gt;&lt;script&gt;");
    assert_text_renders("&amp;", "&amp;amp;");
    assert_text_renders("]]>", "]]&gt;");
    /* Quotes need no escaping in text. */
    assert_text_renders("say \"hi\" 'x'", "say \"hi\" 'x'");

    assert_attr_renders("a\"b'c", "a&quot;b&apos;c");
    assert_attr_renders("<&>", "&lt;&amp;&gt;");
    assert_attr_renders("\" onload=\"x", "&quot; onload=&quot;x");
}

static void test_render_whitespace(void **state)
{
    (void)state;

    /* TAB and LF are kept in text; a raw CR would reach the receiver as
     * LF (XML end-of-line handling), so it is a character reference. */
    assert_text_renders("a\tb\nc\rd", "a\tb\nc&#13;d");
    /* In attributes they would be normalised to spaces by the parser,
     * so they are written as character references. */
    assert_attr_renders("a\tb\nc\rd", "a&#9;b&#10;c&#13;d");
}

static void test_render_drops_controls(void **state)
{
    (void)state;

    assert_text_renders("a\x01"
                        "b\x08"
                        "c\x0b"
                        "d\x0c"
                        "e\x1b"
                        "f\x1f",
                        "abcdef");
    assert_attr_renders("a\x01"
                        "b\x1f",
                        "ab");
    assert_text_renders("\x02", "");
    /* DEL is a legal XML 1.0 character. */
    assert_text_renders("a\x7f"
                        "b",
                        "a\x7f"
                        "b");
}

static void test_render_utf8(void **state)
{
    (void)state;

    /* Valid sequences of every length pass through. */
    assert_text_renders("\xc3\xa9t\xc3\xa9", "\xc3\xa9t\xc3\xa9");
    assert_text_renders("\xe2\x82\xac", "\xe2\x82\xac");
    assert_text_renders("\xf0\x9f\x98\x80", "\xf0\x9f\x98\x80");
    assert_text_renders("\xef\xbf\xbd", "\xef\xbf\xbd");         /* U+FFFD */
    assert_text_renders("\xf4\x8f\xbf\xbd", "\xf4\x8f\xbf\xbd"); /* plane 16 */
    assert_attr_renders("\xc3\xa9", "\xc3\xa9");

    /* Invalid bytes are dropped, the rest is kept. */
    assert_text_renders("a\xff"
                        "b",
                        "ab");
    assert_text_renders("a\x80"
                        "b",
                        "ab"); /* lone continuation */
    assert_text_renders("a\xc0\x80"
                        "b",
                        "ab"); /* overlong NUL */
    assert_text_renders("a\xc1\xbf"
                        "b",
                        "ab"); /* overlong */
    assert_text_renders("a\xe0\x80\xaf"
                        "b",
                        "ab"); /* overlong '/' */
    assert_text_renders("a\xf0\x80\x80\xaf"
                        "b",
                        "ab");
    assert_text_renders("a\xed\xa0\x80"
                        "b",
                        "ab"); /* surrogate */
    assert_text_renders("a\xef\xbf\xbe"
                        "b",
                        "ab"); /* U+FFFE */
    assert_text_renders("a\xef\xbf\xbf"
                        "b",
                        "ab"); /* U+FFFF */
    assert_text_renders("a\xf4\x90\x80\x80"
                        "b",
                        "ab"); /* > U+10FFFF */
    assert_text_renders("a\xf5\x80\x80\x80"
                        "b",
                        "ab");
    assert_text_renders("a\xc3(", "a(");   /* truncated */
    assert_text_renders("a\xe2\x82", "a"); /* truncated at end */
    assert_text_renders("\xf0\x9f\x98", "");
    assert_attr_renders("x\xfe\"", "x&quot;");
}

static void test_render_nested(void **state)
{
    struct xnode *root = xnode_new("a");
    struct xnode *n = root;
    char want[512] = "";
    (void)state;

    for (int i = 0; i < 20; i++)
        n = xnode_add(n, "b");
    xnode_set_text(n, "<deep>");
    strcat(want, "<a>");
    for (int i = 0; i < 20; i++)
        strcat(want, "<b>");
    strcat(want, "&lt;deep&gt;");
    for (int i = 0; i < 20; i++)
        strcat(want, "</b>");
    strcat(want, "</a>");
    assert_renders(root, want);
    xnode_free(root);
    xnode_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_build_message),
        cmocka_unit_test(test_empty_and_text_elements),
        cmocka_unit_test(test_set_text_self),
        cmocka_unit_test(test_attr_replace_remove),
        cmocka_unit_test(test_namespace_inheritance),
        cmocka_unit_test(test_child_lookup),
        cmocka_unit_test(test_append_and_copy),
        cmocka_unit_test(test_copy_of_subtree_has_no_parent),
        cmocka_unit_test(test_render_escapes_markup),
        cmocka_unit_test(test_render_whitespace),
        cmocka_unit_test(test_render_drops_controls),
        cmocka_unit_test(test_render_utf8),
        cmocka_unit_test(test_render_nested),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
