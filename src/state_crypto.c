/*
 * The Matrix device's crypto store (state.h, "Matrix end-to-end
 * encryption"): Olm account and session pickles, inbound and outbound
 * Megolm sessions, who holds the outbound one, the Megolm replay marks
 * and the device lists of the people the bot talks to.  The values are
 * opaque here: pickles come encrypted from matrix_crypto.h, device keys
 * as the JSON /keys/query returned.  Writes that must not be torn (an
 * inbound session and the account that lost a one-time key to it; a
 * rotation) go in one MULTI.
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

struct crypto_request *crypto_request_new(const char *what,
                                          const char *label, void *privdata)
{
    struct crypto_request *req = calloc(1, sizeof(*req));

    if (!req)
        return NULL;
    req->what = what;
    req->privdata = privdata;
    state_label(req->label, sizeof(req->label), label);
    return req;
}

/* Send argv with cb; on failure the request is freed and no callback
 * runs (state.h's contract). */
int crypto_request_send(struct store *st, struct crypto_request *req,
                        store_reply_fn *cb, int argc, const char **argv)
{
    int result;

    if (!store_is_up(st)) {
        free(req);
        return PARLEY_ERR_STATE;
    }
    result = store_command_argv(st, cb, req, argc, argv, NULL);
    if (result)
        free(req);
    return result;
}

int crypto_request_multi(struct store *st, struct crypto_request *req,
                         store_reply_fn *cb, const struct state_cmd *cmds,
                         size_t n)
{
    int result;

    if (!store_is_up(st)) {
        free(req);
        return PARLEY_ERR_STATE;
    }
    result = state_send_multi(st, cmds, n, cb, req);
    if (result)
        free(req);
    return result;
}

/* Status of a reply for a request whose callback may be NULL. */
int crypto_request_status(struct crypto_request *req, const redisReply *rep,
                          int has_fn)
{
    return has_fn ? state_reply_status(rep, req->what, req->label) :
                    state_reply_code(rep);
}

/* ---- replies ------------------------------------------------------------- */

void crypto_done_replied(struct store *st, redisReply *rep, void *privdata)
{
    struct crypto_request *req = privdata;
    int result = crypto_request_status(req, rep, req->done_fn != NULL);

    (void)st;
    /* EXEC answers an array whose elements may be errors (WRONGTYPE). */
    if (!result && rep->type == REDIS_REPLY_ARRAY)
        for (size_t i = 0; i < rep->elements && !result; i++)
            result = crypto_request_status(req, rep->element[i],
                                    req->done_fn != NULL);
    if (!result && rep->type == REDIS_REPLY_NIL)
        result = PARLEY_ERR_OTHER;      /* EXEC aborted */
    if (req->done_fn)
        req->done_fn(result, req->privdata);
    else if (result)
        log_debug("crypto %s %s failed: %s", req->what, req->label,
                  parley_status_name(result));
    free(req);
}

static void value_replied(struct store *st, redisReply *rep, void *privdata)
{
    struct crypto_request *req = privdata;
    int result = crypto_request_status(req, rep, 1);
    const char *value = NULL;

    (void)st;
    if (!result && rep->type == REDIS_REPLY_STRING)
        value = rep->str;
    else if (!result && rep->type != REDIS_REPLY_NIL)
        result = PARLEY_ERR_PROTOCOL;
    req->value_fn(result, value, req->privdata);
    free(req);
}

void crypto_pairs_replied(struct store *st, redisReply *rep, void *privdata)
{
    struct crypto_request *req = privdata;
    int result = crypto_request_status(req, rep, 1);
    struct state_pair *pairs = NULL;
    size_t n = 0;

    (void)st;
    if (!result && rep->type != REDIS_REPLY_ARRAY)
        result = PARLEY_ERR_PROTOCOL;
    if (!result && rep->elements >= 2) {
        pairs = calloc(rep->elements / 2, sizeof(*pairs));
        if (!pairs)
            result = PARLEY_ERR_OOM;
    }
    for (size_t i = 0; !result && i + 1 < rep->elements; i += 2) {
        const redisReply *k = rep->element[i], *v = rep->element[i + 1];

        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        pairs[n].name = k->str;
        pairs[n].value = v->str;
        n++;
    }
    req->pairs_fn(result, result ? NULL : pairs, result ? 0 : n,
                  req->privdata);
    free(pairs);
    free(req);
}

void crypto_list_deliver(struct crypto_request *req, const redisReply *rep,
                         int keep_holes)
{
    int result = crypto_request_status(req, rep, 1);
    const char **items = NULL;
    size_t n = 0;

    if (!result && rep->type != REDIS_REPLY_ARRAY)
        result = PARLEY_ERR_PROTOCOL;
    if (!result && rep->elements) {
        items = calloc(rep->elements, sizeof(*items));
        if (!items)
            result = PARLEY_ERR_OOM;
    }
    for (size_t i = 0; !result && i < rep->elements; i++) {
        if (rep->element[i]->type == REDIS_REPLY_STRING)
            items[keep_holes ? i : n] = rep->element[i]->str;
        if (keep_holes || rep->element[i]->type == REDIS_REPLY_STRING)
            n++;
    }
    req->list_fn(result, result ? NULL : items, result ? 0 : n,
                 req->privdata);
    free(items);
    free(req);
}

static void list_replied(struct store *st, redisReply *rep, void *privdata)
{
    (void)st;
    crypto_list_deliver(privdata, rep, 0);
}

static void megolm_in_replied(struct store *st, redisReply *rep,
                              void *privdata)
{
    struct crypto_request *req = privdata;
    int result = crypto_request_status(req, rep, 1);
    struct state_megolm_in s = { NULL, NULL, NULL };

    (void)st;
    if (!result && rep->type != REDIS_REPLY_ARRAY)
        result = PARLEY_ERR_PROTOCOL;
    if (!result) {
        s.pickle = state_hash_field(rep, "pickle");
        s.sender_key = state_hash_field(rep, "sender_key");
        s.sender_ed25519 = state_hash_field(rep, "sender_ed25519");
    }
    /* A hash without a pickle or sender key is not a session. */
    req->in_fn(result, !result && s.pickle && s.sender_key ? &s : NULL,
               req->privdata);
    free(req);
}

static void megolm_out_replied(struct store *st, redisReply *rep,
                               void *privdata)
{
    struct crypto_request *req = privdata;
    int result = crypto_request_status(req, rep, 1);
    struct state_megolm_out s = { NULL, 0 };

    (void)st;
    if (!result && rep->type != REDIS_REPLY_ARRAY)
        result = PARLEY_ERR_PROTOCOL;
    if (!result) {
        s.pickle = state_hash_field(rep, "pickle");
        s.created_ms = state_parse_ll(state_hash_field(rep, "created_ms"));
    }
    req->out_fn(result, !result && s.pickle ? &s : NULL, req->privdata);
    free(req);
}

static void claim_replied(struct store *st, redisReply *rep, void *privdata)
{
    struct crypto_request *req = privdata;
    int result = crypto_request_status(req, rep, 1);
    int fresh = 0;

    (void)st;
    if (!result && rep->type != REDIS_REPLY_INTEGER)
        result = PARLEY_ERR_PROTOCOL;
    if (!result)
        fresh = rep->integer == 1;
    req->claim_fn(result, fresh, req->privdata);
    free(req);
}

/* ---- account ------------------------------------------------------------- */

int state_crypto_account_load(struct store *st, const char *account,
                              state_value_fn *fn, void *privdata)
{
    char key[STORE_KEY_MAX];
    const char *argv[] = { "GET", key };
    struct crypto_request *req;
    int result;

    if (!account || !fn)
        return PARLEY_ERR_OTHER;
    result = store_key(st, key, sizeof(key), "crypto:%s:account", account);
    if (result)
        return result;
    req = crypto_request_new("GET crypto account", account, privdata);
    if (!req)
        return PARLEY_ERR_OOM;
    req->value_fn = fn;
    return crypto_request_send(st, req, value_replied, 2, argv);
}

int state_crypto_account_save(struct store *st, const char *account,
                              const char *pickle, state_done_fn *fn,
                              void *privdata)
{
    char key[STORE_KEY_MAX];
    const char *argv[] = { "SET", key, pickle };
    struct crypto_request *req;
    int result;

    if (!account || !pickle)
        return PARLEY_ERR_OTHER;
    result = store_key(st, key, sizeof(key), "crypto:%s:account", account);
    if (result)
        return result;
    req = crypto_request_new("SET crypto account", account, privdata);
    if (!req)
        return PARLEY_ERR_OOM;
    req->done_fn = fn;
    return crypto_request_send(st, req, crypto_done_replied, 3, argv);
}

/* ---- Olm sessions -------------------------------------------------------- */

int state_crypto_olm_load(struct store *st, const char *account,
                          const char *curve_key, state_pairs_fn *fn,
                          void *privdata)
{
    char key[STORE_KEY_MAX];
    const char *argv[] = { "HGETALL", key };
    struct crypto_request *req;
    int result;

    if (!account || !curve_key || !fn)
        return PARLEY_ERR_OTHER;
    result = store_key(st, key, sizeof(key), "crypto:%s:olm:%s", account,
                       curve_key);
    if (result)
        return result;
    req = crypto_request_new("HGETALL olm", curve_key, privdata);
    if (!req)
        return PARLEY_ERR_OOM;
    req->pairs_fn = fn;
    return crypto_request_send(st, req, crypto_pairs_replied, 2, argv);
}

int state_crypto_olm_save(struct store *st, const char *account,
                          const char *curve_key, const char *session_id,
                          const char *pickle, const char *account_pickle,
                          state_done_fn *fn, void *privdata)
{
    char key[STORE_KEY_MAX], akey[STORE_KEY_MAX];
    const char *hset[] = { "HSET", key, session_id, pickle };
    const char *set[] = { "SET", akey, account_pickle };
    struct state_cmd cmds[] = { { 4, hset }, { 3, set } };
    struct crypto_request *req;
    int result;

    if (!account || !curve_key || !session_id || !pickle)
        return PARLEY_ERR_OTHER;
    result = store_key(st, key, sizeof(key), "crypto:%s:olm:%s", account,
                       curve_key);
    if (!result)
        result = store_key(st, akey, sizeof(akey), "crypto:%s:account",
                           account);
    if (result)
        return result;
    req = crypto_request_new("HSET olm", curve_key, privdata);
    if (!req)
        return PARLEY_ERR_OOM;
    req->done_fn = fn;
    if (!account_pickle)
        return crypto_request_send(st, req, crypto_done_replied, 4, hset);
    return crypto_request_multi(st, req, crypto_done_replied, cmds, 2);
}

/* ---- Megolm -------------------------------------------------------------- */

int state_crypto_megolm_in_load(struct store *st, const char *account,
                                const char *room_id, const char *session_id,
                                state_megolm_in_fn *fn, void *privdata)
{
    char key[STORE_KEY_MAX];
    const char *argv[] = { "HGETALL", key };
    struct crypto_request *req;
    int result;

    if (!account || !room_id || !session_id || !fn)
        return PARLEY_ERR_OTHER;
    result = store_key(st, key, sizeof(key), "crypto:%s:megolm_in:%s:%s",
                       account, room_id, session_id);
    if (result)
        return result;
    req = crypto_request_new("HGETALL megolm_in", session_id, privdata);
    if (!req)
        return PARLEY_ERR_OOM;
    req->in_fn = fn;
    return crypto_request_send(st, req, megolm_in_replied, 2, argv);
}

int state_crypto_megolm_in_save(struct store *st, const char *account,
                                const char *room_id, const char *session_id,
                                const struct state_megolm_in *s,
                                state_done_fn *fn, void *privdata)
{
    char key[STORE_KEY_MAX];
    const char *argv[8];
    struct crypto_request *req;
    int argc = 0;
    int result;

    if (!account || !room_id || !session_id || !s || !s->pickle ||
        !s->sender_key)
        return PARLEY_ERR_OTHER;
    result = store_key(st, key, sizeof(key), "crypto:%s:megolm_in:%s:%s",
                       account, room_id, session_id);
    if (result)
        return result;
    argv[argc++] = "HSET";
    argv[argc++] = key;
    argv[argc++] = "pickle";
    argv[argc++] = s->pickle;
    argv[argc++] = "sender_key";
    argv[argc++] = s->sender_key;
    if (s->sender_ed25519) {
        argv[argc++] = "sender_ed25519";
        argv[argc++] = s->sender_ed25519;
    }
    req = crypto_request_new("HSET megolm_in", session_id, privdata);
    if (!req)
        return PARLEY_ERR_OOM;
    req->done_fn = fn;
    return crypto_request_send(st, req, crypto_done_replied, argc, argv);
}

int state_crypto_megolm_out_load(struct store *st, const char *account,
                                 const char *room_id,
                                 state_megolm_out_fn *fn, void *privdata)
{
    char key[STORE_KEY_MAX];
    const char *argv[] = { "HGETALL", key };
    struct crypto_request *req;
    int result;

    if (!account || !room_id || !fn)
        return PARLEY_ERR_OTHER;
    result = store_key(st, key, sizeof(key), "crypto:%s:megolm_out:%s",
                       account, room_id);
    if (result)
        return result;
    req = crypto_request_new("HGETALL megolm_out", room_id, privdata);
    if (!req)
        return PARLEY_ERR_OOM;
    req->out_fn = fn;
    return crypto_request_send(st, req, megolm_out_replied, 2, argv);
}

int state_crypto_megolm_out_save(struct store *st, const char *account,
                                 const char *room_id,
                                 const struct state_megolm_out *s,
                                 state_done_fn *fn, void *privdata)
{
    char key[STORE_KEY_MAX], created[24];
    const char *argv[] = { "HSET", key, "pickle", NULL, "created_ms",
                           created };
    struct crypto_request *req;
    int result;

    if (!account || !room_id || !s || !s->pickle)
        return PARLEY_ERR_OTHER;
    result = store_key(st, key, sizeof(key), "crypto:%s:megolm_out:%s",
                       account, room_id);
    if (result)
        return result;
    argv[3] = s->pickle;
    snprintf(created, sizeof(created), "%lld", s->created_ms);
    req = crypto_request_new("HSET megolm_out", room_id, privdata);
    if (!req)
        return PARLEY_ERR_OOM;
    req->done_fn = fn;
    return crypto_request_send(st, req, crypto_done_replied, 6, argv);
}

int state_crypto_megolm_out_discard(struct store *st, const char *account,
                                    const char *room_id, state_done_fn *fn,
                                    void *privdata)
{
    char key[STORE_KEY_MAX], shared[STORE_KEY_MAX];
    const char *del[] = { "DEL", key, shared };
    struct crypto_request *req;
    int result;

    if (!account || !room_id)
        return PARLEY_ERR_OTHER;
    result = store_key(st, key, sizeof(key), "crypto:%s:megolm_out:%s",
                       account, room_id);
    if (!result)
        result = store_key(st, shared, sizeof(shared),
                           "crypto:%s:megolm_shared:%s", account, room_id);
    if (result)
        return result;
    req = crypto_request_new("DEL megolm_out", room_id, privdata);
    if (!req)
        return PARLEY_ERR_OOM;
    req->done_fn = fn;
    /* One DEL of both keys is atomic: a rotation never leaves a share
     * list that belongs to no session, or a session with an old list. */
    return crypto_request_send(st, req, crypto_done_replied, 3, del);
}

int state_crypto_megolm_shared_load(struct store *st, const char *account,
                                    const char *room_id, state_list_fn *fn,
                                    void *privdata)
{
    char key[STORE_KEY_MAX];
    const char *argv[] = { "SMEMBERS", key };
    struct crypto_request *req;
    int result;

    if (!account || !room_id || !fn)
        return PARLEY_ERR_OTHER;
    result = store_key(st, key, sizeof(key), "crypto:%s:megolm_shared:%s",
                       account, room_id);
    if (result)
        return result;
    req = crypto_request_new("SMEMBERS megolm_shared", room_id, privdata);
    if (!req)
        return PARLEY_ERR_OOM;
    req->list_fn = fn;
    return crypto_request_send(st, req, list_replied, 2, argv);
}

/* "<cmd> <key> items..." for n items; argv malloc'd (caller frees). */
const char **crypto_batch_argv(const char *cmd, const char *key,
                               const char *const *items, size_t n)
{
    const char **argv;

    if (!items || n == 0 || n > CRYPTO_BATCH_MAX)
        return NULL;
    argv = calloc(n + 2, sizeof(*argv));
    if (!argv)
        return NULL;
    argv[0] = cmd;
    argv[1] = key;
    for (size_t i = 0; i < n; i++) {
        if (!items[i]) {
            free(argv);
            return NULL;
        }
        argv[i + 2] = items[i];
    }
    return argv;
}

int state_crypto_megolm_shared_add(struct store *st, const char *account,
                                   const char *room_id,
                                   const char *const *holders, size_t n,
                                   state_done_fn *fn, void *privdata)
{
    char key[STORE_KEY_MAX];
    const char **argv;
    struct crypto_request *req;
    int result;

    if (!account || !room_id)
        return PARLEY_ERR_OTHER;
    result = store_key(st, key, sizeof(key), "crypto:%s:megolm_shared:%s",
                       account, room_id);
    if (result)
        return result;
    argv = crypto_batch_argv("SADD", key, holders, n);
    if (!argv)
        return PARLEY_ERR_OTHER;
    req = crypto_request_new("SADD megolm_shared", room_id, privdata);
    if (!req) {
        free(argv);
        return PARLEY_ERR_OOM;
    }
    req->done_fn = fn;
    result = crypto_request_send(st, req, crypto_done_replied, (int)n + 2,
                                 argv);
    free(argv);
    return result;
}

/* HGET the index; unused -> HSET it to this event; same event -> 1. */
static const char index_claim_script[] =
    "local v = redis.call('HGET', KEYS[1], ARGV[1]) "
    "if not v then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) return 1 "
    "end "
    "if v == ARGV[2] then return 1 end "
    "return 0";

int state_crypto_megolm_index_claim(struct store *st, const char *account,
                                    const char *session_id,
                                    unsigned long index,
                                    const char *event_id,
                                    state_claim_fn *fn, void *privdata)
{
    char key[STORE_KEY_MAX], idx[24];
    const char *argv[] = { "EVAL", index_claim_script, "1", key, idx,
                           event_id };
    struct crypto_request *req;
    int result;

    if (!account || !session_id || !event_id || !fn)
        return PARLEY_ERR_OTHER;
    result = store_key(st, key, sizeof(key), "crypto:%s:megolm_idx:%s",
                       account, session_id);
    if (result)
        return result;
    snprintf(idx, sizeof(idx), "%lu", index);
    req = crypto_request_new("EVAL megolm_idx", event_id, privdata);
    if (!req)
        return PARLEY_ERR_OOM;
    req->claim_fn = fn;
    return crypto_request_send(st, req, claim_replied, 6, argv);
}
