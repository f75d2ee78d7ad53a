/* fuzz_ringrec.c — libFuzzer target for ringrec_parse (src/ringrec.c).
 *
 * The input is the HGETALL reply of <prefix>:ring as migrate.c's
 * ring_from_reply hands it over: a list of C strings, field, value, field,
 * value... Here each string ends at a NUL byte (the last one at the end of
 * the input), each in its own exact-size heap copy so ASan sees any read past
 * it. Checked whenever a ring comes back:
 *
 * - it is within the bounds ringrec.h promises (servers, string lengths,
 *   weights);
 * - the record ringrec_fields writes for it parses back to the same ring
 *   (same fingerprint, same epoch), and the input record matches it.
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ringrec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_STRINGS 32

static void check_ring(const struct ring *r, const char *const *kv, size_t n,
                       uint64_t epoch)
{
    assert(r->nservers >= 1 && r->nservers <= RINGREC_MAX_SERVERS);
    for (uint32_t i = 0; i < r->nservers; i++) {
        size_t il = strlen(r->servers[i].identity), al = strlen(r->servers[i].addr);
        assert(il >= 1 && il <= RINGREC_STR_MAX);
        assert(al >= 1 && al <= RINGREC_STR_MAX);
        assert(r->servers[i].weight >= 1 && r->servers[i].weight <= RINGREC_WEIGHT_MAX);
    }

    char *fields[RINGREC_FIELDS * 2];
    int nf = ringrec_fields(r, epoch, fields);
    assert(nf == RINGREC_FIELDS * 2);
    uint64_t back_epoch = ~epoch;
    struct ring *back = ringrec_parse((const char *const *)fields, (size_t)nf,
                                      &back_epoch);
    assert(back != NULL);
    assert(back_epoch == epoch);
    char a[RINGREC_FP_SIZE], b[RINGREC_FP_SIZE];
    ringrec_fingerprint(r, a);
    ringrec_fingerprint(back, b);
    assert(strcmp(a, b) == 0);
    assert(back->npoints == r->npoints);
    ring_unref(back);
    ringrec_fields_free(fields, nf);
    assert(ringrec_matches(kv, n, r));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *strs[MAX_STRINGS];
    size_t n = 0, at = 0;

    while (n < MAX_STRINGS && (at < size || n == 0)) {
        const uint8_t *nul = memchr(data + at, '\0', size - at);
        size_t len = nul ? (size_t)(nul - (data + at)) : size - at;
        strs[n] = malloc(len + 1);
        if (strs[n] == NULL) {
            break;
        }
        memcpy(strs[n], data + at, len);
        strs[n][len] = '\0';
        n++;
        at += len + (nul != NULL);
    }

    uint64_t epoch = 0xfeedfacecafebeefull;
    struct ring *r = ringrec_parse((const char *const *)strs, n, &epoch);
    if (r != NULL) {
        check_ring(r, (const char *const *)strs, n, epoch);
        ring_unref(r);
    } else {
        assert(epoch == 0xfeedfacecafebeefull);   /* refused: epoch untouched */
    }
    for (size_t i = 0; i < n; i++) {
        free(strs[i]);
    }
    return 0;
}
