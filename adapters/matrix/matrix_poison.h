/*
 * Telling a Redis outage from a poison event in the Matrix batch walk.
 * The walk offers each event to router_submit_durable and advances the
 * sync token only once every event was accepted.  A refusal because Redis
 * is down or busy passes: the walk pauses and offers the same event again,
 * for as long as it takes (nothing is lost).  A refusal that can never
 * succeed for that event (its room key or record does not fit, the reply
 * is malformed, memory ran out again and again) would stop the account
 * for good, so after MATRIX_POISON_TRIES refusals of the same event in the
 * same batch the walk skips it (logged and counted by the caller).
 */
#ifndef PARLEY_MATRIX_POISON_H
#define PARLEY_MATRIX_POISON_H

#include <stddef.h>

/* Refusals of one event before it is skipped: walks of the same batch,
 * each after a back-off pause, so a passing allocation failure has time
 * to clear. */
#define MATRIX_POISON_TRIES 3

/* The event refused last and how often; zeroed memory is a fresh state. */
struct matrix_poison {
    unsigned long serial;   /* batch it belongs to */
    size_t index;           /* its place in the batch */
    int tries;              /* refusals so far, 0: none */
};

enum matrix_poison_verdict {
    MATRIX_POISON_RETRY = 0,    /* pause, then offer the event again */
    MATRIX_POISON_SKIP          /* give it up and go on with the batch */
};

/* 1 when status means "the store is unreachable or busy, try later"
 * (PARLEY_ERR_STATE, _IO, _EOF, _TIMEOUT, and _OTHER, which is how a Redis
 * error reply such as LOADING or OOM comes back); 0 for the rest. */
int matrix_poison_transient(int status);

/*
 * The router answered status (not PARLEY_OK) for the event at index of
 * batch serial.  Transient refusals never skip and do not count; others
 * count per event and return MATRIX_POISON_SKIP at the
 * MATRIX_POISON_TRIES-th, which also forgets the event.
 */
enum matrix_poison_verdict matrix_poison_refused(struct matrix_poison *p,
                                                 unsigned long serial,
                                                 size_t index, int status);

#endif
