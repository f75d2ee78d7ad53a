/*
 * sweep.h — the index sweeper: drop the entries of keys their backend no
 * longer holds (deleted, evicted, expired), move members found in the wrong
 * v-node set, remove members that are not memcached keys.
 *
 * One engine for `ringproxy index sweep` (one pass, on the command's own
 * event loop) and for the proxy's background sweeper (owned and ticked by
 * its pool, passes forever at `index: sweep_rate`). The protocol and why a
 * removal never loses a live key: docs/ARCHITECTURE.md, "The sweeper".
 */
#ifndef RP_SWEEP_H
#define RP_SWEEP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct evdns_base;
struct evbuffer;
struct conf_index;
struct ring;
struct sweep;

#define SWEEP_RATE_DEFAULT "2000"   /* entries per second (config.c) */
/* Its announcement's field in <prefix>:proxies: SWEEP_FIELD_PREFIX<id>. */
#define SWEEP_FIELD_PREFIX "sweeper:"

#define SWEEP_STATE_CODEC(X)                                                  \
    X(OFF, "off")               /* sweep_rate: 0 */                           \
    X(STANDBY, "standby")       /* another proxy holds the sweep lease */     \
    X(PAUSED, "paused")         /* a migration or a rebuild runs, the pool is \
                                   not idle, or Redis cannot be reached */    \
    X(ANNOUNCING, "announcing") /* waiting until every live proxy saw it */   \
    X(SWEEPING, "sweeping")                                                   \
    X(DONE, "done")             /* the command's pass is over */              \
    X(FAILED, "failed")         /* the command cannot go on (sweep_error) */

#define SWEEP_STATE_ENUM(e, name) SWEEP_##e,
enum sweep_state { SWEEP_STATE_CODEC(SWEEP_STATE_ENUM) SWEEP_STATE_COUNT };
#undef SWEEP_STATE_ENUM
extern const char *const sweep_state_names[SWEEP_STATE_COUNT];

/* X(name, kind, help): since the engine started (stats, /metrics). */
#define SWEEP_STATS_CODEC(X)                                                  \
    X(passes, counter, "passes over every v-node set of the ring finished")  \
    X(checked, counter, "index entries looked at")                            \
    X(removed_gone, counter,                                                  \
      "entries removed: the owning backend answered twice that it does not "  \
      "hold the key")                                                         \
    X(removed_wrong_set, counter,                                             \
      "entries moved to the v-node set that owns them, or rescored")          \
    X(removed_invalid, counter, "members removed: not a memcached key")       \
    X(restored, counter,                                                      \
      "entries put back: the key was stored again between the two looks")   \
    X(errors, counter, "entries kept: the owning backend could not be asked") \
    X(refused, counter,                                                       \
      "removal batches refused by Redis or left unanswered (kept)")          \
    X(rate, gauge, "entries looked at per second, over the last interval")

#define SWEEP_STAT_ENUM(name, kind, help) SWEEP_STAT_##name,
enum sweep_stat { SWEEP_STATS_CODEC(SWEEP_STAT_ENUM) SWEEP_STAT_COUNT };
#undef SWEEP_STAT_ENUM

struct sweep_stat_desc {
    const char *name, *kind, *help;
};
extern const struct sweep_stat_desc sweep_stat_desc[SWEEP_STAT_COUNT];

struct sweep_opts {
    const char *pool;                   /* for the log */
    const struct conf_index *index;     /* Redis, db, password, prefix: copied */
    bool background;                    /* lease, position kept in Redis, passes
                                           forever; else one pass */
    const char *id;                     /* the proxy's fleet name (its own
                                           announcement does not make its
                                           prefix shared); NULL: made up */
    /* Called for each key whose entry was just removed as gone, before it
     * is looked at again: the proxy's index forgets it knew the key
     * (docs/ARCHITECTURE.md, "The sweeper"). NULL: none. */
    void (*forget)(void *arg, const char *key, size_t len);
    void *forget_arg;
    struct evdns_base *dns;             /* servers' names on the loop
                                           (resolve.h); NULL: blocking (the CLI) */
};

/* Where to run and how fast; read on every tick (a reload may change it). */
struct sweep_env {
    bool may_run;               /* the pool is idle: no migration, not closing */
    const struct ring *local;   /* whose addresses reach the servers (the
                                   file's ring); identities come from
                                   <prefix>:ring */
    int64_t rate;               /* entries per second; 0: off in the
                                   background, unlimited for the command */
    uint32_t timeout_ms;        /* a backend's answer (0: 5000) */
    uint32_t liveness_ms;       /* migration.liveness: heartbeats older are
                                   not waited for (0: 10000) */
    bool follow_unknown;        /* migration.follow_unknown_servers */
    uint32_t pass_min_ms;       /* background: passes begin at most this often */
};

/* NULL when out of memory. Nothing happens until the first tick. */
struct sweep *sweep_new(struct event_base *base, const struct sweep_opts *o);
/*
 * Start, pause, pace and pump (the pool's tick, or the command's timer, every
 * 100 ms or so). With may_run false it starts nothing new, gives up its
 * lease and its announcement; what is in flight finishes.
 */
void sweep_tick(struct sweep *s, uint64_t now_ms, const struct sweep_env *env);
/* The proxy stops: start nothing, give up the lease and the announcement. */
void sweep_leave(struct sweep *s);
/* Nothing in flight, and Redis confirmed the leave (or cannot be told).
 * NULL: true. */
bool sweep_left(const struct sweep *s);
void sweep_free(struct sweep *s);       /* NULL is fine */

enum sweep_state sweep_get_state(const struct sweep *s);
const uint64_t *sweep_stats(const struct sweep *s);
/* FAILED: why, for the command's message; else "". */
const char *sweep_error(const struct sweep *s);

/* Where the pass stands, for progress lines and status. */
struct sweep_progress {
    enum sweep_state state;
    uint64_t pass;              /* this pass, from 1 (0: none yet) */
    uint32_t point, npoints;    /* v-node sets of the ring done / in all */
    uint64_t pass_checked, pass_removed;
    double elapsed_sec;         /* of this pass */
    char paused[96];            /* why it does not sweep, or "" */
};
void sweep_progress(const struct sweep *s, struct sweep_progress *out);
/* Append "STAT sweep:..." lines (the memcached stats command). */
void sweep_stats_text(const struct sweep *s, struct evbuffer *out);


#endif
