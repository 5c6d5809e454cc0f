/*
 * The router: from an incoming event to a sent answer (see router.h).
 *
 * Every accepted event becomes a job in its room's FIFO.  A room runs one
 * job at a time, so answers in a room keep the order of the questions,
 * while jobs of different rooms run concurrently on the one loop.  A chat
 * job walks these steps, each an async Redis or LLM call whose callback
 * starts the next step:
 *
 *   settings (room:<room>) -> usage (usage:<day>:<user>) -> history
 *   (ctx:<room>) -> completion (llm) -> record (ctx append, usage,
 *   job answer) -> send (adapter) -> done
 *
 * When Redis is down each Redis step is skipped (no history, no limits
 * from Redis), so IRC and the console keep answering; errors from the
 * model never enter the history.  The room is released for its next job
 * as soon as the answer is handed to the adapter, which keeps per-room
 * order itself (adapter.h).
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
#include "prompt.h"
#include "router.h"
#include "status.h"
#include "store.h"

/* Longest command name we look up ("!system" and friends). */
#define ROUTER_COMMAND_NAME_MAX 16
/* Greeting cooldown per user and room: one day. */
#define ROUTER_GREET_COOLDOWN_S 86400
/* usage:<day>:<user> lives a little over a week, for !stats. */
#define ROUTER_USAGE_TTL_S (8 * 86400)
/* Model names and per-room system prompts set from chat are capped. */
#define ROUTER_MODEL_NAME_MAX 128
#define ROUTER_SYSTEM_MAX (8 * 1024)

enum job_kind {
    JOB_CHAT,               /* answer a message */
    JOB_COMMAND,            /* run a !command */
    JOB_GREET_ROOM,         /* the bot joined: greet the room */
    JOB_GREET_USER,         /* someone joined: greet them */
    JOB_NOTICE              /* answer with a fixed text (rate limit) */
};

struct room;

struct job {
    struct router *r;
    struct room *room;
    struct adapter *ad;
    struct event *ev;           /* owned copy */
    enum job_kind kind;
    char user_key[EVENT_ROOM_KEY_MAX];   /* platform:account:sender */
    int durable;                /* has a job:<event id> record */

    /* Gathered along the way. */
    char *model;                /* room override, or NULL */
    char *system;               /* room override, or NULL */
    int greeting;               /* room greeting on (1) / off (0) */
    struct history *history;
    char *answer;
    long tokens_in, tokens_out;
    int notice;                 /* answer is service text, not the model */

    struct job *next;           /* room queue */
    struct job *all_prev, *all_next;    /* every live job, for close */
};

struct room {
    char key[EVENT_ROOM_KEY_MAX];
    struct job *head, *tail;    /* waiting jobs */
    size_t queued;
    struct job *current;        /* the job being worked on */
};

/* Per-user request window for user_requests_per_minute. */
struct rate {
    long minute;
    int count;
};

#define ROUTER_MAX_ADAPTERS CONFIG_MAX_ADAPTERS

struct router {
    const struct config *cfg;
    struct store *store;
    struct llm *llm;
    struct loop *loop;
    struct adapter *adapters[ROUTER_MAX_ADAPTERS];
    size_t n_adapters;
    struct dict *rooms;         /* key -> struct room * */
    struct dict *rates;         /* user key -> struct rate * */
    size_t pending;             /* jobs not yet finished */
    struct job *jobs;           /* every live job */
    int draining;               /* refuse new events */
    int closing;                /* callbacks stop; router_free cleans */
};

static void job_run(struct job *job);
static void job_reply(struct job *job, const char *text, int notice);
static void room_release(struct router *r, struct room *room);

/* ---- commands table ---------------------------------------------------- */

typedef void command_fn(struct job *job, const char *arg);

struct command {
    const char *name;
    const char *usage;
    command_fn *fn;
};

static command_fn cmd_help, cmd_model, cmd_reset, cmd_stats, cmd_system;

/* Sorted by name for bsearch. */
static const struct command commands[] = {
    { "help",   "!help - what I can do",                  cmd_help },
    { "model",  "!model [name] - show or set the model",  cmd_model },
    { "reset",  "!reset - forget this room's history",    cmd_reset },
    { "stats",  "!stats - your requests and tokens today", cmd_stats },
    { "system", "!system [text|reset] - show or set this room's "
                "instructions",                          cmd_system },
};

static int command_cmp(const void *key, const void *elem)
{
    return strcmp(key, ((const struct command *)elem)->name);
}

static const struct command *command_find(const char *name)
{
    return bsearch(name, commands, sizeof(commands) / sizeof(commands[0]),
                   sizeof(commands[0]), command_cmp);
}

int router_parse_command(const char *text, char *name, size_t namelen,
                         const char **arg)
{
    size_t n = 0;
    const char *p;

    if (!text || text[0] != '!' || namelen == 0)
        return 0;
    p = text + 1;
    if (!isalpha((unsigned char)*p))
        return 0;
    while (*p && !isspace((unsigned char)*p)) {
        if (n + 1 >= namelen)
            return 0;           /* too long to be one of ours */
        name[n++] = (char)tolower((unsigned char)*p);
        p++;
    }
    name[n] = '\0';
    while (*p && isspace((unsigned char)*p))
        p++;
    *arg = p;
    return 1;
}

/* ---- helpers ------------------------------------------------------------ */

static const char *event_speaker(const struct event *ev)
{
    if (ev->sender_name && *ev->sender_name)
        return ev->sender_name;
    return ev->sender ? ev->sender : "someone";
}

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

static void utc_day(char *buf, size_t len)
{
    time_t now = time(NULL);
    struct tm tm;

    gmtime_r(&now, &tm);
    strftime(buf, len, "%Y-%m-%d", &tm);
}

static int key_or_log(struct router *r, char *buf, size_t len,
                      const char *kind, const char *name)
{
    if (store_key(r->store, buf, len, "%s:%s", kind, name) != PARLEY_OK) {
        log_warn("redis key %s:<...> too long, skipped", kind);
        return -1;
    }
    return 0;
}

static char *dup_reply_str(const redisReply *rep)
{
    if (!rep || (rep->type != REDIS_REPLY_STRING &&
                 rep->type != REDIS_REPLY_STATUS))
        return NULL;
    return strndup(rep->str, rep->len);
}

static void job_free(struct job *job)
{
    struct router *r = job->r;

    event_free(job->ev);
    free(job->model);
    free(job->system);
    if (job->history) {
        context_history_free(job->history);
        free(job->history);
    }
    free(job->answer);
    if (job->all_prev)
        job->all_prev->all_next = job->all_next;
    else
        r->jobs = job->all_next;
    if (job->all_next)
        job->all_next->all_prev = job->all_prev;
    free(job);
    r->pending--;
}

/* After router_close, callbacks leave their job where it is: the store
 * and llm are going away and router_free releases every job. */
#define JOB_CLOSING(job) ((job)->r->closing)

/* ---- finishing: send, then mark done ----------------------------------- */

static void job_mark_done_cb(struct store *st, struct redisReply *rep,
                             void *privdata)
{
    (void)st;
    (void)rep;
    (void)privdata;
}

static void job_sent(int status, void *privdata)
{
    struct job *job = privdata;
    struct router *r = job->r;

    if (status != PARLEY_OK)
        log_warn("%s: answer to %s in %s not delivered: %s",
                 job->ev->platform, job->ev->sender ? job->ev->sender : "-",
                 job->ev->room, parley_status_name(status));
    if (job->durable && status == PARLEY_OK) {
        char key[STORE_KEY_MAX];
        char ttl[24];

        snprintf(ttl, sizeof(ttl), "%d", r->cfg->redis.dedupe_ttl_s);
        if (key_or_log(r, key, sizeof(key), "job", job->ev->event_id) == 0) {
            const char *argv[] = { "HSET", key, "state", "done" };
            const char *argv2[] = { "EXPIRE", key, ttl };

            store_command_argv(r->store, job_mark_done_cb, NULL, 4, argv,
                               NULL);
            store_command_argv(r->store, job_mark_done_cb, NULL, 3, argv2,
                               NULL);
        }
    }
    job_free(job);
}

/* Hand the answer to the adapter and let the room move on.  The job is
 * not touched after ops->send: done may already have freed it. */
static void job_send(struct job *job)
{
    struct router *r = job->r;
    struct room *room = job->room;
    struct adapter *ad = job->ad;
    char txn[EVENT_ROOM_KEY_MAX];
    struct reply reply;
    int result;

    memset(&reply, 0, sizeof(reply));
    reply.text = job->answer ? job->answer : ROUTER_FALLBACK_TEXT;
    reply.in_reply_to = job->ev->event_id;
    reply.thread_id = job->ev->thread_id;
    reply.mention = job->kind == JOB_GREET_ROOM ? NULL : job->ev->sender;
    reply.notice = job->notice;
    if (job->ev->event_id) {
        snprintf(txn, sizeof(txn), "parley.%s", job->ev->event_id);
        reply.txn_id = txn;
    }
    if (ad->ops->typing && job->kind == JOB_CHAT)
        ad->ops->typing(ad, job->ev->room, 0);

    room->current = NULL;
    result = ad->ops->send(ad, job->ev->room, &reply, job_sent, job);
    if (result != PARLEY_OK) {
        log_warn("%s: cannot send to %s: %s", ad->ops->type,
                 room->key, ad->errstr[0] ? ad->errstr :
                 parley_status_name(result));
        job_free(job);
    }
    room_release(r, room);
}

static void job_answer_stored(struct store *st, struct redisReply *rep,
                              void *privdata)
{
    (void)st;
    (void)rep;

    if (JOB_CLOSING((struct job *)privdata))
        return;
    job_send(privdata);
}

/* For durable jobs the answer goes into job:<id> before it is sent, so a
 * restart resends the same text instead of asking the model again. */
static void job_store_answer_then_send(struct job *job)
{
    struct router *r = job->r;
    char key[STORE_KEY_MAX];

    if (job->durable &&
        key_or_log(r, key, sizeof(key), "job", job->ev->event_id) == 0) {
        const char *argv[] = { "HSET", key, "state", "answered",
                               "answer", job->answer ? job->answer : "",
                               "notice", job->notice ? "1" : "0" };

        if (store_command_argv(r->store, job_answer_stored, job, 8, argv,
                               NULL) == PARLEY_OK)
            return;
    }
    job_send(job);
}

/* Finish a job that sends nothing and let its room move on. */
static void job_drop(struct job *job)
{
    struct router *r = job->r;
    struct room *room = job->room;

    room->current = NULL;
    job_free(job);
    room_release(r, room);
}

/* text may be job->answer itself. */
static void job_reply(struct job *job, const char *text, int notice)
{
    char *copy = text ? strdup(text) : NULL;

    free(job->answer);
    job->answer = copy;
    job->notice = notice;
    job_store_answer_then_send(job);
}

/* ---- chat: record, complete, history, usage, settings ------------------ */

static void ignore_reply(struct store *st, struct redisReply *rep,
                         void *privdata)
{
    (void)st;
    (void)rep;
    (void)privdata;
}

static void job_history_appended(int status, void *privdata)
{
    struct job *job = privdata;

    if (JOB_CLOSING((struct job *)privdata))
        return;

    if (status != PARLEY_OK)
        log_warn("history of %s not saved: %s", job->room->key,
                 parley_status_name(status));
    job_store_answer_then_send(job);
}

static void job_record_usage(struct job *job)
{
    struct router *r = job->r;
    char day[16], name[EVENT_ROOM_KEY_MAX + 32], key[STORE_KEY_MAX];
    char in[24], out[24], total[24], ttl[24];

    utc_day(day, sizeof(day));
    snprintf(name, sizeof(name), "%s:%s", day, job->user_key);
    if (key_or_log(r, key, sizeof(key), "usage", name) != 0)
        return;
    snprintf(in, sizeof(in), "%ld", job->tokens_in > 0 ? job->tokens_in : 0);
    snprintf(out, sizeof(out), "%ld",
             job->tokens_out > 0 ? job->tokens_out : 0);
    snprintf(total, sizeof(total), "%ld",
             (job->tokens_in > 0 ? job->tokens_in : 0) +
             (job->tokens_out > 0 ? job->tokens_out : 0));
    snprintf(ttl, sizeof(ttl), "%d", ROUTER_USAGE_TTL_S);
    {
        const char *a1[] = { "HINCRBY", key, "requests", "1" };
        const char *a2[] = { "HINCRBY", key, "tokens_in", in };
        const char *a3[] = { "HINCRBY", key, "tokens_out", out };
        const char *a4[] = { "HINCRBY", key, "tokens", total };
        const char *a5[] = { "EXPIRE", key, ttl };

        store_command_argv(r->store, ignore_reply, NULL, 4, a1, NULL);
        store_command_argv(r->store, ignore_reply, NULL, 4, a2, NULL);
        store_command_argv(r->store, ignore_reply, NULL, 4, a3, NULL);
        store_command_argv(r->store, ignore_reply, NULL, 4, a4, NULL);
        store_command_argv(r->store, ignore_reply, NULL, 3, a5, NULL);
    }
}

static void job_llm_done(const struct llm_result *res, void *privdata)
{
    struct job *job = privdata;
    struct router *r = job->r;
    struct turn turns[2];
    size_t n = 0;
    long long now = (long long)time(NULL);

    if (res->status != PARLEY_OK) {
        log_error("llm: no answer for %s after %d attempt(s): %s",
                  job->room->key, res->attempts, res->errstr);
        if (!res->retryable && res->http_code >= 400 &&
            res->http_code < 500)
            job_reply(job, "Sorry, I can't answer that right now: the "
                      "language model service refused the request. The "
                      "operator has been told.", 1);
        else
            job_reply(job, ROUTER_FALLBACK_TEXT, 1);
        return;
    }
    job->answer = strdup(res->content ? res->content : "");
    job->tokens_in = res->prompt_tokens;
    job->tokens_out = res->completion_tokens;
    job->notice = 0;
    if (!job->answer) {
        job_reply(job, ROUTER_FALLBACK_TEXT, 1);
        return;
    }
    job_record_usage(job);

    memset(turns, 0, sizeof(turns));
    if (job->kind == JOB_CHAT) {
        turns[n].role = "user";
        turns[n].name = (char *)event_speaker(job->ev);
        turns[n].content = (char *)job->ev->text;
        turns[n].ts = now;
        n++;
    }
    turns[n].role = "assistant";
    turns[n].name = NULL;
    turns[n].content = job->answer;
    turns[n].ts = now;
    n++;
    if (context_append(r->store, job->room->key, turns, n,
                       &r->cfg->context, job_history_appended,
                       job) != PARLEY_OK)
        job_store_answer_then_send(job);
}

static void job_complete(struct job *job)
{
    struct router *r = job->r;
    const struct config *cfg = r->cfg;
    const struct config_room *over = config_room_find(cfg, job->room->key);
    struct prompt_input in;
    struct cJSON *messages;
    const char *model = job->model;
    int empty = !job->history || job->history->n == 0;

    memset(&in, 0, sizeof(in));
    in.bot_name = cfg->bot.name;
    in.system = job->system ? job->system :
                (over && over->system ? over->system : cfg->prompts.system);
    in.greeting = cfg->prompts.greeting;
    in.fewshot = cfg->prompts.fewshot;
    in.n_fewshot = cfg->prompts.n_fewshot;
    in.history = job->history;
    in.max_history_tokens = (size_t)cfg->context.max_tokens;
    in.user_name = event_speaker(job->ev);
    in.user_text = job->kind == JOB_CHAT ? job->ev->text : NULL;
    /* The first words in a room greet and invite a topic, unless the room
     * turned greetings off. */
    in.first_contact = empty && job->greeting;
    if (job->kind == JOB_GREET_ROOM)
        in.user_name = NULL;
    if (!model && over && over->model)
        model = over->model;

    messages = prompt_build(&in);
    if (!messages) {
        job_reply(job, ROUTER_FALLBACK_TEXT, 1);
        return;
    }
    if (job->kind == JOB_CHAT && job->ad->ops->typing)
        job->ad->ops->typing(job->ad, job->ev->room, 1);
    if (llm_complete(r->llm, model, messages, job_llm_done, job,
                     NULL) != PARLEY_OK) {
        log_error("llm: cannot start a request for %s", job->room->key);
        job_reply(job, ROUTER_FALLBACK_TEXT, 1);
    }
}

static void job_history_loaded(int status, struct history *h, void *privdata)
{
    struct job *job = privdata;

    if (JOB_CLOSING(job)) {
        if (h) {
            context_history_free(h);
            free(h);
        }
        return;
    }
    if (status != PARLEY_OK)
        log_debug("history of %s unavailable (%s), answering without",
                  job->room->key, parley_status_name(status));
    job->history = h;
    /* A room greeting only makes sense in a room with no conversation. */
    if (job->kind == JOB_GREET_ROOM && h && h->n > 0) {
        job_drop(job);
        return;
    }
    job_complete(job);
}

static void job_load_history(struct job *job)
{
    if (context_load(job->r->store, job->room->key, &job->r->cfg->context,
                     job_history_loaded, job) != PARLEY_OK)
        job_history_loaded(PARLEY_ERR_STATE, NULL, job);
}

static void job_usage_loaded(struct store *st, struct redisReply *rep,
                             void *privdata)
{
    struct job *job = privdata;
    int limit = job->r->cfg->limits.user_daily_tokens;

    if (JOB_CLOSING((struct job *)privdata))
        return;

    (void)st;
    if (limit > 0 && rep && rep->type == REDIS_REPLY_STRING) {
        long long used = strtoll(rep->str, NULL, 10);

        if (used >= limit) {
            job_reply(job, "You have used today's token budget. It resets "
                      "at midnight UTC.", 1);
            return;
        }
    }
    job_load_history(job);
}

static void job_check_usage(struct job *job)
{
    struct router *r = job->r;
    char day[16], name[EVENT_ROOM_KEY_MAX + 32], key[STORE_KEY_MAX];

    if (job->kind != JOB_CHAT || r->cfg->limits.user_daily_tokens <= 0) {
        job_load_history(job);
        return;
    }
    utc_day(day, sizeof(day));
    snprintf(name, sizeof(name), "%s:%s", day, job->user_key);
    if (key_or_log(r, key, sizeof(key), "usage", name) == 0) {
        const char *argv[] = { "HGET", key, "tokens" };

        if (store_command_argv(r->store, job_usage_loaded, job, 3, argv,
                               NULL) == PARLEY_OK)
            return;
    }
    job_load_history(job);
}

static void job_settings_loaded(struct store *st, struct redisReply *rep,
                                void *privdata)
{
    struct job *job = privdata;

    if (JOB_CLOSING((struct job *)privdata))
        return;

    (void)st;
    if (rep && rep->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i + 1 < rep->elements; i += 2) {
            const redisReply *k = rep->element[i];
            const redisReply *v = rep->element[i + 1];

            if (k->type != REDIS_REPLY_STRING)
                continue;
            if (strcmp(k->str, "model") == 0) {
                free(job->model);
                job->model = dup_reply_str(v);
            } else if (strcmp(k->str, "system") == 0) {
                free(job->system);
                job->system = dup_reply_str(v);
            } else if (strcmp(k->str, "greeting") == 0 &&
                       v->type == REDIS_REPLY_STRING) {
                job->greeting = strcmp(v->str, "off") != 0;
            }
        }
    }
    if (job->kind == JOB_COMMAND) {
        char name[ROUTER_COMMAND_NAME_MAX];
        const char *arg = "";
        const struct command *c = NULL;

        if (router_parse_command(job->ev->text, name, sizeof(name), &arg))
            c = command_find(name);
        if (c)
            c->fn(job, arg);
        else
            job_reply(job, "Unknown command. Try !help.", 1);
        return;
    }
    job_check_usage(job);
}

/* Load room:<room> (model, system, greeting), then go on by kind. */
static void job_run(struct job *job)
{
    struct router *r = job->r;
    const struct config_room *over = config_room_find(r->cfg,
                                                      job->room->key);
    char key[STORE_KEY_MAX];

    job->greeting = over && over->greeting >= 0 ? over->greeting : 1;
    if (job->kind == JOB_NOTICE) {
        job_reply(job, job->answer, 1);
        return;
    }
    if (key_or_log(r, key, sizeof(key), "room", job->room->key) == 0) {
        const char *argv[] = { "HGETALL", key };

        if (store_command_argv(r->store, job_settings_loaded, job, 2, argv,
                               NULL) == PARLEY_OK)
            return;
    }
    job_settings_loaded(r->store, NULL, job);
}

/* ---- commands ------------------------------------------------------------ */

static void cmd_help(struct job *job, const char *arg)
{
    char text[1024];
    size_t off;

    (void)arg;
    off = (size_t)snprintf(text, sizeof(text),
                           "I'm %s. Talk to me by addressing me. Commands:",
                           job->r->cfg->bot.name);
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (off >= sizeof(text))
            break;
        off += (size_t)snprintf(text + off, sizeof(text) - off, "\n%s",
                                commands[i].usage);
    }
    job_reply(job, text, 1);
}

static void cmd_reset_done(int status, void *privdata)
{
    struct job *job = privdata;

    if (JOB_CLOSING((struct job *)privdata))
        return;

    if (status == PARLEY_OK)
        job_reply(job, "Done: I've forgotten this room's conversation.", 1);
    else
        job_reply(job, "I couldn't clear the history just now (storage is "
                  "unavailable); please try again shortly.", 1);
}

static void cmd_reset(struct job *job, const char *arg)
{
    (void)arg;
    if (context_clear(job->r->store, job->room->key, cmd_reset_done,
                      job) != PARLEY_OK)
        cmd_reset_done(PARLEY_ERR_STATE, job);
}

static void cmd_setting_saved(struct store *st, struct redisReply *rep,
                              void *privdata)
{
    struct job *job = privdata;
    const char *text = job->answer;

    if (JOB_CLOSING((struct job *)privdata))
        return;

    (void)st;
    if (!rep || rep->type == REDIS_REPLY_ERROR || !text)
        text = "I couldn't save that just now (storage is unavailable); "
               "please try again shortly.";
    job_reply(job, text, 1);
}

/* HSET or HDEL one field of room:<room>, then confirm with ok_text. */
static void cmd_room_set(struct job *job, const char *field,
                         const char *value, const char *ok_text)
{
    struct router *r = job->r;
    char key[STORE_KEY_MAX];

    free(job->answer);
    job->answer = strdup(ok_text);
    if (job->answer &&
        key_or_log(r, key, sizeof(key), "room", job->room->key) == 0) {
        const char *set[] = { "HSET", key, field, value ? value : "" };
        const char *del[] = { "HDEL", key, field };
        int result = value ?
            store_command_argv(r->store, cmd_setting_saved, job, 4, set,
                               NULL) :
            store_command_argv(r->store, cmd_setting_saved, job, 3, del,
                               NULL);

        if (result == PARLEY_OK)
            return;
    }
    cmd_setting_saved(r->store, NULL, job);
}

static void cmd_model(struct job *job, const char *arg)
{
    const struct config *cfg = job->r->cfg;
    char text[2048];
    size_t off;

    if (*arg) {
        char name[ROUTER_MODEL_NAME_MAX];
        size_t n = strcspn(arg, " \t\r\n");

        if (n < sizeof(name)) {
            memcpy(name, arg, n);
            name[n] = '\0';
            if (config_model_allowed(cfg, name)) {
                snprintf(text, sizeof(text), "Model for this room: %s.",
                         name);
                cmd_room_set(job, "model", name, text);
                return;
            }
        }
    }
    off = (size_t)snprintf(text, sizeof(text), "%s%s. Available:",
                           *arg ? "Unknown model. Current model: " :
                           "Current model: ",
                           job->model ? job->model : cfg->llm.model);
    for (size_t i = 0; i < cfg->llm.n_allowed_models; i++) {
        if (off >= sizeof(text))
            break;
        off += (size_t)snprintf(text + off, sizeof(text) - off, " %s",
                                cfg->llm.allowed_models[i]);
    }
    job_reply(job, text, 1);
}

static void cmd_system(struct job *job, const char *arg)
{
    const struct config *cfg = job->r->cfg;
    char text[ROUTER_SYSTEM_MAX + 128];

    if (!*arg) {
        snprintf(text, sizeof(text), "Instructions for this room%s: %s",
                 job->system ? "" : " (default)",
                 job->system ? job->system : cfg->prompts.system);
        job_reply(job, text, 1);
        return;
    }
    if (!job->ev->is_admin) {
        job_reply(job, "Only room operators can change my instructions.", 1);
        return;
    }
    if (strcmp(arg, "reset") == 0) {
        cmd_room_set(job, "system", NULL,
                     "Instructions for this room reset to the default.");
        return;
    }
    if (strlen(arg) > ROUTER_SYSTEM_MAX) {
        job_reply(job, "Those instructions are too long.", 1);
        return;
    }
    cmd_room_set(job, "system", arg, "New instructions for this room saved.");
}

static void cmd_stats_loaded(struct store *st, struct redisReply *rep,
                             void *privdata)
{
    struct job *job = privdata;
    long long v[4] = { 0, 0, 0, 0 };
    static const char *const fields[] = { "requests", "tokens_in",
                                          "tokens_out", "tokens" };
    char text[256];

    if (JOB_CLOSING(job))
        return;
    (void)st;
    if (!rep) {
        job_reply(job, "Statistics are unavailable just now.", 1);
        return;
    }
    if (rep->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i + 1 < rep->elements; i += 2) {
            const redisReply *k = rep->element[i];
            const redisReply *val = rep->element[i + 1];

            if (k->type != REDIS_REPLY_STRING ||
                val->type != REDIS_REPLY_STRING)
                continue;
            for (size_t f = 0; f < 4; f++)
                if (strcmp(k->str, fields[f]) == 0)
                    v[f] = strtoll(val->str, NULL, 10);
        }
    }
    snprintf(text, sizeof(text), "Today (UTC) you made %lld request%s: "
             "%lld tokens (%lld in, %lld out).", v[0], v[0] == 1 ? "" : "s",
             v[3], v[1], v[2]);
    if (job->r->cfg->limits.user_daily_tokens > 0) {
        size_t off = strlen(text);

        snprintf(text + off, sizeof(text) - off, " Daily budget: %d.",
                 job->r->cfg->limits.user_daily_tokens);
    }
    job_reply(job, text, 1);
}

static void cmd_stats(struct job *job, const char *arg)
{
    struct router *r = job->r;
    char day[16], name[EVENT_ROOM_KEY_MAX + 32], key[STORE_KEY_MAX];

    (void)arg;
    utc_day(day, sizeof(day));
    snprintf(name, sizeof(name), "%s:%s", day, job->user_key);
    if (key_or_log(r, key, sizeof(key), "usage", name) == 0) {
        const char *argv[] = { "HGETALL", key };

        if (store_command_argv(r->store, cmd_stats_loaded, job, 2, argv,
                               NULL) == PARLEY_OK)
            return;
    }
    cmd_stats_loaded(r->store, NULL, job);
}

/* ---- rooms and queues ---------------------------------------------------- */

static struct room *room_get(struct router *r, const char *key)
{
    struct room *room = dict_get(r->rooms, key);

    if (room)
        return room;
    room = calloc(1, sizeof(*room));
    if (!room)
        return NULL;
    snprintf(room->key, sizeof(room->key), "%s", key);
    if (dict_set(r->rooms, key, room) != PARLEY_OK) {
        free(room);
        return NULL;
    }
    return room;
}

/* Start the next job of an idle room, or forget the room when it has
 * nothing left, so idle rooms cost no memory. */
static void room_release(struct router *r, struct room *room)
{
    if (room->current)
        return;
    if (room->head) {
        struct job *job = room->head;

        room->head = job->next;
        if (!room->head)
            room->tail = NULL;
        room->queued--;
        job->next = NULL;
        room->current = job;
        /* job_run may finish synchronously (Redis down, a command); the
         * room then comes back here through job_send or job_drop. */
        job_run(job);
        return;
    }
    {
        dict_delete(r->rooms, room->key);
        free(room);
    }
}

/* Per-user requests per minute, counted in memory: a restart forgets the
 * window, which errs on the side of answering. */
static int rate_allow(struct router *r, const char *user_key)
{
    int limit = r->cfg->limits.user_requests_per_minute;
    long minute = (long)(time(NULL) / 60);
    struct rate *rate;

    if (limit <= 0)
        return 1;
    rate = dict_get(r->rates, user_key);
    if (!rate) {
        rate = calloc(1, sizeof(*rate));
        if (!rate || dict_set(r->rates, user_key, rate) != PARLEY_OK) {
            free(rate);
            return 1;
        }
    }
    if (rate->minute != minute) {
        rate->minute = minute;
        rate->count = 0;
    }
    if (rate->count >= limit)
        return 0;
    rate->count++;
    return 1;
}

static struct job *job_create(struct router *r, struct adapter *ad,
                              const struct event *ev, enum job_kind kind)
{
    struct job *job = calloc(1, sizeof(*job));

    if (!job)
        return NULL;
    job->ev = event_dup(ev);
    if (!job->ev) {
        free(job);
        return NULL;
    }
    job->r = r;
    job->ad = ad;
    job->kind = kind;
    job->greeting = 1;
    snprintf(job->user_key, sizeof(job->user_key), "%s:%s:%s",
             ev->platform, ev->account ? ev->account : "",
             ev->sender ? ev->sender : "");
    job->all_next = r->jobs;
    if (r->jobs)
        r->jobs->all_prev = job;
    r->jobs = job;
    r->pending++;
    return job;
}

/* Put job on its room's queue and start it if the room is idle. */
static void job_enqueue(struct router *r, struct job *job,
                        const char *room_key)
{
    struct room *room = room_get(r, room_key);

    if (!room) {
        log_error("out of memory queueing an event for %s", room_key);
        job_free(job);
        return;
    }
    if (room->queued >= ROUTER_ROOM_QUEUE_MAX) {
        log_warn("%s: queue full (%d), dropping a message from %s",
                 room_key, ROUTER_ROOM_QUEUE_MAX,
                 job->ev->sender ? job->ev->sender : "-");
        job_free(job);
        return;
    }
    job->room = room;
    if (room->tail)
        room->tail->next = job;
    else
        room->head = job;
    room->tail = job;
    room->queued++;
    room_release(r, room);
}

/* ---- submission ---------------------------------------------------------- */

/* What to do with an event: a job kind, or -1 to ignore it. */
static int router_classify(struct router *r, const struct event *ev)
{
    char name[ROUTER_COMMAND_NAME_MAX];
    const char *arg;

    (void)r;
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
            if (command_find(name) || ev->addressed)
                return JOB_COMMAND;
            return -1;
        }
        return ev->addressed ? JOB_CHAT : -1;
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
                 s->job->kind == JOB_COMMAND ? "command" : "chat");
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
        log_info("%s: shutting down, event in %s not taken", ev->platform,
                 ev->room ? ev->room : "-");
        if (accepted)
            accepted(PARLEY_ERR_STATE, privdata);
        return;
    }
    kind = router_classify(r, ev);
    if (kind < 0 || !(ad = router_adapter_for(r, ev))) {
        if (kind >= 0)
            log_warn("event from unknown adapter %s/%s dropped",
                     ev->platform, ev->account ? ev->account : "");
        if (accepted)
            accepted(PARLEY_OK, privdata);
        return;
    }
    if (kind == JOB_CHAT && ev->sender) {
        char user[EVENT_ROOM_KEY_MAX];

        snprintf(user, sizeof(user), "%s:%s:%s", ev->platform,
                 ev->account ? ev->account : "", ev->sender);
        if (!rate_allow(r, user)) {
            log_info("%s: %s over %d requests/minute", ev->platform,
                     ev->sender, r->cfg->limits.user_requests_per_minute);
            kind = JOB_NOTICE;
        }
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
