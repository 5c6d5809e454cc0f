/*
 * parley: command line, start-up and shutdown.  Loads and checks the
 * configuration, reads secrets from the environment, builds the loop, the
 * Redis store, the LLM client, the router and the adapters, runs the loop,
 * and on SIGINT/SIGTERM (or end of console input) lets answers in flight
 * finish before closing everything in the reverse order.  This is the only
 * file that decides the process exit code.
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#include <curl/curl.h>

#include "adapter.h"
#include "config.h"
#include "console/console.h"
#include "instance.h"
#include "lease.h"
#include "llm.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"
#include "monitor.h"
#include "router.h"
#include "state.h"
#include "status.h"
#include "store.h"
#include "work.h"

/* Exit codes, from sysexits.h, documented in README.md. */
#define EXIT_USAGE       64
#define EXIT_UNAVAILABLE 69
#define EXIT_SOFTWARE    70
#define EXIT_TEMPFAIL    75     /* a lease was lost: restart as standby */
#define EXIT_CONFIG      78

/* Adapters start once Redis is connected, so the first messages already
 * see their history; if Redis does not answer within this time they start
 * anyway and the bot runs without history until it comes back. */
#define MAIN_REDIS_WAIT_MS 3000
#define MAIN_REDIS_POLL_MS 10
/* Gauges for /metrics and /healthz are sampled this often. */
#define MAIN_METRICS_SAMPLE_MS 250

/* How long answers in flight may take after SIGTERM before we give up. */
#define MAIN_DRAIN_TIMEOUT_MS 15000
#define MAIN_DRAIN_POLL_MS 50
#define MAIN_ERR_MAX 8192

/* The file's adapters plus the console that --console adds. */
#define MAIN_ADAPTERS_MAX (CONFIG_MAX_ADAPTERS + 1)
/* At shutdown, how long to wait for Redis to confirm that the leases
 * were given up (then the TTL frees them anyway). */
#define MAIN_RELEASE_WAIT_MS 1000

struct app;

/* An adapter's lease (ha.enabled): the adapter connects when it is
 * acquired and the process leaves when it is lost. */
struct app_lease {
    struct app *app;
    struct adapter *ad;
    struct lease *lease;
    int started;
};

struct app {
    struct config cfg;
    struct loop *loop;          /* owns the uv loop */
    struct store *store;
    struct llm *llm;
    struct router *router;
    struct work *work;          /* ha.share_work, else NULL */
    struct adapter *adapters[MAIN_ADAPTERS_MAX];
    size_t n_adapters;
    struct app_lease leases[MAIN_ADAPTERS_MAX];   /* by adapter index */
    size_t releases_pending;    /* lease releases Redis has not answered */
    uint64_t release_deadline;
    int releasing;
    struct loop_signal *sig_int, *sig_term, *sig_hup;
    struct loop_timer *drain_timer;
    struct loop_timer *start_timer;
    uint64_t start_deadline;
    struct loop_timer *sample_timer;
    struct monitor *monitor;
    uint64_t drain_deadline;
    const char *cfg_file;       /* -c FILE, NULL for the built-in */
    int draining;
    int exit_code;
};

static const char usage_text[] =
    "usage: parley [-c FILE] [--console] [--check-config] [--print-redis]\n"
    "              [--version] [--help]\n"
    "\n"
    "  -c, --config FILE  load FILE (libconfig syntax, see bot.conf.example);\n"
    "                     without it parley runs a built-in local setup:\n"
    "                     the console adapter and Redis on 127.0.0.1:6379\n"
    "      --console      also chat on stdin/stdout (room \"console\")\n"
    "      --check-config validate the configuration and the secrets it\n"
    "                     names, without connecting anywhere\n"
    "      --print-redis  print the Redis address as \"tcp HOST PORT\",\n"
    "                     \"unix PATH\" or \"sentinel NAME HOST PORT\"\n"
    "                     (the first sentinel) and exit\n"
    "  -V, --version      print the version\n"
    "  -h, --help         this text\n"
    "\n"
    "environment: OPENAI_API_KEY (or the variable llm.api_key_env names;\n"
    "  NAME_FILE reads it from a file), PARLEY_REDIS=HOST:PORT|unix:PATH|\n"
    "  sentinel:NAME@HOST:PORT[,HOST:PORT...] overrides redis.*; without\n"
    "  -c also OPENAI_BASE_URL, OPENAI_MODEL.\n"
    "exit codes: 0 ok, 64 usage, 69 service unavailable at start,\n"
    "  70 internal error, 75 a lease was lost (ha.enabled: restart it\n"
    "  and it stands by), 78 configuration error.\n";

static const char setup_text[] =
    "parley: no language model is configured.\n"
    "\n"
    "To chat with OpenAI, set your API key and run again:\n"
    "    export OPENAI_API_KEY=sk-...        (or OPENAI_API_KEY_FILE=path)\n"
    "To use a local OpenAI-compatible server (Ollama, llama.cpp, vLLM):\n"
    "    export OPENAI_BASE_URL=http://127.0.0.1:11434/v1\n"
    "    export OPENAI_MODEL=llama3.2\n"
    "For Matrix or IRC, copy bot.conf.example to bot.conf and edit it.\n";

static int replace_str(char **field, const char *value)
{
    char *copy = strdup(value);

    if (!copy)
        return PARLEY_ERR_OOM;
    free(*field);
    *field = copy;
    return PARLEY_OK;
}

/* PARLEY_REDIS=HOST:PORT or unix:PATH overrides the file, so run.sh and
 * docker-compose can point parley at the Redis they started. */
static int apply_redis_env(struct config *cfg, char *err, size_t errlen)
{
    const char *v = getenv("PARLEY_REDIS");
    const char *colon;
    char *end;
    long port;

    if (!v || !*v)
        return PARLEY_OK;
    /* A fixed address from the environment also wins over
     * redis.sentinels (run.sh and tests point parley at one Redis). */
    if (strncmp(v, "sentinel:", 9) == 0)
        return config_redis_sentinel_env(&cfg->redis, v + 9, err, errlen);
    if (strncmp(v, "unix:", 5) == 0 && v[5]) {
        config_free_redis_sentinels(&cfg->redis);
        return replace_str(&cfg->redis.unix_socket, v + 5);
    }
    colon = strrchr(v, ':');
    if (!colon || colon == v)
        goto bad;
    port = strtol(colon + 1, &end, 10);
    if (*end || port < 1 || port > 65535)
        goto bad;
    {
        char host[256];

        if ((size_t)(colon - v) >= sizeof(host))
            goto bad;
        memcpy(host, v, (size_t)(colon - v));
        host[colon - v] = '\0';
        if (replace_str(&cfg->redis.host, host) != PARLEY_OK)
            return PARLEY_ERR_OOM;
    }
    cfg->redis.port = (int)port;
    free(cfg->redis.unix_socket);
    cfg->redis.unix_socket = NULL;
    config_free_redis_sentinels(&cfg->redis);
    return PARLEY_OK;
bad:
    snprintf(err, errlen, "PARLEY_REDIS: expected HOST:PORT or unix:PATH, "
             "got \"%s\"", v);
    return PARLEY_ERR_CONFIG;
}

/* The built-in setup takes its model server from the environment. */
static int apply_builtin_env(struct config *cfg)
{
    const char *url = getenv("OPENAI_BASE_URL");
    const char *model = getenv("OPENAI_MODEL");
    int result = PARLEY_OK;

    if (url && *url) {
        size_t n = strlen(url);

        result = replace_str(&cfg->llm.base_url, url);
        /* Accept ".../v1/" as well as ".../v1". */
        while (result == PARLEY_OK && n > 0 && cfg->llm.base_url[n - 1] == '/')
            cfg->llm.base_url[--n] = '\0';
    }
    if (result == PARLEY_OK && model && *model)
        result = replace_str(&cfg->llm.model, model);
    return result;
}

static int uses_openai(const struct config *cfg)
{
    return strstr(cfg->llm.base_url, "api.openai.com") != NULL;
}

static void app_begin_shutdown(struct app *app, const char *why);

/* Release main's own signals and timers (any may be NULL); also from
 * inside one of the timers' callbacks. */
static void app_free_handles(struct app *app)
{
    loop_signal_free(app->sig_int);
    loop_signal_free(app->sig_term);
    loop_signal_free(app->sig_hup);
    loop_timer_free(app->drain_timer);
    loop_timer_free(app->start_timer);
    loop_timer_free(app->sample_timer);
    app->sig_int = app->sig_term = app->sig_hup = NULL;
    app->drain_timer = app->start_timer = app->sample_timer = NULL;
}

static void on_lease_released(void *privdata)
{
    struct app *app = privdata;

    if (app->releases_pending > 0)
        app->releases_pending--;
}

/* After the adapters stopped: give every lease up, so that a standby
 * takes the accounts over now instead of after the TTL. */
static void app_release_leases(struct app *app)
{
    app->releasing = 1;
    app->release_deadline = loop_now_ms(app->loop) + MAIN_RELEASE_WAIT_MS;
    for (size_t i = 0; i < app->n_adapters; i++) {
        if (!app->leases[i].lease)
            continue;
        app->releases_pending++;
        lease_release(app->leases[i].lease, on_lease_released, app);
    }
}

static void on_drain_timer(void *privdata)
{
    struct app *app = privdata;
    size_t pending = router_pending(app->router);

    if (!app->releasing) {
        if (pending > 0 && loop_now_ms(app->loop) < app->drain_deadline)
            return;
        if (pending > 0)
            log_warn("shutdown: %zu answer(s) still in flight after %d ms, "
                     "giving up on them", pending, MAIN_DRAIN_TIMEOUT_MS);
        router_close(app->router);
        work_stop(app->work);
        for (size_t i = 0; i < app->n_adapters; i++)
            app->adapters[i]->ops->stop(app->adapters[i]);
        app_release_leases(app);
    }
    if (app->releases_pending > 0 &&
        loop_now_ms(app->loop) < app->release_deadline)
        return;
    for (size_t i = 0; i < app->n_adapters; i++) {
        lease_free(app->leases[i].lease);
        app->leases[i].lease = NULL;
        app->adapters[i]->lease = NULL;
    }
    state_fence_clear();
    app_free_handles(app);     /* the drain timer too: we are in it */
    /* The monitor thread reads only metrics.c; stop it before the
     * state it reports goes away, so /healthz never shows a half-closed
     * bot as healthy. */
    metrics_set_redis(0);
    monitor_stop(app->monitor);
    app->monitor = NULL;
    store_close(app->store);
    app->store = NULL;
    llm_free(app->llm);
    app->llm = NULL;
    loop_close(app->loop);
}

/* Stop taking messages, let answers in flight finish, then close. */
static void app_begin_shutdown(struct app *app, const char *why)
{
    if (app->draining)
        return;
    app->draining = 1;
    log_info("shutting down (%s); %zu answer(s) in flight", why,
             router_pending(app->router));
    router_drain(app->router);
    app->drain_deadline = loop_now_ms(app->loop) + MAIN_DRAIN_TIMEOUT_MS;
    loop_timer_start(app->drain_timer, 0, MAIN_DRAIN_POLL_MS);
}

/* config_load's notes (deprecated keys), one log line each. */
static void app_log_warnings(const char *text)
{
    while (*text) {
        size_t n = strcspn(text, "\n");

        log_warn("%.*s", (int)n, text);
        text += n;
        if (*text == '\n')
            text++;
    }
}

#define SWAP(a, b) do { __typeof__(a) swap_tmp_ = (a); (a) = (b); \
                         (b) = swap_tmp_; } while (0)

/*
 * SIGHUP: read the file again and take over what can change without
 * touching connections: prompts, few-shot examples, limits, per-room
 * overrides, context budget, the LLM settings and the log level.  The
 * parts are swapped into the running config (not the whole struct) because
 * adapters keep pointers into it; the new file's other parts (Redis,
 * adapters) need a restart, which the log line says.  A file that does
 * not load leaves everything as it was.
 */
static void app_reload(struct app *app)
{
    struct config fresh;
    char err[MAIN_ERR_MAX] = "";
    enum log_level level;
    enum log_format format = LOG_FORMAT_TEXT;

    if (!app->cfg_file) {
        log_info("SIGHUP: running the built-in setup, nothing to reload");
        return;
    }
    memset(&fresh, 0, sizeof(fresh));
    if (config_load(&fresh, app->cfg_file, err, sizeof(err)) != PARLEY_OK) {
        log_error("SIGHUP: %s not reloaded, the running configuration "
                  "stays: %s", app->cfg_file, err);
        config_free(&fresh);
        return;
    }
    if (fresh.warnings)
        app_log_warnings(fresh.warnings);
    SWAP(app->cfg.prompts, fresh.prompts);
    SWAP(app->cfg.limits, fresh.limits);
    SWAP(app->cfg.context, fresh.context);
    SWAP(app->cfg.rooms, fresh.rooms);
    SWAP(app->cfg.n_rooms, fresh.n_rooms);
    SWAP(app->cfg.llm, fresh.llm);
    SWAP(app->cfg.bot.log_level, fresh.bot.log_level);
    SWAP(app->cfg.bot.log_format, fresh.bot.log_format);
    if (llm_configure(app->llm, &app->cfg.llm) != PARLEY_OK) {
        /* Keep the old LLM settings rather than run half-configured. */
        SWAP(app->cfg.llm, fresh.llm);
        log_warn("SIGHUP: new llm settings not applied (out of memory)");
    }
    router_reload(app->router, &app->cfg);
    if (app->cfg.bot.log_level &&
        log_level_parse(app->cfg.bot.log_level, &level) == 0)
        log_set_level(level);
    log_set_format(app->cfg.bot.log_format &&
                   log_format_parse(app->cfg.bot.log_format, &format) == 0 ?
                   format : LOG_FORMAT_TEXT);
    config_free(&fresh);
    log_info("SIGHUP: reloaded prompts, limits, rooms and llm settings "
             "from %s (Redis and adapter changes need a restart)",
             app->cfg_file);
}

static void on_signal(int signum, void *privdata)
{
    struct app *app = privdata;

    if (signum == SIGHUP) {
        app_reload(app);
        return;
    }
    if (app->draining) {
        /* A second signal: do not wait any longer. */
        app->drain_deadline = 0;
        return;
    }
    app_begin_shutdown(app, signum == SIGINT ? "SIGINT" : "SIGTERM");
}

static void on_console_eof(void *privdata)
{
    struct app *app = privdata;

    /* With only the console, end of input is the end of the session;
     * beside Matrix or IRC it just means nobody types here any more. */
    if (app->n_adapters == 1)
        app_begin_shutdown(app, "end of console input");
}

/* Copy what the loop knows into the gauges the monitor thread reads. */
static void on_sample_timer(void *privdata)
{
    struct app *app = privdata;

    metrics_set_redis(store_is_up(app->store));
    metrics_set_adapter_count(app->n_adapters);
    for (size_t i = 0; i < app->n_adapters; i++) {
        metrics_set_adapter(i, app->adapters[i]->ops->type,
                            app->adapters[i]->account,
                            app->adapters[i]->connected);
        metrics_set_lease(i, app->leases[i].lease ?
                          lease_state_name(lease_get_state(
                              app->leases[i].lease)) : NULL);
    }
    metrics_set_queue(router_pending(app->router),
                      router_rooms_active(app->router));
}

/*
 * A lease changed (lease.h).  Acquired: take up the jobs the previous
 * holder left for this account, then connect it.  Lost: disconnect at
 * once (sends already stopped: the adapter checks lease_may_send), and
 * leave with EXIT_TEMPFAIL once the other accounts' answers are out, so
 * that the supervisor starts this instance again as a standby; its other
 * leases are released on the way out, so standbys take them over now.
 */
static void on_lease_change(struct lease *l, enum lease_state state,
                            void *privdata)
{
    struct app_lease *al = privdata;
    struct app *app = al->app;
    struct adapter *ad = al->ad;

    (void)l;
    if (state == LEASE_HELD && !al->started && !app->draining) {
        al->started = 1;
        router_resume_adapter(app->router, ad);
        if (ad->ops->start(ad) != PARLEY_OK) {
            log_error("%s adapter failed to start: %s", ad->ops->type,
                      ad->errstr);
            app->exit_code = EXIT_UNAVAILABLE;
            app_begin_shutdown(app, "an adapter failed to start");
        }
    } else if (state == LEASE_LOST) {
        log_error("%s %s: disconnecting; another instance takes the "
                  "account over", ad->ops->type, ad->account);
        if (al->started)
            ad->ops->stop(ad);
        if (!app->exit_code)
            app->exit_code = EXIT_TEMPFAIL;
        app_begin_shutdown(app, "a lease was lost");
    }
}

/* With ha.enabled, one lease per adapter that holds a platform
 * connection (ADAPTER_CAP_LEASED), owned by this instance's name. */
static int app_create_leases(struct app *app)
{
    const char *owner;

    if (!app->cfg.ha.enabled)
        return PARLEY_OK;
    owner = instance_name(NULL);
    if (!owner)
        return PARLEY_ERR_OOM;
    for (size_t i = 0; i < app->n_adapters; i++) {
        struct adapter *ad = app->adapters[i];
        const struct adapter_desc *d = adapter_find(ad->ops->type);
        struct app_lease *al = &app->leases[i];
        int result;

        if (!d || !(d->caps & ADAPTER_CAP_LEASED))
            continue;
        al->app = app;
        al->ad = ad;
        result = lease_create(&al->lease, app->loop, app->store,
                              ad->ops->type, ad->account, owner,
                              app->cfg.ha.lease_ms, on_lease_change, al);
        if (result != PARLEY_OK)
            return result;
        ad->lease = al->lease;
    }
    log_info("ha: instance %s, leases of %d ms", owner,
             app->cfg.ha.lease_ms);
    return PARLEY_OK;
}

static void app_start_adapters(struct app *app)
{
    for (size_t i = 0; i < app->n_adapters; i++) {
        struct adapter *ad = app->adapters[i];

        if (app->leases[i].lease) {
            /* Connects once acquired (on_lease_change). */
            lease_start(app->leases[i].lease);
            continue;
        }
        if (ad->ops->start(ad) != PARLEY_OK) {
            log_error("%s adapter failed to start: %s", ad->ops->type,
                      ad->errstr);
            app->exit_code = EXIT_UNAVAILABLE;
            app_begin_shutdown(app, "an adapter failed to start");
            return;
        }
    }
}

static void on_start_timer(void *privdata)
{
    struct app *app = privdata;

    if (app->draining) {
        loop_timer_stop(app->start_timer);
        return;
    }
    if (!store_is_up(app->store)) {
        if (loop_now_ms(app->loop) < app->start_deadline)
            return;
        log_warn("starting without Redis: no history until it is back");
    }
    loop_timer_stop(app->start_timer);
    /* Jobs left by a previous run go first in their rooms' queues. */
    if (store_is_up(app->store))
        router_resume(app->router);
    app_start_adapters(app);
    work_start(app->work);
}

static int app_has_adapter(const struct app *app,
                           const struct adapter_desc *d)
{
    for (size_t i = 0; i < app->n_adapters; i++)
        if (strcmp(app->adapters[i]->ops->type, d->name) == 0)
            return 1;
    return 0;
}

/* Create one adapter into the next slot; greet is its block's greeting
 * policy, which the router reads from the adapter. */
static int app_add_adapter(struct app *app, const struct adapter_desc *d,
                           const struct adapter_env *env, void *setting,
                           const struct config_greet *greet, char *err,
                           size_t errlen)
{
    struct adapter *ad = NULL;
    int result;

    if (app->n_adapters >= MAIN_ADAPTERS_MAX) {
        snprintf(err, errlen, "%s: more than %d adapters", app->cfg.path,
                 MAIN_ADAPTERS_MAX);
        return PARLEY_ERR_CONFIG;
    }
    result = d->create(&ad, env, setting, err, errlen);
    if (result != PARLEY_OK)
        return result;
    ad->greet = *greet;
    app->adapters[app->n_adapters++] = ad;
    return PARLEY_OK;
}

/* Create (not start) the configured adapters, plus the console when asked
 * for and not configured.  Used by --check-config as well: constructors
 * check what config_load could not (secrets they read) without
 * connecting.  Types come from the registry (adapters/registry.c). */
static int app_create_adapters(struct app *app, int console, char *err,
                               size_t errlen)
{
    struct adapter_env env = { app->loop, app->store, &app->cfg };
    const struct adapter_desc *console_desc = adapter_find("console");
    int have_console = 0;

    for (size_t i = 0; i < app->cfg.n_adapters; i++) {
        const struct config_adapter *ca = &app->cfg.adapters[i];
        const struct adapter_desc *d = adapter_find(ca->type);
        int result;

        if (!d) {
            snprintf(err, errlen, "%s:%d: adapters[%zu].type: \"%s\" is "
                     "not built into this parley", app->cfg.path, ca->line,
                     i, ca->type);
            return PARLEY_ERR_CONFIG;
        }
        /* One stdin: a repeated console block adds nothing. */
        if ((d->caps & ADAPTER_CAP_SINGLE) && app_has_adapter(app, d))
            continue;
        if (d == console_desc)
            have_console = 1;
        result = app_add_adapter(app, d, &env, ca->setting, &ca->greet, err,
                                 errlen);
        if (result != PARLEY_OK)
            return result;
        /* The constructor set the adapter's default; the block decides. */
        if (ca->stream >= 0)
            app->adapters[app->n_adapters - 1]->stream = ca->stream;
    }
    if (console && !have_console && console_desc) {
        struct config_greet greet;
        int result;

        config_greet_read(NULL, &greet);
        result = app_add_adapter(app, console_desc, &env, NULL, &greet, err,
                                 errlen);
        if (result != PARLEY_OK)
            return result;
    }
    if (app->n_adapters == 0) {
        snprintf(err, errlen, "%s: no adapters configured (add an "
                 "\"adapters\" list or use --console)", app->cfg.path);
        return PARLEY_ERR_CONFIG;
    }
    return PARLEY_OK;
}

static void app_free_adapters(struct app *app)
{
    for (size_t i = 0; i < app->n_adapters; i++)
        app->adapters[i]->ops->free(app->adapters[i]);
    app->n_adapters = 0;
}

/* Release what app_run built when it fails before the loop runs. */
static void app_teardown(struct app *app)
{
    if (app->router)
        router_close(app->router);
    work_stop(app->work);
    if (app->store)
        store_close(app->store);
    if (app->llm)
        llm_free(app->llm);
    app_free_handles(app);
    if (app->loop) {
        loop_close(app->loop);
        loop_run(app->loop);
    }
    router_free(app->router);
    work_free(app->work);
    loop_free(app->loop);
}

/* The process holds the API key and passwords in memory: a core file
 * would write them to disk, and a dumpable process lets any process of
 * the same user read its memory (/proc/<pid>/mem, ptrace).  Both are
 * turned off before any secret is read (issue 12, defect 10); a failure
 * is only logged, since the kernel may forbid neither. */
static void forbid_core_dumps(void)
{
    struct rlimit rl = { 0, 0 };

    if (setrlimit(RLIMIT_CORE, &rl) != 0)
        log_warn("cannot set RLIMIT_CORE to 0: core files stay possible");
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
        log_warn("cannot clear the dumpable flag: core files stay "
                 "possible");
}

/* Every request in flight to the model holds a socket (HTTP/1.1), so
 * llm.max_concurrent up to 16384 needs more than the usual soft limit
 * of 1024 open files: raise the soft limit to the hard one, which needs
 * no privilege, and say when even that is short. */
static void raise_open_files(int max_concurrent)
{
    struct rlimit rl;
    rlim_t before;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    before = rl.rlim_cur;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            rl.rlim_cur = before;
        else
            log_info("open files: soft limit raised from %llu to %llu",
                     (unsigned long long)before,
                     (unsigned long long)rl.rlim_cur);
    }
    if (rl.rlim_cur != RLIM_INFINITY &&
        rl.rlim_cur < (rlim_t)max_concurrent + 64)
        log_warn("open files: limit %llu is below llm.max_concurrent %d "
                 "plus room for adapters; raise it (ulimit -n)",
                 (unsigned long long)rl.rlim_cur, max_concurrent);
}

static int app_run(struct app *app, int console)
{
    char err[MAIN_ERR_MAX] = "";
    int result;

    if (loop_create(&app->loop, NULL) != PARLEY_OK) {
        log_error("cannot create the event loop");
        return EXIT_SOFTWARE;
    }
    if (store_open_full(&app->store, loop_uv(app->loop), &app->cfg.redis,
                        app->cfg.redis_password,
                        app->cfg.sentinel_password) != PARLEY_OK ||
        llm_create(&app->llm, app->loop, &app->cfg.llm,
                   app->cfg.api_key) != PARLEY_OK ||
        router_create(&app->router, &app->cfg, app->store, app->llm,
                      app->loop) != PARLEY_OK) {
        log_error("cannot start: out of memory");
        app_teardown(app);
        return EXIT_SOFTWARE;
    }
    if (app->cfg.ha.share_work &&
        work_create(&app->work, app->router, app->store, app->loop,
                    instance_name(NULL)) != PARLEY_OK) {
        log_error("cannot start: out of memory");
        app_teardown(app);
        return EXIT_SOFTWARE;
    }
    result = app_create_adapters(app, console, err, sizeof(err));
    if (result != PARLEY_OK) {
        fprintf(stderr, "parley: %s\n", err);
        app_free_adapters(app);
        app_teardown(app);
        return result == PARLEY_ERR_CONFIG ? EXIT_CONFIG : EXIT_SOFTWARE;
    }
    app->sig_int = loop_signal_new(app->loop, SIGINT, on_signal, app);
    app->sig_term = loop_signal_new(app->loop, SIGTERM, on_signal, app);
    app->sig_hup = loop_signal_new(app->loop, SIGHUP, on_signal, app);
    app->drain_timer = loop_timer_new(app->loop, on_drain_timer, app);
    app->start_timer = loop_timer_new(app->loop, on_start_timer, app);
    app->sample_timer = loop_timer_new(app->loop, on_sample_timer, app);
    if (!app->sig_int || !app->sig_term || !app->sig_hup ||
        !app->drain_timer || !app->start_timer || !app->sample_timer) {
        log_error("cannot start: out of memory");
        app_free_adapters(app);
        app_teardown(app);
        return EXIT_SOFTWARE;
    }

    for (size_t i = 0; i < app->n_adapters; i++) {
        struct adapter *ad = app->adapters[i];

        /* An adapter without a router would crash on its first event;
         * the limits match (MAIN_ADAPTERS_MAX), so this is a bug. */
        if (router_add_adapter(app->router, ad) != PARLEY_OK) {
            log_error("internal error: the router takes no more than "
                      "%zu adapters", i);
            app->exit_code = EXIT_SOFTWARE;
            app_begin_shutdown(app, "too many adapters");
            break;
        }
        if (strcmp(ad->ops->type, "console") == 0)
            console_on_eof(ad, on_console_eof, app);
    }
    metrics_reset();
    metrics_set_instance(instance_name(NULL));
    if (app_create_leases(app) != PARLEY_OK) {
        log_error("cannot start: out of memory");
        app->exit_code = EXIT_SOFTWARE;
        app_begin_shutdown(app, "out of memory");
    }
    loop_timer_start(app->sample_timer, 0, MAIN_METRICS_SAMPLE_MS);
    if (app->cfg.metrics.listen) {
        result = monitor_start(&app->monitor, app->cfg.metrics.listen, err,
                               sizeof(err));
        if (result != PARLEY_OK) {
            log_error("%s", err);
            app->exit_code = EXIT_UNAVAILABLE;
            app_begin_shutdown(app, "the metrics endpoint cannot start");
        } else {
            log_info("metrics: /healthz and /metrics on %s (port %d)",
                     app->cfg.metrics.listen, monitor_port(app->monitor));
        }
    }
    raise_open_files(app->cfg.llm.max_concurrent);
    app->start_deadline = loop_now_ms(app->loop) + MAIN_REDIS_WAIT_MS;
    loop_timer_start(app->start_timer, 0, MAIN_REDIS_POLL_MS);
    if (app->cfg.redis.n_sentinels > 0)
        log_info("parley %s running: model %s at %s, redis master %s "
                 "through %zu sentinel(s)", PARLEY_VERSION,
                 app->cfg.llm.model, app->cfg.llm.base_url,
                 app->cfg.redis.master_name, app->cfg.redis.n_sentinels);
    else if (app->cfg.redis.unix_socket)
        log_info("parley %s running: model %s at %s, redis unix:%s",
                 PARLEY_VERSION, app->cfg.llm.model, app->cfg.llm.base_url,
                 app->cfg.redis.unix_socket);
    else
        log_info("parley %s running: model %s at %s, redis %s:%d",
                 PARLEY_VERSION, app->cfg.llm.model, app->cfg.llm.base_url,
                 app->cfg.redis.host, app->cfg.redis.port);
    loop_run(app->loop);
    /* Close callbacks of adapters and the loop ran above; now memory.
     * loop_free warns if a handle was left open. */
    app_free_adapters(app);
    router_free(app->router);
    work_free(app->work);
    loop_free(app->loop);
    return app->exit_code;
}

int main(int argc, char **argv)
{
    static const struct option options[] = {
        { "config", required_argument, NULL, 'c' },
        { "console", no_argument, NULL, 'C' },
        { "check-config", no_argument, NULL, 'k' },
        { "print-redis", no_argument, NULL, 'r' },
        { "version", no_argument, NULL, 'V' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    static struct app app;
    const char *path = NULL;
    int console = 0, check = 0, print_redis = 0;
    char err[MAIN_ERR_MAX] = "";
    enum log_level level;
    enum log_format format;
    int opt, result;

    while ((opt = getopt_long(argc, argv, "c:Vh", options, NULL)) != -1) {
        switch (opt) {
        case 'c': path = optarg; break;
        case 'C': console = 1; break;
        case 'k': check = 1; break;
        case 'r': print_redis = 1; break;
        case 'V': printf("parley %s\n", PARLEY_VERSION); return 0;
        case 'h': fputs(usage_text, stdout); return 0;
        default: fputs(usage_text, stderr); return EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "parley: unexpected argument \"%s\"\n%s",
                argv[optind], usage_text);
        return EXIT_USAGE;
    }
    signal(SIGPIPE, SIG_IGN);
    forbid_core_dumps();

    app.cfg_file = path;
    result = path ? config_load(&app.cfg, path, err, sizeof(err))
                  : config_defaults(&app.cfg);
    if (result == PARLEY_OK && !path)
        result = apply_builtin_env(&app.cfg);
    if (result == PARLEY_OK)
        result = apply_redis_env(&app.cfg, err, sizeof(err));
    if (result != PARLEY_OK) {
        fprintf(stderr, "parley: configuration errors:\n%s\n",
                err[0] ? err : parley_status_name(result));
        config_free(&app.cfg);
        return EXIT_CONFIG;
    }
    if (app.cfg.warnings)
        app_log_warnings(app.cfg.warnings);
    if (print_redis) {
        if (app.cfg.redis.n_sentinels > 0)
            printf("sentinel %s %s %d\n", app.cfg.redis.master_name,
                   app.cfg.redis.sentinels[0].host,
                   app.cfg.redis.sentinels[0].port);
        else if (app.cfg.redis.unix_socket)
            printf("unix %s\n", app.cfg.redis.unix_socket);
        else
            printf("tcp %s %d\n", app.cfg.redis.host, app.cfg.redis.port);
        config_free(&app.cfg);
        return 0;
    }
    if (config_secrets(&app.cfg, err, sizeof(err)) != PARLEY_OK) {
        fprintf(stderr, "parley: %s\n", err);
        config_free(&app.cfg);
        return EXIT_CONFIG;
    }
    if (!app.cfg.api_key && uses_openai(&app.cfg)) {
        if (!path)
            fputs(setup_text, stderr);
        else
            fprintf(stderr, "parley: %s: llm.api_key_env: the environment "
                    "variable %s (or %s_FILE) is not set; "
                    "api.openai.com needs a key\n", path,
                    app.cfg.llm.api_key_env, app.cfg.llm.api_key_env);
        config_free(&app.cfg);
        return EXIT_CONFIG;
    }
    if (app.cfg.bot.log_level &&
        log_level_parse(app.cfg.bot.log_level, &level) == 0)
        log_set_level(level);
    if (app.cfg.bot.log_format &&
        log_format_parse(app.cfg.bot.log_format, &format) == 0)
        log_set_format(format);

    if (check) {
        /* config_load has checked every adapter block; the
         * constructors add what needs the environment (secrets they
         * read) and connect only in start, never called here. */
        if (loop_create(&app.loop, NULL) != PARLEY_OK) {
            config_free(&app.cfg);
            return EXIT_SOFTWARE;
        }
        result = app_create_adapters(&app, console || !path, err,
                                     sizeof(err));
        app_free_adapters(&app);
        loop_close(app.loop);
        loop_run(app.loop);
        loop_free(app.loop);
        if (result != PARLEY_OK) {
            fprintf(stderr, "parley: %s\n", err);
            config_free(&app.cfg);
            return EXIT_CONFIG;
        }
        printf("%s: configuration OK (model %s at %s, %zu adapter(s))\n",
               app.cfg.path, app.cfg.llm.model, app.cfg.llm.base_url,
               app.cfg.n_adapters + ((console || !path) ? 1 : 0));
        config_free(&app.cfg);
        return 0;
    }

    result = app_run(&app, console || !path);
    config_free(&app.cfg);
    log_forget_secrets();
    curl_global_cleanup();
    return result;
}
