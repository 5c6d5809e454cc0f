/*
 * The IRC adapter end to end, in process, against a real ngircd started
 * on a free port (plain and TLS with a CA made by the test) and against a
 * scripted server for SASL, with raw-socket clients as the people.  The
 * router is a recording stub (irc_harness.h), so this checks exactly what
 * the adapter submits and what reaches other users: addressing, queries,
 * operator status, formatting strip, Latin-1, CTCP, the 512-byte bound on
 * every relayed line, the more op (!more is the router's command),
 * injection attempts, flood pacing and fairness between channels and
 * between people, joins reported as facts with member counts,
 * kick/rejoin, nick collision and regain, server restart, ping timeout,
 * TLS verification, and SASL success, failure and ordering.
 * Skipped when ngircd is not installed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>

#include "irc_harness.h"
#include "irc/irc_config.h"
#include "irc/irc_text.h"

static struct h_server srv;
static int have_ngircd;

static void done_cb(int status, void *privdata)
{
    int *out = privdata;

    *out = status;
}

static int send_text(struct adapter *ad, const char *room, const char *text,
                     int *status)
{
    struct reply r;

    memset(&r, 0, sizeof(r));
    r.text = text;
    *status = -1;
    return ad->ops->send(ad, room, &r, done_cb, status);
}

static const char *basic_conf =
    "adapters = ( { type = \"irc\"; name = \"testnet\"; host = "
    "\"127.0.0.1\"; port = %d; tls = false; nick = \"parley\"; "
    "alt_nicks = [\"parley_\"]; channels = ( { name = \"#test\"; }, "
    "\"#two\" ); max_lines = 4; flood_burst = 4; flood_rate_ms = %d; "
    "rejoin_delay_ms = 200; ping_interval_s = 2; nick_regain_s = 1; "
    "reconnect_min_ms = 100; reconnect_max_ms = 400; %s } );";

static struct adapter *start_adapter(int port, int rate, const char *extra)
{
    char text[2048], err[512];
    struct adapter *ad = NULL;

    snprintf(text, sizeof(text), basic_conf, port, rate, extra);
    if (h_adapter_create(&ad, text, err, sizeof(err)) != PARLEY_OK) {
        fprintf(stderr, "create: %s\n", err);
        return NULL;
    }
    assert_int_equal(ad->ops->start(ad), PARLEY_OK);
    return ad;
}

static int setup(void **state)
{
    (void)state;
    h_loop_open();
    have_ngircd = spawn_have(NGIRCD);
    h_n_events = 0;
    h_log_len = 0;
    h_log[0] = '\0';
    memset(&srv, 0, sizeof(srv));
    srv.pid = -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (h_current)
        h_adapter_destroy(h_current);
    while (h_n_clients > 0)
        h_client_free(h_clients[0]);
    if (srv.pid > 0)
        h_ngircd_stop(&srv);
    if (srv.dir[0])
        h_rmtree(srv.dir);
    h_loop_close();
    return 0;
}

static void start_server(int tls)
{
    if (!have_ngircd)
        skip();
    assert_int_equal(h_mkdtemp(&srv), 0);
    srv.port = spawn_free_port();
    srv.tls_port = tls ? spawn_free_port() : 0;
    assert_int_equal(h_ngircd_start(&srv), 0);
}

/* Text of a PRIVMSG line ("... PRIVMSG target :text\r\n"). */
static const char *privmsg_text(const char *line, const char *target)
{
    char pat[128];
    const char *p;

    snprintf(pat, sizeof(pat), " PRIVMSG %s :", target);
    p = strstr(line, pat);
    return p ? p + strlen(pat) : NULL;
}

static void test_messages(void **state)
{
    struct h_client *alice, *bob;
    struct adapter *ad;
    const struct h_event *e;
    int i, n, st;

    (void)state;
    start_server(0);
    alice = h_client_connect(srv.port, "alice");
    assert_non_null(alice);
    h_client_send(alice, "JOIN #test");
    assert_true(h_wait_line(alice, 0, "366", 3000) >= 0);
    ad = start_adapter(srv.port, 100, "");
    assert_non_null(ad);
    assert_true(h_wait_line(alice, 0, ":parley!", 5000) >= 0);
    e = h_wait_event(EVENT_JOIN, NULL, 2000);
    assert_non_null(e);
    assert_int_equal(e->self, 1);
    assert_string_equal(e->room, "#test");
    assert_int_equal(ad->connected, 1);
    h_pump(200);

    /* Addressed by the channel operator: is_admin. */
    h_client_send(alice, "PRIVMSG #test :parley: hello there");
    e = h_wait_event(EVENT_MESSAGE, "hello there", 2000);
    assert_non_null(e);
    assert_string_equal(e->text, "hello there");
    assert_int_equal(e->addressed, 1);
    assert_int_equal(e->is_admin, 1);
    assert_string_equal(e->sender, "alice");
    assert_string_equal(e->room, "#test");
    /* Not addressed: not submitted (ambient_context is off). */
    h_client_send(alice, "PRIVMSG #test :just chatting");
    h_pump(300);
    assert_int_equal(h_count_events(EVENT_MESSAGE, "chatting"), 0);

    bob = h_client_connect(srv.port, "bob");
    assert_non_null(bob);
    h_client_send(bob, "JOIN #TEST");
    assert_true(h_wait_line(bob, 0, "366", 3000) >= 0);
    h_client_send(bob, "PRIVMSG #test :PARLEY, hi from bob");
    e = h_wait_event(EVENT_MESSAGE, "hi from bob", 2000);
    assert_non_null(e);
    assert_int_equal(e->is_admin, 0);
    assert_string_equal(e->room, "#test");
    /* Query: addressed; ngircd knows no accounts, so the room is the
     * folded nick and its holder's token, "bob~" and 16 hex digits. */
    h_client_send(bob, "PRIVMSG parley :a private word");
    e = h_wait_event(EVENT_MESSAGE, "a private word", 2000);
    assert_non_null(e);
    assert_int_equal(strncmp(e->room, "bob~", 4), 0);
    assert_int_equal(strlen(e->room), 20);
    assert_string_equal(e->sender, "bob");
    assert_int_equal(e->addressed, 1);
    /* No account: limits go by user@host, which a nick change keeps, so
     * /nick gives no fresh rate budget. */
    assert_string_equal(e->limit_key, "@~bob@127.0.0.1");
    h_client_send(bob, "NICK bobby");
    assert_true(h_wait_line(bob, 0, "NICK :bobby", 3000) >= 0);
    h_client_send(bob, "PRIVMSG #test :parley: renamed");
    e = h_wait_event(EVENT_MESSAGE, "renamed", 2000);
    assert_non_null(e);
    assert_string_equal(e->sender, "bobby");
    assert_string_equal(e->limit_key, "@~bob@127.0.0.1");
    n = bob->n;
    h_client_send(bob, "NICK bob");
    assert_true(h_wait_line(bob, n, "NICK :bob", 3000) >= 0);
    /* Formatting codes and Latin-1. */
    h_client_send(bob, "PRIVMSG #test :\x02parley\x02: \x03" "04,01red "
                  "caf\xe9");
    e = h_wait_event(EVENT_MESSAGE, "red caf", 2000);
    assert_non_null(e);
    assert_string_equal(e->text, "red caf\xc3\xa9");
    /* A bare command is passed on, unaddressed (the router knows which
     * commands are its own). */
    h_client_send(bob, "PRIVMSG #test :!help");
    e = h_wait_event(EVENT_MESSAGE, "!help", 2000);
    assert_non_null(e);
    assert_int_equal(e->addressed, 0);
    /* ACTION in a query is a message. */
    h_client_send(bob, "PRIVMSG parley :\x01" "ACTION waves\x01");
    e = h_wait_event(EVENT_MESSAGE, "* bob waves", 2000);
    assert_non_null(e);
    /* CTCP VERSION and PING are answered by NOTICE. */
    n = bob->n;
    h_client_send(bob, "PRIVMSG parley :\x01VERSION\x01");
    assert_true(h_wait_line(bob, n, "NOTICE bob :\x01VERSION parley", 3000)
                >= 0);
    h_client_send(bob, "PRIVMSG parley :\x01PING 12345\x01");
    assert_true(h_wait_line(bob, n, "NOTICE bob :\x01PING 12345\x01", 3000)
                >= 0);

    /* Injection attempts from the model. */
    n = alice->n;
    assert_int_equal(send_text(ad, "#test", "hi\r\nQUIT :bye", &st),
                     PARLEY_OK);
    i = h_wait_line(alice, n, "PRIVMSG #test :QUIT :bye", 3000);
    assert_true(i >= 0);
    assert_int_equal(st, PARLEY_OK);
    assert_int_equal(send_text(ad, "#test", "\x01" "ACTION x\x01", &st),
                     PARLEY_OK);
    assert_true(h_wait_line(alice, n, "PRIVMSG #test :ACTION x\r\n", 3000)
                >= 0);
    assert_int_equal(send_text(ad, "#test",
                               "\r\nPRIVMSG NickServ :IDENTIFY x", &st),
                     PARLEY_OK);
    assert_true(h_wait_line(alice, n, "PRIVMSG #test :PRIVMSG NickServ :",
                            3000) >= 0);
    assert_int_equal(send_text(ad, "#test", "still here", &st), PARLEY_OK);
    assert_true(h_wait_line(alice, n, "PRIVMSG #test :still here", 3000)
                >= 0);
    for (i = n; i < alice->n; i++) {
        if (strstr(alice->lines[i], ":parley!")) {
            assert_non_null(strstr(alice->lines[i], " PRIVMSG #test :"));
            assert_null(strchr(alice->lines[i], '\x01'));
        }
    }
    assert_int_equal(ad->connected, 1);
    /* A room name that would inject is refused outright. */
    assert_int_not_equal(send_text(ad, "#test QUIT", "x", &st), PARLEY_OK);
    assert_int_not_equal(send_text(ad, "#test\r\nQUIT", "x", &st),
                         PARLEY_OK);
    /* Markdown becomes plain text. */
    assert_int_equal(send_text(ad, "#test", "## Head\n**bold** and "
                               "[docs](http://x.y/)", &st), PARLEY_OK);
    assert_true(h_wait_line(alice, n, "PRIVMSG #test :bold and docs "
                            "(http://x.y/)", 3000) >= 0);
    /* The person answered is addressed in a channel, if a real nick. */
    {
        struct reply r;

        memset(&r, 0, sizeof(r));
        r.text = "with mention";
        r.mention = "bob";
        assert_int_equal(ad->ops->send(ad, "#test", &r, done_cb, &st),
                         PARLEY_OK);
        assert_true(h_wait_line(alice, n, "PRIVMSG #test :bob: with "
                                "mention", 3000) >= 0);
        r.text = "odd mention";
        r.mention = "bob\r\nQUIT";
        assert_int_equal(ad->ops->send(ad, "#test", &r, done_cb, &st),
                         PARLEY_OK);
        assert_true(h_wait_line(alice, n, "PRIVMSG #test :odd mention",
                                3000) >= 0);
    }
    /* Queries are answered to the nick. */
    n = bob->n;
    assert_int_equal(send_text(ad, "bob", "private answer", &st), PARLEY_OK);
    assert_true(h_wait_line(bob, n, "PRIVMSG bob :private answer", 3000)
                >= 0);
    h_adapter_destroy(ad);
}

static void test_long_answer_and_more(void **state)
{
    struct h_client *alice;
    struct adapter *ad;
    char *text = malloc(4096), *joined = calloc(1, 65536), *want;
    const char *parts[] = {"Emoji \xf0\x9f\x98\x80\xf0\x9f\x8e\x89 and ",
                           "CJK \xe4\xb8\xad\xe6\x96\x87\xe5\xad\x97 text ",
                           "plain words here "};
    size_t w = 0, k = 0, i, j;
    int n, st, got = 0, rounds = 0;

    (void)state;
    if (!have_ngircd) {
        free(text);
        free(joined);
        skip();
    }
    assert_non_null(text);
    assert_non_null(joined);
    while (w < 3000) {
        const char *p = parts[k++ % 3];

        if (k % 40 == 0)
            p = "\n";
        memcpy(text + w, p, strlen(p));
        w += strlen(p);
    }
    text[w] = '\0';
    start_server(0);
    alice = h_client_connect(srv.port, "alice");
    h_client_send(alice, "JOIN #test");
    assert_true(h_wait_line(alice, 0, "366", 3000) >= 0);
    ad = start_adapter(srv.port, 50, "");
    assert_non_null(ad);
    assert_true(h_wait_line(alice, 0, ":parley!", 5000) >= 0);
    n = alice->n;
    assert_int_equal(send_text(ad, "#test", text, &st), PARLEY_OK);
    for (;;) {
        int hint = h_wait_line(alice, n, "more lines: say !more", 2500);
        int last;

        h_pump(300);
        last = hint >= 0 ? hint : alice->n;
        for (i = (size_t)n; i < (size_t)last; i++) {
            const char *l = alice->lines[i];
            const char *t = privmsg_text(l, "#test");

            if (!t || !strstr(l, ":parley!"))
                continue;
            /* The relayed line, CRLF included, fits 512 bytes. */
            assert_true(strlen(l) <= 512);
            assert_true(irc_utf8_valid(l, strlen(l)));
            {
                size_t have = strlen(joined), add = strlen(t) - 2;

                assert_true(have + add < 65536);
                memcpy(joined + have, t, add);
                joined[have + add] = '\0';
            }
            got++;
        }
        rounds++;
        if (hint < 0)
            break;
        assert_true(rounds < 40);
        n = alice->n;
        /* The router runs !more and calls the op. */
        assert_int_equal(ad->ops->more(ad, "#test", "alice"), PARLEY_OK);
    }
    assert_true(rounds >= 2);
    assert_int_equal(st, PARLEY_OK);
    /* Reassembled: the same non-space characters as the answer. */
    want = malloc(w + 1);
    assert_non_null(want);
    for (i = 0, j = 0; i < w; i++)
        if (text[i] != ' ' && text[i] != '\n')
            want[j++] = text[i];
    want[j] = '\0';
    for (i = 0, j = 0; joined[i]; i++)
        if (joined[i] != ' ')
            joined[j++] = joined[i];
    joined[j] = '\0';
    assert_string_equal(joined, want);
    /* Nothing left: the op says so and sends nothing (the router words
     * the note). */
    n = alice->n;
    assert_int_equal(ad->ops->more(ad, "#test", "alice"), PARLEY_ERR_STATE);
    h_pump(300);
    for (i = (size_t)n; i < (size_t)alice->n; i++)
        assert_null(strstr(alice->lines[i], ":parley!"));
    /* "!more" itself is not the adapter's: it goes to the router like
     * every command, addressed or not. */
    h_client_send(alice, "PRIVMSG #test :!more");
    assert_non_null(h_wait_event(EVENT_MESSAGE, "!more", 2000));
    h_client_send(alice, "PRIVMSG #test :parley: !more please");
    assert_non_null(h_wait_event(EVENT_MESSAGE, "!more please", 2000));
    h_pump(300);
    for (i = (size_t)n; i < (size_t)alice->n; i++)
        assert_null(strstr(alice->lines[i], ":parley!"));
    free(want);
    free(text);
    free(joined);
    h_adapter_destroy(ad);
}

static void test_flood_fairness(void **state)
{
    struct h_client *alice;
    struct adapter *ad;
    int st[14], i, n, first_two = -1, last_test = -1, count = 0;
    char line[32];
    uint64_t t0, t1 = 0;

    (void)state;
    start_server(0);
    alice = h_client_connect(srv.port, "alice");
    h_client_send(alice, "JOIN #test,#two");
    assert_true(h_wait_line(alice, 0, "366 alice #two", 3000) >= 0);
    ad = start_adapter(srv.port, 250, "");
    assert_non_null(ad);
    assert_true(h_wait_line(alice, 0, ":parley!~parley@127.0.0.1 JOIN :#two",
                            5000) >= 0);
    h_pump(1500);   /* let the bucket fill again after the joins */
    n = alice->n;
    for (i = 0; i < 12; i++) {
        snprintf(line, sizeof(line), "test line %d", i);
        assert_int_equal(send_text(ad, "#test", line, &st[i]), PARLEY_OK);
    }
    assert_int_equal(send_text(ad, "#two", "two line 0", &st[12]),
                     PARLEY_OK);
    assert_int_equal(send_text(ad, "#two", "two line 1", &st[13]),
                     PARLEY_OK);
    assert_true(h_wait_line(alice, n, "test line 11", 10000) >= 0);
    t0 = alice->at[n];
    for (i = n; i < alice->n; i++) {
        if (privmsg_text(alice->lines[i], "#two") && first_two < 0)
            first_two = count;
        if (privmsg_text(alice->lines[i], "#test"))
            last_test = count;
        if (privmsg_text(alice->lines[i], "#test") ||
            privmsg_text(alice->lines[i], "#two")) {
            count++;
            t1 = alice->at[i];
        }
    }
    assert_int_equal(count, 14);
    /* Fair: after the burst of 4, #two waits for at most one more #test
     * line, not for all twelve. */
    assert_true(first_two >= 0 && first_two <= 5);
    assert_true(last_test == 13);
    /* Paced: 4 at once, then 1 per 250 ms: 10 more take >= 2.25 s. */
    fprintf(stderr, "14 lines in %llu ms\n", (unsigned long long)(t1 - t0));
    assert_true(t1 - t0 >= 2200);
    for (i = 0; i < 14; i++)
        assert_int_equal(st[i], PARLEY_OK);
    h_adapter_destroy(ad);
}

static int send_to(struct adapter *ad, const char *room, const char *who,
                   const char *text, int *status)
{
    struct reply r;

    memset(&r, 0, sizeof(r));
    r.text = text;
    r.mention = who;
    *status = -1;
    return ad->ops->send(ad, room, &r, done_cb, status);
}

/* One person's remainder is theirs: bob's !more does not take alice's
 * answer on, and a new answer to bob leaves alice's remainder alone. */
static void test_more_per_person(void **state)
{
    struct h_client *alice;
    struct adapter *ad;
    int st, n;

    (void)state;
    start_server(0);
    alice = h_client_connect(srv.port, "alice");
    h_client_send(alice, "JOIN #test");
    assert_true(h_wait_line(alice, 0, "366", 3000) >= 0);
    ad = start_adapter(srv.port, 20, "");
    assert_non_null(ad);
    assert_true(h_wait_line(alice, 0, ":parley!", 5000) >= 0);
    n = alice->n;
    assert_int_equal(send_to(ad, "#test", "alice",
                             "a1\na2\na3\na4\na5\na6", &st), PARLEY_OK);
    assert_true(h_wait_line(alice, n, "(2 more lines: say !more)", 3000)
                >= 0);
    assert_int_equal(send_to(ad, "#test", "bob", "b1\nb2\nb3\nb4\nb5", &st),
                     PARLEY_OK);
    assert_true(h_wait_line(alice, n, "(1 more lines: say !more)", 3000)
                >= 0);
    n = alice->n;
    assert_int_equal(ad->ops->more(ad, "#TEST", "Bob"), PARLEY_OK);
    assert_true(h_wait_line(alice, n, "PRIVMSG #test :b5", 3000) >= 0);
    assert_int_equal(ad->ops->more(ad, "#test", "bob"), PARLEY_ERR_STATE);
    assert_int_equal(ad->ops->more(ad, "#test", "carol"), PARLEY_ERR_STATE);
    assert_int_equal(ad->ops->more(ad, "#test", "alice"), PARLEY_OK);
    assert_true(h_wait_line(alice, n, "PRIVMSG #test :a6", 3000) >= 0);
    assert_int_equal(ad->ops->more(ad, "#test", "alice"), PARLEY_ERR_STATE);
    /* A long answer to nobody (a room greeting) is anyone's to go on. */
    assert_int_equal(send_text(ad, "#test", "g1\ng2\ng3\ng4\ng5", &st),
                     PARLEY_OK);
    assert_true(h_wait_line(alice, n, "PRIVMSG #test :g4", 3000) >= 0);
    assert_int_equal(ad->ops->more(ad, "#test", "carol"), PARLEY_OK);
    assert_true(h_wait_line(alice, n, "PRIVMSG #test :g5", 3000) >= 0);
    h_adapter_destroy(ad);
}

/* One person asking in a loop neither fills the queue nor holds back
 * another person's answer in the same channel. */
static void test_fair_share(void **state)
{
    struct h_client *alice;
    struct adapter *ad;
    int st[20], bst, i, n, bob_at = -1, alice_units = 0, accepted = 0;
    char text[64];

    (void)state;
    start_server(0);
    alice = h_client_connect(srv.port, "alice");
    h_client_send(alice, "JOIN #test");
    assert_true(h_wait_line(alice, 0, "366", 3000) >= 0);
    ad = start_adapter(srv.port, 100, "");
    assert_non_null(ad);
    assert_true(h_wait_line(alice, 0, ":parley!", 5000) >= 0);
    h_pump(600);    /* the bucket fills again after the join */
    n = alice->n;
    /* Answers of 3 lines, sent without running the loop: the burst of 4
     * takes 4 lines at once, then alice's share of 32 queued lines is
     * full after 12 answers (36 lines). */
    for (i = 0; i < 20; i++) {
        int rc;

        snprintf(text, sizeof(text), "alice answer %d\nsecond\nthird", i);
        rc = send_to(ad, "#test", "alice", text, &st[i]);
        if (rc != PARLEY_OK) {
            assert_int_equal(rc, PARLEY_ERR_TOO_LARGE);
            break;
        }
        accepted++;
    }
    assert_int_equal(accepted, 12);
    assert_non_null(strstr(h_log, "alice already has 32 lines waiting"));
    /* bob still gets in, right after the answer of alice's in progress
     * (the burst of 4 took her first answer and one line of her
     * second). */
    assert_int_equal(send_to(ad, "#test", "bob", "for bob", &bst),
                     PARLEY_OK);
    assert_true(h_wait_line(alice, n, "alice answer 11", 8000) >= 0);
    h_pump(400);
    for (i = n; i < alice->n; i++) {
        if (!strstr(alice->lines[i], ":parley!"))
            continue;
        if (strstr(alice->lines[i], "bob: for bob"))
            bob_at = alice_units;
        else if (strstr(alice->lines[i], ":alice: alice answer"))
            alice_units++;
    }
    assert_int_equal(bob_at, 2);
    assert_int_equal(alice_units, 12);
    assert_int_equal(bst, PARLEY_OK);
    h_adapter_destroy(ad);
}

/* Joins are facts for the router: the bot's own (always), and other
 * people's with the channel's member count; bots are marked. */
static void test_joins_reported(void **state)
{
    struct h_client *alice, *bob, *robot;
    struct adapter *ad;
    const struct h_event *e;
    int i, found = 0;

    (void)state;
    start_server(0);
    alice = h_client_connect(srv.port, "alice");
    h_client_send(alice, "JOIN #test");
    assert_true(h_wait_line(alice, 0, "366", 3000) >= 0);
    ad = start_adapter(srv.port, 100, "bots = [\"robot!*@*\"];");
    assert_non_null(ad);
    e = h_wait_event(EVENT_JOIN, NULL, 5000);
    assert_non_null(e);
    assert_int_equal(e->self, 1);
    assert_string_equal(e->room, "#test");
    h_pump(300);
    bob = h_client_connect(srv.port, "bob");
    h_client_send(bob, "JOIN #test");
    assert_true(h_wait_line(bob, 0, "366", 3000) >= 0);
    robot = h_client_connect(srv.port, "robot");
    h_client_send(robot, "JOIN #test");
    assert_true(h_wait_line(robot, 0, "366", 3000) >= 0);
    h_pump(500);
    for (i = 0; i < h_n_events; i++) {
        const struct h_event *j = &h_events[i];

        if (j->kind != EVENT_JOIN || j->self)
            continue;
        if (!strcmp(j->sender, "bob")) {
            /* alice, the bot and bob */
            assert_int_equal(j->members, 3);
            assert_int_equal(j->from_bot, 0);
            found |= 1;
        } else if (!strcmp(j->sender, "robot")) {
            assert_int_equal(j->members, 4);
            assert_int_equal(j->from_bot, 1);
            found |= 2;
        }
    }
    assert_int_equal(found, 3);
    h_adapter_destroy(ad);
}

static void test_nick_kick_restart(void **state)
{
    struct h_client *alice, *squat;
    struct adapter *ad;
    int n;

    (void)state;
    start_server(0);
    alice = h_client_connect(srv.port, "alice");
    h_client_send(alice, "JOIN #test");
    assert_true(h_wait_line(alice, 0, "366", 3000) >= 0);
    squat = h_client_connect(srv.port, "parley");
    assert_non_null(squat);
    ad = start_adapter(srv.port, 100, "");
    assert_non_null(ad);
    /* Nick in use: the alternative. */
    assert_true(h_wait_line(alice, 0, ":parley_!", 5000) >= 0);
    /* Kicked: rejoins. */
    n = alice->n;
    h_client_send(alice, "KICK #test parley_ :out");
    assert_true(h_wait_line(alice, n, "KICK #test parley_", 2000) >= 0);
    assert_true(h_wait_line(alice, n, ":parley_!~parley@127.0.0.1 JOIN",
                            3000) >= 0);
    /* The configured nick comes free: taken back. */
    n = alice->n;
    h_client_free(squat);
    assert_true(h_wait_line(alice, n, ":parley_!~parley@127.0.0.1 NICK "
                            ":parley", 4000) >= 0);
    /* Server restart: reconnect and rejoin. */
    h_ngircd_stop(&srv);
    h_client_free(alice);
    h_pump(300);
    assert_int_equal(ad->connected, 0);
    assert_int_equal(h_ngircd_start(&srv), 0);
    alice = h_client_connect(srv.port, "alice");
    h_client_send(alice, "JOIN #test");
    assert_true(h_wait_line(alice, 0, "366", 3000) >= 0);
    /* The bot is back in #test: it joined before alice (NAMES) or after
     * (JOIN). */
    {
        int names = h_wait_line(alice, 0, " 353 ", 100);

        if (names < 0 || !strstr(alice->lines[names], "parley"))
            assert_true(h_wait_line(alice, 0,
                                    ":parley!~parley@127.0.0.1 JOIN",
                                    8000) >= 0);
    }
    assert_int_equal(ad->connected, 1);
    /* A dead link (server frozen) is found by the bot's own PING. */
    kill(srv.pid, SIGSTOP);
    h_pump(5000);
    kill(srv.pid, SIGCONT);
    assert_non_null(strstr(h_log, "ping timeout"));
    h_pump(200);
    h_adapter_destroy(ad);
}

static void test_admin_and_invite(void **state)
{
    struct h_client *alice, *bob, *carol;
    struct adapter *ad;
    const struct h_event *e;
    int n;

    (void)state;
    start_server(0);
    alice = h_client_connect(srv.port, "alice");
    h_client_send(alice, "JOIN #test");
    assert_true(h_wait_line(alice, 0, "366", 3000) >= 0);
    bob = h_client_connect(srv.port, "bob");
    h_client_send(bob, "JOIN #test");
    assert_true(h_wait_line(bob, 0, "366", 3000) >= 0);
    carol = h_client_connect(srv.port, "carol");
    h_client_send(carol, "JOIN #test");
    assert_true(h_wait_line(carol, 0, "366", 3000) >= 0);
    ad = start_adapter(srv.port, 100, "admins = [\"carol!*@*\"];");
    assert_non_null(ad);
    assert_true(h_wait_line(alice, 0, ":parley!", 5000) >= 0);
    h_pump(300);
    /* Operator (from NAMES), admin by hostmask, neither. */
    h_client_send(alice, "PRIVMSG #test :parley: from the op");
    e = h_wait_event(EVENT_MESSAGE, "from the op", 3000);
    assert_non_null(e);
    assert_int_equal(e->is_admin, 1);
    h_client_send(carol, "PRIVMSG #test :parley: from the admin");
    e = h_wait_event(EVENT_MESSAGE, "from the admin", 3000);
    assert_non_null(e);
    assert_int_equal(e->is_admin, 1);
    h_client_send(bob, "PRIVMSG #test :parley: from bob 1");
    e = h_wait_event(EVENT_MESSAGE, "from bob 1", 3000);
    assert_non_null(e);
    assert_int_equal(e->is_admin, 0);
    /* MODE +o / -o (with other modes and arguments around it). */
    h_client_send(alice, "MODE #test +lo-v 50 bob alice");
    assert_true(h_wait_line(bob, 0, "MODE #test +lo", 3000) >= 0);
    h_pump(200);
    h_client_send(bob, "PRIVMSG #test :parley: from bob 2");
    e = h_wait_event(EVENT_MESSAGE, "from bob 2", 3000);
    assert_non_null(e);
    assert_int_equal(e->is_admin, 1);
    h_client_send(alice, "MODE #test -o bob");
    assert_true(h_wait_line(bob, 0, "MODE #test -o bob", 3000) >= 0);
    h_pump(200);
    h_client_send(bob, "PRIVMSG #test :parley: from bob 3");
    e = h_wait_event(EVENT_MESSAGE, "from bob 3", 3000);
    assert_non_null(e);
    assert_int_equal(e->is_admin, 0);
    /* INVITE: ignored from bob to an unconfigured channel, followed from
     * the admin. */
    h_client_send(bob, "JOIN #bobs");
    assert_true(h_wait_line(bob, 0, "366 bob #bobs", 3000) >= 0);
    n = bob->n;
    h_client_send(bob, "INVITE parley #bobs");
    assert_true(h_wait_line(bob, n, " 341 ", 3000) >= 0);
    h_pump(500);
    assert_true(h_wait_line(bob, n, "JOIN :#bobs", 100) < 0);
    assert_non_null(strstr(h_log, "ignored an invitation to #bobs"));
    h_client_send(carol, "JOIN #carols");
    assert_true(h_wait_line(carol, 0, "366 carol #carols", 3000) >= 0);
    n = carol->n;
    h_client_send(carol, "INVITE parley #carols");
    assert_true(h_wait_line(carol, n, ":parley!~parley@127.0.0.1 JOIN",
                            4000) >= 0);
    h_adapter_destroy(ad);
}

static const char *tls_conf =
    "adapters = ( { type = \"irc\"; name = \"tlsnet\"; host = "
    "\"127.0.0.1\"; port = %d; tls = true; %s nick = \"tlsbot\"; "
    "channels = ( \"#tls\" ); reconnect_min_ms = 5000; "
    "reconnect_max_ms = 5000; register_timeout_s = 5; } );";

static int make_certs(const char *dir)
{
    char cmd[2048];

    snprintf(cmd, sizeof(cmd),
        "cd '%s' && "
        "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=testca "
        "-keyout ca.key -out ca.pem 2>/dev/null && "
        "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=otherca "
        "-keyout other.key -out other.pem 2>/dev/null && "
        "openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 "
        "-keyout server.key -out server.csr 2>/dev/null && "
        "printf 'subjectAltName=IP:127.0.0.1\\n' > ext.cnf && "
        "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key "
        "-CAcreateserial -days 2 -extfile ext.cnf -out server.pem "
        "2>/dev/null && chmod 644 server.key", dir);
    return system(cmd);
}

static struct adapter *tls_adapter(const char *extra)
{
    char text[1024], err[512];
    struct adapter *ad = NULL;

    snprintf(text, sizeof(text), tls_conf, srv.tls_port, extra);
    assert_int_equal(h_adapter_create(&ad, text, err, sizeof(err)),
                     PARLEY_OK);
    assert_int_equal(ad->ops->start(ad), PARLEY_OK);
    return ad;
}

static void test_tls(void **state)
{
    struct h_client *alice;
    struct adapter *ad;
    char extra[512];

    (void)state;
    if (!have_ngircd)
        skip();
    assert_int_equal(h_mkdtemp(&srv), 0);
    assert_int_equal(make_certs(srv.dir), 0);
    srv.port = spawn_free_port();
    srv.tls_port = spawn_free_port();
    assert_int_equal(h_ngircd_start(&srv), 0);
    alice = h_client_connect(srv.port, "alice");
    h_client_send(alice, "JOIN #tls");
    assert_true(h_wait_line(alice, 0, "366", 3000) >= 0);
    /* The right CA: connects, registers, joins. */
    snprintf(extra, sizeof(extra), "ca_file = \"%s/ca.pem\";", srv.dir);
    ad = tls_adapter(extra);
    assert_true(h_wait_line(alice, 0, ":tlsbot!", 8000) >= 0);
    assert_non_null(strstr(h_log, "TLS"));
    h_adapter_destroy(ad);
    /* A wrong CA: refused with a clear error, no registration. */
    h_log_len = 0;
    h_log[0] = '\0';
    snprintf(extra, sizeof(extra), "ca_file = \"%s/other.pem\";", srv.dir);
    ad = tls_adapter(extra);
    h_pump(1500);
    assert_non_null(strstr(h_log, "certificate verification failed"));
    assert_int_equal(ad->connected, 0);
    h_adapter_destroy(ad);
    /* A missing CA file is a clear error too. */
    h_log_len = 0;
    snprintf(extra, sizeof(extra), "ca_file = \"%s/nope.pem\";", srv.dir);
    ad = tls_adapter(extra);
    h_pump(300);
    assert_non_null(strstr(h_log, "cannot load ca_file"));
    h_adapter_destroy(ad);
    /* tls_verify = false: connects anyway, and says so. */
    h_log_len = 0;
    snprintf(extra, sizeof(extra), "ca_file = \"%s/other.pem\"; "
             "tls_verify = false;", srv.dir);
    ad = tls_adapter(extra);
    assert_true(h_wait_line(alice, 0, ":tlsbot!", 8000) >= 0);
    assert_non_null(strstr(h_log, "NOT"));
    h_adapter_destroy(ad);
}

/* ---- shutdown: QUIT ------------------------------------------------------ */

/* stop says goodbye: an answer handed over just before stop still
 * arrives, then the configured QUIT reason (not a dropped connection);
 * stop finishes when the server closes, well before the 2 s timeout; a
 * second stop is harmless and send after stop is refused. */
static void test_quit(void **state)
{
    struct h_client *alice;
    struct adapter *ad;
    int st, said, quit, i;
    uint64_t t0, took;

    (void)state;
    start_server(0);
    alice = h_client_connect(srv.port, "alice");
    h_client_send(alice, "JOIN #test");
    assert_true(h_wait_line(alice, 0, " 366 ", 3000) >= 0);
    ad = start_adapter(srv.port, 100,
                       "quit_message = \"gone \\x02fishing\\x02\";");
    assert_non_null(ad);
    assert_true(h_wait_line(alice, 0, ":parley!", 8000) >= 0);
    h_pump(100);
    assert_int_equal(ad->connected, 1);
    /* The line leaves the send queue at once (burst 4), so done runs now
     * with OK while the bytes may still sit in libircclient's buffer:
     * stop must flush them before the goodbye. */
    assert_int_equal(send_text(ad, "#test", "last words", &st), PARLEY_OK);
    assert_int_equal(st, PARLEY_OK);
    t0 = h_now();
    ad->ops->stop(ad);
    ad->ops->stop(ad);
    assert_int_equal(ad->connected, 0);
    assert_int_not_equal(send_text(ad, "#test", "too late", &st), PARLEY_OK);
    quit = h_wait_line(alice, 0, " QUIT :", 3000);
    assert_true(quit >= 0);
    fprintf(stderr, "alice saw: %s", alice->lines[quit]);
    assert_true(strncmp(alice->lines[quit], ":parley!", 8) == 0);
    assert_non_null(strstr(alice->lines[quit], "gone \x02" "fishing\x02"));
    said = h_wait_line(alice, 0, "PRIVMSG #test :last words", 0);
    assert_true(said >= 0 && said < quit);
    /* Stop ends with the server's close, not the timeout. */
    uv_run(&h_uv, UV_RUN_DEFAULT);
    took = h_now() - t0;
    fprintf(stderr, "stop took %llu ms\n", (unsigned long long)took);
    assert_true(took < 1500);
    assert_non_null(strstr(h_log, "disconnected after QUIT"));
    assert_null(strstr(h_log, "did not close the connection"));
    h_adapter_destroy(ad);
    for (i = quit + 1; i < alice->n; i++)
        assert_null(strstr(alice->lines[i], "parley!"));
}

/* ---- SASL against a scripted server ----------------------------------- */

struct script {
    int lfd;
    struct h_client *c;     /* accepted connection */
};

static int script_listen(struct script *s)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    int one = 1;

    memset(s, 0, sizeof(*s));
    s->lfd = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(s->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(s->lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
        listen(s->lfd, 4) != 0 ||
        getsockname(s->lfd, (struct sockaddr *)&sa, &len) != 0)
        return -1;
    fcntl(s->lfd, F_SETFL, O_NONBLOCK);
    return ntohs(sa.sin_port);
}

/* Wait for the adapter to connect (ms); 0 or -1. */
static int script_accept(struct script *s, int ms)
{
    uint64_t end = h_now() + (uint64_t)ms;
    int fd;

    while (h_now() < end) {
        fd = accept(s->lfd, NULL, NULL);
        if (fd >= 0) {
            s->c = calloc(1, sizeof(*s->c));
            s->c->fd = fd;
            fcntl(fd, F_SETFL, O_NONBLOCK);
            h_clients[h_n_clients++] = s->c;
            return 0;
        }
        h_pump(5);
    }
    return -1;
}

static const char *sasl_conf =
    "adapters = ( { type = \"irc\"; name = \"saslnet\"; host = "
    "\"127.0.0.1\"; port = %d; tls = false; nick = \"sbot\"; "
    "sasl_user = \"sbot\"; sasl_password_env = \"PARLEY_TEST_SASL_PW\"; "
    "channels = ( \"#s\" ); reconnect_min_ms = 100; "
    "reconnect_max_ms = 1500; } );";

static void test_sasl(void **state)
{
    struct script s;
    struct adapter *ad = NULL;
    char text[1024], err[512];
    int port, i, end_at, nick_at, user_at;
    uint64_t t0, took;

    (void)state;
    setenv("PARLEY_TEST_SASL_PW", "pw", 1);
    port = script_listen(&s);
    assert_true(port > 0);
    snprintf(text, sizeof(text), sasl_conf, port);
    assert_int_equal(h_adapter_create(&ad, text, err, sizeof(err)),
                     PARLEY_OK);
    assert_int_equal(ad->ops->start(ad), PARLEY_OK);
    assert_int_equal(script_accept(&s, 3000), 0);
    assert_true(h_wait_line(s.c, 0, "CAP LS 302", 2000) == 0);
    h_client_send(s.c, ":srv CAP * LS :multi-prefix sasl=PLAIN");
    assert_true(h_wait_line(s.c, 0, "CAP REQ :sasl", 2000) >= 0);
    h_client_send(s.c, ":srv CAP * ACK :sasl");
    assert_true(h_wait_line(s.c, 0, "AUTHENTICATE PLAIN", 2000) >= 0);
    h_client_send(s.c, "AUTHENTICATE +");
    /* base64("\0sbot\0pw") */
    assert_true(h_wait_line(s.c, 0, "AUTHENTICATE AHNib3QAcHc=", 2000) >= 0);
    /* Registration is held until CAP END. */
    h_pump(200);
    for (i = 0; i < s.c->n; i++)
        assert_null(strstr(s.c->lines[i], "NICK"));
    h_client_send(s.c, ":srv 900 sbot sbot!u@h sbot :You are now logged in");
    h_client_send(s.c, ":srv 903 sbot :SASL authentication successful");
    end_at = h_wait_line(s.c, 0, "CAP END", 2000);
    nick_at = h_wait_line(s.c, 0, "NICK sbot", 2000);
    user_at = h_wait_line(s.c, 0, "USER sbot", 2000);
    assert_true(end_at >= 0 && nick_at > end_at && user_at > end_at);
    h_client_send(s.c, ":srv 001 sbot :Welcome");
    assert_true(h_wait_line(s.c, 0, "JOIN #s", 2000) >= 0);
    assert_int_equal(ad->connected, 1);
    assert_non_null(strstr(h_log, "SASL authentication succeeded"));
    /* The password never reached the log. */
    assert_null(strstr(h_log, "AHNib3QAcHc="));
    /* Shutdown: QUIT reaches the server; this one never answers it, so
     * stop gives up after IRC_QUIT_TIMEOUT_MS (2 s), not later. */
    t0 = h_now();
    ad->ops->stop(ad);
    assert_true(h_wait_line(s.c, 0, "QUIT :parley shutting down", 1500)
                >= 0);
    h_adapter_destroy(ad);
    took = h_now() - t0;
    fprintf(stderr, "stop took %llu ms\n", (unsigned long long)took);
    assert_true(took >= 1900 && took < 3500);
    assert_non_null(strstr(h_log, "did not close the connection within "
                                  "2000 ms of QUIT"));
    h_client_free(s.c);
    close(s.lfd);
}

static void test_sasl_failure(void **state)
{
    struct script s;
    struct adapter *ad = NULL;
    char text[1024], err[512];
    int port;
    uint64_t t0;

    (void)state;
    setenv("PARLEY_TEST_SASL_PW", "wrong", 1);
    port = script_listen(&s);
    snprintf(text, sizeof(text), sasl_conf, port);
    assert_int_equal(h_adapter_create(&ad, text, err, sizeof(err)),
                     PARLEY_OK);
    assert_int_equal(ad->ops->start(ad), PARLEY_OK);
    assert_int_equal(script_accept(&s, 3000), 0);
    assert_true(h_wait_line(s.c, 0, "CAP LS 302", 2000) == 0);
    h_client_send(s.c, ":srv CAP * LS :sasl");
    assert_true(h_wait_line(s.c, 0, "CAP REQ :sasl", 2000) >= 0);
    h_client_send(s.c, ":srv CAP * ACK :sasl");
    assert_true(h_wait_line(s.c, 0, "AUTHENTICATE PLAIN", 2000) >= 0);
    h_client_send(s.c, "AUTHENTICATE +");
    assert_true(h_wait_line(s.c, 0, "AUTHENTICATE ", 2000) >= 0);
    h_client_send(s.c, ":srv 904 * :SASL authentication failed");
    t0 = h_now();
    h_pump(300);
    assert_non_null(strstr(h_log, "SASL authentication failed (904)"));
    assert_int_equal(ad->connected, 0);
    assert_int_equal(ad->err, PARLEY_ERR_CONFIG);
    /* The connection is dropped and retried only after the long backoff
     * (reconnect_max_ms 1500, jittered to >= 750 ms), not in a loop. */
    h_client_free(s.c);
    s.c = NULL;
    assert_int_equal(script_accept(&s, 3000), 0);
    assert_true(h_now() - t0 >= 700);
    h_adapter_destroy(ad);
    h_client_free(s.c);
    close(s.lfd);
    unsetenv("PARLEY_TEST_SASL_PW");
}

/* ---- who is who: accounts and nick hand-overs (issue 12) --------------- */

static const char *acct_conf =
    "adapters = ( { type = \"irc\"; name = \"acctnet\"; host = "
    "\"127.0.0.1\"; port = %d; tls = false; nick = \"parley\"; "
    "channels = ( \"#a\" ); flood_burst = 50; flood_rate_ms = 10; } );";

/* A query from nick (prefix "nick!u@h"); the event the adapter made. */
static const struct h_event *query(struct script *s, const char *prefix,
                                   const char *text)
{
    h_client_send(s->c, ":%s PRIVMSG parley :%s", prefix, text);
    return h_wait_event(EVENT_MESSAGE, text, 2000);
}

/* Answer room and return the number of lines the server got after it. */
static int answer(struct adapter *ad, struct script *s, const char *room,
                  const char *text, const char *expect)
{
    int n = s->c->n, st;

    assert_int_equal(send_text(ad, room, text, &st), PARLEY_OK);
    if (expect) {
        int at = h_wait_line(s->c, n, expect, 2000);

        for (n = 0; at < 0 && n < s->c->n; n++)
            fprintf(stderr, "server got: %s\n", s->c->lines[n]);
        return at;
    }
    h_pump(300);
    return st;
}

static void test_accounts(void **state)
{
    struct script s;
    struct adapter *ad = NULL;
    const struct h_event *e;
    char text[1024], err[512], bob1[256], carol1[256];
    int i, n;

    (void)state;
    i = script_listen(&s);
    assert_true(i > 0);
    snprintf(text, sizeof(text), acct_conf, i);
    assert_int_equal(h_adapter_create(&ad, text, err, sizeof(err)),
                     PARLEY_OK);
    assert_int_equal(ad->ops->start(ad), PARLEY_OK);
    assert_int_equal(script_accept(&s, 3000), 0);
    assert_true(h_wait_line(s.c, 0, "CAP LS 302", 2000) == 0);
    h_client_send(s.c, ":srv CAP * LS :multi-prefix account-notify "
                  "extended-join");
    assert_true(h_wait_line(s.c, 0, "CAP REQ :account-notify "
                            "extended-join", 2000) >= 0);
    h_client_send(s.c, ":srv CAP * ACK :account-notify extended-join");
    assert_true(h_wait_line(s.c, 0, "NICK parley", 2000) >= 0);
    h_client_send(s.c, ":srv 001 parley :Welcome");
    /* WHOX past the tenth parameter, which libircclient drops: the
     * transport sees it (inspircd sends it there). */
    h_client_send(s.c, ":srv 005 parley CASEMAPPING=rfc1459 A=1 B=2 C=3 "
                  "D=4 E=5 F=6 G=7 H=8 I=9 J=10 WHOX :are supported");
    h_client_send(s.c, ":srv 376 parley :End of MOTD");
    assert_true(h_wait_line(s.c, 0, "JOIN #a", 2000) >= 0);
    h_client_send(s.c, ":parley!p@h JOIN #a * :parley");
    /* Those already there: WHOX for their accounts. */
    assert_true(h_wait_line(s.c, 0, "WHO #a %tna,152", 2000) >= 0);
    h_client_send(s.c, ":srv 353 parley = #a :parley @alice bob carol");
    h_client_send(s.c, ":srv 366 parley #a :End of NAMES");
    h_client_send(s.c, ":srv 354 parley 152 alice AliceAcct");
    h_client_send(s.c, ":srv 354 parley 152 bob 0");
    h_client_send(s.c, ":srv 354 parley 152 carol 0");
    h_pump(100);

    /* An account (WHOX): keyed by it, shown by nick, answered by nick. */
    e = query(&s, "alice!a@h", "one");
    assert_non_null(e);
    assert_string_equal(e->room, "~aliceacct");
    assert_string_equal(e->sender, "~aliceacct");
    assert_string_equal(e->sender_name, "alice");
    h_client_send(s.c, ":alice!a@h PRIVMSG #a :parley: in public");
    e = h_wait_event(EVENT_MESSAGE, "in public", 2000);
    assert_non_null(e);
    assert_string_equal(e->room, "#a");
    assert_string_equal(e->sender, "~aliceacct");
    assert_true(answer(ad, &s, "~aliceacct", "hi there",
                       "PRIVMSG alice :hi there") >= 0);
    /* A nick change keeps the person (and their limits and history). */
    h_client_send(s.c, ":alice!a@h NICK alys");
    e = query(&s, "alys!a@h", "two");
    assert_non_null(e);
    assert_string_equal(e->room, "~aliceacct");
    assert_string_equal(e->sender, "~aliceacct");
    assert_true(answer(ad, &s, "~aliceacct", "yo there",
                       "PRIVMSG alys :yo there") >= 0);
    /* The freed nick taken by someone with no account (extended-join
     * "*"): not alice's room. */
    h_client_send(s.c, ":alice!m@evil JOIN #a * :mallory");
    e = query(&s, "alice!m@evil", "three");
    assert_non_null(e);
    assert_int_equal(strncmp(e->room, "alice~", 6), 0);
    assert_string_equal(e->sender, "alice");

    /* No account: a token per holder of the nick.  QUIT ends it. */
    e = query(&s, "bob!b@h", "four");
    assert_non_null(e);
    assert_int_equal(strncmp(e->room, "bob~", 4), 0);
    snprintf(bob1, sizeof(bob1), "%s", e->room);
    e = query(&s, "bob!b@h", "five");
    assert_string_equal(e->room, bob1);
    assert_true(answer(ad, &s, bob1, "ok then", "PRIVMSG bob :ok then") >= 0);
    h_client_send(s.c, ":bob!b@h QUIT :bye");
    h_client_send(s.c, ":bob!x@other JOIN #a * :not bob");
    e = query(&s, "bob!x@other", "six");
    assert_non_null(e);
    assert_int_equal(strncmp(e->room, "bob~", 4), 0);
    assert_string_not_equal(e->room, bob1);
    /* A late answer for the old bob is not given to the new one. */
    n = s.c->n;
    assert_int_equal(answer(ad, &s, bob1, "secret", NULL), PARLEY_OK);
    for (i = n; i < s.c->n; i++)
        assert_null(strstr(s.c->lines[i], "secret"));
    assert_non_null(strstr(h_log, "dropped"));
    /* account-notify: the new bob logs in, and is keyed by the account
     * from then on. */
    h_client_send(s.c, ":bob!x@other ACCOUNT BobAcct");
    e = query(&s, "bob!x@other", "seven");
    assert_string_equal(e->room, "~bobacct");
    assert_string_equal(e->sender, "~bobacct");

    /* NICK away from a nick ends its holder's token too. */
    e = query(&s, "carol!c@h", "eight");
    assert_non_null(e);
    snprintf(carol1, sizeof(carol1), "%s", e->room);
    h_client_send(s.c, ":carol!c@h NICK carla");
    e = query(&s, "carol!z@z", "nine");
    assert_non_null(e);
    assert_int_equal(strncmp(e->room, "carol~", 6), 0);
    assert_string_not_equal(e->room, carol1);

    /* Someone in no shared channel: QUIT cannot be seen, so joining a
     * channel later starts afresh too. */
    e = query(&s, "dave!d@h", "ten");
    assert_non_null(e);
    snprintf(carol1, sizeof(carol1), "%s", e->room);
    h_client_send(s.c, ":dave!d2@h2 JOIN #a * :dave");
    e = query(&s, "dave!d2@h2", "eleven");
    assert_string_not_equal(e->room, carol1);

    ad->ops->stop(ad);
    h_adapter_destroy(ad);
    h_client_free(s.c);
    close(s.lfd);
}

static void test_config_errors(void **state)
{
    struct adapter *ad = NULL;
    char err[1024];

    (void)state;
    assert_int_equal(h_adapter_create(&ad,
        "adapters = ( { type = \"irc\"; port = 99999; nick = \"1bad\"; "
        "channels = ( \"nochan\" ); max_lines = \"x\"; bogus = 1; } );",
        err, sizeof(err)), PARLEY_ERR_CONFIG);
    config_destroy(&h_cfg);
    fprintf(stderr, "%s\n", err);
    assert_non_null(strstr(err, "adapters.[0].host: is required"));
    assert_non_null(strstr(err, "adapters.[0].port: must be between"));
    assert_non_null(strstr(err, "adapters.[0].nick:"));
    assert_non_null(strstr(err, "adapters.[0].channels.[0]:"));
    assert_non_null(strstr(err, "adapters.[0].max_lines: must be an "
                               "integer"));
    assert_non_null(strstr(err, "adapters.[0].bogus: unknown key"));
    assert_non_null(strstr(err, ":1: adapters"));
    /* Greetings are the router's: the old per-channel key names its
     * replacement; the common keys (and their old IRC names, aliases
     * that config_load warns about) pass the adapter's parser. */
    assert_int_equal(h_adapter_create(&ad,
        "adapters = ( { type = \"irc\"; name = \"libera\"; host = \"h\"; "
        "nick = \"n\"; channels = ( { name = \"#c\"; greet = true; } ); } );",
        err, sizeof(err)), PARLEY_ERR_CONFIG);
    config_destroy(&h_cfg);
    fprintf(stderr, "%s\n", err);
    assert_non_null(strstr(err, "adapters.[0].channels.[0]: greet is no "
                                "longer a channel key"));
    assert_non_null(strstr(err, "rooms = ( { room = \"irc:libera:#c\"; "
                                "greeting = false; } )"));
    assert_int_equal(h_adapter_create(&ad,
        "adapters = ( { type = \"irc\"; host = \"h\"; nick = \"n\"; "
        "greet_on_join = false; greet_new_members = true; "
        "greet_members_max = 10; greet_users = true; } );", err,
        sizeof(err)), PARLEY_OK);
    h_adapter_destroy(ad);
    /* The pacing defaults (README "Flood control"). */
    {
        struct irc_config c;
        config_t lc;

        config_init(&lc);
        assert_int_equal(config_read_string(&lc, "a = { host = \"h\"; "
                                            "nick = \"n\"; };"),
                         CONFIG_TRUE);
        assert_int_equal(irc_config_parse(&c, config_lookup(&lc, "a"), err,
                                          sizeof(err)), PARLEY_OK);
        assert_int_equal(c.flood_burst, 5);
        assert_int_equal(c.flood_rate_ms, 1000);
        irc_config_free(&c);
        config_destroy(&lc);
    }
    /* A SASL password variable that is not set. */
    unsetenv("PARLEY_TEST_UNSET");
    assert_int_equal(h_adapter_create(&ad,
        "adapters = ( { type = \"irc\"; host = \"h\"; nick = \"n\"; "
        "sasl_user = \"u\"; sasl_password_env = \"PARLEY_TEST_UNSET\"; } );",
        err, sizeof(err)), PARLEY_ERR_CONFIG);
    config_destroy(&h_cfg);
    assert_non_null(strstr(err, "PARLEY_TEST_UNSET is not set"));
    /* quit_message: one line (no CR/LF to smuggle a second command), no
     * other control bytes, bounded; mIRC formatting is allowed. */
    assert_int_equal(h_adapter_create(&ad,
        "adapters = ( { type = \"irc\"; host = \"h\"; nick = \"n\"; "
        "quit_message = \"bye\\r\\nJOIN #x\"; } );",
        err, sizeof(err)), PARLEY_ERR_CONFIG);
    config_destroy(&h_cfg);
    assert_non_null(strstr(err, "adapters.[0].quit_message: must be one "
                                "line"));
    assert_int_equal(h_adapter_create(&ad,
        "adapters = ( { type = \"irc\"; host = \"h\"; nick = \"n\"; "
        "quit_message = \"a\\x01b\"; } );",
        err, sizeof(err)), PARLEY_ERR_CONFIG);
    config_destroy(&h_cfg);
    assert_int_equal(h_adapter_create(&ad,
        "adapters = ( { type = \"irc\"; host = \"h\"; nick = \"n\"; "
        "quit_message = 42; } );",
        err, sizeof(err)), PARLEY_ERR_CONFIG);
    config_destroy(&h_cfg);
    assert_non_null(strstr(err, "quit_message: must be a string"));
    {
        char text[1024], big[IRC_QUIT_MESSAGE_MAX + 2];

        memset(big, 'x', sizeof(big) - 1);
        big[sizeof(big) - 1] = '\0';
        snprintf(text, sizeof(text), "adapters = ( { type = \"irc\"; "
                 "host = \"h\"; nick = \"n\"; quit_message = \"%s\"; } );",
                 big);
        assert_int_equal(h_adapter_create(&ad, text, err, sizeof(err)),
                         PARLEY_ERR_CONFIG);
        config_destroy(&h_cfg);
        /* One byte less fits, formatting codes included. */
        big[sizeof(big) - 2] = '\0';
        big[0] = '\x02';
        snprintf(text, sizeof(text), "adapters = ( { type = \"irc\"; "
                 "host = \"h\"; nick = \"n\"; quit_message = \"%s\"; } );",
                 big);
        assert_int_equal(h_adapter_create(&ad, text, err, sizeof(err)),
                         PARLEY_OK);
        h_adapter_destroy(ad);
    }
    assert_true(irc_config_quit_message_valid(""));
    assert_true(irc_config_quit_message_valid("\x03" "4red\x0f plain"));
    assert_false(irc_config_quit_message_valid("a\rb"));
    assert_false(irc_config_quit_message_valid("a\nb"));
    assert_false(irc_config_quit_message_valid("a\x7f"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_messages, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_answer_and_more, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_flood_fairness, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_more_per_person, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_fair_share, setup, teardown),
        cmocka_unit_test_setup_teardown(test_joins_reported, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_nick_kick_restart, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_admin_and_invite, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_tls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_quit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sasl, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sasl_failure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_accounts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_config_errors, setup, teardown),
    };

    signal(SIGPIPE, SIG_IGN);
    /* PARLEY_TEST_FILTER=test_tls runs one test (for debugging). */
    if (getenv("PARLEY_TEST_FILTER"))
        cmocka_set_test_filter(getenv("PARLEY_TEST_FILTER"));
    return spawn_status(cmocka_run_group_tests(tests, NULL, NULL));
}
