/*
 * Unit tests for the SMS transport: contact addresses, claims, body
 * splitting, the destination policy, and the sandbox provider driven on a
 * real event_base (the outbox file is read back and parsed).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>
#include <jansson.h>

#include "config.h"
#include "log.h"
#include "sms/sms.h"
#include "transport.h"
#include "util.h"

static char s_transport[] = "sms";
static char s_jid[] = "sms.example.org";
static char s_cc[] = "1";
static char s_sandbox[] = "sandbox";
static char n1[] = "+15550001111", n2[] = "+15550002222";
static char *numbers[] = {n1, n2};
static char c1[] = "+1", c44[] = "+44";
static char *countries[] = {c1, c44};

struct fx {
    struct event_base *base;
    struct transport_host host;
    struct gateway_conf conf;
    char outbox[64];
    struct transport *t;
};

/* What the done callback saw. */
struct rec {
    int calls;
    bool had_err;
    struct error err;
    char id[64];
};

static bool g_in_send;

static void rec_done(void *arg, const struct error *err,
                     const char *provider_id)
{
    struct rec *r = arg;

    /* the contract: never from inside send() */
    assert_false(g_in_send);
    r->calls++;
    r->had_err = err != NULL;
    if (err)
        r->err = *err;
    snprintf(r->id, sizeof(r->id), "%s", provider_id ? provider_id : "");
}

static int fx_setup(void **state)
{
    struct fx *f = xcalloc(1, sizeof(*f));
    int fd;

    f->base = event_base_new();
    assert_non_null(f->base);
    f->host.base = f->base;
    snprintf(f->outbox, sizeof(f->outbox), "/tmp/test_sms_XXXXXX");
    fd = mkstemp(f->outbox);
    assert_true(fd >= 0);
    close(fd);

    f->conf.transport = s_transport;
    f->conf.kind = TRANSPORT_SMS;
    f->conf.jid = s_jid;
    f->conf.numbers.v = numbers;
    f->conf.numbers.n = ARRAY_SIZE(numbers);
    f->conf.default_country_code = s_cc;
    f->conf.provider.name = s_sandbox;
    f->conf.provider.outbox_file = f->outbox;
    *state = f;
    return 0;
}

static int fx_teardown(void **state)
{
    struct fx *f = *state;

    transport_free(f->t);
    unlink(f->outbox);
    event_base_free(f->base);
    free(f);
    return 0;
}

static struct transport *fx_start(struct fx *f)
{
    struct error err;

    error_clear(&err);
    f->t = transport_new(transport_lookup("sms"), &f->conf, &f->host, &err);
    assert_non_null(f->t);
    assert_int_equal(f->t->ops->start(f->t, &err), 0);
    return f->t;
}

static int do_send(struct transport *t, const struct msg *m, struct rec *r,
                   struct error *err)
{
    int rc;

    error_clear(err);
    g_in_send = true;
    rc = t->ops->send(t, m, rec_done, r, err);
    g_in_send = false;
    return rc;
}

static struct msg basic_msg(const char *to, const char *body)
{
    struct msg m = {
        .gw = "sms.example.org",
        .from_jid = "alice@example.org/phone",
        .from_addr = "+15550001111",
        .to_jid = "x@sms.example.org",
        .to_addr = to,
        .id = "m1",
        .body = body,
    };
    return m;
}

/* Reads the outbox: every line parsed; returns the number of lines. */
static size_t read_outbox(const char *path, json_t **lines, size_t max)
{
    FILE *fp = fopen(path, "r");
    char *line = NULL;
    size_t cap = 0, n = 0;

    assert_non_null(fp);
    while (getline(&line, &cap, fp) > 0) {
        json_error_t je;
        assert_true(n < max);
        assert_true(strlen(line) > 0 && line[strlen(line) - 1] == '\n');
        lines[n] = json_loads(line, 0, &je);
        assert_non_null(lines[n]);
        n++;
    }
    free(line);
    fclose(fp);
    return n;
}

static const char *jstr(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    assert_non_null(v);
    assert_true(json_is_string(v));
    return json_string_value(v);
}

static bool is_sandbox_id(const char *id)
{
    if (strlen(id) != 34 || id[0] != 'S' || id[1] != 'B')
        return false;
    for (size_t i = 2; i < 34; i++)
        if (!strchr("0123456789abcdef", id[i]))
            return false;
    return true;
}

/* --- registry ---------------------------------------------------------- */

static void test_registry_lookup(void **state)
{
    (void)state;
    assert_non_null(transport_lookup("sms"));
    assert_non_null(transport_lookup("email"));
    assert_string_equal(transport_lookup("sms")->name, "sms");
    assert_string_equal(transport_lookup("email")->name, "email");
    assert_null(transport_lookup("xmpp"));
    assert_null(transport_lookup(""));
    assert_null(transport_lookup(NULL));
}

static void test_registry_abi_and_module(void **state)
{
    struct fx *f = *state;
    struct transport_ops wrong = *transport_lookup("sms");
    struct error err;

    wrong.abi = TRANSPORT_ABI + 1;
    assert_null(transport_new(&wrong, &f->conf, &f->host, &err));
    assert_int_equal(err.code, COND_INTERNAL_SERVER_ERROR);
    assert_non_null(strstr(err.msg, "ABI"));

    fx_start(f);
    assert_string_equal(f->t->module, "sms[sms.example.org]");
    assert_non_null(f->t->priv);
    assert_int_equal(f->t->ops->caps, TCAP_SEND | TCAP_RECEIVE | TCAP_RECEIPTS |
                                          TCAP_WEBHOOK | TCAP_MEDIA);
    assert_string_equal(f->t->ops->identity_type, "sms");
    assert_string_equal(f->t->ops->contact_type, "sms");
    assert_string_equal(f->t->ops->reg_field, "phone");
}

static void test_incomplete_providers_refused(void **state)
{
    struct fx *f = *state;
    static char twilio[] = "twilio", telnyx[] = "telnyx", bogus[] = "bogus";
    struct error err;

    /* a real provider without its credentials cannot be configured */
    f->conf.provider.name = twilio;
    f->conf.provider.account_sid = NULL;
    f->conf.provider.auth_token = NULL;
    error_clear(&err);
    assert_null(
        transport_new(transport_lookup("sms"), &f->conf, &f->host, &err));
    assert_non_null(strstr(err.msg, "account_sid"));
    assert_false(err.temporary);

    f->conf.provider.name = telnyx;
    f->conf.provider.api_key = NULL;
    error_clear(&err);
    assert_null(
        transport_new(transport_lookup("sms"), &f->conf, &f->host, &err));
    assert_true(err.msg[0] != '\0');

    f->conf.provider.name = bogus;
    assert_null(
        transport_new(transport_lookup("sms"), &f->conf, &f->host, &err));
    assert_non_null(strstr(err.msg, "unknown SMS provider \"bogus\""));
}

/* --- addresses --------------------------------------------------------- */

/* max_segments counts what the carrier bills: GSM-7/UCS-2 segments of
 * every provider part (T22 sizes: 160/153 septets, 70/67 UTF-16 units). */
static void test_segments_op(void **state)
{
    struct fx *f = *state;
    struct transport *t = fx_start(f);
    struct msg m = {.gw = "sms.example.org"};
    char *body = xmalloc(3300);

    assert_non_null(t->ops->segments);
    m.body = NULL;
    assert_int_equal(t->ops->segments(t, &m), 1);
    m.body = "hello";
    assert_int_equal(t->ops->segments(t, &m), 1);
    memset(body, 'a', 160);
    body[160] = '\0';
    m.body = body;
    assert_int_equal(t->ops->segments(t, &m), 1);
    body[160] = 'a';
    body[161] = '\0';
    assert_int_equal(t->ops->segments(t, &m), 2);
    /* one non-GSM character turns the message into UCS-2: 71 units = 2 */
    memset(body, 'a', 70);
    strcpy(body + 70, "\xe2\x82\xac\xe4\xb8\xad"); /* euro is GSM, CJK not */
    assert_int_equal(t->ops->segments(t, &m), 2);
    /* 3,200 GSM characters: two provider parts of 1,600 = 11 + 11 */
    memset(body, 'a', 3200);
    body[3200] = '\0';
    assert_int_equal(t->ops->segments(t, &m), 22);
    free(body);
}

static void test_addr_parse(void **state)
{
    struct fx *f = *state;
    struct transport *t = fx_start(f);
    char out[64];
    struct error err;
    static const char *const bad[] = {
        "15551234567",     "+0155512345",  "+1", "+1555123456789012",
        "+1 555 123 4567", "+1555abc4567", "",   "tel:+15551234567",
    };

    assert_int_equal(
        t->ops->addr_parse(t, "+15551234567", out, sizeof(out), &err), 0);
    assert_string_equal(out, "+15551234567");
    assert_int_equal(
        t->ops->addr_parse(t, "+442079460958", out, sizeof(out), &err), 0);
    assert_string_equal(out, "+442079460958");
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        error_clear(&err);
        assert_int_equal(t->ops->addr_parse(t, bad[i], out, sizeof(out), &err),
                         -1);
        assert_int_equal(err.code, COND_JID_MALFORMED);
        assert_non_null(strstr(err.msg, "international format"));
    }
    /* does not fit: refused, not truncated */
    assert_int_equal(t->ops->addr_parse(t, "+15551234567", out, 5, &err), -1);

    assert_int_equal(t->ops->addr_to_node(t, "+15551234567", out, sizeof(out)),
                     0);
    assert_string_equal(out, "+15551234567");
    assert_int_equal(t->ops->addr_to_node(t, "+15551234567", out, 12), -1);
}

static void test_addr_from_human(void **state)
{
    struct fx *f = *state;
    struct transport *t = fx_start(f);
    char out[64];
    struct error err;

    assert_int_equal(
        t->ops->addr_from_human(t, "(555) 123-4567", out, sizeof(out), &err),
        0);
    assert_string_equal(out, "+15551234567");
    assert_int_equal(
        t->ops->addr_from_human(t, "+44 20 7946 0958", out, sizeof(out), &err),
        0);
    assert_string_equal(out, "+442079460958");
    assert_int_equal(
        t->ops->addr_from_human(t, "0044 20 7946 0958", out, sizeof(out), &err),
        0);
    assert_string_equal(out, "+442079460958");
    error_clear(&err);
    assert_int_equal(
        t->ops->addr_from_human(t, "call bob", out, sizeof(out), &err), -1);
    assert_int_equal(err.code, COND_NOT_ACCEPTABLE);
    assert_non_null(strstr(err.msg, "country code"));
}

static void test_addr_from_human_default_cc(void **state)
{
    struct fx *f = *state;
    static char cc44[] = "44";
    char out[64];
    struct error err;

    f->conf.default_country_code = cc44;
    struct transport *t = fx_start(f);
    assert_int_equal(
        t->ops->addr_from_human(t, "20 7946 0958", out, sizeof(out), &err), 0);
    assert_string_equal(out, "+442079460958");
}

static void test_claim(void **state)
{
    struct fx *f = *state;
    struct transport *t = fx_start(f);
    char out[64];
    struct error err;

    assert_int_equal(t->ops->claim(t, "+15550001111", out, sizeof(out), &err),
                     0);
    assert_string_equal(out, "+15550001111");
    /* typed the human way, normalised before the check */
    assert_int_equal(t->ops->claim(t, "(555) 000-2222", out, sizeof(out), &err),
                     0);
    assert_string_equal(out, "+15550002222");

    error_clear(&err);
    assert_int_equal(
        t->ops->claim(t, "+1 555 000 3333", out, sizeof(out), &err), -1);
    assert_int_equal(err.code, COND_NOT_ACCEPTABLE);
    assert_false(err.temporary);
    assert_non_null(
        strstr(err.msg, "+15550003333 is not one of this gateway's numbers"));

    error_clear(&err);
    assert_int_equal(t->ops->claim(t, "my number", out, sizeof(out), &err), -1);
    assert_int_equal(err.code, COND_NOT_ACCEPTABLE);
    assert_non_null(strstr(err.msg, "is not a phone number"));
}

/* --- splitting --------------------------------------------------------- */

/* Checks the invariants of a full split and returns the number of parts. */
static size_t check_split(const char *s, size_t limit)
{
    size_t off = 0, parts = 0;

    while (s[off]) {
        size_t next, len = sms_split_next(s + off, limit, &next);
        char *part = xstrndup(s + off, len);

        assert_true(len > 0);
        assert_true(next >= len);
        assert_true(sms_count_chars(part) <= limit);
        /* never cut inside a UTF-8 sequence, on either side */
        assert_true(((unsigned char)s[off] & 0xC0) != 0x80);
        assert_true(((unsigned char)s[off + len] & 0xC0) != 0x80);
        /* what lies between parts is whitespace only, so nothing is lost */
        for (size_t i = len; i < next; i++)
            assert_non_null(strchr(" \t\n\r\v\f", s[off + i]));
        free(part);
        off += next;
        parts++;
    }
    return parts;
}

static char *repeat(const char *unit, size_t times)
{
    struct strbuf b;

    sb_init(&b);
    for (size_t i = 0; i < times; i++)
        sb_puts(&b, unit);
    return sb_steal(&b);
}

static void test_split_fits(void **state)
{
    char *s = repeat("a", SMS_MAX_CHARS);
    size_t next;

    (void)state;
    assert_int_equal(sms_split_next(s, SMS_MAX_CHARS, &next), SMS_MAX_CHARS);
    assert_int_equal(next, SMS_MAX_CHARS);
    free(s);
    /* a rest that fits is kept as it is, spaces included */
    assert_int_equal(sms_split_next("  hi  ", SMS_MAX_CHARS, &next), 6);
    assert_int_equal(next, 6);
}

static void test_split_at_whitespace(void **state)
{
    /* 7-byte units "abcdef ": the last space within 1600 is at 1595 */
    char *s = repeat("abcdef ", 400);
    size_t next, len;

    (void)state;
    len = sms_split_next(s, SMS_MAX_CHARS, &next);
    assert_int_equal(len, 1595);
    assert_int_equal(next, 1596);
    assert_memory_equal(s + len - 6, "abcdef", 6);
    assert_int_equal(check_split(s, SMS_MAX_CHARS), 2);
    free(s);

    /* a whitespace run at the cut belongs to neither part */
    s = xasprintf("%s \n\t %s", "word word", "next");
    len = sms_split_next(s, 10, &next);
    assert_int_equal(len, 9);
    assert_string_equal(s + next, "next");
    free(s);
}

static void test_split_space_right_after_limit(void **state)
{
    char *a = repeat("a", SMS_MAX_CHARS);
    char *s = xasprintf("%s %s", a, "tail");
    size_t next;

    (void)state;
    assert_int_equal(sms_split_next(s, SMS_MAX_CHARS, &next), SMS_MAX_CHARS);
    assert_string_equal(s + next, "tail");
    free(a);
    free(s);
}

static void test_split_hard_without_whitespace(void **state)
{
    char *s = repeat("a", 1601);
    size_t next;

    (void)state;
    assert_int_equal(sms_split_next(s, SMS_MAX_CHARS, &next), 1600);
    assert_int_equal(next, 1600);
    assert_string_equal(s + next, "a");
    free(s);

    /* leading whitespace is no cut: the part would be empty */
    s = xasprintf("   %s", "abcdefghij");
    assert_int_equal(sms_split_next(s, 5, &next), 5);
    assert_int_equal(next, 5);
    free(s);
}

static void test_split_multibyte(void **state)
{
    size_t next;
    char *s;

    (void)state;
    /* 2-byte é: 1600 code points are 3200 bytes */
    s = repeat("\xc3\xa9", 1601);
    assert_int_equal(sms_split_next(s, SMS_MAX_CHARS, &next), 3200);
    assert_int_equal(next, 3200);
    assert_string_equal(s + next, "\xc3\xa9");
    assert_int_equal(check_split(s, SMS_MAX_CHARS), 2);
    free(s);

    /* 4-byte emoji after one ASCII byte: boundaries are off by one */
    char *e = repeat("\xf0\x9f\x98\x80", 2000);
    s = xasprintf("x%s", e);
    assert_int_equal(sms_split_next(s, SMS_MAX_CHARS, &next), 1 + 1599 * 4);
    assert_int_equal(check_split(s, SMS_MAX_CHARS), 2);
    free(e);
    free(s);

    /* 3-byte euro signs with a small limit */
    s = repeat("\xe2\x82\xac", 10);
    assert_int_equal(sms_split_next(s, 3, &next), 9);
    assert_int_equal(check_split(s, 3), 4);
    assert_int_equal(sms_count_chars(s), 10);
    free(s);
}

static void test_split_mixed_text_order(void **state)
{
    static const char *const words[] = {
        "hello",
        "w\xc3\xb6rld",
        "\xf0\x9f\x98\x9c",
        "caf\xc3\xa9\n",
        ("\xe2\x82\xac"
         "5"),
        "a-very-long-word-without-any-break",
    };
    struct strbuf b;
    char *s;
    size_t off = 0, parts = 0;

    (void)state;
    sb_init(&b);
    for (size_t i = 0; i < 1500; i++) {
        sb_puts(&b, words[(i * 7 + 3) % ARRAY_SIZE(words)]);
        sb_putc(&b, ' ');
    }
    s = sb_steal(&b);
    assert_true(sms_count_chars(s) > 3 * SMS_MAX_CHARS);
    size_t expect = check_split(s, SMS_MAX_CHARS);
    assert_true(expect >= 4);

    /* parts joined by their cut whitespace give back the body, in order */
    sb_init(&b);
    while (s[off]) {
        size_t next, len = sms_split_next(s + off, SMS_MAX_CHARS, &next);
        assert_true(len <= next);
        sb_append(&b, s + off, next);
        off += next;
        parts++;
    }
    assert_string_equal(b.s, s);
    assert_int_equal(parts, expect);
    sb_free(&b);
    free(s);
}

/* --- sending through the sandbox --------------------------------------- */

static void test_sandbox_send_writes_line(void **state)
{
    struct fx *f = *state;
    struct transport *t = fx_start(f);
    struct msg m = basic_msg("+15551234567", "hello \xf0\x9f\x91\x8b");
    struct rec r = {0};
    struct error err;
    json_t *lines[4];

    assert_int_equal(do_send(t, &m, &r, &err), 0);
    assert_int_equal(r.calls, 0);
    assert_int_equal(t->ops->inflight(t), 1);

    assert_int_equal(event_base_dispatch(f->base), 1); /* ran dry */
    assert_int_equal(r.calls, 1);
    assert_false(r.had_err);
    assert_true(is_sandbox_id(r.id));
    assert_int_equal(t->ops->inflight(t), 0);

    assert_int_equal(read_outbox(f->outbox, lines, 4), 1);
    assert_string_equal(jstr(lines[0], "gateway"), "sms.example.org");
    assert_string_equal(jstr(lines[0], "from"), "+15550001111");
    assert_string_equal(jstr(lines[0], "to"), "+15551234567");
    assert_string_equal(jstr(lines[0], "body"), "hello \xf0\x9f\x91\x8b");
    assert_string_equal(jstr(lines[0], "id"), r.id);
    assert_true(strlen(jstr(lines[0], "ts")) >= 20);
    assert_true(json_is_array(json_object_get(lines[0], "media")));
    assert_int_equal(json_array_size(json_object_get(lines[0], "media")), 0);
    json_decref(lines[0]);

    /* nothing left to fire: exactly once */
    assert_int_equal(event_base_loop(f->base, EVLOOP_NONBLOCK), 1);
    assert_int_equal(r.calls, 1);
}

static void test_sandbox_long_body_in_order(void **state)
{
    struct fx *f = *state;
    struct transport *t = fx_start(f);
    char *body = repeat("abcdef ", 500); /* 3500 chars */
    struct msg m = basic_msg("+15551234567", body);
    struct rec r = {0};
    struct error err;
    json_t *lines[8];
    struct strbuf joined;
    size_t n;

    m.media[0] = "https://up.example.org/cat.jpg";
    m.n_media = 1;
    assert_int_equal(do_send(t, &m, &r, &err), 0);
    assert_int_equal(event_base_dispatch(f->base), 1); /* ran dry */
    assert_int_equal(r.calls, 1);
    assert_false(r.had_err);

    n = read_outbox(f->outbox, lines, 8);
    assert_int_equal(n, 3);
    sb_init(&joined);
    for (size_t i = 0; i < n; i++) {
        const char *b = jstr(lines[i], "body");
        assert_true(sms_count_chars(b) <= SMS_MAX_CHARS);
        assert_int_equal(json_integer_value(json_object_get(lines[i], "part")),
                         i + 1);
        assert_int_equal(json_array_size(json_object_get(lines[i], "media")),
                         i == 0 ? 1 : 0);
        if (i)
            sb_putc(&joined, ' ');
        sb_puts(&joined, b);
    }
    /* the message's provider id is the last part's */
    assert_string_equal(jstr(lines[2], "id"), r.id);
    assert_string_not_equal(jstr(lines[0], "id"), jstr(lines[1], "id"));
    /* 1595 + 1595 + 308: the last part fits and keeps its trailing space */
    assert_int_equal(strlen(jstr(lines[0], "body")), 1595);
    assert_int_equal(strlen(jstr(lines[2], "body")), 308);
    assert_string_equal(joined.s, body);
    for (size_t i = 0; i < n; i++)
        json_decref(lines[i]);
    sb_free(&joined);
    free(body);
}

static void test_sandbox_media_only(void **state)
{
    struct fx *f = *state;
    struct transport *t = fx_start(f);
    struct msg m = basic_msg("+15551234567", NULL);
    struct rec r = {0};
    struct error err;
    json_t *lines[2];

    m.media[0] = "https://up.example.org/a.jpg";
    m.media[1] = "https://up.example.org/b.jpg";
    m.n_media = 2;
    assert_int_equal(do_send(t, &m, &r, &err), 0);
    assert_int_equal(event_base_dispatch(f->base), 1); /* ran dry */
    assert_int_equal(r.calls, 1);
    assert_int_equal(read_outbox(f->outbox, lines, 2), 1);
    assert_true(json_is_null(json_object_get(lines[0], "body")));
    json_t *media = json_object_get(lines[0], "media");
    assert_int_equal(json_array_size(media), 2);
    assert_string_equal(json_string_value(json_array_get(media, 1)),
                        "https://up.example.org/b.jpg");
    json_decref(lines[0]);

    /* no body and no media: nothing to send */
    m.n_media = 0;
    assert_int_equal(do_send(t, &m, &r, &err), -1);
    assert_int_equal(err.code, COND_BAD_REQUEST);
}

static char *slurp(const char *path)
{
    FILE *fp = fopen(path, "r");
    struct strbuf b;
    char buf[512];
    size_t n;

    assert_non_null(fp);
    sb_init(&b);
    while ((n = fread(buf, 1, sizeof(buf), fp)) > 0)
        sb_append(&b, buf, n);
    fclose(fp);
    return sb_steal(&b);
}

static void test_sandbox_log_masks_and_hides_body(void **state)
{
    struct fx *f = *state;
    struct transport *t = fx_start(f);
    struct msg m = basic_msg("+15551234567", "the-secret-body");
    struct rec r = {0};
    struct error err;
    char path[] = "/tmp/test_sms_log_XXXXXX";
    int fd = mkstemp(path);
    char *text;

    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(log_init(L_INFO, false, path, &err), 0);
    assert_int_equal(do_send(t, &m, &r, &err), 0);
    assert_int_equal(event_base_dispatch(f->base), 1);
    text = slurp(path);
    assert_non_null(strstr(text, "sandbox: SMS 1/1"));
    assert_non_null(strstr(text, r.id));
    assert_null(strstr(text, "the-secret-body"));
    assert_null(strstr(text, "+15551234567"));
    assert_null(strstr(text, "+15550001111"));
    free(text);

    log_set_level(L_DEBUG);
    assert_int_equal(do_send(t, &m, &r, &err), 0);
    assert_int_equal(event_base_dispatch(f->base), 1);
    text = slurp(path);
    assert_non_null(strstr(text, "the-secret-body"));
    free(text);
    log_close();
    log_set_level(L_INFO);
    unlink(path);
}

static void test_sandbox_faults(void **state)
{
    struct fx *f = *state;
    struct transport *t = fx_start(f);
    struct msg m = basic_msg("+15551230000", "hi");
    struct rec r = {0}, r2 = {0};
    struct error err;
    json_t *lines[2];

    assert_int_equal(do_send(t, &m, &r, &err), 0);
    m.to_addr = "+15551230503";
    assert_int_equal(do_send(t, &m, &r2, &err), 0);
    assert_int_equal(t->ops->inflight(t), 2);
    assert_int_equal(event_base_dispatch(f->base), 1); /* ran dry */

    assert_int_equal(r.calls, 1);
    assert_true(r.had_err);
    assert_false(r.err.temporary);
    assert_int_equal(r.err.code, COND_NOT_ACCEPTABLE);
    assert_string_equal(r.err.msg, "sandbox: number rejected");

    assert_int_equal(r2.calls, 1);
    assert_true(r2.had_err);
    assert_true(r2.err.temporary);
    assert_string_equal(r2.id, "");

    assert_int_equal(t->ops->inflight(t), 0);
    assert_int_equal(read_outbox(f->outbox, lines, 2), 0);
}

static void test_allowed_countries(void **state)
{
    struct fx *f = *state;
    struct transport *t;
    struct msg m = basic_msg("+33612345678", "bonjour");
    struct rec r = {0};
    struct error err;

    f->conf.limits.allowed_countries.v = countries;
    f->conf.limits.allowed_countries.n = ARRAY_SIZE(countries);
    t = fx_start(f);

    assert_int_equal(do_send(t, &m, &r, &err), -1);
    assert_int_equal(err.code, COND_NOT_ACCEPTABLE);
    assert_false(err.temporary);
    assert_non_null(strstr(err.msg, "+33612345678"));
    assert_non_null(strstr(err.msg, "+1, +44"));
    assert_int_equal(t->ops->inflight(t), 0);

    m.to_addr = "+447911123456";
    assert_int_equal(do_send(t, &m, &r, &err), 0);
    assert_int_equal(event_base_dispatch(f->base), 1); /* ran dry */
    /* one call in all: the refused send never calls done */
    assert_int_equal(r.calls, 1);
    assert_false(r.had_err);
}

static void test_stop_refuses_new_sends(void **state)
{
    struct fx *f = *state;
    struct transport *t = fx_start(f);
    struct msg m = basic_msg("+15551234567", "before stop");
    struct rec r = {0}, r2 = {0};
    struct error err;

    assert_int_equal(do_send(t, &m, &r, &err), 0);
    t->ops->stop(t);
    m.body = "after stop";
    assert_int_equal(do_send(t, &m, &r2, &err), -1);
    assert_true(err.temporary);
    assert_int_equal(err.code, COND_SERVICE_UNAVAILABLE);
    assert_int_equal(t->ops->inflight(t), 1);

    /* the send accepted before stop still completes */
    assert_int_equal(event_base_dispatch(f->base), 1); /* ran dry */
    assert_int_equal(r.calls, 1);
    assert_false(r.had_err);
    assert_int_equal(r2.calls, 0);
    assert_int_equal(t->ops->inflight(t), 0);
}

static void test_bad_recipient(void **state)
{
    struct fx *f = *state;
    struct transport *t = fx_start(f);
    struct msg m = basic_msg("5551234567", "hi");
    struct rec r = {0};
    struct error err;

    assert_int_equal(do_send(t, &m, &r, &err), -1);
    assert_int_equal(err.code, COND_JID_MALFORMED);
}

static void test_free_with_send_pending(void **state)
{
    struct fx *f = *state;
    struct transport *t = fx_start(f);
    struct msg m = basic_msg("+15551234567", "never mind");
    struct rec r = {0};
    struct error err;

    assert_int_equal(do_send(t, &m, &r, &err), 0);
    /* freed before the loop runs: nothing leaks, nothing fires later */
    transport_free(t);
    f->t = NULL;
    assert_int_equal(event_base_loop(f->base, EVLOOP_NONBLOCK), 1);
    assert_int_equal(r.calls, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registry_lookup),
#define T(fn) cmocka_unit_test_setup_teardown(fn, fx_setup, fx_teardown)
        T(test_registry_abi_and_module),
        T(test_incomplete_providers_refused),
        T(test_segments_op),
        T(test_addr_parse),
        T(test_addr_from_human),
        T(test_addr_from_human_default_cc),
        T(test_claim),
        cmocka_unit_test(test_split_fits),
        cmocka_unit_test(test_split_at_whitespace),
        cmocka_unit_test(test_split_space_right_after_limit),
        cmocka_unit_test(test_split_hard_without_whitespace),
        cmocka_unit_test(test_split_multibyte),
        cmocka_unit_test(test_split_mixed_text_order),
        T(test_sandbox_send_writes_line),
        T(test_sandbox_long_body_in_order),
        T(test_sandbox_media_only),
        T(test_sandbox_log_masks_and_hides_body),
        T(test_sandbox_faults),
        T(test_allowed_countries),
        T(test_stop_refuses_new_sends),
        T(test_bad_recipient),
        T(test_free_with_send_pending),
#undef T
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
