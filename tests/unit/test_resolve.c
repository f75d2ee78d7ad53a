/*
 * test_resolve.c — the asynchronous resolver against a real DNS server:
 * libevent's evdns server on a UDP port of this process, on the same loop,
 * answering A and AAAA records, NXDOMAIN, or nothing at all.
 */
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <event2/dns.h>
#include <event2/dns_struct.h>
#include <event2/event.h>
#include <event2/util.h>

#include "resolve.h"
#include "check_run.h"

struct dns_server {
    struct evdns_server_port *port;
    evutil_socket_t fd;
    uint16_t portnum;
    char v4[32];                /* what "v4.test" answers */
    bool silent;                /* answer nothing */
    struct evdns_server_request *held[16];
    int nheld;
    int queries;
};

static void dns_answer(struct evdns_server_request *req, void *arg)
{
    struct dns_server *s = arg;
    int rcode = 0;

    s->queries++;
    if (s->silent) {
        if (s->nheld < 16) {
            s->held[s->nheld++] = req;
        } else {
            evdns_server_request_drop(req);
        }
        return;
    }
    for (int i = 0; i < req->nquestions; i++) {
        const struct evdns_server_question *qu = req->questions[i];
        if (strcasecmp(qu->name, "v4.test") == 0 && qu->type == EVDNS_TYPE_A) {
            struct in_addr a;
            ck_assert_int_eq(inet_pton(AF_INET, s->v4, &a), 1);
            evdns_server_request_add_a_reply(req, qu->name, 1, &a, 10);
        } else if (strcasecmp(qu->name, "v6.test") == 0 && qu->type == EVDNS_TYPE_AAAA) {
            struct in6_addr a;
            ck_assert_int_eq(inet_pton(AF_INET6, "fd00::7", &a), 1);
            evdns_server_request_add_aaaa_reply(req, qu->name, 1, &a, 10);
        } else if (strcasecmp(qu->name, "both.test") == 0) {
            struct in_addr a4;
            struct in6_addr a6;
            ck_assert_int_eq(inet_pton(AF_INET, "10.5.5.5", &a4), 1);
            ck_assert_int_eq(inet_pton(AF_INET6, "fd00::5", &a6), 1);
            if (qu->type == EVDNS_TYPE_A) {
                evdns_server_request_add_a_reply(req, qu->name, 1, &a4, 10);
            } else if (qu->type == EVDNS_TYPE_AAAA) {
                evdns_server_request_add_aaaa_reply(req, qu->name, 1, &a6, 10);
            }
        } else if (strcasecmp(qu->name, "v4.test") != 0 && strcasecmp(qu->name, "v6.test") != 0) {
            rcode = DNS_ERR_NOTEXIST;
        }
    }
    evdns_server_request_respond(req, rcode);
}

static struct dns_server *dns_server_start(struct event_base *base)
{
    struct dns_server *s = calloc(1, sizeof(*s));
    struct sockaddr_in sin = { .sin_family = AF_INET };
    socklen_t len = sizeof(sin);

    ck_assert_ptr_nonnull(s);
    strcpy(s->v4, "10.1.2.3");
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    s->fd = socket(AF_INET, SOCK_DGRAM, 0);
    ck_assert_int_ge(s->fd, 0);
    ck_assert_int_eq(bind(s->fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    ck_assert_int_eq(getsockname(s->fd, (struct sockaddr *)&sin, &len), 0);
    s->portnum = ntohs(sin.sin_port);
    evutil_make_socket_nonblocking(s->fd);
    s->port = evdns_add_server_port_with_base(base, s->fd, 0, dns_answer, s);
    ck_assert_ptr_nonnull(s->port);
    return s;
}

static void dns_server_stop(struct dns_server *s)
{
    for (int i = 0; i < s->nheld; i++) {
        evdns_server_request_drop(s->held[i]);
    }
    evdns_close_server_port(s->port);
    close(s->fd);
    free(s);
}

/* A resolv.conf naming only s, as the proxy reads RINGPROXY_RESOLV_CONF. */
static struct resolver *resolver_on(struct event_base *base, struct dns_server *s,
                                    char *path)
{
    char err[256] = "";

    strcpy(path, "/tmp/rp_resolv_XXXXXX");
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    FILE *f = fdopen(fd, "w");
    fprintf(f, "nameserver 127.0.0.1:%u\noptions timeout:30 attempts:1\n", s->portnum);
    fclose(f);
    struct resolver *r = resolver_new(base, path, err, sizeof(err));
    ck_assert_msg(r != NULL, "%s", err);
    return r;
}

struct result {
    int calls;
    bool done;
    struct sockaddr_storage ss;
    socklen_t len;
    char err[128];
};

static void on_result(void *arg, const struct sockaddr *sa, socklen_t len, const char *err)
{
    struct result *res = arg;

    res->calls++;
    res->done = true;
    if (sa != NULL) {
        memcpy(&res->ss, sa, len);
        res->len = len;
    } else {
        snprintf(res->err, sizeof(res->err), "%s", err);
    }
}

static void run_until(struct event_base *base, const bool *done)
{
    for (int i = 0; !*done && i < 100000; i++) {
        event_base_loop(base, EVLOOP_ONCE);
    }
    ck_assert(*done);
}

static const char *addr_text(const struct result *res, char *buf, size_t n)
{
    char host[INET6_ADDRSTRLEN];

    if (res->ss.ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)&res->ss;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
        snprintf(buf, n, "%s:%u", host, ntohs(in->sin_port));
    } else {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&res->ss;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        snprintf(buf, n, "[%s]:%u", host, ntohs(in6->sin6_port));
    }
    return buf;
}

/* What each test set up, freed in the order the resolver needs. */
static void teardown(struct event_base *base, struct dns_server *s, struct resolver *r,
                     const char *path)
{
    resolver_free(r);
    dns_server_stop(s);
    unlink(path);
    event_base_free(base);
}

/* evdns answers a cancel from the loop: run it until every request went. */
static void drain_cancels(struct event_base *base, struct resolver *r)
{
    for (int i = 0; resolver_pending(r) > 0 && i < 1000; i++) {
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    }
}

START_TEST(test_numeric)
{
    struct sockaddr_storage ss;

    ck_assert_uint_eq(resolve_numeric("127.0.0.1", 11211, &ss), sizeof(struct sockaddr_in));
    ck_assert_int_eq(ss.ss_family, AF_INET);
    ck_assert_uint_eq(resolve_numeric("::1", 11211, &ss), sizeof(struct sockaddr_in6));
    ck_assert_int_eq(ss.ss_family, AF_INET6);
    ck_assert_uint_eq(ntohs(((struct sockaddr_in6 *)&ss)->sin6_port), 11211);
    ck_assert_uint_eq(resolve_numeric("localhost", 1, &ss), 0);
    ck_assert_uint_eq(resolve_numeric("[::1]", 1, &ss), 0);
    ck_assert_uint_eq(resolve_numeric("1.2.3", 1, &ss), 0);
}
END_TEST

/* A name, an IPv6-only name, and a name that moved: asked again each time. */
START_TEST(test_answers_and_follows_a_change)
{
    struct event_base *base = event_base_new();
    struct dns_server *s = dns_server_start(base);
    char path[64], buf[80];
    struct resolver *r = resolver_on(base, s, path);
    struct result a = { 0 }, b = { 0 }, c = { 0 };

    ck_assert_ptr_nonnull(resolve_start(r, "v4.test", 11211, 0, on_result, &a));
    ck_assert_int_eq(a.calls, 0);               /* never inside resolve_start */
    run_until(base, &a.done);
    ck_assert_msg(a.len > 0, "%s", a.err);
    ck_assert_str_eq(addr_text(&a, buf, sizeof(buf)), "10.1.2.3:11211");

    ck_assert_ptr_nonnull(resolve_start(r, "v6.test", 11212, 0, on_result, &b));
    run_until(base, &b.done);
    ck_assert_msg(b.len > 0, "%s", b.err);
    ck_assert_str_eq(addr_text(&b, buf, sizeof(buf)), "[fd00::7]:11212");

    strcpy(s->v4, "10.9.9.9");
    int before = s->queries;
    ck_assert_ptr_nonnull(resolve_start(r, "v4.test", 11211, 0, on_result, &c));
    run_until(base, &c.done);
    ck_assert_int_gt(s->queries, before);       /* asked again, not cached */
    ck_assert_str_eq(addr_text(&c, buf, sizeof(buf)), "10.9.9.9:11211");
    ck_assert_int_eq(a.calls + b.calls + c.calls, 3);

    /* both families: IPv4, whichever answer came first */
    struct result d = { 0 };
    ck_assert_ptr_nonnull(resolve_start(r, "both.test", 11211, 0, on_result, &d));
    run_until(base, &d.done);
    ck_assert_str_eq(addr_text(&d, buf, sizeof(buf)), "10.5.5.5:11211");

    ck_assert_uint_eq(resolver_pending(r), 0);
    teardown(base, s, r, path);
}
END_TEST

START_TEST(test_nxdomain_is_said)
{
    struct event_base *base = event_base_new();
    struct dns_server *s = dns_server_start(base);
    char path[64];
    struct resolver *r = resolver_on(base, s, path);
    struct result a = { 0 };

    ck_assert_ptr_nonnull(resolve_start(r, "nothing.invalid", 11211, 0, on_result, &a));
    run_until(base, &a.done);
    ck_assert_uint_eq(a.len, 0);
    ck_assert_str_eq(a.err, "no such name (NXDOMAIN)");
    teardown(base, s, r, path);
}
END_TEST

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct result *t = arg;

    (void)fd, (void)what;
    t->done = true;
}

/* A server that never answers: the loop goes on serving other events, and
 * the request ends at its deadline, saying so. */
START_TEST(test_silent_server_times_out_without_blocking)
{
    struct event_base *base = event_base_new();
    struct dns_server *s = dns_server_start(base);
    char path[64];
    struct resolver *r = resolver_on(base, s, path);
    struct result a = { 0 }, tick = { 0 };
    struct timeval now = { 0, 0 };

    s->silent = true;
    ck_assert_ptr_nonnull(resolve_start(r, "v4.test", 11211, 300, on_result, &a));
    event_base_once(base, -1, EV_TIMEOUT, on_tick, &tick, &now);
    run_until(base, &tick.done);
    ck_assert(!a.done);                         /* the other event ran first */
    run_until(base, &a.done);
    ck_assert_int_eq(a.calls, 1);
    ck_assert_str_eq(a.err, "timed out");
    ck_assert_int_gt(s->queries, 0);
    /* evdns answers our cancel from the loop: the request goes then */
    drain_cancels(base, r);
    ck_assert_uint_eq(resolver_pending(r), 0);
    teardown(base, s, r, path);
}
END_TEST

/* A cancelled request never calls back, before or after evdns answers. */
START_TEST(test_cancel)
{
    struct event_base *base = event_base_new();
    struct dns_server *s = dns_server_start(base);
    char path[64];
    struct resolver *r = resolver_on(base, s, path);
    struct result a = { 0 }, b = { 0 }, c = { 0 };

    struct resolve_req *qa = resolve_start(r, "v4.test", 11211, 0, on_result, &a);
    struct resolve_req *qc = resolve_start(r, "127.0.0.1", 11211, 0, on_result, &c);
    ck_assert_ptr_nonnull(resolve_start(r, "v6.test", 11211, 0, on_result, &b));
    resolve_cancel(qa);
    resolve_cancel(qc);                         /* answered already, not told */
    run_until(base, &b.done);
    drain_cancels(base, r);
    ck_assert_int_eq(a.calls, 0);
    ck_assert_int_eq(c.calls, 0);
    ck_assert_int_eq(b.calls, 1);
    ck_assert_uint_eq(resolver_pending(r), 0);
    teardown(base, s, r, path);
}
END_TEST

/* Shutting down with requests in flight: no callback, no leak (ASan). */
START_TEST(test_free_with_requests_in_flight)
{
    struct event_base *base = event_base_new();
    struct dns_server *s = dns_server_start(base);
    char path[64];
    struct resolver *r = resolver_on(base, s, path);
    struct result a = { 0 }, b = { 0 };

    s->silent = true;
    struct resolve_req *qa = resolve_start(r, "v4.test", 11211, 0, on_result, &a);
    ck_assert_ptr_nonnull(qa);
    ck_assert_ptr_nonnull(resolve_start(r, "v6.test", 11211, 0, on_result, &b));
    event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    ck_assert_uint_eq(resolver_pending(r), 2);
    resolver_quiesce(r);
    ck_assert_uint_eq(resolver_pending(r), 2);     /* the handles stay valid */
    resolve_cancel(qa);                             /* as a closing backend does */
    ck_assert_uint_eq(resolver_pending(r), 1);
    resolver_free(r);
    event_base_loop(base, EVLOOP_NONBLOCK);
    ck_assert_int_eq(a.calls + b.calls, 0);
    dns_server_stop(s);
    unlink(path);
    event_base_free(base);
}
END_TEST

START_TEST(test_unreadable_conf_is_an_error)
{
    struct event_base *base = event_base_new();
    char err[256] = "";

    ck_assert_ptr_null(resolver_new(base, "/nonexistent/resolv.conf", err, sizeof(err)));
    ck_assert_ptr_nonnull(strstr(err, "/nonexistent/resolv.conf"));
    event_base_free(base);
}
END_TEST

static Suite *resolve_suite(void)
{
    Suite *s = suite_create("resolve");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, test_numeric);
    tcase_add_test(tc, test_answers_and_follows_a_change);
    tcase_add_test(tc, test_nxdomain_is_said);
    tcase_add_test(tc, test_silent_server_times_out_without_blocking);
    tcase_add_test(tc, test_cancel);
    tcase_add_test(tc, test_free_with_requests_in_flight);
    tcase_add_test(tc, test_unreadable_conf_is_an_error);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return check_run(resolve_suite());
}
