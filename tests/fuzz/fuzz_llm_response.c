/*
 * libFuzzer target for the two parsers that read bytes from the LLM API:
 * llm_parse_response (a 200 body) and llm_parse_error (any other body).
 * Besides memory errors it checks the promises callers rely on: OK means
 * non-empty content, a failure always carries a reason, and error texts
 * are single printable lines that fit their buffer.
 *
 * Build by hand (the lead wires it into CMake):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Isrc \
 *     tests/fuzz/fuzz_llm_response.c src/llm.c src/llm_parse.c \
 *     src/llm_stream.c src/loop.c src/log.c \
 *     -lcjson -lcurl -luv -lm -o fuzz_llm_response
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "llm.h"
#include "status.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_line(const char *s, size_t cap)
{
    size_t n = strnlen(s, cap);

    if (n >= cap)
        abort();                /* not terminated inside its buffer */
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            abort();            /* would break a log line */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct llm_result res;
    char buf[256];
    size_t small;
    int rc;

    memset(&res, 0, sizeof(res));
    rc = llm_parse_response((const char *)data, size, &res);
    if (rc != res.status)
        abort();
    if (rc == PARLEY_OK) {
        if (!res.content || res.content[0] == '\0')
            abort();
        if (res.errstr[0] != '\0')
            abort();
    } else {
        if (res.content || res.errstr[0] == '\0')
            abort();
        check_line(res.errstr, sizeof(res.errstr));
    }
    if (res.prompt_tokens < -1 || res.completion_tokens < -1)
        abort();
    llm_result_clear(&res);

    llm_parse_error((const char *)data, size, buf, sizeof(buf));
    check_line(buf, sizeof(buf));
    if (buf[0] == '\0')
        abort();                /* an error always gets some text */

    /* the same into a tiny buffer whose size the input picks */
    small = size ? (size_t)(data[0] % 16) + 1 : 1;
    memset(buf, 'Z', sizeof(buf));
    llm_parse_error((const char *)data, size, buf, small);
    check_line(buf, small);
    if (buf[small] != 'Z')
        abort();                /* wrote past the buffer it was given */
    return 0;
}
