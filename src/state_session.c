/*
 * The Matrix part of the typed state layer (state.h): session:<account>,
 * the hash that keeps the access token, device id and user id across
 * restarts (the same token and device make the homeserver drop a resend
 * of an answer that already went out, DESIGN.md "Exactly once"), and
 * sync:<account>, the next_batch string written after a batch is handled.
 * This file turns hiredis replies into those shapes; the Matrix adapter
 * never sees a redisReply.
 *
 * Every call allocates one small request that carries the caller's
 * callback; it is freed in the reply callback, which store.c runs exactly
 * once (with NULL when the connection went away), never before the
 * store_command call returned.
 */
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "log.h"
#include "state.h"
#include "state_private.h"
#include "status.h"
#include "store.h"

/*
 * A save replaces the whole hash in one step: a field the new session
 * does not have (an application-service token has no device) must not
 * survive from the old one, and DEL then HSET as two commands could leave
 * no session at all if the connection dropped between them.
 */
#define SESSION_SAVE_LUA \
    "redis.call('DEL', KEYS[1]) " \
    "if #ARGV > 0 then redis.call('HSET', KEYS[1], unpack(ARGV)) end " \
    "return 1"

/* sync:<account> under a lease (state.h "leases and fencing"): KEYS
 * sync, fence; ARGV next_batch, the token this process holds. */
#define SYNC_SAVE_FENCED_LUA \
    "if redis.call('GET', KEYS[2]) ~= ARGV[2] then " \
    "return redis.error_reply('FENCED lease moved to a newer holder') end " \
    "return redis.call('SET', KEYS[1], ARGV[1])"

struct ss_req {
    state_session_fn *session_fn;
    state_sync_fn *sync_fn;
    state_done_fn *done_fn;
    void *privdata;
    const char *what;           /* the command, for log lines */
    char label[STATE_LABEL_MAX + 1];    /* the account, printable */
};

static struct ss_req *req_new(const char *what, const char *account,
                              void *privdata)
{
    struct ss_req *q = calloc(1, sizeof(*q));

    if (q) {
        q->what = what;
        q->privdata = privdata;
        state_label(q->label, sizeof(q->label), account);
    }
    return q;
}

/* The status of a reply that should have been of type want: as
 * state_reply_status (error replies logged), and PARLEY_ERR_PROTOCOL for
 * any other unexpected type. */
static int reply_check(const redisReply *rep, int want, int also,
                       const struct ss_req *q)
{
    int result = state_reply_status(rep, q->what, q->label);

    if (result == PARLEY_OK && rep->type != want && rep->type != also)
        result = PARLEY_ERR_PROTOCOL;
    return result;
}

/* A reply string usable as a C string: no NUL inside (a binary value in
 * a field parley wrote as text means someone else wrote it). */
static const char *reply_cstr(const redisReply *v)
{
    if (v->type != REDIS_REPLY_STRING || !v->str || strlen(v->str) != v->len)
        return NULL;
    return v->str;
}

/* Send a command whose reply goes to fn with a fresh request; frees the
 * request when the command could not be queued (fn then never runs). */
static int req_send(struct store *st, struct ss_req *q, store_reply_fn *fn,
                    int argc, const char **argv)
{
    int result;

    if (!q)
        return PARLEY_ERR_OOM;
    if (!st) {
        free(q);
        return PARLEY_ERR_STATE;
    }
    result = store_command_argv(st, fn, q, argc, argv, NULL);
    if (result != PARLEY_OK)
        free(q);
    return result;
}

/* ---- session:<account> ----------------------------------------------- */

static void session_loaded(struct store *st, redisReply *rep, void *priv)
{
    struct ss_req *q = priv;
    struct state_session s;
    size_t i;
    int any = 0, result;

    (void)st;
    result = reply_check(rep, REDIS_REPLY_ARRAY, REDIS_REPLY_ARRAY, q);
    if (result != PARLEY_OK) {
        q->session_fn(result, NULL, q->privdata);
        free(q);
        return;
    }
    memset(&s, 0, sizeof(s));
    for (i = 0; i + 1 < rep->elements; i += 2) {
        const char *k = reply_cstr(rep->element[i]);
        const char *v = reply_cstr(rep->element[i + 1]);

        if (!k || !v || !v[0])
            continue;
        if (strcmp(k, "access_token") == 0)
            s.access_token = v;
        else if (strcmp(k, "device_id") == 0)
            s.device_id = v;
        else if (strcmp(k, "user_id") == 0)
            s.user_id = v;
        else
            continue;
        any = 1;
    }
    q->session_fn(PARLEY_OK, any ? &s : NULL, q->privdata);
    free(q);
}

int state_session_load(struct store *st, const char *account,
                       state_session_fn *fn, void *privdata)
{
    char key[STORE_KEY_MAX];
    const char *argv[2];
    struct ss_req *q;
    int result;

    if (!account || !fn)
        return PARLEY_ERR_OTHER;
    if (!st)
        return PARLEY_ERR_STATE;
    result = store_key(st, key, sizeof(key), "session:%s", account);
    if (result != PARLEY_OK)
        return result;
    q = req_new("HGETALL session", account, privdata);
    if (q)
        q->session_fn = fn;
    argv[0] = "HGETALL";
    argv[1] = key;
    return req_send(st, q, session_loaded, 2, argv);
}

/* Replies where only success matters: SET, DEL, the save script.  With
 * no callback (fire and forget) a failure is logged at debug level only
 * (state.h). */
static void done_reply(struct store *st, redisReply *rep, void *priv)
{
    struct ss_req *q = priv;
    int status;

    (void)st;
    if (q->done_fn) {
        q->done_fn(state_reply_status(rep, q->what, q->label), q->privdata);
    } else {
        status = state_reply_code(rep);
        if (status == PARLEY_ERR_STATE)     /* fenced: say so */
            state_reply_status(rep, q->what, q->label);
        else if (status != PARLEY_OK)
            log_debug("redis %s %s failed (%s)", q->what, q->label,
                      parley_status_name(status));
    }
    free(q);
}

int state_session_save(struct store *st, const char *account,
                       const struct state_session *s, state_done_fn *fn,
                       void *privdata)
{
    char key[STORE_KEY_MAX];
    const char *argv[4 + 6];
    struct ss_req *q;
    int argc = 0, result;

    if (!account || !s)
        return PARLEY_ERR_OTHER;
    if (!st)
        return PARLEY_ERR_STATE;
    result = store_key(st, key, sizeof(key), "session:%s", account);
    if (result != PARLEY_OK)
        return result;
    argv[argc++] = "EVAL";
    argv[argc++] = SESSION_SAVE_LUA;
    argv[argc++] = "1";
    argv[argc++] = key;
    if (s->access_token && s->access_token[0]) {
        argv[argc++] = "access_token";
        argv[argc++] = s->access_token;
    }
    if (s->device_id && s->device_id[0]) {
        argv[argc++] = "device_id";
        argv[argc++] = s->device_id;
    }
    if (s->user_id && s->user_id[0]) {
        argv[argc++] = "user_id";
        argv[argc++] = s->user_id;
    }
    q = req_new("EVAL session save", account, privdata);
    if (q)
        q->done_fn = fn;
    return req_send(st, q, done_reply, argc, argv);
}

int state_session_delete(struct store *st, const char *account,
                         state_done_fn *fn, void *privdata)
{
    char key[STORE_KEY_MAX];
    const char *argv[2];
    struct ss_req *q;
    int result;

    if (!account)
        return PARLEY_ERR_OTHER;
    if (!st)
        return PARLEY_ERR_STATE;
    result = store_key(st, key, sizeof(key), "session:%s", account);
    if (result != PARLEY_OK)
        return result;
    q = req_new("DEL session", account, privdata);
    if (q)
        q->done_fn = fn;
    argv[0] = "DEL";
    argv[1] = key;
    return req_send(st, q, done_reply, 2, argv);
}

/* ---- sync:<account> -------------------------------------------------- */

static void sync_loaded(struct store *st, redisReply *rep, void *priv)
{
    struct ss_req *q = priv;
    const char *nb;
    int result;

    (void)st;
    result = reply_check(rep, REDIS_REPLY_STRING, REDIS_REPLY_NIL, q);
    if (result != PARLEY_OK) {
        q->sync_fn(result, NULL, q->privdata);
    } else if (rep->type == REDIS_REPLY_NIL) {
        q->sync_fn(PARLEY_OK, NULL, q->privdata);
    } else {
        nb = reply_cstr(rep);
        if (rep->len > 0 && !nb)
            q->sync_fn(PARLEY_ERR_PROTOCOL, NULL, q->privdata);
        else
            q->sync_fn(PARLEY_OK, nb && nb[0] ? nb : NULL, q->privdata);
    }
    free(q);
}

int state_sync_load(struct store *st, const char *account,
                    state_sync_fn *fn, void *privdata)
{
    char key[STORE_KEY_MAX];
    const char *argv[2];
    struct ss_req *q;
    int result;

    if (!account || !fn)
        return PARLEY_ERR_OTHER;
    if (!st)
        return PARLEY_ERR_STATE;
    result = store_key(st, key, sizeof(key), "sync:%s", account);
    if (result != PARLEY_OK)
        return result;
    q = req_new("GET sync", account, privdata);
    if (q)
        q->sync_fn = fn;
    argv[0] = "GET";
    argv[1] = key;
    return req_send(st, q, sync_loaded, 2, argv);
}

int state_sync_save(struct store *st, const char *account,
                    const char *next_batch, state_done_fn *fn,
                    void *privdata)
{
    char key[STORE_KEY_MAX], fence[STORE_KEY_MAX], token[24];
    const char *argv[7];
    struct ss_req *q;
    int result, fenced;

    if (!account || !next_batch || !next_batch[0])
        return PARLEY_ERR_OTHER;
    if (!st)
        return PARLEY_ERR_STATE;
    result = store_key(st, key, sizeof(key), "sync:%s", account);
    if (result != PARLEY_OK)
        return result;
    fenced = state_fence_args(st, "matrix", account, fence, sizeof(fence),
                              token, sizeof(token));
    if (fenced < 0)
        return -fenced;
    q = req_new("SET sync", account, privdata);
    if (q)
        q->done_fn = fn;
    if (fenced) {
        /* A holder paused past its lease must not move the position
         * back over what its successor handled. */
        argv[0] = "EVAL";
        argv[1] = SYNC_SAVE_FENCED_LUA;
        argv[2] = "2";
        argv[3] = key;
        argv[4] = fence;
        argv[5] = next_batch;
        argv[6] = token;
        return req_send(st, q, done_reply, 7, argv);
    }
    argv[0] = "SET";
    argv[1] = key;
    argv[2] = next_batch;
    return req_send(st, q, done_reply, 3, argv);
}
