/* ring.h — the ketama continuum: build, look up, and diff two rings. */
#ifndef RP_RING_H
#define RP_RING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hash.h"

#define RING_COMPAT_CODEC(X)                      \
    X(LIBMEMCACHED, "libmemcached")               \
    X(LIBKETAMA,    "libketama")

#define RING_COMPAT_ENUM(e, name) RING_COMPAT_##e,
enum ring_compat { RING_COMPAT_CODEC(RING_COMPAT_ENUM) RING_COMPAT_COUNT };
#undef RING_COMPAT_ENUM
extern const char *const ring_compat_names[RING_COMPAT_COUNT];

/* What a ring is built from; the strings are copied. */
struct ring_server_spec {
    const char *identity;   /* decides placement: name, host or host:port */
    const char *addr;       /* where it is reached: host:port or /path.sock */
    uint32_t weight;        /* > 0 */
};

struct ring_params {
    enum ring_compat compat;
    enum hash_kind hash;
    bool has_tag;
    char tag[2];
    const struct ring_server_spec *servers;
    uint32_t nservers;
};

struct ring_server {
    char *identity;
    char *addr;
    uint32_t weight;
    uint32_t npoints;       /* points this server owns on the continuum */
    uint64_t span;          /* hash values it owns, out of 2^32 */
};

struct ring_point {
    uint32_t value;
    uint32_t server;        /* index into ring.servers */
};

/*
 * Immutable once built; shared by reference, so a reload can swap rings
 * while requests finish on the old. The count is atomic: the worker threads
 * (proxy.c, docs/ARCHITECTURE.md "Threads") each hold references to the
 * rings of a reload, taken and dropped on their own threads. The reload
 * thread builds rings nobody else sees yet and hands them over whole when
 * it is joined.
 */
struct ring {
    uint32_t refs;              /* atomic (__atomic builtins) */
    enum ring_compat compat;
    enum hash_kind hash;
    hash_fn hash_fn;
    bool has_tag;
    char tag[2];
    uint32_t nservers;
    struct ring_server *servers;
    uint32_t npoints;
    struct ring_point *points;  /* sorted by value, ties in config order */
};

/* Returns a ring with one reference, or NULL with a reason in err. */
struct ring *ring_build(const struct ring_params *p, char *err, size_t errlen);
struct ring *ring_ref(struct ring *r);
void ring_unref(struct ring *r);                /* NULL is fine */

/* The 32-bit hash a key is placed by (hash_tag applied). */
uint32_t ring_key_hash(const struct ring *r, const char *key, size_t len);

/* Index of the first point >= hash, wrapping to point 0. */
uint32_t ring_find(const struct ring *r, uint32_t hash);

static inline uint32_t ring_server_of(const struct ring *r, uint32_t hash)
{
    return r->points[ring_find(r, hash)].server;
}

/* Server index by identity, or -1. */
int ring_server_index(const struct ring *r, const char *identity);

/*
 * A recorded ring (identities, weights, shape, read from Redis) with each
 * server at the address `local` (a config file's ring) gives its identity:
 * Redis is data, not authority over addresses (docs/ARCHITECTURE.md,
 * "Records in Redis"). A server `local` does not list keeps the recorded
 * address only when follow_unknown (*unknown then names the first such
 * server, else NULL); otherwise NULL is returned, with why. A new reference.
 */
struct ring *ring_relocate(struct ring *rec, const struct ring *local, bool follow_unknown,
                           const char **unknown, char *why, size_t whylen);

/*
 * The difference of two rings, over every elementary arc of their merged
 * points. An arc lists the hashes [first, last] (inclusive; the wrapping arc
 * is split at 2^32) and the point that owns them in each ring. Only arcs
 * whose owner changes are listed: a different server (data moves), or the
 * same server under another point (only index entries move).
 */
struct ring_arc {
    uint32_t first, last;
    uint32_t from;          /* point index in ring a */
    uint32_t to;            /* point index in ring b */
    bool moves;             /* the owning server (identity) changes */
};

struct ring_diff {
    struct ring_arc *arcs;
    size_t narcs;
    uint64_t moved;         /* hash values whose server changes */
    uint64_t reindexed;     /* hash values that only change v-node */
    uint64_t *flow;         /* [i * b->nservers + j]: values from a's i to b's j */
};

int ring_diff(const struct ring *a, const struct ring *b, struct ring_diff *out);
void ring_diff_free(struct ring_diff *d);

#define RING_SPACE 4294967296.0   /* 2^32, for fractions */

#endif
