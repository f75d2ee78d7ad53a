/*
 * test_config.c — the YAML pool file (docs/ARCHITECTURE.md, "The config file"): twemproxy's keys and
 * defaults, ringproxy's own sections, the identity rule, the example files,
 * and one bad file per kind of error with its exact "FILE:LINE:COL: " prefix.
 *
 * Fixtures live in tests/unit/conf/, found from $RP_SRCDIR (the repository
 * root; default ".", since `make unit` runs the tests from there). The
 * examples in conf/ are the user's to edit (`make run` invites it), so the
 * tests read copies of them: example_ringproxy.yml, example_nutcracker.yml.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "sweep.h"
#include "check_run.h"

/* A path under the repository root; the result is static (one at a time). */
static const char *src_path(const char *rel)
{
    static char path[4096];
    const char *root = getenv("RP_SRCDIR");

    snprintf(path, sizeof(path), "%s/%s", root && *root ? root : ".", rel);
    return path;
}

static const char *fixture(const char *name)
{
    char rel[512];

    snprintf(rel, sizeof(rel), "tests/unit/conf/%s", name);
    return src_path(rel);
}

/* Load a file that must be valid; fails the test with every error if not. */
static struct config *load_ok(const char *path)
{
    struct conf_errors errs;
    struct config *c = config_load(path, &errs);

    if (c == NULL) {
        char all[4096] = "";
        for (size_t i = 0; i < errs.n; i++) {
            strncat(all, errs.msgs[i], sizeof(all) - strlen(all) - 2);
            strcat(all, "\n");
        }
        conf_errors_free(&errs);
        ck_abort_msg("%s should load, got:\n%s", path, all);
    }
    ck_assert_uint_eq(errs.n, 0);
    conf_errors_free(&errs);
    return c;
}

static const struct conf_pool *pool(const struct config *c, const char *name)
{
    const struct conf_pool *p = config_pool(c, name);

    ck_assert_msg(p != NULL, "no pool '%s'", name);
    return p;
}

static void check_server(const struct conf_server *s, const char *addr,
                         uint32_t weight, const char *name, const char *identity)
{
    ck_assert_str_eq(s->addr.text, addr);
    ck_assert_uint_eq(s->weight, weight);
    if (name == NULL) {
        ck_assert_ptr_null(s->name);
    } else {
        ck_assert_pstr_eq(s->name, name);
    }
    ck_assert_str_eq(s->identity, identity);
}

/* --- good files ---------------------------------------------------------- */

START_TEST(defaults_are_twemproxys_but_every_timeout_is_finite)
{
    struct config *c = load_ok(fixture("good_minimal.yml"));
    const struct conf_pool *p = pool(c, "solo");

    ck_assert_uint_eq(c->npools, 1);
    ck_assert_str_eq(p->listen.text, "127.0.0.1:22121");
    ck_assert_str_eq(p->listen.host, "127.0.0.1");
    ck_assert_uint_eq(p->listen.port, 22121);
    ck_assert_int_eq(p->hash, HASH_FNV1A_64);
    ck_assert(!p->has_tag);
    ck_assert_int_eq(p->compat, RING_COMPAT_LIBMEMCACHED);
    ck_assert_int_eq(p->timeout, 5000);         /* twemproxy: -1, forever */
    ck_assert_int_eq(p->client_timeout, 0);
    ck_assert_int_eq(p->value_timeout, 10000);
    ck_assert_int_eq(p->client_max_memory, 64 << 20);
    ck_assert_int_eq(p->server_max_queue, 16 << 20);
    ck_assert_int_eq(p->backlog, 512);
    ck_assert_int_eq(p->server_connections, 1);
    ck_assert_int_eq(p->server_retry_timeout, 30000);
    ck_assert_int_eq(p->server_failure_limit, 2);
    ck_assert_int_eq(p->client_connections, 0);
    ck_assert(!p->preconnect);
    ck_assert(!p->auto_eject_hosts);
    ck_assert(!p->redis);
    ck_assert(!p->index.enabled);
    ck_assert_int_eq(p->migration.rate, 50000);
    ck_assert(p->migration.delete_source);
    ck_assert_uint_eq(p->nservers, 1);
    check_server(&p->servers[0], "127.0.0.1:11211", 1, NULL, "127.0.0.1");
    config_free(c);
}
END_TEST

START_TEST(several_pools_with_every_twemproxy_key)
{
    struct config *c = load_ok(fixture("good_pools.yml"));

    ck_assert_uint_eq(c->npools, 3);
    ck_assert_str_eq(c->pools[0].name, "alpha");
    ck_assert_str_eq(c->pools[1].name, "beta");
    ck_assert_str_eq(c->pools[2].name, "gamma");
    ck_assert_ptr_null(config_pool(c, "delta"));

    const struct conf_pool *p = pool(c, "alpha");
    ck_assert_int_eq(p->hash, HASH_FNV1A_64);
    ck_assert_int_eq(p->timeout, 400);
    ck_assert_int_eq(p->backlog, 1024);
    ck_assert(p->preconnect);
    ck_assert_int_eq(p->server_connections, 2);
    ck_assert(p->auto_eject_hosts);
    ck_assert_int_eq(p->server_retry_timeout, 2000);
    ck_assert_int_eq(p->server_failure_limit, 3);
    ck_assert_int_eq(p->client_connections, 100);
    ck_assert(!p->index.enabled);
    ck_assert_int_eq(p->migration.rate, 50000);
    ck_assert(p->migration.delete_source);
    config_free(c);
}
END_TEST

START_TEST(servers_in_both_forms_with_names_and_unix_sockets)
{
    struct config *c = load_ok(fixture("good_pools.yml"));
    const struct conf_pool *p = pool(c, "alpha");

    ck_assert_uint_eq(p->nservers, 4);
    check_server(&p->servers[0], "127.0.0.1:11211", 1, NULL, "127.0.0.1");
    check_server(&p->servers[1], "127.0.0.1:11212", 2, NULL, "127.0.0.1:11212");
    check_server(&p->servers[2], "10.0.0.3:11211", 1, "cache3", "cache3");
    check_server(&p->servers[3], "/var/run/memcached.sock", 1, NULL,
                 "/var/run/memcached.sock");
    ck_assert(p->servers[3].addr.is_unix);
    ck_assert(!p->servers[0].addr.is_unix);
    ck_assert_uint_eq(p->servers[1].addr.port, 11212);

    p = pool(c, "beta");
    ck_assert(p->listen.is_unix);
    ck_assert_str_eq(p->listen.host, "/tmp/ringproxy-beta.sock");
    ck_assert_uint_eq(p->nservers, 3);
    check_server(&p->servers[0], "10.0.0.1:11211", 3, NULL, "10.0.0.1");
    check_server(&p->servers[1], "10.0.0.2:11300", 1, "mc2", "mc2");
    check_server(&p->servers[2], "/var/run/mc.sock", 2, NULL, "/var/run/mc.sock");
    ck_assert(p->servers[2].addr.is_unix);
    config_free(c);
}
END_TEST

START_TEST(identity_is_name_then_host_then_host_port)
{
    struct config *c = load_ok(fixture("good_pools.yml"));
    const struct conf_pool *p = pool(c, "alpha");

    /* libmemcached/twemproxy: host alone on 11211, host:port otherwise. */
    ck_assert_str_eq(p->servers[0].identity, "127.0.0.1");
    ck_assert_str_eq(p->servers[1].identity, "127.0.0.1:11212");
    ck_assert_str_eq(p->servers[2].identity, "cache3");

    /* libketama: the address exactly as written, port and all. */
    p = pool(c, "gamma");
    ck_assert_int_eq(p->compat, RING_COMPAT_LIBKETAMA);
    check_server(&p->servers[0], "10.0.1.1:11211", 600, NULL, "10.0.1.1:11211");
    check_server(&p->servers[1], "10.0.1.2:11211", 300, NULL, "10.0.1.2:11211");
    check_server(&p->servers[2], "10.0.1.3:11212", 200, "kept", "kept");
    /* Waiting forever stays possible when asked for. */
    ck_assert_int_eq(p->timeout, -1);
    ck_assert_int_eq(p->client_timeout, 60000);
    ck_assert_int_eq(p->value_timeout, 0);
    config_free(c);
}
END_TEST

START_TEST(compat_hash_and_hash_tag)
{
    struct config *c = load_ok(fixture("good_pools.yml"));
    const struct conf_pool *p = pool(c, "beta");

    ck_assert_int_eq(p->hash, HASH_MD5);
    ck_assert_int_eq(p->compat, RING_COMPAT_LIBMEMCACHED);
    ck_assert(p->has_tag);
    ck_assert_int_eq(p->hash_tag[0], '{');
    ck_assert_int_eq(p->hash_tag[1], '}');
    /* libketama hashes keys with MD5 unless the file says otherwise. */
    p = pool(c, "gamma");
    ck_assert_int_eq(p->hash, HASH_MD5);
    ck_assert(!p->has_tag);
    config_free(c);
}
END_TEST

START_TEST(index_and_migration_sections)
{
    struct config *c = load_ok(fixture("good_pools.yml"));
    const struct conf_pool *p = pool(c, "beta");

    ck_assert(p->index.enabled);
    ck_assert_str_eq(p->index.redis.text, "127.0.0.1:6379");
    ck_assert_uint_eq(p->index.redis.port, 6379);
    ck_assert_int_eq(p->index.db, 0);
    ck_assert_str_eq(p->index.prefix, "rp:beta");     /* default rp:<pool> */
    ck_assert_int_eq(p->index.rebuild_rate, 50000);   /* default */
    ck_assert_int_eq(p->migration.rate, 1000);
    ck_assert(p->migration.delete_source);           /* default kept */

    p = pool(c, "gamma");
    ck_assert(p->index.enabled);
    ck_assert(p->index.redis.is_unix);
    ck_assert_str_eq(p->index.redis.host, "/var/run/redis.sock");
    ck_assert_int_eq(p->index.db, 3);
    ck_assert_str_eq(p->index.prefix, "cache:gamma");
    ck_assert_int_eq(p->index.rebuild_rate, 0);       /* unlimited */
    ck_assert_int_eq(p->migration.rate, 0);
    ck_assert(!p->migration.delete_source);
    config_free(c);
}
END_TEST

START_TEST(pool_ring_follows_identities_and_weights)
{
    struct config *c = load_ok(fixture("good_pools.yml"));
    char err[256];
    struct ring *r = conf_pool_ring(pool(c, "gamma"), err, sizeof(err));

    ck_assert_msg(r != NULL, "%s", err);
    ck_assert_int_eq(r->compat, RING_COMPAT_LIBKETAMA);
    ck_assert_int_eq(r->hash, HASH_MD5);
    ck_assert_uint_eq(r->nservers, 3);
    ck_assert_str_eq(r->servers[0].identity, "10.0.1.1:11211");
    ck_assert_str_eq(r->servers[2].identity, "kept");
    ck_assert_str_eq(r->servers[2].addr, "10.0.1.3:11212");
    ck_assert_uint_eq(r->servers[0].weight, 600);
    /* libketama: floorf(pct * 40 * 3) digests: 0.545.. -> 65, 0.272.. -> 32,
     * 0.181.. -> 21. */
    ck_assert_uint_eq(r->servers[0].npoints, 65 * 4);
    ck_assert_uint_eq(r->servers[1].npoints, 32 * 4);
    ck_assert_uint_eq(r->servers[2].npoints, 21 * 4);
    ring_unref(r);

    r = conf_pool_ring(pool(c, "beta"), err, sizeof(err));
    ck_assert_msg(r != NULL, "%s", err);
    ck_assert(r->has_tag);
    ck_assert_uint_eq(ring_key_hash(r, "user:{test}", 11), 3446378249u);
    ring_unref(r);
    config_free(c);
}
END_TEST

START_TEST(example_files_are_valid)
{
    char err[256];
    struct config *c = load_ok(fixture("example_ringproxy.yml"));
    const struct conf_pool *p = pool(c, "cache");

    ck_assert_uint_eq(c->npools, 1);
    ck_assert_str_eq(p->listen.text, "127.0.0.1:22121");
    ck_assert_int_eq(p->hash, HASH_MD5);
    ck_assert_int_eq(p->compat, RING_COMPAT_LIBMEMCACHED);
    ck_assert_uint_eq(p->nservers, 3);
    check_server(&p->servers[0], "127.0.0.1:11212", 1, "mc1", "mc1");
    check_server(&p->servers[1], "127.0.0.1:11213", 1, "mc2", "mc2");
    check_server(&p->servers[2], "127.0.0.1:11214", 1, "mc3", "mc3");
    ck_assert(p->index.enabled);
    ck_assert_str_eq(p->index.redis.text, "127.0.0.1:6379");
    ck_assert_str_eq(p->index.prefix, "rp:cache");
    ck_assert_int_eq(p->migration.rate, 50000);
    ck_assert(p->migration.delete_source);
    struct ring *r = conf_pool_ring(p, err, sizeof(err));
    ck_assert_msg(r != NULL, "%s", err);
    ck_assert_uint_eq(r->npoints, 480);
    ring_unref(r);
    config_free(c);

    c = load_ok(fixture("example_nutcracker.yml"));
    p = pool(c, "alpha");
    ck_assert_uint_eq(c->npools, 1);
    ck_assert_int_eq(p->hash, HASH_FNV1A_64);
    ck_assert(p->auto_eject_hosts);
    ck_assert(!p->redis);
    ck_assert_int_eq(p->server_retry_timeout, 2000);
    ck_assert_int_eq(p->server_failure_limit, 1);
    ck_assert(!p->index.enabled);
    ck_assert_uint_eq(p->nservers, 3);
    check_server(&p->servers[0], "127.0.0.1:11212", 1, NULL, "127.0.0.1:11212");
    check_server(&p->servers[2], "127.0.0.1:11214", 1, NULL, "127.0.0.1:11214");
    r = conf_pool_ring(p, err, sizeof(err));
    ck_assert_msg(r != NULL, "%s", err);
    ring_unref(r);
    config_free(c);
}
END_TEST

/* --- bad files: one per kind of error ------------------------------------ */

static const struct {
    const char *file;
    const char *want;       /* what follows "PATH:" in the one error */
} bad[] = {
    { "bad_unknown_key_pool.yml", "3:3: unknown key 'hash_fn' (expected one of: "
      "listen, hash, hash_tag, distribution," },
    { "bad_unknown_key_index.yml", "7:5: unknown key 'database' (expected one "
      "of: redis, db, prefix," },
    { "bad_unknown_key_migration.yml", "8:5: unknown key 'speed' (expected one "
      "of: rate, delete_source," },
    { "bad_unknown_key_server.yml", "5:31: unknown key 'wieght' in server "
      "(expected one of: addr, weight, name)" },
    { "bad_duplicate_key.yml", "6:3: duplicate key 'hash'" },
    { "bad_duplicate_pool.yml", "5:1: duplicate pool 'cache'" },
    { "bad_duplicate_identity.yml", "6:7: pool 'cache': duplicate server "
      "identity 'mc1' (also at line 4)" },
    { "bad_duplicate_identity_derived.yml", "6:7: pool 'cache': duplicate "
      "server identity '10.0.0.1' (also at line 5)" },
    { "bad_duplicate_address.yml", "5:7: pool 'cache': duplicate server "
      "address '127.0.0.1:11212' (also at line 4)" },
    { "bad_weight_zero.yml", "5:7: server '127.0.0.1:11213:0': weight must be "
      "a positive integer, got '0'" },
    { "bad_weight_negative.yml", "4:39: server weight: expected a positive "
      "integer, got '-2'" },
    { "bad_weight_text.yml", "4:7: server '127.0.0.1:11212:heavy': weight must "
      "be a positive integer, got 'heavy'" },
    { "bad_port_zero.yml", "4:7: server '127.0.0.1:0:1': port must be a number "
      "from 1 to 65535" },
    { "bad_port_large.yml", "2:11: listen: bad address '127.0.0.1:70000': port "
      "must be a number from 1 to 65535" },
    { "bad_port_text.yml", "4:14: server addr '127.0.0.1:abc': port must be a "
      "number from 1 to 65535" },
    { "bad_port_missing.yml", "4:14: server addr '127.0.0.1': expected "
      "host:port or an absolute unix socket path" },
    { "bad_distribution_modula.yml", "3:17: distribution: 'modula' is not "
      "supported: it remaps most keys whenever a server is added or removed" },
    { "bad_hash_unknown.yml", "3:9: hash: unknown hash 'sha256' (expected one "
      "of: md5, crc16, crc32, crc32a, fnv1_64, fnv1a_64," },
    { "bad_bool.yml", "3:21: auto_eject_hosts: expected true or false, got 'yes'" },
    { "bad_servers_not_list.yml", "4:5: servers: expected a list, got a mapping" },
    { "bad_servers_empty.yml", "3:12: servers: the list is empty; a pool needs "
      "at least one server" },
    { "bad_listen_missing.yml", "1:1: pool 'cache': 'listen' is required" },
    { "bad_servers_missing.yml", "1:1: pool 'cache': 'servers' is required" },
    { "bad_index_no_redis.yml", "6:5: index: 'redis' is required" },
    { "bad_yaml_syntax.yml", "5:4: YAML syntax error: did not find expected key" },
    { "bad_empty.yml", "1:1: the file is empty; expected at least one pool" },
    { "bad_top_level_list.yml", "1:1: expected a mapping of pool names to "
      "pools, got a list" },
    { "bad_listen_shared.yml", "5:1: pool 'two': listen address 127.0.0.1:22121 "
      "is already used by pool 'one'" },
    { "bad_nested_deep.yml", "4:26: nested more than 16 levels deep" },
    { "bad_alias.yml", "5:7: YAML aliases (*name) are not supported" },
    { "bad_truncated_servers.yml", "6:7: pool 'cache': the file ends inside the "
      "servers list without a final newline; is it truncated?" },
    { "bad_truncated_flow.yml", "5:1: YAML syntax error: did not find expected "
      "node content" },
    { "bad_name_long.yml", "5:7: server '127.0.0.1:11212:1 nnnn" },
    { "bad_name_long_map.yml", "5:37: server name 'nnnn" },
    { "bad_addr_long.yml", "5:14: server addr 'hhhh" },
};
#define NBAD (sizeof(bad) / sizeof(bad[0]))

/* The errors of a file that must not load, each compared as a prefix. */
static void check_errors(const char *path, const char *const want[], size_t n)
{
    struct conf_errors errs;
    struct config *c = config_load(path, &errs);
    char prefix[4096];

    ck_assert_msg(c == NULL, "%s loaded but should not", path);
    ck_assert_msg(errs.n == n, "%s: %zu errors, expected %zu; first: %s", path,
                  errs.n, n, errs.n ? errs.msgs[0] : "(none)");
    for (size_t i = 0; i < n; i++) {
        snprintf(prefix, sizeof(prefix), "%s:%s", path, want[i]);
        ck_assert_msg(strncmp(errs.msgs[i], prefix, strlen(prefix)) == 0,
                      "error %zu is\n  %s\nexpected it to start with\n  %s", i,
                      errs.msgs[i], prefix);
    }
    conf_errors_free(&errs);
}

START_TEST(bad_file_reports_file_line_col)
{
    check_errors(fixture(bad[_i].file), &bad[_i].want, 1);
}
END_TEST

START_TEST(every_error_is_reported_not_only_the_first)
{
    static const char *const want[] = {
        "4:9: hash: unknown hash 'sha1'",
        "5:12: timeout: expected an integer from -1 to 2147483647, got 'soon'",
        "7:7: server '127.0.0.1:11212:0': weight must be a positive integer",
        "8:31: unknown key 'colour' in server",
    };

    check_errors(fixture("bad_many.yml"), want, sizeof(want) / sizeof(want[0]));
}
END_TEST

START_TEST(missing_file_is_reported)
{
    struct conf_errors errs;
    const char *path = fixture("no_such_file.yml");
    char want[4200];

    ck_assert_ptr_null(config_load(path, &errs));
    ck_assert_uint_eq(errs.n, 1);
    snprintf(want, sizeof(want), "%s: cannot open: No such file or directory", path);
    ck_assert_str_eq(errs.msgs[0], want);
    conf_errors_free(&errs);
    conf_errors_free(&errs);    /* idempotent */
    conf_errors_free(NULL);
    config_free(NULL);
}
END_TEST

/* --- limits: what one reload may cost ----------------------------------- */

/* Load bytes as "mem.yml"; returns the config or NULL, errors in errs. */
static struct config *load_buf(const char *buf, size_t len,
                               struct conf_errors *errs)
{
    return config_load_buffer("mem.yml", buf, len, errs);
}

static void check_one_error(const char *buf, size_t len, const char *want)
{
    struct conf_errors errs;

    ck_assert_ptr_null(load_buf(buf, len, &errs));
    ck_assert_msg(errs.n == 1, "%zu errors, first: %s", errs.n,
                  errs.n ? errs.msgs[0] : "(none)");
    ck_assert_msg(strstr(errs.msgs[0], want) != NULL, "error is\n  %s\n"
                  "expected it to contain\n  %s", errs.msgs[0], want);
    conf_errors_free(&errs);
}

START_TEST(buffer_loads_as_the_file_does)
{
    static const char text[] = "cache:\n  listen: 127.0.0.1:22121\n"
                               "  servers:\n    - 127.0.0.1:11212:1 mc1\n";
    struct conf_errors errs;
    struct config *c = load_buf(text, sizeof(text) - 1, &errs);

    ck_assert_ptr_nonnull(c);
    ck_assert_str_eq(c->path, "mem.yml");
    check_server(&pool(c, "cache")->servers[0], "127.0.0.1:11212", 1, "mc1", "mc1");
    config_free(c);
}
END_TEST

/* Global settings (docs/ARCHITECTURE.md, "Threads"): a top-level key with a
 * single value; absent: -1 (the proxy's default); reuseport on by default. */
START_TEST(threads_is_a_global_setting_and_reuseport_is_on_by_default)
{
    static const char pool_text[] = "cache:\n  listen: 127.0.0.1:22121\n"
                                    "  servers:\n    - 127.0.0.1:11212:1 mc1\n";
    char buf[512];
    struct conf_errors errs;
    struct config *c = load_buf(pool_text, sizeof(pool_text) - 1, &errs);

    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(c->threads, -1);
    ck_assert(pool(c, "cache")->reuseport);
    config_free(c);

    int n = snprintf(buf, sizeof(buf), "threads: 4\n%s  reuseport: false\n", pool_text);
    c = load_buf(buf, (size_t)n, &errs);
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(c->threads, 4);
    ck_assert_uint_eq(c->npools, 1);
    ck_assert(!pool(c, "cache")->reuseport);
    config_free(c);

    n = snprintf(buf, sizeof(buf), "threads: 65\n%s", pool_text);
    check_one_error(buf, (size_t)n, "mem.yml:1:10: threads: expected an integer "
                    "from 0 to 64, got '65'");
    n = snprintf(buf, sizeof(buf), "%sthreads: 2\nthreads: 3\n", pool_text);
    check_one_error(buf, (size_t)n, "mem.yml:6:1: duplicate key 'threads'");
    n = snprintf(buf, sizeof(buf), "%sworkers: 2\n", pool_text);
    check_one_error(buf, (size_t)n, "mem.yml:5:10: pool 'workers': expected a "
                    "mapping of settings, got a scalar");
}
END_TEST

/* twemproxy's "listen: /path 0666": the socket's path and its mode; a bad
 * mode, or a mode after host:port, is an error that names it. */
START_TEST(listen_takes_twemproxys_socket_mode)
{
    static const char moded[] = "cache:\n  listen: /run/rp/rp.sock 0660\n"
                                "  servers:\n    - 127.0.0.1:11212:1\n";
    static const char plain[] = "cache:\n  listen: /run/rp/rp.sock\n"
                                "  servers:\n    - 127.0.0.1:11212:1\n";
    static const char tcp[] = "cache:\n  listen: 127.0.0.1:22121\n"
                              "  servers:\n    - 127.0.0.1:11212:1\n";
    static const char *const refused[][2] = {
        { "/run/rp/rp.sock 0999", "bad mode '0999' for unix socket '/run/rp/rp.sock'" },
        { "/run/rp/rp.sock 66", "bad mode '66'" },
        { "/run/rp/rp.sock 01777", "bad mode '01777'" },
        { "/run/rp/rp.sock rw", "bad mode 'rw'" },
        { "127.0.0.1:22121 0666", "is for a unix socket path only" },
    };
    const struct { const char *text; size_t len; const char *host; long mode; } good[] = {
        { moded, sizeof(moded) - 1, "/run/rp/rp.sock", 0660 },
        { plain, sizeof(plain) - 1, "/run/rp/rp.sock", -1 },
        { tcp, sizeof(tcp) - 1, "127.0.0.1", -1 },
    };
    struct conf_errors errs;

    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        struct config *c = load_buf(good[i].text, good[i].len, &errs);
        ck_assert_ptr_nonnull(c);
        ck_assert_str_eq(pool(c, "cache")->listen.host, good[i].host);
        ck_assert_int_eq(pool(c, "cache")->listen_mode, good[i].mode);
        config_free(c);
    }
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        char text[256];
        int n = snprintf(text, sizeof(text), "cache:\n  listen: %s\n  servers:\n"
                         "    - 127.0.0.1:11212:1\n", refused[i][0]);
        check_one_error(text, (size_t)n, refused[i][1]);
    }
}
END_TEST

/* `stats settings`: every key in effect, defaults included, the index's
 * and migration's with their prefix; never the index password. */
struct settings_seen {
    char text[4096];
    size_t len;
};

static void collect_setting(void *arg, const char *name, const char *value)
{
    struct settings_seen *s = arg;
    int n = snprintf(s->text + s->len, sizeof(s->text) - s->len, "%s=%s\n", name, value);

    ck_assert(n > 0 && (size_t)n < sizeof(s->text) - s->len);
    s->len += (size_t)n;
}

START_TEST(settings_list_what_is_in_effect_but_the_password)
{
    static const char text[] = "cache:\n  listen: /run/rp.sock 0660\n  hash: md5\n"
                               "  index:\n    redis: 127.0.0.1:6379\n"
                               "    password: s3cret\n"
                               "  servers:\n    - 127.0.0.1:11212:1 mc1\n"
                               "    - 127.0.0.1:11213:1 mc2\n";
    static const char *const want[] = {
        "listen=/run/rp.sock 0660\n", "hash=md5\n", "distribution=ketama\n",
        "timeout=5000\n", "servers=2\n", "compat=libmemcached\n",
        "item_size_max=1048576\n", "index:redis=127.0.0.1:6379\n",
        "index:prefix=rp:cache\n", "index:db=0\n", "migration:rate=50000\n",
        "migration:delete_source=true\n", "auto_eject_hosts=false\n",
    };
    struct settings_seen seen = { .len = 0 };
    struct conf_errors errs;
    struct config *c = load_buf(text, sizeof(text) - 1, &errs);

    ck_assert_ptr_nonnull(c);
    conf_pool_settings(pool(c, "cache"), collect_setting, &seen);
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        ck_assert_msg(strstr(seen.text, want[i]) != NULL, "no %s in\n%s", want[i],
                      seen.text);
    }
    ck_assert_ptr_null(strstr(seen.text, "s3cret"));
    ck_assert_ptr_null(strstr(seen.text, "password"));
    ck_assert_ptr_null(strstr(seen.text, "hash_tag"));     /* not set */
    config_free(c);
}
END_TEST

/* IPv6 (docs/ARCHITECTURE.md, "Addresses and names"): in brackets, for
 * listen, servers in both forms and Redis; the identity is libmemcached's,
 * the unbracketed host then ":port" off 11211. */
START_TEST(ipv6_in_brackets_everywhere)
{
    static const char text[] =
        "cache:\n  listen: \"[::1]:22121\"\n"
        "  index:\n    redis: \"[::1]:6379\"\n"
        "  servers:\n    - \"[::1]:11211:1\"\n    - \"[fd00::2]:11212:2\"\n"
        "    - \"[::1]:11213:1 named\"\n    - {addr: \"[fd00::3]:11211\", weight: 1}\n"
        "old:\n  listen: \"[::]:22122\"\n  compat: libketama\n"
        "  servers:\n    - \"[fd00::2]:11212:2\"\n";
    struct conf_errors errs;
    struct config *c = load_buf(text, sizeof(text) - 1, &errs);

    ck_assert_msg(c != NULL, "%s", errs.n ? errs.msgs[0] : "");
    const struct conf_pool *p = pool(c, "cache");
    ck_assert_str_eq(p->listen.host, "::1");
    ck_assert_uint_eq(p->listen.port, 22121);
    ck_assert(p->listen.is_ipv6);
    ck_assert_str_eq(p->index.redis.host, "::1");
    ck_assert_uint_eq(p->index.redis.port, 6379);
    check_server(&p->servers[0], "[::1]:11211", 1, NULL, "::1");
    check_server(&p->servers[1], "[fd00::2]:11212", 2, NULL, "fd00::2:11212");
    check_server(&p->servers[2], "[::1]:11213", 1, "named", "named");
    check_server(&p->servers[3], "[fd00::3]:11211", 1, NULL, "fd00::3");
    ck_assert_str_eq(p->servers[1].addr.host, "fd00::2");
    /* libketama: the address as written, brackets and all */
    check_server(&pool(c, "old")->servers[0], "[fd00::2]:11212", 2, NULL,
                 "[fd00::2]:11212");
    config_free(c);
}
END_TEST

#define LONG10 "dddddddddd"
#define LONG100 LONG10 LONG10 LONG10 LONG10 LONG10 LONG10 LONG10 LONG10 LONG10 LONG10

START_TEST(ipv6_without_brackets_or_malformed_is_refused_with_its_place)
{
    static const struct { const char *text, *want; } cases[] = {
        { "c:\n  listen: 127.0.0.1:1\n  servers:\n    - ::1:11211:1\n",
          "mem.yml:4:7: server '::1:11211:1': an IPv6 address must be in "
          "brackets, as [::1]:11211" },
        { "c:\n  listen: \"::1:22121\"\n  servers:\n    - 127.0.0.1:11211:1\n",
          "mem.yml:2:11: listen: bad address '::1:22121': an IPv6 address "
          "must be in brackets" },
        { "c:\n  listen: 127.0.0.1:1\n  servers:\n    - \"[::1:11211:1\"\n",
          "expected [ipv6]:port" },
        { "c:\n  listen: 127.0.0.1:1\n  servers:\n    - \"[::1]11211:1\"\n",
          "expected [ipv6]:port" },
        { "c:\n  listen: 127.0.0.1:1\n  servers:\n    - \"[10.0.0.1]:11211:1\"\n",
          "not an IPv6 address between the brackets" },
        { "c:\n  listen: 127.0.0.1:1\n  servers:\n    - \"[::1]:0:1\"\n",
          "port must be a number from 1 to 65535" },
        { "c:\n  listen: 127.0.0.1:1\n  index:\n    redis: \"[::1]\"\n"
          "  servers:\n    - 127.0.0.1:11211:1\n", "expected [ipv6]:port" },
        /* a unix path sun_path cannot hold (107 bytes + NUL) */
        { "c:\n  listen: /run/" LONG100 "xx.sock\n  servers:\n"
          "    - 127.0.0.1:11211:1\n", "mem.yml:2:11: listen: bad address '/run/" },
        { "c:\n  listen: 127.0.0.1:1\n  servers:\n    - /run/" LONG100 "xx.sock:1\n",
          "a unix socket path holds at most 107 bytes" },
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        check_one_error(cases[i].text, strlen(cases[i].text), cases[i].want);
    }
}
END_TEST

/* The index sweeper's pace (docs/ARCHITECTURE.md, "The sweeper"): on by
 * default in every indexed pool, 0 turns it off, a negative is refused. */
START_TEST(sweep_rate_is_on_by_default_and_zero_turns_it_off)
{
    static const char head[] = "cache:\n  listen: 127.0.0.1:22121\n  index:\n"
                               "    redis: 127.0.0.1:6379\n";
    static const char tail[] = "  servers:\n    - 127.0.0.1:11212:1 mc1\n";
    const char *rates[] = { "", "    sweep_rate: 0\n", "    sweep_rate: 250000\n" };
    const int64_t want[] = { atoll(SWEEP_RATE_DEFAULT), 0, 250000 };
    char text[512];
    struct conf_errors errs;

    ck_assert_int_gt(atoll(SWEEP_RATE_DEFAULT), 0);
    for (int i = 0; i < 3; i++) {
        int n = snprintf(text, sizeof(text), "%s%s%s", head, rates[i], tail);
        struct config *c = load_buf(text, (size_t)n, &errs);
        ck_assert_ptr_nonnull(c);
        ck_assert_int_eq(pool(c, "cache")->index.sweep_rate, want[i]);
        config_free(c);
    }
    int n = snprintf(text, sizeof(text), "%s    sweep_rate: -1\n%s", head, tail);
    check_one_error(text, (size_t)n, "5:17: sweep_rate: expected an integer from 0 to "
                    "2147483647, got '-1'");
}
END_TEST

/* 200 KB of '[' took libyaml 38 s: the depth limit stops it at level 17. */
START_TEST(deep_nesting_is_refused_at_the_depth_limit)
{
    size_t len = 200 * 1024;
    char *buf = malloc(len);

    ck_assert_ptr_nonnull(buf);
    memset(buf, '[', len);
    check_one_error(buf, len, "mem.yml:1:17: nested more than 16 levels deep");
    memset(buf, '{', len);
    check_one_error(buf, len, "mem.yml:1:17: nested more than 16 levels deep");
    free(buf);
}
END_TEST

/* Past CONF_ERRORS_MAX errors are counted in one last line. */
START_TEST(errors_past_the_limit_are_counted_not_listed)
{
    size_t cap = 64 * 1024, len = 0;
    char *buf = malloc(cap);
    struct conf_errors errs;
    char want[64];

    len += (size_t)snprintf(buf, cap, "cache:\n  listen: 127.0.0.1:22121\n"
                            "  servers: [127.0.0.1:11212:1]\n");
    for (int i = 0; i < 1000; i++) {
        len += (size_t)snprintf(buf + len, cap - len, "  bad_key_%d: 1\n", i);
    }
    ck_assert_ptr_null(load_buf(buf, len, &errs));
    ck_assert_uint_eq(errs.n, CONF_ERRORS_MAX + 1);
    ck_assert_ptr_nonnull(strstr(errs.msgs[0], "mem.yml:4:3: unknown key "
                                 "'bad_key_0' (expected one of: listen,"));
    ck_assert_ptr_nonnull(strstr(errs.msgs[CONF_ERRORS_MAX - 1], "mem.yml:103:3: "
                                 "unknown key 'bad_key_99'"));
    snprintf(want, sizeof(want), "mem.yml: ... and %d more errors",
             1000 - CONF_ERRORS_MAX);
    ck_assert_str_eq(errs.msgs[CONF_ERRORS_MAX], want);
    conf_errors_free(&errs);
    free(buf);
}
END_TEST

START_TEST(servers_past_the_limit_are_refused)
{
    size_t cap = 4096 * 32 + 256, len = 0;
    char *buf = malloc(cap);

    len += (size_t)snprintf(buf, cap, "cache:\n  listen: 127.0.0.1:22121\n"
                            "  servers:\n");
    for (int i = 0; i <= CONF_SERVERS_MAX; i++) {
        len += (size_t)snprintf(buf + len, cap - len, "    - 10.0.%d.%d:11211:1\n",
                                i / 256, i % 256);
    }
    check_one_error(buf, len, "mem.yml:4:5: servers: 4097 servers here and 0 "
                    "before; a file may list at most 4096");
    free(buf);
}
END_TEST

/* An index prefix names every Redis key of the pool: bounded, whether set
 * or the default rp:<pool name>, so that each name fits its buffer. */
START_TEST(an_index_prefix_past_the_limit_is_refused)
{
    char buf[1024], name[CONF_PREFIX_MAX + 2];
    struct conf_errors errs;

    for (int over = 0; over <= 1; over++) {
        memset(name, 'p', sizeof(name));
        name[CONF_PREFIX_MAX + over] = '\0';
        int len = snprintf(buf, sizeof(buf), "cache:\n  listen: 127.0.0.1:22121\n"
                           "  servers:\n    - 127.0.0.1:11212:1 mc1\n"
                           "  index:\n    redis: 127.0.0.1:6379\n    prefix: %s\n", name);
        if (over) {
            check_one_error(buf, (size_t)len, "index.prefix 'pppp");
        } else {
            struct config *c = load_buf(buf, (size_t)len, &errs);
            ck_assert_ptr_nonnull(c);
            ck_assert_uint_eq(strlen(pool(c, "cache")->index.prefix), CONF_PREFIX_MAX);
            config_free(c);
        }
    }
    /* the default: rp: and a pool name of CONF_PREFIX_MAX - 2 bytes */
    name[CONF_PREFIX_MAX - 2] = '\0';
    int len = snprintf(buf, sizeof(buf), "%s:\n  listen: 127.0.0.1:22121\n"
                       "  servers:\n    - 127.0.0.1:11212:1 mc1\n"
                       "  index:\n    redis: 127.0.0.1:6379\n", name);
    check_one_error(buf, (size_t)len, "(by default rp:<pool name>) is longer than 200 bytes");
}
END_TEST

/* Duplicates are found by sorting, yet reported in file order, each against
 * the first server that had the identity or address. */
START_TEST(duplicates_in_the_largest_pool_are_reported_in_file_order)
{
    size_t cap = 4096 * 40 + 256, len = 0;
    char *buf = malloc(cap);
    struct conf_errors errs;

    len += (size_t)snprintf(buf, cap, "cache:\n  listen: 127.0.0.1:22121\n"
                            "  servers:\n");
    for (int i = 0; i < CONF_SERVERS_MAX - 2; i++) {
        len += (size_t)snprintf(buf + len, cap - len, "    - 10.0.%d.%d:11211:1\n",
                                i / 256, i % 256);
    }
    /* line 4098: 10.0.0.7's identity; line 4099: 10.0.0.3's address */
    len += (size_t)snprintf(buf + len, cap - len, "    - 10.9.9.9:11211:1 10.0.0.7\n"
                            "    - 10.0.0.3:11211:1 y\n");
    ck_assert_ptr_null(load_buf(buf, len, &errs));
    ck_assert_uint_eq(errs.n, 2);
    ck_assert_str_eq(errs.msgs[0], "mem.yml:4098:7: pool 'cache': duplicate server "
                     "identity '10.0.0.7' (also at line 11)");
    ck_assert_str_eq(errs.msgs[1], "mem.yml:4099:7: pool 'cache': duplicate server "
                     "address '10.0.0.3:11211' (also at line 7)");
    conf_errors_free(&errs);
    free(buf);
}
END_TEST

START_TEST(a_file_past_the_size_limit_is_refused)
{
    char path[] = "/tmp/test_config_big_XXXXXX";
    int fd = mkstemp(path);
    FILE *f = fdopen(fd, "w");
    struct conf_errors errs;
    char want[128];

    ck_assert_ptr_nonnull(f);
    for (long n = 0; n <= (long)CONF_FILE_MAX; n = ftell(f)) {
        fputs("# a comment line, over and over\n", f);
    }
    fclose(f);
    ck_assert_ptr_null(config_load(path, &errs));
    ck_assert_uint_eq(errs.n, 1);
    snprintf(want, sizeof(want), "%s: larger than %u bytes", path, CONF_FILE_MAX);
    ck_assert_msg(strncmp(errs.msgs[0], want, strlen(want)) == 0, "%s", errs.msgs[0]);
    conf_errors_free(&errs);
    unlink(path);
}
END_TEST

/* A file whose last byte ends the last server is a cut write; one that ends
 * in a newline, or whose last server is followed by more keys, is not. */
START_TEST(only_a_servers_list_cut_mid_entry_is_truncation)
{
    static const char cut[] = "cache:\n  listen: 127.0.0.1:22121\n  servers:\n"
                              "    - 127.0.0.1:11212:1\n    - 127.0.0.1:11213:1";
    static const char whole[] = "cache:\n  listen: 127.0.0.1:22121\n  servers:\n"
                                "    - 127.0.0.1:11212:1\n  timeout: 400";
    struct conf_errors errs;
    struct config *c;

    check_one_error(cut, sizeof(cut) - 1, "mem.yml:5:7: pool 'cache': the file "
                    "ends inside the servers list");
    c = load_buf(cut, (size_t)(strrchr(cut, '\n') + 1 - cut), &errs);
    ck_assert_ptr_nonnull(c);
    config_free(c);
    c = load_buf(whole, sizeof(whole) - 1, &errs);
    ck_assert_ptr_nonnull(c);
    config_free(c);
}
END_TEST

static Suite *config_suite(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("good");

    tcase_add_test(tc, defaults_are_twemproxys_but_every_timeout_is_finite);
    tcase_add_test(tc, several_pools_with_every_twemproxy_key);
    tcase_add_test(tc, servers_in_both_forms_with_names_and_unix_sockets);
    tcase_add_test(tc, identity_is_name_then_host_then_host_port);
    tcase_add_test(tc, ipv6_in_brackets_everywhere);
    tcase_add_test(tc, ipv6_without_brackets_or_malformed_is_refused_with_its_place);
    tcase_add_test(tc, compat_hash_and_hash_tag);
    tcase_add_test(tc, index_and_migration_sections);
    tcase_add_test(tc, sweep_rate_is_on_by_default_and_zero_turns_it_off);
    tcase_add_test(tc, threads_is_a_global_setting_and_reuseport_is_on_by_default);
    tcase_add_test(tc, pool_ring_follows_identities_and_weights);
    tcase_add_test(tc, example_files_are_valid);
    suite_add_tcase(s, tc);

    tc = tcase_create("bad");
    tcase_add_loop_test(tc, bad_file_reports_file_line_col, 0, NBAD);
    tcase_add_test(tc, every_error_is_reported_not_only_the_first);
    tcase_add_test(tc, missing_file_is_reported);
    tcase_add_test(tc, buffer_loads_as_the_file_does);
    tcase_add_test(tc, listen_takes_twemproxys_socket_mode);
    tcase_add_test(tc, settings_list_what_is_in_effect_but_the_password);
    tcase_add_test(tc, deep_nesting_is_refused_at_the_depth_limit);
    tcase_add_test(tc, errors_past_the_limit_are_counted_not_listed);
    tcase_add_test(tc, servers_past_the_limit_are_refused);
    tcase_add_test(tc, an_index_prefix_past_the_limit_is_refused);
    tcase_add_test(tc, a_file_past_the_size_limit_is_refused);
    tcase_add_test(tc, duplicates_in_the_largest_pool_are_reported_in_file_order);
    tcase_add_test(tc, only_a_servers_list_cut_mid_entry_is_truncation);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return check_run(config_suite());
}
