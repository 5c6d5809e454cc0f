/*
 * Pure tests of the LLM client's loop-free parts: request body, answer and
 * error-body parsing (including hostile and truncated input), the retry
 * table, the backoff schedule and the Retry-After parser.  No socket, no
 * loop: these are the functions every answer and every retry go through.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <cjson/cJSON.h>

#include "llm.h"
#include "loop.h"
#include "status.h"

/* A string literal and its length, for the (body, len) parsers. */
#define LIT(s) s, sizeof(s) - 1

static cJSON *two_messages(void)
{
    cJSON *msgs = cJSON_Parse(
        "[{\"role\":\"system\",\"content\":\"be brief\"},"
        "{\"role\":\"user\",\"content\":\"caf\\u00e9 \\\"quoted\\\"\\n\"}]");

    assert_non_null(msgs);
    return msgs;
}

static void test_request_body_full(void **state)
{
    cJSON *msgs = two_messages();
    char *body = llm_request_body("gpt-4o-mini", msgs, 0.7, 256);
    cJSON *root, *m;

    (void)state;
    assert_non_null(body);
    root = cJSON_Parse(body);
    assert_non_null(root);
    assert_string_equal(
        cJSON_GetObjectItem(root, "model")->valuestring, "gpt-4o-mini");
    m = cJSON_GetObjectItem(root, "messages");
    assert_true(cJSON_IsArray(m));
    assert_int_equal(cJSON_GetArraySize(m), 2);
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(m, 1),
                                            "content")->valuestring,
                        "caf\xc3\xa9 \"quoted\"\n");
    assert_true(cJSON_GetObjectItem(root, "temperature")->valuedouble > 0.69);
    assert_true(cJSON_GetObjectItem(root, "temperature")->valuedouble < 0.71);
    assert_int_equal(cJSON_GetObjectItem(root, "max_tokens")->valueint, 256);
    /* messages is not consumed and not changed */
    assert_int_equal(cJSON_GetArraySize(msgs), 2);
    cJSON_Delete(root);
    cJSON_Delete(msgs);
    free(body);
}

static void test_request_body_optional(void **state)
{
    cJSON *msgs = two_messages();
    char *body = llm_request_body("m", msgs, -1.0, 0);
    cJSON *root;

    (void)state;
    assert_non_null(body);
    root = cJSON_Parse(body);
    assert_non_null(root);
    assert_null(cJSON_GetObjectItem(root, "temperature"));
    assert_null(cJSON_GetObjectItem(root, "max_tokens"));
    cJSON_Delete(root);
    free(body);

    /* temperature 0 is a real setting (deterministic), so it is sent */
    body = llm_request_body("m", msgs, 0.0, -5);
    root = cJSON_Parse(body);
    assert_non_null(cJSON_GetObjectItem(root, "temperature"));
    assert_null(cJSON_GetObjectItem(root, "max_tokens"));
    cJSON_Delete(root);
    free(body);
    cJSON_Delete(msgs);
}

static const char good[] =
    "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\",\"created\":1,"
    "\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"message\":"
    "{\"role\":\"assistant\",\"content\":\"Hello there\"},"
    "\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":12,"
    "\"completion_tokens\":3,\"total_tokens\":15}}";

static void test_parse_good(void **state)
{
    struct llm_result res;

    (void)state;
    memset(&res, 0, sizeof(res));
    assert_int_equal(llm_parse_response(good, strlen(good), &res),
                     PARLEY_OK);
    assert_int_equal(res.status, PARLEY_OK);
    assert_string_equal(res.content, "Hello there");
    assert_string_equal(res.finish_reason, "stop");
    assert_int_equal(res.prompt_tokens, 12);
    assert_int_equal(res.completion_tokens, 3);
    /* parsing again frees the previous content (ASan checks) */
    assert_int_equal(llm_parse_response(good, strlen(good), &res),
                     PARLEY_OK);
    llm_result_clear(&res);
    assert_null(res.content);
    assert_int_equal(res.prompt_tokens, -1);
}

static void test_parse_no_usage(void **state)
{
    static const char body[] =
        "{\"choices\":[{\"message\":{\"role\":\"assistant\","
        "\"content\":\"x\"},\"finish_reason\":\"length\"}]}";
    struct llm_result res;

    (void)state;
    memset(&res, 0, sizeof(res));
    assert_int_equal(llm_parse_response(body, strlen(body), &res),
                     PARLEY_OK);
    assert_string_equal(res.content, "x");
    assert_string_equal(res.finish_reason, "length");
    assert_int_equal(res.prompt_tokens, -1);
    assert_int_equal(res.completion_tokens, -1);
    llm_result_clear(&res);
}

static void test_parse_bad_usage(void **state)
{
    static const char body[] =
        "{\"choices\":[{\"message\":{\"content\":\"x\"}}],"
        "\"usage\":{\"prompt_tokens\":-3,\"completion_tokens\":1e300}}";
    struct llm_result res;

    (void)state;
    memset(&res, 0, sizeof(res));
    assert_int_equal(llm_parse_response(body, strlen(body), &res),
                     PARLEY_OK);
    assert_null(res.finish_reason);
    assert_int_equal(res.prompt_tokens, -1);
    assert_int_equal(res.completion_tokens, -1);
    llm_result_clear(&res);
}

/* Every one of these must be PROTOCOL with a reason and no content. */
static void expect_protocol(const char *body, size_t len)
{
    struct llm_result res;

    memset(&res, 0, sizeof(res));
    assert_int_equal(llm_parse_response(body, len, &res),
                     PARLEY_ERR_PROTOCOL);
    assert_int_equal(res.status, PARLEY_ERR_PROTOCOL);
    assert_null(res.content);
    assert_true(res.errstr[0] != '\0');
    llm_result_clear(&res);
}

static void test_parse_bad_bodies(void **state)
{
    static const char *bodies[] = {
        "{\"choices\":[{\"message\":{\"role\":\"assistant\"}}]}",
        "{\"choices\":[{\"message\":{\"content\":null}}]}",
        "{\"choices\":[{\"message\":{\"content\":\"\"}}]}",
        "{\"choices\":[{\"message\":{\"content\":42}}]}",
        "{\"choices\":[]}",
        "{\"choices\":{}}",
        "{\"choices\":[null]}",
        "{}",
        "[]",
        "\"just a string\"",
        "null",
        "<html><body>502 Bad Gateway</body></html>",
        "",
        "{\"choices\":[{\"message\":{\"content\":\"unterminated",
        "{\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}",
    };

    (void)state;
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++)
        expect_protocol(bodies[i], strlen(bodies[i]));
    /* a truncated copy of a good body, at every length */
    for (size_t n = 0; n < strlen(good) - 1; n++)
        expect_protocol(good, n);
    /* NULL body */
    expect_protocol(NULL, 0);
}

static void test_parse_error_in_200(void **state)
{
    static const char body[] =
        "{\"error\":{\"message\":\"model overloaded\",\"type\":\"x\","
        "\"code\":\"busy\"}}";
    struct llm_result res;

    (void)state;
    memset(&res, 0, sizeof(res));
    assert_int_equal(llm_parse_response(body, strlen(body), &res),
                     PARLEY_ERR_PROTOCOL);
    assert_non_null(strstr(res.errstr, "busy: model overloaded"));
    llm_result_clear(&res);
}

static void test_parse_refusal(void **state)
{
    static const char body[] =
        "{\"choices\":[{\"message\":{\"content\":null,"
        "\"refusal\":\"I can't\\nhelp\"}}]}";
    struct llm_result res;

    (void)state;
    memset(&res, 0, sizeof(res));
    assert_int_equal(llm_parse_response(body, strlen(body), &res),
                     PARLEY_ERR_PROTOCOL);
    assert_non_null(strstr(res.errstr, "refused"));
    assert_null(strchr(res.errstr, '\n'));
    llm_result_clear(&res);
}

/* Not NUL-terminated: the parser must respect len. */
static void test_parse_not_terminated(void **state)
{
    size_t n = strlen(good);
    char *copy = malloc(n);
    struct llm_result res;

    (void)state;
    assert_non_null(copy);
    memcpy(copy, good, n);
    memset(&res, 0, sizeof(res));
    assert_int_equal(llm_parse_response(copy, n, &res), PARLEY_OK);
    assert_string_equal(res.content, "Hello there");
    llm_result_clear(&res);
    free(copy);
}

static void test_parse_huge(void **state)
{
    /* 2 MiB of content, escaped quotes and UTF-8 included */
    size_t n = 2 * 1024 * 1024;
    const char *head = "{\"choices\":[{\"message\":{\"content\":\"";
    const char *tail = "\"},\"finish_reason\":\"length\"}]}";
    size_t hl = strlen(head), tl = strlen(tail);
    char *body = malloc(hl + n + tl + 1);
    struct llm_result res;

    (void)state;
    assert_non_null(body);
    memcpy(body, head, hl);
    for (size_t i = 0; i < n; i += 4)
        memcpy(body + hl + i, i % 8 ? "\\\"ab" : "\xc3\xa9xy", 4);
    memcpy(body + hl + n, tail, tl + 1);
    memset(&res, 0, sizeof(res));
    assert_int_equal(llm_parse_response(body, hl + n + tl, &res), PARLEY_OK);
    assert_int_equal(strlen(res.content), n - n / 8);
    llm_result_clear(&res);

    /* deep nesting must fail cleanly, not overflow the stack */
    for (size_t i = 0; i < n; i++)
        body[i] = '[';
    body[n] = '\0';
    expect_protocol(body, n);
    free(body);
}

static void test_parse_error_bodies(void **state)
{
    char buf[256];
    char tiny[8];
    static const char openai[] =
        "{\"error\":{\"message\":\"Incorrect API key provided: sk-ab***yz.\","
        "\"type\":\"invalid_request_error\",\"param\":null,"
        "\"code\":\"invalid_api_key\"}}";

    (void)state;
    llm_parse_error(openai, strlen(openai), buf, sizeof(buf));
    assert_string_equal(buf,
        "invalid_api_key: Incorrect API key provided: sk-ab***yz.");

    llm_parse_error(LIT("{\"error\":{\"message\":\"overloaded\",\"type\":"
                        "\"server_error\",\"code\":null}}"), buf, sizeof(buf));
    assert_string_equal(buf, "server_error: overloaded");

    llm_parse_error(LIT("{\"error\":{\"code\":502,\"message\":"
                        "\"Bad gateway.\"}}"), buf, sizeof(buf));
    assert_string_equal(buf, "502: Bad gateway.");

    llm_parse_error(LIT("{\"error\":\"model 'x' not found\"}"), buf,
                    sizeof(buf));
    assert_string_equal(buf, "model 'x' not found");

    llm_parse_error(LIT("{\"detail\":\"Not Found\"}"), buf, sizeof(buf));
    assert_string_equal(buf, "Not Found");

    /* CR/LF from the server cannot break a log line */
    llm_parse_error(LIT("{\"error\":{\"message\":\"a\\r\\nFAKE LOG LINE\"}}"),
                    buf, sizeof(buf));
    assert_null(strpbrk(buf, "\r\n"));
    assert_non_null(strstr(buf, "FAKE LOG LINE"));

    /* HTML from a proxy: quoted, controls and non-ASCII neutralised */
    llm_parse_error(LIT("<html>\r\n\xff\xfe bad</html>"), buf, sizeof(buf));
    assert_null(strpbrk(buf, "\r\n"));
    assert_non_null(strstr(buf, "<html>"));
    for (const char *p = buf; *p; p++)
        assert_true((unsigned char)*p >= 0x20 && (unsigned char)*p < 0x7f);

    llm_parse_error("", 0, buf, sizeof(buf));
    assert_string_equal(buf, "(empty body)");
    llm_parse_error(NULL, 0, buf, sizeof(buf));
    assert_string_equal(buf, "(empty body)");

    /* truncated into a small buffer, still terminated */
    llm_parse_error(openai, strlen(openai), tiny, sizeof(tiny));
    assert_int_equal(strlen(tiny), sizeof(tiny) - 1);

    /* a zero-length buffer is left alone */
    llm_parse_error(openai, strlen(openai), tiny, 0);
}

static void test_retryable_table(void **state)
{
    static const struct { int status; long code; int want; } t[] = {
        { PARLEY_ERR_IO, 0, 1 },
        { PARLEY_ERR_EOF, 0, 1 },
        { PARLEY_ERR_TIMEOUT, 0, 1 },
        { PARLEY_ERR_HTTP, 408, 1 },
        { PARLEY_ERR_HTTP, 409, 1 },
        { PARLEY_ERR_HTTP, 429, 1 },
        { PARLEY_ERR_HTTP, 500, 1 },
        { PARLEY_ERR_HTTP, 502, 1 },
        { PARLEY_ERR_HTTP, 503, 1 },
        { PARLEY_ERR_HTTP, 504, 1 },
        { PARLEY_ERR_HTTP, 599, 1 },
        { PARLEY_ERR_HTTP, 400, 0 },
        { PARLEY_ERR_HTTP, 401, 0 },
        { PARLEY_ERR_HTTP, 403, 0 },
        { PARLEY_ERR_HTTP, 404, 0 },
        { PARLEY_ERR_HTTP, 413, 0 },
        { PARLEY_ERR_HTTP, 422, 0 },
        { PARLEY_ERR_HTTP, 600, 0 },
        { PARLEY_ERR_HTTP, 0, 0 },
        { PARLEY_OK, 200, 0 },
        { PARLEY_OK, 503, 0 },
        { PARLEY_ERR_PROTOCOL, 200, 0 },
        { PARLEY_ERR_TOO_LARGE, 200, 0 },
        { PARLEY_ERR_OOM, 0, 0 },
        { PARLEY_ERR_CONFIG, 0, 0 },
    };

    (void)state;
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        if (llm_is_retryable(t[i].status, t[i].code) != t[i].want)
            fail_msg("llm_is_retryable(%d, %ld) != %d", t[i].status,
                     t[i].code, t[i].want);
    }
}

/* The window arithmetic is test_backoff.c's; these pin llm's policy on
 * top of it: attempts count from 1, full jitter, Retry-After a floor
 * capped at four times the cap.  TOP is the top of the window. */
#define TOP UINT64_MAX

static void test_backoff_schedule(void **state)
{
    (void)state;
    /* random 0: full jitter may retry at once */
    for (int a = 1; a <= 10; a++)
        assert_int_equal(llm_backoff_ms(a, 500, 30000, -1, 0), 0);
    /* the cap doubles per attempt up to max */
    assert_int_equal(llm_backoff_ms(1, 500, 30000, -1, TOP), 500);
    assert_int_equal(llm_backoff_ms(2, 500, 30000, -1, TOP), 1000);
    assert_int_equal(llm_backoff_ms(3, 500, 30000, -1, TOP), 2000);
    assert_int_equal(llm_backoff_ms(6, 500, 30000, -1, TOP), 16000);
    assert_int_equal(llm_backoff_ms(7, 500, 30000, -1, TOP), 30000);
    assert_int_equal(llm_backoff_ms(50, 500, 30000, -1, TOP), 30000);
    /* huge attempt numbers neither loop long nor overflow */
    assert_int_equal(llm_backoff_ms(2000000000, 500, 30000, -1, TOP),
                     30000);
    /* attempts below 1 count as the first */
    assert_int_equal(llm_backoff_ms(0, 500, 30000, -1, TOP), 500);
    assert_int_equal(llm_backoff_ms(-7, 500, 30000, -1, TOP), 500);
    /* base over max is capped */
    assert_int_equal(llm_backoff_ms(1, 90000, 1000, -1, TOP), 1000);
    /* Retry-After is a floor ... */
    assert_int_equal(llm_backoff_ms(1, 500, 30000, 2000, 0), 2000);
    assert_int_equal(llm_backoff_ms(1, 500, 30000, 0, 0), 0);
    /* ... but jitter above it is kept */
    assert_int_equal(llm_backoff_ms(7, 500, 30000, 2000, TOP), 30000);
    /* ... capped at 4 * max */
    assert_int_equal(llm_backoff_ms(1, 500, 30000, 3600000, TOP / 2),
                     120000);
    assert_int_equal(llm_backoff_ms(1, 500, 0, 3600000, TOP), 0);
    /* zero base: no delay, no loop */
    assert_int_equal(llm_backoff_ms(5, 0, 30000, -1, TOP), 0);
    /* negative inputs are treated as zero */
    assert_int_equal(llm_backoff_ms(-3, -1, -1, -1, TOP), 0);
}

static void test_retry_after_seconds(void **state)
{
    (void)state;
    assert_int_equal(loop_parse_retry_after("0", 0), 0);
    assert_int_equal(loop_parse_retry_after("1", 0), 1000);
    assert_int_equal(loop_parse_retry_after("  120  ", 0), 120000);
    assert_int_equal(loop_parse_retry_after("1.5", 0), 1500);
    assert_int_equal(loop_parse_retry_after("0.25", 0), 250);
    assert_int_equal(loop_parse_retry_after("2.", 0), 2000);
    assert_int_equal(loop_parse_retry_after(".5", 0), 500);
    assert_int_equal(loop_parse_retry_after("0.0019", 0), 1);
    /* absurd values are clamped to a day, not overflowed */
    assert_int_equal(loop_parse_retry_after("99999999999999999999999", 0),
                     24L * 3600 * 1000);
}

static void test_retry_after_date(void **state)
{
    /* Sun, 06 Nov 1994 08:49:37 GMT = 784111777 */
    long t = 784111777;

    (void)state;
    assert_int_equal(loop_parse_retry_after(
        "Sun, 06 Nov 1994 08:49:37 GMT", t - 30), 30000);
    /* RFC 850 and asctime forms */
    assert_int_equal(loop_parse_retry_after(
        "Sunday, 06-Nov-94 08:49:37 GMT", t - 5), 5000);
    assert_int_equal(loop_parse_retry_after(
        "Sun Nov  6 08:49:37 1994", t - 1), 1000);
    /* a date in the past means now */
    assert_int_equal(loop_parse_retry_after(
        "Sun, 06 Nov 1994 08:49:37 GMT", t + 100), 0);
    /* far future is clamped */
    assert_int_equal(loop_parse_retry_after(
        "Fri, 01 Jan 2100 00:00:00 GMT", t), 24L * 3600 * 1000);
}

static void test_retry_after_garbage(void **state)
{
    static const char *bad[] = {
        "", "   ", "soon", "-1", "-0.5", "1s", "1 2", "1.5.5", "1e3",
        "0x10", ".", "Sun, 99 Foo 1994 99:99:99 GMT", "12:00",
        "Sun\r\nX-Injected: 1", "\xff\xfe", "+5",
    };

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        long v = loop_parse_retry_after(bad[i], 1000);

        if (v != -1)
            fail_msg("loop_parse_retry_after(\"%s\") = %ld", bad[i], v);
    }
    assert_int_equal(loop_parse_retry_after(NULL, 0), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_body_full),
        cmocka_unit_test(test_request_body_optional),
        cmocka_unit_test(test_parse_good),
        cmocka_unit_test(test_parse_no_usage),
        cmocka_unit_test(test_parse_bad_usage),
        cmocka_unit_test(test_parse_bad_bodies),
        cmocka_unit_test(test_parse_error_in_200),
        cmocka_unit_test(test_parse_refusal),
        cmocka_unit_test(test_parse_not_terminated),
        cmocka_unit_test(test_parse_huge),
        cmocka_unit_test(test_parse_error_bodies),
        cmocka_unit_test(test_retryable_table),
        cmocka_unit_test(test_backoff_schedule),
        cmocka_unit_test(test_retry_after_seconds),
        cmocka_unit_test(test_retry_after_date),
        cmocka_unit_test(test_retry_after_garbage),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
