/*
 * Leases and fencing in Redis (state.h): lease:<platform>:<account> names
 * the instance that holds a platform connection, with a TTL it renews;
 * fence:<platform>:<account> counts acquisitions, so each holder gets a
 * token larger than every earlier one.  The writes that matter check
 * that token inside Redis (state_job.c, state_session.c through
 * state_fence_args), which is what stops a holder that was paused past
 * its lease (SIGSTOP, a long GC-like stall, a partition) from writing
 * over its successor: its local clock may lie, the counter in Redis does
 * not.  The per-process table of tokens held lives here too.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "log.h"
#include "state.h"
#include "state_private.h"
#include "status.h"
#include "store.h"

/*
 * Acquire: KEYS lease, fence; ARGV owner, ttl ms.  {1, token} when this
 * call took the lease, else {0, holder, pttl}.  The INCR happens only on
 * success, in the same script, so no two holders ever share a token.
 */
static const char lease_acquire_script[] =
    "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then "
    "return {1, redis.call('INCR', KEYS[2])} end "
    "return {0, redis.call('GET', KEYS[1]) or '', "
    "redis.call('PTTL', KEYS[1])}";

/* Renew: KEYS lease, fence; ARGV owner, token, ttl ms.  1 or 0. */
static const char lease_renew_script[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] and "
    "redis.call('GET', KEYS[2]) == ARGV[2] then "
    "redis.call('PEXPIRE', KEYS[1], ARGV[3]) return 1 end return 0";

/* Release: KEYS lease; ARGV owner.  Never deletes another's lease. */
static const char lease_release_script[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then "
    "return redis.call('DEL', KEYS[1]) end return 0";

/* ---- the per-process table ---------------------------------------------- */

struct fence {
    char *id;                   /* "<platform>\n<account>" */
    long long token;
};

static struct fence fences[STATE_FENCES_MAX];
static size_t n_fences;

/* "<platform>\n<account>": a newline is in neither (config names), so
 * the pair is unambiguous, and the scripts build the same string. */
static int fence_id(char *buf, size_t len, const char *platform,
                    const char *account)
{
    int n = snprintf(buf, len, "%s\n%s", platform ? platform : "",
                     account ? account : "");

    return n < 0 || (size_t)n >= len ? PARLEY_ERR_TOO_LARGE : PARLEY_OK;
}

static struct fence *fence_find(const char *id)
{
    for (size_t i = 0; i < n_fences; i++)
        if (strcmp(fences[i].id, id) == 0)
            return &fences[i];
    return NULL;
}

int state_fence_set(const char *platform, const char *account,
                    long long token)
{
    char id[STORE_KEY_MAX];
    struct fence *f;
    int result = fence_id(id, sizeof(id), platform, account);

    if (result)
        return result;
    f = fence_find(id);
    if (token <= 0) {
        if (f) {
            free(f->id);
            *f = fences[--n_fences];
        }
        return PARLEY_OK;
    }
    if (!f) {
        if (n_fences >= STATE_FENCES_MAX)
            return PARLEY_ERR_TOO_LARGE;
        f = &fences[n_fences];
        f->id = strdup(id);
        if (!f->id)
            return PARLEY_ERR_OOM;
        n_fences++;
    }
    f->token = token;
    return PARLEY_OK;
}

long long state_fence_get(const char *platform, const char *account)
{
    char id[STORE_KEY_MAX];
    struct fence *f;

    if (fence_id(id, sizeof(id), platform, account))
        return 0;
    f = fence_find(id);
    return f ? f->token : 0;
}

void state_fence_clear(void)
{
    for (size_t i = 0; i < n_fences; i++)
        free(fences[i].id);
    n_fences = 0;
}

size_t state_fence_count(void)
{
    return n_fences;
}

/* The fence key of an id "<platform>\n<account>". */
static int fence_key_of(struct store *st, const char *id, char *key,
                        size_t keylen)
{
    const char *nl = strchr(id, '\n');

    if (!nl)
        return PARLEY_ERR_OTHER;
    return store_key(st, key, keylen, "fence:%.*s:%s", (int)(nl - id), id,
                     nl + 1);
}

int state_fence_nth(struct store *st, size_t i, const char **id,
                    char *key, size_t keylen, char *token, size_t toklen)
{
    if (i >= n_fences)
        return PARLEY_ERR_OTHER;
    *id = fences[i].id;
    snprintf(token, toklen, "%lld", fences[i].token);
    return fence_key_of(st, fences[i].id, key, keylen);
}

int state_fence_args(struct store *st, const char *platform,
                     const char *account, char *key, size_t keylen,
                     char *token, size_t toklen)
{
    long long t = state_fence_get(platform, account);
    int result;

    if (t <= 0)
        return 0;
    result = store_key(st, key, keylen, "fence:%s:%s", platform, account);
    if (result)
        return -result;
    snprintf(token, toklen, "%lld", t);
    return 1;
}

/* ---- lease commands ------------------------------------------------------ */

struct lease_req {
    state_lease_fn *lease_fn;
    state_claim_fn *claim_fn;
    state_done_fn *done_fn;
    void *privdata;
    char label[STATE_LABEL_MAX + 1];
};

static int lease_keys(struct store *st, const char *platform,
                      const char *account, char *lease, char *fence)
{
    int result;

    if (!platform || !account)
        return PARLEY_ERR_OTHER;
    result = store_key(st, lease, STORE_KEY_MAX, "lease:%s:%s", platform,
                       account);
    if (!result && fence)
        result = store_key(st, fence, STORE_KEY_MAX, "fence:%s:%s",
                           platform, account);
    return result;
}

static struct lease_req *lease_req_new(const char *platform,
                                       const char *account, void *privdata)
{
    struct lease_req *q = calloc(1, sizeof(*q));
    char label[STATE_LABEL_MAX + 1];

    if (!q)
        return NULL;
    q->privdata = privdata;
    snprintf(label, sizeof(label), "%s:%s", platform, account);
    state_label(q->label, sizeof(q->label), label);
    return q;
}

/*
 * How every lease command starts: its keys (fence too when fence is not
 * NULL), a store that can take a command, then *q for the reply, NULL
 * when out of memory (lease_send then says so).  Returns the status of
 * the first two; *q is set only when they pass.
 */
static int lease_start(struct store *st, const char *platform,
                       const char *account, char *lease, char *fence,
                       void *privdata, struct lease_req **q)
{
    int result = lease_keys(st, platform, account, lease, fence);

    if (result)
        return result;
    if (!store_is_up(st))
        return PARLEY_ERR_STATE;
    *q = lease_req_new(platform, account, privdata);
    return PARLEY_OK;
}

static int lease_send(struct store *st, struct lease_req *q,
                      store_reply_fn *fn, int argc, const char **argv)
{
    int result;

    if (!q)
        return PARLEY_ERR_OOM;
    result = store_command_argv(st, fn, q, argc, argv, NULL);
    if (result)
        free(q);
    return result;
}

static long long reply_ll(const redisReply *r)
{
    if (r->type == REDIS_REPLY_INTEGER)
        return r->integer;
    if (r->type == REDIS_REPLY_STRING)
        return state_parse_ll(r->str);
    return 0;
}

static void acquire_replied(struct store *st, redisReply *rep, void *priv)
{
    struct lease_req *q = priv;
    int result = state_reply_status(rep, "lease acquire", q->label);
    long long token = 0, pttl = -1;
    const char *holder = NULL;
    int held = 0;

    (void)st;
    if (!result && (rep->type != REDIS_REPLY_ARRAY || rep->elements < 2 ||
                    rep->element[0]->type != REDIS_REPLY_INTEGER))
        result = PARLEY_ERR_PROTOCOL;
    if (!result && rep->element[0]->integer == 1) {
        held = 1;
        token = reply_ll(rep->element[1]);
        if (token <= 0)
            result = PARLEY_ERR_PROTOCOL;
    } else if (!result) {
        if (rep->element[1]->type == REDIS_REPLY_STRING &&
            rep->element[1]->str[0])
            holder = rep->element[1]->str;
        if (rep->elements > 2)
            pttl = reply_ll(rep->element[2]);
    }
    if (result)
        held = 0;
    q->lease_fn(result, held, token, holder, pttl, q->privdata);
    free(q);
}

int state_lease_acquire(struct store *st, const char *platform,
                        const char *account, const char *owner, int ttl_ms,
                        state_lease_fn *fn, void *privdata)
{
    char lease[STORE_KEY_MAX], fence[STORE_KEY_MAX], ttl[24];
    const char *argv[] = { "EVAL", lease_acquire_script, "2", lease, fence,
                           owner, ttl };
    struct lease_req *q;
    int result;

    if (!owner || !owner[0] || ttl_ms <= 0 || !fn)
        return PARLEY_ERR_OTHER;
    result = lease_start(st, platform, account, lease, fence, privdata, &q);
    if (result)
        return result;
    if (q)
        q->lease_fn = fn;
    snprintf(ttl, sizeof(ttl), "%d", ttl_ms);
    return lease_send(st, q, acquire_replied, 7, argv);
}

static void renew_replied(struct store *st, redisReply *rep, void *priv)
{
    struct lease_req *q = priv;
    int result = state_reply_status(rep, "lease renew", q->label);
    int fresh = 0;

    (void)st;
    if (!result && rep->type != REDIS_REPLY_INTEGER)
        result = PARLEY_ERR_PROTOCOL;
    if (!result)
        fresh = rep->integer == 1;
    if (q->claim_fn)
        q->claim_fn(result, fresh, q->privdata);
    free(q);
}

int state_lease_renew(struct store *st, const char *platform,
                      const char *account, const char *owner,
                      long long token, int ttl_ms, state_claim_fn *fn,
                      void *privdata)
{
    char lease[STORE_KEY_MAX], fence[STORE_KEY_MAX], ttl[24], tok[24];
    const char *argv[] = { "EVAL", lease_renew_script, "2", lease, fence,
                           owner, tok, ttl };
    struct lease_req *q;
    int result;

    if (!owner || !owner[0] || ttl_ms <= 0 || token <= 0)
        return PARLEY_ERR_OTHER;
    result = lease_start(st, platform, account, lease, fence, privdata, &q);
    if (result)
        return result;
    if (q)
        q->claim_fn = fn;
    snprintf(ttl, sizeof(ttl), "%d", ttl_ms);
    snprintf(tok, sizeof(tok), "%lld", token);
    return lease_send(st, q, renew_replied, 8, argv);
}

static void release_replied(struct store *st, redisReply *rep, void *priv)
{
    struct lease_req *q = priv;
    int result = state_reply_status(rep, "lease release", q->label);

    (void)st;
    if (q->done_fn)
        q->done_fn(result, q->privdata);
    free(q);
}

int state_lease_release(struct store *st, const char *platform,
                        const char *account, const char *owner,
                        state_done_fn *fn, void *privdata)
{
    char lease[STORE_KEY_MAX];
    const char *argv[] = { "EVAL", lease_release_script, "1", lease, owner };
    struct lease_req *q;
    int result;

    if (!owner || !owner[0])
        return PARLEY_ERR_OTHER;
    result = lease_start(st, platform, account, lease, NULL, privdata, &q);
    if (result)
        return result;
    if (q)
        q->done_fn = fn;
    return lease_send(st, q, release_replied, 5, argv);
}
