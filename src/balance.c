/*
 * balance.c — how many event-loop threads serve clients: the rule of
 * balance.h, one window at a time.
 */
#include "balance.h"

static uint32_t clamp_active(uint32_t n, uint32_t max)
{
    return n < 1 ? 1 : n > max ? max : n;
}

static uint32_t wait_doubled(uint32_t w)
{
    return w >= BAL_WAIT_MAX_MS / 2 ? BAL_WAIT_MAX_MS : w * 2;
}

static void forget(struct balance *b)
{
    b->state = BAL_HOLD;
    b->last_rate = -1;
    b->last_busy = false;
    b->up_at = b->down_at = 0;
    b->up_wait = b->down_wait = BAL_WAIT_MIN_MS;
    b->idle_since = 0;
    b->judged_rate = 0;
}

/* The load is not the one the waits were earned on: no wait. */
static void new_load(struct balance *b)
{
    b->up_at = b->down_at = 0;
    b->up_wait = b->down_wait = BAL_WAIT_MIN_MS;
    b->judged_rate = 0;
}

void balance_init(struct balance *b, uint32_t max, uint32_t fixed)
{
    *b = (struct balance){ .max = max > 0 ? max : 1 };
    forget(b);
    balance_set_fixed(b, fixed);
}

void balance_set_fixed(struct balance *b, uint32_t fixed)
{
    b->fixed = fixed;
    forget(b);
    b->active = fixed > 0 ? clamp_active(fixed, b->max) : 1;
}

/* Start a trial of `to` threads from a window at rate. */
static void trial(struct balance *b, uint32_t to, double rate)
{
    b->state = BAL_TRIAL;
    b->before = b->active;
    b->before_rate = rate;
    b->active = to;
    b->trials++;
    b->last_rate = -1;
}

/* A trial's window is in: keep it, or go back and wait longer before the
 * same trial. A kept trial makes the other way wait longer too, so that a
 * count the noise of one window kept, or undid, is not flipped back and
 * forth faster than the waits allow. */
static void judge(struct balance *b, double rate, bool busy, uint64_t now)
{
    bool up = b->active > b->before;
    bool keep = up ? rate >= b->before_rate * BAL_UP_GAIN
                   : rate >= b->before_rate * BAL_DOWN_KEEP;
    uint32_t *same = up ? &b->up_wait : &b->down_wait;
    uint32_t *other = up ? &b->down_wait : &b->up_wait;
    uint64_t *same_at = up ? &b->up_at : &b->down_at;
    uint64_t *other_at = up ? &b->down_at : &b->up_at;

    b->state = BAL_HOLD;
    b->last_rate = -1;
    /* The load at the count kept: the trial's, or the windows before it. */
    b->judged_rate = keep ? rate : b->before_rate;
    b->judged_busy = keep ? busy : b->last_busy;
    if (keep) {
        *other = wait_doubled(*other);
        *other_at = now + *other;
        return;
    }
    b->active = b->before;
    b->undone++;
    *same = wait_doubled(*same);
    *same_at = now + *same;
}

uint32_t balance_step(struct balance *b, const struct bal_sample *s, uint64_t now)
{
    double rate;
    bool busy, steady;

    if (b->fixed > 0 || s->ms == 0) {
        return b->active;
    }
    rate = (double)s->requests * 1000.0 / (double)s->ms;
    busy = s->min_busy >= BAL_BUSY;
    if (b->state == BAL_TRIAL) {
        judge(b, rate, busy, now);
        return b->active;
    }
    if (s->max_busy < BAL_IDLE_BUSY) {
        /* No load to judge by. Idle long enough, the load is over: the next
         * one starts on one thread and is judged afresh. */
        if (b->idle_since == 0) {
            b->idle_since = now;
        } else if (now - b->idle_since >= BAL_FORGET_MS) {
            forget(b);
            b->active = 1;
        }
        b->last_rate = -1;
        return b->active;
    }
    b->idle_since = 0;
    if (b->judged_rate > 0 && (busy != b->judged_busy ||
                               rate > b->judged_rate * BAL_NEW_LOAD ||
                               rate * BAL_NEW_LOAD < b->judged_rate)) {
        new_load(b);
    }
    steady = b->last_rate > 0 && b->last_busy == busy &&
             rate >= b->last_rate * (1 - BAL_STEADY) &&
             rate <= b->last_rate * (1 + BAL_STEADY);
    if (steady && busy && b->active < b->max && now >= b->up_at) {
        trial(b, b->active + 1, (rate + b->last_rate) / 2);
    } else if (steady && b->active > 1 && now >= b->down_at) {
        trial(b, b->active - 1, (rate + b->last_rate) / 2);
    } else {
        b->last_rate = rate;
        b->last_busy = busy;
    }
    return b->active;
}
