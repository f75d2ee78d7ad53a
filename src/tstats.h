/*
 * tstats.h — the counters of every event-loop thread, summed when read.
 *
 * Each thread counts in its own pools and backends (pool.stats,
 * backend.stats: plain integers, written by that thread alone, nothing
 * shared on the request path). At the end of each loop turn a thread copies
 * its pools' and backends' counters into its snapshot (skipped for that
 * turn if a reader holds the snapshot's lock: the thread never waits), and
 * names them again when they changed (a reload, the start). A reader
 * (`stats` on any thread, the admin's /metrics on the home thread) adds the
 * snapshots of the other threads to its own live counters. So another
 * thread's share is as of the end of its last turn. With one thread nothing
 * is kept and nothing added. Beside the counters, each thread publishes
 * what it sees of each backend (struct tstats_live), which readers show
 * merged over the threads (tstats_backends_live).
 *
 * Ownership: the snapshots are this module's; tstats_init before the
 * threads start, tstats_free after they were joined.
 */
#ifndef RP_TSTATS_H
#define RP_TSTATS_H

#include <stdbool.h>
#include <stdint.h>

#include "backend.h"
#include "stats.h"

struct pool;

void tstats_init(uint32_t nthreads);
void tstats_free(void);
/* Thread `thread` copies the counters of its pools and backends (each loop
 * turn; skipped if a reader holds the snapshot). */
void tstats_publish_pools(uint32_t thread, struct pool *const *pools, uint32_t npools);
/* The same, waiting for the lock and naming everything again (each tick). */
void tstats_publish(uint32_t thread, struct pool *const *pools, uint32_t npools);
/* Add to out[STAT_POOL_COUNT] what every thread but `self` last published
 * for pool `name`. */
void tstats_add_pool(uint32_t self, const char *name, uint64_t *out);
/* The same for the n backends bes of pool `pool`: out[j] for bes[j]. */
void tstats_add_backends(uint32_t self, const char *pool, struct backend *const *bes,
                         uint32_t n, uint64_t (*out)[STAT_BACKEND_COUNT]);

/*
 * What a backend looks like on one thread beyond its counters, published
 * with them each loop turn. Readers show the merge over the threads
 * (docs/ARCHITECTURE.md "Threads"): the state by tstats_live_merge's rule,
 * connections and queued bytes summed, the dns error of any thread.
 */
struct tstats_live {
    enum backend_state state;
    bool tried;                 /* the thread connected or tried to: only then
                                   is its state an opinion on the server */
    uint32_t conns_up;          /* connections up (server_connections) */
    uint64_t queued_bytes;      /* request bytes not yet written */
    uint64_t retry_ms;          /* EJECTED: when it is tried again */
    char dns_error[sizeof(((struct backend *)0)->dns_error)];  /* "": none */
};

/* be as its own thread sees it (that thread only). */
void tstats_live_of(const struct backend *be, struct tstats_live *out);
/* Fold thread view t into acc (pure; any order gives the same result):
 * ejected if ejected on any thread; else down if at least one thread tried
 * it and every thread that tried it finds it down; else up. Connections and
 * bytes add up; retry_ms is the earliest of the ejecting threads'; the dns
 * error is acc's, or t's when acc has none. */
void tstats_live_merge(struct tstats_live *acc, const struct tstats_live *t);
/* p's backends merged over every thread: row j for p->backends[j], thread
 * self's live and the others' last snapshots; the caller frees it. */
struct tstats_live *tstats_backends_live(uint32_t self, const struct pool *p);
/* be's row of rows (from tstats_backends_live(p)); a backend that is not one
 * of p->backends (retiring, in no list) is seen on its thread alone, into
 * *own. */
const struct tstats_live *tstats_live_row(const struct pool *p, const struct tstats_live *rows,
                                          const struct backend *be, struct tstats_live *own);

/* `stats reset` (client.c): base[STAT_POOL_COUNT] is the summed counters
 * the text `stats` subtracts from then on, for pool p's name on every
 * thread (one thread: p->stats_base). The counters themselves never go
 * down (/metrics, the stats port). */
void tstats_pool_reset(struct pool *p, const uint64_t *base);
void tstats_pool_base(const struct pool *p, uint64_t *base);

/* What every reader shows (stats, /metrics, /status.json, the stats port):
 * pool p's counters on thread self plus the other threads' share, into
 * out[STAT_POOL_COUNT]. */
void tstats_pool_sum(uint32_t self, const struct pool *p, uint64_t *out);
/* The same for p's backends: row j for p->backends[j]; the caller frees it. */
uint64_t (*tstats_backends_sum(uint32_t self, const struct pool *p))[STAT_BACKEND_COUNT];

/* Several threads: client connections of a pool are counted across them
 * (client_connections is the pool's limit, not a thread's). Admit one if
 * under limit (0: none) and count it; a connection admitted leaves once. */
bool tstats_threaded(void);
bool tstats_client_admit(const char *pool, uint64_t limit);
void tstats_client_left(const char *pool);
/* Which threads serve a pool (their listener of it is open): a client is
 * handed only to one of them (proxy.c). Bit i: thread i. */
void tstats_pool_serving(const char *pool, uint32_t thread, bool on);
uint64_t tstats_pool_servers(const char *pool);

/* Threads: how many serve (balance.h; proxy.c decides). Written by the home
 * thread (the moves by whichever thread hands a client over), read by any:
 * `stats` shows them with several threads. */
struct tstats_threads {
    uint32_t threads, active;
    uint64_t trials, undone, moved;
};
void tstats_threads_set(uint32_t active, uint64_t trials, uint64_t undone);
void tstats_threads_moved(void);
void tstats_threads_get(struct tstats_threads *out);

#endif
