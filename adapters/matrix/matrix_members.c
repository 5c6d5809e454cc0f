/*
 * Per-room display names for the model.  The Matrix spec ("Calculating
 * the display name for a user", client-server API, m.room.member) says a
 * member's displayname is shown as is when it is unique among the room's
 * members with membership join or invite, and otherwise followed by the
 * user id in brackets, "Alice (@alice:example.org)", so two people who
 * both call themselves Alice stay two people.  Where the spec falls back to
 * the raw user id, parley uses the localpart ("alice"): it reads as a name
 * and does not put server names into every turn of the prompt.
 *
 * The adapter feeds every m.room.member event of a room, in order; the
 * table keeps only members present now.  With lazy-loaded members the
 * homeserver sends a member's event with their first message (or when it
 * changes), so uniqueness is judged among the members parley has seen:
 * the ones who took part, which are the ones the model hears about.
 * Pure: no loop, no network; two hash tables (user -> name, name ->
 * members holding it) keep both updates and look-ups O(1).
 */
#include "matrix.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dict.h"
#include "status.h"

struct matrix_members {
    struct dict *users;         /* user id -> char *name ("" for none) */
    struct dict *names;         /* name -> holders, as (void *)count */
};

struct matrix_members *matrix_members_new(void)
{
    struct matrix_members *mm = calloc(1, sizeof(*mm));

    if (!mm)
        return NULL;
    mm->users = dict_create();
    mm->names = dict_create();
    if (!mm->users || !mm->names) {
        dict_free(mm->users);
        dict_free(mm->names);
        free(mm);
        return NULL;
    }
    return mm;
}

static void free_value(const char *key, void *value, void *arg)
{
    (void)key;
    (void)arg;
    free(value);
}

void matrix_members_free(struct matrix_members *mm)
{
    if (!mm)
        return;
    dict_foreach(mm->users, free_value, NULL);
    dict_free(mm->users);
    dict_free(mm->names);
    free(mm);
}

size_t matrix_members_count(const struct matrix_members *mm)
{
    return mm ? dict_size(mm->users) : 0;
}

int matrix_members_has(const struct matrix_members *mm, const char *user_id)
{
    return mm && user_id && dict_get(mm->users, user_id) != NULL;
}

/* Change the holder count of name by delta (+1 or -1). */
static int names_adjust(struct matrix_members *mm, const char *name,
                        int delta)
{
    uintptr_t n = (uintptr_t)dict_get(mm->names, name);

    if (delta < 0) {
        if (n <= 1)
            dict_delete(mm->names, name);
        else
            dict_set(mm->names, name, (void *)(n - 1));   /* replaces */
        return PARLEY_OK;
    }
    return dict_set(mm->names, name, (void *)(n + 1));
}

/*
 * A display name fit for a prompt: valid UTF-8, control characters (a
 * newline could forge a turn) turned into spaces, outer spaces trimmed,
 * at most MATRIX_NAME_MAX bytes.  "" for none.  NULL on OOM.
 */
static char *name_clean(const char *displayname)
{
    char *s, *p, *start, *end;

    if (!displayname)
        return strdup("");
    s = matrix_utf8_clean(displayname, strlen(displayname), MATRIX_NAME_MAX);
    if (!s)
        return NULL;
    for (p = s; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = ' ';
    for (start = s; *start == ' '; start++)
        ;
    end = start + strlen(start);
    while (end > start && end[-1] == ' ')
        end--;
    *end = '\0';
    memmove(s, start, (size_t)(end - start) + 1);
    return s;
}

int matrix_members_update(struct matrix_members *mm, const char *user_id,
                          const char *displayname, int present)
{
    char *old, *name;

    if (!mm || !user_id)
        return PARLEY_ERR_OTHER;
    old = dict_get(mm->users, user_id);
    if (!present) {
        if (old) {
            if (old[0])
                names_adjust(mm, old, -1);
            dict_delete(mm->users, user_id);
            free(old);
        }
        return PARLEY_OK;
    }
    if (!old && dict_size(mm->users) >= MATRIX_ROOM_MEMBERS_MAX)
        return PARLEY_ERR_TOO_LARGE;
    name = name_clean(displayname);
    if (!name)
        return PARLEY_ERR_OOM;
    if (old && strcmp(old, name) == 0) {
        free(name);
        return PARLEY_OK;
    }
    /* Count the new name first: on OOM the table is left as it was. */
    if (name[0] && names_adjust(mm, name, +1) != PARLEY_OK) {
        free(name);
        return PARLEY_ERR_OOM;
    }
    if (dict_set(mm->users, user_id, name) != PARLEY_OK) {
        if (name[0])
            names_adjust(mm, name, -1);
        free(name);
        return PARLEY_ERR_OOM;
    }
    if (old) {
        if (old[0])
            names_adjust(mm, old, -1);
        free(old);
    }
    return PARLEY_OK;
}

/* Copy src into out, cut on a UTF-8 character boundary. */
static void copy_cut(char *out, size_t outlen, const char *src, size_t n)
{
    if (outlen == 0)
        return;
    if (n >= outlen) {
        n = outlen - 1;
        while (n > 0 && ((unsigned char)src[n] & 0xC0) == 0x80)
            n--;
    }
    memcpy(out, src, n);
    out[n] = '\0';
}

int matrix_members_name(const struct matrix_members *mm,
                        const char *user_id, char *out, size_t outlen)
{
    const char *name = mm ? dict_get(mm->users, user_id) : NULL;
    const char *colon;
    char buf[MATRIX_NAME_MAX + MATRIX_ID_MAX + 8];
    int n;

    if (outlen > 0)
        out[0] = '\0';
    if (!user_id || user_id[0] != '@' || !(colon = strchr(user_id, ':')) ||
        colon == user_id + 1)
        return PARLEY_ERR_PROTOCOL;
    if (!name || !name[0]) {
        copy_cut(out, outlen, user_id + 1, (size_t)(colon - user_id - 1));
        return PARLEY_OK;
    }
    if ((uintptr_t)dict_get(mm->names, name) > 1) {
        n = snprintf(buf, sizeof(buf), "%s (%s)", name, user_id);
        if (n > 0)
            copy_cut(out, outlen, buf, strlen(buf));
        return PARLEY_OK;
    }
    copy_cut(out, outlen, name, strlen(name));
    return PARLEY_OK;
}
