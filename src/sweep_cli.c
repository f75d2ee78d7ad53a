/*
 * sweep_cli.c — `ringproxy index sweep`: one pass of the index sweeper
 * (src/sweep.c) in the foreground, on its own event loop, with a progress
 * line on stderr every two seconds and a summary on stdout
 * (docs/ARCHITECTURE.md, "The sweeper").
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>

#include "clock.h"
#include "cli.h"
#include "config.h"
#include "index.h"
#include "log.h"
#include "ringrec.h"
#include "sweep.h"

#define SWEEP_CLI_TICK_MS 50
#define SWEEP_CLI_PROGRESS_MS 2000

struct run {
    const char *pool;
    struct event_base *base;
    struct sweep *s;
    struct sweep_env env;
    uint64_t started, next_progress, last_checked, last_at;
    uint64_t before;            /* entries when the pass began (0: unknown) */
    bool interrupted;
};


/*
 * Entries in every v-node set of the recorded ring (ZCARD, pipelined), or
 * -1 when Redis cannot tell. 0 sets when there is no record.
 */
static int count_entries(redisContext *rc, const char *prefix, uint64_t *total,
                         uint32_t *sets)
{
    redisReply *h = redisCommand(rc, "HGETALL %s:ring", prefix);
    struct ring *r = NULL;
    uint64_t epoch;
    int rc_status = -1;

    *total = 0;
    *sets = 0;
    if (h == NULL || h->type != REDIS_REPLY_ARRAY) {
        goto out;
    }
    if (h->elements == 0) {
        rc_status = 0;
        goto out;
    }
    const char **kv = calloc(h->elements, sizeof(*kv));
    for (size_t j = 0; kv != NULL && j < h->elements; j++) {
        kv[j] = h->element[j]->type == REDIS_REPLY_STRING ? h->element[j]->str : "";
    }
    r = kv != NULL ? ringrec_parse(kv, h->elements, &epoch) : NULL;
    free(kv);
    if (r == NULL) {
        goto out;
    }
    for (uint32_t i = 0; i < r->npoints; i++) {
        char key[1024];
        const char *arg[] = { key };
        size_t len[] = { idx_vnode_key(prefix, r, i, key, sizeof(key)) };
        cli_index_append(rc, prefix, "card", 1, arg, len);   /* every layout: layout.h */
    }
    for (uint32_t i = 0; i < r->npoints; i++) {
        redisReply *z = NULL;
        if (redisGetReply(rc, (void **)&z) != REDIS_OK) {
            goto out;
        }
        *total += z->type == REDIS_REPLY_ARRAY && z->elements == 2 &&
                  z->element[0]->type == REDIS_REPLY_INTEGER && z->element[0]->integer > 0 ?
                  (uint64_t)z->element[0]->integer : 0;
        freeReplyObject(z);
    }
    *sets = r->npoints;
    rc_status = 0;
out:
    freeReplyObject(h);
    ring_unref(r);
    return rc_status;
}

static void progress(struct run *r, uint64_t now)
{
    struct sweep_progress pr;
    char a[32], b[32], c[32];

    sweep_progress(r->s, &pr);
    double secs = (double)(now - r->last_at) / 1000.0;
    double rate = secs > 0 ? (double)(pr.pass_checked - r->last_checked) / secs : 0;
    r->last_checked = pr.pass_checked;
    r->last_at = now;
    if (pr.state == SWEEP_ANNOUNCING) {
        fprintf(stderr, "sweep %s: waiting until every live proxy saw the sweeper "
                "(a proxy that does not sync is waited for up to its liveness)\n", r->pool);
        return;
    }
    if (pr.state != SWEEP_SWEEPING || pr.npoints == 0) {
        return;
    }
    fprintf(stderr, "sweep %s: %u/%u sets (%.1f%%), %s", r->pool, pr.point, pr.npoints,
            100.0 * pr.point / pr.npoints, cli_fmt_count((double)pr.pass_checked, a, sizeof(a)));
    if (r->before > 0) {
        fprintf(stderr, " of ~%s", cli_fmt_count((double)r->before, b, sizeof(b)));
    }
    fprintf(stderr, " entries looked at (%.0f/s), %s removed", rate,
            cli_fmt_count((double)pr.pass_removed, c, sizeof(c)));
    if (r->before > pr.pass_checked && rate > 0) {
        fprintf(stderr, ", ~%.0f s left", (double)(r->before - pr.pass_checked) / rate);
    }
    fprintf(stderr, "\n");
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct run *r = arg;
    uint64_t now = rp_clock_ms();

    (void)fd, (void)what;
    sweep_tick(r->s, now, &r->env);
    if (now >= r->next_progress) {
        r->next_progress = now + SWEEP_CLI_PROGRESS_MS;
        progress(r, now);
    }
    enum sweep_state st = sweep_get_state(r->s);
    if ((st == SWEEP_DONE || st == SWEEP_FAILED || r->interrupted) && sweep_left(r->s)) {
        event_base_loopbreak(r->base);
    }
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct run *r = arg;

    (void)what;
    if (!r->interrupted) {
        fprintf(stderr, "sweep %s: %s: stopping (entries being removed are looked at "
                "once more first)\n", r->pool, sig == SIGINT ? "SIGINT" : "SIGTERM");
    }
    r->interrupted = true;
    sweep_leave(r->s);
}

static void summary(const struct run *r, const struct conf_pool *p, uint64_t after,
                    bool counted, FILE *out)
{
    const uint64_t *st = sweep_stats(r->s);
    struct sweep_progress pr;
    char n[8][32];
    double secs = (double)(rp_clock_ms() - r->started) / 1000.0;
    uint64_t removed = st[SWEEP_STAT_removed_gone] + st[SWEEP_STAT_removed_wrong_set] +
                       st[SWEEP_STAT_removed_invalid];

    sweep_progress(r->s, &pr);
    fprintf(out, "pool %s: %s %u of %u v-node sets in %.1f s: %s entries looked at "
            "(%.0f/s)\n", p->name, pr.state == SWEEP_DONE ? "swept" : "stopped after",
            pr.state == SWEEP_DONE ? pr.npoints : pr.point, pr.npoints, secs,
            cli_fmt_count((double)st[SWEEP_STAT_checked], n[0], 32),
            secs > 0 ? (double)st[SWEEP_STAT_checked] / secs : 0.0);
    fprintf(out, "  removed %s: gone from their backend %s, in the wrong set or with the "
            "wrong score %s, not a memcached key %s\n", cli_fmt_count((double)removed, n[1], 32),
            cli_fmt_count((double)st[SWEEP_STAT_removed_gone], n[2], 32),
            cli_fmt_count((double)st[SWEEP_STAT_removed_wrong_set], n[3], 32),
            cli_fmt_count((double)st[SWEEP_STAT_removed_invalid], n[4], 32));
    fprintf(out, "  put back %s (stored again between the two looks); kept %s (a backend "
            "could not be asked); removals refused %s\n",
            cli_fmt_count((double)st[SWEEP_STAT_restored], n[5], 32),
            cli_fmt_count((double)st[SWEEP_STAT_errors], n[6], 32),
            cli_fmt_count((double)st[SWEEP_STAT_refused], n[7], 32));
    if (counted) {
        fprintf(out, "  index entries: %s before, %s after\n",
                cli_fmt_count((double)r->before, n[0], 32),
                cli_fmt_count((double)after, n[1], 32));
    }
}

static int sweep_pool(const struct conf_pool *p, long rate, FILE *out)
{
    char err[256];
    struct ring *ring = conf_pool_ring(p, err, sizeof(err));
    redisContext *rc = ring ? cli_redis_open(&p->index, err, sizeof(err)) : NULL;
    struct sweep_opts so = { .pool = p->name, .index = &p->index, .background = false };
    struct run r = { .pool = p->name };
    struct event *tick = NULL, *sigint = NULL, *sigterm = NULL;
    uint64_t after = 0;
    uint32_t sets = 0;
    int status = 1;

    if (rc == NULL) {
        fprintf(stderr, "pool '%s': %s\n", p->name, err);
        ring_unref(ring);
        return 1;
    }
    if (count_entries(rc, p->index.prefix, &r.before, &sets) != 0) {
        fprintf(stderr, "pool '%s': Redis %s refused to count the index entries: %s\n",
                p->name, p->index.redis.text, rc->err ? rc->errstr : "unexpected reply");
        goto out;
    }
    r.env = (struct sweep_env){ .may_run = true, .local = ring, .rate = rate,
        .timeout_ms = p->timeout > 0 ? (uint32_t)p->timeout : 0,
        .liveness_ms = (uint32_t)p->migration.liveness,
        .follow_unknown = p->migration.follow_unknown };
    if ((r.base = event_base_new()) == NULL || (r.s = sweep_new(r.base, &so)) == NULL ||
        (tick = event_new(r.base, -1, EV_PERSIST, on_tick, &r)) == NULL ||
        (sigint = evsignal_new(r.base, SIGINT, on_signal, &r)) == NULL ||
        (sigterm = evsignal_new(r.base, SIGTERM, on_signal, &r)) == NULL) {
        fprintf(stderr, "pool '%s': out of memory\n", p->name);
        goto out;
    }
    struct timeval tv = { 0, SWEEP_CLI_TICK_MS * 1000 };
    event_add(tick, &tv);
    event_add(sigint, NULL);
    event_add(sigterm, NULL);
    r.started = r.last_at = rp_clock_ms();
    r.next_progress = r.started + SWEEP_CLI_PROGRESS_MS;
    fprintf(stderr, "sweep %s: %u v-node sets, %llu entries, rate %s\n", p->name, sets,
            (unsigned long long)r.before, rate > 0 ? "limited" : "unlimited");
    event_base_dispatch(r.base);

    enum sweep_state st = sweep_get_state(r.s);
    bool counted = count_entries(rc, p->index.prefix, &after, &sets) == 0 && sets > 0;
    if (st == SWEEP_FAILED) {
        fprintf(stderr, "pool '%s': index sweep failed: %s\n", p->name, sweep_error(r.s));
    }
    summary(&r, p, after, counted, out);
    status = st == SWEEP_DONE && !r.interrupted ? 0 : 1;
out:
    if (tick != NULL) {
        event_free(tick);
    }
    if (sigint != NULL) {
        event_free(sigint);
    }
    if (sigterm != NULL) {
        event_free(sigterm);
    }
    sweep_free(r.s);
    if (r.base != NULL) {
        event_base_free(r.base);
    }
    redisFree(rc);
    ring_unref(ring);
    return status;
}

int cli_index_sweep(const char *path, const char *pool, long rate, FILE *out)
{
    struct conf_errors errs;
    struct config *c = config_load(path, &errs);
    int status = 0, matched = 0;

    for (size_t i = 0; i < errs.n; i++) {
        fprintf(stderr, "%s\n", errs.msgs[i]);
    }
    conf_errors_free(&errs);
    if (c == NULL) {
        return 1;
    }
    log_open(NULL, LOG_WARN);
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
        status |= sweep_pool(p, rate, out);
    }
    config_free(c);
    if (matched == 0) {
        fprintf(stderr, "%s: no pool named '%s'\n", path, pool);
        return 1;
    }
    return status;
}
