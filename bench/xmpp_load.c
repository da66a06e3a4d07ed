/*
 * xmpp_load: the SMS benchmark's load generator. It plays the XMPP
 * server's side of XEP-0114 towards postern (listens on a component port,
 * answers the stream header with an id, checks the handshake digest
 * SHA-1(id + secret), answers <handshake/>), registers a test user, and
 * then drives one direction of the gateway:
 *
 *   out      blasts N chat messages "b<seq> ..." at a rate (or as fast as
 *            the socket takes them) and times each from stanza send to the
 *            request arriving at the fast Twilio provider, which runs on a
 *            second thread of this process so both timestamps share one
 *            clock. Optionally the provider holds every request (messages
 *            pile up in postern) until released.
 *   in       signs and POSTs N Twilio inbound webhooks at postern from a
 *            curl-multi thread and times each until the XMPP message
 *            "w<seq> ..." reaches this server.
 *   webhook  the same webhook client against any URL, without XMPP (the
 *            raw evhttp ceiling, served by `serve ceiling`).
 *   serve    runs a fast provider (twilio | ceiling) until SIGTERM.
 *   selftest checks the signature and handshake code against the official
 *            vectors (protocol-facts T1, T20).
 *
 * It answers whatever postern asks (iq get/set get an empty result),
 * counts error stanzas as failures and prints the first few, and samples
 * postern's VmRSS (pid from --pid-file) every 100 ms. Results are one line
 * "RESULT key=value ..." on stdout for bench/run_sms_bench.sh.
 *
 * One libevent loop in the main thread owns the XMPP stream; the provider
 * and the webhook client run on their own threads and share only atomics
 * and per-seq timestamp slots. This is a benchmark tool, not product
 * code: it trusts its peer (postern) and exits on protocol surprises.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <expat.h>
#include <openssl/evp.h>

#include "bench.h"
#include "fast_provider.h"
#include "webhook_load.h"

#define REG_ID "reg1"
#define FILL_HIGH (256 * 1024)
#define FILL_LOW (64 * 1024)
#define CHECK_MS 20
#define RSS_EVERY_MS 100
#define TEXT_MAX 512
#define MAX_PRINTED_ERRORS 5

enum mode { M_OUT, M_IN, M_WEBHOOK, M_SERVE, M_SELFTEST };

enum xstate {
    X_WAIT_CONN,
    X_WAIT_HEADER,
    X_WAIT_HANDSHAKE,
    X_REGISTERING,
    X_RUNNING,
    X_DONE,
};

struct opts {
    enum mode mode;
    int xmpp_port;
    int provider_port;
    const char *secret;
    const char *component;
    const char *user; /* full JID */
    const char *phone;
    size_t n;
    double rate; /* msgs/s; 0: as fast as possible */
    unsigned hold_ms;
    double release_after; /* s after the last send */
    double timeout;
    double stall; /* s without progress once all is sent */
    const char *url, *sign_url, *auth_token, *account_sid;
    unsigned concurrency;
    const char *pid_file;
    const char *serve_kind;
};

/* The stanza being parsed (depth 2) and what we keep of it. */
struct stanza {
    char name[32];
    char type[16];
    char id[64];
    char from[256];
    char to[256];
    bool in_body, in_error, in_text;
    char cond[64];
    char text[TEXT_MAX];
    size_t text_len;
    char body[TEXT_MAX];
    size_t body_len;
};

struct load {
    struct opts o;
    struct event_base *base;
    struct evconnlistener *listener;
    struct bufferevent *bev;
    XML_Parser parser;
    int depth;
    enum xstate state;
    char stream_id[40];
    struct stanza st;
    struct event *send_timer, *check_timer;
    bool failed;
    const char *fail_reason;
    double t0; /* program start */

    /* out */
    struct fast_provider *fp;
    double *sent_at;
    size_t sent;
    double t_first_send, t_all_sent;
    bool released;

    /* in */
    double *arrived_at;
    double *wh_sent_at;
    size_t arrived, dup_in, bad_in;
    pthread_t wh_thread;
    bool wh_started;
    atomic_bool wh_done;
    atomic_bool wh_cancel;
    struct wh_stats wh;

    /* failures from postern */
    size_t errors;
    size_t presences, iqs_answered;

    /* memory of postern */
    pid_t pid;
    long rss_max_kb, rss_at_peak_kb;
    size_t peak_inflight;
    double last_rss;

    /* progress, for the stall check */
    size_t progress;
    double t_progress;
};

static struct load L;

/* ---- small helpers ------------------------------------------------------ */

static const char *local_name(const char *name)
{
    const char *c = strrchr(name, ':');

    return c ? c + 1 : name;
}

static void copy_str(char *dst, size_t size, const char *src)
{
    snprintf(dst, size, "%s", src ? src : "");
}

static void append_text(char *buf, size_t *len, size_t size, const char *s,
                        int n)
{
    size_t k = (size_t)n;

    if (*len + k >= size)
        k = size - 1 - *len;
    memcpy(buf + *len, s, k);
    *len += k;
    buf[*len] = '\0';
}

static void hex_sha1(const char *a, const char *b, char out[41])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;

    out[0] = '\0';
    if (!ctx)
        return;
    if (EVP_DigestInit_ex(ctx, EVP_sha1(), NULL) == 1 &&
        EVP_DigestUpdate(ctx, a, strlen(a)) == 1 &&
        EVP_DigestUpdate(ctx, b, strlen(b)) == 1 &&
        EVP_DigestFinal_ex(ctx, md, &len) == 1) {
        for (unsigned i = 0; i < len; i++)
            snprintf(out + 2 * i, 3, "%02x", md[i]);
    }
    EVP_MD_CTX_free(ctx);
}

static long read_rss_kb(pid_t pid, const char *key)
{
    char path[64], line[256];
    size_t klen = strlen(key);
    long v = -1;
    FILE *f;

    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    f = fopen(path, "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
            v = strtol(line + klen + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return v;
}

static pid_t read_pid_file(const char *path)
{
    FILE *f = fopen(path, "r");
    long v = 0;

    if (!f)
        return 0;
    if (fscanf(f, "%ld", &v) != 1)
        v = 0;
    fclose(f);
    return (pid_t)v;
}

static void finish(bool failed, const char *why)
{
    if (L.state == X_DONE)
        return;
    L.state = X_DONE;
    L.failed = failed;
    L.fail_reason = why;
    event_base_loopexit(L.base, NULL);
}

static void xsendf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void xsendf(const char *fmt, ...)
{
    struct evbuffer *out;
    va_list ap;

    if (!L.bev)
        return;
    out = bufferevent_get_output(L.bev);
    va_start(ap, fmt);
    evbuffer_add_vprintf(out, fmt, ap);
    va_end(ap);
}

/* ---- out: the blast ----------------------------------------------------- */

static void send_one(double now)
{
    size_t seq = L.sent;

    xsendf("<message type='chat' from='%s' to='+1555%07zu@%s' id='b%zu'>"
           "<body>b%zu The quick brown fox jumps over the lazy dog "
           "0123456789</body></message>",
           L.o.user, 2000000 + seq % 1000000, L.o.component, seq, seq);
    L.sent_at[seq] = now;
    if (seq == 0)
        L.t_first_send = now;
    L.sent++;
    if (L.sent == L.o.n)
        L.t_all_sent = now;
}

/* As fast as possible: keep FILL_HIGH bytes queued towards postern. */
static void fill(void)
{
    struct evbuffer *out = bufferevent_get_output(L.bev);
    double now = bench_now();

    while (L.sent < L.o.n && evbuffer_get_length(out) < FILL_HIGH)
        send_one(now);
}

static void on_write(struct bufferevent *bev, void *arg)
{
    (void)bev;
    (void)arg;
    if (L.state == X_RUNNING && L.o.mode == M_OUT && L.o.rate <= 0)
        fill();
}

/* At a rate: a 1 ms tick sends what the schedule says is due. */
static void on_send_tick(evutil_socket_t fd, short what, void *arg)
{
    double now = bench_now();
    size_t due;

    (void)fd;
    (void)what;
    (void)arg;
    if (L.sent == 0) {
        send_one(now);
        L.t_first_send = now;
    }
    due = (size_t)((now - L.t_first_send) * L.o.rate) + 1;
    if (due > L.o.n)
        due = L.o.n;
    while (L.sent < due)
        send_one(now);
    if (L.sent >= L.o.n)
        event_del(L.send_timer);
}

static void *wh_thread_main(void *arg)
{
    struct wh_conf c = {
        .url = L.o.url,
        .sign_url = L.o.sign_url,
        .auth_token = L.o.auth_token,
        .account_sid = L.o.account_sid,
        .to = L.o.phone,
        .n = L.o.n,
        .concurrency = L.o.concurrency,
        .sent_at = L.wh_sent_at,
        .cancel = &L.wh_cancel,
    };

    (void)arg;
    webhook_run(&c, &L.wh);
    atomic_store(&L.wh_done, true);
    return NULL;
}

static void start_run(void)
{
    L.state = X_RUNNING;
    if (L.o.mode == M_IN) {
        if (pthread_create(&L.wh_thread, NULL, wh_thread_main, NULL) != 0) {
            finish(true, "pthread_create failed");
            return;
        }
        L.wh_started = true;
        return;
    }
    if (L.o.rate > 0) {
        struct timeval ms = {.tv_sec = 0, .tv_usec = 1000};

        L.send_timer = event_new(L.base, -1, EV_PERSIST, on_send_tick, NULL);
        event_add(L.send_timer, &ms);
    } else {
        bufferevent_setwatermark(L.bev, EV_WRITE, FILL_LOW, 0);
        fill();
    }
}

/* ---- stanzas from postern ----------------------------------------------- */

static void print_error(const char *what)
{
    if (L.errors++ < MAX_PRINTED_ERRORS)
        fprintf(stderr, "xmpp_load: error %s id='%s' from='%s': %s%s%s\n", what,
                L.st.id, L.st.from, L.st.cond[0] ? L.st.cond : "(none)",
                L.st.text[0] ? ": " : "", L.st.text);
}

/* "w<seq> ..." -> seq, else -1. */
static long long body_seq(const char *b, char prefix)
{
    long long v = 0;

    if (b[0] != prefix || b[1] < '0' || b[1] > '9')
        return -1;
    for (b++; *b >= '0' && *b <= '9'; b++)
        v = v * 10 + (*b - '0');
    return v;
}

static void on_handshake(void)
{
    char want[41];

    if (L.state != X_WAIT_HANDSHAKE) {
        finish(true, "unexpected handshake");
        return;
    }
    hex_sha1(L.stream_id, L.o.secret, want);
    if (strcmp(want, L.st.text) != 0) {
        xsendf("<stream:error><not-authorized "
               "xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
               "</stream:error></stream:stream>");
        finish(true, "handshake digest does not match the secret");
        return;
    }
    xsendf("<handshake/>");
    xsendf("<iq type='set' id='" REG_ID "' from='%s' to='%s'>"
           "<query xmlns='jabber:iq:register'><phone>%s</phone></query>"
           "</iq>",
           L.o.user, L.o.component, L.o.phone);
    L.state = X_REGISTERING;
}

static void on_iq(void)
{
    if (strcmp(L.st.type, "get") == 0 || strcmp(L.st.type, "set") == 0) {
        xsendf("<iq type='result' id='%s' from='%s' to='%s'/>", L.st.id,
               L.st.to, L.st.from);
        L.iqs_answered++;
        return;
    }
    if (strcmp(L.st.id, REG_ID) == 0 && L.state == X_REGISTERING) {
        if (strcmp(L.st.type, "result") == 0) {
            start_run();
        } else {
            print_error("registering");
            finish(true, "registration refused");
        }
        return;
    }
    if (strcmp(L.st.type, "error") == 0)
        print_error("iq");
}

static void on_message(void)
{
    long long seq;

    if (strcmp(L.st.type, "error") == 0) {
        print_error("message");
        return;
    }
    if (L.o.mode != M_IN || !L.arrived_at)
        return;
    seq = body_seq(L.st.body, 'w');
    if (seq < 0 || (size_t)seq >= L.o.n) {
        L.bad_in++;
        return;
    }
    if (L.arrived_at[seq] > 0) {
        L.dup_in++;
        return;
    }
    L.arrived_at[seq] = bench_now();
    L.arrived++;
}

static void on_stanza(void)
{
    const char *n = L.st.name;

    if (strcmp(n, "handshake") == 0)
        on_handshake();
    else if (strcmp(n, "iq") == 0)
        on_iq();
    else if (strcmp(n, "message") == 0)
        on_message();
    else if (strcmp(n, "presence") == 0)
        L.presences++;
    else if (strcmp(n, "error") == 0)
        finish(true, "stream error from postern");
}

static void XMLCALL on_start(void *ud, const XML_Char *name,
                             const XML_Char **atts)
{
    const char *ln = local_name(name);

    (void)ud;
    L.depth++;
    if (L.depth == 1) {
        const char *to = NULL;

        for (int i = 0; atts[i]; i += 2)
            if (strcmp(atts[i], "to") == 0)
                to = atts[i + 1];
        if (strcmp(ln, "stream") != 0 || !to ||
            strcmp(to, L.o.component) != 0) {
            xsendf("<?xml version='1.0'?><stream:stream "
                   "xmlns:stream='http://etherx.jabber.org/streams' "
                   "xmlns='jabber:component:accept'><stream:error>"
                   "<host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-"
                   "streams'/></stream:error></stream:stream>");
            finish(true, "stream header for another component");
            return;
        }
        snprintf(L.stream_id, sizeof(L.stream_id), "%08lx%08lx",
                 (unsigned long)random(), (unsigned long)random());
        xsendf("<?xml version='1.0'?><stream:stream "
               "xmlns:stream='http://etherx.jabber.org/streams' "
               "xmlns='jabber:component:accept' from='%s' id='%s'>",
               L.o.component, L.stream_id);
        L.state = X_WAIT_HANDSHAKE;
    } else if (L.depth == 2) {
        memset(&L.st, 0, sizeof(L.st));
        copy_str(L.st.name, sizeof(L.st.name), ln);
        for (int i = 0; atts[i]; i += 2) {
            const char *k = atts[i], *v = atts[i + 1];

            if (strcmp(k, "type") == 0)
                copy_str(L.st.type, sizeof(L.st.type), v);
            else if (strcmp(k, "id") == 0)
                copy_str(L.st.id, sizeof(L.st.id), v);
            else if (strcmp(k, "from") == 0)
                copy_str(L.st.from, sizeof(L.st.from), v);
            else if (strcmp(k, "to") == 0)
                copy_str(L.st.to, sizeof(L.st.to), v);
        }
    } else if (L.depth == 3) {
        if (strcmp(ln, "body") == 0)
            L.st.in_body = true;
        else if (strcmp(ln, "error") == 0)
            L.st.in_error = true;
    } else if (L.depth == 4 && L.st.in_error) {
        if (strcmp(ln, "text") == 0)
            L.st.in_text = true;
        else if (!L.st.cond[0])
            copy_str(L.st.cond, sizeof(L.st.cond), ln);
    }
}

static void XMLCALL on_end(void *ud, const XML_Char *name)
{
    (void)ud;
    (void)name;
    if (L.depth == 2)
        on_stanza();
    else if (L.depth == 3)
        L.st.in_body = L.st.in_error = false;
    else if (L.depth == 4)
        L.st.in_text = false;
    else if (L.depth == 1 && L.state != X_DONE)
        finish(true, "postern closed the stream");
    L.depth--;
}

static void XMLCALL on_chars(void *ud, const XML_Char *s, int len)
{
    (void)ud;
    if (L.depth == 2 && strcmp(L.st.name, "handshake") == 0)
        append_text(L.st.text, &L.st.text_len, sizeof(L.st.text), s, len);
    else if (L.depth == 3 && L.st.in_body)
        append_text(L.st.body, &L.st.body_len, sizeof(L.st.body), s, len);
    else if (L.depth == 4 && L.st.in_text)
        append_text(L.st.text, &L.st.text_len, sizeof(L.st.text), s, len);
}

/* ---- the connection ------------------------------------------------------ */

static void on_read(struct bufferevent *bev, void *arg)
{
    struct evbuffer *in = bufferevent_get_input(bev);
    struct evbuffer_iovec v[16];
    int nv;

    (void)arg;
    while (evbuffer_get_length(in) > 0 && L.state != X_DONE) {
        size_t used = 0;

        nv = evbuffer_peek(in, -1, NULL, v, 16);
        if (nv > 16)
            nv = 16;
        for (int i = 0; i < nv && L.state != X_DONE; i++) {
            if (XML_Parse(L.parser, v[i].iov_base, (int)v[i].iov_len, 0) ==
                XML_STATUS_ERROR) {
                fprintf(stderr, "xmpp_load: XML error: %s\n",
                        XML_ErrorString(XML_GetErrorCode(L.parser)));
                finish(true, "malformed XML from postern");
            }
            used += v[i].iov_len;
        }
        evbuffer_drain(in, used);
    }
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    (void)arg;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
        finish(true, "postern closed the connection");
}

static void on_accept(struct evconnlistener *lst, evutil_socket_t fd,
                      struct sockaddr *sa, int socklen, void *arg)
{
    int one = 1;

    (void)lst;
    (void)sa;
    (void)socklen;
    (void)arg;
    if (L.bev) {
        /* one stream only: a reconnect means the run went wrong */
        evutil_closesocket(fd);
        return;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    L.bev = bufferevent_socket_new(L.base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!L.bev) {
        evutil_closesocket(fd);
        finish(true, "bufferevent_socket_new failed");
        return;
    }
    bufferevent_setcb(L.bev, on_read, on_write, on_event, NULL);
    bufferevent_enable(L.bev, EV_READ | EV_WRITE);
    L.state = X_WAIT_HEADER;
}

/* ---- progress, memory, completion ---------------------------------------- */

static void sample_rss(double now, size_t inflight)
{
    long rss;

    if (now - L.last_rss < RSS_EVERY_MS / 1000.0)
        return;
    L.last_rss = now;
    if (!L.pid && L.o.pid_file)
        L.pid = read_pid_file(L.o.pid_file);
    if (!L.pid)
        return;
    rss = read_rss_kb(L.pid, "VmRSS");
    if (rss > L.rss_max_kb)
        L.rss_max_kb = rss;
    /* "with the most in flight": any sample within 10 % of the peak */
    if (inflight > 0 && inflight * 10 >= L.peak_inflight * 9 &&
        rss > L.rss_at_peak_kb)
        L.rss_at_peak_kb = rss;
}

static void on_check(evutil_socket_t fd, short what, void *arg)
{
    double now = bench_now();
    size_t inflight = 0;

    (void)fd;
    (void)what;
    (void)arg;
    if (L.o.mode == M_OUT && L.fp) {
        size_t answered = fast_provider_answered(L.fp);

        inflight = L.sent > answered ? L.sent - answered : 0;
    }
    if (inflight > L.peak_inflight)
        L.peak_inflight = inflight;
    sample_rss(now, inflight);

    if (L.o.mode == M_OUT && L.fp && L.o.hold_ms && !L.released &&
        L.sent == L.o.n && now - L.t_all_sent >= L.o.release_after) {
        fast_provider_release(L.fp);
        L.released = true;
    }
    if (L.state == X_RUNNING) {
        size_t p = L.sent + L.errors + L.arrived +
                   (L.fp ? fast_provider_unique(L.fp) : 0);
        bool all_sent =
            L.o.mode == M_OUT ? L.sent == L.o.n : atomic_load(&L.wh_done);

        if (p != L.progress || !all_sent || (L.o.hold_ms && !L.released)) {
            L.progress = p;
            L.t_progress = now;
        } else if (now - L.t_progress > L.o.stall) {
            finish(true, "stalled: no progress since all was sent");
        }
        if (L.o.mode == M_OUT && L.sent == L.o.n &&
            fast_provider_unique(L.fp) + L.errors >= L.o.n)
            finish(false, NULL);
        if (L.o.mode == M_IN && atomic_load(&L.wh_done) && L.arrived >= L.wh.ok)
            finish(L.arrived < L.o.n, "some webhooks were refused");
    }
    if (now - L.t0 > L.o.timeout)
        finish(true, "timeout");
}

/* ---- results --------------------------------------------------------------
 */

static void print_latency(const double *from, const double *to, size_t n,
                          double *t_last)
{
    double *lat = malloc((n ? n : 1) * sizeof(*lat));
    size_t k = 0;

    *t_last = 0;
    if (!lat)
        return;
    for (size_t i = 0; i < n; i++) {
        if (from[i] > 0 && to[i] > 0) {
            lat[k++] = (to[i] - from[i]) * 1000.0;
            if (to[i] > *t_last)
                *t_last = to[i];
        }
    }
    qsort(lat, k, sizeof(*lat), bench_cmp_double);
    printf(" p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f p999_ms=%.3f max_ms=%.3f",
           bench_percentile(lat, k, 50, 1), bench_percentile(lat, k, 90, 1),
           bench_percentile(lat, k, 99, 1), bench_percentile(lat, k, 99.9, 1),
           k ? lat[k - 1] : 0.0);
    free(lat);
}

static void report_out(void)
{
    size_t n = L.o.n, uniq = fast_provider_unique(L.fp);
    double *arr = malloc(n * sizeof(*arr)), t_last = 0, secs;

    if (!arr)
        return;
    for (size_t i = 0; i < n; i++)
        arr[i] = fast_provider_arrival(L.fp, i);
    printf("RESULT mode=out n=%zu rate=%.0f sent=%zu arrived=%zu dup=%zu "
           "bad=%zu errors=%zu",
           n, L.o.rate, L.sent, uniq, fast_provider_dups(L.fp),
           fast_provider_bad(L.fp), L.errors);
    print_latency(L.sent_at, arr, n, &t_last);
    secs = t_last > L.t_first_send ? t_last - L.t_first_send : 0;
    printf(" seconds=%.3f msgs_per_s=%.0f send_rate=%.0f peak_inflight=%zu "
           "rss_max_kb=%ld rss_at_peak_inflight_kb=%ld\n",
           secs, secs > 0 ? (double)uniq / secs : 0.0,
           L.t_all_sent > L.t_first_send
               ? (double)L.sent / (L.t_all_sent - L.t_first_send)
               : 0.0,
           L.peak_inflight, L.rss_max_kb, L.rss_at_peak_kb);
    free(arr);
}

static void report_in(void)
{
    double t_last = 0, secs;

    printf("RESULT mode=in n=%zu concurrency=%u posted_2xx=%zu "
           "non_2xx=%zu first_non_2xx=%ld transport_errors=%zu "
           "arrived=%zu dup=%zu bad=%zu errors=%zu",
           L.o.n, L.o.concurrency, L.wh.ok, L.wh.other, L.wh.first_other,
           L.wh.errors, L.arrived, L.dup_in, L.bad_in, L.errors);
    print_latency(L.wh_sent_at, L.arrived_at, L.o.n, &t_last);
    secs = t_last > L.wh.t_start ? t_last - L.wh.t_start : 0;
    printf(" seconds=%.3f msgs_per_s=%.0f post_seconds=%.3f "
           "rss_max_kb=%ld\n",
           secs, secs > 0 ? (double)L.arrived / secs : 0.0,
           L.wh.t_end - L.wh.t_start, L.rss_max_kb);
}

/* ---- modes ----------------------------------------------------------------
 */

static int run_xmpp(void)
{
    struct sockaddr_in sin = {.sin_family = AF_INET};
    struct sockaddr_in got;
    socklen_t glen = sizeof(got);
    struct timeval check = {.tv_sec = 0, .tv_usec = CHECK_MS * 1000};
    int rc = 1;

    L.base = event_base_new();
    L.parser = XML_ParserCreate(NULL);
    L.sent_at = calloc(L.o.n, sizeof(double));
    L.arrived_at = calloc(L.o.n, sizeof(double));
    L.wh_sent_at = calloc(L.o.n, sizeof(double));
    if (!L.base || !L.parser || !L.sent_at || !L.arrived_at || !L.wh_sent_at) {
        fprintf(stderr, "xmpp_load: out of memory\n");
        goto out;
    }
    XML_SetElementHandler(L.parser, on_start, on_end);
    XML_SetCharacterDataHandler(L.parser, on_chars);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin.sin_port = htons((uint16_t)L.o.xmpp_port);
    L.listener = evconnlistener_new_bind(
        L.base, on_accept, NULL, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 16,
        (struct sockaddr *)&sin, sizeof(sin));
    if (!L.listener || getsockname(evconnlistener_get_fd(L.listener),
                                   (struct sockaddr *)&got, &glen) < 0) {
        fprintf(stderr, "xmpp_load: cannot listen on 127.0.0.1:%d: %s\n",
                L.o.xmpp_port, strerror(errno));
        goto out;
    }
    if (L.o.mode == M_OUT) {
        struct fp_conf fc = {.kind = FP_TWILIO,
                             .port = L.o.provider_port,
                             .hold_ms = L.o.hold_ms,
                             .max_seq = L.o.n};

        L.fp = fast_provider_start(&fc);
        if (!L.fp)
            goto out;
    }
    printf("READY xmpp_port=%d provider_port=%d\n", ntohs(got.sin_port),
           L.fp ? fast_provider_port(L.fp) : 0);
    fflush(stdout);

    L.check_timer = event_new(L.base, -1, EV_PERSIST, on_check, NULL);
    event_add(L.check_timer, &check);
    event_base_dispatch(L.base);

    if (L.wh_started) {
        atomic_store(&L.wh_cancel, true);
        pthread_join(L.wh_thread, NULL);
    }
    if (L.o.mode == M_OUT)
        report_out();
    else
        report_in();
    if (L.failed)
        fprintf(stderr, "xmpp_load: FAILED: %s\n",
                L.fail_reason ? L.fail_reason : "?");
    if (L.errors > MAX_PRINTED_ERRORS)
        fprintf(stderr, "xmpp_load: %zu error stanzas in all\n", L.errors);
    rc = L.failed || L.errors ? 1 : 0;
out:
    fast_provider_stop(L.fp);
    if (L.bev)
        bufferevent_free(L.bev);
    if (L.listener)
        evconnlistener_free(L.listener);
    if (L.send_timer)
        event_free(L.send_timer);
    if (L.check_timer)
        event_free(L.check_timer);
    if (L.parser)
        XML_ParserFree(L.parser);
    if (L.base)
        event_base_free(L.base);
    free(L.sent_at);
    free(L.arrived_at);
    free(L.wh_sent_at);
    return rc;
}

static int run_webhook(void)
{
    struct wh_conf c = {.url = L.o.url,
                        .sign_url = L.o.sign_url,
                        .auth_token = L.o.auth_token,
                        .account_sid = L.o.account_sid,
                        .to = L.o.phone,
                        .n = L.o.n,
                        .concurrency = L.o.concurrency};
    struct wh_stats st;
    int rc = webhook_run(&c, &st);
    double secs = st.t_end - st.t_start;

    printf("RESULT mode=webhook n=%zu concurrency=%u posted_2xx=%zu "
           "non_2xx=%zu first_non_2xx=%ld transport_errors=%zu "
           "seconds=%.3f msgs_per_s=%.0f\n",
           L.o.n, L.o.concurrency, st.ok, st.other, st.first_other, st.errors,
           secs, secs > 0 ? (double)st.ok / secs : 0.0);
    return rc ? 1 : 0;
}

static int run_serve(void)
{
    struct fp_conf fc = {
        .kind = strcmp(L.o.serve_kind, "ceiling") == 0 ? FP_CEILING : FP_TWILIO,
        .port = L.o.provider_port,
        .hold_ms = L.o.hold_ms,
        .max_seq = L.o.n};
    sigset_t set;
    int sig = 0;
    struct fast_provider *fp;

    /* the provider thread inherits the mask: only sigwait sees them */
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    fp = fast_provider_start(&fc);
    if (!fp)
        return 1;
    printf("READY provider_port=%d\n", fast_provider_port(fp));
    fflush(stdout);
    sigwait(&set, &sig);
    printf("SERVED received=%zu answered=%zu unique=%zu dup=%zu bad=%zu\n",
           fast_provider_received(fp), fast_provider_answered(fp),
           fast_provider_unique(fp), fast_provider_dups(fp),
           fast_provider_bad(fp));
    fast_provider_stop(fp);
    return 0;
}

/* Official vectors: protocol-facts T1 (Twilio) and T20 (XEP-0114). */
static int run_selftest(void)
{
    const char *names[] = {"CallSid", "Digits", "From", "To", "Caller"};
    const char *values[] = {"CA1234567890ABCDE", "1234", "+14158675309",
                            "+18005551212", "+14158675309"};
    char sig[64], hs[41];
    int bad = 0;

    webhook_twilio_sign("12345", "https://mycompany.com/myapp.php?foo=1&bar=2",
                        names, values, 5, sig, sizeof(sig));
    if (strcmp(sig, "RSOYDt4T1cUTdK1PDd93/VVr8B8=") != 0) {
        fprintf(stderr, "selftest: T1 signature %s\n", sig);
        bad = 1;
    }
    hex_sha1("3BF96D32", "test", hs);
    if (strcmp(hs, "aaee83c26aeeafcbabeabfcbcd50df997e0a2a1e") != 0) {
        fprintf(stderr, "selftest: T20 handshake %s\n", hs);
        bad = 1;
    }
    printf("selftest %s\n", bad ? "FAILED" : "ok");
    return bad;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: xmpp_load MODE [options]\n"
               "  out       XMPP -> fast Twilio provider (in-process)\n"
               "  in        signed Twilio webhooks -> postern -> XMPP\n"
               "  webhook   the webhook client alone against --url\n"
               "  serve     --kind twilio|ceiling, until SIGTERM\n"
               "  selftest  official signature/handshake vectors\n"
               "options:\n"
               "  --xmpp-port P       component port to listen on (0: any)\n"
               "  --provider-port P   fast provider port (0: any)\n"
               "  --secret S          component secret\n"
               "  --component JID     default sms.localhost\n"
               "  --user JID          default bench@localhost/r\n"
               "  --phone E164        number to register, default "
               "+15550001111\n"
               "  -n N                messages (default 20000)\n"
               "  --rate R            msgs/s, 0 = as fast as possible\n"
               "  --hold-ms MS        provider holds each request MS ...\n"
               "  --release-after S   ... until S s after the last send\n"
               "  --timeout S         give up after S s (default 120)\n"
               "  --stall S           ... or S s without progress once all\n"
               "                      is sent (default 10)\n"
               "  --url U --sign-url U --auth-token T --account-sid AC...\n"
               "  -c C                webhook concurrency (default 16)\n"
               "  --pid-file F        postern's pid, for VmRSS samples\n"
               "  --kind K            serve: twilio | ceiling\n");
}

static int parse_opts(int argc, char **argv)
{
    static const struct option lo[] = {
        {"xmpp-port", required_argument, NULL, 'x'},
        {"provider-port", required_argument, NULL, 'p'},
        {"secret", required_argument, NULL, 's'},
        {"component", required_argument, NULL, 'j'},
        {"user", required_argument, NULL, 'u'},
        {"phone", required_argument, NULL, 'f'},
        {"rate", required_argument, NULL, 'r'},
        {"hold-ms", required_argument, NULL, 'H'},
        {"release-after", required_argument, NULL, 'R'},
        {"timeout", required_argument, NULL, 't'},
        {"stall", required_argument, NULL, 'W'},
        {"url", required_argument, NULL, 'U'},
        {"sign-url", required_argument, NULL, 'S'},
        {"auth-token", required_argument, NULL, 'T'},
        {"account-sid", required_argument, NULL, 'A'},
        {"pid-file", required_argument, NULL, 'P'},
        {"kind", required_argument, NULL, 'k'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *m;
    int c;

    if (argc < 2) {
        usage(stderr);
        return -1;
    }
    m = argv[1];
    if (strcmp(m, "out") == 0)
        L.o.mode = M_OUT;
    else if (strcmp(m, "in") == 0)
        L.o.mode = M_IN;
    else if (strcmp(m, "webhook") == 0)
        L.o.mode = M_WEBHOOK;
    else if (strcmp(m, "serve") == 0)
        L.o.mode = M_SERVE;
    else if (strcmp(m, "selftest") == 0)
        L.o.mode = M_SELFTEST;
    else {
        usage(strcmp(m, "--help") == 0 ? stdout : stderr);
        return -1;
    }
    L.o.component = "sms.localhost";
    L.o.user = "bench@localhost/r";
    L.o.phone = "+15550001111";
    L.o.account_sid = "AC00000000000000000000000000000000";
    L.o.n = 20000;
    L.o.timeout = 120;
    L.o.stall = 10;
    L.o.concurrency = 16;
    L.o.release_after = 3;
    L.o.serve_kind = "twilio";
    optind = 2;
    while ((c = getopt_long(argc, argv, "n:c:h", lo, NULL)) != -1) {
        switch (c) {
        case 'x':
            L.o.xmpp_port = atoi(optarg);
            break;
        case 'p':
            L.o.provider_port = atoi(optarg);
            break;
        case 's':
            L.o.secret = optarg;
            break;
        case 'j':
            L.o.component = optarg;
            break;
        case 'u':
            L.o.user = optarg;
            break;
        case 'f':
            L.o.phone = optarg;
            break;
        case 'n':
            L.o.n = strtoull(optarg, NULL, 10);
            break;
        case 'c':
            L.o.concurrency = (unsigned)atoi(optarg);
            break;
        case 'r':
            L.o.rate = atof(optarg);
            break;
        case 'H':
            L.o.hold_ms = (unsigned)atoi(optarg);
            break;
        case 'R':
            L.o.release_after = atof(optarg);
            break;
        case 't':
            L.o.timeout = atof(optarg);
            break;
        case 'U':
            L.o.url = optarg;
            break;
        case 'S':
            L.o.sign_url = optarg;
            break;
        case 'T':
            L.o.auth_token = optarg;
            break;
        case 'A':
            L.o.account_sid = optarg;
            break;
        case 'P':
            L.o.pid_file = optarg;
            break;
        case 'k':
            L.o.serve_kind = optarg;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            return -1;
        }
    }
    if (L.o.n == 0 || L.o.n > 10000000) {
        fprintf(stderr, "xmpp_load: -n must be 1 .. 10000000\n");
        return -1;
    }
    if ((L.o.mode == M_OUT || L.o.mode == M_IN) && !L.o.secret) {
        fprintf(stderr, "xmpp_load: --secret is required\n");
        return -1;
    }
    if ((L.o.mode == M_IN || L.o.mode == M_WEBHOOK) && !L.o.url) {
        fprintf(stderr, "xmpp_load: --url is required\n");
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    int rc;

    if (parse_opts(argc, argv) < 0)
        return 2;
    signal(SIGPIPE, SIG_IGN);
    srandom((unsigned)getpid() ^ (unsigned)time(NULL));
    L.t0 = bench_now();
    curl_global_init(CURL_GLOBAL_DEFAULT);
    switch (L.o.mode) {
    case M_OUT:
    case M_IN:
        rc = run_xmpp();
        break;
    case M_WEBHOOK:
        rc = run_webhook();
        break;
    case M_SERVE:
        rc = run_serve();
        break;
    default:
        rc = run_selftest();
        break;
    }
    curl_global_cleanup();
    return rc;
}
