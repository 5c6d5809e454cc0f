/*
 * bot.conf -> struct config: read the file with libconfig, walk the top
 * level (core groups in config_keys.c, "rooms" in config_rooms.c,
 * "adapters" in config_adapters.c), and hand back every problem at once
 * as "FILE:LINE: key.path: message" (config_report.c).  Also the
 * built-in defaults and config_free.
 *
 * libconfig 1.5 silently wraps integers beyond 32 bits (port = 9999999999
 * reads as 1410065407), so the raw file is scanned for such literals as
 * well; @include'd files are parsed but not scanned.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config_loader.h"
#include "log.h"
#include "status.h"

/* bot.conf is a few kilobytes; the cap stops a wrong path (a log file,
 * /dev/zero) from being read into memory. */
#define CONFIG_FILE_MAX      (1024 * 1024)

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
    cfg->ha.lease_ms = 8000;

    cfg->llm.base_url = strdup("https://api.openai.com/v1");
    cfg->llm.model = strdup("gpt-4o-mini");
    cfg->llm.allowed_models = calloc(2, sizeof(char *));
    if (cfg->llm.allowed_models) {
        cfg->llm.allowed_models[0] = strdup("gpt-4o-mini");
        if (cfg->llm.allowed_models[0])
            cfg->llm.n_allowed_models = 1;
    }
    cfg->llm.api_key_env = strdup("OPENAI_API_KEY");
    cfg->llm.model_switch = strdup("operators");
    cfg->llm.temperature = 0.7;
    cfg->llm.max_tokens = 800;
    cfg->llm.connect_timeout_ms = 10000;
    cfg->llm.timeout_ms = 120000;
    cfg->llm.stream_idle_timeout_ms = 30000;
    cfg->llm.max_retries = 4;
    cfg->llm.backoff_base_ms = 500;
    cfg->llm.backoff_max_ms = 30000;
    cfg->llm.max_concurrent = 16;
    cfg->llm.image_max_bytes = 10 * 1024 * 1024;

    cfg->context.max_turns = 40;
    cfg->context.max_tokens = 3000;
    cfg->context.ttl_s = 30 * 24 * 3600;
    cfg->context.max_parallel_per_room = 8;

    cfg->ha.share_work = 0;
    cfg->ha.claim_idle_ms = 30000;

    cfg->prompts.system = strdup(CONFIG_DEFAULT_SYSTEM);
    cfg->prompts.greeting = strdup(CONFIG_DEFAULT_GREETING);

    cfg->limits.user_requests_per_minute = 10;
    cfg->limits.user_daily_tokens = 0;

    cfg->adapters = calloc(1, sizeof(*cfg->adapters));
    if (cfg->adapters) {
        cfg->adapters[0].type = strdup("console");
        cfg->adapters[0].greet.on_join = 1;
        cfg->adapters[0].greet.members_max = CONFIG_GREET_MEMBERS_MAX;
        if (cfg->adapters[0].type)
            cfg->n_adapters = 1;
    }

    if (!cfg->path || !cfg->bot.name || !cfg->bot.log_level ||
        !cfg->redis.host || !cfg->redis.prefix || !cfg->llm.base_url ||
        !cfg->llm.model || cfg->llm.n_allowed_models != 1 ||
        !cfg->llm.api_key_env || !cfg->llm.model_switch ||
        !cfg->prompts.system ||
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
    config_setting_t *root = config_root_setting(ld->lc);
    int i, n = config_setting_length(root);

    for (i = 0; i < n && !ld->oom; i++) {
        config_setting_t *s = config_setting_get_elem(root, (unsigned)i);
        const char *name = config_setting_name(s);

        if (config_load_core_group(ld, name, s))
            continue;
        if (strcmp(name, "rooms") == 0)
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
void
config_free(struct config *cfg)
{
    if (!cfg)
        return;
    config_secret_free(&cfg->api_key);
    config_secret_free(&cfg->redis_password);
    config_secret_free(&cfg->sentinel_password);
    free(cfg->path);
    free(cfg->bot.name);
    free(cfg->bot.log_level);
    free(cfg->bot.log_format);
    free(cfg->metrics.listen);
    free(cfg->redis.host);
    free(cfg->redis.unix_socket);
    free(cfg->redis.password_env);
    free(cfg->redis.prefix);
    config_free_redis_sentinels(&cfg->redis);
    free(cfg->redis.master_name);
    free(cfg->redis.sentinel_password_env);
    free(cfg->llm.base_url);
    free(cfg->llm.model);
    config_free_models(cfg->llm.allowed_models, cfg->llm.n_allowed_models);
    config_free_models(cfg->llm.vision_models, cfg->llm.n_vision_models);
    free(cfg->llm.api_key_env);
    free(cfg->llm.model_switch);
    free(cfg->prompts.system);
    free(cfg->prompts.greeting);
    config_free_fewshot(cfg->prompts.fewshot, cfg->prompts.n_fewshot);
    config_free_rooms(cfg);
    config_free_adapters(cfg);
    free(cfg->warnings);
    if (cfg->lc) {
        config_destroy(cfg->lc);
        free(cfg->lc);
    }
    memset(cfg, 0, sizeof(*cfg));
}
