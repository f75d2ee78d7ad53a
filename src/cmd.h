/*
 * cmd.h — one table of what the proxy does with each command.
 *
 * Every decision that depends on the command reads a column of cmd_table
 * instead of listing commands: how the client dispatches it (kind), which
 * stat counts it, what a success does to the Redis index, and how the
 * migration runs it on a key whose owner is changing (docs/ARCHITECTURE.md,
 * "Commands on a changing key"). Adding a command is one row here (and its
 * parsing in proto.c).
 *
 * Why a table of its own rather than columns of proto.h's PROTO_CMD_LIST:
 * proto.c is the pure, fuzzed parser and knows nothing of stats, the index
 * or the meta protocol; the columns below name enums of those layers. The
 * table is indexed by enum proto_cmd and checked complete by
 * tests/unit/test_request.c.
 */
#ifndef RP_CMD_H
#define RP_CMD_H

#include <stdbool.h>
#include <stdint.h>

#include "meta.h"
#include "proto.h"
#include "stats.h"

/* How a client command is served (client.c: client_dispatch). */
enum cmd_kind {
    CMD_KIND_NONE,              /* not a command (PROTO_CMD_NONE) */
    CMD_KIND_RETRIEVAL,         /* one or more keys, VALUE...END */
    CMD_KIND_STORAGE,           /* one key and a data block */
    CMD_KIND_KEYED,             /* one key, one reply line */
    CMD_KIND_FANOUT,            /* every backend, one summed-up reply */
    CMD_KIND_LOCAL,             /* answered by the proxy itself */
};

/* What a backend's success does to the pool's index (request.c). */
enum cmd_index {
    CMD_INDEX_NONE,
    CMD_INDEX_ADD,              /* STORED: the key is added to its v-node set */
    CMD_INDEX_FLUSH,            /* OK from every backend: the index empties */
};

/* The migration's rule for the command on a changing key (move.c). */
enum cmd_move {
    CMD_MOVE_NONE,              /* never routed to the migration */
    CMD_MOVE_READ,              /* old owner, then new, then old again */
    CMD_MOVE_SET,               /* write home, clear the other conditionally */
    CMD_MOVE_DELETE,            /* old (tombstone when switched), then new */
    CMD_MOVE_ADD,               /* refused if either holds a real value */
    CMD_MOVE_RMW,               /* where the value is, conditional on its CAS */
};

/* How the text reply of a CMD_MOVE_RMW command is made from a meta reply. */
enum cmd_answer {
    CMD_ANSWER_NONE,
    CMD_ANSWER_STORED,          /* HD STORED, EX EXISTS, NF NOT_FOUND, else NOT_STORED */
    CMD_ANSWER_NUMBER,          /* VA <number>, else NOT_FOUND */
    CMD_ANSWER_TOUCHED,         /* HD TOUCHED, else NOT_FOUND */
};

/* Arguments of a command's meta form, after "<verb> <key>" (move.c). */
#define CMD_META_LEN    0x01u   /* " <datalen>" and the data block (ms) */
#define CMD_META_FT     0x02u   /* " F<flags> T<exptime>" */
#define CMD_META_T      0x04u   /* " T<exptime>" */
#define CMD_META_DELTA  0x08u   /* " D<delta> v" (ma) */
#define CMD_META_CAS    0x10u   /* " C<the client's cas>" */

struct cmd_meta {
    const char *verb;           /* "ms", "ma", "mg"; NULL: none */
    uint8_t args;               /* CMD_META_* */
    const char *mode;           /* " MR", " MA", ...: mode flag, or "" */
    /* Made conditional on the old owner's CAS when run there. */
    bool cond;
    /* Meta statuses (bit 1 << MREPLY_x) that, from the old owner, mean
     * the key changed or left under the command: look again. */
    uint8_t retry_on;
};

struct cmd_info {
    enum cmd_kind kind;
    int stat;                   /* enum stat_pool counted per command (per key
                                   for a retrieval), or -1 */
    enum cmd_index index;
    enum cmd_move move;
    enum cmd_answer answer;
    bool with_cas;              /* VALUE lines carry the CAS (gets, gats) */
    bool touches;               /* reads also set the TTL (gat, gats) */
    bool unlinks_too_large;     /* a value over item_size_max deletes the old
                                   one (memcached does so for set only) */
    struct cmd_meta meta;       /* CMD_MOVE_RMW: the one meta command */
};

extern const struct cmd_info cmd_table[PROTO_CMD_COUNT];

static inline const struct cmd_info *cmd_info(enum proto_cmd cmd)
{
    return &cmd_table[cmd < PROTO_CMD_COUNT ? cmd : PROTO_CMD_NONE];
}

/*
 * The meta commands a client sends (meta.h), one row each, indexed by enum
 * meta_cmd. A table of its own because the meta commands are parsed by
 * meta.c, not proto.c, and are answered by meta replies (META_RSP_*), not
 * text ones (docs/ARCHITECTURE.md, "Meta protocol (for clients)").
 */
enum cmd_meta_kind {
    CMD_META_KIND_NONE,         /* not a command (META_CMD_NONE) */
    CMD_META_KIND_KEYED,        /* forwarded to the key's owner */
    CMD_META_KIND_LOCAL,        /* mn: answered by the proxy, in order */
};

struct cmd_meta_info {
    enum cmd_meta_kind kind;
    int stat;                   /* enum stat_pool of its text counterpart, or -1 */
    uint32_t replies;           /* META_RSP_BIT()s a backend may answer it
                                   (ERROR, CLIENT_ERROR, SERVER_ERROR: always) */
    /* Replies that mean the key was stored (index: CMD_INDEX_ADD); for mg
     * and ma only when the client gave N (the item may have been created). */
    uint32_t stores;
    bool stores_only_with_n;
};

extern const struct cmd_meta_info cmd_meta_table[META_CMD_COUNT];

static inline const struct cmd_meta_info *cmd_meta_info(enum meta_cmd cmd)
{
    return &cmd_meta_table[cmd < META_CMD_COUNT ? cmd : META_CMD_NONE];
}

#endif
