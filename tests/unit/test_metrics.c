/*
 * metrics.c: the exact Prometheus text (format 0.0.4) for counters,
 * gauges and histograms, label and HELP escaping, cumulative buckets, and
 * the postern metric set's helpers.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "metrics.h"
#include "util.h"

static char *render(void)
{
    struct strbuf b;
    sb_init(&b);
    metrics_render(&b);
    return sb_steal(&b);
}

static int teardown(void **state)
{
    (void)state;
    metrics_free_all();
    return 0;
}

static void counter_with_labels(void **state)
{
    struct metric *m;
    char *t;
    (void)state;

    m = metrics_counter("x_messages_total", "Messages.", "gateway,direction");
    metrics_inc(m, "sms.example.org", "out");
    metrics_inc(m, "sms.example.org", "out");
    metrics_inc(m, "sms.example.org", "in");
    metrics_add(m, 40, "email.example.org", "out");
    metrics_add(m, -5, "sms.example.org", "in"); /* counters never drop */
    t = render();
    assert_string_equal(
        t, "# HELP x_messages_total Messages.\n"
           "# TYPE x_messages_total counter\n"
           "x_messages_total{gateway=\"sms.example.org\",direction=\"out\"} 2\n"
           "x_messages_total{gateway=\"sms.example.org\",direction=\"in\"} 1\n"
           "x_messages_total{gateway=\"email.example.org\",direction=\"out\"}"
           " 40\n");
    free(t);
}

static void gauges_and_registration(void **state)
{
    struct metric *up, *depth, *again;
    char *t;
    (void)state;

    up = metrics_gauge("x_up", "Up?", NULL);
    depth = metrics_gauge("x_depth", "Depth.", "queue");
    again = metrics_gauge("x_depth", "ignored", "queue");
    assert_ptr_equal(depth, again);
    t = render(); /* an unlabelled metric shows its 0 at once */
    assert_string_equal(t, "# HELP x_up Up?\n"
                           "# TYPE x_up gauge\n"
                           "x_up 0\n"
                           "# HELP x_depth Depth.\n"
                           "# TYPE x_depth gauge\n");
    free(t);
    metrics_set(up, 1);
    metrics_set(depth, 7, "out");
    metrics_set(depth, 2.5, "retry");
    metrics_set(depth, 3, "out");
    metrics_set(depth, -1e-3, "in");
    t = render();
    assert_string_equal(t, "# HELP x_up Up?\n"
                           "# TYPE x_up gauge\n"
                           "x_up 1\n"
                           "# HELP x_depth Depth.\n"
                           "# TYPE x_depth gauge\n"
                           "x_depth{queue=\"out\"} 3\n"
                           "x_depth{queue=\"retry\"} 2.5\n"
                           "x_depth{queue=\"in\"} -0.001\n");
    free(t);
    metrics_clear(depth);
    metrics_set(depth, 0.1, "dead");
    t = render();
    assert_non_null(strstr(t, "# TYPE x_depth gauge\n"
                              "x_depth{queue=\"dead\"} 0.1\n"));
    assert_null(strstr(t, "queue=\"out\""));
    free(t);
}

static void escaping(void **state)
{
    struct metric *m;
    char *t;
    (void)state;

    m = metrics_counter("x_esc_total", "Back\\slash and\nnewline \"kept\".",
                        "v");
    metrics_inc(m, "a\\b\"c\nd");
    t = render();
    assert_string_equal(t, "# HELP x_esc_total Back\\\\slash and\\nnewline "
                           "\"kept\".\n"
                           "# TYPE x_esc_total counter\n"
                           "x_esc_total{v=\"a\\\\b\\\"c\\nd\"} 1\n");
    free(t);
}

static void histogram_buckets(void **state)
{
    static const double bounds[] = {0.125, 1};
    struct metric *h;
    char *t;
    (void)state;

    h = metrics_histogram("x_latency_seconds", "Latency.", "gateway", bounds,
                          ARRAY_SIZE(bounds));
    metrics_observe(h, 0.0625, "g");
    metrics_observe(h, 0.125, "g"); /* le is inclusive */
    metrics_observe(h, 0.5, "g");
    metrics_observe(h, 4, "g");
    metrics_observe(h, 2, "other");
    t = render();
    assert_string_equal(t,
                        "# HELP x_latency_seconds Latency.\n"
                        "# TYPE x_latency_seconds histogram\n"
                        "x_latency_seconds_bucket{gateway=\"g\",le=\"0.125\"}"
                        " 2\n"
                        "x_latency_seconds_bucket{gateway=\"g\",le=\"1\"} 3\n"
                        "x_latency_seconds_bucket{gateway=\"g\",le=\"+Inf\"}"
                        " 4\n"
                        "x_latency_seconds_sum{gateway=\"g\"} 4.6875\n"
                        "x_latency_seconds_count{gateway=\"g\"} 4\n"
                        "x_latency_seconds_bucket{gateway=\"other\","
                        "le=\"0.125\"} 0\n"
                        "x_latency_seconds_bucket{gateway=\"other\","
                        "le=\"1\"} 0\n"
                        "x_latency_seconds_bucket{gateway=\"other\","
                        "le=\"+Inf\"} 1\n"
                        "x_latency_seconds_sum{gateway=\"other\"} 2\n"
                        "x_latency_seconds_count{gateway=\"other\"} 1\n");
    free(t);
}

static void histogram_unlabelled(void **state)
{
    static const double bounds[] = {1};
    struct metric *h;
    char *t;
    (void)state;

    h = metrics_histogram("x_h", "H.", "", bounds, 1);
    metrics_observe(h, 0.1);
    metrics_observe(h, 0.2);
    t = render();
    assert_string_equal(t,
                        "# HELP x_h H.\n"
                        "# TYPE x_h histogram\n"
                        "x_h_bucket{le=\"1\"} 2\n"
                        "x_h_bucket{le=\"+Inf\"} 2\n"
                        "x_h_sum 0.30000000000000004\n" /* exact, not rounded */
                        "x_h_count 2\n");
    free(t);
}

static void postern_set(void **state)
{
    char *t;
    (void)state;

    metrics_gateway_up("sms.example.org", true);
    metrics_redis_up(false);
    metrics_message("sms.example.org", "out");
    metrics_message("sms.example.org", "out");
    metrics_message("sms.example.org", "in");
    metrics_provider_error("sms.example.org", "timeout");
    metrics_retry("sms.example.org");
    metrics_dead_letter("sms.example.org");
    metrics_latency("sms.example.org", 0.003);
    metrics_latency("sms.example.org", 20);
    metrics_queue_depth("sms.example.org", "retry", 4);
    t = render();
    assert_non_null(strstr(t,
                           "# TYPE postern_messages_total counter\n"
                           "postern_messages_total{gateway=\"sms.example.org\","
                           "direction=\"in\"} 1\n"
                           "postern_messages_total{gateway=\"sms.example.org\","
                           "direction=\"out\"} 2\n"));
    assert_non_null(strstr(t, "postern_provider_errors_total{gateway=\"sms."
                              "example.org\",class=\"temporary\"} 0\n"));
    assert_non_null(strstr(t, "postern_provider_errors_total{gateway=\"sms."
                              "example.org\",class=\"timeout\"} 1\n"));
    assert_non_null(strstr(t, "postern_provider_errors_total{gateway=\"sms."
                              "example.org\",class=\"auth\"} 0\n"));
    assert_non_null(
        strstr(t, "postern_retries_total{gateway=\"sms.example.org\"} 1\n"));
    assert_non_null(strstr(
        t, "postern_dead_letters_total{gateway=\"sms.example.org\"} 1\n"));
    /* default buckets 0.001 .. 10 */
    assert_non_null(strstr(t,
                           "postern_send_latency_seconds_bucket{gateway=\"sms."
                           "example.org\",le=\"0.001\"} 0\n"
                           "postern_send_latency_seconds_bucket{gateway=\"sms."
                           "example.org\",le=\"0.0025\"} 0\n"
                           "postern_send_latency_seconds_bucket{gateway=\"sms."
                           "example.org\",le=\"0.005\"} 1\n"));
    assert_non_null(strstr(t,
                           "postern_send_latency_seconds_bucket{gateway=\"sms."
                           "example.org\",le=\"10\"} 1\n"
                           "postern_send_latency_seconds_bucket{gateway=\"sms."
                           "example.org\",le=\"+Inf\"} 2\n"
                           "postern_send_latency_seconds_sum{gateway=\"sms."
                           "example.org\"} 20.003\n"
                           "postern_send_latency_seconds_count{gateway=\"sms."
                           "example.org\"} 2\n"));
    assert_non_null(strstr(t, "# TYPE postern_queue_depth gauge\n"
                              "postern_queue_depth{gateway=\"sms.example."
                              "org\",queue=\"retry\"} 4\n"));
    assert_non_null(strstr(t, "# TYPE postern_redis_up gauge\n"
                              "postern_redis_up 0\n"));
    assert_non_null(strstr(t, "# TYPE postern_gateway_up gauge\n"
                              "postern_gateway_up{gateway=\"sms.example."
                              "org\"} 1\n"));
    free(t);

    /* the zero series exist before any event */
    metrics_free_all();
    metrics_gateway_up("email.example.org", false);
    t = render();
    assert_non_null(strstr(t, "postern_messages_total{gateway=\"email."
                              "example.org\",direction=\"out\"} 0\n"));
    assert_non_null(strstr(t, "postern_send_latency_seconds_count{gateway="
                              "\"email.example.org\"} 0\n"));
    assert_non_null(
        strstr(t, "postern_gateway_up{gateway=\"email.example.org\"} 0\n"));
    free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(counter_with_labels, teardown),
        cmocka_unit_test_teardown(gauges_and_registration, teardown),
        cmocka_unit_test_teardown(escaping, teardown),
        cmocka_unit_test_teardown(histogram_buckets, teardown),
        cmocka_unit_test_teardown(histogram_unlabelled, teardown),
        cmocka_unit_test_teardown(postern_set, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
