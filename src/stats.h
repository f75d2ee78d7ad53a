/* stats.h — counters of a pool and of each backend, one table each. */
#ifndef RP_STATS_H
#define RP_STATS_H

#include <stdint.h>

/* X(name, kind, help): kind is counter or gauge (Prometheus' words). */
#define STATS_POOL_CODEC(X)                                                   \
    X(curr_connections, gauge, "client connections open now")                \
    X(total_connections, counter, "client connections accepted")              \
    X(rejected_connections, counter, "clients refused by client_connections")  \
    X(requests, counter, "commands received from clients")                    \
    X(cmd_get, counter, "keys asked for by get, gets, gat and gats")          \
    X(get_hits, counter, "keys found")                                        \
    X(get_misses, counter, "keys not found")                                  \
    X(cmd_set, counter, "set, add, replace, append, prepend and cas")         \
    X(cmd_delete, counter, "delete commands")                                 \
    X(cmd_incr_decr, counter, "incr and decr commands")                       \
    X(cmd_touch, counter, "touch commands")                                   \
    X(cmd_flush, counter, "flush_all commands")                               \
    X(client_errors, counter, "malformed commands answered with an error")    \
    X(server_errors, counter, "requests failed because a backend failed")     \
    X(too_large, counter, "values refused for exceeding item_size_max")       \
    X(closed_slow_clients, counter,                                           \
      "clients closed for holding more than client_max_memory of replies")    \
    X(closed_bad_clients, counter, "clients closed for protocol abuse")        \
    X(closed_idle_clients, counter, "clients closed after client_timeout idle") \
    X(closed_stalled_clients, counter,                                        \
      "clients closed after value_timeout inside an unfinished command")      \
    X(cmd_meta, counter, "meta commands (mg ms md ma mn me)")                 \
    X(meta_moving_refused, counter,                                           \
      "meta commands on a key moving in a resize, answered SERVER_ERROR")      \
    X(meta_unindexed_keys, counter,                                           \
      "base64 keys stored but not indexed: not a valid text key")              \
    X(accept_pauses, counter, "times accepting paused at the fd limit")       \
    X(fragments, counter,                                                     \
      "shares multi-key gets were split into (one per backend line)")

#define STATS_BACKEND_CODEC(X)                                                \
    X(requests, counter, "requests sent")                                     \
    X(errors, counter, "requests failed (connection refused, lost, timeout)") \
    X(timeouts, counter, "requests that timed out")                           \
    X(connects, counter, "connections established")                          \
    X(connect_failures, counter, "connection attempts that failed")           \
    X(ejections, counter, "times auto_eject_hosts took it out of routing")    \
    X(protocol_errors, counter, "connections closed for a malformed or unasked-for reply") \
    X(inflight, gauge, "requests sent and not yet answered")                  \
    X(queue_pauses, counter,                                                  \
      "clients paused: a connection's unsent output passed server_max_queue") \
    X(bytes_sent, counter, "bytes written to the server's connections")      \
    X(bytes_received, counter, "bytes read from the server's connections")   \
    X(closed_by_server, counter, "connections the server closed (EOF)")

#define STATS_ENUM(name, kind, help) STAT_##name,
enum stat_pool { STATS_POOL_CODEC(STATS_ENUM) STAT_POOL_COUNT };
#undef STATS_ENUM
#define STATS_ENUM(name, kind, help) STAT_BE_##name,
enum stat_backend { STATS_BACKEND_CODEC(STATS_ENUM) STAT_BACKEND_COUNT };
#undef STATS_ENUM

struct stats_desc {
    const char *name;
    const char *kind;
    const char *help;
};

extern const struct stats_desc stats_pool_desc[STAT_POOL_COUNT];
extern const struct stats_desc stats_backend_desc[STAT_BACKEND_COUNT];

#endif
