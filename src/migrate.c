/*
 * migrate.c — moving keys to their new owner after a ring change, while
 * serving, with no miss and no stale read (DESIGN §5, §6).
 *
 * Design notes
 *
 * Coordination. Every indexed pool keeps one Redis connection for this
 * module. <prefix>:ring is the authority on where data lives. Each proxy
 * heartbeats into <prefix>:proxies the fingerprint of the ring it serves.
 * One proxy at a time holds <prefix>:migration:lock (a lease that expires
 * unless renewed); it moves no data until every live proxy serves the
 * target ring, because a proxy still routing by the old ring would write to
 * old owners behind the mover's back. Arcs that are done are recorded in
 * <prefix>:migration:done, so a restarted or new lease holder resumes. The
 * holder ends by writing the target ring, with the next epoch, to
 * <prefix>:ring; the others notice and stop routing with fallback.
 *
 * Moving one key (move_*), conditional end to end:
 *   mg key v f t c            on the old owner: value, flags, TTL, CAS
 *   ms key n F T ME c         on the new owner, add mode: a newer client
 *                             write there wins; returns the copy's CAS
 *   md key C<cas>             on the old owner, only if unchanged
 * If the old copy changed (EX) or vanished (NF) in between, the new copy is
 * removed only if it is still ours (md key C<copy cas>) and the key is
 * retried, so a delete or set racing the move can never be undone by it.
 *
 * Serving while moving. Every command on a key whose arc is still moving,
 * or that has a move under way, goes through a per-key FIFO of operations
 * (struct mkey), so within this proxy a client command waits for the move
 * of its key and runs after it, in order. A client command first moves its
 * key (a no-op when the old owner has nothing), then runs on the new owner
 * in meta-protocol form; `set` skips the move and deletes the old copy
 * after writing the new one; `delete` deletes on both.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libevent.h>

#include "backend.h"
#include "index.h"
#include "log.h"
#include "mconn.h"
#include "ringrec.h"
#include "migrate.h"
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

#define MIG_STATE_NAME(e, name) [MIG_##e] = name,
const char *const mig_state_names[MIG_STATE_COUNT] = { MIG_STATE_CODEC(MIG_STATE_NAME) };
#undef MIG_STATE_NAME

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

static void mig_connect(struct mig *m);
static void mop_next(struct mkey *k);
static void mig_finish(struct mig *m);
static void mig_end(struct mig *m, const char *how);
static void bulk_pump(struct mig *m);

/* --- helpers ---------------------------------------------------------------- */

static uint64_t now_ms(const struct mig *m)
{
    return worker_now_ms(m->p->w);
}

static struct mconn *mc_of(struct backend *be)
{
    if (be->mc == NULL) {
        uint32_t t = be->pool->conf->timeout > 0 ? (uint32_t)be->pool->conf->timeout : 5000;
        be->mc = mconn_new(be->pool->w->base, be->addr.host, be->addr.port,
                           be->addr.is_unix, t);
    }
    return be->mc;
}

static void mig_redis(struct mig *m, redisCallbackFn *cb, void *priv, const char *fmt, ...)
{
    va_list ap;

    if (!m->rc_up) {
        return;
    }
    va_start(ap, fmt);
    int rc = redisvAsyncCommand(m->rc, cb, priv, fmt, ap);
    va_end(ap);
    if (rc != REDIS_OK) {
        log_error("migration", "%s: cannot send a Redis command (%.40s...)",
                  m->p->name, fmt);
    }
}

/* A ring from an HGETALL reply of the ring record; NULL if malformed. */
static struct ring *ring_from_reply(const redisReply *h, uint64_t *epoch)
{
    const char **kv = calloc(h->elements ? h->elements : 1, sizeof(*kv));
    struct ring *r = NULL;

    if (kv == NULL) {
        return NULL;
    }
    for (size_t j = 0; j < h->elements; j++) {
        kv[j] = h->element[j]->type == REDIS_REPLY_STRING ? h->element[j]->str : "";
    }
    r = ringrec_parse(kv, h->elements, epoch);
    free(kv);
    return r;
}

/* HSET <prefix>:ring with ring r at epoch e (as one atomic command). */
static void write_ring_record(struct mig *m, const struct ring *r, uint64_t epoch,
                              redisCallbackFn *cb)
{
    char *fields[RINGREC_FIELDS * 2];
    const char *argv[2 + RINGREC_FIELDS * 2];
    size_t argvlen[2 + RINGREC_FIELDS * 2];
    char key[512];
    int n = ringrec_fields(r, epoch, fields);

    if (n < 0 || !m->rc_up) {
        return;
    }
    snprintf(key, sizeof(key), "%s:ring", m->prefix);
    argv[0] = "HSET";
    argv[1] = key;
    for (int i = 0; i < n; i++) {
        argv[2 + i] = fields[i];
    }
    for (int i = 0; i < 2 + n; i++) {
        argvlen[i] = strlen(argv[i]);
    }
    redisAsyncCommandArgv(m->rc, cb, m, 2 + n, argv, argvlen);
    ringrec_fields_free(fields, n);
}

/* --- the key table ---------------------------------------------------------- */

static uint32_t key_bucket(const char *key, size_t len)
{
    return hash_fnv1a_32(key, len) & (MIG_BUCKETS - 1);
}

static struct mkey *key_find(struct mig *m, const char *key, size_t len)
{
    for (struct mkey *k = m->buckets[key_bucket(key, len)]; k; k = k->next) {
        if (k->len == len && memcmp(k->key, key, len) == 0) {
            return k;
        }
    }
    return NULL;
}

static struct mkey *key_get(struct mig *m, const char *key, size_t len)
{
    struct mkey *k = key_find(m, key, len);

    if (k != NULL) {
        return k;
    }
    k = malloc(sizeof(*k) + len);
    if (k == NULL) {
        return NULL;
    }
    k->bucket = key_bucket(key, len);
    k->len = (uint16_t)len;
    memcpy(k->key, key, len);
    TAILQ_INIT(&k->ops);
    k->next = m->buckets[k->bucket];
    m->buckets[k->bucket] = k;
    return k;
}

static void key_drop(struct mig *m, struct mkey *k)
{
    struct mkey **pp = &m->buckets[k->bucket];

    while (*pp != k) {
        pp = &(*pp)->next;
    }
    *pp = k->next;
    free(k);
}

/* The arc (index into diff.arcs) holding hash h, or -1. */
static int32_t arc_of(const struct mig *m, uint32_t h)
{
    size_t lo = 0, hi = m->diff.narcs;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (m->diff.arcs[mid].last < h) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if (lo < m->diff.narcs && m->diff.arcs[lo].first <= h) {
        return (int32_t)lo;
    }
    return -1;
}

bool mig_routes_key(struct mig *m, const char *key, size_t len)
{
    if (m == NULL || m->to == NULL) {
        return false;
    }
    int32_t a = arc_of(m, ring_key_hash(m->to, key, len));
    if (a >= 0 && m->diff.arcs[a].moves && !m->arcs[a].done) {
        return true;
    }
    return key_find(m, key, len) != NULL;
}

/* --- index bookkeeping of a move --------------------------------------------- */

static void index_moved(struct mig *m, const struct mop *op, enum move_result res)
{
    char vnode[1024];
    const struct ring *from = m->from;
    uint32_t h = ring_key_hash(from, op->k->key, op->k->len);

    if (res == FAILED) {
        return;
    }
    /* Out of the old v-node's set (unless the old copy stays, so that the
     * bulk mover still finds it); into the new one's if the key is there. */
    if (!op->source_kept || !m->p->conf->migration.delete_source) {
        idx_vnode_key(m->prefix, from, ring_find(from, h), vnode, sizeof(vnode));
        mig_redis(m, NULL, NULL, "ZREM %s %b", vnode, op->k->key, (size_t)op->k->len);
    }
    if (res == MOVED || res == SKIPPED) {
        idx_key_stored(m->p->idx, op->k->key, op->k->len);
    }
    m->index_moved++;
}

/* --- client replies ----------------------------------------------------------- */

static void reply_line(struct mop *op, const char *line)
{
    struct evbuffer *sink = frag_sink(op->f);

    if (sink != NULL) {
        evbuffer_add_printf(sink, "%s\r\n", line);
    }
}

static void reply_value(struct mop *op, const struct mreply *r)
{
    struct request *req = op->f->req;
    struct evbuffer *sink = frag_sink(op->f);
    int64_t flags = 0, cas = 0;
    bool with_cas = op->cmd == PROTO_CMD_GETS || op->cmd == PROTO_CMD_GATS;

    mreply_flag(r, 'f', &flags);
    mreply_flag(r, 'c', &cas);
    req->hits++;
    if (sink == NULL) {
        return;
    }
    size_t before = evbuffer_get_length(sink);
    evbuffer_add_printf(sink, "VALUE %.*s %llu %zu", (int)op->k->len, op->k->key,
                        (unsigned long long)(uint32_t)flags, r->value_len);
    if (with_cas) {
        evbuffer_add_printf(sink, " %llu", (unsigned long long)cas);
    }
    evbuffer_add(sink, "\r\n", 2);
    evbuffer_add(sink, r->value, r->value_len);
    evbuffer_add(sink, "\r\n", 2);
    if (req->nfrags > 1) {
        req->key_hit[op->key_index] = (uint32_t)(evbuffer_get_length(sink) - before);
    }
}

/* --- operations ---------------------------------------------------------------- */

static void mop_free(struct mop *op)
{
    free(op->val);
    if (op->data != NULL) {
        evbuffer_free(op->data);
    }
    free(op);
}

/* The operation is over: complete its client part, start the key's next. */
static void mop_finish(struct mop *op)
{
    struct mig *m = op->m;
    struct mkey *k = op->k;

    TAILQ_REMOVE(&k->ops, op, link);
    if (op->f != NULL) {
        struct frag *f = op->f;
        if (f->retrieval && f->req->nfrags == 1) {
            reply_line(op, "END");
        }
        request_frag_done(f);
    }
    if (op->arc >= 0) {
        m->arcs[op->arc].inflight--;
        m->inflight--;
    }
    mop_free(op);
    m->nops--;
    if (TAILQ_EMPTY(&k->ops)) {
        key_drop(m, k);
    } else {
        mop_next(k);
    }
    if (m->lease) {
        bulk_pump(m);
    }
    if (m->end_how != NULL && m->nops == 0) {
        mig_end(m, m->end_how);     /* it waited for this last operation */
    }
}

static bool mop_send(struct mop *op, struct backend *be, mconn_cb cb,
                     const void *data, size_t data_len, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

static bool mop_send(struct mop *op, struct backend *be, mconn_cb cb,
                     const void *data, size_t data_len, const char *fmt, ...)
{
    char line[600];
    va_list ap;

    if (op->m->closing) {
        return false;
    }
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    struct mconn *mc = mc_of(be);
    if (mc == NULL || n < 0 || (size_t)n >= sizeof(line) ||
        mconn_send(mc, line, (size_t)n, data, data_len, cb, op) != 0) {
        return false;
    }
    return true;
}

static void client_run(struct mop *op);
static void move_fetch(struct mop *op);

static void move_done(struct mop *op, enum move_result res)
{
    struct mig *m = op->m;

    if (op->f != NULL && res == STALE) {
        /* A client command found nothing to move: the usual case once the
         * key has moved. Its index entry is the bulk mover's business. */
        client_run(op);
        return;
    }
    switch (res) {
    case MOVED:
        m->keys_moved++;
        m->client_moves += op->f != NULL;
        break;
    case SKIPPED:
        m->keys_skipped++;
        break;
    case STALE:
        m->keys_stale++;
        break;
    case FAILED:
        m->keys_failed++;
        if (op->arc >= 0) {
            m->arcs[op->arc].failed++;  /* its arc gets another pass */
        }
        break;
    }
    index_moved(m, op, res);
    if (op->f != NULL) {
        client_run(op);     /* the key is where ring B says: run the command */
    } else {
        mop_finish(op);
    }
}

/* TTL from "mg t": -1 none; over 30 days memcached wants an absolute time. */
static int64_t ttl_for_store(int64_t ttl)
{
    if (ttl < 0) {
        return 0;
    }
    if (ttl == 0) {
        return 1;   /* expires within the second */
    }
    return ttl > TTL_RELATIVE_MAX ? (int64_t)time(NULL) + ttl : ttl;
}

/* The key changed under the move: start it over, a few times at most. */
static void move_retry(struct mop *op)
{
    if (op->retries++ < MIG_MAX_RETRIES) {
        op->m->keys_retried++;
        move_fetch(op);
    } else {
        move_done(op, FAILED);
    }
}

static void on_undo(void *arg, const struct mreply *r)
{
    (void)r;
    move_retry(arg);
}

static void on_delete_source(void *arg, const struct mreply *r)
{
    struct mop *op = arg;

    if (r->status == MREPLY_HD) {
        move_done(op, op->stored_copy ? MOVED : SKIPPED);
        return;
    }
    if (r->status == MREPLY_FAIL) {
        move_done(op, FAILED);
        return;
    }
    /* The old copy changed (EX) or vanished (NF) since we read it. */
    if (op->stored_copy) {
        /* Remove our copy, but only if nobody has written the key since. */
        if (!mop_send(op, op->to, on_undo, NULL, 0, "md %.*s C%lld",
                      (int)op->k->len, op->k->key, (long long)op->dst_cas)) {
            move_done(op, FAILED);
        }
        return;
    }
    if (r->status == MREPLY_NF) {
        move_done(op, SKIPPED);     /* gone; ring B's owner has the truth */
    } else {
        move_retry(op);
    }
}

static void on_store_copy(void *arg, const struct mreply *r)
{
    struct mop *op = arg;
    /* Until every live proxy serves the new ring, one of them may still
     * write the old owner: a client-driven move copies but keeps the source
     * (the bulk mover deletes it later, conditionally). */
    bool delete_source = op->m->p->conf->migration.delete_source &&
                         (op->f == NULL || op->m->others_ready);

    free(op->val);
    op->val = NULL;
    if (r->status == MREPLY_HD) {
        op->stored_copy = true;
        mreply_flag(r, 'c', &op->dst_cas);
    } else if (r->status != MREPLY_NS) {
        move_done(op, FAILED);
        return;
    }
    if (!delete_source) {
        op->source_kept = true;
        move_done(op, op->stored_copy ? MOVED : SKIPPED);
        return;
    }
    if (!mop_send(op, op->from, on_delete_source, NULL, 0, "md %.*s C%lld",
                  (int)op->k->len, op->k->key, (long long)op->src_cas)) {
        move_done(op, FAILED);
    }
}

static void on_fetch(void *arg, const struct mreply *r)
{
    struct mop *op = arg;

    if (r->status == MREPLY_EN) {
        move_done(op, STALE);
        return;
    }
    if (r->status != MREPLY_VA || (op->val = malloc(r->value_len + 1)) == NULL) {
        move_done(op, FAILED);
        return;
    }
    memcpy(op->val, r->value, r->value_len);
    op->val_len = r->value_len;
    op->vflags = 0;
    op->ttl = -1;
    op->src_cas = 0;
    mreply_flag(r, 'f', &op->vflags);
    mreply_flag(r, 't', &op->ttl);
    mreply_flag(r, 'c', &op->src_cas);
    op->stored_copy = false;
    op->source_kept = false;
    if (!mop_send(op, op->to, on_store_copy, op->val, op->val_len,
                  "ms %.*s %zu F%llu T%lld ME c", (int)op->k->len, op->k->key,
                  op->val_len, (unsigned long long)(uint32_t)op->vflags,
                  (long long)ttl_for_store(op->ttl))) {
        move_done(op, FAILED);
    }
}

static void move_fetch(struct mop *op)
{
    if (!mop_send(op, op->from, on_fetch, NULL, 0, "mg %.*s v f t c",
                  (int)op->k->len, op->k->key)) {
        move_done(op, FAILED);
    }
}

/* --- client commands on the new owner ------------------------------------------- */

static void on_client_reply(void *arg, const struct mreply *r);

static void on_set_old_deleted(void *arg, const struct mreply *r)
{
    (void)r;
    mop_finish(arg);
}

static void on_client_reply(void *arg, const struct mreply *r)
{
    struct mop *op = arg;
    enum proto_cmd cmd = op->cmd;

    if (cmd == PROTO_CMD_DELETE) {
        /* Two replies, old and new owner: answer once both are in. */
        op->hit |= r->status == MREPLY_HD;
        op->hit_fail |= r->status == MREPLY_FAIL;
        if (--op->waiting > 0) {
            return;
        }
        reply_line(op, op->hit ? "DELETED" : op->hit_fail ? BACKEND_ERR_LOST : "NOT_FOUND");
        if (op->hit) {
            idx_key_deleted(op->m->p->idx, op->k->key, op->k->len);
        }
        mop_finish(op);
        return;
    }
    if (r->status == MREPLY_FAIL) {
        if (op->f->retrieval) {
            if (op->f->req->nfrags == 1) {
                struct frag *f = op->f;
                reply_line(op, BACKEND_ERR_LOST);
                op->f = NULL;   /* the error replaces END */
                request_frag_done(f);
            }
        } else {
            bool server_said = r->error != NULL &&
                               (strncmp(r->error, "CLIENT_ERROR", 12) == 0 ||
                                strncmp(r->error, "SERVER_ERROR", 12) == 0);
            reply_line(op, server_said ? r->error : BACKEND_ERR_LOST);
        }
        mop_finish(op);
        return;
    }
    switch (cmd) {
    case PROTO_CMD_GET:
    case PROTO_CMD_GETS:
    case PROTO_CMD_GAT:
    case PROTO_CMD_GATS:
        if (r->status == MREPLY_VA) {
            reply_value(op, r);
        }
        break;
    case PROTO_CMD_TOUCH:
        reply_line(op, r->status == MREPLY_HD ? "TOUCHED" : "NOT_FOUND");
        break;
    case PROTO_CMD_INCR:
    case PROTO_CMD_DECR:
        if (r->status == MREPLY_VA) {
            char num[32];
            size_t n = r->value_len < sizeof(num) - 1 ? r->value_len : sizeof(num) - 1;
            memcpy(num, r->value, n);
            num[n] = '\0';
            reply_line(op, num);
        } else {
            reply_line(op, "NOT_FOUND");
        }
        break;
    case PROTO_CMD_SET:
    case PROTO_CMD_ADD:
    case PROTO_CMD_REPLACE:
    case PROTO_CMD_APPEND:
    case PROTO_CMD_PREPEND:
    case PROTO_CMD_CAS:
        if (r->status == MREPLY_HD) {
            reply_line(op, "STORED");
            idx_key_stored(op->m->p->idx, op->k->key, op->k->len);
        } else {
            reply_line(op, r->status == MREPLY_EX ? "EXISTS" :
                           r->status == MREPLY_NF ? "NOT_FOUND" : "NOT_STORED");
        }
        if (cmd == PROTO_CMD_SET && r->status == MREPLY_HD) {
            /* The new owner has the newest value: drop the old copy. */
            struct frag *f = op->f;
            op->f = NULL;
            request_frag_done(f);
            if (!mop_send(op, op->from, on_set_old_deleted, NULL, 0, "md %.*s",
                          (int)op->k->len, op->k->key)) {
                mop_finish(op);
            }
            return;
        }
        break;
    default:
        reply_line(op, "ERROR");
        break;
    }
    mop_finish(op);
}

static void client_run(struct mop *op)
{
    const char *k = op->k->key;
    int kl = op->k->len;
    bool ok = true;
    char *data = NULL;
    size_t dlen = 0;

    if (op->data != NULL) {
        dlen = evbuffer_get_length(op->data) - 2;
        data = (char *)evbuffer_pullup(op->data, -1);
    }
    switch (op->cmd) {
    case PROTO_CMD_GET:
        ok = mop_send(op, op->to, on_client_reply, NULL, 0, "mg %.*s v f", kl, k);
        break;
    case PROTO_CMD_GETS:
        ok = mop_send(op, op->to, on_client_reply, NULL, 0, "mg %.*s v f c", kl, k);
        break;
    case PROTO_CMD_GAT:
    case PROTO_CMD_GATS:
        ok = mop_send(op, op->to, on_client_reply, NULL, 0, "mg %.*s v f%s T%lld",
                      kl, k, op->cmd == PROTO_CMD_GATS ? " c" : "",
                      (long long)op->exptime);
        break;
    case PROTO_CMD_TOUCH:
        ok = mop_send(op, op->to, on_client_reply, NULL, 0, "mg %.*s T%lld", kl, k,
                      (long long)op->exptime);
        break;
    case PROTO_CMD_INCR:
    case PROTO_CMD_DECR:
        ok = mop_send(op, op->to, on_client_reply, NULL, 0, "ma %.*s D%llu v%s", kl, k,
                      (unsigned long long)op->delta,
                      op->cmd == PROTO_CMD_DECR ? " MD" : "");
        break;
    case PROTO_CMD_SET:
    case PROTO_CMD_ADD:
    case PROTO_CMD_REPLACE:
        ok = mop_send(op, op->to, on_client_reply, data, dlen,
                      "ms %.*s %zu F%u T%lld M%c", kl, k, dlen, op->flags,
                      (long long)op->exptime,
                      op->cmd == PROTO_CMD_SET ? 'S' : op->cmd == PROTO_CMD_ADD ? 'E' : 'R');
        break;
    case PROTO_CMD_APPEND:
    case PROTO_CMD_PREPEND:
        ok = mop_send(op, op->to, on_client_reply, data, dlen, "ms %.*s %zu M%c", kl,
                      k, dlen, op->cmd == PROTO_CMD_APPEND ? 'A' : 'P');
        break;
    case PROTO_CMD_CAS:
        ok = mop_send(op, op->to, on_client_reply, data, dlen,
                      "ms %.*s %zu F%u T%lld C%llu", kl, k, dlen, op->flags,
                      (long long)op->exptime, (unsigned long long)op->cas);
        break;
    case PROTO_CMD_DELETE:
        op->waiting = 2;
        ok = mop_send(op, op->to, on_client_reply, NULL, 0, "md %.*s", kl, k);
        if (ok && !mop_send(op, op->from, on_client_reply, NULL, 0, "md %.*s", kl, k)) {
            op->waiting = 1;    /* the old owner is unreachable: ring B decides */
        }
        break;
    default:
        ok = false;
        break;
    }
    if (!ok) {
        struct mreply fail = { .status = MREPLY_FAIL, .error = "cannot reach backend" };
        op->waiting = 1;
        on_client_reply(op, &fail);
    }
}

static void mop_start(struct mop *op)
{
    if (op->f != NULL && (op->cmd == PROTO_CMD_SET || op->cmd == PROTO_CMD_DELETE)) {
        client_run(op);     /* set overwrites, delete deletes both: no move */
    } else {
        move_fetch(op);
    }
}

static void mop_next(struct mkey *k)
{
    mop_start(TAILQ_FIRST(&k->ops));
}

/* Queue an operation on its key; it starts now if the key is idle. */
static bool mop_enqueue(struct mig *m, struct mop *op, const char *key, size_t len)
{
    struct mkey *k = key_get(m, key, len);

    if (k == NULL) {
        return false;
    }
    op->m = m;
    op->k = k;
    m->nops++;
    bool idle = TAILQ_EMPTY(&k->ops);
    TAILQ_INSERT_TAIL(&k->ops, op, link);
    if (idle && m->drained) {
        mop_start(op);      /* else check_drained starts it */
    }
    return true;
}

void mig_submit(struct mig *m, struct frag *f, const struct proto_req *req,
                const char *key, size_t keylen, uint32_t key_index,
                struct evbuffer *data)
{
    struct mop *op = calloc(1, sizeof(*op));
    uint32_t h = ring_key_hash(m->to, key, keylen);

    if (op == NULL) {
        if (data != NULL) {
            evbuffer_free(data);
        }
        frag_fail(f, "SERVER_ERROR out of memory");
        return;
    }
    op->arc = -1;
    op->f = f;
    op->cmd = req->cmd;
    op->flags = req->flags;
    op->exptime = req->exptime;
    op->bytes = req->bytes;
    op->cas = req->cas;
    op->delta = req->delta;
    op->key_index = key_index;
    op->data = data;
    op->from = m->from_be[ring_server_of(m->from, ring_key_hash(m->from, key, keylen))];
    op->to = m->to_be[ring_server_of(m->to, h)];
    if (!mop_enqueue(m, op, key, keylen)) {
        mop_free(op);
        frag_fail(f, "SERVER_ERROR out of memory");
    }
}

/* --- bulk moving ------------------------------------------------------------------- */

static void arc_free_seen(struct mig_arc *a)
{
    for (uint32_t i = 0; i < a->nseen; i++) {
        free(a->seen[i]);
    }
    free(a->seen);
    a->seen = NULL;
    a->nseen = 0;
}

static void arc_done(struct mig *m, uint32_t i)
{
    struct mig_arc *a = &m->arcs[i];

    if (a->done) {
        return;
    }
    a->done = true;
    arc_free_seen(a);
    m->arcs_done++;
    mig_redis(m, NULL, NULL, "SADD %s:migration:done:%s %u-%u", m->prefix, m->fp_to,
         m->diff.arcs[i].first, m->diff.arcs[i].last);
    if (m->arcs_done == m->diff.narcs) {
        mig_finish(m);
    }
}

struct list_ctx {
    struct mig *m;
    uint32_t arc;
    uint32_t batch;
};

static void on_list(redisAsyncContext *ac, void *r, void *priv)
{
    struct list_ctx *lc = priv;
    struct mig *m = lc->m;
    redisReply *reply = r;
    uint32_t i = lc->arc, batch = lc->batch;

    free(lc);
    if (ac->data == NULL || m->arcs == NULL || i >= m->diff.narcs) {
        return;
    }
    struct mig_arc *a = &m->arcs[i];
    a->listing = false;
    m->reserved -= batch < m->reserved ? batch : m->reserved;
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY) {
        return;     /* retried by the next pump */
    }
    const struct ring_arc *arc = &m->diff.arcs[i];
    size_t n = reply->elements / 2;
    uint32_t prev_seen = a->nseen;
    uint32_t last_score = a->cursor;
    char **seen = NULL;
    uint32_t nseen = 0;

    for (size_t j = 0; j < n; j++) {
        const redisReply *mem = reply->element[2 * j];
        uint32_t score = (uint32_t)strtoull(reply->element[2 * j + 1]->str, NULL, 10);
        bool taken = false;
        for (uint32_t s = 0; score == a->cursor && s < a->nseen; s++) {
            taken |= strlen(a->seen[s]) == mem->len &&
                     memcmp(a->seen[s], mem->str, mem->len) == 0;
        }
        if (score != last_score) {
            for (uint32_t s = 0; s < nseen; s++) {
                free(seen[s]);
            }
            nseen = 0;
            last_score = score;
        }
        char **ns = realloc(seen, (nseen + 1) * sizeof(*seen));
        if (ns != NULL) {
            seen = ns;
            seen[nseen++] = strndup(mem->str, mem->len);
        }
        if (taken) {
            continue;
        }
        if (!arc->moves) {
            /* Same server, another v-node: only the index entry moves. */
            char from[1024], to[1024];
            idx_vnode_key(m->prefix, m->from, arc->from, from, sizeof(from));
            idx_vnode_key(m->prefix, m->to, arc->to, to, sizeof(to));
            mig_redis(m, NULL, NULL, "ZADD %s %u %b", to, score, mem->str, (size_t)mem->len);
            mig_redis(m, NULL, NULL, "ZREM %s %b", from, mem->str, (size_t)mem->len);
            m->index_moved++;
            continue;
        }
        struct mop *op = calloc(1, sizeof(*op));
        if (op == NULL) {
            break;
        }
        op->arc = (int32_t)i;
        op->from = m->from_be[m->from->points[arc->from].server];
        op->to = m->to_be[m->to->points[arc->to].server];
        a->inflight++;
        m->inflight++;
        m->tokens -= 1;
        if (!mop_enqueue(m, op, mem->str, mem->len)) {
            a->inflight--;
            m->inflight--;
            mop_free(op);
        }
    }
    arc_free_seen(a);
    a->seen = seen;
    a->nseen = nseen;
    a->cursor = last_score;
    a->exhausted = n < batch + prev_seen;
    bulk_pump(m);
}

static uint32_t inflight_limit(const struct mig *m)
{
    return (uint32_t)m->p->conf->migration.inflight * (m->from->nservers ? m->from->nservers : 1);
}

/* Start as much work as the rate and the in-flight bound allow. */
static void bulk_pump(struct mig *m)
{
    if (!m->lease || !m->others_ready || !m->drained || m->arcs == NULL ||
        m->finishing || m->closing) {
        return;
    }
    bool limited = m->p->conf->migration.rate > 0;
    uint32_t limit = inflight_limit(m);
    for (uint32_t i = m->cur_arc; i < m->diff.narcs; i++) {
        struct mig_arc *a = &m->arcs[i];
        if (a->done) {
            if (i == m->cur_arc) {
                m->cur_arc++;
            }
            continue;
        }
        if (a->listing || a->inflight > 0) {
            continue;   /* this arc's batch is under way */
        }
        if (a->exhausted && a->failed > 0 && a->passes + 1 < MIG_ARC_PASSES) {
            /* Moves failed (a server unreachable?): list what is left again
             * after a pause; moved keys have left the set already. */
            a->passes++;
            a->failed = 0;
            a->exhausted = false;
            a->cursor = m->diff.arcs[i].first;
            arc_free_seen(a);
            a->retry_at = now_ms(m) + MIG_ARC_RETRY_MS;
        }
        if (a->exhausted) {
            if (a->failed > 0) {
                log_warn("migration", "%s: %u keys of arc %u-%u could not be moved "
                         "after %d passes; giving up on them", m->p->name, a->failed,
                         m->diff.arcs[i].first, m->diff.arcs[i].last, MIG_ARC_PASSES);
            }
            arc_done(m, i);
            if (m->finishing) {
                return;
            }
            continue;
        }
        if (now_ms(m) < a->retry_at) {
            continue;
        }
        if ((limited && m->tokens < 1) || m->inflight + m->reserved >= limit ||
            !m->rc_up) {
            return;
        }
        struct list_ctx *lc = malloc(sizeof(*lc));
        if (lc == NULL) {
            return;
        }
        char from[1024];
        uint32_t batch = limit - m->inflight - m->reserved;
        if (batch > MIG_LIST_BATCH) {
            batch = MIG_LIST_BATCH;
        }
        idx_vnode_key(m->prefix, m->from, m->diff.arcs[i].from, from, sizeof(from));
        lc->m = m;
        lc->arc = i;
        lc->batch = batch;
        a->listing = true;
        m->reserved += batch;
        redisAsyncCommand(m->rc, on_list, lc,
                          "ZRANGEBYSCORE %s %u %u WITHSCORES LIMIT 0 %u", from,
                          a->cursor > m->diff.arcs[i].first ? a->cursor : m->diff.arcs[i].first,
                          m->diff.arcs[i].last, batch + a->nseen);
    }
}

/* --- lifecycle of a migration ------------------------------------------------------- */

static void mig_clear(struct mig *m)
{
    for (uint32_t i = 0; m->arcs != NULL && i < m->diff.narcs; i++) {
        arc_free_seen(&m->arcs[i]);
    }
    free(m->arcs);
    m->arcs = NULL;
    ring_diff_free(&m->diff);
    ring_unref(m->from);
    m->from = NULL;
    ring_unref(m->to);
    m->to = NULL;
    free(m->from_be);
    m->from_be = NULL;
    m->to_be = NULL;     /* owned by the pool */
    free(m->drain_mark);
    m->drain_mark = NULL;
    m->lease = m->others_ready = m->drained = m->finishing = false;
    m->arcs_done = m->cur_arc = m->inflight = m->reserved = 0;
}

/* A ring change that arrived while busy: the newest one wins. */
static void apply_pending(struct mig *m)
{
    struct ring *next = m->pending;
    char err[256];

    if (next == NULL || m->state != MIG_IDLE) {
        return;
    }
    m->pending = NULL;
    log_notice("migration", "%s: applying the ring change that arrived meanwhile",
               m->p->name);
    if (mig_change_ring(m, next, err, sizeof(err)) != 0) {
        log_error("migration", "%s: %s", m->p->name, err);
    }
    ring_unref(next);
}

/* The data now obeys `to`: local wrap-up, then any queued ring change. */
static void mig_end(struct mig *m, const char *how)
{
    uint64_t secs = (now_ms(m) - m->started_ms) / 1000;

    if (m->nops > 0) {
        /* Client commands still run on the old and new owners: the rings
         * and backends they use must stay until the last one is done. */
        m->end_how = how;
        return;
    }
    m->end_how = NULL;
    log_notice("migration", "%s: done (%s) in %llus: %llu keys moved, %llu already "
               "newer on the new owner, %llu stale, %llu failed, %llu index entries "
               "moved; the data obeys ring epoch %llu", m->p->name, how,
               (unsigned long long)secs, (unsigned long long)m->keys_moved,
               (unsigned long long)m->keys_skipped, (unsigned long long)m->keys_stale,
               (unsigned long long)m->keys_failed, (unsigned long long)m->index_moved,
               (unsigned long long)m->epoch);
    mig_clear(m);
    m->state = MIG_IDLE;
    memcpy(m->fp_from, m->fp_to, sizeof(m->fp_from));
    pool_retire_backends(m->p);
    apply_pending(m);
}

static void on_finish_written(redisAsyncContext *ac, void *r, void *priv)
{
    struct mig *m = priv;
    redisReply *reply = r;

    if (ac->data == NULL || m->to == NULL) {
        return;
    }
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        log_error("migration", "%s: could not record the new ring; will retry",
                  m->p->name);
        return;
    }
    mig_end(m, "moved by this proxy");
}

/* Every arc is done: record ring B as where the data lives, next epoch. */
static void mig_finish(struct mig *m)
{
    char lock[512];

    m->finishing = true;
    m->epoch++;
    /* Sets of v-nodes that ring B does not have hold only leftovers now. */
    for (uint32_t i = 0; i < m->from->npoints; i++) {
        const struct ring_point *pt = &m->from->points[i];
        int s = ring_server_index(m->to, m->from->servers[pt->server].identity);
        bool kept = false;
        if (s >= 0) {
            uint32_t j = ring_find(m->to, pt->value);
            kept = m->to->points[j].value == pt->value &&
                   m->to->points[j].server == (uint32_t)s;
        }
        if (!kept) {
            char vnode[1024];
            idx_vnode_key(m->prefix, m->from, i, vnode, sizeof(vnode));
            mig_redis(m, NULL, NULL, "UNLINK %s", vnode);
        }
    }
    snprintf(lock, sizeof(lock), "%s:migration:lock", m->prefix);
    mig_redis(m, NULL, NULL, "DEL %s:migration %s:migration:done:%s", m->prefix, m->prefix,
         m->fp_to);
    mig_redis(m, NULL, NULL, "EVAL %s 1 %s %s",
         "if redis.call('get', KEYS[1]) == ARGV[1] then "
         "return redis.call('del', KEYS[1]) end return 0", lock, m->id);
    write_ring_record(m, m->to, m->epoch, on_finish_written);
}

int mig_change_ring(struct mig *m, struct ring *to, char *err, size_t errlen)
{
    struct pool *p = m->p;
    char fp[33];

    ringrec_fingerprint(to, fp);
    if (m->state != MIG_IDLE) {
        if (m->state == MIG_STARTING || strcmp(fp, m->fp_to) != 0) {
            ring_unref(m->pending);
            m->pending = ring_ref(to);
            snprintf(err, errlen, "a migration is under way; the new ring is "
                     "applied when it ends");
            return -1;
        }
        return 0;   /* already moving to this ring */
    }
    const struct ring *from = p->ring;
    if (strcmp(fp, m->fp_from) == 0) {
        return 0;
    }
    if (from->hash != to->hash || from->has_tag != to->has_tag ||
        (from->has_tag && memcmp(from->tag, to->tag, 2) != 0)) {
        snprintf(err, errlen, "changing hash or hash_tag of an indexed pool would "
                 "move every key; not supported");
        return -1;
    }
    struct backend **to_be = pool_ring_backends(p, to, err, errlen);
    struct backend **from_be = to_be ? pool_ring_backends(p, from, err, errlen) : NULL;
    if (from_be == NULL) {
        free(to_be);
        return -1;
    }
    m->from = ring_ref((struct ring *)from);
    m->to = ring_ref(to);
    m->from_be = from_be;
    memcpy(m->fp_to, fp, sizeof(fp));
    if (ring_diff(m->from, m->to, &m->diff) != 0 ||
        (m->arcs = calloc(m->diff.narcs ? m->diff.narcs : 1, sizeof(*m->arcs))) == NULL) {
        snprintf(err, errlen, "out of memory");
        free(to_be);
        mig_clear(m);
        return -1;
    }
    /* Requests already sent by the old ring must land before keys move. */
    m->ndrain = p->nbackends;
    m->drain_mark = calloc(p->nbackends ? p->nbackends : 1, sizeof(*m->drain_mark));
    for (uint32_t i = 0; m->drain_mark && i < p->nbackends; i++) {
        m->drain_mark[i] = p->backends[i]->stats[STAT_BE_requests];
    }
    m->drained = false;
    pool_set_ring(p, ring_ref(to), to_be);
    m->to_be = to_be;
    idx_set_ring(p->idx, to);
    m->state = MIG_WAITING;
    m->started_ms = m->last_log_ms = now_ms(m);
    m->keys_moved = m->keys_stale = m->keys_skipped = m->keys_failed = 0;
    m->keys_retried = m->client_moves = m->index_moved = m->moved_at_last_log = 0;
    m->tokens = 0;
    m->last_refill = now_ms(m);
    log_notice("migration", "%s: ring %.8s -> %.8s: %.3f%% of keys change server, "
               "%.3f%% only v-node, %zu arcs; serving with fallback to the old owners",
               p->name, m->fp_from, m->fp_to, 100.0 * (double)m->diff.moved / RING_SPACE,
               100.0 * (double)m->diff.reindexed / RING_SPACE, m->diff.narcs);
    if (m->diff.narcs == 0) {
        /* Nothing moves (e.g. an address change): record the ring at once. */
        m->lease = m->others_ready = m->drained = true;
        mig_finish(m);
        return 0;
    }
    /* Record the target (so others can finish it) and learn what is done. */
    mig_redis(m, NULL, NULL, "HSETNX %s:migration to %s", m->prefix, m->fp_to);
    mig_redis(m, NULL, NULL, "HSETNX %s:migration from %s", m->prefix, m->fp_from);
    m->next_heartbeat = 0;      /* announce it and try the lease on the next tick */
    return 0;
}

/* --- Redis: connection, ring record, heartbeat, lease ------------------------------- */

static void on_done_arcs(redisAsyncContext *ac, void *r, void *priv)
{
    struct mig *m = priv;
    redisReply *reply = r;

    if (ac->data == NULL || reply == NULL || reply->type != REDIS_REPLY_ARRAY ||
        m->arcs == NULL) {
        return;
    }
    for (size_t j = 0; j < reply->elements; j++) {
        unsigned first, last;
        if (sscanf(reply->element[j]->str, "%u-%u", &first, &last) != 2) {
            continue;
        }
        int32_t a = arc_of(m, first);
        if (a >= 0 && m->diff.arcs[a].first == first && m->diff.arcs[a].last == last &&
            !m->arcs[a].done) {
            m->arcs[a].done = true;
            m->arcs_done++;
        }
    }
}

static void on_ring_poll(redisAsyncContext *ac, void *r, void *priv)
{
    struct mig *m = priv;
    redisReply *reply = r;
    uint64_t epoch = 0;

    if (ac->data == NULL || reply == NULL || reply->type != REDIS_REPLY_ARRAY ||
        m->to == NULL || m->lease) {
        return;
    }
    struct ring *rec = ring_from_reply(reply, &epoch);
    if (rec == NULL) {
        return;
    }
    char fp[33];
    ringrec_fingerprint(rec, fp);
    ring_unref(rec);
    if (strcmp(fp, m->fp_to) == 0) {
        m->epoch = epoch;
        mig_end(m, "moved by another proxy");
    }
}

static void on_lease(redisAsyncContext *ac, void *r, void *priv)
{
    struct mig *m = priv;
    redisReply *reply = r;

    if (ac->data == NULL || reply == NULL || m->to == NULL) {
        return;
    }
    bool held = reply->type == REDIS_REPLY_STATUS ||
                (reply->type == REDIS_REPLY_INTEGER && reply->integer == 1);
    if (held && !m->lease) {
        log_notice("migration", "%s: this proxy holds the migration lease", m->p->name);
        m->state = MIG_MOVING;
        /* Resume: arcs another holder finished need no work. */
        mig_redis(m, on_done_arcs, m, "SMEMBERS %s:migration:done:%s", m->prefix, m->fp_to);
    } else if (!held && m->lease) {
        log_warn("migration", "%s: lost the migration lease", m->p->name);
        m->state = MIG_FOLLOWING;
    } else if (!held) {
        m->state = MIG_FOLLOWING;
    }
    m->lease = held;
}

static void on_proxies(redisAsyncContext *ac, void *r, void *priv)
{
    struct mig *m = priv;
    redisReply *reply = r;
    char waiting[512] = "";
    size_t used = 0;
    bool ready = true;

    if (ac->data == NULL || reply == NULL || reply->type != REDIS_REPLY_ARRAY ||
        m->to == NULL) {
        return;
    }
    uint64_t now = (uint64_t)time(NULL) * 1000;
    for (size_t j = 0; j + 1 < reply->elements; j += 2) {
        char fp[64] = "";
        unsigned long long at = 0;
        sscanf(reply->element[j + 1]->str, "%63s %llu", fp, &at);
        if (at + MIG_PROXY_LIVE_MS < now) {
            if (at + 60 * 1000 < now) {
                mig_redis(m, NULL, NULL, "HDEL %s:proxies %s", m->prefix,
                     reply->element[j]->str);
            }
            continue;   /* not live: it will start on the recorded ring */
        }
        if (strcmp(fp, m->fp_to) != 0) {
            ready = false;
            if (used < sizeof(waiting) - 64) {
                used += (size_t)snprintf(waiting + used, sizeof(waiting) - used, "%s%s",
                                         used ? ", " : "", reply->element[j]->str);
            }
        }
    }
    if (!ready && m->lease && now_ms(m) >= m->next_wait_log) {
        m->next_wait_log = now_ms(m) + MIG_PROGRESS_LOG_MS;
        log_notice("migration", "%s: waiting for proxies to serve the new ring: %s",
                   m->p->name, waiting);
    }
    m->others_ready = ready;
    bulk_pump(m);
}

static void heartbeat(struct mig *m)
{
    const char *fp = m->to != NULL && m->drained ? m->fp_to : m->fp_from;
    char lock[512], beat[64];

    /* One argument "<fingerprint> <unix ms>": hiredis splits a format on
     * spaces, so the value is formatted first. */
    snprintf(beat, sizeof(beat), "%s %llu", fp, (unsigned long long)time(NULL) * 1000);
    mig_redis(m, NULL, NULL, "HSET %s:proxies %s %s", m->prefix, m->id, beat);
    if (m->to == NULL) {
        return;
    }
    snprintf(lock, sizeof(lock), "%s:migration:lock", m->prefix);
    /* Every migrating proxy watches whether all serve the new ring. */
    mig_redis(m, on_proxies, m, "HGETALL %s:proxies", m->prefix);
    /* Take the lease if it is free, renew it if it is ours (also when it
     * survived a Redis restart that our connection did not). */
    mig_redis(m, on_lease, m, "EVAL %s 1 %s %s %d",
              "local v = redis.call('get', KEYS[1]) "
              "if v == ARGV[1] then redis.call('pexpire', KEYS[1], ARGV[2]) return 1 end "
              "if not v then redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2]) "
              "return 1 end return 0", lock, m->id, MIG_LEASE_MS);
    if (m->lease) {
        mig_redis(m, NULL, NULL, "HSET %s:migration holder %s arcs_total %llu arcs_done %u "
             "keys_moved %llu keys_stale %llu keys_skipped %llu keys_failed %llu "
             "started %llu updated %llu", m->prefix, m->id, (unsigned long long)m->diff.narcs, m->arcs_done,
             (unsigned long long)m->keys_moved, (unsigned long long)m->keys_stale,
             (unsigned long long)m->keys_skipped, (unsigned long long)m->keys_failed,
             (unsigned long long)m->started_ms / 1000,
             (unsigned long long)time(NULL));
    } else {
        mig_redis(m, on_done_arcs, m, "SMEMBERS %s:migration:done:%s", m->prefix, m->fp_to);
        mig_redis(m, on_ring_poll, m, "HGETALL %s:ring", m->prefix);
    }
}

/* The ring record at start: write ours if none; migrate if it differs. */
static void on_ring_record(redisAsyncContext *ac, void *r, void *priv)
{
    struct mig *m = priv;
    redisReply *reply = r;
    struct pool *p = m->p;
    uint64_t epoch = 1;

    if (ac->data == NULL || reply == NULL || m->state != MIG_STARTING) {
        return;
    }
    m->state = MIG_IDLE;
    bool present = reply->type == REDIS_REPLY_ARRAY && reply->elements > 0;
    struct ring *rec = present ? ring_from_reply(reply, &epoch) : NULL;
    if (present && rec == NULL) {
        /* Never overwrite the authority on where data lives. */
        log_error("migration", "%s: cannot read the ring record %s:ring; serving "
                  "by the config's ring without migrating; fix or delete the record",
                  p->name, m->prefix);
    } else if (rec == NULL) {
        m->epoch = 1;
        write_ring_record(m, p->ring, 1, NULL);
        log_notice("migration", "%s: recorded ring %.8s (epoch 1) in %s:ring",
                   p->name, m->fp_from, m->prefix);
    } else {
        char fp[33], err[256];
        ringrec_fingerprint(rec, fp);
        m->epoch = epoch;
        if (strcmp(fp, m->fp_from) == 0) {
            log_info("migration", "%s: the data obeys this config's ring (epoch %llu)",
                     p->name, (unsigned long long)epoch);
        } else {
            /* The data obeys the recorded ring: move from it to ours. */
            struct ring *ours = ring_ref(p->ring);
            struct backend **rec_be = pool_ring_backends(p, rec, err, sizeof(err));
            if (rec_be == NULL) {
                log_error("migration", "%s: %s", p->name, err);
            } else {
                log_notice("migration", "%s: the data obeys ring %.8s (epoch %llu), "
                           "not this config's: migrating", p->name, fp,
                           (unsigned long long)epoch);
                pool_set_ring(p, ring_ref(rec), rec_be);
                memcpy(m->fp_from, fp, sizeof(fp));
                if (mig_change_ring(m, ours, err, sizeof(err)) != 0) {
                    log_error("migration", "%s: %s", p->name, err);
                }
            }
            ring_unref(ours);
        }
        ring_unref(rec);
    }
    if (m->ready != NULL) {
        void (*ready)(struct pool *) = m->ready;
        m->ready = NULL;
        ready(p);
    }
    apply_pending(m);
}

/* After a reconnect: is the ring record (and so the index) still there? */
static void on_ring_check(redisAsyncContext *ac, void *r, void *priv)
{
    struct mig *m = priv;
    redisReply *reply = r;

    if (ac->data == NULL || reply == NULL || reply->type != REDIS_REPLY_ARRAY ||
        reply->elements > 0) {
        return;
    }
    log_error("migration", "%s: Redis came back without %s:ring: it lost the index "
              "(run Redis with persistence). Keys stored before now are not "
              "indexed, so a resize could not move them until they are written "
              "again%s", m->p->name, m->prefix,
              m->to != NULL ? "; keys of this migration not moved yet will miss "
              "unless clients touch them before it ends" : "");
    if (m->to == NULL) {
        write_ring_record(m, m->p->ring, m->epoch, NULL);
    }
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    mig_connect(arg);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct mig *m = ac->data;

    if (m == NULL) {
        return;
    }
    if (status != REDIS_OK) {
        m->rc = NULL;
        m->rc_up = false;
        struct timeval tv = { 1, 0 };
        event_add(m->retry, &tv);
        return;
    }
    m->rc_up = true;
    if (m->state != MIG_STARTING) {
        /* A Redis that comes back empty has lost the index: say so. */
        mig_redis(m, on_ring_check, m, "HGETALL %s:ring", m->prefix);
    }
    heartbeat(m);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct mig *m = ac->data;

    (void)status;
    if (m == NULL) {
        return;
    }
    log_warn("migration", "%s: lost Redis: %s", m->p->name, ac->errstr);
    m->rc = NULL;
    m->rc_up = false;
    if (m->lease) {
        m->lease = false;   /* it will expire; someone, maybe us, takes over */
        m->state = MIG_FOLLOWING;
    }
    for (uint32_t i = 0; m->arcs != NULL && i < m->diff.narcs; i++) {
        m->arcs[i].listing = false;
    }
    struct timeval tv = { 1, 0 };
    event_add(m->retry, &tv);
}

static void mig_connect(struct mig *m)
{
    const struct conf_index *ix = &m->p->conf->index;
    redisAsyncContext *ac = ix->redis.is_unix ? redisAsyncConnectUnix(ix->redis.host) :
                            redisAsyncConnect(ix->redis.host, ix->redis.port);

    if (ac == NULL || ac->err) {
        if (ac != NULL) {
            redisAsyncFree(ac);
        }
        struct timeval tv = { 1, 0 };
        event_add(m->retry, &tv);
        return;
    }
    ac->data = m;
    m->rc = ac;
    m->rc_up = true;    /* commands queue until the connect completes */
    redisLibeventAttach(ac, m->p->w->base);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    if (ix->password != NULL) {
        mig_redis(m, NULL, NULL, "AUTH %s", ix->password);
    }
    if (ix->db != 0) {
        mig_redis(m, NULL, NULL, "SELECT %lld", (long long)ix->db);
    }
    if (m->state == MIG_STARTING) {
        mig_redis(m, on_ring_record, m, "HGETALL %s:ring", m->prefix);
    }
}

struct mig *mig_new(struct pool *p, void (*ready)(struct pool *p))
{
    struct mig *m = calloc(1, sizeof(*m));
    char host[256] = "?";

    if (m == NULL) {
        return NULL;
    }
    gethostname(host, sizeof(host) - 1);
    struct timeval tv;
    gettimeofday(&tv, NULL);
    if (asprintf(&m->id, "%s:%ld:%04lx", host, (long)getpid(),
                 (unsigned long)(tv.tv_usec ^ (unsigned long)random()) & 0xffff) < 0 ||
        (m->prefix = strdup(p->conf->index.prefix)) == NULL ||
        (m->retry = evtimer_new(p->w->base, on_retry, m)) == NULL) {
        mig_free(m);
        return NULL;
    }
    m->p = p;
    m->ready = ready;
    m->state = MIG_STARTING;
    ringrec_fingerprint(p->ring, m->fp_from);
    m->ready_deadline = worker_now_ms(p->w) + MIG_READY_TIMEOUT_MS;
    mig_connect(m);
    return m;
}

void mig_free(struct mig *m)
{
    if (m == NULL) {
        return;
    }
    /* Fail the moves in flight while their operations still exist; with
     * `closing` set, their handlers send nothing new. */
    m->closing = true;
    for (uint32_t i = 0; i < m->p->nbackends; i++) {
        mconn_free(m->p->backends[i]->mc);
        m->p->backends[i]->mc = NULL;
    }
    if (m->rc != NULL) {
        m->rc->data = NULL;
        redisAsyncFree(m->rc);
    }
    /* Operations still queued complete their clients with an error. */
    for (uint32_t b = 0; b < MIG_BUCKETS; b++) {
        while (m->buckets[b] != NULL) {
            struct mkey *k = m->buckets[b];
            struct mop *op;
            m->buckets[b] = k->next;
            while ((op = TAILQ_FIRST(&k->ops)) != NULL) {
                TAILQ_REMOVE(&k->ops, op, link);
                if (op->f != NULL) {
                    frag_fail(op->f, BACKEND_ERR_LOST);
                }
                mop_free(op);
            }
            free(k);
        }
    }
    mig_clear(m);
    ring_unref(m->pending);
    if (m->retry != NULL) {
        event_free(m->retry);
    }
    free(m->prefix);
    free(m->id);
    free(m);
}

bool mig_active(const struct mig *m)
{
    return m != NULL && m->to != NULL;
}

enum mig_state mig_get_state(const struct mig *m)
{
    return m->state;
}

bool mig_uses_backend(const struct mig *m, const struct backend *be)
{
    for (uint32_t i = 0; m->from_be != NULL && i < m->from->nservers; i++) {
        if (m->from_be[i] == be) {
            return true;
        }
    }
    return false;
}

static void check_drained(struct mig *m)
{
    struct pool *p = m->p;

    for (uint32_t i = 0; i < m->ndrain && i < p->nbackends; i++) {
        const struct backend *be = p->backends[i];
        if (be->stats[STAT_BE_requests] - be->stats[STAT_BE_inflight] < m->drain_mark[i]) {
            return;
        }
    }
    m->drained = true;
    m->next_heartbeat = 0;      /* tell the others at once */
    free(m->drain_mark);
    m->drain_mark = NULL;
    log_info("migration", "%s: requests routed by the old ring have all landed",
             p->name);
    /* Commands that arrived meanwhile waited in their keys' queues. */
    for (uint32_t b = 0; b < MIG_BUCKETS; b++) {
        for (struct mkey *k = m->buckets[b], *next; k != NULL; k = next) {
            next = k->next;     /* starting may finish and drop k */
            mop_start(TAILQ_FIRST(&k->ops));
        }
    }
}

void mig_tick(struct mig *m, uint64_t now)
{
    if (m == NULL) {
        return;
    }
    if (m->ready != NULL && now >= m->ready_deadline) {
        log_warn("migration", "%s: Redis did not say which ring the data obeys within "
                 "%d ms; serving by the config's ring", m->p->name, MIG_READY_TIMEOUT_MS);
        void (*ready)(struct pool *) = m->ready;
        m->ready = NULL;
        ready(m->p);
    }
    if (m->to != NULL && !m->drained) {
        check_drained(m);
    }
    if (now >= m->next_heartbeat) {
        m->next_heartbeat = now + MIG_HEARTBEAT_MS;
        heartbeat(m);
    }
    if (m->to == NULL) {
        return;
    }
    int64_t rate = m->p->conf->migration.rate;
    if (rate > 0) {
        m->tokens += (double)rate * (double)(now - m->last_refill) / 1000.0;
        if (m->tokens > (double)rate) {
            m->tokens = (double)rate;   /* at most a second's burst */
        }
    }
    m->last_refill = now;
    if (now >= m->next_progress_log) {
        m->next_progress_log = now + MIG_PROGRESS_LOG_MS;
        double secs = (double)(now - m->last_log_ms) / 1000.0;
        double kps = secs > 0 ? (double)(m->keys_moved - m->moved_at_last_log) / secs : 0;
        m->moved_at_last_log = m->keys_moved;
        m->last_log_ms = now;
        m->last_rate = kps;
        log_notice("migration", "%s: %s, %u/%zu arcs done, %llu keys moved (%.0f/s), "
                   "%llu stale, %llu failed", m->p->name, mig_state_names[m->state],
                   m->arcs_done, m->diff.narcs, (unsigned long long)m->keys_moved, kps,
                   (unsigned long long)m->keys_stale, (unsigned long long)m->keys_failed);
    }
    bulk_pump(m);
}

void mig_progress(const struct mig *m, struct mig_progress *out)
{
    memset(out, 0, sizeof(*out));
    out->state = m->state;
    out->epoch = m->epoch;
    out->lease = m->lease;
    out->pending = m->pending != NULL;
    memcpy(out->from, m->fp_from, sizeof(out->from));
    if (m->to != NULL) {
        memcpy(out->to, m->fp_to, sizeof(out->to));
        out->arcs_total = m->diff.narcs;
        out->moved_fraction = (double)m->diff.moved / RING_SPACE;
        out->elapsed_sec = (double)(worker_now_ms(m->p->w) - m->started_ms) / 1000.0;
    }
    out->arcs_done = m->arcs_done;
    out->keys_moved = m->keys_moved;
    out->keys_skipped = m->keys_skipped;
    out->keys_stale = m->keys_stale;
    out->keys_failed = m->keys_failed;
    out->keys_retried = m->keys_retried;
    out->client_moves = m->client_moves;
    out->index_moved = m->index_moved;
    out->keys_per_sec = m->last_rate;
}

void mig_stats(const struct mig *m, struct evbuffer *out)
{
    evbuffer_add_printf(out, "STAT migration:state %s\r\n", mig_state_names[m->state]);
    evbuffer_add_printf(out, "STAT migration:epoch %llu\r\n", (unsigned long long)m->epoch);
    evbuffer_add_printf(out, "STAT migration:lease %d\r\n", m->lease ? 1 : 0);
    evbuffer_add_printf(out, "STAT migration:arcs_total %zu\r\n", m->to ? m->diff.narcs : 0);
    evbuffer_add_printf(out, "STAT migration:arcs_done %u\r\n", m->arcs_done);
    evbuffer_add_printf(out, "STAT migration:keys_moved %llu\r\n", (unsigned long long)m->keys_moved);
    evbuffer_add_printf(out, "STAT migration:keys_skipped %llu\r\n", (unsigned long long)m->keys_skipped);
    evbuffer_add_printf(out, "STAT migration:keys_stale %llu\r\n", (unsigned long long)m->keys_stale);
    evbuffer_add_printf(out, "STAT migration:keys_failed %llu\r\n", (unsigned long long)m->keys_failed);
    evbuffer_add_printf(out, "STAT migration:keys_retried %llu\r\n", (unsigned long long)m->keys_retried);
    evbuffer_add_printf(out, "STAT migration:client_moves %llu\r\n", (unsigned long long)m->client_moves);
    evbuffer_add_printf(out, "STAT migration:index_moved %llu\r\n", (unsigned long long)m->index_moved);
    evbuffer_add_printf(out, "STAT migration:pending_change %d\r\n", m->pending ? 1 : 0);
}
