/* mconn.h — a meta-protocol connection to one memcached, for moving keys. */
#ifndef RP_MCONN_H
#define RP_MCONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct defer;
struct mconn;
struct evdns_base;
struct sockaddr_storage;

#define MREPLY_CODEC(X)                                 \
    X(VA, "VA")         /* a value follows */           \
    X(HD, "HD")         /* done, no value */            \
    X(EN, "EN")         /* miss */                      \
    X(NS, "NS")         /* not stored */                \
    X(EX, "EX")         /* CAS mismatch */              \
    X(NF, "NF")         /* not found */                 \
    X(FAIL, "FAIL")     /* error reply, or the connection failed */

#define MREPLY_ENUM(e, name) MREPLY_##e,
enum mreply_status { MREPLY_CODEC(MREPLY_ENUM) MREPLY_COUNT };
#undef MREPLY_ENUM
extern const char *const mreply_names[MREPLY_COUNT];

struct mreply {
    enum mreply_status status;
    const char *flags;          /* the reply's flags, e.g. "f0 t-1 c123" */
    size_t flags_len;
    const char *value;          /* VA: the value, without "\r\n" */
    size_t value_len;
    const char *error;          /* FAIL: the server's error line, or what
                                   went wrong with the connection */
};

/* Bounds on what a backend may send (see mconn_set_max_value). */
#define MCONN_LINE_MAX 2048                             /* a reply line, no CRLF */
#define MCONN_MAX_VALUE_DEFAULT ((size_t)(1 << 20) + 64 * 1024)
#define MCONN_MAX_VALUE_LIMIT ((size_t)1 << 30)         /* memcached's own -I limit */
/* An ordered socket kept past a timeout (mconn.c) is closed beyond these. */
#define MCONN_ABANDONED_MAX 4096                        /* timed-out commands */
#define MCONN_STALLED_OUT_MAX ((size_t)16 << 20)        /* bytes not yet sent */
#define MCONN_SILENT_MAX_MS 60000       /* no byte from the server (or 3 timeouts) */

/* Called once per command, in order; r and its pointers live for the call. */
typedef void (*mconn_cb)(void *arg, const struct mreply *r);

/* On defer's event base; defer frees it once closed (defer.h). */
struct mconn *mconn_new(struct defer *defer, const char *host, uint16_t port,
                        bool is_unix, uint32_t timeout_ms);
/* Close: pending callbacks get FAIL (now), later sends fail. May be called
 * from any callback, its own included: the memory is freed at the end of
 * the loop turn. NULL is fine. */
void mconn_free(struct mconn *c);

/* Resolve a host name with dns (the worker's resolver: resolve.h) on the
 * loop instead of blocking in getaddrinfo. */
void mconn_set_dns(struct mconn *c, struct evdns_base *dns);

/* A backend's socket address (a host name is resolved, blocking); 0, or
 * -1 with errno set. Other connections to backends (metadump.c) and the
 * CLIs use it too. */
int mconn_addr(const char *host, uint16_t port, bool is_unix,
               struct sockaddr_storage *ss, int *len);

/*
 * The longest value a VA reply may announce (the pool's item_size_max);
 * 0 restores MCONN_MAX_VALUE_DEFAULT, more than MCONN_MAX_VALUE_LIMIT is
 * clamped to it. A longer one fails the connection.
 */
void mconn_set_max_value(struct mconn *c, size_t bytes);

/* Queue "line\r\n" (and data + "\r\n" when data != NULL): 0, or -1 (closed,
 * out of memory, cannot connect) and cb will not be called. */
int mconn_send(struct mconn *c, const char *line, size_t len, const void *data,
               size_t data_len, mconn_cb cb, void *arg);
/*
 * Ordered (the mover's connections, before the first send): a timeout
 * fails the commands waiting but keeps the socket, so the commands sent
 * after them run after them (mconn_socket), and every command carries an
 * opaque its reply must echo (a line sent must hold no O flag of its own).
 */
void mconn_set_ordered(struct mconn *c);
/* The opaque (O<n>) of the last command sent on an ordered connection. */
uint32_t mconn_last_opaque(const struct mconn *c);
/*
 * What the server answered, after its timeout, to the ordered command sent
 * on socket `sock` (mconn_socket) with this opaque, whatever socket c has
 * now: false while unanswered, answered by an error line (which carries no
 * opaque to vouch for it), or no longer remembered (the last
 * MCONN_LATE_KEEP opaques' answers are). *cas: its c flag, 0 if none. The
 * mover tells its late copy from a client's write this way (move.c,
 * doubt_is_ours).
 */
#define MCONN_LATE_KEEP 4096
bool mconn_late_reply(const struct mconn *c, uint64_t sock, uint32_t opaque,
                      enum mreply_status *status, int64_t *cas);
/* Commands whose callback has not run (abandoned slots not counted). */
uint32_t mconn_pending(const struct mconn *c);
/* The current socket's id, unique in the process (0: none): commands sent
 * under one id run on one connection, in order, whatever their replies
 * (an ordered connection keeps its socket at a timeout: mconn.c). */
uint64_t mconn_socket(const struct mconn *c);

/* The value of flag `f` in a reply's flags (e.g. 'c' in "c123"); false if
 * absent or not a number that fits. Reads only flags[0..flags_len). */
bool mreply_flag(const struct mreply *r, char f, int64_t *value);

enum mreply_parse_rc {
    MREPLY_PARSE_ERROR = -1,    /* not what a memcached sends */
    MREPLY_PARSE_MORE = 0,      /* incomplete: wait for more bytes */
    MREPLY_PARSE_DONE = 1,      /* one reply */
};

/*
 * Parse the reply at the start of buf[0..len) (no socket involved; the
 * connection's read callback and tests/fuzz/fuzz_mreply.c call it).
 *
 * DONE: *r is the reply, its pointers into buf; *used is its length. A
 *       server's error line (ERROR, CLIENT_ERROR ..., SERVER_ERROR ...) is a
 *       reply with status FAIL, error NULL and flags/flags_len the whole line.
 * MORE: *used is how many bytes buf must hold before it can be parsed (more
 *       than len).
 * ERROR: r->status is FAIL and r->error a constant string saying what is
 *       wrong: a line over MCONN_LINE_MAX bytes, not ended by "\r\n", with a
 *       control character or an unknown reply; a VA length that is not a
 *       number or over max_value; a value not followed by "\r\n". The
 *       stream cannot be trusted after it.
 */
enum mreply_parse_rc mreply_parse(const char *buf, size_t len, size_t max_value,
                                  struct mreply *r, size_t *used);

#endif
