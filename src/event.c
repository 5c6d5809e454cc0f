/*
 * Helpers for struct event: the room key that names a conversation in
 * Redis, and the deep copy the router keeps when an event has to outlive
 * router_submit() (a reply queued behind another in the same room).  The
 * copy is one allocation holding the struct and all its strings, so it
 * cannot be half-built and event_free() is a single free().
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

struct event *
event_dup(const struct event *ev)
{
    size_t total = sizeof(struct event);
    struct event *copy;
    char *pos;

    if (!ev)
        return NULL;
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
        return NULL;
    copy = malloc(total);
    if (!copy)
        return NULL;
    *copy = *ev;
    pos = (char *)(copy + 1);
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

void
event_free(struct event *ev)
{
    /* The strings live in the same block as the struct (event_dup). */
    free(ev);
}
