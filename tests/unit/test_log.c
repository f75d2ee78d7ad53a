/*
 * test_log.c — log lines, and the per-call-site rate limit that keeps a
 * peer able to repeat an event at will from flooding the log (log.h).
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "check_run.h"

static char path[] = "/tmp/rp-test-log-XXXXXX";

static void setup(void)
{
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    ck_assert_int_eq(log_open(path, LOG_INFO), 0);
}

static void teardown(void)
{
    log_close();
    unlink(path);
    strcpy(path, "/tmp/rp-test-log-XXXXXX");
}

/* Lines of the log that contain `needle`. */
static int count_lines(const char *needle)
{
    char line[4096];
    int n = 0;
    FILE *f = fopen(path, "r");

    ck_assert_ptr_nonnull(f);
    while (fgets(line, sizeof(line), f) != NULL) {
        n += strstr(line, needle) != NULL;
    }
    fclose(f);
    return n;
}

static void one_site(int i)
{
    log_limited(LOG_WARN, 5, "test", "bad byte from client %d", i);
}

START_TEST(a_site_writes_at_most_per_sec_lines_a_second)
{
    for (int i = 0; i < 1000; i++) {
        one_site(i);
    }
    ck_assert_int_eq(count_lines("bad byte from client"), 5);
    ck_assert_int_eq(count_lines("suppressed"), 0);
}
END_TEST

START_TEST(the_summary_is_written_once_the_second_is_over)
{
    for (int i = 0; i < 1000; i++) {
        one_site(i);
    }
    log_tick();                 /* the window is not over: nothing yet */
    ck_assert_int_eq(count_lines("suppressed"), 0);
    usleep(1100 * 1000);
    log_tick();
    ck_assert_int_eq(count_lines("warn test: (suppressed 995 similar lines)"), 1);
    log_tick();                 /* written once */
    ck_assert_int_eq(count_lines("suppressed"), 1);
    one_site(0);                /* a new window writes again */
    ck_assert_int_eq(count_lines("bad byte from client"), 6);
}
END_TEST

START_TEST(the_next_line_of_a_site_writes_its_summary_first)
{
    for (int i = 0; i < 10; i++) {
        one_site(i);
    }
    usleep(1100 * 1000);
    one_site(10);
    ck_assert_int_eq(count_lines("(suppressed 5 similar lines)"), 1);
    ck_assert_int_eq(count_lines("bad byte from client"), 6);
}
END_TEST

START_TEST(sites_are_limited_separately)
{
    for (int i = 0; i < 100; i++) {
        one_site(i);
        log_limited(LOG_WARN, 1, "test", "other site %d", i);
    }
    ck_assert_int_eq(count_lines("bad byte from client"), 5);
    ck_assert_int_eq(count_lines("other site"), 1);
}
END_TEST

START_TEST(a_disabled_level_counts_nothing)
{
    for (int i = 0; i < 100; i++) {
        log_limited(LOG_DEBUG, 1, "test", "debug %d", i);
    }
    usleep(1100 * 1000);
    log_tick();
    ck_assert_int_eq(count_lines("test:"), 0);
}
END_TEST

/* A daemon's parent reports the start-up errors it is sent (src/proxy.c). */
START_TEST(error_lines_are_mirrored_without_time_or_level)
{
    int fds[2];
    char got[256] = "";

    ck_assert_int_eq(pipe(fds), 0);
    log_mirror_errors(fds[1]);
    log_notice("proxy", "not an error");
    log_error("proxy", "cannot listen on %s", "127.0.0.1:1");
    log_mirror_errors(-1);
    log_error("proxy", "after the mirror");
    close(fds[1]);
    ck_assert_int_gt(read(fds[0], got, sizeof(got) - 1), 0);
    ck_assert_str_eq(got, "proxy: cannot listen on 127.0.0.1:1\n");
    close(fds[0]);
    ck_assert_int_eq(count_lines("error proxy: cannot listen on 127.0.0.1:1"), 1);
}
END_TEST

static Suite *log_suite(void)
{
    Suite *s = suite_create("log");
    TCase *tc = tcase_create("rate_limit");

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 10);
    tcase_add_test(tc, a_site_writes_at_most_per_sec_lines_a_second);
    tcase_add_test(tc, the_summary_is_written_once_the_second_is_over);
    tcase_add_test(tc, the_next_line_of_a_site_writes_its_summary_first);
    tcase_add_test(tc, sites_are_limited_separately);
    tcase_add_test(tc, a_disabled_level_counts_nothing);
    tcase_add_test(tc, error_lines_are_mirrored_without_time_or_level);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return check_run(log_suite());
}
