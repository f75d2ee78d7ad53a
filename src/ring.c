/*
 * ring.c — ketama continuum, bit-compatible with libmemcached, twemproxy and
 * libketama.
 *
 * Design notes
 * - Point counts use single-precision arithmetic exactly as the peers write
 *   it (the Makefile passes -ffp-contract=off so no FMA changes a rounding):
 *   libmemcached gives a server floorf(pct*160/4*n + 1e-10)*4 points, which
 *   is 156 rather than 160 for some n; libketama gives floorf(pct*40*n)
 *   digests of 4 points each.
 * - Points are sorted by value; equal values keep config order, and lookup
 *   takes the first point >= hash (a lower bound), as the peers do.
 * - The diff walks the merged, de-duplicated point values of both rings. Each
 *   value v closes an elementary arc (previous value, v]; within an arc both
 *   rings have one owner each, found by advancing two cursors. The arc below
 *   the lowest value joins the arc above the highest one (the wrap); we list
 *   it as two inclusive ranges so every arc maps to one ZRANGEBYSCORE.
 */
#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ring.h"

#define RING_COMPAT_NAME(e, name) [RING_COMPAT_##e] = name,
const char *const ring_compat_names[RING_COMPAT_COUNT] = {
    RING_COMPAT_CODEC(RING_COMPAT_NAME)
};
#undef RING_COMPAT_NAME

#define LIBMEMCACHED_POINTS_PER_SERVER 160
#define POINTS_PER_DIGEST 4

/* Digests (of 4 points each) a server gets, as each peer computes it. */
static uint32_t digests_for(enum ring_compat compat, uint32_t weight,
                            uint64_t total_weight, uint32_t n)
{
    float pct = (float)weight / (float)total_weight;

    if (compat == RING_COMPAT_LIBKETAMA) {
        return (uint32_t)floorf((float)(pct * 40.0 * (float)n));
    }
    float f = pct * LIBMEMCACHED_POINTS_PER_SERVER / 4 * (float)n;
    return (uint32_t)floorf((float)(f + 0.0000000001));
}

static int point_cmp(const void *x, const void *y)
{
    const struct ring_point *a = x, *b = y;

    if (a->value != b->value) {
        return a->value < b->value ? -1 : 1;
    }
    return a->server < b->server ? -1 : a->server > b->server;
}

struct ring *ring_build(const struct ring_params *p, char *err, size_t errlen)
{
    struct ring *r = NULL;
    uint64_t total_weight = 0;
    uint64_t npoints = 0;

    if (p->nservers == 0) {
        snprintf(err, errlen, "a ring needs at least one server");
        return NULL;
    }
    for (uint32_t i = 0; i < p->nservers; i++) {
        if (p->servers[i].weight == 0) {
            snprintf(err, errlen, "server %s: weight must be > 0",
                     p->servers[i].identity);
            return NULL;
        }
        total_weight += p->servers[i].weight;
    }

    r = calloc(1, sizeof(*r));
    if (r == NULL) {
        goto oom;
    }
    r->refs = 1;
    r->compat = p->compat;
    r->hash = p->hash;
    r->hash_fn = hash_fns[p->hash];
    r->has_tag = p->has_tag;
    memcpy(r->tag, p->tag, sizeof(r->tag));
    r->nservers = p->nservers;
    r->servers = calloc(p->nservers, sizeof(*r->servers));
    if (r->servers == NULL) {
        goto oom;
    }
    for (uint32_t i = 0; i < p->nservers; i++) {
        struct ring_server *s = &r->servers[i];
        s->identity = strdup(p->servers[i].identity);
        s->addr = strdup(p->servers[i].addr ? p->servers[i].addr : "");
        if (s->identity == NULL || s->addr == NULL) {
            goto oom;
        }
        s->weight = p->servers[i].weight;
        s->npoints = POINTS_PER_DIGEST *
                     digests_for(p->compat, s->weight, total_weight, p->nservers);
        npoints += s->npoints;
    }
    if (npoints == 0) {
        snprintf(err, errlen, "weights leave every server without a point");
        ring_unref(r);
        return NULL;
    }

    r->points = malloc(npoints * sizeof(*r->points));
    if (r->points == NULL) {
        goto oom;
    }
    for (uint32_t i = 0; i < p->nservers; i++) {
        const struct ring_server *s = &r->servers[i];
        char buf[1024];
        for (uint32_t d = 0; d < s->npoints / POINTS_PER_DIGEST; d++) {
            uint8_t digest[16];
            int len = snprintf(buf, sizeof(buf), "%s-%u", s->identity, d);
            if (len < 0 || (size_t)len >= sizeof(buf)) {
                snprintf(err, errlen, "server identity too long: %.64s...",
                         s->identity);
                ring_unref(r);
                return NULL;
            }
            hash_md5_digest(buf, (size_t)len, digest);
            for (unsigned h = 0; h < POINTS_PER_DIGEST; h++) {
                r->points[r->npoints++] = (struct ring_point){
                    .value = hash_digest_point(digest, h), .server = i };
            }
        }
    }
    /* qsort is not stable; the comparator breaks ties by config order. */
    qsort(r->points, r->npoints, sizeof(*r->points), point_cmp);

    /* Each server's share: the values (prev, value] its first points own. */
    for (uint32_t i = 0; i < r->npoints; i++) {
        uint32_t prev = r->points[i == 0 ? r->npoints - 1 : i - 1].value;
        uint32_t span = r->points[i].value - prev;   /* mod 2^32 */
        if (i > 0 && r->points[i].value == prev) {
            continue;   /* a tie: the earlier point owns the arc */
        }
        r->servers[r->points[i].server].span +=
            r->npoints == 1 ? (uint64_t)1 << 32 : (uint64_t)span;
    }
    if (r->npoints > 1 && r->points[0].value == r->points[r->npoints - 1].value) {
        /* Every point has one value: point 0 owns the whole space. */
        r->servers[r->points[0].server].span = (uint64_t)1 << 32;
    }
    return r;

oom:
    snprintf(err, errlen, "out of memory building the ring");
    ring_unref(r);
    return NULL;
}

struct ring *ring_ref(struct ring *r)
{
    uint32_t was = __atomic_fetch_add(&r->refs, 1, __ATOMIC_RELAXED);

    assert(was > 0 && was < UINT32_MAX);    /* not freed, no wrap */
    (void)was;
    return r;
}

void ring_unref(struct ring *r)
{
    if (r == NULL) {
        return;
    }
    /* Release: this thread's reads of the ring happen before the free;
     * acquire on the last one: the free sees every other thread's. */
    uint32_t was = __atomic_fetch_sub(&r->refs, 1, __ATOMIC_ACQ_REL);
    assert(was > 0);            /* one unref too many: a use after free */
    if (was > 1) {
        return;
    }
    for (uint32_t i = 0; r->servers != NULL && i < r->nservers; i++) {
        free(r->servers[i].identity);
        free(r->servers[i].addr);
    }
    free(r->servers);
    free(r->points);
    free(r);
}

uint32_t ring_key_hash(const struct ring *r, const char *key, size_t len)
{
    if (r->has_tag) {
        hash_apply_tag(r->tag, &key, &len);
    }
    return r->hash_fn(key, len);
}

uint32_t ring_find(const struct ring *r, uint32_t hash)
{
    uint32_t lo = 0, hi = r->npoints;

    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (r->points[mid].value < hash) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo == r->npoints ? 0 : lo;
}

int ring_server_index(const struct ring *r, const char *identity)
{
    for (uint32_t i = 0; i < r->nservers; i++) {
        if (strcmp(r->servers[i].identity, identity) == 0) {
            return (int)i;
        }
    }
    return -1;
}

/* Diff state: both rings, a's servers mapped to b's, and the output. */
struct diff_walk {
    const struct ring *a, *b;
    int *a_in_b;            /* a's server i is b's server a_in_b[i], or -1 */
    struct ring_diff *out;
    size_t cap;
};

static int diff_emit(struct diff_walk *w, uint32_t first, uint32_t last,
                     uint32_t pa, uint32_t pb)
{
    const struct ring_point *x = &w->a->points[pa], *y = &w->b->points[pb];
    uint64_t size = (uint64_t)last - first + 1;
    bool moves = w->a_in_b[x->server] != (int)y->server;

    if (!moves && x->value == y->value) {
        return 0;
    }
    if (moves) {
        w->out->moved += size;
        w->out->flow[(size_t)x->server * w->b->nservers + y->server] += size;
    } else {
        w->out->reindexed += size;
    }

    struct ring_diff *d = w->out;
    if (d->narcs > 0) {
        struct ring_arc *prev = &d->arcs[d->narcs - 1];
        if (prev->from == pa && prev->to == pb && prev->last + 1 == first &&
            prev->last != UINT32_MAX) {
            prev->last = last;
            return 0;
        }
    }
    if (d->narcs == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 64;
        struct ring_arc *arcs = realloc(d->arcs, cap * sizeof(*arcs));
        if (arcs == NULL) {
            return -1;
        }
        d->arcs = arcs;
        w->cap = cap;
    }
    d->arcs[d->narcs++] = (struct ring_arc){
        .first = first, .last = last, .from = pa, .to = pb, .moves = moves };
    return 0;
}

int ring_diff(const struct ring *a, const struct ring *b, struct ring_diff *out)
{
    struct diff_walk w = { .a = a, .b = b, .out = out };
    int rc = -1;

    memset(out, 0, sizeof(*out));
    w.a_in_b = malloc(a->nservers * sizeof(*w.a_in_b));
    out->flow = calloc((size_t)a->nservers * b->nservers, sizeof(*out->flow));
    if (w.a_in_b == NULL || out->flow == NULL) {
        goto err;
    }
    for (uint32_t i = 0; i < a->nservers; i++) {
        w.a_in_b[i] = ring_server_index(b, a->servers[i].identity);
    }

    /* The wrap: [0, lowest value] belongs to each ring's point 0. */
    uint32_t lowest = a->points[0].value < b->points[0].value ?
                      a->points[0].value : b->points[0].value;
    uint32_t highest = a->points[a->npoints - 1].value > b->points[b->npoints - 1].value ?
                       a->points[a->npoints - 1].value : b->points[b->npoints - 1].value;
    if ((rc = diff_emit(&w, 0, lowest, 0, 0)) != 0) {
        goto err;
    }

    /* Cursors: the first point of each ring whose value is >= the arc's end. */
    uint32_t ia = 0, ib = 0, prev = lowest;
    for (;;) {
        while (ia < a->npoints && a->points[ia].value <= prev) {
            ia++;
        }
        while (ib < b->npoints && b->points[ib].value <= prev) {
            ib++;
        }
        if (ia == a->npoints && ib == b->npoints) {
            break;
        }
        uint32_t va = ia < a->npoints ? a->points[ia].value : UINT32_MAX;
        uint32_t vb = ib < b->npoints ? b->points[ib].value : UINT32_MAX;
        uint32_t next = va < vb ? va : vb;
        /* A ring whose points are all behind wraps to its point 0. */
        if ((rc = diff_emit(&w, prev + 1, next, ia < a->npoints ? ia : 0,
                            ib < b->npoints ? ib : 0)) != 0) {
            goto err;
        }
        prev = next;
    }
    if (highest < UINT32_MAX &&
        (rc = diff_emit(&w, highest + 1, UINT32_MAX, 0, 0)) != 0) {
        goto err;
    }
    free(w.a_in_b);
    return 0;

err:
    free(w.a_in_b);
    ring_diff_free(out);
    return rc;
}

void ring_diff_free(struct ring_diff *d)
{
    if (d == NULL) {
        return;
    }
    free(d->arcs);
    free(d->flow);
    memset(d, 0, sizeof(*d));
}

struct ring *ring_relocate(struct ring *rec, const struct ring *local, bool follow_unknown,
                           const char **unknown, char *why, size_t whylen)
{
    struct ring_server_spec *specs = calloc(rec->nservers ? rec->nservers : 1,
                                            sizeof(*specs));
    struct ring *l = NULL;
    bool same = true;

    *unknown = NULL;
    if (specs == NULL) {
        snprintf(why, whylen, "out of memory");
        return NULL;
    }
    for (uint32_t i = 0; i < rec->nservers; i++) {
        const char *id = rec->servers[i].identity, *addr = rec->servers[i].addr;
        int s = local != NULL ? ring_server_index(local, id) : -1;
        if (s >= 0) {
            addr = local->servers[s].addr;
        } else if (!follow_unknown) {
            snprintf(why, whylen, "server %s is not in this config file; list it, or set "
                     "migration: {follow_unknown_servers: true}", id);
            goto out;
        } else if (*unknown == NULL) {
            *unknown = id;
        }
        same = same && strcmp(addr, rec->servers[i].addr) == 0;
        specs[i] = (struct ring_server_spec){ .identity = id, .addr = addr,
                                              .weight = rec->servers[i].weight };
    }
    if (same) {
        l = ring_ref(rec);
        goto out;
    }
    struct ring_params params = { .compat = rec->compat, .hash = rec->hash,
        .has_tag = rec->has_tag, .servers = specs, .nservers = rec->nservers };
    memcpy(params.tag, rec->tag, 2);
    l = ring_build(&params, why, whylen);
out:
    free(specs);
    return l;
}
