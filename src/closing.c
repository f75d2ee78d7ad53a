/*
 * closing.c — the migration's closing pass: the keys the index never knew.
 *
 * The index holds what the proxies stored. Keys written around them (by
 * another client, before the pool had an index, after Redis lost its data)
 * are in no v-node set, so the index passes never list them. Once every
 * changed arc has been moved twice, the coordinator lists each source (a
 * server of the old ring that owns a moving arc) with `lru_crawler metadump
 * all` (metadump.c), and moves every key that lies in one of that source's
 * moving arcs with the index passes' own steps, rate and in-flight bound
 * (move.c). The rules are docs/ARCHITECTURE.md, "Moving keys" and
 * invariant I5.
 *
 * Design notes
 * - Flow control: a listing is paused while the mover is at its in-flight
 *   bound or out of rate tokens; the pump resumes it once a quarter of the
 *   bound is free again, not at every freed slot.
 * - A listed key may have been moved, written or deleted since: the move is
 *   conditional end to end and finds it gone, newer, or a tombstone.
 * - A source is done when a listing reached its END, every move it started
 *   ended without failing or waiting, and it found nothing to move. A
 *   listing is not a snapshot: memcached's crawler skips an item it cannot
 *   lock at that instant (one our own moves, or a client, is touching), so
 *   a listing that found keys to move is followed by another, up to
 *   MIG_CLOSING_LISTINGS. A listing that failed, a crawler busy with
 *   another job, or moves that failed make the source wait for a pause that
 *   doubles up to MIG_ARC_RETRY_MAX_MS, then it is listed again, for as
 *   long as it takes, and m->blocked names it. A server that refuses to
 *   list (its crawler or dumping disabled) is logged, counted and skipped:
 *   waiting would never end.
 * - A listing is freed only from its own end callback, from the tick or
 *   with the migration, never from a key callback: a move that fails at
 *   once re-enters the pump from there.
 * - Without the lease (or out of the fleet's `moving` phase) every listing
 *   stops; whoever leads next runs the closing pass from the start (moves
 *   are idempotent).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "log.h"
#include "metadump.h"
#include "migrate_int.h"
#include "resolve.h"

/* May one more move start now? `resume`: is there room enough to resume a
 * paused listing (a quarter of the bound free)? */
static bool has_room(const struct mig *m, bool resume)
{
    uint32_t limit = inflight_limit(m);

    if (m->p->conf->migration.rate > 0 && m->tokens < 1) {
        return false;
    }
    return resume ? m->inflight + limit / 4 < limit : m->inflight < limit;
}

static const char *server_name(const struct mig_source *s)
{
    return s->m->from->servers[s->server].identity;
}

/* Why source s is held up, for status, /migration and /healthz. */
static void source_blocked(struct mig_source *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void source_blocked(struct mig_source *s, const char *fmt, ...)
{
    struct mig *m = s->m;
    char what[80];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    snprintf(s->why, sizeof(s->why), "server %s (%s): %s", server_name(s),
             m->from_be[s->server]->addr.text, what);
    snprintf(m->blocked, sizeof(m->blocked), "%s", s->why);
}

/* Source s can be listed: m->blocked no longer gives its failure. */
static void source_unblocked(struct mig_source *s)
{
    struct mig *m = s->m;

    if (s->why[0] != '\0' && strcmp(m->blocked, s->why) == 0) {
        m->blocked[0] = '\0';
    }
    s->why[0] = '\0';
}

/* Another listing of s after a pause that doubles up to the arcs' bound. */
static void retry_later(struct mig_source *s)
{
    s->listed = false;
    s->failed = 0;
    s->backoff_ms = s->backoff_ms ? s->backoff_ms * 2 : MIG_ARC_RETRY_MIN_MS;
    if (s->backoff_ms > MIG_ARC_RETRY_MAX_MS) {
        s->backoff_ms = MIG_ARC_RETRY_MAX_MS;
    }
    s->retry_at = now_ms(s->m) + s->backoff_ms;
}

/* A key the source lists: moved if it lies in one of the source's moving arcs. */
static void on_dump_key(void *arg, const struct mdump_item *it)
{
    struct mig_source *s = arg;
    struct mig *m = s->m;

    if (!proto_key_ok(it->key, it->len)) {
        return;         /* metadump.c checked it; a command line is at stake */
    }
    int32_t i = arc_of(m, ring_key_hash(m->from, it->key, it->len));
    if (i < 0) {
        return;         /* its owner and v-node stay */
    }
    const struct ring_arc *arc = &m->diff.arcs[i];
    if (!arc->moves || m->from->points[arc->from].server != s->server) {
        return;         /* same server, or a copy on a server that never owned it */
    }
    s->listed_keys++;
    m->closing_listed++;
    if (!bulk_move(m, (uint32_t)i, s, it->key, it->len)) {
        s->failed++;    /* listed again */
    }
    if (s->dump != NULL && !has_room(m, false)) {
        mdump_pause(s->dump);   /* the pump resumes it */
    }
}

static void on_dump_end(void *arg, enum mdump_end how, const char *why)
{
    struct mig_source *s = arg;
    struct mig *m = s->m;
    const char *name = server_name(s);
    uint64_t secs10 = (now_ms(m) - s->started_ms) / 100;

    switch (how) {
    case MDUMP_DONE:
        s->listed = true;
        source_unblocked(s);
        log_notice("migration", "%s: closing pass: server %s listed %llu keys in "
                   "%llu.%llu s (listing %u), %llu of them in arcs it hands over; "
                   "%llu skipped (keys no text command can name)",
                   m->p->name, name, (unsigned long long)mdump_keys(s->dump),
                   (unsigned long long)secs10 / 10, (unsigned long long)secs10 % 10,
                   s->rounds, (unsigned long long)s->listed_keys,
                   (unsigned long long)mdump_skipped(s->dump));
        break;
    case MDUMP_REFUSED:
        s->refused = true;
        m->sources_done++;
        m->closing_refused++;
        source_unblocked(s);
        log_error("migration", "%s: closing pass: server %s (%s) refuses to list its "
                  "keys (\"%s\"): skipped; keys on it that the index does not know "
                  "will miss after this resize (docs/ARCHITECTURE.md, \"Known limits\")",
                  m->p->name, name, m->from_be[s->server]->addr.text, why);
        break;
    case MDUMP_BUSY:
    case MDUMP_FAILED:
    default:
        if (s->why[0] == '\0') {
            log_warn("migration", "%s: closing pass: cannot list server %s (%s): %s; "
                     "trying again until it can", m->p->name, name,
                     mdump_end_names[how], why);
        }
        if (how == MDUMP_BUSY) {
            source_blocked(s, "its LRU crawler is busy with another job");
        } else {
            source_blocked(s, "cannot list its keys: %.50s", why);
        }
        retry_later(s);
        break;
    }
    mdump_free(s->dump);        /* allowed in the end callback */
    s->dump = NULL;
    bulk_pump(m);
}

static void start_listing(struct mig_source *s)
{
    struct mig *m = s->m;
    const struct backend *be = m->from_be[s->server];

    s->rounds++;
    s->listed_keys = 0;
    s->started_ms = now_ms(m);
    s->dump = mdump_start(m->p->w->base,
                         m->p->w->dns != NULL ? resolver_evdns(m->p->w->dns) : NULL,
                         be->addr.host, be->addr.port, be->addr.is_unix,
                          op_timeout_ms(m->p), on_dump_key, on_dump_end, s);
    if (s->dump == NULL) {
        source_blocked(s, "cannot start listing its keys (out of memory?)");
        retry_later(s);
    }
}

bool closing_begin(struct mig *m)
{
    uint32_t n = m->from->nservers, count = 0;
    bool *owns = calloc(n ? n : 1, sizeof(*owns));
    char names[160] = "";
    size_t used = 0;

    if (owns == NULL) {
        return false;       /* the next pump tries again */
    }
    for (size_t i = 0; i < m->diff.narcs; i++) {
        if (m->diff.arcs[i].moves) {
            owns[m->from->points[m->diff.arcs[i].from].server] = true;
        }
    }
    for (uint32_t i = 0; i < n; i++) {
        count += owns[i];
    }
    m->sources = calloc(count ? count : 1, sizeof(*m->sources));
    if (m->sources == NULL) {
        free(owns);
        return false;
    }
    for (uint32_t i = 0; i < n; i++) {
        if (!owns[i]) {
            continue;
        }
        m->sources[m->nsources++] = (struct mig_source){ .m = m, .server = i };
        if (used + 64 < sizeof(names)) {
            used += (size_t)snprintf(names + used, sizeof(names) - used, "%s%s",
                                     used ? ", " : "", m->from->servers[i].identity);
        } else if (used + 4 < sizeof(names) && names[used - 1] != '.') {
            used += (size_t)snprintf(names + used, sizeof(names) - used, "...");
        }
    }
    free(owns);
    m->sources_done = 0;
    m->pass = MIG_PASS_CLOSING;
    log_notice("migration", "%s: every arc moved twice; the closing pass lists %u "
               "source server%s (%s) for keys the index does not know", m->p->name,
               m->nsources, m->nsources == 1 ? "" : "s", m->nsources ? names : "none");
    return true;
}

bool closing_pump(struct mig *m)
{
    for (uint32_t j = 0; j < m->nsources; j++) {
        struct mig_source *s = &m->sources[j];
        if (s->done || s->refused) {
            continue;
        }
        if (s->dump != NULL) {
            if (mdump_paused(s->dump) && has_room(m, true)) {
                mdump_resume(s->dump);
            }
            continue;
        }
        if (s->listed) {
            if (s->inflight > 0) {
                continue;
            }
            if (s->failed > 0) {
                retry_later(s);     /* moves failed or wait: list it again */
            } else if (s->listed_keys > 0 && ++s->relists < MIG_CLOSING_LISTINGS) {
                s->listed = false;  /* it may have skipped some: list it again */
            } else {
                if (s->listed_keys > 0) {
                    log_warn("migration", "%s: closing pass: server %s still had %llu "
                             "keys to hand over at its listing %u (written around the "
                             "proxies meanwhile?); not listed again", m->p->name,
                             server_name(s), (unsigned long long)s->listed_keys,
                             s->rounds);
                }
                s->done = true;
                m->sources_done++;
                continue;
            }
        }
        if (now_ms(m) >= s->retry_at) {
            start_listing(s);
        }
    }
    /* A move elsewhere that succeeded may have cleared the name. */
    for (uint32_t j = 0; m->blocked[0] == '\0' && j < m->nsources; j++) {
        if (!m->sources[j].done && m->sources[j].why[0] != '\0') {
            snprintf(m->blocked, sizeof(m->blocked), "%s", m->sources[j].why);
        }
    }
    return m->sources_done == m->nsources;
}

/* Every listing stops; the sources start over. */
static void closing_reset(struct mig *m)
{
    for (uint32_t j = 0; j < m->nsources; j++) {
        struct mig_source *s = &m->sources[j];
        mdump_free(s->dump);
        *s = (struct mig_source){ .m = m, .server = s->server,
                                  .inflight = s->inflight };
    }
    m->sources_done = 0;
}

void closing_tick(struct mig *m)
{
    bool started = false, pending = false;

    if (m->pass != MIG_PASS_CLOSING || (m->lease && !m->fenced && !m->closing &&
                                        strcmp(m->fleet, "moving") == 0)) {
        return;
    }
    for (uint32_t j = 0; j < m->nsources; j++) {
        const struct mig_source *s = &m->sources[j];
        started |= s->rounds > 0;
        pending |= !s->done && !s->refused;
    }
    if (!started || !pending) {
        return;     /* not begun, or over: the migration ends */
    }
    closing_reset(m);
    log_notice("migration", "%s: closing pass stopped: this proxy does not lead the "
               "migration now; whoever leads it lists every source from the start",
               m->p->name);
}

void closing_result(struct mop *op, enum mop_result res)
{
    if (res == MOP_MOVED) {
        op->m->unindexed_moved++;
    } else if (res == MOP_FAILED || res == MOP_WAITING) {
        op->src->failed++;      /* its source is listed again */
    }
}

void closing_free(struct mig *m)
{
    for (uint32_t j = 0; m->sources != NULL && j < m->nsources; j++) {
        mdump_free(m->sources[j].dump);
    }
    free(m->sources);
    m->sources = NULL;
    m->nsources = m->sources_done = 0;
}
