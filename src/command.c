/*
 * The chat commands, one function each, found by bsearch in a table
 * sorted by name (command.h).  Each answers through call_done exactly
 * once; the ones that touch Redis do it from the state layer's callback.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "adapter.h"
#include "command.h"
#include "config.h"
#include "event.h"
#include "log.h"
#include "metrics.h"
#include "router.h"
#include "state.h"
#include "status.h"

/* Model names and per-room system prompts set from chat are capped. */
#define COMMAND_MODEL_NAME_MAX 128
#define COMMAND_SYSTEM_MAX (8 * 1024)

#define STORAGE_DOWN "I couldn't save that just now (storage is " \
                     "unavailable); please try again shortly."

/* One command in progress. */
struct call {
    struct command_ctx ctx;
    command_done_fn *done;
    void *privdata;
    char *ok_text;              /* confirmation once a write lands */
};

static void call_done(struct call *call, enum command_outcome outcome,
                      const char *text)
{
    command_done_fn *done = call->done;
    void *privdata = call->privdata;
    char *owned = call->ok_text;

    call->ok_text = NULL;
    free(call);
    done(outcome, text, privdata);
    free(owned);                /* text may point into it */
}

/* ---- commands table ---------------------------------------------------- */

typedef void command_fn(struct call *call, const char *arg);

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

static void cmd_help(struct call *call, const char *arg)
{
    char text[1024];
    size_t off;

    (void)arg;
    off = (size_t)snprintf(text, sizeof(text),
                           "I'm %s. Talk to me by addressing me. Commands:",
                           call->ctx.cfg->bot.name);
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (off >= sizeof(text))
            break;
        if (!command_available(call->ctx.ad, &commands[i]))
            continue;
        off += (size_t)snprintf(text + off, sizeof(text) - off, "\n%s",
                                commands[i].usage);
    }
    call_done(call, COMMAND_REPLY, text);
}

static void cmd_reset_done(int status, void *privdata)
{
    if (status == PARLEY_OK)
        call_done(privdata, COMMAND_RESET,
                  "Done: I've forgotten this room's conversation.");
    else
        call_done(privdata, COMMAND_REPLY, "I couldn't clear the history "
                  "just now (storage is unavailable); please try again "
                  "shortly.");
}

static void cmd_reset(struct call *call, const char *arg)
{
    (void)arg;
    if (state_history_reset(call->ctx.store, call->ctx.room_key,
                            cmd_reset_done, call) != PARLEY_OK)
        cmd_reset_done(PARLEY_ERR_STATE, call);
}

static void cmd_setting_saved(int status, void *privdata)
{
    struct call *call = privdata;

    call_done(call, COMMAND_REPLY, status == PARLEY_OK && call->ok_text ?
              call->ok_text : STORAGE_DOWN);
}

/* Set (or, value NULL, delete) one room setting, then confirm. */
static void cmd_room_set(struct call *call, enum room_field field,
                         const char *value, const char *ok_text)
{
    call->ok_text = strdup(ok_text);
    if (!call->ok_text ||
        state_room_set(call->ctx.store, call->ctx.room_key, field, value,
                       cmd_setting_saved, call) != PARLEY_OK)
        cmd_setting_saved(PARLEY_ERR_STATE, call);
}

static void cmd_model(struct call *call, const char *arg)
{
    const struct config *cfg = call->ctx.cfg;
    char text[2048];
    size_t off;

    /* Switching costs everyone in the room (and the operator's bill):
     * operators only unless llm.model_switch says everyone. */
    if (*arg && !call->ctx.ev->is_admin &&
        strcmp(cfg->llm.model_switch, "everyone") != 0) {
        call_done(call, COMMAND_REPLY,
                  "Only room operators can change the model.");
        return;
    }
    if (*arg) {
        char name[COMMAND_MODEL_NAME_MAX];
        size_t n = strcspn(arg, " \t\r\n");

        if (n < sizeof(name)) {
            memcpy(name, arg, n);
            name[n] = '\0';
            if (config_model_allowed(cfg, name)) {
                snprintf(text, sizeof(text), "Model for this room: %s.",
                         name);
                cmd_room_set(call, ROOM_FIELD_MODEL, name, text);
                return;
            }
        }
    }
    off = (size_t)snprintf(text, sizeof(text), "%s%s. Available:",
                           *arg ? "Unknown model. Current model: " :
                           "Current model: ",
                           call->ctx.model ? call->ctx.model :
                           cfg->llm.model);
    for (size_t i = 0; i < cfg->llm.n_allowed_models; i++) {
        if (off >= sizeof(text))
            break;
        off += (size_t)snprintf(text + off, sizeof(text) - off, " %s",
                                cfg->llm.allowed_models[i]);
    }
    call_done(call, COMMAND_REPLY, text);
}

static void cmd_system(struct call *call, const char *arg)
{
    const struct command_ctx *ctx = &call->ctx;
    char text[COMMAND_SYSTEM_MAX + 128];

    if (!*arg) {
        snprintf(text, sizeof(text), "Instructions for this room%s: %s",
                 ctx->system ? "" : " (default)",
                 ctx->system ? ctx->system : ctx->cfg->prompts.system);
        call_done(call, COMMAND_REPLY, text);
        return;
    }
    if (!ctx->ev->is_admin) {
        call_done(call, COMMAND_REPLY,
                  "Only room operators can change my instructions.");
        return;
    }
    if (strcmp(arg, "reset") == 0) {
        cmd_room_set(call, ROOM_FIELD_SYSTEM, NULL,
                     "Instructions for this room reset to the default.");
        return;
    }
    if (strlen(arg) > COMMAND_SYSTEM_MAX) {
        call_done(call, COMMAND_REPLY, "Those instructions are too long.");
        return;
    }
    cmd_room_set(call, ROOM_FIELD_SYSTEM, arg,
                 "New instructions for this room saved.");
}

/* room:<room> greeting = on/off: whether the bot greets in this room
 * (its own arrival, newcomers, first contact).  Operators only, like
 * !system, since it changes the bot for everyone there. */
static void cmd_greeting(struct call *call, const char *arg)
{
    if (!*arg) {
        call_done(call, COMMAND_REPLY, call->ctx.greeting ?
                  "Greetings are on in this room." :
                  "Greetings are off in this room.");
        return;
    }
    if (!call->ctx.ev->is_admin) {
        call_done(call, COMMAND_REPLY,
                  "Only room operators can change that.");
        return;
    }
    if (strcmp(arg, "on") == 0)
        cmd_room_set(call, ROOM_FIELD_GREETING, "on", "Greetings are on.");
    else if (strcmp(arg, "off") == 0)
        cmd_room_set(call, ROOM_FIELD_GREETING, "off", "Greetings are off.");
    else
        call_done(call, COMMAND_REPLY, "Usage: !greeting on|off");
}

static void cmd_stats_loaded(int status, const struct usage *u,
                             void *privdata)
{
    struct call *call = privdata;
    int budget = call->ctx.cfg->limits.user_daily_tokens;
    char text[256];

    if (status != PARLEY_OK || !u) {
        call_done(call, COMMAND_REPLY,
                  "Statistics are unavailable just now.");
        return;
    }
    snprintf(text, sizeof(text), "Today (UTC) you made %lld request%s: "
             "%lld tokens (%lld in, %lld out).", u->requests,
             u->requests == 1 ? "" : "s", u->tokens, u->tokens_in,
             u->tokens_out);
    if (budget > 0) {
        size_t off = strlen(text);

        snprintf(text + off, sizeof(text) - off, " Daily budget: %d.",
                 budget);
    }
    call_done(call, COMMAND_REPLY, text);
}

static void cmd_stats(struct call *call, const char *arg)
{
    (void)arg;
    if (state_usage_load(call->ctx.store, call->ctx.user_key, time(NULL),
                         cmd_stats_loaded, call) != PARLEY_OK)
        cmd_stats_loaded(PARLEY_ERR_STATE, NULL, call);
}

static void cmd_more(struct call *call, const char *arg)
{
    struct adapter *ad = call->ctx.ad;
    const struct event *ev = call->ctx.ev;

    (void)arg;
    if (ad->ops->more(ad, ev->room, ev->sender) == PARLEY_OK)
        call_done(call, COMMAND_SENT, NULL);
    else
        call_done(call, COMMAND_REPLY, "There is nothing more to show.");
}

int command_known(const struct adapter *ad, const char *name)
{
    const struct command *c = command_find(name);

    return c && command_available(ad, c);
}

void command_run(const struct command_ctx *ctx, command_done_fn *done,
                 void *privdata)
{
    char name[COMMAND_NAME_MAX];
    const char *arg = "";
    const struct command *c = NULL;
    struct call *call;

    if (router_parse_command(ctx->ev->text, name, sizeof(name), &arg))
        c = command_find(name);
    if (c && !command_available(ctx->ad, c))
        c = NULL;
    metrics_command(c ? c->name : NULL);
    if (!c) {
        done(COMMAND_REPLY, "Unknown command. Try !help.", privdata);
        return;
    }
    call = calloc(1, sizeof(*call));
    if (!call) {
        done(COMMAND_REPLY, "Sorry, I'm out of memory just now.", privdata);
        return;
    }
    call->ctx = *ctx;
    call->done = done;
    call->privdata = privdata;
    c->fn(call, arg);
}
