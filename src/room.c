/*
 * The rooms: where a job waits and when it may start (router_job.h has
 * the rules).  Different people in one room are answered in parallel, up
 * to context.max_parallel_per_room (and llm.max_concurrent across all
 * rooms, which the LLM client enforces), while one person's messages are
 * answered in the order they were sent: a follow-up starts only once the
 * answer before it was handed over, so it sees that exchange in the
 * history.  Greetings run alone and before what is queued behind them,
 * so nobody is answered before the room was greeted.  An idle room costs
 * no memory: it is freed when its last job leaves.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "dict.h"
#include "event.h"
#include "router.h"
#include "router_job.h"
#include "status.h"

static int job_is_greeting(const struct job *job)
{
    return job->kind == JOB_GREET_ROOM || job->kind == JOB_GREET_USER;
}

struct room *room_new(const char *key)
{
    size_t len = strlen(key);
    struct room *room;

    if (len >= EVENT_ROOM_KEY_MAX)
        return NULL;
    room = calloc(1, sizeof(*room) + len + 1);
    if (!room)
        return NULL;
    memcpy(room->key, key, len + 1);
    return room;
}

static struct room *room_get(struct router *r, const char *key)
{
    struct room *room = dict_get(r->rooms, key);

    if (room)
        return room;
    room = room_new(key);
    if (!room)
        return NULL;
    if (dict_set(r->rooms, key, room) != PARLEY_OK) {
        free(room);
        return NULL;
    }
    return room;
}

/* Whether job's sender has an earlier job running or waiting ahead of
 * it.  Lists are short (max_parallel_per_room, ROUTER_ROOM_QUEUE_MAX). */
static int room_sender_busy(const struct room *room, const struct job *job)
{
    for (const struct job *j = room->running; j; j = j->next)
        if (strcmp(j->user_key, job->user_key) == 0)
            return 1;
    for (const struct job *j = room->head; j && j != job; j = j->next)
        if (strcmp(j->user_key, job->user_key) == 0)
            return 1;
    return 0;
}

/* The next waiting job that may start now, unlinked from the waiting
 * list, or NULL. */
static struct job *room_next_runnable(struct router *r, struct room *room)
{
    size_t max = r->cfg->context.max_parallel_per_room > 0 ?
                 (size_t)r->cfg->context.max_parallel_per_room : 1;
    struct job *prev = NULL;

    if (room->exclusive)
        return NULL;
    for (struct job *j = room->head; j; prev = j, j = j->next) {
        if (job_is_greeting(j)) {
            /* A greeting waits for the room to empty and holds back
             * everything behind it. */
            if (room->n_running > 0)
                return NULL;
        } else if (room->n_running >= max) {
            return NULL;
        } else if (room_sender_busy(room, j)) {
            continue;
        }
        if (prev)
            prev->next = j->next;
        else
            room->head = j->next;
        if (room->tail == j)
            room->tail = prev;
        room->queued--;
        j->next = NULL;
        return j;
    }
    return NULL;
}

/* Start whatever may start (r->run_job, which is job_run: a pointer, so
 * the queues need not know a job's steps); free the room once nothing is
 * left.  Running can finish a job synchronously (Redis down, a fixed
 * answer), which comes back here through room_leave: the guard turns that
 * re-entry into one more pass of the outer loop, so the lists are never
 * walked while they change and the room is freed only once. */
static void room_schedule(struct router *r, struct room *room)
{
    struct job *job;

    if (room->scheduling) {
        room->again = 1;
        return;
    }
    room->scheduling = 1;
    do {
        room->again = 0;
        while ((job = room_next_runnable(r, room)) != NULL) {
            job->next = room->running;
            room->running = job;
            room->n_running++;
            if (job_is_greeting(job))
                room->exclusive = 1;
            r->run_job(job);
        }
    } while (room->again);
    room->scheduling = 0;
    if (!room->head && !room->running) {
        dict_delete(r->rooms, room->key);
        free(room);
    }
}

int room_detach(struct job *job, char *key, size_t keylen)
{
    struct room *room = job->room;
    struct job **pp;

    if (!room)
        return 0;
    job->room = NULL;
    for (pp = &room->running; *pp; pp = &(*pp)->next) {
        if (*pp == job) {
            *pp = job->next;
            job->next = NULL;
            room->n_running--;
            break;
        }
    }
    if (job->kind == JOB_GREET_ROOM || job->kind == JOB_GREET_USER)
        room->exclusive = 0;
    snprintf(key, keylen, "%s", room->key);
    return 1;
}

void room_wake(struct router *r, const char *key)
{
    struct room *room = dict_get(r->rooms, key);

    if (room)
        room_schedule(r, room);
}

void room_leave(struct job *job)
{
    char key[EVENT_ROOM_KEY_MAX];

    if (room_detach(job, key, sizeof(key)))
        room_wake(job->r, key);
}

int room_add(struct router *r, struct job *job, const char *room_key)
{
    struct room *room = room_get(r, room_key);

    if (!room)
        return PARLEY_ERR_OOM;
    /* A resent answer, or a question of a previous run, was accepted
     * before: turning it away now would lose it. */
    if (room->queued >= ROUTER_ROOM_QUEUE_MAX && !job->resumed &&
        job->kind != JOB_RESEND)
        return PARLEY_ERR_TOO_LARGE;    /* the room has jobs: it stays */
    job->room = room;
    job->resets = room->resets;
    if (job_is_greeting(job)) {
        /* Ahead of every waiting answer, behind earlier greetings. */
        struct job *prev = NULL, *j = room->head;

        while (j && job_is_greeting(j)) {
            prev = j;
            j = j->next;
        }
        job->next = j;
        if (prev)
            prev->next = job;
        else
            room->head = job;
        if (!j)
            room->tail = job;
    } else {
        if (room->tail)
            room->tail->next = job;
        else
            room->head = job;
        room->tail = job;
    }
    room->queued++;
    room_schedule(r, room);
    return PARLEY_OK;
}
