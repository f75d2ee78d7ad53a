/* cmd.c — the command table (cmd.h). */
#include "cmd.h"
#include "mconn.h"

#define RETRY(x) (uint8_t)(1u << MREPLY_##x)

const struct cmd_info cmd_table[PROTO_CMD_COUNT] = {
    [PROTO_CMD_NONE] = { .kind = CMD_KIND_NONE, .stat = -1 },
    [PROTO_CMD_GET] = { .kind = CMD_KIND_RETRIEVAL, .stat = STAT_cmd_get,
                        .move = CMD_MOVE_READ },
    [PROTO_CMD_GETS] = { .kind = CMD_KIND_RETRIEVAL, .stat = STAT_cmd_get,
                         .move = CMD_MOVE_READ, .with_cas = true },
    [PROTO_CMD_GAT] = { .kind = CMD_KIND_RETRIEVAL, .stat = STAT_cmd_get,
                        .move = CMD_MOVE_READ, .touches = true },
    [PROTO_CMD_GATS] = { .kind = CMD_KIND_RETRIEVAL, .stat = STAT_cmd_get,
                         .move = CMD_MOVE_READ, .with_cas = true, .touches = true },
    [PROTO_CMD_SET] = { .kind = CMD_KIND_STORAGE, .stat = STAT_cmd_set,
                        .index = CMD_INDEX_ADD, .move = CMD_MOVE_SET,
                        .unlinks_too_large = true },
    [PROTO_CMD_ADD] = { .kind = CMD_KIND_STORAGE, .stat = STAT_cmd_set,
                        .index = CMD_INDEX_ADD, .move = CMD_MOVE_ADD },
    [PROTO_CMD_REPLACE] = { .kind = CMD_KIND_STORAGE, .stat = STAT_cmd_set,
        .index = CMD_INDEX_ADD, .move = CMD_MOVE_RMW, .answer = CMD_ANSWER_STORED,
        .meta = { "ms", CMD_META_LEN | CMD_META_FT, " MR", true, RETRY(EX) | RETRY(NF) } },
    /* append/prepend of a key gone meanwhile (moved) answer NS, not NF */
    [PROTO_CMD_APPEND] = { .kind = CMD_KIND_STORAGE, .stat = STAT_cmd_set,
        .index = CMD_INDEX_ADD, .move = CMD_MOVE_RMW, .answer = CMD_ANSWER_STORED,
        .meta = { "ms", CMD_META_LEN, " MA", true, RETRY(EX) | RETRY(NF) | RETRY(NS) } },
    [PROTO_CMD_PREPEND] = { .kind = CMD_KIND_STORAGE, .stat = STAT_cmd_set,
        .index = CMD_INDEX_ADD, .move = CMD_MOVE_RMW, .answer = CMD_ANSWER_STORED,
        .meta = { "ms", CMD_META_LEN, " MP", true, RETRY(EX) | RETRY(NF) | RETRY(NS) } },
    /* cas carries its own condition; NF: moved or deleted meanwhile */
    [PROTO_CMD_CAS] = { .kind = CMD_KIND_STORAGE, .stat = STAT_cmd_set,
        .index = CMD_INDEX_ADD, .move = CMD_MOVE_RMW, .answer = CMD_ANSWER_STORED,
        .meta = { "ms", CMD_META_LEN | CMD_META_FT | CMD_META_CAS, "", false, RETRY(NF) } },
    [PROTO_CMD_DELETE] = { .kind = CMD_KIND_KEYED, .stat = STAT_cmd_delete,
                           .move = CMD_MOVE_DELETE },
    [PROTO_CMD_INCR] = { .kind = CMD_KIND_KEYED, .stat = STAT_cmd_incr_decr,
        .move = CMD_MOVE_RMW, .answer = CMD_ANSWER_NUMBER,
        .meta = { "ma", CMD_META_DELTA, "", true, RETRY(EX) | RETRY(NF) } },
    [PROTO_CMD_DECR] = { .kind = CMD_KIND_KEYED, .stat = STAT_cmd_incr_decr,
        .move = CMD_MOVE_RMW, .answer = CMD_ANSWER_NUMBER,
        .meta = { "ma", CMD_META_DELTA, " MD", true, RETRY(EX) | RETRY(NF) } },
    /* touch is unconditional; EN: moved or deleted meanwhile */
    [PROTO_CMD_TOUCH] = { .kind = CMD_KIND_KEYED, .stat = STAT_cmd_touch,
        .move = CMD_MOVE_RMW, .answer = CMD_ANSWER_TOUCHED,
        .meta = { "mg", CMD_META_T, "", false, RETRY(EN) } },
    [PROTO_CMD_FLUSH_ALL] = { .kind = CMD_KIND_FANOUT, .stat = STAT_cmd_flush,
                              .index = CMD_INDEX_FLUSH },
    [PROTO_CMD_VERSION] = { .kind = CMD_KIND_LOCAL, .stat = -1 },
    [PROTO_CMD_VERBOSITY] = { .kind = CMD_KIND_LOCAL, .stat = -1 },
    [PROTO_CMD_STATS] = { .kind = CMD_KIND_LOCAL, .stat = -1 },
    [PROTO_CMD_QUIT] = { .kind = CMD_KIND_LOCAL, .stat = -1 },
};

#define RSP(x) META_RSP_BIT(x)
#define RSP_ERRORS (RSP(ERROR) | RSP(CLIENT_ERROR) | RSP(SERVER_ERROR))

const struct cmd_meta_info cmd_meta_table[META_CMD_COUNT] = {
    [META_CMD_NONE] = { .kind = CMD_META_KIND_NONE, .stat = -1 },
    /* mg N on a miss creates the item and answers VA/HD with W (never EN) */
    [META_CMD_MG] = { .kind = CMD_META_KIND_KEYED, .stat = STAT_cmd_get,
        .replies = RSP(VA) | RSP(HD) | RSP(EN) | RSP_ERRORS,
        .stores = RSP(VA) | RSP(HD), .stores_only_with_n = true },
    [META_CMD_MS] = { .kind = CMD_META_KIND_KEYED, .stat = STAT_cmd_set,
        .replies = RSP(HD) | RSP(NS) | RSP(EX) | RSP(NF) | RSP_ERRORS,
        .stores = RSP(HD) },
    /* md leaves its index entry, as delete does (ARCHITECTURE.md, I7) */
    [META_CMD_MD] = { .kind = CMD_META_KIND_KEYED, .stat = STAT_cmd_delete,
        .replies = RSP(HD) | RSP(NF) | RSP(EX) | RSP_ERRORS },
    [META_CMD_MA] = { .kind = CMD_META_KIND_KEYED, .stat = STAT_cmd_incr_decr,
        .replies = RSP(VA) | RSP(HD) | RSP(NF) | RSP(NS) | RSP(EX) | RSP_ERRORS,
        .stores = RSP(VA) | RSP(HD), .stores_only_with_n = true },
    [META_CMD_MN] = { .kind = CMD_META_KIND_LOCAL, .stat = -1 },
    [META_CMD_ME] = { .kind = CMD_META_KIND_KEYED, .stat = -1,
        .replies = RSP(ME) | RSP(EN) | RSP_ERRORS },
};
