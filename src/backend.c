/*
 * backend.c — connections to one memcached server.
 *
 * A connection carries a FIFO of fragments (request.h). Requests are appended
 * to its output buffer as they arrive and written once per loop turn; replies
 * are read and matched to the head of the FIFO. Any failure (refused, reset,
 * garbage, timeout) closes the connection and fails every fragment on it:
 * after a lost or late reply the stream can no longer be matched.
 *
 * Replies are trusted no further than they are checked: each must be one
 * memcached sends to the command at the head of the FIFO (proto_reply_fits),
 * a VALUE must name the next key asked for (frag_ops.match), announce at most
 * the pool's item_size_max bytes and end its data with "\r\n". Anything else
 * is a protocol error: counted, logged once, and handled as a lost
 * connection, so no reply is ever matched to a request it does not answer
 * and a connection never buffers more than one bounded reply.
 *
 * Output budget: a connection's unsent output past server_max_queue pauses
 * each client that sends to it (client.c waits: bconn_wait); once it is
 * down to half (written, or dropped with a failed connection) they are
 * woken. Sends are never refused or dropped for it: a noreply command is
 * still carried out, only later.
 *
 * Backend health: consecutive failures put the backend DOWN with a backoff
 * (100 ms doubling up to min(server_retry_timeout, 5 s)) during which its
 * requests fail fast. With auto_eject_hosts, server_failure_limit failures
 * eject it from routing for server_retry_timeout (the data ring is untouched).
 */
#include <assert.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include "backend.h"
#include "defer.h"
#include "iobuf.h"
#include "mconn.h"
#include "mem.h"
#include "meta.h"
#include "migrate.h"
#include "log.h"
#include "pool.h"
#include "resolve.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define CONNECT_TIMEOUT_MS 1000     /* when the pool sets no timeout */
#define REPLY_LINE_MAX 4096         /* a reply line without "\n" past this is garbage */

static void bconn_read_cb(evutil_socket_t fd, short what, void *arg);
static void bconn_write_cb(evutil_socket_t fd, short what, void *arg);

#define BACKEND_STATE_NAME(e, name) [BACKEND_##e] = name,
const char *const backend_state_names[BACKEND_STATE_COUNT] = {
    BACKEND_STATE_CODEC(BACKEND_STATE_NAME)
};
#undef BACKEND_STATE_NAME

/* Its connections, once its address is known. */
static int backend_init_conns(struct backend *be, struct pool *p, char *err, size_t errlen)
{
    be->state = BACKEND_UP;
    be->nconns = (uint32_t)p->conf->server_connections;
    be->conns = calloc(be->nconns, sizeof(*be->conns));
    if (be->conns == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (uint32_t i = 0; i < be->nconns; i++) {
        struct bconn *bc = &be->conns[i];
        bc->be = be;
        bc->fd = -1;
        bc->in = evbuffer_new();
        bc->out = evbuffer_new();
        bc->shared_end = evbuffer_new();
        TAILQ_INIT(&bc->frags);
        TAILQ_INIT(&bc->waiters);
        if (bc->in == NULL || bc->out == NULL || bc->shared_end == NULL) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
    }
    return 0;
}

int backend_init(struct backend *be, struct pool *p, uint32_t slot,
                 const char *identity, const char *addr, char *err, size_t errlen)
{
    const char *why = "";

    memset(be, 0, sizeof(*be));
    be->pool = p;
    be->slot = slot;
    if ((be->identity = strdup(identity)) == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (conf_addr_parse(addr, &be->addr, &why) != 0) {
        snprintf(err, errlen, "server %s: bad address %s: %s", identity, addr, why);
        return -1;
    }
    return backend_init_conns(be, p, err, errlen);
}

int backend_init_link(struct backend *be, struct pool *p, const char *name,
                      char *err, size_t errlen)
{
    memset(be, 0, sizeof(*be));
    be->pool = p;
    be->link = true;
    be->addr.is_unix = true;
    if ((be->identity = strdup("home-thread")) == NULL ||
        (be->addr.text = strdup(name)) == NULL || (be->addr.host = strdup(name)) == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return backend_init_conns(be, p, err, errlen);
}

/* The link waits for the home thread, which may run a moving key's command
 * as several backend steps, each under `timeout` (move.c): it gives up
 * only well after every step would have. */
#define LINK_TIMEOUT_FACTOR 8

static uint64_t request_timeout_ms(const struct backend *be)
{
    uint64_t t = be->pool->conf->timeout > 0 ? (uint64_t)be->pool->conf->timeout : 0;

    return be->link ? t * LINK_TIMEOUT_FACTOR : t;
}

bool bconn_full(const struct bconn *bc)
{
    return evbuffer_get_length(bc->out) >= (size_t)bc->be->pool->conf->server_max_queue;
}

void bconn_wait(struct bconn *bc, struct bconn_waiter *w)
{
    assert(w->on == NULL);
    w->on = bc;
    TAILQ_INSERT_TAIL(&bc->waiters, w, link);
}

void bconn_unwait(struct bconn_waiter *w)
{
    if (w->on != NULL) {
        TAILQ_REMOVE(&w->on->waiters, w, link);
        w->on = NULL;
    }
}

/* Wake those waiting for this connection's output to drain. */
static void bconn_wake(struct bconn *bc)
{
    struct bconn_waiter *w;

    if (!TAILQ_EMPTY(&bc->waiters) &&
        evbuffer_get_length(bc->out) < (size_t)bc->be->pool->conf->server_max_queue / 2) {
        while ((w = TAILQ_FIRST(&bc->waiters)) != NULL) {
            TAILQ_REMOVE(&bc->waiters, w, link);
            w->on = NULL;
            w->wake(w);
        }
    }
}

static void bconn_close_fd(struct bconn *bc)
{
    if (bc->fd >= 0) {
        event_del(&bc->rev);
        event_del(&bc->wev);
        close(bc->fd);
        bc->fd = -1;
    }
    bc->state = BCONN_DOWN;
    evbuffer_drain(bc->in, evbuffer_get_length(bc->in));
    evbuffer_drain(bc->out, evbuffer_get_length(bc->out));
    bc->open_cmd = PROTO_CMD_NONE;
    bconn_wake(bc);
}

/* Take the head fragment off the connection; the caller completes it. */
static struct frag *bconn_pop(struct bconn *bc)
{
    struct frag *f = TAILQ_FIRST(&bc->frags);

    assert(f != NULL && bc->nfrags > 0 && f->conn == bc);
    TAILQ_REMOVE(&bc->frags, f, link);
    bc->nfrags--;
    bc->be->stats[STAT_BE_inflight]--;
    f->conn = NULL;
    return f;
}

/* The connection is unusable: fail everything on it and mark the backend. */
static void bconn_fail(struct bconn *bc, const char *why, const char *reply)
{
    struct backend *be = bc->be;
    struct pool *p = be->pool;
    uint64_t now = worker_now_ms(p->w);
    uint32_t n = bc->nfrags;

    log_limited(LOG_WARN, 10, "backend", "%s: %s %s: %s (%u requests failed)",
                p->name, be->identity, be->addr.text, why, n);
    bconn_close_fd(bc);
    while (!TAILQ_EMPTY(&bc->frags)) {
        be->stats[STAT_BE_errors]++;
        struct frag *f = bconn_pop(bc);
        f->req->stats[STAT_server_errors]++;
        f->ops->fail(f, reply);
    }

    be->failures++;
    if (p->conf->auto_eject_hosts && !be->link &&
        be->failures >= (uint32_t)p->conf->server_failure_limit) {
        if (be->state != BACKEND_EJECTED) {
            be->stats[STAT_BE_ejections]++;
            log_warn("backend", "%s: ejecting %s after %u failures, retry in %lld ms",
                     p->name, be->identity, be->failures,
                     (long long)p->conf->server_retry_timeout);
            pool_eject(p, be, true);
        }
        be->retry_ms = now + (uint64_t)p->conf->server_retry_timeout;
        return;
    }
    uint32_t max = p->conf->server_retry_timeout < BACKOFF_MAX_MS ?
                   (uint32_t)p->conf->server_retry_timeout : BACKOFF_MAX_MS;
    be->backoff_ms = be->backoff_ms == 0 ? BACKOFF_MIN_MS : be->backoff_ms * 2;
    if (be->backoff_ms > max) {
        be->backoff_ms = max;
    }
    if (be->state == BACKEND_UP) {
        be->state = BACKEND_DOWN;
    }
    be->retry_ms = now + be->backoff_ms;
}

/*
 * The address to connect to when it needs no DNS: a unix path or a numeric
 * IPv4/IPv6 address (0 for a host name).
 */
static socklen_t backend_sockaddr(const struct backend *be,
                                  struct sockaddr_storage *ss)
{
    if (be->addr.is_unix) {
        memset(ss, 0, sizeof(*ss));
        struct sockaddr_un *sun = (struct sockaddr_un *)ss;
        sun->sun_family = AF_UNIX;
        snprintf(sun->sun_path, sizeof(sun->sun_path), "%s", be->addr.host);
        if (be->addr.host[0] == '@') {
            /* Linux's abstract namespace: no file (hub.h's link). */
            sun->sun_path[0] = '\0';
            return (socklen_t)(offsetof(struct sockaddr_un, sun_path) +
                               strlen(be->addr.host));
        }
        return sizeof(*sun);
    }
    return resolve_numeric(be->addr.host, be->addr.port, ss);
}

/* 0, or -errno: the connection could not even start. */
static int bconn_connect_to(struct bconn *bc, const struct sockaddr *sa, socklen_t len)
{
    struct backend *be = bc->be;
    int one = 1;

    bc->fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (bc->fd < 0) {
        return -errno;
    }
    if (!be->addr.is_unix) {
        setsockopt(bc->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (be->pool->conf->tcpkeepalive) {
            setsockopt(bc->fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
        }
    }
    event_assign(&bc->rev, be->pool->w->base, bc->fd, EV_READ | EV_PERSIST,
                 bconn_read_cb, bc);
    event_assign(&bc->wev, be->pool->w->base, bc->fd, EV_WRITE | EV_PERSIST,
                 bconn_write_cb, bc);
    if (connect(bc->fd, sa, len) != 0 && errno != EINPROGRESS) {
        int rc = -errno;
        close(bc->fd);
        bc->fd = -1;
        return rc;
    }
    /* bc->dirty stays as it is: it says whether bc is in the worker's
     * dirty list, where a push earlier in this turn may have put it */
    bc->state = BCONN_CONNECTING;
    event_add(&bc->rev, NULL);
    event_add(&bc->wev, NULL);     /* fires when the connect completes */
    return 0;
}

/* The name could not be resolved: the connection fails as a refused one
 * would, saying why (docs/ARCHITECTURE.md, "Addresses and names"). */
static void bconn_unresolved(struct bconn *bc, const char *why)
{
    struct backend *be = bc->be;
    char msg[sizeof(be->dns_error)];

    snprintf(msg, sizeof(msg), "cannot resolve %s: %s", be->addr.host, why);
    snprintf(be->dns_error, sizeof(be->dns_error), "%s", msg);
    be->stats[STAT_BE_connect_failures]++;
    bconn_fail(bc, msg, BACKEND_ERR_DOWN);
}

/*
 * The backend's name resolved (sa) or not (why): every connection that
 * waited for it connects or fails. Runs from the resolver's event.
 */
static void backend_resolved(void *arg, const struct sockaddr *sa, socklen_t len,
                             const char *why)
{
    struct backend *be = arg;

    be->resolving = NULL;
    if (sa != NULL) {
        be->dns_error[0] = '\0';
    } else {
        snprintf(be->dns_error, sizeof(be->dns_error), "cannot resolve %s: %s",
                 be->addr.host, why);
    }
    for (uint32_t i = 0; i < be->nconns; i++) {
        struct bconn *bc = &be->conns[i];
        if (bc->state != BCONN_RESOLVING) {
            continue;       /* failed meanwhile (backend_tick), or closed */
        }
        bc->state = BCONN_DOWN;
        if (sa == NULL) {
            bconn_unresolved(bc, why);
            continue;
        }
        int rc = bconn_connect_to(bc, sa, len);
        if (rc != 0) {
            be->stats[STAT_BE_connect_failures]++;
            bconn_fail(bc, strerror(-rc), BACKEND_ERR_DOWN);
        }
    }
}

/*
 * Connect bc: at once to a numeric address or a unix path; a host name is
 * resolved again first, on every connect, so a DNS change is followed. The
 * connections of one backend that connect meanwhile share one resolution.
 * Returns 0 (connecting, or waiting for the name) or -errno.
 */
static int bconn_connect(struct bconn *bc)
{
    struct backend *be = bc->be;
    struct sockaddr_storage ss;
    socklen_t len = backend_sockaddr(be, &ss);

    if (len != 0) {
        return bconn_connect_to(bc, (struct sockaddr *)&ss, len);
    }
    struct resolver *dns = be->pool->w->dns;
    if (be->resolving == NULL) {
        if (dns == NULL) {
            return -EHOSTUNREACH;   /* a loop without a resolver (unit tests) */
        }
        uint64_t t = request_timeout_ms(be);
        be->resolving = resolve_start(dns, be->addr.host, be->addr.port,
                                      t ? (uint32_t)t : CONNECT_TIMEOUT_MS,
                                      backend_resolved, be);
        if (be->resolving == NULL) {
            return -ENOMEM;
        }
    }
    bc->state = BCONN_RESOLVING;
    return 0;
}

struct bconn *backend_conn(struct backend *be, uint64_t client_id)
{
    struct bconn *bc = &be->conns[client_id % be->nconns];

    if (be->state != BACKEND_UP) {
        if (worker_now_ms(be->pool->w) < be->retry_ms) {
            return NULL;
        }
        if (be->state == BACKEND_EJECTED) {
            pool_eject(be->pool, be, false);
        }
        be->state = BACKEND_UP;     /* a trial: the next failure backs off more */
    }
    if (bc->state == BCONN_DOWN) {
        int rc = bconn_connect(bc);
        if (rc != 0) {
            be->stats[STAT_BE_connect_failures]++;
            bconn_fail(bc, strerror(-rc), BACKEND_ERR_DOWN);
            return NULL;
        }
    }
    return bc;
}

void backend_preconnect(struct backend *be)
{
    for (uint32_t i = 0; i < be->nconns; i++) {
        (void)backend_conn(be, i);
    }
}

static void bconn_mark_dirty(struct bconn *bc)
{
    if (!bc->dirty) {
        bc->dirty = true;
        TAILQ_INSERT_TAIL(&bc->be->pool->w->dirty_conns, bc, dirty_link);
    }
}

/* End the get line left open by bconn_push_get, if any. */
static void bconn_end_line(struct bconn *bc)
{
    if (bc->open_cmd != PROTO_CMD_NONE) {
        evbuffer_add(bc->out, "\r\n", 2);
        bc->open_cmd = PROTO_CMD_NONE;
    }
}

struct evbuffer *bconn_out(struct bconn *bc)
{
    bconn_end_line(bc);
    return bc->out;
}

/* Whether a get of cmd for a key of keylen bytes and ring hash `hash` may
 * join the open line: the same command, room, and a key not on it (two
 * VALUEs of one key could not be told apart). A backend that answered
 * before it was asked may have ended the line's gets already: with no
 * fragment left to join (the tail would not be the line's), the get starts
 * a line of its own, and the surplus answers fail the connection. */
static bool bconn_may_join(const struct bconn *bc, enum proto_cmd cmd, uint32_t keylen,
                           uint32_t hash)
{
    if (bc->open_cmd != cmd || bc->open_keys >= BCONN_JOIN_MAX ||
        bc->open_len + 1 + keylen + 2 > PROTO_LINE_MAX || TAILQ_EMPTY(&bc->frags)) {
        return false;
    }
    for (uint32_t i = 0; i < bc->open_keys; i++) {
        if (bc->open_hash[i] == hash) {
            return false;
        }
    }
    return true;
}

size_t bconn_push_get(struct bconn *bc, struct frag *f, const char *key, uint32_t keylen,
                      uint32_t hash)
{
    size_t n = 1 + keylen;

    /* The line's bytes go in one evbuffer_add: "gets", the key (the parser
     * refuses one past PROTO_KEY_MAX) and the line's end. */
    char piece[sizeof("gets ") + PROTO_KEY_MAX + 2];
    size_t len = 0;

    assert(f->cmd == PROTO_CMD_GET || f->cmd == PROTO_CMD_GETS);
    assert(keylen <= PROTO_KEY_MAX);

    if (bconn_may_join(bc, f->cmd, keylen, hash)) {
        struct frag *tail = TAILQ_LAST(&bc->frags, frag_queue);
        assert(tail != NULL && tail->cmd == f->cmd && !tail->joined);
        tail->joined = true;
    } else {
        bconn_end_line(bc);
        const char *name = proto_cmd_name[f->cmd];
        size_t nlen = strlen(name);
        memcpy(piece, name, nlen);  /* get or gets */
        len = nlen;
        bc->open_len = (uint32_t)nlen;
        bc->open_keys = 0;
        /* The home thread's link reads commands one by one: never left open. */
        bc->open_cmd = bc->be->link ? PROTO_CMD_NONE : f->cmd;
        n += nlen;
    }
    bool ends = bc->open_cmd == PROTO_CMD_NONE;
    piece[len++] = ' ';
    memcpy(piece + len, key, keylen);
    len += keylen;
    if (ends) {
        memcpy(piece + len, "\r\n", 2);
        len += 2;
    }
    evbuffer_add(bc->out, piece, len);
    if (!ends) {
        bc->open_len += 1 + keylen;
        bc->open_hash[bc->open_keys++] = hash;
    }
    bconn_push(bc, f);
    return n + 2;
}

void bconn_push(struct bconn *bc, struct frag *f)
{
    assert(f->conn == NULL && f->ops != NULL);
    f->conn = bc;
    f->sent_ms = worker_now_ms(bc->be->pool->w);
    TAILQ_INSERT_TAIL(&bc->frags, f, link);
    bc->nfrags++;
    bc->be->stats[STAT_BE_requests]++;
    bc->be->stats[STAT_BE_inflight]++;
    bconn_mark_dirty(bc);
}

/*
 * A fenced pool sends nothing: requests queued before a freeze must not
 * land after the fleet moved on without this proxy (ARCHITECTURE.md, I6).
 */
static bool bconn_fenced(struct bconn *bc)
{
    if (evbuffer_get_length(bc->out) == 0 || bc->be->link || !pool_fenced(bc->be->pool)) {
        return false;
    }
    bconn_fail(bc, "fenced: Redis unreachable", MIG_FENCED_LINE);
    return true;
}

void bconn_flush(struct bconn *bc)
{
    bc->dirty = false;
    bconn_end_line(bc);
    if (bc->state != BCONN_UP || evbuffer_get_length(bc->out) == 0 || bconn_fenced(bc)) {
        return;
    }
    int n = iobuf_write(bc->out, bc->fd);
    if (n < 0 && errno != EAGAIN && errno != EINTR) {
        bconn_fail(bc, strerror(errno), BACKEND_ERR_LOST);
        return;
    }
    bc->be->stats[STAT_BE_bytes_sent] += n > 0 ? (uint64_t)n : 0;
    if (evbuffer_get_length(bc->out) > 0) {
        event_add(&bc->wev, NULL);
    }
    bconn_wake(bc);
}

static void bconn_connected(struct bconn *bc)
{
    struct backend *be = bc->be;
    int err = 0;
    socklen_t len = sizeof(err);

    if (getsockopt(bc->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) {
        err = errno;
    }
    if (err != 0) {
        be->stats[STAT_BE_connect_failures]++;
        bconn_fail(bc, strerror(err), BACKEND_ERR_DOWN);
        return;
    }
    bc->state = BCONN_UP;
    be->stats[STAT_BE_connects]++;
    be->failures = 0;
    be->backoff_ms = 0;
    log_info("backend", "%s: connected to %s %s", be->pool->name, be->identity,
             be->addr.text);
}

static void bconn_write_cb(evutil_socket_t fd, short what, void *arg)
{
    struct bconn *bc = arg;

    (void)fd, (void)what;
    if (bc->state == BCONN_CONNECTING) {
        bconn_connected(bc);
        if (bc->state != BCONN_UP) {
            return;
        }
    }
    bconn_end_line(bc);
    if (bconn_fenced(bc)) {
        return;
    }
    int n = evbuffer_get_length(bc->out) > 0 ? iobuf_write(bc->out, bc->fd) : 0;
    if (n < 0 && errno != EAGAIN && errno != EINTR) {
        bconn_fail(bc, strerror(errno), BACKEND_ERR_LOST);
        return;
    }
    bc->be->stats[STAT_BE_bytes_sent] += n > 0 ? (uint64_t)n : 0;
    if (evbuffer_get_length(bc->out) == 0) {
        event_del(&bc->wev);
    }
    bconn_wake(bc);
}

/*
 * The next complete line in b, made contiguous: returns its start and sets
 * *len (without the terminator) and *total (with it); NULL if none yet.
 */
static const char *buf_line(struct evbuffer *b, size_t *len, size_t *total)
{
    struct evbuffer_iovec v;

    if (evbuffer_peek(b, -1, NULL, &v, 1) < 1 || v.iov_len == 0) {
        return NULL;
    }
    const char *base = v.iov_base;
    const char *nl = memchr(base, '\n', v.iov_len);
    if (nl == NULL) {
        size_t eol;
        struct evbuffer_ptr p = evbuffer_search_eol(b, NULL, &eol, EVBUFFER_EOL_LF);
        if (p.pos < 0) {
            return NULL;
        }
        base = (const char *)evbuffer_pullup(b, p.pos + 1);
        nl = base + p.pos;
    }
    *total = (size_t)(nl - base) + 1;
    *len = nl > base && nl[-1] == '\r' ? *total - 2 : *total - 1;
    return base;
}

/*
 * The backend broke the protocol: count it, log what it sent (once: the
 * connection closes with it) and fail the connection. Returns -1.
 */
static int bconn_protocol_error(struct bconn *bc, const char *what,
                                const char *line, size_t len)
{
    char why[512], shown[64 * 4 + 1];
    size_t n = 0;

    for (size_t i = 0; i < len && i < 64; i++) {
        unsigned char ch = (unsigned char)line[i];
        n += (size_t)snprintf(shown + n, sizeof(shown) - n,
                              ch >= 0x20 && ch < 0x7f && ch != '\\' ? "%c" : "\\x%02x", ch);
    }
    shown[n] = '\0';
    snprintf(why, sizeof(why), "protocol error: %s: \"%s\"%s", what, shown,
             len > 64 ? "..." : "");
    bc->be->stats[STAT_BE_protocol_errors]++;
    bconn_fail(bc, why, BACKEND_ERR_LOST);
    return -1;
}

/*
 * End the head fragment, which shares its get line with the next one
 * (bconn_push_get), with a copy of `line`: the END or error that ends the
 * line ends each of its fragments.
 */
static void bconn_end_joined(struct bconn *bc, const struct proto_rsp *rsp,
                             const char *line, size_t len)
{
    struct frag *f = bconn_pop(bc);

    assert(f->joined && !TAILQ_EMPTY(&bc->frags));
    evbuffer_add(bc->shared_end, line, len);
    evbuffer_add(bc->shared_end, "\r\n", 2);
    f->ops->end(f, rsp, bc->shared_end, len + 2, line, len);
    evbuffer_drain(bc->shared_end, evbuffer_get_length(bc->shared_end));
}

/*
 * A VALUE block for the head fragment: 0 once delivered, 1 while its data is
 * still arriving, -1 if it broke the protocol (bc failed).
 */
static int bconn_value(struct bconn *bc, struct frag *f, const struct proto_rsp *rsp,
                       const char *line, size_t len, size_t total)
{
    static const struct proto_rsp end = { .kind = PROTO_RSP_END };

    if (rsp->bytes > bc->be->pool->conf->item_size_max) {
        return bconn_protocol_error(bc, "VALUE longer than item_size_max", line, len);
    }
    /* Before any data is waited for: a VALUE for another key must not make
     * the connection buffer its block. On a shared line, a VALUE for a
     * later fragment's key means the head's key was a miss: the backend
     * answers a line's keys in order. */
    int i = f->ops->match(f, rsp);
    struct frag *g = f;
    while (i < 0 && g->joined) {
        g = TAILQ_NEXT(g, link);
        i = g->ops->match(g, rsp);
    }
    if (i < 0) {
        /* Found before any fragment is ended as a miss: a VALUE no get of
         * the line asked fails them all, as it would each on a line of its
         * own. */
        return bconn_protocol_error(bc, "VALUE for a key not asked", line, len);
    }
    while (f != g) {
        bconn_end_joined(bc, &end, "END", 3);
        f = TAILQ_FIRST(&bc->frags);
    }
    size_t need = total + (size_t)rsp->bytes + 2;
    if (evbuffer_get_length(bc->in) < need) {
        return 1;   /* the rest of the value is on its way */
    }
    char crlf[2];
    struct evbuffer_ptr at;
    evbuffer_ptr_set(bc->in, &at, need - 2, EVBUFFER_PTR_SET);
    evbuffer_copyout_from(bc->in, &at, crlf, 2);
    if (crlf[0] != '\r' || crlf[1] != '\n') {
        return bconn_protocol_error(bc, "value data without its \\r\\n", line, len);
    }
    f->ops->value(f, (uint32_t)i, bc->in, need);
    return 0;
}

/*
 * A meta reply for the head fragment, a client's meta command: 0 once
 * handled, 1 while VA's data is still arriving, -1 if it broke the protocol
 * (bc failed). A quiet command (q) is followed on the connection by an "mn"
 * of the proxy's: its answer is what comes before that MN, nothing or one
 * reply (docs/ARCHITECTURE.md, "Meta protocol (for clients)").
 */
static int bconn_meta(struct bconn *bc, struct frag *f, const char *line,
                      size_t len, size_t total)
{
    struct meta_rsp rsp;

    /* A line may end within the read that brought it: bounded here too, or
     * whether a long line is garbage would depend on how TCP split it. */
    if (len > REPLY_LINE_MAX) {
        return bconn_protocol_error(bc, "reply line too long", line, len);
    }
    /* The reply is passed on as it came (buf_line also ends a line at a
     * bare "\n"): only memcached's framing may reach the client. */
    if (total != len + 2) {
        return bconn_protocol_error(bc, "meta reply line without \\r\\n", line, len);
    }
    if (meta_parse_reply(line, len, &rsp) != META_REPLY_OK) {
        return bconn_protocol_error(bc, "unparsable meta reply", line, len);
    }
    if (rsp.kind == META_RSP_MN) {
        if (!f->meta_fence) {
            return bconn_protocol_error(bc, "MN without an mn", line, len);
        }
        evbuffer_drain(bc->in, total);
        f = bconn_pop(bc);
        f->ops->meta(f, -1, bc->in, 0, true);
        return 0;
    }
    if (!(f->meta_fits & (1u << rsp.kind)) || f->meta_answered) {
        return bconn_protocol_error(bc, "not a reply to the meta command", line, len);
    }
    size_t n = total;
    if (rsp.kind == META_RSP_VA) {
        if (rsp.vlen > (uint64_t)bc->be->pool->conf->item_size_max) {
            return bconn_protocol_error(bc, "VA longer than item_size_max", line, len);
        }
        n += (size_t)rsp.vlen + 2;
        if (evbuffer_get_length(bc->in) < n) {
            return 1;
        }
        char crlf[2];
        struct evbuffer_ptr at;
        evbuffer_ptr_set(bc->in, &at, n - 2, EVBUFFER_PTR_SET);
        evbuffer_copyout_from(bc->in, &at, crlf, 2);
        if (crlf[0] != '\r' || crlf[1] != '\n') {
            return bconn_protocol_error(bc, "value data without its \\r\\n", line, len);
        }
    }
    if (f->meta_fence) {
        f->meta_answered = true;
        f->ops->meta(f, (int)rsp.kind, bc->in, n, false);
        return 0;
    }
    f = bconn_pop(bc);
    f->ops->meta(f, (int)rsp.kind, bc->in, n, true);
    return 0;
}

int bconn_process(struct bconn *bc)
{
    struct proto_rsp rsp;
    size_t len, total;

    while (evbuffer_get_length(bc->in) > 0) {
        const char *line = buf_line(bc->in, &len, &total);
        if (line == NULL) {
            size_t avail = evbuffer_get_length(bc->in);
            if (avail > REPLY_LINE_MAX) {
                return bconn_protocol_error(bc, "reply line too long",
                    (const char *)evbuffer_pullup(bc->in, 64), avail);
            }
            return 0;
        }
        struct frag *f = TAILQ_FIRST(&bc->frags);
        if (f == NULL) {
            return bconn_protocol_error(bc, "reply without a request", line, len);
        }
        if (f->meta_fits != 0) {
            int rc = bconn_meta(bc, f, line, len, total);
            if (rc != 0) {
                return rc < 0 ? -1 : 0;
            }
            continue;
        }
        if (proto_parse_reply(line, len, &rsp) != PROTO_OK) {
            return bconn_protocol_error(bc, "unparsable reply", line, len);
        }
        if (!proto_reply_fits(f->cmd, &rsp)) {
            char what[64];
            snprintf(what, sizeof(what), "not a reply to %s", proto_cmd_name[f->cmd]);
            return bconn_protocol_error(bc, what, line, len);
        }
        if (rsp.kind == PROTO_RSP_VALUE) {
            int rc = bconn_value(bc, f, &rsp, line, len, total);
            if (rc != 0) {
                return rc < 0 ? -1 : 0;
            }
            continue;
        }
        while (f->joined) {
            bconn_end_joined(bc, &rsp, line, len);
            f = TAILQ_FIRST(&bc->frags);
        }
        f = bconn_pop(bc);
        f->ops->end(f, &rsp, bc->in, total, line, len);
    }
    return 0;
}

static void bconn_read_cb(evutil_socket_t fd, short what, void *arg)
{
    struct bconn *bc = arg;

    (void)what;
    if (bc->state == BCONN_CONNECTING) {
        bconn_connected(bc);
        if (bc->state != BCONN_UP) {
            return;
        }
    }
    ssize_t n = iobuf_read(bc->in, fd);
    if (n <= 0) {
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            return;
        }
        bc->be->stats[STAT_BE_closed_by_server] += n == 0;
        bconn_fail(bc, n == 0 ? "closed by the server" : strerror(errno),
                   BACKEND_ERR_LOST);
        return;
    }
    bc->be->stats[STAT_BE_bytes_received] += (uint64_t)n;
    bconn_process(bc);
}

void backend_tick(struct backend *be, uint64_t now_ms)
{
    uint64_t timeout = request_timeout_ms(be);
    uint64_t connect_timeout = timeout ? timeout : CONNECT_TIMEOUT_MS;

    for (uint32_t i = 0; i < be->nconns; i++) {
        struct bconn *bc = &be->conns[i];
        struct frag *f = TAILQ_FIRST(&bc->frags);
        if (f == NULL) {
            continue;
        }
        if (bc->state == BCONN_RESOLVING && now_ms - f->sent_ms >= connect_timeout) {
            bconn_unresolved(bc, "timed out");
        } else if (bc->state == BCONN_CONNECTING && now_ms - f->sent_ms >= connect_timeout) {
            be->stats[STAT_BE_connect_failures]++;
            bconn_fail(bc, "connect timed out", BACKEND_ERR_DOWN);
        } else if (timeout && now_ms - f->sent_ms >= timeout) {
            be->stats[STAT_BE_timeouts]++;
            bconn_fail(bc, "request timed out", BACKEND_ERR_TIMEOUT);
        }
    }
    if (be->state == BACKEND_EJECTED && now_ms >= be->retry_ms) {
        log_notice("backend", "%s: %s back in routing after server_retry_timeout",
                   be->pool->name, be->identity);
        pool_eject(be->pool, be, false);
        be->state = BACKEND_UP;
    }
}

/* The end of the loop turn: nothing refers to be any more (backend_close). */
static void backend_destroy(void *arg)
{
    struct backend *be = arg;

    for (uint32_t i = 0; be->conns != NULL && i < be->nconns; i++) {
        if (be->conns[i].in != NULL) {
            evbuffer_free(be->conns[i].in);
        }
        if (be->conns[i].out != NULL) {
            evbuffer_free(be->conns[i].out);
        }
        if (be->conns[i].shared_end != NULL) {
            evbuffer_free(be->conns[i].shared_end);
        }
    }
    free(be->conns);
    free(be->identity);
    conf_addr_free(&be->addr);
    free(be);
}

void backend_close(struct backend *be)
{
    for (uint32_t i = 0; be->conns != NULL && i < be->nconns; i++) {
        struct bconn *bc = &be->conns[i];
        if (bc->in == NULL || bc->out == NULL) {
            continue;   /* backend_init failed here: nothing was opened */
        }
        bconn_close_fd(bc);
        while (!TAILQ_EMPTY(&bc->frags)) {
            struct frag *f = bconn_pop(bc);
            f->ops->fail(f, BACKEND_ERR_LOST);
        }
        struct bconn_waiter *w;
        while ((w = TAILQ_FIRST(&bc->waiters)) != NULL) {
            TAILQ_REMOVE(&bc->waiters, w, link);    /* none may point here */
            w->on = NULL;
            w->wake(w);
        }
        if (bc->dirty) {
            TAILQ_REMOVE(&be->pool->w->dirty_conns, bc, dirty_link);
            bc->dirty = false;
        }
    }
    if (be->resolving != NULL) {
        resolve_cancel(be->resolving);
        be->resolving = NULL;
    }
    backend_mc_close(be);
    defer_add(be->pool->w->defer, backend_destroy, be);
}

bool backend_idle(const struct backend *be)
{
    for (int k = 0; k < BACKEND_MC_COUNT; k++) {
        if (be->mc[k] != NULL && mconn_pending(be->mc[k]) > 0) {
            return false;
        }
    }
    for (uint32_t i = 0; i < be->nconns; i++) {
        if (be->conns[i].nfrags > 0) {
            return false;
        }
    }
    return true;
}

struct mconn *backend_mc(struct backend *be, enum backend_mc_kind kind, uint32_t timeout_ms,
                         size_t max_value)
{
    struct mconn **mc = &be->mc[kind];

    if (*mc == NULL) {
        *mc = mconn_new(be->pool->w->defer, be->addr.host, be->addr.port,
                        be->addr.is_unix, timeout_ms);
        if (*mc != NULL) {
            mconn_set_max_value(*mc, max_value);
            if (kind == BACKEND_MC_MOVER) {
                mconn_set_ordered(*mc);
            }
            if (be->pool->w->dns != NULL) {
                mconn_set_dns(*mc, resolver_evdns(be->pool->w->dns));
            }
        }
    }
    return *mc;
}

void backend_mc_close(struct backend *be)
{
    for (int k = 0; k < BACKEND_MC_COUNT; k++) {
        struct mconn *mc = be->mc[k];

        /* Cleared first: a failed command's callback may ask for it again. */
        be->mc[k] = NULL;
        mconn_free(mc);
    }
}
