/*
 * resolve.h — host names to addresses without blocking the loop.
 *
 * A resolver is libevent's evdns on one event base: it asks the name
 * servers of a resolv.conf-style file (RINGPROXY_RESOLV_CONF, else
 * /etc/resolv.conf; its /etc/hosts entries too) over UDP, and every
 * request ends within its own timeout. docs/ARCHITECTURE.md, "Addresses
 * and names", says who resolves what and when.
 *
 * Ownership: the worker owns its resolver (proxy.c creates and frees it).
 * A request belongs to the resolver; its starter holds the handle only
 * until the callback runs or it calls resolve_cancel, whichever is first.
 * The callback always runs from the loop, never inside resolve_start, so a
 * starter may start a request from any callback, its own included.
 */
#ifndef RP_RESOLVE_H
#define RP_RESOLVE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

struct event_base;
struct evdns_base;
struct resolver;
struct resolve_req;

#define RESOLVE_TIMEOUT_MS 5000     /* a request's default bound */

/*
 * A resolver on base reading conf_path (NULL: RINGPROXY_RESOLV_CONF if set,
 * else /etc/resolv.conf). A file given (conf_path or the variable) that
 * cannot be read is an error (NULL, err says why); /etc/resolv.conf missing
 * is only logged, and evdns asks a name server on 127.0.0.1.
 */
struct resolver *resolver_new(struct event_base *base, const char *conf_path,
                              char *err, size_t errlen);
/*
 * Shutting down: every request still running is cancelled (its callback
 * never runs; its handle stays valid for resolve_cancel), and the loop is
 * run without waiting until evdns lets go of them, since evdns frees a
 * cancelled request only from the loop. Call it while everything the
 * loop's events reach is still alive (proxy_free does so first).
 */
void resolver_quiesce(struct resolver *r);
/* Free the resolver and every request left (their callbacks never run).
 * Without resolver_quiesce first, evdns's side of a request still running
 * leaks. NULL is fine. */
void resolver_free(struct resolver *r);
/* The evdns base, for libevent calls that take one (mconn's bufferevent). */
struct evdns_base *resolver_evdns(struct resolver *r);

/*
 * The result: sa (len bytes, port set) and err NULL, or sa NULL and err
 * saying why ("no such name (NXDOMAIN)", "timed out": resolve_strerror).
 */
typedef void (*resolve_cb)(void *arg, const struct sockaddr *sa, socklen_t len,
                           const char *err);

/*
 * Resolve host (a name; a numeric address is answered too) for port,
 * within timeout_ms (0: RESOLVE_TIMEOUT_MS). The first IPv4 address is
 * used, else the first IPv6 one. Returns the handle, or NULL when out of
 * memory (cb will not run).
 */
struct resolve_req *resolve_start(struct resolver *r, const char *host, uint16_t port,
                                  uint32_t timeout_ms, resolve_cb cb, void *arg);
/* The callback will not run; the request's memory is freed when evdns lets
 * go of it. q must be a handle whose callback has not run (after
 * resolver_quiesce is fine). */
void resolve_cancel(struct resolve_req *q);

/*
 * host as a numeric IPv4 or IPv6 address (no brackets) with port into ss:
 * returns its length, or 0 if host is not numeric. Never does DNS.
 */
socklen_t resolve_numeric(const char *host, uint16_t port, struct sockaddr_storage *ss);

/* An evdns/getaddrinfo result code (EVUTIL_EAI_*) in words. */
const char *resolve_strerror(int rc);

/*
 * Resolve a's host name now, blocking, on a private loop and within
 * timeout_ms (0: RESOLVE_TIMEOUT_MS), and put the address (as numeric text)
 * in a->host in its place; a->text keeps what the file says. Nothing to do
 * for a numeric address or a unix path. 0, or -1 with err ("cannot resolve
 * NAME: why"). Off the serving loop only: startup, the reload thread (a
 * Redis address: docs/ARCHITECTURE.md, "Addresses and names").
 */
struct conf_addr;
int resolve_pin(struct conf_addr *a, uint32_t timeout_ms, char *err, size_t errlen);

/* Requests alive (started, or cancelled and not yet let go by evdns). */
unsigned resolver_pending(const struct resolver *r);

#endif
