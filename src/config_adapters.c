/*
 * The "adapters" list of bot.conf, checked in the same pass as the rest
 * of the file so that --check-config reports every problem at once.  For
 * each entry: its type must name an adapter in the registry
 * (adapters/registry.c), whose names also make up the message; the
 * greeting keys that every platform shares are parsed by config_greet.c
 * into struct config_adapter.greet; the rest of the block goes to the
 * adapter's validate hook, or is checked against its list of keys.
 * The adapter parses its block again when main creates it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter.h"
#include "config_loader.h"
#include "status.h"

/* An adapter's report for one block: a few lines, each at most an error
 * line; more is cut, and the cut still fails the load. */
#define CONFIG_ADAPTER_REPORT_MAX (16 * 1024)

/* Keys of a block for an adapter that lists them (no validate hook). */
static void
config_check_adapter_keys(struct config_loader *ld,
                          const config_setting_t *e,
                          const struct adapter_desc *d)
{
    int i, n = config_setting_length(e);

    for (i = 0; i < n; i++) {
        const config_setting_t *m = config_setting_get_elem(e, (unsigned)i);
        const char *name = config_setting_name(m);
        size_t j;

        if (config_adapter_key_common(name))
            continue;
        for (j = 0; d->keys[j]; j++)
            if (strcmp(name, d->keys[j]) == 0)
                break;
        if (d->keys[j])
            continue;
        if (config_is_secret_name(name))
            config_secret_key_error(ld, m, "");
        else
            config_error_add(&ld->errs, m, "unknown key for a%s %s adapter",
                             strchr("aeiou", d->name[0]) ? "n" : "",
                             d->name);
    }
}

/* The adapter's own checks, in this pass. */
static void
config_validate_adapter(struct config_loader *ld, const config_setting_t *e,
                        const struct adapter_desc *d)
{
    char *report;
    int result;

    if (d->keys)
        config_check_adapter_keys(ld, e, d);
    if (!d->validate)
        return;
    report = calloc(1, CONFIG_ADAPTER_REPORT_MAX);
    if (!report) {
        ld->oom = 1;
        return;
    }
    result = d->validate(e, report, CONFIG_ADAPTER_REPORT_MAX);
    if (result == PARLEY_ERR_OOM) {
        ld->oom = 1;
    } else if (result != PARLEY_OK) {
        int before = ld->errs.count;

        config_error_lines(&ld->errs, report);
        if (ld->errs.count == before)
            config_error_add(&ld->errs, e, "invalid %s adapter block",
                             d->name);
    }
    free(report);
}

int
config_is_adapter_type(const char *name)
{
    return adapter_find(name) != NULL;
}

void
config_free_adapters(struct config *cfg)
{
    size_t i;

    for (i = 0; i < cfg->n_adapters; i++)
        free(cfg->adapters[i].type);
    free(cfg->adapters);
    cfg->adapters = NULL;
    cfg->n_adapters = 0;
}

void
config_load_adapters(struct config_loader *ld, config_setting_t *s)
{
    struct config *cfg = ld->cfg;
    struct config_adapter *ads;
    int i, n = config_setting_length(s);
    size_t count = 0;

    if (!config_setting_is_list(s)) {
        config_error_add(&ld->errs, s,
                         "expected a list ( { type = \"...\"; ... }, ... )");
        return;
    }
    if (n == 0) {
        config_error_add(&ld->errs, s,
                         "needs at least one adapter, e.g. "
                         "{ type = \"console\"; }");
        return;
    }
    if (n > CONFIG_MAX_ADAPTERS) {
        config_error_add(&ld->errs, s, "more than %d adapters",
                         CONFIG_MAX_ADAPTERS);
        return;
    }
    ads = calloc((size_t)n, sizeof(*ads));
    if (!ads) {
        ld->oom = 1;
        return;
    }
    for (i = 0; i < n && !ld->oom; i++) {
        config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        const config_setting_t *t;
        const struct adapter_desc *d;
        const char *type;

        if (!config_setting_is_group(e)) {
            config_error_add(&ld->errs, e,
                             "expected a group { type = \"...\"; ... }");
            continue;
        }
        t = config_setting_get_member(e, "type");
        if (!t) {
            config_error_add(&ld->errs, e, "missing key \"type\"");
            continue;
        }
        if (config_setting_type(t) != CONFIG_TYPE_STRING) {
            config_error_add(&ld->errs, t, "expected a string");
            continue;
        }
        type = config_setting_get_string(t);
        d = adapter_find(type);
        if (!d) {
            char names[256];

            adapter_registry_names(names, sizeof(names));
            config_error_add(&ld->errs, t,
                             "unknown adapter type (expected %s)", names);
            continue;
        }
        config_load_greet(ld, e, &ads[count].greet);
        ads[count].stream = config_load_stream(ld, e, (d->caps &
                                               ADAPTER_CAP_STREAM) != 0);
        config_validate_adapter(ld, e, d);
        ads[count].type = strdup(type);
        if (!ads[count].type) {
            ld->oom = 1;
            break;
        }
        ads[count].setting = e;
        ads[count].line = (int)config_setting_source_line(e);
        count++;
    }
    config_free_adapters(cfg);
    cfg->adapters = ads;
    cfg->n_adapters = count;
}
