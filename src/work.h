/*
 * Shared work (ha.share_work): a chat job's model step runs on whichever
 * instance has room for it, while the answer is sent by the instance that
 * holds the platform connection (the owner).  The owner's job stays
 * "running" in its room (room.c), so per-sender order and the per-room
 * limits are unchanged; only the think part (settings, history, model,
 * append) moves:
 *
 *   owner:  room.c starts the job -> job:<id> + XADD work:jobs
 *   worker: XREADGROUP workers -> load job:<id> -> job.c's steps without
 *           an adapter -> one EVAL: append + answered + XADD
 *           work:replies:<platform>:<account> + XACK
 *   owner:  XREADGROUP owners on the replies of its connections -> the
 *           adapter sends -> job:<id> done
 *
 * Every instance runs workers, bounded by its own llm.max_concurrent.  A
 * worker that dies leaves its entries pending in the group; after
 * ha.claim_idle_ms another takes them over (XAUTOCLAIM), and the finish
 * script's job-state check keeps the retried job from being appended or
 * answered twice.  Living workers reset their entries' idle time while the
 * model works, so a slow answer is not taken over.  Redis commands are in
 * state_work.c; timers come from loop.h.
 */
#ifndef PARLEY_WORK_H
#define PARLEY_WORK_H

struct work;
struct router;
struct store;
struct loop;

/*
 * Attach shared work to r: chat jobs that room.c starts go to the stream
 * instead of the model (r->run_job), and this instance works for all.
 * r, st, loop and me (the instance name, instance.h) are borrowed and
 * must outlive the work.  Nothing is read until work_start.  Returns
 * PARLEY_OK or PARLEY_ERR_OOM.
 */
int work_create(struct work **out, struct router *r, struct store *st,
                struct loop *loop, const char *me);
/* Start polling the streams (creating the groups once Redis is up). */
void work_start(struct work *w);
/* Before store_close: timers go, callbacks still pending do nothing.
 * Memory stays for those callbacks until work_free. */
void work_stop(struct work *w);
/* After the loop has run its last callbacks; NULL is fine. */
void work_free(struct work *w);

#endif
