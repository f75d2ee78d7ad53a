/*
 * admin.c — the HTTP admin port: metrics for Prometheus, a health check, and
 * JSON views of each pool's ring and migration (docs/ARCHITECTURE.md, "Observability").
 *
 * Design notes
 * - evhttp runs on the worker's event loop, between client requests, so the
 *   pools are read without locks and each reply is built whole.
 * - Pools a reload removed (closing) are left out: they serve no one, and a
 *   new pool of the same name would duplicate their series.
 * - /metrics is generated from the counter tables (stats.h, index.h, and
 *   ADMIN_MIG_CODEC below for the migration snapshot): a counter added to a
 *   table appears here with its help text. Counters end in _total; a state
 *   is one gauge per state name, 1 for the current one.
 * - Identities and names may hold any byte. JSON strings and label values
 *   are escaped, and bytes that are not UTF-8 become U+FFFD, so the output
 *   always parses.
 */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>        /* before keyvalq_struct.h, which undefines its own */
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <event2/keyvalq_struct.h>

#include "admin.h"
#include "adopt.h"
#include "index.h"
#include "log.h"
#include "migrate.h"
#include "proxy.h"
#include "pool.h"
#include "sweep.h"

#define ADMIN_TIMEOUT_SEC 10
#define ADMIN_MAX_HEADERS 8192
#define ADMIN_MAX_CONNS 64      /* open admin connections; more wait in the
                                   listen backlog (the listener pauses) */
#define ADMIN_PRUNE_MS 50       /* closed connections let go this often */

/* The migration snapshot as metrics: X(field, metric name, kind, help). */
#define ADMIN_MIG_CODEC(X)                                                    \
    X(epoch, epoch, gauge, "epoch of the ring the pool's data obeys")          \
    X(lease, lease, gauge, "1 while this proxy holds the migration lease")    \
    X(pending, pending_change, gauge,                                         \
      "1 while a newer ring waits for the running migration to end")         \
    X(moved_fraction, moved_fraction, gauge,                                  \
      "fraction of the hash space changing server in the running migration") \
    X(arcs_total, arcs, gauge, "arcs changing owner in the running migration") \
    X(arcs_done, arcs_done, gauge, "arcs finished in the running migration")  \
    X(keys_moved, keys_moved, counter,                                        \
      "keys copied to their new owner (from zero at each migration's start)") \
    X(keys_skipped, keys_skipped, counter,                                    \
      "keys not copied: the new owner had a newer write")                     \
    X(keys_stale, keys_stale, counter,                                        \
      "index entries of keys gone from their old owner, dropped")            \
    X(keys_failed, keys_failed, counter, "keys that could not be moved")       \
    X(keys_retried, keys_retried, counter,                                    \
      "moves retried because a client changed the key meanwhile")            \
    X(client_ops, client_commands, counter,                                   \
      "client commands on changing keys served by the migration's rules")    \
    X(tombs_written, tombstones_written, counter,                             \
      "deletes that left a tombstone on the old owner while keys move")      \
    X(tombs_cleared, tombstones_cleared, counter,                             \
      "tombstones removed by the mover")                                     \
    X(fallback_reads, fallback_reads, counter,                                \
      "reads of changing keys answered by the new owner")                    \
    X(copies_in_doubt, copies_in_doubt, gauge,                                \
      "moved copies whose store got no answer, to look at before a retry")   \
    X(conflicts_waiting, conflicts_waiting, gauge,                            \
      "keys with a value on both owners, waiting to be settled")             \
    X(conflicts_settled, conflicts_settled, counter,                          \
      "keys with a value on both owners settled for the old owner's")        \
    X(closing_sources, closing_sources, gauge,                                \
      "source servers the closing pass lists for keys the index lacks")      \
    X(closing_sources_done, closing_sources_done, gauge,                      \
      "source servers whose closing pass is done")                           \
    X(closing_listed, closing_listed, counter,                                \
      "keys the closing pass listed in arcs that move")                      \
    X(unindexed_moved, unindexed_moved, counter,                              \
      "keys the index did not know, moved by the closing pass")              \
    X(closing_refused, closing_refused, counter,                              \
      "source servers that refused to list their keys (lru_crawler metadump)") \
    X(live_proxies, live_proxies, gauge,                                      \
      "live proxies sharing the pool's prefix (heartbeats in Redis)")        \
    X(fenced, fenced, gauge,                                                  \
      "1 while this proxy refuses the pool's commands: Redis unreachable")   \
    X(index_moved, index_moved, counter,                                      \
      "index entries moved to their new v-node (with a key, or alone)")      \
    X(keys_per_sec, keys_per_second, gauge,                                   \
      "keys moved per second over the last progress interval")               \
    X(elapsed_sec, elapsed_seconds, gauge,                                    \
      "seconds since the running migration began")

#define ADMIN_MIG_ENUM(field, metric, kind, help) ADMIN_MIG_##field,
enum admin_mig_metric { ADMIN_MIG_CODEC(ADMIN_MIG_ENUM) ADMIN_MIG_COUNT };
#undef ADMIN_MIG_ENUM

#define ADMIN_MIG_DESC(field, metric, kind, help) \
    [ADMIN_MIG_##field] = { #metric, #kind, help },
static const struct stats_desc admin_mig_desc[ADMIN_MIG_COUNT] = {
    ADMIN_MIG_CODEC(ADMIN_MIG_DESC)
};
#undef ADMIN_MIG_DESC

static double admin_mig_value(const struct mig_progress *pr, enum admin_mig_metric m)
{
    switch (m) {
#define ADMIN_MIG_CASE(field, metric, kind, help) \
    case ADMIN_MIG_##field: return (double)pr->field;
    ADMIN_MIG_CODEC(ADMIN_MIG_CASE)
#undef ADMIN_MIG_CASE
    default:
        return 0;
    }
}


struct admin {
    struct worker *w;
    struct admin_counters counters;
    struct evhttp *http;
    struct evconnlistener *listener;    /* evhttp's, paused at the limit */
    /* Open connections: their bufferevents, each with a reference of ours
     * (admin_bev); one that evhttp freed is let go by admin_prune. */
    struct bufferevent **bevs;
    uint32_t nbevs, cap_bevs;
    struct event *prune;
    bool paused;
    uint64_t next_pause_log;
};

/* --- escaping --------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s (1 to 4), or 0 if none starts there. */
static size_t utf8_seq(const unsigned char *s)
{
    uint32_t cp;
    size_t n;

    if (s[0] < 0x80) {
        return 1;
    } else if (s[0] >= 0xc2 && s[0] <= 0xdf) {
        n = 2, cp = s[0] & 0x1f;
    } else if (s[0] >= 0xe0 && s[0] <= 0xef) {
        n = 3, cp = s[0] & 0x0f;
    } else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
        n = 4, cp = s[0] & 0x07;
    } else {
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80) {    /* also stops at the terminator */
            return 0;
        }
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if ((n == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (n == 4 && (cp < 0x10000 || cp > 0x10ffff))) {
        return 0;
    }
    return n;
}

static void json_str(struct evbuffer *b, const char *s)
{
    const unsigned char *p = (const unsigned char *)(s ? s : "");

    evbuffer_add(b, "\"", 1);
    while (*p != '\0') {
        size_t n = utf8_seq(p);
        if (n == 0) {
            evbuffer_add(b, "\\ufffd", 6);
            n = 1;
        } else if (*p == '"' || *p == '\\') {
            evbuffer_add_printf(b, "\\%c", *p);
        } else if (*p < 0x20 || *p == 0x7f) {
            evbuffer_add_printf(b, "\\u%04x", *p);
        } else {
            evbuffer_add(b, p, n);
        }
        p += n;
    }
    evbuffer_add(b, "\"", 1);
}

/* A fingerprint or other optional string: null when empty. */
static void json_str_or_null(struct evbuffer *b, const char *s)
{
    if (s == NULL || *s == '\0') {
        evbuffer_add_printf(b, "null");
    } else {
        json_str(b, s);
    }
}

static void json_num(struct evbuffer *b, double v)
{
    if (isfinite(v)) {
        evbuffer_add_printf(b, "%.9g", v);
    } else {
        evbuffer_add_printf(b, "null");
    }
}

/* A Prometheus label value or help text (help: quotes stay as they are). */
static void prom_escape(struct evbuffer *b, const char *s, bool label)
{
    const unsigned char *p = (const unsigned char *)s;

    while (*p != '\0') {
        size_t n = utf8_seq(p);
        if (n == 0) {
            evbuffer_add(b, "\xef\xbf\xbd", 3);
            n = 1;
        } else if (*p == '\\') {
            evbuffer_add(b, "\\\\", 2);
        } else if (*p == '\n') {
            evbuffer_add(b, "\\n", 2);
        } else if (*p == '"' && label) {
            evbuffer_add(b, "\\\"", 2);
        } else {
            evbuffer_add(b, p, n);
        }
        p += n;
    }
}

/* --- /metrics ------------------------------------------------------------------ */

static bool pool_listed(const struct pool *p)
{
    return !p->closing;
}

/* "# HELP" and "# TYPE" of family ringproxy_<group>_<name>[_total]; the
 * family's name goes to name (for its samples). */
static void prom_head(struct evbuffer *b, char *name, size_t len, const char *group,
                      const struct stats_desc *d)
{
    bool counter = strcmp(d->kind, "counter") == 0;

    snprintf(name, len, "ringproxy_%s%s%s%s", group, *group ? "_" : "", d->name,
             counter ? "_total" : "");
    evbuffer_add_printf(b, "# HELP %s ", name);
    prom_escape(b, d->help, false);
    evbuffer_add_printf(b, "\n# TYPE %s %s\n", name, counter ? "counter" : "gauge");
}

/* A sample: name{k1="v1",...} value; labels: NULL-terminated key, value pairs. */
static void prom_sample(struct evbuffer *b, const char *name, const char *const *labels,
                        double value)
{
    evbuffer_add_printf(b, "%s", name);
    for (size_t i = 0; labels != NULL && labels[i] != NULL; i += 2) {
        evbuffer_add_printf(b, "%s%s=\"", i ? "," : "{", labels[i]);
        prom_escape(b, labels[i + 1], true);
        evbuffer_add(b, "\"", 1);
    }
    if (labels != NULL && labels[0] != NULL) {
        evbuffer_add(b, "}", 1);
    }
    if (value == floor(value) && fabs(value) < 1e15) {
        evbuffer_add_printf(b, " %.0f\n", value);
    } else {
        evbuffer_add_printf(b, " %.9g\n", value);
    }
}

static void metrics_process(struct admin *a, struct evbuffer *b)
{
    static const struct stats_desc build = { "build_info", "gauge",
        "ringproxy's version, in the label (always 1)" };
    static const struct stats_desc uptime = { "uptime_seconds", "gauge",
        "seconds since the proxy started" };
    static const struct stats_desc reloads = { "reloads", "counter",
        "configuration reloads applied (SIGHUP)" };
    static const struct stats_desc failures = { "reload_failures", "counter",
        "reloads refused because the file was invalid; the old config kept serving" };
    const char *version[] = { "version", RINGPROXY_VERSION, NULL };
    char name[128];

    prom_head(b, name, sizeof(name), "", &build);
    prom_sample(b, name, version, 1);
    prom_head(b, name, sizeof(name), "", &uptime);
    prom_sample(b, name, NULL,
                (double)(worker_now_ms(a->w) - a->w->started) / 1000.0);
    if (a->counters.reloads != NULL) {
        prom_head(b, name, sizeof(name), "", &reloads);
        prom_sample(b, name, NULL, (double)*a->counters.reloads);
    }
    if (a->counters.reload_failures != NULL) {
        prom_head(b, name, sizeof(name), "", &failures);
        prom_sample(b, name, NULL, (double)*a->counters.reload_failures);
    }
}

static void metrics_pools(struct admin *a, struct evbuffer *b)
{
    static const struct stats_desc shape[] = {
        { "ready", "gauge", "1 once the pool knows which ring its data obeys and serves" },
        { "servers", "gauge", "servers in the pool's ring" },
        { "ring_points", "gauge", "points on the pool's ring" },
    };
    struct worker *w = a->w;
    char name[128];

    for (size_t m = 0; m < sizeof(shape) / sizeof(shape[0]); m++) {
        prom_head(b, name, sizeof(name), "pool", &shape[m]);
        for (uint32_t i = 0; i < w->npools; i++) {
            const struct pool *p = w->pools[i];
            const char *labels[] = { "pool", p->name, NULL };
            double v = m == 0 ? p->ready : m == 1 ? p->ring->nservers : p->ring->npoints;
            if (pool_listed(p)) {
                prom_sample(b, name, labels, v);
            }
        }
    }
    for (int s = 0; s < STAT_POOL_COUNT; s++) {
        prom_head(b, name, sizeof(name), "pool", &stats_pool_desc[s]);
        for (uint32_t i = 0; i < w->npools; i++) {
            const struct pool *p = w->pools[i];
            const char *labels[] = { "pool", p->name, NULL };
            if (pool_listed(p)) {
                prom_sample(b, name, labels, (double)p->stats[s]);
            }
        }
    }
}

static void metrics_backends(struct admin *a, struct evbuffer *b)
{
    static const struct stats_desc state = { "state", "gauge",
        "1 for the backend's state: up, down (failing) or ejected (auto_eject_hosts)" };
    struct worker *w = a->w;
    char name[128];

    /* An identity can have two backends for a while (its address changed),
     * so the address is a label too. */
    prom_head(b, name, sizeof(name), "backend", &state);
    for (uint32_t i = 0; i < w->npools; i++) {
        const struct pool *p = w->pools[i];
        for (uint32_t j = 0; pool_listed(p) && j < p->nbackends; j++) {
            const struct backend *be = p->backends[j];
            for (size_t st = 0; st < BACKEND_STATE_COUNT; st++) {
                const char *labels[] = { "pool", p->name, "server", be->identity,
                                         "addr", be->addr.text,
                                         "state", backend_state_names[st], NULL };
                prom_sample(b, name, labels, be->state == st);
            }
        }
    }
    for (int s = 0; s < STAT_BACKEND_COUNT; s++) {
        prom_head(b, name, sizeof(name), "backend", &stats_backend_desc[s]);
        for (uint32_t i = 0; i < w->npools; i++) {
            const struct pool *p = w->pools[i];
            for (uint32_t j = 0; pool_listed(p) && j < p->nbackends; j++) {
                const struct backend *be = p->backends[j];
                const char *labels[] = { "pool", p->name, "server", be->identity,
                                         "addr", be->addr.text, NULL };
                prom_sample(b, name, labels, (double)be->stats[s]);
            }
        }
    }
}

static void metrics_index(struct admin *a, struct evbuffer *b)
{
    static const struct stats_desc state = { "state", "gauge",
        "1 for the state of the pool's connection to its Redis index" };
    static const struct stats_desc health = { "health", "gauge",
        "1 for the pool's index health: ok, or why Redis does not take its commands" };
    struct worker *w = a->w;
    char name[128];

    prom_head(b, name, sizeof(name), "index", &state);
    for (uint32_t i = 0; i < w->npools; i++) {
        const struct pool *p = w->pools[i];
        for (int st = 0; pool_listed(p) && p->idx != NULL && st < IDX_STATE_COUNT; st++) {
            const char *labels[] = { "pool", p->name, "state", idx_state_names[st], NULL };
            prom_sample(b, name, labels, idx_get_state(p->idx) == (enum idx_state)st);
        }
    }
    prom_head(b, name, sizeof(name), "index", &health);
    for (uint32_t i = 0; i < w->npools; i++) {
        const struct pool *p = w->pools[i];
        for (int h = 0; pool_listed(p) && p->idx != NULL && h < IDX_HEALTH_COUNT; h++) {
            const char *labels[] = { "pool", p->name, "state", idx_health_names[h], NULL };
            prom_sample(b, name, labels,
                        idx_health(p->idx, IDX_CONN_COUNT, NULL) == (enum idx_health)h);
        }
    }
    for (int s = 0; s < IDX_STAT_COUNT; s++) {
        const struct stats_desc d = { idx_stat_desc[s].name, idx_stat_desc[s].kind,
                                      idx_stat_desc[s].help };
        prom_head(b, name, sizeof(name), "index", &d);
        for (uint32_t i = 0; i < w->npools; i++) {
            const struct pool *p = w->pools[i];
            const char *labels[] = { "pool", p->name, NULL };
            if (pool_listed(p) && p->idx != NULL) {
                prom_sample(b, name, labels, (double)idx_stats(p->idx)[s]);
            }
        }
    }
}

static void metrics_rebuild(struct admin *a, struct evbuffer *b)
{
    static const struct stats_desc state = { "rebuild_state", "gauge",
        "1 for the state of the pool's index rebuild from its backends" };
    struct worker *w = a->w;
    char name[128];

    prom_head(b, name, sizeof(name), "index", &state);
    for (uint32_t i = 0; i < w->npools; i++) {
        const struct pool *p = w->pools[i];
        for (int st = 0; pool_listed(p) && p->adopt != NULL && st < ADOPT_STATE_COUNT; st++) {
            const char *labels[] = { "pool", p->name, "state", adopt_state_names[st], NULL };
            prom_sample(b, name, labels, adopt_get_state(p->adopt) == (enum adopt_state)st);
        }
    }
    for (int s = 0; s < ADOPT_STAT_COUNT; s++) {
        const struct stats_desc d = { adopt_stat_desc[s].name, adopt_stat_desc[s].kind,
                                      adopt_stat_desc[s].help };
        prom_head(b, name, sizeof(name), "index", &d);
        for (uint32_t i = 0; i < w->npools; i++) {
            const struct pool *p = w->pools[i];
            const char *labels[] = { "pool", p->name, NULL };
            uint64_t v[ADOPT_STAT_COUNT];
            if (pool_listed(p) && p->adopt != NULL) {
                adopt_stats(p->adopt, v);
                prom_sample(b, name, labels, (double)v[s]);
            }
        }
    }
}

static void metrics_migration(struct admin *a, struct evbuffer *b)
{
    static const struct stats_desc state = { "state", "gauge",
        "1 for the pool's migration state (idle: the data obeys the pool's ring)" };
    struct worker *w = a->w;
    struct mig_progress *pr = calloc(w->npools ? w->npools : 1, sizeof(*pr));
    char name[128];

    if (pr == NULL) {
        return;
    }
    for (uint32_t i = 0; i < w->npools; i++) {
        if (w->pools[i]->mig != NULL) {
            mig_progress(w->pools[i]->mig, &pr[i]);
        }
    }
    prom_head(b, name, sizeof(name), "migration", &state);
    for (uint32_t i = 0; i < w->npools; i++) {
        const struct pool *p = w->pools[i];
        for (int st = 0; pool_listed(p) && p->mig != NULL && st < MIG_STATE_COUNT; st++) {
            const char *labels[] = { "pool", p->name, "state", mig_state_names[st], NULL };
            prom_sample(b, name, labels, pr[i].state == (enum mig_state)st);
        }
    }
    for (int m = 0; m < ADMIN_MIG_COUNT; m++) {
        prom_head(b, name, sizeof(name), "migration", &admin_mig_desc[m]);
        for (uint32_t i = 0; i < w->npools; i++) {
            const struct pool *p = w->pools[i];
            const char *labels[] = { "pool", p->name, NULL };
            if (pool_listed(p) && p->mig != NULL) {
                prom_sample(b, name, labels, admin_mig_value(&pr[i], (enum admin_mig_metric)m));
            }
        }
    }
    free(pr);
}

static void metrics_sweep(struct admin *a, struct evbuffer *b)
{
    static const struct stats_desc state = { "state", "gauge",
        "1 for the state of the pool's index sweeper (docs/ARCHITECTURE.md, \"The sweeper\")" };
    struct worker *w = a->w;
    char name[128];

    prom_head(b, name, sizeof(name), "sweep", &state);
    for (uint32_t i = 0; i < w->npools; i++) {
        const struct pool *p = w->pools[i];
        for (int st = 0; pool_listed(p) && p->sweep != NULL && st < SWEEP_STATE_COUNT; st++) {
            const char *labels[] = { "pool", p->name, "state", sweep_state_names[st], NULL };
            prom_sample(b, name, labels, sweep_get_state(p->sweep) == (enum sweep_state)st);
        }
    }
    for (int s = 0; s < SWEEP_STAT_COUNT; s++) {
        const struct stats_desc d = { sweep_stat_desc[s].name, sweep_stat_desc[s].kind,
                                      sweep_stat_desc[s].help };
        prom_head(b, name, sizeof(name), "sweep", &d);
        for (uint32_t i = 0; i < w->npools; i++) {
            const struct pool *p = w->pools[i];
            const char *labels[] = { "pool", p->name, NULL };
            if (pool_listed(p) && p->sweep != NULL) {
                prom_sample(b, name, labels, (double)sweep_stats(p->sweep)[s]);
            }
        }
    }
}

static int serve_metrics(struct admin *a, struct evhttp_request *req, struct evbuffer *b)
{
    bool indexed = false;

    (void)req;
    for (uint32_t i = 0; i < a->w->npools; i++) {
        indexed = indexed || (pool_listed(a->w->pools[i]) && a->w->pools[i]->idx != NULL);
    }
    metrics_process(a, b);
    metrics_pools(a, b);
    metrics_backends(a, b);
    if (indexed) {
        metrics_index(a, b);
        metrics_rebuild(a, b);
        metrics_migration(a, b);
        metrics_sweep(a, b);
    }
    return HTTP_OK;
}

/* --- /healthz ------------------------------------------------------------------ */

/* " (index auth_failed: WRONGPASS ...)" when the coordination's Redis
 * refuses this proxy, else "": why a pool waits or is fenced. */
static void index_why(struct evbuffer *b, const struct pool *p)
{
    const char *why;
    enum idx_health h = p->idx != NULL ? idx_health(p->idx, IDX_CONN_COORD, &why) : IDX_H_OK;

    if (h != IDX_H_OK) {
        evbuffer_add_printf(b, " (index %s: %s)", idx_health_names[h], why);
    }
}

static int serve_healthz(struct admin *a, struct evhttp_request *req, struct evbuffer *b)
{
    struct worker *w = a->w;

    (void)req;
    if (w->stopping) {
        evbuffer_add_printf(b, "stopping\n");
    }
    for (uint32_t i = 0; !w->stopping && i < w->npools; i++) {
        const struct pool *p = w->pools[i];
        uint32_t up = 0;
        if (!pool_listed(p)) {
            continue;
        }
        for (uint32_t s = 0; p->ring_be != NULL && s < p->ring->nservers; s++) {
            up += p->ring_be[s]->state == BACKEND_UP;
        }
        if (mig_refused(p->mig) != NULL) {
            evbuffer_add_printf(b, "pool %s: fenced: %s\n", p->name, mig_refused(p->mig));
        } else if (!p->ready) {
            evbuffer_add_printf(b, "pool %s: not serving yet: waiting for Redis to say "
                                "which ring the data obeys", p->name);
            index_why(b, p);
            evbuffer_add_printf(b, "\n");
        } else if (p->listener == NULL) {
            evbuffer_add_printf(b, "pool %s: not listening\n", p->name);
        } else if (up == 0) {
            evbuffer_add_printf(b, "pool %s: no backend is up (all %u down or "
                                "ejected)\n", p->name, p->ring->nservers);
        } else if (mig_fenced(p->mig)) {
            evbuffer_add_printf(b, "pool %s: fenced: no sync with Redis", p->name);
            index_why(b, p);
            evbuffer_add_printf(b, ", so the fleet may resize without this proxy\n");
        }
    }
    if (evbuffer_get_length(b) > 0) {
        return HTTP_SERVUNAVAIL;
    }
    /* Serving, but the index does not take its writes (the keys stored now
     * would not move in a resize), or a resize waits: say why. */
    for (uint32_t i = 0; i < w->npools; i++) {
        const struct pool *p = w->pools[i];
        struct mig_progress pr;
        const char *why;
        if (!pool_listed(p) || p->mig == NULL) {
            continue;
        }
        enum idx_health h = idx_health(p->idx, IDX_CONN_COUNT, &why);
        if (h != IDX_H_OK) {
            evbuffer_add_printf(b, "degraded: pool %s: index %s: %s\n", p->name,
                                idx_health_names[h], why);
        }
        mig_progress(p->mig, &pr);
        if (pr.blocked[0] != '\0') {
            evbuffer_add_printf(b, "degraded: pool %s: the migration is blocked: %s\n",
                                p->name, pr.blocked);
        } else if (pr.waiting[0] != '\0') {
            evbuffer_add_printf(b, "degraded: pool %s: the ring change waits for %s\n",
                                p->name, pr.waiting);
        }
    }
    if (evbuffer_get_length(b) > 0) {
        return HTTP_OK;
    }
    evbuffer_add_printf(b, "ok\n");
    return HTTP_OK;
}

/* --- /ring --------------------------------------------------------------------- */

bool admin_query_flag(const char *query, const char *name)
{
    struct evkeyvalq params;
    bool on = false;

    TAILQ_INIT(&params);
    if (query != NULL && evhttp_parse_query_str(query, &params) == 0) {
        const char *v = evhttp_find_header(&params, name);
        on = v != NULL && (strcmp(v, "1") == 0 || strcmp(v, "true") == 0 ||
                           strcmp(v, "yes") == 0);
    }
    evhttp_clear_headers(&params);
    return on;
}

static bool query_flag(struct evhttp_request *req, const char *name)
{
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);

    return admin_query_flag(uri != NULL ? evhttp_uri_get_query(uri) : NULL, name);
}

static void ring_json(struct evbuffer *b, const struct pool *p, bool points)
{
    const struct ring *r = p->ring;
    char tag[3] = { r->tag[0], r->tag[1], '\0' };

    evbuffer_add_printf(b, "{\"name\":");
    json_str(b, p->name);
    evbuffer_add_printf(b, ",\"compat\":\"%s\",\"hash\":\"%s\",\"hash_tag\":",
                        ring_compat_names[r->compat], hash_names[r->hash]);
    json_str_or_null(b, r->has_tag ? tag : NULL);
    evbuffer_add_printf(b, ",\"migrating\":%s,\"points\":%u,\"servers\":[",
                        mig_active(p->mig) ? "true" : "false", r->npoints);
    for (uint32_t s = 0; s < r->nservers; s++) {
        const struct ring_server *sv = &r->servers[s];
        evbuffer_add_printf(b, "%s{\"identity\":", s ? "," : "");
        json_str(b, sv->identity);
        evbuffer_add_printf(b, ",\"addr\":");
        json_str(b, sv->addr);
        evbuffer_add_printf(b, ",\"weight\":%u,\"points\":%u,\"share\":", sv->weight,
                            sv->npoints);
        json_num(b, (double)sv->span / RING_SPACE);
        evbuffer_add_printf(b, ",\"state\":\"%s\"}", p->ring_be != NULL ?
                            backend_state_names[p->ring_be[s]->state] : "unknown");
    }
    evbuffer_add_printf(b, "]");
    if (points) {
        evbuffer_add_printf(b, ",\"point_list\":[");
        for (uint32_t i = 0; i < r->npoints; i++) {
            evbuffer_add_printf(b, "%s{\"value\":%u,\"server\":", i ? "," : "",
                                r->points[i].value);
            json_str(b, r->servers[r->points[i].server].identity);
            evbuffer_add(b, "}", 1);
        }
        evbuffer_add_printf(b, "]");
    }
    evbuffer_add_printf(b, "}");
}

static int serve_ring(struct admin *a, struct evhttp_request *req, struct evbuffer *b)
{
    bool points = query_flag(req, "points"), first = true;

    evbuffer_add_printf(b, "{\"pools\":[");
    for (uint32_t i = 0; i < a->w->npools; i++) {
        if (pool_listed(a->w->pools[i])) {
            evbuffer_add_printf(b, first ? "" : ",");
            ring_json(b, a->w->pools[i], points);
            first = false;
        }
    }
    evbuffer_add_printf(b, "]}\n");
    return HTTP_OK;
}

/* --- /migration ---------------------------------------------------------------- */

/* The index sweeper's fields of a pool's /migration object (flat, so
 * `ringproxy status` reads them as it reads the others). */
static void sweep_json(struct evbuffer *b, const struct sweep *s)
{
    struct sweep_progress pr;

    if (s == NULL) {
        return;
    }
    sweep_progress(s, &pr);
    const uint64_t *st = sweep_stats(s);
    evbuffer_add_printf(b, ",\"sweep_state\":\"%s\",\"sweep_pass\":%llu,"
                        "\"sweep_sets_done\":%u,\"sweep_sets\":%u,\"sweep_passes\":%llu,"
                        "\"sweep_checked\":%llu,\"sweep_removed\":%llu,"
                        "\"sweep_restored\":%llu,\"sweep_errors\":%llu,\"sweep_note\":",
                        sweep_state_names[pr.state], (unsigned long long)pr.pass, pr.point,
                        pr.npoints, (unsigned long long)st[SWEEP_STAT_passes],
                        (unsigned long long)st[SWEEP_STAT_checked],
                        (unsigned long long)(st[SWEEP_STAT_removed_gone] +
                                             st[SWEEP_STAT_removed_wrong_set] +
                                             st[SWEEP_STAT_removed_invalid]),
                        (unsigned long long)st[SWEEP_STAT_restored],
                        (unsigned long long)st[SWEEP_STAT_errors]);
    json_str_or_null(b, pr.paused);
}

static void migration_json(struct evbuffer *b, const struct pool *p)
{
    struct mig_progress pr;

    evbuffer_add_printf(b, "{\"name\":");
    json_str(b, p->name);
    if (p->mig == NULL) {
        evbuffer_add_printf(b, ",\"indexed\":false,\"state\":\"none\",\"epoch\":null}");
        return;
    }
    mig_progress(p->mig, &pr);
    /* The pace so far, over the arcs left; unknown until an arc is done. */
    double eta = NAN;
    if (pr.to[0] != '\0' && pr.arcs_done > 0 && pr.elapsed_sec > 0) {
        eta = (double)(pr.arcs_total - pr.arcs_done) * pr.elapsed_sec /
              (double)pr.arcs_done;
    }
    evbuffer_add_printf(b, ",\"indexed\":true,\"state\":\"%s\",\"epoch\":",
                        mig_state_names[pr.state]);
    if (pr.epoch > 0) {
        evbuffer_add_printf(b, "%llu", (unsigned long long)pr.epoch);
    } else {
        evbuffer_add_printf(b, "null");     /* epochs start at 1: not known yet */
    }
    evbuffer_add_printf(b, ",\"lease\":%s,\"pending_change\":%s,\"from\":",
                        pr.lease ? "true" : "false", pr.pending ? "true" : "false");
    json_str_or_null(b, pr.from);
    evbuffer_add_printf(b, ",\"to\":");
    json_str_or_null(b, pr.to);
    evbuffer_add_printf(b, ",\"moved_fraction\":");
    json_num(b, pr.moved_fraction);
    evbuffer_add_printf(b, ",\"arcs_total\":%llu,\"arcs_done\":%llu,\"keys_moved\":%llu,"
                        "\"keys_skipped\":%llu,\"keys_stale\":%llu,\"keys_failed\":%llu,"
                        "\"keys_retried\":%llu,\"client_commands\":%llu,"
                        "\"index_moved\":%llu,\"keys_per_sec\":",
                        (unsigned long long)pr.arcs_total, (unsigned long long)pr.arcs_done,
                        (unsigned long long)pr.keys_moved, (unsigned long long)pr.keys_skipped,
                        (unsigned long long)pr.keys_stale, (unsigned long long)pr.keys_failed,
                        (unsigned long long)pr.keys_retried,
                        (unsigned long long)pr.client_ops,
                        (unsigned long long)pr.index_moved);
    json_num(b, pr.keys_per_sec);
    evbuffer_add_printf(b, ",\"closing_sources\":%llu,\"closing_sources_done\":%llu,"
                        "\"closing_listed\":%llu,\"unindexed_moved\":%llu,"
                        "\"closing_refused\":%llu",
                        (unsigned long long)pr.closing_sources,
                        (unsigned long long)pr.closing_sources_done,
                        (unsigned long long)pr.closing_listed,
                        (unsigned long long)pr.unindexed_moved,
                        (unsigned long long)pr.closing_refused);
    evbuffer_add_printf(b, ",\"elapsed_sec\":");
    json_num(b, pr.elapsed_sec);
    evbuffer_add_printf(b, ",\"eta_sec\":");
    json_num(b, eta);
    evbuffer_add_printf(b, ",\"phase\":");
    json_str_or_null(b, pr.fleet_phase);
    evbuffer_add_printf(b, ",\"waiting_for\":");
    json_str_or_null(b, pr.waiting);
    evbuffer_add_printf(b, ",\"blocked_by\":");
    json_str_or_null(b, pr.blocked);
    evbuffer_add_printf(b, ",\"live_proxies\":%u,\"fenced\":%s", pr.live_proxies,
                        pr.fenced ? "true" : "false");
    const char *why;
    enum idx_health h = idx_health(p->idx, IDX_CONN_COUNT, &why);
    evbuffer_add_printf(b, ",\"index_health\":\"%s\",\"index_error\":",
                        idx_health_names[h]);
    json_str_or_null(b, why);
    if (p->adopt != NULL) {
        uint64_t rb[ADOPT_STAT_COUNT];
        adopt_stats(p->adopt, rb);
        evbuffer_add_printf(b, ",\"rebuild\":\"%s\",\"rebuild_keys\":%llu",
                            adopt_state_names[adopt_get_state(p->adopt)],
                            (unsigned long long)rb[ADOPT_STAT_rebuild_keys]);
    }
    sweep_json(b, p->sweep);
    evbuffer_add(b, "}", 1);
}

static int serve_migration(struct admin *a, struct evhttp_request *req, struct evbuffer *b)
{
    bool first = true;

    (void)req;
    evbuffer_add_printf(b, "{\"pools\":[");
    for (uint32_t i = 0; i < a->w->npools; i++) {
        if (pool_listed(a->w->pools[i])) {
            evbuffer_add_printf(b, first ? "" : ",");
            migration_json(b, a->w->pools[i]);
            first = false;
        }
    }
    evbuffer_add_printf(b, "]}\n");
    return HTTP_OK;
}

/* --- dispatch ------------------------------------------------------------------ */

static const struct admin_route {
    const char *path;
    const char *content_type;
    int (*serve)(struct admin *a, struct evhttp_request *req, struct evbuffer *body);
} admin_routes[] = {
    { "/metrics", "text/plain; version=0.0.4; charset=utf-8", serve_metrics },
    { "/healthz", "text/plain; charset=utf-8", serve_healthz },
    { "/ring", "application/json", serve_ring },
    { "/migration", "application/json", serve_migration },
};

#define ADMIN_NROUTES (sizeof(admin_routes) / sizeof(admin_routes[0]))

int admin_route_of(const char *target)
{
    /* As evhttp parses a request line's target (http.c, NONCONFORMANT). */
    struct evhttp_uri *uri = target != NULL ?
        evhttp_uri_parse_with_flags(target, EVHTTP_URI_NONCONFORMANT) : NULL;
    const char *path = uri != NULL ? evhttp_uri_get_path(uri) : NULL;
    int route = -1;

    for (size_t i = 0; path != NULL && i < ADMIN_NROUTES; i++) {
        if (strcmp(path, admin_routes[i].path) == 0) {
            route = (int)i;
        }
    }
    if (uri != NULL) {
        evhttp_uri_free(uri);
    }
    return route;
}

static void on_request(struct evhttp_request *req, void *arg)
{
    struct admin *a = arg;
    struct evkeyvalq *headers = evhttp_request_get_output_headers(req);
    struct evbuffer *body = evbuffer_new();
    const struct admin_route *route = NULL;
    int code, i;

    if (body == NULL) {
        evhttp_send_error(req, HTTP_INTERNAL, "out of memory");
        return;
    }
    if ((i = admin_route_of(evhttp_request_get_uri(req))) >= 0) {
        route = &admin_routes[i];
    }
    if (route == NULL) {
        code = HTTP_NOTFOUND;
        evbuffer_add_printf(body, "not found; try /metrics, /healthz, /ring, "
                            "/migration\n");
        evhttp_add_header(headers, "Content-Type", "text/plain; charset=utf-8");
    } else if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
        code = HTTP_BADMETHOD;
        evbuffer_add_printf(body, "only GET\n");
        evhttp_add_header(headers, "Allow", "GET");
        evhttp_add_header(headers, "Content-Type", "text/plain; charset=utf-8");
    } else {
        code = route->serve(a, req, body);
        evhttp_add_header(headers, "Content-Type", route->content_type);
    }
    evhttp_add_header(headers, "Cache-Control", "no-store");
    evhttp_send_reply(req, code, NULL, body);
    evbuffer_free(body);
}

/*
 * libevent 2.1 has no evhttp_set_max_connections, so the admin counts its
 * connections itself: evhttp asks admin_bev for each new connection's
 * bufferevent, and the admin keeps a reference to it. evhttp frees a
 * connection with bufferevent_free, which clears the callbacks it set; the
 * reference keeps the object (and its socket, already shut down for
 * writing by evhttp) until admin_prune, every ADMIN_PRUNE_MS, drops it. At
 * ADMIN_MAX_CONNS the listener pauses: more connections wait in the
 * kernel's backlog and cost no descriptor.
 */
static bool admin_bev_gone(struct bufferevent *bev)
{
    bufferevent_data_cb rd, wr;
    bufferevent_event_cb ev;
    void *arg;

    bufferevent_getcb(bev, &rd, &wr, &ev, &arg);
    return rd == NULL && wr == NULL && ev == NULL;
}

static void admin_prune(evutil_socket_t fd, short what, void *arg)
{
    struct admin *a = arg;

    (void)fd;
    (void)what;
    for (uint32_t i = 0; i < a->nbevs;) {
        if (admin_bev_gone(a->bevs[i])) {
            bufferevent_decref(a->bevs[i]);     /* closes the socket */
            a->bevs[i] = a->bevs[--a->nbevs];
        } else {
            i++;
        }
    }
    if (a->paused && a->nbevs < ADMIN_MAX_CONNS && a->listener != NULL) {
        a->paused = false;
        evconnlistener_enable(a->listener);
    }
}

static struct bufferevent *admin_bev(struct event_base *base, void *arg)
{
    struct admin *a = arg;
    struct bufferevent *bev;

    if (a->nbevs == a->cap_bevs) {
        uint32_t cap = a->cap_bevs ? a->cap_bevs * 2 : 16;
        struct bufferevent **bevs = realloc(a->bevs, cap * sizeof(*bevs));
        if (bevs == NULL) {
            return NULL;    /* evhttp makes its own, uncounted */
        }
        a->bevs = bevs;
        a->cap_bevs = cap;
    }
    if ((bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE)) == NULL) {
        return NULL;
    }
    bufferevent_incref(bev);
    a->bevs[a->nbevs++] = bev;
    if (a->nbevs >= ADMIN_MAX_CONNS && !a->paused && a->listener != NULL) {
        a->paused = true;
        evconnlistener_disable(a->listener);
        if (worker_now_ms(a->w) >= a->next_pause_log) {
            a->next_pause_log = worker_now_ms(a->w) + 10000;
            log_warn("admin", "%u admin connections open: accepting no more until "
                     "one closes", a->nbevs);
        }
    }
    return bev;
}

struct admin *admin_start(struct worker *w, const struct admin_counters *counters,
                          const char *addr, int port, char *err, size_t errlen)
{
    struct admin *a;

    if (port == 0) {
        snprintf(err, errlen, "%s", "");
        return NULL;
    }
    if ((a = calloc(1, sizeof(*a))) == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    a->w = w;
    if ((a->http = evhttp_new(w->base)) == NULL ||
        (a->prune = event_new(w->base, -1, EV_PERSIST, admin_prune, a)) == NULL) {
        snprintf(err, errlen, "out of memory");
        admin_free(a);
        return NULL;
    }
    if (counters != NULL) {
        a->counters = *counters;
    }
    /* Every method reaches on_request, which answers 405 itself. */
    evhttp_set_allowed_methods(a->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST |
                               EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                               EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE |
                               EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
    evhttp_set_timeout(a->http, ADMIN_TIMEOUT_SEC);
    evhttp_set_max_headers_size(a->http, ADMIN_MAX_HEADERS);
    evhttp_set_max_body_size(a->http, ADMIN_MAX_HEADERS);
    evhttp_set_gencb(a->http, on_request, a);
    evhttp_set_bevcb(a->http, admin_bev, a);
    errno = 0;
    struct evhttp_bound_socket *bound =
        evhttp_bind_socket_with_handle(a->http, addr, (ev_uint16_t)port);
    if (bound == NULL) {
        snprintf(err, errlen, "cannot listen on %s:%d: %s", addr, port,
                 errno ? strerror(errno) : "cannot resolve the address");
        admin_free(a);
        return NULL;
    }
    a->listener = evhttp_bound_socket_get_listener(bound);
    struct timeval every = { 0, ADMIN_PRUNE_MS * 1000 };
    event_add(a->prune, &every);
    log_notice("admin", "HTTP admin on %s:%d: /metrics /healthz /ring /migration",
               addr, port);
    return a;
}

void admin_free(struct admin *a)
{
    if (a == NULL) {
        return;
    }
    a->listener = NULL;             /* evhttp_free frees it */
    if (a->http != NULL) {
        evhttp_free(a->http);       /* frees every connection */
    }
    for (uint32_t i = 0; i < a->nbevs; i++) {
        bufferevent_decref(a->bevs[i]);
    }
    free(a->bevs);
    if (a->prune != NULL) {
        event_free(a->prune);
    }
    free(a);
}
