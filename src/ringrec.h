/* ringrec.h — the ring record in Redis: write it, read it, fingerprint it. */
#ifndef RP_RINGREC_H
#define RP_RINGREC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ring.h"

#define RINGREC_FIELDS 6        /* epoch compat hash hash_tag points servers */
#define RINGREC_FP_SIZE 33      /* 32 hex digits and a NUL */

/* What ringrec_parse accepts of a record (it comes from Redis: untrusted). */
#define RINGREC_MAX_SERVERS 4096
#define RINGREC_STR_MAX 255             /* bytes of an identity or address */
#define RINGREC_WEIGHT_MAX (UINT32_MAX / 2) /* as the config (src/config.c) */

/*
 * The record of ring r at `epoch` as field/value strings for HSET, in
 * fields[0..n). Returns n (2 * RINGREC_FIELDS) or -1 (out of memory). The strings are
 * malloc'd: free them with ringrec_fields_free.
 */
int ringrec_fields(const struct ring *r, uint64_t epoch, char **fields);
void ringrec_fields_free(char **fields, int n);

/*
 * A ring from field/value strings (as HGETALL returns them); sets *epoch.
 * Returns a new ring, or NULL when the record is incomplete or malformed:
 * compat, hash and servers missing or unknown; a field twice; epoch or points
 * not a decimal number; hash_tag neither empty nor 2 bytes; servers not a JSON
 * array of 1..RINGREC_MAX_SERVERS objects with exactly the keys identity and
 * addr (non-empty strings of at most RINGREC_STR_MAX bytes, none twice) and
 * weight (1..RINGREC_WEIGHT_MAX), with nothing after it. Fields not named
 * here are ignored. *epoch is only set when a ring is returned.
 */
struct ring *ringrec_parse(const char *const *kv, size_t n_kv, uint64_t *epoch);

/* Does the record (field/value strings) describe ring r? The epoch is not
 * compared; a malformed record does not match. */
bool ringrec_matches(const char *const *kv, size_t n_kv, const struct ring *r);

/* md5 (hex) of the record without its epoch: equal for equal rings. */
void ringrec_fingerprint(const struct ring *r, char out[RINGREC_FP_SIZE]);

#endif
