/*
 * Unit tests of the Matrix /sync parser: real-shaped responses (Synapse
 * 1.66 output trimmed), mentions via m.mentions, text, pills and reply
 * fallbacks, threads, edits, notices, encrypted rooms, invites, and
 * hostile input (not JSON, wrong types, missing next_batch, oversize,
 * invalid UTF-8, deep nesting).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "matrix/matrix.h"
#include "status.h"

static const struct matrix_ident me = {
    "@parley:localhost", "parley", "Parley Bot"
};

/* Wrap one timeline event of room !r:localhost into a sync response. */
static char *wrap(const char *event)
{
    static const char fmt[] =
        "{\"next_batch\":\"s72_1\",\"rooms\":{\"join\":{\"!r:localhost\":"
        "{\"summary\":{\"m.joined_member_count\":3},"
        "\"state\":{\"events\":[{\"type\":\"m.room.member\","
        "\"state_key\":\"@alice:localhost\",\"sender\":\"@alice:localhost\","
        "\"event_id\":\"$m1\",\"content\":{\"membership\":\"join\","
        "\"displayname\":\"Alice\"}}]},"
        "\"timeline\":{\"limited\":false,\"events\":[%s]}}}}}";
    size_t n = strlen(fmt) + strlen(event) + 1;
    char *s = malloc(n);

    assert_non_null(s);
    snprintf(s, n, fmt, event);
    return s;
}

static int parse1(const char *event, struct matrix_batch *b)
{
    char *s = wrap(event);
    char err[128];
    int r = matrix_sync_parse(s, strlen(s), &me, b, err, sizeof(err));

    free(s);
    return r;
}

static void test_plain_message_unaddressed(void **state)
{
    struct matrix_batch b;

    (void)state;
    assert_int_equal(parse1("{\"type\":\"m.room.message\",\"event_id\":"
        "\"$e1\",\"sender\":\"@alice:localhost\",\"content\":{\"msgtype\":"
        "\"m.text\",\"body\":\"hello all\"}}", &b), PARLEY_OK);
    assert_string_equal(b.next_batch, "s72_1");
    assert_int_equal(b.n_items, 1);
    assert_int_equal(b.items[0].kind, MATRIX_ITEM_MESSAGE);
    assert_string_equal(b.items[0].room_id, "!r:localhost");
    assert_string_equal(b.items[0].event_id, "$e1");
    assert_string_equal(b.items[0].sender, "@alice:localhost");
    assert_string_equal(b.items[0].sender_name, "Alice");
    assert_string_equal(b.items[0].text, "hello all");
    assert_int_equal(b.items[0].mentioned, 0);
    assert_null(b.items[0].reply_to);
    assert_null(b.items[0].thread_id);
    assert_int_equal(b.n_rooms, 1);
    assert_int_equal(b.rooms[0].joined_members, 3);
    matrix_batch_free(&b);
}

static void test_mentions_field(void **state)
{
    struct matrix_batch b;

    (void)state;
    /* m.mentions lists the bot: addressed, even without the name. */
    assert_int_equal(parse1("{\"type\":\"m.room.message\",\"event_id\":"
        "\"$e1\",\"sender\":\"@alice:localhost\",\"content\":{\"msgtype\":"
        "\"m.text\",\"body\":\"hi\",\"m.mentions\":{\"user_ids\":"
        "[\"@bob:localhost\",\"@parley:localhost\"]}}}", &b), PARLEY_OK);
    assert_int_equal(b.items[0].mentioned, 1);
    matrix_batch_free(&b);
    /* m.mentions present without the bot: the text does not count. */
    assert_int_equal(parse1("{\"type\":\"m.room.message\",\"event_id\":"
        "\"$e1\",\"sender\":\"@alice:localhost\",\"content\":{\"msgtype\":"
        "\"m.text\",\"body\":\"parley is a word\",\"m.mentions\":{}}}", &b),
        PARLEY_OK);
    assert_int_equal(b.items[0].mentioned, 0);
    matrix_batch_free(&b);
    /* Wrong type for user_ids: not addressed, no crash. */
    assert_int_equal(parse1("{\"type\":\"m.room.message\",\"event_id\":"
        "\"$e1\",\"sender\":\"@alice:localhost\",\"content\":{\"msgtype\":"
        "\"m.text\",\"body\":\"hi\",\"m.mentions\":{\"user_ids\":"
        "\"@parley:localhost\"}}}", &b), PARLEY_OK);
    assert_int_equal(b.items[0].mentioned, 0);
    matrix_batch_free(&b);
}

static void test_text_mentions(void **state)
{
    struct matrix_batch b;

    (void)state;
    assert_int_equal(parse1("{\"type\":\"m.room.message\",\"event_id\":"
        "\"$e1\",\"sender\":\"@alice:localhost\",\"content\":{\"msgtype\":"
        "\"m.text\",\"body\":\"Parley Bot: what time is it?\"}}", &b),
        PARLEY_OK);
    assert_int_equal(b.items[0].mentioned, 1);
    matrix_batch_free(&b);
    /* Pill in formatted_body only (the body says "Bot"). */
    assert_int_equal(parse1("{\"type\":\"m.room.message\",\"event_id\":"
        "\"$e1\",\"sender\":\"@alice:localhost\",\"content\":{\"msgtype\":"
        "\"m.text\",\"body\":\"Bot: hi\",\"format\":"
        "\"org.matrix.custom.html\",\"formatted_body\":\"<a href=\\\""
        "https://matrix.to/#/@parley:localhost\\\">Bot</a>: hi\"}}", &b),
        PARLEY_OK);
    assert_int_equal(b.items[0].mentioned, 1);
    matrix_batch_free(&b);
    /* Part of a longer word is not a mention. */
    assert_int_equal(parse1("{\"type\":\"m.room.message\",\"event_id\":"
        "\"$e1\",\"sender\":\"@alice:localhost\",\"content\":{\"msgtype\":"
        "\"m.text\",\"body\":\"parleying is fun\"}}", &b), PARLEY_OK);
    assert_int_equal(b.items[0].mentioned, 0);
    matrix_batch_free(&b);
}

static void test_reply_fallback(void **state)
{
    struct matrix_batch b;

    (void)state;
    assert_int_equal(parse1("{\"type\":\"m.room.message\",\"event_id\":"
        "\"$e2\",\"sender\":\"@alice:localhost\",\"content\":{\"msgtype\":"
        "\"m.text\",\"body\":\"> <@parley:localhost> old answer\\n> more"
        "\\n\\nthanks, and why?\",\"format\":\"org.matrix.custom.html\","
        "\"formatted_body\":\"<mx-reply><blockquote><a href=\\\"https://"
        "matrix.to/#/@parley:localhost\\\">x</a></blockquote></mx-reply>"
        "thanks, and why?\",\"m.relates_to\":{\"m.in_reply_to\":"
        "{\"event_id\":\"$bot1\"}}}}", &b), PARLEY_OK);
    assert_string_equal(b.items[0].text, "thanks, and why?");
    assert_string_equal(b.items[0].reply_to, "$bot1");
    assert_int_equal(b.items[0].reply_names_bot, 1);
    /* The pill sits inside <mx-reply>: not a mention. */
    assert_int_equal(b.items[0].mentioned, 0);
    matrix_batch_free(&b);
    /* A quote that is not a reply stays. */
    assert_int_equal(parse1("{\"type\":\"m.room.message\",\"event_id\":"
        "\"$e3\",\"sender\":\"@alice:localhost\",\"content\":{\"msgtype\":"
        "\"m.text\",\"body\":\"> quoted\\n\\nmine\"}}", &b), PARLEY_OK);
    assert_string_equal(b.items[0].text, "> quoted\n\nmine");
    matrix_batch_free(&b);
}

static void test_thread(void **state)
{
    struct matrix_batch b;

    (void)state;
    assert_int_equal(parse1("{\"type\":\"m.room.message\",\"event_id\":"
        "\"$t2\",\"sender\":\"@alice:localhost\",\"content\":{\"msgtype\":"
        "\"m.text\",\"body\":\"parley: in thread\",\"m.relates_to\":"
        "{\"rel_type\":\"m.thread\",\"event_id\":\"$root\","
        "\"is_falling_back\":true,\"m.in_reply_to\":{\"event_id\":"
        "\"$last\"}}}}", &b), PARLEY_OK);
    assert_string_equal(b.items[0].thread_id, "$root");
    assert_null(b.items[0].reply_to);   /* fallback, not a real reply */
    assert_int_equal(b.items[0].mentioned, 1);
    matrix_batch_free(&b);
}

static void test_skipped_kinds(void **state)
{
    struct matrix_batch b;

    (void)state;
    /* Edit, notice, own message, image, no body, bad ids. */
    assert_int_equal(parse1(
        "{\"type\":\"m.room.message\",\"event_id\":\"$a\",\"sender\":"
        "\"@alice:localhost\",\"content\":{\"msgtype\":\"m.text\",\"body\":"
        "\"* parley hi\",\"m.new_content\":{},\"m.relates_to\":{"
        "\"rel_type\":\"m.replace\",\"event_id\":\"$x\"}}},"
        "{\"type\":\"m.room.message\",\"event_id\":\"$b\",\"sender\":"
        "\"@otherbot:localhost\",\"content\":{\"msgtype\":\"m.notice\","
        "\"body\":\"parley hi\"}},"
        "{\"type\":\"m.room.message\",\"event_id\":\"$c\",\"sender\":"
        "\"@parley:localhost\",\"content\":{\"msgtype\":\"m.text\","
        "\"body\":\"parley\"}},"
        "{\"type\":\"m.room.message\",\"event_id\":\"$d\",\"sender\":"
        "\"@alice:localhost\",\"content\":{\"msgtype\":\"m.image\","
        "\"body\":\"x.png\"}},"
        "{\"type\":\"m.room.message\",\"event_id\":\"$e\",\"sender\":"
        "\"@alice:localhost\",\"content\":{\"msgtype\":\"m.text\"}},"
        "{\"type\":\"m.room.message\",\"event_id\":\"nodollar\",\"sender\":"
        "\"@alice:localhost\",\"content\":{\"msgtype\":\"m.text\","
        "\"body\":\"x\"}},"
        "{\"type\":\"m.room.message\",\"event_id\":42,\"sender\":[],"
        "\"content\":\"x\"},"
        "17, null, \"str\"", &b), PARLEY_OK);
    assert_int_equal(b.n_items, 0);
    assert_true(b.n_skipped >= 8);
    matrix_batch_free(&b);
}

static void test_members_and_encrypted(void **state)
{
    struct matrix_batch b;

    (void)state;
    assert_int_equal(parse1(
        "{\"type\":\"m.room.member\",\"event_id\":\"$j3\",\"state_key\":"
        "\"@parley:localhost\",\"sender\":\"@parley:localhost\",\"content\":"
        "{\"membership\":\"join\"}},"
        "{\"type\":\"m.room.member\",\"event_id\":\"$j1\",\"state_key\":"
        "\"@carol:localhost\",\"sender\":\"@carol:localhost\",\"content\":"
        "{\"membership\":\"join\",\"displayname\":\"Carol\"}},"
        "{\"type\":\"m.room.member\",\"event_id\":\"$j2\",\"state_key\":"
        "\"@carol:localhost\",\"sender\":\"@carol:localhost\",\"content\":"
        "{\"membership\":\"join\",\"displayname\":\"C.\"},\"unsigned\":"
        "{\"prev_content\":{\"membership\":\"join\"}}},"
        "{\"type\":\"m.room.encrypted\",\"event_id\":\"$x1\",\"sender\":"
        "\"@alice:localhost\",\"content\":{}},"
        "{\"type\":\"m.room.encrypted\",\"event_id\":\"$x2\",\"sender\":"
        "\"@alice:localhost\",\"content\":{}}", &b), PARLEY_OK);
    /* The bot's own join (its greeting); Carol's join; her rename is not
     * an arrival; one ENCRYPTED item per room and batch, then each
     * encrypted event as a CIPHERTEXT item (content kept as JSON). */
    assert_int_equal(b.n_items, 5);
    assert_int_equal(b.items[3].kind, MATRIX_ITEM_CIPHERTEXT);
    assert_string_equal(b.items[3].event_id, "$x1");
    assert_string_equal(b.items[3].cipher, "{}");
    assert_int_equal(b.items[4].kind, MATRIX_ITEM_CIPHERTEXT);
    assert_string_equal(b.items[4].event_id, "$x2");
    assert_int_equal(b.items[0].kind, MATRIX_ITEM_JOIN);
    assert_string_equal(b.items[0].sender, "@parley:localhost");
    assert_int_equal(b.items[1].kind, MATRIX_ITEM_JOIN);
    assert_string_equal(b.items[1].sender, "@carol:localhost");
    assert_string_equal(b.items[1].sender_name, "Carol");
    assert_string_equal(b.items[1].event_id, "$j1");
    assert_int_equal(b.items[2].kind, MATRIX_ITEM_ENCRYPTED);
    matrix_batch_free(&b);
}

static void test_history_before_own_join(void **state)
{
    struct matrix_batch b;

    (void)state;
    assert_int_equal(parse1(
        "{\"type\":\"m.room.member\",\"event_id\":\"$j0\",\"state_key\":"
        "\"@carol:localhost\",\"sender\":\"@carol:localhost\",\"content\":"
        "{\"membership\":\"join\"}},"
        "{\"type\":\"m.room.message\",\"event_id\":\"$old\",\"sender\":"
        "\"@carol:localhost\",\"content\":{\"msgtype\":\"m.text\","
        "\"body\":\"parley, before you came\"}},"
        "{\"type\":\"m.room.member\",\"event_id\":\"$me\",\"state_key\":"
        "\"@parley:localhost\",\"sender\":\"@parley:localhost\","
        "\"content\":{\"membership\":\"join\"},\"unsigned\":{"
        "\"prev_content\":{\"membership\":\"invite\"}}},"
        "{\"type\":\"m.room.message\",\"event_id\":\"$new\",\"sender\":"
        "\"@carol:localhost\",\"content\":{\"msgtype\":\"m.text\","
        "\"body\":\"parley, now\"}}", &b), PARLEY_OK);
    assert_int_equal(b.n_items, 2);
    assert_string_equal(b.items[0].event_id, "$me");
    assert_string_equal(b.items[1].event_id, "$new");
    matrix_batch_free(&b);
}

static void test_invite(void **state)
{
    static const char s[] =
        "{\"next_batch\":\"n1\",\"rooms\":{\"invite\":{\"!inv:localhost\":"
        "{\"invite_state\":{\"events\":[{\"type\":\"m.room.name\","
        "\"state_key\":\"\",\"sender\":\"@admin:localhost\",\"content\":"
        "{\"name\":\"x\"}},{\"type\":\"m.room.member\",\"state_key\":"
        "\"@parley:localhost\",\"sender\":\"@admin:localhost\",\"content\":"
        "{\"membership\":\"invite\",\"is_direct\":true}}]}},"
        "\"!other:localhost\":{\"invite_state\":{\"events\":[{\"type\":"
        "\"m.room.member\",\"state_key\":\"@someone:localhost\",\"sender\":"
        "\"@x:localhost\",\"content\":{\"membership\":\"invite\"}}]}},"
        "\"bad\":{},\"!w:localhost\":[]}}}";
    struct matrix_batch b;
    char err[128];

    (void)state;
    assert_int_equal(matrix_sync_parse(s, strlen(s), &me, &b, err,
                                       sizeof(err)), PARLEY_OK);
    assert_int_equal(b.n_items, 1);
    assert_int_equal(b.items[0].kind, MATRIX_ITEM_INVITE);
    assert_string_equal(b.items[0].room_id, "!inv:localhost");
    assert_string_equal(b.items[0].sender, "@admin:localhost");
    assert_int_equal(b.items[0].is_direct, 1);
    matrix_batch_free(&b);
}

/* m.room.encryption in the state (a room joined or synced afresh) marks
 * the room encrypted before its events: a greeting for a join in the same
 * batch must not go out in plaintext. */
static void test_encryption_state(void **state)
{
    static const char s[] =
        "{\"next_batch\":\"n\",\"rooms\":{\"join\":{\"!e:localhost\":"
        "{\"state\":{\"events\":[{\"type\":\"m.room.encryption\","
        "\"state_key\":\"\",\"sender\":\"@alice:localhost\",\"content\":"
        "{\"algorithm\":\"m.megolm.v1.aes-sha2\"}}]},"
        "\"timeline\":{\"events\":[{\"type\":\"m.room.member\","
        "\"state_key\":\"@bob:localhost\",\"sender\":\"@bob:localhost\","
        "\"event_id\":\"$j\",\"content\":{\"membership\":\"join\"}},"
        "{\"type\":\"m.room.encrypted\",\"event_id\":\"$x\",\"sender\":"
        "\"@bob:localhost\",\"content\":{}}]}},"
        "\"!p:localhost\":{\"state\":{\"events\":[{\"type\":"
        "\"m.room.encryption\",\"state_key\":\"x\",\"content\":{}}]}}}}}";
    struct matrix_batch b;
    char err[128];

    (void)state;
    assert_int_equal(matrix_sync_parse(s, strlen(s), &me, &b, err,
                                       sizeof(err)), PARLEY_OK);
    assert_int_equal(b.n_items, 3);
    assert_int_equal(b.items[0].kind, MATRIX_ITEM_ENCRYPTED);
    assert_string_equal(b.items[0].room_id, "!e:localhost");
    assert_int_equal(b.items[1].kind, MATRIX_ITEM_JOIN);
    assert_int_equal(b.items[2].kind, MATRIX_ITEM_CIPHERTEXT);
    matrix_batch_free(&b);
}

/* The E2EE key counters: top-ups are driven by them. */
static void test_key_counts(void **state)
{
    static const struct { const char *json; long otk; int fb; } cases[] = {
        { "{\"next_batch\":\"n\"}", -1, -1 },
        { "{\"next_batch\":\"n\",\"device_one_time_keys_count\":"
          "{\"signed_curve25519\":17},"
          "\"device_unused_fallback_key_types\":[\"signed_curve25519\"]}",
          17, 1 },
        /* Synapse leaves out a zero count. */
        { "{\"next_batch\":\"n\",\"device_one_time_keys_count\":{},"
          "\"device_unused_fallback_key_types\":[]}", 0, 0 },
        { "{\"next_batch\":\"n\",\"device_one_time_keys_count\":"
          "{\"signed_curve25519\":-3},"
          "\"device_unused_fallback_key_types\":[5,null]}", 0, 0 },
    };
    struct matrix_batch b;
    char err[128];

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_int_equal(matrix_sync_parse(cases[i].json,
                                           strlen(cases[i].json), &me, &b,
                                           err, sizeof(err)), PARLEY_OK);
        assert_int_equal(b.otk_count, cases[i].otk);
        assert_int_equal(b.fallback_unused, cases[i].fb);
        matrix_batch_free(&b);
    }
}

/* device_lists.changed and .left: valid user ids, both lists, nothing
 * else; past MATRIX_DEVICE_LISTS_MAX, dl_all. */
static void test_device_lists(void **state)
{
    const char *json = "{\"next_batch\":\"n\",\"device_lists\":"
        "{\"changed\":[\"@a:hs\",\"not-a-user\",5,\"@b:hs\"],"
        "\"left\":[\"@c:hs\"]}}";
    struct matrix_batch b;
    char err[128], *big;
    size_t len = 0, cap = 64 + (MATRIX_DEVICE_LISTS_MAX + 5) * 16;

    (void)state;
    assert_int_equal(matrix_sync_parse(json, strlen(json), &me, &b, err,
                                       sizeof(err)), PARLEY_OK);
    assert_int_equal(b.n_dl_stale, 3);
    assert_string_equal(b.dl_stale[0], "@a:hs");
    assert_string_equal(b.dl_stale[1], "@b:hs");
    assert_string_equal(b.dl_stale[2], "@c:hs");
    assert_int_equal(b.dl_all, 0);
    matrix_batch_free(&b);

    big = malloc(cap);
    assert_non_null(big);
    len += (size_t)snprintf(big + len, cap - len,
                            "{\"next_batch\":\"n\",\"device_lists\":"
                            "{\"changed\":[");
    for (int i = 0; i < MATRIX_DEVICE_LISTS_MAX + 5; i++)
        len += (size_t)snprintf(big + len, cap - len, "%s\"@u%d:hs\"",
                                i ? "," : "", i);
    snprintf(big + len, cap - len, "]}}");
    assert_int_equal(matrix_sync_parse(big, strlen(big), &me, &b, err,
                                       sizeof(err)), PARLEY_OK);
    assert_int_equal(b.n_dl_stale, MATRIX_DEVICE_LISTS_MAX);
    assert_int_equal(b.dl_all, 1);
    matrix_batch_free(&b);
    free(big);
}

/* A kept undecryptable event appended to a batch for its retry. */
static void test_add_cipher(void **state)
{
    struct matrix_batch b;

    (void)state;
    memset(&b, 0, sizeof(b));
    assert_int_equal(matrix_batch_add_cipher(&b, "!r:hs", "$e", "@a:hs",
                                             NULL, "{\"x\":1}"), PARLEY_OK);
    assert_int_equal(matrix_batch_add_cipher(&b, "!r:hs", NULL, "@a:hs",
                                             NULL, "{}"), PARLEY_ERR_OTHER);
    assert_int_equal(b.n_items, 1);
    assert_int_equal(b.items[0].kind, MATRIX_ITEM_CIPHERTEXT);
    assert_string_equal(b.items[0].event_id, "$e");
    assert_string_equal(b.items[0].cipher, "{\"x\":1}");
    assert_null(b.items[0].sender_name);
    matrix_batch_free(&b);
}

static void test_hostile(void **state)
{
    static const char *bad[] = {
        "", "null", "[]", "{", "{\"next_batch\":5}", "{\"rooms\":{}}",
        "{\"next_batch\":\"\"}", "\"next_batch\"",
        "{\"next_batch\":\"x\",\"rooms\":{\"join\":{\"!r:l\":{\"timeline\":",
    };
    struct matrix_batch b;
    char err[128];
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        assert_int_equal(matrix_sync_parse(bad[i], strlen(bad[i]), &me, &b,
                                           err, sizeof(err)),
                         PARLEY_ERR_PROTOCOL);
        assert_true(err[0] != '\0');
        matrix_batch_free(&b);
    }
    /* Wrong types everywhere but a valid next_batch: empty batch. */
    {
        static const char s[] = "{\"next_batch\":\"n\",\"rooms\":{\"join\":"
            "[1,2],\"invite\":\"x\"}}";
        static const char t[] = "{\"next_batch\":\"n\",\"rooms\":{\"join\":"
            "{\"!r:l\":{\"timeline\":{\"events\":{\"a\":1}},\"summary\":"
            "{\"m.joined_member_count\":\"2\"}}}}}";

        assert_int_equal(matrix_sync_parse(s, strlen(s), &me, &b, err,
                                           sizeof(err)), PARLEY_OK);
        assert_int_equal(b.n_items, 0);
        matrix_batch_free(&b);
        assert_int_equal(matrix_sync_parse(t, strlen(t), &me, &b, err,
                                           sizeof(err)), PARLEY_OK);
        assert_int_equal(b.n_items, 0);
        assert_int_equal(b.n_rooms, 0);
        matrix_batch_free(&b);
    }
    /* Over the cap: refused before parsing. */
    assert_int_equal(matrix_sync_parse("{}", MATRIX_SYNC_BODY_MAX + 1, &me,
                                       &b, err, sizeof(err)),
                     PARLEY_ERR_TOO_LARGE);
    matrix_batch_free(&b);
}

static void test_invalid_utf8_body(void **state)
{
    struct matrix_batch b;

    (void)state;
    /* cJSON passes raw bytes through; the item text must be clean. */
    assert_int_equal(parse1("{\"type\":\"m.room.message\",\"event_id\":"
        "\"$e1\",\"sender\":\"@alice:localhost\",\"content\":{\"msgtype\":"
        "\"m.text\",\"body\":\"a\xff\xc0\x80z\"}}", &b), PARLEY_OK);
    assert_string_equal(b.items[0].text,
                        "a\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbdz");
    matrix_batch_free(&b);
}

static void test_deep_nesting(void **state)
{
    size_t depth = 5000, i, n = 2 * depth + 64;
    char *s = malloc(n);
    struct matrix_batch b;
    char err[128];
    size_t o = 0;

    (void)state;
    assert_non_null(s);
    o += (size_t)snprintf(s, n, "{\"next_batch\":\"n\",\"x\":");
    for (i = 0; i < depth; i++)
        s[o++] = '[';
    for (i = 0; i < depth; i++)
        s[o++] = ']';
    s[o++] = '}';
    s[o] = '\0';
    /* cJSON refuses past CJSON_NESTING_LIMIT: an error, not a crash. */
    assert_int_equal(matrix_sync_parse(s, o, &me, &b, err, sizeof(err)),
                     PARLEY_ERR_PROTOCOL);
    matrix_batch_free(&b);
    free(s);
}

static void test_many_items_capped(void **state)
{
    size_t count = MATRIX_SYNC_ITEMS_MAX + 10, i, o = 0;
    size_t n = count * 160 + 256;
    char *ev = malloc(n);
    struct matrix_batch b;

    (void)state;
    assert_non_null(ev);
    for (i = 0; i < count; i++)
        o += (size_t)snprintf(ev + o, n - o, "%s{\"type\":\"m.room.message\","
            "\"event_id\":\"$e%zu\",\"sender\":\"@a:localhost\",\"content\":"
            "{\"msgtype\":\"m.text\",\"body\":\"x\"}}", i ? "," : "", i);
    assert_int_equal(parse1(ev, &b), PARLEY_OK);
    assert_int_equal(b.n_items, MATRIX_SYNC_ITEMS_MAX);
    assert_int_equal(b.n_dropped, 10);
    matrix_batch_free(&b);
    free(ev);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_message_unaddressed),
        cmocka_unit_test(test_mentions_field),
        cmocka_unit_test(test_text_mentions),
        cmocka_unit_test(test_reply_fallback),
        cmocka_unit_test(test_thread),
        cmocka_unit_test(test_skipped_kinds),
        cmocka_unit_test(test_members_and_encrypted),
        cmocka_unit_test(test_history_before_own_join),
        cmocka_unit_test(test_invite),
        cmocka_unit_test(test_encryption_state),
        cmocka_unit_test(test_key_counts),
        cmocka_unit_test(test_device_lists),
        cmocka_unit_test(test_add_cipher),
        cmocka_unit_test(test_hostile),
        cmocka_unit_test(test_invalid_utf8_body),
        cmocka_unit_test(test_deep_nesting),
        cmocka_unit_test(test_many_items_capped),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
