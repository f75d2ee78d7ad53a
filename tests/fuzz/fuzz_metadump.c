/* fuzz_metadump.c — libFuzzer target for mdump_parse (src/metadump.c), the
 * parser of `lru_crawler metadump` output that the index rebuild, the
 * sweeper's checks and the migration's closing pass read from backends.
 *
 * The input is the byte stream from the server, parsed line after line as
 * mdump_read does. Checked for every line:
 * - ITEM: the line lies within the buffer, the key is 1..250 bytes with no
 *   space or control byte, and every prefix of the line parses as MORE;
 * - END: the reason lies within the buffer; ERROR says why.
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "metadump.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *copy = malloc(size ? size : 1);
    char keybuf[MDUMP_KEY_MAX + 1];
    size_t off = 0;

    memcpy(copy, data, size);
    while (off < size) {
        struct mdump_item it;
        enum mdump_end end;
        const char *why;
        size_t why_len, used;
        enum mdump_parse_rc rc = mdump_parse(copy + off, size - off, &it, keybuf, &end,
                                             &why, &why_len, &used);
        if (rc == MDUMP_PARSE_MORE) {
            break;
        }
        assert(why == NULL || why_len <= MDUMP_LINE_MAX + 2 || rc == MDUMP_PARSE_ERROR);
        if (rc == MDUMP_PARSE_ERROR) {
            assert(why != NULL && why_len > 0);
            break;
        }
        assert(used > 0 && used <= size - off);
        if (rc == MDUMP_PARSE_SKIP) {
            off += used;
            continue;
        }
        if (rc == MDUMP_PARSE_END) {
            assert(why >= copy + off && why + why_len <= copy + off + used);
            break;
        }
        assert(it.key == keybuf && it.len >= 1 && it.len <= MDUMP_KEY_MAX);
        for (size_t i = 0; i < it.len; i++) {
            assert((unsigned char)it.key[i] > ' ' && (unsigned char)it.key[i] != 0x7f);
        }
        for (size_t k = 0; k + 1 < used; k += used / 3 + 1) {
            assert(mdump_parse(copy + off, k, &it, keybuf, &end, &why, &why_len,
                               &(size_t){ 0 }) == MDUMP_PARSE_MORE);
        }
        off += used;
    }
    free(copy);
    return 0;
}
