/*
 * The interface every platform adapter implements, a small vtable in the
 * spirit of hiredis's adapters/.  An adapter owns its connection, turns
 * platform messages into struct event and hands them to router_submit();
 * the router answers through ops->send and ops->typing.
 *
 * Contract for send: the adapter copies what it needs before returning.
 * If send returns PARLEY_OK, done() is called exactly once, later or
 * before send returns, with PARLEY_OK once the platform accepted the
 * message (or an error status when it finally gave up).  If send returns
 * an error, done is never called.  Replies to one room are delivered in
 * the order send was called.
 */
#ifndef PARLEY_ADAPTER_H
#define PARLEY_ADAPTER_H

#include <stddef.h>

#include "config.h"

struct adapter;
struct router;
struct config;
struct loop;
struct store;

/* What the router asks an adapter to post. */
struct reply {
    const char *text;       /* UTF-8 Markdown-ish text from the model */
    const char *in_reply_to;/* event id answered, or NULL */
    const char *thread_id;  /* thread to answer in, or NULL */
    const char *mention;    /* sender id to mention, or NULL */
    const char *txn_id;     /* stable id for idempotent resend, or NULL */
    int notice;             /* service text (errors, help), not the model */
};

typedef void adapter_send_done_fn(int status, void *privdata);

struct adapter_ops {
    const char *type;       /* "console", "irc", "matrix" */
    /* Connect / start reading.  Called once after the loop is running. */
    int (*start)(struct adapter *ad);
    int (*send)(struct adapter *ad, const char *room,
                const struct reply *reply, adapter_send_done_fn *done,
                void *privdata);
    /* Optional: typing indicator on (1) or off (0). */
    void (*typing)(struct adapter *ad, const char *room, int on);
    /* Optional capability "!more": send the rest of the last long answer
     * to sender in room.  Returns PARLEY_OK when something was sent,
     * PARLEY_ERR_STATE when there is nothing more.  The router runs the
     * command (rate limits, help text) and calls this. */
    int (*more)(struct adapter *ad, const char *room, const char *sender);
    /* Stop taking input and close connections; frees nothing. */
    void (*stop)(struct adapter *ad);
    /* Release everything; called after stop, once the loop has closed
     * the adapter's handles. */
    void (*free)(struct adapter *ad);
};

struct adapter {
    const struct adapter_ops *ops;
    struct router *router;  /* set by router_add_adapter */
    struct loop *loop;
    char *account;          /* instance name used in room keys */
    int connected;          /* for health: 1 when usable */
    struct config_greet greet;  /* from its config block; set by main */
    int err;
    char errstr[128];
    void *priv;             /* adapter-private state */
};

/* What an adapter gets from main: all borrowed, outliving the adapter. */
struct adapter_env {
    struct loop *loop;
    struct store *store;        /* Redis, for sessions, sync tokens */
    const struct config *cfg;
};

/*
 * Constructors, one per adapter folder, all of this type.  setting is the
 * adapter's config_setting_t * from the "adapters" list (NULL for the
 * built-in console).  On failure they return an error status and write a
 * message naming the config key into err.  main.c maps config type names
 * to these.
 */
typedef int adapter_create_fn(struct adapter **out,
                              const struct adapter_env *env, void *setting,
                              char *err, size_t errlen);

adapter_create_fn console_adapter_create;
adapter_create_fn irc_adapter_create;
adapter_create_fn matrix_adapter_create;

#endif
