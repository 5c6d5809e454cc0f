/*
 * The steps of one job (room.c decides when it starts).  A chat job walks
 * these steps, each an async Redis or LLM call whose callback starts the
 * next one:
 *
 *   settings (room:<room>) -> usage (usage:<day>:<user>) -> history
 *   (ctx:<room>) -> completion (llm) -> record (ctx append, usage,
 *   job answer) -> send (adapter) -> done
 *
 * Redis is reached only through the state layer (state.h).
 *
 * With an adapter that shows progress (ops->progress, its "stream" key
 * on) the completion is streamed and each piece goes to the adapter as
 * the text so far; the final send and the history get the final text
 * only, and a stream that breaks ends with the fallback (adapter.h).
 *
 * When Redis is down each Redis step is skipped (no history, no limits
 * from Redis), so IRC and the console keep answering; errors from the
 * model never enter the history.  The job leaves its room as soon as the
 * answer is handed to the adapter, which keeps per-room order itself
 * (adapter.h).  Each job sees the history committed when it loads it,
 * and appends its (question, answer) pair as one unit.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cJSON.h>

#include "adapter.h"
#include "command.h"
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
#include "state.h"
#include "status.h"

static double monotonic_seconds(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- helpers ------------------------------------------------------------ */

const char *event_speaker(const struct event *ev)
{
    if (ev->sender_name && *ev->sender_name)
        return ev->sender_name;
    return ev->sender ? ev->sender : "someone";
}

void job_record_event(const struct state_job *rec, struct event *ev,
                      struct event_attachment *att)
{
    memset(ev, 0, sizeof(*ev));
    ev->kind = EVENT_MESSAGE;
    ev->platform = rec->platform;
    ev->account = rec->account;
    ev->room = rec->room;
    ev->sender = rec->sender;
    ev->sender_name = rec->sender_name;
    ev->text = rec->text;
    ev->thread_id = rec->thread_id;
    ev->reply_to = rec->reply_to;
    ev->event_id = rec->event_id;
    ev->addressed = 1;
    ev->is_admin = rec->is_admin;
    if (rec->attachment_ref) {
        memset(att, 0, sizeof(*att));
        att->ref = rec->attachment_ref;
        att->name = rec->attachment_name;
        att->mime = rec->attachment_mime;
        att->size = rec->attachment_size > 0 ?
                    (size_t)rec->attachment_size : 0;
        ev->attachment = att;
    }
}

void job_free(struct job *job)
{
    struct router *r = job->r;

    /* job->ev is in the job's own block (job_create). */
    free(job->model);
    free(job->system);
    context_history_free(job->history);
    free(job->answer);
    job_image_free(job);
    free(job->work_id);
    free(job->work_entry);
    free(job->work_owner);
    free(job->work_room);
    if (job->all_prev)
        job->all_prev->all_next = job->all_next;
    else
        r->jobs = job->all_next;
    if (job->all_next)
        job->all_next->all_prev = job->all_prev;
    free(job);
    r->pending--;
}

/* ---- finishing: send, then mark done ----------------------------------- */

/* job:<id> state done, expiring with the dedupe marks.  A failed write
 * only means a restart resends the answer with the same txn id, which
 * the platform drops as a duplicate. */
static void job_mark_done(struct job *job)
{
    struct router *r = job->r;

    state_job_done(r->store, job->work_id ? job->work_id :
                   job->ev->event_id, r->cfg->redis.dedupe_ttl_s, NULL,
                   NULL);
}

static void job_sent(int status, void *privdata)
{
    struct job *job = privdata;

    if (status != PARLEY_OK)
        log_room(LOG_LEVEL_WARN, job->ev->platform, job->ev->room,
                 "answer to %s not delivered: %s",
                 job->ev->sender ? job->ev->sender : "-",
                 parley_status_name(status));
    /* TOO_LARGE is final: the platform refused this answer for its size
     * and would refuse it again after every restart. */
    if (job->durable &&
        (status == PARLEY_OK || status == PARLEY_ERR_TOO_LARGE))
        job_mark_done(job);
    job_free(job);
}

/* The room's typing indicator is on while any chat job there waits on
 * the model: the first one turns it on, the last one off. */
void job_typing(struct job *job, int on)
{
    struct adapter *ad = job->ad;
    struct room *room = job->room;

    if (!ad || !ad->ops->typing || !room || job->typing == on)
        return;
    job->typing = on;
    if (on ? room->typing++ == 0 : --room->typing == 0)
        ad->ops->typing(ad, job->ev->room, on);
}

/* Where and how the job's answer goes, without its text; txn (of
 * EVENT_ROOM_KEY_MAX bytes) holds the txn id.  The same fields go with
 * every progress call and the final send (adapter.h). */
static void job_reply_fields(const struct job *job, struct reply *reply,
                             char *txn, size_t txnlen)
{
    memset(reply, 0, sizeof(*reply));
    /* A greeting answers nobody's message: replying to a membership
     * event would show as a reply to nothing in most clients. */
    if (job->kind != JOB_GREET_ROOM && job->kind != JOB_GREET_USER)
        reply->in_reply_to = job->ev->event_id;
    reply->thread_id = job->ev->thread_id;
    reply->mention = job->kind == JOB_GREET_ROOM ? NULL : job->ev->sender;
    if (job->ev->event_id) {
        snprintf(txn, txnlen, "parley.%s", job->ev->event_id);
        reply->txn_id = txn;
    }
}

/* Hand the answer to the adapter and let the room move on.  The job is
 * not touched after ops->send: done may already have freed it. */
void job_send(struct job *job)
{
    struct router *r = job->r;
    struct adapter *ad = job->ad;
    char txn[EVENT_ROOM_KEY_MAX], room_key[EVENT_ROOM_KEY_MAX];
    struct reply reply;
    int result, had_room;

    job_reply_fields(job, &reply, txn, sizeof(txn));
    reply.text = job->answer ? job->answer : ROUTER_FALLBACK_TEXT;
    reply.notice = job->notice;
    job_typing(job, 0);
    if (job->kind == JOB_GREET_ROOM || job->kind == JOB_GREET_USER)
        metrics_greeting();
    else
        metrics_message_answered(job->ev->platform);
    /* Out of the room before sending (done may free the job), but what
     * waits starts only after: the adapter keeps per-room send order,
     * and a job that finishes at once must not overtake this answer. */
    had_room = room_detach(job, room_key, sizeof(room_key));
    result = ad->ops->send(ad, job->ev->room, &reply, job_sent, job);
    if (result != PARLEY_OK) {
        log_room(LOG_LEVEL_WARN, job->ev->platform, job->ev->room,
                 "cannot send: %s", ad->errstr[0] ? ad->errstr :
                 parley_status_name(result));
        job_free(job);
    }
    if (had_room)
        room_wake(r, room_key);
}

/* Whether the room's history is still the one this job was queued
 * against, i.e. no !reset ran since. */
static int job_history_current(const struct job *job)
{
    return job->room && job->room->resets == job->resets;
}

static void job_answer_stored(int status, void *privdata)
{
    struct job *job = privdata;

    if (JOB_CLOSING(job))
        return;
    if (status != PARLEY_OK)
        log_room(LOG_LEVEL_WARN, job->ev->platform, job->ev->room,
                 "answer not recorded before sending (%s): a restart now "
                 "would ask again", parley_status_name(status));
    job_send(job);
}

/* For durable jobs the answer goes into job:<id> before it is sent, so a
 * restart resends the same text instead of asking the model again. */
static void job_store_answer_then_send(struct job *job)
{
    if (job->deliver) {
        job->deliver(job, NULL, 0);
        return;
    }
    if (job->durable &&
        state_job_answered(job->r->store, job->ev->event_id,
                           job->answer ? job->answer : "", job->notice,
                           job_answer_stored, job) == PARLEY_OK)
        return;
    job_send(job);
}

/* Finish a job that sends nothing and let its room move on.  A durable
 * one is marked done, or the next start would take it up again. */
void job_drop(struct job *job)
{
    if (job->durable)
        job_mark_done(job);
    room_leave(job);
    job_free(job);
}

/* text may be job->answer itself. */
void job_reply(struct job *job, const char *text, int notice)
{
    char *copy = text ? strdup(text) : NULL;

    free(job->answer);
    job->answer = copy;
    job->notice = notice;
    job_store_answer_then_send(job);
}

/* ---- chat: record, complete, history, usage, settings ------------------ */

static void job_history_appended(int status, void *privdata)
{
    struct job *job = privdata;

    if (JOB_CLOSING((struct job *)privdata))
        return;

    if (status == PARLEY_ERR_STATE)
        log_room(LOG_LEVEL_DEBUG, job->ev->platform, job->ev->room,
                 "history reset while answering: exchange not stored");
    else if (status != PARLEY_OK)
        log_room(LOG_LEVEL_WARN, job->ev->platform, job->ev->room,
                 "history not saved: %s", parley_status_name(status));
    job_store_answer_then_send(job);
}

static void job_record_usage(struct job *job)
{
    state_usage_add(job->r->store, job->user_key, time(NULL),
                    job->tokens_in, job->tokens_out, ROUTER_USAGE_TTL_S);
}

/* The fixed greeting used when the model cannot be reached; not stored
 * in the history, so the model greets properly next time. */
static void job_greeting_fallback(struct job *job)
{
    char text[256];

    if (job->kind == JOB_GREET_USER)
        snprintf(text, sizeof(text), "Welcome, %s! I'm %s. What topic "
                 "would you like to explore today?", event_speaker(job->ev),
                 job->r->cfg->bot.name);
    else
        snprintf(text, sizeof(text), "Hello everyone! I'm %s. What topic "
                 "would you like to explore today?", job->r->cfg->bot.name);
    job_reply(job, text, 0);
}

static void job_llm_done(const struct llm_result *res, void *privdata)
{
    struct job *job = privdata;
    struct router *r = job->r;
    struct turn turns[2];
    size_t n = 0;
    long long now = (long long)time(NULL);

    metrics_llm_done(res->status == PARLEY_OK, res->http_code,
                     res->attempts, monotonic_seconds() - job->llm_started,
                     res->prompt_tokens, res->completion_tokens);
    if (res->status != PARLEY_OK) {
        log_room(LOG_LEVEL_ERROR, job->ev->platform, job->ev->room,
                 "llm: no answer after %d attempt(s): %s", res->attempts,
                 res->errstr);
        /* A stream that broke after part of the answer was shown ends
         * with the fallback, which the adapter puts in place of the
         * partial text; none of it reaches the history. */
        if (job->streamed)
            log_room(LOG_LEVEL_WARN, job->ev->platform, job->ev->room,
                     "stream broke after %zu bytes were shown: the "
                     "fallback replaces them", res->delivered);
        if (job->kind == JOB_GREET_ROOM || job->kind == JOB_GREET_USER) {
            /* Nobody asked anything: an apology would puzzle people, a
             * plain greeting still makes the bot welcome them. */
            job_greeting_fallback(job);
            return;
        }
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
        /* With a picture: its placeholder, never the picture. */
        turns[n].content = (char *)job_turn_text(job);
        turns[n].ts = now;
        n++;
    }
    turns[n].role = "assistant";
    turns[n].name = NULL;
    turns[n].content = job->answer;
    turns[n].ts = now;
    n++;
    if (!job_history_current(job)) {
        /* A !reset ran since this question came: answer, but nothing
         * from before the reset returns to the history. */
        job_store_answer_then_send(job);
        return;
    }
    if (job->deliver) {
        /* A worker stores the pair with the answer, in one step. */
        job->deliver(job, turns, n);
        return;
    }
    if (state_history_append(r->store, job->room->key, turns, n,
                             &r->cfg->context, job->epoch,
                             job_history_appended, job) != PARLEY_OK)
        job_store_answer_then_send(job);
}

/* Whether the answer is shown while it is written: the adapter can
 * (ops->progress) and its "stream" setting is on. */
static int job_streams(const struct job *job)
{
    return job->ad && job->ad->ops->progress && job->ad->stream;
}

/* A piece of a streamed answer: the adapter sees the whole text so far
 * and decides how often to show it.  Only the final text is stored
 * (job_llm_done), so nothing shown here can end up in the history. */
static void job_llm_delta(const struct llm_delta *delta, void *privdata)
{
    struct job *job = privdata;
    struct adapter *ad = job->ad;
    char txn[EVENT_ROOM_KEY_MAX];
    struct reply reply;

    if (JOB_CLOSING(job))
        return;
    job_reply_fields(job, &reply, txn, sizeof(txn));
    reply.text = delta->content;
    job->streamed = 1;
    if (ad->ops->progress(ad, job->ev->room, &reply,
                          delta->content) != PARLEY_OK)
        log_room(LOG_LEVEL_DEBUG, job->ev->platform, job->ev->room,
                 "progress not shown: %s", ad->errstr[0] ? ad->errstr :
                 "adapter error");
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
    int result;

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
    in.user_text = job->kind == JOB_CHAT ? job_turn_text(job) : NULL;
    /* The first words in a room greet and invite a topic, unless the room
     * turned greetings off. */
    in.first_contact = empty && job->greeting;
    if (job->kind == JOB_GREET_ROOM)
        in.user_name = NULL;
    if (!model && over && over->model)
        model = over->model;
    /* A picture: checked, maybe fetched, before the model is asked. */
    if (job->kind == JOB_CHAT &&
        job_image_prepare(job, model ? model : cfg->llm.model,
                          job_complete))
        return;
    in.image_url = job->image_url;

    messages = prompt_build(&in);
    if (!messages) {
        job_reply(job, ROUTER_FALLBACK_TEXT, 1);
        return;
    }
    if (job->kind == JOB_CHAT)
        job_typing(job, 1);
    job->llm_started = monotonic_seconds();
    result = job_streams(job) ?
             llm_complete_stream(r->llm, model, messages, job_llm_delta,
                                 job_llm_done, job, NULL) :
             llm_complete(r->llm, model, messages, job_llm_done, job, NULL);
    /* The request body holds all of it now (the llm keeps it for
     * retries), and the job waits on the model for seconds: what went
     * into the prompt need not wait with it.  The picture's data URL is
     * megabytes; the history, the room's whole context. */
    context_history_free(job->history);
    job->history = NULL;
    free(job->model);
    free(job->system);
    job->model = job->system = NULL;
    free(job->image_url);
    job->image_url = NULL;
    if (result != PARLEY_OK) {
        log_room(LOG_LEVEL_ERROR, job->ev->platform, job->ev->room,
                 "llm: cannot start a request");
        job_reply(job, ROUTER_FALLBACK_TEXT, 1);
    }
}

/*
 * A chat or a greeting reads three things before asking the model: the
 * room's settings, its history and (with a daily budget) the user's
 * usage.  They are asked for together, so they travel in one round trip
 * to Redis, and job_gathered goes on once the last has answered.
 */
static void job_gathered(struct job *job)
{
    if (--job->loads > 0)
        return;
    if ((job->kind == JOB_GREET_ROOM || job->kind == JOB_GREET_USER) &&
        !job->greeting) {
        job_drop(job);          /* greetings are off in this room */
        return;
    }
    if (job->over_budget) {
        job_reply(job, "You have used today's token budget. It resets "
                  "at midnight UTC.", 1);
        return;
    }
    /* A room greeting only makes sense in a room with no conversation. */
    if (job->kind == JOB_GREET_ROOM && job->history && job->history->n > 0) {
        job_drop(job);
        return;
    }
    job_complete(job);
}

static void job_history_loaded(int status, struct history *h, void *privdata)
{
    struct job *job = privdata;

    if (JOB_CLOSING(job)) {
        context_history_free(h);
        return;
    }
    if (status != PARLEY_OK)
        log_debug("history of %s unavailable (%s), answering without",
                  job->room->key, parley_status_name(status));
    job->history = h;
    job_gathered(job);
}

static void job_usage_loaded(int status, const struct usage *u,
                             void *privdata)
{
    struct job *job = privdata;
    int limit = job->r->cfg->limits.user_daily_tokens;

    if (JOB_CLOSING(job))
        return;
    /* Without the record (Redis trouble) the budget errs on answering. */
    job->over_budget = status == PARLEY_OK && u && limit > 0 &&
                       u->tokens >= limit;
    job_gathered(job);
}

static void job_command_done(enum command_outcome outcome, const char *text,
                             void *privdata)
{
    struct job *job = privdata;

    if (JOB_CLOSING(job))
        return;
    switch (outcome) {
    case COMMAND_SENT:
        job_drop(job);
        return;
    case COMMAND_RESET:
        /* Answers in flight from before the reset are still delivered
         * but not stored (job_history_current). */
        if (job->room)
            job->room->resets++;
        break;
    case COMMAND_REPLY:
        break;
    }
    job_reply(job, text, 1);
}

static void job_run_command(struct job *job)
{
    struct command_ctx ctx;

    memset(&ctx, 0, sizeof(ctx));
    ctx.store = job->r->store;
    ctx.cfg = job->r->cfg;
    ctx.ad = job->ad;
    ctx.ev = job->ev;
    ctx.room_key = job->room->key;
    ctx.user_key = job->user_key;
    ctx.model = job->model;
    ctx.system = job->system;
    ctx.greeting = job->greeting;
    command_run(&ctx, job_command_done, job);
}

static void job_settings_loaded(int status, const struct room_settings *rs,
                                void *privdata)
{
    struct job *job = privdata;

    if (JOB_CLOSING(job))
        return;
    if (status == PARLEY_OK && rs) {
        /* A model chosen with !model before a reload shrank
         * allowed_models is not used any more: checked at use. */
        if (rs->model && !config_model_allowed(job->r->cfg, rs->model))
            log_room(LOG_LEVEL_INFO, job->ev->platform, job->ev->room,
                     "room model %s is no longer in llm.allowed_models; "
                     "using the default", rs->model);
        else if (rs->model && !(job->model = strdup(rs->model)))
            log_warn("out of memory reading room settings");
        if (rs->system && !(job->system = strdup(rs->system)))
            log_warn("out of memory reading room settings");
        if (rs->greeting >= 0)
            job->greeting = rs->greeting;
        job->epoch = rs->epoch;
    }
    if (job->kind == JOB_COMMAND) {
        job_run_command(job);
        return;
    }
    job_gathered(job);
}

static void job_ambient_stored(int status, void *privdata)
{
    struct job *job = privdata;

    if (JOB_CLOSING(job))
        return;
    if (status != PARLEY_OK)
        log_debug("context line for %s not stored: %s", job->room->key,
                  parley_status_name(status));
    job_drop(job);
}

/* A line nobody asked the bot about joins the history, in its place
 * among the questions, so later answers know what was said. */
static void job_store_ambient(struct job *job)
{
    struct turn t;

    memset(&t, 0, sizeof(t));
    t.role = "user";
    t.name = (char *)event_speaker(job->ev);
    t.content = (char *)job_turn_text(job);
    t.ts = (long long)time(NULL);
    if (!t.content || !job_history_current(job)) {
        job_drop(job);
        return;
    }
    if (state_history_append(job->r->store, job->room->key, &t, 1,
                             &job->r->cfg->context, -1, job_ambient_stored,
                             job) != PARLEY_OK)
        job_drop(job);
}

/* Load room:<room> (model, system, greeting, epoch), then go on by
 * kind. */
void job_run(struct job *job)
{
    struct router *r = job->r;
    const struct config_room *over = config_room_find(r->cfg,
                                                      job->room->key);
    int command, usage;

    job->greeting = over && over->greeting >= 0 ? over->greeting : 1;
    if (job->kind == JOB_AMBIENT) {
        job_store_ambient(job);
        return;
    }
    if (job->kind == JOB_NOTICE || job->kind == JOB_RESEND) {
        job_reply(job, job->answer, job->notice);
        return;
    }
    /* Without Redis: the configured defaults, no stored overrides, no
     * history, no budget.  A command needs only the settings.  Each
     * callback may be the last (and finish the job) only once every
     * request went out: the state layer never calls back synchronously,
     * a refused request is answered here in issue order, and nothing of
     * the job is read after the last one. */
    command = job->kind == JOB_COMMAND;
    usage = job->kind == JOB_CHAT && r->cfg->limits.user_daily_tokens > 0;
    job->loads = command ? 1 : usage ? 3 : 2;
    if (state_room_load(r->store, job->room->key, job_settings_loaded,
                        job) != PARLEY_OK)
        job_settings_loaded(PARLEY_ERR_STATE, NULL, job);
    if (command)
        return;
    if (usage && state_usage_load(r->store, job->user_key, time(NULL),
                                  job_usage_loaded, job) != PARLEY_OK)
        job_usage_loaded(PARLEY_ERR_STATE, NULL, job);
    if (state_history_load(r->store, job->room->key, &r->cfg->context,
                           job_history_loaded, job) != PARLEY_OK)
        job_history_loaded(PARLEY_ERR_STATE, NULL, job);
}

/* ---- creation ------------------------------------------------------------ */

/*
 * One block per job: the struct, then the event's copy with its strings
 * (event_dup_into), then the user key.  Thousands of jobs wait on the
 * model at once, and a separate event copy and a fixed-size key buffer
 * cost more than the job itself (issue 11, memory per request in
 * flight).  The user key is cut where the fixed buffer used to cut it, so
 * the usage:<day>:<user> keys stay as they were.
 */
struct job *job_create(struct router *r, struct adapter *ad,
                       const struct event *ev, enum job_kind kind)
{
    const char *platform = ev->platform ? ev->platform : "";
    const char *account = ev->account ? ev->account : "";
    const char *sender = ev->sender ? ev->sender : "";
    size_t ev_size = event_dup_size(ev);
    size_t key_len, total;
    struct job *job;
    char *key;

    if (ev_size == 0)
        return NULL;
    key_len = strlen(platform) + 1 + strlen(account) + 1 +
              strlen(sender);
    if (key_len > EVENT_ROOM_KEY_MAX - 1)
        key_len = EVENT_ROOM_KEY_MAX - 1;
    total = sizeof(*job) + ev_size + key_len + 1;
    job = calloc(1, total);
    if (!job)
        return NULL;
    /* sizeof(struct job) keeps the event behind it aligned: both hold
     * pointers at most. */
    job->ev = event_dup_into(job + 1, ev);
    key = (char *)job->ev + ev_size;
    snprintf(key, key_len + 1, "%s:%s:%s", platform, account, sender);
    job->user_key = key;
    if (job->ev->text && strlen(job->ev->text) > ROUTER_TEXT_MAX) {
        /* The copy owns its text: cut it on a UTF-8 boundary, so the
         * model and the history see at most ROUTER_TEXT_MAX bytes. */
        char *text = (char *)job->ev->text;
        size_t n = ROUTER_TEXT_MAX;

        while (n > 0 && ((unsigned char)text[n] & 0xc0) == 0x80)
            n--;
        text[n] = '\0';
        log_room(LOG_LEVEL_INFO, ev->platform, ev->room,
                 "a message of over %d bytes from %s was cut",
                 ROUTER_TEXT_MAX, ev->sender ? ev->sender : "-");
    }
    job->r = r;
    job->ad = ad;
    job->kind = kind;
    job->greeting = 1;
    job->all_next = r->jobs;
    if (r->jobs)
        r->jobs->all_prev = job;
    r->jobs = job;
    r->pending++;
    return job;
}

/* ---- queueing ------------------------------------------------------------ */

/* Queue full: who gets told.  Only a person whose own addressed message
 * did not fit learns it was not taken; lines kept only as context,
 * greetings and the rate-limit notice are dropped quietly (nobody waits
 * for them), and jobs of a previous run are never turned away (see
 * room_add). */
static void job_turn_away(struct job *job)
{
    const struct event *ev = job->ev;

    if (job->kind == JOB_CHAT || job->kind == JOB_COMMAND) {
        log_room(LOG_LEVEL_WARN, ev->platform, ev->room,
                 "queue full (%d), turning away a message from %s",
                 ROUTER_ROOM_QUEUE_MAX, ev->sender ? ev->sender : "-");
        job_reply(job, "I'm still answering earlier messages here; please "
                  "ask again in a moment.", 1);
        return;
    }
    log_room(LOG_LEVEL_INFO, ev->platform, ev->room,
             "queue full (%d), dropped a %s", ROUTER_ROOM_QUEUE_MAX,
             job->kind == JOB_AMBIENT ? "context line" :
             job->kind == JOB_NOTICE ? "rate-limit notice" : "greeting");
    job_drop(job);
}

void job_enqueue(struct router *r, struct job *job, const char *room_key)
{
    int result = room_add(r, job, room_key);

    if (result == PARLEY_ERR_TOO_LARGE) {
        job_turn_away(job);
    } else if (result != PARLEY_OK) {
        log_error("out of memory queueing an event for %s", room_key);
        job_free(job);
    }
}
