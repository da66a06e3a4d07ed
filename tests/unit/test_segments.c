/*
 * Unit tests of segments.c: the GSM 03.38 tables, UTF-8 validation and
 * segment counts, with every T22 vector of protocol-facts.md section 3.3
 * (Twilio's message-segment-calculator tests plus the derived table) and
 * the boundary cases where a character that cannot be split changes the
 * count.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sms/segments.h"

/* Concatenation of n copies of unit, after prefix and before suffix;
 * returned owned (free()). */
static char *build(const char *prefix, const char *unit, size_t n,
                   const char *suffix)
{
    size_t pl = strlen(prefix), ul = strlen(unit), sl = strlen(suffix);
    char *s = malloc(pl + ul * n + sl + 1), *p;

    assert_non_null(s);
    memcpy(s, prefix, pl);
    p = s + pl;
    for (size_t i = 0; i < n; i++, p += ul)
        memcpy(p, unit, ul);
    memcpy(p, suffix, sl + 1);
    return s;
}

static void expect(const char *text, bool gsm7, size_t units, size_t segments)
{
    struct segments_info si;

    assert_int_equal(segments_count(text, &si), 0);
    assert_int_equal(si.gsm7, gsm7);
    assert_int_equal(si.units, units);
    assert_int_equal(si.segments, segments);
    if (gsm7)
        assert_int_equal(si.per_segment, segments == 1 ? 160 : 153);
    else
        assert_int_equal(si.per_segment, segments == 1 ? 70 : 67);
}

static void expect_n(const char *prefix, const char *unit, size_t n,
                     const char *suffix, bool gsm7, size_t units,
                     size_t segments)
{
    char *s = build(prefix, unit, n, suffix);
    expect(s, gsm7, units, segments);
    free(s);
}

/* ---- the tables -------------------------------------------------------- */

/* The basic table of §3.1 in GSM code order, ESC (0x1B) left out. */
static const char gsm7_basic[] =
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
static const char gsm7_ext[] = "\f^{}\\[~]|€";

static void test_tables_as_text(void **state)
{
    (void)state;
    expect(gsm7_basic, true, 127, 1);
    expect(gsm7_ext, true, 20, 1);
}

static void test_tables_exhaustive(void **state)
{
    size_t basic = 0, ext = 0;
    (void)state;

    /* Exactly 127 + 10 code points are GSM-7, and nothing else: any
     * stray entry or range slip would change these counts. */
    for (uint32_t cp = 0; cp <= 0x10FFFF; cp++) {
        unsigned n = segments_gsm7_septets(cp);
        assert_true(n <= 2);
        basic += n == 1;
        ext += n == 2;
    }
    assert_int_equal(basic, 127);
    assert_int_equal(ext, 10);
}

static void test_tables_pitfalls(void **state)
{
    (void)state;
    /* At non-ASCII GSM positions, but present. */
    assert_int_equal(segments_gsm7_septets('$'), 1);
    assert_int_equal(segments_gsm7_septets('@'), 1);
    assert_int_equal(segments_gsm7_septets('_'), 1);
    /* Capital Ç is GSM, small ç is not. */
    assert_int_equal(segments_gsm7_septets(0xC7), 1);
    assert_int_equal(segments_gsm7_septets(0xE7), 0);
    assert_int_equal(segments_gsm7_septets('`'), 0);
    assert_int_equal(segments_gsm7_septets('\t'), 0);
    assert_int_equal(segments_gsm7_septets(0x7F), 0);
    assert_int_equal(segments_gsm7_septets(0x1B), 0);
    assert_int_equal(segments_gsm7_septets(0), 0);
    assert_int_equal(segments_gsm7_septets(0xA0), 0);   /* NBSP */
    assert_int_equal(segments_gsm7_septets(0x391), 0);  /* Greek Alpha */
    assert_int_equal(segments_gsm7_septets(0x20AC), 2); /* euro */
    assert_int_equal(segments_gsm7_septets(0x1F600), 0);
    assert_int_equal(segments_gsm7_septets(0x110000), 0);
}

/* ---- T22: Twilio calculator tests ------------------------------------- */

static void test_t22_gsm_digits(void **state)
{
    (void)state;
    expect_n("", "1", 160, "", true, 160, 1);
    expect_n("", "1", 161, "", true, 161, 2);
    expect_n("", "1", 306, "", true, 306, 2);
    expect_n("", "1", 307, "", true, 307, 3);
}

static void test_t22_emoji_digits(void **state)
{
    (void)state;
    expect_n("😜", "1", 68, "", false, 70, 1);
    expect_n("😜", "1", 69, "", false, 71, 2);
    expect_n("😜", "1", 133, "", false, 135, 3);
}

static void test_t22_escape_digits(void **state)
{
    static const char *const esc[] = {"|", "^", "€", "{",  "}",
                                      "[", "]", "~", "\\", "\f"};
    (void)state;

    for (size_t i = 0; i < sizeof(esc) / sizeof(*esc); i++) {
        expect_n(esc[i], "1", 158, "", true, 160, 1);
        expect_n(esc[i], "1", 159, "", true, 161, 2);
    }
}

static void test_t22_ucs2_accents(void **state)
{
    static const char *const ch[] = {"Á", "Ú", "ú", "ç", "í", "Í", "ó", "Ó"};
    (void)state;

    for (size_t i = 0; i < sizeof(ch) / sizeof(*ch); i++) {
        expect_n("", ch[i], 70, "", false, 70, 1);
        expect_n("", ch[i], 71, "", false, 71, 2);
    }
}

/* ---- T22: derived table ------------------------------------------------ */

static void test_t22_derived(void **state)
{
    (void)state;
    expect_n("", "a", 160, "", true, 160, 1);
    expect_n("", "a", 161, "", true, 161, 2);
    expect_n("", "a", 306, "", true, 306, 2);
    expect_n("", "a", 307, "", true, 307, 3);
    expect_n("", "€", 80, "", true, 160, 1);
    /* 76 + 5 euros: 153 is odd, so the 77th pair moves on. */
    expect_n("", "€", 81, "", true, 162, 2);
    expect_n("", "ç", 70, "", false, 70, 1);
    expect_n("", "ç", 71, "", false, 71, 2);
    expect_n("", "ç", 134, "", false, 134, 2);
    expect_n("", "ç", 135, "", false, 135, 3);
    expect_n("", "😀", 35, "", false, 70, 1);
    /* 33 + 3 emoji: 67 is odd, so the 34th pair moves on. */
    expect_n("", "😀", 36, "", false, 72, 2);
    expect("Hello ` world", false, 13, 1);
}

/* ---- boundaries --------------------------------------------------------- */

static void test_empty(void **state)
{
    (void)state;
    /* Twilio's calculator starts with one segment: an empty SMS is one
     * PDU. */
    expect("", true, 0, 1);
}

/* n1 copies of unit, then mid, then n2 copies of unit. */
static void expect_around(const char *unit, size_t n1, const char *mid,
                          size_t n2, bool gsm7, size_t units, size_t segments)
{
    char *head = build("", unit, n1, mid);
    char *all = build(head, unit, n2, "");

    expect(all, gsm7, units, segments);
    free(all);
    free(head);
}

static void test_emoji_at_boundary(void **state)
{
    (void)state;
    /* 66 + 2 + 66 = 134 units would fit 2 x 67, but the pair at units
     * 67-68 cannot be split: [66][2+65][1]. */
    expect_around("ç", 66, "😀", 66, false, 134, 3);
    /* Shifted by one, the pair ends the first segment exactly. */
    expect_around("ç", 65, "😀", 67, false, 134, 2);
    /* In a single segment nothing moves: 68 + 2 = 70. */
    expect_around("ç", 68, "😀", 0, false, 70, 1);
    expect_around("ç", 69, "😀", 0, false, 71, 2);
    /* Pairs only: 67 is odd, so every concatenated segment holds 33. */
    expect_around("😀", 66, "", 0, false, 132, 2);
    expect_around("😀", 67, "", 0, false, 134, 3);
}

static void test_extension_at_boundary(void **state)
{
    (void)state;
    /* 152 + 2 + 152 = 306 septets would fit 2 x 153, but the euro at
     * septets 153-154 cannot be split: [152][2+151][1]. */
    expect_around("a", 152, "€", 152, true, 306, 3);
    /* Shifted by one: [151+2][153]. */
    expect_around("a", 151, "€", 153, true, 306, 2);
    /* Single segment: ends exactly at 160 with an extension char. */
    expect_around("a", 158, "€", 0, true, 160, 1);
    expect_around("a", 159, "€", 0, true, 161, 2);
    /* A basic char after 152 septets still fits the first segment. */
    expect_around("a", 152, "b", 153, true, 306, 2);
}

static void test_mixed_turns_ucs2(void **state)
{
    (void)state;
    /* One non-GSM char re-encodes everything; extension chars then cost
     * one unit like any BMP character. */
    expect_n("", "a", 100, "ç", false, 101, 2);
    expect_n("", "€", 69, "ç", false, 70, 1);
    expect_n("", "€", 70, "ç", false, 71, 2);
    expect_n("", "[", 69, "😀", false, 71, 2);
    /* CR LF is two GSM characters (the calculator's grapheme splitter
     * would call it UCS-2; real encoders do not). */
    expect("line\r\nline", true, 10, 1);
}

static void test_flags_and_zwj(void **state)
{
    (void)state;
    /* Flags are 2 code points = 4 units; rainbow flag 4 cp = 6 units. */
    expect("🇮🇹", false, 4, 1);
    expect("🏳️‍🌈", false, 6, 1);
}

static void test_invalid_utf8(void **state)
{
    static const char *const bad[] = {
        "\x80",             /* lone continuation */
        "a\xC0\x80",        /* overlong NUL */
        "\xC1\xBF",         /* overlong */
        "\xE0\x80\x80",     /* overlong 3-byte */
        "\xE0\x9F\xBF",     /* overlong 3-byte, top */
        "\xED\xA0\x80",     /* high surrogate */
        "\xED\xBF\xBF",     /* low surrogate */
        "\xF0\x8F\xBF\xBF", /* overlong 4-byte */
        "\xF4\x90\x80\x80", /* above U+10FFFF */
        "\xF5\x80\x80\x80", /* bad lead */
        "\xFF",             /* bad lead */
        "\xE2\x82",         /* truncated euro */
        "abc\xF0\x9F\x98",  /* truncated emoji */
        "\xC3(",            /* bad continuation */
    };
    struct segments_info si;
    (void)state;

    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
        si.segments = 99;
        assert_int_equal(segments_count(bad[i], &si), -1);
        assert_int_equal(si.segments, 0);
        assert_int_equal(si.units, 0);
    }
    /* The edges of the valid ranges pass. */
    expect("\xC2\x80", false, 1, 1);         /* U+0080 */
    expect("\xED\x9F\xBF", false, 1, 1);     /* U+D7FF */
    expect("\xEE\x80\x80", false, 1, 1);     /* U+E000 */
    expect("\xEF\xBF\xBF", false, 1, 1);     /* U+FFFF */
    expect("\xF0\x90\x80\x80", false, 2, 1); /* U+10000 */
    expect("\xF4\x8F\xBF\xBF", false, 2, 1); /* U+10FFFF */
}

static void test_large(void **state)
{
    (void)state;
    /* Twilio's 1,600-character cap: 1600 GSM = 11 segments (10 x 153 =
     * 1530), 1600 UCS-2 = 24 (23 x 67 = 1541). */
    expect_n("", "x", 1600, "", true, 1600, 11);
    expect_n("", "ç", 1600, "", false, 1600, 24);
    expect_n("", "x", 1530, "", true, 1530, 10);
    expect_n("", "x", 1531, "", true, 1531, 11);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tables_as_text),
        cmocka_unit_test(test_tables_exhaustive),
        cmocka_unit_test(test_tables_pitfalls),
        cmocka_unit_test(test_t22_gsm_digits),
        cmocka_unit_test(test_t22_emoji_digits),
        cmocka_unit_test(test_t22_escape_digits),
        cmocka_unit_test(test_t22_ucs2_accents),
        cmocka_unit_test(test_t22_derived),
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_emoji_at_boundary),
        cmocka_unit_test(test_extension_at_boundary),
        cmocka_unit_test(test_mixed_turns_ucs2),
        cmocka_unit_test(test_flags_and_zwj),
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_large),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
