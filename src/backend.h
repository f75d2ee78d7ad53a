/* backend.h — connections to one memcached server: connect, send, read replies. */
#ifndef RP_BACKEND_H
#define RP_BACKEND_H

#include "router.h"

#define BACKEND_ERR_DOWN    "SERVER_ERROR backend unavailable"
#define BACKEND_ERR_TIMEOUT "SERVER_ERROR backend timeout"
#define BACKEND_ERR_LOST    "SERVER_ERROR backend connection lost"

int backend_init(struct backend *be, struct pool *p, uint32_t slot,
                 const char *identity, const char *addr, char *err, size_t errlen);
/* Close its connections and fail what is in flight on them; be (from
 * malloc) is then the teardown queue's. May be called from any callback:
 * the memory is freed at the end of the loop turn (defer.h). */
void backend_close(struct backend *be);
/* Nothing in flight on any of its connections. */
bool backend_idle(const struct backend *be);

/*
 * The connection a client's requests to this backend use (always the same one
 * for the same client, so its commands stay in order), connecting it if
 * needed. NULL while the backend is down and its retry time has not come.
 */
struct bconn *backend_conn(struct backend *be, uint64_t client_id);

/* The caller has appended the request bytes to bc->out; queue the fragment. */
void bconn_push(struct bconn *bc, struct frag *f);
/* Its unsent output reached server_max_queue: senders should wait (they
 * join bc->waiters; bconn_wake marks them dirty once it is half drained). */
bool bconn_full(const struct bconn *bc);
/* Write what is buffered (called once per loop turn). */
void bconn_flush(struct bconn *bc);
/* Timeouts and retries; called every tick. */
void backend_tick(struct backend *be, uint64_t now_ms);
/* Open connections now (preconnect). */
void backend_preconnect(struct backend *be);

#endif
