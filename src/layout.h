/* layout.h — how the index is laid out in Redis: the compact layout's sets,
 * its one Lua script and the pure rules the script follows
 * (docs/ARCHITECTURE.md, "The index", "Layout 2"). */
#ifndef RP_LAYOUT_H
#define RP_LAYOUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct redisReply;
struct redisContext;

/* Redis's defaults, used when CONFIG GET is refused. */
#define LAY_ENTRIES_DEFAULT 128         /* zset-max-listpack-entries */
#define LAY_VALUE_DEFAULT 64            /* zset-max-listpack-value */
#define LAY_ENTRIES_MIN 8               /* smaller sets would cost more names than keys */
#define LAY_ENTRIES_MAX 1024            /* a listpack's writes grow with its size */
#define LAY_VALUE_MAX 250               /* a memcached key's longest */
#define LAY_SHA_SIZE 41                 /* 40 hex digits and a NUL */
#define LAY_HEAD 7                      /* EVALSHA sha 1 ring op entries value */
#define LAY_SCORE_MAX 4294967295u

/*
 * I-L2 (docs/ARCHITECTURE.md, "Layout 2"): a key of score s is in its
 * v-node's base, or in the sub-set or the long-key list of a sub-range
 * whose low is <= s and is in the directory. Lows leave a directory only with the v-node (clear, once
 * no ring has it). A writer picks from a cached directory, which may lack
 * the latest splits: the key may then sit below the sub-set covering it (a
 * stray). Readers of [a, z] read every sub-set of low <= z; the sweeper's
 * scan files strays where they belong.
 */

/*
 * LAY_LONG_KEYS: a key longer than the value threshold would turn its
 * sub-set into a skiplist (~100 bytes a member over the key). It goes in
 * its sub-range's list <base>:l<low> instead, as the entry "<score> <key>"
 * (decimal score, then a space: read up to the first one): a quicklist of
 * listpacks, about key length + 13 bytes an entry. A list does not
 * dedupe: the writer's plain RPUSH may add a twin of an entry (the script's
 * add looks first, LPOS). Twins are harmless: readers answer one (range
 * sorts and drops equal pairs), a removal takes all (LREM 0), and a split
 * or a sweeper's scan writes the list anew without them. A sub-range's
 * size, which its split follows, is its sub-set's and its list's
 * together; a split moves the list's entries of score >= the new low too,
 * so a list stays about under the entries threshold and LPOS, LREM and a
 * reader's LRANGE go through at most about that many.
 */

/* The writer asks for a split once it believes a sub-set holds
 * LAY_SPLIT_ASK(entries) keys; the script splits at LAY_SPLIT_MIN of them. */
#define LAY_SPLIT_MIN(entries) ((entries) / 2)
#define LAY_SPLIT_ASK(entries) ((entries) - (entries) / 5)

/* A writer uses a v-node's cached directory (and layout) for at most this
 * long (index.c); whoever changes the layout waits this long before relying
 * on every writer following it (rebuild_cli.c, convert_layout). */
#define LAY_DIR_TTL_MS 4000

/* The thresholds a layout-2 set must stay within to keep its listpack. */
struct lay_limits {
    uint32_t entries;       /* members per sub-set, at most */
    uint32_t value;         /* longer keys go in their sub-range's list */
    bool from_redis;        /* read by CONFIG GET (else Redis's defaults) */
};

/* Redis's defaults. */
void lay_limits_default(struct lay_limits *l);

/* The thresholds from a CONFIG GET zset-max-* reply (name, value, ...),
 * clamped to [LAY_ENTRIES_MIN, LAY_ENTRIES_MAX] and [0, LAY_VALUE_MAX];
 * false (l unchanged) when the reply is an error or lacks them. */
bool lay_limits_parse(struct lay_limits *l, const struct redisReply *r);

/* What the caller's connection asks: CONFIG GET LAY_CONFIG_PATTERN. */
#define LAY_CONFIG_PATTERN "zset-max-*"

/*
 * The index script: KEYS[1] is <prefix>:ring, ARGV[1] the operation,
 * ARGV[2] and ARGV[3] the thresholds (lay_head fills these); the layout
 * the writes follow is the record's `layout` field, read by the script
 * itself, so a proxy that has not synced yet still writes where everyone
 * reads. Readers always read both layouts. Operations and their
 * arguments after ARGV[3] (a "base" is a v-node's set name,
 * idx_vnode_key):
 *   add     (base n (score member)*n)*  -> members added
 *   rem     (base n (score member)*n)*  -> members removed; score -1 when
 *                                          unknown (the sub-sets are then
 *                                          not looked at)
 *   range   base lo hi limit            -> member, score, ... sorted by score
 *                                          then member (ZRANGEBYSCORE's form)
 *   scan    base cursor count           -> {next cursor or "0", member, score...}
 *                                          (ZSCAN's form; converts what it
 *                                          lists from layout 1 under layout 2)
 *   score   base hash member            -> the member's score or nil
 *   card    base                        -> {entries, sets} (lists too)
 *   sample  base n                      -> about n random member, score, ... of
 *                                          its sets, each in proportion to its size
 *   sets    base                        -> names of the v-node's sets and lists
 *                                          that exist
 *   clear   base*                       -> sets deleted
 *   empty   base*                       -> the same, the directories kept (a
 *                                          flush: writers may still hold their
 *                                          lows, invariant I-L2)
 *   dir     base                        -> {layout, low, size, low, size...}:
 *                                          what a writer caches (creates low 0);
 *                                          size: sub-set and list together
 *   split   base low                    -> {layout, low, size[, new low, size]}
 *                                          after splitting the sub-range at its
 *                                          median if it holds LAY_SPLIT_MIN or
 *                                          more (and writing it anew if it had
 *                                          passed the threshold); dir's answer
 *                                          when low is not in the directory
 *   convert base limit                  -> entries moved from layout 1 (layout 2 only)
 *   layout  [version]                   -> the layout in force (set first if given
 *                                          and a ring is recorded)
 */
extern const char lay_script[];
/* The script's functions alone, for scripts of other modules (sweep.c):
 * they need locals R (the ring record's name), LIM and VMAX defined first. */
extern const char lay_lib[];

/* SHA-1 of lay_script in hex, for EVALSHA (computed once). */
const char *lay_sha(void);
/* SHA-1 of any bytes, in hex (what Redis names a script by). */
void lay_sha1_hex(const void *data, size_t len, char out[LAY_SHA_SIZE]);

/*
 * The first LAY_HEAD arguments of an index script call: EVALSHA, the sha,
 * 1, ring (the caller's "<prefix>:ring"), op and the thresholds (written
 * into nums). lens may be NULL. Returns LAY_HEAD.
 */
int lay_head(const char **argv, size_t *lens, const char *ring, const char *op,
             const struct lay_limits *l, char nums[2][12]);

/* SCRIPT LOAD of lay_script, as argv (3 strings). Every connection that
 * sends EVALSHA sends it first; the pipeline keeps the order. */
void lay_load_argv(const char **argv, size_t *lens);

/* A blocking connection (the command line): load the script. 0 or -1. */
int lay_load_sync(struct redisContext *c, char *err, size_t errlen);

/* Is this error reply Redis's "the script is not loaded"? */
bool lay_noscript(const char *msg);

/*
 * The rules the script follows, for the C side (index check) and the
 * tests. A v-node's sub-sets are named by their low score; lows[0..n) is
 * its directory, sorted ascending. The sub-set of `score` is the one with
 * the greatest low <= score (index into lows), or -1 when none (the first
 * write creates the sub-set of low 0).
 */
int lay_pick(const uint32_t *lows, size_t n, uint32_t score);

/*
 * Where a full sub-set of low `low` splits: its scores[0..n) sorted
 * ascending. The upper part (scores >= *at) moves to a new sub-set of low
 * *at: the median, or the first score above `low` when the lower half
 * all scores `low`. false when every score is `low` (it cannot split).
 */
bool lay_split_at(const uint32_t *scores, size_t n, uint32_t low, uint32_t *at);

/* Is name[0..len) a long-key list of the v-node whose base is `base`
 * (<base>:l<low>, LAY_LONG_KEYS)? */
bool lay_is_list(const char *base, const char *name, size_t len);

/* The layout a ring record's `layout` field names: 1 when absent. */
int lay_version(const char *field);

#endif
