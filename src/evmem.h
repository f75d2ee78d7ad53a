/*
 * evmem.h — libevent's allocations, with a per-thread cache of the buffer
 * blocks it takes and gives back on every request.
 *
 * An evbuffer takes a block of 1 KiB or more (a power of two) each time data
 * is added to it empty, and frees it once drained: two or three times per
 * proxied request (a client's input, a backend's output and input). glibc's
 * per-thread cache stops just below 1 KiB, so each of them went through its
 * shared bins, about 300 instructions a time (docs/ARCHITECTURE.md, "What a
 * request costs"). evmem_install makes libevent allocate through here: a
 * thread keeps the blocks of 1 to 16 KiB it frees, up to EVMEM_CACHE_BYTES,
 * and takes them back before asking malloc. Everything else goes to malloc,
 * as before.
 */
#ifndef RP_EVMEM_H
#define RP_EVMEM_H

#include <stddef.h>

/* What one thread keeps at most, in blocks it freed (none in a sanitizer
 * build: evmem.c says why). */
#define EVMEM_CACHE_BYTES (1024 * 1024)

/* Smallest and largest block kept: libevent's chains are powers of two from
 * 1 KiB. */
#define EVMEM_MIN 1024
#define EVMEM_MAX 16384

/* Route libevent's allocations through here. Once, first thing in main:
 * libevent must not have allocated anything yet. */
void evmem_install(void);

/* The functions installed; exported for the unit test. */
void *evmem_malloc(size_t size);
void *evmem_realloc(void *p, size_t size);
void evmem_free(void *p);

/* Set what each thread may keep, before any thread but main runs (the unit
 * test: it tests the cache in the sanitizer build too). */
void evmem_set_budget(size_t bytes);

/* Bytes the calling thread keeps now. */
size_t evmem_cached_bytes(void);

/* Give the calling thread's blocks back to malloc (done on its own at a
 * thread's exit; the main thread calls it before exiting). */
void evmem_release(void);

#endif
