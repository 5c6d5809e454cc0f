/*
 * The core groups of bot.conf (bot, redis, llm, context, prompts, limits,
 * metrics, ha): one table of known keys per group (struct key_spec: name,
 * kind, where the value goes, range), and the validators for each kind of
 * value.  An unknown key, a wrong type or an out-of-range value is
 * reported where it is; a key that looks like a secret (api_key,
 * password, token) is rejected with a hint to name an environment
 * variable instead.  Error texts never quote string values from the
 * file, so a secret pasted into the wrong key is not echoed.
 */
#include <ctype.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config_loader.h"
#include "event.h"
#include "log.h"

/* base_url; far beyond any real endpoint. */
#define CONFIG_URL_MAX       2048

/* sockaddr_un.sun_path is 108 bytes on Linux, NUL included. */
#define CONFIG_UNIX_PATH_MAX 107

/* Ranges chosen so that the value is usable and a typo stands out. */
#define CONFIG_TOKENS_MAX    1000000        /* no model emits more */
#define CONFIG_MS_MAX        (3600 * 1000)  /* one hour */
#define CONFIG_RETRIES_MAX   100
/* Requests in flight: 10,000 rooms asking at once fit (scripts/bench/run.sh
 * measures them).  Over HTTP/1.1 each is a socket, so the open-file limit
 * (raised to its hard limit at start, see main.c) must allow as many. */
#define CONFIG_CONCURRENT_MAX 16384
#define CONFIG_PARALLEL_MAX 256
#define CONFIG_TURNS_MAX     10000

enum key_kind {
    KEY_NAME,               /* one line, non-empty */
    KEY_PREFIX,             /* one line, may be empty */
    KEY_TEXT,               /* free text (prompts), may span lines */
    KEY_ENV,                /* environment variable name */
    KEY_URL,                /* http(s) base URL */
    KEY_LEVEL,              /* log level name */
    KEY_LOG_FORMAT,         /* "text" or "json" */
    KEY_WHO,                /* "operators" or "everyone" */
    KEY_LISTEN,             /* "ADDRESS:PORT" */
    KEY_UNIX_PATH,          /* Unix socket path */
    KEY_INT,                /* integer in [min, max] */
    KEY_BOOL,               /* true or false */
    KEY_TEMPERATURE,        /* number 0..2, or -1 to omit */
    KEY_MODELS,             /* array of model names */
    KEY_FEWSHOT,            /* list of { user; assistant; } */
    KEY_SENTINELS           /* list of "HOST:PORT" (config_redis.c) */
};

/* One known key of a group: its kind and where the value goes (offset
 * into the group's struct). */
struct key_spec {
    const char *name;
    enum key_kind kind;
    size_t offset;
    long long min;
    long long max;
};

#define KEY_STR(st, name, kind, field) \
    { name, kind, offsetof(struct st, field), 0, 0 }
#define KEY_NUM(st, name, field, min, max) \
    { name, KEY_INT, offsetof(struct st, field), min, max }
#define KEY_FLAG(st, name, field) \
    { name, KEY_BOOL, offsetof(struct st, field), 0, 1 }

static const struct key_spec bot_keys[] = {
    KEY_STR(config_bot, "name", KEY_NAME, name),
    KEY_STR(config_bot, "log_level", KEY_LEVEL, log_level),
    KEY_STR(config_bot, "log_format", KEY_LOG_FORMAT, log_format),
};

static const struct key_spec metrics_keys[] = {
    KEY_STR(config_metrics, "listen", KEY_LISTEN, listen),
};

/* ha.lease_ms: from 0.5 s (a test) to 10 min; the default 8000 keeps a
 * takeover under 10 s.  Shorter leases fail over faster but give up an
 * account on a shorter Redis hiccup. */
static const struct key_spec ha_keys[] = {
    { "enabled", KEY_BOOL, offsetof(struct config_ha, enabled), 0, 1 },
    KEY_NUM(config_ha, "lease_ms", lease_ms, 500, 600000),
    { "share_work", KEY_BOOL, offsetof(struct config_ha, share_work), 0, 1 },
    /* Below a second, a model answer that is merely slow would be taken
     * over by another worker and asked twice. */
    KEY_NUM(config_ha, "claim_idle_ms", claim_idle_ms, 1000, CONFIG_MS_MAX),
};

static const struct key_spec redis_keys[] = {
    KEY_STR(config_redis, "host", KEY_NAME, host),
    KEY_NUM(config_redis, "port", port, 1, 65535),
    KEY_STR(config_redis, "unix_socket", KEY_UNIX_PATH, unix_socket),
    KEY_NUM(config_redis, "db", db, 0, INT_MAX),
    KEY_STR(config_redis, "password_env", KEY_ENV, password_env),
    KEY_STR(config_redis, "prefix", KEY_PREFIX, prefix),
    KEY_NUM(config_redis, "dedupe_ttl", dedupe_ttl_s, 1, INT_MAX),
    KEY_STR(config_redis, "sentinels", KEY_SENTINELS, sentinels),
    KEY_STR(config_redis, "master_name", KEY_NAME, master_name),
    KEY_STR(config_redis, "sentinel_password_env", KEY_ENV,
            sentinel_password_env),
};

static const struct key_spec llm_keys[] = {
    KEY_STR(config_llm, "base_url", KEY_URL, base_url),
    KEY_STR(config_llm, "model", KEY_NAME, model),
    KEY_STR(config_llm, "allowed_models", KEY_MODELS, allowed_models),
    KEY_STR(config_llm, "api_key_env", KEY_ENV, api_key_env),
    KEY_STR(config_llm, "model_switch", KEY_WHO, model_switch),
    KEY_STR(config_llm, "temperature", KEY_TEMPERATURE, temperature),
    KEY_NUM(config_llm, "max_tokens", max_tokens, 0, CONFIG_TOKENS_MAX),
    KEY_NUM(config_llm, "connect_timeout_ms", connect_timeout_ms,
            1, CONFIG_MS_MAX),
    KEY_NUM(config_llm, "timeout_ms", timeout_ms, 1, CONFIG_MS_MAX),
    KEY_NUM(config_llm, "stream_idle_timeout_ms", stream_idle_timeout_ms,
            1000, CONFIG_MS_MAX),
    KEY_NUM(config_llm, "max_retries", max_retries, 0, CONFIG_RETRIES_MAX),
    KEY_NUM(config_llm, "backoff_base_ms", backoff_base_ms,
            1, CONFIG_MS_MAX),
    KEY_NUM(config_llm, "backoff_max_ms", backoff_max_ms, 1, CONFIG_MS_MAX),
    KEY_NUM(config_llm, "max_concurrent", max_concurrent,
            1, CONFIG_CONCURRENT_MAX),
    KEY_STR(config_llm, "vision_models", KEY_MODELS, vision_models),
    /* A picture travels base64-encoded in the request (4/3 of its size),
     * and an event holds at most EVENT_ATTACHMENT_MAX. */
    KEY_NUM(config_llm, "image_max_bytes", image_max_bytes, 1024,
            EVENT_ATTACHMENT_MAX),
    KEY_FLAG(config_llm, "http2_prior_knowledge", http2_prior_knowledge),
};

static const struct key_spec context_keys[] = {
    KEY_NUM(config_context, "max_turns", max_turns, 1, CONFIG_TURNS_MAX),
    KEY_NUM(config_context, "max_tokens", max_tokens, 1, CONFIG_TOKENS_MAX),
    KEY_NUM(config_context, "ttl", ttl_s, 1, INT_MAX),
    KEY_NUM(config_context, "max_parallel_per_room", max_parallel_per_room,
            1, CONFIG_PARALLEL_MAX),
};

static const struct key_spec prompts_keys[] = {
    KEY_STR(config_prompts, "system", KEY_TEXT, system),
    KEY_STR(config_prompts, "greeting", KEY_TEXT, greeting),
    KEY_STR(config_prompts, "fewshot", KEY_FEWSHOT, fewshot),
};

static const struct key_spec limits_keys[] = {
    KEY_NUM(config_limits, "user_requests_per_minute",
            user_requests_per_minute, 0, INT_MAX),
    KEY_NUM(config_limits, "user_daily_tokens", user_daily_tokens,
            0, INT_MAX),
};


static int
config_set_str(struct config_loader *ld, char **field, const char *value)
{
    char *copy = value ? strdup(value) : NULL;

    if (value && !copy) {
        ld->oom = 1;
        return -1;
    }
    free(*field);
    *field = copy;
    return 0;
}

/* 1 if s contains a byte below 0x20 or DEL (allow_lines: except \n \t
 * \r). */
static int
config_has_control(const char *s, int allow_lines)
{
    const unsigned char *p = (const unsigned char *)s;

    for (; *p; p++) {
        if (allow_lines && (*p == '\n' || *p == '\t' || *p == '\r'))
            continue;
        if (*p < 0x20 || *p == 0x7f)
            return 1;
    }
    return 0;
}

int
config_env_name_valid(const char *s)
{
    const char *p;

    if (!(isalpha((unsigned char)*s) || *s == '_'))
        return 0;
    for (p = s; *p; p++)
        if (!(isalnum((unsigned char)*p) || *p == '_'))
            return 0;
    return 1;
}

/* Check a one-line string value; reports and returns -1 when invalid. */
static int
config_check_line(struct config_loader *ld, const config_setting_t *s,
                  const char *v, size_t max, int may_be_empty)
{
    size_t n = strlen(v);

    if (n == 0 && !may_be_empty) {
        config_error_add(&ld->errs, s, "must not be empty");
        return -1;
    }
    if (n > max) {
        config_error_add(&ld->errs, s, "longer than %zu bytes", max);
        return -1;
    }
    if (config_has_control(v, 0)) {
        config_error_add(&ld->errs, s,
                         "must be one line without control characters");
        return -1;
    }
    return 0;
}

static int
config_check_text(struct config_loader *ld, const config_setting_t *s,
                  const char *v)
{
    if (strlen(v) > CONFIG_TEXT_MAX) {
        config_error_add(&ld->errs, s, "longer than %d bytes",
                         CONFIG_TEXT_MAX);
        return -1;
    }
    if (config_has_control(v, 1)) {
        config_error_add(&ld->errs, s,
                         "must not contain control characters");
        return -1;
    }
    return 0;
}

/* Validate base_url and store it without trailing slashes. */
static void
config_take_url(struct config_loader *ld, const config_setting_t *s,
                const char *v, char **field)
{
    const char *host, *end;
    size_t n;
    char *copy;

    if (config_check_line(ld, s, v, CONFIG_URL_MAX, 0))
        return;
    if (strncasecmp(v, "http://", 7) == 0)
        host = v + 7;
    else if (strncasecmp(v, "https://", 8) == 0)
        host = v + 8;
    else {
        config_error_add(&ld->errs, s,
                         "must start with http:// or https://");
        return;
    }
    end = host + strcspn(host, "/");
    if (end == host) {
        config_error_add(&ld->errs, s, "has no host name");
        return;
    }
    /* user:password@host would put a secret in the file. */
    if (memchr(host, '@', (size_t)(end - host))) {
        config_error_add(&ld->errs, s,
                         "must not contain credentials; name the variable "
                         "holding the key in llm.api_key_env");
        return;
    }
    if (strpbrk(v, " ?#")) {
        config_error_add(&ld->errs, s,
                         "must not contain spaces, a query or a fragment "
                         "(request paths are appended to it)");
        return;
    }
    n = strlen(v);
    while (n > (size_t)(host - v) && v[n - 1] == '/')
        n--;
    copy = strndup(v, n);
    if (!copy) {
        ld->oom = 1;
        return;
    }
    free(*field);
    *field = copy;
}

int
config_is_bad_int(const struct config_loader *ld, const config_setting_t *s)
{
    size_t i;

    for (i = 0; i < ld->n_bad_ints; i++)
        if (ld->bad_ints[i] == s)
            return 1;
    return 0;
}

static void
config_take_int(struct config_loader *ld, const config_setting_t *s,
                const struct key_spec *k, int *field)
{
    long long v;
    int type = config_setting_type(s);

    if (type != CONFIG_TYPE_INT && type != CONFIG_TYPE_INT64) {
        config_error_add(&ld->errs, s, "expected an integer");
        return;
    }
    if (config_is_bad_int(ld, s))
        return;
    v = config_setting_get_int64(s);
    if (v < k->min || v > k->max) {
        if (k->max == INT_MAX)
            config_error_add(&ld->errs, s, "must be at least %lld (not %lld)",
                             k->min, v);
        else
            config_error_add(&ld->errs, s,
                             "must be between %lld and %lld (not %lld)",
                             k->min, k->max, v);
        return;
    }
    *field = (int)v;
}

static void
config_take_temperature(struct config_loader *ld, const config_setting_t *s,
                        double *field)
{
    int type = config_setting_type(s);
    double v;

    if (type == CONFIG_TYPE_FLOAT)
        v = config_setting_get_float(s);
    else if (type == CONFIG_TYPE_INT || type == CONFIG_TYPE_INT64)
        v = (double)config_setting_get_int64(s);
    else {
        config_error_add(&ld->errs, s, "expected a number");
        return;
    }
    if (v == -1.0) {
        *field = -1.0;
        return;
    }
    if (!(v >= 0.0 && v <= 2.0)) {
        config_error_add(&ld->errs, s,
                         "must be between 0 and 2, or -1 to let the server "
                         "choose (not %g)", v);
        return;
    }
    *field = v;
}

void
config_free_models(char **models, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        free(models[i]);
    free(models);
}

/* A list of model names into *list / *n_list (allowed_models,
 * vision_models); the old list is freed once the new one is whole. */
static void
config_take_models(struct config_loader *ld, const config_setting_t *s,
                   char ***list, size_t *n_list)
{
    int n = config_setting_length(s);
    char **models;
    size_t count = 0;
    int i, bad = 0;

    if (!config_setting_is_array(s) && !config_setting_is_list(s)) {
        config_error_add(&ld->errs, s,
                         "expected a list of model names [ \"...\", ... ]");
        return;
    }
    if (n > CONFIG_MAX_MODELS) {
        config_error_add(&ld->errs, s, "more than %d models",
                         CONFIG_MAX_MODELS);
        return;
    }
    models = calloc((size_t)n + 1, sizeof(*models));
    if (!models) {
        ld->oom = 1;
        return;
    }
    for (i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        const char *v;
        size_t j;

        if (config_setting_type(e) != CONFIG_TYPE_STRING) {
            config_error_add(&ld->errs, e, "expected a model name string");
            bad = 1;
            continue;
        }
        v = config_setting_get_string(e);
        if (config_check_line(ld, e, v, CONFIG_NAME_MAX, 0)) {
            bad = 1;
            continue;
        }
        for (j = 0; j < count; j++)
            if (strcmp(models[j], v) == 0)
                break;
        if (j < count)
            continue;   /* a repeated name is harmless */
        models[count] = strdup(v);
        if (!models[count]) {
            ld->oom = 1;
            bad = 1;
            break;
        }
        count++;
    }
    if (bad) {
        config_free_models(models, count);
        return;
    }
    config_free_models(*list, *n_list);
    *list = models;
    *n_list = count;
}

/* Report keys of an entry group (fewshot, rooms) not in names[]. */
int
config_check_members(struct config_loader *ld, const config_setting_t *g,
                     const char *const *names, size_t n_names)
{
    int i, n = config_setting_length(g), bad = 0;

    for (i = 0; i < n; i++) {
        const config_setting_t *m = config_setting_get_elem(g, (unsigned)i);
        size_t j;

        for (j = 0; j < n_names; j++)
            if (strcmp(config_setting_name(m), names[j]) == 0)
                break;
        if (j == n_names) {
            config_error_add(&ld->errs, m, "unknown key");
            bad = 1;
        }
    }
    return bad ? -1 : 0;
}

/* A string member of an entry group.  Returns NULL (with an error
 * reported when required or mistyped) if absent or invalid. */
const char *
config_member_text(struct config_loader *ld, const config_setting_t *g,
                   const char *name, int required, size_t one_line_max)
{
    const config_setting_t *m = config_setting_get_member(g, name);
    const char *v;

    if (!m) {
        if (required)
            config_error_add(&ld->errs, g, "missing key \"%s\"", name);
        return NULL;
    }
    if (config_setting_type(m) != CONFIG_TYPE_STRING) {
        config_error_add(&ld->errs, m, "expected a string");
        return NULL;
    }
    v = config_setting_get_string(m);
    if (one_line_max) {
        if (config_check_line(ld, m, v, one_line_max, 0))
            return NULL;
    } else {
        if (config_check_text(ld, m, v))
            return NULL;
        if (v[0] == '\0') {
            config_error_add(&ld->errs, m, "must not be empty");
            return NULL;
        }
    }
    return v;
}

void
config_free_fewshot(struct config_fewshot *fs, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        free(fs[i].user);
        free(fs[i].assistant);
    }
    free(fs);
}

static void
config_take_fewshot(struct config_loader *ld, const config_setting_t *s,
                    struct config_prompts *p)
{
    static const char *const names[] = { "user", "assistant" };
    int i, n = config_setting_length(s);
    struct config_fewshot *fs;
    size_t count = 0;
    int bad = 0;

    if (!config_setting_is_list(s)) {
        config_error_add(&ld->errs, s,
                         "expected a list ( { user = \"...\"; "
                         "assistant = \"...\"; }, ... )");
        return;
    }
    if (n > CONFIG_MAX_FEWSHOT) {
        config_error_add(&ld->errs, s, "more than %d examples",
                         CONFIG_MAX_FEWSHOT);
        return;
    }
    fs = calloc((size_t)n + 1, sizeof(*fs));
    if (!fs) {
        ld->oom = 1;
        return;
    }
    for (i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        const char *user, *assistant;

        if (!config_setting_is_group(e)) {
            config_error_add(&ld->errs, e,
                             "expected a group { user; assistant; }");
            bad = 1;
            continue;
        }
        if (config_check_members(ld, e, names, 2))
            bad = 1;
        user = config_member_text(ld, e, "user", 1, 0);
        assistant = config_member_text(ld, e, "assistant", 1, 0);
        if (!user || !assistant) {
            bad = 1;
            continue;
        }
        fs[count].user = strdup(user);
        fs[count].assistant = strdup(assistant);
        count++;
        if (!fs[count - 1].user || !fs[count - 1].assistant) {
            ld->oom = 1;
            bad = 1;
            break;
        }
    }
    if (bad) {
        config_free_fewshot(fs, count);
        return;
    }
    config_free_fewshot(p->fewshot, p->n_fewshot);
    p->fewshot = fs;
    p->n_fewshot = count;
}

/* Names that hold a secret; they must never appear in the file. */
int
config_is_secret_name(const char *name)
{
    static const char *const names[] = {
        "api_key", "apikey", "key", "password", "passwd", "pass",
        "token", "access_token", "secret",
    };
    size_t i;

    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcasecmp(name, names[i]) == 0)
            return 1;
    return 0;
}

void
config_secret_key_error(struct config_loader *ld, const config_setting_t *s,
                        const char *group)
{
    if (strcmp(group, "llm") == 0)
        config_error_add(&ld->errs, s,
                         "secrets never live in the file: put the API key "
                         "in an environment variable (or a file named by "
                         "NAME_FILE) and set llm.api_key_env to its name");
    else if (strcmp(group, "redis") == 0)
        config_error_add(&ld->errs, s,
                         "secrets never live in the file: put the password "
                         "in an environment variable (or a file named by "
                         "NAME_FILE) and set redis.password_env to its name");
    else
        config_error_add(&ld->errs, s,
                         "secrets never live in the file: pass them in "
                         "environment variables");
}

/* Walk one group against its key table, storing values at base. */
static void
config_load_group(struct config_loader *ld, const config_setting_t *g,
                  const struct key_spec *keys, size_t n_keys, void *base)
{
    const char *group = config_setting_name(g);
    int i, n;

    if (!config_setting_is_group(g)) {
        config_error_add(&ld->errs, g, "expected a group { ... }");
        return;
    }
    n = config_setting_length(g);
    for (i = 0; i < n; i++) {
        const config_setting_t *s = config_setting_get_elem(g, (unsigned)i);
        const char *name = config_setting_name(s);
        const struct key_spec *k = NULL;
        char *field_base = (char *)base;
        char **str;
        const char *v;
        enum log_level level;
        size_t j;

        for (j = 0; j < n_keys; j++) {
            if (strcmp(name, keys[j].name) == 0) {
                k = &keys[j];
                break;
            }
        }
        if (!k) {
            if (config_is_secret_name(name))
                config_secret_key_error(ld, s, group);
            else
                config_error_add(&ld->errs, s, "unknown key");
            continue;
        }
        str = (char **)(void *)(field_base + k->offset);

        switch (k->kind) {
        case KEY_INT:
            config_take_int(ld, s, k,
                            (int *)(void *)(field_base + k->offset));
            continue;
        case KEY_BOOL:
            if (config_setting_type(s) != CONFIG_TYPE_BOOL)
                config_error_add(&ld->errs, s, "expected true or false");
            else
                *(int *)(void *)(field_base + k->offset) =
                    config_setting_get_bool(s);
            continue;
        case KEY_TEMPERATURE:
            config_take_temperature(ld, s,
                                    (double *)(void *)(field_base +
                                                       k->offset));
            continue;
        case KEY_MODELS: {
            struct config_llm *llm = (struct config_llm *)base;
            int vision = k->offset == offsetof(struct config_llm,
                                               vision_models);

            config_take_models(ld, s, vision ? &llm->vision_models :
                               &llm->allowed_models,
                               vision ? &llm->n_vision_models :
                               &llm->n_allowed_models);
            continue;
        }
        case KEY_FEWSHOT:
            config_take_fewshot(ld, s, (struct config_prompts *)base);
            continue;
        case KEY_SENTINELS:
            config_take_sentinels(ld, s, (struct config_redis *)base);
            continue;
        default:
            break;
        }

        /* The remaining kinds are strings. */
        if (config_setting_type(s) != CONFIG_TYPE_STRING) {
            config_error_add(&ld->errs, s, "expected a string");
            continue;
        }
        v = config_setting_get_string(s);
        switch (k->kind) {
        case KEY_NAME:
            if (config_check_line(ld, s, v, CONFIG_NAME_MAX, 0) == 0)
                config_set_str(ld, str, v);
            break;
        case KEY_PREFIX:
            if (config_check_line(ld, s, v, CONFIG_NAME_MAX, 1) == 0)
                config_set_str(ld, str, v);
            break;
        case KEY_TEXT:
            if (config_check_text(ld, s, v) == 0)
                config_set_str(ld, str, v);
            break;
        case KEY_ENV:
            if (config_check_line(ld, s, v, CONFIG_ENV_NAME_MAX, 0))
                break;
            if (!config_env_name_valid(v)) {
                config_error_add(&ld->errs, s,
                                 "must be an environment variable name "
                                 "(letters, digits, _), not a value");
                break;
            }
            config_set_str(ld, str, v);
            break;
        case KEY_URL:
            config_take_url(ld, s, v, str);
            break;
        case KEY_LEVEL:
            if (log_level_parse(v, &level) != 0) {
                config_error_add(&ld->errs, s,
                                 "must be debug, info, warn or error");
                break;
            }
            config_set_str(ld, str,
                           level == LOG_LEVEL_DEBUG ? "debug" :
                           level == LOG_LEVEL_INFO ? "info" :
                           level == LOG_LEVEL_WARN ? "warn" : "error");
            break;
        case KEY_LOG_FORMAT:
            if (strcmp(v, "text") != 0 && strcmp(v, "json") != 0) {
                config_error_add(&ld->errs, s, "must be text or json");
                break;
            }
            config_set_str(ld, str, v);
            break;
        case KEY_WHO:
            if (strcmp(v, "operators") != 0 && strcmp(v, "everyone") != 0) {
                config_error_add(&ld->errs, s,
                                 "must be operators or everyone");
                break;
            }
            config_set_str(ld, str, v);
            break;
        case KEY_LISTEN: {
            const char *colon = strrchr(v, ':');
            char *end;
            long port = colon ? strtol(colon + 1, &end, 10) : -1;

            /* The address itself is checked when binding, where the
             * error can say whether it is ours. */
            if (!colon || colon == v || colon[1] == '\0' || *end ||
                port < 0 || port > 65535) {
                config_error_add(&ld->errs, s, "must be \"ADDRESS:PORT\", "
                                 "e.g. \"127.0.0.1:9464\"");
                break;
            }
            if (config_check_line(ld, s, v, CONFIG_NAME_MAX, 0) == 0)
                config_set_str(ld, str, v);
            break;
        }
        case KEY_UNIX_PATH:
            if (config_check_line(ld, s, v, CONFIG_UNIX_PATH_MAX, 0) == 0)
                config_set_str(ld, str, v);
            break;
        default:
            break;
        }
    }
}


int
config_load_core_group(struct config_loader *ld, const char *name,
                       const config_setting_t *s)
{
    struct config *cfg = ld->cfg;

#define GROUP(keys, field) \
    config_load_group(ld, s, keys, sizeof(keys) / sizeof(keys[0]), field)

    if (strcmp(name, "bot") == 0)
        GROUP(bot_keys, &cfg->bot);
    else if (strcmp(name, "redis") == 0)
        GROUP(redis_keys, &cfg->redis);
    else if (strcmp(name, "llm") == 0)
        GROUP(llm_keys, &cfg->llm);
    else if (strcmp(name, "context") == 0)
        GROUP(context_keys, &cfg->context);
    else if (strcmp(name, "prompts") == 0)
        GROUP(prompts_keys, &cfg->prompts);
    else if (strcmp(name, "limits") == 0)
        GROUP(limits_keys, &cfg->limits);
    else if (strcmp(name, "metrics") == 0)
        GROUP(metrics_keys, &cfg->metrics);
    else if (strcmp(name, "ha") == 0)
        GROUP(ha_keys, &cfg->ha);
    else
        return 0;
#undef GROUP
    return 1;
}

void
config_check_across(struct config_loader *ld)
{
    struct config *cfg = ld->cfg;
    struct config_llm *llm = &cfg->llm;
    const config_setting_t *s, *list;
    size_t i;
    int j, n;

    config_check_redis(ld);
    for (i = 0; i < llm->n_allowed_models; i++)
        if (strcmp(llm->allowed_models[i], llm->model) == 0)
            break;
    if (i == llm->n_allowed_models) {
        /* Keep the promise of config.h: model is always in the list. */
        char **grown;

        s = config_lookup(ld->lc, "llm.allowed_models");
        if (llm->n_allowed_models >= CONFIG_MAX_MODELS) {
            config_error_key(&ld->errs, s, "llm.allowed_models",
                             "is full: llm.model does not fit in it");
        } else {
            grown = realloc(llm->allowed_models,
                            (llm->n_allowed_models + 2) * sizeof(*grown));
            if (!grown) {
                ld->oom = 1;
                return;
            }
            llm->allowed_models = grown;
            grown[llm->n_allowed_models] = strdup(llm->model);
            if (!grown[llm->n_allowed_models]) {
                ld->oom = 1;
                return;
            }
            llm->n_allowed_models++;
            grown[llm->n_allowed_models] = NULL;
        }
    }

    if (llm->backoff_max_ms < llm->backoff_base_ms) {
        /* Blame the key the file set (the other is a default). */
        s = config_lookup(ld->lc, "llm.backoff_max_ms");
        if (s)
            config_error_add(&ld->errs, s,
                             "must not be less than llm.backoff_base_ms");
        else
            config_error_key(&ld->errs,
                             config_lookup(ld->lc, "llm.backoff_base_ms"),
                             "llm.backoff_base_ms",
                             "must not be more than llm.backoff_max_ms");
    }

    /* Room models, found through the settings for their lines. */
    list = config_lookup(ld->lc, "rooms");
    n = list && config_setting_is_list(list) ? config_setting_length(list)
                                              : 0;
    for (j = 0; j < n; j++) {
        const config_setting_t *e = config_setting_get_elem(list,
                                                            (unsigned)j);
        const char *model;

        if (!config_setting_is_group(e))
            continue;
        s = config_setting_get_member(e, "model");
        if (!s || config_setting_type(s) != CONFIG_TYPE_STRING)
            continue;
        model = config_setting_get_string(s);
        if (model[0] && !config_model_allowed(cfg, model))
            config_error_add(&ld->errs, s,
                             "not in llm.allowed_models");
    }
}

/* The configured model and the allowed_models list (!model, room
 * overrides). */
int
config_model_allowed(const struct config *cfg, const char *model)
{
    size_t i;

    if (!cfg || !model)
        return 0;
    if (cfg->llm.model && strcmp(cfg->llm.model, model) == 0)
        return 1;
    for (i = 0; i < cfg->llm.n_allowed_models; i++)
        if (strcmp(cfg->llm.allowed_models[i], model) == 0)
            return 1;
    return 0;
}


/* Models that read pictures (llm.vision_models): only these get an image
 * part; the rest are never sent one, since many servers refuse a
 * request with a content part they do not know. */
int
config_model_vision(const struct config *cfg, const char *model)
{
    size_t i;

    if (!cfg || !model)
        return 0;
    for (i = 0; i < cfg->llm.n_vision_models; i++)
        if (strcmp(cfg->llm.vision_models[i], model) == 0)
            return 1;
    return 0;
}
