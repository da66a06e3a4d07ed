/*
 * addr: pure codecs for the addresses postern deals in: JIDs (split,
 * bare), E.164 numbers (strict check, human-typed normalisation) and
 * XEP-0106 node escaping for email contacts (Prosody's rules: a backslash
 * is escaped only when it starts a valid escape sequence, so escape and
 * unescape round-trip). No I/O, no allocation except where stated.
 */
#ifndef POSTERN_ADDR_H
#define POSTERN_ADDR_H

#include <stdbool.h>
#include <stddef.h>

#include "util.h"

#define JID_MAX 3072 /* 3 x 1023 + separators, RFC 7622 */
#define E164_MAX 16  /* '+' and 15 digits */
#define EMAIL_MAX 254

/* Parts of a JID, each NUL-terminated, "" when absent. */
struct jid {
    char node[1024];
    char domain[1024];
    char resource[1024];
};

/*
 * Splits "node@domain/resource" (RFC 7622: the resource starts at the
 * first '/', the node ends at the first '@' before it, so a resource may
 * contain '@' and '/'). Fails (-1) on NULL, empty domain, a domain with
 * '@', spaces or control characters, parts longer than 1023 bytes, or
 * empty node/resource when the separator is present. Lower-cases the
 * domain (ASCII). Does not apply stringprep.
 */
int jid_parse(const char *s, struct jid *out);
/* Writes "node@domain" (or "domain") into out; -1 if it does not fit. */
int jid_bare(const char *s, char *out, size_t size);
/* The domain of a JID into out; -1 if malformed. */
int jid_domain(const char *s, char *out, size_t size);

/* true when s matches ^\+[1-9][0-9]{1,14}$ */
bool e164_valid(const char *s);

/*
 * Normalises a human-typed number to E.164 into out (0, or -1 when it
 * fails or does not fit): "(555) 123-4567", "+44 20 7946 0958",
 * "0044 20 7946 0958", "011 44 20 7946 0958", "1-555-123-4567",
 * "tel:+1...". Rules, in order:
 * - surrounding whitespace and a "tel:" prefix (any case) are dropped;
 * - spaces, tabs, dots, dashes, slashes and parentheses are removed, and
 *   after a leading '+' so is "(0)" ("+44 (0)20 ..."); any other
 *   character (letters, a '+' not first, ';', '#', '*') fails;
 * - with a leading '+' the digits are the international number;
 * - else a leading "00" is the international prefix, and "011" too when
 *   default_cc is "1" (elsewhere 011... is a national number);
 * - else the number is national in default_cc (1-3 digits, optional '+';
 *   NULL or invalid fails here). For "1" (NANP) it must have 10 digits,
 *   or 11 starting with the trunk "1", and the area code must not start
 *   with 0 or 1. For other codes one leading trunk '0' is dropped and
 *   the code is prepended: national lengths are not known, so a foreign
 *   number must be typed with '+' or "00".
 * The result must pass e164_valid().
 */
int e164_from_human(const char *in, const char *default_cc, char *out,
                    size_t size);

/*
 * Country-code prefix check: does e164 start with prefix ("+44")? The
 * '+' is optional on either side; false when prefix has no digits or
 * anything but digits after it.
 */
bool e164_has_prefix(const char *e164, const char *prefix);

/*
 * XEP-0106 escaping of a JID node (Prosody util/jid.lua semantics):
 * first "\" followed by a valid escape sequence becomes "\5c", then each of
 * space " & ' / : < > @ becomes "\XX" (lowercase hex). Only lowercase
 * sequences are valid ("\5C" is left alone). A space first or last is not
 * refused (Prosody neither). 0, or -1 if out is too small.
 * jid_unescape_node(jid_escape_node(s)) == s for every string.
 */
int jid_escape_node(const char *in, char *out, size_t size);
/* Inverse: each valid "\XX" sequence becomes its character; other
 * backslashes stay. 0, or -1 if out is too small. */
int jid_unescape_node(const char *in, char *out, size_t size);

/*
 * A practical email address check for routing: one '@', non-empty local
 * part of at most 64 bytes of printable ASCII without spaces, control
 * characters or any of < > ( ) [ ] , ; : \ " and without leading,
 * trailing or doubled dots; a domain of labels [A-Za-z0-9-] (1-63
 * bytes, no '-' first or last) separated by dots with at least one dot,
 * not numeric at the end (IP addresses and literals are refused); total
 * <= 254.
 */
bool email_valid(const char *addr);
/*
 * Trims, strips surrounding <> then "mailto:" (any case; for a mailto:
 * URI the "?headers" are dropped and %XX decoded), lower-cases the
 * domain (the local part keeps its case), validates. 0, or -1 if invalid
 * or out is too small.
 */
int email_normalize(const char *in, char *out, size_t size);
/* The domain part of a valid address (borrowed pointer into addr). */
const char *email_domain(const char *addr);

#endif
