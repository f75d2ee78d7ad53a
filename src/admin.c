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
 *   progress.h for the migration snapshot): a counter added to a
 *   table appears here with its help text. Counters end in _total; a state
 *   is one gauge per state name, 1 for the current one.
 * - Identities and names may hold any byte. JSON strings (json.c, with
 *   JSON_W_UTF8) and label values are escaped, and bytes that are not UTF-8
 *   become U+FFFD, so the output always parses.
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
#include "json.h"
#include "migrate.h"
#include "progress.h"
#include "proxy.h"
#include "pool.h"
#include "status_page.h"
#include "sweep.h"
#include "tstats.h"
#include "mem.h"

#define ADMIN_TIMEOUT_SEC 10
#define ADMIN_MAX_HEADERS 8192
#define ADMIN_MAX_CONNS 64      /* open admin connections; more wait in the
                                   listen backlog (the listener pauses) */
#define ADMIN_PRUNE_MS 50       /* closed connections let go this often */

/* A JSON reply's budget: /ring?points=1 of the largest ring is well under it. */
#define ADMIN_JSON_MAX (256u << 20)
#define ADMIN_PENDING_MAX (64u << 20)   /* unsent replies of all connections */

struct admin {
    struct worker *w;
    struct admin_counters counters;
    struct evhttp *http;
    struct evconnlistener *listener;    /* evhttp's, paused at the limit */
    struct evhttp_bound_socket *bound;  /* NULL: closed (admin_unlisten) */
    /* Open connections: their bufferevents, each with a reference of ours
     * (admin_bev); one that evhttp freed is let go by admin_prune. */
    struct bufferevent **bevs;
    uint32_t nbevs, cap_bevs;
    struct event *prune;
    bool paused;
    uint64_t next_pause_log;
};

/* --- escaping --------------------------------------------------------------- */

/* A Prometheus label value or help text (help: quotes stay as they are). */
static void prom_escape(struct evbuffer *b, const char *s, bool label)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + strlen(s);

    while (p < end) {
        size_t n = json_utf8_seq(p, (size_t)(end - p));
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
 * family's name goes to name (for its samples). A counter named total_X in
 * the stats view (memcached's total_connections) is X_total here, not
 * total_X_total. */
static void prom_head(struct evbuffer *b, char *name, size_t len, const char *group,
                      const struct stats_desc *d)
{
    bool counter = strcmp(d->kind, "counter") == 0;
    const char *base = counter && strncmp(d->name, "total_", 6) == 0 ? d->name + 6 :
                       d->name;

    snprintf(name, len, "ringproxy_%s%s%s%s", group, *group ? "_" : "", base,
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
    struct tstats_threads th;
    tstats_threads_get(&th);
    const struct { struct stats_desc d; double v; } threads[] = {
        { { "threads", "gauge", "event-loop threads started (threads)" }, th.threads },
        { { "threads_active", "gauge", "of them, those serving clients (threads_active)" },
          th.active },
        { { "thread_trials", "counter",
            "threads_active auto's trials of one serving thread more or fewer" }, (double)th.trials },
        { { "thread_trials_undone", "counter", "those trials it went back on" },
          (double)th.undone },
        { { "thread_clients_moved", "counter",
            "client connections handed from one thread to another" }, (double)th.moved },
    };
    for (size_t i = 0; i < sizeof(threads) / sizeof(threads[0]); i++) {
        prom_head(b, name, sizeof(name), "", &threads[i].d);
        prom_sample(b, name, NULL, threads[i].v);
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
    /* Each pool's counters summed over the threads (tstats.h). */
    uint64_t (*sum)[STAT_POOL_COUNT] = rp_xcalloc(w->npools ? w->npools : 1,
                                                  sizeof(*sum), "summed counters");
    for (uint32_t i = 0; i < w->npools; i++) {
        memcpy(sum[i], w->pools[i]->stats, sizeof(sum[i]));
        tstats_add_pool(w->id, w->pools[i]->name, sum[i]);
    }
    for (int s = 0; s < STAT_POOL_COUNT; s++) {
        prom_head(b, name, sizeof(name), "pool", &stats_pool_desc[s]);
        for (uint32_t i = 0; i < w->npools; i++) {
            const struct pool *p = w->pools[i];
            const char *labels[] = { "pool", p->name, NULL };
            if (pool_listed(p)) {
                prom_sample(b, name, labels, (double)sum[i][s]);
            }
        }
    }
    free(sum);
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
        struct tstats_live *rows = tstats_backends_live(w->id, p);   /* every thread's */
        for (uint32_t j = 0; pool_listed(p) && j < p->nbackends; j++) {
            const struct backend *be = p->backends[j];
            for (size_t st = 0; st < BACKEND_STATE_COUNT; st++) {
                const char *labels[] = { "pool", p->name, "server", be->identity,
                                         "addr", be->addr.text,
                                         "state", backend_state_names[st], NULL };
                prom_sample(b, name, labels, rows[j].state == st);
            }
        }
        free(rows);
    }
    /* Each backend's counters summed over the threads (tstats.h). */
    uint64_t (**sum)[STAT_BACKEND_COUNT] = rp_xcalloc(w->npools ? w->npools : 1,
                                                      sizeof(*sum), "summed counters");
    for (uint32_t i = 0; i < w->npools; i++) {
        const struct pool *p = w->pools[i];
        sum[i] = rp_xcalloc(p->nbackends ? p->nbackends : 1, sizeof(*sum[i]),
                            "summed counters");
        for (uint32_t j = 0; j < p->nbackends; j++) {
            memcpy(sum[i][j], p->backends[j]->stats, sizeof(sum[i][j]));
        }
        tstats_add_backends(w->id, p->name, p->backends, p->nbackends, sum[i]);
    }
    for (int s = 0; s < STAT_BACKEND_COUNT; s++) {
        prom_head(b, name, sizeof(name), "backend", &stats_backend_desc[s]);
        for (uint32_t i = 0; i < w->npools; i++) {
            const struct pool *p = w->pools[i];
            for (uint32_t j = 0; pool_listed(p) && j < p->nbackends; j++) {
                const struct backend *be = p->backends[j];
                const char *labels[] = { "pool", p->name, "server", be->identity,
                                         "addr", be->addr.text, NULL };
                prom_sample(b, name, labels, (double)sum[i][j][s]);
            }
        }
    }
    for (uint32_t i = 0; i < w->npools; i++) {
        free(sum[i]);
    }
    free(sum);
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
    /* the state's family first, as one 0/1 gauge per state name */
    const struct stats_desc state = { prog_desc[PROG_F_state].metric, "gauge",
                                       prog_desc[PROG_F_state].help };
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
    for (int f = 0; f < PROG_COUNT; f++) {
        const struct prog_desc *pd = &prog_desc[f];
        const struct stats_desc d = { pd->metric,
                                      pd->type == PROG_COUNTER ? "counter" : "gauge",
                                      pd->help };
        if (pd->metric[0] == '\0' || pd->type == PROG_STATE) {
            continue;
        }
        prom_head(b, name, sizeof(name), "migration", &d);
        for (uint32_t i = 0; i < w->npools; i++) {
            const struct pool *p = w->pools[i];
            const char *labels[] = { "pool", p->name, NULL };
            if (pool_listed(p) && p->mig != NULL) {
                prom_sample(b, name, labels, prog_number(&pr[i], f));
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

/* A line per server whose name does not resolve on some thread
 * (backend.dns_error, merged by tstats_backends_live). */
static void healthz_dns(struct evbuffer *b, const struct pool *p, const char *prefix)
{
    struct tstats_live *rows = tstats_backends_live(p->w->id, p);

    for (uint32_t s = 0; s < p->nbackends; s++) {
        if (rows[s].dns_error[0] != '\0') {
            evbuffer_add_printf(b, "%spool %s: server %s: %s\n", prefix, p->name,
                                p->backends[s]->identity, rows[s].dns_error);
        }
    }
    free(rows);
}

/* The servers of p's ring up as every thread sees them (tstats_live_merge). */
static uint32_t healthz_up(const struct pool *p)
{
    struct tstats_live *rows = tstats_backends_live(p->w->id, p), own;
    uint32_t up = 0;

    for (uint32_t s = 0; p->ring_be != NULL && s < p->ring->nservers; s++) {
        up += tstats_live_row(p, rows, p->ring_be[s], &own)->state == BACKEND_UP;
    }
    free(rows);
    return up;
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
        if (!pool_listed(p)) {
            continue;
        }
        uint32_t up = healthz_up(p);
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
            healthz_dns(b, p, "");
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
        if (pool_listed(p)) {
            healthz_dns(b, p, "degraded: ");
        }
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

static void ring_json(struct json_w *j, const struct pool *p, bool points)
{
    const struct ring *r = p->ring;
    char tag[3] = { r->tag[0], r->tag[1], '\0' };
    struct tstats_live *rows = tstats_backends_live(p->w->id, p), own;

    json_obj(j);
    json_key(j, "name");
    json_str(j, p->name);
    json_key(j, "compat");
    json_str(j, ring_compat_names[r->compat]);
    json_key(j, "hash");
    json_str(j, hash_names[r->hash]);
    json_key(j, "hash_tag");
    json_str_or_null(j, r->has_tag ? tag : NULL);
    json_key(j, "migrating");
    json_bool(j, mig_active(p->mig));
    json_key(j, "points");
    json_uint(j, r->npoints);
    json_key(j, "servers");
    json_arr(j);
    for (uint32_t s = 0; s < r->nservers; s++) {
        const struct ring_server *sv = &r->servers[s];
        json_obj(j);
        json_key(j, "identity");
        json_str(j, sv->identity);
        json_key(j, "addr");
        json_str(j, sv->addr);
        json_key(j, "weight");
        json_uint(j, sv->weight);
        json_key(j, "points");
        json_uint(j, sv->npoints);
        json_key(j, "share");
        json_real(j, (double)sv->span / RING_SPACE);
        json_key(j, "state");
        json_str(j, p->ring_be != NULL ?
                    backend_state_names[tstats_live_row(p, rows, p->ring_be[s], &own)->state] :
                    "unknown");
        json_obj_end(j);
    }
    json_arr_end(j);
    if (points) {
        json_key(j, "point_list");
        json_arr(j);
        for (uint32_t i = 0; i < r->npoints; i++) {
            json_obj(j);
            json_key(j, "value");
            json_uint(j, r->points[i].value);
            json_key(j, "server");
            json_str(j, r->servers[r->points[i].server].identity);
            json_obj_end(j);
        }
        json_arr_end(j);
    }
    json_obj_end(j);
    free(rows);
}

static void admin_sink(void *arg, const char *data, size_t len)
{
    evbuffer_add(arg, data, len);
}

/* {"pools":[...]}: one object per listed pool, by `pool_json`. */
static int serve_pools_json(struct admin *a, struct evbuffer *b,
                            void (*pool_json)(struct json_w *j, const struct pool *p,
                                              bool flag), bool flag)
{
    struct json_w j;
    int rc;

    json_w_init(&j, ADMIN_JSON_MAX, JSON_W_UTF8);
    json_w_sink(&j, admin_sink, b);
    json_obj(&j);
    json_key(&j, "pools");
    json_arr(&j);
    for (uint32_t i = 0; i < a->w->npools; i++) {
        if (pool_listed(a->w->pools[i])) {
            pool_json(&j, a->w->pools[i], flag);
        }
    }
    json_arr_end(&j);
    json_obj_end(&j);
    rc = json_w_finish(&j);
    json_w_free(&j);
    if (rc != 0) {
        evbuffer_drain(b, evbuffer_get_length(b));
        evbuffer_add_printf(b, "{}\n");
        log_warn("admin", "a JSON reply passed %u MiB: answered 500",
                 ADMIN_JSON_MAX >> 20);
        return HTTP_INTERNAL;
    }
    evbuffer_add(b, "\n", 1);
    return HTTP_OK;
}

static int serve_ring(struct admin *a, struct evhttp_request *req, struct evbuffer *b)
{
    return serve_pools_json(a, b, ring_json, query_flag(req, "points"));
}

/* --- /migration ---------------------------------------------------------------- */

/* The index sweeper's fields of a pool's /migration object (flat, so
 * `ringproxy status` reads them as it reads the others). */
static void sweep_json(struct json_w *j, const struct sweep *s)
{
    struct sweep_progress pr;

    if (s == NULL) {
        return;
    }
    sweep_progress(s, &pr);
    const uint64_t *st = sweep_stats(s);
    json_key(j, "sweep_state");
    json_str(j, sweep_state_names[pr.state]);
    json_key(j, "sweep_pass");
    json_uint(j, pr.pass);
    json_key(j, "sweep_sets_done");
    json_uint(j, pr.point);
    json_key(j, "sweep_sets");
    json_uint(j, pr.npoints);
    json_key(j, "sweep_passes");
    json_uint(j, st[SWEEP_STAT_passes]);
    json_key(j, "sweep_checked");
    json_uint(j, st[SWEEP_STAT_checked]);
    json_key(j, "sweep_removed");
    json_uint(j, st[SWEEP_STAT_removed_gone] + st[SWEEP_STAT_removed_wrong_set] +
                 st[SWEEP_STAT_removed_invalid]);
    json_key(j, "sweep_restored");
    json_uint(j, st[SWEEP_STAT_restored]);
    json_key(j, "sweep_errors");
    json_uint(j, st[SWEEP_STAT_errors]);
    json_key(j, "sweep_note");
    json_str_or_null(j, pr.paused);
}

static void migration_json(struct json_w *j, const struct pool *p, bool unused)
{
    struct mig_progress pr;

    (void)unused;
    json_obj(j);
    json_key(j, "name");
    json_str(j, p->name);
    json_key(j, "indexed");
    json_bool(j, p->mig != NULL);
    if (p->mig == NULL) {
        json_key(j, "state");
        json_str(j, "none");
        json_key(j, "epoch");
        json_null(j);
        json_obj_end(j);
        return;
    }
    mig_progress(p->mig, &pr);
    for (int f = 0; f < PROG_COUNT; f++) {
        if (prog_desc[f].json[0] != '\0') {
            json_key(j, prog_desc[f].json);
            prog_json(&pr, f, j);
        }
    }
    const char *why;
    enum idx_health h = idx_health(p->idx, IDX_CONN_COUNT, &why);
    json_key(j, "index_health");
    json_str(j, idx_health_names[h]);
    json_key(j, "index_error");
    json_str_or_null(j, why);
    if (p->adopt != NULL) {
        uint64_t rb[ADOPT_STAT_COUNT];
        adopt_stats(p->adopt, rb);
        json_key(j, "rebuild");
        json_str(j, adopt_state_names[adopt_get_state(p->adopt)]);
        json_key(j, "rebuild_keys");
        json_uint(j, rb[ADOPT_STAT_rebuild_keys]);
    }
    sweep_json(j, p->sweep);
    json_obj_end(j);
}

static int serve_migration(struct admin *a, struct evhttp_request *req, struct evbuffer *b)
{
    (void)req;
    return serve_pools_json(a, b, migration_json, false);
}

/* --- / (the status page) and /status.json ------------------------------------- */

/* The page, under a policy that lets only its own script and style run
 * (status_page_csp) and no type but the one declared be guessed. */
static int serve_page(struct admin *a, struct evhttp_request *req, struct evbuffer *b)
{
    struct evkeyvalq *headers = evhttp_request_get_output_headers(req);
    char csp[512];

    (void)a;
    if (status_page_csp(status_page_html, status_page_html_len, csp, sizeof(csp)) != 0) {
        evbuffer_add_printf(b, "the status page has no script or style block\n");
        return HTTP_INTERNAL;
    }
    evhttp_add_header(headers, "Content-Security-Policy", csp);
    evhttp_add_header(headers, "X-Content-Type-Options", "nosniff");
    evhttp_add_header(headers, "Referrer-Policy", "no-referrer");
    evbuffer_add(b, status_page_html, status_page_html_len);
    return HTTP_OK;
}

static int serve_status(struct admin *a, struct evhttp_request *req, struct evbuffer *b)
{
    struct json_w j;
    int rc;

    evhttp_add_header(evhttp_request_get_output_headers(req), "X-Content-Type-Options",
                      "nosniff");
    json_w_init(&j, ADMIN_JSON_MAX, JSON_W_UTF8);
    json_w_sink(&j, admin_sink, b);
    rc = status_page_json(&j, a->w, &a->counters);
    rc = json_w_finish(&j) != 0 ? -1 : rc;
    json_w_free(&j);
    if (rc != 0) {
        evbuffer_drain(b, evbuffer_get_length(b));
        evbuffer_add_printf(b, "{}\n");
        log_warn("admin", "/status.json could not be written (memory or %u MiB): "
                 "answered 500", ADMIN_JSON_MAX >> 20);
        return HTTP_INTERNAL;
    }
    evbuffer_add(b, "\n", 1);
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
    { "/", "text/html; charset=utf-8", serve_page },
    { "/status", "text/html; charset=utf-8", serve_page },
    { "/status.json", "application/json", serve_status },
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

/* Reply bytes written to connections and not yet sent. */
static size_t admin_pending(const struct admin *a)
{
    size_t n = 0;

    for (uint32_t i = 0; i < a->nbevs; i++) {
        n += evbuffer_get_length(bufferevent_get_output(a->bevs[i]));
    }
    return n;
}

/*
 * Peers that ask and never read would each pin a whole reply (/metrics and
 * /status.json are megabytes with thousands of servers): past
 * ADMIN_PENDING_MAX unsent bytes a request is answered 503 without being
 * served.
 */
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
        evbuffer_add_printf(body, "not found; try /, /status.json, /metrics, "
                            "/healthz, /ring, /migration\n");
        evhttp_add_header(headers, "Content-Type", "text/plain; charset=utf-8");
    } else if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
        code = HTTP_BADMETHOD;
        evbuffer_add_printf(body, "only GET\n");
        evhttp_add_header(headers, "Allow", "GET");
        evhttp_add_header(headers, "Content-Type", "text/plain; charset=utf-8");
    } else if (admin_pending(a) > ADMIN_PENDING_MAX) {
        code = HTTP_SERVUNAVAIL;
        evbuffer_add_printf(body, "busy: earlier replies not yet read; try again\n");
        evhttp_add_header(headers, "Content-Type", "text/plain; charset=utf-8");
        log_limited(LOG_WARN, 1, "admin", "%zu reply bytes unsent: %s answered 503",
                    admin_pending(a), route->path);
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
    } else if (!a->paused && a->listener != NULL) {
        evconnlistener_enable(a->listener);     /* after admin_accept_error */
    }
}

/*
 * accept failed on evhttp's listener. Out of descriptors the connection
 * stays in the backlog and the listener would fire again at once, spinning
 * the loop (and libevent would log each time): it is disabled, and
 * admin_prune enables it again a tick later. arg is evhttp's, not ours.
 */
static void admin_accept_error(struct evconnlistener *l, void *arg)
{
    int err = EVUTIL_SOCKET_ERROR();

    (void)arg;
    if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
        evconnlistener_disable(l);
    }
    log_limited(LOG_WARN, 1, "admin", "accept failed: %s", strerror(err));
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

/* The admin port's listener, with SO_REUSEPORT as the pools' (a binary
 * upgrade's new process opens it next to this one: docs/ARCHITECTURE.md). */
static struct evconnlistener *admin_listen(struct admin *a, const char *addr,
                                           int port, char *err, size_t errlen)
{
    struct evutil_addrinfo hints = { .ai_family = AF_UNSPEC,
        .ai_socktype = SOCK_STREAM, .ai_flags = EVUTIL_AI_PASSIVE };
    struct evutil_addrinfo *res = NULL;
    struct evconnlistener *l;
    char portstr[8];

    snprintf(portstr, sizeof(portstr), "%d", port);
    if (evutil_getaddrinfo(addr, portstr, &hints, &res) != 0 || res == NULL) {
        snprintf(err, errlen, "cannot listen on %s:%d: cannot resolve the address",
                 addr, port);
        return NULL;
    }
    errno = 0;
    l = evconnlistener_new_bind(a->w->base, NULL, NULL, LEV_OPT_CLOSE_ON_FREE |
                                LEV_OPT_REUSEABLE | LEV_OPT_REUSEABLE_PORT |
                                LEV_OPT_CLOSE_ON_EXEC, 128,
                                res->ai_addr, (int)res->ai_addrlen);
    if (l == NULL) {
        snprintf(err, errlen, "cannot listen on %s:%d: %s", addr, port,
                 errno ? strerror(errno) : "cannot resolve the address");
    }
    evutil_freeaddrinfo(res);
    return l;
}

void admin_unlisten(struct admin *a)
{
    if (a != NULL && a->bound != NULL) {
        evhttp_del_accept_socket(a->http, a->bound);    /* frees the listener */
        a->bound = NULL;
        a->listener = NULL;
    }
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
    if ((a->listener = admin_listen(a, addr, port, err, errlen)) == NULL ||
        (a->bound = evhttp_bind_listener(a->http, a->listener)) == NULL) {
        if (a->listener != NULL) {
            evconnlistener_free(a->listener);
            a->listener = NULL;
            snprintf(err, errlen, "out of memory");
        }
        admin_free(a);
        return NULL;
    }
    evconnlistener_set_error_cb(a->listener, admin_accept_error);
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
