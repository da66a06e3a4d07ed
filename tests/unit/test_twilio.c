/*
 * Unit tests for the Twilio adapter, through its provider ops: webhook
 * signatures with the official vectors T1-T10 (protocol-facts §1.6),
 * request building (exact form body, URL, Basic auth), response mapping
 * (201, 21211, 21610, 20003, 429 + Retry-After, 5xx), inbound and status
 * parsing with MMS media, plus the shared form and Retry-After helpers.
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

static void *mk(struct fx *f, const char *token)
{
    memset(f, 0, sizeof(*f));
    f->conf.jid = xstrdup("sms.example.org");
    f->conf.provider.name = xstrdup("twilio");
    f->conf.provider.api_url = xstrdup("http://127.0.0.1:8999");
    f->conf.provider.account_sid = xstrdup("AC0123");
    f->conf.provider.auth_token = xstrdup(token);
    f->t.conf = &f->conf;
    snprintf(f->t.module, sizeof(f->t.module), "sms[test]");
    f->st = sms_provider_twilio.init(&f->t, NULL);
    assert_non_null(f->st);
    return f->st;
}

static void fx_free(struct fx *f)
{
    sms_provider_twilio.free(f->st);
    free(f->conf.jid);
    free(f->conf.provider.name);
    free(f->conf.provider.api_url);
    free(f->conf.provider.account_sid);
    free(f->conf.provider.auth_token);
}

/* Request headers for a webhook. */
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

static int verify(const char *token, const char *url, const char *body,
                  const char *sig)
{
    struct fx f;
    struct hdrs h = {{"X-Twilio-Signature"}, {sig}, sig ? 1 : 0};
    struct sms_webhook wh = {
        .method = "POST",
        .url = url,
        .body = body,
        .body_len = strlen(body),
        .header = hdr_get,
        .header_ctx = &h,
        .now = 1700000000,
    };
    struct error e;
    int rc;

    mk(&f, token);
    rc = sms_provider_twilio.verify(f.st, &wh, &e);
    if (rc < 0)
        assert_int_equal(e.code, COND_FORBIDDEN);
    fx_free(&f);
    return rc;
}

#define BASE "https://mycompany.com/myapp.php?foo=1&bar=2"

/* The common parameters of T1-T6, form-encoded. */
static char *t1_body(void)
{
    struct strbuf b;
    sb_init(&b);
    http_form_add(&b, "CallSid", "CA1234567890ABCDE");
    http_form_add(&b, "Caller", "+14158675309");
    http_form_add(&b, "Digits", "1234");
    http_form_add(&b, "From", "+14158675309");
    http_form_add(&b, "To", "+18005551212");
    return sb_steal(&b);
}

static void test_signature_official(void **state)
{
    char *body = t1_body();

    (void)state;
    /* T1 */
    assert_int_equal(
        verify("12345", BASE, body, "RSOYDt4T1cUTdK1PDd93/VVr8B8="), 0);
    /* T1 accepted when the URL carries a port the signer did not see */
    assert_int_equal(verify("12345",
                            "https://mycompany.com:1234/myapp.php?foo=1&bar=2",
                            body, "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
                     0);
    /* T2: signed with :443, URL without */
    assert_int_equal(
        verify("12345", BASE, body, "kvajT1Ptam85bY51eRf/AJRuM3w="), 0);
    /* T3: http signed with :80 */
    assert_int_equal(verify("12345",
                            "http://mycompany.com/myapp.php?foo=1&bar=2", body,
                            "0ZXoZLH/DfblKGATFgpif+LLRf4="),
                     0);
    /* T4, T5: non-default ports kept */
    assert_int_equal(verify("12345",
                            "http://mycompany.com:1234/myapp.php?foo=1&bar=2",
                            body, "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="),
                     0);
    assert_int_equal(verify("12345",
                            "https://mycompany.com:1234/myapp.php?foo=1&bar=2",
                            body, "CYn1h0gLBdNxDGkKJg6hYohgeD8="),
                     0);
    /* T6..T6f: the host is not lower-cased; credentials stay in */
    assert_int_equal(verify("12345",
                            "https://MyCompany.com/myapp.php?foo=1&bar=2", body,
                            "g9IN/x4Cft2g517EjYvEvM/W7LU="),
                     0);
    assert_int_equal(verify("12345",
                            "https://MyCompany.com:1234/myapp.php?foo=1&bar=2",
                            body, "PCqOZm8cnu/L6+u5i5fuEd+Iac4="),
                     0);
    assert_int_equal(verify("12345",
                            "http://MyCompany.com/myapp.php?foo=1&bar=2", body,
                            "XY7AlKOKL6im4yWyX84gldUrtis="),
                     0);
    assert_int_equal(
        verify("12345",
               "http://username:password@MyCompany.com/myapp.php?foo=1&bar=2",
               body, "PJ08CxXr7KLPjEQCTc8LkUSMwSM="),
        0);
    assert_int_equal(
        verify("12345",
               "HTTP://username:password@MyCompany.com/myapp.php?foo=1&bar=2",
               body, "hy/l8pca+LFms4cvRdv8uiP6NGc="),
        0);
    assert_int_equal(
        verify("12345",
               "http://Username:Password@MyCompany.com/myapp.php?foo=1&bar=2",
               body, "SkTSKyDJH9kUlhItI0slbgZ1UsI="),
        0);
    /* failures the csharp suite asserts */
    assert_int_equal(verify("12345",
                            "https://MyCompany.com/myapp.php?foo=1&bar=2", body,
                            "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
                     -1);
    assert_int_equal(
        verify("12345", BASE, body, "NOTRSOYDt4T1cUTdK1PDd93/VVr8B8="), -1);
    free(body);
}

static void test_signature_duplicates_and_json(void **state)
{
    const char *json = "{\"property\": \"value\", \"boolean\": true}";
    const char *hash =
        "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620";
    char *url;

    (void)state;
    /* T7: repeated names, values sorted and de-duplicated */
    assert_int_equal(verify("12345", BASE,
                            "Sid=CA123&SidAccount=AC123&Digits=5678&Digits=1234"
                            "&Digits=1234",
                            "IK+Dwps556ElfBT0I3Rgjkr1wJU="),
                     0);
    /* T8: JSON body, hash in the URL */
    url = xasprintf(BASE "&bodySHA256=%s", hash);
    assert_int_equal(verify("12345", url, json, "a9nBmqA0ju/hNViExpshrM61xv4="),
                     0);
    /* the right signature, a body that does not match the hash */
    assert_int_equal(verify("12345", url, "{\"property\": \"other\"}",
                            "a9nBmqA0ju/hNViExpshrM61xv4="),
                     -1);
    free(url);
    /* T8b */
    url = xasprintf("https://mycompany.com/myapp.php?bodySHA256=%s", hash);
    assert_int_equal(verify("12345", url, json, "y77kIzt2vzLz71DgmJGsen2scGs="),
                     0);
    free(url);
}

static const char t9_body[] =
    "ToCountry=US&ToState=District+Of+Columbia&SmsMessageSid=SMe287d7109a5a92"
    "5f182f0e07fe5b223b&NumMedia=0&ToCity=&FromZip=01022&SmsSid=SMe287d7109a5"
    "a925f182f0e07fe5b223b&FromState=MA&SmsStatus=received&FromCity=CHICOPEE&"
    "Body=Msg&FromCountry=US&To=%2B12028831111&ToZip=&NumSegments=1&MessageSi"
    "d=SMe287d7109a5a925f182f0e07fe5b223b&AccountSid=acctid&From=%2B141338811"
    "11&ApiVersion=2010-04-01";

static const char t10_body[] =
    "MessageSid=SM00000000000000000000000000000001&From=%2B15005550006&To=%2B1"
    "4155552671&Body=Hello+%C3%A9t%C3%A9+%F0%9F%98%80&NumMedia=1&MediaUrl0=ht"
    "tps%3A%2F%2Fapi.twilio.com%2F2010-04-01%2FAccounts%2FAC00000000000000000"
    "000000000000000%2FMessages%2FMM1%2FMedia%2FME1&MediaContentType0=image%2"
    "Fjpeg&AccountSid=AC00000000000000000000000000000000";

static void test_signature_sms_webhooks(void **state)
{
    (void)state;
    /* T9, T10 */
    assert_int_equal(verify("6789", "https://gw.example.com/twilio/sms",
                            t9_body, "3YnSJVFeEjv7A5mtZASYB4ui8Bc="),
                     0);
    assert_int_equal(verify("12345",
                            "https://gw.example.com/twilio/sms?tenant=a",
                            t10_body, "0KX3v5lELjC5ty7Mkc2os7ebYMo="),
                     0);
    /* forged: wrong token, tampered body, other URL, missing header */
    assert_int_equal(verify("6788", "https://gw.example.com/twilio/sms",
                            t9_body, "3YnSJVFeEjv7A5mtZASYB4ui8Bc="),
                     -1);
    assert_int_equal(
        verify("12345", "https://gw.example.com/twilio/sms?tenant=a",
               "MessageSid=SM1&Body=evil", "0KX3v5lELjC5ty7Mkc2os7ebYMo="),
        -1);
    assert_int_equal(verify("12345",
                            "https://gw.example.com/twilio/sms?tenant=b",
                            t10_body, "0KX3v5lELjC5ty7Mkc2os7ebYMo="),
                     -1);
    assert_int_equal(verify("12345",
                            "https://gw.example.com/twilio/sms?tenant=a",
                            t10_body, NULL),
                     -1);
    assert_int_equal(verify("12345",
                            "https://gw.example.com/twilio/sms?tenant=a",
                            t10_body, ""),
                     -1);
}

static void test_build(void **state)
{
    struct fx f;
    const char *media[] = {"https://up.example.org/a b.jpg",
                           "https://up.example.org/c.png"};
    struct sms_part p = {.gw = "sms.example.org",
                         .from = "+15550001111",
                         .to = "+15551234567",
                         .body = "Hello \xc3\xa9t\xc3\xa9 & co",
                         .media = media,
                         .n_media = 2,
                         .count = 1};
    struct sms_request r;
    struct error e;

    (void)state;
    mk(&f, "tok");
    memset(&r, 0, sizeof(r));
    assert_int_equal(sms_provider_twilio.build(
                         f.st, &p,
                         "https://gw.example.org/sms/sms.example.org/status",
                         &r, &e),
                     0);
    assert_string_equal(
        r.url,
        "http://127.0.0.1:8999/2010-04-01/Accounts/AC0123/Messages.json");
    assert_string_equal(r.content_type, "application/x-www-form-urlencoded");
    /* base64("AC0123:tok") */
    assert_string_equal(r.authorization, "Basic QUMwMTIzOnRvaw==");
    assert_string_equal(
        r.body, "To=%2B15551234567&From=%2B15550001111&Body=Hello%20%C3%A9t%"
                "C3%A9%20%26%20co&MediaUrl=https%3A%2F%2Fup.example.org%2Fa%20"
                "b.jpg&MediaUrl=https%3A%2F%2Fup.example.org%2Fc.png&StatusCa"
                "llback=https%3A%2F%2Fgw.example.org%2Fsms%2Fsms.example.org%2"
                "Fstatus");
    assert_int_equal(r.body_len, strlen(r.body));
    sms_request_free(&r);

    /* no public_url: no StatusCallback; media only: no Body */
    p.body = NULL;
    p.n_media = 1;
    assert_int_equal(sms_provider_twilio.build(f.st, &p, NULL, &r, &e), 0);
    assert_string_equal(r.body, "To=%2B15551234567&From=%2B15550001111&"
                                "MediaUrl=https%3A%2F%2Fup.example.org%2Fa%"
                                "20b.jpg");
    sms_request_free(&r);
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

    mk(&f, "tok");
    *id = NULL;
    error_clear(e);
    rc = sms_provider_twilio.response(f.st, &r, 1700000000, id, e);
    fx_free(&f);
    return rc;
}

static void test_response(void **state)
{
    char *id;
    struct error e;

    (void)state;
    assert_int_equal(
        respond(201,
                "{\"account_sid\": \"ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\", "
                "\"error_code\": null, \"num_segments\": \"1\", \"sid\": "
                "\"SMaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\", \"status\": "
                "\"queued\"}",
                NULL, &id, &e),
        0);
    assert_string_equal(id, "SMaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
    free(id);

    assert_int_equal(respond(400,
                             "{\"code\": 21211, \"message\": \"The 'To' number "
                             "5551234567 is not a valid phone number.\", "
                             "\"more_info\": \"https://www.twilio.com/docs/"
                             "errors/21211\", \"status\": 400}",
                             NULL, &id, &e),
                     -1);
    assert_null(id);
    assert_false(e.temporary);
    assert_int_equal(e.code, COND_ITEM_NOT_FOUND);
    assert_non_null(strstr(e.msg, "invalid number"));
    assert_non_null(strstr(e.msg, "not a valid phone number"));

    assert_int_equal(respond(400,
                             "{\"code\": 21610, \"message\": \"Attempt to send "
                             "to unsubscribed recipient\", \"status\": 400}",
                             NULL, &id, &e),
                     -1);
    assert_int_equal(e.code, COND_NOT_ACCEPTABLE);
    assert_false(e.temporary);
    assert_non_null(strstr(e.msg, "recipient has opted out (STOP)"));

    assert_int_equal(
        respond(400, "{\"code\": 30007, \"status\": 400}", NULL, &id, &e), -1);
    assert_int_equal(e.code, COND_NOT_ACCEPTABLE);
    assert_non_null(strstr(e.msg, "carrier filtering"));

    assert_int_equal(respond(401,
                             "{\"code\": 20003, \"message\": \"Authenticate\","
                             " \"status\": 401}",
                             NULL, &id, &e),
                     -1);
    assert_false(e.temporary);
    assert_int_equal(e.code, COND_INTERNAL_SERVER_ERROR);
    assert_string_equal(e.msg, "provider authentication failed: check "
                               "account_sid/auth_token");

    assert_int_equal(respond(429,
                             "{\"code\": 20429, \"message\": \"Too Many "
                             "Requests\", \"status\": 429}",
                             "30", &id, &e),
                     -1);
    assert_true(e.temporary);
    assert_int_equal(e.retry_after_s, 30);

    /* Retry-After as an HTTP-date: 1700000000 + 120 s */
    assert_int_equal(respond(429, "", "Tue, 14 Nov 2023 22:15:20 GMT", &id, &e),
                     -1);
    assert_true(e.temporary);
    assert_int_equal(e.retry_after_s, 120);

    assert_int_equal(respond(500, "oops", NULL, &id, &e), -1);
    assert_true(e.temporary);
    assert_int_equal(e.retry_after_s, 0);
    assert_int_equal(respond(503, "", "5", &id, &e), -1);
    assert_true(e.temporary);
    assert_int_equal(e.retry_after_s, 5);

    /* any other 4xx: permanent, with the provider's words */
    assert_int_equal(respond(400,
                             "{\"code\": 21606, \"message\": \"The From phone "
                             "number is not a valid, SMS-capable number\"}",
                             NULL, &id, &e),
                     -1);
    assert_false(e.temporary);
    assert_non_null(strstr(e.msg, "SMS-capable"));
    assert_non_null(strstr(e.msg, "21606"));
    assert_int_equal(respond(404, "not json", NULL, &id, &e), -1);
    assert_false(e.temporary);
}

static struct sms_webhook form_hook(const char *body)
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

static void test_parse_inbound(void **state)
{
    struct sms_webhook wh = form_hook(t9_body);
    struct sms_inbound in;
    struct error e;

    (void)state;
    assert_int_equal(sms_provider_twilio.parse_inbound(NULL, &wh, &in, &e),
                     SMS_PARSE_OK);
    assert_string_equal(in.msg.from_addr, "+14133881111");
    assert_string_equal(in.msg.to_addr, "+12028831111");
    assert_string_equal(in.msg.body, "Msg");
    assert_string_equal(in.msg.provider_id,
                        "SMe287d7109a5a925f182f0e07fe5b223b");
    assert_int_equal(in.msg.n_media, 0);
    assert_null(in.concat_ref);
    sms_inbound_free(&in);

    wh = form_hook(t10_body);
    assert_int_equal(sms_provider_twilio.parse_inbound(NULL, &wh, &in, &e),
                     SMS_PARSE_OK);
    assert_string_equal(in.msg.body,
                        "Hello \xc3\xa9t\xc3\xa9 \xf0\x9f\x98\x80");
    assert_int_equal(in.msg.n_media, 1);
    assert_string_equal(in.msg.media[0],
                        "https://api.twilio.com/2010-04-01/Accounts/"
                        "AC00000000000000000000000000000000/Messages/MM1/"
                        "Media/ME1");
    sms_inbound_free(&in);

    /* MMS without text: two media, no body */
    wh = form_hook("MessageSid=MM2&From=%2B1555&To=%2B1666&Body=&NumMedia=2&"
                   "MediaUrl0=cat.jpg&MediaUrl1=dog.jpg");
    assert_int_equal(sms_provider_twilio.parse_inbound(NULL, &wh, &in, &e),
                     SMS_PARSE_OK);
    assert_null(in.msg.body);
    assert_int_equal(in.msg.n_media, 2);
    assert_string_equal(in.msg.media[1], "dog.jpg");
    sms_inbound_free(&in);

    wh = form_hook("From=%2B1555&Body=x");
    assert_int_equal(sms_provider_twilio.parse_inbound(NULL, &wh, &in, &e),
                     SMS_PARSE_MALFORMED);
    assert_int_equal(e.code, COND_BAD_REQUEST);
    wh = form_hook("MessageSid=SM1&From=%ZZ");
    assert_int_equal(sms_provider_twilio.parse_inbound(NULL, &wh, &in, &e),
                     SMS_PARSE_MALFORMED);
}

static void test_parse_status(void **state)
{
    struct sms_webhook wh = form_hook(
        "SmsSid=SM1fc5&SmsStatus=delivered&MessageStatus=delivered&To=%2B8613"
        "314517617&MessageSid=SM1fc5&AccountSid=ACa499&From=%2B14158779310&"
        "ApiVersion=2010-04-01");
    struct sms_status st;
    struct error e;

    (void)state;
    assert_int_equal(sms_provider_twilio.parse_status(NULL, &wh, &st, &e),
                     SMS_PARSE_OK);
    assert_string_equal(st.provider_id, "SM1fc5");
    assert_int_equal(st.state, DELIVERY_DELIVERED);
    sms_status_free(&st);

    wh = form_hook("MessageSid=SM2&MessageStatus=failed&ErrorCode=30008&"
                   "ErrorMessage=Unknown+destination+handset");
    assert_int_equal(sms_provider_twilio.parse_status(NULL, &wh, &st, &e),
                     SMS_PARSE_OK);
    assert_int_equal(st.state, DELIVERY_FAILED);
    assert_int_equal(st.err.code, COND_RECIPIENT_UNAVAILABLE);
    assert_non_null(strstr(st.err.msg, "Unknown destination handset"));
    assert_non_null(strstr(st.err.msg, "30008"));
    sms_status_free(&st);

    wh = form_hook("MessageSid=SM3&MessageStatus=undelivered&ErrorCode=30007");
    assert_int_equal(sms_provider_twilio.parse_status(NULL, &wh, &st, &e),
                     SMS_PARSE_OK);
    assert_int_equal(st.state, DELIVERY_FAILED);
    assert_non_null(strstr(st.err.msg, "carrier filtering"));
    sms_status_free(&st);

    wh = form_hook("MessageSid=SM4&MessageStatus=sent");
    assert_int_equal(sms_provider_twilio.parse_status(NULL, &wh, &st, &e),
                     SMS_PARSE_OK);
    assert_int_equal(st.state, DELIVERY_SENT);
    sms_status_free(&st);

    wh = form_hook("MessageStatus=sent");
    assert_int_equal(sms_provider_twilio.parse_status(NULL, &wh, &st, &e),
                     SMS_PARSE_MALFORMED);
}

static void test_helpers(void **state)
{
    struct sms_form f;
    char buf[8];

    (void)state;
    assert_int_equal(sms_form_parse("a=1&b=x+y%21&&c&a=2", 19, &f), 0);
    assert_int_equal(f.n, 4);
    assert_string_equal(sms_form_get(&f, "a"), "1");
    assert_string_equal(sms_form_get(&f, "b"), "x y!");
    assert_string_equal(sms_form_get(&f, "c"), "");
    assert_null(sms_form_get(&f, "d"));
    sms_form_free(&f);
    assert_int_equal(sms_form_parse("a=%4", 4, &f), -1);
    assert_int_equal(sms_form_parse("a=%00", 5, &f), -1);
    assert_int_equal(sms_form_parse("", 0, &f), 0);
    assert_int_equal(f.n, 0);
    sms_form_free(&f);

    assert_int_equal(sms_retry_after(NULL, 0), 0);
    assert_int_equal(sms_retry_after("17", 0), 17);
    assert_int_equal(sms_retry_after(" 17 ", 0), 17);
    assert_int_equal(sms_retry_after("99999999999", 0), 86400);
    assert_int_equal(sms_retry_after("soon", 0), 0);
    assert_int_equal(sms_retry_after("-5", 0), 0);
    assert_int_equal(
        sms_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784111777 - 10), 10);
    assert_int_equal(
        sms_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784111777 + 10), 0);

    sms_clean_text(buf, sizeof(buf), "a\r\nb");
    assert_string_equal(buf, "a  b");
    sms_clean_text(buf, sizeof(buf), "abcde\xc3\xa9z");
    assert_string_equal(buf, "abcde"); /* never half a character */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_signature_official),
        cmocka_unit_test(test_signature_duplicates_and_json),
        cmocka_unit_test(test_signature_sms_webhooks),
        cmocka_unit_test(test_build),
        cmocka_unit_test(test_response),
        cmocka_unit_test(test_parse_inbound),
        cmocka_unit_test(test_parse_status),
        cmocka_unit_test(test_helpers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
