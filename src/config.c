/*
 * bot.conf -> struct config.  The file is parsed by libconfig and then
 * walked group by group against tables of known keys (struct key_spec),
 * so that an unknown key, a wrong type or an out-of-range value is found
 * wherever it is, and every problem is reported at once as
 * "FILE:LINE: key.path: message".  Secrets never come from the file: a key
 * that looks like one (api_key, password, token) is rejected with a hint
 * to name an environment variable instead, and config_secrets() reads
 * those variables (or NAME_FILE, for Docker secrets) and registers the
 * values with the logger's redaction.  Error texts never quote string
 * values from the file, so a secret pasted into the wrong key is not
 * echoed to a terminal or a log.
 *
 * libconfig 1.5 silently wraps integers beyond 32 bits (port = 9999999999
 * reads as 1410065407), so the raw file is scanned for such literals as
 * well; @include'd files are parsed but not scanned.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <libconfig.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "event.h"
#include "log.h"
#include "status.h"

/* bot.conf is a few kilobytes; the cap stops a wrong path (a log file,
 * /dev/zero) from being read into memory. */
#define CONFIG_FILE_MAX      (1024 * 1024)

/* One-line values: names, hosts, models, room keys.  Long enough for any
 * real one; a longer value is a paste gone wrong. */
#define CONFIG_NAME_MAX      256

/* Environment variable names (api_key_env, password_env). */
#define CONFIG_ENV_NAME_MAX  128

/* base_url; far beyond any real endpoint. */
#define CONFIG_URL_MAX       2048

/* sockaddr_un.sun_path is 108 bytes on Linux, NUL included. */
#define CONFIG_UNIX_PATH_MAX 107

/* One error line, and the dotted key path inside it. */
#define CONFIG_ERR_LINE_MAX  768
#define CONFIG_KEY_PATH_MAX  256

/* Integer settings whose literal overflowed (see the top comment); their
 * wrapped values are not range-checked again.  More than this many in one
 * file are still reported, only the key path may be missing. */
#define CONFIG_BAD_INTS_MAX  64

/* Ranges chosen so that the value is usable and a typo stands out. */
#define CONFIG_TOKENS_MAX    1000000        /* no model emits more */
#define CONFIG_MS_MAX        (3600 * 1000)  /* one hour */
#define CONFIG_RETRIES_MAX   100
#define CONFIG_CONCURRENT_MAX 1024
#define CONFIG_PARALLEL_MAX 256
#define CONFIG_TURNS_MAX     10000

#define CONFIG_MORE_ERRORS   "\n(more problems not shown)"

#define CONFIG_DEFAULT_SYSTEM \
    "You are a friendly, helpful assistant taking part in a group chat. " \
    "Several people may be talking at once; address them by name. " \
    "Be proactive: greet newcomers warmly, keep your answers short and " \
    "conversational, as suits a chat, and ask a follow-up question when " \
    "it helps the conversation along. When a conversation is just " \
    "starting, ask: \"What topic would you like to explore today?\""

#define CONFIG_DEFAULT_GREETING \
    "You are speaking first in this room; there is no conversation yet. " \
    "Greet the people here warmly, say in one sentence what you can help " \
    "with, and ask: \"What topic would you like to explore today?\""

/* Problems kept for sorting; a file with more is hopeless anyway, and
 * the count still makes the load fail. */
#define CONFIG_ERRORS_MAX    1000

struct config_error_line {
    char *text;             /* the whole "FILE:LINE: key: message" */
    char *file;             /* sort keys: file, line, order found; a
                               copy, as libconfig's name may not last */
    unsigned line;
    size_t seq;
};

/* Where errors accumulate while a file is validated. */
struct config_errors {
    char *buf;              /* caller's err buffer, may be NULL */
    size_t len;
    int count;              /* problems found, stored or not */
    int lost;               /* some were not stored: say so */
    const char *path;       /* file name when a setting has none */
    const char *dir;        /* include dir ("conf/"), or NULL */
    struct config_error_line *lines;
    size_t n, cap;
};

/* State of one config_load. */
struct config_loader {
    struct config *cfg;
    config_t *lc;
    struct config_errors errs;
    int oom;
    const config_setting_t *bad_ints[CONFIG_BAD_INTS_MAX];
    size_t n_bad_ints;
};

enum key_kind {
    KEY_NAME,               /* one line, non-empty */
    KEY_PREFIX,             /* one line, may be empty */
    KEY_TEXT,               /* free text (prompts), may span lines */
    KEY_ENV,                /* environment variable name */
    KEY_URL,                /* http(s) base URL */
    KEY_LEVEL,              /* log level name */
    KEY_LOG_FORMAT,         /* "text" or "json" */
    KEY_LISTEN,             /* "ADDRESS:PORT" */
    KEY_UNIX_PATH,          /* Unix socket path */
    KEY_INT,                /* integer in [min, max] */
    KEY_TEMPERATURE,        /* number 0..2, or -1 to omit */
    KEY_MODELS,             /* array of model names */
    KEY_FEWSHOT             /* list of { user; assistant; } */
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

static const struct key_spec bot_keys[] = {
    KEY_STR(config_bot, "name", KEY_NAME, name),
    KEY_STR(config_bot, "log_level", KEY_LEVEL, log_level),
    KEY_STR(config_bot, "log_format", KEY_LOG_FORMAT, log_format),
};

static const struct key_spec metrics_keys[] = {
    KEY_STR(config_metrics, "listen", KEY_LISTEN, listen),
};

static const struct key_spec redis_keys[] = {
    KEY_STR(config_redis, "host", KEY_NAME, host),
    KEY_NUM(config_redis, "port", port, 1, 65535),
    KEY_STR(config_redis, "unix_socket", KEY_UNIX_PATH, unix_socket),
    KEY_NUM(config_redis, "db", db, 0, INT_MAX),
    KEY_STR(config_redis, "password_env", KEY_ENV, password_env),
    KEY_STR(config_redis, "prefix", KEY_PREFIX, prefix),
    KEY_NUM(config_redis, "dedupe_ttl", dedupe_ttl_s, 1, INT_MAX),
};

static const struct key_spec llm_keys[] = {
    KEY_STR(config_llm, "base_url", KEY_URL, base_url),
    KEY_STR(config_llm, "model", KEY_NAME, model),
    KEY_STR(config_llm, "allowed_models", KEY_MODELS, allowed_models),
    KEY_STR(config_llm, "api_key_env", KEY_ENV, api_key_env),
    KEY_STR(config_llm, "temperature", KEY_TEMPERATURE, temperature),
    KEY_NUM(config_llm, "max_tokens", max_tokens, 0, CONFIG_TOKENS_MAX),
    KEY_NUM(config_llm, "connect_timeout_ms", connect_timeout_ms,
            1, CONFIG_MS_MAX),
    KEY_NUM(config_llm, "timeout_ms", timeout_ms, 1, CONFIG_MS_MAX),
    KEY_NUM(config_llm, "max_retries", max_retries, 0, CONFIG_RETRIES_MAX),
    KEY_NUM(config_llm, "backoff_base_ms", backoff_base_ms,
            1, CONFIG_MS_MAX),
    KEY_NUM(config_llm, "backoff_max_ms", backoff_max_ms, 1, CONFIG_MS_MAX),
    KEY_NUM(config_llm, "max_concurrent", max_concurrent,
            1, CONFIG_CONCURRENT_MAX),
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

static const char *const adapter_types[] = { "console", "irc", "matrix" };

/* ---- error reporting ---------------------------------------------- */

/* Dotted path of a setting: "llm.model", "rooms[2].room". */
static void
config_key_path(const config_setting_t *s, char *buf, size_t len)
{
    const config_setting_t *parent;
    size_t used;
    int n;

    buf[0] = '\0';
    if (!s || config_setting_is_root(s))
        return;
    parent = config_setting_parent(s);
    config_key_path(parent, buf, len);
    used = strlen(buf);
    if (config_setting_name(s))
        n = snprintf(buf + used, len - used, "%s%s", used ? "." : "",
                     config_setting_name(s));
    else
        n = snprintf(buf + used, len - used, "[%d]",
                     config_setting_index(s));
    (void)n;    /* a truncated path is still useful */
}

/* Record one finished line.  Lines are kept until config_errors_flush
 * so that they can be sorted by file and line: checks run group by group
 * and across groups, but an operator reads a file top to bottom. */
static void
config_error_append(struct config_errors *e, const char *file,
                    unsigned line, const char *text)
{
    struct config_error_line *l;

    e->count++;
    if (e->n == e->cap) {
        size_t cap = e->cap ? e->cap * 2 : 16;

        if (e->n >= CONFIG_ERRORS_MAX) {
            e->lost = 1;
            return;
        }
        l = realloc(e->lines, cap * sizeof(*l));
        if (!l) {
            e->lost = 1;
            return;
        }
        e->lines = l;
        e->cap = cap;
    }
    l = &e->lines[e->n];
    l->text = strdup(text);
    l->file = strdup(file ? file : "");
    if (!l->text || !l->file) {
        free(l->text);
        free(l->file);
        e->lost = 1;
        return;
    }
    l->line = line;
    l->seq = e->n;
    e->n++;
}

static int
config_error_cmp(const void *a, const void *b)
{
    const struct config_error_line *x = a, *y = b;
    int c = strcmp(x->file, y->file);

    if (c)
        return c;
    if (x->line != y->line)
        return x->line < y->line ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Write the sorted lines into the caller's buffer, whole lines only, with
 * CONFIG_MORE_ERRORS when some do not fit (or a first line cut to fit a
 * tiny buffer); then free them. */
static void
config_errors_flush(struct config_errors *e)
{
    size_t i, used = 0, reserve = sizeof(CONFIG_MORE_ERRORS);
    int full = 0;

    if (e->n > 1)
        qsort(e->lines, e->n, sizeof(*e->lines), config_error_cmp);
    for (i = 0; i < e->n && e->buf && e->len > 0 && !full; i++) {
        const char *line = e->lines[i].text;
        size_t n = strlen(line);

        if (used == 0 && n + 1 > e->len) {
            snprintf(e->buf, e->len, "%s", line);
            used = strlen(e->buf);
            full = 1;
            break;
        }
        /* +1 for the separating newline. */
        if (used + (used ? 1 : 0) + n + reserve > e->len) {
            full = 1;
            break;
        }
        if (used)
            e->buf[used++] = '\n';
        memcpy(e->buf + used, line, n + 1);
        used += n;
    }
    if ((full || e->lost) && e->buf && used > 0 && used + reserve <= e->len)
        memcpy(e->buf + used, CONFIG_MORE_ERRORS, reserve);
    for (i = 0; i < e->n; i++) {
        free(e->lines[i].text);
        free(e->lines[i].file);
    }
    free(e->lines);
    e->lines = NULL;
    e->n = e->cap = 0;
}

/* The name to print for a file libconfig reports: @include'd files come
 * back as written in the directive, relative to the including file's
 * directory (the include dir), not to the working directory. */
static void
config_error_file_name(const struct config_errors *e, const char *file,
                       char *buf, size_t len)
{
    if (!file)
        file = e->path;
    if (e->dir && file[0] != '/' && strcmp(file, e->path) != 0)
        snprintf(buf, len, "%s%s", e->dir, file);
    else
        snprintf(buf, len, "%s", file);
}

/* Report a problem as "FILE:LINE: key.path: message" (s NULL: "FILE:
 * message"). */
static void
config_error_add(struct config_errors *e, const config_setting_t *s,
                 const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
config_error_add(struct config_errors *e, const config_setting_t *s,
                 const char *fmt, ...)
{
    char line[CONFIG_ERR_LINE_MAX];
    char key[CONFIG_KEY_PATH_MAX];
    char msg[CONFIG_ERR_LINE_MAX];
    char file[CONFIG_ERR_LINE_MAX];
    unsigned lineno = 0;
    va_list ap;
    int r;

    va_start(ap, fmt);
    r = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (r < 0)
        snprintf(msg, sizeof(msg), "invalid value");

    config_error_file_name(e, s ? config_setting_source_file(s) : NULL,
                           file, sizeof(file));
    if (s && config_setting_source_line(s) > 0) {
        lineno = config_setting_source_line(s);
        config_key_path(s, key, sizeof(key));
        r = snprintf(line, sizeof(line), "%s:%u: %s%s%s", file, lineno,
                     key, key[0] ? ": " : "", msg);
    } else {
        r = snprintf(line, sizeof(line), "%s: %s", file, msg);
    }
    /* A cut line still names the place; keep it.  A failed one must
     * still count as an error. */
    config_error_append(e, file, lineno,
                        r < 0 ? "invalid configuration" : line);
}

/* Report a problem at a line that has no setting (syntax errors). */
static void
config_error_at(struct config_errors *e, const char *file, int line,
                const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void
config_error_at(struct config_errors *e, const char *file, int line,
                const char *fmt, ...)
{
    char buf[CONFIG_ERR_LINE_MAX];
    char msg[CONFIG_ERR_LINE_MAX];
    char name[CONFIG_ERR_LINE_MAX];
    va_list ap;
    int r;

    va_start(ap, fmt);
    r = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (r < 0)
        snprintf(msg, sizeof(msg), "invalid input");
    config_error_file_name(e, file, name, sizeof(name));
    r = snprintf(buf, sizeof(buf), "%s:%d: %s", name, line, msg);
    config_error_append(e, name, line > 0 ? (unsigned)line : 0,
                        r < 0 ? "invalid configuration" : buf);
}

/* A message that belongs to a key the file does not contain (a check
 * across keys whose values came from the defaults). */
static void
config_error_key(struct config_errors *e, const config_setting_t *s,
                 const char *key, const char *msg)
{
    if (s)
        config_error_add(e, s, "%s", msg);
    else
        config_error_add(e, NULL, "%s: %s", key, msg);
}

/* ---- value helpers ------------------------------------------------ */

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

static int
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

static int
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

static void
config_free_models(char **models, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        free(models[i]);
    free(models);
}

static void
config_take_models(struct config_loader *ld, const config_setting_t *s,
                   struct config_llm *llm)
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
    config_free_models(llm->allowed_models, llm->n_allowed_models);
    llm->allowed_models = models;
    llm->n_allowed_models = count;
}

/* Report keys of an entry group (fewshot, rooms) not in names[]. */
static int
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
static const char *
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

static void
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

/* ---- groups ------------------------------------------------------- */

/* Names that hold a secret; they must never appear in the file. */
static int
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

static void
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
        case KEY_TEMPERATURE:
            config_take_temperature(ld, s,
                                    (double *)(void *)(field_base +
                                                       k->offset));
            continue;
        case KEY_MODELS:
            config_take_models(ld, s, (struct config_llm *)base);
            continue;
        case KEY_FEWSHOT:
            config_take_fewshot(ld, s, (struct config_prompts *)base);
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

static int
config_is_adapter_type(const char *name)
{
    size_t i;

    for (i = 0; i < sizeof(adapter_types) / sizeof(adapter_types[0]); i++)
        if (strcmp(name, adapter_types[i]) == 0)
            return 1;
    return 0;
}

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

static void
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

static void
config_free_adapters(struct config *cfg)
{
    size_t i;

    for (i = 0; i < cfg->n_adapters; i++)
        free(cfg->adapters[i].type);
    free(cfg->adapters);
    cfg->adapters = NULL;
    cfg->n_adapters = 0;
}

static void
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
    for (i = 0; i < n; i++) {
        config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        const config_setting_t *t;
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
        if (!config_is_adapter_type(type)) {
            config_error_add(&ld->errs, t,
                             "unknown adapter type (expected console, irc "
                             "or matrix)");
            continue;
        }
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

/* Checks that involve more than one key; run after every group. */
static void
config_check_across(struct config_loader *ld)
{
    struct config *cfg = ld->cfg;
    struct config_llm *llm = &cfg->llm;
    const config_setting_t *s, *list;
    size_t i;
    int j, n;

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

/* ---- integer literals beyond 32 bits ------------------------------ */

/* Find an integer setting on this line of the main file, for the key
 * path; NULL when none (the literal was in a list of numbers). */
static const config_setting_t *
config_find_int_at(const struct config_loader *ld, const config_setting_t *s,
                   const char *file, unsigned line)
{
    int i, n;

    if (config_setting_type(s) == CONFIG_TYPE_INT &&
        !config_is_bad_int(ld, s) &&
        config_setting_source_line(s) == line &&
        config_setting_source_file(s) &&
        strcmp(config_setting_source_file(s), file) == 0)
        return s;
    if (!config_setting_is_aggregate(s))
        return NULL;
    n = config_setting_length(s);
    for (i = 0; i < n; i++) {
        const config_setting_t *found = config_find_int_at(
            ld, config_setting_get_elem(s, (unsigned)i), file, line);

        if (found)
            return found;
    }
    return NULL;
}

/*
 * Scan the text libconfig parsed for integer literals it would wrap: a
 * plain or hex literal without an L suffix outside 0..INT_MAX (decimal:
 * INT_MIN..INT_MAX).  Skips strings and the three comment styles, so
 * digits there do not count.
 */
static void
config_scan_ints(struct config_loader *ld, const char *text, size_t len,
                 const char *file)
{
    unsigned line = 1;
    size_t i = 0;

    while (i < len) {
        char c = text[i];

        if (c == '\n') {
            line++;
            i++;
        } else if (c == '#' || (c == '/' && i + 1 < len &&
                                text[i + 1] == '/')) {
            while (i < len && text[i] != '\n')
                i++;
        } else if (c == '/' && i + 1 < len && text[i + 1] == '*') {
            i += 2;
            while (i < len && !(text[i] == '*' && i + 1 < len &&
                                text[i + 1] == '/')) {
                if (text[i] == '\n')
                    line++;
                i++;
            }
            i += 2;
        } else if (c == '"') {
            i++;
            while (i < len && text[i] != '"') {
                if (text[i] == '\\' && i + 1 < len)
                    i++;
                if (text[i] == '\n')
                    line++;
                i++;
            }
            i++;
        } else if (isalpha((unsigned char)c) || c == '*' || c == '_') {
            while (i < len && (isalnum((unsigned char)text[i]) ||
                               text[i] == '_' || text[i] == '-' ||
                               text[i] == '*'))
                i++;
        } else if (isdigit((unsigned char)c) ||
                   ((c == '-' || c == '+') && i + 1 < len &&
                    isdigit((unsigned char)text[i + 1]))) {
            size_t start = i, digits;
            int hex = 0, neg = c == '-';
            char num[32];
            unsigned long long v;
            int over;

            if (c == '-' || c == '+')
                i++;
            digits = i;
            if (text[i] == '0' && i + 1 < len &&
                (text[i + 1] == 'x' || text[i + 1] == 'X')) {
                hex = 1;
                i += 2;
                digits = i;
                while (i < len && isxdigit((unsigned char)text[i]))
                    i++;
            } else {
                while (i < len && isdigit((unsigned char)text[i]))
                    i++;
                if (i < len && (text[i] == '.' || text[i] == 'e' ||
                                text[i] == 'E')) {
                    /* A float: skip it whole. */
                    while (i < len && (isdigit((unsigned char)text[i]) ||
                                       strchr(".eE+-", text[i])))
                        i++;
                    continue;
                }
            }
            if (i < len && text[i] == 'L')
                continue;       /* int64, which libconfig reads whole */
            if (i - digits >= sizeof(num)) {
                over = 1;
                v = 0;
            } else {
                memcpy(num, text + digits, i - digits);
                num[i - digits] = '\0';
                errno = 0;
                v = strtoull(num, NULL, hex ? 16 : 10);
                over = errno == ERANGE;
            }
            if (hex)
                over = over || v > INT_MAX || neg;
            else
                over = over || v > (unsigned long long)INT_MAX + neg;
            if (over) {
                const config_setting_t *s = config_find_int_at(
                    ld, config_root_setting(ld->lc), file, line);
                int shown = (int)(i - start > 40 ? 40 : i - start);

                if (s && ld->n_bad_ints < CONFIG_BAD_INTS_MAX) {
                    ld->bad_ints[ld->n_bad_ints++] = s;
                    config_error_add(&ld->errs, s,
                                     "integer %.*s is out of range",
                                     shown, text + start);
                } else {
                    config_error_at(&ld->errs, file, (int)line,
                                    "integer %.*s is out of range",
                                    shown, text + start);
                }
            }
        } else {
            i++;
        }
    }
}

/* Read path whole (at most CONFIG_FILE_MAX) for config_scan_ints. */
static int
config_read_text(const char *path, char **out, size_t *outlen,
                 struct config_errors *errs)
{
    struct stat st;
    char *buf;
    size_t got = 0;
    int fd, saved;

    *out = NULL;
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        saved = errno;
        config_error_add(errs, NULL, "cannot open: %s", strerror(saved));
        return PARLEY_ERR_IO;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        config_error_add(errs, NULL, "not a regular file");
        close(fd);
        return PARLEY_ERR_IO;
    }
    if (st.st_size > CONFIG_FILE_MAX) {
        config_error_add(errs, NULL, "larger than %d bytes",
                         CONFIG_FILE_MAX);
        close(fd);
        return PARLEY_ERR_TOO_LARGE;
    }
    buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        close(fd);
        return PARLEY_ERR_OOM;
    }
    while (got < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            saved = errno;
            config_error_add(errs, NULL, "cannot read: %s",
                             strerror(saved));
            free(buf);
            close(fd);
            return PARLEY_ERR_IO;
        }
        if (n == 0)
            break;      /* shrank while reading: scan what is there */
        got += (size_t)n;
    }
    close(fd);
    buf[got] = '\0';
    *out = buf;
    *outlen = got;
    return PARLEY_OK;
}

/* ---- public ------------------------------------------------------- */

int
config_defaults(struct config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->path = strdup("(built-in)");
    cfg->bot.name = strdup("parley");
    cfg->bot.log_level = strdup("info");

    cfg->redis.host = strdup("127.0.0.1");
    cfg->redis.port = 6379;
    cfg->redis.db = 0;
    cfg->redis.prefix = strdup("parley:");
    cfg->redis.dedupe_ttl_s = 86400;

    cfg->llm.base_url = strdup("https://api.openai.com/v1");
    cfg->llm.model = strdup("gpt-4o-mini");
    cfg->llm.allowed_models = calloc(2, sizeof(char *));
    if (cfg->llm.allowed_models) {
        cfg->llm.allowed_models[0] = strdup("gpt-4o-mini");
        if (cfg->llm.allowed_models[0])
            cfg->llm.n_allowed_models = 1;
    }
    cfg->llm.api_key_env = strdup("OPENAI_API_KEY");
    cfg->llm.temperature = 0.7;
    cfg->llm.max_tokens = 800;
    cfg->llm.connect_timeout_ms = 10000;
    cfg->llm.timeout_ms = 120000;
    cfg->llm.max_retries = 4;
    cfg->llm.backoff_base_ms = 500;
    cfg->llm.backoff_max_ms = 30000;
    cfg->llm.max_concurrent = 16;

    cfg->context.max_turns = 40;
    cfg->context.max_tokens = 3000;
    cfg->context.ttl_s = 30 * 24 * 3600;
    cfg->context.max_parallel_per_room = 8;

    cfg->prompts.system = strdup(CONFIG_DEFAULT_SYSTEM);
    cfg->prompts.greeting = strdup(CONFIG_DEFAULT_GREETING);

    cfg->limits.user_requests_per_minute = 10;
    cfg->limits.user_daily_tokens = 0;

    cfg->adapters = calloc(1, sizeof(*cfg->adapters));
    if (cfg->adapters) {
        cfg->adapters[0].type = strdup("console");
        if (cfg->adapters[0].type)
            cfg->n_adapters = 1;
    }

    if (!cfg->path || !cfg->bot.name || !cfg->bot.log_level ||
        !cfg->redis.host || !cfg->redis.prefix || !cfg->llm.base_url ||
        !cfg->llm.model || cfg->llm.n_allowed_models != 1 ||
        !cfg->llm.api_key_env || !cfg->prompts.system ||
        !cfg->prompts.greeting || cfg->n_adapters != 1) {
        config_free(cfg);
        return PARLEY_ERR_OOM;
    }
    return PARLEY_OK;
}

/* Walk the top level: the known groups and lists; anything else is a
 * typo or a secret in the wrong place. */
static void
config_load_root(struct config_loader *ld)
{
    struct config *cfg = ld->cfg;
    config_setting_t *root = config_root_setting(ld->lc);
    int i, n = config_setting_length(root);

#define GROUP(keys, field) \
    config_load_group(ld, s, keys, sizeof(keys) / sizeof(keys[0]), field)

    for (i = 0; i < n && !ld->oom; i++) {
        config_setting_t *s = config_setting_get_elem(root, (unsigned)i);
        const char *name = config_setting_name(s);

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
        else if (strcmp(name, "rooms") == 0)
            config_load_rooms(ld, s);
        else if (strcmp(name, "adapters") == 0)
            config_load_adapters(ld, s);
        else if (config_is_secret_name(name))
            config_secret_key_error(ld, s, "");
        else if (config_is_adapter_type(name))
            config_error_add(&ld->errs, s,
                             "unknown key (adapters are entries of the "
                             "adapters list: { type = \"%s\"; ... })",
                             name);
        else
            config_error_add(&ld->errs, s, "unknown key");
    }
#undef GROUP
    if (!ld->oom)
        config_check_across(ld);
}

/* Parse path into ld->lc; syntax errors are reported.  Returns a
 * status. */
static int
config_parse(struct config_loader *ld, const char *path)
{
    char *text = NULL, *dir;
    size_t text_len = 0;
    char *slash;
    int result;

    result = config_read_text(path, &text, &text_len, &ld->errs);
    if (result)
        return result;

    ld->lc = malloc(sizeof(config_t));
    if (!ld->lc) {
        free(text);
        return PARLEY_ERR_OOM;
    }
    config_init(ld->lc);
    ld->cfg->lc = ld->lc;
    /* @include paths are relative to the file, not the working dir. */
    dir = strdup(path);
    if (!dir) {
        free(text);
        return PARLEY_ERR_OOM;
    }
    slash = strrchr(dir, '/');
    if (slash) {
        slash[1] = '\0';
        config_set_include_dir(ld->lc, dir);    /* copies it */
        ld->errs.dir = config_get_include_dir(ld->lc);
    }
    free(dir);

    if (config_read_file(ld->lc, path) != CONFIG_TRUE) {
        if (config_error_type(ld->lc) == CONFIG_ERR_FILE_IO)
            config_error_add(&ld->errs, NULL, "cannot read: %s",
                             config_error_text(ld->lc));
        else
            config_error_at(&ld->errs, config_error_file(ld->lc),
                            config_error_line(ld->lc), "%s",
                            config_error_text(ld->lc));
        free(text);
        return PARLEY_ERR_CONFIG;
    }
    config_scan_ints(ld, text, text_len, path);
    free(text);
    return PARLEY_OK;
}

int
config_load(struct config *cfg, const char *path, char *err, size_t errlen)
{
    struct config_loader ld;
    int result;

    if (err && errlen > 0)
        err[0] = '\0';
    memset(&ld, 0, sizeof(ld));
    ld.cfg = cfg;
    ld.errs.buf = err;
    ld.errs.len = errlen;
    ld.errs.path = path ? path : "(no file)";

    result = config_defaults(cfg);
    if (result)
        goto out;
    if (!path) {
        config_error_add(&ld.errs, NULL, "no configuration file given");
        result = PARLEY_ERR_CONFIG;
        goto out;
    }
    free(cfg->path);
    cfg->path = strdup(path);
    if (!cfg->path) {
        result = PARLEY_ERR_OOM;
        goto out;
    }
    result = config_parse(&ld, path);
    if (result)
        goto out;
    config_load_root(&ld);
    if (ld.oom)
        result = PARLEY_ERR_OOM;
    else if (ld.errs.count)
        result = PARLEY_ERR_CONFIG;

out:
    if (result == PARLEY_ERR_OOM) {
        config_errors_flush(&ld.errs);
        if (err && errlen > 0)
            snprintf(err, errlen, "%s: out of memory", ld.errs.path);
        return result;
    }
    config_errors_flush(&ld.errs);
    /* Defence in depth: the messages quote no values, but a secret the
     * logger knows must not reach a terminal through them either. */
    if (err && errlen > 0)
        log_redact(err, errlen);
    return result;
}

/* Strip one trailing "\n" or "\r\n" (files written by editors, echo). */
static void
config_strip_newline(char *buf, size_t *len)
{
    if (*len > 0 && buf[*len - 1] == '\n') {
        buf[--*len] = '\0';
        if (*len > 0 && buf[*len - 1] == '\r')
            buf[--*len] = '\0';
    }
}

/* Read a secret file: at most CONFIG_SECRET_MAX bytes. */
static int
config_secret_file(const char *var, const char *path, char **out,
                   char *err, size_t errlen)
{
    char *buf;
    size_t got = 0;
    int fd, saved;

    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        saved = errno;
        snprintf(err, errlen, "%s: cannot open %s: %s", var, path,
                 strerror(saved));
        return PARLEY_ERR_CONFIG;
    }
    /* One byte more than allowed, to tell "exactly the cap" from
     * "over it". */
    buf = malloc(CONFIG_SECRET_MAX + 2);
    if (!buf) {
        close(fd);
        snprintf(err, errlen, "%s: out of memory", var);
        return PARLEY_ERR_OOM;
    }
    for (;;) {
        ssize_t n = read(fd, buf + got, CONFIG_SECRET_MAX + 1 - got);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            saved = errno;
            close(fd);
            explicit_bzero(buf, CONFIG_SECRET_MAX + 2);
            free(buf);
            snprintf(err, errlen, "%s: cannot read %s: %s", var, path,
                     strerror(saved));
            return PARLEY_ERR_CONFIG;
        }
        if (n == 0)
            break;
        got += (size_t)n;
        if (got > CONFIG_SECRET_MAX)
            break;
    }
    close(fd);
    buf[got] = '\0';
    if (got > CONFIG_SECRET_MAX) {
        explicit_bzero(buf, CONFIG_SECRET_MAX + 2);
        free(buf);
        snprintf(err, errlen, "%s: %s is larger than %d bytes", var, path,
                 CONFIG_SECRET_MAX);
        return PARLEY_ERR_TOO_LARGE;
    }
    config_strip_newline(buf, &got);
    if (got == 0) {
        free(buf);
        snprintf(err, errlen, "%s: %s is empty", var, path);
        return PARLEY_ERR_CONFIG;
    }
    *out = buf;
    return PARLEY_OK;
}

int
config_secret_read(const char *name, char **out, char *err, size_t errlen)
{
    char file_var[CONFIG_ENV_NAME_MAX + sizeof("_FILE")];
    const char *value, *file;
    char dummy[1];
    int result;

    if (!err || errlen == 0) {
        err = dummy;
        errlen = sizeof(dummy);
    }
    err[0] = '\0';
    *out = NULL;
    if (!name || !config_env_name_valid(name) ||
        strlen(name) > CONFIG_ENV_NAME_MAX) {
        snprintf(err, errlen, "invalid environment variable name");
        return PARLEY_ERR_CONFIG;
    }
    snprintf(file_var, sizeof(file_var), "%s_FILE", name);

    value = getenv(name);
    file = getenv(file_var);
    /* An empty NAME (compose files often set NAME= ) counts as unset, so
     * that NAME_FILE still works beside it. */
    if (value && value[0] != '\0') {
        size_t len = strnlen(value, CONFIG_SECRET_MAX + 1);

        if (len > CONFIG_SECRET_MAX) {
            snprintf(err, errlen, "%s is longer than %d bytes", name,
                     CONFIG_SECRET_MAX);
            return PARLEY_ERR_TOO_LARGE;
        }
        if (file && file[0] != '\0')
            log_warn("both %s and %s are set; using %s", name, file_var,
                     name);
        *out = strndup(value, len);
        if (!*out) {
            snprintf(err, errlen, "%s: out of memory", name);
            return PARLEY_ERR_OOM;
        }
        config_strip_newline(*out, &len);
    } else if (file && file[0] != '\0') {
        result = config_secret_file(file_var, file, out, err, errlen);
        if (result)
            return result;
    } else {
        return PARLEY_OK;
    }

    /* The value goes into HTTP headers and protocol lines, where a line
     * break would let it inject a header or a command. */
    if (strpbrk(*out, "\r\n")) {
        explicit_bzero(*out, strlen(*out));
        free(*out);
        *out = NULL;
        snprintf(err, errlen, "%s%s contains a line break",
                 value && value[0] ? name : file_var,
                 value && value[0] ? "" : " (file)");
        return PARLEY_ERR_CONFIG;
    }
    return PARLEY_OK;
}

/* Wipe and free a secret string. */
static void
config_secret_free(char **secret)
{
    if (*secret) {
        explicit_bzero(*secret, strlen(*secret));
        free(*secret);
        *secret = NULL;
    }
}

int
config_secrets(struct config *cfg, char *err, size_t errlen)
{
    char *api_key = NULL, *password = NULL;
    int result;

    if (err && errlen > 0)
        err[0] = '\0';
    if (cfg->llm.api_key_env) {
        result = config_secret_read(cfg->llm.api_key_env, &api_key, err,
                                    errlen);
        if (result)
            goto fail;
    }
    if (cfg->redis.password_env) {
        result = config_secret_read(cfg->redis.password_env, &password,
                                    err, errlen);
        if (result)
            goto fail;
    }
    /* Redaction must be in place before anything can print the value;
     * a full table fails closed rather than log a secret later. */
    if ((api_key && log_add_secret(api_key) != 0) ||
        (password && log_add_secret(password) != 0)) {
        if (err && errlen > 0)
            snprintf(err, errlen, "cannot register secrets for redaction "
                     "(more than %d secrets)", LOG_SECRETS_MAX);
        result = PARLEY_ERR_CONFIG;
        goto fail;
    }
    config_secret_free(&cfg->api_key);
    config_secret_free(&cfg->redis_password);
    cfg->api_key = api_key;
    cfg->redis_password = password;
    return PARLEY_OK;

fail:
    config_secret_free(&api_key);
    config_secret_free(&password);
    return result == PARLEY_ERR_OOM ? PARLEY_ERR_OOM : PARLEY_ERR_CONFIG;
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

void
config_free(struct config *cfg)
{
    size_t i;

    if (!cfg)
        return;
    config_secret_free(&cfg->api_key);
    config_secret_free(&cfg->redis_password);
    free(cfg->path);
    free(cfg->bot.name);
    free(cfg->bot.log_level);
    free(cfg->bot.log_format);
    free(cfg->metrics.listen);
    free(cfg->redis.host);
    free(cfg->redis.unix_socket);
    free(cfg->redis.password_env);
    free(cfg->redis.prefix);
    free(cfg->llm.base_url);
    free(cfg->llm.model);
    config_free_models(cfg->llm.allowed_models, cfg->llm.n_allowed_models);
    free(cfg->llm.api_key_env);
    free(cfg->prompts.system);
    free(cfg->prompts.greeting);
    config_free_fewshot(cfg->prompts.fewshot, cfg->prompts.n_fewshot);
    for (i = 0; i < cfg->n_rooms; i++) {
        free(cfg->rooms[i].room);
        free(cfg->rooms[i].model);
        free(cfg->rooms[i].system);
    }
    free(cfg->rooms);
    config_free_adapters(cfg);
    if (cfg->lc) {
        config_destroy(cfg->lc);
        free(cfg->lc);
    }
    memset(cfg, 0, sizeof(*cfg));
}
