/*
 * request.c — requests and their fragments (request.h).
 *
 * Design notes
 * - A request's reply goes straight to the client's output when the request
 *   is the oldest one the client waits for (its owner's `out` says so);
 *   otherwise it collects in request.reply until the requests before it are
 *   answered (request_frag_sink).
 * - A multi-get spread over several backends sends each its share; each
 *   share's VALUE blocks collect in its own buffer in the order the backend
 *   returns them (the order asked), and when all shares are in, the blocks
 *   are taken from the front of those buffers in the client's key order
 *   (request_assemble). A share too long for one line (memcached's 2048
 *   bytes) is sent as several lines, each its own fragment answered by its
 *   own END; a single-backend get split so is assembled the same way.
 * - The transport never looks into a request: it asks request_frag_ops
 *   which key a VALUE answers and hands over each block and each last line.
 */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cmd.h"
#include "index.h"
#include "mem.h"
#include "meta.h"
#include "pool.h"
#include "request.h"

struct request *request_new(struct pool *p, struct client *c,
                            const struct request_owner_ops *oops,
                            enum proto_cmd cmd, uint32_t nfrags)
{
    struct request *r = calloc(1, sizeof(*r));

    if (r == NULL) {
        return NULL;
    }
    r->cmd = cmd;
    r->nfrags = r->pending = nfrags;
    if (nfrags <= 1) {
        r->frags = &r->frag1;
    } else if ((r->frags = calloc(nfrags, sizeof(*r->frags))) == NULL) {
        free(r);
        return NULL;
    }
    for (uint32_t i = 0; i < nfrags; i++) {
        r->frags[i].req = r;
        r->frags[i].ops = &request_frag_ops;
        r->frags[i].cmd = cmd;
    }
    r->pool = p;
    r->stats = p->stats;
    r->client = c;
    r->owner = c;
    r->oops = oops;
    if (nfrags > 0) {
        r->counted = true;
        r->gen = pool_inflight_begin(p);
    }
    return r;
}

void request_hold(struct request *r, size_t sent)
{
    r->sent += sent;
    if (r->owner != NULL) {
        r->oops->budget(r, 0, (ptrdiff_t)sent);
    }
}

/* A reply or share buffer changed: keep the owner's count (client.c). */
static void request_buf_cb(struct evbuffer *b, const struct evbuffer_cb_info *info,
                           void *arg)
{
    struct request *r = arg;
    ptrdiff_t delta = (ptrdiff_t)info->n_added - (ptrdiff_t)info->n_deleted;

    (void)b;
    r->held += (size_t)delta;
    if (r->owner != NULL && delta != 0) {
        r->oops->budget(r, delta, 0);
    }
}

/* A buffer of the request's own, counted in its owner's budget. Without
 * it the reply stream would be out of step: no way out but to stop. */
static struct evbuffer *request_buf_new(struct request *r)
{
    struct evbuffer *b = rp_xevbuffer_new("a request's reply buffer");

    evbuffer_add_cb(b, request_buf_cb, r);
    return b;
}

void request_free(struct request *r)
{
    if (r == NULL) {
        return;
    }
    if (r->counted) {
        pool_inflight_end(r->pool, r->gen);
    }
    if (r->owner != NULL) {
        r->oops->budget(r, -(ptrdiff_t)r->held, -(ptrdiff_t)r->sent);
        r->oops->release(r);
        r->owner = NULL;
    }
    for (uint32_t i = 0; r->frags != NULL && i < r->nfrags; i++) {
        assert(r->frags[i].conn == NULL);   /* off every FIFO */
        if (r->frags[i].buf != NULL) {
            evbuffer_free(r->frags[i].buf);
        }
    }
    if (r->frags != &r->frag1) {
        free(r->frags);
    }
    if (r->reply != NULL) {
        evbuffer_free(r->reply);
    }
    free(r->error_line);
    free(r->keys);
    free(r->key_off);
    free(r->key_frag);
    free(r->key_hit);
    free(r);
}

void request_orphan(struct request *r)
{
    r->client = NULL;
    if (r->done) {
        request_free(r);
    }
}

/* Where the request's reply bytes go now. */
static struct evbuffer *request_sink(struct request *r)
{
    if (r->client == NULL || r->quiet) {
        return NULL;
    }
    struct evbuffer *out = r->oops->out(r);
    if (out != NULL) {
        return out;
    }
    if (r->reply == NULL) {
        r->reply = request_buf_new(r);
    }
    return r->reply;
}

struct evbuffer *request_frag_sink(struct frag *f)
{
    struct request *r = f->req;

    if (r->nfrags <= 1) {
        return request_sink(r);
    }
    if (!f->retrieval || r->client == NULL) {
        return NULL;    /* a fan-out's replies are summed up at the end */
    }
    if (f->buf == NULL) {
        f->buf = request_buf_new(r);
    }
    return f->buf;
}

void request_reply(struct request *r, const char *data, size_t len)
{
    struct evbuffer *sink = request_sink(r);

    if (sink != NULL) {
        evbuffer_add(sink, data, len);
    }
}

void request_reply_line(struct request *r, const char *line)
{
    struct evbuffer *sink = request_sink(r);

    if (sink != NULL) {
        evbuffer_add_printf(sink, "%s\r\n", line);
    }
}

void request_set_keys(struct request *r, const struct proto_req *req, uint32_t *key_frag)
{
    struct proto_key_iter it;
    const char *k;
    uint32_t klen, i, off = 0;

    /* r already counts in its pool's routing generation: it cannot be
     * unwound. The sizes are bounded by the client's line budget. */
    r->keys = rp_xmalloc(req->keys_len + req->nkeys, "a multi-get's keys");
    r->key_off = rp_xmalloc((req->nkeys + 1) * sizeof(*r->key_off), "a multi-get's keys");
    r->key_hit = rp_xcalloc(req->nkeys, sizeof(*r->key_hit), "a multi-get's hits");
    r->key_frag = key_frag;
    r->nkeys = req->nkeys;
    proto_keys_begin(req, &it);
    for (i = 0; proto_keys_next(&it, &k, &klen); i++) {
        assert(i < r->nkeys);
        r->key_off[i] = off;
        memcpy(r->keys + off, k, klen);
        r->keys[off + klen] = '\0';
        off += klen + 1;
    }
    assert(i == r->nkeys);
    r->key_off[i] = off;
}

uint32_t request_split(struct pool *p, const struct proto_req *req, size_t head_len,
                       struct request_share *sh, uint32_t *key_frag, uint32_t *nmoving)
{
    uint32_t *fb = p->frag_of_backend;     /* backend slot -> its last line */
    uint32_t nfrags = 0, i, j, klen;
    struct proto_key_iter it;
    const char *k;

    *nmoving = 0;
    proto_keys_begin(req, &it);
    for (i = 0; proto_keys_next(&it, &k, &klen); i++) {
        struct backend *be;
        uint32_t h = pool_key_hash(p, k, klen);
        bool moving = pool_route(p, k, klen, h, &be) == ROUTE_MIGRATION;
        uint32_t b = pool_share_slot(p, be);
        j = moving ? FRAG_NONE : fb[b];
        if (j == FRAG_NONE ||
            (b != p->nbackends && sh[j].len + 1 + klen > PROTO_LINE_MAX)) {
            j = nfrags++;
            sh[j] = (struct request_share){
                .target = moving ? REQUEST_SHARE_MOVING | i : b, .hash = h,
                .len = (uint32_t)head_len + 2, .prev = moving ? FRAG_NONE : fb[b] };
            if (moving) {
                (*nmoving)++;
            } else {
                fb[b] = j;
            }
        }
        sh[j].len += 1 + klen;
        key_frag[i] = j;
    }
    /* The scratch table is left all FRAG_NONE for the next multi-get. */
    for (j = 0; j < nfrags; j++) {
        if (!(sh[j].target & REQUEST_SHARE_MOVING)) {
            fb[sh[j].target] = FRAG_NONE;
        }
    }
    return nfrags;
}

/* All shares of a multi-backend request are in: assemble its reply. */
static void request_assemble(struct request *r)
{
    struct evbuffer *sink = request_sink(r);

    if (sink == NULL) {
        return;
    }
    if (!r->frags[0].retrieval || r->error_line != NULL) {
        evbuffer_add_printf(sink, "%s\r\n", r->error_line ? r->error_line : "OK");
        return;
    }
    for (uint32_t i = 0; i < r->nkeys; i++) {
        if (r->key_hit[i] > 0) {
            assert(r->key_frag[i] < r->nfrags);
            evbuffer_remove_buffer(r->frags[r->key_frag[i]].buf, sink, r->key_hit[i]);
        }
    }
    evbuffer_add(sink, "END\r\n", 5);
}

void request_frag_done(struct frag *f)
{
    struct request *r = f->req;

    assert(r->pending > 0 && f->conn == NULL);
    if (--r->pending > 0) {
        return;
    }
    r->done = true;
    if (r->counted) {
        r->counted = false;
        pool_inflight_end(r->pool, r->gen);
    }
    if (r->frags[0].retrieval) {
        r->stats[STAT_get_hits] += r->hits;
        if (r->nkeys > r->hits) {
            r->stats[STAT_get_misses] += r->nkeys - r->hits;
        }
    }
    if (r->nfrags > 1) {
        request_assemble(r);
    }
    if (r->flushes_index && r->error_line == NULL && r->pool->idx != NULL) {
        idx_pool_flushed(r->pool->idx);
    }
    if (r->client == NULL) {
        request_free(r);    /* noreply, or its client is gone */
        return;
    }
    r->oops->done(r);
}

void request_fail_retrieval(struct request *r, const char *line)
{
    if (r->error_line == NULL) {
        r->error_line = rp_xstrdup(line, "a request's error line");
    }
}

void request_frag_fail(struct frag *f, const char *line)
{
    struct request *r = f->req;
    struct evbuffer *sink;

    f->failed = true;
    r->flushes_index = false;
    if (f->meta_answered) {
        /* A quiet meta command already answered: its client has the one
         * reply it is owed; only the MN that ended it was lost. */
    } else if (r->nfrags == 1) {
        if ((sink = request_frag_sink(f)) != NULL) {
            evbuffer_add_printf(sink, "%s\r\n", line);
        }
    } else if (r->error_line == NULL) {
        /* A multi-get too: a miss would claim the key is not cached. */
        r->error_line = rp_xstrdup(line, "a request's error line");
    }
    request_frag_done(f);
}

void request_fail_unsent(struct request *r, uint32_t n, const char *line)
{
    for (uint32_t i = 0; n > 0 && i < r->nfrags; i++) {
        if (r->frags[i].failed && r->frags[i].conn == NULL) {
            n--;
            request_frag_fail(&r->frags[i], line);  /* the last one may free r */
        }
    }
}

void request_value(struct frag *f, uint32_t key, const char *kname, size_t klen,
                   uint32_t flags, bool with_cas, uint64_t cas,
                   const char *value, size_t vlen)
{
    struct request *r = f->req;
    struct evbuffer *sink = request_frag_sink(f);

    r->hits++;
    if (sink == NULL) {
        return;
    }
    size_t before = evbuffer_get_length(sink);
    evbuffer_add_printf(sink, "VALUE %.*s %llu %zu", (int)klen, kname,
                        (unsigned long long)flags, vlen);
    if (with_cas) {
        evbuffer_add_printf(sink, " %llu", (unsigned long long)cas);
    }
    evbuffer_add(sink, "\r\n", 2);
    evbuffer_add(sink, value, vlen);
    evbuffer_add(sink, "\r\n", 2);
    if (r->nfrags > 1) {
        assert(key < r->nkeys);
        r->key_hit[key] = (uint32_t)(evbuffer_get_length(sink) - before);
    }
}

/* --- what the transport calls (frag_ops) ------------------------------------ */

/*
 * Find the request key a VALUE line answers, from the fragment's cursor on
 * (frag_take_value moves the cursor past it once the block is delivered):
 * a backend answers the keys of a line in the order asked, skipping misses,
 * so each VALUE must name a later key of this fragment than the last one.
 * A request without key_off has one key (r->keys, r->keylen); without
 * key_frag, every key is its one fragment's.
 */
static int frag_match_key(struct frag *f, const struct proto_rsp *rsp)
{
    struct request *r = f->req;
    uint32_t idx = (uint32_t)(f - r->frags);

    for (uint32_t i = f->cursor; i < r->nkeys; i++) {
        if (r->key_frag != NULL && r->key_frag[i] != idx) {
            continue;
        }
        const char *k = r->key_off != NULL ? r->keys + r->key_off[i] : r->keys;
        uint32_t klen = r->key_off != NULL ? r->key_off[i + 1] - r->key_off[i] - 1 :
                        r->keylen;
        if (k != NULL && klen == rsp->keylen && memcmp(k, rsp->key, klen) == 0) {
            return (int)i;
        }
    }
    return -1;
}

/* Move n bytes of reply from the connection to where the fragment wants them. */
static void frag_deliver(struct frag *f, struct evbuffer *in, size_t n)
{
    struct evbuffer *sink = request_frag_sink(f);

    if (sink != NULL) {
        evbuffer_remove_buffer(in, sink, n);
    } else {
        evbuffer_drain(in, n);
    }
}

static void frag_take_value(struct frag *f, uint32_t key, struct evbuffer *in, size_t n)
{
    struct request *r = f->req;

    assert(key < r->nkeys && key >= f->cursor);
    f->cursor = key + 1;
    r->hits++;
    if (r->nfrags > 1) {
        r->key_hit[key] = (uint32_t)n;
    }
    frag_deliver(f, in, n);
}

/* What a backend confirmed does to the pool's index (cmd.h: cmd_index). */
static void request_index_effect(struct request *r, enum proto_rsp_kind kind)
{
    if (!pool_indexed(r->pool)) {
        return;
    }
    /* A delete leaves its entry: removals by clients could reach Redis after
     * a later store of the same key (through another proxy, or a queue that
     * waited), and an unindexed key would not move. The mover drops entries
     * of keys it finds gone (docs/ARCHITECTURE.md, "The index"). */
    switch (cmd_info(r->cmd)->index) {
    case CMD_INDEX_ADD:
        if (kind == PROTO_RSP_STORED) {
            pool_index_stored(r->pool, r->keys, r->keylen, r->hash);
        }
        break;
    case CMD_INDEX_FLUSH:
        if (kind != PROTO_RSP_OK) {
            r->flushes_index = false;
        }
        break;
    case CMD_INDEX_NONE:
        break;
    }
}

static void frag_take_end(struct frag *f, const struct proto_rsp *rsp, struct evbuffer *in,
                          size_t total, const char *line, size_t len)
{
    struct request *r = f->req;

    request_index_effect(r, rsp->kind);
    if (f->retrieval && r->nfrags > 1) {
        /* A share of a multi-get: END or an error both end it; an error
         * leaves its keys as misses. */
        evbuffer_drain(in, total);
        f->failed = rsp->kind != PROTO_RSP_END;
    } else {
        /* The line is copied first: delivering it may move it. */
        if (r->nfrags > 1 && rsp->kind != PROTO_RSP_OK && r->error_line == NULL) {
            r->error_line = strndup(line, len);
            if (r->error_line == NULL) {
                rp_oom("a request's error line", len + 1);
            }
        }
        frag_deliver(f, in, total);
    }
    request_frag_done(f);
}

/*
 * A meta command's reply (cmd.h: cmd_meta_table): passed through as the
 * backend wrote it. Its index effect once complete: a reply kind that
 * stores, or under q an empty answer standing for one (meta_quiet_drops).
 */
static void frag_take_meta(struct frag *f, int kind, struct evbuffer *in, size_t n,
                           bool last)
{
    struct request *r = f->req;

    if (n > 0) {
        frag_deliver(f, in, n);
    }
    if (!last) {
        f->meta_kind = (uint8_t)kind;   /* the reply before the fence's MN */
        return;
    }
    uint32_t got = kind >= 0 ? 1u << kind :
                   f->meta_answered ? 1u << f->meta_kind : r->meta_quiet_drops;
    if ((got & r->meta_stores) && pool_indexed(r->pool) && r->keys != NULL) {
        pool_index_stored(r->pool, r->keys, r->keylen, r->hash);
    }
    if (r->meta_read) {
        r->stats[STAT_get_hits] += (got & (META_RSP_BIT(VA) | META_RSP_BIT(HD))) != 0;
        r->stats[STAT_get_misses] += (got & META_RSP_BIT(EN)) != 0;
    }
    request_frag_done(f);
}

const struct frag_ops request_frag_ops = {
    .match = frag_match_key,
    .value = frag_take_value,
    .end = frag_take_end,
    .meta = frag_take_meta,
    .fail = request_frag_fail,
};
