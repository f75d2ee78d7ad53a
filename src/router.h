/*
 * router.h — a pool at run time: its ring, its backends, and the requests in
 * flight between clients (client.c) and backend connections (backend.c).
 */
#ifndef RP_ROUTER_H
#define RP_ROUTER_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <event2/buffer.h>

#include "config.h"
#include "proto.h"
#include "ring.h"
#include "stats.h"

struct defer;
struct worker;
struct pool;
struct client;
struct backend;
struct bconn;
struct request;

/*
 * A fragment is the part of a request that one backend connection answers:
 * the whole request for a single-key command, one backend's share of the
 * keys of a multi-get, one backend's "flush_all". Fragments sit in their
 * connection's FIFO in the order they were written, so replies match them
 * in order.
 */
/* No share: key_frag of a key without one, frag_of_backend's empty slot. A
 * multi-get may need a share per key (each key whose owner is changing
 * during a resize gets its own), so share indices are 32 bits. */
#define FRAG_NONE UINT32_MAX

struct frag {
    struct request *req;
    struct bconn *conn;
    TAILQ_ENTRY(frag) link;
    struct evbuffer *buf;       /* multi-backend get: this share's VALUE blocks */
    uint32_t cursor;            /* multi-backend get: next request key to match */
    uint64_t sent_ms;           /* when queued on the connection */
    bool retrieval;             /* replies are VALUE...END, not one line */
    bool failed;
};
TAILQ_HEAD(frag_queue, frag);

/*
 * One client command. It stays in its client's queue until its reply has
 * been appended to the client's output, so replies leave in request order.
 * It outlives its client when the client goes first (client = NULL): the
 * backends' answers must still be read off their connections.
 */
struct request {
    struct pool *pool;
    struct client *client;
    /* Whose memory budget it counts in (client.c): set from creation until
     * it is freed or its client is closed, noreply or not. */
    struct client *owner;
    size_t held;                /* bytes of reply and shares it holds now */
    size_t sent;                /* bytes of the command it sent */
    bool detached;              /* noreply: in owner->quiet, not in reqs */
    TAILQ_ENTRY(request) link;
    enum proto_cmd cmd;
    bool quiet;                 /* noreply: nothing goes to the client */
    bool done;
    bool counted;               /* in the pool's in-flight count (gen) */
    uint32_t gen;               /* the pool's routing generation when routed */
    uint32_t nfrags, pending;
    uint32_t hits;              /* VALUE blocks received */
    bool flushes_index;         /* flush_all now: the index empties too */
    uint32_t keylen;            /* store/delete in an indexed pool: key copy */
    struct frag *frags;
    struct frag frag1;          /* frags points here when nfrags == 1 */
    struct evbuffer *reply;     /* the reply, while it cannot go out yet */
    char *error_line;           /* fan-out: first failure, sent instead of OK */
    /* multi-backend get: the keys in request order, and which share has each */
    uint32_t nkeys;
    char *keys;                 /* copy of the key span */
    uint32_t *key_off;
    uint32_t *key_frag;         /* FRAG_NONE: a miss without a share */
    uint32_t *key_hit;          /* bytes of its VALUE block in its share; 0 miss */
};
TAILQ_HEAD(request_queue, request);

enum bconn_state { BCONN_DOWN, BCONN_CONNECTING, BCONN_UP };

struct bconn {
    struct backend *be;
    int fd;
    enum bconn_state state;
    struct event rev, wev;
    struct evbuffer *in, *out;
    struct frag_queue frags;
    uint32_t nfrags;
    bool dirty;                 /* output waits for the end of the loop turn */
    bool reading_paused;
    TAILQ_ENTRY(bconn) dirty_link;
    /* Clients paused because `out` passed server_max_queue (backend.c). */
    TAILQ_HEAD(, client) waiters;
};

#define BACKEND_STATE_CODEC(X)                                        \
    X(UP, "up")                                                       \
    X(DOWN, "down")             /* failing: requests fail fast until retry */ \
    X(EJECTED, "ejected")       /* auto_eject_hosts took it out of routing */

#define BACKEND_STATE_ENUM(e, name) BACKEND_##e,
enum backend_state { BACKEND_STATE_CODEC(BACKEND_STATE_ENUM) BACKEND_STATE_COUNT };
#undef BACKEND_STATE_ENUM
extern const char *const backend_state_names[BACKEND_STATE_COUNT];

struct backend {
    struct pool *pool;
    uint32_t slot;              /* in pool.backends */
    char *identity;
    struct conf_addr addr;      /* own copy */
    bool retiring;              /* in no ring any more: closed once idle */
    struct mconn *mc;           /* meta-protocol connection for moves, lazily */
    enum backend_state state;
    uint32_t failures;          /* consecutive */
    uint64_t retry_ms;          /* DOWN/EJECTED: when to try again */
    uint32_t backoff_ms;
    uint32_t nconns;
    struct bconn *conns;
    uint64_t stats[STAT_BACKEND_COUNT];
};

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
    struct event *accept_retry; /* re-enables the listener after EMFILE */
    uint32_t accept_backoff_ms; /* 0: accepting normally */
    TAILQ_HEAD(, client) clients;
    uint64_t stats[STAT_POOL_COUNT];
    uint64_t next_client_id;
    struct idx *idx;            /* NULL: the pool has no index */
    struct sweep *sweep;        /* indexed pools: the index sweeper */
    /* Requests in flight by routing generation: a migration phase change
     * starts a new generation, and the phase is acknowledged once those
     * routed before it have all landed (docs/ARCHITECTURE.md). */
    uint32_t gen;
    uint64_t inflight_now, inflight_old;
    uint32_t *frag_of_backend;  /* scratch for splitting a multi-get,
                                   sized nbackends + 1, all FRAG_NONE */
};

/*
 * The event loop's context: everything a worker thread touches. Output is
 * not written when it is produced but once per loop turn (worker_flush), so
 * many requests share one write(2) per connection.
 */
struct worker {
    struct event_base *base;
    TAILQ_HEAD(, bconn) dirty_conns;
    TAILQ_HEAD(, client) dirty_clients;
    struct pool **pools;
    uint32_t npools;
    struct event *tick;         /* 100 ms: timeouts, retries */
    struct defer *defer;        /* frees at the end of the turn (defer.h) */
    uint64_t now_ms;
    uint64_t input_freed;       /* client input bytes freed since the last
                                   malloc_trim (proxy.c's tick) */
    bool stopping;
    uint64_t started;
};

uint64_t worker_now_ms(struct worker *w);

/* pools */
/* ring: the file's ring if already built (off the loop, on a reload; the
 * reference is taken), or NULL to build it here. */
int pool_init(struct pool *p, struct worker *w, struct conf_pool *conf, struct ring *ring,
              char *err, size_t errlen);
/* The pool may serve (see pool.ready); enables its listener. */
void pool_ready(struct pool *p);
void pool_close(struct pool *p);
/*
 * Where a command on this key goes: one backend (by the routing ring), the
 * migration (the key's owner is changing: docs/ARCHITECTURE.md), or nowhere
 * (every server ejected). The one place that decides.
 */
enum route { ROUTE_BACKEND, ROUTE_MIGRATION, ROUTE_NONE };
enum route pool_route(struct pool *p, const char *key, size_t len, struct backend **be);
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

/* requests: created by the client, answered by backends or locally */
struct request *request_new(struct client *c, enum proto_cmd cmd, uint32_t nfrags);
void request_reply(struct request *r, const char *data, size_t len);
void request_reply_line(struct request *r, const char *line);
void request_frag_done(struct frag *f);
void request_orphan(struct request *r);     /* its client is gone */
void request_detach(struct request *r);     /* noreply: answers nobody */
/* The command's bytes (line and value) now queued for a backend: they count
 * against the client's budget until the request is freed. */
void request_hold(struct request *r, size_t sent);
/* Fail a fragment: a one-fragment request replies `line`; a multi-get or
 * a fan-out replies `line` (alone) once every fragment is in. */
void frag_fail(struct frag *f, const char *line);
/* Fail the n fragments marked failed that were never sent (may free r). */
void frags_fail_unsent(struct request *r, uint32_t n, const char *line);
void request_free(struct request *r);
/* A multi-get whose answer cannot be trusted: it replies `line` instead. */
void request_fail_retrieval(struct request *r, const char *line);

/* Where a fragment's reply bytes go now; NULL: discard them. */
struct evbuffer *frag_sink(struct frag *f);

#endif
