/*
 * Asking for room keys the bot lacks (matrix_e2ee.h, "unable to
 * decrypt"): an m.room_key_request to-device message, unencrypted as the
 * spec has it, to every device of the event's sender and of our own
 * user, one request in flight at a time.  The sessions asked for are
 * remembered in a small ring, so that matrix_e2ee_recv.c takes a
 * forwarded key only when it answers a question we asked, and only from
 * the people we asked.  Also here: a sync's device_lists, which make the
 * cached device lists of those users stale (crypto:<account>:devlists).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "log.h"
#include "loop.h"
#include "matrix.h"
#include "matrix_crypto.h"
#include "matrix_e2ee.h"
#include "matrix_e2ee_private.h"
#include "metrics.h"
#include "random.h"
#include "state.h"
#include "status.h"

int e2ee_asked(const struct matrix_e2ee *e, const char *sid,
               const char *user)
{
    size_t i;

    if (!sid || !user)
        return 0;
    for (i = 0; i < E2EE_ASKED_MAX; i++)
        if (e->asked[i].sid[0] && strcmp(e->asked[i].sid, sid) == 0 &&
            (strcmp(e->asked[i].user, user) == 0 ||
             strcmp(e->user_id, user) == 0))
            return 1;
    return 0;
}

static int asked_sid(const struct matrix_e2ee *e, const char *sid)
{
    for (size_t i = 0; i < E2EE_ASKED_MAX; i++)
        if (e->asked[i].sid[0] && strcmp(e->asked[i].sid, sid) == 0)
            return 1;
    return 0;
}

static void key_request_sent(const struct http_response *resp, void *priv)
{
    struct matrix_e2ee *e = priv;

    e->kr_req = NULL;
    if (resp->status != PARLEY_OK || resp->code != 200)
        log_warn("matrix %s: a room key request failed (%s, HTTP %ld): "
                 "asked again at a later sync", e->account_name,
                 parley_status_name(resp->status ? resp->status :
                                    PARLEY_ERR_HTTP), resp->code);
}

/* {"messages": {user: {"*": content}}} for the sender and ourselves. */
static cJSON *key_request_body(struct matrix_e2ee *e, const char *room_id,
                               const char *sender,
                               const struct matrix_megolm_msg *msg)
{
    cJSON *body = cJSON_CreateObject(), *c = cJSON_CreateObject();
    cJSON *msgs, *b, *u;
    char rid[40];
    const char *who[2] = { sender, e->user_id };
    int ok;

    snprintf(rid, sizeof(rid), "parley-%016llx",
             (unsigned long long)random_u64());
    msgs = body ? cJSON_AddObjectToObject(body, "messages") : NULL;
    b = c ? cJSON_AddObjectToObject(c, "body") : NULL;
    ok = msgs && b &&
         cJSON_AddStringToObject(c, "action", "request") &&
         cJSON_AddStringToObject(c, "request_id", rid) &&
         cJSON_AddStringToObject(c, "requesting_device_id", e->device_id) &&
         cJSON_AddStringToObject(b, "algorithm", MATRIX_ALG_MEGOLM) &&
         cJSON_AddStringToObject(b, "room_id", room_id) &&
         cJSON_AddStringToObject(b, "session_id", msg->session_id) &&
         (!msg->sender_key ||
          cJSON_AddStringToObject(b, "sender_key", msg->sender_key));
    for (int i = 0; ok && i < 2; i++) {
        if (i == 1 && strcmp(sender, e->user_id) == 0)
            break;
        u = cJSON_AddObjectToObject(msgs, who[i]);
        ok = u && cJSON_AddItemToObject(u, "*", cJSON_Duplicate(c, 1));
    }
    cJSON_Delete(c);
    if (!ok) {
        cJSON_Delete(body);
        return NULL;
    }
    return body;
}

int matrix_e2ee_key_request(struct matrix_e2ee *e, const char *room_id,
                            const char *sender, const char *cipher)
{
    struct matrix_megolm_msg msg;
    struct e2ee_asked *a;
    cJSON *content, *body = NULL;
    char path[128], txn[40], *b = NULL;
    int result;

    if (!e || !e->ready || e->stopped || !room_id || !sender || !cipher)
        return PARLEY_ERR_STATE;
    content = cJSON_Parse(cipher);
    if (!content)
        return PARLEY_ERR_PROTOCOL;
    result = matrix_megolm_parse(content, &msg);
    if (!result && strlen(msg.session_id) >= E2EE_SID_MAX)
        result = PARLEY_ERR_PROTOCOL;
    if (!result && asked_sid(e, msg.session_id)) {
        cJSON_Delete(content);
        return PARLEY_OK;
    }
    if (!result && e->kr_req)
        result = PARLEY_ERR_STATE;
    if (!result) {
        body = key_request_body(e, room_id, sender, &msg);
        b = body ? cJSON_PrintUnformatted(body) : NULL;
        result = b ? PARLEY_OK : PARLEY_ERR_OOM;
    }
    if (!result) {
        snprintf(txn, sizeof(txn), "parley-%016llx%016llx",
                 (unsigned long long)random_u64(),
                 (unsigned long long)random_u64());
        snprintf(path, sizeof(path), "/sendToDevice/m.room_key_request/%s",
                 txn);
        result = e->host.http(e->host.ctx, "PUT", path, b, key_request_sent,
                              e, &e->kr_req);
    }
    if (!result) {
        a = &e->asked[e->asked_pos];
        e->asked_pos = (e->asked_pos + 1) % E2EE_ASKED_MAX;
        snprintf(a->sid, sizeof(a->sid), "%s", msg.session_id);
        snprintf(a->user, sizeof(a->user), "%s", sender);
        metrics_e2ee_key_request();
        log_info("matrix %s: asked %s's devices and ours for the room key "
                 "of session %s in %s", e->account_name, sender,
                 msg.session_id, room_id);
    }
    free(b);
    cJSON_Delete(body);
    cJSON_Delete(content);
    return result;
}

unsigned long matrix_e2ee_keys_stored(const struct matrix_e2ee *e)
{
    return e ? e->keys_stored : 0;
}

/* ---- device lists marked stale by a sync -------------------------------- */

struct dl_mark {
    struct matrix_e2ee *e;
    matrix_e2ee_done_fn *done;
    void *priv;
};

static void dl_marked(int status, void *priv)
{
    struct dl_mark *k = priv;

    if (!k->e->stopped)
        k->done(status, k->priv);
    free(k);
}

int matrix_e2ee_devices_stale(struct matrix_e2ee *e,
                              const struct matrix_batch *b,
                              matrix_e2ee_done_fn *done, void *priv)
{
    struct dl_mark *k;
    int result;

    if (!e || !e->ready || !b || !done)
        return PARLEY_ERR_STATE;
    if (!b->n_dl_stale && !b->dl_all)
        return PARLEY_ERR_EOF;
    k = calloc(1, sizeof(*k));
    if (!k)
        return PARLEY_ERR_OOM;
    k->e = e;
    k->done = done;
    k->priv = priv;
    /* A share whose /keys/query is in flight must not cache what it
     * gets: it may predate this change. */
    e->dl_serial++;
    if (b->dl_all)
        log_info("matrix %s: more than %d device lists changed: all are "
                 "fetched again", e->account_name, MATRIX_DEVICE_LISTS_MAX);
    result = state_crypto_devlists_stale(e->host.store, e->account_name,
                                         b->dl_all ? NULL :
                                         (const char *const *)b->dl_stale,
                                         b->n_dl_stale, dl_marked, k);
    if (result)
        free(k);
    return result;
}
