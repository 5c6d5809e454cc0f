/*
 * The router's front door and life cycle (see router.h): what to do with
 * an incoming event (ignore, command, chat, greeting), the per-user rate
 * limit, dedupe by event id, and for replaying platforms the job record
 * that makes an event durable before the platform's position advances.
 * The work itself happens in job.c and command.c.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cJSON.h>
#include <hiredis/hiredis.h>

#include "adapter.h"
#include "config.h"
#include "context.h"
#include "dict.h"
#include "event.h"
#include "llm.h"
#include "log.h"
#include "metrics.h"
#include "prompt.h"
#include "router.h"
#include "router_job.h"
#include "status.h"
#include "store.h"

static struct adapter *router_adapter_for(struct router *r,
                                          const struct event *ev)
{
    for (size_t i = 0; i < r->n_adapters; i++) {
        struct adapter *ad = r->adapters[i];
        const char *account = ad->account ? ad->account : "";

        if (strcmp(ad->ops->type, ev->platform) == 0 &&
            strcmp(account, ev->account ? ev->account : "") == 0)
            return ad;
    }
    return NULL;
}

/* ---- submission ---------------------------------------------------------- */

/* What to do with an event: a job kind, or -1 to ignore it. */
static int router_classify(const struct adapter *ad, const struct event *ev)
{
    char name[ROUTER_COMMAND_NAME_MAX];
    const char *arg;

    if (ev->self && ev->kind == EVENT_JOIN)
        return JOB_GREET_ROOM;
    if (ev->self || ev->from_bot)
        return -1;
    switch (ev->kind) {
    case EVENT_MESSAGE:
        if (!ev->text || !*ev->text)
            return -1;
        if (router_parse_command(ev->text, name, sizeof(name), &arg)) {
            /* Bare !commands in a busy channel may belong to another bot:
             * only known ones are ours unless we were addressed. */
            if (command_known(ad, name) || ev->addressed)
                return JOB_COMMAND;
            return -1;
        }
        if (ev->addressed)
            return JOB_CHAT;
        return ev->ambient ? JOB_AMBIENT : -1;
    case EVENT_JOIN:
        return JOB_GREET_USER;
    default:
        return -1;
    }
}

struct submit {
    struct router *r;
    struct job *job;
    char room_key[EVENT_ROOM_KEY_MAX];
    router_accepted_fn *accepted;
    void *privdata;
};

static void submit_finish(struct submit *s, int status, int fresh)
{
    struct router *r = s->r;
    router_accepted_fn *accepted = s->accepted;
    void *privdata = s->privdata;

    if (fresh && status == PARLEY_OK)
        job_enqueue(r, s->job, s->room_key);
    else
        job_free(s->job);
    free(s);
    if (accepted)
        accepted(status, privdata);
}

static void submit_checked(struct store *st, struct redisReply *rep,
                           void *privdata)
{
    struct submit *s = privdata;

    (void)st;
    if (s->r->closing) {
        free(s);            /* its job is on r->jobs */
        return;
    }
    if (!rep || rep->type == REDIS_REPLY_ERROR) {
        if (rep)
            log_warn("dedupe failed: %.*s", (int)rep->len, rep->str);
        if (s->accepted) {
            /* The caller will offer the event again. */
            submit_finish(s, PARLEY_ERR_STATE, 0);
            return;
        }
        submit_finish(s, PARLEY_OK, 1);
        return;
    }
    /* SET NX answers OK or nil; the script answers 1 or 0. */
    if (rep->type == REDIS_REPLY_NIL ||
        (rep->type == REDIS_REPLY_INTEGER && rep->integer == 0)) {
        log_debug("duplicate event %s dropped", s->job->ev->event_id);
        submit_finish(s, PARLEY_OK, 0);
        return;
    }
    submit_finish(s, PARLEY_OK, 1);
}

/*
 * Records seen:<id> and job:<id> in one step: a crash between two separate
 * writes would leave an event marked seen with no job, and a replay would
 * then be dropped as a duplicate.  Lua runs atomically in Redis.
 */
static const char job_record_script[] =
    "if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then "
    "redis.call('HSET', KEYS[2], unpack(ARGV, 2)) "
    "redis.call('EXPIRE', KEYS[2], ARGV[1]) return 1 end return 0";

/* Append name and value to argv when value is set. */
static int field(const char **argv, int argc, const char *name,
                 const char *value)
{
    if (!value)
        return argc;
    argv[argc++] = name;
    argv[argc++] = value;
    return argc;
}

static int submit_record(struct submit *s)
{
    struct router *r = s->r;
    const struct event *ev = s->job->ev;
    char seen[STORE_KEY_MAX], job[STORE_KEY_MAX], ttl[24], ts[24];
    const char *argv[32];
    int argc = 0;

    if (key_or_log(r, seen, sizeof(seen), "seen", ev->event_id) != 0 ||
        key_or_log(r, job, sizeof(job), "job", ev->event_id) != 0)
        return PARLEY_ERR_TOO_LARGE;
    snprintf(ttl, sizeof(ttl), "%d", r->cfg->redis.dedupe_ttl_s);
    snprintf(ts, sizeof(ts), "%lld", (long long)time(NULL));
    if (!s->accepted) {
        const char *set[] = { "SET", seen, "1", "NX", "EX", ttl };

        return store_command_argv(r->store, submit_checked, s, 6, set,
                                  NULL);
    }
    argv[argc++] = "EVAL";
    argv[argc++] = job_record_script;
    argv[argc++] = "2";
    argv[argc++] = seen;
    argv[argc++] = job;
    argv[argc++] = ttl;
    argc = field(argv, argc, "state", "pending");
    argc = field(argv, argc, "kind",
                 s->job->kind == JOB_COMMAND ? "command" :
                 s->job->kind == JOB_GREET_ROOM ? "greet" : "chat");
    argc = field(argv, argc, "platform", ev->platform);
    argc = field(argv, argc, "account", ev->account);
    argc = field(argv, argc, "room", ev->room);
    argc = field(argv, argc, "sender", ev->sender);
    argc = field(argv, argc, "sender_name", ev->sender_name);
    argc = field(argv, argc, "text", ev->text);
    argc = field(argv, argc, "thread_id", ev->thread_id);
    argc = field(argv, argc, "reply_to", ev->reply_to);
    argc = field(argv, argc, "is_admin", ev->is_admin ? "1" : "0");
    argc = field(argv, argc, "ts", ts);
    return store_command_argv(r->store, submit_checked, s, argc, argv, NULL);
}

static void router_submit_common(struct router *r, const struct event *ev,
                                 router_accepted_fn *accepted,
                                 void *privdata)
{
    struct adapter *ad;
    struct submit *s;
    int kind;

    if (r->draining || r->closing) {
        log_room(LOG_LEVEL_INFO, ev->platform, ev->room,
                 "shutting down, event not taken");
        if (accepted)
            accepted(PARLEY_ERR_STATE, privdata);
        return;
    }
    if (ev->kind == EVENT_MESSAGE && !ev->self)
        metrics_message_received(ev->platform);
    ad = router_adapter_for(r, ev);
    kind = ad ? router_classify(ad, ev) : -1;
    if (!ad)
        log_warn("event from unknown adapter %s/%s dropped", ev->platform,
                 ev->account ? ev->account : "");
    if (kind >= 0 && (kind == JOB_CHAT || kind == JOB_COMMAND) &&
        ev->sender) {
        /* Everything a person makes the bot send counts, commands and
         * !more included; past the limit they hear it once a window. */
        char user[EVENT_ROOM_KEY_MAX];
        enum rate_verdict verdict;

        snprintf(user, sizeof(user), "%s:%s:%s", ev->platform,
                 ev->account ? ev->account : "", ev->sender);
        verdict = rate_check(r, user);
        if (verdict != RATE_ALLOW)
            log_room(LOG_LEVEL_INFO, ev->platform, ev->room,
                     "%s over %d requests/minute%s", ev->sender,
                     r->cfg->limits.user_requests_per_minute,
                     verdict == RATE_QUIET ? " (already told)" : "");
        if (verdict == RATE_NOTIFY)
            kind = JOB_NOTICE;
        else if (verdict == RATE_QUIET)
            kind = -1;
    }
    if (kind < 0) {
        if (accepted)
            accepted(PARLEY_OK, privdata);
        return;
    }
    s = calloc(1, sizeof(*s));
    if (!s || event_room_key(ev, s->room_key,
                             sizeof(s->room_key)) != PARLEY_OK ||
        !(s->job = job_create(r, ad, ev, (enum job_kind)kind))) {
        log_error("cannot queue an event from %s (out of memory or room "
                  "name too long)", ev->platform);
        free(s);
        if (accepted)
            accepted(PARLEY_ERR_OOM, privdata);
        return;
    }
    s->r = r;
    s->accepted = accepted;
    s->privdata = privdata;
    if (kind == JOB_NOTICE &&
        !(s->job->answer = strdup("You're sending messages faster than I "
                                  "can answer; please wait a minute."))) {
        submit_finish(s, PARLEY_ERR_OOM, 0);
        return;
    }
    if (kind == JOB_NOTICE)
        s->job->notice = 1;
    if (kind == JOB_GREET_USER) {
        /* greeted:<room>:<user> is the cooldown; SET NX decides. */
        char name[EVENT_ROOM_KEY_MAX * 2], key[STORE_KEY_MAX], ttl[24];

        snprintf(name, sizeof(name), "%s:%s", s->room_key,
                 ev->sender ? ev->sender : "");
        snprintf(ttl, sizeof(ttl), "%d", ROUTER_GREET_COOLDOWN_S);
        if (key_or_log(r, key, sizeof(key), "greeted", name) == 0) {
            const char *set[] = { "SET", key, "1", "NX", "EX", ttl };

            if (store_command_argv(r->store, submit_checked, s, 6, set,
                                   NULL) == PARLEY_OK)
                return;
        }
        /* Without Redis there is no cooldown: stay quiet rather than
         * greet the same person on every rejoin. */
        submit_finish(s, PARLEY_OK, 0);
        return;
    }
    if (ev->event_id && *ev->event_id) {
        int result;

        s->job->durable = accepted != NULL;
        result = submit_record(s);
        if (result == PARLEY_OK)
            return;
        s->job->durable = 0;
        if (accepted) {
            submit_finish(s, result, 0);
            return;
        }
    }
    submit_finish(s, PARLEY_OK, 1);
}

void router_submit(struct router *r, const struct event *ev)
{
    router_submit_common(r, ev, NULL, NULL);
}

void router_submit_durable(struct router *r, const struct event *ev,
                           router_accepted_fn *accepted, void *privdata)
{
    router_submit_common(r, ev, accepted, privdata);
}

/* ---- resuming jobs of a previous run ------------------------------------- */

#define RESUME_SCAN_COUNT "100"

struct resume {
    struct router *r;
    char key[STORE_KEY_MAX];        /* the job:<id> key being read */
};

static const char *hash_field(const redisReply *rep, const char *name)
{
    for (size_t i = 0; i + 1 < rep->elements; i += 2) {
        const redisReply *k = rep->element[i];
        const redisReply *v = rep->element[i + 1];

        if (k->type == REDIS_REPLY_STRING && v->type == REDIS_REPLY_STRING &&
            strcmp(k->str, name) == 0)
            return v->str;
    }
    return NULL;
}

static void resume_job_loaded(struct store *st, struct redisReply *rep,
                              void *privdata)
{
    struct resume *res = privdata;
    struct router *r = res->r;
    const char *state, *answer, *kind;
    int greet;
    size_t prefix_len = strlen(r->cfg->redis.prefix) + strlen("job:");
    char room_key[EVENT_ROOM_KEY_MAX];
    struct adapter *ad;
    struct event ev;
    struct job *job;

    (void)st;
    if (r->closing || !rep || rep->type != REDIS_REPLY_ARRAY ||
        rep->elements == 0)
        goto out;
    state = hash_field(rep, "state");
    if (!state || strcmp(state, "done") == 0)
        goto out;
    memset(&ev, 0, sizeof(ev));
    ev.kind = EVENT_MESSAGE;
    ev.platform = hash_field(rep, "platform");
    ev.account = hash_field(rep, "account");
    ev.room = hash_field(rep, "room");
    ev.sender = hash_field(rep, "sender");
    ev.sender_name = hash_field(rep, "sender_name");
    ev.text = hash_field(rep, "text");
    ev.thread_id = hash_field(rep, "thread_id");
    ev.reply_to = hash_field(rep, "reply_to");
    ev.event_id = res->key + prefix_len;
    ev.addressed = 1;
    ev.is_admin = hash_field(rep, "is_admin") &&
                  strcmp(hash_field(rep, "is_admin"), "1") == 0;
    kind = hash_field(rep, "kind");
    answer = hash_field(rep, "answer");
    greet = kind && strcmp(kind, "greet") == 0;
    if (greet) {
        /* The bot's own join: a greeting has no text of its own. */
        ev.kind = EVENT_JOIN;
        ev.self = 1;
        ev.addressed = 0;
    }
    if (!ev.platform || !ev.room || (!ev.text && !greet)) {
        log_warn("resume: %s is incomplete, dropped", res->key);
        goto out;
    }
    /* An event this run already took (the platform delivered it again
     * before the scan got here) must not be answered twice.  Linear in
     * the live jobs, once per unfinished record at start-up. */
    for (struct job *live = r->jobs; live; live = live->all_next)
        if (live->ev->event_id && strcmp(live->ev->event_id,
                                         ev.event_id) == 0)
            goto out;
    ad = router_adapter_for(r, &ev);
    if (!ad) {
        log_warn("resume: %s belongs to %s/%s, which is not configured "
                 "any more", res->key, ev.platform,
                 ev.account ? ev.account : "");
        goto out;
    }
    if (event_room_key(&ev, room_key, sizeof(room_key)) != PARLEY_OK)
        goto out;
    job = job_create(r, ad, &ev, greet ? JOB_GREET_ROOM :
                     kind && strcmp(kind, "command") == 0 ?
                     JOB_COMMAND : JOB_CHAT);
    if (!job)
        goto out;
    job->durable = 1;
    job->resumed = 1;
    if (strcmp(state, "answered") == 0 && answer) {
        job->kind = JOB_RESEND;
        job->answer = strdup(answer);
        job->notice = hash_field(rep, "notice") &&
                      strcmp(hash_field(rep, "notice"), "1") == 0;
        if (!job->answer) {
            job_free(job);
            goto out;
        }
    }
    log_room(LOG_LEVEL_INFO, ev.platform, ev.room, "resume: %s %s",
             job->kind == JOB_RESEND ? "resending the answer to" :
             "answering", ev.event_id);
    job_enqueue(r, job, room_key);
out:
    free(res);
}

static int resume_scan(struct router *r, const char *cursor);

static void resume_scanned(struct store *st, struct redisReply *rep,
                           void *privdata)
{
    struct router *r = privdata;
    const redisReply *keys;

    (void)st;
    if (r->closing)
        return;
    if (!rep || rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
        rep->element[0]->type != REDIS_REPLY_STRING ||
        rep->element[1]->type != REDIS_REPLY_ARRAY) {
        log_warn("resume: cannot list unfinished jobs; they wait for the "
                 "next start");
        return;
    }
    keys = rep->element[1];
    for (size_t i = 0; i < keys->elements; i++) {
        const redisReply *k = keys->element[i];
        struct resume *res;
        const char *argv[2];

        if (k->type != REDIS_REPLY_STRING || k->len >= STORE_KEY_MAX)
            continue;
        res = calloc(1, sizeof(*res));
        if (!res)
            break;
        res->r = r;
        memcpy(res->key, k->str, k->len);
        argv[0] = "HGETALL";
        argv[1] = res->key;
        if (store_command_argv(r->store, resume_job_loaded, res, 2, argv,
                               NULL) != PARLEY_OK)
            free(res);
    }
    if (strcmp(rep->element[0]->str, "0") != 0)
        resume_scan(r, rep->element[0]->str);
}

static int resume_scan(struct router *r, const char *cursor)
{
    char pattern[STORE_KEY_MAX];
    const char *argv[6];

    if (store_key(r->store, pattern, sizeof(pattern), "job:*") != PARLEY_OK)
        return PARLEY_ERR_TOO_LARGE;
    argv[0] = "SCAN";
    argv[1] = cursor;
    argv[2] = "MATCH";
    argv[3] = pattern;
    argv[4] = "COUNT";
    argv[5] = RESUME_SCAN_COUNT;
    return store_command_argv(r->store, resume_scanned, r, 6, argv, NULL);
}

void router_resume(struct router *r)
{
    if (resume_scan(r, "0") != PARLEY_OK)
        log_warn("resume: Redis is not available; unfinished jobs wait "
                 "for the next start");
}

/* ---- life cycle ---------------------------------------------------------- */

int router_create(struct router **out, const struct config *cfg,
                  struct store *st, struct llm *llm, struct loop *loop)
{
    struct router *r = calloc(1, sizeof(*r));

    *out = NULL;
    if (!r)
        return PARLEY_ERR_OOM;
    r->cfg = cfg;
    r->store = st;
    r->llm = llm;
    r->loop = loop;
    r->rooms = dict_create();
    r->rates = dict_create();
    if (!r->rooms || !r->rates) {
        router_free(r);
        return PARLEY_ERR_OOM;
    }
    *out = r;
    return PARLEY_OK;
}

int router_add_adapter(struct router *r, struct adapter *ad)
{
    if (r->n_adapters >= ROUTER_MAX_ADAPTERS)
        return PARLEY_ERR_TOO_LARGE;
    r->adapters[r->n_adapters++] = ad;
    ad->router = r;
    return PARLEY_OK;
}

void router_reload(struct router *r, const struct config *cfg)
{
    r->cfg = cfg;
}

void router_drain(struct router *r)
{
    r->draining = 1;
}

void router_close(struct router *r)
{
    r->draining = 1;
    r->closing = 1;
}

size_t router_rooms_active(const struct router *r)
{
    return dict_size(r->rooms);
}

size_t router_pending(const struct router *r)
{
    return r->pending;
}

static void free_value(const char *key, void *value, void *arg)
{
    (void)key;
    (void)arg;
    free(value);
}

void router_free(struct router *r)
{
    if (!r)
        return;
    while (r->jobs)
        job_free(r->jobs);
    if (r->rooms)
        dict_foreach(r->rooms, free_value, NULL);
    if (r->rates)
        dict_foreach(r->rates, free_value, NULL);
    dict_free(r->rooms);
    dict_free(r->rates);
    free(r);
}
