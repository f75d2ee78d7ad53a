/* proto.h — memcached text protocol: request and reply line parsing.
 *
 * Pure functions: no I/O, no allocation, no global state. The caller finds a
 * line (the bytes before "\r\n" or "\n", terminator excluded) and passes it
 * in; every pointer a parser returns points into that line (or, for
 * proto_req.error, at a static string) and is valid as long as the line is.
 * Value data never passes through here: for a storage command the caller
 * moves the next `bytes` + 2 bytes itself.
 *
 * Requests are judged exactly as memcached 1.6.18 judges them, quirks
 * included (see the notes at the top of proto.c and
 * tests/integration/test_proto_memcached.py, which checks the same lines
 * against a real memcached).
 */
#ifndef RINGPROXY_PROTO_H
#define RINGPROXY_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PROTO_KEY_MAX   250     /* longest key memcached accepts */
#define PROTO_LINE_MAX  2048    /* see proto_line_may_grow() */

/* ---- Requests ---------------------------------------------------------- */

#define PROTO_CMD_LIST(X)                                                    \
    X(NONE, "none") X(GET, "get") X(GETS, "gets") X(GAT, "gat")              \
    X(GATS, "gats") X(SET, "set") X(ADD, "add") X(REPLACE, "replace")        \
    X(APPEND, "append") X(PREPEND, "prepend") X(CAS, "cas")                  \
    X(DELETE, "delete") X(INCR, "incr") X(DECR, "decr") X(TOUCH, "touch")    \
    X(FLUSH_ALL, "flush_all") X(VERSION, "version")                          \
    X(VERBOSITY, "verbosity") X(STATS, "stats") X(QUIT, "quit")

enum proto_cmd {
#define PROTO_CMD_ENUM(id, name) PROTO_CMD_##id,
    PROTO_CMD_LIST(PROTO_CMD_ENUM)
#undef PROTO_CMD_ENUM
    PROTO_CMD_COUNT
};

/* The command's wire name ("get", "flush_all", ...); [PROTO_CMD_NONE] is "none". */
extern const char *const proto_cmd_name[PROTO_CMD_COUNT];

struct proto_req {
    enum proto_cmd cmd;
    const char *key; uint32_t keylen;   /* first (or only) key; NULL if none */
    const char *keys; size_t keys_len;  /* every keyed command: span holding all
                                           keys (one for set, delete, ...),
                                           already validated */
    uint32_t nkeys;                     /* 0 only for "gat <exptime>" alone,
                                           which memcached answers "END" */
    uint32_t flags; int64_t exptime;    /* storage; exptime also touch, gat */
    int64_t bytes;                      /* storage: value length, without \r\n,
                                           0 .. INT32_MAX-2; the size limit is
                                           the caller's to check */
    uint64_t cas;                       /* cas */
    uint64_t delta;                     /* incr, decr */
    int64_t delay; bool has_delay;      /* flush_all [delay] */
    uint32_t level;                     /* verbosity <level> */
    bool noreply;                       /* also on PROTO_ERR: memcached sends
                                           no error reply either */
    const char *args; size_t args_len;  /* stats, verbosity: rest of the line */
    const char *error;                  /* on PROTO_ERR: the reply line to send,
                                           without \r\n (static string) */
    bool close;                         /* on PROTO_ERR: memcached would close
                                           the connection without a reply (an
                                           HTTP request line) */
};

enum proto_status { PROTO_OK = 0, PROTO_ERR = -1 };

/* set, add, replace, append, prepend, cas: a data block follows the line. */
static inline bool proto_cmd_is_storage(enum proto_cmd cmd)
{
    return cmd >= PROTO_CMD_SET && cmd <= PROTO_CMD_CAS;
}

/* Parse one request line into *req (fully overwritten). Returns PROTO_OK, or
 * PROTO_ERR with req->error, req->noreply and req->close saying what memcached
 * would answer. A NUL byte ends the line, as in memcached. After PROTO_ERR on
 * a storage command the data block is NOT consumed: memcached reads it as the
 * next command line. Commands memcached has but a proxy cannot route (meta
 * commands, slabs, lru_crawler, watch, ...) answer "ERROR". */
int proto_parse_request(const char *line, size_t len, struct proto_req *req);

/* Walk the keys of a parsed request, in order; yields exactly req->nkeys keys.
 * The iterator points into the request's line. */
struct proto_key_iter { const char *p, *end; };
void proto_keys_begin(const struct proto_req *req, struct proto_key_iter *it);
bool proto_keys_next(struct proto_key_iter *it, const char **key,
                     uint32_t *keylen);

/* The line a backend is sent for a parsed request, rebuilt from its fields
 * (memcached's own reading of them: 32-bit fields already truncated), so no
 * client spacing, hold time or noreply reaches a backend: the proxy reads
 * every answer. For get/gets/gat/gats only the head ("get", "gat <exptime>"):
 * the caller appends " <key>" for each key. Written to buf without "\r\n"
 * and NUL-terminated; returns its length, or 0 for a command that is not
 * sent to backends. PROTO_FORMAT_MAX bytes always suffice. */
#define PROTO_FORMAT_MAX (PROTO_KEY_MAX + 96)

/*
 * Can s[0..len) be put in a command line as a memcached key? memcached's
 * own rule: 1..250 bytes, no space or control byte. Index members come
 * from Redis, which anyone with access can write, and go into meta command
 * lines: a member with a space, CR or LF would add arguments or commands.
 * The mover, the sweeper, the closing pass and `index check` all ask here.
 */
bool proto_key_ok(const char *s, size_t len);
size_t proto_format_request(const struct proto_req *req, char *buf, size_t cap);

/* memcached closes a connection whose unfinished line (no "\n" yet) exceeds
 * PROTO_LINE_MAX bytes, unless it is a get/gets, which may be any length.
 * buf/len: the unfinished line so far. True if it may keep growing. */
bool proto_line_may_grow(const char *buf, size_t len);

/* Numbers as memcached's util.c reads a token (p, len): safe_strtoull (a
 * '-' rejects only results with the top bit set), safe_strtoul on LP64
 * (the same, truncated to 32 bits) and safe_strtol (int64 range, truncated
 * to 32 bits). Leading white space and a sign are accepted, trailing bytes
 * other than white space are not. The text parser here and the meta parser
 * (meta.c) both read numbers this way. */
bool proto_strtoull(const char *p, size_t len, uint64_t *out);
bool proto_strtoul32(const char *p, size_t len, uint32_t *out);
bool proto_strtol32(const char *p, size_t len, int32_t *out);

/* ---- Replies from a backend ------------------------------------------- */

#define PROTO_RSP_LIST(X)                                                    \
    X(VALUE, "VALUE") X(END, "END") X(STORED, "STORED")                      \
    X(NOT_STORED, "NOT_STORED") X(EXISTS, "EXISTS")                          \
    X(NOT_FOUND, "NOT_FOUND") X(DELETED, "DELETED") X(TOUCHED, "TOUCHED")    \
    X(NUMBER, "NUMBER") X(OK, "OK") X(VERSION, "VERSION") X(STAT, "STAT")    \
    X(ERROR, "ERROR") X(CLIENT_ERROR, "CLIENT_ERROR")                        \
    X(SERVER_ERROR, "SERVER_ERROR")

enum proto_rsp_kind {
#define PROTO_RSP_ENUM(id, name) PROTO_RSP_##id,
    PROTO_RSP_LIST(PROTO_RSP_ENUM)
#undef PROTO_RSP_ENUM
    PROTO_RSP_COUNT
};

/* The reply's first word ("VALUE", "NOT_FOUND", ...); NUMBER is "NUMBER". */
extern const char *const proto_rsp_name[PROTO_RSP_COUNT];

struct proto_rsp {
    enum proto_rsp_kind kind;
    const char *key; uint32_t keylen;   /* VALUE: key; STAT: stat name */
    uint32_t flags;                     /* VALUE */
    int64_t bytes;                      /* VALUE: data length, without \r\n */
    uint64_t cas; bool has_cas;         /* VALUE from gets/gats */
    uint64_t number;                    /* NUMBER: incr/decr result */
    const char *text; size_t text_len;  /* VERSION: version; STAT: value;
                                           *ERROR: message (may be empty) */
};

/* Parse one backend reply line into *rsp (fully overwritten). Strict about
 * shape (the words and single spaces memcached prints; numbers are plain
 * digits, leading zeros allowed); anything else is PROTO_ERR, a protocol
 * error on that backend connection. */
int proto_parse_reply(const char *line, size_t len, struct proto_rsp *rsp);

/* Is this parsed reply one memcached sends to this command? get and gat:
 * VALUE without a CAS, END; gets and gats: VALUE with one, END; storage:
 * STORED, NOT_STORED, EXISTS, NOT_FOUND; delete: DELETED, NOT_FOUND;
 * incr/decr: a number, NOT_FOUND; touch: TOUCHED, NOT_FOUND; flush_all and
 * verbosity: OK; version: VERSION; stats: STAT, END. ERROR, CLIENT_ERROR and
 * SERVER_ERROR fit any command but quit. Whether a VALUE names a key asked
 * for, and its length, are the caller's to judge. */
bool proto_reply_fits(enum proto_cmd cmd, const struct proto_rsp *rsp);

#endif /* RINGPROXY_PROTO_H */
