/*
 * segments: how many SMS segments (PDUs) a UTF-8 text costs, the way
 * Twilio's message segment calculator counts them (protocol-facts §3).
 * Pure: no allocation, no I/O, no globals.
 *
 * Encoding: GSM-7 when every character is in the GSM 03.38 default
 * alphabet or its extension table, UCS-2 otherwise (one character outside
 * the table turns the whole message into UCS-2).
 *
 * Sizes: GSM-7 one segment holds 160 septets, a concatenated one 153;
 * UCS-2 70 and 67 UTF-16 code units. An extension character costs 2
 * septets (ESC + code), a character outside the BMP 2 UTF-16 units
 * (surrogate pair); neither is ever split across two segments, so a
 * concatenated segment may carry one unit less than its nominal size.
 *
 * Empty text: 1 segment of 0 units (GSM-7, 160 per segment), as Twilio's
 * calculator reports; an SMS with no text is still one PDU on the wire.
 *
 * Not modelled: grapheme clusters (Twilio's calculator also keeps ZWJ
 * emoji sequences and flags in one segment; here only their surrogate
 * pairs stay whole), national language shift tables, Smart Encoding.
 */
#ifndef POSTERN_SMS_SEGMENTS_H
#define POSTERN_SMS_SEGMENTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SEGMENTS_GSM7_SINGLE 160
#define SEGMENTS_GSM7_CONCAT 153
#define SEGMENTS_UCS2_SINGLE 70
#define SEGMENTS_UCS2_CONCAT 67

struct segments_info {
    bool gsm7;          /* false: UCS-2 */
    size_t units;       /* septets (extension chars count 2) or UTF-16
                           code units (non-BMP chars count 2) */
    size_t segments;    /* >= 1 */
    size_t per_segment; /* nominal capacity: 160/153 or 70/67 */
};

/*
 * Septets code point cp costs in GSM-7: 1 for the basic table, 2 for the
 * extension table (ESC + code), 0 when GSM-7 cannot carry it.
 */
unsigned segments_gsm7_septets(uint32_t cp);

/*
 * Counts the segments of the NUL-terminated UTF-8 text utf8 (borrowed).
 * Returns 0 and fills *out, or -1 when utf8 is not well-formed UTF-8
 * (overlong forms, surrogates, code points above U+10FFFF, truncated
 * sequences); *out is then zeroed.
 */
int segments_count(const char *utf8, struct segments_info *out);

#endif
