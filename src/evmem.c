/*
 * evmem.c — libevent's allocations with a per-thread block cache (evmem.h
 * says why).
 *
 * Every block carries a 16-byte header before what the caller sees: the
 * size asked for and whether it may be kept. A block is kept only by the
 * thread that frees it, in a list per size; no block is shared, so nothing
 * here takes a lock.
 *
 * Under a sanitizer the proxy keeps nothing (evmem_budget 0): a block handed
 * straight back to the next buffer would hide a use after free from ASan's
 * quarantine, and a free from TSan. The unit test sets a budget to test the
 * cache itself; there a kept block is poisoned, so a use before it is taken
 * again still reports.
 */
#include "evmem.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define EVMEM_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define EVMEM_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define EVMEM_POISON(p, n) ((void)(p), (void)(n))
#define EVMEM_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

/* 1, 2, 4, 8 and 16 KiB. */
#define EVMEM_NCLASS 5
#define EVMEM_UNKEPT UINT32_MAX

struct evmem_hdr {
    size_t size;                /* asked for */
    uint32_t cls;               /* < EVMEM_NCLASS: may be kept; else EVMEM_UNKEPT */
    uint32_t pad;
};
_Static_assert(sizeof(struct evmem_hdr) == 16, "the header keeps malloc's alignment");

struct evmem_block {
    struct evmem_block *next;
};

struct evmem_cache {
    struct evmem_block *head[EVMEM_NCLASS];
    size_t bytes;
    bool keyed;                 /* its exit hook is set */
    bool gone;                  /* its thread is exiting: keep nothing more */
};

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
static size_t evmem_budget = 0;
#else
static size_t evmem_budget = EVMEM_CACHE_BYTES;
#endif

static _Thread_local struct evmem_cache cache;
static pthread_key_t cache_key;
static pthread_once_t cache_once = PTHREAD_ONCE_INIT;
static bool cache_key_ok;

static void cache_exit(void *arg)
{
    (void)arg;
    evmem_release();
    cache.gone = true;
}

static void cache_key_init(void)
{
    cache_key_ok = pthread_key_create(&cache_key, cache_exit) == 0;
}

/* The class of a block of `size` bytes, or EVMEM_UNKEPT. */
static uint32_t evmem_class(size_t size)
{
    if (size < EVMEM_MIN || size > EVMEM_MAX || (size & (size - 1)) != 0) {
        return EVMEM_UNKEPT;
    }
    uint32_t c = 0;
    for (size_t s = EVMEM_MIN; s < size; s <<= 1) {
        c++;
    }
    return c;
}

static struct evmem_hdr *evmem_hdr(void *p)
{
    return (struct evmem_hdr *)((char *)p - sizeof(struct evmem_hdr));
}

void *evmem_malloc(size_t size)
{
    uint32_t cls = evmem_class(size);
    struct evmem_hdr *h;

    if (cls != EVMEM_UNKEPT && cache.head[cls] != NULL) {
        struct evmem_block *b = cache.head[cls];
        EVMEM_UNPOISON(b, size);
        cache.head[cls] = b->next;
        cache.bytes -= size;
        h = evmem_hdr(b);
        EVMEM_UNPOISON(h, sizeof(*h));
        return b;
    }
    if (size > SIZE_MAX - sizeof(*h) || (h = malloc(sizeof(*h) + size)) == NULL) {
        return NULL;
    }
    h->size = size;
    h->cls = cls;
    h->pad = 0;
    return h + 1;
}

void evmem_free(void *p)
{
    if (p == NULL) {
        return;
    }
    struct evmem_hdr *h = evmem_hdr(p);
    size_t size = h->size;
    uint32_t cls = h->cls;

    if (cls == EVMEM_UNKEPT || cache.gone || cache.bytes + size > evmem_budget) {
        free(h);
        return;
    }
    if (!cache.keyed) {
        /* The first block this thread keeps: have them freed at its exit. */
        pthread_once(&cache_once, cache_key_init);
        if (!cache_key_ok || pthread_setspecific(cache_key, &cache) != 0) {
            free(h);
            return;
        }
        cache.keyed = true;
    }
    struct evmem_block *b = p;
    b->next = cache.head[cls];
    cache.head[cls] = b;
    cache.bytes += size;
    EVMEM_POISON(h, sizeof(*h) + size);
}

void *evmem_realloc(void *p, size_t size)
{
    if (p == NULL) {
        return evmem_malloc(size);
    }
    struct evmem_hdr *h = evmem_hdr(p);
    if (h->cls == EVMEM_UNKEPT && evmem_class(size) == EVMEM_UNKEPT) {
        if (size > SIZE_MAX - sizeof(*h) || (h = realloc(h, sizeof(*h) + size)) == NULL) {
            return NULL;    /* p is untouched, as realloc's contract */
        }
        h->size = size;
        return h + 1;
    }
    void *q = evmem_malloc(size);
    if (q == NULL) {
        return NULL;
    }
    memcpy(q, p, h->size < size ? h->size : size);
    evmem_free(p);
    return q;
}

void evmem_set_budget(size_t bytes)
{
    evmem_budget = bytes;
}

size_t evmem_cached_bytes(void)
{
    return cache.bytes;
}

void evmem_release(void)
{
    for (uint32_t c = 0; c < EVMEM_NCLASS; c++) {
        size_t size = (size_t)EVMEM_MIN << c;
        while (cache.head[c] != NULL) {
            struct evmem_block *b = cache.head[c];
            EVMEM_UNPOISON(evmem_hdr(b), sizeof(struct evmem_hdr) + size);
            cache.head[c] = b->next;
            free(evmem_hdr(b));
        }
    }
    cache.bytes = 0;
}

void evmem_install(void)
{
    event_set_mem_functions(evmem_malloc, evmem_realloc, evmem_free);
    atexit(evmem_release);      /* the main thread's; others' at their exit */
}
