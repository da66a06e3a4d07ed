/*
 * Unit tests for the Telnyx adapter through its provider ops: the Ed25519
 * webhook signature with vector T11 (protocol-facts §2.1.4) and its
 * negative cases (tampered body, changed or stale timestamp, bad
 * signature or key), request building (exact JSON, Bearer auth), response
 * mapping, and event parsing (message.received with media,
 * message.finalized delivered/failed, events of the other kind).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "http_client.h"
#include "sms/provider.h"
#include "transport.h"
#include "util.h"

#define T11_KEY "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
#define T11_SIG                                                                \
    "sdah7+HzVNhAWGH5EpD/VVgg1UjPmIAXr5+7p7k5qdH82l3wVGiLo6dC0bU5Yom0YLqcrjZs" \
    "tbwpVXzYUFgSBw=="

static const char t11_body[] =
    "{\"data\":{\"event_type\":\"message.received\",\"id\":\"b301ed3f-1490-"
    "491f-995f-6e64e69674d4\",\"occurred_at\":\"2023-11-14T22:13:20.000+00:"
    "00\",\"payload\":{\"direction\":\"inbound\",\"from\":{\"phone_number\":"
    "\"+13125550001\"},\"id\":\"84cca175-9755-4859-b67f-4730d7f58aa3\","
    "\"record_type\":\"message\",\"text\":\"Hello, World!\",\"to\":[{"
    "\"phone_number\":\"+17735550002\",\"status\":\"webhook_delivered\"}],"
    "\"type\":\"SMS\"},\"record_type\":\"event\"},\"meta\":{\"attempt\":1,"
    "\"delivered_to\":\"https://example.com/webhooks\"}}";

struct fx {
    struct gateway_conf conf;
    struct transport t;
    void *st;
};

static void *mk_key(struct fx *f, const char *key, const char *profile)
{
    memset(f, 0, sizeof(*f));
    f->conf.jid = xstrdup("sms.example.org");
    f->conf.provider.name = xstrdup("telnyx");
    f->conf.provider.api_url = xstrdup("http://127.0.0.1:8999");
    f->conf.provider.api_key = xstrdup("KEY0123");
    f->conf.provider.public_key = xstrdup(key);
    f->conf.provider.messaging_profile_id = profile ? xstrdup(profile) : NULL;
    f->t.conf = &f->conf;
    snprintf(f->t.module, sizeof(f->t.module), "sms[test]");
    f->st = sms_provider_telnyx.init(&f->t, NULL);
    return f->st;
}

static void fx_free(struct fx *f)
{
    sms_provider_telnyx.free(f->st);
    free(f->conf.jid);
    free(f->conf.provider.name);
    free(f->conf.provider.api_url);
    free(f->conf.provider.api_key);
    free(f->conf.provider.public_key);
    free(f->conf.provider.messaging_profile_id);
}

struct hdrs {
    const char *name[4];
    const char *value[4];
    size_t n;
};

static const char *hdr_get(const void *ctx, const char *name)
{
    const struct hdrs *h = ctx;
    for (size_t i = 0; i < h->n; i++)
        if (str_ieq(h->name[i], name))
            return h->value[i];
    return NULL;
}

static int verify(const char *body, const char *ts, const char *sig,
                  int64_t now, struct error *e)
{
    struct fx f;
    struct hdrs h = {
        {"Telnyx-Signature-Ed25519", "telnyx-timestamp"}, {sig, ts}, 2};
    struct sms_webhook wh = {.method = "POST",
                             .url = "https://gw.example.org/sms/x/inbound",
                             .body = body,
                             .body_len = strlen(body),
                             .header = hdr_get,
                             .header_ctx = &h,
                             .now = now};
    int rc;

    assert_non_null(mk_key(&f, T11_KEY, NULL));
    rc = sms_provider_telnyx.verify(f.st, &wh, e);
    fx_free(&f);
    return rc;
}

static void test_signature(void **state)
{
    struct error e;
    char *tampered = xstrdup(t11_body);

    (void)state;
    /* T11, within the window on either side */
    assert_int_equal(verify(t11_body, "1700000000", T11_SIG, 1700000000, &e),
                     0);
    assert_int_equal(verify(t11_body, "1700000000", T11_SIG, 1700000300, &e),
                     0);
    assert_int_equal(verify(t11_body, "1700000000", T11_SIG, 1699999700, &e),
                     0);
    /* stale: 301 s */
    assert_int_equal(verify(t11_body, "1700000000", T11_SIG, 1700000301, &e),
                     -1);
    assert_int_equal(e.code, COND_FORBIDDEN);
    assert_non_null(strstr(e.msg, "301 s"));
    /* the timestamp is signed */
    assert_int_equal(verify(t11_body, "1700000001", T11_SIG, 1700000000, &e),
                     -1);
    /* tampered body */
    tampered[strlen(tampered) - 3] = 'X';
    assert_int_equal(verify(tampered, "1700000000", T11_SIG, 1700000000, &e),
                     -1);
    free(tampered);
    /* a signature that is not 64 bytes; not base64; missing headers */
    assert_int_equal(
        verify(t11_body, "1700000000", "sdah7+HzVNhAWGH5", 1700000000, &e), -1);
    assert_non_null(strstr(e.msg, "64 bytes"));
    assert_int_equal(verify(t11_body, "1700000000", "!!!!", 1700000000, &e),
                     -1);
    assert_int_equal(verify(t11_body, "1700000000", NULL, 1700000000, &e), -1);
    assert_int_equal(verify(t11_body, NULL, T11_SIG, 1700000000, &e), -1);
    assert_int_equal(verify(t11_body, "17e8", T11_SIG, 1700000000, &e), -1);
}

static void test_bad_key(void **state)
{
    struct fx f;

    (void)state;
    /* 31 bytes, and not base64 at all: init refuses */
    assert_null(
        mk_key(&f, "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHUQ==", NULL));
    fx_free(&f);
    assert_null(mk_key(&f, "not a key", NULL));
    fx_free(&f);
}

static void test_build(void **state)
{
    struct fx f;
    const char *media[] = {"https://up.example.org/a.jpg"};
    struct sms_part p = {.from = "+15550001111",
                         .to = "+15551234567",
                         .body = "Hi \"there\"",
                         .media = media,
                         .n_media = 1,
                         .count = 1};
    struct sms_request r;
    struct error e;

    (void)state;
    assert_non_null(mk_key(&f, T11_KEY, "prof-1"));
    assert_int_equal(
        sms_provider_telnyx.build(f.st, &p, "https://gw/sms/j/status", &r, &e),
        0);
    assert_string_equal(r.url, "http://127.0.0.1:8999/v2/messages");
    assert_string_equal(r.content_type, "application/json");
    assert_string_equal(r.authorization, "Bearer KEY0123");
    assert_string_equal(
        r.body, "{\"from\":\"+15550001111\",\"to\":\"+15551234567\",\"text\":"
                "\"Hi \\\"there\\\"\",\"media_urls\":[\"https://up.example.org"
                "/a.jpg\"],\"webhook_url\":\"https://gw/sms/j/status\","
                "\"messaging_profile_id\":\"prof-1\"}");
    sms_request_free(&r);
    fx_free(&f);

    assert_non_null(mk_key(&f, T11_KEY, NULL));
    p.n_media = 0;
    p.body = "x";
    assert_int_equal(sms_provider_telnyx.build(f.st, &p, NULL, &r, &e), 0);
    assert_string_equal(r.body, "{\"from\":\"+15550001111\",\"to\":"
                                "\"+15551234567\",\"text\":\"x\"}");
    sms_request_free(&r);
    p.body = "bad \xff";
    assert_int_equal(sms_provider_telnyx.build(f.st, &p, NULL, &r, &e), -1);
    assert_int_equal(e.code, COND_BAD_REQUEST);
    fx_free(&f);
}

static int respond(int status, const char *body, const char *retry_after,
                   char **id, struct error *e)
{
    struct fx f;
    struct http_response r = {.status = status,
                              .body = body,
                              .body_len = strlen(body),
                              .retry_after = retry_after};
    int rc;

    assert_non_null(mk_key(&f, T11_KEY, NULL));
    *id = NULL;
    error_clear(e);
    rc = sms_provider_telnyx.response(f.st, &r, 1700000000, id, e);
    fx_free(&f);
    return rc;
}

static void test_response(void **state)
{
    char *id;
    struct error e;

    (void)state;
    assert_int_equal(respond(200,
                             "{\"data\":{\"record_type\":\"message\",\"id\":"
                             "\"40385f64-5717-4562-b3fc-2c963f66afa6\"}}",
                             NULL, &id, &e),
                     0);
    assert_string_equal(id, "40385f64-5717-4562-b3fc-2c963f66afa6");
    free(id);
    assert_int_equal(respond(400,
                             "{\"errors\":[{\"code\":\"40310\",\"title\":"
                             "\"Invalid 'to' address\",\"detail\":\"The 'to' "
                             "address should be in +E.164 format.\"}]}",
                             NULL, &id, &e),
                     -1);
    assert_int_equal(e.code, COND_ITEM_NOT_FOUND);
    assert_false(e.temporary);
    assert_non_null(strstr(e.msg, "invalid number"));
    assert_int_equal(respond(401,
                             "{\"errors\":[{\"code\":\"10009\",\"title\":"
                             "\"Authentication failed\"}]}",
                             NULL, &id, &e),
                     -1);
    assert_int_equal(e.code, COND_INTERNAL_SERVER_ERROR);
    assert_false(e.temporary);
    assert_int_equal(respond(429, "{}", "12", &id, &e), -1);
    assert_true(e.temporary);
    assert_int_equal(e.retry_after_s, 12);
    assert_int_equal(respond(502, "", NULL, &id, &e), -1);
    assert_true(e.temporary);
    assert_int_equal(respond(422,
                             "{\"errors\":[{\"code\":10015,\"title\":\"Bad "
                             "Request\",\"detail\":\"The 'text' parameter is "
                             "required\"}]}",
                             NULL, &id, &e),
                     -1);
    assert_false(e.temporary);
    assert_int_equal(e.code, COND_NOT_ACCEPTABLE);
    assert_non_null(strstr(e.msg, "'text' parameter"));
    assert_non_null(strstr(e.msg, "10015"));
}

static struct sms_webhook json_hook(const char *body)
{
    static struct hdrs none;
    struct sms_webhook wh = {.method = "POST",
                             .url = "https://gw.example.org/x",
                             .body = body,
                             .body_len = strlen(body),
                             .header = hdr_get,
                             .header_ctx = &none};
    return wh;
}

static void test_parse(void **state)
{
    struct sms_webhook wh = json_hook(t11_body);
    struct sms_inbound in;
    struct sms_status st;
    struct error e;

    (void)state;
    assert_int_equal(sms_provider_telnyx.parse_inbound(NULL, &wh, &in, &e),
                     SMS_PARSE_OK);
    assert_string_equal(in.msg.from_addr, "+13125550001");
    assert_string_equal(in.msg.to_addr, "+17735550002");
    assert_string_equal(in.msg.body, "Hello, World!");
    assert_string_equal(in.msg.provider_id,
                        "84cca175-9755-4859-b67f-4730d7f58aa3");
    sms_inbound_free(&in);
    /* the same event on the status URL belongs to the other parser */
    assert_int_equal(sms_provider_telnyx.parse_status(NULL, &wh, &st, &e),
                     SMS_PARSE_OTHER);

    wh =
        json_hook("{\"data\":{\"event_type\":\"message.received\",\"payload\":"
                  "{\"id\":\"m1\",\"from\":{\"phone_number\":\"+1555\"},\"to\":"
                  "[{\"phone_number\":\"+1666\"}],\"text\":\"\",\"media\":[{"
                  "\"url\":\"https://m/1.jpg\",\"content_type\":\"image/jpeg\""
                  "},{\"url\":\"https://m/2.png\"}]}}}");
    assert_int_equal(sms_provider_telnyx.parse_inbound(NULL, &wh, &in, &e),
                     SMS_PARSE_OK);
    assert_null(in.msg.body);
    assert_int_equal(in.msg.n_media, 2);
    assert_string_equal(in.msg.media[1], "https://m/2.png");
    sms_inbound_free(&in);

    wh =
        json_hook("{\"data\":{\"event_type\":\"message.finalized\",\"payload\":"
                  "{\"id\":\"o1\",\"to\":[{\"phone_number\":\"+1666\",\"status"
                  "\":\"delivered\"}]}}}");
    assert_int_equal(sms_provider_telnyx.parse_inbound(NULL, &wh, &in, &e),
                     SMS_PARSE_OTHER);
    assert_int_equal(sms_provider_telnyx.parse_status(NULL, &wh, &st, &e),
                     SMS_PARSE_OK);
    assert_string_equal(st.provider_id, "o1");
    assert_int_equal(st.state, DELIVERY_DELIVERED);
    sms_status_free(&st);

    wh =
        json_hook("{\"data\":{\"event_type\":\"message.finalized\",\"payload\":"
                  "{\"id\":\"o2\",\"to\":[{\"status\":\"delivery_failed\"}],"
                  "\"errors\":[{\"code\":\"40008\",\"title\":\"Undeliverable"
                  "\",\"detail\":\"The message could not be delivered.\"}]}}}");
    assert_int_equal(sms_provider_telnyx.parse_status(NULL, &wh, &st, &e),
                     SMS_PARSE_OK);
    assert_int_equal(st.state, DELIVERY_FAILED);
    assert_int_equal(st.err.code, COND_RECIPIENT_UNAVAILABLE);
    assert_non_null(strstr(st.err.msg, "Undeliverable"));
    assert_non_null(strstr(st.err.msg, "40008"));
    sms_status_free(&st);

    wh = json_hook("{\"data\":{\"event_type\":\"message.sent\",\"payload\":"
                   "{\"id\":\"o3\",\"to\":[{\"status\":\"sent\"}]}}}");
    assert_int_equal(sms_provider_telnyx.parse_status(NULL, &wh, &st, &e),
                     SMS_PARSE_OK);
    assert_int_equal(st.state, DELIVERY_SENT);
    sms_status_free(&st);

    /* an event of no interest: nothing to report */
    wh = json_hook("{\"data\":{\"event_type\":\"number.updated\",\"payload\":"
                   "{}}}");
    assert_int_equal(sms_provider_telnyx.parse_status(NULL, &wh, &st, &e),
                     SMS_PARSE_OK);
    assert_null(st.provider_id);

    wh = json_hook("not json");
    assert_int_equal(sms_provider_telnyx.parse_inbound(NULL, &wh, &in, &e),
                     SMS_PARSE_MALFORMED);
    assert_int_equal(e.code, COND_BAD_REQUEST);
    wh = json_hook("{\"data\":{\"event_type\":\"message.received\",\"payload\":"
                   "{\"id\":\"m1\"}}}");
    assert_int_equal(sms_provider_telnyx.parse_inbound(NULL, &wh, &in, &e),
                     SMS_PARSE_MALFORMED);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_signature), cmocka_unit_test(test_bad_key),
        cmocka_unit_test(test_build),     cmocka_unit_test(test_response),
        cmocka_unit_test(test_parse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
