/*
 * Private to the config_*.c files: the state of one config_load and the
 * helpers they share.  config.h stays the only API; this header exists so
 * that config.c could be split by job:
 *
 *   config_load.c     reading the file, the top-level walk, defaults,
 *                     integer literals libconfig would wrap, config_free
 *   config_report.c   collecting, sorting and writing the error lines
 *   config_keys.c     key tables of the core groups and their validators
 *   config_rooms.c    the "rooms" list and lookups in it
 *   config_adapters.c the "adapters" list: registry types and each
 *                     adapter's validate hook
 *   config_greet.c    the greeting keys every adapter block shares
 *   config_secrets.c  secrets from the environment or NAME_FILE
 *   config_redis.c    redis.sentinels and the Sentinel checks
 */
#ifndef PARLEY_CONFIG_LOADER_H
#define PARLEY_CONFIG_LOADER_H

#include <libconfig.h>
#include <stddef.h>

#include "config.h"

/* One-line values: names, hosts, models, room keys.  Long enough for any
 * real one; a longer value is a paste gone wrong. */
#define CONFIG_NAME_MAX      256

/* Environment variable names (api_key_env, password_env). */
#define CONFIG_ENV_NAME_MAX  128

/* One error line, and the dotted key path inside it. */
#define CONFIG_ERR_LINE_MAX  768
#define CONFIG_KEY_PATH_MAX  256

/* Integer settings whose literal overflowed (see config_load.c); their
 * wrapped values are not range-checked again.  More than this many in one
 * file are still reported, only the key path may be missing. */
#define CONFIG_BAD_INTS_MAX  64

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

/* ---- config_report.c ---- */

/* Dotted path of a setting: "llm.model", "rooms[2].room". */
void config_key_path(const config_setting_t *s, char *buf, size_t len);
/* Report a problem as "FILE:LINE: key.path: message" (s NULL: "FILE:
 * message"). */
void config_error_add(struct config_errors *e, const config_setting_t *s,
                      const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Report a problem at a line that has no setting (syntax errors). */
void config_error_at(struct config_errors *e, const char *file, int line,
                     const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* A message for a key the file may not contain (s NULL: named by key). */
void config_error_key(struct config_errors *e, const config_setting_t *s,
                      const char *key, const char *msg);
/* Take finished lines ("FILE:LINE: key: message\n...") written by an
 * adapter's validate hook; each counts as one problem. */
void config_error_lines(struct config_errors *e, const char *text);
/* Write the sorted lines into the caller's buffer and free them. */
void config_errors_flush(struct config_errors *e);

/* ---- config_keys.c ---- */

/* Load a top-level group of the core (bot, redis, llm, ...) if name is
 * one; returns 0 when name is not a core group. */
int config_load_core_group(struct config_loader *ld, const char *name,
                           const config_setting_t *s);
/* Checks across keys, run after the whole file was walked. */
void config_check_across(struct config_loader *ld);
/* Names that hold a secret; they must never appear in the file. */
int config_is_secret_name(const char *name);
void config_secret_key_error(struct config_loader *ld,
                             const config_setting_t *s, const char *group);
/* Report keys of an entry group (fewshot, rooms) not in names[]. */
int config_check_members(struct config_loader *ld, const config_setting_t *g,
                         const char *const *names, size_t n_names);
/* A string member of an entry group, checked; NULL if absent/invalid. */
const char *config_member_text(struct config_loader *ld,
                               const config_setting_t *g, const char *name,
                               int required, size_t one_line_max);
int config_is_bad_int(const struct config_loader *ld,
                      const config_setting_t *s);
int config_env_name_valid(const char *s);
void config_free_models(char **models, size_t n);
void config_free_fewshot(struct config_fewshot *fs, size_t n);

/* ---- config_rooms.c ---- */

void config_load_rooms(struct config_loader *ld, const config_setting_t *s);
void config_free_rooms(struct config *cfg);

/* ---- config_adapters.c ---- */

void config_load_adapters(struct config_loader *ld, config_setting_t *s);
void config_free_adapters(struct config *cfg);
/* Whether name is the type of a registered adapter. */
int config_is_adapter_type(const char *name);

/* ---- config_greet.c ---- */

/* The greeting keys of adapter block e into g (defaults for absent
 * keys); errors are reported, old names noted in cfg->warnings. */
void config_load_greet(struct config_loader *ld, const config_setting_t *e,
                       struct config_greet *g);

/* The "stream" key of adapter block e: 1, 0, or -1 when absent.  An
 * adapter that cannot stream (no ADAPTER_CAP_STREAM) may only say
 * false; true is reported as an error. */
int config_load_stream(struct config_loader *ld, const config_setting_t *e,
                       int can_stream);

/* ---- config_redis.c ---- */

/* redis.sentinels into r->sentinels (replaced only when every entry is
 * valid; errors are reported at the entry). */
void config_take_sentinels(struct config_loader *ld,
                           const config_setting_t *s, struct config_redis *r);
/* Sentinel mode against a fixed address, and keys that need each other. */
void config_check_redis(struct config_loader *ld);

/* ---- config_secrets.c ---- */

/* Wipe and free a secret string. */
void config_secret_free(char **secret);

#endif
