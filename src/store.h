/*
 * The Redis connection: hiredis async on the libuv loop, reconnecting with
 * exponential backoff when the server goes away, and key naming (every key
 * starts with the configured prefix).  While Redis is down, commands fail
 * at once with PARLEY_ERR_STATE so callers can degrade (answer without
 * history, pause Matrix sync); the outage is logged once, and the recovery
 * once.
 *
 * Callback contract (hiredis README): if store_command* returns PARLEY_OK,
 * fn runs exactly once, with the reply or with NULL when the connection
 * failed before the reply arrived.  The reply is valid only during fn.
 */
#ifndef PARLEY_STORE_H
#define PARLEY_STORE_H

#include <stddef.h>

struct store;
struct redisReply;
struct config_redis;
struct uv_loop_s;

typedef void store_reply_fn(struct store *st, struct redisReply *reply,
                            void *privdata);
/* Called on every up/down transition (up = 1 after AUTH/SELECT). */
typedef void store_state_fn(struct store *st, int up, void *privdata);

/* Longest key, NUL included: prefix (256, CONFIG_NAME_MAX) + "greeted:" +
 * a room key (EVENT_ROOM_KEY_MAX) + ":" + a 255-byte user id < 1536. */
#define STORE_KEY_MAX 1536
#define STORE_BACKOFF_MIN_MS 100
#define STORE_BACKOFF_MAX_MS 5000

/* Create and start connecting; password may be NULL.  The config is
 * copied.  Returns PARLEY_OK even if Redis is not reachable yet. */
int store_open(struct store **out, struct uv_loop_s *uv,
               const struct config_redis *cfg, const char *password);

/* As store_open; sentinel_password is the sentinels' own (AUTH on the
 * sentinel connections, NULL: none), used when cfg->n_sentinels > 0:
 * then the master's address is asked of the sentinels (host, port and
 * unix_socket are ignored) and followed across failovers. */
int store_open_full(struct store **out, struct uv_loop_s *uv,
                    const struct config_redis *cfg, const char *password,
                    const char *sentinel_password);

void store_on_state(struct store *st, store_state_fn *fn, void *privdata);
int store_is_up(const struct store *st);

/* printf-like command, hiredis syntax (%s, %b with len).  fn may be NULL
 * (reply ignored).  PARLEY_ERR_STATE while not up (fn is not called) and
 * for push-mode commands ((P)SUBSCRIBE, MONITOR), which would break the
 * one-reply-per-callback contract; _OOM; _OTHER for a bad format. */
int store_command(struct store *st, store_reply_fn *fn, void *privdata,
                  const char *fmt, ...);
int store_command_argv(struct store *st, store_reply_fn *fn, void *privdata,
                       int argc, const char **argv, const size_t *argvlen);

/* Write prefix + formatted name into buf; PARLEY_ERR_TOO_LARGE if cut. */
int store_key(const struct store *st, char *buf, size_t len,
              const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Why the store is not up: the last attempt's failure (connect error,
 * AUTH/SELECT error text from the server, timeout), kept while the next
 * attempt runs; "" while up.  Never contains the password. */
const char *store_errstr(const struct store *st);

/* Stop reconnecting and drop the connection now: callbacks of pending
 * commands run with NULL before store_close returns (or, when called from
 * inside a store callback, right after that callback returns).  Memory is
 * released from libuv close callbacks, so keep running the loop. */
void store_close(struct store *st);

#endif
