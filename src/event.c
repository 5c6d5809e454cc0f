/*
 * Helpers for struct event: the room key that names a conversation in
 * Redis, and the deep copy the router keeps when an event has to outlive
 * router_submit() (a reply queued behind another in the same room).  The
 * copy is one allocation holding the struct and all its strings, so it
 * cannot be half-built and event_free() is a single free(); the router's
 * job keeps it inside its own block (event_dup_into).  A picture
 * that came with the event (up to EVENT_ATTACHMENT_MAX) is in that block
 * too.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "event.h"
#include "status.h"

int
event_room_key(const struct event *ev, char *buf, size_t len)
{
    const char *account;
    size_t need;
    int n;

    if (buf && len > 0)
        buf[0] = '\0';
    /* An event without platform or room cannot name a conversation; it is
     * malformed input from an adapter. */
    if (!ev || !ev->platform || !ev->room || !buf || len == 0)
        return PARLEY_ERR_PROTOCOL;
    account = ev->account ? ev->account : "";
    need = strlen(ev->platform) + 1 + strlen(account) + 1 + strlen(ev->room);
    /* The key must fit both the caller's buffer and EVENT_ROOM_KEY_MAX
     * (a buffer of that size, NUL included), so that every module can use
     * a fixed char[EVENT_ROOM_KEY_MAX] for keys it builds or reads back. */
    if (need >= len || need >= EVENT_ROOM_KEY_MAX)
        return PARLEY_ERR_TOO_LARGE;
    n = snprintf(buf, len, "%s:%s:%s", ev->platform, account, ev->room);
    if (n < 0 || (size_t)n >= len) {
        buf[0] = '\0';
        return PARLEY_ERR_TOO_LARGE;
    }
    return PARLEY_OK;
}

/* Add the size of an optional string (with its NUL) to *total; returns -1
 * on overflow, which only a corrupt event could cause. */
static int
event_size_add(size_t *total, const char *s)
{
    size_t n;

    if (!s)
        return 0;
    n = strlen(s) + 1;
    if (n > SIZE_MAX - *total)
        return -1;
    *total += n;
    return 0;
}

/* Copy s to *pos and advance it; NULL stays NULL. */
static const char *
event_copy_str(char **pos, const char *s)
{
    char *dst = *pos;
    size_t n;

    if (!s)
        return NULL;
    n = strlen(s) + 1;
    memcpy(dst, s, n);
    *pos += n;
    return dst;
}

/* The attachment's size within the copy, its strings and bytes
 * included; -1 when it is too large. */
static int
event_attachment_size(size_t *total, const struct event_attachment *a)
{
    if (!a)
        return 0;
    if (a->len > EVENT_ATTACHMENT_MAX || (a->len && !a->data))
        return -1;
    /* The struct goes first, aligned like the event itself. */
    *total += sizeof(struct event_attachment) + a->len;
    return event_size_add(total, a->name) || event_size_add(total, a->mime) ||
           event_size_add(total, a->ref) ? -1 : 0;
}

static const struct event_attachment *
event_attachment_copy(char **pos, const struct event_attachment *a)
{
    struct event_attachment *dst = (struct event_attachment *)(void *)*pos;
    unsigned char *bytes;

    *pos += sizeof(*dst);
    *dst = *a;
    bytes = (unsigned char *)*pos;
    if (a->len)
        memcpy(bytes, a->data, a->len);
    dst->data = a->len ? bytes : NULL;
    *pos += a->len;
    dst->name = event_copy_str(pos, a->name);
    dst->mime = event_copy_str(pos, a->mime);
    dst->ref = event_copy_str(pos, a->ref);
    return dst;
}

size_t
event_dup_size(const struct event *ev)
{
    size_t total = sizeof(struct event);

    if (!ev)
        return 0;
    /* The attachment struct right after the event keeps its alignment
     * (both hold pointers and sizes only). */
    if (event_attachment_size(&total, ev->attachment))
        return 0;
    if (event_size_add(&total, ev->platform) ||
        event_size_add(&total, ev->account) ||
        event_size_add(&total, ev->room) ||
        event_size_add(&total, ev->sender) ||
        event_size_add(&total, ev->sender_name) ||
        event_size_add(&total, ev->text) ||
        event_size_add(&total, ev->event_id) ||
        event_size_add(&total, ev->thread_id) ||
        event_size_add(&total, ev->reply_to) ||
        event_size_add(&total, ev->limit_key))
        return 0;
    return total;
}

struct event *
event_dup_into(void *block, const struct event *ev)
{
    struct event *copy = block;
    char *pos;

    *copy = *ev;
    pos = (char *)(copy + 1);
    if (ev->attachment)
        copy->attachment = event_attachment_copy(&pos, ev->attachment);
    copy->platform = event_copy_str(&pos, ev->platform);
    copy->account = event_copy_str(&pos, ev->account);
    copy->room = event_copy_str(&pos, ev->room);
    copy->sender = event_copy_str(&pos, ev->sender);
    copy->sender_name = event_copy_str(&pos, ev->sender_name);
    copy->text = event_copy_str(&pos, ev->text);
    copy->event_id = event_copy_str(&pos, ev->event_id);
    copy->thread_id = event_copy_str(&pos, ev->thread_id);
    copy->reply_to = event_copy_str(&pos, ev->reply_to);
    copy->limit_key = event_copy_str(&pos, ev->limit_key);
    return copy;
}

struct event *
event_dup(const struct event *ev)
{
    size_t total = event_dup_size(ev);
    void *block;

    if (total == 0)
        return NULL;
    block = malloc(total);
    if (!block)
        return NULL;
    return event_dup_into(block, ev);
}

void
event_free(struct event *ev)
{
    /* The strings live in the same block as the struct (event_dup). */
    free(ev);
}
