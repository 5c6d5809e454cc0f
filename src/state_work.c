/*
 * The shared work streams (state.h, "shared work"): work:jobs, which
 * every instance's workers read through the consumer group "workers", and
 * work:replies:<platform>:<account>, read through the group "owners" by
 * the instance holding that connection.  The two scripts here are what
 * keeps a job answered once when workers die and jobs are retried: the
 * submit writes the job record and queues it in one step, and the finish
 * appends the exchange, stores the answer, publishes it and acks the job
 * only while the record is still pending.  Job ids, room keys and answers
 * come from chat platforms and the model, so everything goes out in argv
 * form.
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

#define WORK_GROUP_WORKERS "workers"
#define WORK_GROUP_OWNERS "owners"
/* Entries per read or claim: bounded so one reply stays small. */
#define WORK_ENTRIES_MAX 256
/* Turns per finish, as STATE_HISTORY_APPEND_MAX keeps argc far from
 * overflow; a chat appends two. */
#define WORK_TURNS_MAX 16

static const char *work_group(const char *platform)
{
    return platform ? WORK_GROUP_OWNERS : WORK_GROUP_WORKERS;
}

/* <prefix>work:jobs or <prefix>work:replies:<platform>:<account>. */
static int work_stream_key(const struct store *st, char *buf, size_t len,
                           const char *platform, const char *account)
{
    if (!platform)
        return store_key(st, buf, len, "work:jobs");
    return store_key(st, buf, len, "work:replies:%s:%s", platform,
                     account ? account : "");
}

struct work_request {
    state_done_fn *done_fn;
    state_work_entries_fn *entries_fn;
    state_work_job_fn *job_fn;
    state_work_finish_fn *finish_fn;
    state_work_info_fn *info_fn;
    void *privdata;
    char *job_id;               /* state_work_job_load: owned copy */
    char label[STATE_LABEL_MAX + 1];
};

static struct work_request *work_request_new(void *privdata,
                                             const char *label)
{
    struct work_request *req = calloc(1, sizeof(*req));

    if (!req)
        return NULL;
    req->privdata = privdata;
    state_label(req->label, sizeof(req->label), label);
    return req;
}

/* The stream key of (platform, account) into key, then whether the
 * store can take a command: how every stream call here starts. */
static int work_key_up(struct store *st, char *key, size_t len,
                       const char *platform, const char *account)
{
    int result = work_stream_key(st, key, len, platform, account);

    if (result)
        return result;
    return store_is_up(st) ? PARLEY_OK : PARLEY_ERR_STATE;
}

/* Send with req as the callback's privdata; req NULL (work_request_new
 * ran out of memory) is PARLEY_ERR_OOM.  req is freed when the send
 * fails. */
static int work_send(struct store *st, store_reply_fn *cb,
                     struct work_request *req, int argc, const char **argv)
{
    int result;

    if (!req)
        return PARLEY_ERR_OOM;
    result = store_command_argv(st, cb, req, argc, argv, NULL);
    if (result)
        free(req);
    return result;
}

/* ---- groups ------------------------------------------------------------- */

static void work_group_created(struct store *st, redisReply *rep,
                               void *privdata)
{
    struct work_request *req = privdata;
    int result = state_reply_code(rep);

    (void)st;
    /* Every instance creates the groups at start: the second one finds
     * them there, which is what it wanted. */
    if (result && rep && rep->str && strncmp(rep->str, "BUSYGROUP", 9) == 0)
        result = PARLEY_OK;
    else if (result)
        state_reply_status(rep, "XGROUP CREATE", req->label);
    if (req->done_fn)
        req->done_fn(result, req->privdata);
    free(req);
}

int state_work_group_create(struct store *st, const char *platform,
                            const char *account, state_done_fn *fn,
                            void *privdata)
{
    char key[STORE_KEY_MAX];
    const char *argv[] = { "XGROUP", "CREATE", key, work_group(platform),
                           "0", "MKSTREAM" };
    struct work_request *req;
    int result = work_key_up(st, key, sizeof(key), platform, account);

    if (result)
        return result;
    req = work_request_new(privdata, key);
    if (req)
        req->done_fn = fn;
    return work_send(st, work_group_created, req, 6, argv);
}

/* ---- reading and claiming ------------------------------------------------ */

/* One [id, [field, value, ...]] entry; 0 when it is not one (XAUTOCLAIM
 * of Redis 6.2 lists entries trimmed away as [id, nil]). */
static int work_entry_decode(const redisReply *e, struct state_work_entry *out)
{
    const redisReply *f;

    memset(out, 0, sizeof(*out));
    if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
        e->element[0]->type != REDIS_REPLY_STRING)
        return 0;
    f = e->element[1];
    if (f->type != REDIS_REPLY_ARRAY)
        return 0;
    out->entry_id = e->element[0]->str;
    out->job_id = state_hash_field(f, "id");
    out->owner = state_hash_field(f, "owner");
    out->answer = state_hash_field(f, "answer");
    out->notice = state_parse_ll(state_hash_field(f, "notice")) == 1;
    return out->job_id != NULL;
}

/* Decode the entries of list into a caller's array and call back. */
static void work_entries_deliver(struct work_request *req, int result,
                                 const char *next, const redisReply *list)
{
    struct state_work_entry entries[WORK_ENTRIES_MAX];
    size_t n = 0;

    for (size_t i = 0; !result && list && i < list->elements &&
                       n < WORK_ENTRIES_MAX; i++) {
        if (work_entry_decode(list->element[i], &entries[n]))
            n++;
        else if (list->element[i]->type == REDIS_REPLY_ARRAY &&
                 list->element[i]->elements == 2 &&
                 list->element[i]->element[1]->type == REDIS_REPLY_ARRAY)
            log_warn("work %s: an entry without a job id, skipped",
                     req->label);
    }
    req->entries_fn(result, result ? NULL : next, entries, n,
                    req->privdata);
}

/* NOGROUP: the stream or its group is gone (Redis restarted empty). */
static int work_read_status(const redisReply *rep, const char *what,
                            const char *label)
{
    if (rep && rep->type == REDIS_REPLY_ERROR && rep->str &&
        strncmp(rep->str, "NOGROUP", 7) == 0)
        return PARLEY_ERR_STATE;
    return state_reply_status(rep, what, label);
}

static void work_read_replied(struct store *st, redisReply *rep,
                              void *privdata)
{
    struct work_request *req = privdata;
    int result = work_read_status(rep, "XREADGROUP", req->label);
    const redisReply *list = NULL;

    (void)st;
    /* nil: nothing new; else [[key, [entries]]] for our one stream. */
    if (!result && rep->type == REDIS_REPLY_ARRAY) {
        if (rep->elements == 1 &&
            rep->element[0]->type == REDIS_REPLY_ARRAY &&
            rep->element[0]->elements == 2 &&
            rep->element[0]->element[1]->type == REDIS_REPLY_ARRAY)
            list = rep->element[0]->element[1];
        else
            result = PARLEY_ERR_PROTOCOL;
    } else if (!result && rep->type != REDIS_REPLY_NIL) {
        result = PARLEY_ERR_PROTOCOL;
    }
    work_entries_deliver(req, result, NULL, list);
    free(req);
}

int state_work_read(struct store *st, const char *platform,
                    const char *account, const char *consumer, size_t count,
                    state_work_entries_fn *fn, void *privdata)
{
    char key[STORE_KEY_MAX], n[24];
    const char *argv[] = { "XREADGROUP", "GROUP", work_group(platform),
                           consumer, "COUNT", n, "STREAMS", key, ">" };
    struct work_request *req;
    int result;

    if (!fn || !consumer || count == 0)
        return PARLEY_ERR_OTHER;
    result = work_key_up(st, key, sizeof(key), platform, account);
    if (result)
        return result;
    snprintf(n, sizeof(n), "%zu",
             count < WORK_ENTRIES_MAX ? count : (size_t)WORK_ENTRIES_MAX);
    req = work_request_new(privdata, key);
    if (req)
        req->entries_fn = fn;
    return work_send(st, work_read_replied, req, 9, argv);
}

static void work_claim_replied(struct store *st, redisReply *rep,
                               void *privdata)
{
    struct work_request *req = privdata;
    int result = work_read_status(rep, "XAUTOCLAIM", req->label);
    const redisReply *list = NULL;
    const char *next = NULL;

    (void)st;
    /* [next cursor, [entries], (7.0+) [deleted ids]] */
    if (!result && (rep->type != REDIS_REPLY_ARRAY || rep->elements < 2 ||
                    rep->element[0]->type != REDIS_REPLY_STRING ||
                    rep->element[1]->type != REDIS_REPLY_ARRAY))
        result = PARLEY_ERR_PROTOCOL;
    if (!result) {
        next = rep->element[0]->str;
        list = rep->element[1];
    }
    work_entries_deliver(req, result, next, list);
    free(req);
}

int state_work_claim(struct store *st, const char *platform,
                     const char *account, const char *consumer,
                     long long min_idle_ms, const char *cursor, size_t count,
                     state_work_entries_fn *fn, void *privdata)
{
    char key[STORE_KEY_MAX], n[24], idle[24];
    const char *argv[] = { "XAUTOCLAIM", key, work_group(platform), consumer,
                           idle, cursor, "COUNT", n };
    struct work_request *req;
    int result;

    if (!fn || !consumer || !cursor || count == 0 || min_idle_ms < 0)
        return PARLEY_ERR_OTHER;
    result = work_key_up(st, key, sizeof(key), platform, account);
    if (result)
        return result;
    snprintf(n, sizeof(n), "%zu",
             count < WORK_ENTRIES_MAX ? count : (size_t)WORK_ENTRIES_MAX);
    snprintf(idle, sizeof(idle), "%lld", min_idle_ms);
    req = work_request_new(privdata, key);
    if (req)
        req->entries_fn = fn;
    return work_send(st, work_claim_replied, req, 8, argv);
}

int state_work_ack(struct store *st, const char *platform,
                   const char *account, const char *entry_id)
{
    char key[STORE_KEY_MAX];
    const char *argv[] = { "XACK", key, work_group(platform), entry_id };
    int result;

    if (!entry_id)
        return PARLEY_ERR_OTHER;
    result = work_key_up(st, key, sizeof(key), platform, account);
    if (result)
        return result;
    return state_send_forget(st, "XACK", 4, argv);
}

int state_work_touch(struct store *st, const char *consumer,
                     const char *const *entry_ids, size_t n)
{
    char key[STORE_KEY_MAX];
    const char **argv;
    int result;

    if (!consumer || !entry_ids || n == 0 || n > WORK_ENTRIES_MAX)
        return PARLEY_ERR_OTHER;
    result = work_key_up(st, key, sizeof(key), NULL, NULL);
    if (result)
        return result;
    argv = calloc(n + 6, sizeof(*argv));
    if (!argv)
        return PARLEY_ERR_OOM;
    argv[0] = "XCLAIM";
    argv[1] = key;
    argv[2] = WORK_GROUP_WORKERS;
    argv[3] = consumer;
    argv[4] = "0";
    for (size_t i = 0; i < n; i++)
        argv[5 + i] = entry_ids[i];
    argv[5 + n] = "JUSTID";
    result = state_send_forget(st, "XCLAIM", (int)(n + 6), argv);
    free(argv);
    return result;
}

/* ---- submit ------------------------------------------------------------- */

/*
 * KEYS[1] job:<id>, KEYS[2] work:jobs; ARGV[1] ttl, ARGV[2] MAXLEN,
 * ARGV[3] id, ARGV[4] owner, ARGV[5..] the record's field/value pairs.
 * A record that exists (a replaying platform wrote it at arrival) is
 * left as it is: its state is the truth.  Returns the entry id.
 */
static const char work_submit_script[] =
    "if redis.call('EXISTS', KEYS[1]) == 0 then "
    "redis.call('HSET', KEYS[1], unpack(ARGV, 5)) "
    "redis.call('EXPIRE', KEYS[1], ARGV[1]) end "
    "return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', "
    "'id', ARGV[3], 'owner', ARGV[4])";

static void work_done_replied(struct store *st, redisReply *rep,
                              void *privdata)
{
    struct work_request *req = privdata;
    int result = state_reply_status(rep, "work", req->label);

    (void)st;
    if (req->done_fn)
        req->done_fn(result, req->privdata);
    free(req);
}

int state_work_submit(struct store *st, const struct state_job *job,
                      int ttl_s, const char *owner, state_done_fn *fn,
                      void *privdata)
{
    char key[STORE_KEY_MAX], stream[STORE_KEY_MAX], ttl[24], ts[24];
    char maxlen[24];
    const char *argv[9 + STATE_JOB_FIELDS_MAX];
    struct work_request *req;
    int argc = 0, result;

    if (!state_job_valid(job) || !owner || ttl_s <= 0)
        return PARLEY_ERR_OTHER;
    result = store_key(st, key, sizeof(key), "job:%s", job->event_id);
    if (!result)
        result = work_stream_key(st, stream, sizeof(stream), NULL, NULL);
    if (result)
        return result;
    if (!store_is_up(st))
        return PARLEY_ERR_STATE;
    snprintf(ttl, sizeof(ttl), "%d", ttl_s);
    snprintf(maxlen, sizeof(maxlen), "%d", STATE_WORK_STREAM_MAX);
    argv[argc++] = "EVAL";
    argv[argc++] = work_submit_script;
    argv[argc++] = "2";
    argv[argc++] = key;
    argv[argc++] = stream;
    argv[argc++] = ttl;
    argv[argc++] = maxlen;
    argv[argc++] = job->event_id;
    argv[argc++] = owner;
    /* The fields state_job_record starts a record with, not its
     * attachment fields: a question with a picture is never shared. */
    argc = state_job_fields(argv, argc, job, ts, sizeof(ts));
    req = work_request_new(privdata, job->event_id);
    if (req)
        req->done_fn = fn;
    return work_send(st, work_done_replied, req, argc, argv);
}

/* ---- the job record ------------------------------------------------------ */

static void work_job_loaded(struct store *st, redisReply *rep,
                            void *privdata)
{
    struct work_request *req = privdata;
    int result = state_reply_status(rep, "HGETALL", req->label);
    const char *state, *kind;
    struct state_job job;

    (void)st;
    if (!result && rep->type != REDIS_REPLY_ARRAY)
        result = PARLEY_ERR_PROTOCOL;
    if (result || rep->elements == 0) {
        req->job_fn(result, NULL, req->privdata);
        free(req->job_id);
        free(req);
        return;
    }
    memset(&job, 0, sizeof(job));
    state = state_hash_field(rep, "state");
    kind = state_hash_field(rep, "kind");
    /* As the start-up walk: an unknown state counts as pending. */
    job.state = state && strcmp(state, "done") == 0 ? STATE_JOB_DONE :
                state && strcmp(state, "answered") == 0 ?
                STATE_JOB_ANSWERED : STATE_JOB_PENDING;
    job.kind = kind && strcmp(kind, "command") == 0 ? STATE_JOB_COMMAND :
               kind && strcmp(kind, "greet") == 0 ? STATE_JOB_GREET :
               STATE_JOB_CHAT;
    job.event_id = req->job_id;
    state_job_read(rep, &job);
    req->job_fn(PARLEY_OK, &job, req->privdata);
    free(req->job_id);
    free(req);
}

int state_work_job_load(struct store *st, const char *job_id,
                        state_work_job_fn *fn, void *privdata)
{
    char key[STORE_KEY_MAX];
    const char *argv[] = { "HGETALL", key };
    struct work_request *req;
    int result;

    if (!job_id || !fn)
        return PARLEY_ERR_OTHER;
    result = store_key(st, key, sizeof(key), "job:%s", job_id);
    if (result)
        return result;
    if (!store_is_up(st))
        return PARLEY_ERR_STATE;
    req = work_request_new(privdata, job_id);
    if (req && !(req->job_id = strdup(job_id))) {
        free(req);
        req = NULL;
    }
    if (!req)
        return PARLEY_ERR_OOM;
    req->job_fn = fn;
    result = store_command_argv(st, work_job_loaded, req, 2, argv, NULL);
    if (result) {
        free(req->job_id);
        free(req);
    }
    return result;
}

/* ---- finish ------------------------------------------------------------- */

/*
 * KEYS[1] job:<id>, KEYS[2] ctx:<room>, KEYS[3] room:<room>,
 * KEYS[4] work:jobs, KEYS[5] work:replies:<platform>:<account>;
 * ARGV[1] entry id ("" none), ARGV[2] answer, ARGV[3] notice,
 * ARGV[4] epoch ("-1" no check), ARGV[5] max_turns, ARGV[6] ttl (0 skips
 * either), ARGV[7] MAXLEN, ARGV[8] job id, ARGV[9..] JSON turns.  The
 * job-state check is what makes a retry safe: only the first finish of a
 * job appends and stores; a later one publishes the stored answer (the
 * owner drops a reply for a job it no longer waits for).  A done job
 * publishes nothing.
 */
static const char work_finish_script[] =
    "local st = redis.call('HGET', KEYS[1], 'state') "
    "local r, ans, notice = 1, ARGV[2], ARGV[3] "
    "if not st then r = -1 "
    "elseif st ~= 'answered' and st ~= 'done' then "
    "  if #ARGV >= 9 then "
    "    local ok = true "
    "    if ARGV[4] ~= '-1' then "
    "      ok = (redis.call('HGET', KEYS[3], 'epoch') or '0') == ARGV[4] "
    "    end "
    "    if ok then "
    "      for i = 9, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end "
    "      if tonumber(ARGV[5]) > 0 then "
    "        redis.call('LTRIM', KEYS[2], -tonumber(ARGV[5]), -1) end "
    "      if tonumber(ARGV[6]) > 0 then "
    "        redis.call('EXPIRE', KEYS[2], ARGV[6]) end "
    "    end "
    "  end "
    "  redis.call('HSET', KEYS[1], 'state', 'answered', 'answer', ans, "
    "             'notice', notice) "
    "else "
    "  r = 0 "
    "  ans = redis.call('HGET', KEYS[1], 'answer') or '' "
    "  notice = redis.call('HGET', KEYS[1], 'notice') or '0' "
    "end "
    "if r >= 0 and st ~= 'done' then "
    "  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[7], '*', "
    "             'id', ARGV[8], 'answer', ans, 'notice', notice) end "
    "if ARGV[1] ~= '' then "
    "  redis.call('XACK', KEYS[4], '" WORK_GROUP_WORKERS "', ARGV[1]) end "
    "return r";

static void work_finished(struct store *st, redisReply *rep, void *privdata)
{
    struct work_request *req = privdata;
    int result = state_reply_status(rep, "finish", req->label);
    int answered = 0;

    (void)st;
    if (!result && rep->type != REDIS_REPLY_INTEGER)
        result = PARLEY_ERR_PROTOCOL;
    if (!result)
        answered = (int)rep->integer;
    if (req->finish_fn)
        req->finish_fn(result, answered, req->privdata);
    free(req);
}

int state_work_finish(struct store *st, const struct state_work_answer *a,
                      state_work_finish_fn *fn, void *privdata)
{
    char job[STORE_KEY_MAX], ctx[STORE_KEY_MAX], room[STORE_KEY_MAX];
    char jobs[STORE_KEY_MAX], replies[STORE_KEY_MAX];
    char ep[24], max[24], ttl[24], maxlen[24];
    const char *argv[16 + WORK_TURNS_MAX];
    char *json[WORK_TURNS_MAX];
    struct work_request *req = NULL;
    size_t built = 0;
    int argc = 0, result;

    if (!a || !a->job_id || !a->platform || !a->room_key || !a->ctx ||
        a->n_turns > WORK_TURNS_MAX || (a->n_turns > 0 && !a->turns))
        return PARLEY_ERR_OTHER;
    result = store_key(st, job, sizeof(job), "job:%s", a->job_id);
    if (!result)
        result = store_key(st, ctx, sizeof(ctx), "ctx:%s", a->room_key);
    if (!result)
        result = store_key(st, room, sizeof(room), "room:%s", a->room_key);
    if (!result)
        result = work_stream_key(st, jobs, sizeof(jobs), NULL, NULL);
    if (!result)
        result = work_stream_key(st, replies, sizeof(replies), a->platform,
                                 a->account);
    if (result)
        return result;
    if (!store_is_up(st))
        return PARLEY_ERR_STATE;
    snprintf(ep, sizeof(ep), "%lld", a->epoch >= 0 ? a->epoch : -1LL);
    snprintf(max, sizeof(max), "%d",
             a->ctx->max_turns > 0 ? a->ctx->max_turns : 0);
    snprintf(ttl, sizeof(ttl), "%d", a->ctx->ttl_s > 0 ? a->ctx->ttl_s : 0);
    snprintf(maxlen, sizeof(maxlen), "%d", STATE_WORK_STREAM_MAX);
    argv[argc++] = "EVAL";
    argv[argc++] = work_finish_script;
    argv[argc++] = "5";
    argv[argc++] = job;
    argv[argc++] = ctx;
    argv[argc++] = room;
    argv[argc++] = jobs;
    argv[argc++] = replies;
    argv[argc++] = a->entry_id ? a->entry_id : "";
    argv[argc++] = a->answer ? a->answer : "";
    argv[argc++] = a->notice ? "1" : "0";
    argv[argc++] = ep;
    argv[argc++] = max;
    argv[argc++] = ttl;
    argv[argc++] = maxlen;
    argv[argc++] = a->job_id;
    result = PARLEY_ERR_OOM;
    for (built = 0; built < a->n_turns; built++) {
        json[built] = context_turn_to_json(&a->turns[built]);
        if (!json[built])
            goto out;
        argv[argc++] = json[built];
    }
    req = work_request_new(privdata, a->job_id);
    if (!req)
        goto out;
    req->finish_fn = fn;
    result = work_send(st, work_finished, req, argc, argv);
out:
    for (size_t i = 0; i < built; i++)
        free(json[i]);
    return result;
}

/* ---- lag ---------------------------------------------------------------- */

static long long work_info_number(const redisReply *group, const char *name)
{
    for (size_t i = 0; i + 1 < group->elements; i += 2) {
        const redisReply *k = group->element[i];
        const redisReply *v = group->element[i + 1];

        if (k->type != REDIS_REPLY_STRING || strcmp(k->str, name) != 0)
            continue;
        if (v->type == REDIS_REPLY_INTEGER)
            return v->integer;
        return -1;              /* nil: Redis cannot tell the lag */
    }
    return -1;
}

static void work_info_replied(struct store *st, redisReply *rep,
                              void *privdata)
{
    struct work_request *req = privdata;
    int result = work_read_status(rep, "XINFO GROUPS", req->label);
    long long lag = -1, pending = -1;

    (void)st;
    if (!result && rep->type != REDIS_REPLY_ARRAY)
        result = PARLEY_ERR_PROTOCOL;
    for (size_t i = 0; !result && i < rep->elements; i++) {
        const redisReply *g = rep->element[i];
        const char *name;

        if (g->type != REDIS_REPLY_ARRAY)
            continue;
        name = state_hash_field(g, "name");
        if (!name || strcmp(name, WORK_GROUP_WORKERS) != 0)
            continue;
        lag = work_info_number(g, "lag");
        pending = work_info_number(g, "pending");
    }
    req->info_fn(result, lag, pending, req->privdata);
    free(req);
}

int state_work_info(struct store *st, state_work_info_fn *fn,
                    void *privdata)
{
    char key[STORE_KEY_MAX];
    const char *argv[] = { "XINFO", "GROUPS", key };
    struct work_request *req;
    int result;

    if (!fn)
        return PARLEY_ERR_OTHER;
    result = work_key_up(st, key, sizeof(key), NULL, NULL);
    if (result)
        return result;
    req = work_request_new(privdata, key);
    if (req)
        req->info_fn = fn;
    return work_send(st, work_info_replied, req, 3, argv);
}
