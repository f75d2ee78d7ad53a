/* meta_verdict.c — src/meta.c's verdict on request lines, for
 * tests/integration/test_meta.py, which builds it and compares each verdict
 * with what a real memcached answered.
 *
 * stdin: one request line per input line, hex-encoded (a line may hold any
 * byte). stdout: one verdict per line:
 *   ok <cmd> <quiet 0|1> <drops mask> <datalen> <hex of the key's bytes>
 *      <hex of the backend line>
 *   err <swallow 0|1> <datalen> <error line>
 *   notmeta
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "meta.h"

static void hex(const unsigned char *p, size_t n)
{
    if (n == 0)
        fputs("-", stdout);
    for (size_t i = 0; i < n; i++)
        printf("%02x", p[i]);
}

int main(void)
{
    static char in[65536];
    static unsigned char line[32768];
    static char out[32768];

    while (fgets(in, sizeof(in), stdin) != NULL) {
        size_t n = 0;
        for (const char *p = in; p[0] && p[1] && p[0] != '\n'; p += 2) {
            unsigned v;
            if (sscanf(p, "%2x", &v) != 1 || n == sizeof(line))
                return 2;
            line[n++] = (unsigned char)v;
        }
        struct meta_req req;
        uint8_t keybuf[META_KEYBUF_SIZE];
        int rc = meta_parse_request((const char *)line, n, &req, keybuf);
        if (rc == META_NOT_META) {
            puts("notmeta");
        } else if (rc == META_ERR) {
            printf("err %d %lld %s\n", req.swallow, (long long)req.datalen, req.error);
        } else {
            size_t f = meta_format_request(&req, out, sizeof(out));
            printf("ok %s %d %u %lld ", meta_cmd_name[req.cmd], req.quiet,
                   req.quiet_drops, (long long)req.datalen);
            hex(req.hkey, req.hkey ? req.hkeylen : 0);
            putchar(' ');
            hex((const unsigned char *)out, f);
            putchar('\n');
        }
        fflush(stdout);
    }
    return 0;
}
