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
#include <stddef.h>
#include <sys/random.h>
#include <sys/socket.h>
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
#include "balance.h"
#include "client.h"
#include "clock.h"
#include "config.h"
#include "defer.h"
#include "adopt.h"
#include "handoff.h"
#include "hub.h"
#include "index.h"
#include "migrate.h"
#include "log.h"
#include "notify.h"
#include "nstats.h"
#include "proxy.h"
#include "resolve.h"
#include "pool.h"
#include "sweep.h"
#include "tstats.h"
#include "mem.h"

#define TICK_MS 100
#define STOP_GRACE_MS 5000
#define STOP_SETTLE_MS 1000     /* then for requests in flight (proxy_leave) */
#define STOP_LEAVE_MS 2000      /* then to leave the fleets */
#define STOP_SWEEP_MS 3500      /* after the signal, at least: the index
                                   sweeper's leave (sweep.c) */
#define PROXY_THREADS_DEFAULT 0         /* one per online core, at most 8 */
#define PROXY_THREADS_AUTO_MAX 8        /* threads: 0 / -T 0 */
#define TRIM_AFTER_BYTES (16u << 20)    /* client input freed before a trim */
#define ACCEPT_PAUSE_MIN_MS 100         /* out of descriptors: pause, doubling */
#define ACCEPT_PAUSE_MAX_MS 1000

/* A config the threads share: each thread that may point into it holds a
 * reference; the last one to let it go frees it. */
struct conf_ref {
    struct config *conf;
    uint32_t refs;              /* atomic */
};

/* Configs replaced by a reload, kept while a pool of this thread still
 * points into them (a pool a reload removed, closing: pool.conf);
 * confs_reap lets each go once none does. Nothing else keeps a pointer into
 * a config: the index, the sweeper, the rebuild and the backends copy what
 * they need. */
struct old_config {
    struct conf_ref *ref;
    struct old_config *next;
};

/* One event-loop thread's configs: the current one and those replaced. */
struct loop_confs {
    struct conf_ref *cur;
    struct old_config *old;
};

/* A message from the home thread to a request worker (a pointer through its
 * pipe; the worker frees it). */
enum wmsg_kind { WMSG_STOP, WMSG_RELOAD, WMSG_BALANCE };
struct wmsg {
    enum wmsg_kind kind;
    struct conf_ref *conf;      /* RELOAD: a reference for the worker */
    struct ring **rings;        /* RELOAD: a reference per pool of conf */
    struct hub **hubs;          /* RELOAD: per pool of conf, the home pool's
                                   hub (a reference), or NULL */
    bool spread;                /* BALANCE: more threads serve than before */
};

/*
 * A request worker: threads 1..N-1 (docs/ARCHITECTURE.md, "Threads"). Its
 * worker (event loop, pools, clients, backends) is made on the home thread
 * before the thread starts (listeners bind before privileges are dropped)
 * and used only by the thread from then on; the home thread reaches it
 * only through its pipe.
 */
struct wthread {
    pthread_t tid;
    bool started;
    struct worker w;
    struct loop_confs confs;
    int pipe[2];                /* [1]: home writes struct wmsg pointers */
    struct event *msg_ev;
    uint64_t stop_deadline;
    int done;                   /* atomic: its loop ended */
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
    struct config *conf;        /* current: confs.cur->conf */
    struct loop_confs confs;
    struct worker w;            /* the home thread's */
    uint32_t nthreads;          /* event-loop threads, home included */
    struct wthread *thr;        /* [1..nthreads-1]; NULL with one thread */
    struct admin *admin;        /* NULL: no admin port */
    struct nstats *nstats;      /* NULL: no stats port */
    struct event *sig_hup, *sig_usr1, *sig_term, *sig_int;
    uint64_t stop_deadline;
    bool clients_closed;        /* stopping: the grace is over */
    bool left_fleet;            /* stopping: mig_leave called (proxy_leave) */
    uint64_t leave_deadline;    /* ... and exit by then */
    uint64_t reloads, reload_failures;
    /* Threads: how many serve (balance.h, proxy_balance) */
    struct balance bal;
    uint64_t bal_next;          /* the next look at the threads */
    uint64_t bal_win_start;     /* 0: no window open */
    uint64_t bal_req0;          /* the threads' commands then */
    uint64_t *bal_busy0;        /* [nthreads]: each one's busy ns then */
    uint64_t *bal_busy;         /* [nthreads]: and now (scratch) */
    bool bal_blind;             /* schedstat unreadable: said once */
};

static void wthread_send(struct wthread *t, struct wmsg *m);
static bool worker_drained(const struct worker *w);
static bool pool_threaded(const struct conf_pool *c);

/* --- threads: how many serve (docs/ARCHITECTURE.md; balance.h) ----------- */

/* What one loop thread shows the others. Made before the threads start;
 * the atomics are written by their own thread only. */
struct tload {
    struct handoff *inbox;      /* clients handed to it */
    pid_t tid;                  /* atomic: its task (schedstat) */
    uint64_t requests;          /* atomic: commands read, at each turn's end */
    uint32_t clients;           /* atomic: clients it will hold, those leaving
                                   it left out (worker_balance) */
    uint64_t seen_requests;     /* its own: the pools' sum at the last turn */
};

/* Event-loop threads of the process (home included): proxy_main sets it. */
static uint32_t proxy_nthreads = 1;
static struct tload *tloads;    /* [nthreads]; NULL with one thread */
static uint32_t threads_active = 1;     /* atomic: threads 0..n-1 serve */

/* Commands its pools read, counted up across reloads (a pool a reload
 * removed takes its count with it). */
static void tload_turn(struct worker *w)
{
    struct tload *t = &tloads[w->id];
    uint64_t sum = 0, total = __atomic_load_n(&t->requests, __ATOMIC_RELAXED);

    for (uint32_t i = 0; i < w->npools; i++) {
        sum += w->pools[i]->stats[STAT_requests];
    }
    if (sum > t->seen_requests) {
        __atomic_store_n(&t->requests, total + (sum - t->seen_requests), __ATOMIC_RELAXED);
    }
    t->seen_requests = sum;
}

/* This thread serves p: it listens for it and a reload did not remove it. */
static bool pool_serves(const struct pool *p)
{
    return !p->closing && p->listener != NULL;
}

/* A client of p this thread may hand over: p is served here, and may be by
 * other threads (on the home thread, only a pool every thread may serve). */
static bool pool_movable(const struct pool *p)
{
    return pool_serves(p) && (p->w->id != 0 || pool_threaded(p->conf));
}

/* Whether this thread serves p, for the others (tstats.h): called whenever
 * its listener opens or closes. */
static void pool_publish_serving(const struct pool *p)
{
    if (tloads != NULL) {
        tstats_pool_serving(p->name, p->w->id, pool_serves(p));
    }
}

/* Where a client of p on w would go: of the serving threads that serve p
 * too (not w), the one with the fewest clients; UINT32_MAX: none. */
static uint32_t pool_destination(const struct worker *w, const struct pool *p)
{
    uint32_t active = __atomic_load_n(&threads_active, __ATOMIC_ACQUIRE);
    uint32_t best = UINT32_MAX, fewest = UINT32_MAX;
    uint64_t serving;

    if (!pool_movable(p)) {
        return UINT32_MAX;
    }
    serving = tstats_pool_servers(p->name);
    for (uint32_t i = 0; i < active && i < proxy_nthreads; i++) {
        uint32_t n = __atomic_load_n(&tloads[i].clients, __ATOMIC_RELAXED) +
                     handoff_pending(tloads[i].inbox);
        if (i != w->id && (serving >> i & 1) && n < fewest) {
            best = i, fewest = n;
        }
    }
    return best;
}

/* That thread's inbox, reserved (handoff.h); NULL: none takes it. */
static struct handoff *worker_move_to(struct worker *w, const struct pool *p)
{
    uint32_t to = pool_destination(w, p);

    if (to == UINT32_MAX || !handoff_reserve(tloads[to].inbox)) {
        return NULL;
    }
    return tloads[to].inbox;
}

/* A client another thread handed over: to this thread's pool of that name.
 * None (a reload removed it since the sender looked): closed. */
static void worker_take(void *arg, struct handoff_move *m)
{
    struct worker *w = arg;

    for (uint32_t i = 0; i < w->npools; i++) {
        if (!w->pools[i]->closing && strcmp(w->pools[i]->name, m->pool) == 0) {
            client_adopt(w->pools[i], m);
            return;
        }
    }
    log_limited(LOG_WARN, 10, "proxy", "thread %u: pool %s: a client handed over "
                "finds no such pool here; closing it", w->id, m->pool);
    if (m->in != NULL) {        /* counted in by the thread that accepted it */
        tstats_client_left(m->pool);
    }
    handoff_move_free(m);
}

/*
 * Each tick, and at once when the serving count changes: how many clients w
 * will hold (those it could hand over, less those on their way out), and
 * which it hands over. A parked thread hands over all of them that have
 * somewhere to go. A serving thread hands over those past an even share
 * (the total's, rounded up) only when the count grew (spread): new
 * connections are spread by the kernel over the listeners, and parked
 * threads pass theirs to the serving thread with the fewest, so serving
 * threads are never reshuffled otherwise.
 */
static void worker_balance(struct worker *w, bool spread)
{
    uint32_t active = __atomic_load_n(&threads_active, __ATOMIC_ACQUIRE);
    uint32_t held = 0, leaving = 0, total = 0, share, stay;
    bool parked = w->id >= active;

    if (tloads == NULL) {
        return;
    }
    for (uint32_t i = 0; i < w->npools; i++) {
        struct client *c;
        if (!pool_movable(w->pools[i])) {
            continue;
        }
        TAILQ_FOREACH(c, &w->pools[i]->clients, link) {
            held += !c->is_link;
            leaving += !c->is_link && c->moving;
        }
    }
    stay = held - leaving;
    __atomic_store_n(&tloads[w->id].clients, stay, __ATOMIC_RELAXED);
    if (w->stopping || (!parked && !spread)) {
        return;
    }
    for (uint32_t i = 0; i < proxy_nthreads; i++) {
        total += __atomic_load_n(&tloads[i].clients, __ATOMIC_RELAXED) +
                 handoff_pending(tloads[i].inbox);
    }
    share = parked ? 0 : (total + active - 1) / active;
    for (uint32_t i = 0; i < w->npools && stay > share; i++) {
        struct client *c;
        if (pool_destination(w, w->pools[i]) == UINT32_MAX) {
            continue;   /* (a pool only this thread serves: its clients stay) */
        }
        TAILQ_FOREACH(c, &w->pools[i]->clients, link) {
            if (stay <= share) {
                break;
            }
            if (!c->is_link && !c->moving && client_move(c)) {
                stay--;
            }
        }
    }
    __atomic_store_n(&tloads[w->id].clients, stay, __ATOMIC_RELAXED);
}

/* A connection accepted by a thread that does not serve: to one that does. */
static bool worker_pass_accept(struct worker *w, struct pool *p, int fd,
                               const struct sockaddr *sa, int salen)
{
    struct handoff *to;
    struct handoff_move *m;

    if (tloads == NULL || w->id < __atomic_load_n(&threads_active, __ATOMIC_ACQUIRE) ||
        w->stopping || salen > (int)sizeof(m->sa) || (to = worker_move_to(w, p)) == NULL) {
        return false;
    }
    if ((m = calloc(1, sizeof(*m))) == NULL || (m->pool = strdup(p->name)) == NULL) {
        free(m);
        handoff_cancel(to);
        return false;
    }
    m->fd = fd;
    memcpy(&m->sa, sa, (size_t)salen);
    m->salen = salen;
    tstats_threads_moved();
    handoff_send(to, m);
    return true;
}

/* This thread's run and run-queue time, ns (0: unknown). */
static uint64_t task_busy_ns(pid_t tid)
{
    char path[64], buf[128];
    unsigned long long run = 0, wait = 0;
    ssize_t n;
    int fd;

    snprintf(path, sizeof(path), "/proc/self/task/%ld/schedstat", (long)tid);
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
        return 0;
    }
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0) {
        return 0;
    }
    buf[n] = '\0';
    if (sscanf(buf, "%llu %llu", &run, &wait) != 2) {
        return 0;
    }
    return run + wait;
}

/* How many threads serve, for balance_init: --threads-active, else the
 * file's threads_active; 0 = auto, else a count of at most nthreads. */
static uint32_t conf_threads_active(const struct proxy_options *o, const struct config *c,
                                    uint32_t nthreads)
{
    int64_t v = o->threads_active != PROXY_ACTIVE_UNSET ? o->threads_active :
                c->threads_active;

    if (v == CONF_ACTIVE_ALL) {
        return nthreads;
    }
    if (v > (int64_t)nthreads) {
        log_warn("config", "threads_active: %lld, but %u threads run; all of them serve",
                 (long long)v, nthreads);
        return nthreads;
    }
    return v > 0 ? (uint32_t)v : 0;
}

/* The home thread: what balance says, to every thread; a changed count
 * starts the moves at once (each thread's worker_balance), not at the
 * threads' next ticks. */
static void threads_publish(struct proxy *px)
{
    const struct balance *b = &px->bal;
    uint32_t was = __atomic_exchange_n(&threads_active, b->active, __ATOMIC_ACQ_REL);

    tstats_threads_set(b->active, b->trials, b->undone);
    if (was == b->active || px->thr == NULL) {
        return;
    }
    worker_balance(&px->w, b->active > was);
    for (uint32_t t = 1; t < px->nthreads; t++) {
        struct wmsg *m = rp_xcalloc(1, sizeof(*m), "a message to a worker thread");
        m->kind = WMSG_BALANCE;
        m->spread = b->active > was;
        wthread_send(&px->thr[t], m);
    }
}

/* Each thread's inbox and load record, before the threads start. Returns 0,
 * or -1 (out of memory or descriptors). */
static int threads_setup(struct proxy *px)
{
    if (px->nthreads < 2) {
        return 0;
    }
    tloads = rp_xcalloc(px->nthreads, sizeof(*tloads), "the threads' loads");
    px->bal_busy0 = rp_xcalloc(px->nthreads, sizeof(*px->bal_busy0), "the threads' loads");
    px->bal_busy = rp_xcalloc(px->nthreads, sizeof(*px->bal_busy), "the threads' loads");
    for (uint32_t i = 0; i < px->nthreads; i++) {
        struct worker *w = i == 0 ? &px->w : &px->thr[i].w;
        if ((tloads[i].inbox = handoff_new(w->base, worker_take, w)) == NULL) {
            return -1;
        }
        w->inbox = tloads[i].inbox;
        w->move_to = worker_move_to;
    }
    tloads[0].tid = gettid();
    for (uint32_t i = 0; i < px->nthreads; i++) {
        const struct worker *w = i == 0 ? &px->w : &px->thr[i].w;
        for (uint32_t j = 0; j < w->npools; j++) {
            pool_publish_serving(w->pools[j]);
        }
    }
    balance_init(&px->bal, px->nthreads,
                 conf_threads_active(px->opts, px->conf, px->nthreads));
    threads_publish(px);
    return 0;
}

/*
 * The home thread, each loop turn: every BAL_WINDOW_MS, what the threads
 * did (commands read by all, how busy each serving one was: on a core or
 * waiting for one, /proc's schedstat) goes to balance_step, and the count
 * it answers is what the threads obey from their next tick (worker_balance).
 * A change is not measured for BAL_SETTLE_MS, while the clients move.
 */
static void proxy_balance(struct proxy *px)
{
    struct worker *w = &px->w;
    uint64_t now = worker_now_ms(w), req = 0;
    uint32_t n = px->nthreads;

    if (tloads == NULL || w->stopping || px->bal.fixed > 0 || now < px->bal_next) {
        return;
    }
    uint64_t *busy = px->bal_busy;
    for (uint32_t i = 0; i < n; i++) {
        pid_t tid = __atomic_load_n(&tloads[i].tid, __ATOMIC_RELAXED);
        req += __atomic_load_n(&tloads[i].requests, __ATOMIC_RELAXED);
        busy[i] = task_busy_ns(tid);
        if (busy[i] == 0 && tid != 0 && !px->bal_blind) {
            /* Never busy, so never a thread more: say so once. */
            px->bal_blind = true;
            log_warn("proxy", "threads_active: auto cannot read /proc/self/task/%ld/"
                     "schedstat (no /proc, or a kernel without schedstats), so it "
                     "sees no thread busy and serves on one; set threads_active to a "
                     "count to use more", (long)tid);
        }
    }
    if (px->bal_win_start != 0 && now > px->bal_win_start) {
        struct bal_sample smp = { .ms = now - px->bal_win_start,
                                  .requests = req - px->bal_req0, .min_busy = 1.0 };
        uint32_t was = px->bal.active;
        for (uint32_t i = 0; i < was && i < n; i++) {
            double b = busy[i] > px->bal_busy0[i] ?
                       (double)(busy[i] - px->bal_busy0[i]) / ((double)smp.ms * 1e6) : 0;
            smp.min_busy = b < smp.min_busy ? b : smp.min_busy;
            smp.max_busy = b > smp.max_busy ? b : smp.max_busy;
        }
        balance_step(&px->bal, &smp, now);
        threads_publish(px);
        if (px->bal.active != was) {
            log_info("proxy", "threads: %u of %u serve (%.0f commands/s, the least busy "
                     "serving thread %.0f%% busy%s)", px->bal.active, n,
                     (double)smp.requests * 1000.0 / (double)smp.ms, smp.min_busy * 100,
                     px->bal.state == BAL_TRIAL ? "; a trial" : "");
            px->bal_win_start = 0;
            px->bal_next = now + BAL_SETTLE_MS;
            return;
        }
    }
    px->bal_win_start = now;
    px->bal_req0 = req;
    memcpy(px->bal_busy0, busy, n * sizeof(*busy));
    px->bal_next = now + (px->bal.state == BAL_TRIAL ? BAL_TRIAL_MS : BAL_WINDOW_MS);
}

static bool wthreads_done(const struct proxy *px);

static void on_accept(struct evconnlistener *l, evutil_socket_t fd,
                      struct sockaddr *sa, int salen, void *arg)
{
    struct pool *p = arg;

    (void)l;
    p->accept_backoff_ms = 0;
    if (!worker_pass_accept(p->w, p, fd, sa, salen)) {
        client_accept(p, fd, sa, salen);
    }
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
 * A TCP listener has SO_REUSEPORT unless the pool says `reuseport: false`:
 * a new process can bind the same port and serve next to this one
 * (docs/ARCHITECTURE.md, "Binary upgrade"). A unix path is taken over.
 */
static struct evconnlistener *listener_open(struct pool *p,
                                            const struct conf_pool *conf,
                                            uint64_t *dev, uint64_t *ino,
                                            char *err, size_t errlen)
{
    const struct conf_addr *a = &conf->listen;
    unsigned flags = LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE |
                     LEV_OPT_CLOSE_ON_EXEC | (p->ready ? 0 : LEV_OPT_DISABLED) |
                     (conf->reuseport && !a->is_unix ? LEV_OPT_REUSEABLE_PORT : 0);
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
    pool_publish_serving(p);
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
    pool_publish_serving(p);
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

/* A copy's link (hub.h). An abstract unix socket has no file mode: any
 * local process could connect, and a link is not counted as a client nor
 * ever timed out, so only this process's own threads are served. */
static void on_link_accept(struct evconnlistener *l, evutil_socket_t fd,
                           struct sockaddr *sa, int salen, void *arg)
{
    struct pool *p = arg;
    struct ucred cred;
    socklen_t len = sizeof(cred);

    (void)l, (void)sa, (void)salen;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || cred.pid != getpid()) {
        log_limited(LOG_WARN, 10, "proxy", "%s: refused a connection to the threads' "
                    "link from pid %ld: not this process", p->name,
                    len == sizeof(cred) ? (long)cred.pid : -1L);
        close(fd);
        return;
    }
    client_accept_link(p, fd);
}

/*
 * An indexed pool served by several threads (hub.h): the hub its copies
 * will share, and the link they reach this thread by, a unix socket in
 * Linux's abstract namespace (no file to clean up; the name holds the pid
 * and a random number, so a binary upgrade's two processes never meet).
 * Returns the hub (its reference) or NULL with why in err.
 */
static struct hub *proxy_pool_hub(struct worker *w, struct pool *p, char *err,
                                  size_t errlen)
{
    static uint32_t seq;
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    char name[sizeof(sun.sun_path)];
    uint64_t rnd = 0;

    if (getrandom(&rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
        rnd = rp_clock_ms() ^ ((uint64_t)getpid() << 32);
    }
    snprintf(name, sizeof(name), "@ringproxy.%ld.%016llx.%u", (long)getpid(),
             (unsigned long long)rnd, seq++);
    memcpy(sun.sun_path + 1, name + 1, strlen(name) - 1);
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(name));
    struct hub *h = hub_new(proxy_nthreads, name);
    if (h == NULL) {
        snprintf(err, errlen, "out of memory or descriptors");
        return NULL;
    }
    p->link_listener = evconnlistener_new_bind(w->base, on_link_accept, p,
                                               LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC,
                                               128, (struct sockaddr *)&sun, (int)len);
    if (p->link_listener == NULL) {
        snprintf(err, errlen, "cannot listen for the threads' link: %s", strerror(errno));
        hub_unref(h);
        return NULL;
    }
    return h;
}

/* A new pool, listening (disabled until ready), not yet in w->pools. */
/* ring: built already (a reload), its reference taken; or NULL. hub: on a
 * request worker, the home pool's for an indexed pool (a reference this
 * call does not take), else NULL. */
static struct pool *proxy_new_pool(struct worker *w, struct conf_pool *conf,
                                   struct ring *ring, struct hub *hub, char *err,
                                   size_t errlen)
{
    struct pool *p = calloc(1, sizeof(*p));
    struct hub *own = NULL;

    if (p == NULL) {
        ring_unref(ring);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    /* Even while the home thread serves it alone (a unix socket, `reuseport:
     * false`): a reload that lets every thread serve it finds the hub its
     * copies need, as it cannot add one to a running pool. */
    if (w->id == 0 && proxy_nthreads > 1 && conf->index.enabled &&
        (hub = own = proxy_pool_hub(w, p, err, errlen)) == NULL) {
        ring_unref(ring);
        free(p);
        return NULL;
    }
    if (w->id != 0 && conf->index.enabled && hub == NULL) {
        ring_unref(ring);
        free(p);
        snprintf(err, errlen, "no home pool to link to");
        return NULL;
    }
    struct evconnlistener *link = p->link_listener;
    int rc = pool_init(p, w, conf, ring, hub, err, errlen);
    p->link_listener = link;    /* pool_init cleared it; pool_close frees it */
    hub_unref(own);             /* the pool holds its own reference */
    if (rc != 0 || pool_listen(p, err, errlen) != 0) {
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
    if (w->id != 0) {
        log_debug("proxy", "pool %s: thread %u listening on %s", p->name, w->id,
                  p->conf->listen.text);
        return;
    }
    pool_conf_warn(p->conf);
    log_notice("proxy", "pool %s: listening on %s, %u servers, %u ring points, "
               "hash %s, compat %s%s", p->name, p->conf->listen.text,
               p->ring->nservers, p->ring->npoints, hash_names[p->ring->hash],
               ring_compat_names[p->ring->compat],
               p->ready ? "" : " (serving once Redis says which ring the data obeys)");
}

static int proxy_add_pool(struct worker *w, struct conf_pool *conf, struct hub *hub,
                          char *err, size_t errlen)
{
    struct pool **pools = realloc(w->pools, (w->npools + 1) * sizeof(*pools));
    struct pool *p;

    if (pools == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    w->pools = pools;
    if ((p = proxy_new_pool(w, conf, NULL, hub, err, errlen)) == NULL) {
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
    /* What this turn changed reaches the other threads before the replies
     * that tell of it (a phase, the fence: hub.h); and again at the end
     * for what the flush itself produced. */
    for (uint32_t i = 0; i < w->npools; i++) {
        pool_hub_turn(w->pools[i]);
    }
    for (;;) {
        /* The turn's Redis records of the moves (a copy that cannot be
         * recorded fails, which may answer a client's waiting command). */
        for (uint32_t i = 0; i < w->npools; i++) {
            mig_flush(w->pools[i]->mig);
        }
        if (TAILQ_EMPTY(&w->dirty_conns) && TAILQ_EMPTY(&w->dirty_clients) &&
            defer_pending(w->defer) == 0) {
            break;
        }
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
        pool_hub_turn(w->pools[i]);
    }
    tstats_publish_pools(w->id, w->pools, w->npools);  /* no-op: one thread */
    if (tloads != NULL) {
        tload_turn(w);
    }
}

/* Every client of a stopping proxy is closed once idle (client_stop); asked
 * again on each tick for those whose last request ended without a reply. */
static void proxy_stop_clients(struct worker *w)
{
    for (uint32_t i = 0; i < w->npools; i++) {
        struct client *c, *next;
        for (c = TAILQ_FIRST(&w->pools[i]->clients); c != NULL; c = next) {
            next = TAILQ_NEXT(c, link);
            client_stop(c);
        }
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
        pool_hub_tick(p, now);
        adopt_tick(p->adopt, now);
        pool_sweep_tick(p, now);
        pool_retire_backends(p);
    }
    proxy_reap_pools(w);
    if (w->stopping) {
        proxy_stop_clients(w);
    }
    worker_balance(w, false);
    tstats_publish(w->id, w->pools, w->npools);
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

/*
 * Take the connections already in the listener's queue before closing it:
 * closing a listener resets every connection its queue holds, and with
 * SO_REUSEPORT the kernel queued some of them here while a new process
 * listened next to us. They are served like the other clients of a stopping
 * proxy. A connection that completes between the last accept and the close
 * is still reset, unless net.ipv4.tcp_migrate_req hands it to the other
 * listener (docs/ARCHITECTURE.md, "Binary upgrade").
 */
static void listener_take_queue(struct pool *p)
{
    if (p->listener == NULL || !p->ready || p->accept_backoff_ms != 0) {
        return;     /* not accepting now: the queue was never ours to serve */
    }
    int lfd = evconnlistener_get_fd(p->listener);
    for (uint32_t n = 0; n < (uint32_t)p->conf->backlog + 64; n++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        int fd = accept4(lfd, (struct sockaddr *)&ss, &len,
                         SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            break;  /* EAGAIN: empty; anything else: the close resets it */
        }
        client_accept(p, fd, (struct sockaddr *)&ss, (int)len);
    }
}

/*
 * SIGTERM: stop accepting at once, answer what the clients sent, close each
 * client connection when it is idle between requests (after STOP_GRACE_MS,
 * whatever it does), leave the fleet once it serves nothing (proxy_leave),
 * and exit once it left. A binary upgrade is a new process started on the
 * same ports, then this (docs/ARCHITECTURE.md).
 */
static void worker_stop(struct worker *w)
{
    for (uint32_t i = 0; i < w->npools; i++) {
        listener_take_queue(w->pools[i]);
    }
    w->stopping = true;
    if (w->inbox != NULL) {
        handoff_close(w->inbox);    /* a client on its way still comes */
    }
    for (uint32_t i = 0; i < w->npools; i++) {
        struct pool *p = w->pools[i];
        sweep_leave(p->sweep);  /* another proxy may sweep */
        pool_unlisten(p);
    }
    proxy_stop_clients(w);
}

/* Nothing of w's pools is on its way to a backend (a closed client's
 * requests run to their end: request_orphan). */
static bool worker_quiet(const struct worker *w)
{
    for (uint32_t i = 0; i < w->npools; i++) {
        if (w->pools[i]->inflight_now + w->pools[i]->inflight_old != 0) {
            return false;
        }
    }
    return true;
}

/*
 * A stopping proxy stays a proxy of each pool's fleet (heartbeat,
 * acknowledgements, its migration's rules) while it serves the clients it
 * has: one that left would have to refuse their commands on a changing
 * key, and could not even tell a key changes once the fleet resized
 * without it. So it leaves only once it serves nothing: every client gone
 * (each worker thread's too: copies forward through the home thread's
 * links, which end with their threads) and what they sent landed. When the
 * stop's grace is over, the clients left are closed first (the workers
 * close theirs as their loops end at the same deadline); requests still in
 * flight then get STOP_SETTLE_MS. Then it exits once it left (mig_left and
 * the others: worker_idle), or at leave_deadline (docs/ARCHITECTURE.md,
 * "Binary upgrade"). True once left.
 */
static bool proxy_leave(struct proxy *px)
{
    struct worker *w = &px->w;
    uint64_t now = worker_now_ms(w);

    if (px->left_fleet) {
        return true;
    }
    if (now >= px->stop_deadline && !px->clients_closed) {
        px->clients_closed = true;
        for (uint32_t i = 0; i < w->npools; i++) {
            struct client *c, *next;
            for (c = TAILQ_FIRST(&w->pools[i]->clients); c != NULL; c = next) {
                next = TAILQ_NEXT(c, link);
                if (!c->is_link) {
                    client_close(c, "the stop's grace is over");
                }
            }
        }
    }
    if (!(worker_drained(w) && wthreads_done(px) && worker_quiet(w)) &&
        now < px->stop_deadline + STOP_SETTLE_MS) {
        return false;
    }
    px->left_fleet = true;
    /* The index sweeper, which left at the signal, may need its own time
     * to put entries back (sweep.c, SWEEP_LEAVE_TIMEOUT_MS). */
    uint64_t signal_at = px->stop_deadline - STOP_GRACE_MS;
    px->leave_deadline = now + STOP_LEAVE_MS;
    if (px->leave_deadline < signal_at + STOP_SWEEP_MS) {
        px->leave_deadline = signal_at + STOP_SWEEP_MS;
    }
    for (uint32_t i = 0; i < w->npools; i++) {
        mig_leave(w->pools[i]->mig);
    }
    return true;
}

static void proxy_stop(struct proxy *px, const char *why)
{
    struct worker *w = &px->w;

    if (w->stopping) {
        return;
    }
    log_notice("proxy", "stopping (%s): finishing in-flight requests", why);
    notify_stopping();
    for (uint32_t t = 1; t < px->nthreads; t++) {
        struct wmsg *m = rp_xcalloc(1, sizeof(*m), "a message to a worker thread");
        m->kind = WMSG_STOP;
        wthread_send(&px->thr[t], m);
    }
    px->stop_deadline = worker_now_ms(w) + STOP_GRACE_MS;
    admin_unlisten(px->admin);
    worker_stop(w);
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
        if (p->mig == NULL && p->link == NULL &&
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
    if (p->link != NULL) {
        /* A copy routes by what its home pool publishes (hub.h). */
        ring_unref(pl->ring);
        return;
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
static struct conf_ref *conf_ref_new(struct config *c, uint32_t refs)
{
    struct conf_ref *r = rp_xcalloc(1, sizeof(*r), "a config's reference");

    r->conf = c;
    r->refs = refs;
    return r;
}

static void conf_ref_put(struct conf_ref *r)
{
    if (r != NULL && __atomic_sub_fetch(&r->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        config_free(r->conf);
        free(r);
    }
}

static bool confs_used(const struct worker *w, const struct config *c)
{
    for (uint32_t i = 0; i < w->npools; i++) {
        uintptr_t pc = (uintptr_t)w->pools[i]->conf, lo = (uintptr_t)c->pools;
        if (pc >= lo && pc < lo + c->npools * sizeof(*c->pools)) {
            return true;
        }
    }
    return false;
}

/* Let go of the replaced configs no pool of w points into any more. */
static void confs_reap(struct worker *w, struct loop_confs *lc)
{
    for (struct old_config **op = &lc->old; *op != NULL;) {
        struct old_config *o = *op;
        if (confs_used(w, o->ref->conf)) {
            op = &o->next;
            continue;
        }
        *op = o->next;
        conf_ref_put(o->ref);
        free(o);
    }
}

/* ref (a reference for this thread) becomes current; the current one is
 * kept while pools point into it. */
static void confs_replace(struct worker *w, struct loop_confs *lc, struct conf_ref *ref)
{
    struct old_config *old = rp_xcalloc(1, sizeof(*old), "a replaced config");

    old->ref = lc->cur;
    old->next = lc->old;
    lc->old = old;
    lc->cur = ref;
    confs_reap(w, lc);
}

static void confs_free(struct loop_confs *lc)
{
    for (struct old_config *o = lc->old, *next; o != NULL; o = next) {
        next = o->next;
        conf_ref_put(o->ref);
        free(o);
    }
    lc->old = NULL;
    conf_ref_put(lc->cur);
    lc->cur = NULL;
}

/* Is this pool served by every thread (each with its own listener on the
 * port, clients and backends), or by the home thread alone? A unix socket
 * or `reuseport: false` cannot be opened twice. (An indexed pool's index
 * writer and migration stay on the home thread: hub.h.) */
static bool pool_threaded(const struct conf_pool *c)
{
    return !c->listen.is_unix && c->reuseport;
}

/* Does thread w serve this pool of the file? */
static bool worker_serves(const struct worker *w, const struct conf_pool *c)
{
    return w->id == 0 || pool_threaded(c);
}

/*
 * Apply config nc to the pools thread w serves (nc's pools it serves: every
 * one on the home thread, the threaded ones on a worker). rings: nc's ring
 * per pool, references this call takes (each set to NULL). Returns 0, or -1
 * with nothing changed, why in err and the pool that failed in *failed.
 */
static int loop_apply(struct worker *w, const struct config *nc, struct ring **rings,
                      struct hub **hubs, char *err, size_t errlen, const char **failed)
{
    struct pool_plan *plans = calloc(nc->npools, sizeof(*plans));
    struct pool **pools = realloc(w->pools, (w->npools + nc->npools) *
                                  sizeof(*pools));

    snprintf(err, errlen, "out of memory");
    *failed = NULL;
    if (pools != NULL) {
        w->pools = pools;       /* room for every pool that may be new */
    }
    if (plans == NULL || pools == NULL) {
        *failed = "";
        goto refuse;
    }
    for (uint32_t i = 0; i < nc->npools; i++) {
        struct pool_plan *pl = &plans[i];
        struct ring *ring = rings[i];
        rings[i] = NULL;
        if (!worker_serves(w, &nc->pools[i])) {
            ring_unref(ring);
            continue;
        }
        pl->conf = &nc->pools[i];
        for (uint32_t j = 0; j < w->npools; j++) {
            if (!w->pools[j]->closing && strcmp(w->pools[j]->name, pl->conf->name) == 0) {
                pl->p = w->pools[j];
            }
        }
        if (pl->p != NULL) {
            if (plan_pool(pl, ring, err, errlen) != 0) {
                *failed = pl->conf->name;
                goto refuse;
            }
        } else if ((pl->p = proxy_new_pool(w, pl->conf, ring, hubs != NULL ? hubs[i] : NULL,
                                           err, errlen)) != NULL) {
            pl->is_new = true;
        } else {
            *failed = pl->conf->name;
            goto refuse;
        }
    }

    for (uint32_t i = 0; i < nc->npools; i++) {
        if (plans[i].p == NULL) {
            continue;
        }
        if (plans[i].is_new) {
            proxy_start_pool(w, plans[i].p);
        } else {
            plan_commit(&plans[i]);
        }
    }
    for (uint32_t j = 0; j < w->npools; j++) {
        struct pool *p = w->pools[j];
        const struct conf_pool *keep = config_pool(nc, p->name);
        if (!p->closing && (keep == NULL || !worker_serves(w, keep))) {
            struct client *c, *next;
            log_write(w->id == 0 ? LOG_NOTICE : LOG_DEBUG, "reload",
                      "pool %s: removed from the config; closing after "
                      "in-flight replies", p->name);
            p->closing = true;
            pool_unlisten(p);
            for (c = TAILQ_FIRST(&p->clients); c != NULL; c = next) {
                next = TAILQ_NEXT(c, link);
                client_drain(c, "pool removed");
            }
        }
    }
    free(plans);
    return 0;

refuse:
    for (uint32_t i = 0; i < nc->npools; i++) {
        ring_unref(rings[i]);
        rings[i] = NULL;
        if (plans != NULL) {
            plan_discard(&plans[i]);
        }
    }
    free(plans);
    return -1;
}

/* Per pool of nc: the home pool's hub (a reference), or NULL. */
static struct hub **proxy_hubs(const struct worker *w, const struct config *nc)
{
    struct hub **hubs = rp_xcalloc(nc->npools ? nc->npools : 1, sizeof(*hubs),
                                   "a reload's hubs");

    for (uint32_t i = 0; i < nc->npools; i++) {
        for (uint32_t j = 0; j < w->npools; j++) {
            const struct pool *p = w->pools[j];
            if (!p->closing && p->hub != NULL && strcmp(p->name, nc->pools[i].name) == 0) {
                hubs[i] = hub_ref(p->hub);
            }
        }
    }
    return hubs;
}

static void hubs_free(struct hub **hubs, uint32_t n)
{
    for (uint32_t i = 0; hubs != NULL && i < n; i++) {
        hub_unref(hubs[i]);
    }
    free(hubs);
}

static void wthread_send(struct wthread *t, struct wmsg *m)
{
    ssize_t n;

    do {
        n = write(t->pipe[1], &m, sizeof(m));   /* atomic: under PIPE_BUF */
    } while (n < 0 && errno == EINTR);
    rp_xcheck(n == (ssize_t)sizeof(m), "a message to a worker thread");
}

/*
 * A reload is applied by the home thread first, all or nothing; then each
 * worker applies it to the pools it serves, with references of its own to
 * the config and the rings. Pools pointing into the config replaced keep it
 * until each thread's last such pool is gone (conf_ref).
 */
static void proxy_apply(struct proxy *px, struct config *nc, struct ring **rings)
{
    struct worker *w = &px->w;
    struct ring ***copies = rp_xcalloc(px->nthreads, sizeof(*copies), "a reload's rings");
    const char *failed = NULL;
    char err[256];

    if (px->opts->threads < 0 && nc->threads != px->conf->threads) {
        log_warn("reload", "threads: a new thread count needs a restart; "
                 "%u threads go on serving", px->nthreads);
    }
    for (uint32_t t = 1; t < px->nthreads; t++) {
        copies[t] = rp_xcalloc(nc->npools ? nc->npools : 1, sizeof(**copies),
                               "a reload's rings");
        for (uint32_t i = 0; i < nc->npools; i++) {
            copies[t][i] = rings[i] != NULL ? ring_ref(rings[i]) : NULL;
        }
    }
    if (loop_apply(w, nc, rings, NULL, err, sizeof(err), &failed) != 0) {
        px->reload_failures++;
        log_error("reload", "%s%s%s: %s; nothing changed, the running config stays",
                  px->opts->conf_path, failed && *failed ? ": pool " : "",
                  failed && *failed ? failed : "", err);
        for (uint32_t t = 1; t < px->nthreads; t++) {
            for (uint32_t i = 0; i < nc->npools; i++) {
                ring_unref(copies[t][i]);
            }
            free(copies[t]);
        }
        free(copies);
        config_free(nc);
        return;
    }
    struct conf_ref *ref = conf_ref_new(nc, px->nthreads);
    for (uint32_t t = 1; t < px->nthreads; t++) {
        struct wmsg *m = rp_xcalloc(1, sizeof(*m), "a message to a worker thread");
        m->kind = WMSG_RELOAD;
        m->conf = ref;
        m->rings = copies[t];
        m->hubs = proxy_hubs(w, nc);
        wthread_send(&px->thr[t], m);
    }
    free(copies);
    if (tloads != NULL && px->opts->threads_active != PROXY_ACTIVE_UNSET &&
        nc->threads_active != px->conf->threads_active) {
        log_notice("reload", "threads_active: the file's new value is not applied: "
                   "--threads-active overrides it");
    } else if (tloads != NULL && nc->threads_active != px->conf->threads_active) {
        balance_set_fixed(&px->bal, conf_threads_active(px->opts, nc, px->nthreads));
        threads_publish(px);
        px->bal_win_start = 0;
        px->bal_next = worker_now_ms(w) + BAL_SETTLE_MS;
        log_notice("reload", "threads_active: %s; %u of %u threads serve now",
                   px->bal.fixed == 0 ? "auto" : "fixed", px->bal.active, px->nthreads);
    }
    px->conf = nc;
    confs_replace(w, &px->confs, ref);
    px->reloads++;
    log_notice("reload", "%s applied", px->opts->conf_path);
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

/* No client left on w (links included: a worker's closes as it ends), none
 * on its way to it (handoff.h). */
static bool worker_drained(const struct worker *w)
{
    if (w->inbox != NULL && !(w->stopping ? handoff_settled(w->inbox) :
                              handoff_pending(w->inbox) == 0)) {
        return false;
    }
    for (uint32_t i = 0; i < w->npools; i++) {
        if (!TAILQ_EMPTY(&w->pools[i]->clients)) {
            return false;
        }
    }
    return true;
}

/* Drained, and each pool's Redis parts gone from their fleets. */
static bool worker_idle(const struct worker *w)
{
    if (!worker_drained(w)) {
        return false;
    }
    for (uint32_t i = 0; i < w->npools; i++) {
        if (!mig_left(w->pools[i]->mig) || !adopt_left(w->pools[i]->adopt) ||
            !sweep_left(w->pools[i]->sweep)) {
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

/* Does the pid file still name this process? The new process of a binary
 * upgrade wrote its own over it: that one stays. */
static bool pid_file_is_ours(const char *path)
{
    FILE *f = fopen(path, "r");
    long pid = 0;

    if (f == NULL) {
        return false;
    }
    bool ours = fscanf(f, "%ld", &pid) == 1 && pid == (long)getpid();
    fclose(f);
    return ours;
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
    handoff_stop(w->inbox);
    for (uint32_t i = 0; tloads != NULL && i < proxy_nthreads; i++) {
        handoff_free(tloads[i].inbox);      /* every thread has ended */
    }
    free(tloads);
    tloads = NULL;
    free(px->bal_busy0);
    free(px->bal_busy);
    bool shared = px->confs.cur != NULL;    /* else loaded, never shared */
    confs_free(&px->confs);
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
    if (!shared) {
        config_free(px->conf);
    }
    tstats_free();
}

/* --- request workers (docs/ARCHITECTURE.md, "Threads") ------------------ */

static void wthread_on_msg(evutil_socket_t fd, short what, void *arg)
{
    struct wthread *t = arg;
    struct wmsg *m;
    char err[256];
    const char *failed;
    uint32_t npools;

    (void)what;
    while (read(fd, &m, sizeof(m)) == (ssize_t)sizeof(m)) {
        switch (m->kind) {
        case WMSG_STOP:
            if (!t->w.stopping) {
                t->stop_deadline = worker_now_ms(&t->w) + STOP_GRACE_MS;
                worker_stop(&t->w);
            }
            break;
        case WMSG_BALANCE:      /* threads_active changed: now, not at the tick */
            worker_balance(&t->w, m->spread);
            break;
        case WMSG_RELOAD:
            npools = m->conf->conf->npools;     /* m->conf may go below */
            if (loop_apply(&t->w, m->conf->conf, m->rings, m->hubs, err, sizeof(err),
                           &failed) != 0) {
                /* The home thread applied it: this thread now serves the
                 * previous file's settings for the pools it shares. */
                log_error("reload", "thread %u: %s%s: %s; this thread keeps the "
                          "previous config", t->w.id, failed && *failed ? "pool " : "",
                          failed && *failed ? failed : "", err);
                conf_ref_put(m->conf);
            } else {
                confs_replace(&t->w, &t->confs, m->conf);
            }
            free(m->rings);
            hubs_free(m->hubs, npools);
            break;
        }
        free(m);
    }
}

/* Free what the worker thread owned, on that thread. */
static void wthread_teardown(struct wthread *t)
{
    struct worker *w = &t->w;

    /* First, while every event's object is alive (as proxy_free). */
    resolver_quiesce(w->dns);
    for (uint32_t i = 0; w->pools != NULL && i < w->npools; i++) {
        pool_unlisten(w->pools[i]);
        pool_close(w->pools[i]);
    }
    worker_flush(w);
    for (uint32_t i = 0; w->pools != NULL && i < w->npools; i++) {
        free(w->pools[i]);
    }
    free(w->pools);
    w->pools = NULL;
    w->npools = 0;
    handoff_stop(w->inbox);     /* freed with the process: tloads */
    if (t->msg_ev != NULL) {
        event_free(t->msg_ev);
    }
    if (w->tick != NULL) {
        event_free(w->tick);
    }
    defer_free(w->defer);
    resolver_free(w->dns);
    if (w->base != NULL) {
        event_base_free(w->base);
    }
    confs_free(&t->confs);
}

static void *wthread_main(void *arg)
{
    struct wthread *t = arg;
    struct worker *w = &t->w;

    __atomic_store_n(&tloads[w->id].tid, gettid(), __ATOMIC_RELAXED);
    for (;;) {
        event_base_loop(w->base, EVLOOP_ONCE);
        worker_flush(w);
        if (t->confs.old != NULL) {
            confs_reap(w, &t->confs);
        }
        if (w->stopping &&
            (worker_idle(w) || worker_now_ms(w) >= t->stop_deadline)) {
            break;
        }
    }
    wthread_teardown(t);
    __atomic_store_n(&t->done, 1, __ATOMIC_RELEASE);
    return NULL;
}

/* The loop's own parts of a worker: its event base, teardown queue,
 * resolver (its backends connect by name on its own loop: resolve.h), tick.
 * Returns 0, or -1 with why in err. */
static int worker_setup(struct worker *w, uint32_t id, char *err, size_t errlen)
{
    struct timeval tick = { 0, TICK_MS * 1000 };

    w->id = id;
    TAILQ_INIT(&w->dirty_conns);
    TAILQ_INIT(&w->dirty_clients);
    if ((w->base = event_base_new()) == NULL) {
        snprintf(err, errlen, "cannot create the event loop");
        return -1;
    }
    w->defer = defer_new(w->base);
    if ((w->dns = resolver_new(w->base, NULL, err, errlen)) == NULL) {
        return -1;
    }
    w->started = worker_now_ms(w);
    if ((w->tick = event_new(w->base, -1, EV_PERSIST, on_tick, w)) == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    event_add(w->tick, &tick);
    return 0;
}

/*
 * Make the request workers' loops and their pools (each threaded pool with
 * its own listener, bound here: before privileges are dropped). The threads
 * start later (wthreads_start). Returns 0, or -1 with why in err.
 */
static int wthreads_prepare(struct proxy *px, char *err, size_t errlen)
{
    if (px->nthreads < 2) {
        return 0;
    }
    px->thr = rp_xcalloc(px->nthreads, sizeof(*px->thr), "the worker threads");
    for (uint32_t i = 1; i < px->nthreads; i++) {
        px->thr[i].pipe[0] = px->thr[i].pipe[1] = -1;
        px->thr[i].confs.cur = px->confs.cur;   /* its reference: conf_ref_new */
    }
    for (uint32_t id = 1; id < px->nthreads; id++) {
        struct wthread *t = &px->thr[id];
        struct worker *w = &t->w;
        if (worker_setup(w, id, err, errlen) != 0) {
            log_error("proxy", "thread %u: %s", id, err);
            return -1;
        }
        if (pipe2(t->pipe, O_CLOEXEC) != 0 ||
            evutil_make_socket_nonblocking(t->pipe[0]) != 0 ||
            (t->msg_ev = event_new(w->base, t->pipe[0], EV_READ | EV_PERSIST,
                                   wthread_on_msg, t)) == NULL) {
            log_error("proxy", "thread %u: out of memory or descriptors", id);
            return -1;
        }
        event_add(t->msg_ev, NULL);
        for (uint32_t i = 0; i < px->conf->npools; i++) {
            struct conf_pool *c = &px->conf->pools[i];
            struct hub *hub = NULL;
            for (uint32_t j = 0; j < px->w.npools; j++) {
                if (strcmp(px->w.pools[j]->name, c->name) == 0) {
                    hub = px->w.pools[j]->hub;
                }
            }
            if (pool_threaded(c) && proxy_add_pool(w, c, hub, err, errlen) != 0) {
                log_error("proxy", "thread %u: pool %s: %s", id, c->name, err);
                return -1;
            }
        }
    }
    return 0;
}

static int wthreads_start(struct proxy *px)
{
    sigset_t all, old;

    /* Signals go to the home thread (its libevent signal events). */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    for (uint32_t id = 1; id < px->nthreads; id++) {
        struct wthread *t = &px->thr[id];
        if (pthread_create(&t->tid, NULL, wthread_main, t) != 0) {
            pthread_sigmask(SIG_SETMASK, &old, NULL);
            return -1;
        }
        t->started = true;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return 0;
}

static bool wthreads_done(const struct proxy *px)
{
    for (uint32_t id = 1; id < px->nthreads; id++) {
        const struct wthread *t = &px->thr[id];
        if (t->started && !__atomic_load_n(&t->done, __ATOMIC_ACQUIRE)) {
            return false;
        }
    }
    return true;
}

/* Stop (if still running) and join every worker thread; free what was
 * prepared for one that never started. */
static void wthreads_join(struct proxy *px)
{
    if (px->thr == NULL) {      /* never prepared: drop the threads' references */
        for (uint32_t id = 1; px->confs.cur != NULL && id < px->nthreads; id++) {
            conf_ref_put(px->confs.cur);
        }
        px->nthreads = 1;
        return;
    }
    for (uint32_t id = 1; id < px->nthreads; id++) {
        struct wthread *t = &px->thr[id];
        if (t->started) {
            if (!__atomic_load_n(&t->done, __ATOMIC_ACQUIRE)) {
                struct wmsg *m = rp_xcalloc(1, sizeof(*m), "a message to a worker thread");
                m->kind = WMSG_STOP;
                wthread_send(t, m);
            }
            pthread_join(t->tid, NULL);
        } else if (t->w.base != NULL) {
            wthread_teardown(t);
        } else {
            confs_free(&t->confs);
        }
        for (int i = 0; i < 2; i++) {
            if (t->pipe[i] >= 0) {
                close(t->pipe[i]);
            }
        }
    }
    free(px->thr);
    px->thr = NULL;
    px->nthreads = 1;
}

/* -T, else the file's `threads:`, else 1; 0: one per online core, at most
 * PROXY_THREADS_AUTO_MAX. */
static uint32_t proxy_thread_count(const struct proxy_options *o, const struct config *c)
{
    long n = o->threads >= 0 ? o->threads : c->threads >= 0 ? c->threads :
             PROXY_THREADS_DEFAULT;

    if (n == 0) {
        n = sysconf(_SC_NPROCESSORS_ONLN);
        n = n < 1 ? 1 : n > PROXY_THREADS_AUTO_MAX ? PROXY_THREADS_AUTO_MAX : n;
    }
    return (uint32_t)n;
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
    px.nthreads = proxy_thread_count(o, px.conf);
    proxy_nthreads = px.nthreads;
    px.confs.cur = conf_ref_new(px.conf, px.nthreads);  /* one per thread */
    tstats_init(px.nthreads);
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
        if (proxy_add_pool(w, &px.conf->pools[i], NULL, err, sizeof(err)) != 0) {
            log_error("proxy", "pool %s: %s", px.conf->pools[i].name, err);
            goto out;
        }
    }
    if (wthreads_prepare(&px, err, sizeof(err)) != 0) {
        goto out;
    }
    if (threads_setup(&px) != 0) {
        log_error("proxy", "out of memory or descriptors setting up the threads");
        goto out;
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
    if (wthreads_start(&px) != 0) {
        log_error("proxy", "cannot start the worker threads: %s", strerror(errno));
        goto out;
    }
    log_notice("proxy", "ringproxy %s started, pid %ld, %u thread%s", RINGPROXY_VERSION,
               (long)getpid(), px.nthreads, px.nthreads == 1 ? "" : "s");
    daemon_ready(&report_fd);
    notify_ready();

    for (;;) {
        event_base_loop(w->base, EVLOOP_ONCE);
        worker_flush(w);
        proxy_balance(&px);
        if (px.confs.old != NULL) {
            confs_reap(w, &px.confs);
        }
        if (w->stopping && proxy_leave(&px) &&
            ((worker_idle(w) && wthreads_done(&px)) ||
             worker_now_ms(w) >= px.leave_deadline)) {
            break;
        }
    }
    wthreads_join(&px);
    log_notice("proxy", "stopped");
    rc = 0;

out:
    wthreads_join(&px);     /* a start that failed half way */
    if (o->pid_path != NULL && rc == 0 && pid_file_is_ours(o->pid_path)) {
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
