/*
 * sweep.c — the index sweeper: walk every v-node set of the ring the data
 * obeys, ask each entry's owning backend whether it still holds the key,
 * and remove the entries of keys it does not (docs/ARCHITECTURE.md,
 * "The sweeper").
 *
 * Design notes
 * - The walk: ZSCAN of each set, in the ring's point order, COUNT sized to
 *   the rate. Each reply is a batch: its members are validated (a member
 *   that is not a memcached key is removed, never put in a command line),
 *   placed by the data ring (a member in another point's set is moved
 *   there, a wrong score is corrected), and the rest are asked about with a
 *   pipelined `mg <key> u` on the owner (HD: there, EN: gone; `u` so the
 *   look does not bump the key in memcached's LRU).
 * - Removal never loses a live key (invariant I7). A key can be stored
 *   again between our look and our removal, so keys that answered EN are
 *   removed first (ZREM, and we wait for Redis's reply), then asked again:
 *   any that answers HD now is put back. A store's ZADD is sent only after
 *   its backend confirmed it. A store confirmed before our second `mg` is
 *   seen by it; one confirmed after it sends its ZADD after our ZREM was
 *   applied, so its entry stays. A backend that cannot be asked the second
 *   time gets its entry back too.
 * - The proxies' re-store filter (index.c) skips the ZADD of a key a proxy
 *   alone on its prefix knows to be indexed: a removal would make it lie.
 *   So the sweeper first announces itself in <prefix>:proxies (field
 *   sweeper:<id>, a value no heartbeat parser accepts), which makes every
 *   proxy that syncs see a shared prefix and drop its filter, and removes
 *   nothing until every live heartbeat shows a sync begun after a sync that
 *   saw the announcement (two rounds: a proxy applies what a sync read only
 *   when the reply arrives, and it sends no sync before that).
 * - Every removal is one Lua script that refuses (removing nothing) while a
 *   migration record exists, when the ring record's epoch is not the one
 *   walked, or when the announcement is not ours any more. A migration thus
 *   stops removals at once, whatever this process has heard of it.
 * - In the background one proxy of the fleet sweeps: the holder of
 *   <prefix>:index:sweep:lock (SET NX PX, renewed each second by a script
 *   that also checks for a migration record and a rebuild, and keeps the
 *   position in <prefix>:index:sweep so a new holder resumes).
 * - Callbacks record results and kick a deferred event; batches finish,
 *   free and start new work there or on the tick, never inside the
 *   callback that completed them.
 * - Bounds: SWEEP_BATCHES_MAX batches and SWEEP_INFLIGHT_MAX entries in
 *   flight; the backend timeout on every `mg` (mconn), index.reply_timeout
 *   on Redis, as for the index writer (the connection is dropped and made
 *   again; the command gives up on a Redis it cannot reach for that long).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/time.h>
#include <unistd.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libevent.h>

#include "clock.h"
#include "config.h"
#include "defer.h"
#include "index.h"
#include "layout.h"
#include "log.h"
#include "mem.h"
#include "proto.h"
#include "mconn.h"
#include "ring.h"
#include "ringrec.h"
#include "sweep.h"

#define SWEEP_SCAN_COUNT 500            /* ZSCAN COUNT when unlimited */
#define SWEEP_BATCHES_MAX 16
#define SWEEP_INFLIGHT_MAX 16384        /* entries in batches */
#define SWEEP_GATE_MS 1000              /* lease, migration and rebuild check */
#define SWEEP_LEASE_MS 10000
#define SWEEP_ANNOUNCE_POLL_MS 250      /* while waiting for the proxies */
#define SWEEP_ANNOUNCE_REFRESH_MS 2000  /* once they saw us */
#define SWEEP_STALE_MS 60000            /* an announcement not refreshed for
                                           this long is dropped by the next
                                           sweeper that announces */
#define SWEEP_REDIS_TIMEOUT_MS 10000    /* without index.reply_timeout */
#define SWEEP_RECONNECT_MS 1000
#define SWEEP_SERVER_BACKOFF_MS 1000    /* a backend that failed is not asked */
#define SWEEP_LEAVE_TIMEOUT_MS 3000     /* the proxy waits 3.5 s at least
                                           (proxy.c, STOP_SWEEP_MS) */
#define SWEEP_CLI_LEAVE_TIMEOUT_MS 15000    /* the command waits for put-backs */
#define SWEEP_REFUSED_PAUSE_MS 5000     /* Redis refused a removal: wait */
#define SWEEP_RATE_WINDOW_MS 5000
#define SWEEP_LOG_MS 30000              /* background progress (info) */
#define SWEEP_CURSOR_MAX 24

#define SWEEP_STATE_NAME(e, name) [SWEEP_##e] = name,
const char *const sweep_state_names[SWEEP_STATE_COUNT] = {
    SWEEP_STATE_CODEC(SWEEP_STATE_NAME)
};
#undef SWEEP_STATE_NAME

#define SWEEP_STAT_DESC(n, k, h) [SWEEP_STAT_##n] = { #n, #k, h },
const struct sweep_stat_desc sweep_stat_desc[SWEEP_STAT_COUNT] = {
    SWEEP_STATS_CODEC(SWEEP_STAT_DESC)
};
#undef SWEEP_STAT_DESC

/* What became of one member of a batch. */
enum fate {
    F_CHECK,        /* to ask its owner */
    F_KEEP,         /* its owner holds it */
    F_GONE,         /* its owner does not (once, then twice) */
    F_MOVE,         /* in another point's set: moved there */
    F_RESCORE,      /* right set, wrong score: corrected */
    F_INVALID,      /* not a memcached key: removed */
    F_FAILED,       /* its owner could not be asked: kept */
    F_RESTORE,      /* removed, then found again: put back */
};

/* Where a batch is. */
enum step { B_CHECK, B_REMOVE, B_RECHECK, B_RESTORE, B_RESTORE_WAIT, B_DONE };

struct item {
    struct batch *b;
    uint32_t off, len;          /* bytes in b->keys */
    uint32_t hash;
    uint32_t owner;             /* the point that owns it */
    int64_t stored;             /* the score it was listed with; -1: not a hash */
    uint8_t fate;
};

struct batch {
    struct sweep *s;
    TAILQ_ENTRY(batch) link;
    uint32_t point;             /* the set it was listed from */
    char cursor[SWEEP_CURSOR_MAX];  /* the ZSCAN cursor that listed it */
    uint32_t n, waiting;
    enum step step;
    bool removed;               /* the removal script ran (or may have) */
    struct item *items;
    char *keys;
};
TAILQ_HEAD(batch_list, batch);

struct server {
    struct mconn *mc;
    uint64_t down_until;
};

/* The position a holder left in <prefix>:index:sweep. */
struct position {
    bool valid;
    char epoch[24], cursor[SWEEP_CURSOR_MAX];
    uint32_t point;
    uint64_t pass, checked, removed;
};

struct sweep {
    struct event_base *base;
    struct defer *defer;        /* frees its connections (defer.h) */
    char *pool, *prefix, *id, *field;   /* field: sweeper:<id> */
    char *ring_key;             /* <prefix>:ring, the index script's KEYS[1] */
    struct lay_limits limits;   /* the listpack thresholds (layout.h) */
    char *redis_host, *redis_text, *password;
    uint16_t redis_port;
    bool redis_unix;
    int64_t db;
    bool background;
    void (*forget)(void *arg, const char *key, size_t len);
    void *forget_arg;
    struct evdns_base *dns;     /* sweep_opts.dns */
    struct sweep_env env;       /* the last tick's (env.local not kept) */
    struct ring *local;         /* a reference to env.local */
    enum sweep_state state;
    char why[96];               /* why it pauses, for status */
    char error[256];            /* FAILED */
    uint64_t now;
    struct event *kick;         /* runs pump() outside callbacks */
    /* Redis */
    redisAsyncContext *rc;
    bool rc_up;                 /* commands may be sent (queued while connecting) */
    uint32_t rc_out;            /* commands unanswered */
    uint64_t rc_last;           /* a reply came, or the first command went */
    uint64_t rc_timeout;        /* ms: index.reply_timeout */
    uint64_t next_connect;
    uint64_t connect_since;     /* the command: trying (no answer) since */
    bool logged_down;
    /* the ring the data obeys, as recorded, with our addresses */
    struct ring *ring;
    char epoch[24];
    struct server *srv;
    bool need_ring, reading_ring;
    uint64_t ring_retry_at;     /* the record was missing or unusable */
    /* the lease (background) or the one check (command) */
    bool lease, gating, checked_once;
    uint64_t next_gate, refused_until;
    struct position resume;
    /* the announcement */
    char since[24];             /* "" none */
    uint64_t threshold;         /* 0: wait for syncs after `since` */
    bool seen;                  /* every live proxy saw it */
    bool announcing;            /* a poll is out */
    uint64_t next_announce;
    /* the walk */
    uint32_t point;
    char cursor[SWEEP_CURSOR_MAX];
    bool scan_out;
    uint64_t pass, pass_checked, pass_removed, pass_started;
    double tokens;
    uint64_t last_refill;
    struct batch_list batches;
    uint32_t nbatches, inflight;
    /* stopping */
    bool leaving, left, leave_sent, freeing;
    uint64_t leave_deadline;
    uint64_t stats[SWEEP_STAT_COUNT];
    uint64_t rate_at, rate_checked, next_log;
};

static void pump(struct sweep *s);
static void redis_connect(struct sweep *s);

/* --- small helpers ------------------------------------------------------------ */


static uint64_t clock_ms(struct sweep *s)
{
    s->now = rp_clock_ms();
    return s->now;
}

static void kick(struct sweep *s)
{
    if (!s->freeing) {
        event_active(s->kick, EV_TIMEOUT, 0);
    }
}

static void set_state(struct sweep *s, enum sweep_state st, const char *why)
{
    char was[sizeof(s->why)];

    snprintf(was, sizeof(was), "%s", s->why);
    snprintf(s->why, sizeof(s->why), "%s", why != NULL ? why : "");
    if (s->state == st && strcmp(was, s->why) == 0) {
        return;
    }
    if (s->background && st != SWEEP_DONE && st != SWEEP_FAILED) {
        log_write(st == SWEEP_STANDBY ? LOG_INFO : LOG_NOTICE, "sweep", "%s: %s%s%s", s->pool,
                  sweep_state_names[st], s->why[0] ? ": " : "", s->why);
    }
    s->state = st;
}

/* The command cannot go on. */
static void fail(struct sweep *s, const char *fmt, const char *detail)
{
    if (s->background || s->state == SWEEP_FAILED) {
        return;
    }
    snprintf(s->error, sizeof(s->error), fmt, detail);
    set_state(s, SWEEP_FAILED, NULL);
    s->leaving = true;
    s->leave_deadline = s->now + SWEEP_CLI_LEAVE_TIMEOUT_MS;
}

static void set_name(const struct sweep *s, uint32_t point, char *buf, size_t len)
{
    idx_vnode_key(s->prefix, s->ring, point, buf, len);
}

/* A decimal cursor Redis sent or a holder kept (neither is trusted): at
 * most 2^64 - 1, since ZSCAN refuses anything past it, every time. */
static bool cursor_ok(const char *c, size_t len)
{
    static const char max[] = "18446744073709551615";

    if (len == 0 || len >= SWEEP_CURSOR_MAX || len > sizeof(max) - 1) {
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        if (c[i] < '0' || c[i] > '9') {
            return false;
        }
    }
    return len < sizeof(max) - 1 || memcmp(c, max, len) <= 0;
}

static bool parse_u64(const char *v, uint64_t max, uint64_t *out)
{
    char *end;

    if (v == NULL || *v < '0' || *v > '9') {
        return false;
    }
    errno = 0;
    unsigned long long n = strtoull(v, &end, 10);
    if (errno != 0 || *end != '\0' || n > max) {
        return false;
    }
    *out = n;
    return true;
}

/* --- Redis --------------------------------------------------------------------- */

/* Called first by every reply callback: the watchdog's bookkeeping. Only
 * an answer (not a connect, not a NULL reply of a dropped connection) says
 * Redis is reached: one that accepts and never answers must end the command. */
static void replied(struct sweep *s, const void *reply)
{
    if (s->rc_out > 0) {
        s->rc_out--;
    }
    s->rc_last = clock_ms(s);
    if (reply != NULL) {
        s->connect_since = 0;
    }
}

/* Send argv; false when it cannot be sent now (the callback will not run). */
static bool redis_argv(struct sweep *s, redisCallbackFn *cb, void *priv, int argc,
                       const char **argv, const size_t *lens)
{
    if (!s->rc_up || s->rc == NULL ||
        redisAsyncCommandArgv(s->rc, cb, priv, argc, argv, lens) != REDIS_OK) {
        return false;
    }
    if (s->rc_out++ == 0) {
        s->rc_last = s->now;
    }
    return true;
}

/* EVAL script with keys, then args (NUL-terminated strings). */
static bool redis_eval(struct sweep *s, redisCallbackFn *cb, void *priv, const char *script,
                       int nkeys, const char *const *keys, int nargs,
                       const char *const *args)
{
    const char *argv[32];
    size_t lens[32];
    char nk[12];
    int n = 0;

    if (3 + nkeys + nargs > 32) {
        return false;
    }
    snprintf(nk, sizeof(nk), "%d", nkeys);
    argv[n++] = "EVAL";
    argv[n++] = script;
    argv[n++] = nk;
    for (int i = 0; i < nkeys; i++) {
        argv[n++] = keys[i];
    }
    for (int i = 0; i < nargs; i++) {
        argv[n++] = args[i];
    }
    for (int i = 0; i < n; i++) {
        lens[i] = strlen(argv[i]);
    }
    return redis_argv(s, cb, priv, n, argv, lens);
}

/* Redis answered an error where it should not: say so (once per state). */
static void redis_refused(struct sweep *s, const char *what, const redisReply *r)
{
    char why[sizeof(s->why)];

    snprintf(why, sizeof(why), "Redis refused %s: %.60s", what,
             r != NULL && r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
    if (!s->background) {
        fail(s, "%s", why);
        return;
    }
    s->refused_until = s->now + SWEEP_REFUSED_PAUSE_MS;
    if (s->state != SWEEP_PAUSED || strcmp(s->why, why) != 0) {
        log_error("sweep", "%s: %s; trying again in %d s", s->pool, why,
                  SWEEP_REFUSED_PAUSE_MS / 1000);
    }
    set_state(s, SWEEP_PAUSED, why);
}

static void on_auth(redisAsyncContext *ac, void *r, void *priv)
{
    struct sweep *s = priv;
    redisReply *reply = r;

    if (ac->data == NULL) {
        return;
    }
    replied(s, r);
    if (reply != NULL && reply->type == REDIS_REPLY_ERROR) {
        redis_refused(s, "AUTH or SELECT", reply);
    }
}

static void on_limits(redisAsyncContext *ac, void *r, void *priv)
{
    struct sweep *s = priv;

    if (ac->data == NULL) {
        return;
    }
    replied(s, r);
    if (r != NULL) {
        lay_limits_parse(&s->limits, r);    /* refused: Redis's defaults */
    }
}

static void sweep_on_connect(const redisAsyncContext *ac, int status)
{
    struct sweep *s = ac->data;

    if (s == NULL || ac != s->rc) {
        return;
    }
    if (status != REDIS_OK) {
        s->rc = NULL;       /* hiredis frees it after this callback */
        s->rc_up = false;
        s->rc_out = 0;
        s->next_connect = s->now + SWEEP_RECONNECT_MS;
        if (!s->logged_down) {
            s->logged_down = true;
            log_warn("sweep", "%s: cannot connect to Redis %s: %s", s->pool,
                     s->redis_text, ac->errstr);
        }
        return;
    }
    if (s->logged_down) {
        log_notice("sweep", "%s: connected to Redis %s", s->pool, s->redis_text);
    }
    s->logged_down = false;
}

static void sweep_on_disconnect(const redisAsyncContext *ac, int status)
{
    struct sweep *s = ac->data;

    if (s == NULL) {
        return;
    }
    if (ac == s->rc) {
        s->rc = NULL;
        s->rc_up = false;
    }
    s->rc_out = 0;
    s->lease = false;           /* it lapses; someone, maybe us, takes over */
    s->gating = s->announcing = s->scan_out = s->reading_ring = false;
    s->next_connect = s->now + SWEEP_RECONNECT_MS;
    if (status != REDIS_OK && !s->freeing && !s->logged_down) {
        s->logged_down = true;
        log_warn("sweep", "%s: lost Redis %s: %s", s->pool, s->redis_text, ac->errstr);
    }
    if (s->leaving) {
        s->left = true;         /* nobody to tell: the lease lapses */
    }
    kick(s);
}

static void redis_connect(struct sweep *s)
{
    redisAsyncContext *ac = s->redis_unix ? redisAsyncConnectUnix(s->redis_host) :
                            redisAsyncConnect(s->redis_host, s->redis_port);

    if (s->connect_since == 0) {
        s->connect_since = s->now;
    }
    if (ac == NULL || ac->err) {
        if (!s->logged_down) {
            s->logged_down = true;
            log_warn("sweep", "%s: cannot connect to Redis %s: %s", s->pool,
                     s->redis_text, ac != NULL ? ac->errstr : "out of memory");
        }
        if (ac != NULL) {
            redisAsyncFree(ac);
        }
        s->next_connect = s->now + SWEEP_RECONNECT_MS;
        return;
    }
    ac->data = s;
    s->rc = ac;
    s->rc_up = true;            /* commands queue until the connect completes */
    s->rc_out = 0;
    rp_xcheck(redisLibeventAttach(ac, s->base) == REDIS_OK, "a Redis connection's events");
    redisAsyncSetConnectCallback(ac, sweep_on_connect);
    redisAsyncSetDisconnectCallback(ac, sweep_on_disconnect);
    if (s->password != NULL) {
        const char *argv[] = { "AUTH", s->password };
        size_t lens[] = { 4, strlen(s->password) };
        rp_xcheck(redis_argv(s, on_auth, s, 2, argv, lens), "the Redis AUTH command");
    }
    if (s->db != 0) {
        char db[24];
        snprintf(db, sizeof(db), "%lld", (long long)s->db);
        const char *argv[] = { "SELECT", db };
        size_t lens[] = { 6, strlen(db) };
        rp_xcheck(redis_argv(s, on_auth, s, 2, argv, lens), "the Redis SELECT command");
    }
    /* The index script lists and puts back (layout.h); CONFIG may be refused. */
    const char *largv[3];
    size_t llen[3];
    lay_load_argv(largv, llen);
    rp_xcheck(redis_argv(s, on_auth, s, 3, largv, llen), "the Redis SCRIPT LOAD command");
    const char *cargv[] = { "CONFIG", "GET", LAY_CONFIG_PATTERN };
    size_t clen[] = { 6, 3, strlen(LAY_CONFIG_PATTERN) };
    rp_xcheck(redis_argv(s, on_limits, s, 3, cargv, clen), "the Redis CONFIG GET command");
}

/* Drop a connection that stopped answering (from the tick, never a
 * callback); pending callbacks get NULL replies, then we reconnect. */
static void redis_drop(struct sweep *s)
{
    redisAsyncContext *ac = s->rc;

    log_warn("sweep", "%s: Redis %s did not answer for %llu ms (index.reply_timeout): "
             "reconnecting", s->pool, s->redis_text, (unsigned long long)s->rc_timeout);
    s->rc = NULL;
    s->rc_up = false;
    redisAsyncFree(ac);
    s->rc_out = 0;
    s->gating = s->announcing = s->scan_out = s->reading_ring = false;
    s->lease = false;
    s->next_connect = s->now + SWEEP_RECONNECT_MS;
}

/* --- the ring the data obeys ------------------------------------------------------ */

/*
 * The recorded ring with the addresses of this proxy's ring (ring_relocate);
 * a server it does not name is refused unless the file follows unknown
 * servers. A new reference, or NULL (logged).
 */
static struct ring *localize(struct sweep *s, struct ring *rec)
{
    const char *unknown;
    char err[256];
    struct ring *l = ring_relocate(rec, s->local, s->env.follow_unknown, &unknown, err,
                                   sizeof(err));

    if (l == NULL) {
        log_error("sweep", "%s: cannot use the recorded ring: %s", s->pool, err);
    } else if (unknown != NULL) {
        log_warn("sweep", "%s: server %s is not in the config file: asking it at the "
                 "address Redis records (follow_unknown_servers)", s->pool, unknown);
    }
    return l;
}

static void servers_free(struct sweep *s)
{
    for (uint32_t i = 0; s->srv != NULL && s->ring != NULL && i < s->ring->nservers; i++) {
        mconn_free(s->srv[i].mc);
    }
    free(s->srv);
    s->srv = NULL;
}

/* Use ring r (a reference taken over): connections to its servers. */
static bool use_ring(struct sweep *s, struct ring *r)
{
    struct server *srv = calloc(r->nservers, sizeof(*srv));
    uint32_t timeout = s->env.timeout_ms ? s->env.timeout_ms : 5000;

    for (uint32_t i = 0; srv != NULL && i < r->nservers; i++) {
        struct conf_addr a;
        const char *why;
        if (conf_addr_parse(r->servers[i].addr, &a, &why) != 0) {
            log_error("sweep", "%s: server %s: address %s: %s", s->pool,
                      r->servers[i].identity, r->servers[i].addr, why);
            srv[i].down_until = UINT64_MAX;     /* its entries are kept */
            continue;
        }
        srv[i].mc = mconn_new(s->defer, a.host, a.port, a.is_unix, timeout);
        conf_addr_free(&a);
        if (srv[i].mc != NULL && s->dns != NULL) {
            mconn_set_dns(srv[i].mc, s->dns);
        }
        if (srv[i].mc == NULL) {
            srv[i].down_until = UINT64_MAX;
        }
    }
    if (srv == NULL) {
        ring_unref(r);
        return false;
    }
    servers_free(s);
    ring_unref(s->ring);
    s->ring = r;
    s->srv = srv;
    return true;
}

/* Begin pass `pass` at point 0, or resume where a holder left it. */
static void start_pass(struct sweep *s)
{
    struct position *pos = &s->resume;

    s->point = 0;
    snprintf(s->cursor, sizeof(s->cursor), "0");
    s->pass_checked = s->pass_removed = 0;
    s->pass = pos->valid ? pos->pass + 1 : s->pass + 1;
    if (pos->valid && strcmp(pos->epoch, s->epoch) == 0 && pos->point < s->ring->npoints) {
        s->pass = pos->pass;
        s->point = pos->point;
        snprintf(s->cursor, sizeof(s->cursor), "%s", pos->cursor);
        s->pass_checked = pos->checked;
        s->pass_removed = pos->removed;
        if (s->point > 0 || strcmp(s->cursor, "0") != 0) {
            log_notice("sweep", "%s: resuming pass %llu at v-node set %u of %u",
                       s->pool, (unsigned long long)s->pass, s->point, s->ring->npoints);
        }
    }
    pos->valid = false;
    s->pass_started = s->now;
}

/* No ring to walk: the command gives up, the background waits a while. */
static void ring_unusable(struct sweep *s, const char *fmt, const char *detail)
{
    char why[sizeof(s->why)];

    if (!s->background) {
        fail(s, fmt, detail);
        return;
    }
    snprintf(why, sizeof(why), fmt, detail);
    s->ring_retry_at = s->now + SWEEP_GATE_MS;
    set_state(s, SWEEP_PAUSED, why);
}

static void on_ring(redisAsyncContext *ac, void *r, void *priv)
{
    struct sweep *s = priv;
    redisReply *reply = r;
    uint64_t epoch;

    if (ac->data == NULL) {
        return;
    }
    replied(s, r);
    s->reading_ring = false;
    if (reply == NULL || s->leaving) {
        return;                 /* reconnecting (read again then), or stopping */
    }
    if (reply->type != REDIS_REPLY_ARRAY) {
        redis_refused(s, "HGETALL of the ring record", reply);
        return;
    }
    if (reply->elements == 0) {
        ring_unusable(s, "no ring record %s:ring: no proxy has served this pool with "
                      "this index yet", s->prefix);
        return;
    }
    const char **kv = calloc(reply->elements, sizeof(*kv));
    struct ring *rec = NULL, *l = NULL;
    for (size_t j = 0; kv != NULL && j < reply->elements; j++) {
        kv[j] = reply->element[j]->type == REDIS_REPLY_STRING ? reply->element[j]->str : "";
    }
    rec = kv != NULL ? ringrec_parse(kv, reply->elements, &epoch) : NULL;
    free(kv);
    if (rec == NULL) {
        ring_unusable(s, "the ring record %s:ring is malformed", s->prefix);
        return;
    }
    l = localize(s, rec);
    ring_unref(rec);
    if (l == NULL || !use_ring(s, l)) {
        ring_unusable(s, "%s", "the recorded ring cannot be built (out of memory?)");
        return;
    }
    snprintf(s->epoch, sizeof(s->epoch), "%llu", (unsigned long long)epoch);
    s->need_ring = false;
    start_pass(s);
    kick(s);
}

/* --- the lease and the gate ------------------------------------------------------- */

/* The position to keep in <prefix>:index:sweep: where the oldest unfinished
 * batch was listed from (entries of batches in flight are looked at again). */
static int position_args(struct sweep *s, char v[9][64], const char **args)
{
    static const char *const names[] = { "point", "cursor", "pass", "epoch", "checked",
                                         "removed", "holder", "updated" };
    const struct batch *b = TAILQ_FIRST(&s->batches);
    uint32_t point = b != NULL ? b->point : s->point;
    const char *cursor = b != NULL ? b->cursor : s->cursor;
    int n = 0;

    snprintf(v[0], 64, "%u", point);
    snprintf(v[1], 64, "%s", cursor);
    snprintf(v[2], 64, "%llu", (unsigned long long)s->pass);
    snprintf(v[3], 64, "%s", s->epoch);
    snprintf(v[4], 64, "%llu", (unsigned long long)s->pass_checked);
    snprintf(v[5], 64, "%llu", (unsigned long long)s->pass_removed);
    snprintf(v[6], 64, "%.63s", s->id);
    snprintf(v[7], 64, "%llu", (unsigned long long)time(NULL));    /* wall clock: read by status */
    for (int i = 0; i < 8; i++) {
        args[n++] = names[i];
        args[n++] = v[i];
    }
    return n;
}

static void read_position(struct sweep *s, const redisReply *h)
{
    struct position *pos = &s->resume;
    const char *ep = idx_hash_field(h, "epoch"), *cur = idx_hash_field(h, "cursor");
    uint64_t point = 0;

    memset(pos, 0, sizeof(*pos));
    if (ep == NULL || cur == NULL || strlen(ep) >= sizeof(pos->epoch) ||
        !cursor_ok(cur, strlen(cur)) || !parse_u64(idx_hash_field(h, "point"), UINT32_MAX, &point) ||
        !parse_u64(idx_hash_field(h, "pass"), UINT32_MAX, &pos->pass)) {
        return;
    }
    parse_u64(idx_hash_field(h, "checked"), UINT64_MAX / 2, &pos->checked);
    parse_u64(idx_hash_field(h, "removed"), UINT64_MAX / 2, &pos->removed);
    snprintf(pos->epoch, sizeof(pos->epoch), "%s", ep);
    snprintf(pos->cursor, sizeof(pos->cursor), "%s", cur);
    pos->point = (uint32_t)point;
    pos->valid = true;
}

static void on_gate(redisAsyncContext *ac, void *r, void *priv)
{
    struct sweep *s = priv;
    redisReply *reply = r;

    if (ac->data == NULL) {
        return;
    }
    replied(s, r);
    s->gating = false;
    if (reply == NULL) {
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[0]->type != REDIS_REPLY_INTEGER) {
        redis_refused(s, "the sweep lease script", reply);
        return;
    }
    long long verdict = reply->element[0]->integer;
    const redisReply *detail = reply->element[1];
    char why[sizeof(s->why)];

    if (verdict == 0) {
        /* A migration or a rebuild runs: the script gave up our lease. */
        snprintf(why, sizeof(why), "%.80s", detail->type == REDIS_REPLY_STRING ?
                 detail->str : "");
        s->lease = false;
        if (!s->background) {
            if (strstr(why, "migration") != NULL) {
                fail(s, "%s (<prefix>:migration exists): the sweep removes nothing "
                     "while keys move; run it once the resize has ended", why);
                return;
            }
            log_warn("sweep", "%s: %s; sweeping anyway (both only add or check)",
                     s->pool, why);
            s->checked_once = true;
            kick(s);
            return;
        }
        set_state(s, SWEEP_PAUSED, why);
        return;
    }
    if (verdict == 2) {
        snprintf(why, sizeof(why), "proxy %.60s holds the sweep lease",
                 detail->type == REDIS_REPLY_STRING ? detail->str : "?");
        s->lease = false;
        set_state(s, SWEEP_STANDBY, why);
        return;
    }
    if (s->background && !s->lease) {
        /* Just took it: resume where the last holder stopped. */
        log_notice("sweep", "%s: this proxy sweeps the index (lease %s:index:sweep:lock)",
                   s->pool, s->prefix);
        read_position(s, detail);
        s->need_ring = true;
    }
    s->lease = s->background;
    s->checked_once = true;
    kick(s);
}

/* A lock without an expiry (set by hand) is no lease: it would keep every
 * proxy waiting for good, so it is removed. */
static const char gate_script[] =
    "if redis.call('pttl', KEYS[1]) == -1 then redis.call('del', KEYS[1]) end "
    "local mine = redis.call('get', KEYS[1]) == ARGV[1] "
    "local why = nil "
    "if redis.call('exists', KEYS[2]) == 1 then why = 'a migration runs' else "
    "  local rb = redis.call('hget', KEYS[3], 'rebuild') "
    "  if rb == 'pending' or (rb and string.sub(rb, 1, 8) == 'running ') then "
    "    why = 'an index rebuild runs' end end "
    "if mine and #ARGV > 3 then redis.call('hset', KEYS[4], unpack(ARGV, 4)) end "
    "if why then "
    "  if mine then redis.call('del', KEYS[1]) end "
    "  return {0, why} end "
    "if ARGV[3] == '0' then return {1, {}} end "
    "if mine then redis.call('pexpire', KEYS[1], ARGV[2]) "
    "elseif not redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then "
    "  return {2, redis.call('get', KEYS[1]) or ''} end "
    "return {1, redis.call('hgetall', KEYS[4])}";

/* Background: take or renew the lease (keeping our position); the command:
 * is a migration running? */
static void gate(struct sweep *s)
{
    char lock[512], mig[512], index[512], state[512], ms[24], v[9][64];
    const char *keys[] = { lock, mig, index, state };
    const char *args[3 + 16];
    int n = 0;

    snprintf(lock, sizeof(lock), "%s:index:sweep:lock", s->prefix);
    snprintf(mig, sizeof(mig), "%s:migration", s->prefix);
    snprintf(index, sizeof(index), "%s:index", s->prefix);
    snprintf(state, sizeof(state), "%s:index:sweep", s->prefix);
    snprintf(ms, sizeof(ms), "%d", SWEEP_LEASE_MS);
    args[n++] = s->id;
    args[n++] = ms;
    args[n++] = s->background ? "1" : "0";
    if (s->background && s->lease && s->ring != NULL) {
        n += position_args(s, v, args + n);
    }
    if (redis_eval(s, on_gate, s, gate_script, 4, keys, n, args)) {
        s->gating = true;
    }
}

static void on_released(redisAsyncContext *ac, void *r, void *priv)
{
    struct sweep *s = priv;

    (void)r;
    if (ac->data == NULL) {
        return;
    }
    replied(s, r);
    if (s->leaving) {
        s->left = true;
    }
}

/* Give up the lease (keeping our position) and the announcement. */
static void release(struct sweep *s)
{
    static const char script[] =
        "if redis.call('get', KEYS[1]) == ARGV[1] then "
        "  if #ARGV > 2 then redis.call('hset', KEYS[3], unpack(ARGV, 3)) end "
        "  redis.call('del', KEYS[1]) end "
        "redis.call('hdel', KEYS[2], ARGV[2]) return 1";
    char lock[512], proxies[512], state[512], v[9][64];
    const char *keys[] = { lock, proxies, state };
    const char *args[2 + 16];
    int n = 0;

    snprintf(lock, sizeof(lock), "%s:index:sweep:lock", s->prefix);
    snprintf(proxies, sizeof(proxies), "%s:proxies", s->prefix);
    snprintf(state, sizeof(state), "%s:index:sweep", s->prefix);
    args[n++] = s->id;
    args[n++] = s->field;
    if (s->lease && s->ring != NULL) {
        n += position_args(s, v, args + n);
    }
    if (!redis_eval(s, on_released, s, script, 3, keys, n, args) && s->leaving) {
        s->left = true;         /* nobody to tell */
    }
    s->lease = false;
    s->since[0] = '\0';
    s->seen = false;
    s->threshold = 0;
}

/* --- the announcement ------------------------------------------------------------- */

static void on_announce(redisAsyncContext *ac, void *r, void *priv)
{
    struct sweep *s = priv;
    redisReply *reply = r;
    uint64_t now = 0;

    if (ac->data == NULL) {
        return;
    }
    replied(s, r);
    s->announcing = false;
    if (reply == NULL) {
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3 ||
        reply->element[0]->type != REDIS_REPLY_STRING ||
        reply->element[1]->type != REDIS_REPLY_STRING ||
        reply->element[2]->type != REDIS_REPLY_INTEGER ||
        strlen(reply->element[0]->str) >= sizeof(s->since) ||
        !parse_u64(reply->element[1]->str, UINT64_MAX / 2, &now)) {
        redis_refused(s, "the sweeper's announcement", reply);
        return;
    }
    if (s->leaving || (!s->lease && s->background)) {
        return;                 /* stopped meanwhile: release() removes it */
    }
    if (strcmp(reply->element[0]->str, s->since) != 0) {
        /* New, or ours vanished (stale, or Redis emptied): wait again. */
        snprintf(s->since, sizeof(s->since), "%s", reply->element[0]->str);
        s->threshold = 0;
        s->seen = false;
    } else if (!s->seen && reply->element[2]->integer == 1) {
        if (s->threshold == 0) {
            s->threshold = now;     /* every proxy read it; now once more */
        } else {
            s->seen = true;
        }
    }
    kick(s);
}

static void announce(struct sweep *s)
{
    static const char script[] =
        "local t = redis.call('time') "
        "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "
        "local since = ARGV[2] "
        "local cur = redis.call('hget', KEYS[1], ARGV[1]) "
        "if since == '' or not cur or string.match(cur, '^sweeper (%d+) ') ~= since then "
        "  local all = redis.call('hgetall', KEYS[1]) "
        "  for i = 1, #all, 2 do "
        "    local r = string.match(all[i + 1], '^sweeper %d+ (%d+)$') "
        "    if r and tonumber(r) + tonumber(ARGV[5]) < now then "
        "      redis.call('hdel', KEYS[1], all[i]) end end "
        "  since = string.format('%d', now) end "
        "redis.call('hset', KEYS[1], ARGV[1], 'sweeper ' .. since .. ' ' .. "
        "  string.format('%d', now)) "
        "local th = tonumber(ARGV[4] ~= '' and ARGV[4] or since) "
        "local seen = 1 "
        "local all = redis.call('hgetall', KEYS[1]) "
        "for i = 1, #all, 2 do "
        "  local at = tonumber(string.match(all[i + 1], '^(%d+) ')) "
        "  if at and at + tonumber(ARGV[3]) >= now and at <= th then seen = 0 end end "
        "return {since, string.format('%d', now), seen}";
    char proxies[512], window[24], th[24], stale[24];
    const char *keys[] = { proxies };
    const char *args[5];

    snprintf(proxies, sizeof(proxies), "%s:proxies", s->prefix);
    snprintf(window, sizeof(window), "%u", s->env.liveness_ms ? s->env.liveness_ms : 10000);
    if (s->threshold != 0) {
        snprintf(th, sizeof(th), "%llu", (unsigned long long)s->threshold);
    } else {
        th[0] = '\0';
    }
    snprintf(stale, sizeof(stale), "%d", SWEEP_STALE_MS);
    args[0] = s->field;
    args[1] = s->since;
    args[2] = window;
    args[3] = th;
    args[4] = stale;
    if (redis_eval(s, on_announce, s, script, 1, keys, 5, args)) {
        s->announcing = true;
        s->next_announce = s->now + (s->seen ? SWEEP_ANNOUNCE_REFRESH_MS :
                                     SWEEP_ANNOUNCE_POLL_MS);
    }
}

/* --- batches ----------------------------------------------------------------------- */

static void batch_free(struct batch *b)
{
    struct sweep *s = b->s;

    TAILQ_REMOVE(&s->batches, b, link);
    s->nbatches--;
    s->inflight -= b->n;
    free(b->items);
    free(b->keys);
    free(b);
}

static void on_check(void *arg, const struct mreply *r);
static void on_recheck(void *arg, const struct mreply *r);

/* Mark a backend down for a while after it failed to answer. */
static void server_failed(struct sweep *s, const struct item *it)
{
    s->srv[s->ring->points[it->owner].server].down_until = s->now + SWEEP_SERVER_BACKOFF_MS;
}

/* Ask the owner of each item in `fate` with `mg <key> u`; how many went. */
static uint32_t ask(struct batch *b, enum fate fate, mconn_cb cb)
{
    struct sweep *s = b->s;
    char line[16 + 250];
    uint32_t sent = 0;

    for (uint32_t i = 0; i < b->n; i++) {
        struct item *it = &b->items[i];
        if (it->fate != fate) {
            continue;
        }
        struct server *srv = &s->srv[s->ring->points[it->owner].server];
        int len = snprintf(line, sizeof(line), "mg %.*s u", (int)it->len, b->keys + it->off);
        bool down = srv->down_until > s->now || srv->mc == NULL;
        if (down || mconn_send(srv->mc, line, (size_t)len, NULL, 0, cb, it) != 0) {
            /* Not asked: the first time it is kept, the second put back. */
            it->fate = fate == F_CHECK ? F_FAILED : F_RESTORE;
            s->stats[SWEEP_STAT_errors]++;
            if (!down) {
                server_failed(s, it);
            }
            continue;
        }
        sent++;
    }
    b->waiting = sent;
    return sent;
}

static void on_check(void *arg, const struct mreply *r)
{
    struct item *it = arg;
    struct batch *b = it->b;
    struct sweep *s = b->s;

    if (s->freeing) {
        return;
    }
    clock_ms(s);
    switch (r->status) {
    case MREPLY_HD:
    case MREPLY_VA:
        it->fate = F_KEEP;
        break;
    case MREPLY_EN:
        it->fate = F_GONE;
        break;
    default:
        it->fate = F_FAILED;
        s->stats[SWEEP_STAT_errors]++;
        server_failed(s, it);
        break;
    }
    if (--b->waiting == 0) {
        b->step = B_REMOVE;
        kick(s);
    }
}

static void on_recheck(void *arg, const struct mreply *r)
{
    struct item *it = arg;
    struct batch *b = it->b;
    struct sweep *s = b->s;

    if (s->freeing) {
        return;
    }
    clock_ms(s);
    if (r->status == MREPLY_EN) {
        it->fate = F_GONE;
    } else {
        /* Stored again meanwhile, or it cannot be told: put it back. */
        it->fate = F_RESTORE;
        if (r->status != MREPLY_HD && r->status != MREPLY_VA) {
            s->stats[SWEEP_STAT_errors]++;
            server_failed(s, it);
        }
    }
    if (--b->waiting == 0) {
        b->step = B_RESTORE;
        kick(s);
    }
}

/* The entries of gone keys were (or may have been) removed: the proxy's
 * index must not believe them indexed any more, before the second look. */
static void forget_gone(struct batch *b)
{
    struct sweep *s = b->s;

    for (uint32_t i = 0; s->forget != NULL && i < b->n; i++) {
        if (b->items[i].fate == F_GONE) {
            s->forget(s->forget_arg, b->keys + b->items[i].off, b->items[i].len);
        }
    }
}

/*
 * The removal script's verdict on a batch. Its refusals ("migration",
 * "ring", "announce") come before any write; anything else (no answer, an
 * error) may have removed some members, so the gone ones are looked at
 * again and put back if there.
 */
static void on_removed(redisAsyncContext *ac, void *r, void *priv)
{
    struct batch *b = priv;
    struct sweep *s = b->s;
    redisReply *reply = r;

    if (ac->data == NULL) {
        return;
    }
    replied(s, r);
    b->waiting = 0;
    const char *verdict = reply != NULL && reply->type == REDIS_REPLY_STRING ?
                          reply->str : NULL;
    if (verdict != NULL && strcmp(verdict, "ok") == 0) {
        uint64_t moved = 0, invalid = 0;
        for (uint32_t i = 0; i < b->n; i++) {
            moved += b->items[i].fate == F_MOVE || b->items[i].fate == F_RESCORE;
            invalid += b->items[i].fate == F_INVALID;
        }
        s->stats[SWEEP_STAT_removed_wrong_set] += moved;
        s->stats[SWEEP_STAT_removed_invalid] += invalid;
        s->pass_removed += moved + invalid;
        b->removed = true;
        b->step = B_RECHECK;
        forget_gone(b);
        kick(s);
        return;
    }
    s->stats[SWEEP_STAT_refused]++;
    if (verdict == NULL || (strcmp(verdict, "migration") != 0 &&
                            strcmp(verdict, "ring") != 0 && strcmp(verdict, "announce") != 0)) {
        b->step = B_RECHECK;
        forget_gone(b);
        if (reply != NULL) {
            redis_refused(s, "a removal", reply);
        }
        kick(s);
        return;
    }
    /* Refused before any write: nothing was removed. */
    for (uint32_t i = 0; i < b->n; i++) {
        if (b->items[i].fate == F_GONE) {
            b->items[i].fate = F_KEEP;
        }
    }
    b->step = B_DONE;
    if (strcmp(verdict, "migration") == 0) {
        if (!s->background) {
            fail(s, "%s", "a migration began (<prefix>:migration exists): the sweep "
                 "stopped; run it again once the resize has ended");
        } else {
            s->lease = false;   /* the next gate says so and gives it up */
            s->next_gate = 0;
            set_state(s, SWEEP_PAUSED, "a migration runs");
        }
    } else if (strcmp(verdict, "ring") == 0) {
        if (!s->background) {
            fail(s, "%s", "the ring record changed during the pass (a resize ended?)");
        } else {
            s->need_ring = true;
            s->resume.valid = false;
        }
    } else {
        /* "announce": ours vanished; announce again, then go on. */
        s->since[0] = '\0';
        s->seen = false;
        s->threshold = 0;
    }
    kick(s);
}

/* ARGV: epoch, field, since, nrem, nmove, the thresholds, then per move
 * (target's KEYS index, score, member, score listed), per removal (score
 * listed, member). The index script's functions place and find members in
 * either layout (layout.c); a rescore in layout 2 may change sub-set. */
static const char remove_script[] =
    "local R, LIM, VMAX = KEYS[1], tonumber(ARGV[6]), tonumber(ARGV[7]) "
    "%s"
    "if redis.call('exists', KEYS[2]) == 1 then return 'migration' end "
    "if redis.call('hget', KEYS[1], 'epoch') ~= ARGV[1] then return 'ring' end "
    "local me = redis.call('hget', KEYS[3], ARGV[2]) "
    "if not me or string.match(me, '^sweeper (%%d+) ') ~= ARGV[3] then "
    "  return 'announce' end "
    "local i = 8 "
    "for m = 1, tonumber(ARGV[5]) do "
    "  local t, sc, mem, old = KEYS[tonumber(ARGV[i])], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3] "
    "  add1(t, sc, mem) "
    "  if t == KEYS[4] and LAY >= 2 then "
    "    redis.call('zrem', t, mem) "
    "    local n = low_of(dir(t), sc) "
    "    unfile(t, tonumber(old) or -1, mem, n) end "
    "  i = i + 4 end "
    "for m = 1, tonumber(ARGV[4]) do rem1(KEYS[4], ARGV[i], ARGV[i + 1]) i = i + 2 end "
    "return 'ok'";

/*
 * Remove what the batch found gone, misplaced or invalid, in one script
 * guarded as the design notes say. Moves are ZADDed to their own set
 * before this one's ZREM, in the same script: an error leaves a member in
 * both sets, never in none.
 */
static void batch_remove(struct batch *b)
{
    struct sweep *s = b->s;
    uint32_t nrem = 0, nmove = 0, ntargets = 0;
    static char *script;        /* remove_script with the functions in */
    char limits[2][12];

    for (uint32_t i = 0; i < b->n; i++) {
        uint8_t f = b->items[i].fate;
        nrem += f == F_GONE || f == F_MOVE || f == F_INVALID;
        nmove += f == F_MOVE || f == F_RESCORE;
    }
    if (nrem + nmove == 0) {
        b->step = B_DONE;
        return;
    }
    /* argv: EVAL script nkeys, keys (ring, migration, proxies, set, targets),
     * args (epoch, field, since, nrem, nmove, limits, moves, removals) */
    size_t cap = 3 + 4 + nmove + 7 + 4 * (size_t)nmove + 2 * (size_t)nrem;
    const char **argv = calloc(cap, sizeof(*argv));
    size_t *lens = calloc(cap, sizeof(*lens));
    char (*names)[512] = calloc(4 + (size_t)nmove, sizeof(*names));
    char (*nums)[16] = calloc(3 * (size_t)nmove + nrem + 3, sizeof(*nums));
    int argc = 0;

    if (argv == NULL || lens == NULL || names == NULL || nums == NULL) {
        b->step = B_DONE;       /* out of memory: keep them all */
        goto out;
    }
    if (script == NULL && asprintf(&script, remove_script, lay_lib) < 0) {
        script = NULL;
        b->step = B_DONE;       /* out of memory: keep them all */
        goto out;
    }
    snprintf(names[0], 512, "%s:ring", s->prefix);
    snprintf(names[1], 512, "%s:migration", s->prefix);
    snprintf(names[2], 512, "%s:proxies", s->prefix);
    set_name(s, b->point, names[3], 512);
    ntargets = 4;
    /* targets: one key per distinct set a member moves to (the batch's own
     * set for a rescore) */
    uint32_t *key_of = calloc(b->n, sizeof(*key_of));
    if (key_of == NULL) {
        b->step = B_DONE;
        goto out;
    }
    for (uint32_t i = 0; i < b->n; i++) {
        const struct item *it = &b->items[i];
        if (it->fate != F_MOVE && it->fate != F_RESCORE) {
            continue;
        }
        char name[512];
        set_name(s, it->owner, name, sizeof(name));
        uint32_t k = 0;
        while (k < ntargets && strcmp(names[k], name) != 0) {
            k++;
        }
        if (k == ntargets) {
            memcpy(names[ntargets++], name, sizeof(name));
        }
        key_of[i] = k + 1;      /* Lua's KEYS index */
    }
    argv[argc++] = "EVAL";
    argv[argc++] = script;
    snprintf(nums[0], 16, "%u", ntargets);
    argv[argc++] = nums[0];
    for (uint32_t k = 0; k < ntargets; k++) {
        argv[argc++] = names[k];
    }
    argv[argc++] = s->epoch;
    argv[argc++] = s->field;
    argv[argc++] = s->since;
    snprintf(nums[1], 16, "%u", nrem);
    snprintf(nums[2], 16, "%u", nmove);
    argv[argc++] = nums[1];
    argv[argc++] = nums[2];
    snprintf(limits[0], sizeof(limits[0]), "%u", s->limits.entries);
    snprintf(limits[1], sizeof(limits[1]), "%u", s->limits.value);
    argv[argc++] = limits[0];
    argv[argc++] = limits[1];
    for (int i = 0; i < argc; i++) {
        lens[i] = strlen(argv[i]);
    }
    uint32_t m = 3;
    for (uint32_t i = 0; i < b->n; i++) {
        const struct item *it = &b->items[i];
        if (it->fate != F_MOVE && it->fate != F_RESCORE) {
            continue;
        }
        snprintf(nums[m], 16, "%u", key_of[i]);
        snprintf(nums[m + 1], 16, "%u", it->hash);
        snprintf(nums[m + 2], 16, "%lld", (long long)it->stored);
        for (int k = 0; k < 3; k++) {
            argv[argc] = nums[m + (uint32_t)k];
            lens[argc] = strlen(argv[argc]);
            argc++;
            if (k == 1) {
                argv[argc] = b->keys + it->off;
                lens[argc++] = it->len;
            }
        }
        m += 3;
    }
    for (uint32_t i = 0; i < b->n; i++) {
        const struct item *it = &b->items[i];
        if (it->fate == F_GONE || it->fate == F_MOVE || it->fate == F_INVALID) {
            snprintf(nums[m], 16, "%lld", (long long)it->stored);
            argv[argc] = nums[m];
            lens[argc] = strlen(argv[argc]);
            argc++;
            m++;
            argv[argc] = b->keys + it->off;
            lens[argc++] = it->len;
        }
    }
    free(key_of);
    if (redis_argv(s, on_removed, b, argc, argv, lens)) {
        b->step = B_REMOVE;     /* the reply moves it on */
        b->waiting = 1;
    } else {
        /* Redis away: nothing removed, nothing to undo. */
        s->stats[SWEEP_STAT_refused]++;
        b->step = B_DONE;
    }
out:
    free(argv);
    free(lens);
    free(names);
    free(nums);
}

static void on_restored(redisAsyncContext *ac, void *r, void *priv)
{
    struct batch *b = priv;
    struct sweep *s = b->s;
    redisReply *reply = r;

    if (ac->data == NULL) {
        return;
    }
    replied(s, r);
    b->waiting = 0;
    if (reply == NULL || reply->type != REDIS_REPLY_INTEGER) {
        /* Not confirmed: these keys are on their backend and maybe in no
         * set. Never dropped: sent again until Redis confirms. */
        if (reply != NULL && !s->background) {
            fail(s, "Redis refused to put back entries of keys stored again "
                 "during the sweep: %.80s", reply->type == REDIS_REPLY_ERROR ?
                 reply->str : "unexpected reply");
        }
        b->step = B_RESTORE_WAIT;
        kick(s);
        return;
    }
    b->step = B_DONE;
    kick(s);
}

/* ZADD back every F_RESTORE item (their own set, their own score). */
static void batch_restore(struct batch *b)
{
    struct sweep *s = b->s;
    uint32_t n = 0;

    for (uint32_t i = 0; i < b->n; i++) {
        n += b->items[i].fate == F_RESTORE;
    }
    if (n == 0) {
        b->step = B_DONE;
        return;
    }
    const char **argv = calloc(LAY_HEAD + 2 + 2 * (size_t)n, sizeof(*argv));
    size_t *lens = calloc(LAY_HEAD + 2 + 2 * (size_t)n, sizeof(*lens));
    char (*scores)[16] = calloc(n + 1, sizeof(*scores));
    char name[512], nums[2][12];
    int argc = 0;

    if (argv == NULL || lens == NULL || scores == NULL) {
        b->step = B_RESTORE_WAIT;       /* try again on the next pump */
        goto out;
    }
    /* the index script's add: where the layout in force puts them */
    set_name(s, b->point, name, sizeof(name));
    argc = lay_head(argv, lens, s->ring_key, "add", &s->limits, nums);
    argv[argc] = name;
    lens[argc++] = strlen(name);
    snprintf(scores[n], sizeof(scores[n]), "%u", n);
    argv[argc] = scores[n];
    lens[argc++] = strlen(scores[n]);
    for (uint32_t i = 0, k = 0; i < b->n; i++) {
        const struct item *it = &b->items[i];
        if (it->fate != F_RESTORE) {
            continue;
        }
        snprintf(scores[k], sizeof(scores[k]), "%u", it->hash);
        argv[argc] = scores[k];
        lens[argc++] = strlen(scores[k]);
        argv[argc] = b->keys + it->off;
        lens[argc++] = it->len;
        k++;
    }
    b->step = redis_argv(s, on_restored, b, argc, argv, lens) ? B_RESTORE : B_RESTORE_WAIT;
    b->waiting = b->step == B_RESTORE;
out:
    free(argv);
    free(lens);
    free(scores);
}

/* Count what a finished batch did. */
static void batch_account(struct batch *b)
{
    struct sweep *s = b->s;

    for (uint32_t i = 0; i < b->n; i++) {
        uint8_t f = b->items[i].fate;
        if (f == F_GONE && b->removed) {
            s->stats[SWEEP_STAT_removed_gone]++;
            s->pass_removed++;
        } else if (f == F_RESTORE) {
            s->stats[SWEEP_STAT_restored]++;
        }
    }
}

/* Move a batch along: called from pump(), never from a reply callback. */
static void batch_advance(struct batch *b)
{
    struct sweep *s = b->s;

    switch (b->step) {
    case B_REMOVE:
        if (b->waiting == 0 && (s->leaving || s->state != SWEEP_SWEEPING)) {
            b->step = B_DONE;   /* stopped: remove nothing, keep them all */
        } else if (b->waiting == 0) {
            batch_remove(b);
        }
        break;
    case B_RECHECK:
        if (b->waiting == 0 && ask(b, F_GONE, on_recheck) == 0) {
            b->step = B_RESTORE;        /* nothing asked (all put back) */
            batch_advance(b);
        }
        break;
    case B_RESTORE:
        if (b->waiting == 0) {
            batch_restore(b);
        }
        break;
    case B_RESTORE_WAIT:
        if (s->rc_up && s->rc != NULL) {
            b->waiting = 0;
            batch_restore(b);
        }
        break;
    default:
        break;
    }
}

/* A ZSCAN reply's members as a batch of set `point`. */
static struct batch *batch_new(struct sweep *s, uint32_t point, const char *cursor,
                               const redisReply *members)
{
    struct batch *b = calloc(1, sizeof(*b));
    size_t n = members->elements / 2, bytes = 0;

    for (size_t j = 0; j < n; j++) {
        const redisReply *m = members->element[2 * j];
        bytes += m->type == REDIS_REPLY_STRING ? (size_t)m->len : 0;
    }
    if (b == NULL || n > UINT32_MAX || bytes > UINT32_MAX ||
        (b->items = calloc(n ? n : 1, sizeof(*b->items))) == NULL ||
        (b->keys = malloc(bytes ? bytes : 1)) == NULL) {
        if (b != NULL) {
            free(b->items);
        }
        free(b);
        return NULL;
    }
    b->s = s;
    b->point = point;
    snprintf(b->cursor, sizeof(b->cursor), "%s", cursor);
    size_t off = 0;
    for (size_t j = 0; j < n; j++) {
        const redisReply *m = members->element[2 * j], *sc = members->element[2 * j + 1];
        struct item *it = &b->items[b->n];
        if (m->type != REDIS_REPLY_STRING) {
            continue;           /* ZSCAN sends strings; nothing to name it by */
        }
        it->b = b;
        it->off = (uint32_t)off;
        it->len = (uint32_t)m->len;
        uint64_t score;
        bool hash_ok = sc->type == REDIS_REPLY_STRING &&
                       parse_u64(sc->str, UINT32_MAX, &score);
        it->stored = hash_ok ? (int64_t)score : -1;
        memcpy(b->keys + off, m->str, m->len);
        off += m->len;
        b->n++;
        if (!proto_key_ok(m->str, m->len)) {
            it->fate = F_INVALID;
            continue;
        }
        it->hash = ring_key_hash(s->ring, m->str, m->len);
        it->owner = ring_find(s->ring, it->hash);
        bool score_ok = hash_ok && score == it->hash;
        it->fate = F_CHECK;
        if (it->owner != point) {
            char here[512], there[512];
            set_name(s, point, here, sizeof(here));
            set_name(s, it->owner, there, sizeof(there));
            it->fate = strcmp(here, there) != 0 ? F_MOVE : score_ok ? F_CHECK : F_RESCORE;
            if (it->fate == F_CHECK || it->fate == F_RESCORE) {
                it->owner = point;      /* the same set under another point */
            }
        } else if (!score_ok) {
            it->fate = F_RESCORE;
        }
    }
    TAILQ_INSERT_TAIL(&s->batches, b, link);
    s->nbatches++;
    s->inflight += b->n;
    s->stats[SWEEP_STAT_checked] += b->n;
    s->pass_checked += b->n;
    s->tokens -= (double)b->n;
    b->step = B_CHECK;
    if (ask(b, F_CHECK, on_check) == 0) {
        b->step = B_REMOVE;
    }
    return b;
}

/* --- the walk ----------------------------------------------------------------------- */

static void on_scan(redisAsyncContext *ac, void *r, void *priv)
{
    struct sweep *s = priv;
    redisReply *reply = r;

    if (ac->data == NULL) {
        return;
    }
    replied(s, r);
    s->scan_out = false;
    if (reply == NULL) {
        return;                 /* the same cursor is listed again */
    }
    if (reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "WRONGTYPE", 9) == 0) {
        char name[512];
        set_name(s, s->point, name, sizeof(name));
        log_warn("sweep", "%s: %s is not a sorted set: skipped", s->pool, name);
        s->point++;
        snprintf(s->cursor, sizeof(s->cursor), "0");
        kick(s);
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR && lay_noscript(reply->str)) {
        const char *argv[3];
        size_t lens[3];
        lay_load_argv(argv, lens);
        redis_argv(s, on_auth, s, 3, argv, lens);   /* Redis lost it: again */
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[0]->type != REDIS_REPLY_STRING ||
        !cursor_ok(reply->element[0]->str, reply->element[0]->len) ||
        reply->element[1]->type != REDIS_REPLY_ARRAY ||
        reply->element[1]->elements % 2 != 0) {
        redis_refused(s, "ZSCAN", reply);
        return;
    }
    char used[SWEEP_CURSOR_MAX];
    uint32_t point = s->point;
    snprintf(used, sizeof(used), "%s", s->cursor);
    snprintf(s->cursor, sizeof(s->cursor), "%s", reply->element[0]->str);
    if (strcmp(s->cursor, "0") == 0) {
        s->point++;
    }
    if (reply->element[1]->elements > 0 && batch_new(s, point, used, reply->element[1]) == NULL) {
        log_error("sweep", "%s: out of memory: v-node set %u left for the next pass",
                  s->pool, point);
    }
    kick(s);
}

/* The next page of set `point`, every layout at once: the index script
 * answers as ZSCAN does, its cursor a score (layout.c). */
static void scan(struct sweep *s)
{
    char name[512], count[16], nums[2][12];
    int64_t rate = s->env.rate;
    long n = rate > 0 ? (long)(rate / 10) : SWEEP_SCAN_COUNT;
    const char *argv[LAY_HEAD + 3];
    size_t lens[LAY_HEAD + 3];

    n = n < 16 ? 16 : n > SWEEP_SCAN_COUNT ? SWEEP_SCAN_COUNT : n;
    set_name(s, s->point, name, sizeof(name));
    snprintf(count, sizeof(count), "%ld", n);
    int argc = lay_head(argv, lens, s->ring_key, "scan", &s->limits, nums);
    argv[argc] = name;
    lens[argc++] = strlen(name);
    argv[argc] = s->cursor;
    lens[argc++] = strlen(s->cursor);
    argv[argc] = count;
    lens[argc++] = strlen(count);
    if (redis_argv(s, on_scan, s, argc, argv, lens)) {
        s->scan_out = true;
    }
}

static void pass_done(struct sweep *s)
{
    double secs = (double)(s->now - s->pass_started) / 1000.0;

    s->stats[SWEEP_STAT_passes]++;
    if (s->background) {
        /* notice when it removed something, else info */
        log_write(s->pass_removed > 0 ? LOG_NOTICE : LOG_INFO,
                  "sweep", "%s: pass %llu done in %.0f s: %llu entries looked at, %llu "
                   "removed; since start %llu gone, %llu in the wrong set, %llu not keys, "
                   "%llu put back, %llu kept on errors", s->pool,
                   (unsigned long long)s->pass, secs, (unsigned long long)s->pass_checked,
                   (unsigned long long)s->pass_removed,
                   (unsigned long long)s->stats[SWEEP_STAT_removed_gone],
                   (unsigned long long)s->stats[SWEEP_STAT_removed_wrong_set],
                   (unsigned long long)s->stats[SWEEP_STAT_removed_invalid],
                   (unsigned long long)s->stats[SWEEP_STAT_restored],
                   (unsigned long long)s->stats[SWEEP_STAT_errors]);
        s->need_ring = true;    /* the next pass reads the record again */
        /* index: sweep_interval: a small index would otherwise be walked,
         * each of its sets ZSCANned, without pause */
        s->ring_retry_at = s->pass_started + s->env.pass_min_ms;
        s->resume.valid = false;
        s->next_gate = 0;       /* keep the new position */
        return;
    }
    set_state(s, SWEEP_DONE, NULL);
    s->leaving = true;
    s->leave_deadline = s->now + SWEEP_CLI_LEAVE_TIMEOUT_MS;
}

/* Finish and advance batches; list more while the budget allows. */
static void pump(struct sweep *s)
{
    struct batch *b, *next;

    for (b = TAILQ_FIRST(&s->batches); b != NULL; b = next) {
        next = TAILQ_NEXT(b, link);
        if (b->step == B_DONE) {
            batch_account(b);
            batch_free(b);
        } else {
            batch_advance(b);
        }
    }
    if (s->state != SWEEP_SWEEPING || s->need_ring || s->ring == NULL) {
        return;
    }
    if (s->env.rate > 0) {
        double burst = (double)s->env.rate / 5.0 > SWEEP_SCAN_COUNT ?
                       (double)s->env.rate / 5.0 : SWEEP_SCAN_COUNT;
        s->tokens += (double)s->env.rate * (double)(s->now - s->last_refill) / 1000.0;
        s->tokens = s->tokens > burst ? burst : s->tokens;
    }
    s->last_refill = s->now;
    if (!s->scan_out && s->point < s->ring->npoints && s->nbatches < SWEEP_BATCHES_MAX &&
        s->inflight < SWEEP_INFLIGHT_MAX && (s->env.rate == 0 || s->tokens > 0)) {
        scan(s);
    }
    if (s->point >= s->ring->npoints && !s->scan_out && s->nbatches == 0) {
        pass_done(s);
    }
}

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
    struct sweep *s = arg;

    (void)fd, (void)what;
    clock_ms(s);
    pump(s);
}

/* --- the tick ------------------------------------------------------------------------ */

/* Stop listing: give up the lease and the announcement (once). */
static void stop(struct sweep *s, enum sweep_state st, const char *why)
{
    if (s->lease || s->since[0] != '\0') {
        release(s);
    }
    set_state(s, st, why);
}

static void update_rate(struct sweep *s)
{
    if (s->rate_at == 0) {
        s->rate_at = s->now;
        s->rate_checked = s->stats[SWEEP_STAT_checked];
    } else if (s->now >= s->rate_at + SWEEP_RATE_WINDOW_MS) {
        s->stats[SWEEP_STAT_rate] = (s->stats[SWEEP_STAT_checked] - s->rate_checked) *
                                    1000 / (s->now - s->rate_at);
        s->rate_at = s->now;
        s->rate_checked = s->stats[SWEEP_STAT_checked];
    }
    if (s->background && s->state == SWEEP_SWEEPING && s->now >= s->next_log) {
        s->next_log = s->now + SWEEP_LOG_MS;
        log_info("sweep", "%s: pass %llu, v-node set %u of %u, %llu looked at (%llu/s), "
                 "%llu removed", s->pool, (unsigned long long)s->pass, s->point,
                 s->ring != NULL ? s->ring->npoints : 0, (unsigned long long)s->pass_checked,
                 (unsigned long long)s->stats[SWEEP_STAT_rate],
                 (unsigned long long)s->pass_removed);
    }
}

void sweep_tick(struct sweep *s, uint64_t now, const struct sweep_env *env)
{
    if (s == NULL) {
        return;
    }
    s->now = now;
    s->env = *env;
    if (env->local != s->local) {
        ring_unref(s->local);
        s->local = env->local != NULL ? ring_ref((struct ring *)env->local) : NULL;
    }
    s->env.local = NULL;
    update_rate(s);
    if (s->rc != NULL && s->rc_out > 0 && now > s->rc_last + s->rc_timeout) {
        redis_drop(s);
    }
    if (s->leaving) {
        if (!s->leave_sent) {
            s->leave_sent = true;
            release(s);
        }
        if (now >= s->leave_deadline) {
            s->left = true;
        }
        pump(s);        /* puts back what must be put back */
        return;
    }
    if (s->background && env->rate <= 0) {
        stop(s, SWEEP_OFF, NULL);
        pump(s);
        return;
    }
    if (s->rc == NULL && now >= s->next_connect) {
        redis_connect(s);
    }
    /* at least a few reconnections, whatever a short reply_timeout says */
    if (!s->background && s->rc == NULL && s->connect_since != 0 &&
        now > s->connect_since + (s->rc_timeout > 3 * SWEEP_RECONNECT_MS ?
                                  s->rc_timeout : 3 * SWEEP_RECONNECT_MS)) {
        fail(s, "cannot reach Redis %s", s->redis_text);
    }
    if (!env->may_run) {
        stop(s, SWEEP_PAUSED, "the pool's ring is not settled (starting, or a resize "
             "is proposed or runs)");
        pump(s);
        return;
    }
    if (s->rc == NULL) {
        if (s->background && s->state != SWEEP_PAUSED) {
            stop(s, SWEEP_PAUSED, "Redis cannot be reached");
        }
        pump(s);
        return;
    }
    if (now < s->refused_until) {
        pump(s);
        return;
    }
    if (!s->gating && (s->background ? now >= s->next_gate : !s->checked_once)) {
        s->next_gate = now + SWEEP_GATE_MS;
        gate(s);
    }
    if ((s->background && !s->lease) || !s->checked_once || now < s->ring_retry_at) {
        if (s->background && !s->lease && s->since[0] != '\0' && !s->announcing) {
            release(s);         /* no lease: no announcement either */
        }
        pump(s);
        return;
    }
    if (s->need_ring && !s->reading_ring && s->nbatches == 0 && !s->scan_out) {
        char key[512];
        snprintf(key, sizeof(key), "%s:ring", s->prefix);
        const char *argv[] = { "HGETALL", key };
        size_t lens[] = { 7, strlen(key) };
        s->reading_ring = redis_argv(s, on_ring, s, 2, argv, lens);
    }
    if (!s->announcing && now >= s->next_announce) {
        announce(s);
    }
    if (s->state == SWEEP_FAILED || s->state == SWEEP_DONE) {
        return;
    }
    if (!s->seen || (s->need_ring && s->state != SWEEP_SWEEPING)) {
        set_state(s, SWEEP_ANNOUNCING, s->seen ? "reading the ring record" :
                  "waiting until every live proxy saw the sweeper");
    } else if (s->state != SWEEP_SWEEPING) {
        s->last_refill = now;
        s->tokens = 0;
        if (s->pass_checked == 0) {
            s->pass_started = now;      /* the announcement's wait not counted */
        }
        set_state(s, SWEEP_SWEEPING, NULL);
    }
    pump(s);
}

/* --- lifecycle ---------------------------------------------------------------------- */

struct sweep *sweep_new(struct event_base *base, const struct sweep_opts *o)
{
    struct sweep *s = calloc(1, sizeof(*s));
    char host[256] = "?";
    struct timeval tv;

    if (s == NULL) {
        return NULL;
    }
    gethostname(host, sizeof(host) - 1);
    gettimeofday(&tv, NULL);
    s->base = base;
    s->defer = defer_new(base);
    s->background = o->background;
    s->forget = o->forget;
    s->forget_arg = o->forget_arg;
    s->dns = o->dns;
    s->db = o->index->db;
    s->redis_port = o->index->redis.port;
    s->redis_unix = o->index->redis.is_unix;
    s->rc_timeout = o->index->reply_timeout > 0 ? (uint64_t)o->index->reply_timeout :
                    SWEEP_REDIS_TIMEOUT_MS;
    TAILQ_INIT(&s->batches);
    snprintf(s->cursor, sizeof(s->cursor), "0");
    s->need_ring = true;
    lay_limits_default(&s->limits);
    s->state = o->background ? SWEEP_STANDBY : SWEEP_ANNOUNCING;
    if ((s->pool = strdup(o->pool)) == NULL ||
        (s->prefix = strdup(o->index->prefix)) == NULL ||
        (s->redis_host = strdup(o->index->redis.host)) == NULL ||
        (s->redis_text = strdup(o->index->redis.text)) == NULL ||
        (o->index->password != NULL && (s->password = strdup(o->index->password)) == NULL) ||
        (o->id != NULL ? (s->id = strdup(o->id)) == NULL :
         asprintf(&s->id, "%s:%ld:%04lx:cli", host, (long)getpid(),
                  (unsigned long)(tv.tv_usec ^ (unsigned long)random()) & 0xffff) < 0) ||
        asprintf(&s->field, SWEEP_FIELD_PREFIX "%s", s->id) < 0 ||
        asprintf(&s->ring_key, "%s:ring", o->index->prefix) < 0 ||
        (s->kick = event_new(base, -1, 0, on_kick, s)) == NULL) {
        sweep_free(s);
        return NULL;
    }
    clock_ms(s);
    return s;
}

void sweep_leave(struct sweep *s)
{
    if (s != NULL && !s->leaving) {
        s->leaving = true;
        s->leave_deadline = clock_ms(s) + (s->background ? SWEEP_LEAVE_TIMEOUT_MS :
                                           SWEEP_CLI_LEAVE_TIMEOUT_MS);
        if (s->rc == NULL || (!s->lease && s->since[0] == '\0')) {
            s->left = true;
        }
    }
}

bool sweep_left(const struct sweep *s)
{
    if (s == NULL) {
        return true;
    }
    bool restores = false;
    const struct batch *b;
    TAILQ_FOREACH(b, &s->batches, link) {
        restores = restores || (b->step == B_REMOVE && b->waiting > 0) ||
                   b->step == B_RECHECK || b->step == B_RESTORE ||
                   b->step == B_RESTORE_WAIT;
    }
    /* Entries taken out and not yet put back hold the leave, up to its
     * deadline (then they are lost with Redis out of reach: logged). */
    return s->left && (!restores || s->now >= s->leave_deadline);
}

void sweep_free(struct sweep *s)
{
    struct batch *b;
    uint32_t lost = 0;

    if (s == NULL) {
        return;
    }
    s->freeing = true;
    TAILQ_FOREACH(b, &s->batches, link) {
        for (uint32_t i = 0; b->step >= B_RECHECK && b->step != B_DONE && i < b->n; i++) {
            lost += b->items[i].fate == F_RESTORE || b->items[i].fate == F_GONE;
        }
    }
    if (lost > 0) {
        log_error("sweep", "%s: stopping with %u index entries removed and not yet "
                  "confirmed gone or put back; `ringproxy index sweep` or a rebuild "
                  "restores any that are still stored", s->pool, lost);
    }
    if (s->rc != NULL) {
        s->rc->data = NULL;
        redisAsyncFree(s->rc);
    }
    servers_free(s);            /* pending mg callbacks return at once */
    defer_free(s->defer);       /* ... and the connections go now */
    while ((b = TAILQ_FIRST(&s->batches)) != NULL) {
        batch_free(b);
    }
    if (s->kick != NULL) {
        event_free(s->kick);
    }
    ring_unref(s->ring);
    ring_unref(s->local);
    free(s->pool);
    free(s->prefix);
    free(s->ring_key);
    free(s->id);
    free(s->field);
    free(s->redis_host);
    free(s->redis_text);
    free(s->password);
    free(s);
}

/* --- views ----------------------------------------------------------------------------- */

enum sweep_state sweep_get_state(const struct sweep *s)
{
    return s->state;
}

const uint64_t *sweep_stats(const struct sweep *s)
{
    return s->stats;
}

const char *sweep_error(const struct sweep *s)
{
    return s->state == SWEEP_FAILED ? s->error : "";
}

void sweep_progress(const struct sweep *s, struct sweep_progress *out)
{
    memset(out, 0, sizeof(*out));
    out->state = s->state;
    out->pass = s->pass;
    out->point = s->point;
    out->npoints = s->ring != NULL ? s->ring->npoints : 0;
    out->pass_checked = s->pass_checked;
    out->pass_removed = s->pass_removed;
    out->elapsed_sec = s->pass_started ? (double)(s->now - s->pass_started) / 1000.0 : 0;
    snprintf(out->paused, sizeof(out->paused), "%s", s->why);
}

void sweep_stats_text(const struct sweep *s, struct evbuffer *out)
{
    struct sweep_progress pr;

    sweep_progress(s, &pr);
    evbuffer_add_printf(out, "STAT sweep:state %s\r\n", sweep_state_names[pr.state]);
    evbuffer_add_printf(out, "STAT sweep:pass %llu\r\n", (unsigned long long)pr.pass);
    evbuffer_add_printf(out, "STAT sweep:sets_done %u\r\nSTAT sweep:sets %u\r\n",
                        pr.point, pr.npoints);
    for (int i = 0; i < SWEEP_STAT_COUNT; i++) {
        evbuffer_add_printf(out, "STAT sweep:%s %llu\r\n", sweep_stat_desc[i].name,
                            (unsigned long long)s->stats[i]);
    }
}
