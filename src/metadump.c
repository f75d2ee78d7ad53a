/*
 * metadump.c — a backend's keys, listed by `lru_crawler metadump all`.
 *
 * memcached answers with one line per item, "key=<uri-encoded key> exp=<t>
 * la=<t> cas=<n> fetch=<yes|no> cls=<n> size=<n>" ended by "\n", then
 * "END\r\n"; or "BUSY ..." when its crawler runs another job, or an error
 * line when it cannot dump at all. Later versions add fields: unknown
 * "name=value" fields are skipped.
 *
 * Flow control: a consumer that cannot keep up (the index pipeline, the
 * mover's in-flight bound) pauses the dump; reading stops, the socket
 * buffers fill and memcached's crawler waits. The silence timeout only runs
 * while reading.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "mconn.h"
#include "metadump.h"
#include "resolve.h"

#define MDUMP_END_NAME(e, name) [MDUMP_##e] = name,
const char *const mdump_end_names[MDUMP_END_COUNT] = { MDUMP_END_CODEC(MDUMP_END_NAME) };
#undef MDUMP_END_NAME

#define MDUMP_COMMAND "lru_crawler metadump all\r\n"

struct mdump {
    struct event_base *base;
    struct bufferevent *bev;
    struct event *end_ev;       /* delivers on_end outside the read callback */
    struct event *resume_ev;    /* parses what was buffered while paused */
    mdump_key_cb on_key;
    mdump_end_cb on_end;
    void *arg;
    uint32_t timeout_ms;
    bool paused, ended, in_read;
    enum mdump_end how;
    char why[160];
    uint64_t keys, skipped;
    char keybuf[MDUMP_KEY_MAX + 1];
};

/* --- the parser ------------------------------------------------------------------ */

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 :
           c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* Decode a uri-encoded key into out; its length, or -1 if not a usable key. */
static int decode_key(const char *s, size_t len, char *out)
{
    size_t n = 0;

    for (size_t i = 0; i < len; i++) {
        int c = (unsigned char)s[i];
        if (c == '%') {
            int hi, lo;
            if (i + 2 >= len || (hi = hexval(s[i + 1])) < 0 ||
                (lo = hexval(s[i + 2])) < 0) {
                return -1;
            }
            c = hi * 16 + lo;
            i += 2;
        }
        if (c <= ' ' || c == 0x7f || n == MDUMP_KEY_MAX) {
            return -1;
        }
        out[n++] = (char)c;
    }
    return n == 0 ? -1 : (int)n;
}

/* A decimal number in s[0..len), optionally negative; false if not one. */
static bool parse_num(const char *s, size_t len, bool neg_ok, int64_t *out)
{
    bool neg = len > 0 && s[0] == '-';
    uint64_t v = 0;

    if (neg && !neg_ok) {
        return false;
    }
    if (len == (size_t)neg || len - neg > 19) {
        return false;
    }
    for (size_t i = neg; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return false;
        }
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v > (uint64_t)INT64_MAX) {
        return false;
    }
    *out = neg ? -(int64_t)v : (int64_t)v;
    return true;
}

static bool starts(const char *line, size_t len, const char *w)
{
    size_t n = strlen(w);

    return len >= n && memcmp(line, w, n) == 0 && (len == n || line[n] == ' ');
}

static enum mdump_parse_rc parse_fail(const char **why, size_t *why_len, const char *what)
{
    *why = what;
    *why_len = strlen(what);
    return MDUMP_PARSE_ERROR;
}

enum mdump_parse_rc mdump_parse(const char *buf, size_t len, struct mdump_item *it,
                                char *keybuf, enum mdump_end *end, const char **why,
                                size_t *why_len, size_t *used)
{
    size_t scan = len < MDUMP_LINE_MAX + 2 ? len : MDUMP_LINE_MAX + 2;
    const char *nl = memchr(buf, '\n', scan);

    *used = 0;
    *why = NULL;
    *why_len = 0;
    if (nl == NULL) {
        if (scan == MDUMP_LINE_MAX + 2) {
            return parse_fail(why, why_len, "dump line longer than 2048 bytes");
        }
        return MDUMP_PARSE_MORE;
    }
    size_t line_len = (size_t)(nl - buf);
    *used = line_len + 1;
    if (line_len > 0 && buf[line_len - 1] == '\r') {
        line_len--;
    }
    for (size_t i = 0; i < line_len; i++) {
        if ((unsigned char)buf[i] < 0x20 || (unsigned char)buf[i] == 0x7f) {
            return parse_fail(why, why_len, "control character in a dump line");
        }
    }
    static const struct { const char *word; enum mdump_end how; } ends[] = {
        { "END", MDUMP_DONE }, { "BUSY", MDUMP_BUSY }, { "ERROR", MDUMP_REFUSED },
        { "CLIENT_ERROR", MDUMP_REFUSED }, { "SERVER_ERROR", MDUMP_REFUSED },
    };
    for (size_t i = 0; i < sizeof(ends) / sizeof(ends[0]); i++) {
        if (starts(buf, line_len, ends[i].word)) {
            if (ends[i].how == MDUMP_DONE && line_len != 3) {
                return parse_fail(why, why_len, "END followed by more");
            }
            *end = ends[i].how;
            *why = buf;
            *why_len = line_len;
            return MDUMP_PARSE_END;
        }
    }
    if (line_len < 4 || memcmp(buf, "key=", 4) != 0) {
        return parse_fail(why, why_len, "not a dump line");
    }
    *it = (struct mdump_item){ .exp = -1 };
    bool have_key = false, skip = false;
    const char *p = buf, *stop = buf + line_len;
    while (p < stop) {
        const char *sp = memchr(p, ' ', (size_t)(stop - p));
        const char *tok_end = sp != NULL ? sp : stop;
        const char *eq = memchr(p, '=', (size_t)(tok_end - p));
        if (eq == NULL) {
            return parse_fail(why, why_len, "a dump field without '='");
        }
        size_t name_len = (size_t)(eq - p), vlen = (size_t)(tok_end - eq - 1);
        const char *v = eq + 1;
        int64_t num;
        if (name_len == 3 && memcmp(p, "key", 3) == 0) {
            if (have_key) {
                return parse_fail(why, why_len, "two keys in a dump line");
            }
            int n = decode_key(v, vlen, keybuf);
            if (n < 0) {
                skip = true;
                n = 0;
            }
            it->key = keybuf;
            it->len = (size_t)n;
            have_key = true;
        } else if (name_len == 3 && memcmp(p, "exp", 3) == 0) {
            if (!parse_num(v, vlen, true, &num) || num < -1) {
                return parse_fail(why, why_len, "exp is not a time");
            }
            it->exp = num;
        } else if (name_len == 3 && memcmp(p, "cas", 3) == 0) {
            if (!parse_num(v, vlen, false, &num)) {
                return parse_fail(why, why_len, "cas is not a number");
            }
            it->cas = (uint64_t)num;
        } else if (name_len == 4 && memcmp(p, "size", 4) == 0) {
            if (!parse_num(v, vlen, false, &num) || num > UINT32_MAX) {
                return parse_fail(why, why_len, "size is not a number");
            }
            it->size = (uint32_t)num;
        }
        p = sp != NULL ? sp + 1 : stop;
    }
    if (skip) {
        *why = "a key that is not a text-protocol key";
        *why_len = strlen(*why);
        return MDUMP_PARSE_SKIP;
    }
    return MDUMP_PARSE_ITEM;
}

/* --- the connection -------------------------------------------------------------- */

static void on_resume(evutil_socket_t fd, short what, void *arg);

static void on_end_ev(evutil_socket_t fd, short what, void *arg)
{
    struct mdump *d = arg;

    (void)fd;
    (void)what;
    d->on_end(d->arg, d->how, d->why);
}

/* Stop reading and report `how` from its own event. */
static void mdump_finish(struct mdump *d, enum mdump_end how, const char *why, size_t len)
{
    if (d->ended) {
        return;
    }
    d->ended = true;
    d->how = how;
    snprintf(d->why, sizeof(d->why), "%.*s", (int)len, why);
    if (d->bev != NULL) {
        bufferevent_disable(d->bev, EV_READ | EV_WRITE);
    }
    event_active(d->end_ev, EV_TIMEOUT, 0);
}

static void mdump_read(struct mdump *d)
{
    struct evbuffer *in = bufferevent_get_input(d->bev);

    d->in_read = true;
    while (!d->paused && !d->ended) {
        size_t avail = evbuffer_get_length(in);
        size_t want = avail < MDUMP_LINE_MAX + 2 ? avail : MDUMP_LINE_MAX + 2;
        if (want == 0) {
            break;
        }
        const char *buf = (const char *)evbuffer_pullup(in, (ssize_t)want);
        struct mdump_item it;
        enum mdump_end how = MDUMP_FAILED;
        const char *why;
        size_t why_len, used;
        if (buf == NULL) {
            mdump_finish(d, MDUMP_FAILED, "out of memory", 13);
            break;
        }
        enum mdump_parse_rc rc = mdump_parse(buf, want, &it, d->keybuf, &how, &why,
                                             &why_len, &used);
        if (rc == MDUMP_PARSE_MORE) {
            break;
        }
        if (rc == MDUMP_PARSE_ERROR) {
            char msg[160];
            int n = snprintf(msg, sizeof(msg), "bad reply from the server: %.*s",
                             (int)why_len, why);
            mdump_finish(d, MDUMP_FAILED, msg, (size_t)n < sizeof(msg) ? (size_t)n :
                         sizeof(msg) - 1);
            break;
        }
        if (rc == MDUMP_PARSE_END) {
            mdump_finish(d, how, why, why_len);
            break;
        }
        if (rc == MDUMP_PARSE_SKIP) {
            d->skipped++;
        } else {
            d->keys++;
            d->on_key(d->arg, &it);
        }
        evbuffer_drain(in, used);
    }
    d->in_read = false;
}

static void mdump_read_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    mdump_read(arg);
}

static void mdump_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct mdump *d = arg;
    const char *why;

    if (what & BEV_EVENT_CONNECTED) {
        return;
    }
    int dns_err = bufferevent_socket_get_dns_error(bev);
    if (dns_err != 0) {
        char msg[160];
        int n = snprintf(msg, sizeof(msg), "cannot resolve the server's name: %s",
                         resolve_strerror(dns_err));
        mdump_finish(d, MDUMP_FAILED, msg, n < (int)sizeof(msg) ? (size_t)n : sizeof(msg) - 1);
        return;
    }
    why = what & BEV_EVENT_TIMEOUT ? "timeout" :
          what & BEV_EVENT_EOF ? "closed by the server" :
          strerror(EVUTIL_SOCKET_ERROR());
    mdump_finish(d, MDUMP_FAILED, why, strlen(why));
}

struct mdump *mdump_start(struct event_base *base, struct evdns_base *dns,
                          const char *host, uint16_t port,
                          bool is_unix, uint32_t timeout_ms, mdump_key_cb on_key,
                          mdump_end_cb on_end, void *arg)
{
    struct mdump *d = calloc(1, sizeof(*d));
    struct sockaddr_storage ss;
    int len;

    if (d == NULL) {
        return NULL;
    }
    d->base = base;
    d->on_key = on_key;
    d->on_end = on_end;
    d->arg = arg;
    d->timeout_ms = timeout_ms ? timeout_ms : 5000;
    d->end_ev = event_new(base, -1, 0, on_end_ev, d);
    d->resume_ev = event_new(base, -1, 0, on_resume, d);
    d->bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (d->end_ev == NULL || d->resume_ev == NULL || d->bev == NULL) {
        mdump_free(d);
        return NULL;
    }
    bufferevent_setcb(d->bev, mdump_read_cb, NULL, mdump_event_cb, d);
    struct timeval tv = { d->timeout_ms / 1000, (d->timeout_ms % 1000) * 1000 };
    bufferevent_set_timeouts(d->bev, &tv, &tv);
    bufferevent_enable(d->bev, EV_READ | EV_WRITE);
    if (dns != NULL && !is_unix && resolve_numeric(host, port, &ss) == 0) {
        /* a name: resolved on the loop; a failure ends the dump through
         * mdump_event_cb */
        bufferevent_write(d->bev, MDUMP_COMMAND, sizeof(MDUMP_COMMAND) - 1);
        if (bufferevent_socket_connect_hostname(d->bev, dns, AF_UNSPEC, host, port) != 0) {
            const char *why = "cannot start resolving the name";
            mdump_finish(d, MDUMP_FAILED, why, strlen(why));
        }
        return d;
    }
    if (mconn_addr(host, port, is_unix, &ss, &len) != 0) {
        const char *why = strerror(errno);
        mdump_finish(d, MDUMP_FAILED, why, strlen(why));
        return d;
    }
    if (bufferevent_socket_connect(d->bev, (struct sockaddr *)&ss, len) != 0) {
        const char *why = strerror(EVUTIL_SOCKET_ERROR());
        mdump_finish(d, MDUMP_FAILED, why, strlen(why));
        return d;
    }
    bufferevent_write(d->bev, MDUMP_COMMAND, sizeof(MDUMP_COMMAND) - 1);
    return d;
}

void mdump_pause(struct mdump *d)
{
    if (d->paused) {
        return;
    }
    d->paused = true;
    if (d->bev != NULL && !d->ended) {
        bufferevent_disable(d->bev, EV_READ);
    }
}

void mdump_resume(struct mdump *d)
{
    if (!d->paused) {
        return;
    }
    d->paused = false;
    if (d->ended) {
        return;
    }
    bufferevent_enable(d->bev, EV_READ);
    /* Lines already buffered are not announced again by the socket: parse
     * them from an event of their own, not inside the caller. */
    if (!d->in_read) {
        event_active(d->resume_ev, EV_TIMEOUT, 0);
    }
}

static void on_resume(evutil_socket_t fd, short what, void *arg)
{
    struct mdump *d = arg;

    (void)fd;
    (void)what;
    if (!d->paused && !d->ended) {
        mdump_read(d);
    }
}

bool mdump_paused(const struct mdump *d)
{
    return d->paused;
}

uint64_t mdump_keys(const struct mdump *d)
{
    return d->keys;
}

uint64_t mdump_skipped(const struct mdump *d)
{
    return d->skipped;
}

void mdump_free(struct mdump *d)
{
    if (d == NULL) {
        return;
    }
    if (d->bev != NULL) {
        bufferevent_free(d->bev);
    }
    if (d->end_ev != NULL) {
        event_free(d->end_ev);
    }
    if (d->resume_ev != NULL) {
        event_free(d->resume_ev);
    }
    free(d);
}
