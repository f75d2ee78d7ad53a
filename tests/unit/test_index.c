/* test_index.c — what a Redis error reply means for a pool's index health. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <event2/event.h>

#include "index.h"

/* A writer that never runs its loop: its connection never completes, so
 * only the reports the tests make change its health. */
struct fixture {
    struct event_base *base;
    struct ring *ring;
    struct idx *x;
};

static void fixture_init(struct fixture *f)
{
    struct ring_server_spec s[] = { { .identity = "mc1", .addr = "127.0.0.1:1", .weight = 1 } };
    struct ring_params p = { .compat = RING_COMPAT_LIBMEMCACHED, .hash = HASH_FNV1A_64,
                             .servers = s, .nservers = 1 };
    struct conf_index ci = { .enabled = true,
                             .redis = { .text = "127.0.0.1:1", .host = "127.0.0.1",
                                        .port = 1 },
                             .prefix = "rp:t", .queue_max = 10 };
    char err[256];

    f->base = event_base_new();
    f->ring = ring_build(&p, err, sizeof(err));
    ck_assert_msg(f->ring != NULL, "%s", err);
    f->x = idx_new(f->base, "t", &ci, f->ring);
    ck_assert_ptr_nonnull(f->x);
}

static void fixture_free(struct fixture *f)
{
    idx_free(f->x);
    ring_unref(f->ring);
    event_base_free(f->base);
}

START_TEST(auth_refusals_are_auth_failed)
{
    ck_assert_int_eq(idx_classify_error("WRONGPASS invalid username-password pair or "
                                        "user is disabled."), IDX_H_AUTH_FAILED);
    ck_assert_int_eq(idx_classify_error("NOAUTH Authentication required."),
                     IDX_H_AUTH_FAILED);
    ck_assert_int_eq(idx_classify_error("ERR invalid password"), IDX_H_AUTH_FAILED);
    ck_assert_int_eq(idx_classify_error("NOPERM this user has no permissions to run "
                                        "the 'zadd' command"), IDX_H_AUTH_FAILED);
}
END_TEST

START_TEST(auth_to_a_redis_without_password_is_harmless)
{
    ck_assert_int_eq(idx_classify_error("ERR AUTH <password> called without any password "
                                        "configured for the default user. Are you sure "
                                        "your configuration is correct?"), IDX_H_OK);
    ck_assert_int_eq(idx_classify_error("ERR Client sent AUTH, but no password is set"),
                     IDX_H_OK);
}
END_TEST

START_TEST(write_refusals_are_classified)
{
    ck_assert_int_eq(idx_classify_error("OOM command not allowed when used memory > "
                                        "'maxmemory'."), IDX_H_REFUSED_OOM);
    ck_assert_int_eq(idx_classify_error("READONLY You can't write against a read only "
                                        "replica."), IDX_H_REFUSED_READONLY);
    ck_assert_int_eq(idx_classify_error("WRONGTYPE Operation against a key holding the "
                                        "wrong kind of value"), IDX_H_REFUSED_OTHER);
    ck_assert_int_eq(idx_classify_error("ERR unknown command"), IDX_H_REFUSED_OTHER);
    ck_assert_int_eq(idx_classify_error(""), IDX_H_REFUSED_OTHER);
    ck_assert_int_eq(idx_classify_error(NULL), IDX_H_REFUSED_OTHER);
}
END_TEST

START_TEST(script_errors_are_classified_by_what_the_script_hit)
{
    /* Redis 7 keeps the code; Redis 6 wraps it. */
    ck_assert_int_eq(idx_classify_error("OOM command not allowed when used memory > "
                                        "'maxmemory'. script: 56de3f8f, on "
                                        "@user_script:1."), IDX_H_REFUSED_OOM);
    ck_assert_int_eq(idx_classify_error("ERR Error running script (call to f_56de3f8f): "
                                        "@user_script:1: @user_script: 1: -OOM command "
                                        "not allowed when used memory > 'maxmemory'."),
                     IDX_H_REFUSED_OOM);
    ck_assert_int_eq(idx_classify_error("ERR Error running script (call to f_56de3f8f): "
                                        "@user_script:1: Script attempted to access a "
                                        "non local key"), IDX_H_REFUSED_OTHER);
}
END_TEST

START_TEST(the_pool_reports_the_worse_connection)
{
    struct fixture f;
    const char *why;

    fixture_init(&f);
    ck_assert_int_eq(idx_health(f.x, IDX_CONN_COUNT, &why), IDX_H_OK);
    ck_assert_str_eq(why, "");
    idx_redis_down(f.x, IDX_CONN_WRITER, "Connection refused");
    idx_redis_error(f.x, IDX_CONN_COORD, "WRONGPASS invalid username-password pair");
    ck_assert_int_eq(idx_health(f.x, IDX_CONN_COUNT, &why), IDX_H_AUTH_FAILED);
    ck_assert_str_eq(why, "WRONGPASS invalid username-password pair");
    ck_assert_int_eq(idx_health(f.x, IDX_CONN_WRITER, &why), IDX_H_DISCONNECTED);
    ck_assert_str_eq(why, "Connection refused");
    /* The writer's connection back changes nothing: the coordination's
     * refusal stands. */
    idx_redis_ok(f.x, IDX_CONN_WRITER);
    ck_assert_int_eq(idx_health(f.x, IDX_CONN_WRITER, NULL), IDX_H_OK);
    ck_assert_int_eq(idx_health(f.x, IDX_CONN_COUNT, NULL), IDX_H_AUTH_FAILED);
    fixture_free(&f);
}
END_TEST

START_TEST(refusals_are_counted_by_class)
{
    struct fixture f;

    fixture_init(&f);
    idx_redis_error(f.x, IDX_CONN_WRITER, "OOM command not allowed");
    idx_redis_error(f.x, IDX_CONN_COORD, "OOM command not allowed. script: 1");
    idx_redis_error(f.x, IDX_CONN_WRITER, "NOAUTH Authentication required.");
    idx_redis_error(f.x, IDX_CONN_WRITER, "READONLY You can't write");
    idx_redis_error(f.x, IDX_CONN_WRITER, "WRONGTYPE Operation");
    ck_assert_int_eq(idx_redis_error(f.x, IDX_CONN_WRITER, "ERR AUTH <password> called "
                                     "without any password configured"), IDX_H_OK);
    const uint64_t *st = idx_stats(f.x);
    ck_assert_uint_eq(st[IDX_STAT_errors_oom], 2);
    ck_assert_uint_eq(st[IDX_STAT_errors_auth], 1);
    ck_assert_uint_eq(st[IDX_STAT_errors_readonly], 1);
    ck_assert_uint_eq(st[IDX_STAT_errors_other], 1);
    ck_assert_uint_gt(st[IDX_STAT_last_error_time], 0);
    fixture_free(&f);
}
END_TEST

START_TEST(a_refusal_outlasts_an_answer_right_after_it)
{
    struct fixture f;

    fixture_init(&f);
    idx_redis_error(f.x, IDX_CONN_WRITER, "OOM command not allowed");
    /* One command taken among refused ones is no recovery yet: the state
     * clears only after a calm spell (IDX_HEALTH_CALM_MS, on a timer). */
    idx_redis_ok(f.x, IDX_CONN_WRITER);
    ck_assert_int_eq(idx_health(f.x, IDX_CONN_COUNT, NULL), IDX_H_REFUSED_OOM);
    /* Coming back from a lost connection is a recovery at once. */
    idx_redis_down(f.x, IDX_CONN_COORD, "Connection reset");
    idx_redis_ok(f.x, IDX_CONN_COORD);
    ck_assert_int_eq(idx_health(f.x, IDX_CONN_COORD, NULL), IDX_H_OK);
    fixture_free(&f);
}
END_TEST

static Suite *index_suite(void)
{
    Suite *s = suite_create("index");
    TCase *tc = tcase_create("health");

    tcase_add_test(tc, auth_refusals_are_auth_failed);
    tcase_add_test(tc, auth_to_a_redis_without_password_is_harmless);
    tcase_add_test(tc, write_refusals_are_classified);
    tcase_add_test(tc, script_errors_are_classified_by_what_the_script_hit);
    tcase_add_test(tc, the_pool_reports_the_worse_connection);
    tcase_add_test(tc, refusals_are_counted_by_class);
    tcase_add_test(tc, a_refusal_outlasts_an_answer_right_after_it);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(index_suite());

    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
