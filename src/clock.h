/*
 * clock.h — the one clock every interval is measured with.
 *
 * CLOCK_MONOTONIC, in milliseconds: it never goes back. Every timeout,
 * deadline, backoff and rate in the proxy subtracts two of its readings, so
 * a clock that can step back (the wall clock, or libevent's cached time,
 * which is a coarse monotonic reading plus a wall-clock offset re-read
 * every few seconds and so can move back by a few milliseconds) would make
 * "now - then" wrap to a huge number: a request sent a moment ago would
 * count as timed out (docs/ARCHITECTURE.md, "Known limits" had it as
 * backend timeouts under a client that reads nothing). A reading through
 * the vDSO costs tens of nanoseconds, so it is read afresh, not cached.
 */
#ifndef RP_CLOCK_H
#define RP_CLOCK_H
#include <stdint.h>
#include <time.h>

static inline uint64_t rp_clock_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

#endif
