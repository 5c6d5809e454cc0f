/*
 * The live-Redis fixture shared by the unit tests that drive src/store.c
 * and the state layer against a real redis-server on a free loopback port
 * with a real libuv loop: a scratch directory, the server, one store whose
 * up/down reports are counted, a tick timer that keeps UV_RUN_ONCE from
 * blocking, waits bounded in loop time, a bounded teardown that stops the
 * server before judging (so a failed assertion leaves nothing behind), and
 * stderr captured to a file for tests that count log lines.  A test file
 * describes what differs (database, key prefix, log level, whether setup
 * already starts the server) in a struct live_opts and keeps its own
 * state in a file-level variable.  Header-only (static inline functions)
 * like spawn.h; include it from exactly one file per test program, after
 * <cmocka.h>.
 */
#ifndef PARLEY_TEST_LIVE_STORE_H
#define PARLEY_TEST_LIVE_STORE_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "spawn.h"

#include "config.h"
#include "log.h"
#include "status.h"
#include "store.h"

/* What differs between the test programs; a static const per file. */
struct live_opts {
    const char *tmpl;           /* mkdtemp template for the scratch dir */
    int db;                     /* SELECTed database of L->st */
    const char *prefix;         /* key prefix of every store opened */
    enum log_level level;       /* log level set by setup */
    int eager;                  /* setup starts Redis and waits for L->st */
};

struct live {
    uv_loop_t loop;
    uv_timer_t tick;            /* keeps UV_RUN_ONCE from blocking */
    char dir[64];
    char path[128];             /* scratch for file names */
    int port;
    pid_t redis;
    struct store *st;
    struct store *extra[2];     /* closed by teardown if a test fails */
    int ups;
    int downs;
    int saved_stderr;           /* while stderr goes to the log file */
    const struct live_opts *opts;   /* borrowed, static */
};

/* Make dir (len bytes) a fresh directory from tmpl; 0 or -1. */
static inline int live_dir_make(char *dir, size_t len, const char *tmpl)
{
    snprintf(dir, len, "%s", tmpl);
    return mkdtemp(dir) ? 0 : -1;
}

/* Remove what a test may leave in dir (server and parley logs, the unix
 * socket, a dump), then dir itself. */
static inline void live_dir_remove(const char *dir)
{
    static const char *files[] = { "redis.log", "parley.log", "redis.sock",
                                   "dump.rdb" };
    char path[128];

    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
        unlink(path);
    }
    rmdir(dir);
}

static inline void live_state_fn(struct store *st, int up, void *privdata)
{
    struct live *L = privdata;

    (void)st;
    if (up)
        L->ups++;
    else
        L->downs++;
}

static inline void live_tick_fn(uv_timer_t *t)
{
    (void)t;
}

/* Run the loop until *counter >= target or ms pass; returns whether the
 * target was reached. */
static inline int live_wait_count(struct live *L, const int *counter,
                                  int target, int ms)
{
    uint64_t end = uv_now(&L->loop) + (uint64_t)ms;

    uv_timer_start(&L->tick, live_tick_fn, 5, 5);
    while (*counter < target && uv_now(&L->loop) < end)
        uv_run(&L->loop, UV_RUN_ONCE);
    uv_timer_stop(&L->tick);
    return *counter >= target;
}

static inline void live_run_for(struct live *L, int ms)
{
    int never = 0;

    live_wait_count(L, &never, 1, ms);
}

static inline void live_kill_redis(struct live *L)
{
    if (L->redis > 0) {
        kill(L->redis, SIGKILL);
        waitpid(L->redis, NULL, 0);
        L->redis = -1;
    }
}

/* Open *out on L->port (or unix_socket) with the file's key prefix. */
static inline void live_open(struct live *L, struct store **out, int db,
                             const char *unix_socket, const char *password)
{
    struct config_redis cfg = { .host = "127.0.0.1", .port = L->port,
                                .unix_socket = (char *)unix_socket,
                                .db = db, .prefix = (char *)L->opts->prefix };

    assert_int_equal(store_open(out, &L->loop, &cfg, password), PARLEY_OK);
    assert_non_null(*out);
}

/* Open L->st and count its up/down reports in L->ups/L->downs. */
static inline void live_open_store(struct live *L)
{
    live_open(L, &L->st, L->opts->db, NULL, NULL);
    store_on_state(L->st, live_state_fn, L);
}

/* Start Redis on L->port, open L->st and wait for it to come up. */
static inline void live_start_up(struct live *L)
{
    L->redis = spawn_redis(L->port, L->dir);
    assert_true(L->redis > 0);
    live_open_store(L);
    assert_true(live_wait_count(L, &L->ups, 1, 3000));
}

/* The eager half of setup, without assertions (setup reports -1). */
static inline int live_start_quiet(struct live *L)
{
    struct config_redis cfg = { .host = "127.0.0.1", .port = L->port,
                                .db = L->opts->db,
                                .prefix = (char *)L->opts->prefix };

    L->redis = spawn_redis(L->port, L->dir);
    if (L->redis <= 0)
        return -1;
    if (store_open(&L->st, &L->loop, &cfg, NULL) != PARLEY_OK)
        return -1;
    store_on_state(L->st, live_state_fn, L);
    return live_wait_count(L, &L->ups, 1, 3000) ? 0 : -1;
}

static inline int live_setup(void **state, const struct live_opts *opts)
{
    struct live *L = calloc(1, sizeof(*L));

    if (!L)
        return -1;
    L->opts = opts;
    if (live_dir_make(L->dir, sizeof(L->dir), opts->tmpl) != 0 ||
        uv_loop_init(&L->loop) != 0 ||
        uv_timer_init(&L->loop, &L->tick) != 0) {
        free(L);
        return -1;
    }
    L->port = spawn_free_port();
    L->redis = -1;
    L->saved_stderr = -1;
    log_set_level(opts->level);
    *state = L;
    if (L->port <= 0)
        return -1;
    return opts->eager ? live_start_quiet(L) : 0;
}

/* Send stderr (the log) to dir/parley.log until live_log_restore. */
static inline void live_log_capture(struct live *L)
{
    int fd;

    snprintf(L->path, sizeof(L->path), "%s/parley.log", L->dir);
    fflush(stderr);
    L->saved_stderr = dup(2);
    fd = open(L->path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0 && L->saved_stderr >= 0);
    dup2(fd, 2);
    close(fd);
}

static inline void live_log_restore(struct live *L)
{
    if (L->saved_stderr < 0)
        return;
    fflush(stderr);
    dup2(L->saved_stderr, 2);
    close(L->saved_stderr);
    L->saved_stderr = -1;
}

/* Occurrences of needle in the captured log. */
static inline int live_log_count(struct live *L, const char *needle)
{
    char buf[65536];
    size_t n;
    int count = 0;
    FILE *f;

    snprintf(L->path, sizeof(L->path), "%s/parley.log", L->dir);
    f = fopen(L->path, "r");
    if (!f)
        return -1;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    for (const char *p = strstr(buf, needle); p; p = strstr(p + 1, needle))
        count++;
    return count;
}

static inline int live_teardown(void **state)
{
    struct live *L = *state;
    uint64_t end;
    int closed;

    live_log_restore(L);
    if (L->st)
        store_close(L->st);
    L->st = NULL;
    for (int i = 0; i < 2; i++)
        if (L->extra[i])
            store_close(L->extra[i]);
    uv_close((uv_handle_t *)&L->tick, NULL);
    /* Bounded drain: a store that never closes its handles fails here
     * instead of hanging the suite. */
    end = uv_now(&L->loop) + 3000;
    while (uv_loop_alive(&L->loop) && uv_now(&L->loop) < end)
        uv_run(&L->loop, UV_RUN_NOWAIT);
    closed = uv_loop_close(&L->loop);
    /* Stop the server before judging, so a failure leaves nothing. */
    spawn_stop(L->redis);
    live_dir_remove(L->dir);
    free(L);
    assert_int_equal(closed, 0);
    return 0;
}

#endif
