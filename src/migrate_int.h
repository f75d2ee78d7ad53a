/*
 * migrate_int.h — what migrate.c (lifecycle, Redis coordination) and move.c
 * (moving keys, commands on moving keys, the bulk mover) share. Not for
 * other modules: they use migrate.h.
 */
#ifndef RP_MIGRATE_INT_H
#define RP_MIGRATE_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <hiredis/async.h>

#include "mconn.h"
#include "migrate.h"
#include "ringrec.h"
#include "router.h"

#define MIG_BUCKETS 4096
#define MIG_LIST_BATCH 500
#define MIG_MAX_RETRIES 5
#define MIG_ARC_PASSES 5            /* passes over an arc whose moves failed */
#define MIG_ARC_RETRY_MS 1000
#define MIG_LEASE_MS 10000
#define MIG_HEARTBEAT_MS 1000
#define MIG_PROXY_LIVE_MS 5000
#define MIG_READY_TIMEOUT_MS 3000
#define MIG_PROGRESS_LOG_MS 5000
#define TTL_RELATIVE_MAX 2592000    /* memcached: larger exptimes are absolute */

enum move_result { MOVED, SKIPPED, STALE, FAILED };

struct mop;
TAILQ_HEAD(mop_queue, mop);

/* A key with operations queued or running; exists only while it has some. */
struct mkey {
    struct mkey *next;
    struct mop_queue ops;
    uint32_t bucket;
    uint16_t len;
    char key[];
};

struct mop {
    struct mig *m;
    struct mkey *k;
    TAILQ_ENTRY(mop) link;
    struct backend *from, *to;
    int32_t arc;                /* bulk move: its arc; client op: -1 */
    /* a client command */
    struct frag *f;
    enum proto_cmd cmd;
    uint32_t flags, key_index;
    int64_t exptime, bytes;
    uint64_t cas, delta;
    struct evbuffer *data;
    /* the move */
    int retries;
    char *val;
    size_t val_len;
    int64_t vflags, ttl, src_cas, dst_cas;
    bool stored_copy;
    bool source_kept;           /* copied, old copy left for the bulk mover */
    int waiting;                /* replies still expected (delete: two) */
    bool hit, hit_fail;
};

struct mig_arc {
    bool done;
    bool listing;               /* a ZRANGEBYSCORE is out */
    bool exhausted;             /* the last listing returned everything */
    uint32_t inflight;          /* moves of this arc under way */
    uint32_t cursor;            /* score to list from (inclusive) */
    char **seen;                /* members at `cursor` already taken */
    uint32_t nseen;
    uint32_t failed;            /* moves that failed in this pass */
    uint32_t passes;            /* passes over the arc so far */
    uint64_t retry_at;          /* next pass not before (ms) */
};

struct mig {
    struct pool *p;
    void (*ready)(struct pool *p);
    char *id;                   /* this proxy: host:pid:random */
    char *prefix;
    enum mig_state state;
    /* Redis */
    redisAsyncContext *rc;
    bool rc_up;
    struct event *retry;
    uint64_t next_heartbeat, next_progress_log, next_wait_log, ready_deadline;
    /* the migration */
    struct ring *from, *to;
    struct backend **from_be, **to_be;
    char fp_from[33], fp_to[33];
    uint64_t epoch;             /* of the ring record the data obeys */
    struct ring_diff diff;
    struct mig_arc *arcs;
    uint32_t arcs_done, cur_arc;
    struct ring *pending;       /* a newer ring, applied when this one ends */
    bool drained;               /* no request routed by the old ring in flight */
    uint64_t *drain_mark;       /* per backend slot: requests sent at the switch */
    uint32_t ndrain;
    bool lease;
    bool others_ready;
    double tokens;
    uint64_t last_refill;
    uint32_t inflight, reserved;
    bool finishing;             /* every arc done; recording ring B */
    bool closing;               /* mig_free: start nothing new */
    uint32_t nops;              /* operations queued or running */
    const char *end_how;        /* the end waits for nops to reach 0 */
    uint64_t started_ms, moved_at_last_log, last_log_ms;
    double last_rate;
    /* keys with operations */
    struct mkey *buckets[MIG_BUCKETS];
    uint64_t keys_moved, keys_stale, keys_skipped, keys_failed, keys_retried,
             client_moves, index_moved;
};

static inline uint64_t now_ms(const struct mig *m)
{
    return worker_now_ms(m->p->w);
}

/* migrate.c */
void mig_redis(struct mig *m, redisCallbackFn *cb, void *priv, const char *fmt, ...);
void mig_finish(struct mig *m);                 /* every arc is done */
void mig_end(struct mig *m, const char *how);   /* the data obeys ring B */

/* move.c */
void mop_start(struct mop *op);
void mop_free(struct mop *op);
void bulk_pump(struct mig *m);                  /* start what the budget allows */
int32_t arc_of(const struct mig *m, uint32_t h);
void arc_free_seen(struct mig_arc *a);

#endif
