/*
 * migrate.h — a pool's coordination with Redis (ring record, heartbeat,
 * lease) and the migration of keys whose owner changed between two rings.
 */
#ifndef RP_MIGRATE_H
#define RP_MIGRATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto.h"
#include "ring.h"

struct pool;
struct backend;
struct frag;
struct evbuffer;
struct mig;

#define MIG_STATE_CODEC(X)                                                    \
    X(STARTING, "starting")     /* reading the ring record from Redis */      \
    X(IDLE, "idle")             /* the data obeys the pool's ring */          \
    X(PROPOSED, "proposed")     /* the file's ring differs: waiting for every \
                                   live proxy to load the same one */         \
    X(PREPARED, "prepared")     /* old ring is home, reads fall back */       \
    X(SWITCHED, "switched")     /* new ring is home, old copies go on write */ \
    X(MOVING, "moving")         /* switched, and this proxy moves the keys */ \
    X(FENCED, "fenced")         /* lost Redis too long: refuses commands */

#define MIG_STATE_ENUM(e, name) MIG_##e,
enum mig_state { MIG_STATE_CODEC(MIG_STATE_ENUM) MIG_STATE_COUNT };
#undef MIG_STATE_ENUM
extern const char *const mig_state_names[MIG_STATE_COUNT];

/* Start coordinating an indexed pool; `ready` is called once the pool knows
 * which ring the data obeys (or Redis could not tell in time). */
struct mig *mig_new(struct pool *p, void (*ready)(struct pool *p));
/* Stop: its Redis connection and its moves' connections close, operations
 * still queued fail their clients. May be called from any callback: the
 * memory is freed at the end of the loop turn (defer.h). NULL is fine. */
void mig_free(struct mig *m);

/*
 * The config file's ring is now `to` (a reference is taken): this proxy
 * proposes it to the fleet. Nothing changes until every live proxy sharing
 * the prefix proposes the same ring (docs/ARCHITECTURE.md). Returns 0, or
 * -1 with a reason when the change can never be applied (hash changes).
 */
int mig_change_ring(struct mig *m, struct ring *to, char *err, size_t errlen);

bool mig_active(const struct mig *m);
/* Has this proxy lost Redis long enough that the fleet may move on without
 * it? Then it must not serve the pool's keys. Cheap. */
bool mig_fenced(const struct mig *m);
/* The monotonic millisecond from which the pool is fenced (mig_fenced):
 * 0 already, UINT64_MAX never (NULL, or no liveness). What the pool's
 * copies on other threads read (hub.h). */
uint64_t mig_fence_at(const struct mig *m);
/* Changes whenever the state, the phase, the acknowledged phase or the
 * fleet's phase does: the copies' `stats` are refreshed then (hub.h). */
uint32_t mig_shape(const struct mig *m);
/* What a fenced pool answers instead of serving. */
#define MIG_FENCED_LINE "SERVER_ERROR ringproxy fenced: the index Redis is unreachable"
/* Why the recorded ring cannot be served (it names a server the config file
 * does not know), or NULL. Such a pool is fenced too. */
const char *mig_refused(const struct mig *m);
/* The proxy stops: remove its heartbeat and give up the lease now. */
void mig_leave(struct mig *m);
/* Has Redis confirmed that (or can it not be told), and are the sweeps of
 * the tombstone notes it holds done (migrate.c)? NULL: true. */
bool mig_left(const struct mig *m);
enum mig_state mig_get_state(const struct mig *m);
/* This proxy's id in the fleet (host:pid:random), as in its heartbeat. */
const char *mig_id(const struct mig *m);
bool mig_uses_backend(const struct mig *m, const struct backend *be);

/*
 * Must a command on this key (of ring hash `hash`) go through the migration
 * (its owner differs between the two rings, or this proxy runs commands on
 * it)? Cheap when nothing moves. The pool's routing asks (pool_route).
 */
bool mig_routes_key(struct mig *m, const char *key, size_t len, uint32_t hash);

/*
 * Run one client command on one key by the rules of this proxy's phase
 * (docs/ARCHITECTURE.md, "Commands on a changing key").
 * The migration completes `f` (writes its reply, calls request_frag_done).
 * `data` (storage commands: the value and its "\r\n") is taken over.
 * hash: the key's ring hash (pool_key_hash); key_index: its position in a
 * multi-get, else 0.
 */
void mig_submit(struct mig *m, struct frag *f, const struct proto_req *req,
                const char *key, size_t keylen, uint32_t hash, uint32_t key_index,
                struct evbuffer *data);

/*
 * A client's meta command on a changing key (docs/ARCHITECTURE.md, "Meta
 * protocol (for clients)"): run by the rule of its text counterpart, the
 * client's own line (`line`, as meta_format_request built it, without q)
 * on the owner that answers. key: the item's bytes, a valid text key.
 */
struct meta_req;
void mig_submit_meta(struct mig *m, struct frag *f, const struct meta_req *mr,
                     const char *line, size_t len, const char *key, size_t keylen,
                     uint32_t hash, struct evbuffer *data);

void mig_tick(struct mig *m, uint64_t now_ms);
/* The end of a loop turn: send what the turn batched for Redis (the
 * records of copies in doubt). NULL is fine. */
void mig_flush(struct mig *m);

/* A snapshot of where the pool's data stands, for stats, /migration, status:
 * struct mig_progress, one field per line of progress.h's table. */
struct mig_progress;
void mig_progress(const struct mig *m, struct mig_progress *out);
/* Append "STAT migration:..." lines. */
void mig_stats(const struct mig *m, struct evbuffer *out);

#endif
