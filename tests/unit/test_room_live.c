/*
 * One busy room (room.c), live: a real redis-server and the OpenAI
 * stand-in, the real router.  Different people in one room are answered
 * in parallel (the stand-in's own records prove the model requests
 * overlap; no test here asserts a wall-clock time), one person's
 * messages in order, within context.max_parallel_per_room; greetings go
 * first; a !reset while answers are in flight keeps them out of the
 * history; a full queue sends the busy note only to a person who asked;
 * and the per-user limit counts commands and !more and is announced once
 * a window.
 */
#include "router_fixture.h"

static const char slow_script[] =
    "[{\"when_contains\": \"slow\", \"delay\": 1.0, \"repeat\": true}]";

/* Index of the first message sent with this text, or -1. */
static int sent_index(struct fixture *f, const char *text)
{
    for (size_t i = 0; i < f->n_sent; i++)
        if (strcmp(f->sent[i].text, text) == 0)
            return (int)i;
    return -1;
}

static long long redis_int(struct fixture *f, const char *fmt,
                           const char *arg)
{
    redisReply *r = redis_query(f, fmt, arg);
    long long v;

    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    v = r->integer;
    freeReplyObject(r);
    return v;
}

static void senders_in_one_room_run_in_parallel(void **state)
{
    struct fixture *f = *state;
    char sender[16], text[32], want[64];
    struct event ev;

    stub_script(f, slow_script);
    for (int i = 0; i < 8; i++) {
        snprintf(sender, sizeof(sender), "u%d", i);
        snprintf(text, sizeof(text), "slow question %d", i);
        ev = message("#busy", sender, text);
        router_submit(f->router, &ev);
    }
    assert_true(run_until(f, idle, 20000));
    assert_int_equal(f->n_sent, 8);
    /* Each person got exactly their own answer. */
    for (int i = 0; i < 8; i++) {
        int at;

        snprintf(want, sizeof(want), "echo: u%d: slow question %d", i, i);
        at = sent_index(f, want);
        assert_true(at >= 0);
        snprintf(sender, sizeof(sender), "u%d", i);
        assert_string_equal(f->sent[at].mention, sender);
    }
    /* All eight were with the model at once (the default bound is 8). */
    assert_int_equal(stub_max_in_flight(f), 8);
    /* Eight pairs, none interleaved: user, assistant, user, ... */
    {
        redisReply *r = redis_query(f, "LRANGE r:ctx:fake:acct:#busy 0 -1");

        assert_int_equal(r->elements, 16);
        for (size_t i = 0; i < r->elements; i += 2) {
            char q[64];
            const char *u = strstr(r->element[i]->str, "slow question ");

            assert_non_null(strstr(r->element[i]->str, "\"user\""));
            assert_non_null(u);
            /* The answer right after is to this very question. */
            snprintf(q, sizeof(q), "%.16s", u);
            assert_non_null(strstr(r->element[i + 1]->str, "\"assistant\""));
            assert_non_null(strstr(r->element[i + 1]->str, q));
        }
        freeReplyObject(r);
    }
}

static void one_person_is_answered_in_order(void **state)
{
    struct fixture *f = *state;
    struct event ev;
    int a1, a2, b1;

    stub_script(f, slow_script);
    ev = message("#q", "ann", "slow first");
    router_submit(f->router, &ev);
    ev = message("#q", "ann", "quick second");
    router_submit(f->router, &ev);
    ev = message("#q", "ben", "slow other");
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 10000));
    a1 = sent_index(f, "echo: ann: slow first");
    a2 = sent_index(f, "echo: ann: quick second");
    b1 = sent_index(f, "echo: ben: slow other");
    assert_true(a1 >= 0 && a2 >= 0 && b1 >= 0);
    /* ann's follow-up waited for her first answer... */
    assert_true(a1 < a2);
    /* ...while ben's question ran beside hers. */
    assert_int_equal(stub_max_in_flight(f), 2);
}

static void parallelism_is_bounded_per_room(void **state)
{
    struct fixture *f = *state;
    char sender[16];
    struct event ev;

    f->cfg.context.max_parallel_per_room = 2;
    stub_script(f, slow_script);
    for (int i = 0; i < 5; i++) {
        snprintf(sender, sizeof(sender), "p%d", i);
        ev = message("#two", sender, "slow");
        router_submit(f->router, &ev);
    }
    /* Another room is not held back by this one's bound. */
    ev = message("#other", "zed", "slow");
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 20000));
    assert_int_equal(f->n_sent, 6);
    assert_int_equal(stub_max_in_flight(f), 3);
}

static void greetings_go_before_answers(void **state)
{
    struct fixture *f = *state;
    struct event ev;

    ev = message("#hi", "parley", NULL);
    ev.kind = EVENT_JOIN;
    ev.self = 1;
    ev.addressed = 0;
    router_submit(f->router, &ev);
    ev = message("#hi", "ann", "quick hello");
    router_submit(f->router, &ev);
    ev = message("#hi", "bob", "quick hi");
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 10000));
    assert_int_equal(f->n_sent, 3);
    assert_non_null(strstr(f->sent[0].text, "Greet everyone"));
    assert_string_equal(f->sent[0].mention, "");
}

static void reset_keeps_answers_in_flight_out_of_history(void **state)
{
    struct fixture *f = *state;
    struct event ev;

    stub_script(f, slow_script);
    ev = message("#r", "ann", "slow question before the reset");
    router_submit(f->router, &ev);
    ev = message("#r", "bob", "!reset");
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 10000));
    /* Both delivered... */
    assert_int_equal(f->n_sent, 2);
    assert_true(sent_index(f, "echo: ann: slow question before the "
                           "reset") >= 0);
    assert_true(sent_index(f, "Done: I've forgotten this room's "
                           "conversation.") >= 0);
    /* ...but nothing from before the reset is in the history. */
    assert_int_equal(redis_int(f, "LLEN %s", "r:ctx:fake:acct:#r"), 0);
    /* A question after the reset is kept as usual. */
    ev = message("#r", "ann", "quick after");
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 10000));
    assert_int_equal(redis_int(f, "LLEN %s", "r:ctx:fake:acct:#r"), 2);
}

static void busy_note_only_for_a_question_that_overflows(void **state)
{
    struct fixture *f = *state;
    char sender[16];
    struct event ev;
    int notes = 0;

    f->cfg.context.max_parallel_per_room = 1;
    stub_script(f, slow_script);
    /* One slow question runs; ROUTER_ROOM_QUEUE_MAX wait behind it. */
    for (int i = 0; i <= ROUTER_ROOM_QUEUE_MAX; i++) {
        snprintf(sender, sizeof(sender), "w%d", i);
        ev = message("#full", sender, i == 0 ? "slow" : "quick");
        router_submit(f->router, &ev);
    }
    /* The queue is full.  A context line and a newcomer are dropped
     * quietly; a question gets the busy note, at once. */
    ev = message("#full", "amb", "just saying");
    ev.addressed = 0;
    ev.ambient = 1;
    router_submit(f->router, &ev);
    ev = message("#full", "newbie", NULL);
    ev.kind = EVENT_JOIN;
    ev.addressed = 0;
    router_submit(f->router, &ev);
    ev = message("#full", "late", "one more question");
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 30000));
    assert_int_equal(f->n_sent, ROUTER_ROOM_QUEUE_MAX + 2);
    for (size_t i = 0; i < f->n_sent; i++) {
        if (strstr(f->sent[i].text, "still answering")) {
            notes++;
            assert_string_equal(f->sent[i].mention, "late");
            assert_true(f->sent[i].notice);
        }
    }
    assert_int_equal(notes, 1);
}

static void limits_count_commands_and_notify_once(void **state)
{
    struct fixture *f = *state;
    struct event ev;
    int notices = 0;

    f->ad.ops = &fake_ops_more;
    f->more_result = PARLEY_OK;
    f->cfg.limits.user_requests_per_minute = 3;
    ev = message("#lim", "fred", "!help");
    router_submit(f->router, &ev);
    ev = message("#lim", "fred", "!more");
    router_submit(f->router, &ev);
    ev = message("#lim", "fred", "quick question");
    router_submit(f->router, &ev);
    /* Over the limit from here: one notice, then silence. */
    for (int i = 0; i < 4; i++) {
        ev = message("#lim", "fred", i % 2 ? "!stats" : "quick again");
        router_submit(f->router, &ev);
    }
    assert_true(run_until(f, idle, 10000));
    assert_int_equal(f->more_calls, 1);
    /* !help, the answer, the notice (!more was sent by the adapter). */
    assert_int_equal(f->n_sent, 3);
    for (size_t i = 0; i < f->n_sent; i++)
        if (strstr(f->sent[i].text, "faster"))
            notices++;
    assert_int_equal(notices, 1);
    /* !help lists !more where the adapter has it. */
    assert_non_null(strstr(f->sent[0].text, "!more"));
}

static void more_needs_the_capability(void **state)
{
    struct fixture *f = *state;
    struct event ev;

    /* Without the op, a bare !more belongs to someone else... */
    ev = message("#m", "ann", "!more");
    ev.addressed = 0;
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 5000));
    assert_int_equal(f->n_sent, 0);
    /* ...and !help does not offer it. */
    ev = message("#m", "ann", "!help");
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 5000));
    assert_null(strstr(f->sent[0].text, "!more"));
    /* With it, and nothing left to show, the person is told. */
    f->ad.ops = &fake_ops_more;
    f->more_result = PARLEY_ERR_STATE;
    ev = message("#m", "ann", "!more");
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 5000));
    assert_int_equal(f->more_calls, 1);
    assert_string_equal(f->sent[1].text, "There is nothing more to show.");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            senders_in_one_room_run_in_parallel, setup, teardown),
        cmocka_unit_test_setup_teardown(one_person_is_answered_in_order,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(parallelism_is_bounded_per_room,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(greetings_go_before_answers,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            reset_keeps_answers_in_flight_out_of_history, setup, teardown),
        cmocka_unit_test_setup_teardown(
            busy_note_only_for_a_question_that_overflows, setup, teardown),
        cmocka_unit_test_setup_teardown(
            limits_count_commands_and_notify_once, setup, teardown),
        cmocka_unit_test_setup_teardown(more_needs_the_capability, setup,
                                        teardown),
    };

    spawn_require("/usr/bin/redis-server");
    spawn_require("/usr/bin/python3");
    return cmocka_run_group_tests(tests, NULL, NULL);
}
