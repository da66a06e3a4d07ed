/*
 * Unit tests for stanza.c: the SPEC 3 error table, error replies (id,
 * addresses, body kept), results, messages, ids and the XEP-0115 ver with
 * the XEP's own vector plus SHA-1 padding-boundary vectors computed with
 * Python's hashlib (an independent implementation).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "stanza.h"
#include "util.h"
#include "xnode.h"

static char *render(const struct xnode *n)
{
    return xnode_render(n, NULL);
}

static void assert_render(const struct xnode *n, const char *want)
{
    char *got = render(n);
    assert_string_equal(got, want);
    free(got);
}

static void test_spec_table(void **state)
{
    (void)state;
    /* SPEC 3: situation -> condition (type), whatever temporary says. */
    static const struct {
        int cond;
        const char *name;
        const char *type;
    } rows[] = {
        {COND_REGISTRATION_REQUIRED, "registration-required", "auth"},
        {COND_NOT_ALLOWED, "not-allowed", "cancel"},
        {COND_JID_MALFORMED, "jid-malformed", "modify"},
        {COND_BAD_REQUEST, "bad-request", "modify"},
        {COND_ITEM_NOT_FOUND, "item-not-found", "cancel"},
        {COND_NOT_ACCEPTABLE, "not-acceptable", "cancel"},
        {COND_REMOTE_SERVER_TIMEOUT, "remote-server-timeout", "wait"},
        {COND_CONFLICT, "conflict", "cancel"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
        assert_string_equal(stanza_cond_name(rows[i].cond), rows[i].name);
        assert_string_equal(stanza_error_type(rows[i].cond, false),
                            rows[i].type);
        assert_string_equal(stanza_error_type(rows[i].cond, true),
                            rows[i].type);
    }
    /* Over a rate limit (temporary): wait, as the table says; a message
     * refused by policy for good (too many segments): modify. */
    assert_string_equal(stanza_cond_name(COND_POLICY_VIOLATION),
                        "policy-violation");
    assert_string_equal(stanza_error_type(COND_POLICY_VIOLATION, true), "wait");
    assert_string_equal(stanza_error_type(COND_POLICY_VIOLATION, false),
                        "modify");
    /* Unknown IQ namespace: service-unavailable (cancel). */
    assert_string_equal(stanza_cond_name(COND_SERVICE_UNAVAILABLE),
                        "service-unavailable");
    assert_string_equal(stanza_error_type(COND_SERVICE_UNAVAILABLE, false),
                        "cancel");
    /* Generic failures say 'wait' when retrying may help. */
    assert_string_equal(stanza_error_type(COND_SERVICE_UNAVAILABLE, true),
                        "wait");
    assert_string_equal(stanza_error_type(COND_INTERNAL_SERVER_ERROR, true),
                        "wait");
    assert_string_equal(stanza_error_type(COND_INTERNAL_SERVER_ERROR, false),
                        "cancel");
    assert_string_equal(stanza_error_type(COND_NOT_AUTHORIZED, false), "auth");
    assert_string_equal(stanza_cond_name(-1), "undefined-condition");
    assert_string_equal(stanza_cond_name(9999), "undefined-condition");
    assert_string_equal(stanza_cond_name(COND_NONE), "undefined-condition");
}

static struct xnode *sample_message(void)
{
    struct xnode *m = xnode_new("message");
    xnode_set_attr(m, "from", "alice@example.org/phone");
    xnode_set_attr(m, "to", "+15551234567@sms.example.org");
    xnode_set_attr(m, "id", "m1");
    xnode_set_attr(m, "type", "chat");
    xnode_add_text(m, "body", "hi <there> & bye");
    xnode_add_ns(m, "request", NS_RECEIPTS);
    return m;
}

static void test_error_reply_message(void **state)
{
    (void)state;
    struct xnode *m = sample_message();
    struct error err;

    error_set(&err, COND_REGISTRATION_REQUIRED, false, "Register first");
    struct xnode *e = stanza_error_reply(m, &err);
    assert_render(
        e, "<message type=\"error\" from=\"+15551234567@sms.example.org\" "
           "to=\"alice@example.org/phone\" id=\"m1\">"
           "<body>hi &lt;there&gt; &amp; bye</body>"
           "<error type=\"auth\"><registration-required "
           "xmlns=\"urn:ietf:params:xml:ns:xmpp-stanzas\"/>"
           "<text xmlns=\"urn:ietf:params:xml:ns:xmpp-stanzas\">"
           "Register first</text></error></message>");
    xnode_free(e);
    xnode_free(m);
}

static void test_error_reply_iq_default_text(void **state)
{
    (void)state;
    struct xnode *iq = xnode_new("iq");
    xnode_set_attr(iq, "type", "get");
    xnode_set_attr(iq, "id", "q 1");
    xnode_set_attr(iq, "from", "bob@example.org/x");
    xnode_set_attr(iq, "to", "sms.example.org");
    xnode_add_ns(iq, "query", "urn:example:unknown");
    struct error err;
    error_clear(&err);
    err.code = COND_SERVICE_UNAVAILABLE;

    struct xnode *e = stanza_error_reply(iq, &err);
    assert_string_equal(e->name, "iq");
    assert_string_equal(xnode_attr(e, "type"), "error");
    assert_string_equal(xnode_attr(e, "id"), "q 1");
    assert_string_equal(xnode_attr(e, "from"), "sms.example.org");
    assert_string_equal(xnode_attr(e, "to"), "bob@example.org/x");
    assert_null(xnode_child(e, "query", NULL));
    struct xnode *er = xnode_child(e, "error", NULL);
    assert_non_null(er);
    assert_string_equal(xnode_attr(er, "type"), "cancel");
    assert_non_null(xnode_child(er, "service-unavailable", NS_STANZAS));
    const char *text = xnode_child_text(er, "text", NS_STANZAS);
    assert_non_null(text);
    assert_true(strlen(text) > 0);
    xnode_free(e);

    /* No id on the original: none on the reply; NULL err still valid. */
    xnode_set_attr(iq, "id", NULL);
    e = stanza_error_reply(iq, NULL);
    assert_null(xnode_attr(e, "id"));
    er = xnode_child(e, "error", NULL);
    assert_non_null(xnode_child(er, "undefined-condition", NS_STANZAS));
    xnode_free(e);
    xnode_free(iq);
}

static void test_error_to(void **state)
{
    (void)state;
    struct error err;

    error_set(&err, COND_REMOTE_SERVER_TIMEOUT, true, "provider unreachable");
    struct xnode *e = stanza_error_to("message", "+15551234567@sms.example.org",
                                      "alice@example.org/phone", "abc", &err);
    assert_render(e, "<message type=\"error\" "
                     "from=\"+15551234567@sms.example.org\" "
                     "to=\"alice@example.org/phone\" id=\"abc\">"
                     "<error type=\"wait\"><remote-server-timeout "
                     "xmlns=\"urn:ietf:params:xml:ns:xmpp-stanzas\"/>"
                     "<text xmlns=\"urn:ietf:params:xml:ns:xmpp-stanzas\">"
                     "provider unreachable</text></error></message>");
    xnode_free(e);

    error_set(&err, COND_NOT_ACCEPTABLE, false, "opted out");
    e = stanza_error_to("message", "a@gw", "b@c/d", NULL, &err);
    assert_null(xnode_attr(e, "id"));
    assert_string_equal(xnode_attr(xnode_child(e, "error", NULL), "type"),
                        "cancel");
    xnode_free(e);
}

static void test_iq_result(void **state)
{
    (void)state;
    struct xnode *iq = xnode_new("iq");
    xnode_set_attr(iq, "type", "get");
    xnode_set_attr(iq, "id", "p1");
    xnode_set_attr(iq, "from", "bob@example.org/x");
    xnode_set_attr(iq, "to", "sms.example.org");
    xnode_add_ns(iq, "ping", NS_PING);

    struct xnode *r = stanza_iq_result(iq);
    assert_render(r, "<iq type=\"result\" from=\"sms.example.org\" "
                     "to=\"bob@example.org/x\" id=\"p1\"/>");
    xnode_free(r);
    xnode_free(iq);
}

static void test_message(void **state)
{
    (void)state;
    struct xnode *m =
        stanza_message("+1555@gw", "alice@example.org", "chat", "line1\nline2");
    assert_render(m, "<message type=\"chat\" from=\"+1555@gw\" "
                     "to=\"alice@example.org\"><body>line1\nline2</body>"
                     "</message>");
    xnode_free(m);

    m = stanza_message("gw", "alice@example.org", "headline", NULL);
    assert_null(xnode_child(m, "body", NULL));
    assert_string_equal(xnode_attr(m, "type"), "headline");
    xnode_free(m);
}

static void test_new_id(void **state)
{
    (void)state;
    char a[24], b[24];

    stanza_new_id(a);
    stanza_new_id(b);
    assert_int_equal(strlen(a), 20);
    assert_memory_equal(a, "pst-", 4);
    for (size_t i = 4; i < 20; i++)
        assert_non_null(strchr("0123456789abcdef", a[i]));
    assert_string_not_equal(a, b);
}

static void test_caps_xep0115_vector(void **state)
{
    (void)state;
    /* XEP-0115 5.2, features deliberately out of order. */
    static const char *const features[] = {
        "http://jabber.org/protocol/muc",
        "http://jabber.org/protocol/disco#info",
        "http://jabber.org/protocol/caps",
        "http://jabber.org/protocol/disco#items",
    };
    char ver[64];

    stanza_caps_ver("client", "pc", "Exodus 0.9.1", features,
                    ARRAY_SIZE(features), ver, sizeof(ver));
    assert_string_equal(ver, "QgayPKawpkPSDYmwT/WM94uAlu0=");

    /* A buffer too small is truncated, never overrun. */
    char small[5];
    stanza_caps_ver("client", "pc", "Exodus 0.9.1", features,
                    ARRAY_SIZE(features), small, sizeof(small));
    assert_string_equal(small, "Qgay");
}

/* S = "a/b//<" + feature + "<", total lengths around SHA-1 block edges. */
static void test_caps_sha1_padding(void **state)
{
    (void)state;
    static const struct {
        size_t total;
        const char *ver;
    } vec[] = {
        {55, "vgLdCUViVQ3uVzrMP/WtqlhpFsk="},
        {56, "YNPrcHycoXK1agojG/LQZZDLZ+I="},
        {57, "4E86UqFfcrsHA82Cz6wDRLgXLhw="},
        {63, "wKGNQe2FOdAIUm8vfpOo6Oso/FY="},
        {64, "v5KYopgjYBUhVMHu6gnspx5Aqc8="},
        {65, "i94ZJYd1buNaeAxDGK334lBZRYA="},
        {119, "NbUZz7pj40qHlP+IV+WDHLqbwQE="},
        {120, "CikVt/udqolV4ng/LvrPc3YqYKw="},
        {128, "WOvBRq8MSb104s+4gbOM5WRl9Qw="},
    };
    char feature[200];
    char ver[32];

    for (size_t i = 0; i < ARRAY_SIZE(vec); i++) {
        size_t flen = vec[i].total - 7;
        memset(feature, 'f', flen);
        feature[flen] = '\0';
        const char *f[] = {feature};
        stanza_caps_ver("a", "b", NULL, f, 1, ver, sizeof(ver));
        assert_string_equal(ver, vec[i].ver);
    }
    /* No features at all: S = "client/pc//<". */
    stanza_caps_ver("client", "pc", "", NULL, 0, ver, sizeof(ver));
    assert_string_equal(ver, "5rmn0FzA5p88QvLQoLSAYUehLJQ=");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spec_table),
        cmocka_unit_test(test_error_reply_message),
        cmocka_unit_test(test_error_reply_iq_default_text),
        cmocka_unit_test(test_error_to),
        cmocka_unit_test(test_iq_result),
        cmocka_unit_test(test_message),
        cmocka_unit_test(test_new_id),
        cmocka_unit_test(test_caps_xep0115_vector),
        cmocka_unit_test(test_caps_sha1_padding),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
