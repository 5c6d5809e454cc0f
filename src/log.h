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
 * keeps its own copy (wiped by log_remove_secret or log_forget_secrets).
 * Secrets shorter than LOG_SECRET_MIN bytes are ignored, as redacting
 * them would mangle ordinary text.  Registering a known secret again
 * counts a reference: it stays redacted until removed as often.
 *
 * Fails closed: PARLEY_ERR_TOO_LARGE when LOG_SECRETS_MAX distinct
 * secrets are already registered, PARLEY_ERR_OOM when the table cannot
 * grow.  A caller that gets an error must not use the secret (refuse to
 * start, or refuse that token): it would reach the log in clear.
 */
#define LOG_SECRET_MIN 4
/* The table starts small and doubles up to this.  Every log line is
 * scanned for every secret, and what a configuration can name (API key,
 * Redis and SASL passwords, channel keys, one live token per Matrix
 * account) is far below it; reaching it means tokens are being added and
 * never removed, which should fail loudly rather than grow forever. */
#define LOG_SECRETS_MAX 512
int log_add_secret(const char *secret);
/*
 * Drop one reference to a secret that is no longer used (an access
 * token replaced by a new login); at the last one its copy is wiped and
 * it is no longer redacted.  Returns PARLEY_OK, or PARLEY_ERR_STATE when
 * the secret was not registered (short ones never are).
 */
int log_remove_secret(const char *secret);
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
