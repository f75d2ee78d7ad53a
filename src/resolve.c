/*
 * resolve.c — evdns behind a small asynchronous interface (resolve.h).
 *
 * evdns may answer inside evdns_getaddrinfo (a numeric host, an /etc/hosts
 * entry) and answers a cancel later, from the loop, with EVUTIL_EAI_CANCEL.
 * So a request has two sides that end separately: evdns's (until its
 * callback has run: evdns_done) and the starter's (until its callback ran
 * or it cancelled: cb == NULL). The request is freed when both are over.
 * The starter's callback always runs from the request's own event, so
 * never inside resolve_start nor inside evdns.
 */
#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <event2/util.h>

#include "config.h"
#include "log.h"
#include "resolve.h"

/* evdns's own retry policy, below our deadline: a lost UDP answer is asked
 * again once before the request's timeout ends it. A resolv.conf "options"
 * line overrides these. */
#define RESOLVE_EVDNS_TIMEOUT "2"
#define RESOLVE_EVDNS_ATTEMPTS "2"

struct resolve_req {
    struct resolver *r;
    TAILQ_ENTRY(resolve_req) link;
    struct evdns_getaddrinfo_request *gai;  /* while evdns works */
    bool evdns_done;                        /* evdns's callback has run */
    bool cancelling;                        /* inside evdns_getaddrinfo_cancel */
    resolve_cb cb;                          /* NULL: the starter is done */
    void *arg;
    struct event ev;                        /* the deadline, then delivery */
    bool have_result;
    int rc;                                 /* EVUTIL_EAI_*, 0: ss holds it */
    struct sockaddr_storage ss;
    socklen_t len;
};

#define RESOLVE_QUIESCE_TURNS 16

struct resolver {
    struct event_base *base;
    struct evdns_base *dns;
    TAILQ_HEAD(, resolve_req) reqs;
    unsigned n;
};

/* evdns still holds a request of ours. */
static bool resolver_evdns_busy(const struct resolver *r)
{
    const struct resolve_req *q;

    TAILQ_FOREACH(q, &r->reqs, link) {
        if (!q->evdns_done) {
            return true;
        }
    }
    return false;
}

static void req_release(struct resolve_req *q)
{
    if (!q->evdns_done || q->cb != NULL || q->cancelling) {
        return;
    }
    event_del(&q->ev);
    TAILQ_REMOVE(&q->r->reqs, q, link);
    q->r->n--;
    free(q);
}

/* Cancel evdns's side once. libevent answers a cancel from the loop; were
 * it to answer inside the call, q must outlive it all the same. */
static void req_cancel_evdns(struct resolve_req *q)
{
    struct evdns_getaddrinfo_request *gai = q->gai;

    if (gai != NULL) {
        q->gai = NULL;
        q->cancelling = true;
        evdns_getaddrinfo_cancel(gai);
        q->cancelling = false;
    }
}

/*
 * The address to use: the first IPv4 one, else the first IPv6 one. evdns
 * asks for both at once and lists them in the order the answers came;
 * preferring IPv4 (as hiredis does) makes a name with both connect to the
 * same address every time.
 */
static const struct evutil_addrinfo *req_pick(const struct evutil_addrinfo *res)
{
    const struct evutil_addrinfo *v6 = NULL;

    for (const struct evutil_addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        if (ai->ai_addrlen > sizeof(struct sockaddr_storage)) {
            continue;
        }
        if (ai->ai_family == AF_INET) {
            return ai;
        }
        if (ai->ai_family == AF_INET6 && v6 == NULL) {
            v6 = ai;
        }
    }
    return v6;
}

/* evdns's answer (maybe inside evdns_getaddrinfo): keep it, deliver it
 * from the request's event. */
static void req_gai_cb(int rc, struct evutil_addrinfo *res, void *arg)
{
    struct resolve_req *q = arg;

    q->evdns_done = true;
    q->gai = NULL;
    if (q->cb != NULL && !q->have_result) {
        q->have_result = true;
        q->rc = rc;
        if (rc == 0) {
            const struct evutil_addrinfo *ai = req_pick(res);
            q->rc = ai != NULL ? 0 : EVUTIL_EAI_NODATA;
            if (ai != NULL) {
                memcpy(&q->ss, ai->ai_addr, ai->ai_addrlen);
                q->len = (socklen_t)ai->ai_addrlen;
            }
        }
        event_active(&q->ev, EV_TIMEOUT, 1);
    }
    if (res != NULL) {
        evutil_freeaddrinfo(res);
    }
    req_release(q);
}

/* What an operator reads for evdns's result codes (libevent's own strings
 * are the BSD ones, "nodename nor servname provided, or not known"). */
static const struct { int rc; const char *text; } resolve_errors[] = {
    { EVUTIL_EAI_NONAME, "no such name (NXDOMAIN)" },
    { EVUTIL_EAI_NODATA, "the name has no address" },
    { EVUTIL_EAI_AGAIN, "temporary failure: no name server answered" },
    { EVUTIL_EAI_FAIL, "the name server failed (SERVFAIL or refused)" },
    { EVUTIL_EAI_MEMORY, "out of memory" },
};

const char *resolve_strerror(int rc)
{
    for (size_t i = 0; i < sizeof(resolve_errors) / sizeof(resolve_errors[0]); i++) {
        if (resolve_errors[i].rc == rc) {
            return resolve_errors[i].text;
        }
    }
    return evutil_gai_strerror(rc);
}

/* The deadline passed, or the answer is kept: tell the starter. */
static void req_event_cb(evutil_socket_t fd, short what, void *arg)
{
    struct resolve_req *q = arg;
    resolve_cb cb = q->cb;

    (void)fd, (void)what;
    if (cb == NULL) {
        return;
    }
    q->cb = NULL;
    if (!q->have_result) {
        /* evdns answers the cancel later; the request goes then */
        req_cancel_evdns(q);
        cb(q->arg, NULL, 0, "timed out");
    } else if (q->rc == 0) {
        cb(q->arg, (const struct sockaddr *)&q->ss, q->len, NULL);
    } else {
        cb(q->arg, NULL, 0, resolve_strerror(q->rc));
    }
    req_release(q);
}

struct resolve_req *resolve_start(struct resolver *r, const char *host, uint16_t port,
                                  uint32_t timeout_ms, resolve_cb cb, void *arg)
{
    struct resolve_req *q = calloc(1, sizeof(*q));
    struct evutil_addrinfo hints = { .ai_family = AF_UNSPEC,
        .ai_socktype = SOCK_STREAM, .ai_protocol = IPPROTO_TCP,
        .ai_flags = EVUTIL_AI_NUMERICSERV };
    char portstr[8];

    if (q == NULL) {
        return NULL;
    }
    if (timeout_ms == 0) {
        timeout_ms = RESOLVE_TIMEOUT_MS;
    }
    q->r = r;
    q->cb = cb;
    q->arg = arg;
    evtimer_assign(&q->ev, r->base, req_event_cb, q);
    TAILQ_INSERT_TAIL(&r->reqs, q, link);
    r->n++;
    struct timeval tv = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
    evtimer_add(&q->ev, &tv);
    snprintf(portstr, sizeof(portstr), "%u", port);
    struct evdns_getaddrinfo_request *gai =
        evdns_getaddrinfo(r->dns, host, portstr, &hints, req_gai_cb, q);
    if (!q->evdns_done) {
        q->gai = gai;
    }
    return q;
}

void resolve_cancel(struct resolve_req *q)
{
    assert(q->cb != NULL);
    q->cb = NULL;
    req_cancel_evdns(q);
    req_release(q);
}

socklen_t resolve_numeric(const char *host, uint16_t port, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *in = (struct sockaddr_in *)ss;
    if (inet_pton(AF_INET, host, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
        in->sin_port = htons(port);
        return sizeof(*in);
    }
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(port);
        return sizeof(*in6);
    }
    memset(ss, 0, sizeof(*ss));
    return 0;
}

struct resolver *resolver_new(struct event_base *base, const char *conf_path,
                              char *err, size_t errlen)
{
    struct resolver *r = calloc(1, sizeof(*r));
    const char *path = conf_path;

    if (r == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (path == NULL) {
        path = getenv("RINGPROXY_RESOLV_CONF");
    }
    bool chosen = path != NULL && *path != '\0';   /* an error, not a warning */
    if (!chosen) {
        path = "/etc/resolv.conf";
    }
    r->base = base;
    TAILQ_INIT(&r->reqs);
    /* No request pending: the loop may end (the CLIs' loops do). */
    r->dns = evdns_base_new(base, EVDNS_BASE_DISABLE_WHEN_INACTIVE);
    if (r->dns == NULL) {
        snprintf(err, errlen, "out of memory creating the DNS resolver");
        free(r);
        return NULL;
    }
    evdns_base_set_option(r->dns, "timeout:", RESOLVE_EVDNS_TIMEOUT);
    evdns_base_set_option(r->dns, "attempts:", RESOLVE_EVDNS_ATTEMPTS);
    /* evdns_base_resolv_conf_parse: 0 ok, 1 cannot open, 2 cannot stat,
     * 3 too large, 4 out of memory, 5 short read, 6 no name server in it
     * (evdns then adds 127.0.0.1). It loads /etc/hosts in every case. */
    int rc = evdns_base_resolv_conf_parse(r->dns, DNS_OPTIONS_ALL, path);
    if (rc != 0 && rc != 6) {
        if (chosen) {
            snprintf(err, errlen, "cannot read %s (evdns error %d)", path, rc);
            resolver_free(r);
            return NULL;
        }
        log_warn("resolve", "cannot read %s (evdns error %d): names are asked "
                 "of 127.0.0.1", path, rc);
    } else if (rc == 6) {
        log_warn("resolve", "%s names no name server: names are asked of "
                 "127.0.0.1", path);
    }
    return r;
}

void resolver_quiesce(struct resolver *r)
{
    struct resolve_req *q;

    if (r == NULL) {
        return;
    }
    TAILQ_FOREACH(q, &r->reqs, link) {
        event_del(&q->ev);          /* its starter hears nothing more */
        q->have_result = true;      /* evdns's answer to the cancel is dropped */
        req_cancel_evdns(q);
    }
    /* evdns answers each cancel from a deferred callback: a few loop turns
     * (no waiting: the answers are already queued). */
    for (int turn = 0; turn < RESOLVE_QUIESCE_TURNS && resolver_evdns_busy(r); turn++) {
        event_base_loop(r->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    }
}

void resolver_free(struct resolver *r)
{
    struct resolve_req *q;

    if (r == NULL) {
        return;
    }
    if (resolver_evdns_busy(r)) {
        log_warn("resolve", "%u DNS requests still in flight at exit", r->n);
    }
    while ((q = TAILQ_FIRST(&r->reqs)) != NULL) {
        q->cb = NULL;
        q->evdns_done = true;
        req_release(q);
    }
    evdns_base_free(r->dns, 0);
    free(r);
}

struct evdns_base *resolver_evdns(struct resolver *r)
{
    return r->dns;
}

unsigned resolver_pending(const struct resolver *r)
{
    return r->n;
}

/* resolve_pin's request: its result, on its private loop. */
struct resolve_wait {
    bool done;
    struct sockaddr_storage ss;
    socklen_t len;
    char why[128];
};

static void resolve_wait_cb(void *arg, const struct sockaddr *sa, socklen_t len,
                            const char *err)
{
    struct resolve_wait *rw = arg;

    rw->done = true;
    if (sa != NULL) {
        memcpy(&rw->ss, sa, len);
        rw->len = len;
    } else {
        snprintf(rw->why, sizeof(rw->why), "%s", err);
    }
}

int resolve_pin(struct conf_addr *a, uint32_t timeout_ms, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    struct resolve_wait rw = { .done = false };
    char host[INET6_ADDRSTRLEN];

    if (a->is_unix || resolve_numeric(a->host, a->port, &ss) != 0) {
        return 0;
    }
    struct event_base *base = event_base_new();
    struct resolver *r = base != NULL ? resolver_new(base, NULL, err, errlen) : NULL;
    if (r == NULL || resolve_start(r, a->host, a->port, timeout_ms, resolve_wait_cb,
                                   &rw) == NULL) {
        if (base == NULL || r != NULL) {
            snprintf(err, errlen, "out of memory resolving %s", a->host);
        }
        resolver_free(r);
        if (base != NULL) {
            event_base_free(base);
        }
        return -1;
    }
    while (!rw.done) {
        event_base_loop(base, EVLOOP_ONCE);     /* the request's deadline ends it */
    }
    resolver_quiesce(r);
    resolver_free(r);
    event_base_free(base);
    if (rw.len == 0) {
        snprintf(err, errlen, "cannot resolve %s: %s", a->host, rw.why);
        return -1;
    }
    const void *in = rw.ss.ss_family == AF_INET ?
        (const void *)&((struct sockaddr_in *)&rw.ss)->sin_addr :
        (const void *)&((struct sockaddr_in6 *)&rw.ss)->sin6_addr;
    char *pinned = NULL;
    if (inet_ntop(rw.ss.ss_family, in, host, sizeof(host)) == NULL ||
        (pinned = strdup(host)) == NULL) {
        snprintf(err, errlen, "out of memory resolving %s", a->host);
        return -1;
    }
    free(a->host);
    a->host = pinned;
    return 0;
}
