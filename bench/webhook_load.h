/*
 * webhook_load: a blocking curl-multi client that POSTs n Twilio-shaped
 * inbound SMS webhooks ("w<seq> ..." bodies, unique MessageSids), signed
 * with X-Twilio-Signature when an auth token is given, with `concurrency`
 * requests in flight over keep-alive connections. Run it on a thread of
 * its own; it touches nothing shared except the caller's sent_at array
 * and the cancel flag.
 */
#ifndef POSTERN_BENCH_WEBHOOK_LOAD_H
#define POSTERN_BENCH_WEBHOOK_LOAD_H

#include <stdatomic.h>
#include <stddef.h>

struct wh_conf {
    const char *url;        /* POSTed to */
    const char *sign_url;   /* signed URL; NULL: url */
    const char *auth_token; /* NULL: unsigned */
    const char *account_sid;
    const char *to; /* the gateway's number, E.164 */
    size_t n;
    unsigned concurrency;
    double *sent_at;     /* n slots (bench_now at request start) or NULL */
    atomic_bool *cancel; /* stop early when set; may be NULL */
};

struct wh_stats {
    size_t ok;        /* 2xx */
    size_t other;     /* any other status */
    size_t errors;    /* transport errors */
    long first_other; /* first non-2xx status, 0 if none */
    double t_start, t_end;
};

/* Returns 0 when every request got a 2xx. */
int webhook_run(const struct wh_conf *c, struct wh_stats *st);

/*
 * X-Twilio-Signature (protocol-facts 1.5) of a form POST whose decoded
 * parameters are names[i]=values[i]: base64(HMAC-SHA1(token, url + each
 * name and value, sorted by name, then value)). out gets 28 chars + NUL.
 * Repeated identical pairs are not de-duplicated (the load never sends
 * any). Returns 0, or -1 when out is too small or n too large.
 */
int webhook_twilio_sign(const char *token, const char *url,
                        const char *const *names, const char *const *values,
                        size_t n, char *out, size_t size);

#endif
