/*
 * Megolm room sessions for the Matrix adapter (matrix_crypto.h): our
 * outbound session per room (its m.room_key, encryption, rotation index
 * and pickle), inbound sessions built from room keys peers sent us
 * (decryption and pickles), and the m.megolm.v1.aes-sha2 event shapes.
 * Inputs are copied into scratch buffers before libolm decodes them in
 * place; secrets are wiped before they are freed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <olm/inbound_group_session.h>
#include <olm/olm.h>
#include <olm/outbound_group_session.h>

#include "matrix_crypto.h"
#include "matrix_crypto_private.h"
#include "status.h"

/* ---- Megolm -------------------------------------------------------------- */

struct matrix_megolm_out {
    OlmOutboundGroupSession *olm;
    void *mem;
    char id[MATRIX_SESSION_ID_MAX + 1];
};

struct matrix_megolm_in {
    OlmInboundGroupSession *olm;
    void *mem;
    char id[MATRIX_SESSION_ID_MAX + 1];
};

static struct matrix_megolm_out *megolm_out_alloc(void)
{
    struct matrix_megolm_out *s = calloc(1, sizeof(*s));

    if (!s)
        return NULL;
    s->mem = malloc(olm_outbound_group_session_size());
    if (!s->mem) {
        free(s);
        return NULL;
    }
    s->olm = olm_outbound_group_session(s->mem);
    return s;
}

void matrix_megolm_out_free(struct matrix_megolm_out *s)
{
    if (!s)
        return;
    olm_clear_outbound_group_session(s->olm);
    explicit_bzero(s->mem, olm_outbound_group_session_size());
    free(s->mem);
    free(s);
}

int matrix_megolm_out_new(struct matrix_megolm_out **out)
{
    struct matrix_megolm_out *s = megolm_out_alloc();
    size_t rlen;
    uint8_t *rnd = NULL;
    int result;

    if (!s)
        return PARLEY_ERR_OOM;
    rlen = olm_init_outbound_group_session_random_length(s->olm);
    result = crypto_random_buf(rlen, &rnd);
    if (!result && olm_init_outbound_group_session(s->olm, rnd, rlen) ==
                   olm_error())
        result = crypto_failed(olm_outbound_group_session_last_error(s->olm));
    crypto_free_random(rnd, rlen);
    if (result) {
        matrix_megolm_out_free(s);
        return result;
    }
    *out = s;
    return PARLEY_OK;
}

const char *matrix_megolm_out_id(struct matrix_megolm_out *s)
{
    size_t len = olm_outbound_group_session_id_length(s->olm);

    if (len >= sizeof(s->id) ||
        olm_outbound_group_session_id(s->olm, (uint8_t *)s->id, len) ==
        olm_error())
        return "";
    s->id[len] = '\0';
    return s->id;
}

uint32_t matrix_megolm_out_index(struct matrix_megolm_out *s)
{
    return olm_outbound_group_session_message_index(s->olm);
}

int matrix_megolm_room_key(struct matrix_megolm_out *s, const char *room_id,
                           cJSON **out)
{
    size_t len = olm_outbound_group_session_key_length(s->olm);
    char *key = malloc(len + 1);
    cJSON *c;
    int ok;

    if (!key)
        return PARLEY_ERR_OOM;
    if (olm_outbound_group_session_key(s->olm, (uint8_t *)key, len) ==
        olm_error()) {
        free(key);
        return crypto_failed(olm_outbound_group_session_last_error(s->olm));
    }
    key[len] = '\0';
    c = cJSON_CreateObject();
    ok = c && cJSON_AddStringToObject(c, "algorithm", MATRIX_ALG_MEGOLM) &&
         cJSON_AddStringToObject(c, "room_id", room_id) &&
         cJSON_AddStringToObject(c, "session_id", matrix_megolm_out_id(s)) &&
         cJSON_AddStringToObject(c, "session_key", key);
    matrix_crypto_free_secret(key);
    if (!ok) {
        matrix_crypto_wipe_json(c);
        return PARLEY_ERR_OOM;
    }
    *out = c;
    return PARLEY_OK;
}

int matrix_megolm_encrypt(struct matrix_megolm_out *s, const char *room_id,
                          const char *type, const cJSON *content,
                          const char *our_curve, const char *our_device,
                          cJSON **out)
{
    cJSON *pt = cJSON_CreateObject(), *c;
    char *plain = NULL, *msg;
    size_t plen, mlen;
    int ok;

    if (!pt)
        return PARLEY_ERR_OOM;
    ok = cJSON_AddStringToObject(pt, "type", type) &&
         cJSON_AddItemToObject(pt, "content", cJSON_Duplicate(content, 1)) &&
         cJSON_AddStringToObject(pt, "room_id", room_id);
    plain = ok ? cJSON_PrintUnformatted(pt) : NULL;
    cJSON_Delete(pt);
    if (!plain)
        return PARLEY_ERR_OOM;
    plen = strlen(plain);
    if (plen > MATRIX_CRYPTO_MSG_MAX) {
        matrix_crypto_free_secret(plain);
        return PARLEY_ERR_TOO_LARGE;
    }
    mlen = olm_group_encrypt_message_length(s->olm, plen);
    msg = malloc(mlen + 1);
    if (!msg) {
        matrix_crypto_free_secret(plain);
        return PARLEY_ERR_OOM;
    }
    if (olm_group_encrypt(s->olm, (uint8_t *)plain, plen, (uint8_t *)msg,
                          mlen) == olm_error()) {
        matrix_crypto_free_secret(plain);
        free(msg);
        return crypto_failed(olm_outbound_group_session_last_error(s->olm));
    }
    matrix_crypto_free_secret(plain);
    msg[mlen] = '\0';
    c = cJSON_CreateObject();
    ok = c && cJSON_AddStringToObject(c, "algorithm", MATRIX_ALG_MEGOLM) &&
         cJSON_AddStringToObject(c, "sender_key", our_curve) &&
         cJSON_AddStringToObject(c, "ciphertext", msg) &&
         cJSON_AddStringToObject(c, "session_id", matrix_megolm_out_id(s)) &&
         cJSON_AddStringToObject(c, "device_id", our_device);
    free(msg);
    if (!ok) {
        cJSON_Delete(c);
        return PARLEY_ERR_OOM;
    }
    *out = c;
    return PARLEY_OK;
}

int matrix_megolm_out_pickle(struct matrix_megolm_out *s, const uint8_t *key,
                             size_t key_len, char **out)
{
    size_t len = olm_pickle_outbound_group_session_length(s->olm);
    char *buf = malloc(len + 1);

    if (!buf)
        return PARLEY_ERR_OOM;
    if (olm_pickle_outbound_group_session(s->olm, key, key_len, buf, len) ==
        olm_error()) {
        free(buf);
        return crypto_failed(olm_outbound_group_session_last_error(s->olm));
    }
    buf[len] = '\0';
    *out = buf;
    return PARLEY_OK;
}

int matrix_megolm_out_unpickle(const uint8_t *key, size_t key_len,
                               const char *pickle,
                               struct matrix_megolm_out **out)
{
    struct matrix_megolm_out *s = megolm_out_alloc();
    char *buf;
    size_t len;
    int result = PARLEY_OK;

    buf = s && pickle ? crypto_scratch(pickle, &len) : NULL;
    if (!buf) {
        matrix_megolm_out_free(s);
        return pickle ? PARLEY_ERR_OOM : PARLEY_ERR_OTHER;
    }
    if (olm_unpickle_outbound_group_session(s->olm, key, key_len, buf,
                                            len) == olm_error())
        result = crypto_refused(olm_outbound_group_session_last_error(s->olm));
    free(buf);
    if (result) {
        matrix_megolm_out_free(s);
        return result;
    }
    *out = s;
    return PARLEY_OK;
}

static struct matrix_megolm_in *megolm_in_alloc(void)
{
    struct matrix_megolm_in *s = calloc(1, sizeof(*s));

    if (!s)
        return NULL;
    s->mem = malloc(olm_inbound_group_session_size());
    if (!s->mem) {
        free(s);
        return NULL;
    }
    s->olm = olm_inbound_group_session(s->mem);
    return s;
}

void matrix_megolm_in_free(struct matrix_megolm_in *s)
{
    if (!s)
        return;
    olm_clear_inbound_group_session(s->olm);
    explicit_bzero(s->mem, olm_inbound_group_session_size());
    free(s->mem);
    free(s);
}

const char *matrix_megolm_in_id(struct matrix_megolm_in *s)
{
    size_t len = olm_inbound_group_session_id_length(s->olm);

    if (len >= sizeof(s->id) ||
        olm_inbound_group_session_id(s->olm, (uint8_t *)s->id, len) ==
        olm_error())
        return "";
    s->id[len] = '\0';
    return s->id;
}

int matrix_megolm_in_from_room_key(const cJSON *content,
                                   struct matrix_megolm_in **out,
                                   const char **room_id,
                                   const char **session_id)
{
    const char *alg = crypto_json_str(content, "algorithm");
    const char *room = crypto_json_str(content, "room_id");
    const char *sid = crypto_json_str(content, "session_id");
    const char *key = crypto_json_str(content, "session_key");
    struct matrix_megolm_in *s;

    if (!alg || strcmp(alg, MATRIX_ALG_MEGOLM) != 0 || !room || !sid ||
        !key)
        return PARLEY_ERR_PROTOCOL;
    s = megolm_in_alloc();
    if (!s)
        return PARLEY_ERR_OOM;
    if (olm_init_inbound_group_session(s->olm, (const uint8_t *)key,
                                       strlen(key)) == olm_error()) {
        crypto_refused(olm_inbound_group_session_last_error(s->olm));
        matrix_megolm_in_free(s);
        return PARLEY_ERR_PROTOCOL;
    }
    if (strcmp(matrix_megolm_in_id(s), sid) != 0) {
        crypto_refused("session id does not match the key");
        matrix_megolm_in_free(s);
        return PARLEY_ERR_PROTOCOL;
    }
    if (room_id)
        *room_id = room;
    if (session_id)
        *session_id = sid;
    *out = s;
    return PARLEY_OK;
}

int matrix_megolm_in_from_forwarded(const cJSON *content,
                                    struct matrix_megolm_in **out,
                                    const char **room_id,
                                    const char **session_id,
                                    const char **sender_key,
                                    const char **sender_ed25519)
{
    const char *alg = crypto_json_str(content, "algorithm");
    const char *room = crypto_json_str(content, "room_id");
    const char *sid = crypto_json_str(content, "session_id");
    const char *key = crypto_json_str(content, "session_key");
    const char *sk = crypto_json_str(content, "sender_key");
    const char *ed = crypto_json_str(content, "sender_claimed_ed25519_key");
    struct matrix_megolm_in *s;

    if (!alg || strcmp(alg, MATRIX_ALG_MEGOLM) != 0 || !room || !sid ||
        !key || !sk || !ed)
        return PARLEY_ERR_PROTOCOL;
    s = megolm_in_alloc();
    if (!s)
        return PARLEY_ERR_OOM;
    if (olm_import_inbound_group_session(s->olm, (const uint8_t *)key,
                                         strlen(key)) == olm_error()) {
        crypto_refused(olm_inbound_group_session_last_error(s->olm));
        matrix_megolm_in_free(s);
        return PARLEY_ERR_PROTOCOL;
    }
    if (strcmp(matrix_megolm_in_id(s), sid) != 0) {
        crypto_refused("session id does not match the key");
        matrix_megolm_in_free(s);
        return PARLEY_ERR_PROTOCOL;
    }
    *room_id = room;
    *session_id = sid;
    *sender_key = sk;
    *sender_ed25519 = ed;
    *out = s;
    return PARLEY_OK;
}

int matrix_megolm_decrypt(struct matrix_megolm_in *s, const char *ciphertext,
                          char **plain, uint32_t *index)
{
    char *buf;
    uint8_t *pt;
    size_t len, max, n;
    uint32_t idx = 0;

    if (!ciphertext)
        return PARLEY_ERR_PROTOCOL;
    if (strlen(ciphertext) > MATRIX_CRYPTO_MSG_MAX)
        return PARLEY_ERR_TOO_LARGE;
    buf = crypto_scratch(ciphertext, &len);
    if (!buf)
        return PARLEY_ERR_OOM;
    max = olm_group_decrypt_max_plaintext_length(s->olm, (uint8_t *)buf,
                                                 len);
    free(buf);
    if (max == olm_error())
        return crypto_refused(olm_inbound_group_session_last_error(s->olm));
    buf = crypto_scratch(ciphertext, &len);
    pt = buf ? malloc(max + 1) : NULL;
    if (!pt) {
        free(buf);
        return PARLEY_ERR_OOM;
    }
    n = olm_group_decrypt(s->olm, (uint8_t *)buf, len, pt, max, &idx);
    free(buf);
    if (n == olm_error()) {
        explicit_bzero(pt, max + 1);
        free(pt);
        return crypto_refused(olm_inbound_group_session_last_error(s->olm));
    }
    pt[n] = '\0';
    *plain = (char *)pt;
    if (index)
        *index = idx;
    return PARLEY_OK;
}

int matrix_megolm_in_pickle(struct matrix_megolm_in *s, const uint8_t *key,
                            size_t key_len, char **out)
{
    size_t len = olm_pickle_inbound_group_session_length(s->olm);
    char *buf = malloc(len + 1);

    if (!buf)
        return PARLEY_ERR_OOM;
    if (olm_pickle_inbound_group_session(s->olm, key, key_len, buf, len) ==
        olm_error()) {
        free(buf);
        return crypto_failed(olm_inbound_group_session_last_error(s->olm));
    }
    buf[len] = '\0';
    *out = buf;
    return PARLEY_OK;
}

int matrix_megolm_in_unpickle(const uint8_t *key, size_t key_len,
                              const char *pickle,
                              struct matrix_megolm_in **out)
{
    struct matrix_megolm_in *s = megolm_in_alloc();
    char *buf;
    size_t len;
    int result = PARLEY_OK;

    buf = s && pickle ? crypto_scratch(pickle, &len) : NULL;
    if (!buf) {
        matrix_megolm_in_free(s);
        return pickle ? PARLEY_ERR_OOM : PARLEY_ERR_OTHER;
    }
    if (olm_unpickle_inbound_group_session(s->olm, key, key_len, buf, len) ==
        olm_error())
        result = crypto_refused(olm_inbound_group_session_last_error(s->olm));
    free(buf);
    if (result) {
        matrix_megolm_in_free(s);
        return result;
    }
    *out = s;
    return PARLEY_OK;
}

int matrix_megolm_parse(const cJSON *content, struct matrix_megolm_msg *msg)
{
    const char *alg = crypto_json_str(content, "algorithm");

    memset(msg, 0, sizeof(*msg));
    if (!alg || strcmp(alg, MATRIX_ALG_MEGOLM) != 0)
        return PARLEY_ERR_PROTOCOL;
    msg->sender_key = crypto_json_str(content, "sender_key");
    msg->session_id = crypto_json_str(content, "session_id");
    msg->ciphertext = crypto_json_str(content, "ciphertext");
    msg->device_id = crypto_json_str(content, "device_id");
    /* sender_key is deprecated (spec v1.3+) but every client still
     * sends it; the session id alone identifies the session. */
    if (!msg->session_id || !msg->ciphertext)
        return PARLEY_ERR_PROTOCOL;
    return PARLEY_OK;
}

int matrix_megolm_plaintext_check(const char *plain, const char *room_id,
                                  cJSON **event)
{
    cJSON *ev = cJSON_Parse(plain);
    const char *room = crypto_json_str(ev, "room_id");

    if (!crypto_json_str(ev, "type") ||
        !cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(ev, "content")) ||
        !room || !room_id || strcmp(room, room_id) != 0) {
        matrix_crypto_wipe_json(ev);
        return PARLEY_ERR_PROTOCOL;
    }
    *event = ev;
    return PARLEY_OK;
}
