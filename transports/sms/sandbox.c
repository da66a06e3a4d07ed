/*
 * sandbox: the SMS provider for trying postern out and for tests. It sends
 * nothing anywhere. Each outbound part becomes one info log line (numbers
 * masked; the body only at debug) and, when provider.outbox_file is set,
 * one JSON line appended to that file:
 *
 *   {"ts":"2024-05-01T12:00:00.123Z","gateway":"sms.example.org",
 *    "from":"+15550001111","to":"+15551234567","body":"hi","media":[],
 *    "id":"SB0123...", "part":1, "parts":1}
 *
 * ("body" is null for a media-only message; "part" counts from 1.) The
 * file is opened with O_APPEND and each line is written with one write(),
 * so lines from several postern processes never interleave; it is opened
 * at start, or at the first send if start was skipped, never by init
 * (postern --check must create no file). A part completes successfully
 * with a fresh provider id "SB" + 32 lowercase hex digits.
 *
 * Fault knobs, by the last digits of the destination number:
 *   ...0000  permanent failure: not-acceptable "sandbox: number rejected"
 *   ...0503  temporary failure: remote-server-timeout "sandbox: provider
 *            unavailable (HTTP 503)", so the queue retries
 * Every result, good or bad, is reported from a zero-delay event, never
 * from inside send(). Inbound sandbox SMS come from `postern-admin
 * sms-inject` through the queue, not through this file.
 *
 * It must never block beyond one small local write, and never log a body
 * above debug.
 */
#include "provider.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <jansson.h>

#include "config.h"
#include "log.h"
#include "sms.h"

struct sandbox_pending;

struct sandbox {
    struct transport *t;
    const char *outbox; /* borrowed from the config; NULL when unset */
    int fd;             /* -1 until opened */
    struct sandbox_pending *pending;
};

/* A part waiting for its zero-delay completion. */
struct sandbox_pending {
    struct sandbox_pending *prev, *next;
    struct sandbox *sb;
    struct event *ev;
    char *gw, *from, *to, *body;
    char *media[MSG_MAX_MEDIA];
    size_t n_media;
    unsigned index, count;
    send_done_fn *done;
    void *arg;
};

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static void *sandbox_init(struct transport *t, struct error *err)
{
    struct sandbox *sb;

    (void)err;
    sb = xcalloc(1, sizeof(*sb));
    sb->t = t;
    sb->fd = -1;
    if (t->conf->provider.outbox_file && *t->conf->provider.outbox_file)
        sb->outbox = t->conf->provider.outbox_file;
    return sb;
}

static int open_outbox(struct sandbox *sb, struct error *err)
{
    if (!sb->outbox || sb->fd >= 0)
        return 0;
    sb->fd = open(sb->outbox, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (sb->fd < 0) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, true,
                  "sandbox: cannot open outbox_file %s: %s", sb->outbox,
                  strerror(errno));
        return -1;
    }
    return 0;
}

static int sandbox_start(void *state, struct error *err)
{
    return open_outbox(state, err);
}

static void iso_now(char *buf, size_t size)
{
    struct timeval tv;
    struct tm tm;
    size_t n;

    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    n = strftime(buf, size, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, size - n, ".%03dZ", (int)(tv.tv_usec / 1000));
}

static int write_line(struct sandbox *sb, const struct sandbox_pending *pe,
                      const char *id, struct error *err)
{
    json_t *obj, *media;
    char ts[40], *line;
    size_t len;
    ssize_t w;
    int rc = -1;

    if (open_outbox(sb, err) < 0)
        return -1;
    media = json_array();
    for (size_t i = 0; i < pe->n_media; i++) {
        json_t *s = json_string(pe->media[i]);
        if (s)
            json_array_append_new(media, s);
    }
    iso_now(ts, sizeof(ts));
    /* "o" steals media; "s?" writes null for a media-only part */
    obj = json_pack("{s:s, s:s, s:s, s:s, s:s?, s:o, s:s, s:I, s:I}", "ts", ts,
                    "gateway", pe->gw, "from", pe->from, "to", pe->to, "body",
                    pe->body, "media", media, "id", id, "part",
                    (json_int_t)pe->index + 1, "parts", (json_int_t)pe->count);
    if (!obj) {
        error_set(err, COND_BAD_REQUEST, false,
                  "sandbox: the message is not valid UTF-8");
        return -1;
    }
    line = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    if (!line) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, true,
                  "sandbox: cannot encode the outbox line");
        return -1;
    }
    len = strlen(line);
    line[len] = '\n'; /* replaces the NUL: one write() per line */
    w = write(sb->fd, line, len + 1);
    if (w == (ssize_t)(len + 1)) {
        rc = 0;
    } else {
        error_set(err, COND_INTERNAL_SERVER_ERROR, true,
                  "sandbox: cannot write outbox_file %s: %s", sb->outbox,
                  w < 0 ? strerror(errno) : "short write");
    }
    free(line);
    return rc;
}

static void pending_free(struct sandbox_pending *pe)
{
    struct sandbox *sb = pe->sb;

    if (pe->prev)
        pe->prev->next = pe->next;
    else
        sb->pending = pe->next;
    if (pe->next)
        pe->next->prev = pe->prev;
    if (pe->ev)
        event_free(pe->ev);
    for (size_t i = 0; i < pe->n_media; i++)
        free(pe->media[i]);
    free(pe->gw);
    free(pe->from);
    free(pe->to);
    free(pe->body);
    free(pe);
}

static void complete(evutil_socket_t fd, short what, void *arg)
{
    struct sandbox_pending *pe = arg;
    struct sandbox *sb = pe->sb;
    const char *module = sb->t->module;
    send_done_fn *done = pe->done;
    void *done_arg = pe->arg;
    char id[2 + 32 + 1], mto[32], mfrom[32];
    struct error err;
    bool failed = true;

    (void)fd;
    (void)what;
    error_clear(&err);
    log_mask(pe->to, mto, sizeof(mto));
    log_mask(pe->from, mfrom, sizeof(mfrom));
    if (ends_with(pe->to, "0000")) {
        error_set(&err, COND_NOT_ACCEPTABLE, false, "sandbox: number rejected");
    } else if (ends_with(pe->to, "0503")) {
        error_set(&err, COND_REMOTE_SERVER_TIMEOUT, true,
                  "sandbox: provider unavailable (HTTP 503)");
    } else {
        id[0] = 'S';
        id[1] = 'B';
        random_hex(id + 2, 16);
        if (write_line(sb, pe, id, &err) == 0)
            failed = false;
    }

    if (failed) {
        log_info(module, "sandbox: SMS %u/%u from %s to %s failed: %s",
                 pe->index + 1, pe->count, mfrom, mto, err.msg);
    } else {
        log_info(module, "sandbox: SMS %u/%u from %s to %s, %zu media, id %s",
                 pe->index + 1, pe->count, mfrom, mto, pe->n_media, id);
        log_debug(module, "sandbox: SMS %s body: %s", id,
                  pe->body ? pe->body : "");
    }
    /* free first: done may well start the next part or free the caller */
    pending_free(pe);
    done(done_arg, failed ? &err : NULL, failed ? NULL : id);
}

static int sandbox_send(void *state, const struct sms_part *part,
                        send_done_fn *done, void *arg, struct error *err)
{
    static const struct timeval zero = {0, 0};
    struct sandbox *sb = state;
    struct sandbox_pending *pe;

    if (!sb->t->host || !sb->t->host->base) {
        error_set(err, COND_INTERNAL_SERVER_ERROR, true,
                  "sandbox: no event loop");
        return -1;
    }
    pe = xcalloc(1, sizeof(*pe));
    pe->sb = sb;
    pe->ev = evtimer_new(sb->t->host->base, complete, pe);
    if (!pe->ev || evtimer_add(pe->ev, &zero) < 0) {
        if (pe->ev)
            event_free(pe->ev);
        free(pe);
        error_set(err, COND_INTERNAL_SERVER_ERROR, true,
                  "sandbox: cannot schedule the send");
        return -1;
    }
    pe->gw = xstrdup(part->gw);
    pe->from = xstrdup(part->from);
    pe->to = xstrdup(part->to);
    pe->body = part->body ? xstrdup(part->body) : NULL;
    for (size_t i = 0; i < part->n_media && i < MSG_MAX_MEDIA; i++)
        pe->media[pe->n_media++] = xstrdup(part->media[i]);
    pe->index = part->index;
    pe->count = part->count;
    pe->done = done;
    pe->arg = arg;
    pe->next = sb->pending;
    if (sb->pending)
        sb->pending->prev = pe;
    sb->pending = pe;
    return 0;
}

static void sandbox_free(void *state)
{
    struct sandbox *sb = state;

    if (!sb)
        return;
    while (sb->pending)
        pending_free(sb->pending);
    if (sb->fd >= 0)
        close(sb->fd);
    free(sb);
}

const struct sms_provider_ops sms_provider_sandbox = {
    .name = "sandbox",
    .max_chars = SMS_MAX_CHARS,
    .init = sandbox_init,
    .start = sandbox_start,
    .send = sandbox_send,
    .free = sandbox_free,
};
