/*
 * libFuzzer target for config_load: arbitrary bytes as bot.conf.  The
 * input goes through a private temporary file because config_load takes
 * a path (as the real program does), which also exercises the size cap
 * and the raw-text integer scan.  Every error text is checked to be a
 * NUL-terminated string within its buffer, and config_free must leave no
 * leak (ASan's leak checker runs at exit).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
const char *__lsan_default_suppressions(void);

/* libconfig 1.5's scanner leaks string tokens on some syntax errors
 * (input `""` or `"'"'` is enough: libconfig_yylex, strbuf_append).  Those
 * leaks are the library's, not parley's, and would stop every fuzzing
 * run, so allocations made inside libconfig.so are not reported.  The
 * hook's name is LeakSanitizer's API. */
const char *
__lsan_default_suppressions(void)
{
    return "leak:libconfig.so\n";
}

/* Small enough to make the truncation path common. */
#define FUZZ_ERR_LEN 512

static char fuzz_path[] = "/tmp/parley-fuzz-config-XXXXXX";
static int fuzz_fd = -1;

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct config cfg;
    char err[FUZZ_ERR_LEN];

    if (fuzz_fd < 0) {
        fuzz_fd = mkstemp(fuzz_path);
        if (fuzz_fd < 0)
            abort();
    }
    if (ftruncate(fuzz_fd, 0) != 0 || lseek(fuzz_fd, 0, SEEK_SET) != 0)
        abort();
    if (size > 0 && write(fuzz_fd, data, size) != (ssize_t)size)
        abort();

    memset(err, 'X', sizeof(err));
    (void)config_load(&cfg, fuzz_path, err, sizeof(err));
    if (!memchr(err, '\0', sizeof(err)))
        abort();
    config_free(&cfg);
    return 0;
}
