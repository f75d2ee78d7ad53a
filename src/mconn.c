/*
 * mconn.c — a meta-protocol (mg/ms/md/ma) connection to one memcached.
 *
 * The migrator and the fallback path use these, never the client
 * connections: meta commands report TTLs and CAS values and make stores and
 * deletes conditional, which a move needs. Commands are pipelined; replies
 * match callbacks in order. A failure fails every pending command (FAIL) and
 * the next command reconnects.
 *
 * A timeout fails the commands waiting (FAIL). An ordered connection
 * (mconn_set_ordered: the mover's) keeps its socket then: what was written
 * may still run when a stopped server resumes, and memcached runs one
 * connection's commands in order, not connections in the order they were
 * written. Kept, the socket's later commands run after the abandoned ones,
 * so a command sent on the same socket (mconn_socket) sees their effect
 * (move.c, on_doubt_look). The abandoned slots' replies are read, and
 * their status and CAS kept by opaque (mconn_late_reply). Positions alone
 * would then mismatch replies for good after one reply too few, so every
 * command carries an opaque (O<n>) its reply must
 * echo; a mismatch fails the connection (an error line carries none: it
 * is taken as the head command's, and the next mismatch fails it). The
 * socket is closed anyway past MCONN_ABANDONED_MAX abandoned slots,
 * MCONN_STALLED_OUT_MAX bytes it could not send, or MCONN_SILENT_MAX_MS
 * (3 timeouts, if longer) without a byte from the server (a host gone
 * without a reset, a name that now points elsewhere), and when idle at its
 * timeout.
 *
 * The backend is not trusted to speak the protocol: mreply_parse bounds every
 * line and value, and a reply it cannot parse, or one that comes when no
 * command waits, fails the connection (logged once) rather than being guessed
 * at. A callback may send on, or free, the connection it is called from:
 * mconn_free marks it closed and leaves the memory to the teardown queue
 * (defer.h), and `gen` tells the read loop its socket is gone.
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "clock.h"
#include "defer.h"
#include "log.h"
#include "mem.h"
#include "mconn.h"
#include "meta.h"
#include "resolve.h"

#define MREPLY_NAME(e, name) [MREPLY_##e] = name,
const char *const mreply_names[MREPLY_COUNT] = { MREPLY_CODEC(MREPLY_NAME) };
#undef MREPLY_NAME

struct mpending {
    mconn_cb cb;                /* NULL: abandoned at a timeout */
    void *arg;
    uint32_t opaque;            /* ordered: the O<n> its reply echoes */
    STAILQ_ENTRY(mpending) link;
};

struct mconn {
    struct event_base *base;
    char *host;
    uint16_t port;
    bool is_unix;
    uint32_t timeout_ms;
    struct bufferevent *bev;
    struct evdns_base *dns;     /* resolves a host name without blocking;
                                   NULL: getaddrinfo (the CLIs) */
    bool connected;
    STAILQ_HEAD(, mpending) pending;
    uint32_t npending;          /* slots, abandoned ones included */
    uint32_t nabandoned;
    bool ordered;               /* mconn_set_ordered */
    uint32_t next_opaque;
    uint64_t heard_ms;          /* the server's last byte, or the connect */
    size_t max_value;           /* the longest VA value accepted */
    uint64_t gen;               /* bumped each time the socket is closed */
    uint64_t sock;              /* the socket's id in the process, 0: none */
    struct mlate *late;         /* ordered: abandoned commands' answers
                                   (MCONN_LATE_KEEP; allocated at the first) */
    struct defer *defer;        /* frees it at the end of the turn */
    bool closed;                /* mconn_free was called: freed by `defer` */
};

/* An abandoned command's answer, at late[opaque % MCONN_LATE_KEEP]. */
struct mlate {
    uint64_t sock;              /* the socket it was sent and answered on */
    uint32_t opaque;
    bool answered;
    enum mreply_status status;
    int64_t cas;
};

STAILQ_HEAD(mpending_list, mpending);

static void mconn_destroy(void *arg)
{
    struct mconn *c = arg;

    assert(c->closed && c->npending == 0 && c->nabandoned == 0 && c->bev == NULL);
    free(c->late);
    free(c->host);
    free(c);
}

/* Close the socket and fail every pending command. */
static void mconn_fail(struct mconn *c, const char *why)
{
    struct mreply r = { .status = MREPLY_FAIL, .error = why };
    struct mpending_list failed = STAILQ_HEAD_INITIALIZER(failed);
    struct mpending *p;

    if (c->bev != NULL) {
        bufferevent_free(c->bev);
        c->bev = NULL;
    }
    c->gen++;
    c->sock = 0;
    c->connected = false;
    /* Detach the list first: a callback's new command goes to a new socket
     * and must not be failed with these. */
    STAILQ_CONCAT(&failed, &c->pending);
    c->npending = c->nabandoned = 0;
    while ((p = STAILQ_FIRST(&failed)) != NULL) {
        STAILQ_REMOVE_HEAD(&failed, link);
        if (p->cb != NULL) {
            p->cb(p->arg, &r);
        }
        free(p);
    }
    assert(!c->closed || (c->npending == 0 && c->bev == NULL));
}

/*
 * Keep what an abandoned command was answered (mconn_late_reply). Not an
 * error line: it carries no opaque, so a stray one could pass for the
 * command's answer (whose real one then fails the connection).
 */
static void mconn_note_late(struct mconn *c, uint32_t opaque, const struct mreply *r)
{
    if (r->status == MREPLY_FAIL) {
        return;
    }
    if (c->late == NULL && (c->late = calloc(MCONN_LATE_KEEP, sizeof(*c->late))) == NULL) {
        return;     /* then unknown: the mover falls back to the value */
    }
    struct mlate *l = &c->late[opaque % MCONN_LATE_KEEP];
    l->sock = c->sock;
    l->opaque = opaque;
    l->answered = true;
    l->status = r->status;
    l->cas = 0;
    mreply_flag(r, 'c', &l->cas);
}

/* The backend broke the protocol: say so once, then fail the connection. */
static void mconn_violation(struct mconn *c, const char *why)
{
    char error[160], where[300];

    if (c->is_unix) {
        snprintf(where, sizeof(where), "%s", c->host);
    } else {
        snprintf(where, sizeof(where), "%s:%u", c->host, (unsigned)c->port);
    }
    log_warn("mconn", "%s: %s; closing the connection and failing %u command(s)",
             where, why, c->npending);
    snprintf(error, sizeof(error), "bad reply from the server: %s", why);
    mconn_fail(c, error);
}

/* The meta reply kinds a moving connection expects: meta.c's table
 * (meta_parse_reply) read through this one. MN and ME are replies to
 * commands a mover never sends: not a meta reply here. */
static const int8_t mreply_of_kind[META_RSP_COUNT] = {
    [META_RSP_HD] = MREPLY_HD, [META_RSP_VA] = MREPLY_VA,
    [META_RSP_EN] = MREPLY_EN, [META_RSP_NF] = MREPLY_NF,
    [META_RSP_NS] = MREPLY_NS, [META_RSP_EX] = MREPLY_EX,
    [META_RSP_MN] = -1, [META_RSP_ME] = -1,
    [META_RSP_ERROR] = MREPLY_FAIL, [META_RSP_CLIENT_ERROR] = MREPLY_FAIL,
    [META_RSP_SERVER_ERROR] = MREPLY_FAIL,
};

static enum mreply_parse_rc parse_error(struct mreply *r, const char *why)
{
    *r = (struct mreply){ .status = MREPLY_FAIL, .error = why };
    return MREPLY_PARSE_ERROR;
}

enum mreply_parse_rc mreply_parse(const char *buf, size_t len, size_t max_value,
                                  struct mreply *r, size_t *used)
{
    size_t scan = len < MCONN_LINE_MAX + 2 ? len : MCONN_LINE_MAX + 2;
    const char *nl = memchr(buf, '\n', scan);

    *r = (struct mreply){ .status = MREPLY_FAIL };
    *used = 0;
    if (max_value > MCONN_MAX_VALUE_LIMIT) {
        max_value = MCONN_MAX_VALUE_LIMIT;
    }
    if (nl == NULL) {
        if (scan == MCONN_LINE_MAX + 2) {
            return parse_error(r, "reply line longer than 2048 bytes");
        }
        *used = len + 1;
        return MREPLY_PARSE_MORE;
    }
    if (nl == buf || nl[-1] != '\r') {
        return parse_error(r, "reply line not ended by \\r\\n");
    }
    size_t line_len = (size_t)(nl - 1 - buf), head = line_len + 2;
    for (size_t i = 0; i < line_len; i++) {
        if ((unsigned char)buf[i] < 0x20) {
            return parse_error(r, "control character in a reply line");
        }
    }
    struct meta_rsp m;
    switch (meta_parse_reply(buf, line_len, &m)) {
    case META_REPLY_OK:
        break;
    case META_REPLY_NO_LENGTH:
        return parse_error(r, "VA without a length");
    case META_REPLY_BAD_LENGTH:
        return parse_error(r, "VA length is not a number");
    default:
        return parse_error(r, "not a meta reply");
    }
    if (mreply_of_kind[m.kind] < 0) {
        return parse_error(r, "not a meta reply");
    }
    r->status = (enum mreply_status)mreply_of_kind[m.kind];
    if (r->status == MREPLY_FAIL) {
        /* the server's error for this command: the whole line */
        r->flags = buf;
        r->flags_len = line_len;
        *used = head;
        return MREPLY_PARSE_DONE;
    }
    r->flags = m.flags;
    r->flags_len = m.flags_len;
    if (r->status != MREPLY_VA) {
        *used = head;
        return MREPLY_PARSE_DONE;
    }
    if (m.vlen > max_value) {
        return parse_error(r, "VA length over the largest value accepted");
    }
    size_t vlen = (size_t)m.vlen;
    /* head <= MCONN_LINE_MAX + 2 and vlen <= MCONN_MAX_VALUE_LIMIT: no wrap */
    size_t total = head + vlen + 2;
    if (len < total) {
        *r = (struct mreply){ .status = MREPLY_FAIL };
        *used = total;
        return MREPLY_PARSE_MORE;
    }
    if (buf[total - 2] != '\r' || buf[total - 1] != '\n') {
        return parse_error(r, "VA value not followed by \\r\\n");
    }
    r->value = buf + head;
    r->value_len = vlen;
    *used = total;
    return MREPLY_PARSE_DONE;
}

static void mconn_read_cb(struct bufferevent *bev, void *arg)
{
    struct mconn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    uint64_t gen = c->gen;

    c->heard_ms = rp_clock_ms();
    while (c->gen == gen && !c->closed) {
        size_t avail = evbuffer_get_length(in);
        if (avail == 0) {
            break;
        }
        struct mpending *p = STAILQ_FIRST(&c->pending);
        if (p == NULL) {
            mconn_violation(c, "a reply when no command is waiting");
            break;
        }
        /* First the line (bounded), then, once it is all here, the value. */
        size_t want = avail < MCONN_LINE_MAX + 2 ? avail : MCONN_LINE_MAX + 2;
        const char *buf = (const char *)evbuffer_pullup(in, (ssize_t)want);
        struct mreply r;
        size_t used;
        enum mreply_parse_rc rc = MREPLY_PARSE_MORE;
        if (buf != NULL) {
            rc = mreply_parse(buf, want, c->max_value, &r, &used);
        }
        if (buf != NULL && rc == MREPLY_PARSE_MORE && used <= avail &&
            (buf = (const char *)evbuffer_pullup(in, (ssize_t)used)) != NULL) {
            rc = mreply_parse(buf, used, c->max_value, &r, &used);
        }
        if (buf == NULL) {
            mconn_fail(c, "out of memory");
            break;
        }
        if (rc == MREPLY_PARSE_MORE) {
            break;      /* the rest is on its way */
        }
        if (rc == MREPLY_PARSE_ERROR) {
            mconn_violation(c, r.error);
            break;
        }
        char error[256];
        if (r.status == MREPLY_FAIL) {
            /* ERROR, CLIENT_ERROR ..., SERVER_ERROR ...: hand the line on. */
            snprintf(error, sizeof(error), "%.*s", (int)r.flags_len, r.flags);
            r.error = error;
            r.flags = NULL;
            r.flags_len = 0;
        }
        int64_t opaque;
        if (c->ordered && r.status != MREPLY_FAIL &&
            (!mreply_flag(&r, 'O', &opaque) || opaque != (int64_t)p->opaque)) {
            mconn_violation(c, "a reply that does not echo its command's opaque");
            break;
        }
        STAILQ_REMOVE_HEAD(&c->pending, link);
        assert(c->npending > 0);
        c->npending--;
        if (p->cb == NULL) {
            c->nabandoned--;        /* it ran: nobody waits for its answer */
            mconn_note_late(c, p->opaque, &r);
        } else {
            p->cb(p->arg, &r);
        }
        free(p);
        if (c->gen != gen || c->closed) {
            break;      /* the callback failed or freed the connection */
        }
        evbuffer_drain(in, used);
    }
}

/*
 * A timeout on a connected socket: fail the commands waiting but keep the
 * socket and their slots (the head comment says why). False: the socket
 * must be closed instead (idle, or over its bounds).
 */
static bool mconn_abandon(struct mconn *c)
{
    struct mreply r = { .status = MREPLY_FAIL, .error = "timeout" };
    uint64_t gen = c->gen;
    uint32_t live = c->npending - c->nabandoned;
    /* the read timeout fires after timeout_ms of silence at the least */
    uint64_t silent_max = MCONN_SILENT_MAX_MS > 3 * (uint64_t)c->timeout_ms ?
                          MCONN_SILENT_MAX_MS : 3 * (uint64_t)c->timeout_ms;

    if (!c->ordered || !c->connected || c->npending == 0 ||
        c->npending > MCONN_ABANDONED_MAX ||
        evbuffer_get_length(bufferevent_get_output(c->bev)) > MCONN_STALLED_OUT_MAX ||
        rp_clock_ms() - c->heard_ms > silent_max) {
        return false;
    }
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);     /* a timeout disabled them */
    /* The `live` waiting now: a callback's new command goes after them
     * (not abandoned); one that fails or frees the connection has every
     * other slot failed with it. */
    for (struct mpending *p = STAILQ_FIRST(&c->pending); live > 0 && p != NULL;
         p = STAILQ_NEXT(p, link)) {
        if (p->cb == NULL) {
            continue;
        }
        mconn_cb cb = p->cb;
        p->cb = NULL;
        c->nabandoned++;
        live--;
        cb(p->arg, &r);
        if (c->gen != gen || c->closed) {
            break;
        }
    }
    return true;
}

static void mconn_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct mconn *c = arg;

    if (bev != c->bev) {
        return;
    }
    if (what & BEV_EVENT_CONNECTED) {
        c->connected = true;
        c->heard_ms = rp_clock_ms();
        return;
    }
    if ((what & BEV_EVENT_TIMEOUT) && mconn_abandon(c)) {
        return;
    }
    int dns_err = bufferevent_socket_get_dns_error(bev);
    if (dns_err != 0) {
        char why[300];
        snprintf(why, sizeof(why), "cannot resolve %s: %s", c->host,
                 resolve_strerror(dns_err));
        mconn_fail(c, why);
        return;
    }
    mconn_fail(c, what & BEV_EVENT_TIMEOUT ? "timeout" :
                  what & BEV_EVENT_EOF ? "closed by the server" :
                  strerror(EVUTIL_SOCKET_ERROR()));
}

int mconn_addr(const char *host, uint16_t port, bool is_unix,
               struct sockaddr_storage *ss, int *len)
{
    memset(ss, 0, sizeof(*ss));
    if (is_unix) {
        struct sockaddr_un *sun = (struct sockaddr_un *)ss;
        sun->sun_family = AF_UNIX;
        snprintf(sun->sun_path, sizeof(sun->sun_path), "%s", host);
        *len = sizeof(*sun);
        return 0;
    }
    *len = (int)resolve_numeric(host, port, ss);
    if (*len == 0) {
        /* A host name: resolve it (blocking: the CLIs, metadump.c). */
        struct evutil_addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res;
        char portstr[8];
        snprintf(portstr, sizeof(portstr), "%u", port);
        if (evutil_getaddrinfo(host, portstr, &hints, &res) != 0) {
            errno = EHOSTUNREACH;
            return -1;
        }
        *len = (int)res->ai_addrlen;
        memcpy(ss, res->ai_addr, res->ai_addrlen);
        evutil_freeaddrinfo(res);
    }
    return 0;
}

/* A new socket bufferevent for c, callbacks and timeouts set. */
static struct bufferevent *mconn_bev(struct mconn *c)
{
    struct bufferevent *bev = bufferevent_socket_new(c->base, -1, BEV_OPT_CLOSE_ON_FREE);

    if (bev != NULL) {
        bufferevent_setcb(bev, mconn_read_cb, NULL, mconn_event_cb, c);
        struct timeval tv = { c->timeout_ms / 1000, (c->timeout_ms % 1000) * 1000 };
        bufferevent_set_timeouts(bev, &tv, &tv);
        bufferevent_enable(bev, EV_READ | EV_WRITE);
    }
    return bev;
}

/* 0, or -1: the commands waiting fail (mconn_send). */
static int mconn_connect(struct mconn *c)
{
    static uint64_t sockets;    /* ids: mconns live on every worker thread */
    struct sockaddr_storage ss;
    int len;

    c->sock = __atomic_add_fetch(&sockets, 1, __ATOMIC_RELAXED);
    if (c->dns != NULL && !c->is_unix && resolve_numeric(c->host, c->port, &ss) == 0) {
        /* a name: resolved on the loop, connected when known
         * (mconn_event_cb reports a failure to resolve) */
        if ((c->bev = mconn_bev(c)) == NULL) {
            return -1;
        }
        if (bufferevent_socket_connect_hostname(c->bev, c->dns, AF_UNSPEC, c->host,
                                                c->port) != 0) {
            bufferevent_free(c->bev);
            c->bev = NULL;
            return -1;
        }
        /* evdns may answer at once (/etc/hosts) and a failure then runs
         * mconn_event_cb in this call: the connection is gone */
        return c->bev != NULL ? 0 : -1;
    }
    if (mconn_addr(c->host, c->port, c->is_unix, &ss, &len) != 0) {
        return -1;
    }
    if ((c->bev = mconn_bev(c)) == NULL) {
        return -1;
    }
    if (bufferevent_socket_connect(c->bev, (struct sockaddr *)&ss, len) != 0) {
        bufferevent_free(c->bev);
        c->bev = NULL;
        return -1;
    }
    return 0;
}

void mconn_set_dns(struct mconn *c, struct evdns_base *dns)
{
    c->dns = dns;
}

struct mconn *mconn_new(struct defer *defer, const char *host, uint16_t port,
                        bool is_unix, uint32_t timeout_ms)
{
    struct mconn *c = calloc(1, sizeof(*c));

    if (c == NULL || (c->host = strdup(host)) == NULL) {
        free(c);
        return NULL;
    }
    c->base = defer_base(defer);
    c->defer = defer;
    c->port = port;
    c->is_unix = is_unix;
    c->timeout_ms = timeout_ms ? timeout_ms : 5000;
    c->max_value = MCONN_MAX_VALUE_DEFAULT;
    STAILQ_INIT(&c->pending);
    return c;
}

void mconn_set_max_value(struct mconn *c, size_t bytes)
{
    c->max_value = bytes == 0 ? MCONN_MAX_VALUE_DEFAULT :
                   bytes > MCONN_MAX_VALUE_LIMIT ? MCONN_MAX_VALUE_LIMIT : bytes;
}

void mconn_free(struct mconn *c)
{
    if (c == NULL || c->closed) {
        return;     /* a callback of the mconn_free already under way */
    }
    c->closed = true;   /* from now on mconn_send refuses */
    mconn_fail(c, "shutting down");
    defer_add(c->defer, mconn_destroy, c);
}

int mconn_send(struct mconn *c, const char *line, size_t len, const void *data,
               size_t data_len, mconn_cb cb, void *arg)
{
    struct mpending *p;

    if (c->closed) {
        return -1;
    }
    if ((p = malloc(sizeof(*p))) == NULL) {
        return -1;      /* the caller fails the one move or command */
    }
    if (c->bev == NULL && mconn_connect(c) != 0) {
        free(p);
        return -1;
    }
    struct evbuffer *out = bufferevent_get_output(c->bev);
    /* Half a command in the stream would put every later reply out of
     * step: no way out but to stop (mem.h). */
    p->opaque = c->next_opaque++;
    if (evbuffer_add(out, line, len) != 0 ||
        (c->ordered && evbuffer_add_printf(out, " O%u", (unsigned)p->opaque) < 0) ||
        evbuffer_add(out, "\r\n", 2) != 0 ||
        (data != NULL && (evbuffer_add(out, data, data_len) != 0 ||
                          evbuffer_add(out, "\r\n", 2) != 0))) {
        rp_oom("a meta command", len + data_len + 4);
    }
    p->cb = cb;
    p->arg = arg;
    STAILQ_INSERT_TAIL(&c->pending, p, link);
    c->npending++;
    return 0;
}

uint32_t mconn_last_opaque(const struct mconn *c)
{
    return c->next_opaque - 1;
}

bool mconn_late_reply(const struct mconn *c, uint64_t sock, uint32_t opaque,
                      enum mreply_status *status, int64_t *cas)
{
    const struct mlate *l = c->late != NULL ? &c->late[opaque % MCONN_LATE_KEEP] : NULL;

    if (l == NULL || !l->answered || l->sock != sock || l->opaque != opaque) {
        return false;
    }
    *status = l->status;
    *cas = l->cas;
    return true;
}

uint32_t mconn_pending(const struct mconn *c)
{
    return c->npending - c->nabandoned;
}

void mconn_set_ordered(struct mconn *c)
{
    c->ordered = true;
}

uint64_t mconn_socket(const struct mconn *c)
{
    return c->sock;
}

bool mreply_flag(const struct mreply *r, char f, int64_t *value)
{
    if (r->flags == NULL) {
        return false;       /* (NULL + 0 would be undefined) */
    }
    const char *p = r->flags, *end = r->flags + r->flags_len;

    /* tokens are separated by single spaces; the flag is a token's first byte */
    while (p != NULL && p < end) {
        const char *tok_end = memchr(p, ' ', (size_t)(end - p));
        if (tok_end == NULL) {
            tok_end = end;
        }
        if (*p == f) {
            const char *d = p + 1;
            bool neg = d < tok_end && *d == '-';
            uint64_t v = 0, lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
            d += neg;
            if (d == tok_end) {
                return false;
            }
            for (; d < tok_end; d++) {
                if (*d < '0' || *d > '9' || v > (lim - (uint64_t)(*d - '0')) / 10) {
                    return false;
                }
                v = v * 10 + (uint64_t)(*d - '0');
            }
            *value = neg ? (int64_t)(0 - v) : (int64_t)v;
            return true;
        }
        p = tok_end < end ? tok_end + 1 : NULL;
    }
    return false;
}
