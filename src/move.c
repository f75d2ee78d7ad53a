/*
 * move.c — moving keys whose owner changed, one operation at a time per key.
 *
 * Design notes
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
 *
 * The bulk mover lists each changed arc's keys from the old v-node's sorted
 * set (ZRANGEBYSCORE over the arc) and queues a move per key, within the
 * migration's rate and in-flight budget.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <event2/buffer.h>
#include <hiredis/hiredis.h>

#include "backend.h"
#include "index.h"
#include "log.h"
#include "migrate_int.h"

static void mop_next(struct mkey *k);

static struct mconn *mc_of(struct backend *be)
{
    if (be->mc == NULL) {
        uint32_t t = be->pool->conf->timeout > 0 ? (uint32_t)be->pool->conf->timeout : 5000;
        be->mc = mconn_new(be->pool->w->base, be->addr.host, be->addr.port,
                           be->addr.is_unix, t);
    }
    return be->mc;
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
int32_t arc_of(const struct mig *m, uint32_t h)
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

void mop_free(struct mop *op)
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

void mop_start(struct mop *op)
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

void arc_free_seen(struct mig_arc *a)
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
void bulk_pump(struct mig *m)
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
