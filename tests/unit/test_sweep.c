/*
 * test_sweep.c — the index sweeper's rules that need no server
 * (docs/ARCHITECTURE.md, "The sweeper"): which members may be put in a
 * command line, and a sweeper that is off does nothing and leaves at once.
 * Its work against real memcached and Redis: tests/integration/test_sweep.py.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <event2/buffer.h>
#include <event2/event.h>

#include "config.h"
#include "proto.h"
#include "sweep.h"
#include "check_run.h"

START_TEST(members_that_are_memcached_keys_are_accepted)
{
    char longest[250];

    memset(longest, 'k', sizeof(longest));
    ck_assert(proto_key_ok("a", 1));
    ck_assert(proto_key_ok(longest, sizeof(longest)));
    ck_assert(proto_key_ok("caf\xc3\xa9:\xff", 7));     /* any byte above space */
    ck_assert(proto_key_ok("{tag}:~!", 8));
}
END_TEST

START_TEST(members_that_would_change_a_command_line_are_refused)
{
    static const char *const bad[] = { "a b", "x\r\nflush_all", "x\nflush_all", "tab\tx",
                                       "ctl\x01x", "del\x7f", " lead", "trail " };
    char too_long[251];

    memset(too_long, 'k', sizeof(too_long));
    ck_assert(!proto_key_ok("", 0));
    ck_assert(!proto_key_ok(too_long, sizeof(too_long)));
    ck_assert(!proto_key_ok("nul\0x", 5));
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ck_assert_msg(!proto_key_ok(bad[i], strlen(bad[i])), "accepted %s", bad[i]);
    }
}
END_TEST

START_TEST(a_background_sweeper_at_rate_zero_is_off_and_leaves_at_once)
{
    struct conf_index ix = { .enabled = true, .prefix = "rp:test",
        .redis = { .text = "127.0.0.1:1", .host = "127.0.0.1", .port = 1 } };
    struct sweep_opts o = { .pool = "test", .index = &ix, .background = true };
    struct sweep_env env = { .may_run = true, .rate = 0 };
    struct event_base *base = event_base_new();
    struct sweep *s = sweep_new(base, &o);
    struct evbuffer *out = evbuffer_new();

    ck_assert_ptr_nonnull(s);
    sweep_tick(s, 1000, &env);
    ck_assert_int_eq(sweep_get_state(s), SWEEP_OFF);
    ck_assert_str_eq(sweep_error(s), "");
    sweep_stats_text(s, out);
    evbuffer_add(out, "", 1);
    ck_assert_ptr_nonnull(strstr((const char *)evbuffer_pullup(out, -1),
                                 "STAT sweep:state off\r\nSTAT sweep:pass 0\r\n"));
    ck_assert_ptr_nonnull(strstr((const char *)evbuffer_pullup(out, -1),
                                 "STAT sweep:removed_gone 0\r\n"));
    sweep_leave(s);
    ck_assert(sweep_left(s));       /* nothing held: nothing to give back */
    sweep_free(s);
    evbuffer_free(out);
    event_base_free(base);
}
END_TEST

static Suite *sweep_suite(void)
{
    Suite *s = suite_create("sweep");
    TCase *tc = tcase_create("sweep");

    tcase_add_test(tc, members_that_are_memcached_keys_are_accepted);
    tcase_add_test(tc, members_that_would_change_a_command_line_are_refused);
    tcase_add_test(tc, a_background_sweeper_at_rate_zero_is_off_and_leaves_at_once);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return check_run(sweep_suite());
}
