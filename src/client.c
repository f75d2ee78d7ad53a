/*
 * client.c — a client connection: read commands, route them, reply in order.
 *
 * Reading: bytes are read into `in`; complete lines are parsed (proto.c) and
 * dispatched. A storage command waits until its whole data block is there,
 * then its line and block move to the backend connection's output (the block
 * by evbuffer chain transfer, not copied). A value over item_size_max is
 * answered at once and its bytes swallowed as they arrive, never buffered.
 *
 * Replying: each command becomes a request in `reqs`; replies leave in that
 * order (client_advance). Output is written once per loop turn.
 *
 * Memory budget: everything held for a client counts against it: its
 * unread output, replies waiting for earlier ones (request.reply), the
 * shares of its multi-gets (frag.buf), and the bytes of its commands in
 * flight, noreply ones included (they leave `reqs` but stay in `quiet`
 * until the backend answers). The requests report them (request.c calls
 * client_request_ops.budget) and this file keeps the counts (client.held,
 * client.sent). Reading pauses while the replies held reach
 * CLIENT_OUT_PAUSE, the commands in flight CLIENT_SENT_PAUSE bytes or
 * CLIENT_MAX_QUEUED requests (noreply included), or while a backend
 * connection it sent to holds more than server_max_queue unsent bytes (it
 * waits on it: bconn_wait); it resumes at half of each. A client whose
 * replies held pass client_max_memory is closed (closed_slow_clients):
 * reading its replies off the backends cannot wait for it.
 *
 * A line without "\n" past memcached's 2048 bytes (8 MiB for get lines)
 * closes the connection, as in memcached.
 *
 * Timeouts: one timer per client, armed only while a timeout applies and
 * checked lazily (reads only note the time; the timer re-arms itself for
 * what is left). value_timeout applies while a command is unfinished (part
 * of a line or of a value buffered, or an oversize value being swallowed):
 * the client is closed once no byte has come for that long, so a slow sender
 * that keeps sending is never cut off, and a stalled one cannot hold its
 * buffered value. client_timeout applies while nothing is buffered and no
 * command is in flight. Time spent paused by the proxy (backpressure) does
 * not count.
 */
#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>
#include <arpa/inet.h>

#include "adopt.h"
#include "backend.h"
#include "client.h"
#include "cmd.h"
#include "defer.h"
#include "index.h"
#include "iobuf.h"
#include "migrate.h"
#include "log.h"
#include "mem.h"
#include "proxy.h"
#include "sweep.h"
#include "tstats.h"

#define CLIENT_OUT_PAUSE    (1u << 20)
#define CLIENT_SENT_PAUSE   (4u << 20)
#define CLIENT_MAX_QUEUED   2048
#define CLIENT_GET_LINE_MAX (8u << 20)
#define CLIENT_LINGER_MS    1000    /* stopping: wait this long for the
                                       client's FIN after ours */

#define CLIENT_STATE_NAME(e, name) [CLIENT_##e] = name,
static const char *const client_state_names[CLIENT_STATE_COUNT] = {
    CLIENT_STATE_CODEC(CLIENT_STATE_NAME)
};
#undef CLIENT_STATE_NAME

static void client_read_cb(evutil_socket_t fd, short what, void *arg);
static void client_write_cb(evutil_socket_t fd, short what, void *arg);
static void client_timer_cb(evutil_socket_t fd, short what, void *arg);
static void client_arm_timer(struct client *c);
static void client_process(struct client *c);
static void client_reply_line(struct client *c, const char *line);

static void client_set_state(struct client *c, enum client_state s)
{
    log_debug("client", "%s: %s %s -> %s", c->pool->name, c->peer,
              client_state_names[c->state], client_state_names[s]);
    c->state = s;
}

void client_mark_dirty(struct client *c)
{
    if (!c->dirty && c->state != CLIENT_CLOSED) {
        c->dirty = true;
        TAILQ_INSERT_TAIL(&c->pool->w->dirty_clients, c, dirty_link);
    }
}

static void format_peer(const struct sockaddr *sa, char *buf, size_t len)
{
    char host[INET6_ADDRSTRLEN] = "?";

    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
        snprintf(buf, len, "%s:%u", host, ntohs(in->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        snprintf(buf, len, "[%s]:%u", host, ntohs(in6->sin6_port));
    } else {
        snprintf(buf, len, "unix");
    }
}

/* Under the pool's client_connections (counted across the threads when
 * there are several: tstats.h)? Counts the client in if so. */
static bool client_admit(struct pool *p)
{
    uint64_t limit = p->conf->client_connections > 0 ?
                     (uint64_t)p->conf->client_connections : 0;

    if (tstats_threaded()) {
        return tstats_client_admit(p->name, limit);
    }
    return limit == 0 || p->stats[STAT_curr_connections] < limit;
}

static void client_left(struct pool *p)
{
    if (tstats_threaded()) {
        tstats_client_left(p->name);
    }
}

/* A client on socket fd (counted in already), reading; not counted as
 * accepted (client_new). NULL: out of memory. */
static struct client *client_make(struct pool *p, int fd, uint64_t *stats)
{
    struct client *c = calloc(1, sizeof(*c));

    if (c == NULL || (c->in = evbuffer_new()) == NULL ||
        (c->out = evbuffer_new()) == NULL) {
        log_error("client", "%s: out of memory accepting a client", p->name);
        if (c != NULL) {
            evbuffer_free(c->in);
            free(c);
        }
        close(fd);
        return NULL;
    }
    c->pool = p;
    c->stats = stats;
    c->fd = fd;
    c->id = p->next_client_id++;
    c->state = CLIENT_READING;
    c->forwarded = pool_forwards(p);
    TAILQ_INIT(&c->reqs);
    TAILQ_INIT(&c->quiet);
    event_assign(&c->rev, p->w->base, fd, EV_READ | EV_PERSIST, client_read_cb, c);
    event_assign(&c->wev, p->w->base, fd, EV_WRITE | EV_PERSIST, client_write_cb, c);
    evtimer_assign(&c->tev, p->w->base, client_timer_cb, c);
    event_add(&c->rev, NULL);
    c->last_rx_ms = worker_now_ms(p->w);
    TAILQ_INSERT_TAIL(&p->clients, c, link);
    c->stats[STAT_curr_connections]++;
    return c;
}

/* A client on socket fd (admitted already), reading. NULL: out of memory. */
static struct client *client_new(struct pool *p, int fd, uint64_t *stats)
{
    struct client *c = client_make(p, fd, stats);

    if (c != NULL) {
        c->stats[STAT_total_connections]++;
    }
    return c;
}

/* An accepted socket, served (NULL: refused or out of memory). A stopping
 * proxy refuses one it accepts itself, but serves one accepted before its
 * stop and handed over since (client_adopt), to be closed once idle. */
static struct client *client_take(struct pool *p, int fd, const struct sockaddr *sa,
                                  bool handed)
{
    static const char too_many[] = "ERROR Too many open connections\r\n";
    struct client *c;
    int one = 1;

    if ((p->w->stopping && !handed) || !client_admit(p)) {
        ssize_t rc = write(fd, too_many, sizeof(too_many) - 1);
        (void)rc;
        close(fd);
        p->stats[STAT_rejected_connections]++;
        return NULL;
    }
    if (sa->sa_family != AF_UNIX) {
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    if ((c = client_new(p, fd, p->stats)) == NULL) {
        client_left(p);
        return NULL;
    }
    format_peer(sa, c->peer, sizeof(c->peer));
    client_arm_timer(c);
    return c;
}

void client_accept(struct pool *p, int fd, const struct sockaddr *sa, int salen)
{
    (void)salen;
    client_take(p, fd, sa, false);
}

void client_accept_link(struct pool *p, int fd)
{
    struct client *c = client_new(p, fd, p->link_stats);

    if (c != NULL) {
        c->is_link = true;
        snprintf(c->peer, sizeof(c->peer), "thread-link");
    }
}

static void client_free_deferred(void *c)
{
    client_free(c);
}

void client_close(struct client *c, const char *why)
{
    struct request *r;

    if (c->state == CLIENT_CLOSED) {
        return;
    }
    log_debug("client", "%s: %s closed: %s", c->pool->name, c->peer, why);
    event_del(&c->rev);
    event_del(&c->wev);
    event_del(&c->tev);
    close(c->fd);
    c->fd = -1;
    c->pool->w->input_freed += evbuffer_get_length(c->in);
    while ((r = TAILQ_FIRST(&c->reqs)) != NULL) {
        TAILQ_REMOVE(&c->reqs, r, link);
        r->owner = NULL;
        request_orphan(r);
    }
    c->nreqs = 0;
    while ((r = TAILQ_FIRST(&c->quiet)) != NULL) {
        TAILQ_REMOVE(&c->quiet, r, link);
        r->owner = NULL;
        r->detached = false;
    }
    c->nquiet = 0;
    bconn_unwait(&c->wait);
    TAILQ_REMOVE(&c->pool->clients, c, link);
    c->stats[STAT_curr_connections]--;
    if (!c->is_link) {
        client_left(c->pool);
    }
    client_set_state(c, CLIENT_CLOSED);
    if (c->dirty) {
        TAILQ_REMOVE(&c->pool->w->dirty_clients, c, dirty_link);
        c->dirty = false;
    }
    defer_add(c->pool->w->defer, client_free_deferred, c);  /* defer.h */
}

void client_free(struct client *c)
{
    if (c->in != NULL) {        /* NULL: handed over (client_hand_off) */
        evbuffer_free(c->in);
    }
    evbuffer_free(c->out);
    free(c);
}

void client_drain(struct client *c, const char *why)
{
    if (c->state == CLIENT_CLOSED || c->state == CLIENT_DRAINING) {
        return;
    }
    log_debug("client", "%s: %s draining: %s", c->pool->name, c->peer, why);
    event_del(&c->rev);
    client_set_state(c, CLIENT_DRAINING);
    client_mark_dirty(c);
}

void client_stop(struct client *c)
{
    /* A link serves its copy's clients until that thread's loop ends. */
    if (c->is_link || c->state == CLIENT_CLOSED || c->state == CLIENT_DRAINING ||
        c->state == CLIENT_LINGER) {
        return;
    }
    c->stopping = true;
    c->moving = false;      /* it stays: reading again, closed once idle */
    client_mark_dirty(c);   /* client_flush closes it if it is idle now */
}

/* Stop reading and close with a last error line, sent after the replies
 * still owed to the commands before it (as memcached, which answers in order). */
static void client_abort(struct client *c, const char *line, const char *why)
{
    log_limited(LOG_NOTICE, 10, "client", "%s: closing %s: %s", c->pool->name,
                c->peer, why);
    c->stats[STAT_closed_bad_clients]++;
    if (line != NULL) {
        client_reply_line(c, line);
    }
    c->pool->w->input_freed += evbuffer_get_length(c->in);
    evbuffer_drain(c->in, evbuffer_get_length(c->in));
    client_drain(c, why);
}

void client_advance(struct client *c)
{
    struct request *r;

    while ((r = TAILQ_FIRST(&c->reqs)) != NULL && r->done) {
        if (r->reply != NULL) {
            evbuffer_add_buffer(c->out, r->reply);
        }
        TAILQ_REMOVE(&c->reqs, r, link);
        c->nreqs--;
        r->client = NULL;
        request_free(r);
    }
    /* The new head may have part of its reply buffered: it can go now. */
    if (r != NULL && r->reply != NULL) {
        evbuffer_add_buffer(c->out, r->reply);
    }
    client_mark_dirty(c);
}

/* --- what its requests ask of it (request.h: request_owner_ops) ---------- */

static void client_request_done(struct request *r)
{
    client_advance(r->client);
}

/* Its reply goes straight out if it is the oldest request waiting. */
static struct evbuffer *client_request_out(struct request *r)
{
    struct client *c = r->client;

    if (TAILQ_FIRST(&c->reqs) != r) {
        return NULL;
    }
    client_mark_dirty(c);
    return c->out;
}

static void client_request_budget(struct request *r, ptrdiff_t held, ptrdiff_t sent)
{
    struct client *c = r->owner;

    c->sent += (size_t)sent;
    if (held != 0) {
        client_held(c, held);
    }
}

static void client_request_release(struct request *r)
{
    struct client *c = r->owner;

    if (r->detached) {
        TAILQ_REMOVE(&c->quiet, r, link);
        c->nquiet--;
    }
    if (c->read_paused) {
        client_mark_dirty(c);   /* one less in flight: it may resume */
    }
}

static const struct request_owner_ops client_request_ops = {
    .done = client_request_done,
    .out = client_request_out,
    .budget = client_request_budget,
    .release = client_request_release,
};

/* A new request for command cmd, last in the client's queue. */
static struct request *client_request(struct client *c, enum proto_cmd cmd, uint32_t nfrags)
{
    struct request *r = request_new(c->pool, c, &client_request_ops, cmd, nfrags);

    if (r != NULL) {
        r->stats = c->stats;
        TAILQ_INSERT_TAIL(&c->reqs, r, link);
        c->nreqs++;
    }
    return r;
}

/* noreply: the request answers nobody; it leaves the queue of replies but
 * counts in the client's budget (c->quiet) until the backend answers. */
static void client_detach(struct client *c, struct request *r)
{
    assert(r->client == c && !r->detached);
    TAILQ_REMOVE(&c->reqs, r, link);
    c->nreqs--;
    r->client = NULL;
    r->detached = true;
    TAILQ_INSERT_TAIL(&c->quiet, r, link);
    c->nquiet++;
}

static void client_write_cb(evutil_socket_t fd, short what, void *arg)
{
    struct client *c = arg;

    (void)fd, (void)what;
    client_mark_dirty(c);
    event_del(&c->wev);
}

/* Bytes of replies held for the client: what client_max_memory bounds. */
static size_t client_replies_held(const struct client *c)
{
    return evbuffer_get_length(c->out) + c->held;
}

/*
 * A link (client_accept_link) carries the commands of all its copy's
 * clients: closing it for what one of them asked would fail the others'.
 * The copy holds each of its clients to the budget as the replies reach
 * it; here the link only stops being read (client_must_pause), so what it
 * holds is what its commands in flight answer.
 */
static bool client_over_budget(const struct client *c)
{
    return !c->is_link &&
           client_replies_held(c) > (size_t)c->pool->conf->client_max_memory;
}

void client_held(struct client *c, ptrdiff_t delta)
{
    c->held += (size_t)delta;
    if (c->read_paused || (delta > 0 && client_over_budget(c))) {
        client_mark_dirty(c);   /* client_flush resumes or closes it */
    }
}

/*
 * Its pool's copy switched between handing commands to the home thread and
 * routing them itself (hub.h) while commands it sent the other way are in
 * flight: a command sent the new way could overtake them on the key, so it
 * waits until they are answered (docs/ARCHITECTURE.md, "Threads: indexed
 * pools").
 */
static bool client_route_switching(const struct client *c)
{
    return c->forwarded != pool_forwards(c->pool) && c->nreqs + c->nquiet > 0;
}

/* Should reading pause (after a command) or stay paused? */
static bool client_must_pause(const struct client *c, unsigned div)
{
    /* A moving client stops between commands; one swallowing a value it
     * sent too large reads on until the value is gone (client_movable). */
    return (c->moving && c->state == CLIENT_READING) || c->wait.on != NULL ||
           client_route_switching(c) ||
           c->nreqs + c->nquiet >= CLIENT_MAX_QUEUED / div ||
           client_replies_held(c) >= CLIENT_OUT_PAUSE / div ||
           c->sent >= CLIENT_SENT_PAUSE / div;
}

/* The connection it waited on drained: client_flush resumes reading. */
static void client_backend_drained(struct bconn_waiter *w)
{
    struct client *c = (struct client *)((char *)w - offsetof(struct client, wait));

    client_mark_dirty(c);
}

/* A backend connection it just sent to holds too much: wait for it. */
static void client_wait_backend(struct client *c, struct bconn *bc)
{
    if (c->wait.on != NULL || !bconn_full(bc)) {
        return;
    }
    c->wait.wake = client_backend_drained;
    bconn_wait(bc, &c->wait);
    bc->be->stats[STAT_BE_queue_pauses]++;
    c->read_paused = true;
    event_del(&c->rev);
}

/* Between requests: nothing owed to it, nothing of a command received. */
static bool client_idle(const struct client *c)
{
    return c->state == CLIENT_READING && !c->read_paused && c->nreqs == 0 &&
           c->nquiet == 0 && c->need == 0 && evbuffer_get_length(c->in) == 0 &&
           evbuffer_get_length(c->out) == 0;
}

/*
 * A stopping proxy closes an idle client. Bytes already waiting in the
 * socket are a command: it is served first (the read event runs it; the
 * next flush looks again). Else the FIN goes out (shutdown(SHUT_WR)) and the
 * socket stays open, its input read and dropped, until the client closes
 * or CLIENT_LINGER_MS pass: a command the client sent before our FIN
 * reached it is then met by a clean end of stream, never by the reset a
 * close(2) over unread bytes sends, and the client reconnects (to the new
 * process of a binary upgrade) as on any close between requests.
 */
static void client_linger(struct client *c)
{
    int waiting = 0;

    if (ioctl(c->fd, FIONREAD, &waiting) == 0 && waiting > 0) {
        return;
    }
    if (shutdown(c->fd, SHUT_WR) != 0) {
        client_close(c, "stopping");
        return;
    }
    client_set_state(c, CLIENT_LINGER);
    c->last_rx_ms = worker_now_ms(c->pool->w);
    event_del(&c->tev);     /* re-armed for the linger bound */
}

/* Moving: nothing owed to it, nothing of a command half done here (what it
 * sent and was not parsed goes along). */
static bool client_movable(const struct client *c)
{
    return c->state == CLIENT_READING && c->nreqs == 0 && c->nquiet == 0 &&
           evbuffer_get_length(c->out) == 0;
}

/*
 * Hand it to another serving thread, at the end of a loop turn (client_flush
 * runs from worker_flush): its socket and unparsed input go; this struct is
 * closed without closing the socket and freed with the turn. Still counted
 * in the pool's client_connections (it is still open). No thread takes it:
 * it stays here and reads again.
 */
static void client_hand_off(struct client *c)
{
    struct pool *p = c->pool;
    struct handoff *to = p->w->move_to != NULL ? p->w->move_to(p->w, p) : NULL;
    struct handoff_move *m = to != NULL ? calloc(1, sizeof(*m)) : NULL;

    if (m == NULL || (m->pool = strdup(p->name)) == NULL) {
        free(m);
        if (to != NULL) {
            handoff_cancel(to);
        }
        c->moving = false;
        client_mark_dirty(c);   /* client_flush resumes reading */
        return;
    }
    log_debug("client", "%s: %s handed to another thread", p->name, c->peer);
    m->fd = c->fd;
    m->in = c->in;
    m->salen = 0;
    memcpy(m->peer, c->peer, sizeof(m->peer));
    /* Its timeouts go on from its last byte, unless reading was paused
     * (for the move, or backpressure): that time was ours. */
    m->last_rx_ms = c->read_paused ? worker_now_ms(p->w) : c->last_rx_ms;
    c->in = NULL;
    c->fd = -1;
    event_del(&c->rev);
    event_del(&c->wev);
    event_del(&c->tev);
    bconn_unwait(&c->wait);
    TAILQ_REMOVE(&p->clients, c, link);
    c->stats[STAT_curr_connections]--;
    client_set_state(c, CLIENT_CLOSED);
    if (c->dirty) {
        TAILQ_REMOVE(&p->w->dirty_clients, c, dirty_link);
        c->dirty = false;
    }
    defer_add(p->w->defer, client_free_deferred, c);
    tstats_threads_moved();
    handoff_send(to, m);
}

bool client_move(struct client *c)
{
    if (c->is_link || c->stopping || c->moving || c->state == CLIENT_CLOSED ||
        c->state == CLIENT_DRAINING || c->state == CLIENT_LINGER) {
        return false;
    }
    c->moving = true;
    client_mark_dirty(c);
    return true;
}

void client_adopt(struct pool *p, struct handoff_move *m)
{
    struct client *c;

    if (m->in == NULL) {        /* accepted there, never served */
        c = client_take(p, m->fd, (const struct sockaddr *)&m->sa, true);
        m->fd = -1;
        handoff_move_free(m);
        if (c != NULL && p->w->stopping) {
            client_stop(c);
        }
        return;
    }
    c = client_make(p, m->fd, p->stats);
    m->fd = -1;
    if (c == NULL) {            /* it closed the socket */
        client_left(p);
        handoff_move_free(m);
        return;
    }
    evbuffer_free(c->in);
    c->in = m->in;
    m->in = NULL;
    memcpy(c->peer, m->peer, sizeof(c->peer));
    c->last_rx_ms = m->last_rx_ms;
    handoff_move_free(m);
    log_debug("client", "%s: %s taken from another thread", p->name, c->peer);
    if (p->w->stopping) {
        client_stop(c);
    }
    if (evbuffer_get_length(c->in) > 0) {
        client_process(c);      /* what it sent before the move */
    }
    if (c->state != CLIENT_CLOSED) {
        client_arm_timer(c);
    }
}

void client_flush(struct client *c)
{
    c->dirty = false;
    assert(c->state != CLIENT_CLOSED);  /* client_close took it off the list */
    if (evbuffer_get_length(c->out) > 0) {
        int n = iobuf_write(c->out, c->fd);
        if (n < 0 && errno != EAGAIN && errno != EINTR) {
            client_close(c, strerror(errno));
            return;
        }
    }
    if (client_over_budget(c)) {
        log_limited(LOG_WARN, 10, "client", "%s: closing %s: %zu bytes of replies "
                    "held (%zu unread), over client_max_memory %lld",
                    c->pool->name, c->peer, client_replies_held(c),
                    evbuffer_get_length(c->out),
                    (long long)c->pool->conf->client_max_memory);
        c->stats[STAT_closed_slow_clients]++;
        client_close(c, "slow reader");
        return;
    }
    if (evbuffer_get_length(c->out) > 0) {
        event_add(&c->wev, NULL);
    }
    if (c->read_paused && !client_must_pause(c, 2)) {
        c->read_paused = false;
        if (c->state == CLIENT_READING || c->state == CLIENT_SWALLOW) {
            c->last_rx_ms = worker_now_ms(c->pool->w);  /* the pause was ours */
            event_add(&c->rev, NULL);
            client_process(c);
        }
    }
    if (c->state == CLIENT_DRAINING && c->nreqs == 0 &&
        evbuffer_get_length(c->out) == 0) {
        client_close(c, "drained");
        return;
    }
    if (c->stopping && client_idle(c)) {
        client_linger(c);
    } else if (c->moving && !c->stopping && client_movable(c)) {
        client_hand_off(c);
        return;
    }
    client_arm_timer(c);    /* the last reply out: idle from now */
}

/* --- timeouts ----------------------------------------------------------- */

/* Is a command half-received (its line or its value)? */
static bool client_unfinished(const struct client *c)
{
    return c->state == CLIENT_SWALLOW ||
           (c->state == CLIENT_READING && !c->read_paused &&
            evbuffer_get_length(c->in) > 0);
}

/* The timeout that applies now, in ms; 0: none. */
static uint64_t client_timeout_ms(const struct client *c)
{
    const struct conf_pool *conf = c->pool->conf;

    if (c->state == CLIENT_LINGER) {
        return CLIENT_LINGER_MS;
    }
    if (c->is_link) {
        return 0;   /* the copy's link times out what it waits for itself */
    }
    if (client_unfinished(c)) {
        return conf->value_timeout > 0 ? (uint64_t)conf->value_timeout : 0;
    }
    if (c->state == CLIENT_READING && !c->read_paused && c->nreqs == 0) {
        return conf->client_timeout > 0 ? (uint64_t)conf->client_timeout : 0;
    }
    return 0;
}

static void client_timer_add(struct client *c, uint64_t ms)
{
    struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };

    event_add(&c->tev, &tv);
}

/* Arm the timer if a timeout applies and it is not armed: cheap enough for
 * every read and flush (the common case is one flag test). */
static void client_arm_timer(struct client *c)
{
    if (event_pending(&c->tev, EV_TIMEOUT, NULL)) {
        return;
    }
    uint64_t t = client_timeout_ms(c);
    if (t > 0) {
        uint64_t quiet = worker_now_ms(c->pool->w) - c->last_rx_ms;
        client_timer_add(c, quiet < t ? t - quiet : 1);
    }
}

static void client_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct client *c = arg;
    struct pool *p = c->pool;
    uint64_t t = client_timeout_ms(c);

    (void)fd, (void)what;
    if (t == 0) {
        return;     /* none applies now; a read or a flush re-arms */
    }
    uint64_t quiet = worker_now_ms(p->w) - c->last_rx_ms;
    if (quiet < t) {
        client_timer_add(c, t - quiet);
        return;
    }
    if (c->state == CLIENT_LINGER) {
        client_close(c, "stopping: no FIN from the client");
    } else if (client_unfinished(c)) {
        c->stats[STAT_closed_stalled_clients]++;
        log_limited(LOG_NOTICE, 1, "client", "%s: closing %s: nothing received for "
                    "%llu ms in the middle of a %s (value_timeout %lld ms)",
                    p->name, c->peer, (unsigned long long)quiet,
                    c->state == CLIENT_SWALLOW || c->need > 0 ? "value" : "command line",
                    (long long)p->conf->value_timeout);
        client_close(c, "value_timeout");
    } else {
        c->stats[STAT_closed_idle_clients]++;
        log_limited(LOG_INFO, 1, "client", "%s: closing %s: idle for %llu ms "
                    "(client_timeout %lld ms)", p->name, c->peer,
                    (unsigned long long)quiet, (long long)p->conf->client_timeout);
        client_close(c, "client_timeout");
    }
}

/* --- replies made by the proxy itself ----------------------------------- */

static void client_reply_local(struct client *c, const char *data, size_t len)
{
    if (TAILQ_EMPTY(&c->reqs)) {
        evbuffer_add(c->out, data, len);
        client_mark_dirty(c);
        return;
    }
    struct request *r = client_request(c, PROTO_CMD_NONE, 0);
    if (r == NULL) {
        client_close(c, "out of memory");
        return;
    }
    request_reply(r, data, len);
    r->done = true;
    client_advance(c);
}

static void client_reply_line(struct client *c, const char *line)
{
    char buf[512];
    int n = snprintf(buf, sizeof(buf), "%s\r\n", line);

    client_reply_local(c, buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
}

/* A `stats settings` line, on one line whatever the file's strings hold. */
static void client_setting_line(void *arg, const char *name, const char *value)
{
    struct evbuffer *b = arg;

    evbuffer_add_printf(b, "STAT %s ", name);
    for (const char *q = value; *q != '\0'; q++) {
        evbuffer_add(b, *q == '\r' || *q == '\n' ? " " : q, 1);
    }
    evbuffer_add(b, "\r\n", 2);
}

static void client_stats(struct client *c, const struct proto_req *req)
{
    struct pool *p = c->pool;
    struct evbuffer *b = evbuffer_new();
    struct worker *w = p->w;

    if (b == NULL) {
        client_close(c, "out of memory");
        return;
    }
    if (req->args_len == 5 && memcmp(req->args, "reset", 5) == 0) {
        /* Counters only go up (Prometheus reads them): a reset moves the
         * base this view subtracts, the sum of every thread's (tstats.h). */
        uint64_t base[STAT_POOL_COUNT];
        memcpy(base, p->stats, sizeof(base));
        tstats_add_pool(w->id, p->name, base);
        for (int i = 0; i < STAT_POOL_COUNT; i++) {
            if (strcmp(stats_pool_desc[i].kind, "counter") != 0) {
                base[i] = 0;
            }
        }
        tstats_pool_reset(p, base);
        evbuffer_add_printf(b, "RESET\r\n");
    } else if (req->args_len == 8 && memcmp(req->args, "settings", 8) == 0) {
        evbuffer_add_printf(b, "STAT pool %s\r\n", p->name);
        conf_pool_settings(p->conf, client_setting_line, b);
        evbuffer_add_printf(b, "END\r\n");
    } else if (req->args_len > 0) {
        evbuffer_add_printf(b, "ERROR\r\n");
    } else {
        uint64_t now = worker_now_ms(w);
        evbuffer_add_printf(b, "STAT pid %ld\r\nSTAT uptime %llu\r\nSTAT time %llu\r\n"
                            "STAT version %s\r\nSTAT pool %s\r\nSTAT servers %u\r\n"
                            "STAT ring_points %u\r\n", (long)getpid(),
                            (unsigned long long)((now - w->started) / 1000),
                            (unsigned long long)(now / 1000), RINGPROXY_VERSION,
                            p->name, p->nbackends, p->ring->npoints);
        uint64_t ps[STAT_POOL_COUNT];
        uint64_t (*bs)[STAT_BACKEND_COUNT] = rp_xcalloc(p->nbackends ? p->nbackends : 1,
                                                        sizeof(*bs), "summed counters");
        memcpy(ps, p->stats, sizeof(ps));
        for (uint32_t s = 0; s < p->nbackends; s++) {
            memcpy(bs[s], p->backends[s]->stats, sizeof(bs[s]));
        }
        tstats_add_backends(w->id, p->name, p->backends, p->nbackends, bs);
        tstats_add_pool(w->id, p->name, ps);    /* the other threads' share */
        uint64_t base[STAT_POOL_COUNT];
        tstats_pool_base(p, base);
        for (int i = 0; i < STAT_POOL_COUNT; i++) {
            evbuffer_add_printf(b, "STAT %s %llu\r\n", stats_pool_desc[i].name,
                                (unsigned long long)(ps[i] > base[i] ? ps[i] - base[i] : 0));
        }
        struct tstats_threads th;
        tstats_threads_get(&th);
        if (th.threads > 1) {
            evbuffer_add_printf(b, "STAT threads %u\r\nSTAT threads:active %u\r\n"
                                "STAT threads:trials %llu\r\nSTAT threads:trials_undone %llu\r\n"
                                "STAT threads:clients_moved %llu\r\n", th.threads, th.active,
                                (unsigned long long)th.trials, (unsigned long long)th.undone,
                                (unsigned long long)th.moved);
        }
        struct tstats_live *live = tstats_backends_live(w->id, p);
        for (uint32_t s = 0; s < p->nbackends; s++) {
            const struct backend *be = p->backends[s];
            evbuffer_add_printf(b, "STAT backend:%s:addr %s\r\nSTAT backend:%s:state %s\r\n",
                                be->identity, be->addr.text, be->identity,
                                backend_state_names[live[s].state]);
            if (live[s].dns_error[0] != '\0') {
                evbuffer_add_printf(b, "STAT backend:%s:error %s\r\n", be->identity,
                                    live[s].dns_error);
            }
            for (int i = 0; i < STAT_BACKEND_COUNT; i++) {
                evbuffer_add_printf(b, "STAT backend:%s:%s %llu\r\n", be->identity,
                                    stats_backend_desc[i].name,
                                    (unsigned long long)bs[s][i]);
            }
        }
        free(live);
        free(bs);
        pool_index_stats(p, b);
        evbuffer_add_printf(b, "END\r\n");
    }
    size_t len = evbuffer_get_length(b);
    client_reply_local(c, (const char *)evbuffer_pullup(b, -1), len);
    evbuffer_free(b);
}

/* --- routing ------------------------------------------------------------ */

/* A command on a key whose owner is changing: the migration runs it. */
static void client_migrating(struct client *c, const struct proto_req *req,
                             size_t consumed, size_t data, bool retrieval, uint32_t h)
{
    char key[PROTO_KEY_MAX];
    uint32_t keylen = req->keylen;
    struct evbuffer *value = NULL;
    struct request *r = client_request(c, req->cmd, 1);

    if (r == NULL) {
        client_close(c, "out of memory");
        return;
    }
    if (data > 0) {
        /* r counts in the routing generation already: no way back. */
        value = rp_xevbuffer_new("a moving key's value");
    }
    memcpy(key, req->key, keylen);
    r->frags[0].retrieval = retrieval;
    r->nkeys = retrieval ? 1 : 0;
    if (req->noreply) {
        r->quiet = true;
        client_detach(c, r);
    }
    evbuffer_drain(c->in, consumed);
    if (value != NULL) {
        evbuffer_remove_buffer(c->in, value, data);
    }
    request_hold(r, keylen + data);
    mig_submit(c->pool->mig, &r->frags[0], req, key, keylen, h, 0, value);
}

/* Refuse a command while the pool is fenced (docs/ARCHITECTURE.md, I6). */
static bool client_fenced(struct client *c, const struct proto_req *req, size_t n)
{
    if (!pool_fenced(c->pool)) {
        return false;
    }
    c->stats[STAT_server_errors]++;
    if (!req->noreply) {
        client_reply_line(c, MIG_FENCED_LINE);
    }
    evbuffer_drain(c->in, n);
    return true;
}

/*
 * Queue a one-backend command: the line rebuilt from req (proto.c; never the
 * client's own bytes), then `data` bytes taken from the client's input after
 * `consumed` bytes are dropped.
 */
static void client_forward(struct client *c, const struct proto_req *req,
                           size_t consumed, size_t data, bool retrieval)
{
    if (client_fenced(c, req, consumed + data)) {
        return;
    }
    struct backend *be;
    uint32_t h = pool_key_hash(c->pool, req->key, req->keylen);
    if (pool_route(c->pool, req->key, req->keylen, h, &be) == ROUTE_MIGRATION) {
        client_migrating(c, req, consumed, data, retrieval, h);
        return;
    }
    struct bconn *bc = be != NULL ? backend_conn(be, c->id) : NULL;

    if (bc == NULL) {
        c->stats[STAT_server_errors]++;
        if (!req->noreply) {
            client_reply_line(c, BACKEND_ERR_DOWN);
        }
        evbuffer_drain(c->in, consumed + data);
        return;
    }
    struct request *r = client_request(c, req->cmd, 1);
    if (r == NULL) {
        client_close(c, "out of memory");
        return;
    }
    r->frags[0].retrieval = retrieval;
    r->nkeys = retrieval ? 1 : 0;
    if (retrieval || (pool_indexed(c->pool) && cmd_info(req->cmd)->index == CMD_INDEX_ADD)) {
        /* A get's VALUE must name its key; the index needs a stored key
         * when the backend's answer arrives. */
        /* r counts in the routing generation already: no way back. */
        r->keys = rp_xmalloc(req->keylen, "a request's key");
        memcpy(r->keys, req->key, req->keylen);
        r->keylen = req->keylen;
        r->hash = h;
    }
    if (req->noreply) {
        r->quiet = true;
        client_detach(c, r);
    }
    if (req->cmd == PROTO_CMD_GET || req->cmd == PROTO_CMD_GETS) {
        request_hold(r, bconn_push_get(bc, &r->frags[0], req->key, req->keylen, h));
        evbuffer_drain(c->in, consumed);    /* req->key points into it */
        client_wait_backend(c, bc);
        return;
    }
    char line[PROTO_FORMAT_MAX];
    size_t len = proto_format_request(req, line, sizeof(line));
    struct evbuffer *out = bconn_out(bc);
    evbuffer_add(out, line, len);
    if (retrieval) {
        evbuffer_add(out, " ", 1);
        evbuffer_add(out, req->key, req->keylen);
    }
    evbuffer_add(out, "\r\n", 2);
    evbuffer_drain(c->in, consumed);
    if (data > 0) {
        evbuffer_remove_buffer(c->in, out, data);
    }
    request_hold(r, len + (retrieval ? 1 + req->keylen : 0) + 2 + data);
    bconn_push(bc, &r->frags[0]);
    client_wait_backend(c, bc);
}

/*
 * A get/gets/gat/gats with several keys: each backend gets its keys in
 * lines of at most PROTO_LINE_MAX bytes (memcached closes the connection on a
 * longer gat line, and on any line with over 100 leading spaces), each line
 * a fragment of its own, answered by its own END; the reply is assembled in
 * the client's key order (request.c). During a migration every key whose
 * owner is changing gets a fragment of its own, answered by the migration
 * with the fallback rules. The keys are split into shares by request_split;
 * here the shares are written to their connections.
 */
static void client_multiget(struct client *c, const struct proto_req *req,
                            size_t consumed)
{
    struct pool *p = c->pool;
    struct mig *mig = mig_active(p->mig) ? p->mig : NULL;
    /* A key opens at most one share: nkeys bounds them (the client's line,
     * and so nkeys, is bounded by its memory budget). */
    struct request_share *sh = malloc(req->nkeys * sizeof(*sh));
    uint32_t *key_frag = malloc(req->nkeys * sizeof(*key_frag));
    char head[PROTO_FORMAT_MAX];
    size_t hlen = proto_format_request(req, head, sizeof(head));
    uint32_t nfrags, nmoving = 0, i, j;

    if (sh == NULL || key_frag == NULL) {
        goto oom;
    }
    if (client_fenced(c, req, consumed)) {
        goto out;
    }
    nfrags = request_split(p, req, hlen, sh, key_frag, &nmoving);
    c->stats[STAT_fragments] += nfrags;
    struct request *r = client_request(c, req->cmd, nfrags);
    if (r == NULL) {
        goto oom;
    }
    request_set_keys(r, req, key_frag);
    key_frag = NULL;

    /* Every connection first: connecting can fail what is queued on one. */
    uint32_t nfailed = 0;
    for (j = 0; j < nfrags; j++) {
        struct frag *f = &r->frags[j];
        f->retrieval = true;
        if (sh[j].target & REQUEST_SHARE_MOVING) {
            continue;
        }
        if (sh[j].prev != FRAG_NONE) {
            sh[j].bc = sh[sh[j].prev].bc;
        } else if (pool_slot_backend(p, sh[j].target) != NULL) {
            sh[j].bc = backend_conn(pool_slot_backend(p, sh[j].target), c->id);
        }
        if (sh[j].bc == NULL) {
            f->failed = true;
            nfailed++;
        }
    }
    /* Then the lines, key by key: a backend's lines follow one another. */
    for (i = 0; i < r->nkeys; i++) {
        j = r->key_frag[i];
        if (j == FRAG_NONE || (sh[j].target & REQUEST_SHARE_MOVING) || r->frags[j].failed) {
            continue;
        }
        struct evbuffer *out = bconn_out(sh[j].bc);
        if (sh[j].state == REQUEST_SHARE_UNSENT) {
            if (sh[j].prev != FRAG_NONE) {
                evbuffer_add(out, "\r\n", 2);
                sh[sh[j].prev].state = REQUEST_SHARE_WRITTEN;
            }
            evbuffer_add(out, head, hlen);
            r->frags[j].cursor = i;
            bconn_push(sh[j].bc, &r->frags[j]);
            sh[j].state = REQUEST_SHARE_WRITING;
        }
        evbuffer_add(out, " ", 1);
        evbuffer_add(out, r->keys + r->key_off[i], r->key_off[i + 1] - r->key_off[i] - 1);
    }
    for (j = 0; j < nfrags; j++) {
        if (sh[j].state == REQUEST_SHARE_WRITING) {
            evbuffer_add(bconn_out(sh[j].bc), "\r\n", 2);
        }
        if (sh[j].bc != NULL) {
            client_wait_backend(c, sh[j].bc);
        }
    }
    /* The key copy and the bookkeeping per key and per share count in
     * the client's budget like the bytes it sent. */
    request_hold(r, req->keys_len + (size_t)r->nkeys * (sizeof(*r->key_off) +
                 sizeof(*r->key_frag) + sizeof(*r->key_hit) + 1) +
                 (size_t)nfrags * sizeof(struct frag));
    evbuffer_drain(c->in, consumed);
    c->stats[STAT_server_errors] += nfailed;

    /* Complete what is not on a backend; the last completion may free r. */
    uint32_t todo = nfailed + nmoving;
    for (j = 0; todo > 0 && j < nfrags; j++) {
        struct frag *f = &r->frags[j];
        if (sh[j].target & REQUEST_SHARE_MOVING) {
            uint32_t ki = sh[j].target & ~REQUEST_SHARE_MOVING;
            todo--;
            mig_submit(mig, f, req, r->keys + r->key_off[ki],
                       r->key_off[ki + 1] - r->key_off[ki] - 1, sh[j].hash, ki, NULL);
        } else if (f->failed) {
            todo--;
            request_frag_fail(f, BACKEND_ERR_DOWN);
        }
    }
out:
    free(sh);
    free(key_frag);
    return;

oom:
    free(sh);
    free(key_frag);
    client_close(c, "out of memory");
}

static void client_flush_all(struct client *c, const struct proto_req *req,
                             size_t consumed)
{
    struct pool *p = c->pool;

    if (client_fenced(c, req, consumed)) {
        return;
    }
    char line[PROTO_FORMAT_MAX];
    size_t len = proto_format_request(req, line, sizeof(line));
    /* A copy of an indexed pool asks its home thread, which empties the
     * index before it answers: a store answered after the flush is then
     * indexed after it (hub.h). */
    struct backend **to = p->link != NULL ? &p->link : p->backends;
    uint32_t n = p->link != NULL ? 1 : p->nbackends;
    struct request *r = client_request(c, req->cmd, n);

    if (r == NULL) {
        client_close(c, "out of memory");
        return;
    }
    r->flushes_index = !req->has_delay || req->delay <= 0;
    if (p->link != NULL) {
        /* Went the other way from a copy that routes directly: its next
         * command waits for it (client_route_switching), or it could reach
         * a server before the flush and be wiped by it. */
        c->forwarded = true;
    }
    if (req->noreply) {
        r->quiet = true;
        client_detach(c, r);
    }
    uint32_t nfailed = 0;
    for (uint32_t i = 0; i < n; i++) {
        struct bconn *bc = backend_conn(to[i], c->id);
        if (bc == NULL) {
            r->frags[i].failed = true;
            nfailed++;
            continue;
        }
        struct evbuffer *out = bconn_out(bc);
        evbuffer_add(out, line, len);
        evbuffer_add(out, "\r\n", 2);
        bconn_push(bc, &r->frags[i]);
        client_wait_backend(c, bc);
    }
    evbuffer_drain(c->in, consumed);
    request_fail_unsent(r, nfailed, BACKEND_ERR_DOWN);
}

/*
 * memcached unlinks the old value when a set fails for size, so that a failed
 * set never leaves stale data readable; do the same on the backend (quietly).
 */
static void client_delete_stale(struct client *c, const struct proto_req *set)
{
    struct proto_req del = { .cmd = PROTO_CMD_DELETE, .key = set->key,
                             .keylen = set->keylen, .keys = set->key,
                             .keys_len = set->keylen, .nkeys = 1, .noreply = true };

    client_forward(c, &del, 0, 0, false);
}

/* A storage command: its data block must be all there, end in "\r\n" and
 * fit item_size_max. Returns false when more input is needed. */
static bool client_storage(struct client *c, const struct proto_req *req, size_t total)
{
    struct pool *p = c->pool;
    size_t avail = evbuffer_get_length(c->in);
    size_t data = (size_t)req->bytes + 2;

    if (req->bytes > p->conf->item_size_max) {
        c->stats[STAT_too_large]++;
        if (!req->noreply) {
            client_reply_line(c, "SERVER_ERROR object too large for cache");
        }
        if (cmd_info(req->cmd)->unlinks_too_large) {
            client_delete_stale(c, req);
        }
        evbuffer_drain(c->in, total);
        c->swallow = data;
        client_set_state(c, CLIENT_SWALLOW);
        return true;
    }
    if (avail < total + data) {
        return false;
    }
    char crlf[2];
    struct evbuffer_ptr at;
    evbuffer_ptr_set(c->in, &at, total + data - 2, EVBUFFER_PTR_SET);
    evbuffer_copyout_from(c->in, &at, crlf, 2);
    if (crlf[0] != '\r' || crlf[1] != '\n') {
        c->stats[STAT_client_errors]++;
        if (!req->noreply) {
            client_reply_line(c, "CLIENT_ERROR bad data chunk");
        }
        evbuffer_drain(c->in, total + data);
        return true;
    }
    c->stats[cmd_info(req->cmd)->stat]++;
    client_forward(c, req, total, data, false);
    return true;
}

/* Commands the proxy answers itself; each drains its line. */
typedef bool (*client_local_fn)(struct client *c, const struct proto_req *req,
                                size_t total);

static bool client_version(struct client *c, const struct proto_req *req, size_t total)
{
    (void)req;
    client_reply_line(c, "VERSION " PROXY_MEMCACHED_VERSION " ringproxy-" RINGPROXY_VERSION);
    evbuffer_drain(c->in, total);
    return true;
}

static bool client_verbosity(struct client *c, const struct proto_req *req, size_t total)
{
    if (!req->noreply) {
        client_reply_line(c, "OK");
    }
    evbuffer_drain(c->in, total);
    return true;
}

static bool client_stats_cmd(struct client *c, const struct proto_req *req, size_t total)
{
    client_stats(c, req);
    evbuffer_drain(c->in, total);
    return true;
}

static bool client_quit(struct client *c, const struct proto_req *req, size_t total)
{
    (void)req, (void)total;
    evbuffer_drain(c->in, evbuffer_get_length(c->in));
    client_drain(c, "quit");
    return true;
}

/* The handler of each CMD_KIND_LOCAL row of cmd_table. */
static const client_local_fn client_local[PROTO_CMD_COUNT] = {
    [PROTO_CMD_VERSION] = client_version,
    [PROTO_CMD_VERBOSITY] = client_verbosity,
    [PROTO_CMD_STATS] = client_stats_cmd,
    [PROTO_CMD_QUIT] = client_quit,
};

/*
 * Dispatch one parsed command whose line's terminator ends at `total`, by
 * its kind (cmd.h). The client's line itself is never forwarded: backends
 * are sent lines rebuilt from req (proto_format_request). Returns false
 * when more input is needed.
 */
static bool client_dispatch(struct client *c, const struct proto_req *req, size_t total)
{
    const struct cmd_info *ci = cmd_info(req->cmd);

    switch (ci->kind) {
    case CMD_KIND_RETRIEVAL:
        c->stats[ci->stat] += req->nkeys;
        if (req->nkeys == 0) {
            client_reply_line(c, "END");
            evbuffer_drain(c->in, total);
        } else if (req->nkeys == 1) {
            client_forward(c, req, total, 0, true);
        } else {
            client_multiget(c, req, total);
        }
        return true;
    case CMD_KIND_STORAGE:
        return client_storage(c, req, total);
    case CMD_KIND_KEYED:
        c->stats[ci->stat]++;
        client_forward(c, req, total, 0, false);
        return true;
    case CMD_KIND_FANOUT:
        c->stats[ci->stat]++;
        client_flush_all(c, req, total);
        return true;
    case CMD_KIND_LOCAL:
        if (client_local[req->cmd] != NULL) {
            return client_local[req->cmd](c, req, total);
        }
        break;
    case CMD_KIND_NONE:
        break;
    }
    client_reply_line(c, "ERROR");
    evbuffer_drain(c->in, total);
    return true;
}

/* --- meta commands (docs/ARCHITECTURE.md, "Meta protocol (for clients)") */

#define CLIENT_META_MOVING "SERVER_ERROR ringproxy: meta command on a key moving in a resize"
/* memcached 1.6.18 writes an me reply's key raw unless the item was stored
 * by ms with b: a decoded key holding CR or LF would split the reply in two
 * and break the backend connection every client shares. */
#define CLIENT_META_ME_UNFRAMED "SERVER_ERROR ringproxy: me of a key holding CR or LF"

/*
 * Can the migration run this command on a moving key? Its rules use the
 * key in text command lines (a b key whose bytes are not a text key cannot
 * be), add a condition to it (one flag more than the client's), and read
 * the replies mconn.c knows (me's ME is not one).
 */
static bool client_meta_movable(const struct meta_req *mr)
{
    return mr->cmd != META_CMD_ME && mr->nflags < META_FLAGS_MAX - 1 &&
           proto_key_ok((const char *)mr->hkey, mr->hkeylen);
}

/* The unlink of a moving key: an "md <key> [b] q" run by the delete rule,
 * answering nobody. */
static void client_meta_unlink_moving(struct client *c, const struct meta_req *ms,
                                      uint32_t h)
{
    char line[META_KEY_MAX + 16];
    struct meta_req md;
    uint8_t keybuf[META_KEYBUF_SIZE];
    int n = snprintf(line, sizeof(line), "md %.*s%s", (int)ms->keylen, ms->key,
                     ms->base64 ? " b" : "");

    if (n <= 0 || (size_t)n >= sizeof(line) ||
        meta_parse_request(line, (size_t)n, &md, keybuf) != META_OK ||
        !client_meta_movable(&md)) {
        return;     /* a binary key: no rule can name it */
    }
    struct request *r = client_request(c, PROTO_CMD_NONE, 1);
    if (r == NULL) {
        return;
    }
    r->quiet = true;
    client_detach(c, r);
    request_hold(r, (size_t)n);
    mig_submit_meta(c->pool->mig, &r->frags[0], &md, line, (size_t)n,
                    (const char *)md.hkey, md.hkeylen, h, NULL);
}

/*
 * An ms over item_size_max: memcached answers the error and unlinks the key's
 * old value, so that a failed store never leaves stale data; the same is
 * asked of the backend, quietly ("md <key> [b] q", then the fence's mn).
 */
static void client_meta_unlink(struct client *c, const struct meta_req *mr)
{
    struct backend *be;
    uint32_t h = pool_key_hash(c->pool, (const char *)mr->hkey, mr->hkeylen);

    if (pool_fenced(c->pool)) {
        return;
    }
    enum route rt = pool_route(c->pool, (const char *)mr->hkey, mr->hkeylen, h, &be);
    if (rt == ROUTE_MIGRATION) {
        client_meta_unlink_moving(c, mr, h);
        return;
    }
    struct bconn *bc = be != NULL ? backend_conn(be, c->id) : NULL;
    struct request *r = bc != NULL ? client_request(c, PROTO_CMD_NONE, 1) : NULL;
    if (r == NULL) {
        return;
    }
    r->quiet = true;
    client_detach(c, r);
    r->frags[0].meta_fits = cmd_meta_info(META_CMD_MD)->replies;
    r->frags[0].meta_fence = true;
    evbuffer_add_printf(bconn_out(bc), "md %.*s%s q\r\nmn\r\n", (int)mr->keylen, mr->key,
                        mr->base64 ? " b" : "");
    request_hold(r, mr->keylen + 16);
    bconn_push(bc, &r->frags[0]);
}

/* A meta command on a key whose owner is changing: the migration runs the
 * client's line (without q: the rules apply it) by its text counterpart's
 * rule. */
static void client_meta_migrating(struct client *c, const struct meta_req *mr,
                                  size_t line_len, size_t consumed, size_t data,
                                  uint32_t h)
{
    struct meta_req loud = *mr;
    uint32_t n = 0;

    for (uint32_t i = 0; i < mr->nflags; i++) {
        if (mr->flags[i].letter != 'q') {
            loud.flags[n++] = mr->flags[i];
        }
    }
    loud.nflags = n;
    /* Without q it is no longer than the line with it (line_len). */
    char *line = rp_xmalloc(line_len + 2, "a meta line");
    size_t len = meta_format_request(&loud, line, line_len + 2);
    assert(len > 0);
    struct request *r = client_request(c, PROTO_CMD_NONE, 1);
    if (r == NULL) {
        free(line);
        client_close(c, "out of memory");
        return;
    }
    /* The key may point into the client's input: copied before it goes. */
    char key[PROTO_KEY_MAX];
    uint32_t keylen = mr->hkeylen;
    memcpy(key, mr->hkey, keylen);
    /* r counts in the routing generation already: no way back. */
    struct evbuffer *value = data > 0 ? rp_xevbuffer_new("a moving key's value") : NULL;
    evbuffer_drain(c->in, consumed);
    if (value != NULL) {
        evbuffer_remove_buffer(c->in, value, data);
    }
    request_hold(r, len + data);
    mig_submit_meta(c->pool->mig, &r->frags[0], mr, line, len, key, keylen, h, value);
    free(line);
}

/*
 * Forward a parsed meta command to its key's owner: the line as
 * meta_format_request builds it (every flag as the client gave it), then
 * for ms its `data` bytes moved from the client's input, then for q the
 * fence "mn" whose MN ends the answer. The reply is passed through.
 */
static void client_meta_forward(struct client *c, const struct meta_req *mr,
                                const char *line, size_t len, size_t consumed,
                                size_t data)
{
    struct pool *p = c->pool;
    const struct cmd_meta_info *mi = cmd_meta_info(mr->cmd);
    struct backend *be;
    const char *fail = NULL;

    if (pool_fenced(p)) {
        fail = MIG_FENCED_LINE;
    } else if (mr->cmd == META_CMD_ME &&
               (memchr(mr->hkey, '\n', mr->hkeylen) != NULL ||
                memchr(mr->hkey, '\r', mr->hkeylen) != NULL)) {
        fail = CLIENT_META_ME_UNFRAMED;
    } else {
        uint32_t h = pool_key_hash(p, (const char *)mr->hkey, mr->hkeylen);
        enum route rt = pool_route(p, (const char *)mr->hkey, mr->hkeylen, h, &be);
        if (rt == ROUTE_MIGRATION && client_meta_movable(mr)) {
            client_meta_migrating(c, mr, len, consumed, data, h);
            return;
        } else if (rt == ROUTE_MIGRATION) {
            c->stats[STAT_meta_moving_refused]++;
            fail = CLIENT_META_MOVING;
        } else {
            struct bconn *bc = be != NULL ? backend_conn(be, c->id) : NULL;
            if (bc != NULL) {
                struct request *r = client_request(c, PROTO_CMD_NONE, 1);
                if (r == NULL) {
                    client_close(c, "out of memory");
                    return;
                }
                struct frag *f = &r->frags[0];
                f->meta_fits = mi->replies;
                f->meta_fence = mr->quiet && mr->cmd != META_CMD_ME;
                r->meta_quiet_drops = mr->quiet_drops;
                r->meta_read = mr->cmd == META_CMD_MG;
                if (!mi->stores_only_with_n || mr->vivify) {
                    r->meta_stores = mi->stores;
                }
                if (r->meta_stores != 0 && pool_indexed(p)) {
                    /* The index stores text keys: a b key is indexed by
                     * its bytes when they are one (the mover's lines). */
                    if (proto_key_ok((const char *)mr->hkey, mr->hkeylen)) {
                        r->keys = rp_xmalloc(mr->hkeylen, "a request's key");
                        memcpy(r->keys, mr->hkey, mr->hkeylen);
                        r->keylen = mr->hkeylen;
                        r->hash = h;
                    } else {
                        c->stats[STAT_meta_unindexed_keys]++;
                    }
                }
                struct evbuffer *out = bconn_out(bc);
                evbuffer_add(out, line, len);
                evbuffer_add(out, "\r\n", 2);
                evbuffer_drain(c->in, consumed);
                if (data > 0) {
                    evbuffer_remove_buffer(c->in, out, data);
                }
                if (f->meta_fence) {
                    evbuffer_add(out, "mn\r\n", 4);
                }
                request_hold(r, len + 2 + data + (f->meta_fence ? 4 : 0));
                bconn_push(bc, f);
                client_wait_backend(c, bc);
                return;
            }
            fail = BACKEND_ERR_DOWN;
        }
    }
    /* Errors are answered even under q, as memcached's own. */
    c->stats[STAT_server_errors]++;
    client_reply_line(c, fail);
    evbuffer_drain(c->in, consumed + data);
}

/*
 * A meta command (mg ms md ma mn me), judged by meta.c exactly as memcached
 * judges it. An ms's value is always read as data: once its length was read
 * the block is forwarded, or on an error dropped (meta_req.swallow), never
 * parsed as commands. Returns 0 when the line is not a meta command, 1 once
 * handled, -1 when an ms waits for the rest of its value (c->need is set).
 */
static int client_meta(struct client *c, const char *line, size_t len, size_t total)
{
    struct pool *p = c->pool;
    struct meta_req mr;
    uint8_t keybuf[META_KEYBUF_SIZE];
    int rc = meta_parse_request(line, len, &mr, keybuf);

    if (rc == META_NOT_META) {
        return 0;
    }
    c->stats[STAT_requests]++;
    c->stats[STAT_cmd_meta]++;
    if (rc == META_ERR) {
        c->stats[STAT_client_errors]++;
        client_reply_line(c, mr.error);
        evbuffer_drain(c->in, total);
        if (mr.cmd == META_CMD_MS && mr.swallow) {
            c->swallow = (uint64_t)mr.datalen + 2;
            client_set_state(c, CLIENT_SWALLOW);
        }
        return 1;
    }
    const struct cmd_meta_info *mi = cmd_meta_info(mr.cmd);
    if (mi->stat >= 0) {
        c->stats[mi->stat]++;
    }
    if (mi->kind == CMD_META_KIND_LOCAL) {
        client_reply_line(c, "MN");     /* after every earlier reply: in order */
        evbuffer_drain(c->in, total);
        return 1;
    }
    size_t data = 0;
    if (mr.cmd == META_CMD_MS) {
        data = (size_t)mr.datalen + 2;
        if (mr.datalen > p->conf->item_size_max) {
            c->stats[STAT_too_large]++;
            client_reply_line(c, "SERVER_ERROR object too large for cache");
            client_meta_unlink(c, &mr);
            evbuffer_drain(c->in, total);
            c->swallow = data;
            client_set_state(c, CLIENT_SWALLOW);
            return 1;
        }
        if (evbuffer_get_length(c->in) < total + data) {
            c->need = total + data;
            return -1;
        }
        char crlf[2];
        struct evbuffer_ptr at;
        evbuffer_ptr_set(c->in, &at, total + data - 2, EVBUFFER_PTR_SET);
        evbuffer_copyout_from(c->in, &at, crlf, 2);
        if (crlf[0] != '\r' || crlf[1] != '\n') {
            c->stats[STAT_client_errors]++;
            client_reply_line(c, META_ERR_BAD_CHUNK);
            evbuffer_drain(c->in, total + data);
            return 1;
        }
    }
    /* The backend line is never longer than the client's, plus one byte. */
    char small[PROTO_LINE_MAX + 64];
    char *buf = len + 2 <= sizeof(small) ? small : rp_xmalloc(len + 2, "a meta line");
    size_t blen = meta_format_request(&mr, buf, len + 2);
    assert(blen > 0);
    client_meta_forward(c, &mr, buf, blen, total, data);
    if (buf != small) {
        free(buf);
    }
    return 1;
}

/* The next line of the client's input, contiguous; NULL if incomplete. */
static const char *client_line(struct client *c, size_t *len, size_t *total)
{
    struct evbuffer_iovec v;

    if (evbuffer_peek(c->in, -1, NULL, &v, 1) < 1) {
        return NULL;
    }
    const char *base = v.iov_base;
    const char *nl = memchr(base, '\n', v.iov_len);
    if (nl == NULL) {
        size_t eol;
        struct evbuffer_ptr p = evbuffer_search_eol(c->in, NULL, &eol, EVBUFFER_EOL_LF);
        if (p.pos < 0) {
            return NULL;
        }
        base = (const char *)evbuffer_pullup(c->in, p.pos + 1);
        nl = base + p.pos;
    }
    *total = (size_t)(nl - base) + 1;
    *len = nl > base && nl[-1] == '\r' ? *total - 2 : *total - 1;
    return base;
}

static void client_process(struct client *c)
{
    struct pool *p = c->pool;
    struct proto_req req;
    size_t len, total;

    while (c->state == CLIENT_READING || c->state == CLIENT_SWALLOW) {
        size_t avail = evbuffer_get_length(c->in);
        if (avail == 0) {
            break;
        }
        if (c->state == CLIENT_SWALLOW) {
            size_t n = avail < c->swallow ? avail : (size_t)c->swallow;
            evbuffer_drain(c->in, n);
            c->swallow -= n;
            if (c->swallow > 0) {
                break;
            }
            client_set_state(c, CLIENT_READING);
            continue;
        }
        if (c->read_paused) {
            break;
        }
        if (avail < c->need) {
            break;  /* a storage command's value is still arriving */
        }
        const char *line = client_line(c, &len, &total);
        if (line == NULL) {
            const char *head = (const char *)evbuffer_pullup(
                c->in, avail < PROTO_LINE_MAX + 1 ? (ssize_t)avail : PROTO_LINE_MAX + 1);
            if ((uint8_t)head[0] == 0x80) {
                client_abort(c, "CLIENT_ERROR binary protocol is not supported",
                             "binary protocol request");
            } else if ((avail > PROTO_LINE_MAX && !proto_line_may_grow(head, avail)) ||
                       avail > CLIENT_GET_LINE_MAX) {
                client_abort(c, "CLIENT_ERROR line too long", "line too long");
            }
            break;
        }
        if ((uint8_t)line[0] == 0x80) {
            client_abort(c, "CLIENT_ERROR binary protocol is not supported",
                         "binary protocol request");
            break;
        }
        if (client_route_switching(c)) {
            c->read_paused = true;      /* client_flush resumes it */
            event_del(&c->rev);
            break;
        }
        c->forwarded = pool_forwards(p);
        int mrc = client_meta(c, line, len, total);
        if (mrc < 0) {
            break;      /* parsed again once the whole value is here */
        }
        if (mrc > 0) {
            c->need = 0;
            if (!c->read_paused && client_must_pause(c, 1)) {
                c->read_paused = true;
                event_del(&c->rev);
            }
            continue;
        }
        if (proto_parse_request(line, len, &req) != PROTO_OK) {
            c->stats[STAT_requests]++;
            c->stats[STAT_client_errors]++;
            if (req.close) {
                client_abort(c, NULL, "not memcached protocol");
                break;
            }
            if (!req.noreply) {
                client_reply_line(c, req.error);
            }
            evbuffer_drain(c->in, total);
            continue;
        }
        if (!client_dispatch(c, &req, total)) {
            /* Parse the line again only once its whole value is here. */
            c->need = total + (size_t)req.bytes + 2;
            break;
        }
        c->need = 0;
        c->stats[STAT_requests]++;
        if (!c->read_paused && client_must_pause(c, 1)) {
            c->read_paused = true;
            event_del(&c->rev);
        }
    }
}

static void client_read_cb(evutil_socket_t fd, short what, void *arg)
{
    struct client *c = arg;

    (void)what;
    ssize_t n = iobuf_read(c->in, fd);
    if (n <= 0) {
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            return;
        }
        if (n < 0) {
            client_close(c, strerror(errno));
        } else {
            client_drain(c, "end of input");
        }
        return;
    }
    if (c->state == CLIENT_LINGER) {
        evbuffer_drain(c->in, evbuffer_get_length(c->in));  /* after our FIN */
        return;
    }
    c->last_rx_ms = worker_now_ms(c->pool->w);
    client_process(c);
    if (c->state != CLIENT_CLOSED) {
        client_arm_timer(c);
        if (c->moving) {
            client_mark_dirty(c);   /* it may be movable now (client_flush) */
        }
    }
}
