/*
 * index_cli.c — `ringproxy index stats|check`: what the Redis index of each
 * pool holds, what it costs, and whether it agrees with the backends.
 * Blocking hiredis and plain sockets: these are operator commands, not the
 * data path.
 */
#include <errno.h>
#include <stdbool.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <hiredis/hiredis.h>

#include <event2/event.h>

#include "cli.h"
#include "config.h"
#include "index.h"
#include "layout.h"
#include "proto.h"
#include "metadump.h"
#include "ringrec.h"

bool cli_redis_failed(const redisContext *rc, const redisReply *r,
                      const struct conf_index *ix, const char *what, char *err,
                      size_t errlen)
{
    if (r == NULL) {
        snprintf(err, errlen, "Redis %s: %s: %s", ix->redis.text, what,
                 rc->err ? rc->errstr : "no reply");
        return true;
    }
    if (r->type != REDIS_REPLY_ERROR) {
        return false;
    }
    enum idx_health h = idx_classify_error(r->str);
    snprintf(err, errlen, "Redis %s refused %s: %s (%s: %s)", ix->redis.text, what,
             r->str, idx_health_names[h], idx_health_help[h]);
    return true;
}

/* The thresholds the last connection opened reported (layout.h). */
static struct lay_limits cli_limits = { LAY_ENTRIES_DEFAULT, LAY_VALUE_DEFAULT, false };

const struct lay_limits *cli_index_limits(void)
{
    return &cli_limits;
}

int cli_index_append(redisContext *rc, const char *prefix, const char *op, int n,
                     const char *const *args, const size_t *lens)
{
    const char *argv[LAY_HEAD + 8];
    size_t len[LAY_HEAD + 8];
    char ring[512], nums[2][12];

    if (n > 8) {
        return -1;
    }
    snprintf(ring, sizeof(ring), "%s:ring", prefix);
    lay_head(argv, len, ring, op, &cli_limits, nums);
    for (int i = 0; i < n; i++) {
        argv[LAY_HEAD + i] = args[i];
        len[LAY_HEAD + i] = lens != NULL ? lens[i] : strlen(args[i]);
    }
    return redisAppendCommandArgv(rc, LAY_HEAD + n, argv, len) == REDIS_OK ? 0 : -1;
}

redisReply *cli_index_script(redisContext *rc, const char *prefix, const char *op, int n,
                             const char *const *args, const size_t *lens)
{
    redisReply *r = NULL;

    if (cli_index_append(rc, prefix, op, n, args, lens) != 0 ||
        redisGetReply(rc, (void **)&r) != REDIS_OK) {
        return NULL;
    }
    return r;
}

redisContext *cli_redis_open(const struct conf_index *ix, char *err, size_t errlen)
{
    struct timeval tv = { 5, 0 };
    redisContext *rc = ix->redis.is_unix ?
        redisConnectUnixWithTimeout(ix->redis.host, tv) :
        redisConnectWithTimeout(ix->redis.host, ix->redis.port, tv);
    redisReply *r = NULL;

    if (rc == NULL || rc->err) {
        snprintf(err, errlen, "cannot connect to Redis %s: %s", ix->redis.text,
                 rc ? rc->errstr : "out of memory");
        redisFree(rc);
        return NULL;
    }
    redisSetTimeout(rc, tv);
    if (ix->password != NULL) {
        r = redisCommand(rc, "AUTH %s", ix->password);
        if (r != NULL && r->type == REDIS_REPLY_ERROR &&
            idx_classify_error(r->str) == IDX_H_OK) {
            fprintf(stderr, "note: Redis %s has no password: index.password is not "
                    "needed (%s)\n", ix->redis.text, r->str);
        } else if (cli_redis_failed(rc, r, ix, "AUTH", err, errlen)) {
            goto err;
        }
        freeReplyObject(r);
    }
    if (ix->db != 0) {
        r = redisCommand(rc, "SELECT %lld", (long long)ix->db);
        if (cli_redis_failed(rc, r, ix, "SELECT", err, errlen)) {
            goto err;
        }
        freeReplyObject(r);
    }
    /* Without a password in the file, a Redis that wants one says so here. */
    r = redisCommand(rc, "PING");
    if (cli_redis_failed(rc, r, ix, "PING", err, errlen)) {
        goto err;
    }
    freeReplyObject(r);
    /* The index script (layout.h): a refusal shows in the first command
     * that needs it. CONFIG may be refused: Redis's defaults then. */
    char lerr[256];
    (void)lay_load_sync(rc, lerr, sizeof(lerr));
    lay_limits_default(&cli_limits);
    r = redisCommand(rc, "CONFIG GET %s", LAY_CONFIG_PATTERN);
    lay_limits_parse(&cli_limits, r);
    freeReplyObject(r);
    return rc;
err:
    freeReplyObject(r);
    redisFree(rc);
    return NULL;
}

static void human_bytes(double b, char *buf, size_t len)
{
    const char *unit[] = { "B", "KiB", "MiB", "GiB", "TiB" };
    int u = 0;

    while (b >= 1024 && u < 4) {
        b /= 1024;
        u++;
    }
    snprintf(buf, len, u ? "%.1f %s" : "%.0f %s", b, unit[u]);
}

bool cli_record_matches(const redisReply *rec, const struct ring *r)
{
    const char **kv;
    bool same;

    if (rec == NULL || rec->type != REDIS_REPLY_ARRAY ||
        (kv = calloc(rec->elements + 1, sizeof(*kv))) == NULL) {
        return false;
    }
    for (size_t j = 0; j < rec->elements; j++) {
        kv[j] = rec->element[j]->type == REDIS_REPLY_STRING ? rec->element[j]->str : "";
    }
    same = ringrec_matches(kv, rec->elements, r);
    free(kv);
    return same;
}

/* Returns -1 (with the reason in err) when Redis does not answer. */
static int print_ring_record(redisContext *rc, const struct conf_pool *p,
                             const struct ring *ring, FILE *out, char *err,
                             size_t errlen)
{
    redisReply *h = redisCommand(rc, "HGETALL %s:ring", p->index.prefix);

    if (cli_redis_failed(rc, h, &p->index, "HGETALL <prefix>:ring", err, errlen)) {
        freeReplyObject(h);
        return -1;
    }
    if (h->type != REDIS_REPLY_ARRAY) {
        snprintf(err, errlen, "Redis %s: HGETALL %s:ring: not a hash", p->index.redis.text,
                 p->index.prefix);
        freeReplyObject(h);
        return -1;
    }
    if (h->elements == 0) {
        fprintf(out, "  ring record %s:ring: none yet (written when the proxy "
                "first connects)\n", p->index.prefix);
    } else {
        const char *epoch = "?";
        for (size_t j = 0; j + 1 < h->elements; j += 2) {
            if (strcmp(h->element[j]->str, "epoch") == 0) {
                epoch = h->element[j + 1]->str;
            }
        }
        fprintf(out, "  ring record %s:ring: epoch %s, %s\n", p->index.prefix, epoch,
                cli_record_matches(h, ring) ? "matches this config" :
                "DIFFERS from this config (the data obeys the recorded ring: "
                "a migration is due)");
    }
    freeReplyObject(h);
    return 0;
}

/*
 * The layout in force and how well the sets keep Redis's compact encoding:
 * the share of sets that are listpacks, bytes per key by encoding, and
 * what the thresholds in force imply (docs/ARCHITECTURE.md, "The index").
 */
static void print_layout(redisContext *rc, const struct conf_pool *p, FILE *out,
                         size_t nsets, const uint64_t enc_sets[2], const uint64_t enc_keys[2],
                         const uint64_t enc_mem[2], uint64_t old_keys,
                         const uint64_t lists[3], uint64_t dir_mem, uint64_t largest)
{
    const struct lay_limits *l = cli_index_limits();
    redisReply *r = cli_index_script(rc, p->index.prefix, "layout", 0, NULL, NULL);
    long long layout = r != NULL && r->type == REDIS_REPLY_INTEGER ? r->integer : 0;

    freeReplyObject(r);
    if (layout > 0) {
        fprintf(out, "  layout %lld%s", layout, layout >= 2 ?
                " (sub-sets of a v-node, each a listpack)" : " (one sorted set per v-node)");
    } else {
        fprintf(out, "  layout unknown (the index script was refused)");
    }
    if (layout >= 2 && old_keys > 0) {
        fprintf(out, "; %llu entries still in layout 1 (the sweeper and `index "
                "rebuild` convert them; readers read both)", (unsigned long long)old_keys);
    }
    fprintf(out, "\n  sets: %zu, %llu compact (listpack, %.1f%%), %llu skiplist; "
            "largest %llu entries\n", nsets, (unsigned long long)enc_sets[0],
            nsets ? 100.0 * (double)enc_sets[0] / (double)nsets : 100.0,
            (unsigned long long)enc_sets[1], (unsigned long long)largest);
    for (int k = 0; k < 2; k++) {
        if (enc_keys[k] > 0) {
            fprintf(out, "  %s sets: %llu keys, %.1f bytes/key\n", k ? "skiplist" : "listpack",
                    (unsigned long long)enc_keys[k],
                    (double)enc_mem[k] / (double)enc_keys[k]);
        }
    }
    if (lists[0] > 0) {
        fprintf(out, "  long-key lists: %llu, %llu keys, %.1f bytes/key\n",
                (unsigned long long)lists[0], (unsigned long long)lists[1],
                lists[1] ? (double)lists[2] / (double)lists[1] : 0.0);
    }
    if (dir_mem > 0) {
        fprintf(out, "  directories: %llu bytes\n", (unsigned long long)dir_mem);
    }
    fprintf(out, "  thresholds %s: zset-max-listpack-entries %u, zset-max-listpack-value "
            "%u\n", l->from_redis ? "read from Redis" :
            "assumed (Redis's defaults: CONFIG GET refused)", l->entries, l->value);
    if (layout >= 2) {
        fprintf(out, "  so a sub-set splits at its median before passing %u members "
                "(about %u on average, ~45 bytes/key for keys of 30 bytes), and keys "
                "longer than %u bytes (%llu here) live in a list per sub-range, counted "
                "in its size (about key length + 20 bytes/key)\n", l->entries,
                l->entries * 3 / 4, l->value, (unsigned long long)lists[1]);
    } else if (enc_sets[1] > 0) {
        fprintf(out, "  note: layout 1 sets past %u members use the skiplist encoding, "
                "about 3x the memory per key of a listpack; `ringproxy index rebuild` "
                "converts the index to layout 2, which keeps every set under the "
                "threshold\n", l->entries);
    }
}

static int pool_index_stats(const struct conf_pool *p, FILE *out)
{
    char err[512], key[1024], buf[32];
    struct ring *ring = conf_pool_ring(p, err, sizeof(err));
    redisContext *rc = ring ? cli_redis_open(&p->index, err, sizeof(err)) : NULL;
    int rc_status = 1;

    if (rc == NULL) {
        fprintf(stderr, "pool '%s': %s\n", p->name, err);
        ring_unref(ring);
        return 1;
    }
    fprintf(out, "pool %s: Redis %s db %lld, prefix %s\n", p->name,
            p->index.redis.text, (long long)p->index.db, p->index.prefix);
    if (print_ring_record(rc, p, ring, out, err, sizeof(err)) != 0) {
        fprintf(stderr, "pool '%s': %s\n", p->name, err);
        redisFree(rc);
        ring_unref(ring);
        return 1;
    }

    /* Every set of every v-node (the index script names them: layout.h),
     * then ZCARD, MEMORY USAGE and OBJECT ENCODING of each, pipelined. */
    struct stat_set {
        char *name;
        uint32_t point;
        bool dir, base, list;
    } *sets = NULL;
    size_t nsets = 0, cap = 0;
    uint64_t *keys = calloc(ring->nservers, sizeof(*keys));
    uint64_t *mem = calloc(ring->nservers, sizeof(*mem));
    uint64_t total_keys = 0, total_mem = 0, largest = 0, nonempty = 0;
    uint64_t lists[3] = { 0, 0, 0 };    /* long-key lists: sets, keys, bytes */
    uint64_t old_keys = 0, dir_mem = 0;
    uint64_t enc_keys[2] = { 0, 0 }, enc_mem[2] = { 0, 0 }, enc_sets[2] = { 0, 0 };
    bool *holds = calloc(ring->npoints, sizeof(*holds));
    if (keys == NULL || mem == NULL || holds == NULL) {
        goto done;
    }
    for (uint32_t i = 0; i < ring->npoints; i++) {
        const char *arg[] = { key };
        size_t len[] = { idx_vnode_key(p->index.prefix, ring, i, key, sizeof(key)) };
        cli_index_append(rc, p->index.prefix, "sets", 1, arg, len);
    }
    for (uint32_t i = 0; i < ring->npoints; i++) {
        redisReply *r = NULL;
        if (redisGetReply(rc, (void **)&r) != REDIS_OK) {
            r = NULL;
        }
        if (cli_redis_failed(rc, r, &p->index, "the index script (sets)", err, sizeof(err)) ||
            r->type != REDIS_REPLY_ARRAY) {
            fprintf(stderr, "pool '%s': %s\n", p->name, r != NULL &&
                    r->type != REDIS_REPLY_ARRAY && r->type != REDIS_REPLY_ERROR ?
                    "the index script answered no list of sets" : err);
            freeReplyObject(r);
            goto done;
        }
        idx_vnode_key(p->index.prefix, ring, i, key, sizeof(key));
        for (size_t j = 0; j < r->elements; j++) {
            const redisReply *e = r->element[j];
            if (e->type != REDIS_REPLY_STRING) {
                continue;
            }
            if (nsets == cap) {
                void *n = realloc(sets, (cap = cap ? cap * 2 : 1024) * sizeof(*sets));
                if (n == NULL) {
                    freeReplyObject(r);
                    goto done;
                }
                sets = n;
            }
            sets[nsets] = (struct stat_set){ .name = strndup(e->str, e->len), .point = i,
                                             .dir = strstr(e->str, ":vd:") != NULL,
                                             .base = strcmp(e->str, key) == 0,
                                             .list = lay_is_list(key, e->str, e->len) };
            if (sets[nsets].name != NULL) {
                nsets++;
            }
        }
        freeReplyObject(r);
    }
    for (size_t i = 0; i < nsets; i++) {
        redisAppendCommand(rc, sets[i].list ? "LLEN %s" : "ZCARD %s", sets[i].name);
        redisAppendCommand(rc, "MEMORY USAGE %s SAMPLES 0", sets[i].name);
        redisAppendCommand(rc, "OBJECT ENCODING %s", sets[i].name);
    }
    for (size_t i = 0; i < nsets; i++) {
        redisReply *r[3] = { NULL, NULL, NULL };
        static const char *const what[3] = { "ZCARD", "MEMORY USAGE", "OBJECT ENCODING" };
        bool failed = false;
        for (int k = 0; k < 3; k++) {
            if (redisGetReply(rc, (void **)&r[k]) != REDIS_OK) {
                r[k] = NULL;
            }
            if (!failed && cli_redis_failed(rc, r[k], &p->index, what[k], err,
                                            sizeof(err))) {
                fprintf(stderr, "pool '%s': %s\n", p->name, err);
                failed = true;
            }
        }
        if (failed) {
            for (int k = 0; k < 3; k++) {
                freeReplyObject(r[k]);
            }
            goto done;
        }
        uint32_t srv = ring->points[sets[i].point].server;
        uint64_t n = r[0]->type == REDIS_REPLY_INTEGER ? (uint64_t)r[0]->integer : 0;
        uint64_t bytes = r[1]->type == REDIS_REPLY_INTEGER ? (uint64_t)r[1]->integer : 0;
        bool skiplist = r[2]->type == REDIS_REPLY_STRING && strcmp(r[2]->str, "skiplist") == 0;
        mem[srv] += bytes;
        if (sets[i].list) {
            keys[srv] += n;
            lists[0]++;
            lists[1] += n;
            lists[2] += bytes;
            holds[sets[i].point] |= n > 0;
        } else if (sets[i].dir) {
            enc_sets[skiplist]++;
            dir_mem += bytes;
        } else {
            enc_sets[skiplist]++;
            keys[srv] += n;
            enc_keys[skiplist] += n;
            enc_mem[skiplist] += bytes;
            largest = n > largest ? n : largest;
            holds[sets[i].point] |= n > 0;
            old_keys += sets[i].base ? n : 0;
        }
        for (int k = 0; k < 3; k++) {
            freeReplyObject(r[k]);
        }
    }
    for (uint32_t i = 0; i < ring->npoints; i++) {
        nonempty += holds[i];
    }
    fprintf(out, "  %-24s %8s %12s %12s %10s\n", "server", "v-nodes", "keys",
            "memory", "bytes/key");
    for (uint32_t s = 0; s < ring->nservers; s++) {
        human_bytes((double)mem[s], buf, sizeof(buf));
        fprintf(out, "  %-24s %8u %12llu %12s %10.1f\n", ring->servers[s].identity,
                ring->servers[s].npoints, (unsigned long long)keys[s], buf,
                keys[s] ? (double)mem[s] / (double)keys[s] : 0.0);
        total_keys += keys[s];
        total_mem += mem[s];
    }
    human_bytes((double)total_mem, buf, sizeof(buf));
    fprintf(out, "  total: %u v-nodes (%llu holding keys), %llu indexed keys, %s, "
            "%.1f bytes per indexed key\n", ring->npoints,
            (unsigned long long)nonempty, (unsigned long long)total_keys, buf,
            total_keys ? (double)total_mem / (double)total_keys : 0.0);
    print_layout(rc, p, out, nsets - lists[0], enc_sets, enc_keys, enc_mem, old_keys, lists,
                 dir_mem, largest);
    rc_status = 0;
done:
    for (size_t i = 0; i < nsets; i++) {
        free(sets[i].name);
    }
    free(sets);
    free(holds);
    free(keys);
    free(mem);
    redisFree(rc);
    ring_unref(ring);
    return rc_status;
}

/* A blocking text-protocol connection to a memcached backend. */
static int mc_open(const struct conf_addr *a)
{
    int fd = -1;

    if (a->is_unix) {
        struct sockaddr_un sun = { .sun_family = AF_UNIX };
        snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", a->host);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && connect(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0) {
            close(fd);
            fd = -1;
        }
        return fd;
    }
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res = NULL;
    char port[8];
    snprintf(port, sizeof(port), "%u", a->port);
    if (getaddrinfo(a->host, port, &hints, &res) != 0) {
        return -1;
    }
    fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, res->ai_addr, res->ai_addrlen) != 0) {
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd;
}

/* Does the backend hold key? 1 yes, 0 no, -1 error. Uses meta get "mg". */
static int mc_has(int fd, const char *key, size_t len)
{
    char line[512], reply[64];
    int n = snprintf(line, sizeof(line), "mg %.*s\r\n", (int)len, key);
    size_t got = 0;

    if (write(fd, line, (size_t)n) != n) {
        return -1;
    }
    while (got < sizeof(reply) - 1) {
        ssize_t r = read(fd, reply + got, 1);
        if (r <= 0) {
            return -1;
        }
        if (reply[got++] == '\n') {
            break;
        }
    }
    reply[got] = '\0';
    if (strncmp(reply, "HD", 2) == 0) {
        return 1;
    }
    return strncmp(reply, "EN", 2) == 0 ? 0 : -1;
}


/* --- completeness: what the backends hold against what the index says ------- */

#define CHK_BATCH 1024          /* ZSCOREs pipelined at once */
#define CHK_BUSY_RETRIES 10     /* a crawler busy with another job: every 1 s */
#define CHK_MISSING_SHOWN 5

struct chk;

struct chk_srv {
    struct chk *c;
    uint32_t index;
    struct conf_addr addr;
    struct mdump *dump;
    struct event *retry;
    int busy;
    bool ended;
};

struct chk {
    const struct conf_pool *p;
    redisContext *rc;
    FILE *out;
    const struct ring *ring;
    struct event_base *base;
    struct chk_srv *srv;
    uint32_t running;
    uint64_t held, indexed, missing, misplaced;
    uint32_t pending;                           /* ZSCOREs appended, unread */
    char (*batch)[MDUMP_KEY_MAX + 1];           /* their keys, for the samples */
    uint32_t *batch_srv;
    char shown[CHK_MISSING_SHOWN][MDUMP_KEY_MAX + 300];    /* missing keys, named */
    bool failed;
};

/* Read the replies of the pipelined ZSCOREs. */
static void chk_drain(struct chk *c)
{
    for (uint32_t i = 0; i < c->pending; i++) {
        redisReply *r = NULL;
        if (redisGetReply(c->rc, (void **)&r) != REDIS_OK || r == NULL) {
            if (!c->failed) {
                fprintf(stderr, "pool %s: Redis %s: %s\n", c->p->name,
                        c->p->index.redis.text, c->rc->errstr);
            }
            c->failed = true;
            c->pending = 0;
            event_base_loopbreak(c->base);
            return;
        }
        if (r->type == REDIS_REPLY_ERROR) {
            if (!c->failed) {
                fprintf(stderr, "pool %s: Redis %s refused the index script (score): %s\n", c->p->name,
                        c->p->index.redis.text, r->str);
            }
            c->failed = true;
        } else if (r->type == REDIS_REPLY_NIL) {
            if (c->missing < CHK_MISSING_SHOWN) {
                snprintf(c->shown[c->missing], sizeof(c->shown[0]), "'%s' on %s",
                         c->batch[i], c->ring->servers[c->batch_srv[i]].identity);
            }
            c->missing++;
        } else {
            c->indexed++;
        }
        freeReplyObject(r);
    }
    c->pending = 0;
}

static void chk_key(void *arg, const struct mdump_item *it)
{
    struct chk_srv *s = arg;
    struct chk *c = s->c;
    uint32_t h = ring_key_hash(c->ring, it->key, it->len);
    uint32_t pt = ring_find(c->ring, h);
    char vnode[1024];

    c->held++;
    if (c->failed) {
        return;
    }
    if (c->ring->points[pt].server != s->index) {
        c->misplaced++;
        return;
    }
    char score[16];
    const char *argv[] = { vnode, score, it->key };
    size_t lens[] = { idx_vnode_key(c->p->index.prefix, c->ring, pt, vnode, sizeof(vnode)),
                      (size_t)snprintf(score, sizeof(score), "%u", h), it->len };
    cli_index_append(c->rc, c->p->index.prefix, "score", 3, argv, lens);
    memcpy(c->batch[c->pending], it->key, it->len);
    c->batch[c->pending][it->len] = '\0';
    c->batch_srv[c->pending++] = s->index;
    if (c->pending == CHK_BATCH) {
        chk_drain(c);
    }
}

static void chk_start(struct chk_srv *s);

static void chk_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    chk_start(arg);
}

static void chk_end(void *arg, enum mdump_end how, const char *said)
{
    struct chk_srv *s = arg;
    struct chk *c = s->c;
    const char *id = c->ring->servers[s->index].identity;
    char why[256];

    snprintf(why, sizeof(why), "%s", said);     /* it lives in the dump */
    mdump_free(s->dump);
    s->dump = NULL;
    if (how == MDUMP_BUSY && ++s->busy <= CHK_BUSY_RETRIES) {
        struct timeval tv = { 1, 0 };
        evtimer_add(s->retry, &tv);
        return;
    }
    if (how != MDUMP_DONE) {
        c->failed = true;
        fprintf(stderr, "pool %s: memcached at %s (%s) %s: %s%s\n", c->p->name,
                s->addr.text, id, how == MDUMP_REFUSED ? "refused lru_crawler metadump" :
                how == MDUMP_BUSY ? "stayed busy" : "could not list its keys", why,
                how == MDUMP_REFUSED ? "; needs memcached >= 1.4.31 with the LRU crawler "
                "enabled" : "");
    }
    s->ended = true;
    if (--c->running == 0) {
        event_base_loopbreak(c->base);
    }
}

static void chk_start(struct chk_srv *s)
{
    struct chk *c = s->c;

    s->dump = mdump_start(c->base, NULL, s->addr.host, s->addr.port, s->addr.is_unix,
                          c->p->timeout > 0 ? (uint32_t)c->p->timeout : 0, chk_key,
                          chk_end, s);
    if (s->dump == NULL) {
        chk_end(s, MDUMP_FAILED, "out of memory");
    }
}

/*
 * Every backend's keys (lru_crawler metadump) looked up in their owner's
 * v-node set: how many the index lacks. Stale entries (indexed keys no
 * longer on their owner) are estimated from the sample: listing every set
 * would cost as much as the index. Returns 0, or 1 when Redis or a backend
 * refused.
 */
static int check_completeness(const struct conf_pool *p, redisContext *rc,
                              const struct ring *file, uint64_t entries, long sampled,
                              long gone, FILE *out)
{
    struct chk c = { .p = p, .rc = rc, .out = out };
    char err[512];
    uint64_t epoch = 0;
    struct ring *ring = NULL;
    int status = 1;

    redisReply *r = redisCommand(rc, "HEXISTS %s:migration to", p->index.prefix);
    if (r == NULL || r->type != REDIS_REPLY_INTEGER) {
        fprintf(stderr, "pool %s: Redis %s: %s\n", p->name, p->index.redis.text,
                r == NULL ? rc->errstr : r->type == REDIS_REPLY_ERROR ? r->str :
                "unexpected reply to HEXISTS");
        freeReplyObject(r);
        return 1;
    }
    bool migrating = r->integer == 1;
    freeReplyObject(r);
    if (migrating) {
        fprintf(out, "  completeness: not measured while a migration runs (a key's "
                "owner depends on its arc's progress)\n");
        return 0;
    }
    if ((c.ring = ring = cli_data_ring(rc, p, file, &epoch, err, sizeof(err))) == NULL) {
        fprintf(stderr, "pool %s: %s\n", p->name, err);
        return 1;
    }
    c.srv = calloc(ring->nservers, sizeof(*c.srv));
    c.batch = malloc(CHK_BATCH * sizeof(*c.batch));
    c.batch_srv = malloc(CHK_BATCH * sizeof(*c.batch_srv));
    c.base = event_base_new();
    if (c.srv == NULL || c.batch == NULL || c.batch_srv == NULL || c.base == NULL) {
        fprintf(stderr, "pool %s: out of memory\n", p->name);
        goto out;
    }
    for (uint32_t i = 0; i < ring->nservers; i++) {
        struct chk_srv *s = &c.srv[i];
        const char *why = "invalid";
        s->c = &c;
        s->index = i;
        if (conf_addr_parse(ring->servers[i].addr, &s->addr, &why) != 0 ||
            (s->retry = evtimer_new(c.base, chk_retry, s)) == NULL) {
            fprintf(stderr, "pool %s: server %s: address '%s': %s\n", p->name,
                    ring->servers[i].identity, ring->servers[i].addr, why);
            goto out;
        }
    }
    c.running = ring->nservers;
    for (uint32_t i = 0; i < ring->nservers; i++) {
        chk_start(&c.srv[i]);
    }
    if (c.running > 0) {
        event_base_dispatch(c.base);
    }
    if (!c.failed) {
        chk_drain(&c);
    }
    if (c.failed) {
        goto out;
    }
    uint64_t owned = c.indexed + c.missing;
    fprintf(out, "  completeness (lru_crawler metadump of every backend, ring epoch "
            "%llu): %llu keys held, %llu in the index, %llu missing from it (%.2f%% "
            "complete), %llu on a server that does not own them\n",
            (unsigned long long)epoch, (unsigned long long)c.held,
            (unsigned long long)c.indexed, (unsigned long long)c.missing,
            owned ? 100.0 * (double)c.indexed / (double)owned : 100.0,
            (unsigned long long)c.misplaced);
    if (sampled > 0) {
        fprintf(out, "  stale entries (indexed keys gone from their owner): about "
                "%.0f of %llu (%.1f%% of the sample)\n",
                (double)entries * (double)gone / (double)sampled,
                (unsigned long long)entries, 100.0 * (double)gone / (double)sampled);
    }
    for (uint64_t i = 0; i < c.missing && i < CHK_MISSING_SHOWN; i++) {
        fprintf(out, "  missing from the index: %s\n", c.shown[i]);
    }
    if (c.missing > 0) {
        fprintf(out, "  keys missing from the index are not moved by a resize until "
                "written again: `ringproxy index rebuild` adds them\n");
    }
    status = 0;
out:
    for (uint32_t i = 0; c.srv != NULL && i < ring->nservers; i++) {
        mdump_free(c.srv[i].dump);
        if (c.srv[i].retry != NULL) {
            event_free(c.srv[i].retry);
        }
        conf_addr_free(&c.srv[i].addr);
    }
    if (c.pending > 0 && !c.failed) {
        chk_drain(&c);
    }
    if (c.base != NULL) {
        event_base_free(c.base);
    }
    free(c.srv);
    free(c.batch);
    free(c.batch_srv);
    ring_unref(ring);
    return status;
}

static int pool_index_check(const struct conf_pool *p, long sample, FILE *out)
{
    char err[512], key[1024], want[1024];
    struct ring *ring = conf_pool_ring(p, err, sizeof(err));
    redisContext *rc = ring ? cli_redis_open(&p->index, err, sizeof(err)) : NULL;
    int *fds = NULL;
    long checked = 0, misplaced = 0, wrong_score = 0, present = 0, missing = 0,
         unreachable = 0, not_keys = 0;
    bool failed = false;
    int complete_rc = 1;

    if (rc == NULL) {
        fprintf(stderr, "pool '%s': %s\n", p->name, err);
        ring_unref(ring);
        return 1;
    }
    fds = malloc(ring->nservers * sizeof(*fds));
    for (uint32_t s = 0; fds != NULL && s < ring->nservers; s++) {
        fds[s] = mc_open(&p->servers[s].addr);
    }
    /* Each v-node contributes in proportion to its size (a uniform sample of
     * indexed keys); sets are sized first, in one pipeline. */
    uint64_t *card = calloc(ring->npoints, sizeof(*card)), total = 0;
    for (uint32_t i = 0; card != NULL && i < ring->npoints; i++) {
        const char *arg[] = { key };
        size_t len[] = { idx_vnode_key(p->index.prefix, ring, i, key, sizeof(key)) };
        cli_index_append(rc, p->index.prefix, "card", 1, arg, len);
    }
    for (uint32_t i = 0; card != NULL && i < ring->npoints; i++) {
        redisReply *r = NULL;
        if (redisGetReply(rc, (void **)&r) != REDIS_OK) {
            r = NULL;
        }
        if (!failed && cli_redis_failed(rc, r, &p->index, "the index script (card)", err,
                                        sizeof(err))) {
            fprintf(stderr, "pool '%s': %s\n", p->name, err);
            failed = true;
        }
        if (r == NULL) {
            break;      /* the connection is gone: nothing more to read */
        }
        card[i] = r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
                  r->element[0]->type == REDIS_REPLY_INTEGER ?
                  (uint64_t)r->element[0]->integer : 0;
        total += card[i];
        freeReplyObject(r);
    }
    if (failed) {
        free(card);
        card = NULL;
    }
    if ((uint64_t)sample > total) {
        sample = (long)total;
    }
    srandom((unsigned)getpid() ^ (unsigned)time(NULL));
    uint32_t start = (uint32_t)random() % ring->npoints;
    for (uint32_t k = 0; fds != NULL && card != NULL && k < ring->npoints &&
                         checked < sample; k++) {
        uint32_t i = (start + k) % ring->npoints;
        /* Round up so small sets are sampled too; the total is capped below,
         * starting at a random v-node so the cut falls anywhere. */
        long per = total ? (long)((card[i] * (uint64_t)sample + total - 1) / total) : 0;
        if (per == 0) {
            continue;
        }
        char per_s[24];
        const char *arg[] = { key, per_s };
        size_t len[] = { idx_vnode_key(p->index.prefix, ring, i, key, sizeof(key)),
                         (size_t)snprintf(per_s, sizeof(per_s), "%ld", per) };
        redisReply *r = cli_index_script(rc, p->index.prefix, "sample", 2, arg, len);
        if (cli_redis_failed(rc, r, &p->index, "the index script (sample)", err,
                             sizeof(err))) {
            fprintf(stderr, "pool '%s': %s\n", p->name, err);
            freeReplyObject(r);
            failed = true;
            break;
        }
        for (size_t j = 0; r->type == REDIS_REPLY_ARRAY && j + 1 < r->elements &&
                           checked < sample; j += 2) {
            const char *member = r->element[j]->str;
            size_t mlen = r->element[j]->len;
            if (r->element[j]->type != REDIS_REPLY_STRING || !proto_key_ok(member, mlen)) {
                not_keys++;     /* never sent to memcached, never printed */
                continue;
            }
            uint32_t h = ring_key_hash(ring, member, mlen);
            uint32_t owner = ring_find(ring, h);
            checked++;
            if (strtoull(r->element[j + 1]->str, NULL, 10) != h) {
                wrong_score++;
            }
            idx_vnode_key(p->index.prefix, ring, owner, want, sizeof(want));
            if (strcmp(want, key) != 0) {
                misplaced++;
                if (misplaced <= 5) {
                    fprintf(out, "  misplaced: '%.*s' is in %s, belongs in %s\n",
                            (int)mlen, member, key, want);
                }
            }
            int fd = fds[ring->points[owner].server];
            int has = fd >= 0 ? mc_has(fd, member, mlen) : -1;
            present += has == 1;
            missing += has == 0;
            unreachable += has < 0;
        }
        freeReplyObject(r);
    }
    if (failed) {
        goto out;       /* a count of what could not be read would mislead */
    }
    fprintf(out, "pool %s: checked %ld indexed keys\n", p->name, checked);
    fprintf(out, "  in the right v-node set: %ld, misplaced: %ld, wrong score: %ld\n",
            checked - misplaced, misplaced, wrong_score);
    if (not_keys > 0) {
        fprintf(out, "  members that are not memcached keys (skipped): %ld\n", not_keys);
    }
    fprintf(out, "  on their backend: %ld (%.1f%%), gone (evicted, expired or "
            "deleted around the proxy): %ld, backend unreachable: %ld\n", present,
            checked ? 100.0 * (double)present / (double)checked : 0.0, missing,
            unreachable);
    complete_rc = card != NULL ?
                  check_completeness(p, rc, ring, total, checked, missing, out) : 1;
out:
    for (uint32_t s = 0; fds != NULL && s < ring->nservers; s++) {
        if (fds[s] >= 0) {
            close(fds[s]);
        }
    }
    free(card);
    free(fds);
    redisFree(rc);
    ring_unref(ring);
    return failed || misplaced || wrong_score || not_keys || complete_rc ? 1 : 0;
}

int cli_index(const char *what, const char *path, const char *pool, long sample,
              FILE *out)
{
    struct conf_errors errs;
    struct config *c = config_load(path, &errs);
    int rc = 0, matched = 0;

    for (size_t i = 0; i < errs.n; i++) {
        fprintf(stderr, "%s\n", errs.msgs[i]);
    }
    conf_errors_free(&errs);
    if (c == NULL) {
        return 1;
    }
    for (uint32_t i = 0; i < c->npools; i++) {
        const struct conf_pool *p = &c->pools[i];
        if (pool != NULL && strcmp(p->name, pool) != 0) {
            continue;
        }
        matched++;
        if (!p->index.enabled) {
            fprintf(out, "pool %s: no index configured\n", p->name);
            continue;
        }
        if (strcmp(what, "stats") == 0) {
            rc |= pool_index_stats(p, out);
        } else if (strcmp(what, "rebuild") == 0) {
            rc |= cli_index_rebuild(p, out);
        } else {
            rc |= pool_index_check(p, sample, out);
        }
    }
    config_free(c);
    if (matched == 0) {
        fprintf(stderr, "%s: no pool named '%s'\n", path, pool);
        return 1;
    }
    return rc;
}
