/* stats.c — names and help texts of the counters, from the tables in stats.h. */
#include "stats.h"

#define STATS_DESC(n, k, h) { #n, #k, h },
const struct stats_desc stats_pool_desc[STAT_POOL_COUNT] = {
    STATS_POOL_CODEC(STATS_DESC)
};
const struct stats_desc stats_backend_desc[STAT_BACKEND_COUNT] = {
    STATS_BACKEND_CODEC(STATS_DESC)
};
#undef STATS_DESC
