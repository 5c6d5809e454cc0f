/*
 * Private to the crypto store files (state_crypto.c, state_crypto_utd.c,
 * state_crypto_share.c): one request record and its reply handlers, so
 * every crypto call maps replies to statuses the same way.  Callers use
 * state.h.
 */
#ifndef PARLEY_STATE_CRYPTO_PRIVATE_H
#define PARLEY_STATE_CRYPTO_PRIVATE_H

#include <stddef.h>

#include "state.h"
#include "state_private.h"
#include "store.h"

struct redisReply;

/* Most members one SADD or HSET carries (as state_history_append's cap):
 * a room or a device list past this is split by the caller. */
#define CRYPTO_BATCH_MAX 4096

struct crypto_request {
    state_value_fn *value_fn;
    state_pairs_fn *pairs_fn;
    state_list_fn *list_fn;
    state_done_fn *done_fn;
    state_megolm_in_fn *in_fn;
    state_megolm_out_fn *out_fn;
    state_claim_fn *claim_fn;
    void *privdata;
    const char *what;           /* the command, for log lines */
    char label[STATE_LABEL_MAX + 1];
};

/* A request for label (escaped for logs); NULL when out of memory. */
struct crypto_request *crypto_request_new(const char *what,
                                          const char *label,
                                          void *privdata);
/* Send argv (or MULTI cmds .. EXEC) with cb; on failure req is freed
 * and no callback runs (state.h's contract). */
int crypto_request_send(struct store *st, struct crypto_request *req,
                        store_reply_fn *cb, int argc, const char **argv);
int crypto_request_multi(struct store *st, struct crypto_request *req,
                         store_reply_fn *cb, const struct state_cmd *cmds,
                         size_t n);
/* Status of a reply for a request whose callback may be NULL. */
int crypto_request_status(struct crypto_request *req,
                          const struct redisReply *rep, int has_fn);
/* Reply handlers: done_fn (may be NULL), pairs_fn. */
void crypto_done_replied(struct store *st, struct redisReply *rep,
                         void *privdata);
void crypto_pairs_replied(struct store *st, struct redisReply *rep,
                          void *privdata);
/* An array reply to req->list_fn, then req freed: the strings in order,
 * other elements skipped, or with keep_holes one slot per element, NULL
 * where it is not a string (HMGET's missing fields). */
void crypto_list_deliver(struct crypto_request *req,
                         const struct redisReply *rep, int keep_holes);
/* "<cmd> <key> items..." for 0 < n <= CRYPTO_BATCH_MAX items; argv
 * malloc'd (caller frees), NULL on a bad list or no memory. */
const char **crypto_batch_argv(const char *cmd, const char *key,
                               const char *const *items, size_t n);

#endif /* PARLEY_STATE_CRYPTO_PRIVATE_H */
