/*
 * smtp_driver: sends messages through smtp_out.c for test_smtp_out.py and
 * prints one JSON line per outcome.
 *
 * usage: smtp_driver SPEC.json
 * SPEC: {"host": "127.0.0.1", "port": 2525, "starttls": "off",
 *        "user": "", "password": "", "timeout": 5, "workers": 1,
 *        "helo": "postern.test",
 *        "messages": [{"from": "a@x", "rcpt": "b@y", "data": "..."}],
 *        "free_after_ms": 0}
 * free_after_ms > 0 frees the client that long after the last send,
 * whatever is still in flight (the shutdown path).
 *
 * Output, one line each, in completion order:
 *   {"i": 0, "ok": true, "ms": 12}
 *   {"i": 1, "ok": false, "temporary": true, "cond": 14, "msg": "...",
 *    "ms": 30}
 * then {"done": true, "ms": N, "inflight": 0}. Exit 0, or 2 on a bad spec
 * or a refused send (printed as {"i": n, "send_error": "..."}). Aborts
 * when a done runs twice or from inside smtp_out_send, so contract
 * violations show as a crash.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <jansson.h>

#include "config.h"
#include "email/smtp_out.h"
#include "log.h"
#include "util.h"

struct slot {
    size_t i;
    int calls;
};

static struct event_base *base;
static struct smtp_out *so;
static bool in_send;
static size_t n_msgs, n_done;
static uint64_t t0;

static void print_json(json_t *o)
{
    char *s = json_dumps(o, JSON_COMPACT);

    printf("%s\n", s);
    fflush(stdout);
    free(s);
    json_decref(o);
}

static void on_done(void *arg, const struct error *err)
{
    struct slot *s = arg;
    json_t *o;

    if (in_send) {
        fprintf(stderr, "smtp_driver: done inside smtp_out_send\n");
        abort();
    }
    if (++s->calls != 1) {
        fprintf(stderr, "smtp_driver: done ran twice\n");
        abort();
    }
    o = json_pack("{s:I, s:b, s:I}", "i", (json_int_t)s->i, "ok", err == NULL,
                  "ms", (json_int_t)(now_ms() - t0));
    if (err) {
        json_object_set_new(o, "temporary", json_boolean(err->temporary));
        json_object_set_new(o, "cond", json_integer(err->code));
        json_object_set_new(o, "msg", json_string(err->msg));
    }
    print_json(o);
    if (++n_done == n_msgs)
        event_base_loopbreak(base);
}

static void on_free_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    smtp_out_free(so);
    so = NULL;
    event_base_loopbreak(base);
}

static const char *str_or(json_t *o, const char *key, const char *dflt)
{
    const char *v = json_string_value(json_object_get(o, key));

    return v ? v : dflt;
}

int main(int argc, char **argv)
{
    json_error_t jerr;
    json_t *spec, *msgs;
    struct smtp_conf conf;
    struct error err;
    struct slot *slots;
    struct event *free_ev = NULL;
    json_int_t free_after;
    int rc = 0;

    if (argc != 2) {
        fprintf(stderr, "usage: smtp_driver SPEC.json\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN); /* as component.c does for the daemon */
    if (log_init(getenv("SMTP_DRIVER_DEBUG") ? L_DEBUG : L_INFO, false, NULL,
                 &err) < 0)
        return 2;
    spec = json_load_file(argv[1], 0, &jerr);
    if (!spec) {
        fprintf(stderr, "smtp_driver: %s: %s\n", argv[1], jerr.text);
        return 2;
    }
    memset(&conf, 0, sizeof(conf));
    conf.host = xstrdup(str_or(spec, "host", "127.0.0.1"));
    conf.port = (int)json_integer_value(json_object_get(spec, "port"));
    conf.starttls = xstrdup(str_or(spec, "starttls", "off"));
    conf.user = xstrdup(str_or(spec, "user", ""));
    conf.password = xstrdup(str_or(spec, "password", ""));
    conf.timeout =
        json_object_get(spec, "timeout")
            ? (unsigned)json_integer_value(json_object_get(spec, "timeout"))
            : 30;
    conf.workers =
        json_object_get(spec, "workers")
            ? (unsigned)json_integer_value(json_object_get(spec, "workers"))
            : 1;
    free_after = json_integer_value(json_object_get(spec, "free_after_ms"));
    msgs = json_object_get(spec, "messages");
    n_msgs = json_array_size(msgs);

    base = event_base_new();
    so = smtp_out_new(base, &conf, str_or(spec, "helo", "postern.test"), &err);
    if (!so) {
        printf("{\"new_error\": \"%s\"}\n", err.msg);
        rc = 2;
        goto out;
    }
    slots = xcalloc(n_msgs ? n_msgs : 1, sizeof(*slots));
    t0 = now_ms();
    for (size_t i = 0; i < n_msgs; i++) {
        json_t *m = json_array_get(msgs, i);
        const char *data = str_or(m, "data", "");
        struct smtp_msg sm = {
            .mail_from = str_or(m, "from", ""),
            .rcpt = str_or(m, "rcpt", ""),
            .data = data,
            .len = strlen(data),
        };

        slots[i].i = i;
        in_send = true;
        if (smtp_out_send(so, &sm, on_done, &slots[i], &err) < 0) {
            in_send = false;
            print_json(json_pack("{s:I, s:s, s:b}", "i", (json_int_t)i,
                                 "send_error", err.msg, "temporary",
                                 err.temporary));
            slots[i].calls = -1000; /* any later done aborts */
            n_done++;
            rc = 2;
            continue;
        }
        in_send = false;
    }
    if (free_after > 0) {
        struct timeval tv = {(time_t)(free_after / 1000),
                             (suseconds_t)(free_after % 1000) * 1000};

        free_ev = evtimer_new(base, on_free_timer, NULL);
        evtimer_add(free_ev, &tv);
    }
    if (n_done < n_msgs)
        event_base_dispatch(base);
    print_json(json_pack("{s:b, s:I, s:I}", "done", 1, "ms",
                         (json_int_t)(now_ms() - t0), "inflight",
                         (json_int_t)smtp_out_inflight(so)));
    smtp_out_free(so);
    if (free_ev)
        event_free(free_ev);
    if (n_done != n_msgs) {
        fprintf(stderr, "smtp_driver: %zu of %zu done\n", n_done, n_msgs);
        rc = 3;
    }
    free(slots);
out:
    event_base_free(base);
    json_decref(spec);
    free(conf.host);
    free(conf.starttls);
    free(conf.user);
    free(conf.password);
    log_close();
    return rc;
}
