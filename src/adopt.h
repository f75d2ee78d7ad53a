/*
 * adopt.h — a pool adopts what its backends hold: when the index is marked
 * for a rebuild (<prefix>:index rebuild pending: a new prefix over warm
 * servers, a Redis that came back empty), one proxy of the fleet takes a
 * lease and rebuilds it in the background (src/rebuild.h) while the pool is
 * idle. Owned by the pool, ticked with it. docs/ARCHITECTURE.md, "Rebuild
 * and adoption".
 */
#ifndef RP_ADOPT_H
#define RP_ADOPT_H

#include <stdbool.h>
#include <stdint.h>

struct pool;
struct adopt;
struct evbuffer;

#define ADOPT_STATE_CODEC(X)                                                   \
    X(NONE, "none")             /* no rebuild asked for */                     \
    X(PENDING, "pending")       /* asked; waits for the lease, an idle pool or \
                                   the end of a migration */                   \
    X(RUNNING, "running")       /* this proxy rebuilds */                      \
    X(ELSEWHERE, "elsewhere")   /* another proxy rebuilds */                   \
    X(DONE, "done")             /* the index was rebuilt */

#define ADOPT_STATE_ENUM(e, name) ADOPT_##e,
enum adopt_state { ADOPT_STATE_CODEC(ADOPT_STATE_ENUM) ADOPT_STATE_COUNT };
#undef ADOPT_STATE_ENUM
extern const char *const adopt_state_names[ADOPT_STATE_COUNT];

/* X(name, kind, help): `stats` shows them as index:<name>. */
#define ADOPT_STATS_CODEC(X)                                                   \
    X(rebuild_keys, gauge, "keys indexed by this proxy's running or last rebuild") \
    X(rebuild_added, gauge, "of those, keys the index did not have")           \
    X(rebuild_misplaced, gauge,                                                \
      "keys the running or last rebuild found on a server that does not own them") \
    X(rebuild_runs, counter, "index rebuilds this proxy completed")            \
    X(rebuild_failures, counter,                                               \
      "index rebuilds that failed (a backend or Redis refused); retried later") \
    X(rebuild_stops, counter,                                                  \
      "index rebuilds stopped (a migration, a busy pool, a lost lease); resumed later")

#define ADOPT_STAT_ENUM(name, kind, help) ADOPT_STAT_##name,
enum adopt_stat { ADOPT_STATS_CODEC(ADOPT_STAT_ENUM) ADOPT_STAT_COUNT };
#undef ADOPT_STAT_ENUM

struct adopt_stat_desc {
    const char *name, *kind, *help;
};
extern const struct adopt_stat_desc adopt_stat_desc[ADOPT_STAT_COUNT];

/* For an indexed pool (p->mig set); NULL when out of memory. */
struct adopt *adopt_new(struct pool *p);
void adopt_free(struct adopt *a);                   /* NULL is fine */
/* The pool's tick. A pool closing, or a proxy stopping, gives up the lease. */
void adopt_tick(struct adopt *a, uint64_t now_ms);
/* Has it given up its lease (or need not)? NULL: true. */
bool adopt_left(const struct adopt *a);

enum adopt_state adopt_get_state(const struct adopt *a);
/* The counters now (a running rebuild's so far). */
void adopt_stats(const struct adopt *a, uint64_t out[ADOPT_STAT_COUNT]);
/* Append "STAT index:rebuild_..." lines. */
void adopt_stats_lines(const struct adopt *a, struct evbuffer *out);

#endif
