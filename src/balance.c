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
 * same trial. */
static void judge(struct balance *b, double rate, uint64_t now)
{
    bool up = b->active > b->before;
    bool keep = up ? rate >= b->before_rate * BAL_UP_GAIN
                   : rate >= b->before_rate * BAL_DOWN_KEEP;

    b->state = BAL_HOLD;
    b->last_rate = -1;
    if (keep) {
        /* Not straight back the other way: the new count gets a wait. */
        if (up) {
            b->up_wait = BAL_WAIT_MIN_MS;
            b->down_at = now + b->down_wait;
        } else {
            b->down_wait = BAL_WAIT_MIN_MS;
            b->up_at = now + b->up_wait;
        }
        return;
    }
    b->active = b->before;
    b->undone++;
    if (up) {
        b->up_wait = wait_doubled(b->up_wait);
        b->up_at = now + b->up_wait;
    } else {
        b->down_wait = wait_doubled(b->down_wait);
        b->down_at = now + b->down_wait;
    }
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
    if (rate < BAL_IDLE_RATE) {
        forget(b);
        b->active = 1;
        return b->active;
    }
    if (b->state == BAL_TRIAL) {
        judge(b, rate, now);
        return b->active;
    }
    steady = b->last_rate > 0 && b->last_busy == busy &&
             rate >= b->last_rate * (1 - BAL_STEADY) &&
             rate <= b->last_rate * (1 + BAL_STEADY);
    if (steady && busy && b->active < b->max && now >= b->up_at) {
        trial(b, b->active + 1, (rate + b->last_rate) / 2);
    } else if (steady && !busy && b->active > 1 && now >= b->down_at) {
        trial(b, b->active - 1, (rate + b->last_rate) / 2);
    } else {
        b->last_rate = rate;
        b->last_busy = busy;
    }
    return b->active;
}
