/* log: JSON lines stay valid JSON whatever the message holds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

static char *read_all(const char *path)
{
    FILE *f = fopen(path, "r");
    char *buf = calloc(1, 65536);
    size_t n;

    assert_non_null(f);
    n = fread(buf, 1, 65535, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static void test_json_lines(void **state)
{
    char path[] = "/tmp/postern-test-log-XXXXXX";
    int fd = mkstemp(path);
    struct error err;
    char *big = malloc(5001);
    (void)state;

    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(log_init(L_INFO, true, path, &err), 0);
    log_info("sms[gw]", "quote \" backslash \\ tab \t ctl \x01 bad \xff end");
    log_info("mod\"x", "line\nbreak");
    memset(big, 'a', 5000);
    big[5000] = '\0';
    log_warn("big", "%s", big);
    log_debug("x", "not logged at info");
    log_close();

    char *text = read_all(path);
    char *save = NULL;
    int lines = 0;
    for (char *l = strtok_r(text, "\n", &save); l;
         l = strtok_r(NULL, "\n", &save), lines++) {
        json_error_t je;
        json_t *o = json_loads(l, 0, &je);
        assert_non_null(o);
        const char *msg = json_string_value(json_object_get(o, "msg"));
        const char *mod = json_string_value(json_object_get(o, "module"));
        assert_non_null(msg);
        assert_non_null(mod);
        if (lines == 0) {
            assert_string_equal(mod, "sms[gw]");
            assert_string_equal(msg, "quote \" backslash \\ tab \t ctl \x01 "
                                     "bad \xef\xbf\xbd end");
            assert_string_equal(json_string_value(json_object_get(o, "level")),
                                "info");
        } else if (lines == 1) {
            assert_string_equal(mod, "mod\"x");
            assert_string_equal(msg, "line break");
        } else {
            /* vsnprintf keeps 2,047 bytes of a message; the line is whole */
            assert_int_equal(strlen(msg), 2047);
        }
        json_decref(o);
    }
    assert_int_equal(lines, 3);
    free(text);
    free(big);
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_lines),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
