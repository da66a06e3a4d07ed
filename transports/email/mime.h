/*
 * mime: RFC 5322 / MIME messages both ways, on GMime 3 (the only module
 * that includes gmime.h). mime_compose builds the outbound text/plain
 * message; mime_parse turns an inbound message into the few things the
 * gateway forwards to XMPP. Pure code: no I/O, loop thread only.
 */
#ifndef POSTERN_MIME_H
#define POSTERN_MIME_H

#include <stddef.h>

#include "util.h"

/* Inputs above this size are refused by mime_parse. */
#define MIME_MAX_INPUT (64u * 1024 * 1024)
/* Multipart nesting deeper than this is refused by mime_parse. */
#define MIME_MAX_DEPTH 20
/* At most this many References ids are kept (parse) or written (compose). */
#define MIME_MAX_REFERENCES 50

/*
 * Initialises GMime (and libxml2's parser) once. Optional: compose and
 * parse call it themselves; calling it at start keeps the first message
 * fast. mime_global_cleanup releases GMime at exit; both are idempotent.
 */
void mime_global_init(void);
void mime_global_cleanup(void);

/* Every pointer is borrowed for the duration of mime_compose. */
struct mail_compose {
    const char *from;         /* addr-spec */
    const char *from_name;    /* optional display name (UTF-8) */
    const char *to;           /* addr-spec */
    const char *subject;      /* NULL or "": no Subject header; callers
                                 pass their default subject here */
    const char *body;         /* UTF-8 */
    const char *msgid_domain; /* mail_domain, right side of Message-ID */
    const char *in_reply_to;  /* Message-ID without <> or NULL */
    const char *references;   /* space-separated ids without <> or NULL */
};

/*
 * Returns the message (CRLF line ends, not dot-stuffed) returned owned
 * (free with free()), its length in *len, and the new Message-ID without
 * <> in *msgid (returned owned, free()). Addresses must pass email_valid();
 * ids must be printable ASCII without spaces, <> or controls: anything else
 * is refused (NULL, err filled, permanent). Controls (C0, C1, DEL,
 * U+2028/U+2029) in the subject and display name become spaces, so no input
 * can add a header line. Invalid UTF-8 becomes U+FFFD.
 */
char *mime_compose(const struct mail_compose *c, size_t *len, char **msgid,
                   struct error *err);

struct mail_attachment {
    char *name;  /* decoded filename, else a short description; never NULL */
    size_t size; /* decoded bytes */
    char *type;  /* "type/subtype", lower case */
};

/*
 * Every string is UTF-8 without control characters other than tab and
 * newline (those only in text); single-line fields (names, subject, ids)
 * have none.
 */
struct mail_parsed {
    char *from_addr;   /* valid address, domain lower-cased; NULL if absent
                          or unusable */
    char *from_name;   /* display name or NULL */
    char *subject;     /* decoded UTF-8, NULL if absent or blank */
    char *text;        /* the inline text/plain parts joined, else text
                          from the HTML part (see mime.c for the rules);
                          "" when there is neither; LF line ends */
    char *message_id;  /* without <> or NULL */
    char *in_reply_to; /* first id without <> or NULL */
    char **references; /* without <>, in header order */
    size_t n_references;
    struct mail_attachment *attachments;
    size_t n_attachments;
};

/*
 * Parses len bytes (CRLF or LF). Fills *out (free with mime_parsed_free,
 * also safe after a failure). -1 with err (permanent) for inputs above
 * MIME_MAX_INPUT, nesting above MIME_MAX_DEPTH, or bytes that are not a
 * message at all. Malformed MIME otherwise parses as well as it can:
 * NUL bytes are dropped from text (XMPP cannot carry U+0000; in the
 * header section they become spaces), a part with a syntactically invalid
 * Content-Type is text/plain (RFC 2045 5.2), bytes that are not valid in
 * the labelled charset become U+FFFD, unknown charsets keep their ASCII.
 */
int mime_parse(const char *data, size_t len, struct mail_parsed *out,
               struct error *err);
/* Frees the members and zeroes *m; NULL-safe. */
void mime_parsed_free(struct mail_parsed *m);

#endif
