/*
 * Olm and Megolm over libolm for the Matrix adapter (matrix_crypto.h):
 * the device account, its signed keys, Olm to-device sessions and Megolm
 * room sessions, and the JSON shapes the client-server spec's "End-to-End
 * Encryption" module wraps around them.  libolm destroys the input of
 * every decode (it base64-decodes in place), so every input is copied
 * into a scratch buffer first; every buffer that held a secret is wiped
 * before it is freed.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <olm/inbound_group_session.h>
#include <olm/olm.h>
#include <olm/outbound_group_session.h>

#include "matrix_crypto.h"
#include "random.h"
#include "status.h"

/* Canonical JSON allows integers of magnitude up to 2^53 - 1. */
#define CANON_INT_MAX 9007199254740991.0
/* Nesting accepted in JSON we sign or verify (device keys are 3 deep). */
#define CANON_DEPTH_MAX 32

static _Thread_local char crypto_err[64];

const char *matrix_crypto_error(void)
{
    return crypto_err;
}

static int olm_failed(const char *what)
{
    snprintf(crypto_err, sizeof(crypto_err), "%s", what ? what : "");
    return PARLEY_ERR_OTHER;
}

/* Bad input from a peer: a MAC, a format or an index libolm refused. */
static int olm_refused(const char *what)
{
    snprintf(crypto_err, sizeof(crypto_err), "%s", what ? what : "");
    return PARLEY_ERR_PROTOCOL;
}

void matrix_crypto_free_secret(char *s)
{
    if (!s)
        return;
    explicit_bzero(s, strlen(s));
    free(s);
}

static void wipe_tree(cJSON *j)
{
    for (; j; j = j->next) {
        if (cJSON_IsString(j) && j->valuestring)
            explicit_bzero(j->valuestring, strlen(j->valuestring));
        wipe_tree(j->child);
    }
}

void matrix_crypto_wipe_json(cJSON *j)
{
    if (!j)
        return;
    if (cJSON_IsString(j) && j->valuestring)
        explicit_bzero(j->valuestring, strlen(j->valuestring));
    wipe_tree(j->child);
    cJSON_Delete(j);
}

/* len random bytes from the kernel (random.h's random_bytes, never the
 * fast generator) into a malloc'd buffer (caller wipes and frees). */
static int random_buf(size_t len, uint8_t **out)
{
    uint8_t *buf = malloc(len ? len : 1);

    if (!buf)
        return PARLEY_ERR_OOM;
    if (len && random_bytes(buf, len) != PARLEY_OK) {
        free(buf);
        return olm_failed("no random bytes from the kernel");
    }
    *out = buf;
    return PARLEY_OK;
}

static void free_random(uint8_t *buf, size_t len)
{
    if (!buf)
        return;
    explicit_bzero(buf, len);
    free(buf);
}

/* A writable copy of s for a libolm call that decodes in place. */
static char *scratch(const char *s, size_t *len)
{
    char *c;

    *len = strlen(s);
    c = malloc(*len + 1);
    if (c)
        memcpy(c, s, *len + 1);
    return c;
}

/* ---- canonical JSON ----------------------------------------------------- */

static int key_cmp(const void *a, const void *b)
{
    const cJSON *x = *(const cJSON *const *)a;
    const cJSON *y = *(const cJSON *const *)b;

    return strcmp(x->string, y->string);
}

/* A copy of j with object members sorted and numbers as raw integers. */
static int canon_copy(const cJSON *j, int depth, int top, cJSON **out)
{
    cJSON *c = NULL, **kids = NULL;
    const cJSON *k;
    size_t n = 0, i;
    char num[32];
    int result = PARLEY_OK;

    if (depth > CANON_DEPTH_MAX)
        return PARLEY_ERR_PROTOCOL;
    if (cJSON_IsNumber(j)) {
        double d = j->valuedouble;

        if (!isfinite(d) || d != floor(d) || fabs(d) > CANON_INT_MAX)
            return PARLEY_ERR_PROTOCOL;
        snprintf(num, sizeof(num), "%lld", (long long)d);
        c = cJSON_CreateRaw(num);
    } else if (cJSON_IsObject(j) || cJSON_IsArray(j)) {
        c = cJSON_IsObject(j) ? cJSON_CreateObject() : cJSON_CreateArray();
        for (k = j->child; k; k = k->next)
            n++;
        if (c && n) {
            kids = calloc(n, sizeof(*kids));
            if (!kids)
                result = PARLEY_ERR_OOM;
        }
        i = 0;
        for (k = j->child; c && !result && k; k = k->next) {
            if (top && k->string && (!strcmp(k->string, "signatures") ||
                                     !strcmp(k->string, "unsigned")))
                continue;
            result = canon_copy(k, depth + 1, 0, &kids[i]);
            if (!result && cJSON_IsObject(j)) {
                kids[i]->string = strdup(k->string ? k->string : "");
                if (!kids[i]->string)
                    result = PARLEY_ERR_OOM;
            }
            if (!result)
                i++;
            else if (kids[i])
                cJSON_Delete(kids[i]);
        }
        if (!result && cJSON_IsObject(j) && i > 1)
            qsort(kids, i, sizeof(*kids), key_cmp);
        for (n = 0; n < i; n++) {
            if (result)
                cJSON_Delete(kids[n]);
            else
                cJSON_AddItemToArray(c, kids[n]);
        }
        free(kids);
    } else {
        c = cJSON_Duplicate(j, 0);
        if (c && c->string && !(c->type & cJSON_StringIsConst)) {
            free(c->string);
            c->string = NULL;
        }
    }
    if (!c)
        return PARLEY_ERR_OOM;
    if (result) {
        cJSON_Delete(c);
        return result;
    }
    *out = c;
    return PARLEY_OK;
}

int matrix_canonical_json(const cJSON *obj, char **out)
{
    cJSON *c = NULL;
    int result;

    if (!obj || !out)
        return PARLEY_ERR_OTHER;
    result = canon_copy(obj, 0, 1, &c);
    if (result)
        return result;
    *out = cJSON_PrintUnformatted(c);
    cJSON_Delete(c);
    return *out ? PARLEY_OK : PARLEY_ERR_OOM;
}

/* ---- account ------------------------------------------------------------ */

struct matrix_account {
    OlmAccount *olm;
    void *mem;
    char curve[MATRIX_KEY_MAX];
    char ed[MATRIX_KEY_MAX];
};

static struct matrix_account *account_alloc(void)
{
    struct matrix_account *a = calloc(1, sizeof(*a));

    if (!a)
        return NULL;
    a->mem = malloc(olm_account_size());
    if (!a->mem) {
        free(a);
        return NULL;
    }
    a->olm = olm_account(a->mem);
    return a;
}

void matrix_account_free(struct matrix_account *a)
{
    if (!a)
        return;
    olm_clear_account(a->olm);
    explicit_bzero(a->mem, olm_account_size());
    free(a->mem);
    free(a);
}

/* Copy the identity keys out of libolm's JSON. */
static int account_load_keys(struct matrix_account *a)
{
    size_t len = olm_account_identity_keys_length(a->olm);
    char *buf = malloc(len + 1);
    cJSON *j, *c, *e;
    int result = PARLEY_ERR_OTHER;

    if (!buf)
        return PARLEY_ERR_OOM;
    if (olm_account_identity_keys(a->olm, buf, len) == olm_error()) {
        free(buf);
        return olm_failed(olm_account_last_error(a->olm));
    }
    buf[len] = '\0';
    j = cJSON_Parse(buf);
    free(buf);
    c = cJSON_GetObjectItemCaseSensitive(j, "curve25519");
    e = cJSON_GetObjectItemCaseSensitive(j, "ed25519");
    if (cJSON_IsString(c) && cJSON_IsString(e) &&
        strlen(c->valuestring) < sizeof(a->curve) &&
        strlen(e->valuestring) < sizeof(a->ed)) {
        snprintf(a->curve, sizeof(a->curve), "%s", c->valuestring);
        snprintf(a->ed, sizeof(a->ed), "%s", e->valuestring);
        result = PARLEY_OK;
    }
    cJSON_Delete(j);
    return result;
}

int matrix_account_new(struct matrix_account **out)
{
    struct matrix_account *a = account_alloc();
    size_t rlen;
    uint8_t *rnd = NULL;
    int result;

    if (!a)
        return PARLEY_ERR_OOM;
    rlen = olm_create_account_random_length(a->olm);
    result = random_buf(rlen, &rnd);
    if (!result && olm_create_account(a->olm, rnd, rlen) == olm_error())
        result = olm_failed(olm_account_last_error(a->olm));
    free_random(rnd, rlen);
    if (!result)
        result = account_load_keys(a);
    if (result) {
        matrix_account_free(a);
        return result;
    }
    *out = a;
    return PARLEY_OK;
}

int matrix_account_unpickle(const uint8_t *key, size_t key_len,
                            const char *pickle, struct matrix_account **out)
{
    struct matrix_account *a;
    char *buf;
    size_t len;
    int result = PARLEY_OK;

    if (!key || !pickle)
        return PARLEY_ERR_OTHER;
    a = account_alloc();
    buf = a ? scratch(pickle, &len) : NULL;
    if (!buf) {
        matrix_account_free(a);
        return PARLEY_ERR_OOM;
    }
    if (olm_unpickle_account(a->olm, key, key_len, buf, len) == olm_error())
        result = olm_refused(olm_account_last_error(a->olm));
    free(buf);
    if (!result)
        result = account_load_keys(a);
    if (result) {
        matrix_account_free(a);
        return result;
    }
    *out = a;
    return PARLEY_OK;
}

int matrix_account_pickle(struct matrix_account *a, const uint8_t *key,
                          size_t key_len, char **out)
{
    size_t len = olm_pickle_account_length(a->olm);
    char *buf = malloc(len + 1);

    if (!buf)
        return PARLEY_ERR_OOM;
    if (olm_pickle_account(a->olm, key, key_len, buf, len) == olm_error()) {
        free(buf);
        return olm_failed(olm_account_last_error(a->olm));
    }
    buf[len] = '\0';
    *out = buf;
    return PARLEY_OK;
}

const char *matrix_account_curve25519(const struct matrix_account *a)
{
    return a->curve;
}

const char *matrix_account_ed25519(const struct matrix_account *a)
{
    return a->ed;
}

size_t matrix_account_max_otks(const struct matrix_account *a)
{
    return olm_account_max_number_of_one_time_keys(a->olm);
}

/* The signature of text by a, malloc'd. */
static int account_sign(struct matrix_account *a, const char *text,
                        char **out)
{
    size_t len = olm_account_signature_length(a->olm);
    char *sig = malloc(len + 1);

    if (!sig)
        return PARLEY_ERR_OOM;
    if (olm_account_sign(a->olm, text, strlen(text), sig, len) ==
        olm_error()) {
        free(sig);
        return olm_failed(olm_account_last_error(a->olm));
    }
    sig[len] = '\0';
    *out = sig;
    return PARLEY_OK;
}

int matrix_account_sign_json(struct matrix_account *a, const char *user_id,
                             const char *device_id, cJSON *obj)
{
    char *canon = NULL, *sig = NULL, name[MATRIX_KEY_MAX + 300];
    cJSON *sigs, *mine;
    int result;

    if (!cJSON_IsObject(obj) || !user_id || !device_id)
        return PARLEY_ERR_OTHER;
    if ((size_t)snprintf(name, sizeof(name), "ed25519:%s", device_id) >=
        sizeof(name))
        return PARLEY_ERR_TOO_LARGE;
    result = matrix_canonical_json(obj, &canon);
    if (!result)
        result = account_sign(a, canon, &sig);
    free(canon);
    if (result)
        return result;
    sigs = cJSON_GetObjectItemCaseSensitive(obj, "signatures");
    if (!cJSON_IsObject(sigs)) {
        cJSON_DeleteItemFromObjectCaseSensitive(obj, "signatures");
        sigs = cJSON_AddObjectToObject(obj, "signatures");
    }
    mine = sigs ? cJSON_GetObjectItemCaseSensitive(sigs, user_id) : NULL;
    if (sigs && !cJSON_IsObject(mine)) {
        cJSON_DeleteItemFromObjectCaseSensitive(sigs, user_id);
        mine = cJSON_AddObjectToObject(sigs, user_id);
    }
    if (mine) {
        cJSON_DeleteItemFromObjectCaseSensitive(mine, name);
        if (!cJSON_AddStringToObject(mine, name, sig))
            mine = NULL;
    }
    free(sig);
    return mine ? PARLEY_OK : PARLEY_ERR_OOM;
}

int matrix_account_device_keys(struct matrix_account *a,
                               const char *user_id, const char *device_id,
                               cJSON **out)
{
    cJSON *dk = cJSON_CreateObject(), *algs, *keys;
    char name[MATRIX_KEY_MAX + 300];
    int ok;
    int result;

    if (!dk)
        return PARLEY_ERR_OOM;
    ok = cJSON_AddStringToObject(dk, "user_id", user_id) &&
         cJSON_AddStringToObject(dk, "device_id", device_id);
    algs = ok ? cJSON_AddArrayToObject(dk, "algorithms") : NULL;
    ok = algs &&
         cJSON_AddItemToArray(algs, cJSON_CreateString(MATRIX_ALG_OLM)) &&
         cJSON_AddItemToArray(algs, cJSON_CreateString(MATRIX_ALG_MEGOLM));
    keys = ok ? cJSON_AddObjectToObject(dk, "keys") : NULL;
    ok = keys != NULL;
    if (ok) {
        snprintf(name, sizeof(name), "curve25519:%s", device_id);
        ok = cJSON_AddStringToObject(keys, name, a->curve) != NULL;
    }
    if (ok) {
        snprintf(name, sizeof(name), "ed25519:%s", device_id);
        ok = cJSON_AddStringToObject(keys, name, a->ed) != NULL;
    }
    result = ok ? matrix_account_sign_json(a, user_id, device_id, dk) :
                  PARLEY_ERR_OOM;
    if (result) {
        cJSON_Delete(dk);
        return result;
    }
    *out = dk;
    return PARLEY_OK;
}

/*
 * {"curve25519": {id: key}} from libolm -> signed keys in *dst as
 * "signed_curve25519:<id>": {"key", ["fallback": true,] "signatures"}.
 */
static int sign_key_map(struct matrix_account *a, const char *user_id,
                        const char *device_id, const char *json,
                        int fallback, cJSON *dst)
{
    cJSON *j = cJSON_Parse(json), *curve, *k, *one;
    char name[MATRIX_KEY_MAX + 32];
    int result = PARLEY_OK;

    curve = cJSON_GetObjectItemCaseSensitive(j, "curve25519");
    if (!cJSON_IsObject(curve)) {
        cJSON_Delete(j);
        return olm_failed("libolm returned no curve25519 keys");
    }
    cJSON_ArrayForEach(k, curve) {
        if (!cJSON_IsString(k) || !k->string)
            continue;
        snprintf(name, sizeof(name), "signed_curve25519:%s", k->string);
        one = cJSON_CreateObject();
        if (!one || !cJSON_AddStringToObject(one, "key", k->valuestring) ||
            (fallback && !cJSON_AddTrueToObject(one, "fallback"))) {
            cJSON_Delete(one);
            result = PARLEY_ERR_OOM;
            break;
        }
        result = matrix_account_sign_json(a, user_id, device_id, one);
        if (result) {
            cJSON_Delete(one);
            break;
        }
        cJSON_AddItemToObject(dst, name, one);
    }
    cJSON_Delete(j);
    return result;
}

int matrix_account_one_time_keys(struct matrix_account *a,
                                 const char *user_id, const char *device_id,
                                 size_t n, cJSON **out)
{
    size_t rlen, len;
    uint8_t *rnd = NULL;
    char *buf;
    cJSON *otks;
    int result = PARLEY_OK;

    if (n > MATRIX_OTK_BATCH_MAX)
        return PARLEY_ERR_OTHER;
    if (n) {
        rlen = olm_account_generate_one_time_keys_random_length(a->olm, n);
        result = random_buf(rlen, &rnd);
        if (!result && olm_account_generate_one_time_keys(a->olm, n, rnd,
                                                          rlen) ==
                       olm_error())
            result = olm_failed(olm_account_last_error(a->olm));
        free_random(rnd, rlen);
        if (result)
            return result;
    }
    len = olm_account_one_time_keys_length(a->olm);
    buf = malloc(len + 1);
    if (!buf)
        return PARLEY_ERR_OOM;
    if (olm_account_one_time_keys(a->olm, buf, len) == olm_error()) {
        free(buf);
        return olm_failed(olm_account_last_error(a->olm));
    }
    buf[len] = '\0';
    otks = cJSON_CreateObject();
    result = otks ? sign_key_map(a, user_id, device_id, buf, 0, otks) :
                    PARLEY_ERR_OOM;
    free(buf);
    if (result) {
        cJSON_Delete(otks);
        return result;
    }
    *out = otks;
    return PARLEY_OK;
}

int matrix_account_fallback_key(struct matrix_account *a,
                                const char *user_id, const char *device_id,
                                int fresh, cJSON **out)
{
    size_t rlen, len;
    uint8_t *rnd = NULL;
    char *buf;
    cJSON *fk;
    int result = PARLEY_OK;

    *out = NULL;
    if (fresh) {
        rlen = olm_account_generate_fallback_key_random_length(a->olm);
        result = random_buf(rlen, &rnd);
        if (!result && olm_account_generate_fallback_key(a->olm, rnd, rlen) ==
                       olm_error())
            result = olm_failed(olm_account_last_error(a->olm));
        free_random(rnd, rlen);
        if (result)
            return result;
    }
    len = olm_account_unpublished_fallback_key_length(a->olm);
    buf = malloc(len + 1);
    if (!buf)
        return PARLEY_ERR_OOM;
    if (olm_account_unpublished_fallback_key(a->olm, buf, len) ==
        olm_error()) {
        free(buf);
        return olm_failed(olm_account_last_error(a->olm));
    }
    buf[len] = '\0';
    fk = cJSON_CreateObject();
    result = fk ? sign_key_map(a, user_id, device_id, buf, 1, fk) :
                  PARLEY_ERR_OOM;
    free(buf);
    if (result || !fk->child) {
        cJSON_Delete(fk);
        return result;
    }
    *out = fk;
    return PARLEY_OK;
}

void matrix_account_mark_published(struct matrix_account *a)
{
    olm_account_mark_keys_as_published(a->olm);
}

int matrix_keys_upload_body(struct matrix_account *a, const char *user_id,
                            const char *device_id, int with_device,
                            size_t n, int fresh_fallback, char **out)
{
    cJSON *body = cJSON_CreateObject(), *dk = NULL, *otks = NULL, *fb = NULL;
    int result = body ? PARLEY_OK : PARLEY_ERR_OOM;

    if (!result && with_device)
        result = matrix_account_device_keys(a, user_id, device_id, &dk);
    if (!result)
        result = matrix_account_one_time_keys(a, user_id, device_id, n,
                                              &otks);
    if (!result)
        result = matrix_account_fallback_key(a, user_id, device_id,
                                             fresh_fallback, &fb);
    if (!result && dk)
        cJSON_AddItemToObject(body, "device_keys", dk);
    else
        cJSON_Delete(dk);
    if (!result && otks)
        cJSON_AddItemToObject(body, "one_time_keys", otks);
    else
        cJSON_Delete(otks);
    if (!result && fb)
        cJSON_AddItemToObject(body, "fallback_keys", fb);
    else
        cJSON_Delete(fb);
    if (!result) {
        *out = cJSON_PrintUnformatted(body);
        if (!*out)
            result = PARLEY_ERR_OOM;
    }
    cJSON_Delete(body);
    return result;
}

long matrix_otk_count(const cJSON *counts)
{
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(counts,
                                                      "signed_curve25519");

    if (!cJSON_IsNumber(n) || n->valuedouble < 0 || n->valuedouble > 1e6)
        return -1;
    return (long)n->valuedouble;
}

int matrix_verify_json(const cJSON *obj, const char *user_id,
                       const char *device_id, const char *ed25519_key)
{
    const cJSON *sigs, *mine, *sig;
    char name[MATRIX_KEY_MAX + 300], *canon = NULL, *sigbuf;
    void *mem;
    OlmUtility *u;
    size_t siglen;
    int ok = 0;

    if (!cJSON_IsObject(obj) || !user_id || !device_id || !ed25519_key)
        return 0;
    if ((size_t)snprintf(name, sizeof(name), "ed25519:%s", device_id) >=
        sizeof(name))
        return 0;
    sigs = cJSON_GetObjectItemCaseSensitive(obj, "signatures");
    mine = cJSON_GetObjectItemCaseSensitive(sigs, user_id);
    sig = cJSON_GetObjectItemCaseSensitive(mine, name);
    if (!cJSON_IsString(sig) || matrix_canonical_json(obj, &canon))
        return 0;
    sigbuf = scratch(sig->valuestring, &siglen);
    mem = malloc(olm_utility_size());
    if (sigbuf && mem) {
        u = olm_utility(mem);
        ok = olm_ed25519_verify(u, ed25519_key, strlen(ed25519_key), canon,
                                strlen(canon), sigbuf, siglen) !=
             olm_error();
        if (!ok)
            olm_refused(olm_utility_last_error(u));
        olm_clear_utility(u);
    }
    free(mem);
    free(sigbuf);
    free(canon);
    return ok;
}

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
    result = random_buf(rlen, &rnd);
    if (!result &&
        olm_create_outbound_session(s->olm, a->olm, their_curve,
                                    strlen(their_curve), their_otk,
                                    strlen(their_otk), rnd, rlen) ==
        olm_error())
        result = olm_refused(olm_session_last_error(s->olm));
    free_random(rnd, rlen);
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
    buf = s ? scratch(body, &len) : NULL;
    if (!buf) {
        matrix_olm_free(s);
        return PARLEY_ERR_OOM;
    }
    if (olm_create_inbound_session_from(s->olm, a->olm, their_curve,
                                        strlen(their_curve), buf, len) ==
        olm_error())
        result = olm_refused(olm_session_last_error(s->olm));
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
    buf = scratch(body, &len);
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
    buf = scratch(body, &len);
    if (!buf)
        return PARLEY_ERR_OOM;
    max = olm_decrypt_max_plaintext_length(s->olm, (size_t)type, buf, len);
    free(buf);
    if (max == olm_error())
        return olm_refused(olm_session_last_error(s->olm));
    buf = scratch(body, &len);
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
        return olm_refused(olm_session_last_error(s->olm));
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
    result = random_buf(rlen, &rnd);
    if (!result && olm_encrypt(s->olm, plain, plen, rnd, rlen, msg, mlen) ==
                   olm_error())
        result = olm_failed(olm_session_last_error(s->olm));
    free_random(rnd, rlen);
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
        return olm_failed(olm_session_last_error(s->olm));
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

    buf = s && pickle ? scratch(pickle, &len) : NULL;
    if (!buf) {
        matrix_olm_free(s);
        return pickle ? PARLEY_ERR_OOM : PARLEY_ERR_OTHER;
    }
    if (olm_unpickle_session(s->olm, key, key_len, buf, len) == olm_error())
        result = olm_refused(olm_session_last_error(s->olm));
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

static const char *json_str(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);

    return cJSON_IsString(v) ? v->valuestring : NULL;
}

int matrix_olm_parse(const cJSON *content, const char *our_curve,
                     struct matrix_olm_msg *msg)
{
    const cJSON *ct, *mine, *type;
    const char *alg = json_str(content, "algorithm");

    memset(msg, 0, sizeof(*msg));
    if (!alg || strcmp(alg, MATRIX_ALG_OLM) != 0 || !our_curve)
        return PARLEY_ERR_PROTOCOL;
    msg->sender_key = json_str(content, "sender_key");
    ct = cJSON_GetObjectItemCaseSensitive(content, "ciphertext");
    mine = cJSON_IsObject(ct) ?
           cJSON_GetObjectItemCaseSensitive(ct, our_curve) : NULL;
    type = cJSON_GetObjectItemCaseSensitive(mine, "type");
    msg->body = json_str(mine, "body");
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

    s = json_str(ev, "sender");
    r = json_str(ev, "recipient");
    rk = json_str(cJSON_GetObjectItemCaseSensitive(ev, "recipient_keys"),
                  "ed25519");
    type = json_str(ev, "type");
    content = cJSON_GetObjectItemCaseSensitive(ev, "content");
    if (!s || !r || !rk || !type || !cJSON_IsObject(content) || !sender ||
        strcmp(s, sender) != 0 || strcmp(r, our_user) != 0 ||
        strcmp(rk, our_ed25519) != 0) {
        matrix_crypto_wipe_json(ev);
        return PARLEY_ERR_PROTOCOL;
    }
    if (sender_ed25519)
        *sender_ed25519 =
            json_str(cJSON_GetObjectItemCaseSensitive(ev, "keys"),
                     "ed25519");
    *event = ev;
    return PARLEY_OK;
}

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
    result = random_buf(rlen, &rnd);
    if (!result && olm_init_outbound_group_session(s->olm, rnd, rlen) ==
                   olm_error())
        result = olm_failed(olm_outbound_group_session_last_error(s->olm));
    free_random(rnd, rlen);
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
        return olm_failed(olm_outbound_group_session_last_error(s->olm));
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
        return olm_failed(olm_outbound_group_session_last_error(s->olm));
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
        return olm_failed(olm_outbound_group_session_last_error(s->olm));
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

    buf = s && pickle ? scratch(pickle, &len) : NULL;
    if (!buf) {
        matrix_megolm_out_free(s);
        return pickle ? PARLEY_ERR_OOM : PARLEY_ERR_OTHER;
    }
    if (olm_unpickle_outbound_group_session(s->olm, key, key_len, buf,
                                            len) == olm_error())
        result = olm_refused(olm_outbound_group_session_last_error(s->olm));
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
    const char *alg = json_str(content, "algorithm");
    const char *room = json_str(content, "room_id");
    const char *sid = json_str(content, "session_id");
    const char *key = json_str(content, "session_key");
    struct matrix_megolm_in *s;

    if (!alg || strcmp(alg, MATRIX_ALG_MEGOLM) != 0 || !room || !sid ||
        !key)
        return PARLEY_ERR_PROTOCOL;
    s = megolm_in_alloc();
    if (!s)
        return PARLEY_ERR_OOM;
    if (olm_init_inbound_group_session(s->olm, (const uint8_t *)key,
                                       strlen(key)) == olm_error()) {
        olm_refused(olm_inbound_group_session_last_error(s->olm));
        matrix_megolm_in_free(s);
        return PARLEY_ERR_PROTOCOL;
    }
    if (strcmp(matrix_megolm_in_id(s), sid) != 0) {
        olm_refused("session id does not match the key");
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
    buf = scratch(ciphertext, &len);
    if (!buf)
        return PARLEY_ERR_OOM;
    max = olm_group_decrypt_max_plaintext_length(s->olm, (uint8_t *)buf,
                                                 len);
    free(buf);
    if (max == olm_error())
        return olm_refused(olm_inbound_group_session_last_error(s->olm));
    buf = scratch(ciphertext, &len);
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
        return olm_refused(olm_inbound_group_session_last_error(s->olm));
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
        return olm_failed(olm_inbound_group_session_last_error(s->olm));
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

    buf = s && pickle ? scratch(pickle, &len) : NULL;
    if (!buf) {
        matrix_megolm_in_free(s);
        return pickle ? PARLEY_ERR_OOM : PARLEY_ERR_OTHER;
    }
    if (olm_unpickle_inbound_group_session(s->olm, key, key_len, buf, len) ==
        olm_error())
        result = olm_refused(olm_inbound_group_session_last_error(s->olm));
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
    const char *alg = json_str(content, "algorithm");

    memset(msg, 0, sizeof(*msg));
    if (!alg || strcmp(alg, MATRIX_ALG_MEGOLM) != 0)
        return PARLEY_ERR_PROTOCOL;
    msg->sender_key = json_str(content, "sender_key");
    msg->session_id = json_str(content, "session_id");
    msg->ciphertext = json_str(content, "ciphertext");
    msg->device_id = json_str(content, "device_id");
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
    const char *room = json_str(ev, "room_id");

    if (!json_str(ev, "type") ||
        !cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(ev, "content")) ||
        !room || !room_id || strcmp(room, room_id) != 0) {
        matrix_crypto_wipe_json(ev);
        return PARLEY_ERR_PROTOCOL;
    }
    *event = ev;
    return PARLEY_OK;
}
