/*
 * prompt_build: exact order, roles and contents of the message list for a
 * plain turn, first contact with a greeting, a room's system prompt,
 * few-shot pairs, history over the token budget, a pure greeting, and
 * hostile text (invalid UTF-8, control bytes).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <cjson/cJSON.h>

#include "config.h"
#include "context.h"
#include "prompt.h"

/* Assert arr has exactly n messages with these roles and contents
 * (pairs of strings). */
static void expect_messages(cJSON *arr, int n, ...)
{
    va_list ap;

    assert_non_null(arr);
    assert_true(cJSON_IsArray(arr));
    assert_int_equal(cJSON_GetArraySize(arr), n);
    va_start(ap, n);
    for (int i = 0; i < n; i++) {
        const char *role = va_arg(ap, const char *);
        const char *content = va_arg(ap, const char *);
        cJSON *msg = cJSON_GetArrayItem(arr, i);
        cJSON *r = cJSON_GetObjectItemCaseSensitive(msg, "role");
        cJSON *c = cJSON_GetObjectItemCaseSensitive(msg, "content");

        assert_true(cJSON_IsString(r));
        assert_true(cJSON_IsString(c));
        assert_string_equal(r->valuestring, role);
        assert_string_equal(c->valuestring, content);
        /* Only role and content: no optional fields some servers reject. */
        assert_int_equal(cJSON_GetArraySize(msg), 2);
    }
    va_end(ap);
}

static struct turn mk(const char *role, const char *name,
                      const char *content)
{
    struct turn t = { (char *)role, (char *)name, (char *)content, 0 };

    return t;
}

static void test_plain_turn(void **state)
{
    struct prompt_input in = { .bot_name = "parley", .system = "SYS",
                               .greeting = "GREET", .first_contact = 0,
                               .user_name = "alice", .user_text = "hello" };
    cJSON *arr;

    (void)state;
    arr = prompt_build(&in);
    expect_messages(arr, 2, "system", "SYS", "user", "alice: hello");
    cJSON_Delete(arr);

    /* No speaker name: the text alone. */
    in.user_name = NULL;
    arr = prompt_build(&in);
    expect_messages(arr, 2, "system", "SYS", "user", "hello");
    cJSON_Delete(arr);
    in.user_name = "";
    arr = prompt_build(&in);
    expect_messages(arr, 2, "system", "SYS", "user", "hello");
    cJSON_Delete(arr);

    /* No system prompt at all: no empty system message. */
    in.system = NULL;
    arr = prompt_build(&in);
    expect_messages(arr, 1, "user", "hello");
    cJSON_Delete(arr);
}

static void test_first_contact_greeting(void **state)
{
    struct prompt_input in = { .system = "SYS", .greeting = "Say hi.",
                               .first_contact = 1, .user_name = "bob",
                               .user_text = "who are you?" };
    cJSON *arr;

    (void)state;
    arr = prompt_build(&in);
    expect_messages(arr, 2, "system", "SYS\n\nSay hi.",
                    "user", "bob: who are you?");
    cJSON_Delete(arr);

    /* Greeting but no system prompt: the greeting alone. */
    in.system = "";
    arr = prompt_build(&in);
    expect_messages(arr, 2, "system", "Say hi.", "user", "bob: who are you?");
    cJSON_Delete(arr);

    /* First contact with greetings off (NULL): plain system prompt. */
    in.system = "SYS";
    in.greeting = NULL;
    arr = prompt_build(&in);
    expect_messages(arr, 2, "system", "SYS", "user", "bob: who are you?");
    cJSON_Delete(arr);
}

static void test_room_system_override(void **state)
{
    /* The router chooses the room's prompt; prompt_build uses it as is. */
    struct prompt_input in = { .system = "You are the #rust helper.",
                               .user_text = "hi" };
    cJSON *arr = prompt_build(&in);

    (void)state;
    expect_messages(arr, 2, "system", "You are the #rust helper.",
                    "user", "hi");
    cJSON_Delete(arr);
}

static void test_fewshot(void **state)
{
    struct config_fewshot shots[] = {
        { "What is 2+2?", "4." },
        { NULL, "skipped: incomplete pair" },
        { "Capital of France?", "Paris." },
    };
    struct turn turns[] = { mk("user", "eve", "earlier"),
                            mk("assistant", NULL, "answer") };
    struct history h = { turns, 2 };
    struct prompt_input in = { .system = "SYS", .fewshot = shots,
                               .n_fewshot = 3, .history = &h,
                               .user_name = "eve", .user_text = "now" };
    cJSON *arr = prompt_build(&in);

    (void)state;
    expect_messages(arr, 8, "system", "SYS",
                    "user", "What is 2+2?", "assistant", "4.",
                    "user", "Capital of France?", "assistant", "Paris.",
                    "user", "eve: earlier", "assistant", "answer",
                    "user", "eve: now");
    cJSON_Delete(arr);
}

static void test_history_over_budget(void **state)
{
    struct turn turns[] = {
        mk("user", "ann", "first question, long enough to cost tokens"),
        mk("assistant", "parley", "first answer"),
        mk("user", "bob", "second"),
        mk("assistant", NULL, "second answer"),
        mk("user", "ann", "third"),
        mk("assistant", NULL, "third answer"),
    };
    struct history h = { turns, 6 };
    struct prompt_input in = { .system = "SYS", .history = &h,
                               .user_name = "bob", .user_text = "fourth" };
    size_t last3 = context_turn_tokens(&turns[3]) +
                   context_turn_tokens(&turns[4]) +
                   context_turn_tokens(&turns[5]);
    cJSON *arr;

    (void)state;
    /* Unlimited: everything, names on user turns only. */
    arr = prompt_build(&in);
    expect_messages(arr, 8, "system", "SYS",
                    "user", "ann: first question, long enough to cost tokens",
                    "assistant", "first answer",
                    "user", "bob: second", "assistant", "second answer",
                    "user", "ann: third", "assistant", "third answer",
                    "user", "bob: fourth");
    cJSON_Delete(arr);

    /* Room for the last three turns: the third-last is the answer to a
     * dropped question, so it goes as well. */
    in.max_history_tokens = last3;
    arr = prompt_build(&in);
    expect_messages(arr, 4, "system", "SYS", "user", "ann: third",
                    "assistant", "third answer", "user", "bob: fourth");
    cJSON_Delete(arr);

    /* Room for four: starts at a user turn. */
    in.max_history_tokens = last3 + context_turn_tokens(&turns[2]);
    arr = prompt_build(&in);
    expect_messages(arr, 6, "system", "SYS", "user", "bob: second",
                    "assistant", "second answer", "user", "ann: third",
                    "assistant", "third answer", "user", "bob: fourth");
    cJSON_Delete(arr);

    /* A budget too small for any turn: no history, the new turn stays. */
    in.max_history_tokens = 1;
    arr = prompt_build(&in);
    expect_messages(arr, 2, "system", "SYS", "user", "bob: fourth");
    cJSON_Delete(arr);

    /* The caller's history is not modified. */
    assert_int_equal(h.n, 6);
    assert_string_equal(turns[0].content,
                        "first question, long enough to cost tokens");
}

static void test_pure_greeting(void **state)
{
    struct prompt_input in = { .bot_name = "parley", .system = "SYS",
                               .greeting = "Greet warmly, invite questions.",
                               .first_contact = 1, .user_text = NULL };
    cJSON *arr;

    (void)state;
    arr = prompt_build(&in);
    expect_messages(arr, 2,
                    "system", "SYS\n\nGreet warmly, invite questions.",
                    "user", "(You have just joined this room. "
                            "Greet everyone.)");
    cJSON_Delete(arr);

    /* A newcomer to greet. */
    in.user_name = "carol";
    arr = prompt_build(&in);
    expect_messages(arr, 2,
                    "system", "SYS\n\nGreet warmly, invite questions.",
                    "user", "(carol has just joined the room. Greet them.)");
    cJSON_Delete(arr);
}

static void test_hostile_text(void **state)
{
    struct turn turns[] = { mk("user", "x\xff", "bad \xc0\xaf bytes"),
                            mk("system", NULL, "injected system turn") };
    struct history h = { turns, 2 };
    struct prompt_input in = { .system = "S\xed\xa0\x80", .history = &h,
                               .user_name = "mallory",
                               .user_text = "line1\r\nline2\x01 \xf8" };
    cJSON *arr = prompt_build(&in);
    char *printed;

    (void)state;
    /* Invalid UTF-8 becomes U+FFFD; a non user/assistant history turn is
     * dropped; control bytes are kept (JSON escapes them). */
    expect_messages(arr, 3, "system", "S\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd",
                    "user", "x\xef\xbf\xbd: bad \xef\xbf\xbd\xef\xbf\xbd bytes",
                    "user", "mallory: line1\r\nline2\x01 \xef\xbf\xbd");
    printed = cJSON_PrintUnformatted(arr);
    assert_non_null(printed);
    assert_null(strchr(printed, '\n'));
    assert_null(strchr(printed, '\r'));
    free(printed);
    cJSON_Delete(arr);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_turn),
        cmocka_unit_test(test_first_contact_greeting),
        cmocka_unit_test(test_room_system_override),
        cmocka_unit_test(test_fewshot),
        cmocka_unit_test(test_history_over_budget),
        cmocka_unit_test(test_pure_greeting),
        cmocka_unit_test(test_hostile_text),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
