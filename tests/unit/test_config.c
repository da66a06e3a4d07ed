/*
 * Unit tests of config.c: the shipped example loads, defaults apply, every
 * class of error yields exactly the "FILE:LINE: KEY: why" line expected,
 * *_file secrets are read (and never shown), and SIGHUP reload copies
 * only what is safe. Fixtures are written to a fresh temporary directory
 * by each test, so their line numbers are visible next to the assertions.
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
#include "log.h"

struct fx {
    char dir[64];
    char path[128];
    char *errs;
    struct config *cfg;
};

static int setup(void **state)
{
    struct fx *f = xcalloc(1, sizeof(*f));

    snprintf(f->dir, sizeof(f->dir), "/tmp/postern-test-config-XXXXXX");
    if (!mkdtemp(f->dir)) {
        free(f);
        return -1;
    }
    snprintf(f->path, sizeof(f->path), "%s/postern.conf", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    char cmd[128];

    config_free(f->cfg);
    free(f->errs);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    if (system(cmd) != 0)
        return -1;
    free(f);
    return 0;
}

static void write_file(const char *path, const char *text)
{
    FILE *fp = fopen(path, "w");

    assert_non_null(fp);
    assert_int_equal(fputs(text, fp) >= 0, 1);
    assert_int_equal(fclose(fp), 0);
}

static void write_in(struct fx *f, const char *name, const char *text)
{
    char p[256];

    snprintf(p, sizeof(p), "%s/%s", f->dir, name);
    write_file(p, text);
}

/* Writes text as the config file and loads it; returns config_load(). */
static int load(struct fx *f, const char *text)
{
    struct strbuf b;
    int rc;

    config_free(f->cfg);
    f->cfg = NULL;
    free(f->errs);
    write_file(f->path, text);
    sb_init(&b);
    rc = config_load(f->path, &f->cfg, &b);
    f->errs = sb_steal(&b);
    if (rc == 0) {
        assert_non_null(f->cfg);
        assert_true(f->errs == NULL || *f->errs == '\0');
    } else {
        assert_int_equal(rc, -1);
        assert_null(f->cfg);
    }
    return rc;
}

static int n_lines(const char *s)
{
    int n = 0;

    for (; s && *s; s++)
        n += *s == '\n';
    return n;
}

/* Asserts that the error output holds exactly "PATH:LINE: KEY: why". */
static void expect_line(const struct fx *f, int line, const char *rest)
{
    char want[512];
    const char *p = f->errs ? f->errs : "";
    size_t n;

    snprintf(want, sizeof(want), "%s:%d: %s\n", f->path, line, rest);
    n = strlen(want);
    for (;;) {
        if (strncmp(p, want, n) == 0)
            return;
        p = strchr(p, '\n');
        if (!p || !*++p)
            break;
    }
    fail_msg("missing error line:\n  %s--- got:\n%s", want,
             f->errs ? f->errs : "(nothing)");
}

/* One valid SMS gateway, to prepend to configs that test other parts. */
#define SMS_GW                                                                 \
    "  { transport = \"sms\"; jid = \"sms.example.org\"; secret = \"s\";\n"    \
    "    allowed_domains = [ \"example.org\" ];\n"                             \
    "    numbers = [ \"+15550001111\" ];\n"                                    \
    "    provider = { name = \"sandbox\"; }; }"

/* ---- the shipped example -------------------------------------------- */

static void test_example_loads(void **state)
{
    struct fx *f = *state;
    const char *data = getenv("POSTERN_TEST_DATA");
    char *path;
    struct strbuf b;
    struct config *c = NULL;

    if (data && *data) {
        path = xasprintf("%s/../../conf/postern.conf.example", data);
    } else {
        /* __FILE__ is <repo>/tests/unit/test_config.c under cmake. */
        const char *slash = strstr(__FILE__, "tests/unit/");
        assert_non_null(slash);
        path = xasprintf("%.*sconf/postern.conf.example",
                         (int)(slash - __FILE__), __FILE__);
    }
    sb_init(&b);
    int rc = config_load(path, &c, &b);
    if (rc != 0)
        fail_msg("%s does not load:\n%s", path, b.s ? b.s : "");
    sb_free(&b);
    free(path);
    f->cfg = c;

    assert_int_equal(c->n_gateways, 2);
    assert_int_equal(c->log.level, L_INFO);
    assert_false(c->log.json);
    assert_string_equal(c->redis.url, "redis://127.0.0.1:6379/0");
    assert_int_equal(c->xmpp.port, 5347);

    const struct gateway_conf *sms = &c->gateways[0];
    assert_int_equal(sms->kind, TRANSPORT_SMS);
    assert_string_equal(sms->jid, "sms.example.org");
    assert_string_equal(sms->provider.name, "sandbox");
    assert_int_equal(sms->numbers.n, 2);
    assert_true(strlist_contains(&sms->numbers, "+15550002222"));
    assert_int_equal(sms->limits.per_user_per_minute, 30);
    assert_int_equal(sms->limits.allowed_countries.n, 0);

    const struct gateway_conf *em = &c->gateways[1];
    assert_int_equal(em->kind, TRANSPORT_EMAIL);
    assert_string_equal(em->jid, "email.example.org");
    assert_string_equal(em->mail_domain, "mail.example.org");
    assert_string_equal(em->smtp.starttls, "required");
    assert_string_equal(em->lmtp.listen, "127.0.0.1:2424");
    assert_int_equal(em->lmtp.max_message_size, 10 * 1024 * 1024);
    assert_true(em->line > sms->line);
}

/* ---- defaults and normalisation ------------------------------------- */

static void test_defaults(void **state)
{
    struct fx *f = *state;

    assert_int_equal(load(f, "gateways = (\n" SMS_GW ",\n"
                             "  { transport = \"email\";\n"
                             "    jid = \"email.example.org\";\n"
                             "    secret = \"s\";\n"
                             "    allowed_domains = [ \"example.org\" ];\n"
                             "    mail_domain = \"mail.example.org\"; }\n"
                             ");\n"),
                     0);
    struct config *c = f->cfg;
    assert_string_equal(c->path, f->path);
    assert_int_equal(c->log.level, L_INFO);
    assert_false(c->log.json);
    assert_string_equal(c->log.file, "");
    assert_string_equal(c->redis.url, "redis://127.0.0.1:6379/0");
    assert_string_equal(c->redis.prefix, "postern");
    assert_int_equal(c->redis.timeout_ms, 2000);
    assert_string_equal(c->http.listen, "127.0.0.1:8080");
    assert_string_equal(c->http.public_url, "");
    assert_int_equal(c->http.max_body, 65536);
    assert_int_equal(c->http.timeout, 10);
    assert_string_equal(c->xmpp.host, "127.0.0.1");
    assert_int_equal(c->xmpp.port, 5347);
    assert_int_equal(c->queue.max_age, 86400);
    assert_int_equal(c->queue.retry_base_ms, 1000);
    assert_int_equal(c->queue.retry_cap_ms, 300000);

    const struct gateway_conf *s = &c->gateways[0];
    assert_int_equal(s->line, 2);
    assert_string_equal(s->transport, "sms");
    assert_string_equal(s->secret, "s");
    assert_string_equal(s->default_country_code, "1");
    assert_string_equal(s->provider.api_url, "");
    assert_string_equal(s->provider.outbox_file, "");
    assert_true(s->provider.timeout > 14.99 && s->provider.timeout < 15.01);
    assert_int_equal(s->provider.max_connections, 8);
    assert_int_equal(s->limits.per_user_per_minute, 30);
    assert_int_equal(s->limits.per_user_per_day, 500);
    assert_int_equal(s->limits.max_segments, 10);
    assert_int_equal(s->limits.allowed_countries.n, 0);

    const struct gateway_conf *e = &c->gateways[1];
    assert_int_equal(e->line, 6);
    assert_int_equal(e->kind, TRANSPORT_EMAIL);
    assert_string_equal(e->default_subject, "");
    assert_string_equal(e->smtp.host, "127.0.0.1");
    assert_int_equal(e->smtp.port, 587);
    assert_string_equal(e->smtp.starttls, "required");
    assert_string_equal(e->smtp.user, "");
    assert_string_equal(e->smtp.password, "");
    assert_int_equal(e->smtp.timeout, 30);
    assert_int_equal(e->smtp.workers, 2);
    assert_string_equal(e->lmtp.listen, "127.0.0.1:2424");
    assert_int_equal(e->lmtp.max_message_size, 10485760);
}

static void test_values_and_normalisation(void **state)
{
    struct fx *f = *state;

    assert_int_equal(
        load(f, "log = { level = \"DEBUG\"; format = \"json\"; };\n"
                "http = { listen = \"[::1]:8443\";\n"
                "  public_url = \"https://gw.example.org//\"; };\n"
                "queue = { retry_base_ms = 10; retry_cap_ms = 10; };\n"
                "gateways = (\n"
                "  { transport = \"sms\"; jid = \"SMS.Example.ORG\";\n"
                "    secret = \"s\";\n"
                "    allowed_domains = [ \"Example.ORG\", \"b.example\" ];\n"
                "    numbers = ( \"+447700900123\" );\n"
                "    default_country_code = \"+44\";\n"
                "    provider = { name = \"twilio\"; account_sid = \"AC1\";\n"
                "                 auth_token = \"t\"; timeout = 2;\n"
                "                 max_connections = 3; };\n"
                "    limits = { per_user_per_minute = 0;\n"
                "               allowed_countries = [ \"+44\", \"+1\" ]; };\n"
                "  }\n"
                ");\n"),
        0);
    struct config *c = f->cfg;
    assert_int_equal(c->log.level, L_DEBUG);
    assert_true(c->log.json);
    assert_string_equal(c->http.listen, "[::1]:8443");
    assert_string_equal(c->http.public_url, "https://gw.example.org");

    const struct gateway_conf *g = &c->gateways[0];
    assert_string_equal(g->jid, "sms.example.org");
    assert_string_equal(g->allowed_domains.v[0], "example.org");
    assert_true(strlist_contains(&g->allowed_domains, "b.example"));
    assert_true(strlist_contains_ci(&g->allowed_domains, "EXAMPLE.org"));
    assert_false(strlist_contains(&g->allowed_domains, "EXAMPLE.org"));
    assert_false(strlist_contains_ci(&g->allowed_domains, "example.com"));
    assert_string_equal(g->default_country_code, "44");
    /* An integer where a decimal number is expected is fine. */
    assert_true(g->provider.timeout > 1.99 && g->provider.timeout < 2.01);
    assert_int_equal(g->provider.max_connections, 3);
    assert_string_equal(g->provider.api_url, "https://api.twilio.com");
    assert_int_equal(g->limits.per_user_per_minute, 0);
    assert_int_equal(g->limits.allowed_countries.n, 2);
}

/* ---- errors ---------------------------------------------------------- */

static void test_syntax_error(void **state)
{
    struct fx *f = *state;

    assert_int_equal(load(f, "log = { level = \"info\"; };\n"
                             "xmpp = { port = ; };\n"),
                     -1);
    expect_line(f, 2, "syntax error: syntax error");
    assert_int_equal(n_lines(f->errs), 1);
}

static void test_unreadable_file(void **state)
{
    struct fx *f = *state;
    struct strbuf b;
    char *want;

    sb_init(&b);
    snprintf(f->path, sizeof(f->path), "%s/absent.conf", f->dir);
    assert_int_equal(config_load(f->path, &f->cfg, &b), -1);
    assert_null(f->cfg);
    want = xasprintf("%s: cannot read: No such file or directory\n", f->path);
    assert_string_equal(b.s, want);
    free(want);
    sb_free(&b);
}

static void test_unknown_keys(void **state)
{
    struct fx *f = *state;

    assert_int_equal(load(f,
                          "log = { levle = \"info\"; };\n"
                          "colour = 1;\n"
                          "gateways = (\n" SMS_GW ",\n"
                          "  { transport = \"email\"; jid = \"e.example\";\n"
                          "    secret = \"s\"; allowed_domains = [\"a.b\"];\n"
                          "    mail_domain = \"m.example\";\n"
                          "    lmtp = { listen = \"127.0.0.1:25\";\n"
                          "             backlog = 5; }; }\n"
                          ");\n"),
                     -1);
    expect_line(f, 1, "log.levle: unknown key (did you mean \"level\"?)");
    expect_line(f, 2, "colour: unknown key");
    expect_line(f, 12, "gateways.[1].lmtp.backlog: unknown key");
    assert_int_equal(n_lines(f->errs), 3);
}

static void test_wrong_types(void **state)
{
    struct fx *f = *state;

    assert_int_equal(load(f, "xmpp = { port = \"5347\"; };\n"
                             "redis = { timeout_ms = 1.5; };\n"
                             "log = \"debug\";\n"
                             "gateways = (\n"
                             "  { transport = \"sms\"; jid = \"s.example\";\n"
                             "    secret = 42; allowed_domains = \"a.b\";\n"
                             "    numbers = [ 15550001111 ];\n"
                             "    provider = { name = \"sandbox\";\n"
                             "                 timeout = \"15\"; }; }\n"
                             ");\n"),
                     -1);
    expect_line(f, 1, "xmpp.port: expected an integer, got a string");
    expect_line(f, 2,
                "redis.timeout_ms: expected an integer, got a decimal number");
    expect_line(f, 3, "log: expected a group { ... }, got a string");
    expect_line(f, 6, "gateways.[0].secret: expected a string, got an integer");
    expect_line(f, 6,
                "gateways.[0].allowed_domains: expected a list of strings "
                "[ \"...\", ... ], got a string");
    expect_line(f, 7,
                "gateways.[0].numbers.[0]: expected a string, got an integer");
    expect_line(f, 9,
                "gateways.[0].provider.timeout: expected a number, got a "
                "string");
    assert_int_equal(n_lines(f->errs), 7);

    assert_int_equal(load(f, "gateways = { transport = \"sms\"; };\n"), -1);
    expect_line(f, 1,
                "gateways: expected a list ( { ... }, ... ), got a group "
                "{ ... }");
}

static void test_missing_keys(void **state)
{
    struct fx *f = *state;

    assert_int_equal(load(f, "log = { level = \"info\"; };\n"), -1);
    expect_line(f, 1, "gateways: missing (at least one gateway is required)");
    assert_int_equal(n_lines(f->errs), 1);

    assert_int_equal(load(f, "gateways = ( );\n"), -1);
    expect_line(f, 1, "gateways: empty (at least one gateway is required)");

    /* Missing keys are reported at the line of the enclosing group. */
    assert_int_equal(load(f, "gateways = (\n"
                             "  { transport = \"sms\";\n"
                             "    jid = \"sms.example.org\"; },\n"
                             "  {\n"
                             "    transport = \"email\";\n"
                             "    smtp = {\n"
                             "      user = \"bob\"; };\n"
                             "  }\n"
                             ");\n"),
                     -1);
    expect_line(f, 2,
                "gateways.[0].secret: missing (set secret or "
                "secret_file)");
    expect_line(f, 2, "gateways.[0].allowed_domains: missing");
    expect_line(f, 2, "gateways.[0].numbers: missing");
    expect_line(f, 2, "gateways.[0].provider: missing");
    expect_line(f, 4, "gateways.[1].jid: missing");
    expect_line(f, 4,
                "gateways.[1].secret: missing (set secret or "
                "secret_file)");
    expect_line(f, 4, "gateways.[1].allowed_domains: missing");
    expect_line(f, 4, "gateways.[1].mail_domain: missing");
    expect_line(f, 6,
                "gateways.[1].smtp.password: missing (set password or "
                "password_file): smtp.user is set");
    assert_int_equal(n_lines(f->errs), 9);

    assert_int_equal(load(f,
                          "gateways = (\n"
                          "  { transport = \"sms\"; jid = \"s.example\";\n"
                          "    secret = \"s\"; allowed_domains = [\"a.b\"];\n"
                          "    numbers = [ \"+15550001111\" ];\n"
                          "    provider = {\n"
                          "      timeout = 3; }; }\n"
                          ");\n"),
                     -1);
    expect_line(f, 5, "gateways.[0].provider.name: missing");
    assert_int_equal(n_lines(f->errs), 1);
}

static void test_bad_values(void **state)
{
    struct fx *f = *state;

    assert_int_equal(
        load(f,
             "log = { level = \"loud\";\n"
             "        format = \"xml\"; };\n"
             "redis = { url = \"http://127.0.0.1\"; };\n"
             "http = { listen = \"::1:80\"; max_body = 10;\n"
             "         public_url = \"ftp://x\"; };\n"
             "xmpp = { port = 70000; };\n"
             "queue = { retry_base_ms = 5000; retry_cap_ms = 1000; };\n"
             "gateways = (\n"
             "  { transport = \"fax\"; jid = \"a.example\"; secret = \"s\";\n"
             "    allowed_domains = [ \"a.example\" ]; },\n"
             "  { transport = \"sms\"; jid = \"bad jid\"; secret = \"s\";\n"
             "    allowed_domains = [ ];\n"
             "    numbers = [ \"15550001111\", \"+05550001111\",\n"
             "                \"+1234567890123456\", \"+15550003333\",\n"
             "                \"+15550003333\" ];\n"
             "    default_country_code = \"0\";\n"
             "    provider = { name = \"twillio\"; };\n"
             "    limits = { allowed_countries = [ \"44\", \"+1234\" ];\n"
             "               per_user_per_day = -1; }; },\n"
             "  { transport = \"email\"; jid = \"e.example\";\n"
             "    secret = \"s\"; allowed_domains = [ \"a..b\" ];\n"
             "    mail_domain = \"-m.example\";\n"
             "    default_subject = \"Hi\\r\\nBcc: x@y\";\n"
             "    smtp = { starttls = \"maybe\"; port = 0; };\n"
             "    lmtp = { listen = \"127.0.0.1\"; }; }\n"
             ");\n"),
        -1);
    expect_line(f, 1,
                "log.level: \"loud\": must be one of \"error\", "
                "\"warning\", \"notice\", \"info\" or \"debug\"");
    expect_line(f, 2,
                "log.format: \"xml\": must be one of \"text\" or "
                "\"json\"");
    /* The value is not echoed: a Redis URL may hold a password. */
    expect_line(f, 3,
                "redis.url: must be redis://[[user]:password@]host"
                "[:port][/db] or unix:/path[?db=N]");
    expect_line(f, 4,
                "http.listen: \"::1:80\": an IPv6 address needs "
                "brackets: [::1]:port");
    expect_line(f, 4, "http.max_body: 10 is out of range (1024 to 16777216)");
    expect_line(f, 5,
                "http.public_url: \"ftp://x\": must start with "
                "https:// or http://");
    expect_line(f, 6, "xmpp.port: 70000 is out of range (1 to 65535)");
    expect_line(f, 7,
                "queue.retry_cap_ms: retry_cap_ms (1000) is below "
                "retry_base_ms (5000)");
    expect_line(f, 9,
                "gateways.[0].transport: \"fax\": must be one of "
                "\"sms\" or \"email\"");
    expect_line(f, 11,
                "gateways.[1].jid: \"bad jid\": not a valid domain "
                "(letters, digits, hyphens and dots, like "
                "\"sms.example.org\")");
    expect_line(f, 12,
                "gateways.[1].allowed_domains: must list at least one "
                "entry");
    expect_line(f, 13,
                "gateways.[1].numbers.[0]: \"15550001111\": not an "
                "E.164 number (\"+\" then 2 to 15 digits, no leading "
                "0)");
    expect_line(f, 13,
                "gateways.[1].numbers.[1]: \"+05550001111\": not an "
                "E.164 number (\"+\" then 2 to 15 digits, no leading "
                "0)");
    expect_line(f, 14,
                "gateways.[1].numbers.[2]: \"+1234567890123456\": not "
                "an E.164 number (\"+\" then 2 to 15 digits, no "
                "leading 0)");
    expect_line(f, 15,
                "gateways.[1].numbers.[4]: \"+15550003333\" is listed "
                "twice");
    expect_line(f, 16,
                "gateways.[1].default_country_code: \"0\": not a "
                "country calling code (1 to 3 digits, like \"1\" or "
                "\"44\")");
    expect_line(f, 17,
                "gateways.[1].provider.name: \"twillio\": must be one "
                "of \"sandbox\", \"twilio\", \"telnyx\" or \"vonage\"");
    expect_line(f, 18,
                "gateways.[1].limits.allowed_countries.[0]: \"44\": "
                "not a country calling code (like \"+1\" or \"+44\")");
    expect_line(f, 18,
                "gateways.[1].limits.allowed_countries.[1]: \"+1234\": "
                "not a country calling code (like \"+1\" or \"+44\")");
    expect_line(f, 19,
                "gateways.[1].limits.per_user_per_day: -1 is out of "
                "range (0 to 100000000)");
    expect_line(f, 21,
                "gateways.[2].allowed_domains.[0]: \"a..b\": not a "
                "valid domain (letters, digits, hyphens and dots, "
                "like \"sms.example.org\")");
    expect_line(f, 22,
                "gateways.[2].mail_domain: \"-m.example\": not a "
                "valid domain (letters, digits, hyphens and dots, "
                "like \"sms.example.org\")");
    expect_line(f, 23,
                "gateways.[2].default_subject: \"Hi\\x0d\\x0aBcc: "
                "x@y\": contains control characters (CR, LF, ...)");
    expect_line(f, 24,
                "gateways.[2].smtp.starttls: \"maybe\": must be one "
                "of \"required\", \"optional\" or \"off\"");
    expect_line(f, 24,
                "gateways.[2].smtp.port: 0 is out of range (1 to "
                "65535)");
    expect_line(f, 25,
                "gateways.[2].lmtp.listen: \"127.0.0.1\": not "
                "host:port or [v6]:port");
    assert_int_equal(n_lines(f->errs), 26);
}

static void test_transport_scope(void **state)
{
    struct fx *f = *state;

    assert_int_equal(load(f,
                          "gateways = (\n"
                          "  { transport = \"email\"; jid = \"e.example\";\n"
                          "    secret = \"s\"; allowed_domains = [ \"a.b\" ];\n"
                          "    mail_domain = \"m.example\";\n"
                          "    numbers = [ \"+15550001111\" ];\n"
                          "    provider = { name = \"sandbox\"; }; },\n"
                          "  { transport = \"sms\"; jid = \"s.example\";\n"
                          "    secret = \"s\"; allowed_domains = [ \"a.b\" ];\n"
                          "    numbers = [ \"+15550001111\" ];\n"
                          "    provider = { name = \"sandbox\"; };\n"
                          "    mail_domain = \"m.example\";\n"
                          "    smtp = { host = \"h\"; }; }\n"
                          ");\n"),
                     -1);
    expect_line(f, 5, "gateways.[0].numbers: only for sms gateways");
    expect_line(f, 6, "gateways.[0].provider: only for sms gateways");
    expect_line(f, 11, "gateways.[1].mail_domain: only for email gateways");
    expect_line(f, 12, "gateways.[1].smtp: only for email gateways");
    assert_int_equal(n_lines(f->errs), 4);
}

/* A five-line SMS gateway whose provider block holds body (one line). */
static char *sms_gw(const char *jid, const char *body)
{
    return xasprintf("  { transport = \"sms\"; jid = \"%s\"; secret = \"s\";\n"
                     "    allowed_domains = [\"a.b\"];\n"
                     "    numbers = [\"+15550001111\"];\n"
                     "    provider = {\n"
                     "      %s }; }",
                     jid, body);
}

static int load_gws(struct fx *f, const char *head, const char *b0,
                    const char *b1, const char *b2, const char *b3)
{
    const char *bodies[] = {b0, b1, b2, b3};
    const char *jids[] = {"t.example", "x.example", "v.example", "s.example"};
    struct strbuf t;
    int rc;

    sb_init(&t);
    sb_printf(&t, "%sgateways = (\n", head);
    for (size_t i = 0; i < 4 && bodies[i]; i++) {
        char *g = sms_gw(jids[i], bodies[i]);
        sb_printf(&t, "%s%s\n", i ? "," : "", g);
        free(g);
    }
    sb_puts(&t, ");\n");
    rc = load(f, t.s);
    sb_free(&t);
    return rc;
}

static void test_providers(void **state)
{
    struct fx *f = *state;
    const char *http = "http = { public_url = \"https://gw.example\"; };\n";

    /* Gateway i starts on line 3 + 5 i, its provider block on line 6 + 5 i,
     * the keys inside on line 7 + 5 i. */
    assert_int_equal(load_gws(f, http, "name = \"twilio\"; api_key = \"k\";",
                              "name = \"telnyx\"; public_key = \"a\";",
                              "name = \"vonage\"; api_key = \"k\";",
                              "name = \"sandbox\"; api_url = \"https://x\";"),
                     -1);
    expect_line(f, 7,
                "gateways.[0].provider.api_key: not used by provider "
                "\"twilio\"");
    expect_line(f, 6,
                "gateways.[0].provider.account_sid: missing: provider "
                "\"twilio\" needs it");
    expect_line(f, 6,
                "gateways.[0].provider.auth_token: missing (set "
                "auth_token or auth_token_file): provider \"twilio\" "
                "needs it");
    expect_line(f, 12,
                "gateways.[1].provider.public_key: \"a\": not a base64 "
                "ed25519 public key (32 bytes, 44 characters)");
    expect_line(f, 11,
                "gateways.[1].provider.api_key: missing (set api_key "
                "or api_key_file): provider \"telnyx\" needs it");
    expect_line(f, 16,
                "gateways.[2].provider.api_secret: missing (set "
                "api_secret or api_secret_file): provider \"vonage\" "
                "needs it");
    expect_line(f, 16,
                "gateways.[2].provider.signature_secret: missing (set "
                "signature_secret or signature_secret_file): provider "
                "\"vonage\" needs it");
    expect_line(f, 22,
                "gateways.[3].provider.api_url: not used by provider "
                "\"sandbox\"");
    assert_int_equal(n_lines(f->errs), 8);

    /* Complete provider blocks load, with per-provider default URLs. */
    assert_int_equal(
        load_gws(f, http,
                 "name = \"twilio\"; account_sid = \"AC1\"; "
                 "auth_token = \"t\";",
                 "name = \"telnyx\"; api_key = \"k\"; public_key = "
                 "\"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\";",
                 "name = \"vonage\"; api_key = \"k\"; api_secret = \"s\"; "
                 "signature_secret = \"g\";",
                 NULL),
        0);
    assert_int_equal(f->cfg->n_gateways, 3);
    assert_string_equal(f->cfg->gateways[0].provider.api_url,
                        "https://api.twilio.com");
    assert_string_equal(f->cfg->gateways[1].provider.api_url,
                        "https://api.telnyx.com");
    assert_string_equal(f->cfg->gateways[2].provider.api_url,
                        "https://rest.nexmo.com");
    assert_string_equal(f->cfg->gateways[2].provider.signature_secret, "g");

    /* Real providers send webhooks: they need public_url and a listener. */
    assert_int_equal(load_gws(f,
                              "http = {\n"
                              "  listen = \"\"; };\n",
                              "name = \"twilio\"; account_sid = \"AC1\"; "
                              "auth_token = \"t\";",
                              NULL, NULL, NULL),
                     -1);
    expect_line(f, 2,
                "http.listen: must not be empty: provider \"twilio\" of "
                "gateways.[0] sends webhooks");
    expect_line(f, 1,
                "http.public_url: missing: provider \"twilio\" of "
                "gateways.[0] sends webhooks there");
    assert_int_equal(n_lines(f->errs), 2);

    /* --check accepts only what the listeners can bind without DNS */
    assert_int_equal(load_gws(f,
                              "http = {\n"
                              "  listen = \"gw.example.org:8080\"; };\n",
                              "name = \"sandbox\";", NULL, NULL, NULL),
                     -1);
    expect_line(f, 2,
                "http.listen: \"gw.example.org:8080\": not host:port or "
                "[v6]:port with a numeric host (an IPv4 or IPv6 address, "
                "localhost or *): a name would need a DNS lookup");
    assert_int_equal(n_lines(f->errs), 1);
}

static void test_duplicate_jids(void **state)
{
    struct fx *f = *state;

    assert_int_equal(load(f, "gateways = (\n" SMS_GW ",\n"
                             "  { transport = \"email\";\n"
                             "    jid = \"SMS.example.org\"; secret = \"s\";\n"
                             "    allowed_domains = [ \"a.b\" ];\n"
                             "    mail_domain = \"m.example\";\n"
                             "    lmtp = { listen = \"127.0.0.1:8080\"; }; }\n"
                             ");\n"),
                     -1);
    expect_line(f, 7,
                "gateways.[1].jid: \"sms.example.org\" is already used "
                "by gateways.[0]");
    expect_line(f, 10,
                "gateways.[1].lmtp.listen: \"127.0.0.1:8080\" is also "
                "http.listen");
    assert_int_equal(n_lines(f->errs), 2);
}

/* ---- *_file secrets --------------------------------------------------- */

static void test_secret_files(void **state)
{
    struct fx *f = *state;

    write_in(f, "xmpp.secret", "component-secret\n");
    write_in(f, "token", "tw-token\r\n");
    char *abs = xasprintf("%s/token", f->dir);
    char *text = xasprintf(
        "http = { public_url = \"https://gw.example\"; };\n"
        "gateways = (\n"
        "  { transport = \"sms\"; jid = \"t.example\";\n"
        "    secret_file = \"xmpp.secret\";\n" /* relative to the file */
        "    allowed_domains = [\"a.b\"]; numbers = [\"+15550001111\"];\n"
        "    provider = { name = \"twilio\"; account_sid = \"AC1\";\n"
        "                 auth_token_file = \"%s\"; }; }\n"
        ");\n",
        abs);
    assert_int_equal(load(f, text), 0);
    assert_string_equal(f->cfg->gateways[0].secret, "component-secret");
    assert_string_equal(f->cfg->gateways[0].provider.auth_token, "tw-token");
    free(text);
    free(abs);

    write_in(f, "empty", "\n");
    write_in(f, "two-lines", "TOPSECRET-1\nTOPSECRET-2\n");
    assert_int_equal(load(f, "gateways = (\n"
                             "  { transport = \"email\"; jid = \"e.example\";\n"
                             "    secret_file = \"absent\";\n"
                             "    allowed_domains = [\"a.b\"];\n"
                             "    mail_domain = \"m.example\";\n"
                             "    smtp = { user = \"u\";\n"
                             "             password_file = \"empty\"; }; },\n"
                             "  { transport = \"email\"; jid = \"f.example\";\n"
                             "    secret_file = \"two-lines\";\n"
                             "    secret = \"TOPSECRET-3\";\n"
                             "    allowed_domains = [\"a.b\"];\n"
                             "    mail_domain = \"m.example\";\n"
                             "    smtp = { password = \"TOPSECRET-4\"; };\n"
                             "    lmtp = { listen = \"127.0.0.1:2525\"; }; },\n"
                             "  { transport = \"email\"; jid = \"g.example\";\n"
                             "    secret_file = \"two-lines\";\n"
                             "    allowed_domains = [\"a.b\"];\n"
                             "    mail_domain = \"m.example\";\n"
                             "    lmtp = { listen = \"127.0.0.1:2526\"; }; }\n"
                             ");\n"),
                     -1);
    expect_line(f, 3,
                "gateways.[0].secret_file: cannot read \"absent\": No "
                "such file or directory");
    expect_line(f, 7, "gateways.[0].smtp.password_file: \"empty\" is empty");
    expect_line(f, 9,
                "gateways.[1].secret_file: set either secret or "
                "secret_file, not both");
    expect_line(f, 13,
                "gateways.[1].smtp.password: set but smtp.user is "
                "empty");
    expect_line(f, 16,
                "gateways.[2].secret_file: \"two-lines\" must hold "
                "the secret on one line");
    assert_int_equal(n_lines(f->errs), 5);
    /* Secrets never appear in a message. */
    assert_null(strstr(f->errs, "TOPSECRET"));

    /* A secret where a string is expected as a number: not echoed. */
    assert_int_equal(
        load(f, "gateways = (\n"
                "  { transport = \"sms\"; jid = \"s.example\";\n"
                "    secret = \"TOPSECRET-5\"; allowed_domains = [\"a.b\"];\n"
                "    numbers = [\"+15550001111\"];\n"
                "    provider = { name = \"sandbox\";\n"
                "                 auth_token = \"TOPSECRET-6\"; }; }\n"
                ");\n"),
        -1);
    expect_line(f, 6,
                "gateways.[0].provider.auth_token: not used by "
                "provider \"sandbox\"");
    assert_null(strstr(f->errs, "TOPSECRET"));
}

static void test_include(void **state)
{
    struct fx *f = *state;
    char *want;

    /* @include is read relative to the including file's directory, and
     * errors name the included file. */
    write_in(f, "extra.conf", "xmpp = {\n  port = 0; };\n");
    assert_int_equal(load(f, "@include \"extra.conf\"\n"
                             "gateways = (\n" SMS_GW "\n);\n"),
                     -1);
    want = xasprintf("%s/extra.conf:2: xmpp.port: 0 is out of range (1 to "
                     "65535)\n",
                     f->dir);
    assert_string_equal(f->errs, want);
    free(want);

    write_in(f, "extra.conf", "xmpp = {\n  port = ; };\n");
    assert_int_equal(load(f, "@include \"extra.conf\"\n"), -1);
    want = xasprintf("%s/extra.conf:2: syntax error: syntax error\n", f->dir);
    assert_string_equal(f->errs, want);
    free(want);
}

/* ---- reload ------------------------------------------------------------ */

static void test_reload(void **state)
{
    struct fx *f = *state;
    struct config *live;

    assert_int_equal(load(f,
                          "gateways = (\n" SMS_GW ",\n"
                          "  { transport = \"email\";\n"
                          "    jid = \"email.example.org\"; secret = \"s\";\n"
                          "    allowed_domains = [ \"example.org\" ];\n"
                          "    mail_domain = \"mail.example.org\"; }\n"
                          ");\n"),
                     0);
    live = f->cfg;
    f->cfg = NULL;

    assert_int_equal(
        load(f, "log = { level = \"debug\"; };\n"
                "xmpp = { port = 6000; };\n"
                "gateways = (\n"
                "  { transport = \"email\";\n"
                "    jid = \"EMAIL.example.org\"; secret = \"other\";\n"
                "    allowed_domains = [ \"example.com\" ];\n"
                "    mail_domain = \"mail.example.org\"; },\n"
                "  { transport = \"sms\"; jid = \"sms.example.org\";\n"
                "    secret = \"s2\";\n"
                "    allowed_domains = [ \"example.org\", \"example.net\" ];\n"
                "    numbers = [ \"+15550009999\" ];\n"
                "    provider = { name = \"sandbox\"; };\n"
                "    limits = { per_user_per_minute = 5;\n"
                "               per_user_per_day = 50; max_segments = 2;\n"
                "               allowed_countries = [ \"+44\" ]; }; },\n"
                "  { transport = \"sms\"; jid = \"new.example.org\";\n"
                "    secret = \"s\"; allowed_domains = [ \"example.org\" ];\n"
                "    numbers = [ \"+15550001111\" ];\n"
                "    provider = { name = \"sandbox\"; }; }\n"
                ");\n"),
        0);

    assert_int_equal(config_apply_reload(live, f->cfg), 2);
    assert_int_equal(live->log.level, L_DEBUG);
    assert_true(log_enabled(L_DEBUG));

    const struct gateway_conf *s = &live->gateways[0];
    assert_int_equal(s->limits.per_user_per_minute, 5);
    assert_int_equal(s->limits.per_user_per_day, 50);
    assert_int_equal(s->limits.max_segments, 2);
    assert_int_equal(s->limits.allowed_countries.n, 1);
    assert_string_equal(s->limits.allowed_countries.v[0], "+44");
    assert_int_equal(s->allowed_domains.n, 2);
    assert_true(strlist_contains(&s->allowed_domains, "example.net"));
    /* Not safe at run time: left alone. */
    assert_string_equal(s->secret, "s");
    assert_int_equal(s->numbers.n, 1);
    assert_string_equal(s->numbers.v[0], "+15550001111");
    assert_int_equal(live->xmpp.port, 5347);
    assert_int_equal(live->n_gateways, 2);

    const struct gateway_conf *e = &live->gateways[1];
    assert_int_equal(e->allowed_domains.n, 1);
    assert_string_equal(e->allowed_domains.v[0], "example.com");
    assert_string_equal(e->secret, "s");

    /* Nothing matches: nothing changes but the log level. */
    assert_int_equal(load(f, "log = { level = \"warning\"; };\n"
                             "gateways = (\n"
                             "  { transport = \"email\";\n"
                             "    jid = \"sms.example.org\"; secret = \"s\";\n"
                             "    allowed_domains = [ \"example.com\" ];\n"
                             "    mail_domain = \"mail.example.org\"; }\n"
                             ");\n"),
                     0);
    assert_int_equal(config_apply_reload(live, f->cfg), 0);
    assert_int_equal(live->log.level, L_WARNING);
    assert_int_equal(live->gateways[0].allowed_domains.n, 2);
    log_set_level(L_INFO);
    config_free(live);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_example_loads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_values_and_normalisation, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_syntax_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unreadable_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_types, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_transport_scope, setup, teardown),
        cmocka_unit_test_setup_teardown(test_providers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_duplicate_jids, setup, teardown),
        cmocka_unit_test_setup_teardown(test_secret_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_include, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reload, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
