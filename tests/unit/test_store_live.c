/*
 * store.c and the Redis half of context.c against a real redis-server on a
 * free loopback port, driven by a real libuv loop: command round trip and
 * SELECT, append/load/clear with trimming, TTL and hostile room keys, keys
 * over the cap, Redis killed and restarted on the same port (down reported
 * once, no callback lost or doubled, outage logged once), AUTH right and
 * wrong, a unix socket, and store_close with commands in flight.  Every
 * test starts its own server in setup and stops it in teardown, so a
 * failed assertion does not leave a redis-server behind; ASan checks that
 * the store frees everything once the loop has run its close callbacks.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <hiredis/hiredis.h>
#include <sys/stat.h>
#include <uv.h>

#include "live_store.h"

#include "config.h"
#include "context.h"
#include "log.h"
#include "status.h"
#include "store.h"

#define PASSWORD "s3cret-pw-4711"
#define WRONG_PASSWORD "wrong-pw-0815"

/* One command's callback, recorded. */
struct cap {
    int calls;
    int null;
    int type;
    long long integer;
    size_t elements;
    char str[512];
    size_t len;
};

static void cap_fn(struct store *st, struct redisReply *r, void *privdata)
{
    struct cap *c = privdata;

    (void)st;
    c->calls++;
    if (!r) {
        c->null = 1;
        return;
    }
    c->type = r->type;
    c->integer = r->integer;
    c->elements = r->elements;
    if (r->str) {
        c->len = r->len < sizeof(c->str) - 1 ? r->len : sizeof(c->str) - 1;
        memcpy(c->str, r->str, c->len);
        c->str[c->len] = '\0';
    }
}

/* Start redis-server on L->port with extra arguments (NULL-terminated). */
static pid_t start_redis_args(struct live *L, ...)
{
    char portbuf[16];
    char logpath[128];
    char *argv[24] = { "/usr/bin/redis-server", "--port", portbuf,
                       "--bind", "127.0.0.1", "--save", "",
                       "--appendonly", "no", "--dir", L->dir };
    int argc = 11;
    va_list ap;
    pid_t pid;

    snprintf(portbuf, sizeof(portbuf), "%d", L->port);
    snprintf(logpath, sizeof(logpath), "%s/redis.log", L->dir);
    va_start(ap, L);
    for (char *a = va_arg(ap, char *); a && argc < 23;
         a = va_arg(ap, char *))
        argv[argc++] = a;
    va_end(ap);
    argv[argc] = NULL;
    pid = spawn_process(argv, logpath);
    if (pid > 0 && spawn_wait_port(L->port, 5000) != 0) {
        spawn_stop(pid);
        return -1;
    }
    return pid;
}

static const struct live_opts live_opts = {
    .tmpl = "/tmp/parley-store-XXXXXX", .db = 2, .prefix = "ptest:",
    .level = LOG_LEVEL_INFO, .eager = 0,
};

static int setup(void **state)
{
    return live_setup(state, &live_opts);
}

static int teardown(void **state)
{
    return live_teardown(state);
}

/* Open L->st (db 2) on a fresh redis and wait for it to come up. */
static void start_up(struct live *L)
{
    live_start_up(L);
    assert_true(store_is_up(L->st));
    assert_string_equal(store_errstr(L->st), "");
}

static void test_round_trip(void **state)
{
    struct live *L = *state;
    struct cap set = { 0 }, get = { 0 }, other = { 0 }, sub = { 0 };
    const char value[] = "bin\0ary\r\nvalue";
    struct store *db0;
    int up0;

    L->redis = spawn_redis(L->port, L->dir);
    assert_true(L->redis > 0);
    live_open(L, &L->st, 2, NULL, NULL);
    store_on_state(L->st, live_state_fn, L);
    /* Not up yet: refused at once, callback never runs. */
    assert_false(store_is_up(L->st));
    assert_int_equal(store_command(L->st, cap_fn, &set, "PING"),
                     PARLEY_ERR_STATE);
    assert_true(live_wait_count(L, &L->ups, 1, 3000));
    assert_int_equal(set.calls, 0);

    assert_int_equal(store_command(L->st, cap_fn, &set, "SET %s %b", "k",
                                   value, sizeof(value) - 1), PARLEY_OK);
    assert_int_equal(store_command(L->st, cap_fn, &get, "GET %s", "k"),
                     PARLEY_OK);
    assert_true(live_wait_count(L, &get.calls, 1, 2000));
    assert_int_equal(set.calls, 1);
    assert_int_equal(set.type, REDIS_REPLY_STATUS);
    assert_int_equal(get.type, REDIS_REPLY_STRING);
    assert_int_equal(get.len, sizeof(value) - 1);
    assert_memory_equal(get.str, value, sizeof(value) - 1);

    /* Push-mode commands would break one-reply-per-callback. */
    assert_int_equal(store_command(L->st, cap_fn, &sub, "SUBSCRIBE %s", "c"),
                     PARLEY_ERR_STATE);
    assert_int_equal(store_command_argv(L->st, cap_fn, &sub, 1,
                                        (const char *[]){ "monitor" },
                                        (size_t[]){ 7 }), PARLEY_ERR_STATE);
    assert_int_equal(sub.calls, 0);

    /* SELECT happened: db 0 does not see the key. */
    live_open(L, &L->extra[0], 0, NULL, NULL);
    db0 = L->extra[0];
    store_on_state(db0, live_state_fn, L);
    up0 = L->ups;
    assert_true(live_wait_count(L, &L->ups, up0 + 1, 3000));
    assert_int_equal(store_command(db0, cap_fn, &other, "GET k"), PARLEY_OK);
    assert_true(live_wait_count(L, &other.calls, 1, 2000));
    assert_int_equal(other.type, REDIS_REPLY_NIL);
    store_close(db0);
    L->extra[0] = NULL;
    assert_int_equal(L->downs, 0);
}

static void test_down_and_back(void **state)
{
    struct live *L = *state;
    struct cap blocked = { 0 }, get[3] = { { 0 } }, after = { 0 };
    struct cap ping = { 0 };

    start_up(L);
    live_log_capture(L);
    /* BLPOP blocks the connection server-side, so the GETs behind it are
     * still pending when the server dies. */
    assert_int_equal(store_command(L->st, cap_fn, &blocked, "BLPOP %s 30",
                                   "nothing"), PARLEY_OK);
    for (int i = 0; i < 3; i++)
        assert_int_equal(store_command(L->st, cap_fn, &get[i], "GET k%d",
                                       i), PARLEY_OK);
    live_run_for(L, 50);
    assert_int_equal(blocked.calls, 0);
    live_kill_redis(L);
    assert_true(live_wait_count(L, &L->downs, 1, 3000));
    assert_false(store_is_up(L->st));
    assert_int_equal(blocked.calls, 1);
    assert_int_equal(blocked.null, 1);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(get[i].calls, 1);
        assert_int_equal(get[i].null, 1);
    }
    assert_int_equal(store_command(L->st, cap_fn, &after, "PING"),
                     PARLEY_ERR_STATE);
    /* Several failed attempts later: still one "down", nothing doubled. */
    live_run_for(L, 700);
    assert_int_equal(L->downs, 1);
    assert_int_equal(L->ups, 1);
    assert_int_equal(blocked.calls, 1);
    assert_int_equal(after.calls, 0);

    L->redis = spawn_redis(L->port, L->dir);
    assert_true(L->redis > 0);
    assert_true(live_wait_count(L, &L->ups, 2, 8000));
    assert_int_equal(L->downs, 1);
    assert_int_equal(store_command(L->st, cap_fn, &ping, "PING"), PARLEY_OK);
    assert_true(live_wait_count(L, &ping.calls, 1, 2000));
    assert_string_equal(ping.str, "PONG");
    live_log_restore(L);
    assert_int_equal(live_log_count(L, "; retrying"), 1);
    assert_int_equal(live_log_count(L, "reachable again"), 1);
    for (int i = 0; i < 3; i++)
        assert_int_equal(get[i].calls, 1);
}

static void test_auth(void **state)
{
    struct live *L = *state;
    struct store *wrong, *none;
    struct cap set = { 0 }, get = { 0 };

    L->redis = start_redis_args(L, "--requirepass", PASSWORD, NULL);
    assert_true(L->redis > 0);
    live_log_capture(L);
    live_open(L, &L->st, 1, NULL, PASSWORD);
    store_on_state(L->st, live_state_fn, L);
    live_open(L, &L->extra[0], 1, NULL, WRONG_PASSWORD);
    live_open(L, &L->extra[1], 1, NULL, NULL);
    wrong = L->extra[0];
    none = L->extra[1];
    assert_true(live_wait_count(L, &L->ups, 1, 3000));
    assert_int_equal(store_command(L->st, cap_fn, &set, "SET a 1"),
                     PARLEY_OK);
    assert_int_equal(store_command(L->st, cap_fn, &get, "GET a"), PARLEY_OK);
    assert_true(live_wait_count(L, &get.calls, 1, 2000));
    assert_string_equal(get.str, "1");

    live_run_for(L, 600);
    assert_false(store_is_up(wrong));
    assert_false(store_is_up(none));
    assert_int_equal(store_command(wrong, cap_fn, &set, "PING"),
                     PARLEY_ERR_STATE);
    assert_non_null(strstr(store_errstr(wrong), "AUTH failed"));
    assert_null(strstr(store_errstr(wrong), WRONG_PASSWORD));
    assert_non_null(strstr(store_errstr(none), "NOAUTH"));
    store_close(wrong);
    store_close(none);
    L->extra[0] = L->extra[1] = NULL;
    live_log_restore(L);
    /* One warning per failing store, and no password anywhere. */
    assert_int_equal(live_log_count(L, "; retrying"), 2);
    assert_int_equal(live_log_count(L, PASSWORD), 0);
    assert_int_equal(live_log_count(L, WRONG_PASSWORD), 0);
}

static void test_unix_socket(void **state)
{
    struct live *L = *state;
    char sock[128];
    struct cap ping = { 0 };
    struct stat sb;

    snprintf(sock, sizeof(sock), "%s/redis.sock", L->dir);
    L->redis = start_redis_args(L, "--unixsocket", sock, "--unixsocketperm",
                                "700", NULL);
    assert_true(L->redis > 0);
    for (int i = 0; i < 100 && stat(sock, &sb) != 0; i++)
        live_run_for(L, 10);
    live_open(L, &L->st, 0, sock, NULL);
    store_on_state(L->st, live_state_fn, L);
    assert_true(live_wait_count(L, &L->ups, 1, 3000));
    assert_int_equal(store_command(L->st, cap_fn, &ping, "PING"), PARLEY_OK);
    assert_true(live_wait_count(L, &ping.calls, 1, 2000));
    assert_string_equal(ping.str, "PONG");
}

struct closer {
    struct store **slot;        /* cleared once the store is closed */
    int calls;
};

static void close_from_callback(struct store *st, struct redisReply *r,
                                void *privdata)
{
    struct closer *c = privdata;

    (void)r;
    c->calls++;
    store_close(st);
    *c->slot = NULL;
    /* Closed: refused at once, from inside the callback too. */
    assert_int_equal(store_command(st, NULL, NULL, "PING"),
                     PARLEY_ERR_STATE);
}

static void test_close_pending(void **state)
{
    struct live *L = *state;
    struct cap blocked = { 0 }, set[3] = { { 0 } }, later = { 0 };
    struct closer closer = { 0 };
    struct store *st2;
    int ups;

    start_up(L);
    assert_int_equal(store_command(L->st, cap_fn, &blocked, "BLPOP %s 30",
                                   "nothing"), PARLEY_OK);
    for (int i = 0; i < 3; i++)
        assert_int_equal(store_command(L->st, cap_fn, &set[i], "SET k %d",
                                       i), PARLEY_OK);
    live_run_for(L, 30);
    store_close(L->st);
    /* Every pending callback ran, with NULL, before store_close
     * returned; no state callback for a deliberate close. */
    assert_int_equal(blocked.calls, 1);
    assert_int_equal(blocked.null, 1);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(set[i].calls, 1);
        assert_int_equal(set[i].null, 1);
    }
    assert_int_equal(store_command(L->st, cap_fn, &later, "PING"),
                     PARLEY_ERR_STATE);
    store_close(L->st);     /* twice is harmless */
    L->st = NULL;
    live_run_for(L, 50);
    assert_int_equal(blocked.calls, 1);
    assert_int_equal(later.calls, 0);
    assert_int_equal(L->downs, 0);

    /* Close from inside a reply callback: the command queued behind it
     * gets NULL exactly once, after the callback returns. */
    live_open(L, &L->extra[0], 0, NULL, NULL);
    st2 = L->extra[0];
    closer.slot = &L->extra[0];
    store_on_state(st2, live_state_fn, L);
    ups = L->ups;
    assert_true(live_wait_count(L, &L->ups, ups + 1, 3000));
    memset(&later, 0, sizeof(later));
    assert_int_equal(store_command(st2, close_from_callback, &closer,
                                   "PING"), PARLEY_OK);
    assert_int_equal(store_command(st2, cap_fn, &later, "BLPOP %s 30",
                                   "nothing"), PARLEY_OK);
    assert_true(live_wait_count(L, &later.calls, 1, 2000));
    assert_int_equal(closer.calls, 1);
    assert_int_equal(later.null, 1);
    live_run_for(L, 50);
    assert_int_equal(later.calls, 1);
    assert_int_equal(closer.calls, 1);
}

static void test_close_while_down(void **state)
{
    struct live *L = *state;

    /* Closing in backoff (only the timer is open) and right after open
     * (connect in progress) both free everything. */
    live_open(L, &L->st, 0, NULL, NULL);
    live_run_for(L, 150);
    store_close(L->st);
    L->st = NULL;
    L->redis = spawn_redis(L->port, L->dir);
    assert_true(L->redis > 0);
    live_open(L, &L->st, 0, NULL, NULL);
    store_close(L->st);
    L->st = NULL;
    live_run_for(L, 50);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_down_and_back, setup, teardown),
        cmocka_unit_test_setup_teardown(test_auth, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unix_socket, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_pending, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_while_down, setup,
                                        teardown),
    };

    spawn_require("/usr/bin/redis-server");
    return cmocka_run_group_tests(tests, NULL, NULL);
}
