/*
 * The keys every adapter block shares: the greeting keys
 * (greet_on_join, greet_new_members, greet_members_max), with IRC's old
 * names greet_users and greet_max_users accepted as deprecated aliases,
 * and "stream" (show answers while the model writes them, for adapters
 * with ADAPTER_CAP_STREAM).  Kept
 * apart from config_adapters.c so that an adapter's own parser can call
 * config_greet_read and config_adapter_key_common without linking the
 * adapter registry (and with it every other adapter).
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_loader.h"

/* The greeting keys and their old names (IRC's, before the names were
 * made common); an old name is accepted with a warning. */
struct greet_key {
    const char *name;
    const char *old_name;   /* deprecated alias, or NULL */
    int is_bool;
    size_t offset;          /* into struct config_greet */
};

static const struct greet_key greet_keys[] = {
    { "greet_on_join", NULL, 1, offsetof(struct config_greet, on_join) },
    { "greet_new_members", "greet_users", 1,
      offsetof(struct config_greet, new_members) },
    { "greet_members_max", "greet_max_users", 0,
      offsetof(struct config_greet, members_max) },
};
#define N_GREET_KEYS (sizeof(greet_keys) / sizeof(greet_keys[0]))

static void
greet_defaults(struct config_greet *g)
{
    g->on_join = 1;
    g->new_members = 0;
    g->members_max = CONFIG_GREET_MEMBERS_MAX;
}

int
config_adapter_key_common(const char *name)
{
    size_t i;

    if (!name)
        return 0;
    if (strcmp(name, "type") == 0 || strcmp(name, "stream") == 0)
        return 1;
    for (i = 0; i < N_GREET_KEYS; i++)
        if (strcmp(name, greet_keys[i].name) == 0 ||
            (greet_keys[i].old_name &&
             strcmp(name, greet_keys[i].old_name) == 0))
            return 1;
    return 0;
}

/* The value of one greeting key: 0 with *out set when valid, else -1
 * (with a message in msg). */
static int
greet_value(const config_setting_t *m, const struct greet_key *k, int *out,
            char *msg, size_t msglen)
{
    long long v;

    if (k->is_bool) {
        if (config_setting_type(m) != CONFIG_TYPE_BOOL) {
            snprintf(msg, msglen, "expected true or false");
            return -1;
        }
        *out = config_setting_get_bool(m) ? 1 : 0;
        return 0;
    }
    if (config_setting_type(m) != CONFIG_TYPE_INT &&
        config_setting_type(m) != CONFIG_TYPE_INT64) {
        snprintf(msg, msglen, "expected an integer");
        return -1;
    }
    v = config_setting_get_int64(m);
    if (v < 0 || v > CONFIG_GREET_MEMBERS_LIMIT) {
        snprintf(msg, msglen, "must be between 0 and %d (not %lld); 0 "
                 "means no limit", CONFIG_GREET_MEMBERS_LIMIT, v);
        return -1;
    }
    *out = (int)v;
    return 0;
}

void
config_greet_read(const void *setting, struct config_greet *out)
{
    const config_setting_t *s = setting;
    size_t i;
    char msg[128];          /* unused: the loader reported problems */

    greet_defaults(out);
    if (!s || !config_setting_is_group(s))
        return;
    for (i = 0; i < N_GREET_KEYS; i++) {
        const struct greet_key *k = &greet_keys[i];
        const config_setting_t *m = config_setting_get_member(s, k->name);
        int *field = (int *)(void *)((char *)out + k->offset);

        if (!m && k->old_name)
            m = config_setting_get_member(s, k->old_name);
        if (m)
            greet_value(m, k, field, msg, sizeof(msg));
    }
}

/* Append "FILE:LINE: key: text" to cfg->warnings. */
static void
config_warn(struct config_loader *ld, const config_setting_t *s,
            const char *text)
{
    char key[CONFIG_KEY_PATH_MAX];
    char line[CONFIG_ERR_LINE_MAX];
    const char *file = config_setting_source_file(s);
    size_t old = ld->cfg->warnings ? strlen(ld->cfg->warnings) : 0;
    char *grown;
    int n;

    config_key_path(s, key, sizeof(key));
    n = snprintf(line, sizeof(line), "%s:%u: %s: %s",
                 file ? file : ld->errs.path, config_setting_source_line(s),
                 key, text);
    if (n < 0)
        return;
    grown = realloc(ld->cfg->warnings, old + strlen(line) + 2);
    if (!grown) {
        ld->oom = 1;
        return;
    }
    snprintf(grown + old, strlen(line) + 2, "%s%s", old ? "\n" : "", line);
    ld->cfg->warnings = grown;
}

/* The greeting keys of one block, with errors and deprecation notes. */
void
config_load_greet(struct config_loader *ld, const config_setting_t *e,
                  struct config_greet *g)
{
    size_t i;

    greet_defaults(g);
    for (i = 0; i < N_GREET_KEYS; i++) {
        const struct greet_key *k = &greet_keys[i];
        const config_setting_t *m = config_setting_get_member(e, k->name);
        const config_setting_t *old = k->old_name ?
            config_setting_get_member(e, k->old_name) : NULL;
        int *field = (int *)(void *)((char *)g + k->offset);
        char msg[160];

        if (m && old) {
            config_error_add(&ld->errs, old, "is the old name of %s, which "
                             "this block also sets; remove it", k->name);
            continue;
        }
        if (old) {
            snprintf(msg, sizeof(msg), "deprecated, use %s (same meaning)",
                     k->name);
            config_warn(ld, old, msg);
            m = old;
        }
        if (m && greet_value(m, k, field, msg, sizeof(msg)) != 0)
            config_error_add(&ld->errs, m, "%s", msg);
    }
}


int
config_load_stream(struct config_loader *ld, const config_setting_t *e,
                   int can_stream)
{
    const config_setting_t *m = config_setting_get_member(e, "stream");

    if (!m)
        return -1;
    if (config_setting_type(m) != CONFIG_TYPE_BOOL) {
        config_error_add(&ld->errs, m, "expected true or false");
        return -1;
    }
    if (!config_setting_get_bool(m))
        return 0;
    if (!can_stream) {
        config_error_add(&ld->errs, m, "this adapter cannot show answers "
                         "while they are written (yet); remove the key or "
                         "set it to false");
        return -1;
    }
    return 1;
}
