/*
 * Tests for src/event.c and src/status.c: room keys at and beyond their
 * bounds (the buffer and EVENT_ROOM_KEY_MAX), malformed events, and the
 * deep copy the router keeps, which must survive the adapter's buffers
 * being reused and free cleanly under ASan.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "event.h"
#include "status.h"

static void
test_room_key(void **state)
{
    struct event ev = {
        .platform = "irc", .account = "libera", .room = "#parley",
    };
    char buf[EVENT_ROOM_KEY_MAX];

    assert_int_equal(event_room_key(&ev, buf, sizeof(buf)), PARLEY_OK);
    assert_string_equal(buf, "irc:libera:#parley");

    /* No account: the field stays, empty, so keys cannot collide. */
    ev.account = NULL;
    assert_int_equal(event_room_key(&ev, buf, sizeof(buf)), PARLEY_OK);
    assert_string_equal(buf, "irc::#parley");

    ev.platform = "matrix";
    ev.account = "@bot:example.org";
    ev.room = "!abc:example.org";
    assert_int_equal(event_room_key(&ev, buf, sizeof(buf)), PARLEY_OK);
    assert_string_equal(buf, "matrix:@bot:example.org:!abc:example.org");
}

static void
test_room_key_bounds(void **state)
{
    struct event ev = { .platform = "irc", .account = "n", .room = "#c" };
    char small[16];
    char room[EVENT_ROOM_KEY_MAX + 8];
    char *big;
    size_t need = strlen("irc:n:#c");

    /* Exactly fits, NUL included. */
    assert_int_equal(event_room_key(&ev, small, need + 1), PARLEY_OK);
    assert_string_equal(small, "irc:n:#c");
    /* One short: an error and an empty string, never a cut key. */
    memset(small, 'X', sizeof(small));
    assert_int_equal(event_room_key(&ev, small, need), PARLEY_ERR_TOO_LARGE);
    assert_string_equal(small, "");
    assert_int_equal(event_room_key(&ev, small, 1), PARLEY_ERR_TOO_LARGE);
    assert_string_equal(small, "");
    assert_int_equal(event_room_key(&ev, small, 0), PARLEY_ERR_PROTOCOL);

    /* A key of EVENT_ROOM_KEY_MAX - 1 bytes is the longest allowed, even
     * into a bigger buffer. */
    big = malloc(4 * EVENT_ROOM_KEY_MAX);
    assert_non_null(big);
    memset(room, 'r', sizeof(room));
    room[EVENT_ROOM_KEY_MAX - 1 - strlen("irc:n:")] = '\0';
    ev.room = room;
    assert_int_equal(event_room_key(&ev, big, 4 * EVENT_ROOM_KEY_MAX),
                     PARLEY_OK);
    assert_int_equal(strlen(big), EVENT_ROOM_KEY_MAX - 1);
    room[EVENT_ROOM_KEY_MAX - 1 - strlen("irc:n:")] = 'r';
    room[EVENT_ROOM_KEY_MAX - strlen("irc:n:")] = '\0';
    assert_int_equal(event_room_key(&ev, big, 4 * EVENT_ROOM_KEY_MAX),
                     PARLEY_ERR_TOO_LARGE);
    assert_string_equal(big, "");
    free(big);
}

/* The longest ids the Matrix spec allows (255 bytes each) with a thread
 * room ("<room>/<thread root>", thread_context): the key fits, so the
 * router never refuses such an event for its key (issue 12). */
static void
test_room_key_matrix_spec_max(void **state)
{
    char account[256], room[2 * 255 + 2], key[EVENT_ROOM_KEY_MAX];
    struct event ev = { .platform = "matrix" };

    (void)state;
    memset(account, 'a', 255);
    account[0] = '@';
    account[255] = '\0';
    memset(room, 'r', sizeof(room) - 1);
    room[0] = '!';
    room[255] = '/';
    room[256] = '$';
    room[sizeof(room) - 1] = '\0';
    assert_int_equal(strlen(room), 511);
    ev.account = account;
    ev.room = room;
    assert_int_equal(event_room_key(&ev, key, sizeof(key)), PARLEY_OK);
    assert_int_equal(strlen(key), 7 + 255 + 1 + 511);
}

static void
test_room_key_malformed(void **state)
{
    struct event ev = { .platform = "irc", .account = "n", .room = "#c" };
    char buf[64] = "unchanged";

    assert_int_equal(event_room_key(NULL, buf, sizeof(buf)),
                     PARLEY_ERR_PROTOCOL);
    assert_string_equal(buf, "");
    ev.platform = NULL;
    assert_int_equal(event_room_key(&ev, buf, sizeof(buf)),
                     PARLEY_ERR_PROTOCOL);
    ev.platform = "irc";
    ev.room = NULL;
    assert_int_equal(event_room_key(&ev, buf, sizeof(buf)),
                     PARLEY_ERR_PROTOCOL);
    ev.room = "#c";
    assert_int_equal(event_room_key(&ev, NULL, 10), PARLEY_ERR_PROTOCOL);
}

static void
test_dup_full(void **state)
{
    char text[] = "hello bot";
    char sender[] = "alice";
    struct event ev = {
        .kind = EVENT_MESSAGE, .platform = "matrix",
        .account = "@bot:hs", .room = "!r:hs", .sender = sender,
        .sender_name = "Alice", .text = text, .event_id = "$ev1",
        .thread_id = "$root", .reply_to = "$prev", .addressed = 1,
        .self = 0, .from_bot = 1, .is_admin = 1,
    };
    struct event *copy = event_dup(&ev);

    assert_non_null(copy);
    /* The adapter reuses its buffers after router_submit returns. */
    memset(text, 'X', sizeof(text) - 1);
    memset(sender, 'Y', sizeof(sender) - 1);
    assert_int_equal(copy->kind, EVENT_MESSAGE);
    assert_string_equal(copy->platform, "matrix");
    assert_string_equal(copy->account, "@bot:hs");
    assert_string_equal(copy->room, "!r:hs");
    assert_string_equal(copy->sender, "alice");
    assert_string_equal(copy->sender_name, "Alice");
    assert_string_equal(copy->text, "hello bot");
    assert_string_equal(copy->event_id, "$ev1");
    assert_string_equal(copy->thread_id, "$root");
    assert_string_equal(copy->reply_to, "$prev");
    assert_ptr_not_equal(copy->text, ev.text);
    assert_ptr_not_equal(copy->platform, ev.platform);
    assert_int_equal(copy->addressed, 1);
    assert_int_equal(copy->self, 0);
    assert_int_equal(copy->from_bot, 1);
    assert_int_equal(copy->is_admin, 1);
    event_free(copy);
}

static void
test_dup_sparse(void **state)
{
    struct event ev = {
        .kind = EVENT_JOIN, .platform = "irc", .room = "#c",
        .sender = "bob", .self = 1,
    };
    struct event *copy = event_dup(&ev);
    char key[EVENT_ROOM_KEY_MAX];

    assert_non_null(copy);
    assert_int_equal(copy->kind, EVENT_JOIN);
    assert_null(copy->account);
    assert_null(copy->sender_name);
    assert_null(copy->text);
    assert_null(copy->event_id);
    assert_null(copy->thread_id);
    assert_null(copy->reply_to);
    assert_int_equal(copy->self, 1);
    /* The copy names the same room. */
    assert_int_equal(event_room_key(copy, key, sizeof(key)), PARLEY_OK);
    assert_string_equal(key, "irc::#c");
    event_free(copy);

    /* Empty strings stay empty strings, not NULL. */
    ev.text = "";
    copy = event_dup(&ev);
    assert_non_null(copy);
    assert_string_equal(copy->text, "");
    event_free(copy);

    assert_null(event_dup(NULL));
    event_free(NULL);
}

/* A large message copies whole (the cap on text is the adapters'). */
static void
test_dup_large(void **state)
{
    size_t n = 256 * 1024;
    char *text = malloc(n + 1);
    struct event ev = { .platform = "console", .room = "stdin" };
    struct event *copy;

    assert_non_null(text);
    memset(text, 'z', n);
    text[n] = '\0';
    ev.text = text;
    copy = event_dup(&ev);
    assert_non_null(copy);
    assert_int_equal(strlen(copy->text), n);
    free(text);
    event_free(copy);
}

/* The copy inside a caller's block (a job keeps its event in its own
 * allocation): exactly event_dup_size bytes are written, ASan checks
 * that, and the picture's bytes and strings come along. */
static void
test_dup_into(void **state)
{
    static const unsigned char png[] = { 0x89, 'P', 'N', 'G', 1, 2, 3 };
    struct event_attachment att = {
        .name = "cat.png", .mime = "image/png", .size = sizeof(png),
        .data = png, .len = sizeof(png), .ref = "mxc://hs/cat"
    };
    struct event ev = {
        .kind = EVENT_MESSAGE, .platform = "matrix", .account = "@bot:hs",
        .room = "!r:hs", .sender = "@alice:hs", .text = "look",
        .event_id = "$e", .limit_key = "alice@host", .addressed = 1,
        .attachment = &att
    };
    struct event_attachment big = { .len = EVENT_ATTACHMENT_MAX + 1,
                                    .data = png };
    size_t n = event_dup_size(&ev);
    struct event *copy;
    char *block;

    assert_true(n > sizeof(struct event) + sizeof(att) + sizeof(png));
    block = malloc(n);
    assert_non_null(block);
    copy = event_dup_into(block, &ev);
    assert_ptr_equal(copy, block);
    assert_string_equal(copy->platform, "matrix");
    assert_string_equal(copy->account, "@bot:hs");
    assert_string_equal(copy->room, "!r:hs");
    assert_string_equal(copy->sender, "@alice:hs");
    assert_string_equal(copy->text, "look");
    assert_string_equal(copy->event_id, "$e");
    assert_string_equal(copy->limit_key, "alice@host");
    assert_null(copy->sender_name);
    assert_null(copy->thread_id);
    assert_int_equal(copy->addressed, 1);
    assert_non_null(copy->attachment);
    assert_ptr_not_equal(copy->attachment, &att);
    assert_int_equal(copy->attachment->len, sizeof(png));
    assert_memory_equal(copy->attachment->data, png, sizeof(png));
    assert_ptr_not_equal(copy->attachment->data, png);
    assert_string_equal(copy->attachment->name, "cat.png");
    assert_string_equal(copy->attachment->mime, "image/png");
    assert_string_equal(copy->attachment->ref, "mxc://hs/cat");
    /* Everything the copy points to is inside the block. */
    assert_true((char *)copy->attachment->ref < block + n);
    assert_true(copy->limit_key + strlen(copy->limit_key) < block + n);
    free(block);

    /* What event_dup refuses has no size. */
    ev.attachment = &big;
    assert_int_equal(event_dup_size(&ev), 0);
    assert_int_equal(event_dup_size(NULL), 0);
}

static void
test_status_names(void **state)
{
    assert_string_equal(parley_status_name(PARLEY_OK), "ok");
    assert_string_equal(parley_status_name(PARLEY_ERR_IO), "io");
    assert_string_equal(parley_status_name(PARLEY_ERR_EOF), "eof");
    assert_string_equal(parley_status_name(PARLEY_ERR_PROTOCOL),
                        "protocol");
    assert_string_equal(parley_status_name(PARLEY_ERR_OOM), "oom");
    assert_string_equal(parley_status_name(PARLEY_ERR_TIMEOUT), "timeout");
    assert_string_equal(parley_status_name(PARLEY_ERR_TOO_LARGE),
                        "too_large");
    assert_string_equal(parley_status_name(PARLEY_ERR_CONFIG), "config");
    assert_string_equal(parley_status_name(PARLEY_ERR_HTTP), "http");
    assert_string_equal(parley_status_name(PARLEY_ERR_STATE), "state");
    assert_string_equal(parley_status_name(PARLEY_ERR_OTHER), "other");
    assert_string_equal(parley_status_name(-1), "unknown");
    assert_string_equal(parley_status_name(1000), "unknown");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_room_key),
        cmocka_unit_test(test_room_key_bounds),
        cmocka_unit_test(test_room_key_matrix_spec_max),
        cmocka_unit_test(test_room_key_malformed),
        cmocka_unit_test(test_dup_full),
        cmocka_unit_test(test_dup_sparse),
        cmocka_unit_test(test_dup_large),
        cmocka_unit_test(test_dup_into),
        cmocka_unit_test(test_status_names),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
