/* index.h — the Redis key index: every stored key in its v-node's sorted set. */
#ifndef RP_INDEX_H
#define RP_INDEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "ring.h"

struct event_base;
struct redisReply;
struct idx;

#define IDX_STATE_CODEC(X)                                      \
    X(DISCONNECTED, "disconnected") /* waiting to reconnect */   \
    X(CONNECTING, "connecting")                                 \
    X(AUTHENTICATING, "authenticating") /* AUTH, SELECT sent */ \
    X(READY, "ready")

#define IDX_STATE_ENUM(e, name) IDX_##e,
enum idx_state { IDX_STATE_CODEC(IDX_STATE_ENUM) IDX_STATE_COUNT };
#undef IDX_STATE_ENUM
extern const char *const idx_state_names[IDX_STATE_COUNT];

#define IDX_STATS_CODEC(X)                                                    \
    X(queued, gauge, "index writes waiting to be sent")                       \
    X(inflight, gauge, "index writes sent, not yet acknowledged")             \
    X(adds, counter, "keys added (ZADD members sent)")                        \
    X(removes, counter, "keys removed (ZREM members sent)")                   \
    X(commands, counter, "Redis commands sent")                               \
    X(filtered, counter, "stores not sent: the key is known to be indexed")   \
    X(dropped, counter, "index writes dropped: queue full or Redis away")     \
    X(errors, counter, "Redis errors replied to index writes")                \
    X(connects, counter, "connections to Redis established")                  \
    X(disconnects, counter, "connections to Redis lost or refused")           \
    X(errors_auth, counter,                                                   \
      "Redis refusals of the pool's password or its permissions (both connections)") \
    X(errors_oom, counter,                                                    \
      "Redis refusals for maxmemory (OOM), on both of the pool's connections") \
    X(errors_readonly, counter,                                               \
      "Redis refusals of a read-only replica, on both of the pool's connections") \
    X(errors_other, counter,                                                  \
      "other Redis error replies, on both of the pool's connections")         \
    X(last_error_time, gauge,                                                 \
      "Unix time of the last Redis error reply on the pool's connections (0: none)")

#define IDX_STAT_ENUM(name, kind, help) IDX_STAT_##name,
enum idx_stat { IDX_STATS_CODEC(IDX_STAT_ENUM) IDX_STAT_COUNT };
#undef IDX_STAT_ENUM

struct idx_stat_desc {
    const char *name, *kind, *help;
};
extern const struct idx_stat_desc idx_stat_desc[IDX_STAT_COUNT];

/*
 * The health of a pool's index: what its two Redis connections (the index
 * writer here; the coordination, src/migrate.c) last learnt. A later row is
 * worse: the pool's health is the worse of its two connections'. Error
 * replies are classified into the refused rows (index.c, idx_error_kinds),
 * each counted in its stat. X(state, name, stat, meaning).
 */
#define IDX_HEALTH_CODEC(X)                                                   \
    X(OK, "ok", IDX_NO_STAT, "Redis takes the index's commands")              \
    X(DROPPING, "dropping", IDX_NO_STAT,                                      \
      "index writes are dropped: the queue is full")                          \
    X(DISCONNECTED, "disconnected", IDX_NO_STAT, "Redis cannot be reached")   \
    X(REFUSED_OTHER, "refused_other", IDX_STAT_errors_other,                  \
      "Redis answers the index's commands with errors")                       \
    X(REFUSED_READONLY, "refused_readonly", IDX_STAT_errors_readonly,         \
      "Redis refuses writes: it is a read-only replica")                      \
    X(REFUSED_OOM, "refused_oom", IDX_STAT_errors_oom,                        \
      "Redis refuses writes: out of memory (maxmemory)")                      \
    X(AUTH_FAILED, "auth_failed", IDX_STAT_errors_auth,                       \
      "Redis refuses the password (index.password) or its permissions")

#define IDX_NO_STAT IDX_STAT_COUNT
#define IDX_HEALTH_ENUM(e, name, stat, help) IDX_H_##e,
enum idx_health { IDX_HEALTH_CODEC(IDX_HEALTH_ENUM) IDX_HEALTH_COUNT };
#undef IDX_HEALTH_ENUM
extern const char *const idx_health_names[IDX_HEALTH_COUNT];
extern const char *const idx_health_help[IDX_HEALTH_COUNT];

/* Which of a pool's Redis connections speaks. */
enum idx_conn { IDX_CONN_WRITER, IDX_CONN_COORD, IDX_CONN_COUNT };

/* The writer of one pool. `ring` is the data ring (a reference is kept). */
struct idx *idx_new(struct event_base *base, const char *pool,
                    const struct conf_index *conf, struct ring *ring);
void idx_free(struct idx *x);                       /* NULL is fine */

/* After a backend confirmed STORED. Never blocks. Deletes remove nothing:
 * docs/ARCHITECTURE.md, invariant I7. */
void idx_key_stored(struct idx *x, const char *key, size_t len, uint32_t hash);
/* Writes dropped before they reached the writer (hub.h): counted with its
 * own drops. NULL is fine. */
void idx_count_dropped(struct idx *x, uint64_t n);
/* flush_all succeeded: every v-node set of the pool goes. */
void idx_pool_flushed(struct idx *x);

/*
 * Other proxies or a sweeper use the same prefix (or may: true until known
 * otherwise). The filter that skips re-stores of keys known to be indexed
 * is then off: a sweeper or a mover may remove an entry this one believes
 * in (docs/ARCHITECTURE.md, "The sweeper"). Any change clears the filter.
 */
void idx_set_shared(struct idx *x, bool shared);

/* A sweeper removed the key's entry: it is no longer known to be indexed,
 * so its next store is sent (docs/ARCHITECTURE.md, "The sweeper"). */
void idx_forget(struct idx *x, const char *key, size_t len);

/* The data ring changed (a migration began): new writes go to its v-nodes. */
void idx_set_ring(struct idx *x, struct ring *ring);

/* Send what this loop turn queued (one pipeline). */
void idx_flush(struct idx *x);

enum idx_state idx_get_state(const struct idx *x);
const uint64_t *idx_stats(const struct idx *x);

/*
 * Health reports (NULL x is fine). An error reply on connection c is
 * classified, counted and returned; IDX_H_OK means a harmless one (AUTH sent
 * to a Redis without a password). Ok: c's commands are taken again.
 * Down: c lost Redis or cannot reach it (why: hiredis' reason). Each change
 * of the pool's health is logged once, its recovery too.
 */
enum idx_health idx_redis_error(struct idx *x, enum idx_conn c, const char *msg);
/* The class of a Redis error reply alone (operator commands use it too). */
enum idx_health idx_classify_error(const char *msg);
void idx_redis_ok(struct idx *x, enum idx_conn c);
void idx_redis_down(struct idx *x, enum idx_conn c, const char *why);
/* The pool's health (c == IDX_CONN_COUNT) or one connection's, and what
 * Redis said (into *why when not NULL; "" when ok). */
enum idx_health idx_health(const struct idx *x, enum idx_conn c, const char **why);

/* A field of a flat HGETALL reply (name, value, ...), or NULL when absent
 * or not a string: the one reader of Redis hashes (migrate.c, sweep.c). */
const char *idx_hash_field(const struct redisReply *h, const char *field);

/* "<prefix>:v:<identity>:<point>" into buf; returns its length. */
size_t idx_vnode_key(const char *prefix, const struct ring *r, uint32_t point,
                     char *buf, size_t len);


#endif
