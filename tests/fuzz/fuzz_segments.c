/*
 * fuzz_segments: segments_count() on the input as a NUL-terminated
 * string, checked against a second, independent model: a table-driven
 * UTF-8 validator (Unicode Table 3-7 well-formed byte sequences) and a
 * bit-level replay of how Twilio's calculator builds segments (one
 * 1120-bit segment; on overflow the previous segment gets a 48-bit
 * header and gives its tail characters to the next one). Invariants:
 * invalid UTF-8 is refused and valid is accepted, GSM-7 is chosen
 * exactly when every character is in the tables, units add up,
 * segments >= 1, and both models agree on the count.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sms/segments.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "fuzz_segments: %s:%d: %s\n", __FILE__, __LINE__,  \
                    #cond);                                                    \
            abort();                                                           \
        }                                                                      \
    } while (0)

/*
 * Unicode 15 Table 3-7: the allowed ranges of the 2nd..4th byte depend on
 * the first. Returns the sequence length or 0 when ill-formed.
 */
static size_t wellformed(const uint8_t *s, size_t n, uint32_t *cp)
{
    static const struct {
        uint8_t lo, hi;   /* first byte range */
        uint8_t len;      /* bytes in sequence */
        uint8_t lo2, hi2; /* second byte range */
    } rows[] = {
        {0x00, 0x7F, 1, 0, 0},       {0xC2, 0xDF, 2, 0x80, 0xBF},
        {0xE0, 0xE0, 3, 0xA0, 0xBF}, {0xE1, 0xEC, 3, 0x80, 0xBF},
        {0xED, 0xED, 3, 0x80, 0x9F}, {0xEE, 0xEF, 3, 0x80, 0xBF},
        {0xF0, 0xF0, 4, 0x90, 0xBF}, {0xF1, 0xF3, 4, 0x80, 0xBF},
        {0xF4, 0xF4, 4, 0x80, 0x8F},
    };
    for (size_t r = 0; r < sizeof(rows) / sizeof(*rows); r++) {
        if (s[0] < rows[r].lo || s[0] > rows[r].hi)
            continue;
        if (rows[r].len > n)
            return 0;
        if (rows[r].len == 1) {
            *cp = s[0];
            return 1;
        }
        if (s[1] < rows[r].lo2 || s[1] > rows[r].hi2)
            return 0;
        for (size_t i = 2; i < rows[r].len; i++)
            if (s[i] < 0x80 || s[i] > 0xBF)
                return 0;
        *cp = s[0] & (0xFF >> (rows[r].len + 1));
        for (size_t i = 1; i < rows[r].len; i++)
            *cp = (*cp << 6) | (s[i] & 0x3F);
        return rows[r].len;
    }
    return 0;
}

/* Twilio's _buildSegments over character sizes in bits. */
static size_t twilio_segments(const unsigned *bits, size_t n)
{
    /* fill[k] bits used by segment k, start[k] index of its first char */
    size_t *fill = calloc(n + 1, sizeof(*fill));
    size_t *start = calloc(n + 2, sizeof(*start));
    int *hdr = calloc(n + 1, sizeof(*hdr));
    size_t cur = 0, count;

    CHECK(fill && start && hdr);
    for (size_t i = 0; i < n; i++) {
        size_t cap = hdr[cur] ? 1120 - 48 : 1120;
        if (cap - fill[cur] < bits[i]) {
            size_t prev = cur++;
            hdr[cur] = 1;
            start[cur] = i;
            if (!hdr[prev]) {
                /* The header squeezes the tail of prev into cur. */
                hdr[prev] = 1;
                while (fill[prev] > 1120 - 48) {
                    start[cur]--;
                    fill[prev] -= bits[start[cur]];
                    fill[cur] += bits[start[cur]];
                }
            }
        }
        fill[cur] += bits[i];
    }
    count = cur + 1;
    free(hdr);
    free(start);
    free(fill);
    return count;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct segments_info si;
    size_t len, ncp = 0, septets = 0, utf16 = 0;
    bool valid = true, all_gsm = true;
    unsigned *bits;
    uint32_t *cps;
    char *s;
    int rc;

    if (size > 8192)
        return 0;
    s = malloc(size + 1);
    CHECK(s);
    memcpy(s, data, size);
    s[size] = '\0';
    len = strlen(s); /* the string stops at an embedded NUL */
    cps = malloc((len + 1) * sizeof(*cps));
    bits = malloc((len + 1) * sizeof(*bits));
    CHECK(cps && bits);

    for (size_t i = 0; i < len;) {
        size_t k = wellformed((const uint8_t *)s + i, len - i, &cps[ncp]);
        if (k == 0) {
            valid = false;
            break;
        }
        i += k;
        ncp++;
    }

    rc = segments_count(s, &si);
    CHECK(rc == 0 || rc == -1);
    CHECK((rc == 0) == valid);
    if (rc == -1) {
        CHECK(si.segments == 0 && si.units == 0);
        goto out;
    }

    for (size_t i = 0; i < ncp; i++) {
        unsigned g = segments_gsm7_septets(cps[i]);
        CHECK(g <= 2);
        /* Only BMP characters are in the tables. */
        CHECK(g == 0 || cps[i] <= 0xFFFF);
        all_gsm = all_gsm && g > 0;
        septets += g;
        utf16 += cps[i] > 0xFFFF ? 2 : 1;
    }
    CHECK(si.gsm7 == all_gsm);
    CHECK(si.units == (all_gsm ? septets : utf16));
    CHECK(si.units >= ncp && si.units <= 2 * ncp);
    CHECK(si.segments >= 1);
    if (si.units <= (si.gsm7 ? 160u : 70u)) {
        CHECK(si.segments == 1);
        CHECK(si.per_segment == (si.gsm7 ? 160u : 70u));
    } else {
        size_t cap = si.gsm7 ? 153 : 67;
        CHECK(si.per_segment == cap);
        /* Never more than one unit of a segment is lost to a
         * character that moved on whole. */
        CHECK(si.segments >= (si.units + cap - 1) / cap);
        CHECK(si.segments <= (si.units + cap - 2) / (cap - 1));
    }

    for (size_t i = 0; i < ncp; i++)
        bits[i] = all_gsm ? 7 * segments_gsm7_septets(cps[i])
                          : (cps[i] > 0xFFFF ? 32 : 16);
    CHECK(si.segments == twilio_segments(bits, ncp));
out:
    free(bits);
    free(cps);
    free(s);
    return 0;
}
