/*
 * handoff.h — client connections handed from one event-loop thread to
 * another (docs/ARCHITECTURE.md, "Threads: how many serve").
 *
 * Each loop has an inbox: a list under a mutex and a pipe that wakes the
 * loop when the list stops being empty. Any thread may send; only the
 * inbox's loop takes. A sender counts the move in before it checks whether
 * the receiver still takes any (handoff_reserve), and the receiver's loop
 * ends only once it stopped taking and nothing is counted in
 * (handoff_settled): so a connection is never sent to a loop that has
 * ended. The mutex orders the sender's last use of the connection's buffers
 * before the receiver's first.
 *
 * Ownership: a move owns its socket and its input buffer until the
 * receiver takes them; handoff_free closes what was never taken.
 */
#ifndef RP_HANDOFF_H
#define RP_HANDOFF_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

struct event_base;
struct evbuffer;
struct handoff;

/* One connection on its way. */
struct handoff_move {
    char *pool;                 /* the pool's name (its threads' copies);
                                   owned */
    int fd;
    struct evbuffer *in;        /* bytes read and not yet parsed; NULL: a
                                   connection just accepted, never served */
    struct sockaddr_storage sa; /* accepted: its peer */
    int salen;
    char peer[64];              /* served: its peer, as logged */
    uint64_t last_rx_ms;        /* served: when it last sent a byte (its
                                   timeouts go on counting from there) */
    struct handoff_move *next;
};

typedef void (*handoff_take_fn)(void *arg, struct handoff_move *m);

/* An inbox on base; take(arg, m) runs on its loop for each move (and owns
 * m). NULL: out of memory or descriptors. */
struct handoff *handoff_new(struct event_base *base, handoff_take_fn take, void *arg);
/* Its loop ends (on that loop, before its base is freed): stop taking,
 * close every socket never taken. Senders may still look at it (reserving
 * fails) until handoff_free; NULL is fine. */
void handoff_stop(struct handoff *h);
/* Once no thread may look at it any more; NULL is fine. */
void handoff_free(struct handoff *h);
/* Count a move to h in: false (nothing counted) once h takes no more. */
bool handoff_reserve(struct handoff *h);
/* Send a reserved move (any thread). */
void handoff_send(struct handoff *h, struct handoff_move *m);
/* Give back a reservation that sent nothing. */
void handoff_cancel(struct handoff *h);
/* The receiver stops taking: later reservations fail. Its own loop. */
void handoff_close(struct handoff *h);
/* Closed, and every move reserved before has been taken. */
bool handoff_settled(struct handoff *h);
/* Moves reserved and not yet taken. */
uint32_t handoff_pending(struct handoff *h);
/* Free a move that was never sent (its socket closed, its buffer freed). */
void handoff_move_free(struct handoff_move *m);

#endif
