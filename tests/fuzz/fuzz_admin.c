/* fuzz_admin.c — libFuzzer target for the admin port's parsing of what an
 * HTTP client sends (src/admin.c): admin_route_of on the request target and
 * admin_query_flag on a query string (evhttp's URI parser and its
 * percent-decoding under them).
 *
 * The input is a request target as it stands on the request line
 * ("/ring?points=1"), in an exact-size heap copy so ASan sees any read past
 * it. A NUL byte splits it: what follows is a flag name to look up. Checked:
 *
 * - the route is -1 or one of the pages, and a target that is exactly
 *   a page's path routes to it;
 * - a flag is only on when the query holds that name, and adding
 *   "?points=1" to a bare known path both keeps the route and sets it.
 */
#include <assert.h>
#include <ctype.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const pages[] = { "/metrics", "/healthz", "/ring", "/migration",
                                     "/", "/status", "/status.json" };
#define NPAGES (sizeof(pages) / sizeof(pages[0]))

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *target = malloc(size + 1);

    if (target == NULL) {
        return 0;
    }
    memcpy(target, data, size);
    target[size] = '\0';
    const char *name = memchr(data, '\0', size) != NULL ?
                       target + strlen(target) + 1 : "points";

    int route = admin_route_of(target);
    assert(route >= -1 && route < (int)NPAGES);
    for (size_t i = 0; i < NPAGES; i++) {
        if (strcmp(target, pages[i]) == 0) {
            assert(route == (int)i);
        }
    }

    const char *q = strchr(target, '?');
    bool on = admin_query_flag(q != NULL ? q + 1 : target, name);
    if (on) {
        /* evhttp decodes '+' and %xx in names and matches them ignoring
         * case: the name's first letter (either case), or an encoding of
         * something, must be there. */
        int c = (unsigned char)name[0];
        assert(c == '\0' || strchr(target, tolower(c)) != NULL ||
               strchr(target, toupper(c)) != NULL || strchr(target, '%') != NULL ||
               strchr(target, '+') != NULL);
    }

    if (route >= 0 && q == NULL && strlen(target) < 4096) {
        char with[4200];
        snprintf(with, sizeof(with), "%s?points=1", target);
        assert(admin_route_of(with) == route);
        assert(admin_query_flag("points=1", "points"));
    }
    free(target);
    return 0;
}
