/*
 * A small string-keyed hash table with chaining, for the router's
 * per-room queues and per-user rate windows.  Keys are copied (into the
 * entry: one allocation each); values are borrowed (the caller frees
 * them, usually after dict_delete).  The table doubles when it holds
 * more entries than buckets, so lookups stay O(1) for thousands of
 * rooms.
 */
#ifndef PARLEY_DICT_H
#define PARLEY_DICT_H

#include <stddef.h>

struct dict;

/* NULL on allocation failure. */
struct dict *dict_create(void);
/* The value for key, or NULL. */
void *dict_get(const struct dict *d, const char *key);
/* Insert or replace; PARLEY_OK or PARLEY_ERR_OOM (table unchanged). */
int dict_set(struct dict *d, const char *key, void *value);
/* Remove key (no-op when absent); returns the old value or NULL. */
void *dict_delete(struct dict *d, const char *key);
size_t dict_size(const struct dict *d);
/* Call fn for each entry; fn must not modify the table. */
void dict_foreach(const struct dict *d,
                  void (*fn)(const char *key, void *value, void *arg),
                  void *arg);
/* Free the table and keys (not the values). */
void dict_free(struct dict *d);

#endif
