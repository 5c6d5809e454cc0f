/*
 * /healthz and /metrics on libmicrohttpd (see monitor.h).  GET only;
 * /healthz answers 200 with a JSON summary when Redis and every adapter
 * are connected and 503 with the reason otherwise; /metrics answers the
 * Prometheus text format 0.0.4.  Connections are capped in total and per
 * client address and time out quickly, so neither a slow client nor one
 * holding idle connections can keep health checks out.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <microhttpd.h>

#include "metrics.h"
#include "monitor.h"
#include "status.h"

/*
 * Connection bounds.  Health checkers and scrapers make one short request
 * at a time, so a client holding more than a few connections is broken or
 * hostile: MONITOR_PER_CLIENT_MAX keeps one address from taking the
 * MONITOR_CONNECTIONS_MAX slots (MHD closes its extra connections at
 * once), and MONITOR_TIMEOUT_S closes a connection idle that long, so
 * even connections from the checker's own address free their slot
 * within seconds.  A request over loopback or a LAN takes milliseconds.
 */
#define MONITOR_CONNECTIONS_MAX 64
#define MONITOR_PER_CLIENT_MAX 8
#define MONITOR_TIMEOUT_S 3
#define MONITOR_HEALTH_MAX 8192

struct monitor {
    struct MHD_Daemon *daemon;
    int port;
};

static enum MHD_Result monitor_reply(struct MHD_Connection *conn,
                                     unsigned int code, const char *type,
                                     const char *body, size_t len)
{
    struct MHD_Response *resp;
    enum MHD_Result ret;

    resp = MHD_create_response_from_buffer(len, (void *)body,
                                           MHD_RESPMEM_MUST_COPY);
    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL,
                            "no-store");
    ret = MHD_queue_response(conn, code, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result monitor_handle(void *cls, struct MHD_Connection *conn,
                                      const char *url, const char *method,
                                      const char *version,
                                      const char *upload_data,
                                      size_t *upload_data_size,
                                      void **con_cls)
{
    static const char text[] = "text/plain; version=0.0.4; charset=utf-8";

    (void)cls;
    (void)version;
    (void)upload_data;
    (void)upload_data_size;
    (void)con_cls;
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return monitor_reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, text,
                             "method not allowed\n", 19);
    if (strcmp(url, "/metrics") == 0) {
        char *buf = malloc(METRICS_TEXT_MAX);
        enum MHD_Result ret;
        size_t len;

        if (!buf)
            return MHD_NO;
        len = metrics_render(buf, METRICS_TEXT_MAX);
        ret = monitor_reply(conn, MHD_HTTP_OK, text, buf, len);
        free(buf);
        return ret;
    }
    if (strcmp(url, "/healthz") == 0) {
        char buf[MONITOR_HEALTH_MAX];
        int healthy = metrics_health(buf, sizeof(buf));

        return monitor_reply(conn, healthy ? MHD_HTTP_OK :
                             MHD_HTTP_SERVICE_UNAVAILABLE,
                             "application/json", buf, strlen(buf));
    }
    return monitor_reply(conn, MHD_HTTP_NOT_FOUND, text,
                         "not found: try /healthz or /metrics\n", 36);
}

int monitor_parse_listen(const char *listen, struct sockaddr_in *sa)
{
    const char *colon = strrchr(listen, ':');
    char host[64];
    char *end;
    long port;

    if (!colon || (size_t)(colon - listen) >= sizeof(host))
        return -1;
    memcpy(host, listen, (size_t)(colon - listen));
    host[colon - listen] = '\0';
    port = strtol(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end || port < 0 || port > 65535)
        return -1;
    memset(sa, 0, sizeof(*sa));
    sa->sin_family = AF_INET;
    sa->sin_port = htons((unsigned short)port);
    if (strcmp(host, "localhost") == 0 || host[0] == '\0')
        snprintf(host, sizeof(host), "127.0.0.1");
    return inet_pton(AF_INET, host, &sa->sin_addr) == 1 ? 0 : -1;
}

int monitor_start(struct monitor **out, const char *listen, char *err,
                  size_t errlen)
{
    struct sockaddr_in sa;
    struct monitor *mon;
    const union MHD_DaemonInfo *info;

    *out = NULL;
    if (!listen || monitor_parse_listen(listen, &sa) != 0) {
        snprintf(err, errlen, "metrics.listen: expected \"ADDRESS:PORT\" "
                 "with an IPv4 address, got \"%s\"", listen ? listen : "");
        return PARLEY_ERR_CONFIG;
    }
    mon = calloc(1, sizeof(*mon));
    if (!mon) {
        snprintf(err, errlen, "metrics: out of memory");
        return PARLEY_ERR_OOM;
    }
    mon->daemon = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0, NULL, NULL,
        monitor_handle, mon,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned int)MONITOR_CONNECTIONS_MAX,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT,
        (unsigned int)MONITOR_PER_CLIENT_MAX,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)MONITOR_TIMEOUT_S,
        MHD_OPTION_END);
    if (!mon->daemon) {
        snprintf(err, errlen, "metrics.listen: cannot listen on %s (in use, "
                 "or not an address of this host)", listen);
        free(mon);
        return PARLEY_ERR_IO;
    }
    info = MHD_get_daemon_info(mon->daemon, MHD_DAEMON_INFO_BIND_PORT);
    mon->port = info ? info->port : ntohs(sa.sin_port);
    *out = mon;
    return PARLEY_OK;
}

int monitor_port(const struct monitor *mon)
{
    return mon->port;
}

void monitor_stop(struct monitor *mon)
{
    if (!mon)
        return;
    MHD_stop_daemon(mon->daemon);
    free(mon);
}
