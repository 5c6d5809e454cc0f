/*
 * Pure parts of context.c: the JSON form of a turn (round trip, hostile
 * and malformed input, the size cap), UTF-8 cleaning and cutting, the
 * token estimate, and trimming by turns and by tokens with the orphaned
 * assistant rule.  No Redis here; test_state_live.c covers the commands
 * (state_history.c).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <cjson/cJSON.h>

#include "context.h"
#include "status.h"

/* 1 if s (len bytes) is well-formed UTF-8, checked independently of
 * context.c with the RFC 3629 table. */
static int utf8_ok(const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;

    while (i < len) {
        unsigned c = s[i];
        size_t n;
        unsigned lo = 0x80, hi = 0xbf;

        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf)
            n = 1;
        else if (c >= 0xe0 && c <= 0xef)
            n = 2;
        else if (c >= 0xf0 && c <= 0xf4)
            n = 3;
        else
            return 0;
        if (c == 0xe0)
            lo = 0xa0;
        if (c == 0xed)
            hi = 0x9f;
        if (c == 0xf0)
            lo = 0x90;
        if (c == 0xf4)
            hi = 0x8f;
        if (i + n >= len)       /* needs bytes i+1 .. i+n */
            return 0;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return 0;
        for (size_t k = 2; k <= n; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xbf)
                return 0;
        i += n + 1;
    }
    return 1;
}

static struct turn make_turn(const char *role, const char *name,
                             const char *content, long long ts)
{
    struct turn t;

    t.role = role ? strdup(role) : NULL;
    t.name = name ? strdup(name) : NULL;
    t.content = content ? strdup(content) : NULL;
    t.ts = ts;
    return t;
}

static void test_round_trip(void **state)
{
    const char *content = "h\xc3\xa9llo \xf0\x9f\x99\x82 \"quoted\" \\back\\ "
                          "new\nline\ttab \x01\x1f ctl </script> \xe6\x97\xa5";
    struct turn in = make_turn("user", "Ann \"the\" Coder \xc3\xa9", content,
                               1700000000LL);
    struct turn out;
    char *json;

    (void)state;
    json = context_turn_to_json(&in);
    assert_non_null(json);
    /* Control bytes never appear raw in the stored JSON. */
    for (const char *p = json; *p; p++)
        assert_true((unsigned char)*p >= 0x20);
    assert_int_equal(context_turn_from_json(json, strlen(json), &out),
                     PARLEY_OK);
    assert_string_equal(out.role, "user");
    assert_string_equal(out.name, in.name);
    assert_string_equal(out.content, content);
    assert_true(out.ts == 1700000000LL);
    context_turn_free(&out);
    free(json);
    context_turn_free(&in);

    /* No name: stored as null, read back as NULL; assistant role. */
    in = make_turn("assistant", NULL, "", 0);
    json = context_turn_to_json(&in);
    assert_non_null(json);
    assert_non_null(strstr(json, "\"name\":null"));
    assert_int_equal(context_turn_from_json(json, strlen(json), &out),
                     PARLEY_OK);
    assert_string_equal(out.role, "assistant");
    assert_null(out.name);
    assert_string_equal(out.content, "");
    context_turn_free(&out);
    free(json);
    context_turn_free(&in);
}

static void test_to_json_rejects_role(void **state)
{
    struct turn t = make_turn("system", NULL, "x", 1);

    (void)state;
    assert_null(context_turn_to_json(&t));
    free(t.role);
    t.role = NULL;
    assert_null(context_turn_to_json(&t));
    t.role = strdup("User");    /* roles are case-sensitive */
    assert_null(context_turn_to_json(&t));
    context_turn_free(&t);
}

static void test_to_json_cleans_invalid_utf8(void **state)
{
    /* lone continuation, overlong '/', surrogate, > U+10FFFF, cut seq */
    struct turn in = make_turn("user", "bad\xff", "a\x80" "b\xc0\xaf"
                               "c\xed\xa0\x80" "d\xf4\x90\x80\x80" "e\xe2\x82",
                               5);
    struct turn out;
    char *json = context_turn_to_json(&in);

    (void)state;
    assert_non_null(json);
    assert_true(utf8_ok(json, strlen(json)));
    assert_int_equal(context_turn_from_json(json, strlen(json), &out),
                     PARLEY_OK);
    assert_string_equal(out.name, "bad\xef\xbf\xbd");
    assert_non_null(strstr(out.content, "a\xef\xbf\xbd" "b"));
    assert_true(utf8_ok(out.content, strlen(out.content)));
    context_turn_free(&out);
    free(json);
    context_turn_free(&in);
}

/* Content of the given repeated unit, total about n bytes. */
static char *repeat(const char *unit, size_t n)
{
    size_t ulen = strlen(unit);
    char *s = malloc(n + ulen + 1);
    size_t len = 0;

    assert_non_null(s);
    while (len < n) {
        memcpy(s + len, unit, ulen);
        len += ulen;
    }
    s[len] = '\0';
    return s;
}

static void check_oversize(const char *unit)
{
    char *content = repeat(unit, 3 * CONTEXT_TURN_MAX);
    struct turn in = make_turn("user", "n", content, 1);
    struct turn out;
    char *json = context_turn_to_json(&in);
    size_t clen;

    assert_non_null(json);
    assert_true(strlen(json) <= CONTEXT_TURN_MAX);
    /* Cut where the escaped content fills the cap, not far below. */
    assert_true(strlen(json) > CONTEXT_TURN_MAX - 8);
    assert_true(utf8_ok(json, strlen(json)));
    assert_int_equal(context_turn_from_json(json, strlen(json), &out),
                     PARLEY_OK);
    clen = strlen(out.content);
    assert_true(clen < strlen(content));
    assert_memory_equal(out.content, content, clen);   /* a prefix */
    assert_true(utf8_ok(out.content, clen));
    context_turn_free(&out);
    free(json);
    context_turn_free(&in);
    free(content);
}

static void test_to_json_cuts_oversize(void **state)
{
    (void)state;
    check_oversize("a");
    check_oversize("\xc3\xa9");             /* 2-byte characters */
    check_oversize("x\xf0\x9f\x99\x82");    /* odd alignment, 4-byte */
    check_oversize("\x01");                 /* 6 bytes each in JSON */
    check_oversize("\"\\");
}

static void expect_bad(const char *json, int status)
{
    struct turn t;

    memset(&t, 0x5a, sizeof(t));
    assert_int_equal(context_turn_from_json(json, strlen(json), &t), status);
    assert_null(t.role);
    assert_null(t.name);
    assert_null(t.content);
    assert_true(t.ts == 0);
}

static void test_from_json_malformed(void **state)
{
    char *huge;

    (void)state;
    expect_bad("", PARLEY_ERR_PROTOCOL);
    expect_bad("not json", PARLEY_ERR_PROTOCOL);
    expect_bad("[]", PARLEY_ERR_PROTOCOL);
    expect_bad("\"user\"", PARLEY_ERR_PROTOCOL);
    expect_bad("null", PARLEY_ERR_PROTOCOL);
    expect_bad("{}", PARLEY_ERR_PROTOCOL);
    expect_bad("{\"role\":\"user\"}", PARLEY_ERR_PROTOCOL);
    expect_bad("{\"content\":\"x\"}", PARLEY_ERR_PROTOCOL);
    expect_bad("{\"role\":1,\"content\":\"x\"}", PARLEY_ERR_PROTOCOL);
    expect_bad("{\"role\":\"system\",\"content\":\"x\"}",
               PARLEY_ERR_PROTOCOL);
    expect_bad("{\"role\":\"user\",\"content\":5}", PARLEY_ERR_PROTOCOL);
    expect_bad("{\"role\":\"user\",\"content\":null}", PARLEY_ERR_PROTOCOL);
    expect_bad("{\"role\":\"user\",\"content\":[\"x\"]}",
               PARLEY_ERR_PROTOCOL);
    expect_bad("{\"role\":\"user\",\"content\":\"x\",\"name\":5}",
               PARLEY_ERR_PROTOCOL);
    expect_bad("{\"role\":\"user\",\"content\":\"x\",\"name\":{}}",
               PARLEY_ERR_PROTOCOL);
    expect_bad("{\"role\":\"user\",\"content\":\"x\",\"ts\":\"now\"}",
               PARLEY_ERR_PROTOCOL);
    expect_bad("{\"role\":\"user\",\"content\":\"x\",\"ts\":-1}",
               PARLEY_ERR_PROTOCOL);
    expect_bad("{\"role\":\"user\",\"content\":\"x\",\"ts\":1e300}",
               PARLEY_ERR_PROTOCOL);
    expect_bad("{\"role\":\"user\",\"content\":\"x\"", PARLEY_ERR_PROTOCOL);
    expect_bad("{\"role\":\"user\",\"content\":\"x\"} trailing",
               PARLEY_ERR_PROTOCOL);
    expect_bad("{\"role\":\"user\",\"content\":\"x\"}{}",
               PARLEY_ERR_PROTOCOL);
    expect_bad("{\"role\":\"user\",\"content\":\"\\ud800\"}",
               PARLEY_ERR_PROTOCOL);

    huge = repeat("[", 5000);
    expect_bad(huge, PARLEY_ERR_PROTOCOL);
    free(huge);
    huge = repeat("a", CONTEXT_TURN_MAX + 1);
    memcpy(huge, "{\"role\":\"user\",\"content\":\"", 26);
    expect_bad(huge, PARLEY_ERR_TOO_LARGE);
    free(huge);

    /* NULL input */
    {
        struct turn t;

        assert_int_equal(context_turn_from_json(NULL, 0, &t),
                         PARLEY_ERR_PROTOCOL);
    }
}

static void test_from_json_lenient(void **state)
{
    struct turn t;
    /* Not NUL-terminated at len: the parser must respect the length. */
    const char buf[] = "{\"role\":\"assistant\",\"content\":\"ok\"}GARBAGE";
    const char *ws = " {\"role\":\"user\",\"content\":\"x\",\"name\":null,"
                     "\"ts\":12,\"extra\":[1,2]}\r\n";

    (void)state;
    assert_int_equal(context_turn_from_json(buf, strlen(buf) - 7, &t),
                     PARLEY_OK);
    assert_string_equal(t.role, "assistant");
    assert_string_equal(t.content, "ok");
    assert_null(t.name);
    assert_true(t.ts == 0);
    context_turn_free(&t);

    assert_int_equal(context_turn_from_json(ws, strlen(ws), &t), PARLEY_OK);
    assert_null(t.name);
    assert_true(t.ts == 12);
    context_turn_free(&t);

    /* Escaped NUL: content is a C string, so it ends there; escaped
     * surrogate pairs decode to UTF-8. */
    ws = "{\"role\":\"user\",\"content\":\"a\\u0000b\","
         "\"name\":\"\\u00e9\\ud83d\\ude42\"}";
    assert_int_equal(context_turn_from_json(ws, strlen(ws), &t), PARLEY_OK);
    assert_string_equal(t.content, "a");
    assert_string_equal(t.name, "\xc3\xa9\xf0\x9f\x99\x82");
    context_turn_free(&t);

    /* Raw invalid UTF-8 stored by someone else is cleaned on the way in. */
    ws = "{\"role\":\"user\",\"content\":\"a\xff" "b\",\"name\":\"\"}";
    assert_int_equal(context_turn_from_json(ws, strlen(ws), &t), PARLEY_OK);
    assert_string_equal(t.content, "a\xef\xbf\xbd" "b");
    assert_null(t.name);    /* empty name = no name */
    context_turn_free(&t);
}

static void test_text_clean_cut(void **state)
{
    int cut = -1;
    char *s;

    (void)state;
    s = context_text_clean("a\xc3\xa9", 3, 2, &cut);
    assert_string_equal(s, "a");
    assert_int_equal(cut, 1);
    free(s);
    s = context_text_clean("a\xc3\xa9", 3, 3, &cut);
    assert_string_equal(s, "a\xc3\xa9");
    assert_int_equal(cut, 0);
    free(s);
    s = context_text_clean("\xf0\x9f\x99\x82\xf0\x9f\x99\x82", 8, 7, &cut);
    assert_string_equal(s, "\xf0\x9f\x99\x82");
    assert_int_equal(cut, 1);
    free(s);
    s = context_text_clean("\xe6\x97\xa5", 3, 2, &cut);
    assert_string_equal(s, "");
    assert_int_equal(cut, 1);
    free(s);
    /* Replacement characters count against the cap too. */
    s = context_text_clean("\xff\xff", 2, 4, &cut);
    assert_string_equal(s, "\xef\xbf\xbd");
    assert_int_equal(cut, 1);
    free(s);
    /* Embedded NUL inside len becomes U+FFFD, not a short string. */
    s = context_text_clean("a\0b", 3, 100, NULL);
    assert_string_equal(s, "a\xef\xbf\xbd" "b");
    free(s);
    s = context_text_clean("", 0, 0, &cut);
    assert_string_equal(s, "");
    assert_int_equal(cut, 0);
    free(s);
}

static void test_token_estimate(void **state)
{
    struct turn t;

    (void)state;
    assert_int_equal(context_token_estimate(NULL), 0);
    assert_int_equal(context_token_estimate(""), 0);
    assert_int_equal(context_token_estimate("abc"), 1);
    assert_int_equal(context_token_estimate("abcd"), 1);
    assert_int_equal(context_token_estimate("abcde"), 2);
    /* h, l, l, o = 4 ASCII bytes -> 1, plus one for the e-acute */
    assert_int_equal(context_token_estimate("h\xc3\xa9llo"), 2);
    assert_int_equal(context_token_estimate("\xe6\x97\xa5\xe6\x9c\xac"), 2);
    assert_int_equal(context_token_estimate("\xf0\x9f\x99\x82"), 1);
    assert_int_equal(context_token_estimate("\xff\xfe"), 2);

    /* "Bob: hi" = 7 ASCII bytes -> 2, + framing */
    t = make_turn("user", "Bob", "hi", 0);
    assert_int_equal(context_turn_tokens(&t), 2 + CONTEXT_MESSAGE_TOKENS);
    context_turn_free(&t);
    /* assistant turns are rendered without a name */
    t = make_turn("assistant", "Bob", "hi", 0);
    assert_int_equal(context_turn_tokens(&t), 1 + CONTEXT_MESSAGE_TOKENS);
    context_turn_free(&t);
    t = make_turn("user", NULL, "", 0);
    assert_int_equal(context_turn_tokens(&t), CONTEXT_MESSAGE_TOKENS);
    context_turn_free(&t);
}

/* History of n turns, user at even indexes, content "m<i>" + pad. */
static struct history *make_history(size_t n, int first_assistant,
                                    size_t pad)
{
    struct history *h = calloc(1, sizeof(*h));
    char buf[256];

    assert_non_null(h);
    h->turns = calloc(n, sizeof(*h->turns));
    assert_non_null(h->turns);
    for (size_t i = 0; i < n; i++) {
        int assistant = (int)(i % 2) != first_assistant;

        assert_true(pad < 200);
        snprintf(buf, sizeof(buf), "m%zu%*s", i, (int)pad, "");
        h->turns[i] = make_turn(assistant ? "assistant" : "user",
                                assistant ? NULL : "u", buf, (long long)i);
    }
    h->n = n;
    return h;
}

static void test_trim_by_turns(void **state)
{
    struct history *h;

    (void)state;
    h = make_history(10, 0, 0);
    context_trim(h, 4, 0);
    assert_int_equal(h->n, 4);
    assert_string_equal(h->turns[0].content, "m6");
    assert_string_equal(h->turns[0].role, "user");
    assert_string_equal(h->turns[3].content, "m9");
    context_history_free(h);

    /* Keeping 3 would open with m7, an assistant answer to the dropped
     * m6: the orphan goes too. */
    h = make_history(10, 0, 0);
    context_trim(h, 3, 0);
    assert_int_equal(h->n, 2);
    assert_string_equal(h->turns[0].content, "m8");
    context_history_free(h);

    /* No limit, and a limit above n: untouched. */
    h = make_history(5, 0, 0);
    context_trim(h, 0, 0);
    assert_int_equal(h->n, 5);
    context_trim(h, 5, 0);
    assert_int_equal(h->n, 5);
    context_history_free(h);
}

static void test_trim_by_tokens(void **state)
{
    struct history *h = make_history(10, 0, 10);
    size_t cost_user = context_turn_tokens(&h->turns[8]);
    size_t cost_asst = context_turn_tokens(&h->turns[9]);

    (void)state;
    /* Budget for exactly the last four turns (u a u a). */
    context_trim(h, 0, 2 * cost_user + 2 * cost_asst);
    assert_int_equal(h->n, 4);
    assert_string_equal(h->turns[0].content + 0, "m6          ");
    context_history_free(h);

    /* One token short of four: three fit, but the third-last is an
     * assistant turn, so only the last user/assistant pair stays. */
    h = make_history(10, 0, 10);
    context_trim(h, 0, 2 * cost_user + 2 * cost_asst - 1);
    assert_int_equal(h->n, 2);
    assert_string_equal(h->turns[0].role, "user");
    context_history_free(h);

    /* Smaller than the newest turn: nothing survives. */
    h = make_history(4, 0, 10);
    context_trim(h, 0, 1);
    assert_int_equal(h->n, 0);
    assert_null(h->turns);
    context_history_free(h);

    /* Turn and token limits together: the tighter one wins. */
    h = make_history(10, 0, 10);
    context_trim(h, 2, 1000);
    assert_int_equal(h->n, 2);
    context_history_free(h);
}

static void test_orphan_rule(void **state)
{
    struct history *h;

    (void)state;
    /* Starts with the bot's own greeting and fits: kept whole. */
    h = make_history(5, 1, 0);
    assert_int_equal(context_keep_from(h, 0, 0), 0);
    context_trim(h, 10, 1000);
    assert_int_equal(h->n, 5);
    assert_string_equal(h->turns[0].role, "assistant");
    context_history_free(h);

    /* Several assistant turns in a row after the cut all go. */
    h = make_history(6, 0, 0);
    free(h->turns[2].role);
    h->turns[2].role = strdup("assistant");     /* u a a a u a */
    free(h->turns[4].role);
    h->turns[4].role = strdup("user");
    free(h->turns[3].role);
    h->turns[3].role = strdup("assistant");
    assert_int_equal(context_keep_from(h, 5, 0), 4);
    context_trim(h, 5, 0);
    assert_int_equal(h->n, 2);
    assert_string_equal(h->turns[0].content, "m4");
    context_history_free(h);

    /* Only assistant turns after the cut: empty. */
    h = make_history(3, 0, 0);    /* u a u */
    free(h->turns[2].role);
    h->turns[2].role = strdup("assistant");
    context_trim(h, 2, 0);
    assert_int_equal(h->n, 0);
    context_history_free(h);

    /* Empty and NULL histories are fine. */
    assert_int_equal(context_keep_from(NULL, 1, 1), 0);
    h = calloc(1, sizeof(*h));
    context_trim(h, 1, 1);
    assert_int_equal(h->n, 0);
    context_history_free(h);
    context_history_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_to_json_rejects_role),
        cmocka_unit_test(test_to_json_cleans_invalid_utf8),
        cmocka_unit_test(test_to_json_cuts_oversize),
        cmocka_unit_test(test_from_json_malformed),
        cmocka_unit_test(test_from_json_lenient),
        cmocka_unit_test(test_text_clean_cut),
        cmocka_unit_test(test_token_estimate),
        cmocka_unit_test(test_trim_by_turns),
        cmocka_unit_test(test_trim_by_tokens),
        cmocka_unit_test(test_orphan_rule),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
