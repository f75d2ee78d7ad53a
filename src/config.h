/* config.h — the YAML pool file: load, validate, and turn a pool into a ring. */
#ifndef RP_CONFIG_H
#define RP_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ring.h"

#define CONF_DEFAULT_PORT 11211

/*
 * What a file may hold. A reload runs on the event loop, so these bound the
 * work one SIGHUP can cost whatever the file says (tests/integration/
 * test_reload_limits.py times the worst case).
 */
#define CONF_FILE_MAX (4u << 20)    /* bytes */
#define CONF_DEPTH_MAX 16           /* nested mappings and lists */
#define CONF_POOLS_MAX 256
#define CONF_SERVERS_MAX 4096       /* in all pools together (each ring is
                                       built on reload: ~30 µs a server);
                                       RINGREC_MAX_SERVERS */
#define CONF_STR_MAX 255            /* a server's name, address, identity;
                                       RINGREC_STR_MAX */
#define CONF_PREFIX_MAX 200         /* index.prefix: with an identity, a
                                       v-node's set name fits 512 bytes
                                       (idx_vnode_key's callers) */
#define CONF_ERRORS_MAX 100         /* reported; the rest are counted */

/* A host:port, [ipv6]:port or a unix socket path, as parsed from the file. */
struct conf_addr {
    char *text;             /* as written, e.g. "127.0.0.1:11212", "[::1]:11212" */
    char *host;             /* host (an IPv6 address without its brackets),
                               or the socket path when is_unix */
    uint16_t port;
    bool is_unix;
    bool is_ipv6;           /* written in brackets */
};

struct conf_server {
    struct conf_addr addr;
    uint32_t weight;
    char *name;             /* NULL when the file gives none */
    char *identity;         /* what the ring hashes (ARCHITECTURE.md, "Ring placement") */
    int line, col;
};

struct conf_index {
    bool enabled;
    struct conf_addr redis;
    int64_t db;
    char *prefix;           /* default "rp:<pool name>" */
    char *password;         /* NULL: no AUTH */
    int64_t queue_max;      /* index writes held while Redis is away */
    int64_t reply_timeout;  /* ms the writer waits for Redis to answer, or to
                               accept its connection, before it reconnects */
    int64_t rebuild_rate;   /* keys per second a background index rebuild
                               adds, 0 = unlimited */
    int64_t sweep_rate;     /* entries per second the sweeper looks at; 0 = off
                               (docs/ARCHITECTURE.md, "The sweeper") */
    int64_t sweep_interval; /* ms: a background pass begins at most this often */
};

struct conf_migration {
    int64_t rate;           /* keys per second, 0 = unlimited */
    bool delete_source;
    int64_t inflight;       /* moves in flight per backend */
    int64_t liveness;       /* ms: a silent proxy leaves the fleet; it fences
                               itself after half of it; 0: never */
    bool follow_unknown;    /* a recorded server this file does not list:
                               connect to the address Redis records for it
                               (else the pool is fenced until the file lists it) */
};

struct conf_pool {
    char *name;
    int line, col;
    struct conf_addr listen;
    int64_t listen_mode;    /* "listen: /path 0666" (twemproxy's form): the
                               unix socket's mode; -1: as the umask leaves it */
    int64_t hash;           /* enum hash_kind */
    bool has_tag;
    char hash_tag[2];
    int64_t distribution;   /* only ketama is accepted */
    int64_t compat;         /* enum ring_compat */
    int64_t timeout;        /* ms a backend may take to answer; -1 (or 0):
                               wait forever */
    int64_t backlog;
    bool reuseport;         /* SO_REUSEPORT on the listener: a new process
                               may bind the same port (binary upgrade) */
    bool preconnect;
    bool redis;             /* twemproxy's flag: must stay false */
    bool tcpkeepalive;
    int64_t server_connections;
    bool auto_eject_hosts;
    int64_t server_retry_timeout;   /* ms */
    int64_t server_failure_limit;
    int64_t client_connections;     /* 0 = unlimited */
    int64_t item_size_max;          /* largest value accepted, bytes */
    int64_t client_timeout;         /* ms: close a client silent this long
                                       with nothing in flight; 0 = never */
    int64_t value_timeout;          /* ms: close a client that stops sending
                                       in the middle of a command (its line
                                       or its value); 0 = never */
    int64_t client_max_memory;      /* bytes held for one client (unread
                                       replies, replies waiting their turn,
                                       multi-get shares) past which it is
                                       closed */
    int64_t server_max_queue;       /* unsent bytes on one backend
                                       connection past which the clients
                                       sending to it pause */
    struct conf_server *servers;
    uint32_t nservers;
    size_t last_server_end;         /* byte offset where the last entry of
                                       servers ends (truncation check) */
    int last_server_line, last_server_col;
    struct conf_index index;
    struct conf_migration migration;
    bool seen[64];                  /* which directives the file set */
};

#define CONF_THREADS_MAX 64
#define CONF_ACTIVE_AUTO 0
#define CONF_ACTIVE_ALL (-1)

struct config {
    char *path;
    int64_t threads;        /* global `threads:` (event-loop threads);
                               0: one per online core, at most 8; -1: not
                               set (proxy.c's default) */
    int64_t threads_active; /* `threads_active:` how many of them serve
                               clients: a count, CONF_ACTIVE_AUTO (the
                               default: balance.h) or CONF_ACTIVE_ALL */
    struct conf_pool *pools;
    uint32_t npools;
};

/* Every problem found, each "FILE:LINE:COL: what was expected". */
struct conf_errors {
    char **msgs;
    size_t n;
    size_t cap;             /* msgs has room for cap */
    size_t more;            /* errors past CONF_ERRORS_MAX, counted only */
};

/*
 * Parse and validate the whole file. Returns NULL when there is any error;
 * errs then holds all of them (the caller frees it with conf_errors_free).
 */
struct config *config_load(const char *path, struct conf_errors *errs);

/* The same from len bytes in memory; name stands for the path in errors
 * and in c->path. buf needs no NUL and is not kept. */
struct config *config_load_buffer(const char *name, const char *buf, size_t len,
                                  struct conf_errors *errs);
void config_free(struct config *c);                 /* NULL is fine */
void conf_errors_free(struct conf_errors *errs);

/* The ring a pool's servers describe (a new reference). */
struct ring *conf_pool_ring(const struct conf_pool *p, char *err, size_t errlen);

const struct conf_pool *config_pool(const struct config *c, const char *name);

/* "host:port", "[ipv6]:port" or "/unix/path" into a (0), or -1 with a
 * reason in why. Never does DNS. */
int conf_addr_parse(const char *s, struct conf_addr *a, const char **why);
void conf_addr_free(struct conf_addr *a);

/* Do two pools describe the same ring (servers, weights, hash, compat)? */
bool conf_pool_same_ring(const struct conf_pool *a, const struct conf_pool *b);

/*
 * Each setting of pool p in effect, as fn(arg, name, value), in the order
 * of the file's keys (`stats settings`): index and migration keys as
 * "index:redis", "servers" as a count; keys without a value (an unset
 * hash_tag, a pool without an index) are left out, and the index password
 * is never shown.
 */
typedef void conf_setting_fn(void *arg, const char *name, const char *value);
void conf_pool_settings(const struct conf_pool *p, conf_setting_fn *fn, void *arg);

#endif
