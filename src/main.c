/*
 * main: the postern daemon. Parses the command line, loads the
 * configuration, wires one transport + router + component per gateway
 * around the shared store, queue and HTTP server, and runs the libevent
 * loop in the foreground until SIGTERM/SIGINT.
 *
 * Shutdown: the first SIGTERM stops new work (routers refuse, the queue
 * stops polling), waits for what is in flight (at most DRAIN_MS), then
 * closes every XMPP stream with </stream:stream> and exits 0 -- all within
 * 10 s. A second SIGTERM exits at once (status 1). SIGHUP reopens the log
 * file and applies per-gateway limits and allow-lists from the file.
 *
 * Start-up is all or nothing: any gateway that cannot be configured, or an
 * HTTP listener that cannot bind, stops postern with one line on stderr
 * and status 1 before any XMPP stream is opened.
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "admin.h"
#include "component.h"
#include "config.h"
#include "http_client.h"
#include "http_server.h"
#include "log.h"
#include "metrics.h"
#include "queue.h"
#include "router.h"
#include "store.h"
#include "transport.h"

#define DRAIN_MS 7000
#define CLOSE_MS 2500

struct gw {
    struct transport *t;
    struct router *r;
    struct component *c;
    bool closed;
};

struct app;
static struct app *g_app;

struct app {
    struct config *cfg;
    struct event_base *base;
    struct store *store;
    struct queue *queue;
    struct http_server *http;
    struct http_client *http_client;
    struct transport_host host;
    struct gw *gws;
    size_t ngws;
    struct event *ev_term, *ev_int, *ev_hup, *ev_drain;
    int terms;
    uint64_t drain_started;
    bool closing;
    size_t open_streams;
};

static void usage(FILE *f)
{
    fprintf(f, "usage: postern -c FILE [--check]\n"
               "       postern admin -c FILE COMMAND ...  (see postern-admin "
               "--help)\n"
               "       postern --version | --help\n"
               "\n"
               "  -c, --config FILE  configuration file (libconfig syntax)\n"
               "      --check        validate the configuration and exit:\n"
               "                     0 valid, 1 invalid (problems on stderr)\n"
               "  -V, --version      print the version\n"
               "  -h, --help         this text\n"
               "\n"
               "Runs in the foreground and logs to stderr (or log.file).\n"
               "SIGTERM/SIGINT drain and exit; SIGHUP reopens the log and\n"
               "reloads per-gateway limits and allow-lists.\n");
}

/* ---- component <-> router glue ---- */

/* The router and the component each need the other: both go through
 * the gateway record, filled in before the loop runs. */
static int sink_send(void *arg, const struct xnode *n, struct error *err)
{
    struct gw *g = arg;
    return component_send(g->c, n, err);
}

static bool sink_up(void *arg)
{
    struct gw *g = arg;
    return g->c && component_up(g->c);
}

static void gw_on_stanza(void *arg, const struct xnode *n)
{
    struct gw *g = arg;
    router_on_stanza(g->r, n);
}

static void gw_on_state(void *arg, bool up)
{
    struct gw *g = arg;
    router_on_state(g->r, up);
    if (up)
        queue_kick(g_app->queue);
}

/* transport_host.delivery: a provider status -> that gateway's router. */
static void on_delivery(void *arg, struct transport *t, const char *provider_id,
                        enum delivery_state state, const struct error *err,
                        void (*done)(void *, const struct error *),
                        void *done_arg)
{
    struct app *app = arg;

    for (size_t i = 0; i < app->ngws; i++)
        if (app->gws[i].t == t && app->gws[i].r) {
            router_on_delivery(app->gws[i].r, provider_id, state, err, done,
                               done_arg);
            return;
        }
    /* every transport has a router: unreachable, but keep the contract */
    struct error e;
    error_set(&e, COND_INTERNAL_SERVER_ERROR, true, "no router for %s",
              t->conf->jid);
    done(done_arg, &e);
}

/*
 * A send counts as abandoned (its process died) only after twice the
 * longest single request it may make plus a margin; a live process
 * refreshes the idle time of its own sends long before that.
 */
static void outbound_conf(const struct config *cfg,
                          const struct gateway_conf *gc,
                          struct outbound_conf *oc)
{
    double timeout_s = gc->kind == TRANSPORT_SMS ? gc->provider.timeout
                                                 : (double)gc->smtp.timeout;

    if (timeout_s <= 0)
        timeout_s = 15;
    memset(oc, 0, sizeof(*oc));
    oc->max_age_s = cfg->queue.max_age;
    oc->retry_base_ms = cfg->queue.retry_base_ms;
    oc->retry_cap_ms = cfg->queue.retry_cap_ms;
    oc->claim_idle_ms = (unsigned)(2 * timeout_s * 1000) + 5000;
    /*
     * Never start more provider requests than there are connections for
     * them: a request waiting for a connection spends its timeout there,
     * and one that times out after the provider accepted it is sent twice.
     */
    if (gc->kind == TRANSPORT_SMS)
        oc->concurrency =
            gc->provider.max_connections ? gc->provider.max_connections : 8;
}

/* ---- /healthz ---- */

struct health_req {
    struct app *app;
    struct http_request *req;
};

static void health_done(const struct error *err, void *arg)
{
    struct health_req *h = arg;
    struct app *app = h->app;
    struct strbuf b;
    bool ok = !err;

    sb_init(&b);
    sb_printf(&b, "{\"redis\":\"%s\",\"gateways\":{", err ? "down" : "up");
    for (size_t i = 0; i < app->ngws; i++) {
        bool up = app->gws[i].c && component_up(app->gws[i].c);
        ok = ok && up;
        /* gateway JIDs are validated domain names: nothing to escape */
        sb_printf(&b, "%s\"%s\":\"%s\"", i ? "," : "", app->gws[i].t->conf->jid,
                  up ? "up" : "down");
    }
    sb_printf(&b, "},\"status\":\"%s\"}\n", ok ? "ok" : "unavailable");
    http_reply(h->req, ok ? 200 : 503, "application/json", b.s, b.len);
    sb_free(&b);
    free(h);
}

static void on_healthz(struct http_request *req, void *arg)
{
    struct health_req *h = xcalloc(1, sizeof(*h));
    h->app = arg;
    h->req = req;
    store_ping(h->app->store, health_done, h);
}

static void on_metrics(struct http_request *req, void *arg)
{
    struct app *app = arg;
    struct strbuf b;

    /* the up gauges are sampled now; the rest is counted as it happens */
    metrics_redis_up(store_connected(app->store));
    for (size_t i = 0; i < app->ngws; i++)
        metrics_gateway_up(app->gws[i].t->conf->jid,
                           app->gws[i].c && component_up(app->gws[i].c));
    sb_init(&b);
    metrics_render(&b);
    http_reply(req, 200, "text/plain; version=0.0.4", b.s, b.len);
    sb_free(&b);
}

/* ---- signals and shutdown ---- */

static size_t inflight(const struct app *app)
{
    size_t n = app->queue ? queue_inflight(app->queue) : 0;
    for (size_t i = 0; i < app->ngws; i++) {
        n += router_inflight(app->gws[i].r);
        if (app->gws[i].t->ops->inflight)
            n += app->gws[i].t->ops->inflight(app->gws[i].t);
    }
    return n;
}

static void stream_closed(void *arg)
{
    struct gw *g = arg;

    g->closed = true;
    if (g_app->open_streams > 0)
        g_app->open_streams--;
    if (!g_app->open_streams)
        event_base_loopexit(g_app->base, NULL);
}

static void close_streams(struct app *app)
{
    if (app->closing)
        return;
    app->closing = true;
    app->open_streams = app->ngws;
    log_notice("postern", "closing %zu XMPP stream(s)", app->ngws);
    for (size_t i = 0; i < app->ngws; i++)
        component_stop(app->gws[i].c, stream_closed, &app->gws[i]);
    if (!app->ngws)
        event_base_loopexit(app->base, NULL);
    /* libstrophe waits for the server's </stream:stream>; never longer
     * than CLOSE_MS */
    struct timeval tv = {CLOSE_MS / 1000, (CLOSE_MS % 1000) * 1000};
    event_base_loopexit(app->base, &tv);
}

static void on_drain_tick(evutil_socket_t fd, short what, void *arg)
{
    struct app *app = arg;
    (void)fd;
    (void)what;

    size_t n = inflight(app);
    if (n == 0 || now_ms() - app->drain_started >= DRAIN_MS) {
        if (n)
            log_warn("postern",
                     "%zu operation(s) still in flight after %d ms; their "
                     "queue entries stay in Redis and are resumed at the "
                     "next start",
                     n, DRAIN_MS);
        event_del(app->ev_drain);
        close_streams(app);
    }
}

static void begin_shutdown(struct app *app)
{
    log_notice("postern", "shutting down: finishing work in flight");
    app->drain_started = now_ms();
    for (size_t i = 0; i < app->ngws; i++) {
        router_stop(app->gws[i].r);
        if (app->gws[i].t->ops->stop)
            app->gws[i].t->ops->stop(app->gws[i].t);
    }
    if (app->queue)
        queue_stop(app->queue);
    struct timeval tv = {0, 50 * 1000};
    event_add(app->ev_drain, &tv);
}

static void on_term(evutil_socket_t sig, short what, void *arg)
{
    struct app *app = arg;
    (void)what;

    if (++app->terms > 1) {
        log_warn("postern", "second signal %d: exiting at once", (int)sig);
        _exit(1);
    }
    begin_shutdown(app);
}

static void on_hup(evutil_socket_t sig, short what, void *arg)
{
    struct app *app = arg;
    struct config *fresh = NULL;
    struct strbuf errs;
    (void)sig;
    (void)what;

    log_reopen();
    sb_init(&errs);
    if (config_load(app->cfg->path, &fresh, &errs) != 0) {
        char *nl = errs.s ? strchr(errs.s, '\n') : NULL;
        if (nl)
            *nl = '\0';
        log_err("postern", "SIGHUP: configuration not reloaded: %s",
                errs.s ? errs.s : "invalid");
        sb_free(&errs);
        return;
    }
    sb_free(&errs);
    int n = config_apply_reload(app->cfg, fresh);
    config_free(fresh);
    log_notice("postern",
               "SIGHUP: log reopened; limits and allow-lists reloaded for "
               "%d gateway(s)",
               n);
}

/* ---- start-up ---- */

static void app_free(struct app *app)
{
    /* provider requests still running complete (with an error) while
     * everything they report to is alive; webhooks stop next */
    if (app->http_client)
        http_client_free(app->http_client);
    app->http_client = NULL;
    if (app->http)
        http_server_free(app->http);
    app->http = NULL;
    for (size_t i = 0; i < app->ngws; i++) {
        component_free(app->gws[i].c);
        router_free(app->gws[i].r);
        transport_free(app->gws[i].t);
    }
    free(app->gws);
    if (app->queue)
        queue_free(app->queue);
    metrics_queue_poll_stop();
    if (app->store)
        store_free(app->store);
    metrics_free_all();
    if (app->ev_term)
        event_free(app->ev_term);
    if (app->ev_int)
        event_free(app->ev_int);
    if (app->ev_hup)
        event_free(app->ev_hup);
    if (app->ev_drain)
        event_free(app->ev_drain);
    if (app->base)
        event_base_free(app->base);
    config_free(app->cfg);
}

static int app_start(struct app *app, struct error *err)
{
    struct config *cfg = app->cfg;
    char consumer[300], hostname[256];

    app->base = event_base_new();
    if (!app->base) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                  "cannot create the event loop");
        return -1;
    }
    app->store = store_new(app->base, cfg->redis.url, cfg->redis.prefix,
                           cfg->redis.timeout_ms, err);
    if (!app->store)
        return -1;
    if (gethostname(hostname, sizeof(hostname)) != 0)
        snprintf(hostname, sizeof(hostname), "localhost");
    hostname[sizeof(hostname) - 1] = '\0';
    snprintf(consumer, sizeof(consumer), "%s:%ld", hostname, (long)getpid());
    app->queue = queue_new(app->base, app->store, consumer);
    /* queue depths for /metrics, read from Redis every 5 s */
    metrics_queue_poll_start(app->base, app->store, cfg, 5000);
    if (cfg->http.listen && *cfg->http.listen) {
        app->http = http_server_new(app->base, cfg->http.listen,
                                    cfg->http.max_body, cfg->http.timeout, err);
        if (!app->http)
            return -1;
        http_server_route(app->http, "/healthz", on_healthz, app);
        http_server_route(app->http, "/metrics", on_metrics, app);
    }
    /* one connection pool for every provider API; the per-host cap is
     * the largest any gateway asks for */
    struct http_client_opts hopts = {0};
    for (size_t i = 0; i < cfg->n_gateways; i++) {
        const struct provider_conf *pc = &cfg->gateways[i].provider;
        if (pc->max_connections > hopts.max_host_connections)
            hopts.max_host_connections = pc->max_connections;
    }
    app->http_client = http_client_new(app->base, &hopts, err);
    if (!app->http_client)
        return -1;
    app->host.http_client = app->http_client;
    app->host.base = app->base;
    app->host.store = app->store;
    app->host.queue = app->queue;
    app->host.http = app->http;
    app->host.config = cfg;
    app->host.delivery = on_delivery;
    app->host.delivery_arg = app;

    app->gws = xcalloc(cfg->n_gateways, sizeof(*app->gws));
    for (size_t i = 0; i < cfg->n_gateways; i++) {
        struct gateway_conf *gc = &cfg->gateways[i];
        struct gw *g = &app->gws[i];
        const struct transport_ops *ops = transport_lookup(gc->transport);
        if (!ops) {
            error_set(err, COND_INTERNAL_SERVER_ERROR, false,
                      "%s:%d: gateways.[%zu].transport: unknown transport "
                      "\"%s\"",
                      cfg->path, gc->line, i, gc->transport);
            return -1;
        }
        g->t = transport_new(ops, gc, &app->host, err);
        if (!g->t)
            return -1;
        app->ngws++;
        struct router_sink sink = {sink_send, sink_up, g};
        g->r = router_new(g->t, &sink, app->store);
        struct component_cbs cbs = {gw_on_stanza, gw_on_state, g};
        g->c = component_new(app->base, cfg->xmpp.host, cfg->xmpp.port, gc->jid,
                             gc->secret, &cbs, err);
        if (!g->c)
            return -1;
    }
    for (size_t i = 0; i < app->ngws; i++) {
        struct gw *g = &app->gws[i];
        if (g->t->ops->start && g->t->ops->start(g->t, err) != 0)
            return -1;
    }
    for (size_t i = 0; i < app->ngws; i++) {
        struct gw *g = &app->gws[i];
        queue_inbound_register(app->queue, g->t->conf->jid, router_deliver,
                               router_ready, g->r);
        if (g->t->ops->send) {
            struct outbound_conf oc;
            outbound_conf(cfg, g->t->conf, &oc);
            queue_outbound_register(app->queue, g->t->conf->jid, &oc,
                                    router_send, g->r);
        }
        component_start(g->c);
    }

    app->ev_term = evsignal_new(app->base, SIGTERM, on_term, app);
    app->ev_int = evsignal_new(app->base, SIGINT, on_term, app);
    app->ev_hup = evsignal_new(app->base, SIGHUP, on_hup, app);
    app->ev_drain = event_new(app->base, -1, EV_PERSIST, on_drain_tick, app);
    event_add(app->ev_term, NULL);
    event_add(app->ev_int, NULL);
    event_add(app->ev_hup, NULL);
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"check", no_argument, NULL, 'k'},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *path = NULL;
    bool check = false;
    int opt;

    if (argc > 1 && strcmp(argv[1], "admin") == 0)
        return admin_run(argc - 1, argv + 1);

    while ((opt = getopt_long(argc, argv, "c:Vh", opts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            path = optarg;
            break;
        case 'k':
            check = true;
            break;
        case 'V':
            printf("postern %s\n", POSTERN_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "postern: unexpected argument \"%s\"\n", argv[optind]);
        usage(stderr);
        return 1;
    }
    if (!path) {
        fprintf(stderr, "postern: no configuration file given (-c FILE)\n");
        usage(stderr);
        return 1;
    }

    struct strbuf errs;
    struct app app;
    memset(&app, 0, sizeof(app));
    sb_init(&errs);
    if (config_load(path, &app.cfg, &errs) != 0) {
        if (check) {
            fputs(errs.s ? errs.s : "invalid configuration\n", stderr);
        } else {
            char *nl = errs.s ? strchr(errs.s, '\n') : NULL;
            if (nl)
                *nl = '\0';
            fprintf(stderr, "postern: %s\n",
                    errs.s ? errs.s : "invalid configuration");
        }
        sb_free(&errs);
        return 1;
    }
    sb_free(&errs);
    if (check) {
        printf("%s: configuration OK (%zu gateway%s)\n", path,
               app.cfg->n_gateways, app.cfg->n_gateways == 1 ? "" : "s");
        config_free(app.cfg);
        return 0;
    }

    struct error err;
    error_clear(&err);
    if (log_init(app.cfg->log.level, app.cfg->log.json, app.cfg->log.file,
                 &err) != 0) {
        fprintf(stderr, "postern: log.file: %s\n", err.msg);
        config_free(app.cfg);
        return 1;
    }
    component_global_init(app.cfg->n_gateways);
    g_app = &app;
    if (app_start(&app, &err) != 0) {
        fprintf(stderr, "postern: %s\n", err.msg);
        log_err("postern", "start-up failed: %s", err.msg);
        app_free(&app);
        component_global_cleanup();
        return 1;
    }
    log_notice("postern", "postern %s started with %zu gateway(s)",
               POSTERN_VERSION, app.ngws);
    event_base_dispatch(app.base);
    log_notice("postern", "stopped");
    app_free(&app);
    component_global_cleanup();
    log_close();
    return 0;
}
