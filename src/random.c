/*
 * The fast generator is xoshiro256** (Blackman and Vigna, 2018): four
 * words of state, a few shifts per draw, and it passes BigCrush, which is
 * far more than jitter needs but costs nothing over the xorshift64 copies
 * it replaces.  The state is filled from getrandom(2) on first use; when
 * the kernel refuses (ENOSYS under an old seccomp profile, say), a mix of
 * the clocks, the pid and a stack address through splitmix64 still gives
 * each process its own sequence, which is all jitter asks for.
 *
 * random_bytes() never uses this generator: a secret must come from the
 * kernel, and if the kernel cannot supply one the caller hears about it.
 */
#include <errno.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "random.h"
#include "status.h"

static uint64_t state[4];
static int seeded;

/* splitmix64: spreads one 64-bit seed over the whole state, as the
 * xoshiro authors recommend; consecutive outputs are never all zero. */
static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += UINT64_C(0x9e3779b97f4a7c15));

    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static void seed_from(uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        state[i] = splitmix64(&seed);
    seeded = 1;
}

/* Read exactly len bytes from the kernel; retries on EINTR and on short
 * reads (possible above 256 bytes). */
static int kernel_bytes(unsigned char *p, size_t len)
{
    while (len > 0) {
        ssize_t n = getrandom(p, len, 0);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            return PARLEY_ERR_IO;
        }
        p += n;
        len -= (size_t)n;
    }
    return PARLEY_OK;
}

static void seed_once(void)
{
    struct timespec mono = { 0, 0 }, real = { 0, 0 };
    uint64_t mix;
    int local;

    if (kernel_bytes((unsigned char *)state, sizeof(state)) == PARLEY_OK &&
        (state[0] | state[1] | state[2] | state[3]) != 0) {
        seeded = 1;
        return;
    }
    clock_gettime(CLOCK_MONOTONIC, &mono);
    clock_gettime(CLOCK_REALTIME, &real);
    mix = (uint64_t)real.tv_sec * UINT64_C(1000000000) +
        (uint64_t)real.tv_nsec;
    mix ^= ((uint64_t)mono.tv_sec << 32) ^ (uint64_t)mono.tv_nsec;
    mix ^= (uint64_t)getpid() << 16;
    /* Under ASLR the stack address differs per process too. */
    mix ^= (uint64_t)(uintptr_t)&local;
    seed_from(mix);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t random_u64(void)
{
    uint64_t result, t;

    if (!seeded)
        seed_once();
    result = rotl(state[1] * 5, 7) * 9;
    t = state[1] << 17;
    state[2] ^= state[0];
    state[3] ^= state[1];
    state[1] ^= state[2];
    state[0] ^= state[3];
    state[2] ^= t;
    state[3] = rotl(state[3], 45);
    return result;
}

uint64_t random_below(uint64_t bound)
{
    uint64_t limit, x;

    if (bound == 0)
        return 0;
    /* Reject the top (2^64 mod bound) values so that every residue is
     * equally likely; at most half the draws are rejected (bound just
     * over 2^63), usually none. */
    limit = UINT64_MAX - (UINT64_MAX % bound + 1) % bound;
    do {
        x = random_u64();
    } while (x > limit);
    return x % bound;
}

double random_unit(void)
{
    /* The top 53 bits fill a double's mantissa exactly. */
    return (double)(random_u64() >> 11) * 0x1.0p-53;
}

int random_bytes(void *buf, size_t len)
{
    if (kernel_bytes(buf, len) != PARLEY_OK) {
        explicit_bzero(buf, len);
        return PARLEY_ERR_IO;
    }
    return PARLEY_OK;
}

void random_seed(uint64_t seed)
{
    seed_from(seed);
}
