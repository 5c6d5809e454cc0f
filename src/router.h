/*
 * The router: every decision between an incoming event and an answer.
 * Drops duplicates (seen:<event id>, SET NX EX), ignores the bot itself
 * and other bots, runs commands, applies per-user limits, keeps replies in
 * one room in order (a per-room queue) while rooms proceed in parallel,
 * builds the prompt from the room's history and asks the LLM, then stores
 * the new turns and sends the answer through the adapter the event came
 * from.  A failed completion gives a short "temporarily unavailable" reply
 * and leaves the history as it was.
 */
#ifndef PARLEY_ROUTER_H
#define PARLEY_ROUTER_H

#include <stddef.h>

struct router;
struct adapter;
struct config;
struct store;
struct llm;
struct loop;
struct event;

#define ROUTER_FALLBACK_TEXT \
    "The service is temporarily unavailable, please try again in a moment."

/* Per-room queue bound: events beyond it are answered with a busy note. */
#define ROUTER_ROOM_QUEUE_MAX 32
/* Longest user text passed to the model; longer text is cut. */
#define ROUTER_TEXT_MAX (16 * 1024)

/* cfg, store, llm and loop are borrowed and must outlive the router. */
int router_create(struct router **out, const struct config *cfg,
                  struct store *st, struct llm *llm, struct loop *loop);
/* Register an adapter; the router does not own it. */
int router_add_adapter(struct router *r, struct adapter *ad);
/* Hand over one event (copied).  Never fails from the caller's view:
 * problems are logged and, where useful, answered. */
void router_submit(struct router *r, const struct event *ev);
/*
 * For platforms that can replay (Matrix): like router_submit, but
 * accepted(status) runs once the event is durable, i.e. its job record
 * (job:<event id>) is in Redis, or at once when nothing needs recording
 * (not addressed, duplicate).  A non-OK status means Redis is down: the
 * caller must not advance its sync position and should offer the event
 * again later.  accepted may run before this returns.
 */
typedef void router_accepted_fn(int status, void *privdata);
void router_submit_durable(struct router *r, const struct event *ev,
                           router_accepted_fn *accepted, void *privdata);
/*
 * Take up the jobs a previous run left unfinished (job:<id> records not
 * "done"): questions not yet answered are asked again; answers stored but
 * maybe not sent are sent again with the same txn id, so the platform can
 * drop a duplicate.  Call once, when the store is first up, after the
 * adapters are registered.
 */
void router_resume(struct router *r);
/* With leases (ha.enabled), router_resume takes up only the jobs of
 * adapters without a lease; this takes up one adapter's, when this
 * instance has just acquired its account (a takeover resumes what the
 * previous holder left). */
void router_resume_adapter(struct router *r, struct adapter *only);
/* Use a new config (SIGHUP); borrowed like the first. */
void router_reload(struct router *r, const struct config *cfg);
/* Stop taking new events; jobs already accepted go on (SIGTERM). */
void router_drain(struct router *r);
/* Before closing the store and llm: callbacks that still arrive stop
 * their job instead of going on; router_free then releases every job. */
void router_close(struct router *r);
/* Rooms with a job queued or running. */
size_t router_rooms_active(const struct router *r);
/* Events accepted and not yet fully answered. */
size_t router_pending(const struct router *r);
void router_free(struct router *r);

/* Pure: split "!name arg..." into name (without '!', lower-cased, at most
 * namelen-1 bytes) and *arg (leading blanks skipped, "" when none).
 * Returns 1 for a command, 0 for ordinary text. */
int router_parse_command(const char *text, char *name, size_t namelen,
                         const char **arg);

#endif
