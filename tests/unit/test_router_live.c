/*
 * The router end to end in one process: a real redis-server and the
 * OpenAI stand-in on loopback, the real store, llm and router on a uv
 * loop, and a fake adapter that records what the router sends.  Covers
 * what the console cannot show: several rooms at once (order inside a
 * room, overlap between rooms), durable submission with job records and
 * dedupe, greetings with their cooldown, what is ignored, and the
 * per-user rate limit.
 */
#include <time.h>

#include "router_fixture.h"

static void rooms_keep_order_and_run_in_parallel(void **state)
{
    struct fixture *f = *state;
    struct event ev;
    const struct sent *a1, *a2, *b1, *b2;
    uint64_t t0;

    stub_script(f, "[{\"when_contains\": \"slow\", \"delay\": 1.0, "
                "\"repeat\": true}]");
    uv_update_time(&f->uv);
    t0 = uv_now(&f->uv);
    ev = message("#a", "ann", "slow a1");
    router_submit(f->router, &ev);
    ev = message("#a", "ann", "quick a2");
    router_submit(f->router, &ev);
    ev = message("#b", "ben", "slow b1");
    router_submit(f->router, &ev);
    ev = message("#b", "ben", "quick b2");
    router_submit(f->router, &ev);
    assert_int_equal(router_pending(f->router), 4);
    assert_true(run_until(f, idle, 10000));
    assert_int_equal(f->n_sent, 4);
    a1 = find_sent(f, "echo: ann: slow a1");
    a2 = find_sent(f, "echo: ann: quick a2");
    b1 = find_sent(f, "echo: ben: slow b1");
    b2 = find_sent(f, "echo: ben: quick b2");
    assert_non_null(a1);
    assert_non_null(a2);
    assert_non_null(b1);
    assert_non_null(b2);
    /* Within a room: the quick second question waits for the slow first
     * one, so answers come in question order. */
    assert_true(a1 < a2);
    assert_true(b1 < b2);
    assert_true(a2->at_ms >= a1->at_ms);
    /* Between rooms: both slow answers were in flight together, so the
     * second room's slow answer did not wait for the first's. */
    assert_true(b1->at_ms - t0 < 1900);
    assert_true(a1->at_ms - t0 < 1900);
    assert_string_equal(a1->mention, "ann");
}

static void accepted_cb(int status, void *privdata)
{
    struct fixture *f = privdata;

    f->accepted_status = status;
    f->accepted_calls++;
}

static int accepted_once(struct fixture *f)
{
    return f->accepted_calls > 0;
}

static void durable_submit_records_job_and_dedupes(void **state)
{
    struct fixture *f = *state;
    struct event ev = message("!room:hs", "@u:hs", "hello durable");
    redisReply *r;

    ev.event_id = "$ev1";
    router_submit_durable(f->router, &ev, accepted_cb, f);
    assert_true(run_until(f, accepted_once, 5000));
    assert_int_equal(f->accepted_status, PARLEY_OK);
    /* The job exists before the answer: a crash now loses nothing. */
    r = redis_query(f, "HGET r:job:$ev1 text");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_string_equal(r->str, "hello durable");
    freeReplyObject(r);
    assert_true(run_until(f, idle, 5000));
    assert_int_equal(f->n_sent, 1);
    assert_string_equal(f->sent[0].in_reply_to, "$ev1");
    r = redis_query(f, "HGETALL r:job:$ev1");
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    freeReplyObject(r);
    r = redis_query(f, "HGET r:job:$ev1 state");
    assert_string_equal(r->str, "done");
    freeReplyObject(r);
    r = redis_query(f, "HGET r:job:$ev1 answer");
    assert_string_equal(r->str, "echo: @u:hs: hello durable");
    freeReplyObject(r);

    /* The same event again (a sync replay): accepted, not answered. */
    f->accepted_calls = 0;
    router_submit_durable(f->router, &ev, accepted_cb, f);
    assert_true(run_until(f, accepted_once, 5000));
    assert_int_equal(f->accepted_status, PARLEY_OK);
    assert_true(run_until(f, idle, 5000));
    assert_int_equal(f->n_sent, 1);

    /* Plain submit with an id dedupes too. */
    ev.event_id = "$ev2";
    router_submit(f->router, &ev);
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 5000));
    assert_int_equal(f->n_sent, 2);
}

static void greetings_once_and_only_in_quiet_rooms(void **state)
{
    struct fixture *f = *state;
    struct event ev = message("#new", "parley", NULL);

    ev.kind = EVENT_JOIN;
    ev.self = 1;
    ev.addressed = 0;
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 5000));
    assert_int_equal(f->n_sent, 1);
    assert_non_null(strstr(f->sent[0].text, "echo: "));
    assert_string_equal(f->sent[0].mention, "");

    /* The room now has a conversation: no second room greeting. */
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 5000));
    assert_int_equal(f->n_sent, 1);

    /* Someone joins: greeted once, then the cooldown holds. */
    ev = message("#new", "dora", NULL);
    ev.kind = EVENT_JOIN;
    ev.addressed = 0;
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 5000));
    assert_int_equal(f->n_sent, 2);
    assert_string_equal(f->sent[1].mention, "dora");
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 5000));
    assert_int_equal(f->n_sent, 2);
}

/* The router decides from the adapter's greet settings and the facts
 * the adapter reports (who joined, how many are in the room). */
static void greeting_policy_from_adapter_settings(void **state)
{
    struct fixture *f = *state;
    struct event ev = message("#pol", "parley", NULL);

    ev.kind = EVENT_JOIN;
    ev.self = 1;
    ev.addressed = 0;
    f->ad.greet.on_join = 0;
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 5000));
    assert_int_equal(f->n_sent, 0);

    ev = message("#pol", "ann", NULL);
    ev.kind = EVENT_JOIN;
    ev.addressed = 0;
    ev.members = 5;
    f->ad.greet.new_members = 0;
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 5000));
    assert_int_equal(f->n_sent, 0);
    /* Too big a room for greeting arrivals... */
    f->ad.greet.new_members = 1;
    f->ad.greet.members_max = 4;
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 5000));
    assert_int_equal(f->n_sent, 0);
    /* ...small enough, or no limit. */
    ev.members = 4;
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 5000));
    assert_int_equal(f->n_sent, 1);
    assert_string_equal(f->sent[0].mention, "ann");
    ev = message("#pol", "bea", NULL);
    ev.kind = EVENT_JOIN;
    ev.addressed = 0;
    ev.members = 500;
    f->ad.greet.members_max = 0;
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 5000));
    assert_int_equal(f->n_sent, 2);
}

static void greeting_falls_back_to_a_fixed_text(void **state)
{
    struct fixture *f = *state;
    struct event ev = message("#down", "parley", NULL);

    stub_script(f, "[{\"status\": 503, \"repeat\": true}]");
    ev.kind = EVENT_JOIN;
    ev.self = 1;
    ev.addressed = 0;
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 5000));
    assert_int_equal(f->n_sent, 1);
    assert_string_equal(f->sent[0].text, "Hello everyone! I'm parley. What "
                        "topic would you like to explore today?");
    assert_false(f->sent[0].notice);
}

static void greeting_command_turns_greetings_off(void **state)
{
    struct fixture *f = *state;
    struct event ev = message("#quiet", "op", "!greeting off");
    redisReply *r;

    ev.is_admin = 1;
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 5000));
    assert_string_equal(f->sent[0].text, "Greetings are off.");
    r = redis_query(f, "HGET r:room:fake:acct:#quiet greeting");
    assert_string_equal(r->str, "off");
    freeReplyObject(r);
    ev = message("#quiet", "newbie", NULL);
    ev.kind = EVENT_JOIN;
    ev.addressed = 0;
    router_submit(f->router, &ev);
    ev = message("#quiet", "parley", NULL);
    ev.kind = EVENT_JOIN;
    ev.self = 1;
    ev.addressed = 0;
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 5000));
    assert_int_equal(f->n_sent, 1);     /* nobody greeted */
    ev = message("#quiet", "someone", "!greeting on");
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 5000));
    assert_string_equal(f->sent[1].text, "Only room operators can change "
                        "that.");
}

static void ignored_events(void **state)
{
    struct fixture *f = *state;
    struct event ev;

    ev = message("#x", "eve", "just chatting");
    ev.addressed = 0;
    router_submit(f->router, &ev);
    ev = message("#x", "parley", "my own words");
    ev.self = 1;
    router_submit(f->router, &ev);
    ev = message("#x", "otherbot", "beep");
    ev.from_bot = 1;
    router_submit(f->router, &ev);
    ev = message("#x", "eve", "!dice 2d6");
    ev.addressed = 0;
    router_submit(f->router, &ev);
    ev = message("#x", "eve", "");
    router_submit(f->router, &ev);
    ev = message("#x", "eve", "hi");
    ev.platform = "elsewhere";
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 3000));
    assert_int_equal(f->n_sent, 0);

    ev = message("#x", "eve", "!dice 2d6");
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 3000));
    assert_int_equal(f->n_sent, 1);
    assert_true(f->sent[0].notice);
    assert_non_null(strstr(f->sent[0].text, "Unknown command"));

    /* !system needs an admin. */
    ev = message("#x", "eve", "!system be rude");
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 3000));
    assert_non_null(strstr(f->sent[1].text, "Only room operators"));
}

static void rate_limit_answers_with_a_notice(void **state)
{
    struct fixture *f = *state;
    struct event ev = message("#r", "fred", "question");

    f->cfg.limits.user_requests_per_minute = 2;
    for (int i = 0; i < 3; i++)
        router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 5000));
    assert_int_equal(f->n_sent, 3);
    assert_false(f->sent[0].notice);
    assert_false(f->sent[1].notice);
    assert_true(f->sent[2].notice);
    assert_non_null(strstr(f->sent[2].text, "faster"));
    /* Someone else is not affected. */
    ev = message("#r", "gina", "question");
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 5000));
    assert_false(f->sent[3].notice);
    /* A limit key (IRC user@host without an account) is what counts: a
     * new nick on the same host gets no fresh budget. */
    ev = message("#r", "hal", "question");
    ev.limit_key = "@~hal@host";
    router_submit(f->router, &ev);
    ev.sender = "hal2";
    router_submit(f->router, &ev);
    ev.sender = "hal3";
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 5000));
    assert_int_equal(f->n_sent, 7);
    /* Different senders run in parallel: the notice may come first. */
    assert_int_equal(f->sent[4].notice + f->sent[5].notice +
                     f->sent[6].notice, 1);
}

/* The daily token budget is read with the settings and the history, in
 * one round trip; a spent budget gets the notice and no model call. */
static void daily_budget_is_enforced(void **state)
{
    struct fixture *f = *state;
    struct event ev = message("#bud", "fred", "first question");
    char day[16], key[128];
    time_t now = time(NULL);
    struct tm tm;
    redisReply *r;

    f->cfg.limits.user_daily_tokens = 1000;
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 5000));
    assert_int_equal(f->n_sent, 1);
    assert_false(f->sent[0].notice);
    /* The answer's tokens were counted. */
    gmtime_r(&now, &tm);
    strftime(day, sizeof(day), "%Y-%m-%d", &tm);
    snprintf(key, sizeof(key), "r:usage:%s:fake:acct:fred", day);
    r = redis_query(f, "HGET %s tokens", key);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_true(strtoll(r->str, NULL, 10) > 0);
    freeReplyObject(r);
    /* Spend the rest of the day's budget. */
    r = redis_query(f, "HSET %s tokens 1000", key);
    freeReplyObject(r);
    ev = message("#bud", "fred", "second question");
    router_submit(f->router, &ev);
    ev = message("#bud", "gina", "her question");
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 5000));
    assert_int_equal(f->n_sent, 3);
    assert_non_null(find_sent(f, "You have used today's token budget. It "
                              "resets at midnight UTC."));
    /* Someone else's budget is their own. */
    assert_non_null(find_sent(f, "echo: gina: her question"));
    r = redis_query(f, "LLEN r:ctx:fake:acct:#bud");
    assert_int_equal(r->integer, 4);    /* fred's first and gina's pair */
    freeReplyObject(r);
}

/* Who may switch models is a setting (operators by default), and a
 * room's stored model is checked against allowed_models when used. */
static void model_switch_and_recheck(void **state)
{
    struct fixture *f = *state;
    struct event ev = message("#mod", "eve", "!model gpt-4o-mini");
    redisReply *r;

    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 5000));
    assert_string_equal(f->sent[0].text,
                        "Only room operators can change the model.");
    /* An operator may; the listing needs no rights. */
    ev.is_admin = 1;
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 5000));
    assert_string_equal(f->sent[1].text, "Model for this room: "
                        "gpt-4o-mini.");
    /* With model_switch = everyone, anyone may. */
    free(f->cfg.llm.model_switch);
    f->cfg.llm.model_switch = xstrdup("everyone");
    ev.is_admin = 0;
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 5000));
    assert_string_equal(f->sent[2].text, "Model for this room: "
                        "gpt-4o-mini.");
    /* A model stored before allowed_models changed is not used. */
    r = redis_query(f, "HSET r:room:fake:acct:#mod model %s", "retired-1");
    freeReplyObject(r);
    stub_reset(f);
    ev = message("#mod", "eve", "which model?");
    router_submit(f->router, &ev);
    ev = message("#mod", "eve", "!model");
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 5000));
    assert_non_null(strstr(f->sent[4].text, "Current model: gpt-4o-mini"));
    {
        static char buf[1 << 16];

        stub_http(f, "GET", "/_control/requests", "", buf, sizeof(buf));
        assert_null(strstr(buf, "retired-1"));
        assert_non_null(strstr(buf, "\"model\": \"gpt-4o-mini\""));
    }
}

static void long_text_is_cut_on_a_character(void **state)
{
    struct fixture *f = *state;
    size_t len = 20000 * 2;
    char *text = malloc(len + 1);
    struct event ev;
    redisReply *r;

    assert_non_null(text);
    for (size_t i = 0; i < len; i += 2)
        memcpy(text + i, "\xc3\xa9", 2);      /* U+00E9, two bytes */
    text[len] = '\0';
    ev = message("#long", "lou", text);
    router_submit(f->router, &ev);
    free(text);     /* the router keeps its own copy */
    assert_true(run_until(f, idle, 5000));
    assert_int_equal(f->n_sent, 1);
    r = redis_query(f, "LINDEX r:ctx:fake:acct:#long 0");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    /* ROUTER_TEXT_MAX bytes of whole characters, plus the JSON frame. */
    assert_true(r->len > ROUTER_TEXT_MAX - 2);
    assert_true(r->len < ROUTER_TEXT_MAX + 200);
    assert_non_null(strstr(r->str, "\xc3\xa9\""));
    freeReplyObject(r);
}

static void ambient_lines_become_context(void **state)
{
    struct fixture *f = *state;
    struct event ev = message("#amb", "ann", "the meeting moved to 3pm");
    redisReply *r;

    ev.addressed = 0;
    ev.ambient = 1;
    router_submit(f->router, &ev);
    ev = message("#amb", "bob", "when is the meeting?");
    router_submit(f->router, &ev);
    assert_true(run_until(f, idle, 5000));
    /* Only the question is answered... */
    assert_int_equal(f->n_sent, 1);
    /* ...and the line said before it is in the history, in its place. */
    r = redis_query(f, "LRANGE r:ctx:fake:acct:#amb 0 -1");
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    assert_int_equal(r->elements, 3);
    assert_non_null(strstr(r->element[0]->str, "the meeting moved"));
    assert_non_null(strstr(r->element[1]->str, "when is the meeting"));
    freeReplyObject(r);
}

static int sent_two(struct fixture *f)
{
    return f->n_sent >= 2 && router_pending(f->router) == 0;
}

static void resume_unfinished_jobs(void **state)
{
    struct fixture *f = *state;
    redisReply *r;

    r = redis_query(f, "HSET r:job:$p state pending kind chat platform fake "
                    "account acct room !q:hs sender @a:hs text %s",
                    "still waiting");
    freeReplyObject(r);
    r = redis_query(f, "HSET r:job:$s state answered kind chat platform "
                    "fake account acct room !q:hs sender @a:hs text q "
                    "answer %s notice 0", "the stored answer");
    freeReplyObject(r);
    r = redis_query(f, "HSET r:job:$d state done kind chat platform fake "
                    "account acct room !q:hs sender @a:hs text %s",
                    "answered long ago");
    freeReplyObject(r);
    r = redis_query(f, "HSET r:job:$g state pending kind greet platform "
                    "fake account acct room !new:hs sender parley");
    freeReplyObject(r);
    r = redis_query(f, "HSET r:job:$x state pending kind chat platform "
                    "gone account acct room !q:hs sender @a:hs text %s",
                    "for an adapter no longer configured");
    freeReplyObject(r);
    router_resume(f->router);
    assert_true(run_until(f, sent_two, 5000));
    /* Let anything extra arrive before counting. */
    assert_true(run_until(f, idle, 2000));
    assert_int_equal(f->n_sent, 3);
    /* The greeting a previous run accepted but never sent. */
    assert_non_null(find_sent(f, "echo: (You have just joined this room. "
                              "Greet everyone.)"));
    assert_non_null(find_sent(f, "echo: @a:hs: still waiting"));
    assert_non_null(find_sent(f, "the stored answer"));
    assert_string_equal(find_sent(f, "the stored answer")->in_reply_to,
                        "$s");
    r = redis_query(f, "HGET r:job:$p state");
    assert_string_equal(r->str, "done");
    freeReplyObject(r);
    r = redis_query(f, "HGET r:job:$s state");
    assert_string_equal(r->str, "done");
    freeReplyObject(r);
}

static void parse_command(void **state)
{
    char name[16];
    const char *arg = NULL;

    (void)state;
    assert_int_equal(router_parse_command("!Model  gpt-4o ", name,
                                          sizeof(name), &arg), 1);
    assert_string_equal(name, "model");
    assert_string_equal(arg, "gpt-4o ");
    assert_int_equal(router_parse_command("!reset", name, sizeof(name),
                                          &arg), 1);
    assert_string_equal(arg, "");
    assert_int_equal(router_parse_command("hello !reset", name,
                                          sizeof(name), &arg), 0);
    assert_int_equal(router_parse_command("!", name, sizeof(name), &arg), 0);
    assert_int_equal(router_parse_command("! reset", name, sizeof(name),
                                          &arg), 0);
    assert_int_equal(router_parse_command("!123", name, sizeof(name),
                                          &arg), 0);
    assert_int_equal(router_parse_command("!averyveryverylongcommandname",
                                          name, sizeof(name), &arg), 0);
    assert_int_equal(router_parse_command(NULL, name, sizeof(name), &arg),
                     0);
    assert_int_equal(router_parse_command("!x\tfoo", name, sizeof(name),
                                          &arg), 1);
    assert_string_equal(name, "x");
    assert_string_equal(arg, "foo");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(parse_command),
        cmocka_unit_test_setup_teardown(
            rooms_keep_order_and_run_in_parallel, setup, teardown),
        cmocka_unit_test_setup_teardown(
            durable_submit_records_job_and_dedupes, setup, teardown),
        cmocka_unit_test_setup_teardown(
            greetings_once_and_only_in_quiet_rooms, setup, teardown),
        cmocka_unit_test_setup_teardown(
            greeting_policy_from_adapter_settings, setup, teardown),
        cmocka_unit_test_setup_teardown(greeting_falls_back_to_a_fixed_text,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            greeting_command_turns_greetings_off, setup, teardown),
        cmocka_unit_test_setup_teardown(ignored_events, setup, teardown),
        cmocka_unit_test_setup_teardown(rate_limit_answers_with_a_notice,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(resume_unfinished_jobs, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(daily_budget_is_enforced, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(model_switch_and_recheck, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(long_text_is_cut_on_a_character,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(ambient_lines_become_context,
                                        setup, teardown),
    };

    spawn_require("/usr/bin/redis-server");
    spawn_require("/usr/bin/python3");
    return cmocka_run_group_tests(tests, NULL, NULL);
}
