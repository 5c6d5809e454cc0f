/*
 * bot.conf (libconfig syntax) -> struct config.  Loading validates every
 * key and reports each problem as "FILE:LINE: key: what is wrong", all of
 * them at once, so an operator fixes a file in one pass.  Secrets are never
 * read from the file: it names environment variables, and config_secrets()
 * reads NAME or, when NAME is unset, the file named by NAME_FILE (Docker
 * secrets).  Each entry of the "adapters" list is checked in the same
 * pass: its type against the adapter registry (adapters/registry.c), the
 * greeting keys every platform shares here, and the rest by the adapter's
 * own validate hook; the adapter parses its block again from the libconfig
 * setting kept here when it is created, so adding a platform does not
 * touch these files.  The code is split by job over config_*.c (see
 * config_loader.h).
 */
#ifndef PARLEY_CONFIG_H
#define PARLEY_CONFIG_H

#include <stddef.h>

/* Limits on what a config may hold; each exists so that a typo cannot make
 * the process allocate without bound. */
#define CONFIG_MAX_MODELS    64
#define CONFIG_MAX_FEWSHOT   32
#define CONFIG_MAX_ROOMS     4096
#define CONFIG_MAX_ADAPTERS  64
#define CONFIG_TEXT_MAX      (64 * 1024)   /* one prompt text */
#define CONFIG_SECRET_MAX    4096          /* one secret value or file */

struct config_bot {
    char *name;             /* display name / nick the bot answers to */
    char *log_level;        /* "debug", "info", "warn", "error" */
    char *log_format;       /* "text" (default) or "json" */
};

struct config_metrics {
    char *listen;           /* "127.0.0.1:9464"; NULL = no endpoint */
};

/* One "host:port" of redis.sentinels; host is a name or an IP (an IPv6
 * address written "[::1]:26379" is stored without the brackets). */
struct config_hostport {
    char *host;
    int port;
};

/* Several instances on one Redis (ha.*, README "Several instances").
 * enabled: each IRC/Matrix account is connected by the one instance
 * holding its lease.  share_work: chat jobs go through the shared stream
 * work:jobs and any instance's workers may ask the model (src/work.h).
 * Both off, one instance works exactly as alone. */
struct config_ha {
    int enabled;            /* ha.enabled, default 0: no leases */
    int lease_ms;           /* ha.lease_ms, default 8000: a takeover
                               after a crash takes about this long */
    int share_work;         /* default 0 */
    int claim_idle_ms;      /* a worker's job idle this long is taken over
                               by another (XAUTOCLAIM), default 30000 */
};

struct config_redis {
    char *host;             /* default "127.0.0.1"; ignored if unix_socket
                               or sentinels */
    int port;               /* default 6379 */
    char *unix_socket;      /* NULL unless set */
    int db;                 /* SELECT index, default 0 */
    char *password_env;     /* env var holding the password, or NULL */
    char *prefix;           /* key prefix, default "parley:" */
    int dedupe_ttl_s;       /* seen:<event id> lifetime, default 86400 */
    /* Sentinel mode (src/store_sentinel.c): the master's address comes
     * from these sentinels, asked in turn; n_sentinels 0 = fixed host. */
    struct config_hostport *sentinels;  /* owned array */
    size_t n_sentinels;
    char *master_name;      /* the name the sentinels monitor; NULL unless
                               sentinels are set */
    char *sentinel_password_env; /* env var with the sentinels' password */
};

struct config_llm {
    char *base_url;         /* e.g. "https://api.openai.com/v1" (no slash) */
    char *model;            /* default model */
    char **allowed_models;  /* !model accepts only these; model included */
    size_t n_allowed_models;
    char *api_key_env;      /* default "OPENAI_API_KEY" */
    double temperature;     /* default 0.7; < 0 means "do not send" */
    int max_tokens;         /* completion cap, 0 = do not send */
    int connect_timeout_ms; /* default 10000 */
    int timeout_ms;         /* whole request, default 120000 */
    int stream_idle_timeout_ms; /* a streamed answer that sends nothing
                               for this long fails (retried if nothing
                               was shown yet), default 30000 */
    int max_retries;        /* retries after the first try, default 4 */
    int backoff_base_ms;    /* default 500 */
    int backoff_max_ms;     /* default 30000 */
    int max_concurrent;     /* requests in flight, default 16 */
    int http2_prior_knowledge;  /* an http:// base_url speaks h2c: curl
                                   multiplexes requests on shared
                                   connections; default 0 (HTTP/1.1) */
    char *model_switch;     /* who may use "!model NAME": "operators"
                               (default) or "everyone" */
    char **vision_models;   /* models sent pictures as image parts; empty
                               (default): no model is */
    size_t n_vision_models;
    int image_max_bytes;    /* largest picture taken in, default 10 MiB */
};

struct config_context {
    int max_turns;          /* turns kept per room, default 40 */
    int max_tokens;         /* estimated tokens of history sent, 3000 */
    int ttl_s;              /* ctx:<room> expiry, default 30 days */
    int max_parallel_per_room;  /* answers in flight per room, default 8 */
};

struct config_fewshot {
    char *user;
    char *assistant;
};

struct config_prompts {
    char *system;           /* default system prompt */
    char *greeting;         /* instruction used for first contact */
    struct config_fewshot *fewshot;
    size_t n_fewshot;
};

struct config_limits {
    int user_requests_per_minute;  /* 0 = unlimited, default 10 */
    int user_daily_tokens;         /* 0 = unlimited, default 0 */
};

/* A per-room override from the file ("rooms" list). Unset fields are NULL
 * or -1.  room is the full room key (see event_room_key). */
struct config_room {
    char *room;
    char *model;
    char *system;
    int greeting;           /* 1 on, 0 off, -1 inherit */
};

/* Greeting policy: the same keys in every adapter block (greet_on_join,
 * greet_new_members, greet_members_max); the router decides, adapters
 * only report joins and member counts. */
#define CONFIG_GREET_MEMBERS_MAX 50     /* default greet_members_max */
#define CONFIG_GREET_MEMBERS_LIMIT 1000000

struct config_greet {
    int on_join;            /* greet a room when the bot joins, default 1 */
    int new_members;        /* greet people who join, default 0 */
    int members_max;        /* ...in rooms of at most this many members,
                               default 50 (0 = no limit) */
};

/* One entry of the "adapters" list: its type, the common greeting keys,
 * and the libconfig setting (a config_setting_t *) the adapter parses
 * itself. */
struct config_adapter {
    char *type;             /* a name in adapter_registry */
    struct config_greet greet;
    int stream;             /* "stream": 1 on, 0 off, -1 absent (the
                               adapter's default) */
    void *setting;          /* config_setting_t *, owned by config */
    int line;               /* line of the block, for messages */
};

struct config {
    char *path;             /* file loaded, or "(built-in)" */
    struct config_bot bot;
    struct config_redis redis;
    struct config_llm llm;
    struct config_context context;
    struct config_prompts prompts;
    struct config_limits limits;
    struct config_metrics metrics;
    struct config_ha ha;
    struct config_room *rooms;
    size_t n_rooms;
    struct config_adapter *adapters;
    size_t n_adapters;

    /* Resolved by config_secrets(); wiped and freed by config_free(). */
    char *api_key;          /* NULL if the env var is unset */
    char *redis_password;   /* NULL if not configured */
    char *sentinel_password; /* redis.sentinel_password_env's value */

    void *lc;               /* config_t *, kept for adapter settings */
    /* Lines "FILE:LINE: key: note" about deprecated keys, NULL if none;
     * main logs them as warnings.  Owned, freed by config_free(). */
    char *warnings;
};

/* Free redis.sentinels and leave a fixed address in charge (main.c does
 * this when PARLEY_REDIS names one). */
void config_free_redis_sentinels(struct config_redis *r);
/* PARLEY_REDIS=sentinel:NAME@HOST:PORT[,HOST:PORT...] (v is what follows
 * "sentinel:"): Sentinel mode from the environment, replacing the file's
 * redis address.  PARLEY_ERR_CONFIG with a message in err when malformed,
 * PARLEY_ERR_OOM. */
int config_redis_sentinel_env(struct config_redis *r, const char *v,
                              char *err, size_t errlen);

/* Fill cfg with the built-in defaults (console adapter only, local Redis).
 * Returns PARLEY_OK or PARLEY_ERR_OOM. */
int config_defaults(struct config *cfg);

/*
 * Load and validate path into cfg (defaults first, then the file).  On
 * failure returns PARLEY_ERR_CONFIG (or _IO/_OOM) and writes every problem,
 * one per line, "FILE:LINE: key: message", into err (truncated to errlen).
 * cfg must be released with config_free() in both cases.
 */
int config_load(struct config *cfg, const char *path, char *err, size_t errlen);

/*
 * Read the secrets named by the config (llm.api_key_env,
 * redis.password_env) from the environment or NAME_FILE, register them with
 * log_add_secret(), and store them in cfg.  A missing API key is not an
 * error here (local servers often need none); a NAME_FILE that cannot be
 * read is.  Returns PARLEY_OK or PARLEY_ERR_CONFIG with err filled.
 */
int config_secrets(struct config *cfg, char *err, size_t errlen);

/*
 * Read one secret: env var name, else the file named by name_FILE (trailing
 * newline removed, at most CONFIG_SECRET_MAX bytes).  *out is NULL when
 * neither is set.  Caller frees *out (after explicit_bzero).
 */
int config_secret_read(const char *name, char **out, char *err,
                       size_t errlen);

/* The override for a room key, or NULL. */
const struct config_room *config_room_find(const struct config *cfg,
                                           const char *room_key);

/* Whether model is in llm.allowed_models (or is llm.model). */
int config_model_allowed(const struct config *cfg, const char *model);
/* Whether model is listed in llm.vision_models (takes pictures). */
int config_model_vision(const struct config *cfg, const char *model);

/* 1 when name is a key every adapter block may hold, checked by
 * config_load: "type", "stream" and the greeting keys (with their old IRC
 * names greet_users and greet_max_users).  Adapter parsers skip these when
 * they look for unknown keys. */
int config_adapter_key_common(const char *name);

/*
 * The greeting settings of an adapter block (a config_setting_t *), with
 * the defaults for absent keys and the old names as aliases.  Quiet: a
 * mistyped value keeps its default, as config_load has already reported
 * it.  For adapters that still keep their own copy of these settings.
 */
void config_greet_read(const void *setting, struct config_greet *out);

/* Release everything cfg owns (secrets are wiped first); cfg is zeroed. */
void config_free(struct config *cfg);

#endif
