/*
 * /sync response parser: the one place that reads the homeserver's JSON
 * for incoming traffic.  It walks rooms.join (timeline messages, member
 * joins, encrypted events, summaries) and rooms.invite, checks the type of
 * every field before use, and produces a flat list of items in timeline
 * order with platform quirks already resolved: reply fallbacks removed,
 * thread and reply relations split apart, mentions of the bot decided.
 * A malformed event is skipped, never fatal; only a body that is not a
 * JSON object with a next_batch string fails the whole batch.
 *
 * Decisions: edits (m.replace) are skipped, because the original message
 * was already seen and, if addressed, answered; answering the edit too
 * would answer twice, and answering only edits that newly add a mention
 * would surprise people who fix a typo.  m.notice is skipped (the spec
 * reserves it for bots, and bots answering bots loop).  Redactions are not
 * requested by the filter.
 */
#include "matrix.h"
#include "matrix_media.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "status.h"

static void set_err(char *err, size_t errlen, const char *msg)
{
    if (err && errlen > 0)
        snprintf(err, errlen, "%s", msg);
}

/* Child string of obj, or NULL when absent or not a string. */
static const char *get_str(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);

    return cJSON_IsString(v) && v->valuestring ? v->valuestring : NULL;
}

static const cJSON *get_obj(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);

    return cJSON_IsObject(v) ? v : NULL;
}

static const cJSON *get_arr(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);

    return cJSON_IsArray(v) ? v : NULL;
}

/* Ids are short and printable; anything else is a broken event. */
static int valid_id(const char *s, char sigil)
{
    size_t n;

    if (!s || s[0] != sigil)
        return 0;
    n = strlen(s);
    if (n < 2 || n > MATRIX_ID_MAX)
        return 0;
    for (; *s; s++)
        if ((unsigned char)*s < 0x21 || *s == 0x7f)
            return 0;
    return 1;
}

static void item_free(struct matrix_item *it)
{
    free(it->room_id);
    free(it->event_id);
    free(it->sender);
    free(it->sender_name);
    free(it->text);
    free(it->thread_id);
    free(it->reply_to);
    free(it->cipher);
    free(it->media_ref);
    free(it->media_name);
    free(it->media_mime);
    memset(it, 0, sizeof(*it));
}

void matrix_batch_free(struct matrix_batch *b)
{
    size_t i;

    if (!b)
        return;
    for (i = 0; i < b->n_items; i++)
        item_free(&b->items[i]);
    for (i = 0; i < b->n_rooms; i++)
        free(b->rooms[i].room_id);
    for (i = 0; i < b->n_members; i++) {
        free(b->members[i].room_id);
        free(b->members[i].user_id);
        free(b->members[i].displayname);
    }
    for (i = 0; i < b->n_to_device; i++) {
        free(b->to_device[i].type);
        free(b->to_device[i].sender);
        free(b->to_device[i].content);
    }
    free(b->to_device);
    for (i = 0; i < b->n_dl_stale; i++)
        free(b->dl_stale[i]);
    free(b->dl_stale);
    free(b->items);
    free(b->rooms);
    free(b->members);
    free(b->next_batch);
    memset(b, 0, sizeof(*b));
}

/* Strdup that tolerates NULL (gives NULL) and reports OOM through *oom. */
static char *dup_opt(const char *s, int *oom)
{
    char *d;

    if (!s)
        return NULL;
    d = strdup(s);
    if (!d)
        *oom = 1;
    return d;
}

/* Append an item (moved in); PARLEY_OK, or _OOM.  Over the cap the item
 * is freed and counted as dropped. */
static int batch_push(struct matrix_batch *b, struct matrix_item *it)
{
    if (b->n_items >= MATRIX_SYNC_ITEMS_MAX) {
        item_free(it);
        b->n_dropped++;
        return PARLEY_OK;
    }
    if (b->n_items == b->cap_items) {
        size_t cap = b->cap_items ? b->cap_items * 2 : 16;
        struct matrix_item *n = realloc(b->items, cap * sizeof(*n));

        if (!n) {
            item_free(it);
            return PARLEY_ERR_OOM;
        }
        b->items = n;
        b->cap_items = cap;
    }
    b->items[b->n_items++] = *it;
    memset(it, 0, sizeof(*it));
    return PARLEY_OK;
}

static int batch_room(struct matrix_batch *b, const char *room_id,
                      long members)
{
    struct matrix_room_info *ri;

    if (b->n_rooms >= MATRIX_SYNC_ROOMS_MAX)
        return PARLEY_OK;
    if (b->n_rooms == b->cap_rooms) {
        size_t cap = b->cap_rooms ? b->cap_rooms * 2 : 8;
        struct matrix_room_info *n = realloc(b->rooms, cap * sizeof(*n));

        if (!n)
            return PARLEY_ERR_OOM;
        b->rooms = n;
        b->cap_rooms = cap;
    }
    ri = &b->rooms[b->n_rooms];
    ri->room_id = strdup(room_id);
    if (!ri->room_id)
        return PARLEY_ERR_OOM;
    ri->joined_members = members;
    b->n_rooms++;
    return PARLEY_OK;
}

/*
 * Record an m.room.member event for the adapter's name table (see struct
 * matrix_member).  Events without a usable user id or membership are
 * skipped; over MATRIX_SYNC_MEMBERS_MAX they are counted as dropped.
 */
static int batch_member(struct matrix_batch *b, const char *room_id,
                        const cJSON *ev)
{
    const char *type = get_str(ev, "type");
    const char *key = get_str(ev, "state_key");
    const cJSON *content = get_obj(ev, "content");
    const char *membership = content ? get_str(content, "membership") : NULL;
    const char *dn = content ? get_str(content, "displayname") : NULL;
    struct matrix_member *mb;
    int oom = 0;

    if (!type || strcmp(type, "m.room.member") != 0 ||
        !valid_id(key, '@') || !membership)
        return PARLEY_OK;
    if (b->n_members >= MATRIX_SYNC_MEMBERS_MAX) {
        b->n_dropped++;
        return PARLEY_OK;
    }
    if (b->n_members == b->cap_members) {
        size_t cap = b->cap_members ? b->cap_members * 2 : 16;
        struct matrix_member *n = realloc(b->members, cap * sizeof(*n));

        if (!n)
            return PARLEY_ERR_OOM;
        b->members = n;
        b->cap_members = cap;
    }
    mb = &b->members[b->n_members];
    memset(mb, 0, sizeof(*mb));
    mb->room_id = dup_opt(room_id, &oom);
    mb->user_id = dup_opt(key, &oom);
    mb->displayname = dn && dn[0] ? dup_opt(dn, &oom) : NULL;
    mb->present = strcmp(membership, "join") == 0 ||
                  strcmp(membership, "invite") == 0;
    mb->at = b->n_items;
    if (oom) {
        free(mb->room_id);
        free(mb->user_id);
        free(mb->displayname);
        return PARLEY_ERR_OOM;
    }
    b->n_members++;
    return PARLEY_OK;
}

/* Display name of user from m.room.member events in arr (last wins). */
static const char *member_name(const cJSON *arr, const char *user)
{
    const cJSON *ev;
    const char *name = NULL;

    cJSON_ArrayForEach(ev, arr) {
        const char *type = get_str(ev, "type");
        const char *key = get_str(ev, "state_key");
        const cJSON *content = get_obj(ev, "content");
        const char *dn;

        if (!type || strcmp(type, "m.room.member") != 0 || !key ||
            strcmp(key, user) != 0 || !content)
            continue;
        dn = get_str(content, "displayname");
        if (dn && dn[0])
            name = dn;
    }
    return name;
}

/* Whether m.mentions.user_ids lists the bot; *present says whether the
 * event carried m.mentions at all. */
static int mentions_list_has(const cJSON *content, const char *user,
                             int *present)
{
    const cJSON *m = get_obj(content, "m.mentions");
    const cJSON *ids, *v;

    *present = m != NULL;
    if (!m)
        return 0;
    ids = get_arr(m, "user_ids");
    cJSON_ArrayForEach(v, ids)
        if (cJSON_IsString(v) && v->valuestring &&
            strcmp(v->valuestring, user) == 0)
            return 1;
    return 0;
}

static int parse_message(struct matrix_batch *b, const char *room_id,
                         const cJSON *ev, const cJSON *state,
                         const cJSON *timeline, const struct matrix_ident *me)
{
    const char *event_id = get_str(ev, "event_id");
    const char *sender = get_str(ev, "sender");
    const cJSON *content = get_obj(ev, "content");
    const cJSON *rel, *inrep;
    const char *msgtype, *body, *text, *fmt, *rel_type;
    char quoted[MATRIX_ID_MAX + 1], pill[MATRIX_NAME_MAX + 1];
    struct matrix_item it;
    int oom = 0, present = 0, falling_back = 0;
    const char *name;
    char *f = NULL;

    if (!valid_id(event_id, '$') || !valid_id(sender, '@') || !content) {
        b->n_skipped++;
        return PARLEY_OK;
    }
    if (strcmp(sender, me->user_id) == 0) {
        b->n_skipped++;         /* our own answers come back in /sync */
        return PARLEY_OK;
    }
    msgtype = get_str(content, "msgtype");
    body = get_str(content, "body");
    memset(&it, 0, sizeof(it));
    if (msgtype && body && strcmp(msgtype, "m.image") == 0) {
        /* A picture: its caption (if any) is the text (matrix_media.h). */
        struct matrix_media_info mi;
        int r = matrix_media_ref(content, &mi);

        if (r == PARLEY_ERR_OOM)
            return r;
        if (r != PARLEY_OK) {
            b->n_skipped++;
            return PARLEY_OK;
        }
        it.media_ref = mi.ref;
        it.media_name = mi.name;
        it.media_mime = mi.mime;
        it.media_size = mi.size;
        body = mi.caption ? mi.caption : "";
    } else if (!msgtype || !body || (strcmp(msgtype, "m.text") != 0 &&
                                     strcmp(msgtype, "m.emote") != 0)) {
        b->n_skipped++;
        return PARLEY_OK;
    }
    rel = get_obj(content, "m.relates_to");
    rel_type = rel ? get_str(rel, "rel_type") : NULL;
    if (rel_type && strcmp(rel_type, "m.replace") == 0) {
        b->n_skipped++;         /* edits: see the comment at the top */
        item_free(&it);
        return PARLEY_OK;
    }
    if (rel_type && strcmp(rel_type, "m.thread") == 0) {
        const char *root = get_str(rel, "event_id");
        const cJSON *fb = cJSON_GetObjectItemCaseSensitive(rel,
                                                     "is_falling_back");

        if (valid_id(root, '$'))
            it.thread_id = dup_opt(root, &oom);
        falling_back = cJSON_IsTrue(fb);
    }
    inrep = rel ? get_obj(rel, "m.in_reply_to") : NULL;
    if (inrep && !falling_back) {
        const char *id = get_str(inrep, "event_id");

        if (valid_id(id, '$'))
            it.reply_to = dup_opt(id, &oom);
    }

    text = body;
    quoted[0] = '\0';
    if (it.reply_to) {
        text = matrix_strip_body_fallback(body, quoted, sizeof(quoted));
        it.reply_names_bot = quoted[0] && strcmp(quoted, me->user_id) == 0;
    }
    fmt = get_str(content, "formatted_body");
    if (fmt && strlen(fmt) <= MATRIX_BODY_MAX) {
        f = strdup(fmt);
        if (!f)
            oom = 1;
        else
            matrix_strip_html_fallback(f);
    }
    it.mentioned = mentions_list_has(content, me->user_id, &present);
    if (!present) {
        /* Clients without intentional mentions: look at the text. */
        it.mentioned = matrix_text_mentions(text, me) ||
                       (f && matrix_text_mentions(f, me));
    }
    /* "parley: hello" reaches the model as "hello": the address is how
     * the person chose to be heard, not part of what they said. */
    if (!f || matrix_leading_pill(f, me, pill, sizeof(pill)) != PARLEY_OK)
        pill[0] = '\0';
    text = matrix_strip_address(text, me, pill);
    free(f);
    it.kind = MATRIX_ITEM_MESSAGE;
    it.emote = strcmp(msgtype, "m.emote") == 0;
    it.room_id = dup_opt(room_id, &oom);
    it.event_id = dup_opt(event_id, &oom);
    it.sender = dup_opt(sender, &oom);
    it.text = matrix_utf8_clean(text, strlen(text), MATRIX_BODY_MAX);
    if (!it.text)
        oom = 1;
    name = member_name(timeline, sender);
    if (!name)
        name = member_name(state, sender);
    it.sender_name = name ? matrix_utf8_clean(name, strlen(name), 256)
                          : NULL;
    if (name && !it.sender_name)
        oom = 1;
    if (oom) {
        item_free(&it);
        return PARLEY_ERR_OOM;
    }
    return batch_push(b, &it);
}

/* A member event: a fresh join (another user's, or the bot's own, which
 * the adapter turns into its greeting) becomes a JOIN item. */
static int parse_member(struct matrix_batch *b, const char *room_id,
                        const cJSON *ev)
{
    const char *key = get_str(ev, "state_key");
    const char *event_id = get_str(ev, "event_id");
    const cJSON *content = get_obj(ev, "content");
    const cJSON *unsig = get_obj(ev, "unsigned");
    const cJSON *prev = unsig ? get_obj(unsig, "prev_content") : NULL;
    const char *membership, *prevm, *dn;
    struct matrix_item it;
    int oom = 0;

    if (!valid_id(key, '@') || !valid_id(event_id, '$') || !content)
        return PARLEY_OK;
    membership = get_str(content, "membership");
    prevm = prev ? get_str(prev, "membership") : NULL;
    /* A join after a join is a profile change, not an arrival. */
    if (!membership || strcmp(membership, "join") != 0 ||
        (prevm && strcmp(prevm, "join") == 0))
        return PARLEY_OK;
    memset(&it, 0, sizeof(it));
    it.kind = MATRIX_ITEM_JOIN;
    it.room_id = dup_opt(room_id, &oom);
    it.event_id = dup_opt(event_id, &oom);
    it.sender = dup_opt(key, &oom);
    dn = get_str(content, "displayname");
    if (dn) {
        it.sender_name = matrix_utf8_clean(dn, strlen(dn), 256);
        if (!it.sender_name)
            oom = 1;
    }
    if (oom) {
        item_free(&it);
        return PARLEY_ERR_OOM;
    }
    return batch_push(b, &it);
}

/* The bot's own latest fresh join in a timeline, or NULL. */
static const cJSON *own_join(const cJSON *events,
                             const struct matrix_ident *me)
{
    const cJSON *ev, *found = NULL;

    cJSON_ArrayForEach(ev, events) {
        const char *type = get_str(ev, "type");
        const char *key = get_str(ev, "state_key");
        const cJSON *content = get_obj(ev, "content");
        const cJSON *unsig = get_obj(ev, "unsigned");
        const cJSON *prev = unsig ? get_obj(unsig, "prev_content") : NULL;
        const char *mem = content ? get_str(content, "membership") : NULL;
        const char *prevm = prev ? get_str(prev, "membership") : NULL;

        if (type && strcmp(type, "m.room.member") == 0 && key &&
            strcmp(key, me->user_id) == 0 && mem &&
            strcmp(mem, "join") == 0 && !(prevm && strcmp(prevm, "join") == 0))
            found = ev;
    }
    return found;
}

/* A state event m.room.encryption (state key ""). */
static int is_encryption(const cJSON *ev)
{
    const char *type = get_str(ev, "type");
    const char *key = get_str(ev, "state_key");

    return type && key && !key[0] && strcmp(type, "m.room.encryption") == 0;
}

static int push_encrypted(struct matrix_batch *b, const char *room_id)
{
    struct matrix_item it;
    int oom = 0;

    memset(&it, 0, sizeof(it));
    it.kind = MATRIX_ITEM_ENCRYPTED;
    it.room_id = dup_opt(room_id, &oom);
    if (oom)
        return PARLEY_ERR_OOM;
    return batch_push(b, &it);
}

/* An m.room.encrypted timeline event: kept whole for the E2EE client. */
static int parse_cipher(struct matrix_batch *b, const char *room_id,
                        const cJSON *ev, const cJSON *state,
                        const cJSON *timeline, const struct matrix_ident *me)
{
    const char *event_id = get_str(ev, "event_id");
    const char *sender = get_str(ev, "sender");
    const cJSON *content = get_obj(ev, "content");
    const char *name;
    struct matrix_item it;
    int oom = 0;

    if (!valid_id(event_id, '$') || !valid_id(sender, '@') || !content ||
        strcmp(sender, me->user_id) == 0) {
        b->n_skipped++;
        return PARLEY_OK;
    }
    memset(&it, 0, sizeof(it));
    it.kind = MATRIX_ITEM_CIPHERTEXT;
    it.room_id = dup_opt(room_id, &oom);
    it.event_id = dup_opt(event_id, &oom);
    it.sender = dup_opt(sender, &oom);
    it.cipher = cJSON_PrintUnformatted(content);
    if (!it.cipher)
        oom = 1;
    name = member_name(timeline, sender);
    if (!name)
        name = member_name(state, sender);
    it.sender_name = name ? matrix_utf8_clean(name, strlen(name), 256)
                          : NULL;
    if (name && !it.sender_name)
        oom = 1;
    if (oom) {
        item_free(&it);
        return PARLEY_ERR_OOM;
    }
    return batch_push(b, &it);
}

int matrix_sync_decrypted(const struct matrix_item *cipher,
                          const cJSON *event, const struct matrix_ident *me,
                          struct matrix_batch *out)
{
    const char *type = get_str(event, "type");
    const cJSON *content = get_obj(event, "content");
    cJSON *ev, *c;
    size_t before = out->n_items;
    int result;

    if (!cipher || cipher->kind != MATRIX_ITEM_CIPHERTEXT || !type ||
        !content || strcmp(type, "m.room.message") != 0) {
        out->n_skipped++;
        return PARLEY_OK;
    }
    /* The envelope (id, sender) is the server's; only type and content
     * come from the plaintext. */
    ev = cJSON_CreateObject();
    c = cJSON_Duplicate(content, 1);
    if (!ev || !c || !cJSON_AddStringToObject(ev, "type", type) ||
        !cJSON_AddStringToObject(ev, "event_id", cipher->event_id) ||
        !cJSON_AddStringToObject(ev, "sender", cipher->sender)) {
        cJSON_Delete(ev);
        cJSON_Delete(c);
        return PARLEY_ERR_OOM;
    }
    cJSON_AddItemToObject(ev, "content", c);
    result = parse_message(out, cipher->room_id, ev, NULL, NULL, me);
    cJSON_Delete(ev);
    if (!result && out->n_items > before && cipher->sender_name &&
        !out->items[out->n_items - 1].sender_name) {
        out->items[out->n_items - 1].sender_name =
            strdup(cipher->sender_name);
        if (!out->items[out->n_items - 1].sender_name)
            result = PARLEY_ERR_OOM;
    }
    return result;
}

int matrix_batch_add_cipher(struct matrix_batch *b, const char *room_id,
                            const char *event_id, const char *sender,
                            const char *sender_name, const char *cipher)
{
    struct matrix_item it;
    size_t before = b->n_items;
    int result;

    if (!room_id || !event_id || !sender || !cipher)
        return PARLEY_ERR_OTHER;
    if (b->n_items >= MATRIX_SYNC_ITEMS_MAX)
        return PARLEY_ERR_TOO_LARGE;
    memset(&it, 0, sizeof(it));
    it.kind = MATRIX_ITEM_CIPHERTEXT;
    it.room_id = strdup(room_id);
    it.event_id = strdup(event_id);
    it.sender = strdup(sender);
    it.sender_name = sender_name ? strdup(sender_name) : NULL;
    it.cipher = strdup(cipher);
    if (!it.room_id || !it.event_id || !it.sender || !it.cipher ||
        (sender_name && !it.sender_name)) {
        item_free(&it);
        return PARLEY_ERR_OOM;
    }
    result = batch_push(b, &it);
    return !result && b->n_items == before ? PARLEY_ERR_TOO_LARGE : result;
}

/* device_lists.changed and .left: users whose devices changed, or who
 * no longer share an encrypted room with us (their list is no longer
 * kept up to date by the server, so it must be fetched again if they
 * come back).  Both only mark lists stale. */
static int parse_device_lists(struct matrix_batch *b, const cJSON *root)
{
    const cJSON *dl = get_obj(root, "device_lists");
    const char *const parts[] = { "changed", "left" };
    const cJSON *u;

    for (size_t p = 0; dl && p < 2; p++) {
        cJSON_ArrayForEach(u, get_arr(dl, parts[p])) {
            if (!cJSON_IsString(u) || !valid_id(u->valuestring, '@'))
                continue;
            if (b->n_dl_stale >= MATRIX_DEVICE_LISTS_MAX) {
                b->dl_all = 1;
                continue;
            }
            if (!b->dl_stale) {
                b->dl_stale = calloc(MATRIX_DEVICE_LISTS_MAX,
                                     sizeof(*b->dl_stale));
                if (!b->dl_stale)
                    return PARLEY_ERR_OOM;
            }
            b->dl_stale[b->n_dl_stale] = strdup(u->valuestring);
            if (!b->dl_stale[b->n_dl_stale])
                return PARLEY_ERR_OOM;
            b->n_dl_stale++;
        }
    }
    return PARLEY_OK;
}

/* to_device.events: m.room.encrypted ones, for the E2EE client. */
static int parse_to_device(struct matrix_batch *b, const cJSON *root)
{
    const cJSON *td = get_obj(root, "to_device");
    const cJSON *events = td ? get_arr(td, "events") : NULL;
    const cJSON *ev;

    cJSON_ArrayForEach(ev, events) {
        const char *type = get_str(ev, "type");
        const char *sender = get_str(ev, "sender");
        const cJSON *content = get_obj(ev, "content");
        struct matrix_to_device *t;

        if (!type || strcmp(type, "m.room.encrypted") != 0 ||
            !valid_id(sender, '@') || !content)
            continue;
        if (b->n_to_device >= MATRIX_TO_DEVICE_MAX) {
            b->n_to_device_dropped++;
            continue;
        }
        if (!b->to_device) {
            b->to_device = calloc(MATRIX_TO_DEVICE_MAX, sizeof(*t));
            if (!b->to_device)
                return PARLEY_ERR_OOM;
        }
        t = &b->to_device[b->n_to_device];
        t->type = strdup(type);
        t->sender = strdup(sender);
        t->content = cJSON_PrintUnformatted(content);
        b->n_to_device++;
        if (!t->type || !t->sender || !t->content)
            return PARLEY_ERR_OOM;
    }
    return PARLEY_OK;
}

static int parse_joined_room(struct matrix_batch *b, const char *room_id,
                             const cJSON *room, const struct matrix_ident *me)
{
    const cJSON *summary = get_obj(room, "summary");
    const cJSON *tl = get_obj(room, "timeline");
    const cJSON *st = get_obj(room, "state");
    const cJSON *events = tl ? get_arr(tl, "events") : NULL;
    const cJSON *state = st ? get_arr(st, "events") : NULL;
    const cJSON *ev, *start;
    int result, encrypted_seen = 0;

    if (summary) {
        const cJSON *n = cJSON_GetObjectItemCaseSensitive(summary,
                                                  "m.joined_member_count");

        if (cJSON_IsNumber(n) && n->valuedouble >= 0 &&
            n->valuedouble < 1e9) {
            result = batch_room(b, room_id, (long)n->valuedouble);
            if (result)
                return result;
        }
    }
    if (tl && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(tl, "limited")))
        b->n_limited++;
    /* The state section is the room as it was before the timeline. */
    cJSON_ArrayForEach(ev, state) {
        result = batch_member(b, room_id, ev);
        if (result)
            return result;
    }
    /* An encrypted room (m.room.encryption in its state or anywhere in
     * the timeline, history included) is reported before its events, so
     * that nothing is sent there in plaintext in answer to them. */
    cJSON_ArrayForEach(ev, state)
        if (!encrypted_seen && is_encryption(ev))
            encrypted_seen = 1;
    cJSON_ArrayForEach(ev, events)
        if (!encrypted_seen && is_encryption(ev))
            encrypted_seen = 1;
    if (encrypted_seen) {
        result = push_encrypted(b, room_id);
        if (result)
            return result;
    }
    /* A room the bot just joined arrives with the events before its join:
     * that is history, neither answered nor greeted. */
    start = own_join(events, me);
    cJSON_ArrayForEach(ev, events) {
        const char *type = get_str(ev, "type");

        /* Names change even in the history before the bot's join. */
        result = batch_member(b, room_id, ev);
        if (result)
            return result;
        if (start) {
            if (ev != start) {
                b->n_skipped++;
                continue;
            }
            start = NULL;
        }
        if (!cJSON_IsObject(ev) || !type) {
            b->n_skipped++;
            continue;
        }
        if (strcmp(type, "m.room.message") == 0) {
            result = parse_message(b, room_id, ev, state, events, me);
        } else if (strcmp(type, "m.room.member") == 0) {
            result = parse_member(b, room_id, ev);
        } else if (strcmp(type, "m.room.encrypted") == 0) {
            if (!encrypted_seen) {
                encrypted_seen = 1;
                result = push_encrypted(b, room_id);
            }
            if (!result)
                result = parse_cipher(b, room_id, ev, state, events, me);
        } else {
            b->n_skipped++;
        }
        if (result)
            return result;
    }
    return PARLEY_OK;
}

static int parse_invited_room(struct matrix_batch *b, const char *room_id,
                              const cJSON *room,
                              const struct matrix_ident *me)
{
    const cJSON *is = get_obj(room, "invite_state");
    const cJSON *events = is ? get_arr(is, "events") : NULL;
    const cJSON *ev;

    cJSON_ArrayForEach(ev, events) {
        const char *type = get_str(ev, "type");
        const char *key = get_str(ev, "state_key");
        const char *sender = get_str(ev, "sender");
        const cJSON *content = get_obj(ev, "content");
        const char *membership = content ? get_str(content, "membership")
                                         : NULL;
        struct matrix_item it;
        int oom = 0;

        if (!type || strcmp(type, "m.room.member") != 0 || !key ||
            strcmp(key, me->user_id) != 0 || !membership ||
            strcmp(membership, "invite") != 0 || !valid_id(sender, '@'))
            continue;
        memset(&it, 0, sizeof(it));
        it.kind = MATRIX_ITEM_INVITE;
        it.room_id = dup_opt(room_id, &oom);
        it.sender = dup_opt(sender, &oom);
        it.is_direct = cJSON_IsTrue(
            cJSON_GetObjectItemCaseSensitive(content, "is_direct"));
        if (oom) {
            item_free(&it);
            return PARLEY_ERR_OOM;
        }
        return batch_push(b, &it);
    }
    return PARLEY_OK;
}

int matrix_sync_parse(const char *json, size_t len,
                      const struct matrix_ident *me,
                      struct matrix_batch *out, char *err, size_t errlen)
{
    cJSON *root;
    const cJSON *rooms, *join, *invite, *room;
    const char *nb;
    int result = PARLEY_OK;

    memset(out, 0, sizeof(*out));
    if (!json || !me || !me->user_id) {
        set_err(err, errlen, "no sync body");
        return PARLEY_ERR_PROTOCOL;
    }
    if (len > MATRIX_SYNC_BODY_MAX) {
        set_err(err, errlen, "sync response over MATRIX_SYNC_BODY_MAX");
        return PARLEY_ERR_TOO_LARGE;
    }
    root = cJSON_ParseWithLength(json, len);
    if (!root) {
        set_err(err, errlen, "sync response is not valid JSON");
        return PARLEY_ERR_PROTOCOL;
    }
    nb = get_str(root, "next_batch");
    if (!cJSON_IsObject(root) || !nb || !nb[0] ||
        strlen(nb) > 4096) {
        set_err(err, errlen, "sync response has no usable next_batch");
        cJSON_Delete(root);
        return PARLEY_ERR_PROTOCOL;
    }
    out->next_batch = strdup(nb);
    if (!out->next_batch) {
        cJSON_Delete(root);
        return PARLEY_ERR_OOM;
    }
    /* End-to-end encryption: how many one-time keys the server still
     * holds for us, and whether our fallback key was used. */
    {
        const cJSON *c = get_obj(root, "device_one_time_keys_count");
        const cJSON *n = c ? cJSON_GetObjectItemCaseSensitive(
                                 c, "signed_curve25519") : NULL;
        const cJSON *fb = cJSON_GetObjectItemCaseSensitive(
                              root, "device_unused_fallback_key_types");
        const cJSON *t;

        out->otk_count = -1;
        out->fallback_unused = -1;
        if (c)
            out->otk_count = cJSON_IsNumber(n) && n->valuedouble >= 0 &&
                             n->valuedouble <= 1e6 ?
                             (long)n->valuedouble : 0;
        if (cJSON_IsArray(fb)) {
            out->fallback_unused = 0;
            cJSON_ArrayForEach(t, fb)
                if (cJSON_IsString(t) &&
                    !strcmp(t->valuestring, "signed_curve25519"))
                    out->fallback_unused = 1;
        }
    }
    result = parse_to_device(out, root);
    if (!result)
        result = parse_device_lists(out, root);
    if (result)
        goto done;
    rooms = get_obj(root, "rooms");
    join = rooms ? get_obj(rooms, "join") : NULL;
    invite = rooms ? get_obj(rooms, "invite") : NULL;
    cJSON_ArrayForEach(room, join) {
        if (!cJSON_IsObject(room) || !valid_id(room->string, '!'))
            continue;
        result = parse_joined_room(out, room->string, room, me);
        if (result)
            goto done;
    }
    cJSON_ArrayForEach(room, invite) {
        if (!cJSON_IsObject(room) || !valid_id(room->string, '!'))
            continue;
        result = parse_invited_room(out, room->string, room, me);
        if (result)
            goto done;
    }
done:
    if (result == PARLEY_ERR_OOM)
        set_err(err, errlen, "out of memory parsing sync response");
    cJSON_Delete(root);
    return result;
}
