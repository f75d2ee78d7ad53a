/*
 * hub.c — what an indexed pool's home thread and its copies on the request
 * workers share (hub.h; docs/ARCHITECTURE.md, "Threads: indexed pools").
 *
 * Design notes
 * - One mutex guards everything but the fence deadline. The home thread
 *   takes it once per loop turn at most (hub_publish only writes when the
 *   routing changed) and on a wake-up; a copy when woken and once per loop
 *   turn that has index writes or an acknowledgement to send. No request
 *   waits on it.
 * - Wake-ups are eventfds, written only on the edge (the reader had taken
 *   everything), so a busy writer costs one write(2) per reader's turn.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <event2/buffer.h>

#include "hub.h"
#include "mem.h"
#include "proto.h"
#include "ring.h"

struct hub_copy {
    int wake_fd;                /* -1: no copy on this thread */
    bool woken;                 /* wake_fd written since its last hub_read */
    uint32_t acked;             /* the generation it acknowledged */
    uint32_t seen;              /* the generation it last read (hub_read) */
};

struct hub {
    uint32_t refs;              /* atomic */
    pthread_mutex_t lock;
    char *link;
    struct hub_route route;     /* ring: the hub's own reference */
    uint64_t fence_at;          /* atomic */
    uint32_t ncopies;           /* slots: threads; [0] (home) unused */
    struct hub_copy *copies;
    int home_fd;
    bool home_woken;
    struct evbuffer *index;     /* records from the copies */
    uint64_t dropped;           /* since the last hub_take_index */
    struct evbuffer *stats;     /* the home's `stats` lines for the copies */
};

static void hub_wake(int fd)
{
    uint64_t one = 1;
    ssize_t n;

    do {
        n = write(fd, &one, sizeof(one));
    } while (n < 0 && errno == EINTR);
    /* EAGAIN: the counter is full, the reader will wake anyway. */
}

static void hub_drain_fd(int fd)
{
    uint64_t v;
    ssize_t n;

    do {
        n = read(fd, &v, sizeof(v));
    } while (n < 0 && errno == EINTR);
}

struct hub *hub_new(uint32_t nthreads, const char *link)
{
    struct hub *h = calloc(1, sizeof(*h));

    if (h == NULL) {
        return NULL;
    }
    h->refs = 1;
    h->home_fd = -1;
    h->fence_at = 0;            /* fenced until the home pool says otherwise */
    pthread_mutex_init(&h->lock, NULL);
    h->ncopies = nthreads;
    h->copies = calloc(nthreads ? nthreads : 1, sizeof(*h->copies));
    h->link = strdup(link);
    h->index = evbuffer_new();
    h->stats = evbuffer_new();
    for (uint32_t i = 0; h->copies != NULL && i < nthreads; i++) {
        h->copies[i].wake_fd = -1;
    }
    h->home_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (h->copies == NULL || h->link == NULL || h->index == NULL || h->stats == NULL ||
        h->home_fd < 0) {
        hub_unref(h);
        return NULL;
    }
    return h;
}

struct hub *hub_ref(struct hub *h)
{
    __atomic_add_fetch(&h->refs, 1, __ATOMIC_RELAXED);
    return h;
}

void hub_unref(struct hub *h)
{
    if (h == NULL || __atomic_sub_fetch(&h->refs, 1, __ATOMIC_ACQ_REL) != 0) {
        return;
    }
    for (uint32_t i = 0; h->copies != NULL && i < h->ncopies; i++) {
        if (h->copies[i].wake_fd >= 0) {
            close(h->copies[i].wake_fd);
        }
    }
    if (h->home_fd >= 0) {
        close(h->home_fd);
    }
    if (h->index != NULL) {
        evbuffer_free(h->index);
    }
    if (h->stats != NULL) {
        evbuffer_free(h->stats);
    }
    ring_unref(h->route.ring);
    pthread_mutex_destroy(&h->lock);
    free(h->copies);
    free(h->link);
    free(h);
}

const char *hub_link(const struct hub *h)
{
    return h->link;
}

/* --- the home pool --------------------------------------------------------- */

void hub_publish(struct hub *h, bool ready, bool direct, struct ring *ring)
{
    struct ring *keep = direct ? ring : NULL;

    /* Only the home thread writes route: it may read it without the lock. */
    if (h->route.ready == ready && h->route.direct == direct && h->route.ring == keep) {
        return;
    }
    pthread_mutex_lock(&h->lock);
    struct ring *old = h->route.ring;
    h->route.gen++;
    h->route.ready = ready;
    h->route.direct = direct;
    h->route.ring = keep != NULL ? ring_ref(keep) : NULL;
    for (uint32_t i = 1; i < h->ncopies; i++) {
        struct hub_copy *c = &h->copies[i];
        if (c->wake_fd >= 0 && !c->woken) {
            c->woken = true;
            hub_wake(c->wake_fd);
        }
    }
    pthread_mutex_unlock(&h->lock);
    ring_unref(old);
}

bool hub_direct(const struct hub *h)
{
    return h->route.ready && h->route.direct;     /* the home's own writes */
}

/* Has every attached copy read (acked false) or acknowledged (true) the
 * routing published last? */
static bool every_copy_at_gen(struct hub *h, bool acked)
{
    bool all = true;

    pthread_mutex_lock(&h->lock);
    for (uint32_t i = 1; i < h->ncopies; i++) {
        const struct hub_copy *c = &h->copies[i];
        if (c->wake_fd >= 0 && (acked ? c->acked : c->seen) != h->route.gen) {
            all = false;
        }
    }
    pthread_mutex_unlock(&h->lock);
    return all;
}

bool hub_seen(struct hub *h)
{
    return every_copy_at_gen(h, false);
}

bool hub_settled(struct hub *h)
{
    return every_copy_at_gen(h, true);
}

void hub_set_fence(struct hub *h, uint64_t fence_at)
{
    __atomic_store_n(&h->fence_at, fence_at, __ATOMIC_RELEASE);
}

int hub_home_fd(const struct hub *h)
{
    return h->home_fd;
}

uint64_t hub_take_index(struct hub *h, struct evbuffer *out)
{
    hub_drain_fd(h->home_fd);
    pthread_mutex_lock(&h->lock);
    evbuffer_add_buffer(out, h->index);
    uint64_t dropped = h->dropped;
    h->dropped = 0;
    h->home_woken = false;
    pthread_mutex_unlock(&h->lock);
    return dropped;
}

void hub_set_stats(struct hub *h, struct evbuffer *text)
{
    pthread_mutex_lock(&h->lock);
    evbuffer_drain(h->stats, evbuffer_get_length(h->stats));
    evbuffer_add_buffer(h->stats, text);
    pthread_mutex_unlock(&h->lock);
}

/* --- a copy ------------------------------------------------------------------ */

int hub_attach(struct hub *h, uint32_t tid)
{
    if (tid == 0 || tid >= h->ncopies) {
        return -1;
    }
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    pthread_mutex_lock(&h->lock);
    struct hub_copy *c = &h->copies[tid];
    /* A copy a reload replaced may still drain its clients: its wake-up
     * stays its own (its event is on it) until it detaches; the thread's
     * place is the new copy's from now on. */
    c->wake_fd = fd;
    c->woken = true;
    c->acked = h->route.gen;
    c->seen = h->route.gen;     /* it routes by nothing older */
    hub_wake(fd);               /* its first hub_read takes the routing */
    pthread_mutex_unlock(&h->lock);
    return fd;
}

void hub_detach(struct hub *h, uint32_t tid, int wake_fd)
{
    if (wake_fd < 0) {
        return;
    }
    pthread_mutex_lock(&h->lock);
    struct hub_copy *c = &h->copies[tid];
    if (c->wake_fd == wake_fd) {
        c->wake_fd = -1;        /* else a newer copy holds the place */
    }
    pthread_mutex_unlock(&h->lock);
    close(wake_fd);
}

bool hub_read(struct hub *h, int wake_fd, struct hub_route *have)
{
    struct ring *old = NULL;
    bool changed = false;

    hub_drain_fd(wake_fd);
    pthread_mutex_lock(&h->lock);
    for (uint32_t i = 1; i < h->ncopies; i++) {
        if (h->copies[i].wake_fd == wake_fd) {
            h->copies[i].woken = false;
            h->copies[i].seen = h->route.gen;
        }
    }
    /* The home thread may hold a fence until every copy read the routing
     * (pool.c, pool_hub_turn): a turn of its loop, not its next tick. */
    if (!h->home_woken) {
        h->home_woken = true;
        hub_wake(h->home_fd);
    }
    if (have->gen != h->route.gen) {
        old = have->ring;
        *have = h->route;
        if (have->ring != NULL) {
            ring_ref(have->ring);
        }
        changed = true;
    }
    pthread_mutex_unlock(&h->lock);
    ring_unref(old);
    return changed;
}

void hub_ack(struct hub *h, uint32_t tid, uint32_t gen)
{
    pthread_mutex_lock(&h->lock);
    if (tid < h->ncopies) {
        h->copies[tid].acked = gen;
    }
    pthread_mutex_unlock(&h->lock);
}

uint64_t hub_fence_at(const struct hub *h)
{
    return __atomic_load_n(&h->fence_at, __ATOMIC_ACQUIRE);
}

void hub_send_index(struct hub *h, struct evbuffer *batch)
{
    size_t n = evbuffer_get_length(batch);

    pthread_mutex_lock(&h->lock);
    if (evbuffer_get_length(h->index) + n <= HUB_INDEX_MAX) {
        evbuffer_add_buffer(h->index, batch);
    } else {
        /* The home thread is that far behind: drop, counted, as the index
         * writer drops when its own queue is full. */
        char key[PROTO_KEY_MAX];
        size_t len;
        uint32_t hash;
        while (hub_record_next(batch, key, &len, &hash)) {
            h->dropped++;
        }
        evbuffer_drain(batch, evbuffer_get_length(batch));
    }
    if (!h->home_woken) {
        h->home_woken = true;
        hub_wake(h->home_fd);
    }
    pthread_mutex_unlock(&h->lock);
}

void hub_copy_stats(struct hub *h, struct evbuffer *out)
{
    pthread_mutex_lock(&h->lock);
    size_t n = evbuffer_get_length(h->stats);
    if (n > 0) {
        unsigned char *text = evbuffer_pullup(h->stats, -1);
        evbuffer_add(out, text, n);
    }
    pthread_mutex_unlock(&h->lock);
}

/* --- index records ------------------------------------------------------------ */

void hub_record_add(struct evbuffer *batch, const char *key, size_t len, uint32_t hash)
{
    unsigned char head[6];

    if (len == 0 || len > PROTO_KEY_MAX) {
        return;     /* the request path only indexes keys it accepted */
    }
    memcpy(head, &hash, 4);
    head[4] = (unsigned char)(len >> 8);
    head[5] = (unsigned char)len;
    evbuffer_add(batch, head, sizeof(head));
    evbuffer_add(batch, key, len);
}

bool hub_record_next(struct evbuffer *buf, char *key, size_t *len, uint32_t *hash)
{
    unsigned char head[6];

    if (evbuffer_copyout(buf, head, sizeof(head)) != (ssize_t)sizeof(head)) {
        return false;
    }
    size_t n = ((size_t)head[4] << 8) | head[5];
    if (n == 0 || n > PROTO_KEY_MAX || evbuffer_get_length(buf) < sizeof(head) + n) {
        return false;
    }
    memcpy(hash, head, 4);
    evbuffer_drain(buf, sizeof(head));
    evbuffer_remove(buf, key, n);
    *len = n;
    return true;
}
