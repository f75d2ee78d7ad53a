/* fuzz_meta.c — libFuzzer target for src/meta.c, the parser of clients'
 * meta-protocol request lines, its backend line builder and its reply
 * classifier.
 *
 * The input is one line (an exact-size heap copy, so ASan catches a byte
 * read past it). Checked:
 *
 * - the verdict is OK, ERR (with memcached's error line) or NOT_META;
 * - OK: the key, every flag argument and the opaque lie inside the line,
 *   before any NUL; the key's bytes (hkey) inside the line or, for b, in
 *   the key buffer; lengths within memcached's limits; ms has a length,
 *   the others none; quiet_drops is the table's;
 * - ERR: only an ms swallows, and only with a length read;
 * - round trip: the backend line fits in the line's length plus one,
 *   parses to the same request (same command, key, key bytes, length,
 *   flags), and is rebuilt byte for byte;
 * - meta_parse_reply on the same bytes: flags inside the line.
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "meta.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool within(const void *p, size_t n, const char *buf, size_t len)
{
    const char *c = p;
    return c >= buf && n <= len && (size_t)(c - buf) <= len - n;
}

static void check_ok(const struct meta_req *r, const char *line, size_t end,
                     const uint8_t *keybuf)
{
    assert(r->cmd > META_CMD_NONE && r->cmd < META_CMD_COUNT);
    assert(r->error == NULL && !r->swallow);
    if (r->cmd == META_CMD_MN) {
        assert(r->key == NULL);
        return;
    }
    assert(r->keylen >= 1 && r->keylen <= META_KEY_MAX);
    assert(within(r->key, r->keylen, line, end));
    assert(memchr(r->key, ' ', r->keylen) == NULL);
    if (r->base64) {
        assert(r->hkey == keybuf && r->hkeylen >= 1 && r->hkeylen <= META_KEYBUF_SIZE);
        assert(r->hkeylen <= r->keylen / 4 * 3);
    } else {
        assert(r->hkey == (const uint8_t *)r->key && r->hkeylen == r->keylen);
    }
    assert(r->nflags <= META_FLAGS_MAX);
    for (uint32_t i = 0; i < r->nflags; i++) {
        const struct meta_flag *f = &r->flags[i];
        assert(within(f->arg, f->arg_len, line, end));
        assert(f->arg[-1] == f->letter);
        for (uint32_t j = 0; j < i; j++) {
            assert(r->flags[j].letter != f->letter);
        }
    }
    if (r->opaque != NULL) {
        assert(within(r->opaque, r->opaque_len, line, end));
        assert(r->opaque_len + 1 <= META_OPAQUE_MAX);
    }
    if (r->cmd == META_CMD_MS) {
        assert(r->datalen >= 0 && r->datalen <= INT32_MAX - 2);
    } else {
        assert(r->datalen == -1);
    }
    assert(r->quiet_drops == (r->quiet ? meta_quiet_drops(r->cmd, false) : 0));
}

static void check_round_trip(const struct meta_req *r, size_t len)
{
    char *out = malloc(len + 1), *again = malloc(len + 1);
    size_t n = meta_format_request(r, out, len + 1);
    struct meta_req r2;
    uint8_t keybuf2[META_KEYBUF_SIZE];

    assert(out != NULL && again != NULL);
    if (r->cmd == META_CMD_MN) {
        assert(n == 0);
        goto done;
    }
    assert(n > 0 && n <= len && strlen(out) == n);
    char *copy = malloc(n);        /* exact size again, for ASan */
    assert(copy != NULL);
    memcpy(copy, out, n);
    assert(meta_parse_request(copy, n, &r2, keybuf2) == META_OK);
    assert(r2.cmd == r->cmd && r2.keylen == r->keylen);
    assert(memcmp(r2.key, r->key, r->keylen) == 0);
    assert(r2.base64 == r->base64 && r2.hkeylen == r->hkeylen);
    assert(memcmp(r2.hkey, r->hkey, r->hkeylen) == 0);
    assert(r2.datalen == r->datalen && r2.quiet == r->quiet && r2.mode == r->mode);
    if (r->cmd != META_CMD_ME) {
        assert(r2.nflags == r->nflags);
        for (uint32_t i = 0; i < r->nflags; i++) {
            assert(r2.flags[i].letter == r->flags[i].letter);
            assert(r2.flags[i].arg_len == r->flags[i].arg_len);
            assert(memcmp(r2.flags[i].arg, r->flags[i].arg, r->flags[i].arg_len) == 0);
        }
    }
    assert(meta_format_request(&r2, again, len + 1) == n);
    assert(memcmp(again, out, n) == 0);
    free(copy);
done:
    free(out);
    free(again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *line = malloc(size ? size : 1);
    struct meta_req r;
    uint8_t keybuf[META_KEYBUF_SIZE];

    assert(line != NULL);
    memcpy(line, data, size);
    const char *nul = memchr(line, '\0', size);
    size_t end = nul ? (size_t)(nul - line) : size;

    int rc = meta_parse_request(line, size, &r, keybuf);
    if (rc == META_OK) {
        check_ok(&r, line, end, keybuf);
        check_round_trip(&r, size);
    } else if (rc == META_ERR) {
        assert(r.error != NULL);
        assert(strcmp(r.error, "ERROR") == 0 || strncmp(r.error, "CLIENT_ERROR ", 13) == 0);
        assert(!r.swallow || (r.cmd == META_CMD_MS && r.datalen >= 0));
    } else {
        assert(rc == META_NOT_META);
    }

    struct meta_rsp rsp;
    if (meta_parse_reply(line, size, &rsp) == META_REPLY_OK) {
        assert(rsp.kind < META_RSP_COUNT);
        assert(rsp.flags == NULL || within(rsp.flags, rsp.flags_len, line, size));
    }
    free(line);
    return 0;
}
