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
 * - Every wait on Redis has a deadline, `reply_timeout` (idx_on_watch): a
 *   connection not made by then, or a Redis that owes the writer answers
 *   and has sent none for that long (stopped, partitioned, a half-open
 *   connection), is dropped and made again; what it owed counts as
 *   dropped, as after any lost connection. The count of writes in flight
 *   changes in one place each way (idx_sent, idx_answered).
 * - Nothing is written before Redis accepted AUTH and SELECT: a refused
 *   AUTH is retried on the same connection, with backoff, while writes
 *   queue (an unauthenticated pipeline would only be refused, and Redis
 *   closes a connection that sends long commands before AUTH).
 * - Health (docs/ARCHITECTURE.md, "Observability"): each of the pool's two
 *   Redis connections, this one and migrate.c's, reports what Redis last
 *   said; error replies are classified by idx_error_kinds. The pool's
 *   health is the worse of the two, and each change is logged once. An
 *   error state clears only after IDX_HEALTH_CALM_MS without errors, so a
 *   Redis that refuses one command in ten does not flap; "dropping" clears
 *   once the queue is down to half.
 * - Layout 2 (layout.h): a v-node's writes are plain pipelined ZADDs, one
 *   per sub-set, and RPUSHes of long keys, one per sub-range list
 *   (LAY_LONG_KEYS), picked from the v-node's directory as this writer last
 *   learnt it (struct idx_vdir: lows and sizes, from the script's `dir`
 *   and `split`). The sizes grow by what ZADD says it added, and count
 *   what unanswered ZADDs may add; past
 *   LAY_SPLIT_ASK the writer sends the script's `split`, which checks again
 *   atomically and answers the new directory. A directory older than
 *   LAY_DIR_TTL_MS is not used: that v-node's writes go through the
 *   script's `add` (which reads the layout and directory in Redis) until a
 *   fresh one comes back; it is asked for at half that age. So a layout
 *   change or another proxy's split is seen within LAY_DIR_TTL_MS, and a
 *   key filed under an older directory is a stray that readers still find
 *   (I-L2, layout.h).
 */
#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libevent.h>

#include "clock.h"
#include "index.h"
#include "layout.h"
#include "log.h"
#include "mem.h"

#define IDX_FILTER_SLOTS (1u << 20)     /* 8 MiB of fingerprints per indexed pool */
#define IDX_BACKOFF_MIN_MS 100
#define IDX_BACKOFF_MAX_MS 5000
#define IDX_HEALTH_CALM_MS 5000  /* without errors before a refusal clears */
#define IDX_SCRIPT_KEYS 1024    /* members per index script, at most */
#define IDX_DIR_MAX 65536       /* lows a directory reply may hold, at most */

#define IDX_STATE_NAME(e, name) [IDX_##e] = name,
const char *const idx_state_names[IDX_STATE_COUNT] = { IDX_STATE_CODEC(IDX_STATE_NAME) };
#undef IDX_STATE_NAME

#define IDX_STAT_DESC(n, k, h) [IDX_STAT_##n] = { #n, #k, h },
const struct idx_stat_desc idx_stat_desc[IDX_STAT_COUNT] = { IDX_STATS_CODEC(IDX_STAT_DESC) };
#undef IDX_STAT_DESC

#define IDX_HEALTH_NAME(e, name, stat, help) [IDX_H_##e] = name,
const char *const idx_health_names[IDX_HEALTH_COUNT] = { IDX_HEALTH_CODEC(IDX_HEALTH_NAME) };
#undef IDX_HEALTH_NAME

#define IDX_HEALTH_HELP(e, name, stat, help) [IDX_H_##e] = help,
const char *const idx_health_help[IDX_HEALTH_COUNT] = { IDX_HEALTH_CODEC(IDX_HEALTH_HELP) };
#undef IDX_HEALTH_HELP

/* The counter of each refusal (IDX_NO_STAT: not an error reply). */
#define IDX_HEALTH_STAT(e, name, stat, help) [IDX_H_##e] = stat,
static const enum idx_stat idx_health_stat[IDX_HEALTH_COUNT] = {
    IDX_HEALTH_CODEC(IDX_HEALTH_STAT)
};
#undef IDX_HEALTH_STAT

static const char *const idx_conn_names[IDX_CONN_COUNT] = {
    [IDX_CONN_WRITER] = "index writer", [IDX_CONN_COORD] = "coordination",
};

/*
 * What an error reply means for the index, by how it begins: the first
 * row that matches (the last takes any other error). Redis 6 and later
 * answer WRONGPASS to a bad password, NOAUTH to a command before AUTH and
 * NOPERM to one the user's ACL denies; Redis 5 "ERR invalid password". An
 * AUTH sent to a Redis that has no password is refused, but the connection
 * works: harmless (IDX_H_OK).
 */
static const struct idx_error_kind {
    const char *prefix;
    enum idx_health health;
} idx_error_kinds[] = {
    { "WRONGPASS", IDX_H_AUTH_FAILED },
    { "NOAUTH", IDX_H_AUTH_FAILED },
    { "NOPERM", IDX_H_AUTH_FAILED },
    { "ERR invalid password", IDX_H_AUTH_FAILED },
    { "ERR AUTH <password> called without any password configured", IDX_H_OK },
    { "ERR Client sent AUTH, but no password is set", IDX_H_OK },
    { "OOM", IDX_H_REFUSED_OOM },
    { "READONLY", IDX_H_REFUSED_READONLY },
    { "", IDX_H_REFUSED_OTHER },
};

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
    bool plain;                 /* sent as plain ZADDs (idx_emit_plain) */
    uint32_t count;
    size_t first, last;         /* arena offsets of the records */
};

/* What this writer knows of one sub-range of a v-node. */
struct idx_sub {
    uint32_t size;              /* members, as last learnt and added */
    uint32_t pend;              /* members of unanswered ZADDs */
    uint32_t refused;           /* its size when a split found no score to cut
                                 * at (every member one hash: a hash tag); 0 none */
};

/* What this writer knows of a v-node's layout-2 directory. */
struct idx_vdir {
    uint32_t *lows;             /* ascending; lows[0] is 0 (lay_pick reads them) */
    struct idx_sub *sub;        /* per low */
    uint32_t n, cap;
    uint8_t layout;             /* 0: not known yet; else the layout in force */
    bool asking;                /* a dir or split call is unanswered */
    uint64_t learnt_ms;         /* monotonic */
};

/* An unanswered ZADD, dir or split: which v-node of which ring. */
struct idx_ask {
    uint64_t gen;
    uint32_t point;
    uint32_t low;               /* ZADD: the sub-set's low; UINT32_MAX: the base */
    uint32_t n;                 /* ZADD: members sent */
    bool list;                  /* an RPUSH of long keys: it adds them all */
};

/* One record of a group, on its way to its sub-set (idx_emit_plain). */
struct idx_pick {
    uint32_t sub;               /* index into the directory */
    bool list;                  /* a long key: the sub-range's list */
    size_t off;
};

struct idx {
    struct event_base *base;
    char *pool;
    struct conf_index conf;     /* copies of the strings below */
    struct ring *ring;
    char *ring_key;             /* <prefix>:ring, the script's KEYS[1] */
    struct lay_limits limits;   /* Redis's listpack thresholds (layout.h) */
    bool need_load;             /* Redis answered NOSCRIPT: load it again */
    char **vnode;               /* set name per ring point */
    size_t *vnode_len;
    struct idx_vdir *vdir;      /* per ring point */
    uint64_t gen;               /* bumped by each ring: replies of older ones are moot */
    uint32_t asks;              /* dir and split calls unanswered (in inflight too:
                                 * a writer is idle only once its splits are done) */
    struct idx_pick *picks;     /* flush scratch */
    size_t picks_cap;
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
    /* AUTH and SELECT replies awaited; whether one was refused */
    uint32_t handshake;
    bool handshake_failed;
    /* health: per connection, and the pool's (the worse of the two) */
    struct {
        enum idx_health health;
        char why[192];          /* what Redis said */
        uint64_t last_error_ms; /* monotonic */
        bool calm;              /* answered well since: clears on the timer */
    } conn[IDX_CONN_COUNT];
    enum idx_health health;
    uint64_t health_since_ms;
    struct event *calm_timer;
    /* reply_timeout (idx_on_watch): when the connection was begun, when
     * Redis last answered it (or was first owed an answer), and why the
     * watch dropped it, for idx_on_disconnect to say */
    struct event *watch;
    uint64_t progress_ms;
    char drop_why[96];
};

/* index.reply_timeout when a caller gives none (config.c has the same) */
#define IDX_REPLY_TIMEOUT_MS 10000

/* on_reply's privdata for an UNLINK of a flush (others: the write count). */
#define IDX_FLUSH_REPLY ((void *)UINTPTR_MAX)

static void idx_connect(struct idx *x);
static void idx_handshake(struct idx *x);
static int idx_load_ring(struct idx *x, struct ring *ring);
static void idx_send_split(struct idx *x, uint32_t point, uint32_t low);
static void idx_send_load(struct idx *x);

static void idx_vdir_free(struct idx_vdir *v, uint32_t n)
{
    for (uint32_t i = 0; v != NULL && i < n; i++) {
        free(v[i].lows);
        free(v[i].sub);
    }
    free(v);
}

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
        return -1;
    }
    x->out = p;
    x->out_cap = cap;
    return 0;
}

/* One bulk string made of s and then t. */
static void out_bulk2(struct idx *x, const char *s, size_t len, const char *t, size_t tlen)
{
    char hdr[32];
    int n = snprintf(hdr, sizeof(hdr), "$%zu\r\n", len + tlen);

    if (out_reserve(x, (size_t)n + len + tlen + 2) != 0) {
        return;
    }
    memcpy(x->out + x->out_len, hdr, (size_t)n);
    memcpy(x->out + x->out_len + n, s, len);
    if (tlen > 0) {
        memcpy(x->out + x->out_len + n + len, t, tlen);
    }
    memcpy(x->out + x->out_len + n + len + tlen, "\r\n", 2);
    x->out_len += (size_t)n + len + tlen + 2;
}

static void out_bulk(struct idx *x, const char *s, size_t len)
{
    out_bulk2(x, s, len, NULL, 0);
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
    /* Never past what was written (CONF_PREFIX_MAX and CONF_STR_MAX keep
     * the name within the callers' 512 bytes). */
    return n < 0 ? 0 : (size_t)n < len ? (size_t)n : len - 1;
}

/* --- health ----------------------------------------------------------------- */

enum idx_health idx_classify_error(const char *msg)
{
    const char *code = msg != NULL ? msg : "";
    const char *inner;
    size_t n = sizeof(idx_error_kinds) / sizeof(idx_error_kinds[0]);

    /* Redis 6 wraps an error raised inside a script:
     * "ERR Error running script (...): @user_script:1: ...: -OOM ..." */
    if (strncmp(code, "ERR Error running script", 24) == 0 &&
        (inner = strstr(code, ": -")) != NULL) {
        code = inner + 3;
    }
    for (size_t i = 0; i + 1 < n; i++) {
        if (strncmp(code, idx_error_kinds[i].prefix,
                    strlen(idx_error_kinds[i].prefix)) == 0) {
            return idx_error_kinds[i].health;
        }
    }
    return idx_error_kinds[n - 1].health;
}

/* Connection c now says h (why: Redis' words); log a change of the pool's. */
static void idx_set_health(struct idx *x, enum idx_conn c, enum idx_health h,
                           const char *why)
{
    enum idx_health was = x->health;
    uint64_t now = rp_clock_ms();

    x->conn[c].health = h;
    x->conn[c].calm = false;
    snprintf(x->conn[c].why, sizeof(x->conn[c].why), "%s", h == IDX_H_OK ? "" : why);
    enum idx_conn worse = x->conn[IDX_CONN_COORD].health > x->conn[IDX_CONN_WRITER].health ?
                          IDX_CONN_COORD : IDX_CONN_WRITER;
    if (x->conn[worse].health == was) {
        return;
    }
    x->health = x->conn[worse].health;
    if (x->health == IDX_H_OK) {
        log_notice("index", "%s: index healthy again: Redis %s takes its commands "
                   "(was %s for %llu s)", x->pool, x->conf.redis.text,
                   idx_health_names[was],
                   (unsigned long long)((now - x->health_since_ms) / 1000));
    } else {
        log_error("index", "%s: index %s: %s: %s (Redis %s, %s connection)", x->pool,
                  idx_health_names[x->health], idx_health_help[x->health],
                  x->conn[worse].why, x->conf.redis.text, idx_conn_names[worse]);
    }
    x->health_since_ms = now;
}

/* An error state clears once IDX_HEALTH_CALM_MS passed without errors and
 * Redis has answered well since. */
static void on_calm(evutil_socket_t fd, short what, void *arg)
{
    struct idx *x = arg;
    uint64_t now = rp_clock_ms(), next = 0;

    (void)fd, (void)what;
    for (int c = 0; c < IDX_CONN_COUNT; c++) {
        if (!x->conn[c].calm) {
            continue;
        }
        uint64_t due = x->conn[c].last_error_ms + IDX_HEALTH_CALM_MS;
        if (now >= due) {
            idx_set_health(x, (enum idx_conn)c, IDX_H_OK, "");
        } else if (next == 0 || due < next) {
            next = due;
        }
    }
    if (next != 0) {
        struct timeval tv = { (time_t)((next - now) / 1000),
                              (suseconds_t)((next - now) % 1000) * 1000 };
        event_add(x->calm_timer, &tv);
    }
}

enum idx_health idx_redis_error(struct idx *x, enum idx_conn c, const char *msg)
{
    enum idx_health h = idx_classify_error(msg);

    if (x == NULL || h == IDX_H_OK) {
        return h;
    }
    x->stats[idx_health_stat[h]]++;
    x->stats[IDX_STAT_last_error_time] = (uint64_t)time(NULL);
    x->conn[c].last_error_ms = rp_clock_ms();
    idx_set_health(x, c, h, msg);
    return h;
}

void idx_redis_ok(struct idx *x, enum idx_conn c)
{
    if (x == NULL || x->conn[c].health == IDX_H_OK || x->conn[c].calm) {
        return;
    }
    if (x->conn[c].health < IDX_H_REFUSED_OTHER) {
        idx_set_health(x, c, IDX_H_OK, "");       /* back, or the queue drained */
        return;
    }
    x->conn[c].calm = true;
    on_calm(-1, 0, x);
}

void idx_redis_down(struct idx *x, enum idx_conn c, const char *why)
{
    if (x != NULL && x->conn[c].health != IDX_H_DISCONNECTED) {
        idx_set_health(x, c, IDX_H_DISCONNECTED, why);
    }
}

enum idx_health idx_health(const struct idx *x, enum idx_conn c, const char **why)
{
    enum idx_conn w = c;

    if (c == IDX_CONN_COUNT) {
        w = x->conn[IDX_CONN_COORD].health > x->conn[IDX_CONN_WRITER].health ?
            IDX_CONN_COORD : IDX_CONN_WRITER;
    }
    if (why != NULL) {
        *why = x->conn[w].why;
    }
    return x->conn[w].health;
}

/* --- connection ----------------------------------------------------------- */

/* n writes (or one dir, split or flush call) sent on x->ac. */
static void idx_sent(struct idx *x, uint64_t n)
{
    if (x->stats[IDX_STAT_inflight] == 0) {
        x->progress_ms = rp_clock_ms();     /* Redis owes nothing older */
    }
    x->stats[IDX_STAT_commands]++;
    x->stats[IDX_STAT_inflight] += n;
}

/* n of them answered: Redis is making progress. */
static void idx_answered(struct idx *x, uint64_t n)
{
    x->progress_ms = rp_clock_ms();
    x->stats[IDX_STAT_inflight] -= n < x->stats[IDX_STAT_inflight] ?
                                   n : x->stats[IDX_STAT_inflight];
}

static void idx_lost_inflight(struct idx *x)
{
    /* Writes sent but unanswered are lost; the filter may now lie. */
    x->stats[IDX_STAT_dropped] += x->stats[IDX_STAT_inflight] - x->asks;
    x->asks = 0;
    x->stats[IDX_STAT_inflight] = 0;
    /* their ZADDs will add nothing: no longer pending (index.c, on_zadd) */
    for (uint32_t i = 0; x->vdir != NULL && i < x->ring->npoints; i++) {
        for (uint32_t j = 0; j < x->vdir[i].n; j++) {
            x->vdir[i].sub[j].pend = 0;
        }
        x->vdir[i].asking = false;
        /* Redis may have restarted empty: its directories with it. A low
         * cached from before would file keys in a set no reader looks at
         * (I-L2): the script's `add` files them until a new one is in. */
        x->vdir[i].learnt_ms = 0;
    }
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

static void idx_on_retry(evutil_socket_t fd, short what, void *arg)
{
    struct idx *x = arg;

    (void)fd, (void)what;
    if (x->ac != NULL) {
        idx_handshake(x);   /* connected, but AUTH or SELECT was refused */
    } else {
        idx_connect(x);
    }
}

/* The connection is gone (hiredis freed it), for `cause`: what it owed is
 * lost, and it is made again after a backoff. */
static void idx_lost_connection(struct idx *x, const char *cause)
{
    char why[192];

    x->ac = NULL;
    x->handshake = 0;
    x->stats[IDX_STAT_disconnects]++;
    snprintf(why, sizeof(why), "lost the connection (%s); index writes queue, up to "
             "%lld, until it is back", cause, (long long)x->conf.queue_max);
    x->drop_why[0] = '\0';
    idx_redis_down(x, IDX_CONN_WRITER, why);
    idx_lost_inflight(x);
    idx_schedule_retry(x);
}

static void idx_on_disconnect(const redisAsyncContext *ac, int status)
{
    struct idx *x = ac->data;

    if (x == NULL) {
        return;     /* idx_free is tearing down */
    }
    idx_lost_connection(x, x->drop_why[0] != '\0' ? x->drop_why :
                        status == REDIS_OK ? "closed" : ac->errstr);
}

/*
 * The writer's deadline, every quarter of reply_timeout (at most a
 * second): a connection not made within reply_timeout, or one on which
 * Redis owes answers and has given none for that long, is dropped and made
 * again (a stopped Redis, a partition, a peer gone without a reset would
 * otherwise hold the writes in flight for as long as TCP keeps trying).
 */
static void idx_on_watch(evutil_socket_t fd, short what, void *arg)
{
    struct idx *x = arg;
    redisAsyncContext *ac = x->ac;
    uint64_t now = rp_clock_ms(), limit = (uint64_t)x->conf.reply_timeout;

    (void)fd, (void)what;
    if (ac == NULL) {
        return;
    }
    /* connecting: progress_ms is when the connect began (idx_connect) */
    bool connecting = x->state == IDX_CONNECTING;
    if (now - x->progress_ms < limit || (!connecting && ac->replies.head == NULL)) {
        return;
    }
    snprintf(x->drop_why, sizeof(x->drop_why), connecting ?
             "not connected within %llu ms (index.reply_timeout)" :
             "Redis answered nothing for %llu ms (index.reply_timeout)",
             (unsigned long long)limit);
    log_warn("index", "%s: Redis %s: %s: connecting again", x->pool, x->conf.redis.text,
             x->drop_why);
    redisAsyncFree(ac);     /* runs idx_on_disconnect if it was connected */
    if (x->ac != NULL) {
        idx_lost_connection(x, x->drop_why);    /* never was: no callback */
    }
}

static void idx_written(struct idx *x, const redisReply *reply, uint64_t n, bool flush);

/* The writes of one command were acknowledged, or refused. */
static void on_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    struct idx *x = ac->data;
    redisReply *reply = r;

    if (x == NULL || reply == NULL) {
        return;     /* disconnected: counted by idx_on_disconnect */
    }
    idx_written(x, reply, (uint64_t)(uintptr_t)privdata, privdata == IDX_FLUSH_REPLY);
}

static void idx_written(struct idx *x, const redisReply *reply, uint64_t n, bool flush)
{
    if (flush) {
        n = 1;
        if (x->flush_unanswered > 0 && --x->flush_unanswered == 0 && x->flush_pending) {
            idx_flush(x);   /* the flush coalesced behind this one */
        }
    }
    idx_answered(x, n);
    if (reply->type == REDIS_REPLY_ERROR) {
        x->need_load |= lay_noscript(reply->str);
        x->stats[IDX_STAT_errors]++;
        idx_redis_error(x, IDX_CONN_WRITER, reply->str);
        memset(x->filter, 0, IDX_FILTER_SLOTS * sizeof(*x->filter));
    } else if (x->conn[IDX_CONN_WRITER].health != IDX_H_DROPPING ||
               x->stats[IDX_STAT_queued] + x->stats[IDX_STAT_inflight] <=
               (uint64_t)x->conf.queue_max / 2) {
        idx_redis_ok(x, IDX_CONN_WRITER);
    }
}

/* --- layout 2: the directories this writer caches --------------------------- */

/* The vdir of an ask, or NULL when its ring is gone (or we are). */
static struct idx_vdir *ask_vdir(struct idx *x, const struct idx_ask *a)
{
    return x != NULL && a->gen == x->gen && a->point < x->ring->npoints ?
           &x->vdir[a->point] : NULL;
}

/*
 * Is a sub-range to be split: past LAY_SPLIT_ASK, counting what its
 * unanswered ZADDs may add (with_pend). One whose split was refused (every
 * member one score: a hash tag's keys) is asked again only once it grew by
 * a quarter of the threshold since, so it costs Redis one split call per
 * that many writes, not one per answer (asked on every answer, the writer
 * and Redis spun on it with no client writing).
 */
static bool sub_wants_split(const struct idx *x, const struct idx_sub *sb, bool with_pend)
{
    uint64_t n = (uint64_t)sb->size + (with_pend ? sb->pend : 0);

    return n >= LAY_SPLIT_ASK(x->limits.entries) &&
           (sb->refused == 0 || n >= (uint64_t)sb->refused + x->limits.entries / 4);
}

/* A plain ZADD's answer: what it added grows its sub-set's size, and it
 * is no longer pending there (a dir or split answer sets the size Redis
 * had when it ran: answers come in order, so ZADDs sent before it are
 * in that size and those sent after it are still pending). */
static void on_zadd(redisAsyncContext *ac, void *r, void *privdata)
{
    struct idx *x = ac->data;
    redisReply *reply = r;
    struct idx_ask *a = privdata;
    struct idx_vdir *v;

    if (x != NULL && reply != NULL) {
        idx_written(x, reply, a->n, false);
        v = ask_vdir(x, a);
        if (v != NULL && v->layout == 2 && a->low != UINT32_MAX) {
            int i = lay_pick(v->lows, v->n, a->low);
            uint32_t added = reply->type != REDIS_REPLY_INTEGER || reply->integer <= 0 ? 0 :
                             a->list || (uint64_t)reply->integer > a->n ? a->n :
                             (uint32_t)reply->integer;
            if (i >= 0 && v->lows[i] == a->low) {
                struct idx_sub *sb = &v->sub[i];
                uint64_t sz = (uint64_t)sb->size + added;
                sb->size = sz > UINT32_MAX ? UINT32_MAX : (uint32_t)sz;
                sb->pend -= a->n < sb->pend ? a->n : sb->pend;
                /* asked for again while it is still over: the ask sent
                 * with the ZADD may have found a split in flight */
                if (sub_wants_split(x, sb, false) && !v->asking) {
                    idx_send_split(x, a->point, a->low);
                }
            }
        }
    }
    free(a);
}

static bool reply_u32(const redisReply *e, uint32_t *out)
{
    char buf[24], *end;
    unsigned long long v;

    if (e->type == REDIS_REPLY_INTEGER) {
        if (e->integer < 0 || e->integer > UINT32_MAX) {
            return false;
        }
        *out = (uint32_t)e->integer;
        return true;
    }
    if (e->type != REDIS_REPLY_STRING || e->len == 0 || e->len >= sizeof(buf) ||
        e->str[0] < '0' || e->str[0] > '9') {
        return false;
    }
    memcpy(buf, e->str, e->len);
    buf[e->len] = '\0';
    errno = 0;
    v = strtoull(buf, &end, 10);
    if (*end != '\0' || errno != 0 || v > UINT32_MAX) {
        return false;
    }
    *out = (uint32_t)v;
    return true;
}

/* {layout, low, size, ...} (layout.h, dir) into v; false (v unchanged) when
 * the reply is not that: lows ascending from 0, at most IDX_DIR_MAX. */
static bool vdir_parse(struct idx_vdir *v, const redisReply *r)
{
    uint32_t layout, n;

    if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 || r->elements % 2 != 1 ||
        !reply_u32(r->element[0], &layout) || layout < 1 || layout > 2 ||
        r->elements / 2 > IDX_DIR_MAX || (layout == 2 && r->elements < 3)) {
        return false;
    }
    n = (uint32_t)(r->elements / 2);
    /* layout 1 answers no lows: one slot each all the same */
    uint32_t *lows = malloc((n ? n : 1) * sizeof(*lows));
    struct idx_sub *sub = calloc(n ? n : 1, sizeof(*sub));
    if (lows == NULL || sub == NULL) {
        goto fail;
    }
    for (uint32_t i = 0; i < n; i++) {
        if (!reply_u32(r->element[1 + 2 * i], &lows[i]) ||
            !reply_u32(r->element[2 + 2 * i], &sub[i].size) ||
            (i == 0 ? lows[i] != 0 : lows[i] <= lows[i - 1])) {
            goto fail;
        }
        /* ZADDs still unanswered stay pending where they were sent, and a
         * refused split stays refused */
        int o = lay_pick(v->lows, v->n, lows[i]);
        if (o >= 0 && v->lows[o] == lows[i]) {
            sub[i].pend = v->sub[o].pend;
            sub[i].refused = v->sub[o].refused;
        }
    }
    free(v->lows);
    free(v->sub);
    v->lows = lows;
    v->sub = sub;
    v->n = v->cap = n;
    v->layout = (uint8_t)layout;
    return true;
fail:
    free(lows);
    free(sub);
    return false;
}

/* A split's answer {layout, low, size[, low, size]} (or dir's, when the
 * low was not in the directory) into v, which knows layout 2: sizes set,
 * new lows inserted in order (lows never leave a directory, layout.h).
 * false when it is not that (v unchanged but for what was already set). */
static bool vdir_merge(struct idx_vdir *v, const redisReply *r)
{
    uint32_t layout;

    if (v->layout != 2 || r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
        r->elements % 2 != 1 || r->elements / 2 > IDX_DIR_MAX ||
        !reply_u32(r->element[0], &layout)) {
        return false;
    }
    if (layout != 2) {
        return vdir_parse(v, r);        /* the layout changed: its whole answer */
    }
    for (size_t e = 1; e + 1 < r->elements; e += 2) {
        uint32_t low, size;
        if (!reply_u32(r->element[e], &low) || !reply_u32(r->element[e + 1], &size)) {
            return false;
        }
        int i = lay_pick(v->lows, v->n, low);
        if (i >= 0 && v->lows[i] == low) {
            v->sub[i].size = size;
            continue;
        }
        if (v->n == v->cap) {
            uint32_t cap = v->cap ? v->cap * 2 : 8;
            if (v->n >= IDX_DIR_MAX) {
                return false;
            }
            uint32_t *lows = realloc(v->lows, cap * sizeof(*lows));
            if (lows == NULL) {
                return false;
            }
            v->lows = lows;
            struct idx_sub *sub = realloc(v->sub, cap * sizeof(*sub));
            if (sub == NULL) {
                return false;
            }
            v->sub = sub;
            v->cap = cap;
        }
        size_t at = (size_t)(i + 1);
        memmove(v->lows + at + 1, v->lows + at, (v->n - at) * sizeof(*v->lows));
        memmove(v->sub + at + 1, v->sub + at, (v->n - at) * sizeof(*v->sub));
        v->lows[at] = low;
        v->sub[at] = (struct idx_sub){ .size = size };
        v->n++;
    }
    return true;
}

/* Does a dir or split answer name `low` among its lows? */
static bool reply_names_low(const redisReply *r, uint32_t low)
{
    uint32_t l;

    for (size_t e = 1; r->type == REDIS_REPLY_ARRAY && e + 1 < r->elements; e += 2) {
        if (reply_u32(r->element[e], &l) && l == low) {
            return true;
        }
    }
    return false;
}

/*
 * A dir (low UINT32_MAX) or split answer into v. The script answers a
 * split of a low its directory lacks with the whole directory (Redis lost
 * it, or the v-node was cleared): taken whole, so the low Redis lacks
 * leaves the cache. A split that cut nothing, its sub-range still over
 * `ask`, was refused: no score to cut at (sub_wants_split).
 */
static bool vdir_learn(struct idx_vdir *v, uint32_t low, const redisReply *r, uint64_t ask)
{
    if (low == UINT32_MAX || !reply_names_low(r, low)) {
        return vdir_parse(v, r);
    }
    if (!vdir_merge(v, r)) {
        return false;
    }
    int i = lay_pick(v->lows, v->n, low);
    if (v->layout == 2 && i >= 0 && v->lows[i] == low) {
        struct idx_sub *sb = &v->sub[i];
        sb->refused = r->elements == 3 && sb->size >= ask ? sb->size : 0;
    }
    return true;
}

/* A dir or split answer: the v-node's directory as it is now. */
static void on_dir(redisAsyncContext *ac, void *r, void *privdata)
{
    struct idx *x = ac->data;
    redisReply *reply = r;
    struct idx_ask *a = privdata;
    struct idx_vdir *v = ask_vdir(x, a);

    if (v != NULL) {
        v->asking = false;
    }
    if (x != NULL && reply != NULL && x->asks > 0) {
        x->asks--;
        idx_answered(x, 1);
    }
    if (x != NULL && reply != NULL && reply->type == REDIS_REPLY_ERROR) {
        x->need_load |= lay_noscript(reply->str);
        x->stats[IDX_STAT_errors]++;
        idx_redis_error(x, IDX_CONN_WRITER, reply->str);
    } else if (v != NULL && reply != NULL &&
               vdir_learn(v, a->low, reply, LAY_SPLIT_ASK(x->limits.entries))) {
        v->learnt_ms = rp_clock_ms();
        /* one split at a time per v-node: the next after this answer */
        for (uint32_t i = 0; v->layout == 2 && i < v->n; i++) {
            if (sub_wants_split(x, &v->sub[i], true)) {
                idx_send_split(x, a->point, v->lows[i]);
                break;
            }
        }
    }
    free(a);
}

/* dir (low == UINT32_MAX) or split of a v-node; v->asking until answered. */
static void idx_send_ask(struct idx *x, uint32_t point, uint32_t low)
{
    const char *argv[LAY_HEAD + 2];
    size_t lens[LAY_HEAD + 2];
    char nums[2][12], lowbuf[12];
    struct idx_ask *a = malloc(sizeof(*a));
    int argc;

    if (a == NULL) {
        return;
    }
    *a = (struct idx_ask){ .gen = x->gen, .point = point, .low = low };
    argc = lay_head(argv, lens, x->ring_key, low == UINT32_MAX ? "dir" : "split",
                    &x->limits, nums);
    argv[argc] = x->vnode[point];
    lens[argc++] = x->vnode_len[point];
    if (low != UINT32_MAX) {
        lens[argc] = (size_t)snprintf(lowbuf, sizeof(lowbuf), "%u", low);
        argv[argc++] = lowbuf;
    }
    if (x->need_load) {
        idx_send_load(x);
    }
    if (redisAsyncCommandArgv(x->ac, on_dir, a, argc, argv, lens) != REDIS_OK) {
        free(a);
        return;
    }
    idx_sent(x, 1);
    x->asks++;
    x->vdir[point].asking = true;
}

static void idx_send_split(struct idx *x, uint32_t point, uint32_t low)
{
    idx_send_ask(x, point, low);
}

/*
 * Redis answered one of the commands every connection begins with (SCRIPT
 * LOAD, CONFIG GET). A connection is healthy only once Redis has said
 * something on it: a stopped Redis still completes TCP handshakes (its
 * kernel's backlog), so a writer with no AUTH or SELECT to wait for is
 * READY before Redis said a word, and calling that healthy would flap the
 * pool's health to ok at each reconnection the deadline makes.
 */
static void idx_heard(struct idx *x)
{
    x->progress_ms = rp_clock_ms();
    if (x->state == IDX_READY) {
        /* even an error (LOADING): Redis is there; writes classify theirs */
        x->backoff_ms = 0;
        idx_redis_ok(x, IDX_CONN_WRITER);
    }
}

/* The index script is loaded before any EVALSHA on this connection (the
 * pipeline keeps the order); a refusal is seen again by the writes. */
static void on_load(redisAsyncContext *ac, void *r, void *privdata)
{
    struct idx *x = ac->data;
    redisReply *reply = r;

    (void)privdata;
    if (x != NULL && reply != NULL) {
        idx_heard(x);
        x->need_load |= reply->type == REDIS_REPLY_ERROR;
    }
}

static void idx_send_load(struct idx *x)
{
    const char *argv[3];
    size_t lens[3];

    lay_load_argv(argv, lens);
    rp_xcheck(redisAsyncCommandArgv(x->ac, on_load, NULL, 3, argv, lens) == REDIS_OK,
              "the Redis SCRIPT LOAD command");
    x->need_load = false;
}

static void on_limits(redisAsyncContext *ac, void *r, void *privdata)
{
    struct idx *x = ac->data;

    (void)privdata;
    if (x != NULL && r != NULL) {
        idx_heard(x);
        lay_limits_parse(&x->limits, r);
    }
}

/* AUTH and SELECT: the writer is ready once Redis accepted both. */
static void on_handshake(redisAsyncContext *ac, void *r, void *privdata)
{
    struct idx *x = ac->data;
    redisReply *reply = r;

    (void)privdata;
    if (x == NULL || reply == NULL || x->handshake == 0) {
        return;     /* disconnected: idx_on_disconnect retries */
    }
    x->progress_ms = rp_clock_ms();
    if (reply->type == REDIS_REPLY_ERROR &&
        idx_redis_error(x, IDX_CONN_WRITER, reply->str) != IDX_H_OK) {
        x->handshake_failed = true;
    } else if (reply->type == REDIS_REPLY_ERROR) {
        log_warn("index", "%s: Redis %s has no password: index.password is not needed "
                 "(%s)", x->pool, x->conf.redis.text, reply->str);
    }
    if (--x->handshake > 0) {
        return;
    }
    if (x->handshake_failed) {
        /* Try again on this connection, after a pause. */
        x->backoff_ms = x->backoff_ms ? x->backoff_ms * 2 : IDX_BACKOFF_MIN_MS;
        if (x->backoff_ms > IDX_BACKOFF_MAX_MS) {
            x->backoff_ms = IDX_BACKOFF_MAX_MS;
        }
        struct timeval tv = { x->backoff_ms / 1000, (x->backoff_ms % 1000) * 1000 };
        event_add(x->retry, &tv);
        return;
    }
    x->state = IDX_READY;
    x->backoff_ms = 0;
    idx_redis_ok(x, IDX_CONN_WRITER);
    idx_flush(x);
}

/* Send AUTH and SELECT, as the configuration asks; none: ready at once. */
static void idx_handshake(struct idx *x)
{
    x->progress_ms = rp_clock_ms();     /* the deadline runs from now (idx_on_watch) */
    x->handshake = 0;
    x->handshake_failed = false;
    if (x->conf.password != NULL) {
        const char *argv[] = { "AUTH", x->conf.password };
        size_t len[] = { 4, strlen(x->conf.password) };
        rp_xcheck(redisAsyncCommandArgv(x->ac, on_handshake, NULL, 2, argv,
                                        len) == REDIS_OK, "the Redis AUTH command");
        x->handshake++;
    }
    if (x->conf.db != 0) {
        char db[24];
        snprintf(db, sizeof(db), "%lld", (long long)x->conf.db);
        const char *argv[] = { "SELECT", db };
        size_t len[] = { 6, strlen(db) };
        rp_xcheck(redisAsyncCommandArgv(x->ac, on_handshake, NULL, 2, argv,
                                        len) == REDIS_OK, "the Redis SELECT command");
        x->handshake++;
    }
    idx_send_load(x);
    /* The thresholds the layout keeps sets under; a refused CONFIG keeps
     * Redis's defaults (layout.h). */
    const char *cargv[] = { "CONFIG", "GET", LAY_CONFIG_PATTERN };
    size_t clen[] = { 6, 3, strlen(LAY_CONFIG_PATTERN) };
    rp_xcheck(redisAsyncCommandArgv(x->ac, on_limits, NULL, 3, cargv, clen) == REDIS_OK,
              "the Redis CONFIG GET command");
}

static void idx_on_connect(const redisAsyncContext *ac, int status)
{
    struct idx *x = ac->data;

    if (x == NULL) {
        return;
    }
    if (status != REDIS_OK) {
        x->stats[IDX_STAT_disconnects]++;
        idx_redis_down(x, IDX_CONN_WRITER, ac->errstr);
        x->ac = NULL;   /* hiredis frees the context after this callback */
        x->handshake = 0;
        idx_schedule_retry(x);
        return;
    }
    x->stats[IDX_STAT_connects]++;
    x->progress_ms = rp_clock_ms();
    memset(x->filter, 0, IDX_FILTER_SLOTS * sizeof(*x->filter));
    log_notice("index", "%s: connected to Redis %s", x->pool, x->conf.redis.text);
    if (x->handshake > 0) {
        x->state = IDX_AUTHENTICATING;  /* on_handshake goes on */
        return;
    }
    /* Writes may go; healthy once Redis answers (idx_heard). */
    x->state = IDX_READY;
    idx_flush(x);
}

static void idx_connect(struct idx *x)
{
    redisAsyncContext *ac = x->conf.redis.is_unix ?
        redisAsyncConnectUnix(x->conf.redis.host) :
        redisAsyncConnect(x->conf.redis.host, x->conf.redis.port);

    if (ac == NULL || ac->err) {
        idx_redis_down(x, IDX_CONN_WRITER, ac ? ac->errstr : "out of memory");
        if (ac != NULL) {
            redisAsyncFree(ac);
        }
        idx_schedule_retry(x);
        return;
    }
    ac->data = x;
    x->ac = ac;
    x->state = IDX_CONNECTING;
    x->progress_ms = rp_clock_ms();
    rp_xcheck(redisLibeventAttach(ac, x->base) == REDIS_OK, "a Redis connection's events");
    redisAsyncSetConnectCallback(ac, idx_on_connect);
    redisAsyncSetDisconnectCallback(ac, idx_on_disconnect);
    /* Queued ahead of everything; writes wait for their replies. */
    idx_handshake(x);
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
    if (x->conf.reply_timeout <= 0) {
        x->conf.reply_timeout = IDX_REPLY_TIMEOUT_MS;    /* not from a file: the default */
    }
    lay_limits_default(&x->limits);
    if (x->conf.prefix != NULL && asprintf(&x->ring_key, "%s:ring", x->conf.prefix) < 0) {
        x->ring_key = NULL;
    }
    x->filter = calloc(IDX_FILTER_SLOTS, sizeof(*x->filter));
    x->shared = true;           /* until the first sync says we are alone */
    x->retry = evtimer_new(base, idx_on_retry, x);
    x->calm_timer = evtimer_new(base, on_calm, x);
    x->watch = event_new(base, -1, EV_PERSIST, idx_on_watch, x);
    x->health_since_ms = rp_clock_ms();
    if (!x->pool || !x->conf.redis.text || !x->conf.redis.host || !x->conf.prefix ||
        (conf->password && !x->conf.password) || !x->filter || !x->retry ||
        !x->calm_timer || !x->watch || !x->ring_key ||
        idx_load_ring(x, ring) != 0) {
        goto err;
    }
    uint64_t every = (uint64_t)x->conf.reply_timeout / 4;
    every = every > 1000 ? 1000 : every < 25 ? 25 : every;
    struct timeval tv = { (time_t)(every / 1000), (suseconds_t)(every % 1000) * 1000 };
    event_add(x->watch, &tv);
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
    if (x->calm_timer != NULL) {
        event_free(x->calm_timer);
    }
    if (x->watch != NULL) {
        event_free(x->watch);
    }
    for (uint32_t i = 0; x->vnode != NULL && i < x->ring->npoints; i++) {
        free(x->vnode[i]);
    }
    free(x->vnode);
    free(x->vnode_len);
    idx_vdir_free(x->vdir, x->ring != NULL ? x->ring->npoints : 0);
    free(x->picks);
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
    free(x->ring_key);
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
    struct idx_vdir *vdir = calloc(ring->npoints, sizeof(*vdir));

    for (uint32_t i = 0; vnode && vnode_len && g0 && g1 && vdir && i < ring->npoints; i++) {
        vnode_len[i] = idx_vnode_key(x->conf.prefix, ring, i, buf, sizeof(buf));
        if ((vnode[i] = strndup(buf, vnode_len[i])) == NULL) {
            goto err;
        }
        g0[i] = g1[i] = -1;
    }
    if (!vnode || !vnode_len || !g0 || !g1 || !vdir) {
        goto err;
    }
    for (uint32_t i = 0; x->vnode != NULL && i < x->ring->npoints; i++) {
        free(x->vnode[i]);
    }
    free(x->vnode);
    free(x->vnode_len);
    free(x->group_of[0]);
    free(x->group_of[1]);
    idx_vdir_free(x->vdir, x->ring != NULL ? x->ring->npoints : 0);
    ring_unref(x->ring);
    x->ring = ring_ref(ring);
    x->vdir = vdir;
    x->gen++;
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
    free(vdir);
    return -1;
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

/* score: the key's ring hash, as the request path computed it (pool_key_hash). */
static void idx_queue(struct idx *x, enum idx_op_type type, const char *key,
                      size_t len, uint32_t score)
{
    uint32_t point = ring_find(x->ring, score);
    uint64_t fp = fingerprint(key, len, point);
    uint64_t *slot = &x->filter[(fp >> 32) & (IDX_FILTER_SLOTS - 1)];

    if (type == IDX_OP_ADD && *slot == fp && !x->shared) {
        x->stats[IDX_STAT_filtered]++;
        return;
    }
    if (x->stats[IDX_STAT_queued] + x->stats[IDX_STAT_inflight] >=
        (uint64_t)x->conf.queue_max) {
        x->stats[IDX_STAT_dropped]++;
        if (x->conn[IDX_CONN_WRITER].health == IDX_H_OK) {
            /* Redis answers, but slower than stores come: say so. (In any
             * other state, that state is why the queue is full.) */
            char why[96];
            snprintf(why, sizeof(why), "%lld writes wait for Redis (queue_max)",
                     (long long)x->conf.queue_max);
            idx_set_health(x, IDX_CONN_WRITER, IDX_H_DROPPING, why);
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

void idx_count_dropped(struct idx *x, uint64_t n)
{
    if (x != NULL) {
        x->stats[IDX_STAT_dropped] += n;
    }
}

void idx_key_stored(struct idx *x, const char *key, size_t len, uint32_t hash)
{
    if (x != NULL) {
        idx_queue(x, IDX_OP_ADD, key, len, hash);
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
    /* the sets are emptied; the directories stay (layout.h, `empty`) */
    for (uint32_t i = 0; i < x->ring->npoints; i++) {
        for (uint32_t j = 0; j < x->vdir[i].n; j++) {
            x->vdir[i].sub[j].size = 0;
        }
    }
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

/* The first arguments of an index script call, into x->out (layout.h). */
static void out_head(struct idx *x, size_t argc, const char *op)
{
    const char *head[LAY_HEAD];
    size_t lens[LAY_HEAD];
    char nums[2][12];

    lay_head(head, lens, x->ring_key, op, &x->limits, nums);
    out_array(x, argc);
    for (int i = 0; i < LAY_HEAD; i++) {
        out_bulk(x, head[i], lens[i]);
    }
}

/* Send the pending flush's deletions: every v-node's sets, 256 v-nodes
 * per script (each v-node's sub-sets are named by its directory). */
static void idx_send_flush(struct idx *x)
{
    x->flush_pending = false;
    x->stats[IDX_STAT_queued] = x->nqueued;
    if (x->need_load) {
        idx_send_load(x);
    }
    for (uint32_t i = 0; i < x->ring->npoints; i += 256) {
        uint32_t n = x->ring->npoints - i < 256 ? x->ring->npoints - i : 256;
        x->out_len = 0;
        /* the directories stay: writers may still pick their lows (I-L2) */
        out_head(x, LAY_HEAD + n, "empty");
        for (uint32_t j = i; j < i + n; j++) {
            out_bulk(x, x->vnode[j], x->vnode_len[j]);
        }
        if (redisAsyncFormattedCommand(x->ac, on_reply, IDX_FLUSH_REPLY, x->out,
                                       x->out_len) == REDIS_OK) {
            idx_sent(x, 1);
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

/* Groups [g0, g1) of `type` (their members: n) as one index script. */
static void idx_emit_script(struct idx *x, uint8_t type, size_t g0, size_t g1, uint32_t n)
{
    size_t argc = LAY_HEAD + 2 * (size_t)n;
    char num[16];

    for (size_t g = g0; g < g1; g++) {
        argc += x->groups[g].type == type && !x->groups[g].plain ? 2 : 0;
    }
    x->out_len = 0;
    out_head(x, argc, type == IDX_OP_ADD ? "add" : "rem");
    for (size_t g = g0; g < g1; g++) {
        struct idx_group *grp = &x->groups[g];
        struct idx_op op;
        if (grp->type != type || grp->plain) {
            continue;
        }
        out_bulk(x, x->vnode[grp->point], x->vnode_len[grp->point]);
        out_bulk(x, num, (size_t)snprintf(num, sizeof(num), "%u", grp->count));
        for (size_t off = grp->first;; off = op.next) {
            op_at(x, off, &op);
            out_bulk(x, num, (size_t)snprintf(num, sizeof(num), "%u", op.score));
            out_bulk(x, x->arena + off + sizeof(op), op.keylen);
            if (off == grp->last) {
                break;
            }
        }
    }
    if (redisAsyncFormattedCommand(x->ac, on_reply, (void *)(uintptr_t)n,
                                   x->out, x->out_len) == REDIS_OK) {
        idx_sent(x, n);
        x->stats[type == IDX_OP_ADD ? IDX_STAT_adds : IDX_STAT_removes] += n;
    } else {
        x->stats[IDX_STAT_dropped] += n;
    }
}

static int pick_cmp(const void *a, const void *b)
{
    const struct idx_pick *p = a, *q = b;
    if (p->sub != q->sub) {
        return p->sub < q->sub ? -1 : 1;
    }
    return (int)p->list - (int)q->list;
}

/* One ZADD of picks[0..n) to `set`, or one RPUSH of their list entries
 * "<score> <key>" (layout.h, LAY_LONG_KEYS), counted by on_zadd. */
static void idx_emit_zadd(struct idx *x, uint32_t point, const char *set, size_t setlen,
                          uint32_t low, const struct idx_pick *picks, uint32_t n)
{
    struct idx_ask *a = malloc(sizeof(*a));
    bool list = picks[0].list;
    char num[16];

    if (a == NULL) {
        x->stats[IDX_STAT_dropped] += n;
        return;
    }
    *a = (struct idx_ask){ .gen = x->gen, .point = point, .low = low, .n = n, .list = list };
    x->out_len = 0;
    out_array(x, 2 + (list ? 1 : 2) * (size_t)n);
    out_bulk(x, list ? "RPUSH" : "ZADD", list ? 5 : 4);
    out_bulk(x, set, setlen);
    for (uint32_t i = 0; i < n; i++) {
        struct idx_op op;
        op_at(x, picks[i].off, &op);
        if (list) {
            out_bulk2(x, num, (size_t)snprintf(num, sizeof(num), "%u ", op.score),
                      x->arena + picks[i].off + sizeof(op), op.keylen);
            continue;
        }
        out_bulk(x, num, (size_t)snprintf(num, sizeof(num), "%u", op.score));
        out_bulk(x, x->arena + picks[i].off + sizeof(op), op.keylen);
    }
    if (redisAsyncFormattedCommand(x->ac, on_zadd, a, x->out, x->out_len) == REDIS_OK) {
        idx_sent(x, n);
        x->stats[IDX_STAT_adds] += n;
    } else {
        free(a);
        x->stats[IDX_STAT_dropped] += n;
    }
}

/*
 * An add group of a v-node whose directory is known, as plain commands: in
 * layout 1 one ZADD to the base; in layout 2 one ZADD per sub-set its
 * records pick (lay_pick) and one RPUSH per sub-range list for keys longer
 * than the value threshold (layout.h, LAY_LONG_KEYS: a twin it may add is
 * harmless). false when it cannot (out of memory): the script sends it.
 */
static bool idx_emit_plain(struct idx *x, const struct idx_group *grp)
{
    struct idx_vdir *v = &x->vdir[grp->point];
    const char *base = x->vnode[grp->point];
    size_t blen = x->vnode_len[grp->point];
    struct idx_op op;
    uint32_t n = 0;

    if (grp->count > x->picks_cap) {
        struct idx_pick *p = realloc(x->picks, grp->count * sizeof(*p));
        if (p == NULL) {
            return false;
        }
        x->picks = p;
        x->picks_cap = grp->count;
    }
    for (size_t off = grp->first;; off = op.next) {
        op_at(x, off, &op);
        uint32_t sub = 0;
        if (v->layout == 2) {
            int i = lay_pick(v->lows, v->n, op.score);
            sub = i < 0 ? 0 : (uint32_t)i;     /* lows[0] is 0: never < 0 */
        }
        x->picks[n++] = (struct idx_pick){
            .sub = sub, .off = off,
            .list = v->layout == 2 && op.keylen > x->limits.value };
        if (off == grp->last) {
            break;
        }
    }
    if (v->layout == 2) {
        qsort(x->picks, n, sizeof(*x->picks), pick_cmp);
    }
    for (uint32_t i = 0; i < n;) {
        uint32_t j = i, sub = x->picks[i].sub;
        bool list = x->picks[i].list;
        while (j < n && x->picks[j].sub == sub && x->picks[j].list == list &&
               j - i < IDX_SCRIPT_KEYS) {
            j++;
        }
        char set[1100];
        size_t len = blen;
        uint32_t low = UINT32_MAX;
        if (v->layout != 2) {
            memcpy(set, base, blen);
        } else {
            low = v->lows[sub];
            len = (size_t)snprintf(set, sizeof(set), "%s:%c%u", base, list ? 'l' : 's', low);
        }
        idx_emit_zadd(x, grp->point, set, len < sizeof(set) ? len : sizeof(set) - 1,
                      low, &x->picks[i], j - i);
        /* pending ones count: with many ZADDs in flight the split is
         * asked for before they pass the threshold, not after */
        if (low != UINT32_MAX) {
            struct idx_sub *sb = &v->sub[sub];
            uint64_t pd = (uint64_t)sb->pend + (j - i);
            sb->pend = pd > UINT32_MAX ? UINT32_MAX : (uint32_t)pd;
            if (sub_wants_split(x, sb, true) &&
                !v->asking) {
                idx_send_split(x, grp->point, low);
            }
        }
        i = j;
    }
    return true;
}

/*
 * The batch's groups as index scripts: one per op type and at most
 * IDX_SCRIPT_KEYS members (a group is never cut), adds first. A batch
 * holds no key under both ops (batch_conflict), so their order is free.
 */
static void idx_emit_groups(struct idx *x)
{
    uint64_t now = rp_clock_ms();

    if (x->need_load) {
        idx_send_load(x);
    }
    for (size_t g = 0; g < x->ngroups; g++) {
        struct idx_group *grp = &x->groups[g];
        struct idx_vdir *v = &x->vdir[grp->point];
        bool fresh = v->layout != 0 && now - v->learnt_ms < LAY_DIR_TTL_MS;
        if (grp->type == IDX_OP_ADD && fresh) {
            grp->plain = idx_emit_plain(x, grp);
        }
    }
    for (uint8_t type = IDX_OP_ADD; type <= IDX_OP_REM; type++) {
        size_t g0 = 0;
        uint32_t n = 0;
        for (size_t g = 0; g < x->ngroups; g++) {
            if (x->groups[g].type != type || x->groups[g].plain) {
                continue;
            }
            if (n > 0 && n + x->groups[g].count > IDX_SCRIPT_KEYS) {
                idx_emit_script(x, type, g0, g, n);
                g0 = g;
                n = 0;
            }
            n += x->groups[g].count;
        }
        if (n > 0) {
            idx_emit_script(x, type, g0, x->ngroups, n);
        }
    }
    /* A directory half its age is asked for again while still used, so a
     * v-node written steadily never falls back to the script. */
    for (size_t g = 0; g < x->ngroups; g++) {
        struct idx_vdir *v = &x->vdir[x->groups[g].point];
        if (x->groups[g].type == IDX_OP_ADD && !v->asking &&
            (v->layout == 0 || now - v->learnt_ms >= LAY_DIR_TTL_MS / 2)) {
            idx_send_ask(x, x->groups[g].point, UINT32_MAX);
        }
    }
    for (size_t g = 0; g < x->ngroups; g++) {
        x->group_of[x->groups[g].type][x->groups[g].point] = -1;
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
            /* sized to twice the records of the flush: never full */
            assert(x->nbatch_used < x->batch_cap / 2);
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
    uint32_t nrecords = 0;
    for (size_t off = 0; off < x->arena_len;
         off += sizeof(struct idx_op) + op.keylen) {
        op_at(x, off, &op);
        nrecords++;
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
    assert(nrecords == x->nqueued);     /* the arena holds what was counted */
    idx_emit_groups(x);
    x->arena_len = 0;
    x->nqueued = 0;
    x->stats[IDX_STAT_queued] = x->flush_pending;
}

const char *idx_hash_field(const struct redisReply *h, const char *field)
{
    for (size_t j = 0; h != NULL && h->type == REDIS_REPLY_ARRAY && j + 1 < h->elements;
         j += 2) {
        const redisReply *k = h->element[j], *v = h->element[j + 1];
        if (k->type == REDIS_REPLY_STRING && v->type == REDIS_REPLY_STRING &&
            strcmp(k->str, field) == 0) {
            return v->str;
        }
    }
    return NULL;
}
