/*
 * proxy.c — the serving process: load the config, open the pools' listeners,
 * run the event loop, handle signals, stop gracefully.
 *
 * The loop runs one turn at a time (EVLOOP_ONCE) and flushes every
 * connection that produced output after each turn: requests that arrive
 * together leave together, in one write per connection.
 *
 * A reload reads, validates and builds the rings of the new file on a
 * thread of its own (a file at the limits of src/config.h costs hundreds of
 * ms), then hands the result to the loop through a pipe; the loop only
 * switches pools over. One reload runs at a time; a SIGHUP meanwhile starts
 * another when it ends, so the last version of the file always wins.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
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
#include "defer.h"
#include "adopt.h"
#include "index.h"
#include "migrate.h"
#include "log.h"
#include "notify.h"
#include "nstats.h"
#include "proxy.h"
#include "resolve.h"
#include "pool.h"
#include "sweep.h"

#define TICK_MS 100
#define STOP_GRACE_MS 5000
#define TRIM_AFTER_BYTES (16u << 20)    /* client input freed before a trim */
#define ACCEPT_PAUSE_MIN_MS 100         /* out of descriptors: pause, doubling */
#define ACCEPT_PAUSE_MAX_MS 1000

/* Configs replaced by a reload, kept while a pool still points into them
 * (a pool a reload removed, closing: pool.conf); proxy_reap_configs frees
 * each once none does. Nothing else keeps a pointer into a config: the
 * index, the sweeper, the rebuild and the backends copy what they need. */
struct old_config {
    struct config *conf;
    struct old_config *next;
};

/* A reload's work off the loop: what it read, or why it could not. */
struct reload_job {
    const char *path;
    struct config *conf;        /* NULL: see errs */
    struct conf_errors errs;
    struct ring **rings;        /* the ring of each pool of conf */
    int done_fd;                /* written once the job is done */
};

struct proxy {
    const struct proxy_options *opts;
    pthread_t reload_thread;
    struct reload_job *reload;  /* running; NULL: none */
    bool reload_again;          /* a SIGHUP came while one ran */
    int reload_pipe[2];
    struct event *reload_done;
    struct config *conf;
    struct old_config *old_configs;
    struct worker w;
    struct admin *admin;        /* NULL: no admin port */
    struct nstats *nstats;      /* NULL: no stats port */
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

/* A unix socket's mode from "listen: /path 0666" (config.h: listen_mode). */
static int listener_chmod(const struct conf_pool *conf, char *err, size_t errlen)
{
    if (!conf->listen.is_unix || conf->listen_mode < 0 ||
        chmod(conf->listen.host, (mode_t)conf->listen_mode) == 0) {
        return 0;
    }
    snprintf(err, errlen, "cannot set mode %04llo on %s: %s",
             (unsigned long long)conf->listen_mode, conf->listen.host, strerror(errno));
    return -1;
}

/*
 * A unix listener's socket file is removed only while the path still names
 * the file it bound (*dev, *ino, noted by listener_open): another process
 * may have bound the path since (a restart that overlaps, a second proxy),
 * or a pool of the same reload, and its socket is not ours to remove.
 */
static void listener_note_file(const struct conf_addr *a, uint64_t *dev, uint64_t *ino)
{
    struct stat st;

    *dev = *ino = 0;
    if (a->is_unix && lstat(a->host, &st) == 0) {
        *dev = (uint64_t)st.st_dev;
        *ino = (uint64_t)st.st_ino;
    }
}

static void listener_unlink(const struct conf_addr *a, uint64_t dev, uint64_t ino)
{
    struct stat st;

    if (a->is_unix && lstat(a->host, &st) == 0 && S_ISSOCK(st.st_mode) &&
        (uint64_t)st.st_dev == dev && (uint64_t)st.st_ino == ino) {
        unlink(a->host);
    }
}

/*
 * A listener for pool p on address a (conf: its backlog), disabled until the
 * pool is ready; a unix socket's file in *dev, *ino (listener_note_file).
 * Returns NULL with a reason in err. p is not changed: a reload opens a
 * pool's new listener before it knows it will keep it.
 */
static struct evconnlistener *listener_open(struct pool *p,
                                            const struct conf_pool *conf,
                                            uint64_t *dev, uint64_t *ino,
                                            char *err, size_t errlen)
{
    const struct conf_addr *a = &conf->listen;
    unsigned flags = LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE |
                     LEV_OPT_CLOSE_ON_EXEC | (p->ready ? 0 : LEV_OPT_DISABLED);
    struct sockaddr_storage ss;
    struct evconnlistener *l;
    socklen_t len;

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
            return NULL;
        }
        len = (socklen_t)res->ai_addrlen;
        memcpy(&ss, res->ai_addr, len);
        evutil_freeaddrinfo(res);
    }
    l = evconnlistener_new_bind(p->w->base, on_accept, p, flags,
                                (int)conf->backlog, (struct sockaddr *)&ss,
                                (int)len);
    if (l == NULL) {
        snprintf(err, errlen, "cannot listen on %s: %s", a->text, strerror(errno));
        return NULL;
    }
    listener_note_file(a, dev, ino);
    if (listener_chmod(conf, err, errlen) != 0) {
        evconnlistener_free(l);
        listener_unlink(a, *dev, *ino);
        return NULL;
    }
    evconnlistener_set_error_cb(l, on_accept_error);
    return l;
}

/* Close a listener opened for a reload that was then refused. */
static void listener_discard(struct evconnlistener *l, const struct conf_pool *conf,
                             uint64_t dev, uint64_t ino)
{
    if (l != NULL) {
        evconnlistener_free(l);
        listener_unlink(&conf->listen, dev, ino);
    }
}

/* Open the pool's listener (disabled until the pool is ready). */
static int pool_listen(struct pool *p, char *err, size_t errlen)
{
    if (p->accept_retry == NULL &&
        (p->accept_retry = evtimer_new(p->w->base, on_accept_retry, p)) == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    p->listener = listener_open(p, p->conf, &p->listen_dev, &p->listen_ino, err, errlen);
    return p->listener != NULL ? 0 : -1;
}

static void pool_unlisten(struct pool *p)
{
    if (p->listener != NULL) {
        evconnlistener_free(p->listener);
        p->listener = NULL;
        listener_unlink(&p->conf->listen, p->listen_dev, p->listen_ino);
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

/* A new pool, listening (disabled until ready), not yet in w->pools. */
/* ring: built already (a reload), its reference taken; or NULL. */
static struct pool *proxy_new_pool(struct worker *w, struct conf_pool *conf,
                                   struct ring *ring, char *err, size_t errlen)
{
    struct pool *p = calloc(1, sizeof(*p));

    if (p == NULL) {
        ring_unref(ring);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (pool_init(p, w, conf, ring, err, errlen) != 0 || pool_listen(p, err, errlen) != 0) {
        pool_unlisten(p);
        pool_close(p);
        free(p);
        return NULL;
    }
    return p;
}

/* Put a pool made by proxy_new_pool in service; w->pools has room for it. */
static void proxy_start_pool(struct worker *w, struct pool *p)
{
    w->pools[w->npools++] = p;
    pool_conf_warn(p->conf);
    log_notice("proxy", "pool %s: listening on %s, %u servers, %u ring points, "
               "hash %s, compat %s%s", p->name, p->conf->listen.text,
               p->ring->nservers, p->ring->npoints, hash_names[p->ring->hash],
               ring_compat_names[p->ring->compat],
               p->ready ? "" : " (serving once Redis says which ring the data obeys)");
}

static int proxy_add_pool(struct worker *w, struct conf_pool *conf, char *err,
                          size_t errlen)
{
    struct pool **pools = realloc(w->pools, (w->npools + 1) * sizeof(*pools));
    struct pool *p;

    if (pools == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    w->pools = pools;
    if ((p = proxy_new_pool(w, conf, NULL, err, errlen)) == NULL) {
        return -1;
    }
    proxy_start_pool(w, p);
    return 0;
}

/* Free pools a reload removed once their last client has gone. */
static void proxy_reap_pools(struct worker *w)
{
    for (uint32_t i = 0; i < w->npools;) {
        struct pool *p = w->pools[i];
        if (!p->closing || !TAILQ_EMPTY(&p->clients) || !adopt_left(p->adopt) ||
            !sweep_left(p->sweep)) {
            i++;
            continue;
        }
        log_notice("proxy", "pool %s: removed", p->name);
        pool_close(p);
        free(p);
        w->pools[i] = w->pools[--w->npools];
    }
}

/* Write every connection's pending output; repeat while that makes more.
 * Then free what was closed during the turn (defer.h). */
static void worker_flush(struct worker *w)
{
    while (!TAILQ_EMPTY(&w->dirty_conns) || !TAILQ_EMPTY(&w->dirty_clients) ||
           defer_pending(w->defer) > 0) {
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
        defer_run(w->defer);
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
        adopt_tick(p->adopt, now);
        pool_sweep_tick(p, now);
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
    notify_stopping();
    w->stopping = true;
    px->stop_deadline = worker_now_ms(w) + STOP_GRACE_MS;
    for (uint32_t i = 0; i < w->npools; i++) {
        struct pool *p = w->pools[i];
        struct client *c, *next;
        mig_leave(p->mig);      /* the fleet stops waiting for us at once */
        sweep_leave(p->sweep);  /* and another proxy may sweep */
        pool_unlisten(p);
        for (c = TAILQ_FIRST(&p->clients); c != NULL; c = next) {
            next = TAILQ_NEXT(c, link);
            client_drain(c, "shutdown");
        }
    }
}

/*
 * A reload is applied all or nothing. First every pool of the new file is
 * prepared without touching what serves: its ring built, the backends of
 * that ring found, a moved listener bound, a new pool made. If any of that
 * fails, everything prepared is undone and the running config stays whole;
 * only then is each pool switched over, a step that cannot fail.
 */
struct pool_plan {
    struct pool *p;                 /* running, or new (is_new) */
    struct conf_pool *conf;         /* its settings in the new file */
    bool is_new;
    struct ring *ring;              /* NULL: the ring stays */
    struct backend **ring_be;       /* the ring's backends; NULL with an index
                                       (the migration switches rings) */
    struct evconnlistener *listener;    /* NULL: the listener stays */
    uint64_t listen_dev, listen_ino;    /* its socket file (listener_note_file) */
};

/* ring: the new file's ring for the pool, built by the reload thread (a
 * reference the plan takes, or drops when the ring does not change). */
static int plan_pool(struct pool_plan *pl, struct ring *ring, char *err,
                     size_t errlen)
{
    struct pool *p = pl->p;
    const struct conf_pool *oc = p->conf, *nc = pl->conf;

    if (oc->index.enabled != nc->index.enabled ||
        (nc->index.enabled && (strcmp(oc->index.redis.text, nc->index.redis.text) != 0 ||
                               strcmp(oc->index.prefix, nc->index.prefix) != 0 ||
                               oc->index.db != nc->index.db))) {
        snprintf(err, errlen, "changing the index (redis, db, prefix) needs a "
                 "restart");
        return -1;
    }
    if (p->mig != NULL && (oc->hash != nc->hash || oc->has_tag != nc->has_tag ||
                           (nc->has_tag && memcmp(oc->hash_tag, nc->hash_tag, 2) != 0))) {
        snprintf(err, errlen, "changing hash or hash_tag of an indexed pool would "
                 "move every key; not supported");
        return -1;
    }
    if (conf_pool_same_ring(oc, nc)) {
        ring_unref(ring);
    } else {
        pl->ring = ring;
        if (p->mig == NULL &&
            (pl->ring_be = pool_ring_backends(p, pl->ring, err, errlen)) == NULL) {
            return -1;
        }
    }
    if (strcmp(oc->listen.text, nc->listen.text) != 0 &&
        (pl->listener = listener_open(p, nc, &pl->listen_dev, &pl->listen_ino, err,
                                      errlen)) == NULL) {
        return -1;
    }
    return 0;
}

/* Undo what plan_pool or proxy_new_pool prepared. */
static void plan_discard(struct pool_plan *pl)
{
    if (pl->p == NULL) {
        return;
    }
    if (pl->is_new) {
        pool_unlisten(pl->p);
        pool_close(pl->p);
        free(pl->p);
        return;
    }
    listener_discard(pl->listener, pl->conf, pl->listen_dev, pl->listen_ino);
    free(pl->ring_be);
    ring_unref(pl->ring);
    pool_retire_backends(pl->p);    /* those pool_ring_backends made */
}

/* Switch a running pool to its prepared settings (cannot fail). */
static void plan_commit(struct pool_plan *pl)
{
    struct pool *p = pl->p;
    struct conf_pool *oc = p->conf, *nc = pl->conf;
    char err[256];

    p->conf = nc;
    pool_conf_warn(nc);
    if (pl->listener != NULL) {
        struct evconnlistener *old = p->listener;
        p->listener = pl->listener;
        if (old != NULL) {
            evconnlistener_free(old);
            listener_unlink(&oc->listen, p->listen_dev, p->listen_ino);
        }
        p->listen_dev = pl->listen_dev;
        p->listen_ino = pl->listen_ino;
        log_notice("reload", "%s: now listening on %s (was %s)", p->name,
                   nc->listen.text, oc->listen.text);
    } else if (nc->listen_mode != oc->listen_mode && nc->listen_mode >= 0 &&
               listener_chmod(nc, err, sizeof(err)) != 0) {
        log_warn("reload", "%s: %s", p->name, err);
    }
    if (pl->ring == NULL) {
        return;
    }
    struct ring_diff d;
    if (ring_diff(p->ring, pl->ring, &d) == 0) {
        log_notice("reload", "%s: %u -> %u servers, %.1f%% of keys change server",
                   p->name, p->ring->nservers, pl->ring->nservers,
                   100.0 * (double)d.moved / RING_SPACE);
        ring_diff_free(&d);
    }
    if (p->mig != NULL) {
        /* plan_pool refused what mig_change_ring refuses */
        if (mig_change_ring(p->mig, pl->ring, err, sizeof(err)) != 0) {
            log_warn("reload", "%s: %s", p->name, err);
        }
        ring_unref(pl->ring);
        return;
    }
    log_warn("reload", "%s: no index configured, so keys that change server are "
             "not moved: they miss until written again", p->name);
    pool_set_ring(p, pl->ring, pl->ring_be);
    pool_retire_backends(p);
}

/* Does a pool still point into config c? */
static bool proxy_config_used(const struct proxy *px, const struct config *c)
{
    for (uint32_t i = 0; i < px->w.npools; i++) {
        uintptr_t pc = (uintptr_t)px->w.pools[i]->conf, lo = (uintptr_t)c->pools;
        if (pc >= lo && pc < lo + c->npools * sizeof(*c->pools)) {
            return true;
        }
    }
    return false;
}

/* Free the replaced configs no pool uses any more (called after a reload
 * and once per loop turn while there are any: a closing pool is freed by
 * the tick, proxy_reap_pools). */
static void proxy_reap_configs(struct proxy *px)
{
    for (struct old_config **op = &px->old_configs; *op != NULL;) {
        struct old_config *o = *op;
        if (proxy_config_used(px, o->conf)) {
            op = &o->next;
            continue;
        }
        *op = o->next;
        config_free(o->conf);
        free(o);
    }
}

/* A valid new config: add, change and remove pools to match it, or, if any
 * pool cannot take its new settings, change nothing. Takes nc and rings
 * (each pool's ring, a reference; the array itself stays the caller's). */
static void proxy_apply(struct proxy *px, struct config *nc, struct ring **rings)
{
    struct worker *w = &px->w;
    struct old_config *old = malloc(sizeof(*old));
    struct pool_plan *plans = calloc(nc->npools, sizeof(*plans));
    struct pool **pools = realloc(w->pools, (w->npools + nc->npools) *
                                  sizeof(*pools));
    char err[256] = "out of memory";
    const char *failed = NULL;

    if (pools != NULL) {
        w->pools = pools;       /* room for every pool that may be new */
    }
    if (old == NULL || plans == NULL || pools == NULL) {
        failed = "";
        goto refuse;
    }
    for (uint32_t i = 0; i < nc->npools; i++) {
        struct pool_plan *pl = &plans[i];
        pl->conf = &nc->pools[i];
        for (uint32_t j = 0; j < w->npools; j++) {
            if (!w->pools[j]->closing && strcmp(w->pools[j]->name, pl->conf->name) == 0) {
                pl->p = w->pools[j];
            }
        }
        struct ring *ring = rings[i];
        rings[i] = NULL;
        if (pl->p != NULL) {
            if (plan_pool(pl, ring, err, sizeof(err)) != 0) {
                failed = pl->conf->name;
                goto refuse;
            }
        } else if ((pl->p = proxy_new_pool(w, pl->conf, ring, err, sizeof(err))) != NULL) {
            pl->is_new = true;
        } else {
            failed = pl->conf->name;
            goto refuse;
        }
    }

    for (uint32_t i = 0; i < nc->npools; i++) {
        if (plans[i].is_new) {
            proxy_start_pool(w, plans[i].p);
        } else {
            plan_commit(&plans[i]);
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
    /* Pools that are closing still point into the old config: it is kept
     * until the last of them is freed (proxy_reap_configs). */
    old->conf = px->conf;
    old->next = px->old_configs;
    px->old_configs = old;
    px->conf = nc;
    proxy_reap_configs(px);
    px->reloads++;
    free(plans);
    log_notice("reload", "%s applied", px->opts->conf_path);
    return;

refuse:
    for (uint32_t i = 0; i < nc->npools; i++) {
        ring_unref(rings[i]);
        rings[i] = NULL;
        if (plans != NULL) {
            plan_discard(&plans[i]);
        }
    }
    px->reload_failures++;
    log_error("reload", "%s%s%s: %s; nothing changed, the running config stays",
              px->opts->conf_path, failed && *failed ? ": pool " : "",
              failed && *failed ? failed : "", err);
    free(plans);
    free(old);
    config_free(nc);
}

static void reload_job_free(struct reload_job *job)
{
    if (job == NULL) {
        return;
    }
    for (uint32_t i = 0; job->rings != NULL && job->conf != NULL &&
                         i < job->conf->npools; i++) {
        ring_unref(job->rings[i]);
    }
    free(job->rings);
    config_free(job->conf);
    conf_errors_free(&job->errs);
    free(job);
}

/*
 * hiredis resolves a name with a blocking getaddrinfo at every connect, on
 * the loop, and a listener's name would be resolved on the loop too: so
 * the Redis address of each index and each listen address are resolved
 * here instead, off the loop (startup, the reload thread), and the address
 * is used (resolve_pin; docs/ARCHITECTURE.md, "Addresses and names").
 */
static int proxy_pin_names(struct config *c, char *err, size_t errlen)
{
    char why[192];      /* with the file, pool and address: fits err[256] */

    for (uint32_t i = 0; i < c->npools; i++) {
        struct conf_pool *p = &c->pools[i];
        struct conf_addr *a = &p->listen;
        int rc = resolve_pin(a, 0, why, sizeof(why));
        if (rc == 0 && p->index.enabled) {
            a = &p->index.redis;
            rc = resolve_pin(a, 0, why, sizeof(why));
        }
        if (rc != 0) {
            snprintf(err, errlen, "%s: pool '%s': %s %s: %s", c->path, p->name,
                     a == &p->listen ? "listen" : "index: Redis", a->text, why);
            return -1;
        }
    }
    return 0;
}

/* The reload thread: load the file and build every pool's ring. It touches
 * nothing but the job, which the loop reads only after joining it. */
static void *reload_run(void *arg)
{
    struct reload_job *job = arg;
    char err[256];
    char byte = 1;

    job->conf = config_load(job->path, &job->errs);
    if (job->conf != NULL && proxy_pin_names(job->conf, err, sizeof(err)) != 0) {
        /* as config_load's errors, so it is reported the same way */
        job->errs.msgs = calloc(1, sizeof(*job->errs.msgs));
        if (job->errs.msgs != NULL && (job->errs.msgs[0] = strdup(err)) != NULL) {
            job->errs.n = 1;
        }
        config_free(job->conf);
        job->conf = NULL;
    }
    if (job->conf != NULL) {
        job->rings = calloc(job->conf->npools, sizeof(*job->rings));
        for (uint32_t i = 0; job->rings != NULL && i < job->conf->npools; i++) {
            job->rings[i] = conf_pool_ring(&job->conf->pools[i], err, sizeof(err));
            if (job->rings[i] == NULL) {
                /* as config_load's errors, so it is reported the same way */
                job->errs.msgs = calloc(1, sizeof(*job->errs.msgs));
                if (job->errs.msgs != NULL &&
                    asprintf(&job->errs.msgs[0], "%s: pool '%s': %s", job->path,
                             job->conf->pools[i].name, err) >= 0) {
                    job->errs.n = 1;
                }
                break;
            }
        }
        if (job->rings == NULL || job->errs.msgs != NULL) {
            for (uint32_t i = 0; job->rings != NULL && i < job->conf->npools; i++) {
                ring_unref(job->rings[i]);
            }
            free(job->rings);
            job->rings = NULL;
            config_free(job->conf);
            job->conf = NULL;
        }
    }
    while (write(job->done_fd, &byte, 1) < 0 && errno == EINTR) {
    }
    return NULL;
}

static void proxy_reload(struct proxy *px)
{
    struct reload_job *job;

    if (px->reload != NULL) {
        px->reload_again = true;    /* read the file again once this ends */
        return;
    }
    px->reload_again = false;
    job = calloc(1, sizeof(*job));
    if (job != NULL) {
        job->path = px->opts->conf_path;
        job->done_fd = px->reload_pipe[1];
    }
    if (job == NULL || pthread_create(&px->reload_thread, NULL, reload_run, job) != 0) {
        px->reload_failures++;
        log_error("reload", "cannot start reading %s: %s", px->opts->conf_path,
                  job == NULL ? "out of memory" : "no thread");
        free(job);
        notify_ready();     /* the reload is over: the old config serves */
        return;
    }
    px->reload = job;
}

/* Wait for a reload still running (at exit). */
static void proxy_reload_join(struct proxy *px)
{
    if (px->reload != NULL) {
        pthread_join(px->reload_thread, NULL);
        reload_job_free(px->reload);
        px->reload = NULL;
    }
}

/* The reload thread is done: apply what it read, or report why not. */
static void on_reload_done(evutil_socket_t fd, short what, void *arg)
{
    struct proxy *px = arg;
    struct reload_job *job = px->reload;
    char byte;

    (void)what;
    if (read(fd, &byte, 1) != 1 || job == NULL) {
        return;
    }
    pthread_join(px->reload_thread, NULL);
    px->reload = NULL;
    if (px->w.stopping) {
        reload_job_free(job);
        return;
    }
    if (job->conf == NULL) {
        px->reload_failures++;
        log_error("reload", "%s is invalid, keeping the running config "
                  "(%zu errors):", px->opts->conf_path, job->errs.more ?
                  job->errs.n - 1 + job->errs.more : job->errs.n);
        for (size_t i = 0; i < job->errs.n; i++) {
            log_error("reload", "%s", job->errs.msgs[i]);
        }
    } else {
        struct config *c = job->conf;
        job->conf = NULL;
        proxy_apply(px, c, job->rings);
    }
    reload_job_free(job);
    if (px->reload_again) {
        log_notice("reload", "another SIGHUP came meanwhile: reading %s again",
                   px->opts->conf_path);
        proxy_reload(px);
    } else {
        notify_ready();     /* applied or refused, the proxy serves */
    }
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct proxy *px = arg;

    (void)what;
    switch (sig) {
    case SIGHUP:
        log_notice("proxy", "SIGHUP: reloading %s", px->opts->conf_path);
        if (!px->w.stopping) {
            notify_reloading();
        }
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
        if (!TAILQ_EMPTY(&w->pools[i]->clients) || !mig_left(w->pools[i]->mig) ||
            !adopt_left(w->pools[i]->adopt) || !sweep_left(w->pools[i]->sweep)) {
            return false;
        }
    }
    return true;
}

/*
 * The parent of a daemon: wait until the daemon says it serves ("ready") or
 * gives up, and exit 0 or 1 accordingly, with the daemon's errors on stderr.
 * pid is the intermediate child, reaped here.
 */
static void daemon_parent(int fd, pid_t pid)
{
    char buf[4096];
    size_t len = 0;
    ssize_t n;

    waitpid(pid, NULL, 0);
    while ((n = read(fd, buf + len, sizeof(buf) - 1 - len)) != 0) {
        if (n < 0 && errno != EINTR) {
            break;
        }
        len += n > 0 ? (size_t)n : 0;
        if (len == sizeof(buf) - 1) {
            break;
        }
    }
    buf[len] = '\0';
    if (len >= 6 && strcmp(buf + len - 6, "ready\n") == 0) {
        _exit(0);
    }
    fprintf(stderr, "ringproxy: did not start%s\n%s", len > 0 ? ":" :
            " (it exited during start-up; see its log)", buf);
    fflush(stderr);
    _exit(1);
}

/*
 * Fork into the background. The calling process stays in the foreground
 * until the daemon reports through *report_fd: its error lines (see
 * log_mirror_errors), then "ready\n" once it serves, or nothing and EOF when
 * it fails. Returns 0 in the daemon, or -1 with errno set.
 */
static int daemonize(int *report_fd)
{
    int fds[2];

    if (pipe2(fds, O_CLOEXEC) != 0) {
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        return -1;
    }
    if (pid > 0) {
        close(fds[1]);
        daemon_parent(fds[0], pid);
    }
    close(fds[0]);
    if (setsid() < 0) {
        return -1;
    }
    pid = fork();
    if (pid < 0) {
        return -1;
    }
    if (pid > 0) {
        _exit(0);
    }
    /* Files we create (pid file, unix sockets) are not writable by others;
     * the paths are absolute already (src/main.c). */
    umask(022);
    if (chdir("/") != 0) {
        return -1;
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
    *report_fd = fds[1];
    log_mirror_errors(fds[1]);
    return 0;
}

/* Tell the waiting parent (if any) that we serve. */
static void daemon_ready(int *report_fd)
{
    if (*report_fd >= 0) {
        log_mirror_errors(-1);
        ssize_t rc = write(*report_fd, "ready\n", 6);
        (void)rc;
        close(*report_fd);
        *report_fd = -1;
    }
}

/* Become user pw once the listeners are bound (memcached's -u): 0, or -1
 * with errno set. */
static int drop_privileges(const struct passwd *pw)
{
    if (initgroups(pw->pw_name, pw->pw_gid) != 0 || setgid(pw->pw_gid) != 0 ||
        setuid(pw->pw_uid) != 0) {
        return -1;
    }
    if (setuid(0) == 0 && pw->pw_uid != 0) {
        errno = EPERM;      /* root could be regained: not dropped */
        return -1;
    }
    return 0;
}

/* 0, or -1 with errno set. */
static int write_pid_file(const char *path)
{
    FILE *f = fopen(path, "w");

    if (f == NULL) {
        return -1;
    }
    fprintf(f, "%ld\n", (long)getpid());
    return fclose(f) == 0 ? 0 : -1;
}

static void proxy_free(struct proxy *px)
{
    struct worker *w = &px->w;

    /* First, while every event's object is alive: evdns lets go of the
     * requests it still runs only from the loop (resolver_quiesce). */
    resolver_quiesce(w->dns);
    proxy_reload_join(px);
    if (px->reload_done != NULL) {
        event_free(px->reload_done);
    }
    for (int i = 0; i < 2; i++) {
        if (px->reload_pipe[i] >= 0) {
            close(px->reload_pipe[i]);
        }
    }
    admin_free(px->admin);
    nstats_free(px->nstats);
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
    defer_free(w->defer);
    resolver_free(w->dns);
    if (w->base != NULL) {
        event_base_free(w->base);
    }
    config_free(px->conf);
}

/* nutcracker's flags that ringproxy takes only so its command lines work. */
static void proxy_log_accepted_flags(const struct proxy_options *o)
{
    if (o->mbuf_size != 0) {
        log_notice("proxy", "-m %ld: accepted for nutcracker's command line and "
                   "ignored (buffers grow as needed, within each pool's limits)",
                   o->mbuf_size);
    }
    if (o->stats_interval != 0) {
        log_notice("proxy", "-i %ld: accepted for nutcracker's command line and "
                   "ignored (the stats port answers with current counters)",
                   o->stats_interval);
    }
}

int proxy_main(const struct proxy_options *o)
{
    struct proxy px = { .opts = o, .reload_pipe = { -1, -1 } };
    struct worker *w = &px.w;
    struct conf_errors errs;
    struct passwd *pw = NULL;
    char err[256];
    int rc = 1, report_fd = -1;

    int lrc = log_open(o->log_path, o->log_level);
    if (lrc != 0) {
        fprintf(stderr, "ringproxy: cannot open log %s: %s\n", o->log_path,
                strerror(errno));
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
    if (proxy_pin_names(px.conf, err, sizeof(err)) != 0) {
        log_error("config", "%s", err);
        config_free(px.conf);
        return 1;
    }
    if (o->user != NULL) {
        errno = 0;
        if ((pw = getpwnam(o->user)) == NULL) {
            log_error("proxy", "-u %s: %s", o->user,
                      errno ? strerror(errno) : "no such user");
            goto out;
        }
        if (geteuid() != 0) {
            log_warn("proxy", "-u %s: not running as root, so not changing user",
                     o->user);
            pw = NULL;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    if (o->daemonize && (rc = daemonize(&report_fd)) != 0) {
        log_error("proxy", "cannot daemonize: %s", strerror(errno));
        rc = 1;
        goto out;
    }
    rc = 1;
    notify_init();      /* before -u: connecting checks our permission */
    TAILQ_INIT(&w->dirty_conns);
    TAILQ_INIT(&w->dirty_clients);
    w->base = event_base_new();
    if (w->base == NULL) {
        log_error("proxy", "cannot create the event loop");
        goto out;
    }
    w->defer = defer_new(w->base);
    /* Backends' names resolve on the loop (resolve.h); without a resolver
     * only numeric addresses would connect, so no resolver, no start. */
    if ((w->dns = resolver_new(w->base, NULL, err, sizeof(err))) == NULL) {
        log_error("proxy", "DNS resolver: %s", err);
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
    if (o->stats_port != 0 && (px.nstats = nstats_start(w, o->stats_addr,
                                   o->stats_port, err, sizeof(err))) == NULL) {
        log_error("proxy", "stats port: %s", err);
        goto out;
    }
    proxy_log_accepted_flags(o);
    if (o->pid_path != NULL && (rc = write_pid_file(o->pid_path)) != 0) {
        log_error("proxy", "cannot write pid file %s: %s", o->pid_path,
                  strerror(errno));
        rc = 1;
        goto out;
    }
    if (pw != NULL && (rc = drop_privileges(pw)) != 0) {
        log_error("proxy", "-u %s: cannot become that user: %s", o->user,
                  strerror(errno));
        rc = 1;
        goto out;
    }
    rc = 1;
    px.sig_hup = evsignal_new(w->base, SIGHUP, on_signal, &px);
    px.sig_usr1 = evsignal_new(w->base, SIGUSR1, on_signal, &px);
    px.sig_term = evsignal_new(w->base, SIGTERM, on_signal, &px);
    px.sig_int = evsignal_new(w->base, SIGINT, on_signal, &px);
    w->tick = event_new(w->base, -1, EV_PERSIST, on_tick, w);
    if (pipe2(px.reload_pipe, O_CLOEXEC | O_NONBLOCK) == 0) {
        px.reload_done = event_new(w->base, px.reload_pipe[0], EV_READ | EV_PERSIST,
                                   on_reload_done, &px);
    }
    struct timeval tick = { 0, TICK_MS * 1000 };
    if (!px.sig_hup || !px.sig_usr1 || !px.sig_term || !px.sig_int || !w->tick ||
        !px.reload_done) {
        log_error("proxy", "out of memory or descriptors setting up the loop");
        goto out;
    }
    event_add(px.reload_done, NULL);
    event_add(px.sig_hup, NULL);
    event_add(px.sig_usr1, NULL);
    event_add(px.sig_term, NULL);
    event_add(px.sig_int, NULL);
    event_add(w->tick, &tick);
    log_notice("proxy", "ringproxy %s started, pid %ld", RINGPROXY_VERSION,
               (long)getpid());
    daemon_ready(&report_fd);
    notify_ready();

    for (;;) {
        event_base_loop(w->base, EVLOOP_ONCE);
        worker_flush(w);
        if (px.old_configs != NULL) {
            proxy_reap_configs(&px);
        }
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
    if (report_fd >= 0) {       /* not started: the parent reports why */
        log_mirror_errors(-1);
        close(report_fd);
    }
    proxy_free(&px);
    notify_close();
    log_close();
    return rc;
}
