/*
 * smtp_out: outbound mail through the configured relay (SPEC §5), with
 * libESMTP 1.1 on worker threads (libESMTP blocks for a whole session).
 * Only smtp_out.c includes libesmtp.h / auth-client.h.
 *
 * Messages are queued on the loop thread; while fewer sessions run than
 * conf->workers, a session job takes up to SMTP_OUT_BATCH queued messages
 * and sends them over one connection (one libESMTP session per thread,
 * never shared). Each message has one envelope recipient.
 *
 * Outcome per message (done runs on the loop thread, exactly once, never
 * from inside smtp_out_send):
 *   err NULL       the relay answered 2xx after DATA;
 *   temporary      4xx at any step, connection refused or dropped, a
 *                  timeout (every libESMTP timeout is conf->timeout
 *                  seconds, per read), STARTTLS required but not offered
 *                  or its certificate refused, AUTH refused (an operator
 *                  problem: the mail is kept and retried), shutdown;
 *   permanent      5xx to MAIL FROM, RCPT TO or DATA, server text in
 *                  err->msg (COND_ITEM_NOT_FOUND for a refused recipient,
 *                  COND_NOT_ACCEPTABLE otherwise).
 * Temporary errors carry COND_REMOTE_SERVER_TIMEOUT.
 *
 * TLS (conf->starttls):
 *   "required"  STARTTLS must be offered and the certificate must verify
 *               against the system trust store (OpenSSL's default paths,
 *               so SSL_CERT_FILE / SSL_CERT_DIR apply) and match
 *               conf->host (DNS name or IP address);
 *   "optional"  opportunistic (RFC 7435): STARTTLS when offered, the
 *               certificate is not checked, plain text otherwise;
 *   "off"       never STARTTLS.
 * TLS 1.2 only: libESMTP 1.1 can stall after a TLS 1.3 handshake (a
 * NewSessionTicket read before EHLO is flushed), see make_ssl_ctx().
 * AUTH PLAIN or LOGIN with conf->user/password when user is non-empty
 * (user and password at most 255 bytes each).
 *
 * The data must be a whole RFC 5322 message with CRLF line ends and lines
 * of at most 998 octets; libESMTP dot-stuffs it and adds Date, From and
 * Message-Id headers only when the message has none.
 *
 * Known limit: libESMTP's connect() has no timeout of its own, so a relay
 * that drops SYNs holds a worker for the kernel's connect timeout.
 */
#ifndef POSTERN_SMTP_OUT_H
#define POSTERN_SMTP_OUT_H

#include <stddef.h>

#include "config.h"
#include "util.h"

struct event_base;
struct smtp_out;

/* Messages one session sends at most. */
#define SMTP_OUT_BATCH 10
/* Largest message accepted (bytes). */
#define SMTP_OUT_MAX_DATA (64u * 1024 * 1024)

struct smtp_msg {
    const char *mail_from; /* envelope sender; "" for the null path <> */
    const char *rcpt;      /* one envelope recipient */
    const char *data;      /* full RFC 5322 message, CRLF line ends */
    size_t len;
};

/* err NULL: accepted by the relay; else see above. err is borrowed. */
typedef void smtp_done_fn(void *arg, const struct error *err);

/*
 * base, conf and helo_name are borrowed for the call only (copied).
 * helo_name NULL or "": the host name. Starts conf->workers threads.
 * Returned owned (free with smtp_out_free); NULL with err on bad config.
 */
struct smtp_out *smtp_out_new(struct event_base *base,
                              const struct smtp_conf *conf,
                              const char *helo_name, struct error *err);

/*
 * Copies m. Returns 0 and later calls done(arg, ...) exactly once, never
 * from inside this call; or returns -1 with err filled (bad address, CR/LF
 * or control characters in an address, too big, shutting down) and never
 * calls done.
 */
int smtp_out_send(struct smtp_out *so, const struct smtp_msg *m,
                  smtp_done_fn *done, void *arg, struct error *err);

/* Messages accepted by smtp_out_send whose done has not run yet. */
size_t smtp_out_inflight(const struct smtp_out *so);

/*
 * Completes queued messages that no session has taken with a temporary
 * "shut down" error, waits for the sessions already running (at most
 * about the timeout) and reports their real outcome, then frees. Every
 * done runs before it returns. Not from inside a done callback (aborts).
 * NULL-safe.
 */
void smtp_out_free(struct smtp_out *so);

#endif
