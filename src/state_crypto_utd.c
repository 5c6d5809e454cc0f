/*
 * The crypto store's undecryptable room events (state.h, crypto:<account>:
 * utd): the Matrix adapter keeps an event no key decrypts until its key
 * comes or it has been explained, bounded per account.
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

/* ---- messages not decrypted yet ------------------------------------------ */

/* Keep the first record of an event (its first-seen time must not move
 * when a later sync meets it again), and no more than ARGV[3] of them. */
static const char utd_add_script[] =
    "if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end "
    "if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return -1 end "
    "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) "
    "return 1";

static void utd_added_replied(struct store *st, redisReply *rep,
                              void *privdata)
{
    struct crypto_request *req = privdata;
    int result = crypto_request_status(req, rep, 1);
    int fresh = 0;

    (void)st;
    if (!result && rep->type != REDIS_REPLY_INTEGER)
        result = PARLEY_ERR_PROTOCOL;
    if (!result && rep->integer < 0)
        result = PARLEY_ERR_TOO_LARGE;
    if (!result)
        fresh = rep->integer == 1;
    req->claim_fn(result, fresh, req->privdata);
    free(req);
}

int state_crypto_utd_add(struct store *st, const char *account,
                         const char *event_id, const char *record,
                         state_claim_fn *fn, void *privdata)
{
    char key[STORE_KEY_MAX], max[24];
    const char *argv[] = { "EVAL", utd_add_script, "1", key, event_id,
                           record, max };
    struct crypto_request *req;
    int result;

    if (!account || !event_id || !record || !fn)
        return PARLEY_ERR_OTHER;
    result = store_key(st, key, sizeof(key), "crypto:%s:utd", account);
    if (result)
        return result;
    snprintf(max, sizeof(max), "%d", STATE_UTD_MAX);
    req = crypto_request_new("EVAL utd", event_id, privdata);
    if (!req)
        return PARLEY_ERR_OOM;
    req->claim_fn = fn;
    return crypto_request_send(st, req, utd_added_replied, 7, argv);
}

int state_crypto_utd_load(struct store *st, const char *account,
                          state_pairs_fn *fn, void *privdata)
{
    char key[STORE_KEY_MAX];
    const char *argv[] = { "HGETALL", key };
    struct crypto_request *req;
    int result;

    if (!account || !fn)
        return PARLEY_ERR_OTHER;
    result = store_key(st, key, sizeof(key), "crypto:%s:utd", account);
    if (result)
        return result;
    req = crypto_request_new("HGETALL utd", account, privdata);
    if (!req)
        return PARLEY_ERR_OOM;
    req->pairs_fn = fn;
    return crypto_request_send(st, req, crypto_pairs_replied, 2, argv);
}

int state_crypto_utd_del(struct store *st, const char *account,
                         const char *event_id, state_done_fn *fn,
                         void *privdata)
{
    char key[STORE_KEY_MAX];
    const char *argv[] = { "HDEL", key, event_id };
    struct crypto_request *req;
    int result;

    if (!account || !event_id)
        return PARLEY_ERR_OTHER;
    result = store_key(st, key, sizeof(key), "crypto:%s:utd", account);
    if (result)
        return result;
    req = crypto_request_new("HDEL utd", event_id, privdata);
    if (!req)
        return PARLEY_ERR_OOM;
    req->done_fn = fn;
    return crypto_request_send(st, req, crypto_done_replied, 3, argv);
}

