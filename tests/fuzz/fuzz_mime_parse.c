/*
 * fuzz_mime_parse: mime_parse on arbitrary bytes, with the invariants the
 * email transport relies on: on success every string is valid UTF-8 with
 * no control characters (text may hold tab and newline), ids carry no <>
 * or spaces, attachments have a name and a type; and whatever the parser
 * returns can be fed back to mime_compose as subject and display name
 * without adding a header line.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>

#include "email/mime.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "fuzz_mime_parse: %s:%d: %s\n", __FILE__,          \
                    __LINE__, #cond);                                          \
            abort();                                                           \
        }                                                                      \
    } while (0)

static void check_text(const char *s, bool multi_line)
{
    if (!s)
        return;
    CHECK(g_utf8_validate(s, -1, NULL));
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '\n' || *p == '\t') {
            CHECK(multi_line);
            continue;
        }
        CHECK(*p >= 0x20 && *p != 0x7f);
        /* C1 controls are U+0080-U+009F: C2 80 .. C2 9F */
        if (*p == 0xc2)
            CHECK(p[1] < 0x80 || p[1] > 0x9f);
    }
}

static void check_id(const char *s)
{
    if (!s)
        return;
    CHECK(*s);
    for (const char *p = s; *p; p++)
        CHECK(*p > 0x20 && *p < 0x7f && *p != '<' && *p != '>');
}

/* Header lines of a composed message, each a known name or a fold. */
static void check_composed(const char *msg)
{
    static const char *const names[] = {
        "Date:",         "From:",
        "To:",           "Subject:",
        "Message-ID:",   "MIME-Version:",
        "Content-Type:", "Content-Transfer-Encoding:",
    };
    const char *p = msg;

    while (*p && !(p[0] == '\r' && p[1] == '\n')) {
        const char *eol = strstr(p, "\r\n");
        bool ok = *p == ' ' || *p == '\t';
        CHECK(eol);
        for (size_t i = 0; !ok && i < sizeof(names) / sizeof(names[0]); i++)
            ok = strncmp(p, names[i], strlen(names[i])) == 0;
        CHECK(ok);
        p = eol + 2;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct mail_parsed m;
    struct error err;

    if (mime_parse((const char *)data, size, &m, &err) != 0) {
        CHECK(m.text == NULL && m.subject == NULL);
        mime_parsed_free(&m);
        return 0;
    }
    CHECK(m.text);
    check_text(m.text, true);
    check_text(m.subject, false);
    check_text(m.from_name, false);
    check_text(m.from_addr, false);
    check_id(m.message_id);
    check_id(m.in_reply_to);
    CHECK(m.n_references <= MIME_MAX_REFERENCES);
    for (size_t i = 0; i < m.n_references; i++)
        check_id(m.references[i]);
    for (size_t i = 0; i < m.n_attachments; i++) {
        CHECK(m.attachments[i].name && *m.attachments[i].name);
        CHECK(m.attachments[i].type);
        check_text(m.attachments[i].name, false);
    }

    {
        struct mail_compose c = {
            .from = "a@example.org",
            .from_name = m.from_name,
            .to = m.from_addr ? m.from_addr : "b@example.org",
            .subject = m.subject,
            .body = m.text,
            .msgid_domain = "example.org",
        };
        size_t len;
        char *id = NULL;
        char *msg = mime_compose(&c, &len, &id, &err);
        CHECK(msg);
        CHECK(strlen(msg) == len);
        check_composed(msg);
        free(msg);
        free(id);
    }
    mime_parsed_free(&m);
    return 0;
}
