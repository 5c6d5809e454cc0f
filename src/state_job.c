/*
 * Claims and job records (state.h): seen:<event id> and
 * greeted:<room>:<user> marks (SET NX EX), the job:<event id> hash that
 * makes an event durable before a replaying platform moves on, its
 * answered and done transitions, and the start-up walk over every record
 * a previous run left unfinished.  Event ids, room keys and user names
 * come from chat platforms, so every command goes out in argv form.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis/hiredis.h>

#include "dict.h"
#include "log.h"
#include "state.h"
#include "state_private.h"
#include "status.h"
#include "store.h"

/* Keys asked for per SCAN step: Redis's own default is 10, which makes a
 * start-up with many records a long chain of round trips. */
#define STATE_SCAN_COUNT "100"

/* The stored names of the states and kinds; the index is the enum. */
static const char *const state_job_states[] = { "pending", "answered",
                                                "done" };
static const char *const state_job_kinds[] = { "chat", "command", "greet" };

/* ---- claims ------------------------------------------------------------- */

struct claim_request {
    state_claim_fn *fn;
    void *privdata;
    char label[STATE_LABEL_MAX + 1];
};

static struct claim_request *claim_request_new(state_claim_fn *fn,
                                               void *privdata,
                                               const char *label)
{
    struct claim_request *req = calloc(1, sizeof(*req));

    if (!req)
        return NULL;
    req->fn = fn;
    req->privdata = privdata;
    state_label(req->label, sizeof(req->label), label);
    return req;
}

/* SET NX answers OK or nil; the record script answers 1 or 0. */
static void claim_replied(struct store *st, redisReply *rep, void *privdata)
{
    struct claim_request *req = privdata;
    int result = state_reply_status(rep, "claim", req->label);
    int fresh = 0;

    (void)st;
    if (!result) {
        if (rep->type == REDIS_REPLY_STATUS ||
            (rep->type == REDIS_REPLY_INTEGER && rep->integer == 1))
            fresh = 1;
        else if (rep->type != REDIS_REPLY_NIL &&
                 rep->type != REDIS_REPLY_INTEGER)
            result = PARLEY_ERR_PROTOCOL;
    }
    if (req->fn)
        req->fn(result, fresh, req->privdata);
    free(req);
}

/* SET key 1 NX EX ttl_s. */
static int claim_set(struct store *st, const char *key, int ttl_s,
                     const char *label, state_claim_fn *fn, void *privdata)
{
    char ttl[24];
    const char *argv[] = { "SET", key, "1", "NX", "EX", ttl };
    struct claim_request *req;
    int result;

    if (ttl_s <= 0)
        return PARLEY_ERR_OTHER;
    if (!store_is_up(st))
        return PARLEY_ERR_STATE;
    snprintf(ttl, sizeof(ttl), "%d", ttl_s);
    req = claim_request_new(fn, privdata, label);
    if (!req)
        return PARLEY_ERR_OOM;
    result = store_command_argv(st, claim_replied, req, 6, argv, NULL);
    if (result)
        free(req);
    return result;
}

int state_seen_claim(struct store *st, const char *event_id, int ttl_s,
                     state_claim_fn *fn, void *privdata)
{
    char key[STORE_KEY_MAX];
    int result;

    if (!event_id)
        return PARLEY_ERR_OTHER;
    result = store_key(st, key, sizeof(key), "seen:%s", event_id);
    if (result)
        return result;
    return claim_set(st, key, ttl_s, event_id, fn, privdata);
}

int state_greet_claim(struct store *st, const char *room_key,
                      const char *user, int ttl_s, state_claim_fn *fn,
                      void *privdata)
{
    char key[STORE_KEY_MAX];
    int result;

    if (!room_key || !user)
        return PARLEY_ERR_OTHER;
    result = store_key(st, key, sizeof(key), "greeted:%s:%s", room_key,
                       user);
    if (result)
        return result;
    return claim_set(st, key, ttl_s, room_key, fn, privdata);
}

/* ---- job records -------------------------------------------------------- */

/*
 * seen:<id> and job:<id> in one step: a crash between two separate writes
 * would leave an event marked seen with no job, and a replay would then
 * be dropped as a duplicate.  Lua runs atomically in Redis.
 */
static const char job_record_script[] =
    "if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then "
    "redis.call('HSET', KEYS[2], unpack(ARGV, 2)) "
    "redis.call('EXPIRE', KEYS[2], ARGV[1]) return 1 end return 0";

/*
 * The same for a leased account (state.h "leases and fencing"): KEYS[3]
 * is its fence key, ARGV[2] the token this process holds; a newer holder
 * has a larger one, and then nothing is written.  ARGV[3..] are the
 * fields.
 */
static const char job_record_fenced_script[] =
    "if redis.call('GET', KEYS[3]) ~= ARGV[2] then "
    "return redis.error_reply('FENCED lease moved to a newer holder') end "
    "if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then "
    "redis.call('HSET', KEYS[2], unpack(ARGV, 3)) "
    "redis.call('EXPIRE', KEYS[2], ARGV[1]) return 1 end return 0";

/*
 * A transition of an existing record only: HSET on a record that expired
 * (or was never written) would create a hash with no TTL and no event,
 * which every later start would find and log as incomplete.  KEYS[1] is
 * job:<id>; ARGV[1] is the TTL to set (0 keeps the one it has); the rest
 * are field/value pairs.  Returns 1, or 0 when there was no record.
 */
static const char job_update_script[] =
    "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end "
    "redis.call('HSET', KEYS[1], unpack(ARGV, 2)) "
    "if tonumber(ARGV[1]) > 0 then "
    "redis.call('EXPIRE', KEYS[1], ARGV[1]) end return 1";

/*
 * The same with fencing, when this process holds leases: the record
 * names its platform and account, and only the script can read them
 * atomically with the write.  KEYS[2..n+1] are the fence keys of the
 * accounts this process holds; ARGV[1] the TTL, ARGV[2] n, then n pairs
 * ("<platform>\n<account>", token), then the fields.  A record of an
 * account held here is written only while its token is the newest; a
 * record of any other account (a job shared from another instance) is
 * written as above.
 */
static const char job_update_fenced_script[] =
    "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end "
    "local n = tonumber(ARGV[2]) "
    "local id = (redis.call('HGET', KEYS[1], 'platform') or '') .. "
    "'\\n' .. (redis.call('HGET', KEYS[1], 'account') or '') "
    "for i = 1, n do "
    "if ARGV[1 + 2 * i] == id and "
    "redis.call('GET', KEYS[1 + i]) ~= ARGV[2 + 2 * i] then "
    "return redis.error_reply('FENCED lease moved to a newer holder') "
    "end end "
    "redis.call('HSET', KEYS[1], unpack(ARGV, 3 + 2 * n)) "
    "if tonumber(ARGV[1]) > 0 then "
    "redis.call('EXPIRE', KEYS[1], ARGV[1]) end return 1";

/* Append name and value to argv when value is set. */
static int job_field(const char **argv, int argc, const char *name,
                     const char *value)
{
    if (!value)
        return argc;
    argv[argc++] = name;
    argv[argc++] = value;
    return argc;
}

int state_job_valid(const struct state_job *job)
{
    return job && job->event_id &&
           (unsigned)job->kind < sizeof(state_job_kinds) /
                                 sizeof(state_job_kinds[0]);
}

int state_job_fields(const char **argv, int argc, const struct state_job *job,
                     char *ts, size_t tslen)
{
    /* ts 0 means "now": the caller rarely has a better clock. */
    snprintf(ts, tslen, "%lld", job->ts ? job->ts : (long long)time(NULL));
    /* A new record is always pending, whatever job->state says. */
    argc = job_field(argv, argc, "state",
                     state_job_states[STATE_JOB_PENDING]);
    argc = job_field(argv, argc, "kind", state_job_kinds[job->kind]);
    argc = job_field(argv, argc, "platform", job->platform);
    argc = job_field(argv, argc, "account", job->account);
    argc = job_field(argv, argc, "room", job->room);
    argc = job_field(argv, argc, "sender", job->sender);
    argc = job_field(argv, argc, "sender_name", job->sender_name);
    argc = job_field(argv, argc, "text", job->text);
    argc = job_field(argv, argc, "thread_id", job->thread_id);
    argc = job_field(argv, argc, "reply_to", job->reply_to);
    argc = job_field(argv, argc, "is_admin", job->is_admin ? "1" : "0");
    return job_field(argv, argc, "ts", ts);
}

void state_job_read(const redisReply *rep, struct state_job *job)
{
    job->platform = state_hash_field(rep, "platform");
    job->account = state_hash_field(rep, "account");
    job->room = state_hash_field(rep, "room");
    job->sender = state_hash_field(rep, "sender");
    job->sender_name = state_hash_field(rep, "sender_name");
    job->text = state_hash_field(rep, "text");
    job->thread_id = state_hash_field(rep, "thread_id");
    job->reply_to = state_hash_field(rep, "reply_to");
    job->is_admin = state_parse_ll(state_hash_field(rep, "is_admin")) == 1;
    job->ts = state_parse_ll(state_hash_field(rep, "ts"));
    job->answer = state_hash_field(rep, "answer");
    job->notice = state_parse_ll(state_hash_field(rep, "notice")) == 1;
}

int state_job_record(struct store *st, const struct state_job *job,
                     int ttl_s, state_claim_fn *fn, void *privdata)
{
    char seen[STORE_KEY_MAX], key[STORE_KEY_MAX], ttl[24], ts[24];
    char asize[24], fence[STORE_KEY_MAX], token[24];
    const char *argv[8 + 2 * 17];
    struct claim_request *req;
    int argc = 0, fenced;
    int result;

    if (!state_job_valid(job) || ttl_s <= 0)
        return PARLEY_ERR_OTHER;
    result = store_key(st, seen, sizeof(seen), "seen:%s", job->event_id);
    if (!result)
        result = store_key(st, key, sizeof(key), "job:%s", job->event_id);
    if (result)
        return result;
    if (!store_is_up(st))
        return PARLEY_ERR_STATE;
    snprintf(ttl, sizeof(ttl), "%d", ttl_s);
    fenced = state_fence_args(st, job->platform, job->account, fence,
                              sizeof(fence), token, sizeof(token));
    if (fenced < 0)
        return -fenced;
    argv[argc++] = "EVAL";
    argv[argc++] = fenced ? job_record_fenced_script : job_record_script;
    argv[argc++] = fenced ? "3" : "2";
    argv[argc++] = seen;
    argv[argc++] = key;
    if (fenced)
        argv[argc++] = fence;
    argv[argc++] = ttl;
    if (fenced)
        argv[argc++] = token;
    argc = state_job_fields(argv, argc, job, ts, sizeof(ts));
    argc = job_field(argv, argc, "attachment_ref", job->attachment_ref);
    argc = job_field(argv, argc, "attachment_name", job->attachment_name);
    argc = job_field(argv, argc, "attachment_mime", job->attachment_mime);
    if (job->attachment_ref) {
        snprintf(asize, sizeof(asize), "%lld", job->attachment_size);
        argc = job_field(argv, argc, "attachment_size", asize);
    }
    req = claim_request_new(fn, privdata, job->event_id);
    if (!req)
        return PARLEY_ERR_OOM;
    result = store_command_argv(st, claim_replied, req, argc, argv, NULL);
    if (result)
        free(req);
    return result;
}

struct done_request {
    state_done_fn *fn;
    void *privdata;
    char label[STATE_LABEL_MAX + 1];
};

static void job_updated(struct store *st, redisReply *rep, void *privdata)
{
    struct done_request *req = privdata;
    int result = state_reply_code(rep);

    /* A fencing refusal is always worth a line, fire and forget or not. */
    if (req->fn || result == PARLEY_ERR_STATE)
        result = state_reply_status(rep, "job update", req->label);

    (void)st;
    if (!result && rep->type != REDIS_REPLY_INTEGER)
        result = PARLEY_ERR_PROTOCOL;
    else if (!result && rep->integer == 0)
        log_debug("job %s: no record to update (expired?)", req->label);
    if (req->fn)
        req->fn(result, req->privdata);
    else if (result)
        log_debug("job %s: update failed: %s", req->label,
                  parley_status_name(result));
    free(req);
}

/* job_update_fenced_script with every fence this process holds: the
 * argument vector grows with them, so it is allocated (one block for
 * the pointers and the fence keys). */
static int job_update_fenced(struct store *st, struct done_request *req,
                             const char *key, const char *ttl,
                             const char **fields, int n_fields)
{
    size_t n = state_fence_count();
    size_t argc = 6 + 3 * n + (size_t)n_fields;
    const char **argv;
    char *keys, *toks, count[24], nkeys[24];
    int result = PARLEY_OK;

    argv = malloc(argc * sizeof(*argv) + n * (STORE_KEY_MAX + 24));
    if (!argv)
        return PARLEY_ERR_OOM;
    keys = (char *)(argv + argc);
    toks = keys + n * STORE_KEY_MAX;
    snprintf(count, sizeof(count), "%zu", n);
    snprintf(nkeys, sizeof(nkeys), "%zu", n + 1);
    /* EVAL script numkeys job fence*n ttl n (id token)*n fields */
    argv[0] = "EVAL";
    argv[1] = job_update_fenced_script;
    argv[2] = nkeys;
    argv[3] = key;
    argv[4 + n] = ttl;
    argv[5 + n] = count;
    for (size_t i = 0; i < n && !result; i++) {
        char *fk = keys + i * STORE_KEY_MAX, *tok = toks + i * 24;

        result = state_fence_nth(st, i, &argv[6 + n + 2 * i], fk,
                                 STORE_KEY_MAX, tok, 24);
        argv[4 + i] = fk;
        argv[7 + n + 2 * i] = tok;
    }
    for (int i = 0; i < n_fields; i++)
        argv[6 + 3 * n + (size_t)i] = fields[i];
    if (!result)
        result = store_command_argv(st, job_updated, req, (int)argc, argv,
                                    NULL);
    free(argv);
    return result;
}

/* Run job_update_script on job:<event_id> with the pairs in fields. */
static int job_update(struct store *st, const char *event_id, int ttl_s,
                      const char **fields, int n_fields, state_done_fn *fn,
                      void *privdata)
{
    char key[STORE_KEY_MAX], ttl[24];
    const char *argv[5 + 8];
    struct done_request *req;
    int argc = 0;
    int result;

    if (!event_id || n_fields > (int)(sizeof(argv) / sizeof(argv[0])) - 5)
        return PARLEY_ERR_OTHER;
    result = store_key(st, key, sizeof(key), "job:%s", event_id);
    if (result)
        return result;
    if (!store_is_up(st))
        return PARLEY_ERR_STATE;
    snprintf(ttl, sizeof(ttl), "%d", ttl_s > 0 ? ttl_s : 0);
    argv[argc++] = "EVAL";
    argv[argc++] = job_update_script;
    argv[argc++] = "1";
    argv[argc++] = key;
    argv[argc++] = ttl;
    for (int i = 0; i < n_fields; i++)
        argv[argc++] = fields[i];
    req = calloc(1, sizeof(*req));
    if (!req)
        return PARLEY_ERR_OOM;
    req->fn = fn;
    req->privdata = privdata;
    state_label(req->label, sizeof(req->label), event_id);
    if (state_fence_count() > 0)
        result = job_update_fenced(st, req, key, ttl, fields, n_fields);
    else
        result = store_command_argv(st, job_updated, req, argc, argv, NULL);
    if (result)
        free(req);
    return result;
}

int state_job_answered(struct store *st, const char *event_id,
                       const char *answer, int notice, state_done_fn *fn,
                       void *privdata)
{
    const char *fields[] = { "state", state_job_states[STATE_JOB_ANSWERED],
                             "answer", answer ? answer : "",
                             "notice", notice ? "1" : "0" };

    return job_update(st, event_id, 0, fields, 6, fn, privdata);
}

int state_job_done(struct store *st, const char *event_id, int ttl_s,
                   state_done_fn *fn, void *privdata)
{
    const char *fields[] = { "state", state_job_states[STATE_JOB_DONE] };

    return job_update(st, event_id, ttl_s, fields, 2, fn, privdata);
}

/* ---- the start-up walk -------------------------------------------------- */

/*
 * One walk: a SCAN chain over <prefix>job:* and an HGETALL per key found.
 * outstanding counts the replies still to come (the SCAN in flight and
 * every HGETALL), so finished runs once, after the cursor came back to 0
 * (or the walk stopped) and the last record was read.
 */
struct job_scan {
    struct store *st;
    state_job_each_fn *each;
    state_done_fn *finished;
    void *privdata;
    size_t outstanding;
    int scanning;               /* a SCAN is in flight */
    int status;                 /* the first error, else PARLEY_OK */
    size_t prefix_len;          /* of "<prefix>job:", to find the id */
    struct dict *keys;          /* keys read: SCAN may repeat a key */
    char pattern[STORE_KEY_MAX];
};

struct job_read {
    struct job_scan *scan;
    char key[];                 /* job:<id> with the prefix */
};

static int job_scan_next(struct job_scan *scan, const char *cursor);

static void job_scan_settle(struct job_scan *scan)
{
    if (scan->outstanding > 0 || scan->scanning)
        return;
    if (scan->finished)
        scan->finished(scan->status, scan->privdata);
    dict_free(scan->keys);
    free(scan);
}

static void job_scan_fail(struct job_scan *scan, int status)
{
    if (!scan->status)
        scan->status = status;
}

/* Table lookup of a stored name; -1 when unknown. */
static int job_name_index(const char *const *names, size_t n,
                          const char *s)
{
    for (size_t i = 0; s && i < n; i++)
        if (strcmp(names[i], s) == 0)
            return (int)i;
    return -1;
}

/*
 * Decode one record.  Returns 0 when it is to be reported, -1 to skip it
 * (done, gone, or incomplete).  Rules, kept from the router's resume:
 * a record without a state, platform or room, or a non-greeting without
 * text, is incomplete; an unknown state counts as pending (a newer
 * version's state, or damage: asking the model again risks a second
 * answer, skipping it loses the question); answered without an answer is
 * pending too, for the same reason; an unknown kind is a chat.
 */
static int job_decode(const redisReply *rep, const char *key,
                      const char *event_id, struct state_job *job)
{
    const char *state = state_hash_field(rep, "state");
    const char *kind = state_hash_field(rep, "kind");
    size_t n_states = sizeof(state_job_states) / sizeof(state_job_states[0]);
    size_t n_kinds = sizeof(state_job_kinds) / sizeof(state_job_kinds[0]);
    char label[STATE_LABEL_MAX + 1];
    int s, k;

    if (rep->elements == 0)
        return -1;              /* expired between SCAN and HGETALL */
    memset(job, 0, sizeof(*job));
    s = job_name_index(state_job_states, n_states, state);
    if (s == STATE_JOB_DONE)
        return -1;
    k = job_name_index(state_job_kinds, n_kinds, kind);
    job->event_id = event_id;
    job->kind = k < 0 ? STATE_JOB_CHAT : (enum state_job_kind)k;
    job->state = s < 0 ? STATE_JOB_PENDING : (enum state_job_state)s;
    state_job_read(rep, job);
    job->attachment_ref = state_hash_field(rep, "attachment_ref");
    job->attachment_name = state_hash_field(rep, "attachment_name");
    job->attachment_mime = state_hash_field(rep, "attachment_mime");
    job->attachment_size = state_parse_ll(state_hash_field(rep,
                                                     "attachment_size"));
    if (!state || !job->platform || !job->room ||
        (!job->text && job->kind != STATE_JOB_GREET)) {
        state_label(label, sizeof(label), key);
        log_warn("resume: %s is incomplete, dropped", label);
        return -1;
    }
    if (s < 0) {
        state_label(label, sizeof(label), key);
        log_warn("resume: %s has an unknown state, answering it again",
                 label);
    }
    if (job->state == STATE_JOB_ANSWERED && !job->answer)
        job->state = STATE_JOB_PENDING;
    if (job->state != STATE_JOB_ANSWERED)
        job->answer = NULL;
    return 0;
}

static void job_read_replied(struct store *st, redisReply *rep,
                             void *privdata)
{
    struct job_read *rd = privdata;
    struct job_scan *scan = rd->scan;
    char label[STATE_LABEL_MAX + 1];
    struct state_job job;
    int result;

    (void)st;
    state_label(label, sizeof(label), rd->key);
    result = state_reply_status(rep, "HGETALL", label);
    if (result == PARLEY_ERR_PROTOCOL) {
        /* A stray key under job:*: not ours to judge, not a reason to
         * stop resuming the others. */
        log_warn("resume: %s is not a job record, skipped", label);
    } else if (result) {
        job_scan_fail(scan, result);
    } else if (rep->type != REDIS_REPLY_ARRAY) {
        log_warn("resume: %s: unexpected reply type %d", label, rep->type);
    } else if (job_decode(rep, rd->key, rd->key + scan->prefix_len,
                          &job) == 0 && scan->each) {
        scan->each(&job, scan->privdata);
    }
    free(rd);
    scan->outstanding--;
    job_scan_settle(scan);
}

/* Start an HGETALL for one key, unless this walk read it already. */
static int job_scan_read(struct job_scan *scan, const redisReply *k)
{
    size_t len;
    struct job_read *rd;
    const char *argv[2];
    int result;

    if (k->type != REDIS_REPLY_STRING || k->len >= STORE_KEY_MAX ||
        k->len <= scan->prefix_len || strlen(k->str) != k->len)
        return PARLEY_OK;
    if (dict_get(scan->keys, k->str))
        return PARLEY_OK;
    if (dict_set(scan->keys, k->str, scan) != PARLEY_OK)
        return PARLEY_ERR_OOM;
    len = k->len;
    rd = malloc(sizeof(*rd) + len + 1);
    if (!rd)
        return PARLEY_ERR_OOM;
    rd->scan = scan;
    memcpy(rd->key, k->str, len + 1);
    argv[0] = "HGETALL";
    argv[1] = rd->key;
    result = store_command_argv(scan->st, job_read_replied, rd, 2, argv,
                                NULL);
    if (result) {
        free(rd);
        return result;
    }
    scan->outstanding++;
    return PARLEY_OK;
}

static void job_scan_replied(struct store *st, redisReply *rep,
                             void *privdata)
{
    struct job_scan *scan = privdata;
    const redisReply *keys;
    int result;

    (void)st;
    scan->scanning = 0;
    result = state_reply_status(rep, "SCAN", "job:*");
    if (result) {
        job_scan_fail(scan, result);
        goto settle;
    }
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
        rep->element[0]->type != REDIS_REPLY_STRING ||
        rep->element[1]->type != REDIS_REPLY_ARRAY) {
        log_warn("resume: unexpected SCAN reply");
        job_scan_fail(scan, PARLEY_ERR_PROTOCOL);
        goto settle;
    }
    keys = rep->element[1];
    for (size_t i = 0; i < keys->elements && !result; i++)
        result = job_scan_read(scan, keys->element[i]);
    if (!result && strcmp(rep->element[0]->str, "0") != 0)
        result = job_scan_next(scan, rep->element[0]->str);
    if (result)
        job_scan_fail(scan, result);
settle:
    job_scan_settle(scan);
}

static int job_scan_next(struct job_scan *scan, const char *cursor)
{
    const char *argv[] = { "SCAN", cursor, "MATCH", scan->pattern,
                           "COUNT", STATE_SCAN_COUNT };
    int result;

    result = store_command_argv(scan->st, job_scan_replied, scan, 6, argv,
                                NULL);
    if (!result)
        scan->scanning = 1;
    return result;
}

int state_job_scan(struct store *st, state_job_each_fn *each,
                   state_done_fn *finished, void *privdata)
{
    struct job_scan *scan;
    int result;

    if (!store_is_up(st))
        return PARLEY_ERR_STATE;
    scan = calloc(1, sizeof(*scan));
    if (!scan)
        return PARLEY_ERR_OOM;
    scan->st = st;
    scan->each = each;
    scan->finished = finished;
    scan->privdata = privdata;
    scan->keys = dict_create();
    result = scan->keys ? PARLEY_OK : PARLEY_ERR_OOM;
    if (!result)
        result = store_key(st, scan->pattern, sizeof(scan->pattern),
                           "job:");
    if (!result) {
        scan->prefix_len = strlen(scan->pattern);
        result = store_key(st, scan->pattern, sizeof(scan->pattern),
                           "job:*");
    }
    if (!result)
        result = job_scan_next(scan, "0");
    if (result) {
        dict_free(scan->keys);
        free(scan);
    }
    return result;
}
