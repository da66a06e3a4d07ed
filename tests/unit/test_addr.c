/*
 * Unit tests of addr.c: JID splitting, E.164 checks and human-typed
 * normalisation, XEP-0106 escaping (vectors T21 of protocol-facts.md
 * section 6.1, from Prosody's spec/util_jid_spec.lua) and email checks.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "addr.h"

/* ---- JIDs ---------------------------------------------------------- */

static void test_jid_full(void **state)
{
    struct jid j;
    (void)state;

    assert_int_equal(jid_parse("alice@Example.ORG/phone", &j), 0);
    assert_string_equal(j.node, "alice");
    assert_string_equal(j.domain, "example.org");
    assert_string_equal(j.resource, "phone");
}

static void test_jid_no_node(void **state)
{
    struct jid j;
    (void)state;

    assert_int_equal(jid_parse("sms.example.org", &j), 0);
    assert_string_equal(j.node, "");
    assert_string_equal(j.domain, "sms.example.org");
    assert_string_equal(j.resource, "");

    assert_int_equal(jid_parse("sms.example.org/res", &j), 0);
    assert_string_equal(j.node, "");
    assert_string_equal(j.domain, "sms.example.org");
    assert_string_equal(j.resource, "res");
}

static void test_jid_resource_with_separators(void **state)
{
    struct jid j;
    (void)state;

    /* The resource starts at the first '/': '@' and '/' after it are
     * part of the resource, and the node stops before it. */
    assert_int_equal(jid_parse("a@b/c@d/e", &j), 0);
    assert_string_equal(j.node, "a");
    assert_string_equal(j.domain, "b");
    assert_string_equal(j.resource, "c@d/e");

    assert_int_equal(jid_parse("b/c@d", &j), 0);
    assert_string_equal(j.node, "");
    assert_string_equal(j.domain, "b");
    assert_string_equal(j.resource, "c@d");
}

static void test_jid_escaped_and_e164_nodes(void **state)
{
    struct jid j;
    (void)state;

    assert_int_equal(jid_parse("bob\\40example.com@email.example.org", &j), 0);
    assert_string_equal(j.node, "bob\\40example.com");
    assert_string_equal(j.domain, "email.example.org");

    assert_int_equal(jid_parse("+15551234567@sms.example.org", &j), 0);
    assert_string_equal(j.node, "+15551234567");
    assert_string_equal(j.domain, "sms.example.org");
}

static void test_jid_malformed(void **state)
{
    struct jid j;
    (void)state;

    assert_int_equal(jid_parse("", &j), -1);
    assert_int_equal(jid_parse("@example.org", &j), -1);
    assert_int_equal(jid_parse("alice@", &j), -1);
    assert_int_equal(jid_parse("alice@/res", &j), -1);
    assert_int_equal(jid_parse("/res", &j), -1);
    assert_int_equal(jid_parse("alice@example.org/", &j), -1);
    assert_int_equal(jid_parse("a@b@c", &j), -1);
    assert_int_equal(jid_parse("a@exa mple.org", &j), -1);
    assert_int_equal(jid_parse("a@exa\tmple.org", &j), -1);
    assert_int_equal(jid_parse(NULL, &j), -1);
    assert_int_equal(jid_parse("a@b", NULL), -1);
}

static void test_jid_part_lengths(void **state)
{
    static char s[4000];
    struct jid j;
    (void)state;

    /* 1023 bytes fit in each part, 1024 do not. */
    memset(s, 'n', 1023);
    strcpy(s + 1023, "@d");
    assert_int_equal(jid_parse(s, &j), 0);
    assert_int_equal(strlen(j.node), 1023);
    memset(s, 'n', 1024);
    strcpy(s + 1024, "@d");
    assert_int_equal(jid_parse(s, &j), -1);

    memset(s, 'd', 1023);
    s[1023] = '\0';
    assert_int_equal(jid_parse(s, &j), 0);
    assert_int_equal(strlen(j.domain), 1023);
    memset(s, 'd', 1024);
    s[1024] = '\0';
    assert_int_equal(jid_parse(s, &j), -1);

    strcpy(s, "n@d/");
    memset(s + 4, 'r', 1023);
    s[4 + 1023] = '\0';
    assert_int_equal(jid_parse(s, &j), 0);
    assert_int_equal(strlen(j.resource), 1023);
    memset(s + 4, 'r', 1024);
    s[4 + 1024] = '\0';
    assert_int_equal(jid_parse(s, &j), -1);
}

static void test_jid_bare_and_domain(void **state)
{
    char out[64];
    char small[8];
    (void)state;

    assert_int_equal(jid_bare("Alice@Example.org/phone", out, sizeof(out)), 0);
    assert_string_equal(out, "Alice@example.org");
    assert_int_equal(jid_bare("example.org/x@y", out, sizeof(out)), 0);
    assert_string_equal(out, "example.org");
    assert_int_equal(jid_bare("a@b/", out, sizeof(out)), -1);

    /* "abc@d.e" needs 8 bytes with its NUL. */
    assert_int_equal(jid_bare("abc@d.e/r", small, 8), 0);
    assert_string_equal(small, "abc@d.e");
    assert_int_equal(jid_bare("abcd@d.e/r", small, 8), -1);
    assert_int_equal(jid_bare("abcdefgh.e", small, 8), -1);

    assert_int_equal(jid_domain("a@SMS.Example.org/r", out, sizeof(out)), 0);
    assert_string_equal(out, "sms.example.org");
    assert_int_equal(jid_domain("@x", out, sizeof(out)), -1);
    assert_int_equal(jid_domain("a@abcdefgh", small, 8), -1);
}

/* ---- E.164 --------------------------------------------------------- */

static void test_e164_valid(void **state)
{
    (void)state;

    /* protocol-facts 3.4 examples and the regex bounds. */
    assert_true(e164_valid("+14155552671"));
    assert_true(e164_valid("+442071838750"));
    assert_true(e164_valid("+12"));
    assert_true(e164_valid("+123456789012345")); /* 15 digits */

    assert_false(e164_valid("+1234567890123456")); /* 16 digits */
    assert_false(e164_valid("+1"));
    assert_false(e164_valid("+"));
    assert_false(e164_valid(""));
    assert_false(e164_valid(NULL));
    assert_false(e164_valid("+0441234567")); /* no country code has 0 */
    assert_false(e164_valid("14155552671")); /* Vonage form, no '+' */
    assert_false(e164_valid("+1 415 555 2671"));
    assert_false(e164_valid("+1415555267a"));
    assert_false(e164_valid("++14155552671"));
    assert_false(e164_valid("+14155552671\n"));
}

struct human_case {
    const char *in;
    const char *cc;
    const char *want; /* NULL: must fail */
};

static void test_e164_from_human(void **state)
{
    static const struct human_case cases[] = {
        {"(555) 123-4567", "1", "+15551234567"},
        {"+44 20 7946 0958", "1", "+442079460958"},
        {"0044 20 7946 0958", "1", "+442079460958"},
        {"011 44 20 7946 0958", "1", "+442079460958"},
        {"1-555-123-4567", "1", "+15551234567"},
        {"tel:+15551234567", "1", "+15551234567"},
        {"TEL:+1-555-123-4567", "1", "+15551234567"},
        {"  555.123.4567 \n", "1", "+15551234567"},
        {"+1 (555) 123-4567", "44", "+15551234567"},
        {"+44 (0)20 7946 0958", "1", "+442079460958"},
        {"020 7946 0958", "44", "+442079460958"},
        {"020/7946/0958", "+44", "+442079460958"},
        {"0044 20 7946 0958", "44", "+442079460958"},
        {"612 345 678", "34", "+34612345678"},
        {"+14155552671", NULL, "+14155552671"},
        {"0044 20 7946 0958", NULL, "+442079460958"},
        /* "011" is an international prefix only in the NANP. */
        {"0113 496 0000", "44", "+441134960000"},
        /* Failures. */
        {"1-800-FLOWERS", "1", NULL},
        {"555-CALL-NOW", "1", NULL},
        {"abc", "1", NULL},
        {"", "1", NULL},
        {"   ", "1", NULL},
        {"()-.", "1", NULL},
        {"+", "1", NULL},
        {"+0 20 7946 0958", "1", NULL},
        {"555 1234", "1", NULL},       /* NANP needs ten digits */
        {"155 512 3456", "1", NULL},   /* area code starts with 1 */
        {"2-555-123-4567", "1", NULL}, /* 11 digits without trunk 1 */
        {"555 123 4567", NULL, NULL},  /* national without a cc */
        {"555 123 4567", "", NULL},
        {"555 123 4567", "0", NULL},
        {"555 123 4567", "1234", NULL},
        {"555 123 4567", "x", NULL},
        {"+1 555 123 4567 ext 2", "1", NULL},
        {"+1 555 123 4567;ext=2", "1", NULL},
        {"+1 555 123 4567#", "1", NULL},
        {"1+5551234567", "1", NULL},
        {"+1234567890123456", "1", NULL}, /* 16 digits */
        {"00", "44", NULL},
        {"0", "44", NULL},
        {"0000 1234", "44", NULL},
        {"020 7946 0958 1234 5678", "44", NULL},
        {"(0)20 7946 0958", "44", "+442079460958"},
    };
    char out[E164_MAX + 1];
    (void)state;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int rc;
        memset(out, 'x', sizeof(out));
        rc = e164_from_human(cases[i].in, cases[i].cc, out, sizeof(out));
        if (cases[i].want) {
            if (rc != 0 || strcmp(out, cases[i].want) != 0)
                fail_msg("e164_from_human(\"%s\", %s) = %d \"%.17s\", "
                         "want \"%s\"",
                         cases[i].in, cases[i].cc ? cases[i].cc : "NULL", rc,
                         rc == 0 ? out : "", cases[i].want);
            assert_true(e164_valid(out));
        } else if (rc != -1) {
            fail_msg("e164_from_human(\"%s\", %s) = %d \"%.17s\", want -1",
                     cases[i].in, cases[i].cc ? cases[i].cc : "NULL", rc, out);
        }
    }
}

static void test_e164_from_human_out_size(void **state)
{
    char out[16];
    (void)state;

    /* "+15551234567" needs 13 bytes with its NUL. */
    assert_int_equal(e164_from_human("(555) 123-4567", "1", out, 13), 0);
    assert_string_equal(out, "+15551234567");
    assert_int_equal(e164_from_human("(555) 123-4567", "1", out, 12), -1);
    assert_int_equal(e164_from_human("(555) 123-4567", "1", NULL, 0), -1);
    assert_int_equal(e164_from_human(NULL, "1", out, sizeof(out)), -1);
}

static void test_e164_has_prefix(void **state)
{
    (void)state;

    assert_true(e164_has_prefix("+442079460958", "+44"));
    assert_true(e164_has_prefix("+442079460958", "44"));
    assert_true(e164_has_prefix("+15551234567", "+1"));
    assert_true(e164_has_prefix("+15551234567", "+1555"));
    assert_false(e164_has_prefix("+15551234567", "+44"));
    assert_false(e164_has_prefix("+15551234567", "+15551234567890"));
    assert_false(e164_has_prefix("+15551234567", "+"));
    assert_false(e164_has_prefix("+15551234567", ""));
    assert_false(e164_has_prefix("+15551234567", "+1x"));
    assert_false(e164_has_prefix(NULL, "+1"));
    assert_false(e164_has_prefix("+15551234567", NULL));
}

/* ---- XEP-0106 ------------------------------------------------------ */

struct esc_case {
    const char *raw;
    const char *escaped;
};

/* T21: Prosody spec/util_jid_spec.lua, original -> escaped. */
static const struct esc_case t21[] = {
    {"space cadet", "space\\20cadet"},
    {"call me \"ishmael\"", "call\\20me\\20\\22ishmael\\22"},
    {"at&t guy", "at\\26t\\20guy"},
    {"d'artagnan", "d\\27artagnan"},
    {"/.fanboy", "\\2f.fanboy"},
    {"::foo::", "\\3a\\3afoo\\3a\\3a"},
    {"<foo>", "\\3cfoo\\3e"},
    {"user@host", "user\\40host"},
    {"c:\\net", "c\\3a\\net"},
    {"c:\\\\net", "c\\3a\\\\net"},
    {"c:\\cool stuff", "c\\3a\\cool\\20stuff"},
    {"c:\\5commas", "c\\3a\\5c5commas"},
    {"\\3and\\2is\\5cool", "\\5c3and\\2is\\5c5cool"},
    {"\\5c", "\\5c5c"},
    {"\\2plus\\2is\\4", "\\2plus\\2is\\4"},
    {"foo\\bar", "foo\\bar"},
    {"foo\\41r", "foo\\41r"},
    {"call\\20me", "call\\5c20me"},
    /* XEP-0106 section 5.2 and the mail-gateway example. */
    {"here's_a_wild_&_/cr%zy/_address",
     "here\\27s_a_wild_\\26_\\2fcr%zy\\2f_address"},
    {"treville@musketeers.lit", "treville\\40musketeers.lit"},
};

static void test_xep0106_escape(void **state)
{
    char out[128];
    (void)state;

    for (size_t i = 0; i < sizeof(t21) / sizeof(t21[0]); i++) {
        assert_int_equal(jid_escape_node(t21[i].raw, out, sizeof(out)), 0);
        assert_string_equal(out, t21[i].escaped);
    }
}

static void test_xep0106_unescape(void **state)
{
    char out[128];
    (void)state;

    for (size_t i = 0; i < sizeof(t21) / sizeof(t21[0]); i++) {
        assert_int_equal(jid_unescape_node(t21[i].escaped, out, sizeof(out)),
                         0);
        assert_string_equal(out, t21[i].raw);
    }
}

static void test_xep0106_round_trip(void **state)
{
    static const char *const extra[] = {
        "",       "\\",      "\\\\",   "\\5",   "\\5C",     "\\5C40",
        "\\40",   "\\4\\40", "\\2@",   "a\\ b", "\\5c5c5c", " lead",
        "trail ", "@@@",     "\\\\40", "\\ff",  "\\00",     "\xc3\xa9t\xc3\xa9",
    };
    char esc[256], back[256];
    (void)state;

    for (size_t i = 0; i < sizeof(t21) / sizeof(t21[0]); i++) {
        assert_int_equal(jid_escape_node(t21[i].raw, esc, sizeof(esc)), 0);
        assert_int_equal(jid_unescape_node(esc, back, sizeof(back)), 0);
        assert_string_equal(back, t21[i].raw);
    }
    for (size_t i = 0; i < sizeof(extra) / sizeof(extra[0]); i++) {
        assert_int_equal(jid_escape_node(extra[i], esc, sizeof(esc)), 0);
        assert_int_equal(jid_unescape_node(esc, back, sizeof(back)), 0);
        assert_string_equal(back, extra[i]);
    }
}

static void test_xep0106_case_and_unknown(void **state)
{
    char out[64];
    (void)state;

    /* Case is significant: uppercase sequences are not escapes. */
    assert_int_equal(jid_unescape_node("a\\2Fb\\5C", out, sizeof(out)), 0);
    assert_string_equal(out, "a\\2Fb\\5C");
    assert_int_equal(jid_escape_node("\\5C", out, sizeof(out)), 0);
    assert_string_equal(out, "\\5C");
    /* Known hex but not an escapable character. */
    assert_int_equal(jid_unescape_node("\\41\\00\\7e", out, sizeof(out)), 0);
    assert_string_equal(out, "\\41\\00\\7e");
    /* Unescaping is one pass: "\5c40" gives "\40", not "@". */
    assert_int_equal(jid_unescape_node("\\5c40", out, sizeof(out)), 0);
    assert_string_equal(out, "\\40");
    assert_int_equal(jid_unescape_node("bob\\40example.com", out, sizeof(out)),
                     0);
    assert_string_equal(out, "bob@example.com");
}

static void test_xep0106_out_size(void **state)
{
    char out[16];
    (void)state;

    /* "a\40b" is 5 bytes, 6 with the NUL. */
    assert_int_equal(jid_escape_node("a@b", out, 6), 0);
    assert_string_equal(out, "a\\40b");
    assert_int_equal(jid_escape_node("a@b", out, 5), -1);
    assert_int_equal(jid_escape_node("", out, 1), 0);
    assert_string_equal(out, "");
    assert_int_equal(jid_escape_node("a", out, 0), -1);
    assert_int_equal(jid_escape_node(NULL, out, sizeof(out)), -1);

    assert_int_equal(jid_unescape_node("a\\40b", out, 4), 0);
    assert_string_equal(out, "a@b");
    assert_int_equal(jid_unescape_node("a\\40b", out, 3), -1);
    assert_int_equal(jid_unescape_node(NULL, out, sizeof(out)), -1);
}

/* ---- email --------------------------------------------------------- */

static void test_email_valid(void **state)
{
    static const char *const good[] = {
        "bob@example.com",
        "Bob.Smith+tag@mail.example.org",
        "here's_a_wild_&_/cr%zy/_address@example.com",
        "a@b.co",
        "x@xn--bcher-kva.example",
        "user@sub-domain.example-host.com",
        "1234@123.example.com",
    };
    static const char *const bad[] = {
        "",
        "bob",
        "bob@",
        "@example.com",
        "bob@localhost",    /* no dot */
        "bob@@example.com", /* two '@' */
        "bob@exa@mple.com",
        "bob smith@example.com",
        "bob@exa mple.com",
        "bob\r@example.com",
        "bob@example.com\r\nBcc: eve@example.net",
        "bob\n@example.com",
        "bob@example.com\n",
        "\tbob@example.com",
        "<bob@example.com>",
        "bob(x)@example.com",
        "\"bob\"@example.com",
        "bob;eve@example.com",
        "bob,eve@example.com",
        "bob:x@example.com",
        "bob\\x@example.com",
        "bob[1]@example.com",
        ".bob@example.com",
        "bob.@example.com",
        "bo..b@example.com",
        "bob@.example.com",
        "bob@example.com.",
        "bob@example..com",
        "bob@-example.com",
        "bob@example-.com",
        "bob@exa_mple.com",
        "bob@192.168.1.1",
        "bob@[192.168.1.1]",
        /* split so that \xb6 does not swallow the next 'b' */
        ("b\xc3\xb6"
         "b@example.com"),
        "bob@ex\xc3\xa4mple.com",
        "bob\x7f@example.com",
    };
    char buf[400];
    (void)state;

    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        if (!email_valid(good[i]))
            fail_msg("email_valid(\"%s\") false", good[i]);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (email_valid(bad[i]))
            fail_msg("email_valid(\"%s\") true", bad[i]);
    assert_false(email_valid(NULL));

    /* Local part: 64 bytes pass, 65 do not. */
    memset(buf, 'l', 64);
    strcpy(buf + 64, "@example.com");
    assert_true(email_valid(buf));
    memset(buf, 'l', 65);
    strcpy(buf + 65, "@example.com");
    assert_false(email_valid(buf));

    /* Label of 63 bytes passes, 64 does not. */
    strcpy(buf, "a@");
    memset(buf + 2, 'd', 63);
    strcpy(buf + 65, ".com");
    assert_true(email_valid(buf));
    strcpy(buf, "a@");
    memset(buf + 2, 'd', 64);
    strcpy(buf + 66, ".com");
    assert_false(email_valid(buf));

    /* Total 254 passes, 255 does not: "a@" + labels. */
    strcpy(buf, "a@");
    for (size_t i = 0; i < 4; i++) {
        memset(buf + 2 + i * 62, 'd', 61);
        buf[2 + i * 62 + 61] = '.';
    }
    strcpy(buf + 2 + 4 * 62, "abcdef"); /* length 2 + 248 + 4 = 254 */
    buf[254] = '\0';
    assert_int_equal(strlen(buf), 254);
    assert_true(email_valid(buf));
    strcpy(buf + 254, "g");
    assert_false(email_valid(buf));
}

static void test_email_normalize(void **state)
{
    static const struct esc_case ok[] = {
        {"Bob@Example.COM", "Bob@example.com"},
        {"  bob@example.com\r\n", "bob@example.com"},
        {"<bob@example.com>", "bob@example.com"},
        {"mailto:bob@Example.com", "bob@example.com"},
        {"MAILTO:bob@example.com?subject=hi&body=x", "bob@example.com"},
        {"<mailto:bob@example.com>", "bob@example.com"},
        {"mailto:here's_a_wild_%26_%2fcr%25zy%2f_address@example.com",
         "here's_a_wild_&_/cr%zy/_address@example.com"},
        {"mailto:bob%40example.com", "bob@example.com"},
    };
    static const char *const bad[] = {
        "",
        "   ",
        "<>",
        "mailto:",
        "bob",
        "bob smith@example.com",
        "Bob <bob@example.com>",
        "<bob@example.com",
        "mailto:bob%0d%0aBcc:eve@example.com",
        "mailto:bob%00@example.com",
        "mailto:bob%20smith@example.com",
        "bob@example.com\r\nBcc: eve@example.net",
    };
    char out[EMAIL_MAX + 1];
    (void)state;

    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        if (email_normalize(ok[i].raw, out, sizeof(out)) != 0)
            fail_msg("email_normalize(\"%s\") failed", ok[i].raw);
        assert_string_equal(out, ok[i].escaped);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (email_normalize(bad[i], out, sizeof(out)) != -1)
            fail_msg("email_normalize(\"%s\") gave \"%s\"", bad[i], out);
    assert_int_equal(email_normalize(NULL, out, sizeof(out)), -1);

    /* "b@e.co" needs 7 bytes. */
    assert_int_equal(email_normalize(" B@E.CO ", out, 7), 0);
    assert_string_equal(out, "B@e.co");
    assert_int_equal(email_normalize(" B@E.CO ", out, 6), -1);
}

static void test_email_domain(void **state)
{
    const char *a = "bob@mail.example.org";
    (void)state;

    assert_ptr_equal(email_domain(a), a + 4);
    assert_string_equal(email_domain(a), "mail.example.org");
    assert_null(email_domain("bob@localhost"));
    assert_null(email_domain("bob"));
    assert_null(email_domain(NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_jid_full),
        cmocka_unit_test(test_jid_no_node),
        cmocka_unit_test(test_jid_resource_with_separators),
        cmocka_unit_test(test_jid_escaped_and_e164_nodes),
        cmocka_unit_test(test_jid_malformed),
        cmocka_unit_test(test_jid_part_lengths),
        cmocka_unit_test(test_jid_bare_and_domain),
        cmocka_unit_test(test_e164_valid),
        cmocka_unit_test(test_e164_from_human),
        cmocka_unit_test(test_e164_from_human_out_size),
        cmocka_unit_test(test_e164_has_prefix),
        cmocka_unit_test(test_xep0106_escape),
        cmocka_unit_test(test_xep0106_unescape),
        cmocka_unit_test(test_xep0106_round_trip),
        cmocka_unit_test(test_xep0106_case_and_unknown),
        cmocka_unit_test(test_xep0106_out_size),
        cmocka_unit_test(test_email_valid),
        cmocka_unit_test(test_email_normalize),
        cmocka_unit_test(test_email_domain),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
