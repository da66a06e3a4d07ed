/*
 * fast_provider: a local HTTP server on its own thread and event_base,
 * in two flavours.
 *
 *  - FP_TWILIO answers POST /2010-04-01/Accounts/{sid}/Messages.json with
 *    201 and a Twilio-shaped JSON message (a fresh SM sid each time),
 *    after parsing the form body. The body text starts with the stanza id
 *    the load generator gave the message ("b<seq> ..."): the arrival time
 *    of the first request for each seq is recorded with bench_now(), so
 *    the generator, in the same process, can subtract its send time.
 *    Optionally every request is held hold_ms before it is answered,
 *    until fast_provider_release() is called (then all held requests are
 *    answered at once and later ones immediately).
 *  - FP_CEILING answers any POST with 200 and empty TwiML after parsing
 *    the form body: the "raw evhttp" ceiling for inbound webhooks.
 *
 * Counters are atomics readable from any thread.
 */
#ifndef POSTERN_BENCH_FAST_PROVIDER_H
#define POSTERN_BENCH_FAST_PROVIDER_H

#include <stdbool.h>
#include <stddef.h>

enum fp_kind { FP_TWILIO, FP_CEILING };

struct fp_conf {
    enum fp_kind kind;
    int port;         /* 0: any free port on 127.0.0.1 */
    unsigned hold_ms; /* FP_TWILIO: answer each request this late */
    size_t max_seq;   /* arrival slots for seq 0 .. max_seq-1 */
};

struct fast_provider;

/* Binds, starts the thread; NULL (message on stderr) on failure. */
struct fast_provider *fast_provider_start(const struct fp_conf *c);
int fast_provider_port(const struct fast_provider *fp);
/* Answers the held requests and stops holding (any thread). */
void fast_provider_release(struct fast_provider *fp);
/* Requests received / answered; seqs seen once / again; unparsable. */
size_t fast_provider_received(const struct fast_provider *fp);
size_t fast_provider_answered(const struct fast_provider *fp);
size_t fast_provider_unique(const struct fast_provider *fp);
size_t fast_provider_dups(const struct fast_provider *fp);
size_t fast_provider_bad(const struct fast_provider *fp);
/*
 * Arrival time of seq (bench_now), < 0 when none yet. Safe once
 * fast_provider_unique() has counted it.
 */
double fast_provider_arrival(const struct fast_provider *fp, size_t seq);
/* Stops the thread, answers nothing more, frees everything. NULL-safe. */
void fast_provider_stop(struct fast_provider *fp);

#endif
