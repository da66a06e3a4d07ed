/*
 * router: the XMPP behaviour common to every gateway (SPEC 3), one
 * instance per gateway. Takes stanzas from its component, answers disco,
 * version, ping, registration (XEP-0077 and its ad-hoc command), gateway
 * (XEP-0100), presence, the chat commands, and hands messages to the
 * transport; delivers inbound messages from the queue. It never blocks:
 * every Redis lookup is asynchronous, and a stanza is answered exactly
 * once (a result or an error).
 */
#ifndef POSTERN_ROUTER_H
#define POSTERN_ROUTER_H

#include <stdbool.h>

#include "queue.h"
#include "transport.h"
#include "util.h"

struct router;
struct transport;
struct store;
struct xnode;

/*
 * Where the router's stanzas go: main.c wires it to component_send /
 * component_up; unit tests to a recorder.
 */
struct router_sink {
    /* -1 with err (temporary) when the stream is down. */
    int (*send)(void *arg, const struct xnode *n, struct error *err);
    bool (*up)(void *arg);
    void *arg;
};

/*
 * t and s borrowed (they outlive the router); sink copied. Outbound
 * messages and notices go to t->host->queue (none: messages are refused).
 */
struct router *router_new(struct transport *t, const struct router_sink *sink,
                          struct store *s);
void router_free(struct router *r);

/* Component callbacks (struct component_cbs). */
void router_on_stanza(void *router, const struct xnode *n);
void router_on_state(void *router, bool up);

/* queue deliver_fn / ready_fn for the gateway's inbound stream. */
void router_deliver(void *router, const struct inmsg *m, deliver_done_fn *done,
                    void *done_arg);
bool router_ready(void *router);

/*
 * queue outbound_send_fn for the gateway's outbound stream: checks the
 * sender is still registered with m->from_addr, then hands m to the
 * transport.
 */
void router_send(void *router, const struct outmsg *m, outbound_done_fn *done,
                 void *done_arg);
/*
 * transport_host.delivery for this gateway (main.c picks the router by
 * transport): maps provider_id back to the sender and queues a receipt
 * (DELIVERED, when one was requested) or an error (FAILED, err = the
 * provider's reason, may be NULL) as an inbound notice.
 */
typedef void router_delivery_done_fn(void *arg, const struct error *err);
void router_on_delivery(struct router *r, const char *provider_id,
                        enum delivery_state state, const struct error *err,
                        router_delivery_done_fn *done, void *done_arg);

/* Stop taking new outbound messages (they get a wait error). */
void router_stop(struct router *r);
/* Asynchronous operations (lookups, sends) not yet completed. */
size_t router_inflight(const struct router *r);

#endif
