/*
 * metrics: a small in-process registry of counters, gauges and histograms
 * with fixed label sets, rendered as Prometheus text format 0.0.4 for
 * GET /metrics. One thread (the event loop) uses it; no locking.
 *
 * Two layers:
 *  1. the generic registry (metrics_counter/gauge/histogram, metrics_inc,
 *     metrics_add, metrics_set, metrics_observe, metrics_render), usable
 *     for anything;
 *  2. the postern metric set, defined once here, with one helper per event
 *     for the router / queue / transport code to call.
 *
 * The postern metric set (gateway = the gateway JID):
 *   postern_messages_total{gateway,direction}        counter
 *       direction="out": a message accepted from XMPP for a contact
 *       (persisted to the outbound queue); "in": a message delivered to
 *       XMPP from SMS/email.
 *   postern_provider_errors_total{gateway,class}     counter
 *       class = "temporary" | "permanent" | "timeout" | "auth": one per
 *       failed provider/SMTP request.
 *   postern_retries_total{gateway}                   counter
 *       one per scheduled retry of an outbound message.
 *   postern_dead_letters_total{gateway}              counter
 *       one per message moved to the dead-letter stream.
 *   postern_send_latency_seconds{gateway}            histogram
 *       XMPP stanza received -> provider request completed (success),
 *       buckets 0.001 .. 10 s.
 *   postern_queue_depth{gateway,queue}               gauge
 *       queue = "out" | "in" | "retry" | "dead"; refreshed from Redis by
 *       metrics_queue_poll_start's timer.
 *   postern_redis_up                                 gauge (0/1)
 *   postern_gateway_up{gateway}                      gauge (0/1)
 *
 * Every label value and name passed in is borrowed: the registry copies
 * what it keeps.
 */
#ifndef POSTERN_METRICS_H
#define POSTERN_METRICS_H

#include <stdbool.h>
#include <stddef.h>

#include "util.h"

struct metric;
struct store;
struct config;
struct event_base;

/* ---- generic registry ---- */

#define METRICS_MAX_LABELS 4

/*
 * Registers a metric (or returns the one already registered under name,
 * which must have the same type and labels). label_names is a comma
 * separated list ("gateway,direction"), NULL or "" for none. Invalid
 * names are a programming error: fatal(). The handle lives until
 * metrics_free_all().
 */
struct metric *metrics_counter(const char *name, const char *help,
                               const char *label_names);
struct metric *metrics_gauge(const char *name, const char *help,
                             const char *label_names);
/*
 * bounds: n strictly increasing finite upper bounds (copied); NULL uses
 * the default latency buckets in seconds: 0.001 0.0025 0.005 0.01 0.025
 * 0.05 0.1 0.25 0.5 1 2.5 5 10. The "+Inf" bucket is implicit.
 */
struct metric *metrics_histogram(const char *name, const char *help,
                                 const char *label_names, const double *bounds,
                                 size_t n);

/*
 * The variadic arguments are the label values (const char *, not NULL),
 * exactly as many as the metric has label names, in the same order.
 * A series is created on first use.
 */
void metrics_inc(struct metric *m, ...);               /* counter += 1 */
void metrics_add(struct metric *m, double v, ...);     /* counter += v >= 0 */
void metrics_set(struct metric *m, double v, ...);     /* gauge = v */
void metrics_observe(struct metric *m, double v, ...); /* histogram */
/* Forgets every series of m (e.g. a gauge whose label set changed). */
void metrics_clear(struct metric *m);

/* Appends every metric in registration order, series in creation order. */
void metrics_render(struct strbuf *out);
/* Drops the whole registry (tests, exit). Handles become invalid. */
void metrics_free_all(void);

/* ---- the postern metric set ---- */

/* Registers the set (idempotent; the helpers below call it themselves). */
void metrics_postern_init(void);

/* direction "in" | "out". */
void metrics_message(const char *gw, const char *direction);
/* class "temporary" | "permanent" | "timeout" | "auth". */
void metrics_provider_error(const char *gw, const char *cls);
void metrics_retry(const char *gw);
void metrics_dead_letter(const char *gw);
/* seconds from the XMPP stanza's arrival to the provider's answer. */
void metrics_latency(const char *gw, double seconds);
/* queue "out" | "in" | "retry" | "dead". */
void metrics_queue_depth(const char *gw, const char *queue, double n);
void metrics_redis_up(bool up);
/*
 * Also creates the gateway's zero-valued series of every counter and the
 * histogram, so a scrape shows them before the first event.
 */
void metrics_gateway_up(const char *gw, bool up);

/*
 * Refreshes postern_queue_depth for every gateway of cfg (borrowed; must
 * outlive the poller) every interval_ms from Redis (one script per gateway,
 * skipped while Redis is down or the previous round is unanswered).
 * One poller per process; start again replaces it.
 */
void metrics_queue_poll_start(struct event_base *base, struct store *s,
                              const struct config *cfg, unsigned interval_ms);
/* Stops the timer; answers still due from Redis are dropped. NULL-safe. */
void metrics_queue_poll_stop(void);

#endif
