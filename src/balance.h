/*
 * balance.h — how many of the event-loop threads serve clients
 * (docs/ARCHITECTURE.md, "Threads: how many serve").
 *
 * `threads: N` starts N loops; `threads_active` says how many of them hold
 * clients: a number (fixed), or `auto`, where this decides from what the
 * threads measure. A thread that is not active (parked) hands its clients
 * and the connections it accepts to the active ones (proxy.c, client.c).
 *
 * The rule, one window (BAL_WINDOW_MS; a trial's, BAL_TRIAL_MS) at a time:
 *   - a window with almost no load (every serving thread under
 *     BAL_IDLE_BUSY busy, whatever the command count: a few heavy commands
 *     are a load) changes nothing; BAL_FORGET_MS of them end the load: the
 *     proxy goes back to one thread and forgets its past trials;
 *   - when every active thread was busy (on a core or waiting for one) for
 *     BAL_BUSY of two steady windows in a row, it tries one thread more, and
 *     keeps it only if the proxy then answers BAL_UP_GAIN more commands
 *     than in those two windows (their mean);
 *   - otherwise, after two steady windows, it tries one thread fewer, and
 *     keeps it unless the proxy then answers less than BAL_DOWN_KEEP of
 *     that (busy threads included: a thread kept by a lucky window is
 *     tested again);
 *   - a trial undone is not tried again for a while, and one kept makes the
 *     other way wait longer: each wait doubles from BAL_WAIT_MIN_MS to
 *     BAL_WAIT_MAX_MS. A load's end resets them, and so does a load that
 *     changed since the last judgement (saturated then and not now, or the
 *     other way round, or its rate BAL_NEW_LOAD times higher or lower).
 * A thread more costs wake-ups and halves the batching of every backend
 * write (docs/ARCHITECTURE.md, "Threads"), so more threads are kept only
 * where they measure better. Pure logic: no clock, no threads (the caller
 * passes the time and the window's figures), so it is unit-tested.
 */
#ifndef RP_BALANCE_H
#define RP_BALANCE_H

#include <stdbool.h>
#include <stdint.h>

#define BAL_WINDOW_MS 500       /* one measurement */
#define BAL_TRIAL_MS 300        /* a trial's: it costs what it measures */
#define BAL_SETTLE_MS 100       /* after a change: clients move, not measured */
#define BAL_IDLE_BUSY 0.10      /* every serving thread under this busy
                                   share: an idle window */
#define BAL_NEW_LOAD 1.5        /* a rate this many times the judged one's
                                   (or under it by as much) is a new load */
#define BAL_BUSY 0.9            /* busy share of a saturated thread */
#define BAL_STEADY 0.25         /* two windows this close are a steady load
                                   (500 ms of a pipelined load vary by 20 %) */
#define BAL_UP_GAIN 1.05        /* a thread more is kept from this gain */
#define BAL_DOWN_KEEP 0.97      /* a thread fewer is kept from this share */
#define BAL_FORGET_MS 5000      /* idle this long: the load is over */
#define BAL_WAIT_MIN_MS 5000
#define BAL_WAIT_MAX_MS 60000

/* One window, measured over the threads active through all of it. */
struct bal_sample {
    uint64_t ms;                /* its length */
    uint64_t requests;          /* commands read by every thread */
    double min_busy;            /* the least busy active thread's share (0..1) */
    double max_busy;            /* the busiest one's */
};

enum bal_state { BAL_HOLD, BAL_TRIAL };

struct balance {
    uint32_t max;               /* threads started */
    uint32_t fixed;             /* threads_active: K (1..max); 0 = auto */
    uint32_t active;            /* what the threads obey */
    enum bal_state state;
    uint32_t before;            /* TRIAL: active before it */
    double before_rate;         /* TRIAL: requests/s before it */
    double last_rate;           /* the last window's (-1: none, or a change
                                   came after it) */
    bool last_busy;             /* ... and whether it was saturated */
    uint64_t up_at, down_at;    /* no trial up (down) before then */
    uint64_t idle_since;        /* the first of the idle windows; 0: none */
    double judged_rate;         /* the last trial's rate (0: none since the
                                   waits were reset) */
    bool judged_busy;           /* ... and whether it was saturated then */
    uint32_t up_wait, down_wait;        /* ms, doubled by each undone trial */
    uint64_t trials, undone;    /* counted for `stats` */
};

/* max threads; fixed: threads_active (0 = auto). Starts on one thread in
 * auto, else on min(fixed, max). */
void balance_init(struct balance *b, uint32_t max, uint32_t fixed);
/* A reload changed threads_active. */
void balance_set_fixed(struct balance *b, uint32_t fixed);
/* One window measured at now_ms: returns the active count from now on
 * (b->active). A change means the next window starts BAL_SETTLE_MS later. */
uint32_t balance_step(struct balance *b, const struct bal_sample *s, uint64_t now_ms);

#endif
