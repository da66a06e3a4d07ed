/*
 * admin: postern-admin / "postern admin". Parses the command line, loads
 * the configuration, runs one operation against Redis through store.c
 * (and queue.c for sms-inject) on a private event loop, prints the result
 * and returns the exit code. Owns nothing beyond one run.
 *
 * Registrations go through the same store calls (and so the same
 * uniqueness script) as the daemon. Never: touch the daemon, print a
 * secret, wait on Redis for longer than --timeout.
 */
#include "admin.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "addr.h"
#include "config.h"
#include "log.h"
#include "queue.h"
#include "store.h"

#define DEFAULT_CONFIG "/etc/postern/postern.conf"
#define DEFAULT_TIMEOUT_S 10
#define ADDR_BUF 320

enum { EXIT_OK = 0, EXIT_ERR = 1, EXIT_USAGE = 2 };

struct admin {
    struct event_base *base;
    struct store *store;
    struct queue *queue;
    struct config *cfg;
    struct event *timeout_ev;
    int rc;
    bool started;
    bool finished;

    const char *cmd;
    struct gateway_conf *gw; /* the command's gateway, or NULL for all */
    size_t gw_index;         /* list/queues: walking every gateway */
    char jid[JID_MAX];
    char addr[ADDR_BUF];
    struct inmsg msg;

    unsigned step;             /* queues: which count of the gateway */
    const char *dead_op;       /* "list" | "retry" | "drop" */
    char *dead_id;             /* one entry, or NULL for all */
    char *cursor;              /* next XRANGE start */
    struct store_entry *batch; /* owned copies */
    size_t n, pos;
    unsigned done_count;
};

static void usage(FILE *f, const char *prog)
{
    fprintf(f,
            "usage: %s [-c FILE] [--timeout SECONDS] COMMAND ...\n"
            "\n"
            "commands:\n"
            "  list [GATEWAY]                  registrations (gateway, JID, "
            "address)\n"
            "  add GATEWAY BARE_JID ADDRESS [--force]\n"
            "                                  register a JID (refuses "
            "conflicts;\n"
            "                                  --force allows an address "
            "users may\n"
            "                                  not claim themselves)\n"
            "  remove GATEWAY BARE_JID         unregister a JID\n"
            "  queues                          queue lengths per gateway "
            "(out, retry,\n"
            "                                  dead, in)\n"
            "  dead list GATEWAY               outbound messages that ran "
            "out of retries\n"
            "  dead retry GATEWAY ID|all       queue dead letters again "
            "(fresh max age)\n"
            "  dead drop GATEWAY ID|all        delete dead letters\n"
            "  sms-inject GATEWAY --from +E164 --to +E164 [--media URL]... "
            "TEXT\n"
            "                                  queue an inbound SMS (sandbox "
            "provider)\n"
            "\n"
            "options:\n"
            "  -c, --config FILE   configuration (default %s)\n"
            "  --timeout SECONDS   give up waiting for Redis (default %d)\n"
            "  -h, --help          this text\n"
            "\n"
            "exit status: 0 done, 1 error, 2 usage\n",
            prog, DEFAULT_CONFIG, DEFAULT_TIMEOUT_S);
}

static void finish(struct admin *a, int rc)
{
    if (a->finished)
        return;
    a->finished = true;
    a->rc = rc;
    event_base_loopbreak(a->base);
}

static void fail_err(struct admin *a, const char *what, const struct error *err)
{
    fprintf(stderr, "postern-admin: %s: %s\n", what, err->msg);
    finish(a, EXIT_ERR);
}

/* ---- list --------------------------------------------------------------*/

struct pair {
    const char *k, *v;
};

static int pair_cmp(const void *x, const void *y)
{
    const struct pair *a = x, *b = y;
    return strcmp(a->k, b->k);
}

static void list_next(struct admin *a);

static void list_done(const struct error *err, size_t n, char *const *keys,
                      char *const *values, void *arg)
{
    struct admin *a = arg;
    const char *gw;
    struct pair *v;

    if (a->finished) /* timed out: the answer comes too late */
        return;
    gw = a->cfg->gateways[a->gw_index].jid;

    if (err) {
        fail_err(a, "list", err);
        return;
    }
    /* stable output for scripts and diffs */
    v = xcalloc(n + 1, sizeof(*v));
    for (size_t i = 0; i < n; i++) {
        v[i].k = keys[i];
        v[i].v = values[i];
    }
    qsort(v, n, sizeof(*v), pair_cmp);
    for (size_t i = 0; i < n; i++)
        printf("%s\t%s\t%s\n", gw, v[i].k, v[i].v);
    free(v);
    a->gw_index++;
    list_next(a);
}

static void list_next(struct admin *a)
{
    while (a->gw_index < a->cfg->n_gateways) {
        struct gateway_conf *g = &a->cfg->gateways[a->gw_index];
        if (!a->gw || a->gw == g) {
            store_reg_list(a->store, g->jid, list_done, a);
            return;
        }
        a->gw_index++;
    }
    fflush(stdout);
    finish(a, EXIT_OK);
}

/* ---- queues ------------------------------------------------------------*/

static void queues_next(struct admin *a);

static const char *const queue_names[] = {"out", "retry", "dead", "in"};

static void queues_done(const struct error *err, const char *value, void *arg)
{
    struct admin *a = arg;

    if (a->finished) /* timed out: the answer comes too late */
        return;

    if (err) {
        fail_err(a, "queues", err);
        return;
    }
    printf("%s\t%s\t%s\n", a->cfg->gateways[a->gw_index].jid,
           queue_names[a->step], value ? value : "0");
    if (++a->step == ARRAY_SIZE(queue_names)) {
        a->step = 0;
        a->gw_index++;
    }
    queues_next(a);
}

static void queues_next(struct admin *a)
{
    if (a->gw_index < a->cfg->n_gateways) {
        const char *gw = a->cfg->gateways[a->gw_index].jid;
        char *name = a->step == 2   ? xasprintf("dead:out:%s", gw)
                     : a->step == 3 ? xasprintf("in:%s", gw)
                                    : xasprintf("out:%s", gw);
        if (a->step == 1)
            store_retry_len(a->store, name, queues_done, a);
        else
            store_stream_len(a->store, name, queues_done, a);
        free(name);
        return;
    }
    fflush(stdout);
    finish(a, EXIT_OK);
}

/* ---- dead letters ------------------------------------------------------*/

#define DEAD_BATCH 100

static void dead_range(struct admin *a);
static void dead_step(struct admin *a);

static void batch_clear(struct admin *a)
{
    for (size_t i = 0; i < a->n; i++) {
        free(a->batch[i].id);
        free(a->batch[i].payload);
    }
    free(a->batch);
    a->batch = NULL;
    a->n = a->pos = 0;
}

static char *dead_name(const struct admin *a)
{
    return xasprintf("dead:out:%s", a->gw->jid);
}

static void dead_print(const struct store_entry *e)
{
    struct outmsg m;
    struct error err;
    int64_t age_s;

    if (outmsg_from_json(e->payload, &m, &err) < 0) {
        printf("%s\t-\t-\t-\t-\tmalformed entry\n", e->id);
        return;
    }
    age_s = now_unix() - m.enqueued_at / 1000;
    printf("%s\t%llds\t%s\t%s\t%u\t%s\n", e->id, (long long)age_s, m.from_jid,
           m.to_addr, m.attempt, m.last_error ? m.last_error : "-");
    outmsg_free_fields(&m);
}

static void dead_finish(struct admin *a)
{
    if (strcmp(a->dead_op, "retry") == 0)
        printf("requeued %u dead letter(s) on %s\n", a->done_count, a->gw->jid);
    else if (strcmp(a->dead_op, "drop") == 0)
        printf("dropped %u dead letter(s) on %s\n", a->done_count, a->gw->jid);
    fflush(stdout);
    finish(a, EXIT_OK);
}

static void dead_range_done(const struct error *err,
                            const struct store_entry *e, size_t n, void *arg)
{
    struct admin *a = arg;

    if (a->finished)
        return;
    if (err) {
        fail_err(a, "dead", err);
        return;
    }
    if (a->dead_id && (n == 0 || strcmp(e[0].id, a->dead_id) != 0)) {
        fprintf(stderr, "postern-admin: dead: no dead letter %s on %s\n",
                a->dead_id, a->gw->jid);
        finish(a, EXIT_ERR);
        return;
    }
    if (n == 0) {
        dead_finish(a);
        return;
    }
    batch_clear(a);
    a->batch = xcalloc(n, sizeof(*a->batch));
    for (size_t i = 0; i < n; i++) {
        a->batch[i].id = xstrdup(e[i].id);
        a->batch[i].payload = xstrdup(e[i].payload);
    }
    a->n = n;
    free(a->cursor);
    /* exclusive start: entries left behind (malformed) are not re-read */
    a->cursor = xasprintf("(%s", e[n - 1].id);
    if (strcmp(a->dead_op, "list") == 0) {
        for (size_t i = 0; i < n; i++)
            dead_print(&a->batch[i]);
        a->pos = n;
    }
    dead_step(a);
}

static void dead_moved(const struct error *err, const char *value, void *arg)
{
    struct admin *a = arg;

    if (a->finished)
        return;
    if (err) {
        fail_err(a, "dead", err);
        return;
    }
    if (value) {
        a->done_count++;
        printf("%s\t-> %s\n", a->batch[a->pos].id, value);
    }
    a->pos++;
    dead_step(a);
}

static void dead_step(struct admin *a)
{
    while (a->pos < a->n) {
        const struct store_entry *e = &a->batch[a->pos];
        char *name = dead_name(a);
        if (strcmp(a->dead_op, "drop") == 0) {
            store_stream_del(a->store, name, e->id, dead_moved, a);
            free(name);
            return;
        }
        struct outmsg m;
        struct error err;
        if (outmsg_from_json(e->payload, &m, &err) < 0) {
            fprintf(stderr,
                    "postern-admin: dead retry: %s is malformed (%s); "
                    "drop it instead\n",
                    e->id, err.msg);
            free(name);
            a->pos++;
            continue;
        }
        /* a fresh start: attempts and max age count from now */
        m.attempt = 0;
        m.enqueued_at = (int64_t)now_unix() * 1000;
        free(m.last_error);
        m.last_error = NULL;
        char *json = outmsg_to_json(&m);
        char *out = xasprintf("out:%s", a->gw->jid);
        store_stream_move(a->store, name, e->id, out, json, dead_moved, a);
        free(out);
        free(json);
        free(name);
        outmsg_free_fields(&m);
        return;
    }
    if (a->dead_id || a->n < DEAD_BATCH) {
        dead_finish(a);
        return;
    }
    dead_range(a);
}

static void dead_range(struct admin *a)
{
    char *name = dead_name(a);

    store_stream_range(a->store, name, a->dead_id ? a->dead_id : a->cursor,
                       a->dead_id ? 1 : DEAD_BATCH, dead_range_done, a);
    free(name);
}

/* ---- add / remove / inject ---------------------------------------------*/

static void add_done(const struct error *err, void *arg)
{
    struct admin *a = arg;

    if (a->finished) /* timed out: the answer comes too late */
        return;

    if (err && err->code == COND_CONFLICT) {
        fprintf(stderr,
                "postern-admin: add: %s is already registered to another "
                "JID on %s (remove that registration first)\n",
                a->addr, a->gw->jid);
        finish(a, EXIT_ERR);
        return;
    }
    if (err) {
        fail_err(a, "add", err);
        return;
    }
    printf("registered %s as %s on %s\n", a->jid, a->addr, a->gw->jid);
    fflush(stdout);
    finish(a, EXIT_OK);
}

static void remove_done(const struct error *err, const char *value, void *arg)
{
    struct admin *a = arg;

    if (a->finished) /* timed out: the answer comes too late */
        return;

    if (err) {
        fail_err(a, "remove", err);
        return;
    }
    if (!value) {
        fprintf(stderr, "postern-admin: remove: %s is not registered on %s\n",
                a->jid, a->gw->jid);
        finish(a, EXIT_ERR);
        return;
    }
    printf("removed %s (%s) from %s\n", a->jid, value, a->gw->jid);
    fflush(stdout);
    finish(a, EXIT_OK);
}

static void inject_done(const struct error *err, void *arg)
{
    struct admin *a = arg;

    if (a->finished) /* timed out: the answer comes too late */
        return;

    if (err) {
        fail_err(a, "sms-inject", err);
        return;
    }
    printf("queued inbound SMS for %s on %s\n", a->msg.to_addr, a->gw->jid);
    fflush(stdout);
    finish(a, EXIT_OK);
}

static void start(struct admin *a)
{
    if (a->started)
        return;
    a->started = true;
    if (strcmp(a->cmd, "list") == 0) {
        list_next(a);
    } else if (strcmp(a->cmd, "queues") == 0) {
        queues_next(a);
    } else if (strcmp(a->cmd, "dead") == 0) {
        a->cursor = xstrdup("-");
        dead_range(a);
    } else if (strcmp(a->cmd, "add") == 0) {
        store_reg_set(a->store, a->gw->jid, a->jid, a->addr, add_done, a);
    } else if (strcmp(a->cmd, "remove") == 0) {
        store_reg_remove(a->store, a->gw->jid, a->jid, remove_done, a);
    } else {
        a->queue = queue_new(a->base, a->store, "postern-admin");
        queue_inbound_push(a->queue, a->gw->jid, &a->msg, inject_done, a);
    }
}

static void on_state(bool up, void *arg)
{
    struct admin *a = arg;
    if (up)
        start(a);
}

static void timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    struct admin *a = arg;
    (void)fd;
    (void)what;
    fprintf(stderr, "postern-admin: %s: timed out (%s)\n", a->cmd,
            store_connected(a->store) ? "Redis did not answer"
                                      : "cannot reach Redis");
    finish(a, EXIT_ERR);
}

/* ---- argument checks ---------------------------------------------------*/

static struct gateway_conf *find_gateway(struct config *cfg, const char *jid)
{
    for (size_t i = 0; i < cfg->n_gateways; i++)
        if (str_ieq(cfg->gateways[i].jid, jid))
            return &cfg->gateways[i];
    return NULL;
}

static int need_gateway(struct admin *a, const char *jid)
{
    a->gw = find_gateway(a->cfg, jid);
    if (!a->gw) {
        fprintf(stderr, "postern-admin: no gateway %s in %s\n", jid,
                a->cfg->path ? a->cfg->path : "the configuration");
        return -1;
    }
    return 0;
}

static int check_jid(struct admin *a, const char *in)
{
    struct jid j;

    if (jid_parse(in, &j) < 0 || !j.node[0] || j.resource[0] ||
        jid_bare(in, a->jid, sizeof(a->jid)) < 0) {
        fprintf(stderr, "postern-admin: %s is not a bare JID (user@domain)\n",
                in);
        return -1;
    }
    return 0;
}

static int check_addr(struct admin *a, const char *in, bool force)
{
    struct gateway_conf *g = a->gw;

    if (g->kind == TRANSPORT_SMS) {
        const char *cc =
            g->default_country_code ? g->default_country_code : "1";
        if (e164_from_human(in, cc, a->addr, sizeof(a->addr)) < 0) {
            fprintf(stderr, "postern-admin: %s is not a phone number\n", in);
            return -1;
        }
        if (!force && !strlist_contains(&g->numbers, a->addr)) {
            fprintf(stderr,
                    "postern-admin: %s is not in the numbers of %s "
                    "(use --force to register it anyway)\n",
                    a->addr, g->jid);
            return -1;
        }
        return 0;
    }
    if (email_normalize(in, a->addr, sizeof(a->addr)) < 0) {
        fprintf(stderr, "postern-admin: %s is not an email address\n", in);
        return -1;
    }
    if (!force && g->mail_domain &&
        !str_ieq(email_domain(a->addr), g->mail_domain)) {
        fprintf(stderr,
                "postern-admin: %s is not in %s's mail domain %s "
                "(use --force to register it anyway)\n",
                a->addr, g->jid, g->mail_domain);
        return -1;
    }
    return 0;
}

static int check_e164(const char *opt, const char *v)
{
    if (!v || !e164_valid(v)) {
        fprintf(stderr,
                "postern-admin: sms-inject: %s needs a number in "
                "E.164 form (+15551234567)\n",
                opt);
        return -1;
    }
    return 0;
}

/*
 * Parses the command's own arguments into a. Returns 0, or the exit code
 * (1 for a bad value, 2 for a malformed command line).
 */
static int parse_command(struct admin *a, int argc, char **argv)
{
    const char *cmd = argv[0];

    a->cmd = cmd;
    if (strcmp(cmd, "list") == 0) {
        if (argc > 2)
            return EXIT_USAGE;
        if (argc == 2 && need_gateway(a, argv[1]) < 0)
            return EXIT_ERR;
        return 0;
    }
    if (strcmp(cmd, "queues") == 0)
        return argc == 1 ? 0 : EXIT_USAGE;
    if (strcmp(cmd, "dead") == 0) {
        if (argc < 3)
            return EXIT_USAGE;
        if (strcmp(argv[1], "list") == 0) {
            if (argc != 3)
                return EXIT_USAGE;
        } else if (strcmp(argv[1], "retry") == 0 ||
                   strcmp(argv[1], "drop") == 0) {
            if (argc != 4)
                return EXIT_USAGE;
            if (strcmp(argv[3], "all") != 0) {
                if (strspn(argv[3], "0123456789-") != strlen(argv[3]) ||
                    !strchr(argv[3], '-')) {
                    fprintf(stderr,
                            "postern-admin: dead: %s is not an entry id "
                            "(see dead list)\n",
                            argv[3]);
                    return EXIT_ERR;
                }
                a->dead_id = xstrdup(argv[3]);
            }
        } else {
            return EXIT_USAGE;
        }
        a->dead_op = argv[1];
        return need_gateway(a, argv[2]) < 0 ? EXIT_ERR : 0;
    }
    if (strcmp(cmd, "add") == 0) {
        bool force = false;
        const char *pos[3];
        int np = 0;
        for (int i = 1; i < argc; i++) {
            if (strcmp(argv[i], "--force") == 0)
                force = true;
            else if (np < 3)
                pos[np++] = argv[i];
            else
                return EXIT_USAGE;
        }
        if (np != 3)
            return EXIT_USAGE;
        if (need_gateway(a, pos[0]) < 0 || check_jid(a, pos[1]) < 0 ||
            check_addr(a, pos[2], force) < 0)
            return EXIT_ERR;
        return 0;
    }
    if (strcmp(cmd, "remove") == 0) {
        if (argc != 3)
            return EXIT_USAGE;
        if (need_gateway(a, argv[1]) < 0 || check_jid(a, argv[2]) < 0)
            return EXIT_ERR;
        return 0;
    }
    if (strcmp(cmd, "sms-inject") == 0) {
        const char *from = NULL, *to = NULL;
        struct strbuf text;
        bool opts = true;
        if (argc < 2)
            return EXIT_USAGE;
        sb_init(&text);
        for (int i = 2; i < argc; i++) {
            const char *o = argv[i];
            if (opts && strcmp(o, "--") == 0) {
                opts = false;
            } else if (opts &&
                       (strcmp(o, "--from") == 0 || strcmp(o, "--to") == 0 ||
                        strcmp(o, "--media") == 0)) {
                if (i + 1 >= argc) {
                    sb_free(&text);
                    return EXIT_USAGE;
                }
                const char *v = argv[++i];
                if (o[2] == 'f') {
                    from = v;
                } else if (o[2] == 't') {
                    to = v;
                } else {
                    if (a->msg.n_media >= INMSG_MAX_MEDIA) {
                        fprintf(stderr, "postern-admin: sms-inject: at "
                                        "most 10 --media\n");
                        sb_free(&text);
                        return EXIT_ERR;
                    }
                    a->msg.media[a->msg.n_media++] = xstrdup(v);
                }
            } else if (opts && o[0] == '-' && o[1] == '-') {
                sb_free(&text);
                return EXIT_USAGE;
            } else {
                if (text.len)
                    sb_putc(&text, ' ');
                sb_puts(&text, o);
            }
        }
        if (!from || !to || (!text.len && !a->msg.n_media)) {
            sb_free(&text);
            return EXIT_USAGE;
        }
        if (text.len)
            a->msg.body = sb_steal(&text);
        sb_free(&text);
        if (need_gateway(a, argv[1]) < 0 || check_e164("--from", from) < 0 ||
            check_e164("--to", to) < 0)
            return EXIT_ERR;
        if (a->gw->kind != TRANSPORT_SMS) {
            fprintf(stderr, "postern-admin: %s is not an SMS gateway\n",
                    a->gw->jid);
            return EXIT_ERR;
        }
        a->msg.from_addr = xstrdup(from);
        a->msg.to_addr = xstrdup(to);
        return 0;
    }
    fprintf(stderr, "postern-admin: unknown command %s\n", cmd);
    return EXIT_USAGE;
}

/* ---- main --------------------------------------------------------------*/

static int run(struct admin *a, unsigned timeout_s)
{
    struct error err;
    struct timeval tv = {(time_t)timeout_s, 0};

    error_clear(&err);
    a->base = event_base_new();
    if (!a->base) {
        fprintf(stderr, "postern-admin: cannot create an event loop\n");
        return EXIT_ERR;
    }
    a->store = store_new(a->base, a->cfg->redis.url, a->cfg->redis.prefix,
                         a->cfg->redis.timeout_ms, &err);
    if (!a->store) {
        fprintf(stderr, "postern-admin: redis.url: %s\n", err.msg);
        return EXIT_ERR;
    }
    store_on_state(a->store, on_state, a);
    a->timeout_ev = event_new(a->base, -1, 0, timeout_cb, a);
    event_add(a->timeout_ev, &tv);
    a->rc = EXIT_ERR;
    event_base_dispatch(a->base);
    if (!a->finished)
        fprintf(stderr, "postern-admin: %s: event loop ended early\n", a->cmd);
    return a->rc;
}

int admin_run(int argc, char **argv)
{
    const char *prog = "postern-admin";
    const char *path = DEFAULT_CONFIG;
    unsigned timeout_s = DEFAULT_TIMEOUT_S;
    struct admin a;
    struct strbuf errors;
    struct error err;
    int i, rc;

    memset(&a, 0, sizeof(a));
    for (i = 1; i < argc; i++) {
        const char *o = argv[i];
        if (strcmp(o, "-h") == 0 || strcmp(o, "--help") == 0) {
            usage(stdout, prog);
            return EXIT_OK;
        } else if (strcmp(o, "-c") == 0 || strcmp(o, "--config") == 0) {
            if (++i >= argc) {
                usage(stderr, prog);
                return EXIT_USAGE;
            }
            path = argv[i];
        } else if (str_has_prefix(o, "--config=")) {
            path = o + 9;
        } else if (strcmp(o, "--timeout") == 0) {
            char *end;
            unsigned long v;
            if (++i >= argc) {
                usage(stderr, prog);
                return EXIT_USAGE;
            }
            v = strtoul(argv[i], &end, 10);
            if (*end || v == 0 || v > 3600) {
                fprintf(stderr, "postern-admin: --timeout needs 1..3600\n");
                return EXIT_USAGE;
            }
            timeout_s = (unsigned)v;
        } else if (o[0] == '-') {
            fprintf(stderr, "postern-admin: unknown option %s\n", o);
            usage(stderr, prog);
            return EXIT_USAGE;
        } else {
            break;
        }
    }
    if (i >= argc) {
        usage(stderr, prog);
        return EXIT_USAGE;
    }
    if (strcmp(argv[i], "help") == 0) {
        usage(stdout, prog);
        return EXIT_OK;
    }

    /* warnings from store.c (Redis unreachable) are worth seeing here */
    log_init(L_WARNING, false, NULL, &err);
    sb_init(&errors);
    if (config_load(path, &a.cfg, &errors) < 0) {
        fprintf(stderr, "%s", errors.s ? errors.s : "");
        fprintf(stderr, "postern-admin: cannot load %s\n", path);
        sb_free(&errors);
        return EXIT_ERR;
    }
    sb_free(&errors);

    rc = parse_command(&a, argc - i, argv + i);
    if (rc == EXIT_USAGE) {
        usage(stderr, prog);
    } else if (rc == 0) {
        rc = run(&a, timeout_s);
    }

    if (a.queue)
        queue_free(a.queue);
    if (a.store)
        store_free(a.store);
    if (a.timeout_ev)
        event_free(a.timeout_ev);
    if (a.base)
        event_base_free(a.base);
    inmsg_free_fields(&a.msg);
    batch_clear(&a);
    free(a.dead_id);
    free(a.cursor);
    if (a.cfg)
        config_free(a.cfg);
    return rc;
}
