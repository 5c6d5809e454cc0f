/*
 * The chat commands (!help, !model, !reset, !stats, !system), one
 * function each, found by bsearch in a table sorted by name.  Each runs
 * as a job in its room's queue, so a command keeps its place among the
 * questions around it, and answers with a notice through job_reply.
 * Commands never reach the model or the history.
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

/* ---- commands table ---------------------------------------------------- */

typedef void command_fn(struct job *job, const char *arg);

struct command {
    const char *name;
    const char *usage;
    command_fn *fn;
};

static command_fn cmd_greeting, cmd_help, cmd_model, cmd_more, cmd_reset,
                  cmd_stats, cmd_system;

/* Sorted by name for bsearch. */
static const struct command commands[] = {
    { "greeting", "!greeting [on|off] - greet newcomers in this room",
                                                          cmd_greeting },
    { "help",   "!help - what I can do",                  cmd_help },
    { "model",  "!model [name] - show or set the model",  cmd_model },
    { "more",   "!more - the rest of my last long answer", cmd_more },
    { "reset",  "!reset - forget this room's history",    cmd_reset },
    { "stats",  "!stats - your requests and tokens today", cmd_stats },
    { "system", "!system [text|reset] - show or set this room's "
                "instructions",                          cmd_system },
};

/* !more exists where the adapter keeps the rest of long answers. */
static int command_available(const struct adapter *ad,
                             const struct command *c)
{
    return c->fn != cmd_more || (ad && ad->ops->more);
}

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
        if (!command_available(job->ad, &commands[i]))
            continue;
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

    if (status == PARLEY_OK) {
        /* Answers in flight from before the reset are still delivered
         * but not stored (job_history_current). */
        if (job->room)
            job->room->resets++;
        job_reply(job, "Done: I've forgotten this room's conversation.", 1);
    }
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

/* room:<room> greeting = on/off: whether the bot greets in this room
 * (its own arrival, newcomers, first contact).  Operators only, like
 * !system, since it changes the bot for everyone there. */
static void cmd_greeting(struct job *job, const char *arg)
{
    if (!*arg) {
        job_reply(job, job->greeting ? "Greetings are on in this room." :
                  "Greetings are off in this room.", 1);
        return;
    }
    if (!job->ev->is_admin) {
        job_reply(job, "Only room operators can change that.", 1);
        return;
    }
    if (strcmp(arg, "on") == 0)
        cmd_room_set(job, "greeting", "on", "Greetings are on.");
    else if (strcmp(arg, "off") == 0)
        cmd_room_set(job, "greeting", "off", "Greetings are off.");
    else
        job_reply(job, "Usage: !greeting on|off", 1);
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
    char key[STORE_KEY_MAX];

    (void)arg;
    if (usage_key(job, key, sizeof(key)) == 0) {
        const char *argv[] = { "HGETALL", key };

        if (store_command_argv(r->store, cmd_stats_loaded, job, 2, argv,
                               NULL) == PARLEY_OK)
            return;
    }
    cmd_stats_loaded(r->store, NULL, job);
}

static void cmd_more(struct job *job, const char *arg)
{
    struct adapter *ad = job->ad;

    (void)arg;
    if (ad->ops->more(ad, job->ev->room, job->ev->sender) == PARLEY_OK) {
        job_drop(job);      /* the adapter sent it */
        return;
    }
    job_reply(job, "There is nothing more to show.", 1);
}

int command_known(const struct adapter *ad, const char *name)
{
    const struct command *c = command_find(name);

    return c && command_available(ad, c);
}

void command_run(struct job *job)
{
    char name[ROUTER_COMMAND_NAME_MAX];
    const char *arg = "";
    const struct command *c = NULL;

    if (router_parse_command(job->ev->text, name, sizeof(name), &arg))
        c = command_find(name);
    if (c && !command_available(job->ad, c))
        c = NULL;
    metrics_command(c ? c->name : NULL);
    if (c)
        c->fn(job, arg);
    else
        job_reply(job, "Unknown command. Try !help.", 1);
}
