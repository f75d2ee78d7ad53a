/*
 * rebuild_cli.c — `ringproxy index rebuild`: rebuild each pool's index from
 * what its backends hold, in the foreground, with a progress line
 * (docs/ARCHITECTURE.md, "Rebuild and adoption"). The rebuild engine
 * (src/rebuild.h) runs on an event loop of its own; the steps before and
 * after it (the ring record, the migration record, `stats` of each
 * backend) are blocking: an operator command, not the data path.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>

#include "clock.h"
#include "cli.h"
#include "config.h"
#include "index.h"
#include "layout.h"
#include "mconn.h"
#include "rebuild.h"
#include "ringrec.h"

#define RBCLI_PROGRESS_MS 2000
#define RBCLI_SERVERS_SHOWN 8       /* per-server figures on a progress line */
#define RBCLI_STATS_TIMEOUT_SEC 3

/* A reply that is an error, or none: its text (for the message). */
static const char *reply_error(redisContext *rc, const redisReply *r)
{
    if (r == NULL) {
        return rc->err ? rc->errstr : "no reply";
    }
    return r->type == REDIS_REPLY_ERROR ? r->str : NULL;
}

struct ring *cli_data_ring(struct redisContext *rc, const struct conf_pool *p,
                           const struct ring *file, uint64_t *epoch, char *err,
                           size_t errlen)
{
    redisReply *h = redisCommand(rc, "HGETALL %s:ring", p->index.prefix);
    const char *why = reply_error(rc, h);
    struct ring *rec = NULL, *l = NULL;
    const char **kv = NULL;

    *epoch = 0;
    if (why != NULL || h->type != REDIS_REPLY_ARRAY) {
        snprintf(err, errlen, "Redis %s: HGETALL %s:ring: %s", p->index.redis.text,
                 p->index.prefix, why != NULL ? why : "not a hash");
        goto out;
    }
    if (h->elements == 0) {
        l = ring_ref((struct ring *)file);
        goto out;
    }
    if ((kv = calloc(h->elements, sizeof(*kv))) == NULL) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    for (size_t j = 0; j < h->elements; j++) {
        kv[j] = h->element[j]->type == REDIS_REPLY_STRING ? h->element[j]->str : "";
    }
    if ((rec = ringrec_parse(kv, h->elements, epoch)) == NULL) {
        snprintf(err, errlen, "%s:ring is not a ring record this proxy can read",
                 p->index.prefix);
        goto out;
    }
    const char *unknown;
    if ((l = ring_relocate(rec, file, p->migration.follow_unknown, &unknown, err,
                           errlen)) != NULL && unknown != NULL) {
        fprintf(stderr, "warning: server %s is not in this file: using the address Redis "
                "records for it (follow_unknown_servers)\n", unknown);
    }
out:
    free(kv);
    ring_unref(rec);
    freeReplyObject(h);
    return l;
}

/* curr_items of a memcached (blocking, bounded); -1 when it cannot tell. */
static int64_t curr_items(const char *addr_text)
{
    struct conf_addr a;
    struct sockaddr_storage ss;
    const char *why;
    char buf[8192];
    size_t got = 0;
    int len, fd = -1;
    int64_t items = -1;

    if (conf_addr_parse(addr_text, &a, &why) != 0) {
        return -1;
    }
    if (mconn_addr(a.host, a.port, a.is_unix, &ss, &len) != 0 ||
        (fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0) {
        goto out;
    }
    struct timeval tv = { RBCLI_STATS_TIMEOUT_SEC, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&ss, (socklen_t)len) != 0 ||
        write(fd, "stats\r\n", 7) != 7) {
        goto out;
    }
    while (got < sizeof(buf) - 1) {
        ssize_t n = read(fd, buf + got, sizeof(buf) - 1 - got);
        if (n <= 0) {
            break;
        }
        got += (size_t)n;
        buf[got] = '\0';
        if (strstr(buf, "END\r\n") != NULL) {
            break;
        }
    }
    buf[got] = '\0';
    const char *at = strstr(buf, "STAT curr_items ");
    if (at != NULL) {
        items = strtoll(at + 16, NULL, 10);
    }
out:
    if (fd >= 0) {
        close(fd);
    }
    conf_addr_free(&a);
    return items;
}

/* --- the run ------------------------------------------------------------------- */

struct rbcli {
    const struct conf_pool *p;
    redisContext *rc;               /* blocking: the migration record */
    struct event_base *base;
    struct rb *rb;
    int64_t *expected;              /* curr_items per server, -1 unknown */
    uint64_t *last_keys;            /* keys at the last progress line */
    double last_sec;
    bool ended, ok;
    char error[512];
};

static void on_rb_end(void *arg, bool ok, const char *error)
{
    struct rbcli *c = arg;

    c->ended = true;
    c->ok = ok;
    if (!ok) {
        snprintf(c->error, sizeof(c->error), "%s", error);
    }
    event_base_loopbreak(c->base);
}

#define RBCLI_MIGRATION_RUNS "a migration runs: its closing pass covers keys the " \
    "index lacks; run rebuild after it ends"

/*
 * Does a migration run (1), none (0), or Redis cannot tell (-1, why set)?
 * During one, the ring a key obeys depends on its arc's progress: the
 * rebuild cannot know where to index it.
 */
static int migration_runs(struct rbcli *c, char *why, size_t len)
{
    redisReply *r = redisCommand(c->rc, "HEXISTS %s:migration to", c->p->index.prefix);
    const char *err = reply_error(c->rc, r);
    int runs = err == NULL && r->type == REDIS_REPLY_INTEGER && r->integer == 1;

    if (err != NULL) {
        snprintf(why, len, "Redis %s: %s", c->p->index.redis.text, err);
        runs = -1;
    }
    freeReplyObject(r);
    return runs;
}

static void print_progress(struct rbcli *c)
{
    struct rb_server_progress t;
    uint32_t n = rb_servers(c->rb);
    int64_t expected = 0;
    bool known = true;
    double dt = 0;

    rb_totals(c->rb, &t);
    dt = t.elapsed_sec - c->last_sec;
    c->last_sec = t.elapsed_sec;
    for (uint32_t i = 0; i < n; i++) {
        known = known && c->expected[i] >= 0;
        expected += c->expected[i] > 0 ? c->expected[i] : 0;
    }
    double rate = t.elapsed_sec > 0 ? (double)t.keys / t.elapsed_sec : 0;
    fprintf(stderr, "%s: %llu", c->p->name, (unsigned long long)t.keys);
    if (known && expected > 0) {
        double left = (double)expected - (double)t.keys;
        fprintf(stderr, "/%lld keys (%.0f%%), %.0f keys/s", (long long)expected,
                fmin(100.0, 100.0 * (double)t.keys / (double)expected), rate);
        if (left > 0 && rate > 0) {
            fprintf(stderr, ", ~%.0f s left", ceil(left / rate));
        }
    } else {
        fprintf(stderr, " keys, %.0f keys/s", rate);
    }
    for (uint32_t i = 0; i < n && i < RBCLI_SERVERS_SHOWN; i++) {
        struct rb_server_progress s;
        rb_server_progress(c->rb, i, &s);
        double srate = dt > 0 ? (double)(s.keys - c->last_keys[i]) / dt : 0;
        c->last_keys[i] = s.keys;
        fprintf(stderr, " | %s %.0f/s %llu", s.identity, srate, (unsigned long long)s.keys);
        if (c->expected[i] >= 0) {
            fprintf(stderr, "/%lld", (long long)c->expected[i]);
        }
        if (s.state != RB_SRV_DUMPING) {
            fprintf(stderr, " %s", rb_srv_names[s.state]);
        }
    }
    if (n > RBCLI_SERVERS_SHOWN) {
        fprintf(stderr, " | ... %u more servers", n - RBCLI_SERVERS_SHOWN);
    }
    fprintf(stderr, "\n");
}

static void on_progress(evutil_socket_t fd, short what, void *arg)
{
    struct rbcli *c = arg;
    char why[256];

    (void)fd, (void)what;
    if (c->ended) {
        return;
    }
    int runs = migration_runs(c, why, sizeof(why));
    if (runs != 0) {
        c->ended = true;
        snprintf(c->error, sizeof(c->error), "%s", runs < 0 ? why :
                 "a migration began meanwhile: " RBCLI_MIGRATION_RUNS);
        event_base_loopbreak(c->base);
        return;
    }
    print_progress(c);
}

static void print_summary(struct rbcli *c, uint64_t epoch, FILE *out)
{
    struct rb_server_progress t;
    uint32_t n = rb_servers(c->rb);

    rb_totals(c->rb, &t);
    fprintf(out, "pool %s: index rebuilt from ring epoch %llu (%u servers) in %.1f s: "
            "%llu keys indexed (%llu were missing), %llu misplaced, %llu bad, "
            "%.0f keys/s\n", c->p->name, (unsigned long long)epoch, n, t.elapsed_sec,
            (unsigned long long)t.indexed, (unsigned long long)t.added,
            (unsigned long long)t.misplaced, (unsigned long long)t.bad,
            t.elapsed_sec > 0 ? (double)t.keys / t.elapsed_sec : 0.0);
    fprintf(out, "  %-24s %12s %12s %12s %10s %10s\n", "server", "keys", "indexed", "new",
            "misplaced", "keys/s");
    for (uint32_t i = 0; i < n; i++) {
        struct rb_server_progress s;
        rb_server_progress(c->rb, i, &s);
        fprintf(out, "  %-24s %12llu %12llu %12llu %10llu %10.0f\n", s.identity,
                (unsigned long long)s.keys, (unsigned long long)s.indexed,
                (unsigned long long)s.added, (unsigned long long)s.misplaced,
                s.elapsed_sec > 0 ? (double)s.keys / s.elapsed_sec : 0.0);
    }
    for (uint32_t i = 0; i < n; i++) {
        struct rb_server_progress s;
        rb_server_progress(c->rb, i, &s);
        if (s.misplaced > 0) {
            fprintf(out, "  misplaced: %llu keys on %s belong to other servers (e.g. "
                    "'%s', owned by %s): not indexed; the proxies never read them "
                    "there\n", (unsigned long long)s.misplaced, s.identity, s.sample,
                    s.sample_owner);
        }
    }
}

/*
 * Convert the index to layout 2 in place (docs/ARCHITECTURE.md, "The
 * index"): record layout 2, so every writer writes it from its next
 * script on, then move each v-node's layout 1 entries into it, a script
 * of RBCLI_CONVERT_CHUNK entries at a time. Readers read both layouts, so
 * clients and a resize may run meanwhile. 0 or -1 (reason printed).
 */
#define RBCLI_CONVERT_CHUNK "1000"
static int convert_layout(struct rbcli *c, const struct ring *data, FILE *out)
{
    const struct conf_pool *p = c->p;
    const char *two[] = { "2" };
    redisReply *r = cli_index_script(c->rc, p->index.prefix, "layout", 0, NULL, NULL);
    bool was2 = reply_error(c->rc, r) == NULL && r->type == REDIS_REPLY_INTEGER &&
                r->integer == 2;
    const char *refused;
    uint64_t moved = 0;

    freeReplyObject(r);
    r = cli_index_script(c->rc, p->index.prefix, "layout", 1, two, NULL);
    if ((refused = reply_error(c->rc, r)) != NULL) {
        fprintf(stderr, "pool %s: Redis %s refused to record layout 2: %s\n", p->name,
                p->index.redis.text, refused);
        freeReplyObject(r);
        return -1;
    }
    freeReplyObject(r);
    if (!was2) {
        /* Writers follow a layout they learnt up to LAY_DIR_TTL_MS ago
         * (index.c): entries converted before they all switched would
         * be joined in layout 1 by their last writes. */
        struct timespec ts = { (LAY_DIR_TTL_MS + 1000) / 1000,
                               (LAY_DIR_TTL_MS + 1000) % 1000 * 1000000L };
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
        }
    }
    for (uint32_t i = 0; i < data->npoints; i++) {
        char key[1024];
        const char *arg[] = { key, RBCLI_CONVERT_CHUNK };
        size_t len[] = { idx_vnode_key(p->index.prefix, data, i, key, sizeof(key)),
                         strlen(RBCLI_CONVERT_CHUNK) };
        for (;;) {
            r = cli_index_script(c->rc, p->index.prefix, "convert", 2, arg, len);
            if ((refused = reply_error(c->rc, r)) != NULL) {
                fprintf(stderr, "pool %s: Redis %s refused to convert %s: %s\n", p->name,
                        p->index.redis.text, key, refused);
                freeReplyObject(r);
                return -1;
            }
            long long n = r->type == REDIS_REPLY_INTEGER ? r->integer : 0;
            freeReplyObject(r);
            if (n <= 0) {
                break;
            }
            moved += (uint64_t)n;
        }
    }
    if (moved > 0) {
        fprintf(out, "pool %s: converted %llu index entries to layout 2\n", p->name,
                (unsigned long long)moved);
        fflush(out);
    }
    return 0;
}

int cli_index_rebuild(const struct conf_pool *p, FILE *out)
{
    struct rbcli c = { .p = p };
    char err[512], why[256], index_key[512] = "", mark[64] = "";
    struct ring *file = conf_pool_ring(p, err, sizeof(err)), *data = NULL;
    struct event *tick = NULL;
    uint64_t epoch = 0;
    int status = 1;

    c.rc = file ? cli_redis_open(&p->index, err, sizeof(err)) : NULL;
    if (c.rc == NULL) {
        fprintf(stderr, "pool %s: %s\n", p->name, err);
        goto out;
    }
    redisReply *r = redisCommand(c.rc, "PING");
    const char *refused = reply_error(c.rc, r);
    if (refused != NULL) {
        fprintf(stderr, "pool %s: Redis %s refused: %s\n", p->name, p->index.redis.text,
                refused);
        freeReplyObject(r);
        goto out;
    }
    freeReplyObject(r);
    int runs = migration_runs(&c, why, sizeof(why));
    if (runs != 0) {
        fprintf(stderr, "pool %s: %s\n", p->name, runs < 0 ? why : RBCLI_MIGRATION_RUNS);
        goto out;
    }
    if ((data = cli_data_ring(c.rc, p, file, &epoch, err, sizeof(err))) == NULL) {
        fprintf(stderr, "pool %s: %s\n", p->name, err);
        goto out;
    }
    if (epoch == 0) {
        /* Nothing recorded: the data obeys this file's ring, from now on
         * for every proxy too. */
        char *fields[RINGREC_FIELDS * 2], ring_key[512];
        int nf = ringrec_fields(file, 1, fields);
        const char *argv[5 + RINGREC_FIELDS * 2] = { "EVAL", RB_FIRST_RECORD_SCRIPT, "2",
                                                     ring_key, index_key };
        if (nf < 0) {
            fprintf(stderr, "pool %s: out of memory\n", p->name);
            goto out;
        }
        snprintf(ring_key, sizeof(ring_key), "%s:ring", p->index.prefix);
        snprintf(index_key, sizeof(index_key), "%s:index", p->index.prefix);
        for (int i = 0; i < nf; i++) {
            argv[5 + i] = fields[i];
        }
        r = redisCommandArgv(c.rc, 5 + nf, argv, NULL);
        ringrec_fields_free(fields, nf);
        if ((refused = reply_error(c.rc, r)) != NULL) {
            fprintf(stderr, "pool %s: Redis %s refused to record the ring: %s\n", p->name,
                    p->index.redis.text, refused);
            freeReplyObject(r);
            goto out;
        }
        bool wrote = r->type == REDIS_REPLY_INTEGER && r->integer == 1;
        freeReplyObject(r);
        ring_unref(data);
        if ((data = cli_data_ring(c.rc, p, file, &epoch, err, sizeof(err))) == NULL) {
            fprintf(stderr, "pool %s: %s\n", p->name, err);
            goto out;
        }
        if (wrote) {
            fprintf(out, "pool %s: no ring record yet: recorded this file's ring as the "
                    "one the data obeys (%s:ring, epoch %llu)\n", p->name, p->index.prefix,
                    (unsigned long long)epoch);
            fflush(out);    /* before the progress lines on stderr */
        }
    } else {
        char fa[RINGREC_FP_SIZE], fb[RINGREC_FP_SIZE];
        ringrec_fingerprint(data, fa);
        ringrec_fingerprint(file, fb);
        if (strcmp(fa, fb) != 0) {
            fprintf(out, "pool %s: the data obeys the recorded ring (epoch %llu), not this "
                    "file's: rebuilding by the recorded one\n", p->name,
                    (unsigned long long)epoch);
            fflush(out);
        }
    }
    c.expected = calloc(data->nservers, sizeof(*c.expected));
    c.last_keys = calloc(data->nservers, sizeof(*c.last_keys));
    c.base = event_base_new();
    tick = c.base ? event_new(c.base, -1, EV_PERSIST, on_progress, &c) : NULL;
    if (c.expected == NULL || c.last_keys == NULL || tick == NULL) {
        fprintf(stderr, "pool %s: out of memory\n", p->name);
        goto out;
    }
    for (uint32_t i = 0; i < data->nservers; i++) {
        c.expected[i] = curr_items(data->servers[i].addr);
    }
    /* A mark that Redis losing its data (FLUSHALL, a restart without
     * persistence) takes with the entries added so far: `done` then must
     * not be written. */
    snprintf(index_key, sizeof(index_key), "%s:index", p->index.prefix);
    snprintf(mark, sizeof(mark), "rebuild:cli:%ld:%llu", (long)getpid(),
             (unsigned long long)rp_clock_ms());
    r = redisCommand(c.rc, "HSET %s %s 1", index_key, mark);
    if ((refused = reply_error(c.rc, r)) != NULL) {
        fprintf(stderr, "pool %s: Redis %s refused to mark the rebuild: %s\n", p->name,
                p->index.redis.text, refused);
        freeReplyObject(r);
        mark[0] = '\0';
        goto out;
    }
    freeReplyObject(r);
    if (convert_layout(&c, data, out) != 0) {
        goto out;
    }
    struct rb_params params = {
        .base = c.base, .pool = p->name, .index = &p->index, .ring = data,
        .rate = 0, .timeout_ms = p->timeout > 0 ? (uint32_t)p->timeout : 0,
        .on_end = on_rb_end, .arg = &c,
    };
    if ((c.rb = rb_start(&params, err, sizeof(err))) == NULL) {
        fprintf(stderr, "pool %s: %s\n", p->name, err);
        goto out;
    }
    struct timeval tv = { RBCLI_PROGRESS_MS / 1000, (RBCLI_PROGRESS_MS % 1000) * 1000 };
    event_add(tick, &tv);
    uint64_t start = rp_clock_ms();
    event_base_dispatch(c.base);
    if (!c.ended || !c.ok) {
        fprintf(stderr, "pool %s: index rebuild failed after %.1f s: %s\n", p->name,
                (double)(rp_clock_ms() - start) / 1000.0,
                c.error[0] ? c.error : "stopped");
        goto out;
    }
    struct rb_server_progress t;
    char keys[32], lock_key[512];
    rb_totals(c.rb, &t);
    snprintf(keys, sizeof(keys), "%llu", (unsigned long long)t.indexed);
    snprintf(lock_key, sizeof(lock_key), "%s:index:rebuild:lock", p->index.prefix);
    const char *argv[] = { "EVAL", RB_DONE_SCRIPT, "2", index_key, lock_key, keys, "",
                           mark };
    r = redisCommandArgv(c.rc, 8, argv, NULL);
    if ((refused = reply_error(c.rc, r)) != NULL) {
        fprintf(stderr, "pool %s: Redis %s refused to record the rebuild as done: %s\n",
                p->name, p->index.redis.text, refused);
        freeReplyObject(r);
        goto out;
    }
    mark[0] = '\0';    /* removed by the script, or gone */
    if (r->type == REDIS_REPLY_INTEGER && r->integer == 2) {
        fprintf(stderr, "pool %s: Redis %s lost its data during the rebuild (FLUSHALL, or "
                "a restart without persistence): the entries added before are gone; "
                "not recorded as done: run it again\n", p->name, p->index.redis.text);
        freeReplyObject(r);
        goto out;
    }
    freeReplyObject(r);
    print_summary(&c, epoch, out);
    status = 0;
out:
    if (mark[0] != '\0' && c.rc != NULL && c.rc->err == 0) {
        freeReplyObject(redisCommand(c.rc, "HDEL %s %s", index_key, mark));
    }
    rb_free(c.rb);
    if (tick != NULL) {
        event_free(tick);
    }
    if (c.base != NULL) {
        event_base_free(c.base);
    }
    free(c.expected);
    free(c.last_keys);
    if (c.rc != NULL) {
        redisFree(c.rc);
    }
    ring_unref(data);
    ring_unref(file);
    return status;
}

