/*
 * nstats.h — nutcracker's stats port: on connect, one JSON object with
 * nutcracker's field names (top level, per pool, per server), then close.
 * Existing twemproxy monitoring (Datadog's and collectd's twemproxy checks,
 * scripts reading `nc host 22222`) reads it unchanged. Each field's source
 * among ringproxy's counters is one table in nstats.c; `-D` prints it
 * (docs/ARCHITECTURE.md, "Observability").
 *
 * Ownership: the nstats owns its listener and the connections it is
 * writing to; it borrows the worker (its pools and backends), which must
 * outlive it.
 */
#ifndef RP_NSTATS_H
#define RP_NSTATS_H

#include <stddef.h>
#include <stdio.h>

struct worker;
struct nstats;

/*
 * Listen on addr:port on w's event loop. Returns NULL with the reason in
 * err when it cannot; port 0 means disabled: NULL with err set to "".
 */
struct nstats *nstats_start(struct worker *w, const char *addr, int port, char *err,
                            size_t errlen);
/* Close the port and every connection still being written. NULL is fine. */
void nstats_free(struct nstats *s);

/* The fields and where each value comes from, nutcracker's -D layout. */
void nstats_describe(FILE *out);

#endif
