/* fuzz_config.c — libFuzzer target for the pool file (src/config.c).
 *
 * The input is the file's bytes, handed to config_load_buffer in an
 * exact-size heap copy (no NUL after it) so ASan sees any read past the end.
 * Checked on every input:
 *
 * - a refused file has at least one error and at most CONF_ERRORS_MAX of
 *   them plus the "... and K more" line; an accepted one has none;
 * - an accepted file is within the limits config.h promises (pools,
 *   servers, string lengths, unique identities and addresses), and every
 *   pool's ring builds: a reload prepares every ring before it changes
 *   anything (src/proxy.c), so a file the loader accepts must never fail
 *   there;
 * - `stats settings` (conf_pool_settings) prints every accepted pool: each
 *   name non-empty, never the index password, listen's mode within 0777.
 */
#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_setting(void *arg, const char *name, const char *value)
{
    (void)arg;
    assert(name[0] != '\0' && value != NULL);
    assert(strstr(name, "password") == NULL);
}

static void check_config(const struct config *c)
{
    uint32_t total = 0;

    assert(c->npools >= 1 && c->npools <= CONF_POOLS_MAX);
    for (uint32_t i = 0; i < c->npools; i++) {
        const struct conf_pool *p = &c->pools[i];
        char err[256];

        assert(config_pool(c, p->name) == p);
        assert(p->nservers >= 1);
        total += p->nservers;
        for (uint32_t s = 0; s < p->nservers; s++) {
            const struct conf_server *sv = &p->servers[s];
            assert(sv->identity != NULL && sv->addr.text != NULL);
            assert(strlen(sv->identity) >= 1 && strlen(sv->identity) <= CONF_STR_MAX);
            assert(strlen(sv->addr.text) <= CONF_STR_MAX);
            assert(sv->weight >= 1);
            for (uint32_t t = 0; t < s; t++) {
                assert(strcmp(p->servers[t].identity, sv->identity) != 0);
                assert(strcmp(p->servers[t].addr.text, sv->addr.text) != 0);
            }
        }
        struct ring *r = conf_pool_ring(p, err, sizeof(err));
        if (r == NULL) {
            fprintf(stderr, "pool %s: accepted but its ring fails: %s\n", p->name, err);
            abort();
        }
        assert(r->nservers == p->nservers);
        assert(conf_pool_same_ring(p, p));
        ring_unref(r);
        assert(p->listen_mode >= -1 && p->listen_mode <= 0777);
        assert(p->listen_mode == -1 || p->listen.is_unix);
        conf_pool_settings(p, check_setting, NULL);
    }
    assert(total <= CONF_SERVERS_MAX);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size ? size : 1);
    struct conf_errors errs;
    struct config *c;

    if (buf == NULL) {
        return 0;
    }
    memcpy(buf, data, size);
    c = config_load_buffer("fuzz.yml", buf, size, &errs);
    if (c == NULL) {
        assert(errs.n >= 1 && errs.n <= CONF_ERRORS_MAX + 1);
        for (size_t i = 0; i < errs.n; i++) {
            assert(strncmp(errs.msgs[i], "fuzz.yml", 8) == 0);
        }
    } else {
        assert(errs.n == 0);
        check_config(c);
    }
    config_free(c);
    conf_errors_free(&errs);
    free(buf);
    return 0;
}
