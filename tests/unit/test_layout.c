/* test_layout.c — the compact index's rules: which sub-set a score goes
 * to, where a full one splits, the thresholds read from Redis, the name
 * the script is called by. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <hiredis/hiredis.h>

#include "layout.h"
#include "check_run.h"

START_TEST(a_score_goes_to_the_greatest_low_at_or_below_it)
{
    const uint32_t lows[] = { 0, 100, 5000, 4000000000u };

    ck_assert_int_eq(lay_pick(lows, 4, 0), 0);
    ck_assert_int_eq(lay_pick(lows, 4, 99), 0);
    ck_assert_int_eq(lay_pick(lows, 4, 100), 1);
    ck_assert_int_eq(lay_pick(lows, 4, 4999), 1);
    ck_assert_int_eq(lay_pick(lows, 4, 5000), 2);
    ck_assert_int_eq(lay_pick(lows, 4, 3999999999u), 2);
    ck_assert_int_eq(lay_pick(lows, 4, LAY_SCORE_MAX), 3);
    /* no directory yet: the first write makes the sub-set of low 0 */
    ck_assert_int_eq(lay_pick(lows, 0, 7), -1);
    /* a directory without 0 (never written so) names nothing below its first */
    ck_assert_int_eq(lay_pick(lows + 1, 3, 50), -1);
}
END_TEST

START_TEST(a_full_sub_set_splits_at_its_median)
{
    uint32_t s[128], at = 0;

    for (uint32_t i = 0; i < 128; i++) {
        s[i] = 1000 + 10 * i;
    }
    ck_assert(lay_split_at(s, 128, 1000, &at));
    ck_assert_uint_eq(at, s[64]);       /* 64 stay, 64 move */
    ck_assert(lay_split_at(s, 3, 1000, &at));
    ck_assert_uint_eq(at, s[1]);
}
END_TEST

START_TEST(a_split_never_leaves_the_lower_part_empty)
{
    /* the lower half all at the sub-set's low: split above it */
    uint32_t s[8] = { 50, 50, 50, 50, 50, 60, 70, 80 }, at = 0;

    ck_assert(lay_split_at(s, 8, 50, &at));
    ck_assert_uint_eq(at, 60);
    /* every score the low: it cannot split (the set may outgrow the
     * threshold; nothing is lost) */
    uint32_t same[4] = { 9, 9, 9, 9 };
    ck_assert(!lay_split_at(same, 4, 9, &at));
    ck_assert(!lay_split_at(same, 0, 9, &at));
}
END_TEST

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/*
 * The script's rules, replayed in C over a v-node's worth of random
 * hashes: no sub-set ever passes the threshold, every score lies between
 * its sub-set's low and the next, and sub-sets are about three quarters
 * full (what `index stats` tells operators to expect).
 */
START_TEST(splitting_as_they_fill_keeps_every_sub_set_within_the_threshold)
{
    enum { LIM = 128, KEYS = 20000, MAXSETS = 1024 };
    static uint32_t lows[MAXSETS], sets[MAXSETS][LIM + 1];
    static uint32_t nsets, count[MAXSETS];
    uint32_t seed = 12345;

    nsets = 0;
    for (int k = 0; k < KEYS; k++) {
        seed = seed * 1103515245u + 12345u;
        uint32_t h = seed ^ (seed >> 15);
        int i = lay_pick(lows, nsets, h);
        if (i < 0) {
            lows[0] = 0;
            nsets = 1;
            i = 0;
        }
        if (count[i] == LIM) {
            uint32_t at;
            qsort(sets[i], count[i], sizeof(uint32_t), cmp_u32);
            ck_assert(lay_split_at(sets[i], count[i], lows[i], &at));
            ck_assert_uint_gt(at, lows[i]);
            ck_assert_uint_lt(nsets, MAXSETS);
            /* insert the new sub-set after i, the upper part moved there */
            memmove(&lows[i + 2], &lows[i + 1], (nsets - (uint32_t)i - 1) * sizeof(*lows));
            memmove(&sets[i + 2], &sets[i + 1], (nsets - (uint32_t)i - 1) * sizeof(*sets));
            memmove(&count[i + 2], &count[i + 1], (nsets - (uint32_t)i - 1) * sizeof(*count));
            lows[i + 1] = at;
            uint32_t keep = 0;
            count[i + 1] = 0;
            for (uint32_t j = 0; j < count[i]; j++) {
                if (sets[i][j] >= at) {
                    sets[i + 1][count[i + 1]++] = sets[i][j];
                } else {
                    sets[i][keep++] = sets[i][j];
                }
            }
            count[i] = keep;
            nsets++;
            i = lay_pick(lows, nsets, h);
        }
        sets[i][count[i]++] = h;
    }
    uint32_t total = 0;
    for (uint32_t i = 0; i < nsets; i++) {
        ck_assert_uint_le(count[i], LIM);
        ck_assert_uint_gt(count[i], 0);
        for (uint32_t j = 0; j < count[i]; j++) {
            ck_assert_uint_ge(sets[i][j], lows[i]);
            if (i + 1 < nsets) {
                ck_assert_uint_lt(sets[i][j], lows[i + 1]);
            }
        }
        total += count[i];
    }
    ck_assert_uint_eq(total, KEYS);
    double fill = (double)KEYS / (double)nsets / LIM;
    ck_assert_msg(fill > 0.6 && fill < 0.8, "fill %.2f", fill);
}
END_TEST

static redisReply *str(const char *s)
{
    redisReply *r = calloc(1, sizeof(*r));
    r->type = REDIS_REPLY_STRING;
    r->str = strdup(s);
    r->len = strlen(s);
    return r;
}

static redisReply *config_reply(const char *const *kv, size_t n)
{
    redisReply *r = calloc(1, sizeof(*r));
    r->type = REDIS_REPLY_ARRAY;
    r->elements = n;
    r->element = calloc(n, sizeof(*r->element));
    for (size_t i = 0; i < n; i++) {
        r->element[i] = str(kv[i]);
    }
    return r;
}

START_TEST(thresholds_are_read_from_config_get_and_bounded)
{
    struct lay_limits l;
    const char *v7[] = { "zset-max-listpack-value", "64", "zset-max-ziplist-entries", "300",
                         "zset-max-listpack-entries", "256", "zset-max-ziplist-value", "64" };
    const char *huge[] = { "zset-max-listpack-entries", "1000000",
                           "zset-max-listpack-value", "100000" };
    const char *tiny[] = { "zset-max-ziplist-entries", "0", "zset-max-ziplist-value", "0" };
    const char *junk[] = { "zset-max-listpack-entries", "12x", "zset-max-listpack-value", "64" };
    const char *half[] = { "zset-max-listpack-entries", "128" };

    lay_limits_default(&l);
    ck_assert_uint_eq(l.entries, 128);
    ck_assert_uint_eq(l.value, 64);
    ck_assert(!l.from_redis);

    redisReply *r = config_reply(v7, 8);
    ck_assert(lay_limits_parse(&l, r));
    ck_assert_uint_eq(l.entries, 256);  /* the listpack name wins */
    ck_assert_uint_eq(l.value, 64);
    ck_assert(l.from_redis);
    freeReplyObject(r);

    r = config_reply(huge, 4);
    ck_assert(lay_limits_parse(&l, r));
    ck_assert_uint_eq(l.entries, LAY_ENTRIES_MAX);
    ck_assert_uint_eq(l.value, LAY_VALUE_MAX);
    freeReplyObject(r);

    r = config_reply(tiny, 4);
    ck_assert(lay_limits_parse(&l, r));
    ck_assert_uint_eq(l.entries, LAY_ENTRIES_MIN);
    ck_assert_uint_eq(l.value, 0);
    freeReplyObject(r);

    lay_limits_default(&l);
    r = config_reply(junk, 4);
    ck_assert(!lay_limits_parse(&l, r));
    ck_assert_uint_eq(l.entries, 128);
    freeReplyObject(r);
    r = config_reply(half, 2);
    ck_assert(!lay_limits_parse(&l, r));
    freeReplyObject(r);
    ck_assert(!lay_limits_parse(&l, NULL));
    redisReply err = { .type = REDIS_REPLY_ERROR, .str = (char *)"NOPERM" };
    ck_assert(!lay_limits_parse(&l, &err));
    ck_assert(!l.from_redis);
}
END_TEST

START_TEST(the_script_is_called_by_its_sha1)
{
    char out[LAY_SHA_SIZE];
    /* FIPS 180-1's vectors, and the padding's edges (55, 56, 64 bytes) */
    lay_sha1_hex("abc", 3, out);
    ck_assert_str_eq(out, "a9993e364706816aba3e25717850c26c9cd0d89d");
    lay_sha1_hex("", 0, out);
    ck_assert_str_eq(out, "da39a3ee5e6b4b0d3255bfef95601890afd80709");
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    lay_sha1_hex(two, strlen(two), out);
    ck_assert_str_eq(out, "84983e441c3bd26ebaae4aa1f95129e5e54670f1");
    char a[64];
    memset(a, 'a', sizeof(a));
    lay_sha1_hex(a, 55, out);
    ck_assert_str_eq(out, "c1c8bbdc22796e28c0e15163d20899b65621d65a");
    lay_sha1_hex(a, 64, out);
    ck_assert_str_eq(out, "0098ba824b5c16427bd7a1122a5a442a25ec644d");
    ck_assert_uint_eq(strlen(lay_sha()), 40);
}
END_TEST

START_TEST(the_head_of_a_call_names_the_ring_op_and_thresholds)
{
    const char *argv[LAY_HEAD];
    size_t lens[LAY_HEAD];
    char nums[2][12];
    struct lay_limits l = { .entries = 100, .value = 40 };

    ck_assert_int_eq(lay_head(argv, lens, "p:ring", "add", &l, nums), LAY_HEAD);
    ck_assert_str_eq(argv[0], "EVALSHA");
    ck_assert_str_eq(argv[1], lay_sha());
    ck_assert_str_eq(argv[2], "1");
    ck_assert_str_eq(argv[3], "p:ring");
    ck_assert_str_eq(argv[4], "add");
    ck_assert_str_eq(argv[5], "100");
    ck_assert_str_eq(argv[6], "40");
    ck_assert_uint_eq(lens[3], 6);
    ck_assert(lay_noscript("NOSCRIPT No matching script. Please use EVAL."));
    ck_assert(!lay_noscript("ERR something"));
    ck_assert_int_eq(lay_version(NULL), 1);
    ck_assert_int_eq(lay_version("1"), 1);
    ck_assert_int_eq(lay_version("2"), 2);
    ck_assert_int_eq(lay_version("junk"), 1);
}
END_TEST

static Suite *layout_suite(void)
{
    Suite *s = suite_create("layout");
    TCase *tc = tcase_create("rules");

    tcase_add_test(tc, a_score_goes_to_the_greatest_low_at_or_below_it);
    tcase_add_test(tc, a_full_sub_set_splits_at_its_median);
    tcase_add_test(tc, a_split_never_leaves_the_lower_part_empty);
    tcase_add_test(tc, splitting_as_they_fill_keeps_every_sub_set_within_the_threshold);
    tcase_add_test(tc, thresholds_are_read_from_config_get_and_bounded);
    tcase_add_test(tc, the_script_is_called_by_its_sha1);
    tcase_add_test(tc, the_head_of_a_call_names_the_ring_op_and_thresholds);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return check_run(layout_suite());
}
