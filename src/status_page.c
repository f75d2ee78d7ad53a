/*
 * status_page.c — the status page's security policy and the JSON view it
 * reads (status_page.h; docs/ARCHITECTURE.md, "Observability").
 *
 * Design notes
 * - The page's script and style are inline, so the policy names their
 *   SHA-256 instead of allowing 'unsafe-inline': it is computed here from
 *   the bytes served, so editing src/status_page.html can never leave the
 *   page under a stale hash (it would not run, and its test would fail).
 * - /status.json writes each counter table whole (stats.h), by name, so a
 *   counter added to a table reaches the page's JSON with no change here.
 * - A backend's share is of the pool's ring (during a resize, the ring the
 *   data is going to); a backend that ring does not list (a server being
 *   removed, still serving its keys until they moved) is shown with
 *   in_ring false and share 0.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sha2.h>

#include "admin.h"
#include "index.h"
#include "json.h"
#include "migrate.h"
#include "pool.h"
#include "proxy.h"
#include "status_page.h"
#include "tstats.h"

/* --- the security policy ------------------------------------------------------ */

/* The bytes between open and close (the first of each), or NULL. */
static const unsigned char *block_of(const unsigned char *page, size_t len,
                                     const char *open, const char *close, size_t *blen)
{
    const unsigned char *a = memmem(page, len, open, strlen(open));
    const unsigned char *b;

    if (a == NULL) {
        return NULL;
    }
    a += strlen(open);
    b = memmem(a, len - (size_t)(a - page), close, strlen(close));
    if (b == NULL) {
        return NULL;
    }
    *blen = (size_t)(b - a);
    return a;
}

/* "'sha256-<base64>'" of data into out (60 bytes suffice). */
static void csp_hash(const unsigned char *data, size_t len, char *out, size_t outlen)
{
    static const char b64[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    uint8_t d[SHA256_DIGEST_LENGTH + 1] = { 0 };    /* + 1: whole 3-byte groups */
    char text[48];
    size_t n = 0;
    SHA2_CTX ctx;

    SHA256Init(&ctx);
    SHA256Update(&ctx, data, len);
    SHA256Final(d, &ctx);
    for (size_t i = 0; i < SHA256_DIGEST_LENGTH; i += 3) {
        uint32_t v = (uint32_t)d[i] << 16 | (uint32_t)d[i + 1] << 8 | d[i + 2];
        text[n++] = b64[v >> 18 & 63];
        text[n++] = b64[v >> 12 & 63];
        text[n++] = i + 1 < SHA256_DIGEST_LENGTH ? b64[v >> 6 & 63] : '=';
        text[n++] = i + 2 < SHA256_DIGEST_LENGTH ? b64[v & 63] : '=';
    }
    text[n] = '\0';
    snprintf(out, outlen, "'sha256-%s'", text);
}

int status_page_csp(const unsigned char *page, size_t len, char *buf, size_t buflen)
{
    const unsigned char *script, *style;
    size_t nscript = 0, nstyle = 0;
    char hscript[64], hstyle[64];
    int n;

    script = block_of(page, len, "<script>", "</script>", &nscript);
    style = block_of(page, len, "<style>", "</style>", &nstyle);
    if (script == NULL || style == NULL) {
        return -1;
    }
    csp_hash(script, nscript, hscript, sizeof(hscript));
    csp_hash(style, nstyle, hstyle, sizeof(hstyle));
    n = snprintf(buf, buflen, "default-src 'none'; script-src %s; style-src %s; "
                 "connect-src 'self'; img-src data:; base-uri 'none'; "
                 "form-action 'none'; frame-ancestors 'none'", hscript, hstyle);
    return n > 0 && (size_t)n < buflen ? 0 : -1;
}

/* --- /status.json ---------------------------------------------------------------- */

static void counters_json(struct json_w *j, const struct stats_desc *desc,
                          const uint64_t *v, int n)
{
    json_key(j, "counters");
    json_obj(j);
    for (int i = 0; i < n; i++) {
        json_key(j, desc[i].name);
        json_uint(j, v[i]);
    }
    json_obj_end(j);
}

/* One backend; sv: its server in the pool's ring, or NULL; st: its
 * counters summed over the threads (tstats.h). */
static void server_json(struct json_w *j, const struct backend *be,
                        const struct ring_server *sv, const uint64_t *st)
{
    json_obj(j);
    json_key(j, "identity");
    json_str(j, be->identity);
    json_key(j, "addr");
    json_str(j, be->addr.text);
    json_key(j, "state");
    json_str(j, backend_state_names[be->state]);
    json_key(j, "in_ring");
    json_bool(j, sv != NULL);
    json_key(j, "weight");
    json_uint(j, sv != NULL ? sv->weight : 0);
    json_key(j, "points");
    json_uint(j, sv != NULL ? sv->npoints : 0);
    json_key(j, "share");
    json_real(j, sv != NULL ? (double)sv->span / RING_SPACE : 0.0);
    counters_json(j, stats_backend_desc, st, STAT_BACKEND_COUNT);
    json_obj_end(j);
}

/* The pool's backends, those of its ring first in ring order. */
static int servers_json(struct json_w *j, uint32_t thread, const struct pool *p)
{
    const struct ring *r = p->ring;
    bool *listed = calloc(p->nbackends ? p->nbackends : 1, sizeof(*listed));

    if (listed == NULL) {
        return -1;
    }
    uint64_t (*sum)[STAT_BACKEND_COUNT] = tstats_backends_sum(thread, p);
    json_key(j, "servers");
    json_arr(j);
    for (uint32_t s = 0; p->ring_be != NULL && s < r->nservers; s++) {
        const struct backend *be = p->ring_be[s];
        const uint64_t *st = be->stats;     /* not in p->backends: its own */
        if (be->slot < p->nbackends && p->backends[be->slot] == be) {
            listed[be->slot] = true;
            st = sum[be->slot];
        }
        server_json(j, be, &r->servers[s], st);
    }
    for (uint32_t b = 0; b < p->nbackends; b++) {
        if (!listed[b]) {
            server_json(j, p->backends[b], NULL, sum[b]);
        }
    }
    json_arr_end(j);
    free(sum);
    free(listed);
    return 0;
}

static int pool_json(struct json_w *j, uint32_t thread, const struct pool *p)
{
    uint64_t sum[STAT_POOL_COUNT];

    json_obj(j);
    json_key(j, "name");
    json_str(j, p->name);
    json_key(j, "ready");
    json_bool(j, p->ready);
    json_key(j, "listening");
    json_bool(j, p->listener != NULL);
    json_key(j, "indexed");
    json_bool(j, p->idx != NULL);
    json_key(j, "migrating");
    json_bool(j, mig_active(p->mig));
    json_key(j, "index_health");
    json_str_or_null(j, p->idx != NULL ?
                     idx_health_names[idx_health(p->idx, IDX_CONN_COUNT, NULL)] : NULL);
    json_key(j, "hash");
    json_str(j, hash_names[p->ring->hash]);
    json_key(j, "points");
    json_uint(j, p->ring->npoints);
    tstats_pool_sum(thread, p, sum);    /* every thread's (tstats.h) */
    counters_json(j, stats_pool_desc, sum, STAT_POOL_COUNT);
    int rc = servers_json(j, thread, p);
    json_obj_end(j);
    return rc;
}

static void counter_or_null(struct json_w *j, const char *key, const uint64_t *v)
{
    json_key(j, key);
    if (v != NULL) {
        json_uint(j, *v);
    } else {
        json_null(j);
    }
}

int status_page_json(struct json_w *j, struct worker *w, const struct admin_counters *c)
{
    int rc = 0;

    json_obj(j);
    json_key(j, "version");
    json_str(j, RINGPROXY_VERSION);
    json_key(j, "uptime_ms");
    json_uint(j, worker_now_ms(w) - w->started);
    json_key(j, "stopping");
    json_bool(j, w->stopping);
    counter_or_null(j, "reloads", c != NULL ? c->reloads : NULL);
    counter_or_null(j, "reload_failures", c != NULL ? c->reload_failures : NULL);
    json_key(j, "pools");
    json_arr(j);
    for (uint32_t i = 0; rc == 0 && i < w->npools; i++) {
        if (!w->pools[i]->closing) {
            rc = pool_json(j, w->id, w->pools[i]);
        }
    }
    json_arr_end(j);
    json_obj_end(j);
    return rc;
}
