/*
 * migrate.c — a pool's place in the fleet: which ring the data obeys, which
 * ring this proxy's file proposes, and the phases every proxy walks through
 * together when the fleet changes ring. The protocol, its phases and its
 * invariants are docs/ARCHITECTURE.md, "Resizing a fleet"; the rules for
 * commands on changing keys and the bulk mover are move.c.
 *
 * Every sync (one Lua script, so the snapshot is consistent) writes this
 * proxy's heartbeat with Redis's clock, takes or renews the coordinator
 * lease when this proxy may need it, and reads the ring record, the
 * migration record, the target ring and every heartbeat. From that
 * snapshot each proxy follows the migration record; the lease holder alone
 * advances it: it creates the record once every live proxy proposes the
 * same ring, moves it to the next phase once every live proxy acknowledges
 * the current one, moves keys in the last phase, and ends it by recording
 * the new ring. Changes this proxy must make to itself are made on the
 * tick, never inside the Redis callback that learnt of them.
 */
#include <assert.h>
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
#include "defer.h"
#include "index.h"
#include "log.h"
#include "mem.h"
#include "mconn.h"
#include "rebuild.h"
#include "ringrec.h"
#include "sweep.h"
#include "migrate_int.h"
#include "progress.h"

#define MIG_STATE_NAME(e, name) [MIG_##e] = name,
const char *const mig_state_names[MIG_STATE_COUNT] = { MIG_STATE_CODEC(MIG_STATE_NAME) };
#undef MIG_STATE_NAME

/* What a heartbeat says this proxy acknowledged (the record's phases are
 * "prepared", "switched" and "moving"). */
static const char *const ack_names[] = {
    [PH_NONE] = "stable", [PH_PREPARED] = "prepared", [PH_SWITCHED] = "switched",
};

static void mig_connect(struct mig *m);
static bool mig_recorded(const struct mig *m);
static void on_done_arcs(redisAsyncContext *ac, void *r, void *priv);
static void on_doubts(redisAsyncContext *ac, void *r, void *priv);

/* --- helpers ---------------------------------------------------------------- */

/*
 * Is this reply an answer? An error reply is classified and counted in the
 * pool's index health (index.h), never taken for an empty answer.
 */
static bool reply_ok(struct mig *m, const redisReply *reply)
{
    if (reply != NULL && reply->type == REDIS_REPLY_ERROR) {
        idx_redis_error(m->p->idx, IDX_CONN_COORD, reply->str);
        return false;
    }
    return reply != NULL;
}

/* The reply to a command sent without a callback: only its error matters
 * (DEL, HDEL, UNLINK succeed even when Redis refuses writes). */
void mig_unchecked_reply(redisAsyncContext *ac, void *r, void *priv)
{
    if (ac->data != NULL) {
        reply_ok(priv, r);
    }
}

bool mig_redis(struct mig *m, redisCallbackFn *cb, void *priv, const char *fmt, ...)
{
    va_list ap;

    if (!doubt_batch_send(m, false) || !m->rc_up) {
        return false;   /* the copies' records go first (move.c) */
    }
    if (cb == NULL) {
        cb = mig_unchecked_reply;
        priv = m;
    }
    va_start(ap, fmt);
    int rc = redisvAsyncCommand(m->rc, cb, priv, fmt, ap);
    va_end(ap);
    if (rc != REDIS_OK) {
        log_error("migration", "%s: cannot send a Redis command (%.40s...)",
                  m->p->name, fmt);
        return false;
    }
    return true;
}

/* Send argv (n strings) as one command. */
static void mig_redis_argv(struct mig *m, redisCallbackFn *cb, void *priv, int n,
                           const char **argv)
{
    size_t len[64];

    if (!doubt_batch_send(m, false) || !m->rc_up || n > 64) {
        return;         /* the copies' records go first (move.c) */
    }
    for (int i = 0; i < n; i++) {
        len[i] = strlen(argv[i]);
    }
    if (cb == NULL) {
        cb = mig_unchecked_reply;
        priv = m;
    }
    if (redisAsyncCommandArgv(m->rc, cb, priv, n, argv, len) != REDIS_OK) {
        log_error("migration", "%s: cannot send a Redis command (%s)", m->p->name,
                  argv[0]);
    }
}

void mig_index_refused(struct mig *m, const char *msg)
{
    if (lay_noscript(msg) && m->rc_up) {
        const char *argv[3];
        size_t len[3];
        lay_load_argv(argv, len);
        redisAsyncCommandArgv(m->rc, mig_unchecked_reply, m, 3, argv, len);
    }
    idx_redis_error(m->p->idx, IDX_CONN_COORD, msg);
}

static void on_index_reply(redisAsyncContext *ac, void *r, void *priv)
{
    const redisReply *reply = r;

    if (ac->data != NULL && reply != NULL && reply->type == REDIS_REPLY_ERROR) {
        mig_index_refused(priv, reply->str);
    }
}

bool mig_index(struct mig *m, redisCallbackFn *cb, void *priv, const char *op, int n,
               const char *const *args, const size_t *lens)
{
    const char *argv[LAY_HEAD + 8];
    size_t len[LAY_HEAD + 8];
    char nums[2][12];

    if (!m->rc_up || n > 8) {
        return false;
    }
    lay_head(argv, len, m->ring_key, op, &m->limits, nums);
    for (int i = 0; i < n; i++) {
        argv[LAY_HEAD + i] = args[i];
        len[LAY_HEAD + i] = lens[i];
    }
    if (cb == NULL) {
        cb = on_index_reply;
        priv = m;
    }
    if (redisAsyncCommandArgv(m->rc, cb, priv, LAY_HEAD + n, argv, len) != REDIS_OK) {
        /* e.g. from a reply callback while hiredis tears the connection
         * down (it fails what was pending before telling us it is gone) */
        log_error("migration", "%s: cannot send the index script (%s)", m->p->name, op);
        return false;
    }
    return true;
}

/* A ring from an HGETALL reply of a ring record; NULL if malformed. */
static struct ring *ring_from_reply(const redisReply *h, uint64_t *epoch)
{
    const char **kv;
    struct ring *r = NULL;

    if (h == NULL || h->type != REDIS_REPLY_ARRAY || h->elements == 0) {
        return NULL;
    }
    if ((kv = calloc(h->elements, sizeof(*kv))) == NULL) {
        return NULL;
    }
    for (size_t j = 0; j < h->elements; j++) {
        kv[j] = h->element[j]->type == REDIS_REPLY_STRING ? h->element[j]->str : "";
    }
    r = ringrec_parse(kv, h->elements, epoch);
    free(kv);
    return r;
}

/*
 * Redis is data, not authority, for addresses: a ring record gives server
 * identities, weights and the ring's shape, never where to connect. Each
 * identity is mapped to the address this proxy's own config gave it: the
 * file's ring first (m->want), then the servers the pool already has, all
 * of which came from a file (this one or the one before a reload). Returns
 * a new reference, or NULL with the first unknown identity in why.
 */
static struct ring *ring_localize(struct mig *m, struct ring *r, char *why, size_t len)
{
    const struct pool *p = m->p;
    struct ring_server_spec *specs = calloc(r->nservers, sizeof(*specs));
    struct ring *l = NULL;
    bool same = true;

    if (specs == NULL) {
        snprintf(why, len, "out of memory");
        return NULL;
    }
    for (uint32_t i = 0; i < r->nservers; i++) {
        const char *id = r->servers[i].identity, *addr = NULL;
        int s = ring_server_index(m->want, id);
        if (s >= 0) {
            addr = m->want->servers[s].addr;
        }
        for (uint32_t b = p->nbackends; addr == NULL && b > 0; b--) {
            if (strcmp(p->backends[b - 1]->identity, id) == 0) {
                addr = p->backends[b - 1]->addr.text;   /* the newest first */
            }
        }
        if (addr == NULL && !p->conf->migration.follow_unknown) {
            /* Not in this file (a proxy restarted with the old file while
             * the fleet grows, or with the new one while it shrinks). Redis
             * is data, not authority over where to connect: whoever can
             * write it must not be able to send this proxy's traffic, or a
             * migration's copies, to an address of their choosing. The
             * pool is fenced (mig_refuse) until the file lists the server. */
            snprintf(why, len, "server %s is not in this config file; list it, or set "
                     "migration: {follow_unknown_servers: true}", id);
            goto out;
        }
        if (addr == NULL) {
            /* The operator chose to follow the records' addresses (I1) for
             * servers the file does not name; said in the log. */
            addr = r->servers[i].addr;
            if (now_ms(m) >= m->next_foreign_log) {
                m->next_foreign_log = now_ms(m) + MIG_WAIT_LOG_MS;
                log_warn("migration", "%s: server %s is not in this config file: using "
                         "the address Redis records for it, %s (follow_unknown_servers); "
                         "list it in the file to pin its address", p->name, id, addr);
            }
        }
        same = same && strcmp(addr, r->servers[i].addr) == 0;
        specs[i] = (struct ring_server_spec){ .identity = id, .addr = addr,
                                              .weight = r->servers[i].weight };
    }
    if (same) {
        l = ring_ref(r);
        goto out;
    }
    struct ring_params params = { .compat = r->compat, .hash = r->hash,
        .has_tag = r->has_tag, .servers = specs, .nservers = r->nservers };
    memcpy(params.tag, r->tag, 2);
    l = ring_build(&params, why, len);
out:
    free(specs);
    return l;
}

/* The recorded rings cannot be served (why): fence the pool and say so. */
static void mig_refuse(struct mig *m, const char *what, const char *why)
{
    char msg[sizeof(m->refused)];

    snprintf(msg, sizeof(msg), "%s names a server this proxy does not know (%s); "
             "refusing to route by it", what, why);
    if (now_ms(m) >= m->next_refused_log) {
        m->next_refused_log = now_ms(m) + MIG_WAIT_LOG_MS;
        log_error("migration", "%s: %s:%s %s", m->p->name, m->prefix,
                  strcmp(what, "the ring record") == 0 ? "ring" : "migration:ring", msg);
    }
    memcpy(m->refused, msg, sizeof(msg));
}

static void key_of(const struct mig *m, const char *suffix, char *buf, size_t len)
{
    snprintf(buf, len, "%s:%s", m->prefix, suffix);
}

/*
 * EVAL `script` with `nkeys` key suffixes, then fixed args, then the ring
 * record fields of r at epoch (when r != NULL); cb gets priv.
 */
static void eval_with_ring(struct mig *m, redisCallbackFn *cb, void *priv, const char *script,
                           const char *const *suffixes, int nkeys,
                           const char *const *args, int nargs,
                           const struct ring *r, uint64_t epoch)
{
    char keys[8][512], nk[16];
    char *fields[RINGREC_FIELDS * 2];
    const char *argv[64];
    int n = 0, nf = 0;

    if (r != NULL && (nf = ringrec_fields(r, epoch, fields)) < 0) {
        return;
    }
    argv[n++] = "EVAL";
    argv[n++] = script;
    snprintf(nk, sizeof(nk), "%d", nkeys);
    argv[n++] = nk;
    for (int i = 0; i < nkeys; i++) {
        key_of(m, suffixes[i], keys[i], sizeof(keys[i]));
        argv[n++] = keys[i];
    }
    for (int i = 0; i < nargs; i++) {
        argv[n++] = args[i];
    }
    for (int i = 0; i < nf; i++) {
        argv[n++] = fields[i];
    }
    mig_redis_argv(m, cb, priv, n, argv);
    if (nf > 0) {
        ringrec_fields_free(fields, nf);
    }
}

/* --- the local migration: two rings and this proxy's phase ------------------ */

static void mig_clear(struct mig *m)
{
    for (uint32_t i = 0; m->arcs != NULL && i < m->diff.narcs; i++) {
        arc_free_seen(&m->arcs[i]);
    }
    free(m->arcs);
    m->arcs = NULL;
    closing_free(m);
    mig_doubts_free(m);
    tomb_notes_free(m);
    ring_diff_free(&m->diff);
    ring_unref(m->from);
    m->from = NULL;
    ring_unref(m->to);
    m->to = NULL;
    ring_unref(m->to_rec);
    m->to_rec = NULL;
    free(m->from_be);
    free(m->to_be);
    free(m->tombs_dead);
    m->from_be = m->to_be = NULL;
    m->tombs_dead = NULL;
    m->phase = m->acked = PH_NONE;
    m->fleet[0] = m->fp_from[0] = m->fp_to[0] = m->blocked[0] = '\0';
    m->lease = m->finishing = m->done_loaded = m->loading_done = false;
    m->arcs_done = m->cur_arc = m->inflight = m->reserved = m->pass = 0;
    m->taking = m->taken = m->take_again = false;
    m->gen++;                   /* a push's or take's reply now says nothing */
    m->take_after = 0;
    m->take_refusals = 0;
}

/*
 * Follow a migration from ring `from` to ring `to`, both as recorded (their
 * fingerprints are the fleet's names for them); this proxy routes by them
 * with its own addresses (ring_localize). References are taken.
 */
static int mig_begin(struct mig *m, struct ring *from, struct ring *to)
{
    struct pool *p = m->p;
    char err[256];
    struct ring *lf = ring_localize(m, from, err, sizeof(err)), *lt = NULL;

    if (lf == NULL) {
        mig_refuse(m, "the ring record", err);
        return -1;
    }
    if ((lt = ring_localize(m, to, err, sizeof(err))) == NULL) {
        mig_refuse(m, "the migration's target ring", err);
        ring_unref(lf);
        return -1;
    }
    m->from_be = pool_ring_backends(p, lf, err, sizeof(err));
    m->to_be = m->from_be ? pool_ring_backends(p, lt, err, sizeof(err)) : NULL;
    if (m->to_be == NULL) {
        log_error("migration", "%s: %s", p->name, err);
        free(m->from_be);
        m->from_be = NULL;
        ring_unref(lf);
        ring_unref(lt);
        return -1;
    }
    m->from = lf;
    m->to = lt;
    m->to_rec = ring_ref(to);
    ringrec_fingerprint(from, m->fp_from);
    ringrec_fingerprint(to, m->fp_to);
    if (ring_diff(m->from, m->to, &m->diff) != 0 ||
        (m->arcs = calloc(m->diff.narcs ? m->diff.narcs : 1, sizeof(*m->arcs))) == NULL ||
        (m->tombs_dead = calloc(m->from->nservers + 1, sizeof(bool))) == NULL) {
        log_error("migration", "%s: out of memory diffing rings", p->name);
        mig_clear(m);
        return -1;
    }
    m->begin_epoch = m->epoch;
    m->started_ms = m->last_log_ms = now_ms(m);
    m->keys_moved = m->keys_stale = m->keys_skipped = m->keys_failed = 0;
    m->keys_retried = m->client_ops = m->index_moved = m->moved_at_last_log = 0;
    m->tombs_written = m->tombs_cleared = m->fallback_reads = m->conflicts_settled = 0;
    m->tombs_swept = m->tombs_left = m->tombs_handed = m->tombs_taken = 0;
    m->tombs_handed_bytes = 0;
    m->unindexed_moved = m->closing_listed = m->closing_refused = 0;
    m->tokens = 0;
    m->last_refill = now_ms(m);
    m->pass = 1;
    log_notice("migration", "%s: following the fleet's migration from ring %.8s to "
               "%.8s: %.3f%% of keys change server, %.3f%% only v-node, %zu arcs",
               p->name, m->fp_from, m->fp_to, 100.0 * (double)m->diff.moved / RING_SPACE,
               100.0 * (double)m->diff.reindexed / RING_SPACE, m->diff.narcs);
    return 0;
}

/* Route changing keys by phase `ph` from now on (phases only go forward). */
static void mig_set_phase(struct mig *m, enum mig_phase ph)
{
    struct pool *p = m->p;

    if (ph <= m->phase) {
        return;
    }
    /* Only a migration being followed (mig_begin) has phases to route by. */
    assert(ph != PH_NONE && m->from != NULL && m->from_be != NULL && m->to_be != NULL);
    if (ph == PH_SWITCHED) {
        /* Index writes queued under the old ring name its v-nodes: they
         * leave first (move.c's writes name their ring themselves). */
        idx_flush(p->idx);
        if (m->phase == PH_PREPARED && strcmp(m->fleet, "switched") == 0 &&
            p->idx != NULL && idx_stats(p->idx)[IDX_STAT_queued] > 0) {
            return;     /* the next sync tries again */
        }
        struct backend **map = malloc(m->to->nservers * sizeof(*map));
        if (map == NULL) {
            return;
        }
        memcpy(map, m->to_be, m->to->nservers * sizeof(*map));
        pool_set_ring(p, ring_ref(m->to), map);
        idx_set_ring(p->idx, m->to);
    }
    pool_new_generation(p);
    m->phase = ph;
    log_notice("migration", "%s: phase %s: %s", p->name, ack_names[ph],
               ph == PH_PREPARED ? "the old owner stays home; reads fall back to the "
               "new one, writes clear it" : "the new owner is home; writes clear the old "
               "copy, reads still look there first");
}

/* The data obeys `to` now (the fleet recorded it): drop the migration. */
static void mig_end_local(struct mig *m)
{
    struct pool *p = m->p;
    uint64_t secs = (now_ms(m) - m->started_ms) / 1000;

    if (m->phase != PH_SWITCHED) {
        /* Skipped a phase (fenced or just started): serve the new ring. */
        struct backend **map = malloc(m->to->nservers * sizeof(*map));
        if (map == NULL) {
            return;
        }
        memcpy(map, m->to_be, m->to->nservers * sizeof(*map));
        idx_flush(p->idx);
        pool_set_ring(p, ring_ref(m->to), map);
        idx_set_ring(p->idx, m->to);
    }
    pool_new_generation(p);
    log_notice("migration", "%s: done in %llus: %llu keys moved (%llu of them unknown "
               "to the index, by the closing pass), %llu already newer on the new owner, "
               "%llu stale, %llu tombstones cleared by the mover and %llu by their writer "
               "here (%llu left to expire), %llu retried; the data obeys ring "
               "%.8s epoch %llu", p->name, (unsigned long long)secs,
               (unsigned long long)m->keys_moved, (unsigned long long)m->unindexed_moved,
               (unsigned long long)m->keys_skipped,
               (unsigned long long)m->keys_stale, (unsigned long long)m->tombs_cleared,
               (unsigned long long)m->tombs_swept, (unsigned long long)m->tombs_left,
               (unsigned long long)m->keys_retried, m->fp_to,
               (unsigned long long)m->epoch);
    mig_clear(m);
}

/*
 * Serve ring r (as recorded, fingerprint fp) as where the data lives, with
 * this proxy's addresses. Returns -1 when it cannot: r names a server the
 * config does not know (the pool is then refused: fenced), or no memory.
 */
static int mig_serve_ring(struct mig *m, struct ring *r, const char *fp)
{
    struct pool *p = m->p;
    char pfp[RINGREC_FP_SIZE], lfp[RINGREC_FP_SIZE], err[256];
    struct ring *l = ring_localize(m, r, err, sizeof(err));

    if (l == NULL) {
        mig_refuse(m, "the ring record", err);
        return -1;
    }
    ringrec_fingerprint(p->ring, pfp);
    ringrec_fingerprint(l, lfp);
    if (strcmp(pfp, lfp) == 0) {
        ring_unref(l);
        return 0;
    }
    struct backend **map = pool_ring_backends(p, l, err, sizeof(err));
    if (map == NULL) {
        log_error("migration", "%s: %s", p->name, err);
        ring_unref(l);
        return -1;
    }
    log_notice("migration", "%s: the data obeys ring %.8s (epoch %llu): serving it",
               p->name, fp, (unsigned long long)m->epoch);
    idx_flush(p->idx);
    pool_set_ring(p, l, map);
    idx_set_ring(p->idx, l);
    pool_new_generation(p);
    return 0;
}

/* --- the lease holder's decisions ------------------------------------------------ */

static void on_coord_reply(redisAsyncContext *ac, void *r, void *priv)
{
    struct mig *m = priv;
    redisReply *reply = r;

    if (ac->data == NULL || !reply_ok(m, reply)) {
        return;     /* refused: the index health says why; the next sync retries */
    }
    m->next_sync = 0;       /* look at the result at once */
}

/* Every live proxy proposes our ring: open the migration at "prepared". */
static void coord_create(struct mig *m)
{
    static const char script[] =
        "if redis.call('get', KEYS[3]) ~= ARGV[1] then return 0 end "
        "if redis.call('hexists', KEYS[1], 'to') == 1 then return 0 end "
        "if redis.call('hget', KEYS[5], 'epoch') ~= ARGV[4] then return 0 end "
        "redis.call('del', KEYS[1], KEYS[2], KEYS[4], KEYS[6]) "
        "redis.call('hset', KEYS[2], unpack(ARGV, 5)) "
        "local t = redis.call('time') "
        "redis.call('hset', KEYS[1], 'from', ARGV[2], 'to', ARGV[3], 'phase', "
        "'prepared', 'holder', ARGV[1], 'started', t[1], 'updated', t[1]) "
        "return 1";
    char done[128], doubts[128], ep[32];
    snprintf(done, sizeof(done), "migration:done:%s", m->fp_want);
    snprintf(doubts, sizeof(doubts), "migration:doubts:%s", m->fp_want);
    snprintf(ep, sizeof(ep), "%llu", (unsigned long long)m->epoch);
    const char *keys[] = { "migration", "migration:ring", "migration:lock", done, "ring",
                           doubts };
    const char *args[] = { m->id, m->fp_rec, m->fp_want, ep };

    log_notice("migration", "%s: every live proxy proposes ring %.8s: opening the "
               "migration from %.8s", m->p->name, m->fp_want, m->fp_rec);
    eval_with_ring(m, on_coord_reply, m, script, keys, 6, args, 4, m->want, 0);
}

/* Every live proxy acknowledged phase `cur`: the record moves to `next`. */
static void coord_advance(struct mig *m, const char *cur, const char *next)
{
    static const char script[] =
        "if redis.call('get', KEYS[2]) ~= ARGV[1] then return 0 end "
        "if redis.call('hget', KEYS[1], 'to') ~= ARGV[2] then return 0 end "
        "if redis.call('hget', KEYS[1], 'phase') ~= ARGV[3] then return 0 end "
        "local t = redis.call('time') "
        "redis.call('hset', KEYS[1], 'phase', ARGV[4], 'holder', ARGV[1], "
        "'arcs_total', ARGV[5], 'updated', t[1]) "
        "return 1";
    const char *keys[] = { "migration", "migration:lock" };
    char arcs[32];
    snprintf(arcs, sizeof(arcs), "%zu", m->diff.narcs);
    const char *args[] = { m->id, m->fp_to, cur, next, arcs };

    log_notice("migration", "%s: every live proxy acknowledged %s: fleet phase %s",
               m->p->name, cur, next);
    eval_with_ring(m, on_coord_reply, m, script, keys, 2, args, 5, NULL, 0);
}

static void on_finish_written(redisAsyncContext *ac, void *r, void *priv)
{
    struct mig *m = priv;
    redisReply *reply = r;

    if (ac->data == NULL) {
        return;
    }
    m->finishing = false;
    if (!reply_ok(m, reply) || reply->type != REDIS_REPLY_INTEGER || reply->integer != 1) {
        /* The next pump tries again while we hold the lease. */
        log_error("migration", "%s: could not record the new ring (%s); will retry",
                  m->p->name, reply != NULL && reply->type == REDIS_REPLY_ERROR ?
                  reply->str : "lease or record changed");
        return;
    }
    log_notice("migration", "%s: recorded ring %.8s as where the data lives",
               m->p->name, m->fp_to);
    m->next_sync = 0;
}

/* Every arc is done (twice): record ring B, next epoch, and close the record. */
void mig_finish(struct mig *m)
{
    static const char script[] =
        "if redis.call('get', KEYS[3]) ~= ARGV[1] then return 0 end "
        "if redis.call('hget', KEYS[2], 'to') ~= ARGV[2] then return 0 end "
        "redis.call('hset', KEYS[1], unpack(ARGV, 3)) "
        "redis.call('del', KEYS[2], KEYS[4], KEYS[5], KEYS[6], KEYS[3]) "
        "return 1";
    char done[128], doubts[128];

    m->finishing = true;
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
            const char *arg[] = { vnode };
            size_t len[] = { idx_vnode_key(m->prefix, m->from, i, vnode, sizeof(vnode)) };
            mig_index(m, NULL, NULL, "clear", 1, arg, len);
        }
    }
    snprintf(done, sizeof(done), "migration:done:%s", m->fp_to);
    snprintf(doubts, sizeof(doubts), "migration:doubts:%s", m->fp_to);
    const char *keys[] = { "ring", "migration", "migration:lock", "migration:ring", done,
                           doubts };
    const char *args[] = { m->id, m->fp_to };
    eval_with_ring(m, on_finish_written, m, script, keys, 6, args, 2, m->to_rec,
                   m->epoch + 1);
}

/* --- the sync: heartbeat, lease, snapshot -------------------------------------- */

struct beat {
    const char *id;
    uint64_t at;
    char want[RINGREC_FP_SIZE], ack[16], to[RINGREC_FP_SIZE];
};

static int ack_rank(const char *ack)
{
    for (int i = PH_NONE; i <= PH_SWITCHED; i++) {
        if (strcmp(ack, ack_names[i]) == 0) {
            return i;
        }
    }
    return -1;
}

/*
 * Walk the live heartbeats; count those that fail `pred` into m->waiting.
 * Returns how many live proxies fail it.
 */
static uint32_t live_failing(struct mig *m, const redisReply *proxies, uint64_t now,
                             bool (*pred)(const struct mig *, const struct beat *))
{
    size_t used = 0;
    uint32_t failing = 0;

    m->waiting[0] = '\0';
    m->nlive = 0;
    for (size_t j = 0; j + 1 < proxies->elements; j += 2) {
        struct beat b = { .id = proxies->element[j]->str };
        unsigned long long at = 0;
        if (proxies->element[j + 1]->type != REDIS_REPLY_STRING ||
            sscanf(proxies->element[j + 1]->str, "%llu %32s %15s %32s", &at, b.want,
                   b.ack, b.to) != 4) {
            continue;
        }
        b.at = at;
        if (m->liveness_ms > 0 && b.at + m->liveness_ms < now) {
            if (b.at + 10 * m->liveness_ms < now) {
                mig_redis(m, NULL, NULL, "HDEL %s:proxies %s", m->prefix, b.id);
            }
            continue;   /* excluded: it fenced itself long ago */
        }
        m->nlive++;
        if (!pred(m, &b)) {
            failing++;
            if (used + 64 < sizeof(m->waiting)) {
                used += (size_t)snprintf(m->waiting + used, sizeof(m->waiting) - used,
                                         "%s%s", used ? ", " : "", b.id);
            }
        }
    }
    return failing;
}

static bool wants_ours(const struct mig *m, const struct beat *b)
{
    return strcmp(b->want, m->fp_want) == 0;
}

static bool acked_prepared(const struct mig *m, const struct beat *b)
{
    return strcmp(b->to, m->fp_to) == 0 && ack_rank(b->ack) >= PH_PREPARED;
}

static bool acked_switched(const struct mig *m, const struct beat *b)
{
    return strcmp(b->to, m->fp_to) == 0 && ack_rank(b->ack) >= PH_SWITCHED;
}

/* The fleet went past the migration this proxy follows: the ring recorded
 * since it began is not its target, or two changes were recorded (the
 * fleet may be back at its first ring: A -> B, B -> A). By epoch, not by
 * fingerprint: a ring record written again at the same epoch (Redis lost
 * it: write_first_record) is no change of the fleet's. */
static bool mig_obsolete(const struct mig *m)
{
    return m->from != NULL && m->fp_rec[0] != '\0' &&
           (m->epoch >= m->begin_epoch + 2 ||
            (m->epoch == m->begin_epoch + 1 && strcmp(m->fp_rec, m->fp_to) != 0));
}

/*
 * The record changed or is missing: set up, follow or end the migration.
 * A record this proxy cannot serve (mig_refuse) leaves m->refused set.
 */
static void follow_record(struct mig *m, const redisReply *rec, const redisReply *mrec,
                          const redisReply *mring)
{
    struct pool *p = m->p;
    uint64_t epoch = 0;
    struct ring *R = ring_from_reply(rec, &epoch);
    char fp[RINGREC_FP_SIZE];

    if (R == NULL) {
        return;
    }
    m->refused[0] = '\0';     /* each well-formed snapshot is judged anew */
    ringrec_fingerprint(R, fp);
    m->epoch = epoch;
    memcpy(m->fp_rec, fp, sizeof(fp));
    const char *from = idx_hash_field(mrec, "from"), *to = idx_hash_field(mrec, "to"),
               *phase = idx_hash_field(mrec, "phase");

    if (from == NULL || to == NULL || phase == NULL) {
        /* No migration: the recorded ring is where the data lives. */
        m->fleet[0] = '\0';        /* whatever ends locally moves nothing */
        if (m->from != NULL) {
            if (strcmp(fp, m->fp_to) != 0) {
                if (mig_obsolete(m)) {
                    log_error("migration", "%s: the data obeys ring %.8s, neither end of "
                              "the migration from %.8s to %.8s this proxy followed: the "
                              "fleet went on without it; serving the recorded ring",
                              p->name, fp, m->fp_from, m->fp_to);
                } else {
                    log_error("migration", "%s: the migration record vanished before ring "
                              "%.8s was recorded (was Redis emptied?): serving the "
                              "recorded ring %.8s", p->name, m->fp_to, fp);
                }
                if (m->nops == 0) {
                    mig_clear(m);
                    m->from = NULL;
                }
            }
        }
        if (m->from == NULL && mig_serve_ring(m, R, fp) == 0) {
            m->rejoining = false;
        }
        ring_unref(R);
        return;
    }
    if (mig_obsolete(m)) {
        /* The data obeys neither ring of the migration this proxy follows:
         * the fleet ended it, and went on, without this proxy (cut off
         * past the liveness). Its routing says nothing of where the data
         * is: the tick drops it once no command on a key is left (fenced
         * until then: on_sync), and the next sync follows the records as a
         * proxy just started. */
        if (now_ms(m) >= m->next_wait_log) {
            m->next_wait_log = now_ms(m) + MIG_WAIT_LOG_MS;
            log_error("migration", "%s: the data obeys ring %.8s, neither end of the "
                      "migration from %.8s to %.8s this proxy followed: the fleet went "
                      "on without it; dropping it", p->name, fp, m->fp_from, m->fp_to);
        }
        ring_unref(R);
        return;
    }
    if (strcmp(from, fp) != 0) {
        if (now_ms(m) >= m->next_wait_log) {
            m->next_wait_log = now_ms(m) + MIG_WAIT_LOG_MS;
            log_error("migration", "%s: the migration record moves from ring %.8s but "
                      "the data obeys %.8s: not following it", p->name, from, fp);
        }
        ring_unref(R);
        return;
    }
    if (m->from != NULL && strcmp(m->fp_to, to) != 0) {
        log_error("migration", "%s: the fleet's migration now goes to %.8s, not %.8s",
                  p->name, to, m->fp_to);
        ring_unref(R);
        return;
    }
    if (m->from == NULL) {
        struct ring *T = NULL;
        uint64_t e2;
        if (strcmp(to, m->fp_want) == 0) {
            T = ring_ref(m->want);
        } else if ((T = ring_from_reply(mring, &e2)) != NULL) {
            char tfp[RINGREC_FP_SIZE];
            ringrec_fingerprint(T, tfp);
            if (strcmp(tfp, to) != 0) {
                ring_unref(T);
                T = NULL;
            }
        }
        if (T == NULL) {
            log_error("migration", "%s: cannot read the migration's target ring %.8s",
                      p->name, to);
            ring_unref(R);
            return;
        }
        int rc = mig_serve_ring(m, R, fp) == 0 ? mig_begin(m, R, T) : -1;
        m->rejoining &= rc != 0;
        ring_unref(T);
        if (rc != 0) {
            ring_unref(R);
            return;
        }
    }
    ring_unref(R);
    snprintf(m->fleet, sizeof(m->fleet), "%s", phase);
    mig_set_phase(m, strcmp(phase, "prepared") == 0 ? PH_PREPARED : PH_SWITCHED);
}

static void follow(struct mig *m, const redisReply *rec, const redisReply *mrec,
                   const redisReply *mring)
{
    bool was_refused = m->refused[0] != '\0';

    follow_record(m, rec, mrec, mring);
    if (was_refused && m->refused[0] == '\0') {
        m->next_refused_log = 0;
        log_notice("migration", "%s: the recorded rings name only servers of the "
                   "config file again: serving", m->p->name);
    }
}

/* The lease holder looks at the snapshot and takes the next step, if any. */
static void coordinate(struct mig *m, const redisReply *proxies, uint64_t now)
{
    if (m->from == NULL) {
        if (strcmp(m->fp_want, m->fp_rec) == 0 ||
            live_failing(m, proxies, now, wants_ours) > 0) {
            return;
        }
        coord_create(m);
        return;
    }
    if (strcmp(m->fleet, "prepared") == 0) {
        if (live_failing(m, proxies, now, acked_prepared) == 0) {
            coord_advance(m, "prepared", "switched");
        }
    } else if (strcmp(m->fleet, "switched") == 0) {
        if (live_failing(m, proxies, now, acked_switched) == 0) {
            coord_advance(m, "switched", "moving");
        }
    }
}

static void log_waiting(struct mig *m, const char *what)
{
    if (m->waiting[0] != '\0' && now_ms(m) >= m->next_wait_log) {
        m->next_wait_log = now_ms(m) + MIG_WAIT_LOG_MS;
        log_notice("migration", "%s: %s; waiting for %s", m->p->name, what, m->waiting);
    }
}

static void update_state(struct mig *m)
{
    if (m->fenced || m->refused[0] != '\0') {
        m->state = MIG_FENCED;
    } else if (m->fp_rec[0] == '\0') {
        m->state = MIG_STARTING;
    } else if (m->from == NULL) {
        m->state = strcmp(m->fp_want, m->fp_rec) == 0 ? MIG_IDLE : MIG_PROPOSED;
    } else if (m->phase == PH_PREPARED) {
        m->state = MIG_PREPARED;
    } else {
        m->state = m->lease && strcmp(m->fleet, "moving") == 0 ? MIG_MOVING : MIG_SWITCHED;
    }
}

/* Only Redis' 1 says the record is ours: 0 is another proxy's, first. */
static void on_first_record(redisAsyncContext *ac, void *r, void *priv)
{
    struct mig *m = priv;
    redisReply *reply = r;

    if (ac->data == NULL || !reply_ok(m, reply)) {
        return;     /* refused: the index health says why; the next sync retries */
    }
    if (reply->type == REDIS_REPLY_INTEGER && reply->integer == 1) {
        m->wrote_record = true;
        log_notice("migration", "%s: recorded ring %.8s (epoch %llu) in %s:ring as "
                   "where the data lives", m->p->name, m->fp_first,
                   (unsigned long long)m->epoch_first, m->prefix);
    }
    m->next_sync = 0;
}

/* The ring record is missing: write ours, unless someone else did first;
 * the backends may then hold keys nobody indexed, so the same script marks
 * the index for a rebuild (src/adopt.c). */
static void write_first_record(struct mig *m, const struct ring *r, uint64_t epoch)
{
    const char *keys[] = { "ring", "index" };

    ringrec_fingerprint(r, m->fp_first);
    m->epoch_first = epoch;
    eval_with_ring(m, on_first_record, m, RB_FIRST_RECORD_SCRIPT, keys, 2, NULL, 0, r, epoch);
}

/* 1 when <prefix>:proxies holds this proxy's own sweeper announcement. */
static size_t own_sweeper(const struct mig *m, const redisReply *proxies)
{
    size_t n = strlen(SWEEP_FIELD_PREFIX), idlen = strlen(m->id);

    for (size_t j = 0; j + 1 < proxies->elements; j += 2) {
        const redisReply *f = proxies->element[j];
        if (f->type == REDIS_REPLY_STRING && f->len == n + idlen &&
            memcmp(f->str, SWEEP_FIELD_PREFIX, n) == 0 &&
            memcmp(f->str + n, m->id, idlen) == 0) {
            return 1;
        }
    }
    return 0;
}

static void on_sync(redisAsyncContext *ac, void *r, void *priv)
{
    struct mig *m = ac->data;
    redisReply *reply = r;
    uint64_t sent = (uint64_t)(uintptr_t)priv;

    if (m == NULL) {
        return;
    }
    m->syncing = m->syncing && sent != m->sync_sent;   /* the latest one answered */
    if (!reply_ok(m, reply)) {
        return;     /* refused: the index health logs it, the fence counts it */
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 6 ||
        reply->element[0]->type != REDIS_REPLY_INTEGER ||
        reply->element[2]->type != REDIS_REPLY_ARRAY ||
        reply->element[4]->type != REDIS_REPLY_ARRAY) {
        if (now_ms(m) >= m->next_wait_log) {
            m->next_wait_log = now_ms(m) + MIG_WAIT_LOG_MS;
            log_error("migration", "%s: Redis answered the sync with an unexpected "
                      "reply", m->p->name);
        }
        return;
    }
    idx_redis_ok(m->p->idx, IDX_CONN_COORD);
    uint64_t now = (uint64_t)reply->element[0]->integer;
    bool lease = reply->element[1]->type == REDIS_REPLY_INTEGER &&
                 reply->element[1]->integer == 1;
    const redisReply *rec = reply->element[2], *mrec = reply->element[3],
                     *proxies = reply->element[4], *mring = reply->element[5];

    bool was_fenced = m->fenced;
    if (sent > m->last_sync_ok) {
        m->last_sync_ok = sent;     /* Redis read the records after that */
    }
    if (lease != m->lease) {
        log_notice("migration", "%s: this proxy %s the coordinator lease", m->p->name,
                   lease ? "holds" : "gave up");
    }
    m->lease = lease;
    if (rec->elements == 0) {
        /* No record: the first proxy records its ring; a Redis that lost
         * its data is told apart by our having seen a record before. */
        if (m->fp_rec[0] != '\0' || m->wrote_record) {
            log_error("migration", "%s: Redis came back without %s:ring: it lost the "
                      "index (run Redis with persistence); keys stored before now "
                      "cannot be moved by a resize until written again", m->p->name,
                      m->prefix);
        }
        /* The ring the data obeys: a migration's from ring until the new
         * one was recorded (its end may wait for the tick or for the
         * sweeps of tombstones: move.c, tomb_sweep), then the new one as
         * the fleet recorded it (to_rec: fp_to is its fingerprint; to may
         * hold this file's addresses). */
        const struct ring *first = m->from == NULL ? m->p->ring :
                                   strcmp(m->fp_rec, m->fp_to) == 0 ? m->to_rec : m->from;
        write_first_record(m, first, m->epoch ? m->epoch : 1);
        return;
    }
    follow(m, rec, mrec, mring);
    /* A refused record takes no part in the fleet's decisions. */
    if (m->refused[0] == '\0') {
        /* Alone on the prefix: the index may skip re-stores it knows. Our
         * own sweeper's announcement does not count: it tells our index
         * what it removes (docs/ARCHITECTURE.md, "The sweeper"). */
        idx_set_shared(m->p->idx, proxies->elements / 2 - own_sweeper(m, proxies) != 1);
        if (m->lease) {
            coordinate(m, proxies, now);
        } else if (m->from == NULL && strcmp(m->fp_want, m->fp_rec) != 0) {
            live_failing(m, proxies, now, wants_ours);
        } else {
            live_failing(m, proxies, now, m->phase == PH_PREPARED ? acked_prepared :
                         acked_switched);
            if (m->from == NULL) {
                m->waiting[0] = '\0';
            }
        }
    }
    if (m->from == NULL && strcmp(m->fp_want, m->fp_rec) != 0) {
        log_waiting(m, "this file's ring differs from the recorded one: proposed");
    } else if (m->from != NULL && m->lease && strcmp(m->fleet, "moving") != 0) {
        log_waiting(m, "the migration's next phase needs every live proxy");
    }
    /* A proxy back from a freeze serves again only once its routing is
     * what the records say (the end of a migration is applied on the tick;
     * until then it stays fenced). */
    m->fenced = was_fenced &&
                ((m->from != NULL && (strcmp(m->fp_rec, m->fp_to) == 0 || mig_obsolete(m))) ||
                 m->rejoining);
    if (was_fenced && !m->fenced) {
        log_notice("migration", "%s: Redis answers again: serving", m->p->name);
    }
    update_state(m);
    if (m->ready != NULL && m->fp_rec[0] != '\0') {
        void (*ready)(struct pool *) = m->ready;
        m->ready = NULL;
        ready(m->p);
    }
    if (!m->lease) {
        m->done_loaded = false;
    } else if (m->from != NULL && strcmp(m->fleet, "moving") == 0 && !m->done_loaded &&
               !m->loading_done) {
        /* Resume: arcs a previous holder finished need no work; copies it
         * left in doubt are settled (the replies come in order: the
         * doubts are loaded before the pump may start). */
        m->doubts_loaded = false;
        m->loading_done =
            mig_redis(m, on_doubts, m, "HGETALL %s:migration:doubts:%s", m->prefix,
                      m->fp_to) &&
            mig_redis(m, on_done_arcs, m, "SMEMBERS %s:migration:done:%s", m->prefix,
                      m->fp_to);
    }
}

static void on_doubts(redisAsyncContext *ac, void *r, void *priv)
{
    struct mig *m = priv;
    redisReply *reply = r;

    if (ac->data == NULL) {
        return;
    }
    m->doubts_loaded = reply_ok(m, reply) && reply->type == REDIS_REPLY_ARRAY &&
                       m->arcs != NULL;
    if (m->doubts_loaded) {
        mig_doubts_load(m, reply);
    }
}

static void on_done_arcs(redisAsyncContext *ac, void *r, void *priv)
{
    struct mig *m = priv;
    redisReply *reply = r;

    if (ac->data == NULL) {
        return;
    }
    m->loading_done = false;
    if (!reply_ok(m, reply) || reply->type != REDIS_REPLY_ARRAY || m->arcs == NULL ||
        !m->doubts_loaded) {
        return;     /* both again at the next sync */
    }
    for (size_t j = 0; j < reply->elements; j++) {
        unsigned first, last;
        if (reply->element[j]->type != REDIS_REPLY_STRING ||
            sscanf(reply->element[j]->str, "%u-%u", &first, &last) != 2) {
            continue;
        }
        int32_t a = arc_of(m, first);
        if (a >= 0 && m->diff.arcs[a].first == first && m->diff.arcs[a].last == last &&
            !m->arcs[a].done && m->pass == 1) {
            m->arcs[a].done = true;
            m->arcs_done++;
        }
    }
    m->done_loaded = true;
    log_notice("migration", "%s: this proxy moves the keys: %u of %zu arcs were done "
               "already", m->p->name, m->arcs_done, m->diff.narcs);
}

static void sync_now(struct mig *m)
{
    static const char script[] =
        "local t = redis.call('time') "
        "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "
        "redis.call('hset', KEYS[4], ARGV[1], now .. ' ' .. ARGV[2]) "
        "local lease = 0 "
        "local holder = redis.call('get', KEYS[5]) "
        "if holder == ARGV[1] then "
        "  if ARGV[3] == '1' then redis.call('pexpire', KEYS[5], ARGV[4]) lease = 1 "
        "  else redis.call('del', KEYS[5]) end "
        "elseif not holder and ARGV[3] == '1' then "
        "  redis.call('set', KEYS[5], ARGV[1], 'PX', ARGV[4]) lease = 1 end "
        "return {now, lease, redis.call('hgetall', KEYS[1]), "
        "redis.call('hgetall', KEYS[2]), redis.call('hgetall', KEYS[4]), "
        "ARGV[5] == '1' and redis.call('hgetall', KEYS[3]) or {}}";
    char beat[160], lease_ms[32];
    const char *keys[] = { "ring", "migration", "migration:ring", "proxies",
                           "migration:lock" };
    /* A candidate coordinator: a change is proposed here, or one runs. */
    bool candidate = m->fp_rec[0] != '\0' &&
                     ((m->from != NULL && strcmp(m->fp_rec, m->fp_to) != 0) ||
                      strcmp(m->fp_want, m->fp_rec) != 0);
    enum mig_phase ack = m->acked;

    snprintf(beat, sizeof(beat), "%s %s %s", m->fp_want, ack_names[ack],
             m->from != NULL ? m->fp_to : "-");
    snprintf(lease_ms, sizeof(lease_ms), "%llu",
             (unsigned long long)(m->liveness_ms ? m->liveness_ms : 10000));
    /* The target ring is read only while this proxy does not follow a
     * migration yet: it can be large, and it does not change. */
    const char *args[] = { m->id, beat, candidate ? "1" : "0", lease_ms,
                           m->from == NULL ? "1" : "0" };
    m->syncing = true;
    m->sync_sent = now_ms(m);
    /* The reply carries its own send time: one given up for lost (mig_tick)
     * may still come, after the next was sent, and tells only of then. */
    eval_with_ring(m, on_sync, (void *)(uintptr_t)m->sync_sent, script, keys, 5, args, 5,
                   NULL, 0);
}

/* --- Redis connection ----------------------------------------------------------- */

static void mig_on_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    mig_connect(arg);
}

static void mig_on_connect(const redisAsyncContext *ac, int status)
{
    struct mig *m = ac->data;

    if (m == NULL) {
        return;
    }
    if (status != REDIS_OK) {
        idx_redis_down(m->p->idx, IDX_CONN_COORD, ac->errstr);
        m->rc = NULL;
        m->rc_up = false;
        m->syncing = false;
        m->handshake = 0;
        struct timeval tv = { 1, 0 };
        event_add(m->retry, &tv);
        return;
    }
    m->next_sync = 0;
}

static void mig_on_disconnect(const redisAsyncContext *ac, int status)
{
    struct mig *m = ac->data;
    char why[192];

    if (m == NULL) {
        return;
    }
    snprintf(why, sizeof(why), "lost the connection (%s)",
             status == REDIS_OK ? "closed" : ac->errstr);
    idx_redis_down(m->p->idx, IDX_CONN_COORD, why);
    idx_set_shared(m->p->idx, true);    /* as for a sync left unanswered */
    m->left = m->left || m->closing;
    m->rc = NULL;
    m->rc_up = false;
    m->handshake = 0;
    m->syncing = false;
    m->lease = false;       /* it expires; someone, maybe us, takes over */
    m->done_loaded = false; /* ... and whoever held it meanwhile may have
                               finished arcs and left copies in doubt */
    for (uint32_t i = 0; m->arcs != NULL && i < m->diff.narcs; i++) {
        m->arcs[i].listing = false;
    }
    m->reserved = 0;
    struct timeval tv = { 1, 0 };
    event_add(m->retry, &tv);
}

/* AUTH and SELECT: nothing else is sent before Redis accepted both (Redis
 * closes a connection that sends long commands before AUTH). */
static void on_handshake(redisAsyncContext *ac, void *r, void *priv)
{
    struct mig *m = priv;
    redisReply *reply = r;

    if (ac->data == NULL || reply == NULL || m->handshake == 0) {
        return;     /* disconnected: mig_on_disconnect reconnects */
    }
    if (reply->type == REDIS_REPLY_ERROR &&
        idx_redis_error(m->p->idx, IDX_CONN_COORD, reply->str) != IDX_H_OK) {
        m->handshake_failed = true;
    }
    if (--m->handshake > 0) {
        return;
    }
    if (m->handshake_failed) {
        m->next_handshake = now_ms(m) + 1000;   /* mig_tick sends it again */
        return;
    }
    m->rc_up = true;
    m->next_sync = 0;
}

/* CONFIG GET's reply (priv m), or SCRIPT LOAD's (priv NULL: a refusal is
 * the handshake's, sent again with it). */
static void on_limits(redisAsyncContext *ac, void *r, void *priv)
{
    struct mig *m = priv;

    if (ac->data != NULL && r != NULL && m != NULL) {
        lay_limits_parse(&m->limits, r);
    }
}

static void mig_handshake(struct mig *m)
{
    const struct conf_index *ix = &m->p->conf->index;

    m->handshake = 0;
    m->handshake_failed = false;
    if (ix->password != NULL) {
        const char *argv[] = { "AUTH", ix->password };
        size_t len[] = { 4, strlen(ix->password) };
        rp_xcheck(redisAsyncCommandArgv(m->rc, on_handshake, m, 2, argv,
                                        len) == REDIS_OK, "the Redis AUTH command");
        m->handshake++;
    }
    if (ix->db != 0) {
        char db[24];
        snprintf(db, sizeof(db), "%lld", (long long)ix->db);
        const char *argv[] = { "SELECT", db };
        size_t len[] = { 6, strlen(db) };
        rp_xcheck(redisAsyncCommandArgv(m->rc, on_handshake, m, 2, argv,
                                        len) == REDIS_OK, "the Redis SELECT command");
        m->handshake++;
    }
    /* The index script (the mover's listings and index moves, layout.h)
     * is loaded before anything uses it; CONFIG may be refused. */
    const char *largv[3];
    size_t llen[3];
    lay_load_argv(largv, llen);
    rp_xcheck(redisAsyncCommandArgv(m->rc, on_limits, NULL, 3, largv, llen) == REDIS_OK,
              "the Redis SCRIPT LOAD command");
    const char *cargv[] = { "CONFIG", "GET", LAY_CONFIG_PATTERN };
    size_t clen[] = { 6, 3, strlen(LAY_CONFIG_PATTERN) };
    rp_xcheck(redisAsyncCommandArgv(m->rc, on_limits, m, 3, cargv, clen) == REDIS_OK,
              "the Redis CONFIG GET command");
    /* Commands queue until the connect completes. */
    m->rc_up = m->handshake == 0;
}

static void mig_connect(struct mig *m)
{
    const struct conf_index *ix = &m->p->conf->index;
    redisAsyncContext *ac = ix->redis.is_unix ? redisAsyncConnectUnix(ix->redis.host) :
                            redisAsyncConnect(ix->redis.host, ix->redis.port);

    if (ac == NULL || ac->err) {
        idx_redis_down(m->p->idx, IDX_CONN_COORD, ac != NULL ? ac->errstr : "out of memory");
        if (ac != NULL) {
            redisAsyncFree(ac);
        }
        struct timeval tv = { 1, 0 };
        event_add(m->retry, &tv);
        return;
    }
    ac->data = m;
    m->rc = ac;
    rp_xcheck(redisLibeventAttach(ac, m->p->w->base) == REDIS_OK,
              "a Redis connection's events");
    redisAsyncSetConnectCallback(ac, mig_on_connect);
    redisAsyncSetDisconnectCallback(ac, mig_on_disconnect);
    mig_handshake(m);
    m->next_sync = 0;
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
        asprintf(&m->ring_key, "%s:ring", p->conf->index.prefix) < 0 ||
        (m->retry = evtimer_new(p->w->base, mig_on_retry, m)) == NULL) {
        mig_free(m);
        return NULL;
    }
    m->p = p;
    m->tombs_tail = &m->tombs;
    m->ready = ready;
    lay_limits_default(&m->limits);
    m->state = MIG_STARTING;
    m->liveness_ms = (uint64_t)p->conf->migration.liveness;
    if (!p->conf->migration.delete_source) {
        log_warn("migration", "%s: delete_source: false is ignored: an old copy left "
                 "behind would be read first during the next resize, or served stale "
                 "after a resize back (docs/ARCHITECTURE.md)", p->name);
    }
    m->want = ring_ref(p->ring);
    ringrec_fingerprint(p->ring, m->fp_want);
    m->ready_deadline = worker_now_ms(p->w) + MIG_READY_TIMEOUT_MS;
    m->last_sync_ok = worker_now_ms(p->w);
    mig_connect(m);
    return m;
}

static void on_left(redisAsyncContext *ac, void *r, void *priv)
{
    struct mig *m = priv;

    (void)r;
    if (ac->data != NULL) {
        m->left = true;
    }
}

void mig_leave(struct mig *m)
{
    if (m == NULL) {
        return;
    }
    m->closing = true;
    if (!m->rc_up) {
        m->left = true;     /* nobody to tell; the heartbeat will age out */
        return;
    }
    /* First the notes the fleet does not have (this proxy's own it could
     * not hand, and those it took and has not swept), then the heartbeat:
     * the fleet cannot end the migration without them. */
    tomb_hand_pending(m, true);
    mig_redis(m, NULL, NULL, "HDEL %s:proxies %s", m->prefix, m->id);
    mig_redis(m, on_left, m, "EVAL %s 1 %s:migration:lock %s",
              "if redis.call('get', KEYS[1]) == ARGV[1] then "
              "return redis.call('del', KEYS[1]) end return 0", m->prefix, m->id);
}

/* Gone from the fleet, and what it took on for the fleet done: a take's
 * reply read, and (the new ring recorded) the notes it holds swept, which
 * nobody else may take any more (within STOP_LEAVE_MS: proxy.c). */
bool mig_left(const struct mig *m)
{
    return m == NULL ||
           (m->left && !m->taking && m->sweeps == 0 && (m->tombs == NULL || !mig_recorded(m)));
}

/* The end of the loop turn (mig_free): only m's own memory is left, and
 * m->p may be gone already. */
static void mig_destroy(void *arg)
{
    struct mig *m = arg;

    assert(m->rc == NULL && m->retry == NULL);
    free(m->prefix);
    free(m->ring_key);
    free(m->id);
    free(m);
}

void mig_free(struct mig *m)
{
    if (m == NULL) {
        return;
    }
    /* Fail the moves in flight while their operations still exist; with
     * `closing` set, their handlers send nothing new. */
    m->closing = m->freeing = true;
    for (uint32_t i = 0; m->p != NULL && i < m->p->nbackends; i++) {
        backend_mc_close(m->p->backends[i]);
    }
    if (m->rc != NULL) {
        m->rc->data = NULL;
        redisAsyncFree(m->rc);
        m->rc = NULL;
    }
    doubt_batch_free(m);    /* its copies go with the key table */
    /* Operations still queued complete their clients with an error. */
    for (uint32_t b = 0; b < MIG_BUCKETS; b++) {
        while (m->buckets[b] != NULL) {
            struct mkey *k = m->buckets[b];
            struct mop *op;
            m->buckets[b] = k->next;
            while ((op = TAILQ_FIRST(&k->ops)) != NULL) {
                TAILQ_REMOVE(&k->ops, op, link);
                if (op->f != NULL) {
                    request_frag_fail(op->f, BACKEND_ERR_LOST);
                }
                mop_free(op);
            }
            free(k);
        }
    }
    mig_clear(m);
    ring_unref(m->want);
    m->want = NULL;
    if (m->retry != NULL) {
        event_free(m->retry);
        m->retry = NULL;
    }
    if (m->p != NULL) {
        defer_add(m->p->w->defer, mig_destroy, m);
    } else {
        mig_destroy(m);     /* mig_new failed: no callback can hold it */
    }
}

/* --- the pool's questions --------------------------------------------------------- */

int mig_change_ring(struct mig *m, struct ring *to, char *err, size_t errlen)
{
    const struct ring *cur = m->want;
    char fp[RINGREC_FP_SIZE];

    if (cur->hash != to->hash || cur->has_tag != to->has_tag ||
        (cur->has_tag && memcmp(cur->tag, to->tag, 2) != 0)) {
        snprintf(err, errlen, "changing hash or hash_tag of an indexed pool would "
                 "move every key; not supported");
        return -1;
    }
    ringrec_fingerprint(to, fp);
    if (strcmp(fp, m->fp_want) == 0) {
        return 0;
    }
    ring_unref(m->want);
    m->want = ring_ref(to);
    memcpy(m->fp_want, fp, sizeof(fp));
    log_notice("migration", "%s: this proxy now proposes ring %.8s; it changes once "
               "every live proxy sharing %s proposes it", m->p->name, fp, m->prefix);
    m->next_sync = 0;
    m->next_wait_log = 0;
    return 0;
}

bool mig_active(const struct mig *m)
{
    return m != NULL && m->from != NULL;
}

uint32_t mig_shape(const struct mig *m)
{
    uint32_t h = 2166136261u;   /* FNV-1a over the fleet's phase name */

    if (m == NULL) {
        return 0;
    }
    for (const char *c = m->fleet; *c != '\0'; c++) {
        h = (h ^ (uint8_t)*c) * 16777619u;
    }
    return h ^ ((uint32_t)m->state | (uint32_t)m->phase << 8 | (uint32_t)m->acked << 16);
}

/* When the last sync's news runs out by the clock (never with liveness 0),
 * whatever the fenced flag says; 0 while nothing can be trusted yet. */
static uint64_t sync_stale_at(const struct mig *m)
{
    if (m->refused[0] != '\0') {
        return 0;
    }
    if (m->liveness_ms == 0) {
        return UINT64_MAX;
    }
    return m->fp_rec[0] == '\0' ? 0 : m->last_sync_ok + m->liveness_ms / 2 + 1;
}

uint64_t mig_fence_at(const struct mig *m)
{
    if (m == NULL) {
        return UINT64_MAX;
    }
    uint64_t at = sync_stale_at(m);
    return m->fenced && at != UINT64_MAX ? 0 : at;
}

bool mig_synced_lately(const struct mig *m)
{
    return worker_now_ms(m->p->w) < sync_stale_at(m);
}

bool mig_fenced(const struct mig *m)
{
    /* From the clock, not only the tick's flag: after a freeze (SIGSTOP)
     * the first loop turn may serve requests before the tick runs. */
    return m != NULL && worker_now_ms(m->p->w) >= mig_fence_at(m);
}

const char *mig_refused(const struct mig *m)
{
    return m != NULL && m->refused[0] != '\0' ? m->refused : NULL;
}

enum mig_state mig_get_state(const struct mig *m)
{
    return m->state;
}

const char *mig_id(const struct mig *m)
{
    return m->id;
}

bool mig_uses_backend(const struct mig *m, const struct backend *be)
{
    for (uint32_t i = 0; m->from_be != NULL && i < m->from->nservers; i++) {
        if (m->from_be[i] == be) {
            return true;
        }
    }
    for (uint32_t i = 0; m->to_be != NULL && i < m->to->nservers; i++) {
        if (m->to_be[i] == be) {
            return true;
        }
    }
    return false;
}

/* Progress into the migration record, only while it is still this one
 * (a plain HSET after the end would create a record with no phase). */
static void write_progress(struct mig *m)
{
    /* ARGV: the record's `to`, holder, updated, then field, value pairs */
    static const char script[] =
        "if redis.call('hget', KEYS[1], 'to') ~= ARGV[1] then return 0 end "
        "redis.call('hset', KEYS[1], 'holder', ARGV[2], 'updated', ARGV[3], "
        "unpack(ARGV, 4)) "
        "return 1";
    struct mig_progress pr;
    char v[PROG_COUNT][PROG_STR_SIZE], updated[24];
    const char *args[3 + 2 * PROG_COUNT];
    int n = 0;

    mig_progress(m, &pr);
    snprintf(updated, sizeof(updated), "%llu", (unsigned long long)time(NULL));
    args[n++] = m->fp_to;
    args[n++] = m->id;
    args[n++] = updated;
    for (int f = 0; f < PROG_COUNT; f++) {
        if (prog_desc[f].hash[0] != '\0') {
            args[n++] = prog_desc[f].hash;
            args[n++] = prog_text(&pr, f, v[f], sizeof(v[f]));
        }
    }
    const char *keys[] = { "migration" };
    eval_with_ring(m, NULL, NULL, script, keys, 1, args, n, NULL, 0);
}

/* The fleet recorded the ring this proxy's migration goes to, as its end:
 * not the same ring recorded again by a later migration (mig_obsolete),
 * whose own notes in <prefix>:migration:tombs:<to> are not this one's to
 * take. */
static bool mig_recorded(const struct mig *m)
{
    return m->from != NULL && m->fp_rec[0] != '\0' && strcmp(m->fp_rec, m->fp_to) == 0 &&
           !mig_obsolete(m);
}

/*
 * Take up to MIG_TOMB_TAKE notes off the fleet's list (LRANGE and LTRIM in
 * one script: each note goes to one proxy). A reply to an older take (the
 * migration was cleared since) is dropped: its notes stay taken, and the
 * tombstones expire.
 */
static void on_tombs_taken(redisAsyncContext *ac, void *r, void *priv)
{
    struct mig *m = ac->data;
    redisReply *reply = r;

    if (m == NULL || (uintptr_t)priv != (uintptr_t)m->gen || !m->taking) {
        return;
    }
    m->taking = false;
    if (reply == NULL) {
        return;         /* the connection went: again after the next sync */
    }
    if (!reply_ok(m, reply) || reply->type != REDIS_REPLY_ARRAY) {
        /* A key of another type, or an answer no script of ours gives:
         * waiting would hold the migration's end for good, and the notes
         * there expire with their tombstones. Anything else (loading, a
         * failover, out of memory) passes: tried again. */
        bool never = reply->type != REDIS_REPLY_ERROR || strstr(reply->str, "WRONGTYPE") ||
                     ++m->take_refusals >= MIG_TAKE_TRIES;
        log_limited(LOG_WARN, 10, "migration", "%s: cannot take the fleet's tombstone notes "
                    "from Redis (%s)%s", m->p->name,
                    reply->type == REDIS_REPLY_ERROR ? reply->str : "not a list",
                    never ? "; given up: they expire in a day" : "; trying again");
        m->taken = never;
        m->take_after = now_ms(m) + MIG_SYNC_FAST_MS;
        return;
    }
    m->take_refusals = 0;
    for (size_t j = 0; j < reply->elements; j++) {
        const redisReply *e = reply->element[j];
        if (e->type == REDIS_REPLY_STRING) {
            tomb_take(m, e->str, e->len);
        } else {
            m->tombs_left++;
        }
    }
    m->taken = reply->elements < MIG_TOMB_TAKE && !m->take_again;
}

/*
 * The fleet recorded the new ring: take the notes the other proxies handed
 * to the fleet (move.c, tomb_push; its own it skips) and sweep them with
 * its own. The next batch is taken once the notes taken before are all
 * swept, so that its own entries, which it trims unnoted, are: a note of
 * its own is in Redis as long as it is not swept. Only after a recent
 * sync, as tomb_sweep; not while leaving.
 */
static void tomb_collect(struct mig *m)
{
    static const char script[] =
        "local r = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1) "
        "if #r > 0 then redis.call('LTRIM', KEYS[1], #r, -1) end return r";

    if (m->taken || m->taking || m->closing || m->tombs != NULL || m->sweeps > 0 ||
        !mig_synced_lately(m) || now_ms(m) < m->take_after) {
        return;
    }
    m->take_again = false;
    m->taking = mig_redis(m, on_tombs_taken, (void *)(uintptr_t)m->gen,
                          "EVAL %s 1 %s:migration:tombs:%s %d", script, m->prefix, m->fp_to,
                          MIG_TOMB_TAKE);
}

void mig_flush(struct mig *m)
{
    if (m == NULL) {
        return;
    }
    doubt_batch_send(m, true);
    if (m->tombs_to_hand > 0 && m->rc_up) {
        tomb_hand_pending(m, false);    /* Redis is back */
    }
    if (mig_recorded(m)) {
        tomb_collect(m);
        if (m->tombs != NULL) {
            tomb_sweep(m);      /* more as the earlier ones end */
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
    /* Fence: past half the liveness time without a sync, the fleet may
     * soon go on without us (ARCHITECTURE.md, invariant I6). */
    if (m->liveness_ms > 0 && !m->fenced && now > m->last_sync_ok + m->liveness_ms / 2) {
        const char *why;
        enum idx_health h = idx_health(m->p->idx, IDX_CONN_COORD, &why);
        m->fenced = true;
        m->lease = false;
        log_error("migration", "%s: no sync with Redis for %llu ms (%s%s%s): refusing "
                  "the pool's commands until it answers (the fleet may resize without "
                  "this proxy after %llu ms)", m->p->name,
                  (unsigned long long)(now - m->last_sync_ok), idx_health_names[h],
                  *why ? ": " : "", why, (unsigned long long)m->liveness_ms);
        update_state(m);
    }
    /* A connection whose AUTH or SELECT was refused asks again. */
    if (m->rc != NULL && !m->rc_up && m->handshake_failed && m->handshake == 0 &&
        now >= m->next_handshake) {
        mig_handshake(m);
    }
    /* The phase is acknowledged once requests routed before it landed. */
    if (m->acked != m->phase && pool_drained(m->p)) {
        assert(m->acked < m->phase);    /* acknowledged phases trail, never lead */
        m->acked = m->phase;
        m->next_sync = 0;
    }
    /* Recorded: the tombstones this proxy noted go first (mig_flush starts
     * their sweeps), then the migration, once no command on a key is left. */
    if (mig_recorded(m) && m->taken && m->tombs == NULL && m->nops == 0) {
        mig_end_local(m);
        update_state(m);
    }
    if (mig_obsolete(m) && m->nops == 0) {
        uint64_t left = m->tombs_left;
        mig_clear(m);           /* left behind (follow_record) */
        m->rejoining = true;    /* a reply to a sync sent before says nothing yet */
        m->next_sync = 0;       /* follow the records at once */
        log_notice("migration", "%s: dropped the migration the fleet went past; %llu "
                   "tombstones it noted left to expire", m->p->name,
                   (unsigned long long)(m->tombs_left - left));
        update_state(m);
    }
    uint64_t every = m->from != NULL || strcmp(m->fp_want, m->fp_rec) != 0 ?
                     MIG_SYNC_FAST_MS : MIG_SYNC_MS;
    if (now >= m->next_sync && m->rc_up && !m->syncing && !m->closing) {
        m->next_sync = now + every;
        sync_now(m);
    } else if (m->syncing && now > m->sync_sent + 10 * MIG_SYNC_MS && m->rc != NULL) {
        m->syncing = false;     /* no answer: the fence decides, try again */
        /* Its reply may have said a sweeper appeared: until a reply is
         * read, count the prefix shared (docs/ARCHITECTURE.md, "The sweeper"). */
        idx_set_shared(m->p->idx, true);
    }
    if (m->from == NULL) {
        return;
    }
    int64_t rate = m->p->conf->migration.rate;
    if (rate > 0) {
        m->tokens += (double)rate * (double)(now - m->last_refill) / 1000.0;
        if (m->tokens > (double)rate) {
            m->tokens = (double)rate;   /* at most a second's burst */
        }
    } else {
        m->tokens = 0;  /* unlimited: no debt for a rate set later to pay */
    }
    m->last_refill = now;
    if (m->lease && strcmp(m->fleet, "moving") == 0 && now >= m->next_progress_write) {
        /* For `ringproxy status` without the admin port: once a second. */
        m->next_progress_write = now + 1000;
        write_progress(m);
    }
    if (m->lease && strcmp(m->fleet, "moving") == 0 && now >= m->next_progress_log) {
        m->next_progress_log = now + MIG_PROGRESS_LOG_MS;
        double secs = (double)(now - m->last_log_ms) / 1000.0;
        double kps = secs > 0 ? (double)(m->keys_moved - m->moved_at_last_log) / secs : 0;
        m->moved_at_last_log = m->keys_moved;
        m->last_log_ms = now;
        m->last_rate = kps;
        if (m->pass == MIG_PASS_CLOSING) {
            log_notice("migration", "%s: closing pass, %u/%u sources done, %llu keys "
                       "listed in arcs that move, %llu unknown to the index moved; %llu "
                       "keys moved (%.0f/s), %llu stale, %llu failed%s%s", m->p->name,
                       m->sources_done, m->nsources,
                       (unsigned long long)m->closing_listed,
                       (unsigned long long)m->unindexed_moved,
                       (unsigned long long)m->keys_moved, kps,
                       (unsigned long long)m->keys_stale,
                       (unsigned long long)m->keys_failed,
                       m->blocked[0] ? "; blocked: " : "", m->blocked);
        } else {
            log_notice("migration", "%s: pass %u, %u/%zu arcs done, %llu keys moved "
                       "(%.0f/s), %llu stale, %llu failed%s%s", m->p->name, m->pass,
                       m->arcs_done, m->diff.narcs, (unsigned long long)m->keys_moved,
                       kps, (unsigned long long)m->keys_stale,
                       (unsigned long long)m->keys_failed,
                       m->blocked[0] ? "; blocked: " : "", m->blocked);
        }
    }
    closing_tick(m);
    bulk_pump(m);
}

void mig_progress(const struct mig *m, struct mig_progress *out)
{
    memset(out, 0, sizeof(*out));
    out->state = m->state;
    out->epoch = m->epoch;
    out->lease = m->lease;
    /* Nothing waits while the recorded ring is unknown. */
    out->pending = (m->from != NULL || m->fp_rec[0] != '\0') &&
                   strcmp(m->fp_want, m->from != NULL ? m->fp_to : m->fp_rec) != 0;
    snprintf(out->from, sizeof(out->from), "%s", m->from != NULL ? m->fp_from : m->fp_rec);
    if (m->from != NULL) {
        snprintf(out->to, sizeof(out->to), "%s", m->fp_to);
        out->arcs_total = m->diff.narcs;
        out->moved_fraction = (double)m->diff.moved / RING_SPACE;
        out->elapsed_sec = (double)(worker_now_ms(m->p->w) - m->started_ms) / 1000.0;
    }
    snprintf(out->fleet_phase, sizeof(out->fleet_phase), "%s", m->fleet);
    snprintf(out->waiting, sizeof(out->waiting), "%s", m->waiting);
    snprintf(out->blocked, sizeof(out->blocked), "%s", m->blocked);
    out->live_proxies = m->nlive;
    out->fenced = m->fenced || m->refused[0] != '\0';
    out->arcs_done = m->arcs_done;
    out->keys_moved = m->keys_moved;
    out->keys_skipped = m->keys_skipped;
    out->keys_stale = m->keys_stale;
    out->keys_failed = m->keys_failed;
    out->keys_retried = m->keys_retried;
    out->client_ops = m->client_ops;
    out->index_moved = m->index_moved;
    out->tombs_written = m->tombs_written;
    out->tombs_cleared = m->tombs_cleared;
    out->tombs_swept = m->tombs_swept;
    out->tombs_left = m->tombs_left;
    out->tombs_handed = m->tombs_handed;
    out->tombs_taken = m->tombs_taken;
    out->fallback_reads = m->fallback_reads;
    out->copies_in_doubt = m->ndoubts;
    out->conflicts_waiting = m->nconflicts;
    out->conflicts_settled = m->conflicts_settled;
    out->keys_per_sec = m->last_rate;
    out->unindexed_moved = m->unindexed_moved;
    out->closing_listed = m->closing_listed;
    out->closing_refused = m->closing_refused;
    out->closing_sources = m->nsources;
    out->closing_sources_done = m->sources_done;
    out->bad_members = m->bad_members;
    out->eta_sec = prog_eta_sec(out);
}

/* Every field progress.h names for `stats`, in its table's order. */
void mig_stats(const struct mig *m, struct evbuffer *out)
{
    struct mig_progress pr;
    char v[PROG_STR_SIZE];

    mig_progress(m, &pr);
    for (int f = 0; f < PROG_COUNT; f++) {
        const struct prog_desc *d = &prog_desc[f];
        if (d->stat[0] != '\0') {
            prog_text(&pr, f, v, sizeof(v));
            evbuffer_add_printf(out, "STAT migration:%s %s\r\n", d->stat,
                                v[0] == '\0' && d->type == PROG_STR ? d->stat_none : v);
        }
    }
}
