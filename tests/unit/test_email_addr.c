/*
 * Unit tests for the email transport's address rules, through the
 * transport ops: XEP-0106 contact nodes (vectors from XEP-0106 itself and
 * Prosody's rules, protocol-facts 6.1), human-typed addresses, and which
 * addresses a user may claim (only in mail_domain).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "transport.h"
#include "util.h"

static char s_transport[] = "email";
static char s_jid[] = "email.example.org";
static char s_domain[] = "mail.example.org";

struct fx {
    struct transport_host host;
    struct gateway_conf conf;
    struct transport *t;
};

static int fx_setup(void **state)
{
    struct fx *f = xcalloc(1, sizeof(*f));
    struct error err;

    f->conf.transport = s_transport;
    f->conf.kind = TRANSPORT_EMAIL;
    f->conf.jid = s_jid;
    f->conf.mail_domain = s_domain;
    f->t = transport_new(transport_lookup("email"), &f->conf, &f->host, &err);
    assert_non_null(f->t);
    assert_int_equal(f->t->ops->start(f->t, &err), 0);
    *state = f;
    return 0;
}

static int fx_teardown(void **state)
{
    struct fx *f = *state;

    transport_free(f->t);
    free(f);
    return 0;
}

static void test_ops_identity(void **state)
{
    struct fx *f = *state;
    const struct transport_ops *o = f->t->ops;

    assert_int_equal(o->abi, TRANSPORT_ABI);
    assert_string_equal(o->identity_type, "smtp");
    assert_string_equal(o->contact_type, "pc");
    assert_string_equal(o->reg_field, "email");
    assert_string_equal(f->t->module, "email[email.example.org]");
    assert_true(o->reg_label && *o->reg_label);
    assert_true(o->instructions && *o->instructions);
    assert_true(o->gateway_desc && *o->gateway_desc);
    assert_true(o->gateway_prompt && *o->gateway_prompt);
}

static void test_bad_mail_domain_refused(void **state)
{
    struct fx *f = *state;
    static char empty[] = "", bad[] = "not a domain";
    struct gateway_conf c = f->conf;
    struct error err;

    c.mail_domain = empty;
    assert_null(transport_new(transport_lookup("email"), &c, &f->host, &err));
    assert_non_null(strstr(err.msg, "mail_domain"));
    c.mail_domain = bad;
    assert_null(transport_new(transport_lookup("email"), &c, &f->host, &err));
    c.mail_domain = NULL;
    assert_null(transport_new(transport_lookup("email"), &c, &f->host, &err));
}

/* address -> node -> address, both ways exact */
static void check_round_trip(const struct transport *t, const char *addr,
                             const char *node)
{
    char out[512];
    struct error err;

    assert_int_equal(t->ops->addr_to_node(t, addr, out, sizeof(out)), 0);
    assert_string_equal(out, node);
    error_clear(&err);
    assert_int_equal(t->ops->addr_parse(t, node, out, sizeof(out), &err), 0);
    assert_string_equal(out, addr);
}

static void test_escape_vectors(void **state)
{
    struct fx *f = *state;

    /* XEP-0106 section 5.2 and its mail gateway example */
    check_round_trip(f->t, "treville@musketeers.lit",
                     "treville\\40musketeers.lit");
    check_round_trip(f->t, "d'artagnan@musketeers.lit",
                     "d\\27artagnan\\40musketeers.lit");
    check_round_trip(
        f->t, "here's_a_wild_&_/cr%zy/_address@example.com",
        "here\\27s_a_wild_\\26_\\2fcr%zy\\2f_address\\40example.com");
    check_round_trip(f->t, "bob@example.com", "bob\\40example.com");
    check_round_trip(f->t, "first.last+tag@sub.example.co.uk",
                     "first.last+tag\\40sub.example.co.uk");
}

static void test_addr_to_node_too_small(void **state)
{
    struct fx *f = *state;
    char out[8];

    assert_int_equal(
        f->t->ops->addr_to_node(f->t, "bob@example.com", out, sizeof(out)), -1);
}

static void test_addr_parse_normalises_domain(void **state)
{
    struct fx *f = *state;
    char out[512];
    struct error err;

    assert_int_equal(f->t->ops->addr_parse(f->t, "Bob\\40Example.COM", out,
                                           sizeof(out), &err),
                     0);
    /* the local part is case-sensitive (RFC 5321), the domain is not */
    assert_string_equal(out, "Bob@example.com");
}

static void test_addr_parse_malformed(void **state)
{
    struct fx *f = *state;
    static const char *const bad[] = {
        "bob",                         /* no domain */
        "bob\\40",                     /* empty domain */
        "\\40example.com",             /* empty local part */
        "a\\40b\\40example.com",       /* two @ */
        "bob\\40localhost",            /* no dot in the domain */
        "bob\\20smith\\40example.com", /* space in the local part */
        "bob\\40exa_mple.com",         /* bad domain character */
        "bob\\3cx\\3e\\40example.com", /* <> in the local part */
        "",
    };
    char out[512];
    struct error err;

    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        error_clear(&err);
        assert_int_equal(
            f->t->ops->addr_parse(f->t, bad[i], out, sizeof(out), &err), -1);
        assert_int_equal(err.code, COND_JID_MALFORMED);
        assert_false(err.temporary);
        assert_true(strlen(err.msg) > 0);
    }
}

static void test_addr_from_human(void **state)
{
    struct fx *f = *state;
    char out[512];
    struct error err;

    assert_int_equal(f->t->ops->addr_from_human(f->t, "Bob@Example.com", out,
                                                sizeof(out), &err),
                     0);
    assert_string_equal(out, "Bob@example.com");
    assert_int_equal(f->t->ops->addr_from_human(f->t,
                                                " <mailto:bob@EXAMPLE.com> ",
                                                out, sizeof(out), &err),
                     0);
    assert_string_equal(out, "bob@example.com");

    error_clear(&err);
    assert_int_equal(f->t->ops->addr_from_human(f->t, "bob at example", out,
                                                sizeof(out), &err),
                     -1);
    assert_int_equal(err.code, COND_NOT_ACCEPTABLE);
    assert_non_null(strstr(err.msg, "not an email address"));
}

static void test_claim_domain_rules(void **state)
{
    struct fx *f = *state;
    char out[512];
    struct error err;
    static const char *const refused[] = {
        "alice@example.org",
        "alice@sub.mail.example.org",
        "alice@mail.example.org.evil.com",
        "alice@xmail.example.org",
    };

    assert_int_equal(f->t->ops->claim(f->t, "alice@mail.example.org", out,
                                      sizeof(out), &err),
                     0);
    assert_string_equal(out, "alice@mail.example.org");
    /* the domain compares case-insensitively; the claimed address is
     * stored lower-case so RCPT lookups find it whatever the case */
    assert_int_equal(f->t->ops->claim(f->t, " Alice@MAIL.Example.ORG ", out,
                                      sizeof(out), &err),
                     0);
    assert_string_equal(out, "alice@mail.example.org");

    for (size_t i = 0; i < ARRAY_SIZE(refused); i++) {
        error_clear(&err);
        assert_int_equal(
            f->t->ops->claim(f->t, refused[i], out, sizeof(out), &err), -1);
        assert_int_equal(err.code, COND_NOT_ACCEPTABLE);
        assert_non_null(strstr(err.msg, "@mail.example.org"));
    }

    error_clear(&err);
    assert_int_equal(f->t->ops->claim(f->t, "alice", out, sizeof(out), &err),
                     -1);
    assert_int_equal(err.code, COND_NOT_ACCEPTABLE);
    assert_non_null(strstr(err.msg, "not an email address"));
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, fx_setup, fx_teardown)
    const struct CMUnitTest tests[] = {
        T(test_ops_identity),
        T(test_bad_mail_domain_refused),
        T(test_escape_vectors),
        T(test_addr_to_node_too_small),
        T(test_addr_parse_normalises_domain),
        T(test_addr_parse_malformed),
        T(test_addr_from_human),
        T(test_claim_domain_rules),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
