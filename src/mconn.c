/*
 * mconn.c — a meta-protocol (mg/ms/md/ma) connection to one memcached.
 *
 * The migrator and the fallback path use these, never the client
 * connections: meta commands report TTLs and CAS values and make stores and
 * deletes conditional, which a move needs. Commands are pipelined; replies
 * match callbacks in order. A failure fails every pending command (FAIL) and
 * the next command reconnects.
 */
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

#include "mconn.h"

#define MREPLY_NAME(e, name) [MREPLY_##e] = name,
const char *const mreply_names[MREPLY_COUNT] = { MREPLY_CODEC(MREPLY_NAME) };
#undef MREPLY_NAME

struct mpending {
    mconn_cb cb;
    void *arg;
    STAILQ_ENTRY(mpending) link;
};

struct mconn {
    struct event_base *base;
    char *host;
    uint16_t port;
    bool is_unix;
    uint32_t timeout_ms;
    struct bufferevent *bev;
    bool connected;
    STAILQ_HEAD(, mpending) pending;
    uint32_t npending;
};

static void mconn_fail(struct mconn *c, const char *why)
{
    struct mreply r = { .status = MREPLY_FAIL, .error = why };
    struct mpending *p;

    if (c->bev != NULL) {
        bufferevent_free(c->bev);
        c->bev = NULL;
    }
    c->connected = false;
    while ((p = STAILQ_FIRST(&c->pending)) != NULL) {
        STAILQ_REMOVE_HEAD(&c->pending, link);
        c->npending--;
        p->cb(p->arg, &r);
        free(p);
    }
}

static bool status_of(const char *line, size_t len, enum mreply_status *st)
{
    static const struct { const char *word; enum mreply_status st; } words[] = {
        { "VA", MREPLY_VA }, { "HD", MREPLY_HD }, { "EN", MREPLY_EN },
        { "NS", MREPLY_NS }, { "EX", MREPLY_EX }, { "NF", MREPLY_NF },
    };
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
        if (len >= 2 && memcmp(line, words[i].word, 2) == 0 &&
            (len == 2 || line[2] == ' ')) {
            *st = words[i].st;
            return true;
        }
    }
    return false;
}

static void mconn_read_cb(struct bufferevent *bev, void *arg)
{
    struct mconn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);

    for (;;) {
        size_t eol;
        struct evbuffer_ptr at = evbuffer_search_eol(in, NULL, &eol, EVBUFFER_EOL_CRLF);
        if (at.pos < 0) {
            return;
        }
        struct mpending *p = STAILQ_FIRST(&c->pending);
        if (p == NULL) {
            mconn_fail(c, "reply without a command");
            return;
        }
        size_t len = (size_t)at.pos;
        char *line = (char *)evbuffer_pullup(in, (ssize_t)(len + eol));
        struct mreply r = { .status = MREPLY_FAIL };
        size_t total = len + eol;
        char error[256];
        if (!status_of(line, len, &r.status)) {
            /* ERROR, CLIENT_ERROR ..., SERVER_ERROR ...: hand the line on. */
            snprintf(error, sizeof(error), "%.*s", (int)len, line);
            r.status = MREPLY_FAIL;
            r.error = error;
        } else if (len > 3) {
            r.flags = line + 3;
            r.flags_len = len - 3;
        }
        if (r.status == MREPLY_VA) {
            char *end;
            unsigned long long vlen = strtoull(line + 3, &end, 10);
            r.flags = *end == ' ' ? end + 1 : end;
            r.flags_len = (size_t)(line + len - r.flags);
            if (evbuffer_get_length(in) < total + vlen + 2) {
                return;     /* the value is still on its way */
            }
            size_t flags_off = (size_t)(r.flags - line);
            line = (char *)evbuffer_pullup(in, (ssize_t)(total + vlen + 2));
            r.flags = line + flags_off;
            r.value = line + total;
            r.value_len = (size_t)vlen;
            total += (size_t)vlen + 2;
        }
        STAILQ_REMOVE_HEAD(&c->pending, link);
        c->npending--;
        p->cb(p->arg, &r);
        free(p);
        if (c->bev == NULL) {
            return;     /* the callback failed the connection */
        }
        evbuffer_drain(in, total);
    }
}

static void mconn_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct mconn *c = arg;

    (void)bev;
    if (what & BEV_EVENT_CONNECTED) {
        c->connected = true;
        return;
    }
    mconn_fail(c, what & BEV_EVENT_TIMEOUT ? "timeout" :
                  what & BEV_EVENT_EOF ? "closed by the server" :
                  strerror(EVUTIL_SOCKET_ERROR()));
}

static int mconn_connect(struct mconn *c)
{
    struct sockaddr_storage ss;
    int len;

    memset(&ss, 0, sizeof(ss));
    if (c->is_unix) {
        struct sockaddr_un *sun = (struct sockaddr_un *)&ss;
        sun->sun_family = AF_UNIX;
        snprintf(sun->sun_path, sizeof(sun->sun_path), "%s", c->host);
        len = sizeof(*sun);
    } else {
        char addr[300];
        len = sizeof(ss);
        snprintf(addr, sizeof(addr), "%s:%u", c->host, c->port);
        if (evutil_parse_sockaddr_port(addr, (struct sockaddr *)&ss, &len) != 0) {
            /* A host name: resolve it (blocking, as backends are resolved). */
            struct evutil_addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res;
            char port[8];
            snprintf(port, sizeof(port), "%u", c->port);
            if (evutil_getaddrinfo(c->host, port, &hints, &res) != 0) {
                return -EHOSTUNREACH;
            }
            len = (int)res->ai_addrlen;
            memcpy(&ss, res->ai_addr, res->ai_addrlen);
            evutil_freeaddrinfo(res);
        }
    }
    c->bev = bufferevent_socket_new(c->base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (c->bev == NULL) {
        return -ENOMEM;
    }
    bufferevent_setcb(c->bev, mconn_read_cb, NULL, mconn_event_cb, c);
    struct timeval tv = { c->timeout_ms / 1000, (c->timeout_ms % 1000) * 1000 };
    bufferevent_set_timeouts(c->bev, &tv, &tv);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    if (bufferevent_socket_connect(c->bev, (struct sockaddr *)&ss, len) != 0) {
        bufferevent_free(c->bev);
        c->bev = NULL;
        return -ECONNREFUSED;
    }
    return 0;
}

struct mconn *mconn_new(struct event_base *base, const char *host, uint16_t port,
                        bool is_unix, uint32_t timeout_ms)
{
    struct mconn *c = calloc(1, sizeof(*c));

    if (c == NULL || (c->host = strdup(host)) == NULL) {
        free(c);
        return NULL;
    }
    c->base = base;
    c->port = port;
    c->is_unix = is_unix;
    c->timeout_ms = timeout_ms ? timeout_ms : 5000;
    STAILQ_INIT(&c->pending);
    return c;
}

void mconn_free(struct mconn *c)
{
    if (c == NULL) {
        return;
    }
    mconn_fail(c, "shutting down");
    free(c->host);
    free(c);
}

int mconn_send(struct mconn *c, const char *line, size_t len, const void *data,
               size_t data_len, mconn_cb cb, void *arg)
{
    struct mpending *p = malloc(sizeof(*p));
    int rc;

    if (p == NULL) {
        return -ENOMEM;
    }
    if (c->bev == NULL && (rc = mconn_connect(c)) != 0) {
        free(p);
        return rc;
    }
    struct evbuffer *out = bufferevent_get_output(c->bev);
    evbuffer_add(out, line, len);
    evbuffer_add(out, "\r\n", 2);
    if (data != NULL) {
        evbuffer_add(out, data, data_len);
        evbuffer_add(out, "\r\n", 2);
    }
    p->cb = cb;
    p->arg = arg;
    STAILQ_INSERT_TAIL(&c->pending, p, link);
    c->npending++;
    return 0;
}

uint32_t mconn_pending(const struct mconn *c)
{
    return c->npending;
}

bool mreply_flag(const struct mreply *r, char f, int64_t *value)
{
    const char *p = r->flags, *end = r->flags + r->flags_len;

    while (p != NULL && p < end) {
        if (*p == f) {
            *value = strtoll(p + 1, NULL, 10);
            return true;
        }
        p = memchr(p, ' ', (size_t)(end - p));
        p = p ? p + 1 : NULL;
    }
    return false;
}
