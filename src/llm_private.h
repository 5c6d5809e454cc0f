/*
 * Helpers shared by the llm*.c files (not part of the API: callers use
 * llm.h).  llm_parse.c owns them: the key redaction every error text and
 * answer goes through, the cut-to-fit copy of error texts, the request
 * body, and the pieces of an API error body or usage object that both a
 * whole answer (llm.c) and a streamed one (llm_stream.c) read.
 */
#ifndef PARLEY_LLM_PRIVATE_H
#define PARLEY_LLM_PRIVATE_H

#include <stddef.h>

struct cJSON;

/* Working buffer for an error text before it is cut to errstr, so that
 * redaction sees whole secrets rather than a truncated prefix. */
#define LLM_ERRTEXT_MAX 1024

/* Redaction ignores secrets shorter than this (as log.c does): they would
 * match ordinary text. */
#define LLM_SECRET_MIN 4

/* Copy s with every occurrence of key replaced by "[redacted]".  Returns
 * NULL on OOM (the caller frees the copy); *outlen is the new length. */
char *llm_redact_copy(const char *s, size_t len, const char *key,
                      size_t *outlen);
/* Replace the key (and every secret the logger knows) in buf, in place. */
void llm_redact_text(char *buf, size_t buflen, const char *key);
/* Copy src into dst, cut to fit (after redaction). */
void llm_text_copy(char *dst, size_t dstlen, const char *src);
/* Make text safe for one log line: control bytes become spaces. */
void llm_strip_controls(char *s);

/* The request body, as a malloc'ed string or NULL on OOM; stream adds
 * "stream" and asks for usage in the last chunk. */
char *llm_body_build(const char *model, const struct cJSON *messages,
                     double temperature, int max_tokens, int stream);
/* A usage count, or -1 when absent or not a sane non-negative integer. */
long llm_token_count(const struct cJSON *usage, const char *name);
/* Fill buf from a parsed error body; 1 if anything was found. */
int llm_error_from_json(const struct cJSON *root, char *buf, size_t buflen);

#endif
