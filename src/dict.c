/*
 * String-keyed chained hash table (see dict.h).  FNV-1a is enough here:
 * keys are room and user names chosen by platforms, and a chain that grows
 * long only costs time, never correctness.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dict.h"
#include "status.h"

#define DICT_INITIAL_BUCKETS 64

/* The key lives in the entry: one allocation per room or user, of
 * which thousands can exist at once (issue 11). */
struct dict_entry {
    void *value;
    uint64_t hash;
    struct dict_entry *next;
    char key[];
};

struct dict {
    struct dict_entry **buckets;
    size_t n_buckets;           /* power of two */
    size_t size;
};

static uint64_t dict_hash(const char *key)
{
    uint64_t h = 14695981039346656037ULL;

    for (const unsigned char *p = (const unsigned char *)key; *p; p++) {
        h ^= *p;
        h *= 1099511628211ULL;
    }
    return h;
}

struct dict *dict_create(void)
{
    struct dict *d = calloc(1, sizeof(*d));

    if (!d)
        return NULL;
    d->buckets = calloc(DICT_INITIAL_BUCKETS, sizeof(*d->buckets));
    if (!d->buckets) {
        free(d);
        return NULL;
    }
    d->n_buckets = DICT_INITIAL_BUCKETS;
    return d;
}

static struct dict_entry **dict_find(const struct dict *d, const char *key,
                                     uint64_t hash)
{
    struct dict_entry **pp = &d->buckets[hash & (d->n_buckets - 1)];

    while (*pp && ((*pp)->hash != hash || strcmp((*pp)->key, key) != 0))
        pp = &(*pp)->next;
    return pp;
}

void *dict_get(const struct dict *d, const char *key)
{
    struct dict_entry **pp = dict_find(d, key, dict_hash(key));

    return *pp ? (*pp)->value : NULL;
}

/* Double the bucket array.  Failure is harmless: chains just get longer. */
static void dict_grow(struct dict *d)
{
    size_t n = d->n_buckets * 2;
    struct dict_entry **nb = calloc(n, sizeof(*nb));

    if (!nb)
        return;
    for (size_t i = 0; i < d->n_buckets; i++) {
        struct dict_entry *e = d->buckets[i];

        while (e) {
            struct dict_entry *next = e->next;
            size_t j = e->hash & (n - 1);

            e->next = nb[j];
            nb[j] = e;
            e = next;
        }
    }
    free(d->buckets);
    d->buckets = nb;
    d->n_buckets = n;
}

int dict_set(struct dict *d, const char *key, void *value)
{
    uint64_t hash = dict_hash(key);
    struct dict_entry **pp = dict_find(d, key, hash);
    struct dict_entry *e;
    size_t n;

    if (*pp) {
        (*pp)->value = value;
        return PARLEY_OK;
    }
    n = strlen(key) + 1;
    e = malloc(sizeof(*e) + n);
    if (!e)
        return PARLEY_ERR_OOM;
    memcpy(e->key, key, n);
    e->next = NULL;
    e->value = value;
    e->hash = hash;
    *pp = e;
    d->size++;
    if (d->size > d->n_buckets)
        dict_grow(d);
    return PARLEY_OK;
}

void *dict_delete(struct dict *d, const char *key)
{
    struct dict_entry **pp = dict_find(d, key, dict_hash(key));
    struct dict_entry *e = *pp;
    void *value;

    if (!e)
        return NULL;
    *pp = e->next;
    value = e->value;
    free(e);
    d->size--;
    return value;
}

size_t dict_size(const struct dict *d)
{
    return d->size;
}

void dict_foreach(const struct dict *d,
                  void (*fn)(const char *key, void *value, void *arg),
                  void *arg)
{
    for (size_t i = 0; i < d->n_buckets; i++)
        for (struct dict_entry *e = d->buckets[i]; e; e = e->next)
            fn(e->key, e->value, arg);
}

void dict_free(struct dict *d)
{
    if (!d)
        return;
    for (size_t i = 0; i < d->n_buckets; i++) {
        struct dict_entry *e = d->buckets[i];

        while (e) {
            struct dict_entry *next = e->next;

            free(e);
            e = next;
        }
    }
    free(d->buckets);
    free(d);
}
