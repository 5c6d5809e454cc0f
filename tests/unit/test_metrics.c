/*
 * metrics.c renders valid Prometheus text and a health summary, and
 * monitor.c serves them over HTTP: checked with a plain socket client.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "metrics.h"
#include "monitor.h"
#include "spawn.h"
#include "status.h"

static char buf[METRICS_TEXT_MAX];

/* Every line is a comment or "name{labels} value" with a number. */
static void assert_exposition_format(const char *text)
{
    const char *line = text;

    while (*line) {
        const char *end = strchr(line, '\n');
        char copy[512];
        size_t n;
        char *space;
        double v;
        char *rest;

        assert_non_null(end);       /* ends with a newline */
        n = (size_t)(end - line);
        assert_true(n < sizeof(copy));
        memcpy(copy, line, n);
        copy[n] = '\0';
        if (copy[0] != '#') {
            assert_true(strncmp(copy, "parley_", 7) == 0);
            space = strrchr(copy, ' ');
            assert_non_null(space);
            v = strtod(space + 1, &rest);
            assert_true(*rest == '\0');
            assert_true(v >= 0);
        }
        line = end + 1;
    }
}

static void render_counts_and_format(void **state)
{
    (void)state;
    metrics_reset();
    metrics_message_received("irc");
    metrics_message_received("irc");
    metrics_message_received("matrix");
    metrics_message_answered("irc");
    metrics_message_received("carrier-pigeon");
    metrics_command("reset");
    metrics_command("nonsense");
    metrics_greeting();
    metrics_matrix_event_skipped();
    metrics_matrix_event_skipped();
    metrics_llm_done(1, 200, 1, 0.3, 100, 20);
    metrics_llm_done(1, 200, 3, 4.0, 50, 10);
    metrics_llm_done(0, 503, 5, 12.0, -1, -1);
    metrics_set_redis(1);
    metrics_set_adapter_count(1);
    metrics_set_adapter(0, "irc", "li\"bera", 1);
    metrics_set_queue(3, 2);
    assert_true(metrics_render(buf, sizeof(buf)) > 0);
    assert_exposition_format(buf);
    assert_non_null(strstr(buf, "parley_messages_received_total"
                           "{platform=\"irc\"} 2\n"));
    assert_non_null(strstr(buf, "parley_messages_received_total"
                           "{platform=\"other\"} 1\n"));
    assert_non_null(strstr(buf, "parley_messages_answered_total"
                           "{platform=\"irc\"} 1\n"));
    assert_non_null(strstr(buf, "parley_commands_total{command=\"reset\"} "
                           "1\n"));
    assert_non_null(strstr(buf, "parley_commands_total{command=\"other\"} "
                           "1\n"));
    assert_non_null(strstr(buf, "parley_llm_requests_total{outcome=\"ok\","
                           "status=\"200\"} 2\n"));
    assert_non_null(strstr(buf, "parley_llm_requests_total{outcome=\"error\","
                           "status=\"503\"} 1\n"));
    assert_non_null(strstr(buf, "parley_llm_retries_total 6\n"));
    assert_non_null(strstr(buf, "parley_matrix_events_skipped_total 2\n"));
    assert_non_null(strstr(buf, "parley_llm_tokens_total{direction=\"in\"} "
                           "150\n"));
    assert_non_null(strstr(buf, "parley_llm_latency_seconds_bucket"
                           "{le=\"0.5\"} 1\n"));
    assert_non_null(strstr(buf, "parley_llm_latency_seconds_bucket"
                           "{le=\"5\"} 2\n"));
    assert_non_null(strstr(buf, "parley_llm_latency_seconds_bucket"
                           "{le=\"+Inf\"} 3\n"));
    assert_non_null(strstr(buf, "parley_llm_latency_seconds_count 3\n"));
    assert_non_null(strstr(buf, "account=\"li\\\"bera\"} 1\n"));
    assert_non_null(strstr(buf, "parley_queue_depth 3\n"));
    assert_non_null(strstr(buf, "parley_rooms_active 2\n"));
}

static void render_truncates_on_a_line(void **state)
{
    char small[300];
    size_t n;

    (void)state;
    metrics_reset();
    n = metrics_render(small, sizeof(small));
    assert_true(n < sizeof(small));
    assert_int_equal(strlen(small), n);
    assert_true(n > 0 && small[n - 1] == '\n');
}

static void health_flips(void **state)
{
    char h[1024];

    (void)state;
    metrics_reset();
    metrics_set_adapter_count(2);
    metrics_set_adapter(0, "irc", "libera", 1);
    metrics_set_adapter(1, "matrix", "@bot:hs", 1);
    metrics_set_redis(1);
    assert_int_equal(metrics_health(h, sizeof(h)), 1);
    assert_non_null(strstr(h, "\"status\":\"ok\""));
    metrics_set_redis(0);
    assert_int_equal(metrics_health(h, sizeof(h)), 0);
    assert_non_null(strstr(h, "redis is down"));
    metrics_set_redis(1);
    metrics_set_adapter(1, "matrix", "@bot:hs", 0);
    assert_int_equal(metrics_health(h, sizeof(h)), 0);
    assert_non_null(strstr(h, "matrix adapter @bot:hs is not connected"));
}

/* End-to-end encryption: counters, the UTD gauge, and the crypto store
 * flag that makes /healthz unhealthy until a read works again. */
static void e2ee_counts_and_store(void **state)
{
    char h[1024];

    (void)state;
    metrics_reset();
    metrics_set_redis(1);
    metrics_e2ee_decrypt_failed();
    metrics_e2ee_decrypt_failed();
    metrics_e2ee_key_request();
    metrics_e2ee_olm_session(1);
    metrics_e2ee_olm_session(0);
    metrics_e2ee_olm_session(0);
    metrics_e2ee_megolm_session(0);
    metrics_e2ee_megolm_session(1);
    metrics_e2ee_utd_pending(4);
    metrics_render(buf, sizeof(buf));
    assert_non_null(strstr(buf,
                           "parley_matrix_e2ee_decrypt_failures_total 2\n"));
    assert_non_null(strstr(buf, "parley_matrix_e2ee_key_requests_total 1\n"));
    assert_non_null(strstr(buf, "parley_matrix_e2ee_olm_sessions_total"
                           "{kind=\"new\"} 1\n"));
    assert_non_null(strstr(buf, "parley_matrix_e2ee_olm_sessions_total"
                           "{kind=\"reused\"} 2\n"));
    assert_non_null(strstr(buf, "parley_matrix_e2ee_megolm_sessions_total"
                           "{direction=\"inbound\"} 1\n"));
    assert_non_null(strstr(buf, "parley_matrix_e2ee_utd 4\n"));
    assert_non_null(strstr(buf, "parley_matrix_e2ee_store_ok 1\n"));
    assert_int_equal(metrics_health(h, sizeof(h)), 1);
    metrics_e2ee_store(0);
    metrics_render(buf, sizeof(buf));
    assert_non_null(strstr(buf, "parley_matrix_e2ee_store_ok 0\n"));
    assert_int_equal(metrics_health(h, sizeof(h)), 0);
    assert_non_null(strstr(h, "the Matrix crypto store cannot be read"));
    metrics_e2ee_store(1);
    assert_int_equal(metrics_health(h, sizeof(h)), 1);
}

/* One HTTP/1.0 GET; returns the status code, body into out. */
static int http_get(int port, const char *path, char *out, size_t len)
{
    struct sockaddr_in sa;
    char req[256];
    size_t used = 0;
    ssize_t n;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int code = -1;

    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    n = snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\n\r\n", path);
    assert_int_equal(write(fd, req, (size_t)n), n);
    while (used + 1 < len &&
           (n = read(fd, out + used, len - used - 1)) > 0)
        used += (size_t)n;
    out[used] = '\0';
    close(fd);
    if (sscanf(out, "HTTP/1.%*d %d", &code) != 1)
        return -1;
    return code;
}

static void serve_over_http(void **state)
{
    struct monitor *mon = NULL;
    char err[256];
    char resp[METRICS_TEXT_MAX + 1024];

    (void)state;
    metrics_reset();
    metrics_set_redis(1);
    assert_int_equal(monitor_start(&mon, "127.0.0.1:0", err, sizeof(err)),
                     PARLEY_OK);
    assert_true(monitor_port(mon) > 0);
    assert_int_equal(http_get(monitor_port(mon), "/healthz", resp,
                              sizeof(resp)), 200);
    assert_non_null(strstr(resp, "application/json"));
    metrics_set_redis(0);
    assert_int_equal(http_get(monitor_port(mon), "/healthz", resp,
                              sizeof(resp)), 503);
    assert_int_equal(http_get(monitor_port(mon), "/metrics", resp,
                              sizeof(resp)), 200);
    assert_non_null(strstr(resp, "text/plain; version=0.0.4"));
    assert_non_null(strstr(resp, "parley_redis_up 0\n"));
    assert_int_equal(http_get(monitor_port(mon), "/nope", resp,
                              sizeof(resp)), 404);
    monitor_stop(mon);

    assert_int_equal(monitor_start(&mon, "nonsense", err, sizeof(err)),
                     PARLEY_ERR_CONFIG);
    assert_non_null(strstr(err, "metrics.listen"));
    assert_int_equal(monitor_start(&mon, "192.0.2.1:0", err, sizeof(err)),
                     PARLEY_ERR_IO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(render_counts_and_format),
        cmocka_unit_test(render_truncates_on_a_line),
        cmocka_unit_test(health_flips),
        cmocka_unit_test(e2ee_counts_and_store),
        cmocka_unit_test(serve_over_http),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
