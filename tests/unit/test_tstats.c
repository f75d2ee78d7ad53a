/*
 * test_tstats.c — the threads' counters summed when read (src/tstats.h,
 * docs/ARCHITECTURE.md "Threads"): a reader adds every other thread's last
 * snapshot to its own live counters, matches backends by pool, identity and
 * address whatever their order, skips closed pools; and client connections
 * are limited per pool across the threads.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "pool.h"
#include "tstats.h"

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
    SRunner *sr;
    int failed;

    tcase_add_test(tc, readers_add_the_other_threads_snapshots);
    tcase_add_test(tc, client_connections_are_limited_across_threads);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
