/*
 * Unit tests for the Vonage adapter through its provider ops: webhook
 * signatures with the SDK vectors T12-T18 (protocol-facts §2.2.5) in form,
 * GET and JSON webhooks, the refusals (forged, unsigned, stale), request
 * building (no '+', type=unicode, callback), response mapping (status
 * 0/1/4/7, partial failure, long messages) and the parsing of inbound
 * messages (concatenated parts) and delivery receipts.
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

struct fx {
    struct gateway_conf conf;
    struct transport t;
    void *st;
};

static void *mk(struct fx *f, const char *sig_secret)
{
    memset(f, 0, sizeof(*f));
    f->conf.jid = xstrdup("sms.example.org");
    f->conf.provider.name = xstrdup("vonage");
    f->conf.provider.api_url = xstrdup("http://127.0.0.1:8999");
    f->conf.provider.api_key = xstrdup("abcd1234");
    f->conf.provider.api_secret = xstrdup("s3cr3t");
    f->conf.provider.signature_secret = xstrdup(sig_secret);
    f->t.conf = &f->conf;
    snprintf(f->t.module, sizeof(f->t.module), "sms[test]");
    f->st = sms_provider_vonage.init(&f->t, NULL);
    assert_non_null(f->st);
    return f->st;
}

static void fx_free(struct fx *f)
{
    sms_provider_vonage.free(f->st);
    free(f->conf.jid);
    free(f->conf.provider.name);
    free(f->conf.provider.api_url);
    free(f->conf.provider.api_key);
    free(f->conf.provider.api_secret);
    free(f->conf.provider.signature_secret);
}

static const char *no_hdr(const void *ctx, const char *name)
{
    (void)ctx;
    (void)name;
    return NULL;
}

/* method "POST" (form), "GET" (params in query) or "JSON". */
static int verify_as(const char *method, const char *secret, const char *params,
                     int64_t now, struct error *e)
{
    struct fx f;
    bool get = strcmp(method, "GET") == 0;
    bool json = strcmp(method, "JSON") == 0;
    struct sms_webhook wh = {
        .method = get ? "GET" : "POST",
        .url = "https://gw.example.org/sms/x/inbound",
        .query = get ? params : NULL,
        .content_type =
            json ? "application/json" : "application/x-www-form-urlencoded",
        .body = get ? "" : params,
        .body_len = get ? 0 : strlen(params),
        .header = no_hdr,
        .now = now,
    };
    int rc;

    mk(&f, secret);
    rc = sms_provider_vonage.verify(f.st, &wh, e);
    if (rc < 0)
        assert_int_equal(e->code, COND_FORBIDDEN);
    fx_free(&f);
    return rc;
}

static int verify(const char *secret, const char *params, int64_t now)
{
    struct error e;
    return verify_as("POST", secret, params, now, &e);
}

#define LEGACY "a=1&b=2&timestamp=1461605396&sig="
#define NEW "param1=value1&param2=value2&timestamp=1234567890&sig="

static void test_signature_vectors(void **state)
{
    (void)state;
    /* T12 md5hash, T13 HMAC-MD5, T14 SHA1, T15 SHA256, T16 SHA512 */
    assert_int_equal(
        verify("secret", LEGACY "6af838ef94998832dbfc29020b564830", 1461605396),
        0);
    assert_int_equal(
        verify("secret", LEGACY "c15c21ced558c93a226c305f58f902f2", 1461605396),
        0);
    assert_int_equal(verify("secret",
                            LEGACY "3e19a4e6880fdc2c1426bfd0587c98b9532f0210",
                            1461605396),
                     0);
    assert_int_equal(verify("secret",
                            LEGACY "a321e824b9b816be7c3f28859a31749a098713d39f6"
                                   "13c80d455bbaffae1cd24",
                            1461605396),
                     0);
    assert_int_equal(
        verify("secret",
               LEGACY "812a18f76680fa0fe1b8bd9ee1625466ceb1bd96242e4d050d2cfd9"
                      "a7b40166c63ed26ec9702168781b6edcf1633db8ff95af934170100"
                      "4eec3fcf9550572ee8",
               1461605396),
        0);
    /* the docs show upper-case hex */
    assert_int_equal(
        verify("secret", LEGACY "6AF838EF94998832DBFC29020B564830", 1461605396),
        0);
    /* T17 SHA256, T17b HMAC-MD5 */
    assert_int_equal(verify("signature_secret",
                            NEW "280c4320703dbc98bfa22db676655ed2acfbfe8792b062"
                                "ff7622e67f1183c287",
                            1234567890),
                     0);
    assert_int_equal(verify("signature_secret",
                            NEW "724c2bf6ca423c36e20631b11d1c5753", 1234567890),
                     0);
    /* T18: '&' and '=' in values become '_' before signing */
    assert_int_equal(verify("signature_secret",
                            "param1=value%261&param2=value%3D2&timestamp="
                            "1234567890&sig=2bbf0abafb2c55e5af6231513896a2ac",
                            1234567890),
                     0);
    /* T18b, T18c */
    assert_int_equal(verify("signature_secret",
                            "param=value&timestamp=1234567890&sig=655a4d0b7f0"
                            "64dff438defc52b012cf5",
                            1234567890),
                     0);
    assert_int_equal(verify("signature_secret",
                            "param1=value1&param2=value2&timestamp=12345&sig="
                            "bc7e95bb4e341090b3a202a2885903a5",
                            12345),
                     0);
}

static void test_signature_transports_and_failures(void **state)
{
    struct error e;

    (void)state;
    /* the same parameters as GET and as JSON */
    assert_int_equal(verify_as("GET", "secret",
                               LEGACY "c15c21ced558c93a226c305f58f902f2",
                               1461605396, &e),
                     0);
    assert_int_equal(verify_as("JSON", "secret",
                               "{\"a\":\"1\",\"b\":2,\"timestamp\":"
                               "\"1461605396\",\"sig\":"
                               "\"c15c21ced558c93a226c305f58f902f2\"}",
                               1461605396, &e),
                     0);
    /* wrong secret, tampered parameter, unsigned, odd length */
    assert_int_equal(
        verify("secreT", LEGACY "c15c21ced558c93a226c305f58f902f2", 1461605396),
        -1);
    assert_int_equal(verify("secret",
                            "a=1&b=3&timestamp=1461605396&sig="
                            "c15c21ced558c93a226c305f58f902f2",
                            1461605396),
                     -1);
    assert_int_equal(verify_as("POST", "secret", "a=1&b=2&timestamp=1461605396",
                               1461605396, &e),
                     -1);
    assert_string_equal(e.msg, "unsigned webhook");
    assert_int_equal(verify("secret", LEGACY "c15c21", 1461605396), -1);
    /* stale and future timestamps (window 300 s) */
    assert_int_equal(verify("secret", LEGACY "c15c21ced558c93a226c305f58f902f2",
                            1461605396 + 300),
                     0);
    assert_int_equal(verify_as("POST", "secret",
                               LEGACY "c15c21ced558c93a226c305f58f902f2",
                               1461605396 + 301, &e),
                     -1);
    assert_non_null(strstr(e.msg, "301 s"));
    assert_int_equal(verify("secret", LEGACY "c15c21ced558c93a226c305f58f902f2",
                            1461605396 - 301),
                     -1);
}

static void test_build(void **state)
{
    struct fx f;
    const char *media[] = {"https://up.example.org/a.jpg"};
    struct sms_part p = {.from = "+15550001111",
                         .to = "+447700900000",
                         .body = "Caf\xc3\xa9 & co",
                         .count = 1};
    struct sms_request r;
    struct error e;

    (void)state;
    mk(&f, "x");
    assert_int_equal(
        sms_provider_vonage.build(f.st, &p, "https://gw/sms/j/status", &r, &e),
        0);
    assert_string_equal(r.url, "http://127.0.0.1:8999/sms/json");
    assert_null(r.authorization);
    assert_string_equal(r.content_type, "application/x-www-form-urlencoded");
    /* é is GSM-7: no type */
    assert_string_equal(r.body, "api_key=abcd1234&api_secret=s3cr3t&from="
                                "15550001111&to=447700900000&text=Caf%C3%A9%20"
                                "%26%20co&status-report-req=1&callback=https%3A"
                                "%2F%2Fgw%2Fsms%2Fj%2Fstatus");
    sms_request_free(&r);

    /* Cyrillic needs unicode; media become text lines; no callback */
    p.body = "\xd0\x9f\xd1\x80\xd0\xb8";
    p.media = media;
    p.n_media = 1;
    assert_int_equal(sms_provider_vonage.build(f.st, &p, NULL, &r, &e), 0);
    assert_string_equal(r.body, "api_key=abcd1234&api_secret=s3cr3t&from="
                                "15550001111&to=447700900000&text=%D0%9F%D1%80"
                                "%D0%B8%0Ahttps%3A%2F%2Fup.example.org%2Fa.jpg"
                                "&type=unicode");
    sms_request_free(&r);
    p.body = "\xc3";
    p.n_media = 0;
    assert_int_equal(sms_provider_vonage.build(f.st, &p, NULL, &r, &e), -1);
    fx_free(&f);
}

static int respond(int status, const char *body, char **id, struct error *e)
{
    struct fx f;
    struct http_response r = {
        .status = status, .body = body, .body_len = strlen(body)};
    int rc;

    mk(&f, "x");
    *id = NULL;
    error_clear(e);
    rc = sms_provider_vonage.response(f.st, &r, 0, id, e);
    fx_free(&f);
    return rc;
}

static void test_response(void **state)
{
    char *id;
    struct error e;

    (void)state;
    assert_int_equal(
        respond(200,
                "{\"message-count\": \"1\", \"messages\": [{\"to\":"
                " \"1234567890\", \"message-id\": \"3295d748-4e14-"
                "4681-af78-166dca3c5aab\", \"status\": \"0\", "
                "\"remaining-balance\": \"38.07243628\", "
                "\"message-price\": \"0.04120000\", \"network\": "
                "\"23420\"}]}",
                &id, &e),
        0);
    assert_string_equal(id, "3295d748-4e14-4681-af78-166dca3c5aab");
    free(id);
    /* a long text: the last part's id */
    assert_int_equal(
        respond(200,
                "{\"message-count\":\"2\",\"messages\":[{\"status\""
                ":\"0\",\"message-id\":\"A1\"},{\"status\":\"0\","
                "\"message-id\":\"A2\"}]}",
                &id, &e),
        0);
    assert_string_equal(id, "A2");
    free(id);

    assert_int_equal(respond(200,
                             "{\"message-count\": \"1\", \"messages\": [{"
                             "\"status\": \"7\", \"error-text\": \"Number "
                             "barred.\"}]}",
                             &id, &e),
                     -1);
    assert_null(id);
    assert_false(e.temporary);
    assert_int_equal(e.code, COND_NOT_ACCEPTABLE);
    assert_non_null(strstr(e.msg, "barred"));

    assert_int_equal(respond(200,
                             "{\"messages\":[{\"status\":\"1\",\"error-text\":"
                             "\"Throttled\"}]}",
                             &id, &e),
                     -1);
    assert_true(e.temporary);

    assert_int_equal(respond(200,
                             "{\"messages\":[{\"status\":\"4\",\"error-text\":"
                             "\"Bad Credentials\"}]}",
                             &id, &e),
                     -1);
    assert_false(e.temporary);
    assert_int_equal(e.code, COND_INTERNAL_SERVER_ERROR);
    assert_non_null(strstr(e.msg, "authentication failed"));

    /* part 2 throttled after part 1 went out: no retry, no duplicate */
    assert_int_equal(
        respond(200,
                "{\"message-count\":\"2\",\"messages\":[{\"status\""
                ":\"0\",\"message-id\":\"B1\"},{\"status\":\"1\","
                "\"error-text\":\"Throttled\"}]}",
                &id, &e),
        -1);
    assert_false(e.temporary);
    assert_non_null(strstr(e.msg, "only 1 of 2 parts"));

    assert_int_equal(respond(503, "", &id, &e), -1);
    assert_true(e.temporary);
    assert_int_equal(respond(200, "garbage", &id, &e), -1);
    assert_false(e.temporary);
}

static struct sms_webhook form_hook(const char *body)
{
    struct sms_webhook wh = {.method = "POST",
                             .url = "https://gw.example.org/x",
                             .content_type = "application/x-www-form-"
                                             "urlencoded; charset=UTF-8",
                             .body = body,
                             .body_len = strlen(body),
                             .header = no_hdr};
    return wh;
}

static void test_parse_inbound(void **state)
{
    struct sms_webhook wh = form_hook(
        "keyword=HELLO%21&message-timestamp=2016-08-14+10%3A13%3A54&messageId="
        "030000000926C4C2&msisdn=447700900001&text=Hello%21&to=447700900000&"
        "type=text");
    struct sms_inbound in;
    struct sms_status st;
    struct error e;

    (void)state;
    assert_int_equal(sms_provider_vonage.parse_inbound(NULL, &wh, &in, &e),
                     SMS_PARSE_OK);
    assert_string_equal(in.msg.from_addr, "+447700900001");
    assert_string_equal(in.msg.to_addr, "+447700900000");
    assert_string_equal(in.msg.body, "Hello!");
    assert_string_equal(in.msg.provider_id, "030000000926C4C2");
    assert_null(in.concat_ref);
    sms_inbound_free(&in);
    assert_int_equal(sms_provider_vonage.parse_status(NULL, &wh, &st, &e),
                     SMS_PARSE_OTHER);

    /* part 2 of 3 of a long SMS */
    wh = form_hook("msisdn=447700900001&to=447700900000&messageId=P2&text=lo+"
                   "wor&type=text&concat=true&concat-ref=42&concat-total=3&"
                   "concat-part=2");
    assert_int_equal(sms_provider_vonage.parse_inbound(NULL, &wh, &in, &e),
                     SMS_PARSE_OK);
    assert_string_equal(in.concat_ref, "+447700900001:+447700900000:42");
    assert_int_equal(in.concat_part, 2);
    assert_int_equal(in.concat_total, 3);
    assert_string_equal(in.msg.body, "lo wor");
    sms_inbound_free(&in);

    wh = form_hook("msisdn=1&to=2&messageId=P&text=x&concat-ref=42&"
                   "concat-total=3&concat-part=4");
    assert_int_equal(sms_provider_vonage.parse_inbound(NULL, &wh, &in, &e),
                     SMS_PARSE_MALFORMED);
    wh = form_hook("msisdn=1&to=2&messageId=P&text=x&concat-ref=42&"
                   "concat-total=x&concat-part=1");
    assert_int_equal(sms_provider_vonage.parse_inbound(NULL, &wh, &in, &e),
                     SMS_PARSE_MALFORMED);
    wh = form_hook("to=2&messageId=P&text=x");
    assert_int_equal(sms_provider_vonage.parse_inbound(NULL, &wh, &in, &e),
                     SMS_PARSE_MALFORMED);
    assert_int_equal(e.code, COND_BAD_REQUEST);
}

static void test_parse_dlr(void **state)
{
    struct sms_webhook wh = {.method = "GET",
                             .url = "https://gw.example.org/x",
                             .query = "msisdn=4527631111&to=Tak&network-code="
                                      "23820&messageId=0C0000002EEBDA56&price="
                                      "0.01820000&status=delivered&scts="
                                      "1705021324&err-code=0&message-timestamp"
                                      "=2017-05-02+11%3A24%3A03",
                             .body = "",
                             .header = no_hdr};
    struct sms_status st;
    struct sms_inbound in;
    struct error e;

    (void)state;
    assert_int_equal(sms_provider_vonage.parse_status(NULL, &wh, &st, &e),
                     SMS_PARSE_OK);
    assert_string_equal(st.provider_id, "0C0000002EEBDA56");
    assert_int_equal(st.state, DELIVERY_DELIVERED);
    sms_status_free(&st);
    assert_int_equal(sms_provider_vonage.parse_inbound(NULL, &wh, &in, &e),
                     SMS_PARSE_OTHER);

    wh = form_hook("messageId=X1&status=rejected&err-code=9&msisdn=1");
    assert_int_equal(sms_provider_vonage.parse_status(NULL, &wh, &st, &e),
                     SMS_PARSE_OK);
    assert_int_equal(st.state, DELIVERY_FAILED);
    assert_int_equal(st.err.code, COND_NOT_ACCEPTABLE);
    assert_non_null(strstr(st.err.msg, "opted out"));
    sms_status_free(&st);

    wh = form_hook("messageId=X2&status=expired&err-code=5");
    assert_int_equal(sms_provider_vonage.parse_status(NULL, &wh, &st, &e),
                     SMS_PARSE_OK);
    assert_int_equal(st.state, DELIVERY_FAILED);
    assert_int_equal(st.err.code, COND_RECIPIENT_UNAVAILABLE);
    sms_status_free(&st);

    wh = form_hook("messageId=X3&status=accepted&err-code=0");
    assert_int_equal(sms_provider_vonage.parse_status(NULL, &wh, &st, &e),
                     SMS_PARSE_OK);
    assert_int_equal(st.state, DELIVERY_SENT);
    sms_status_free(&st);

    wh = form_hook("status=delivered");
    assert_int_equal(sms_provider_vonage.parse_status(NULL, &wh, &st, &e),
                     SMS_PARSE_MALFORMED);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_signature_vectors),
        cmocka_unit_test(test_signature_transports_and_failures),
        cmocka_unit_test(test_build),
        cmocka_unit_test(test_response),
        cmocka_unit_test(test_parse_inbound),
        cmocka_unit_test(test_parse_dlr),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
