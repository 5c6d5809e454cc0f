/*
 * The lease object, shared by lease.c (timers, Redis) and lease_check.c
 * (the send check adapters call).  The check lives apart so that linking
 * an adapter pulls in no Redis or loop code with it.
 */
#ifndef PARLEY_LEASE_PRIVATE_H
#define PARLEY_LEASE_PRIVATE_H

#include <stdint.h>

#include "lease.h"

/* One request in flight; lease_free detaches it (l = NULL) so that its
 * reply, which store.c always delivers, finds nothing to update. */
struct lease_call {
    struct lease *l;
    uint64_t sent_ms;
};

struct lease {
    struct loop *loop;
    struct store *st;
    char *platform;
    char *account;
    char *owner;
    int ttl_ms;
    int tick_ms;
    enum lease_state state;
    long long token;
    uint64_t valid_until;       /* monotonic ms; sends stop here */
    uint64_t next_renew;
    uint64_t next_try;          /* standby: next acquisition attempt */
    struct lease_call *call;    /* acquire or renew in flight */
    struct loop_timer *timer;
    lease_change_fn *fn;
    void *privdata;
    char holder[96];            /* last holder seen, for the log */
    int released;
};

#endif
