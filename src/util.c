/*
 * util: see util.h. Nothing here keeps state besides the seeded PRNG
 * used for jitter and ids.
 */
#include "util.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

void error_set(struct error *e, int code, bool temporary, const char *fmt, ...)
{
    va_list ap;

    if (!e)
        return;
    e->code = code;
    e->temporary = temporary;
    e->retry_after_s = 0;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
    va_end(ap);
}

void error_clear(struct error *e)
{
    if (!e)
        return;
    e->code = COND_NONE;
    e->temporary = false;
    e->retry_after_s = 0;
    e->msg[0] = '\0';
}

static void oom(void)
{
    fputs("postern: out of memory\n", stderr);
    abort();
}

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        oom();
    return p;
}

void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        oom();
    return p;
}

void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        oom();
    return q;
}

char *xstrdup(const char *s)
{
    return xstrndup(s, strlen(s));
}

char *xstrndup(const char *s, size_t n)
{
    size_t len = strnlen(s, n);
    char *p = xmalloc(len + 1);
    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}

char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    char *p;

    va_start(ap, fmt);
    if (vasprintf(&p, fmt, ap) < 0)
        oom();
    va_end(ap);
    return p;
}

void fatal(const char *fmt, ...)
{
    va_list ap;

    fputs("postern: fatal: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

void sb_init(struct strbuf *b)
{
    b->s = NULL;
    b->len = 0;
    b->cap = 0;
}

static void sb_grow(struct strbuf *b, size_t extra)
{
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap *= 2;
    b->s = xrealloc(b->s, cap);
    b->cap = cap;
}

void sb_append(struct strbuf *b, const char *s, size_t n)
{
    sb_grow(b, n);
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

void sb_puts(struct strbuf *b, const char *s)
{
    sb_append(b, s, strlen(s));
}

void sb_putc(struct strbuf *b, char c)
{
    sb_append(b, &c, 1);
}

void sb_printf(struct strbuf *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    sb_grow(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->s + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

char *sb_steal(struct strbuf *b)
{
    char *s = b->s ? b->s : xstrdup("");
    sb_init(b);
    return s;
}

void sb_free(struct strbuf *b)
{
    free(b->s);
    sb_init(b);
}

uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int64_t now_unix(void)
{
    return (int64_t)time(NULL);
}

static uint64_t rng_state;

static uint64_t rng_next(void)
{
    if (!rng_state) {
        if (getrandom(&rng_state, sizeof(rng_state), 0) !=
            (ssize_t)sizeof(rng_state))
            rng_state = (uint64_t)now_ms() ^ ((uint64_t)getpid() << 32);
        rng_state |= 1;
    }
    /* xorshift64*: jitter and ids need spread, not secrecy */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1DULL;
}

uint64_t backoff_ms(unsigned attempt, uint64_t base_ms, uint64_t cap_ms)
{
    uint64_t d = base_ms;
    for (unsigned i = 0; i < attempt && d < cap_ms; i++)
        d *= 2;
    if (d > cap_ms)
        d = cap_ms;
    if (d < 2)
        return d;
    return d / 2 + rng_next() % (d / 2 + 1);
}

void random_hex(char *out, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char buf[64];

    while (n > 0) {
        size_t chunk = n < sizeof(buf) ? n : sizeof(buf);
        if (getrandom(buf, chunk, 0) != (ssize_t)chunk) {
            for (size_t i = 0; i < chunk; i++)
                buf[i] = (unsigned char)rng_next();
        }
        for (size_t i = 0; i < chunk; i++) {
            *out++ = hex[buf[i] >> 4];
            *out++ = hex[buf[i] & 15];
        }
        n -= chunk;
    }
    *out = '\0';
}

bool str_ieq(const char *a, const char *b)
{
    return strcasecmp(a, b) == 0;
}

bool str_has_prefix(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

char *str_trim(char *s)
{
    size_t len = strlen(s);
    size_t start = 0;

    while (len > 0 && isspace((unsigned char)s[len - 1]))
        s[--len] = '\0';
    while (start < len && isspace((unsigned char)s[start]))
        start++;
    if (start)
        memmove(s, s + start, len - start + 1);
    return s;
}

bool str_blank(const char *s)
{
    for (; *s; s++)
        if (!isspace((unsigned char)*s))
            return false;
    return true;
}

int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

char *pct_decode(const char *s, size_t n, bool plus_is_space)
{
    char *out = xmalloc(n + 1), *o = out;

    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%') {
            int h = i + 2 < n ? hex_value(s[i + 1]) : -1;
            int l = i + 2 < n ? hex_value(s[i + 2]) : -1;
            if (h < 0 || l < 0 || (h == 0 && l == 0))
                goto bad;
            *o++ = (char)(h * 16 + l);
            i += 2;
        } else if (s[i] == '+' && plus_is_space) {
            *o++ = ' ';
        } else if (s[i] == '\0') {
            goto bad;
        } else {
            *o++ = s[i];
        }
    }
    *o = '\0';
    return out;
bad:
    free(out);
    return NULL;
}

size_t utf8_seq_len(const unsigned char *p, size_t n)
{
    size_t len;
    unsigned cp;

    if (p[0] < 0x80)
        return 1;
    if (p[0] >= 0xc2 && p[0] <= 0xdf) {
        len = 2;
        cp = p[0] & 0x1f;
    } else if (p[0] >= 0xe0 && p[0] <= 0xef) {
        len = 3;
        cp = p[0] & 0x0f;
    } else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
        len = 4;
        cp = p[0] & 0x07;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

void json_quote(struct strbuf *b, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s), run = 0;

    sb_putc(b, '"');
    for (size_t i = 0; i < n;) {
        unsigned char ch = p[i];
        const char *esc = NULL;
        char u[8];
        size_t l = 1;

        if (ch >= 0x80) {
            l = utf8_seq_len(p + i, n - i);
            if (l) {
                run += l;
                i += l;
                continue;
            }
            /* invalid UTF-8 (a provider's garbage) becomes U+FFFD */
            esc = "\xef\xbf\xbd";
            l = 1;
        } else if (ch == '"') {
            esc = "\\\"";
        } else if (ch == '\\') {
            esc = "\\\\";
        } else if (ch == '\n') {
            esc = "\\n";
        } else if (ch == '\r') {
            esc = "\\r";
        } else if (ch == '\t') {
            esc = "\\t";
        } else if (ch == '\b') {
            esc = "\\b";
        } else if (ch == '\f') {
            esc = "\\f";
        } else if (ch < 0x20) {
            snprintf(u, sizeof(u), "\\u%04x", ch);
            esc = u;
        } else {
            run++;
            i++;
            continue;
        }
        sb_append(b, s + i - run, run);
        run = 0;
        sb_puts(b, esc);
        i += l;
    }
    sb_append(b, s + n - run, run);
    sb_putc(b, '"');
}
