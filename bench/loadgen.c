/* loadgen — a closed-loop memcached load generator (text or meta protocol) that checks every reply. */

/*
 * Design notes
 *
 * - Threads. Each worker thread owns one epoll loop and a slice of the
 *   connections; workers share nothing but the request cap and the clock
 *   deadlines, and their counters and histograms are summed at the end.
 *
 * - Closed loop. Every connection keeps `depth` requests in flight: each
 *   reply that completes makes room for one new request, and the new
 *   requests of one read are written with one write().
 *
 * - Strict replies. A connection has a FIFO of what it sent. Each reply is
 *   matched against the request at the head: a get may only return VALUE
 *   lines for keys it asked for, each at most once, with the flags, length
 *   and bytes this program stored, and must end with END; a set must answer
 *   STORED. memcached's error lines (ERROR, CLIENT_ERROR, SERVER_ERROR)
 *   fail one request; anything else is a protocol error that fails the
 *   connection, since the stream can no longer be trusted.
 *
 * - Meta mode (--meta). Reads are `mg <key> v f t` and writes (populate
 *   included) `ms <key> <len> T0 F0`, single-key only. A hit is `VA <len>
 *   f0 t-1` (the flags in any order, nothing else) and the bytes this
 *   program stored; `EN` is a miss, counted as a get's is; an ms must answer
 *   `HD`, and NS/EX/NF count as err_reply as NOT_STORED does. mg asks no
 *   `k`, so the key of a hit is checked only through its value's rotation.
 *
 * - Values. The value of key i is VALUE_ALPHABET, rotated by i % 36 and
 *   repeated to the value size, so a reply carrying the wrong key's bytes is
 *   caught (35 times in 36) even when its VALUE line names the right key.
 *
 * - Phases. Populate (sets of every key, so gets hit); warmup (load that
 *   is not counted, drained before what follows); --on-ready; the measured
 *   window; drain (no new requests; replies still in flight are counted).
 *   SIGUSR1 ends the measured window early, as if --duration had passed
 *   (a harness uses it to measure exactly while something else happens).
 *   Threads meet at a barrier between phases. The elapsed time runs from
 *   the window's start to the last measured reply; the CPU of --cpu-pid is
 *   sampled at the window's start and once the drain is over.
 *
 * - Latency. From the write that carried a request to the read that
 *   completed its reply, recorded in nanoseconds into an HDR-style
 *   log-linear histogram (128 sub-buckets per power of two, under 0.4%
 *   error at the reported midpoint).
 *
 * - Bounds. Every wait has a deadline: connect (5 s each), populate
 *   (--populate-time), the run (--duration), the drain and any stalled
 *   connection (--timeout, no reply for that long fails the connection).
 */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MGET_MAX        128        /* keys in one get (found set is a bitmap) */
#define KEY_MAX         250        /* memcached's key length limit */
#define POP_DEPTH       16         /* pipeline depth while populating */
#define RBUF_INIT       (16 * 1024)
#define WBUF_INIT       (4 * 1024)
#define LINE_MAX_LEN    2048       /* a reply line longer than this is garbage */
#define EPOLL_BATCH     256
#define TICK_MS         50         /* epoll timeout: how often deadlines are checked */
#define CPU_PIDS_MAX    8
#define CONNECT_TIMEOUT_MS 5000

#define HIST_SUB_BITS   7
#define HIST_SUB        (1u << HIST_SUB_BITS)
#define HIST_N          (64 * HIST_SUB)

#define NS_PER_S        1000000000ull

static const char VALUE_ALPHABET[] = "0123456789abcdefghijklmnopqrstuvwxyz";
#define ALPHA_N         36

/* ---- options ------------------------------------------------------------ */

struct options {
    const char *host;
    const char *port;
    const char *prefix;
    const char *label;
    const char *on_ready;         /* shell command run before the load starts */
    int         conns;
    int         depth;
    int         threads;
    int         mget;
    uint32_t    keys;
    uint32_t    value_size;
    double      get_ratio;        /* percent of requests that are gets */
    double      duration;         /* seconds; 0 = until the request cap */
    double      warmup;
    double      timeout;          /* stall and drain timeout, seconds */
    double      populate_time;    /* bound on the populate phase, seconds */
    uint64_t    requests;         /* measured request cap; 0 = none */
    bool        populate;
    bool        populate_only;
    bool        quiet;
    bool        meta;             /* mg/ms instead of get/set */
    /* whose CPU is reported: [CPU_OF_TARGET] --cpu-pid, [CPU_OF_BACKENDS]
     * --backend-pid */
    struct cpu_pids { int n; pid_t pid[CPU_PIDS_MAX]; } cpu[2];
    uint64_t    seed;
};

/* ---- per-request and per-connection state ------------------------------- */

enum req_kind { REQ_GET, REQ_SET };

struct req {
    uint64_t sent_ns;
    uint64_t found[MGET_MAX / 64]; /* which of the keys a VALUE came back for */
    uint8_t  kind;
    uint8_t  nkeys;
    uint8_t  nfound;
    bool     measured;
    bool     populate;
    bool     failed;               /* a VALUE was wrong; fail at END */
};

enum parse_state { PS_LINE, PS_DATA };

struct worker;

struct conn {
    int            fd;
    bool           dead;
    bool           want_out;       /* EPOLLOUT registered */
    struct worker *w;
    char          *rbuf;
    size_t         rcap, rpos, rlen;
    char          *wbuf;
    size_t         wcap, wpos, wlen;
    struct req    *q;              /* ring of qcap in-flight requests */
    uint32_t      *qkeys;          /* qcap * mget key indices */
    uint32_t       qcap, qhead, qlen;
    uint64_t       last_progress_ns;
    uint64_t       rng;
    enum parse_state ps;
    uint32_t       data_key;       /* key index of the VALUE being read */
    uint32_t       data_len;
    bool           data_ends_req;  /* a meta VA: its data block ends the reply */
};

/* What a worker counts; summed over workers at the end. */
struct stats {
    uint64_t gets, sets;           /* requests completed as expected */
    uint64_t keys;                 /* keys asked by those gets, plus sets */
    uint64_t hits, misses;         /* keys of completed gets */
    uint64_t err_reply;            /* ERROR / CLIENT_ERROR / SERVER_ERROR / NOT_STORED */
    uint64_t err_proto;            /* a reply that does not match its request */
    uint64_t err_conn;             /* lost to a closed or stalled connection */
    uint64_t conns_lost;
    uint64_t pop_ok, pop_err;
    uint64_t lat_sum_ns, lat_max_ns;
};

struct worker {
    int          id;
    pthread_t    th;
    int          ep;
    struct conn *conns;
    int          nconns;
    int          live;
    uint64_t     inflight;
    uint32_t     pop_next, pop_end;
    bool         cap_reached;
    bool         failed;           /* could not connect: abort the run */
    uint64_t     last_done_ns;     /* last measured reply */
    uint64_t     last_check_ns;
    struct stats st;
    uint64_t     hist[HIST_N];
    char         keybuf[KEY_MAX + 1];
};

/* ---- globals shared by the workers -------------------------------------- */

static struct options opt;
static struct addrinfo *g_addr;
static char *g_value_tmpl;            /* value_size + ALPHA_N bytes */
static size_t g_prefix_len;
static pthread_barrier_t g_ready;     /* workers connected and populated */
static pthread_barrier_t g_go;        /* main has set the deadlines */
static _Atomic uint64_t g_t_measure;  /* ns: measured window starts */
static _Atomic uint64_t g_t_stop;     /* ns: no new requests from here */
static _Atomic int64_t g_remaining;   /* request cap left */
static atomic_bool g_abort;
static volatile sig_atomic_t g_interrupted;
static volatile sig_atomic_t g_end_window;   /* SIGUSR1: measured window over */

/* ---- small helpers ------------------------------------------------------ */

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...)
{
    va_list ap;
    fputs("loadgen: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

static uint64_t rng_next(uint64_t *s)
{
    /* xorshift64* */
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1Dull;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (p == NULL)
        die("out of memory (%zu bytes)", n);
    return p;
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n, size);
    if (p == NULL)
        die("out of memory (%zu x %zu bytes)", n, size);
    return p;
}

/* Writes key i into buf (prefix + decimal index); returns its length. */
static size_t key_format(char *buf, uint32_t i)
{
    char digits[16];
    size_t n = 0;
    do {
        digits[n++] = (char)('0' + i % 10);
        i /= 10;
    } while (i != 0);
    memcpy(buf, opt.prefix, g_prefix_len);
    for (size_t j = 0; j < n; j++)
        buf[g_prefix_len + j] = digits[n - 1 - j];
    return g_prefix_len + n;
}

/* Parses a key this program made; -1 if it is not one. */
static int64_t key_parse(const char *k, size_t n)
{
    if (n <= g_prefix_len || n > g_prefix_len + 10 ||
        memcmp(k, opt.prefix, g_prefix_len) != 0)
        return -1;
    uint64_t v = 0;
    for (size_t j = g_prefix_len; j < n; j++) {
        if (k[j] < '0' || k[j] > '9')
            return -1;
        v = v * 10 + (uint64_t)(k[j] - '0');
    }
    if (v >= opt.keys)
        return -1;
    return (int64_t)v;
}

static const char *value_of(uint32_t i)
{
    return g_value_tmpl + i % ALPHA_N;
}

/* ---- histogram ---------------------------------------------------------- */

static unsigned hist_index(uint64_t v)
{
    if (v < 2 * HIST_SUB)
        return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = msb - HIST_SUB_BITS;
    return shift * HIST_SUB + (unsigned)(v >> shift);
}

/* The midpoint of bucket idx, in the recorded unit (ns). */
static double hist_value(unsigned idx)
{
    if (idx < 2 * HIST_SUB)
        return idx;
    unsigned shift = idx / HIST_SUB - 1;
    uint64_t mant = idx - shift * HIST_SUB;
    uint64_t low = mant << shift;
    return (double)low + (double)((1ull << shift) - 1) / 2.0;
}

/* The value at or below which a fraction q of the samples lie. */
static double hist_quantile(const uint64_t *h, uint64_t total, double q)
{
    if (total == 0)
        return 0;
    uint64_t rank = (uint64_t)(q * (double)total + 0.999999);
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < HIST_N; i++) {
        seen += h[i];
        if (seen >= rank)
            return hist_value(i);
    }
    return hist_value(HIST_N - 1);
}

/* ---- buffers ------------------------------------------------------------ */

static void wbuf_reserve(struct conn *c, size_t extra)
{
    if (c->wpos == c->wlen)
        c->wpos = c->wlen = 0;
    if (c->wlen + extra <= c->wcap)
        return;
    if (c->wpos > 0) {
        memmove(c->wbuf, c->wbuf + c->wpos, c->wlen - c->wpos);
        c->wlen -= c->wpos;
        c->wpos = 0;
    }
    size_t cap = c->wcap;
    while (c->wlen + extra > cap)
        cap *= 2;
    if (cap != c->wcap) {
        char *nb = realloc(c->wbuf, cap);
        if (nb == NULL)
            die("out of memory growing a write buffer to %zu", cap);
        c->wbuf = nb;
        c->wcap = cap;
    }
}

/* Makes room for at least `want` more bytes after rlen. */
static void rbuf_reserve(struct conn *c, size_t want)
{
    if (c->rpos == c->rlen)
        c->rpos = c->rlen = 0;
    if (c->rcap - c->rlen >= want)
        return;
    if (c->rpos > 0) {
        memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
        c->rlen -= c->rpos;
        c->rpos = 0;
    }
    size_t cap = c->rcap;
    while (cap - c->rlen < want)
        cap *= 2;
    if (cap != c->rcap) {
        char *nb = realloc(c->rbuf, cap);
        if (nb == NULL)
            die("out of memory growing a read buffer to %zu", cap);
        c->rbuf = nb;
        c->rcap = cap;
    }
}

/* ---- connections -------------------------------------------------------- */

static void conn_set_out(struct conn *c, bool on)
{
    if (c->want_out == on)
        return;
    struct epoll_event ev = { .events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c };
    if (epoll_ctl(c->w->ep, EPOLL_CTL_MOD, c->fd, &ev) == 0)
        c->want_out = on;
}

/*
 * Closes a connection that can no longer be trusted or used. Its in-flight
 * requests are counted as err_conn (the one being parsed, if any, was
 * already counted by the caller and popped).
 */
static void conn_fail(struct conn *c, const char *why)
{
    struct worker *w = c->w;
    if (c->dead)
        return;
    if (!opt.quiet)
        fprintf(stderr, "loadgen: thread %d: connection fd %d failed: %s (%u in flight)\n",
                w->id, c->fd, why, c->qlen);
    for (uint32_t i = 0; i < c->qlen; i++) {
        struct req *r = &c->q[(c->qhead + i) % c->qcap];
        if (r->populate)
            w->st.pop_err++;
        else if (r->measured)
            w->st.err_conn++;
    }
    w->inflight -= c->qlen;
    c->qlen = 0;
    epoll_ctl(w->ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->dead = true;
    w->live--;
    w->st.conns_lost++;
}

static int conn_open(struct conn *c)
{
    int fd = socket(g_addr->ai_family, g_addr->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    g_addr->ai_protocol);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, g_addr->ai_addr, g_addr->ai_addrlen) < 0) {
        if (errno != EINPROGRESS) {
            int e = errno;
            close(fd);
            return -e;
        }
        struct pollfd p = { .fd = fd, .events = POLLOUT };
        int n = poll(&p, 1, CONNECT_TIMEOUT_MS);
        int err = 0;
        socklen_t len = sizeof(err);
        if (n <= 0)
            err = n == 0 ? ETIMEDOUT : errno;
        else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
            err = errno;
        if (err != 0) {
            close(fd);
            return -err;
        }
    }
    c->fd = fd;
    return 0;
}

/* ---- issuing requests --------------------------------------------------- */

static struct req *req_push(struct conn *c, uint32_t **keys)
{
    uint32_t slot = (c->qhead + c->qlen) % c->qcap;
    struct req *r = &c->q[slot];
    memset(r, 0, sizeof(*r));
    *keys = &c->qkeys[(size_t)slot * (size_t)opt.mget];
    c->qlen++;
    c->w->inflight++;
    return r;
}

static void issue_set(struct conn *c, uint32_t key, bool populate, bool measured, uint64_t now)
{
    uint32_t *keys;
    struct req *r = req_push(c, &keys);
    r->kind = REQ_SET;
    r->nkeys = 1;
    r->populate = populate;
    r->measured = measured;
    r->sent_ns = now;
    keys[0] = key;

    wbuf_reserve(c, KEY_MAX + 64 + opt.value_size);
    char *p = c->wbuf + c->wlen;
    memcpy(p, opt.meta ? "ms " : "set ", opt.meta ? 3 : 4);
    p += opt.meta ? 3 : 4;
    p += key_format(p, key);
    if (opt.meta)
        p += sprintf(p, " %" PRIu32 " T0 F0\r\n", opt.value_size);
    else
        p += sprintf(p, " 0 0 %" PRIu32 "\r\n", opt.value_size);
    memcpy(p, value_of(key), opt.value_size);
    p += opt.value_size;
    *p++ = '\r';
    *p++ = '\n';
    c->wlen = (size_t)(p - c->wbuf);
}

static void issue_get(struct conn *c, bool measured, uint64_t now)
{
    uint32_t *keys;
    struct req *r = req_push(c, &keys);
    r->kind = REQ_GET;
    r->nkeys = (uint8_t)opt.mget;
    r->measured = measured;
    r->sent_ns = now;

    /* distinct keys, so every key asked for has exactly one VALUE */
    for (int i = 0; i < opt.mget; i++) {
        uint32_t k;
        bool dup;
        int tries = 0;
        do {
            k = (uint32_t)(rng_next(&c->rng) % opt.keys);
            dup = false;
            for (int j = 0; j < i; j++)
                if (keys[j] == k)
                    dup = true;
            if (dup && ++tries > 64) {   /* small key space: walk to a free one */
                k = (keys[i - 1] + 1) % opt.keys;
                for (uint32_t s = 0; s < opt.keys; s++, k = (k + 1) % opt.keys) {
                    dup = false;
                    for (int j = 0; j < i; j++)
                        if (keys[j] == k)
                            dup = true;
                    if (!dup)
                        break;
                }
            }
        } while (dup);
        keys[i] = k;
    }

    wbuf_reserve(c, 16 + (size_t)opt.mget * (KEY_MAX + 1));
    char *p = c->wbuf + c->wlen;
    if (opt.meta) {                    /* one key: parse_options() checked */
        memcpy(p, "mg ", 3);
        p += 3;
        p += key_format(p, keys[0]);
        memcpy(p, " v f t", 6);
        p += 6;
    } else {
        memcpy(p, "get", 3);
        p += 3;
        for (int i = 0; i < opt.mget; i++) {
            *p++ = ' ';
            p += key_format(p, keys[i]);
        }
    }
    *p++ = '\r';
    *p++ = '\n';
    c->wlen = (size_t)(p - c->wbuf);
}

/* May this worker send one more load request now? Claims from the cap. */
static bool may_issue(struct worker *w, uint64_t now, bool *measured)
{
    if (g_interrupted || now >= atomic_load_explicit(&g_t_stop, memory_order_relaxed))
        return false;
    *measured = now >= atomic_load_explicit(&g_t_measure, memory_order_relaxed);
    if (*measured && g_end_window)
        return false;
    if (*measured && opt.requests > 0) {
        if (w->cap_reached)
            return false;
        if (atomic_fetch_sub_explicit(&g_remaining, 1, memory_order_relaxed) <= 0) {
            w->cap_reached = true;
            return false;
        }
    }
    return true;
}

static void conn_refill(struct conn *c, bool populating, uint64_t now)
{
    struct worker *w = c->w;
    if (c->dead)
        return;
    if (populating) {
        uint32_t depth = c->qcap;
        while (c->qlen < depth && w->pop_next < w->pop_end)
            issue_set(c, w->pop_next++, true, false, now);
        return;
    }
    bool measured;
    while (c->qlen < (uint32_t)opt.depth && may_issue(w, now, &measured)) {
        uint64_t roll = rng_next(&c->rng) % 10000;
        if ((double)roll < opt.get_ratio * 100.0)
            issue_get(c, measured, now);
        else
            issue_set(c, (uint32_t)(rng_next(&c->rng) % opt.keys), false, measured, now);
    }
}

static void conn_flush(struct conn *c)
{
    if (c->dead)
        return;
    for (int i = 0; i < 64 && c->wpos < c->wlen; i++) {
        ssize_t n = send(c->fd, c->wbuf + c->wpos, c->wlen - c->wpos, MSG_NOSIGNAL);
        if (n > 0) {
            c->wpos += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        conn_fail(c, n < 0 ? strerror(errno) : "send returned 0");
        return;
    }
    if (c->wpos == c->wlen)
        c->wpos = c->wlen = 0;
    conn_set_out(c, c->wpos < c->wlen);
}

/* ---- parsing replies ---------------------------------------------------- */

static bool line_is(const char *l, size_t n, const char *lit)
{
    size_t m = strlen(lit);
    return n == m && memcmp(l, lit, m) == 0;
}

static bool line_starts(const char *l, size_t n, const char *lit)
{
    size_t m = strlen(lit);
    return n >= m && memcmp(l, lit, m) == 0;
}

static bool is_error_line(const char *l, size_t n)
{
    return line_is(l, n, "ERROR") || line_starts(l, n, "CLIENT_ERROR ") ||
           line_starts(l, n, "SERVER_ERROR ") || line_is(l, n, "SERVER_ERROR") ||
           line_is(l, n, "CLIENT_ERROR");
}

/* Parses an unsigned decimal token at *p (up to end); advances past it. */
static bool parse_u64(const char **p, const char *end, uint64_t *out)
{
    const char *s = *p;
    uint64_t v = 0;
    if (s >= end || *s < '0' || *s > '9')
        return false;
    while (s < end && *s >= '0' && *s <= '9') {
        if (v > (UINT64_MAX - 9) / 10)
            return false;
        v = v * 10 + (uint64_t)(*s - '0');
        s++;
    }
    *p = s;
    *out = v;
    return true;
}

/* Completes the request at the head of the queue. */
static void req_done(struct conn *c, bool ok, uint64_t *err_counter, uint64_t now)
{
    struct worker *w = c->w;
    struct req *r = &c->q[c->qhead];
    if (r->populate) {
        if (ok)
            w->st.pop_ok++;
        else
            w->st.pop_err++;
    } else if (r->measured) {
        if (!ok) {
            (*err_counter)++;
        } else {
            uint64_t lat = now > r->sent_ns ? now - r->sent_ns : 0;
            w->hist[hist_index(lat)]++;
            w->st.lat_sum_ns += lat;
            if (lat > w->st.lat_max_ns)
                w->st.lat_max_ns = lat;
            if (r->kind == REQ_GET) {
                w->st.gets++;
                w->st.keys += r->nkeys;
                w->st.hits += r->nfound;
                w->st.misses += (uint64_t)(r->nkeys - r->nfound);
            } else {
                w->st.sets++;
                w->st.keys++;
            }
        }
        w->last_done_ns = now;
    }
    c->qhead = (c->qhead + 1) % c->qcap;
    c->qlen--;
    w->inflight--;
    c->last_progress_ns = now;
}

/*
 * Handles one VALUE line for the get at the head. Returns false on a line
 * that cannot be framed (the connection must go); a well-framed VALUE that
 * is wrong for this request marks it failed and its data is still skipped.
 */
static bool parse_value_line(struct conn *c, struct req *r, const uint32_t *keys,
                             const char *l, size_t n)
{
    const char *p = l + 6, *end = l + n;           /* past "VALUE " */
    const char *k = p;
    while (p < end && *p != ' ')
        p++;
    size_t klen = (size_t)(p - k);
    uint64_t flags = 0, bytes = 0, cas = 0;
    if (p >= end || klen == 0)
        return false;
    p++;
    if (!parse_u64(&p, end, &flags) || p >= end || *p != ' ')
        return false;
    p++;
    if (!parse_u64(&p, end, &bytes))
        return false;
    if (p < end) {                                 /* optional cas */
        if (*p != ' ')
            return false;
        p++;
        if (!parse_u64(&p, end, &cas) || p != end)
            return false;
    }
    if (bytes > (1u << 30))
        return false;

    c->ps = PS_DATA;
    c->data_len = (uint32_t)bytes;
    c->data_key = UINT32_MAX;

    int64_t idx = key_parse(k, klen);
    int pos = -1;
    if (idx >= 0)
        for (int i = 0; i < r->nkeys; i++)
            if (keys[i] == (uint32_t)idx) {
                pos = i;
                break;
            }
    if (pos < 0 || (r->found[pos / 64] >> (pos % 64)) & 1 || flags != 0 ||
        bytes != opt.value_size) {
        r->failed = true;
        return true;
    }
    r->found[pos / 64] |= 1ull << (pos % 64);
    r->nfound++;
    c->data_key = (uint32_t)idx;
    return true;
}

/*
 * Handles the `VA <len> <flags>` line of a meta hit for the mg at the head:
 * false if it cannot be framed. The flags must be exactly f0 and t-1 (what
 * `ms ... T0 F0` stored), in any order; a wrong length or flag marks the
 * request failed and its data is still skipped.
 */
static bool parse_va_line(struct conn *c, struct req *r, const uint32_t *keys,
                          const char *l, size_t n)
{
    const char *p = l + 3, *end = l + n;           /* past "VA " */
    uint64_t bytes;
    if (!parse_u64(&p, end, &bytes) || bytes > (1u << 30))
        return false;
    bool f_seen = false, t_seen = false, bad = false;
    while (p < end) {
        if (*p++ != ' ')
            return false;
        const char *tok = p;
        while (p < end && *p != ' ')
            p++;
        size_t tl = (size_t)(p - tok);
        if (tl == 2 && memcmp(tok, "f0", 2) == 0 && !f_seen)
            f_seen = true;
        else if (tl == 3 && memcmp(tok, "t-1", 3) == 0 && !t_seen)
            t_seen = true;
        else
            bad = true;
    }
    c->ps = PS_DATA;
    c->data_len = (uint32_t)bytes;
    c->data_ends_req = true;
    c->data_key = UINT32_MAX;
    if (bad || !f_seen || !t_seen || bytes != opt.value_size) {
        r->failed = true;
        return true;
    }
    r->found[0] |= 1;
    r->nfound = 1;
    c->data_key = keys[0];
    return true;
}

/* A meta reply line to the request at the head: 1 handled, 0 not a meta reply. */
static int parse_meta_line(struct conn *c, struct req *r, const uint32_t *keys,
                           const char *l, size_t n, uint64_t now)
{
    struct worker *w = c->w;
    if (r->kind == REQ_SET) {
        if (line_is(l, n, "HD"))
            req_done(c, true, NULL, now);
        else if (line_is(l, n, "NS") || line_is(l, n, "EX") || line_is(l, n, "NF"))
            req_done(c, false, &w->st.err_reply, now);
        else
            return 0;
        return 1;
    }
    if (line_is(l, n, "EN")) {                     /* a miss */
        req_done(c, true, NULL, now);
        return 1;
    }
    if (line_starts(l, n, "VA ") && parse_va_line(c, r, keys, l, n))
        return 1;
    return 0;
}

/* Parses what is buffered; returns false if the connection was failed. */
static bool conn_parse(struct conn *c, uint64_t now)
{
    struct worker *w = c->w;
    while (c->rpos < c->rlen) {
        if (c->qlen == 0) {
            w->st.err_proto++;
            conn_fail(c, "reply with no request outstanding");
            return false;
        }
        struct req *r = &c->q[c->qhead];
        const uint32_t *keys = &c->qkeys[(size_t)c->qhead * (size_t)opt.mget];
        char *buf = c->rbuf + c->rpos;
        size_t avail = c->rlen - c->rpos;

        if (c->ps == PS_DATA) {
            if (avail < (size_t)c->data_len + 2)
                return true;
            if (buf[c->data_len] != '\r' || buf[c->data_len + 1] != '\n') {
                w->st.err_proto++;
                c->qhead = (c->qhead + 1) % c->qcap;   /* counted: drop it */
                c->qlen--;
                w->inflight--;
                conn_fail(c, "value not followed by CRLF");
                return false;
            }
            if (c->data_key != UINT32_MAX &&
                memcmp(buf, value_of(c->data_key), c->data_len) != 0)
                r->failed = true;
            c->rpos += (size_t)c->data_len + 2;
            c->ps = PS_LINE;
            if (c->data_ends_req) {
                c->data_ends_req = false;
                req_done(c, !r->failed, &w->st.err_proto, now);
            }
            continue;
        }

        char *nl = memchr(buf, '\n', avail);
        if (nl == NULL) {
            if (avail > LINE_MAX_LEN) {
                w->st.err_proto++;
                c->qhead = (c->qhead + 1) % c->qcap;
                c->qlen--;
                w->inflight--;
                conn_fail(c, "reply line too long");
                return false;
            }
            return true;
        }
        size_t n = (size_t)(nl - buf);
        if (n == 0 || buf[n - 1] != '\r') {
            w->st.err_proto++;
            c->qhead = (c->qhead + 1) % c->qcap;
            c->qlen--;
            w->inflight--;
            conn_fail(c, "reply line not ended by CRLF");
            return false;
        }
        n--;                                           /* drop the CR */
        c->rpos += n + 2;

        if (is_error_line(buf, n)) {
            req_done(c, false, &w->st.err_reply, now);
            continue;
        }
        if (opt.meta) {
            if (parse_meta_line(c, r, keys, buf, n, now))
                continue;
            goto bad;
        }
        if (r->kind == REQ_SET) {
            if (line_is(buf, n, "STORED"))
                req_done(c, true, NULL, now);
            else if (line_is(buf, n, "NOT_STORED") || line_is(buf, n, "EXISTS") ||
                     line_is(buf, n, "NOT_FOUND"))
                req_done(c, false, &w->st.err_reply, now);
            else
                goto bad;
            continue;
        }
        if (line_is(buf, n, "END")) {
            req_done(c, !r->failed, &w->st.err_proto, now);
            continue;
        }
        if (line_starts(buf, n, "VALUE ") && parse_value_line(c, r, keys, buf, n))
            continue;
bad:
        w->st.err_proto++;
        if (!opt.quiet)
            fprintf(stderr, "loadgen: unexpected reply to a%s %s: \"%.*s\"\n",
                    opt.meta ? "n" : "", r->kind == REQ_SET ? (opt.meta ? "ms" : "set")
                    : (opt.meta ? "mg" : "get"), (int)(n > 80 ? 80 : n), buf);
        c->qhead = (c->qhead + 1) % c->qcap;
        c->qlen--;
        w->inflight--;
        conn_fail(c, "unexpected reply");
        return false;
    }
    return true;
}

static void conn_read(struct conn *c, bool populating)
{
    for (int i = 0; i < 16; i++) {
        size_t want = c->ps == PS_DATA ? (size_t)c->data_len + 2 : 0;
        rbuf_reserve(c, want > 16384 ? want : 16384);
        ssize_t n = recv(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen, 0);
        if (n == 0) {
            conn_fail(c, "closed by peer");
            return;
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            conn_fail(c, strerror(errno));
            return;
        }
        size_t space = c->rcap - c->rlen;
        c->rlen += (size_t)n;
        uint64_t t = now_ns();
        if (!conn_parse(c, t))
            return;
        if ((size_t)n < space)
            break;
    }
    conn_refill(c, populating, now_ns());
    conn_flush(c);
}

/* ---- the event loop ----------------------------------------------------- */

/* Fails connections with requests in flight but no reply for --timeout. */
static void check_stalls(struct worker *w, uint64_t now)
{
    uint64_t limit = (uint64_t)(opt.timeout * 1e9);
    for (int i = 0; i < w->nconns; i++) {
        struct conn *c = &w->conns[i];
        if (!c->dead && c->qlen > 0 && now - c->last_progress_ns > limit)
            conn_fail(c, "timed out waiting for a reply");
    }
}

/*
 * Runs the loop until the phase is over: populating ends when every key of
 * this worker was set and answered; the load phase ends when no request may
 * be issued and none is in flight. `hard_deadline` bounds either.
 */
static void worker_loop(struct worker *w, bool populating, uint64_t hard_deadline)
{
    struct epoll_event evs[EPOLL_BATCH];
    uint64_t now = now_ns();
    for (int i = 0; i < w->nconns; i++) {
        w->conns[i].last_progress_ns = now;
        conn_refill(&w->conns[i], populating, now);
        conn_flush(&w->conns[i]);
    }
    for (;;) {
        if (w->live == 0)
            return;
        /* may_issue() turning false is final (time, cap, signal): idle is done */
        if (w->inflight == 0 && (!populating || w->pop_next >= w->pop_end))
            return;
        int n = epoll_wait(w->ep, evs, EPOLL_BATCH, TICK_MS);
        if (n < 0 && errno != EINTR)
            die("epoll_wait: %s", strerror(errno));
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c->dead)
                continue;
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
                conn_read(c, populating);
            if (!c->dead && (evs[i].events & EPOLLOUT))
                conn_flush(c);
        }
        now = now_ns();
        if (now - w->last_check_ns > TICK_MS * 1000000ull) {
            w->last_check_ns = now;
            check_stalls(w, now);
            if (now > hard_deadline || atomic_load(&g_abort)) {
                for (int i = 0; i < w->nconns; i++)
                    if (!w->conns[i].dead && w->conns[i].qlen > 0)
                        conn_fail(&w->conns[i], "deadline passed");
                return;
            }
        }
    }
}

/* Runs load until g_t_stop, then drains (bounded by --timeout). */
static void worker_load(struct worker *w)
{
    uint64_t t_stop = atomic_load(&g_t_stop);
    uint64_t grace = (uint64_t)(opt.timeout * 1e9) + NS_PER_S;
    worker_loop(w, false, t_stop > UINT64_MAX - grace ? UINT64_MAX : t_stop + grace);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1: %s", strerror(errno));
    w->ep = ep;
    uint32_t qcap = (uint32_t)(opt.depth > POP_DEPTH ? opt.depth : POP_DEPTH);
    for (int i = 0; i < w->nconns; i++) {
        struct conn *c = &w->conns[i];
        c->w = w;
        c->fd = -1;
        c->dead = true;
        c->qcap = qcap;
        c->q = xcalloc(qcap, sizeof(*c->q));
        c->qkeys = xcalloc((size_t)qcap * (size_t)opt.mget, sizeof(*c->qkeys));
        c->rcap = RBUF_INIT;
        c->rbuf = xmalloc(c->rcap);
        c->wcap = WBUF_INIT;
        c->wbuf = xmalloc(c->wcap);
        c->rng = opt.seed ^ (0x9E3779B97F4A7C15ull * (uint64_t)(w->id * 100003 + i + 1));
        rng_next(&c->rng);
    }
    for (int i = 0; i < w->nconns && !atomic_load(&g_abort); i++) {
        struct conn *c = &w->conns[i];
        int rc = conn_open(c);
        if (rc < 0) {
            fprintf(stderr, "loadgen: connect %s:%s (connection %d of thread %d): %s\n",
                    opt.host, opt.port, i, w->id, strerror(-rc));
            w->failed = true;
            atomic_store(&g_abort, true);
            break;
        }
        struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
        if (epoll_ctl(w->ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
            die("epoll_ctl: %s", strerror(errno));
        c->dead = false;
        w->live++;
    }

    if (!atomic_load(&g_abort) && opt.populate) {
        uint64_t t0 = now_ns();
        worker_loop(w, true, t0 + (uint64_t)(opt.populate_time * 1e9));
        if (w->pop_next < w->pop_end || w->st.pop_err > 0 || w->live < w->nconns) {
            fprintf(stderr, "loadgen: thread %d: populate failed: %" PRIu64 " set, %" PRIu64
                    " failed, %u not sent\n", w->id, w->st.pop_ok, w->st.pop_err,
                    w->pop_end - w->pop_next);
            w->failed = true;
            atomic_store(&g_abort, true);
        }
    }

    /* main sets the deadlines between the barriers: warmup, then measured */
    bool run = !atomic_load(&g_abort) && !opt.populate_only;
    pthread_barrier_wait(&g_ready);
    pthread_barrier_wait(&g_go);
    if (opt.warmup > 0) {
        if (run)
            worker_load(w);
        pthread_barrier_wait(&g_ready);
        pthread_barrier_wait(&g_go);
    }
    if (run)
        worker_load(w);
    return NULL;
}

/* ---- CPU accounting of other processes ---------------------------------- */

/* utime + stime of pid in microseconds; -1 if it cannot be read. */
static int64_t proc_cpu_us(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (p == NULL)
        return -1;
    p++;
    /* fields after the comm: 3 state ... 14 utime 15 stime */
    unsigned long long utime = 0, stime = 0;
    char *save = NULL;
    int field = 2;
    for (char *tok = strtok_r(p, " ", &save); tok != NULL; tok = strtok_r(NULL, " ", &save)) {
        field++;
        if (field == 14)
            utime = strtoull(tok, NULL, 10);
        else if (field == 15) {
            stime = strtoull(tok, NULL, 10);
            break;
        }
    }
    if (field != 15)
        return -1;
    long hz = sysconf(_SC_CLK_TCK);
    return (int64_t)((utime + stime) * 1000000ull / (unsigned long long)(hz > 0 ? hz : 100));
}

/* Context switches, voluntary and not, of every thread of pid: each one is
 * a sleep and a wake-up or a preemption, the cost a second event-loop thread
 * adds on cores shared with the load (docs/ARCHITECTURE.md, "Threads");
 * -1 if pid cannot be read. A thread that exits meanwhile takes its count
 * with it: the proxies' and memcached's threads live through the run. */
static int64_t proc_ctxt(pid_t pid)
{
    char path[96], line[256];
    snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (d == NULL)
        return -1;
    int64_t sum = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "/proc/%d/task/%.20s/status", (int)pid, e->d_name);
        FILE *f = fopen(path, "r");
        if (f == NULL)
            continue;           /* the thread exited */
        while (fgets(line, sizeof(line), f) != NULL) {
            unsigned long long v;
            if (sscanf(line, "voluntary_ctxt_switches: %llu", &v) == 1 ||
                sscanf(line, "nonvoluntary_ctxt_switches: %llu", &v) == 1)
                sum += (int64_t)v;
        }
        fclose(f);
    }
    closedir(d);
    return sum;
}

enum { CPU_OF_TARGET, CPU_OF_BACKENDS };

/* get (proc_cpu_us, proc_ctxt) now of every pid of both sets (-1:
 * unreadable). */
static void pids_read(int64_t at[2][CPU_PIDS_MAX], int64_t (*get)(pid_t))
{
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < opt.cpu[k].n; i++)
            at[k][i] = get(opt.cpu[k].pid[i]);
}

/* What set k used between the readings (CPU, context switches), or -1: none
 * given or one unreadable. */
static int64_t pids_used(int k, int64_t at0[2][CPU_PIDS_MAX], int64_t at1[2][CPU_PIDS_MAX])
{
    int64_t sum = 0;

    if (opt.cpu[k].n == 0)
        return -1;
    for (int i = 0; i < opt.cpu[k].n; i++) {
        if (at0[k][i] < 0 || at1[k][i] < 0)
            return -1;
        sum += at1[k][i] - at0[k][i];
    }
    return sum;
}

static int64_t self_cpu_us(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (int64_t)ru.ru_utime.tv_sec * 1000000 + ru.ru_utime.tv_usec +
           (int64_t)ru.ru_stime.tv_sec * 1000000 + ru.ru_stime.tv_usec;
}

/* ---- setup and report --------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
"usage: loadgen [options]\n"
"Drives memcached's text (or meta) protocol at one host:port, checks every\n"
"reply, and prints one line of key=value results on stdout and a summary on\n"
"stderr.\n"
"\n"
"  -H, --host HOST          target host (default 127.0.0.1)\n"
"  -p, --port PORT          target port (default 11211)\n"
"  -c, --conns N            connections in all (default 50)\n"
"  -P, --depth N            requests in flight per connection (default 1)\n"
"  -t, --threads N          worker threads, each with its own epoll (default 1)\n"
"  -d, --duration SECS      measured time (default 10; with -n, a bound of 600)\n"
"  -n, --requests N         stop after N measured requests\n"
"  -w, --warmup SECS        load before measuring, not counted, drained (default 0)\n"
"  -k, --keys N             key space size (default 10000)\n"
"  -x, --prefix STR         key prefix (default \"lg:\")\n"
"  -v, --value-size N       value bytes (default 100)\n"
"  -r, --get-ratio PCT      percent of requests that are gets, rest sets (default 90)\n"
"  -m, --multiget N         keys per get, 1..%d (default 1); counts as one request\n"
"  -N, --no-populate        do not set every key before measuring\n"
"      --populate-only      set every key, then exit\n"
"      --populate-time SECS bound on populating (default 120)\n"
"      --meta               meta protocol: reads `mg KEY v f t`, writes (populate\n"
"                           too) `ms KEY LEN T0 F0`; single-key gets only\n"
"  -T, --timeout SECS       fail a connection with no reply for SECS (default 5)\n"
"  -C, --cpu-pid PID        report utime+stime of PID over the measured window\n"
"                           (repeatable, up to %d; summed)\n"
"  -B, --backend-pid PID    the same, reported apart as backend_cpu_us_per_op\n"
"                           (the servers behind a proxy)\n"
"      --on-ready CMD       run CMD (sh -c) after populating and warming up, just\n"
"                           before the measured window, e.g. callgrind_control -z PID\n"
"  -l, --label STR          label printed in the results\n"
"  -s, --seed N             random seed (default 1)\n"
"  -q, --quiet              no summary line, no per-connection messages\n"
"  -h, --help\n"
"\n"
"Result fields: ops = requests answered as expected (a multi-get is one),\n"
"keys_per_s counts each key of a get and each set; hits/misses are keys of\n"
"gets; errors = err_reply (ERROR, CLIENT_ERROR, SERVER_ERROR, NOT_STORED...)\n"
"+ err_proto (a reply that does not match its request) + err_conn (lost to a\n"
"closed or stalled connection); latencies in microseconds; cpu_us_per_op =\n"
"CPU of the --cpu-pid processes / (ops + errors); backend_cpu_us_per_op:\n"
"the same of the --backend-pid processes; cs_per_op, backend_cs_per_op: their\n"
"context switches (voluntary and not, every thread) / (ops + errors).\n"
"\n"
"SIGUSR1 ends the measured window early (as if --duration had passed); the\n"
"replies still in flight are drained and counted as usual.\n"
"\n"
"Exit status: 0 ok; 1 setup failed (connect, populate, options); 2 the run\n"
"finished but some requests failed.\n", MGET_MAX, CPU_PIDS_MAX);
}

static double parse_num(const char *s, const char *what, double lo, double hi)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi)
        die("bad %s \"%s\" (want %g..%g)", what, s, lo, hi);
    return v;
}

static void parse_options(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "host",          required_argument, NULL, 'H' },
        { "port",          required_argument, NULL, 'p' },
        { "conns",         required_argument, NULL, 'c' },
        { "depth",         required_argument, NULL, 'P' },
        { "threads",       required_argument, NULL, 't' },
        { "duration",      required_argument, NULL, 'd' },
        { "requests",      required_argument, NULL, 'n' },
        { "warmup",        required_argument, NULL, 'w' },
        { "keys",          required_argument, NULL, 'k' },
        { "prefix",        required_argument, NULL, 'x' },
        { "value-size",    required_argument, NULL, 'v' },
        { "get-ratio",     required_argument, NULL, 'r' },
        { "multiget",      required_argument, NULL, 'm' },
        { "no-populate",   no_argument,       NULL, 'N' },
        { "populate-only", no_argument,       NULL, 1 },
        { "populate-time", required_argument, NULL, 2 },
        { "on-ready",      required_argument, NULL, 3 },
        { "meta",          no_argument,       NULL, 4 },
        { "timeout",       required_argument, NULL, 'T' },
        { "cpu-pid",       required_argument, NULL, 'C' },
        { "backend-pid",   required_argument, NULL, 'B' },
        { "label",         required_argument, NULL, 'l' },
        { "seed",          required_argument, NULL, 's' },
        { "quiet",         no_argument,       NULL, 'q' },
        { "help",          no_argument,       NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    opt = (struct options){
        .host = "127.0.0.1", .port = "11211", .prefix = "lg:", .label = "",
        .conns = 50, .depth = 1, .threads = 1, .mget = 1, .keys = 10000,
        .value_size = 100, .get_ratio = 90, .duration = -1, .warmup = 0,
        .timeout = 5, .populate_time = 120, .populate = true, .seed = 1,
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "H:p:c:P:t:d:n:w:k:x:v:r:m:NT:C:B:l:s:qh",
                             longopts, NULL)) != -1) {
        switch (ch) {
        case 'H': opt.host = optarg; break;
        case 'p': opt.port = optarg; break;
        case 'c': opt.conns = (int)parse_num(optarg, "connection count", 1, 1000000); break;
        case 'P': opt.depth = (int)parse_num(optarg, "pipeline depth", 1, 65536); break;
        case 't': opt.threads = (int)parse_num(optarg, "thread count", 1, 256); break;
        case 'd': opt.duration = parse_num(optarg, "duration", 0.001, 86400); break;
        case 'n': opt.requests = (uint64_t)parse_num(optarg, "request count", 1, 1e15); break;
        case 'w': opt.warmup = parse_num(optarg, "warmup", 0, 3600); break;
        case 'k': opt.keys = (uint32_t)parse_num(optarg, "key space", 1, 4e9); break;
        case 'x': opt.prefix = optarg; break;
        case 'v': opt.value_size = (uint32_t)parse_num(optarg, "value size", 0, 1 << 30); break;
        case 'r': opt.get_ratio = parse_num(optarg, "get ratio", 0, 100); break;
        case 'm': opt.mget = (int)parse_num(optarg, "multiget size", 1, MGET_MAX); break;
        case 'N': opt.populate = false; break;
        case 1:   opt.populate_only = true; break;
        case 2:   opt.populate_time = parse_num(optarg, "populate time", 0.1, 86400); break;
        case 3:   opt.on_ready = optarg; break;
        case 4:   opt.meta = true; break;
        case 'T': opt.timeout = parse_num(optarg, "timeout", 0.01, 3600); break;
        case 'C':
        case 'B': {
            struct cpu_pids *cp = &opt.cpu[ch == 'C' ? CPU_OF_TARGET : CPU_OF_BACKENDS];
            if (cp->n == CPU_PIDS_MAX)
                die("at most %d --cpu-pid and %d --backend-pid", CPU_PIDS_MAX, CPU_PIDS_MAX);
            cp->pid[cp->n++] = (pid_t)parse_num(optarg, "pid", 1, INT_MAX);
            break;
        }
        case 'l': opt.label = optarg; break;
        case 's': opt.seed = (uint64_t)parse_num(optarg, "seed", 0, 1e18); break;
        case 'q': opt.quiet = true; break;
        case 'h': usage(stdout); exit(0);
        default:  usage(stderr); exit(1);
        }
    }
    if (optind != argc)
        die("unexpected argument \"%s\" (see --help)", argv[optind]);
    if (opt.duration < 0)
        opt.duration = opt.requests > 0 ? 600 : 10;
    g_prefix_len = strlen(opt.prefix);
    if (g_prefix_len + 10 > KEY_MAX)
        die("key prefix too long");
    for (size_t i = 0; i < g_prefix_len; i++)
        if (opt.prefix[i] <= ' ' || opt.prefix[i] == 0x7f)
            die("key prefix may not hold spaces or control characters");
    if (opt.meta && opt.mget != 1)
        die("--meta sends single-key mg: --multiget must be 1");
    if ((uint32_t)opt.mget > opt.keys)
        die("multiget of %d keys needs a key space of at least %d", opt.mget, opt.mget);
    if (opt.threads > opt.conns)
        opt.threads = opt.conns;
    if (opt.populate_only)
        opt.populate = true;
}

static void raise_nofile(int need)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        die("getrlimit: %s", strerror(errno));
    rlim_t want = (rlim_t)need;
    if (rl.rlim_cur >= want)
        return;
    if (rl.rlim_max < want)
        rl.rlim_max = want;                   /* works as root */
    rl.rlim_cur = want;
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
        getrlimit(RLIMIT_NOFILE, &rl);
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        if (rl.rlim_cur < want)
            die("need %d file descriptors, the limit is %llu", need,
                (unsigned long long)rl.rlim_cur);
    }
}

/* Closes and frees what the workers hold; workers must have been joined. */
static void workers_free(struct worker *ws)
{
    for (int i = 0; i < opt.threads; i++) {
        struct worker *w = &ws[i];
        for (int j = 0; j < w->nconns; j++) {
            struct conn *c = &w->conns[j];
            if (c->fd >= 0)
                close(c->fd);
            free(c->q);
            free(c->qkeys);
            free(c->rbuf);
            free(c->wbuf);
        }
        if (w->ep >= 0)
            close(w->ep);
        free(w->conns);
    }
    free(ws);
}

static void on_signal(int sig)
{
    (void)sig;
    g_interrupted = 1;
}

static void on_end_window(int sig)
{
    (void)sig;
    g_end_window = 1;
}

int main(int argc, char **argv)
{
    parse_options(argc, argv);
    raise_nofile(opt.conns + 64);

    struct sigaction sa = { .sa_handler = on_signal };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sa.sa_handler = on_end_window;
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };
    int rc = getaddrinfo(opt.host, opt.port, &hints, &g_addr);
    if (rc != 0)
        die("cannot resolve %s:%s: %s", opt.host, opt.port, gai_strerror(rc));

    g_value_tmpl = xmalloc((size_t)opt.value_size + ALPHA_N);
    for (size_t i = 0; i < (size_t)opt.value_size + ALPHA_N; i++)
        g_value_tmpl[i] = VALUE_ALPHABET[i % ALPHA_N];

    atomic_store(&g_t_measure, UINT64_MAX);
    atomic_store(&g_t_stop, UINT64_MAX);
    atomic_store(&g_remaining, (int64_t)opt.requests);
    pthread_barrier_init(&g_ready, NULL, (unsigned)opt.threads + 1);
    pthread_barrier_init(&g_go, NULL, (unsigned)opt.threads + 1);

    struct worker *ws = xcalloc((size_t)opt.threads, sizeof(*ws));
    for (int i = 0; i < opt.threads; i++) {
        struct worker *w = &ws[i];
        w->id = i;
        w->ep = -1;
        w->nconns = opt.conns / opt.threads + (i < opt.conns % opt.threads ? 1 : 0);
        w->conns = xcalloc((size_t)w->nconns, sizeof(*w->conns));
        w->pop_next = (uint32_t)((uint64_t)opt.keys * (uint64_t)i / (uint64_t)opt.threads);
        w->pop_end = (uint32_t)((uint64_t)opt.keys * (uint64_t)(i + 1) / (uint64_t)opt.threads);
        if (!opt.populate)
            w->pop_next = w->pop_end;
        if (pthread_create(&w->th, NULL, worker_main, w) != 0)
            die("pthread_create failed");
    }

    uint64_t t_pop0 = now_ns();
    pthread_barrier_wait(&g_ready);
    double pop_s = (double)(now_ns() - t_pop0) / 1e9;
    bool run = !atomic_load(&g_abort) && !opt.populate_only;
    if (opt.warmup > 0) {
        /* unmeasured load, drained before the measured window opens */
        atomic_store(&g_t_stop, now_ns() + (uint64_t)(opt.warmup * 1e9));
        pthread_barrier_wait(&g_go);
        pthread_barrier_wait(&g_ready);
    }
    if (run && opt.on_ready != NULL) {
        fflush(stdout);
        int st = system(opt.on_ready);
        if (st != 0)
            fprintf(stderr, "loadgen: --on-ready \"%s\" exited with status %d\n",
                    opt.on_ready, st);
    }
    int64_t cpu0[2][CPU_PIDS_MAX], cpu1[2][CPU_PIDS_MAX];
    int64_t cs0[2][CPU_PIDS_MAX], cs1[2][CPU_PIDS_MAX];
    pids_read(cs0, proc_ctxt);
    pids_read(cpu0, proc_cpu_us);
    int64_t self0 = self_cpu_us();
    uint64_t t_measure = now_ns();
    atomic_store(&g_t_measure, t_measure);
    atomic_store(&g_t_stop, t_measure + (uint64_t)(opt.duration * 1e9));
    pthread_barrier_wait(&g_go);
    for (int i = 0; i < opt.threads; i++)
        pthread_join(ws[i].th, NULL);
    uint64_t t_join = now_ns();
    int64_t self1 = self_cpu_us();
    pids_read(cpu1, proc_cpu_us);
    pids_read(cs1, proc_ctxt);

    struct stats s = { 0 };
    uint64_t *hist = xcalloc(HIST_N, sizeof(*hist));
    uint64_t t_last = 0;
    bool failed = false;
    for (int i = 0; i < opt.threads; i++) {
        struct worker *w = &ws[i];
        failed |= w->failed;
        s.gets += w->st.gets;           s.sets += w->st.sets;
        s.keys += w->st.keys;
        s.hits += w->st.hits;           s.misses += w->st.misses;
        s.err_reply += w->st.err_reply; s.err_proto += w->st.err_proto;
        s.err_conn += w->st.err_conn;   s.conns_lost += w->st.conns_lost;
        s.pop_ok += w->st.pop_ok;       s.pop_err += w->st.pop_err;
        s.lat_sum_ns += w->st.lat_sum_ns;
        if (w->st.lat_max_ns > s.lat_max_ns)
            s.lat_max_ns = w->st.lat_max_ns;
        if (w->last_done_ns > t_last)
            t_last = w->last_done_ns;
        for (unsigned b = 0; b < HIST_N; b++)
            hist[b] += w->hist[b];
    }
    workers_free(ws);
    freeaddrinfo(g_addr);
    free(g_value_tmpl);
    if (failed) {
        fprintf(stderr, "loadgen: %s:%s: setup failed (%" PRIu64 " keys populated, %" PRIu64
                " failed)\n", opt.host, opt.port, s.pop_ok, s.pop_err);
        free(hist);
        return 1;
    }
    if (opt.populate_only) {
        free(hist);
        if (!opt.quiet)
            fprintf(stderr, "loadgen %s:%s: populated %" PRIu64 " keys in %.2f s\n",
                    opt.host, opt.port, s.pop_ok, pop_s);
        printf("label=%s target=%s:%s populated=%" PRIu64 " populate_s=%.3f\n",
               opt.label[0] ? opt.label : "-", opt.host, opt.port, s.pop_ok, pop_s);
        return 0;
    }

    uint64_t ops = s.gets + s.sets;
    uint64_t errors = s.err_reply + s.err_proto + s.err_conn;
    if (t_last < t_measure)
        t_last = t_join;
    double elapsed = (double)(t_last - t_measure) / 1e9;
    if (elapsed <= 0)
        elapsed = 1e-9;
    double ops_s = (double)ops / elapsed;
    double keys_s = (double)s.keys / elapsed;
    double p50 = hist_quantile(hist, ops, 0.50) / 1e3;
    double p90 = hist_quantile(hist, ops, 0.90) / 1e3;
    double p99 = hist_quantile(hist, ops, 0.99) / 1e3;
    double p999 = hist_quantile(hist, ops, 0.999) / 1e3;
    free(hist);
    double mean = ops ? (double)s.lat_sum_ns / (double)ops / 1e3 : 0;
    double max = (double)s.lat_max_ns / 1e3;
    double self_us = (double)(self1 - self0);

    int64_t cpu_us = pids_used(CPU_OF_TARGET, cpu0, cpu1);
    int64_t be_cpu_us = pids_used(CPU_OF_BACKENDS, cpu0, cpu1);
    int64_t cs = pids_used(CPU_OF_TARGET, cs0, cs1);
    int64_t be_cs = pids_used(CPU_OF_BACKENDS, cs0, cs1);
    bool cpu_ok = cpu_us >= 0;
    uint64_t reqs = ops + errors;

    printf("label=%s target=%s:%s proto=%s threads=%d conns=%d depth=%d mget=%d get_ratio=%g "
           "value_size=%" PRIu32 " keyspace=%" PRIu32 " elapsed_s=%.3f ops=%" PRIu64
           " ops_per_s=%.0f keys_per_s=%.0f gets=%" PRIu64 " sets=%" PRIu64
           " hits=%" PRIu64 " misses=%" PRIu64 " errors=%" PRIu64 " err_reply=%" PRIu64
           " err_proto=%" PRIu64 " err_conn=%" PRIu64 " conns_lost=%" PRIu64
           " p50_us=%.1f p90_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%.1f mean_us=%.1f",
           opt.label[0] ? opt.label : "-", opt.host, opt.port, opt.meta ? "meta" : "text",
           opt.threads, opt.conns,
           opt.depth, opt.mget, opt.get_ratio, opt.value_size, opt.keys, elapsed, ops,
           ops_s, keys_s, s.gets, s.sets, s.hits, s.misses, errors, s.err_reply,
           s.err_proto, s.err_conn, s.conns_lost, p50, p90, p99, p999, max, mean);
    if (cpu_ok)
        printf(" cpu_us=%" PRId64 " cpu_us_per_op=%.2f", cpu_us,
               reqs ? (double)cpu_us / (double)reqs : 0);
    else
        printf(" cpu_us=- cpu_us_per_op=-");
    if (be_cpu_us >= 0)
        printf(" backend_cpu_us_per_op=%.2f", reqs ? (double)be_cpu_us / (double)reqs : 0);
    if (cs >= 0)
        printf(" cs_per_op=%.3f", reqs ? (double)cs / (double)reqs : 0);
    if (be_cs >= 0)
        printf(" backend_cs_per_op=%.3f", reqs ? (double)be_cs / (double)reqs : 0);
    printf(" loadgen_cpu_us_per_op=%.2f\n", reqs ? self_us / (double)reqs : 0);
    fflush(stdout);

    if (!opt.quiet) {
        fprintf(stderr, "loadgen %s:%s%s%s%s: %" PRIu64 " ops in %.2f s = %.0f ops/s "
                "(%.0f keys/s); latency us p50 %.1f p99 %.1f p99.9 %.1f max %.0f; "
                "errors %" PRIu64 ", misses %" PRIu64,
                opt.host, opt.port, opt.label[0] ? " [" : "", opt.label,
                opt.label[0] ? "]" : "", ops, elapsed, ops_s, keys_s, p50, p99, p999,
                max, errors, s.misses);
        if (cpu_ok)
            fprintf(stderr, "; cpu of pid%s %.2f us/op", opt.cpu[CPU_OF_TARGET].n > 1 ? "s" : "",
                    reqs ? (double)cpu_us / (double)reqs : 0);
        fputc('\n', stderr);
    }
    return errors > 0 || g_interrupted ? 2 : 0;
}
