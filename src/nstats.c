/*
 * nstats.c — nutcracker's stats port (nstats.h).
 *
 * Design notes
 * - One table per level (NSTATS_POOL_FIELDS, NSTATS_SERVER_FIELDS): each of
 *   nutcracker's fields, what it means here, and the function computing it
 *   from ringproxy's counters (stats.h). The JSON and `-D` both walk them.
 *   Where ringproxy keeps no equivalent the value is 0 and the table says so.
 * - Values are read when a client connects: nutcracker's -i (the interval
 *   its stats thread aggregates at) is accepted by main.c and not needed.
 * - The counters are the raw ones: a client's `stats reset` changes only
 *   what its `stats` command shows (client.c), so these never go down.
 * - What the peer sends is never parsed. Once the JSON is written the write
 *   side is shut and what arrives is discarded (at most NSTATS_DISCARD_MAX
 *   bytes) until the peer closes: closing with unread bytes would send a
 *   reset, which can discard the JSON before a client that wrote something
 *   (an HTTP request, say) reads it. At most NSTATS_MAX_CONNS connections
 *   are open (more are closed at once), each for at most NSTATS_TIMEOUT_SEC
 *   per write or read, and the JSON has a byte budget.
 * - Peers that do not read would each pin a whole JSON (megabytes with
 *   thousands of servers): while the unsent bytes of all connections pass
 *   NSTATS_PENDING_MAX, a new connection is closed at once, as past the cap.
 * - Out of descriptors the listener pauses (on_accept_error) rather than
 *   spin on a failing accept.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <unistd.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>

#include "backend.h"
#include "defer.h"
#include "json.h"
#include "log.h"
#include "mem.h"
#include "nstats.h"
#include "pool.h"
#include "proxy.h"
#include "tstats.h"

#define NSTATS_MAX_CONNS 64
#define NSTATS_TIMEOUT_SEC 10
#define NSTATS_JSON_MAX (64u << 20)
#define NSTATS_PENDING_MAX (32u << 20)  /* unsent JSON of all connections */
#define NSTATS_DISCARD_MAX 65536
#define NSTATS_ACCEPT_PAUSE_MS 100      /* out of descriptors: accept again after */

struct nstats_conn {
    struct nstats *s;                   /* NULL once closed */
    struct bufferevent *bev;
    size_t discarded;                   /* bytes read and dropped */
    TAILQ_ENTRY(nstats_conn) link;
};

struct nstats {
    struct worker *w;
    struct evconnlistener *listener;
    TAILQ_HEAD(, nstats_conn) conns;
    uint32_t nconns;
    struct event *accept_retry;         /* re-enables the paused listener */
};

/* --- the fields ------------------------------------------------------------ */

static uint64_t sat_sub(uint64_t a, uint64_t b)
{
    return a > b ? a - b : 0;
}

/* A pool as the fields see it: its counters and its backends' summed over
 * the threads (tstats.h), as `stats` and /metrics show them. */
struct nstats_pool_view {
    const struct pool *p;
    uint64_t stats[STAT_POOL_COUNT];
    uint64_t (*be_stats)[STAT_BACKEND_COUNT];   /* row j: p->backends[j] */
};

static uint64_t pool_closed_by_proxy(const struct nstats_pool_view *v)
{
    return v->stats[STAT_closed_bad_clients] + v->stats[STAT_closed_slow_clients] +
           v->stats[STAT_closed_idle_clients] + v->stats[STAT_closed_stalled_clients];
}

static uint64_t pool_client_eof(const struct nstats_pool_view *v)
{
    return sat_sub(v->stats[STAT_total_connections] - v->stats[STAT_curr_connections],
                   pool_closed_by_proxy(v));
}

static uint64_t pool_client_connections(const struct nstats_pool_view *v)
{
    return v->stats[STAT_curr_connections];
}

static uint64_t pool_server_ejects(const struct nstats_pool_view *v)
{
    uint64_t n = 0;

    for (uint32_t i = 0; i < v->p->nbackends; i++) {
        n += v->be_stats[i][STAT_BE_ejections];
    }
    return n;
}

static uint64_t pool_forward_error(const struct nstats_pool_view *v)
{
    return v->stats[STAT_server_errors];
}

static uint64_t pool_fragments(const struct nstats_pool_view *v)
{
    return v->stats[STAT_fragments];
}

static uint64_t be_none(const struct backend *be, const uint64_t *st)
{
    (void)be, (void)st;
    return 0;
}

static uint64_t be_err(const struct backend *be, const uint64_t *st)
{
    (void)be;
    return sat_sub(st[STAT_BE_errors], st[STAT_BE_timeouts]) +
           st[STAT_BE_connect_failures];
}

static uint64_t be_timedout(const struct backend *be, const uint64_t *st)
{
    (void)be;
    return st[STAT_BE_timeouts];
}

static uint64_t be_connections(const struct backend *be, const uint64_t *st)
{
    uint64_t n = 0;

    (void)st;   /* this thread's connections only */
    for (uint32_t i = 0; i < be->nconns; i++) {
        n += be->conns[i].state == BCONN_UP;
    }
    return n;
}

static uint64_t be_ejected_at(const struct backend *be, const uint64_t *st)
{
    (void)st;
    if (be->state != BACKEND_EJECTED) {
        return 0;
    }
    return sat_sub(be->retry_ms, (uint64_t)be->pool->conf->server_retry_timeout) * 1000;
}

static uint64_t be_eof(const struct backend *be, const uint64_t *st)
{
    (void)be;
    return st[STAT_BE_closed_by_server];
}

static uint64_t be_request_bytes(const struct backend *be, const uint64_t *st)
{
    (void)be;
    return st[STAT_BE_bytes_sent];
}

static uint64_t be_response_bytes(const struct backend *be, const uint64_t *st)
{
    (void)be;
    return st[STAT_BE_bytes_received];
}

static uint64_t be_requests(const struct backend *be, const uint64_t *st)
{
    (void)be;
    return st[STAT_BE_requests];
}

static uint64_t be_responses(const struct backend *be, const uint64_t *st)
{
    (void)be;
    return sat_sub(st[STAT_BE_requests],
                   st[STAT_BE_errors] + st[STAT_BE_inflight]);
}

static uint64_t be_in_queue_bytes(const struct backend *be, const uint64_t *st)
{
    uint64_t n = 0;

    (void)st;   /* this thread's connections only */
    for (uint32_t i = 0; i < be->nconns; i++) {
        if (be->conns[i].out != NULL) {
            n += evbuffer_get_length(be->conns[i].out);
        }
    }
    return n;
}

static uint64_t be_out_queue(const struct backend *be, const uint64_t *st)
{
    (void)be;
    return st[STAT_BE_inflight];
}

/* X(name, getter, what it is here): nutcracker's fields, in its order. */
#define NSTATS_POOL_FIELDS(X)                                                   \
    X(client_eof, pool_client_eof,                                              \
      "client connections closed by the client (accepted - open - client_err)") \
    X(client_err, pool_closed_by_proxy,                                         \
      "client connections the proxy closed (abuse, slow, idle, stalled)")       \
    X(client_connections, pool_client_connections, "client connections open")   \
    X(server_ejects, pool_server_ejects,                                        \
      "times auto_eject_hosts took a server out of routing")                   \
    X(forward_error, pool_forward_error,                                        \
      "requests failed because a backend failed (stats: server_errors)")        \
    X(fragments, pool_fragments,                                                \
      "shares multi-key gets were split into (one per backend line)")

#define NSTATS_SERVER_FIELDS(X)                                                 \
    X(server_eof, be_eof, "connections the server closed")                      \
    X(server_err, be_err,                                                      \
      "requests failed by a refused or lost connection, and failed connects")   \
    X(server_timedout, be_timedout, "requests that timed out")                  \
    X(server_connections, be_connections, "connections up")                     \
    X(server_ejected_at, be_ejected_at,                                         \
      "while ejected: when, in usec since the epoch; else 0")                   \
    X(requests, be_requests, "requests sent")                                   \
    X(request_bytes, be_request_bytes, "bytes written to the server")           \
    X(responses, be_responses, "requests answered (sent - failed - in flight)") \
    X(response_bytes, be_response_bytes, "bytes read from the server")          \
    X(in_queue, be_none, "always 0: requests are written as they arrive")       \
    X(in_queue_bytes, be_in_queue_bytes, "request bytes not yet written")       \
    X(out_queue, be_out_queue, "requests sent and not yet answered")            \
    X(out_queue_bytes, be_none, "always 0: bytes in flight are not counted")

struct nstats_pool_field {
    const char *name;
    uint64_t (*get)(const struct nstats_pool_view *v);
    const char *desc;
};

struct nstats_server_field {
    const char *name;
    uint64_t (*get)(const struct backend *be, const uint64_t *st);
    const char *desc;
};

#define NSTATS_ROW(name, get, desc) { #name, get, desc },
static const struct nstats_pool_field nstats_pool_fields[] = {
    NSTATS_POOL_FIELDS(NSTATS_ROW)
};
static const struct nstats_server_field nstats_server_fields[] = {
    NSTATS_SERVER_FIELDS(NSTATS_ROW)
};
#undef NSTATS_ROW

#define NELEMS(a) (sizeof(a) / sizeof((a)[0]))

void nstats_describe(FILE *out)
{
    fprintf(out, "ringproxy %s: nutcracker's stats fields, from ringproxy's counters\n"
            "\npool stats:\n", RINGPROXY_VERSION);
    for (size_t i = 0; i < NELEMS(nstats_pool_fields); i++) {
        fprintf(out, "  %-19s \"%s\"\n", nstats_pool_fields[i].name,
                nstats_pool_fields[i].desc);
    }
    fprintf(out, "\nserver stats:\n");
    for (size_t i = 0; i < NELEMS(nstats_server_fields); i++) {
        fprintf(out, "  %-19s \"%s\"\n", nstats_server_fields[i].name,
                nstats_server_fields[i].desc);
    }
}

/* --- the JSON ---------------------------------------------------------------- */

static void nstats_sink(void *arg, const char *data, size_t len)
{
    evbuffer_add(arg, data, len);
}

static void nstats_pool_json(struct json_w *j, const struct nstats_pool_view *v)
{
    const struct pool *p = v->p;

    json_key(j, p->name);
    json_obj(j);
    for (size_t i = 0; i < NELEMS(nstats_pool_fields); i++) {
        json_key(j, nstats_pool_fields[i].name);
        json_uint(j, nstats_pool_fields[i].get(v));
    }
    for (uint32_t b = 0; b < p->nbackends; b++) {
        const struct backend *be = p->backends[b];
        if (be->retiring) {     /* its identity's new address is listed */
            continue;
        }
        json_key(j, be->identity);
        json_obj(j);
        for (size_t i = 0; i < NELEMS(nstats_server_fields); i++) {
            json_key(j, nstats_server_fields[i].name);
            json_uint(j, nstats_server_fields[i].get(be, v->be_stats[b]));
        }
        json_obj_end(j);
    }
    json_obj_end(j);
}

/* The whole object into b; -1 (b emptied) past the budget. */
static int nstats_json(struct worker *w, struct evbuffer *b)
{
    uint64_t now = worker_now_ms(w), total = 0, curr = 0;
    char host[256];
    struct json_w j;
    int rc;

    if (gethostname(host, sizeof(host)) != 0) {
        snprintf(host, sizeof(host), "unknown");
    }
    host[sizeof(host) - 1] = '\0';
    struct nstats_pool_view *views = rp_xcalloc(w->npools ? w->npools : 1,
                                                 sizeof(*views), "summed counters");
    for (uint32_t i = 0; i < w->npools; i++) {
        const struct pool *p = w->pools[i];
        if (!p->closing) {
            views[i].p = p;
            tstats_pool_sum(w->id, p, views[i].stats);
            views[i].be_stats = tstats_backends_sum(w->id, p);
            total += views[i].stats[STAT_total_connections];
            curr += views[i].stats[STAT_curr_connections];
        }
    }
    json_w_init(&j, NSTATS_JSON_MAX, JSON_W_UTF8);
    json_w_sink(&j, nstats_sink, b);
    json_obj(&j);
    json_key(&j, "service");
    json_str(&j, "ringproxy");
    json_key(&j, "source");
    json_str(&j, host);
    json_key(&j, "version");
    json_str(&j, RINGPROXY_VERSION);
    json_key(&j, "uptime");
    json_uint(&j, sat_sub(now, w->started) / 1000);
    json_key(&j, "timestamp");
    json_uint(&j, now / 1000);
    json_key(&j, "total_connections");
    json_uint(&j, total);
    json_key(&j, "curr_connections");
    json_uint(&j, curr);
    for (uint32_t i = 0; i < w->npools; i++) {
        if (views[i].p != NULL) {   /* not closing: a new pool may have its name */
            nstats_pool_json(&j, &views[i]);
        }
        free(views[i].be_stats);
    }
    free(views);
    json_obj_end(&j);
    rc = json_w_finish(&j);
    json_w_free(&j);
    if (rc != 0) {
        evbuffer_drain(b, evbuffer_get_length(b));
        return -1;
    }
    evbuffer_add(b, "\n", 1);
    return 0;
}

/* --- the port ------------------------------------------------------------------ */

/* JSON bytes written to connections and not yet sent. */
static size_t nstats_pending(const struct nstats *s)
{
    const struct nstats_conn *c;
    size_t n = 0;

    TAILQ_FOREACH(c, &s->conns, link) {
        n += evbuffer_get_length(bufferevent_get_output(c->bev));
    }
    return n;
}

static void nstats_conn_release(void *arg)
{
    struct nstats_conn *c = arg;

    bufferevent_free(c->bev);
    free(c);
}

/* Unlink c and free it at the end of the loop turn (defer.h). */
static void nstats_conn_close(struct nstats_conn *c)
{
    struct nstats *s = c->s;

    if (s == NULL) {
        return;
    }
    c->s = NULL;
    bufferevent_disable(c->bev, EV_READ | EV_WRITE);
    TAILQ_REMOVE(&s->conns, c, link);
    s->nconns--;
    defer_add(s->w->defer, nstats_conn_release, c);
}

static void on_conn_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev, (void)what;      /* error, EOF or a timeout */
    nstats_conn_close(arg);
}

/* After the JSON: drop what the peer sends until it closes. */
static void on_discard(struct bufferevent *bev, void *arg)
{
    struct nstats_conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);

    c->discarded += evbuffer_get_length(in);
    evbuffer_drain(in, evbuffer_get_length(in));
    if (c->discarded > NSTATS_DISCARD_MAX) {
        nstats_conn_close(c);
    }
}

static void on_written(struct bufferevent *bev, void *arg)
{
    struct nstats_conn *c = arg;
    struct timeval tv = { NSTATS_TIMEOUT_SEC, 0 };

    if (shutdown(bufferevent_getfd(bev), SHUT_WR) != 0) {
        nstats_conn_close(c);
        return;
    }
    bufferevent_setcb(bev, on_discard, NULL, on_conn_event, c);
    bufferevent_disable(bev, EV_WRITE);
    bufferevent_set_timeouts(bev, &tv, NULL);
    bufferevent_enable(bev, EV_READ);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd,
                      struct sockaddr *sa, int salen, void *arg)
{
    struct nstats *s = arg;
    struct timeval tv = { NSTATS_TIMEOUT_SEC, 0 };
    struct nstats_conn *c;

    (void)l, (void)sa, (void)salen;
    if (s->nconns >= NSTATS_MAX_CONNS || nstats_pending(s) > NSTATS_PENDING_MAX ||
        (c = calloc(1, sizeof(*c))) == NULL) {
        log_limited(LOG_WARN, 1, "nstats", "stats port: %u connections open, "
                    "%zu bytes unsent (or out of memory): connection closed",
                    s->nconns, nstats_pending(s));
        evutil_closesocket(fd);
        return;
    }
    c->bev = bufferevent_socket_new(s->w->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (c->bev == NULL) {
        evutil_closesocket(fd);
        free(c);
        return;
    }
    c->s = s;
    TAILQ_INSERT_TAIL(&s->conns, c, link);
    s->nconns++;
    if (nstats_json(s->w, bufferevent_get_output(c->bev)) != 0) {
        log_limited(LOG_WARN, 1, "nstats", "stats JSON passed %u MiB: connection "
                    "closed", NSTATS_JSON_MAX >> 20);
        nstats_conn_close(c);
        return;
    }
    bufferevent_setcb(c->bev, NULL, on_written, on_conn_event, c);
    bufferevent_set_timeouts(c->bev, NULL, &tv);
    bufferevent_enable(c->bev, EV_WRITE);
}

/* accept failed. Out of descriptors (or memory) the pending connection stays
 * in the backlog and the listener would fire again at once, spinning the
 * loop: pause it instead, as the client port does (proxy.c,
 * on_accept_error). */
static void on_accept_error(struct evconnlistener *l, void *arg)
{
    struct nstats *s = arg;
    int err = EVUTIL_SOCKET_ERROR();
    struct timeval tv = { 0, NSTATS_ACCEPT_PAUSE_MS * 1000 };

    if (err != EMFILE && err != ENFILE && err != ENOBUFS && err != ENOMEM) {
        log_limited(LOG_ERROR, 1, "nstats", "stats port: accept failed: %s",
                    strerror(err));
        return;
    }
    log_limited(LOG_WARN, 1, "nstats", "stats port: accept failed: %s; not "
                "accepting for %d ms", strerror(err), NSTATS_ACCEPT_PAUSE_MS);
    evconnlistener_disable(l);
    evtimer_add(s->accept_retry, &tv);
}

static void on_accept_retry(evutil_socket_t fd, short what, void *arg)
{
    struct nstats *s = arg;

    (void)fd, (void)what;
    evconnlistener_enable(s->listener);
}

struct nstats *nstats_start(struct worker *w, const char *addr, int port, char *err,
                            size_t errlen)
{
    struct evutil_addrinfo hints = { .ai_family = AF_UNSPEC,
        .ai_socktype = SOCK_STREAM, .ai_flags = EVUTIL_AI_PASSIVE };
    struct evutil_addrinfo *res = NULL;
    struct nstats *s;
    char service[8];

    if (port == 0) {
        snprintf(err, errlen, "%s", "");
        return NULL;
    }
    snprintf(service, sizeof(service), "%d", port);
    if (evutil_getaddrinfo(addr, service, &hints, &res) != 0 || res == NULL) {
        snprintf(err, errlen, "cannot resolve %s", addr);
        return NULL;
    }
    if ((s = calloc(1, sizeof(*s))) == NULL) {
        evutil_freeaddrinfo(res);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->w = w;
    TAILQ_INIT(&s->conns);
    if ((s->accept_retry = evtimer_new(w->base, on_accept_retry, s)) == NULL) {
        evutil_freeaddrinfo(res);
        free(s);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    errno = 0;
    s->listener = evconnlistener_new_bind(w->base, on_accept, s,
                                          LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE |
                                          LEV_OPT_CLOSE_ON_EXEC, 128, res->ai_addr,
                                          (int)res->ai_addrlen);
    evutil_freeaddrinfo(res);
    if (s->listener == NULL) {
        snprintf(err, errlen, "cannot listen on %s:%d: %s", addr, port,
                 errno ? strerror(errno) : "unknown error");
        event_free(s->accept_retry);
        free(s);
        return NULL;
    }
    evconnlistener_set_error_cb(s->listener, on_accept_error);
    log_notice("nstats", "stats port (nutcracker's JSON) on %s:%d", addr, port);
    return s;
}

void nstats_free(struct nstats *s)
{
    if (s == NULL) {
        return;
    }
    evconnlistener_free(s->listener);
    event_free(s->accept_retry);
    while (!TAILQ_EMPTY(&s->conns)) {
        struct nstats_conn *c = TAILQ_FIRST(&s->conns);
        TAILQ_REMOVE(&s->conns, c, link);
        nstats_conn_release(c);     /* not inside a callback of c's */
    }
    free(s);
}
