/*
 * migrate_int.h — what migrate.c (the fleet's phases, Redis coordination)
 * and move.c (commands on changing keys, the bulk mover) share. Not for
 * other modules: they use migrate.h. The protocol is docs/ARCHITECTURE.md,
 * "Resizing a fleet".
 */
#ifndef RP_MIGRATE_INT_H
#define RP_MIGRATE_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <hiredis/async.h>

#include "layout.h"
#include "mconn.h"
#include "migrate.h"
#include "ringrec.h"
#include "pool.h"

#define MIG_BUCKETS 4096
#define MIG_LIST_BATCH 500
#define MIG_MAX_RETRIES 8           /* a key that keeps changing under us */
#define MIG_DOUBTS_MAX 131072       /* copies in doubt loaded from Redis, at most */
#define MIG_DBATCH_KEYS 128         /* doubt records in one HSET or HDEL */
#define MIG_ARC_RETRY_MIN_MS 500    /* an arc whose moves failed: first pause */
#define MIG_ARC_RETRY_MAX_MS 10000  /* ... doubling up to this */
#define MIG_SYNC_MS 1000            /* Redis sync when nothing changes */
#define MIG_SYNC_FAST_MS 200        /* ... while a change is proposed or runs */
#define MIG_READY_TIMEOUT_MS 3000
#define MIG_PROGRESS_LOG_MS 5000
#define MIG_WAIT_LOG_MS 5000
#define MIG_VALUE_MAX ((size_t)64 << 20)   /* largest value a move reads */
#define MIG_PASS_CLOSING 3          /* after two passes over the index: the
                                       closing pass over the sources (closing.c) */
#define MIG_CLOSING_LISTINGS 4      /* listings of a source that find keys to
                                       move, at most (closing.c) */
#define TTL_RELATIVE_MAX 2592000    /* memcached: larger exptimes are absolute */

/*
 * A tombstone: what a delete leaves on the old owner while keys may be
 * copied (ARCHITECTURE.md, invariant I4). Recognised by its client flags
 * and exact value together.
 */
#define MIG_TOMB_FLAGS 0x52505442u  /* "RPTB" */
#define MIG_TOMB_VALUE "ringproxy:tombstone:v1"
#define MIG_TOMB_TTL 86400
#define MIG_TOMB_NOTES_MAX ((size_t)4 << 20)  /* bytes of notes of the tombstones
                                                this proxy wrote, at most */
#define MIG_SWEEPS_INFLIGHT 64      /* their removals under way at once */
#define MIG_TOMB_ENTRY_MAX 1024     /* a note handed to the fleet: "<proxy id>
                                       <key> <identity>" */
#define MIG_TOMB_TAKE 64            /* notes taken from the fleet's list at once */
#define MIG_TAKE_TRIES 50           /* refusals of a take before it is given up */

/* How this proxy routes a key whose owner differs between the two rings. */
enum mig_phase {
    PH_NONE,                    /* no migration: the recorded ring */
    PH_PREPARED,                /* home = old owner; reads old then new */
    PH_SWITCHED,                /* home = new owner; reads old then new */
};

/* MOP_WAITING: both owners hold a value; the key waits for a later pass. */
enum mop_result { MOP_MOVED, MOP_SKIPPED, MOP_STALE, MOP_TOMB_CLEARED, MOP_WAITING, MOP_FAILED };

struct mdump;
struct mop;
struct mig_source;
TAILQ_HEAD(mop_queue, mop);

/* A key with operations queued or running; exists only while it has some. */
struct mkey {
    struct mkey *next;
    struct mop_queue ops;
    uint32_t bucket;
    uint16_t len;
    char key[];
};

/*
 * A copy whose store on the new owner got no answer (a timeout): it may
 * still land later, carrying a value the old owner may have changed since.
 * The mover resolves it before it touches the key again (move.c).
 */
struct mdoubt {
    struct mdoubt *next;
    uint64_t vhash;             /* value, flags and length of the copy */
    int64_t src_cas;            /* the old owner's CAS it was read at */
    int64_t dst_cas;            /* conflicts: the new owner's CAS */
    uint64_t since;             /* conflicts: first seen (ms); doubts: first
                                 * seen missing from a live N (0: not yet) */
    uint64_t sent_on;           /* doubts: the socket the copy went on
                                 * (mconn_socket) */
    uint32_t opaque;            /* doubts: the copy's O<n> on it */
    uint64_t round;             /* doubts: the last round of doubts_pump
                                 * that visited it */
    uint16_t len;
    char key[];
};

/* Where a tombstone note stands with the fleet's list (move.c, tomb_push). */
enum mtomb_hand {
    TOMB_TO_HAND,               /* this proxy's, not in the fleet's list yet */
    TOMB_HANDED,                /* this proxy's, in the list (or given up) */
    TOMB_TAKEN,                 /* another's, taken from the list: handed
                                   back if this proxy leaves first */
};

/*
 * A tombstone this proxy wrote, or may have, or took from the fleet's list
 * (the old owner it is on): swept once the fleet recorded the new ring
 * (move.c, tomb_sweep; docs/ARCHITECTURE.md, "Moving keys").
 */
struct mtomb {
    struct mtomb *next;
    struct backend *on;         /* in m->from_be: alive while m->from is */
    uint16_t len;
    uint8_t hand;               /* enum mtomb_hand */
    char key[];
};

/* What an old-owner lookup found. */
enum mlook { LOOK_NONE, LOOK_REAL, LOOK_TOMB };

struct mop {
    struct mig *m;
    struct mkey *k;
    TAILQ_ENTRY(mop) link;
    struct backend *from, *to;  /* old owner, new owner */
    int32_t arc;                /* bulk move: its arc; client op: -1 */
    struct mig_source *src;     /* listed by the closing pass: its source */
    uint32_t gen;               /* the pool's routing generation at start */
    bool counted;               /* counted in the pool's in-flight requests */
    enum mig_phase phase;       /* client op: the phase it runs under */
    /* a client command */
    struct frag *f;
    enum proto_cmd cmd;
    uint32_t flags, key_index;
    int64_t exptime, bytes;
    uint64_t cas, delta;
    struct evbuffer *data;
    int step;                   /* where a client command is (move.c) */
    enum mlook old;             /* what the old owner held */
    int64_t old_cas;
    bool old_failed;            /* the old owner could not be asked */
    bool hit;                   /* delete: something was deleted */
    bool sweep;                 /* removes a tombstone this proxy noted */
    uint8_t tomb_hand;          /* sweep: its note's enum mtomb_hand */
    struct mop_meta *meta;      /* a client's meta command, else NULL */
    /* the move */
    int retries;
    char *val;
    size_t val_len;
    int64_t vflags, ttl, src_cas, dst_cas;
    bool stored_copy;
    bool dest_checked;          /* the new owner's refusal was looked into */
    uint64_t sent_on;           /* the socket its last command went on */
    uint32_t sent_opaque;       /* ... and that command's O<n> there */
    bool src_tomb;              /* the old owner holds a tombstone */
    bool src_gone;              /* ... nothing (a copy in doubt is settled) */
    bool copy_recorded;         /* its copy is in <prefix>:migration:doubts
                                   until answered (move.c, move_copy) */
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
    uint32_t backoff_ms;
    uint64_t retry_at;          /* next pass not before (ms) */
};

/*
 * A server of the old ring that owns a moving arc: the closing pass lists
 * its keys (metadump) and moves those of its moving arcs (closing.c).
 */
struct mig_source {
    struct mig *m;
    uint32_t server;            /* in m->from */
    struct mdump *dump;         /* the listing under way, or NULL */
    bool listed;                /* the last listing reached its end */
    bool done;                  /* listed, and every move it started ended */
    bool refused;               /* the server cannot list its keys: skipped */
    uint32_t inflight;          /* moves it started that have not ended */
    uint32_t failed;            /* ... that failed or wait: list it again */
    uint32_t rounds;            /* listings started */
    uint32_t relists;           /* listings that ended having found keys */
    uint32_t backoff_ms;
    uint64_t retry_at;          /* next listing not before (ms) */
    uint64_t started_ms;        /* of the current listing */
    uint64_t listed_keys;       /* keys of its moving arcs, this listing */
    char why[112];              /* why its last listing failed ("" none) */
};

struct mig {
    struct pool *p;
    void (*ready)(struct pool *p);
    char *id;                   /* this proxy: host:pid:random */
    char *prefix;
    char *ring_key;             /* <prefix>:ring: the index script's KEYS[1] */
    struct lay_limits limits;   /* the listpack thresholds (layout.h) */
    enum mig_state state;
    uint64_t liveness_ms;       /* 0: never exclude, never fence */
    /* Redis */
    redisAsyncContext *rc;
    bool rc_up;                 /* connected (or connecting), AUTH and SELECT
                                   accepted: commands may be sent */
    uint32_t handshake;         /* AUTH, SELECT replies awaited */
    bool handshake_failed;      /* refused: sent again at next_handshake */
    uint64_t next_handshake;
    bool syncing;               /* a sync is out */
    struct event *retry;
    uint64_t next_sync, sync_sent, last_sync_ok;
    uint64_t next_progress_log, next_progress_write, next_wait_log, ready_deadline;
    bool fenced;
    bool wrote_record;          /* this proxy wrote the first ring record */
    char fp_first[RINGREC_FP_SIZE];     /* ... what it sent, for the log */
    uint64_t epoch_first;
    /* rings */
    struct ring *want;          /* the config file's ring */
    char fp_want[RINGREC_FP_SIZE];
    char fp_rec[RINGREC_FP_SIZE];   /* the recorded ring ("" unknown) */
    uint64_t epoch;             /* of the recorded ring */
    uint64_t begin_epoch;       /* ... when the migration followed began */
    bool rejoining;             /* dropped a migration left behind: fenced
                                   until a sync serves the recorded ring */
    char waiting[256];          /* proxies the fleet waits for (log, status) */
    uint32_t nlive;
    /* A ring record this proxy cannot serve (it names a server identity the
     * config file does not know): why; "" when none. Fences the pool. */
    char refused[192];
    uint64_t next_refused_log, next_foreign_log;
    /* the migration (from == NULL: none). from and to carry this proxy's
     * own addresses (ring_localize); to_rec is the target as the fleet
     * recorded it, what the coordinator writes back at the end. */
    struct ring *from, *to, *to_rec;
    /* Server index -> backend for from and to. The arrays are the
     * migration's own (pool_ring_backends made them; mig_clear frees them);
     * never handed to the pool: pool_set_ring gets a copy. The backends in
     * them are borrowed from pool.backends and stay alive because
     * pool_retire_backends keeps every backend mig_uses_backend names. */
    struct backend **from_be, **to_be;
    char fp_from[RINGREC_FP_SIZE], fp_to[RINGREC_FP_SIZE];
    enum mig_phase phase;       /* how this proxy routes now */
    enum mig_phase acked;       /* the phase whose older requests all landed */
    char fleet[16];             /* the record's phase */
    struct ring_diff diff;
    struct mig_arc *arcs;
    uint32_t arcs_done, cur_arc, pass;
    bool lease;
    bool done_loaded, loading_done;     /* the done arcs, read when leading */
    bool doubts_loaded;         /* ... and the copies in doubt (read first) */
    double tokens;
    uint64_t last_refill;
    uint32_t inflight, reserved;
    bool finishing;             /* every arc done; recording ring B */
    bool closing;               /* stopping: start nothing new */
    bool left;                  /* Redis confirmed we left the fleet */
    uint32_t nops;              /* operations queued or running */
    uint64_t started_ms, moved_at_last_log, last_log_ms;
    double last_rate;
    char blocked[128];          /* a server that fails moves */
    /* the closing pass (closing.c): one entry per source server */
    struct mig_source *sources;
    uint32_t nsources, sources_done;
    /* keys with operations; copies in doubt */
    struct mkey *buckets[MIG_BUCKETS];
    struct mdoubt *doubts[MIG_BUCKETS];
    struct mdoubt *conflicts[MIG_BUCKETS];  /* both owners hold a value */
    uint64_t ndoubts, nconflicts, conflicts_settled;
    /* doubts left once every pass is over: visited in rounds (move.c,
     * doubts_pump) until none is left; the migration ends only then */
    uint32_t doubt_bucket;      /* where the round is */
    bool doubt_pumping;         /* a round is being started */
    uint32_t doubt_backoff_ms;
    uint64_t doubt_retry_at;    /* next round not before (ms) */
    uint64_t doubt_rounds;
    uint64_t keys_moved, keys_stale, keys_skipped, keys_failed, keys_retried,
             client_ops, index_moved, tombs_written, tombs_cleared, fallback_reads;
    uint64_t unindexed_moved, closing_listed, closing_refused;  /* closing.c */
    uint64_t bad_members;       /* index members skipped: not a memcached key
                                   (move.c); since start */
    struct mig_dbatch *dbatch;  /* doubt records not sent yet, or NULL */
    /* the tombstones this proxy wrote, oldest first, swept at the end;
     * tombs_tail is &tombs when empty (mig_new) */
    struct mtomb *tombs, **tombs_tail;
    size_t tombs_bytes;
    uint32_t sweeps;            /* sweep operations queued or running */
    uint64_t tombs_swept, tombs_left;
    /* the same notes handed to the fleet (<prefix>:migration:tombs:<to>,
     * move.c tomb_push), and taken back from it once the new ring is
     * recorded (migrate.c tomb_collect) */
    size_t tombs_handed_bytes;
    uint64_t tombs_handed, tombs_taken;
    uint32_t tombs_to_hand;     /* notes TOMB_TO_HAND (Redis was away) */
    uint64_t take_after;        /* a refused take is tried again then (ms) */
    uint64_t gen;               /* the migration's generation, bumped by
                                   mig_clear: the priv of its pushes and takes,
                                   whose replies to an older one are dropped */
    bool taking, taken;         /* taken: the list was found empty */
    bool take_again;            /* a push since the last take was sent */
    uint32_t take_refusals;     /* refusals of the take in a row */
    bool freeing;               /* mig_free: nothing is sent any more */
    bool *tombs_dead;           /* per server of from: a sweep there failed
                                   (move.c tomb_left); its notes are dropped */
};

/*
 * The doubt records (HSET, HDEL of <prefix>:migration:doubts:<to>) made
 * during a loop turn, sent as one command at its end or when full (move.c,
 * doubt_batch_send); the copies that wait for their HSET to be answered.
 */
enum mig_dbatch_kind { DBATCH_NONE, DBATCH_SET, DBATCH_DEL };

struct mig_dbatch {
    enum mig_dbatch_kind kind;
    char hash[CONF_PREFIX_MAX + 64];        /* <prefix>:migration:doubts:<to> */
    uint32_t nkeys;
    struct evbuffer *args;      /* the fields (HSET: and values), in RESP */
    uint32_t nops;
    struct mop *ops[MIG_DBATCH_KEYS];
};

static inline uint64_t now_ms(const struct mig *m)
{
    return worker_now_ms(m->p->w);
}

/* migrate.c */
/* The last sync completed within half the liveness (what fences a proxy by
 * the clock): what it read of the records is that recent. */
bool mig_synced_lately(const struct mig *m);
/* False (cb will not be called): Redis not connected, or the command not
 * queued (logged). */
bool mig_redis(struct mig *m, redisCallbackFn *cb, void *priv, const char *fmt, ...);
/* The callback of a command whose reply matters only if it is an error. */
void mig_unchecked_reply(redisAsyncContext *ac, void *r, void *priv);
/* The index script's `op` over n arguments (layout.h), on the coordination
 * connection; cb NULL: only an error matters. False: not sent, and cb
 * will not be called. */
bool mig_index(struct mig *m, redisCallbackFn *cb, void *priv, const char *op, int n,
               const char *const *args, const size_t *lens);
/* The index script was refused: counted in the index health, and loaded
 * again when Redis lost it (NOSCRIPT). */
void mig_index_refused(struct mig *m, const char *msg);
void mig_finish(struct mig *m);                 /* every arc is done */

/* move.c */
void mop_start(struct mop *op);
bool mop_enqueue(struct mig *m, struct mop *op, const char *key, size_t len);
uint32_t op_timeout_ms(const struct pool *p);
uint32_t inflight_limit(const struct mig *m);
void mop_free(struct mop *op);
void bulk_pump(struct mig *m);                  /* start what the budget allows */
/* Move key, of moving arc i (src: the closing pass's source listing it,
 * else NULL): counted in flight, started once the key is idle. False: not
 * started (out of memory), nothing counted. */
bool bulk_move(struct mig *m, uint32_t i, struct mig_source *src, const char *key,
               size_t len);
int32_t arc_of(const struct mig *m, uint32_t h);
void arc_free_seen(struct mig_arc *a);
void mig_doubts_free(struct mig *m);
/* The fleet recorded the new ring: start sweeps of the tombstones this
 * proxy noted (each an operation on its key), as many as may run. */
void tomb_sweep(struct mig *m);
void tomb_notes_free(struct mig *m);
/* A note from the fleet's list, "<proxy id> <key> <identity of the old
 * owner>": noted as this proxy's own (skipped if it is). A malformed entry,
 * an unknown server or one that failed a sweep is counted in tombs_left. */
void tomb_take(struct mig *m, const char *entry, size_t len);
/* Hand the fleet the notes it does not have: this proxy's own that Redis
 * was away for, and (leaving: this proxy stops) those it took and has not
 * swept yet. */
void tomb_hand_pending(struct mig *m, bool leaving);
/* Send the doubt records batched so far, before any other command of m's
 * (ordered) and at the end of each loop turn (final: copies whose record
 * cannot be sent fail then; otherwise they wait for that, and false says
 * the batch is still waiting: nothing else may be sent before it). */
bool doubt_batch_send(struct mig *m, bool final);
void doubt_batch_free(struct mig *m);    /* mig_free: drop it unsent */
/* An HGETALL of <prefix>:migration:doubts:<to>: an earlier lease holder's
 * copies in doubt, settled as this proxy's own (untrusted: bounded). */
void mig_doubts_load(struct mig *m, const redisReply *reply);
/* Index bookkeeping: key into / out of its v-node set under ring r. */
void mig_index_add(struct mig *m, const struct ring *r, const char *key, size_t len);
void mig_index_rem(struct mig *m, const struct ring *r, const char *key, size_t len);

/* closing.c: the closing pass (docs/ARCHITECTURE.md, "Moving keys") */
bool closing_begin(struct mig *m);              /* every arc is done twice */
bool closing_pump(struct mig *m);               /* true: every source is done */
void closing_tick(struct mig *m);               /* stops it without the lease */
void closing_result(struct mop *op, enum mop_result res);
void closing_free(struct mig *m);

#endif
