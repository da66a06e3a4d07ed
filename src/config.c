/*
 * config: owns the reading and checking of the configuration file. A
 * table of keys per group (the schema below) gives each key its type,
 * default, range, scope (sms or email gateway, SMS provider) and value
 * check; one generic walker applies the tables, so adding a key is one
 * line. Every problem found is reported, not only the first, as
 * "FILE:LINE: KEY: why", KEY being the libconfig path of the setting
 * (gateways.[0].provider.name, indexes from 0, as config_lookup() takes
 * them).
 *
 * It must never: let libconfig types escape this file (only config.c
 * includes libconfig.h), put a secret's value in a message, contact
 * anything (postern --check runs this and nothing else), or leave a
 * string NULL in a loaded config (absent strings are "").
 */
#include "config.h"

#include <errno.h>
#include <libconfig.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"
#include "netaddr.h"

#define SECRET_MAX (64 * 1024)
#define MiB (1024.0 * 1024.0)

enum vtype {
    V_STR,
    V_LEVEL,  /* string naming a log level, stored as int */
    V_FORMAT, /* "text" | "json", stored as bool json */
    V_INT,
    V_UINT,
    V_SIZE,
    V_DOUBLE,
    V_STRLIST,
    V_GROUP,
    V_GATEWAYS,
};

#define F_REQ 0x01      /* must be present when in scope */
#define F_SECRET 0x02   /* may come from KEY_file instead; never shown */
#define F_SMS 0x04      /* only in sms gateways */
#define F_EMAIL 0x08    /* only in email gateways */
#define F_LOWER 0x10    /* lower-cased before the check */
#define F_NONEMPTY 0x20 /* a list that must hold at least one entry */
#define F_HIDE 0x40     /* may hold a password: never shown either */

enum provider_id { P_SANDBOX, P_TWILIO, P_TELNYX, P_VONAGE, P_COUNT };
#define PB(p) (1u << (p))
#define P_REAL (PB(P_TWILIO) | PB(P_TELNYX) | PB(P_VONAGE))

static const char *const provider_names[P_COUNT] = {
    "sandbox",
    "twilio",
    "telnyx",
    "vonage",
};

/* Base URLs the adapters append their API paths to. */
static const char *const provider_urls[P_COUNT] = {
    "",
    "https://api.twilio.com",
    "https://api.telnyx.com",
    "https://rest.nexmo.com",
};

struct ctx;

/* NULL when s is acceptable, else why not (may point into x->why). */
typedef const char *check_fn(struct ctx *x, char *s);

struct key {
    const char *name;
    enum vtype type;
    size_t off; /* from the group's base struct */
    unsigned flags;
    unsigned providers;   /* provider keys: who may set it; 0 = any */
    unsigned required_by; /* provider keys: who must set it */
    const char *sdef;     /* string default ("" when NULL) */
    double ndef;          /* number default */
    double min, max;      /* numbers: inclusive range */
    check_fn *check;      /* strings and list elements */
    const struct key *sub;
    const char *hint; /* appended to "missing" */
};

struct ctx {
    const char *path;
    char *dir; /* of path: relative *_file names start there */
    struct strbuf *errs;
    unsigned nerr;
    int kind;     /* enum transport_kind of the gateway being read, or -1 */
    int provider; /* enum provider_id of the provider being read, or -1 */
    char why[256];
    char file[4096];
};

/* ---- reporting ---------------------------------------------------------- */

/*
 * libconfig names an included file as written in @include; show it from
 * the including file's directory, where it was looked for.
 */
static const char *setting_file(struct ctx *x, const config_setting_t *s)
{
    const char *f = s ? config_setting_source_file(s) : NULL;

    if (!f)
        return x->path;
    if (f[0] == '/' || !x->dir)
        return f;
    snprintf(x->file, sizeof(x->file), "%s/%s", x->dir, f);
    return x->file;
}

/* A top-level key has no enclosing group with a line; say line 1. */
static unsigned setting_line(const config_setting_t *s)
{
    unsigned line = s ? config_setting_source_line(s) : 0;
    return line ? line : 1;
}

static void report(struct ctx *x, const config_setting_t *s, const char *key,
                   const char *fmt, ...) PRINTF_LIKE(4, 5);

static void report(struct ctx *x, const config_setting_t *s, const char *key,
                   const char *fmt, ...)
{
    char why[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    sb_printf(x->errs, "%s:%u: %s: %s\n", setting_file(x, s), setting_line(s),
              key, why);
    x->nerr++;
}

/* A value as it may appear in a message: printable, at most 60 bytes. */
static const char *shown(const char *v, char *buf, size_t size)
{
    size_t o = 0;

    for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
        if (o + 8 >= size || o >= 60) {
            memcpy(buf + o, "...", 4);
            return buf;
        }
        if (*p < 0x20 || *p == 0x7f || *p == '"' || *p == '\\')
            o += (size_t)snprintf(buf + o, size - o, "\\x%02x", *p);
        else
            buf[o++] = (char)*p;
    }
    buf[o] = '\0';
    return buf;
}

static const char *type_name(int type)
{
    switch (type) {
    case CONFIG_TYPE_GROUP:
        return "a group { ... }";
    case CONFIG_TYPE_INT:
    case CONFIG_TYPE_INT64:
        return "an integer";
    case CONFIG_TYPE_FLOAT:
        return "a decimal number";
    case CONFIG_TYPE_STRING:
        return "a string";
    case CONFIG_TYPE_BOOL:
        return "a boolean";
    case CONFIG_TYPE_ARRAY:
        return "an array [ ... ]";
    case CONFIG_TYPE_LIST:
        return "a list ( ... )";
    default:
        return "nothing";
    }
}

static void type_error(struct ctx *x, const config_setting_t *s,
                       const char *key, const char *want)
{
    report(x, s, key, "expected %s, got %s", want,
           type_name(config_setting_type(s)));
}

/* ---- small helpers ------------------------------------------------------ */

static char *join(const char *path, const char *name)
{
    return *path ? xasprintf("%s.%s", path, name) : xstrdup(name);
}

static void lower(char *s)
{
    for (; *s; s++)
        if (*s >= 'A' && *s <= 'Z')
            *s = (char)(*s - 'A' + 'a');
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool has_ctl(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            return true;
    return false;
}

static bool has_space_or_ctl(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p <= 0x20 || *p == 0x7f)
            return true;
    return false;
}

static void secret_free(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

static unsigned edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    unsigned row[33];

    if (la > 32 || lb > 32)
        return 99;
    for (size_t j = 0; j <= lb; j++)
        row[j] = (unsigned)j;
    for (size_t i = 1; i <= la; i++) {
        unsigned diag = row[0];
        row[0] = (unsigned)i;
        for (size_t j = 1; j <= lb; j++) {
            unsigned up = row[j];
            unsigned best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

/* ---- value checks ------------------------------------------------------- */

static bool e164_ok(const char *s)
{
    size_t n = 0;

    if (s[0] != '+' || s[1] < '1' || s[1] > '9')
        return false;
    for (const char *p = s + 1; *p; p++, n++)
        if (!is_digit(*p))
            return false;
    return n >= 2 && n <= 15;
}

/* Lower-case letters, digits and inner hyphens; labels of 1..63. */
static bool domain_ok(const char *s)
{
    size_t n = strlen(s);
    const char *p = s;

    if (n == 0 || n > 253)
        return false;
    for (;;) {
        const char *dot = strchr(p, '.');
        size_t l = dot ? (size_t)(dot - p) : strlen(p);
        if (l == 0 || l > 63 || p[0] == '-' || p[l - 1] == '-')
            return false;
        for (size_t i = 0; i < l; i++)
            if (!((p[i] >= 'a' && p[i] <= 'z') || is_digit(p[i]) ||
                  p[i] == '-'))
                return false;
        if (!dot)
            return true;
        p = dot + 1;
    }
}

static const char *check_domain(struct ctx *x, char *s)
{
    (void)x;
    return domain_ok(s) ? NULL
                        : "not a valid domain (letters, digits, hyphens and "
                          "dots, like \"sms.example.org\")";
}

static const char *check_e164(struct ctx *x, char *s)
{
    (void)x;
    return e164_ok(s) ? NULL
                      : "not an E.164 number (\"+\" then 2 to 15 digits, "
                        "no leading 0)";
}

static const char *check_country(struct ctx *x, char *s)
{
    size_t n = 0;

    (void)x;
    if (s[0] == '+' && s[1] >= '1' && s[1] <= '9')
        for (n = 1; is_digit(s[n + 1]); n++)
            ;
    if (n == 0 || n > 3 || s[n + 1] != '\0')
        return "not a country calling code (like \"+1\" or \"+44\")";
    return NULL;
}

static const char *check_default_cc(struct ctx *x, char *s)
{
    size_t n = 0;
    const char *d = s[0] == '+' ? s + 1 : s;

    (void)x;
    if (d[0] >= '1' && d[0] <= '9')
        for (n = 1; is_digit(d[n]); n++)
            ;
    if (n == 0 || n > 3 || d[n] != '\0')
        return "not a country calling code (1 to 3 digits, like \"1\" or "
               "\"44\")";
    if (s[0] == '+')
        memmove(s, s + 1, strlen(s));
    return NULL;
}

static bool port_ok(const char *p)
{
    unsigned long v = 0;
    size_t n = 0;

    for (; is_digit(p[n]) && n < 6; n++)
        v = v * 10 + (unsigned long)(p[n] - '0');
    return n > 0 && p[n] == '\0' && v >= 1 && v <= 65535;
}

/*
 * The listeners parse with netaddr_parse_listen: --check accepts exactly
 * what they can bind, so a host name is refused here, not at start-up.
 */
static const char *check_listen(struct ctx *x, char *s)
{
    struct sockaddr_storage ss;
    socklen_t len;
    const char *colon = strrchr(s, ':');

    (void)x;
    if (s[0] != '[' && colon && memchr(s, ':', (size_t)(colon - s)))
        return "an IPv6 address needs brackets: [::1]:port";
    if (!colon || colon == s || (s[0] == '[' && colon[-1] != ']'))
        return "not host:port or [v6]:port";
    if (!port_ok(colon + 1))
        return "not host:port or [v6]:port (port 1..65535)";
    if (netaddr_parse_listen(s, &ss, &len) != 0)
        return "not host:port or [v6]:port with a numeric host (an IPv4 "
               "or IPv6 address, localhost or *): a name would need a DNS "
               "lookup";
    return NULL;
}

static const char *check_listen_or_empty(struct ctx *x, char *s)
{
    return *s ? check_listen(x, s) : NULL;
}

static const char *check_host(struct ctx *x, char *s)
{
    (void)x;
    if (!*s)
        return "must not be empty";
    return has_space_or_ctl(s) ? "not a host name or address" : NULL;
}

static const char *check_url(struct ctx *x, char *s)
{
    const char *rest;
    size_t n;

    (void)x;
    if (!*s)
        return NULL; /* the default */
    if (str_has_prefix(s, "https://"))
        rest = s + 8;
    else if (str_has_prefix(s, "http://"))
        rest = s + 7;
    else
        return "must start with https:// or http://";
    if (!*rest || *rest == '/' || has_space_or_ctl(s))
        return "not a URL";
    /* Paths are appended to it: "https://x/" + "/sms/..." is wrong. */
    n = strlen(s);
    while (n > (size_t)(rest - s) && s[n - 1] == '/')
        s[--n] = '\0';
    return NULL;
}

static const char *check_redis_url(struct ctx *x, char *s)
{
    (void)x;
    /* Never echo it: a Redis URL may carry a password. */
    if ((str_has_prefix(s, "redis://") && s[8]) ||
        (str_has_prefix(s, "unix:") && s[5]))
        return has_space_or_ctl(s) ? "contains spaces or control characters"
                                   : NULL;
    return "must be redis://[[user]:password@]host[:port][/db] or "
           "unix:/path[?db=N]";
}

static const char *check_word(struct ctx *x, char *s)
{
    (void)x;
    if (!*s)
        return "must not be empty";
    return has_space_or_ctl(s) ? "contains spaces or control characters" : NULL;
}

static const char *check_text(struct ctx *x, char *s)
{
    (void)x;
    return has_ctl(s) ? "contains control characters (CR, LF, ...)" : NULL;
}

static const char *one_of(struct ctx *x, const char *s,
                          const char *const *names, size_t n)
{
    size_t o = 0;

    for (size_t i = 0; i < n; i++)
        if (strcmp(s, names[i]) == 0)
            return NULL;
    o = (size_t)snprintf(x->why, sizeof(x->why), "must be one of");
    for (size_t i = 0; i < n && o < sizeof(x->why); i++)
        o += (size_t)snprintf(x->why + o, sizeof(x->why) - o, "%s \"%s\"",
                              i ? (i + 1 == n ? " or" : ",") : "", names[i]);
    return x->why;
}

static const char *check_transport(struct ctx *x, char *s)
{
    static const char *const names[] = {"sms", "email"};
    return one_of(x, s, names, ARRAY_SIZE(names));
}

static const char *check_provider(struct ctx *x, char *s)
{
    return one_of(x, s, provider_names, P_COUNT);
}

static const char *check_starttls(struct ctx *x, char *s)
{
    static const char *const names[] = {"required", "optional", "off"};
    return one_of(x, s, names, ARRAY_SIZE(names));
}

static const char *check_format(struct ctx *x, char *s)
{
    static const char *const names[] = {"text", "json"};
    return one_of(x, s, names, ARRAY_SIZE(names));
}

static const char *check_level(struct ctx *x, char *s)
{
    static const char *const names[] = {"error", "warning", "notice", "info",
                                        "debug"};
    return log_level_parse(s) < 0 ? one_of(x, s, names, ARRAY_SIZE(names))
                                  : NULL;
}

/* An ed25519 public key: 32 bytes, base64 (43 characters and one '='). */
static const char *check_ed25519(struct ctx *x, char *s)
{
    size_t n = strlen(s);

    (void)x;
    if (n == 44 && s[43] == '=')
        n = 43;
    if (n != 43)
        goto bad;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= 'a' && s[i] <= 'z') ||
              is_digit(s[i]) || s[i] == '+' || s[i] == '/'))
            goto bad;
    return NULL;
bad:
    return "not a base64 ed25519 public key (32 bytes, 44 characters)";
}

/* ---- the schema --------------------------------------------------------- */

#define CO(m) offsetof(struct config, m)
#define GO(m) offsetof(struct gateway_conf, m)

/* clang-format off */
static const struct key log_keys[] = {
    {.name = "level", .type = V_LEVEL, .off = CO(log.level), .sdef = "info",
     .check = check_level},
    {.name = "format", .type = V_FORMAT, .off = CO(log.json), .sdef = "text",
     .check = check_format},
    {.name = "file", .type = V_STR, .off = CO(log.file)},
    {.name = NULL},
};

static const struct key redis_keys[] = {
    {.name = "url", .type = V_STR, .off = CO(redis.url),
     .flags = F_HIDE, .sdef = "redis://127.0.0.1:6379/0",
     .check = check_redis_url},
    {.name = "prefix", .type = V_STR, .off = CO(redis.prefix),
     .sdef = "postern", .check = check_word},
    {.name = "timeout_ms", .type = V_UINT, .off = CO(redis.timeout_ms),
     .ndef = 2000, .min = 1, .max = 600000},
    {.name = NULL},
};

static const struct key http_keys[] = {
    {.name = "listen", .type = V_STR, .off = CO(http.listen),
     .sdef = "127.0.0.1:8080", .check = check_listen_or_empty},
    {.name = "public_url", .type = V_STR, .off = CO(http.public_url),
     .check = check_url},
    {.name = "max_body", .type = V_SIZE, .off = CO(http.max_body),
     .ndef = 65536, .min = 1024, .max = 16 * MiB},
    {.name = "timeout", .type = V_UINT, .off = CO(http.timeout), .ndef = 10,
     .min = 1, .max = 3600},
    {.name = NULL},
};

static const struct key xmpp_keys[] = {
    {.name = "host", .type = V_STR, .off = CO(xmpp.host), .sdef = "127.0.0.1",
     .check = check_host},
    {.name = "port", .type = V_INT, .off = CO(xmpp.port), .ndef = 5347,
     .min = 1, .max = 65535},
    {.name = NULL},
};

static const struct key queue_keys[] = {
    {.name = "max_age", .type = V_UINT, .off = CO(queue.max_age),
     .ndef = 86400, .min = 1, .max = 2147483647},
    {.name = "retry_base_ms", .type = V_UINT, .off = CO(queue.retry_base_ms),
     .ndef = 1000, .min = 1, .max = 86400000},
    {.name = "retry_cap_ms", .type = V_UINT, .off = CO(queue.retry_cap_ms),
     .ndef = 300000, .min = 1, .max = 86400000},
    {.name = NULL},
};

static const struct key provider_keys[] = {
    {.name = "name", .type = V_STR, .off = GO(provider.name), .flags = F_REQ,
     .check = check_provider},
    {.name = "api_url", .type = V_STR, .off = GO(provider.api_url),
     .providers = P_REAL, .check = check_url},
    {.name = "account_sid", .type = V_STR, .off = GO(provider.account_sid),
     .providers = PB(P_TWILIO), .required_by = PB(P_TWILIO),
     .check = check_word},
    {.name = "auth_token", .type = V_STR, .off = GO(provider.auth_token),
     .flags = F_SECRET, .providers = PB(P_TWILIO),
     .required_by = PB(P_TWILIO)},
    {.name = "api_key", .type = V_STR, .off = GO(provider.api_key),
     .flags = F_SECRET, .providers = PB(P_TELNYX) | PB(P_VONAGE),
     .required_by = PB(P_TELNYX) | PB(P_VONAGE)},
    {.name = "api_secret", .type = V_STR, .off = GO(provider.api_secret),
     .flags = F_SECRET, .providers = PB(P_VONAGE),
     .required_by = PB(P_VONAGE)},
    {.name = "public_key", .type = V_STR, .off = GO(provider.public_key),
     .providers = PB(P_TELNYX), .required_by = PB(P_TELNYX),
     .check = check_ed25519},
    {.name = "signature_secret", .type = V_STR,
     .off = GO(provider.signature_secret), .flags = F_SECRET,
     .providers = PB(P_VONAGE), .required_by = PB(P_VONAGE)},
    {.name = "messaging_profile_id", .type = V_STR,
     .off = GO(provider.messaging_profile_id), .providers = PB(P_TELNYX),
     .check = check_text},
    {.name = "outbox_file", .type = V_STR, .off = GO(provider.outbox_file),
     .providers = PB(P_SANDBOX)},
    {.name = "timeout", .type = V_DOUBLE, .off = GO(provider.timeout),
     .ndef = 15, .min = 0.1, .max = 600},
    {.name = "max_connections", .type = V_UINT,
     .off = GO(provider.max_connections), .ndef = 8, .min = 1, .max = 1024},
    {.name = NULL},
};

static const struct key limits_keys[] = {
    {.name = "per_user_per_minute", .type = V_UINT,
     .off = GO(limits.per_user_per_minute), .ndef = 30, .min = 0,
     .max = 1000000},
    {.name = "per_user_per_day", .type = V_UINT,
     .off = GO(limits.per_user_per_day), .ndef = 500, .min = 0,
     .max = 100000000},
    {.name = "max_segments", .type = V_UINT, .off = GO(limits.max_segments),
     .ndef = 10, .min = 0, .max = 1000},
    {.name = "allowed_countries", .type = V_STRLIST,
     .off = GO(limits.allowed_countries), .check = check_country},
    {.name = NULL},
};

static const struct key smtp_keys[] = {
    {.name = "host", .type = V_STR, .off = GO(smtp.host), .sdef = "127.0.0.1",
     .check = check_host},
    {.name = "port", .type = V_INT, .off = GO(smtp.port), .ndef = 587,
     .min = 1, .max = 65535},
    {.name = "starttls", .type = V_STR, .off = GO(smtp.starttls),
     .sdef = "required", .check = check_starttls},
    {.name = "user", .type = V_STR, .off = GO(smtp.user), .check = check_text},
    {.name = "password", .type = V_STR, .off = GO(smtp.password),
     .flags = F_SECRET},
    {.name = "timeout", .type = V_UINT, .off = GO(smtp.timeout), .ndef = 30,
     .min = 1, .max = 3600},
    {.name = "workers", .type = V_UINT, .off = GO(smtp.workers), .ndef = 2,
     .min = 1, .max = 64},
    {.name = NULL},
};

static const struct key lmtp_keys[] = {
    {.name = "listen", .type = V_STR, .off = GO(lmtp.listen),
     .sdef = "127.0.0.1:2424", .check = check_listen},
    {.name = "max_message_size", .type = V_SIZE,
     .off = GO(lmtp.max_message_size), .ndef = 10 * MiB, .min = 1024,
     .max = 1024 * MiB},
    {.name = NULL},
};

static const struct key gateway_keys[] = {
    {.name = "transport", .type = V_STR, .off = GO(transport), .flags = F_REQ,
     .check = check_transport},
    {.name = "jid", .type = V_STR, .off = GO(jid), .flags = F_REQ | F_LOWER,
     .check = check_domain},
    {.name = "secret", .type = V_STR, .off = GO(secret),
     .flags = F_REQ | F_SECRET},
    {.name = "allowed_domains", .type = V_STRLIST, .off = GO(allowed_domains),
     .flags = F_REQ | F_LOWER | F_NONEMPTY, .check = check_domain},
    {.name = "numbers", .type = V_STRLIST, .off = GO(numbers),
     .flags = F_REQ | F_SMS | F_NONEMPTY, .check = check_e164},
    {.name = "default_country_code", .type = V_STR,
     .off = GO(default_country_code), .flags = F_SMS, .sdef = "1",
     .check = check_default_cc},
    {.name = "provider", .type = V_GROUP, .flags = F_REQ | F_SMS,
     .sub = provider_keys},
    {.name = "limits", .type = V_GROUP, .flags = F_SMS, .sub = limits_keys},
    {.name = "mail_domain", .type = V_STR, .off = GO(mail_domain),
     .flags = F_REQ | F_EMAIL | F_LOWER, .check = check_domain},
    {.name = "default_subject", .type = V_STR, .off = GO(default_subject),
     .flags = F_EMAIL, .check = check_text},
    {.name = "smtp", .type = V_GROUP, .flags = F_EMAIL, .sub = smtp_keys},
    {.name = "lmtp", .type = V_GROUP, .flags = F_EMAIL, .sub = lmtp_keys},
    {.name = NULL},
};

static const struct key root_keys[] = {
    {.name = "log", .type = V_GROUP, .sub = log_keys},
    {.name = "redis", .type = V_GROUP, .sub = redis_keys},
    {.name = "http", .type = V_GROUP, .sub = http_keys},
    {.name = "xmpp", .type = V_GROUP, .sub = xmpp_keys},
    {.name = "queue", .type = V_GROUP, .sub = queue_keys},
    {.name = "gateways", .type = V_GATEWAYS, .flags = F_REQ,
     .hint = "at least one gateway is required"},
    {.name = NULL},
};
/* clang-format on */

/* ---- strlist ------------------------------------------------------------ */

bool strlist_contains(const struct strlist *l, const char *s)
{
    for (size_t i = 0; l && s && i < l->n; i++)
        if (strcmp(l->v[i], s) == 0)
            return true;
    return false;
}

bool strlist_contains_ci(const struct strlist *l, const char *s)
{
    for (size_t i = 0; l && s && i < l->n; i++)
        if (strcasecmp(l->v[i], s) == 0)
            return true;
    return false;
}

static void strlist_add(struct strlist *l, char *s)
{
    l->v = xrealloc(l->v, (l->n + 1) * sizeof(*l->v));
    l->v[l->n++] = s;
}

static void strlist_free(struct strlist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

static void strlist_swap(struct strlist *a, struct strlist *b)
{
    struct strlist t = *a;
    *a = *b;
    *b = t;
}

/* ---- defaults and freeing, both driven by the schema -------------------- */

static void apply_defaults(const struct key *keys, void *base)
{
    for (const struct key *k = keys; k->name; k++) {
        void *f = (char *)base + k->off;
        switch (k->type) {
        case V_STR:
            *(char **)f = xstrdup(k->sdef ? k->sdef : "");
            break;
        case V_LEVEL:
            *(int *)f = log_level_parse(k->sdef);
            break;
        case V_FORMAT:
            *(bool *)f = strcmp(k->sdef, "json") == 0;
            break;
        case V_INT:
            *(int *)f = (int)k->ndef;
            break;
        case V_UINT:
            *(unsigned *)f = (unsigned)k->ndef;
            break;
        case V_SIZE:
            *(size_t *)f = (size_t)k->ndef;
            break;
        case V_DOUBLE:
            *(double *)f = k->ndef;
            break;
        case V_STRLIST:
            memset(f, 0, sizeof(struct strlist));
            break;
        case V_GROUP:
            apply_defaults(k->sub, base);
            break;
        case V_GATEWAYS:
            break;
        }
    }
}

static void free_fields(const struct key *keys, void *base)
{
    for (const struct key *k = keys; k->name; k++) {
        void *f = (char *)base + k->off;
        if (k->type == V_STR) {
            if (k->flags & F_SECRET)
                secret_free(*(char **)f);
            else
                free(*(char **)f);
            *(char **)f = NULL;
        } else if (k->type == V_STRLIST) {
            strlist_free(f);
        } else if (k->type == V_GROUP) {
            free_fields(k->sub, base);
        }
    }
}

void config_free(struct config *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n_gateways; i++)
        free_fields(gateway_keys, &c->gateways[i]);
    free(c->gateways);
    free_fields(root_keys, c);
    free(c->path);
    free(c);
}

/* ---- the walker --------------------------------------------------------- */

static void parse_group(struct ctx *x, const config_setting_t *grp,
                        const struct key *keys, void *base, const char *path,
                        const config_setting_t *parent);
static void parse_gateways(struct ctx *x, const config_setting_t *s,
                           struct config *c);

static const struct key *find_key(const struct key *keys, const char *name,
                                  bool *from_file)
{
    size_t n = strlen(name);

    *from_file = false;
    for (const struct key *k = keys; k->name; k++)
        if (strcmp(k->name, name) == 0)
            return k;
    if (n > 5 && strcmp(name + n - 5, "_file") == 0) {
        for (const struct key *k = keys; k->name; k++) {
            if ((k->flags & F_SECRET) && strlen(k->name) == n - 5 &&
                strncmp(k->name, name, n - 5) == 0) {
                *from_file = true;
                return k;
            }
        }
    }
    return NULL;
}

static void unknown_key(struct ctx *x, const config_setting_t *s,
                        const char *kp, const struct key *keys,
                        const char *name)
{
    const char *best = NULL;
    unsigned bestd = 3;

    for (const struct key *k = keys; k->name; k++) {
        unsigned d = edit_distance(name, k->name);
        if (d < bestd) {
            bestd = d;
            best = k->name;
        }
    }
    if (best)
        report(x, s, kp, "unknown key (did you mean \"%s\"?)", best);
    else
        report(x, s, kp, "unknown key");
}

/* Why a key present here does not belong, or NULL. */
static const char *out_of_scope(struct ctx *x, const struct key *k)
{
    if ((k->flags & F_SMS) && x->kind == TRANSPORT_EMAIL)
        return "only for sms gateways";
    if ((k->flags & F_EMAIL) && x->kind == TRANSPORT_SMS)
        return "only for email gateways";
    if (k->providers && x->provider >= 0 && !(k->providers & PB(x->provider))) {
        snprintf(x->why, sizeof(x->why), "not used by provider \"%s\"",
                 provider_names[x->provider]);
        return x->why;
    }
    return NULL;
}

/* Scope known and matching: unknown scope never makes a key required. */
static bool in_known_scope(const struct ctx *x, const struct key *k)
{
    if ((k->flags & F_SMS) && x->kind != TRANSPORT_SMS)
        return false;
    if ((k->flags & F_EMAIL) && x->kind != TRANSPORT_EMAIL)
        return false;
    return true;
}

static bool required(const struct ctx *x, const struct key *k)
{
    if (k->required_by)
        return x->provider >= 0 && (k->required_by & PB(x->provider));
    return (k->flags & F_REQ) && in_known_scope(x, k);
}

static int provider_of(const char *name)
{
    for (int i = 0; i < P_COUNT; i++)
        if (name && strcmp(name, provider_names[i]) == 0)
            return i;
    return -1;
}

/* Returned owned (free with secret_free), or NULL with the error reported. */
static char *read_secret_file(struct ctx *x, const config_setting_t *s,
                              const char *kp, const char *file)
{
    char show[128];
    char *full, *buf;
    size_t n;
    FILE *f;
    int e = 0;

    if (!*file) {
        report(x, s, kp, "must not be empty");
        return NULL;
    }
    full = file[0] == '/' ? xstrdup(file) : xasprintf("%s/%s", x->dir, file);
    f = fopen(full, "r");
    free(full);
    if (!f) {
        report(x, s, kp, "cannot read \"%s\": %s",
               shown(file, show, sizeof(show)), strerror(errno));
        return NULL;
    }
    buf = xmalloc(SECRET_MAX + 1);
    n = fread(buf, 1, SECRET_MAX + 1, f);
    if (ferror(f))
        e = errno ? errno : EIO;
    fclose(f);
    if (e) {
        report(x, s, kp, "cannot read \"%s\": %s",
               shown(file, show, sizeof(show)), strerror(e));
        goto fail;
    }
    if (n > SECRET_MAX) {
        report(x, s, kp, "\"%s\" is larger than %d bytes",
               shown(file, show, sizeof(show)), SECRET_MAX);
        goto fail;
    }
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        n--;
    buf[n] = '\0';
    if (n == 0) {
        report(x, s, kp, "\"%s\" is empty", shown(file, show, sizeof(show)));
        goto fail;
    }
    if (strlen(buf) != n || strchr(buf, '\n') || strchr(buf, '\r')) {
        report(x, s, kp, "\"%s\" must hold the secret on one line",
               shown(file, show, sizeof(show)));
        goto fail;
    }
    char *out = xstrdup(buf);
    explicit_bzero(buf, SECRET_MAX + 1);
    free(buf);
    return out;
fail:
    explicit_bzero(buf, SECRET_MAX + 1);
    free(buf);
    return NULL;
}

static void read_string(struct ctx *x, const struct key *k,
                        const config_setting_t *s, bool from_file, void *f,
                        const char *kp)
{
    char show[128];
    const char *why;
    char *val;

    if (config_setting_type(s) != CONFIG_TYPE_STRING) {
        type_error(x, s, kp, "a string");
        return;
    }
    if (from_file) {
        val = read_secret_file(x, s, kp, config_setting_get_string(s));
        if (!val)
            return;
    } else {
        val = xstrdup(config_setting_get_string(s));
    }
    if (k->flags & F_LOWER)
        lower(val);
    if (!*val && required(x, k)) {
        report(x, s, kp, "must not be empty");
        goto drop;
    }
    why = k->check ? k->check(x, val) : NULL;
    if (why) {
        /* Secrets carry no check, so val is never a secret here. */
        if (k->flags & F_HIDE)
            report(x, s, kp, "%s", why);
        else
            report(x, s, kp, "\"%s\": %s", shown(val, show, sizeof(show)), why);
        goto drop;
    }
    switch (k->type) {
    case V_LEVEL:
        *(int *)f = log_level_parse(val);
        free(val);
        break;
    case V_FORMAT:
        *(bool *)f = strcmp(val, "json") == 0;
        free(val);
        break;
    default:
        if (k->flags & F_SECRET)
            secret_free(*(char **)f);
        else
            free(*(char **)f);
        *(char **)f = val;
        break;
    }
    return;
drop:
    if (k->flags & F_SECRET)
        secret_free(val);
    else
        free(val);
}

static void read_number(struct ctx *x, const struct key *k,
                        const config_setting_t *s, void *f, const char *kp)
{
    int t = config_setting_type(s);
    bool is_int = t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64;

    if (k->type == V_DOUBLE) {
        double d;
        if (!is_int && t != CONFIG_TYPE_FLOAT) {
            type_error(x, s, kp, "a number");
            return;
        }
        d = is_int ? (double)config_setting_get_int64(s)
                   : config_setting_get_float(s);
        if (!(d >= k->min && d <= k->max)) {
            report(x, s, kp, "%g is out of range (%g to %g)", d, k->min,
                   k->max);
            return;
        }
        *(double *)f = d;
        return;
    }
    if (!is_int) {
        type_error(x, s, kp, "an integer");
        return;
    }
    long long v = config_setting_get_int64(s);
    if ((double)v < k->min || (double)v > k->max) {
        report(x, s, kp, "%lld is out of range (%lld to %lld)", v,
               (long long)k->min, (long long)k->max);
        return;
    }
    if (k->type == V_INT)
        *(int *)f = (int)v;
    else if (k->type == V_UINT)
        *(unsigned *)f = (unsigned)v;
    else
        *(size_t *)f = (size_t)v;
}

static void read_strlist(struct ctx *x, const struct key *k,
                         const config_setting_t *s, struct strlist *l,
                         const char *kp)
{
    char show[128];
    int t = config_setting_type(s);
    int n;

    if (t != CONFIG_TYPE_ARRAY && t != CONFIG_TYPE_LIST) {
        type_error(x, s, kp, "a list of strings [ \"...\", ... ]");
        return;
    }
    n = config_setting_length(s);
    if (n == 0 && (k->flags & F_NONEMPTY)) {
        report(x, s, kp, "must list at least one entry");
        return;
    }
    strlist_free(l);
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        char *ep = xasprintf("%s.[%d]", kp, i);
        if (config_setting_type(e) != CONFIG_TYPE_STRING) {
            type_error(x, e, ep, "a string");
        } else {
            char *val = xstrdup(config_setting_get_string(e));
            const char *why;
            if (k->flags & F_LOWER)
                lower(val);
            why = k->check ? k->check(x, val) : NULL;
            if (why) {
                report(x, e, ep, "\"%s\": %s", shown(val, show, sizeof(show)),
                       why);
                free(val);
            } else if (strlist_contains(l, val)) {
                report(x, e, ep, "\"%s\" is listed twice",
                       shown(val, show, sizeof(show)));
                free(val);
            } else {
                strlist_add(l, val);
            }
        }
        free(ep);
    }
}

static void read_value(struct ctx *x, const struct key *k,
                       const config_setting_t *s, bool from_file, void *base,
                       const char *kp)
{
    void *f = (char *)base + k->off;

    switch (k->type) {
    case V_STR:
    case V_LEVEL:
    case V_FORMAT:
        read_string(x, k, s, from_file, f, kp);
        break;
    case V_INT:
    case V_UINT:
    case V_SIZE:
    case V_DOUBLE:
        read_number(x, k, s, f, kp);
        break;
    case V_STRLIST:
        read_strlist(x, k, s, f, kp);
        break;
    case V_GROUP:
        if (!config_setting_is_group(s)) {
            type_error(x, s, kp, "a group { ... }");
            break;
        }
        parse_group(x, s, k->sub, base, kp, NULL);
        break;
    case V_GATEWAYS:
        parse_gateways(x, s, base);
        break;
    }
}

/*
 * grp NULL: the group is absent; only its required keys are reported,
 * at parent's line. The provider group's keys depend on its name, so that
 * is looked at first.
 */
static void parse_group(struct ctx *x, const config_setting_t *grp,
                        const struct key *keys, void *base, const char *path,
                        const config_setting_t *parent)
{
    int saved_provider = x->provider;

    if (keys == provider_keys) {
        const char *name = NULL;
        if (grp)
            config_setting_lookup_string(grp, "name", &name);
        x->provider = provider_of(name);
    }
    for (int i = 0; grp && i < config_setting_length(grp); i++) {
        const config_setting_t *s = config_setting_get_elem(grp, (unsigned)i);
        const char *name = config_setting_name(s);
        bool from_file;
        const struct key *k = find_key(keys, name, &from_file);
        char *kp = join(path, name);
        const char *why;

        if (!k) {
            unknown_key(x, s, kp, keys, name);
        } else if ((why = out_of_scope(x, k)) != NULL) {
            report(x, s, kp, "%s", why);
        } else if (from_file && config_setting_get_member(grp, k->name)) {
            report(x, s, kp, "set either %s or %s, not both", k->name, name);
        } else {
            read_value(x, k, s, from_file, base, kp);
        }
        free(kp);
    }
    for (const struct key *k = keys; k->name; k++) {
        char *kp;
        bool present;

        if (!grp) {
            present = false;
        } else {
            char *fname = xasprintf("%s_file", k->name);
            present = config_setting_get_member(grp, k->name) ||
                      ((k->flags & F_SECRET) &&
                       config_setting_get_member(grp, fname));
            free(fname);
        }
        if (present || !in_known_scope(x, k))
            continue;
        kp = join(path, k->name);
        if (required(x, k)) {
            const config_setting_t *at = grp ? grp : parent;
            if (k->flags & F_SECRET)
                report(x, at, kp, "missing (set %s or %s_file)%s%s%s", k->name,
                       k->name, k->required_by ? ": provider \"" : "",
                       k->required_by ? provider_names[x->provider] : "",
                       k->required_by ? "\" needs it" : "");
            else if (k->required_by)
                report(x, at, kp, "missing: provider \"%s\" needs it",
                       provider_names[x->provider]);
            else if (k->hint)
                report(x, at, kp, "missing (%s)", k->hint);
            else
                report(x, at, kp, "missing");
        } else if (k->type == V_GROUP) {
            parse_group(x, NULL, k->sub, base, kp, grp ? grp : parent);
        }
        free(kp);
    }
    x->provider = saved_provider;
}

static const config_setting_t *member(const config_setting_t *g,
                                      const char *name)
{
    return g ? config_setting_get_member(g, name) : NULL;
}

/* Checks that need several keys of one gateway at once. */
static void check_gateway(struct ctx *x, const config_setting_t *g,
                          struct gateway_conf *gw, const char *path)
{
    if (gw->kind == TRANSPORT_SMS) {
        int p = provider_of(gw->provider.name);
        if (p >= 0 && !*gw->provider.api_url) {
            free(gw->provider.api_url);
            gw->provider.api_url = xstrdup(provider_urls[p]);
        }
    }
    if (gw->kind == TRANSPORT_EMAIL) {
        const config_setting_t *smtp = member(g, "smtp");
        bool user = *gw->smtp.user != '\0';
        bool pass = *gw->smtp.password != '\0';
        /* A password_file that failed to read was reported already. */
        if (user && !pass && !member(smtp, "password_file")) {
            char *kp = xasprintf("%s.smtp.password", path);
            report(x, smtp, kp,
                   "missing (set password or password_file): smtp.user is "
                   "set");
            free(kp);
        } else if (pass && !user) {
            const config_setting_t *s = member(smtp, "password");
            char *kp =
                xasprintf("%s.smtp.%s", path, s ? "password" : "password_file");
            report(x, s ? s : member(smtp, "password_file"), kp,
                   "set but smtp.user is empty");
            free(kp);
        }
    }
}

static void parse_gateways(struct ctx *x, const config_setting_t *s,
                           struct config *c)
{
    int n;

    if (!config_setting_is_list(s)) {
        type_error(x, s, "gateways", "a list ( { ... }, ... )");
        return;
    }
    n = config_setting_length(s);
    if (n == 0) {
        report(x, s, "gateways", "empty (at least one gateway is required)");
        return;
    }
    c->gateways = xcalloc((size_t)n, sizeof(*c->gateways));
    for (int i = 0; i < n; i++) {
        const config_setting_t *g = config_setting_get_elem(s, (unsigned)i);
        struct gateway_conf *gw = &c->gateways[c->n_gateways++];
        char *path = xasprintf("gateways.[%d]", i);
        const char *transport = NULL;

        apply_defaults(gateway_keys, gw);
        gw->line = (int)setting_line(g);
        if (!config_setting_is_group(g)) {
            type_error(x, g, path, "a group { ... }");
            free(path);
            continue;
        }
        config_setting_lookup_string(g, "transport", &transport);
        if (transport && strcmp(transport, "sms") == 0)
            x->kind = TRANSPORT_SMS;
        else if (transport && strcmp(transport, "email") == 0)
            x->kind = TRANSPORT_EMAIL;
        else
            x->kind = -1;
        gw->kind = x->kind == TRANSPORT_EMAIL ? TRANSPORT_EMAIL : TRANSPORT_SMS;
        parse_group(x, g, gateway_keys, gw, path, NULL);
        check_gateway(x, g, gw, path);
        x->kind = -1;

        const config_setting_t *js = member(g, "jid");
        for (size_t j = 0; js && *gw->jid && j + 1 < c->n_gateways; j++) {
            if (strcmp(c->gateways[j].jid, gw->jid) == 0) {
                char *kp = xasprintf("%s.jid", path);
                report(x, js, kp, "\"%s\" is already used by gateways.[%zu]",
                       gw->jid, j);
                free(kp);
                break;
            }
        }
        free(path);
    }
}

static const config_setting_t *lmtp_listen_setting(const config_setting_t *root,
                                                   size_t i)
{
    const config_setting_t *gws = member(root, "gateways");
    const config_setting_t *g =
        gws ? config_setting_get_elem(gws, (unsigned)i) : NULL;
    return member(member(g, "lmtp"), "listen");
}

/*
 * The gateway really takes lmtp.listen: its value was accepted (a rejected
 * value left the default in place, which must not look like a clash).
 */
static bool lmtp_listen_taken(const config_setting_t *root,
                              const struct config *c, size_t i)
{
    const config_setting_t *s = lmtp_listen_setting(root, i);
    const char *v = s ? config_setting_get_string(s) : NULL;
    return !s || (v && strcmp(v, c->gateways[i].lmtp.listen) == 0);
}

/* Checks that span groups: run after the whole file has been read. */
static void check_global(struct ctx *x, const config_t *cf, struct config *c)
{
    const config_setting_t *root = config_root_setting(cf);
    const config_setting_t *http = member(root, "http");
    const config_setting_t *queue = member(root, "queue");
    bool webhooks_reported = false;

    if (c->queue.retry_cap_ms < c->queue.retry_base_ms) {
        const config_setting_t *s = member(queue, "retry_cap_ms");
        report(x, s ? s : queue,
               s ? "queue.retry_cap_ms" : "queue.retry_base_ms",
               "retry_cap_ms (%u) is below retry_base_ms (%u)",
               c->queue.retry_cap_ms, c->queue.retry_base_ms);
    }
    for (size_t i = 0; i < c->n_gateways && !webhooks_reported; i++) {
        const struct gateway_conf *gw = &c->gateways[i];
        int p = provider_of(gw->provider.name);
        if (gw->kind != TRANSPORT_SMS || p < 0 || !(PB(p) & P_REAL))
            continue;
        /* Real providers call us back: without these, nothing arrives. */
        if (!*c->http.listen) {
            report(x, member(http, "listen"), "http.listen",
                   "must not be empty: provider \"%s\" of gateways.[%zu] "
                   "sends webhooks",
                   gw->provider.name, i);
            webhooks_reported = true;
        }
        if (!*c->http.public_url) {
            const config_setting_t *s = member(http, "public_url");
            report(x, s ? s : (http ? http : root), "http.public_url",
                   "%s: provider \"%s\" of gateways.[%zu] sends webhooks "
                   "there",
                   s ? "must not be empty" : "missing", gw->provider.name, i);
            webhooks_reported = true;
        }
    }
    for (size_t i = 0; i < c->n_gateways; i++) {
        const struct gateway_conf *gw = &c->gateways[i];
        const config_setting_t *s = lmtp_listen_setting(root, i);
        const char *clash = NULL;

        if (gw->kind != TRANSPORT_EMAIL || !lmtp_listen_taken(root, c, i))
            continue;
        if (strcmp(gw->lmtp.listen, c->http.listen) == 0)
            clash = "http.listen";
        for (size_t j = 0; !clash && j < i; j++)
            if (c->gateways[j].kind == TRANSPORT_EMAIL &&
                lmtp_listen_taken(root, c, j) &&
                strcmp(c->gateways[j].lmtp.listen, gw->lmtp.listen) == 0)
                clash = "another email gateway's lmtp.listen";
        if (clash) {
            char *kp = xasprintf("gateways.[%zu].lmtp.listen", i);
            report(x,
                   s ? s
                     : config_setting_get_elem(member(root, "gateways"),
                                               (unsigned)i),
                   kp, "\"%s\" is also %s", gw->lmtp.listen, clash);
            free(kp);
        }
    }
}

static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');

    if (!slash)
        return xstrdup(".");
    if (slash == path)
        return xstrdup("/");
    return xstrndup(path, (size_t)(slash - path));
}

int config_load(const char *path, struct config **out, struct strbuf *errors)
{
    struct ctx x;
    struct config *c;
    config_t cf;
    FILE *f;

    *out = NULL;
    memset(&x, 0, sizeof(x));
    x.path = path;
    x.errs = errors;
    x.kind = -1;
    x.provider = -1;

    f = fopen(path, "r");
    if (!f) {
        sb_printf(errors, "%s: cannot read: %s\n", path, strerror(errno));
        return -1;
    }
    x.dir = dir_of(path);
    config_init(&cf);
    /* @include "x.conf" is relative to this file, not to the cwd. */
    config_set_include_dir(&cf, x.dir);
    if (config_read(&cf, f) != CONFIG_TRUE) {
        /* Only an included file has a name here: the main one is a FILE. */
        const char *ef = config_error_file(&cf);
        if (ef && ef[0] != '/') {
            snprintf(x.file, sizeof(x.file), "%s/%s", x.dir, ef);
            ef = x.file;
        }
        if (config_error_type(&cf) == CONFIG_ERR_FILE_IO)
            sb_printf(errors, "%s: cannot read: %s\n", ef ? ef : path,
                      config_error_text(&cf));
        else
            sb_printf(errors, "%s:%d: syntax error: %s\n", ef ? ef : path,
                      config_error_line(&cf), config_error_text(&cf));
        fclose(f);
        config_destroy(&cf);
        free(x.dir);
        return -1;
    }
    fclose(f);

    c = xcalloc(1, sizeof(*c));
    c->path = xstrdup(path);
    apply_defaults(root_keys, c);
    parse_group(&x, config_root_setting(&cf), root_keys, c, "", NULL);
    check_global(&x, &cf, c);
    config_destroy(&cf);
    free(x.dir);
    if (x.nerr) {
        config_free(c);
        return -1;
    }
    *out = c;
    return 0;
}

int config_apply_reload(struct config *live, struct config *fresh)
{
    int updated = 0;

    if (!live || !fresh)
        return 0;
    live->log.level = fresh->log.level;
    log_set_level(live->log.level);
    for (size_t i = 0; i < live->n_gateways; i++) {
        struct gateway_conf *l = &live->gateways[i];
        for (size_t j = 0; j < fresh->n_gateways; j++) {
            struct gateway_conf *f = &fresh->gateways[j];
            if (f->kind != l->kind || strcmp(f->jid, l->jid) != 0)
                continue;
            /* Swapped, not copied: fresh frees the old lists. */
            strlist_swap(&l->allowed_domains, &f->allowed_domains);
            l->limits.per_user_per_minute = f->limits.per_user_per_minute;
            l->limits.per_user_per_day = f->limits.per_user_per_day;
            l->limits.max_segments = f->limits.max_segments;
            strlist_swap(&l->limits.allowed_countries,
                         &f->limits.allowed_countries);
            updated++;
            break;
        }
    }
    return updated;
}
