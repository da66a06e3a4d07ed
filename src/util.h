/*
 * util: the small things every module needs: the error struct that
 * carries an XMPP condition, allocation wrappers that abort on OOM, a
 * growable string buffer, monotonic time and backoff with jitter.
 * Pure code: no I/O, no library besides libc.
 */
#ifndef POSTERN_UTIL_H
#define POSTERN_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#if defined(__GNUC__)
#define PRINTF_LIKE(f, a) __attribute__((format(printf, f, a)))
#define NORETURN __attribute__((noreturn))
#else
#define PRINTF_LIKE(f, a)
#define NORETURN
#endif

/*
 * The stanza error conditions postern emits (RFC 6120 section 8.3.3). The
 * XMPP error type follows from the condition and error.temporary, see
 * stanza_error_type().
 */
enum cond {
    COND_NONE = 0,
    COND_BAD_REQUEST,
    COND_CONFLICT,
    COND_FEATURE_NOT_IMPLEMENTED,
    COND_FORBIDDEN,
    COND_INTERNAL_SERVER_ERROR,
    COND_ITEM_NOT_FOUND,
    COND_JID_MALFORMED,
    COND_NOT_ACCEPTABLE,
    COND_NOT_ALLOWED,
    COND_NOT_AUTHORIZED,
    COND_POLICY_VIOLATION,
    COND_RECIPIENT_UNAVAILABLE,
    COND_REGISTRATION_REQUIRED,
    COND_REMOTE_SERVER_TIMEOUT,
    COND_RESOURCE_CONSTRAINT,
    COND_SERVICE_UNAVAILABLE,
    COND_UNDEFINED_CONDITION,
};

/* Filled by every fallible function; msg is a human sentence. */
struct error {
    int code;       /* enum cond */
    bool temporary; /* retry later (wait) vs. permanent (cancel) */
    char msg[160];
    /*
     * Temporary errors only: seconds the peer asked us to wait before the
     * next attempt (an HTTP Retry-After), 0 when it said nothing. Zeroed
     * by error_set and error_clear; set it after error_set.
     */
    unsigned retry_after_s;
};

void error_set(struct error *e, int code, bool temporary, const char *fmt, ...)
    PRINTF_LIKE(4, 5);
void error_clear(struct error *e);

/* Abort on OOM; never return NULL. */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) PRINTF_LIKE(1, 2);

/* Prints "postern: fatal: ..." to stderr and exits 1. Start-up only. */
NORETURN void fatal(const char *fmt, ...) PRINTF_LIKE(1, 2);

/* Growable, always NUL-terminated string buffer. */
struct strbuf {
    char *s;
    size_t len;
    size_t cap;
};
void sb_init(struct strbuf *b);
void sb_append(struct strbuf *b, const char *s, size_t n);
void sb_puts(struct strbuf *b, const char *s);
void sb_putc(struct strbuf *b, char c);
void sb_printf(struct strbuf *b, const char *fmt, ...) PRINTF_LIKE(2, 3);
/* Returned owned (free with free()); leaves b empty. */
char *sb_steal(struct strbuf *b);
void sb_free(struct strbuf *b);

/* Monotonic milliseconds. */
uint64_t now_ms(void);
/* Wall-clock seconds since the epoch. */
int64_t now_unix(void);

/*
 * Capped exponential backoff with full jitter in [delay/2, delay]:
 * delay = min(cap_ms, base_ms * 2^attempt). attempt counts from 0.
 */
uint64_t backoff_ms(unsigned attempt, uint64_t base_ms, uint64_t cap_ms);

/* Random bytes as lowercase hex (2*n chars + NUL into out). */
void random_hex(char *out, size_t n);

/* Case-insensitive ASCII compare helpers. */
bool str_ieq(const char *a, const char *b);
bool str_has_prefix(const char *s, const char *prefix);
/* Trims ASCII whitespace in place; returns s. */
char *str_trim(char *s);
/* true when s has only whitespace (or is empty). */
bool str_blank(const char *s);

/* Value of a hex digit (either case), -1 when c is not one. */
int hex_value(char c);
/*
 * Percent-decodes [s, s+n) into a new string (free with free()); with
 * plus_is_space, '+' means ' ' (application/x-www-form-urlencoded). NULL
 * when an escape is malformed or the result would contain a NUL byte.
 */
char *pct_decode(const char *s, size_t n, bool plus_is_space);

/*
 * Length of the valid UTF-8 sequence at p (at most n bytes readable), 0
 * when invalid: overlong forms, surrogates and code points above U+10FFFF
 * are refused.
 */
size_t utf8_seq_len(const unsigned char *p, size_t n);
/*
 * Appends s as a JSON string with its quotes; invalid UTF-8 becomes
 * U+FFFD, control characters are escaped.
 */
void json_quote(struct strbuf *b, const char *s);

#endif
