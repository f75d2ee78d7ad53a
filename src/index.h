/* index.h — the Redis key index: every stored key in its v-node's sorted set. */
#ifndef RP_INDEX_H
#define RP_INDEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "ring.h"

struct event_base;
struct idx;

#define IDX_STATE_CODEC(X)                                      \
    X(DISCONNECTED, "disconnected") /* waiting to reconnect */   \
    X(CONNECTING, "connecting")                                 \
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
    X(disconnects, counter, "connections to Redis lost or refused")

#define IDX_STAT_ENUM(name, kind, help) IDX_STAT_##name,
enum idx_stat { IDX_STATS_CODEC(IDX_STAT_ENUM) IDX_STAT_COUNT };
#undef IDX_STAT_ENUM

struct idx_stat_desc {
    const char *name, *kind, *help;
};
extern const struct idx_stat_desc idx_stat_desc[IDX_STAT_COUNT];

/* The writer of one pool. `ring` is the data ring (a reference is kept). */
struct idx *idx_new(struct event_base *base, const char *pool,
                    const struct conf_index *conf, struct ring *ring);
void idx_free(struct idx *x);                       /* NULL is fine */

/* After a backend confirmed STORED. Never blocks. Deletes remove nothing:
 * docs/ARCHITECTURE.md, invariant I7. */
void idx_key_stored(struct idx *x, const char *key, size_t len);
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

/* "<prefix>:v:<identity>:<point>" into buf; returns its length. */
size_t idx_vnode_key(const char *prefix, const struct ring *r, uint32_t point,
                     char *buf, size_t len);


#endif
