/*
 * progress.h — a pool's migration progress, described once
 * (docs/ARCHITECTURE.md, "Observability"): every field, its type, and its
 * name in each view that shows it. `stats` (mig_stats), the progress the
 * lease holder writes into <prefix>:migration (migrate.c write_progress),
 * /migration and /metrics (admin.c) and `ringproxy status` (status_cli.c)
 * all walk MIG_PROGRESS_CODEC; mig_progress (migrate.c) fills the values.
 * Adding a field: a line here, a line in mig_progress.
 */
#ifndef RP_PROGRESS_H
#define RP_PROGRESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "migrate.h"

struct json_w;
struct json_doc;

/*
 * X(member, type, stat, stat_none, hash, json, metric, help)
 *   member     of struct mig_progress
 *   type       COUNTER, GAUGE (uint64_t), ORDINAL (uint64_t, 0 = not known:
 *              null in JSON), FLAG (bool: 0/1, true/false), REAL (double,
 *              not finite = not known), STR (text), STATE (enum mig_state)
 *   stat       `STAT migration:<stat>`; stat_none: its value when the text
 *              is empty (STR only)
 *   hash       field of <prefix>:migration the lease holder writes
 *   json       member of a pool's /migration object (read by `ringproxy status`)
 *   metric     ringproxy_migration_<metric>[_total] (COUNTER adds _total;
 *              STATE is one 0/1 gauge per state name)
 * "" where a view does not show the field. The names are what operators and
 * tests read: one field has two where two views always spelled it
 * differently (blocked: "blocked" in Redis, "blocked_by" in JSON; arcs_total
 * is the metric "arcs"; keys_per_sec and elapsed_sec are "keys_per_second"
 * and "elapsed_seconds" in /metrics). The order is /migration's.
 */
#define MIG_PROGRESS_CODEC(X)                                                  \
    X(state, STATE, "state", "", "", "state", "state",                         \
      "1 for the pool's migration state (idle: the data obeys the pool's ring)") \
    X(epoch, ORDINAL, "epoch", "", "", "epoch", "epoch",                       \
      "epoch of the ring the pool's data obeys")                               \
    X(lease, FLAG, "lease", "", "", "lease", "lease",                          \
      "1 while this proxy holds the migration lease")                         \
    X(pending, FLAG, "pending_change", "", "", "pending_change", "pending_change", \
      "1 while a newer ring waits for the running migration to end")          \
    X(from, STR, "", "", "", "from", "",                                       \
      "fingerprint of the ring the data obeys (leaves it in a migration)")    \
    X(to, STR, "", "", "", "to", "",                                           \
      "fingerprint of the ring a running migration moves the data to")        \
    X(moved_fraction, REAL, "", "", "", "moved_fraction", "moved_fraction",    \
      "fraction of the hash space changing server in the running migration")  \
    X(arcs_total, GAUGE, "arcs_total", "", "arcs_total", "arcs_total", "arcs", \
      "arcs changing owner in the running migration")                         \
    X(arcs_done, GAUGE, "arcs_done", "", "arcs_done", "arcs_done", "arcs_done", \
      "arcs finished in the running migration")                               \
    X(keys_moved, COUNTER, "keys_moved", "", "keys_moved", "keys_moved", "keys_moved", \
      "keys copied to their new owner (from zero at each migration's start)") \
    X(keys_skipped, COUNTER, "keys_skipped", "", "keys_skipped", "keys_skipped", \
      "keys_skipped", "keys not copied: the new owner had a newer write")      \
    X(keys_stale, COUNTER, "keys_stale", "", "keys_stale", "keys_stale", "keys_stale", \
      "index entries of keys gone from their old owner, dropped")             \
    X(keys_failed, COUNTER, "keys_failed", "", "keys_failed", "keys_failed",   \
      "keys_failed", "keys that could not be moved")                           \
    X(keys_retried, COUNTER, "keys_retried", "", "", "keys_retried", "keys_retried", \
      "moves retried because a client changed the key meanwhile")             \
    X(client_ops, COUNTER, "client_commands", "", "", "client_commands",       \
      "client_commands", "client commands on changing keys served by the migration's rules") \
    X(index_moved, COUNTER, "index_moved", "", "", "index_moved", "index_moved", \
      "index entries moved to their new v-node (with a key, or alone)")       \
    X(keys_per_sec, REAL, "", "", "", "keys_per_sec", "keys_per_second",       \
      "keys moved per second over the last progress interval")                \
    X(closing_sources, GAUGE, "closing_sources", "", "closing_sources",        \
      "closing_sources", "closing_sources",                                    \
      "source servers the closing pass lists for keys the index lacks")       \
    X(closing_sources_done, GAUGE, "closing_sources_done", "", "closing_sources_done", \
      "closing_sources_done", "closing_sources_done",                          \
      "source servers whose closing pass is done")                            \
    X(closing_listed, COUNTER, "closing_listed", "", "closing_listed",         \
      "closing_listed", "closing_listed", "keys the closing pass listed in arcs that move") \
    X(unindexed_moved, COUNTER, "unindexed_moved", "", "unindexed_moved",      \
      "unindexed_moved", "unindexed_moved",                                    \
      "keys the index did not know, moved by the closing pass")               \
    X(closing_refused, COUNTER, "closing_refused", "", "closing_refused",      \
      "closing_refused", "closing_refused",                                    \
      "source servers that refused to list their keys (lru_crawler metadump)") \
    X(elapsed_sec, REAL, "", "", "", "elapsed_sec", "elapsed_seconds",         \
      "seconds since the running migration began")                            \
    X(eta_sec, REAL, "", "", "", "eta_sec", "",                                \
      "seconds left at the pace so far (prog_eta_sec)")                       \
    X(fleet_phase, STR, "phase", "none", "", "phase", "",                      \
      "the migration record's phase: prepared, switched, moving")             \
    X(waiting, STR, "waiting_for", "-", "", "waiting_for", "",                 \
      "proxies the fleet waits for")                                          \
    X(blocked, STR, "", "", "blocked", "blocked_by", "",                       \
      "a server whose moves fail, holding the migration up")                  \
    X(live_proxies, GAUGE, "live_proxies", "", "", "live_proxies", "live_proxies", \
      "live proxies sharing the pool's prefix (heartbeats in Redis)")         \
    X(fenced, FLAG, "fenced", "", "", "fenced", "fenced",                      \
      "1 while this proxy refuses the pool's commands: Redis unreachable")    \
    X(tombs_written, COUNTER, "tombstones_written", "", "", "", "tombstones_written", \
      "deletes that left a tombstone on the old owner while keys move")       \
    X(tombs_cleared, COUNTER, "tombstones_cleared", "", "", "", "tombstones_cleared", \
      "tombstones removed by the mover")                                      \
    X(tombs_swept, COUNTER, "tombstones_swept", "", "", "", "tombstones_swept", \
      "tombstones this proxy noted, removed by it once the new ring was recorded") \
    X(tombs_left, COUNTER, "tombstones_left", "", "", "", "tombstones_left",  \
      "tombstones this proxy wrote and did not remove at the end (they expire in a day)") \
    X(tombs_handed, COUNTER, "tombstones_handed", "", "", "", "tombstones_handed", \
      "notes of tombstones this proxy wrote, handed to the fleet in Redis")   \
    X(tombs_taken, COUNTER, "tombstones_taken", "", "", "", "tombstones_taken", \
      "tombstone notes other proxies wrote, taken from Redis by this one to sweep") \
    X(fallback_reads, COUNTER, "fallback_reads", "", "", "", "fallback_reads", \
      "reads of changing keys answered by the new owner")                     \
    X(copies_in_doubt, GAUGE, "copies_in_doubt", "", "copies_in_doubt",       \
      "copies_in_doubt", "copies_in_doubt",                                   \
      "moved copies whose store got no answer, settled before the end")       \
    X(conflicts_waiting, GAUGE, "conflicts_waiting", "", "", "", "conflicts_waiting", \
      "keys with a value on both owners, waiting to be settled")              \
    X(conflicts_settled, COUNTER, "conflicts_settled", "", "", "", "conflicts_settled", \
      "keys with a value on both owners settled for the old owner's")         \
    X(bad_members, COUNTER, "bad_index_members", "", "", "", "",               \
      "index members skipped: not a memcached key")

#define PROG_STR_SIZE 256

enum prog_type { PROG_COUNTER, PROG_GAUGE, PROG_ORDINAL, PROG_FLAG, PROG_REAL,
                 PROG_STR, PROG_STATE };

#define PROG_CTYPE_COUNTER uint64_t
#define PROG_CTYPE_GAUGE uint64_t
#define PROG_CTYPE_ORDINAL uint64_t
#define PROG_CTYPE_FLAG bool
#define PROG_CTYPE_REAL double
#define PROG_CTYPE_STR char
#define PROG_CTYPE_STATE enum mig_state
#define PROG_DIM_COUNTER
#define PROG_DIM_GAUGE
#define PROG_DIM_ORDINAL
#define PROG_DIM_FLAG
#define PROG_DIM_REAL
#define PROG_DIM_STR [PROG_STR_SIZE]
#define PROG_DIM_STATE

/* A snapshot of where the pool's data stands (mig_progress). */
#define PROG_MEMBER(member, type, ...) PROG_CTYPE_##type member PROG_DIM_##type;
struct mig_progress {
    MIG_PROGRESS_CODEC(PROG_MEMBER)
};
#undef PROG_MEMBER

#define PROG_ENUM(member, ...) PROG_F_##member,
enum prog_field { MIG_PROGRESS_CODEC(PROG_ENUM) PROG_COUNT };
#undef PROG_ENUM

struct prog_desc {
    const char *member, *stat, *stat_none, *hash, *json, *metric, *help;
    enum prog_type type;
    size_t off;
};
extern const struct prog_desc prog_desc[PROG_COUNT];

/* Field f as a number (STATE: its index; STR: 0). */
double prog_number(const struct mig_progress *pr, int f);
/* Field f as `stats` and the Redis hash show it, into buf: numbers in
 * decimal, FLAG 0/1, STATE its name, STR its text (stat_none is the
 * caller's). Returns buf. */
const char *prog_text(const struct mig_progress *pr, int f, char *buf, size_t len);
/* Set field f from such a text (what `ringproxy status` reads in Redis):
 * numbers as strtod reads them (anything else is 0), STR cut to size. */
void prog_set_text(struct mig_progress *pr, int f, const char *text);
/* Append field f's JSON value; set it from a parsed one (false: the value is
 * not of the field's type, the field is left as it was). */
void prog_json(const struct mig_progress *pr, int f, struct json_w *w);
bool prog_set_json(struct mig_progress *pr, int f, const struct json_doc *d, uint32_t node);

/* Seconds left at the pace so far (the arcs done over the time taken), or
 * NAN until it can be told: no migration (to ""), no arc done, no time. */
double prog_eta_sec(const struct mig_progress *pr);

#endif
