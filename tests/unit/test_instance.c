/*
 * instance.c: the made name has the host, the pid and 8 hex digits, uses
 * only [A-Za-z0-9._-], stays the same for the process, and differs after
 * a reset (the random part); a fixed name is taken when it is clean and
 * refused when it holds a space, a colon or is too long.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "instance.h"

static void made_name(void **state)
{
    char first[INSTANCE_NAME_MAX], pid[32];
    const char *n;

    (void)state;
    instance_reset();
    n = instance_name(NULL);
    assert_non_null(n);
    snprintf(pid, sizeof(pid), "-%ld-", (long)getpid());
    assert_non_null(strstr(n, pid));
    assert_int_equal(strspn(n, "abcdefghijklmnopqrstuvwxyz"
                               "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"),
                     strlen(n));
    assert_int_equal(strlen(strrchr(n, '-') + 1), 8);
    snprintf(first, sizeof(first), "%s", n);
    assert_string_equal(instance_name("other"), first);
    instance_reset();
    assert_string_not_equal(instance_name(NULL), first);
}

static void fixed_name(void **state)
{
    char longname[INSTANCE_NAME_MAX + 8];

    (void)state;
    instance_reset();
    assert_null(instance_name("has space"));
    assert_null(instance_name("a:b"));
    memset(longname, 'x', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    assert_null(instance_name(longname));
    assert_string_equal(instance_name("pod-7.web_a"), "pod-7.web_a");
    instance_reset();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(made_name),
        cmocka_unit_test(fixed_name),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
