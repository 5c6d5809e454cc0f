/*
 * Helpers shared by the state_*.c files (not part of the API: callers use
 * state.h).  They turn hiredis replies into parley status codes in one
 * place, so every state call maps a dropped connection, an error reply and
 * a key of the wrong type the same way.
 */
#ifndef PARLEY_STATE_PRIVATE_H
#define PARLEY_STATE_PRIVATE_H

#include <stddef.h>

#include "store.h"

/* Room keys and event ids in log lines are escaped (\xNN) and cut to this
 * many bytes: they come from chat platforms and may hold control bytes. */
#define STATE_LABEL_MAX 160

/*
 * Status for a reply: PARLEY_ERR_IO for NULL (connection dropped or
 * store_close ran), PARLEY_ERR_PROTOCOL for a WRONGTYPE error (also when a
 * Lua script passes it on), PARLEY_ERR_OTHER for any other error reply,
 * PARLEY_OK otherwise (the caller checks the type it expects).  Errors are
 * logged at WARN with what (the command) and label (the key's name).
 */
int state_reply_status(const struct redisReply *rep, const char *what,
                       const char *label);
/* The same status without the log line, for fire-and-forget writes, whose
 * failures are logged at debug level only (state.h). */
int state_reply_code(const struct redisReply *rep);

/* The string value of field name in an HGETALL reply, or NULL. */
const char *state_hash_field(const struct redisReply *rep,
                             const char *name);

/* A decimal integer field; 0 when absent or not a number (a hand-edited
 * or foreign value must not stop the bot). */
long long state_parse_ll(const char *s);

/* Printable form of s for log lines, cut at STATE_LABEL_MAX bytes. */
void state_label(char *buf, size_t len, const char *s);

/*
 * store_command_argv with NUL-terminated argv and a reply callback that
 * only logs failures at debug level: for fire-and-forget writes, whose
 * callers asked for no callback.  what names the write in the log line.
 * Returns as store_command_argv.
 */
int state_send_forget(struct store *st, const char *what, int argc,
                      const char **argv);

/* Send MULTI, the n commands, then EXEC with fn/privdata as its callback,
 * without yielding to the loop; nothing else can interleave on the one
 * connection.  When a send fails half-way, DISCARD is sent so the shared
 * connection never stays inside a transaction, and the error returned (fn
 * is then never called). */
struct state_cmd {
    int argc;
    const char **argv;      /* NUL-terminated strings */
};
int state_send_multi(struct store *st, const struct state_cmd *cmds,
                     size_t n, store_reply_fn *fn, void *privdata);

/*
 * Job records (state_job.c), shared with the work streams (state_work.c),
 * which write and read the same job:<id> hash.  state_job_valid: job has
 * an event id and a kind with a stored name.  state_job_fields appends
 * the fields every new record starts with (state pending, kind, the
 * event's names and text, is_admin, ts) as name/value pairs to argv at
 * argc, leaving out unset strings, and returns the new argc: argv needs
 * room for STATE_JOB_FIELDS_MAX more entries.  ts (tslen >= 24) receives
 * the record's time as text (job->ts, or now when 0) and must live as
 * long as argv.  state_job_read fills the same fields, and answer and
 * notice, of job from an HGETALL reply (borrowed from rep); state, kind,
 * event id and attachments are the caller's, as their rules differ.
 */
struct state_job;
#define STATE_JOB_FIELDS_MAX (2 * 12)
int state_job_valid(const struct state_job *job);
int state_job_fields(const char **argv, int argc, const struct state_job *job,
                     char *ts, size_t tslen);
void state_job_read(const struct redisReply *rep, struct state_job *job);

/*
 * Fencing helpers (state_lease.c).  state_fence_args: when this process
 * holds a fencing token for (platform, account), write the prefixed
 * fence key and the token as text and return 1; 0 when the account is
 * not fenced; a negative status when the key does not fit.  For writes
 * that know only an event id (job updates), state_fence_nth gives entry
 * i of the table: its id "<platform>\n<account>" (borrowed until the
 * table changes), fence key and token.  A script refuses a stale write
 * with an error reply starting "FENCED", which state_reply_code maps to
 * PARLEY_ERR_STATE.
 */
int state_fence_args(struct store *st, const char *platform,
                     const char *account, char *key, size_t keylen,
                     char *token, size_t toklen);
size_t state_fence_count(void);
int state_fence_nth(struct store *st, size_t i, const char **id,
                    char *key, size_t keylen, char *token, size_t toklen);

#endif
