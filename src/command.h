/*
 * The chat commands (!help, !greeting, !model, !more, !reset, !stats,
 * !system).  A command runs as a job in its room (so it keeps its place
 * among the questions around it), but knows nothing of jobs: it gets what
 * it needs in a struct command_ctx, reads and writes Redis through the
 * state layer, and reports one outcome through its callback.  Commands
 * never reach the model or the history.
 */
#ifndef PARLEY_COMMAND_H
#define PARLEY_COMMAND_H

#include <stddef.h>

struct adapter;
struct config;
struct event;
struct store;

/* Longest command name we look up ("!greeting"). */
#define COMMAND_NAME_MAX 16

/* Everything borrowed from the caller, valid until done runs. */
struct command_ctx {
    struct store *store;
    const struct config *cfg;
    struct adapter *ad;         /* for capabilities (!more) */
    const struct event *ev;     /* ev->text holds the command */
    const char *room_key;
    const char *user_key;       /* platform:account:sender, for !stats */
    const char *model;          /* the room's model override, or NULL */
    const char *system;         /* the room's instructions, or NULL */
    int greeting;               /* greetings on (1) / off (0) here */
};

enum command_outcome {
    COMMAND_REPLY,              /* send text as a notice */
    COMMAND_SENT,               /* the adapter already sent (!more) */
    COMMAND_RESET               /* history cleared; send text */
};

/* text is valid only during the call. */
typedef void command_done_fn(enum command_outcome outcome, const char *text,
                             void *privdata);

/* Run the command in ctx->ev->text.  done runs exactly once, possibly
 * before command_run returns (answers that need no Redis). */
void command_run(const struct command_ctx *ctx, command_done_fn *done,
                 void *privdata);

/* Whether name is one of our commands on ad's platform (!more needs the
 * adapter's more op). */
int command_known(const struct adapter *ad, const char *name);

#endif
