/*
 * metadump.h — list every key a memcached holds, with
 * `lru_crawler metadump all` (memcached >= 1.4.31), on the event loop.
 *
 * The index rebuild, the sweeper's completeness check and the migration's
 * closing pass read backends this way (docs/ARCHITECTURE.md, "The index").
 * The backend is not trusted: every line is bounded and parsed by
 * mdump_parse, which tests/fuzz/fuzz_metadump.c fuzzes.
 */
#ifndef RP_METADUMP_H
#define RP_METADUMP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct evdns_base;
struct mdump;

#define MDUMP_LINE_MAX 2048     /* a dump line; a 250-byte key encodes to 750 */
#define MDUMP_KEY_MAX 250       /* memcached's longest key, decoded */

/* How a dump ended. */
#define MDUMP_END_CODEC(X)                                                     \
    X(DONE, "done")         /* END: every key was listed */                   \
    X(BUSY, "busy")         /* the server's crawler runs another job: retry */ \
    X(REFUSED, "refused")   /* the server cannot dump (too old, disabled) */  \
    X(FAILED, "failed")     /* connection, timeout or a reply not understood */

#define MDUMP_END_ENUM(e, name) MDUMP_##e,
enum mdump_end { MDUMP_END_CODEC(MDUMP_END_ENUM) MDUMP_END_COUNT };
#undef MDUMP_END_ENUM
extern const char *const mdump_end_names[MDUMP_END_COUNT];

/* One key as the dump describes it. */
struct mdump_item {
    const char *key;            /* decoded; valid for the callback only */
    size_t len;                 /* 1..MDUMP_KEY_MAX */
    int64_t exp;                /* unix time it expires, -1 never */
    uint64_t cas;
    uint32_t size;              /* bytes memcached uses for the item */
};

/*
 * Called for each key, in the order the server lists them. The callback may
 * call mdump_pause (no further key is delivered until mdump_resume) but
 * must not free the dump.
 */
typedef void (*mdump_key_cb)(void *arg, const struct mdump_item *it);
/*
 * Called once, from its own event (never from inside a key callback), when
 * the dump ended; `why` says what the server or the connection said. The
 * callback may free the dump.
 */
typedef void (*mdump_end_cb)(void *arg, enum mdump_end how, const char *why);

/*
 * Start dumping host:port (or the unix socket `host`). timeout_ms bounds
 * the connection and any silence of the server while not paused (0: 5000).
 * A host name is resolved with dns on the loop (the worker's resolver,
 * resolve.h), or with a blocking getaddrinfo when dns is NULL (the CLIs).
 * NULL when out of memory or the address cannot be resolved.
 */
struct mdump *mdump_start(struct event_base *base, struct evdns_base *dns,
                          const char *host, uint16_t port,
                          bool is_unix, uint32_t timeout_ms, mdump_key_cb on_key,
                          mdump_end_cb on_end, void *arg);
void mdump_pause(struct mdump *d);
void mdump_resume(struct mdump *d);
bool mdump_paused(const struct mdump *d);
uint64_t mdump_keys(const struct mdump *d);     /* keys delivered so far */
uint64_t mdump_skipped(const struct mdump *d);  /* keys not usable (PARSE_SKIP) */
void mdump_free(struct mdump *d);               /* NULL is fine; no callback follows */

enum mdump_parse_rc {
    MDUMP_PARSE_ERROR = -1,     /* not a line a memcached sends */
    MDUMP_PARSE_MORE = 0,       /* incomplete: wait for more bytes */
    MDUMP_PARSE_ITEM = 1,       /* a key: *it */
    MDUMP_PARSE_END = 2,        /* the dump ended: *end says how */
    MDUMP_PARSE_SKIP = 3,       /* a well-formed line whose key no text-protocol
                                   command can name (binary-protocol keys may
                                   hold spaces): skipped, counted */
};

/*
 * Parse the line at the start of buf[0..len) (no socket involved).
 * ITEM: *it describes the key, it->key points into keybuf (at least
 *       MDUMP_KEY_MAX bytes); *used is the line's length.
 * END:  *end is DONE (END), BUSY (BUSY ...) or REFUSED (ERROR,
 *       CLIENT_ERROR ..., SERVER_ERROR ...); *why points at the line
 *       (why_len bytes) for the log.
 * SKIP: the key does not decode to 1..250 bytes without spaces or control
 *       bytes; *why says so, *used is the line's length.
 * ERROR: *why is a constant string saying what is wrong: a line over
 *       MDUMP_LINE_MAX, a control character, a field out of range.
 */
enum mdump_parse_rc mdump_parse(const char *buf, size_t len, struct mdump_item *it,
                                char *keybuf, enum mdump_end *end, const char **why,
                                size_t *why_len, size_t *used);

#endif
