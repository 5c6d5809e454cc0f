/*
 * The streaming part of the typed state layer (state.h):
 * stream:<account>:<txn>, what a streamed Matrix answer has put in the
 * room so far, so that a restart finishes it with one edit instead of a
 * second message (DESIGN.md "Exactly once", README "Streaming").  The
 * value is STATE_STREAM_SENDING while the first event may be on its way,
 * then that event's id.  Keys expire (the job they belong to is resumed
 * within minutes or never), and are deleted once the final text went
 * out.
 */
#include <stdio.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "log.h"
#include "state.h"
#include "state_private.h"
#include "status.h"
#include "store.h"

struct st_req {
    state_value_fn *value_fn;
    state_done_fn *done_fn;
    void *privdata;
    const char *what;
    char label[STATE_LABEL_MAX + 1];    /* the txn, printable */
};

static int stream_key(struct store *st, char *key, size_t len,
                      const char *account, const char *txn)
{
    if (!account || !txn || !txn[0])
        return PARLEY_ERR_OTHER;
    if (!st)
        return PARLEY_ERR_STATE;
    return store_key(st, key, len, "stream:%s:%s", account, txn);
}

static int req_send(struct store *st, const char *what, const char *txn,
                    state_value_fn *vfn, state_done_fn *dfn, void *privdata,
                    store_reply_fn *fn, int argc, const char **argv)
{
    struct st_req *q = calloc(1, sizeof(*q));
    int result;

    if (!q)
        return PARLEY_ERR_OOM;
    q->what = what;
    q->value_fn = vfn;
    q->done_fn = dfn;
    q->privdata = privdata;
    state_label(q->label, sizeof(q->label), txn);
    result = store_command_argv(st, fn, q, argc, argv, NULL);
    if (result != PARLEY_OK)
        free(q);
    return result;
}

static void value_reply(struct store *st, redisReply *rep, void *priv)
{
    struct st_req *q = priv;
    int result = state_reply_status(rep, q->what, q->label);
    const char *v = NULL;

    (void)st;
    if (result == PARLEY_OK) {
        if (rep->type == REDIS_REPLY_STRING && rep->str &&
            strlen(rep->str) == rep->len)
            v = rep->str;
        else if (rep->type != REDIS_REPLY_NIL)
            result = PARLEY_ERR_PROTOCOL;
    }
    q->value_fn(result, result == PARLEY_OK ? v : NULL, q->privdata);
    free(q);
}

static void done_reply(struct store *st, redisReply *rep, void *priv)
{
    struct st_req *q = priv;
    int status;

    (void)st;
    if (q->done_fn) {
        q->done_fn(state_reply_status(rep, q->what, q->label), q->privdata);
    } else {
        status = state_reply_code(rep);
        if (status != PARLEY_OK)
            log_debug("redis %s %s failed (%s)", q->what, q->label,
                      parley_status_name(status));
    }
    free(q);
}

int state_stream_load(struct store *st, const char *account, const char *txn,
                      state_value_fn *fn, void *privdata)
{
    char key[STORE_KEY_MAX];
    const char *argv[2];
    int result;

    if (!fn)
        return PARLEY_ERR_OTHER;
    result = stream_key(st, key, sizeof(key), account, txn);
    if (result != PARLEY_OK)
        return result;
    argv[0] = "GET";
    argv[1] = key;
    return req_send(st, "GET stream", txn, fn, NULL, privdata, value_reply,
                    2, argv);
}

int state_stream_save(struct store *st, const char *account, const char *txn,
                      const char *value, int ttl_s, state_done_fn *fn,
                      void *privdata)
{
    char key[STORE_KEY_MAX], ttl[24];
    const char *argv[5];
    int result;

    if (!value || !value[0] || ttl_s <= 0)
        return PARLEY_ERR_OTHER;
    result = stream_key(st, key, sizeof(key), account, txn);
    if (result != PARLEY_OK)
        return result;
    snprintf(ttl, sizeof(ttl), "%d", ttl_s);
    argv[0] = "SET";
    argv[1] = key;
    argv[2] = value;
    argv[3] = "EX";
    argv[4] = ttl;
    return req_send(st, "SET stream", txn, NULL, fn, privdata, done_reply,
                    5, argv);
}

int state_stream_forget(struct store *st, const char *account,
                        const char *txn)
{
    char key[STORE_KEY_MAX];
    const char *argv[2];
    int result;

    result = stream_key(st, key, sizeof(key), account, txn);
    if (result != PARLEY_OK)
        return result;
    argv[0] = "DEL";
    argv[1] = key;
    return req_send(st, "DEL stream", txn, NULL, NULL, NULL, done_reply, 2,
                    argv);
}
