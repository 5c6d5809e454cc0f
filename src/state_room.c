/*
 * Per-room settings and per-user usage (state.h): the room:<room> hash
 * (model, system, greeting, and the history epoch that !reset bumps) and
 * usage:<day>:<user> counters, which !stats reads and the daily token
 * budget checks.  Usage writes are fire and forget: a lost increment
 * costs a little accuracy, never an answer.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis/hiredis.h>

#include "log.h"
#include "state.h"
#include "state_private.h"
#include "status.h"
#include "store.h"

/* ---- room settings ------------------------------------------------------ */

static const char *const room_field_names[] = { "model", "system",
                                                "greeting" };

struct room_request {
    state_room_fn *room_fn;
    state_usage_fn *usage_fn;
    state_done_fn *done_fn;
    void *privdata;
    char label[STATE_LABEL_MAX + 1];
};

static struct room_request *room_request_new(void *privdata,
                                             const char *label)
{
    struct room_request *req = calloc(1, sizeof(*req));

    if (!req)
        return NULL;
    req->privdata = privdata;
    state_label(req->label, sizeof(req->label), label);
    return req;
}

static void room_loaded(struct store *st, redisReply *rep, void *privdata)
{
    struct room_request *req = privdata;
    struct room_settings rs = { NULL, NULL, -1, 0 };
    int result = state_reply_status(rep, "HGETALL room", req->label);
    const char *greeting;

    (void)st;
    if (!result && rep->type != REDIS_REPLY_ARRAY)
        result = PARLEY_ERR_PROTOCOL;
    if (!result) {
        rs.model = state_hash_field(rep, "model");
        rs.system = state_hash_field(rep, "system");
        greeting = state_hash_field(rep, "greeting");
        /* "off" turns greetings off; any other stored value keeps them
         * on, as before the field had a type. */
        if (greeting)
            rs.greeting = strcmp(greeting, "off") != 0;
        rs.epoch = state_parse_ll(state_hash_field(rep, "epoch"));
    }
    req->room_fn(result, result ? NULL : &rs, req->privdata);
    free(req);
}

int state_room_load(struct store *st, const char *room_key,
                    state_room_fn *fn, void *privdata)
{
    char key[STORE_KEY_MAX];
    const char *argv[] = { "HGETALL", key };
    struct room_request *req;
    int result;

    if (!room_key || !fn)
        return PARLEY_ERR_OTHER;
    result = store_key(st, key, sizeof(key), "room:%s", room_key);
    if (result)
        return result;
    if (!store_is_up(st))
        return PARLEY_ERR_STATE;
    req = room_request_new(privdata, room_key);
    if (!req)
        return PARLEY_ERR_OOM;
    req->room_fn = fn;
    result = store_command_argv(st, room_loaded, req, 2, argv, NULL);
    if (result)
        free(req);
    return result;
}

static void room_saved(struct store *st, redisReply *rep, void *privdata)
{
    struct room_request *req = privdata;
    int result = req->done_fn ?
                 state_reply_status(rep, "room write", req->label) :
                 state_reply_code(rep);

    (void)st;
    if (req->done_fn)
        req->done_fn(result, req->privdata);
    else if (result)
        log_debug("room %s: write failed: %s", req->label,
                  parley_status_name(result));
    free(req);
}

int state_room_set(struct store *st, const char *room_key,
                   enum room_field field, const char *value,
                   state_done_fn *fn, void *privdata)
{
    char key[STORE_KEY_MAX];
    const char *argv[4];
    struct room_request *req;
    int result;

    if (!room_key || (unsigned)field >= sizeof(room_field_names) /
                                        sizeof(room_field_names[0]))
        return PARLEY_ERR_OTHER;
    if (field == ROOM_FIELD_GREETING && value &&
        strcmp(value, "on") != 0 && strcmp(value, "off") != 0)
        return PARLEY_ERR_OTHER;
    result = store_key(st, key, sizeof(key), "room:%s", room_key);
    if (result)
        return result;
    if (!store_is_up(st))
        return PARLEY_ERR_STATE;
    req = room_request_new(privdata, room_key);
    if (!req)
        return PARLEY_ERR_OOM;
    req->done_fn = fn;
    argv[0] = value ? "HSET" : "HDEL";
    argv[1] = key;
    argv[2] = room_field_names[field];
    argv[3] = value;
    result = store_command_argv(st, room_saved, req, value ? 4 : 3, argv,
                                NULL);
    if (result)
        free(req);
    return result;
}

/* ---- usage -------------------------------------------------------------- */

/* usage:<UTC day of when>:<user> into key. */
static int usage_key(struct store *st, char *key, size_t len,
                     const char *user, time_t when)
{
    char day[16];
    struct tm tm;

    if (!user || !gmtime_r(&when, &tm) ||
        strftime(day, sizeof(day), "%Y-%m-%d", &tm) == 0)
        return PARLEY_ERR_OTHER;
    return store_key(st, key, len, "usage:%s:%s", day, user);
}

static void usage_loaded(struct store *st, redisReply *rep, void *privdata)
{
    struct room_request *req = privdata;
    struct usage u = { 0, 0, 0, 0 };
    int result = state_reply_status(rep, "HGETALL usage", req->label);

    (void)st;
    if (!result && rep->type != REDIS_REPLY_ARRAY)
        result = PARLEY_ERR_PROTOCOL;
    if (!result) {
        u.requests = state_parse_ll(state_hash_field(rep, "requests"));
        u.tokens_in = state_parse_ll(state_hash_field(rep, "tokens_in"));
        u.tokens_out = state_parse_ll(state_hash_field(rep, "tokens_out"));
        u.tokens = state_parse_ll(state_hash_field(rep, "tokens"));
    }
    req->usage_fn(result, result ? NULL : &u, req->privdata);
    free(req);
}

int state_usage_load(struct store *st, const char *user, time_t when,
                     state_usage_fn *fn, void *privdata)
{
    char key[STORE_KEY_MAX];
    const char *argv[] = { "HGETALL", key };
    struct room_request *req;
    int result;

    if (!fn)
        return PARLEY_ERR_OTHER;
    result = usage_key(st, key, sizeof(key), user, when);
    if (result)
        return result;
    if (!store_is_up(st))
        return PARLEY_ERR_STATE;
    req = room_request_new(privdata, user);
    if (!req)
        return PARLEY_ERR_OOM;
    req->usage_fn = fn;
    result = store_command_argv(st, usage_loaded, req, 2, argv, NULL);
    if (result)
        free(req);
    return result;
}

/* The four counters and the expiry in one command, so a reader never sees
 * requests counted without their tokens. */
static const char usage_add_script[] =
    "redis.call('HINCRBY', KEYS[1], 'requests', 1) "
    "redis.call('HINCRBY', KEYS[1], 'tokens_in', ARGV[1]) "
    "redis.call('HINCRBY', KEYS[1], 'tokens_out', ARGV[2]) "
    "redis.call('HINCRBY', KEYS[1], 'tokens', ARGV[3]) "
    "if tonumber(ARGV[4]) > 0 then "
    "redis.call('EXPIRE', KEYS[1], ARGV[4]) end return 1";

int state_usage_add(struct store *st, const char *user, time_t when,
                    long tokens_in, long tokens_out, int ttl_s)
{
    char key[STORE_KEY_MAX], in[24], out[24], total[24], ttl[24];
    const char *argv[] = { "EVAL", usage_add_script, "1", key, in, out,
                           total, ttl };
    long long tin = tokens_in > 0 ? tokens_in : 0;
    long long tout = tokens_out > 0 ? tokens_out : 0;
    int result;

    result = usage_key(st, key, sizeof(key), user, when);
    if (result)
        return result;
    snprintf(in, sizeof(in), "%lld", tin);
    snprintf(out, sizeof(out), "%lld", tout);
    snprintf(total, sizeof(total), "%lld", tin + tout);
    snprintf(ttl, sizeof(ttl), "%d", ttl_s > 0 ? ttl_s : 0);
    return state_send_forget(st, "usage add", 8, argv);
}
