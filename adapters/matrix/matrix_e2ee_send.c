/*
 * The sending half of the adapter's E2EE client (matrix_e2ee.h):
 * encrypting a room event.  Read the room's rotation settings, load or
 * rotate our outbound Megolm session, find the members' devices (their
 * signed device keys from /keys/query), share the room key with every
 * device that does not hold it yet over new Olm sessions (one-time keys
 * from /keys/claim), record the holders, then encrypt and store the
 * session with its advanced index.  One encryption at a time.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "log.h"
#include "matrix.h"
#include "matrix_crypto.h"
#include "matrix_e2ee.h"
#include "matrix_e2ee_private.h"
#include "metrics.h"
#include "random.h"
#include "state.h"
#include "status.h"

/* ---- encrypting a room event -------------------------------------------- */

/* Megolm sessions are rotated after this long or this many messages
 * unless the room's m.room.encryption says less (the spec's defaults). */
#define E2EE_ROTATE_MS (7LL * 24 * 3600 * 1000)
#define E2EE_ROTATE_MSGS 100
/* Devices one share reaches; a room past it is refused, not half-shared. */
#define E2EE_DEVICES_MAX 1000
/* Answers to /joined_members, /keys/query and /keys/claim. */
#define E2EE_KEYS_ANSWER_MAX (4 * 1024 * 1024)

struct e2ee_device {
    char *user;
    char *device;
    char *curve;
    char *ed;
    int need;                       /* lacks the current session */
    int sent;                       /* the room key is in body for it */
};

struct e2ee_enc {
    struct matrix_e2ee *e;
    char *room_id;
    cJSON *content;                 /* what to encrypt */
    struct matrix_megolm_out *out;
    long long created_ms;
    long long rotate_ms;            /* the room's rotation_period_ms */
    long rotate_msgs;               /* ... and rotation_period_msgs */
    int fresh;                      /* out is new: not stored yet */
    char **members;
    size_t n_members;
    struct e2ee_device *dev;
    size_t n_dev;
    cJSON *body;                    /* the sendToDevice body being made */
    cJSON *rk;                      /* the m.room_key content (wiped) */
    size_t n_sent;                  /* devices in body */
    unsigned long dl_serial;        /* e->dl_serial when queried */
    size_t n_unverified;            /* devices left out (share_with) */
    char *result;                   /* the m.room.encrypted content */
    matrix_e2ee_cipher_fn *fn;
    void *priv;
};

static long long now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void e2ee_enc_free(struct e2ee_enc *x)
{
    size_t i;

    free(x->room_id);
    cJSON_Delete(x->content);
    matrix_megolm_out_free(x->out);
    for (i = 0; i < x->n_members; i++)
        free(x->members[i]);
    free(x->members);
    for (i = 0; i < x->n_dev; i++) {
        free(x->dev[i].user);
        free(x->dev[i].device);
        free(x->dev[i].curve);
        free(x->dev[i].ed);
    }
    free(x->dev);
    cJSON_Delete(x->body);
    matrix_crypto_wipe_json(x->rk);
    free(x->result);
    free(x);
}

static void enc_finish(struct e2ee_enc *x, int status)
{
    struct matrix_e2ee *e = x->e;

    e->enc_busy = 0;
    if (status)
        log_warn("matrix %s: cannot encrypt for %s (%s%s%s)",
                 e->account_name, x->room_id, parley_status_name(status),
                 matrix_crypto_error()[0] ? ", " : "",
                 matrix_crypto_error());
    if (!e->stopped)
        x->fn(status, status ? NULL : x->result, x->priv);
    e2ee_enc_free(x);
}

static int enc_http(struct e2ee_enc *x, const char *method, const char *path,
                    cJSON *body, http_done_fn *done)
{
    char *b = body ? cJSON_PrintUnformatted(body) : NULL;
    int result;

    if (body && !b)
        return PARLEY_ERR_OOM;
    result = x->e->host.http(x->e->host.ctx, method, path, b, done, x,
                             &x->e->req);
    free(b);
    if (!result)
        x->e->enc = x;
    return result;
}

static void enc_saved(int status, void *priv)
{
    struct e2ee_enc *x = priv;

    enc_finish(x, status);
}

/* Every device holds the session: encrypt, store the session (its index
 * moved: a crash must not reuse it), then hand the result over. */
static void enc_encrypt(struct e2ee_enc *x)
{
    struct matrix_e2ee *e = x->e;
    struct state_megolm_out rec;
    cJSON *c = NULL;
    char *p = NULL;
    int result;

    result = matrix_megolm_encrypt(x->out, x->room_id, "m.room.message",
                                   x->content,
                                   matrix_account_curve25519(e->acct),
                                   e->device_id, &c);
    if (!result) {
        x->result = cJSON_PrintUnformatted(c);
        result = x->result ? PARLEY_OK : PARLEY_ERR_OOM;
    }
    cJSON_Delete(c);
    if (!result)
        result = matrix_megolm_out_pickle(x->out,
                                          (const uint8_t *)e->pickle_key,
                                          e->pickle_key_len, &p);
    if (!result) {
        rec.pickle = p;
        rec.created_ms = x->created_ms;
        result = state_crypto_megolm_out_save(e->host.store, e->account_name,
                                              x->room_id, &rec, enc_saved,
                                              x);
    }
    free(p);
    if (result)
        enc_finish(x, result);
}

static void enc_shared_added(int status, void *priv)
{
    struct e2ee_enc *x = priv;

    if (status) {
        enc_finish(x, status);
        return;
    }
    enc_encrypt(x);
}

/* Record who holds the session now (after a rotation the old list is
 * gone: a member who left must not keep forcing new sessions). */
static void enc_add_holders(struct e2ee_enc *x)
{
    const char **holders;
    char **bufs;
    size_t i, n = 0;
    int result;

    holders = calloc(x->n_dev + 1, sizeof(*holders));
    bufs = calloc(x->n_dev + 1, sizeof(*bufs));
    for (i = 0; holders && bufs && i < x->n_dev; i++) {
        size_t len;

        if (!x->dev[i].need)
            continue;
        len = strlen(x->dev[i].user) + strlen(x->dev[i].device) + 2;
        bufs[n] = malloc(len);
        if (!bufs[n])
            break;
        snprintf(bufs[n], len, "%s %s", x->dev[i].user, x->dev[i].device);
        holders[n] = bufs[n];
        n++;
    }
    result = !holders || !bufs ? PARLEY_ERR_OOM :
             n ? state_crypto_megolm_shared_add(x->e->host.store,
                                                x->e->account_name,
                                                x->room_id, holders, n,
                                                enc_shared_added, x) :
             PARLEY_ERR_EOF;
    for (i = 0; bufs && i < n; i++)
        free(bufs[i]);
    free(bufs);
    free(holders);
    if (result == PARLEY_ERR_EOF)
        enc_encrypt(x);
    else if (result)
        enc_finish(x, result);
}

static void enc_discarded(int status, void *priv)
{
    struct e2ee_enc *x = priv;

    if (status) {
        enc_finish(x, status);
        return;
    }
    enc_add_holders(x);
}

/* The to-device messages went out: remember who holds the session. */
static void enc_sent(const struct http_response *resp, void *priv)
{
    struct e2ee_enc *x = priv;
    int result;

    x->e->req = NULL;
    x->e->enc = NULL;
    if (resp->status != PARLEY_OK || resp->code != 200) {
        enc_finish(x, resp->status ? resp->status : PARLEY_ERR_HTTP);
        return;
    }
    if (!x->fresh) {
        enc_add_holders(x);
        return;
    }
    result = state_crypto_megolm_out_discard(x->e->host.store,
                                             x->e->account_name, x->room_id,
                                             enc_discarded, x);
    if (result)
        enc_finish(x, result);
}

static struct e2ee_device *enc_find(struct e2ee_enc *x, const char *user,
                                    const char *device)
{
    for (size_t i = 0; i < x->n_dev; i++)
        if (!strcmp(x->dev[i].user, user) &&
            !strcmp(x->dev[i].device, device))
            return &x->dev[i];
    return NULL;
}

/* Put the room key for dv, encrypted with s, into the body. */
static int enc_put(struct e2ee_enc *x, struct e2ee_device *dv,
                   struct matrix_olm *s)
{
    struct matrix_e2ee *e = x->e;
    struct matrix_olm_peer me = { e->user_id, e->device_id,
                                  matrix_account_curve25519(e->acct),
                                  matrix_account_ed25519(e->acct) };
    struct matrix_olm_peer them = { dv->user, dv->device, dv->curve,
                                    dv->ed };
    cJSON *msgs = cJSON_GetObjectItemCaseSensitive(x->body, "messages");
    cJSON *c = NULL, *mu;

    if (matrix_olm_encrypt_event(s, &me, &them, "m.room_key", x->rk, &c))
        return PARLEY_ERR_PROTOCOL;
    mu = cJSON_GetObjectItemCaseSensitive(msgs, dv->user);
    if (!mu)
        mu = cJSON_AddObjectToObject(msgs, dv->user);
    if (!mu) {
        cJSON_Delete(c);
        return PARLEY_ERR_OOM;
    }
    cJSON_AddItemToObject(mu, dv->device, c);
    dv->sent = 1;
    x->n_sent++;
    return PARLEY_OK;
}

/* Every device that can get the room key is in the body: send it. */
static void enc_send_body(struct e2ee_enc *x)
{
    char path[128], txn[40];
    int result;

    /* Devices without a key to claim do not get the session; they are
     * marked as holders all the same, so they are not asked again for
     * every message (they can request the key). */
    snprintf(txn, sizeof(txn), "parley-%016llx%016llx",
             (unsigned long long)random_u64(),
             (unsigned long long)random_u64());
    snprintf(path, sizeof(path), "/sendToDevice/m.room.encrypted/%s", txn);
    log_info("matrix %s: sharing a room key for %s with %zu device(s)%s",
             x->e->account_name, x->room_id, x->n_sent,
             x->n_unverified ? " (devices not verified by their owner left "
             "out: share_with = \"verified\")" : "");
    result = enc_http(x, "PUT", path, x->body, enc_sent);
    if (result)
        enc_finish(x, result);
}

/* One-time keys claimed: a new Olm session for each device that had none
 * to reuse; it becomes the one to send with (_out). */
static void enc_claimed(const struct http_response *resp, void *priv)
{
    struct e2ee_enc *x = priv;
    struct matrix_e2ee *e = x->e;
    cJSON *j, *otks, *u, *d, *k;
    int result = PARLEY_OK;

    e->req = NULL;
    e->enc = NULL;
    if (resp->status != PARLEY_OK || resp->code != 200) {
        enc_finish(x, resp->status ? resp->status : PARLEY_ERR_HTTP);
        return;
    }
    j = cJSON_ParseWithLength(resp->body, resp->body_len);
    otks = cJSON_GetObjectItemCaseSensitive(j, "one_time_keys");
    cJSON_ArrayForEach(u, otks) {
        cJSON_ArrayForEach(d, u) {
            struct e2ee_device *dv = enc_find(x, u->string, d->string);
            struct matrix_olm *s = NULL;
            char *sp = NULL;

            k = d->child;
            if (result || !dv || !dv->need || dv->sent || !k ||
                !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(k, "key")) ||
                !matrix_verify_json(k, dv->user, dv->device, dv->ed))
                continue;
            if (matrix_olm_outbound(e->acct, dv->curve,
                                    cJSON_GetObjectItemCaseSensitive(
                                        k, "key")->valuestring, &s))
                continue;
            result = enc_put(x, dv, s);
            if (result == PARLEY_ERR_PROTOCOL)
                result = PARLEY_OK;     /* that device goes without */
            /* Kept for the next shares and for their answers. */
            if (dv->sent &&
                !matrix_olm_pickle(s, (const uint8_t *)e->pickle_key,
                                   e->pickle_key_len, &sp)) {
                state_crypto_olm_save_out(e->host.store, e->account_name,
                                          dv->curve, matrix_olm_id(s), sp,
                                          NULL, NULL);
                metrics_e2ee_olm_session(1);
            }
            free(sp);
            matrix_olm_free(s);
        }
    }
    cJSON_Delete(j);
    if (result)
        enc_finish(x, result);
    else
        enc_send_body(x);
}

/* Claim a one-time key for each device still without the room key. */
static void enc_claim(struct e2ee_enc *x)
{
    cJSON *body, *otk, *u;
    size_t i, n = 0;
    int result;

    body = cJSON_CreateObject();
    otk = body ? cJSON_AddObjectToObject(body, "one_time_keys") : NULL;
    for (i = 0; otk && i < x->n_dev; i++) {
        if (!x->dev[i].need || x->dev[i].sent)
            continue;
        u = cJSON_GetObjectItemCaseSensitive(otk, x->dev[i].user);
        if (!u)
            u = cJSON_AddObjectToObject(otk, x->dev[i].user);
        if (u && cJSON_AddStringToObject(u, x->dev[i].device,
                                         "signed_curve25519"))
            n++;
    }
    if (!otk) {
        cJSON_Delete(body);
        enc_finish(x, PARLEY_ERR_OOM);
        return;
    }
    if (!n) {
        cJSON_Delete(body);
        enc_send_body(x);
        return;
    }
    result = enc_http(x, "POST", "/keys/claim", body, enc_claimed);
    cJSON_Delete(body);
    if (result)
        enc_finish(x, result);
}

/* The sessions we send with, per device that needs the key: reuse them
 * (no one-time key spent); the others get new ones. */
static void enc_olm_loaded(int status, const char *const *values, size_t n,
                           void *priv)
{
    struct e2ee_enc *x = priv;
    struct matrix_e2ee *e = x->e;
    size_t i, v = 0;
    int result = e->stopped ? PARLEY_ERR_STATE : status;

    for (i = 0; !result && i < x->n_dev; i++) {
        struct e2ee_device *dv = &x->dev[i];
        struct matrix_olm *s = NULL;
        char *sp = NULL;

        if (!dv->need)
            continue;
        if (v >= n || !values[v++] ||
            matrix_olm_unpickle((const uint8_t *)e->pickle_key,
                                e->pickle_key_len, values[v - 1], &s))
            continue;
        result = enc_put(x, dv, s);
        if (result == PARLEY_ERR_PROTOCOL)
            result = PARLEY_OK;
        /* Its ratchet moved: stored before the message can arrive. */
        if (dv->sent &&
            !matrix_olm_pickle(s, (const uint8_t *)e->pickle_key,
                               e->pickle_key_len, &sp)) {
            state_crypto_olm_save(e->host.store, e->account_name, dv->curve,
                                  matrix_olm_id(s), sp, NULL, NULL, NULL);
            metrics_e2ee_olm_session(0);
        }
        free(sp);
        matrix_olm_free(s);
    }
    if (result)
        enc_finish(x, result);
    else
        enc_claim(x);
}

static void enc_share(struct e2ee_enc *x)
{
    const char **curves;
    size_t i, n = 0;
    int result;

    x->body = cJSON_CreateObject();
    if (!x->body || !cJSON_AddObjectToObject(x->body, "messages") ||
        matrix_megolm_room_key(x->out, x->room_id, &x->rk) != PARLEY_OK) {
        enc_finish(x, PARLEY_ERR_OOM);
        return;
    }
    curves = calloc(x->n_dev + 1, sizeof(*curves));
    if (!curves) {
        enc_finish(x, PARLEY_ERR_OOM);
        return;
    }
    for (i = 0; i < x->n_dev; i++)
        if (x->dev[i].need)
            curves[n++] = x->dev[i].curve;
    result = state_crypto_olm_out_load(x->e->host.store, x->e->account_name,
                                       curves, n, enc_olm_loaded, x);
    free(curves);
    if (result)
        enc_finish(x, result);
}

static int holder_is_member(struct e2ee_enc *x, const char *h,
                            const char *sp)
{
    for (size_t j = 0; sp && j < x->n_members; j++)
        if (strlen(x->members[j]) == (size_t)(sp - h) &&
            !strncmp(x->members[j], h, (size_t)(sp - h)))
            return 1;
    return 0;
}

static void enc_shared_loaded(int status, const char *const *items,
                              size_t n, void *priv)
{
    struct e2ee_enc *x = priv;
    size_t i, j, need = 0;

    if (status) {
        enc_finish(x, status);
        return;
    }
    /* Someone who holds the session left the room, or one of a member's
     * devices is gone (removed, or its keys changed): it must not read
     * what follows, so a new session is shared with those who stay. */
    for (i = 0; i < n && !x->fresh; i++) {
        const char *sp = strchr(items[i], ' ');
        char user[MATRIX_ID_MAX + 1];
        int member = holder_is_member(x, items[i], sp);

        if (member && (size_t)(sp - items[i]) < sizeof(user)) {
            memcpy(user, items[i], (size_t)(sp - items[i]));
            user[sp - items[i]] = '\0';
            if (enc_find(x, user, sp + 1))
                continue;
            log_info("matrix %s: a device of %s is gone from %s: new room "
                     "key", x->e->account_name, user, x->room_id);
        } else {
            log_info("matrix %s: a member left %s: new room key",
                     x->e->account_name, x->room_id);
        }
        matrix_megolm_out_free(x->out);
        x->out = NULL;
        if (matrix_megolm_out_new(&x->out) != PARLEY_OK) {
            enc_finish(x, PARLEY_ERR_OOM);
            return;
        }
        metrics_e2ee_megolm_session(1);
        x->created_ms = now_ms();
        x->fresh = 1;
    }
    for (i = 0; i < x->n_dev; i++) {
        char want[2 * MATRIX_ID_MAX + 2];

        snprintf(want, sizeof(want), "%s %s", x->dev[i].user,
                 x->dev[i].device);
        x->dev[i].need = 1;
        for (j = 0; j < n && !x->fresh; j++)
            if (!strcmp(items[j], want))
                x->dev[i].need = 0;
        need += x->dev[i].need;
    }
    if (!need)
        enc_encrypt(x);
    else
        enc_share(x);
}

/*
 * A user's devices from their bundle ({"devices": what /keys/query gave
 * for them, "master", "self_signing": their cross-signing keys}), each
 * with a valid self-signature; everyone's but our own device.  With
 * share_with = "verified", only devices their owner cross-signed.
 */
static int enc_add_user(struct e2ee_enc *x, const char *user,
                        const cJSON *bundle)
{
    struct matrix_e2ee *e = x->e;
    const cJSON *devs = cJSON_GetObjectItemCaseSensitive(bundle, "devices");
    const cJSON *mk = cJSON_GetObjectItemCaseSensitive(bundle, "master");
    const cJSON *sk = cJSON_GetObjectItemCaseSensitive(bundle,
                                                       "self_signing");
    char name[MATRIX_ID_MAX + 32];
    const cJSON *d;

    cJSON_ArrayForEach(d, devs) {
        const cJSON *keys = cJSON_GetObjectItemCaseSensitive(d, "keys");
        const cJSON *uid = cJSON_GetObjectItemCaseSensitive(d, "user_id");
        const cJSON *did = cJSON_GetObjectItemCaseSensitive(d, "device_id");
        const cJSON *cv, *ed;
        struct e2ee_device *dv;

        if (!user || !d->string ||
            !cJSON_IsString(uid) || !cJSON_IsString(did) ||
            strcmp(uid->valuestring, user) ||
            strcmp(did->valuestring, d->string) ||
            (!strcmp(user, e->user_id) && !strcmp(d->string, e->device_id)))
            continue;
        snprintf(name, sizeof(name), "curve25519:%s", d->string);
        cv = cJSON_GetObjectItemCaseSensitive(keys, name);
        snprintf(name, sizeof(name), "ed25519:%s", d->string);
        ed = cJSON_GetObjectItemCaseSensitive(keys, name);
        if (!cJSON_IsString(cv) || !cJSON_IsString(ed) ||
            !matrix_verify_json(d, user, d->string, ed->valuestring))
            continue;
        if (e->host.share_verified &&
            !matrix_device_cross_signed(d, user, mk, sk)) {
            x->n_unverified++;
            continue;
        }
        if (x->n_dev >= E2EE_DEVICES_MAX)
            return PARLEY_ERR_TOO_LARGE;
        dv = &x->dev[x->n_dev++];
        dv->user = strdup(user);
        dv->device = strdup(d->string);
        dv->curve = strdup(cv->valuestring);
        dv->ed = strdup(ed->valuestring);
        if (!dv->user || !dv->device || !dv->curve || !dv->ed)
            return PARLEY_ERR_OOM;
    }
    return PARLEY_OK;
}

static void enc_devices_known(struct e2ee_enc *x)
{
    int result = state_crypto_megolm_shared_load(x->e->host.store,
                                                 x->e->account_name,
                                                 x->room_id,
                                                 enc_shared_loaded, x);

    if (result)
        enc_finish(x, result);
}

/* The stale or unknown members' devices, fresh from the server; kept for
 * later shares unless a sync said meanwhile that they changed again. */
static void enc_queried(const struct http_response *resp, void *priv)
{
    struct e2ee_enc *x = priv;
    struct matrix_e2ee *e = x->e;
    cJSON *j, *dk, *u;
    int result = PARLEY_OK;

    e->req = NULL;
    e->enc = NULL;
    if (resp->status != PARLEY_OK || resp->code != 200) {
        enc_finish(x, resp->status ? resp->status : PARLEY_ERR_HTTP);
        return;
    }
    j = cJSON_ParseWithLength(resp->body, resp->body_len);
    dk = cJSON_GetObjectItemCaseSensitive(j, "device_keys");
    cJSON_ArrayForEach(u, dk) {
        cJSON *bundle = cJSON_CreateObject();
        const cJSON *mk, *sk;
        char *list = NULL;

        if (!u->string || !cJSON_IsObject(u) || !bundle) {
            cJSON_Delete(bundle);
            continue;
        }
        mk = cJSON_GetObjectItemCaseSensitive(
                 cJSON_GetObjectItemCaseSensitive(j, "master_keys"),
                 u->string);
        sk = cJSON_GetObjectItemCaseSensitive(
                 cJSON_GetObjectItemCaseSensitive(j, "self_signing_keys"),
                 u->string);
        cJSON_AddItemToObject(bundle, "devices", cJSON_Duplicate(u, 1));
        if (mk)
            cJSON_AddItemToObject(bundle, "master", cJSON_Duplicate(mk, 1));
        if (sk)
            cJSON_AddItemToObject(bundle, "self_signing",
                                  cJSON_Duplicate(sk, 1));
        if (!result)
            result = enc_add_user(x, u->string, bundle);
        if (!result && x->dl_serial == e->dl_serial)
            list = cJSON_PrintUnformatted(bundle);
        if (list)
            state_crypto_devlists_save(e->host.store, e->account_name,
                                       u->string, list, NULL, NULL);
        free(list);
        cJSON_Delete(bundle);
    }
    cJSON_Delete(j);
    if (result)
        enc_finish(x, result);
    else
        enc_devices_known(x);
}

/* Cached device lists: members without one are asked for. */
static void enc_lists_loaded(int status, const char *const *values,
                             size_t n, void *priv)
{
    struct e2ee_enc *x = priv;
    struct matrix_e2ee *e = x->e;
    cJSON *body, *dk;
    size_t i, ask = 0;
    int result = e->stopped ? PARLEY_ERR_STATE : status;

    body = cJSON_CreateObject();
    dk = body ? cJSON_AddObjectToObject(body, "device_keys") : NULL;
    if (!result && !dk)
        result = PARLEY_ERR_OOM;
    for (i = 0; !result && i < x->n_members; i++) {
        cJSON *bundle = i < n && values[i] ? cJSON_Parse(values[i]) :
                                               NULL;

        if (cJSON_IsObject(bundle)) {
            result = enc_add_user(x, x->members[i], bundle);
        } else {
            cJSON_AddItemToObject(dk, x->members[i], cJSON_CreateArray());
            ask++;
        }
        cJSON_Delete(bundle);
    }
    if (!result && ask) {
        x->dl_serial = e->dl_serial;
        result = enc_http(x, "POST", "/keys/query", body, enc_queried);
        cJSON_Delete(body);
        if (result)
            enc_finish(x, result);
        return;
    }
    cJSON_Delete(body);
    if (result)
        enc_finish(x, result);
    else
        enc_devices_known(x);
}

static void enc_members(const struct http_response *resp, void *priv)
{
    struct e2ee_enc *x = priv;
    cJSON *j, *joined, *m;
    int result;

    x->e->req = NULL;
    x->e->enc = NULL;
    if (resp->status != PARLEY_OK || resp->code != 200) {
        enc_finish(x, resp->status ? resp->status : PARLEY_ERR_HTTP);
        return;
    }
    j = cJSON_ParseWithLength(resp->body, resp->body_len);
    joined = cJSON_GetObjectItemCaseSensitive(j, "joined");
    x->members = calloc((size_t)cJSON_GetArraySize(joined) + 1,
                        sizeof(*x->members));
    x->dev = calloc(E2EE_DEVICES_MAX, sizeof(*x->dev));
    cJSON_ArrayForEach(m, joined) {
        if (!x->members || !m->string)
            continue;
        x->members[x->n_members] = strdup(m->string);
        if (x->members[x->n_members])
            x->n_members++;
    }
    cJSON_Delete(j);
    result = !x->members || !x->dev ? PARLEY_ERR_OOM :
             !x->n_members ? PARLEY_ERR_PROTOCOL :
             state_crypto_devlists_load(x->e->host.store, x->e->account_name,
                                        (const char *const *)x->members,
                                        x->n_members, enc_lists_loaded, x);
    if (result)
        enc_finish(x, result);
}

static void enc_out_loaded(int status, const struct state_megolm_out *s,
                           void *priv)
{
    struct e2ee_enc *x = priv;
    struct matrix_e2ee *e = x->e;
    char rid[3 * MATRIX_ID_MAX + 1], path[MATRIX_ID_MAX * 3 + 64];
    int result = status;

    if (status)
        metrics_e2ee_store(0);

    if (!result && s &&
        matrix_megolm_out_unpickle((const uint8_t *)e->pickle_key,
                                   e->pickle_key_len, s->pickle,
                                   &x->out) == PARLEY_OK) {
        /* Rotate an old or well-used session: a new one is shared. */
        if (now_ms() - s->created_ms > x->rotate_ms ||
            matrix_megolm_out_index(x->out) >= (uint32_t)x->rotate_msgs) {
            matrix_megolm_out_free(x->out);
            x->out = NULL;
        } else {
            x->created_ms = s->created_ms;
        }
    }
    if (!result && !x->out) {
        result = matrix_megolm_out_new(&x->out);
        x->created_ms = now_ms();
        x->fresh = 1;
        metrics_e2ee_megolm_session(1);
    }
    if (!result)
        result = matrix_url_escape(x->room_id, rid, sizeof(rid));
    if (!result) {
        snprintf(path, sizeof(path), "/rooms/%s/joined_members", rid);
        result = enc_http(x, "GET", path, NULL, enc_members);
    }
    if (result)
        enc_finish(x, result);
}

/* The room's m.room.encryption: its rotation settings, when they are
 * shorter than the defaults (a longer period is not honoured). */
static void enc_state(const struct http_response *resp, void *priv)
{
    struct e2ee_enc *x = priv;
    cJSON *j;
    const cJSON *ms, *msgs;
    int result;

    x->e->req = NULL;
    x->e->enc = NULL;
    if (resp->status != PARLEY_OK ||
        (resp->code != 200 && resp->code != 404)) {
        enc_finish(x, resp->status ? resp->status : PARLEY_ERR_HTTP);
        return;
    }
    j = resp->code == 200 ? cJSON_ParseWithLength(resp->body,
                                                  resp->body_len) : NULL;
    ms = cJSON_GetObjectItemCaseSensitive(j, "rotation_period_ms");
    msgs = cJSON_GetObjectItemCaseSensitive(j, "rotation_period_msgs");
    if (cJSON_IsNumber(ms) && ms->valuedouble >= 1 &&
        ms->valuedouble < (double)x->rotate_ms)
        x->rotate_ms = (long long)ms->valuedouble;
    if (cJSON_IsNumber(msgs) && msgs->valuedouble >= 1 &&
        msgs->valuedouble < (double)x->rotate_msgs)
        x->rotate_msgs = (long)msgs->valuedouble;
    cJSON_Delete(j);
    result = state_crypto_megolm_out_load(x->e->host.store,
                                          x->e->account_name, x->room_id,
                                          enc_out_loaded, x);
    if (result)
        enc_finish(x, result);
}

int matrix_e2ee_encrypt(struct matrix_e2ee *e, const char *room_id,
                        const char *content, matrix_e2ee_cipher_fn *fn,
                        void *priv)
{
    struct e2ee_enc *x;
    char rid[3 * MATRIX_ID_MAX + 1], path[3 * MATRIX_ID_MAX + 64];
    int result;

    if (!e || !e->ready || e->enc_busy || e->uploading || e->req ||
        !room_id || !content || !fn)
        return PARLEY_ERR_STATE;
    x = calloc(1, sizeof(*x));
    if (!x)
        return PARLEY_ERR_OOM;
    x->e = e;
    x->fn = fn;
    x->priv = priv;
    x->room_id = strdup(room_id);
    x->content = cJSON_Parse(content);
    if (!x->room_id || !x->content) {
        e2ee_enc_free(x);
        return PARLEY_ERR_OOM;
    }
    x->rotate_ms = E2EE_ROTATE_MS;
    x->rotate_msgs = E2EE_ROTATE_MSGS;
    result = matrix_url_escape(room_id, rid, sizeof(rid));
    if (!result) {
        snprintf(path, sizeof(path), "/rooms/%s/state/m.room.encryption/",
                 rid);
        result = enc_http(x, "GET", path, NULL, enc_state);
    }
    if (result) {
        e->enc = NULL;
        e2ee_enc_free(x);
        return result;
    }
    e->enc_busy = 1;
    return PARLEY_OK;
}
