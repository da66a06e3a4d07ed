/*
 * queue.c's inbound message codec: what the webhook/LMTP side persists
 * must come back field for field, and anything malformed in a stream
 * entry must be refused (the reader then logs and acknowledges it).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "queue.h"
#include "util.h"

static void roundtrip_full(void **state)
{
    struct inmsg m, out;
    struct error err;
    char *json;
    (void)state;

    memset(&m, 0, sizeof(m));
    m.to_addr = xstrdup("+15550001111");
    m.from_addr = xstrdup("+15551234567");
    m.body = xstrdup("h\xc3\xa9llo \"quoted\"\nline two \xf0\x9f\x98\x80");
    m.subject = xstrdup("Re: plans");
    m.thread = xstrdup("<abc@example.com>");
    m.provider_id = xstrdup("SM0123456789");
    m.extra = xstrdup("attached: a.pdf (12 KB)");
    m.media[0] = xstrdup("https://example.com/m/1.jpg");
    m.media[1] = xstrdup("https://example.com/m/2.png");
    m.n_media = 2;

    json = inmsg_to_json(&m);
    assert_non_null(json);
    assert_int_equal(inmsg_from_json(json, &out, &err), 0);
    assert_string_equal(out.to_addr, m.to_addr);
    assert_string_equal(out.from_addr, m.from_addr);
    assert_string_equal(out.body, m.body);
    assert_string_equal(out.subject, m.subject);
    assert_string_equal(out.thread, m.thread);
    assert_string_equal(out.provider_id, m.provider_id);
    assert_string_equal(out.extra, m.extra);
    assert_int_equal(out.n_media, 2);
    assert_string_equal(out.media[0], m.media[0]);
    assert_string_equal(out.media[1], m.media[1]);
    inmsg_free_fields(&out);
    free(json);
    inmsg_free_fields(&m);
}

static void roundtrip_minimal(void **state)
{
    struct inmsg m, out;
    struct error err;
    char *json;
    (void)state;

    memset(&m, 0, sizeof(m));
    m.to_addr = xstrdup("alice@mail.example.org");
    m.from_addr = xstrdup("bob@example.com");
    m.body = xstrdup("");
    json = inmsg_to_json(&m);
    assert_int_equal(inmsg_from_json(json, &out, &err), 0);
    assert_string_equal(out.body, "");
    assert_null(out.subject);
    assert_null(out.thread);
    assert_null(out.provider_id);
    assert_null(out.extra);
    assert_int_equal(out.n_media, 0);
    inmsg_free_fields(&out);
    free(json);
    inmsg_free_fields(&m);
}

static void media_only(void **state)
{
    struct inmsg m, out;
    struct error err;
    char *json;
    (void)state;

    memset(&m, 0, sizeof(m));
    m.to_addr = xstrdup("+15550001111");
    m.from_addr = xstrdup("+15551234567");
    for (size_t i = 0; i < INMSG_MAX_MEDIA; i++)
        m.media[i] = xstrdup("https://example.com/x");
    m.n_media = INMSG_MAX_MEDIA;
    json = inmsg_to_json(&m);
    assert_int_equal(inmsg_from_json(json, &out, &err), 0);
    assert_null(out.body);
    assert_int_equal(out.n_media, INMSG_MAX_MEDIA);
    inmsg_free_fields(&out);
    free(json);
    inmsg_free_fields(&m);
}

/* A provider's broken UTF-8 is stored (as U+FFFD), not lost. */
static void invalid_utf8_is_replaced(void **state)
{
    struct inmsg m, out;
    struct error err;
    char *json;
    (void)state;

    memset(&m, 0, sizeof(m));
    m.to_addr = xstrdup("+15550001111");
    m.from_addr = xstrdup("+15551234567");
    m.body = xstrdup("a\xff"
                     "b\xc3");
    json = inmsg_to_json(&m);
    assert_int_equal(inmsg_from_json(json, &out, &err), 0);
    assert_string_equal(out.body, "a\xef\xbf\xbd"
                                  "b\xef\xbf\xbd");
    inmsg_free_fields(&out);
    free(json);
    inmsg_free_fields(&m);
}

static void malformed(void **state)
{
    static const char *const bad[] = {
        "",
        "not json",
        "[]",
        "\"x\"",
        "{\"from\":\"+15551234567\",\"body\":\"x\"}",
        "{\"to\":\"+15550001111\",\"body\":\"x\"}",
        "{\"to\":\"\",\"from\":\"+15551234567\",\"body\":\"x\"}",
        "{\"to\":1,\"from\":\"+15551234567\",\"body\":\"x\"}",
        "{\"to\":\"+15550001111\",\"from\":\"+15551234567\",\"body\":5}",
        "{\"to\":\"+15550001111\",\"from\":\"+15551234567\"}",
        "{\"to\":\"+15550001111\",\"from\":\"+15551234567\",\"media\":\"u\"}",
        "{\"to\":\"+15550001111\",\"from\":\"+15551234567\",\"media\":[1]}",
        "{\"to\":\"+15550001111\",\"from\":\"+15551234567\","
        "\"media\":[\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\","
        "\"a\",\"a\"]}",
        "{\"to\":\"a\",\"to\":\"b\",\"from\":\"c\",\"body\":\"x\"}",
        "{\"to\":\"a\\u0000b\",\"from\":\"c\",\"body\":\"x\"}",
        "{\"to\":\"+15550001111\",\"from\":\"+15551234567\",\"body\":\"x\"",
    };
    struct inmsg out;
    struct error err;
    (void)state;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        error_clear(&err);
        if (inmsg_from_json(bad[i], &out, &err) != -1)
            fail_msg("accepted malformed input #%zu: %s", i, bad[i]);
        assert_int_equal(err.code, COND_BAD_REQUEST);
        assert_true(err.msg[0] != '\0');
        /* nothing half-parsed is left to free */
        assert_null(out.to_addr);
        assert_null(out.from_addr);
        assert_int_equal(out.n_media, 0);
    }
    assert_int_equal(inmsg_from_json(NULL, &out, &err), -1);
}

/* Newer writers may add members: readers ignore what they do not know. */
static void unknown_members_ignored(void **state)
{
    struct inmsg out;
    struct error err;
    (void)state;

    assert_int_equal(
        inmsg_from_json("{\"v\":2,\"to\":\"+15550001111\",\"from\":"
                        "\"+15551234567\",\"body\":\"hi\",\"new\":[1,2]}",
                        &out, &err),
        0);
    assert_string_equal(out.body, "hi");
    inmsg_free_fields(&out);
}

/* Notices (receipts, errors for a sender) share the inbound stream. */
static void notices(void **state)
{
    struct inmsg n, out;
    struct error err;
    char *json;
    (void)state;

    memset(&n, 0, sizeof(n));
    n.kind = INMSG_ERROR;
    n.jid = xstrdup("alice@example.org/phone");
    n.contact = xstrdup("+15551234567@sms.example.org");
    n.ref_id = xstrdup("m1");
    n.cond = COND_ITEM_NOT_FOUND;
    n.text = xstrdup("invalid number");
    n.body = xstrdup("hello");
    json = inmsg_to_json(&n);
    assert_int_equal(inmsg_from_json(json, &out, &err), 0);
    assert_int_equal(out.kind, INMSG_ERROR);
    assert_string_equal(out.jid, n.jid);
    assert_string_equal(out.contact, n.contact);
    assert_string_equal(out.ref_id, "m1");
    assert_int_equal(out.cond, COND_ITEM_NOT_FOUND);
    assert_false(out.temporary);
    assert_string_equal(out.text, "invalid number");
    assert_string_equal(out.body, "hello");
    assert_null(out.to_addr);
    inmsg_free_fields(&out);
    free(json);
    inmsg_free_fields(&n);

    assert_int_equal(
        inmsg_from_json("{\"k\":\"receipt\",\"jid\":\"a@b/c\",\"contact\":"
                        "\"+1555@sms.x\",\"ref\":\"r1\"}",
                        &out, &err),
        0);
    assert_int_equal(out.kind, INMSG_RECEIPT);
    assert_string_equal(out.ref_id, "r1");
    inmsg_free_fields(&out);

    static const char *const bad[] = {
        "{\"k\":\"receipt\",\"contact\":\"+1555@sms.x\"}", /* no jid */
        "{\"k\":\"receipt\",\"jid\":\"a@b/c\"}",           /* no contact */
        "{\"k\":\"bogus\",\"jid\":\"a@b/c\",\"contact\":\"x@y\"}",
        "{\"k\":\"error\",\"jid\":\"a@b/c\",\"contact\":\"x@y\"}", /* cond */
        "{\"k\":\"error\",\"jid\":\"a@b/c\",\"contact\":\"x@y\",\"cond\":0}",
        ("{\"k\":\"error\",\"jid\":\"a@b/c\",\"contact\":\"x@y\","
         "\"cond\":999}"),
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (inmsg_from_json(bad[i], &out, &err) != -1)
            fail_msg("accepted malformed notice #%zu: %s", i, bad[i]);
}

static void outmsg_roundtrip(void **state)
{
    struct outmsg m, out;
    struct error err;
    char *json;
    (void)state;

    memset(&m, 0, sizeof(m));
    m.uid = xstrdup("0123abcd");
    m.from_jid = xstrdup("alice@example.org/phone");
    m.id = xstrdup("m1");
    m.to_jid = xstrdup("+15551234567@sms.example.org");
    m.from_addr = xstrdup("+15550001111");
    m.to_addr = xstrdup("+15551234567");
    m.body = xstrdup("h\xc3\xa9llo\n\"there\"");
    m.subject = xstrdup("s");
    m.thread = xstrdup("t");
    m.media[0] = xstrdup("https://up.example.org/a.jpg");
    m.n_media = 1;
    m.receipt = true;
    m.enqueued_at = 1700000000123;
    m.attempt = 3;
    m.last_error = xstrdup("HTTP 503");
    json = outmsg_to_json(&m);
    assert_int_equal(outmsg_from_json(json, &out, &err), 0);
    assert_string_equal(out.uid, m.uid);
    assert_string_equal(out.from_jid, m.from_jid);
    assert_string_equal(out.id, m.id);
    assert_string_equal(out.to_jid, m.to_jid);
    assert_string_equal(out.from_addr, m.from_addr);
    assert_string_equal(out.to_addr, m.to_addr);
    assert_string_equal(out.body, m.body);
    assert_string_equal(out.subject, "s");
    assert_string_equal(out.thread, "t");
    assert_int_equal(out.n_media, 1);
    assert_string_equal(out.media[0], m.media[0]);
    assert_true(out.receipt);
    assert_true(out.enqueued_at == 1700000000123);
    assert_int_equal(out.attempt, 3);
    assert_string_equal(out.last_error, "HTTP 503");
    outmsg_free_fields(&out);
    free(json);

    /* required members */
    free(m.uid);
    m.uid = NULL;
    json = outmsg_to_json(&m);
    assert_int_equal(outmsg_from_json(json, &out, &err), -1);
    assert_int_equal(err.code, COND_BAD_REQUEST);
    free(json);
    outmsg_free_fields(&m);
    assert_int_equal(outmsg_from_json("{\"uid\":\"u\",\"jid\":\"a@b/c\","
                                      "\"contact\":\"c@d\",\"from\":\"+1\","
                                      "\"to\":\"+2\",\"at\":1}",
                                      &out, &err),
                     -1); /* neither body nor media */
    assert_int_equal(outmsg_from_json("[1]", &out, &err), -1);
    assert_int_equal(outmsg_from_json(NULL, &out, &err), -1);
}

static void outref_roundtrip(void **state)
{
    struct outref r = {NULL, NULL, NULL, true}, out;
    struct error err;
    char *json;
    (void)state;

    r.jid = xstrdup("alice@example.org/phone");
    r.contact = xstrdup("+15551234567@sms.example.org");
    json = outref_to_json(&r);
    assert_int_equal(outref_from_json(json, &out, &err), 0);
    assert_string_equal(out.jid, r.jid);
    assert_string_equal(out.contact, r.contact);
    assert_null(out.id);
    assert_true(out.receipt);
    outref_free_fields(&out);
    free(json);
    outref_free_fields(&r);
    assert_int_equal(outref_from_json("{\"jid\":\"a@b\"}", &out, &err), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(roundtrip_full),
        cmocka_unit_test(roundtrip_minimal),
        cmocka_unit_test(media_only),
        cmocka_unit_test(invalid_utf8_is_replaced),
        cmocka_unit_test(malformed),
        cmocka_unit_test(unknown_members_ignored),
        cmocka_unit_test(notices),
        cmocka_unit_test(outmsg_roundtrip),
        cmocka_unit_test(outref_roundtrip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
