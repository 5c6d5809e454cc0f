/*
 * Private to the E2EE client files (matrix_e2ee.c, matrix_e2ee_recv.c,
 * matrix_e2ee_send.c): the client's state and the two cleanups the life
 * cycle in matrix_e2ee.c calls into the other halves.  The public
 * interface is matrix_e2ee.h.
 */
#ifndef PARLEY_MATRIX_E2EE_PRIVATE_H
#define PARLEY_MATRIX_E2EE_PRIVATE_H

#include <stddef.h>

#include <cjson/cJSON.h>

#include "matrix.h"
#include "matrix_crypto.h"
#include "matrix_e2ee.h"

struct e2ee_enc;

/* Session ids this process asked others for (m.room_key_request), and
 * whom: only those may forward it to us (m.forwarded_room_key).  A ring:
 * the oldest requests are forgotten first. */
#define E2EE_ASKED_MAX 128
/* Megolm session ids are 43 base64 characters. */
#define E2EE_SID_MAX 64
struct e2ee_asked {
    char sid[E2EE_SID_MAX];
    char user[MATRIX_ID_MAX + 1];   /* the sender of the event */
};

struct matrix_e2ee {
    struct matrix_e2ee_host host;
    char *account_name;             /* copy of host.account */
    char *key_env;                  /* for log lines: the variable name */
    char *pickle_key;               /* the secret; wiped on free */
    size_t pickle_key_len;
    struct matrix_account *acct;
    char *user_id;
    char *device_id;
    int ready;
    int fresh;                      /* the account was created this start */
    int uploading;                  /* one /keys/upload at a time */
    int enc_busy;                   /* one matrix_e2ee_encrypt at a time */
    struct e2ee_enc *enc;           /* its state while e->req is its own */
    int stopped;
    struct http_request *req;
    matrix_e2ee_done_fn *done;      /* start's callback, until it ran */
    void *done_priv;

    /* To-device intake: one event at a time, each step through Redis. */
    const struct matrix_batch *td_batch;
    size_t td_i;
    matrix_e2ee_done_fn *td_done;
    void *td_priv;
    cJSON *td_content;              /* the event being handled */
    struct matrix_olm_msg td_msg;   /* borrowed from td_content */
    struct matrix_olm *td_session;  /* the session that decrypted it */
    char *td_plain;                 /* its plaintext (wiped) */

    /* Unable to decrypt (matrix_e2ee_keyreq.c). */
    struct http_request *kr_req;    /* the key request in flight */
    struct e2ee_asked asked[E2EE_ASKED_MAX];
    size_t asked_pos;
    unsigned long keys_stored;      /* room keys stored since start */
    unsigned long dl_serial;        /* device lists marked stale: counts
                                       the syncs that did it */
};

/* Drop the to-device event in hand: its content, session and plaintext
 * (wiped).  matrix_e2ee_recv.c. */
void e2ee_td_clear(struct matrix_e2ee *e);
/* Free an encryption's state and x itself; its callback is not called.
 * matrix_e2ee_send.c. */
void e2ee_enc_free(struct e2ee_enc *x);
/* 1 when this process asked for session sid in a request that went to
 * user (the event's sender; our own user's devices were asked too). */
int e2ee_asked(const struct matrix_e2ee *e, const char *sid,
               const char *user);

#endif /* PARLEY_MATRIX_E2EE_PRIVATE_H */
