/* test_json.c — the JSON writer and reader (src/json.c), and the migration
 * progress table every view walks (src/progress.h). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "progress.h"
#include "check_run.h"

/* Parse s whole; 0 or -1. */
static int parse(struct json_doc *d, const char *s)
{
    char err[128];

    return json_parse(d, s, strlen(s), NULL, err, sizeof(err));
}

static void assert_refused(const char *s)
{
    struct json_doc d;

    ck_assert_msg(parse(&d, s) != 0, "accepted: %s", s);
    ck_assert_ptr_null(d.nodes);
}

/* Write s with json_strn under flags; the output (owned by the caller). */
static char *write_string(const char *s, size_t len, unsigned flags)
{
    struct json_w w;

    json_w_init(&w, 1 << 20, flags);
    json_strn(&w, s, len);
    ck_assert_int_eq(json_w_finish(&w), 0);
    return w.buf;
}

START_TEST(writer_escapes_quotes_backslashes_and_control_bytes)
{
    char *out = write_string("a\"b\\c\n\x01\x1f/", 9, 0);

    ck_assert_str_eq(out, "\"a\\\"b\\\\c\\u000a\\u0001\\u001f/\"");
    free(out);
}
END_TEST

START_TEST(writer_keeps_bytes_unless_asked_for_utf8)
{
    /* an invalid byte, DEL, a valid 2-byte sequence, a truncated one */
    const char s[] = "\xff\x7f\xc3\xa9\xe2\x82";
    char *raw = write_string(s, sizeof(s) - 1, 0);
    char *text = write_string(s, sizeof(s) - 1, JSON_W_UTF8);

    ck_assert_mem_eq(raw, "\"\xff\x7f\xc3\xa9\xe2\x82\"", 8);
    ck_assert_str_eq(text, "\"\\ufffd\\u007f\xc3\xa9\\ufffd\\ufffd\"");
    free(raw);
    free(text);
}
END_TEST

START_TEST(writer_nests_with_commas)
{
    struct json_w w;

    json_w_init(&w, 1 << 20, 0);
    json_obj(&w);
    json_key(&w, "a");
    json_arr(&w);
    json_uint(&w, 1);
    json_obj(&w);
    json_obj_end(&w);
    json_arr(&w);
    json_arr_end(&w);
    json_null(&w);
    json_arr_end(&w);
    json_key(&w, "b");
    json_real(&w, 0.5);
    json_key(&w, "c");
    json_real(&w, NAN);
    json_key(&w, "d");
    json_str_or_null(&w, "");
    json_key(&w, "e");
    json_bool(&w, true);
    json_obj_end(&w);
    ck_assert_int_eq(json_w_finish(&w), 0);
    ck_assert_str_eq(w.buf, "{\"a\":[1,{},[],null],\"b\":0.5,\"c\":null,\"d\":null,\"e\":true}");
    json_w_free(&w);
}
END_TEST

START_TEST(writer_fails_past_its_budget_or_depth)
{
    struct json_w w;

    json_w_init(&w, 8, 0);
    json_str(&w, "0123456789");
    ck_assert_int_eq(json_w_finish(&w), -1);
    json_w_free(&w);

    json_w_init(&w, 1 << 20, 0);
    for (int i = 0; i <= JSON_MAX_DEPTH; i++) {
        json_arr(&w);
    }
    ck_assert_int_eq(json_w_finish(&w), -1);
    json_w_free(&w);

    json_w_init(&w, 1 << 20, 0);
    json_arr_end(&w);           /* closes nothing */
    ck_assert_int_eq(json_w_finish(&w), -1);
    json_w_free(&w);
}
END_TEST

static size_t sunk;

static void count_sink(void *arg, const char *data, size_t len)
{
    (void)arg;
    (void)data;
    sunk += len;
}

START_TEST(writer_sink_gets_everything)
{
    struct json_w w;

    sunk = 0;
    json_w_init(&w, 1 << 24, 0);
    json_w_sink(&w, count_sink, NULL);
    json_arr(&w);
    for (int i = 0; i < 10000; i++) {
        json_uint(&w, 12345);
    }
    json_arr_end(&w);
    ck_assert_int_eq(json_w_finish(&w), 0);
    ck_assert_uint_eq(sunk, 2 + 10000 * 5 + 9999);
    ck_assert_uint_le(w.cap, 2 * JSON_W_CHUNK);
    json_w_free(&w);
}
END_TEST

START_TEST(reader_walks_nested_values)
{
    struct json_doc d;

    ck_assert_int_eq(parse(&d, " {\"a\" : [1, \"x\\u00e9\\ud83d\\ude00\", {\"b\":null}],"
                               "\"c\":true,\"a\":false} "), 0);
    ck_assert_int_eq(d.nodes[0].type, JSON_OBJECT);
    ck_assert_uint_eq(d.nodes[0].count, 3);
    uint32_t a = json_member(&d, 0, "a");       /* the first of two */
    ck_assert_int_eq(d.nodes[a].type, JSON_ARRAY);
    ck_assert_uint_eq(d.nodes[a].count, 3);
    uint32_t e = json_first(&d, a);
    ck_assert_str_eq(d.nodes[e].str, "1");
    e = json_next(&d, a, e);
    ck_assert_str_eq(json_get_cstr(&d.nodes[e]), "x\xc3\xa9\xf0\x9f\x98\x80");
    e = json_next(&d, a, e);
    ck_assert_int_eq(d.nodes[json_member(&d, e, "b")].type, JSON_NULL);
    ck_assert_uint_eq(json_next(&d, a, e), 0);
    ck_assert_int_eq(d.nodes[json_member(&d, 0, "c")].type, JSON_TRUE);
    ck_assert_uint_eq(json_member(&d, 0, "z"), 0);
    json_doc_free(&d);
}
END_TEST

START_TEST(reader_refuses_malformed_documents)
{
    static const char *const bad[] = {
        "", " ", "{", "[1,]", "{\"a\":1,}", "[1 2]", "{\"a\" 1}", "{1:2}", "tru",
        "nul", "[1]x", "[1] [2]", "\"a", "\"a\x01\"", "\"\\x\"", "\"\\u12\"",
        "\"\\ud800\"", "\"\\udc00\"", "\"\\ud800\\u0041\"", "'a'", "[01]", "-",
        "1.", ".5", "1e", "+1", "[NaN]", "[Infinity]", "{\"a\":1}}", "/* */1",
        "\xef\xbb\xbf[]",
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_refused(bad[i]);
    }
    /* a NUL byte is not whitespace */
    struct json_doc d;
    ck_assert_int_ne(json_parse(&d, "[1]\0", 4, NULL, NULL, 0), 0);
}
END_TEST

START_TEST(reader_bounds_depth_nodes_and_length)
{
    char deep[2 * JSON_MAX_DEPTH + 3];
    struct json_doc d;
    struct json_limits lim = { .max_nodes = 3 };

    for (int n = JSON_MAX_DEPTH; n <= JSON_MAX_DEPTH + 1; n++) {
        memset(deep, '[', (size_t)n);
        memset(deep + n, ']', (size_t)n);
        deep[2 * n] = '\0';
        ck_assert_int_eq(parse(&d, deep), n <= JSON_MAX_DEPTH ? 0 : -1);
        json_doc_free(&d);
    }
    ck_assert_int_eq(json_parse(&d, "[1,2]", 5, &lim, NULL, 0), 0);
    json_doc_free(&d);
    ck_assert_int_eq(json_parse(&d, "[1,2,3]", 7, &lim, NULL, 0), -1);
    lim = (struct json_limits){ .max_len = 4 };
    ck_assert_int_eq(json_parse(&d, "[1,2]", 5, &lim, NULL, 0), -1);
    lim = (struct json_limits){ .max_depth = 1 };
    ck_assert_int_eq(json_parse(&d, "[[]]", 4, &lim, NULL, 0), -1);
}
END_TEST

START_TEST(reader_numbers_at_the_edges)
{
    struct json_doc d;
    uint64_t u;
    double v;

    ck_assert_int_eq(parse(&d, "[9223372036854775808,18446744073709551615,"
                               "18446744073709551616,-0,0,1e-400,1.5e3,-12]"), 0);
    uint32_t c = json_first(&d, 0);
    ck_assert(json_get_u64(&d.nodes[c], UINT64_MAX, &u));           /* 2^63 */
    ck_assert_uint_eq(u, 9223372036854775808ull);
    ck_assert(!json_get_u64(&d.nodes[c], INT64_MAX, &u));
    c = json_next(&d, 0, c);
    ck_assert(json_get_u64(&d.nodes[c], UINT64_MAX, &u));           /* 2^64 - 1 */
    ck_assert_uint_eq(u, UINT64_MAX);
    c = json_next(&d, 0, c);
    ck_assert(!json_get_u64(&d.nodes[c], UINT64_MAX, &u));          /* 2^64 */
    ck_assert(json_get_double(&d.nodes[c], &v));
    c = json_next(&d, 0, c);
    ck_assert(!json_get_u64(&d.nodes[c], UINT64_MAX, &u));          /* -0 */
    ck_assert(json_get_double(&d.nodes[c], &v) && v == 0 && signbit(v));
    c = json_next(&d, 0, c);
    ck_assert(json_get_u64(&d.nodes[c], UINT64_MAX, &u) && u == 0);
    c = json_next(&d, 0, c);
    ck_assert(json_get_double(&d.nodes[c], &v) && v == 0);          /* underflow: 0 */
    c = json_next(&d, 0, c);
    ck_assert(!json_get_u64(&d.nodes[c], UINT64_MAX, &u));          /* an exponent */
    ck_assert(json_get_double(&d.nodes[c], &v) && v == 1500);
    c = json_next(&d, 0, c);
    ck_assert(!json_get_u64(&d.nodes[c], UINT64_MAX, &u));
    json_doc_free(&d);
    /* a double cannot hold it: refused rather than read as infinity */
    assert_refused("1e400");
    assert_refused("[-1e400]");
    assert_refused("00");
    assert_refused("-01");
}
END_TEST

START_TEST(reader_keeps_nuls_and_raw_bytes)
{
    struct json_doc d;
    const char s[] = "\"a\\u0000b\xff\"";

    ck_assert_int_eq(json_parse(&d, s, sizeof(s) - 1, NULL, NULL, 0), 0);
    ck_assert_uint_eq(d.nodes[0].len, 4);
    ck_assert_mem_eq(d.nodes[0].str, "a\0b\xff", 4);
    ck_assert_ptr_null(json_get_cstr(&d.nodes[0]));   /* not a C string */
    json_doc_free(&d);
}
END_TEST

START_TEST(round_trip_is_byte_equal_for_canonical_text)
{
    const char *s = "{\"a\":[1,-2.5e-3,\"\\u0001\\\"\\\\\",true,false,null,{}],"
                    "\"\":{\"k\":[[]]}}";
    struct json_doc d;
    struct json_w w;

    ck_assert_int_eq(parse(&d, s), 0);
    json_w_init(&w, 1 << 20, 0);
    json_w_node(&w, &d, 0);
    ck_assert_int_eq(json_w_finish(&w), 0);
    ck_assert_str_eq(w.buf, s);
    json_w_free(&w);
    json_doc_free(&d);
}
END_TEST

/* Each view's names: none twice, so a reader can tell fields apart. */
START_TEST(progress_names_are_unique_in_each_view)
{
    for (int i = 0; i < PROG_COUNT; i++) {
        const struct prog_desc *a = &prog_desc[i];
        ck_assert(a->help[0] != '\0');
        ck_assert(a->type != PROG_STR || a->stat[0] == '\0' || a->stat_none[0] != '\0');
        ck_assert(a->type == PROG_STR || a->stat_none[0] == '\0');
        ck_assert(a->type != PROG_STR || a->metric[0] == '\0');
        for (int j = 0; j < i; j++) {
            const struct prog_desc *b = &prog_desc[j];
            ck_assert(!a->stat[0] || strcmp(a->stat, b->stat) != 0);
            ck_assert(!a->hash[0] || strcmp(a->hash, b->hash) != 0);
            ck_assert(!a->json[0] || strcmp(a->json, b->json) != 0);
            ck_assert(!a->metric[0] || strcmp(a->metric, b->metric) != 0);
        }
    }
}
END_TEST

/* What the proxy writes, status reads back: every field with a JSON name,
 * and every field with a Redis hash name. */
START_TEST(progress_round_trips_through_json_and_hash_text)
{
    struct mig_progress pr, back, hash;
    struct json_w w;
    struct json_doc d;
    char buf[PROG_STR_SIZE];

    memset(&pr, 0, sizeof(pr));
    pr.state = MIG_MOVING;
    pr.epoch = 7;
    pr.lease = true;
    pr.arcs_total = 10;
    pr.arcs_done = 4;
    pr.keys_moved = 18446744073709551615ull;
    pr.elapsed_sec = 8;
    pr.moved_fraction = 0.25;
    snprintf(pr.to, sizeof(pr.to), "abc");
    snprintf(pr.blocked, sizeof(pr.blocked), "mc\"2");
    pr.eta_sec = prog_eta_sec(&pr);
    ck_assert(pr.eta_sec == 12);

    json_w_init(&w, 1 << 20, JSON_W_UTF8);
    json_obj(&w);
    for (int f = 0; f < PROG_COUNT; f++) {
        if (prog_desc[f].json[0]) {
            json_key(&w, prog_desc[f].json);
            prog_json(&pr, f, &w);
        }
    }
    json_obj_end(&w);
    ck_assert_int_eq(json_w_finish(&w), 0);
    ck_assert_int_eq(parse(&d, w.buf), 0);
    memset(&back, 0, sizeof(back));
    memset(&hash, 0, sizeof(hash));
    for (int f = 0; f < PROG_COUNT; f++) {
        if (prog_desc[f].json[0]) {
            uint32_t m = json_member(&d, 0, prog_desc[f].json);
            ck_assert_uint_ne(m, 0);
            ck_assert(prog_set_json(&back, f, &d, m));
            ck_assert_str_eq(prog_text(&back, f, buf, sizeof(buf)),
                             prog_text(&pr, f, (char[PROG_STR_SIZE]){ 0 }, PROG_STR_SIZE));
        }
        if (prog_desc[f].hash[0]) {
            prog_set_text(&hash, f, prog_text(&pr, f, buf, sizeof(buf)));
        }
    }
    ck_assert_uint_eq(hash.arcs_done, 4);
    ck_assert_str_eq(hash.blocked, "mc\"2");
    ck_assert(isnan(prog_eta_sec(&hash)));      /* no `to`, no time: unknown */
    json_doc_free(&d);
    json_w_free(&w);
}
END_TEST

static Suite *json_suite(void)
{
    Suite *s = suite_create("json");
    TCase *tc = tcase_create("writer");

    tcase_add_test(tc, writer_escapes_quotes_backslashes_and_control_bytes);
    tcase_add_test(tc, writer_keeps_bytes_unless_asked_for_utf8);
    tcase_add_test(tc, writer_nests_with_commas);
    tcase_add_test(tc, writer_fails_past_its_budget_or_depth);
    tcase_add_test(tc, writer_sink_gets_everything);
    suite_add_tcase(s, tc);

    tc = tcase_create("reader");
    tcase_add_test(tc, reader_walks_nested_values);
    tcase_add_test(tc, reader_refuses_malformed_documents);
    tcase_add_test(tc, reader_bounds_depth_nodes_and_length);
    tcase_add_test(tc, reader_numbers_at_the_edges);
    tcase_add_test(tc, reader_keeps_nuls_and_raw_bytes);
    tcase_add_test(tc, round_trip_is_byte_equal_for_canonical_text);
    suite_add_tcase(s, tc);

    tc = tcase_create("progress");
    tcase_add_test(tc, progress_names_are_unique_in_each_view);
    tcase_add_test(tc, progress_round_trips_through_json_and_hash_text);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return check_run(json_suite());
}
