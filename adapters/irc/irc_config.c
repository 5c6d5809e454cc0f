/*
 * Parser for the irc adapter block (see irc_config.h).  Each key has one
 * helper call that checks type and range; problems accumulate in a small
 * report so the operator sees all of them in one run.
 */
#include "irc_config.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libconfig.h>

#include "adapter.h"
#include "config.h"
#include "status.h"

struct report {
    char *buf;
    size_t len, pos;
    int errors;
    int oom;
    const config_setting_t *block;
};

static void report_add(struct report *r, const config_setting_t *at,
                       const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void report_add(struct report *r, const config_setting_t *at,
                       const char *key, const char *fmt, ...)
{
    const char *file = config_setting_source_file(at);
    int line = config_setting_source_line(at);
    int n;
    va_list ap;

    r->errors++;
    if (r->pos >= r->len)
        return;
    n = snprintf(r->buf + r->pos, r->len - r->pos,
                 "%s%s:%d: adapters.[%d].%s: ", r->pos ? "\n" : "",
                 file ? file : "(config)", line,
                 config_setting_index(r->block), key);
    if (n < 0 || (size_t)n >= r->len - r->pos) {
        r->pos = r->len;
        return;
    }
    r->pos += (size_t)n;
    va_start(ap, fmt);
    n = vsnprintf(r->buf + r->pos, r->len - r->pos, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= r->len - r->pos)
        r->pos = r->len;
    else
        r->pos += (size_t)n;
}

static char *dup_or_oom(struct report *r, const char *s)
{
    char *d = strdup(s);

    if (!d)
        r->oom = 1;
    return d;
}

static int get_str(struct report *r, const config_setting_t *s,
                   const char *key, const char *def, char **out)
{
    const config_setting_t *m = config_setting_get_member(s, key);

    *out = NULL;
    if (!m) {
        if (def)
            *out = dup_or_oom(r, def);
        return 0;
    }
    if (config_setting_type(m) != CONFIG_TYPE_STRING) {
        report_add(r, m, key, "must be a string");
        return -1;
    }
    *out = dup_or_oom(r, config_setting_get_string(m));
    return 1;
}

static void get_int(struct report *r, const config_setting_t *s,
                    const char *key, int def, int min, int max, int *out)
{
    const config_setting_t *m = config_setting_get_member(s, key);
    long long v;

    *out = def;
    if (!m)
        return;
    if (config_setting_type(m) == CONFIG_TYPE_INT)
        v = config_setting_get_int(m);
    else if (config_setting_type(m) == CONFIG_TYPE_INT64)
        v = config_setting_get_int64(m);
    else {
        report_add(r, m, key, "must be an integer");
        return;
    }
    if (v < min || v > max) {
        report_add(r, m, key, "must be between %d and %d (got %lld)", min,
                   max, v);
        return;
    }
    *out = (int)v;
}

static void get_bool(struct report *r, const config_setting_t *s,
                     const char *key, int def, int *out)
{
    const config_setting_t *m = config_setting_get_member(s, key);

    *out = def;
    if (!m)
        return;
    if (config_setting_type(m) != CONFIG_TYPE_BOOL) {
        report_add(r, m, key, "must be true or false");
        return;
    }
    *out = config_setting_get_bool(m);
}

static void get_str_list(struct report *r, const config_setting_t *s,
                         const char *key, size_t max, char ***out,
                         size_t *n)
{
    const config_setting_t *m = config_setting_get_member(s, key);
    int i, len;

    *out = NULL;
    *n = 0;
    if (!m)
        return;
    if (config_setting_type(m) != CONFIG_TYPE_ARRAY &&
        config_setting_type(m) != CONFIG_TYPE_LIST) {
        report_add(r, m, key, "must be a list of strings");
        return;
    }
    len = config_setting_length(m);
    if ((size_t)len > max) {
        report_add(r, m, key, "at most %zu entries", max);
        return;
    }
    if (len == 0)
        return;
    *out = calloc((size_t)len, sizeof(char *));
    if (!*out) {
        r->oom = 1;
        return;
    }
    for (i = 0; i < len; i++) {
        const config_setting_t *e = config_setting_get_elem(m, (unsigned)i);

        if (config_setting_type(e) != CONFIG_TYPE_STRING) {
            report_add(r, e, key, "entry %d must be a string", i);
            continue;
        }
        (*out)[(*n)++] = dup_or_oom(r, config_setting_get_string(e));
    }
}

int irc_config_nick_valid(const char *s)
{
    size_t n = strlen(s), i;

    if (n == 0 || n >= IRC_NICK_MAX || isdigit((unsigned char)s[0]) ||
        s[0] == '-')
        return 0;
    for (i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr("[]\\`_^{|}-", s[i]))
            return 0;
    return 1;
}

int irc_config_channel_valid(const char *s)
{
    size_t n = strlen(s), i;

    if (n < 2 || n > IRC_CHANNEL_MAX || (s[0] != '#' && s[0] != '&'))
        return 0;
    for (i = 0; i < n; i++)
        if (s[i] == ' ' || s[i] == ',' || s[i] == '\a' || s[i] == '\r' ||
            s[i] == '\n')
            return 0;
    return 1;
}

int irc_config_quit_message_valid(const char *s)
{
    size_t n = strlen(s), i;

    if (n > IRC_QUIT_MESSAGE_MAX)
        return 0;
    for (i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];

        /* Bold, colour, hex colour, reset, monospace, reverse, italic,
         * strike, underline are text to IRC; every other control byte
         * (CR and LF above all) would end or corrupt the line. */
        if ((ch < 0x20 && !strchr("\x02\x03\x04\x0f\x11\x16\x1d\x1e\x1f",
                                  ch)) || ch == 0x7f)
            return 0;
    }
    return 1;
}

static const char *const known_keys[] = {
    "type", "name", "host", "port", "tls", "tls_verify", "ca_file", "nick",
    "alt_nicks", "username", "realname", "sasl_user", "sasl_password_env",
    "channels", "admins", "bots", "ambient_context", "max_lines",
    "flood_burst", "flood_rate_ms", "rejoin_on_kick", "rejoin_delay_ms",
    "ping_interval_s", "nick_regain_s", "register_timeout_s",
    "reconnect_min_ms", "reconnect_max_ms", "quit_message",
};

static void check_unknown(struct report *r, const config_setting_t *s)
{
    int i, len = config_setting_length(s);
    size_t k;

    for (i = 0; i < len; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        const char *name = config_setting_name(e);

        /* type and the greet_* keys: checked by config_load. */
        if (!name || config_adapter_key_common(name))
            continue;
        for (k = 0; k < sizeof(known_keys) / sizeof(known_keys[0]); k++)
            if (!strcmp(name, known_keys[k]))
                break;
        if (k == sizeof(known_keys) / sizeof(known_keys[0]))
            report_add(r, e, name, "unknown key");
    }
}

static void parse_channels(struct report *r, const config_setting_t *s,
                           struct irc_config *c)
{
    const config_setting_t *m = config_setting_get_member(s, "channels");
    int i, len;

    if (!m)
        return;
    if (config_setting_type(m) != CONFIG_TYPE_LIST &&
        config_setting_type(m) != CONFIG_TYPE_ARRAY) {
        report_add(r, m, "channels", "must be a list of groups or strings");
        return;
    }
    len = config_setting_length(m);
    if (len > IRC_CONFIG_MAX_CHANNELS) {
        report_add(r, m, "channels", "at most %d channels",
                   IRC_CONFIG_MAX_CHANNELS);
        return;
    }
    if (len == 0)
        return;
    c->channels = calloc((size_t)len, sizeof(*c->channels));
    if (!c->channels) {
        r->oom = 1;
        return;
    }
    for (i = 0; i < len; i++) {
        const config_setting_t *e = config_setting_get_elem(m, (unsigned)i);
        struct irc_channel_conf *ch = &c->channels[c->n_channels];
        char key[32];
        const char *name = NULL;

        snprintf(key, sizeof(key), "channels.[%d]", i);
        if (config_setting_type(e) == CONFIG_TYPE_STRING) {
            name = config_setting_get_string(e);
        } else if (config_setting_type(e) == CONFIG_TYPE_GROUP) {
            const config_setting_t *g;

            if (!config_setting_lookup_string(e, "name", &name)) {
                report_add(r, e, key, "needs name = \"#channel\"");
                continue;
            }
            g = config_setting_get_member(e, "key_env");
            if (g && config_setting_type(g) != CONFIG_TYPE_STRING) {
                report_add(r, g, key, "key_env must be a string");
                continue;
            }
            if (g)
                ch->key_env = dup_or_oom(r, config_setting_get_string(g));
            /* Greetings per room are the router's, set for every
             * platform in the top-level rooms list. */
            if (config_setting_get_member(e, "greet")) {
                report_add(r, config_setting_get_member(e, "greet"), key,
                           "greet is no longer a channel key; set "
                           "greetings per room in the top-level rooms "
                           "list: rooms = ( { room = \"irc:%s:%.64s\"; "
                           "greeting = false; } )", c->name ? c->name : "irc",
                           name);
                continue;
            }
        } else {
            report_add(r, e, key, "must be a string or a group");
            continue;
        }
        if (!irc_config_channel_valid(name)) {
            report_add(r, e, key, "\"%.64s\" is not a channel name (it must "
                       "start with # or & and hold no space or comma)", name);
            free(ch->key_env);
            ch->key_env = NULL;
            continue;
        }
        ch->name = dup_or_oom(r, name);
        c->n_channels++;
    }
}

int irc_config_parse(struct irc_config *c, const void *setting, char *err,
                     size_t errlen)
{
    const config_setting_t *s = setting;
    struct report r = {err, errlen, 0, 0, 0, s};
    size_t i;

    memset(c, 0, sizeof(*c));
    if (errlen)
        err[0] = '\0';
    if (!s || config_setting_type(s) != CONFIG_TYPE_GROUP) {
        snprintf(err, errlen, "irc adapter: its setting must be a group");
        return PARLEY_ERR_CONFIG;
    }
    check_unknown(&r, s);
    get_str(&r, s, "name", "irc", &c->name);
    if (get_str(&r, s, "host", NULL, &c->host) == 0)
        report_add(&r, s, "host", "is required");
    get_bool(&r, s, "tls", 1, &c->tls);
    get_int(&r, s, "port", c->tls ? 6697 : 6667, 1, 65535, &c->port);
    get_bool(&r, s, "tls_verify", 1, &c->tls_verify);
    get_str(&r, s, "ca_file", NULL, &c->ca_file);
    if (get_str(&r, s, "nick", NULL, &c->nick) == 0)
        report_add(&r, s, "nick", "is required");
    else if (c->nick && !irc_config_nick_valid(c->nick))
        report_add(&r, config_setting_get_member(s, "nick"), "nick",
                   "\"%.64s\" is not a valid nick", c->nick);
    get_str_list(&r, s, "alt_nicks", IRC_CONFIG_MAX_NICKS, &c->alt_nicks,
                 &c->n_alt_nicks);
    for (i = 0; i < c->n_alt_nicks; i++)
        if (c->alt_nicks[i] && !irc_config_nick_valid(c->alt_nicks[i]))
            report_add(&r, config_setting_get_member(s, "alt_nicks"),
                       "alt_nicks", "\"%.64s\" is not a valid nick",
                       c->alt_nicks[i]);
    get_str(&r, s, "username", c->nick ? c->nick : "parley", &c->username);
    if (c->username && (strpbrk(c->username, " @!\r\n") ||
                        !c->username[0]))
        report_add(&r, s, "username", "must be one word without @ or !");
    get_str(&r, s, "realname", "parley bot", &c->realname);
    if (c->realname && strpbrk(c->realname, "\r\n"))
        report_add(&r, s, "realname", "must be one line");
    get_str(&r, s, "sasl_user", NULL, &c->sasl_user);
    get_str(&r, s, "sasl_password_env", NULL, &c->sasl_password_env);
    if (!c->sasl_user != !c->sasl_password_env)
        report_add(&r, s, "sasl_user", "sasl_user and sasl_password_env go "
                   "together");
    if (c->sasl_user && (strpbrk(c->sasl_user, "\r\n") || !c->sasl_user[0]))
        report_add(&r, s, "sasl_user", "must be a non-empty single line");
    parse_channels(&r, s, c);
    get_str_list(&r, s, "admins", IRC_CONFIG_MAX_MASKS, &c->admins,
                 &c->n_admins);
    get_str_list(&r, s, "bots", IRC_CONFIG_MAX_MASKS, &c->bots, &c->n_bots);
    get_bool(&r, s, "ambient_context", 0, &c->ambient_context);
    get_int(&r, s, "max_lines", 4, 1, IRC_MAX_LINES_MAX, &c->max_lines);
    get_int(&r, s, "flood_burst", IRC_FLOOD_BURST_DEFAULT, 1, 100,
            &c->flood_burst);
    get_int(&r, s, "flood_rate_ms", IRC_FLOOD_RATE_MS_DEFAULT, 10, 60000,
            &c->flood_rate_ms);
    get_bool(&r, s, "rejoin_on_kick", 1, &c->rejoin_on_kick);
    get_int(&r, s, "rejoin_delay_ms", 3000, 0, 3600000, &c->rejoin_delay_ms);
    get_int(&r, s, "ping_interval_s", 90, 1, 3600, &c->ping_interval_s);
    get_int(&r, s, "nick_regain_s", 60, 1, 86400, &c->nick_regain_s);
    get_int(&r, s, "register_timeout_s", 60, 1, 3600,
            &c->register_timeout_s);
    get_int(&r, s, "reconnect_min_ms", 2000, 10, 3600000,
            &c->reconnect_min_ms);
    get_int(&r, s, "reconnect_max_ms", 300000, 10, 86400000,
            &c->reconnect_max_ms);
    if (c->reconnect_max_ms < c->reconnect_min_ms)
        report_add(&r, s, "reconnect_max_ms", "must not be below "
                   "reconnect_min_ms");
    get_str(&r, s, "quit_message", "parley shutting down", &c->quit_message);
    if (c->quit_message && !irc_config_quit_message_valid(c->quit_message))
        report_add(&r, config_setting_get_member(s, "quit_message"),
                   "quit_message", "must be one line of at most %d bytes "
                   "without control characters (CR, LF, ...)",
                   IRC_QUIT_MESSAGE_MAX);
    if (r.oom) {
        snprintf(err, errlen, "irc adapter: out of memory");
        return PARLEY_ERR_OOM;
    }
    return r.errors ? PARLEY_ERR_CONFIG : PARLEY_OK;
}

/* The validate hook: parse into a scratch config and drop it. */
static int irc_config_validate(const void *setting, char *err,
                               size_t errlen)
{
    struct irc_config c;
    int result = irc_config_parse(&c, setting, err, errlen);

    irc_config_free(&c);
    return result;
}

const struct adapter_desc irc_adapter_desc = {
    .name = "irc",
    .validate = irc_config_validate,
    .create = irc_adapter_create,
    .caps = ADAPTER_CAP_MORE | ADAPTER_CAP_LEASED | ADAPTER_CAP_STREAM,
};

static void free_list(char **v, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

void irc_config_free(struct irc_config *c)
{
    size_t i;

    free(c->name);
    free(c->host);
    free(c->ca_file);
    free(c->nick);
    free_list(c->alt_nicks, c->n_alt_nicks);
    free(c->username);
    free(c->realname);
    free(c->sasl_user);
    free(c->sasl_password_env);
    for (i = 0; i < c->n_channels; i++) {
        free(c->channels[i].name);
        free(c->channels[i].key_env);
    }
    free(c->channels);
    free_list(c->admins, c->n_admins);
    free_list(c->bots, c->n_bots);
    free(c->quit_message);
    memset(c, 0, sizeof(*c));
}
