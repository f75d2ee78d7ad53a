/*
 * admin.h — the HTTP admin port on the worker's event loop:
 *   GET /metrics    Prometheus text format (ringproxy_* families)
 *   GET /healthz    200 "ok" when every pool serves, else 503 and why
 *   GET /ring       JSON: each pool's ring (?points=1: every point too)
 *   GET /migration  JSON: each pool's migration progress
 *   GET /, /status  the status page (status_page.h), drawn from
 *   GET /status.json  JSON: each pool's counters and servers, for the page
 */
#ifndef RP_ADMIN_H
#define RP_ADMIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct worker;
struct admin;

/* Counters the serving process owns; read on every scrape (NULL: omitted). */
struct admin_counters {
    const uint64_t *reloads;            /* reloads applied */
    const uint64_t *reload_failures;    /* reloads refused: invalid file */
};

/*
 * Listen on addr:port and answer on w's event loop. w and what counters
 * point to must outlive the admin. Returns NULL with a reason in err when
 * it cannot listen; port 0 means disabled: NULL with err set to "".
 */
struct admin *admin_start(struct worker *w, const struct admin_counters *counters,
                          const char *addr, int port, char *err, size_t errlen);
/* Stop accepting (a stopping proxy); open connections are still answered.
 * NULL is fine. */
void admin_unlisten(struct admin *a);
/* Close the port and every admin connection. NULL is fine. */
void admin_free(struct admin *a);

/*
 * Parsing of what a request sends (outside input; pure, for
 * tests/fuzz/fuzz_admin.c): the route a request target ("/ring?points=1",
 * as on the request line) asks for, an index into the route table, or -1;
 * and whether a query string sets flag `name` (1, true or yes).
 */
int admin_route_of(const char *target);
bool admin_query_flag(const char *query, const char *name);

#endif
