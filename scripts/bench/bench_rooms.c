/*
 * Router throughput and latency across many rooms.  Runs parley's real
 * router, store, llm client and loop in this process against a real
 * redis-server and the OpenAI stand-in (both started by rooms.sh), with a
 * counting adapter in place of a platform, and prints one line of numbers
 * per configuration so that configurations are compared side by side:
 *
 *   bench_rooms REDIS_PORT STUB_PORT MESSAGES ROOMS MAX_CONCURRENT [direct]
 *               [h2]
 *
 * With "direct" the router, Redis and the rooms are left out: MESSAGES
 * requests go straight to llm_complete, so the line shows what the
 * stand-in and curl alone do under the same load (the stand-in must
 * never be the limit of the figures above it).  With "h2" the llm client
 * speaks HTTP/2 in cleartext (llm.http2_prior_knowledge), so curl
 * multiplexes the requests over a few connections.
 *
 * What it measures is parley's part: CPU time per answer (history load,
 * prompt, JSON, HTTP, history store) and how waiting on the model
 * overlaps across rooms.  The stand-in's fixed delay models the LLM.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <cJSON.h>
#include <uv.h>

#include "adapter.h"
#include "config.h"
#include "event.h"
#include "llm.h"
#include "log.h"
#include "loop.h"
#include "router.h"
#include "status.h"
#include "store.h"

#define BENCH_MESSAGES_MAX 100000

struct bench {
    uv_loop_t uv;
    struct adapter ad;
    uint64_t *submitted_ns;     /* by message number */
    uint64_t *latency_ns;
    size_t n_done;
    size_t n_notice;
};

static struct bench b;

/* The message number travels in the text: "m<n> ...". */
static int bench_send(struct adapter *ad, const char *room,
                      const struct reply *reply, adapter_send_done_fn *done,
                      void *privdata)
{
    const char *m = strstr(reply->text, ": m");
    unsigned long n;

    (void)ad;
    (void)room;
    if (reply->notice || !m) {
        b.n_notice++;
    } else {
        n = strtoul(m + 3, NULL, 10);
        if (n < BENCH_MESSAGES_MAX)
            b.latency_ns[b.n_done++] = uv_hrtime() - b.submitted_ns[n];
    }
    done(PARLEY_OK, privdata);
    return PARLEY_OK;
}

static int bench_start(struct adapter *ad)
{
    (void)ad;
    return PARLEY_OK;
}

static void bench_nop(struct adapter *ad)
{
    (void)ad;
}

static const struct adapter_ops bench_ops = {
    .type = "bench", .start = bench_start, .send = bench_send,
    .stop = bench_nop, .free = bench_nop,
};

static int cmp_u64(const void *x, const void *y)
{
    uint64_t a = *(const uint64_t *)x, c = *(const uint64_t *)y;

    return a < c ? -1 : a > c;
}

static double cpu_seconds(void)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static void direct_done(const struct llm_result *res, void *privdata)
{
    uint64_t *submitted = privdata;

    if (res->status == PARLEY_OK && b.n_done < BENCH_MESSAGES_MAX)
        b.latency_ns[b.n_done++] = uv_hrtime() - *submitted;
    else
        b.n_notice++;
}

static void direct_submit(struct llm *llm, size_t i)
{
    cJSON *messages = cJSON_CreateArray();
    cJSON *m = cJSON_CreateObject();

    cJSON_AddStringToObject(m, "role", "user");
    cJSON_AddStringToObject(m, "content", "how are you?");
    cJSON_AddItemToArray(messages, m);
    b.submitted_ns[i] = uv_hrtime();
    if (llm_complete(llm, NULL, messages, direct_done, &b.submitted_ns[i],
                     NULL) != PARLEY_OK)
        b.n_notice++;
}

/* 10,000 requests in flight need as many sockets (see main.c). */
static void raise_open_files(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void tick(uv_timer_t *t)
{
    (void)t;
}

int main(int argc, char **argv)
{
    struct config cfg;
    struct loop *loop;
    struct store *st;
    struct llm *llm;
    struct router *r;
    uv_timer_t timer;
    char url[64], text[64], room[32];
    size_t messages, rooms;
    uint64_t t0, wall;
    double cpu0, cpu;
    struct rusage ru;
    int direct = 0, h2 = 0, bad = argc < 6;

    for (int i = 6; i < argc; i++) {
        if (strcmp(argv[i], "direct") == 0)
            direct = 1;
        else if (strcmp(argv[i], "h2") == 0)
            h2 = 1;
        else
            bad = 1;
    }
    if (h2) {
        const char *why = NULL;

        /* Say so instead of measuring HTTP/1.1 under an HTTP/2 label. */
        if (!loop_http_h2c_usable(&why)) {
            fprintf(stderr, "bench_rooms: http2_prior_knowledge ignored: "
                    "%s\n", why);
            return 69;
        }
    }
    if (bad) {
        fprintf(stderr, "usage: bench_rooms REDIS_PORT STUB_PORT MESSAGES "
                "ROOMS MAX_CONCURRENT [direct] [h2]\n");
        return 64;
    }
    messages = strtoul(argv[3], NULL, 10);
    rooms = strtoul(argv[4], NULL, 10);
    if (messages == 0 || messages > BENCH_MESSAGES_MAX || rooms == 0)
        return 64;
    b.submitted_ns = calloc(messages, sizeof(uint64_t));
    b.latency_ns = calloc(messages, sizeof(uint64_t));
    if (!b.submitted_ns || !b.latency_ns ||
        config_defaults(&cfg) != PARLEY_OK)
        return 70;
    snprintf(url, sizeof(url), "http://127.0.0.1:%s/v1", argv[2]);
    free(cfg.llm.base_url);
    cfg.llm.base_url = strdup(url);
    cfg.redis.port = (int)strtol(argv[1], NULL, 10);
    cfg.llm.max_concurrent = (int)strtol(argv[5], NULL, 10);
    cfg.llm.http2_prior_knowledge = h2;
    cfg.limits.user_requests_per_minute = 0;
    log_set_level(LOG_LEVEL_WARN);
    raise_open_files();

    uv_loop_init(&b.uv);
    if (loop_create(&loop, &b.uv) != PARLEY_OK ||
        store_open(&st, &b.uv, &cfg.redis, NULL) != PARLEY_OK ||
        llm_create(&llm, loop, &cfg.llm, NULL) != PARLEY_OK ||
        router_create(&r, &cfg, st, llm, loop) != PARLEY_OK)
        return 70;
    b.ad.ops = &bench_ops;
    b.ad.account = "bench";
    router_add_adapter(r, &b.ad);
    uv_timer_init(&b.uv, &timer);
    uv_timer_start(&timer, tick, 5, 5);
    while (!store_is_up(st))
        uv_run(&b.uv, UV_RUN_ONCE);

    cpu0 = cpu_seconds();
    t0 = uv_hrtime();
    for (size_t i = 0; direct && i < messages; i++)
        direct_submit(llm, i);
    while (direct && b.n_done + b.n_notice < messages)
        uv_run(&b.uv, UV_RUN_ONCE);
    for (size_t i = 0; !direct && i < messages; i++) {
        struct event ev;

        snprintf(room, sizeof(room), "#room%zu", i % rooms);
        snprintf(text, sizeof(text), "m%zu how are you?", i);
        memset(&ev, 0, sizeof(ev));
        ev.kind = EVENT_MESSAGE;
        ev.platform = "bench";
        ev.account = "bench";
        ev.room = room;
        ev.sender = "user";
        ev.text = text;
        ev.addressed = 1;
        b.submitted_ns[i] = uv_hrtime();
        router_submit(r, &ev);
    }
    while (router_pending(r) > 0)
        uv_run(&b.uv, UV_RUN_ONCE);
    wall = uv_hrtime() - t0;
    cpu = cpu_seconds() - cpu0;
    getrusage(RUSAGE_SELF, &ru);

    qsort(b.latency_ns, b.n_done, sizeof(uint64_t), cmp_u64);
    printf("%8zu %6zu %4s %8.2f %9.1f %8.1f %8.1f %8.1f %8.3f %7ld %4zu\n",
           messages, rooms, argv[5], wall / 1e9, b.n_done / (wall / 1e9),
           b.n_done ? b.latency_ns[b.n_done / 2] / 1e6 : 0.0,
           b.n_done ? b.latency_ns[b.n_done * 95 / 100] / 1e6 : 0.0,
           b.n_done ? b.latency_ns[b.n_done * 99 / 100] / 1e6 : 0.0,
           b.n_done ? cpu * 1e3 / (double)b.n_done : 0.0,
           ru.ru_maxrss / 1024, b.n_notice);

    uv_close((uv_handle_t *)&timer, NULL);
    router_close(r);
    store_close(st);
    llm_free(llm);
    loop_close(loop);
    uv_run(&b.uv, UV_RUN_DEFAULT);
    router_free(r);
    loop_free(loop);
    uv_loop_close(&b.uv);
    config_free(&cfg);
    free(b.submitted_ns);
    free(b.latency_ns);
    return b.n_done == messages ? 0 : 1;
}
