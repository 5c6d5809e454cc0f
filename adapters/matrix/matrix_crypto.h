/*
 * End-to-end encryption for the Matrix adapter, over libolm: the device's
 * Olm account (identity keys, one-time and fallback keys, signatures),
 * Olm sessions for to-device messages (m.olm.v1.curve25519-aes-sha2) and
 * Megolm group sessions for room events (m.megolm.v1.aes-sha2).
 *
 * Pure like the rest of matrix.h: no network, loop or Redis.  The adapter
 * keeps the objects, stores their pickles through state.h and moves the
 * JSON built here over HTTP; the tests round-trip between two accounts.
 * This is the only file that includes the olm headers (README.md explains why
 * libolm and how to leave it); it does no cryptography of its own: keys,
 * ratchets, signatures and ciphers are libolm's, random bytes come from
 * random_bytes (random.h: getrandom(2) every time).
 *
 * Secrets: pickle keys, session keys and plaintexts are wiped
 * (explicit_bzero) before their buffers are freed; nothing here logs.
 * Pickles are libolm's own format, encrypted and authenticated with the
 * pickle key, so they may be stored.
 *
 * Errors: functions return a parley status; PARLEY_ERR_PROTOCOL means
 * hostile or broken input (bad MAC, unknown message index, malformed
 * JSON, a wrong recipient), PARLEY_ERR_OTHER a libolm failure.  The libolm
 * error name of the last failure in this thread is matrix_crypto_error()
 * (e.g. "BAD_MESSAGE_MAC"); it never contains key material.
 */
#ifndef PARLEY_MATRIX_CRYPTO_H
#define PARLEY_MATRIX_CRYPTO_H

#include <stddef.h>
#include <stdint.h>

struct cJSON;

#define MATRIX_ALG_OLM "m.olm.v1.curve25519-aes-sha2"
#define MATRIX_ALG_MEGOLM "m.megolm.v1.aes-sha2"

/* Unpadded base64 of a 32-byte key is 43 characters. */
#define MATRIX_KEY_MAX 64
/* Megolm session ids are 43 characters too; Olm's as well. */
#define MATRIX_SESSION_ID_MAX 64
/* Largest ciphertext or plaintext handled: an event is at most 64 KiB
 * (MATRIX_EVENT_MAX); base64 and Olm framing stay well under twice that. */
#define MATRIX_CRYPTO_MSG_MAX (160 * 1024)
/* One-time keys generated per upload; the server is kept near half of
 * the account's capacity (olm_account_max_number_of_one_time_keys, 100
 * in libolm 3.2), as the spec suggests. */
#define MATRIX_OTK_BATCH_MAX 50

/* libolm's name of this thread's last failure, or "" (never NULL). */
const char *matrix_crypto_error(void);

/* ---- canonical JSON ----------------------------------------------------- */

/*
 * The spec's canonical JSON of obj ("Signing JSON"): object keys sorted by
 * UTF-8 bytes (= code points), no insignificant whitespace, UTF-8 as is,
 * only integers in [-(2^53)+1, 2^53-1].  Members "signatures" and
 * "unsigned" of the top-level object are left out, as signing requires.
 * *out is malloc'd (caller frees).  A non-integer number is
 * PARLEY_ERR_PROTOCOL.
 */
int matrix_canonical_json(const struct cJSON *obj, char **out);

/* ---- account ------------------------------------------------------------ */

struct matrix_account;

/* A fresh device identity. */
int matrix_account_new(struct matrix_account **out);
/* Restore one from matrix_account_pickle's text with the same key.  A
 * wrong key or damaged pickle is PARLEY_ERR_PROTOCOL. */
int matrix_account_unpickle(const uint8_t *key, size_t key_len,
                            const char *pickle,
                            struct matrix_account **out);
/* *out malloc'd (caller frees). */
int matrix_account_pickle(struct matrix_account *a, const uint8_t *key,
                          size_t key_len, char **out);
void matrix_account_free(struct matrix_account *a);

/* Our public identity keys (borrowed, valid while a lives). */
const char *matrix_account_curve25519(const struct matrix_account *a);
const char *matrix_account_ed25519(const struct matrix_account *a);

/* How many one-time keys libolm can hold (100 in 3.2). */
size_t matrix_account_max_otks(const struct matrix_account *a);

/*
 * Add "signatures": {user_id: {"ed25519:<device_id>": sig}} to obj,
 * signing its canonical JSON (existing signatures and unsigned excluded,
 * kept).  obj must be an object.
 */
int matrix_account_sign_json(struct matrix_account *a, const char *user_id,
                             const char *device_id, struct cJSON *obj);

/* The signed device_keys object for /keys/upload (caller frees). */
int matrix_account_device_keys(struct matrix_account *a,
                               const char *user_id, const char *device_id,
                               struct cJSON **out);

/*
 * Generate n one-time keys (n <= MATRIX_OTK_BATCH_MAX) and return every
 * unpublished one as the "one_time_keys" object of /keys/upload:
 * {"signed_curve25519:<id>": {"key": ..., "signatures": ...}}.  n = 0
 * only returns those still unpublished (a retried upload).  After the
 * server accepted them, call matrix_account_mark_published; until then a
 * retry uploads the same keys (the server refuses a key id reused with
 * another key).  *out is owned by the caller.
 */
int matrix_account_one_time_keys(struct matrix_account *a,
                                 const char *user_id, const char *device_id,
                                 size_t n, struct cJSON **out);
/*
 * The "fallback_keys" object: a new fallback key when fresh is set (the
 * previous one stays usable until the next rotation), else the current
 * unpublished one; *out is NULL when there is none to upload.
 */
int matrix_account_fallback_key(struct matrix_account *a,
                                const char *user_id, const char *device_id,
                                int fresh, struct cJSON **out);
/* One-time and fallback keys are now on the server. */
void matrix_account_mark_published(struct matrix_account *a);

/*
 * The body of POST /keys/upload: device_keys when with_device, n new
 * one-time keys (with every one still unpublished), and a new fallback
 * key when fresh_fallback (or the unpublished one).  *out malloc'd.
 */
int matrix_keys_upload_body(struct matrix_account *a, const char *user_id,
                            const char *device_id, int with_device,
                            size_t n, int fresh_fallback, char **out);
/* signed_curve25519 from a /keys/upload answer's one_time_key_counts (or
 * /sync's device_one_time_keys_count object); -1 when absent. */
long matrix_otk_count(const struct cJSON *counts);

/*
 * 1 when obj carries a valid ed25519 signature by user_id's device
 * device_id with the given key, 0 when not (absent, malformed, wrong).
 */
int matrix_verify_json(const struct cJSON *obj, const char *user_id,
                       const char *device_id, const char *ed25519_key);

/*
 * 1 when device (its device_keys object) is verified by its owner through
 * cross-signing: master is user_id's master key object (usage "master")
 * and self_signing its self-signing key (usage "self_signing", signed by
 * the master key), and the device carries a valid signature by the
 * self-signing key.  The master key is taken as the homeserver gives it
 * (not pinned).  0 otherwise, or when either key is missing.
 */
int matrix_device_cross_signed(const struct cJSON *device,
                               const char *user_id,
                               const struct cJSON *master,
                               const struct cJSON *self_signing);

/* ---- Olm sessions (to-device) -------------------------------------------- */

struct matrix_olm;

/* A session to their device from its curve25519 identity key and one of
 * its claimed one-time (or fallback) keys. */
int matrix_olm_outbound(struct matrix_account *a, const char *their_curve,
                        const char *their_otk, struct matrix_olm **out);
/*
 * A session from their pre-key message (type 0): the one-time key it used
 * is removed from a, so the caller must store a's pickle too.  body is not
 * modified.  A message not meant for a's keys is PARLEY_ERR_PROTOCOL.
 */
int matrix_olm_inbound(struct matrix_account *a, const char *their_curve,
                       const char *body, struct matrix_olm **out);
/* 1 when a pre-key message belongs to session s (so decrypt with s). */
int matrix_olm_matches(struct matrix_olm *s, const char *their_curve,
                       const char *body);
/* type 0 (pre-key) or 1; *plain malloc'd and NUL-terminated (caller
 * wipes and frees; matrix_crypto_free_secret does both). */
int matrix_olm_decrypt(struct matrix_olm *s, int type, const char *body,
                       char **plain);
/* *body malloc'd. */
int matrix_olm_encrypt(struct matrix_olm *s, const char *plain, int *type,
                       char **body);
/* The session id (borrowed, valid until the next call on s). */
const char *matrix_olm_id(struct matrix_olm *s);
int matrix_olm_pickle(struct matrix_olm *s, const uint8_t *key,
                      size_t key_len, char **out);
int matrix_olm_unpickle(const uint8_t *key, size_t key_len,
                        const char *pickle, struct matrix_olm **out);
void matrix_olm_free(struct matrix_olm *s);

/* ---- Olm-encrypted to-device events ------------------------------------ */

/* Who sends and who receives an Olm-encrypted to-device event. */
struct matrix_olm_peer {
    const char *user_id;
    const char *device_id;
    const char *curve25519;
    const char *ed25519;
};

/*
 * Encrypt the event {type, content} from me (a) to them with s: the
 * plaintext carries sender, recipient, recipient_keys and keys as the
 * spec requires; *out is the m.room.encrypted content
 * {algorithm, sender_key, ciphertext: {their_curve: {type, body}}}.
 */
int matrix_olm_encrypt_event(struct matrix_olm *s,
                             const struct matrix_olm_peer *me,
                             const struct matrix_olm_peer *them,
                             const char *type, const struct cJSON *content,
                             struct cJSON **out);

/* The parts of a to-device m.room.encrypted content meant for our_curve
 * (borrowed from content).  PARLEY_ERR_PROTOCOL when it is not Olm, not
 * for us, or malformed. */
struct matrix_olm_msg {
    const char *sender_key;
    int type;
    const char *body;
};
int matrix_olm_parse(const struct cJSON *content, const char *our_curve,
                     struct matrix_olm_msg *msg);

/*
 * Check a decrypted Olm plaintext and return its event (caller frees):
 * sender must be the to-device sender, recipient and recipient_keys.ed25519
 * must be us (else a message could be replayed to another device).
 * *sender_ed25519 (may be NULL) is borrowed from *event: the sending
 * device's claimed signing key, which the caller compares with the one
 * from /keys/query.
 */
int matrix_olm_plaintext_check(const char *plain, const char *sender,
                               const char *our_user,
                               const char *our_ed25519,
                               struct cJSON **event,
                               const char **sender_ed25519);

/* ---- Megolm sessions (rooms) --------------------------------------------- */

struct matrix_megolm_out;
struct matrix_megolm_in;

int matrix_megolm_out_new(struct matrix_megolm_out **out);
const char *matrix_megolm_out_id(struct matrix_megolm_out *s);
/* Messages encrypted so far (the next message index). */
uint32_t matrix_megolm_out_index(struct matrix_megolm_out *s);
/*
 * The m.room_key content that shares s for room_id (caller frees; it
 * holds the session key: wipe it with matrix_crypto_wipe_json).
 */
int matrix_megolm_room_key(struct matrix_megolm_out *s, const char *room_id,
                           struct cJSON **out);
/*
 * Encrypt the room event {type, content, room_id}; *out is the
 * m.room.encrypted content {algorithm, sender_key, ciphertext, session_id,
 * device_id} (caller frees).
 */
int matrix_megolm_encrypt(struct matrix_megolm_out *s, const char *room_id,
                          const char *type, const struct cJSON *content,
                          const char *our_curve, const char *our_device,
                          struct cJSON **out);
int matrix_megolm_out_pickle(struct matrix_megolm_out *s, const uint8_t *key,
                             size_t key_len, char **out);
int matrix_megolm_out_unpickle(const uint8_t *key, size_t key_len,
                               const char *pickle,
                               struct matrix_megolm_out **out);
void matrix_megolm_out_free(struct matrix_megolm_out *s);

/*
 * An inbound session from an m.room_key content received over Olm:
 * algorithm must be Megolm, and room_id and session_id present; the
 * session id the key yields must equal the one announced.  *room_id and
 * *session_id (may be NULL) are borrowed from content.
 */
int matrix_megolm_in_from_room_key(const struct cJSON *content,
                                   struct matrix_megolm_in **out,
                                   const char **room_id,
                                   const char **session_id);
/*
 * The same from an m.forwarded_room_key content (a key someone re-shared
 * on request): the session_key is in libolm's export format.  *sender_key
 * is the curve25519 key of the device that made the session and
 * *sender_ed25519 its claimed signing key (both borrowed, required).
 */
int matrix_megolm_in_from_forwarded(const struct cJSON *content,
                                    struct matrix_megolm_in **out,
                                    const char **room_id,
                                    const char **session_id,
                                    const char **sender_key,
                                    const char **sender_ed25519);
const char *matrix_megolm_in_id(struct matrix_megolm_in *s);
/* *plain malloc'd; *index is the message index (replay detection: the
 * same (session, index) must not decrypt two different event ids). */
int matrix_megolm_decrypt(struct matrix_megolm_in *s, const char *ciphertext,
                          char **plain, uint32_t *index);
int matrix_megolm_in_pickle(struct matrix_megolm_in *s, const uint8_t *key,
                            size_t key_len, char **out);
int matrix_megolm_in_unpickle(const uint8_t *key, size_t key_len,
                              const char *pickle,
                              struct matrix_megolm_in **out);
void matrix_megolm_in_free(struct matrix_megolm_in *s);

/* A timeline m.room.encrypted content (Megolm), borrowed from content. */
struct matrix_megolm_msg {
    const char *sender_key;
    const char *session_id;
    const char *ciphertext;
    const char *device_id;      /* may be NULL (deprecated field) */
};
int matrix_megolm_parse(const struct cJSON *content,
                        struct matrix_megolm_msg *msg);
/*
 * Check a decrypted Megolm plaintext: JSON object with a string type, an
 * object content and room_id equal to the room it arrived in (else an
 * event could be replayed into another room).  *event caller frees.
 */
int matrix_megolm_plaintext_check(const char *plain, const char *room_id,
                                  struct cJSON **event);

/* ---- secrets ------------------------------------------------------------- */

/* Wipe and free a NUL-terminated secret (plaintext, session key); NULL
 * is fine. */
void matrix_crypto_free_secret(char *s);
/* Wipe every string in a JSON tree, then free it; NULL is fine. */
void matrix_crypto_wipe_json(struct cJSON *j);

#endif
