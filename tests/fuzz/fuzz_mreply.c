/* fuzz_mreply.c — libFuzzer target for mreply_parse (src/mconn.c), the
 * parser of the meta replies a memcached sends to a moving connection.
 *
 * The first two input bytes choose the largest value accepted (0..65535);
 * the rest is the byte stream from the server, parsed reply after reply as
 * mconn_read_cb does. Checked for every reply:
 *
 * - DONE: it lies within the buffer, ends with "\r\n", its value (VA) is at
 *   most the cap and sits right before that "\r\n", and every prefix of it
 *   parses as MORE asking for no more than the whole reply;
 * - MORE asks for more than is there; ERROR says why;
 * - mreply_flag reads only the flags (the input is an exact-size heap copy,
 *   so ASan catches a byte past it).
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mconn.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool within(const char *p, size_t n, const char *buf, size_t len)
{
    return p >= buf && n <= len && (size_t)(p - buf) <= len - n;
}

static void check_prefixes(const char *buf, size_t used, size_t max_value)
{
    size_t ks[] = { 0, 1, used / 2, used > 2 ? used - 2 : 0, used - 1 };

    for (size_t i = 0; i < sizeof(ks) / sizeof(ks[0]); i++) {
        struct mreply r;
        size_t need;
        enum mreply_parse_rc rc = mreply_parse(buf, ks[i], max_value, &r, &need);
        assert(rc == MREPLY_PARSE_MORE);
        assert(need > ks[i] && need <= used);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) {
        return 0;
    }
    size_t max_value = (size_t)data[0] << 8 | data[1];
    const char *buf = (const char *)data + 2, *p = buf;
    size_t len = size - 2;

    for (;;) {
        size_t left = len - (size_t)(p - buf), used = 0;
        struct mreply r;
        enum mreply_parse_rc rc = mreply_parse(p, left, max_value, &r, &used);
        if (rc == MREPLY_PARSE_MORE) {
            assert(used > left);
            break;
        }
        if (rc == MREPLY_PARSE_ERROR) {
            assert(r.status == MREPLY_FAIL && r.error != NULL && *r.error);
            break;
        }
        assert(rc == MREPLY_PARSE_DONE);
        assert(used >= 4 && used <= left);
        assert(p[used - 2] == '\r' && p[used - 1] == '\n');
        assert(r.status < MREPLY_COUNT);
        assert(r.flags_len == 0 || within(r.flags, r.flags_len, p, used));
        if (r.status == MREPLY_VA) {
            assert(r.value_len <= max_value);
            assert(within(r.value, r.value_len, p, used));
            assert(r.value + r.value_len + 2 == p + used);
        } else {
            assert(r.value == NULL && r.value_len == 0);
        }
        if (r.status == MREPLY_FAIL) {
            assert(r.error == NULL && r.flags == p);
        }
        int64_t v;
        const char letters[] = "cftksO";
        for (size_t i = 0; i < sizeof(letters) - 1; i++) {
            (void)mreply_flag(&r, letters[i], &v);
        }
        check_prefixes(p, used, max_value);
        p += used;
    }
    return 0;
}
