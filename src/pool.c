/*
 * pool.c — pools at run time: backends, rings, routing, generations.
 *
 * Design notes
 * - Routing uses `route`, the data ring minus ejected servers (twemproxy's
 *   auto_eject_hosts); when nothing is ejected it is the data ring itself.
 *   Ejection never changes `ring`, which says where the data lives.
 * - Requests (request.c) count in the pool's routing generation from the
 *   moment they are routed until their last fragment is in.
 */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <event2/listener.h>

#include "adopt.h"
#include "backend.h"
#include "client.h"
#include "clock.h"
#include "hub.h"
#include "mem.h"
#include "index.h"
#include "migrate.h"
#include "log.h"
#include "pool.h"
#include "sweep.h"
#include "resolve.h"

/* Monotonic (clock.h): every use subtracts two readings. */
uint64_t worker_now_ms(struct worker *w)
{
    (void)w;
    return rp_clock_ms();
}

/* --- pools -------------------------------------------------------------- */

/* The sweeper removed a key's entry: the index filter forgets the key. */
static void pool_sweep_forget(void *arg, const char *key, size_t len)
{
    struct pool *p = arg;

    idx_forget(p->idx, key, len);
}

static void pool_hub_home_cb(evutil_socket_t fd, short what, void *arg);
static void pool_hub_take_index(struct pool *p);
static void pool_hub_copy_cb(evutil_socket_t fd, short what, void *arg);

/* A copy of an indexed pool on a request worker (hub.h): no index, no
 * migration; its link to the home thread, and the routing it follows. */
static int pool_init_copy(struct pool *p, struct hub *hub, char *err, size_t errlen)
{
    p->hub = hub_ref(hub);
    p->hub_fd = -1;
    if ((p->index_out = evbuffer_new()) == NULL ||
        (p->link = calloc(1, sizeof(*p->link))) == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (backend_init_link(p->link, p, hub_link(hub), err, errlen) != 0) {
        return -1;
    }
    if ((p->hub_fd = hub_attach(hub, p->w->id)) < 0 ||
        (p->hub_ev = event_new(p->w->base, p->hub_fd, EV_READ | EV_PERSIST,
                               pool_hub_copy_cb, p)) == NULL) {
        snprintf(err, errlen, "out of memory or descriptors for the home thread's link");
        return -1;
    }
    event_add(p->hub_ev, NULL);
    return 0;
}

/* The home pool of an indexed pool served by several threads. */
static int pool_init_home(struct pool *p, struct hub *hub, char *err, size_t errlen)
{
    p->hub = hub_ref(hub);
    p->hub_fd = -1;
    if ((p->index_out = evbuffer_new()) == NULL ||
        (p->hub_ev = event_new(p->w->base, hub_home_fd(hub), EV_READ | EV_PERSIST,
                               pool_hub_home_cb, p)) == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    event_add(p->hub_ev, NULL);
    return 0;
}

int pool_init(struct pool *p, struct worker *w, struct conf_pool *conf, struct ring *ring,
              struct hub *hub, char *err, size_t errlen)
{
    bool copy = hub != NULL && w->id != 0;

    memset(p, 0, sizeof(*p));
    p->w = w;
    p->conf = conf;
    p->hub_fd = -1;
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
                             .forget = pool_sweep_forget, .forget_arg = p,
                             .dns = w->dns != NULL ? resolver_evdns(w->dns) : NULL };
    if (copy) {
        /* no index, no migration; it serves once hub_route says ready */
        if (pool_init_copy(p, hub, err, errlen) != 0) {
            return -1;
        }
    } else if (hub != NULL && pool_init_home(p, hub, err, errlen) != 0) {
        return -1;
    } else if (conf->index.enabled &&
        ((p->idx = idx_new(w->base, p->name, &conf->index, p->ring)) == NULL ||
         (p->mig = mig_new(p, pool_ready)) == NULL ||
         (p->adopt = adopt_new(p)) == NULL ||
         (so.id = mig_id(p->mig), p->sweep = sweep_new(w->base, &so)) == NULL)) {
        snprintf(err, errlen, "out of memory starting the index writer");
        return -1;
    }
    p->ready = p->mig == NULL && !copy;
    if (conf->preconnect) {   /* a copy's own backend connections too */
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
    if (p->link_listener != NULL) {
        evconnlistener_free(p->link_listener);
        p->link_listener = NULL;
    }
    if (p->hub_ev != NULL) {
        event_free(p->hub_ev);
        p->hub_ev = NULL;
    }
    if (p->link != NULL) {
        hub_detach(p->hub, p->w->id, p->hub_fd);
        p->hub_fd = -1;
        backend_close(p->link);             /* frees it (defer.h) */
        p->link = NULL;
    }
    if (p->index_out != NULL) {
        evbuffer_free(p->index_out);
        p->index_out = NULL;
    }
    ring_unref(p->hub_route.ring);
    p->hub_route.ring = NULL;
    hub_unref(p->hub);
    p->hub = NULL;
    free(p->name);
    p->name = NULL;         /* closed: tstats_publish skips it */
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
        uint32_t *fb = realloc(p->frag_of_backend, (cap + 2) * sizeof(*fb));
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
        for (uint32_t i = p->cap_backends; i <= cap + 1; i++) {
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

/* Is this backend in the data ring (in_ring: by slot, from one pass over
 * the ring), or the source of a migration? */
static bool pool_uses_backend(const struct pool *p, const struct backend *be,
                              const bool *in_ring)
{
    return in_ring[be->slot] || (p->mig != NULL && mig_uses_backend(p->mig, be));
}

void pool_retire_backends(struct pool *p)
{
    /* One pass over the ring, not one per backend: with 4096 servers the
     * tick would otherwise compare 16 million pairs. */
    bool *in_ring = rp_xcalloc(p->nbackends ? p->nbackends : 1, sizeof(*in_ring),
                               "the backends in the ring");

    for (uint32_t i = 0; p->ring != NULL && i < p->ring->nservers; i++) {
        in_ring[p->ring_be[i]->slot] = true;
    }
    for (uint32_t i = 0; i < p->nbackends;) {
        struct backend *be = p->backends[i];
        if (pool_uses_backend(p, be, in_ring)) {
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
            in_ring[i] = in_ring[p->nbackends];
        }
    }
    free(in_ring);
}

uint32_t pool_key_hash(const struct pool *p, const char *key, size_t len)
{
    return ring_key_hash(p->ring, key, len);
}

enum route pool_route(struct pool *p, const char *key, size_t len, uint32_t h,
                      struct backend **be)
{
    *be = NULL;
    if (pool_forwards(p)) {
        *be = p->link;      /* the home thread routes it (hub.h) */
        return ROUTE_BACKEND;
    }
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
    /* Without them routing would silently keep an ejected server. */
    struct ring_server_spec *specs = rp_xcalloc(data->nservers, sizeof(*specs),
                                                "a routing ring's servers");
    struct backend **route_be = rp_xcalloc(data->nservers, sizeof(*route_be),
                                           "a routing ring's backends");
    uint32_t n = 0;
    char err[256];

    if (be != NULL) {
        be->state = eject ? BACKEND_EJECTED : BACKEND_UP;
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
        assert(p->inflight_now > 0);
        p->inflight_now--;
    } else {
        assert(p->inflight_old > 0);
        p->inflight_old--;
    }
}

void pool_new_generation(struct pool *p)
{
    p->inflight_old += p->inflight_now;
    p->inflight_now = 0;
    p->gen++;
}

bool pool_drained(struct pool *p)
{
    if (p->inflight_old != 0) {
        return false;
    }
    if (p->hub == NULL || p->link != NULL) {
        return true;
    }
    /* The copies must route by what this pool routes by now, and have
     * nothing in flight of before (docs/ARCHITECTURE.md, I2). */
    pool_hub_turn(p);
    if (!hub_settled(p->hub)) {
        return false;
    }
    /* A copy sends its index records before its acknowledgement: those of
     * what it routed before are in the hub now, and reach the writer before
     * the phase changes its ring (I7). */
    pool_hub_take_index(p);
    return true;
}

bool pool_fenced(struct pool *p)
{
    if (p->mig != NULL) {
        return mig_fenced(p->mig);
    }
    /* A copy forwarding everything leaves the fence to the home pool. */
    return p->link != NULL && p->hub_route.direct &&
           worker_now_ms(p->w) >= hub_fence_at(p->hub);
}

void pool_index_stored(struct pool *p, const char *key, size_t len, uint32_t hash)
{
    if (p->idx != NULL) {
        idx_key_stored(p->idx, key, len, hash);
    } else if (p->link != NULL) {
        hub_record_add(p->index_out, key, len, hash);
    }
}

/* --- an indexed pool on several threads (hub.h) ------------------------------ */

/* Home: the copies' index writes, into the writer in the order they came. */
static void pool_hub_take_index(struct pool *p)
{
    char key[PROTO_KEY_MAX];
    size_t len;
    uint32_t hash;
    uint64_t dropped = hub_take_index(p->hub, p->index_out);
    while (hub_record_next(p->index_out, key, &len, &hash)) {
        pool_index_stored(p, key, len, hash);
    }
    idx_count_dropped(p->idx, dropped);
}

static void pool_hub_home_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    pool_hub_take_index(arg);
}

/* Copy: the home pool published a new routing. Commands routed by the one
 * before must land before the copy acknowledges it (pool_hub_turn). */
static void pool_hub_copy_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pool *p = arg;
    char err[256];

    (void)fd, (void)what;
    if (!hub_read(p->hub, p->hub_fd, &p->hub_route)) {
        return;
    }
    if (p->hub_route.direct && p->hub_route.ring != p->ring) {
        struct backend **map = pool_ring_backends(p, p->hub_route.ring, err, sizeof(err));
        if (map == NULL) {
            /* Forward instead: correct, only slower. */
            log_error("router", "%s: thread %u: %s; handing commands to the home "
                      "thread", p->name, p->w->id, err);
            p->hub_route.direct = false;
        } else {
            pool_set_ring(p, ring_ref(p->hub_route.ring), map);
        }
    }
    pool_new_generation(p);
    p->hub_acking = true;
    if (p->hub_route.ready && !p->ready) {
        pool_ready(p);
    }
}

/* Home: give the copies this pool's `stats` lines. */
static void pool_hub_stats(struct pool *p)
{
    struct evbuffer *b = evbuffer_new();

    if (b != NULL) {
        pool_index_stats(p, b);
        hub_set_stats(p->hub, b);
        evbuffer_free(b);
    }
}

/* What a copy's `stats` must never show older than the home thread has
 * answered it: the migration's phase and state, the index's state and
 * health (the counters may be a tick old: pool_hub_tick). */
static uint32_t pool_hub_shape(const struct pool *p)
{
    uint32_t h = mig_shape(p->mig);

    if (p->idx != NULL) {
        h = h * 31 + (uint32_t)idx_get_state(p->idx);
        h = h * 31 + (uint32_t)idx_health(p->idx, IDX_CONN_COUNT, NULL);
    }
    return h;
}

void pool_hub_turn(struct pool *p)
{
    if (p->hub == NULL) {
        return;
    }
    if (p->link == NULL) {
        if (p->ready && (!p->hub_stats_sent || p->hub_shape != pool_hub_shape(p))) {
            /* Before the copies learn they may serve, and whenever the
             * migration's phase or state or the index's state or health
             * changes: a copy's `stats` never shows one older than the
             * home thread answered. */
            pool_hub_stats(p);
            p->hub_stats_sent = true;
            p->hub_shape = pool_hub_shape(p);
        }
        /* The fence first, so that a copy woken by the routing reads it at
         * once; but a fence lifted past now while the copies route
         * directly, or while a copy may still hold such a routing, is
         * lifted only once every copy has read the routing published
         * here (on later calls: the first after the publish finds it
         * forwarding). Else a copy let out before it read that routing
         * (the pool joined, while fenced, a resize already moving keys)
         * would route directly by the old ring and miss what moved
         * (docs/ARCHITECTURE.md, "Threads: indexed pools", I6). Until
         * then the copies stay fenced; each hands its commands to this
         * thread as soon as it reads the new routing. */
        uint64_t now = worker_now_ms(p->w), fence = mig_fence_at(p->mig);
        bool lifts = fence > now && hub_fence_at(p->hub) <= now;
        bool held = lifts && (hub_direct(p->hub) || !hub_seen(p->hub));
        if (!held) {
            hub_set_fence(p->hub, fence);
        }
        hub_publish(p->hub, p->ready, p->ready && !mig_active(p->mig), p->ring);
        if (held && hub_seen(p->hub)) {
            hub_set_fence(p->hub, fence);
        }
        return;
    }
    if (evbuffer_get_length(p->index_out) > 0) {
        hub_send_index(p->hub, p->index_out);
    }
    if (p->hub_acking && p->inflight_old == 0) {
        p->hub_acking = false;
        hub_ack(p->hub, p->w->id, p->hub_route.gen);
    }
}

void pool_index_stats(struct pool *p, struct evbuffer *b)
{
    if (p->link != NULL) {
        hub_copy_stats(p->hub, b);
        return;
    }
    if (p->mig != NULL) {
        mig_stats(p->mig, b);
    }
    if (p->idx != NULL) {
        const uint64_t *st = idx_stats(p->idx);
        const char *why;
        enum idx_health h = idx_health(p->idx, IDX_CONN_COUNT, &why);
        evbuffer_add_printf(b, "STAT index:state %s\r\n",
                            idx_state_names[idx_get_state(p->idx)]);
        evbuffer_add_printf(b, "STAT index:health %s\r\n", idx_health_names[h]);
        if (h != IDX_H_OK) {
            /* Redis' words, on one line */
            evbuffer_add_printf(b, "STAT index:health_reason ");
            for (const char *q = why; *q != '\0'; q++) {
                evbuffer_add(b, *q == '\r' || *q == '\n' ? " " : q, 1);
            }
            evbuffer_add_printf(b, "\r\n");
        }
        for (int i = 0; i < IDX_STAT_COUNT; i++) {
            evbuffer_add_printf(b, "STAT index:%s %llu\r\n", idx_stat_desc[i].name,
                                (unsigned long long)st[i]);
        }
        adopt_stats_lines(p->adopt, b);
    }
    if (p->sweep != NULL) {
        sweep_stats_text(p->sweep, b);
    }
    if (p->hub != NULL) {
        /* What the other threads handed to this one (their resize). */
        evbuffer_add_printf(b, "STAT threads:forwarded %llu\r\n",
                            (unsigned long long)p->link_stats[STAT_requests]);
    }
}

/*
 * What the home thread decides for a copy's commands and the copy cannot
 * see in the reply it passes on: counted as the pool's own. Every other
 * counter of the link's clients stays in link_stats (the copy counted it).
 */
static const enum stat_pool pool_link_outcomes[] = {
    STAT_server_errors,         /* a backend or the fence failed it here */
    STAT_meta_moving_refused,   /* refused here: its key is moving */
};

void pool_hub_tick(struct pool *p, uint64_t now_ms)
{
    if (p->link != NULL) {
        backend_tick(p->link, now_ms);
    } else if (p->hub != NULL) {
        for (size_t i = 0; i < sizeof(pool_link_outcomes) / sizeof(*pool_link_outcomes); i++) {
            enum stat_pool s = pool_link_outcomes[i];
            p->stats[s] += p->link_stats[s];
            p->link_stats[s] = 0;
        }
        pool_hub_stats(p);
    }
}
