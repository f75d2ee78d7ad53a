/*
 * router.c — pools at run time and the life of a request.
 *
 * Design notes
 * - Routing uses `route`, the data ring minus ejected servers (twemproxy's
 *   auto_eject_hosts); when nothing is ejected it is the data ring itself.
 *   Ejection never changes `ring`, which says where the data lives.
 * - A request's reply goes straight to the client's output when the request
 *   is the oldest one the client waits for; otherwise it collects in
 *   request.reply until the requests before it are answered (frag_sink).
 * - A multi-get spread over several backends sends each its share; each
 *   share's VALUE blocks collect in its own buffer in the order the backend
 *   returns them (the order asked), and when all shares are in, the blocks
 *   are taken from the front of those buffers in the client's key order.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "client.h"
#include "index.h"
#include "log.h"
#include "router.h"

uint64_t worker_now_ms(struct worker *w)
{
    struct timeval tv;

    event_base_gettimeofday_cached(w->base, &tv);
    return (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
}

/* --- pools -------------------------------------------------------------- */

int pool_init(struct pool *p, struct worker *w, struct conf_pool *conf,
              char *err, size_t errlen)
{
    memset(p, 0, sizeof(*p));
    p->w = w;
    p->conf = conf;
    p->name = conf->name;
    TAILQ_INIT(&p->clients);
    p->ring = conf_pool_ring(conf, err, errlen);
    if (p->ring == NULL) {
        return -1;
    }
    p->route = ring_ref(p->ring);
    p->nbackends = conf->nservers;
    p->backends = calloc(p->nbackends, sizeof(*p->backends));
    p->route_backend = malloc(p->nbackends * sizeof(*p->route_backend));
    p->frag_of_backend = malloc((p->nbackends + 1) * sizeof(*p->frag_of_backend));
    p->frag_order = malloc((p->nbackends + 1) * sizeof(*p->frag_order));
    if (p->backends == NULL || p->route_backend == NULL ||
        p->frag_of_backend == NULL || p->frag_order == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (uint32_t i = 0; i <= p->nbackends; i++) {
        p->frag_of_backend[i] = UINT16_MAX;
    }
    for (uint32_t i = 0; i < p->nbackends; i++) {
        p->route_backend[i] = i;
        if (backend_init(&p->backends[i], p, i, &conf->servers[i], err, errlen) != 0) {
            return -1;
        }
    }
    if (conf->index.enabled &&
        (p->idx = idx_new(w->base, p->name, &conf->index, p->ring)) == NULL) {
        snprintf(err, errlen, "out of memory starting the index writer");
        return -1;
    }
    if (conf->preconnect) {
        for (uint32_t i = 0; i < p->nbackends; i++) {
            backend_preconnect(&p->backends[i]);
        }
    }
    return 0;
}

void pool_close(struct pool *p)
{
    struct client *c;

    while ((c = TAILQ_FIRST(&p->clients)) != NULL) {
        client_close(c, "shutdown");
    }
    for (uint32_t i = 0; p->backends != NULL && i < p->nbackends; i++) {
        backend_close(&p->backends[i]);
    }
    free(p->backends);
    idx_free(p->idx);
    p->idx = NULL;
    free(p->route_backend);
    free(p->frag_of_backend);
    free(p->frag_order);
    ring_unref(p->route);
    ring_unref(p->ring);
    p->backends = NULL;
    p->route = p->ring = NULL;
}

struct backend *pool_route(struct pool *p, const char *key, size_t len)
{
    const struct ring *r = p->route;

    if (r == NULL) {
        return NULL;    /* every server is ejected */
    }
    uint32_t s = ring_server_of(r, ring_key_hash(r, key, len));
    return &p->backends[p->route_backend[s]];
}

/* Rebuild the routing ring from the servers that are not ejected. */
void pool_eject(struct pool *p, struct backend *be, bool eject)
{
    struct ring_server_spec *specs = calloc(p->nbackends, sizeof(*specs));
    uint32_t n = 0;
    char err[256];

    be->state = eject ? BACKEND_EJECTED : BACKEND_UP;
    if (specs == NULL) {
        return;
    }
    for (uint32_t i = 0; i < p->nbackends; i++) {
        if (p->backends[i].state == BACKEND_EJECTED) {
            continue;
        }
        const struct ring_server *s = &p->ring->servers[i];
        p->route_backend[n] = i;
        specs[n++] = (struct ring_server_spec){ .identity = s->identity,
            .addr = s->addr, .weight = s->weight };
    }
    struct ring *route = NULL;
    if (n == p->nbackends) {
        route = ring_ref(p->ring);
    } else if (n > 0) {
        struct ring_params params = { .compat = p->ring->compat,
            .hash = p->ring->hash, .has_tag = p->ring->has_tag,
            .servers = specs, .nservers = n };
        memcpy(params.tag, p->ring->tag, 2);
        route = ring_build(&params, err, sizeof(err));
        if (route == NULL) {
            log_error("router", "%s: cannot rebuild the routing ring: %s", p->name, err);
            free(specs);
            return;
        }
    }
    free(specs);
    ring_unref(p->route);
    p->route = route;
    log_notice("router", "%s: routing over %u of %u servers", p->name, n,
               p->nbackends);
}

/* --- requests ------------------------------------------------------------ */

struct request *request_new(struct client *c, enum proto_cmd cmd, uint16_t nfrags)
{
    struct request *r = calloc(1, sizeof(*r));

    if (r == NULL) {
        return NULL;
    }
    r->cmd = cmd;
    r->nfrags = r->pending = nfrags;
    if (nfrags <= 1) {
        r->frags = &r->frag1;
    } else if ((r->frags = calloc(nfrags, sizeof(*r->frags))) == NULL) {
        free(r);
        return NULL;
    }
    for (uint16_t i = 0; i < nfrags; i++) {
        r->frags[i].req = r;
    }
    r->pool = c->pool;
    r->client = c;
    TAILQ_INSERT_TAIL(&c->reqs, r, link);
    c->nreqs++;
    return r;
}

void request_detach(struct request *r)
{
    struct client *c = r->client;

    if (c != NULL) {
        TAILQ_REMOVE(&c->reqs, r, link);
        c->nreqs--;
        r->client = NULL;
    }
}

void request_free(struct request *r)
{
    if (r == NULL) {
        return;
    }
    for (uint16_t i = 0; r->frags != NULL && i < r->nfrags; i++) {
        if (r->frags[i].buf != NULL) {
            evbuffer_free(r->frags[i].buf);
        }
    }
    if (r->frags != &r->frag1) {
        free(r->frags);
    }
    if (r->reply != NULL) {
        evbuffer_free(r->reply);
    }
    free(r->error_line);
    free(r->keys);
    free(r->key_off);
    free(r->key_frag);
    free(r->key_hit);
    free(r);
}

void request_orphan(struct request *r)
{
    r->client = NULL;
    if (r->done) {
        request_free(r);
    }
}

static bool request_is_head(const struct request *r)
{
    return r->client != NULL && TAILQ_FIRST(&r->client->reqs) == r;
}

/* Where the request's reply bytes go now. */
static struct evbuffer *request_sink(struct request *r)
{
    if (r->client == NULL || r->quiet) {
        return NULL;
    }
    if (request_is_head(r)) {
        client_mark_dirty(r->client);
        return r->client->out;
    }
    if (r->reply == NULL) {
        r->reply = evbuffer_new();
    }
    return r->reply;
}

struct evbuffer *frag_sink(struct frag *f)
{
    struct request *r = f->req;

    if (r->nfrags <= 1) {
        return request_sink(r);
    }
    if (!f->retrieval || r->client == NULL) {
        return NULL;    /* a fan-out's replies are summed up at the end */
    }
    if (f->buf == NULL) {
        f->buf = evbuffer_new();
    }
    return f->buf;
}

void request_reply(struct request *r, const char *data, size_t len)
{
    struct evbuffer *sink = request_sink(r);

    if (sink != NULL) {
        evbuffer_add(sink, data, len);
    }
}

void request_reply_line(struct request *r, const char *line)
{
    struct evbuffer *sink = request_sink(r);

    if (sink != NULL) {
        evbuffer_add_printf(sink, "%s\r\n", line);
    }
}

/* All shares of a multi-backend request are in: assemble its reply. */
static void request_assemble(struct request *r)
{
    struct evbuffer *sink = request_sink(r);

    if (sink == NULL) {
        return;
    }
    if (!r->frags[0].retrieval) {
        evbuffer_add_printf(sink, "%s\r\n", r->error_line ? r->error_line : "OK");
        return;
    }
    for (uint32_t i = 0; i < r->nkeys; i++) {
        if (r->key_hit[i] > 0) {
            evbuffer_remove_buffer(r->frags[r->key_frag[i]].buf, sink, r->key_hit[i]);
        }
    }
    evbuffer_add(sink, "END\r\n", 5);
}

void request_frag_done(struct frag *f)
{
    struct request *r = f->req;

    if (--r->pending > 0) {
        return;
    }
    r->done = true;
    if (r->frags[0].retrieval) {
        struct pool *p = r->pool;
        p->stats[STAT_get_hits] += r->hits;
        if (r->nkeys > r->hits) {
            p->stats[STAT_get_misses] += r->nkeys - r->hits;
        }
    }
    if (r->nfrags > 1) {
        request_assemble(r);
    }
    if (r->flushes_index && r->error_line == NULL && r->pool->idx != NULL) {
        idx_pool_flushed(r->pool->idx);
    }
    if (r->client == NULL) {
        request_free(r);    /* noreply, or its client is gone */
        return;
    }
    client_advance(r->client);
}

void frag_fail(struct frag *f, const char *line)
{
    struct request *r = f->req;
    struct evbuffer *sink;

    f->failed = true;
    r->flushes_index = false;
    if (r->nfrags == 1) {
        if ((sink = frag_sink(f)) != NULL) {
            evbuffer_add_printf(sink, "%s\r\n", line);
        }
    } else if (!f->retrieval && r->error_line == NULL) {
        r->error_line = strdup(line);
    }
    request_frag_done(f);
}

void frags_fail_unsent(struct request *r, uint32_t n, const char *line)
{
    for (uint16_t i = 0; n > 0 && i < r->nfrags; i++) {
        if (r->frags[i].failed && r->frags[i].conn == NULL) {
            n--;
            frag_fail(&r->frags[i], line);  /* the last one may free r */
        }
    }
}
