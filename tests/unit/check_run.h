/*
 * check_run.h — the end of every unit suite's main(): run the suite (forking
 * or not as CK_FORK in the environment says) and exit with whether every
 * check passed.
 */
#ifndef RINGPROXY_CHECK_RUN_H
#define RINGPROXY_CHECK_RUN_H

#include <check.h>
#include <stdlib.h>

static inline int check_run(Suite *s)
{
    SRunner *sr = srunner_create(s);

    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

#endif
