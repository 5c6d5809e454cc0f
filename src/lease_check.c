/*
 * What adapters ask of a lease right before they send (lease.h): whether
 * it is held and its local deadline has not passed, on the monotonic
 * clock.  Kept in its own file, with no Redis or loop code, so that an
 * adapter linked alone (its unit tests) pulls in nothing more.
 */
#include <time.h>

#include "lease.h"
#include "lease_private.h"

uint64_t lease_clock_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

const char *lease_state_name(enum lease_state s)
{
    switch (s) {
    case LEASE_STANDBY: return "standby";
    case LEASE_ACQUIRING: return "acquiring";
    case LEASE_HELD: return "held";
    case LEASE_LOST: return "lost";
    }
    return "?";
}

int lease_may_send(const struct lease *l)
{
    if (!l)
        return 1;
    return l->state == LEASE_HELD && !l->released &&
           lease_clock_ms() < l->valid_until;
}

enum lease_state lease_get_state(const struct lease *l)
{
    return l ? l->state : LEASE_HELD;
}

long long lease_token(const struct lease *l)
{
    return l ? l->token : 0;
}
