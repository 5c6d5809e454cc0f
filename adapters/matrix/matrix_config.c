/*
 * The matrix block of bot.conf.  Parsed here, not in src/config.c, so that
 * adding a platform never touches the core (DESIGN.md).  Every problem is
 * reported with file, line and key path, all at once, and unknown keys are
 * errors: a misspelt "alow_invites_from" silently ignored would leave the
 * bot deaf to invites with no clue why.
 */
#include "matrix.h"

#include <libconfig.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter.h"
#include "config.h"
#include "status.h"

/* Allowlist entries accepted; more is surely a mistake. */
#define MATRIX_ALLOW_MAX 256

/* The greet_* keys are not here: they are the greeting policy common to
 * every adapter (struct config_greet), parsed by the core into ad->greet;
 * the router decides from them. */
static const char *const known_keys[] = {
    "type", "homeserver", "user_id", "account", "password_env",
    "access_token_env", "device_name", "allow_invites_from",
    "reject_other_invites", "thread_context",
    "sync_timeout_ms", "backoff_base_ms", "backoff_max_ms",
    "timeline_limit", "leave_empty_rooms", "crypto_key_env",
    "utd_timeout_ms", "share_with"
};

struct cfg_ctx {
    const config_setting_t *block;
    int index;
    char *err;
    size_t errlen;
    size_t used;
    int bad;
};

static void cfg_err(struct cfg_ctx *c, const config_setting_t *at,
                    const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void cfg_err(struct cfg_ctx *c, const config_setting_t *at,
                    const char *key, const char *fmt, ...)
{
    const config_setting_t *s = at ? at : c->block;
    const char *file = config_setting_source_file(s);
    va_list ap;
    int n;

    c->bad = 1;
    if (!c->err || c->used + 1 >= c->errlen)
        return;
    n = snprintf(c->err + c->used, c->errlen - c->used,
                 "%s%s:%u: adapters.[%d].%s: ", c->used ? "\n" : "",
                 file ? file : "(config)",
                 (unsigned)config_setting_source_line(s), c->index, key);
    if (n < 0 || (size_t)n >= c->errlen - c->used) {
        c->used = c->errlen - 1;
        return;
    }
    c->used += (size_t)n;
    va_start(ap, fmt);
    n = vsnprintf(c->err + c->used, c->errlen - c->used, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= c->errlen - c->used)
        c->used = c->errlen - 1;
    else
        c->used += (size_t)n;
}

/* Optional string key: *out stays NULL when absent.  Returns 0 on OOM. */
static int get_string(struct cfg_ctx *c, const char *key, char **out)
{
    const config_setting_t *m = config_setting_get_member(c->block, key);
    const char *v;

    if (!m)
        return 1;
    if (config_setting_type(m) != CONFIG_TYPE_STRING) {
        cfg_err(c, m, key, "must be a string");
        return 1;
    }
    v = config_setting_get_string(m);
    free(*out);
    *out = strdup(v ? v : "");
    return *out != NULL;
}

static void get_bool(struct cfg_ctx *c, const char *key, int *out)
{
    const config_setting_t *m = config_setting_get_member(c->block, key);

    if (!m)
        return;
    if (config_setting_type(m) != CONFIG_TYPE_BOOL) {
        cfg_err(c, m, key, "must be true or false");
        return;
    }
    *out = config_setting_get_bool(m);
}

static void get_int(struct cfg_ctx *c, const char *key, int *out, int min,
                    int max)
{
    const config_setting_t *m = config_setting_get_member(c->block, key);
    int v;

    if (!m)
        return;
    if (config_setting_type(m) != CONFIG_TYPE_INT) {
        cfg_err(c, m, key, "must be an integer");
        return;
    }
    v = config_setting_get_int(m);
    if (v < min || v > max) {
        cfg_err(c, m, key, "must be between %d and %d", min, max);
        return;
    }
    *out = v;
}

/* Environment variable names: letters, digits, '_', not starting with a
 * digit, so that a secret pasted in by mistake is refused. */
static int valid_env_name(const char *s)
{
    size_t i;

    if (!s || !s[0] || (s[0] >= '0' && s[0] <= '9') || strlen(s) > 128)
        return 0;
    for (i = 0; s[i]; i++)
        if (!((s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= 'a' && s[i] <= 'z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
            return 0;
    return 1;
}

/* "@local:server" with printable ASCII and no spaces. */
static int valid_user_id(const char *s)
{
    const char *colon;
    size_t i;

    if (!s || s[0] != '@' || strlen(s) > MATRIX_ID_MAX)
        return 0;
    colon = strchr(s, ':');
    if (!colon || colon == s + 1 || !colon[1])
        return 0;
    for (i = 0; s[i]; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f ||
            s[i] == '/')
            return 0;
    return 1;
}

static void check_unknown(struct cfg_ctx *c)
{
    int i, n = config_setting_length(c->block);

    for (i = 0; i < n; i++) {
        const config_setting_t *m = config_setting_get_elem(c->block,
                                                            (unsigned)i);
        const char *name = m ? config_setting_name(m) : NULL;
        size_t k;
        int known = 0;

        /* type and the greet_* keys: checked by config_load. */
        if (!name || config_adapter_key_common(name))
            continue;
        for (k = 0; k < sizeof(known_keys) / sizeof(known_keys[0]); k++)
            if (strcmp(known_keys[k], name) == 0)
                known = 1;
        if (!known)
            cfg_err(c, m, name, "unknown key for a matrix adapter");
    }
}

static int get_allow(struct cfg_ctx *c, struct matrix_config *mc)
{
    const config_setting_t *m =
        config_setting_get_member(c->block, "allow_invites_from");
    int i, n;

    if (!m)
        return 1;
    if (!config_setting_is_array(m) && !config_setting_is_list(m)) {
        cfg_err(c, m, "allow_invites_from", "must be a list of strings");
        return 1;
    }
    n = config_setting_length(m);
    if (n > MATRIX_ALLOW_MAX) {
        cfg_err(c, m, "allow_invites_from", "more than %d entries",
                MATRIX_ALLOW_MAX);
        return 1;
    }
    mc->allow = calloc((size_t)n + 1, sizeof(char *));
    if (!mc->allow)
        return 0;
    for (i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(m, (unsigned)i);
        const char *v = e && config_setting_type(e) == CONFIG_TYPE_STRING
                        ? config_setting_get_string(e) : NULL;

        if (!v || !((v[0] == '@' && valid_user_id(v)) ||
                    (v[0] == ':' && v[1] && !strchr(v, ' ')))) {
            cfg_err(c, e ? e : m, "allow_invites_from",
                    "entry %d must be a user id \"@user:server\" or "
                    "\":server\"", i);
            continue;
        }
        mc->allow[mc->n_allow] = strdup(v);
        if (!mc->allow[mc->n_allow])
            return 0;
        mc->n_allow++;
    }
    return 1;
}

int matrix_config_parse(struct matrix_config *mc, void *setting, char *err,
                        size_t errlen)
{
    struct cfg_ctx c;
    size_t n;
    int ok = 1;

    memset(mc, 0, sizeof(*mc));
    mc->sync_timeout_ms = 30000;
    mc->backoff_base_ms = 1000;
    mc->backoff_max_ms = 60000;
    mc->timeline_limit = 100;
    mc->utd_timeout_ms = 60000;
    if (err && errlen > 0)
        err[0] = '\0';
    if (!setting) {
        if (err && errlen > 0)
            snprintf(err, errlen, "matrix adapter: no configuration block");
        return PARLEY_ERR_CONFIG;
    }
    memset(&c, 0, sizeof(c));
    c.block = setting;
    c.index = config_setting_index(setting);
    c.err = err;
    c.errlen = errlen;
    if (!config_setting_is_group(c.block)) {
        cfg_err(&c, NULL, "type", "adapter entry must be a group { ... }");
        return PARLEY_ERR_CONFIG;
    }
    check_unknown(&c);
    ok = get_string(&c, "homeserver", &mc->homeserver) &&
         get_string(&c, "user_id", &mc->user_id) &&
         get_string(&c, "account", &mc->account) &&
         get_string(&c, "password_env", &mc->password_env) &&
         get_string(&c, "access_token_env", &mc->access_token_env) &&
         get_string(&c, "device_name", &mc->device_name) &&
         get_string(&c, "crypto_key_env", &mc->crypto_key_env) &&
         get_allow(&c, mc);
    if (!ok)
        return PARLEY_ERR_OOM;
    get_bool(&c, "reject_other_invites", &mc->reject_other_invites);
    get_bool(&c, "thread_context", &mc->thread_context);
    get_bool(&c, "leave_empty_rooms", &mc->leave_empty_rooms);
    get_int(&c, "sync_timeout_ms", &mc->sync_timeout_ms, 0, 300000);
    get_int(&c, "backoff_base_ms", &mc->backoff_base_ms, 1, 600000);
    get_int(&c, "backoff_max_ms", &mc->backoff_max_ms, 1, 3600000);
    get_int(&c, "timeline_limit", &mc->timeline_limit, 1, 1000);
    get_int(&c, "utd_timeout_ms", &mc->utd_timeout_ms, 1000, 86400000);
    {
        char *share = NULL;

        if (!get_string(&c, "share_with", &share))
            return PARLEY_ERR_OOM;
        if (share && strcmp(share, "verified") == 0)
            mc->share_verified = 1;
        else if (share && strcmp(share, "all") != 0)
            cfg_err(&c, config_setting_get_member(c.block, "share_with"),
                    "share_with", "must be \"all\" (every device of the "
                    "room's members gets the room key) or \"verified\" "
                    "(only devices their owner verified by cross-signing)");
        free(share);
    }

    if (!mc->homeserver) {
        cfg_err(&c, NULL, "homeserver", "missing (e.g. "
                "\"https://matrix.example.org\")");
    } else {
        if (strncmp(mc->homeserver, "https://", 8) != 0 &&
            strncmp(mc->homeserver, "http://", 7) != 0)
            cfg_err(&c, config_setting_get_member(c.block, "homeserver"),
                    "homeserver", "must start with https:// or http://");
        n = strlen(mc->homeserver);
        while (n > 0 && mc->homeserver[n - 1] == '/')
            mc->homeserver[--n] = '\0';
        if (strpbrk(mc->homeserver, " \t\r\n?#"))
            cfg_err(&c, config_setting_get_member(c.block, "homeserver"),
                    "homeserver", "must be a plain base URL");
    }
    if (!mc->user_id)
        cfg_err(&c, NULL, "user_id", "missing (e.g. \"@parley:example.org\")");
    else if (!valid_user_id(mc->user_id))
        cfg_err(&c, config_setting_get_member(c.block, "user_id"),
                "user_id", "must look like \"@parley:example.org\"");
    if (!mc->password_env && !mc->access_token_env)
        cfg_err(&c, NULL, "password_env",
                "set password_env or access_token_env (names of "
                "environment variables)");
    if (mc->password_env && !valid_env_name(mc->password_env))
        cfg_err(&c, config_setting_get_member(c.block, "password_env"),
                "password_env", "must name an environment variable, "
                "not hold the password");
    if (mc->access_token_env && !valid_env_name(mc->access_token_env))
        cfg_err(&c, config_setting_get_member(c.block, "access_token_env"),
                "access_token_env", "must name an environment variable, "
                "not hold the token");
    if (mc->crypto_key_env && !valid_env_name(mc->crypto_key_env))
        cfg_err(&c, config_setting_get_member(c.block, "crypto_key_env"),
                "crypto_key_env", "must name an environment variable, "
                "not hold the key");
    if (mc->backoff_max_ms < mc->backoff_base_ms)
        cfg_err(&c, config_setting_get_member(c.block, "backoff_max_ms"),
                "backoff_max_ms", "must not be below backoff_base_ms");
    if (mc->account && (!mc->account[0] || strlen(mc->account) > 255))
        cfg_err(&c, config_setting_get_member(c.block, "account"),
                "account", "must be 1 to 255 bytes");
    if (!mc->device_name && !(mc->device_name = strdup("parley")))
        return PARLEY_ERR_OOM;
    if (!mc->account && mc->user_id && !(mc->account = strdup(mc->user_id)))
        return PARLEY_ERR_OOM;
    return c.bad ? PARLEY_ERR_CONFIG : PARLEY_OK;
}

/* The validate hook: parse into a scratch config and drop it. */
static int matrix_config_validate(const void *setting, char *err,
                                  size_t errlen)
{
    struct matrix_config mc;
    int result = matrix_config_parse(&mc, (void *)setting, err, errlen);

    matrix_config_free(&mc);
    return result;
}

const struct adapter_desc matrix_adapter_desc = {
    .name = "matrix",
    .validate = matrix_config_validate,
    .create = matrix_adapter_create,
    .caps = ADAPTER_CAP_LEASED | ADAPTER_CAP_STREAM,
};

void matrix_config_free(struct matrix_config *mc)
{
    size_t i;

    if (!mc)
        return;
    free(mc->homeserver);
    free(mc->user_id);
    free(mc->account);
    free(mc->password_env);
    free(mc->access_token_env);
    free(mc->device_name);
    free(mc->crypto_key_env);
    for (i = 0; i < mc->n_allow; i++)
        free(mc->allow[i]);
    free(mc->allow);
    memset(mc, 0, sizeof(*mc));
}
