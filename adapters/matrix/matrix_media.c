/*
 * Pictures from Matrix (matrix_media.h).  An m.image that addresses the
 * bot becomes an event with a reference to its picture; the router's job
 * asks for the bytes only when the room's model reads pictures, through
 * ops->fetch, which lands here:
 *
 *   GET /_matrix/client/v1/media/download/{server}/{mediaId}  (token)
 *   -> 404 M_UNRECOGNIZED (or a plain 404/405 from a server without the
 *      route): GET /_matrix/media/v3/download/{server}/{mediaId}
 *
 * The authenticated endpoint came with spec v1.11; servers that predate
 * it answer M_UNRECOGNIZED.  Either way the transfer is capped at the
 * caller's size (curl gives up at once on a larger Content-Length, and
 * as soon as more bytes arrive), and a picture from an encrypted room is
 * checked against its hashes.sha256 before it is decrypted (AES-256-CTR,
 * OpenSSL EVP; spec "Sending encrypted attachments").  Which types are
 * taken is decided by the core from the bytes (image.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "adapter.h"
#include "log.h"
#include "loop.h"
#include "matrix.h"
#include "matrix_adapter_int.h"
#include "matrix_media.h"
#include "status.h"

/* One download in flight, on m->fetches. */
struct mx_fetch {
    struct matrix *m;
    struct http_request *req;
    cJSON *ref;                     /* parsed reference */
    char server[MATRIX_ID_MAX + 1];
    char media[256];
    size_t max;
    int legacy;                     /* on the /_matrix/media/v3 route */
    struct loop_timer *wait;        /* waiting for the login */
    int waited;                     /* ticks of it so far */
    adapter_fetch_done_fn *done;
    void *privdata;
    struct mx_fetch *next;
};

/* ---- reading an m.image -------------------------------------------------- */

static const char *obj_str(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

    return cJSON_IsString(v) ? v->valuestring : NULL;
}

int matrix_mxc_split(const char *mxc, char *server, size_t server_len,
                     char *media, size_t media_len)
{
    const char *s, *slash;
    size_t n, i;

    if (!mxc || strncmp(mxc, "mxc://", 6) != 0)
        return PARLEY_ERR_PROTOCOL;
    s = mxc + 6;
    slash = strchr(s, '/');
    if (!slash || slash == s)
        return PARLEY_ERR_PROTOCOL;
    n = (size_t)(slash - s);
    if (n >= server_len)
        return PARLEY_ERR_PROTOCOL;
    /* Server name grammar: host (DNS name, IPv4, [IPv6]) and port. */
    for (i = 0; i < n; i++)
        if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                    "0123456789.-:[]", s[i]))
            return PARLEY_ERR_PROTOCOL;
    memcpy(server, s, n);
    server[n] = '\0';
    s = slash + 1;
    n = strlen(s);
    if (n == 0 || n >= media_len)
        return PARLEY_ERR_PROTOCOL;
    for (i = 0; i < n; i++)
        if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                    "0123456789_-", s[i]))
            return PARLEY_ERR_PROTOCOL;
    memcpy(media, s, n + 1);
    return PARLEY_OK;
}

static int mxc_ok(const char *mxc)
{
    char server[MATRIX_ID_MAX + 1], media[256];

    return matrix_mxc_split(mxc, server, sizeof(server), media,
                            sizeof(media)) == PARLEY_OK;
}

void matrix_media_info_free(struct matrix_media_info *info)
{
    free(info->ref);
    free(info->name);
    free(info->mime);
    memset(info, 0, sizeof(*info));
}

int matrix_media_ref(const cJSON *content, struct matrix_media_info *info)
{
    const cJSON *file = cJSON_GetObjectItemCaseSensitive(content, "file");
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(content, "info");
    const cJSON *size = cJSON_IsObject(meta) ?
        cJSON_GetObjectItemCaseSensitive(meta, "size") : NULL;
    const char *url = obj_str(content, "url");
    const char *body = obj_str(content, "body");
    const char *filename = obj_str(content, "filename");
    const char *mime = cJSON_IsObject(meta) ? obj_str(meta, "mimetype")
                                            : NULL;
    const char *name;
    cJSON *ref;

    memset(info, 0, sizeof(*info));
    ref = cJSON_CreateObject();
    if (!ref)
        return PARLEY_ERR_OOM;
    if (cJSON_IsObject(file)) {
        /* Encrypted: the EncryptedFile is the reference, key and all;
         * it is checked in full when the picture is fetched. */
        cJSON *copy = cJSON_Duplicate(file, 1);

        if (!mxc_ok(obj_str(file, "url"))) {
            cJSON_Delete(copy);
            cJSON_Delete(ref);
            return PARLEY_ERR_PROTOCOL;
        }
        if (!copy || !cJSON_AddItemToObject(ref, "file", copy)) {
            cJSON_Delete(copy);
            cJSON_Delete(ref);
            return PARLEY_ERR_OOM;
        }
    } else if (mxc_ok(url)) {
        if (!cJSON_AddStringToObject(ref, "url", url)) {
            cJSON_Delete(ref);
            return PARLEY_ERR_OOM;
        }
    } else {
        cJSON_Delete(ref);
        return PARLEY_ERR_PROTOCOL;
    }
    info->ref = cJSON_PrintUnformatted(ref);
    cJSON_Delete(ref);
    if (!info->ref)
        return PARLEY_ERR_OOM;
    if (strlen(info->ref) > MATRIX_MEDIA_REF_MAX) {
        matrix_media_info_free(info);
        return PARLEY_ERR_PROTOCOL;
    }
    /* Spec v1.10 captions: with a filename that differs from body, body
     * is the caption; otherwise body is the file name. */
    if (filename && body && strcmp(filename, body) != 0)
        info->caption = body;
    name = filename ? filename : body;
    info->name = name ? matrix_utf8_clean(name, strlen(name), 256) : NULL;
    info->mime = mime ? matrix_utf8_clean(mime, strlen(mime), 128) : NULL;
    if ((name && !info->name) || (mime && !info->mime)) {
        matrix_media_info_free(info);
        return PARLEY_ERR_OOM;
    }
    if (cJSON_IsNumber(size) && size->valuedouble > 0 &&
        size->valuedouble < 1e15)
        info->size = (long long)size->valuedouble;
    return PARLEY_OK;
}

/* ---- encrypted attachments ----------------------------------------------- */

/* Decode base64 (standard or URL-safe, padded or not) into out (outlen
 * bytes).  Returns the length, or -1 when it is not base64 or too long. */
static long b64_decode(const char *in, unsigned char *out, size_t outlen)
{
    char buf[128];
    unsigned char dec[96];
    size_t n = in ? strlen(in) : 0, i, pad = 0;
    int got;

    while (n > 0 && in[n - 1] == '=')
        n--;
    if (n == 0 || n % 4 == 1 || n + 3 >= sizeof(buf))
        return -1;
    for (i = 0; i < n; i++)
        buf[i] = in[i] == '-' ? '+' : in[i] == '_' ? '/' : in[i];
    while ((n + pad) % 4)
        buf[n + pad++] = '=';
    buf[n + pad] = '\0';
    got = EVP_DecodeBlock(dec, (const unsigned char *)buf, (int)(n + pad));
    if (got < 0 || (size_t)got < pad || (size_t)got - pad > outlen)
        return -1;
    got -= (int)pad;
    memcpy(out, dec, (size_t)got);
    OPENSSL_cleanse(dec, sizeof(dec));
    OPENSSL_cleanse(buf, sizeof(buf));
    return got;
}

/* The key of an EncryptedFile's JWK: kty oct, alg A256CTR, key_ops with
 * "decrypt", k of 32 bytes.  Returns 0 or -1. */
static int jwk_key(const cJSON *jwk, unsigned char key[32])
{
    const cJSON *ops = cJSON_GetObjectItemCaseSensitive(jwk, "key_ops");
    const char *kty = obj_str(jwk, "kty"), *alg = obj_str(jwk, "alg");
    const cJSON *op;
    int decrypt = 0;

    if (!kty || strcmp(kty, "oct") != 0 || !alg ||
        strcmp(alg, "A256CTR") != 0 || !cJSON_IsArray(ops))
        return -1;
    cJSON_ArrayForEach(op, ops)
        if (cJSON_IsString(op) && strcmp(op->valuestring, "decrypt") == 0)
            decrypt = 1;
    if (!decrypt)
        return -1;
    return b64_decode(obj_str(jwk, "k"), key, 32) == 32 ? 0 : -1;
}

int matrix_media_decrypt(const cJSON *file, const unsigned char *data,
                         size_t len, unsigned char **out)
{
    const cJSON *hashes = cJSON_GetObjectItemCaseSensitive(file, "hashes");
    const char *v = obj_str(file, "v");
    unsigned char key[32], iv[16], want[32], got[EVP_MAX_MD_SIZE];
    unsigned int got_len = 0;
    EVP_CIPHER_CTX *ctx = NULL;
    unsigned char *plain = NULL;
    size_t done = 0;
    int result = PARLEY_ERR_PROTOCOL, n;

    *out = NULL;
    /* v2 only: v1 (older Riot) used a 64-bit counter, never to be
     * guessed at. */
    if (!v || strcmp(v, "v2") != 0 || !cJSON_IsObject(hashes) ||
        b64_decode(obj_str(hashes, "sha256"), want, sizeof(want)) != 32 ||
        b64_decode(obj_str(file, "iv"), iv, sizeof(iv)) != 16 ||
        jwk_key(cJSON_GetObjectItemCaseSensitive(file, "key"), key))
        goto out;
    /* The hash is over the ciphertext: a tampered download is refused
     * before anything is decrypted. */
    if (!EVP_Digest(data, len, got, &got_len, EVP_sha256(), NULL) ||
        got_len != 32 || CRYPTO_memcmp(got, want, 32) != 0)
        goto out;
    result = PARLEY_ERR_OOM;
    plain = malloc(len ? len : 1);
    ctx = EVP_CIPHER_CTX_new();
    if (!plain || !ctx)
        goto out;
    result = PARLEY_ERR_PROTOCOL;
    if (EVP_DecryptInit_ex(ctx, EVP_aes_256_ctr(), NULL, key, iv) != 1)
        goto out;
    while (done < len) {
        size_t chunk = len - done > (1u << 20) ? (1u << 20) : len - done;

        if (EVP_DecryptUpdate(ctx, plain + done, &n, data + done,
                              (int)chunk) != 1 || (size_t)n != chunk)
            goto out;
        done += chunk;
    }
    if (EVP_DecryptFinal_ex(ctx, plain + done, &n) != 1 || n != 0)
        goto out;
    *out = plain;
    plain = NULL;
    result = PARLEY_OK;
out:
    OPENSSL_cleanse(key, sizeof(key));
    EVP_CIPHER_CTX_free(ctx);
    free(plain);
    return result;
}

/* ---- downloading --------------------------------------------------------- */

static void fetch_unlink(struct matrix *m, struct mx_fetch *f)
{
    struct mx_fetch **pp;

    for (pp = &m->fetches; *pp; pp = &(*pp)->next)
        if (*pp == f) {
            *pp = f->next;
            return;
        }
}

static void fetch_release(struct mx_fetch *f)
{
    loop_timer_free(f->wait);
    cJSON_Delete(f->ref);
    free(f);
}

static void fetch_finish(struct mx_fetch *f, int status, unsigned char *data,
                         size_t len)
{
    adapter_fetch_done_fn *done = f->done;
    void *privdata = f->privdata;

    fetch_unlink(f->m, f);
    fetch_release(f);
    done(status, data, len, privdata);
}

static void fetch_done(const struct http_response *resp, void *priv);

static int fetch_start(struct mx_fetch *f)
{
    struct matrix *m = f->m;
    char url[MX_URL_MAX], hdr[MX_TOKEN_MAX + 64];
    const char *headers[1];
    struct http_options opt;
    int n, result;

    n = snprintf(url, sizeof(url), "%s%s/download/%s/%s", m->mc.homeserver,
                 f->legacy ? "/_matrix/media/v3"
                           : "/_matrix/client/v1/media",
                 f->server, f->media);
    if (n < 0 || (size_t)n >= sizeof(url))
        return PARLEY_ERR_TOO_LARGE;
    n = snprintf(hdr, sizeof(hdr), "Authorization: Bearer %s", m->token);
    if (n < 0 || (size_t)n >= sizeof(hdr))
        return PARLEY_ERR_TOO_LARGE;
    headers[0] = hdr;
    memset(&opt, 0, sizeof(opt));
    opt.method = "GET";
    opt.url = url;
    opt.headers = headers;
    /* The older route is unauthenticated: the token stays home. */
    opt.n_headers = f->legacy ? 0 : 1;
    opt.connect_timeout_ms = 10000;
    opt.timeout_ms = MX_REQUEST_TIMEOUT_MS;
    opt.max_body = f->max;
    result = loop_http_start(m->loop, &opt, fetch_done, f, &f->req);
    explicit_bzero(hdr, sizeof(hdr));
    return result;
}

/*
 * Whether a refusal of the v1 route means "no such route here": the spec
 * says 404 M_UNRECOGNIZED (405 for a known path and unknown method);
 * Synapse before 1.99 answers 400 M_UNRECOGNIZED; a bare 404 without a
 * Matrix error body comes from a proxy in front of an old server.
 * M_NOT_FOUND is a missing picture, which the older route would not find
 * either.
 */
static int route_unknown(const struct http_response *resp)
{
    char errcode[64];
    long retry;

    if (resp->code == 405)
        return 1;
    if (resp->code != 404 && resp->code != 400)
        return 0;
    matrix_parse_error(resp->body, resp->body_len, errcode,
                       sizeof(errcode), &retry);
    return strcmp(errcode, "M_UNRECOGNIZED") == 0 ||
           (resp->code == 404 && errcode[0] == '\0');
}

static void fetch_done(const struct http_response *resp, void *priv)
{
    struct mx_fetch *f = priv;
    const cJSON *file = cJSON_GetObjectItemCaseSensitive(f->ref, "file");
    unsigned char *data;

    f->req = NULL;
    if (resp->status != PARLEY_OK) {
        log_info("matrix %s: picture %s/%s not fetched: %s",
                 f->m->mc.account, f->server, f->media,
                 resp->status == PARLEY_ERR_TOO_LARGE ? "over the size cap"
                 : parley_status_name(resp->status));
        fetch_finish(f, resp->status, NULL, 0);
        return;
    }
    if (!f->legacy && route_unknown(resp)) {
        f->legacy = 1;
        if (fetch_start(f) == PARLEY_OK)
            return;
        fetch_finish(f, PARLEY_ERR_IO, NULL, 0);
        return;
    }
    if (resp->code != 200) {
        log_info("matrix %s: picture %s/%s not fetched: HTTP %ld",
                 f->m->mc.account, f->server, f->media, resp->code);
        fetch_finish(f, PARLEY_ERR_HTTP, NULL, 0);
        return;
    }
    if (cJSON_IsObject(file)) {
        int result = matrix_media_decrypt(file,
                                          (const unsigned char *)resp->body,
                                          resp->body_len, &data);

        if (result != PARLEY_OK) {
            log_warn("matrix %s: picture %s/%s refused: %s",
                     f->m->mc.account, f->server, f->media,
                     result == PARLEY_ERR_PROTOCOL ?
                     "hash or key does not match" :
                     parley_status_name(result));
            fetch_finish(f, result, NULL, 0);
            return;
        }
    } else {
        data = malloc(resp->body_len ? resp->body_len : 1);
        if (!data) {
            fetch_finish(f, PARLEY_ERR_OOM, NULL, 0);
            return;
        }
        memcpy(data, resp->body, resp->body_len);
    }
    fetch_finish(f, PARLEY_OK, data, resp->body_len);
}

/* Ticks of FETCH_WAIT_MS a fetch waits for the login (two minutes). */
#define FETCH_WAIT_MS 500
#define FETCH_WAIT_TICKS 240

static void on_fetch_wait(void *privdata)
{
    struct mx_fetch *f = privdata;

    if (f->m->token_ok) {
        loop_timer_stop(f->wait);
        if (fetch_start(f) != PARLEY_OK)
            fetch_finish(f, PARLEY_ERR_IO, NULL, 0);
        return;
    }
    if (++f->waited >= FETCH_WAIT_TICKS) {
        log_info("matrix %s: picture %s/%s not fetched: not logged in",
                 f->m->mc.account, f->server, f->media);
        fetch_finish(f, PARLEY_ERR_STATE, NULL, 0);
    }
}

int matrix_media_fetch(struct adapter *ad, const char *ref, size_t max_bytes,
                       adapter_fetch_done_fn *done, void *privdata)
{
    struct matrix *m = ad->priv;
    struct mx_fetch *f;
    const cJSON *file;
    const char *mxc;
    int result;

    if (m->stopped)
        return PARLEY_ERR_STATE;
    f = calloc(1, sizeof(*f));
    if (!f)
        return PARLEY_ERR_OOM;
    f->ref = ref ? cJSON_Parse(ref) : NULL;
    file = f->ref ? cJSON_GetObjectItemCaseSensitive(f->ref, "file") : NULL;
    mxc = cJSON_IsObject(file) ? obj_str(file, "url")
                               : f->ref ? obj_str(f->ref, "url") : NULL;
    if (matrix_mxc_split(mxc, f->server, sizeof(f->server), f->media,
                         sizeof(f->media)) != PARLEY_OK) {
        cJSON_Delete(f->ref);
        free(f);
        return PARLEY_ERR_PROTOCOL;
    }
    f->m = m;
    f->max = max_bytes;
    f->done = done;
    f->privdata = privdata;
    if (!m->token_ok) {
        /* A job resumed at start-up asks before the login is through:
         * it waits for the token rather than failing. */
        f->wait = loop_timer_new(m->loop, on_fetch_wait, f);
        result = f->wait ? loop_timer_start(f->wait, FETCH_WAIT_MS,
                                            FETCH_WAIT_MS)
                         : PARLEY_ERR_OOM;
    } else {
        result = fetch_start(f);
    }
    if (result != PARLEY_OK) {
        fetch_release(f);
        return result;
    }
    f->next = m->fetches;
    m->fetches = f;
    return PARLEY_OK;
}

void matrix_media_stop(struct matrix *m)
{
    while (m->fetches) {
        struct mx_fetch *f = m->fetches;

        m->fetches = f->next;
        if (f->req)
            loop_http_cancel(f->req);
        fetch_release(f);
    }
}
