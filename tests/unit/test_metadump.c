/* test_metadump.c — the metadump parser, and a dump against a fake memcached
 * that answers in pieces, while the consumer pauses and resumes.
 *
 * Real memcached dumps are exercised by the integration tests (index
 * rebuild, sweep, the migration's closing pass); here the byte-level cases
 * a real server rarely produces: split lines, hostile lines, BUSY.
 */
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "metadump.h"
#include "check_run.h"

static enum mdump_parse_rc parse(const char *s, struct mdump_item *it, char *kb,
                                 enum mdump_end *end, size_t *used)
{
    const char *why;
    size_t why_len;

    return mdump_parse(s, strlen(s), it, kb, end, &why, &why_len, used);
}

START_TEST(parse_item)
{
    struct mdump_item it;
    char kb[MDUMP_KEY_MAX + 1];
    enum mdump_end end;
    size_t used;
    const char *line = "key=a%25b%3A1 exp=-1 la=1796175309 cas=17 fetch=no cls=1 size=63\nrest";

    ck_assert_int_eq(parse(line, &it, kb, &end, &used), MDUMP_PARSE_ITEM);
    ck_assert_uint_eq(it.len, 5);
    ck_assert(memcmp(it.key, "a%b:1", 5) == 0);
    ck_assert_int_eq(it.exp, -1);
    ck_assert_uint_eq(it.cas, 17);
    ck_assert_uint_eq(it.size, 63);
    ck_assert_uint_eq(used, strlen(line) - 4);
    /* later versions add fields: skipped */
    ck_assert_int_eq(parse("key=k exp=1796175409 flags=5 cas=2 size=67\n", &it, kb, &end,
                           &used), MDUMP_PARSE_ITEM);
    ck_assert_int_eq(it.exp, 1796175409);
}
END_TEST

START_TEST(parse_end)
{
    struct mdump_item it;
    char kb[MDUMP_KEY_MAX + 1];
    enum mdump_end end;
    size_t used;

    ck_assert_int_eq(parse("END\r\n", &it, kb, &end, &used), MDUMP_PARSE_END);
    ck_assert_int_eq(end, MDUMP_DONE);
    ck_assert_int_eq(parse("BUSY currently processing crawler request\r\n", &it, kb, &end,
                           &used), MDUMP_PARSE_END);
    ck_assert_int_eq(end, MDUMP_BUSY);
    ck_assert_int_eq(parse("ERROR\r\n", &it, kb, &end, &used), MDUMP_PARSE_END);
    ck_assert_int_eq(end, MDUMP_REFUSED);
    ck_assert_int_eq(parse("CLIENT_ERROR lru crawler disabled\r\n", &it, kb, &end, &used),
                     MDUMP_PARSE_END);
    ck_assert_int_eq(end, MDUMP_REFUSED);
    ck_assert_int_eq(parse("END", &it, kb, &end, &used), MDUMP_PARSE_MORE);
}
END_TEST

START_TEST(parse_hostile)
{
    struct mdump_item it;
    char kb[MDUMP_KEY_MAX + 1];
    enum mdump_end end;
    size_t used;
    static const char *const unusable[] = {
        "key= exp=-1\n",                 /* empty key */
        "key=a%2 exp=-1\n",              /* truncated escape */
        "key=a%zz exp=-1\n",             /* not hex */
        "key=a%20b exp=-1\n",            /* decodes to a space */
        "key=a%0d%0a exp=-1\n",          /* decodes to CR LF */
    };
    static const char *const bad[] = {
        "key=a exp=x\n",                 /* exp not a number */
        "key=a exp=-5\n",
        "key=a cas=-1\n",
        "key=a size=99999999999\n",
        "key=a cas=99999999999999999999999\n",
        "key=a key=b\n",                 /* two keys */
        "key=a junk\n",                  /* field without '=' */
        "hello\n",
        "ENDX\r\n",
        "END more\r\n",
        "key=a\tb\n",                    /* control character */
    };

    for (size_t i = 0; i < sizeof(unusable) / sizeof(unusable[0]); i++) {
        ck_assert_msg(parse(unusable[i], &it, kb, &end, &used) == MDUMP_PARSE_SKIP, "%s",
                      unusable[i]);
        ck_assert_uint_eq(used, strlen(unusable[i]));
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ck_assert_msg(parse(bad[i], &it, kb, &end, &used) == MDUMP_PARSE_ERROR, "%s", bad[i]);
    }
    /* a 251-byte key, and an over-long line */
    char line[3000];
    memcpy(line, "key=", 4);
    memset(line + 4, 'k', 251);
    strcpy(line + 255, " exp=-1\n");
    ck_assert_int_eq(parse(line, &it, kb, &end, &used), MDUMP_PARSE_SKIP);
    memcpy(line + 4 + 250, " exp=-1\n", 9);   /* 250 bytes: the longest key */
    ck_assert_int_eq(parse(line, &it, kb, &end, &used), MDUMP_PARSE_ITEM);
    ck_assert_uint_eq(it.len, 250);
    memset(line, 'x', sizeof(line) - 1);
    line[sizeof(line) - 1] = '\0';
    ck_assert_int_eq(parse(line, &it, kb, &end, &used), MDUMP_PARSE_ERROR);
    /* a line still arriving */
    ck_assert_int_eq(parse("key=abc exp=", &it, kb, &end, &used), MDUMP_PARSE_MORE);
}
END_TEST

/* --- a fake server ---------------------------------------------------------------- */

struct fake {
    struct event_base *base;
    struct evconnlistener *lis;
    struct bufferevent *srv;
    struct event *pace;
    uint16_t port;
    const char *const *chunks;
    int sent;
    bool got_command;
    /* the consumer */
    struct mdump *d;
    char keys[64][MDUMP_KEY_MAX + 1];
    int nkeys;
    int pause_every;
    struct event *resume;
    enum mdump_end how;
    bool ended;
};

static void send_next(evutil_socket_t fd, short what, void *arg)
{
    struct fake *f = arg;

    (void)fd;
    (void)what;
    if (f->chunks[f->sent] == NULL) {
        return;
    }
    bufferevent_write(f->srv, f->chunks[f->sent], strlen(f->chunks[f->sent]));
    f->sent++;
    struct timeval tv = { 0, 5000 };
    evtimer_add(f->pace, &tv);
}

static void srv_read(struct bufferevent *bev, void *arg)
{
    struct fake *f = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    char *line = evbuffer_readln(in, NULL, EVBUFFER_EOL_CRLF);

    if (line != NULL) {
        f->got_command = strcmp(line, "lru_crawler metadump all") == 0;
        free(line);
        send_next(-1, 0, f);
    }
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                      int len, void *arg)
{
    struct fake *f = arg;

    (void)l;
    (void)sa;
    (void)len;
    f->srv = bufferevent_socket_new(f->base, fd, BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(f->srv, srv_read, NULL, NULL, f);
    bufferevent_enable(f->srv, EV_READ | EV_WRITE);
}

static void do_resume(evutil_socket_t fd, short what, void *arg)
{
    struct fake *f = arg;

    (void)fd;
    (void)what;
    mdump_resume(f->d);
}

static void on_key(void *arg, const struct mdump_item *it)
{
    struct fake *f = arg;

    ck_assert(!mdump_paused(f->d));
    ck_assert_int_lt(f->nkeys, 64);
    memcpy(f->keys[f->nkeys], it->key, it->len);
    f->keys[f->nkeys][it->len] = '\0';
    f->nkeys++;
    if (f->pause_every && f->nkeys % f->pause_every == 0) {
        mdump_pause(f->d);
        struct timeval tv = { 0, 20000 };
        evtimer_add(f->resume, &tv);
    }
}

static void on_end(void *arg, enum mdump_end how, const char *why)
{
    struct fake *f = arg;

    (void)why;
    f->how = how;
    f->ended = true;
    mdump_free(f->d);   /* allowed here */
    f->d = NULL;
    event_base_loopexit(f->base, NULL);
}

static void run_fake(struct fake *f, const char *const *chunks, int pause_every)
{
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001) };
    socklen_t sl = sizeof(sin);

    memset(f, 0, sizeof(*f));
    f->base = event_base_new();
    f->chunks = chunks;
    f->pause_every = pause_every;
    f->lis = evconnlistener_new_bind(f->base, on_accept, f, LEV_OPT_CLOSE_ON_FREE |
                                     LEV_OPT_REUSEABLE, 16, (struct sockaddr *)&sin,
                                     sizeof(sin));
    ck_assert_ptr_nonnull(f->lis);
    getsockname(evconnlistener_get_fd(f->lis), (struct sockaddr *)&sin, &sl);
    f->port = ntohs(sin.sin_port);
    f->pace = evtimer_new(f->base, send_next, f);
    f->resume = evtimer_new(f->base, do_resume, f);
    f->d = mdump_start(f->base, NULL, "127.0.0.1", f->port, false, 2000, on_key, on_end, f);
    ck_assert_ptr_nonnull(f->d);
    struct timeval limit = { 10, 0 };
    event_base_loopexit(f->base, &limit);
    event_base_dispatch(f->base);
    ck_assert(f->ended);
    if (f->srv != NULL) {
        bufferevent_free(f->srv);
    }
    event_free(f->pace);
    event_free(f->resume);
    evconnlistener_free(f->lis);
    event_base_free(f->base);
}

START_TEST(dump_in_pieces_with_pauses)
{
    static const char *const chunks[] = {
        "key=a exp=-1 la=1 cas=1 fetch=no cls=1 size=60\nkey=b",
        " exp=-1 la=1 cas=2 fetch=no cls=1 size=60\nkey=c exp=-1 la=1 cas=3 fetch=no cls=1 size=60\n"
        "key=d exp=-1 la=1 cas=4 fetch=no cls=1 size=60\nkey=e exp=-1 la=1 cas=5 fetch=no",
        " cls=1 size=60\nEN",
        "D\r\n",
        NULL,
    };
    struct fake f;

    run_fake(&f, chunks, 2);
    ck_assert(f.got_command);
    ck_assert_int_eq(f.how, MDUMP_DONE);
    ck_assert_int_eq(f.nkeys, 5);
    ck_assert_str_eq(f.keys[0], "a");
    ck_assert_str_eq(f.keys[4], "e");
}
END_TEST

START_TEST(dump_busy_and_bad)
{
    static const char *const busy[] = { "BUSY currently processing crawler request\r\n", NULL };
    static const char *const bad[] = { "key=a exp=-1 size=1\nkey=%zz exp=-1\n"
                                       "key=b exp=x\n", NULL };
    static const char *const cut[] = { "key=a exp=-1 size=1\nkey=b", NULL };
    struct fake f;

    run_fake(&f, busy, 0);
    ck_assert_int_eq(f.how, MDUMP_BUSY);
    run_fake(&f, bad, 0);
    ck_assert_int_eq(f.how, MDUMP_FAILED);
    ck_assert_int_eq(f.nkeys, 1);       /* a, then %zz skipped, then a bad exp */
    run_fake(&f, cut, 0);      /* silence: the timeout ends it */
    ck_assert_int_eq(f.how, MDUMP_FAILED);
}
END_TEST

START_TEST(dump_refused_connection)
{
    struct fake f;

    memset(&f, 0, sizeof(f));
    f.base = event_base_new();
    f.d = mdump_start(f.base, NULL, "127.0.0.1", 1, false, 1000, on_key, on_end, &f);
    ck_assert_ptr_nonnull(f.d);
    event_base_dispatch(f.base);
    ck_assert(f.ended);
    ck_assert_int_eq(f.how, MDUMP_FAILED);
    event_base_free(f.base);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("metadump");
    TCase *tc = tcase_create("core");

    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, parse_item);
    tcase_add_test(tc, parse_end);
    tcase_add_test(tc, parse_hostile);
    tcase_add_test(tc, dump_in_pieces_with_pauses);
    tcase_add_test(tc, dump_busy_and_bad);
    tcase_add_test(tc, dump_refused_connection);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return check_run(suite());
}
