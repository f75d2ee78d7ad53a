/*
 * proxy.c — the serving process: load the config, open the pools' listeners,
 * run the event loop, handle signals, stop gracefully.
 *
 * The loop runs one turn at a time (EVLOOP_ONCE) and flushes every
 * connection that produced output after each turn: requests that arrive
 * together leave together, in one write per connection.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <netinet/in.h>
#include <event2/listener.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "admin.h"
#include "backend.h"
#include "client.h"
#include "config.h"
#include "index.h"
#include "migrate.h"
#include "log.h"
#include "proxy.h"
#include "router.h"

#define TICK_MS 100
#define STOP_GRACE_MS 5000
#define TRIM_AFTER_BYTES (16u << 20)    /* client input freed before a trim */
#define ACCEPT_PAUSE_MIN_MS 100         /* out of descriptors: pause, doubling */
#define ACCEPT_PAUSE_MAX_MS 1000

/* Configs replaced by a reload, kept while a pool may still point into them. */
struct old_config {
    struct config *conf;
    struct old_config *next;
};

struct proxy {
    const struct proxy_options *opts;
    struct config *conf;
    struct old_config *old_configs;
    struct worker w;
    struct admin *admin;        /* NULL: no admin port */
    struct event *sig_hup, *sig_usr1, *sig_term, *sig_int;
    uint64_t stop_deadline;
    uint64_t reloads, reload_failures;
};

static void on_accept(struct evconnlistener *l, evutil_socket_t fd,
                      struct sockaddr *sa, int salen, void *arg)
{
    struct pool *p = arg;

    (void)l;
    p->accept_backoff_ms = 0;
    client_accept(p, fd, sa, salen);
}

static void on_accept_retry(evutil_socket_t fd, short what, void *arg)
{
    struct pool *p = arg;

    (void)fd, (void)what;
    if (p->listener != NULL && p->ready && !p->w->stopping) {
        evconnlistener_enable(p->listener);
    }
}

/*
 * Out of descriptors, accept(2) fails at once for as long as a connection
 * waits in the backlog: retrying on every loop turn spins the CPU and the
 * log. Pause the listener instead, 100 ms doubling to 1 s while it lasts;
 * the clients wait in the backlog meanwhile.
 */
static void on_accept_error(struct evconnlistener *l, void *arg)
{
    struct pool *p = arg;
    int err = EVUTIL_SOCKET_ERROR();

    if (err != EMFILE && err != ENFILE && err != ENOBUFS && err != ENOMEM) {
        log_limited(LOG_ERROR, 10, "proxy", "%s: accept failed: %s", p->name,
                    strerror(err));
        return;
    }
    p->accept_backoff_ms = p->accept_backoff_ms == 0 ? ACCEPT_PAUSE_MIN_MS :
                           p->accept_backoff_ms * 2;
    if (p->accept_backoff_ms > ACCEPT_PAUSE_MAX_MS) {
        p->accept_backoff_ms = ACCEPT_PAUSE_MAX_MS;
    }
    p->stats[STAT_accept_pauses]++;
    log_limited(LOG_WARN, 1, "proxy", "%s: accept failed: %s (%llu clients "
                "open); not accepting for %u ms", p->name, strerror(err),
                (unsigned long long)p->stats[STAT_curr_connections],
                p->accept_backoff_ms);
    struct timeval tv = { 0, (suseconds_t)p->accept_backoff_ms * 1000 };
    evconnlistener_disable(l);
    evtimer_add(p->accept_retry, &tv);
}

/* Open the pool's listener (disabled until the pool is ready). */
static int pool_listen(struct pool *p, char *err, size_t errlen)
{
    const struct conf_addr *a = &p->conf->listen;
    unsigned flags = LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE |
                     LEV_OPT_CLOSE_ON_EXEC | (p->ready ? 0 : LEV_OPT_DISABLED);
    struct sockaddr_storage ss;
    socklen_t len;

    if (p->accept_retry == NULL &&
        (p->accept_retry = evtimer_new(p->w->base, on_accept_retry, p)) == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    memset(&ss, 0, sizeof(ss));
    if (a->is_unix) {
        struct sockaddr_un *sun = (struct sockaddr_un *)&ss;
        sun->sun_family = AF_UNIX;
        snprintf(sun->sun_path, sizeof(sun->sun_path), "%s", a->host);
        unlink(a->host);
        len = sizeof(*sun);
    } else {
        char port[8];
        struct evutil_addrinfo hints = { .ai_family = AF_UNSPEC,
            .ai_socktype = SOCK_STREAM, .ai_flags = EVUTIL_AI_PASSIVE };
        struct evutil_addrinfo *res = NULL;
        snprintf(port, sizeof(port), "%u", a->port);
        if (evutil_getaddrinfo(a->host, port, &hints, &res) != 0 || res == NULL) {
            snprintf(err, errlen, "cannot resolve listen address %s", a->text);
            return -1;
        }
        len = (socklen_t)res->ai_addrlen;
        memcpy(&ss, res->ai_addr, len);
        evutil_freeaddrinfo(res);
    }
    p->listener = evconnlistener_new_bind(p->w->base, on_accept, p, flags,
                                          (int)p->conf->backlog,
                                          (struct sockaddr *)&ss, (int)len);
    if (p->listener == NULL) {
        snprintf(err, errlen, "cannot listen on %s: %s", a->text, strerror(errno));
        return -1;
    }
    evconnlistener_set_error_cb(p->listener, on_accept_error);
    return 0;
}

static void pool_unlisten(struct pool *p)
{
    if (p->listener != NULL) {
        evconnlistener_free(p->listener);
        p->listener = NULL;
        if (p->conf->listen.is_unix) {
            unlink(p->conf->listen.host);
        }
    }
    if (p->accept_retry != NULL) {
        event_free(p->accept_retry);
        p->accept_retry = NULL;
    }
}

/* Settings the file may hold that are legal but risky: say so at load. */
static void pool_conf_warn(const struct conf_pool *c)
{
    if (c->timeout <= 0) {
        log_warn("config", "%s: timeout %lld: a request to a server that stops "
                 "answering waits forever, and its client with it (the default "
                 "is 5000 ms)", c->name, (long long)c->timeout);
    }
}

static int proxy_add_pool(struct worker *w, struct conf_pool *conf, char *err,
                          size_t errlen)
{
    struct pool **pools = realloc(w->pools, (w->npools + 1) * sizeof(*pools));
    struct pool *p = calloc(1, sizeof(*p));

    if (pools == NULL || p == NULL) {
        free(p);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    w->pools = pools;
    if (pool_init(p, w, conf, err, errlen) != 0 || pool_listen(p, err, errlen) != 0) {
        pool_unlisten(p);
        pool_close(p);
        free(p);
        return -1;
    }
    w->pools[w->npools++] = p;
    pool_conf_warn(conf);
    log_notice("proxy", "pool %s: listening on %s, %u servers, %u ring points, "
               "hash %s, compat %s%s", p->name, p->conf->listen.text,
               p->ring->nservers, p->ring->npoints, hash_names[p->ring->hash],
               ring_compat_names[p->ring->compat],
               p->ready ? "" : " (serving once Redis says which ring the data obeys)");
    return 0;
}

/* Free pools a reload removed once their last client has gone. */
static void proxy_reap_pools(struct worker *w)
{
    for (uint32_t i = 0; i < w->npools;) {
        struct pool *p = w->pools[i];
        if (!p->closing || !TAILQ_EMPTY(&p->clients)) {
            i++;
            continue;
        }
        log_notice("proxy", "pool %s: removed", p->name);
        pool_close(p);
        free(p);
        w->pools[i] = w->pools[--w->npools];
    }
}

/* Write every connection's pending output; repeat while that makes more. */
static void worker_flush(struct worker *w)
{
    while (!TAILQ_EMPTY(&w->dirty_conns) || !TAILQ_EMPTY(&w->dirty_clients)) {
        struct bconn *bc;
        struct client *c;
        while ((bc = TAILQ_FIRST(&w->dirty_conns)) != NULL) {
            TAILQ_REMOVE(&w->dirty_conns, bc, dirty_link);
            bconn_flush(bc);
        }
        while ((c = TAILQ_FIRST(&w->dirty_clients)) != NULL) {
            TAILQ_REMOVE(&w->dirty_clients, c, dirty_link);
            client_flush(c);
        }
    }
    for (uint32_t i = 0; i < w->npools; i++) {
        idx_flush(w->pools[i]->idx);
    }
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    uint64_t now = worker_now_ms(w);

    (void)fd, (void)what;
    for (uint32_t i = 0; i < w->npools; i++) {
        struct pool *p = w->pools[i];
        for (uint32_t b = 0; b < p->nbackends; b++) {
            backend_tick(p->backends[b], now);
        }
        mig_tick(p->mig, now);
        pool_retire_backends(p);
    }
    proxy_reap_pools(w);
    log_tick();
    /* Clients closed holding big unfinished values (value_timeout, a
     * disconnect) leave free pages amid the heap; glibc only gives back the
     * top of it by itself. */
    if (w->input_freed >= TRIM_AFTER_BYTES) {
        w->input_freed = 0;
#ifdef __GLIBC__
        malloc_trim(0);
#endif
    }
}

static void proxy_stop(struct proxy *px, const char *why)
{
    struct worker *w = &px->w;

    if (w->stopping) {
        return;
    }
    log_notice("proxy", "stopping (%s): finishing in-flight requests", why);
    w->stopping = true;
    px->stop_deadline = worker_now_ms(w) + STOP_GRACE_MS;
    for (uint32_t i = 0; i < w->npools; i++) {
        struct pool *p = w->pools[i];
        struct client *c, *next;
        mig_leave(p->mig);      /* the fleet stops waiting for us at once */
        pool_unlisten(p);
        for (c = TAILQ_FIRST(&p->clients); c != NULL; c = next) {
            next = TAILQ_NEXT(c, link);
            client_drain(c, "shutdown");
        }
    }
}

/* Point an existing pool at its new settings; change its ring if needed. */
static void pool_reconfigure(struct pool *p, struct conf_pool *nc)
{
    struct conf_pool *oc = p->conf;
    char err[256];

    if (oc->index.enabled != nc->index.enabled ||
        (nc->index.enabled && (strcmp(oc->index.redis.text, nc->index.redis.text) != 0 ||
                               strcmp(oc->index.prefix, nc->index.prefix) != 0 ||
                               oc->index.db != nc->index.db))) {
        log_error("reload", "%s: changing the index (redis, db, prefix) needs a "
                  "restart; keeping the pool's old settings", p->name);
        return;
    }
    bool same_ring = conf_pool_same_ring(oc, nc);
    bool same_listen = strcmp(oc->listen.text, nc->listen.text) == 0;
    struct evconnlistener *old_listener = p->listener;
    p->conf = nc;
    pool_conf_warn(nc);
    if (!same_listen) {
        p->listener = NULL;
        if (pool_listen(p, err, sizeof(err)) != 0) {
            log_error("reload", "%s: %s; still listening on %s", p->name, err,
                      oc->listen.text);
            p->listener = old_listener;
            p->conf = oc;
            return;
        }
        evconnlistener_free(old_listener);
        if (oc->listen.is_unix) {
            unlink(oc->listen.host);
        }
        log_notice("reload", "%s: now listening on %s (was %s)", p->name,
                   nc->listen.text, oc->listen.text);
    }
    if (same_ring) {
        return;
    }
    struct ring *r = conf_pool_ring(nc, err, sizeof(err));
    if (r == NULL) {
        log_error("reload", "%s: %s", p->name, err);
        return;
    }
    struct ring_diff d;
    if (ring_diff(p->ring, r, &d) == 0) {
        log_notice("reload", "%s: %u -> %u servers, %.1f%% of keys change server",
                   p->name, p->ring->nservers, r->nservers,
                   100.0 * (double)d.moved / RING_SPACE);
        ring_diff_free(&d);
    }
    if (p->mig != NULL) {
        if (mig_change_ring(p->mig, r, err, sizeof(err)) != 0) {
            log_warn("reload", "%s: %s", p->name, err);
        }
        ring_unref(r);
        return;
    }
    struct backend **map = pool_ring_backends(p, r, err, sizeof(err));
    if (map == NULL) {
        log_error("reload", "%s: %s", p->name, err);
        ring_unref(r);
        return;
    }
    log_warn("reload", "%s: no index configured, so keys that change server are "
             "not moved: they miss until written again", p->name);
    pool_set_ring(p, r, map);
    pool_retire_backends(p);
}

/* A valid new config: add, change and remove pools to match it. */
static void proxy_apply(struct proxy *px, struct config *nc)
{
    struct worker *w = &px->w;
    struct old_config *old = malloc(sizeof(*old));
    char err[256];

    if (old == NULL) {
        log_error("reload", "out of memory; keeping the running config");
        config_free(nc);
        return;
    }
    for (uint32_t i = 0; i < nc->npools; i++) {
        struct conf_pool *pc = &nc->pools[i];
        struct pool *p = NULL;
        for (uint32_t j = 0; j < w->npools; j++) {
            if (!w->pools[j]->closing && strcmp(w->pools[j]->name, pc->name) == 0) {
                p = w->pools[j];
            }
        }
        if (p != NULL) {
            pool_reconfigure(p, pc);
        } else if (proxy_add_pool(w, pc, err, sizeof(err)) != 0) {
            log_error("reload", "new pool %s: %s", pc->name, err);
        }
    }
    for (uint32_t j = 0; j < w->npools; j++) {
        struct pool *p = w->pools[j];
        if (!p->closing && config_pool(nc, p->name) == NULL) {
            struct client *c, *next;
            log_notice("reload", "pool %s: removed from the config; closing after "
                       "in-flight replies", p->name);
            p->closing = true;
            pool_unlisten(p);
            for (c = TAILQ_FIRST(&p->clients); c != NULL; c = next) {
                next = TAILQ_NEXT(c, link);
                client_drain(c, "pool removed");
            }
        }
    }
    /* Pools that are closing, or refused a change, still point into the
     * old config: it is kept until exit. */
    old->conf = px->conf;
    old->next = px->old_configs;
    px->old_configs = old;
    px->conf = nc;
    px->reloads++;
    log_notice("reload", "%s applied", px->opts->conf_path);
}

static void proxy_reload(struct proxy *px)
{
    struct conf_errors errs;
    struct config *c = config_load(px->opts->conf_path, &errs);

    if (c == NULL) {
        px->reload_failures++;
        log_error("reload", "%s is invalid, keeping the running config "
                  "(%zu errors):", px->opts->conf_path, errs.n);
        for (size_t i = 0; i < errs.n; i++) {
            log_error("reload", "%s", errs.msgs[i]);
        }
        conf_errors_free(&errs);
        return;
    }
    proxy_apply(px, c);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct proxy *px = arg;

    (void)what;
    switch (sig) {
    case SIGHUP:
        log_notice("proxy", "SIGHUP: reloading %s", px->opts->conf_path);
        proxy_reload(px);
        break;
    case SIGUSR1:
        log_reopen();
        log_notice("proxy", "SIGUSR1: log reopened");
        break;
    default:
        proxy_stop(px, sig == SIGTERM ? "SIGTERM" : "SIGINT");
        break;
    }
}

static bool worker_idle(const struct worker *w)
{
    for (uint32_t i = 0; i < w->npools; i++) {
        if (!TAILQ_EMPTY(&w->pools[i]->clients) || !mig_left(w->pools[i]->mig)) {
            return false;
        }
    }
    return true;
}

static int daemonize(void)
{
    pid_t pid = fork();

    if (pid < 0) {
        return -errno;
    }
    if (pid > 0) {
        _exit(0);
    }
    if (setsid() < 0) {
        return -errno;
    }
    pid = fork();
    if (pid < 0) {
        return -errno;
    }
    if (pid > 0) {
        _exit(0);
    }
    umask(0);
    if (chdir("/") != 0) {
        return -errno;
    }
    int fd = open("/dev/null", O_RDWR);
    if (fd >= 0) {
        dup2(fd, STDIN_FILENO);
        dup2(fd, STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
        if (fd > STDERR_FILENO) {
            close(fd);
        }
    }
    return 0;
}

static int write_pid_file(const char *path)
{
    FILE *f = fopen(path, "w");

    if (f == NULL) {
        return -errno;
    }
    fprintf(f, "%ld\n", (long)getpid());
    return fclose(f) == 0 ? 0 : -errno;
}

static void proxy_free(struct proxy *px)
{
    struct worker *w = &px->w;

    admin_free(px->admin);
    for (uint32_t i = 0; w->pools != NULL && i < w->npools; i++) {
        pool_unlisten(w->pools[i]);
        pool_close(w->pools[i]);
    }
    worker_flush(w);    /* frees clients closed above */
    for (uint32_t i = 0; w->pools != NULL && i < w->npools; i++) {
        free(w->pools[i]);
    }
    free(w->pools);
    for (struct old_config *o = px->old_configs, *next; o != NULL; o = next) {
        next = o->next;
        config_free(o->conf);
        free(o);
    }
    struct event *evs[] = { px->sig_hup, px->sig_usr1, px->sig_term, px->sig_int,
                            w->tick };
    for (size_t i = 0; i < sizeof(evs) / sizeof(evs[0]); i++) {
        if (evs[i] != NULL) {
            event_free(evs[i]);
        }
    }
    if (w->base != NULL) {
        event_base_free(w->base);
    }
    config_free(px->conf);
}

int proxy_main(const struct proxy_options *o)
{
    struct proxy px = { .opts = o };
    struct worker *w = &px.w;
    struct conf_errors errs;
    char err[256];
    int rc = 1;

    int lrc = log_open(o->log_path, o->log_level);
    if (lrc != 0) {
        fprintf(stderr, "ringproxy: cannot open log %s: %s\n", o->log_path,
                strerror(-lrc));
        return 1;
    }
    px.conf = config_load(o->conf_path, &errs);
    if (px.conf == NULL) {
        for (size_t i = 0; i < errs.n; i++) {
            log_error("config", "%s", errs.msgs[i]);
        }
        conf_errors_free(&errs);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    if (o->daemonize && (rc = daemonize()) != 0) {
        log_error("proxy", "cannot daemonize: %s", strerror(-rc));
        rc = 1;
        goto out;
    }
    rc = 1;
    TAILQ_INIT(&w->dirty_conns);
    TAILQ_INIT(&w->dirty_clients);
    w->base = event_base_new();
    if (w->base == NULL) {
        log_error("proxy", "cannot create the event loop");
        goto out;
    }
    w->started = worker_now_ms(w);
    for (uint32_t i = 0; i < px.conf->npools; i++) {
        if (proxy_add_pool(w, &px.conf->pools[i], err, sizeof(err)) != 0) {
            log_error("proxy", "pool %s: %s", px.conf->pools[i].name, err);
            goto out;
        }
    }
    const struct admin_counters counters = { &px.reloads, &px.reload_failures };
    if (o->admin_port != 0 && (px.admin = admin_start(w, &counters, o->admin_addr,
                                   o->admin_port, err, sizeof(err))) == NULL) {
        log_error("proxy", "admin port: %s", err);
        goto out;
    }
    if (o->pid_path != NULL && (rc = write_pid_file(o->pid_path)) != 0) {
        log_error("proxy", "cannot write pid file %s: %s", o->pid_path,
                  strerror(-rc));
        rc = 1;
        goto out;
    }
    rc = 1;
    px.sig_hup = evsignal_new(w->base, SIGHUP, on_signal, &px);
    px.sig_usr1 = evsignal_new(w->base, SIGUSR1, on_signal, &px);
    px.sig_term = evsignal_new(w->base, SIGTERM, on_signal, &px);
    px.sig_int = evsignal_new(w->base, SIGINT, on_signal, &px);
    w->tick = event_new(w->base, -1, EV_PERSIST, on_tick, w);
    struct timeval tick = { 0, TICK_MS * 1000 };
    if (!px.sig_hup || !px.sig_usr1 || !px.sig_term || !px.sig_int || !w->tick) {
        goto out;
    }
    event_add(px.sig_hup, NULL);
    event_add(px.sig_usr1, NULL);
    event_add(px.sig_term, NULL);
    event_add(px.sig_int, NULL);
    event_add(w->tick, &tick);
    log_notice("proxy", "ringproxy %s started, pid %ld", RINGPROXY_VERSION,
               (long)getpid());

    for (;;) {
        event_base_loop(w->base, EVLOOP_ONCE);
        worker_flush(w);
        if (w->stopping &&
            (worker_idle(w) || worker_now_ms(w) >= px.stop_deadline)) {
            break;
        }
    }
    log_notice("proxy", "stopped");
    rc = 0;

out:
    if (o->pid_path != NULL && rc == 0) {
        unlink(o->pid_path);
    }
    proxy_free(&px);
    log_close();
    return rc;
}
