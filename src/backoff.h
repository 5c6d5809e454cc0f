/*
 * Exponential backoff with jitter, written once for every retry in
 * parley: LLM requests, the Redis reconnect, the IRC reconnect and the
 * Matrix control machine and sends.  Pure: the caller keeps its own
 * attempt counter and passes 64 random bits (random_u64()), so tests give
 * fixed bits and check exact delays.
 *
 * The ceiling for attempt n (0-based) is min(max_ms, base_ms * 2^n); the
 * delay is a point in a jitter window below the ceiling, so many clients
 * cut off together (a server restart, a network blip) do not come back
 * together:
 *
 *   BACKOFF_JITTER_FULL   [0, ceiling] ("full jitter" in the AWS
 *                         architecture blog): the widest spread, and the
 *                         first retry may go at once.  The LLM client uses
 *                         it, with the server's Retry-After as a floor.
 *   BACKOFF_JITTER_UPPER  [ceiling - ceiling / 2, ceiling]: still spread,
 *                         but never much sooner than the schedule says;
 *                         for reconnects (Redis, IRC) and Matrix, where a
 *                         retry at once would only meet the same failure.
 */
#ifndef PARLEY_BACKOFF_H
#define PARLEY_BACKOFF_H

#include <stdint.h>

enum backoff_jitter {
    BACKOFF_JITTER_FULL,
    BACKOFF_JITTER_UPPER
};

struct backoff_policy {
    long base_ms;               /* ceiling of attempt 0; <= 0 gives 0 */
    long max_ms;                /* ceiling cap; <= 0 gives 0 */
    enum backoff_jitter jitter;
};

/* min(max_ms, base_ms * 2^attempt), never overflowing whatever the
 * attempt (negative counts as 0); at most 63 doublings are computed. */
long backoff_ceiling_ms(const struct backoff_policy *p, int attempt);

/*
 * Delay before retry attempt (0-based): a point of the jitter window
 * picked by random (all 64 bits used; 0 gives the bottom of the window,
 * UINT64_MAX the top), and then at least floor_ms when that is >= 0 (a
 * server's Retry-After; the floor is not capped here, the caller decides
 * how long it is willing to wait).
 */
long backoff_delay_ms(const struct backoff_policy *p, int attempt,
                      long floor_ms, uint64_t random);

#endif
