/*
 * Levelled logging to stderr with timestamps.  Every line passes through a
 * redaction step that replaces registered secrets (API keys, passwords,
 * access tokens) with "[redacted]", so a secret that slips into an error
 * message from a library still never reaches the log.
 */
#ifndef PARLEY_LOG_H
#define PARLEY_LOG_H

#include <stddef.h>

enum log_level {
    LOG_LEVEL_DEBUG = 0,
    LOG_LEVEL_INFO,
    LOG_LEVEL_WARN,
    LOG_LEVEL_ERROR
};

/* Longest line the logger writes; longer messages are truncated. */
#define LOG_LINE_MAX 4096

/* Set the minimum level printed (default INFO). */
void log_set_level(enum log_level level);
enum log_level log_get_level(void);

/* Text lines ("TIME LEVEL message") or JSON lines ({"ts","level","msg"})
 * for log collectors; default text. */
enum log_format {
    LOG_FORMAT_TEXT = 0,
    LOG_FORMAT_JSON
};
void log_set_format(enum log_format format);
/* Parse "text" or "json".  Returns 0 or -1. */
int log_format_parse(const char *name, enum log_format *out);

/* Parse "debug", "info", "warn"/"warning", "error".  Returns 0 or -1. */
int log_level_parse(const char *name, enum log_level *out);

/*
 * Register a secret to be redacted from every later log line.  The logger
 * keeps its own copy (wiped by log_forget_secrets).  Secrets shorter than 4
 * bytes are ignored, as redacting them would mangle ordinary text.
 * Returns 0, or -1 when the table (LOG_SECRETS_MAX entries) is full.
 */
#define LOG_SECRETS_MAX 16
int log_add_secret(const char *secret);
void log_forget_secrets(void);

/*
 * Replace every registered secret in buf (NUL-terminated, capacity len)
 * with "[redacted]", in place, truncating if needed.  Exposed so that
 * user-visible error texts can be scrubbed the same way.
 */
void log_redact(char *buf, size_t len);

void log_msg(enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/*
 * One event about a room: platform and room become fields of a JSON line
 * ({"ts","level","platform","room","msg"}) and a "[platform room] "
 * prefix of a text line, so logs can be filtered per room.
 */
void log_room(enum log_level level, const char *platform, const char *room,
              const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#define log_debug(...) log_msg(LOG_LEVEL_DEBUG, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_LEVEL_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_LEVEL_ERROR, __VA_ARGS__)

#endif
