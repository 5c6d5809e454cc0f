/*
 * Result codes shared by every parley module.  Functions return one of these
 * (0 means success) and, where a caller needs the reason, fill an error
 * buffer or the object's errstr with a sentence meant for an operator.
 * Modelled on hiredis's REDIS_ERR_* codes (read.h) and curl's CURLcode.
 */
#ifndef PARLEY_STATUS_H
#define PARLEY_STATUS_H

#define PARLEY_ERRSTR_LEN 256

enum parley_status {
    PARLEY_OK = 0,
    PARLEY_ERR_IO,          /* socket, file or connection failure */
    PARLEY_ERR_EOF,         /* peer closed the connection */
    PARLEY_ERR_PROTOCOL,    /* malformed input from a peer */
    PARLEY_ERR_OOM,         /* allocation failed */
    PARLEY_ERR_TIMEOUT,     /* a deadline passed */
    PARLEY_ERR_TOO_LARGE,   /* input over a named cap */
    PARLEY_ERR_CONFIG,      /* invalid or missing configuration */
    PARLEY_ERR_HTTP,        /* a server answered with an error status */
    PARLEY_ERR_STATE,       /* call not valid now (closed, not connected) */
    PARLEY_ERR_OTHER
};

/* Short name of a status, for log lines ("io", "timeout", ...). */
const char *parley_status_name(int status);

#endif
