/*
 * tomb.h — the tombstone: the item a delete leaves on a changing key's old
 * owner while keys may be copied (docs/ARCHITECTURE.md, "Commands on a
 * changing key", invariant I4), recognised by its client flags and exact
 * value together. It is known outside the migration too: a get through the
 * proxy answers one left behind as a miss (request.c, frag_take_value),
 * whatever the phase.
 */
#ifndef RP_TOMB_H
#define RP_TOMB_H

#define TOMB_FLAGS 0x52505442u  /* "RPTB" */
#define TOMB_VALUE "ringproxy:tombstone:v1"
#define TOMB_VALUE_LEN (sizeof(TOMB_VALUE) - 1)
#define TOMB_TTL 86400

#endif
