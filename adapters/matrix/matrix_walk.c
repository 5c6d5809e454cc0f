/*
 * The Matrix adapter's batch walk: each item of a sync batch goes to the
 * router one after the other (router_submit_durable), waiting for each to
 * be accepted; encrypted items are decrypted first, invites are joined,
 * and a room's joined members are fetched (/joined_members) when the
 * batch gave no count.  A refusal that cannot pass (matrix_poison.h) is
 * skipped after a few tries.  When the walk ends, the control machine
 * stores next_batch.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "adapter.h"
#include "backoff.h"
#include "config.h"
#include "event.h"
#include "log.h"
#include "loop.h"
#include "matrix.h"
#include "matrix_adapter_int.h"
#include "matrix_e2ee.h"
#include "matrix_poison.h"
#include "metrics.h"
#include "random.h"
#include "router.h"
#include "state.h"
#include "status.h"
#include "store.h"

/* ---- the batch walk: one event at a time into the router --------------- */

/*
 * Names of the members a /joined_members answer lists ({"@u:s":
 * {"display_name": ...}}), for those the table does not have yet: with
 * lazy-loaded members the homeserver sends a member's event only once
 * per device, so after a restart a room's table starts empty.  Members
 * already known keep their entries, which are the names as of the events
 * being walked.
 */
static void names_add_joined(struct mx_room *r, const cJSON *joined)
{
    const cJSON *u;

    if (!r->names && !(r->names = matrix_members_new()))
        return;
    cJSON_ArrayForEach(u, joined) {
        const cJSON *dn = cJSON_IsObject(u)
            ? cJSON_GetObjectItemCaseSensitive(u, "display_name") : NULL;

        if (!u->string || u->string[0] != '@' ||
            matrix_members_has(r->names, u->string))
            continue;
        matrix_members_update(r->names, u->string,
                              cJSON_IsString(dn) ? dn->valuestring : NULL,
                              1);
    }
}

static void members_done(const struct http_response *resp, void *priv)
{
    struct matrix *m = priv;
    const struct matrix_item *it = &m->batch.items[m->walk_i];
    struct mx_room *r = mx_room_get(m, it->room_id, 1);
    cJSON *c;
    const cJSON *joined;

    m->ctl_req = NULL;
    if (mx_is_bad_token(resp)) {
        /* After the login the batch is fetched again from the same
         * since token; the router drops what it already accepted. */
        mx_ctl_token_refused(m);
        return;
    }
    if (resp->status != PARLEY_OK || resp->code >= 500) {
        mx_ctl_retry(m, "joined_members", resp);
        return;
    }
    /* A 403 (we left) counts as "not a DM": the walk must go on. */
    if (r)
        r->members = 0;
    c = resp->code == 200 ? cJSON_ParseWithLength(resp->body, resp->body_len)
                          : NULL;
    joined = c ? cJSON_GetObjectItemCaseSensitive(c, "joined") : NULL;
    if (r && cJSON_IsObject(joined)) {
        r->members = cJSON_GetArraySize(joined);
        names_add_joined(r, joined);
    }
    if (r)
        r->names_loaded = 1;
    if (r)
        r->members_batch = m->batch_serial;
    cJSON_Delete(c);
    m->state = MX_WALK;
    mx_walk(m);
}

/*
 * The router refused the event at walk_i.  Redis being away passes: pause
 * the sync and offer the same event again (returns 0).  A refusal that
 * comes back MATRIX_POISON_TRIES times for the same event can never
 * succeed, and waiting would stop the whole account for good: the event
 * is skipped, logged once and counted (returns 1, the walk goes on).
 */
static int walk_refused(struct matrix *m, int status)
{
    const struct matrix_item *it = &m->batch.items[m->walk_i];

    if (matrix_poison_refused(&m->poison, m->batch_serial, m->walk_i,
                              status) == MATRIX_POISON_SKIP) {
        log_warn("matrix %s: event %s in %s refused %d times (%s): "
                 "skipped, it is not answered", m->mc.account,
                 it->event_id ? it->event_id : "(no id)",
                 it->room_id ? it->room_id : "(no room)",
                 MATRIX_POISON_TRIES, parley_status_name(status));
        metrics_matrix_event_skipped();
        return 1;
    }
    log_warn("matrix %s: event not recorded (%s); pausing the sync",
             m->mc.account, parley_status_name(status));
    mx_ctl_later(m, mx_backoff(m, m->attempt < 30 ? m->attempt++ : 30));
    return 0;
}

static void walk_accepted(int status, void *priv)
{
    struct matrix *m = priv;

    m->walk_pending = 0;
    m->walk_status = status;
    if (!m->walk_async)
        return;                 /* mx_walk() is still on the stack */
    m->walk_async = 0;
    if (m->stopped)
        return;
    if (status != PARLEY_OK && !walk_refused(m, status))
        return;
    m->walk_i++;
    mx_walk(m);
}

static void handle_invite(struct matrix *m, const struct matrix_item *it)
{
    char id[3 * MATRIX_ID_MAX + 1], path[MX_URL_MAX];

    if (matrix_url_escape(it->room_id, id, sizeof(id)) != PARLEY_OK)
        return;
    if (matrix_allow_match(it->sender, (const char *const *)m->mc.allow,
                           m->mc.n_allow)) {
        struct mx_room *r = mx_room_get(m, it->room_id, 1);

        if (r && it->is_direct)
            r->direct = 1;
        log_info("matrix %s: invited to %s by %s: joining", m->mc.account,
                 it->room_id, it->sender);
        snprintf(path, sizeof(path), "/rooms/%s/join", id);
        mx_misc_start(m, "join", it->room_id, "POST", path, "{}");
    } else if (m->mc.reject_other_invites) {
        log_info("matrix %s: invite to %s from %s (not allowed): rejecting",
                 m->mc.account, it->room_id, it->sender);
        snprintf(path, sizeof(path), "/rooms/%s/leave", id);
        mx_misc_start(m, "reject", it->room_id, "POST", path, "{}");
    } else {
        log_info("matrix %s: invite to %s from %s (not allowed): ignored",
                 m->mc.account, it->room_id, it->sender);
    }
}

/* Whether the batch carried a summary (member count) for room_id. */
static int batch_has_summary(const struct matrix_batch *b,
                             const char *room_id)
{
    size_t i;

    for (i = 0; i < b->n_rooms; i++)
        if (strcmp(b->rooms[i].room_id, room_id) == 0)
            return 1;
    return 0;
}

/* Ask for room_id's joined members (members_done resumes the walk).
 * Returns 1 when the request is in flight, 0 when it could not start. */
static int members_fetch(struct matrix *m, const char *room_id)
{
    char id[3 * MATRIX_ID_MAX + 1], path[MX_URL_MAX];

    if (matrix_url_escape(room_id, id, sizeof(id)) != PARLEY_OK)
        return 0;
    snprintf(path, sizeof(path), "/rooms/%s/joined_members", id);
    m->state = MX_MEMBERS;
    if (mx_http(m, "GET", path, NULL, 1, MX_REQUEST_TIMEOUT_MS,
                MATRIX_SYNC_BODY_MAX, members_done, m,
                &m->ctl_req) == PARLEY_OK)
        return 1;
    m->state = MX_WALK;
    return 0;
}

/* Apply the batch's membership changes seen before item upto to the
 * rooms' name tables, in order. */
static void members_apply(struct matrix *m, size_t upto)
{
    while (m->walk_member_i < m->batch.n_members &&
           m->batch.members[m->walk_member_i].at <= upto) {
        const struct matrix_member *mb =
            &m->batch.members[m->walk_member_i++];
        struct mx_room *r = mx_room_get(m, mb->room_id, 1);
        int result;

        if (!r)
            continue;
        if (!r->names && !(r->names = matrix_members_new()))
            continue;           /* names fall back to localparts */
        result = matrix_members_update(r->names, mb->user_id,
                                       mb->displayname, mb->present);
        if (result == PARLEY_ERR_TOO_LARGE &&
            matrix_members_count(r->names) == MATRIX_ROOM_MEMBERS_MAX)
            log_debug("matrix %s: %s: name table full", m->mc.account,
                      mb->room_id);
    }
}

/*
 * Turn the item at walk_i into an event for the router, or handle it
 * here.  Returns 1 when it was submitted (the walk waits for accepted),
 * 0 when the walk may go on at once, -1 when the walk waits for a
 * joined_members request.
 */
/* A CIPHERTEXT item of the walk was decrypted (or not): keep the result
 * for walk_item, which sees it when the walk resumes at the same item. */
static void walk_decrypted(int status, const struct cJSON *event,
                           void *priv)
{
    struct matrix *m = priv;
    const struct matrix_item *it;
    struct matrix_ident me;

    if (m->stopped)
        return;
    it = &m->batch.items[m->walk_i];
    matrix_batch_free(&m->dec);
    if (status == PARLEY_OK) {
        me.user_id = m->user_id;
        me.localpart = m->localpart;
        me.display_name = m->display_name[0] ? m->display_name : NULL;
        if (matrix_sync_decrypted(it, event, &me, &m->dec) != PARLEY_OK) {
            matrix_batch_free(&m->dec);
            status = PARLEY_ERR_OOM;
        }
    }
    if (status == PARLEY_ERR_EOF && mx_utd_keep(m, it) == PARLEY_OK)
        return;                     /* kept, key asked: it goes on */
    if (status == PARLEY_OK || status == PARLEY_ERR_PROTOCOL)
        mx_utd_settled(m, it->event_id);
    if (status == PARLEY_ERR_EOF || status == PARLEY_ERR_PROTOCOL) {
        log_warn("matrix %s: no usable room key for %s in %s: not "
                 "answered", m->mc.account, it->event_id, it->room_id);
    } else if (status != PARLEY_OK) {
        log_warn("matrix %s: decrypting %s failed (%s); pausing the sync",
                 m->mc.account, it->event_id, parley_status_name(status));
        mx_ctl_later(m, mx_backoff(m, m->attempt < 30 ? m->attempt++ : 30));
        return;
    }
    mx_walk_decrypted_next(m);
}

void mx_walk_decrypted_next(struct matrix *m)
{
    m->dec_i = m->walk_i + 1;
    m->dec_serial = m->batch_serial;
    mx_walk(m);
}

static int walk_item(struct matrix *m, const struct matrix_item *it)
{
    struct mx_room *r;
    struct event ev;
    struct event_attachment att;
    char room[2 * MATRIX_ID_MAX + 2];
    char name[MATRIX_NAME_MAX + MATRIX_ID_MAX + 8];
    size_t i;

    r = it->room_id ? mx_room_get(m, it->room_id, 1) : NULL;
    switch (it->kind) {
    case MATRIX_ITEM_INVITE:
        handle_invite(m, it);
        return 0;
    case MATRIX_ITEM_ENCRYPTED:
        if (r)
            r->encrypted = 1;
        if (r && !r->encrypted_logged && !matrix_e2ee_ready(m->e2ee)) {
            r->encrypted_logged = 1;
            log_warn("matrix %s: %s is encrypted; end-to-end encryption is "
                     "off (crypto_key_env): the bot stays silent there",
                     m->mc.account, it->room_id);
        }
        return 0;
    case MATRIX_ITEM_CIPHERTEXT:
        if (r)
            r->encrypted = 1;
        if (m->initial || !matrix_e2ee_ready(m->e2ee))
            return 0;
        if (m->dec_i != m->walk_i + 1 || m->dec_serial != m->batch_serial) {
            int result = matrix_e2ee_decrypt(m->e2ee, it->room_id,
                                             it->event_id, it->cipher,
                                             walk_decrypted, m);

            if (result == PARLEY_OK)
                return -1;          /* walk_decrypted goes on */
            log_warn("matrix %s: cannot decrypt %s in %s (%s)",
                     m->mc.account, it->event_id, it->room_id,
                     parley_status_name(result));
            return 0;
        }
        if (m->dec.n_items != 1)
            return 0;               /* not a message we handle */
        it = &m->dec.items[0];
        break;
    case MATRIX_ITEM_JOIN:
        /* A join changes the count: without a summary in this batch the
         * one known is stale, so ask (once per room and batch).  Whether
         * the size matters is the router's business, not ours. */
        if (r && !batch_has_summary(&m->batch, it->room_id) &&
            r->members_batch != m->batch_serial) {
            r->members = -1;
            if (!m->initial && members_fetch(m, it->room_id))
                return -1;
            r->members_batch = m->batch_serial;
        }
        break;
    case MATRIX_ITEM_MESSAGE:
        break;
    }
    /* The account's first sync is history: not answered, not greeted. */
    if (m->initial)
        return 0;
    memset(&ev, 0, sizeof(ev));
    ev.platform = "matrix";
    ev.account = m->mc.account;
    ev.sender = it->sender;
    ev.sender_name = it->sender_name;
    ev.event_id = it->event_id;
    ev.thread_id = it->thread_id;
    ev.reply_to = it->reply_to;
    /* A sender the name table has not seen (after a restart, lazy loading
     * does not send their member event again): ask for the room's
     * members once. */
    if (r && it->sender && !r->names_loaded &&
        !matrix_members_has(r->names, it->sender)) {
        r->names_loaded = 1;
        if (members_fetch(m, it->room_id))
            return -1;
    }
    if (r && it->sender &&
        matrix_members_name(r->names, it->sender, name,
                            sizeof(name)) == PARLEY_OK)
        ev.sender_name = name;
    if (it->kind == MATRIX_ITEM_JOIN) {
        /* Facts only: who joined and how many are in the room now; the
         * router's greeting policy decides what to do about it. */
        ev.kind = EVENT_JOIN;
        ev.self = strcmp(it->sender, m->user_id) == 0;
        ev.members = r && r->members > 0 && r->members < INT_MAX
                     ? (int)r->members : 0;
        mx_ring_add(m->joins, &m->joins_pos, it->event_id);
    } else {
        ev.kind = EVENT_MESSAGE;
        ev.text = it->text;
        ev.addressed = it->mentioned || it->reply_names_bot ||
                       mx_ring_has(m->mine, it->reply_to) ||
                       (r && (r->direct || r->members == 2));
        if (it->media_ref) {
            /* A picture goes by reference: the job fetches it only if
             * the model will look at it (matrix_media.c). */
            memset(&att, 0, sizeof(att));
            att.ref = it->media_ref;
            att.name = it->media_name;
            att.mime = it->media_mime;
            att.size = it->media_size > 0 ? (size_t)it->media_size : 0;
            ev.attachment = &att;
            /* Pictures rarely carry a mention: one posted in a thread
             * whose root asked the bot (or that the bot answered in)
             * belongs to that conversation. */
            if (it->thread_id && (mx_ring_has(m->asked, it->thread_id) ||
                                  mx_ring_has(m->mine, it->thread_id)))
                ev.addressed = 1;
        }
        if (ev.addressed && it->event_id)
            mx_ring_add(m->asked, &m->asked_pos, it->event_id);
        if (!ev.addressed && r && r->members < 0) {
            /* Maybe a DM: ask the server how many are in the room. */
            if (members_fetch(m, it->room_id))
                return -1;
            r->members = 0;
        }
    }
    for (i = 0; m->mc.allow && i < m->mc.n_allow; i++)
        if (m->mc.allow[i][0] == '@' && strcmp(m->mc.allow[i],
                                               it->sender) == 0)
            ev.is_admin = 1;
    if (m->mc.thread_context && it->thread_id)
        snprintf(room, sizeof(room), "%s/%s", it->room_id, it->thread_id);
    else
        snprintf(room, sizeof(room), "%s", it->room_id);
    ev.room = room;
    m->walk_pending = 1;
    m->walk_async = 0;
    router_submit_durable(m->ad.router, &ev, walk_accepted, m);
    return 1;
}

void mx_walk(struct matrix *m)
{
    size_t i;

    if (m->stopped)
        return;
    m->state = MX_WALK;
    /* Events kept undecrypted by earlier syncs join this batch's end. */
    if (mx_utd_prepare(m))
        return;
    /* Summaries first: they say which rooms are DMs, and which are empty
     * but for the bot.  Once per batch, however often the walk resumes. */
    if (!m->walk_rooms_done) {
        m->walk_rooms_done = 1;
        for (i = 0; i < m->batch.n_rooms; i++) {
            const struct matrix_room_info *ri = &m->batch.rooms[i];
            struct mx_room *r = mx_room_get(m, ri->room_id, 1);
            char id[3 * MATRIX_ID_MAX + 1], path[MX_URL_MAX];

            if (r)
                r->members = ri->joined_members;
            if (ri->joined_members <= 1 && m->mc.leave_empty_rooms &&
                !m->initial &&
                matrix_url_escape(ri->room_id, id, sizeof(id)) == PARLEY_OK) {
                log_info("matrix %s: %s is empty but for the bot: leaving",
                         m->mc.account, ri->room_id);
                snprintf(path, sizeof(path), "/rooms/%s/leave", id);
                mx_misc_start(m, "leave", ri->room_id, "POST", path, "{}");
            }
        }
    }
    while (m->walk_i < m->batch.n_items) {
        int w;

        members_apply(m, m->walk_i);
        w = walk_item(m, &m->batch.items[m->walk_i]);

        if (w < 0)
            return;             /* joined_members in flight */
        if (w > 0) {
            if (m->walk_pending) {
                m->walk_async = 1;
                return;         /* walk_accepted goes on */
            }
            if (m->walk_status != PARLEY_OK &&
                !walk_refused(m, m->walk_status))
                return;         /* paused: offered again later */
        }
        m->walk_i++;
    }
    members_apply(m, m->batch.n_items);
    m->state = MX_SAVE_SINCE;
    mx_ctl_step(m);
}
