/* test_balance.c — how many threads serve: the rule of balance.h. */
#include <check.h>
#include <stdlib.h>

#include "balance.h"
#include "check_run.h"

/* A window of BAL_WINDOW_MS at rate requests/s, the least busy serving
 * thread busy that share of it. */
static uint32_t step(struct balance *b, double rate, double busy, uint64_t *now)
{
    struct bal_sample s = { .ms = BAL_WINDOW_MS,
                            .requests = (uint64_t)(rate * BAL_WINDOW_MS / 1000),
                            .min_busy = busy, .max_busy = busy };

    *now += BAL_WINDOW_MS;
    return balance_step(b, &s, *now);
}

START_TEST(test_auto_starts_on_one_thread)
{
    struct balance b;

    balance_init(&b, 4, 0);
    ck_assert_uint_eq(b.active, 1);
    ck_assert_uint_eq(b.max, 4);
}
END_TEST

START_TEST(test_fixed_count_is_kept_whatever_the_load)
{
    struct balance b;
    uint64_t now = 0;

    balance_init(&b, 4, 3);
    ck_assert_uint_eq(b.active, 3);
    for (int i = 0; i < 20; i++) {
        ck_assert_uint_eq(step(&b, i % 2 ? 500 : 200000, i % 3 ? 1.0 : 0.1, &now), 3);
    }
    ck_assert_uint_eq(b.trials, 0);
    balance_set_fixed(&b, 9);       /* more than there are: all of them */
    ck_assert_uint_eq(b.active, 4);
    balance_set_fixed(&b, 0);       /* back to auto: starts on one again */
    ck_assert_uint_eq(b.active, 1);
}
END_TEST

START_TEST(test_a_saturated_thread_gets_a_trial_kept_only_if_it_gains)
{
    struct balance b;
    uint64_t now = 0;

    balance_init(&b, 2, 0);
    /* One saturated window is not yet a steady load. */
    ck_assert_uint_eq(step(&b, 100000, 0.97, &now), 1);
    ck_assert_uint_eq(step(&b, 100000, 0.97, &now), 2);   /* the trial */
    ck_assert_int_eq(b.state, BAL_TRIAL);
    ck_assert_uint_eq(b.trials, 1);
    /* 4 % more is not enough: back to one, and no trial for a while. */
    ck_assert_uint_eq(step(&b, 104000, 0.7, &now), 1);
    ck_assert_uint_eq(b.undone, 1);
    ck_assert_uint_eq(b.up_wait, 2 * BAL_WAIT_MIN_MS);
    for (uint64_t until = now + 2 * BAL_WAIT_MIN_MS - BAL_WINDOW_MS; now < until;) {
        ck_assert_uint_eq(step(&b, 100000, 0.97, &now), 1);
    }
    ck_assert_uint_eq(step(&b, 100000, 0.97, &now), 2);   /* tried again */
    ck_assert_uint_eq(step(&b, 106000, 0.95, &now), 2);   /* and kept */
    ck_assert_int_eq(b.state, BAL_HOLD);
    ck_assert_uint_eq(b.undone, 1);
    /* The way back waits longer now. */
    ck_assert_uint_eq(b.down_wait, 2 * BAL_WAIT_MIN_MS);
    ck_assert_uint_eq(b.down_at, now + 2 * BAL_WAIT_MIN_MS);
}
END_TEST

START_TEST(test_an_unsteady_load_gets_no_trial)
{
    struct balance b;
    uint64_t now = 0;

    balance_init(&b, 2, 0);
    for (int i = 0; i < 20; i++) {
        ck_assert_uint_eq(step(&b, i % 2 ? 100000 : 70000, 0.99, &now), 1);
    }
    ck_assert_uint_eq(b.trials, 0);
}
END_TEST

START_TEST(test_threads_not_busy_try_one_fewer)
{
    struct balance b;
    uint64_t now = 0;

    balance_init(&b, 3, 0);
    step(&b, 100000, 0.99, &now);
    ck_assert_uint_eq(step(&b, 100000, 0.99, &now), 2);
    ck_assert_uint_eq(step(&b, 150000, 0.6, &now), 2);    /* kept */
    /* Just after a kept trial up, the other way waits (twice the least). */
    for (uint64_t until = now + 2 * BAL_WAIT_MIN_MS - BAL_WINDOW_MS; now < until;) {
        ck_assert_uint_eq(step(&b, 150000, 0.6, &now), 2);
    }
    ck_assert_uint_eq(step(&b, 150000, 0.6, &now), 1);    /* trial down */
    /* 98 % of the rate on one thread fewer: kept. */
    ck_assert_uint_eq(step(&b, 147000, 0.9, &now), 1);
    ck_assert_uint_eq(b.undone, 0);
    ck_assert_uint_eq(b.trials, 2);
}
END_TEST

START_TEST(test_a_trial_down_that_loses_is_undone)
{
    struct balance b;
    uint64_t now = 0;

    balance_init(&b, 2, 2);
    balance_set_fixed(&b, 0);
    ck_assert_uint_eq(b.active, 1);
    /* Get to two first. */
    step(&b, 100000, 0.99, &now);
    step(&b, 100000, 0.99, &now);
    ck_assert_uint_eq(step(&b, 200000, 0.8, &now), 2);
    now += 2 * BAL_WAIT_MIN_MS;
    step(&b, 200000, 0.8, &now);
    ck_assert_uint_eq(step(&b, 200000, 0.8, &now), 1);
    ck_assert_uint_eq(step(&b, 150000, 1.0, &now), 2);    /* undone */
    ck_assert_uint_eq(b.undone, 1);
    ck_assert_uint_eq(b.down_wait, 4 * BAL_WAIT_MIN_MS);
}
END_TEST

START_TEST(test_busy_threads_are_tested_one_fewer_too)
{
    struct balance b;
    uint64_t now = 0;

    balance_init(&b, 2, 0);
    step(&b, 100000, 0.99, &now);
    step(&b, 100000, 0.99, &now);
    ck_assert_uint_eq(step(&b, 120000, 0.99, &now), 2);   /* kept, maybe by luck */
    now = b.down_at;
    step(&b, 120000, 0.99, &now);
    /* Both busy, and still a trial down once the wait is over. */
    ck_assert_uint_eq(step(&b, 120000, 0.99, &now), 1);
    ck_assert_uint_eq(step(&b, 100000, 0.99, &now), 2);   /* and undone */
    ck_assert_uint_eq(b.down_wait, 4 * BAL_WAIT_MIN_MS);
}
END_TEST

START_TEST(test_a_pause_changes_nothing_and_the_load_s_end_resets)
{
    struct balance b;
    uint64_t now = 0;

    balance_init(&b, 4, 0);
    step(&b, 100000, 0.99, &now);
    step(&b, 100000, 0.99, &now);
    ck_assert_uint_eq(step(&b, 200000, 0.99, &now), 2);   /* kept */
    ck_assert_uint_eq(b.down_wait, 2 * BAL_WAIT_MIN_MS);
    /* A pause shorter than BAL_FORGET_MS: nothing changes, no wait resets. */
    for (int i = 0; i < (int)(BAL_FORGET_MS / BAL_WINDOW_MS) - 1; i++) {
        ck_assert_uint_eq(step(&b, 900, 0.01, &now), 2);
    }
    ck_assert_uint_eq(step(&b, 200000, 0.99, &now), 2);
    ck_assert_uint_eq(b.down_wait, 2 * BAL_WAIT_MIN_MS);
    /* BAL_FORGET_MS of idle windows: back to one thread, waits reset. */
    for (int i = 0; i <= (int)(BAL_FORGET_MS / BAL_WINDOW_MS); i++) {
        step(&b, 0, 0.0, &now);
    }
    ck_assert_uint_eq(b.active, 1);
    ck_assert_uint_eq(b.down_wait, BAL_WAIT_MIN_MS);
    ck_assert_uint_eq(b.up_at, 0);
    /* A new load is tried at once. */
    step(&b, 100000, 0.99, &now);
    ck_assert_uint_eq(step(&b, 100000, 0.99, &now), 2);
}
END_TEST

START_TEST(test_a_few_heavy_commands_are_a_load_that_keeps_its_threads)
{
    struct balance b;
    uint64_t now = 0;
    uint32_t changes = 0, last;

    balance_init(&b, 2, 0);
    /* 500 commands/s that saturate one thread (wide multi-gets, say). */
    step(&b, 500, 0.99, &now);
    ck_assert_uint_eq(step(&b, 500, 0.99, &now), 2);
    ck_assert_uint_eq(step(&b, 900, 0.6, &now), 2);       /* kept */
    last = b.active;
    /* Two minutes at two threads half busy: never taken for idle; the
     * trials down lose, and their waits grow. */
    for (int i = 0; i < 240; i++) {
        step(&b, b.active == 2 ? 900 : 500, b.active == 2 ? 0.5 : 0.99, &now);
        changes += b.active != last;
        last = b.active;
    }
    ck_assert_uint_eq(b.active, 2);
    ck_assert_uint_le(changes, 2 * 5);     /* 10, 20, 40, 60, 60 s waits */
}
END_TEST

START_TEST(test_a_load_that_changed_is_judged_without_the_old_waits)
{
    struct balance b;
    uint64_t now = 0;

    balance_init(&b, 2, 2);
    balance_set_fixed(&b, 0);
    step(&b, 100000, 0.99, &now);
    step(&b, 100000, 0.99, &now);
    ck_assert_uint_eq(step(&b, 150000, 0.8, &now), 2);    /* up kept */
    now = b.down_at;
    step(&b, 60000, 0.5, &now);                             /* the load fell */
    step(&b, 60000, 0.5, &now);
    ck_assert_uint_eq(step(&b, 60000, 0.7, &now), 1);     /* down */
    ck_assert_uint_eq(step(&b, 60000, 0.7, &now), 1);     /* kept */
    ck_assert_uint_eq(b.up_wait, 2 * BAL_WAIT_MIN_MS);
    /* A surge saturates the one thread: a new load, tried at once rather
     * than after the doubled wait. */
    step(&b, 95000, 0.99, &now);
    ck_assert_uint_eq(step(&b, 95000, 0.99, &now), 2);
}
END_TEST

START_TEST(test_waits_double_up_to_the_cap_and_counts_stay_in_bounds)
{
    struct balance b;
    uint64_t now = 0;

    balance_init(&b, 2, 0);
    for (int i = 0; i < 12; i++) {
        now = b.up_at;
        step(&b, 100000, 0.99, &now);
        ck_assert_uint_eq(step(&b, 100000, 0.99, &now), 2);
        ck_assert_uint_eq(step(&b, 100000, 0.99, &now), 1);
        ck_assert_uint_le(b.up_wait, BAL_WAIT_MAX_MS);
    }
    ck_assert_uint_eq(b.up_wait, BAL_WAIT_MAX_MS);
    /* At the most threads there are, no trial up; at one, none down. */
    balance_init(&b, 1, 0);
    for (int i = 0; i < 4; i++) {
        ck_assert_uint_eq(step(&b, 100000, i < 2 ? 0.99 : 0.2, &now), 1);
    }
    ck_assert_uint_eq(b.trials, 0);
    /* An empty window changes nothing. */
    struct bal_sample none = { 0 };
    balance_init(&b, 2, 0);
    ck_assert_uint_eq(balance_step(&b, &none, 1), 1);
}
END_TEST

static Suite *balance_suite(void)
{
    Suite *s = suite_create("balance");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, test_auto_starts_on_one_thread);
    tcase_add_test(tc, test_fixed_count_is_kept_whatever_the_load);
    tcase_add_test(tc, test_a_saturated_thread_gets_a_trial_kept_only_if_it_gains);
    tcase_add_test(tc, test_an_unsteady_load_gets_no_trial);
    tcase_add_test(tc, test_threads_not_busy_try_one_fewer);
    tcase_add_test(tc, test_a_trial_down_that_loses_is_undone);
    tcase_add_test(tc, test_busy_threads_are_tested_one_fewer_too);
    tcase_add_test(tc, test_a_pause_changes_nothing_and_the_load_s_end_resets);
    tcase_add_test(tc, test_a_few_heavy_commands_are_a_load_that_keeps_its_threads);
    tcase_add_test(tc, test_a_load_that_changed_is_judged_without_the_old_waits);
    tcase_add_test(tc, test_waits_double_up_to_the_cap_and_counts_stay_in_bounds);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return check_run(balance_suite());
}
