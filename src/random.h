/*
 * parley's one source of randomness, in two strengths.  The fast generator
 * (xoshiro256**, seeded once from getrandom(2), or from the clock, the pid
 * and an address when the kernel refuses) serves everything that needs
 * spread but no secrecy: backoff jitter, Matrix transaction-id seeds, a
 * nick suffix.  Its output can be predicted by anyone who sees enough of
 * it, so secrets (session ids, tokens, nonces) come from random_bytes(),
 * which asks the kernel every time.  Before this module, llm.c, store.c
 * and the Matrix adapter each kept an xorshift state and IRC used the
 * clock.
 *
 * The fast generator is process-wide state for the loop thread only; it
 * seeds itself on first use, so no start-up call is needed.
 */
#ifndef PARLEY_RANDOM_H
#define PARLEY_RANDOM_H

#include <stddef.h>
#include <stdint.h>

/* 64 uniformly distributed bits.  Not for secrets. */
uint64_t random_u64(void);

/* A uniform value in [0, bound), without modulo bias; 0 when bound is 0.
 * Not for secrets. */
uint64_t random_below(uint64_t bound);

/* A uniform double in [0, 1).  Not for secrets. */
double random_unit(void);

/*
 * Fill buf with len bytes from getrandom(2), for anything an attacker must
 * not guess.  Blocks only until the kernel's pool is first initialised
 * (early boot).  Returns PARLEY_OK, or PARLEY_ERR_IO with buf wiped when
 * the kernel cannot supply them; there is deliberately no weaker fallback.
 */
int random_bytes(void *buf, size_t len);

/* Reseed the fast generator with a fixed value (tests and benchmarks that
 * need a repeatable sequence).  The same seed gives the same sequence. */
void random_seed(uint64_t seed);

#endif
