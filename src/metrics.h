/*
 * Counters and gauges for /metrics and /healthz.  The loop thread records
 * events (messages, commands, LLM outcomes) and samples gauges (Redis up,
 * adapters connected, queue depth) from a timer; the HTTP thread of
 * monitor.c only renders.  One mutex guards everything: updates happen a
 * few times per message, far below any contention that would matter.
 * Rendering is a pure function into a caller's buffer, so tests check the
 * Prometheus text without a server.
 */
#ifndef PARLEY_METRICS_H
#define PARLEY_METRICS_H

#include <stddef.h>

/* Adapters tracked for health: the file's CONFIG_MAX_ADAPTERS (64) plus
 * the console of --console; more are not tracked. */
#define METRICS_ADAPTERS_MAX 65
/* Rendered /metrics text is at most this long. */
#define METRICS_TEXT_MAX (64 * 1024)

/* Forget everything (start-up and tests). */
void metrics_reset(void);

void metrics_message_received(const char *platform);
void metrics_message_answered(const char *platform);
/* name without '!'; unknown names count as "other". */
void metrics_command(const char *name);
void metrics_greeting(void);
/* A Matrix event given up after repeated refusals by the router (a
 * poison event: it could never be recorded), so the sync moves on. */
void metrics_matrix_event_skipped(void);
/* Matrix end-to-end encryption: a room event no stored key decrypted, or
 * a bad one (replayed index, wrong sender key); an m.room_key_request
 * sent; an Olm session made (new_olm) or reused for a share (!new_olm);
 * a Megolm session stored (inbound) or created (outbound); the number of
 * undecryptable events kept waiting for a key (gauge, all accounts). */
void metrics_e2ee_decrypt_failed(void);
void metrics_e2ee_key_request(void);
void metrics_e2ee_olm_session(int new_olm);
void metrics_e2ee_megolm_session(int outbound);
void metrics_e2ee_utd_pending(long n);
/* Whether the last read of the crypto store worked (a load from Redis
 * and unpickling with the key); ok 0 makes /healthz unhealthy until a
 * later read works.  Never reported: healthy. */
void metrics_e2ee_store(int ok);
/*
 * One finished completion: ok or not, the last HTTP status (0 = none),
 * requests sent (attempts - 1 are retries), seconds from the first try to
 * the result, and tokens (negative = unknown).
 */
void metrics_llm_done(int ok, long http_code, int attempts, double seconds,
                      long tokens_in, long tokens_out);

/* Leases (issue 13): an account taken over from an earlier holder (its
 * fencing token was above 1), a lease lost while held, and a write Redis
 * refused because its fencing token was stale. */
void metrics_lease_takeover(void);
void metrics_lease_lost(void);
void metrics_fence_refused(void);
/* This process's instance name (instance.h), a label of /metrics and a
 * field of /healthz; copied, cut at 95 bytes. */
void metrics_set_instance(const char *name);
/* The lease state of adapter index: "standby", "acquiring", "held",
 * "lost", or NULL for an adapter without a lease.  On standby (or
 * acquiring) an adapter is healthy although not connected; lost is not. */
void metrics_set_lease(size_t index, const char *state);
/* Shared work (src/work.c): a job of a dead worker taken over
 * (XAUTOCLAIM), a job this instance's workers ran for another instance,
 * and, sampled, entries of work:jobs not yet read by any worker (lag) and
 * read but not finished (pending). */
void metrics_work_claimed(unsigned long n);
void metrics_work_ran_for_others(void);
void metrics_set_work_stream(long long lag, long long pending);

/* Gauges, sampled by main. */
void metrics_set_redis(int up);
/* The store reached a Redis master at a new address (Sentinel failover). */
void metrics_redis_failover(void);
void metrics_set_adapter(size_t index, const char *type, const char *account,
                         int connected);
void metrics_set_adapter_count(size_t n);
void metrics_set_queue(size_t pending, size_t rooms);

/* Prometheus text exposition format into buf; returns the length written
 * (truncated output is cut at a line end and still valid). */
size_t metrics_render(char *buf, size_t len);
/* JSON summary into buf; returns 1 when healthy (Redis up and every
 * adapter connected), 0 otherwise, with the reasons in the JSON. */
int metrics_health(char *buf, size_t len);

#endif
