/*
 * The monitoring endpoint: /healthz and /metrics over HTTP, served by
 * libmicrohttpd on its own thread.  That thread only renders what
 * metrics.c holds; it never touches the loop, the router or Redis.  Off
 * unless metrics.listen is set; meant for loopback or a private network.
 */
#ifndef PARLEY_MONITOR_H
#define PARLEY_MONITOR_H

#include <stddef.h>

struct monitor;
struct sockaddr_in;

/*
 * Listen on "HOST:PORT" (an IPv4 address; "localhost" means 127.0.0.1;
 * port 0 picks a free one).  On failure returns PARLEY_ERR_CONFIG (bad
 * address) or PARLEY_ERR_IO (bind failed) with err filled.
 */
int monitor_start(struct monitor **out, const char *listen, char *err,
                  size_t errlen);
/* The port actually bound (useful with port 0). */
int monitor_port(const struct monitor *mon);
/*
 * "HOST:PORT" (an IPv4 address, "localhost" or empty for 127.0.0.1, port
 * 0..65535) into *sa; 0, or -1 when it is not one.  The web chat's listen
 * setting follows the same rule.
 */
int monitor_parse_listen(const char *listen, struct sockaddr_in *sa);
/* Stop the thread and free. */
void monitor_stop(struct monitor *mon);

#endif
