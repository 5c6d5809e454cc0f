/*
 * The interface every platform adapter implements, a small vtable in the
 * spirit of hiredis's adapters/.  An adapter owns its connection, turns
 * platform messages into struct event and hands them to router_submit();
 * the router answers through ops->send and ops->typing.
 *
 * Contract for send: the adapter copies what it needs before returning.
 * If send returns PARLEY_OK, done() is called exactly once, later or
 * before send returns, with PARLEY_OK once the platform accepted the
 * message (or an error status when it finally gave up;
 * PARLEY_ERR_TOO_LARGE says resending can never succeed, and the router
 * does not resend it after a restart).  If send returns
 * an error, done is never called.  Replies to one person in one room are
 * delivered in the order send was called (the router starts a person's
 * next answer only after handing over the one before); an adapter may
 * interleave different people's replies for fairness (IRC does, one
 * whole answer at a time).
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
struct lease;

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

/* A fetched attachment: on PARLEY_OK data (len bytes, malloc'd) becomes
 * the callee's to free; otherwise data is NULL and status says why:
 * PARLEY_ERR_TOO_LARGE (over max_bytes), PARLEY_ERR_PROTOCOL (a bad
 * reference, or bytes that fail their hash or decryption),
 * PARLEY_ERR_HTTP / _IO / _TIMEOUT (the server or the network). */
typedef void adapter_fetch_done_fn(int status, unsigned char *data,
                                   size_t len, void *privdata);

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
    /*
     * Optional capability "stream" (ADAPTER_CAP_STREAM): show an answer
     * while the model writes it.  When the adapter's stream setting is on,
     * the router calls progress zero or more times for one reply, each
     * time with the same reply fields (txn_id, in_reply_to, thread_id,
     * mention; notice 0) and the whole text so far, which only grows.  The
     * adapter copies what it needs and decides how often to show it (its
     * own rate limit: it may skip calls and keep only the latest text).
     * The reply then ends with ops->send as usual, with the same fields:
     * - its text is the full final answer: the adapter turns what it
     *   showed into the final form (a last edit, a final SSE event) rather
     *   than posting a second copy;
     * - or, when the stream broke after progress was shown, its text is
     *   the fallback (notice 1): the adapter replaces the partial text
     *   with it, so that no half answer is left standing.
     * The return value is advisory (PARLEY_OK, or an error after which
     * the router goes on calling progress and send normally). */
    int (*progress)(struct adapter *ad, const char *room,
                    const struct reply *reply, const char *content_so_far);
    /*
     * Optional: download an attachment of an event this adapter made
     * (event_attachment.ref), at most max_bytes, giving up as soon as the
     * size is known to be larger.  If it returns PARLEY_OK, done runs
     * exactly once, later (never inside this call), unless the adapter
     * stops first: stop drops fetches in flight without calling done
     * (the router closes before adapters stop, see main.c).
     */
    int (*fetch)(struct adapter *ad, const char *ref, size_t max_bytes,
                 adapter_fetch_done_fn *done, void *privdata);
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
    int stream;             /* answers go through ops->progress while the
                               model writes them: the block's "stream"
                               key, else the adapter's default (set by
                               its constructor; 0 unless it says so) */
    struct config_greet greet;  /* from its config block; set by main */
    /* The account's lease when several instances share Redis (ha.*),
     * set by main before start; NULL otherwise.  The adapter puts
     * nothing on the wire for an answer unless lease_may_send(lease)
     * (lease.h), checked right before each send. */
    const struct lease *lease;
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
 * console that --console adds).  On failure they return an error status
 * and write a message naming the config key into err.
 */
typedef int adapter_create_fn(struct adapter **out,
                              const struct adapter_env *env, void *setting,
                              char *err, size_t errlen);

/*
 * Check an adapter's block (a config_setting_t *) without building
 * anything: write every problem into err, one per line, as
 * "FILE:LINE: key: message".  Returns PARLEY_OK, PARLEY_ERR_CONFIG or
 * PARLEY_ERR_OOM.  config_load calls it in the same pass as the rest of
 * the file, so --check-config reports everything at once.  The common
 * keys ("type", the greet_* keys and "stream", see
 * config_adapter_key_common) are checked by config_load and must not be
 * called unknown here.
 */
typedef int adapter_validate_fn(const void *setting, char *err,
                                size_t errlen);

/* Capabilities, for the router and main. */
#define ADAPTER_CAP_MORE   (1u << 0)  /* ops->more: "!more" continues a
                                         long answer */
#define ADAPTER_CAP_SINGLE (1u << 1)  /* one per process (it owns stdin);
                                         repeated blocks are ignored */
#define ADAPTER_CAP_STREAM (1u << 2)  /* ops->progress: answers can be shown
                                         as they are written ("stream") */
#define ADAPTER_CAP_LEASED (1u << 3)  /* one platform connection per account
                                         (IRC, Matrix): with ha.enabled
                                         only the instance holding its
                                         lease connects it */

/*
 * What an adapter folder exports: one descriptor, listed once in
 * adapters/registry.c.  Adding a platform is its folder plus one line
 * there; main (creation), config (validation, the list of types in
 * messages) and metrics (platform labels) read the list.
 */
struct adapter_desc {
    const char *name;           /* "type" in bot.conf, also ops->type */
    /* Keys of its block besides the common ones, NULL-terminated; NULL
     * when validate checks the keys itself. */
    const char *const *keys;
    adapter_validate_fn *validate;  /* NULL: keys alone are checked */
    adapter_create_fn *create;
    unsigned caps;              /* ADAPTER_CAP_* */
};

/* Every adapter built into parley, NULL-terminated, in the order
 * messages list them. */
extern const struct adapter_desc *const adapter_registry[];

/* The descriptor whose name is type, or NULL. */
const struct adapter_desc *adapter_find(const char *type);

/* "console, irc, loopback or matrix" into buf (truncated to len). */
void adapter_registry_names(char *buf, size_t len);

adapter_create_fn console_adapter_create;
adapter_create_fn irc_adapter_create;
adapter_create_fn matrix_adapter_create;
adapter_create_fn web_adapter_create;

#endif
