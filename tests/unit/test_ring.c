/*
 * test_ring.c — the ketama continuum: placement vectors from libketama, the
 * libmemcached point counts, lookup edges, and the ring diff checked against
 * a brute-force comparison of owners.
 *
 * The diff is verified two independent ways: every sampled hash (a million
 * random ones per pair, plus every point value of both rings and its
 * neighbours) must lie in a listed arc exactly when its owner changes, with
 * the right from/to points; and `moved`, `reindexed` and `flow` must equal
 * exact counts taken by walking the merged point values of both rings with
 * ring_find alone.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ring.h"
#include "check_run.h"

#define SAMPLES_PER_DIFF 1000000

/* --- helpers ------------------------------------------------------------- */

/* A ring from parallel arrays; identity doubles as the address. */
static struct ring *make_ring(enum ring_compat compat, enum hash_kind hash,
                              const char *const ids[], const uint32_t weights[],
                              uint32_t n)
{
    struct ring_server_spec *specs = calloc(n, sizeof(*specs));
    char err[256] = "";

    ck_assert_ptr_nonnull(specs);
    for (uint32_t i = 0; i < n; i++) {
        specs[i] = (struct ring_server_spec){ .identity = ids[i], .addr = ids[i],
                                              .weight = weights[i] };
    }
    struct ring_params p = { .compat = compat, .hash = hash, .servers = specs,
                             .nservers = n };
    struct ring *r = ring_build(&p, err, sizeof(err));
    ck_assert_msg(r != NULL, "ring_build: %s", err);
    free(specs);
    return r;
}

/* n servers of equal weight named fmt % i (i from 1). */
static struct ring *equal_ring(enum ring_compat compat, const char *fmt,
                               uint32_t n)
{
    char (*names)[64] = calloc(n, sizeof(*names));
    const char **ids = calloc(n, sizeof(*ids));
    uint32_t *w = calloc(n, sizeof(*w));

    ck_assert(names != NULL && ids != NULL && w != NULL);
    for (uint32_t i = 0; i < n; i++) {
        snprintf(names[i], sizeof(names[i]), fmt, i + 1);
        ids[i] = names[i];
        w[i] = 1;
    }
    struct ring *r = make_ring(compat, HASH_MD5, ids, w, n);
    free(names);
    free(ids);
    free(w);
    return r;
}

static const char *owner(const struct ring *r, uint32_t hash)
{
    return r->servers[ring_server_of(r, hash)].identity;
}

/* Deterministic PRNG (splitmix64): the suite is the same on every run. */
static uint64_t rng_state;

static uint64_t rng_next(void)
{
    uint64_t z = (rng_state += UINT64_C(0x9e3779b97f4a7c15));

    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static uint32_t rng_below(uint32_t n)
{
    return (uint32_t)(rng_next() % n);
}

/* --- libketama reference vectors ----------------------------------------- */

START_TEST(libketama_two_servers_vector)
{
    static const char *const ids[] = { "127.0.0.1:11211", "127.0.0.1:11212" };
    static const uint32_t w[] = { 600, 400 };
    struct ring *r = make_ring(RING_COMPAT_LIBKETAMA, HASH_MD5, ids, w, 2);

    ck_assert_uint_eq(r->npoints, 320);
    ck_assert_uint_eq(r->servers[0].npoints, 192);
    ck_assert_uint_eq(r->servers[1].npoints, 128);
    uint32_t h = ring_key_hash(r, "test", 4);
    ck_assert_uint_eq(h, 3446378249u);
    ck_assert_uint_eq(r->points[ring_find(r, h)].value, 3454255383u);
    ck_assert_str_eq(owner(r, h), "127.0.0.1:11211");
    ring_unref(r);
}
END_TEST

START_TEST(libketama_eight_servers_vector)
{
    /* libketama's own test file, ketama.servers. */
    static const char *const ids[] = {
        "10.0.1.1:11211", "10.0.1.2:11211", "10.0.1.3:11211", "10.0.1.4:11211",
        "10.0.1.5:11211", "10.0.1.6:11211", "10.0.1.7:11211", "10.0.1.8:11211" };
    static const uint32_t w[] = { 600, 300, 200, 350, 1000, 800, 950, 100 };
    struct ring *r = make_ring(RING_COMPAT_LIBKETAMA, HASH_MD5, ids, w, 8);

    ck_assert_uint_eq(r->npoints, 1264);
    uint32_t h = ring_key_hash(r, "0", 1);
    ck_assert_uint_eq(r->points[ring_find(r, h)].value, 2217271743u);
    ck_assert_str_eq(owner(r, h), "10.0.1.1:11211");
    ring_unref(r);
}
END_TEST

/* --- point counts -------------------------------------------------------- */

START_TEST(equal_weights_give_160_points)
{
    static const uint32_t ns[] = { 1, 2, 3, 4, 8, 10, 24, 99 };

    for (size_t k = 0; k < sizeof(ns) / sizeof(ns[0]); k++) {
        struct ring *r = equal_ring(RING_COMPAT_LIBMEMCACHED, "mc%u", ns[k]);
        for (uint32_t i = 0; i < r->nservers; i++) {
            ck_assert_msg(r->servers[i].npoints == 160, "n=%u: server %u has "
                          "%u points", ns[k], i, r->servers[i].npoints);
        }
        ck_assert_uint_eq(r->npoints, 160 * ns[k]);
        ring_unref(r);
    }
}
END_TEST

START_TEST(libmemcached_gives_156_points_for_some_n)
{
    /* floorf(pct*160/4*n + 1e-10) in single precision: 1/25*40*25 rounds
     * to 39.999996, so each server gets 39 digests. */
    static const uint32_t ns[] = { 25, 47, 50, 55, 61, 71, 94, 100 };

    for (size_t k = 0; k < sizeof(ns) / sizeof(ns[0]); k++) {
        struct ring *r = equal_ring(RING_COMPAT_LIBMEMCACHED, "mc%u", ns[k]);
        for (uint32_t i = 0; i < r->nservers; i++) {
            ck_assert_msg(r->servers[i].npoints == 156, "n=%u: server %u has "
                          "%u points", ns[k], i, r->servers[i].npoints);
        }
        ring_unref(r);
    }
    /* libketama's double-precision product keeps 160 for n = 25 and 50. */
    struct ring *r = equal_ring(RING_COMPAT_LIBKETAMA, "10.0.0.%u:11211", 25);
    ck_assert_uint_eq(r->servers[0].npoints, 160);
    ring_unref(r);
    r = equal_ring(RING_COMPAT_LIBKETAMA, "10.0.0.%u:11211", 50);
    ck_assert_uint_eq(r->servers[0].npoints, 160);
    ring_unref(r);
}
END_TEST

START_TEST(weights_split_points_in_proportion)
{
    static const char *const ids[] = { "a", "b", "c" };
    static const uint32_t w[] = { 1, 2, 1 };
    struct ring *r = make_ring(RING_COMPAT_LIBMEMCACHED, HASH_MD5, ids, w, 3);

    /* pct*40*3 digests: 30, 60, 30. */
    ck_assert_uint_eq(r->servers[0].npoints, 120);
    ck_assert_uint_eq(r->servers[1].npoints, 240);
    ck_assert_uint_eq(r->servers[2].npoints, 120);
    ck_assert_uint_eq(r->npoints, 480);
    ring_unref(r);
}
END_TEST

START_TEST(points_are_sorted_and_spans_cover_the_space)
{
    struct ring *r = equal_ring(RING_COMPAT_LIBMEMCACHED, "mc%u", 7);
    uint64_t total = 0;
    uint32_t count[7] = { 0 };

    for (uint32_t i = 0; i < r->npoints; i++) {
        if (i > 0) {
            ck_assert_uint_le(r->points[i - 1].value, r->points[i].value);
        }
        count[r->points[i].server]++;
    }
    for (uint32_t s = 0; s < r->nservers; s++) {
        ck_assert_uint_eq(count[s], r->servers[s].npoints);
        total += r->servers[s].span;
    }
    ck_assert_uint_eq(total, UINT64_C(1) << 32);
    ring_unref(r);
}
END_TEST

START_TEST(build_rejects_no_servers_and_zero_weight)
{
    static const char *const ids[] = { "a", "b" };
    static const uint32_t w[] = { 1, 0 };
    struct ring_server_spec specs[2] = {
        { .identity = ids[0], .addr = ids[0], .weight = w[0] },
        { .identity = ids[1], .addr = ids[1], .weight = w[1] } };
    struct ring_params p = { .compat = RING_COMPAT_LIBMEMCACHED, .hash = HASH_MD5,
                             .servers = specs, .nservers = 0 };
    char err[256] = "";

    ck_assert_ptr_null(ring_build(&p, err, sizeof(err)));
    ck_assert_str_ne(err, "");
    p.nservers = 2;
    err[0] = '\0';
    ck_assert_ptr_null(ring_build(&p, err, sizeof(err)));
    ck_assert_ptr_nonnull(strstr(err, "b"));
    ring_unref(NULL);   /* NULL is fine */
}
END_TEST

START_TEST(refcount_keeps_ring_alive)
{
    struct ring *r = equal_ring(RING_COMPAT_LIBMEMCACHED, "mc%u", 2);

    ck_assert_ptr_eq(ring_ref(r), r);
    ring_unref(r);
    ck_assert_uint_eq(r->npoints, 320);     /* still ours: ASan would object */
    ring_unref(r);
}
END_TEST

/* --- lookup -------------------------------------------------------------- */

START_TEST(lookup_takes_first_point_at_or_above_hash)
{
    struct ring *r = equal_ring(RING_COMPAT_LIBMEMCACHED, "mc%u", 3);

    for (uint32_t i = 1; i < r->npoints; i++) {
        uint32_t v = r->points[i].value;
        if (v == r->points[i - 1].value) {
            continue;
        }
        ck_assert_uint_eq(ring_find(r, v), i);
        ck_assert_uint_eq(ring_find(r, v - 1) , v - 1 == r->points[i - 1].value ?
                          i - 1 : i);
        ck_assert_uint_eq(ring_find(r, r->points[i - 1].value + 1), i);
    }
    ring_unref(r);
}
END_TEST

START_TEST(lookup_wraps_past_last_point)
{
    struct ring *r = equal_ring(RING_COMPAT_LIBMEMCACHED, "mc%u", 3);
    uint32_t last = r->points[r->npoints - 1].value;

    ck_assert_uint_lt(last, UINT32_MAX);
    ck_assert_uint_eq(ring_find(r, last), r->npoints - 1);
    ck_assert_uint_eq(ring_find(r, last + 1), 0);
    ck_assert_uint_eq(ring_find(r, UINT32_MAX), 0);
    ck_assert_uint_eq(ring_find(r, 0), 0);
    ck_assert_uint_eq(ring_find(r, r->points[0].value), 0);
    ck_assert_uint_eq(ring_server_of(r, UINT32_MAX), r->points[0].server);
    ring_unref(r);
}
END_TEST

START_TEST(equal_points_go_to_first_server_in_config_order)
{
    /* Two servers with one identity hash to the very same points: every
     * point is a tie, and the one listed first owns them all. */
    static const char *const ids[] = { "twin", "twin", "other" };
    static const uint32_t w[] = { 1, 1, 1 };
    struct ring_server_spec specs[3];
    char err[256];

    for (int i = 0; i < 3; i++) {
        specs[i] = (struct ring_server_spec){ .identity = ids[i],
            .addr = i == 1 ? "second" : "first", .weight = w[i] };
    }
    struct ring_params p = { .compat = RING_COMPAT_LIBMEMCACHED, .hash = HASH_MD5,
                             .servers = specs, .nservers = 3 };
    struct ring *r = ring_build(&p, err, sizeof(err));
    ck_assert_ptr_nonnull(r);
    for (uint32_t i = 1; i < r->npoints; i++) {
        const struct ring_point *a = &r->points[i - 1], *b = &r->points[i];
        ck_assert(a->value < b->value || (a->value == b->value && a->server < b->server));
        if (b->server == 1) {
            /* server 1's point: the same value must sit just before it. */
            ck_assert_uint_eq(a->value, b->value);
            ck_assert_uint_eq(a->server, 0);
        }
    }
    for (uint32_t i = 0; i < r->npoints; i++) {
        ck_assert_uint_ne(ring_server_of(r, r->points[i].value), 1);
    }
    ck_assert_uint_eq(r->servers[1].span, 0);
    ck_assert_uint_eq(r->servers[0].span + r->servers[2].span, UINT64_C(1) << 32);
    ring_unref(r);
}
END_TEST

START_TEST(key_hash_uses_pool_hash_and_tag)
{
    static const char *const ids[] = { "a", "b" };
    static const uint32_t w[] = { 1, 1 };
    struct ring_server_spec specs[2] = {
        { .identity = ids[0], .addr = ids[0], .weight = w[0] },
        { .identity = ids[1], .addr = ids[1], .weight = w[1] } };
    struct ring_params p = { .compat = RING_COMPAT_LIBMEMCACHED,
                             .hash = HASH_FNV1A_64, .has_tag = true,
                             .tag = { '{', '}' }, .servers = specs, .nservers = 2 };
    char err[256];
    struct ring *r = ring_build(&p, err, sizeof(err));

    ck_assert_ptr_nonnull(r);
    ck_assert_uint_eq(ring_key_hash(r, "user:{apple}:x", 14), 1488911807u);
    ck_assert_uint_eq(ring_key_hash(r, "apple", 5), 1488911807u);
    ck_assert_uint_eq(ring_key_hash(r, "{}apple", 7), hash_fnv1a_64("{}apple", 7));
    ring_unref(r);
    p.has_tag = false;
    p.hash = HASH_MD5;
    r = ring_build(&p, err, sizeof(err));
    ck_assert_uint_eq(ring_key_hash(r, "test", 4), 3446378249u);
    ck_assert_uint_eq(ring_key_hash(r, "{test}", 6), hash_md5("{test}", 6));
    ring_unref(r);
}
END_TEST

START_TEST(server_index_by_identity)
{
    struct ring *r = equal_ring(RING_COMPAT_LIBMEMCACHED, "mc%u", 3);

    ck_assert_int_eq(ring_server_index(r, "mc1"), 0);
    ck_assert_int_eq(ring_server_index(r, "mc3"), 2);
    ck_assert_int_eq(ring_server_index(r, "mc4"), -1);
    ck_assert_int_eq(ring_server_index(r, ""), -1);
    ring_unref(r);
}
END_TEST

/* --- diff: the brute-force oracle ---------------------------------------- */

/* The arc holding hash h, or NULL (arcs are sorted and disjoint). */
static const struct ring_arc *arc_of(const struct ring_diff *d, uint32_t h)
{
    size_t lo = 0, hi = d->narcs;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (d->arcs[mid].last < h) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if (lo < d->narcs && d->arcs[lo].first <= h) {
        return &d->arcs[lo];
    }
    return NULL;
}

/* Whether a's owner of h differs from b's: server identity, or v-node. */
static void owners(const struct ring *a, const struct ring *b, uint32_t h,
                   uint32_t *pa, uint32_t *pb, bool *moves, bool *changed)
{
    *pa = ring_find(a, h);
    *pb = ring_find(b, h);
    const struct ring_point *x = &a->points[*pa], *y = &b->points[*pb];
    *moves = strcmp(a->servers[x->server].identity,
                    b->servers[y->server].identity) != 0;
    *changed = *moves || x->value != y->value;
}

/*
 * Check's assertions record a mark point (a write to the runner) even when
 * they pass, so the hot loops below test plainly and only abort on failure.
 */
static void check_hash(const struct ring *a, const struct ring *b,
                       const struct ring_diff *d, uint32_t h)
{
    uint32_t pa, pb;
    bool moves, changed;
    const struct ring_arc *arc = arc_of(d, h);

    owners(a, b, h, &pa, &pb, &moves, &changed);
    if (!changed) {
        if (arc != NULL) {
            ck_abort_msg("hash %u keeps its owner but lies in arc [%u, %u]", h,
                         arc->first, arc->last);
        }
        return;
    }
    if (arc == NULL) {
        ck_abort_msg("hash %u changes owner (%s@%u -> %s@%u) but no arc lists "
                     "it", h, a->servers[a->points[pa].server].identity,
                     a->points[pa].value, b->servers[b->points[pb].server].identity,
                     b->points[pb].value);
    }
    if (arc->from != pa || arc->to != pb || arc->moves != moves) {
        ck_abort_msg("hash %u: arc [%u, %u] says %u -> %u moves=%d, brute force "
                     "says %u -> %u moves=%d", h, arc->first, arc->last, arc->from,
                     arc->to, arc->moves, pa, pb, moves);
    }
}

static int cmp_u32(const void *x, const void *y)
{
    uint32_t a = *(const uint32_t *)x, b = *(const uint32_t *)y;

    return a < b ? -1 : a > b;
}

/*
 * Exact moved/reindexed/flow by walking the merged point values: between two
 * consecutive values neither ring has a point, so ring_find at the upper end
 * names the owner of the whole interval in each ring.
 */
static void exact_counts(const struct ring *a, const struct ring *b,
                         uint64_t *moved, uint64_t *reindexed, uint64_t *flow)
{
    size_t n = (size_t)a->npoints + b->npoints, m = 0;
    uint32_t *v = malloc(n * sizeof(*v));

    ck_assert_ptr_nonnull(v);
    for (uint32_t i = 0; i < a->npoints; i++) {
        v[m++] = a->points[i].value;
    }
    for (uint32_t i = 0; i < b->npoints; i++) {
        v[m++] = b->points[i].value;
    }
    qsort(v, n, sizeof(*v), cmp_u32);
    m = 0;
    for (size_t i = 0; i < n; i++) {
        if (m == 0 || v[m - 1] != v[i]) {
            v[m++] = v[i];
        }
    }
    *moved = *reindexed = 0;
    memset(flow, 0, (size_t)a->nservers * b->nservers * sizeof(*flow));
    for (size_t i = 0; i < m; i++) {
        /* Interval (v[i-1], v[i]]; for i = 0 the wrap (v[m-1], 2^32) + [0, v[0]]. */
        uint64_t size = i > 0 ? (uint64_t)v[i] - v[i - 1] :
                        (UINT64_C(1) << 32) - v[m - 1] + v[0];
        uint32_t pa, pb;
        bool moves, changed;
        owners(a, b, v[i], &pa, &pb, &moves, &changed);
        if (moves) {
            *moved += size;
            flow[(size_t)a->points[pa].server * b->nservers +
                 b->points[pb].server] += size;
        } else if (changed) {
            *reindexed += size;
        }
    }
    free(v);
}

/* Check d = diff(a, b) against both oracles; returns d->moved. */
static uint64_t verify_diff(const struct ring *a, const struct ring *b,
                            const struct ring_diff *d, uint32_t samples)
{
    uint64_t moved_arcs = 0, reindexed_arcs = 0;
    uint64_t *flow = calloc((size_t)a->nservers * b->nservers, sizeof(*flow));

    ck_assert_ptr_nonnull(flow);
    /* Arcs: inclusive, sorted, disjoint, each with constant owners. */
    for (size_t i = 0; i < d->narcs; i++) {
        const struct ring_arc *arc = &d->arcs[i];
        if (arc->first > arc->last || (i > 0 && arc->first <= d->arcs[i - 1].last) ||
            arc->from >= a->npoints || arc->to >= b->npoints) {
            ck_abort_msg("arc %zu [%u, %u] %u -> %u is malformed or out of order",
                         i, arc->first, arc->last, arc->from, arc->to);
        }
        check_hash(a, b, d, arc->first);
        check_hash(a, b, d, arc->last);
        uint64_t size = (uint64_t)arc->last - arc->first + 1;
        if (arc->moves) {
            moved_arcs += size;
        } else {
            reindexed_arcs += size;
        }
    }
    ck_assert_uint_eq(moved_arcs, d->moved);
    ck_assert_uint_eq(reindexed_arcs, d->reindexed);

    /* Sampled hashes: the space's ends, every point value and neighbours. */
    check_hash(a, b, d, 0);
    check_hash(a, b, d, UINT32_MAX);
    for (int k = 0; k < 2; k++) {
        const struct ring *r = k ? b : a;
        for (uint32_t i = 0; i < r->npoints; i++) {
            uint32_t v = r->points[i].value;
            check_hash(a, b, d, v);
            check_hash(a, b, d, v - 1);
            check_hash(a, b, d, v + 1);
        }
    }
    for (uint32_t i = 0; i < samples; i++) {
        check_hash(a, b, d, (uint32_t)rng_next());
    }

    /* Exact counts. */
    uint64_t moved, reindexed;
    exact_counts(a, b, &moved, &reindexed, flow);
    ck_assert_uint_eq(d->moved, moved);
    ck_assert_uint_eq(d->reindexed, reindexed);
    uint64_t flow_total = 0;
    for (size_t i = 0; i < (size_t)a->nservers * b->nservers; i++) {
        if (d->flow[i] != flow[i]) {
            ck_abort_msg("flow %s -> %s: diff says %llu, exact count %llu",
                         a->servers[i / b->nservers].identity,
                         b->servers[i % b->nservers].identity,
                         (unsigned long long)d->flow[i], (unsigned long long)flow[i]);
        }
        flow_total += d->flow[i];
    }
    ck_assert_uint_eq(flow_total, d->moved);
    free(flow);
    return d->moved;
}

/* --- diff: random ring pairs --------------------------------------------- */

enum change { ADD, REMOVE, REWEIGHT, RENAME, SEVERAL, NCHANGES };
static const char *const change_names[NCHANGES] = {
    [ADD] = "add", [REMOVE] = "remove", [REWEIGHT] = "reweight",
    [RENAME] = "rename", [SEVERAL] = "several" };

#define MAXS 16

struct server_set {
    char ids[MAXS][32];
    uint32_t weights[MAXS];
    uint32_t n;
};

static void set_insert(struct server_set *s, uint32_t at, const char *id,
                       uint32_t weight)
{
    memmove(&s->ids[at + 1], &s->ids[at], (s->n - at) * sizeof(s->ids[0]));
    memmove(&s->weights[at + 1], &s->weights[at],
            (s->n - at) * sizeof(s->weights[0]));
    snprintf(s->ids[at], sizeof(s->ids[at]), "%s", id);
    s->weights[at] = weight;
    s->n++;
}

static void set_remove(struct server_set *s, uint32_t at)
{
    memmove(&s->ids[at], &s->ids[at + 1], (s->n - at - 1) * sizeof(s->ids[0]));
    memmove(&s->weights[at], &s->weights[at + 1],
            (s->n - at - 1) * sizeof(s->weights[0]));
    s->n--;
}

static void apply_change(struct server_set *s, enum change c, uint32_t *serial)
{
    char id[32];
    uint32_t at;

    switch (c) {
    case ADD:
        snprintf(id, sizeof(id), "10.1.0.%u:11211", (*serial)++);
        set_insert(s, rng_below(s->n + 1), id, 1 + rng_below(10));
        break;
    case REMOVE:
        set_remove(s, rng_below(s->n));
        break;
    case REWEIGHT:
        at = rng_below(s->n);
        s->weights[at] = s->weights[at] % 10 + 1 + rng_below(9);
        break;
    case RENAME:
        at = rng_below(s->n);
        snprintf(s->ids[at], sizeof(s->ids[at]), "renamed-%u", (*serial)++);
        break;
    case SEVERAL:
        apply_change(s, REWEIGHT, serial);
        apply_change(s, REMOVE, serial);
        apply_change(s, ADD, serial);   /* last, so the sets always differ */
        break;
    case NCHANGES:
        break;
    }
}

static struct ring *set_ring(const struct server_set *s, enum ring_compat compat)
{
    const char *ids[MAXS];

    for (uint32_t i = 0; i < s->n; i++) {
        ids[i] = s->ids[i];
    }
    return make_ring(compat, HASH_MD5, ids, s->weights, s->n);
}

/* Loop index: change kind, and an even/odd variant with another seed/compat. */
START_TEST(diff_matches_brute_force_for_random_changes)
{
    enum change c = (enum change)(_i / 2);
    enum ring_compat compat = _i % 2 ? RING_COMPAT_LIBKETAMA : RING_COMPAT_LIBMEMCACHED;
    struct server_set s = { .n = 0 };
    uint32_t serial = 100;
    struct ring_diff d;

    rng_state = UINT64_C(0x5eed0000) + (uint64_t)_i;
    uint32_t n = 3 + rng_below(6);
    for (uint32_t i = 0; i < n; i++) {
        char id[32];
        snprintf(id, sizeof(id), "10.0.0.%u:11211", i + 1);
        set_insert(&s, s.n, id, 1 + rng_below(10));
    }
    struct ring *a = set_ring(&s, compat);
    apply_change(&s, c, &serial);
    struct ring *b = set_ring(&s, compat);

    ck_assert_int_eq(ring_diff(a, b, &d), 0);
    uint64_t moved = verify_diff(a, b, &d, SAMPLES_PER_DIFF);
    ck_assert_msg(moved > 0, "%s: nothing moved", change_names[c]);
    ck_assert_uint_lt(moved, UINT64_C(1) << 32);

    /* The reverse diff moves the same amount of hash space. */
    struct ring_diff back;
    ck_assert_int_eq(ring_diff(b, a, &back), 0);
    ck_assert_uint_eq(back.moved, d.moved);
    ck_assert_uint_eq(back.reindexed, d.reindexed);
    ring_diff_free(&back);
    ring_diff_free(&d);
    ring_unref(a);
    ring_unref(b);
}
END_TEST

START_TEST(diff_of_identical_rings_is_empty)
{
    struct ring *a = equal_ring(RING_COMPAT_LIBMEMCACHED, "mc%u", 5);
    struct ring *b = equal_ring(RING_COMPAT_LIBMEMCACHED, "mc%u", 5);
    struct ring_diff d;

    ck_assert_int_eq(ring_diff(a, b, &d), 0);
    ck_assert_uint_eq(d.narcs, 0);
    ck_assert_uint_eq(d.moved, 0);
    ck_assert_uint_eq(d.reindexed, 0);
    ring_diff_free(&d);
    ring_diff_free(&d);     /* idempotent */
    ring_diff_free(NULL);
    ring_unref(a);
    ring_unref(b);
}
END_TEST

START_TEST(diff_ignores_a_new_address_under_the_same_name)
{
    static const char *const ids[] = { "mc1", "mc2", "mc3" };
    struct ring_server_spec specs[3];
    struct ring_params p = { .compat = RING_COMPAT_LIBMEMCACHED, .hash = HASH_MD5,
                             .servers = specs, .nservers = 3 };
    struct ring_diff d;
    char err[256];

    for (int i = 0; i < 3; i++) {
        specs[i] = (struct ring_server_spec){ .identity = ids[i],
            .addr = "10.0.0.1:11211", .weight = 1 };
    }
    struct ring *a = ring_build(&p, err, sizeof(err));
    specs[1].addr = "10.0.0.99:11211";      /* mc2 replaced by a new host */
    struct ring *b = ring_build(&p, err, sizeof(err));
    ck_assert(a != NULL && b != NULL);
    ck_assert_int_eq(ring_diff(a, b, &d), 0);
    ck_assert_uint_eq(d.narcs, 0);
    ck_assert_uint_eq(d.moved, 0);
    ring_diff_free(&d);
    ring_unref(a);
    ring_unref(b);
}
END_TEST

START_TEST(adding_fourth_equal_server_moves_only_its_share)
{
    struct ring *a = equal_ring(RING_COMPAT_LIBMEMCACHED, "mc%u", 3);
    struct ring *b = equal_ring(RING_COMPAT_LIBMEMCACHED, "mc%u", 4);
    struct ring_diff d;

    rng_state = UINT64_C(0x4444);
    ck_assert_int_eq(ring_diff(a, b, &d), 0);
    verify_diff(a, b, &d, SAMPLES_PER_DIFF);
    /* 160 points each before and after: the old points stay put. */
    ck_assert_uint_eq(d.moved, b->servers[3].span);
    ck_assert_uint_eq(d.reindexed, 0);
    uint64_t to_new = 0;
    for (uint32_t i = 0; i < 3; i++) {
        for (uint32_t j = 0; j < 3; j++) {
            ck_assert_msg(d.flow[i * 4 + j] == 0, "%s -> %s moved %llu", a->servers[i].identity,
                          b->servers[j].identity, (unsigned long long)d.flow[i * 4 + j]);
        }
        ck_assert_uint_gt(d.flow[i * 4 + 3], 0);
        to_new += d.flow[i * 4 + 3];
    }
    ck_assert_uint_eq(to_new, b->servers[3].span);
    for (size_t i = 0; i < d.narcs; i++) {
        ck_assert(d.arcs[i].moves);
        ck_assert_uint_eq(b->points[d.arcs[i].to].server, 3);
    }
    /* Roughly a quarter of the space. */
    ck_assert(d.moved > (UINT64_C(1) << 32) / 8 && d.moved < (UINT64_C(1) << 32) / 2);
    ring_diff_free(&d);
    ring_unref(a);
    ring_unref(b);
}
END_TEST

START_TEST(growing_24_to_25_also_moves_keys_between_old_servers)
{
    struct ring *a = equal_ring(RING_COMPAT_LIBMEMCACHED, "mc%u", 24);
    struct ring *b = equal_ring(RING_COMPAT_LIBMEMCACHED, "mc%u", 25);
    struct ring_diff d;

    rng_state = UINT64_C(0x2425);
    ck_assert_uint_eq(a->servers[0].npoints, 160);
    ck_assert_uint_eq(b->servers[0].npoints, 156);
    ck_assert_int_eq(ring_diff(a, b, &d), 0);
    verify_diff(a, b, &d, SAMPLES_PER_DIFF);
    ck_assert_uint_gt(d.moved, b->servers[24].span);

    uint64_t old_to_old = 0, old_to_old_arcs = 0;
    for (uint32_t i = 0; i < 24; i++) {
        for (uint32_t j = 0; j < 24; j++) {
            if (i != j) {
                old_to_old += d.flow[(size_t)i * 25 + j];
            }
        }
    }
    for (size_t i = 0; i < d.narcs; i++) {
        const struct ring_arc *arc = &d.arcs[i];
        uint32_t from = a->points[arc->from].server, to = b->points[arc->to].server;
        if (arc->moves && to != 24) {
            ck_assert_uint_ne(from, to);
            old_to_old_arcs += (uint64_t)arc->last - arc->first + 1;
        }
    }
    ck_assert_uint_gt(old_to_old, 0);
    ck_assert_uint_eq(old_to_old_arcs, old_to_old);
    ck_assert_uint_eq(d.moved, old_to_old + b->servers[24].span);
    /* The dropped 40th digest of a server can fall to another of its own
     * points: those hashes only change v-node. */
    ck_assert_uint_gt(d.reindexed, 0);
    ring_diff_free(&d);
    ring_unref(a);
    ring_unref(b);
}
END_TEST

static Suite *ring_suite(void)
{
    Suite *s = suite_create("ring");
    TCase *tc = tcase_create("build");

    tcase_add_test(tc, libketama_two_servers_vector);
    tcase_add_test(tc, libketama_eight_servers_vector);
    tcase_add_test(tc, equal_weights_give_160_points);
    tcase_add_test(tc, libmemcached_gives_156_points_for_some_n);
    tcase_add_test(tc, weights_split_points_in_proportion);
    tcase_add_test(tc, points_are_sorted_and_spans_cover_the_space);
    tcase_add_test(tc, build_rejects_no_servers_and_zero_weight);
    tcase_add_test(tc, refcount_keeps_ring_alive);
    suite_add_tcase(s, tc);

    tc = tcase_create("lookup");
    tcase_add_test(tc, lookup_takes_first_point_at_or_above_hash);
    tcase_add_test(tc, lookup_wraps_past_last_point);
    tcase_add_test(tc, equal_points_go_to_first_server_in_config_order);
    tcase_add_test(tc, key_hash_uses_pool_hash_and_tag);
    tcase_add_test(tc, server_index_by_identity);
    suite_add_tcase(s, tc);

    tc = tcase_create("diff");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, diff_matches_brute_force_for_random_changes, 0,
                        2 * NCHANGES);
    tcase_add_test(tc, diff_of_identical_rings_is_empty);
    tcase_add_test(tc, diff_ignores_a_new_address_under_the_same_name);
    tcase_add_test(tc, adding_fourth_equal_server_moves_only_its_share);
    tcase_add_test(tc, growing_24_to_25_also_moves_keys_between_old_servers);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return check_run(ring_suite());
}
