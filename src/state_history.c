/*
 * A room's history in Redis (state.h): the list ctx:<room> of JSON turns
 * (context.h encodes, decodes and trims them), loaded whole, appended a
 * (question, answer) pair at a time, and reset by !reset together with
 * the room's epoch, so that answers still in flight from before a reset
 * do not bring the old conversation back.  Room keys are arbitrary bytes
 * (except NUL), so every command goes out in argv form.  A bad entry in
 * Redis costs that entry (skipped with a warning), never the room's whole
 * history.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "config.h"
#include "context.h"
#include "log.h"
#include "state.h"
#include "state_private.h"
#include "status.h"
#include "store.h"

/* Turns per append: a (question, answer) pair is two; the cap only keeps
 * the argument count (an int, eight fixed arguments first) far from
 * overflow. */
#define STATE_HISTORY_APPEND_MAX 4096

struct history_request {
    state_history_fn *load_fn;
    state_done_fn *done_fn;
    void *privdata;
    char label[STATE_LABEL_MAX + 1];
};

static struct history_request *history_request_new(const char *room_key,
                                                   void *privdata)
{
    struct history_request *req = calloc(1, sizeof(*req));

    if (!req)
        return NULL;
    req->privdata = privdata;
    state_label(req->label, sizeof(req->label), room_key);
    return req;
}

static int history_role_valid(const char *role)
{
    return role && (strcmp(role, "user") == 0 ||
                    strcmp(role, "assistant") == 0);
}

/* ---- load --------------------------------------------------------------- */

static void history_loaded(struct store *st, redisReply *reply,
                           void *privdata)
{
    struct history_request *req = privdata;
    struct history *h = NULL;
    int result = state_reply_status(reply, "LRANGE ctx", req->label);

    (void)st;
    if (result)
        goto done;
    if (reply->type != REDIS_REPLY_ARRAY) {
        log_warn("context %s: LRANGE: unexpected reply type %d",
                 req->label, reply->type);
        result = PARLEY_ERR_PROTOCOL;
        goto done;
    }
    h = calloc(1, sizeof(*h));
    if (!h)
        goto oom;
    if (reply->elements > 0) {
        h->turns = calloc(reply->elements, sizeof(*h->turns));
        if (!h->turns)
            goto oom;
    }
    for (size_t i = 0; i < reply->elements; i++) {
        const redisReply *e = reply->element[i];
        int status;

        if (e->type != REDIS_REPLY_STRING) {
            log_warn("context %s: skipping stored turn %zu: not a string",
                     req->label, i);
            continue;
        }
        status = context_turn_from_json(e->str, e->len, &h->turns[h->n]);
        if (status == PARLEY_ERR_OOM)
            goto oom;
        if (status) {
            log_warn("context %s: skipping stored turn %zu: %s",
                     req->label, i, status == PARLEY_ERR_TOO_LARGE
                                    ? "over CONTEXT_TURN_MAX"
                                    : "malformed JSON turn");
            continue;
        }
        h->n++;
    }
    goto done;
oom:
    context_history_free(h);
    h = NULL;
    result = PARLEY_ERR_OOM;
done:
    req->load_fn(result, h, req->privdata);
    free(req);
}

int state_history_load(struct store *st, const char *room_key,
                       const struct config_context *cfg,
                       state_history_fn *fn, void *privdata)
{
    char key[STORE_KEY_MAX], ttl[24];
    const char *lrange[] = { "LRANGE", key, "0", "-1" };
    const char *expire[] = { "EXPIRE", key, ttl };
    struct history_request *req;
    int result;

    if (!room_key || !fn)
        return PARLEY_ERR_OTHER;
    result = store_key(st, key, sizeof(key), "ctx:%s", room_key);
    if (result)
        return result;
    if (!store_is_up(st))
        return PARLEY_ERR_STATE;
    req = history_request_new(room_key, privdata);
    if (!req)
        return PARLEY_ERR_OOM;
    req->load_fn = fn;
    result = store_command_argv(st, history_loaded, req, 4, lrange, NULL);
    if (result) {
        free(req);
        return result;
    }
    if (cfg && cfg->ttl_s > 0) {
        /* Best effort: a room that is only read keeps its history.  Sent
         * after LRANGE, so a command issued from the load callback sees
         * the new TTL. */
        snprintf(ttl, sizeof(ttl), "%d", cfg->ttl_s);
        if (state_send_forget(st, "EXPIRE ctx", 3, expire))
            log_debug("context %s: could not refresh TTL", req->label);
    }
    return PARLEY_OK;
}

/* ---- append ------------------------------------------------------------- */

/*
 * KEYS[1] ctx:<room>, KEYS[2] room:<room>; ARGV[1] the expected epoch
 * ("-1": no check), ARGV[2] max_turns, ARGV[3] ttl (0 skips either),
 * ARGV[4..] the JSON turns.  Returns 1, or 0 when the epoch moved (a
 * !reset since the caller read it): then nothing is written.  The epoch
 * is compared as the string HINCRBY wrote, a missing field being "0".
 * RPUSH goes one turn at a time because unpack() has a stack limit; the
 * script is atomic all the same.
 */
static const char history_append_script[] =
    "if ARGV[1] ~= '-1' then "
    "local e = redis.call('HGET', KEYS[2], 'epoch') or '0' "
    "if e ~= ARGV[1] then return 0 end end "
    "for i = 4, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[i]) end "
    "if tonumber(ARGV[2]) > 0 then "
    "redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1) end "
    "if tonumber(ARGV[3]) > 0 then "
    "redis.call('EXPIRE', KEYS[1], ARGV[3]) end return 1";

static void history_appended(struct store *st, redisReply *reply,
                             void *privdata)
{
    struct history_request *req = privdata;
    int result = req->done_fn ?
                 state_reply_status(reply, "append ctx", req->label) :
                 state_reply_code(reply);

    (void)st;
    if (!result && reply->type != REDIS_REPLY_INTEGER)
        result = PARLEY_ERR_PROTOCOL;
    else if (!result && reply->integer == 0) {
        log_debug("context %s: reset since the question, answer not "
                  "stored", req->label);
        result = PARLEY_ERR_STATE;
    }
    if (req->done_fn)
        req->done_fn(result, req->privdata);
    else if (result)
        log_debug("context %s: append failed: %s", req->label,
                  parley_status_name(result));
    free(req);
}

int state_history_append(struct store *st, const char *room_key,
                         const struct turn *turns, size_t n,
                         const struct config_context *cfg, long long epoch,
                         state_done_fn *fn, void *privdata)
{
    char ctx[STORE_KEY_MAX], room[STORE_KEY_MAX];
    char ep[24], max[24], ttl[24];
    const char **argv = NULL;
    char **json = NULL;
    struct history_request *req = NULL;
    size_t built = 0;
    int result;

    if (!turns || n == 0 || n > STATE_HISTORY_APPEND_MAX || !cfg ||
        !room_key)
        return PARLEY_ERR_OTHER;
    for (size_t i = 0; i < n; i++)
        if (!history_role_valid(turns[i].role))
            return PARLEY_ERR_OTHER;
    result = store_key(st, ctx, sizeof(ctx), "ctx:%s", room_key);
    if (!result)
        result = store_key(st, room, sizeof(room), "room:%s", room_key);
    if (result)
        return result;
    if (!store_is_up(st))
        return PARLEY_ERR_STATE;

    result = PARLEY_ERR_OOM;
    json = calloc(n, sizeof(*json));
    argv = calloc(n + 8, sizeof(*argv));
    req = history_request_new(room_key, privdata);
    if (!json || !argv || !req)
        goto out;
    req->done_fn = fn;
    for (built = 0; built < n; built++) {
        json[built] = context_turn_to_json(&turns[built]);
        if (!json[built])
            goto out;
    }
    snprintf(ep, sizeof(ep), "%lld", epoch >= 0 ? epoch : -1LL);
    snprintf(max, sizeof(max), "%d", cfg->max_turns > 0 ? cfg->max_turns : 0);
    snprintf(ttl, sizeof(ttl), "%d", cfg->ttl_s > 0 ? cfg->ttl_s : 0);
    argv[0] = "EVAL";
    argv[1] = history_append_script;
    argv[2] = "2";
    argv[3] = ctx;
    argv[4] = room;
    argv[5] = ep;
    argv[6] = max;
    argv[7] = ttl;
    for (size_t i = 0; i < n; i++)
        argv[8 + i] = json[i];
    result = store_command_argv(st, history_appended, req, (int)(n + 8),
                                argv, NULL);
    if (!result)
        req = NULL;     /* owned by the callback now */
out:
    for (size_t i = 0; json && i < built; i++)
        free(json[i]);
    free(json);
    free(argv);
    free(req);
    return result;
}

/* ---- reset -------------------------------------------------------------- */

static void history_reset_done(struct store *st, redisReply *reply,
                               void *privdata)
{
    struct history_request *req = privdata;
    int result = req->done_fn ?
                 state_reply_status(reply, "reset (EXEC)", req->label) :
                 state_reply_code(reply);

    (void)st;
    if (!result && reply->type != REDIS_REPLY_ARRAY) {
        log_warn("context %s: reset: transaction aborted", req->label);
        result = PARLEY_ERR_OTHER;
    }
    for (size_t i = 0; !result && i < reply->elements; i++)
        result = req->done_fn ?
                 state_reply_status(reply->element[i], "reset",
                                    req->label) :
                 state_reply_code(reply->element[i]);
    if (req->done_fn)
        req->done_fn(result, req->privdata);
    else if (result)
        log_debug("context %s: reset failed: %s", req->label,
                  parley_status_name(result));
    free(req);
}

int state_history_reset(struct store *st, const char *room_key,
                        state_done_fn *fn, void *privdata)
{
    char ctx[STORE_KEY_MAX], room[STORE_KEY_MAX];
    const char *del[] = { "DEL", ctx };
    const char *bump[] = { "HINCRBY", room, "epoch", "1" };
    const struct state_cmd cmds[] = { { 2, del }, { 4, bump } };
    struct history_request *req;
    int result;

    if (!room_key)
        return PARLEY_ERR_OTHER;
    result = store_key(st, ctx, sizeof(ctx), "ctx:%s", room_key);
    if (!result)
        result = store_key(st, room, sizeof(room), "room:%s", room_key);
    if (result)
        return result;
    if (!store_is_up(st))
        return PARLEY_ERR_STATE;
    req = history_request_new(room_key, privdata);
    if (!req)
        return PARLEY_ERR_OOM;
    req->done_fn = fn;
    result = state_send_multi(st, cmds, 2, history_reset_done, req);
    if (result)
        free(req);
    return result;
}
