/*
 * The web adapter's config block:
 *
 *   { type = "web"; listen = "127.0.0.1:8080"; token_env = "WEB_TOKEN";
 *     origin = "https://chat.example.org"; name = "web";
 *     user_name = "User"; max_connections = 64; max_per_ip = 16;
 *     stream = true; }
 *
 * Every problem is reported as "FILE:LINE: adapters[N].key: message",
 * one per line, as config_load reports its own keys.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libconfig.h>

#include "adapter_report.h"
#include "config.h"
#include "status.h"
#include "web.h"

const char *const web_config_keys[] = {
    "name", "listen", "origin", "token_env", "user_name",
    "max_connections", "max_per_ip", NULL
};

/* A string key into *out (a copy); absent keeps *out. */
static void get_string(struct adapter_report *r, const config_setting_t *s,
                       const char *key, char **out, size_t max)
{
    const config_setting_t *m = config_setting_get_member(s, key);
    const char *v;
    char *copy;

    if (!m)
        return;
    v = config_setting_type(m) == CONFIG_TYPE_STRING ?
        config_setting_get_string(m) : NULL;
    if (!v || !v[0] || strlen(v) > max || strpbrk(v, "\r\n")) {
        adapter_report(r, m, key, "expected a non-empty string of at most %zu "
               "bytes on one line", max);
        return;
    }
    copy = strdup(v);
    if (!copy) {
        adapter_report(r, m, key, "out of memory");
        return;
    }
    free(*out);
    *out = copy;
}

static void get_int(struct adapter_report *r, const config_setting_t *s,
                    const char *key, int *out, int min, int max)
{
    const config_setting_t *m = config_setting_get_member(s, key);
    long long v;

    if (!m)
        return;
    v = config_setting_type(m) == CONFIG_TYPE_INT ||
        config_setting_type(m) == CONFIG_TYPE_INT64 ?
        config_setting_get_int64(m) : (long long)min - 1;
    if (v < min || v > max) {
        adapter_report(r, m, key, "expected an integer between %d and %d", min,
               max);
        return;
    }
    *out = (int)v;
}

/* "http://host[:port]" or "https://host[:port]", no path. */
static int origin_valid(const char *o)
{
    const char *host;

    if (strncmp(o, "http://", 7) == 0)
        host = o + 7;
    else if (strncmp(o, "https://", 8) == 0)
        host = o + 8;
    else
        return 0;
    return host[0] && !strpbrk(host, "/?#@ ") &&
           strlen(o) < WEB_ORIGIN_MAX;
}

static int defaults(struct web_config *wc)
{
    memset(wc, 0, sizeof(*wc));
    wc->name = strdup("web");
    wc->listen = strdup("127.0.0.1:8080");
    wc->user_name = strdup("User");
    wc->max_connections = WEB_CONNECTIONS_DEFAULT;
    wc->max_per_ip = WEB_PER_IP_DEFAULT;
    return wc->name && wc->listen && wc->user_name ? PARLEY_OK :
           PARLEY_ERR_OOM;
}

int web_config_parse(struct web_config *wc, const void *setting, char *err,
                     size_t errlen)
{
    const config_setting_t *s = setting;
    struct adapter_report r = { err, errlen, 0, 0, 0 };
    int i, n;

    if (err && errlen)
        err[0] = '\0';
    if (defaults(wc) != PARLEY_OK) {
        snprintf(err, errlen, "web: out of memory");
        return PARLEY_ERR_OOM;
    }
    if (!s)
        return PARLEY_OK;
    if (!config_setting_is_group(s)) {
        adapter_report(&r, s, NULL, "expected a group { type = \"web\"; ... }");
        return PARLEY_ERR_CONFIG;
    }
    r.index = config_setting_index(s);
    n = config_setting_length(s);
    for (i = 0; i < n; i++) {
        const config_setting_t *m = config_setting_get_elem(s,
                                                            (unsigned)i);
        const char *key = config_setting_name(m);
        size_t k;

        if (!key || config_adapter_key_common(key))
            continue;
        for (k = 0; web_config_keys[k]; k++)
            if (strcmp(key, web_config_keys[k]) == 0)
                break;
        if (!web_config_keys[k])
            adapter_report(&r, m, key, "unknown key for a web adapter "
                           "(expected name, listen, origin, token_env, "
                           "user_name, max_connections or max_per_ip)");
    }
    get_string(&r, s, "name", &wc->name, 255);
    get_string(&r, s, "listen", &wc->listen, 64);
    get_string(&r, s, "origin", &wc->origin, WEB_ORIGIN_MAX - 1);
    get_string(&r, s, "token_env", &wc->token_env, 128);
    get_string(&r, s, "user_name", &wc->user_name, 64);
    get_int(&r, s, "max_connections", &wc->max_connections, 2,
            WEB_CONNECTIONS_LIMIT);
    get_int(&r, s, "max_per_ip", &wc->max_per_ip, 1,
            WEB_CONNECTIONS_LIMIT);
    if (strpbrk(wc->name, " \t"))
        adapter_report(&r, config_setting_get_member(s, "name"), "name",
               "expected one word");
    if (wc->origin && !origin_valid(wc->origin))
        adapter_report(&r, config_setting_get_member(s, "origin"), "origin",
               "expected \"http://HOST[:PORT]\" or \"https://HOST[:PORT]\" "
               "(what the browser's address bar shows, no path)");
    if (!strrchr(wc->listen, ':'))
        adapter_report(&r, config_setting_get_member(s, "listen"), "listen",
               "expected \"ADDRESS:PORT\" with an IPv4 address");
    return r.bad ? PARLEY_ERR_CONFIG : PARLEY_OK;
}

void web_config_free(struct web_config *wc)
{
    free(wc->name);
    free(wc->listen);
    free(wc->origin);
    free(wc->token_env);
    free(wc->user_name);
    memset(wc, 0, sizeof(*wc));
}
