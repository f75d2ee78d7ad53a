/*
 * defer.c — a FIFO of frees run at the end of the loop turn (defer.h).
 *
 * The loop's owner calls defer_run once per turn (worker_flush); the queue
 * also activates an event of its own when its first entry arrives, so a
 * loop with no such owner (the CLIs, the unit tests) runs it after the
 * callback that queued it returns, still outside that callback.
 */
#include <assert.h>
#include <stdlib.h>
#include <event2/event.h>

#include "defer.h"
#include "mem.h"

struct defer_entry {
    struct defer_entry *next;
    defer_fn fn;
    void *obj;
};

struct defer {
    struct event_base *base;
    struct event *ev;           /* active while entries wait */
    struct defer_entry *head, **tail;
    unsigned n;
    bool running;               /* defer_run is under way */
};

static void defer_event_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    defer_run(arg);
}

struct defer *defer_new(struct event_base *base)
{
    struct defer *d = rp_xcalloc(1, sizeof(*d), "the teardown queue");

    d->base = base;
    d->ev = event_new(base, -1, 0, defer_event_cb, d);
    if (d->ev == NULL) {
        rp_oom("the teardown queue's event", sizeof(struct event *));
    }
    d->tail = &d->head;
    return d;
}

struct event_base *defer_base(const struct defer *d)
{
    return d->base;
}

void defer_add(struct defer *d, defer_fn fn, void *obj)
{
    struct defer_entry *e = rp_xmalloc(sizeof(*e), "a teardown entry");

    e->next = NULL;
    e->fn = fn;
    e->obj = obj;
    *d->tail = e;
    d->tail = &e->next;
    d->n++;
    if (!d->running && !event_pending(d->ev, EV_TIMEOUT, NULL)) {
        event_active(d->ev, EV_TIMEOUT, 0);
    }
}

bool defer_run(struct defer *d)
{
    struct defer_entry *e;
    bool ran = false;

    if (d == NULL || d->running) {
        return false;   /* an entry's function called it: the loop below goes on */
    }
    d->running = true;
    while ((e = d->head) != NULL) {
        d->head = e->next;
        if (d->head == NULL) {
            d->tail = &d->head;
        }
        assert(d->n > 0);
        d->n--;
        e->fn(e->obj);
        free(e);
        ran = true;
    }
    assert(d->n == 0);
    d->running = false;
    event_del(d->ev);   /* nothing left for it (a no-op when it is not active) */
    return ran;
}

unsigned defer_pending(const struct defer *d)
{
    return d == NULL ? 0 : d->n;
}

void defer_free(struct defer *d)
{
    if (d == NULL) {
        return;
    }
    defer_run(d);
    event_free(d->ev);
    free(d);
}
