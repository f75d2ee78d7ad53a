/* test_index.c — what a Redis error reply means for a pool's index health,
 * and what the write queue sends (idx_flush) to a real Redis. */
#include <check.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>

#include "index.h"
#include "layout.h"
#include "check_run.h"

/* A writer that never runs its loop: its connection never completes, so
 * only the reports the tests make change its health. */
struct fixture {
    struct event_base *base;
    struct ring *ring;
    struct idx *x;
};

static void fixture_init(struct fixture *f)
{
    struct ring_server_spec s[] = { { .identity = "mc1", .addr = "127.0.0.1:1", .weight = 1 } };
    struct ring_params p = { .compat = RING_COMPAT_LIBMEMCACHED, .hash = HASH_FNV1A_64,
                             .servers = s, .nservers = 1 };
    struct conf_index ci = { .enabled = true,
                             .redis = { .text = "127.0.0.1:1", .host = "127.0.0.1",
                                        .port = 1 },
                             .prefix = "rp:t", .queue_max = 10 };
    char err[256];

    f->base = event_base_new();
    f->ring = ring_build(&p, err, sizeof(err));
    ck_assert_msg(f->ring != NULL, "%s", err);
    f->x = idx_new(f->base, "t", &ci, f->ring);
    ck_assert_ptr_nonnull(f->x);
}

static void fixture_free(struct fixture *f)
{
    idx_free(f->x);
    ring_unref(f->ring);
    event_base_free(f->base);
}

START_TEST(auth_refusals_are_auth_failed)
{
    ck_assert_int_eq(idx_classify_error("WRONGPASS invalid username-password pair or "
                                        "user is disabled."), IDX_H_AUTH_FAILED);
    ck_assert_int_eq(idx_classify_error("NOAUTH Authentication required."),
                     IDX_H_AUTH_FAILED);
    ck_assert_int_eq(idx_classify_error("ERR invalid password"), IDX_H_AUTH_FAILED);
    ck_assert_int_eq(idx_classify_error("NOPERM this user has no permissions to run "
                                        "the 'zadd' command"), IDX_H_AUTH_FAILED);
}
END_TEST

START_TEST(auth_to_a_redis_without_password_is_harmless)
{
    ck_assert_int_eq(idx_classify_error("ERR AUTH <password> called without any password "
                                        "configured for the default user. Are you sure "
                                        "your configuration is correct?"), IDX_H_OK);
    ck_assert_int_eq(idx_classify_error("ERR Client sent AUTH, but no password is set"),
                     IDX_H_OK);
}
END_TEST

START_TEST(write_refusals_are_classified)
{
    ck_assert_int_eq(idx_classify_error("OOM command not allowed when used memory > "
                                        "'maxmemory'."), IDX_H_REFUSED_OOM);
    ck_assert_int_eq(idx_classify_error("READONLY You can't write against a read only "
                                        "replica."), IDX_H_REFUSED_READONLY);
    ck_assert_int_eq(idx_classify_error("WRONGTYPE Operation against a key holding the "
                                        "wrong kind of value"), IDX_H_REFUSED_OTHER);
    ck_assert_int_eq(idx_classify_error("ERR unknown command"), IDX_H_REFUSED_OTHER);
    ck_assert_int_eq(idx_classify_error(""), IDX_H_REFUSED_OTHER);
    ck_assert_int_eq(idx_classify_error(NULL), IDX_H_REFUSED_OTHER);
}
END_TEST

START_TEST(script_errors_are_classified_by_what_the_script_hit)
{
    /* Redis 7 keeps the code; Redis 6 wraps it. */
    ck_assert_int_eq(idx_classify_error("OOM command not allowed when used memory > "
                                        "'maxmemory'. script: 56de3f8f, on "
                                        "@user_script:1."), IDX_H_REFUSED_OOM);
    ck_assert_int_eq(idx_classify_error("ERR Error running script (call to f_56de3f8f): "
                                        "@user_script:1: @user_script: 1: -OOM command "
                                        "not allowed when used memory > 'maxmemory'."),
                     IDX_H_REFUSED_OOM);
    ck_assert_int_eq(idx_classify_error("ERR Error running script (call to f_56de3f8f): "
                                        "@user_script:1: Script attempted to access a "
                                        "non local key"), IDX_H_REFUSED_OTHER);
}
END_TEST

START_TEST(the_pool_reports_the_worse_connection)
{
    struct fixture f;
    const char *why;

    fixture_init(&f);
    ck_assert_int_eq(idx_health(f.x, IDX_CONN_COUNT, &why), IDX_H_OK);
    ck_assert_str_eq(why, "");
    idx_redis_down(f.x, IDX_CONN_WRITER, "Connection refused");
    idx_redis_error(f.x, IDX_CONN_COORD, "WRONGPASS invalid username-password pair");
    ck_assert_int_eq(idx_health(f.x, IDX_CONN_COUNT, &why), IDX_H_AUTH_FAILED);
    ck_assert_str_eq(why, "WRONGPASS invalid username-password pair");
    ck_assert_int_eq(idx_health(f.x, IDX_CONN_WRITER, &why), IDX_H_DISCONNECTED);
    ck_assert_str_eq(why, "Connection refused");
    /* The writer's connection back changes nothing: the coordination's
     * refusal stands. */
    idx_redis_ok(f.x, IDX_CONN_WRITER);
    ck_assert_int_eq(idx_health(f.x, IDX_CONN_WRITER, NULL), IDX_H_OK);
    ck_assert_int_eq(idx_health(f.x, IDX_CONN_COUNT, NULL), IDX_H_AUTH_FAILED);
    fixture_free(&f);
}
END_TEST

START_TEST(refusals_are_counted_by_class)
{
    struct fixture f;

    fixture_init(&f);
    idx_redis_error(f.x, IDX_CONN_WRITER, "OOM command not allowed");
    idx_redis_error(f.x, IDX_CONN_COORD, "OOM command not allowed. script: 1");
    idx_redis_error(f.x, IDX_CONN_WRITER, "NOAUTH Authentication required.");
    idx_redis_error(f.x, IDX_CONN_WRITER, "READONLY You can't write");
    idx_redis_error(f.x, IDX_CONN_WRITER, "WRONGTYPE Operation");
    ck_assert_int_eq(idx_redis_error(f.x, IDX_CONN_WRITER, "ERR AUTH <password> called "
                                     "without any password configured"), IDX_H_OK);
    const uint64_t *st = idx_stats(f.x);
    ck_assert_uint_eq(st[IDX_STAT_errors_oom], 2);
    ck_assert_uint_eq(st[IDX_STAT_errors_auth], 1);
    ck_assert_uint_eq(st[IDX_STAT_errors_readonly], 1);
    ck_assert_uint_eq(st[IDX_STAT_errors_other], 1);
    ck_assert_uint_gt(st[IDX_STAT_last_error_time], 0);
    fixture_free(&f);
}
END_TEST

START_TEST(a_refusal_outlasts_an_answer_right_after_it)
{
    struct fixture f;

    fixture_init(&f);
    idx_redis_error(f.x, IDX_CONN_WRITER, "OOM command not allowed");
    /* One command taken among refused ones is no recovery yet: the state
     * clears only after a calm spell (IDX_HEALTH_CALM_MS, on a timer). */
    idx_redis_ok(f.x, IDX_CONN_WRITER);
    ck_assert_int_eq(idx_health(f.x, IDX_CONN_COUNT, NULL), IDX_H_REFUSED_OOM);
    /* Coming back from a lost connection is a recovery at once. */
    idx_redis_down(f.x, IDX_CONN_COORD, "Connection reset");
    idx_redis_ok(f.x, IDX_CONN_COORD);
    ck_assert_int_eq(idx_health(f.x, IDX_CONN_COORD, NULL), IDX_H_OK);
    fixture_free(&f);
}
END_TEST

/* --- the write queue against a real Redis ---------------------------------
 *
 * One redis-server (on a Unix socket, no persistence) for the "queue" case,
 * started by its unchecked fixture; each test uses its own prefix. The
 * writer runs its loop until Redis has answered every write, then the sets
 * are read back with a blocking connection.
 */

static pid_t redis_pid = -1;
static char redis_dir[] = "/tmp/rp-test-index-XXXXXX";
static char redis_sock[sizeof(redis_dir) + 16];

static redisContext *redis_sync(void)
{
    redisContext *rc = redisConnectUnix(redis_sock);

    if (rc != NULL && rc->err) {
        redisFree(rc);
        return NULL;
    }
    return rc;
}

static void redis_start(void)
{
    ck_assert_ptr_nonnull(mkdtemp(redis_dir));
    snprintf(redis_sock, sizeof(redis_sock), "%s/redis.sock", redis_dir);
    redis_pid = fork();
    ck_assert_int_ge(redis_pid, 0);
    if (redis_pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);       /* never outlive the suite */
        int null = open("/dev/null", O_WRONLY);
        dup2(null, STDOUT_FILENO);
        execlp("redis-server", "redis-server", "--port", "0", "--unixsocket", redis_sock,
               "--save", "", "--appendonly", "no", "--dir", redis_dir, (char *)NULL);
        _exit(127);
    }
    /* Ready once it answers; up to 10 s for a loaded machine. */
    for (int i = 0; i < 1000; i++) {
        redisContext *rc = redis_sync();
        if (rc != NULL) {
            redisReply *r = redisCommand(rc, "PING");
            bool up = r != NULL && r->type == REDIS_REPLY_STATUS;
            freeReplyObject(r);
            redisFree(rc);
            if (up) {
                return;
            }
        }
        usleep(10000);
    }
    ck_abort_msg("redis-server did not start on %s", redis_sock);
}

static void redis_stop(void)
{
    if (redis_pid > 0) {
        kill(redis_pid, SIGTERM);
        waitpid(redis_pid, NULL, 0);
        redis_pid = -1;
    }
    unlink(redis_sock);
    rmdir(redis_dir);
}

struct qfix {
    struct event_base *base;
    struct event *wake;         /* keeps the loop turning while we wait */
    struct ring *ring;
    struct idx *x;
    char prefix[64];
};

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;
}

static void qfix_init(struct qfix *f, const char *prefix, int64_t queue_max)
{
    struct ring_server_spec s[] = {
        { .identity = "mc1", .addr = "127.0.0.1:1", .weight = 1 },
        { .identity = "mc2", .addr = "127.0.0.1:2", .weight = 1 },
    };
    struct ring_params p = { .compat = RING_COMPAT_LIBMEMCACHED, .hash = HASH_FNV1A_64,
                             .servers = s, .nservers = 2 };
    struct conf_index ci = { .enabled = true,
                             .redis = { .text = redis_sock, .host = redis_sock,
                                        .is_unix = true },
                             .queue_max = queue_max };
    struct timeval tv = { 0, 5000 };
    char err[256];

    snprintf(f->prefix, sizeof(f->prefix), "%s", prefix);
    ci.prefix = f->prefix;
    f->base = event_base_new();
    f->wake = event_new(f->base, -1, EV_PERSIST, on_wake, NULL);
    event_add(f->wake, &tv);
    f->ring = ring_build(&p, err, sizeof(err));
    ck_assert_msg(f->ring != NULL, "%s", err);
    f->x = idx_new(f->base, "t", &ci, f->ring);
    ck_assert_ptr_nonnull(f->x);
}

static void qfix_free(struct qfix *f)
{
    idx_free(f->x);
    ring_unref(f->ring);
    event_free(f->wake);
    event_base_free(f->base);
}

/* Turn the loop until the writer is ready, or 10 s. */
static void wait_ready(struct qfix *f)
{
    for (int i = 0; i < 2000 && idx_get_state(f->x) != IDX_READY; i++) {
        event_base_loop(f->base, EVLOOP_ONCE);
    }
    ck_assert_int_eq(idx_get_state(f->x), IDX_READY);
}

/* Send what is queued and turn the loop until Redis answered it all. */
static void flush_and_wait(struct qfix *f)
{
    const uint64_t *st = idx_stats(f->x);

    idx_flush(f->x);
    for (int i = 0; i < 2000 && st[IDX_STAT_inflight] > 0; i++) {
        event_base_loop(f->base, EVLOOP_ONCE);
    }
    ck_assert_uint_eq(st[IDX_STAT_inflight], 0);
    ck_assert_uint_eq(st[IDX_STAT_errors], 0);
}

/* The proxy hashes a key once and hands the hash to the index (pool.c). */
static void stored(const struct qfix *f, const char *key, size_t len)
{
    idx_key_stored(f->x, key, len, ring_key_hash(f->ring, key, len));
}

static uint32_t point_of(const struct qfix *f, const char *key)
{
    return ring_find(f->ring, ring_key_hash(f->ring, key, strlen(key)));
}

/* The index script's `op` on a blocking connection (layout.h). */
static redisReply *script(redisContext *rc, const struct qfix *f, const char *op, int n,
                          const char **args)
{
    const char *argv[LAY_HEAD + 4];
    char ring[96], nums[2][12];
    struct lay_limits l;
    char err[128];

    ck_assert_int_eq(lay_load_sync(rc, err, sizeof(err)), 0);
    lay_limits_default(&l);
    snprintf(ring, sizeof(ring), "%s:ring", f->prefix);
    lay_head(argv, NULL, ring, op, &l, nums);
    for (int i = 0; i < n; i++) {
        argv[LAY_HEAD + i] = args[i];
    }
    redisReply *r = redisCommandArgv(rc, LAY_HEAD + n, argv, NULL);
    ck_assert(r != NULL && r->type != REDIS_REPLY_ERROR);
    return r;
}

/* The key's score in its v-node's sets: -1 when absent. */
static long long score_of(const struct qfix *f, const char *key)
{
    char set[256], hash[16];
    redisContext *rc = redis_sync();

    ck_assert_ptr_nonnull(rc);
    idx_vnode_key(f->prefix, f->ring, point_of(f, key), set, sizeof(set));
    snprintf(hash, sizeof(hash), "%u", ring_key_hash(f->ring, key, strlen(key)));
    const char *args[] = { set, hash, key };
    redisReply *r = script(rc, f, "score", 3, args);
    long long score = r->type == REDIS_REPLY_STRING ? atoll(r->str) : -1;
    freeReplyObject(r);
    redisFree(rc);
    return score;
}

/* Members of every set under the prefix. */
static long long members_under(const struct qfix *f)
{
    char set[256];
    long long n = 0;
    redisContext *rc = redis_sync();

    ck_assert_ptr_nonnull(rc);
    for (uint32_t pt = 0; pt < f->ring->npoints; pt++) {
        idx_vnode_key(f->prefix, f->ring, pt, set, sizeof(set));
        const char *args[] = { set };
        redisReply *r = script(rc, f, "card", 1, args);
        ck_assert(r->type == REDIS_REPLY_ARRAY && r->elements == 2);
        n += r->element[0]->integer;
        freeReplyObject(r);
    }
    redisFree(rc);
    return n;
}

START_TEST(stores_of_one_turn_become_one_index_script_call)
{
    struct qfix f;
    char key[32];

    qfix_init(&f, "rp:q1", 1000);
    wait_ready(&f);
    ck_assert_uint_lt(f.ring->npoints, 4096);
    uint64_t cmds = idx_stats(f.x)[IDX_STAT_commands];
    for (int i = 0; i < 300; i++) {
        snprintf(key, sizeof(key), "key:%d", i);
        stored(&f, key, strlen(key));
    }
    stored(&f, "key:7", 5);    /* stored twice in the turn */
    ck_assert_uint_eq(idx_stats(f.x)[IDX_STAT_queued], 301);
    flush_and_wait(&f);
    /* A repeat does not split the batch: one call of the index script
     * (layout.h) for the turn, grouped by v-node inside it, and a `dir` of
     * each v-node it wrote, so the next turns write plain ZADDs (index.c). */
    bool *seen = calloc(f.ring->npoints, sizeof(*seen));
    uint32_t vnodes = 0;
    for (int i = 0; i < 300; i++) {
        snprintf(key, sizeof(key), "key:%d", i);
        uint32_t pt = ring_find(f.ring, ring_key_hash(f.ring, key, strlen(key)));
        vnodes += !seen[pt];
        seen[pt] = true;
    }
    free(seen);
    ck_assert_uint_eq(idx_stats(f.x)[IDX_STAT_commands] - cmds, 1 + vnodes);
    ck_assert_uint_eq(idx_stats(f.x)[IDX_STAT_adds], 301);
    ck_assert_uint_eq(idx_stats(f.x)[IDX_STAT_queued], 0);
    for (int i = 0; i < 300; i++) {
        snprintf(key, sizeof(key), "key:%d", i);
        ck_assert_int_eq(score_of(&f, key), (long long)ring_key_hash(f.ring, key,
                                                                     strlen(key)));
    }
    ck_assert_int_eq(members_under(&f), 300);
    qfix_free(&f);
}
END_TEST

START_TEST(writes_over_queue_max_are_dropped_and_counted)
{
    struct qfix f;
    char key[32];

    qfix_init(&f, "rp:q2", 10);
    wait_ready(&f);
    for (int i = 0; i < 15; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        stored(&f, key, strlen(key));
    }
    ck_assert_uint_eq(idx_stats(f.x)[IDX_STAT_queued], 10);
    ck_assert_uint_eq(idx_stats(f.x)[IDX_STAT_dropped], 5);
    ck_assert_int_eq(idx_health(f.x, IDX_CONN_COUNT, NULL), IDX_H_DROPPING);
    flush_and_wait(&f);
    /* The first ten went, the last five did not. */
    for (int i = 0; i < 15; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        ck_assert_msg((score_of(&f, key) >= 0) == (i < 10), "%s", key);
    }
    /* Answered: the budget is free again. */
    stored(&f, "k14", 3);
    flush_and_wait(&f);
    ck_assert_int_ge(score_of(&f, "k14"), 0);
    ck_assert_uint_eq(idx_stats(f.x)[IDX_STAT_dropped], 5);
    qfix_free(&f);
}
END_TEST

START_TEST(flush_all_empties_the_sets_and_coalesces)
{
    struct qfix f;

    qfix_init(&f, "rp:q3", 1000);
    wait_ready(&f);
    stored(&f, "before", 6);
    flush_and_wait(&f);
    ck_assert_int_ge(score_of(&f, "before"), 0);

    /* In one turn: flush_all, a store, flush_all again, a store. The store
     * between the two is moot; the two flushes are one round of UNLINKs; the
     * last store is sent after them, so it survives. */
    uint64_t cmds = idx_stats(f.x)[IDX_STAT_commands];
    idx_pool_flushed(f.x);
    stored(&f, "between", 7);
    idx_pool_flushed(f.x);
    stored(&f, "after", 5);
    flush_and_wait(&f);
    uint64_t unlinks = (f.ring->npoints + 255) / 256;
    /* "after": a plain ZADD when its v-node's directory is known (that of
     * "before"), else the script and a `dir` (index.c) */
    bool known = ring_find(f.ring, ring_key_hash(f.ring, "after", 5)) ==
                 ring_find(f.ring, ring_key_hash(f.ring, "before", 6));
    ck_assert_uint_eq(idx_stats(f.x)[IDX_STAT_commands] - cmds, unlinks + (known ? 1 : 2));
    ck_assert_int_eq(score_of(&f, "before"), -1);
    ck_assert_int_eq(score_of(&f, "between"), -1);
    ck_assert_int_ge(score_of(&f, "after"), 0);
    ck_assert_int_eq(members_under(&f), 1);
    qfix_free(&f);
}
END_TEST

START_TEST(a_store_before_a_flush_all_of_the_same_turn_is_dropped)
{
    struct qfix f;

    qfix_init(&f, "rp:q4", 1000);
    wait_ready(&f);
    stored(&f, "early", 5);
    idx_pool_flushed(f.x);
    ck_assert_uint_eq(idx_stats(f.x)[IDX_STAT_queued], 1);     /* the flush itself */
    flush_and_wait(&f);
    ck_assert_int_eq(members_under(&f), 0);
    qfix_free(&f);
}
END_TEST

static Suite *index_suite(void)
{
    Suite *s = suite_create("index");
    TCase *tc = tcase_create("health");

    tcase_add_test(tc, auth_refusals_are_auth_failed);
    tcase_add_test(tc, auth_to_a_redis_without_password_is_harmless);
    tcase_add_test(tc, write_refusals_are_classified);
    tcase_add_test(tc, script_errors_are_classified_by_what_the_script_hit);
    tcase_add_test(tc, the_pool_reports_the_worse_connection);
    tcase_add_test(tc, refusals_are_counted_by_class);
    tcase_add_test(tc, a_refusal_outlasts_an_answer_right_after_it);
    suite_add_tcase(s, tc);

    TCase *tq = tcase_create("queue");
    tcase_add_unchecked_fixture(tq, redis_start, redis_stop);
    tcase_set_timeout(tq, 60);
    tcase_add_test(tq, stores_of_one_turn_become_one_index_script_call);
    tcase_add_test(tq, writes_over_queue_max_are_dropped_and_counted);
    tcase_add_test(tq, flush_all_empties_the_sets_and_coalesces);
    tcase_add_test(tq, a_store_before_a_flush_all_of_the_same_turn_is_dropped);
    suite_add_tcase(s, tq);
    return s;
}

int main(void)
{
    return check_run(index_suite());
}
