/* test_ringrec.c — the ring record survives Redis: write, read back, compare. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ringrec.h"
#include "check_run.h"

static struct ring *make_ring(enum ring_compat compat, const char *tag,
                              const struct ring_server_spec *s, uint32_t n)
{
    struct ring_params p = { .compat = compat, .hash = HASH_FNV1A_64,
                             .servers = s, .nservers = n };
    char err[256];

    if (tag != NULL) {
        p.has_tag = true;
        memcpy(p.tag, tag, 2);
    }
    struct ring *r = ring_build(&p, err, sizeof(err));
    ck_assert_msg(r != NULL, "%s", err);
    return r;
}

/* Write r's record, parse it back, and check the rings are the same. */
static void assert_round_trip(const struct ring *r, uint64_t epoch)
{
    char *fields[RINGREC_FIELDS * 2];
    int n = ringrec_fields(r, epoch, fields);
    uint64_t got_epoch = 0;

    ck_assert_int_eq(n, RINGREC_FIELDS * 2);
    struct ring *back = ringrec_parse((const char *const *)fields, (size_t)n, &got_epoch);
    ck_assert_ptr_nonnull(back);
    ck_assert_uint_eq(got_epoch, epoch);
    ck_assert_int_eq(back->compat, r->compat);
    ck_assert_int_eq(back->hash, r->hash);
    ck_assert_int_eq(back->has_tag, r->has_tag);
    ck_assert_uint_eq(back->nservers, r->nservers);
    for (uint32_t i = 0; i < r->nservers; i++) {
        ck_assert_str_eq(back->servers[i].identity, r->servers[i].identity);
        ck_assert_str_eq(back->servers[i].addr, r->servers[i].addr);
        ck_assert_uint_eq(back->servers[i].weight, r->servers[i].weight);
    }
    ck_assert_uint_eq(back->npoints, r->npoints);
    ck_assert_mem_eq(back->points, r->points, r->npoints * sizeof(*r->points));
    ringrec_fields_free(fields, n);
    ring_unref(back);
}

START_TEST(record_round_trips_plain_servers)
{
    const struct ring_server_spec s[] = {
        { "mc1", "127.0.0.1:11212", 1 }, { "mc2", "127.0.0.1:11213", 3 },
        { "10.0.0.7", "10.0.0.7:11211", 2 },
    };
    struct ring *r = make_ring(RING_COMPAT_LIBMEMCACHED, NULL, s, 3);

    assert_round_trip(r, 1);
    assert_round_trip(r, 18446744073709551615ull);
    ring_unref(r);
}
END_TEST

START_TEST(record_round_trips_identities_that_need_escaping)
{
    const struct ring_server_spec s[] = {
        { "quote\"d", "/tmp/a b.sock", 1 }, { "back\\slash", "h:1", 1 },
        { "tab\tand\x01ctl", "h:2", 1 }, { "caf\xc3\xa9 {x}", "h:3", 5 },
    };
    struct ring *r = make_ring(RING_COMPAT_LIBKETAMA, "{}", s, 4);

    assert_round_trip(r, 42);
    ring_unref(r);
}
END_TEST

/* The record's text is a contract with every build of a fleet (and the
 * fingerprint is its md5): bytes stay as they are, '"' and '\' take a
 * backslash, control bytes are \u00XX in lowercase hex. */
START_TEST(record_text_is_what_every_build_writes)
{
    const struct ring_server_spec s[] = {
        { "q\"b\\c\x01\x1f\x7f\xff\xc3\xa9", "h:1", 3 }, { "mc2", "/tmp/a b", 1 },
    };
    struct ring *r = make_ring(RING_COMPAT_LIBMEMCACHED, NULL, s, 2);
    char *fields[RINGREC_FIELDS * 2];
    int n = ringrec_fields(r, 7, fields);

    ck_assert_int_eq(n, RINGREC_FIELDS * 2);
    ck_assert_str_eq(fields[n - 2], "servers");
    ck_assert_str_eq(fields[n - 1],
                     "[{\"identity\":\"q\\\"b\\\\c\\u0001\\u001f\x7f\xff\xc3\xa9\","
                     "\"addr\":\"h:1\",\"weight\":3},"
                     "{\"identity\":\"mc2\",\"addr\":\"/tmp/a b\",\"weight\":1}]");
    ringrec_fields_free(fields, n);
    ring_unref(r);
}
END_TEST

START_TEST(record_round_trips_hundreds_of_servers)
{
    struct ring_server_spec s[300];
    char names[300][16], addrs[300][40];

    for (int i = 0; i < 300; i++) {
        snprintf(names[i], sizeof(names[i]), "mc%d", i);
        snprintf(addrs[i], sizeof(addrs[i]), "10.1.%d.%d:11211", i / 200, i % 200);
        s[i] = (struct ring_server_spec){ names[i], addrs[i], (uint32_t)(1 + i % 4) };
    }
    struct ring *r = make_ring(RING_COMPAT_LIBMEMCACHED, NULL, s, 300);
    assert_round_trip(r, 7);
    ring_unref(r);
}
END_TEST

START_TEST(fingerprint_names_the_ring_not_the_epoch)
{
    const struct ring_server_spec a[] = { { "mc1", "h:1", 1 }, { "mc2", "h:2", 1 } };
    const struct ring_server_spec w[] = { { "mc1", "h:1", 1 }, { "mc2", "h:2", 2 } };
    const struct ring_server_spec m[] = { { "mc1", "h:1", 1 }, { "mc2", "h:9", 1 } };
    struct ring *r1 = make_ring(RING_COMPAT_LIBMEMCACHED, NULL, a, 2);
    struct ring *r2 = make_ring(RING_COMPAT_LIBMEMCACHED, NULL, a, 2);
    struct ring *rw = make_ring(RING_COMPAT_LIBMEMCACHED, NULL, w, 2);
    struct ring *rm = make_ring(RING_COMPAT_LIBMEMCACHED, NULL, m, 2);
    struct ring *rk = make_ring(RING_COMPAT_LIBKETAMA, NULL, a, 2);
    char f1[RINGREC_FP_SIZE], f2[RINGREC_FP_SIZE], fw[RINGREC_FP_SIZE],
         fm[RINGREC_FP_SIZE], fk[RINGREC_FP_SIZE];

    ringrec_fingerprint(r1, f1);
    ringrec_fingerprint(r2, f2);
    ringrec_fingerprint(rw, fw);
    ringrec_fingerprint(rm, fm);
    ringrec_fingerprint(rk, fk);
    ck_assert_uint_eq(strlen(f1), 32);
    ck_assert_str_eq(f1, f2);
    ck_assert_str_ne(f1, fw);       /* a weight changes placement */
    ck_assert_str_ne(f1, fm);       /* an address changes where data lives */
    ck_assert_str_ne(f1, fk);
    ring_unref(r1);
    ring_unref(r2);
    ring_unref(rw);
    ring_unref(rm);
    ring_unref(rk);
}
END_TEST

START_TEST(a_record_matches_its_ring_whatever_the_epoch)
{
    const struct ring_server_spec a[] = { { "mc1", "h:1", 1 }, { "mc2", "h:2", 1 } };
    const struct ring_server_spec w[] = { { "mc1", "h:1", 1 }, { "mc2", "h:2", 2 } };
    struct ring *ra = make_ring(RING_COMPAT_LIBMEMCACHED, NULL, a, 2);
    struct ring *rw = make_ring(RING_COMPAT_LIBMEMCACHED, NULL, w, 2);
    char *fields[RINGREC_FIELDS * 2];
    int n = ringrec_fields(ra, 9, fields);
    const char *bad[] = { "compat", "libmemcached", "hash", "md5", "servers", "[" };

    ck_assert(ringrec_matches((const char *const *)fields, (size_t)n, ra));
    ck_assert(!ringrec_matches((const char *const *)fields, (size_t)n, rw));
    ck_assert(!ringrec_matches(bad, 6, ra));
    ringrec_fields_free(fields, n);
    ring_unref(ra);
    ring_unref(rw);
}
END_TEST

START_TEST(malformed_records_are_refused)
{
    const char *no_servers[] = { "epoch", "1", "compat", "libmemcached", "hash", "md5" };
    const char *bad_hash[] = { "compat", "libmemcached", "hash", "sha1", "servers",
                               "[{\"identity\":\"a\",\"addr\":\"h:1\",\"weight\":1}]" };
    const char *bad_json[] = { "compat", "libmemcached", "hash", "md5", "servers",
                               "[{\"identity\":\"a\",\"addr\":" };
    const char *empty[] = { "compat", "libmemcached", "hash", "md5", "servers", "[]" };
    const char *zero_weight[] = { "compat", "libmemcached", "hash", "md5", "servers",
                                  "[{\"identity\":\"a\",\"addr\":\"h:1\",\"weight\":0}]" };
    uint64_t epoch = 0;

    ck_assert_ptr_null(ringrec_parse(no_servers, 6, &epoch));
    ck_assert_ptr_null(ringrec_parse(bad_hash, 6, &epoch));
    ck_assert_ptr_null(ringrec_parse(bad_json, 6, &epoch));
    ck_assert_ptr_null(ringrec_parse(empty, 6, &epoch));
    ck_assert_ptr_null(ringrec_parse(zero_weight, 6, &epoch));
}
END_TEST

/* A record with only a servers value, the rest fixed. */
static struct ring *parse_servers(const char *servers)
{
    const char *kv[] = { "epoch", "3", "compat", "libmemcached", "hash", "md5",
                         "hash_tag", "", "points", "160", "servers", servers };
    uint64_t epoch = 0;

    return ringrec_parse(kv, 12, &epoch);
}

START_TEST(objects_repeating_a_key_are_refused)
{
    /* 12 servers of three strings each overflowed the string table (16 * 2). */
    char json[2048] = "[";
    for (int i = 0; i < 12; i++) {
        char one[128];
        snprintf(one, sizeof(one), "%s{\"identity\":\"a%d\",\"identity\":\"b%d\","
                 "\"addr\":\"h:%d\"}", i ? "," : "", i, i, i);
        strcat(json, one);
    }
    strcat(json, "]");
    ck_assert_ptr_null(parse_servers(json));
    ck_assert_ptr_null(parse_servers(
        "[{\"identity\":\"a\",\"addr\":\"h:1\",\"weight\":1,\"weight\":2}]"));
    ck_assert_ptr_null(parse_servers(
        "[{\"identity\":\"a\",\"addr\":\"h:1\",\"addr\":\"h:2\",\"weight\":1}]"));
}
END_TEST

START_TEST(unfinished_escapes_are_refused)
{
    /* "\u" at the very end made the reader look 4 bytes past the string. */
    ck_assert_ptr_null(parse_servers("[{\"identity\":\"a\\u"));
    ck_assert_ptr_null(parse_servers("[{\"identity\":\"a\\u0"));
    ck_assert_ptr_null(parse_servers("[{\"identity\":\"a\\u004"));
    ck_assert_ptr_null(parse_servers("[{\"identity\":\"a\\"));
    ck_assert_ptr_null(parse_servers("[{\"identity\":\"a"));
    ck_assert_ptr_null(parse_servers(
        "[{\"identity\":\"a\\u00zz\",\"addr\":\"h:1\",\"weight\":1}]"));
    ck_assert_ptr_null(parse_servers(
        "[{\"identity\":\"a\\u0000b\",\"addr\":\"h:1\",\"weight\":1}]"));
    ck_assert_ptr_null(parse_servers(
        "[{\"identity\":\"a\\x\",\"addr\":\"h:1\",\"weight\":1}]"));
    ck_assert_ptr_null(parse_servers(
        "[{\"identity\":\"a\\ud800\",\"addr\":\"h:1\",\"weight\":1}]"));
    ck_assert_ptr_null(parse_servers(
        "[{\"identity\":\"a\tb\",\"addr\":\"h:1\",\"weight\":1}]"));
}
END_TEST

START_TEST(escapes_decode)
{
    struct ring *r = parse_servers(
        "[ {\"identity\" : \"a\\u0041\\n\\\"\\/\\u00e9\\ud83d\\ude00\", \"addr\":\"h:1\","
        " \"weight\": 2} ,\n{\"weight\":1,\"addr\":\"h:2\",\"identity\":\"b\"} ]\n");

    ck_assert_ptr_nonnull(r);
    ck_assert_uint_eq(r->nservers, 2);
    ck_assert_str_eq(r->servers[0].identity, "aA\n\"/\xc3\xa9\xf0\x9f\x98\x80");
    ck_assert_uint_eq(r->servers[0].weight, 2);
    ck_assert_str_eq(r->servers[1].identity, "b");
    ck_assert_str_eq(r->servers[1].addr, "h:2");
    ring_unref(r);
}
END_TEST

START_TEST(out_of_bounds_values_are_refused)
{
    char json[1024];
    char big[300];

    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    snprintf(json, sizeof(json),
             "[{\"identity\":\"%.255s\",\"addr\":\"h:1\",\"weight\":1}]", big);
    struct ring *r = parse_servers(json);
    ck_assert_ptr_nonnull(r);      /* 255 bytes: the longest accepted */
    ring_unref(r);
    snprintf(json, sizeof(json),
             "[{\"identity\":\"%.256s\",\"addr\":\"h:1\",\"weight\":1}]", big);
    ck_assert_ptr_null(parse_servers(json));
    snprintf(json, sizeof(json),
             "[{\"identity\":\"a\",\"addr\":\"%.256s\",\"weight\":1}]", big);
    ck_assert_ptr_null(parse_servers(json));
    /* 255 bytes once decoded, but an escape's 2 bytes at the end */
    snprintf(json, sizeof(json),
             "[{\"identity\":\"%.254s\\u00e9\",\"addr\":\"h:1\",\"weight\":1}]", big);
    ck_assert_ptr_null(parse_servers(json));

    static const char *const bad[] = {
        "[{\"identity\":\"a\",\"addr\":\"h:1\",\"weight\":2147483648}]",
        "[{\"identity\":\"a\",\"addr\":\"h:1\",\"weight\":99999999999999999999999}]",
        "[{\"identity\":\"a\",\"addr\":\"h:1\",\"weight\":-1}]",
        "[{\"identity\":\"a\",\"addr\":\"h:1\",\"weight\":1.5}]",
        "[{\"identity\":\"a\",\"addr\":\"h:1\",\"weight\":01}]",
        "[{\"identity\":\"a\",\"addr\":\"h:1\",\"weight\":\"1\"}]",
        "[{\"identity\":\"a\",\"addr\":\"h:1\",\"weight\":1}] x",
        "[{\"identity\":\"a\",\"addr\":\"h:1\",\"weight\":1}]]",
        "[{\"identity\":\"a\",\"addr\":\"h:1\",\"weight\":1},]",
        "[{\"identity\":\"a\",\"addr\":\"h:1\",\"weight\":1,}]",
        "[{\"identity\":\"a\",\"addr\":\"h:1\",\"weight\":1}",
        "{\"identity\":\"a\",\"addr\":\"h:1\",\"weight\":1}",
        "[{\"identity\":\"a\",\"addr\":\"h:1\",\"weight\":1,\"port\":2}]",
        "[{\"identity\":\"a\",\"addr\":\"h:1\"}]",
        "[{\"identity\":\"\",\"addr\":\"h:1\",\"weight\":1}]",
        "[{\"identity\":\"a\",\"addr\":\"h:1\",\"weight\":1},"
        " {\"identity\":\"a\",\"addr\":\"h:2\",\"weight\":1}]",
        "[{\"identity\":\"a\" \"addr\":\"h:1\",\"weight\":1}]",
        "[{\"identity\"\"a\",\"addr\":\"h:1\",\"weight\":1}]",
        "x[{\"identity\":\"a\",\"addr\":\"h:1\",\"weight\":1}]",
        "",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        r = parse_servers(bad[i]);
        ck_assert_msg(r == NULL, "accepted %s", bad[i]);
    }
}
END_TEST

START_TEST(too_many_servers_are_refused)
{
    size_t cap = (RINGREC_MAX_SERVERS + 1) * 64 + 16, len = 0;
    char *json = malloc(cap);

    ck_assert_ptr_nonnull(json);
    json[len++] = '[';
    for (int i = 0; i <= RINGREC_MAX_SERVERS; i++) {
        len += (size_t)snprintf(json + len, cap - len,
                                "%s{\"identity\":\"s%d\",\"addr\":\"h:%d\",\"weight\":1}",
                                i ? "," : "", i, i);
    }
    snprintf(json + len, cap - len, "]");
    ck_assert_ptr_null(parse_servers(json));
    free(json);
}
END_TEST

START_TEST(other_fields_are_checked)
{
    const char *srv = "[{\"identity\":\"a\",\"addr\":\"h:1\",\"weight\":1}]";
    const char *compat[] = { "compat", "libmemcachedx", "hash", "md5", "servers", srv };
    const char *tag[] = { "compat", "libketama", "hash", "md5", "hash_tag", "{",
                          "servers", srv };
    const char *epoch[] = { "epoch", "12x", "compat", "libketama", "hash", "md5",
                            "servers", srv };
    const char *big_epoch[] = { "epoch", "18446744073709551616", "compat", "libketama",
                                "hash", "md5", "servers", srv };
    const char *twice[] = { "compat", "libketama", "hash", "md5", "servers", srv,
                            "hash", "crc32" };
    const char *good[] = { "epoch", "18446744073709551615", "compat", "libketama",
                           "hash", "md5", "hash_tag", "{}", "servers", srv,
                           "future", "ignored" };
    uint64_t e = 5;

    ck_assert_ptr_null(ringrec_parse(compat, 6, &e));
    ck_assert_ptr_null(ringrec_parse(tag, 8, &e));
    ck_assert_ptr_null(ringrec_parse(epoch, 8, &e));
    ck_assert_ptr_null(ringrec_parse(big_epoch, 8, &e));
    ck_assert_ptr_null(ringrec_parse(twice, 8, &e));
    ck_assert_uint_eq(e, 5);       /* a refused record leaves the epoch alone */
    struct ring *r = ringrec_parse(good, 12, &e);
    ck_assert_ptr_nonnull(r);
    ck_assert_uint_eq(e, 18446744073709551615ull);
    ck_assert(r->has_tag);
    ck_assert_int_eq(r->compat, RING_COMPAT_LIBKETAMA);
    ring_unref(r);
}
END_TEST

START_TEST(record_round_trips_rings_of_every_kind)
{
    const struct ring_server_spec one[] = { { "solo", "/var/run/mc.sock", 7 } };
    const struct ring_server_spec s[] = {
        { "a", "10.0.0.1:11211", 1 }, { "b", "10.0.0.2:11211", 2147483647 },
        { "\x7f\x1f", "h:1", 3 },
    };
    struct ring *r1 = make_ring(RING_COMPAT_LIBKETAMA, NULL, one, 1);
    struct ring *r2 = make_ring(RING_COMPAT_LIBMEMCACHED, "[]", s, 3);
    struct ring *r3 = make_ring(RING_COMPAT_LIBKETAMA, "ab", s, 2);

    assert_round_trip(r1, 0);
    assert_round_trip(r2, 2);
    assert_round_trip(r3, 3);
    ring_unref(r1);
    ring_unref(r2);
    ring_unref(r3);
}
END_TEST

static Suite *ringrec_suite(void)
{
    Suite *s = suite_create("ringrec");
    TCase *tc = tcase_create("record");

    tcase_add_test(tc, record_round_trips_plain_servers);
    tcase_add_test(tc, record_round_trips_identities_that_need_escaping);
    tcase_add_test(tc, record_text_is_what_every_build_writes);
    tcase_add_test(tc, record_round_trips_hundreds_of_servers);
    tcase_add_test(tc, fingerprint_names_the_ring_not_the_epoch);
    tcase_add_test(tc, a_record_matches_its_ring_whatever_the_epoch);
    tcase_add_test(tc, malformed_records_are_refused);
    tcase_add_test(tc, objects_repeating_a_key_are_refused);
    tcase_add_test(tc, unfinished_escapes_are_refused);
    tcase_add_test(tc, escapes_decode);
    tcase_add_test(tc, out_of_bounds_values_are_refused);
    tcase_add_test(tc, too_many_servers_are_refused);
    tcase_add_test(tc, other_fields_are_checked);
    tcase_add_test(tc, record_round_trips_rings_of_every_kind);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return check_run(ringrec_suite());
}
