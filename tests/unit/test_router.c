/*
 * Unit tests for router.c. The router's stanzas go to a recording sink;
 * the transport is a fake defined here (E.164 contacts, claimable numbers
 * from the gateway config, a send() whose outcome each test picks). The
 * store is the real store.c on a private redis-server this test starts on
 * a free loopback port; when redis-server cannot be started, the tests
 * that need it are skipped and the others still run (with no store).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "addr.h"
#include "config.h"
#include "log.h"
#include "queue.h"
#include "router.h"
#include "stanza.h"
#include "store.h"
#include "transport.h"
#include "xnode.h"

extern char **environ;

#define GW "sms.test"
#define ALICE "alice@example.org/phone"
#define ALICE_BARE "alice@example.org"
#define BOB "bob@example.org/laptop"
#define MALLORY "mallory@evil.example/x"
#define NUM1 "+15550001111"
#define NUM2 "+15550002222"
#define CONTACT "+15551234567@" GW

/* ---- redis-server ------------------------------------------------------ */

static pid_t redis_pid;
static int redis_port;
static char redis_dir[64];
static unsigned prefix_seq;

static int free_port(void)
{
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int port = -1;

    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

static bool port_open(int port)
{
    struct sockaddr_in a;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    bool ok;

    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

static void redis_start(void)
{
    char port[16];

    snprintf(redis_dir, sizeof(redis_dir), "/tmp/test_router.XXXXXX");
    if (!mkdtemp(redis_dir))
        return;
    redis_port = free_port();
    if (redis_port < 0)
        return;
    snprintf(port, sizeof(port), "%d", redis_port);
    /* posix_spawn wants char *const argv[]: copy the literals. */
    char a0[] = "redis-server", a1[] = "--port", a3[] = "--bind",
         a4[] = "127.0.0.1", a5[] = "--save", a6[] = "", a7[] = "--appendonly",
         a8[] = "no", a9[] = "--dir", a11[] = "--loglevel", a12[] = "warning";
    char *argv[] = {a0, a1, port, a3,        a4,  a5,  a6,
                    a7, a8, a9,   redis_dir, a11, a12, NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    int rc = posix_spawnp(&redis_pid, "redis-server", &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
        redis_pid = 0;
        return;
    }
    for (int i = 0; i < 500 && !port_open(redis_port); i++)
        usleep(10000);
    if (!port_open(redis_port)) {
        kill(redis_pid, SIGTERM);
        waitpid(redis_pid, NULL, 0);
        redis_pid = 0;
    }
}

static void redis_stop(void)
{
    if (redis_pid > 0) {
        kill(redis_pid, SIGTERM);
        waitpid(redis_pid, NULL, 0);
        redis_pid = 0;
    }
    if (redis_dir[0])
        rmdir(redis_dir);
}

/* ---- recording sink ------------------------------------------------------ */

#define MAX_OUT 64

static struct xnode *out[MAX_OUT];
static size_t n_out;
static bool sink_up = true;

static int sink_send(void *arg, const struct xnode *n, struct error *err)
{
    (void)arg;
    if (!sink_up) {
        error_set(err, COND_SERVICE_UNAVAILABLE, true, "down");
        return -1;
    }
    assert_true(n_out < MAX_OUT);
    out[n_out++] = xnode_copy(n);
    return 0;
}

static bool sink_is_up(void *arg)
{
    (void)arg;
    return sink_up;
}

static void out_clear(void)
{
    for (size_t i = 0; i < n_out; i++)
        xnode_free(out[i]);
    n_out = 0;
}

/* ---- fake transport ------------------------------------------------------ */

enum send_mode {
    SEND_OK,
    SEND_FAIL_NOW,   /* send() returns -1, temporary */
    SEND_FAIL_LATER, /* done with a permanent item-not-found */
    SEND_TEMP_ONCE,  /* done with a temporary error once, then OK */
};

static enum send_mode send_mode;
static struct event_base *base;

struct sent {
    char *from_jid, *from_addr, *to_jid, *to_addr, *id, *body, *subject,
        *thread;
    char *media[MSG_MAX_MEDIA];
    size_t n_media;
    bool receipt;
};
static struct sent sent[8];
static size_t n_sent;

static char *dup_or_null(const char *s)
{
    return s ? xstrdup(s) : NULL;
}

static void sent_clear(void)
{
    for (size_t i = 0; i < n_sent; i++) {
        struct sent *s = &sent[i];
        free(s->from_jid);
        free(s->from_addr);
        free(s->to_jid);
        free(s->to_addr);
        free(s->id);
        free(s->body);
        free(s->subject);
        free(s->thread);
        for (size_t k = 0; k < s->n_media; k++)
            free(s->media[k]);
    }
    memset(sent, 0, sizeof(sent));
    n_sent = 0;
}

static int fake_addr_parse(const struct transport *t, const char *node, char *o,
                           size_t size, struct error *err)
{
    (void)t;
    if (!e164_valid(node) || strlen(node) >= size) {
        error_set(err, COND_JID_MALFORMED, false, "not an E.164 number");
        return -1;
    }
    strcpy(o, node);
    return 0;
}

static int fake_addr_to_node(const struct transport *t, const char *addr,
                             char *o, size_t size)
{
    (void)t;
    if (strlen(addr) >= size)
        return -1;
    strcpy(o, addr);
    return 0;
}

static int fake_from_human(const struct transport *t, const char *typed,
                           char *o, size_t size, struct error *err)
{
    (void)t;
    if (e164_from_human(typed, "1", o, size) < 0) {
        error_set(err, COND_NOT_ACCEPTABLE, false, "not a phone number");
        return -1;
    }
    return 0;
}

static int fake_claim(const struct transport *t, const char *typed, char *o,
                      size_t size, struct error *err)
{
    if (e164_from_human(typed, "1", o, size) < 0 ||
        !strlist_contains(&t->conf->numbers, o)) {
        error_set(err, COND_NOT_ACCEPTABLE, false, "not one of our numbers");
        return -1;
    }
    return 0;
}

struct pending_send {
    send_done_fn *done;
    void *arg;
    int fail; /* 0 no, 1 permanent, 2 temporary */
    size_t seq;
};

static void send_later(evutil_socket_t fd, short what, void *arg)
{
    struct pending_send *p = arg;
    struct error err;
    char pid[16];

    (void)fd;
    (void)what;
    /* provider ids SM1, SM2, ... in the order of the sends */
    snprintf(pid, sizeof(pid), "SM%zu", p->seq);
    if (p->fail == 1)
        error_set(&err, COND_ITEM_NOT_FOUND, false, "provider says no");
    else
        error_set(&err, COND_REMOTE_SERVER_TIMEOUT, true, "HTTP 503");
    p->done(p->arg, p->fail ? &err : NULL, p->fail ? NULL : pid);
    free(p);
}

static int fake_send(struct transport *t, const struct msg *m,
                     send_done_fn *done, void *arg, struct error *err)
{
    (void)t;
    assert_true(n_sent < ARRAY_SIZE(sent));
    struct sent *s = &sent[n_sent++];
    s->from_jid = dup_or_null(m->from_jid);
    s->from_addr = dup_or_null(m->from_addr);
    s->to_jid = dup_or_null(m->to_jid);
    s->to_addr = dup_or_null(m->to_addr);
    s->id = dup_or_null(m->id);
    s->body = dup_or_null(m->body);
    s->subject = dup_or_null(m->subject);
    s->thread = dup_or_null(m->thread);
    for (size_t i = 0; i < m->n_media; i++)
        s->media[i] = xstrdup(m->media[i]);
    s->n_media = m->n_media;
    s->receipt = m->receipt;
    if (send_mode == SEND_FAIL_NOW) {
        error_set(err, COND_POLICY_VIOLATION, true, "slow down");
        return -1;
    }
    struct pending_send *p = xcalloc(1, sizeof(*p));
    p->done = done;
    p->arg = arg;
    p->seq = n_sent - 1;
    p->fail = send_mode == SEND_FAIL_LATER ? 1 : 0;
    if (send_mode == SEND_TEMP_ONCE) {
        p->fail = 2;
        send_mode = SEND_OK;
    }
    event_base_once(base, -1, EV_TIMEOUT, send_later, p, NULL);
    return 0;
}

static const struct transport_ops fake_ops = {
    .abi = TRANSPORT_ABI,
    .name = "sms",
    .caps = TCAP_SEND | TCAP_RECEIVE | TCAP_MEDIA,
    .identity_type = "sms",
    .contact_type = "sms",
    .reg_field = "phone",
    .reg_label = "Phone number",
    .instructions = "Enter the number you want to use",
    .gateway_desc = "Enter a phone number",
    .gateway_prompt = "Phone number",
    .addr_parse = fake_addr_parse,
    .addr_to_node = fake_addr_to_node,
    .addr_from_human = fake_from_human,
    .claim = fake_claim,
    .send = fake_send,
};

static char transport_name[] = "sms", gw_jid[] = GW;
static char allowed0[] = "example.org";
static char number1[] = NUM1, number2[] = NUM2;
static char *allowed_v[] = {allowed0};
static char *numbers_v[] = {number1, number2};
static struct gateway_conf conf = {
    .transport = transport_name,
    .jid = gw_jid,
    .allowed_domains = {allowed_v, 1},
    .numbers = {numbers_v, 2},
};
static struct transport_host host;
static struct transport transport = {
    .ops = &fake_ops,
    .conf = &conf,
    .host = &host,
    .module = "sms[" GW "]",
};

/* ---- fixture ------------------------------------------------------------- */

static struct store *store;
static struct queue *queue;
static struct router *router;

static void tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
}

/* Runs the loop until the router and the queue have nothing in flight. */
static void settle(void)
{
    uint64_t deadline = now_ms() + 5000;

    while (
        (router_inflight(router) > 0 || (queue && queue_inflight(queue) > 0)) &&
        now_ms() < deadline)
        event_base_loop(base, EVLOOP_ONCE);
    assert_int_equal(router_inflight(router), 0);
}

/* Runs the loop until *n reaches want (queue work is polled). */
static void wait_count(const size_t *n, size_t want)
{
    uint64_t deadline = now_ms() + 5000;

    while (*n < want && now_ms() < deadline)
        event_base_loop(base, EVLOOP_ONCE);
    assert_int_equal(*n, want);
    settle();
}

/* Runs the loop for ms (to see that nothing more happens). */
static void run_for(unsigned ms)
{
    uint64_t deadline = now_ms() + ms;

    while (now_ms() < deadline)
        event_base_loop(base, EVLOOP_ONCE);
}

static void connect_store(void)
{
    char url[64];
    char prefix[32];
    struct error err;

    snprintf(url, sizeof(url), "redis://127.0.0.1:%d/0", redis_port);
    snprintf(prefix, sizeof(prefix), "t%u-%d", ++prefix_seq, (int)getpid());
    store = store_new(base, url, prefix, 2000, &err);
    assert_non_null(store);
    uint64_t deadline = now_ms() + 5000;
    while (!store_connected(store) && now_ms() < deadline)
        event_base_loop(base, EVLOOP_ONCE);
    assert_true(store_connected(store));
}

static struct event *ticker;

static int setup_common(bool with_store)
{
    struct router_sink sink = {sink_send, sink_is_up, NULL};
    struct timeval tv = {0, 50000};

    base = event_base_new();
    ticker = event_new(base, -1, EV_PERSIST, tick, NULL);
    event_add(ticker, &tv);
    sink_up = true;
    send_mode = SEND_OK;
    host.queue = NULL;
    if (with_store) {
        connect_store();
        queue = queue_new(base, store, "test");
        host.queue = queue;
    }
    router = router_new(&transport, &sink, store);
    if (queue) {
        struct outbound_conf oc = {.retry_base_ms = 50, .retry_cap_ms = 100};
        queue_inbound_register(queue, GW, router_deliver, router_ready, router);
        queue_outbound_register(queue, GW, &oc, router_send, router);
    }
    return 0;
}

static int setup_pure(void **state)
{
    (void)state;
    return setup_common(false);
}

static int setup_redis(void **state)
{
    (void)state;
    if (redis_pid <= 0)
        return -1;
    return setup_common(true);
}

static int teardown(void **state)
{
    (void)state;
    if (router)
        settle();
    if (queue)
        queue_free(queue);
    queue = NULL;
    router_free(router);
    router = NULL;
    if (store)
        store_free(store);
    store = NULL;
    /* Let deferred callbacks of the store and the fake transport run. */
    for (int i = 0; i < 5; i++)
        event_base_loop(base, EVLOOP_NONBLOCK);
    event_free(ticker);
    event_base_free(base);
    base = NULL;
    out_clear();
    sent_clear();
    return 0;
}

/* ---- stanza helpers ------------------------------------------------------ */

static struct xnode *stanza(const char *name, const char *type,
                            const char *from, const char *to, const char *id)
{
    struct xnode *n = xnode_new(name);
    xnode_set_attr(n, "type", type);
    xnode_set_attr(n, "from", from);
    xnode_set_attr(n, "to", to);
    xnode_set_attr(n, "id", id);
    return n;
}

/* Feeds n to the router (taken), then lets async work finish. */
static void feed(struct xnode *n)
{
    router_on_stanza(router, n);
    xnode_free(n);
    if (store)
        settle();
}

static void iq_query(const char *type, const char *from, const char *to,
                     const char *id, const char *ns)
{
    struct xnode *iq = stanza("iq", type, from, to, id);
    xnode_add_ns(iq, "query", ns);
    feed(iq);
}

static void assert_attr(const struct xnode *n, const char *name,
                        const char *want)
{
    const char *got = xnode_attr(n, name);
    if (!want) {
        assert_null(got);
        return;
    }
    assert_non_null(got);
    assert_string_equal(got, want);
}

/* The condition and type of an error stanza. */
static void assert_error(const struct xnode *n, const char *id,
                         const char *cond, const char *type)
{
    assert_attr(n, "type", "error");
    assert_attr(n, "id", id);
    const struct xnode *e = xnode_child(n, "error", NULL);
    assert_non_null(e);
    assert_attr(e, "type", type);
    assert_non_null(xnode_child(e, cond, NS_STANZAS));
    assert_non_null(xnode_child_text(e, "text", NS_STANZAS));
}

static bool has_feature(const struct xnode *q, const char *var)
{
    for (size_t i = 0; i < q->nkids; i++)
        if (!strcmp(q->kids[i]->name, "feature") &&
            !strcmp(xnode_attr(q->kids[i], "var"), var))
            return true;
    return false;
}

static const struct xnode *find_field(const struct xnode *x, const char *var)
{
    for (size_t i = 0; i < x->nkids; i++) {
        const char *v = xnode_attr(x->kids[i], "var");
        if (!strcmp(x->kids[i]->name, "field") && v && !strcmp(v, var))
            return x->kids[i];
    }
    return NULL;
}

/* Index of the first recorded presence of type (NULL: available). */
static const struct xnode *find_presence(const char *from, const char *type)
{
    for (size_t i = 0; i < n_out; i++) {
        const char *t = xnode_attr(out[i], "type");
        if (strcmp(out[i]->name, "presence") ||
            strcmp(xnode_attr(out[i], "from"), from))
            continue;
        if ((!type && !t) || (type && t && !strcmp(type, t)))
            return out[i];
    }
    return NULL;
}

static void register_phone(const char *from, const char *value)
{
    struct xnode *iq = stanza("iq", "set", from, GW, "reg");
    struct xnode *q = xnode_add_ns(iq, "query", NS_REGISTER);
    xnode_add_text(q, "phone", value);
    feed(iq);
}

static void send_chat(const char *from, const char *to, const char *body)
{
    struct xnode *m = stanza("message", "chat", from, to, "c1");
    xnode_add_text(m, "body", body);
    feed(m);
}

/* ---- tests without a store ----------------------------------------------- */

static void test_disco_info_gateway(void **state)
{
    (void)state;
    iq_query("get", ALICE, GW, "d1", NS_DISCO_INFO);
    assert_int_equal(n_out, 1);
    const struct xnode *r = out[0];
    assert_attr(r, "type", "result");
    assert_attr(r, "id", "d1");
    assert_attr(r, "from", GW);
    assert_attr(r, "to", ALICE);
    const struct xnode *q = xnode_child(r, "query", NS_DISCO_INFO);
    assert_non_null(q);
    const struct xnode *id = xnode_child(q, "identity", NULL);
    assert_attr(id, "category", "gateway");
    assert_attr(id, "type", "sms");
    assert_attr(id, "name", "postern SMS gateway");
    static const char *const want[] = {
        NS_REGISTER,   NS_GATEWAY,     NS_RECEIPTS, NS_PING, NS_VERSION,
        NS_DISCO_INFO, NS_DISCO_ITEMS, NS_COMMANDS, NS_OOB,
    };
    for (size_t i = 0; i < ARRAY_SIZE(want); i++)
        assert_true(has_feature(q, want[i]));
}

static void test_caps_match_disco(void **state)
{
    (void)state;
    /* The ver in the gateway's presence is the hash of its disco#info. */
    struct xnode *p = stanza("presence", "subscribe", ALICE, GW, NULL);
    feed(p);
    const struct xnode *av = find_presence(GW, NULL);
    assert_non_null(find_presence(GW, "subscribed"));
    assert_non_null(av);
    const struct xnode *c = xnode_child(av, "c", NS_CAPS);
    assert_non_null(c);
    assert_attr(c, "hash", "sha-1");
    const char *ver = xnode_attr(c, "ver");
    const char *node = xnode_attr(c, "node");
    assert_non_null(ver);
    assert_non_null(node);

    iq_query("get", ALICE, GW, "d2", NS_DISCO_INFO);
    const struct xnode *q = xnode_child(out[n_out - 1], "query", NULL);
    const char *features[16];
    size_t n = 0;
    for (size_t i = 0; i < q->nkids && n < 16; i++)
        if (!strcmp(q->kids[i]->name, "feature"))
            features[n++] = xnode_attr(q->kids[i], "var");
    const struct xnode *id = xnode_child(q, "identity", NULL);
    char want[32];
    stanza_caps_ver(xnode_attr(id, "category"), xnode_attr(id, "type"),
                    xnode_attr(id, "name"), features, n, want, sizeof(want));
    assert_string_equal(ver, want);

    /* disco#info on node#ver answers the same, echoing the node. */
    char *capsnode = xasprintf("%s#%s", node, ver);
    struct xnode *iq = stanza("iq", "get", ALICE, GW, "d3");
    xnode_set_attr(xnode_add_ns(iq, "query", NS_DISCO_INFO), "node", capsnode);
    feed(iq);
    q = xnode_child(out[n_out - 1], "query", NS_DISCO_INFO);
    assert_non_null(q);
    assert_attr(q, "node", capsnode);
    assert_true(has_feature(q, NS_REGISTER));
    free(capsnode);
}

static void test_disco_contact(void **state)
{
    (void)state;
    iq_query("get", ALICE, CONTACT, "d1", NS_DISCO_INFO);
    assert_int_equal(n_out, 1);
    const struct xnode *q = xnode_child(out[0], "query", NS_DISCO_INFO);
    assert_attr(out[0], "from", CONTACT);
    const struct xnode *id = xnode_child(q, "identity", NULL);
    assert_attr(id, "category", "client");
    assert_attr(id, "type", "sms");
    assert_true(has_feature(q, NS_RECEIPTS));
    assert_true(has_feature(q, NS_OOB));
    assert_false(has_feature(q, NS_REGISTER));

    iq_query("get", ALICE, "notanumber@" GW, "d2", NS_DISCO_INFO);
    assert_int_equal(n_out, 2);
    assert_error(out[1], "d2", "jid-malformed", "modify");

    iq_query("get", ALICE, CONTACT, "p1", NS_PING);
    assert_attr(out[2], "type", "result");
    assert_attr(out[2], "id", "p1");
}

static void test_disco_items_commands(void **state)
{
    (void)state;
    iq_query("get", ALICE, GW, "i1", NS_DISCO_ITEMS);
    assert_int_equal(n_out, 1);
    assert_attr(out[0], "type", "result");
    assert_non_null(xnode_child(out[0], "query", NS_DISCO_ITEMS));

    struct xnode *iq = stanza("iq", "get", ALICE, GW, "i2");
    xnode_set_attr(xnode_add_ns(iq, "query", NS_DISCO_ITEMS), "node",
                   NS_COMMANDS);
    feed(iq);
    const struct xnode *q = xnode_child(out[1], "query", NS_DISCO_ITEMS);
    assert_attr(q, "node", NS_COMMANDS);
    const struct xnode *item = xnode_child(q, "item", NULL);
    assert_non_null(item);
    assert_attr(item, "node", NS_REGISTER);
    assert_attr(item, "jid", GW);
}

static void test_version_ping_unknown(void **state)
{
    (void)state;
    iq_query("get", ALICE, GW, "v1", NS_VERSION);
    const struct xnode *q = xnode_child(out[0], "query", NS_VERSION);
    assert_non_null(q);
    assert_string_equal(xnode_child_text(q, "name", NULL), "postern");
    assert_non_null(xnode_child_text(q, "version", NULL));

    iq_query("get", ALICE, GW, "p1", NS_PING);
    assert_attr(out[1], "type", "result");
    assert_attr(out[1], "id", "p1");
    assert_int_equal(out[1]->nkids, 0);

    iq_query("get", ALICE, GW, "u1", "urn:example:nothing");
    assert_error(out[2], "u1", "service-unavailable", "cancel");

    /* Results and errors are never answered. */
    iq_query("result", ALICE, GW, "r1", NS_PING);
    iq_query("error", ALICE, GW, "r2", NS_PING);
    assert_int_equal(n_out, 3);

    feed(stanza("iq", "get", ALICE, GW, "e1"));
    assert_error(out[3], "e1", "bad-request", "modify");
}

static void test_iq_gateway(void **state)
{
    (void)state;
    iq_query("get", ALICE, GW, "g1", NS_GATEWAY);
    const struct xnode *q = xnode_child(out[0], "query", NS_GATEWAY);
    assert_string_equal(xnode_child_text(q, "desc", NULL),
                        "Enter a phone number");
    assert_string_equal(xnode_child_text(q, "prompt", NULL), "Phone number");

    struct xnode *iq = stanza("iq", "set", ALICE, GW, "g2");
    xnode_add_text(xnode_add_ns(iq, "query", NS_GATEWAY), "prompt",
                   "(555) 123-4567");
    feed(iq);
    q = xnode_child(out[1], "query", NS_GATEWAY);
    assert_non_null(q);
    assert_string_equal(xnode_child_text(q, "jid", NULL), CONTACT);

    iq = stanza("iq", "set", ALICE, GW, "g3");
    xnode_add_text(xnode_add_ns(iq, "query", NS_GATEWAY), "prompt",
                   "call me maybe");
    feed(iq);
    assert_error(out[2], "g3", "not-acceptable", "cancel");
}

static void test_not_allowed(void **state)
{
    (void)state;
    register_phone(MALLORY, NUM1);
    assert_int_equal(n_out, 1);
    assert_error(out[0], "reg", "not-allowed", "cancel");

    send_chat(MALLORY, CONTACT, "hello");
    assert_error(out[1], "c1", "not-allowed", "cancel");

    send_chat(MALLORY, GW, "register " NUM1);
    assert_error(out[2], "c1", "not-allowed", "cancel");
    assert_int_equal(n_out, 3);
}

static void test_message_checks(void **state)
{
    (void)state;
    send_chat(ALICE, "nonsense@" GW, "hello");
    assert_error(out[0], "c1", "jid-malformed", "modify");
    assert_attr(out[0], "from", "nonsense@" GW);
    assert_attr(out[0], "to", ALICE);
    assert_string_equal(xnode_child_text(out[0], "body", NULL), "hello");

    send_chat(ALICE, CONTACT, "  \n ");
    assert_error(out[1], "c1", "bad-request", "modify");

    /* No body: chat states, receipts; groupchat and error: ignored. */
    struct xnode *m = stanza("message", "chat", ALICE, CONTACT, "x");
    xnode_add_ns(m, "composing", NS_CHATSTATES);
    feed(m);
    m = stanza("message", "groupchat", ALICE, CONTACT, "x");
    xnode_add_text(m, "body", "hi");
    feed(m);
    m = stanza("message", "error", ALICE, CONTACT, "x");
    xnode_add_text(m, "body", "hi");
    feed(m);
    assert_int_equal(n_out, 2);
    assert_int_equal(n_sent, 0);
}

static void test_chat_help(void **state)
{
    (void)state;
    send_chat(ALICE, GW, "help");
    assert_int_equal(n_out, 1);
    assert_attr(out[0], "type", "chat");
    assert_attr(out[0], "from", GW);
    assert_attr(out[0], "to", ALICE);
    const char *body = xnode_child_text(out[0], "body", NULL);
    assert_non_null(strstr(body, "register " NUM1));
    assert_non_null(strstr(body, "unregister"));
    assert_non_null(strstr(body, "status"));

    send_chat(ALICE, GW, "frobnicate");
    body = xnode_child_text(out[1], "body", NULL);
    assert_non_null(strstr(body, "Unknown command"));
    assert_non_null(strstr(body, "unregister"));
}

static void test_presence_contact_invalid(void **state)
{
    (void)state;
    feed(stanza("presence", "subscribe", ALICE, "bogus@" GW, NULL));
    assert_int_equal(n_out, 1);
    assert_attr(out[0], "type", "error");
    assert_non_null(xnode_child(xnode_child(out[0], "error", NULL),
                                "jid-malformed", NS_STANZAS));
    feed(stanza("presence", "subscribe", MALLORY, GW, NULL));
    assert_attr(out[1], "type", "unsubscribed");
    assert_int_equal(n_out, 2);
}

/* ---- tests with redis ------------------------------------------------------
 */

static void test_register_get_set_get(void **state)
{
    (void)state;
    iq_query("get", ALICE, GW, "g1", NS_REGISTER);
    assert_int_equal(n_out, 1);
    const struct xnode *q = xnode_child(out[0], "query", NS_REGISTER);
    assert_non_null(q);
    assert_non_null(xnode_child(q, "instructions", NULL));
    assert_null(xnode_child(q, "registered", NULL));
    assert_non_null(xnode_child(q, "phone", NULL));
    const struct xnode *x = xnode_child(q, "x", NS_DATA);
    assert_non_null(x);
    assert_attr(x, "type", "form");
    const struct xnode *ft = find_field(x, "FORM_TYPE");
    assert_non_null(ft);
    assert_string_equal(xnode_child_text(ft, "value", NULL), NS_REGISTER);
    assert_non_null(find_field(x, "phone"));

    register_phone(ALICE, "+1 (555) 000-1111");
    assert_int_equal(n_out, 3);
    assert_attr(out[1], "type", "result");
    assert_attr(out[1], "id", "reg");
    /* XEP-0100: the gateway subscribes to the user's bare JID. */
    assert_string_equal(out[2]->name, "presence");
    assert_attr(out[2], "type", "subscribe");
    assert_attr(out[2], "from", GW);
    assert_attr(out[2], "to", ALICE_BARE);

    iq_query("get", ALICE, GW, "g2", NS_REGISTER);
    q = xnode_child(out[3], "query", NS_REGISTER);
    assert_non_null(xnode_child(q, "registered", NULL));
    assert_string_equal(xnode_child_text(q, "phone", NULL), NUM1);
    x = xnode_child(q, "x", NS_DATA);
    assert_string_equal(xnode_child_text(find_field(x, "phone"), "value", NULL),
                        NUM1);
}

static void test_register_errors_and_replace(void **state)
{
    (void)state;
    register_phone(ALICE, "+15559999999");
    assert_error(out[0], "reg", "not-acceptable", "cancel");
    register_phone(ALICE, "");
    assert_error(out[1], "reg", "not-acceptable", "cancel");

    register_phone(ALICE, NUM1);
    assert_attr(out[2], "type", "result");
    out_clear();
    register_phone(BOB, NUM1);
    assert_int_equal(n_out, 1);
    assert_error(out[0], "reg", "conflict", "cancel");

    /* Re-registering replaces: NUM1 becomes free for bob. */
    register_phone(ALICE, NUM2);
    assert_attr(out[1], "type", "result");
    register_phone(BOB, NUM1);
    assert_attr(out[3], "type", "result");

    /* Registration through the data form. */
    out_clear();
    struct xnode *iq = stanza("iq", "set", "carol@example.org/c", GW, "f1");
    struct xnode *x =
        xnode_add_ns(xnode_add_ns(iq, "query", NS_REGISTER), "x", NS_DATA);
    xnode_set_attr(x, "type", "submit");
    struct xnode *f = xnode_add(x, "field");
    xnode_set_attr(f, "var", "phone");
    xnode_add_text(f, "value", NUM2);
    feed(iq);
    assert_error(out[0], "f1", "conflict", "cancel");
}

static void test_remove(void **state)
{
    (void)state;
    register_phone(ALICE, NUM1);
    feed(stanza("presence", "subscribe", ALICE, CONTACT, NULL));
    out_clear();

    struct xnode *iq = stanza("iq", "set", ALICE, GW, "rm");
    xnode_add(xnode_add_ns(iq, "query", NS_REGISTER), "remove");
    feed(iq);
    assert_attr(out[0], "type", "result");
    assert_attr(out[0], "id", "rm");
    assert_non_null(find_presence(GW, "unsubscribe"));
    assert_non_null(find_presence(GW, "unsubscribed"));
    assert_non_null(find_presence(CONTACT, "unsubscribed"));

    iq_query("get", ALICE, GW, "g", NS_REGISTER);
    const struct xnode *q = xnode_child(out[n_out - 1], "query", NULL);
    assert_null(xnode_child(q, "registered", NULL));

    /* Nothing is sent for an unregistered JID. */
    send_chat(ALICE, CONTACT, "still there?");
    assert_error(out[n_out - 1], "c1", "registration-required", "auth");
    assert_int_equal(n_sent, 0);

    iq = stanza("iq", "set", ALICE, GW, "rm2");
    xnode_add(xnode_add_ns(iq, "query", NS_REGISTER), "remove");
    feed(iq);
    assert_error(out[n_out - 1], "rm2", "registration-required", "auth");
}

static void test_adhoc(void **state)
{
    (void)state;
    struct xnode *iq = stanza("iq", "set", ALICE, GW, "a1");
    struct xnode *c = xnode_add_ns(iq, "command", NS_COMMANDS);
    xnode_set_attr(c, "node", NS_REGISTER);
    xnode_set_attr(c, "action", "execute");
    feed(iq);
    assert_int_equal(n_out, 1);
    const struct xnode *rc = xnode_child(out[0], "command", NS_COMMANDS);
    assert_non_null(rc);
    assert_attr(rc, "status", "executing");
    const char *sid = xnode_attr(rc, "sessionid");
    assert_non_null(sid);
    char *sessionid = xstrdup(sid);
    const struct xnode *x = xnode_child(rc, "x", NS_DATA);
    assert_non_null(find_field(x, "phone"));

    iq = stanza("iq", "set", ALICE, GW, "a2");
    c = xnode_add_ns(iq, "command", NS_COMMANDS);
    xnode_set_attr(c, "node", NS_REGISTER);
    xnode_set_attr(c, "sessionid", sessionid);
    xnode_set_attr(c, "action", "complete");
    struct xnode *fx = xnode_add_ns(c, "x", NS_DATA);
    xnode_set_attr(fx, "type", "submit");
    struct xnode *f = xnode_add(fx, "field");
    xnode_set_attr(f, "var", "phone");
    xnode_add_text(f, "value", NUM2);
    feed(iq);
    rc = xnode_child(out[1], "command", NS_COMMANDS);
    assert_non_null(rc);
    assert_attr(rc, "status", "completed");
    assert_attr(rc, "sessionid", sessionid);
    assert_non_null(strstr(xnode_child_text(rc, "note", NULL), NUM2));
    assert_non_null(find_presence(GW, "subscribe"));

    /* The form now shows the current value. */
    out_clear();
    iq = stanza("iq", "set", ALICE, GW, "a3");
    c = xnode_add_ns(iq, "command", NS_COMMANDS);
    xnode_set_attr(c, "node", NS_REGISTER);
    feed(iq);
    rc = xnode_child(out[0], "command", NS_COMMANDS);
    x = xnode_child(rc, "x", NS_DATA);
    assert_string_equal(xnode_child_text(find_field(x, "phone"), "value", NULL),
                        NUM2);

    iq = stanza("iq", "set", ALICE, GW, "a4");
    c = xnode_add_ns(iq, "command", NS_COMMANDS);
    xnode_set_attr(c, "node", NS_REGISTER);
    xnode_set_attr(c, "sessionid", sessionid);
    xnode_set_attr(c, "action", "cancel");
    feed(iq);
    rc = xnode_child(out[1], "command", NS_COMMANDS);
    assert_attr(rc, "status", "canceled");

    iq = stanza("iq", "set", ALICE, GW, "a5");
    c = xnode_add_ns(iq, "command", NS_COMMANDS);
    xnode_set_attr(c, "node", "no-such-command");
    feed(iq);
    assert_error(out[2], "a5", "item-not-found", "cancel");
    free(sessionid);
}

static void test_chat_commands(void **state)
{
    (void)state;
    send_chat(ALICE, GW, "status");
    assert_non_null(
        strstr(xnode_child_text(out[0], "body", NULL), "not registered"));
    send_chat(ALICE, GW, "REGISTER " NUM1);
    assert_non_null(
        strstr(xnode_child_text(out[1], "body", NULL), "Registered"));
    assert_non_null(find_presence(GW, "subscribe"));
    send_chat(BOB, GW, "register " NUM1);
    assert_attr(out[n_out - 1], "type", "chat");
    assert_non_null(
        strstr(xnode_child_text(out[n_out - 1], "body", NULL), "failed"));
    out_clear();
    send_chat(ALICE, GW, "status");
    assert_non_null(strstr(xnode_child_text(out[0], "body", NULL), NUM1));
    send_chat(ALICE, GW, "unregister");
    assert_non_null(
        strstr(xnode_child_text(out[1], "body", NULL), "Unregistered"));
    send_chat(ALICE, GW, "unregister");
    assert_non_null(strstr(xnode_child_text(out[n_out - 1], "body", NULL),
                           "not registered"));
}

static void test_send_message(void **state)
{
    (void)state;
    send_chat(ALICE, CONTACT, "hi");
    assert_error(out[0], "c1", "registration-required", "auth");
    assert_attr(out[0], "from", CONTACT);
    assert_attr(out[0], "to", ALICE);
    register_phone(ALICE, NUM1);
    out_clear();

    struct xnode *m = stanza("message", NULL, ALICE, CONTACT, "m1");
    xnode_add_text(m, "body", "hello there");
    xnode_add_text(m, "subject", "subj");
    xnode_add_text(m, "thread", "th1");
    xnode_add_ns(m, "request", NS_RECEIPTS);
    feed(m);
    /* persisted first; the queue's consumer sends it a moment later */
    wait_count(&n_sent, 1);
    assert_int_equal(n_out, 0); /* success: no reply, receipts come later */
    assert_string_equal(sent[0].from_jid, ALICE);
    assert_string_equal(sent[0].from_addr, NUM1);
    assert_string_equal(sent[0].to_jid, CONTACT);
    assert_string_equal(sent[0].to_addr, "+15551234567");
    assert_string_equal(sent[0].id, "m1");
    assert_string_equal(sent[0].body, "hello there");
    assert_string_equal(sent[0].subject, "subj");
    assert_string_equal(sent[0].thread, "th1");
    assert_true(sent[0].receipt);
    assert_int_equal(sent[0].n_media, 0);

    /* Body that is exactly the one OOB URL: media only. */
    m = stanza("message", "chat", ALICE, CONTACT, "m2");
    xnode_add_text(m, "body", "https://up.example.org/a.jpg");
    xnode_add_text(xnode_add_ns(m, "x", NS_OOB), "url",
                   "https://up.example.org/a.jpg");
    feed(m);
    wait_count(&n_sent, 2);
    assert_null(sent[1].body);
    assert_false(sent[1].receipt);
    assert_int_equal(sent[1].n_media, 1);
    assert_string_equal(sent[1].media[0], "https://up.example.org/a.jpg");

    /* A temporary failure is retried; the user hears nothing. */
    send_mode = SEND_TEMP_ONCE;
    send_chat(ALICE, CONTACT, "flaky");
    wait_count(&n_sent, 4);
    assert_string_equal(sent[2].body, "flaky");
    assert_string_equal(sent[3].body, "flaky");
    run_for(300);
    assert_int_equal(n_sent, 4);
    assert_int_equal(n_out, 0);

    /* A permanent failure comes back later as an error stanza. */
    send_mode = SEND_FAIL_LATER;
    send_chat(ALICE, CONTACT, "nobody home");
    wait_count(&n_out, 1);
    assert_int_equal(n_sent, 5);
    assert_error(out[0], "c1", "item-not-found", "cancel");
    assert_attr(out[0], "from", CONTACT);
    assert_attr(out[0], "to", ALICE);
    assert_string_equal(xnode_child_text(out[0], "body", NULL), "nobody home");
    assert_string_equal(
        xnode_child_text(xnode_child(out[0], "error", NULL), "text", NULL),
        "provider says no");
    run_for(300);
    assert_int_equal(n_sent, 5); /* not retried */
    assert_int_equal(n_out, 1);

    router_stop(router);
    send_mode = SEND_OK;
    send_chat(ALICE, CONTACT, "late");
    assert_error(out[1], "c1", "service-unavailable", "wait");
    run_for(300);
    assert_int_equal(n_sent, 5);
}

struct sent_result {
    int calls;
    struct error err;
    bool failed;
};

static void on_router_sent(void *arg, const struct error *err,
                           const char *provider_id, unsigned retry_after_ms)
{
    struct sent_result *r = arg;

    (void)provider_id;
    (void)retry_after_ms;
    r->calls++;
    r->failed = err != NULL;
    if (err)
        r->err = *err;
}

static void test_send_unregistered(void **state)
{
    (void)state;
    struct sent_result res = {0};
    struct outmsg m;
    char from[] = ALICE, to_jid[] = CONTACT, from_addr[] = NUM1,
         to_addr[] = "+15551234567", body[] = "queued before unregistering";

    memset(&m, 0, sizeof(m));
    m.from_jid = from;
    m.to_jid = to_jid;
    m.from_addr = from_addr;
    m.to_addr = to_addr;
    m.body = body;
    /* not registered (any more): nothing is sent, permanently */
    router_send(router, &m, on_router_sent, &res);
    assert_int_equal(res.calls, 0);
    settle();
    assert_int_equal(res.calls, 1);
    assert_true(res.failed);
    assert_int_equal(res.err.code, COND_REGISTRATION_REQUIRED);
    assert_false(res.err.temporary);
    assert_int_equal(n_sent, 0);

    register_phone(ALICE, NUM1);
    res.calls = 0;
    router_send(router, &m, on_router_sent, &res);
    settle();
    assert_int_equal(res.calls, 1);
    assert_false(res.failed);
    assert_int_equal(n_sent, 1);
}

static void message_with_receipt(const char *id, const char *body)
{
    struct xnode *m = stanza("message", "chat", ALICE, CONTACT, id);
    xnode_add_text(m, "body", body);
    xnode_add_ns(m, "request", NS_RECEIPTS);
    feed(m);
}

static size_t n_ddone, n_ddone_err;

static void delivery_done(void *arg, const struct error *err)
{
    (void)arg;
    n_ddone++;
    if (err)
        n_ddone_err++;
}

static void test_receipts(void **state)
{
    (void)state;
    struct error err;

    register_phone(ALICE, NUM1);
    out_clear();
    message_with_receipt("r0", "one"); /* SM0 */
    wait_count(&n_sent, 1);
    send_chat(ALICE, CONTACT, "no receipt"); /* SM1 */
    wait_count(&n_sent, 2);
    message_with_receipt("r2", "three"); /* SM2 */
    wait_count(&n_sent, 3);
    assert_int_equal(n_out, 0);

    /* delivered + receipt requested: <received id='r0'/> to the sender */
    router_on_delivery(router, "SM0", DELIVERY_SENT, NULL, delivery_done, NULL);
    router_on_delivery(router, "SM0", DELIVERY_DELIVERED, NULL, delivery_done,
                       NULL);
    wait_count(&n_out, 1);
    assert_string_equal(out[0]->name, "message");
    assert_attr(out[0], "from", CONTACT);
    assert_attr(out[0], "to", ALICE);
    assert_non_null(xnode_attr(out[0], "id"));
    const struct xnode *rc = xnode_child(out[0], "received", NS_RECEIPTS);
    assert_non_null(rc);
    assert_attr(rc, "id", "r0");

    /* each status is answered once, and stored: the webhook says 2xx */
    wait_count(&n_ddone, 2);
    assert_int_equal(n_ddone_err, 0);

    /* the provider repeats itself: still one receipt */
    router_on_delivery(router, "SM0", DELIVERY_DELIVERED, NULL, delivery_done,
                       NULL);
    /* delivered without a receipt request, unknown ids: nothing */
    router_on_delivery(router, "SM1", DELIVERY_DELIVERED, NULL, delivery_done,
                       NULL);
    router_on_delivery(router, "SM99", DELIVERY_FAILED, NULL, delivery_done,
                       NULL);
    run_for(500);
    assert_int_equal(n_out, 1);
    assert_int_equal(n_ddone, 5);
    assert_int_equal(n_ddone_err, 0);

    /* failed after acceptance: an error with the provider's reason, even
     * while the stream is down (it waits in the queue) */
    sink_up = false;
    error_set(&err, COND_NONE, false, "carrier rejected the message");
    router_on_delivery(router, "SM2", DELIVERY_FAILED, &err, delivery_done,
                       NULL);
    run_for(500);
    assert_int_equal(n_out, 1);
    sink_up = true;
    queue_kick(queue);
    wait_count(&n_out, 2);
    assert_error(out[1], "r2", "recipient-unavailable", "cancel");
    assert_attr(out[1], "from", CONTACT);
    assert_attr(out[1], "to", ALICE);
    assert_non_null(strstr(
        xnode_child_text(xnode_child(out[1], "error", NULL), "text", NULL),
        "carrier rejected the message"));

    /* unregistered: nothing is delivered to that JID any more */
    message_with_receipt("r3", "four"); /* SM3 */
    wait_count(&n_sent, 4);
    struct xnode *iq = stanza("iq", "set", ALICE, GW, "unreg");
    xnode_add(xnode_add_ns(iq, "query", NS_REGISTER), "remove");
    feed(iq);
    size_t before = n_out;
    router_on_delivery(router, "SM3", DELIVERY_DELIVERED, NULL, delivery_done,
                       NULL);
    run_for(500);
    for (size_t i = before; i < n_out; i++)
        assert_null(xnode_child(out[i], "received", NS_RECEIPTS));
}

static void test_presence_flow(void **state)
{
    (void)state;
    register_phone(ALICE, NUM1);
    out_clear();
    feed(stanza("presence", "subscribe", ALICE, CONTACT, NULL));
    assert_non_null(find_presence(CONTACT, "subscribed"));
    assert_non_null(find_presence(CONTACT, "subscribe"));
    const struct xnode *av = find_presence(CONTACT, NULL);
    assert_non_null(av);
    assert_attr(av, "to", ALICE_BARE);
    assert_non_null(xnode_child(av, "c", NS_CAPS));

    out_clear();
    feed(stanza("presence", "probe", ALICE_BARE, GW, NULL));
    assert_int_equal(n_out, 2);
    assert_non_null(find_presence(GW, NULL));
    av = find_presence(CONTACT, NULL);
    assert_non_null(av);
    assert_non_null(xnode_child(av, "c", NS_CAPS));

    out_clear();
    feed(stanza("presence", "unsubscribe", ALICE, CONTACT, NULL));
    assert_non_null(find_presence(CONTACT, "unsubscribed"));
    out_clear();
    feed(stanza("presence", NULL, ALICE, GW, NULL));
    assert_int_equal(n_out, 1);
    assert_non_null(find_presence(GW, NULL));

    out_clear();
    feed(stanza("presence", "unavailable", ALICE, GW, NULL));
    assert_non_null(find_presence(GW, "unavailable"));

    /* Unregistered user: no presence for an available. */
    out_clear();
    feed(stanza("presence", NULL, BOB, GW, NULL));
    assert_int_equal(n_out, 0);
}

struct delivery {
    enum deliver_result res;
    int calls;
};

static void on_delivered(enum deliver_result res, void *arg)
{
    struct delivery *d = arg;
    d->res = res;
    d->calls++;
}

static void test_deliver(void **state)
{
    (void)state;
    struct delivery d = {DELIVER_OK, 0};
    struct inmsg m;

    char to[] = NUM1, from[] = "+15551234567", body[] = "inbound text";
    char url1[] = "https://media.example/1.jpg";
    char url2[] = "https://media.example/2.jpg";

    memset(&m, 0, sizeof(m));
    m.to_addr = to;
    m.from_addr = from;
    m.body = body;
    m.media[0] = url1;
    m.media[1] = url2;
    m.n_media = 2;

    router_deliver(router, &m, on_delivered, &d);
    assert_int_equal(d.calls, 0); /* never synchronous on this path */
    settle();
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.res, DELIVER_DROP); /* nobody owns NUM1 */
    assert_int_equal(n_out, 0);

    register_phone(ALICE, NUM1);
    out_clear();
    d.calls = 0;
    router_deliver(router, &m, on_delivered, &d);
    settle();
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.res, DELIVER_OK);
    assert_int_equal(n_out, 3);
    for (size_t i = 0; i < 3; i++) {
        assert_string_equal(out[i]->name, "message");
        assert_attr(out[i], "type", "chat");
        assert_attr(out[i], "from", CONTACT);
        assert_attr(out[i], "to", ALICE_BARE);
        assert_non_null(xnode_attr(out[i], "id"));
    }
    assert_string_equal(xnode_child_text(out[0], "body", NULL), "inbound text");
    assert_null(xnode_child(out[0], "x", NS_OOB));
    for (size_t i = 1; i < 3; i++) {
        const char *text = xnode_child_text(out[i], "body", NULL);
        assert_string_equal(text, m.media[i - 1]);
        const struct xnode *x = xnode_child(out[i], "x", NS_OOB);
        assert_non_null(x);
        assert_string_equal(xnode_child_text(x, "url", NULL), text);
    }
    assert_string_not_equal(xnode_attr(out[1], "id"), xnode_attr(out[2], "id"));

    /* Stream down: retry later, nothing half-sent. */
    out_clear();
    sink_up = false;
    assert_false(router_ready(router));
    d.calls = 0;
    router_deliver(router, &m, on_delivered, &d);
    settle();
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.res, DELIVER_RETRY);
    assert_int_equal(n_out, 0);
}

static void test_state_up_probes(void **state)
{
    (void)state;
    register_phone(ALICE, NUM1);
    register_phone(BOB, NUM2);
    out_clear();
    router_on_state(router, true);
    settle();
    assert_int_equal(n_out, 2);
    for (size_t i = 0; i < 2; i++) {
        assert_attr(out[i], "type", "probe");
        assert_attr(out[i], "from", GW);
    }
}

static void test_free_with_inflight(void **state)
{
    (void)state;
    struct delivery d = {DELIVER_OK, 0};
    struct inmsg m;

    char to[] = NUM1, from[] = "+15551234567", body[] = "x";

    memset(&m, 0, sizeof(m));
    m.to_addr = to;
    m.from_addr = from;
    m.body = body;
    /* only the calls below reach the router from now on */
    queue_stop(queue);
    iq_query("get", ALICE, GW, "g1", NS_REGISTER);
    out_clear();
    struct xnode *iq = stanza("iq", "get", ALICE, GW, "g2");
    xnode_add_ns(iq, "query", NS_REGISTER);
    router_on_stanza(router, iq);
    xnode_free(iq);
    router_deliver(router, &m, on_delivered, &d);
    assert_int_equal(router_inflight(router), 2);
    router_free(router);
    router = NULL;
    uint64_t deadline = now_ms() + 3000;
    while (d.calls == 0 && now_ms() < deadline)
        event_base_loop(base, EVLOOP_ONCE);
    /* The orphaned delivery still completes once, as a retry. */
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.res, DELIVER_RETRY);
    assert_int_equal(n_out, 0);
}

int main(void)
{
    struct error err;
    int failed = 0;

    log_init(L_ERR, false, NULL, &err);
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest pure[] = {
        cmocka_unit_test_setup_teardown(test_disco_info_gateway, setup_pure,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_caps_match_disco, setup_pure,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_disco_contact, setup_pure,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_disco_items_commands, setup_pure,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_version_ping_unknown, setup_pure,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_iq_gateway, setup_pure, teardown),
        cmocka_unit_test_setup_teardown(test_not_allowed, setup_pure, teardown),
        cmocka_unit_test_setup_teardown(test_message_checks, setup_pure,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_chat_help, setup_pure, teardown),
        cmocka_unit_test_setup_teardown(test_presence_contact_invalid,
                                        setup_pure, teardown),
    };
    const struct CMUnitTest with_redis[] = {
        cmocka_unit_test_setup_teardown(test_register_get_set_get, setup_redis,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_register_errors_and_replace,
                                        setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_remove, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_adhoc, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_chat_commands, setup_redis,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_send_message, setup_redis,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_send_unregistered, setup_redis,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_receipts, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_presence_flow, setup_redis,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_deliver, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_state_up_probes, setup_redis,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_free_with_inflight, setup_redis,
                                        teardown),
    };
    failed += cmocka_run_group_tests_name("router", pure, NULL, NULL);
    redis_start();
    if (redis_pid > 0)
        failed +=
            cmocka_run_group_tests_name("router+redis", with_redis, NULL, NULL);
    else
        fprintf(stderr, "redis-server not available: store tests skipped\n");
    redis_stop();
    return failed;
}
