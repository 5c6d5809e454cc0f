/*
 * The LLM stream reader without a network: chat.completion.chunk events
 * fed as bytes, checking which pieces go out when.  The key is held back
 * while the text could still be its start and cut out once it is whole;
 * no piece ends inside a UTF-8 character; the ways a stream can end
 * ([DONE], finish_reason, a broken connection, an error event in JSON or
 * plain text, a refusal); a piece callback that stops the reader; and the
 * whole-JSON answer handed out as one piece.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "llm.h"
#include "status.h"

#define KEY "sk-unit-0123456789"

struct reader {
    struct llm_stream *st;
    struct llm_result res;
    char text[1024];        /* the pieces, each followed by '|' */
    int pieces;
    int stop_at;            /* return PARLEY_ERR_OTHER at this piece */
};

static int on_piece(const struct llm_delta *d, void *privdata)
{
    struct reader *r = privdata;
    size_t have = strlen(r->text);

    assert_true(have + d->len + 2 < sizeof(r->text));
    memcpy(r->text + have, d->text, d->len);
    r->text[have + d->len] = '|';
    r->text[have + d->len + 1] = '\0';
    r->pieces++;
    return r->stop_at == r->pieces ? PARLEY_ERR_OTHER : PARLEY_OK;
}

static void reader_open(struct reader *r, const char *key)
{
    memset(r, 0, sizeof(*r));
    llm_result_clear(&r->res);
    assert_int_equal(llm_stream_create(&r->st, key, on_piece, r, &r->res),
                     PARLEY_OK);
}

static void reader_close(struct reader *r)
{
    llm_stream_free(r->st);
    llm_result_clear(&r->res);
}

/* Feed one content delta as an event. */
static int feed_content(struct reader *r, const char *content)
{
    char ev[512];
    int n = snprintf(ev, sizeof(ev), "data: {\"choices\":[{\"index\":0,"
                     "\"delta\":{\"content\":\"%s\"},\"finish_reason\":"
                     "null}]}\n\n", content);

    assert_true(n > 0 && (size_t)n < sizeof(ev));
    return llm_stream_feed(r->st, ev, (size_t)n);
}

static int feed(struct reader *r, const char *s)
{
    return llm_stream_feed(r->st, s, strlen(s));
}

static const char finish[] =
    "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":"
    "\"stop\"}]}\n\n"
    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,"
    "\"completion_tokens\":3,\"total_tokens\":10}}\n\n"
    "data: [DONE]\n\n";

static void test_key_held_back_then_cut(void **state)
{
    struct reader r;

    (void)state;
    reader_open(&r, KEY);
    assert_int_equal(feed_content(&r, "abc sk-un"), PARLEY_OK);
    /* "sk-un" could be the key: only "abc " went out */
    assert_string_equal(r.text, "abc |");
    assert_int_equal(feed_content(&r, "it-0123"), PARLEY_OK);
    assert_string_equal(r.text, "abc |");
    assert_int_equal(feed_content(&r, "456789 and s"), PARLEY_OK);
    assert_string_equal(r.text, "abc |[redacted] and |");
    /* "sx" is not the key after all */
    assert_int_equal(feed_content(&r, "x!"), PARLEY_OK);
    assert_string_equal(r.text, "abc |[redacted] and |sx!|");
    assert_int_equal(feed(&r, finish), PARLEY_OK);
    llm_stream_end(r.st, PARLEY_OK, NULL);
    assert_int_equal(r.res.status, PARLEY_OK);
    assert_string_equal(r.res.content, "abc [redacted] and sx!");
    assert_string_equal(r.res.finish_reason, "stop");
    assert_int_equal(r.res.prompt_tokens, 7);
    assert_int_equal(r.res.completion_tokens, 3);
    assert_int_equal(llm_stream_emit_rest(r.st, r.res.content), PARLEY_OK);
    assert_int_equal(r.pieces, 3);
    reader_close(&r);
}

static void test_held_tail_goes_out_at_the_end(void **state)
{
    struct reader r;

    (void)state;
    reader_open(&r, KEY);
    assert_int_equal(feed_content(&r, "ends with sk-"), PARLEY_OK);
    assert_string_equal(r.text, "ends with |");
    assert_int_equal(feed(&r, finish), PARLEY_OK);
    llm_stream_end(r.st, PARLEY_OK, NULL);
    assert_int_equal(r.res.status, PARLEY_OK);
    assert_int_equal(llm_stream_emit_rest(r.st, r.res.content), PARLEY_OK);
    assert_string_equal(r.text, "ends with |sk-|");
    assert_int_equal(r.res.delivered, strlen("ends with sk-"));
    reader_close(&r);

    /* no key, or one too short to redact: nothing is held */
    reader_open(&r, NULL);
    assert_int_equal(feed_content(&r, "sk-"), PARLEY_OK);
    assert_string_equal(r.text, "sk-|");
    reader_close(&r);
    reader_open(&r, "sk");
    assert_int_equal(feed_content(&r, "s"), PARLEY_OK);
    assert_string_equal(r.text, "s|");
    reader_close(&r);
}

static void test_utf8_not_cut(void **state)
{
    struct reader r;

    (void)state;
    reader_open(&r, KEY);
    /* raw bytes in the JSON string, cut inside characters */
    assert_int_equal(feed_content(&r, "caf\xc3"), PARLEY_OK);
    assert_string_equal(r.text, "caf|");
    assert_int_equal(feed_content(&r, "\xa9 \xf0\x9f"), PARLEY_OK);
    assert_string_equal(r.text, "caf|\xc3\xa9 |");
    assert_int_equal(feed_content(&r, "\x98\x80"), PARLEY_OK);
    assert_string_equal(r.text, "caf|\xc3\xa9 |\xf0\x9f\x98\x80|");
    reader_close(&r);
}

static void test_endings(void **state)
{
    struct reader r;

    (void)state;
    /* the connection fails after [DONE]: the answer is whole */
    reader_open(&r, KEY);
    assert_int_equal(feed_content(&r, "hi"), PARLEY_OK);
    assert_int_equal(feed(&r, finish), PARLEY_OK);
    llm_stream_end(r.st, PARLEY_ERR_IO, "connection reset");
    assert_int_equal(r.res.status, PARLEY_OK);
    reader_close(&r);

    /* a clean end with nothing but a first empty delta: retryable */
    reader_open(&r, KEY);
    assert_int_equal(feed(&r, "data: {\"choices\":[{\"delta\":{\"role\":"
                         "\"assistant\",\"content\":\"\"}}]}\n\n"),
                     PARLEY_OK);
    llm_stream_end(r.st, PARLEY_OK, NULL);
    assert_int_equal(r.res.status, PARLEY_ERR_EOF);
    assert_int_equal(r.res.retryable, 1);
    assert_null(r.res.content);
    reader_close(&r);

    /* broken after text was shown: final, and says so */
    reader_open(&r, KEY);
    assert_int_equal(feed_content(&r, "partial"), PARLEY_OK);
    assert_int_equal(feed(&r, "data: {\"cho"), PARLEY_OK);
    llm_stream_end(r.st, PARLEY_ERR_IO, "transfer closed");
    assert_int_equal(r.res.status, PARLEY_ERR_IO);
    assert_int_equal(r.res.retryable, 0);
    assert_int_equal(r.res.delivered, 7);
    assert_string_equal(r.res.errstr, "the answer broke off after 7 bytes "
                        "were shown: the LLM API stream broke: transfer "
                        "closed");
    reader_close(&r);

    /* a refusal */
    reader_open(&r, KEY);
    assert_int_equal(feed(&r, "data: {\"choices\":[{\"delta\":{\"refusal\":"
                         "\"No.\"},\"finish_reason\":\"stop\"}]}\n\n"),
                     PARLEY_OK);
    llm_stream_end(r.st, PARLEY_OK, NULL);
    assert_int_equal(r.res.status, PARLEY_ERR_PROTOCOL);
    assert_string_equal(r.res.errstr, "the model refused: No.");
    reader_close(&r);
}

static void test_error_events(void **state)
{
    struct reader r;

    (void)state;
    /* OpenAI's shape, with the key echoed */
    reader_open(&r, KEY);
    assert_int_equal(feed(&r, "data: {\"error\":{\"message\":\"bad " KEY
                         "\",\"type\":\"invalid_request_error\"}}\n\n"),
                     PARLEY_ERR_PROTOCOL);
    assert_int_equal(r.res.status, PARLEY_ERR_PROTOCOL);
    assert_int_equal(r.res.retryable, 0);
    assert_string_equal(r.res.errstr, "the LLM API stream reported an "
                        "error: invalid_request_error: bad [redacted]");
    llm_stream_end(r.st, PARLEY_ERR_IO, NULL);
    assert_int_equal(r.res.status, PARLEY_ERR_PROTOCOL);
    reader_close(&r);

    /* "event: error" with plain text; numeric 503 code is retryable */
    reader_open(&r, KEY);
    assert_int_equal(feed(&r, "event: error\ndata: upstream overloaded\n\n"),
                     PARLEY_ERR_PROTOCOL);
    assert_string_equal(r.res.errstr, "the LLM API stream reported an "
                        "error: upstream overloaded");
    reader_close(&r);
    reader_open(&r, KEY);
    assert_int_equal(feed(&r, "data: {\"error\":{\"code\":503,\"message\":"
                         "\"busy\"}}\n\n"), PARLEY_ERR_PROTOCOL);
    assert_int_equal(r.res.retryable, 1);
    reader_close(&r);

    /* not JSON at all */
    reader_open(&r, KEY);
    assert_int_equal(feed(&r, "data: {oops\n\n"), PARLEY_ERR_PROTOCOL);
    assert_non_null(strstr(r.res.errstr, "not valid JSON"));
    reader_close(&r);
}

static void test_piece_callback_stops(void **state)
{
    struct reader r;

    (void)state;
    reader_open(&r, KEY);
    r.stop_at = 1;
    assert_int_equal(feed_content(&r, "one"), PARLEY_ERR_OTHER);
    /* the caller's reason, not a failure of the stream */
    assert_int_equal(r.res.status, PARLEY_OK);
    assert_int_equal(feed_content(&r, "two"), PARLEY_ERR_OTHER);
    assert_string_equal(r.text, "one|");
    reader_close(&r);
}

static void test_whole_answer_is_one_piece(void **state)
{
    struct reader r;
    char answer[] = "a whole answer";

    (void)state;
    reader_open(&r, KEY);
    assert_int_equal(llm_stream_emit_rest(r.st, answer), PARLEY_OK);
    assert_string_equal(r.text, "a whole answer|");
    assert_int_equal(r.res.delivered, strlen(answer));
    /* a reset starts the next attempt from nothing */
    llm_stream_reset(r.st);
    assert_int_equal(r.res.delivered, 0);
    reader_close(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_held_back_then_cut),
        cmocka_unit_test(test_held_tail_goes_out_at_the_end),
        cmocka_unit_test(test_utf8_not_cut),
        cmocka_unit_test(test_endings),
        cmocka_unit_test(test_error_events),
        cmocka_unit_test(test_piece_callback_stops),
        cmocka_unit_test(test_whole_answer_is_one_piece),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
