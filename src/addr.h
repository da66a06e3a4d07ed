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

#define JID_MAX 3072    /* 3 x 1023 + separators, RFC 7622 */
#define E164_MAX 16     /* '+' and 15 digits */
#define EMAIL_MAX 254

/* Parts of a JID, each NUL-terminated, "" when absent. */
struct jid {
    char node[1024];
    char domain[1024];
    char resource[1024];
};

/*
 * Splits "node@domain/resource". Fails (-1) on empty domain, parts longer
 * than 1023 bytes, or empty node/resource when the separator is present.
 * Lower-cases the domain (ASCII). Does not apply stringprep.
 */
int jid_parse(const char *s, struct jid *out);
/* Writes "node@domain" (or "domain") into out; -1 if it does not fit. */
int jid_bare(const char *s, char *out, size_t size);
/* The domain of a JID into out; -1 if malformed. */
int jid_domain(const char *s, char *out, size_t size);

/* true when s matches ^\+[1-9][0-9]{1,14}$ */
bool e164_valid(const char *s);

/*
 * Normalises a human-typed number to E.164: "(555) 123-4567",
 * "+44 20 7946 0958", "0044 20 7946 0958", "1-555-123-4567", "tel:+1..."
 * Removes spaces, dots, dashes, slashes and parentheses; a leading "00" or
 * "011" becomes "+"; a number without "+" gets default_cc ("1") unless it
 * already starts with it and has the national length (NANP: 11 digits
 * starting with 1). Fails on letters, or a result that is not valid E.164.
 */
int e164_from_human(const char *in, const char *default_cc, char *out,
                    size_t size);

/* Country-code prefix check: does e164 start with prefix ("+44")? */
bool e164_has_prefix(const char *e164, const char *prefix);

/*
 * XEP-0106 escaping of a JID node (Prosody util/jid.lua semantics):
 * first "\" followed by a valid escape sequence becomes "\5c", then each of
 * space " & ' / : < > @ becomes "\XX" (lowercase hex). -1 if out too small.
 */
int jid_escape_node(const char *in, char *out, size_t size);
/* Inverse: each valid "\XX" sequence becomes its character. */
int jid_unescape_node(const char *in, char *out, size_t size);

/*
 * A practical email address check for routing: one '@', non-empty local
 * part of at most 64 bytes without spaces, control characters or
 * "<>()[],;:\"", a domain of labels [A-Za-z0-9-] separated by dots with
 * at least one dot (or an IP literal is refused), total <= 254.
 */
bool email_valid(const char *addr);
/*
 * Trims, strips "mailto:" and surrounding <>, lower-cases the domain,
 * validates. -1 if invalid.
 */
int email_normalize(const char *in, char *out, size_t size);
/* The domain part of a valid address (borrowed pointer into addr). */
const char *email_domain(const char *addr);

#endif
