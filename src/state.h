/*
 * The typed state layer: every data shape parley keeps in Redis, with
 * typed callbacks.  Together with store.c it is the only code that reads
 * hiredis replies; the router, the commands and the adapters see structs
 * and status codes.  Keys are named here (see DESIGN.md "Redis keys"), each
 * under the configured prefix through store_key:
 *
 *   seen:<event id>          string   dedupe (SET NX EX)
 *   job:<event id>           hash     struct state_job
 *   room:<room>              hash     struct room_settings
 *   ctx:<room>               list     history (JSON turns, see context.h)
 *   greeted:<room>:<user>    string   greeting cooldown (SET NX EX)
 *   usage:<day>:<user>       hash     struct usage
 *   session:<account>        hash     struct state_session (Matrix)
 *   sync:<account>           string   Matrix next_batch
 *   crypto:<account>:...     various  Matrix end-to-end encryption (below)
 *   lease:<platform>:<acct>  string   the instance holding a connection
 *   fence:<platform>:<acct>  string   its fencing token (INCR, no TTL)
 *   work:jobs                stream   shared jobs (ha.share_work, below)
 *   work:replies:<platform>:<account>
 *                            stream   their answers, for the connection
 *   stream:<account>:<txn>   string   a streamed Matrix answer's first event
 *
 * Files: state_job.c (seen, job records, greeting marks), state_room.c
 * (room settings, usage), state_history.c (ctx), state_session.c (Matrix
 * session and sync position), state_crypto.c (Matrix encryption),
 * state_lease.c (leases on platform connections and write fencing),
 * state_work.c (shared work streams), state_stream.c (streamed Matrix
 * answers).
 *
 * Callback contract, as store.h: when a state_* call returns PARLEY_OK its
 * callback runs exactly once, later (never before the call returns), with
 * PARLEY_OK and the data, or with an error status (PARLEY_ERR_IO when the
 * connection dropped or store_close ran, PARLEY_ERR_OTHER for an error
 * reply, PARLEY_ERR_PROTOCOL for a key of the wrong type).  Any other
 * return means Redis is down (PARLEY_ERR_STATE), a key would be too long
 * (PARLEY_ERR_TOO_LARGE) or memory ran out, and the callback never runs.
 * Structs passed to callbacks are valid only during the call.  A callback
 * may be NULL where noted ("fire and forget"): failures are then logged at
 * debug level only.
 */
#ifndef PARLEY_STATE_H
#define PARLEY_STATE_H

#include <stddef.h>
#include <time.h>

struct store;
struct turn;
struct history;
struct config_context;

typedef void state_done_fn(int status, void *privdata);

/* ---- claims: seen:, greeted:, and the job record ------------------------ */

/*
 * A claim is a write that succeeds once: SET NX EX.  fresh is 1 when this
 * call made the mark, 0 when it existed (a duplicate, a greeting still in
 * its cooldown).  When status is not PARLEY_OK, fresh is 0.  ttl_s must
 * be > 0 (also for state_job_record), else PARLEY_ERR_OTHER without fn.
 */
typedef void state_claim_fn(int status, int fresh, void *privdata);

/* seen:<event_id> for ttl_s seconds. */
int state_seen_claim(struct store *st, const char *event_id, int ttl_s,
                     state_claim_fn *fn, void *privdata);
/* greeted:<room_key>:<user> for ttl_s seconds. */
int state_greet_claim(struct store *st, const char *room_key,
                      const char *user, int ttl_s, state_claim_fn *fn,
                      void *privdata);

/* ---- job records --------------------------------------------------------- */

enum state_job_state {
    STATE_JOB_PENDING = 0,  /* accepted, not answered yet */
    STATE_JOB_ANSWERED,     /* answer stored, maybe not sent */
    STATE_JOB_DONE          /* sent */
};

enum state_job_kind {
    STATE_JOB_CHAT = 0,
    STATE_JOB_COMMAND,
    STATE_JOB_GREET         /* the bot's own join: greet the room */
};

/* job:<event id>.  Strings may be NULL (absent field); all borrowed. */
struct state_job {
    const char *event_id;
    enum state_job_state state;
    enum state_job_kind kind;
    const char *platform;
    const char *account;
    const char *room;
    const char *sender;
    const char *sender_name;
    const char *text;
    const char *thread_id;
    const char *reply_to;
    int is_admin;
    long long ts;           /* unix seconds when accepted */
    const char *answer;     /* set once state is ANSWERED */
    int notice;             /* the answer is service text */
    const char *attachment_ref;     /* a picture: the adapter's reference
                                       (event_attachment), or NULL */
    const char *attachment_name;    /* its file name, or NULL */
    const char *attachment_mime;    /* its declared type, or NULL */
    long long attachment_size;      /* its declared size, 0 unknown */
};

/*
 * Write seen:<id> and job:<id> (state pending) in one Lua EVAL, both with
 * ttl_s: a crash between two separate writes would leave an event marked
 * seen with no job, and a replay would then be dropped as a duplicate.
 * fresh = 0 when seen:<id> already existed (nothing written).  job->state
 * and job->answer are ignored; ts 0 means now.
 */
int state_job_record(struct store *st, const struct state_job *job,
                     int ttl_s, state_claim_fn *fn, void *privdata);
/* state = answered, answer, notice: a restart resends this text.  This
 * and state_job_done only change an existing record (an expired one is
 * not recreated without its TTL): with no record, fn gets PARLEY_OK. */
int state_job_answered(struct store *st, const char *event_id,
                       const char *answer, int notice, state_done_fn *fn,
                       void *privdata);
/* state = done, and the record expires after ttl_s.  fn may be NULL
 * (also for state_job_answered). */
int state_job_done(struct store *st, const char *event_id, int ttl_s,
                   state_done_fn *fn, void *privdata);

/*
 * Walk every job:* record not done (SCAN + HGETALL).  each runs once per
 * record found; records that are incomplete (no state, no platform or
 * room, or no text for a non-greeting) and keys under job:* that are not
 * hashes are logged and skipped.  An unknown state counts as pending (an
 * answer twice beats a question lost), so does answered without an
 * answer; an unknown kind is a chat.  Then finished runs once, after the
 * last each, with PARLEY_OK when the walk completed or an error status
 * when it stopped early.  each and finished may be NULL.
 */
typedef void state_job_each_fn(const struct state_job *job, void *privdata);
int state_job_scan(struct store *st, state_job_each_fn *each,
                   state_done_fn *finished, void *privdata);

/* ---- room settings ------------------------------------------------------- */

/* room:<room>.  Strings NULL when unset. */
struct room_settings {
    const char *model;      /* !model */
    const char *system;     /* !system */
    int greeting;           /* 1 on, 0 off, -1 unset */
    long long epoch;        /* bumped by state_history_reset; 0 unset */
};

typedef void state_room_fn(int status, const struct room_settings *rs,
                           void *privdata);

/* rs is all unset (greeting -1, epoch 0) for a room with no hash; NULL
 * when status is not PARLEY_OK. */
int state_room_load(struct store *st, const char *room_key,
                    state_room_fn *fn, void *privdata);

enum room_field {
    ROOM_FIELD_MODEL,
    ROOM_FIELD_SYSTEM,
    ROOM_FIELD_GREETING     /* value "on" or "off" */
};

/* Set one field, or delete it when value is NULL.  Any greeting value
 * other than "on"/"off" is PARLEY_ERR_OTHER without fn; fn may be NULL.
 * Stored greetings read back as on unless "off". */
int state_room_set(struct store *st, const char *room_key,
                   enum room_field field, const char *value,
                   state_done_fn *fn, void *privdata);

/* ---- usage --------------------------------------------------------------- */

/* usage:<UTC day of when>:<user>, user = "platform:account:sender". */
struct usage {
    long long requests;
    long long tokens_in;
    long long tokens_out;
    long long tokens;       /* in + out */
};

typedef void state_usage_fn(int status, const struct usage *u,
                            void *privdata);

/* Zeros for a user with no record. */
int state_usage_load(struct store *st, const char *user, time_t when,
                     state_usage_fn *fn, void *privdata);
/* One request and its tokens (negative counts as 0); the hash lives
 * ttl_s from now.  Fire and forget: no callback. */
int state_usage_add(struct store *st, const char *user, time_t when,
                    long tokens_in, long tokens_out, int ttl_s);

/* ---- history ------------------------------------------------------------- */

/*
 * ctx:<room>, oldest first.  The JSON of one turn and the trimming are in
 * context.h (pure); these are its Redis calls.
 *
 * load: the history untrimmed (malformed entries skipped and logged at
 * WARN), and its TTL refreshed to cfg->ttl_s (cfg may be NULL: no
 * refresh).  The history passed to fn is owned by the callee (free with
 * context_history_free); NULL unless status is PARLEY_OK.
 */
typedef void state_history_fn(int status, struct history *h,
                              void *privdata);
int state_history_load(struct store *st, const char *room_key,
                       const struct config_context *cfg,
                       state_history_fn *fn, void *privdata);

/*
 * Append turns as one unit (RPUSH, LTRIM to cfg->max_turns, EXPIRE
 * cfg->ttl_s; <= 0 skips that step), so a (question, answer) pair never
 * interleaves with another.  With epoch >= 0 the append happens only while
 * room:<room> epoch still equals it (a !reset since then bumped it): fn
 * then gets PARLEY_ERR_STATE and nothing was written.  epoch < 0 appends
 * unconditionally.  n must be > 0 (and at most 4096) and every role
 * user/assistant, else PARLEY_ERR_OTHER without fn.  fn may be NULL.
 */
int state_history_append(struct store *st, const char *room_key,
                         const struct turn *turns, size_t n,
                         const struct config_context *cfg, long long epoch,
                         state_done_fn *fn, void *privdata);

/* !reset: delete ctx:<room> and bump room:<room> epoch in one MULTI, so
 * answers in flight from before the reset are not appended. */
int state_history_reset(struct store *st, const char *room_key,
                        state_done_fn *fn, void *privdata);

/* ---- Matrix session and sync position ------------------------------------ */

/* session:<account>.  Strings NULL when absent. */
struct state_session {
    const char *access_token;
    const char *device_id;
    const char *user_id;    /* as the homeserver returned it at login */
};

/*
 * s is NULL when nothing is stored (status PARLEY_OK).  A save replaces
 * the whole hash in one EVAL (a field that is NULL or "" is not written,
 * so a device id from an older session does not survive).  The load
 * callbacks must not be NULL (PARLEY_ERR_OTHER without fn); the save and
 * delete callbacks may be.  A next_batch that is NULL or "" is
 * PARLEY_ERR_OTHER without fn.
 */
typedef void state_session_fn(int status, const struct state_session *s,
                              void *privdata);
int state_session_load(struct store *st, const char *account,
                       state_session_fn *fn, void *privdata);
int state_session_save(struct store *st, const char *account,
                       const struct state_session *s, state_done_fn *fn,
                       void *privdata);
/* Forget a session the homeserver refused (M_UNKNOWN_TOKEN). */
int state_session_delete(struct store *st, const char *account,
                         state_done_fn *fn, void *privdata);

/* sync:<account>; next_batch NULL when none is stored. */
typedef void state_sync_fn(int status, const char *next_batch,
                           void *privdata);
int state_sync_load(struct store *st, const char *account,
                    state_sync_fn *fn, void *privdata);
int state_sync_save(struct store *st, const char *account,
                    const char *next_batch, state_done_fn *fn,
                    void *privdata);

/* ---- leases and fencing (state_lease.c) --------------------------------- */

/*
 * A lease says which instance holds a platform connection (lease.h has
 * the timers around it).  lease:<platform>:<account> holds the owner's
 * instance name with a TTL; every acquisition also INCRs
 * fence:<platform>:<account>, which never expires, so a later holder
 * always has a larger token than any earlier one.
 *
 * acquire: SET NX PX in one script with the INCR.  held 1: token is the
 * new fencing token.  held 0: holder is the current owner's name (or
 * NULL) and pttl_ms how long its lease still runs (-1 unknown).
 */
typedef void state_lease_fn(int status, int held, long long token,
                            const char *holder, long long pttl_ms,
                            void *privdata);
int state_lease_acquire(struct store *st, const char *platform,
                        const char *account, const char *owner, int ttl_ms,
                        state_lease_fn *fn, void *privdata);
/* Extend the lease to ttl_ms from now if owner still holds it with this
 * token: fresh 1 renewed, 0 lost (another holder, or expired). */
int state_lease_renew(struct store *st, const char *platform,
                      const char *account, const char *owner,
                      long long token, int ttl_ms, state_claim_fn *fn,
                      void *privdata);
/* Give the lease up (shutdown) if owner still holds it; fn may be NULL. */
int state_lease_release(struct store *st, const char *platform,
                        const char *account, const char *owner,
                        state_done_fn *fn, void *privdata);

/*
 * Fencing: the writes that matter for a leased account (state_job_record,
 * state_job_answered, state_job_done, state_sync_save) carry the token
 * this process holds for it and Redis refuses them (a script compares
 * fence:<platform>:<account>) once a newer holder has taken the account
 * over: the callback gets PARLEY_ERR_STATE, the refusal is logged and
 * counted (parley_fencing_refused_total).  The table is per process (one
 * instance name per process); loop thread only.  token 0 forgets the
 * account; a lost lease keeps its old token on purpose, so that writes
 * still in flight from before the loss are refused.  Accounts with no
 * entry (no leases configured, console, web) are written unfenced.
 * Returns PARLEY_OK, PARLEY_ERR_TOO_LARGE (over STATE_FENCES_MAX
 * accounts) or PARLEY_ERR_OOM.
 */
#define STATE_FENCES_MAX 64
int state_fence_set(const char *platform, const char *account,
                    long long token);
/* The token held for (platform, account), 0 when none. */
long long state_fence_get(const char *platform, const char *account);
/* Forget every entry (tests, shutdown). */
void state_fence_clear(void);

/* ---- Matrix end-to-end encryption (state_crypto.c) ---------------------- */

/*
 * The Matrix device's crypto store, under crypto:<account>:
 *
 *   account                      string  Olm account pickle
 *   olm:<curve key>              hash    Olm session id -> pickle; _out
 *                                        -> the session id used to send
 *                                        to that device (until wedged)
 *   megolm_in:<room>:<sid>       hash    struct state_megolm_in
 *   megolm_out:<room>            hash    struct state_megolm_out
 *   megolm_shared:<room>         set     "<user> <device>" holding the
 *                                        current outbound session
 *   megolm_idx:<sid>             hash    message index -> event id
 *   devlists                     hash    user -> that user's devices as
 *                                        /keys/query gave them (JSON
 *                                        object device id -> device_keys,
 *                                        signatures checked at use); a
 *                                        user missing is stale or unknown
 *                                        and queried before a key share
 *   utd                          hash    event id -> JSON record of a
 *                                        room event no key decrypted yet
 *                                        (room, sender, session, cipher,
 *                                        first seen): retried when keys
 *                                        arrive, explained once after the
 *                                        adapter's utd_timeout_ms
 *
 * Pickles are libolm's, encrypted and authenticated with the pickle key
 * from crypto_key_env, which is never stored; nothing here holds key
 * material in the clear.  No key has a TTL: losing them means a new
 * device, and old encrypted messages can no longer be read (README).
 * Session ids are unpadded base64 (no ':'), so the keys are unambiguous
 * although room and user ids contain ':'.
 */

/* value NULL when the key does not exist (status PARLEY_OK). */
typedef void state_value_fn(int status, const char *value, void *privdata);
/* name/value pairs of a hash; n 0 for none. */
struct state_pair {
    const char *name;
    const char *value;
};
typedef void state_pairs_fn(int status, const struct state_pair *pairs,
                            size_t n, void *privdata);
/* Members of a set, in no order. */
typedef void state_list_fn(int status, const char *const *items, size_t n,
                           void *privdata);

int state_crypto_account_load(struct store *st, const char *account,
                              state_value_fn *fn, void *privdata);
int state_crypto_account_save(struct store *st, const char *account,
                              const char *pickle, state_done_fn *fn,
                              void *privdata);

/* Every Olm session with the device whose identity key is curve_key:
 * (session id, pickle) pairs. */
int state_crypto_olm_load(struct store *st, const char *account,
                          const char *curve_key, state_pairs_fn *fn,
                          void *privdata);
/*
 * Store one Olm session.  With account_pickle non-NULL the account is
 * written in the same MULTI: a session made from a pre-key message used
 * up a one-time key, and a crash between two writes would either reuse
 * that key or lose the session.  fn may be NULL.
 */
int state_crypto_olm_save(struct store *st, const char *account,
                          const char *curve_key, const char *session_id,
                          const char *pickle, const char *account_pickle,
                          state_done_fn *fn, void *privdata);

struct state_megolm_in {
    const char *pickle;
    const char *sender_key;     /* curve25519 of the device that shared it */
    const char *sender_ed25519; /* its claimed signing key; may be NULL */
};
/* s NULL when no such session is stored. */
typedef void state_megolm_in_fn(int status, const struct state_megolm_in *s,
                                void *privdata);
int state_crypto_megolm_in_load(struct store *st, const char *account,
                                const char *room_id, const char *session_id,
                                state_megolm_in_fn *fn, void *privdata);
/* pickle and sender_key required.  fn may be NULL. */
int state_crypto_megolm_in_save(struct store *st, const char *account,
                                const char *room_id, const char *session_id,
                                const struct state_megolm_in *s,
                                state_done_fn *fn, void *privdata);

struct state_megolm_out {
    const char *pickle;
    long long created_ms;       /* unix ms, for rotation_period_ms */
};
typedef void state_megolm_out_fn(int status,
                                 const struct state_megolm_out *s,
                                 void *privdata);
int state_crypto_megolm_out_load(struct store *st, const char *account,
                                 const char *room_id,
                                 state_megolm_out_fn *fn, void *privdata);
/* Store the room's outbound session (after every message: its index
 * moved on).  fn may be NULL. */
int state_crypto_megolm_out_save(struct store *st, const char *account,
                                 const char *room_id,
                                 const struct state_megolm_out *s,
                                 state_done_fn *fn, void *privdata);
/* Rotation: the outbound session and its share list go, in one MULTI. */
int state_crypto_megolm_out_discard(struct store *st, const char *account,
                                    const char *room_id, state_done_fn *fn,
                                    void *privdata);
int state_crypto_megolm_shared_load(struct store *st, const char *account,
                                    const char *room_id, state_list_fn *fn,
                                    void *privdata);
/* holders: "<user> <device>" strings, n > 0 (at most 4096). */
int state_crypto_megolm_shared_add(struct store *st, const char *account,
                                   const char *room_id,
                                   const char *const *holders, size_t n,
                                   state_done_fn *fn, void *privdata);

/*
 * Replay check for a decrypted Megolm message: claim (session, index) for
 * event_id.  fresh is 1 when this index was unused or already belongs to
 * this event id (a redelivery), 0 when another event used it (a replay:
 * the spec says to refuse it).
 */
int state_crypto_megolm_index_claim(struct store *st, const char *account,
                                    const char *session_id,
                                    unsigned long index,
                                    const char *event_id,
                                    state_claim_fn *fn, void *privdata);

/*
 * Device lists, one hash for the account.  load: values[i] is user[i]'s
 * JSON, NULL when not cached (n users, 0 < n <= 4096).  save: one user's
 * list.  stale: forget users' lists (device_lists.changed/left), or every
 * list when users is NULL.  fn may be NULL for save and stale.
 */
int state_crypto_devlists_load(struct store *st, const char *account,
                               const char *const *users, size_t n,
                               state_list_fn *fn, void *privdata);
int state_crypto_devlists_save(struct store *st, const char *account,
                               const char *user_id, const char *devices,
                               state_done_fn *fn, void *privdata);
int state_crypto_devlists_stale(struct store *st, const char *account,
                                const char *const *users, size_t n,
                                state_done_fn *fn, void *privdata);

/*
 * Olm sessions reused for sending: for each of n identity keys the
 * pickle of the session its _out names (values[i] NULL: none), in one
 * round trip.  save_out stores a session and makes it the one to send
 * with (fn may be NULL).  wedged forgets _out (the device could not
 * decrypt us, or we it): the next share makes a new session; fire and
 * forget.
 */
int state_crypto_olm_out_load(struct store *st, const char *account,
                              const char *const *curve_keys, size_t n,
                              state_list_fn *fn, void *privdata);
int state_crypto_olm_save_out(struct store *st, const char *account,
                              const char *curve_key, const char *session_id,
                              const char *pickle, state_done_fn *fn,
                              void *privdata);
int state_crypto_olm_wedged(struct store *st, const char *account,
                            const char *curve_key);

/* Undecryptable room events kept per account: a flood of them (a broken
 * sender) must not grow Redis without bound; past this they are not kept
 * (and so neither retried nor explained). */
#define STATE_UTD_MAX 1000
/*
 * Keep record (opaque JSON, no key material) for event_id unless one is
 * kept already: fresh 1 when added, 0 when it was there (the first stays);
 * PARLEY_ERR_TOO_LARGE when STATE_UTD_MAX are kept.
 */
int state_crypto_utd_add(struct store *st, const char *account,
                         const char *event_id, const char *record,
                         state_claim_fn *fn, void *privdata);
/* Every kept record: (event id, record) pairs. */
int state_crypto_utd_load(struct store *st, const char *account,
                          state_pairs_fn *fn, void *privdata);
/* Forget event_id's record (decrypted, or explained).  fn may be NULL. */
int state_crypto_utd_del(struct store *st, const char *account,
                         const char *event_id, state_done_fn *fn,
                         void *privdata);

/* ---- shared work (state_work.c) ----------------------------------------- */

/*
 * With ha.share_work on, a chat job's model step may run on any instance
 * (src/work.h).  Two kinds of Redis Streams, each read by a consumer
 * group, the consumer being the instance name:
 *
 *   work:jobs                          entries {id, owner}: job:<id> to
 *                                      answer; group "workers"
 *   work:replies:<platform>:<account>  entries {id, answer, notice}: an
 *                                      answer for whoever holds that
 *                                      connection; group "owners"
 *
 * Below, platform NULL names work:jobs (account is then ignored), else
 * the replies stream of that connection.  Both streams are capped
 * (XADD MAXLEN ~ STATE_WORK_STREAM_MAX): an entry is a few dozen bytes,
 * and the job records, not the streams, are what a restart resumes from.
 */
#define STATE_WORK_STREAM_MAX 100000

/* One stream entry.  Strings borrowed, valid during the callback; a
 * field missing from the entry is NULL. */
struct state_work_entry {
    const char *entry_id;   /* the stream's id, for XACK */
    const char *job_id;     /* job:<id> */
    const char *owner;      /* work:jobs: the instance that queued it */
    const char *answer;     /* replies: the text to send */
    int notice;             /* replies: service text, not the model */
};
/* entries n >= 0; next is XAUTOCLAIM's cursor ("0-0" when the pending
 * list was walked to its end), NULL for a plain read.  A stream or group
 * that does not exist (Redis restarted empty) is PARLEY_ERR_STATE:
 * create the groups again. */
typedef void state_work_entries_fn(int status, const char *next,
                                   const struct state_work_entry *entries,
                                   size_t n, void *privdata);

/* XGROUP CREATE ... 0 MKSTREAM: a new group reads the stream from its
 * start (jobs queued before any worker existed are not lost); a group
 * that exists already is PARLEY_OK.  fn may be NULL. */
int state_work_group_create(struct store *st, const char *platform,
                            const char *account, state_done_fn *fn,
                            void *privdata);
/* XREADGROUP COUNT count, new entries only (no BLOCK: see work.c). */
int state_work_read(struct store *st, const char *platform,
                    const char *account, const char *consumer, size_t count,
                    state_work_entries_fn *fn, void *privdata);
/* XAUTOCLAIM: take up to count entries idle for min_idle_ms from other
 * consumers of the group (a worker or owner that died), from cursor
 * ("0-0" to start). */
int state_work_claim(struct store *st, const char *platform,
                     const char *account, const char *consumer,
                     long long min_idle_ms, const char *cursor, size_t count,
                     state_work_entries_fn *fn, void *privdata);
/* XACK one entry; fire and forget. */
int state_work_ack(struct store *st, const char *platform,
                   const char *account, const char *entry_id);
/* Still working: XCLAIM JUSTID to ourselves resets the idle time of our
 * own work:jobs entries, so a slow answer is not taken over; fire and
 * forget; n > 0. */
int state_work_touch(struct store *st, const char *consumer,
                     const char *const *entry_ids, size_t n);

/*
 * Queue a job for the workers: write job:<job->event_id> from job when no
 * record exists (platforms without replay keep none until now; ttl_s as
 * state_job_record) and XADD {id, owner} to work:jobs, in one EVAL.
 */
int state_work_submit(struct store *st, const struct state_job *job,
                      int ttl_s, const char *owner, state_done_fn *fn,
                      void *privdata);

/* job:<id> as it is, done or not; job NULL when there is no record. */
typedef void state_work_job_fn(int status, const struct state_job *job,
                               void *privdata);
int state_work_job_load(struct store *st, const char *job_id,
                        state_work_job_fn *fn, void *privdata);

/* A worker's answer to one job. */
struct state_work_answer {
    const char *job_id;
    const char *entry_id;       /* work:jobs entry to XACK; NULL: none */
    const char *platform;       /* whose replies stream gets the answer */
    const char *account;
    const char *room_key;       /* ctx:<room_key>, room:<room_key> */
    const char *answer;
    int notice;
    const struct turn *turns;   /* to append; NULL/0: none (errors) */
    size_t n_turns;
    const struct config_context *ctx;
    long long epoch;            /* as state_history_append */
};
/*
 * Finish a job in one EVAL: while job:<id> is still pending, append the
 * turns (epoch checked as state_history_append) and store the answer
 * (state answered); then XADD the job's answer, this one or the one
 * stored by whoever was first, to the replies stream; then XACK the
 * entry.  So a job retried after a worker died is appended and answered
 * once.  answered: 1 this call answered it, 0 it was answered before
 * (the stored answer went out), -1 no record (only acked).
 */
typedef void state_work_finish_fn(int status, int answered, void *privdata);
int state_work_finish(struct store *st, const struct state_work_answer *a,
                      state_work_finish_fn *fn, void *privdata);

/* XINFO GROUPS work:jobs: lag (entries not yet read by the workers, -1
 * when the server does not say) and pending (read, not acked). */
typedef void state_work_info_fn(int status, long long lag,
                                long long pending, void *privdata);
int state_work_info(struct store *st, state_work_info_fn *fn,
                    void *privdata);
/* ---- streamed Matrix answers (state_stream.c) ------------------------ */

/*
 * stream:<account>:<txn>: what a streamed answer (the router's txn id)
 * has put in its room: STATE_STREAM_SENDING while its first event may be
 * on the way, then that event's id.  A restart that finds one finishes
 * the answer with one edit instead of a second message.  Load: value
 * NULL when nothing is stored.  Save: SET EX ttl_s (> 0), fn may be NULL.
 * Forget: DEL, fire and forget.
 */
#define STATE_STREAM_SENDING "sending"
int state_stream_load(struct store *st, const char *account,
                      const char *txn, state_value_fn *fn, void *privdata);
int state_stream_save(struct store *st, const char *account,
                      const char *txn, const char *value, int ttl_s,
                      state_done_fn *fn, void *privdata);
int state_stream_forget(struct store *st, const char *account,
                        const char *txn);

#endif
