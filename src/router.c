/*
 * The router's front door and life cycle (see router.h): what to do with
 * an incoming event (ignore, command, chat, greeting), the per-user rate
 * limit, dedupe by event id, and for replaying platforms the job record
 * that makes an event durable before the platform's position advances.
 * The work itself happens in job.c and command.c.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "adapter.h"
#include "command.h"
#include "config.h"
#include "dict.h"
#include "event.h"
#include "instance.h"
#include "log.h"
#include "metrics.h"
#include "router.h"
#include "router_job.h"
#include "state.h"
#include "status.h"

static struct adapter *router_adapter_for(struct router *r,
                                          const struct event *ev)
{
    for (size_t i = 0; i < r->n_adapters; i++) {
        struct adapter *ad = r->adapters[i];
        const char *account = ad->account ? ad->account : "";

        if (strcmp(ad->ops->type, ev->platform) == 0 &&
            strcmp(account, ev->account ? ev->account : "") == 0)
            return ad;
    }
    return NULL;
}

/* ---- per-user rate ------------------------------------------------------ */

static void rate_free(const char *key, void *value, void *arg)
{
    (void)key;
    (void)arg;
    free(value);
}

static enum rate_verdict rate_check(struct router *r, const char *user_key)
{
    int limit = r->cfg->limits.user_requests_per_minute;
    long minute = (long)(time(NULL) / 60);
    struct rate *rate;

    if (limit <= 0)
        return RATE_ALLOW;
    if (minute != r->rates_minute) {
        /* Windows are whole minutes: last minute's counts are spent, so
         * drop them all at once rather than keep one entry per person
         * ever seen. */
        struct dict *fresh = dict_create();

        if (fresh) {
            dict_foreach(r->rates, rate_free, NULL);
            dict_free(r->rates);
            r->rates = fresh;
            r->rates_minute = minute;
        }
    }
    rate = dict_get(r->rates, user_key);
    if (!rate) {
        rate = calloc(1, sizeof(*rate));
        if (!rate || dict_set(r->rates, user_key, rate) != PARLEY_OK) {
            free(rate);
            return RATE_ALLOW;
        }
    }
    if (rate->minute != minute) {
        rate->minute = minute;
        rate->count = 0;
        rate->notified = 0;
    }
    if (rate->count < limit) {
        rate->count++;
        return RATE_ALLOW;
    }
    if (rate->notified)
        return RATE_QUIET;
    rate->notified = 1;
    return RATE_NOTIFY;
}

/* ---- submission ---------------------------------------------------------- */

/* What to do with an event: a job kind, or -1 to ignore it. */
static int router_classify(const struct adapter *ad, const struct event *ev)
{
    char name[COMMAND_NAME_MAX];
    const char *arg;

    /* Greeting policy, the same for every platform (adapters only report
     * joins and room sizes): the bot's own arrival, and newcomers in
     * rooms small enough that a greeting is not noise.  The room's own
     * setting (!greeting, rooms list) and the cooldown come later. */
    if (ev->self && ev->kind == EVENT_JOIN)
        return ad->greet.on_join ? JOB_GREET_ROOM : -1;
    if (ev->self || ev->from_bot)
        return -1;
    switch (ev->kind) {
    case EVENT_MESSAGE:
        /* A picture without a caption is still a message. */
        if ((!ev->text || !*ev->text) && !ev->attachment)
            return -1;
        if (ev->text &&
            router_parse_command(ev->text, name, sizeof(name), &arg)) {
            /* Bare !commands in a busy channel may belong to another bot:
             * only known ones are ours unless we were addressed. */
            if (command_known(ad, name) || ev->addressed)
                return JOB_COMMAND;
            return -1;
        }
        if (ev->addressed)
            return JOB_CHAT;
        return ev->ambient ? JOB_AMBIENT : -1;
    case EVENT_JOIN:
        if (!ad->greet.new_members)
            return -1;
        if (ad->greet.members_max > 0 && ev->members > 0 &&
            ev->members > ad->greet.members_max)
            return -1;
        return JOB_GREET_USER;
    default:
        return -1;
    }
}

/* The accepted callback of messages router_submit records itself: no
 * caller waits for it. */
static void submit_recorded(int status, void *privdata)
{
    (void)status;
    (void)privdata;
}

struct submit {
    struct router *r;
    struct job *job;
    char room_key[EVENT_ROOM_KEY_MAX];
    router_accepted_fn *accepted;
    void *privdata;
};

static void submit_finish(struct submit *s, int status, int fresh)
{
    struct router *r = s->r;
    router_accepted_fn *accepted = s->accepted;
    void *privdata = s->privdata;

    if (fresh && status == PARLEY_OK)
        job_enqueue(r, s->job, s->room_key);
    else
        job_free(s->job);
    free(s);
    if (accepted)
        accepted(status, privdata);
}

/* The claim (seen:, greeted:, or the job record) answered: fresh means
 * this event is new to us. */
static void submit_checked(int status, int fresh, void *privdata)
{
    struct submit *s = privdata;

    if (s->r->closing) {
        free(s);            /* its job is on r->jobs */
        return;
    }
    if (status != PARLEY_OK) {
        /* The caller will offer the event again; or, for an IRC
         * message under a lease (router_submit), fencing refused it: a
         * newer holder has the account. */
        if (s->accepted && (s->accepted != submit_recorded ||
                            status == PARLEY_ERR_STATE)) {
            submit_finish(s, status, 0);
            return;
        }
        /* Without the mark, answering twice beats not answering. */
        s->job->durable = 0;
        submit_finish(s, PARLEY_OK, 1);
        return;
    }
    if (!fresh)
        log_debug("duplicate event %s dropped", s->job->ev->event_id);
    submit_finish(s, PARLEY_OK, fresh);
}

static int submit_record(struct submit *s)
{
    struct router *r = s->r;
    const struct event *ev = s->job->ev;
    int ttl = r->cfg->redis.dedupe_ttl_s;
    struct state_job rec;

    if (!s->accepted)
        return state_seen_claim(r->store, ev->event_id, ttl, submit_checked,
                                s);
    memset(&rec, 0, sizeof(rec));
    rec.event_id = ev->event_id;
    rec.state = STATE_JOB_PENDING;
    rec.kind = s->job->kind == JOB_COMMAND ? STATE_JOB_COMMAND :
               s->job->kind == JOB_GREET_ROOM ? STATE_JOB_GREET :
               STATE_JOB_CHAT;
    rec.platform = ev->platform;
    rec.account = ev->account;
    rec.room = ev->room;
    rec.sender = ev->sender;
    rec.sender_name = ev->sender_name;
    rec.text = ev->text;
    rec.thread_id = ev->thread_id;
    rec.reply_to = ev->reply_to;
    rec.is_admin = ev->is_admin;
    rec.ts = (long long)time(NULL);
    /* A picture is kept as the adapter's reference only (never the
     * bytes): a resumed job fetches it again (job_image.c).  Bytes
     * without a reference (the web chat, which is not durable) are not
     * recorded, and a resumed job then answers the caption alone. */
    if (ev->attachment && ev->attachment->ref) {
        rec.attachment_ref = ev->attachment->ref;
        rec.attachment_name = ev->attachment->name;
        rec.attachment_mime = ev->attachment->mime;
        rec.attachment_size = (long long)ev->attachment->size;
    }
    return state_job_record(r->store, &rec, ttl, submit_checked, s);
}

static void router_submit_common(struct router *r, const struct event *ev,
                                 router_accepted_fn *accepted,
                                 void *privdata)
{
    struct adapter *ad;
    struct submit *s;
    int kind;

    if (r->draining || r->closing) {
        log_room(LOG_LEVEL_INFO, ev->platform, ev->room,
                 "shutting down, event not taken");
        if (accepted)
            accepted(PARLEY_ERR_STATE, privdata);
        return;
    }
    if (ev->kind == EVENT_MESSAGE && !ev->self)
        metrics_message_received(ev->platform);
    ad = router_adapter_for(r, ev);
    kind = ad ? router_classify(ad, ev) : -1;
    if (!ad)
        log_warn("event from unknown adapter %s/%s dropped", ev->platform,
                 ev->account ? ev->account : "");
    if (kind >= 0 && (kind == JOB_CHAT || kind == JOB_COMMAND) &&
        ev->sender) {
        /* Everything a person makes the bot send counts, commands and
         * !more included; past the limit they hear it once a window. */
        char user[EVENT_ROOM_KEY_MAX];
        enum rate_verdict verdict;

        snprintf(user, sizeof(user), "%s:%s:%s", ev->platform,
                 ev->account ? ev->account : "",
                 ev->limit_key ? ev->limit_key : ev->sender);
        verdict = rate_check(r, user);
        if (verdict != RATE_ALLOW)
            log_room(LOG_LEVEL_INFO, ev->platform, ev->room,
                     "%s over %d requests/minute%s", ev->sender,
                     r->cfg->limits.user_requests_per_minute,
                     verdict == RATE_QUIET ? " (already told)" : "");
        if (verdict == RATE_NOTIFY)
            kind = JOB_NOTICE;
        else if (verdict == RATE_QUIET)
            kind = -1;
    }
    if (kind < 0) {
        if (accepted)
            accepted(PARLEY_OK, privdata);
        return;
    }
    s = calloc(1, sizeof(*s));
    if (!s || event_room_key(ev, s->room_key,
                             sizeof(s->room_key)) != PARLEY_OK ||
        !(s->job = job_create(r, ad, ev, (enum job_kind)kind))) {
        log_error("cannot queue an event from %s (out of memory or room "
                  "name too long)", ev->platform);
        free(s);
        if (accepted)
            accepted(PARLEY_ERR_OOM, privdata);
        return;
    }
    s->r = r;
    s->accepted = accepted;
    s->privdata = privdata;
    if (kind == JOB_NOTICE &&
        !(s->job->answer = strdup("You're sending messages faster than I "
                                  "can answer; please wait a minute."))) {
        submit_finish(s, PARLEY_ERR_OOM, 0);
        return;
    }
    if (kind == JOB_NOTICE)
        s->job->notice = 1;
    if (kind == JOB_GREET_USER) {
        /* greeted:<room>:<user> is the cooldown; the claim decides.
         * Without Redis there is no cooldown: stay quiet rather than
         * greet the same person on every rejoin. */
        if (state_greet_claim(r->store, s->room_key,
                              ev->sender ? ev->sender : "",
                              ROUTER_GREET_COOLDOWN_S, submit_checked,
                              s) != PARLEY_OK)
            submit_finish(s, PARLEY_OK, 0);
        return;
    }
    if (ev->event_id && *ev->event_id) {
        int result;

        s->job->durable = accepted != NULL;
        result = submit_record(s);
        if (result == PARLEY_OK)
            return;
        s->job->durable = 0;
        if (accepted && accepted != submit_recorded) {
            submit_finish(s, result, 0);
            return;
        }
    }
    submit_finish(s, PARLEY_OK, 1);
}

void router_submit(struct router *r, const struct event *ev)
{
    const struct adapter *ad = router_adapter_for(r, ev);
    static unsigned long long seq;

    /*
     * An account another instance may take over (ha.enabled) from a
     * platform without event ids (IRC): give the message an id and
     * record its job, so that the next holder answers it if this
     * instance dies before it did (README "Several instances").
     */
    if (ad && ad->lease && ev->kind == EVENT_MESSAGE && !ev->self &&
        (!ev->event_id || !ev->event_id[0])) {
        char id[INSTANCE_NAME_MAX + 32];
        struct event copy = *ev;

        snprintf(id, sizeof(id), "%s-%s-%llu", ev->platform,
                 instance_name(NULL), ++seq);
        copy.event_id = id;
        router_submit_common(r, &copy, submit_recorded, NULL);
        return;
    }
    router_submit_common(r, ev, NULL, NULL);
}

void router_submit_durable(struct router *r, const struct event *ev,
                           router_accepted_fn *accepted, void *privdata)
{
    router_submit_common(r, ev, accepted, privdata);
}

/* ---- resuming jobs of a previous run ------------------------------------- */

/* One walk over unfinished jobs: every adapter's without a lease (only
 * NULL), or one adapter's, just taken over (only set).  A job of an
 * account another instance holds is that instance's to finish. */
struct resume_walk {
    struct router *r;
    struct adapter *only;
};

static void resume_one(const struct state_job *rec, void *privdata)
{
    struct resume_walk *w = privdata;
    struct router *r = w->r;
    int greet = rec->kind == STATE_JOB_GREET;
    struct event_attachment att;
    char room_key[EVENT_ROOM_KEY_MAX];
    struct adapter *ad;
    struct event ev;
    struct job *job;

    if (r->closing || rec->state == STATE_JOB_DONE)
        return;
    job_record_event(rec, &ev, &att);
    if (greet) {
        /* The bot's own join: a greeting has no text of its own. */
        ev.kind = EVENT_JOIN;
        ev.self = 1;
        ev.addressed = 0;
    }
    /* An event this run already took (the platform delivered it again
     * before the scan got here) must not be answered twice.  Linear in
     * the live jobs, once per unfinished record at start-up. */
    for (struct job *live = r->jobs; live; live = live->all_next)
        if (live->ev->event_id && strcmp(live->ev->event_id,
                                         ev.event_id) == 0)
            return;
    ad = router_adapter_for(r, &ev);
    if (!ad) {
        if (!w->only)
            log_warn("resume: job %s belongs to %s/%s, which is not "
                     "configured any more", ev.event_id, ev.platform,
                     ev.account ? ev.account : "");
        return;
    }
    if (w->only ? ad != w->only : ad->lease != NULL)
        return;
    if (event_room_key(&ev, room_key, sizeof(room_key)) != PARLEY_OK)
        return;
    job = job_create(r, ad, &ev, greet ? JOB_GREET_ROOM :
                     rec->kind == STATE_JOB_COMMAND ? JOB_COMMAND :
                     JOB_CHAT);
    if (!job)
        return;
    job->durable = 1;
    job->resumed = 1;
    if (rec->state == STATE_JOB_ANSWERED && rec->answer) {
        job->kind = JOB_RESEND;
        job->answer = strdup(rec->answer);
        job->notice = rec->notice;
        if (!job->answer) {
            job_free(job);
            return;
        }
    }
    log_room(LOG_LEVEL_INFO, ev.platform, ev.room, "resume: %s %s",
             job->kind == JOB_RESEND ? "resending the answer to" :
             "answering", ev.event_id);
    job_enqueue(r, job, room_key);
}

static void resume_finished(int status, void *privdata)
{
    struct resume_walk *w = privdata;

    if (status != PARLEY_OK && !w->r->closing)
        log_warn("resume: cannot list every unfinished job (%s); the rest "
                 "wait for the next start", parley_status_name(status));
    free(w);
}

void router_resume_adapter(struct router *r, struct adapter *only)
{
    struct resume_walk *w = calloc(1, sizeof(*w));

    if (!w) {
        log_warn("resume: out of memory; unfinished jobs wait for the "
                 "next start");
        return;
    }
    w->r = r;
    w->only = only;
    if (state_job_scan(r->store, resume_one, resume_finished,
                       w) != PARLEY_OK) {
        free(w);
        log_warn("resume: Redis is not available; unfinished jobs wait "
                 "for the next start");
    }
}

void router_resume(struct router *r)
{
    router_resume_adapter(r, NULL);
}

/* ---- life cycle ---------------------------------------------------------- */

int router_create(struct router **out, const struct config *cfg,
                  struct store *st, struct llm *llm, struct loop *loop)
{
    struct router *r = calloc(1, sizeof(*r));

    *out = NULL;
    if (!r)
        return PARLEY_ERR_OOM;
    r->cfg = cfg;
    r->store = st;
    r->llm = llm;
    r->loop = loop;
    r->run_job = job_run;
    r->rooms = dict_create();
    r->rates = dict_create();
    if (!r->rooms || !r->rates) {
        router_free(r);
        return PARLEY_ERR_OOM;
    }
    *out = r;
    return PARLEY_OK;
}

int router_add_adapter(struct router *r, struct adapter *ad)
{
    if (r->n_adapters >= ROUTER_MAX_ADAPTERS)
        return PARLEY_ERR_TOO_LARGE;
    r->adapters[r->n_adapters++] = ad;
    ad->router = r;
    return PARLEY_OK;
}

void router_reload(struct router *r, const struct config *cfg)
{
    r->cfg = cfg;
}

void router_drain(struct router *r)
{
    r->draining = 1;
}

void router_close(struct router *r)
{
    r->draining = 1;
    r->closing = 1;
}

size_t router_rooms_active(const struct router *r)
{
    return dict_size(r->rooms);
}

size_t router_pending(const struct router *r)
{
    return r->pending;
}

static void free_value(const char *key, void *value, void *arg)
{
    (void)key;
    (void)arg;
    free(value);
}

void router_free(struct router *r)
{
    if (!r)
        return;
    while (r->jobs)
        job_free(r->jobs);
    if (r->rooms)
        dict_foreach(r->rooms, free_value, NULL);
    if (r->rates)
        dict_foreach(r->rates, free_value, NULL);
    dict_free(r->rooms);
    dict_free(r->rates);
    free(r);
}
