/*
 * hub.h — an indexed pool served by several event-loop threads
 * (docs/ARCHITECTURE.md, "Threads: indexed pools").
 *
 * The home thread's pool holds the index writer, the migration and the
 * Redis coordination; each request worker serves a copy of the pool (its
 * own listener, clients and backend connections). The hub is what they
 * share: the routing the home pool publishes (serve directly by a ring, or
 * hand every command to the home thread through the link, a private unix
 * socket the home pool accepts on), the copies' acknowledgements of it,
 * the fence deadline, the index writes the copies send home and the index
 * and migration figures the copies' `stats` show.
 *
 * Ownership: reference counted (hub_ref/hub_unref, atomic): the home pool
 * and each copy hold one. Every field is behind the hub's lock except the
 * fence deadline (an atomic); nothing on the request path takes the lock:
 * a copy reads the routing when woken, and sends its index writes and
 * acknowledgements once per loop turn.
 */
#ifndef RP_HUB_H
#define RP_HUB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct ring;
struct evbuffer;
struct hub;

/* The routing the home pool publishes. */
struct hub_route {
    uint32_t gen;               /* bumped by every publication that changes
                                   the rest: what copies acknowledge */
    bool ready;                 /* the home pool serves: copies listen */
    bool direct;                /* copies route by `ring` on their own
                                   backends; else every command of the pool
                                   goes through the link (a resize, fenced,
                                   not ready) */
    struct ring *ring;          /* direct: the data ring */
};

/* The copies' index writes waiting for the home thread, at most (bytes):
 * past it writes are dropped and counted as the index writer's own are. */
#define HUB_INDEX_MAX (16u << 20)

/* A hub for a pool served by nthreads threads (home = thread 0), whose
 * link listens on the abstract unix address `link` ("@..."). NULL: out of
 * memory or descriptors. */
struct hub *hub_new(uint32_t nthreads, const char *link);
struct hub *hub_ref(struct hub *h);
void hub_unref(struct hub *h);
const char *hub_link(const struct hub *h);

/* --- the home pool ------------------------------------------------------- */

/* Publish the routing (a reference to ring is taken when direct). A change
 * starts a new generation and wakes every copy. */
void hub_publish(struct hub *h, bool ready, bool direct, struct ring *ring);
/* Does the routing last published let the copies route directly? (Read by
 * the home thread only, its own writes.) */
bool hub_direct(const struct hub *h);
/* Has every attached copy read the current generation (not yet drained
 * what it sent by the one before: hub_settled)? */
bool hub_seen(struct hub *h);
/* Has every attached copy acknowledged the current generation? */
bool hub_settled(struct hub *h);
/* Copies refuse the pool's commands from this monotonic millisecond on
 * (docs/ARCHITECTURE.md, I6): 0 now, UINT64_MAX never. */
void hub_set_fence(struct hub *h, uint64_t fence_at);
/* Readable (an eventfd) when copies sent index writes. */
int hub_home_fd(const struct hub *h);
/* Move the copies' index writes into out (records: hub_record_*); returns
 * how many were dropped since the last call. */
uint64_t hub_take_index(struct hub *h, struct evbuffer *out);
/* The index and migration lines of `stats`, for the copies to show. */
void hub_set_stats(struct hub *h, struct evbuffer *text);

/* --- a copy on thread tid ------------------------------------------------ */

/* Attach (returns an eventfd that is readable when the routing changes:
 * hub_read), or -1. A copy attached adopts the current routing: it has no
 * request of an older one to drain. */
int hub_attach(struct hub *h, uint32_t tid);
/* The copy whose wake-up hub_attach returned leaves (the descriptor is
 * closed); a newer copy attached on the same thread since keeps its place. */
void hub_detach(struct hub *h, uint32_t tid, int wake_fd);
/* The routing, if its generation differs from have->gen: *have is replaced
 * (its ring unreferenced, the new one referenced) and true returned. */
bool hub_read(struct hub *h, int wake_fd, struct hub_route *have);
/* The copy routes by generation gen and has nothing in flight of before. */
void hub_ack(struct hub *h, uint32_t tid, uint32_t gen);
uint64_t hub_fence_at(const struct hub *h);
/* Send a batch of index records (emptied); the home thread is woken. */
void hub_send_index(struct hub *h, struct evbuffer *batch);
void hub_copy_stats(struct hub *h, struct evbuffer *out);

/* An index record: a key stored, with its ring hash. */
void hub_record_add(struct evbuffer *batch, const char *key, size_t len, uint32_t hash);
/* The next record of buf (removed), or false when none is whole. key has
 * room for 250 bytes (PROTO_KEY_MAX). */
bool hub_record_next(struct evbuffer *buf, char *key, size_t *len, uint32_t *hash);

#endif
