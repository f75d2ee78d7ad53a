/* meta.h — memcached's meta protocol (mg, ms, md, ma, mn, me) as a client
 * speaks it: request line parsing, the line a backend is sent, and the
 * classification of a backend's meta reply line.
 *
 * Pure functions, as in proto.h: no I/O, no allocation, no global state. The
 * caller finds a line (the bytes before "\r\n" or "\n", terminator excluded);
 * every pointer a parser returns points into that line, into the caller's
 * key buffer (the decoded key of a base64 request), or at a static string,
 * and is valid as long as they are. Value data never passes through here:
 * for an ms the caller moves the next `datalen` + 2 bytes itself.
 *
 * Requests are judged exactly as memcached 1.6.18 judges them, quirks
 * included (the notes at the top of meta.c; tests/integration/test_meta.py
 * checks the verdicts against a real memcached, line by line).
 *
 * Served to clients by client.c (client_meta), the replies checked by
 * backend.c (bconn_meta): docs/ARCHITECTURE.md, "Meta protocol (for
 * clients)". mconn.c classifies its replies with meta_parse_reply() too.
 */
#ifndef RINGPROXY_META_H
#define RINGPROXY_META_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define META_KEY_MAX      250   /* longest key token (encoded, for b) */
#define META_KEYBUF_SIZE  188   /* a decoded base64 key: at most 248 / 4 * 3 */
#define META_OPAQUE_MAX   32    /* longest O token, the 'O' included */
#define META_FLAGS_MAX    17    /* most flag tokens memcached accepts (mg,
                                   md, ma; ms: 16, its length is a token) */

/* ---- Requests ---------------------------------------------------------- */

#define META_CMD_LIST(X)                                                     \
    X(NONE, "none") X(MG, "mg") X(MS, "ms") X(MD, "md") X(MA, "ma")          \
    X(MN, "mn") X(ME, "me")

enum meta_cmd {
#define META_CMD_ENUM(id, name) META_CMD_##id,
    META_CMD_LIST(META_CMD_ENUM)
#undef META_CMD_ENUM
    META_CMD_COUNT
};

extern const char *const meta_cmd_name[META_CMD_COUNT];

/* Reply kinds, of a backend's meta reply line (meta_parse_reply) and of the
 * quiet-mode table (meta_quiet_drops). */
#define META_RSP_LIST(X)                                                     \
    X(HD, "HD") X(VA, "VA") X(EN, "EN") X(NF, "NF") X(NS, "NS")              \
    X(EX, "EX") X(MN, "MN") X(ME, "ME") X(ERROR, "ERROR")                    \
    X(CLIENT_ERROR, "CLIENT_ERROR") X(SERVER_ERROR, "SERVER_ERROR")

enum meta_rsp_kind {
#define META_RSP_ENUM(id, name) META_RSP_##id,
    META_RSP_LIST(META_RSP_ENUM)
#undef META_RSP_ENUM
    META_RSP_COUNT
};

extern const char *const meta_rsp_name[META_RSP_COUNT];

#define META_RSP_BIT(kind) (1u << META_RSP_##kind)

/* One flag token as the client sent it: its letter and the rest of it
 * ("O123" is 'O' with arg "123"; "v" is 'v' with an empty arg). */
struct meta_flag {
    char letter;
    const char *arg;
    uint32_t arg_len;
};

struct meta_req {
    enum meta_cmd cmd;
    const char *key; uint32_t keylen;   /* the key token as sent (base64 for
                                           b); NULL for mn */
    const uint8_t *hkey; uint32_t hkeylen; /* the key's bytes, what memcached
                                           stores and the ring hashes: key, or
                                           the decoded key in the caller's
                                           buffer when b is given */
    bool base64;                        /* b (me: a third token "b") */
    int64_t datalen;                    /* ms: value length without "\r\n",
                                           0 .. INT32_MAX-2; -1 otherwise. Also
                                           on META_ERR, see swallow */
    bool swallow;                       /* on META_ERR (ms only): memcached
                                           reads datalen + 2 bytes after the
                                           line and drops them. False: the
                                           next bytes are the next command */
    bool quiet;                         /* q */
    uint32_t quiet_drops;               /* reply kinds q suppresses for this
                                           command (meta_quiet_drops) */
    char mode;                          /* M's letter (ms, ma); 0 if none */
    bool vivify;                        /* N (mg, ma): creates on a miss */
    bool invalidate;                    /* I */
    bool has_cas;                       /* C */
    uint64_t cas;                       /* C's token, as memcached reads it */
    const char *opaque; uint32_t opaque_len; /* O's argument; NULL if none */
    bool ret_key;                       /* k */
    struct meta_flag flags[META_FLAGS_MAX]; /* every flag token, in order */
    uint32_t nflags;
    const char *error;                  /* on META_ERR: the reply line to send,
                                           without "\r\n" (static string);
                                           memcached sends it even under q */
};

enum meta_status { META_OK = 0, META_ERR = -1, META_NOT_META = 1 };

/*
 * Parse one request line into *req (fully overwritten, unless the answer is
 * META_NOT_META: then untouched). keybuf holds
 * META_KEYBUF_SIZE bytes, for the decoded key of a b request.
 *
 * META_OK: a meta command memcached would run (it may still answer an error
 * that depends on the item: a non-numeric ma, a value too large...).
 * META_ERR: req->error is memcached's answer; for ms, req->swallow and
 * req->datalen say whether the data block is still read (and dropped).
 * META_NOT_META: the line is not a meta command ("mg" must be the first
 * token, exactly two bytes: "m" + g, s, d, a, n, e); proto_parse_request()
 * judges it. A NUL byte ends the line, as in memcached.
 */
int meta_parse_request(const char *line, size_t len, struct meta_req *req,
                       uint8_t keybuf[META_KEYBUF_SIZE]);

/*
 * The reply kinds q suppresses, memcached 1.6.18's table: mg its EN (a miss;
 * a hit's HD stays); ms and md their HD; ma its HD or VA (a success), but not
 * when the ma created the item (N on a miss): vivified says so. NF, NS, EX
 * and every error are always sent; mn and me ignore q.
 */
uint32_t meta_quiet_drops(enum meta_cmd cmd, bool vivified);

/* Is a data block (datalen + 2 bytes) well formed? memcached answers
 * META_ERR_BAD_CHUNK when it does not end with "\r\n" (even under q) and
 * reads the next command right after those datalen + 2 bytes. */
bool meta_data_ok(const char *block, int64_t datalen);
extern const char META_ERR_BAD_CHUNK[];

/*
 * The line a backend is sent for a parsed request: the command, the key
 * token as sent (still base64: the backend decodes it), ms's length as
 * memcached read it, then every flag token as sent, single spaces. Nothing
 * is rewritten: q, O and k must reach the backend so that its answer is
 * memcached's own (see docs/ARCHITECTURE.md, "Meta protocol (for
 * clients)"). me keeps only its b. Written to buf without "\r\n" and
 * NUL-terminated; returns its length, or 0 for mn (not sent to backends)
 * or a buffer too small. The line is never longer than the client's: its
 * length plus one byte always suffices.
 */
size_t meta_format_request(const struct meta_req *req, char *buf, size_t cap);

/* ---- Replies from a backend ------------------------------------------- */

struct meta_rsp {
    enum meta_rsp_kind kind;
    uint64_t vlen;                      /* VA: value length; UINT64_MAX when
                                           the digits overflow */
    const char *flags; size_t flags_len; /* the rest of the line after the
                                           code (and VA's length); for ME the
                                           key and its fields; for the errors
                                           the message. NULL if none */
};

enum meta_reply_rc {
    META_REPLY_OK = 0,
    META_REPLY_UNKNOWN = -1,            /* not a meta reply word */
    META_REPLY_NO_LENGTH = -2,          /* "VA" without a length */
    META_REPLY_BAD_LENGTH = -3,         /* VA's length is not a number */
};

/* Classify one reply line (no "\r\n"). A code is its two letters (or
 * ERROR, CLIENT_ERROR, SERVER_ERROR), alone or followed by a space. The
 * line's bytes are not otherwise judged: mconn.c refuses control bytes. */
enum meta_reply_rc meta_parse_reply(const char *line, size_t len,
                                    struct meta_rsp *rsp);

/*
 * Copy a reply's return flags (meta_rsp's flags: tokens separated by single
 * spaces, each led by its flag's letter) into out without the tokens whose
 * letter is in `drop` (a NUL-terminated set): move.c (meta_keep) removes so
 * the return flags it added to a client's mg line to judge its answer. Every
 * other byte stays as the server wrote it. out holds len bytes (it may not
 * overlap flags); returns its length.
 */
size_t meta_drop_flags(const char *flags, size_t len, const char *drop, char *out);

#endif /* RINGPROXY_META_H */
