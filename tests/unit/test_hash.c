/*
 * test_hash.c — the key hashes, pinned to vectors from the implementations
 * operators already run.
 *
 * Where the numbers come from:
 * - md5 "test", fnv1a_64 "apple", md5 "apple" and the digest "server1-8":
 *   the published libketama and twemproxy test vectors (docs/ARCHITECTURE.md, "Ring placement").
 * - md5, crc32, fnv1_64, fnv1a_64, fnv1_32, fnv1a_32, one_at_a_time, murmur,
 *   jenkins over the key set below: printed by a throwaway program against
 *   Debian 12's libmemcached 1.1.4 (libhashkit), calling
 *   libhashkit_digest(key, len, HASHKIT_HASH_*) with HASHKIT_HASH_MD5, _CRC,
 *   _FNV1_64, _FNV1A_64, _FNV1_32, _FNV1A_32, _DEFAULT (one-at-a-time),
 *   _MURMUR and _JENKINS. twemproxy's hashkit is a copy of libhashkit's, with
 *   the same signed-char reads.
 * - crc32a: Python's zlib.crc32 (the real CRC-32; libmemcached has none).
 * - crc16, hsieh: libmemcached has neither; the vectors come from twemproxy
 *   0.5.0's own functions (the version Debian ships as nutcracker), compiled
 *   on their own outside this repository. crc16 there is CRC-16/XMODEM whose
 *   register is never cut to 16 bits (newer twemproxy switched to CRC-16/ARC,
 *   which places keys differently).
 */
#include <check.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hash.h"
#include "check_run.h"

#define KEY(s) { s, sizeof(s) - 1 }

static const struct {
    const char *key;
    size_t len;
} keys[] = {
    KEY(""),
    KEY("a"),
    KEY("apple"),
    KEY("test"),
    KEY("hello world"),
    KEY("user:42"),
    KEY("abcdefghijkl"),        /* exactly one jenkins block */
    KEY("abcdefghijklm"),       /* one block and a 1-byte tail */
    KEY("The quick brown fox jumps over the lazy dog"),
    KEY("123456789"),           /* the CRC catalogue's check input */
    KEY("\x80"),                /* bytes >= 0x80: the signed-char quirk */
    KEY("caf\xc3\xa9"),
    KEY("\xff\xfe\xfd\xfc"),
    KEY("k\xe9y\xa0-\x7f\x80"),
    KEY("a\0b"),                /* an embedded NUL is hashed, not a terminator */
};
#define NKEYS (sizeof(keys) / sizeof(keys[0]))

static const struct {
    enum hash_kind hash;
    uint32_t want[NKEYS];
} vectors[] = {
    { HASH_MD5, { 3649838548u, 3111502092u, 3195025439u, 3446378249u,
        3141252702u, 417323606u, 114739615u, 3518869026u, 2642219166u,
        2498230565u, 2128427405u, 3833532679u, 4255798666u, 2821770343u,
        1611609456u } },
    /* crc16: Debian's nutcracker 0.5.0 computes CRC-16/XMODEM without cutting
     * the register to 16 bits; these come from that nc_crc16.c compiled on its
     * own (not part of this repo), and placement through a running nutcracker
     * is checked in tests/integration/test_placement.py. */
    { HASH_CRC16, { 0u, 31879u, 3662830516u, 4173241094u, 4060494820u,
        1849310728u, 2742204415u, 1924633911u, 581169352u, 2257596867u,
        37256u, 4129724007u, 230815998u, 754723099u, 2084102335u } },
    { HASH_CRC32, { 0u, 26807u, 10542u, 22655u, 3402u, 25711u, 30328u,
        24052u, 16719u, 19444u, 16314u, 6317u, 21762u, 27061u, 5608u } },
    { HASH_CRC32A, { 0u, 3904355907u, 2838417488u, 3632233996u, 222957957u,
        1684999558u, 4135066404u, 3723783842u, 1095738169u, 3421780262u,
        1069182125u, 2561491637u, 1426237168u, 3920962874u, 367556721u } },
    { HASH_FNV1_64, { 2216829733u, 2248259518u, 473199127u, 2680995689u,
        2979073647u, 4068646096u, 3665453173u, 1039263394u, 2112060110u,
        737744598u, 2046707807u, 2315714289u, 2729462425u, 99531690u,
        1806690060u } },
    { HASH_FNV1A_64, { 2216829733u, 2248273036u, 1488911807u, 427567909u,
        37540583u, 3704758722u, 3764018357u, 965460744u, 3890508048u,
        600231420u, 2046684255u, 3472276361u, 3929833489u, 2287754280u,
        69625522u } },
    { HASH_FNV1_32, { 2166136261u, 84696446u, 67176023u, 3157003241u,
        1418570095u, 4160126384u, 1705886421u, 3851007266u, 3922226286u,
        605325334u, 4210270879u, 3598905713u, 1031254521u, 2784275882u,
        1704748236u } },
    { HASH_FNV1A_32, { 2166136261u, 3826002220u, 280767167u, 2949673445u,
        3582672807u, 795573122u, 3908779541u, 998463208u, 76545936u,
        3146166556u, 83079839u, 1970454601u, 2449227761u, 1918660424u,
        284404690u } },
    { HASH_ONE_AT_A_TIME, { 0u, 3392050242u, 2297466611u, 1064684737u,
        1045060183u, 809463786u, 1616577344u, 1838806748u, 1369346549u,
        3328923845u, 3273477671u, 3650908318u, 1399078721u, 3613980936u,
        1528948502u } },
    { HASH_MURMUR, { 0u, 1262581116u, 4142305122u, 1931824287u, 1578702139u,
        1601091210u, 3087340362u, 696768699u, 818385189u, 3077965456u,
        2421514821u, 3658586143u, 2171917561u, 2379598814u, 4281723139u } },
    { HASH_JENKINS, { 3735928572u, 3768813200u, 1442444624u, 1187193781u,
        355681275u, 3301358738u, 4220209635u, 3055675487u, 314054204u,
        427260662u, 2976898632u, 3412207021u, 3847303519u, 1749354797u,
        3319404765u } },
    /* hsieh: libhashkit in Debian is built without it, so these come from
     * twemproxy's own nc_hsieh.c compiled on its own (not part of this repo). */
    { HASH_HSIEH, { 0u, 2472816263u, 3738850110u, 942683319u, 1333368947u,
        2924191657u, 1600274825u, 1892570132u, 471461527u, 3841726064u,
        3606367026u, 3728705621u, 2813989972u, 2115471079u, 754580426u } },
};
#define NVECTORS (sizeof(vectors) / sizeof(vectors[0]))

/* --- published vectors --------------------------------------------------- */

START_TEST(md5_matches_libketama_hashi)
{
    ck_assert_uint_eq(hash_md5("test", 4), 3446378249u);
}
END_TEST

START_TEST(md5_matches_twemproxy)
{
    ck_assert_uint_eq(hash_md5("apple", 5), 3195025439u);
}
END_TEST

START_TEST(fnv1a_64_matches_twemproxy)
{
    ck_assert_uint_eq(hash_fnv1a_64("apple", 5), 1488911807u);
}
END_TEST

START_TEST(digest_gives_four_points_in_libketama_order)
{
    static const uint32_t want[4] = { 3853726576u, 1491449930u, 639619849u,
                                      2667054752u };
    uint8_t d[16];

    hash_md5_digest("server1-8", 9, d);
    for (unsigned h = 0; h < 4; h++) {
        ck_assert_uint_eq(hash_digest_point(d, h), want[h]);
    }
    /* Point 0 of a digest is what hash_md5 returns for the same input. */
    ck_assert_uint_eq(hash_digest_point(d, 0), hash_md5("server1-8", 9));
}
END_TEST

/* RFC 1321's test suite (appendix A.5). */
START_TEST(md5_matches_rfc1321)
{
    static const struct { const char *msg; const char *hex; } v[] = {
        { "", "d41d8cd98f00b204e9800998ecf8427e" },
        { "a", "0cc175b9c0f1b6a831c399e269772661" },
        { "abc", "900150983cd24fb0d6963f7d28e17f72" },
        { "message digest", "f96b697d7cb7938d525a2f31aaf161d0" },
        { "abcdefghijklmnopqrstuvwxyz", "c3fcd3d76192e4007dfb496cca67e13b" },
        { "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
          "d174ab98d277d9f5a5611c2c9f419d9f" },
        { "1234567890123456789012345678901234567890"
          "1234567890123456789012345678901234567890",
          "57edf4a22be3c955ac49da2e2107b67a" },
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        uint8_t d[16];
        char hex[33];
        hash_md5_digest(v[i].msg, strlen(v[i].msg), d);
        for (int j = 0; j < 16; j++) {
            snprintf(hex + 2 * j, 3, "%02x", d[j]);
        }
        ck_assert_str_eq(hex, v[i].hex);
    }
}
END_TEST

/* The one-block path (keys of up to 55 bytes) against libmd's whole MD5, at
 * every length across the block boundary, over every byte value. */
START_TEST(md5_one_block_path_agrees_with_libmd)
{
    uint8_t buf[200], d[16], want[16];

    for (size_t len = 0; len <= sizeof(buf); len++) {
        for (unsigned seed = 0; seed < 8; seed++) {
            for (size_t i = 0; i < len; i++) {
                buf[i] = (uint8_t)(i * 131u + seed * 29u + len * 7u);
            }
            hash_md5_digest(buf, len, d);
            hash_md5_digest_libmd(buf, len, want);
            ck_assert_mem_eq(d, want, 16);
            ck_assert_uint_eq(hash_md5((const char *)buf, len), hash_digest_point(want, 0));
        }
    }
}
END_TEST

/* --- every hash against its reference implementation --------------------- */

START_TEST(every_hash_matches_reference_vectors)
{
    const enum hash_kind h = vectors[_i].hash;

    for (size_t k = 0; k < NKEYS; k++) {
        uint32_t got = hash_fns[h](keys[k].key, keys[k].len);
        ck_assert_msg(got == vectors[_i].want[k],
                      "%s(key #%zu, %zu bytes) = %u, reference says %u",
                      hash_names[h], k, keys[k].len, got, vectors[_i].want[k]);
    }
}
END_TEST

START_TEST(every_hash_has_vectors)
{
    bool covered[HASH_COUNT] = { false };

    for (size_t i = 0; i < NVECTORS; i++) {
        covered[vectors[i].hash] = true;
    }
    for (int h = 0; h < HASH_COUNT; h++) {
        ck_assert_msg(covered[h], "hash %s has no reference vectors",
                      hash_names[h]);
    }
}
END_TEST

START_TEST(fnv_and_one_at_a_time_read_bytes_as_signed_char)
{
    /* FNV-1a 32 of "\x80": sign-extended 0xffffff80 gives 83079839, an
     * unsigned read would give 2232128415 (libhashkit agrees with the former). */
    ck_assert_uint_eq(hash_fnv1a_32("\x80", 1), 83079839u);
    ck_assert_uint_ne(hash_fnv1a_32("\x80", 1), 2232128415u);
    /* One-at-a-time of "\x80": 3273477671 signed, 662687451 unsigned. */
    ck_assert_uint_eq(hash_one_at_a_time("\x80", 1), 3273477671u);
    ck_assert_uint_ne(hash_one_at_a_time("\x80", 1), 662687451u);
}
END_TEST

START_TEST(crc32_keeps_15_bits_of_the_real_crc32)
{
    for (size_t k = 0; k < NKEYS; k++) {
        uint32_t c = hash_crc32(keys[k].key, keys[k].len);
        ck_assert_uint_lt(c, 32768);
        ck_assert_uint_eq(c, (hash_crc32a(keys[k].key, keys[k].len) >> 16) & 0x7fff);
    }
}
END_TEST

START_TEST(hash_names_round_trip)
{
    for (int h = 0; h < HASH_COUNT; h++) {
        ck_assert_int_eq(hash_by_name(hash_names[h]), h);
        ck_assert_ptr_nonnull(hash_fns[h]);
    }
    ck_assert_int_eq(hash_by_name("fnv1a_64"), HASH_FNV1A_64);
    ck_assert_int_eq(hash_by_name("md5"), HASH_MD5);
    ck_assert_int_eq(hash_by_name("sha256"), -1);
    ck_assert_int_eq(hash_by_name("MD5"), -1);
    ck_assert_int_eq(hash_by_name(""), -1);
}
END_TEST

/* --- hash_tag (twemproxy's server_pool_idx) ------------------------------ */

/* What hash_apply_tag leaves of key, as a NUL-terminated copy. */
static char *tagged(const char *tag, const char *key)
{
    const char *k = key;
    size_t len = strlen(key);
    char *out;

    hash_apply_tag(tag, &k, &len);
    ck_assert(k >= key && k + len <= key + strlen(key));
    out = strndup(k, len);
    ck_assert_ptr_nonnull(out);
    return out;
}

static void check_tag(const char *tag, const char *key, const char *want)
{
    char *got = tagged(tag, key);

    ck_assert_msg(strcmp(got, want) == 0, "tag %.2s on '%s' hashes '%s', "
                  "expected '%s'", tag, key, got, want);
    free(got);
}

START_TEST(hash_tag_hashes_the_part_between_the_tags)
{
    check_tag("{}", "user:{42}:name", "42");
    check_tag("{}", "{42}", "42");
    check_tag("$$", "a$bc$d", "bc");
    /* The same tag content lands on the same hash. */
    const char *a = "user:{42}:name", *b = "{42}:cart";
    size_t la = strlen(a), lb = strlen(b);
    hash_apply_tag("{}", &a, &la);
    hash_apply_tag("{}", &b, &lb);
    ck_assert_uint_eq(hash_fnv1a_64(a, la), hash_fnv1a_64(b, lb));
}
END_TEST

START_TEST(hash_tag_without_closing_tag_hashes_whole_key)
{
    check_tag("{}", "user:{42:name", "user:{42:name");
    check_tag("{}", "user:42}:name", "user:42}:name");
    check_tag("{}", "plain", "plain");
    check_tag("{}", "", "");
}
END_TEST

START_TEST(hash_tag_empty_tag_hashes_whole_key)
{
    check_tag("{}", "user:{}:name", "user:{}:name");
    /* Only the first opening tag and the first closing tag after it count. */
    check_tag("{}", "a{}{b}", "a{}{b}");
    check_tag("{}", "a{b}{c}", "b");
}
END_TEST

START_TEST(hash_tag_at_end_of_key)
{
    check_tag("{}", "user:{42}", "42");
    check_tag("{}", "user:{", "user:{");
    check_tag("{}", "user:{4", "user:{4");
}
END_TEST

static Suite *hash_suite(void)
{
    Suite *s = suite_create("hash");
    TCase *tc = tcase_create("vectors");

    tcase_add_test(tc, md5_matches_libketama_hashi);
    tcase_add_test(tc, md5_matches_twemproxy);
    tcase_add_test(tc, fnv1a_64_matches_twemproxy);
    tcase_add_test(tc, digest_gives_four_points_in_libketama_order);
    tcase_add_test(tc, md5_matches_rfc1321);
    tcase_add_test(tc, md5_one_block_path_agrees_with_libmd);
    tcase_add_loop_test(tc, every_hash_matches_reference_vectors, 0, NVECTORS);
    tcase_add_test(tc, every_hash_has_vectors);
    tcase_add_test(tc, fnv_and_one_at_a_time_read_bytes_as_signed_char);
    tcase_add_test(tc, crc32_keeps_15_bits_of_the_real_crc32);
    tcase_add_test(tc, hash_names_round_trip);
    suite_add_tcase(s, tc);

    tc = tcase_create("hash_tag");
    tcase_add_test(tc, hash_tag_hashes_the_part_between_the_tags);
    tcase_add_test(tc, hash_tag_without_closing_tag_hashes_whole_key);
    tcase_add_test(tc, hash_tag_empty_tag_hashes_whole_key);
    tcase_add_test(tc, hash_tag_at_end_of_key);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return check_run(hash_suite());
}
