/*
 * pool.h — a pool at run time: its rings, its backends, where a key goes
 * (pool_route) and its routing generations; and the worker (event loop)
 * that serves every pool.
 *
 * Ownership: a pool owns its backends (created by pool_ring_backends,
 * closed by pool_retire_backends and pool_close), its rings (references),
 * its index writer, migration, adoption and sweeper. Its clients (client.c)
 * and their requests (request.c) are listed here but owned by themselves.
 */
#ifndef RP_POOL_H
#define RP_POOL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <event2/event.h>

#include "backend.h"
#include "config.h"
#include "hub.h"
#include "request.h"
#include "ring.h"
#include "stats.h"

struct resolver;
struct defer;
struct worker;
struct client;

struct pool {
    struct worker *w;
    struct conf_pool *conf;     /* borrowed from the proxy's current config,
                                   or, once a reload removed the pool, the
                                   config it replaced: kept until the pool is
                                   freed (proxy.c, proxy_reap_configs) */
    char *name;
    struct ring *ring;          /* where the data lives (during a migration:
                                   where it is going) */
    struct backend **ring_be;   /* ring server index -> backend */
    struct ring *route;         /* ring without ejected servers (or == ring) */
    struct backend **route_be;  /* route server index -> backend */
    struct backend **backends;  /* every backend, each at its own address */
    uint32_t nbackends, cap_backends;
    struct mig *mig;            /* indexed pools: Redis coordination, moves */
    struct adopt *adopt;        /* indexed pools: the background index rebuild */
    bool ready;                 /* knows which ring the data obeys: serve */
    bool closing;               /* removed by a reload: freed once idle */
    struct evconnlistener *listener;
    uint64_t listen_dev, listen_ino;    /* the unix socket file it bound:
                                   the one proxy.c may remove (not another
                                   process's after an upgrade) */
    struct event *accept_retry; /* re-enables the listener after EMFILE */
    uint32_t accept_backoff_ms; /* 0: accepting normally */
    TAILQ_HEAD(, client) clients;
    uint64_t stats[STAT_POOL_COUNT];    /* only go up: /metrics, stats port */
    uint64_t stats_base[STAT_POOL_COUNT];   /* the counters at the last
                                   `stats reset`: the stats command shows
                                   stats - stats_base (client.c) */
    uint64_t next_client_id;
    struct idx *idx;            /* NULL: the pool has no index */
    struct sweep *sweep;        /* indexed pools: the index sweeper */
    /* Requests in flight by routing generation: a migration phase change
     * starts a new generation, and the phase is acknowledged once those
     * routed before it have all landed (docs/ARCHITECTURE.md). */
    uint32_t gen;
    uint64_t inflight_now, inflight_old;
    uint32_t *frag_of_backend;  /* scratch for splitting a multi-get, by
                                   pool_share_slot, all FRAG_NONE */
    /* An indexed pool served by several threads (hub.h; docs/ARCHITECTURE.md,
     * "Threads: indexed pools"): the home pool (idx != NULL) and its copies
     * share the hub. NULL: one thread serves the pool. */
    struct hub *hub;
    struct event *hub_ev;       /* home: the copies sent index writes;
                                   copy: the routing changed */
    int hub_fd;                 /* copy: its wake-up (hub_attach) */
    struct hub_route hub_route; /* copy: the routing it follows */
    bool hub_acking;            /* copy: acknowledge hub_route once drained */
    bool hub_stats_sent;        /* home: its `stats` lines are in the hub */
    uint32_t hub_shape;         /* home: pool_hub_shape when they were sent */
    struct backend *link;       /* copy: the home thread (not in backends) */
    struct evbuffer *index_out; /* copy: index records of this loop turn */
    struct evconnlistener *link_listener;   /* home: the copies' link */
    uint64_t link_stats[STAT_POOL_COUNT];   /* home: what the link's clients
                                   count (their copy counted it already) */
};

/*
 * The event loop's context: everything a worker thread touches. Output is
 * not written when it is produced but once per loop turn (worker_flush), so
 * many requests share one write(2) per connection.
 */
struct worker {
    uint32_t id;                /* 0: the home thread; 1..: request workers
                                   (docs/ARCHITECTURE.md, "Threads") */
    struct event_base *base;
    TAILQ_HEAD(, bconn) dirty_conns;
    TAILQ_HEAD(, client) dirty_clients;
    struct pool **pools;
    uint32_t npools;
    struct event *tick;         /* 100 ms: timeouts, retries */
    struct defer *defer;        /* frees at the end of the turn (defer.h) */
    struct resolver *dns;       /* backends' names (resolve.h); NULL: only
                                   numeric addresses and unix paths connect */
    uint64_t input_freed;       /* client input bytes freed since the last
                                   malloc_trim (proxy.c's tick) */
    bool stopping;
    uint64_t started;
    /* Threads: how many serve (docs/ARCHITECTURE.md). The inbox other
     * threads hand clients to (handoff.h; NULL with one thread), and where
     * a client this one hands over goes: a reservation on another serving
     * thread's inbox, or NULL when none takes it (proxy.c). */
    struct handoff *inbox;
    struct handoff *(*move_to)(struct worker *w, const struct pool *p);
};

uint64_t worker_now_ms(struct worker *w);

/* ring: the file's ring if already built (off the loop, on a reload; the
 * reference is taken), or NULL to build it here. hub: an indexed pool
 * served by several threads (a reference is taken): on the home thread the
 * pool with the index, on another a copy; NULL: one thread serves it. */
int pool_init(struct pool *p, struct worker *w, struct conf_pool *conf, struct ring *ring,
              struct hub *hub, char *err, size_t errlen);
/* The pool may serve (see pool.ready); enables its listener. */
void pool_ready(struct pool *p);
void pool_close(struct pool *p);

/* A key's ring hash under the pool's hash and hash_tag: computed once per
 * key and command, and passed to pool_route, the migration and the index
 * (an indexed pool's hash never changes: proxy.c refuses it on reload). */
uint32_t pool_key_hash(const struct pool *p, const char *key, size_t len);
/*
 * Where a command on this key (of hash h: pool_key_hash) goes: one backend
 * (by the routing ring), the migration (the key's owner is changing:
 * docs/ARCHITECTURE.md), or nowhere (every server ejected). The one place
 * that decides.
 */
enum route { ROUTE_BACKEND, ROUTE_MIGRATION, ROUTE_NONE };
enum route pool_route(struct pool *p, const char *key, size_t len, uint32_t h,
                      struct backend **be);
void pool_eject(struct pool *p, struct backend *be, bool eject);
/* Map every server of ring r to its backend, created if needed (a new
 * array, or NULL). Linear in servers + backends: a reload may bring 4096. */
struct backend **pool_ring_backends(struct pool *p, const struct ring *r,
                                    char *err, size_t errlen);
/* Make ring r the pool's data ring (takes the reference and the map). */
void pool_set_ring(struct pool *p, struct ring *r, struct backend **ring_be);
/* Close backends no ring uses any more, once nothing is in flight on them. */
void pool_retire_backends(struct pool *p);
/* The index sweeper's tick: it runs while the data ring is settled, and
 * leaves when the pool closes or the proxy stops. */
void pool_sweep_tick(struct pool *p, uint64_t now_ms);

/* Routing generations (see pool.gen). */
uint32_t pool_inflight_begin(struct pool *p);
void pool_inflight_end(struct pool *p, uint32_t gen);
void pool_new_generation(struct pool *p);
/* Has everything routed before the current generation landed, on every
 * thread that serves the pool? (The migration acknowledges a phase then.) */
bool pool_drained(struct pool *p);

/* The pool refuses its commands now (docs/ARCHITECTURE.md, I6). */
bool pool_fenced(struct pool *p);
/* A copy hands every command to its home thread now (hub.h). */
static inline bool pool_forwards(const struct pool *p)
{
    return p->link != NULL && !p->hub_route.direct;
}
/* A multi-get's share's slot for backend be (request.h: request_share):
 * be's own, nbackends for none (the share fails), nbackends + 1 for a
 * copy's link; pool_slot_backend maps it back. */
static inline uint32_t pool_share_slot(const struct pool *p, const struct backend *be)
{
    return be == NULL ? p->nbackends : be->link ? p->nbackends + 1 : be->slot;
}

static inline struct backend *pool_slot_backend(const struct pool *p, uint32_t slot)
{
    return slot < p->nbackends ? p->backends[slot] :
           slot == p->nbackends + 1 ? p->link : NULL;
}

/* Does a stored key go to the index (the home's writer, or a copy's
 * records for it)? */
static inline bool pool_indexed(const struct pool *p)
{
    return p->idx != NULL || p->link != NULL;
}
/* A backend confirmed key stored: index it (pool_indexed pools). */
void pool_index_stored(struct pool *p, const char *key, size_t len, uint32_t hash);
/* The end of a loop turn: the home publishes the routing and the fence to
 * its copies; a copy sends its index records and acknowledgement. */
void pool_hub_turn(struct pool *p);
/* The tick: a copy's link times out what the home thread never answered;
 * the home gives its copies its `stats` lines. */
void pool_hub_tick(struct pool *p, uint64_t now_ms);
/* The index and migration lines of `stats`: the home's own, or on a copy
 * the home's as of its last tick. */
void pool_index_stats(struct pool *p, struct evbuffer *out);

#endif
