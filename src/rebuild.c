/*
 * rebuild.c — the index rebuilt from the backends (docs/ARCHITECTURE.md,
 * "The index", "Rebuild and adoption").
 *
 * Design notes
 * - Every server of the data ring is dumped at once (src/metadump.h). Each
 *   key listed is hashed by the data ring: a key on the server that owns it
 *   becomes one ZADD of its v-node set (member the key, score its hash),
 *   sent on the rebuild's own hiredis connection, on the same loop. A key
 *   on any other server is counted as misplaced and not indexed: no proxy
 *   reads it there, and indexing it would only send the mover to look for
 *   it where it is not.
 * - Flow control: at most `inflight` ZADDs are unanswered; past that every
 *   dump pauses (memcached's crawler then waits on its socket) and resumes
 *   at half. A rate (keys per second) is a token bucket refilled by the
 *   timer; an empty bucket pauses the dumps too.
 * - ZADD is idempotent, so a rebuild may run twice, alongside client
 *   writes, or stop half way and start again: entries are only added.
 * - Every wait is bounded: a backend's silence by the dump's timeout, a
 *   busy crawler by RB_BUSY_RETRIES, Redis by RB_REDIS_TIMEOUT_MS. Any
 *   error ends the rebuild; on_end is called from its own event.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libevent.h>

#include "clock.h"
#include "index.h"
#include "layout.h"
#include "log.h"
#include "mem.h"
#include "metadump.h"
#include "rebuild.h"

#define RB_TIMER_MS 20

#define RB_SRV_NAME(e, name) [RB_SRV_##e] = name,
const char *const rb_srv_names[RB_SRV_COUNT] = { RB_SRV_CODEC(RB_SRV_NAME) };
#undef RB_SRV_NAME

struct rb_server {
    struct rb *rb;
    uint32_t index;             /* in the ring's servers */
    struct conf_addr addr;
    struct mdump *dump;
    enum rb_srv_state state;
    uint64_t retry_at, started_ms, ended_ms;
    uint64_t keys, indexed, added, misplaced, busy, bad;
    char sample[MDUMP_KEY_MAX + 1];     /* the first misplaced key */
    uint32_t sample_owner;
};

struct rb {
    struct event_base *base;
    struct evdns_base *dns;         /* rb_params.dns */
    char *pool, *prefix, *redis_text;
    char *ring_key;             /* <prefix>:ring, the index script's KEYS[1] */
    struct lay_limits limits;   /* the listpack thresholds (layout.h) */
    struct ring *ring;
    redisAsyncContext *ac;
    struct event *timer, *end_ev;
    struct rb_server *srv;
    uint32_t nsrv;
    uint32_t inflight, inflight_max, timeout_ms;
    int64_t rate;
    double tokens;
    uint64_t last_refill, last_reply, started_ms, ended_ms;
    bool paused, ending, ended, log_progress;
    char error[512];
    void (*on_end)(void *arg, bool ok, const char *error);
    void *arg;
};

/* A key that can go into a command line: 1..250 bytes, no space or control
 * byte (the dump parser guarantees it; checked again before use). */
static bool rb_key_ok(const char *s, size_t len)
{
    if (len == 0 || len > MDUMP_KEY_MAX) {
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        if ((unsigned char)s[i] <= ' ' || (unsigned char)s[i] == 0x7f) {
            return false;
        }
    }
    return true;
}

/* --- ending ------------------------------------------------------------------ */

static void rb_check_end(struct rb *rb)
{
    if (rb->ended) {
        return;
    }
    bool all_done = true;
    for (uint32_t i = 0; i < rb->nsrv; i++) {
        all_done = all_done && rb->srv[i].state == RB_SRV_DONE;
    }
    if (rb->ending || (all_done && rb->inflight == 0)) {
        rb->ended = true;
        rb->ended_ms = rp_clock_ms();
        event_active(rb->end_ev, EV_TIMEOUT, 0);
    }
}

/* The first error ends the rebuild; later ones are consequences. */
static void rb_fail(struct rb *rb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void rb_fail(struct rb *rb, const char *fmt, ...)
{
    va_list ap;

    if (rb->ending) {
        return;
    }
    va_start(ap, fmt);
    vsnprintf(rb->error, sizeof(rb->error), fmt, ap);
    va_end(ap);
    rb->ending = true;
    for (uint32_t i = 0; i < rb->nsrv; i++) {
        if (rb->srv[i].dump != NULL) {
            mdump_pause(rb->srv[i].dump);     /* freed by the end event */
        }
    }
    rb_check_end(rb);
}

static void on_end_ev(evutil_socket_t fd, short what, void *arg)
{
    struct rb *rb = arg;

    (void)fd, (void)what;
    for (uint32_t i = 0; i < rb->nsrv; i++) {
        mdump_free(rb->srv[i].dump);
        rb->srv[i].dump = NULL;
    }
    event_del(rb->timer);
    if (rb->log_progress) {
        struct rb_server_progress t;
        rb_totals(rb, &t);
        if (rb->error[0] == '\0') {
            log_notice("rebuild", "%s: index rebuilt from %u servers in %.1f s: %llu keys "
                       "indexed (%llu were missing), %llu misplaced, %.0f keys/s",
                       rb->pool, rb->nsrv, t.elapsed_sec, (unsigned long long)t.indexed,
                       (unsigned long long)t.added, (unsigned long long)t.misplaced,
                       t.elapsed_sec > 0 ? (double)t.indexed / t.elapsed_sec : 0.0);
        }
    }
    rb->on_end(rb->arg, rb->error[0] == '\0', rb->error);
}

/* --- flow control -------------------------------------------------------------- */

static void rb_flow(struct rb *rb)
{
    bool no_tokens = rb->rate > 0 && rb->tokens < 1;
    bool stop = rb->ending || no_tokens || rb->inflight >= rb->inflight_max;
    bool go = !rb->ending && !no_tokens && rb->inflight <= rb->inflight_max / 2;

    if (!rb->paused && stop) {
        rb->paused = true;
        for (uint32_t i = 0; i < rb->nsrv; i++) {
            if (rb->srv[i].dump != NULL) {
                mdump_pause(rb->srv[i].dump);
            }
        }
    } else if (rb->paused && go) {
        rb->paused = false;
        for (uint32_t i = 0; i < rb->nsrv; i++) {
            if (rb->srv[i].dump != NULL) {
                mdump_resume(rb->srv[i].dump);
            }
        }
    }
}

/* --- Redis --------------------------------------------------------------------- */

static void on_zadd(redisAsyncContext *ac, void *r, void *priv)
{
    struct rb_server *s = priv;
    struct rb *rb = s->rb;
    redisReply *reply = r;

    if (ac->data == NULL) {
        return;     /* rb_free is dropping the connection */
    }
    rb->inflight--;
    rb->last_reply = rp_clock_ms();
    if (reply == NULL) {
        rb_fail(rb, "lost Redis %s with index writes unanswered", rb->redis_text);
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        rb_fail(rb, "Redis %s refused an index write: %s", rb->redis_text, reply->str);
        return;
    }
    s->indexed++;
    s->added += reply->type == REDIS_REPLY_INTEGER && reply->integer > 0;
    rb_flow(rb);
    rb_check_end(rb);
}

static void on_setup(redisAsyncContext *ac, void *r, void *priv)
{
    struct rb *rb = ac->data;
    redisReply *reply = r;

    if (rb == NULL) {
        return;
    }
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        rb_fail(rb, "Redis %s refused %s: %s", rb->redis_text, (const char *)priv,
                reply != NULL ? reply->str : "connection lost");
    }
}

static void on_limits(redisAsyncContext *ac, void *r, void *priv)
{
    struct rb *rb = ac->data;

    (void)priv;
    if (rb != NULL && r != NULL) {
        lay_limits_parse(&rb->limits, r);   /* refused: Redis's defaults */
    }
}

static void rb_on_connect(const redisAsyncContext *ac, int status)
{
    struct rb *rb = ac->data;

    if (rb == NULL || status == REDIS_OK) {
        return;
    }
    rb->ac = NULL;      /* hiredis frees it after this callback */
    rb_fail(rb, "cannot connect to Redis %s: %s", rb->redis_text, ac->errstr);
}

static void rb_on_disconnect(const redisAsyncContext *ac, int status)
{
    struct rb *rb = ac->data;

    if (rb == NULL) {
        return;
    }
    rb->ac = NULL;
    rb_fail(rb, "lost Redis %s: %s", rb->redis_text,
            status == REDIS_OK ? "closed" : ac->errstr);
}

static int rb_connect(struct rb *rb, const struct conf_index *ix)
{
    redisAsyncContext *ac = ix->redis.is_unix ? redisAsyncConnectUnix(ix->redis.host) :
                            redisAsyncConnect(ix->redis.host, ix->redis.port);

    if (ac == NULL || ac->err) {
        if (ac != NULL) {
            redisAsyncFree(ac);
        }
        return -1;
    }
    ac->data = rb;
    rb->ac = ac;
    rp_xcheck(redisLibeventAttach(ac, rb->base) == REDIS_OK, "a Redis connection's events");
    redisAsyncSetConnectCallback(ac, rb_on_connect);
    redisAsyncSetDisconnectCallback(ac, rb_on_disconnect);
    if (ix->password != NULL) {
        const char *argv[] = { "AUTH", ix->password };
        size_t len[] = { 4, strlen(ix->password) };
        rp_xcheck(redisAsyncCommandArgv(ac, on_setup, (void *)"AUTH", 2, argv, len) ==
                  REDIS_OK, "the Redis AUTH command");
    }
    if (ix->db != 0) {
        char db[24];
        snprintf(db, sizeof(db), "%lld", (long long)ix->db);
        const char *argv[] = { "SELECT", db };
        size_t len[] = { 6, strlen(db) };
        rp_xcheck(redisAsyncCommandArgv(ac, on_setup, (void *)"SELECT", 2, argv, len) ==
                  REDIS_OK, "the Redis SELECT command");
    }
    const char *largv[3];
    size_t llen[3];
    lay_load_argv(largv, llen);
    rp_xcheck(redisAsyncCommandArgv(ac, on_setup, (void *)"SCRIPT LOAD", 3, largv, llen) ==
              REDIS_OK, "the Redis SCRIPT LOAD command");
    const char *cargv[] = { "CONFIG", "GET", LAY_CONFIG_PATTERN };
    size_t clen[] = { 6, 3, strlen(LAY_CONFIG_PATTERN) };
    rp_xcheck(redisAsyncCommandArgv(ac, on_limits, NULL, 3, cargv, clen) == REDIS_OK,
              "the Redis CONFIG GET command");
    return 0;
}

/* --- dumps --------------------------------------------------------------------- */

static void on_key(void *arg, const struct mdump_item *it)
{
    struct rb_server *s = arg;
    struct rb *rb = s->rb;
    const struct ring *r = rb->ring;

    s->keys++;
    if (rb->ending) {
        return;
    }
    if (!rb_key_ok(it->key, it->len)) {
        s->bad++;
        return;
    }
    uint32_t h = ring_key_hash(r, it->key, it->len);
    uint32_t pt = ring_find(r, h);
    if (r->points[pt].server != s->index) {
        if (s->misplaced == 0) {
            memcpy(s->sample, it->key, it->len);
            s->sample[it->len] = '\0';
            s->sample_owner = r->points[pt].server;
        }
        if (s->misplaced++ < RB_MISPLACED_LOGGED && rb->log_progress) {
            log_warn("rebuild", "%s: key '%.*s' is on %s, but the ring gives it to %s: "
                     "not indexed (the proxies never read it there)", rb->pool,
                     (int)it->len, it->key, r->servers[s->index].identity,
                     r->servers[r->points[pt].server].identity);
        }
        return;
    }
    /* The index script adds it where the layout in force says (layout.h). */
    char vnode[1024], score[16], nums[2][12];
    const char *argv[LAY_HEAD + 4];
    size_t lens[LAY_HEAD + 4];
    lay_head(argv, lens, rb->ring_key, "add", &rb->limits, nums);
    size_t vlen = idx_vnode_key(rb->prefix, r, pt, vnode, sizeof(vnode));
    argv[LAY_HEAD] = vnode;
    lens[LAY_HEAD] = vlen;
    argv[LAY_HEAD + 1] = "1";
    lens[LAY_HEAD + 1] = 1;
    argv[LAY_HEAD + 2] = score;
    lens[LAY_HEAD + 2] = (size_t)snprintf(score, sizeof(score), "%u", h);
    argv[LAY_HEAD + 3] = it->key;
    lens[LAY_HEAD + 3] = it->len;
    if (rb->ac == NULL || vlen >= sizeof(vnode) ||
        redisAsyncCommandArgv(rb->ac, on_zadd, s, LAY_HEAD + 4, argv, lens) != REDIS_OK) {
        rb_fail(rb, "cannot send to Redis %s", rb->redis_text);
        return;
    }
    rb->inflight++;
    if (rb->rate > 0) {
        rb->tokens -= 1;
    }
    rb_flow(rb);
}

static void on_dump_end(void *arg, enum mdump_end how, const char *said)
{
    struct rb_server *s = arg;
    struct rb *rb = s->rb;
    const char *id = rb->ring->servers[s->index].identity;
    char why[256];

    snprintf(why, sizeof(why), "%s", said);     /* it lives in the dump */
    mdump_free(s->dump);
    s->dump = NULL;
    s->ended_ms = rp_clock_ms();
    switch (how) {
    case MDUMP_DONE:
        s->state = RB_SRV_DONE;
        rb_check_end(rb);
        return;
    case MDUMP_BUSY:
        if (++s->busy > RB_BUSY_RETRIES) {
            s->state = RB_SRV_FAILED;
            rb_fail(rb, "memcached at %s (%s) stayed busy for %d s: its LRU crawler runs "
                    "another job (%s); try again later", s->addr.text, id,
                    RB_BUSY_RETRIES * RB_BUSY_PAUSE_MS / 1000, why);
            return;
        }
        if (rb->log_progress && s->busy == 1) {
            log_notice("rebuild", "%s: memcached at %s (%s) answers %s: its LRU crawler "
                       "runs another job; asking again every %d ms", rb->pool,
                       s->addr.text, id, why, RB_BUSY_PAUSE_MS);
        }
        s->state = RB_SRV_WAITING;
        s->retry_at = rp_clock_ms() + RB_BUSY_PAUSE_MS;
        return;
    case MDUMP_REFUSED:
        s->state = RB_SRV_FAILED;
        rb_fail(rb, "memcached at %s (%s) refused lru_crawler metadump: %s; needs "
                "memcached >= 1.4.31 with the LRU crawler enabled", s->addr.text, id, why);
        return;
    default:
        s->state = RB_SRV_FAILED;
        rb_fail(rb, "memcached at %s (%s): listing its keys failed: %s", s->addr.text,
                id, why);
        return;
    }
}

static void rb_start_dump(struct rb *rb, struct rb_server *s)
{
    s->dump = mdump_start(rb->base, rb->dns, s->addr.host, s->addr.port, s->addr.is_unix,
                          rb->timeout_ms, on_key, on_dump_end, s);
    if (s->dump == NULL) {
        s->state = RB_SRV_FAILED;
        rb_fail(rb, "memcached at %s: cannot start listing its keys (out of memory)",
                s->addr.text);
        return;
    }
    s->state = RB_SRV_DUMPING;
    if (s->started_ms == 0) {
        s->started_ms = rp_clock_ms();
    }
    if (rb->paused) {
        mdump_pause(s->dump);
    }
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct rb *rb = arg;
    uint64_t now = rp_clock_ms();

    (void)fd, (void)what;
    if (rb->ending) {
        return;
    }
    if (rb->rate > 0) {
        double burst = rb->rate / 10 > 1 ? (double)(rb->rate / 10) : 1.0;
        rb->tokens += (double)rb->rate * (double)(now - rb->last_refill) / 1000.0;
        rb->tokens = rb->tokens > burst ? burst : rb->tokens;
    }
    rb->last_refill = now;
    if (rb->inflight > 0 && now > rb->last_reply + RB_REDIS_TIMEOUT_MS) {
        rb_fail(rb, "Redis %s did not answer for %d s", rb->redis_text,
                RB_REDIS_TIMEOUT_MS / 1000);
        return;
    }
    for (uint32_t i = 0; i < rb->nsrv && !rb->ending; i++) {
        struct rb_server *s = &rb->srv[i];
        if (s->state == RB_SRV_WAITING && s->dump == NULL && now >= s->retry_at) {
            rb_start_dump(rb, s);
        }
    }
    rb_flow(rb);
}

/* --- lifecycle ------------------------------------------------------------------ */

struct rb *rb_start(const struct rb_params *p, char *err, size_t errlen)
{
    struct rb *rb = calloc(1, sizeof(*rb));

    if (rb == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    rb->base = p->base;
    rb->dns = p->dns;
    rb->ring = ring_ref(p->ring);
    rb->rate = p->rate;
    rb->inflight_max = p->inflight ? p->inflight : RB_INFLIGHT_DEFAULT;
    rb->timeout_ms = p->timeout_ms ? p->timeout_ms : 5000;
    rb->log_progress = p->log_progress;
    rb->on_end = p->on_end;
    rb->arg = p->arg;
    rb->started_ms = rb->last_refill = rb->last_reply = rp_clock_ms();
    rb->nsrv = p->ring->nservers;
    rb->pool = strdup(p->pool);
    rb->prefix = strdup(p->index->prefix);
    if (asprintf(&rb->ring_key, "%s:ring", p->index->prefix) < 0) {
        rb->ring_key = NULL;
    }
    lay_limits_default(&rb->limits);
    rb->redis_text = strdup(p->index->redis.text);
    rb->srv = calloc(rb->nsrv, sizeof(*rb->srv));
    rb->timer = event_new(p->base, -1, EV_PERSIST, on_timer, rb);
    rb->end_ev = event_new(p->base, -1, 0, on_end_ev, rb);
    if (rb->pool == NULL || rb->prefix == NULL || rb->redis_text == NULL || !rb->ring_key ||
        rb->srv == NULL || rb->timer == NULL || rb->end_ev == NULL) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (uint32_t i = 0; i < rb->nsrv; i++) {
        struct rb_server *s = &rb->srv[i];
        const char *why = NULL;
        s->rb = rb;
        s->index = i;
        s->state = RB_SRV_WAITING;
        if (conf_addr_parse(p->ring->servers[i].addr, &s->addr, &why) != 0) {
            snprintf(err, errlen, "server %s: address '%s': %s",
                     p->ring->servers[i].identity, p->ring->servers[i].addr,
                     why != NULL ? why : "invalid");
            goto fail;
        }
    }
    if (rb_connect(rb, p->index) != 0) {
        snprintf(err, errlen, "cannot connect to Redis %s", rb->redis_text);
        goto fail;
    }
    struct timeval tv = { 0, RB_TIMER_MS * 1000 };
    event_add(rb->timer, &tv);
    for (uint32_t i = 0; i < rb->nsrv && !rb->ending; i++) {
        rb_start_dump(rb, &rb->srv[i]);
    }
    if (rb->nsrv == 0) {
        rb_check_end(rb);
    }
    if (rb->log_progress) {
        char rate[32] = "no limit";
        if (rb->rate > 0) {
            snprintf(rate, sizeof(rate), "%lld keys/s", (long long)rb->rate);
        }
        log_notice("rebuild", "%s: rebuilding the index from the keys %u servers hold "
                   "(lru_crawler metadump), %s", rb->pool, rb->nsrv, rate);
    }
    return rb;

fail:
    rb_free(rb);
    return NULL;
}

void rb_free(struct rb *rb)
{
    if (rb == NULL) {
        return;
    }
    if (rb->ac != NULL) {
        rb->ac->data = NULL;    /* its callbacks, called now, do nothing */
        redisAsyncFree(rb->ac);
    }
    for (uint32_t i = 0; rb->srv != NULL && i < rb->nsrv; i++) {
        mdump_free(rb->srv[i].dump);
        conf_addr_free(&rb->srv[i].addr);
    }
    if (rb->timer != NULL) {
        event_free(rb->timer);
    }
    if (rb->end_ev != NULL) {
        event_free(rb->end_ev);
    }
    ring_unref(rb->ring);
    free(rb->srv);
    free(rb->pool);
    free(rb->prefix);
    free(rb->ring_key);
    free(rb->redis_text);
    free(rb);
}

void rb_set_rate(struct rb *rb, int64_t rate)
{
    if (rb != NULL && rb->rate != rate) {
        rb->rate = rate;
        rb->tokens = 0;
        rb_flow(rb);
    }
}

uint32_t rb_servers(const struct rb *rb)
{
    return rb->nsrv;
}

void rb_server_progress(const struct rb *rb, uint32_t i, struct rb_server_progress *out)
{
    const struct rb_server *s = &rb->srv[i];
    uint64_t end = s->state == RB_SRV_DONE || s->state == RB_SRV_FAILED ?
                   s->ended_ms : rp_clock_ms();

    *out = (struct rb_server_progress){
        .identity = rb->ring->servers[i].identity, .addr = s->addr.text,
        .state = s->state, .keys = s->keys, .indexed = s->indexed, .added = s->added,
        .misplaced = s->misplaced, .busy = s->busy, .bad = s->bad,
        .elapsed_sec = s->started_ms && end > s->started_ms ?
                       (double)(end - s->started_ms) / 1000.0 : 0.0,
        .sample = s->sample,
        .sample_owner = s->misplaced ? rb->ring->servers[s->sample_owner].identity : "",
    };
}

void rb_totals(const struct rb *rb, struct rb_server_progress *out)
{
    *out = (struct rb_server_progress){ .identity = "", .addr = "", .sample = "",
                                        .sample_owner = "", .state = RB_SRV_DONE };
    for (uint32_t i = 0; i < rb->nsrv; i++) {
        struct rb_server_progress s;
        rb_server_progress(rb, i, &s);
        out->keys += s.keys;
        out->indexed += s.indexed;
        out->added += s.added;
        out->misplaced += s.misplaced;
        out->busy += s.busy;
        out->bad += s.bad;
        if (s.state != RB_SRV_DONE) {
            out->state = s.state == RB_SRV_FAILED ? RB_SRV_FAILED : RB_SRV_DUMPING;
        }
    }
    out->elapsed_sec = (double)((rb->ended ? rb->ended_ms : rp_clock_ms()) - rb->started_ms) /
                       1000.0;
}
