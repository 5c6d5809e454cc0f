/*
 * The Matrix adapter's end-to-end encryption client: the bridge between
 * matrix_crypto.c (pure libolm wrappers), state_crypto.c (the crypto store
 * in Redis) and the homeserver's key endpoints.  matrix_adapter.c owns one
 * per account when crypto_key_env names a usable key, and drives it at
 * fixed points: start (before the first sync), each sync (key counters,
 * to-device events), each encrypted timeline event of the walk, and each
 * send into an encrypted room.
 *
 * What it does: load the device's Olm account from Redis or create one
 * (the same device keeps its keys across restarts), upload the signed
 * device keys, one-time keys and a fallback key (/keys/upload), top the
 * one-time keys up from /sync's device_one_time_keys_count, store the
 * room keys people's devices send it over Olm, decrypt Megolm room events
 * with them, and encrypt answers with the room's outbound session after
 * sharing it with every member's devices.
 *
 * The pickle key (the value of crypto_key_env or its _FILE) is registered
 * with the log redaction and wiped on free; only pickles reach Redis.
 */
#ifndef PARLEY_MATRIX_E2EE_H
#define PARLEY_MATRIX_E2EE_H

#include <stddef.h>

#include "loop.h"

struct store;
struct matrix_e2ee;
struct cJSON;

/* Shortest pickle key accepted: a short one could be guessed offline
 * from a copy of Redis. */
#define MATRIX_E2EE_KEY_MIN 16
/* One-time keys kept on the server: half of what libolm can hold, as the
 * spec suggests, so that claims between two syncs do not exhaust it. */
#define MATRIX_E2EE_OTK_TARGET 50

/* What the adapter lends: its store and a request function that adds the
 * homeserver, the client API prefix and the access token to path. */
typedef int matrix_e2ee_http_fn(void *ctx, const char *method,
                                const char *path, const char *body,
                                http_done_fn *done, void *priv,
                                struct http_request **out);
struct matrix_e2ee_host {
    void *ctx;
    matrix_e2ee_http_fn *http;
    struct store *store;
    const char *account;        /* crypto:<account>:... (borrowed) */
    int share_verified;         /* room keys only for devices their owner
                                   cross-signed (share_with = "verified") */
};

/*
 * Read the pickle key from the variable key_env names (or NAME_FILE).
 * *out is NULL (and PARLEY_OK) when key_env is NULL or the variable is
 * unset or empty: encryption is off, and one line says so.  A key shorter
 * than MATRIX_E2EE_KEY_MIN, unreadable, or not redactable is
 * PARLEY_ERR_CONFIG with err set.  host is copied.
 */
int matrix_e2ee_new(const struct matrix_e2ee_host *host, const char *key_env,
                    struct matrix_e2ee **out, char *err, size_t errlen);
void matrix_e2ee_free(struct matrix_e2ee *e);

/*
 * Load (or create and store) the account for user_id's device_id, then
 * upload what the server lacks.  done runs once, later, with PARLEY_OK
 * when the device can be used, or an error to retry after a backoff
 * (Redis or the homeserver failed).  A pickle the key cannot open is
 * PARLEY_ERR_CONFIG: it is never replaced by a new identity silently.
 */
typedef void matrix_e2ee_done_fn(int status, void *priv);
int matrix_e2ee_start(struct matrix_e2ee *e, const char *user_id,
                      const char *device_id, matrix_e2ee_done_fn *done,
                      void *priv);

/* A sync's counters (matrix_batch otk_count, fallback_unused): uploads
 * more one-time keys or a new fallback key in the background. */
void matrix_e2ee_sync_counts(struct matrix_e2ee *e, long otk_count,
                             int fallback_unused);

/*
 * Take in a sync's encrypted to-device events (matrix_batch to_device):
 * each Olm message is decrypted with a stored session of its sender's
 * device or a new one from its pre-key message (session and account
 * stored together), checked (sender, recipient, our keys), and an
 * m.room_key it carries becomes an inbound Megolm session in Redis.
 * Events that are not for us, or that no session decrypts, are logged and
 * skipped (the server hands each out once).  done runs once, later, with
 * PARLEY_OK when every event was handled, or an error when Redis failed:
 * then the sync must not advance (the server sends them again).  Returns
 * PARLEY_ERR_EOF, and done never runs, when no event is Olm for this
 * device; b must stay valid until done ran.
 */
struct matrix_batch;
int matrix_e2ee_to_device(struct matrix_e2ee *e, const struct matrix_batch *b,
                          matrix_e2ee_done_fn *done, void *priv);

/*
 * Decrypt a timeline m.room.encrypted event (its content as JSON) with
 * the inbound Megolm session stored for its room and session id; the
 * message index is claimed for event_id (a replay under another id is
 * refused).  fn runs once, later: PARLEY_OK with the checked plaintext
 * event ({type, content, room_id}, valid during the call),
 * PARLEY_ERR_EOF when no key is stored for it (yet), PARLEY_ERR_PROTOCOL
 * for a bad or replayed message, another error when Redis failed.
 * A malformed content is PARLEY_ERR_PROTOCOL at once (fn never runs).
 */
typedef void matrix_e2ee_event_fn(int status, const struct cJSON *event,
                                  void *priv);
int matrix_e2ee_decrypt(struct matrix_e2ee *e, const char *room_id,
                        const char *event_id, const char *cipher,
                        matrix_e2ee_event_fn *fn, void *priv);

/*
 * Encrypt an m.room.message content (JSON) for room_id with the room's
 * outbound Megolm session, creating (and rotating after a week or 100
 * messages) it as needed and sharing it first over Olm with every
 * signed device of every joined member that lacks it (/joined_members,
 * /keys/query, /keys/claim, PUT /sendToDevice).  The session is stored
 * after each message.  fn runs once, later, with the m.room.encrypted
 * content as JSON (valid during the call) or an error; one encryption at
 * a time per account (PARLEY_ERR_STATE while busy: retry later).
 */
typedef void matrix_e2ee_cipher_fn(int status, const char *content,
                                   void *priv);
int matrix_e2ee_encrypt(struct matrix_e2ee *e, const char *room_id,
                        const char *content, matrix_e2ee_cipher_fn *fn,
                        void *priv);

/*
 * Unable to decrypt: ask for the Megolm session of cipher (a room event's
 * m.room.encrypted content as JSON) with an m.room_key_request sent
 * unencrypted to every device of sender and of our own user (the spec's
 * recipients), fire and forget.  The session is remembered so that an
 * m.forwarded_room_key for it, from sender or from ourselves, is taken.
 * PARLEY_OK when sent (or asked already in this process),
 * PARLEY_ERR_STATE while another request is in flight (ask again later),
 * PARLEY_ERR_PROTOCOL for a malformed cipher.
 */
int matrix_e2ee_key_request(struct matrix_e2ee *e, const char *room_id,
                            const char *sender, const char *cipher);
/* Room keys stored since start (m.room_key and m.forwarded_room_key): a
 * change means that events kept undecrypted may decrypt now. */
unsigned long matrix_e2ee_keys_stored(const struct matrix_e2ee *e);

/*
 * A sync's device_lists (matrix_batch dl_stale, dl_all): forget the
 * cached device lists of those users (all of them with dl_all), so the
 * next key share queries them afresh: a new device gets the room key, a
 * removed one makes the session rotate.  done runs once, later; an error
 * means the sync must not advance.  PARLEY_ERR_EOF (done never runs)
 * when the batch names nobody.
 */
int matrix_e2ee_devices_stale(struct matrix_e2ee *e,
                              const struct matrix_batch *b,
                              matrix_e2ee_done_fn *done, void *priv);

/* Cancel requests in flight (adapter stop); callbacks no longer run. */
void matrix_e2ee_stop(struct matrix_e2ee *e);

/* 1 once start succeeded. */
int matrix_e2ee_ready(const struct matrix_e2ee *e);
/* The device's ed25519 key (public), for operators who verify it; "" before
 * start. */
const char *matrix_e2ee_ed25519(const struct matrix_e2ee *e);

#endif
