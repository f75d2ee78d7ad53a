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
    X(WAITING, "waiting")       /* moving: waiting for the lease or proxies */ \
    X(MOVING, "moving")         /* this proxy holds the lease and moves keys */ \
    X(FOLLOWING, "following")   /* another proxy moves; we route with fallback */

#define MIG_STATE_ENUM(e, name) MIG_##e,
enum mig_state { MIG_STATE_CODEC(MIG_STATE_ENUM) MIG_STATE_COUNT };
#undef MIG_STATE_ENUM
extern const char *const mig_state_names[MIG_STATE_COUNT];

/* Start coordinating an indexed pool; `ready` is called once the pool knows
 * which ring the data obeys (or Redis could not tell in time). */
struct mig *mig_new(struct pool *p, void (*ready)(struct pool *p));
void mig_free(struct mig *m);       /* NULL is fine */

/*
 * The pool's ring changes to `to` (a reference is taken): diff it against
 * the ring the data obeys and move what changed owner. Returns 0, or -1 when
 * it cannot be applied now (a migration runs: it is queued and applied after).
 */
int mig_change_ring(struct mig *m, struct ring *to, char *err, size_t errlen);

bool mig_active(const struct mig *m);
enum mig_state mig_get_state(const struct mig *m);
bool mig_uses_backend(const struct mig *m, const struct backend *be);

/*
 * Must a command on this key go through the migration (its arc is still
 * moving, or a move of the key is under way)? Cheap when nothing moves.
 */
bool mig_routes_key(struct mig *m, const char *key, size_t len);

/*
 * Run one client command on one key with the fallback rules of DESIGN §6.
 * The migration completes `f` (writes its reply, calls request_frag_done).
 * `data` (storage commands: the value and its "\r\n") is taken over.
 * key_index: the key's position in a multi-get, else 0.
 */
void mig_submit(struct mig *m, struct frag *f, const struct proto_req *req,
                const char *key, size_t keylen, uint32_t key_index,
                struct evbuffer *data);

void mig_tick(struct mig *m, uint64_t now_ms);

/* A snapshot of where the pool's data stands, for stats, /migration, status. */
struct mig_progress {
    enum mig_state state;
    uint64_t epoch;             /* of the ring the data obeys */
    bool lease;                 /* this proxy moves the keys */
    bool pending;               /* a newer ring waits for this migration */
    char from[33], to[33];      /* ring fingerprints ("" when idle) */
    uint64_t arcs_total, arcs_done;
    double moved_fraction;      /* of the hash space that changes server */
    uint64_t keys_moved, keys_skipped, keys_stale, keys_failed, keys_retried,
             client_moves, index_moved;
    double keys_per_sec;        /* over the last progress interval */
    double elapsed_sec;
};
void mig_progress(const struct mig *m, struct mig_progress *out);
/* Append "STAT migration:..." lines. */
void mig_stats(const struct mig *m, struct evbuffer *out);

#endif
