/*
 * What sharing room keys reads from the crypto store (state.h): the
 * cached device lists of the people in encrypted rooms (one hash per
 * account, a user missing = stale or unknown), and for each device the
 * Olm session the bot sends with, so a share reuses it instead of
 * spending a one-time key.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "log.h"
#include "state.h"
#include "state_crypto_private.h"
#include "state_private.h"
#include "status.h"
#include "store.h"

/* ---- device lists, one hash per account ---------------------------------- */

/* HMGET and the Lua below answer arrays with nil holes; values[i] is
 * NULL where the field (or session) is missing. */
static void values_replied(struct store *st, redisReply *rep, void *privdata)
{
    (void)st;
    crypto_list_deliver(privdata, rep, 1);
}

int state_crypto_devlists_load(struct store *st, const char *account,
                               const char *const *users, size_t n,
                               state_list_fn *fn, void *privdata)
{
    char key[STORE_KEY_MAX];
    const char **argv;
    struct crypto_request *req;
    int result;

    if (!account || !fn)
        return PARLEY_ERR_OTHER;
    result = store_key(st, key, sizeof(key), "crypto:%s:devlists", account);
    if (result)
        return result;
    argv = crypto_batch_argv("HMGET", key, users, n);
    if (!argv)
        return PARLEY_ERR_OTHER;
    req = crypto_request_new("HMGET devlists", account, privdata);
    if (!req) {
        free(argv);
        return PARLEY_ERR_OOM;
    }
    req->list_fn = fn;
    result = crypto_request_send(st, req, values_replied, (int)n + 2, argv);
    free(argv);
    return result;
}

int state_crypto_devlists_save(struct store *st, const char *account,
                               const char *user_id, const char *devices,
                               state_done_fn *fn, void *privdata)
{
    char key[STORE_KEY_MAX];
    const char *argv[] = { "HSET", key, user_id, devices };
    struct crypto_request *req;
    int result;

    if (!account || !user_id || !devices)
        return PARLEY_ERR_OTHER;
    result = store_key(st, key, sizeof(key), "crypto:%s:devlists", account);
    if (result)
        return result;
    req = crypto_request_new("HSET devlists", user_id, privdata);
    if (!req)
        return PARLEY_ERR_OOM;
    req->done_fn = fn;
    return crypto_request_send(st, req, crypto_done_replied, 4, argv);
}

int state_crypto_devlists_stale(struct store *st, const char *account,
                                const char *const *users, size_t n,
                                state_done_fn *fn, void *privdata)
{
    char key[STORE_KEY_MAX];
    const char *del[] = { "DEL", key };
    const char **argv;
    struct crypto_request *req;
    int result;

    if (!account)
        return PARLEY_ERR_OTHER;
    result = store_key(st, key, sizeof(key), "crypto:%s:devlists", account);
    if (result)
        return result;
    argv = users ? crypto_batch_argv("HDEL", key, users, n) : del;
    if (!argv)
        return PARLEY_ERR_OTHER;
    req = crypto_request_new("HDEL devlists", account, privdata);
    if (req) {
        req->done_fn = fn;
        result = crypto_request_send(st, req, crypto_done_replied,
                              users ? (int)n + 2 : 2, argv);
    } else {
        result = PARLEY_ERR_OOM;
    }
    if (users)
        free(argv);
    return result;
}

/* ---- the Olm session used to send to a device -------------------------- */

/* For each identity key: the pickle of the session named by its _out
 * field, or nil.  One round trip for a whole share. */
static const char olm_out_script[] =
    "local r = {} "
    "for i, k in ipairs(KEYS) do "
    "  local sid = redis.call('HGET', k, '_out') "
    "  local p = false "
    "  if sid then p = redis.call('HGET', k, sid) end "
    "  r[i] = p "
    "end "
    "return r";

int state_crypto_olm_out_load(struct store *st, const char *account,
                              const char *const *curve_keys, size_t n,
                              state_list_fn *fn, void *privdata)
{
    char (*keys)[STORE_KEY_MAX] = NULL;
    const char **argv = NULL;
    char nkeys[24];
    struct crypto_request *req;
    int result = PARLEY_OK;

    if (!account || !curve_keys || !n || n > CRYPTO_BATCH_MAX || !fn)
        return PARLEY_ERR_OTHER;
    keys = calloc(n, sizeof(*keys));
    argv = calloc(n + 3, sizeof(*argv));
    if (!keys || !argv)
        result = PARLEY_ERR_OOM;
    for (size_t i = 0; !result && i < n; i++) {
        result = curve_keys[i] ? store_key(st, keys[i], sizeof(keys[i]),
                                           "crypto:%s:olm:%s", account,
                                           curve_keys[i]) :
                                 PARLEY_ERR_OTHER;
        argv[3 + i] = keys[i];
    }
    req = result ? NULL :
          crypto_request_new("EVAL olm _out", account, privdata);
    if (!result && !req)
        result = PARLEY_ERR_OOM;
    if (!result) {
        snprintf(nkeys, sizeof(nkeys), "%zu", n);
        argv[0] = "EVAL";
        argv[1] = olm_out_script;
        argv[2] = nkeys;
        req->list_fn = fn;
        result = crypto_request_send(st, req, values_replied, (int)n + 3, argv);
    }
    free(keys);
    free(argv);
    return result;
}

int state_crypto_olm_save_out(struct store *st, const char *account,
                              const char *curve_key, const char *session_id,
                              const char *pickle, state_done_fn *fn,
                              void *privdata)
{
    char key[STORE_KEY_MAX];
    const char *argv[] = { "HSET", key, session_id, pickle, "_out",
                           session_id };
    struct crypto_request *req;
    int result;

    if (!account || !curve_key || !session_id || !pickle)
        return PARLEY_ERR_OTHER;
    result = store_key(st, key, sizeof(key), "crypto:%s:olm:%s", account,
                       curve_key);
    if (result)
        return result;
    req = crypto_request_new("HSET olm _out", curve_key, privdata);
    if (!req)
        return PARLEY_ERR_OOM;
    req->done_fn = fn;
    return crypto_request_send(st, req, crypto_done_replied, 6, argv);
}

int state_crypto_olm_wedged(struct store *st, const char *account,
                            const char *curve_key)
{
    char key[STORE_KEY_MAX];
    const char *argv[] = { "HDEL", key, "_out", NULL };
    int result;

    if (!account || !curve_key)
        return PARLEY_ERR_OTHER;
    result = store_key(st, key, sizeof(key), "crypto:%s:olm:%s", account,
                       curve_key);
    if (result)
        return result;
    if (!store_is_up(st))
        return PARLEY_ERR_STATE;
    return state_send_forget(st, "HDEL olm _out", 3, argv);
}
