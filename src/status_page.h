/*
 * status_page.h — the admin port's status page (docs/ARCHITECTURE.md,
 * "Observability"): GET / serves src/status_page.html, one document with its
 * style and script inline, which reads GET /status.json (written here),
 * /migration and /healthz once a second and draws them.
 *
 * The page is kept in the tree as HTML and compiled in by the Makefile's
 * rule for $(BUILD)/gen/status_page_html.c: the bytes below are static,
 * owned by no one, never freed.
 */
#ifndef RP_STATUS_PAGE_H
#define RP_STATUS_PAGE_H

#include <stddef.h>

struct admin_counters;
struct json_w;
struct worker;

extern const unsigned char status_page_html[];  /* NUL after the last byte */
extern const size_t status_page_html_len;

/*
 * The Content-Security-Policy the page is served with, into buf: nothing
 * loads from anywhere, fetch() may reach this origin only, and the page's
 * one <script> and one <style> block run because their SHA-256 is named
 * (so no injected script or style would). Returns 0, or -1 when the page
 * lacks either block or buf is too small (the page is then not served).
 */
int status_page_csp(const unsigned char *page, size_t len, char *buf, size_t buflen);

/*
 * /status.json: the process, and for each pool the page shows (not one a
 * reload removed) its counters, its index health, and every backend with
 * its state, its counters and its share of the pool's ring. Counters are
 * totals under their stats.h names; the page computes rates from two
 * samples over uptime_ms. c may be NULL. Returns 0, or -1 when out of
 * memory (the writer's budget is the caller's: json_w_finish says).
 */
int status_page_json(struct json_w *j, struct worker *w, const struct admin_counters *c);

#endif
