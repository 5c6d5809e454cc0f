/*
 * The server-sent events parser against the WHATWG rules: line ends (CRLF,
 * LF, lone CR, and a CRLF cut between two reads), comments, multi-line
 * data, the BOM, fields without a colon, id/retry/event handling, events
 * without data, an unfinished event at the end of the stream, the caps,
 * and a callback that stops the parser.  Every stream is also fed cut at
 * every byte position and one byte at a time, which must give the same
 * events as feeding it whole.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sse.h"
#include "status.h"

/* What a stream produced: each event as "type|id|retry|data\n". */
struct record {
    char out[4096];
    size_t len;
    int events;
    int stop_at;            /* stop with PARLEY_ERR_OTHER at this event */
};

static int on_event(const struct sse_event *ev, void *privdata)
{
    struct record *r = privdata;
    int n;

    assert_int_equal(strlen(ev->data) <= ev->data_len, 1);
    r->events++;
    n = snprintf(r->out + r->len, sizeof(r->out) - r->len, "%s|%s|%ld|",
                 ev->type, ev->id, ev->retry_ms);
    assert_true(n > 0 && (size_t)n < sizeof(r->out) - r->len);
    r->len += (size_t)n;
    assert_true(ev->data_len + 2 < sizeof(r->out) - r->len);
    memcpy(r->out + r->len, ev->data, ev->data_len);
    r->len += ev->data_len;
    r->out[r->len++] = '\n';
    r->out[r->len] = '\0';
    if (r->stop_at && r->events == r->stop_at)
        return PARLEY_ERR_OTHER;
    return PARLEY_OK;
}

/* Feed s (n bytes) in pieces of the given sizes (0-terminated list, the
 * rest in one piece); returns the feed status and fills r. */
static int run_pieces(const char *s, size_t n, const size_t *cuts,
                      struct record *r, int *finish)
{
    struct sse_parser p;
    size_t off = 0;
    int result = PARLEY_OK;

    sse_init(&p, 0, on_event, r);
    for (; cuts && *cuts && off < n && !result; cuts++) {
        size_t k = *cuts < n - off ? *cuts : n - off;

        result = sse_feed(&p, s + off, k);
        off += k;
    }
    if (!result && off < n)
        result = sse_feed(&p, s + off, n - off);
    if (finish)
        *finish = sse_finish(&p);
    sse_free(&p);
    return result;
}

/* The events of s fed whole, checked against every other way of cutting
 * it; returns them in r. */
static void parse_all_ways(const char *s, size_t n, struct record *whole)
{
    int fin_whole, fin;

    memset(whole, 0, sizeof(*whole));
    assert_int_equal(run_pieces(s, n, NULL, whole, &fin_whole), PARLEY_OK);
    for (size_t cut = 1; cut < n; cut++) {
        struct record r;
        size_t cuts[] = { cut, 0 };

        memset(&r, 0, sizeof(r));
        assert_int_equal(run_pieces(s, n, cuts, &r, &fin), PARLEY_OK);
        assert_string_equal(r.out, whole->out);
        assert_int_equal(fin, fin_whole);
    }
    {
        struct record r;
        size_t ones[4096];

        assert_true(n < 4096);
        for (size_t i = 0; i < n; i++)
            ones[i] = 1;
        ones[n] = 0;
        memset(&r, 0, sizeof(r));
        assert_int_equal(run_pieces(s, n, ones, &r, &fin), PARLEY_OK);
        assert_string_equal(r.out, whole->out);
        assert_int_equal(fin, fin_whole);
    }
}

#define CHECK(stream, expect) do { \
        struct record rec_; \
        parse_all_ways(stream, sizeof(stream) - 1, &rec_); \
        assert_string_equal(rec_.out, expect); \
    } while (0)

static void test_simple(void **state)
{
    (void)state;
    CHECK("data: hello\n\n", "message||-1|hello\n");
    CHECK("data: one\n\ndata: two\n\n",
          "message||-1|one\nmessage||-1|two\n");
}

static void test_line_ends(void **state)
{
    (void)state;
    CHECK("data: a\r\n\r\ndata: b\r\rdata: c\n\n",
          "message||-1|a\nmessage||-1|b\nmessage||-1|c\n");
    /* CR then LF is one line end, not a blank line */
    CHECK("data: x\r\ndata: y\r\n\r\n", "message||-1|x\ny\n");
    /* lone CRs, mixed with LF */
    CHECK("data: x\rdata: y\n\r", "message||-1|x\ny\n");
}

static void test_comments_and_unknown(void **state)
{
    (void)state;
    CHECK(": keep-alive\n\n:\ndata: a\n: in the middle\ndata: b\n\n",
          "message||-1|a\nb\n");
    CHECK("foo: bar\nDATA: no\ndata : no\ndata: yes\n\n",
          "message||-1|yes\n");
}

static void test_multiline_and_spaces(void **state)
{
    (void)state;
    CHECK("data:a\ndata: b\ndata:  c\ndata\ndata:\n\n",
          "message||-1|a\nb\n c\n\n\n");
    /* a colon inside the value stays */
    CHECK("data: {\"a\": \"b:c\"}\n\n", "message||-1|{\"a\": \"b:c\"}\n");
}

static void test_field_without_colon(void **state)
{
    (void)state;
    /* "data" alone is an empty data line: the event has empty data */
    CHECK("data\n\n", "message||-1|\n");
    CHECK("data\ndata\n\n", "message||-1|\n\n");
    /* "event" alone resets the type to the default */
    CHECK("event: x\nevent\ndata: d\n\n", "message||-1|d\n");
}

static void test_bom(void **state)
{
    (void)state;
    CHECK("\xef\xbb\xbf" "data: a\n\n", "message||-1|a\n");
    /* only one BOM is skipped; a second is part of the field name */
    CHECK("\xef\xbb\xbf\xef\xbb\xbf" "data: a\n\ndata: b\n\n",
          "message||-1|b\n");
    /* a partial BOM is text */
    CHECK("\xef\xbb" "data: a\n\ndata: b\n\n", "message||-1|b\n");
    CHECK("\xef" "\n" "data: b\n\n", "message||-1|b\n");
}

static void test_event_id_retry(void **state)
{
    (void)state;
    CHECK("event: add\nid: 7\ndata: 1\n\ndata: 2\n\n",
          "add|7|-1|1\nmessage|7|-1|2\n");
    /* empty id resets; an id with NUL is ignored */
    CHECK("id: 7\ndata: 1\n\nid\ndata: 2\n\nid: a\0b\ndata: 3\n\n",
          "message|7|-1|1\nmessage||-1|2\nmessage||-1|3\n");
    CHECK("retry: 1500\ndata: 1\n\nretry: 12a\ndata: 2\n\n"
          "retry:\ndata: 3\n\n",
          "message||1500|1\nmessage||-1|2\nmessage||-1|3\n");
    CHECK("retry: 99999999999999999999999\ndata: x\n\n",
          "message||9223372036854775807|x\n");
    /* event with an empty value is the default type */
    CHECK("event:\ndata: x\n\n", "message||-1|x\n");
}

static void test_no_data_no_event(void **state)
{
    (void)state;
    CHECK("event: ping\n\nid: 3\n\n\n\ndata: x\n\n", "message|3|-1|x\n");
}

static void test_nul_in_data(void **state)
{
    struct record r;
    static const char s[] = "data: a\0b\n\n";

    (void)state;
    parse_all_ways(s, sizeof(s) - 1, &r);
    assert_int_equal(r.events, 1);
    assert_int_equal(r.len, sizeof("message||-1|a\0b\n") - 1);
    assert_memory_equal(r.out, "message||-1|a\0b\n", r.len);
}

static void test_unfinished_at_end(void **state)
{
    struct record r;
    int fin;

    (void)state;
    memset(&r, 0, sizeof(r));
    assert_int_equal(run_pieces("data: done\n\ndata: partial\n", 26, NULL, &r,
                                &fin),
                     PARLEY_OK);
    assert_string_equal(r.out, "message||-1|done\n");
    assert_int_equal(fin, PARLEY_ERR_EOF);

    /* a partial line alone also counts */
    memset(&r, 0, sizeof(r));
    assert_int_equal(run_pieces("data: x", 7, NULL, &r, &fin), PARLEY_OK);
    assert_int_equal(r.events, 0);
    assert_int_equal(fin, PARLEY_ERR_EOF);

    /* ending between events is clean */
    memset(&r, 0, sizeof(r));
    assert_int_equal(run_pieces("data: x\n\n: bye\n", 15, NULL, &r, &fin),
                     PARLEY_OK);
    assert_int_equal(fin, PARLEY_OK);
}

static void test_caps(void **state)
{
    struct sse_parser p;
    struct record r;
    char big[100];

    (void)state;
    memset(&r, 0, sizeof(r));
    memset(big, 'x', sizeof(big));

    /* a line longer than the cap, arriving in pieces */
    sse_init(&p, 64, on_event, &r);
    assert_int_equal(sse_feed(&p, "data: ", 6), PARLEY_OK);
    assert_int_equal(sse_feed(&p, big, 50), PARLEY_OK);
    assert_int_equal(sse_feed(&p, big, 50), PARLEY_ERR_TOO_LARGE);
    assert_non_null(strstr(p.errstr, "line is over the 64-byte cap"));
    /* sticky */
    assert_int_equal(sse_feed(&p, "\n\n", 2), PARLEY_ERR_TOO_LARGE);
    assert_int_equal(sse_finish(&p), PARLEY_ERR_TOO_LARGE);
    /* a reset starts over */
    sse_reset(&p);
    assert_int_equal(sse_feed(&p, "data: ok\n\n", 10), PARLEY_OK);
    assert_string_equal(r.out, "message||-1|ok\n");

    /* a long unfinished line inside one chunk */
    sse_reset(&p);
    assert_int_equal(sse_feed(&p, big, sizeof(big)), PARLEY_ERR_TOO_LARGE);
    sse_reset(&p);
    memcpy(big, "data:", 5);
    big[sizeof(big) - 1] = '\n';   /* a finished one */
    assert_int_equal(sse_feed(&p, big, sizeof(big)), PARLEY_ERR_TOO_LARGE);

    /* many short data lines: the joined data is capped */
    sse_reset(&p);
    for (int i = 0; i < 5; i++)
        assert_int_equal(sse_feed(&p, "data: 0123456789\n", 17), PARLEY_OK);
    assert_int_equal(sse_feed(&p, "data: 0123456789\n", 17),
                     PARLEY_ERR_TOO_LARGE);
    assert_non_null(strstr(p.errstr, "data is over the 64-byte cap"));
    sse_free(&p);

    /* a line of exactly the cap is fine, one byte more is not */
    memset(&r, 0, sizeof(r));
    sse_init(&p, 64, on_event, &r);
    memcpy(big, "data:", 5);
    memset(big + 5, 'y', 59);
    big[64] = '\n';
    big[65] = '\n';
    assert_int_equal(sse_feed(&p, big, 66), PARLEY_OK);
    assert_int_equal(r.events, 1);
    big[64] = 'y';
    big[65] = '\n';
    assert_int_equal(sse_feed(&p, big, 66), PARLEY_ERR_TOO_LARGE);
    sse_free(&p);
}

static void test_callback_stops(void **state)
{
    struct sse_parser p;
    struct record r;

    (void)state;
    memset(&r, 0, sizeof(r));
    r.stop_at = 1;
    sse_init(&p, 0, on_event, &r);
    assert_int_equal(sse_feed(&p, "data: 1\n\ndata: 2\n\n", 18),
                     PARLEY_ERR_OTHER);
    assert_int_equal(r.events, 1);
    assert_int_equal(sse_feed(&p, "data: 3\n\n", 9), PARLEY_ERR_OTHER);
    assert_int_equal(r.events, 1);
    sse_free(&p);
}

/* An OpenAI-shaped stream, as the chat API sends it. */
static void test_openai_shape(void **state)
{
    (void)state;
    CHECK("data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n"
          "data: {\"choices\":[],\"usage\":{\"total_tokens\":3}}\n\n"
          "data: [DONE]\n\n",
          "message||-1|{\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n"
          "message||-1|{\"choices\":[],\"usage\":{\"total_tokens\":3}}\n"
          "message||-1|[DONE]\n");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_simple),
        cmocka_unit_test(test_line_ends),
        cmocka_unit_test(test_comments_and_unknown),
        cmocka_unit_test(test_multiline_and_spaces),
        cmocka_unit_test(test_field_without_colon),
        cmocka_unit_test(test_bom),
        cmocka_unit_test(test_event_id_retry),
        cmocka_unit_test(test_no_data_no_event),
        cmocka_unit_test(test_nul_in_data),
        cmocka_unit_test(test_unfinished_at_end),
        cmocka_unit_test(test_caps),
        cmocka_unit_test(test_callback_stops),
        cmocka_unit_test(test_openai_shape),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
