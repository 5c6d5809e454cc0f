/*
 * Router internals shared by router.c (submission, life cycle), room.c
 * (where a job waits and when it starts) and job.c (the steps of one job).
 * The commands (command.h) do not see these: they get a command_ctx.
 * Not part of the API: adapters and main use router.h only.
 */
#ifndef PARLEY_ROUTER_JOB_H
#define PARLEY_ROUTER_JOB_H

#include <stddef.h>

#include "config.h"
#include "event.h"

struct store;
struct llm;
struct loop;
struct adapter;
struct history;
struct dict;
struct state_job;

/* Greeting cooldown per user and room: one day. */
#define ROUTER_GREET_COOLDOWN_S 86400
/* usage:<day>:<user> lives a little over a week, for !stats. */
#define ROUTER_USAGE_TTL_S (8 * 86400)

enum job_kind {
    JOB_CHAT,               /* answer a message */
    JOB_COMMAND,            /* run a !command */
    JOB_GREET_ROOM,         /* the bot joined: greet the room */
    JOB_GREET_USER,         /* someone joined: greet them */
    JOB_NOTICE,             /* answer with a fixed text (rate limit) */
    JOB_RESEND,             /* a stored answer a previous run never sent */
    JOB_AMBIENT             /* store an unaddressed line as context only */
};

struct room;
struct turn;
struct work;

struct job {
    struct router *r;
    struct room *room;          /* while queued or running in it */
    struct adapter *ad;
    struct event *ev;           /* copy, in the job's block */
    enum job_kind kind;
    const char *user_key;       /* platform:account:sender, at most
                                   EVENT_ROOM_KEY_MAX - 1 bytes; in the
                                   job's block */
    int durable;                /* has a job:<event id> record */
    int resumed;                /* taken up from a previous run */
    unsigned resets;            /* room->resets when queued */
    long long epoch;            /* room:<room> epoch when it started */
    int loads;                  /* settings/history/usage still to come */
    int over_budget;            /* the daily token budget is spent */

    /* Gathered along the way. */
    char *model;                /* room override, or NULL */
    char *system;               /* room override, or NULL */
    int greeting;               /* room greeting on (1) / off (0) */
    struct history *history;
    char *answer;
    long tokens_in, tokens_out;
    double llm_started;         /* monotonic seconds, for the latency */
    int notice;                 /* answer is service text, not the model */
    int typing;                 /* counted in room->typing */
    int streamed;               /* ops->progress has shown part of the
                                   answer (the final send replaces it) */

    /* A picture with the message (job_image.c). */
    char *turn_text;            /* the user turn as stored: placeholder
                                   and caption; owned, NULL until built */
    char *image_url;            /* data URL for the model, or NULL */
    int image_step;             /* 0 to do, 1 fetching, 2 done */
    void (*image_go_on)(struct job *job);   /* after the fetch */
    /* Shared work (work.c, ha.share_work); all owned, freed with the
     * job.  The owner's job waits in its room while a worker answers. */
    char *work_id;              /* job:<id> it went out as (platforms
                                   without event ids get a made-up one) */
    char *work_entry;           /* worker: the work:jobs entry */
    char *work_owner;           /* worker: the instance that queued it */
    struct room *work_room;     /* worker: a room of its own, outside
                                   r->rooms (no queue, no adapter) */
    /* Worker: where the answer goes instead of the history and the
     * adapter; turns are NULL when nothing is to be stored (an error, or
     * a !reset since the question).  Must finish or keep the job. */
    void (*deliver)(struct job *job, const struct turn *turns, size_t n);

    struct job *next;           /* room's waiting or running list */
    struct job *all_prev, *all_next;    /* every live job, for close */
};

/*
 * A room's jobs (room.c).  Waiting jobs start in order, as many at once
 * as context.max_parallel_per_room allows, except that a person's job
 * waits while an earlier one of theirs is waiting or running (a
 * follow-up needs the answer before it), and a greeting runs alone
 * before anything queued behind it.  A job leaves the room when its
 * answer is handed to the adapter, which keeps per-room send order.
 */
struct room {
    struct job *head, *tail;    /* waiting, in arrival order */
    size_t queued;              /* waiting jobs */
    struct job *running;        /* started, answer not yet handed over */
    size_t n_running;
    int exclusive;              /* a greeting is running alone */
    unsigned resets;            /* !reset count, see job->resets */
    int typing;                 /* chat jobs waiting on the model */
    int scheduling, again;      /* room_schedule re-entry guard */
    /* Sized to the key (room_new): a room exists for every room with a
     * job in flight, and a fixed EVENT_ROOM_KEY_MAX array would be
     * mostly empty (issue 11, memory per request in flight). */
    char key[];
};

/* Per-user request window for user_requests_per_minute. */
struct rate {
    long minute;
    int count;
    int notified;               /* the over-limit notice went out */
};

enum rate_verdict {
    RATE_ALLOW = 0,
    RATE_NOTIFY,                /* over the limit: tell them, once */
    RATE_QUIET                  /* over the limit and already told */
};

/* The file's adapters plus the console that --console adds. */
#define ROUTER_MAX_ADAPTERS (CONFIG_MAX_ADAPTERS + 1)

struct router {
    const struct config *cfg;
    struct store *store;
    struct llm *llm;
    struct loop *loop;
    struct adapter *adapters[ROUTER_MAX_ADAPTERS];
    size_t n_adapters;
    void (*run_job)(struct job *job);   /* job_run (or work.c's
                                           share), for room.c */
    struct work *work;          /* shared work, NULL when off (work.h) */
    struct dict *rooms;         /* key -> struct room * */
    struct dict *rates;         /* user key -> struct rate * */
    long rates_minute;          /* the minute r->rates counts */
    size_t pending;             /* jobs not yet finished */
    struct job *jobs;           /* every live job */
    int draining;               /* refuse new events */
    int closing;                /* callbacks stop; router_free cleans */
};

/* After router_close, callbacks leave their job where it is: the store
 * and llm are going away and router_free releases every job. */
#define JOB_CLOSING(job) ((job)->r->closing)

/* room.c */
/* A room with no jobs, for key (shorter than EVENT_ROOM_KEY_MAX), not in
 * r->rooms; free() it.  NULL on OOM or a key too long. */
struct room *room_new(const char *key);
/* Queue job in room_key's room and start what may start (through
 * r->run_job).  PARLEY_ERR_TOO_LARGE when the room's queue is full (jobs
 * of a previous run are always taken), _OOM; the job is then untouched
 * and still the caller's. */
int room_add(struct router *r, struct job *job, const char *room_key);
/* The job is done with its room (nothing to send): start what was
 * waiting for it.  Idempotent. */
void room_leave(struct job *job);
/* room_leave in two halves, for a job whose answer is being sent: take
 * it out of its room (copying the room key into key) without starting
 * anything, send, then room_wake, so nothing started meanwhile can send
 * before it.  room_detach returns 0 when the job had no room. */
int room_detach(struct job *job, char *key, size_t keylen);
void room_wake(struct router *r, const char *key);

/* job.c */
/* room_add, and for a job the room cannot take: a busy note when a
 * person asked something, else dropped; on failure the job is freed. */
void job_enqueue(struct router *r, struct job *job, const char *room_key);
/* A new job for ev (copied), counted in r->pending; NULL on OOM. */
struct job *job_create(struct router *r, struct adapter *ad,
                       const struct event *ev, enum job_kind kind);
void job_free(struct job *job);
/* Answer with text (may be job->answer itself); notice = service text. */
void job_reply(struct job *job, const char *text, int notice);
/* Finish a job that sends nothing and let its room move on. */
void job_drop(struct job *job);
/* Start the job's steps (room settings first). */
void job_run(struct job *job);
/* The room's typing indicator while the job waits on a model. */
void job_typing(struct job *job, int on);
/* Send job->answer, already stored in job:<id> (work.c: a worker's
 * answer), then mark the job done; the job is the adapter's after. */
void job_send(struct job *job);
const char *event_speaker(const struct event *ev);
/* The event a job record stands for, as it arrived: a message addressed
 * to the bot (router.c's resume, work.c's shared jobs).  Strings are
 * borrowed from rec; att receives the picture when the record names one
 * (ev->attachment then points at it) and must live as long as ev. */
void job_record_event(const struct state_job *rec, struct event *ev,
                      struct event_attachment *att);

/* job_image.c */
/* The user turn's text as the model and the history see it: the event's
 * text, or with a picture the placeholder and caption.  NULL on OOM. */
const char *job_turn_text(struct job *job);
/*
 * Before asking model (the one this job will use) about a message with a
 * picture: 0 when the job may go on at once; 1 when it is taken care of
 * here, either answered (a model that cannot see pictures, a picture too
 * large or of a type not taken, a download that failed) or fetching, and
 * then go_on(job) runs once the picture is ready.
 */
int job_image_prepare(struct job *job, const char *model,
                      void (*go_on)(struct job *job));
void job_image_free(struct job *job);

#endif
