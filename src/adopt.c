/*
 * adopt.c — the background rebuild of a pool's index (docs/ARCHITECTURE.md,
 * "Rebuild and adoption").
 *
 * Design notes
 * - Whoever records the first ring of a prefix (src/migrate.c, with
 *   RB_FIRST_RECORD_SCRIPT) marks the index "pending" in the same script:
 *   the backends may hold keys nobody indexed. Every proxy polls that field
 *   (one Lua script a second, two while rebuilding); one whose pool is idle
 *   takes the lease <prefix>:index:rebuild:lock in the same script, marks
 *   the field "running <id>", and runs the rebuild engine at rebuild_rate.
 * - The script takes the lease only while no migration record exists, and
 *   a holder that is no longer idle (a ring change proposed, a migration
 *   begun, the pool closing) gives it back and marks the field "pending"
 *   again: during a migration the ring a key obeys depends on its arc, and
 *   the migration's closing pass covers keys the index lacks. The rebuild
 *   resumes from the start once the pool is idle again (ZADD is idempotent).
 * - Replies only record what Redis said; the tick acts on it (starts or
 *   stops the engine), never the callback that brought the news.
 * - A lease that lapses (a frozen or killed holder) is taken over by the
 *   next poll of any idle proxy: "running <id>" without a lock is stale.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libevent.h>

#include "adopt.h"
#include "log.h"
#include "mem.h"
#include "migrate.h"
#include "rebuild.h"
#include "pool.h"
#include "resolve.h"

#define ADOPT_POLL_MS 1000          /* the field, while not rebuilding */
#define ADOPT_RENEW_MS 2000         /* the lease, while rebuilding */
#define ADOPT_LEASE_MS 10000
#define ADOPT_POLL_TIMEOUT_MS 10000 /* a poll unanswered this long is resent */
#define ADOPT_LEAVE_TIMEOUT_MS 2000 /* giving the lease back at exit */
#define ADOPT_RETRY_MIN_MS 10000    /* after a failed rebuild: first pause */
#define ADOPT_RETRY_MAX_MS 300000   /* ... doubling up to this */
#define ADOPT_PROGRESS_LOG_MS 10000
#define ADOPT_FIELD_MAX 256         /* longer field values are not ours */

#define ADOPT_STATE_NAME(e, name) [ADOPT_##e] = name,
const char *const adopt_state_names[ADOPT_STATE_COUNT] = {
    ADOPT_STATE_CODEC(ADOPT_STATE_NAME)
};
#undef ADOPT_STATE_NAME

#define ADOPT_STAT_DESC(n, k, h) [ADOPT_STAT_##n] = { #n, #k, h },
const struct adopt_stat_desc adopt_stat_desc[ADOPT_STAT_COUNT] = {
    ADOPT_STATS_CODEC(ADOPT_STAT_DESC)
};
#undef ADOPT_STAT_DESC

/*
 * KEYS <prefix>:index, <prefix>:index:rebuild:lock, <prefix>:migration;
 * ARGV id, lease ms, may run ("1": the pool is idle). Renews, takes or gives
 * back the lease; returns {lease (1 renewed, 2 taken now), the field, a
 * migration record exists}.
 */
static const char poll_script[] =
    /* a lock without an expiry (set by hand) is no lease: removed */
    "if redis.call('pttl', KEYS[2]) == -1 then redis.call('del', KEYS[2]) end "
    "local st = redis.call('hget', KEYS[1], 'rebuild') "
    "local mig = redis.call('exists', KEYS[3]) "
    "local holder = redis.call('get', KEYS[2]) "
    "local mine = 'running ' .. ARGV[1] "
    "local lease = 0 "
    "if holder == ARGV[1] then "
    "  if ARGV[3] == '1' and mig == 0 then "
    "    redis.call('pexpire', KEYS[2], ARGV[2]) lease = 1 "
    "  else "
    "    redis.call('del', KEYS[2]) "
    "    if st == mine then st = 'pending' redis.call('hset', KEYS[1], 'rebuild', st) end "
    "  end "
    "elseif not holder and ARGV[3] == '1' and mig == 0 and st and "
    "       (st == 'pending' or string.sub(st, 1, 8) == 'running ') then "
    "  redis.call('set', KEYS[2], ARGV[1], 'PX', ARGV[2]) "
    "  redis.call('hset', KEYS[1], 'rebuild', mine) "
    "  st = mine lease = 2 "
    "end "
    "return {lease, st or '', mig}";

struct adopt {
    struct pool *p;
    const char *id;             /* the proxy's, as in its heartbeat */
    char *prefix;
    char key_index[512], key_lock[512], key_mig[512];
    /* Redis */
    redisAsyncContext *ac;
    bool up;
    struct event *retry;
    bool polling;
    uint64_t next_poll, poll_sent;
    /* what the last poll said */
    bool lease, mig_exists, known;
    bool fresh;                 /* answered since the engine last stopped */
    bool taken;                 /* a poll took the lease anew (not renewed) */
    char field[ADOPT_FIELD_MAX];
    bool bad_field_logged;
    /* the rebuild */
    struct rb *rb;
    bool rb_ended, rb_ok;
    char rb_error[512];
    uint64_t retry_at, backoff_ms, next_progress_log;
    /* leaving */
    bool leaving, left;
    uint64_t leave_deadline;
    uint64_t stats[ADOPT_STAT_COUNT];
};

static void adopt_connect(struct adopt *a);

/* --- Redis ------------------------------------------------------------------------ */

static void on_poll(redisAsyncContext *ac, void *r, void *priv)
{
    struct adopt *a = ac->data;
    redisReply *reply = r;

    (void)priv;
    if (a == NULL) {
        return;
    }
    a->polling = false;
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY || reply->elements != 3 ||
        reply->element[0]->type != REDIS_REPLY_INTEGER ||
        reply->element[1]->type != REDIS_REPLY_STRING ||
        reply->element[2]->type != REDIS_REPLY_INTEGER) {
        log_limited(LOG_ERROR, 1, "rebuild", "%s: Redis refused the rebuild poll: %s",
                    a->p->name, reply != NULL && reply->type == REDIS_REPLY_ERROR ?
                    reply->str : "unexpected reply");
        a->lease = false;
        return;
    }
    bool had = a->lease;
    a->lease = reply->element[0]->integer == 1 || reply->element[0]->integer == 2;
    a->taken = a->taken || reply->element[0]->integer == 2;
    a->mig_exists = reply->element[2]->integer == 1;
    a->known = a->fresh = true;
    if (reply->element[1]->len < sizeof(a->field)) {
        memcpy(a->field, reply->element[1]->str, reply->element[1]->len + 1);
    } else {
        snprintf(a->field, sizeof(a->field), "?");
    }
    if (a->field[0] != '\0' && strcmp(a->field, "pending") != 0 &&
        strncmp(a->field, "running ", 8) != 0 && strncmp(a->field, "done ", 5) != 0 &&
        !a->bad_field_logged) {
        a->bad_field_logged = true;
        log_warn("rebuild", "%s: %s field rebuild holds no value a proxy writes "
                 "(pending, running <id>, done <ms> <keys>): ignored", a->p->name,
                 a->key_index);
    }
    if (a->lease != had) {
        log_info("rebuild", "%s: this proxy %s the index rebuild lease", a->p->name,
                 a->lease ? "holds" : "gave up");
    }
}

/* The lease given back at exit (a poll that may not run). */
static void on_left(redisAsyncContext *ac, void *r, void *priv)
{
    struct adopt *a = ac->data;

    on_poll(ac, r, priv);
    if (a != NULL) {
        a->left = true;
    }
}

static void on_done_written(redisAsyncContext *ac, void *r, void *priv)
{
    struct adopt *a = ac->data;
    redisReply *reply = r;

    (void)priv;
    if (a == NULL) {
        return;
    }
    if (reply == NULL || reply->type != REDIS_REPLY_INTEGER || reply->integer != 1) {
        log_warn("rebuild", "%s: could not record the rebuild as done (%s)", a->p->name,
                 reply != NULL && reply->type == REDIS_REPLY_ERROR ? reply->str :
                 "the lease was lost");
    }
    a->next_poll = 0;
}

static void adopt_poll(struct adopt *a, bool may_run, redisCallbackFn *cb)
{
    char lease_ms[16];
    snprintf(lease_ms, sizeof(lease_ms), "%d", ADOPT_LEASE_MS);
    const char *argv[] = { "EVAL", poll_script, "3", a->key_index, a->key_lock,
                           a->key_mig, a->id, lease_ms, may_run ? "1" : "0" };

    if (!a->up || redisAsyncCommandArgv(a->ac, cb, NULL, 9, argv, NULL) != REDIS_OK) {
        return;
    }
    a->polling = true;
    a->poll_sent = worker_now_ms(a->p->w);
}

static void on_setup(redisAsyncContext *ac, void *r, void *priv)
{
    struct adopt *a = ac->data;
    redisReply *reply = r;

    if (a != NULL && reply != NULL && reply->type == REDIS_REPLY_ERROR) {
        log_limited(LOG_ERROR, 1, "rebuild", "%s: Redis refused %s: %s", a->p->name,
                    (const char *)priv, reply->str);
    }
}

static void adopt_on_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    adopt_connect(arg);
}

static void adopt_lost(struct adopt *a)
{
    struct timeval tv = { 1, 0 };

    a->ac = NULL;
    a->up = a->polling = a->lease = false;
    event_add(a->retry, &tv);
}

static void adopt_on_connect(const redisAsyncContext *ac, int status)
{
    struct adopt *a = ac->data;

    if (a != NULL && status != REDIS_OK) {
        adopt_lost(a);      /* hiredis frees the context */
    }
}

static void adopt_on_disconnect(const redisAsyncContext *ac, int status)
{
    struct adopt *a = ac->data;

    (void)status;
    if (a != NULL) {
        adopt_lost(a);
    }
}

static void adopt_connect(struct adopt *a)
{
    const struct conf_index *ix = &a->p->conf->index;
    redisAsyncContext *ac = ix->redis.is_unix ? redisAsyncConnectUnix(ix->redis.host) :
                            redisAsyncConnect(ix->redis.host, ix->redis.port);

    if (ac == NULL || ac->err) {
        if (ac != NULL) {
            redisAsyncFree(ac);
        }
        adopt_lost(a);
        return;
    }
    ac->data = a;
    a->ac = ac;
    a->up = true;       /* commands queue until the connect completes */
    rp_xcheck(redisLibeventAttach(ac, a->p->w->base) == REDIS_OK,
              "a Redis connection's events");
    redisAsyncSetConnectCallback(ac, adopt_on_connect);
    redisAsyncSetDisconnectCallback(ac, adopt_on_disconnect);
    if (ix->password != NULL) {
        const char *argv[] = { "AUTH", ix->password };
        rp_xcheck(redisAsyncCommandArgv(ac, on_setup, (void *)"AUTH", 2, argv, NULL) ==
                  REDIS_OK, "the Redis AUTH command");
    }
    if (ix->db != 0) {
        char db[24];
        snprintf(db, sizeof(db), "%lld", (long long)ix->db);
        const char *argv[] = { "SELECT", db };
        rp_xcheck(redisAsyncCommandArgv(ac, on_setup, (void *)"SELECT", 2, argv, NULL) ==
                  REDIS_OK, "the Redis SELECT command");
    }
    a->next_poll = 0;
}

/* --- the rebuild ----------------------------------------------------------------- */

static void on_rb_end(void *arg, bool ok, const char *error)
{
    struct adopt *a = arg;

    a->rb_ended = true;         /* the tick acts on it */
    a->rb_ok = ok;
    snprintf(a->rb_error, sizeof(a->rb_error), "%s", ok ? "" : error);
}

/* The engine's totals into the stats, which outlive it. */
static void count_rb(const struct rb *rb, uint64_t *stats)
{
    struct rb_server_progress t;

    if (rb == NULL) {
        return;
    }
    rb_totals(rb, &t);
    stats[ADOPT_STAT_rebuild_keys] = t.indexed;
    stats[ADOPT_STAT_rebuild_added] = t.added;
    stats[ADOPT_STAT_rebuild_misplaced] = t.misplaced;
}

static void adopt_stop(struct adopt *a, const char *why)
{
    count_rb(a->rb, a->stats);
    rb_free(a->rb);
    a->rb = NULL;
    a->rb_ended = false;
    a->fresh = a->lease = false;    /* nothing starts before the next poll */
    a->stats[ADOPT_STAT_rebuild_stops]++;
    log_notice("rebuild", "%s: index rebuild stopped: %s; it starts again once the pool "
               "is idle", a->p->name, why);
    a->next_poll = 0;           /* give the lease back now */
}

static void adopt_start(struct adopt *a, uint64_t now)
{
    struct pool *p = a->p;
    char err[256];
    struct rb_params params = {
        .base = p->w->base, .dns = p->w->dns != NULL ? resolver_evdns(p->w->dns) : NULL,
        .pool = p->name, .index = &p->conf->index, .ring = p->ring,
        .rate = p->conf->index.rebuild_rate, .log_progress = true,
        .timeout_ms = p->conf->timeout > 0 ? (uint32_t)p->conf->timeout : 0,
        .on_end = on_rb_end, .arg = a,
    };

    memset(a->stats, 0, ADOPT_STAT_rebuild_runs * sizeof(a->stats[0]));
    a->taken = false;           /* this start is what that lease was taken for */
    log_notice("rebuild", "%s: the index is marked for a rebuild (%s:index): the "
               "backends may hold keys it lacks (a new prefix over servers in use, or a "
               "Redis that came back empty); this proxy rebuilds it", p->name, a->prefix);
    if ((a->rb = rb_start(&params, err, sizeof(err))) == NULL) {
        log_error("rebuild", "%s: cannot start the index rebuild: %s", p->name, err);
        a->stats[ADOPT_STAT_rebuild_failures]++;
        a->retry_at = now + ADOPT_RETRY_MIN_MS;
        a->next_poll = 0;
        return;
    }
    a->next_progress_log = now + ADOPT_PROGRESS_LOG_MS;
}

/* The engine ended (the tick, after on_rb_end). */
static void adopt_ended(struct adopt *a, uint64_t now)
{
    count_rb(a->rb, a->stats);
    rb_free(a->rb);
    a->rb = NULL;
    a->rb_ended = false;
    a->fresh = a->lease = false;    /* nothing starts before the next poll */
    if (a->rb_ok) {
        char keys[32];
        snprintf(keys, sizeof(keys), "%llu",
                 (unsigned long long)a->stats[ADOPT_STAT_rebuild_keys]);
        const char *argv[] = { "EVAL", RB_DONE_SCRIPT, "2", a->key_index, a->key_lock,
                               keys, a->id, "" };
        a->stats[ADOPT_STAT_rebuild_runs]++;
        a->backoff_ms = 0;
        snprintf(a->field, sizeof(a->field), "done - %s", keys);   /* until the next poll */
        if (a->up) {
            redisAsyncCommandArgv(a->ac, on_done_written, NULL, 8, argv, NULL);
        }
        return;
    }
    a->stats[ADOPT_STAT_rebuild_failures]++;
    a->backoff_ms = a->backoff_ms ? a->backoff_ms * 2 : ADOPT_RETRY_MIN_MS;
    a->backoff_ms = a->backoff_ms > ADOPT_RETRY_MAX_MS ? ADOPT_RETRY_MAX_MS : a->backoff_ms;
    a->retry_at = now + a->backoff_ms;
    a->next_poll = 0;           /* give the lease back: another proxy may try */
    log_error("rebuild", "%s: index rebuild failed: %s; trying again in %llu s",
              a->p->name, a->rb_error, (unsigned long long)(a->backoff_ms / 1000));
}

static void adopt_progress_log(struct adopt *a, uint64_t now)
{
    struct rb_server_progress t;

    if (now < a->next_progress_log) {
        return;
    }
    a->next_progress_log = now + ADOPT_PROGRESS_LOG_MS;
    count_rb(a->rb, a->stats);
    rb_totals(a->rb, &t);
    log_notice("rebuild", "%s: index rebuild: %llu keys listed, %llu indexed (%llu were "
               "missing), %llu misplaced, %.0f keys/s", a->p->name,
               (unsigned long long)t.keys, (unsigned long long)t.indexed,
               (unsigned long long)t.added, (unsigned long long)t.misplaced,
               t.elapsed_sec > 0 ? (double)t.keys / t.elapsed_sec : 0.0);
}

/* --- the tick ---------------------------------------------------------------------- */

/* May this proxy rebuild now? Only while its pool routes by the one ring the
 * data obeys, with no change proposed or under way. */
static bool adopt_may_run(const struct adopt *a, uint64_t now)
{
    const struct pool *p = a->p;

    return p->ready && !p->closing && !p->w->stopping && now >= a->retry_at &&
           mig_get_state(p->mig) == MIG_IDLE && !mig_fenced(p->mig);
}

void adopt_tick(struct adopt *a, uint64_t now)
{
    if (a == NULL) {
        return;
    }
    if ((a->p->closing || a->p->w->stopping) && !a->leaving) {
        a->leaving = true;
        a->leave_deadline = now + ADOPT_LEAVE_TIMEOUT_MS;
        if (a->rb != NULL) {
            adopt_stop(a, a->p->closing ? "the pool was removed" : "the proxy stops");
        }
        a->left = !a->up;
        if (a->up) {
            adopt_poll(a, false, on_left);   /* gives the lease back */
        }
        return;
    }
    if (a->leaving) {
        a->left = a->left || !a->up || now >= a->leave_deadline;
        return;
    }
    if (a->rb_ended) {
        adopt_ended(a, now);
    }
    bool may_run = adopt_may_run(a, now);
    if (a->rb != NULL) {
        /* A lease taken anew while running lapsed meanwhile: Redis may
         * have lost what was added (emptied, then marked pending again by
         * the ring's first record), so `done` must not follow: start over. */
        if (!may_run || !a->lease || a->mig_exists || a->taken) {
            adopt_stop(a, a->mig_exists ? "a migration record appeared" :
                       !a->lease ? "the lease was lost" : a->taken ? "the lease lapsed "
                       "and was taken again (was Redis emptied?)" : "the pool is not "
                       "idle (a ring change is proposed or under way)");
        } else {
            rb_set_rate(a->rb, a->p->conf->index.rebuild_rate);
            adopt_progress_log(a, now);
        }
    } else if (a->lease && may_run && !a->mig_exists && a->fresh &&
               strncmp(a->field, "running ", 8) == 0 && strcmp(a->field + 8, a->id) == 0) {
        adopt_start(a, now);
    }
    if (a->polling && now > a->poll_sent + ADOPT_POLL_TIMEOUT_MS) {
        a->polling = false;     /* unanswered: the lease lapses; ask again */
    }
    if (a->up && !a->polling && now >= a->next_poll) {
        a->next_poll = now + (a->rb != NULL ? ADOPT_RENEW_MS : ADOPT_POLL_MS);
        adopt_poll(a, may_run && !a->rb_ended, on_poll);
    }
}

/* --- lifecycle ------------------------------------------------------------------------ */

struct adopt *adopt_new(struct pool *p)
{
    struct adopt *a = calloc(1, sizeof(*a));

    if (a == NULL) {
        return NULL;
    }
    a->p = p;
    a->id = mig_id(p->mig);
    a->prefix = strdup(p->conf->index.prefix);
    a->retry = evtimer_new(p->w->base, adopt_on_retry, a);
    if (a->prefix == NULL || a->retry == NULL) {
        adopt_free(a);
        return NULL;
    }
    snprintf(a->key_index, sizeof(a->key_index), "%s:index", a->prefix);
    snprintf(a->key_lock, sizeof(a->key_lock), "%s:index:rebuild:lock", a->prefix);
    snprintf(a->key_mig, sizeof(a->key_mig), "%s:migration", a->prefix);
    adopt_connect(a);
    return a;
}

void adopt_free(struct adopt *a)
{
    if (a == NULL) {
        return;
    }
    rb_free(a->rb);
    if (a->ac != NULL) {
        a->ac->data = NULL;
        redisAsyncFree(a->ac);
    }
    if (a->retry != NULL) {
        event_free(a->retry);
    }
    free(a->prefix);
    free(a);
}

bool adopt_left(const struct adopt *a)
{
    return a == NULL || a->left;
}

enum adopt_state adopt_get_state(const struct adopt *a)
{
    const char *f = a->field;

    if (a->rb != NULL) {
        return ADOPT_RUNNING;
    }
    if (!a->known || f[0] == '\0') {
        return ADOPT_NONE;
    }
    if (strcmp(f, "pending") == 0) {
        return ADOPT_PENDING;
    }
    if (strncmp(f, "running ", 8) == 0) {
        return strcmp(f + 8, a->id) == 0 ? ADOPT_PENDING : ADOPT_ELSEWHERE;
    }
    if (strncmp(f, "done ", 5) == 0) {
        return ADOPT_DONE;
    }
    return ADOPT_NONE;          /* not a value any proxy writes */
}

void adopt_stats(const struct adopt *a, uint64_t out[ADOPT_STAT_COUNT])
{
    memcpy(out, a->stats, sizeof(a->stats));
    count_rb(a->rb, out);
}

void adopt_stats_lines(const struct adopt *a, struct evbuffer *out)
{
    uint64_t st[ADOPT_STAT_COUNT];

    if (a == NULL) {
        return;
    }
    adopt_stats(a, st);
    evbuffer_add_printf(out, "STAT index:rebuild_state %s\r\n",
                        adopt_state_names[adopt_get_state(a)]);
    for (int i = 0; i < ADOPT_STAT_COUNT; i++) {
        evbuffer_add_printf(out, "STAT index:%s %llu\r\n", adopt_stat_desc[i].name,
                            (unsigned long long)st[i]);
    }
}
