/*
 * The "rooms" list of bot.conf: per-room overrides of the model, the
 * system prompt and greetings, keyed by the full room key
 * ("platform:account:room", see event_room_key), and the lookups the
 * router makes in it at run time.
 */
#include <stdlib.h>
#include <string.h>

#include "config_loader.h"
#include "event.h"

/* Room keys are "platform:account:room" (event_room_key); the account may
 * be empty. */
static int
config_room_key_valid(const char *key)
{
    const char *c1 = strchr(key, ':');
    const char *c2;

    if (!c1 || c1 == key)
        return 0;
    c2 = strchr(c1 + 1, ':');
    return c2 && c2[1] != '\0';
}

/* IRC adapters build room keys from the case-folded channel, so a key
 * with capitals would never match. */
static int
config_room_key_folded(const char *key)
{
    const char *p;

    if (strncmp(key, "irc:", 4) != 0)
        return 1;
    p = strchr(key + 4, ':');
    for (; p && *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            return 0;
    return 1;
}

void
config_load_rooms(struct config_loader *ld, const config_setting_t *s)
{
    static const char *const names[] = {
        "room", "model", "system", "greeting"
    };
    struct config *cfg = ld->cfg;
    int i, n = config_setting_length(s);

    if (!config_setting_is_list(s)) {
        config_error_add(&ld->errs, s,
                         "expected a list ( { room = \"...\"; ... }, ... )");
        return;
    }
    if (n > CONFIG_MAX_ROOMS) {
        config_error_add(&ld->errs, s, "more than %d rooms",
                         CONFIG_MAX_ROOMS);
        return;
    }
    cfg->rooms = calloc((size_t)n + 1, sizeof(*cfg->rooms));
    if (!cfg->rooms) {
        ld->oom = 1;
        return;
    }
    for (i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        const config_setting_t *m;
        struct config_room *room = &cfg->rooms[cfg->n_rooms];
        const char *key, *model, *system;
        size_t j;

        if (!config_setting_is_group(e)) {
            config_error_add(&ld->errs, e,
                             "expected a group { room = \"...\"; ... }");
            continue;
        }
        config_check_members(ld, e, names, 4);
        key = config_member_text(ld, e, "room", 1, EVENT_ROOM_KEY_MAX - 1);
        model = config_member_text(ld, e, "model", 0, CONFIG_NAME_MAX);
        system = config_member_text(ld, e, "system", 0, 0);
        room->greeting = -1;
        m = config_setting_get_member(e, "greeting");
        if (m) {
            if (config_setting_type(m) != CONFIG_TYPE_BOOL)
                config_error_add(&ld->errs, m, "expected true or false");
            else
                room->greeting = config_setting_get_bool(m) ? 1 : 0;
        }
        if (!key)
            continue;
        m = config_setting_get_member(e, "room");
        if (!config_room_key_valid(key)) {
            config_error_add(&ld->errs, m,
                             "must be \"platform:account:room\", e.g. "
                             "\"irc:libera:#parley\"");
            continue;
        }
        if (!config_room_key_folded(key)) {
            config_error_add(&ld->errs, m,
                             "IRC channels are matched in lower case; "
                             "write the channel part in lower case");
            continue;
        }
        for (j = 0; j < cfg->n_rooms; j++)
            if (strcmp(cfg->rooms[j].room, key) == 0)
                break;
        if (j < cfg->n_rooms) {
            config_error_add(&ld->errs, m, "room listed twice");
            continue;
        }
        room->room = strdup(key);
        room->model = model ? strdup(model) : NULL;
        room->system = system ? strdup(system) : NULL;
        cfg->n_rooms++;
        if (!room->room || (model && !room->model) ||
            (system && !room->system)) {
            ld->oom = 1;
            return;
        }
    }
}


void
config_free_rooms(struct config *cfg)
{
    size_t i;

    for (i = 0; i < cfg->n_rooms; i++) {
        free(cfg->rooms[i].room);
        free(cfg->rooms[i].model);
        free(cfg->rooms[i].system);
    }
    free(cfg->rooms);
    cfg->rooms = NULL;
    cfg->n_rooms = 0;
}

const struct config_room *
config_room_find(const struct config *cfg, const char *room_key)
{
    size_t i;

    if (!cfg || !room_key)
        return NULL;
    /* Linear: a few thousand rooms at most (CONFIG_MAX_ROOMS), compared
     * once per message, costs less than the Redis round trip beside it. */
    for (i = 0; i < cfg->n_rooms; i++)
        if (strcmp(cfg->rooms[i].room, room_key) == 0)
            return &cfg->rooms[i];
    return NULL;
}
