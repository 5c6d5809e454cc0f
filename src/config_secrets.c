/*
 * Secrets never come from bot.conf: it names environment variables
 * (llm.api_key_env, redis.password_env), and config_secrets() reads each
 * from NAME or, when NAME is unset or empty, from the file named by
 * NAME_FILE (Docker secrets), bounded by CONFIG_SECRET_MAX, rejecting line
 * breaks, and registers the values with the logger's redaction before
 * anything can print them.  Secret buffers are wiped before they are
 * freed.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config_loader.h"
#include "log.h"
#include "status.h"

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
void
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
    char *api_key = NULL, *password = NULL, *sentinel = NULL;
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
    if (cfg->redis.sentinel_password_env) {
        result = config_secret_read(cfg->redis.sentinel_password_env,
                                    &sentinel, err, errlen);
        if (result)
            goto fail;
    }
    /* Redaction must be in place before anything can print the value;
     * a full table fails closed rather than log a secret later. */
    if ((api_key && log_add_secret(api_key) != 0) ||
        (password && log_add_secret(password) != 0) ||
        (sentinel && log_add_secret(sentinel) != 0)) {
        if (err && errlen > 0)
            snprintf(err, errlen, "cannot register secrets for redaction "
                     "(more than %d secrets)", LOG_SECRETS_MAX);
        result = PARLEY_ERR_CONFIG;
        goto fail;
    }
    config_secret_free(&cfg->api_key);
    config_secret_free(&cfg->redis_password);
    config_secret_free(&cfg->sentinel_password);
    cfg->api_key = api_key;
    cfg->redis_password = password;
    cfg->sentinel_password = sentinel;
    return PARLEY_OK;

fail:
    config_secret_free(&api_key);
    config_secret_free(&password);
    config_secret_free(&sentinel);
    return result == PARLEY_ERR_OOM ? PARLEY_ERR_OOM : PARLEY_ERR_CONFIG;
}

