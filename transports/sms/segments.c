/*
 * segments: SMS segment counting for GSM-7 and UCS-2 text (see
 * segments.h for the rules and protocol-facts §3 for their sources).
 *
 * Owns the GSM 03.38 default alphabet and extension table as code point
 * sets and a strict UTF-8 decoder. It must never allocate, log or accept
 * malformed UTF-8: a body that is not valid UTF-8 has no honest segment
 * count, and the caller must reject it instead of guessing.
 */
#include "segments.h"

#include <string.h>

/* The non-ASCII characters of the basic table, in code point order.
 * Only 39 of them, all below U+03AA, so a scan is enough. */
static const uint16_t gsm7_basic_high[] = {
    0x00A1, 0x00A3, 0x00A4, 0x00A5, 0x00A7, 0x00BF, 0x00C4, 0x00C5,
    0x00C6, 0x00C7, 0x00C9, 0x00D1, 0x00D6, 0x00D8, 0x00DC, 0x00DF,
    0x00E0, 0x00E4, 0x00E5, 0x00E6, 0x00E8, 0x00E9, 0x00EC, 0x00F1,
    0x00F2, 0x00F6, 0x00F8, 0x00F9, 0x00FC, 0x0393, 0x0394, 0x0398,
    0x039B, 0x039E, 0x03A0, 0x03A3, 0x03A6, 0x03A8, 0x03A9,
};

unsigned segments_gsm7_septets(uint32_t cp)
{
    if (cp < 0x80) {
        /* ASCII is not a range check: '$', '@', '_' live at other GSM
         * positions but exist, '`' and most controls do not exist. */
        switch (cp) {
        case '\n':
        case '\r':
            return 1;
        case '\f':
        case '^':
        case '{':
        case '}':
        case '\\':
        case '[':
        case '~':
        case ']':
        case '|':
            return 2;
        case '`':
            return 0;
        default:
            return cp >= 0x20 && cp < 0x7F ? 1 : 0;
        }
    }
    if (cp == 0x20AC) /* euro sign, ESC 0x65 */
        return 2;
    if (cp > 0x03A9)
        return 0;
    for (size_t i = 0; i < sizeof(gsm7_basic_high) / sizeof(*gsm7_basic_high);
         i++)
        if (gsm7_basic_high[i] == cp)
            return 1;
    return 0;
}

/*
 * Decodes one code point at *p. Returns 1 and advances *p, 0 at the
 * terminating NUL, -1 on malformed input (RFC 3629: no overlong forms,
 * no surrogates, nothing above U+10FFFF).
 */
static int utf8_next(const unsigned char **p, uint32_t *cp)
{
    const unsigned char *s = *p;
    uint32_t c = s[0], min;
    int extra;

    if (c == 0)
        return 0;
    if (c < 0x80) {
        *cp = c;
        *p = s + 1;
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF) {
        extra = 1;
        c &= 0x1F;
        min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        extra = 2;
        c &= 0x0F;
        min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        extra = 3;
        c &= 0x07;
        min = 0x10000;
    } else {
        return -1; /* continuation byte, C0/C1 overlong lead, F5..FF */
    }
    /* A NUL ends the string, and it fails this test, so a truncated
     * sequence never reads past the terminator. */
    for (int i = 1; i <= extra; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return -1;
        c = (c << 6) | (s[i] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
        return -1;
    *cp = c;
    *p = s + 1 + extra;
    return 1;
}

static size_t cost(uint32_t cp, bool gsm7)
{
    if (gsm7)
        return segments_gsm7_septets(cp);
    return cp > 0xFFFF ? 2 : 1;
}

/*
 * Greedy packing into concatenated segments of cap units, where a
 * character of 2 units that does not fit moves whole to the next segment.
 * This is what Twilio's calculator arrives at when it adds the header to
 * the first segment and pushes the overflow on.
 */
static size_t pack(const unsigned char *s, bool gsm7, size_t cap)
{
    size_t segments = 1, used = 0;
    uint32_t cp = 0;

    while (utf8_next(&s, &cp) > 0) {
        size_t c = cost(cp, gsm7);
        if (used + c > cap) {
            segments++;
            used = 0;
        }
        used += c;
    }
    return segments;
}

int segments_count(const char *utf8, struct segments_info *out)
{
    const unsigned char *s = (const unsigned char *)utf8;
    size_t septets = 0, utf16 = 0;
    bool gsm7 = true;
    uint32_t cp = 0;
    int rc;

    memset(out, 0, sizeof(*out));
    while ((rc = utf8_next(&s, &cp)) > 0) {
        unsigned g = segments_gsm7_septets(cp);
        if (g == 0)
            gsm7 = false;
        septets += g;
        utf16 += cp > 0xFFFF ? 2 : 1;
    }
    if (rc < 0)
        return -1;

    out->gsm7 = gsm7;
    out->units = gsm7 ? septets : utf16;
    if (out->units <= (gsm7 ? SEGMENTS_GSM7_SINGLE : SEGMENTS_UCS2_SINGLE)) {
        out->segments = 1;
        out->per_segment = gsm7 ? SEGMENTS_GSM7_SINGLE : SEGMENTS_UCS2_SINGLE;
    } else {
        out->per_segment = gsm7 ? SEGMENTS_GSM7_CONCAT : SEGMENTS_UCS2_CONCAT;
        out->segments =
            pack((const unsigned char *)utf8, gsm7, out->per_segment);
    }
    return 0;
}
