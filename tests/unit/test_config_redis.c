/*
 * Tests for the Sentinel keys of the redis group (src/config_redis.c):
 * redis.sentinels parsed into host and port (IPv6 in brackets), every
 * malformed entry reported at its own line, master_name required with
 * sentinels and refused without them, Sentinel mode refused beside a
 * fixed host/port/unix_socket, the sentinel password read from the
 * environment and registered for redaction, and PARLEY_REDIS=sentinel:...
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "status.h"

#define ERR_LEN 8192

static char conf_path[PATH_MAX];

/* Write text as a config file and load it. */
static int
load_text(struct config *cfg, const char *text, char *err, size_t errlen)
{
    FILE *f;

    snprintf(conf_path, sizeof(conf_path), "/tmp/parley-test-sentinel-%d"
             ".conf", (int)getpid());
    f = fopen(conf_path, "w");
    assert_non_null(f);
    assert_true(fputs(text, f) >= 0);
    assert_int_equal(fclose(f), 0);
    return config_load(cfg, conf_path, err, errlen);
}

/* Assert err has a line "<file>:<rest>". */
static void
expect_line(const char *err, const char *rest)
{
    char want[PATH_MAX + 512];
    size_t n;

    snprintf(want, sizeof(want), "%s:%s", conf_path, rest);
    n = strlen(want);
    for (const char *p = err; p && *p;
         p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (strncmp(p, want, n) == 0 && (p[n] == '\n' || p[n] == '\0'))
            return;
    print_error("missing line: %s\nin:\n%s\n", want, err);
    fail();
}

static int
cleanup(void **state)
{
    (void)state;
    unlink(conf_path);
    unsetenv("PARLEY_T_SPW");
    return 0;
}

static void
test_sentinels_parsed(void **state)
{
    struct config cfg;
    char err[ERR_LEN] = "";

    (void)state;
    assert_int_equal(load_text(&cfg,
        "redis = {\n"
        "  sentinels = [ \"10.0.0.1:26379\", \"[::1]:26380\",\n"
        "                \"sentinel-3.example:5000\" ];\n"
        "  master_name = \"mymaster\";\n"
        "  sentinel_password_env = \"PARLEY_T_SPW\";\n"
        "};\n", err, sizeof(err)), PARLEY_OK);
    assert_int_equal(cfg.redis.n_sentinels, 3);
    assert_string_equal(cfg.redis.sentinels[0].host, "10.0.0.1");
    assert_int_equal(cfg.redis.sentinels[0].port, 26379);
    assert_string_equal(cfg.redis.sentinels[1].host, "::1");
    assert_int_equal(cfg.redis.sentinels[1].port, 26380);
    assert_string_equal(cfg.redis.sentinels[2].host, "sentinel-3.example");
    assert_int_equal(cfg.redis.sentinels[2].port, 5000);
    assert_string_equal(cfg.redis.master_name, "mymaster");

    /* The sentinels' password comes from the environment, redacted. */
    setenv("PARLEY_T_SPW", "sentinel-pass-0001", 1);
    assert_int_equal(config_secrets(&cfg, err, sizeof(err)), PARLEY_OK);
    assert_string_equal(cfg.sentinel_password, "sentinel-pass-0001");
    {
        char line[64] = "auth sentinel-pass-0001";

        log_redact(line, sizeof(line));
        assert_string_equal(line, "auth [redacted]");
    }
    /* PARLEY_REDIS (main.c) drops Sentinel mode through this. */
    config_free_redis_sentinels(&cfg.redis);
    assert_int_equal(cfg.redis.n_sentinels, 0);
    assert_null(cfg.redis.sentinels);
    config_free(&cfg);
    assert_null(cfg.sentinel_password);
}

static void
test_bad_entries(void **state)
{
    struct config cfg;
    char err[ERR_LEN] = "";

    (void)state;
    assert_int_equal(load_text(&cfg,
        "redis = {\n"
        "  sentinels = [ \"nohost\",\n"
        "    \":26379\",\n"
        "    \"h:0\",\n"
        "    \"h:99999\",\n"
        "    \"h:26379x\",\n"
        "    \"::1:26379\",\n"
        "    \"[::1:26379\",\n"
        "    \"a b:1\",\n"
        "    \"ok:1\",\n"
        "    \"ok:1\" ];\n"
        "  master_name = \"two words\";\n"
        "};\n", err, sizeof(err)), PARLEY_ERR_CONFIG);
    expect_line(err, "2: redis.sentinels[0]: must be \"HOST:PORT\" (IPv6 "
                "as \"[ADDR]:PORT\")");
    expect_line(err, "3: redis.sentinels[1]: has an empty host");
    expect_line(err, "4: redis.sentinels[2]: needs a port from 1 to 65535 "
                "after the colon");
    expect_line(err, "5: redis.sentinels[3]: needs a port from 1 to 65535 "
                "after the colon");
    expect_line(err, "6: redis.sentinels[4]: needs a port from 1 to 65535 "
                "after the colon");
    expect_line(err, "7: redis.sentinels[5]: must be \"HOST:PORT\" (IPv6 "
                "as \"[ADDR]:PORT\")");
    expect_line(err, "8: redis.sentinels[6]: must be \"[IPv6]:PORT\" with "
                "brackets closed");
    expect_line(err, "9: redis.sentinels[7]: must not contain spaces");
    expect_line(err, "11: redis.sentinels[9]: is listed twice");
    expect_line(err, "12: redis.master_name: must not contain spaces");
    config_free(&cfg);

    /* A list (not an array) may mix types: the number is reported. */
    err[0] = '\0';
    assert_int_equal(load_text(&cfg,
        "redis = { sentinels = ( \"h:1\", 42 ); master_name = \"m\"; };\n",
        err, sizeof(err)), PARLEY_ERR_CONFIG);
    expect_line(err, "1: redis.sentinels[1]: expected a \"HOST:PORT\" "
                "string");
    config_free(&cfg);
}

static void
test_exclusive_and_required(void **state)
{
    struct config cfg;
    char err[ERR_LEN] = "";

    (void)state;
    /* Sentinels beside a fixed address, and without a master name. */
    assert_int_equal(load_text(&cfg,
        "redis = {\n"
        "  host = \"10.0.0.9\";\n"
        "  port = 6380;\n"
        "  unix_socket = \"/run/redis.sock\";\n"
        "  sentinels = [ \"10.0.0.1:26379\" ];\n"
        "};\n", err, sizeof(err)), PARLEY_ERR_CONFIG);
    expect_line(err, "2: redis.host: cannot be combined with "
                "redis.sentinels: the sentinels say where the master is");
    expect_line(err, "3: redis.port: cannot be combined with "
                "redis.sentinels: the sentinels say where the master is");
    expect_line(err, "4: redis.unix_socket: cannot be combined with "
                "redis.sentinels: the sentinels say where the master is");
    expect_line(err, "5: redis.sentinels: needs redis.master_name, the "
                "name the sentinels monitor");
    config_free(&cfg);

    /* A master name or sentinel password without sentinels. */
    err[0] = '\0';
    assert_int_equal(load_text(&cfg,
        "redis = {\n"
        "  master_name = \"mymaster\";\n"
        "  sentinel_password_env = \"PARLEY_T_SPW\";\n"
        "};\n", err, sizeof(err)), PARLEY_ERR_CONFIG);
    expect_line(err, "2: redis.master_name: needs redis.sentinels (without "
                "them, set redis.host and redis.port)");
    expect_line(err, "3: redis.sentinel_password_env: needs "
                "redis.sentinels");
    config_free(&cfg);

    /* An empty list and a value that is not a list. */
    err[0] = '\0';
    assert_int_equal(load_text(&cfg,
        "redis = { sentinels = [ ]; master_name = \"m\"; };\n",
        err, sizeof(err)), PARLEY_ERR_CONFIG);
    expect_line(err, "1: redis.sentinels: needs 1 to 16 sentinel "
                "addresses");
    config_free(&cfg);
    err[0] = '\0';
    assert_int_equal(load_text(&cfg,
        "redis = { sentinels = \"10.0.0.1:26379\"; master_name = \"m\"; };\n",
        err, sizeof(err)), PARLEY_ERR_CONFIG);
    expect_line(err, "1: redis.sentinels: expected a list of sentinel "
                "addresses [ \"HOST:PORT\", ... ]");
    config_free(&cfg);
}

/* PARLEY_REDIS=sentinel:NAME@HOST:PORT,... (main.c hands over what
 * follows "sentinel:"). */
static void
test_sentinel_env(void **state)
{
    struct config cfg;
    char err[256] = "";

    (void)state;
    assert_int_equal(load_text(&cfg,
        "redis = { unix_socket = \"/run/r.sock\"; };\n", err, sizeof(err)),
        PARLEY_OK);
    assert_int_equal(config_redis_sentinel_env(&cfg.redis,
        "parley@sentinel-1:26379,[::1]:26380,10.0.0.3:1", err, sizeof(err)),
        PARLEY_OK);
    assert_int_equal(cfg.redis.n_sentinels, 3);
    assert_string_equal(cfg.redis.master_name, "parley");
    assert_string_equal(cfg.redis.sentinels[0].host, "sentinel-1");
    assert_int_equal(cfg.redis.sentinels[0].port, 26379);
    assert_string_equal(cfg.redis.sentinels[1].host, "::1");
    assert_int_equal(cfg.redis.sentinels[2].port, 1);
    assert_null(cfg.redis.unix_socket);

    /* Malformed values leave the configuration as it was. */
    assert_int_equal(config_redis_sentinel_env(&cfg.redis, "h:1", err,
                                               sizeof(err)),
                     PARLEY_ERR_CONFIG);
    assert_string_equal(err, "PARLEY_REDIS: expected sentinel:NAME@HOST:"
                        "PORT[,HOST:PORT...]");
    assert_int_equal(config_redis_sentinel_env(&cfg.redis, "m@h:1,h:0",
                                               err, sizeof(err)),
                     PARLEY_ERR_CONFIG);
    assert_string_equal(err, "PARLEY_REDIS: sentinel 2 needs a port from 1 "
                        "to 65535 after the colon");
    assert_int_equal(config_redis_sentinel_env(&cfg.redis, "m@", err,
                                               sizeof(err)),
                     PARLEY_ERR_CONFIG);
    assert_int_equal(config_redis_sentinel_env(&cfg.redis, "m@h:1,", err,
                                               sizeof(err)),
                     PARLEY_ERR_CONFIG);
    assert_int_equal(cfg.redis.n_sentinels, 3);
    assert_string_equal(cfg.redis.master_name, "parley");
    config_free(&cfg);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_sentinels_parsed, cleanup),
        cmocka_unit_test_teardown(test_bad_entries, cleanup),
        cmocka_unit_test_teardown(test_exclusive_and_required, cleanup),
        cmocka_unit_test_teardown(test_sentinel_env, cleanup),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
