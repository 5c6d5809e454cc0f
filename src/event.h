/*
 * The common event every adapter produces.  Platform quirks (Matrix reply
 * fallbacks, IRC colour codes, mentions) are resolved by the adapter before
 * the event is built, so the router never looks at platform syntax.
 */
#ifndef PARLEY_EVENT_H
#define PARLEY_EVENT_H

#include <stddef.h>

enum event_kind {
    EVENT_MESSAGE = 0,
    EVENT_JOIN,             /* someone (or the bot: self) joined the room */
    EVENT_INVITE,
    EVENT_LEAVE
};

/*
 * A picture that came with a message (issue 10, "pictures in").  Either
 * the bytes are here (the web chat had them in its request), or only ref
 * is, and the job asks the adapter to fetch them (ops->fetch, adapter.h)
 * when a model that reads pictures will see them: a Matrix sync batch is
 * not held up by downloads, and a job resumed after a restart fetches the
 * picture again from the same ref (the bytes are never in Redis).
 */
struct event_attachment {
    const char *name;       /* file name for the history placeholder, or
                               NULL */
    const char *mime;       /* type as declared by the sender, or NULL;
                               the bytes decide (image_sniff_mime) */
    size_t size;            /* bytes, as declared or known; 0 = unknown */
    const unsigned char *data;  /* the picture, or NULL (fetch by ref) */
    size_t len;             /* bytes at data */
    const char *ref;        /* adapter's own reference for ops->fetch
                               (Matrix: JSON with the mxc URL or the
                               EncryptedFile), or NULL */
};

/* Largest attachment an event may carry, whatever the configuration
 * says (llm.image_max_bytes is checked against it). */
#define EVENT_ATTACHMENT_MAX (32u * 1024 * 1024)

/*
 * All strings are borrowed from the adapter for the duration of
 * router_submit(); the router copies what it keeps (event_dup).
 * Optional fields are NULL when absent.
 */
struct event {
    enum event_kind kind;
    const char *platform;   /* "console", "irc", "matrix" */
    const char *account;    /* adapter instance: network name, user id */
    const char *room;       /* platform room: "#chan", "!id:server" */
    const char *sender;     /* stable user id: nick, "@u:server" */
    const char *sender_name;/* display name for the model, or NULL */
    const char *text;       /* UTF-8, cleaned; NULL for non-messages */
    const char *event_id;   /* platform id; NULL where none (IRC) */
    const char *thread_id;  /* thread root, or NULL */
    const char *reply_to;   /* event replied to, or NULL */
    const char *limit_key;  /* whom the per-user rate limit counts, when
                               not the sender: IRC people without an
                               account go by user@host, which a nick
                               change keeps; NULL = sender */
    int addressed;          /* the message is meant for the bot */
    int ambient;            /* not addressed, but keep it in the room's
                               history as context (IRC ambient_context) */
    int self;               /* sender is the bot itself */
    int from_bot;           /* sender is known to be a bot */
    int is_admin;           /* adapter says sender may use !system */
    int members;            /* room members when known (joins), else 0 */
    const struct event_attachment *attachment;  /* a picture, or NULL */
};

/*
 * Room keys ("platform:account:room") are shorter than this, NUL included
 * (the Redis key prefix excluded).  It fits the longest key real ids can
 * make: Matrix ids are at most 255 bytes each (spec, "Identifier Grammar"),
 * and with thread_context the room is "<room id>/<thread root>", so
 * "matrix:" 7 + account 255 + ":" 1 + room 255 + "/" 1 + thread 255 = 774.
 * Store keys built from a room key ("room:", "ctx:", "greeted:<key>:<user>"
 * behind a prefix of up to 256 bytes) fit STORE_KEY_MAX (store.h).
 */
#define EVENT_ROOM_KEY_MAX 800

/*
 * Write "platform:account:room" into buf.  Returns PARLEY_OK or
 * PARLEY_ERR_TOO_LARGE when it does not fit.  Adapters pass the room
 * already case-folded where the platform is case-insensitive (IRC).
 */
int event_room_key(const struct event *ev, char *buf, size_t len);

/* Deep copy, the attachment (bytes included) with it; NULL on
 * allocation failure or an attachment over EVENT_ATTACHMENT_MAX.  Free
 * with event_free(). */
struct event *event_dup(const struct event *ev);
void event_free(struct event *ev);
/* event_dup in two steps, for a caller that puts the copy inside a block
 * of its own: the bytes the copy needs (0 when event_dup would fail), and
 * the copy written at block, which must hold that many bytes and be
 * aligned for a struct event.  Such a copy is freed with its block, never
 * with event_free(). */
size_t event_dup_size(const struct event *ev);
struct event *event_dup_into(void *block, const struct event *ev);

#endif
