/*
 * router.c — pools at run time and the life of a request.
 *
 * Design notes
 * - Routing uses `route`, the data ring minus ejected servers (twemproxy's
 *   auto_eject_hosts); when nothing is ejected it is the data ring itself.
 *   Ejection never changes `ring`, which says where the data lives.
 * - A request's reply goes straight to the client's output when the request
 *   is the oldest one the client waits for; otherwise it collects in
 *   request.reply until the requests before it are answered (frag_sink).
 * - A multi-get spread over several backends sends each its share; each
 *   share's VALUE blocks collect in its own buffer in the order the backend
 *   returns them (the order asked), and when all shares are in, the blocks
 *   are taken from the front of those buffers in the client's key order.
 *   A share too long for one line (memcached's 2048 bytes) is sent as
 *   several lines, each its own fragment answered by its own END; a
 *   single-backend get split so is assembled the same way.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <event2/listener.h>

#include "adopt.h"
#include "backend.h"
#include "client.h"
#include "index.h"
#include "migrate.h"
#include "log.h"
#include "router.h"
#include "sweep.h"

#define BACKEND_STATE_NAME(e, name) [BACKEND_##e] = name,
const char *const backend_state_names[BACKEND_STATE_COUNT] = {
    BACKEND_STATE_CODEC(BACKEND_STATE_NAME)
};
#undef BACKEND_STATE_NAME

uint64_t worker_now_ms(struct worker *w)
{
    struct timeval tv;

    event_base_gettimeofday_cached(w->base, &tv);
    return (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
}

/* --- pools -------------------------------------------------------------- */

/* The sweeper removed a key's entry: the index filter forgets the key. */
static void pool_sweep_forget(void *arg, const char *key, size_t len)
{
    struct pool *p = arg;

    idx_forget(p->idx, key, len);
}

int pool_init(struct pool *p, struct worker *w, struct conf_pool *conf, struct ring *ring,
              char *err, size_t errlen)
{
    memset(p, 0, sizeof(*p));
    p->w = w;
    p->conf = conf;
    TAILQ_INIT(&p->clients);
    if ((p->name = strdup(conf->name)) == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    struct ring *r = ring != NULL ? ring : conf_pool_ring(conf, err, errlen);
    struct backend **map = r ? pool_ring_backends(p, r, err, errlen) : NULL;
    if (map == NULL) {
        ring_unref(r);
        return -1;
    }
    pool_set_ring(p, r, map);
    struct sweep_opts so = { .pool = p->name, .index = &conf->index, .background = true,
                             .forget = pool_sweep_forget, .forget_arg = p };
    if (conf->index.enabled &&
        ((p->idx = idx_new(w->base, p->name, &conf->index, p->ring)) == NULL ||
         (p->mig = mig_new(p, pool_ready)) == NULL ||
         (p->adopt = adopt_new(p)) == NULL ||
         (so.id = mig_id(p->mig), p->sweep = sweep_new(w->base, &so)) == NULL)) {
        snprintf(err, errlen, "out of memory starting the index writer");
        return -1;
    }
    p->ready = p->mig == NULL;
    if (conf->preconnect) {
        for (uint32_t i = 0; i < p->nbackends; i++) {
            backend_preconnect(p->backends[i]);
        }
    }
    return 0;
}

void pool_sweep_tick(struct pool *p, uint64_t now_ms)
{
    bool leaving = p->closing || p->w->stopping;
    struct sweep_env env = {
        .may_run = !leaving && p->mig != NULL && mig_get_state(p->mig) == MIG_IDLE,
        .local = p->ring,
        .rate = p->conf->index.sweep_rate,
        .timeout_ms = p->conf->timeout > 0 ? (uint32_t)p->conf->timeout : 0,
        .liveness_ms = (uint32_t)p->conf->migration.liveness,
        .follow_unknown = p->conf->migration.follow_unknown,
        .pass_min_ms = (uint32_t)p->conf->index.sweep_interval,
    };

    if (p->sweep == NULL) {
        return;
    }
    if (leaving) {
        sweep_leave(p->sweep);
    }
    sweep_tick(p->sweep, now_ms, &env);
}

void pool_ready(struct pool *p)
{
    p->ready = true;
    if (p->listener != NULL) {
        evconnlistener_enable(p->listener);
    }
}

void pool_close(struct pool *p)
{
    struct client *c;

    while ((c = TAILQ_FIRST(&p->clients)) != NULL) {
        client_close(c, "shutdown");
    }
    adopt_free(p->adopt);   /* reads the migration's state */
    p->adopt = NULL;
    mig_free(p->mig);       /* before the backends its moves use */
    p->mig = NULL;
    sweep_free(p->sweep);
    p->sweep = NULL;
    for (uint32_t i = 0; i < p->nbackends; i++) {
        backend_close(p->backends[i]);     /* frees it (defer.h) */
    }
    free(p->backends);
    idx_free(p->idx);
    p->idx = NULL;
    free(p->ring_be);
    free(p->route_be);
    free(p->frag_of_backend);
    ring_unref(p->route);
    ring_unref(p->ring);
    free(p->name);
    p->backends = NULL;
    p->route = p->ring = NULL;
}

/* A new backend for a server, appended to the pool's list. */
static struct backend *pool_add_backend(struct pool *p, const char *identity,
                                        const char *addr, char *err, size_t errlen)
{
    if (p->nbackends == p->cap_backends) {
        uint32_t cap = p->cap_backends ? p->cap_backends * 2 : 8;
        struct backend **bs = realloc(p->backends, cap * sizeof(*bs));
        uint32_t *fb = realloc(p->frag_of_backend, (cap + 1) * sizeof(*fb));
        if (bs != NULL) {
            p->backends = bs;
        }
        if (fb != NULL) {
            p->frag_of_backend = fb;
        }
        if (bs == NULL || fb == NULL) {
            snprintf(err, errlen, "out of memory");
            return NULL;
        }
        for (uint32_t i = p->cap_backends; i <= cap; i++) {
            p->frag_of_backend[i] = FRAG_NONE;
        }
        p->cap_backends = cap;
    }
    struct backend *be = calloc(1, sizeof(*be));
    if (be == NULL || backend_init(be, p, p->nbackends, identity, addr, err, errlen) != 0) {
        if (be != NULL) {
            backend_close(be);      /* frees it (defer.h) */
        }
        return NULL;
    }
    p->backends[p->nbackends++] = be;
    return be;
}

static uint32_t server_slot_hash(const char *identity, const char *addr)
{
    uint32_t h = 2166136261u;       /* FNV-1a over "identity\0addr" */

    for (const char *s = identity; *s != '\0'; s++) {
        h = (h ^ (unsigned char)*s) * 16777619u;
    }
    h = (h ^ 0) * 16777619u;
    for (const char *s = addr; *s != '\0'; s++) {
        h = (h ^ (unsigned char)*s) * 16777619u;
    }
    return h;
}

struct backend **pool_ring_backends(struct pool *p, const struct ring *r,
                                    char *err, size_t errlen)
{
    /* An open-addressing table of the backends, existing and new, by
     * identity and address: at most half full. */
    uint32_t cap = 16;
    while (cap < 2 * (p->nbackends + r->nservers)) {
        cap *= 2;
    }
    struct backend **map = calloc(r->nservers, sizeof(*map));
    struct backend **table = calloc(cap, sizeof(*table));

    if (map == NULL || table == NULL) {
        free(map);
        free(table);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    for (uint32_t i = 0; i < p->nbackends; i++) {
        struct backend *be = p->backends[i];
        uint32_t h = server_slot_hash(be->identity, be->addr.text) & (cap - 1);
        while (table[h] != NULL) {
            h = (h + 1) & (cap - 1);
        }
        table[h] = be;
    }
    for (uint32_t i = 0; i < r->nservers; i++) {
        const char *id = r->servers[i].identity, *addr = r->servers[i].addr;
        uint32_t h = server_slot_hash(id, addr) & (cap - 1);
        struct backend *be;
        /* The first backend of that identity and address, as before: an
         * equal one added later (never, today) would not be chosen. */
        while ((be = table[h]) != NULL &&
               (strcmp(be->identity, id) != 0 || strcmp(be->addr.text, addr) != 0)) {
            h = (h + 1) & (cap - 1);
        }
        if (be == NULL && (be = table[h] = pool_add_backend(p, id, addr, err, errlen)) == NULL) {
            free(map);
            free(table);
            return NULL;
        }
        map[i] = be;
        be->retiring = false;
    }
    free(table);
    return map;
}

void pool_set_ring(struct pool *p, struct ring *r, struct backend **ring_be)
{
    ring_unref(p->ring);
    free(p->ring_be);
    p->ring = r;
    p->ring_be = ring_be;
    for (uint32_t i = 0; i < p->nbackends; i++) {
        if (p->backends[i]->state == BACKEND_EJECTED) {
            p->backends[i]->state = BACKEND_DOWN;   /* ejection is per ring */
        }
    }
    pool_eject(p, NULL, false);
}

/* Is this backend in the data ring, or the source of a migration? */
static bool pool_uses_backend(const struct pool *p, const struct backend *be)
{
    for (uint32_t i = 0; i < p->ring->nservers; i++) {
        if (p->ring_be[i] == be) {
            return true;
        }
    }
    return p->mig != NULL && mig_uses_backend(p->mig, be);
}

void pool_retire_backends(struct pool *p)
{
    for (uint32_t i = 0; i < p->nbackends;) {
        struct backend *be = p->backends[i];
        if (pool_uses_backend(p, be)) {
            i++;
            continue;
        }
        if (!be->retiring) {
            log_notice("router", "%s: server %s %s left the ring; closing it once "
                       "idle", p->name, be->identity, be->addr.text);
            be->retiring = true;
        }
        if (!backend_idle(be)) {
            i++;
            continue;
        }
        backend_close(be);          /* frees it (defer.h) */
        p->backends[i] = p->backends[--p->nbackends];
        if (i < p->nbackends) {
            p->backends[i]->slot = i;
        }
    }
}

enum route pool_route(struct pool *p, const char *key, size_t len, struct backend **be)
{
    uint32_t h = ring_key_hash(p->ring, key, len);

    *be = NULL;
    if (p->mig != NULL && mig_routes_key(p->mig, key, len, h)) {
        return ROUTE_MIGRATION;
    }
    if (p->route == NULL) {
        return ROUTE_NONE;  /* every server is ejected */
    }
    *be = p->route_be[ring_server_of(p->route, h)];
    return ROUTE_BACKEND;
}

/*
 * Rebuild the routing ring from the data ring's servers that are not ejected
 * (be: the backend whose state changes, or NULL to just rebuild).
 */
void pool_eject(struct pool *p, struct backend *be, bool eject)
{
    const struct ring *data = p->ring;
    struct ring_server_spec *specs = calloc(data->nservers, sizeof(*specs));
    struct backend **route_be = calloc(data->nservers, sizeof(*route_be));
    uint32_t n = 0;
    char err[256];

    if (be != NULL) {
        be->state = eject ? BACKEND_EJECTED : BACKEND_UP;
    }
    if (specs == NULL || route_be == NULL) {
        free(specs);
        free(route_be);
        return;
    }
    for (uint32_t i = 0; i < data->nservers; i++) {
        if (p->ring_be[i]->state == BACKEND_EJECTED) {
            continue;
        }
        const struct ring_server *s = &data->servers[i];
        route_be[n] = p->ring_be[i];
        specs[n++] = (struct ring_server_spec){ .identity = s->identity,
            .addr = s->addr, .weight = s->weight };
    }
    struct ring *route = NULL;
    if (n == data->nservers) {
        route = ring_ref(p->ring);
    } else if (n > 0) {
        struct ring_params params = { .compat = data->compat, .hash = data->hash,
            .has_tag = data->has_tag, .servers = specs, .nservers = n };
        memcpy(params.tag, data->tag, 2);
        route = ring_build(&params, err, sizeof(err));
        if (route == NULL) {
            log_error("router", "%s: cannot rebuild the routing ring: %s", p->name, err);
            free(specs);
            free(route_be);
            return;
        }
    }
    free(specs);
    ring_unref(p->route);
    free(p->route_be);
    p->route = route;
    p->route_be = route_be;
    if (n < data->nservers || be != NULL) {
        log_notice("router", "%s: routing over %u of %u servers", p->name, n,
                   data->nservers);
    }
}

/* --- routing generations ------------------------------------------------ */

uint32_t pool_inflight_begin(struct pool *p)
{
    p->inflight_now++;
    return p->gen;
}

void pool_inflight_end(struct pool *p, uint32_t gen)
{
    if (gen == p->gen) {
        p->inflight_now--;
    } else {
        p->inflight_old--;
    }
}

void pool_new_generation(struct pool *p)
{
    p->inflight_old += p->inflight_now;
    p->inflight_now = 0;
    p->gen++;
}

/* --- requests ------------------------------------------------------------ */

struct request *request_new(struct client *c, enum proto_cmd cmd, uint32_t nfrags)
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
    }
    r->pool = c->pool;
    r->client = c;
    r->owner = c;
    if (nfrags > 0) {
        r->counted = true;
        r->gen = pool_inflight_begin(c->pool);
    }
    TAILQ_INSERT_TAIL(&c->reqs, r, link);
    c->nreqs++;
    return r;
}

void request_detach(struct request *r)
{
    struct client *c = r->client;

    if (c != NULL) {
        TAILQ_REMOVE(&c->reqs, r, link);
        c->nreqs--;
        r->client = NULL;
        r->detached = true;
        TAILQ_INSERT_TAIL(&c->quiet, r, link);
        c->nquiet++;
    }
}

void request_hold(struct request *r, size_t sent)
{
    r->sent += sent;
    if (r->owner != NULL) {
        r->owner->sent += sent;
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
        client_held(r->owner, delta);
    }
}

/* A buffer of the request's own, counted in its owner's budget. */
static struct evbuffer *request_buf_new(struct request *r)
{
    struct evbuffer *b = evbuffer_new();

    if (b != NULL) {
        evbuffer_add_cb(b, request_buf_cb, r);
    }
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
    struct client *c = r->owner;
    if (c != NULL) {
        if (r->detached) {
            TAILQ_REMOVE(&c->quiet, r, link);
            c->nquiet--;
        }
        c->sent -= r->sent;
        client_held(c, -(ptrdiff_t)r->held);
        r->owner = NULL;
    }
    for (uint32_t i = 0; r->frags != NULL && i < r->nfrags; i++) {
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

static bool request_is_head(const struct request *r)
{
    return r->client != NULL && TAILQ_FIRST(&r->client->reqs) == r;
}

/* Where the request's reply bytes go now. */
static struct evbuffer *request_sink(struct request *r)
{
    if (r->client == NULL || r->quiet) {
        return NULL;
    }
    if (request_is_head(r)) {
        client_mark_dirty(r->client);
        return r->client->out;
    }
    if (r->reply == NULL) {
        r->reply = request_buf_new(r);
    }
    return r->reply;
}

struct evbuffer *frag_sink(struct frag *f)
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
            evbuffer_remove_buffer(r->frags[r->key_frag[i]].buf, sink, r->key_hit[i]);
        }
    }
    evbuffer_add(sink, "END\r\n", 5);
}

void request_frag_done(struct frag *f)
{
    struct request *r = f->req;

    if (--r->pending > 0) {
        return;
    }
    r->done = true;
    if (r->counted) {
        r->counted = false;
        pool_inflight_end(r->pool, r->gen);
    }
    if (r->frags[0].retrieval) {
        struct pool *p = r->pool;
        p->stats[STAT_get_hits] += r->hits;
        if (r->nkeys > r->hits) {
            p->stats[STAT_get_misses] += r->nkeys - r->hits;
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
    client_advance(r->client);
}

void request_fail_retrieval(struct request *r, const char *line)
{
    if (r->error_line == NULL) {
        r->error_line = strdup(line);
    }
}

void frag_fail(struct frag *f, const char *line)
{
    struct request *r = f->req;
    struct evbuffer *sink;

    f->failed = true;
    r->flushes_index = false;
    if (r->nfrags == 1) {
        if ((sink = frag_sink(f)) != NULL) {
            evbuffer_add_printf(sink, "%s\r\n", line);
        }
    } else if (r->error_line == NULL) {
        /* A multi-get too: a miss would claim the key is not cached. */
        r->error_line = strdup(line);
    }
    request_frag_done(f);
}

void frags_fail_unsent(struct request *r, uint32_t n, const char *line)
{
    for (uint32_t i = 0; n > 0 && i < r->nfrags; i++) {
        if (r->frags[i].failed && r->frags[i].conn == NULL) {
            n--;
            frag_fail(&r->frags[i], line);  /* the last one may free r */
        }
    }
}
