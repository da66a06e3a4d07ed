/*
 * threads: the pure rules of the email transport (no I/O): XMPP <thread/>
 * ids and mail Message-IDs, the References chain a reply carries
 * (RFC 5322 3.6.4), reply subjects, the attachment summary line and the
 * inbound message built from a parsed mail. email.c does the I/O.
 */
#ifndef POSTERN_EMAIL_THREADS_H
#define POSTERN_EMAIL_THREADS_H

#include <stdbool.h>
#include <stddef.h>

#include "mime.h"
#include "queue.h"
#include "util.h"

/* A thread id: 36 characters of UUID plus NUL. */
#define EMAIL_THREAD_UUID_SIZE 37
/* Longest XMPP thread id that is mapped to mail (bytes). */
#define EMAIL_THREAD_ID_MAX 256
/* Message-IDs kept per thread (the References of the next reply). */
#define EMAIL_THREAD_MAX_REFS 20
/* In-Reply-To + References ids looked up for an inbound mail's thread. */
#define EMAIL_THREAD_MAX_CANDIDATES 21
/* Text of an inbound mail longer than this is cut (bytes). */
#define EMAIL_MAX_TEXT (100u * 1024)

/*
 * Formats 16 random bytes as an RFC 4122 version 4 UUID (lower-case hex,
 * the version and variant bits set). XEP-0201 wants thread ids to be
 * UUIDs.
 */
void email_thread_uuid(const unsigned char rnd[16],
                       char out[EMAIL_THREAD_UUID_SIZE]);
/* A fresh random thread id (email_thread_uuid of random bytes). */
void email_thread_new(char out[EMAIL_THREAD_UUID_SIZE]);

/*
 * true when an XMPP thread id can be mapped to mail: 1 to
 * EMAIL_THREAD_ID_MAX bytes, no ASCII whitespace or control characters
 * (it becomes part of a Redis key).
 */
bool email_thread_id_ok(const char *tid);

/*
 * The References chain of a reply to a message, RFC 5322 3.6.4: the
 * parent's References followed by its Message-ID; when the parent has no
 * References but an In-Reply-To, that id followed by its Message-ID. ids
 * without <>. Duplicates are dropped (first occurrence kept) and a chain
 * longer than max keeps its first id (the thread's root) and the max - 1
 * newest. Returns the ids space-separated, returned owned (free()), or
 * NULL when the parent has none of the three.
 */
char *email_refs_chain(char *const *refs, size_t n_refs,
                       const char *in_reply_to, const char *msgid, size_t max);
/* Same, for a parent whose References are the space-separated refs. */
char *email_refs_chain_str(const char *refs, const char *msgid, size_t max);
/*
 * The last id of a space-separated chain (the parent, for In-Reply-To),
 * returned owned (free()), NULL when the chain is empty or NULL.
 */
char *email_refs_last(const char *chain);

/*
 * The ids to look up for an inbound mail's thread, in order: In-Reply-To,
 * then References newest first, without duplicates, at most max.
 * Space-separated, returned owned (free()); "" when there are none.
 */
char *email_thread_candidates(const struct mail_parsed *p, size_t max);

/*
 * Subject of a reply in a thread whose subject is subject: "Re: " and the
 * subject, unless it already starts with "Re:" (any case). NULL for a
 * NULL or blank subject. Returned owned (free()).
 */
char *email_reply_subject(const char *subject);

/* "12 bytes", "3 KB" (rounded up), "1.5 MB" into buf. */
void email_format_size(size_t bytes, char *buf, size_t size);
/*
 * "Attachments: a.pdf (12 KB), b.png (1.2 MB)". NULL when n is 0.
 * Returned owned (free()).
 */
char *email_attachment_summary(const struct mail_attachment *a, size_t n);

/*
 * The address an inbound mail comes from: the header From, else the
 * envelope sender mail_from (may be NULL or "" for the null sender),
 * normalised, into out. 0, or -1 when neither is a usable address.
 */
int email_sender_addr(const struct mail_parsed *p, const char *mail_from,
                      char *out, size_t size);

/*
 * Builds the inbound message for one accepted recipient (rcpt: the
 * registered address it was written to) from a parsed mail:
 *   from_addr   email_sender_addr; -1 with err (permanent) when there is
 *               none;
 *   subject     the mail's subject;
 *   thread      thread (borrowed, copied);
 *   body        the text (cut at EMAIL_MAX_TEXT with a note); when blank:
 *               the subject, else "(empty message)" unless there are
 *               attachments (then NULL);
 *   extra       email_attachment_summary;
 *   provider_id Message-ID ":" rcpt, or "sha256:" digest_hex ":" rcpt
 *               when the mail has no Message-ID (digest_hex: of the raw
 *               mail, so an MTA's retry is recognised); NULL when both
 *               are NULL.
 * out is zeroed first; free with inmsg_free_fields.
 */
int email_build_inmsg(const struct mail_parsed *p, const char *rcpt,
                      const char *mail_from, const char *thread,
                      const char *digest_hex, struct inmsg *out,
                      struct error *err);

#endif
