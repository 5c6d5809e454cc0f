/*
 * The IRC adapter fails closed on secrets: when the logger cannot take a
 * SASL password or a channel key for redaction (table full), the adapter
 * refuses to start instead of using a secret that could reach the log in
 * clear.  No server is needed: the secrets are read at creation.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

/* The harness is header-only and written for the server tests: most of
 * its helpers are not needed here. */
#pragma GCC diagnostic ignored "-Wunused-function"
#include "irc_harness.h"

static void test_sasl_password_refused(void **state)
{
    struct adapter *ad = NULL;
    char err[512];

    (void)state;
    setenv("PARLEY_TEST_SASL_SECRET", "sasl-password-123", 1);
    h_secrets_full = 1;
    assert_int_equal(h_adapter_create(&ad,
        "adapters = ( { type = \"irc\"; host = \"h\"; nick = \"n\"; "
        "sasl_user = \"u\"; sasl_password_env = \"PARLEY_TEST_SASL_SECRET\";"
        " } );", err, sizeof(err)), PARLEY_ERR_CONFIG);
    config_destroy(&h_cfg);
    assert_null(ad);
    assert_non_null(strstr(err, "SASL password for log redaction"));
    assert_null(strstr(err, "sasl-password-123"));
    h_secrets_full = 0;
}

static void test_channel_key_refused(void **state)
{
    struct adapter *ad = NULL;
    char err[512];

    (void)state;
    setenv("PARLEY_TEST_CHAN_KEY", "channel-key-456", 1);
    h_secrets_full = 1;
    assert_int_equal(h_adapter_create(&ad,
        "adapters = ( { type = \"irc\"; host = \"h\"; nick = \"n\"; "
        "channels = ( { name = \"#k\"; key_env = \"PARLEY_TEST_CHAN_KEY\"; "
        "} ); } );", err, sizeof(err)), PARLEY_ERR_CONFIG);
    config_destroy(&h_cfg);
    assert_null(ad);
    assert_non_null(strstr(err, "#k: cannot register the key"));
    h_secrets_full = 0;
    /* With room in the table the same configuration is accepted. */
    assert_int_equal(h_adapter_create(&ad,
        "adapters = ( { type = \"irc\"; host = \"h\"; nick = \"n\"; "
        "channels = ( { name = \"#k\"; key_env = \"PARLEY_TEST_CHAN_KEY\"; "
        "} ); } );", err, sizeof(err)), PARLEY_OK);
    h_adapter_destroy(ad);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sasl_password_refused),
        cmocka_unit_test(test_channel_key_refused),
    };

    int failed;

    h_loop_open();
    failed = cmocka_run_group_tests(tests, NULL, NULL);
    h_loop_close();
    return failed;
}
