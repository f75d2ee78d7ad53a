/* test_defer.c — the teardown queue runs after the callback that fills it. */
#include <check.h>
#include <stdlib.h>
#include <event2/event.h>

#include "defer.h"
#include "check_run.h"

struct obj {
    int *log;           /* order of frees, shared by a test's objects */
    int *nlog;
    int id;
    struct defer *d;
    struct obj *chain;  /* freed from this one's free: queued then */
};

static void obj_free(void *arg)
{
    struct obj *o = arg;

    o->log[(*o->nlog)++] = o->id;
    if (o->chain != NULL) {
        defer_add(o->d, obj_free, o->chain);
    }
    free(o);
}

static struct obj *obj_new(struct defer *d, int *log, int *nlog, int id)
{
    struct obj *o = calloc(1, sizeof(*o));

    ck_assert_ptr_nonnull(o);
    o->d = d;
    o->log = log;
    o->nlog = nlog;
    o->id = id;
    return o;
}

struct closer {
    struct defer *d;
    struct obj *victim;
    int *nlog;
    int nlog_in_cb;     /* frees seen when the callback returned */
};

/* A callback that closes an object and goes on using it: its memory must
 * still be there when the callback returns. */
static void on_close(evutil_socket_t fd, short what, void *arg)
{
    struct closer *c = arg;

    (void)fd, (void)what;
    defer_add(c->d, obj_free, c->victim);
    c->victim->id += 100;           /* ASan: a use after free if freed above */
    c->nlog_in_cb = *c->nlog;
}

START_TEST(test_freed_after_the_callback)
{
    struct event_base *base = event_base_new();
    struct defer *d = defer_new(base);
    int log[8], nlog = 0;
    struct closer c = { d, obj_new(d, log, &nlog, 1), &nlog, -1 };
    struct event *ev = event_new(base, -1, 0, on_close, &c);

    event_active(ev, EV_TIMEOUT, 0);
    event_base_loop(base, EVLOOP_ONCE);
    ck_assert_int_eq(c.nlog_in_cb, 0);      /* not inside the callback */
    ck_assert_int_eq(nlog, 1);              /* but within the same loop turn */
    ck_assert_int_eq(log[0], 101);
    ck_assert_uint_eq(defer_pending(d), 0);
    event_free(ev);
    defer_free(d);
    event_base_free(base);
}
END_TEST

START_TEST(test_order_and_chains)
{
    struct event_base *base = event_base_new();
    struct defer *d = defer_new(base);
    int log[8], nlog = 0;
    struct obj *a = obj_new(d, log, &nlog, 1), *b = obj_new(d, log, &nlog, 2);

    a->chain = obj_new(d, log, &nlog, 3);   /* a's free queues a third */
    defer_add(d, obj_free, a);
    defer_add(d, obj_free, b);
    ck_assert_uint_eq(defer_pending(d), 2);
    ck_assert(defer_run(d));
    ck_assert_int_eq(nlog, 3);
    ck_assert_int_eq(log[0], 1);
    ck_assert_int_eq(log[1], 2);
    ck_assert_int_eq(log[2], 3);
    ck_assert(!defer_run(d));               /* nothing left */
    /* The run emptied the queue: its event must not fire again. */
    ck_assert_int_eq(event_base_loop(base, EVLOOP_NONBLOCK), 1);
    defer_free(d);
    event_base_free(base);
}
END_TEST

START_TEST(test_free_runs_what_waits)
{
    struct event_base *base = event_base_new();
    struct defer *d = defer_new(base);
    int log[8], nlog = 0;

    defer_add(d, obj_free, obj_new(d, log, &nlog, 7));
    defer_free(d);                          /* LeakSanitizer: nothing lost */
    ck_assert_int_eq(nlog, 1);
    ck_assert_int_eq(log[0], 7);
    defer_free(NULL);
    ck_assert_uint_eq(defer_pending(NULL), 0);
    event_base_free(base);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("defer");
    TCase *tc = tcase_create("defer");

    tcase_add_test(tc, test_freed_after_the_callback);
    tcase_add_test(tc, test_order_and_chains);
    tcase_add_test(tc, test_free_runs_what_waits);
    suite_add_tcase(s, tc);
    return check_run(s);
}
