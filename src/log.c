/*
 * Levelled logging to stderr, one event per line:
 *
 *     2026-11-26T13:45:27.123Z INFO message
 *
 * Each line is built in a fixed buffer of LOG_LINE_MAX bytes and written
 * with a single write(2), so lines from a helper thread (metrics) never
 * interleave.  Before it is written, the message goes through the same
 * redaction as log_redact(): every registered secret becomes "[redacted]",
 * including a secret cut in half by truncation.  Control characters are
 * then escaped (CR and LF as \r and \n, others as \xHH) so that text from
 * a chat user or a server can never forge a second log line or move a
 * terminal's cursor.  A backslash is left as it is: the escapes make the
 * line unambiguous about where it ends, which is what matters for log
 * collectors, and operators read Windows-style paths and regexes as typed.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "status.h"

/* First size of the secret table; it doubles up to LOG_SECRETS_MAX. */
#define LOG_SECRETS_INITIAL 16

/* What a secret is replaced with. */
#define LOG_REDACTED "[redacted]"

/* Appended when a line had to be cut at LOG_LINE_MAX. */
#define LOG_TRUNCATED " [truncated]"

/* Strings up to this size are redacted in a stack buffer; longer ones
 * (error bodies passed to log_redact) use the heap. */
#define LOG_REDACT_STACK 1024

struct log_secret {
    char *value;            /* own copy, wiped when the last ref goes */
    size_t len;
    size_t refs;            /* registrations not yet removed */
};

static enum log_level log_min_level = LOG_LEVEL_INFO;
static enum log_format log_out_format = LOG_FORMAT_TEXT;
static struct log_secret *log_secrets;     /* log_cap_secrets slots */
static size_t log_n_secrets;
static size_t log_cap_secrets;

/* Guards the secret table and the level; the loop thread registers
 * secrets while a metrics thread may already be logging. */
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *const log_json_levels[] = {
    "debug", "info", "warn", "error"
};

void
log_set_format(enum log_format format)
{
    pthread_mutex_lock(&log_lock);
    log_out_format = format;
    pthread_mutex_unlock(&log_lock);
}

int
log_format_parse(const char *name, enum log_format *out)
{
    if (name && strcmp(name, "text") == 0)
        *out = LOG_FORMAT_TEXT;
    else if (name && strcmp(name, "json") == 0)
        *out = LOG_FORMAT_JSON;
    else
        return -1;
    return 0;
}

static const char *const log_level_names[] = {
    [LOG_LEVEL_DEBUG] = "DEBUG",
    [LOG_LEVEL_INFO] = "INFO",
    [LOG_LEVEL_WARN] = "WARN",
    [LOG_LEVEL_ERROR] = "ERROR",
};

void
log_set_level(enum log_level level)
{
    if (level < LOG_LEVEL_DEBUG || level > LOG_LEVEL_ERROR)
        return;
    pthread_mutex_lock(&log_lock);
    log_min_level = level;
    pthread_mutex_unlock(&log_lock);
}

enum log_level
log_get_level(void)
{
    enum log_level level;

    pthread_mutex_lock(&log_lock);
    level = log_min_level;
    pthread_mutex_unlock(&log_lock);
    return level;
}

int
log_level_parse(const char *name, enum log_level *out)
{
    static const struct {
        const char *name;
        enum log_level level;
    } names[] = {
        { "debug", LOG_LEVEL_DEBUG },
        { "info", LOG_LEVEL_INFO },
        { "warn", LOG_LEVEL_WARN },
        { "warning", LOG_LEVEL_WARN },
        { "error", LOG_LEVEL_ERROR },
    };
    size_t i;

    if (!name || !out)
        return -1;
    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (strcasecmp(name, names[i].name) == 0) {
            *out = names[i].level;
            return 0;
        }
    }
    return -1;
}

int
log_add_secret(const char *secret)
{
    size_t i, len;
    char *copy;
    int result = PARLEY_OK;

    if (!secret)
        return PARLEY_OK;
    len = strlen(secret);
    if (len < LOG_SECRET_MIN)
        return PARLEY_OK;
    pthread_mutex_lock(&log_lock);
    for (i = 0; i < log_n_secrets; i++) {
        if (log_secrets[i].len == len &&
            memcmp(log_secrets[i].value, secret, len) == 0) {
            log_secrets[i].refs++;  /* a reload or a shared key */
            goto out;
        }
    }
    if (log_n_secrets == LOG_SECRETS_MAX) {
        result = PARLEY_ERR_TOO_LARGE;
        goto out;
    }
    if (log_n_secrets == log_cap_secrets) {
        size_t cap = log_cap_secrets ? 2 * log_cap_secrets
                                     : LOG_SECRETS_INITIAL;
        struct log_secret *grown;

        if (cap > LOG_SECRETS_MAX)
            cap = LOG_SECRETS_MAX;
        /* The table holds pointers and lengths only: the secret bytes
         * do not move, so realloc leaves no copy of them behind. */
        grown = realloc(log_secrets, cap * sizeof(*grown));
        if (!grown) {
            result = PARLEY_ERR_OOM;
            goto out;
        }
        log_secrets = grown;
        log_cap_secrets = cap;
    }
    copy = malloc(len + 1);
    if (!copy) {
        result = PARLEY_ERR_OOM;
        goto out;
    }
    memcpy(copy, secret, len + 1);
    log_secrets[log_n_secrets].value = copy;
    log_secrets[log_n_secrets].len = len;
    log_secrets[log_n_secrets].refs = 1;
    log_n_secrets++;
out:
    pthread_mutex_unlock(&log_lock);
    return result;
}

int
log_remove_secret(const char *secret)
{
    size_t i, len;
    int result = PARLEY_ERR_STATE;

    if (!secret)
        return PARLEY_ERR_STATE;
    len = strlen(secret);
    pthread_mutex_lock(&log_lock);
    for (i = 0; i < log_n_secrets; i++) {
        struct log_secret *s = &log_secrets[i];

        if (s->len != len || memcmp(s->value, secret, len) != 0)
            continue;
        result = PARLEY_OK;
        if (--s->refs > 0)
            break;
        explicit_bzero(s->value, s->len);
        free(s->value);
        /* Order does not matter: move the last entry into the hole. */
        log_secrets[i] = log_secrets[log_n_secrets - 1];
        memset(&log_secrets[log_n_secrets - 1], 0, sizeof(*s));
        log_n_secrets--;
        break;
    }
    pthread_mutex_unlock(&log_lock);
    return result;
}

void
log_forget_secrets(void)
{
    size_t i;

    pthread_mutex_lock(&log_lock);
    for (i = 0; i < log_n_secrets; i++) {
        explicit_bzero(log_secrets[i].value, log_secrets[i].len);
        free(log_secrets[i].value);
    }
    free(log_secrets);
    log_secrets = NULL;
    log_n_secrets = 0;
    log_cap_secrets = 0;
    pthread_mutex_unlock(&log_lock);
}

/*
 * Copy in[0..inlen) to out (capacity outlen, always NUL-terminated),
 * replacing every byte covered by an occurrence of a secret with one
 * "[redacted]" per covered run.  Overlapping or adjacent secrets are
 * covered as one run, so no tail of a second secret survives next to the
 * first.  When cut is set, the input was itself truncated: a tail that is
 * the beginning of a secret counts as covered too.  Output that does not
 * fit is dropped whole (never half a "[redacted]", never raw secret bytes).
 * Returns 1 if output was dropped.  Caller holds log_lock.
 */
static int
log_redact_copy(const char *in, size_t inlen, int cut, char *out,
                size_t outlen)
{
    size_t i, j, o = 0, cover_end = 0;
    int in_run = 0, dropped = 0;

    if (outlen == 0)
        return inlen > 0;
    for (i = 0; i < inlen; i++) {
        for (j = 0; j < log_n_secrets; j++) {
            const struct log_secret *s = &log_secrets[j];
            size_t left = inlen - i;

            /* Cheap test first: every line meets every secret. */
            if (in[i] != s->value[0])
                continue;
            if (left >= s->len) {
                if (memcmp(in + i, s->value, s->len) == 0 &&
                    i + s->len > cover_end)
                    cover_end = i + s->len;
            } else if (cut && memcmp(in + i, s->value, left) == 0) {
                cover_end = inlen;
            }
        }
        if (i < cover_end) {
            if (!in_run) {
                size_t rl = sizeof(LOG_REDACTED) - 1;

                in_run = 1;
                if (o + rl >= outlen) {
                    dropped = 1;
                    break;
                }
                memcpy(out + o, LOG_REDACTED, rl);
                o += rl;
            }
            continue;
        }
        in_run = 0;
        if (o + 1 >= outlen) {
            dropped = 1;
            break;
        }
        out[o++] = in[i];
    }
    out[o] = '\0';
    return dropped;
}

void
log_redact(char *buf, size_t len)
{
    char stack[LOG_REDACT_STACK];
    char *copy = stack;
    size_t n;

    if (!buf || len == 0)
        return;
    n = strnlen(buf, len);
    if (n == len) {
        /* Not terminated within its capacity: terminate, treating the
         * last byte as cut off. */
        n = len - 1;
        buf[n] = '\0';
    }
    pthread_mutex_lock(&log_lock);
    if (log_n_secrets == 0)
        goto out;
    if (n + 1 > sizeof(stack)) {
        copy = malloc(n + 1);
        if (!copy) {
            /* Cannot prove the text is clean: drop it rather than risk
             * showing a secret. */
            snprintf(buf, len, "%s", LOG_REDACTED);
            goto out;
        }
    }
    memcpy(copy, buf, n + 1);
    log_redact_copy(copy, n, 0, buf, len);
    explicit_bzero(copy, n + 1);
    if (copy != stack)
        free(copy);
out:
    pthread_mutex_unlock(&log_lock);
}

/*
 * Append the escaped form of msg to line at *pos without going past cap
 * bytes.  Stops before an escape that would not fit, and before
 * a UTF-8 sequence that would be cut, so the result stays valid UTF-8
 * when msg is.  Returns 1 if something was left out.
 */
static int
log_escape(char *line, size_t *pos, size_t cap, const char *msg, int json)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)msg;
    size_t o = *pos;

    while (*p) {
        char esc[4];
        size_t n = 1;

        char uesc[6];

        if (*p == '\r' || *p == '\n') {
            esc[0] = '\\';
            esc[1] = *p == '\r' ? 'r' : 'n';
            n = 2;
        } else if (json && (*p == '"' || *p == '\\' || *p == '\t')) {
            esc[0] = '\\';
            esc[1] = *p == '\t' ? 't' : (char)*p;
            n = 2;
        } else if (json && (*p < 0x20 || *p == 0x7f)) {
            /* JSON has no \x escape. */
            memcpy(uesc, "\\u00", 4);
            uesc[4] = hex[*p >> 4];
            uesc[5] = hex[*p & 0xf];
            if (o + 6 > cap) {
                *pos = o;
                return 1;
            }
            memcpy(line + o, uesc, 6);
            o += 6;
            p++;
            continue;
        } else if ((*p < 0x20 && *p != '\t') || *p == 0x7f) {
            esc[0] = '\\';
            esc[1] = 'x';
            esc[2] = hex[*p >> 4];
            esc[3] = hex[*p & 0xf];
            n = 4;
        } else {
            /* Copy a multibyte character whole, or not at all. */
            if (*p >= 0xc0)
                while (n < 4 && p[n] >= 0x80 && p[n] < 0xc0)
                    n++;
            if (o + n > cap) {
                *pos = o;
                return 1;
            }
            memcpy(line + o, p, n);
            o += n;
            p += n;
            continue;
        }
        if (o + n > cap) {
            *pos = o;
            return 1;
        }
        memcpy(line + o, esc, n);
        o += n;
        p++;
    }
    *pos = o;
    return 0;
}

/* Write all of buf to stderr; a failing stderr cannot be reported. */
static void
log_write(const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(STDERR_FILENO, buf, len);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        buf += n;
        len -= (size_t)n;
    }
}

/*
 * Append the room fields: ,"platform":"..","room":".." for JSON, or
 * "[platform room] " for text.  Both are capped at LOG_FIELD_MAX so the
 * message keeps most of the line.
 */
#define LOG_FIELD_MAX 256

static void
log_room_fields(char *line, size_t *pos, const char *platform,
                const char *room, int json)
{
    if (json) {
        memcpy(line + *pos, "\"platform\":\"", 12);
        *pos += 12;
        log_escape(line, pos, *pos + LOG_FIELD_MAX, platform, 1);
        memcpy(line + *pos, "\",\"room\":\"", 10);
        *pos += 10;
        log_escape(line, pos, *pos + LOG_FIELD_MAX, room, 1);
        memcpy(line + *pos, "\",", 2);
        *pos += 2;
    } else {
        line[(*pos)++] = '[';
        log_escape(line, pos, *pos + LOG_FIELD_MAX, platform, 0);
        line[(*pos)++] = ' ';
        log_escape(line, pos, *pos + LOG_FIELD_MAX, room, 0);
        line[(*pos)++] = ']';
        line[(*pos)++] = ' ';
    }
}

static void
log_vemit(enum log_level level, const char *platform, const char *room,
          const char *fmt, va_list ap)
{
    char raw[LOG_LINE_MAX];
    char clean[LOG_LINE_MAX];
    char line[LOG_LINE_MAX];
    struct timespec ts;
    struct tm tm;
    size_t pos, cap;
    int saved_errno = errno;   /* callers log and then test errno */
    int n, cut, json;

    if (level < LOG_LEVEL_DEBUG || level > LOG_LEVEL_ERROR)
        level = LOG_LEVEL_ERROR;
    if (level < log_get_level())
        return;

    n = vsnprintf(raw, sizeof(raw), fmt, ap);
    if (n < 0) {
        snprintf(raw, sizeof(raw), "(unformattable log message)");
        n = 0;
    }
    cut = (size_t)n >= sizeof(raw);

    pthread_mutex_lock(&log_lock);
    if (log_redact_copy(raw, strlen(raw), cut, clean, sizeof(clean)))
        cut = 1;
    pthread_mutex_unlock(&log_lock);
    explicit_bzero(raw, sizeof(raw));

    if (clock_gettime(CLOCK_REALTIME, &ts) != 0) {
        ts.tv_sec = 0;
        ts.tv_nsec = 0;
    }
    if (!gmtime_r(&ts.tv_sec, &tm))
        memset(&tm, 0, sizeof(tm));
    json = log_out_format == LOG_FORMAT_JSON;
    pos = json ? (size_t)snprintf(line, sizeof(line), "{\"ts\":\"") : 0;
    pos += strftime(line + pos, sizeof(line) - pos, "%Y-%m-%dT%H:%M:%S",
                    &tm);
    n = snprintf(line + pos, sizeof(line) - pos,
                 json ? ".%03ldZ\",\"level\":\"%s\"," : ".%03ldZ %s ",
                 (long)(ts.tv_nsec / 1000000), json ?
                 log_json_levels[level] : log_level_names[level]);
    if (n > 0 && (size_t)n < sizeof(line) - pos)
        pos += (size_t)n;
    if (platform || room)
        log_room_fields(line, &pos, platform ? platform : "",
                        room ? room : "", json);
    if (json) {
        memcpy(line + pos, "\"msg\":\"", 7);
        pos += 7;
    }

    /* Keep room for the marker, the JSON closing and the newline: a whole
     * line, newline included, is at most LOG_LINE_MAX bytes. */
    cap = sizeof(line) - (sizeof(LOG_TRUNCATED) - 1) - 1 - (json ? 2 : 0);
    if (log_escape(line, &pos, cap, clean, json))
        cut = 1;
    explicit_bzero(clean, sizeof(clean));
    if (cut) {
        memcpy(line + pos, LOG_TRUNCATED, sizeof(LOG_TRUNCATED) - 1);
        pos += sizeof(LOG_TRUNCATED) - 1;
    }
    if (json) {
        line[pos++] = '"';
        line[pos++] = '}';
    }
    line[pos++] = '\n';
    log_write(line, pos);
    errno = saved_errno;
}

void
log_msg(enum log_level level, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    log_vemit(level, NULL, NULL, fmt, ap);
    va_end(ap);
}

void
log_room(enum log_level level, const char *platform, const char *room,
         const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    log_vemit(level, platform, room, fmt, ap);
    va_end(ap);
}
