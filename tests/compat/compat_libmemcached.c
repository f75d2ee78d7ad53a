/*
 * compat_libmemcached.c — ringproxy places every key where libmemcached does.
 *
 * For each server set, a pool file is written and loaded through config_load
 * and conf_pool_ring (so the identity rule is tested end to end), and the same
 * servers are added, in the same order, to a libmemcached (Debian's 1.1.4)
 * handle in weighted ketama mode. Then, for 100,000+ keys per set, libmemcached's
 * memcached_generate_hash() (the server index) must equal our
 * ring_server_of(ring, ring_key_hash(...)). libmemcached never connects to
 * compute a placement, so named servers are added as a host of that name on
 * port 11211 (where libmemcached hashes the host alone, as we hash the name).
 *
 * What libmemcached 1.1.4 needs, in this order (behavior.cc):
 *   DISTRIBUTION = CONSISTENT_KETAMA   clears the weighted flag,
 *   KETAMA_WEIGHTED = 1                sets key and distribution hash to MD5
 *                                      and distribution CONSISTENT_WEIGHTED,
 *   HASH = <key hash>                  the key hash (after KETAMA_WEIGHTED,
 *                                      which would reset it to MD5),
 *   KETAMA_HASH = MD5                  unused by the weighted continuum (its
 *                                      points are always MD5), set anyway.
 * Setting DISTRIBUTION last would silently turn weighting off for sets whose
 * weights are all 1, so the program checks the behaviours it ends up with.
 *
 * Prints one line per set and "compat: N passed, M failed"; exits non-zero on
 * any failure.
 */
#include <libmemcached/memcached.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "ring.h"

#define KEYS_PER_SET 100000
#define MAX_SERVERS 64

struct server {
    char host[64];
    unsigned port;
    uint32_t weight;
    char name[32];          /* "" for none */
};

struct server_set {
    char label[64];
    const char *hash;       /* our config name */
    memcached_hash_t mhash; /* libmemcached's */
    struct server servers[MAX_SERVERS];
    uint32_t n;
};

static int passed, failed;

/* Deterministic keys and weights (splitmix64). */
static uint64_t rng_state = UINT64_C(0xc0ffee);

static uint64_t rng_next(void)
{
    uint64_t z = (rng_state += UINT64_C(0x9e3779b97f4a7c15));

    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static void add_server(struct server_set *s, const char *host, unsigned port,
                       uint32_t weight, const char *name)
{
    struct server *sv = &s->servers[s->n++];

    snprintf(sv->host, sizeof(sv->host), "%s", host);
    sv->port = port;
    sv->weight = weight;
    snprintf(sv->name, sizeof(sv->name), "%s", name ? name : "");
}

static void set_init(struct server_set *s, const char *hash, memcached_hash_t mhash,
                     const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static void set_init(struct server_set *s, const char *hash, memcached_hash_t mhash,
                     const char *fmt, ...)
{
    va_list ap;

    memset(s, 0, sizeof(*s));
    va_start(ap, fmt);
    vsnprintf(s->label, sizeof(s->label), fmt, ap);
    va_end(ap);
    s->hash = hash;
    s->mhash = mhash;
}

/* Our side: the set as a pool file, through the config loader. */
static struct ring *our_ring(const struct server_set *s)
{
    char path[] = "/tmp/compat_libmemcached_XXXXXX";
    int fd = mkstemp(path);
    struct conf_errors errs;
    struct ring *r = NULL;
    char err[256];

    if (fd < 0) {
        perror("mkstemp");
        return NULL;
    }
    FILE *f = fdopen(fd, "w");
    if (f == NULL) {
        perror("fdopen");
        close(fd);
        unlink(path);
        return NULL;
    }
    fprintf(f, "compat:\n  listen: 127.0.0.1:22121\n  hash: %s\n"
            "  distribution: ketama\n  compat: libmemcached\n  servers:\n", s->hash);
    for (uint32_t i = 0; i < s->n; i++) {
        const struct server *sv = &s->servers[i];
        if (sv->name[0] != '\0') {
            /* The address is irrelevant to placement: the name decides. */
            fprintf(f, "    - 192.0.2.%u:%u:%u %s\n", i + 1, 11300 + i, sv->weight,
                    sv->name);
        } else {
            /* an IPv6 address goes in brackets in our file, bare to libmemcached */
            const char *lb = strchr(sv->host, ':') ? "[" : "";
            const char *rb = *lb ? "]" : "";
            if (i % 2 == 0) {
                fprintf(f, "    - \"%s%s%s:%u:%u\"\n", lb, sv->host, rb, sv->port,
                        sv->weight);
            } else {
                fprintf(f, "    - {addr: \"%s%s%s:%u\", weight: %u}\n", lb, sv->host,
                        rb, sv->port, sv->weight);
            }
        }
    }
    fclose(f);

    struct config *c = config_load(path, &errs);
    unlink(path);
    if (c == NULL) {
        for (size_t i = 0; i < errs.n; i++) {
            fprintf(stderr, "  %s\n", errs.msgs[i]);
        }
        conf_errors_free(&errs);
        return NULL;
    }
    r = conf_pool_ring(&c->pools[0], err, sizeof(err));
    if (r == NULL) {
        fprintf(stderr, "  ring: %s\n", err);
    }
    config_free(c);
    return r;
}

/* libmemcached's side, configured as described at the top. */
static memcached_st *their_handle(const struct server_set *s)
{
    memcached_st *m = memcached_create(NULL);
    memcached_return_t rc;

    if (m == NULL) {
        return NULL;
    }
    rc = memcached_behavior_set(m, MEMCACHED_BEHAVIOR_DISTRIBUTION,
                                MEMCACHED_DISTRIBUTION_CONSISTENT_KETAMA);
    if (rc == MEMCACHED_SUCCESS) {
        rc = memcached_behavior_set(m, MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED, 1);
    }
    if (rc == MEMCACHED_SUCCESS) {
        rc = memcached_behavior_set(m, MEMCACHED_BEHAVIOR_HASH, s->mhash);
    }
    if (rc == MEMCACHED_SUCCESS) {
        rc = memcached_behavior_set(m, MEMCACHED_BEHAVIOR_KETAMA_HASH,
                                    MEMCACHED_HASH_MD5);
    }
    for (uint32_t i = 0; i < s->n && rc == MEMCACHED_SUCCESS; i++) {
        const struct server *sv = &s->servers[i];
        rc = sv->name[0] != '\0' ?
             memcached_server_add_with_weight(m, sv->name, 11211, sv->weight) :
             memcached_server_add_with_weight(m, sv->host, (in_port_t)sv->port,
                                              sv->weight);
    }
    if (rc != MEMCACHED_SUCCESS) {
        fprintf(stderr, "  libmemcached: %s\n", memcached_strerror(m, rc));
        memcached_free(m);
        return NULL;
    }
    /* What we compare against must really be weighted ketama with our hash. */
    if (memcached_behavior_get(m, MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED) != 1 ||
        memcached_behavior_get(m, MEMCACHED_BEHAVIOR_HASH) != (uint64_t)s->mhash ||
        memcached_server_count(m) != s->n) {
        fprintf(stderr, "  libmemcached: weighted=%llu hash=%llu servers=%u, "
                "expected 1, %d, %u\n",
                (unsigned long long)memcached_behavior_get(
                    m, MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED),
                (unsigned long long)memcached_behavior_get(m, MEMCACHED_BEHAVIOR_HASH),
                memcached_server_count(m), (int)s->mhash, s->n);
        memcached_free(m);
        return NULL;
    }
    return m;
}

/* Key i: printable shapes, and raw bytes (>= 0x80 included, NUL too). */
static size_t make_key(uint32_t i, char *key, size_t cap)
{
    switch (i % 4) {
    case 0:
        return (size_t)snprintf(key, cap, "key:%u", i);
    case 1:
        return (size_t)snprintf(key, cap, "user:%u:profile:%llx", i,
                                (unsigned long long)rng_next());
    case 2:
        return (size_t)snprintf(key, cap, "%u", i);
    default: {
        size_t len = 1 + (size_t)(rng_next() % 64);
        for (size_t k = 0; k < len && k < cap; k++) {
            key[k] = (char)(rng_next() & 0xff);
        }
        return len < cap ? len : cap;
    }
    }
}

static void print_key(const char *key, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)key[i];
        if (c >= 0x20 && c < 0x7f && c != '\\') {
            putchar(c);
        } else {
            printf("\\x%02x", c);
        }
    }
}

static void report_mismatch(const struct ring *r, const char *key, size_t len,
                            uint32_t theirs, uint32_t ours)
{
    uint32_t h = ring_key_hash(r, key, len);
    uint32_t p = ring_find(r, h);
    uint32_t prev = p == 0 ? r->npoints - 1 : p - 1;

    printf("  first mismatch: key \"");
    print_key(key, len);
    printf("\" (%zu bytes), hash %u\n", len, h);
    printf("  libmemcached says server %u (%s), we say %u (%s)\n", theirs,
           theirs < r->nservers ? r->servers[theirs].identity : "?", ours,
           r->servers[ours].identity);
    printf("  our points around it: [%u] %u %s, [%u] %u %s\n", prev,
           r->points[prev].value, r->servers[r->points[prev].server].identity, p,
           r->points[p].value, r->servers[r->points[p].server].identity);
    for (uint32_t i = 0; i < r->nservers; i++) {
        printf("  server %u %s weight %u: %u points\n", i, r->servers[i].identity,
               r->servers[i].weight, r->servers[i].npoints);
    }
}

static void compare(const struct server_set *s)
{
    struct ring *r = our_ring(s);
    memcached_st *m = their_handle(s);
    uint32_t mismatches = 0;
    char key[256];

    if (r == NULL || m == NULL) {
        printf("FAIL %s: could not build both sides\n", s->label);
        failed++;
        goto done;
    }
    rng_state = UINT64_C(0xc0ffee) ^ s->n;
    for (uint32_t i = 0; i < KEYS_PER_SET; i++) {
        size_t len = make_key(i, key, sizeof(key));
        uint32_t theirs = memcached_generate_hash(m, key, len);
        uint32_t ours = ring_server_of(r, ring_key_hash(r, key, len));
        if (theirs != ours) {
            if (mismatches++ == 0) {
                printf("FAIL %s\n", s->label);
                report_mismatch(r, key, len, theirs, ours);
            }
        }
    }
    if (mismatches > 0) {
        printf("  %u of %d keys disagree\n", mismatches, KEYS_PER_SET);
        failed++;
    } else {
        printf("ok   %s: %d keys agree (%u servers, %u points)\n", s->label,
               KEYS_PER_SET, r->nservers, r->npoints);
        passed++;
    }
done:
    ring_unref(r);
    if (m != NULL) {
        memcached_free(m);
    }
}

static void equal_set(uint32_t n, unsigned port)
{
    static struct server_set s;

    set_init(&s, "md5", MEMCACHED_HASH_MD5, "equal weights, n=%u, port %u", n, port);
    for (uint32_t i = 0; i < n; i++) {
        char host[32];
        snprintf(host, sizeof(host), "10.0.%u.%u", i / 200, i % 200 + 1);
        add_server(&s, host, port, 1, NULL);
    }
    compare(&s);
}

/* libketama's test weights, on ports 11211 and others alternately. */
static void mixed_set(struct server_set *s, const char *hash, memcached_hash_t mhash)
{
    static const uint32_t w[] = { 600, 300, 200, 350, 1000, 800, 950, 100 };

    set_init(s, hash, mhash, "mixed weights and ports, key hash %s", hash);
    for (uint32_t i = 0; i < 8; i++) {
        char host[32];
        snprintf(host, sizeof(host), "10.0.1.%u", i + 1);
        add_server(s, host, i % 2 ? 11211 + 100 * i : 11211, w[i], NULL);
    }
}

int main(void)
{
    static struct server_set s;

    printf("libmemcached %s vs ringproxy, %d keys per set\n",
           memcached_lib_version(), KEYS_PER_SET);

    equal_set(3, 11211);
    equal_set(4, 11212);
    equal_set(24, 11211);
    equal_set(25, 11211);       /* 156 points per server */
    equal_set(25, 11213);
    equal_set(47, 11211);
    equal_set(50, 11211);

    mixed_set(&s, "md5", MEMCACHED_HASH_MD5);
    compare(&s);

    set_init(&s, "md5", MEMCACHED_HASH_MD5, "named servers, mixed weights");
    static const uint32_t nw[] = { 1, 2, 3, 1, 5, 10 };
    for (uint32_t i = 0; i < 6; i++) {
        char name[16];
        snprintf(name, sizeof(name), "mc%u", i + 1);
        add_server(&s, "unused", 0, nw[i], name);
    }
    compare(&s);

    set_init(&s, "md5", MEMCACHED_HASH_MD5, "names and addresses mixed");
    add_server(&s, "cache-a.example", 11211, 3, NULL);
    add_server(&s, "unused", 0, 2, "cache-b");
    add_server(&s, "cache-c.example", 11999, 1, NULL);
    add_server(&s, "127.0.0.1", 11211, 2, NULL);
    compare(&s);

    /* IPv6: libmemcached hashes the bare address, then ":port" off 11211. */
    set_init(&s, "md5", MEMCACHED_HASH_MD5, "IPv6 addresses, mixed ports and weights");
    add_server(&s, "::1", 11211, 2, NULL);
    add_server(&s, "fd00::2", 11212, 1, NULL);
    add_server(&s, "2001:db8::10", 11211, 3, NULL);
    add_server(&s, "2001:db8::11", 12000, 1, NULL);
    add_server(&s, "10.0.0.9", 11212, 2, NULL);
    compare(&s);

    rng_state = 47;
    set_init(&s, "md5", MEMCACHED_HASH_MD5, "n=40, random weights 1..100");
    for (uint32_t i = 0; i < 40; i++) {
        char host[32];
        snprintf(host, sizeof(host), "192.168.%u.%u", i / 10, i % 10 + 1);
        add_server(&s, host, i % 3 ? 11211 : 12000 + i, 1 + (uint32_t)(rng_next() % 100),
                   NULL);
    }
    compare(&s);

    /* The same ring with every other key hash libmemcached shares with us. */
    static const struct { const char *name; memcached_hash_t h; } hashes[] = {
        { "fnv1a_64", MEMCACHED_HASH_FNV1A_64 },   /* twemproxy's default */
        { "fnv1_64", MEMCACHED_HASH_FNV1_64 },
        { "fnv1a_32", MEMCACHED_HASH_FNV1A_32 },
        { "fnv1_32", MEMCACHED_HASH_FNV1_32 },
        { "crc32", MEMCACHED_HASH_CRC },
        { "one_at_a_time", MEMCACHED_HASH_DEFAULT },
        { "murmur", MEMCACHED_HASH_MURMUR },
        { "jenkins", MEMCACHED_HASH_JENKINS },
    };
    for (size_t i = 0; i < sizeof(hashes) / sizeof(hashes[0]); i++) {
        mixed_set(&s, hashes[i].name, hashes[i].h);
        compare(&s);
    }

    printf("compat: %d passed, %d failed\n", passed, failed);
    return failed == 0 && passed > 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
