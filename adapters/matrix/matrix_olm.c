/*
 * Olm sessions for the Matrix adapter (matrix_crypto.h): the 1:1
 * to-device ratchets made from our account and a peer's keys, their
 * pickles, and the m.olm.v1.curve25519-aes-sha2 event shapes around them
 * (building an encrypted to-device event, picking our ciphertext out of
 * one, and checking the decrypted plaintext's sender and recipient keys).
 * Inputs are copied into scratch buffers before libolm decodes them in
 * place; secrets are wiped before they are freed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <olm/olm.h>

#include "matrix_crypto.h"
#include "matrix_crypto_private.h"
#include "status.h"

/* ---- Olm sessions ------------------------------------------------------- */

struct matrix_olm {
    OlmSession *olm;
    void *mem;
    char id[MATRIX_SESSION_ID_MAX + 1];
};

static struct matrix_olm *olm_alloc(void)
{
    struct matrix_olm *s = calloc(1, sizeof(*s));

    if (!s)
        return NULL;
    s->mem = malloc(olm_session_size());
    if (!s->mem) {
        free(s);
        return NULL;
    }
    s->olm = olm_session(s->mem);
    return s;
}

void matrix_olm_free(struct matrix_olm *s)
{
    if (!s)
        return;
    olm_clear_session(s->olm);
    explicit_bzero(s->mem, olm_session_size());
    free(s->mem);
    free(s);
}

int matrix_olm_outbound(struct matrix_account *a, const char *their_curve,
                        const char *their_otk, struct matrix_olm **out)
{
    struct matrix_olm *s;
    size_t rlen;
    uint8_t *rnd = NULL;
    int result;

    if (!their_curve || !their_otk)
        return PARLEY_ERR_OTHER;
    s = olm_alloc();
    if (!s)
        return PARLEY_ERR_OOM;
    rlen = olm_create_outbound_session_random_length(s->olm);
    result = crypto_random_buf(rlen, &rnd);
    if (!result &&
        olm_create_outbound_session(s->olm, a->olm, their_curve,
                                    strlen(their_curve), their_otk,
                                    strlen(their_otk), rnd, rlen) ==
        olm_error())
        result = crypto_refused(olm_session_last_error(s->olm));
    crypto_free_random(rnd, rlen);
    if (result) {
        matrix_olm_free(s);
        return result;
    }
    *out = s;
    return PARLEY_OK;
}

int matrix_olm_inbound(struct matrix_account *a, const char *their_curve,
                       const char *body, struct matrix_olm **out)
{
    struct matrix_olm *s;
    char *buf;
    size_t len;
    int result = PARLEY_OK;

    if (!their_curve || !body)
        return PARLEY_ERR_OTHER;
    s = olm_alloc();
    buf = s ? crypto_scratch(body, &len) : NULL;
    if (!buf) {
        matrix_olm_free(s);
        return PARLEY_ERR_OOM;
    }
    if (olm_create_inbound_session_from(s->olm, a->olm, their_curve,
                                        strlen(their_curve), buf, len) ==
        olm_error())
        result = crypto_refused(olm_session_last_error(s->olm));
    else if (olm_remove_one_time_keys(a->olm, s->olm) == olm_error())
        /* A fallback key is not removed; libolm reports that as an
         * error, and it is harmless. */
        (void)0;
    free(buf);
    if (result) {
        matrix_olm_free(s);
        return result;
    }
    *out = s;
    return PARLEY_OK;
}

int matrix_olm_matches(struct matrix_olm *s, const char *their_curve,
                       const char *body)
{
    char *buf;
    size_t len, r;

    if (!their_curve || !body)
        return 0;
    buf = crypto_scratch(body, &len);
    if (!buf)
        return 0;
    r = olm_matches_inbound_session_from(s->olm, their_curve,
                                         strlen(their_curve), buf, len);
    free(buf);
    return r == 1;
}

int matrix_olm_decrypt(struct matrix_olm *s, int type, const char *body,
                       char **plain)
{
    char *buf, *pt;
    size_t len, max, n;

    if ((type != 0 && type != 1) || !body)
        return PARLEY_ERR_PROTOCOL;
    if (strlen(body) > MATRIX_CRYPTO_MSG_MAX)
        return PARLEY_ERR_TOO_LARGE;
    buf = crypto_scratch(body, &len);
    if (!buf)
        return PARLEY_ERR_OOM;
    max = olm_decrypt_max_plaintext_length(s->olm, (size_t)type, buf, len);
    free(buf);
    if (max == olm_error())
        return crypto_refused(olm_session_last_error(s->olm));
    buf = crypto_scratch(body, &len);
    pt = buf ? malloc(max + 1) : NULL;
    if (!pt) {
        free(buf);
        return PARLEY_ERR_OOM;
    }
    n = olm_decrypt(s->olm, (size_t)type, buf, len, pt, max);
    free(buf);
    if (n == olm_error()) {
        explicit_bzero(pt, max + 1);
        free(pt);
        return crypto_refused(olm_session_last_error(s->olm));
    }
    pt[n] = '\0';
    *plain = pt;
    return PARLEY_OK;
}

int matrix_olm_encrypt(struct matrix_olm *s, const char *plain, int *type,
                       char **body)
{
    size_t plen = strlen(plain), rlen, mlen;
    uint8_t *rnd = NULL;
    char *msg;
    int result;

    if (plen > MATRIX_CRYPTO_MSG_MAX)
        return PARLEY_ERR_TOO_LARGE;
    *type = (int)olm_encrypt_message_type(s->olm);
    rlen = olm_encrypt_random_length(s->olm);
    mlen = olm_encrypt_message_length(s->olm, plen);
    msg = malloc(mlen + 1);
    if (!msg)
        return PARLEY_ERR_OOM;
    result = crypto_random_buf(rlen, &rnd);
    if (!result && olm_encrypt(s->olm, plain, plen, rnd, rlen, msg, mlen) ==
                   olm_error())
        result = crypto_failed(olm_session_last_error(s->olm));
    crypto_free_random(rnd, rlen);
    if (result) {
        free(msg);
        return result;
    }
    msg[mlen] = '\0';
    *body = msg;
    return PARLEY_OK;
}

const char *matrix_olm_id(struct matrix_olm *s)
{
    size_t len = olm_session_id_length(s->olm);

    if (len >= sizeof(s->id) ||
        olm_session_id(s->olm, s->id, len) == olm_error())
        return "";
    s->id[len] = '\0';
    return s->id;
}

int matrix_olm_pickle(struct matrix_olm *s, const uint8_t *key,
                      size_t key_len, char **out)
{
    size_t len = olm_pickle_session_length(s->olm);
    char *buf = malloc(len + 1);

    if (!buf)
        return PARLEY_ERR_OOM;
    if (olm_pickle_session(s->olm, key, key_len, buf, len) == olm_error()) {
        free(buf);
        return crypto_failed(olm_session_last_error(s->olm));
    }
    buf[len] = '\0';
    *out = buf;
    return PARLEY_OK;
}

int matrix_olm_unpickle(const uint8_t *key, size_t key_len,
                        const char *pickle, struct matrix_olm **out)
{
    struct matrix_olm *s = olm_alloc();
    char *buf;
    size_t len;
    int result = PARLEY_OK;

    buf = s && pickle ? crypto_scratch(pickle, &len) : NULL;
    if (!buf) {
        matrix_olm_free(s);
        return pickle ? PARLEY_ERR_OOM : PARLEY_ERR_OTHER;
    }
    if (olm_unpickle_session(s->olm, key, key_len, buf, len) == olm_error())
        result = crypto_refused(olm_session_last_error(s->olm));
    free(buf);
    if (result) {
        matrix_olm_free(s);
        return result;
    }
    *out = s;
    return PARLEY_OK;
}

/* ---- Olm-encrypted to-device events ------------------------------------ */

static cJSON *ed_keys(const char *ed)
{
    cJSON *k = cJSON_CreateObject();

    if (k && !cJSON_AddStringToObject(k, "ed25519", ed)) {
        cJSON_Delete(k);
        return NULL;
    }
    return k;
}

int matrix_olm_encrypt_event(struct matrix_olm *s,
                             const struct matrix_olm_peer *me,
                             const struct matrix_olm_peer *them,
                             const char *type, const cJSON *content,
                             cJSON **out)
{
    cJSON *pt = cJSON_CreateObject(), *c = NULL, *ct, *one;
    char *plain = NULL, *body = NULL;
    int mtype = 0, ok;
    int result;

    if (!pt)
        return PARLEY_ERR_OOM;
    ok = cJSON_AddStringToObject(pt, "type", type) &&
         cJSON_AddItemToObject(pt, "content", cJSON_Duplicate(content, 1)) &&
         cJSON_AddStringToObject(pt, "sender", me->user_id) &&
         cJSON_AddStringToObject(pt, "sender_device", me->device_id) &&
         cJSON_AddItemToObject(pt, "keys", ed_keys(me->ed25519)) &&
         cJSON_AddStringToObject(pt, "recipient", them->user_id) &&
         cJSON_AddItemToObject(pt, "recipient_keys", ed_keys(them->ed25519));
    plain = ok ? cJSON_PrintUnformatted(pt) : NULL;
    matrix_crypto_wipe_json(pt);
    if (!plain)
        return PARLEY_ERR_OOM;
    result = matrix_olm_encrypt(s, plain, &mtype, &body);
    matrix_crypto_free_secret(plain);
    if (result)
        return result;
    c = cJSON_CreateObject();
    ok = c && cJSON_AddStringToObject(c, "algorithm", MATRIX_ALG_OLM) &&
         cJSON_AddStringToObject(c, "sender_key", me->curve25519);
    ct = ok ? cJSON_AddObjectToObject(c, "ciphertext") : NULL;
    one = ct ? cJSON_AddObjectToObject(ct, them->curve25519) : NULL;
    ok = one && cJSON_AddNumberToObject(one, "type", mtype) &&
         cJSON_AddStringToObject(one, "body", body);
    free(body);
    if (!ok) {
        cJSON_Delete(c);
        return PARLEY_ERR_OOM;
    }
    *out = c;
    return PARLEY_OK;
}

int matrix_olm_parse(const cJSON *content, const char *our_curve,
                     struct matrix_olm_msg *msg)
{
    const cJSON *ct, *mine, *type;
    const char *alg = crypto_json_str(content, "algorithm");

    memset(msg, 0, sizeof(*msg));
    if (!alg || strcmp(alg, MATRIX_ALG_OLM) != 0 || !our_curve)
        return PARLEY_ERR_PROTOCOL;
    msg->sender_key = crypto_json_str(content, "sender_key");
    ct = cJSON_GetObjectItemCaseSensitive(content, "ciphertext");
    mine = cJSON_IsObject(ct) ?
           cJSON_GetObjectItemCaseSensitive(ct, our_curve) : NULL;
    type = cJSON_GetObjectItemCaseSensitive(mine, "type");
    msg->body = crypto_json_str(mine, "body");
    if (!msg->sender_key || !msg->body || !cJSON_IsNumber(type) ||
        (type->valuedouble != 0 && type->valuedouble != 1))
        return PARLEY_ERR_PROTOCOL;
    msg->type = (int)type->valuedouble;
    return PARLEY_OK;
}

int matrix_olm_plaintext_check(const char *plain, const char *sender,
                               const char *our_user,
                               const char *our_ed25519, cJSON **event,
                               const char **sender_ed25519)
{
    cJSON *ev = cJSON_Parse(plain);
    const char *s, *r, *rk, *type;
    const cJSON *content;

    s = crypto_json_str(ev, "sender");
    r = crypto_json_str(ev, "recipient");
    rk = crypto_json_str(cJSON_GetObjectItemCaseSensitive(ev, "recipient_keys"),
                  "ed25519");
    type = crypto_json_str(ev, "type");
    content = cJSON_GetObjectItemCaseSensitive(ev, "content");
    if (!s || !r || !rk || !type || !cJSON_IsObject(content) || !sender ||
        strcmp(s, sender) != 0 || strcmp(r, our_user) != 0 ||
        strcmp(rk, our_ed25519) != 0) {
        matrix_crypto_wipe_json(ev);
        return PARLEY_ERR_PROTOCOL;
    }
    if (sender_ed25519)
        *sender_ed25519 =
            crypto_json_str(cJSON_GetObjectItemCaseSensitive(ev, "keys"),
                     "ed25519");
    *event = ev;
    return PARLEY_OK;
}
