/* hash.h — key hash functions, each bit-compatible with a named peer. */
#ifndef RP_HASH_H
#define RP_HASH_H

#include <stddef.h>
#include <stdint.h>

/*
 * X(enum suffix, config name, function). The config names are twemproxy's.
 * Every function returns the 32-bit value a key is placed by on the ring.
 */
#define HASH_CODEC(X)                                 \
    X(MD5,           "md5",           hash_md5)       \
    X(CRC16,         "crc16",         hash_crc16)     \
    X(CRC32,         "crc32",         hash_crc32)     \
    X(CRC32A,        "crc32a",        hash_crc32a)    \
    X(FNV1_64,       "fnv1_64",       hash_fnv1_64)   \
    X(FNV1A_64,      "fnv1a_64",      hash_fnv1a_64)  \
    X(FNV1_32,       "fnv1_32",       hash_fnv1_32)   \
    X(FNV1A_32,      "fnv1a_32",      hash_fnv1a_32)  \
    X(ONE_AT_A_TIME, "one_at_a_time", hash_one_at_a_time) \
    X(MURMUR,        "murmur",        hash_murmur)    \
    X(JENKINS,       "jenkins",       hash_jenkins)   \
    X(HSIEH,         "hsieh",         hash_hsieh)

#define HASH_ENUM(e, name, fn) HASH_##e,
enum hash_kind { HASH_CODEC(HASH_ENUM) HASH_COUNT };
#undef HASH_ENUM

typedef uint32_t (*hash_fn)(const char *key, size_t len);

#define HASH_PROTO(e, name, fn) uint32_t fn(const char *key, size_t len);
HASH_CODEC(HASH_PROTO)
#undef HASH_PROTO

extern const char *const hash_names[HASH_COUNT];
extern const hash_fn hash_fns[HASH_COUNT];

/* Look a hash up by its config name; returns -1 when unknown. */
int hash_by_name(const char *name);

/* The 16-byte MD5 digest of buf (libmd; one block: hash.c, md5_one_block). */
void hash_md5_digest(const void *buf, size_t len, uint8_t digest[16]);
/* The same through libmd's MD5Init/Update/Final: the path past one block,
 * and test_hash's reference for the one-block path. */
void hash_md5_digest_libmd(const void *buf, size_t len, uint8_t digest[16]);

/* Four ring points from one digest, as libketama and libmemcached read them. */
static inline uint32_t hash_digest_point(const uint8_t d[16], unsigned h)
{
    return (uint32_t)d[3 + 4 * h] << 24 | (uint32_t)d[2 + 4 * h] << 16 |
           (uint32_t)d[1 + 4 * h] << 8 | (uint32_t)d[4 * h];
}

/*
 * twemproxy's hash_tag: when tag[0] occurs in the key and tag[1] after it with
 * at least one byte between, only those bytes are hashed. Narrows key and len.
 */
void hash_apply_tag(const char tag[2], const char **key, size_t *len);

#endif
