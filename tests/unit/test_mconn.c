/* test_mconn.c — a meta connection against a fake memcached that lies.
 *
 * The fake listens on 127.0.0.1 in the test's own event loop, reads the
 * commands mconn sends and answers with scripted bytes (in pieces, when the
 * script says so). Every hostile answer must reach the callbacks as FAIL and
 * close the connection; under ASan nothing may be read or copied out of
 * bounds. mreply_parse, the pure parser behind it, is tested on its own too.
 */
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "defer.h"
#include "mconn.h"
#include "resolve.h"
#include "check_run.h"

#define MAX_CALLS 4
#define MAX_CHUNKS 4

struct chunk {
    const char *data;
    size_t len;         /* 0: strlen(data) */
};

struct fake {
    struct event_base *base;
    struct defer *defer;
    struct evconnlistener *lis;
    struct bufferevent *srv;
    struct event *pace, *deadline;
    uint16_t port;
    /* the script: sent once `after_lines` command lines have arrived */
    struct chunk chunks[MAX_CHUNKS];
    int nchunks, sent;
    int after_lines, lines;
    size_t line_bytes;
    bool saw_eof;
    bool wait_eof;          /* the test ends when the client has hung up */
    /* what the callbacks got */
    int expect_calls, ncalls;
    enum mreply_status st[MAX_CALLS];
    char err[MAX_CALLS][256];
    char val[MAX_CALLS][64];
    size_t vlen[MAX_CALLS];
    int64_t cas[MAX_CALLS];
    /* hooks a callback runs */
    struct mconn *mc;
    bool free_in_first_cb;
    bool send_in_first_cb;
};

static void maybe_done(struct fake *f)
{
    if (f->ncalls >= f->expect_calls && (!f->wait_eof || f->saw_eof)) {
        event_base_loopbreak(f->base);
    }
}

static void send_next_chunk(struct fake *f)
{
    if (f->srv == NULL || f->sent >= f->nchunks) {
        return;
    }
    const struct chunk *c = &f->chunks[f->sent++];
    bufferevent_write(f->srv, c->data, c->len ? c->len : strlen(c->data));
    if (f->sent < f->nchunks) {
        struct timeval tv = { 0, 20000 };
        evtimer_add(f->pace, &tv);     /* the rest a little later */
    }
}

static void on_pace(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    send_next_chunk(arg);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct fake *f = arg;

    (void)fd;
    (void)what;
    event_base_loopbreak(f->base);
}

static void srv_read(struct bufferevent *bev, void *arg)
{
    struct fake *f = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t eol;
    struct evbuffer_ptr at;

    while ((at = evbuffer_search_eol(in, NULL, &eol, EVBUFFER_EOL_CRLF)).pos >= 0) {
        evbuffer_drain(in, (size_t)at.pos + eol);
        if (++f->lines == f->after_lines) {
            send_next_chunk(f);
        }
    }
}

static void srv_event(struct bufferevent *bev, short what, void *arg)
{
    struct fake *f = arg;

    (void)bev;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        f->saw_eof = true;
        maybe_done(f);
    }
}

static void on_accept(struct evconnlistener *lis, evutil_socket_t fd,
                      struct sockaddr *sa, int len, void *arg)
{
    struct fake *f = arg;

    (void)lis;
    (void)sa;
    (void)len;
    ck_assert_ptr_null(f->srv);     /* one connection per test */
    f->srv = bufferevent_socket_new(f->base, fd, BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(f->srv, srv_read, NULL, srv_event, f);
    bufferevent_enable(f->srv, EV_READ | EV_WRITE);
}

static void fake_start(struct fake *f)
{
    struct sockaddr_in sin = { .sin_family = AF_INET };
    socklen_t slen = sizeof(sin);

    f->base = event_base_new();
    ck_assert_ptr_nonnull(f->base);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    f->lis = evconnlistener_new_bind(f->base, on_accept, f,
                                     LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 16,
                                     (struct sockaddr *)&sin, sizeof(sin));
    ck_assert_ptr_nonnull(f->lis);
    ck_assert_int_eq(getsockname(evconnlistener_get_fd(f->lis),
                                 (struct sockaddr *)&sin, &slen), 0);
    f->port = ntohs(sin.sin_port);
    f->pace = evtimer_new(f->base, on_pace, f);
    f->deadline = evtimer_new(f->base, on_deadline, f);
    f->defer = defer_new(f->base);
    f->mc = mconn_new(f->defer, "127.0.0.1", f->port, false, 5000);
    ck_assert_ptr_nonnull(f->mc);
}

static void fake_stop(struct fake *f)
{
    mconn_free(f->mc);
    if (f->srv != NULL) {
        bufferevent_free(f->srv);
    }
    event_free(f->pace);
    event_free(f->deadline);
    evconnlistener_free(f->lis);
    defer_free(f->defer);
    event_base_free(f->base);
}

static void on_reply(void *arg, const struct mreply *r)
{
    struct fake *f = arg;
    int i = f->ncalls++;

    ck_assert_int_lt(i, MAX_CALLS);
    f->st[i] = r->status;
    snprintf(f->err[i], sizeof(f->err[i]), "%s", r->error ? r->error : "");
    if (r->status == MREPLY_VA) {
        f->vlen[i] = r->value_len;
        ck_assert_uint_lt(r->value_len, sizeof(f->val[i]));
        memcpy(f->val[i], r->value, r->value_len);
    }
    f->cas[i] = -1;
    mreply_flag(r, 'c', &f->cas[i]);
    if (i == 0 && f->send_in_first_cb) {
        ck_assert_int_eq(mconn_send(f->mc, "mg c c", 6, NULL, 0, on_reply, f), 0);
    }
    if (i == 0 && f->free_in_first_cb) {
        mconn_free(f->mc);      /* a callback may free its own connection */
        f->mc = NULL;
    }
    maybe_done(f);
}

/* Run the loop until the test's end (maybe_done) or 5 s passed. */
static void dispatch(struct fake *f)
{
    struct timeval tv = { 5, 0 };

    evtimer_add(f->deadline, &tv);
    event_base_dispatch(f->base);
}

/* Send n mg commands, run until the callbacks (and the hang-up, if asked)
 * came, or 5 s passed. */
static void run(struct fake *f, int n)
{
    f->after_lines = n;
    f->expect_calls = n;
    for (int i = 0; i < n; i++) {
        ck_assert_int_eq(mconn_send(f->mc, "mg k v f t c", 12, NULL, 0, on_reply, f), 0);
    }
    dispatch(f);
    ck_assert_int_eq(f->ncalls, n);
    if (f->wait_eof) {
        ck_assert_msg(f->saw_eof, "the connection was not closed");
    }
}

/* One command, one scripted answer: the callback must get FAIL and the
 * connection must be closed. */
static void assert_hostile(const struct chunk *chunks, int nchunks, size_t max_value,
                           const char *why)
{
    struct fake f = { .wait_eof = true };

    fake_start(&f);
    if (max_value) {
        mconn_set_max_value(f.mc, max_value);
    }
    for (int i = 0; i < nchunks; i++) {
        f.chunks[i] = chunks[i];
    }
    f.nchunks = nchunks;
    run(&f, 1);
    ck_assert_int_eq(f.st[0], MREPLY_FAIL);
    ck_assert_msg(strstr(f.err[0], why) != NULL, "error '%s', expected '%s'",
                  f.err[0], why);
    ck_assert_uint_eq(mconn_pending(f.mc), 0);
    fake_stop(&f);
}

START_TEST(a_huge_value_length_fails_the_connection)
{
    const struct chunk huge[] = { { "VA 18446744073709551615 f0 t-1 c1\r\n", 0 } };
    const struct chunk over[] = { { "VA 18446744073709551616 f0\r\nxx\r\n", 0 } };
    const struct chunk big[] = { { "VA 1114113 f0\r\n", 0 } };
    const struct chunk small[] = { { "VA 11 f0\r\n01234567890\r\n", 0 } };

    assert_hostile(huge, 1, 0, "over the largest value");
    assert_hostile(over, 1, 0, "over the largest value");
    assert_hostile(big, 1, 0, "over the largest value");
    assert_hostile(small, 1, 10, "over the largest value");
}
END_TEST

START_TEST(a_value_without_its_crlf_fails_the_connection)
{
    const struct chunk glued[] = { { "VA 3 f0\r\nabcHD\r\n", 0 } };
    const struct chunk late[] = { { "VA 3 f0\r\nab", 0 }, { "c\rX", 0 } };
    const struct chunk lf[] = { { "VA 3 f0\r\nabc\n\n", 0 } };

    assert_hostile(glued, 1, 0, "not followed by \\r\\n");
    assert_hostile(late, 2, 0, "not followed by \\r\\n");
    assert_hostile(lf, 1, 0, "not followed by \\r\\n");
}
END_TEST

START_TEST(a_garbage_line_fails_the_connection)
{
    const struct chunk words[] = { { "HELLO THERE\r\n", 0 } };
    const struct chunk no_len[] = { { "VA\r\n", 0 } };
    const struct chunk neg[] = { { "VA -1 f0\r\n", 0 } };
    const struct chunk sign[] = { { "VA +3 f0\r\nabc\r\n", 0 } };
    const struct chunk word[] = { { "VA 3x f0\r\nabc\r\n", 0 } };
    const struct chunk bare_lf[] = { { "HD\n", 0 } };
    const struct chunk nul[] = { { "HD c1\0\r\n", 8 } };
    const struct chunk empty[] = { { "\r\n", 0 } };

    assert_hostile(words, 1, 0, "not a meta reply");
    assert_hostile(no_len, 1, 0, "VA without a length");
    assert_hostile(neg, 1, 0, "VA without a length");
    assert_hostile(sign, 1, 0, "VA without a length");
    assert_hostile(word, 1, 0, "not a number");
    assert_hostile(bare_lf, 1, 0, "not ended by \\r\\n");
    assert_hostile(nul, 1, 0, "control character");
    assert_hostile(empty, 1, 0, "not a meta reply");
}
END_TEST

START_TEST(an_overlong_line_fails_the_connection)
{
    static char line[3000];
    const struct chunk flood[] = { { line, sizeof(line) } };
    const struct chunk halves[] = { { line, 1500 }, { line, 1500 } };

    memset(line, 'x', sizeof(line));
    memcpy(line, "HD ", 3);
    assert_hostile(flood, 1, 0, "longer than 2048");
    assert_hostile(halves, 2, 0, "longer than 2048");
}
END_TEST

START_TEST(an_unsolicited_reply_fails_the_connection)
{
    /* two commands; the third reply answers nothing */
    struct fake f = { .wait_eof = true };

    fake_start(&f);
    f.chunks[0] = (struct chunk){ "HD c5\r\nEN\r\nHD\r\n", 0 };
    f.nchunks = 1;
    run(&f, 2);
    ck_assert_int_eq(f.st[0], MREPLY_HD);
    ck_assert_int_eq(f.cas[0], 5);
    ck_assert_int_eq(f.st[1], MREPLY_EN);
    ck_assert_uint_eq(mconn_pending(f.mc), 0);
    fake_stop(&f);
}
END_TEST

START_TEST(every_pending_command_fails_with_the_connection)
{
    struct fake f = { .wait_eof = true };

    fake_start(&f);
    f.chunks[0] = (struct chunk){ "VA 2 c7\r\nok\r\nNOPE\r\n", 0 };
    f.nchunks = 1;
    run(&f, 3);
    ck_assert_int_eq(f.st[0], MREPLY_VA);
    ck_assert_uint_eq(f.vlen[0], 2);
    ck_assert_str_eq(f.val[0], "ok");
    ck_assert_int_eq(f.cas[0], 7);
    ck_assert_int_eq(f.st[1], MREPLY_FAIL);
    ck_assert_int_eq(f.st[2], MREPLY_FAIL);
    ck_assert_ptr_nonnull(strstr(f.err[2], "not a meta reply"));
    fake_stop(&f);
}
END_TEST

/* A new connection with a 100 ms timeout, ordered or not. */
static void short_timeout(struct fake *f, bool ordered)
{
    mconn_free(f->mc);
    f->mc = mconn_new(f->defer, "127.0.0.1", f->port, false, 100);
    ck_assert_ptr_nonnull(f->mc);
    if (ordered) {
        mconn_set_ordered(f->mc);
    }
}

/* An ordered connection's timeout fails the commands waiting but keeps the
 * socket: a command sent after it goes on the same socket and gets its own
 * reply (by its opaque), once the abandoned one's has been read and dropped
 * (mconn.c, head comment). */
START_TEST(a_timeout_keeps_the_socket_and_later_commands_get_their_own_replies)
{
    struct fake f = { 0 };

    fake_start(&f);
    short_timeout(&f, true);
    f.chunks[0] = (struct chunk){ "HD c1 O0\r\nHD c2 O1\r\n", 0 };
    f.nchunks = 1;
    f.after_lines = 2;          /* the server answers once both arrived */
    f.expect_calls = 1;
    ck_assert_int_eq(mconn_send(f.mc, "mg a c", 6, NULL, 0, on_reply, &f), 0);
    uint64_t sock = mconn_socket(f.mc);
    ck_assert_uint_ne(sock, 0);
    dispatch(&f);
    ck_assert_int_eq(f.ncalls, 1);
    ck_assert_int_eq(f.st[0], MREPLY_FAIL);
    ck_assert_str_eq(f.err[0], "timeout");
    ck_assert_uint_eq(mconn_pending(f.mc), 0);
    enum mreply_status late;
    int64_t late_cas = -1;
    ck_assert(!mconn_late_reply(f.mc, sock, 0, &late, &late_cas));  /* not answered yet */
    f.expect_calls = 2;
    ck_assert_int_eq(mconn_send(f.mc, "mg b c", 6, NULL, 0, on_reply, &f), 0);
    ck_assert_uint_eq(mconn_last_opaque(f.mc), 1);
    ck_assert_uint_eq(mconn_socket(f.mc), sock);
    dispatch(&f);
    ck_assert_int_eq(f.ncalls, 2);
    ck_assert_int_eq(f.st[1], MREPLY_HD);
    ck_assert_int_eq(f.cas[1], 2);
    ck_assert(!f.saw_eof);
    ck_assert_uint_eq(mconn_socket(f.mc), sock);
    /* the abandoned command's answer is kept by its opaque; a command
     * answered in time leaves none */
    ck_assert(mconn_late_reply(f.mc, sock, 0, &late, &late_cas));
    ck_assert_int_eq(late, MREPLY_HD);
    ck_assert_int_eq(late_cas, 1);
    ck_assert(!mconn_late_reply(f.mc, sock + 1, 0, &late, &late_cas));
    ck_assert(!mconn_late_reply(f.mc, sock, 1, &late, &late_cas));
    ck_assert(!mconn_late_reply(f.mc, sock, MCONN_LATE_KEEP, &late, &late_cas));
    fake_stop(&f);
}
END_TEST

/* A timed-out command's callback that sends a new one: the new one is
 * not abandoned with the others, and gets its own reply. */
START_TEST(a_command_sent_from_a_timeout_callback_is_not_abandoned)
{
    struct fake f = { .send_in_first_cb = true };

    fake_start(&f);
    short_timeout(&f, true);
    f.chunks[0] = (struct chunk){ "HD O0\r\nHD O1\r\nHD c3 O2\r\n", 0 };
    f.nchunks = 1;
    f.after_lines = 3;          /* the one sent from the callback */
    f.expect_calls = 3;
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(mconn_send(f.mc, "mg a c", 6, NULL, 0, on_reply, &f), 0);
    }
    dispatch(&f);
    ck_assert_int_eq(f.ncalls, 3);
    ck_assert_int_eq(f.st[0], MREPLY_FAIL);
    ck_assert_int_eq(f.st[1], MREPLY_FAIL);
    ck_assert_int_eq(f.st[2], MREPLY_HD);
    ck_assert_int_eq(f.cas[2], 3);
    ck_assert_uint_eq(mconn_pending(f.mc), 0);
    fake_stop(&f);
}
END_TEST

static void count_fail(void *arg, const struct mreply *r)
{
    int *n = arg;

    ck_assert_int_eq(r->status, MREPLY_FAIL);
    (*n)++;
}

/* Past MCONN_ABANDONED_MAX timed-out commands the socket is closed. */
START_TEST(a_socket_holding_too_many_timed_out_commands_is_closed)
{
    struct fake f = { .wait_eof = true };
    int failed = 0;

    fake_start(&f);
    short_timeout(&f, true);
    f.after_lines = -1;         /* never answers */
    for (int i = 0; i <= MCONN_ABANDONED_MAX; i++) {
        ck_assert_int_eq(mconn_send(f.mc, "mg a c", 6, NULL, 0, count_fail, &failed), 0);
    }
    dispatch(&f);                       /* ends at the hang-up */
    ck_assert(f.saw_eof);
    ck_assert_int_eq(failed, MCONN_ABANDONED_MAX + 1);
    ck_assert_uint_eq(mconn_socket(f.mc), 0);
    fake_stop(&f);
}
END_TEST

/* Unordered (client commands): a timeout closes the socket, as ever. */
START_TEST(an_unordered_connection_is_closed_at_a_timeout)
{
    struct fake f = { .wait_eof = true };

    fake_start(&f);
    short_timeout(&f, false);
    f.after_lines = -1;         /* never answers */
    run(&f, 1);
    ck_assert_int_eq(f.st[0], MREPLY_FAIL);
    ck_assert_str_eq(f.err[0], "timeout");
    ck_assert_uint_eq(mconn_socket(f.mc), 0);
    fake_stop(&f);
}
END_TEST

/* Ordered: a reply that does not echo its command's opaque (one reply too
 * few or too many before it) fails the connection. */
START_TEST(an_ordered_reply_with_another_commands_opaque_fails_the_connection)
{
    struct fake f = { .wait_eof = true };

    fake_start(&f);
    mconn_set_ordered(f.mc);
    f.chunks[0] = (struct chunk){ "HD O0\r\nHD O2\r\n", 0 };
    f.nchunks = 1;
    run(&f, 2);
    ck_assert_int_eq(f.st[0], MREPLY_HD);
    ck_assert_int_eq(f.st[1], MREPLY_FAIL);
    ck_assert_ptr_nonnull(strstr(f.err[1], "opaque"));
    fake_stop(&f);
}
END_TEST

START_TEST(good_replies_in_pieces_and_server_errors_pass)
{
    struct fake f = { 0 };

    fake_start(&f);
    mconn_set_max_value(f.mc, 10);
    f.chunks[0] = (struct chunk){ "VA 10 f3 c9\r\n01234", 0 };
    f.chunks[1] = (struct chunk){ "56789\r", 0 };
    f.chunks[2] = (struct chunk){ "\nSERVER_ERROR out of memory\r\nV", 0 };
    f.chunks[3] = (struct chunk){ "A 0\r\n\r\n", 0 };
    f.nchunks = 4;
    run(&f, 3);
    ck_assert_int_eq(f.st[0], MREPLY_VA);
    ck_assert_str_eq(f.val[0], "0123456789");
    ck_assert_int_eq(f.cas[0], 9);
    ck_assert_int_eq(f.st[1], MREPLY_FAIL);
    ck_assert_str_eq(f.err[1], "SERVER_ERROR out of memory");
    ck_assert_int_eq(f.st[2], MREPLY_VA);
    ck_assert_uint_eq(f.vlen[2], 0);
    ck_assert(!f.saw_eof);          /* a server's error line is not a violation */
    fake_stop(&f);
}
END_TEST

/* The connection to a name, resolved by evdns on the loop: /etc/hosts
 * answers "localhost" within the connect call itself. */
START_TEST(a_name_is_resolved_on_the_loop)
{
    struct fake f = { 0 };
    char err[256] = "";

    fake_start(&f);
    struct resolver *r = resolver_new(f.base, NULL, err, sizeof(err));
    ck_assert_msg(r != NULL, "%s", err);
    mconn_free(f.mc);
    f.mc = mconn_new(f.defer, "localhost", f.port, false, 5000);
    ck_assert_ptr_nonnull(f.mc);
    mconn_set_dns(f.mc, resolver_evdns(r));
    f.chunks[0] = (struct chunk){ "VA 2 f1 c3\r\nhi\r\n", 0 };
    f.nchunks = 1;
    run(&f, 1);
    ck_assert_int_eq(f.st[0], MREPLY_VA);
    ck_assert_str_eq(f.val[0], "hi");
    fake_stop(&f);
    resolver_free(r);
}
END_TEST

/* A name no server answers for: the commands fail saying so. */
START_TEST(a_name_that_does_not_resolve_fails_saying_why)
{
    struct fake f = { 0 };
    char path[] = "/tmp/rp_mconn_resolv_XXXXXX", err[256] = "";
    int fd = mkstemp(path);

    ck_assert_int_ge(fd, 0);
    /* a port nothing listens on: evdns gets no answer, or a refusal */
    const char *conf = "nameserver 127.0.0.1:9\noptions timeout:1 attempts:1\n";
    ck_assert_int_eq(write(fd, conf, strlen(conf)), (ssize_t)strlen(conf));
    close(fd);
    fake_start(&f);
    struct resolver *r = resolver_new(f.base, path, err, sizeof(err));
    ck_assert_msg(r != NULL, "%s", err);
    mconn_free(f.mc);
    f.mc = mconn_new(f.defer, "nothing.invalid", f.port, false, 5000);
    mconn_set_dns(f.mc, resolver_evdns(r));
    run(&f, 1);
    ck_assert_int_eq(f.st[0], MREPLY_FAIL);
    ck_assert_msg(strncmp(f.err[0], "cannot resolve nothing.invalid: ", 32) == 0,
                  "error '%s'", f.err[0]);
    fake_stop(&f);
    resolver_free(r);
    unlink(path);
}
END_TEST

START_TEST(a_callback_may_free_its_connection)
{
    struct fake f = { .free_in_first_cb = true };

    fake_start(&f);
    f.chunks[0] = (struct chunk){ "HD\r\nHD\r\n", 0 };
    f.nchunks = 1;
    run(&f, 2);
    ck_assert_int_eq(f.st[0], MREPLY_HD);
    ck_assert_int_eq(f.st[1], MREPLY_FAIL);
    ck_assert_str_eq(f.err[1], "shutting down");
    fake_stop(&f);
}
END_TEST

/* --- mreply_parse alone, on exact-size heap copies ---------------------------- */

static enum mreply_parse_rc parse(const char *s, size_t len, size_t max_value,
                                  struct mreply *r, size_t *used)
{
    char *copy = malloc(len ? len : 1);
    static char keep[4096];     /* r points into it after the copy is freed */

    ck_assert_uint_le(len, sizeof(keep));
    memcpy(copy, s, len);
    enum mreply_parse_rc rc = mreply_parse(copy, len, max_value, r, used);
    memcpy(keep, copy, len);
    if (r->flags != NULL) r->flags = keep + (r->flags - copy);
    if (r->value != NULL) r->value = keep + (r->value - copy);
    free(copy);
    return rc;
}

START_TEST(parse_reports_need_more_done_and_errors)
{
    struct mreply r;
    size_t used;
    const char va[] = "VA 5 f1 t-1 c123\r\nhello\r\nHD\r\n";

    for (size_t n = 0; n < 25; n++) {
        ck_assert_int_eq(parse(va, n, 100, &r, &used), MREPLY_PARSE_MORE);
        ck_assert_uint_gt(used, n);
    }
    ck_assert_int_eq(parse(va, 18, 100, &r, &used), MREPLY_PARSE_MORE);
    ck_assert_uint_eq(used, 25);
    ck_assert_int_eq(parse(va, sizeof(va) - 1, 100, &r, &used), MREPLY_PARSE_DONE);
    ck_assert_uint_eq(used, 25);
    ck_assert_int_eq(r.status, MREPLY_VA);
    ck_assert_mem_eq(r.value, "hello", 5);
    ck_assert_uint_eq(r.flags_len, 11);
    int64_t v;
    ck_assert(mreply_flag(&r, 't', &v) && v == -1);
    ck_assert(mreply_flag(&r, 'c', &v) && v == 123);
    ck_assert(!mreply_flag(&r, 'k', &v));
    ck_assert_int_eq(parse(va, sizeof(va) - 1, 4, &r, &used), MREPLY_PARSE_ERROR);
    ck_assert_int_eq(r.status, MREPLY_FAIL);
    ck_assert_ptr_nonnull(r.error);

    ck_assert_int_eq(parse("HD\r\n", 4, 0, &r, &used), MREPLY_PARSE_DONE);
    ck_assert_int_eq(r.status, MREPLY_HD);
    ck_assert_uint_eq(r.flags_len, 0);
    ck_assert_int_eq(parse("CLIENT_ERROR bad\r\n", 18, 0, &r, &used), MREPLY_PARSE_DONE);
    ck_assert_int_eq(r.status, MREPLY_FAIL);
    ck_assert_ptr_null(r.error);
    ck_assert_uint_eq(r.flags_len, 16);
    ck_assert_int_eq(parse("HDX\r\n", 5, 0, &r, &used), MREPLY_PARSE_ERROR);
    ck_assert_int_eq(parse("ERRORS\r\n", 8, 0, &r, &used), MREPLY_PARSE_ERROR);
    ck_assert_int_eq(parse("VA 99999999999999999999999999\r\n", 31, SIZE_MAX, &r, &used),
                     MREPLY_PARSE_ERROR);
}
END_TEST

START_TEST(flags_are_read_within_their_bounds)
{
    const char line[] = "c12345 t9223372036854775808 f-9223372036854775808 s- k";
    struct mreply r = { .flags = line, .flags_len = 3 };   /* "c12" */
    int64_t v = 0;

    ck_assert(mreply_flag(&r, 'c', &v));
    ck_assert_int_eq(v, 12);
    r.flags_len = sizeof(line) - 1;
    ck_assert(!mreply_flag(&r, 't', &v));       /* over INT64_MAX */
    ck_assert(mreply_flag(&r, 'f', &v));
    ck_assert(v == INT64_MIN);
    ck_assert(!mreply_flag(&r, 's', &v));
    ck_assert(!mreply_flag(&r, 'k', &v));
    r = (struct mreply){ .status = MREPLY_HD };     /* "HD": no flags at all */
    ck_assert(!mreply_flag(&r, 'c', &v));
}
END_TEST

static Suite *mconn_suite(void)
{
    Suite *s = suite_create("mconn");
    TCase *tc = tcase_create("hostile backend");

    tcase_add_test(tc, a_huge_value_length_fails_the_connection);
    tcase_add_test(tc, a_value_without_its_crlf_fails_the_connection);
    tcase_add_test(tc, a_garbage_line_fails_the_connection);
    tcase_add_test(tc, an_overlong_line_fails_the_connection);
    tcase_add_test(tc, an_unsolicited_reply_fails_the_connection);
    tcase_add_test(tc, every_pending_command_fails_with_the_connection);
    tcase_add_test(tc, a_timeout_keeps_the_socket_and_later_commands_get_their_own_replies);
    tcase_add_test(tc, a_socket_holding_too_many_timed_out_commands_is_closed);
    tcase_add_test(tc, a_command_sent_from_a_timeout_callback_is_not_abandoned);
    tcase_add_test(tc, an_unordered_connection_is_closed_at_a_timeout);
    tcase_add_test(tc, an_ordered_reply_with_another_commands_opaque_fails_the_connection);
    tcase_add_test(tc, good_replies_in_pieces_and_server_errors_pass);
    tcase_add_test(tc, a_callback_may_free_its_connection);
    tcase_add_test(tc, a_name_is_resolved_on_the_loop);
    tcase_add_test(tc, a_name_that_does_not_resolve_fails_saying_why);
    tcase_add_test(tc, parse_reports_need_more_done_and_errors);
    tcase_add_test(tc, flags_are_read_within_their_bounds);
    tcase_set_timeout(tc, 30);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return check_run(mconn_suite());
}
