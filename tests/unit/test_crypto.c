/*
 * Unit tests for crypto: HMACs against the Vonage SDK vectors (T13-T16,
 * facts §2.2.5), digests (T8's body hash, T12), Ed25519 with RFC 8032
 * TEST 1 and the Telnyx-shaped vector T11 (facts §2.1.4), base64 strict
 * decoding, hex and constant-time comparison.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "crypto.h"
#include "util.h"

static void hexdigest_hmac(enum crypto_alg alg, const char *key,
                           const char *msg, char *out)
{
    unsigned char d[CRYPTO_MAX_DIGEST];
    size_t n = crypto_hmac(alg, key, strlen(key), msg, strlen(msg), d);
    assert_int_equal(n, crypto_digest_size(alg));
    crypto_hex(d, n, out);
}

static void test_hmac_vonage_vectors(void **state)
{
    const char *s = "&a=1&b=2&timestamp=1461605396";
    char hex[2 * CRYPTO_MAX_DIGEST + 1];

    (void)state;
    hexdigest_hmac(CRYPTO_MD5, "secret", s, hex);
    assert_string_equal(hex, "c15c21ced558c93a226c305f58f902f2"); /* T13 */
    hexdigest_hmac(CRYPTO_SHA1, "secret", s, hex);
    assert_string_equal(hex, "3e19a4e6880fdc2c1426bfd0587c98b9532f0210");
    hexdigest_hmac(CRYPTO_SHA256, "secret", s, hex);
    assert_string_equal(hex, "a321e824b9b816be7c3f28859a31749a098713d39f613c8"
                             "0d455bbaffae1cd24");
    hexdigest_hmac(CRYPTO_SHA512, "secret", s, hex);
    assert_string_equal(
        hex,
        "812a18f76680fa0fe1b8bd9ee1625466ceb1bd96242e4d050d2cfd9a7b40166c"
        "63ed26ec9702168781b6edcf1633db8ff95af9341701004eec3fcf9550572ee8");
}

static void test_hmac_twilio_t1(void **state)
{
    const char *s = "https://mycompany.com/myapp.php?foo=1&bar=2CallSidCA123456"
                    "7890ABCDECaller+14158675309Digits1234From+14158675309To+"
                    "18005551212";
    unsigned char d[CRYPTO_MAX_DIGEST];
    size_t n = crypto_hmac(CRYPTO_SHA1, "12345", 5, s, strlen(s), d);
    char *b64 = crypto_base64_encode(d, n);

    (void)state;
    assert_string_equal(b64, "RSOYDt4T1cUTdK1PDd93/VVr8B8=");
    free(b64);
}

static void test_digests(void **state)
{
    const char *body = "{\"property\": \"value\", \"boolean\": true}";
    const char *t12 = "&a=1&b=2&timestamp=1461605396secret";
    unsigned char d[CRYPTO_MAX_DIGEST];
    char hex[2 * CRYPTO_MAX_DIGEST + 1];

    (void)state;
    crypto_hex(d, crypto_digest(CRYPTO_SHA256, body, strlen(body), d), hex);
    assert_string_equal(hex, "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf"
                             "19632632f96e6620");
    crypto_hex(d, crypto_digest(CRYPTO_MD5, t12, strlen(t12), d), hex);
    assert_string_equal(hex, "6af838ef94998832dbfc29020b564830"); /* T12 */
    crypto_hex(d, crypto_digest(CRYPTO_SHA1, "", 0, d), hex);
    assert_string_equal(hex, "da39a3ee5e6b4b0d3255bfef95601890afd80709");
}

static void unhex(const char *h, unsigned char *out)
{
    for (size_t i = 0; h[2 * i]; i++) {
        unsigned v;
        assert_int_equal(sscanf(h + 2 * i, "%2x", &v), 1);
        out[i] = (unsigned char)v;
    }
}

static const char t11_body[] =
    "{\"data\":{\"event_type\":\"message.received\",\"id\":\"b301ed3f-1490-"
    "491f-995f-6e64e69674d4\",\"occurred_at\":\"2023-11-14T22:13:20.000+00:"
    "00\",\"payload\":{\"direction\":\"inbound\",\"from\":{\"phone_number\":"
    "\"+13125550001\"},\"id\":\"84cca175-9755-4859-b67f-4730d7f58aa3\","
    "\"record_type\":\"message\",\"text\":\"Hello, World!\",\"to\":[{"
    "\"phone_number\":\"+17735550002\",\"status\":\"webhook_delivered\"}],"
    "\"type\":\"SMS\"},\"record_type\":\"event\"},\"meta\":{\"attempt\":1,"
    "\"delivered_to\":\"https://example.com/webhooks\"}}";

static void test_ed25519(void **state)
{
    unsigned char pub[32], sig[64], sig2[64];
    char *msg;
    long n;

    (void)state;
    unhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
          pub);
    /* RFC 8032 TEST 1: the empty message */
    unhex("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555f"
          "b8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
          sig);
    assert_true(crypto_ed25519_verify(pub, "", 0, sig));
    assert_false(crypto_ed25519_verify(pub, "x", 1, sig));

    /* T11 */
    assert_int_equal(strlen(t11_body), 466);
    n = crypto_base64_decode("sdah7+HzVNhAWGH5EpD/VVgg1UjPmIAXr5+7p7k5qdH82l3w"
                             "VGiLo6dC0bU5Yom0YLqcrjZstbwpVXzYUFgSBw==",
                             sig, sizeof(sig));
    assert_int_equal(n, 64);
    msg = xasprintf("1700000000|%s", t11_body);
    assert_true(crypto_ed25519_verify(pub, msg, strlen(msg), sig));
    msg[0] = '2'; /* the timestamp is signed too */
    assert_false(crypto_ed25519_verify(pub, msg, strlen(msg), sig));
    msg[0] = '1';
    memcpy(sig2, sig, 64);
    sig2[10] ^= 1;
    assert_false(crypto_ed25519_verify(pub, msg, strlen(msg), sig2));
    pub[0] ^= 1;
    assert_false(crypto_ed25519_verify(pub, msg, strlen(msg), sig));
    free(msg);
}

static void test_base64(void **state)
{
    unsigned char out[64];
    char *s;

    (void)state;
    s = crypto_base64_encode("accountSID:authToken", 20);
    assert_string_equal(s, "YWNjb3VudFNJRDphdXRoVG9rZW4=");
    free(s);
    s = crypto_base64_encode("", 0);
    assert_string_equal(s, "");
    free(s);
    s = crypto_base64_encode("ab", 2);
    assert_string_equal(s, "YWI=");
    free(s);
    assert_int_equal(crypto_base64_decode("YWI=", out, sizeof(out)), 2);
    assert_memory_equal(out, "ab", 2);
    assert_int_equal(crypto_base64_decode("YWI", out, sizeof(out)), 2);
    assert_int_equal(crypto_base64_decode("YWJj", out, sizeof(out)), 3);
    assert_int_equal(crypto_base64_decode("", out, sizeof(out)), 0);
    /* malformed: bad characters, bad length, non-zero padding bits */
    assert_int_equal(crypto_base64_decode("YW I=", out, sizeof(out)), -1);
    assert_int_equal(crypto_base64_decode("Y", out, sizeof(out)), -1);
    assert_int_equal(crypto_base64_decode("YWJ=", out, sizeof(out)), -1);
    assert_int_equal(crypto_base64_decode("YW=I", out, sizeof(out)), -1);
    assert_int_equal(crypto_base64_decode("YWI==", out, sizeof(out)), -1);
    /* does not fit */
    assert_int_equal(crypto_base64_decode("YWJj", out, 2), -1);
    /* the Telnyx public key of T11: exactly 32 bytes */
    assert_int_equal(
        crypto_base64_decode(
            "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=", out, sizeof(out)),
        32);
    assert_int_equal(out[0], 0xd7);
}

static void test_compare(void **state)
{
    char hex[9];

    (void)state;
    assert_true(crypto_memeq("abc", "abc", 3));
    assert_false(crypto_memeq("abc", "abd", 3));
    assert_true(crypto_streq("", ""));
    assert_true(crypto_streq("sig", "sig"));
    assert_false(crypto_streq("sig", "sig2"));
    assert_false(crypto_streq("Sig", "sig"));
    crypto_hex("\x01\xab\xff\x00", 4, hex);
    assert_string_equal(hex, "01abff00");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hmac_vonage_vectors),
        cmocka_unit_test(test_hmac_twilio_t1),
        cmocka_unit_test(test_digests),
        cmocka_unit_test(test_ed25519),
        cmocka_unit_test(test_base64),
        cmocka_unit_test(test_compare),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
