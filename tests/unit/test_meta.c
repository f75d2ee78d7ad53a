/* test_meta.c — the meta-protocol parser (src/meta.c).
 *
 * The verdicts pinned here are memcached 1.6.18's answers; the same lines
 * (and many more) are checked against the real server by
 * tests/integration/test_meta.py.
 */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mconn.h"
#include "meta.h"
#include "check_run.h"

static struct meta_req req;
static uint8_t keybuf[META_KEYBUF_SIZE];

static int parse(const char *line)
{
    return meta_parse_request(line, strlen(line), &req, keybuf);
}

static bool inside(const void *p, size_t n, const char *line)
{
    const char *c = p;
    return c >= line && c + n <= line + strlen(line);
}

#define ck_assert_mem(p, n, s) do {                                         \
        ck_assert_uint_eq((n), strlen(s));                                  \
        ck_assert(memcmp((p), (s), (n)) == 0);                              \
    } while (0)

/* ---- commands ------------------------------------------------------------ */

START_TEST(mg_with_flags)
{
    const char *line = "mg foo v f t c s k O123 q u h l";

    ck_assert_int_eq(parse(line), META_OK);
    ck_assert_int_eq(req.cmd, META_CMD_MG);
    ck_assert_mem(req.key, req.keylen, "foo");
    ck_assert(inside(req.key, req.keylen, line));
    ck_assert_ptr_eq(req.hkey, (const uint8_t *)req.key);
    ck_assert_uint_eq(req.hkeylen, 3);
    ck_assert(!req.base64);
    ck_assert_int_eq(req.datalen, -1);
    ck_assert(req.quiet && req.ret_key);
    ck_assert_uint_eq(req.quiet_drops, META_RSP_BIT(EN));
    ck_assert_mem(req.opaque, req.opaque_len, "123");
    ck_assert_uint_eq(req.nflags, 11);
    ck_assert_int_eq(req.flags[0].letter, 'v');
    ck_assert_uint_eq(req.flags[0].arg_len, 0);
    ck_assert_int_eq(req.flags[6].letter, 'O');
    ck_assert_mem(req.flags[6].arg, req.flags[6].arg_len, "123");
    for (uint32_t i = 0; i < req.nflags; i++)
        ck_assert(inside(req.flags[i].arg, req.flags[i].arg_len, line));
    ck_assert_ptr_null(req.error);
}
END_TEST

START_TEST(mg_key_alone_and_odd_spacing)
{
    ck_assert_int_eq(parse("mg k"), META_OK);
    ck_assert_uint_eq(req.nflags, 0);
    ck_assert(!req.quiet);
    ck_assert_uint_eq(req.quiet_drops, 0);
    ck_assert_int_eq(parse("  mg   k\tv   vfoo  "), META_OK);
    ck_assert_mem(req.key, req.keylen, "k\tv");     /* a tab is in the key */
    ck_assert_uint_eq(req.nflags, 1);
    ck_assert_int_eq(req.flags[0].letter, 'v');
    ck_assert_mem(req.flags[0].arg, req.flags[0].arg_len, "foo");
}
END_TEST

START_TEST(ms_length_mode_and_flags)
{
    ck_assert_int_eq(parse("ms k 5 T10 F7 MA C99 I q c k Oab"), META_OK);
    ck_assert_int_eq(req.cmd, META_CMD_MS);
    ck_assert_int_eq(req.datalen, 5);
    ck_assert_int_eq(req.mode, 'A');
    ck_assert(req.has_cas && req.cas == 99 && req.invalidate && req.quiet);
    ck_assert_uint_eq(req.quiet_drops, META_RSP_BIT(HD));
    ck_assert(!req.swallow);
    ck_assert_uint_eq(req.nflags, 9);

    /* the length as memcached's strtol reads it, truncated to 32 bits */
    ck_assert_int_eq(parse("ms k +1"), META_OK);
    ck_assert_int_eq(req.datalen, 1);
    ck_assert_int_eq(parse("ms k 4294967297"), META_OK);
    ck_assert_int_eq(req.datalen, 1);
    ck_assert_int_eq(parse("ms k 1\tjunk"), META_OK);
    ck_assert_int_eq(req.datalen, 1);
    ck_assert_int_eq(parse("ms k 2147483645"), META_OK);
    ck_assert_int_eq(req.datalen, 2147483645);
    ck_assert_int_eq(parse("ms k 0"), META_OK);
    ck_assert_int_eq(req.datalen, 0);
    for (const char *m = "EAPRS"; *m; m++) {
        char line[32];
        snprintf(line, sizeof(line), "ms k 1 M%c", *m);
        ck_assert_int_eq(parse(line), META_OK);
        ck_assert_int_eq(req.mode, *m);
    }
}
END_TEST

START_TEST(md_ma_mn_me)
{
    ck_assert_int_eq(parse("md k q I T30 C5 k O1"), META_OK);
    ck_assert_int_eq(req.cmd, META_CMD_MD);
    ck_assert_uint_eq(req.quiet_drops, META_RSP_BIT(HD));
    ck_assert(req.invalidate && req.has_cas && req.cas == 5);

    ck_assert_int_eq(parse("ma k N0 J42 D3 MD q v t c"), META_OK);
    ck_assert_int_eq(req.cmd, META_CMD_MA);
    ck_assert(req.vivify);
    ck_assert_int_eq(req.mode, 'D');
    ck_assert_uint_eq(req.quiet_drops, META_RSP_BIT(HD) | META_RSP_BIT(VA));
    for (const char *m = "I+D-"; *m; m++) {
        char line[32];
        snprintf(line, sizeof(line), "ma k M%c", *m);
        ck_assert_int_eq(parse(line), META_OK);
    }

    ck_assert_int_eq(parse("mn"), META_OK);
    ck_assert_int_eq(req.cmd, META_CMD_MN);
    ck_assert_ptr_null(req.key);
    ck_assert_int_eq(parse("mn x y zz"), META_OK);      /* whatever follows */
    ck_assert_int_eq(parse(" mn"), META_OK);

    ck_assert_int_eq(parse("me k"), META_OK);
    ck_assert_int_eq(req.cmd, META_CMD_ME);
    ck_assert_mem(req.key, req.keylen, "k");
    ck_assert_int_eq(parse("me k q zz v v"), META_OK); /* flags are not read */
    ck_assert(!req.quiet);
    ck_assert_int_eq(parse("me Zm9v b"), META_OK);
    ck_assert(req.base64);
    ck_assert_mem(req.hkey, req.hkeylen, "foo");
    ck_assert_int_eq(parse("me Zm9v bb"), META_OK);    /* exactly "b" only */
    ck_assert(!req.base64);
    ck_assert_int_eq(parse("me Zm9v x b"), META_OK);   /* only the third token */
    ck_assert(!req.base64);
}
END_TEST

START_TEST(every_flag_letter)
{
    /* the letters memcached knows, each valid with some argument; every
     * command accepts every one of them */
    static const char *const ok[] = {
        "b", "N30", "T-1", "R30", "l", "O", "Oxyz", "P", "Lpath/", "k", "s",
        "t", "c", "f", "v", "h", "u", "q", "F4294967295", "C0", "MS", "J5",
        "D18446744073709551615", "I",
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        char line[64];
        snprintf(line, sizeof(line), "mg Zm9v %s", ok[i]);
        ck_assert_msg(parse(line) == META_OK, "%s", line);
        ck_assert_int_eq(req.flags[0].letter, ok[i][0]);
    }
    for (int c = 1; c < 256; c++) {
        char line[16];
        if (c == ' ' || strchr("bNTRlOPLkstcfvhuqFCMJDI", c))
            continue;
        snprintf(line, sizeof(line), "mg k %c", c);
        ck_assert_int_eq(parse(line), META_ERR);
        ck_assert_str_eq(req.error, c >= 127 ? "CLIENT_ERROR duplicate flag"
                                             : "CLIENT_ERROR invalid flag");
    }
}
END_TEST

/* ---- base64 keys ---------------------------------------------------------- */

START_TEST(base64_keys_decode_as_memcached_does)
{
    static const struct { const char *key; const char *raw; size_t rawlen; } v[] = {
        { "Zm9v", "foo", 3 },
        { "Zm9vYmFy", "foobar", 6 },
        { "Zm8=", "fo", 2 },
        { "Zg==", "f", 1 },
        { "Zm9v!", "foo", 3 },          /* bytes outside the alphabet skipped */
        { "!Z\tm9\x01v", "foo", 3 },
        { "A=AA", "\0\0", 2 },           /* '=' inside a group counts as pad */
        { "AA==AAAA", "\0", 1 },         /* decoding stops after padding */
        { "+/+/", "\xfb\xff\xbf", 3 },
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        char line[64];
        snprintf(line, sizeof(line), "mg %s b v", v[i].key);
        ck_assert_msg(parse(line) == META_OK, "%s", v[i].key);
        ck_assert(req.base64);
        ck_assert_ptr_eq(req.hkey, keybuf);
        ck_assert_uint_eq(req.hkeylen, v[i].rawlen);
        ck_assert(memcmp(req.hkey, v[i].raw, v[i].rawlen) == 0);
        ck_assert_mem(req.key, req.keylen, v[i].key);  /* sent as is */
    }
}
END_TEST

START_TEST(bad_base64_keys)
{
    static const char *const bad[] = { "Zm9", "A===", "====", "AAAA=", "!!!!", "k", "a" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char line[64];
        snprintf(line, sizeof(line), "mg %s b", bad[i]);
        ck_assert_int_eq(parse(line), META_ERR);
        ck_assert_str_eq(req.error, "CLIENT_ERROR error decoding key");
        snprintf(line, sizeof(line), "md %s b", bad[i]);
        ck_assert_int_eq(parse(line), META_ERR);
        ck_assert_str_eq(req.error, "CLIENT_ERROR invalid or duplicate flag");
        snprintf(line, sizeof(line), "me %s b", bad[i]);
        ck_assert_int_eq(parse(line), META_ERR);
        ck_assert_str_eq(req.error, "CLIENT_ERROR bad command line format");
        snprintf(line, sizeof(line), "ms %s 1 b", bad[i]);
        ck_assert_int_eq(parse(line), META_ERR);
        ck_assert(req.swallow);
    }
    /* the last message set wins; a stopping error wins over all */
    ck_assert_int_eq(parse("mg !!!! b Tx"), META_ERR);
    ck_assert_str_eq(req.error, "CLIENT_ERROR bad token in command line format");
    ck_assert_int_eq(parse("mg k Tx b"), META_ERR);
    ck_assert_str_eq(req.error, "CLIENT_ERROR error decoding key");
    ck_assert_int_eq(parse("mg !!!! b zz"), META_ERR);
    ck_assert_str_eq(req.error, "CLIENT_ERROR invalid flag");
    ck_assert_int_eq(parse("mg k Ofoo bar"), META_ERR);  /* "bar" is b */
    ck_assert_str_eq(req.error, "CLIENT_ERROR error decoding key");
}
END_TEST

START_TEST(longest_base64_key)
{
    char line[300] = "mg ";
    /* 248 alphabet bytes and 2 skipped: the longest token, 186 bytes */
    memset(line + 3, 'A', 248);
    memcpy(line + 251, "!! b", 5);
    ck_assert_int_eq(parse(line), META_OK);
    ck_assert_uint_eq(req.keylen, 250);
    ck_assert_uint_eq(req.hkeylen, 186);
    ck_assert_uint_le(req.hkeylen, META_KEYBUF_SIZE);
    /* 251 encoded bytes: too long before decoding */
    memset(line + 3, 'A', 248);
    memcpy(line + 251, "AAA b", 6);
    ck_assert_int_eq(parse(line), META_ERR);
    ck_assert_str_eq(req.error, "CLIENT_ERROR bad command line format");
}
END_TEST

/* ---- malformed lines -------------------------------------------------------- */

static const char FMT[] = "CLIENT_ERROR bad command line format";

static const struct { const char *line; const char *error; int swallow; } bad_lines[] = {
    { "mx k", "ERROR", 0 },
    { "mg", "ERROR", 0 },
    { "mg ", "ERROR", 0 },
    { "ms", "ERROR", 0 },
    { "md", "ERROR", 0 },
    { "ma", "ERROR", 0 },
    { "me", FMT, 0 },
    { "ms k", FMT, 0 },
    { "ms k x", FMT, 0 },
    { "ms k -1", FMT, 0 },
    { "ms k 1a", FMT, 0 },
    { "ms k 0x1", FMT, 0 },
    { "ms k 2147483646", FMT, 0 },
    { "ms k 1 a b c d e f g h i j k l m n o p q", "CLIENT_ERROR options flags too long", 0 },
    { "ms k 1 a b c d e f g h i j k l m n o p", "CLIENT_ERROR invalid flag", 1 },
    { "ms k 1 zz", "CLIENT_ERROR invalid flag", 1 },
    { "ms k 1 v v", "CLIENT_ERROR duplicate flag", 1 },
    { "ms k 1 F-1", FMT, 1 },
    { "ms k 1 Fx", FMT, 1 },
    { "ms k 1 F", FMT, 1 },
    { "ms k 1 Tx Fx", "CLIENT_ERROR bad token in command line format", 1 },
    { "ms k 1 Fx T1 Tx", "CLIENT_ERROR duplicate flag", 1 },
    { "ms k 1 C", "CLIENT_ERROR bad token in command line format", 1 },
    { "ms k 1 Mz", "CLIENT_ERROR invalid mode for ms M token", 1 },
    { "ms k 1 M", "CLIENT_ERROR incorrect length for M token", 1 },
    { "ms k 1 MEE", "CLIENT_ERROR incorrect length for M token", 1 },
    { "ms k 1 Ooooooooooooooooooooooooooooooooo", "CLIENT_ERROR opaque token too long", 1 },
    { "ms k 1 Ooooooooooooooooooooooooooooooooo Mz",
      "CLIENT_ERROR invalid mode for ms M token", 1 },
    { "mg k a b c d e f g h i j k l m n o p q r", "CLIENT_ERROR options flags are too long", 0 },
    { "mg k zz", "CLIENT_ERROR invalid flag", 0 },
    { "mg k 1", "CLIENT_ERROR invalid flag", 0 },
    { "mg k v v", "CLIENT_ERROR duplicate flag", 0 },
    { "mg k qq q", "CLIENT_ERROR duplicate flag", 0 },
    { "mg k T", "CLIENT_ERROR bad token in command line format", 0 },
    { "mg k N", "CLIENT_ERROR bad token in command line format", 0 },
    { "mg k Rx", "CLIENT_ERROR bad token in command line format", 0 },
    { "mg k T99999999999999999999", "CLIENT_ERROR bad token in command line format", 0 },
    { "mg k Cx", "CLIENT_ERROR bad token in command line format", 0 },
    { "mg k C-1", "CLIENT_ERROR bad token in command line format", 0 },
    { "mg k Fx", FMT, 0 },
    { "mg k Dx", "CLIENT_ERROR invalid numeric delta value", 0 },
    { "mg k Jx", "CLIENT_ERROR invalid numeric initial value", 0 },
    { "mg k MZZ", "CLIENT_ERROR incorrect length for M token", 0 },
    { "mg k Ooooooooooooooooooooooooooooooooo", "CLIENT_ERROR opaque token too long", 0 },
    { "md k a b c d e f g h i j k l m n o p q r", "CLIENT_ERROR options flags too long", 0 },
    { "md k v v", "CLIENT_ERROR invalid or duplicate flag", 0 },
    { "md k Tx", "CLIENT_ERROR invalid or duplicate flag", 0 },
    { "md k Ooooooooooooooooooooooooooooooooo", "CLIENT_ERROR opaque token too long", 0 },
    { "ma k Dx", "CLIENT_ERROR invalid or duplicate flag", 0 },
    { "ma k MX", "CLIENT_ERROR invalid mode for ma M token", 0 },
    { "ma k MXX", "CLIENT_ERROR invalid or duplicate flag", 0 },
    { "ma k MX Ooooooooooooooooooooooooooooooooo", "CLIENT_ERROR invalid mode for ma M token", 0 },
    { "ma k Ooooooooooooooooooooooooooooooooo", "CLIENT_ERROR opaque token too long", 0 },
};

START_TEST(malformed_lines_get_memcacheds_answer)
{
    for (size_t i = 0; i < sizeof(bad_lines) / sizeof(bad_lines[0]); i++) {
        ck_assert_msg(parse(bad_lines[i].line) == META_ERR, "%s", bad_lines[i].line);
        ck_assert_msg(strcmp(req.error, bad_lines[i].error) == 0, "%s: %s",
                      bad_lines[i].line, req.error);
        ck_assert_msg(req.swallow == (bad_lines[i].swallow != 0), "%s", bad_lines[i].line);
        if (req.swallow)
            ck_assert_int_eq(req.datalen, 1);
    }
}
END_TEST

START_TEST(opaque_and_key_limits)
{
    char line[600];

    /* 31 bytes after the O: the longest */
    ck_assert_int_eq(parse("mg k Oooooooooooooooooooooooooooooooo"), META_OK);
    ck_assert_uint_eq(req.opaque_len, 31);
    snprintf(line, sizeof(line), "mg %0250d v", 0);
    ck_assert_int_eq(parse(line), META_OK);
    ck_assert_uint_eq(req.keylen, 250);
    snprintf(line, sizeof(line), "mg %0251d v", 0);
    ck_assert_int_eq(parse(line), META_ERR);
    ck_assert_str_eq(req.error, FMT);
    snprintf(line, sizeof(line), "ms %0251d 1 zz", 0);
    ck_assert_int_eq(parse(line), META_ERR);
    ck_assert_str_eq(req.error, FMT);
    ck_assert(!req.swallow);
    snprintf(line, sizeof(line), "me %0251d", 0);
    ck_assert_int_eq(parse(line), META_ERR);
    /* 17 flags are allowed (16 for ms), 18 are not */
    ck_assert_int_eq(parse("mg k P1 P2 P3 P4 P5 P6 P7 P8 P9 P10 P11 P12 P13 P14 P15 P16 P17"),
                     META_ERR);
    ck_assert_str_eq(req.error, "CLIENT_ERROR duplicate flag");
    ck_assert_int_eq(parse("mg k a b c d e f g h i j k l m n o p q"), META_ERR);
    ck_assert_str_eq(req.error, "CLIENT_ERROR invalid flag");
    ck_assert_int_eq(parse("mg k v f t c s k O1 q u h l N1 T1 R1 b P L E"), META_ERR);
    ck_assert_str_eq(req.error, "CLIENT_ERROR options flags are too long");
    ck_assert_int_eq(parse("ms k 1 v f t c s k O1 q u h l N1 T1 R1 P L I"), META_ERR);
    ck_assert_str_eq(req.error, "CLIENT_ERROR options flags too long");
    ck_assert(!req.swallow);
    ck_assert_int_eq(parse("mg k v f t c s k O1 q u h l N1 T1 R1 P L I"), META_OK);
    ck_assert_uint_eq(req.nflags, META_FLAGS_MAX);
    /* far more tokens than memcached cuts */
    ck_assert_int_eq(parse("mg k x0 x1 x2 x3 x4 x5 x6 x7 x8 x9 x10 x11 x12 x13 x14 x15 "
                           "x16 x17 x18 x19 x20 x21 x22 x23 x24 x25"), META_ERR);
    ck_assert_str_eq(req.error, "CLIENT_ERROR options flags are too long");
}
END_TEST

START_TEST(not_meta_lines)
{
    static const char *const lines[] = { "", " ", "get k", "m k", "mgg k", "MG k",
                                         "m", "x", "meta k" };
    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++)
        ck_assert_msg(parse(lines[i]) == META_NOT_META, "%s", lines[i]);
    ck_assert_int_eq(parse("mG k"), META_ERR);          /* m + unknown letter */
    ck_assert_str_eq(req.error, "ERROR");
    /* a NUL ends the line */
    ck_assert_int_eq(meta_parse_request("mg\0k", 4, &req, keybuf), META_ERR);
    ck_assert_str_eq(req.error, "ERROR");
    ck_assert_int_eq(meta_parse_request("mn\0 x", 5, &req, keybuf), META_OK);
    ck_assert_int_eq(meta_parse_request("mg k v\0zz", 9, &req, keybuf), META_OK);
    ck_assert_uint_eq(req.nflags, 1);
    ck_assert_int_eq(meta_parse_request("\0mg k", 5, &req, keybuf), META_NOT_META);
}
END_TEST

START_TEST(a_reused_request_is_fully_overwritten)
{
    ck_assert_int_eq(parse("ms Zm9v 5 b q MA C3 I N1 k O1 c"), META_OK);
    ck_assert_int_eq(parse("mg k"), META_OK);
    ck_assert(!req.base64 && !req.quiet && !req.invalidate && !req.vivify &&
              !req.has_cas && !req.ret_key && !req.swallow);
    ck_assert_int_eq(req.mode, 0);
    ck_assert_int_eq(req.datalen, -1);
    ck_assert_ptr_null(req.opaque);
    ck_assert_ptr_null(req.error);
}
END_TEST

/* ---- quiet mode ------------------------------------------------------------ */

START_TEST(quiet_table)
{
    ck_assert_uint_eq(meta_quiet_drops(META_CMD_MG, false), META_RSP_BIT(EN));
    ck_assert_uint_eq(meta_quiet_drops(META_CMD_MG, true), META_RSP_BIT(EN));
    ck_assert_uint_eq(meta_quiet_drops(META_CMD_MS, false), META_RSP_BIT(HD));
    ck_assert_uint_eq(meta_quiet_drops(META_CMD_MD, false), META_RSP_BIT(HD));
    ck_assert_uint_eq(meta_quiet_drops(META_CMD_MA, false),
                      META_RSP_BIT(HD) | META_RSP_BIT(VA));
    ck_assert_uint_eq(meta_quiet_drops(META_CMD_MA, true), 0);
    ck_assert_uint_eq(meta_quiet_drops(META_CMD_MN, false), 0);
    ck_assert_uint_eq(meta_quiet_drops(META_CMD_ME, false), 0);
    /* never an error, NF, NS or EX */
    for (int c = 0; c < META_CMD_COUNT; c++) {
        uint32_t d = meta_quiet_drops((enum meta_cmd)c, false);
        ck_assert_uint_eq(d & (META_RSP_BIT(NF) | META_RSP_BIT(NS) | META_RSP_BIT(EX) |
                               META_RSP_BIT(ERROR) | META_RSP_BIT(CLIENT_ERROR) |
                               META_RSP_BIT(SERVER_ERROR) | META_RSP_BIT(MN)), 0);
    }
    ck_assert_int_eq(parse("mg k qfoo"), META_OK);      /* q by its first byte */
    ck_assert(req.quiet);
}
END_TEST

START_TEST(data_blocks)
{
    ck_assert(meta_data_ok("abc\r\n", 3));
    ck_assert(meta_data_ok("\r\n", 0));
    ck_assert(!meta_data_ok("abc\r\r", 3));
    ck_assert(!meta_data_ok("abcd\r\n", 3));
    ck_assert_str_eq(META_ERR_BAD_CHUNK, "CLIENT_ERROR bad data chunk");
}
END_TEST

/* ---- backend lines ----------------------------------------------------------- */

START_TEST(backend_lines_keep_every_flag)
{
    static const struct { const char *in, *out; } v[] = {
        { "mg k", "mg k" },
        { "  mg   k  v  q   Oab k ", "mg k v q Oab k" },
        { "ms k +5 T0 q", "ms k 5 T0 q" },
        { "ms k 4294967297 MA", "ms k 1 MA" },
        { "ms Zm9v 0 b c", "ms Zm9v 0 b c" },
        { "md k q I T30 C9", "md k q I T30 C9" },
        { "ma k N0 J1 D2 MD q v", "ma k N0 J1 D2 MD q v" },
        { "me Zm9v b x", "me Zm9v b" },
        { "me k x y", "me k" },
        { "mg k Lpath/ P", "mg k Lpath/ P" },
    };
    char buf[256], again[256];
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        ck_assert_int_eq(parse(v[i].in), META_OK);
        size_t n = meta_format_request(&req, buf, sizeof(buf));
        ck_assert_str_eq(buf, v[i].out);
        ck_assert_uint_eq(n, strlen(v[i].out));
        ck_assert_uint_le(n, strlen(v[i].in));
        /* the backend line parses to the same request */
        struct meta_req first = req;
        ck_assert_int_eq(parse(buf), META_OK);
        ck_assert_int_eq(req.cmd, first.cmd);
        ck_assert_int_eq(req.datalen, first.datalen);
        ck_assert_uint_eq(req.nflags, first.cmd == META_CMD_ME ? 0 : first.nflags);
        ck_assert_uint_eq(req.quiet_drops, first.quiet_drops);
        ck_assert_uint_eq(meta_format_request(&req, again, sizeof(again)), n);
        ck_assert_str_eq(again, buf);
    }
    ck_assert_int_eq(parse("mn"), META_OK);
    ck_assert_uint_eq(meta_format_request(&req, buf, sizeof(buf)), 0);
    ck_assert_int_eq(parse("mg k v"), META_OK);
    ck_assert_uint_eq(meta_format_request(&req, buf, 6), 0);   /* no room */
    ck_assert_uint_eq(meta_format_request(&req, buf, 7), 6);
}
END_TEST

/* ---- replies ------------------------------------------------------------- */

START_TEST(reply_kinds)
{
    static const struct { const char *line; enum meta_rsp_kind kind; const char *flags; } v[] = {
        { "HD", META_RSP_HD, NULL },
        { "HD c5 kfoo", META_RSP_HD, "c5 kfoo" },
        { "EN", META_RSP_EN, NULL },
        { "NF O1", META_RSP_NF, "O1" },
        { "NS", META_RSP_NS, NULL },
        { "EX k", META_RSP_EX, "k" },
        { "MN", META_RSP_MN, NULL },
        { "ME k exp=-1 la=0 cas=4 fetch=no cls=1 size=61", META_RSP_ME,
          "k exp=-1 la=0 cas=4 fetch=no cls=1 size=61" },
        { "ERROR", META_RSP_ERROR, NULL },
        { "CLIENT_ERROR bad data chunk", META_RSP_CLIENT_ERROR, "bad data chunk" },
        { "SERVER_ERROR out of memory", META_RSP_SERVER_ERROR, "out of memory" },
    };
    struct meta_rsp r;
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        ck_assert_int_eq(meta_parse_reply(v[i].line, strlen(v[i].line), &r), META_REPLY_OK);
        ck_assert_int_eq(r.kind, v[i].kind);
        if (v[i].flags == NULL)
            ck_assert_ptr_null(r.flags);
        else
            ck_assert_mem(r.flags, r.flags_len, v[i].flags);
    }
}
END_TEST

START_TEST(reply_va_lengths)
{
    struct meta_rsp r;

    ck_assert_int_eq(meta_parse_reply("VA 5 f0 t-1", 11, &r), META_REPLY_OK);
    ck_assert_int_eq(r.kind, META_RSP_VA);
    ck_assert_uint_eq(r.vlen, 5);
    ck_assert_mem(r.flags, r.flags_len, "f0 t-1");
    ck_assert_int_eq(meta_parse_reply("VA 0", 4, &r), META_REPLY_OK);
    ck_assert_uint_eq(r.vlen, 0);
    ck_assert_ptr_null(r.flags);
    ck_assert_int_eq(meta_parse_reply("VA 18446744073709551615", 23, &r), META_REPLY_OK);
    ck_assert_uint_eq(r.vlen, UINT64_MAX);
    ck_assert_int_eq(meta_parse_reply("VA 99999999999999999999999", 26, &r), META_REPLY_OK);
    ck_assert_uint_eq(r.vlen, UINT64_MAX);              /* saturated */
    ck_assert_int_eq(meta_parse_reply("VA", 2, &r), META_REPLY_NO_LENGTH);
    ck_assert_int_eq(meta_parse_reply("VA ", 3, &r), META_REPLY_NO_LENGTH);
    ck_assert_int_eq(meta_parse_reply("VA -1", 5, &r), META_REPLY_NO_LENGTH);
    ck_assert_int_eq(meta_parse_reply("VA 3x", 5, &r), META_REPLY_BAD_LENGTH);
}
END_TEST

START_TEST(reply_garbage)
{
    static const char *const v[] = { "", "H", "HDX", "hd", "VALUE k 0 1", "OK",
                                     " HD", "ERRORS", "MNX", "END" };
    struct meta_rsp r;
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
        ck_assert_msg(meta_parse_reply(v[i], strlen(v[i]), &r) == META_REPLY_UNKNOWN,
                      "%s", v[i]);
}
END_TEST

START_TEST(mconn_still_refuses_mn_and_me)
{
    static const char *const v[] = { "MN\r\n", "ME k exp=-1\r\n" };
    for (size_t i = 0; i < 2; i++) {
        struct mreply r;
        size_t used;
        ck_assert_int_eq(mreply_parse(v[i], strlen(v[i]), 1024, &r, &used),
                         MREPLY_PARSE_ERROR);
        ck_assert_str_eq(r.error, "not a meta reply");
    }
}
END_TEST

/* The return flags the proxy adds to a judged mg (move.c, meta_run) leave
 * its reply again, wherever memcached wrote them; nothing else changes. */
START_TEST(drop_flags_removes_only_the_added_tokens)
{
    static const struct { const char *in, *drop, *out; } v[] = {
        { "c12", "c", "" },
        { "c12 f7", "cf", "" },
        { "kfoo O1 c12", "c", "kfoo O1" },
        { "c12 kfoo O1", "c", "kfoo O1" },
        { "kcc O1 c12 f0 s2", "cf", "kcc O1 s2" },
        { "kZm9v b c9 W", "c", "kZm9v b W" },
        { "kfoo O1 W Z", "c", "kfoo O1 W Z" },
        { "Of c1", "cf", "Of" },
        { "s2  t-1", "c", "s2  t-1" },
        { "", "c", "" },
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        char out[64];
        size_t n = meta_drop_flags(v[i].in, strlen(v[i].in), v[i].drop, out);
        ck_assert_msg(n == strlen(v[i].out) && memcmp(out, v[i].out, n) == 0,
                      "%s -> %.*s", v[i].in, (int)n, out);
    }
}
END_TEST

START_TEST(names_match_the_enums)
{
    ck_assert_str_eq(meta_cmd_name[META_CMD_MG], "mg");
    ck_assert_str_eq(meta_cmd_name[META_CMD_ME], "me");
    ck_assert_str_eq(meta_rsp_name[META_RSP_CLIENT_ERROR], "CLIENT_ERROR");
    for (int c = META_CMD_NONE + 1; c < META_CMD_COUNT; c++) {
        char line[8];
        snprintf(line, sizeof(line), "%s k%s", meta_cmd_name[c],
                 c == META_CMD_MS ? " 1" : "");
        ck_assert_int_eq(parse(line), META_OK);
        ck_assert_int_eq(req.cmd, c);
    }
}
END_TEST

static Suite *meta_suite(void)
{
    Suite *s = suite_create("meta");
    TCase *tc = tcase_create("requests");

    tcase_add_test(tc, mg_with_flags);
    tcase_add_test(tc, mg_key_alone_and_odd_spacing);
    tcase_add_test(tc, ms_length_mode_and_flags);
    tcase_add_test(tc, md_ma_mn_me);
    tcase_add_test(tc, every_flag_letter);
    tcase_add_test(tc, malformed_lines_get_memcacheds_answer);
    tcase_add_test(tc, opaque_and_key_limits);
    tcase_add_test(tc, not_meta_lines);
    tcase_add_test(tc, a_reused_request_is_fully_overwritten);
    tcase_add_test(tc, names_match_the_enums);
    suite_add_tcase(s, tc);

    tc = tcase_create("base64");
    tcase_add_test(tc, base64_keys_decode_as_memcached_does);
    tcase_add_test(tc, bad_base64_keys);
    tcase_add_test(tc, longest_base64_key);
    suite_add_tcase(s, tc);

    tc = tcase_create("quiet and data");
    tcase_add_test(tc, quiet_table);
    tcase_add_test(tc, data_blocks);
    suite_add_tcase(s, tc);

    tc = tcase_create("backend lines");
    tcase_add_test(tc, backend_lines_keep_every_flag);
    suite_add_tcase(s, tc);

    tc = tcase_create("replies");
    tcase_add_test(tc, reply_kinds);
    tcase_add_test(tc, reply_va_lengths);
    tcase_add_test(tc, reply_garbage);
    tcase_add_test(tc, mconn_still_refuses_mn_and_me);
    tcase_add_test(tc, drop_flags_removes_only_the_added_tokens);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return check_run(meta_suite());
}
