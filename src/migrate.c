/*
 * migrate.c — a pool's migrations: from a ring change to the new ring
 * recorded in Redis, coordinated with every other proxy (DESIGN §5, §6).
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
 * Moving keys and serving commands on moving keys: move.c.
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
#include "migrate_int.h"

#define MIG_STATE_NAME(e, name) [MIG_##e] = name,
const char *const mig_state_names[MIG_STATE_COUNT] = { MIG_STATE_CODEC(MIG_STATE_NAME) };
#undef MIG_STATE_NAME

static void mig_connect(struct mig *m);

/* --- helpers ---------------------------------------------------------------- */

void mig_redis(struct mig *m, redisCallbackFn *cb, void *priv, const char *fmt, ...)
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
void mig_end(struct mig *m, const char *how)
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
void mig_finish(struct mig *m)
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
