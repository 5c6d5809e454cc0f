/*
 * The Sentinel keys of the redis group: redis.sentinels (a list of
 * "host:port"), redis.master_name and redis.sentinel_password_env, and
 * the checks across them.  Sentinel mode and a fixed address exclude each
 * other: with sentinels, the master's address is whatever they say, so a
 * host, port or unix_socket in the same file is an error rather than a
 * value silently ignored.  The table entries live in config_keys.c with
 * the other redis keys; this file keeps that one from growing.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_loader.h"
#include "status.h"

/* Sentinels are deployed in threes or fives; a list this long is a
 * mistake, and each entry costs a connect attempt per resolution. */
#define CONFIG_SENTINELS_MAX 16

void
config_free_redis_sentinels(struct config_redis *r)
{
    for (size_t i = 0; i < r->n_sentinels; i++)
        free(r->sentinels[i].host);
    free(r->sentinels);
    r->sentinels = NULL;
    r->n_sentinels = 0;
}

/* Split "host:port" or "[v6]:port" into host (brackets removed) and port.
 * Returns 0, or -1 with a reason in *why. */
static int
config_split_hostport(const char *v, char *host, size_t hostlen, int *port,
                      const char **why)
{
    const char *colon, *h = v, *hend;
    char *end;
    long p;

    if (v[0] == '[') {
        hend = strchr(v, ']');
        if (!hend || hend[1] != ':') {
            *why = "must be \"[IPv6]:PORT\" with brackets closed";
            return -1;
        }
        h = v + 1;
        colon = hend + 1;
    } else {
        colon = strrchr(v, ':');
        if (!colon || memchr(v, ':', (size_t)(colon - v))) {
            *why = "must be \"HOST:PORT\" (IPv6 as \"[ADDR]:PORT\")";
            return -1;
        }
        hend = colon;
    }
    if (hend == h) {
        *why = "has an empty host";
        return -1;
    }
    if ((size_t)(hend - h) >= hostlen) {
        *why = "has a host name that is too long";
        return -1;
    }
    if (strcspn(h, " \t") < (size_t)(hend - h)) {
        *why = "must not contain spaces";
        return -1;
    }
    p = strtol(colon + 1, &end, 10);
    if (colon[1] < '0' || colon[1] > '9' || *end || p < 1 || p > 65535) {
        *why = "needs a port from 1 to 65535 after the colon";
        return -1;
    }
    memcpy(host, h, (size_t)(hend - h));
    host[hend - h] = '\0';
    *port = (int)p;
    return 0;
}

void
config_take_sentinels(struct config_loader *ld, const config_setting_t *s,
                      struct config_redis *r)
{
    int n = config_setting_length(s);
    struct config_hostport *list;
    size_t count = 0;
    int bad = 0;

    if (!config_setting_is_array(s) && !config_setting_is_list(s)) {
        config_error_add(&ld->errs, s, "expected a list of sentinel "
                         "addresses [ \"HOST:PORT\", ... ]");
        return;
    }
    if (n < 1 || n > CONFIG_SENTINELS_MAX) {
        config_error_add(&ld->errs, s, "needs 1 to %d sentinel addresses",
                         CONFIG_SENTINELS_MAX);
        return;
    }
    list = calloc((size_t)n, sizeof(*list));
    if (!list) {
        ld->oom = 1;
        return;
    }
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        char host[CONFIG_NAME_MAX];
        const char *why = NULL;
        int port = 0;
        size_t j;

        if (config_setting_type(e) != CONFIG_TYPE_STRING) {
            config_error_add(&ld->errs, e, "expected a \"HOST:PORT\" "
                             "string");
            bad = 1;
            continue;
        }
        if (config_split_hostport(config_setting_get_string(e), host,
                                  sizeof(host), &port, &why)) {
            config_error_add(&ld->errs, e, "%s", why);
            bad = 1;
            continue;
        }
        for (j = 0; j < count; j++)
            if (list[j].port == port && strcmp(list[j].host, host) == 0)
                break;
        if (j < count) {
            config_error_add(&ld->errs, e, "is listed twice");
            bad = 1;
            continue;
        }
        list[count].host = strdup(host);
        if (!list[count].host) {
            ld->oom = 1;
            bad = 1;
            break;
        }
        list[count++].port = port;
    }
    config_free_redis_sentinels(r);
    r->sentinels = list;
    r->n_sentinels = count;
    if (bad)
        config_free_redis_sentinels(r);
}

int
config_redis_sentinel_env(struct config_redis *r, const char *v, char *err,
                          size_t errlen)
{
    const char *at = strchr(v, '@'), *p;
    struct config_hostport *list;
    char *name;
    size_t n = 1, count = 0;

    if (!at || at == v || !at[1] || (size_t)(at - v) >= CONFIG_NAME_MAX ||
        strcspn(v, " \t") < (size_t)(at - v)) {
        snprintf(err, errlen, "PARLEY_REDIS: expected sentinel:NAME@HOST:"
                 "PORT[,HOST:PORT...]");
        return PARLEY_ERR_CONFIG;
    }
    for (p = at + 1; *p; p++)
        n += *p == ',';
    if (n > CONFIG_SENTINELS_MAX) {
        snprintf(err, errlen, "PARLEY_REDIS: more than %d sentinels",
                 CONFIG_SENTINELS_MAX);
        return PARLEY_ERR_CONFIG;
    }
    list = calloc(n, sizeof(*list));
    name = strndup(v, (size_t)(at - v));
    if (!list || !name)
        goto oom;
    for (p = at + 1; count < n; count++) {
        size_t len = strcspn(p, ",");
        char entry[CONFIG_NAME_MAX], host[CONFIG_NAME_MAX];
        const char *why = NULL;
        int port = 0;

        if (len < sizeof(entry)) {
            memcpy(entry, p, len);
            entry[len] = '\0';
        }
        if (len >= sizeof(entry) ||
            config_split_hostport(entry, host, sizeof(host), &port, &why)) {
            snprintf(err, errlen, "PARLEY_REDIS: sentinel %zu %s", count + 1,
                     why ? why : "is too long");
            for (size_t i = 0; i < count; i++)
                free(list[i].host);
            free(list);
            free(name);
            return PARLEY_ERR_CONFIG;
        }
        list[count].host = strdup(host);
        if (!list[count].host)
            goto oom;
        list[count].port = port;
        p += len + (p[len] == ',');
    }
    config_free_redis_sentinels(r);
    free(r->master_name);
    free(r->unix_socket);
    r->unix_socket = NULL;
    r->sentinels = list;
    r->n_sentinels = n;
    r->master_name = name;
    return PARLEY_OK;
oom:
    if (list)
        for (size_t i = 0; i < n; i++)
            free(list[i].host);
    free(list);
    free(name);
    return PARLEY_ERR_OOM;
}

void
config_check_redis(struct config_loader *ld)
{
    static const char *const fixed[] = {
        "redis.host", "redis.port", "redis.unix_socket"
    };
    struct config_redis *r = &ld->cfg->redis;
    const config_setting_t *list = config_lookup(ld->lc, "redis.sentinels");
    const config_setting_t *name = config_lookup(ld->lc,
                                                 "redis.master_name");
    const config_setting_t *pw = config_lookup(ld->lc,
                                               "redis.sentinel_password_env");

    if (name && r->master_name && strcspn(r->master_name, " \t") !=
        strlen(r->master_name))
        /* +switch-master messages are split on spaces. */
        config_error_add(&ld->errs, name, "must not contain spaces");
    if (!list) {
        if (name)
            config_error_add(&ld->errs, name, "needs redis.sentinels "
                             "(without them, set redis.host and "
                             "redis.port)");
        if (pw)
            config_error_add(&ld->errs, pw, "needs redis.sentinels");
        return;
    }
    if (!name)
        config_error_add(&ld->errs, list, "needs redis.master_name, the "
                         "name the sentinels monitor");
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
        const config_setting_t *s = config_lookup(ld->lc, fixed[i]);

        if (s)
            config_error_add(&ld->errs, s, "cannot be combined with "
                             "redis.sentinels: the sentinels say where "
                             "the master is");
    }
}
