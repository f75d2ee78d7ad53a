/*
 * defer.h — teardown at the end of the loop turn.
 *
 * The rule (docs/ARCHITECTURE.md, "Teardown"): an object's close function
 * may be called from any callback, its own included. It stops the object's
 * events and makes further calls on it no-ops or errors, then hands the
 * freeing to defer_add; the memory is freed at the end of the loop turn
 * (worker_flush in proxy.c, or the queue's own event where no worker runs),
 * never inside the read, write, timer or hiredis callback that decided it.
 *
 * Ownership: the queue owns nothing but its entries; each entry's function
 * owns the object it frees. A queue belongs to one event base and is used
 * from that base's thread only.
 */
#ifndef RP_DEFER_H
#define RP_DEFER_H

#include <stdbool.h>

struct event_base;
struct defer;

typedef void (*defer_fn)(void *obj);

/* A queue on base (aborts with a message when out of memory: mem.h). */
struct defer *defer_new(struct event_base *base);
/* Run what is queued, then free the queue; NULL is fine. */
void defer_free(struct defer *d);
struct event_base *defer_base(const struct defer *d);

/*
 * Queue fn(obj) for the end of the loop turn. Entries run in the order they
 * were added; an entry may add more (they run in the same defer_run).
 */
void defer_add(struct defer *d, defer_fn fn, void *obj);
/* Run every entry queued (the end of the loop turn); true if any ran. */
bool defer_run(struct defer *d);
/* Entries waiting (0 for NULL). */
unsigned defer_pending(const struct defer *d);

#endif
