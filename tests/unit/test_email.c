/*
 * Unit tests for the pure parts of the email transport (threads.c): thread
 * ids (RFC 4122 version 4 UUIDs, XEP-0201), the References chain of a
 * reply (RFC 5322 3.6.4, with the messages of RFC 5322 Appendix A.2 as
 * vectors), the ids looked up for an inbound mail's thread, reply
 * subjects, the attachment summary, and the inbound message built from a
 * parsed mail (also from the fixture tests/data/mail/alternative.eml).
 * Also: send before start refuses without calling done.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "email/mime.h"
#include "email/threads.h"
#include "queue.h"
#include "transport.h"
#include "util.h"

/* RFC 5322 Appendix A.2: John's message, Mary's reply, John's reply. */
#define A2_JOHN "1234@local.machine.example"
#define A2_MARY "3456@example.net"
#define A2_JOHN2 "abcd.1234@local.machine.test"

/* ---- thread ids ---- */

static void test_uuid_bits(void **state)
{
    const unsigned char seq[16] = {0x00, 0x01, 0x02, 0x03, 0x04, 0x05,
                                   0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b,
                                   0x0c, 0x0d, 0x0e, 0x0f};
    unsigned char ff[16];
    char out[EMAIL_THREAD_UUID_SIZE];

    (void)state;
    /* version nibble 4 in byte 6, variant 10xx in byte 8 */
    email_thread_uuid(seq, out);
    assert_string_equal(out, "00010203-0405-4607-8809-0a0b0c0d0e0f");
    memset(ff, 0xff, sizeof(ff));
    email_thread_uuid(ff, out);
    assert_string_equal(out, "ffffffff-ffff-4fff-bfff-ffffffffffff");
}

static void test_uuid_fresh(void **state)
{
    char a[EMAIL_THREAD_UUID_SIZE], b[EMAIL_THREAD_UUID_SIZE];

    (void)state;
    email_thread_new(a);
    email_thread_new(b);
    assert_int_equal(strlen(a), 36);
    assert_string_not_equal(a, b);
    for (size_t i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23)
            assert_int_equal(a[i], '-');
        else
            assert_true(isxdigit((unsigned char)a[i]) &&
                        !isupper((unsigned char)a[i]));
    }
    assert_int_equal(a[14], '4');
    assert_non_null(strchr("89ab", a[19]));
    assert_true(email_thread_id_ok(a));
}

static void test_thread_id_ok(void **state)
{
    char long_id[EMAIL_THREAD_ID_MAX + 2];

    (void)state;
    assert_true(email_thread_id_ok("e0ffe42b28561960c6b12b944a092794b9683a38"));
    assert_true(email_thread_id_ok("thr-1"));
    assert_true(email_thread_id_ok("f\xc3\xa4\x64\x65n")); /* UTF-8 */
    assert_false(email_thread_id_ok(NULL));
    assert_false(email_thread_id_ok(""));
    assert_false(email_thread_id_ok("a b"));
    assert_false(email_thread_id_ok("a\nb"));
    assert_false(email_thread_id_ok("a\tb"));
    assert_false(email_thread_id_ok("a\x7f"));
    memset(long_id, 'x', sizeof(long_id) - 1);
    long_id[EMAIL_THREAD_ID_MAX] = '\0';
    assert_true(email_thread_id_ok(long_id));
    long_id[EMAIL_THREAD_ID_MAX] = 'x';
    long_id[EMAIL_THREAD_ID_MAX + 1] = '\0';
    assert_false(email_thread_id_ok(long_id));
}

/* ---- References (RFC 5322 3.6.4) ---- */

static void test_refs_rfc5322_a2(void **state)
{
    char *mary_refs[] = {(char[]){A2_JOHN}};
    char *c;

    (void)state;
    /* a reply to John's first message (no References, no In-Reply-To) */
    c = email_refs_chain(NULL, 0, NULL, A2_JOHN, 20);
    assert_string_equal(c, A2_JOHN);
    free(c);
    /* a reply to Mary's (References: <1234@...>, Message-ID <3456@...>):
     * John's reply in A.2 carries exactly this References field */
    c = email_refs_chain(mary_refs, 1, A2_JOHN, A2_MARY, 20);
    assert_string_equal(c, A2_JOHN " " A2_MARY);
    free(c);
    /* the same chain from the stored form */
    c = email_refs_chain_str(A2_JOHN, A2_MARY, 20);
    assert_string_equal(c, A2_JOHN " " A2_MARY);
    free(c);
    /* and its parent, for In-Reply-To */
    c = email_refs_last(A2_JOHN " " A2_MARY);
    assert_string_equal(c, A2_MARY);
    free(c);
}

static void test_refs_in_reply_to_fallback(void **state)
{
    char *c;

    (void)state;
    /* parent without References but with In-Reply-To: that id first */
    c = email_refs_chain(NULL, 0, A2_JOHN, A2_MARY, 20);
    assert_string_equal(c, A2_JOHN " " A2_MARY);
    free(c);
    /* parent without Message-ID: its References alone */
    char *refs[] = {(char[]){A2_JOHN}, (char[]){A2_MARY}};
    c = email_refs_chain(refs, 2, A2_MARY, NULL, 20);
    assert_string_equal(c, A2_JOHN " " A2_MARY);
    free(c);
    /* none of the three: no References field */
    assert_null(email_refs_chain(NULL, 0, NULL, NULL, 20));
    assert_null(email_refs_chain_str(NULL, NULL, 20));
    assert_null(email_refs_chain_str("  ", NULL, 20));
    assert_null(email_refs_last(NULL));
    assert_null(email_refs_last(""));
    assert_null(email_refs_last("   "));
    c = email_refs_last("a@b ");
    assert_string_equal(c, "a@b");
    free(c);
}

static void test_refs_trim_and_dedupe(void **state)
{
    char ids[30][16], *v[30], *c;
    struct strbuf want;

    (void)state;
    for (int i = 0; i < 30; i++) {
        snprintf(ids[i], sizeof(ids[i]), "m%d@x.org", i);
        v[i] = ids[i];
    }
    /* 30 references + the parent: the root and the 19 newest remain */
    c = email_refs_chain(v, 30, NULL, "p@x.org", 20);
    sb_init(&want);
    sb_puts(&want, "m0@x.org");
    for (int i = 30 - 18; i < 30; i++)
        sb_printf(&want, " m%d@x.org", i);
    sb_puts(&want, " p@x.org");
    assert_string_equal(c, want.s);
    sb_free(&want);
    free(c);
    /* a parent id already in the chain is not repeated */
    char *d[] = {(char[]){"a@x"}, (char[]){"b@x"}, (char[]){"a@x"}};
    c = email_refs_chain(d, 3, NULL, "b@x", 20);
    assert_string_equal(c, "a@x b@x");
    free(c);
    c = email_refs_chain_str("a@x  b@x\tc@x", "d@x", 3);
    assert_string_equal(c, "a@x c@x d@x");
    free(c);
    c = email_refs_chain_str("a@x b@x", "c@x", 1);
    assert_string_equal(c, "a@x");
    free(c);
}

static void test_candidates(void **state)
{
    char *refs[] = {(char[]){"r0@x"}, (char[]){"r1@x"}, (char[]){"r2@x"}};
    struct mail_parsed p;
    char *c;

    (void)state;
    memset(&p, 0, sizeof(p));
    c = email_thread_candidates(&p, 10);
    assert_string_equal(c, "");
    free(c);
    p.in_reply_to = (char[]){"r1@x"};
    p.references = refs;
    p.n_references = 3;
    /* In-Reply-To first, then References newest first, once each */
    c = email_thread_candidates(&p, 10);
    assert_string_equal(c, "r1@x r2@x r0@x");
    free(c);
    c = email_thread_candidates(&p, 2);
    assert_string_equal(c, "r1@x r2@x");
    free(c);
    p.in_reply_to = NULL;
    c = email_thread_candidates(&p, 10);
    assert_string_equal(c, "r2@x r1@x r0@x");
    free(c);
}

/* ---- subjects, sizes, attachments ---- */

static void test_reply_subject(void **state)
{
    char *s;

    (void)state;
    s = email_reply_subject("Lunch?");
    assert_string_equal(s, "Re: Lunch?");
    free(s);
    s = email_reply_subject("RE: Lunch?");
    assert_string_equal(s, "RE: Lunch?");
    free(s);
    s = email_reply_subject("  re:x");
    assert_string_equal(s, "re:x");
    free(s);
    s = email_reply_subject("Return policy"); /* "Re" is not "Re:" */
    assert_string_equal(s, "Re: Return policy");
    free(s);
    assert_null(email_reply_subject(NULL));
    assert_null(email_reply_subject(" \t"));
}

static void test_format_size(void **state)
{
    static const struct {
        size_t n;
        const char *s;
    } v[] = {
        {0, "0 bytes"},
        {1, "1 byte"},
        {1023, "1023 bytes"},
        {1024, "1 KB"},
        {1025, "2 KB"},
        {12 * 1024, "12 KB"},
        {1024 * 1024 - 1, "1024 KB"},
        {1024 * 1024, "1.0 MB"},
        {1024 * 1024 + 1, "1.1 MB"},
        {3 * 1024 * 1024 / 2, "1.5 MB"},
        {10u * 1024 * 1024, "10.0 MB"},
    };
    char buf[32];

    (void)state;
    for (size_t i = 0; i < ARRAY_SIZE(v); i++) {
        email_format_size(v[i].n, buf, sizeof(buf));
        assert_string_equal(buf, v[i].s);
    }
}

static void test_attachment_summary(void **state)
{
    struct mail_attachment a[3] = {
        {(char[]){"report.pdf"}, 12 * 1024, (char[]){"application/pdf"}},
        {(char[]){""}, 10, (char[]){"image/png"}},
        {(char[]){"b\xc3\xa9\x62\xc3\xa9.png"}, 3 * 1024 * 1024 / 2,
         (char[]){"image/png"}},
    };
    char *s;

    (void)state;
    assert_null(email_attachment_summary(a, 0));
    s = email_attachment_summary(a, 1);
    assert_string_equal(s, "Attachments: report.pdf (12 KB)");
    free(s);
    s = email_attachment_summary(a, 3);
    assert_string_equal(s, "Attachments: report.pdf (12 KB), unnamed (10 "
                           "bytes), b\xc3\xa9\x62\xc3\xa9.png (1.5 MB)");
    free(s);
}

/* ---- inbound messages ---- */

static void test_inmsg_fields(void **state)
{
    struct mail_attachment att = {(char[]){"a.txt"}, 5, (char[]){"text/plain"}};
    struct mail_parsed p;
    struct inmsg m;
    struct error err;

    (void)state;
    memset(&p, 0, sizeof(p));
    p.from_addr = (char[]){"bob@example.com"};
    p.subject = (char[]){"Hello"};
    p.text = (char[]){"Hi Alice\n"};
    p.message_id = (char[]){"m1@example.com"};
    assert_int_equal(email_build_inmsg(&p, "alice@mail.example.org",
                                       "bounce@lists.example.com", "T1", NULL,
                                       &m, &err),
                     0);
    assert_int_equal(m.kind, INMSG_MESSAGE);
    assert_string_equal(m.to_addr, "alice@mail.example.org");
    assert_string_equal(m.from_addr, "bob@example.com"); /* header From */
    assert_string_equal(m.subject, "Hello");
    assert_string_equal(m.thread, "T1");
    assert_string_equal(m.body, "Hi Alice\n");
    assert_null(m.extra);
    assert_string_equal(m.provider_id, "m1@example.com:alice@mail.example.org");
    inmsg_free_fields(&m);

    /* no From: the envelope sender, normalised; no Message-ID: digest */
    p.from_addr = NULL;
    p.message_id = NULL;
    p.text = (char[]){""};
    p.attachments = &att;
    p.n_attachments = 1;
    assert_int_equal(email_build_inmsg(&p, "alice@mail.example.org",
                                       "<Carol@Example.COM>", "T2", "abcd", &m,
                                       &err),
                     0);
    assert_string_equal(m.from_addr, "Carol@example.com");
    assert_string_equal(m.body, "Hello"); /* blank text: the subject */
    assert_string_equal(m.extra, "Attachments: a.txt (5 bytes)");
    assert_string_equal(m.provider_id, "sha256:abcd:alice@mail.example.org");
    inmsg_free_fields(&m);

    /* attachments only: no body, the summary says it all */
    p.subject = NULL;
    p.from_addr = (char[]){"bob@example.com"};
    assert_int_equal(email_build_inmsg(&p, "alice@mail.example.org", "", "T3",
                                       NULL, &m, &err),
                     0);
    assert_null(m.body);
    assert_null(m.subject);
    assert_null(m.provider_id);
    assert_non_null(m.extra);
    inmsg_free_fields(&m);

    /* nothing at all */
    p.n_attachments = 0;
    assert_int_equal(email_build_inmsg(&p, "alice@mail.example.org", "", "T4",
                                       NULL, &m, &err),
                     0);
    assert_string_equal(m.body, "(empty message)");
    inmsg_free_fields(&m);

    /* no sender anywhere (null envelope sender, From unusable) */
    p.from_addr = NULL;
    assert_int_equal(email_build_inmsg(&p, "alice@mail.example.org", "", "T5",
                                       NULL, &m, &err),
                     -1);
    assert_int_equal(err.code, COND_BAD_REQUEST);
    assert_false(err.temporary);
    assert_null(m.to_addr);
    assert_int_equal(email_build_inmsg(&p, "alice@mail.example.org",
                                       "not an address", "T5", NULL, &m, &err),
                     -1);
}

static void test_inmsg_long_text_cut(void **state)
{
    size_t n = EMAIL_MAX_TEXT + 5000;
    char *text = xmalloc(n + 1);
    struct mail_parsed p;
    struct inmsg m;
    struct error err;
    const char *note;

    (void)state;
    /* two-byte characters, so a cut at an odd byte would split one */
    for (size_t i = 0; i + 1 < n; i += 2) {
        text[i] = (char)0xc3;
        text[i + 1] = (char)0xa9;
    }
    text[n - 1] = 'x';
    text[n] = '\0';
    memset(&p, 0, sizeof(p));
    p.from_addr = (char[]){"bob@example.com"};
    p.text = text;
    assert_int_equal(
        email_build_inmsg(&p, "a@mail.example.org", NULL, "T", NULL, &m, &err),
        0);
    note = strstr(m.body, "\n[... message cut: ");
    assert_non_null(note);
    assert_true((size_t)(note - m.body) <= EMAIL_MAX_TEXT);
    assert_true((size_t)(note - m.body) > EMAIL_MAX_TEXT - 4);
    /* the text before the note ends on a whole character */
    assert_int_equal((unsigned char)note[-1], 0xa9);
    assert_int_equal((size_t)(note - m.body) % 2, 0);
    inmsg_free_fields(&m);
    free(text);
}

static char *load(const char *name, size_t *len)
{
    const char *dir = getenv("POSTERN_TEST_DATA");
    char path[512];
    FILE *f;
    char *buf;
    long n;

    snprintf(path, sizeof(path), "%s/mail/%s", dir ? dir : "tests/data", name);
    f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = xmalloc((size_t)n + 1);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    *len = (size_t)n;
    return buf;
}

/* A real reply mail: multipart/alternative with two attachments. */
static void test_inmsg_from_fixture(void **state)
{
    struct mail_parsed p;
    struct inmsg m;
    struct error err;
    size_t len;
    char *raw = load("alternative.eml", &len), *c, *want, sz0[32], sz1[32];

    (void)state;
    assert_int_equal(mime_parse(raw, len, &p, &err), 0);
    free(raw);

    c = email_thread_candidates(&p, EMAIL_THREAD_MAX_CANDIDATES);
    assert_string_equal(c, "root-1@mail.example.org root-0@mail.example.org");
    free(c);
    /* the chain a reply to this mail carries (RFC 5322 3.6.4) */
    c = email_refs_chain(p.references, p.n_references, p.in_reply_to,
                         p.message_id, EMAIL_THREAD_MAX_REFS);
    assert_string_equal(c, "root-0@mail.example.org root-1@mail.example.org "
                           "alt-2@mail.example.net");
    free(c);

    assert_int_equal(email_build_inmsg(&p, "someone@mail.example.org",
                                       "jane@mail.example.net", "T", NULL, &m,
                                       &err),
                     0);
    assert_string_equal(m.from_addr, "jane@mail.example.net");
    assert_string_equal(m.subject, "Gr\xc3\xbc\xc3\x9f"
                                   "e \xf0\x9f\x98\x80");
    assert_string_equal(m.body, "Plain version of the message.");
    assert_string_equal(m.provider_id,
                        "alt-2@mail.example.net:someone@mail.example.org");
    assert_int_equal(p.n_attachments, 2);
    email_format_size(p.attachments[0].size, sz0, sizeof(sz0));
    email_format_size(p.attachments[1].size, sz1, sizeof(sz1));
    want = xasprintf("Attachments: r\xc3\xa9sum\xc3\xa9.pdf (%s), "
                     "b\xc3\xa9\x62\xc3\xa9.png (%s)",
                     sz0, sz1);
    assert_string_equal(m.extra, want);
    free(want);
    inmsg_free_fields(&m);
    mime_parsed_free(&p);
}

/* ---- the transport without a loop ---- */

static int g_done_calls;

static void count_done(void *arg, const struct error *err,
                       const char *provider_id)
{
    (void)arg;
    (void)err;
    (void)provider_id;
    g_done_calls++;
}

static void test_send_before_start(void **state)
{
    static char tr[] = "email", jid[] = "email.example.org",
                dom[] = "mail.example.org";
    struct transport_host host;
    struct gateway_conf conf;
    struct transport *t;
    struct error err;
    struct msg m = {
        .gw = "email.example.org",
        .from_addr = "alice@mail.example.org",
        .to_addr = "bob@example.com",
        .body = "hi",
    };

    (void)state;
    memset(&host, 0, sizeof(host));
    memset(&conf, 0, sizeof(conf));
    conf.transport = tr;
    conf.kind = TRANSPORT_EMAIL;
    conf.jid = jid;
    conf.mail_domain = dom;
    t = transport_new(transport_lookup("email"), &conf, &host, &err);
    assert_non_null(t);
    assert_int_equal(t->ops->caps & (TCAP_SEND | TCAP_RECEIVE | TCAP_LISTENER),
                     TCAP_SEND | TCAP_RECEIVE | TCAP_LISTENER);
    assert_int_equal(t->ops->start(t, &err), 0); /* no loop: nothing runs */
    error_clear(&err);
    assert_int_equal(t->ops->send(t, &m, count_done, NULL, &err), -1);
    assert_int_equal(err.code, COND_SERVICE_UNAVAILABLE);
    assert_true(err.temporary);
    assert_int_equal(g_done_calls, 0);
    assert_int_equal(t->ops->inflight(t), 0);
    t->ops->stop(t);
    transport_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_uuid_bits),
        cmocka_unit_test(test_uuid_fresh),
        cmocka_unit_test(test_thread_id_ok),
        cmocka_unit_test(test_refs_rfc5322_a2),
        cmocka_unit_test(test_refs_in_reply_to_fallback),
        cmocka_unit_test(test_refs_trim_and_dedupe),
        cmocka_unit_test(test_candidates),
        cmocka_unit_test(test_reply_subject),
        cmocka_unit_test(test_format_size),
        cmocka_unit_test(test_attachment_summary),
        cmocka_unit_test(test_inmsg_fields),
        cmocka_unit_test(test_inmsg_long_text_cut),
        cmocka_unit_test(test_inmsg_from_fixture),
        cmocka_unit_test(test_send_before_start),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
