/* client.h — a client connection: read commands, send replies in order. */
#ifndef RP_CLIENT_H
#define RP_CLIENT_H

#include <stddef.h>
#include <sys/socket.h>

#include "handoff.h"
#include "pool.h"

#define CLIENT_STATE_CODEC(X)                                              \
    X(READING, "reading")       /* parsing and dispatching commands */    \
    X(SWALLOW, "swallow")       /* discarding an oversize value */        \
    X(DRAINING, "draining")     /* no more reading: quit, stop, abuse */  \
    X(LINGER, "linger")         /* stopping, idle: FIN sent, input read   \
                                   and dropped until the client closes */ \
    X(CLOSED, "closed")         /* socket closed, freed at the loop's end */

#define CLIENT_STATE_ENUM(e, name) CLIENT_##e,
enum client_state { CLIENT_STATE_CODEC(CLIENT_STATE_ENUM) CLIENT_STATE_COUNT };
#undef CLIENT_STATE_ENUM

struct client {
    struct pool *pool;
    uint64_t *stats;                /* where it counts: its pool's stats, or
                                       for a copy's link (hub.h) link_stats */
    bool is_link;                   /* a copy's link to this home thread */
    bool forwarded;                 /* its commands go through its pool's
                                       link (pool_forwards) */
    uint64_t id;
    int fd;
    enum client_state state;
    struct event rev, wev;
    struct event tev;               /* client_timeout, value_timeout */
    uint64_t last_rx_ms;            /* when bytes last arrived */
    struct evbuffer *in, *out;
    struct request_queue reqs;      /* awaiting their turn to reply */
    uint32_t nreqs;
    uint64_t swallow;               /* SWALLOW: bytes still to discard */
    size_t need;                    /* input a storage command waits for */
    bool dirty;                     /* in the worker's flush list */
    bool read_paused;               /* backpressure: too much unsent */
    bool stopping;                  /* the proxy stops: close once idle */
    bool moving;                    /* to another thread once idle
                                       (client_move) */
    /* Its memory budget (client.c): bytes its requests hold outside `out`
     * (replies waiting their turn, multi-get shares), and the bytes of its
     * commands in flight, noreply ones included (in `quiet`). */
    size_t held, sent;
    struct request_queue quiet;     /* noreply requests in flight */
    uint32_t nquiet;
    struct bconn_waiter wait;       /* paused until wait.on's output drains */
    TAILQ_ENTRY(client) link;       /* pool's clients */
    TAILQ_ENTRY(client) dirty_link;
    char peer[64];
};

/* Take over an accepted socket. */
void client_accept(struct pool *p, int fd, const struct sockaddr *sa, int salen);
/* Take over a connection another thread handed over (handoff.h): one it
 * accepted, or one it served, with the bytes it read and did not parse.
 * Owns m. */
void client_adopt(struct pool *p, struct handoff_move *m);
/* Hand it to another thread (docs/ARCHITECTURE.md, "Threads: how many
 * serve") the first time it is idle: it stops reading commands now, its
 * commands in flight are answered here, and what it sent after them is
 * parsed there. False: it cannot move (a link, closing, the proxy stops). */
bool client_move(struct client *c);
/* Take over a copy's link connection (hub.h): served as a client, but not
 * counted as one, never timed out, stopped only with the process. */
void client_accept_link(struct pool *p, int fd);
/* Requests at the head of the queue are done: move their replies out. */
void client_advance(struct client *c);
/* Write buffered output; close when draining and done (once per loop turn). */
void client_flush(struct client *c);
/* Stop reading; close once every reply has been written. */
void client_drain(struct client *c, const char *why);
/* The proxy stops: keep serving, and close the connection the first time it
 * is idle between requests (client_linger in client.c). */
void client_stop(struct client *c);
/* Close now (replies still owed are dropped). May be called from any
 * callback: the memory is freed at the end of the loop turn (defer.h). */
void client_close(struct client *c, const char *why);
/* The deferred free itself: only for the teardown queue. */
void client_free(struct client *c);
void client_mark_dirty(struct client *c);
/* Its requests hold delta more bytes (their buffers grew or shrank). */
void client_held(struct client *c, ptrdiff_t delta);

#endif
