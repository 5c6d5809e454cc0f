/*
 * The web adapter's pieces that need no network: its config block
 * (defaults, every key, errors with file and line), the room a session
 * id maps to (a hash, never the id), and the adapter built through the
 * registry without starting (as --check-config builds it), with the
 * access token read from the environment and never kept in clear.
 * tests/integration/test_web.py covers HTTP, test_web_browser.py the page.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <libconfig.h>

#include "adapter.h"
#include "config.h"
#include "status.h"
#include "web/web.h"

/* The setting of the first adapter block in text; cfg must be freed. */
static config_setting_t *block(config_t *cfg, const char *text)
{
    config_setting_t *list;

    config_init(cfg);
    assert_int_equal(config_read_string(cfg, text), CONFIG_TRUE);
    list = config_lookup(cfg, "adapters");
    assert_non_null(list);
    return config_setting_get_elem(list, 0);
}

static void defaults_and_keys(void **state)
{
    struct web_config wc;
    config_t cfg;
    char err[512];

    (void)state;
    assert_int_equal(web_config_parse(&wc, NULL, err, sizeof(err)),
                     PARLEY_OK);
    assert_string_equal(wc.listen, "127.0.0.1:8080");
    assert_string_equal(wc.name, "web");
    assert_null(wc.token_env);
    assert_int_equal(wc.max_connections, WEB_CONNECTIONS_DEFAULT);
    web_config_free(&wc);

    assert_int_equal(web_config_parse(&wc, block(&cfg,
        "adapters = ( { type = \"web\"; listen = \"0.0.0.0:9000\";\n"
        "  origin = \"https://chat.example.org\"; token_env = \"T\";\n"
        "  name = \"site\"; user_name = \"Guest\"; max_connections = 8;\n"
        "  max_per_ip = 2; stream = false; greet_on_join = false; } );"),
        err, sizeof(err)), PARLEY_OK);
    assert_string_equal(wc.listen, "0.0.0.0:9000");
    assert_string_equal(wc.origin, "https://chat.example.org");
    assert_string_equal(wc.token_env, "T");
    assert_string_equal(wc.name, "site");
    assert_string_equal(wc.user_name, "Guest");
    assert_int_equal(wc.max_connections, 8);
    assert_int_equal(wc.max_per_ip, 2);
    web_config_free(&wc);
    config_destroy(&cfg);
}

static void errors_name_key_and_line(void **state)
{
    struct web_config wc;
    config_t cfg;
    char err[1024];

    (void)state;
    assert_int_equal(web_config_parse(&wc, block(&cfg,
        "adapters = ( { type = \"web\";\n"
        "  origin = \"chat.example.org/x\";\n"          /* 2 */
        "  max_per_ip = 0;\n"                           /* 3 */
        "  listen = 8080;\n"                            /* 4 */
        "  colour = \"blue\"; } );"),                   /* 5 */
        err, sizeof(err)), PARLEY_ERR_CONFIG);
    assert_non_null(strstr(err, ":2: adapters[0].origin: expected"));
    assert_non_null(strstr(err, ":3: adapters[0].max_per_ip: expected an "
                                "integer between 1 and"));
    assert_non_null(strstr(err, ":4: adapters[0].listen: expected a "
                                "non-empty string"));
    assert_non_null(strstr(err, ":5: adapters[0].colour: unknown key for "
                                "a web adapter"));
    web_config_free(&wc);
    config_destroy(&cfg);
}

static void room_is_a_hash_of_the_session(void **state)
{
    char a[WEB_ROOM_LEN + 1], b[WEB_ROOM_LEN + 1], c[WEB_ROOM_LEN + 1];
    const char *sid = "0123456789abcdef0123456789abcdef"
                      "0123456789abcdef0123456789abcdef";

    (void)state;
    web_sid_room(sid, a, sizeof(a));
    web_sid_room(sid, b, sizeof(b));
    web_sid_room("ff23456789abcdef0123456789abcdef"
                 "0123456789abcdef0123456789abcdef", c, sizeof(c));
    assert_int_equal(strlen(a), WEB_ROOM_LEN);
    assert_int_equal(a[0], 'b');
    assert_string_equal(a, b);
    assert_string_not_equal(a, c);
    assert_null(strstr(sid, a + 1));
}

/* Built as --check-config builds it: no loop run, nothing to close. */
static void create_reads_token(void **state)
{
    const struct adapter_desc *d = adapter_find("web");
    struct adapter_env env = { NULL, NULL, NULL };
    struct adapter *ad = NULL;
    config_t cfg;
    char err[512];

    (void)state;
    assert_non_null(d);
    assert_true(d->caps & ADAPTER_CAP_STREAM);
    unsetenv("PARLEY_WEB_T");
    unsetenv("PARLEY_WEB_T_FILE");
    assert_int_equal(d->create(&ad, &env, block(&cfg,
        "adapters = ( { type = \"web\"; token_env = \"PARLEY_WEB_T\"; } );"),
        err, sizeof(err)), PARLEY_ERR_CONFIG);
    assert_null(ad);
    assert_non_null(strstr(err, "neither PARLEY_WEB_T nor"));
    setenv("PARLEY_WEB_T", "secret-token", 1);
    assert_int_equal(d->create(&ad, &env, config_lookup(&cfg, "adapters.[0]"),
                               err, sizeof(err)), PARLEY_OK);
    assert_non_null(ad);
    assert_int_equal(ad->stream, 1);
    assert_string_equal(ad->account, "web");
    assert_true(((struct web *)ad)->has_token);
    ad->ops->stop(ad);
    ad->ops->free(ad);
    unsetenv("PARLEY_WEB_T");
    config_destroy(&cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(defaults_and_keys),
        cmocka_unit_test(errors_name_key_and_line),
        cmocka_unit_test(room_is_a_hash_of_the_session),
        cmocka_unit_test(create_reads_token),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
