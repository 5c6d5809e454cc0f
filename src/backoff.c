/*
 * Backoff arithmetic.  The ceiling doubles until it reaches the cap and
 * stops there, so the loop ends after at most 63 steps however large the
 * attempt count; the window is picked by the high half of random * width
 * (a 64x64-bit multiply), which uses every random bit, has no modulo bias
 * worth the name and maps the extremes of random onto the extremes of the
 * window, which the tests rely on.
 */
#include <limits.h>

#include "backoff.h"

long backoff_ceiling_ms(const struct backoff_policy *p, int attempt)
{
    long max = p->max_ms > 0 ? p->max_ms : 0;
    long c = p->base_ms > 0 ? p->base_ms : 0;

    if (c > max)
        c = max;
    for (int i = 0; i < attempt && c > 0 && c < max; i++)
        c = c > max / 2 ? max : c * 2;
    return c;
}

/* floor(a * b / 2^64), from 32-bit halves (no __int128 in C11). */
static uint64_t mul_hi64(uint64_t a, uint64_t b)
{
    uint64_t a_lo = a & 0xffffffffu, a_hi = a >> 32;
    uint64_t b_lo = b & 0xffffffffu, b_hi = b >> 32;
    uint64_t lo_lo = a_lo * b_lo;
    uint64_t hi_lo = a_hi * b_lo;
    uint64_t lo_hi = a_lo * b_hi;
    uint64_t mid = (lo_lo >> 32) + (hi_lo & 0xffffffffu) +
        (lo_hi & 0xffffffffu);

    return a_hi * b_hi + (hi_lo >> 32) + (lo_hi >> 32) + (mid >> 32);
}

long backoff_delay_ms(const struct backoff_policy *p, int attempt,
                      long floor_ms, uint64_t random)
{
    long ceiling = backoff_ceiling_ms(p, attempt);
    long low = 0;
    uint64_t width;
    long delay;

    if (p->jitter == BACKOFF_JITTER_UPPER)
        low = ceiling - ceiling / 2;
    /* Window [low, ceiling] has ceiling - low + 1 points; ceiling is at
     * most LONG_MAX, so the count fits in 64 unsigned bits. */
    width = (uint64_t)(ceiling - low) + 1;
    delay = low + (long)mul_hi64(random, width);
    if (floor_ms >= 0 && delay < floor_ms)
        delay = floor_ms;
    return delay;
}
