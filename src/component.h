/*
 * component: one XEP-0114 connection (libstrophe, component mode) driven
 * from the libevent loop. Owns the libstrophe context and connection, the
 * socket events, the reconnect timer and the workarounds for libstrophe
 * 0.12.2 (sm_state allocation, select() fd limit, blocking resolver).
 * Only component.c and stanza.c include strophe.h.
 *
 * Stanzas arrive as xnode trees through cbs->stanza; component_send takes
 * an xnode and fails (temporary) while the stream is down: libstrophe
 * would silently drop it.
 */
#ifndef POSTERN_COMPONENT_H
#define POSTERN_COMPONENT_H

#include <stdbool.h>
#include <stddef.h>

#include "util.h"

struct event_base;
struct component;
struct xnode;

struct component_cbs {
    /* A stanza from the server; n is borrowed for the call. */
    void (*stanza)(void *arg, const struct xnode *n);
    /* The stream went up (handshake accepted) or down. */
    void (*state)(void *arg, bool up);
    void *arg;
};

/* Reserves low fds for the sockets (call once, before opening files). */
void component_global_init(size_t n_components);
void component_global_cleanup(void);

/*
 * host: a name or address; resolved (without blocking the loop) before
 * each connect. Copies everything it keeps.
 */
struct component *component_new(struct event_base *base, const char *host,
                                int port, const char *jid, const char *secret,
                                const struct component_cbs *cbs,
                                struct error *err);
/* Starts connecting; reconnects for ever with backoff. */
void component_start(struct component *c);
bool component_up(const struct component *c);
const char *component_jid(const struct component *c);
/* Stanzas queued in libstrophe, not yet written. */
size_t component_queue_len(const struct component *c);
/* -1 with a temporary error when the stream is down. */
int component_send(struct component *c, const struct xnode *n,
                   struct error *err);
/*
 * Closes the stream cleanly (</stream:stream>) after flushing what is
 * queued, and stops reconnecting. done runs once the socket is closed (or
 * at once when already down), never from inside this call.
 */
void component_stop(struct component *c, void (*done)(void *), void *arg);
void component_free(struct component *c);

#endif
