/*
 * test_evmem.c — libevent's allocator (src/evmem.h): a thread takes back the
 * buffer blocks it freed, only blocks of 1 to 16 KiB (powers of two) and
 * only up to EVMEM_CACHE_BYTES; realloc keeps the bytes across sizes; what a
 * thread keeps is released at its exit (LeakSanitizer, in the SAN build,
 * fails the suite otherwise); and evbuffers installed on it keep their bytes
 * while reusing blocks.
 */
#include <check.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <event2/buffer.h>

#include "evmem.h"
#include "check_run.h"

START_TEST(a_freed_block_is_taken_back_by_the_next_of_its_size)
{
    void *a = evmem_malloc(1024);
    ck_assert_ptr_nonnull(a);
    memset(a, 0xab, 1024);
    evmem_free(a);
    ck_assert_uint_eq(evmem_cached_bytes(), 1024);
    void *other = evmem_malloc(2048);   /* another size: not it */
    ck_assert_ptr_ne(other, a);
    ck_assert_uint_eq(evmem_cached_bytes(), 1024);
    void *b = evmem_malloc(1024);
    ck_assert_ptr_eq(b, a);
    ck_assert_uint_eq(evmem_cached_bytes(), 0);
    evmem_free(b);
    evmem_free(other);
    evmem_release();
    ck_assert_uint_eq(evmem_cached_bytes(), 0);
}
END_TEST

START_TEST(only_powers_of_two_from_1_to_16_kib_are_kept)
{
    static const size_t kept[] = { 1024, 2048, 4096, 8192, 16384 };
    static const size_t not_kept[] = { 1, 136, 512, 1000, 1025, 3000, 32768, 65536 };

    for (size_t i = 0; i < sizeof(not_kept) / sizeof(not_kept[0]); i++) {
        evmem_free(evmem_malloc(not_kept[i]));
        ck_assert_uint_eq(evmem_cached_bytes(), 0);
    }
    size_t sum = 0;
    for (size_t i = 0; i < sizeof(kept) / sizeof(kept[0]); i++) {
        evmem_free(evmem_malloc(kept[i]));
        sum += kept[i];
        ck_assert_uint_eq(evmem_cached_bytes(), sum);
    }
    evmem_release();
    ck_assert_uint_eq(evmem_cached_bytes(), 0);
}
END_TEST

START_TEST(a_thread_keeps_at_most_its_budget)
{
    enum { N = EVMEM_CACHE_BYTES / 1024 + 50 };
    static void *blocks[N];

    for (int i = 0; i < N; i++) {
        blocks[i] = evmem_malloc(1024);
        ck_assert_ptr_nonnull(blocks[i]);
    }
    for (int i = 0; i < N; i++) {
        evmem_free(blocks[i]);
        ck_assert_uint_le(evmem_cached_bytes(), EVMEM_CACHE_BYTES);
    }
    ck_assert_uint_eq(evmem_cached_bytes(), EVMEM_CACHE_BYTES);
    evmem_release();
}
END_TEST

START_TEST(realloc_keeps_the_bytes_across_sizes)
{
    static const size_t sizes[] = { 1024, 5000, 16384, 100, 2048, 70000, 1024 };
    uint8_t *p = evmem_realloc(NULL, 100);
    size_t have = 100;

    for (size_t i = 0; i < have; i++) {
        p[i] = (uint8_t)(i * 7);
    }
    for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        p = evmem_realloc(p, sizes[s]);
        ck_assert_ptr_nonnull(p);
        size_t keep = have < sizes[s] ? have : sizes[s];
        for (size_t i = 0; i < keep; i++) {
            ck_assert_uint_eq(p[i], (uint8_t)(i * 7));
        }
        for (size_t i = keep; i < sizes[s]; i++) {
            p[i] = (uint8_t)(i * 7);
        }
        have = sizes[s];
    }
    evmem_free(p);
    evmem_release();
}
END_TEST

static void *keep_some(void *arg)
{
    size_t *kept = arg;
    void *b[8];

    for (int i = 0; i < 8; i++) {
        b[i] = evmem_malloc(4096);
    }
    for (int i = 0; i < 8; i++) {
        evmem_free(b[i]);
    }
    *kept = evmem_cached_bytes();
    return NULL;    /* the exit hook releases them */
}

START_TEST(a_thread_keeps_its_own_blocks_and_releases_them_at_exit)
{
    pthread_t t;
    size_t kept = 0;

    ck_assert_int_eq(pthread_create(&t, NULL, keep_some, &kept), 0);
    ck_assert_int_eq(pthread_join(t, NULL), 0);
    ck_assert_uint_eq(kept, 8 * 4096);
    /* Released at its exit: in the SAN build LeakSanitizer fails the
     * suite otherwise (it does when the exit hook is taken out). */
}
END_TEST

/* The way the proxy uses it: buffers filled and drained, request after
 * request, on blocks taken back from the cache. */
START_TEST(evbuffers_keep_their_bytes_on_reused_blocks)
{
    struct evbuffer *b = evbuffer_new();
    char line[64], out[64];

    ck_assert_ptr_nonnull(b);
    for (int i = 0; i < 10000; i++) {
        int n = snprintf(line, sizeof(line), "get key:%d\r\n", i);
        ck_assert_int_eq(evbuffer_add(b, line, (size_t)n), 0);
        ck_assert_int_eq(evbuffer_remove(b, out, sizeof(out)), n);
        ck_assert_mem_eq(out, line, (size_t)n);
        ck_assert_uint_eq(evbuffer_get_length(b), 0);
    }
    ck_assert_uint_gt(evmem_cached_bytes(), 0);     /* libevent's went through here */
    evbuffer_free(b);
    evmem_release();
}
END_TEST

static Suite *evmem_suite(void)
{
    Suite *s = suite_create("evmem");
    TCase *tc = tcase_create("cache");

    tcase_add_test(tc, a_freed_block_is_taken_back_by_the_next_of_its_size);
    tcase_add_test(tc, only_powers_of_two_from_1_to_16_kib_are_kept);
    tcase_add_test(tc, a_thread_keeps_at_most_its_budget);
    tcase_add_test(tc, realloc_keeps_the_bytes_across_sizes);
    tcase_add_test(tc, a_thread_keeps_its_own_blocks_and_releases_them_at_exit);
    tcase_add_test(tc, evbuffers_keep_their_bytes_on_reused_blocks);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    evmem_install();    /* before libevent allocates anything */
    evmem_set_budget(EVMEM_CACHE_BYTES);    /* the release build's, in every build */
    return check_run(evmem_suite());
}
