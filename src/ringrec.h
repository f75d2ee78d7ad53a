/* ringrec.h — the ring record in Redis: write it, read it, fingerprint it. */
#ifndef RP_RINGREC_H
#define RP_RINGREC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ring.h"

#define RINGREC_FIELDS 6        /* epoch compat hash hash_tag points servers */
#define RINGREC_FP_SIZE 33      /* 32 hex digits and a NUL */

/*
 * The record of ring r at `epoch` as field/value strings for HSET, in
 * fields[0..n). Returns n (2 * RINGREC_FIELDS) or -ENOMEM. The strings are
 * malloc'd: free them with ringrec_fields_free.
 */
int ringrec_fields(const struct ring *r, uint64_t epoch, char **fields);
void ringrec_fields_free(char **fields, int n);

/* A ring from field/value strings (as HGETALL returns them); sets *epoch.
 * Returns a new ring, or NULL when the record is incomplete or malformed. */
struct ring *ringrec_parse(const char *const *kv, size_t n_kv, uint64_t *epoch);

/* Does the record (field/value strings) describe ring r? The epoch is not
 * compared; a malformed record does not match. */
bool ringrec_matches(const char *const *kv, size_t n_kv, const struct ring *r);

/* md5 (hex) of the record without its epoch: equal for equal rings. */
void ringrec_fingerprint(const struct ring *r, char out[RINGREC_FP_SIZE]);

#endif
