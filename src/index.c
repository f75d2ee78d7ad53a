/*
 * index.c — the Redis key index writer of one pool (docs/ARCHITECTURE.md, "The index").
 *
 * Design notes
 * - The request path only appends a record (op, v-node, score, key) to an
 *   in-memory queue; idx_flush, called once per loop turn, turns the queue
 *   into pipelined ZADD/ZREM commands on a hiredis async connection that
 *   lives on the same event loop. Nothing ever waits for Redis.
 * - Records for the same v-node and op in one turn share one command. Two
 *   records for the same key with different ops must keep their order, so a
 *   conflict ends the current group set and starts a new one.
 * - A direct-mapped filter of 64-bit fingerprints (key + v-node) remembers
 *   keys known to be indexed, so a key stored again and again costs Redis
 *   nothing. A delete clears the key's slot; anything that may have lost
 *   index writes (a Redis error, a lost connection: Redis may have restarted
 *   empty) clears the whole filter.
 * - The queue is bounded (queue_max, counting writes sent but unanswered):
 *   past it, writes are dropped and counted, never buffered without limit.
 * - A flush_all empties every set of the pool: a batch of UNLINKs. It counts
 *   in that bound as one write while pending (flush_pending) and one per
 *   UNLINK while unanswered (flush_unanswered). At most one flush waits: a
 *   flush while one waits, or while the last one's UNLINKs are unanswered,
 *   is coalesced into the one that waits (it would delete the same sets);
 *   writes queued after it wait behind it, so they keep their order. A
 *   stopped Redis thus holds one batch of UNLINKs, not one per flush_all.
 */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libevent.h>

#include "index.h"
#include "log.h"

#define IDX_FILTER_SLOTS (1u << 20)     /* 8 MiB of fingerprints per indexed pool */
#define IDX_BACKOFF_MIN_MS 100
#define IDX_BACKOFF_MAX_MS 5000

#define IDX_STATE_NAME(e, name) [IDX_##e] = name,
const char *const idx_state_names[IDX_STATE_COUNT] = { IDX_STATE_CODEC(IDX_STATE_NAME) };
#undef IDX_STATE_NAME

#define IDX_STAT_DESC(n, k, h) [IDX_STAT_##n] = { #n, #k, h },
const struct idx_stat_desc idx_stat_desc[IDX_STAT_COUNT] = { IDX_STATS_CODEC(IDX_STAT_DESC) };
#undef IDX_STAT_DESC

enum idx_op_type { IDX_OP_ADD, IDX_OP_REM };

/* A queued write, followed in the arena by its key bytes. */
struct idx_op {
    uint8_t type;
    uint16_t keylen;
    uint32_t point;
    uint32_t score;
    uint64_t fp;
    size_t next;                /* flush: arena offset of its group's next record */
};

/* Records of one v-node and op type, in one flush. */
struct idx_group {
    uint32_t point;
    uint8_t type;
    uint32_t count;
    size_t first, last;         /* arena offsets of the records */
};

struct idx {
    struct event_base *base;
    char *pool;
    struct conf_index conf;     /* copies of the strings below */
    struct ring *ring;
    char **vnode;               /* set name per ring point */
    size_t *vnode_len;
    redisAsyncContext *ac;
    enum idx_state state;
    struct event *retry;
    uint32_t backoff_ms;
    uint64_t *filter;
    bool shared;                /* other proxies write the prefix: no filter */
    /* the queue: packed idx_op records (a group links them by `next`) */
    char *arena;
    size_t arena_len, arena_cap;
    uint32_t nqueued;
    bool flush_pending;         /* a flush_all's UNLINKs wait to be sent */
    uint32_t flush_unanswered;  /* UNLINKs sent, not yet answered */
    bool filter_used;           /* a slot may be set since the last flush */
    /* flush scratch */
    int32_t *group_of[2];       /* per point and op: group index, or -1 */
    struct idx_group *groups;
    size_t ngroups, groups_cap;
    uint64_t *batch_fp;         /* conflict table: fingerprint << 1 | op */
    size_t batch_cap;
    size_t *batch_used;         /* its slots in use, to clear just those */
    size_t nbatch_used;
    char *out;
    size_t out_len, out_cap;
    uint64_t stats[IDX_STAT_COUNT];
};

/* on_reply's privdata for an UNLINK of a flush (others: the write count). */
#define IDX_FLUSH_REPLY ((void *)UINTPTR_MAX)

static void idx_connect(struct idx *x);
static int idx_load_ring(struct idx *x, struct ring *ring);

/* --- small helpers -------------------------------------------------------- */

static uint64_t mix64(uint64_t h)
{
    h ^= h >> 33;
    h *= UINT64_C(0xff51afd7ed558ccd);
    h ^= h >> 33;
    h *= UINT64_C(0xc4ceb9fe1a85ec53);
    h ^= h >> 33;
    return h;
}

/*
 * 64 bits naming a key in a v-node. The key is hashed from a fixed basis and
 * the v-node mixed in afterwards: seeding FNV with the v-node let different
 * (key, v-node) pairs cancel out and collide.
 */
static uint64_t fingerprint(const char *key, size_t len, uint32_t point)
{
    uint64_t h = UINT64_C(0xcbf29ce484222325);

    for (size_t i = 0; i < len; i++) {
        h ^= (uint8_t)key[i];
        h *= UINT64_C(0x100000001b3);
    }
    h = mix64(h ^ (len << 56)) ^ mix64((uint64_t)point * UINT64_C(0x9e3779b97f4a7c15) + 1);
    return h | 1;   /* never 0: 0 marks an empty slot */
}

static int out_reserve(struct idx *x, size_t more)
{
    if (x->out_len + more <= x->out_cap) {
        return 0;
    }
    size_t cap = x->out_cap ? x->out_cap : 4096;
    while (cap < x->out_len + more) {
        cap *= 2;
    }
    char *p = realloc(x->out, cap);
    if (p == NULL) {
        return -ENOMEM;
    }
    x->out = p;
    x->out_cap = cap;
    return 0;
}

static void out_bulk(struct idx *x, const char *s, size_t len)
{
    char hdr[32];
    int n = snprintf(hdr, sizeof(hdr), "$%zu\r\n", len);

    if (out_reserve(x, (size_t)n + len + 2) != 0) {
        return;
    }
    memcpy(x->out + x->out_len, hdr, (size_t)n);
    memcpy(x->out + x->out_len + n, s, len);
    memcpy(x->out + x->out_len + n + len, "\r\n", 2);
    x->out_len += (size_t)n + len + 2;
}

static void out_array(struct idx *x, size_t n)
{
    char hdr[32];
    int len = snprintf(hdr, sizeof(hdr), "*%zu\r\n", n);

    if (out_reserve(x, (size_t)len) == 0) {
        memcpy(x->out + x->out_len, hdr, (size_t)len);
        x->out_len += (size_t)len;
    }
}

size_t idx_vnode_key(const char *prefix, const struct ring *r, uint32_t point,
                     char *buf, size_t len)
{
    int n = snprintf(buf, len, "%s:v:%s:%u", prefix,
                     r->servers[r->points[point].server].identity,
                     r->points[point].value);
    return n < 0 ? 0 : (size_t)n;
}

/* --- connection ----------------------------------------------------------- */

static void idx_lost_inflight(struct idx *x)
{
    /* Writes sent but unanswered are lost; the filter may now lie. */
    x->stats[IDX_STAT_dropped] += x->stats[IDX_STAT_inflight];
    x->stats[IDX_STAT_inflight] = 0;
    /* A lost flush is not sent again: stores after it (through any proxy)
     * would lose their entries (docs/ARCHITECTURE.md, I7). Entries of
     * flushed keys only cost the mover a look. */
    x->flush_unanswered = 0;
    x->flush_pending = false;
    x->stats[IDX_STAT_queued] = x->nqueued;
    memset(x->filter, 0, IDX_FILTER_SLOTS * sizeof(*x->filter));
}

static void idx_schedule_retry(struct idx *x)
{
    x->backoff_ms = x->backoff_ms ? x->backoff_ms * 2 : IDX_BACKOFF_MIN_MS;
    if (x->backoff_ms > IDX_BACKOFF_MAX_MS) {
        x->backoff_ms = IDX_BACKOFF_MAX_MS;
    }
    struct timeval tv = { x->backoff_ms / 1000, (x->backoff_ms % 1000) * 1000 };
    x->state = IDX_DISCONNECTED;
    event_add(x->retry, &tv);
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    idx_connect(arg);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct idx *x = ac->data;

    if (x == NULL) {
        return;     /* idx_free is tearing down */
    }
    x->ac = NULL;
    x->stats[IDX_STAT_disconnects]++;
    log_warn("index", "%s: lost Redis %s: %s; index writes queue (up to %lld) "
             "until it is back", x->pool, x->conf.redis.text,
             status == REDIS_OK ? "closed" : ac->errstr, (long long)x->conf.queue_max);
    idx_lost_inflight(x);
    idx_schedule_retry(x);
}

static void on_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    struct idx *x = ac->data;
    redisReply *reply = r;
    uint64_t n = (uint64_t)(uintptr_t)privdata;

    if (x == NULL || reply == NULL) {
        return;     /* disconnected: counted by on_disconnect */
    }
    if (privdata == IDX_FLUSH_REPLY) {
        n = 1;
        if (x->flush_unanswered > 0 && --x->flush_unanswered == 0 && x->flush_pending) {
            idx_flush(x);   /* the flush coalesced behind this one */
        }
    }
    x->stats[IDX_STAT_inflight] -= n < x->stats[IDX_STAT_inflight] ?
                                   n : x->stats[IDX_STAT_inflight];
    if (reply->type == REDIS_REPLY_ERROR) {
        if (x->stats[IDX_STAT_errors]++ % 1000 == 0) {
            log_error("index", "%s: Redis refused an index write: %s", x->pool,
                      reply->str);
        }
        memset(x->filter, 0, IDX_FILTER_SLOTS * sizeof(*x->filter));
    }
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct idx *x = ac->data;

    if (x == NULL) {
        return;
    }
    if (status != REDIS_OK) {
        if (x->stats[IDX_STAT_disconnects]++ == 0 || x->backoff_ms >= IDX_BACKOFF_MAX_MS) {
            log_warn("index", "%s: cannot connect to Redis %s: %s", x->pool,
                     x->conf.redis.text, ac->errstr);
        }
        x->ac = NULL;   /* hiredis frees the context after this callback */
        idx_schedule_retry(x);
        return;
    }
    x->state = IDX_READY;
    x->backoff_ms = 0;
    x->stats[IDX_STAT_connects]++;
    memset(x->filter, 0, IDX_FILTER_SLOTS * sizeof(*x->filter));
    log_notice("index", "%s: connected to Redis %s", x->pool, x->conf.redis.text);
    idx_flush(x);
}

static void idx_connect(struct idx *x)
{
    redisAsyncContext *ac = x->conf.redis.is_unix ?
        redisAsyncConnectUnix(x->conf.redis.host) :
        redisAsyncConnect(x->conf.redis.host, x->conf.redis.port);

    if (ac == NULL || ac->err) {
        log_warn("index", "%s: cannot connect to Redis %s: %s", x->pool,
                 x->conf.redis.text, ac ? ac->errstr : "out of memory");
        if (ac != NULL) {
            redisAsyncFree(ac);
        }
        idx_schedule_retry(x);
        return;
    }
    ac->data = x;
    x->ac = ac;
    x->state = IDX_CONNECTING;
    redisLibeventAttach(ac, x->base);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    /* Queued ahead of every index write on this connection. */
    if (x->conf.password != NULL) {
        const char *argv[] = { "AUTH", x->conf.password };
        size_t len[] = { 4, strlen(x->conf.password) };
        redisAsyncCommandArgv(ac, on_reply, NULL, 2, argv, len);
    }
    if (x->conf.db != 0) {
        char db[24];
        snprintf(db, sizeof(db), "%lld", (long long)x->conf.db);
        const char *argv[] = { "SELECT", db };
        size_t len[] = { 6, strlen(db) };
        redisAsyncCommandArgv(ac, on_reply, NULL, 2, argv, len);
    }
}

/* --- lifecycle ------------------------------------------------------------ */

struct idx *idx_new(struct event_base *base, const char *pool,
                    const struct conf_index *conf, struct ring *ring)
{
    struct idx *x = calloc(1, sizeof(*x));

    if (x == NULL) {
        return NULL;
    }
    x->base = base;
    x->pool = strdup(pool);
    x->conf = *conf;
    x->conf.redis.text = strdup(conf->redis.text);
    x->conf.redis.host = strdup(conf->redis.host);
    x->conf.prefix = strdup(conf->prefix);
    x->conf.password = conf->password ? strdup(conf->password) : NULL;
    x->filter = calloc(IDX_FILTER_SLOTS, sizeof(*x->filter));
    x->shared = true;           /* until the first sync says we are alone */
    x->retry = evtimer_new(base, on_retry, x);
    if (!x->pool || !x->conf.redis.text || !x->conf.redis.host || !x->conf.prefix ||
        (conf->password && !x->conf.password) || !x->filter || !x->retry ||
        idx_load_ring(x, ring) != 0) {
        goto err;
    }
    idx_connect(x);
    return x;

err:
    idx_free(x);
    return NULL;
}

void idx_free(struct idx *x)
{
    if (x == NULL) {
        return;
    }
    if (x->ac != NULL) {
        x->ac->data = NULL;
        redisAsyncFree(x->ac);
    }
    if (x->retry != NULL) {
        event_free(x->retry);
    }
    for (uint32_t i = 0; x->vnode != NULL && i < x->ring->npoints; i++) {
        free(x->vnode[i]);
    }
    free(x->vnode);
    free(x->vnode_len);
    ring_unref(x->ring);
    x->ring = NULL;
    free(x->filter);
    free(x->arena);
    free(x->group_of[0]);
    free(x->group_of[1]);
    free(x->groups);
    free(x->batch_fp);
    free(x->batch_used);
    free(x->out);
    free(x->pool);
    free(x->conf.redis.text);
    free(x->conf.redis.host);
    free(x->conf.prefix);
    free(x->conf.password);
    free(x);
}

/* The v-node set names and scratch of a ring. */
static int idx_load_ring(struct idx *x, struct ring *ring)
{
    char buf[1024];
    char **vnode = calloc(ring->npoints, sizeof(*vnode));
    size_t *vnode_len = calloc(ring->npoints, sizeof(*vnode_len));
    int32_t *g0 = malloc(ring->npoints * sizeof(int32_t));
    int32_t *g1 = malloc(ring->npoints * sizeof(int32_t));

    for (uint32_t i = 0; vnode && vnode_len && g0 && g1 && i < ring->npoints; i++) {
        vnode_len[i] = idx_vnode_key(x->conf.prefix, ring, i, buf, sizeof(buf));
        if ((vnode[i] = strndup(buf, vnode_len[i])) == NULL) {
            goto err;
        }
        g0[i] = g1[i] = -1;
    }
    if (!vnode || !vnode_len || !g0 || !g1) {
        goto err;
    }
    for (uint32_t i = 0; x->vnode != NULL && i < x->ring->npoints; i++) {
        free(x->vnode[i]);
    }
    free(x->vnode);
    free(x->vnode_len);
    free(x->group_of[0]);
    free(x->group_of[1]);
    ring_unref(x->ring);
    x->ring = ring_ref(ring);
    x->vnode = vnode;
    x->vnode_len = vnode_len;
    x->group_of[0] = g0;
    x->group_of[1] = g1;
    return 0;
err:
    for (uint32_t i = 0; vnode && i < ring->npoints; i++) {
        free(vnode[i]);
    }
    free(vnode);
    free(vnode_len);
    free(g0);
    free(g1);
    return -ENOMEM;
}

void idx_set_shared(struct idx *x, bool shared)
{
    if (x != NULL && x->shared != shared) {
        x->shared = shared;
        /* Either way: slots set while shared may name entries a sweeper
         * removed since (docs/ARCHITECTURE.md, "The sweeper"). */
        memset(x->filter, 0, IDX_FILTER_SLOTS * sizeof(*x->filter));
    }
}

void idx_set_ring(struct idx *x, struct ring *ring)
{
    if (x == NULL) {
        return;
    }
    /* Queued records name points of the old ring: send them first. */
    idx_flush(x);
    if (x->nqueued > 0) {
        x->stats[IDX_STAT_dropped] += x->nqueued;
        x->arena_len = 0;
        x->nqueued = 0;
        x->stats[IDX_STAT_queued] = x->flush_pending;
    }
    if (idx_load_ring(x, ring) != 0) {
        log_error("index", "%s: out of memory switching rings", x->pool);
        return;
    }
    memset(x->filter, 0, IDX_FILTER_SLOTS * sizeof(*x->filter));
}

enum idx_state idx_get_state(const struct idx *x)
{
    return x->state;
}

const uint64_t *idx_stats(const struct idx *x)
{
    return x->stats;
}

/* --- the request path: queue a record -------------------------------------- */

static void idx_queue(struct idx *x, enum idx_op_type type, const char *key,
                      size_t len)
{
    uint32_t score = ring_key_hash(x->ring, key, len);
    uint32_t point = ring_find(x->ring, score);
    uint64_t fp = fingerprint(key, len, point);
    uint64_t *slot = &x->filter[(fp >> 32) & (IDX_FILTER_SLOTS - 1)];

    if (type == IDX_OP_ADD && *slot == fp && !x->shared) {
        x->stats[IDX_STAT_filtered]++;
        return;
    }
    if (x->stats[IDX_STAT_queued] + x->stats[IDX_STAT_inflight] >=
        (uint64_t)x->conf.queue_max) {
        if (x->stats[IDX_STAT_dropped]++ % 10000 == 0) {
            log_warn("index", "%s: index queue full (%lld writes, Redis %s): "
                     "dropping index writes", x->pool, (long long)x->conf.queue_max,
                     idx_state_names[x->state]);
        }
        if (type == IDX_OP_REM && *slot == fp) {
            *slot = 0;
        }
        return;
    }
    size_t need = sizeof(struct idx_op) + len;
    if (x->arena_len + need > x->arena_cap) {
        size_t cap = x->arena_cap ? x->arena_cap * 2 : 65536;
        while (cap < x->arena_len + need) {
            cap *= 2;
        }
        char *a = realloc(x->arena, cap);
        if (a == NULL) {
            x->stats[IDX_STAT_dropped]++;
            return;
        }
        x->arena = a;
        x->arena_cap = cap;
    }
    struct idx_op op = { .type = (uint8_t)type, .keylen = (uint16_t)len,
                         .point = point, .score = score, .fp = fp };
    memcpy(x->arena + x->arena_len, &op, sizeof(op));
    memcpy(x->arena + x->arena_len + sizeof(op), key, len);
    x->arena_len += need;
    x->nqueued++;
    x->stats[IDX_STAT_queued]++;
    *slot = type == IDX_OP_ADD ? fp : (*slot == fp ? 0 : *slot);
    x->filter_used = true;
}

void idx_key_stored(struct idx *x, const char *key, size_t len)
{
    if (x != NULL) {
        idx_queue(x, IDX_OP_ADD, key, len);
    }
}

void idx_forget(struct idx *x, const char *key, size_t len)
{
    if (x == NULL) {
        return;
    }
    uint64_t fp = fingerprint(key, len, ring_find(x->ring, ring_key_hash(x->ring, key, len)));
    uint64_t *slot = &x->filter[(fp >> 32) & (IDX_FILTER_SLOTS - 1)];
    if (*slot == fp) {
        *slot = 0;
    }
}

void idx_pool_flushed(struct idx *x)
{
    /* Writes queued before the flush are moot. Clearing the filter (8 MiB)
     * for every flush_all of a burst would stall the loop: only when a
     * store may have set a slot since the last. */
    x->arena_len = 0;
    x->nqueued = 0;
    if (x->filter_used) {
        memset(x->filter, 0, IDX_FILTER_SLOTS * sizeof(*x->filter));
        x->filter_used = false;
    }
    if (x->state != IDX_READY) {
        /* Not sent on reconnect: by then stores through other proxies may
         * have been indexed (see idx_lost_inflight). */
        x->stats[IDX_STAT_queued] = 0;
        return;
    }
    x->flush_pending = true;    /* a second one is coalesced into it */
    x->stats[IDX_STAT_queued] = 1;
}

/* Send the pending flush's UNLINKs, every set in batches of 256. */
static void idx_send_flush(struct idx *x)
{
    x->flush_pending = false;
    x->stats[IDX_STAT_queued] = x->nqueued;
    for (uint32_t i = 0; i < x->ring->npoints; i += 256) {
        uint32_t n = x->ring->npoints - i < 256 ? x->ring->npoints - i : 256;
        x->out_len = 0;
        out_array(x, n + 1);
        out_bulk(x, "UNLINK", 6);
        for (uint32_t j = i; j < i + n; j++) {
            out_bulk(x, x->vnode[j], x->vnode_len[j]);
        }
        if (redisAsyncFormattedCommand(x->ac, on_reply, IDX_FLUSH_REPLY, x->out,
                                       x->out_len) == REDIS_OK) {
            x->stats[IDX_STAT_commands]++;
            x->stats[IDX_STAT_inflight]++;
            x->flush_unanswered++;
        }
    }
}

/* --- flush: the queue becomes pipelined commands ---------------------------- */

static const struct idx_op *op_at(const struct idx *x, size_t off, struct idx_op *tmp)
{
    memcpy(tmp, x->arena + off, sizeof(*tmp));
    return tmp;
}

static void idx_emit_groups(struct idx *x)
{
    static const char *const verb[] = { [IDX_OP_ADD] = "ZADD", [IDX_OP_REM] = "ZREM" };

    for (size_t g = 0; g < x->ngroups; g++) {
        struct idx_group *grp = &x->groups[g];
        struct idx_op op;
        char score[16];

        x->out_len = 0;
        out_array(x, 2 + grp->count * (grp->type == IDX_OP_ADD ? 2 : 1));
        out_bulk(x, verb[grp->type], 4);
        out_bulk(x, x->vnode[grp->point], x->vnode_len[grp->point]);
        for (size_t off = grp->first;; off = op.next) {
            op_at(x, off, &op);
            if (grp->type == IDX_OP_ADD) {
                int n = snprintf(score, sizeof(score), "%u", op.score);
                out_bulk(x, score, (size_t)n);
            }
            out_bulk(x, x->arena + off + sizeof(op), op.keylen);
            if (off == grp->last) {
                break;
            }
        }
        if (redisAsyncFormattedCommand(x->ac, on_reply,
                                       (void *)(uintptr_t)grp->count,
                                       x->out, x->out_len) == REDIS_OK) {
            x->stats[IDX_STAT_commands]++;
            x->stats[IDX_STAT_inflight] += grp->count;
            x->stats[grp->type == IDX_OP_ADD ? IDX_STAT_adds : IDX_STAT_removes] +=
                grp->count;
        } else {
            x->stats[IDX_STAT_dropped] += grp->count;
        }
        x->group_of[grp->type][grp->point] = -1;
    }
    x->ngroups = 0;
    /* Clear only the slots this batch used: the table keeps its largest size. */
    for (size_t i = 0; i < x->nbatch_used; i++) {
        x->batch_fp[x->batch_used[i]] = 0;
    }
    x->nbatch_used = 0;
}

/* Did this batch already see the key with the other op? Records it if not. */
static bool batch_conflict(struct idx *x, const struct idx_op *op)
{
    size_t mask = x->batch_cap - 1;
    uint64_t want = op->fp << 1 | op->type;

    for (size_t i = (size_t)op->fp & mask;; i = (i + 1) & mask) {
        if (x->batch_fp[i] == 0) {
            x->batch_fp[i] = want;
            x->batch_used[x->nbatch_used++] = i;
            return false;
        }
        if ((x->batch_fp[i] ^ want) == 1) {
            return true;
        }
        if (x->batch_fp[i] == want) {
            return false;
        }
    }
}

void idx_flush(struct idx *x)
{
    if (x == NULL || x->state != IDX_READY) {
        return;
    }
    if (x->flush_pending) {
        if (x->flush_unanswered > 0) {
            return;     /* the writes queued after it wait too */
        }
        idx_send_flush(x);
    }
    if (x->nqueued == 0) {
        return;
    }
    /* Scratch sized for this batch: links, groups, conflict table. */
    size_t cap = 64;
    while (cap < (size_t)x->nqueued * 2) {
        cap *= 2;
    }
    if (cap > x->batch_cap) {
        free(x->batch_fp);
        free(x->batch_used);
        x->batch_fp = calloc(cap, sizeof(*x->batch_fp));
        x->batch_used = malloc(cap * sizeof(*x->batch_used));
        x->batch_cap = x->batch_fp && x->batch_used ? cap : 0;
        x->nbatch_used = 0;
    }
    if (x->nqueued > x->groups_cap) {
        free(x->groups);
        x->groups = malloc(x->nqueued * sizeof(*x->groups));
        x->groups_cap = x->groups ? x->nqueued : 0;
    }
    if (x->batch_cap == 0 || x->groups == NULL) {
        return;     /* out of memory: try again next turn */
    }

    struct idx_op op;
    for (size_t off = 0; off < x->arena_len;
         off += sizeof(struct idx_op) + op.keylen) {
        op_at(x, off, &op);
        if (batch_conflict(x, &op)) {
            idx_emit_groups(x);
            batch_conflict(x, &op);
        }
        int32_t g = x->group_of[op.type][op.point];
        if (g < 0) {
            g = (int32_t)x->ngroups++;
            x->groups[g] = (struct idx_group){ .point = op.point, .type = op.type,
                                               .first = off };
            x->group_of[op.type][op.point] = g;
        } else {
            memcpy(x->arena + x->groups[g].last + offsetof(struct idx_op, next), &off,
                   sizeof(off));
        }
        x->groups[g].last = off;
        x->groups[g].count++;
    }
    idx_emit_groups(x);
    x->arena_len = 0;
    x->nqueued = 0;
    x->stats[IDX_STAT_queued] = x->flush_pending;
}
