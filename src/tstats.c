/*
 * tstats.c — per-thread counters, summed when read (tstats.h).
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "mem.h"
#include "pool.h"
#include "tstats.h"

struct tstats_pool {
    char *name;
    uint64_t stats[STAT_POOL_COUNT];
};

struct tstats_backend {
    char *pool, *identity, *addr;
    const struct backend *be;   /* whose counters these are (compared by its
                                   own thread only, never followed) */
    uint64_t stats[STAT_BACKEND_COUNT];
    struct tstats_live live;
};

/* One thread's last copy. Entries are reused from one tick to the next
 * while their names stay the same, so a steady config allocates nothing. */
struct tstats_snap {
    pthread_mutex_t lock;
    struct tstats_pool *pools;
    uint32_t npools, cap_pools;
    struct tstats_backend *bes;
    uint32_t nbes, cap_bes;
};

static struct tstats_snap *snaps;   /* one per thread; NULL: one thread */
struct tstats_conns {
    char *pool;
    uint64_t open;
    uint64_t serving;           /* threads whose listener of it is open */
};

static pthread_mutex_t conns_lock = PTHREAD_MUTEX_INITIALIZER;
static struct tstats_conns *conns;
static uint32_t nconns, cap_conns;

static uint32_t nsnaps;

/* `stats reset`'s bases by pool name, shared by the threads (several
 * threads only; one thread keeps pool.stats_base). */
struct tstats_base {
    char *pool;
    uint64_t base[STAT_POOL_COUNT];
};

static pthread_mutex_t bases_lock = PTHREAD_MUTEX_INITIALIZER;
static struct tstats_base *bases;
static uint32_t nbases, cap_bases;

static struct tstats_threads threads_now;     /* fields atomic */

void tstats_threads_set(uint32_t active, uint64_t trials, uint64_t undone)
{
    __atomic_store_n(&threads_now.active, active, __ATOMIC_RELAXED);
    __atomic_store_n(&threads_now.trials, trials, __ATOMIC_RELAXED);
    __atomic_store_n(&threads_now.undone, undone, __ATOMIC_RELAXED);
}

void tstats_threads_moved(void)
{
    __atomic_add_fetch(&threads_now.moved, 1, __ATOMIC_RELAXED);
}

void tstats_threads_get(struct tstats_threads *out)
{
    out->threads = nsnaps > 0 ? nsnaps : 1;
    out->active = nsnaps > 0 ? __atomic_load_n(&threads_now.active, __ATOMIC_RELAXED) : 1;
    out->trials = __atomic_load_n(&threads_now.trials, __ATOMIC_RELAXED);
    out->undone = __atomic_load_n(&threads_now.undone, __ATOMIC_RELAXED);
    out->moved = __atomic_load_n(&threads_now.moved, __ATOMIC_RELAXED);
}

void tstats_init(uint32_t nthreads)
{
    if (nthreads < 2) {
        return;
    }
    snaps = rp_xcalloc(nthreads, sizeof(*snaps), "the threads' counters");
    nsnaps = nthreads;
    for (uint32_t i = 0; i < nthreads; i++) {
        pthread_mutex_init(&snaps[i].lock, NULL);
    }
}

void tstats_free(void)
{
    for (uint32_t i = 0; i < nsnaps; i++) {
        struct tstats_snap *s = &snaps[i];
        for (uint32_t j = 0; j < s->cap_pools; j++) {
            free(s->pools[j].name);
        }
        for (uint32_t j = 0; j < s->cap_bes; j++) {
            free(s->bes[j].pool);
            free(s->bes[j].identity);
            free(s->bes[j].addr);
        }
        free(s->pools);
        free(s->bes);
        pthread_mutex_destroy(&s->lock);
    }
    free(snaps);
    snaps = NULL;
    nsnaps = 0;
    for (uint32_t i = 0; i < nconns; i++) {
        free(conns[i].pool);
    }
    free(conns);
    conns = NULL;
    nconns = cap_conns = 0;
    for (uint32_t i = 0; i < nbases; i++) {
        free(bases[i].pool);
    }
    free(bases);
    bases = NULL;
    nbases = cap_bases = 0;
}

/* *slot holds want afterwards (kept when equal). */
static void keep_name(char **slot, const char *want)
{
    if (*slot == NULL || strcmp(*slot, want) != 0) {
        free(*slot);
        *slot = rp_xstrdup(want, "a counter's name");
    }
}

static void *grow(void *arr, uint32_t *cap, uint32_t need, size_t size)
{
    if (need <= *cap) {
        return arr;
    }
    uint32_t ncap = *cap ? *cap : 4;
    while (ncap < need) {
        ncap *= 2;
    }
    char *n = rp_xrealloc(arr, (size_t)ncap * size, "the threads' counters");
    memset(n + (size_t)*cap * size, 0, (size_t)(ncap - *cap) * size);
    *cap = ncap;
    return n;
}


/* Copy and name every pool and backend of the thread (s->lock held). */
static void publish_named(struct tstats_snap *s, struct pool *const *pools,
                          uint32_t npools)
{
    uint32_t nbes = 0;

    for (uint32_t i = 0; i < npools; i++) {
        nbes += pools[i]->nbackends;
    }
    s->pools = grow(s->pools, &s->cap_pools, npools, sizeof(*s->pools));
    s->bes = grow(s->bes, &s->cap_bes, nbes, sizeof(*s->bes));
    s->npools = 0;
    s->nbes = 0;
    for (uint32_t i = 0; i < npools; i++) {
        const struct pool *p = pools[i];
        if (p->name == NULL) {
            continue;   /* closed (pool_close) */
        }
        keep_name(&s->pools[s->npools].name, p->name);
        memcpy(s->pools[s->npools++].stats, p->stats, sizeof(p->stats));
        for (uint32_t j = 0; j < p->nbackends; j++) {
            const struct backend *be = p->backends[j];
            struct tstats_backend *e = &s->bes[s->nbes++];
            keep_name(&e->pool, p->name);
            keep_name(&e->identity, be->identity);
            keep_name(&e->addr, be->addr.text);
            e->be = be;
            memcpy(e->stats, be->stats, sizeof(be->stats));
            tstats_live_of(be, &e->live);
        }
    }
}

void tstats_publish(uint32_t thread, struct pool *const *pools, uint32_t npools)
{
    if (thread >= nsnaps) {
        return;
    }
    struct tstats_snap *s = &snaps[thread];

    pthread_mutex_lock(&s->lock);
    publish_named(s, pools, npools);
    pthread_mutex_unlock(&s->lock);
}

void tstats_publish_pools(uint32_t thread, struct pool *const *pools, uint32_t npools)
{
    if (thread >= nsnaps) {
        return;
    }
    struct tstats_snap *s = &snaps[thread];
    uint32_t e = 0, n = 0;
    bool same = true;   /* pools and backends where the snapshot has them */

    if (pthread_mutex_trylock(&s->lock) != 0) {
        return;     /* a reader has it: the next turn publishes */
    }
    for (uint32_t i = 0; same && i < npools; i++) {
        const struct pool *p = pools[i];
        if (p->name == NULL) {  /* closed (pool_close) */
            continue;
        }
        same = n < s->npools && strcmp(s->pools[n].name, p->name) == 0;
        for (uint32_t j = 0; same && j < p->nbackends; j++, e++) {
            same = e < s->nbes && s->bes[e].be == p->backends[j];
        }
        if (same) {
            memcpy(s->pools[n++].stats, p->stats, sizeof(p->stats));
        }
    }
    if (!same || n != s->npools || e != s->nbes) {
        publish_named(s, pools, npools);    /* after a reload or at start */
    } else {
        for (uint32_t i = 0, k = 0; i < npools; i++) {
            for (uint32_t j = 0; pools[i]->name != NULL && j < pools[i]->nbackends; j++) {
                const struct backend *be = pools[i]->backends[j];
                memcpy(s->bes[k].stats, be->stats, sizeof(s->bes[0].stats));
                tstats_live_of(be, &s->bes[k++].live);
            }
        }
    }
    pthread_mutex_unlock(&s->lock);
}

void tstats_add_pool(uint32_t self, const char *name, uint64_t *out)
{
    for (uint32_t t = 0; t < nsnaps; t++) {
        struct tstats_snap *s = &snaps[t];
        if (t == self) {
            continue;
        }
        pthread_mutex_lock(&s->lock);
        for (uint32_t i = 0; i < s->npools; i++) {
            if (strcmp(s->pools[i].name, name) == 0) {
                for (int k = 0; k < STAT_POOL_COUNT; k++) {
                    out[k] += s->pools[i].stats[k];
                }
            }
        }
        pthread_mutex_unlock(&s->lock);
    }
}

static bool tstats_same(const struct tstats_backend *e, const char *pool,
                        const struct backend *be)
{
    return strcmp(e->pool, pool) == 0 && strcmp(e->identity, be->identity) == 0 &&
           strcmp(e->addr, be->addr.text) == 0;
}

/* Call visit(j, e, arg) for each snapshot entry e of another thread than
 * self that is backend bes[j] of pool `pool` (the entry's lock held). */
static void each_other_backend(uint32_t self, const char *pool, struct backend *const *bes,
                               uint32_t n,
                               void (*visit)(uint32_t j, const struct tstats_backend *e,
                                             void *arg),
                               void *arg)
{
    for (uint32_t t = 0; t < nsnaps; t++) {
        struct tstats_snap *s = &snaps[t];
        if (t == self) {
            continue;
        }
        pthread_mutex_lock(&s->lock);
        uint32_t first = 0;
        while (first < s->nbes && strcmp(s->bes[first].pool, pool) != 0) {
            first++;
        }
        for (uint32_t j = 0; j < n; j++) {
            /* Threads make a pool's backends in the ring's order: the same
             * position first, a search only when a reload reordered them. */
            const struct tstats_backend *e = NULL;
            if (first + j < s->nbes && tstats_same(&s->bes[first + j], pool, bes[j])) {
                e = &s->bes[first + j];
            }
            for (uint32_t i = first; e == NULL && i < s->nbes; i++) {
                if (tstats_same(&s->bes[i], pool, bes[j])) {
                    e = &s->bes[i];
                }
            }
            if (e != NULL) {
                visit(j, e, arg);
            }
        }
        pthread_mutex_unlock(&s->lock);
    }
}

static void add_counters(uint32_t j, const struct tstats_backend *e, void *arg)
{
    uint64_t (*out)[STAT_BACKEND_COUNT] = arg;

    for (int k = 0; k < STAT_BACKEND_COUNT; k++) {
        out[j][k] += e->stats[k];
    }
}

void tstats_add_backends(uint32_t self, const char *pool, struct backend *const *bes,
                         uint32_t n, uint64_t (*out)[STAT_BACKEND_COUNT])
{
    each_other_backend(self, pool, bes, n, add_counters, out);
}

/* --- what a backend looks like, merged over the threads -------------------- */

void tstats_live_of(const struct backend *be, struct tstats_live *out)
{
    out->state = be->state;
    out->conns_up = 0;
    out->queued_bytes = 0;
    out->tried = be->state != BACKEND_UP ||
                 be->stats[STAT_BE_connects] + be->stats[STAT_BE_connect_failures] > 0;
    for (uint32_t i = 0; be->conns != NULL && i < be->nconns; i++) {
        const struct bconn *bc = &be->conns[i];
        out->conns_up += bc->state == BCONN_UP;
        out->tried |= bc->state != BCONN_DOWN;
        out->queued_bytes += bc->out != NULL ? evbuffer_get_length(bc->out) : 0;
    }
    out->retry_ms = be->state == BACKEND_EJECTED ? be->retry_ms : 0;
    if (out->dns_error[0] != '\0' || be->dns_error[0] != '\0') {
        memcpy(out->dns_error, be->dns_error, sizeof(out->dns_error));
        out->dns_error[sizeof(out->dns_error) - 1] = '\0';
    }
}

void tstats_live_merge(struct tstats_live *acc, const struct tstats_live *t)
{
    if (acc->state == BACKEND_EJECTED || t->state == BACKEND_EJECTED) {
        uint64_t a = acc->state == BACKEND_EJECTED ? acc->retry_ms : UINT64_MAX;
        uint64_t b = t->state == BACKEND_EJECTED ? t->retry_ms : UINT64_MAX;
        acc->state = BACKEND_EJECTED;
        acc->retry_ms = a < b ? a : b;
    } else if (!acc->tried) {
        acc->state = t->state;      /* acc had no opinion: t's, if any */
    } else if (t->tried && t->state == BACKEND_UP) {
        acc->state = BACKEND_UP;    /* some thread that tried finds it up */
    }
    acc->tried = acc->tried || t->tried;
    acc->conns_up += t->conns_up;
    acc->queued_bytes += t->queued_bytes;
    if (acc->dns_error[0] == '\0') {
        memcpy(acc->dns_error, t->dns_error, sizeof(acc->dns_error));
    }
}

static void merge_live(uint32_t j, const struct tstats_backend *e, void *arg)
{
    struct tstats_live *rows = arg;

    tstats_live_merge(&rows[j], &e->live);
}

struct tstats_live *tstats_backends_live(uint32_t self, const struct pool *p)
{
    struct tstats_live *rows = rp_xcalloc(p->nbackends ? p->nbackends : 1, sizeof(*rows),
                                          "merged backend states");

    for (uint32_t j = 0; j < p->nbackends; j++) {
        tstats_live_of(p->backends[j], &rows[j]);
    }
    each_other_backend(self, p->name, p->backends, p->nbackends, merge_live, rows);
    return rows;
}

const struct tstats_live *tstats_live_row(const struct pool *p, const struct tstats_live *rows,
                                          const struct backend *be, struct tstats_live *own)
{
    if (be->slot < p->nbackends && p->backends[be->slot] == be) {
        return &rows[be->slot];
    }
    memset(own, 0, sizeof(*own));
    tstats_live_of(be, own);
    return own;
}

/* --- client connections per pool, across the threads ---------------------- */

static struct tstats_conns *conns_of(const char *pool)
{
    for (uint32_t i = 0; i < nconns; i++) {
        if (strcmp(conns[i].pool, pool) == 0) {
            return &conns[i];
        }
    }
    conns = grow(conns, &cap_conns, nconns + 1, sizeof(*conns));
    conns[nconns].pool = rp_xstrdup(pool, "a pool's connection count");
    conns[nconns].open = 0;
    conns[nconns].serving = 0;
    return &conns[nconns++];
}

bool tstats_client_admit(const char *pool, uint64_t limit)
{
    bool ok;

    pthread_mutex_lock(&conns_lock);
    struct tstats_conns *c = conns_of(pool);
    ok = limit == 0 || c->open < limit;
    c->open += ok;
    pthread_mutex_unlock(&conns_lock);
    return ok;
}

void tstats_client_left(const char *pool)
{
    pthread_mutex_lock(&conns_lock);
    struct tstats_conns *c = conns_of(pool);
    if (c->open > 0) {
        c->open--;
    }
    pthread_mutex_unlock(&conns_lock);
}

void tstats_pool_serving(const char *pool, uint32_t thread, bool on)
{
    uint64_t bit = thread < 64 ? (uint64_t)1 << thread : 0;

    pthread_mutex_lock(&conns_lock);
    struct tstats_conns *c = conns_of(pool);
    c->serving = on ? c->serving | bit : c->serving & ~bit;
    pthread_mutex_unlock(&conns_lock);
}

uint64_t tstats_pool_servers(const char *pool)
{
    uint64_t mask;

    pthread_mutex_lock(&conns_lock);
    mask = conns_of(pool)->serving;
    pthread_mutex_unlock(&conns_lock);
    return mask;
}

bool tstats_threaded(void)
{
    return nsnaps > 1;
}

/* The base entry of pool name, or NULL (bases_lock held). */
static struct tstats_base *base_find(const char *name)
{
    for (uint32_t i = 0; i < nbases; i++) {
        if (strcmp(bases[i].pool, name) == 0) {
            return &bases[i];
        }
    }
    return NULL;
}

void tstats_pool_reset(struct pool *p, const uint64_t *base)
{
    if (snaps == NULL) {
        memcpy(p->stats_base, base, sizeof(p->stats_base));
        return;
    }
    pthread_mutex_lock(&bases_lock);
    struct tstats_base *e = base_find(p->name);
    if (e == NULL) {
        bases = grow(bases, &cap_bases, nbases + 1, sizeof(*bases));
        e = &bases[nbases++];
        e->pool = rp_xstrdup(p->name, "a counter's name");
    }
    memcpy(e->base, base, sizeof(e->base));
    pthread_mutex_unlock(&bases_lock);
}

void tstats_pool_base(const struct pool *p, uint64_t *base)
{
    if (snaps == NULL) {
        memcpy(base, p->stats_base, sizeof(p->stats_base));
        return;
    }
    pthread_mutex_lock(&bases_lock);
    const struct tstats_base *e = base_find(p->name);
    if (e != NULL) {
        memcpy(base, e->base, sizeof(e->base));
    } else {
        memset(base, 0, sizeof(uint64_t) * STAT_POOL_COUNT);
    }
    pthread_mutex_unlock(&bases_lock);
}

void tstats_pool_sum(uint32_t self, const struct pool *p, uint64_t *out)
{
    memcpy(out, p->stats, sizeof(p->stats));
    tstats_add_pool(self, p->name, out);
}

uint64_t (*tstats_backends_sum(uint32_t self, const struct pool *p))[STAT_BACKEND_COUNT]
{
    uint64_t (*bs)[STAT_BACKEND_COUNT] = rp_xcalloc(p->nbackends ? p->nbackends : 1,
                                                    sizeof(*bs), "summed counters");

    for (uint32_t j = 0; j < p->nbackends; j++) {
        memcpy(bs[j], p->backends[j]->stats, sizeof(bs[j]));
    }
    tstats_add_backends(self, p->name, p->backends, p->nbackends, bs);
    return bs;
}
