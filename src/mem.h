/*
 * mem.h — allocation where failing cannot be handled.
 *
 * The convention (docs/ARCHITECTURE.md, "Errors"): an allocation whose
 * failure the caller can turn into a clean failure of one request, client,
 * connection or reload is checked there and reported (SERVER_ERROR, a closed
 * client, a refused reload). Where no such way out exists (a table the
 * process cannot run without, an event or buffer whose absence would put a
 * reply stream out of step) the x-functions below are used: they never
 * return NULL but abort the process with a message naming what was being
 * allocated. Nothing continues silently after a failed allocation.
 */
#ifndef RP_MEM_H
#define RP_MEM_H

#include <stdbool.h>
#include <stddef.h>

struct evbuffer;

/* Print "ringproxy: out of memory allocating <what> (<size> bytes)" to
 * stderr and the log, then abort(). */
_Noreturn void rp_oom(const char *what, size_t size);

void *rp_xmalloc(size_t size, const char *what);
void *rp_xcalloc(size_t n, size_t size, const char *what);
void *rp_xrealloc(void *p, size_t size, const char *what);
char *rp_xstrdup(const char *s, const char *what);
struct evbuffer *rp_xevbuffer_new(const char *what);
/* A step that fails only when memory runs out and that nothing may skip
 * (attaching a Redis connection to the loop, the AUTH and SELECT every
 * later command depends on): abort as rp_oom unless ok. */
void rp_xcheck(bool ok, const char *what);

#endif
