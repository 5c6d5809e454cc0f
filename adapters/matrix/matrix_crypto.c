/*
 * The device account for the Matrix adapter (matrix_crypto.h), over
 * libolm: its identity keys, pickles, signed device, one-time and
 * fallback keys and the /keys/upload body; canonical JSON with signing
 * and verification; and the helpers the other libolm files share
 * (matrix_crypto_private.h: errors, kernel random bytes, scratch copies).
 * Olm sessions are in matrix_olm.c, Megolm sessions in matrix_megolm.c.
 * libolm destroys the input of every decode (it base64-decodes in place),
 * so every input is copied into a scratch buffer first; every buffer that
 * held a secret is wiped before it is freed.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <olm/olm.h>

#include "matrix_crypto.h"
#include "matrix_crypto_private.h"
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

int crypto_failed(const char *what)
{
    snprintf(crypto_err, sizeof(crypto_err), "%s", what ? what : "");
    return PARLEY_ERR_OTHER;
}

/* Bad input from a peer: a MAC, a format or an index libolm refused. */
int crypto_refused(const char *what)
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
int crypto_random_buf(size_t len, uint8_t **out)
{
    uint8_t *buf = malloc(len ? len : 1);

    if (!buf)
        return PARLEY_ERR_OOM;
    if (len && random_bytes(buf, len) != PARLEY_OK) {
        free(buf);
        return crypto_failed("no random bytes from the kernel");
    }
    *out = buf;
    return PARLEY_OK;
}

void crypto_free_random(uint8_t *buf, size_t len)
{
    if (!buf)
        return;
    explicit_bzero(buf, len);
    free(buf);
}

/* A writable copy of s for a libolm call that decodes in place. */
char *crypto_scratch(const char *s, size_t *len)
{
    char *c;

    *len = strlen(s);
    c = malloc(*len + 1);
    if (c)
        memcpy(c, s, *len + 1);
    return c;
}

const char *crypto_json_str(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);

    return cJSON_IsString(v) ? v->valuestring : NULL;
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
        return crypto_failed(olm_account_last_error(a->olm));
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
    result = crypto_random_buf(rlen, &rnd);
    if (!result && olm_create_account(a->olm, rnd, rlen) == olm_error())
        result = crypto_failed(olm_account_last_error(a->olm));
    crypto_free_random(rnd, rlen);
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
    buf = a ? crypto_scratch(pickle, &len) : NULL;
    if (!buf) {
        matrix_account_free(a);
        return PARLEY_ERR_OOM;
    }
    if (olm_unpickle_account(a->olm, key, key_len, buf, len) == olm_error())
        result = crypto_refused(olm_account_last_error(a->olm));
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
        return crypto_failed(olm_account_last_error(a->olm));
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
        return crypto_failed(olm_account_last_error(a->olm));
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
        return crypto_failed("libolm returned no curve25519 keys");
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
        result = crypto_random_buf(rlen, &rnd);
        if (!result && olm_account_generate_one_time_keys(a->olm, n, rnd,
                                                          rlen) ==
                       olm_error())
            result = crypto_failed(olm_account_last_error(a->olm));
        crypto_free_random(rnd, rlen);
        if (result)
            return result;
    }
    len = olm_account_one_time_keys_length(a->olm);
    buf = malloc(len + 1);
    if (!buf)
        return PARLEY_ERR_OOM;
    if (olm_account_one_time_keys(a->olm, buf, len) == olm_error()) {
        free(buf);
        return crypto_failed(olm_account_last_error(a->olm));
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
        result = crypto_random_buf(rlen, &rnd);
        if (!result && olm_account_generate_fallback_key(a->olm, rnd, rlen) ==
                       olm_error())
            result = crypto_failed(olm_account_last_error(a->olm));
        crypto_free_random(rnd, rlen);
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
        return crypto_failed(olm_account_last_error(a->olm));
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
    sigbuf = crypto_scratch(sig->valuestring, &siglen);
    mem = malloc(olm_utility_size());
    if (sigbuf && mem) {
        u = olm_utility(mem);
        ok = olm_ed25519_verify(u, ed25519_key, strlen(ed25519_key), canon,
                                strlen(canon), sigbuf, siglen) !=
             olm_error();
        if (!ok)
            crypto_refused(olm_utility_last_error(u));
        olm_clear_utility(u);
    }
    free(mem);
    free(sigbuf);
    free(canon);
    return ok;
}

/* The one ed25519 public key of a cross-signing key object of user with
 * usage (borrowed), or NULL. */
static const char *xsign_key(const cJSON *k, const char *user,
                             const char *usage)
{
    const cJSON *uid = cJSON_GetObjectItemCaseSensitive(k, "user_id");
    const cJSON *us = cJSON_GetObjectItemCaseSensitive(k, "usage");
    const cJSON *keys = cJSON_GetObjectItemCaseSensitive(k, "keys");
    const cJSON *u, *key;
    int has = 0;

    if (!cJSON_IsString(uid) || strcmp(uid->valuestring, user) != 0 ||
        !cJSON_IsArray(us) || !cJSON_IsObject(keys) ||
        cJSON_GetArraySize(keys) != 1)
        return NULL;
    cJSON_ArrayForEach(u, us)
        has |= cJSON_IsString(u) && strcmp(u->valuestring, usage) == 0;
    key = keys->child;
    if (!has || !cJSON_IsString(key) || !key->string ||
        strncmp(key->string, "ed25519:", 8) != 0 ||
        strcmp(key->string + 8, key->valuestring) != 0)
        return NULL;
    return key->valuestring;
}

int matrix_device_cross_signed(const cJSON *device, const char *user_id,
                               const cJSON *master,
                               const cJSON *self_signing)
{
    const char *mpub, *spub;

    if (!user_id)
        return 0;
    mpub = xsign_key(master, user_id, "master");
    spub = xsign_key(self_signing, user_id, "self_signing");
    /* Cross-signing key ids are "ed25519:<public key>". */
    return mpub && spub &&
           matrix_verify_json(self_signing, user_id, mpub, mpub) &&
           matrix_verify_json(device, user_id, spub, spub);
}
