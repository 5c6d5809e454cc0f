/*
 * What the OpenAI stand-in's HTTP/1.1 side (openai_uv.c) shares with its
 * h2c side (openai_h2.c): one answer for a request whatever carried it,
 * the clock stamps, and writing to or closing a connection.
 */
#ifndef PARLEY_OPENAI_UV_H
#define PARLEY_OPENAI_UV_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

/* A request head or body beyond this closes the connection: parley's
 * requests are a few KiB of history. */
#define OPENAI_REQUEST_MAX (4 * 1024 * 1024)

struct openai_conn;

/* The answer to a request for path with body: the body (owned by the
 * caller, NULL for an empty one), its HTTP status, the "bq<id>" of a
 * chat request or -1, and how long to wait before sending it (the model
 * latency for a chat request, else 0). */
char *openai_uv_route(const char *path, const char *body, size_t len,
                      int *status, long *bq, uint64_t *delay_ms);
/* Note that the answer to request bq (arrived at arrived) leaves now. */
void openai_uv_stamp(long bq, uint64_t arrived);
uint64_t openai_uv_now_ns(void);
uv_loop_t *openai_uv_loop(void);

/* Write data (owned, freed after the write) to c; close c. */
void openai_conn_write(struct openai_conn *c, char *data, size_t len);
void openai_conn_close(struct openai_conn *c);

/* h2c on one connection (openai_h2.c); NULL when built without it. */
struct openai_h2;
struct openai_h2 *openai_h2_new(struct openai_conn *c);
int openai_h2_recv(struct openai_h2 *h2, const char *data, size_t len);
void openai_h2_free(struct openai_h2 *h2);

#endif
