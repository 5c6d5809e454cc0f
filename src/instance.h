/*
 * Who this process is, among several parley instances on one Redis.
 * Leases on platform connections and the consumer name in the shared job
 * stream both need a name that is unique per process and stable for its
 * life: "<host>-<pid>-<8 hex>".  The random part keeps two processes that
 * reuse a pid (a container restarted with the same hostname) apart, so a
 * restarted instance never mistakes an old lease or claim for its own.
 * The name is not a secret and appears in logs and /metrics.
 */
#ifndef PARLEY_INSTANCE_H
#define PARLEY_INSTANCE_H

#include <stddef.h>

/* Longest name, with its NUL: 64 bytes of host, pid, dash and hex. */
#define INSTANCE_NAME_MAX 96

/*
 * This process's name, made on first call (loop thread).  With a
 * non-empty `fixed` on the first call (a configured name or a test), that
 * name is used instead when it fits and has only [A-Za-z0-9._-]; returns
 * NULL for a bad fixed name.  Later calls ignore `fixed`.
 */
const char *instance_name(const char *fixed);

/* Forget the name (tests only), so the next call makes a new one. */
void instance_reset(void);

#endif
