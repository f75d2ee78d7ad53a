/*
 * rebuild.h — rebuild a pool's Redis index from what its backends hold:
 * every key each memcached lists (lru_crawler metadump, src/metadump.h) is
 * added to the v-node set that owns it under the data ring. On an event
 * loop; `ringproxy index rebuild` runs it in the foreground and a proxy in
 * the background (src/adopt.h). docs/ARCHITECTURE.md, "The index".
 */
#ifndef RP_REBUILD_H
#define RP_REBUILD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "ring.h"

struct event_base;
struct evdns_base;
struct rb;

/*
 * The field `rebuild` of <prefix>:index says whether the index must be
 * rebuilt from the backends: "pending", "running <proxy id>" or
 * "done <redis ms> <keys>" (absent: never asked). The sweeper does not
 * sweep while it is pending or running.
 */
#define RB_FIELD "rebuild"

/*
 * EVAL, KEYS <prefix>:ring <prefix>:index, ARGV the ring record's fields:
 * record the ring only if none is, and then (atomically) mark the index for
 * a rebuild: the backends may hold keys no proxy indexed (a new prefix over
 * warm servers, or a Redis that came back empty). Returns 1 if it wrote.
 */
#define RB_FIRST_RECORD_SCRIPT                                                \
    "if redis.call('exists', KEYS[1]) == 1 then return 0 end "               \
    "redis.call('hset', KEYS[1], unpack(ARGV)) "                              \
    "redis.call('hset', KEYS[1], 'layout', '2') "                             \
    "redis.call('hset', KEYS[2], 'rebuild', 'pending') return 1"

/*
 * EVAL, KEYS <prefix>:index <prefix>:index:rebuild:lock, ARGV keys indexed,
 * the lease holder's id ("" for the command line, which holds none) and the
 * command line's mark (a field of <prefix>:index it set before listing; ""
 * for none): the rebuild is done, stamped with Redis's clock in ms; the
 * lease and the mark go. Returns 0 when the lease is someone else's, 2 when
 * the mark is gone (Redis lost its data meanwhile: so did the index).
 */
#define RB_DONE_SCRIPT                                                        \
    "if ARGV[2] ~= '' and redis.call('get', KEYS[2]) ~= ARGV[2] then "        \
    "return 0 end "                                                           \
    "if ARGV[3] ~= '' and redis.call('hdel', KEYS[1], ARGV[3]) == 0 then "    \
    "return 2 end local t = redis.call('time') "                              \
    "redis.call('hset', KEYS[1], 'rebuild', 'done ' .. t[1] .. "              \
    "string.format('%03d', math.floor(tonumber(t[2]) / 1000)) .. ' ' .. ARGV[1]) " \
    "if ARGV[2] ~= '' then redis.call('del', KEYS[2]) end return 1"

#define RB_INFLIGHT_DEFAULT 4096    /* ZADDs sent and not yet answered */
#define RB_BUSY_RETRIES 60          /* a crawler busy with another job: */
#define RB_BUSY_PAUSE_MS 1000       /* ... retried this often, this long */
#define RB_REDIS_TIMEOUT_MS 30000   /* Redis silent with ZADDs unanswered */
#define RB_MISPLACED_LOGGED 5       /* misplaced keys named in the log, per server */

/* Where one server's dump stands. */
#define RB_SRV_CODEC(X)                                                        \
    X(WAITING, "waiting")       /* not started, or BUSY: starts again later */ \
    X(DUMPING, "dumping")                                                      \
    X(DONE, "done")             /* every key it listed was handled */          \
    X(FAILED, "failed")

#define RB_SRV_ENUM(e, name) RB_SRV_##e,
enum rb_srv_state { RB_SRV_CODEC(RB_SRV_ENUM) RB_SRV_COUNT };
#undef RB_SRV_ENUM
extern const char *const rb_srv_names[RB_SRV_COUNT];

struct rb_params {
    struct event_base *base;
    struct evdns_base *dns;         /* backends' names on the loop (resolve.h);
                                       NULL: blocking getaddrinfo (the CLI) */
    const char *pool;               /* for the log */
    const struct conf_index *index; /* Redis address, db, password, prefix */
    struct ring *ring;              /* the data ring, with the addresses to dump
                                       (a reference is taken) */
    int64_t rate;                   /* keys per second, 0 = unlimited */
    uint32_t inflight;              /* 0: RB_INFLIGHT_DEFAULT */
    uint32_t timeout_ms;            /* backends' silence; 0: 5000 */
    bool log_progress;              /* log start, misplaced samples, end */
    /* Called once, from its own event (never from inside a Redis or dump
     * callback): ok, or error says why. It may free the rebuild. */
    void (*on_end)(void *arg, bool ok, const char *error);
    void *arg;
};

struct rb_server_progress {
    const char *identity, *addr;    /* valid while the rebuild lives */
    enum rb_srv_state state;
    uint64_t keys;          /* listed by the dump */
    uint64_t indexed;       /* ZADDs Redis confirmed */
    uint64_t added;         /* ... of keys the index did not have */
    uint64_t misplaced;     /* on this server, owned by another: not indexed */
    uint64_t busy;          /* BUSY answers so far */
    uint64_t bad;           /* listed keys unfit for a command line: skipped */
    double elapsed_sec;     /* of this server's dump, up to now or its end */
    const char *sample;     /* the first misplaced key ("" none) ... */
    const char *sample_owner;   /* ... and the server that owns it */
};

/*
 * Start rebuilding (it connects to Redis itself, and owns that connection:
 * ZADDs in flight die with it). NULL with a reason in err when it cannot
 * start: no memory, an address that does not parse.
 */
struct rb *rb_start(const struct rb_params *p, char *err, size_t errlen);
/* Stop at once: dumps closed, the Redis connection dropped; on_end is never
 * called. NULL is fine. Not from inside on_end's caller chain other than
 * on_end itself. */
void rb_free(struct rb *rb);
/* keys per second, 0 = unlimited (a reload changed rebuild_rate). */
void rb_set_rate(struct rb *rb, int64_t rate);

uint32_t rb_servers(const struct rb *rb);
void rb_server_progress(const struct rb *rb, uint32_t i, struct rb_server_progress *out);
/* Totals over every server, elapsed since the start. */
void rb_totals(const struct rb *rb, struct rb_server_progress *out);

#endif
