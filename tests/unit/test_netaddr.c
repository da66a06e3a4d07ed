/* netaddr: the listen-address forms the configuration allows. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "netaddr.h"

static void check_v4(const char *listen, const char *ip, int port)
{
    struct sockaddr_storage ss;
    socklen_t len = 0;
    char buf[INET_ADDRSTRLEN];

    assert_int_equal(netaddr_parse_listen(listen, &ss, &len), 0);
    const struct sockaddr_in *s4 = (const struct sockaddr_in *)&ss;
    assert_int_equal(s4->sin_family, AF_INET);
    assert_int_equal(len, sizeof(*s4));
    assert_int_equal(ntohs(s4->sin_port), port);
    inet_ntop(AF_INET, &s4->sin_addr, buf, sizeof(buf));
    assert_string_equal(buf, ip);
}

static void test_good(void **state)
{
    struct sockaddr_storage ss;
    socklen_t len = 0;
    char buf[INET6_ADDRSTRLEN];
    (void)state;

    check_v4("127.0.0.1:8080", "127.0.0.1", 8080);
    check_v4("localhost:2424", "127.0.0.1", 2424);
    check_v4("*:25", "0.0.0.0", 25);
    check_v4(":0", "0.0.0.0", 0);
    check_v4("10.1.2.3:65535", "10.1.2.3", 65535);

    assert_int_equal(netaddr_parse_listen("[::1]:8443", &ss, &len), 0);
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&ss;
    assert_int_equal(s6->sin6_family, AF_INET6);
    assert_int_equal(ntohs(s6->sin6_port), 8443);
    inet_ntop(AF_INET6, &s6->sin6_addr, buf, sizeof(buf));
    assert_string_equal(buf, "::1");
}

static void test_bad(void **state)
{
    static const char *const bad[] = {
        "127.0.0.1",       "127.0.0.1:",
        "127.0.0.1:65536", "127.0.0.1:-1",
        "127.0.0.1:+80",   "127.0.0.1:80x",
        "example.org:80",  "::1:80",
        "[::1]8080",       "[]:80",
        "[::1:80",         "300.1.1.1:80",
        "[example]:80",    "",
    };
    struct sockaddr_storage ss;
    socklen_t len;
    (void)state;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(netaddr_parse_listen(bad[i], &ss, &len), -1);
    assert_int_equal(netaddr_parse_listen(NULL, &ss, &len), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good),
        cmocka_unit_test(test_bad),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
