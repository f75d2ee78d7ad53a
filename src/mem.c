/*
 * mem.c — allocation that aborts instead of returning NULL (see mem.h for
 * when it is the right choice).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <event2/buffer.h>

#include "mem.h"

_Noreturn void rp_oom(const char *what, size_t size)
{
    char msg[256];
    int n = snprintf(msg, sizeof(msg),
                     "ringproxy: out of memory allocating %s (%zu bytes)\n",
                     what != NULL ? what : "?", size);
    /* write(2), not stdio or the logger: both may need memory themselves. */
    if (n > 0) {
        ssize_t w = write(STDERR_FILENO, msg, (size_t)n < sizeof(msg) ? (size_t)n : sizeof(msg) - 1);
        (void)w;
    }
    abort();
}

void *rp_xmalloc(size_t size, const char *what)
{
    void *p = malloc(size > 0 ? size : 1);
    if (p == NULL) {
        rp_oom(what, size);
    }
    return p;
}

void *rp_xcalloc(size_t n, size_t size, const char *what)
{
    void *p = calloc(n > 0 ? n : 1, size > 0 ? size : 1);
    if (p == NULL) {
        rp_oom(what, n * size);
    }
    return p;
}

void *rp_xrealloc(void *p, size_t size, const char *what)
{
    void *q = realloc(p, size > 0 ? size : 1);
    if (q == NULL) {
        rp_oom(what, size);
    }
    return q;
}

char *rp_xstrdup(const char *s, const char *what)
{
    size_t len = strlen(s);
    char *p = rp_xmalloc(len + 1, what);
    memcpy(p, s, len + 1);
    return p;
}

struct evbuffer *rp_xevbuffer_new(const char *what)
{
    struct evbuffer *b = evbuffer_new();
    if (b == NULL) {
        rp_oom(what, sizeof(void *));
    }
    return b;
}

void rp_xcheck(bool ok, const char *what)
{
    if (!ok) {
        rp_oom(what, 0);
    }
}
