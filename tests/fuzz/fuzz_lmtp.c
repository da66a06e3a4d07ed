/*
 * fuzz_lmtp: the LMTP command parser (lmtp_parse_command) on arbitrary
 * bytes, as one line. Invariants: it always classifies the line; a
 * syntax error is a complete reply with a 5xx code; an accepted MAIL or
 * RCPT path is NUL-terminated inside the buffer and holds no control
 * characters or unquoted spaces; SIZE is -1 or a non-negative number.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "email/lmtp_in.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "fuzz_lmtp: %s:%d: %s\n", __FILE__, __LINE__,      \
                    #cond);                                                    \
            abort();                                                           \
        }                                                                      \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct lmtp_cmd cmd;
    size_t alen;

    lmtp_parse_command((const char *)data, size, &cmd);
    CHECK(cmd.verb >= LMTP_V_UNKNOWN && cmd.verb <= LMTP_V_VRFY);
    alen = strnlen(cmd.addr, sizeof(cmd.addr));
    CHECK(alen < sizeof(cmd.addr));
    if (cmd.error) {
        CHECK(cmd.error[0] == '5' && strlen(cmd.error) > 10);
        CHECK(cmd.error[3] == ' ');
        return 0;
    }
    CHECK(cmd.size >= -1);
    if (cmd.verb == LMTP_V_MAIL || cmd.verb == LMTP_V_RCPT) {
        int quoted = 0;
        CHECK(cmd.verb == LMTP_V_MAIL || alen > 0);
        for (size_t i = 0; i < alen; i++) {
            unsigned char c = (unsigned char)cmd.addr[i];
            CHECK(c >= 0x20 && c != 0x7f);
            if (quoted && c == '\\' && i + 1 < alen) {
                i++; /* quoted-pair: the next byte is literal */
                CHECK((unsigned char)cmd.addr[i] >= 0x20);
                continue;
            }
            if (c == '"')
                quoted = !quoted;
            if (!quoted)
                CHECK(c != ' ');
        }
    }
    return 0;
}
