/*
 * component.c against an in-process XEP-0114 server on 127.0.0.1: the
 * handshake, one inbound stanza (the libstrophe 0.12.2 sm_state crash), a
 * socket above FD_SETSIZE (libstrophe's select() abort), sending, the clean
 * close, and a refused handshake that must back off instead of looping.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "component.h"
#include "log.h"
#include "util.h"
#include "xnode.h"

struct fake {
    struct event_base *base;
    struct evconnlistener *lis;
    struct bufferevent *bev;
    int port;
    bool reject; /* answer the handshake with not-authorized */
    int connections;
    struct strbuf got; /* everything the component sent */
    bool header_sent, hs_done, closed_by_peer;
};

struct client {
    int ups, downs;
    char body[64];
    int stanzas;
    bool stopped;
};

static void fake_read(struct bufferevent *bev, void *arg)
{
    struct fake *f = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t len = evbuffer_get_length(in);
    char *data = xmalloc(len + 1);

    evbuffer_remove(in, data, len);
    data[len] = '\0';
    sb_append(&f->got, data, len);
    free(data);

    if (!f->header_sent && strstr(f->got.s, "<stream:stream")) {
        f->header_sent = true;
        bufferevent_write(bev, "<?xml version='1.0'?>", 21);
        const char *hdr = "<stream:stream xmlns:stream='http://etherx.jabber."
                          "org/streams' xmlns='jabber:component:accept' "
                          "from='sms.test' id='3BF96D32'>";
        bufferevent_write(bev, hdr, strlen(hdr));
    }
    if (f->header_sent && !f->hs_done && strstr(f->got.s, "</handshake>")) {
        f->hs_done = true;
        if (f->reject) {
            const char *e =
                "<stream:error><not-authorized xmlns='urn:ietf:params:xml:"
                "ns:xmpp-streams'/><text xmlns='urn:ietf:params:xml:ns:xmpp-"
                "streams'>Given token does not match calculated token</text>"
                "</stream:error></stream:stream>";
            bufferevent_write(bev, e, strlen(e));
            bufferevent_flush(bev, EV_WRITE, BEV_FINISHED);
        } else {
            const char *ok = "<handshake/><message from='alice@test/r' "
                             "to='+15551234567@sms.test' type='chat' "
                             "id='m1'><body>hello &amp; bye</body></message>";
            bufferevent_write(bev, ok, strlen(ok));
        }
    }
    if (strstr(f->got.s, "</stream:stream>") && f->bev) {
        /* the component closed its stream: answer and hang up */
        bufferevent_free(f->bev);
        f->bev = NULL;
        f->closed_by_peer = true;
    }
}

static void fake_event(struct bufferevent *bev, short what, void *arg)
{
    struct fake *f = arg;
    (void)what;
    if (f->bev == bev) {
        bufferevent_free(bev);
        f->bev = NULL;
    }
}

static void fake_accept(struct evconnlistener *l, evutil_socket_t fd,
                        struct sockaddr *sa, int len, void *arg)
{
    struct fake *f = arg;
    (void)l;
    (void)sa;
    (void)len;
    f->connections++;
    if (f->bev)
        bufferevent_free(f->bev);
    sb_free(&f->got);
    f->header_sent = f->hs_done = false;
    f->bev = bufferevent_socket_new(f->base, fd, BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(f->bev, fake_read, NULL, fake_event, f);
    bufferevent_enable(f->bev, EV_READ | EV_WRITE);
    if (f->reject) {
        /* close after the error like Prosody does */
    }
}

static void fake_start(struct fake *f, struct event_base *base)
{
    struct sockaddr_in sin;
    socklen_t sl = sizeof(sin);

    memset(f, 0, sizeof(*f));
    sb_init(&f->got);
    f->base = base;
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(0x7f000001);
    f->lis = evconnlistener_new_bind(base, fake_accept, f,
                                     LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE,
                                     16, (struct sockaddr *)&sin, sizeof(sin));
    assert_non_null(f->lis);
    getsockname(evconnlistener_get_fd(f->lis), (struct sockaddr *)&sin, &sl);
    f->port = ntohs(sin.sin_port);
}

static void fake_stop(struct fake *f)
{
    if (f->bev)
        bufferevent_free(f->bev);
    evconnlistener_free(f->lis);
    sb_free(&f->got);
}

static void on_stanza(void *arg, const struct xnode *n)
{
    struct client *cl = arg;
    const char *b = xnode_child_text(n, "body", NULL);
    cl->stanzas++;
    snprintf(cl->body, sizeof(cl->body), "%s", b ? b : "");
}

static void on_state(void *arg, bool up)
{
    struct client *cl = arg;
    if (up)
        cl->ups++;
    else
        cl->downs++;
}

static void on_stopped(void *arg)
{
    struct client *cl = arg;
    cl->stopped = true;
}

/* Runs the loop until *flag is true or ms elapse. */
static bool run_until(struct event_base *base, const bool *flag, unsigned ms)
{
    uint64_t end = now_ms() + ms;
    while (!*flag && now_ms() < end)
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK), usleep(1000);
    return *flag;
}

static void handshake_stanza_send_close(void)
{
    struct event_base *base = event_base_new();
    struct fake f;
    struct client cl = {0};
    struct component_cbs cbs = {on_stanza, on_state, &cl};
    struct error err;
    bool done;

    fake_start(&f, base);
    struct component *c = component_new(base, "127.0.0.1", f.port, "sms.test",
                                        "test", &cbs, &err);
    assert_non_null(c);
    component_start(c);

    /* the stanza after <handshake/> is the one that crashed 0.12.2 */
    done = false;
    uint64_t end = now_ms() + 5000;
    while (cl.stanzas == 0 && now_ms() < end) {
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
        usleep(1000);
    }
    assert_int_equal(cl.ups, 1);
    assert_int_equal(cl.stanzas, 1);
    assert_string_equal(cl.body, "hello & bye");
    assert_true(component_up(c));
    /* the digest for id 3BF96D32 and secret "test" (XEP-0114 example) */
    assert_non_null(
        strstr(f.got.s, "aaee83c26aeeafcbabeabfcbcd50df997e0a2a1e"));

    struct xnode *m = xnode_new("message");
    xnode_set_attr(m, "from", "+15551234567@sms.test");
    xnode_set_attr(m, "to", "alice@test/r");
    xnode_add_text(m, "body", "reply <1>");
    assert_int_equal(component_send(c, m, &err), 0);
    xnode_free(m);
    end = now_ms() + 3000;
    while (!strstr(f.got.s, "reply &lt;1&gt;") && now_ms() < end) {
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
        usleep(1000);
    }
    assert_non_null(strstr(f.got.s, "reply &lt;1&gt;"));

    component_stop(c, on_stopped, &cl);
    assert_false(component_up(c));
    done = run_until(base, &cl.stopped, 5000);
    assert_true(done);
    assert_true(f.closed_by_peer);
    assert_int_equal(cl.downs, 1);

    /* sending on a stopped component fails with a temporary error */
    m = xnode_new("message");
    assert_int_equal(component_send(c, m, &err), -1);
    assert_true(err.temporary);
    xnode_free(m);

    component_free(c);
    fake_stop(&f);
    event_base_free(base);
}

/* Every descriptor below 1100 is taken: the socket must still work. */
static void socket_above_fd_setsize(void)
{
    struct rlimit rl;
    int burned[1200];
    size_t nburned = 0;

    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_max < 2048) {
        skip();
        return;
    }
    rl.rlim_cur = rl.rlim_max < 4096 ? rl.rlim_max : 4096;
    setrlimit(RLIMIT_NOFILE, &rl);
    for (;;) {
        int fd = open("/dev/null", O_RDONLY);
        assert_true(fd >= 0);
        burned[nburned++] = fd;
        if (fd >= 1100 || nburned == ARRAY_SIZE(burned))
            break;
    }
    handshake_stanza_send_close();
    for (size_t i = 0; i < nburned; i++)
        close(burned[i]);
}

static void test_handshake(void **state)
{
    (void)state;
    handshake_stanza_send_close();
}

static void test_high_fd(void **state)
{
    (void)state;
    socket_above_fd_setsize();
}

static void test_rejected_handshake_backs_off(void **state)
{
    struct event_base *base = event_base_new();
    struct fake f;
    struct client cl = {0};
    struct component_cbs cbs = {on_stanza, on_state, &cl};
    struct error err;
    (void)state;

    fake_start(&f, base);
    f.reject = true;
    struct component *c = component_new(base, "127.0.0.1", f.port, "sms.test",
                                        "wrong", &cbs, &err);
    assert_non_null(c);
    component_start(c);
    uint64_t end = now_ms() + 2500;
    while (now_ms() < end) {
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
        usleep(1000);
    }
    /* backoff 0.25-0.5 s, then 0.5-1 s, then 1-2 s: 2 to 4 attempts in
     * 2.5 s; a tight loop would make hundreds */
    assert_true(f.connections >= 2);
    assert_true(f.connections <= 5);
    assert_int_equal(cl.ups, 0);
    assert_int_equal(cl.stanzas, 0);
    component_free(c);
    fake_stop(&f);
    event_base_free(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_handshake),
        cmocka_unit_test(test_rejected_handshake_backs_off),
        cmocka_unit_test(test_high_fd),
    };
    struct error err;
    log_init(getenv("POSTERN_TEST_DEBUG") ? L_DEBUG : L_ERR, false, NULL, &err);
    component_global_init(2);
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    component_global_cleanup();
    return rc;
}
