/*
 * addr: the address codecs (JID split, E.164, XEP-0106, email). It owns
 * nothing but the rules written in addr.h. It must never allocate, log,
 * touch global state or read past the NUL of its input: the router calls
 * it on every stanza and the fuzzers call it on arbitrary bytes. Every
 * function writes its output only through a size-checked copy, so a too
 * small buffer is an error (-1), never a truncated address.
 */
#include "addr.h"

#include <string.h>

/* Locale-free character classes: input is bytes, not text of a locale. */
static bool is_digit(int c)
{
    return c >= '0' && c <= '9';
}

static bool is_alpha(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_xdigit(int c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static bool is_space(int c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' ||
           c == '\f';
}

static int to_lower(int c)
{
    return (c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : c;
}

static bool prefix_ieq(const char *s, const char *prefix)
{
    for (; *prefix; s++, prefix++)
        if (to_lower((unsigned char)*s) != *prefix)
            return false;
    return true;
}

/* Copies n bytes and a NUL, or fails without touching out. */
static int put(char *out, size_t size, const char *s, size_t n)
{
    if (!out || n >= size)
        return -1;
    memcpy(out, s, n);
    out[n] = '\0';
    return 0;
}

/* ---- JIDs ---------------------------------------------------------- */

int jid_parse(const char *s, struct jid *out)
{
    const char *slash, *at, *dom;
    size_t nlen = 0, dlen, rlen = 0;

    if (!s || !out)
        return -1;
    /* RFC 7622 3.2: the resource starts at the first '/', and the node
     * ends at the first '@' before it, so a resource may hold either. */
    slash = strchr(s, '/');
    dlen = slash ? (size_t)(slash - s) : strlen(s);
    at = memchr(s, '@', dlen);
    if (at) {
        nlen = (size_t)(at - s);
        if (nlen == 0)
            return -1;
        dom = at + 1;
        dlen -= nlen + 1;
    } else {
        dom = s;
    }
    if (slash) {
        rlen = strlen(slash + 1);
        if (rlen == 0)
            return -1;
    }
    if (dlen == 0 || nlen >= sizeof(out->node) || dlen >= sizeof(out->domain) ||
        rlen >= sizeof(out->resource))
        return -1;
    for (size_t i = 0; i < dlen; i++) {
        unsigned char c = (unsigned char)dom[i];
        if (c == '@' || c <= 0x20 || c == 0x7f)
            return -1;
    }

    memcpy(out->node, s, nlen);
    out->node[nlen] = '\0';
    for (size_t i = 0; i < dlen; i++)
        out->domain[i] = (char)to_lower((unsigned char)dom[i]);
    out->domain[dlen] = '\0';
    if (slash)
        memcpy(out->resource, slash + 1, rlen);
    out->resource[rlen] = '\0';
    return 0;
}

int jid_bare(const char *s, char *out, size_t size)
{
    struct jid j;
    size_t nlen, dlen;

    if (jid_parse(s, &j) < 0)
        return -1;
    nlen = strlen(j.node);
    dlen = strlen(j.domain);
    if (!nlen)
        return put(out, size, j.domain, dlen);
    if (!out || nlen + 1 + dlen >= size)
        return -1;
    memcpy(out, j.node, nlen);
    out[nlen] = '@';
    memcpy(out + nlen + 1, j.domain, dlen + 1);
    return 0;
}

int jid_domain(const char *s, char *out, size_t size)
{
    struct jid j;

    if (jid_parse(s, &j) < 0)
        return -1;
    return put(out, size, j.domain, strlen(j.domain));
}

/* ---- E.164 --------------------------------------------------------- */

bool e164_valid(const char *s)
{
    size_t n = 0;

    if (!s || s[0] != '+' || s[1] < '1' || s[1] > '9')
        return false;
    for (s++; *s; s++, n++)
        if (!is_digit((unsigned char)*s) || n >= 15)
            return false;
    return n >= 2;
}

static bool is_separator(int c)
{
    return c == ' ' || c == '\t' || c == '.' || c == '-' || c == '/' ||
           c == '(' || c == ')';
}

/* A country calling code as configured: optional '+', 1-3 digits, no 0. */
static int parse_cc(const char *cc, char *out)
{
    size_t n;

    if (!cc)
        return -1;
    if (*cc == '+')
        cc++;
    n = strlen(cc);
    if (n < 1 || n > 3 || cc[0] == '0')
        return -1;
    for (size_t i = 0; i < n; i++)
        if (!is_digit((unsigned char)cc[i]))
            return -1;
    memcpy(out, cc, n + 1);
    return 0;
}

int e164_from_human(const char *in, const char *default_cc, char *out,
                    size_t size)
{
    char digits[32]; /* more than 15 digits is refused anyway */
    char res[E164_MAX + 1];
    char cc[4];
    const char *p, *end, *d, *national_cc;
    size_t nd = 0, len;
    bool plus = false;

    if (!in)
        return -1;
    end = in + strlen(in);
    while (is_space((unsigned char)*in))
        in++;
    while (end > in && is_space((unsigned char)end[-1]))
        end--;
    if (end - in >= 4 && prefix_ieq(in, "tel:"))
        in += 4;
    p = in;
    if (p < end && *p == '+') {
        plus = true;
        p++;
    }
    while (p < end) {
        unsigned char c = (unsigned char)*p;
        /* "+44 (0)20 ..." writes the national trunk prefix in brackets;
         * it is not part of the international number. */
        if (plus && end - p >= 3 && memcmp(p, "(0)", 3) == 0) {
            p += 3;
            continue;
        }
        if (is_digit(c)) {
            if (nd + 1 >= sizeof(digits))
                return -1;
            digits[nd++] = (char)c;
        } else if (!is_separator(c)) {
            return -1; /* letters, '+' inside, ';' parameters, '#', '*' */
        }
        p++;
    }
    digits[nd] = '\0';
    if (nd == 0)
        return -1;

    d = digits;
    national_cc = "";
    if (!plus) {
        bool have_cc = parse_cc(default_cc, cc) == 0;
        bool nanp = have_cc && strcmp(cc, "1") == 0;

        if (d[0] == '0' && d[1] == '0') {
            d += 2; /* ITU international prefix */
        } else if (nanp && strncmp(d, "011", 3) == 0) {
            d += 3; /* NANP international prefix */
        } else if (!have_cc) {
            return -1;
        } else if (nanp) {
            /* NANP national numbers have ten digits, optionally after
             * the "1" trunk prefix; area codes never start with 0 or 1. */
            if (nd == 11 && d[0] == '1')
                d++;
            else if (nd != 10)
                return -1;
            if (d[0] < '2')
                return -1;
            national_cc = cc;
        } else {
            if (d[0] == '0')
                d++; /* national trunk prefix */
            national_cc = cc;
        }
    }
    len = strlen(national_cc) + strlen(d);
    if (!*d || len > 15)
        return -1;
    res[0] = '+';
    memcpy(res + 1, national_cc, strlen(national_cc));
    memcpy(res + 1 + strlen(national_cc), d, strlen(d) + 1);
    if (!e164_valid(res))
        return -1;
    return put(out, size, res, strlen(res));
}

bool e164_has_prefix(const char *e164, const char *prefix)
{
    size_t n;

    if (!e164 || !prefix)
        return false;
    if (*e164 == '+')
        e164++;
    if (*prefix == '+')
        prefix++;
    n = strlen(prefix);
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!is_digit((unsigned char)prefix[i]))
            return false;
    return strncmp(e164, prefix, n) == 0;
}

/* ---- XEP-0106 ------------------------------------------------------ */

/*
 * The ten escapable characters and their sequences. Sequences are matched
 * in lowercase only: XEP-0106 says case is significant, and Prosody
 * leaves "\5C" alone.
 */
static const char escapable[] = " \"&'/:<>@\\";

/* The character a lowercase "\XX" at s stands for, or 0. */
static char escaped_char(const char *s)
{
    int c;

    if (s[0] != '\\' || !is_xdigit((unsigned char)s[1]) ||
        !is_xdigit((unsigned char)s[2]))
        return 0;
    if ((s[1] >= 'A' && s[1] <= 'F') || (s[2] >= 'A' && s[2] <= 'F'))
        return 0;
    c = hex_value(s[1]) * 16 + hex_value(s[2]);
    if (c == 0 || !strchr(escapable, c))
        return 0;
    return (char)c;
}

static bool emit(char *out, size_t size, size_t *o, const char *s, size_t n)
{
    if (*o + n >= size)
        return false;
    memcpy(out + *o, s, n);
    *o += n;
    return true;
}

int jid_escape_node(const char *in, char *out, size_t size)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;

    if (!in || !out || size == 0)
        return -1;
    while (*in) {
        char seq[3];
        unsigned char c = (unsigned char)*in;

        if (c == '\\' && escaped_char(in)) {
            /* An existing valid sequence: escape its backslash so that
             * unescaping gives the original text back. */
            if (!emit(out, size, &o, "\\5c", 3) ||
                !emit(out, size, &o, in + 1, 2))
                return -1;
            in += 3;
            continue;
        }
        if (c != '\\' && strchr(escapable, c)) {
            seq[0] = '\\';
            seq[1] = hex[c >> 4];
            seq[2] = hex[c & 15];
            if (!emit(out, size, &o, seq, 3))
                return -1;
        } else if (!emit(out, size, &o, in, 1)) {
            return -1;
        }
        in++;
    }
    out[o] = '\0';
    return 0;
}

int jid_unescape_node(const char *in, char *out, size_t size)
{
    size_t o = 0;

    if (!in || !out || size == 0)
        return -1;
    while (*in) {
        char c = escaped_char(in);
        if (c) {
            if (!emit(out, size, &o, &c, 1))
                return -1;
            in += 3;
        } else {
            /* Unknown "\XX" sequences stay as written; since the two
             * characters after the backslash are hex digits they cannot
             * start a sequence themselves, so copying one byte at a time
             * matches Prosody's non-overlapping gsub. */
            if (!emit(out, size, &o, in, 1))
                return -1;
            in++;
        }
    }
    out[o] = '\0';
    return 0;
}

/* ---- email --------------------------------------------------------- */

static bool local_char_ok(unsigned char c)
{
    if (c <= 0x20 || c >= 0x7f)
        return false;
    return !strchr("<>()[],;:\\\"@", c);
}

static bool domain_valid(const char *d, size_t len)
{
    size_t label = 0, labels = 0;
    bool numeric = true; /* the current label is all digits */

    if (len == 0 || len > 253)
        return false;
    for (size_t i = 0; i <= len; i++) {
        unsigned char c = i < len ? (unsigned char)d[i] : '.';
        if (c == '.') {
            if (label == 0 || label > 63 || d[i - 1] == '-')
                return false;
            labels++;
            if (i < len) {
                label = 0;
                numeric = true;
            }
            continue;
        }
        if (!is_alpha(c) && !is_digit(c) && c != '-')
            return false;
        if (c == '-' && label == 0)
            return false;
        if (!is_digit(c))
            numeric = false;
        label++;
    }
    /* A numeric top-level label means a dotted IP address. */
    return labels >= 2 && !numeric;
}

bool email_valid(const char *addr)
{
    const char *at;
    size_t len, llen;

    if (!addr)
        return false;
    len = strlen(addr);
    if (len > EMAIL_MAX)
        return false;
    at = strchr(addr, '@');
    if (!at || strchr(at + 1, '@'))
        return false;
    llen = (size_t)(at - addr);
    if (llen == 0 || llen > 64)
        return false;
    /* RFC 5321 dot-string: no leading, trailing or doubled dots. */
    if (addr[0] == '.' || at[-1] == '.')
        return false;
    for (size_t i = 0; i < llen; i++) {
        unsigned char c = (unsigned char)addr[i];
        if (!local_char_ok(c))
            return false;
        if (c == '.' && addr[i + 1] == '.')
            return false;
    }
    return domain_valid(at + 1, len - llen - 1);
}

int email_normalize(const char *in, char *out, size_t size)
{
    char buf[3 * EMAIL_MAX + 1];
    const char *end, *q;
    size_t n = 0;
    char *at;

    if (!in)
        return -1;
    end = in + strlen(in);
    while (is_space((unsigned char)*in))
        in++;
    while (end > in && is_space((unsigned char)end[-1]))
        end--;
    if (end - in >= 2 && *in == '<' && end[-1] == '>') {
        in++;
        end--;
    }
    if (end - in >= 7 && prefix_ieq(in, "mailto:")) {
        /* RFC 6068: headers after '?' are dropped and %XX decoded, as
         * XEP-0106 asks before a mailto: URI becomes a JID. */
        in += 7;
        q = memchr(in, '?', (size_t)(end - in));
        if (q)
            end = q;
        while (in < end) {
            if (n + 1 >= sizeof(buf))
                return -1;
            if (*in == '%' && end - in >= 3 &&
                is_xdigit((unsigned char)in[1]) &&
                is_xdigit((unsigned char)in[2])) {
                buf[n++] = (char)(hex_value(in[1]) * 16 + hex_value(in[2]));
                in += 3;
            } else {
                buf[n++] = *in++;
            }
        }
    } else {
        if ((size_t)(end - in) >= sizeof(buf))
            return -1;
        n = (size_t)(end - in);
        memcpy(buf, in, n);
    }
    buf[n] = '\0';
    /* A decoded %00 would hide the rest of the address from the checks. */
    if (strlen(buf) != n)
        return -1;
    at = strchr(buf, '@');
    if (!at)
        return -1;
    for (char *p = at + 1; *p; p++)
        *p = (char)to_lower((unsigned char)*p);
    if (!email_valid(buf))
        return -1;
    return put(out, size, buf, n);
}

const char *email_domain(const char *addr)
{
    if (!email_valid(addr))
        return NULL;
    return strchr(addr, '@') + 1;
}
