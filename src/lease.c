/*
 * The life of one lease (lease.h): a timer that ticks every ttl/8 and,
 * depending on the state, tries to acquire (standing by), renews (held),
 * or declares the lease lost when the local deadline passed without a
 * successful renewal.  The deadline is ttl - ttl/4 after the renewal
 * request was sent, not after its reply came: Redis started the TTL no
 * earlier than the send, so this side always gives up first, by at least
 * the margin, however slow the reply (clock rates differ by far less).
 * A standby sleeps until the holder's lease could have expired (PTTL),
 * so a takeover after the holder died takes about one TTL plus a tick.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lease.h"
#include "lease_private.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"
#include "state.h"
#include "status.h"

/* Shortest TTL: below this, a busy loop or a slow Redis round trip would
 * make a healthy holder lose its lease. */
#define LEASE_TTL_MIN_MS 300
/* Ticks per TTL: how late a loss or a takeover may be noticed. */
#define LEASE_TICKS_PER_TTL 8

static void lease_set_state(struct lease *l, enum lease_state s)
{
    if (l->state == s)
        return;
    l->state = s;
    if (l->fn)
        l->fn(l, s, l->privdata);
}

/* Held -> lost: final.  The token stays in the fencing table, so a write
 * this process still has in flight is refused once another holds it. */
static void lease_lose(struct lease *l, const char *why)
{
    if (l->state != LEASE_HELD)
        return;
    loop_timer_stop(l->timer);
    metrics_lease_lost();
    log_error("lease %s:%s lost (%s): this instance stops sending on it "
              "now", l->platform, l->account, why);
    lease_set_state(l, LEASE_LOST);
}

static struct lease_call *lease_call_new(struct lease *l)
{
    struct lease_call *c = calloc(1, sizeof(*c));

    if (c) {
        c->l = l;
        c->sent_ms = lease_clock_ms();
    }
    return c;
}

/* Both deadlines count from when the request left, not when the reply
 * came: Redis set the TTL somewhere in between. */
static void lease_extend(struct lease *l, uint64_t sent_ms)
{
    l->valid_until = sent_ms + (uint64_t)(l->ttl_ms - l->ttl_ms / 4);
    l->next_renew = sent_ms + (uint64_t)(l->ttl_ms / 3);
}

static void lease_acquired(int status, int held, long long token,
                           const char *holder, long long pttl_ms,
                           void *privdata)
{
    struct lease_call *c = privdata;
    struct lease *l = c->l;
    uint64_t sent = c->sent_ms, now = lease_clock_ms();
    int result;

    free(c);
    if (!l)
        return;
    l->call = NULL;
    if (l->released)
        return;
    if (status != PARLEY_OK || !held) {
        uint64_t wait = (uint64_t)l->tick_ms;

        /* Sleep until the holder's lease could have run out, but look
         * at least once a quarter TTL in case it was released. */
        if (status == PARLEY_OK && pttl_ms > 0)
            wait = (uint64_t)pttl_ms < (uint64_t)l->ttl_ms / 4 ?
                   (uint64_t)pttl_ms : (uint64_t)l->ttl_ms / 4;
        l->next_try = now + wait;
        if (status == PARLEY_OK && holder &&
            strcmp(holder, l->holder) != 0) {
            log_info("lease %s:%s: held by %s; standing by", l->platform,
                     l->account, holder);
            snprintf(l->holder, sizeof(l->holder), "%s", holder);
        }
        lease_set_state(l, LEASE_STANDBY);
        return;
    }
    l->token = token;
    lease_extend(l, sent);
    result = state_fence_set(l->platform, l->account, token);
    if (result != PARLEY_OK)
        log_warn("lease %s:%s: writes go unfenced (%s)", l->platform,
                 l->account, parley_status_name(result));
    if (token > 1)
        metrics_lease_takeover();
    log_info("lease %s:%s: acquired by %s (fencing token %lld)%s",
             l->platform, l->account, l->owner, token,
             token > 1 ? ", taking over from the previous holder" : "");
    lease_set_state(l, LEASE_HELD);
}

static void lease_renewed(int status, int fresh, void *privdata)
{
    struct lease_call *c = privdata;
    struct lease *l = c->l;
    uint64_t sent = c->sent_ms;

    free(c);
    if (!l)
        return;
    l->call = NULL;
    if (l->released || l->state != LEASE_HELD)
        return;
    if (status != PARLEY_OK) {
        /* Redis away or slow: try again next tick; the deadline decides. */
        log_debug("lease %s:%s: renewal failed (%s)", l->platform,
                  l->account, parley_status_name(status));
        return;
    }
    if (!fresh) {
        lease_lose(l, "another instance holds it now");
        return;
    }
    lease_extend(l, sent);
}

static void lease_try_acquire(struct lease *l)
{
    struct lease_call *c = lease_call_new(l);
    int result;

    if (!c)
        return;
    result = state_lease_acquire(l->st, l->platform, l->account, l->owner,
                                 l->ttl_ms, lease_acquired, c);
    if (result != PARLEY_OK) {
        free(c);
        l->next_try = lease_clock_ms() + (uint64_t)l->tick_ms;
        return;
    }
    l->call = c;
}

static void lease_try_renew(struct lease *l)
{
    struct lease_call *c = lease_call_new(l);
    int result;

    if (!c)
        return;
    result = state_lease_renew(l->st, l->platform, l->account, l->owner,
                               l->token, l->ttl_ms, lease_renewed, c);
    if (result != PARLEY_OK) {
        free(c);
        return;
    }
    l->call = c;
}

static void on_lease_tick(void *privdata)
{
    struct lease *l = privdata;
    uint64_t now = lease_clock_ms();

    if (l->released || l->call)
        goto check;
    if ((l->state == LEASE_STANDBY || l->state == LEASE_ACQUIRING) &&
        now >= l->next_try)
        lease_try_acquire(l);
    else if (l->state == LEASE_HELD && now >= l->next_renew)
        lease_try_renew(l);
check:
    /* Also with a renewal in flight: a reply that never comes must not
     * keep the lease alive here. */
    if (!l->released && l->state == LEASE_HELD && now >= l->valid_until)
        lease_lose(l, "not renewed in time: Redis unreachable or this "
                   "process was paused");
}

int lease_create(struct lease **out, struct loop *loop, struct store *st,
                 const char *platform, const char *account,
                 const char *owner, int ttl_ms, lease_change_fn *fn,
                 void *privdata)
{
    struct lease *l;

    *out = NULL;
    if (!loop || !platform || !account || !owner || !owner[0] ||
        ttl_ms < LEASE_TTL_MIN_MS)
        return PARLEY_ERR_OTHER;
    l = calloc(1, sizeof(*l));
    if (!l)
        return PARLEY_ERR_OOM;
    l->loop = loop;
    l->st = st;
    l->ttl_ms = ttl_ms;
    l->tick_ms = ttl_ms / LEASE_TICKS_PER_TTL;
    l->fn = fn;
    l->privdata = privdata;
    l->platform = strdup(platform);
    l->account = strdup(account);
    l->owner = strdup(owner);
    l->timer = loop_timer_new(loop, on_lease_tick, l);
    if (!l->platform || !l->account || !l->owner || !l->timer) {
        lease_free(l);
        return PARLEY_ERR_OOM;
    }
    *out = l;
    return PARLEY_OK;
}

void lease_start(struct lease *l)
{
    if (!l || l->released)
        return;
    lease_set_state(l, LEASE_ACQUIRING);
    lease_try_acquire(l);
    loop_timer_start(l->timer, (uint64_t)l->tick_ms, (uint64_t)l->tick_ms);
}

struct lease_release_call {
    lease_released_fn *done;
    void *privdata;
};

static void lease_release_replied(int status, void *privdata)
{
    struct lease_release_call *rc = privdata;

    (void)status;
    if (rc->done)
        rc->done(rc->privdata);
    free(rc);
}

void lease_release(struct lease *l, lease_released_fn *done,
                   void *privdata)
{
    struct lease_release_call *rc;

    if (!l || l->released) {
        if (done)
            done(privdata);
        return;
    }
    l->released = 1;
    loop_timer_stop(l->timer);
    /* Also when not held: an acquisition still in flight may have
     * succeeded, and the script deletes only our own lease. */
    rc = calloc(1, sizeof(*rc));
    if (rc) {
        rc->done = done;
        rc->privdata = privdata;
        if (state_lease_release(l->st, l->platform, l->account, l->owner,
                                lease_release_replied, rc) == PARLEY_OK) {
            if (l->state == LEASE_HELD)
                log_info("lease %s:%s: released", l->platform, l->account);
            return;
        }
        free(rc);
    }
    if (done)
        done(privdata);
}

void lease_free(struct lease *l)
{
    if (!l)
        return;
    if (l->call)
        l->call->l = NULL;
    loop_timer_free(l->timer);
    free(l->platform);
    free(l->account);
    free(l->owner);
    free(l);
}
