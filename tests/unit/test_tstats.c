/*
 * test_tstats.c — the threads' counters summed when read (src/tstats.h,
 * docs/ARCHITECTURE.md "Threads"): a reader adds every other thread's last
 * snapshot to its own live counters, matches backends by pool, identity and
 * address whatever their order, skips closed pools; and client connections
 * are limited per pool across the threads; a backend's state, connections
 * and dns error are merged over the threads by one rule (tstats_live_merge).
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pool.h"
#include "tstats.h"
#include "check_run.h"

/* A pool as the summing sees it: a name, counters, backends. */
static struct pool *fake_pool(const char *name, uint32_t nbe, const char *const *ids)
{
    struct pool *p = calloc(1, sizeof(*p));

    p->name = strdup(name);
    p->nbackends = nbe;
    p->backends = calloc(nbe ? nbe : 1, sizeof(*p->backends));
    for (uint32_t i = 0; i < nbe; i++) {
        struct backend *be = calloc(1, sizeof(*be));
        be->identity = strdup(ids[i]);
        be->addr.text = strdup("127.0.0.1:11211");
        p->backends[i] = be;
    }
    return p;
}

static void fake_free(struct pool *p)
{
    for (uint32_t i = 0; i < p->nbackends; i++) {
        free(p->backends[i]->identity);
        free(p->backends[i]->addr.text);
        free(p->backends[i]);
    }
    free(p->backends);
    free(p->name);
    free(p);
}

START_TEST(readers_add_the_other_threads_snapshots)
{
    static const char *const ab[] = { "a", "b" }, *const ba[] = { "b", "a" };
    struct pool *home = fake_pool("cache", 2, ab), *w1 = fake_pool("cache", 2, ba),
                *w2 = fake_pool("cache", 2, ab), *other = fake_pool("other", 0, NULL);
    struct pool *pools1[] = { w1, other };

    tstats_init(3);
    home->stats[STAT_cmd_get] = 1;
    w1->stats[STAT_cmd_get] = 10;
    w2->stats[STAT_cmd_get] = 100;
    other->stats[STAT_cmd_get] = 1000;
    w1->backends[0]->stats[STAT_BE_requests] = 7;     /* "b" */
    w2->backends[0]->stats[STAT_BE_requests] = 5;     /* "a" */
    tstats_publish(1, pools1, 2);
    tstats_publish(2, &w2, 1);
    w2->stats[STAT_cmd_get] = 200;      /* not published yet: not seen */

    uint64_t sum[STAT_POOL_COUNT];
    memcpy(sum, home->stats, sizeof(sum));
    tstats_add_pool(0, "cache", sum);
    ck_assert_uint_eq(sum[STAT_cmd_get], 111);

    uint64_t be[2][STAT_BACKEND_COUNT] = { { 0 } };
    tstats_add_backends(0, "cache", home->backends, 2, be);
    ck_assert_uint_eq(be[0][STAT_BE_requests], 5);    /* "a": w2's */
    ck_assert_uint_eq(be[1][STAT_BE_requests], 7);    /* "b": w1's, other order */

    /* A turn publishes pools and the backends the tick named; a closed pool
     * (no name) is left out. */
    w2->backends[0]->stats[STAT_BE_requests] = 6;
    tstats_publish_pools(2, &w2, 1);
    memset(be, 0, sizeof(be));
    tstats_add_backends(0, "cache", home->backends, 2, be);
    ck_assert_uint_eq(be[0][STAT_BE_requests], 6);
    free(w1->name);
    w1->name = NULL;
    tstats_publish_pools(1, pools1, 2);
    memset(sum, 0, sizeof(sum));
    tstats_add_pool(0, "cache", sum);
    ck_assert_uint_eq(sum[STAT_cmd_get], 200);
    memset(sum, 0, sizeof(sum));
    tstats_add_pool(2, "other", sum);
    ck_assert_uint_eq(sum[STAT_cmd_get], 1000);
    tstats_free();
    w1->name = strdup("cache");
    fake_free(home);
    fake_free(w1);
    fake_free(w2);
    fake_free(other);
}
END_TEST

/* One thread's view of a backend, for the merge rule. */
static struct tstats_live view(enum backend_state st, bool tried)
{
    struct tstats_live v;

    memset(&v, 0, sizeof(v));
    v.state = st;
    v.tried = tried;
    return v;
}

/* The merge of views[0..n) in the order idx gives. */
static struct tstats_live merged(const struct tstats_live *views, const int *idx, int n)
{
    struct tstats_live acc = views[idx[0]];

    for (int i = 1; i < n; i++) {
        tstats_live_merge(&acc, &views[idx[i]]);
    }
    return acc;
}

START_TEST(a_backend_state_is_merged_by_one_rule_in_any_order)
{
    static const struct {
        struct { enum backend_state st; bool tried; } v[3];
        enum backend_state want;
    } cases[] = {
        /* a thread that never tried it has no opinion */
        { { { BACKEND_DOWN, true }, { BACKEND_UP, false }, { BACKEND_UP, false } }, BACKEND_DOWN },
        /* down only when every thread that tried it finds it down */
        { { { BACKEND_DOWN, true }, { BACKEND_UP, true }, { BACKEND_UP, false } }, BACKEND_UP },
        { { { BACKEND_DOWN, true }, { BACKEND_DOWN, true }, { BACKEND_UP, false } }, BACKEND_DOWN },
        /* ejected on any thread: ejected */
        { { { BACKEND_EJECTED, true }, { BACKEND_UP, true }, { BACKEND_DOWN, true } },
          BACKEND_EJECTED },
        { { { BACKEND_UP, true }, { BACKEND_UP, false }, { BACKEND_EJECTED, true } },
          BACKEND_EJECTED },
        /* nobody tried it: up, as one thread shows it before its first use */
        { { { BACKEND_UP, false }, { BACKEND_UP, false }, { BACKEND_UP, false } }, BACKEND_UP },
    };
    static const int orders[6][3] = { { 0, 1, 2 }, { 0, 2, 1 }, { 1, 0, 2 },
                                      { 1, 2, 0 }, { 2, 0, 1 }, { 2, 1, 0 } };

    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        struct tstats_live v[3];
        for (int i = 0; i < 3; i++) {
            v[i] = view(cases[c].v[i].st, cases[c].v[i].tried);
            v[i].conns_up = (uint32_t)i + 1;
            v[i].queued_bytes = 10u * (uint64_t)(i + 1);
            v[i].retry_ms = 1000u - (uint64_t)i;
        }
        for (int o = 0; o < 6; o++) {
            struct tstats_live m = merged(v, orders[o], 3);
            ck_assert_msg(m.state == cases[c].want, "case %zu order %d: %s", c, o,
                          backend_state_names[m.state]);
            ck_assert_uint_eq(m.conns_up, 6);
            ck_assert_uint_eq(m.queued_bytes, 60);
        }
    }
    /* Ejected: since the earliest of the ejecting threads' retries. */
    struct tstats_live v[3] = { view(BACKEND_EJECTED, true), view(BACKEND_UP, true),
                                view(BACKEND_EJECTED, true) };
    v[0].retry_ms = 500;
    v[1].retry_ms = 100;    /* not ejected there: not counted */
    v[2].retry_ms = 300;
    for (int o = 0; o < 6; o++) {
        ck_assert_uint_eq(merged(v, orders[o], 3).retry_ms, 300);
    }
}
END_TEST

START_TEST(readers_merge_every_threads_backend_state)
{
    static const char *const ab[] = { "a", "b" };
    struct pool *home = fake_pool("cache", 2, ab), *w1 = fake_pool("cache", 2, ab);
    struct bconn conns[2];

    tstats_init(2);
    /* Only the worker used "a", and found it down: its name did not resolve. */
    w1->backends[0]->state = BACKEND_DOWN;
    snprintf(w1->backends[0]->dns_error, sizeof(w1->backends[0]->dns_error),
             "cannot resolve nowhere: not known");
    /* Both have "b" up: the home thread one connection, the worker two of
     * which one is up. */
    memset(conns, 0, sizeof(conns));
    conns[0].state = BCONN_UP;
    home->backends[1]->conns = conns;
    home->backends[1]->nconns = 1;
    home->backends[1]->stats[STAT_BE_connects] = 1;
    struct bconn wconns[2];
    memset(wconns, 0, sizeof(wconns));
    wconns[0].state = BCONN_UP;
    wconns[1].state = BCONN_CONNECTING;
    w1->backends[1]->conns = wconns;
    w1->backends[1]->nconns = 2;
    tstats_publish(1, &w1, 1);

    struct tstats_live *rows = tstats_backends_live(0, home);
    ck_assert_int_eq(rows[0].state, BACKEND_DOWN);
    ck_assert_str_eq(rows[0].dns_error, "cannot resolve nowhere: not known");
    ck_assert_int_eq(rows[1].state, BACKEND_UP);
    ck_assert_uint_eq(rows[1].conns_up, 2);
    ck_assert_str_eq(rows[1].dns_error, "");
    free(rows);

    /* The worker's next turn: its connection to "b" was lost, the other one
     * is still opening; the home thread's is up, so "b" is up. And "a"
     * resolved and connected on the worker: up, no error. */
    wconns[0].state = BCONN_DOWN;
    w1->backends[1]->state = BACKEND_DOWN;
    w1->backends[0]->state = BACKEND_UP;
    w1->backends[0]->dns_error[0] = '\0';
    w1->backends[0]->stats[STAT_BE_connects] = 1;
    tstats_publish_pools(1, &w1, 1);
    rows = tstats_backends_live(0, home);
    ck_assert_int_eq(rows[0].state, BACKEND_UP);
    ck_assert_str_eq(rows[0].dns_error, "");
    ck_assert_int_eq(rows[1].state, BACKEND_UP);
    ck_assert_uint_eq(rows[1].conns_up, 1);
    free(rows);

    /* The home thread loses its connection too: every thread that tried
     * "b" finds it down. */
    conns[0].state = BCONN_DOWN;
    home->backends[1]->state = BACKEND_DOWN;
    wconns[1].state = BCONN_DOWN;
    tstats_publish_pools(1, &w1, 1);
    rows = tstats_backends_live(0, home);
    ck_assert_int_eq(rows[1].state, BACKEND_DOWN);
    ck_assert_uint_eq(rows[1].conns_up, 0);
    free(rows);

    tstats_free();
    home->backends[1]->conns = NULL;
    home->backends[1]->nconns = 0;
    w1->backends[1]->conns = NULL;
    w1->backends[1]->nconns = 0;
    fake_free(home);
    fake_free(w1);
}
END_TEST

START_TEST(client_connections_are_limited_across_threads)
{
    tstats_init(2);
    ck_assert(tstats_threaded());
    ck_assert(tstats_client_admit("cache", 2));
    ck_assert(tstats_client_admit("cache", 2));
    ck_assert(!tstats_client_admit("cache", 2));
    ck_assert(tstats_client_admit("other", 2));
    tstats_client_left("cache");
    ck_assert(tstats_client_admit("cache", 2));
    ck_assert(tstats_client_admit("cache", 0));       /* 0: no limit */
    tstats_free();
    ck_assert(!tstats_threaded());
}
END_TEST

int main(void)
{
    Suite *s = suite_create("tstats");
    TCase *tc = tcase_create("sum");

    tcase_add_test(tc, readers_add_the_other_threads_snapshots);
    tcase_add_test(tc, client_connections_are_limited_across_threads);
    tcase_add_test(tc, a_backend_state_is_merged_by_one_rule_in_any_order);
    tcase_add_test(tc, readers_merge_every_threads_backend_state);
    suite_add_tcase(s, tc);
    return check_run(s);
}
