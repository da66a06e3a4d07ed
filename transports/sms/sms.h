/*
 * sms: the SMS transport (see sms.c) and the body splitter it uses, which
 * is public so tests and tools can see how a body will be cut.
 */
#ifndef POSTERN_SMS_H
#define POSTERN_SMS_H

#include <stddef.h>

#include "transport.h"

extern const struct transport_ops sms_transport_ops;

/* Largest body one SMS provider request takes (Twilio: 1,600 characters). */
#define SMS_MAX_CHARS 1600

/*
 * The first part of s when it is cut into parts of at most limit Unicode
 * code points (limit > 0, s non-empty): returns its length in bytes and
 * stores in *next the offset where the following part starts (strlen(s)
 * when nothing follows). A part ends at the last whitespace that fits:
 * the whitespace run at the cut belongs to neither part. Without such
 * whitespace the cut falls after limit code points, never inside a UTF-8
 * sequence. A rest that fits is returned whole, as it is.
 */
size_t sms_split_next(const char *s, size_t limit, size_t *next);

/* Number of Unicode code points in s (a continuation byte counts as none). */
size_t sms_count_chars(const char *s);

#endif
