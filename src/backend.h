/*
 * backend.h — connections to one memcached server: connect, send, read
 * replies and match them to the fragments in each connection's FIFO.
 *
 * The transport knows a fragment (request.h) only as an entry of its FIFO:
 * it completes it through the frag_ops its request layer installed, and
 * never calls the request or client layers. Ownership: a backend is created
 * and freed by its pool (pool.c); it owns its connections, their buffers
 * and its meta connection (backend_mc).
 */
#ifndef RP_BACKEND_H
#define RP_BACKEND_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <event2/buffer.h>

#include "config.h"
#include "proto.h"
#include "request.h"
#include "stats.h"

struct pool;
struct backend;
struct mconn;
struct resolve_req;

#define BACKEND_ERR_DOWN    "SERVER_ERROR backend unavailable"
#define BACKEND_ERR_TIMEOUT "SERVER_ERROR backend timeout"
#define BACKEND_ERR_LOST    "SERVER_ERROR backend connection lost"

/*
 * How the transport completes a fragment of its FIFO (request.c implements
 * them: request_frag_ops). Each may free the fragment's request once it has
 * completed the fragment (end, fail); match and value never do.
 */
struct frag_ops {
    /* Which key of f a VALUE line answers (its index), or -1: a key f did
     * not ask for (after the ones already answered). */
    int (*match)(struct frag *f, const struct proto_rsp *rsp);
    /* The block of key `key` (its line and data, n bytes at the front of
     * in) is complete: take it out of in. */
    void (*value)(struct frag *f, uint32_t key, struct evbuffer *in, size_t n);
    /* The reply's last line (total bytes at the front of in, line[0..len)
     * its text): take it out of in. f is off its connection. */
    void (*end)(struct frag *f, const struct proto_rsp *rsp, struct evbuffer *in,
                size_t total, const char *line, size_t len);
    /* A meta reply of kind `kind` (enum meta_rsp_kind; -1: none, the MN
     * that ends a quiet command) for a meta fragment: n bytes at the front
     * of in (its line, and for VA its data). last: f is complete and off
     * its connection. */
    void (*meta)(struct frag *f, int kind, struct evbuffer *in, size_t n, bool last);
    /* No reply will come (connection failed, never sent): reply `line`. */
    void (*fail)(struct frag *f, const char *line);
};

/*
 * Someone waiting for a connection's unsent output to drain (a client
 * paused by server_max_queue): wake is called once it is half drained.
 */
struct bconn_waiter {
    struct bconn *on;           /* NULL: not waiting */
    TAILQ_ENTRY(bconn_waiter) link;
    void (*wake)(struct bconn_waiter *w);
};

/* RESOLVING: waiting for the backend's name (backend.resolving); its output
 * is kept until it connects, as while CONNECTING. */
enum bconn_state { BCONN_DOWN, BCONN_RESOLVING, BCONN_CONNECTING, BCONN_UP };

/* At most this many single-key gets share one line to a backend. */
#define BCONN_JOIN_MAX 64

struct bconn {
    struct backend *be;
    int fd;
    enum bconn_state state;
    struct event rev, wev;
    struct evbuffer *in, *out;
    struct frag_queue frags;
    /* A single-key get line left open for more keys until the end of the
     * loop turn (bconn_push_get): its command (PROTO_CMD_NONE: none open),
     * its bytes, and the ring hashes of its keys (a key is never on one
     * line twice: its VALUE could not be told apart). */
    enum proto_cmd open_cmd;
    uint32_t open_len, open_keys;
    uint32_t open_hash[BCONN_JOIN_MAX];
    struct evbuffer *shared_end;    /* a joined fragment's copy of the END */
    uint32_t nfrags;            /* in frags: the control count (backend_idle) */
    bool dirty;                 /* output waits for the end of the loop turn */
    bool reading_paused;
    TAILQ_ENTRY(bconn) dirty_link;
    TAILQ_HEAD(, bconn_waiter) waiters;
};

#define BACKEND_STATE_CODEC(X)                                        \
    X(UP, "up")                                                       \
    X(DOWN, "down")             /* failing: requests fail fast until retry */ \
    X(EJECTED, "ejected")       /* auto_eject_hosts took it out of routing */

#define BACKEND_STATE_ENUM(e, name) BACKEND_##e,
enum backend_state { BACKEND_STATE_CODEC(BACKEND_STATE_ENUM) BACKEND_STATE_COUNT };
#undef BACKEND_STATE_ENUM
extern const char *const backend_state_names[BACKEND_STATE_COUNT];

/* The two meta connections of a backend (backend_mc). */
enum backend_mc_kind {
    BACKEND_MC_CLIENT,          /* client commands on moving keys (move.c) */
    BACKEND_MC_MOVER,           /* the mover's own: ordered (mconn.h) */
    BACKEND_MC_COUNT
};

struct backend {
    struct pool *pool;
    uint32_t slot;              /* in pool.backends */
    char *identity;
    struct conf_addr addr;      /* own copy */
    bool retiring;              /* in no ring any more: closed once idle */
    struct mconn *mc[BACKEND_MC_COUNT];     /* meta connections: backend_mc */
    struct resolve_req *resolving;  /* the name, for connections RESOLVING */
    char dns_error[192];        /* "cannot resolve NAME: why" until a
                                   resolution succeeds ("": none); /healthz
                                   and stats show it */
    enum backend_state state;
    uint32_t failures;          /* consecutive */
    uint64_t retry_ms;          /* DOWN/EJECTED: when to try again */
    uint32_t backoff_ms;
    uint32_t nconns;
    struct bconn *conns;
    bool link;                  /* the home thread of an indexed pool, for a
                                   copy (hub.h): never ejected, never fenced
                                   here, a longer timeout (backend.c) */
    /* For reporting only (stats, /metrics; `stats reset` may clear them):
     * no decision reads them. */
    uint64_t stats[STAT_BACKEND_COUNT];
};

int backend_init(struct backend *be, struct pool *p, uint32_t slot,
                 const char *identity, const char *addr, char *err, size_t errlen);
/* A copy's link to its home thread (hub.h), at the abstract unix address
 * `name` ("@..."): server_connections connections, as to a backend. */
int backend_init_link(struct backend *be, struct pool *p, const char *name,
                      char *err, size_t errlen);
/* Close its connections and fail what is in flight on them; be (from
 * malloc) is then the teardown queue's. May be called from any callback:
 * the memory is freed at the end of the loop turn (defer.h). */
void backend_close(struct backend *be);
/* Nothing in flight on any of its connections. */
bool backend_idle(const struct backend *be);

/*
 * A meta-protocol connection the migration uses, created on first use
 * (NULL: out of memory): the mover's own is ordered (mconn_set_ordered:
 * a copy in doubt and the look that settles it go on one socket,
 * docs/ARCHITECTURE.md, "A copy in doubt"), client commands on moving keys
 * have the other. The backend owns them: freed by backend_close or
 * backend_mc_close, never by their users.
 */
struct mconn *backend_mc(struct backend *be, enum backend_mc_kind kind, uint32_t timeout_ms,
                         size_t max_value);
/* Close the meta connections now: their commands in flight fail (their
 * callbacks run). The next backend_mc opens new ones. */
void backend_mc_close(struct backend *be);

/*
 * The connection a client's requests to this backend use (always the same one
 * for the same client, so its commands stay in order), connecting it if
 * needed. NULL while the backend is down and its retry time has not come.
 */
struct bconn *backend_conn(struct backend *be, uint64_t client_id);

/* Where a command for bc is appended, before bconn_push: bc->out, with a
 * get line left open (bconn_push_get) ended first. */
struct evbuffer *bconn_out(struct bconn *bc);
/* The caller has appended the request bytes to bconn_out(bc); queue the
 * fragment. */
void bconn_push(struct bconn *bc, struct frag *f);
/*
 * Write a single-key get or gets of key (its ring hash `hash`) for f and
 * queue f. Gets written in one loop turn to one connection share a line,
 * "get k1 k2 ...\r\n", so the backend answers them with one write and one
 * END (docs/ARCHITECTURE.md, "Gets share a line"): f joins the line left
 * open by the previous one when it has the same command, room and not the
 * same key. Returns the bytes written.
 */
size_t bconn_push_get(struct bconn *bc, struct frag *f, const char *key, uint32_t keylen,
                      uint32_t hash);
/* Its unsent output reached server_max_queue: senders should wait. */
bool bconn_full(const struct bconn *bc);
/* w waits on bc until it is half drained (or failed): w->wake is called. */
void bconn_wait(struct bconn *bc, struct bconn_waiter *w);
/* w stops waiting (no wake). */
void bconn_unwait(struct bconn_waiter *w);
/* Write what is buffered (called once per loop turn). */
void bconn_flush(struct bconn *bc);
/*
 * Consume every complete reply in bc->in, completing the fragments of its
 * FIFO in order. Returns -1 if the connection was failed (a protocol
 * error), else 0. The read callback's work, apart for unit tests.
 */
int bconn_process(struct bconn *bc);
/* Timeouts and retries; called every tick. */
void backend_tick(struct backend *be, uint64_t now_ms);
/* Open connections now (preconnect). */
void backend_preconnect(struct backend *be);

#endif
