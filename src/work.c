/*
 * The shared-work consumer loop (work.h has the flow): the owner side
 * queues chat jobs and sends the answers that come back; the worker side
 * reads jobs, runs job.c's think steps without an adapter, and hands the
 * answer back through Redis; a slower timer takes over the jobs of
 * workers that went quiet, keeps this worker's own jobs from looking
 * quiet, and samples the stream's lag for /metrics.
 *
 * Why polling: hiredis async has one connection, and Redis answers a
 * client's commands in order, so an XREADGROUP BLOCK on the shared
 * connection would hold every history load and job write behind it for
 * the whole block.  A dedicated blocking connection per stream (the jobs
 * and one per connection's replies) would need a second store with its
 * own reconnect and shutdown for each.  Instead the reads carry no BLOCK
 * and are polled: again at once while entries keep coming, backing off
 * to WORK_POLL_MAX_MS when idle, and kicked at once when this instance
 * queues a job or finishes one.  The cost is at most WORK_POLL_MAX_MS of
 * latency on an idle system and a few cheap commands per poll.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter.h"
#include "config.h"
#include "context.h"
#include "dict.h"
#include "event.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"
#include "router.h"
#include "router_job.h"
#include "state.h"
#include "status.h"
#include "store.h"
#include "work.h"

/* Idle polling backs off from the first to the second. */
#define WORK_POLL_MIN_MS 1
#define WORK_POLL_MAX_MS 50
/* Replies taken per read and connection: sending is cheap. */
#define WORK_REPLIES_BATCH 64
/* Entries touched per keep-alive command (state_work_touch's cap). */
#define WORK_TOUCH_MAX 256
/* The claim timer runs at a third of ha.claim_idle_ms, so a living
 * worker touches its entries twice before anyone may take them. */
#define WORK_CLAIM_DIVISOR 3

/* One connection's replies stream (privdata of its reads). */
struct work_feed {
    struct work *w;
    size_t index;               /* in r->adapters */
    char cursor[64];            /* XAUTOCLAIM cursor */
};

struct work {
    struct router *r;
    struct store *st;
    struct loop *loop;
    const char *me;
    struct loop_timer *poll_timer, *claim_timer;
    uint64_t backoff_ms;
    int ready;                  /* groups exist */
    int was_ready;              /* they did before: Redis came back */
    int setting_up;             /* group creations in flight */
    int setup_failed;
    int reads;                  /* poll reads in flight */
    int got;                    /* this poll brought entries */
    int stopped;
    size_t running;             /* worker jobs, from read to finish */
    unsigned long long seq;     /* made-up job ids */
    struct dict *waiting;       /* job id -> owner's struct job */
    char cursor[64];            /* XAUTOCLAIM cursor on work:jobs */
    struct work_feed feeds[ROUTER_MAX_ADAPTERS];
};

/* A work:jobs entry whose job record is being read. */
struct work_load {
    struct work *w;
    char *entry;
    char *owner;
};

static void work_poll_later(struct work *w);
static void work_poll_now(struct work *w);

static size_t work_free_slots(const struct work *w)
{
    size_t max = w->r->cfg->llm.max_concurrent > 0 ?
                 (size_t)w->r->cfg->llm.max_concurrent : 1;

    return w->running < max ? max - w->running : 0;
}

/* Whether to read more jobs.  While draining, only as long as this
 * instance still waits for answers of its own: with no other instance
 * running, nobody else would answer them. */
static int work_wants_jobs(const struct work *w)
{
    if (w->r->closing)
        return 0;
    return !w->r->draining || dict_size(w->waiting) > 0;
}

/* ---- owner side: queue, then send what comes back ---------------------- */

/* Queue job (job->work_id set) on work:jobs, writing its record when
 * there is none. */
static int work_submit(struct work *w, struct job *job, state_done_fn *fn)
{
    const struct event *ev = job->ev;
    struct state_job rec;

    memset(&rec, 0, sizeof(rec));
    rec.event_id = job->work_id;
    rec.kind = STATE_JOB_CHAT;
    rec.platform = ev->platform;
    rec.account = ev->account;
    rec.room = ev->room;
    rec.sender = ev->sender;
    rec.sender_name = ev->sender_name;
    rec.text = ev->text;
    rec.thread_id = ev->thread_id;
    rec.reply_to = ev->reply_to;
    rec.is_admin = ev->is_admin;
    return state_work_submit(w->st, &rec, w->r->cfg->redis.dedupe_ttl_s,
                             w->me, fn, job);
}

static void work_resubmitted(int status, void *privdata)
{
    struct job *job = privdata;

    if (JOB_CLOSING(job) || job->r->work->stopped)
        return;
    if (status == PARLEY_OK)
        job->durable = 1;
}

static void work_resubmit_one(const char *key, void *value, void *arg)
{
    struct work *w = arg;

    (void)key;
    if (work_submit(w, value, work_resubmitted) != PARLEY_OK)
        log_debug("work: %s not queued again; next time Redis is back",
                  key);
}

/*
 * Redis went away and came back: a queued entry may be gone with it (a
 * restart without persistence), and a submit cut off by the drop may or
 * may not have landed.  Queue every job still waiting once more; a job
 * that ends up twice in the stream is answered once (the finish
 * script's job-state check), and the owner sends the first answer only.
 */
static void work_resubmit(struct work *w)
{
    if (dict_size(w->waiting) == 0)
        return;
    log_info("work: Redis is back; queueing %zu waiting job(s) again",
             dict_size(w->waiting));
    dict_foreach(w->waiting, work_resubmit_one, w);
}

static void work_submitted(int status, void *privdata)
{
    struct job *job = privdata;
    struct work *w = job->r->work;

    if (JOB_CLOSING(job) || w->stopped)
        return;
    if (status == PARLEY_ERR_IO) {
        /* The connection dropped: the entry may be in the stream.
         * Answering here could store the exchange twice, so the job
         * waits and is queued again once Redis is back. */
        log_room(LOG_LEVEL_INFO, job->ev->platform, job->ev->room,
                 "work: Redis dropped while queueing %s; queueing it again "
                 "when it is back", job->work_id);
        job_typing(job, 1);
        return;
    }
    if (status != PARLEY_OK) {
        /* Nobody else will see it: answer here, as without sharing. */
        log_room(LOG_LEVEL_WARN, job->ev->platform, job->ev->room,
                 "work: cannot queue a job (%s), answering here",
                 parley_status_name(status));
        dict_delete(w->waiting, job->work_id);
        job_run(job);
        return;
    }
    job->durable = 1;           /* job:<id> exists: done after the send */
    job_typing(job, 1);
    work_poll_now(w);
}

/* r->run_job with sharing on: chat jobs go to the stream, the rest (and
 * anything while Redis is away) runs here as before.  A question with a
 * picture stays here too: the picture is fetched through the adapter
 * that holds the connection, and a worker elsewhere has none. */
static void work_share(struct job *job)
{
    struct router *r = job->r;
    struct work *w = r->work;
    const struct event *ev = job->ev;
    char made[EVENT_ROOM_KEY_MAX];
    const char *id = ev->event_id;

    if (job->kind != JOB_CHAT || !w->ready || w->stopped || job->work_id ||
        ev->attachment) {
        job_run(job);
        return;
    }
    if (!id || !*id) {
        /* IRC and the console have no ids; the record needs one, unique
         * across instances and restarts (the name has a random part). */
        snprintf(made, sizeof(made), "%s.%llu", w->me, ++w->seq);
        id = made;
    }
    job->work_id = strdup(id);
    if (!job->work_id || dict_get(w->waiting, id) ||
        dict_set(w->waiting, id, job) != PARLEY_OK) {
        /* Out of memory, or the same id twice in flight (a replay): the
         * local path is the safe one. */
        free(job->work_id);
        job->work_id = NULL;
        job_run(job);
        return;
    }
    if (work_submit(w, job, work_submitted) != PARLEY_OK) {
        dict_delete(w->waiting, job->work_id);
        free(job->work_id);
        job->work_id = NULL;
        job_run(job);
    }
}

/* An answer for one of our connections.  Acked before the send: from
 * here job:<id> (answered) is the truth, and a restart resends from it. */
static void work_reply(struct work *w, struct adapter *ad,
                       const struct state_work_entry *e)
{
    struct job *job = dict_get(w->waiting, e->job_id);

    state_work_ack(w->st, ad->ops->type, ad->account, e->entry_id);
    if (!job) {
        /* A second answer to a retried job, or one a restart resends. */
        log_debug("work: answer to %s, which nothing waits for, dropped",
                  e->job_id);
        return;
    }
    dict_delete(w->waiting, e->job_id);
    free(job->answer);
    job->answer = e->answer ? strdup(e->answer) : NULL;
    job->notice = e->notice;
    job_send(job);              /* NULL answer: the fallback text */
}

static void work_replies_read(int status, const char *next,
                              const struct state_work_entry *entries,
                              size_t n, void *privdata)
{
    struct work_feed *feed = privdata;
    struct work *w = feed->w;
    struct adapter *ad;

    (void)next;
    w->reads--;
    if (w->stopped || w->r->closing)
        return;
    if (status == PARLEY_ERR_STATE)
        w->ready = 0;           /* the group is gone: make it again */
    ad = w->r->adapters[feed->index];
    for (size_t i = 0; i < n; i++)
        work_reply(w, ad, &entries[i]);
    if (n > 0)
        w->got = 1;
    if (w->reads == 0)
        work_poll_later(w);
}

/* ---- worker side: think, then hand the answer back --------------------- */

static void work_job_end(struct work *w)
{
    if (w->running > 0)
        w->running--;
    work_poll_now(w);
}

static void work_finished(int status, int answered, void *privdata)
{
    struct job *job = privdata;
    struct work *w = job->r->work;

    if (JOB_CLOSING(job) || w->stopped)
        return;
    if (status != PARLEY_OK)
        /* The entry stays pending: after ha.claim_idle_ms a worker
         * (maybe this one) tries again. */
        log_room(LOG_LEVEL_WARN, job->ev->platform, job->ev->room,
                 "work: answer to %s not handed back: %s", job->work_id,
                 parley_status_name(status));
    else if (answered == 1 && job->work_owner &&
             strcmp(job->work_owner, w->me) != 0)
        metrics_work_ran_for_others();
    job_free(job);
    work_job_end(w);
}

/* job->deliver: the model answered (or failed: turns NULL). */
static void work_deliver(struct job *job, const struct turn *turns, size_t n)
{
    struct work *w = job->r->work;
    struct state_work_answer a;
    int result;

    memset(&a, 0, sizeof(a));
    a.job_id = job->work_id;
    a.entry_id = job->work_entry;
    a.platform = job->ev->platform;
    a.account = job->ev->account;
    a.room_key = job->work_room->key;
    a.answer = job->answer ? job->answer : ROUTER_FALLBACK_TEXT;
    a.notice = job->answer ? job->notice : 1;
    a.turns = turns;
    a.n_turns = turns ? n : 0;
    a.ctx = &job->r->cfg->context;
    a.epoch = job->epoch;
    result = state_work_finish(w->st, &a, work_finished, job);
    if (result != PARLEY_OK) {
        log_room(LOG_LEVEL_WARN, job->ev->platform, job->ev->room,
                 "work: answer to %s not handed back: %s", job->work_id,
                 parley_status_name(result));
        job_free(job);
        work_job_end(w);
    }
}

/* Whether one of our worker jobs is on this entry already (XAUTOCLAIM
 * also returns our own entries when they idled). */
static int work_entry_running(const struct work *w, const char *entry)
{
    for (const struct job *j = w->r->jobs; j; j = j->all_next)
        if (j->work_entry && strcmp(j->work_entry, entry) == 0)
            return 1;
    return 0;
}

static void work_load_free(struct work_load *ld)
{
    free(ld->entry);
    free(ld->owner);
    free(ld);
}

/* Start the think steps for a record still pending. */
static int work_think(struct work *w, struct work_load *ld,
                      const struct state_job *rec)
{
    char key[EVENT_ROOM_KEY_MAX];
    struct event_attachment att;
    struct room *room;
    struct event ev;
    struct job *job;

    /* No attachment: questions with a picture are never shared
     * (work_share), and state_work_job_load reads none. */
    job_record_event(rec, &ev, &att);
    if (event_room_key(&ev, key, sizeof(key)) != PARLEY_OK)
        return PARLEY_ERR_TOO_LARGE;
    room = room_new(key);
    if (!room)
        return PARLEY_ERR_OOM;
    job = job_create(w->r, NULL, &ev, JOB_CHAT);
    if (!job) {
        free(room);
        return PARLEY_ERR_OOM;
    }
    job->work_room = room;
    job->room = room;           /* resets 0 = job->resets: current */
    job->work_id = strdup(rec->event_id);
    job->work_entry = ld->entry;
    job->work_owner = ld->owner;
    ld->entry = ld->owner = NULL;
    job->deliver = work_deliver;
    if (!job->work_id) {
        job_free(job);
        return PARLEY_ERR_OOM;
    }
    job_run(job);
    return PARLEY_OK;
}

static void work_loaded(int status, const struct state_job *rec,
                        void *privdata)
{
    struct work_load *ld = privdata;
    struct work *w = ld->w;
    char key[EVENT_ROOM_KEY_MAX];
    struct state_work_answer a;
    struct event ev;

    if (w->stopped || w->r->closing) {
        work_load_free(ld);
        return;
    }
    if (status != PARLEY_OK) {
        /* Left pending: taken up again after ha.claim_idle_ms. */
        log_warn("work: job record not readable (%s)",
                 parley_status_name(status));
    } else if (!rec || !rec->platform || !rec->room || !rec->text) {
        /* Expired or incomplete: nothing anyone could answer. */
        log_info("work: job %s has no usable record, dropped",
                 rec ? rec->event_id : "(gone)");
        state_work_ack(w->st, NULL, NULL, ld->entry);
    } else if (rec->state != STATE_JOB_PENDING) {
        /* Answered by a worker that died before acking: publish the
         * stored answer (the script reads it) and ack. */
        memset(&ev, 0, sizeof(ev));
        ev.platform = rec->platform;
        ev.account = rec->account;
        ev.room = rec->room;
        memset(&a, 0, sizeof(a));
        a.job_id = rec->event_id;
        a.entry_id = ld->entry;
        a.platform = rec->platform;
        a.account = rec->account;
        a.room_key = key;
        a.ctx = &w->r->cfg->context;
        a.epoch = -1;
        if (event_room_key(&ev, key, sizeof(key)) == PARLEY_OK)
            state_work_finish(w->st, &a, NULL, NULL);
    } else if (work_think(w, ld, rec) == PARLEY_OK) {
        work_load_free(ld);
        return;                 /* running: work_job_end when finished */
    } else {
        log_warn("work: cannot start job %s (out of memory?)",
                 rec->event_id);
    }
    work_load_free(ld);
    work_job_end(w);
}

static void work_take(struct work *w, const struct state_work_entry *e)
{
    struct work_load *ld;

    if (work_entry_running(w, e->entry_id))
        return;
    ld = calloc(1, sizeof(*ld));
    if (ld) {
        ld->w = w;
        ld->entry = strdup(e->entry_id);
        ld->owner = e->owner ? strdup(e->owner) : NULL;
    }
    if (!ld || !ld->entry || (e->owner && !ld->owner)) {
        if (ld)
            work_load_free(ld);
        return;                 /* pending: claimed again later */
    }
    w->running++;
    if (state_work_job_load(w->st, e->job_id, work_loaded, ld) != PARLEY_OK) {
        work_load_free(ld);
        w->running--;
    }
}

static void work_jobs_read(int status, const char *next,
                           const struct state_work_entry *entries, size_t n,
                           void *privdata)
{
    struct work *w = privdata;

    (void)next;
    w->reads--;
    if (w->stopped || w->r->closing)
        return;
    if (status == PARLEY_ERR_STATE)
        w->ready = 0;
    for (size_t i = 0; i < n; i++)
        work_take(w, &entries[i]);
    if (n > 0)
        w->got = 1;
    if (w->reads == 0)
        work_poll_later(w);
}

/* ---- polling ------------------------------------------------------------ */

static void work_group_made(int status, void *privdata)
{
    struct work *w = privdata;

    w->setting_up--;
    if (w->stopped)
        return;
    if (status != PARLEY_OK)
        w->setup_failed = 1;
    if (w->setting_up > 0)
        return;
    w->ready = !w->setup_failed;
    if (w->ready && !w->was_ready)
        log_info("work: sharing jobs as %s (llm.max_concurrent %d)", w->me,
                 w->r->cfg->llm.max_concurrent);
    else if (w->ready)
        work_resubmit(w);
    if (w->ready)
        w->was_ready = 1;
    work_poll_later(w);
}

/* The jobs group and one owners group per connection. */
static void work_setup(struct work *w)
{
    struct router *r = w->r;

    w->setup_failed = 0;
    w->setting_up = 1;          /* held until every request went out */
    if (state_work_group_create(w->st, NULL, NULL, work_group_made,
                                w) == PARLEY_OK)
        w->setting_up++;
    else
        w->setup_failed = 1;
    for (size_t i = 0; i < r->n_adapters; i++) {
        struct adapter *ad = r->adapters[i];

        if (state_work_group_create(w->st, ad->ops->type, ad->account,
                                    work_group_made, w) == PARLEY_OK)
            w->setting_up++;
        else
            w->setup_failed = 1;
    }
    work_group_made(w->setup_failed ? PARLEY_ERR_STATE : PARLEY_OK, w);
}

static void work_on_poll(void *privdata)
{
    struct work *w = privdata;
    struct router *r = w->r;
    size_t free_slots = work_free_slots(w);

    if (w->stopped || w->reads > 0 || w->setting_up > 0)
        return;
    w->got = 0;
    if (!store_is_up(w->st) || r->closing) {
        /* Back up, the groups are checked (Redis may have restarted
         * empty) and waiting jobs queued again (work_resubmit). */
        w->ready = 0;
        w->backoff_ms = WORK_POLL_MAX_MS;
        work_poll_later(w);
        return;
    }
    if (!w->ready) {
        work_setup(w);
        return;
    }
    if (free_slots > 0 && work_wants_jobs(w) &&
        state_work_read(w->st, NULL, NULL, w->me, free_slots,
                        work_jobs_read, w) == PARLEY_OK)
        w->reads++;
    for (size_t i = 0; i < r->n_adapters; i++) {
        struct adapter *ad = r->adapters[i];

        /* Only the instance holding a connection reads its answers: a
         * standby that read them would drop them. */
        if (ad->connected &&
            state_work_read(w->st, ad->ops->type, ad->account, w->me,
                            WORK_REPLIES_BATCH, work_replies_read,
                            &w->feeds[i]) == PARLEY_OK)
            w->reads++;
    }
    if (w->reads == 0)
        work_poll_later(w);
}

/* After a poll: at once when it brought entries, else back off. */
static void work_poll_later(struct work *w)
{
    if (w->stopped)
        return;
    if (w->got) {
        w->backoff_ms = WORK_POLL_MIN_MS;
        loop_timer_start(w->poll_timer, 0, 0);
        return;
    }
    loop_timer_start(w->poll_timer, w->backoff_ms, 0);
    w->backoff_ms = w->backoff_ms * 2 > WORK_POLL_MAX_MS ?
                    WORK_POLL_MAX_MS : w->backoff_ms * 2;
}

/* Something happened that makes entries likely (a job queued or
 * finished): poll as soon as the current poll is back. */
static void work_poll_now(struct work *w)
{
    if (w->stopped)
        return;
    w->backoff_ms = WORK_POLL_MIN_MS;
    if (w->reads == 0 && w->setting_up == 0)
        loop_timer_start(w->poll_timer, 0, 0);
    else
        w->got = 1;
}

/* ---- taking over, keeping alive, lag ----------------------------------- */

static void work_jobs_claimed(int status, const char *next,
                              const struct state_work_entry *entries,
                              size_t n, void *privdata)
{
    struct work *w = privdata;

    if (w->stopped || w->r->closing || status != PARLEY_OK)
        return;
    snprintf(w->cursor, sizeof(w->cursor), "%s", next ? next : "0-0");
    if (n == 0)
        return;
    log_info("work: took over %zu job(s) from a worker quiet for %d ms", n,
             w->r->cfg->ha.claim_idle_ms);
    metrics_work_claimed((unsigned long)n);
    for (size_t i = 0; i < n; i++)
        work_take(w, &entries[i]);
}

static void work_replies_claimed(int status, const char *next,
                                 const struct state_work_entry *entries,
                                 size_t n, void *privdata)
{
    struct work_feed *feed = privdata;
    struct work *w = feed->w;

    if (w->stopped || w->r->closing || status != PARLEY_OK)
        return;
    snprintf(feed->cursor, sizeof(feed->cursor), "%s", next ? next : "0-0");
    for (size_t i = 0; i < n; i++)
        work_reply(w, w->r->adapters[feed->index], &entries[i]);
}

static void work_info(int status, long long lag, long long pending,
                      void *privdata)
{
    struct work *w = privdata;

    if (!w->stopped && status == PARLEY_OK)
        metrics_set_work_stream(lag, pending);
}

/* XCLAIM our running entries to ourselves: their idle time restarts. */
static void work_touch(struct work *w)
{
    const char *ids[WORK_TOUCH_MAX];
    size_t n = 0;

    for (const struct job *j = w->r->jobs; j; j = j->all_next) {
        if (!j->work_entry)
            continue;
        ids[n++] = j->work_entry;
        if (n == WORK_TOUCH_MAX) {
            state_work_touch(w->st, w->me, ids, n);
            n = 0;
        }
    }
    if (n > 0)
        state_work_touch(w->st, w->me, ids, n);
}

static void work_on_claim(void *privdata)
{
    struct work *w = privdata;
    struct router *r = w->r;
    size_t free_slots = work_free_slots(w);
    long long idle = r->cfg->ha.claim_idle_ms;

    if (w->stopped || !w->ready || !store_is_up(w->st) || r->closing)
        return;
    work_touch(w);
    if (free_slots > 0 && work_wants_jobs(w))
        state_work_claim(w->st, NULL, NULL, w->me, idle, w->cursor,
                         free_slots, work_jobs_claimed, w);
    for (size_t i = 0; i < r->n_adapters; i++)
        if (r->adapters[i]->connected)
            state_work_claim(w->st, r->adapters[i]->ops->type,
                             r->adapters[i]->account, w->me, idle,
                             w->feeds[i].cursor, WORK_REPLIES_BATCH,
                             work_replies_claimed, &w->feeds[i]);
    state_work_info(w->st, work_info, w);
}

/* ---- life cycle --------------------------------------------------------- */

int work_create(struct work **out, struct router *r, struct store *st,
                struct loop *loop, const char *me)
{
    struct work *w = calloc(1, sizeof(*w));

    *out = NULL;
    if (!w)
        return PARLEY_ERR_OOM;
    w->r = r;
    w->st = st;
    w->loop = loop;
    w->me = me;
    w->backoff_ms = WORK_POLL_MIN_MS;
    snprintf(w->cursor, sizeof(w->cursor), "0-0");
    for (size_t i = 0; i < ROUTER_MAX_ADAPTERS; i++) {
        w->feeds[i].w = w;
        w->feeds[i].index = i;
        snprintf(w->feeds[i].cursor, sizeof(w->feeds[i].cursor), "0-0");
    }
    w->waiting = dict_create();
    w->poll_timer = loop_timer_new(loop, work_on_poll, w);
    w->claim_timer = loop_timer_new(loop, work_on_claim, w);
    if (!w->waiting || !w->poll_timer || !w->claim_timer) {
        work_stop(w);
        work_free(w);
        return PARLEY_ERR_OOM;
    }
    r->work = w;
    r->run_job = work_share;
    *out = w;
    return PARLEY_OK;
}

void work_start(struct work *w)
{
    uint64_t every;

    if (!w || w->stopped)
        return;
    every = (uint64_t)w->r->cfg->ha.claim_idle_ms / WORK_CLAIM_DIVISOR;
    loop_timer_start(w->poll_timer, 0, 0);
    loop_timer_start(w->claim_timer, every, every > 0 ? every : 1);
}

void work_stop(struct work *w)
{
    if (!w || w->stopped)
        return;
    w->stopped = 1;
    loop_timer_free(w->poll_timer);
    loop_timer_free(w->claim_timer);
    w->poll_timer = w->claim_timer = NULL;
}

void work_free(struct work *w)
{
    if (!w)
        return;
    work_stop(w);
    dict_free(w->waiting);      /* the jobs are the router's */
    free(w);
}
