/*
 * What a process costs in RSS before it does any work of its own: the
 * floor under the "RSS idle" figure of scripts/bench/run.sh.  It does
 * only what every parley process does first: curl_global_init (which
 * initialises OpenSSL), one easy and one multi handle.  Built twice:
 *
 *   rss_floor_curl   linked with libcurl alone
 *   rss_floor_libs   linked with every library parley links (parley_core)
 *
 * and prints "VmRSS RssAnon RssFile" in KiB from /proc/self/status, so
 * the bench can show how much of parley's idle RSS is the shared code
 * of its libraries (mapped and relocated, their constructors run) and
 * how much is parley's own.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#ifdef RSS_FLOOR_LIBS
#include "loop.h"
#endif

/* One "Name:   123 kB" line of /proc/self/status, in KiB; -1 if absent. */
static long status_kb(const char *name)
{
    char line[256];
    size_t n = strlen(name);
    long kb = -1;
    FILE *f = fopen("/proc/self/status", "r");

    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, name, n) == 0 && line[n] == ':') {
            kb = strtol(line + n + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kb;
}

int main(void)
{
    CURL *easy;
    CURLM *multi;
#ifdef RSS_FLOOR_LIBS
    struct loop *loop = NULL;

    /* parley's own loop: curl_global_init, a uv loop, a multi handle. */
    if (loop_create(&loop, NULL) != 0) {
        fprintf(stderr, "rss_floor: loop_create failed\n");
        return 1;
    }
#else
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "rss_floor: curl_global_init failed\n");
        return 1;
    }
#endif
    easy = curl_easy_init();
    multi = curl_multi_init();
    if (!easy || !multi) {
        fprintf(stderr, "rss_floor: out of memory\n");
        return 1;
    }
    printf("%ld %ld %ld\n", status_kb("VmRSS"), status_kb("RssAnon"),
           status_kb("RssFile"));
    curl_multi_cleanup(multi);
    curl_easy_cleanup(easy);
#ifdef RSS_FLOOR_LIBS
    loop_free(loop);
#endif
    curl_global_cleanup();
    return 0;
}
