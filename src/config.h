/*
 * config: reads the libconfig file into plain structs, checks every key
 * (unknown keys, types, required keys, values) and reports each problem
 * as "FILE:LINE: KEY: why". Only config.c includes libconfig.h; the rest
 * of postern sees these structs. All strings are owned by the config.
 */
#ifndef POSTERN_CONFIG_H
#define POSTERN_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "util.h"

struct strlist {
    char **v;
    size_t n;
};

bool strlist_contains(const struct strlist *l, const char *s);
bool strlist_contains_ci(const struct strlist *l, const char *s);

struct limits_conf {
    unsigned per_user_per_minute;     /* 0 = unlimited; default 30 */
    unsigned per_user_per_day;        /* 0 = unlimited; default 500 */
    unsigned max_segments;            /* 0 = unlimited; default 10 */
    struct strlist allowed_countries; /* "+1", "+44"; empty = any */
};

struct provider_conf {
    char *name;                 /* sandbox | twilio | telnyx | vonage */
    char *api_url;              /* default per provider */
    char *account_sid;          /* twilio */
    char *auth_token;           /* twilio (secret; or auth_token_file) */
    char *api_key;              /* telnyx, vonage (secret; or api_key_file) */
    char *api_secret;           /* vonage (secret; or api_secret_file) */
    char *public_key;           /* telnyx webhook ed25519 key, base64 */
    char *signature_secret;     /* vonage (secret; or signature_secret_file) */
    char *messaging_profile_id; /* telnyx, optional */
    char *outbox_file; /* sandbox: JSON lines of outbound SMS, optional */
    double timeout;    /* seconds, default 15 */
    unsigned max_connections; /* per host, default 8 */
};

struct smtp_conf {
    char *host;       /* default 127.0.0.1 */
    int port;         /* default 587 */
    char *starttls;   /* required | optional | off; default required */
    char *user;       /* default "" (no AUTH) */
    char *password;   /* secret; or password_file */
    unsigned timeout; /* seconds, default 30 */
    unsigned workers; /* default 2 */
};

struct lmtp_conf {
    char *listen;            /* default 127.0.0.1:2424 */
    size_t max_message_size; /* bytes, default 10 MiB */
};

enum transport_kind { TRANSPORT_SMS, TRANSPORT_EMAIL };

struct gateway_conf {
    int line;        /* line of this entry in the file */
    char *transport; /* "sms" | "email" */
    enum transport_kind kind;
    char *jid;                      /* component JID, lower-case */
    char *secret;                   /* XEP-0114 secret (or secret_file) */
    struct strlist allowed_domains; /* required, non-empty */
    /* sms */
    struct strlist numbers;     /* E.164 numbers users may claim */
    char *default_country_code; /* for human-typed numbers; default "1" */
    struct provider_conf provider;
    struct limits_conf limits;
    /* email */
    char *mail_domain;
    char *default_subject; /* default "" (no Subject text) */
    struct smtp_conf smtp;
    struct lmtp_conf lmtp;
};

struct config {
    char *path;
    struct {
        int level;  /* enum log_level, default info */
        bool json;  /* format = "json" */
        char *file; /* default "" = stderr */
    } log;
    struct {
        char *url;           /* default redis://127.0.0.1:6379/0 */
        char *prefix;        /* default "postern" */
        unsigned timeout_ms; /* per command, default 2000 */
    } redis;
    struct {
        char *listen;     /* default 127.0.0.1:8080; "" disables */
        char *public_url; /* default "" (required for real providers) */
        size_t max_body;  /* default 65536 */
        unsigned timeout; /* seconds, default 10 */
    } http;
    struct {
        char *host; /* default 127.0.0.1 */
        int port;   /* default 5347 */
    } xmpp;
    struct {
        unsigned max_age;       /* seconds a message may retry, default 86400 */
        unsigned retry_base_ms; /* default 1000 */
        unsigned retry_cap_ms;  /* default 300000 */
    } queue;
    struct gateway_conf *gateways;
    size_t n_gateways;
};

/*
 * Loads and validates path. On success returns 0 and *out (free with
 * config_free). On failure returns -1 and appends one line per problem
 * to errors ("FILE:LINE: KEY: why\n"); *out is NULL.
 */
int config_load(const char *path, struct config **out, struct strbuf *errors);
void config_free(struct config *c);

/*
 * SIGHUP: copies what is safe to change at run time (log level, per-gateway
 * limits and allowed_domains) from fresh into live, matching gateways by
 * jid. Returns the number of gateways updated.
 */
int config_apply_reload(struct config *live, struct config *fresh);

#endif
