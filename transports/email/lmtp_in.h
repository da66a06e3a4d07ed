/*
 * lmtp_in: an LMTP server (RFC 2033) on libevent bufferevents, for the MTA
 * that hands postern the mail of its domain. Protocol only: whether a
 * recipient exists and what happens to a message are the callbacks'
 * business. Loop thread only.
 */
#ifndef POSTERN_LMTP_IN_H
#define POSTERN_LMTP_IN_H

#include <stdbool.h>
#include <stddef.h>

#include "util.h"

struct event_base;
struct lmtp_server;

/* Limits of one server (the defaults lmtp_server_new uses). */
#define LMTP_MAX_LINE 4096 /* command line, CRLF included */
#define LMTP_MAX_RCPTS 100 /* accepted recipients per transaction */
#define LMTP_MAX_CONNS 64  /* further clients get 421 and are closed */
#define LMTP_IDLE_TIMEOUT                                                      \
    300 /* seconds without input (not while a                                  \
           callback is pending) */

enum lmtp_rcpt_result {
    LMTP_RCPT_OK,
    LMTP_RCPT_UNKNOWN, /* 550 5.1.1 */
    LMTP_RCPT_TEMPFAIL /* 451 4.3.0 */
};
typedef void lmtp_rcpt_done_fn(void *ctx, enum lmtp_rcpt_result r);

/*
 * Per DATA: results[i] for rcpts[i]. code 0 (or 2xx) = delivered
 * (250 2.0.0); else an SMTP code (451/550/552/554...) with an optional
 * enhanced code ("4.3.0"; default x.0.0) and text (default by class).
 * results and its strings are borrowed for the duration of the call.
 */
struct lmtp_result {
    int code;
    const char *enhanced;
    const char *text;
};
typedef void lmtp_data_done_fn(void *ctx, const struct lmtp_result *results);

/*
 * Each callback must call done exactly once with the ctx it was given;
 * it may do so from inside the callback or later, also after the client
 * has gone or the server was freed (ctx stays valid until done). rcpt,
 * mail_from (may be "" for the null sender), rcpts and data are borrowed
 * until done is called. data holds the message with dot-stuffing removed,
 * line ends as received; it is not NUL-terminated.
 */
struct lmtp_callbacks {
    void (*rcpt)(void *arg, const char *rcpt, lmtp_rcpt_done_fn *done,
                 void *ctx);
    void (*data)(void *arg, const char *mail_from, char *const *rcpts, size_t n,
                 const char *data, size_t len, lmtp_data_done_fn *done,
                 void *ctx);
    void *arg;
};

/*
 * listen: "host:port" or "[v6]:port", numeric host (or "localhost");
 * port 0 picks a free port (see lmtp_server_port). hostname (borrowed,
 * copied) names the server in the greeting; max_message_size bounds a
 * message (SIZE= and data). cbs is copied. NULL with err on failure.
 */
struct lmtp_server *lmtp_server_new(struct event_base *base, const char *listen,
                                    size_t max_message_size,
                                    const char *hostname,
                                    const struct lmtp_callbacks *cbs,
                                    struct error *err);
int lmtp_server_port(const struct lmtp_server *s);
/* Connections currently open. */
size_t lmtp_server_connections(const struct lmtp_server *s);
/* Overrides LMTP_IDLE_TIMEOUT (in milliseconds) and LMTP_MAX_CONNS for
 * connections accepted from now on; 0 keeps a value. */
void lmtp_server_set_limits(struct lmtp_server *s, unsigned idle_ms,
                            size_t max_conns);
/* Closes every connection at once (pending callbacks still complete into
 * nothing) and the listener. NULL-safe. */
void lmtp_server_free(struct lmtp_server *s);

/* ---- the command parser, pure (exposed for tests and fuzzing) ---- */

enum lmtp_verb {
    LMTP_V_UNKNOWN,
    LMTP_V_LHLO,
    LMTP_V_HELO, /* HELO and EHLO: refused in LMTP */
    LMTP_V_MAIL,
    LMTP_V_RCPT,
    LMTP_V_DATA,
    LMTP_V_RSET,
    LMTP_V_NOOP,
    LMTP_V_QUIT,
    LMTP_V_VRFY,
};

struct lmtp_cmd {
    enum lmtp_verb verb;
    /* 0, or the reply for a syntax error ("501 5.5.4 ..."; static) */
    const char *error;
    char addr[257]; /* MAIL/RCPT path without <>; LHLO domain */
    long long size; /* MAIL SIZE=, -1 when absent */
    bool has_args;  /* anything after the verb */
};

/*
 * Parses one command line (without CRLF; len bytes, may contain NULs).
 * Always fills *cmd; a syntax error sets cmd->error to the full reply.
 */
void lmtp_parse_command(const char *line, size_t len, struct lmtp_cmd *cmd);

#endif
