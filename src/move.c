/*
 * move.c — commands on keys whose owner changes, and the bulk mover.
 * The rules, and the invariants they keep, are docs/ARCHITECTURE.md,
 * "Resizing a fleet"; the phases come from migrate.c.
 *
 * Commands on a changing key (one whose owner differs between the old ring
 * and the new one) never copy it. They run where the value is:
 *   reads      the old owner first (a tombstone there is a miss), then the
 *              new owner, then the old owner once more if both missed
 *   set        the phase's home (old owner when prepared, new owner when
 *              switched), then delete the other copy, then acknowledge
 *   delete     both owners; when switched, a real value on the old owner
 *              is replaced by a tombstone (conditionally on its CAS) so that
 *              a copy the mover made meanwhile stays invisible
 *   add        fails if either owner holds a real value, else stores at home
 *   the rest   (replace append prepend cas incr decr touch) run on the old
 *              owner when it holds a real value, conditionally on its CAS,
 *              else on the new owner
 * Within this proxy every command on a key goes through the key's FIFO, so
 * it waits for the bulk move of that key, and for earlier commands.
 *
 * Moving one key (the lease holder only, once every live proxy is switched):
 *   mg key v f t c            on the old owner: value, flags, TTL, CAS
 *   ms key n F T ME c         on the new owner, add mode: a newer write wins
 *   md key C<cas>             on the old owner, only if unchanged
 * If the old copy changed (EX) or vanished (NF) in between, the new copy is
 * removed only if it is still ours (md key C<copy cas>) and the key is
 * retried, so a delete or set racing the move can never be undone by it. A
 * tombstone found on the old owner is removed (conditionally).
 *
 * The bulk mover lists each changed arc's keys from the old v-node's sorted
 * set (ZRANGEBYSCORE over the arc) and queues a move per key, within the
 * migration's rate and in-flight budget. Moves that fail leave the arc for
 * another pass after a pause; the arc is done only when a pass moved
 * everything. After every arc is done, a second pass over all of them picks
 * up tombstones and entries written meanwhile; then the closing pass
 * (closing.c) lists each source server for keys the index never knew.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <event2/buffer.h>
#include <hiredis/hiredis.h>

#include "backend.h"
#include "cmd.h"
#include "index.h"
#include "log.h"
#include "mem.h"
#include "meta.h"
#include "migrate_int.h"

static void mop_next(struct mkey *k);

/* How long a move connection waits for an answer: the pool's timeout. */
uint32_t op_timeout_ms(const struct pool *p)
{
    return p->conf->timeout > 0 ? (uint32_t)p->conf->timeout : 5000;
}

/* The backend's meta connection for op (it owns it: backend_mc): the
 * mover's ordered one, or the one client commands use. */
static struct mconn *mc_of(const struct mop *op, struct backend *be)
{
    /* Bounded, but above what a client may store through us: the server
     * may hold larger items written around the proxy. */
    size_t cap = (size_t)be->pool->conf->item_size_max + 1024;

    return backend_mc(be, op->f == NULL ? BACKEND_MC_MOVER : BACKEND_MC_CLIENT,
                      op_timeout_ms(be->pool), cap > MIG_VALUE_MAX ? cap : MIG_VALUE_MAX);
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

/* --- copies in doubt ---------------------------------------------------------- */

static uint64_t value_hash(const char *v, size_t len, uint32_t flags)
{
    uint64_t h = UINT64_C(0xcbf29ce484222325) ^ ((uint64_t)flags << 32 | (uint32_t)len);

    for (size_t i = 0; i < len; i++) {
        h ^= (uint8_t)v[i];
        h *= UINT64_C(0x100000001b3);
    }
    return h;
}

static struct mdoubt **table_slot(struct mdoubt **table, const char *key, size_t len)
{
    struct mdoubt **pp = &table[key_bucket(key, len)];

    while (*pp != NULL && ((*pp)->len != len || memcmp((*pp)->key, key, len) != 0)) {
        pp = &(*pp)->next;
    }
    return pp;
}

static struct mdoubt **doubt_slot(struct mig *m, const char *key, size_t len)
{
    return table_slot(m->doubts, key, len);
}

/* The entry of key k at its slot, created if absent (count: the table's). */
static struct mdoubt *table_get(struct mdoubt **pp, const struct mkey *k, uint64_t *count)
{
    struct mdoubt *d = *pp;

    if (d == NULL && (d = calloc(1, sizeof(*d) + k->len)) != NULL) {
        d->len = k->len;
        memcpy(d->key, k->key, k->len);
        *pp = d;
        (*count)++;
    }
    return d;
}

/* Unlink and free the entry at pp (count: the table's). */
static void table_drop(struct mdoubt **pp, uint64_t *count)
{
    struct mdoubt *d = *pp;

    if (d != NULL) {
        *pp = d->next;
        free(d);
        (*count)--;
    }
}

/*
 * Every copy is recorded in Redis before it is sent (move_copy), until its
 * answer comes or, if none comes, until its doubt is settled
 * (<prefix>:migration:doubts:<to>, a field per key: "<value hash, hex>
 * <source CAS>"), so that a proxy taking the lease over settles it as well
 * (mig_doubts_load); the record goes with the migration's others at its
 * end. A store not recorded first (a conditional overwrite) is recorded
 * when it times out.
 *
 * The records and their removals of a loop turn go to Redis as one HSET
 * and one HDEL (struct mig_dbatch), sent at the end of the turn, when
 * MIG_DBATCH_KEYS are waiting, or before a command of the other kind or
 * any other command mig_redis or mig_redis_argv sends (those that read or
 * delete the hash among them; the index script and the handshake touch
 * other keys): Redis runs them in the order they were made, so a removal
 * never overtakes the record it removes, nor a record the removal before it.
 */
static void doubt_batch_reset(struct mig_dbatch *b)
{
    evbuffer_drain(b->args, evbuffer_get_length(b->args));
    b->kind = DBATCH_NONE;
    b->nkeys = 0;
    b->nops = 0;
}

void doubt_batch_free(struct mig *m)
{
    if (m->dbatch != NULL) {
        evbuffer_free(m->dbatch->args);
        free(m->dbatch);
        m->dbatch = NULL;
    }
}

/* The copies whose records one HSET carried. */
struct dbatch_sent {
    struct mig *m;
    uint32_t nops;
    struct mop *ops[];
};

static void on_copy_recorded(struct mop *op);
static void move_done(struct mop *op, enum mop_result res);

static void on_batch_recorded(redisAsyncContext *ac, void *r, void *priv)
{
    struct dbatch_sent *sent = priv;
    redisReply *reply = r;

    if (ac->data == NULL) {
        free(sent);     /* mig_free: the operations go with the key table */
        return;
    }
    bool ok = reply != NULL && reply->type != REDIS_REPLY_ERROR;
    if (reply != NULL && !ok) {
        mig_index_refused(sent->m, reply->str);
    }
    for (uint32_t i = 0; i < sent->nops; i++) {
        if (ok) {
            on_copy_recorded(sent->ops[i]);
        } else {
            move_done(sent->ops[i], MOP_FAILED);    /* another pass, Redis willing */
        }
    }
    free(sent);
}

/* Queue the batch on m->rc as one RESP command: its head put before the
 * fields, which are in RESP already, and the whole made contiguous once
 * for hiredis. False: not queued, the batch untouched. */
static bool doubt_batch_queue(struct mig *m, redisCallbackFn *cb, void *priv)
{
    struct mig_dbatch *b = m->dbatch;
    char head[sizeof(b->hash) + 64];
    int n = snprintf(head, sizeof(head), "*%u\r\n$4\r\n%s\r\n$%zu\r\n%s\r\n",
                     2 + b->nkeys * (b->kind == DBATCH_SET ? 2 : 1),
                     b->kind == DBATCH_SET ? "HSET" : "HDEL", strlen(b->hash), b->hash);

    if (n < 0 || (size_t)n >= sizeof(head) || evbuffer_prepend(b->args, head, (size_t)n) != 0) {
        return false;
    }
    size_t len = evbuffer_get_length(b->args);
    const char *bytes = (const char *)evbuffer_pullup(b->args, -1);
    bool ok = bytes != NULL && redisAsyncFormattedCommand(m->rc, cb, priv, bytes, len) == REDIS_OK;
    if (!ok) {
        evbuffer_drain(b->args, (size_t)n);     /* the head off again */
    }
    return ok;
}

bool doubt_batch_send(struct mig *m, bool final)
{
    struct mig_dbatch *b = m->dbatch;
    struct dbatch_sent *sent = NULL;

    if (b == NULL || b->nkeys == 0) {
        return true;
    }
    if (b->nops > 0) {
        sent = malloc(sizeof(*sent) + b->nops * sizeof(sent->ops[0]));
        if (sent != NULL) {
            sent->m = m;
            sent->nops = b->nops;
            memcpy(sent->ops, b->ops, b->nops * sizeof(sent->ops[0]));
        }
    }
    if (m->rc_up && (b->nops == 0 || sent != NULL) &&
        doubt_batch_queue(m, sent != NULL ? on_batch_recorded : mig_unchecked_reply,
                          sent != NULL ? (void *)sent : (void *)m)) {
        doubt_batch_reset(b);
        return true;
    }
    free(sent);
    if (!final) {
        return false;   /* the end of the turn tries again, or fails them */
    }
    /* Not recorded: these copies are not sent (another pass) */
    struct mop *ops[MIG_DBATCH_KEYS];
    uint32_t n = b->nops;
    memcpy(ops, b->ops, n * sizeof(ops[0]));
    doubt_batch_reset(b);
    for (uint32_t i = 0; i < n; i++) {
        move_done(ops[i], MOP_FAILED);
    }
    return true;
}

/* Add field (and value, for DBATCH_SET) to the batch of its kind; op: a
 * copy that waits for its record. False when it cannot be (Redis down, no
 * memory): as an unsent command. */
static bool doubt_batch_add(struct mig *m, enum mig_dbatch_kind kind, const char *key,
                            size_t len, const char *val, struct mop *op)
{
    if (!m->rc_up) {
        return false;
    }
    if (m->dbatch == NULL) {
        struct mig_dbatch *nb = calloc(1, sizeof(*nb));
        if (nb == NULL || (nb->args = evbuffer_new()) == NULL) {
            free(nb);
            return false;
        }
        m->dbatch = nb;
    }
    struct mig_dbatch *b = m->dbatch;
    if ((b->kind != kind || b->nkeys == MIG_DBATCH_KEYS) && !doubt_batch_send(m, false)) {
        return false;           /* could not be sent: nothing more joins it */
    }
    if (b->nkeys == 0) {
        int n = snprintf(b->hash, sizeof(b->hash), "%s:migration:doubts:%s", m->prefix,
                         m->fp_to);
        if (n < 0 || (size_t)n >= sizeof(b->hash)) {
            return false;       /* CONF_PREFIX_MAX keeps it from happening */
        }
        b->kind = kind;
    }
    /* One key's part, added whole or not at all (keys: at most 250 bytes) */
    char part[512];
    int n = snprintf(part, sizeof(part), "$%zu\r\n", len);
    size_t vlen = val != NULL ? strlen(val) : 0;
    if (n < 0 || (size_t)n + len + vlen + 32 > sizeof(part)) {
        return false;
    }
    memcpy(part + n, key, len);
    n += (int)len;
    n += val != NULL ? snprintf(part + n, sizeof(part) - (size_t)n, "\r\n$%zu\r\n%s\r\n",
                                vlen, val)
                     : snprintf(part + n, sizeof(part) - (size_t)n, "\r\n");
    if (evbuffer_add(b->args, part, (size_t)n) != 0) {
        return false;
    }
    b->nkeys++;
    if (op != NULL) {
        b->ops[b->nops++] = op;
    }
    return true;
}

static bool doubt_record_op(struct mig *m, const char *key, size_t len, uint64_t vhash,
                            int64_t src_cas, struct mop *op)
{
    char val[48];

    snprintf(val, sizeof(val), "%016llx %lld", (unsigned long long)vhash,
             (long long)src_cas);
    return doubt_batch_add(m, DBATCH_SET, key, len, val, op);
}

static void doubt_record(struct mig *m, const struct mdoubt *d)
{
    (void)doubt_record_op(m, d->key, d->len, d->vhash, d->src_cas, NULL);
}

static void doubt_unrecord(struct mig *m, const char *key, size_t len)
{
    (void)doubt_batch_add(m, DBATCH_DEL, key, len, NULL, NULL);
}

/* recorded: the copy's record is in Redis already (move_copy) */
static void doubt_add(struct mig *m, const struct mkey *k, uint64_t vhash, int64_t src_cas,
                      uint64_t sent_on, uint32_t opaque, bool recorded)
{
    struct mdoubt *d = table_get(doubt_slot(m, k->key, k->len), k, &m->ndoubts);

    if (d != NULL) {
        d->vhash = vhash;
        d->src_cas = src_cas;
        d->sent_on = sent_on;
        d->opaque = opaque;
        d->since = 0;           /* not yet seen missing from a live N */
        if (!recorded) {
            doubt_record(m, d);
        }
    }
}

static void doubt_drop(struct mig *m, const struct mkey *k)
{
    struct mdoubt **pp = doubt_slot(m, k->key, k->len);

    if (*pp != NULL) {
        doubt_unrecord(m, k->key, k->len);
        table_drop(pp, &m->ndoubts);
    }
}

/* "<16 hex digits> <CAS>", as doubt_record writes it, and nothing else. */
static bool doubt_parse(const char *s, size_t len, uint64_t *vhash, int64_t *src_cas)
{
    char buf[48], *end;

    if (len < 18 || len >= sizeof(buf) || s[16] != ' ') {
        return false;
    }
    memcpy(buf, s, len);
    buf[len] = '\0';
    for (int i = 0; i < 16; i++) {
        if (!((buf[i] >= '0' && buf[i] <= '9') || (buf[i] >= 'a' && buf[i] <= 'f'))) {
            return false;
        }
    }
    buf[16] = '\0';
    *vhash = strtoull(buf, NULL, 16);
    if (buf[17] < '0' || buf[17] > '9') {
        return false;
    }
    errno = 0;
    long long cas = strtoll(buf + 17, &end, 10);
    if (errno != 0 || *end != '\0') {
        return false;
    }
    *src_cas = cas;
    return true;
}

void mig_doubts_load(struct mig *m, const redisReply *reply)
{
    uint64_t loaded = 0, bad = 0;

    for (size_t j = 0; j + 1 < reply->elements; j += 2) {
        const redisReply *key = reply->element[j], *val = reply->element[j + 1];
        uint64_t vhash;
        int64_t src_cas;
        if (key->type != REDIS_REPLY_STRING || val->type != REDIS_REPLY_STRING ||
            !proto_key_ok(key->str, key->len) || !doubt_parse(val->str, val->len, &vhash,
                                                              &src_cas)) {
            bad++;
            continue;
        }
        int32_t arc = arc_of(m, ring_key_hash(m->from, key->str, key->len));
        if (arc < 0 || !m->diff.arcs[arc].moves) {
            bad++;              /* no copy goes to a key that does not move */
            continue;
        }
        struct mdoubt **pp = doubt_slot(m, key->str, key->len);
        if (*pp != NULL) {
            continue;           /* our own: it knows its socket */
        }
        if (m->ndoubts >= MIG_DOUBTS_MAX) {
            bad++;
            continue;
        }
        struct mdoubt *d = calloc(1, sizeof(*d) + key->len);
        if (d == NULL) {
            bad++;
            continue;
        }
        d->len = (uint16_t)key->len;     /* proto_key_ok: at most 250 */
        memcpy(d->key, key->str, key->len);
        d->vhash = vhash;
        d->src_cas = src_cas;
        *pp = d;                /* sent_on 0: settled by the value and the time bound */
        m->ndoubts++;
        loaded++;
    }
    if (loaded > 0 || bad > 0) {
        log_notice("migration", "%s: copies in doubt recorded by an earlier holder: %llu, "
                   "settled before the end; %llu records skipped (not a moving key, not "
                   "a record, over the bound or out of memory)", m->p->name,
                   (unsigned long long)loaded, (unsigned long long)bad);
    }
}

void mig_doubts_free(struct mig *m)
{
    for (uint32_t b = 0; b < MIG_BUCKETS; b++) {
        while (m->doubts[b] != NULL) {
            struct mdoubt *d = m->doubts[b];
            m->doubts[b] = d->next;
            free(d);
        }
        while (m->conflicts[b] != NULL) {
            struct mdoubt *d = m->conflicts[b];
            m->conflicts[b] = d->next;
            free(d);
        }
    }
    m->ndoubts = m->nconflicts = 0;
    m->doubt_bucket = m->doubt_backoff_ms = 0;
    m->doubt_retry_at = m->doubt_rounds = 0;
}

/*
 * Both owners hold a value (and they differ): a write through a proxy of
 * the neighbouring phase, or a set between its two steps. Returns true once
 * the same pair of values has stood still long enough that no write can
 * still be on its way: the old owner's then wins, as readers have been
 * answered from it. Until then the key waits for a later pass.
 */
static bool conflict_settled(struct mig *m, const struct mkey *k, int64_t src_cas,
                             int64_t dst_cas)
{
    struct mdoubt **pp = table_slot(m->conflicts, k->key, k->len), *d = *pp;
    uint64_t wait = 2 * (uint64_t)op_timeout_ms(m->p) + m->liveness_ms / 2 + 1000;

    if (d != NULL && d->src_cas == src_cas && d->dst_cas == dst_cas) {
        if (now_ms(m) < d->since + wait) {
            return false;
        }
        table_drop(pp, &m->nconflicts);
        m->conflicts_settled++;
        return true;
    }
    if ((d = table_get(pp, k, &m->nconflicts)) == NULL) {
        return false;
    }
    d->src_cas = src_cas;
    d->dst_cas = dst_cas;
    d->since = now_ms(m);
    return false;
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

/* Old and new owner of a key of hash h; false when there is no migration
 * to route by. Both rings hash alike (a hash change is refused). */
static bool owners(const struct mig *m, uint32_t h, struct backend **from,
                   struct backend **to)
{
    if (m == NULL || m->from == NULL || m->phase == PH_NONE) {
        return false;
    }
    *from = m->from_be[ring_server_of(m->from, h)];
    *to = m->to_be[ring_server_of(m->to, h)];
    return true;
}

bool mig_routes_key(struct mig *m, const char *key, size_t len, uint32_t h)
{
    struct backend *from, *to;

    if (!owners(m, h, &from, &to)) {
        return false;
    }
    if (strcmp(m->fp_rec, m->fp_to) == 0) {
        /* Recorded: the pool serves ring B; only keys with commands still
         * queued here keep their order through the key's FIFO. */
        return key_find(m, key, len) != NULL;
    }
    return from != to || key_find(m, key, len) != NULL;
}

/* --- index bookkeeping --------------------------------------------------------- */

/* The key's entry in the set of its v-node under ring r: add or remove. */
static void index_cmd(struct mig *m, bool add, const struct ring *r, const char *key,
                      size_t len)
{
    char vnode[1024], score[16];
    uint32_t h = ring_key_hash(r, key, len);

    if (m->p->idx == NULL) {
        return;
    }
    const char *arg[] = { vnode, "1", score, key };
    size_t lens[] = { idx_vnode_key(m->prefix, r, ring_find(r, h), vnode, sizeof(vnode)), 1,
                      (size_t)snprintf(score, sizeof(score), "%u", h), len };
    mig_index(m, NULL, NULL, add ? "add" : "rem", 4, arg, lens);
}

void mig_index_add(struct mig *m, const struct ring *r, const char *key, size_t len)
{
    index_cmd(m, true, r, key, len);
}

void mig_index_rem(struct mig *m, const struct ring *r, const char *key, size_t len)
{
    index_cmd(m, false, r, key, len);
}

/* The ring whose owner is backend be for this operation's key. */
static const struct ring *ring_of(const struct mop *op, const struct backend *be)
{
    return be == op->from ? op->m->from : op->m->to;
}

/* --- client replies ----------------------------------------------------------- */


static void reply_line(struct mop *op, const char *line)
{
    struct evbuffer *sink = op->f != NULL ? request_frag_sink(op->f) : NULL;

    /* A fenced proxy vouches for nothing (ARCHITECTURE.md, I6). */
    if (mig_fenced(op->m) && strncmp(line, "SERVER_ERROR", 12) != 0 &&
        strncmp(line, "CLIENT_ERROR", 12) != 0 && strcmp(line, "END") != 0) {
        line = MIG_FENCED_LINE;
    }
    if (sink != NULL) {
        evbuffer_add_printf(sink, "%s\r\n", line);
    }
}

static void reply_retrieval_error(struct mop *op, const char *line);

/* A value found: the request layer writes it as a VALUE block. */
static void reply_value(struct mop *op, const struct mreply *r)
{
    int64_t flags = 0, cas = 0;

    if (mig_fenced(op->m)) {
        reply_retrieval_error(op, MIG_FENCED_LINE);
        return;
    }
    mreply_flag(r, 'f', &flags);
    mreply_flag(r, 'c', &cas);
    request_value(op->f, op->key_index, op->k->key, op->k->len, (uint32_t)flags,
                  cmd_info(op->cmd)->with_cas, (uint64_t)cas, r->value, r->value_len);
}

/*
 * A changing key that could not be read: the whole get answers the error
 * (a miss would be a guess: the key may sit on the server that failed).
 */
static void reply_retrieval_error(struct mop *op, const char *line)
{
    if (op->f == NULL) {
        return;
    }
    if (op->f->req->nfrags > 1) {
        request_fail_retrieval(op->f->req, line);
        return;
    }
    struct frag *f = op->f;
    reply_line(op, line);
    op->f = NULL;
    request_frag_done(f);
}

/* The backend's own error line when it sent one, else ours. */
static const char *error_line(const struct mreply *r)
{
    if (r->error != NULL && (strncmp(r->error, "CLIENT_ERROR", 12) == 0 ||
                             strncmp(r->error, "SERVER_ERROR", 12) == 0)) {
        return r->error;
    }
    return BACKEND_ERR_LOST;
}

/* --- operations ---------------------------------------------------------------- */

static void meta_free(struct mop_meta *mm);

void mop_free(struct mop *op)
{
    meta_free(op->meta);
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
    if (op->counted) {
        pool_inflight_end(m->p, op->gen);
    }
    if (op->arc >= 0) {
        m->arcs[op->arc].inflight--;
        m->inflight--;
    }
    if (op->src != NULL) {
        op->src->inflight--;
    }
    bool bulk = op->arc >= 0;
    mop_free(op);
    m->nops--;
    if (TAILQ_EMPTY(&k->ops)) {
        key_drop(m, k);
    } else {
        mop_next(k);
    }
    if (bulk) {
        bulk_pump(m);   /* keep the pipeline full (sends only) */
    }
}

/* Why mop_send did not send. A command the fence held back is told apart
 * by this address: that says nothing of the server (tomb_left). */
static const char mop_unsent[] = "cannot reach backend";
static const char mop_held[] = "held back by the fence";

static const char *mop_send(struct mop *op, struct backend *be, mconn_cb cb,
                            const void *data, size_t data_len, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

/* Send a command of op's; NULL, or why it was not sent. */
static const char *mop_send(struct mop *op, struct backend *be, mconn_cb cb,
                            const void *data, size_t data_len, const char *fmt, ...)
{
    char line[600];
    va_list ap;

    /* Leaving the fleet (SIGTERM), it sends no command of the migration's
     * rules: the fleet no longer waits for what it routes. A sweep it still
     * sends (the new ring is recorded: tomb_sweep): the notes it holds
     * are no longer in the fleet's list (migrate.c, mig_left). */
    if (op->m->freeing || (op->m->closing && !op->sweep)) {
        return mop_unsent;
    }
    /* Fenced: by the clock, the tick may be late. A sweep is sent while
     * the last sync is recent (tomb_sweep): a proxy back from a freeze
     * stays fenced until it drops the migration, after its sweeps. */
    if (mig_fenced(op->m) && !(op->sweep && mig_synced_lately(op->m))) {
        return mop_held;
    }
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    struct mconn *mc = mc_of(op, be);
    if (mc == NULL || n < 0 || (size_t)n >= sizeof(line) ||
        mconn_send(mc, line, (size_t)n, data, data_len, cb, op) != 0) {
        return mop_unsent;
    }
    op->sent_on = mconn_socket(mc);
    op->sent_opaque = mconn_last_opaque(mc);
    return NULL;
}

/* Deliver a FAIL to cb at once when the command could not be sent. */
#define SEND_OR_FAIL(op, be, cb, data, dlen, ...)                              \
    do {                                                                      \
        const char *why_ = mop_send((op), (be), (cb), (data), (dlen), __VA_ARGS__); \
        if (why_ != NULL) {                                                   \
            struct mreply fail_ = { .status = MREPLY_FAIL, .error = why_ };   \
            (cb)((op), &fail_);                                               \
        }                                                                     \
    } while (0)

static bool is_tomb(const struct mreply *r)
{
    int64_t flags = 0;

    return r->status == MREPLY_VA && r->value_len == sizeof(MIG_TOMB_VALUE) - 1 &&
           mreply_flag(r, 'f', &flags) && (uint32_t)flags == MIG_TOMB_FLAGS &&
           memcmp(r->value, MIG_TOMB_VALUE, r->value_len) == 0;
}

/* Does an "mg key v f ..." reply show a real value? A tombstone is a miss,
 * for every command, text or meta (docs/ARCHITECTURE.md, "Resizing a
 * fleet"): every rule decides "the owner holds the key" here. */
static bool holds_value(const struct mreply *r)
{
    return r->status == MREPLY_VA && !is_tomb(r);
}

/* What an "mg key v f c ..." reply says the owner holds. */
static enum mlook look(const struct mreply *r, int64_t *cas)
{
    *cas = 0;
    if (r->status != MREPLY_VA) {
        return LOOK_NONE;
    }
    mreply_flag(r, 'c', cas);
    return holds_value(r) ? LOOK_REAL : LOOK_TOMB;
}

/* --- client commands: reads ------------------------------------------------------ */

enum { STEP_FIRST, STEP_RECHECK };

static void read_old(struct mop *op);


static void on_read_new(void *arg, const struct mreply *r)
{
    struct mop *op = arg;

    if (holds_value(r)) {
        op->m->fallback_reads++;
        reply_value(op, r);
        mop_finish(op);
        return;
    }
    if (r->status == MREPLY_FAIL || op->old_failed) {
        reply_retrieval_error(op, BACKEND_ERR_LOST);
        mop_finish(op);
        return;
    }
    /* Both missed: a write through a proxy of the neighbouring phase may
     * have moved the value from new to old meanwhile; look once more. */
    op->step = STEP_RECHECK;
    read_old(op);
}

static void on_read_old(void *arg, const struct mreply *r)
{
    struct mop *op = arg;
    int64_t cas;
    enum mlook l = look(r, &cas);

    if (l == LOOK_REAL) {
        reply_value(op, r);
    } else if (l == LOOK_NONE && op->step == STEP_FIRST) {
        op->old_failed = r->status == MREPLY_FAIL;
        const char *k = op->k->key;
        int kl = op->k->len;
        if (cmd_info(op->cmd)->touches) {
            SEND_OR_FAIL(op, op->to, on_read_new, NULL, 0, "mg %.*s v f c T%lld", kl, k,
                         (long long)op->exptime);
        } else {
            SEND_OR_FAIL(op, op->to, on_read_new, NULL, 0, "mg %.*s v f c", kl, k);
        }
        return;
    } else if (r->status == MREPLY_FAIL) {
        reply_retrieval_error(op, BACKEND_ERR_LOST);
    }
    mop_finish(op);
}

static void read_old(struct mop *op)
{
    const char *k = op->k->key;
    int kl = op->k->len;

    if (cmd_info(op->cmd)->touches) {
        SEND_OR_FAIL(op, op->from, on_read_old, NULL, 0, "mg %.*s v f c T%lld", kl, k,
                     (long long)op->exptime);
    } else {
        SEND_OR_FAIL(op, op->from, on_read_old, NULL, 0, "mg %.*s v f c", kl, k);
    }
}

/* --- client commands: writes -------------------------------------------------------- */

/* A backend could not answer: the command answers its error, and is over. */
static bool failed_reply(struct mop *op, const struct mreply *r)
{
    if (r->status != MREPLY_FAIL) {
        return false;
    }
    reply_line(op, error_line(r));
    mop_finish(op);
    return true;
}

static void lookup_old(struct mop *op, mconn_cb cb)
{
    SEND_OR_FAIL(op, op->from, cb, NULL, 0, "mg %.*s v f c", (int)op->k->len, op->k->key);
}

/* Bounded retries of a command whose key changed under it. */
static bool retry_or_fail(struct mop *op, mconn_cb cb)
{
    if (op->retries++ < MIG_MAX_RETRIES) {
        op->m->keys_retried++;
        lookup_old(op, cb);
        return true;
    }
    reply_line(op, "SERVER_ERROR key changed too often during a migration");
    mop_finish(op);
    return false;
}

/* The value a storage command carries, without its "\r\n". */
static const char *op_data(struct mop *op, size_t *len)
{
    if (op->data == NULL) {
        *len = 0;
        return NULL;
    }
    *len = evbuffer_get_length(op->data) - 2;
    return (const char *)evbuffer_pullup(op->data, -1);
}

/*
 * set: note what the other owner holds, write home, then clear the other
 * owner's copy only if it is still the one noted: a value a concurrent
 * writer put there (through a proxy in the neighbouring phase) is never
 * deleted; readers and the mover settle two copies (invariant I3).
 */
static void on_set_other(void *arg, const struct mreply *r)
{
    struct mop *op = arg;

    /* HD: cleared; EX/NF: changed or gone meanwhile, by a concurrent write */
    reply_line(op, r->status == MREPLY_FAIL ? BACKEND_ERR_LOST : "STORED");
    mop_finish(op);
}

static void on_set_home(void *arg, const struct mreply *r)
{
    struct mop *op = arg;
    struct backend *home = op->phase == PH_PREPARED ? op->from : op->to;
    struct backend *other = home == op->from ? op->to : op->from;

    if (r->status != MREPLY_HD) {
        reply_line(op, r->status == MREPLY_FAIL ? error_line(r) : "NOT_STORED");
        mop_finish(op);
        return;
    }
    mig_index_add(op->m, ring_of(op, home), op->k->key, op->k->len);
    if (op->old == LOOK_NONE) {
        reply_line(op, "STORED");
        mop_finish(op);
        return;
    }
    SEND_OR_FAIL(op, other, on_set_other, NULL, 0, "md %.*s C%lld", (int)op->k->len,
                 op->k->key, (long long)op->old_cas);
}

static void on_set_look(void *arg, const struct mreply *r)
{
    struct mop *op = arg;
    struct backend *home = op->phase == PH_PREPARED ? op->from : op->to;
    size_t dlen;
    const char *data = op_data(op, &dlen);

    if (failed_reply(op, r)) {
        return;
    }
    op->old = r->status == MREPLY_HD ? LOOK_REAL : LOOK_NONE;
    op->old_cas = 0;
    mreply_flag(r, 'c', &op->old_cas);
    SEND_OR_FAIL(op, home, on_set_home, data, dlen, "ms %.*s %zu F%u T%lld",
                 (int)op->k->len, op->k->key, dlen, op->flags, (long long)op->exptime);
}

static void run_set(struct mop *op)
{
    struct backend *other = op->phase == PH_PREPARED ? op->to : op->from;

    SEND_OR_FAIL(op, other, on_set_look, NULL, 0, "mg %.*s c", (int)op->k->len,
                 op->k->key);
}

/* --- tombstones: written by a switched delete, swept by their writer ---------- */

/* Replace the real value on the old owner (read at op->old_cas) by a
 * tombstone. */
static void tomb_write(struct mop *op, mconn_cb cb)
{
    SEND_OR_FAIL(op, op->from, cb, MIG_TOMB_VALUE, sizeof(MIG_TOMB_VALUE) - 1,
                 "ms %.*s %zu F%u T%d C%lld", (int)op->k->len, op->k->key,
                 sizeof(MIG_TOMB_VALUE) - 1, MIG_TOMB_FLAGS, MIG_TOMB_TTL,
                 (long long)op->old_cas);
}

/* Unlink the note *pp points to (the caller frees it). */
static struct mtomb *tomb_unlink(struct mig *m, struct mtomb **pp)
{
    struct mtomb *t = *pp;

    *pp = t->next;
    if (m->tombs_tail == &t->next) {
        m->tombs_tail = pp;
    }
    m->tombs_bytes -= sizeof(*t) + t->len;
    m->tombs_to_hand -= t->hand == TOMB_TO_HAND;
    return t;
}

void tomb_notes_free(struct mig *m)
{
    while (m->tombs != NULL) {
        free(tomb_unlink(m, &m->tombs));
        m->tombs_left++;        /* never looked for: the migration was dropped */
    }
}

/*
 * Note a tombstone on the old owner `on`. One written after the mover's
 * last look at that server (the closing pass listed it already) would
 * outlive the migration, and a later ring that makes that server the key's
 * owner again would serve its bytes as the key's value: it is looked for
 * once the fleet recorded the new ring (tomb_sweep). The notes keep the
 * newest within MIG_TOMB_NOTES_MAX bytes: the oldest are the likeliest to
 * have been found by the mover already. NULL: out of memory (counted).
 */
static struct mtomb *tomb_add(struct mig *m, struct backend *on, const char *key, size_t len,
                              enum mtomb_hand hand)
{
    size_t need = sizeof(struct mtomb) + len;

    while (m->tombs != NULL && m->tombs_bytes + need > MIG_TOMB_NOTES_MAX) {
        free(tomb_unlink(m, &m->tombs));
        m->tombs_left++;
    }
    struct mtomb *t = malloc(need);
    if (t == NULL) {
        m->tombs_left++;
        return NULL;
    }
    t->next = NULL;
    t->on = on;
    t->len = (uint16_t)len;
    t->hand = (uint8_t)hand;
    memcpy(t->key, key, len);
    *m->tombs_tail = t;
    m->tombs_tail = &t->next;
    m->tombs_bytes += need;
    m->tombs_to_hand += hand == TOMB_TO_HAND;
    return t;
}

/* A sweep the fence held back: its note goes back on the list as it was. */
static void tomb_note(struct mop *op)
{
    tomb_add(op->m, op->from, op->k->key, op->k->len, (enum mtomb_hand)op->tomb_hand);
}

/* Counted once Redis has it; a refused push (out of memory, a replica) is
 * logged: that note is this proxy's alone. */
static void on_tomb_pushed(redisAsyncContext *ac, void *r, void *priv)
{
    struct mig *m = ac->data;
    const redisReply *reply = r;

    if (m == NULL || reply == NULL || (uintptr_t)priv != (uintptr_t)m->gen) {
        return;         /* gone with the connection, or an older migration's */
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        log_limited(LOG_WARN, 10, "migration", "%s: Redis refused a tombstone note (%s): "
                    "only this proxy will look for that tombstone", m->p->name, reply->str);
        return;
    }
    m->tombs_handed++;
}

/*
 * Hand note t to the fleet: an entry "<proxy id> <key> <old owner's
 * identity>" of the list <prefix>:migration:tombs:<to> (one script: the
 * push and the list's expiry, the tombstones' day, together), which every
 * proxy following the migration empties once the new ring is recorded
 * (migrate.c, tomb_collect) and sweeps as its own notes (its own entries it
 * skips: it has them). A writer that stops first (a crash, SIGKILL, a
 * binary upgrade) leaves its notes there, not only in its memory. Sent on
 * the coordination connection, before any later sync: see tomb_collect. At
 * most MIG_TOMB_NOTES_MAX bytes per proxy and migration: beyond, a note is
 * kept here only. False: not sent (Redis away); t stays to hand.
 */
static bool tomb_push(struct mig *m, struct mtomb *t)
{
    static const char script[] =
        "redis.call('rpush', KEYS[1], ARGV[1]) redis.call('pexpire', KEYS[1], ARGV[2])";
    size_t idlen = strlen(m->id), srvlen = strlen(t->on->identity);
    size_t len = idlen + 1 + t->len + 1 + srvlen;
    char entry[MIG_TOMB_ENTRY_MAX], *e = entry;

    if (len <= sizeof(entry) && m->tombs_handed_bytes + len <= MIG_TOMB_NOTES_MAX) {
        e = mempcpy(e, m->id, idlen);
        *e++ = ' ';
        e = mempcpy(e, t->key, t->len);
        *e++ = ' ';
        memcpy(e, t->on->identity, srvlen);
        if (!mig_redis(m, on_tomb_pushed, (void *)(uintptr_t)m->gen,
                       "EVAL %s 1 %s:migration:tombs:%s %b %d", script, m->prefix, m->fp_to,
                       entry, len, MIG_TOMB_TTL * 1000)) {
            return false;
        }
        m->tombs_handed_bytes += len;
        /* Once the list is taken (or while a take is under way: Redis runs
         * this push after it), take it again, this entry with it: a note
         * handed after the others took theirs would stay there if this
         * proxy stopped before sweeping it. Not when leaving: the entry is
         * for the others then. */
        if (!m->closing) {
            m->taken = false;
            m->take_again = true;
        }
    }
    m->tombs_to_hand -= t->hand == TOMB_TO_HAND;
    t->hand = TOMB_HANDED;
    return true;
}

void tomb_hand_pending(struct mig *m, bool leaving)
{
    for (struct mtomb *t = m->tombs; t != NULL && (leaving || m->tombs_to_hand > 0);
         t = t->next) {
        if ((t->hand == TOMB_TO_HAND || (leaving && t->hand == TOMB_TAKEN)) &&
            !tomb_push(m, t)) {
            return;     /* Redis away: the next turn's mig_flush tries again */
        }
    }
}

/* A tombstone written, or maybe written (its store got no answer: the
 * server may still run it): noted, and handed to the fleet. */
static void tomb_record(struct mop *op)
{
    struct mtomb *t = tomb_add(op->m, op->from, op->k->key, op->k->len, TOMB_TO_HAND);

    if (t != NULL) {
        tomb_push(op->m, t);
    }
}

/* Index of be in the old ring's servers, or -1. */
static int from_index(const struct mig *m, const struct backend *be)
{
    for (uint32_t i = 0; i < m->from->nservers; i++) {
        if (m->from_be[i] == be) {
            return (int)i;
        }
    }
    return -1;
}

void tomb_take(struct mig *m, const char *entry, size_t len)
{
    const char *end = entry + len, *key = memchr(entry, ' ', len), *sp = NULL;
    char id[MIG_TOMB_ENTRY_MAX];
    int s = -1;

    if (key != NULL && ++key < end) {
        sp = memchr(key, ' ', (size_t)(end - key));
    }
    if (sp != NULL && len <= sizeof(id) && proto_key_ok(key, (size_t)(sp - key))) {
        size_t idlen = (size_t)(key - 1 - entry);
        if (idlen == strlen(m->id) && memcmp(entry, m->id, idlen) == 0) {
            return;     /* this proxy's own: in its notes already */
        }
        idlen = (size_t)(end - sp - 1);
        memcpy(id, sp + 1, idlen);
        id[idlen] = '\0';
        s = ring_server_index(m->from, id);
    }
    if (s < 0) {
        m->tombs_left++;
        log_limited(LOG_WARN, 10, "migration", "%s: a tombstone note in Redis names no key of "
                    "a server of ring %.8s; skipped", m->p->name, m->fp_from);
        return;
    }
    m->tombs_taken++;
    if (m->tombs_dead != NULL && m->tombs_dead[s]) {
        m->tombs_left++;        /* that server did not answer a sweep: tomb_left */
        return;
    }
    tomb_add(m, m->from_be[s], key, (size_t)(sp - key), TOMB_TAKEN);
}

/* The tombstone is on the old owner: counted, indexed under the old ring as
 * a key of that server (the mover's later passes find it), and noted. */
static void tomb_written(struct mop *op)
{
    op->m->tombs_written++;
    mig_index_add(op->m, op->m->from, op->k->key, op->k->len);
    tomb_record(op);
}

/*
 * A look or removal failed: that tombstone may stay. A server that does not
 * answer (down, cut off) would hold the migration's end a timeout per 64
 * notes, and every command on a noted key with it: its other notes are
 * dropped too. But a command the fence held back (the last sync went stale
 * while the sweep waited for its look's answer, or behind a command on the
 * key) says nothing of the server: the note goes back on the list, swept
 * after the next sync (tomb_sweep).
 */
static void tomb_left(struct mop *op, const struct mreply *r)
{
    struct mig *m = op->m;
    uint64_t dropped = 0;

    if (r->status == MREPLY_FAIL && r->error == mop_held) {
        tomb_note(op);
        return;
    }
    m->tombs_left++;
    if (r->status == MREPLY_FAIL) {
        int s = from_index(m, op->from);
        if (s >= 0 && m->tombs_dead != NULL) {
            m->tombs_dead[s] = true;    /* and the notes taken from the fleet later */
        }
        for (struct mtomb **pp = &m->tombs; *pp != NULL;) {
            if ((*pp)->on == op->from) {
                free(tomb_unlink(m, pp));
                dropped++;
            } else {
                pp = &(*pp)->next;
            }
        }
        m->tombs_left += dropped;
    }
    log_limited(LOG_WARN, 10, "migration", "%s: %llu tombstone%s this proxy wrote may stay on "
                "server %s until their TTL (a day): %s", m->p->name,
                (unsigned long long)dropped + 1, dropped ? "s" : "", op->from->identity,
                r->status == MREPLY_FAIL && r->error != NULL ? r->error :
                "an unexpected answer");
}

/* Removed (HD), or gone or written over since (NF, EX): nothing to do. */
static void on_tomb_swept(void *arg, const struct mreply *r)
{
    struct mop *op = arg;

    if (r->status == MREPLY_HD) {
        op->m->tombs_swept++;
    } else if (r->status != MREPLY_NF && r->status != MREPLY_EX) {
        tomb_left(op, r);
    }
    op->m->sweeps--;
    mop_finish(op);
}

/* A tombstone (anyone's: the migration is over) is removed, conditionally
 * on the CAS just read; anything else there is left alone. */
static void on_tomb_found(void *arg, const struct mreply *r)
{
    struct mop *op = arg;
    int64_t cas = 0;

    if (r->status == MREPLY_VA && is_tomb(r) && mreply_flag(r, 'c', &cas)) {
        SEND_OR_FAIL(op, op->from, on_tomb_swept, NULL, 0, "md %.*s C%lld",
                     (int)op->k->len, op->k->key, (long long)cas);
        return;
    }
    if (r->status != MREPLY_VA && r->status != MREPLY_EN) {
        tomb_left(op, r);
    }
    op->m->sweeps--;
    mop_finish(op);
}

static void tomb_sweep_start(struct mop *op)
{
    SEND_OR_FAIL(op, op->from, on_tomb_found, NULL, 0, "mg %.*s v f c", (int)op->k->len,
                 op->k->key);
}

/*
 * Start sweeps for the notes, at most MIG_SWEEPS_INFLIGHT at a time (each
 * loop turn's mig_flush starts more). Also while fenced, if
 * the last sync is recent (mig_synced_lately): the record it read said the
 * new ring, so the migration is over for the whole fleet, and a removal is
 * conditional on the CAS of the tombstone just read. (A proxy back from a
 * freeze is fenced until it drops the migration: waiting for the fence to
 * lift would wait forever.) Not on an older record: the fleet may have
 * gone through more migrations since, and one of them may have left a
 * tombstone on that server that is still needed.
 */
void tomb_sweep(struct mig *m)
{
    while (m->tombs != NULL && m->sweeps < MIG_SWEEPS_INFLIGHT && mig_synced_lately(m)) {
        /* Off the list first: a sweep that fails at once runs the key's
         * next command, which may note a tombstone of its own. */
        struct mtomb *t = tomb_unlink(m, &m->tombs);
        struct mop *op = calloc(1, sizeof(*op));
        bool queued = false;
        if (op != NULL) {
            op->arc = -1;
            op->sweep = true;
            op->tomb_hand = t->hand;
            op->phase = m->phase;
            op->from = t->on;
            m->sweeps++;
            if (!(queued = mop_enqueue(m, op, t->key, t->len))) {
                m->sweeps--;
                mop_free(op);
            }
        }
        m->tombs_left += !queued;       /* out of memory: it expires */
        free(t);
    }
}

/* delete: the old owner (a tombstone when switched), then the new owner. */
static void on_del_new(void *arg, const struct mreply *r)
{
    struct mop *op = arg;

    if (r->status == MREPLY_FAIL) {
        reply_line(op, BACKEND_ERR_LOST);
        mop_finish(op);
        return;
    }
    op->hit |= r->status == MREPLY_HD;
    reply_line(op, op->hit ? "DELETED" : "NOT_FOUND");
    mop_finish(op);
}

static void del_new(struct mop *op)
{
    SEND_OR_FAIL(op, op->to, on_del_new, NULL, 0, "md %.*s", (int)op->k->len, op->k->key);
}

static void on_del_lookup(void *arg, const struct mreply *r);

static void on_del_old(void *arg, const struct mreply *r)
{
    struct mop *op = arg;

    if (r->status == MREPLY_FAIL) {
        if (op->old == LOOK_REAL && op->phase == PH_SWITCHED) {
            tomb_record(op);    /* the server may still run the store */
        }
        reply_line(op, BACKEND_ERR_LOST);
        mop_finish(op);
        return;
    }
    if (op->old == LOOK_REAL) {
        if (r->status != MREPLY_HD) {
            retry_or_fail(op, on_del_lookup);   /* it changed under us */
            return;
        }
        op->hit = true;
        if (op->phase == PH_SWITCHED) {
            op->old = LOOK_TOMB;                /* our tombstone is there now */
            tomb_written(op);
        }
    }
    del_new(op);
}

static void on_del_lookup(void *arg, const struct mreply *r)
{
    struct mop *op = arg;
    const char *k = op->k->key;
    int kl = op->k->len;

    if (r->status == MREPLY_FAIL) {
        reply_line(op, BACKEND_ERR_LOST);
        mop_finish(op);
        return;
    }
    op->old = look(r, &op->old_cas);
    if (op->old == LOOK_TOMB) {
        /* no key, whatever the new owner holds (tomb_next_to_value): a
         * value there is a late copy the mover settles for the old owner,
         * or a write between its two steps that is not yet answered */
        reply_line(op, "NOT_FOUND");
        mop_finish(op);
    } else if (op->old == LOOK_NONE) {
        del_new(op);
    } else if (op->phase == PH_SWITCHED) {
        /* A real value: a tombstone takes its place, so that a copy the
         * mover may be making stays hidden (invariant I4). */
        tomb_write(op, on_del_old);
    } else {
        SEND_OR_FAIL(op, op->from, on_del_old, NULL, 0, "md %.*s C%lld", kl, k,
                     (long long)op->old_cas);
    }
}

/*
 * tomb_next_to_value: a tombstone on the old owner and a value on the new
 * one. Every read answers a miss (on_read_old), so no command may act on
 * that value: it is a write between its two steps (it wrote N and is about
 * to clear O, within a round trip), or a copy that landed late (a write in
 * doubt whose connection was lost), which the mover settles for O. A
 * command that would modify the value answers as for a missing key; one
 * whose answer depends on its presence (add, a meta command whose reply
 * memcached must make) looks again, at most MIG_MAX_RETRIES times, and
 * answers SERVER_ERROR if it stays (docs/ARCHITECTURE.md, "Commands on a
 * changing key").
 */
static void on_add_lookup(void *arg, const struct mreply *r);

/* add: no real value on either owner, then store at home. */
static void on_add_stored(void *arg, const struct mreply *r)
{
    struct mop *op = arg;
    struct backend *home = op->phase == PH_PREPARED ? op->from : op->to;

    if (r->status == MREPLY_FAIL) {
        reply_line(op, error_line(r));
    } else if (r->status == MREPLY_NS && home == op->to && op->old == LOOK_TOMB) {
        retry_or_fail(op, on_add_lookup);   /* see tomb_next_to_value */
        return;
    } else if (r->status != MREPLY_HD) {
        reply_line(op, "NOT_STORED");
    } else {
        mig_index_add(op->m, ring_of(op, home), op->k->key, op->k->len);
        if (home == op->to && op->old == LOOK_TOMB) {
            /* The tombstone would hide the new value from readers. */
            op->old = LOOK_NONE;
            SEND_OR_FAIL(op, op->from, on_set_other, NULL, 0, "md %.*s C%lld",
                         (int)op->k->len, op->k->key, (long long)op->old_cas);
            return;
        }
        reply_line(op, "STORED");
    }
    mop_finish(op);
}

static void add_store(struct mop *op)
{
    size_t dlen;
    const char *data = op_data(op, &dlen);
    const char *k = op->k->key;
    int kl = op->k->len;

    if (op->phase == PH_PREPARED && op->old == LOOK_TOMB) {
        SEND_OR_FAIL(op, op->from, on_add_stored, data, dlen, "ms %.*s %zu F%u T%lld C%lld",
                     kl, k, dlen, op->flags, (long long)op->exptime, (long long)op->old_cas);
    } else {
        SEND_OR_FAIL(op, op->phase == PH_PREPARED ? op->from : op->to, on_add_stored,
                     data, dlen, "ms %.*s %zu F%u T%lld ME", kl, k, dlen, op->flags,
                     (long long)op->exptime);
    }
}

static void on_add_new(void *arg, const struct mreply *r)
{
    struct mop *op = arg;

    if (r->status == MREPLY_FAIL) {
        reply_line(op, error_line(r));
        mop_finish(op);
    } else if (holds_value(r) && op->old == LOOK_TOMB) {
        retry_or_fail(op, on_add_lookup);   /* see tomb_next_to_value */
    } else if (holds_value(r)) {
        reply_line(op, "NOT_STORED");
        mop_finish(op);
    } else {
        add_store(op);
    }
}

static void on_add_lookup(void *arg, const struct mreply *r)
{
    struct mop *op = arg;

    if (failed_reply(op, r)) {
        return;
    }
    op->old = look(r, &op->old_cas);
    if (op->old == LOOK_REAL) {
        reply_line(op, "NOT_STORED");
        mop_finish(op);
    } else if (op->phase == PH_PREPARED) {
        SEND_OR_FAIL(op, op->to, on_add_new, NULL, 0, "mg %.*s v f", (int)op->k->len,
                     op->k->key);
    } else {
        add_store(op);  /* add mode on the new owner checks it */
    }
}

/* replace append prepend cas incr decr touch: where the value is. */
static void on_rmw_lookup(void *arg, const struct mreply *r);

/* The text reply of a CMD_MOVE_RMW command, from the meta reply r of its
 * meta form (cmd.h: cmd_answer), run on where. */
static void rmw_answer(struct mop *op, const struct mreply *r, struct backend *where)
{
    const struct cmd_info *ci = cmd_info(op->cmd);

    switch (ci->answer) {
    case CMD_ANSWER_TOUCHED:
        reply_line(op, r->status == MREPLY_HD ? "TOUCHED" : "NOT_FOUND");
        break;
    case CMD_ANSWER_NUMBER:
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
    case CMD_ANSWER_STORED:
        if (r->status == MREPLY_HD) {
            reply_line(op, "STORED");
            if (ci->index == CMD_INDEX_ADD) {
                mig_index_add(op->m, ring_of(op, where), op->k->key, op->k->len);
            }
        } else {
            reply_line(op, r->status == MREPLY_EX ? "EXISTS" :
                           r->status == MREPLY_NF ? "NOT_FOUND" : "NOT_STORED");
        }
        break;
    case CMD_ANSWER_NONE:
        reply_line(op, "ERROR");
        break;
    }
    mop_finish(op);
}

static void on_rmw_done(void *arg, const struct mreply *r)
{
    struct mop *op = arg;
    const struct cmd_info *ci = cmd_info(op->cmd);
    bool on_old = op->old == LOOK_REAL;

    if (failed_reply(op, r)) {
        return;
    }
    /* On the old owner the value changed, moved or went meanwhile (the
     * statuses that say so are the command's: cmd.h retry_on): look again. */
    if (on_old && (ci->meta.retry_on & (1u << r->status)) != 0) {
        retry_or_fail(op, on_rmw_lookup);
        return;
    }
    rmw_answer(op, r, on_old ? op->from : op->to);
}

/* Run the command's meta form (cmd.h: cmd_meta) where the value is. */
static void rmw_run(struct mop *op)
{
    const struct cmd_meta *mf = &cmd_info(op->cmd)->meta;
    bool on_old = op->old == LOOK_REAL;
    struct backend *be = on_old ? op->from : op->to;
    char args[160] = "", cond[32] = "";
    size_t dlen, n = 0;
    const char *data = op_data(op, &dlen);

    if (mf->verb == NULL) {
        reply_line(op, "ERROR");
        mop_finish(op);
        return;
    }
    if (mf->args & CMD_META_LEN) {
        n += (size_t)snprintf(args + n, sizeof(args) - n, " %zu", dlen);
    }
    if (mf->args & CMD_META_FT) {
        n += (size_t)snprintf(args + n, sizeof(args) - n, " F%u T%lld", op->flags,
                              (long long)op->exptime);
    }
    if (mf->args & CMD_META_T) {
        n += (size_t)snprintf(args + n, sizeof(args) - n, " T%lld", (long long)op->exptime);
    }
    if (mf->args & CMD_META_DELTA) {
        n += (size_t)snprintf(args + n, sizeof(args) - n, " D%llu v",
                              (unsigned long long)op->delta);
    }
    n += (size_t)snprintf(args + n, sizeof(args) - n, "%s", mf->mode);
    if (mf->args & CMD_META_CAS) {
        n += (size_t)snprintf(args + n, sizeof(args) - n, " C%llu",
                              (unsigned long long)op->cas);
    }
    if (on_old && mf->cond) {
        snprintf(cond, sizeof(cond), " C%lld", (long long)op->old_cas);
    }
    if ((mf->args & CMD_META_LEN) == 0) {
        data = NULL;
        dlen = 0;
    }
    SEND_OR_FAIL(op, be, on_rmw_done, data, dlen, "%s %.*s%s%s", mf->verb, (int)op->k->len,
                 op->k->key, args, cond);
}

static void on_rmw_lookup(void *arg, const struct mreply *r)
{
    struct mop *op = arg;

    if (failed_reply(op, r)) {
        return;
    }
    op->old = look(r, &op->old_cas);
    if (op->old == LOOK_TOMB) {
        /* The key is deleted, whatever the new owner holds (see
         * tomb_next_to_value): the answer memcached gives for a missing key,
         * its meta form's miss (NF with a CAS, else NS), made into text. */
        struct mreply miss = { .status = (cmd_info(op->cmd)->meta.args & CMD_META_CAS) ?
                                         MREPLY_NF : MREPLY_NS };
        rmw_answer(op, &miss, op->to);
        return;
    }
    rmw_run(op);
}

static void meta_start(struct mop *op);

static void client_start(struct mop *op)
{
    op->m->client_ops++;
    if (op->meta != NULL) {
        meta_start(op);
        return;
    }
    switch (cmd_info(op->cmd)->move) {
    case CMD_MOVE_READ:
        read_old(op);
        break;
    case CMD_MOVE_SET:
        run_set(op);
        break;
    case CMD_MOVE_DELETE:
        lookup_old(op, on_del_lookup);
        break;
    case CMD_MOVE_ADD:
        lookup_old(op, on_add_lookup);
        break;
    case CMD_MOVE_RMW:
    case CMD_MOVE_NONE:
        lookup_old(op, on_rmw_lookup);
        break;
    }
}

/* --- client meta commands ------------------------------------------------------------
 *
 * A meta command on a changing key follows the rule of its text counterpart
 * (docs/ARCHITECTURE.md, "Meta protocol (for clients)"); the proxy's own
 * lookups are its usual "mg <key> v f c", and the command that answers is
 * the client's own line (without q), so that its reply carries the client's
 * return flags (O, k, b, c, t, s, W/X/Z...) exactly as the backend wrote
 * them. The proxy's condition (C<cas> of the value it looked at) is added
 * to that line on the old owner unless the client gave its own C: ms, md
 * and ma echo neither C nor M, so the reply is the same; mg takes no
 * condition, so its answer there is judged instead (meta_judged_line,
 * meta_judged). q is applied here, by memcached's table, since the answer
 * may be composed of several replies.
 */
enum meta_rule { META_RULE_READ, META_RULE_SET, META_RULE_ADD, META_RULE_DELETE,
                 META_RULE_RMW };

struct mop_meta {
    enum meta_cmd cmd;
    enum meta_rule rule;
    bool quiet, client_cas, vivify;
    bool absent;                /* the owner it ran on did not hold the key */
    mconn_cb then;              /* meta_run_home: the line's callback */
    mconn_cb relook;            /* meta_run_home: the rule's lookup, again */
    uint32_t quiet_drops;       /* META_RSP_BIT()s q drops (meta_quiet_drops) */
    uint32_t retry_on;          /* 1 << MREPLY_x: from the old owner, look again */
    uint32_t stores;            /* 1 << MREPLY_x: the key was stored (index) */
    bool ret_cas, ret_flags, ret_value; /* the client's line asks c, f, v */
    bool judged;                /* the last run is an mg on the old owner over
                                   the real value looked at (meta_judged) */
    char added[3];              /* return flags added to the last run, which
                                   its reply loses again (meta_keep) */
    struct backend *ran;        /* where the client's line ran last */
    struct evbuffer *out;       /* the client's reply, kept until the end */
    size_t len;
    char line[];                /* the client's line, without q */
};

#define MBIT(x) (1u << MREPLY_##x)

static void meta_free(struct mop_meta *mm)
{
    if (mm != NULL) {
        if (mm->out != NULL) {
            evbuffer_free(mm->out);
        }
        free(mm);
    }
}

/* The client's reply to r, as the backend wrote it, with status `as`. */
static void meta_keep(struct mop *op, const struct mreply *r, enum mreply_status as)
{
    struct mop_meta *mm = op->meta;
    static const uint8_t rsp_of[MREPLY_COUNT] = {
        [MREPLY_VA] = META_RSP_VA, [MREPLY_HD] = META_RSP_HD, [MREPLY_EN] = META_RSP_EN,
        [MREPLY_NS] = META_RSP_NS, [MREPLY_EX] = META_RSP_EX, [MREPLY_NF] = META_RSP_NF,
        [MREPLY_FAIL] = META_RSP_SERVER_ERROR,
    };

    if (mm->out == NULL) {
        mm->out = rp_xevbuffer_new("a meta command's reply");
    }
    evbuffer_drain(mm->out, evbuffer_get_length(mm->out));
    if (as == MREPLY_FAIL) {
        /* The server's own error line (ERROR, CLIENT_ERROR ...), else ours:
         * errors are sent even under q. */
        if (r->error == NULL && r->flags != NULL) {
            evbuffer_add(mm->out, r->flags, r->flags_len);
            evbuffer_add(mm->out, "\r\n", 2);
        } else {
            evbuffer_add_printf(mm->out, "%s\r\n", error_line(r));
        }
        return;
    }
    /* ma answers under q when it created the item (meta_quiet_drops). */
    bool vivified = mm->cmd == META_CMD_MA && mm->vivify && mm->absent &&
                    (as == MREPLY_HD || as == MREPLY_VA);
    if (mm->cmd == META_CMD_MG && op->m->p != NULL) {
        uint64_t *st = op->f != NULL ? op->f->req->stats : op->m->p->stats;
        st[as == MREPLY_EN ? STAT_get_misses : STAT_get_hits]++;
    }
    uint32_t drops = mm->quiet ? meta_quiet_drops(mm->cmd, vivified) : 0;
    if (drops & (1u << rsp_of[as])) {
        return;
    }
    evbuffer_add_printf(mm->out, "%s", mreply_names[as]);
    if (as == MREPLY_VA) {
        evbuffer_add_printf(mm->out, " %zu", r->value_len);
    }
    const char *flags = r->flags;
    size_t flags_len = r->flags_len;
    char *own = NULL;
    if (mm->added[0] != '\0' && flags_len > 0) {
        own = rp_xmalloc(flags_len, "a meta reply's flags");
        flags_len = meta_drop_flags(r->flags, r->flags_len, mm->added, own);
        flags = own;
    }
    if (flags_len > 0) {
        evbuffer_add(mm->out, " ", 1);
        evbuffer_add(mm->out, flags, flags_len);
    }
    free(own);
    evbuffer_add(mm->out, "\r\n", 2);
    if (as == MREPLY_VA) {
        evbuffer_add(mm->out, r->value, r->value_len);
        evbuffer_add(mm->out, "\r\n", 2);
    }
}

/* Send what was kept to the client, and end the operation. */
static void meta_answer(struct mop *op)
{
    struct evbuffer *sink = op->f != NULL ? request_frag_sink(op->f) : NULL;
    struct mop_meta *mm = op->meta;

    if (mig_fenced(op->m)) {
        /* A fenced proxy vouches for nothing (ARCHITECTURE.md, I6). */
        if (sink != NULL) {
            evbuffer_add_printf(sink, "%s\r\n", MIG_FENCED_LINE);
        }
    } else if (sink != NULL && mm->out != NULL) {
        evbuffer_add_buffer(sink, mm->out);
    }
    mop_finish(op);
}

static void meta_reply(struct mop *op, const struct mreply *r)
{
    meta_keep(op, r, r->status);
    meta_answer(op);
}

static void meta_fail(struct mop *op, const char *line)
{
    struct mreply fail = { .status = MREPLY_FAIL, .error = line };

    meta_reply(op, &fail);
}

/*
 * mg takes no condition: run on the old owner over the real value looked
 * at, its answer may be of an item written between the lookup and the line
 * (a switched proxy's tombstone, an item vivified after the value moved).
 * So the line also asks the return flags meta_judged needs (c; f when it
 * reads the value), which meta_keep removes from the reply again. They fit:
 * a line with more than 15 flags never runs here (client_meta_movable), and
 * q is not sent.
 */
/*
 * The client's line without its N (vivify) flag: on O over the real value
 * looked at, N could only matter if that value left in between (the mover
 * copied it to N and deleted it on O): the line would then create an empty
 * item on O that the rules would later find there first. Without N such a
 * line answers EN, which for mg means "moved under the command": look
 * again (meta_moved_under). N is not a return flag: the reply is the same.
 * mm->line is meta_format_request's: "mg <key>" and single-spaced flags.
 */
static int meta_line_without_vivify(const struct mop_meta *mm, char *line, size_t cap)
{
    const char *p = mm->line, *end = mm->line + mm->len;
    size_t n = 0;
    int word = 0;

    while (p < end) {
        const char *sp = memchr(p, ' ', (size_t)(end - p));
        const char *tok_end = sp != NULL ? sp : end;
        /* words 0 and 1 are "mg" and the key; a flag is one word */
        if (!(word >= 2 && *p == 'N')) {
            size_t len = (size_t)(tok_end - p);
            if (n + len + 2 > cap) {
                break;      /* cannot happen: cap is mm->len + 32 */
            }
            if (n > 0) {
                line[n++] = ' ';
            }
            memcpy(line + n, p, len);
            n += len;
        }
        word++;
        p = sp != NULL ? sp + 1 : end;
    }
    line[n] = '\0';
    return (int)n;
}

static int meta_judged_line(struct mop_meta *mm, char *line, size_t cap)
{
    size_t a = 0;
    int n = meta_line_without_vivify(mm, line, cap);

    if (!mm->ret_cas) {
        mm->added[a++] = 'c';
    }
    if (mm->ret_value && !mm->ret_flags) {
        mm->added[a++] = 'f';
    }
    mm->added[a] = '\0';
    for (size_t i = 0; i < a; i++) {
        n += snprintf(line + n, cap - (size_t)n, " %c", mm->added[i]);
    }
    return n;
}

/* Run the client's line on be; cond: made conditional on op->old_cas. */
static void meta_run(struct mop *op, struct backend *be, mconn_cb cb, bool cond)
{
    struct mop_meta *mm = op->meta;
    char *line = rp_xmalloc(mm->len + 32, "a meta command line");
    size_t dlen = 0;
    const char *data = mm->cmd == META_CMD_MS ? op_data(op, &dlen) : NULL;
    int n;

    mm->added[0] = '\0';
    mm->judged = mm->cmd == META_CMD_MG && be == op->from && op->old == LOOK_REAL;
    if (mm->judged) {
        n = meta_judged_line(mm, line, mm->len + 32);
    } else {
        n = snprintf(line, mm->len + 32, "%.*s", (int)mm->len, mm->line);
    }
    if (cond && !mm->client_cas) {
        n += snprintf(line + n, mm->len + 32 - (size_t)n, " C%lld", (long long)op->old_cas);
    }
    mm->ran = be;
    struct mconn *mc = op->m->closing || mig_fenced(op->m) ? NULL : mc_of(op, be);
    int rc = mc != NULL ? mconn_send(mc, line, (size_t)n, data, dlen, cb, op) : -1;
    free(line);
    if (rc != 0) {
        struct mreply fail = { .status = MREPLY_FAIL, .error = mop_unsent };
        cb(op, &fail);
    }
}

/* A run's reply: a status in retry_on from the old owner means the value
 * moved, changed or went under the command: look again. */
static bool meta_moved_under(struct mop *op, const struct mreply *r)
{
    return op->meta->ran == op->from && op->old == LOOK_REAL &&
           (op->meta->retry_on & (1u << r->status)) != 0;
}

/*
 * Is a judged mg's answer (meta_run) one the client may be given? It is if
 * it is the item looked at (the same CAS), or for mg without N a real value
 * written since, which a text get reading then would answer too. Anything
 * else changed under the command: a tombstone (holds_value), or with N an
 * item it may have created itself after the value moved. Look again.
 */
static bool meta_judged(struct mop *op, const struct mreply *r)
{
    int64_t cas = 0;

    if (!op->meta->judged || (r->status != MREPLY_VA && r->status != MREPLY_HD)) {
        return true;
    }
    if (mreply_flag(r, 'c', &cas) && cas == op->old_cas) {
        return true;
    }
    return !op->meta->vivify && holds_value(r);
}

static void meta_index(struct mop *op, const struct mreply *r)
{
    if (op->meta->stores & (1u << r->status)) {
        mig_index_add(op->m, ring_of(op, op->meta->ran), op->k->key, op->k->len);
    }
}

/*
 * A miss on both owners, and the client's line creates the key (ms ME, mg
 * N, ma N, ms MA/MP N) at the old owner, the home of a prepared proxy. A
 * tombstone there is a miss like no item (holds_value), but memcached would
 * take it for the key: it is cleared first, conditionally on the CAS looked
 * at (the text add replaces it by a conditional set instead, which the
 * client's line cannot be made into), then the line runs. If the tombstone
 * changed meanwhile (EX: a write replaced it) the rule looks again.
 */
static void on_meta_home_cleared(void *arg, const struct mreply *r)
{
    struct mop *op = arg;

    if (r->status == MREPLY_FAIL) {
        meta_fail(op, error_line(r));
    } else if (r->status == MREPLY_EX) {
        retry_or_fail(op, op->meta->relook);
    } else {
        op->old = LOOK_NONE;            /* HD: cleared; NF: gone meanwhile */
        meta_run(op, op->from, op->meta->then, false);
    }
}

static void meta_run_home(struct mop *op, mconn_cb cb, mconn_cb relook)
{
    if (op->old != LOOK_TOMB) {
        meta_run(op, op->from, cb, false);
        return;
    }
    op->meta->then = cb;
    op->meta->relook = relook;
    SEND_OR_FAIL(op, op->from, on_meta_home_cleared, NULL, 0, "md %.*s C%lld",
                 (int)op->k->len, op->k->key, (long long)op->old_cas);
}

/* The line runs on the new owner past a tombstone on the old one only if
 * the new one holds nothing, so that its answer is memcached's own miss;
 * else it looks again (tomb_next_to_value). */
static void on_meta_past_tomb(void *arg, const struct mreply *r)
{
    struct mop *op = arg;

    if (r->status == MREPLY_FAIL) {
        meta_fail(op, error_line(r));
    } else if (r->status != MREPLY_EN) {
        retry_or_fail(op, op->meta->relook);
    } else {
        meta_run(op, op->to, op->meta->then, false);
    }
}

static void meta_run_new(struct mop *op, mconn_cb cb, mconn_cb relook)
{
    if (op->old != LOOK_TOMB) {
        meta_run(op, op->to, cb, false);
        return;
    }
    op->meta->then = cb;
    op->meta->relook = relook;
    SEND_OR_FAIL(op, op->to, on_meta_past_tomb, NULL, 0, "mg %.*s", (int)op->k->len,
                 op->k->key);
}

static void on_meta_set_other(void *arg, const struct mreply *r);

/* Answer r, after clearing the tombstone on the old owner when the line
 * created the key on the new one (the text add's rule: the tombstone would
 * outlive the value, and the mover settles a tombstone on O and a value on
 * N for O). */
static void meta_reply_clear(struct mop *op, const struct mreply *r)
{
    meta_index(op, r);
    meta_keep(op, r, r->status);
    if (op->meta->ran == op->to && op->old == LOOK_TOMB && op->meta->absent &&
        (op->meta->stores & (1u << r->status)) != 0) {
        op->old = LOOK_NONE;
        SEND_OR_FAIL(op, op->from, on_meta_set_other, NULL, 0, "md %.*s C%lld",
                     (int)op->k->len, op->k->key, (long long)op->old_cas);
        return;
    }
    meta_answer(op);
}

/* reads (mg without N): the old owner, then the new, then the old again */
static void on_meta_read_old(void *arg, const struct mreply *r);

static void on_meta_read_new(void *arg, const struct mreply *r)
{
    struct mop *op = arg;

    if (r->status == MREPLY_EN && op->old_failed) {
        meta_fail(op, BACKEND_ERR_LOST);    /* the value may be on the old one */
    } else if (r->status == MREPLY_EN && op->step == STEP_FIRST) {
        op->step = STEP_RECHECK;
        lookup_old(op, on_meta_read_old);
    } else {
        op->m->fallback_reads += r->status != MREPLY_EN && r->status != MREPLY_FAIL;
        meta_reply(op, r);
    }
}

static void on_meta_read_ran_old(void *arg, const struct mreply *r)
{
    struct mop *op = arg;

    if (meta_moved_under(op, r) || !meta_judged(op, r)) {
        retry_or_fail(op, on_meta_read_old);
        return;
    }
    meta_reply(op, r);
}

static void on_meta_read_old(void *arg, const struct mreply *r)
{
    struct mop *op = arg;

    op->old = look(r, &op->old_cas);
    if (op->old == LOOK_REAL) {
        meta_run(op, op->from, on_meta_read_ran_old, false);
        return;
    }
    if (r->status == MREPLY_FAIL) {
        if (op->step == STEP_RECHECK) {
            meta_fail(op, BACKEND_ERR_LOST);
            return;
        }
        op->old_failed = true;
    }
    meta_run_new(op, on_meta_read_new, on_meta_read_old);
}

/* where the value is (ms modes, C or I; md with C or I; ma; mg with N) */
static void on_meta_rmw_lookup(void *arg, const struct mreply *r);

static void on_meta_rmw_done(void *arg, const struct mreply *r)
{
    struct mop *op = arg;

    if (meta_moved_under(op, r) || !meta_judged(op, r)) {
        retry_or_fail(op, on_meta_rmw_lookup);
        return;
    }
    meta_reply_clear(op, r);
}

static void on_meta_rmw_new(void *arg, const struct mreply *r)
{
    struct mop *op = arg;

    if (failed_reply(op, r)) {
        return;
    }
    /* prepared, creating on a miss: on the new owner only if it holds the
     * value, else at home (the old owner), as add does */
    op->meta->absent = !holds_value(r);
    if (!op->meta->absent && op->old == LOOK_TOMB) {
        retry_or_fail(op, on_meta_rmw_lookup);  /* tomb_next_to_value */
    } else if (op->meta->absent) {
        meta_run_home(op, on_meta_rmw_done, on_meta_rmw_lookup);
    } else {
        meta_run(op, op->to, on_meta_rmw_done, false);
    }
}

/* Creating on the new owner: whether the line creates the item decides
 * whether q drops ma's answer (meta_quiet_drops) and whether a tombstone on
 * the old owner is cleared after (meta_reply_clear), so look first. */
static void on_meta_ma_look(void *arg, const struct mreply *r)
{
    struct mop *op = arg;

    if (failed_reply(op, r)) {
        return;
    }
    op->meta->absent = r->status == MREPLY_EN;
    if (!op->meta->absent && op->old == LOOK_TOMB) {
        retry_or_fail(op, on_meta_rmw_lookup);  /* tomb_next_to_value */
        return;
    }
    meta_run(op, op->to, on_meta_rmw_done, false);
}

static void on_meta_rmw_lookup(void *arg, const struct mreply *r)
{
    struct mop *op = arg;

    if (r->status == MREPLY_FAIL) {
        meta_fail(op, error_line(r));
        return;
    }
    op->old = look(r, &op->old_cas);
    if (op->old == LOOK_REAL) {
        meta_run(op, op->from, on_meta_rmw_done, op->meta->cmd != META_CMD_MG);
    } else if (op->meta->vivify && op->phase == PH_PREPARED) {
        SEND_OR_FAIL(op, op->to, on_meta_rmw_new, NULL, 0, "mg %.*s v f", (int)op->k->len,
                     op->k->key);
    } else if (op->meta->vivify &&
               (op->old == LOOK_TOMB || (op->meta->cmd == META_CMD_MA && op->meta->quiet))) {
        SEND_OR_FAIL(op, op->to, on_meta_ma_look, NULL, 0, "mg %.*s", (int)op->k->len,
                     op->k->key);
    } else {
        meta_run_new(op, on_meta_rmw_done, on_meta_rmw_lookup);
    }
}

/* set (ms, mode S): note the other owner's CAS, write home, clear the
 * other copy if unchanged (the text set's rule) */
static void on_meta_set_other(void *arg, const struct mreply *r)
{
    struct mop *op = arg;

    if (r->status == MREPLY_FAIL) {
        meta_fail(op, BACKEND_ERR_LOST);
        return;
    }
    meta_answer(op);
}

static void on_meta_set_home(void *arg, const struct mreply *r)
{
    struct mop *op = arg;
    struct backend *other = op->meta->ran == op->from ? op->to : op->from;

    meta_index(op, r);
    meta_keep(op, r, r->status);
    if (r->status != MREPLY_HD || op->old == LOOK_NONE) {
        meta_answer(op);
        return;
    }
    SEND_OR_FAIL(op, other, on_meta_set_other, NULL, 0, "md %.*s C%lld", (int)op->k->len,
                 op->k->key, (long long)op->old_cas);
}

static void on_meta_set_look(void *arg, const struct mreply *r)
{
    struct mop *op = arg;

    if (r->status == MREPLY_FAIL) {
        meta_fail(op, error_line(r));
        return;
    }
    op->old = r->status == MREPLY_HD ? LOOK_REAL : LOOK_NONE;
    op->old_cas = 0;
    mreply_flag(r, 'c', &op->old_cas);
    meta_run(op, op->phase == PH_PREPARED ? op->from : op->to, on_meta_set_home, false);
}

static void on_meta_add_lookup(void *arg, const struct mreply *r);

/* add (ms ME): refused where a real value is, else stored at home; a
 * tombstone on the old owner is cleared after a store on the new one */
static void on_meta_add_done(void *arg, const struct mreply *r)
{
    struct mop *op = arg;

    if (r->status == MREPLY_NS && op->meta->ran == op->to && op->old == LOOK_TOMB) {
        retry_or_fail(op, on_meta_add_lookup);  /* tomb_next_to_value */
        return;
    }
    op->meta->absent = true;            /* ME stores only over no item */
    meta_reply_clear(op, r);
}

static void on_meta_add_new(void *arg, const struct mreply *r)
{
    struct mop *op = arg;

    if (failed_reply(op, r)) {
        return;
    }
    if (holds_value(r) && op->old == LOOK_TOMB) {
        retry_or_fail(op, on_meta_add_lookup);  /* tomb_next_to_value */
    } else if (holds_value(r)) {
        meta_run(op, op->to, on_meta_add_done, false);     /* answers NS */
    } else {
        meta_run_home(op, on_meta_add_done, on_meta_add_lookup);
    }
}

static void on_meta_add_lookup(void *arg, const struct mreply *r)
{
    struct mop *op = arg;

    if (r->status == MREPLY_FAIL) {
        meta_fail(op, error_line(r));
        return;
    }
    op->old = look(r, &op->old_cas);
    if (op->old == LOOK_REAL) {
        meta_run(op, op->from, on_meta_add_done, false);   /* answers NS */
    } else if (op->phase == PH_PREPARED) {
        SEND_OR_FAIL(op, op->to, on_meta_add_new, NULL, 0, "mg %.*s v f", (int)op->k->len,
                     op->k->key);
    } else {
        meta_run(op, op->to, on_meta_add_done, false);     /* add mode checks it */
    }
}

/* delete (md): the old owner by the text delete's rule (a tombstone when
 * switched), then the client's md on the new owner; HD if either held it */
static void on_meta_del_lookup(void *arg, const struct mreply *r);

static void on_meta_del_new(void *arg, const struct mreply *r)
{
    struct mop *op = arg;

    meta_keep(op, r, op->hit && r->status == MREPLY_NF ? MREPLY_HD : r->status);
    meta_answer(op);
}

static void on_meta_del_old(void *arg, const struct mreply *r)
{
    struct mop *op = arg;

    if (r->status == MREPLY_FAIL) {
        if (op->old == LOOK_REAL && op->phase == PH_SWITCHED) {
            tomb_record(op);    /* the server may still run the store */
        }
        meta_fail(op, BACKEND_ERR_LOST);
        return;
    }
    if (op->old == LOOK_REAL) {
        if (r->status != MREPLY_HD) {
            retry_or_fail(op, on_meta_del_lookup);      /* it changed under us */
            return;
        }
        op->hit = true;
        if (op->phase == PH_SWITCHED) {
            tomb_written(op);
        }
    }
    meta_run(op, op->to, on_meta_del_new, false);
}

static void on_meta_del_lookup(void *arg, const struct mreply *r)
{
    struct mop *op = arg;
    const char *k = op->k->key;
    int kl = op->k->len;

    if (r->status == MREPLY_FAIL) {
        meta_fail(op, BACKEND_ERR_LOST);
        return;
    }
    op->old = look(r, &op->old_cas);
    if (op->old == LOOK_TOMB) {
        /* the line runs on the new owner only if it holds nothing there
         * (tomb_next_to_value), and answers NF */
        meta_run_new(op, on_meta_del_new, on_meta_del_lookup);
    } else if (op->old == LOOK_NONE) {
        meta_run(op, op->to, on_meta_del_new, false);
    } else if (op->phase == PH_SWITCHED) {
        tomb_write(op, on_meta_del_old);
    } else {
        SEND_OR_FAIL(op, op->from, on_meta_del_old, NULL, 0, "md %.*s C%lld", kl, k,
                     (long long)op->old_cas);
    }
}

static void meta_start(struct mop *op)
{
    struct mop_meta *mm = op->meta;

    switch (mm->rule) {
    case META_RULE_READ:
        lookup_old(op, on_meta_read_old);
        break;
    case META_RULE_SET:
        SEND_OR_FAIL(op, op->phase == PH_PREPARED ? op->to : op->from, on_meta_set_look,
                     NULL, 0, "mg %.*s c", (int)op->k->len, op->k->key);
        break;
    case META_RULE_ADD:
        lookup_old(op, on_meta_add_lookup);
        break;
    case META_RULE_DELETE:
        lookup_old(op, on_meta_del_lookup);
        break;
    case META_RULE_RMW:
        lookup_old(op, on_meta_rmw_lookup);
        break;
    }
}

/* Which text rule a meta command follows, and its statuses (see above). */
static void meta_classify(struct mop_meta *mm, const struct meta_req *mr)
{
    bool cond = !mr->has_cas;

    switch (mr->cmd) {
    case META_CMD_MG:
        mm->rule = mr->vivify ? META_RULE_RMW : META_RULE_READ;
        mm->retry_on = MBIT(EN);
        mm->stores = mr->vivify ? MBIT(HD) | MBIT(VA) : 0;
        break;
    case META_CMD_MS:
        mm->rule = mr->has_cas || mr->invalidate ? META_RULE_RMW :
                   mr->mode == 'E' ? META_RULE_ADD :
                   mr->mode == 0 || mr->mode == 'S' ? META_RULE_SET : META_RULE_RMW;
        mm->retry_on = MBIT(NF) | MBIT(NS) | (cond ? MBIT(EX) : 0);
        mm->stores = MBIT(HD);
        break;
    case META_CMD_MD:
        mm->rule = mr->has_cas || mr->invalidate ? META_RULE_RMW : META_RULE_DELETE;
        mm->retry_on = MBIT(NF) | (cond ? MBIT(EX) : 0);
        break;
    default:    /* ma */
        mm->rule = META_RULE_RMW;
        mm->retry_on = MBIT(NF) | (cond ? MBIT(EX) : 0);
        mm->stores = mr->vivify ? MBIT(HD) | MBIT(VA) : 0;
        break;
    }
}

void mig_submit_meta(struct mig *m, struct frag *f, const struct meta_req *mr,
                     const char *line, size_t len, const char *key, size_t keylen,
                     uint32_t hash, struct evbuffer *data)
{
    struct mop *op = calloc(1, sizeof(*op));
    struct mop_meta *mm = malloc(sizeof(*mm) + len);

    if (op == NULL || mm == NULL || !owners(m, hash, &op->from, &op->to)) {
        free(op);
        free(mm);
        if (data != NULL) {
            evbuffer_free(data);
        }
        request_frag_fail(f, "SERVER_ERROR out of memory");
        return;
    }
    *mm = (struct mop_meta){ .cmd = mr->cmd, .quiet = mr->quiet, .client_cas = mr->has_cas,
                             .vivify = mr->vivify, .quiet_drops = mr->quiet_drops,
                             .len = len };
    memcpy(mm->line, line, len);
    for (uint32_t i = 0; i < mr->nflags; i++) {
        mm->ret_cas |= mr->flags[i].letter == 'c';
        mm->ret_flags |= mr->flags[i].letter == 'f';
        mm->ret_value |= mr->flags[i].letter == 'v';
    }
    meta_classify(mm, mr);
    op->meta = mm;
    op->arc = -1;
    op->f = f;
    op->phase = m->phase;
    op->data = data;
    op->counted = true;
    op->gen = pool_inflight_begin(m->p);
    if (!mop_enqueue(m, op, key, keylen)) {
        pool_inflight_end(m->p, op->gen);
        mop_free(op);
        request_frag_fail(f, "SERVER_ERROR out of memory");
    }
}

/* --- moving one key (the bulk mover) --------------------------------------------- */

static void move_fetch(struct mop *op);
static void move_copy(struct mop *op);
static void on_tomb_look(void *arg, const struct mreply *r);
static void on_tomb_cleared(void *arg, const struct mreply *r);
static void on_doubt_look(void *arg, const struct mreply *r);
static bool doubt_drained(const struct mop *op, struct mdoubt *d);
static bool doubt_answer(const struct mop *op, const struct mdoubt *d,
                         enum mreply_status *st, int64_t *copy_cas);

static void move_done(struct mop *op, enum mop_result res)
{
    struct mig *m = op->m;

    switch (res) {
    case MOP_MOVED:
        m->keys_moved++;
        break;
    case MOP_SKIPPED:
        m->keys_skipped++;
        break;
    case MOP_STALE:
        m->keys_stale++;
        break;
    case MOP_TOMB_CLEARED:
        m->tombs_cleared++;
        break;
    case MOP_FAILED:
        m->keys_failed++;
        /* fall through */
    case MOP_WAITING:
        if (op->arc >= 0 && op->src == NULL) {
            m->arcs[op->arc].failed++;  /* its arc gets another pass */
        }
        break;
    }
    if (op->src != NULL) {
        closing_result(op, res);        /* counted; its source may be listed again */
    }
    if (res != MOP_FAILED && res != MOP_WAITING) {
        mig_index_rem(m, m->from, op->k->key, op->k->len);
        if (res == MOP_MOVED || res == MOP_SKIPPED) {
            mig_index_add(m, m->to, op->k->key, op->k->len);
        }
        m->index_moved++;
    }
    mop_finish(op);
}

/* Record which server fails moves, for status and /healthz. */
static void move_failed(struct mop *op, struct backend *be, const struct mreply *r)
{
    struct mig *m = op->m;

    snprintf(m->blocked, sizeof(m->blocked), "server %s (%s): %.60s", be->identity,
             be->addr.text, r->error != NULL ? r->error : mreply_names[r->status]);
    move_done(op, MOP_FAILED);
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
        move_done(op, MOP_FAILED);
    }
}

static void on_undo(void *arg, const struct mreply *r)
{
    struct mop *op = arg;

    if (r->status == MREPLY_FAIL) {
        move_failed(op, op->to, r);
        return;
    }
    move_retry(op);
}

static void on_delete_source(void *arg, const struct mreply *r)
{
    struct mop *op = arg;

    if (r->status == MREPLY_HD) {
        op->m->blocked[0] = '\0';
        move_done(op, op->stored_copy ? MOP_MOVED : MOP_SKIPPED);
        return;
    }
    if (r->status == MREPLY_FAIL) {
        move_failed(op, op->from, r);
        return;
    }
    /* The old copy changed (EX) or vanished (NF) since we read it. */
    if (op->stored_copy) {
        /* Remove our copy, but only if nobody has written the key since. */
        SEND_OR_FAIL(op, op->to, on_undo, NULL, 0, "md %.*s C%lld", (int)op->k->len,
                     op->k->key, (long long)op->dst_cas);
        return;
    }
    move_retry(op);
}

static void on_store_copy(void *arg, const struct mreply *r);

/* The new owner refused the copy: a newer write, or a tombstone left there
 * by an earlier migration, which the copy replaces (conditionally). */
static void on_dest_look(void *arg, const struct mreply *r)
{
    struct mop *op = arg;
    int64_t cas;

    if (r->status == MREPLY_VA && *doubt_slot(op->m, op->k->key, op->k->len) != NULL) {
        on_doubt_look(op, r);   /* our earlier copy landed meanwhile? */
        return;
    }
    if (look(r, &cas) == LOOK_TOMB && op->retries++ < MIG_MAX_RETRIES) {
        SEND_OR_FAIL(op, op->to, on_store_copy, op->val, op->val_len,
                     "ms %.*s %zu F%llu T%lld C%lld c", (int)op->k->len, op->k->key,
                     op->val_len, (unsigned long long)(uint32_t)op->vflags,
                     (long long)ttl_for_store(op->ttl), (long long)cas);
        return;
    }
    if (r->status == MREPLY_FAIL) {
        move_failed(op, op->to, r);
        return;
    }
    if (r->status == MREPLY_EN) {
        move_retry(op);         /* gone again: start over */
        return;
    }
    if (holds_value(r)) {
        int64_t flags = 0;
        mreply_flag(r, 'f', &flags);
        bool same = r->value_len == op->val_len && (uint32_t)flags == (uint32_t)op->vflags &&
                    memcmp(r->value, op->val, op->val_len) == 0;
        if (!same) {
            if (!conflict_settled(op->m, op->k, op->src_cas, cas)) {
                move_done(op, MOP_WAITING);
                return;
            }
            /* Settled: the old owner's value wins (readers saw it). */
            SEND_OR_FAIL(op, op->to, on_store_copy, op->val, op->val_len,
                         "ms %.*s %zu F%llu T%lld C%lld c", (int)op->k->len, op->k->key,
                         op->val_len, (unsigned long long)(uint32_t)op->vflags,
                         (long long)ttl_for_store(op->ttl), (long long)cas);
            return;
        }
    }
    struct mreply ns = { .status = MREPLY_NS };
    on_store_copy(op, &ns);
}

static void on_store_copy(void *arg, const struct mreply *r)
{
    struct mop *op = arg;

    if (r->status == MREPLY_FAIL && op->val != NULL) {
        /* No answer: the copy may land later (invariant I4, "Moving keys"). */
        doubt_add(op->m, op->k, value_hash(op->val, op->val_len, (uint32_t)op->vflags),
                  op->src_cas, op->sent_on, op->sent_opaque, op->copy_recorded);
    } else if (op->copy_recorded) {
        doubt_unrecord(op->m, op->k->key, op->k->len);   /* answered: ran */
    }
    op->copy_recorded = false;
    if (r->status == MREPLY_NS && !op->dest_checked) {
        op->dest_checked = true;
        SEND_OR_FAIL(op, op->to, on_dest_look, NULL, 0, "mg %.*s v f c", (int)op->k->len,
                     op->k->key);
        return;
    }
    free(op->val);
    op->val = NULL;
    if (r->status == MREPLY_HD) {
        op->stored_copy = true;
        mreply_flag(r, 'c', &op->dst_cas);
    } else if (r->status == MREPLY_NF) {
        move_retry(op);         /* the tombstone went meanwhile: start over */
        return;
    } else if (r->status != MREPLY_NS && r->status != MREPLY_EX) {
        move_failed(op, op->to, r);
        return;
    }
    SEND_OR_FAIL(op, op->from, on_delete_source, NULL, 0, "md %.*s C%lld",
                 (int)op->k->len, op->k->key, (long long)op->src_cas);
}

static void clear_tomb(struct mop *op)
{
    SEND_OR_FAIL(op, op->from, on_tomb_cleared, NULL, 0, "md %.*s C%lld",
                 (int)op->k->len, op->k->key, (long long)op->src_cas);
}

static void on_tomb_dest_cleared(void *arg, const struct mreply *r)
{
    struct mop *op = arg;

    if (r->status == MREPLY_FAIL) {
        move_failed(op, op->to, r);
    } else if (r->status != MREPLY_HD) {
        move_retry(op);
    } else {
        clear_tomb(op);
    }
}

static void on_tomb_look(void *arg, const struct mreply *r)
{
    struct mop *op = arg;
    int64_t cas = 0;

    if (r->status == MREPLY_FAIL) {
        move_failed(op, op->to, r);
        return;
    }
    if (r->status != MREPLY_HD) {
        clear_tomb(op);         /* nothing on the new owner */
        return;
    }
    mreply_flag(r, 'c', &cas);
    if (!conflict_settled(op->m, op->k, op->src_cas, cas)) {
        move_done(op, MOP_WAITING);
        return;
    }
    /* Settled: the delete wins (readers have been answered a miss). */
    SEND_OR_FAIL(op, op->to, on_tomb_dest_cleared, NULL, 0, "md %.*s C%lld",
                 (int)op->k->len, op->k->key, (long long)cas);
}

static void on_tomb_cleared(void *arg, const struct mreply *r)
{
    struct mop *op = arg;

    if (r->status == MREPLY_HD) {
        move_done(op, MOP_TOMB_CLEARED);
    } else if (r->status == MREPLY_FAIL) {
        move_failed(op, op->from, r);
    } else {
        move_retry(op);
    }
}

static void on_fetch(void *arg, const struct mreply *r)
{
    struct mop *op = arg;

    op->src_gone = r->status == MREPLY_EN;
    if (op->src_gone && *doubt_slot(op->m, op->k->key, op->k->len) != NULL) {
        /* O lost the key (evicted, or written and deleted through N since),
         * but our copy may still land on N: settle it before letting go. */
        op->src_tomb = false;
        SEND_OR_FAIL(op, op->to, on_doubt_look, NULL, 0, "mg %.*s v f c",
                     (int)op->k->len, op->k->key);
        return;
    }
    if (op->src_gone) {
        move_done(op, MOP_STALE);
        return;
    }
    if (r->status != MREPLY_VA) {
        move_failed(op, op->from, r);
        return;
    }
    op->vflags = 0;
    op->ttl = -1;
    op->src_cas = 0;
    mreply_flag(r, 'f', &op->vflags);
    mreply_flag(r, 't', &op->ttl);
    mreply_flag(r, 'c', &op->src_cas);
    op->src_tomb = is_tomb(r);
    op->stored_copy = op->dest_checked = false;
    free(op->val);          /* an earlier attempt's (move_retry) */
    op->val = NULL;
    if (!op->src_tomb) {
        if ((op->val = malloc(r->value_len + 1)) == NULL) {
            move_done(op, MOP_FAILED);
            return;
        }
        memcpy(op->val, r->value, r->value_len);
        op->val_len = r->value_len;
    }
    if (*doubt_slot(op->m, op->k->key, op->k->len) != NULL) {
        /* An earlier copy may have landed late: look before going on. */
        SEND_OR_FAIL(op, op->to, on_doubt_look, NULL, 0, "mg %.*s v f c",
                     (int)op->k->len, op->k->key);
        return;
    }
    move_copy(op);
}

/* The copy is recorded in Redis: send it. */
static void on_copy_recorded(struct mop *op)
{
    op->copy_recorded = true;
    SEND_OR_FAIL(op, op->to, on_store_copy, op->val, op->val_len,
                 "ms %.*s %zu F%llu T%lld ME c", (int)op->k->len, op->k->key,
                 op->val_len, (unsigned long long)(uint32_t)op->vflags,
                 (long long)ttl_for_store(op->ttl));
}

/*
 * The key's value (or tombstone) is read from the old owner: copy it. The
 * copy is recorded as in doubt in Redis first, and sent once Redis took the
 * record, until its answer comes: whoever holds the lease next knows of it
 * even if this process dies before the answer (docs/ARCHITECTURE.md, "A
 * copy in doubt").
 */
static void move_copy(struct mop *op)
{
    if (op->src_tomb) {
        /* A real value on the new owner next to a tombstone: a set between
         * its two steps, or a copy that outlived a delete. */
        SEND_OR_FAIL(op, op->to, on_tomb_look, NULL, 0, "mg %.*s c", (int)op->k->len,
                     op->k->key);
        return;
    }
    if (op->m->closing || mig_fenced(op->m) ||
        !doubt_record_op(op->m, op->k->key, op->k->len,
                         value_hash(op->val, op->val_len, (uint32_t)op->vflags),
                         op->src_cas, op)) {
        move_done(op, MOP_FAILED);
    }
}

/* A doubt is settled: copy what O holds, or end if it holds nothing. */
static void move_resume(struct mop *op)
{
    if (op->src_gone) {
        op->m->blocked[0] = '\0';     /* N answered */
        move_done(op, MOP_STALE);
    } else {
        move_copy(op);
    }
}

/* After a late copy of ours was removed from the new owner. */
static void on_doubt_cleared(void *arg, const struct mreply *r)
{
    struct mop *op = arg;

    if (r->status == MREPLY_FAIL) {
        move_failed(op, op->to, r);
        return;
    }
    if (r->status != MREPLY_HD) {
        move_retry(op);     /* someone wrote it meanwhile: look again */
        return;
    }
    struct mdoubt *d = *doubt_slot(op->m, op->k->key, op->k->len);
    if (d != NULL && !doubt_drained(op, d)) {
        /* Taken for ours by its bytes alone: the copy may still be on its
         * way, and land on the key just emptied. */
        move_done(op, MOP_WAITING);
        return;
    }
    doubt_drop(op->m, op->k);
    move_resume(op);
}

/*
 * May a copy in doubt that a look did not find still land? A resumed
 * memcached runs one connection's commands in order, but not connections
 * in the order they were written: a look on another connection can be
 * answered before the copy runs (chaos scenario h). A look sent on the
 * copy's own socket (mconn.c keeps it past a timeout) ran after it: the
 * answer is final; so is a copy N answered late (doubt_answer), on
 * whatever socket the look went. Else (the socket was closed with the
 * copy unanswered, or another process sent it) the new owner must have
 * answered, with no failure between, for as long as conflict_settled's
 * bound without the liveness (docs/ARCHITECTURE.md, "A copy in doubt").
 */
static bool doubt_drained(const struct mop *op, struct mdoubt *d)
{
    uint64_t now = now_ms(op->m);
    enum mreply_status st;
    int64_t copy_cas;

    if ((d->sent_on != 0 && d->sent_on == op->sent_on) || doubt_answer(op, d, &st, &copy_cas)) {
        return true;
    }
    if (d->since == 0) {
        d->since = now;
    }
    return now >= d->since + 2 * (uint64_t)op_timeout_ms(op->m->p) + 1000;
}

/*
 * The copy's own late answer, if N gave one: mconn reads the replies of
 * timed-out commands on the mover's ordered connection and keeps them by
 * opaque (mconn_late_reply), also once that socket is closed. A copy that
 * was answered ran: it can never land again. False: not known (no answer
 * yet, an error line, a connection made anew).
 */
static bool doubt_answer(const struct mop *op, const struct mdoubt *d,
                         enum mreply_status *st, int64_t *copy_cas)
{
    struct mconn *mc = d->sent_on != 0 ? mc_of(op, op->to) : NULL;

    *copy_cas = 0;
    return mc != NULL && mconn_late_reply(mc, d->sent_on, d->opaque, st, copy_cas) &&
           (*st != MREPLY_HD || *copy_cas != 0);
}

/*
 * Is what N holds (r: "mg k v f c") the copy in doubt? With the copy's late
 * answer, only if that stored it (HD) and N's CAS is still the one it got:
 * a client's write of the same bytes since (a cache refilled, with the old
 * owner cleared) is not taken for it, and not removed. Without it (no
 * answer yet, or not known) only the bytes can tell, and only while O
 * still holds the key or its tombstone.
 */
static bool doubt_is_ours(const struct mop *op, const struct mdoubt *d, const struct mreply *r)
{
    int64_t flags = 0, cas = 0, copy_cas;
    enum mreply_status st;

    if (!holds_value(r)) {
        return false;
    }
    mreply_flag(r, 'f', &flags);
    mreply_flag(r, 'c', &cas);
    if (doubt_answer(op, d, &st, &copy_cas)) {
        return st == MREPLY_HD && copy_cas == cas;
    }
    if (op->src_gone) {
        /* O is empty: the same bytes on N are the copy's, or the key's own
         * (the move went through and its record's HDEL was lost to a Redis
         * outage, or a client refilled the key). Taken for the copy, every
         * record a Redis restart left behind cost a moved key
         * (test_migration.py): kept. */
        return false;
    }
    return value_hash(r->value, r->value_len, (uint32_t)flags) == d->vhash;
}

/*
 * What the new owner holds of a key whose earlier copy is in doubt. Our
 * copy (doubt_is_ours) is kept when the old owner has not changed
 * since it was read, else removed (conditionally) before the key moves.
 * A copy it does not hold is forgotten only once it can no longer land
 * (doubt_drained); until then the key waits for a later pass.
 */
static void on_doubt_look(void *arg, const struct mreply *r)
{
    struct mop *op = arg;
    struct mdoubt *d = *doubt_slot(op->m, op->k->key, op->k->len);
    int64_t cas = 0;

    if (r->status == MREPLY_FAIL) {
        if (d != NULL) {
            d->since = 0;       /* N stopped again, its buffers with it */
        }
        move_failed(op, op->to, r);
        return;
    }
    mreply_flag(r, 'c', &cas);
    bool ours = d != NULL && doubt_is_ours(op, d, r);
    if (!ours && d != NULL && !doubt_drained(op, d)) {
        move_done(op, MOP_WAITING);
    } else if (!ours) {
        doubt_drop(op->m, op->k);
        move_resume(op);
    } else if (!op->src_gone && !op->src_tomb && op->src_cas == d->src_cas) {
        doubt_drop(op->m, op->k);
        op->stored_copy = true;
        op->dst_cas = cas;
        free(op->val);
        op->val = NULL;
        SEND_OR_FAIL(op, op->from, on_delete_source, NULL, 0, "md %.*s C%lld",
                     (int)op->k->len, op->k->key, (long long)op->src_cas);
    } else {
        SEND_OR_FAIL(op, op->to, on_doubt_cleared, NULL, 0, "md %.*s C%lld",
                     (int)op->k->len, op->k->key, (long long)cas);
    }
}

static void move_fetch(struct mop *op)
{
    SEND_OR_FAIL(op, op->from, on_fetch, NULL, 0, "mg %.*s v f t c", (int)op->k->len,
                 op->k->key);
}

/* --- queueing ------------------------------------------------------------------------- */

void mop_start(struct mop *op)
{
    if (op->f != NULL) {
        client_start(op);
    } else if (op->sweep) {
        tomb_sweep_start(op);
    } else {
        move_fetch(op);
    }
}

static void mop_next(struct mkey *k)
{
    mop_start(TAILQ_FIRST(&k->ops));
}

/* Queue an operation on its key; it starts now if the key is idle. */
bool mop_enqueue(struct mig *m, struct mop *op, const char *key, size_t len)
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
    if (idle) {
        mop_start(op);
    }
    return true;
}

void mig_submit(struct mig *m, struct frag *f, const struct proto_req *req,
                const char *key, size_t keylen, uint32_t hash, uint32_t key_index,
                struct evbuffer *data)
{
    struct mop *op = calloc(1, sizeof(*op));

    if (op == NULL || !owners(m, hash, &op->from, &op->to)) {
        free(op);
        if (data != NULL) {
            evbuffer_free(data);
        }
        request_frag_fail(f, "SERVER_ERROR out of memory");
        return;
    }
    op->arc = -1;
    op->f = f;
    op->phase = m->phase;
    op->cmd = req->cmd;
    op->flags = req->flags;
    op->exptime = req->exptime;
    op->bytes = req->bytes;
    op->cas = req->cas;
    op->delta = req->delta;
    op->key_index = key_index;
    op->data = data;
    op->counted = true;
    op->gen = pool_inflight_begin(m->p);
    if (!mop_enqueue(m, op, key, keylen)) {
        pool_inflight_end(m->p, op->gen);
        mop_free(op);
        request_frag_fail(f, "SERVER_ERROR out of memory");
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
    if (m->pass == 1) {
        mig_redis(m, NULL, NULL, "SADD %s:migration:done:%s %u-%u", m->prefix, m->fp_to,
                  m->diff.arcs[i].first, m->diff.arcs[i].last);
    }
}

bool bulk_move(struct mig *m, uint32_t i, struct mig_source *src, const char *key,
               size_t len)
{
    const struct ring_arc *arc = &m->diff.arcs[i];
    struct mop *op = calloc(1, sizeof(*op));

    if (op == NULL) {
        return false;
    }
    op->arc = (int32_t)i;
    op->src = src;
    op->from = m->from_be[m->from->points[arc->from].server];
    op->to = m->to_be[m->to->points[arc->to].server];
    m->arcs[i].inflight++;
    m->inflight++;
    if (src != NULL) {
        src->inflight++;
    }
    m->tokens -= 1;     /* with rate 0, the refill sets them back to 0 */
    if (!mop_enqueue(m, op, key, len)) {
        m->arcs[i].inflight--;
        m->inflight--;
        if (src != NULL) {
            src->inflight--;
        }
        mop_free(op);
        return false;
    }
    return true;
}

struct list_ctx {
    struct mig *m;
    uint32_t arc;
    uint32_t batch;
};

/* A member that is not a key is skipped: counted, and logged the first time. */
static void bad_member(struct mig *m, const char *s, size_t len)
{
    if (m->bad_members++ == 0) {
        char shown[64];
        size_t n = 0;
        for (size_t i = 0; i < len && n + 4 < sizeof(shown); i++) {
            unsigned char c = (unsigned char)s[i];
            n += (size_t)snprintf(shown + n, sizeof(shown) - n,
                                  c > ' ' && c < 0x7f ? "%c" : "\\x%02x", c);
        }
        shown[n] = '\0';
        log_error("migration", "%s: the index holds a member that is not a memcached "
                  "key (%zu bytes: \"%s%s\"): skipped, never sent; counted in "
                  "migration:bad_index_members, not logged again", m->p->name, len,
                  shown, n < len ? "..." : "");
    }
}

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
    if (reply != NULL && reply->type == REDIS_REPLY_ERROR) {
        mig_index_refused(m, reply->str);
    }
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
        if (mem->type != REDIS_REPLY_STRING) {
            continue;
        }
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
        if (!proto_key_ok(mem->str, mem->len)) {
            bad_member(m, mem->str, mem->len);
            continue;
        }
        if (!arc->moves) {
            /* Same server, another v-node: only the index entry moves. */
            char from[1024], to[1024];
            const char *add[] = { to, "1", reply->element[2 * j + 1]->str, mem->str };
            size_t add_len[] = { idx_vnode_key(m->prefix, m->to, arc->to, to, sizeof(to)), 1,
                                 reply->element[2 * j + 1]->len, mem->len };
            const char *rem[] = { from, "1", add[2], mem->str };
            size_t rem_len[] = { idx_vnode_key(m->prefix, m->from, arc->from, from,
                                               sizeof(from)), 1, add_len[2], mem->len };
            mig_index(m, NULL, NULL, "add", 4, add, add_len);
            mig_index(m, NULL, NULL, "rem", 4, rem, rem_len);
            m->index_moved++;
            continue;
        }
        if (!bulk_move(m, i, NULL, mem->str, mem->len)) {
            break;
        }
    }
    arc_free_seen(a);
    a->seen = seen;
    a->nseen = nseen;
    a->cursor = last_score;
    a->exhausted = n < batch + prev_seen;
    bulk_pump(m);
}

uint32_t inflight_limit(const struct mig *m)
{
    return (uint32_t)m->p->conf->migration.inflight * (m->from->nservers ? m->from->nservers : 1);
}

/* Every arc is done once: go over the moving arcs once more. */
static void second_pass(struct mig *m)
{
    m->pass = 2;
    m->cur_arc = 0;
    for (uint32_t i = 0; i < m->diff.narcs; i++) {
        struct mig_arc *a = &m->arcs[i];
        if (!m->diff.arcs[i].moves) {
            continue;
        }
        a->done = a->exhausted = false;
        a->cursor = m->diff.arcs[i].first;
        a->passes = a->failed = 0;
        a->backoff_ms = 0;
        a->retry_at = 0;
        arc_free_seen(a);
        m->arcs_done--;
    }
    log_notice("migration", "%s: every arc moved; a last pass picks up tombstones and "
               "keys indexed meanwhile", m->p->name);
}

/*
 * Every pass is over but copies are still in doubt: a key whose entry left
 * the index meanwhile (the sweeper, a client's write) is in no arc's
 * listing, yet its copy may land on N after a client deleted the key
 * there. Each such key is moved again, which settles its doubt first
 * (on_fetch, on_doubt_look), in rounds after a pause that doubles up to
 * the arcs' bound, until none is left. Returns true when none is left.
 */
static bool doubts_pump(struct mig *m)
{
    if (m->ndoubts == 0) {
        return true;
    }
    if (m->doubt_pumping || (m->doubt_bucket == 0 && now_ms(m) < m->doubt_retry_at)) {
        return false;   /* a move that failed at once ends inside the loop below */
    }
    if (m->doubt_bucket == 0 && m->doubt_rounds % 8 == 0) {
        log_notice("migration", "%s: every pass is over; the end waits for %llu copies "
                   "in doubt to be settled (%s)", m->p->name,
                   (unsigned long long)m->ndoubts,
                   m->blocked[0] != '\0' ? m->blocked : "the new owners answer");
    }
    if (m->doubt_bucket == 0) {
        m->doubt_rounds++;      /* a new round: every doubt is visited once */
    }
    bool limited = m->p->conf->migration.rate > 0;
    uint32_t limit = inflight_limit(m);
    m->doubt_pumping = true;
    for (; m->doubt_bucket < MIG_BUCKETS; m->doubt_bucket++) {
        struct mdoubt **pp = &m->doubts[m->doubt_bucket];
        while (*pp != NULL) {
            struct mdoubt *d = *pp;
            if (d->round == m->doubt_rounds) {
                pp = &d->next;
                continue;
            }
            if (m->inflight >= limit || (limited && m->tokens < 1)) {
                m->doubt_pumping = false;
                return false;   /* the rest of the round once these end */
            }
            d->round = m->doubt_rounds;
            int32_t i = arc_of(m, ring_key_hash(m->from, d->key, d->len));
            if (i < 0 || !m->diff.arcs[i].moves) {
                /* Copies go only to the keys of moving arcs: cannot be. */
                log_error("migration", "%s: a copy in doubt of a key that does not "
                          "move (%u bytes): forgotten", m->p->name, (unsigned)d->len);
                doubt_unrecord(m, d->key, d->len);
                table_drop(pp, &m->ndoubts);
                continue;
            }
            pp = &d->next;
            (void)bulk_move(m, (uint32_t)i, NULL, d->key, d->len);  /* else the next round */
        }
    }
    m->doubt_pumping = false;
    m->doubt_bucket = 0;
    m->doubt_backoff_ms = m->doubt_backoff_ms ? m->doubt_backoff_ms * 2 : MIG_ARC_RETRY_MIN_MS;
    if (m->doubt_backoff_ms > MIG_ARC_RETRY_MAX_MS) {
        m->doubt_backoff_ms = MIG_ARC_RETRY_MAX_MS;
    }
    m->doubt_retry_at = now_ms(m) + m->doubt_backoff_ms;
    return false;
}

/* Start as much work as the rate and the in-flight bound allow. */
void bulk_pump(struct mig *m)
{
    if (!m->lease || m->arcs == NULL || strcmp(m->fleet, "moving") != 0 ||
        m->acked != PH_SWITCHED || !m->done_loaded || m->finishing || m->closing ||
        m->fenced) {
        return;
    }
    if (m->arcs_done == m->diff.narcs) {
        if (m->pass == 1 && m->diff.narcs > 0) {
            second_pass(m);
        } else {
            /* Every arc is done twice: the closing pass lists each source
             * for the keys the index did not know (closing.c). */
            if (m->pass == 2 && !closing_begin(m)) {
                return;
            }
            if (closing_pump(m) && m->inflight == 0 && doubts_pump(m)) {
                /* Client commands still running need not end first: their
                 * switched rules are a neighbour of the stable new ring. */
                mig_finish(m);
            }
            return;
        }
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
        if (a->exhausted && a->failed > 0) {
            /* Moves failed (a server unreachable?): list what is left again
             * after a pause, for as long as it takes; moved keys have left
             * the set already. */
            a->passes++;
            a->failed = 0;
            a->exhausted = false;
            a->cursor = m->diff.arcs[i].first;
            arc_free_seen(a);
            a->backoff_ms = a->backoff_ms ? a->backoff_ms * 2 : MIG_ARC_RETRY_MIN_MS;
            if (a->backoff_ms > MIG_ARC_RETRY_MAX_MS) {
                a->backoff_ms = MIG_ARC_RETRY_MAX_MS;
            }
            a->retry_at = now_ms(m) + a->backoff_ms;
        }
        if (a->exhausted) {
            arc_done(m, i);
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
        char from[1024], lo[16], hi[16], count[16];
        uint32_t batch = limit - m->inflight - m->reserved;
        if (batch > MIG_LIST_BATCH) {
            batch = MIG_LIST_BATCH;
        }
        /* ZRANGEBYSCORE over every set of the v-node, both layouts, in
         * one script: a split between two pages moves nothing past us
         * (layout.c). */
        const char *arg[] = { from, lo, hi, count };
        size_t len[] = {
            idx_vnode_key(m->prefix, m->from, m->diff.arcs[i].from, from, sizeof(from)),
            (size_t)snprintf(lo, sizeof(lo), "%u", a->cursor > m->diff.arcs[i].first ?
                             a->cursor : m->diff.arcs[i].first),
            (size_t)snprintf(hi, sizeof(hi), "%u", m->diff.arcs[i].last),
            (size_t)snprintf(count, sizeof(count), "%u", batch + a->nseen),
        };
        lc->m = m;
        lc->arc = i;
        lc->batch = batch;
        if (!mig_index(m, on_list, lc, "range", 4, arg, len)) {
            free(lc);           /* not sent: the next pump lists it */
            return;
        }
        a->listing = true;
        m->reserved += batch;
    }
}
