/*
 * Tests for src/config.c: the built-in defaults, a full file with every
 * key, each class of validation error with its file, line and key path,
 * several errors in one pass, libconfig syntax errors, integers that
 * libconfig 1.5 would wrap, secrets from NAME and NAME_FILE (and that a
 * secret never shows in an error text), and that bot.conf.example at the
 * project root loads cleanly.  Config files are written to a private
 * temporary directory that the group teardown removes.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libconfig.h>

#include "adapter.h"
#include "config.h"
#include "log.h"
#include "status.h"

/* Room for every error of the biggest test file. */
#define ERR_LEN 8192

static char tmpdir[PATH_MAX];

/* Path of name inside tmpdir (static buffer of four, so a test can hold
 * a few at once). */
static const char *
tmp_path(const char *name)
{
    static char bufs[4][PATH_MAX];
    static int next;
    char *buf = bufs[next++ % 4];

    assert_true(snprintf(buf, PATH_MAX, "%s/%s", tmpdir, name) < PATH_MAX);
    return buf;
}

static const char *
write_file(const char *name, const char *text)
{
    const char *path = tmp_path(name);
    FILE *f = fopen(path, "w");

    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
    return path;
}

/* Write text as bot.conf and load it. */
static int
load_text(struct config *cfg, const char *text, char *err, size_t errlen)
{
    const char *path = write_file("bot.conf", text);

    return config_load(cfg, path, err, errlen);
}

/* Assert err has the line "<tmpdir>/bot.conf:<rest>". */
static void
expect_line(const char *err, const char *rest)
{
    char want[PATH_MAX + 512];
    const char *p;
    size_t n;

    snprintf(want, sizeof(want), "%s:%s", tmp_path("bot.conf"), rest);
    n = strlen(want);
    for (p = err; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (strncmp(p, want, n) == 0 && (p[n] == '\n' || p[n] == '\0'))
            return;
    print_error("missing line: %s\nin:\n%s\n", want, err);
    fail();
}

static int
count_lines(const char *err)
{
    int n = err[0] ? 1 : 0;

    for (; *err; err++)
        if (*err == '\n')
            n++;
    return n;
}

static int
group_setup(void **state)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/parley-test-config-XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    return 0;
}

static int
group_teardown(void **state)
{
    DIR *d = opendir(tmpdir);
    struct dirent *de;

    if (d) {
        while ((de = readdir(d))) {
            if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
                unlink(tmp_path(de->d_name));
        }
        closedir(d);
    }
    rmdir(tmpdir);
    return 0;
}

/* Each test starts with none of the variables the secret tests use. */
static int
clear_env(void **state)
{
    static const char *const vars[] = {
        "PARLEY_T_KEY", "PARLEY_T_KEY_FILE", "PARLEY_T_PW",
        "PARLEY_T_PW_FILE", "OPENAI_API_KEY", "OPENAI_API_KEY_FILE",
    };
    size_t i;

    for (i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
        unsetenv(vars[i]);
    return 0;
}

/* ---- defaults and a full file ------------------------------------- */

static void
test_defaults(void **state)
{
    struct config cfg;

    assert_int_equal(config_defaults(&cfg), PARLEY_OK);
    assert_string_equal(cfg.path, "(built-in)");
    assert_string_equal(cfg.bot.name, "parley");
    assert_string_equal(cfg.bot.log_level, "info");
    assert_string_equal(cfg.redis.host, "127.0.0.1");
    assert_int_equal(cfg.redis.port, 6379);
    assert_null(cfg.redis.unix_socket);
    assert_null(cfg.redis.password_env);
    assert_string_equal(cfg.redis.prefix, "parley:");
    assert_int_equal(cfg.redis.dedupe_ttl_s, 86400);
    assert_string_equal(cfg.llm.base_url, "https://api.openai.com/v1");
    assert_string_equal(cfg.llm.model, "gpt-4o-mini");
    assert_int_equal(cfg.llm.n_allowed_models, 1);
    assert_string_equal(cfg.llm.allowed_models[0], "gpt-4o-mini");
    assert_string_equal(cfg.llm.api_key_env, "OPENAI_API_KEY");
    assert_true(cfg.llm.temperature > 0.69 && cfg.llm.temperature < 0.71);
    assert_int_equal(cfg.llm.connect_timeout_ms, 10000);
    assert_int_equal(cfg.llm.timeout_ms, 120000);
    assert_int_equal(cfg.llm.stream_idle_timeout_ms, 30000);
    assert_int_equal(cfg.llm.max_retries, 4);
    assert_int_equal(cfg.llm.backoff_base_ms, 500);
    assert_int_equal(cfg.llm.backoff_max_ms, 30000);
    assert_int_equal(cfg.llm.max_concurrent, 16);
    assert_int_equal(cfg.llm.http2_prior_knowledge, 0);
    assert_int_equal(cfg.context.max_turns, 40);
    assert_int_equal(cfg.context.max_tokens, 3000);
    assert_int_equal(cfg.context.ttl_s, 2592000);
    assert_int_equal(cfg.limits.user_requests_per_minute, 10);
    assert_int_equal(cfg.limits.user_daily_tokens, 0);
    assert_non_null(strstr(cfg.prompts.system,
                           "What topic would you like to explore today?"));
    assert_non_null(strstr(cfg.prompts.system, "group chat"));
    assert_non_null(strstr(cfg.prompts.greeting,
                           "What topic would you like to explore today?"));
    assert_int_equal(cfg.prompts.n_fewshot, 0);
    assert_int_equal(cfg.n_rooms, 0);
    assert_int_equal(cfg.n_adapters, 1);
    assert_string_equal(cfg.adapters[0].type, "console");
    assert_null(cfg.adapters[0].setting);
    assert_null(cfg.api_key);
    assert_true(config_model_allowed(&cfg, "gpt-4o-mini"));
    assert_false(config_model_allowed(&cfg, "gpt-4o"));
    assert_false(config_model_allowed(&cfg, NULL));
    assert_null(config_room_find(&cfg, "irc:libera:#parley"));
    config_free(&cfg);
    assert_null(cfg.bot.name);
    config_free(&cfg);      /* a zeroed config frees to nothing */
}

static const char full_conf[] =
    "bot = { name = \"helper\"; log_level = \"WARNING\"; };\n"      /* 1 */
    "redis = { host = \"redis.local\"; port = 6380;\n"             /* 2 */
    "  unix_socket = \"/run/redis/redis.sock\"; db = 3;\n"         /* 3 */
    "  password_env = \"PARLEY_T_PW\"; prefix = \"\";\n"           /* 4 */
    "  dedupe_ttl = 600; };\n"                                     /* 5 */
    "llm = {\n"                                                    /* 6 */
    "  base_url = \"http://127.0.0.1:11434/v1//\";\n"              /* 7 */
    "  model = \"llama3\";\n"                                      /* 8 */
    "  allowed_models = [ \"qwen2\", \"mistral\", \"qwen2\" ];\n"  /* 9 */
    "  api_key_env = \"PARLEY_T_KEY\";\n"                          /* 10 */
    "  temperature = 1; max_tokens = 0;\n"                         /* 11 */
    "  connect_timeout_ms = 50; timeout_ms = 900;\n"               /* 12 */
    "  max_retries = 0; backoff_base_ms = 5; backoff_max_ms = 5;\n"/* 13 */
    "  max_concurrent = 2; };\n"                                   /* 14 */
    "context = { max_turns = 7; max_tokens = 100; ttl = 60; };\n"  /* 15 */
    "prompts = { system = \"Be \" \"brief.\\nReally.\";\n"         /* 16 */
    "  greeting = \"Say hi.\";\n"                                  /* 17 */
    "  fewshot = ( { user = \"u1\"; assistant = \"a1\"; },\n"      /* 18 */
    "              { assistant = \"a2\"; user = \"u2\"; } ); };\n" /* 19 */
    "limits = { user_requests_per_minute = 0;\n"                   /* 20 */
    "  user_daily_tokens = 50000; };\n"                            /* 21 */
    "adapters = (\n"                                               /* 22 */
    "  { type = \"console\"; },\n"                                 /* 23 */
    "  { type = \"irc\"; host = \"127.0.0.1\"; port = 6667;\n"     /* 24 */
    "    nick = \"helper\"; channels = [ \"#a\" ]; greet_users = true; },\n"
    "  { type = \"matrix\"; homeserver = \"http://127.0.0.1\";"     /* 26 */
    " user_id = \"@helper:example.org\"; password_env = \"MX_PW\";"
    " greet_members_max = 0; greet_on_join = false; }\n"
    ");\n"                                                         /* 27 */
    "rooms = (\n"                                                  /* 28 */
    "  { room = \"irc:libera:#parley\"; model = \"mistral\";\n"    /* 29 */
    "    system = \"Room prompt\"; greeting = false; },\n"         /* 30 */
    "  { room = \"console::stdin\"; greeting = true; },\n"         /* 31 */
    "  { room = \"matrix:@bot:example.org:!abc:example.org\"; }\n" /* 32 */
    ");\n";

static void
test_full_file(void **state)
{
    struct config cfg;
    char err[ERR_LEN];
    const struct config_room *room;
    config_setting_t *s;
    const char *v = NULL;
    int port = 0;

    assert_int_equal(load_text(&cfg, full_conf, err, sizeof(err)),
                     PARLEY_OK);
    assert_string_equal(err, "");
    assert_string_equal(cfg.path, tmp_path("bot.conf"));
    assert_string_equal(cfg.bot.name, "helper");
    assert_string_equal(cfg.bot.log_level, "warn");
    assert_string_equal(cfg.redis.host, "redis.local");
    assert_int_equal(cfg.redis.port, 6380);
    assert_string_equal(cfg.redis.unix_socket, "/run/redis/redis.sock");
    assert_int_equal(cfg.redis.db, 3);
    assert_string_equal(cfg.redis.password_env, "PARLEY_T_PW");
    assert_string_equal(cfg.redis.prefix, "");
    assert_int_equal(cfg.redis.dedupe_ttl_s, 600);
    /* Trailing slashes go, so paths can be appended. */
    assert_string_equal(cfg.llm.base_url, "http://127.0.0.1:11434/v1");
    assert_string_equal(cfg.llm.model, "llama3");
    /* Duplicates merged, model appended. */
    assert_int_equal(cfg.llm.n_allowed_models, 3);
    assert_string_equal(cfg.llm.allowed_models[0], "qwen2");
    assert_string_equal(cfg.llm.allowed_models[1], "mistral");
    assert_string_equal(cfg.llm.allowed_models[2], "llama3");
    assert_string_equal(cfg.llm.api_key_env, "PARLEY_T_KEY");
    assert_true(cfg.llm.temperature == 1.0);
    assert_int_equal(cfg.llm.max_tokens, 0);
    assert_int_equal(cfg.llm.connect_timeout_ms, 50);
    assert_int_equal(cfg.llm.timeout_ms, 900);
    assert_int_equal(cfg.llm.max_retries, 0);
    assert_int_equal(cfg.llm.backoff_base_ms, 5);
    assert_int_equal(cfg.llm.backoff_max_ms, 5);
    assert_int_equal(cfg.llm.max_concurrent, 2);
    assert_int_equal(cfg.context.max_turns, 7);
    assert_int_equal(cfg.context.max_tokens, 100);
    assert_int_equal(cfg.context.ttl_s, 60);
    assert_string_equal(cfg.prompts.system, "Be brief.\nReally.");
    assert_string_equal(cfg.prompts.greeting, "Say hi.");
    assert_int_equal(cfg.prompts.n_fewshot, 2);
    assert_string_equal(cfg.prompts.fewshot[0].user, "u1");
    assert_string_equal(cfg.prompts.fewshot[0].assistant, "a1");
    assert_string_equal(cfg.prompts.fewshot[1].user, "u2");
    assert_string_equal(cfg.prompts.fewshot[1].assistant, "a2");
    assert_int_equal(cfg.limits.user_requests_per_minute, 0);
    assert_int_equal(cfg.limits.user_daily_tokens, 50000);

    /* Adapters keep their settings for the adapter, which parses them
     * again when it is created; the greeting keys are common. */
    assert_int_equal(cfg.n_adapters, 3);
    assert_string_equal(cfg.adapters[0].type, "console");
    assert_int_equal(cfg.adapters[0].line, 23);
    assert_int_equal(cfg.adapters[0].greet.on_join, 1);
    assert_int_equal(cfg.adapters[0].greet.new_members, 0);
    assert_int_equal(cfg.adapters[0].greet.members_max, 50);
    assert_string_equal(cfg.adapters[1].type, "irc");
    assert_int_equal(cfg.adapters[1].line, 24);
    s = cfg.adapters[1].setting;
    assert_non_null(s);
    assert_true(config_setting_lookup_string(s, "host", &v));
    assert_string_equal(v, "127.0.0.1");
    assert_true(config_setting_lookup_int(s, "port", &port));
    assert_int_equal(port, 6667);
    /* greet_users is IRC's old name of greet_new_members. */
    assert_int_equal(cfg.adapters[1].greet.new_members, 1);
    assert_int_equal(cfg.adapters[1].greet.on_join, 1);
    assert_string_equal(cfg.adapters[2].type, "matrix");
    assert_int_equal(cfg.adapters[2].line, 26);
    assert_int_equal(cfg.adapters[2].greet.on_join, 0);
    assert_int_equal(cfg.adapters[2].greet.new_members, 0);
    assert_int_equal(cfg.adapters[2].greet.members_max, 0);
    assert_non_null(cfg.warnings);
    expect_line(cfg.warnings, "25: adapters[1].greet_users: deprecated, "
                              "use greet_new_members (same meaning)");

    assert_int_equal(cfg.n_rooms, 3);
    room = config_room_find(&cfg, "irc:libera:#parley");
    assert_non_null(room);
    assert_string_equal(room->model, "mistral");
    assert_string_equal(room->system, "Room prompt");
    assert_int_equal(room->greeting, 0);
    room = config_room_find(&cfg, "console::stdin");
    assert_non_null(room);
    assert_null(room->model);
    assert_null(room->system);
    assert_int_equal(room->greeting, 1);
    room = config_room_find(&cfg, "matrix:@bot:example.org:!abc:example.org");
    assert_non_null(room);
    assert_int_equal(room->greeting, -1);
    assert_null(config_room_find(&cfg, "irc:libera:#other"));
    assert_null(config_room_find(&cfg, NULL));

    assert_true(config_model_allowed(&cfg, "llama3"));
    assert_true(config_model_allowed(&cfg, "qwen2"));
    assert_false(config_model_allowed(&cfg, "gpt-4o"));
    assert_false(config_model_allowed(&cfg, ""));
    config_free(&cfg);
}

/* A file with only some keys keeps the defaults for the rest. */
static void
test_partial_file_keeps_defaults(void **state)
{
    struct config cfg;
    char err[ERR_LEN];

    assert_int_equal(load_text(&cfg, "llm = { model = \"gpt-4o\"; };\n",
                               err, sizeof(err)), PARLEY_OK);
    assert_string_equal(cfg.llm.model, "gpt-4o");
    assert_string_equal(cfg.llm.base_url, "https://api.openai.com/v1");
    assert_int_equal(cfg.redis.port, 6379);
    assert_int_equal(cfg.n_adapters, 1);
    assert_string_equal(cfg.adapters[0].type, "console");
    assert_true(config_model_allowed(&cfg, "gpt-4o"));
    assert_true(config_model_allowed(&cfg, "gpt-4o-mini"));
    config_free(&cfg);

    /* An empty file is valid: all defaults. */
    assert_int_equal(load_text(&cfg, "# nothing\n", err, sizeof(err)),
                     PARLEY_OK);
    assert_string_equal(cfg.llm.model, "gpt-4o-mini");
    config_free(&cfg);
}

/* Pictures: vision_models is a list like allowed_models, image_max_bytes
 * a bounded integer with a 10 MiB default. */
static void
test_vision_models(void **state)
{
    struct config cfg;
    char err[ERR_LEN];

    (void)state;
    assert_int_equal(load_text(&cfg, "# nothing\n", err, sizeof(err)),
                     PARLEY_OK);
    assert_int_equal(cfg.llm.n_vision_models, 0);
    assert_int_equal(cfg.llm.image_max_bytes, 10 * 1024 * 1024);
    assert_false(config_model_vision(&cfg, "gpt-4o-mini"));
    config_free(&cfg);

    assert_int_equal(load_text(&cfg,
        "llm = { vision_models = [ \"gpt-4o\", \"llava\" ];\n"
        "  image_max_bytes = 65536; };\n", err, sizeof(err)), PARLEY_OK);
    assert_int_equal(cfg.llm.n_vision_models, 2);
    assert_true(config_model_vision(&cfg, "llava"));
    assert_false(config_model_vision(&cfg, "gpt-4o-mini"));
    /* Reading pictures does not make a model selectable. */
    assert_false(config_model_allowed(&cfg, "llava"));
    assert_int_equal(cfg.llm.image_max_bytes, 65536);
    config_free(&cfg);

    assert_int_equal(load_text(&cfg,
        "llm = { vision_models = \"gpt-4o\";\n"
        "  image_max_bytes = 100; };\n", err, sizeof(err)),
        PARLEY_ERR_CONFIG);
    expect_line(err, "1: llm.vision_models: expected a list of model "
                     "names [ \"...\", ... ]");
    assert_non_null(strstr(err, "2: llm.image_max_bytes: "));
    config_free(&cfg);
}

/* ---- one class of error each -------------------------------------- */

static void
test_unknown_keys(void **state)
{
    struct config cfg;
    char err[ERR_LEN];

    assert_int_equal(load_text(&cfg,
        "bot = { name = \"x\"; };\n"
        "llm = {\n"
        "  modle = \"gpt-4o\";\n"
        "};\n"
        "lmm = { model = \"x\"; };\n"
        "prompts = { fewshot = ( { user = \"u\"; assistant = \"a\";\n"
        "  extra = 1; } ); };\n"
        "rooms = ( { room = \"irc:n:#c\"; colour = \"red\"; } );\n",
        err, sizeof(err)), PARLEY_ERR_CONFIG);
    expect_line(err, "3: llm.modle: unknown key");
    expect_line(err, "5: lmm: unknown key");
    expect_line(err, "7: prompts.fewshot[0].extra: unknown key");
    expect_line(err, "8: rooms[0].colour: unknown key");
    assert_int_equal(count_lines(err), 4);
    config_free(&cfg);
}

static void
test_wrong_types(void **state)
{
    struct config cfg;
    char err[ERR_LEN];

    assert_int_equal(load_text(&cfg,
        "redis = { port = \"6379\"; };\n"
        "bot = { name = 5; };\n"
        "llm = { temperature = \"hot\"; max_tokens = 1.5;\n"
        "  allowed_models = \"gpt-4o\"; };\n"
        "rooms = ( { room = \"irc:n:#c\"; greeting = \"no\"; } );\n"
        "context = 3;\n"
        "adapters = { type = \"console\"; };\n",
        err, sizeof(err)), PARLEY_ERR_CONFIG);
    expect_line(err, "1: redis.port: expected an integer");
    expect_line(err, "2: bot.name: expected a string");
    expect_line(err, "3: llm.temperature: expected a number");
    expect_line(err, "3: llm.max_tokens: expected an integer");
    expect_line(err, "4: llm.allowed_models: expected a list of model "
                     "names [ \"...\", ... ]");
    expect_line(err, "5: rooms[0].greeting: expected true or false");
    expect_line(err, "6: context: expected a group { ... }");
    expect_line(err, "7: adapters: expected a list ( { type = \"...\"; "
                     "... }, ... )");
    assert_int_equal(count_lines(err), 8);
    config_free(&cfg);
}

/* llm.http2_prior_knowledge is a boolean: true/false, nothing else. */
static void
test_http2_prior_knowledge(void **state)
{
    struct config cfg;
    char err[ERR_LEN];

    (void)state;
    assert_int_equal(load_text(&cfg,
        "llm = { http2_prior_knowledge = true; };\n", err, sizeof(err)),
        PARLEY_OK);
    assert_int_equal(cfg.llm.http2_prior_knowledge, 1);
    config_free(&cfg);
    assert_int_equal(load_text(&cfg,
        "llm = { http2_prior_knowledge = false; };\n", err, sizeof(err)),
        PARLEY_OK);
    assert_int_equal(cfg.llm.http2_prior_knowledge, 0);
    config_free(&cfg);
    assert_int_equal(load_text(&cfg,
        "llm = { http2_prior_knowledge = 1; };\n", err, sizeof(err)),
        PARLEY_ERR_CONFIG);
    expect_line(err, "1: llm.http2_prior_knowledge: expected true or false");
    assert_int_equal(count_lines(err), 1);
    config_free(&cfg);
}

static void
test_out_of_range(void **state)
{
    struct config cfg;
    char err[ERR_LEN];

    assert_int_equal(load_text(&cfg,
        "redis = { port = 0; db = -1; dedupe_ttl = 0; };\n"
        "llm = { temperature = 2.5; timeout_ms = 0;\n"
        "  connect_timeout_ms = -5; max_retries = 101;\n"
        "  max_concurrent = 0; model_switch = \"anyone\";\n"
        "  stream_idle_timeout_ms = 999; };\n"
        "context = { max_turns = 0; };\n"
        "limits = { user_daily_tokens = -1; };\n",
        err, sizeof(err)), PARLEY_ERR_CONFIG);
    expect_line(err, "1: redis.port: must be between 1 and 65535 (not 0)");
    expect_line(err, "1: redis.db: must be at least 0 (not -1)");
    expect_line(err, "1: redis.dedupe_ttl: must be at least 1 (not 0)");
    expect_line(err, "2: llm.temperature: must be between 0 and 2, or -1 "
                     "to let the server choose (not 2.5)");
    expect_line(err, "2: llm.timeout_ms: must be between 1 and 3600000 "
                     "(not 0)");
    expect_line(err, "3: llm.connect_timeout_ms: must be between 1 and "
                     "3600000 (not -5)");
    expect_line(err, "3: llm.max_retries: must be between 0 and 100 "
                     "(not 101)");
    expect_line(err, "4: llm.max_concurrent: must be between 1 and 16384 "
                     "(not 0)");
    expect_line(err, "5: llm.stream_idle_timeout_ms: must be between 1000 "
                     "and 3600000 (not 999)");
    expect_line(err, "6: context.max_turns: must be between 1 and 10000 "
                     "(not 0)");
    expect_line(err, "7: limits.user_daily_tokens: must be at least 0 "
                     "(not -1)");
    expect_line(err, "4: llm.model_switch: must be operators or everyone");
    assert_int_equal(count_lines(err), 12);
    config_free(&cfg);

    /* Edges are inside; -1 is "let the server choose". */
    assert_int_equal(load_text(&cfg,
        "redis = { port = 65535; };\n"
        "llm = { temperature = -1; };\n", err, sizeof(err)), PARLEY_OK);
    assert_int_equal(cfg.redis.port, 65535);
    assert_true(cfg.llm.temperature < 0);
    config_free(&cfg);
    assert_int_equal(load_text(&cfg, "redis = { port = 65536; };\n",
                               err, sizeof(err)), PARLEY_ERR_CONFIG);
    expect_line(err, "1: redis.port: must be between 1 and 65535 "
                     "(not 65536)");
    config_free(&cfg);
}

/* ha: off by default with an 8 s lease; a non-boolean enabled and a
 * lease outside 500..600000 are reported where they are. */
static void
test_ha_keys(void **state)
{
    struct config cfg;
    char err[ERR_LEN];

    (void)state;
    assert_int_equal(load_text(&cfg, "# nothing\n", err, sizeof(err)),
                     PARLEY_OK);
    assert_int_equal(cfg.ha.enabled, 0);
    assert_int_equal(cfg.ha.lease_ms, 8000);
    config_free(&cfg);
    assert_int_equal(load_text(&cfg,
        "ha = { enabled = true; lease_ms = 500; };\n", err, sizeof(err)),
        PARLEY_OK);
    assert_int_equal(cfg.ha.enabled, 1);
    assert_int_equal(cfg.ha.lease_ms, 500);
    config_free(&cfg);
    assert_int_equal(load_text(&cfg,
        "ha = { enabled = 1;\n lease_ms = 499;\n leases = 2; };\n", err,
        sizeof(err)), PARLEY_ERR_CONFIG);
    expect_line(err, "1: ha.enabled: expected true or false");
    expect_line(err, "2: ha.lease_ms: must be between 500 and 600000 "
                     "(not 499)");
    expect_line(err, "3: ha.leases: unknown key");
    config_free(&cfg);
}

/* ha.*: off by default; a bool that is not one and a claim time below a
 * second (a slow answer would be asked twice) are refused. */
static void
test_ha_share_keys(void **state)
{
    struct config cfg;
    char err[ERR_LEN];

    (void)state;
    assert_int_equal(load_text(&cfg, "", err, sizeof(err)), PARLEY_OK);
    assert_int_equal(cfg.ha.share_work, 0);
    assert_int_equal(cfg.ha.claim_idle_ms, 30000);
    config_free(&cfg);
    assert_int_equal(load_text(&cfg,
        "ha = { share_work = true; claim_idle_ms = 1000; };\n",
        err, sizeof(err)), PARLEY_OK);
    assert_int_equal(cfg.ha.share_work, 1);
    assert_int_equal(cfg.ha.claim_idle_ms, 1000);
    config_free(&cfg);
    assert_int_equal(load_text(&cfg,
        "ha = { share_work = \"yes\"; claim_idle_ms = 999;\n"
        "  lease = 1; };\n", err, sizeof(err)), PARLEY_ERR_CONFIG);
    expect_line(err, "1: ha.share_work: expected true or false");
    expect_line(err, "1: ha.claim_idle_ms: must be between 1000 and "
                     "3600000 (not 999)");
    expect_line(err, "2: ha.lease: unknown key");
    assert_int_equal(count_lines(err), 3);
    config_free(&cfg);
}

/* libconfig 1.5 wraps 9999999999 to 1410065407; that must not pass. */
static void
test_integer_overflow(void **state)
{
    struct config cfg;
    char err[ERR_LEN];

    assert_int_equal(load_text(&cfg,
        "context = {\n"
        "  ttl = 9999999999; # 9999999999 in a comment is fine\n"
        "  max_tokens = \"99999999999\";\n"
        "};\n"
        "redis = { db = 0x1ffffffff; port = -2147483649; };\n",
        err, sizeof(err)), PARLEY_ERR_CONFIG);
    expect_line(err, "2: context.ttl: integer 9999999999 is out of range");
    expect_line(err, "3: context.max_tokens: expected an integer");
    expect_line(err, "5: redis.db: integer 0x1ffffffff is out of range");
    expect_line(err, "5: redis.port: integer -2147483649 is out of range");
    assert_int_equal(count_lines(err), 4);
    config_free(&cfg);

    /* With the L suffix libconfig reads it whole; then the range check
     * applies. */
    assert_int_equal(load_text(&cfg, "context = { ttl = 9999999999L; };\n",
                               err, sizeof(err)), PARLEY_ERR_CONFIG);
    expect_line(err, "1: context.ttl: must be at least 1 (not 9999999999)");
    config_free(&cfg);

    assert_int_equal(load_text(&cfg,
        "context = { ttl = 2147483647; }; llm = { temperature = 1.5e0; };\n",
        err, sizeof(err)), PARLEY_OK);
    assert_int_equal(cfg.context.ttl_s, 2147483647);
    config_free(&cfg);
}

static void
test_base_url(void **state)
{
    static const struct {
        const char *url;
        const char *msg;
    } bad[] = {
        { "ftp://example.org/v1", "must start with http:// or https://" },
        { "api.openai.com/v1", "must start with http:// or https://" },
        { "https:///v1", "has no host name" },
        { "https://user:sk-hidden@example.org/v1",
          "must not contain credentials; name the variable holding the "
          "key in llm.api_key_env" },
        { "https://example.org/v1?api-version=1",
          "must not contain spaces, a query or a fragment (request paths "
          "are appended to it)" },
        { "", "must not be empty" },
    };
    struct config cfg;
    char err[ERR_LEN], text[512], want[512];
    size_t i;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(text, sizeof(text), "\nllm = { base_url = \"%s\"; };\n",
                 bad[i].url);
        assert_int_equal(load_text(&cfg, text, err, sizeof(err)),
                         PARLEY_ERR_CONFIG);
        snprintf(want, sizeof(want), "2: llm.base_url: %s", bad[i].msg);
        expect_line(err, want);
        assert_null(strstr(err, "sk-hidden"));
        config_free(&cfg);
    }
    assert_int_equal(load_text(&cfg,
        "llm = { base_url = \"HTTPS://Example.org/\"; };\n",
        err, sizeof(err)), PARLEY_OK);
    assert_string_equal(cfg.llm.base_url, "HTTPS://Example.org");
    config_free(&cfg);
}

static void
test_strings(void **state)
{
    struct config cfg;
    char err[ERR_LEN];

    assert_int_equal(load_text(&cfg,
        "llm = { model = \"\"; api_key_env = \"sk-abc123def\"; };\n"
        "bot = { name = \"two\\nlines\"; log_level = \"loud\"; };\n"
        "redis = { unix_socket = \"/a/very/long/path/"
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"; password_env = \"\"; };\n",
        err, sizeof(err)), PARLEY_ERR_CONFIG);
    expect_line(err, "1: llm.model: must not be empty");
    expect_line(err, "1: llm.api_key_env: must be an environment variable "
                     "name (letters, digits, _), not a value");
    expect_line(err, "2: bot.name: must be one line without control "
                     "characters");
    expect_line(err, "2: bot.log_level: must be debug, info, warn or "
                     "error");
    expect_line(err, "3: redis.unix_socket: longer than 107 bytes");
    expect_line(err, "3: redis.password_env: must not be empty");
    assert_int_equal(count_lines(err), 6);
    /* A value in the wrong key is never echoed. */
    assert_null(strstr(err, "sk-abc123def"));
    config_free(&cfg);
}

static void
test_fewshot_rooms_adapters(void **state)
{
    struct config cfg;
    char err[ERR_LEN];

    assert_int_equal(load_text(&cfg,
        "prompts = { fewshot = (\n"
        "  { user = \"only the user\"; },\n"
        "  \"not a group\",\n"
        "  { user = \"\"; assistant = \"a\"; }\n"
        "); };\n"
        "rooms = (\n"
        "  { model = \"gpt-4o-mini\"; },\n"
        "  { room = \"no-colons\"; },\n"
        "  { room = \"irc:libera:#x\"; },\n"
        "  { room = \"irc:libera:#x\"; },\n"
        "  { room = \"irc:libera:#y\";\n"
        "    model = \"gpt-5-turbo\"; },\n"
        "  { room = \"irc:libera:#Parley\"; }\n"
        ");\n"
        "irc = { server = \"x\"; };\n"
        "adapters = (\n"
        "  { type = \"slack\"; },\n"
        "  { server = \"x\"; },\n"
        "  { type = \"irc\"; token = \"adapters own their keys\"; }\n"
        ");\n",
        err, sizeof(err)), PARLEY_ERR_CONFIG);
    expect_line(err, "2: prompts.fewshot[0]: missing key \"assistant\"");
    expect_line(err, "3: prompts.fewshot[1]: expected a group "
                     "{ user; assistant; }");
    expect_line(err, "4: prompts.fewshot[2].user: must not be empty");
    expect_line(err, "7: rooms[0]: missing key \"room\"");
    expect_line(err, "8: rooms[1].room: must be \"platform:account:room\", "
                     "e.g. \"irc:libera:#parley\"");
    expect_line(err, "10: rooms[3].room: room listed twice");
    expect_line(err, "12: rooms[4].model: not in llm.allowed_models");
    expect_line(err, "13: rooms[5].room: IRC channels are matched in "
                     "lower case; write the channel part in lower case");
    expect_line(err, "15: irc: unknown key (adapters are entries of the "
                     "adapters list: { type = \"irc\"; ... })");
    expect_line(err, "17: adapters[0].type: unknown adapter type "
                     "(expected console, irc, loopback, matrix or web)");
    expect_line(err, "18: adapters[1]: missing key \"type\"");
    /* The irc block is checked by the IRC adapter in the same pass. */
    expect_line(err, "19: adapters.[2].token: unknown key");
    expect_line(err, "19: adapters.[2].host: is required");
    expect_line(err, "19: adapters.[2].nick: is required");
    assert_int_equal(count_lines(err), 14);
    config_free(&cfg);

    assert_int_equal(load_text(&cfg, "adapters = ( );\n", err, sizeof(err)),
                     PARLEY_ERR_CONFIG);
    expect_line(err, "1: adapters: needs at least one adapter, e.g. "
                     "{ type = \"console\"; }");
    config_free(&cfg);
}

static void
test_backoff_order(void **state)
{
    struct config cfg;
    char err[ERR_LEN];

    /* base from the file, max from the defaults: the line of base. */
    assert_int_equal(load_text(&cfg,
        "llm = {\n  backoff_base_ms = 60000;\n};\n", err, sizeof(err)),
        PARLEY_ERR_CONFIG);
    expect_line(err, "2: llm.backoff_base_ms: must not be more than "
                     "llm.backoff_max_ms");
    config_free(&cfg);

    assert_int_equal(load_text(&cfg,
        "llm = { backoff_base_ms = 100;\n backoff_max_ms = 99; };\n",
        err, sizeof(err)), PARLEY_ERR_CONFIG);
    expect_line(err, "2: llm.backoff_max_ms: must not be less than "
                     "llm.backoff_base_ms");
    assert_int_equal(count_lines(err), 1);
    config_free(&cfg);
}

/* Secret-looking keys are refused with a pointer to the _env key, and
 * their values are not repeated. */
static void
test_secret_keys_rejected(void **state)
{
    struct config cfg;
    char err[ERR_LEN];

    assert_int_equal(load_text(&cfg,
        "llm = {\n"
        "  api_key = \"sk-live-VERYSECRET\";\n"
        "  token = \"tok-VERYSECRET\";\n"
        "};\n"
        "redis = { password = \"pw-VERYSECRET\"; };\n"
        "password = \"top-VERYSECRET\";\n",
        err, sizeof(err)), PARLEY_ERR_CONFIG);
    expect_line(err, "2: llm.api_key: secrets never live in the file: put "
                     "the API key in an environment variable (or a file "
                     "named by NAME_FILE) and set llm.api_key_env to its "
                     "name");
    expect_line(err, "3: llm.token: secrets never live in the file: put "
                     "the API key in an environment variable (or a file "
                     "named by NAME_FILE) and set llm.api_key_env to its "
                     "name");
    expect_line(err, "5: redis.password: secrets never live in the file: "
                     "put the password in an environment variable (or a "
                     "file named by NAME_FILE) and set redis.password_env "
                     "to its name");
    expect_line(err, "6: password: secrets never live in the file: pass "
                     "them in environment variables");
    assert_int_equal(count_lines(err), 4);
    assert_null(strstr(err, "VERYSECRET"));
    config_free(&cfg);
}

/* Many problems in one file: all reported, in file order. */
static void
test_many_errors_at_once(void **state)
{
    struct config cfg;
    char err[ERR_LEN];
    const char *a, *b, *c;

    assert_int_equal(load_text(&cfg,
        "bot = { nmae = \"x\"; };\n"
        "redis = { port = 99999; };\n"
        "llm = { model = \"\"; base_url = \"gopher://x\"; };\n"
        "rooms = ( { room = \"x\"; } );\n",
        err, sizeof(err)), PARLEY_ERR_CONFIG);
    assert_int_equal(count_lines(err), 5);
    expect_line(err, "1: bot.nmae: unknown key");
    expect_line(err, "2: redis.port: must be between 1 and 65535 "
                     "(not 99999)");
    expect_line(err, "3: llm.model: must not be empty");
    expect_line(err, "3: llm.base_url: must start with http:// or "
                     "https://");
    expect_line(err, "4: rooms[0].room: must be \"platform:account:room\", "
                     "e.g. \"irc:libera:#parley\"");
    a = strstr(err, "bot.nmae");
    b = strstr(err, "redis.port");
    c = strstr(err, "rooms[0]");
    assert_true(a < b && b < c);
    assert_int_equal(err[strlen(err) - 1] != '\n', 1);
    config_free(&cfg);
}

/* A small err buffer gets whole lines and a marker, never a overflow. */
static void
test_error_buffer_truncation(void **state)
{
    struct config cfg;
    char text[4096];
    char err[200];
    char tiny[16];
    size_t used = 0;
    int i;

    used += (size_t)snprintf(text, sizeof(text), "bot = {\n");
    for (i = 0; i < 50; i++)
        used += (size_t)snprintf(text + used, sizeof(text) - used,
                                 "  unknown%d = 1;\n", i);
    snprintf(text + used, sizeof(text) - used, "};\n");

    memset(err, 'X', sizeof(err));
    assert_int_equal(load_text(&cfg, text, err, sizeof(err)),
                     PARLEY_ERR_CONFIG);
    assert_true(strlen(err) < sizeof(err));
    assert_non_null(strstr(err, "bot.unknown0: unknown key"));
    assert_non_null(strstr(err, "(more problems not shown)"));
    config_free(&cfg);

    assert_int_equal(load_text(&cfg, text, tiny, sizeof(tiny)),
                     PARLEY_ERR_CONFIG);
    assert_int_equal(strlen(tiny), sizeof(tiny) - 1);
    config_free(&cfg);

    /* No buffer at all: still an error status. */
    assert_int_equal(load_text(&cfg, text, NULL, 0), PARLEY_ERR_CONFIG);
    config_free(&cfg);
}

static void
test_syntax_error(void **state)
{
    struct config cfg;
    char err[ERR_LEN];

    assert_int_equal(load_text(&cfg,
        "bot = {\n"
        "  name = \"x\";\n"
        "};\n"
        "llm = { model = ; };\n",
        err, sizeof(err)), PARLEY_ERR_CONFIG);
    expect_line(err, "4: syntax error");
    assert_int_equal(count_lines(err), 1);
    config_free(&cfg);

    /* Duplicate keys are a libconfig error too. */
    assert_int_equal(load_text(&cfg,
        "bot = { name = \"a\";\n name = \"b\"; };\n", err, sizeof(err)),
        PARLEY_ERR_CONFIG);
    expect_line(err, "2: duplicate setting name");
    config_free(&cfg);

    /* An unterminated string. */
    assert_int_equal(load_text(&cfg, "\n\nbot = { name = \"x; };\n",
                               err, sizeof(err)), PARLEY_ERR_CONFIG);
    assert_non_null(strstr(err, tmp_path("bot.conf")));
    config_free(&cfg);
}

static void
test_missing_and_odd_files(void **state)
{
    struct config cfg;
    char err[ERR_LEN], want[PATH_MAX + 64];
    const char *path = tmp_path("does-not-exist.conf");
    FILE *f;
    int i;

    assert_int_equal(config_load(&cfg, path, err, sizeof(err)),
                     PARLEY_ERR_IO);
    snprintf(want, sizeof(want), "%s: cannot open: %s", path,
             strerror(ENOENT));
    assert_string_equal(err, want);
    config_free(&cfg);

    assert_int_equal(config_load(&cfg, tmpdir, err, sizeof(err)),
                     PARLEY_ERR_IO);
    assert_non_null(strstr(err, "not a regular file"));
    config_free(&cfg);

    /* Over the 1 MiB cap: refused before libconfig reads it. */
    path = tmp_path("huge.conf");
    f = fopen(path, "w");
    assert_non_null(f);
    for (i = 0; i < 40000; i++)
        fputs("# padding padding padding padding\n", f);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(config_load(&cfg, path, err, sizeof(err)),
                     PARLEY_ERR_TOO_LARGE);
    assert_non_null(strstr(err, "larger than 1048576 bytes"));
    config_free(&cfg);
    unlink(path);

    assert_int_equal(config_load(&cfg, NULL, err, sizeof(err)),
                     PARLEY_ERR_CONFIG);
    config_free(&cfg);
}

/* @include is relative to the file, not to the working directory. */
static void
test_include(void **state)
{
    struct config cfg;
    char err[ERR_LEN], want[PATH_MAX + 64];

    write_file("rooms.inc", "rooms = ( { room = \"irc:n:#inc\";\n"
                            "  bogus = 1; } );\n");
    assert_int_equal(load_text(&cfg, "@include \"rooms.inc\"\n",
                               err, sizeof(err)), PARLEY_ERR_CONFIG);
    /* The error names the included file and its line. */
    snprintf(want, sizeof(want), "%s:2: rooms[0].bogus: unknown key",
             tmp_path("rooms.inc"));
    assert_string_equal(err, want);
    config_free(&cfg);
    unlink(tmp_path("rooms.inc"));
}

/* ---- secrets ------------------------------------------------------ */

static void
test_secret_from_env(void **state)
{
    struct config cfg;
    char err[ERR_LEN], line[128];

    assert_int_equal(load_text(&cfg,
        "llm = { api_key_env = \"PARLEY_T_KEY\"; };\n"
        "redis = { password_env = \"PARLEY_T_PW\"; };\n",
        err, sizeof(err)), PARLEY_OK);
    setenv("PARLEY_T_KEY", "sk-env-key-0001", 1);
    setenv("PARLEY_T_PW", "redis-pass-0001", 1);
    assert_int_equal(config_secrets(&cfg, err, sizeof(err)), PARLEY_OK);
    assert_string_equal(cfg.api_key, "sk-env-key-0001");
    assert_string_equal(cfg.redis_password, "redis-pass-0001");
    /* Registered for redaction. */
    snprintf(line, sizeof(line), "auth sk-env-key-0001 / redis-pass-0001");
    log_redact(line, sizeof(line));
    assert_string_equal(line, "auth [redacted] / [redacted]");
    /* Loading again (SIGHUP) replaces, without leaking the old values. */
    setenv("PARLEY_T_KEY", "sk-env-key-0002", 1);
    assert_int_equal(config_secrets(&cfg, err, sizeof(err)), PARLEY_OK);
    assert_string_equal(cfg.api_key, "sk-env-key-0002");
    config_free(&cfg);
    assert_null(cfg.api_key);
}

static void
test_secret_default_name_and_absent(void **state)
{
    struct config cfg;
    char err[ERR_LEN];

    assert_int_equal(config_defaults(&cfg), PARLEY_OK);
    /* Nothing set: no key, no error (local servers need none). */
    assert_int_equal(config_secrets(&cfg, err, sizeof(err)), PARLEY_OK);
    assert_null(cfg.api_key);
    assert_null(cfg.redis_password);
    setenv("OPENAI_API_KEY", "sk-default-name-01", 1);
    assert_int_equal(config_secrets(&cfg, err, sizeof(err)), PARLEY_OK);
    assert_string_equal(cfg.api_key, "sk-default-name-01");
    config_free(&cfg);
}

static void
test_secret_from_file(void **state)
{
    char *out = NULL;
    char err[ERR_LEN];
    const char *path;

    path = write_file("key.txt", "sk-file-key-0001\r\n");
    setenv("PARLEY_T_KEY_FILE", path, 1);
    assert_int_equal(config_secret_read("PARLEY_T_KEY", &out, err,
                                        sizeof(err)), PARLEY_OK);
    assert_string_equal(out, "sk-file-key-0001");
    free(out);

    /* Only one newline is stripped. */
    write_file("key.txt", "sk-file-key-0002\n\n");
    assert_int_equal(config_secret_read("PARLEY_T_KEY", &out, err,
                                        sizeof(err)), PARLEY_ERR_CONFIG);
    assert_null(out);
    assert_non_null(strstr(err, "contains a line break"));
    assert_null(strstr(err, "sk-file-key-0002"));

    /* No newline at all. */
    write_file("key.txt", "sk-file-key-0003");
    assert_int_equal(config_secret_read("PARLEY_T_KEY", &out, err,
                                        sizeof(err)), PARLEY_OK);
    assert_string_equal(out, "sk-file-key-0003");
    free(out);

    /* NAME wins over NAME_FILE; an empty NAME does not. */
    setenv("PARLEY_T_KEY", "sk-env-wins-0001", 1);
    assert_int_equal(config_secret_read("PARLEY_T_KEY", &out, err,
                                        sizeof(err)), PARLEY_OK);
    assert_string_equal(out, "sk-env-wins-0001");
    free(out);
    setenv("PARLEY_T_KEY", "", 1);
    assert_int_equal(config_secret_read("PARLEY_T_KEY", &out, err,
                                        sizeof(err)), PARLEY_OK);
    assert_string_equal(out, "sk-file-key-0003");
    free(out);
    unlink(path);
}

static void
test_secret_file_errors(void **state)
{
    struct config cfg;
    char *out = (char *)"untouched";
    char err[ERR_LEN], want[PATH_MAX + 128];
    char big[CONFIG_SECRET_MAX + 2];
    const char *path = tmp_path("missing-key.txt");

    /* Unreadable: names the variable and the file. */
    setenv("PARLEY_T_KEY_FILE", path, 1);
    assert_int_equal(config_secret_read("PARLEY_T_KEY", &out, err,
                                        sizeof(err)), PARLEY_ERR_CONFIG);
    assert_null(out);
    snprintf(want, sizeof(want), "PARLEY_T_KEY_FILE: cannot open %s: %s",
             path, strerror(ENOENT));
    assert_string_equal(err, want);

    /* Too large: the key (a repeated marker) is not in the message. */
    memset(big, 'K', sizeof(big) - 1);
    memcpy(big, "sk-toolarge-", 12);
    big[sizeof(big) - 1] = '\0';
    path = write_file("big-key.txt", big);
    setenv("PARLEY_T_KEY_FILE", path, 1);
    assert_int_equal(config_secret_read("PARLEY_T_KEY", &out, err,
                                        sizeof(err)), PARLEY_ERR_TOO_LARGE);
    assert_null(out);
    snprintf(want, sizeof(want), "PARLEY_T_KEY_FILE: %s is larger than "
             "%d bytes", path, CONFIG_SECRET_MAX);
    assert_string_equal(err, want);
    assert_null(strstr(err, "sk-toolarge"));
    assert_null(strstr(err, "KKKK"));

    /* Exactly the cap is fine. */
    big[CONFIG_SECRET_MAX] = '\0';
    write_file("big-key.txt", big);
    assert_int_equal(config_secret_read("PARLEY_T_KEY", &out, err,
                                        sizeof(err)), PARLEY_OK);
    assert_int_equal(strlen(out), CONFIG_SECRET_MAX);
    free(out);

    /* Same through the environment. */
    unsetenv("PARLEY_T_KEY_FILE");
    big[CONFIG_SECRET_MAX] = 'K';
    setenv("PARLEY_T_KEY", big, 1);
    assert_int_equal(config_secret_read("PARLEY_T_KEY", &out, err,
                                        sizeof(err)), PARLEY_ERR_TOO_LARGE);
    assert_null(strstr(err, "sk-toolarge"));
    unsetenv("PARLEY_T_KEY");

    /* Empty file. */
    path = write_file("empty-key.txt", "\n");
    setenv("PARLEY_T_KEY_FILE", path, 1);
    assert_int_equal(config_secret_read("PARLEY_T_KEY", &out, err,
                                        sizeof(err)), PARLEY_ERR_CONFIG);
    assert_non_null(strstr(err, "is empty"));

    /* Through config_secrets: CONFIG status, err filled, nothing kept. */
    path = write_file("key-crlf.txt", "sk-inj-0001\r\nX-Evil: 1\n");
    setenv("PARLEY_T_KEY_FILE", path, 1);
    assert_int_equal(load_text(&cfg,
        "llm = { api_key_env = \"PARLEY_T_KEY\"; };\n", err, sizeof(err)),
        PARLEY_OK);
    assert_int_equal(config_secrets(&cfg, err, sizeof(err)),
                     PARLEY_ERR_CONFIG);
    assert_null(cfg.api_key);
    assert_non_null(strstr(err, "PARLEY_T_KEY_FILE"));
    assert_null(strstr(err, "sk-inj-0001"));
    config_free(&cfg);

    /* A directory is unreadable as a secret. */
    setenv("PARLEY_T_KEY_FILE", tmpdir, 1);
    assert_int_equal(config_secret_read("PARLEY_T_KEY", &out, err,
                                        sizeof(err)), PARLEY_ERR_CONFIG);
    assert_non_null(strstr(err, "PARLEY_T_KEY_FILE: cannot read"));

    /* Names that are not variable names are refused. */
    assert_int_equal(config_secret_read("NOT-A-NAME", &out, err,
                                        sizeof(err)), PARLEY_ERR_CONFIG);
}

/* ---- adapter blocks, validated in the same pass --------------------- */

/* One core error, one IRC error and one Matrix error: all three come
 * back from one load, in file order, in the one report. */
static void
test_adapter_errors_with_core_errors(void **state)
{
    struct config cfg;
    char err[ERR_LEN];

    assert_int_equal(load_text(&cfg,
        "llm = { temperature = 9.0; };\n"                          /* 1 */
        "adapters = (\n"                                           /* 2 */
        "  { type = \"irc\"; host = \"irc.example.org\";\n"      /* 3 */
        "    nick = \"1bad\"; },\n"                                /* 4 */
        "  { type = \"matrix\"; homeserver = \"ftp://x\";\n"      /* 5 */
        "    user_id = \"@p:example.org\"; password_env = \"PW\"; }\n"
        ");\n",
        err, sizeof(err)), PARLEY_ERR_CONFIG);
    expect_line(err, "1: llm.temperature: must be between 0 and 2, or -1 "
                     "to let the server choose (not 9)");
    expect_line(err, "4: adapters.[0].nick: \"1bad\" is not a valid nick");
    expect_line(err, "5: adapters.[1].homeserver: must start with "
                     "https:// or http://");
    assert_int_equal(count_lines(err), 3);
    /* Sorted by line, whoever found them. */
    assert_true(strstr(err, ":1: llm") < strstr(err, ":4: adapters"));
    assert_true(strstr(err, ":4: adapters") < strstr(err, ":5: adapters"));
    config_free(&cfg);
}

/* "stream": a common key, true only where the adapter can show progress
 * (ADAPTER_CAP_STREAM), -1 when absent so that the adapter's default
 * holds. */
static void
test_stream_key(void **state)
{
    struct config cfg;
    char err[ERR_LEN];

    (void)state;
    assert_int_equal(load_text(&cfg,
        "adapters = (\n"
        "  { type = \"loopback\"; stream = true; },\n"            /* 2 */
        "  { type = \"web\"; stream = false; },\n"                /* 3 */
        "  { type = \"console\"; stream = false; },\n"            /* 4 */
        "  { type = \"loopback\"; name = \"b\"; }\n"              /* 5 */
        ");\n",
        err, sizeof(err)), PARLEY_OK);
    assert_int_equal(cfg.adapters[0].stream, 1);
    assert_int_equal(cfg.adapters[1].stream, 0);
    assert_int_equal(cfg.adapters[2].stream, 0);
    assert_int_equal(cfg.adapters[3].stream, -1);
    config_free(&cfg);

    assert_int_equal(load_text(&cfg,
        "adapters = (\n"
        "  { type = \"console\"; stream = true; },\n"             /* 2 */
        "  { type = \"loopback\"; stream = 1; }\n"                /* 3 */
        ");\n",
        err, sizeof(err)), PARLEY_ERR_CONFIG);
    expect_line(err, "2: adapters[0].stream: this adapter cannot show "
                     "answers while they are written (yet); remove the "
                     "key or set it to false");
    expect_line(err, "3: adapters[1].stream: expected true or false");
    assert_int_equal(count_lines(err), 2);
    config_free(&cfg);
}

static void
test_greeting_keys(void **state)
{
    struct config cfg;
    char err[ERR_LEN];

    /* Every platform takes the same three keys; the old IRC names are
     * aliases with a warning naming the new key. */
    assert_int_equal(load_text(&cfg,
        "adapters = (\n"
        "  { type = \"console\"; greet_new_members = true;\n"      /* 2 */
        "    greet_members_max = 7; },\n"                           /* 3 */
        "  { type = \"loopback\"; greet_on_join = false;\n"        /* 4 */
        "    greet_max_users = 3; }\n"                              /* 5 */
        ");\n",
        err, sizeof(err)), PARLEY_OK);
    assert_int_equal(cfg.adapters[0].greet.on_join, 1);
    assert_int_equal(cfg.adapters[0].greet.new_members, 1);
    assert_int_equal(cfg.adapters[0].greet.members_max, 7);
    assert_int_equal(cfg.adapters[1].greet.on_join, 0);
    assert_int_equal(cfg.adapters[1].greet.new_members, 0);
    assert_int_equal(cfg.adapters[1].greet.members_max, 3);
    expect_line(cfg.warnings, "5: adapters[1].greet_max_users: deprecated, "
                              "use greet_members_max (same meaning)");
    assert_int_equal(count_lines(cfg.warnings), 1);
    config_free(&cfg);

    /* Wrong types, a range, and an old name beside its new one. */
    assert_int_equal(load_text(&cfg,
        "adapters = (\n"
        "  { type = \"console\"; greet_on_join = 1; },\n"          /* 2 */
        "  { type = \"loopback\"; greet_members_max = -1; },\n"    /* 3 */
        "  { type = \"irc\"; host = \"h\"; nick = \"n\";\n"       /* 4 */
        "    greet_users = true; greet_new_members = false; }\n"    /* 5 */
        ");\n",
        err, sizeof(err)), PARLEY_ERR_CONFIG);
    expect_line(err, "2: adapters[0].greet_on_join: expected true or false");
    expect_line(err, "3: adapters[1].greet_members_max: must be between 0 "
                     "and 1000000 (not -1); 0 means no limit");
    expect_line(err, "5: adapters[2].greet_users: is the old name of "
                     "greet_new_members, which this block also sets; "
                     "remove it");
    assert_int_equal(count_lines(err), 3);
    config_free(&cfg);
}

static void
test_adapter_keys(void **state)
{
    struct config cfg;
    char err[ERR_LEN];

    /* The console has no keys of its own; loopback checks its block. */
    assert_int_equal(load_text(&cfg,
        "adapters = (\n"
        "  { type = \"console\"; colour = \"red\"; password = \"x\"; },\n"
        "  { type = \"loopback\"; name = \"a b\"; latency_ms = -5;\n"
        "    speed = 1; }\n"
        ");\n",
        err, sizeof(err)), PARLEY_ERR_CONFIG);
    expect_line(err, "2: adapters[0].colour: unknown key for a console "
                     "adapter");
    expect_line(err, "2: adapters[0].password: secrets never live in the "
                     "file: pass them in environment variables");
    expect_line(err, "3: adapters[1].name: expected a non-empty word of at "
                     "most 255 bytes");
    expect_line(err, "3: adapters[1].latency_ms: expected an integer "
                     "between 0 and 60000");
    expect_line(err, "4: adapters[1].speed: unknown key for a loopback "
                     "adapter");
    assert_int_equal(count_lines(err), 5);
    assert_null(strstr(err, "\"x\""));
    config_free(&cfg);

    assert_int_equal(load_text(&cfg,
        "adapters = ( { type = \"loopback\"; name = \"bench\";"
        " latency_ms = 20; } );\n", err, sizeof(err)), PARLEY_OK);
    assert_string_equal(cfg.adapters[0].type, "loopback");
    assert_null(cfg.warnings);
    config_free(&cfg);
}

/* The registry is the one list of platforms. */
static void
test_registry(void **state)
{
    char names[128];
    size_t i;

    adapter_registry_names(names, sizeof(names));
    assert_string_equal(names, "console, irc, loopback, matrix or web");
    for (i = 0; adapter_registry[i]; i++) {
        const struct adapter_desc *d = adapter_registry[i];

        assert_ptr_equal(adapter_find(d->name), d);
        assert_non_null(d->create);
        assert_true(d->keys || d->validate);
    }
    assert_int_equal(i, 5);
    assert_null(adapter_find("slack"));
    assert_true(adapter_find("web")->caps & ADAPTER_CAP_STREAM);
    assert_true(adapter_find("irc")->caps & ADAPTER_CAP_STREAM);
    assert_true(adapter_find("matrix")->caps & ADAPTER_CAP_STREAM);
    assert_false(adapter_find("console")->caps & ADAPTER_CAP_STREAM);
    assert_true(config_adapter_key_common("stream"));
    assert_true(adapter_find("irc")->caps & ADAPTER_CAP_MORE);
    assert_true(adapter_find("console")->caps & ADAPTER_CAP_SINGLE);
    assert_true(config_adapter_key_common("greet_users"));
    assert_true(config_adapter_key_common("type"));
    assert_false(config_adapter_key_common("host"));
}

/* ---- the shipped example ------------------------------------------ */

static void
test_example_loads(void **state)
{
    const char *data = getenv("PARLEY_TEST_DATA");
    char path[PATH_MAX];
    char err[ERR_LEN];
    struct config cfg;
    int result;

    if (!data)
        data = "tests";
    snprintf(path, sizeof(path), "%s/../bot.conf.example", data);
    result = config_load(&cfg, path, err, sizeof(err));
    if (result)
        print_error("%s\n", err);
    assert_int_equal(result, PARLEY_OK);
    assert_string_equal(err, "");
    /* The example documents the defaults: spot-check a few. */
    assert_string_equal(cfg.llm.base_url, "https://api.openai.com/v1");
    assert_string_equal(cfg.llm.model, "gpt-4o-mini");
    assert_string_equal(cfg.llm.api_key_env, "OPENAI_API_KEY");
    assert_int_equal(cfg.redis.port, 6379);
    assert_int_equal(cfg.n_adapters, 1);
    assert_string_equal(cfg.adapters[0].type, "console");
    assert_true(config_model_allowed(&cfg, "gpt-4o"));
    assert_non_null(strstr(cfg.prompts.system,
                           "What topic would you like to explore today?"));
    assert_non_null(config_room_find(&cfg, "irc:libera:#parley"));
    config_free(&cfg);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_defaults, clear_env),
        cmocka_unit_test_setup(test_http2_prior_knowledge, clear_env),
        cmocka_unit_test_setup(test_full_file, clear_env),
        cmocka_unit_test_setup(test_partial_file_keeps_defaults, clear_env),
        cmocka_unit_test_setup(test_vision_models, clear_env),
        cmocka_unit_test_setup(test_unknown_keys, clear_env),
        cmocka_unit_test_setup(test_wrong_types, clear_env),
        cmocka_unit_test_setup(test_out_of_range, clear_env),
        cmocka_unit_test_setup(test_ha_keys, clear_env),
        cmocka_unit_test_setup(test_integer_overflow, clear_env),
        cmocka_unit_test_setup(test_base_url, clear_env),
        cmocka_unit_test_setup(test_strings, clear_env),
        cmocka_unit_test_setup(test_fewshot_rooms_adapters, clear_env),
        cmocka_unit_test_setup(test_backoff_order, clear_env),
        cmocka_unit_test_setup(test_secret_keys_rejected, clear_env),
        cmocka_unit_test_setup(test_many_errors_at_once, clear_env),
        cmocka_unit_test_setup(test_error_buffer_truncation, clear_env),
        cmocka_unit_test_setup(test_syntax_error, clear_env),
        cmocka_unit_test_setup(test_missing_and_odd_files, clear_env),
        cmocka_unit_test_setup(test_include, clear_env),
        cmocka_unit_test_setup(test_secret_from_env, clear_env),
        cmocka_unit_test_setup(test_secret_default_name_and_absent,
                               clear_env),
        cmocka_unit_test_setup(test_secret_from_file, clear_env),
        cmocka_unit_test_setup(test_secret_file_errors, clear_env),
        cmocka_unit_test_setup(test_adapter_errors_with_core_errors,
                               clear_env),
        cmocka_unit_test_setup(test_greeting_keys, clear_env),
        cmocka_unit_test_setup(test_stream_key, clear_env),
        cmocka_unit_test_setup(test_adapter_keys, clear_env),
        cmocka_unit_test_setup(test_registry, clear_env),
        cmocka_unit_test_setup(test_example_loads, clear_env),
        cmocka_unit_test_setup(test_ha_share_keys, clear_env),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
