/*
 * A stand-alone main for the fuzz targets when they are not linked with
 * libFuzzer: it replays every file named on the command line (or in a
 * directory), then feeds a fixed number of pseudo-random mutations of
 * them, so ctest exercises each parser with hostile bytes under ASan and
 * UBSan in the ordinary build.  scripts/fuzz.sh builds the same targets
 * with clang -fsanitize=fuzzer for real coverage-guided runs.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Inputs are capped so a stray large file cannot slow the suite. */
#define DRIVER_INPUT_MAX (256 * 1024)
#define DRIVER_MUTATIONS 20000
#define DRIVER_SEEDS_MAX 256

static uint8_t *seeds[DRIVER_SEEDS_MAX];
static size_t seed_len[DRIVER_SEEDS_MAX];
static size_t n_seeds;

static void add_seed(const char *path)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf;
    size_t n;

    if (!f || n_seeds == DRIVER_SEEDS_MAX) {
        if (f)
            fclose(f);
        return;
    }
    buf = malloc(DRIVER_INPUT_MAX);
    if (!buf) {
        fclose(f);
        return;
    }
    n = fread(buf, 1, DRIVER_INPUT_MAX, f);
    fclose(f);
    seeds[n_seeds] = buf;
    seed_len[n_seeds++] = n;
}

static void add_path(const char *path)
{
    struct stat st;
    DIR *d;
    struct dirent *e;

    if (stat(path, &st) != 0)
        return;
    if (!S_ISDIR(st.st_mode)) {
        add_seed(path);
        return;
    }
    d = opendir(path);
    if (!d)
        return;
    while ((e = readdir(d))) {
        char full[4096];

        if (e->d_name[0] == '.')
            continue;
        if ((size_t)snprintf(full, sizeof(full), "%s/%s", path,
                             e->d_name) < sizeof(full))
            add_seed(full);
    }
    closedir(d);
}

/* xorshift: deterministic, so a failure reproduces. */
static uint64_t rnd_state = 88172645463325252ULL;

static uint64_t rnd(void)
{
    rnd_state ^= rnd_state << 13;
    rnd_state ^= rnd_state >> 7;
    rnd_state ^= rnd_state << 17;
    return rnd_state;
}

int main(int argc, char **argv)
{
    static const uint8_t specials[] = { 0, '\r', '\n', 0x01, 0xff, 0xc3,
                                        '"', '{', '}', '[', ']', ':', '\\',
                                        ' ', 0xe2, 0x80 };
    uint8_t *buf = malloc(DRIVER_INPUT_MAX);

    if (!buf)
        return 1;
    for (int i = 1; i < argc; i++)
        add_path(argv[i]);
    LLVMFuzzerTestOneInput((const uint8_t *)"", 0);
    for (size_t i = 0; i < n_seeds; i++)
        LLVMFuzzerTestOneInput(seeds[i], seed_len[i]);
    for (int m = 0; m < DRIVER_MUTATIONS && n_seeds > 0; m++) {
        size_t s = rnd() % n_seeds;
        size_t n = seed_len[s];
        int edits = 1 + (int)(rnd() % 8);

        memcpy(buf, seeds[s], n);
        for (int e = 0; e < edits; e++) {
            size_t at = n ? rnd() % n : 0;

            switch (rnd() % 4) {
            case 0:     /* flip a byte */
                if (n)
                    buf[at] ^= (uint8_t)(1u << (rnd() % 8));
                break;
            case 1:     /* special byte */
                if (n)
                    buf[at] = specials[rnd() % sizeof(specials)];
                break;
            case 2:     /* truncate */
                n = at;
                break;
            default:    /* duplicate a span */
                if (n && n < DRIVER_INPUT_MAX / 2) {
                    size_t len = 1 + rnd() % (n - at);

                    memmove(buf + at + len, buf + at, n - at);
                    n += len;
                }
                break;
            }
        }
        LLVMFuzzerTestOneInput(buf, n);
    }
    printf("fuzz driver: %zu seeds, %d mutations, no crash\n", n_seeds,
           n_seeds ? DRIVER_MUTATIONS : 0);
    for (size_t i = 0; i < n_seeds; i++)
        free(seeds[i]);
    free(buf);
    return 0;
}
