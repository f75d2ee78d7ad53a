/*
 * handoff.c — the inbox of one event-loop thread: handoff.h.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "handoff.h"

struct handoff {
    pthread_mutex_t lock;
    struct handoff_move *head, **tail;  /* under lock */
    int pipe[2];                        /* [1]: a byte when head was empty */
    struct event *ev;
    handoff_take_fn take;
    void *arg;
    uint32_t pending;                   /* atomic: reserved, not yet taken */
    int closed;                         /* atomic */
};

void handoff_move_free(struct handoff_move *m)
{
    if (m->fd >= 0) {
        close(m->fd);
    }
    if (m->in != NULL) {
        evbuffer_free(m->in);
    }
    free(m->pool);
    free(m);
}

/* Every move sent so far, the list emptied. */
static struct handoff_move *take_all(struct handoff *h)
{
    struct handoff_move *m;

    pthread_mutex_lock(&h->lock);
    m = h->head;
    h->head = NULL;
    h->tail = &h->head;
    pthread_mutex_unlock(&h->lock);
    return m;
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    struct handoff *h = arg;
    struct handoff_move *m, *next;
    char buf[64];

    (void)what;
    while (read(fd, buf, sizeof(buf)) > 0) {
    }
    for (m = take_all(h); m != NULL; m = next) {
        next = m->next;
        m->next = NULL;
        h->take(h->arg, m);
        __atomic_sub_fetch(&h->pending, 1, __ATOMIC_SEQ_CST);
    }
}

struct handoff *handoff_new(struct event_base *base, handoff_take_fn take, void *arg)
{
    struct handoff *h = calloc(1, sizeof(*h));

    if (h == NULL) {
        return NULL;
    }
    h->pipe[0] = h->pipe[1] = -1;
    h->tail = &h->head;
    h->take = take;
    h->arg = arg;
    if (pthread_mutex_init(&h->lock, NULL) != 0) {
        free(h);
        return NULL;
    }
    if (pipe2(h->pipe, O_CLOEXEC | O_NONBLOCK) != 0 ||
        (h->ev = event_new(base, h->pipe[0], EV_READ | EV_PERSIST, on_wake, h)) == NULL ||
        event_add(h->ev, NULL) != 0) {
        handoff_free(h);
        return NULL;
    }
    return h;
}

void handoff_stop(struct handoff *h)
{
    struct handoff_move *m, *next;

    if (h == NULL) {
        return;
    }
    handoff_close(h);
    if (h->ev != NULL) {
        event_free(h->ev);
        h->ev = NULL;
    }
    for (m = take_all(h); m != NULL; m = next) {
        next = m->next;
        handoff_move_free(m);
        __atomic_sub_fetch(&h->pending, 1, __ATOMIC_SEQ_CST);
    }
}

void handoff_free(struct handoff *h)
{
    if (h == NULL) {
        return;
    }
    handoff_stop(h);
    for (int i = 0; i < 2; i++) {
        if (h->pipe[i] >= 0) {
            close(h->pipe[i]);
        }
    }
    pthread_mutex_destroy(&h->lock);
    free(h);
}

bool handoff_reserve(struct handoff *h)
{
    __atomic_add_fetch(&h->pending, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&h->closed, __ATOMIC_SEQ_CST)) {
        __atomic_sub_fetch(&h->pending, 1, __ATOMIC_SEQ_CST);
        return false;
    }
    return true;
}

void handoff_cancel(struct handoff *h)
{
    __atomic_sub_fetch(&h->pending, 1, __ATOMIC_SEQ_CST);
}

void handoff_send(struct handoff *h, struct handoff_move *m)
{
    bool was_empty;

    m->next = NULL;
    pthread_mutex_lock(&h->lock);
    was_empty = h->head == NULL;
    *h->tail = m;
    h->tail = &m->next;
    pthread_mutex_unlock(&h->lock);
    if (was_empty) {
        char b = 1;
        ssize_t rc;
        do {
            rc = write(h->pipe[1], &b, 1);
        } while (rc < 0 && errno == EINTR);
        /* EAGAIN: the pipe is full of wake-ups already. */
    }
}

void handoff_close(struct handoff *h)
{
    __atomic_store_n(&h->closed, 1, __ATOMIC_SEQ_CST);
}

bool handoff_settled(struct handoff *h)
{
    return __atomic_load_n(&h->closed, __ATOMIC_SEQ_CST) &&
           __atomic_load_n(&h->pending, __ATOMIC_SEQ_CST) == 0;
}

uint32_t handoff_pending(struct handoff *h)
{
    return __atomic_load_n(&h->pending, __ATOMIC_SEQ_CST);
}
