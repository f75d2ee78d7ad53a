/* cli.c — operator commands that read a config and print what the ring does. */
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "config.h"

/* Load a config, printing every error; NULL when it is invalid. */
static struct config *load_or_report(const char *path)
{
    struct conf_errors errs;
    struct config *c = config_load(path, &errs);

    for (size_t i = 0; i < errs.n; i++) {
        fprintf(stderr, "%s\n", errs.msgs[i]);
    }
    conf_errors_free(&errs);
    return c;
}

int cli_test_config(const char *path, FILE *out)
{
    struct config *c = load_or_report(path);
    char err[256];
    int rc = 0;

    if (c == NULL) {
        return 1;
    }
    for (uint32_t i = 0; i < c->npools; i++) {
        struct ring *r = conf_pool_ring(&c->pools[i], err, sizeof(err));
        if (r == NULL) {
            fprintf(stderr, "%s: pool '%s': %s\n", path, c->pools[i].name, err);
            rc = 1;
        }
        ring_unref(r);
    }
    if (rc == 0) {
        fprintf(out, "ok\n");
    }
    config_free(c);
    return rc;
}

static int pool_selected(const struct conf_pool *p, const char *pool)
{
    return pool == NULL || strcmp(p->name, pool) == 0;
}

int cli_locate(const char *path, const char *pool, char *const keys[], int nkeys,
               FILE *out)
{
    struct config *c = load_or_report(path);
    char err[256];
    int matched = 0;

    if (c == NULL) {
        return 1;
    }
    fprintf(out, "pool key hash point server addr\n");
    for (uint32_t i = 0; i < c->npools; i++) {
        const struct conf_pool *p = &c->pools[i];
        if (!pool_selected(p, pool)) {
            continue;
        }
        matched++;
        struct ring *r = conf_pool_ring(p, err, sizeof(err));
        if (r == NULL) {
            fprintf(stderr, "pool '%s': %s\n", p->name, err);
            config_free(c);
            return 1;
        }
        for (int k = 0; k < nkeys; k++) {
            uint32_t h = ring_key_hash(r, keys[k], strlen(keys[k]));
            const struct ring_point *pt = &r->points[ring_find(r, h)];
            const struct ring_server *s = &r->servers[pt->server];
            fprintf(out, "%s %s %u %u %s %s\n", p->name, keys[k], h, pt->value,
                    s->identity, s->addr);
        }
        ring_unref(r);
    }
    config_free(c);
    if (matched == 0) {
        fprintf(stderr, "%s: no pool named '%s'\n", path, pool);
        return 1;
    }
    return 0;
}

int cli_ring(const char *path, const char *pool, int show_points, FILE *out)
{
    struct config *c = load_or_report(path);
    char err[256];
    int matched = 0;

    if (c == NULL) {
        return 1;
    }
    for (uint32_t i = 0; i < c->npools; i++) {
        const struct conf_pool *p = &c->pools[i];
        if (!pool_selected(p, pool)) {
            continue;
        }
        matched++;
        struct ring *r = conf_pool_ring(p, err, sizeof(err));
        if (r == NULL) {
            fprintf(stderr, "pool '%s': %s\n", p->name, err);
            config_free(c);
            return 1;
        }
        fprintf(out, "pool %s: %u servers, %u points, compat %s, hash %s\n",
                p->name, r->nservers, r->npoints, ring_compat_names[r->compat],
                hash_names[r->hash]);
        fprintf(out, "  %-24s %-24s %8s %7s %8s\n", "server", "addr", "weight",
                "points", "share");
        for (uint32_t s = 0; s < r->nservers; s++) {
            const struct ring_server *sv = &r->servers[s];
            fprintf(out, "  %-24s %-24s %8u %7u %7.3f%%\n", sv->identity, sv->addr,
                    sv->weight, sv->npoints, 100.0 * (double)sv->span / RING_SPACE);
        }
        if (show_points) {
            fprintf(out, "  points (value server):\n");
            for (uint32_t k = 0; k < r->npoints; k++) {
                fprintf(out, "  %u %s\n", r->points[k].value,
                        r->servers[r->points[k].server].identity);
            }
        }
        ring_unref(r);
    }
    config_free(c);
    if (matched == 0) {
        fprintf(stderr, "%s: no pool named '%s'\n", path, pool);
        return 1;
    }
    return 0;
}

/*
 * Only a pool with an index moves the keys that change owner (the index
 * lists them; docs/ARCHITECTURE.md, "Resizing a fleet"), and only keys
 * indexed before the change: an index in just one of the two files moves
 * nothing either. Says which file lacks it, or NULL when both have one.
 */
static const char *index_missing(const struct conf_pool *pa, const struct conf_pool *pb)
{
    if (pa->index.enabled && pb->index.enabled) {
        return NULL;
    }
    return pa->index.enabled ? " in the new file" : pb->index.enabled ?
           " in the old file" : "";
}

static void print_pool_diff(const struct conf_pool *pa, const struct conf_pool *pb,
                            const struct ring *a, const struct ring *b, FILE *out)
{
    const char *name = pb->name, *unindexed = index_missing(pa, pb);
    struct ring_diff d;

    if (ring_diff(a, b, &d) != 0) {
        fprintf(stderr, "pool '%s': out of memory computing the diff\n", name);
        return;
    }
    fprintf(out, "pool %s: %u -> %u servers, %.3f%% of keys move, %.3f%% change "
            "v-node only, %zu arcs\n", name, a->nservers, b->nservers,
            100.0 * (double)d.moved / RING_SPACE,
            100.0 * (double)d.reindexed / RING_SPACE, d.narcs);
    if (unindexed != NULL && d.moved > 0) {
        fprintf(out, "  warning: pool %s has no index%s: the %.3f%% of keys that "
                "change owner will miss after this change, until written again\n",
                name, unindexed, 100.0 * (double)d.moved / RING_SPACE);
    }
    for (uint32_t i = 0; i < a->nservers; i++) {
        for (uint32_t j = 0; j < b->nservers; j++) {
            uint64_t f = d.flow[(size_t)i * b->nservers + j];
            if (f > 0) {
                fprintf(out, "  %s -> %s: %.3f%%\n", a->servers[i].identity,
                        b->servers[j].identity, 100.0 * (double)f / RING_SPACE);
            }
        }
    }
    ring_diff_free(&d);
}

int cli_diff(const char *old_path, const char *new_path, FILE *out)
{
    struct config *a = load_or_report(old_path);
    struct config *b = load_or_report(new_path);
    char err[256];
    int rc = 1;

    if (a == NULL || b == NULL) {
        goto done;
    }
    for (uint32_t i = 0; i < b->npools; i++) {
        const struct conf_pool *pb = &b->pools[i];
        const struct conf_pool *pa = config_pool(a, pb->name);
        if (pa == NULL) {
            fprintf(out, "pool %s: new\n", pb->name);
            continue;
        }
        struct ring *ra = conf_pool_ring(pa, err, sizeof(err));
        struct ring *rb = ra ? conf_pool_ring(pb, err, sizeof(err)) : NULL;
        if (rb == NULL) {
            fprintf(stderr, "pool '%s': %s\n", pb->name, err);
            ring_unref(ra);
            goto done;
        }
        if (ra->hash != rb->hash || ra->has_tag != rb->has_tag ||
            (ra->has_tag && memcmp(ra->tag, rb->tag, 2) != 0)) {
            fprintf(out, "pool %s: the key hash changes (%s -> %s): every key "
                    "may move\n", pb->name, hash_names[ra->hash],
                    hash_names[rb->hash]);
            if (index_missing(pa, pb) != NULL) {
                fprintf(out, "  warning: pool %s has no index%s: the keys that change "
                        "owner will miss after this change, until written again\n",
                        pb->name, index_missing(pa, pb));
            }
        } else {
            print_pool_diff(pa, pb, ra, rb, out);
        }
        ring_unref(ra);
        ring_unref(rb);
    }
    for (uint32_t i = 0; i < a->npools; i++) {
        if (config_pool(b, a->pools[i].name) == NULL) {
            fprintf(out, "pool %s: removed\n", a->pools[i].name);
        }
    }
    rc = 0;
done:
    config_free(a);
    config_free(b);
    return rc;
}
