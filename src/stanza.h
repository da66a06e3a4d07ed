/*
 * stanza: pure helpers to build and read stanzas as xnode trees (errors,
 * receipts, replies). The error table of SPEC 3 lives here. No libstrophe:
 * component.c converts its stanzas to xnode trees.
 */
#ifndef POSTERN_STANZA_H
#define POSTERN_STANZA_H

#include <stdbool.h>

#include "util.h"
#include "xnode.h"

#define NS_CLIENT "jabber:component:accept"
#define NS_STANZAS "urn:ietf:params:xml:ns:xmpp-stanzas"
#define NS_DISCO_INFO "http://jabber.org/protocol/disco#info"
#define NS_DISCO_ITEMS "http://jabber.org/protocol/disco#items"
#define NS_REGISTER "jabber:iq:register"
#define NS_GATEWAY "jabber:iq:gateway"
#define NS_VERSION "jabber:iq:version"
#define NS_PING "urn:xmpp:ping"
#define NS_RECEIPTS "urn:xmpp:receipts"
#define NS_CAPS "http://jabber.org/protocol/caps"
#define NS_COMMANDS "http://jabber.org/protocol/commands"
#define NS_DATA "jabber:x:data"
#define NS_OOB "jabber:x:oob"
#define NS_CHATSTATES "http://jabber.org/protocol/chatstates"
#define NS_DELAY "urn:xmpp:delay"
#define NS_CHAT_MARKERS "urn:xmpp:chat-markers:0"
#define NS_HINTS "urn:xmpp:hints"

/* "bad-request", ... ; "undefined-condition" for unknown codes. */
const char *stanza_cond_name(int cond);
/* XMPP error type for a condition: "auth", "cancel", "modify", "wait". */
const char *stanza_error_type(int cond, bool temporary);

/*
 * Error reply to orig: swaps from/to, keeps id and the element name,
 * type='error', <error type=...><cond/><text>msg</text></error>. For
 * messages the original <body/> is kept (clients show what failed).
 * Returned owned.
 */
struct xnode *stanza_error_reply(const struct xnode *orig,
                                 const struct error *err);
/* Same, addressed explicitly (for errors raised after the fact). */
struct xnode *stanza_error_to(const char *name, const char *from,
                              const char *to, const char *id,
                              const struct error *err);
/* <iq type='result'> reply to an iq (from/to swapped, id kept). Owned. */
struct xnode *stanza_iq_result(const struct xnode *iq);
/* <message type=type from to><body>text</body></message>. Owned. */
struct xnode *stanza_message(const char *from, const char *to, const char *type,
                             const char *body);
/* A fresh stanza id ("pst-" + 16 hex). */
void stanza_new_id(char out[24]);

/* XEP-0115 ver for a disco#info identity + features (sha-1, base64). */
void stanza_caps_ver(const char *category, const char *type, const char *name,
                     const char *const *features, size_t n_features, char *out,
                     size_t size);

#endif
