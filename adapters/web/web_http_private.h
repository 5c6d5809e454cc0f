/*
 * Internal interface of the web adapter's HTTP side, shared by its two
 * files and by nothing else: one request (struct web_req, MHD's
 * con_cls), the cookie names, the reply helpers and the route handlers
 * dispatch calls.
 *
 *   web_http.c  responses, checks, dispatch, the daemon on the loop
 *   web_api.c   GET /api/history, GET /api/events, the POST handlers
 */
#ifndef PARLEY_WEB_HTTP_PRIVATE_H
#define PARLEY_WEB_HTTP_PRIVATE_H

#include <stddef.h>

#include <microhttpd.h>

#include "web.h"


#define COOKIE_SID "parley_sid"
#define COOKIE_TOKEN "parley_token"

/* One request (MHD's con_cls). */
struct web_req {
    struct web *w;
    struct MHD_Connection *conn;
    char room[WEB_ROOM_LEN + 1];
    char new_sid[WEB_SID_HEX + 1];  /* set as a cookie when not empty */
    char *body;
    size_t len;
    size_t max;                 /* body cap: WEB_BODY_MAX, or the picture
                                   cap for /api/picture */
    int post;
    int rejected;               /* a response was queued on the first
                                   call */
    /* GET /api/history, answered from Redis callbacks. */
    int waiting;                /* a state callback is due */
    int orphan;                 /* the connection went: the callback
                                   frees */
    char *model;
    struct MHD_Response *ready;
    unsigned ready_code;
    struct web_req *prev, *next;    /* waiting requests, for stop */
};

/* web_http.c: responses.  Each carries the security headers and, when
 * req->new_sid is set, the session cookie (req may be NULL). */
void web_http_headers(struct web_req *req, struct MHD_Response *resp);
/* A response with a copy of body; the caller owns it (destroy it). */
struct MHD_Response *web_http_make(struct web_req *req, const char *type,
                                   const char *body, size_t len);
/* Queue a response with a copy of body. */
enum MHD_Result web_http_reply(struct web_req *req,
                               struct MHD_Connection *c, unsigned code,
                               const char *type, const char *body);
enum MHD_Result web_http_reply_json(struct web_req *req,
                                    struct MHD_Connection *c,
                                    unsigned code, const char *json);
/* Free req and all it holds (body, model, a ready response). */
void web_req_free(struct web_req *req);

/* web_api.c: the routes, called by dispatch once the checks passed and
 * the body is in. */
enum MHD_Result web_api_history(struct web_req *req,
                                struct MHD_Connection *c);
enum MHD_Result web_api_events(struct web_req *req,
                               struct MHD_Connection *c);
enum MHD_Result web_api_send(struct web_req *req, struct MHD_Connection *c);
enum MHD_Result web_api_picture(struct web_req *req,
                                struct MHD_Connection *c);
enum MHD_Result web_api_login(struct web_req *req, struct MHD_Connection *c);

#endif
