/*
 * progress.c — the migration progress table of progress.h, and each view's
 * way of writing (and `ringproxy status`'s way of reading) one field.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "progress.h"

#define PROG_DESC(member, type, stat, none, hash, json, metric, help) \
    [PROG_F_##member] = { #member, stat, none, hash, json, metric, help, PROG_##type, \
                          offsetof(struct mig_progress, member) },
const struct prog_desc prog_desc[PROG_COUNT] = {
    MIG_PROGRESS_CODEC(PROG_DESC)
};
#undef PROG_DESC

#define PROG_AT(pr, f, T) ((T *)((char *)(pr) + prog_desc[f].off))
#define PROG_GET(pr, f, T) (*(const T *)((const char *)(pr) + prog_desc[f].off))

double prog_number(const struct mig_progress *pr, int f)
{
    switch (prog_desc[f].type) {
    case PROG_COUNTER:
    case PROG_GAUGE:
    case PROG_ORDINAL:
        return (double)PROG_GET(pr, f, uint64_t);
    case PROG_FLAG:
        return PROG_GET(pr, f, bool);
    case PROG_REAL:
        return PROG_GET(pr, f, double);
    case PROG_STATE:
        return (double)PROG_GET(pr, f, enum mig_state);
    case PROG_STR:
        break;
    }
    return 0;
}

const char *prog_text(const struct mig_progress *pr, int f, char *buf, size_t len)
{
    const char *s = (const char *)pr + prog_desc[f].off;

    switch (prog_desc[f].type) {
    case PROG_COUNTER:
    case PROG_GAUGE:
    case PROG_ORDINAL:
        snprintf(buf, len, "%llu", (unsigned long long)PROG_GET(pr, f, uint64_t));
        break;
    case PROG_FLAG:
        snprintf(buf, len, "%d", PROG_GET(pr, f, bool) ? 1 : 0);
        break;
    case PROG_REAL:
        snprintf(buf, len, "%.9g", PROG_GET(pr, f, double));
        break;
    case PROG_STATE:
        snprintf(buf, len, "%s", mig_state_names[PROG_GET(pr, f, enum mig_state)]);
        break;
    case PROG_STR:
        snprintf(buf, len, "%s", s);
        break;
    }
    return buf;
}

/* A number read as a count: negative, not finite or past 2^64 is 0. */
static uint64_t count_of(double v)
{
    return isfinite(v) && v >= 0 && v < 18446744073709551616.0 ? (uint64_t)v : 0;
}

void prog_set_text(struct mig_progress *pr, int f, const char *text)
{
    double v = strtod(text, NULL);

    switch (prog_desc[f].type) {
    case PROG_COUNTER:
    case PROG_GAUGE:
    case PROG_ORDINAL:
        *PROG_AT(pr, f, uint64_t) = count_of(v);
        break;
    case PROG_FLAG:
        *PROG_AT(pr, f, bool) = v != 0;
        break;
    case PROG_REAL:
        *PROG_AT(pr, f, double) = v;
        break;
    case PROG_STR:
        snprintf(PROG_AT(pr, f, char), PROG_STR_SIZE, "%s", text);
        break;
    case PROG_STATE:
        for (int s = 0; s < MIG_STATE_COUNT; s++) {
            if (strcmp(text, mig_state_names[s]) == 0) {
                *PROG_AT(pr, f, enum mig_state) = (enum mig_state)s;
            }
        }
        break;
    }
}

void prog_json(const struct mig_progress *pr, int f, struct json_w *w)
{
    switch (prog_desc[f].type) {
    case PROG_COUNTER:
    case PROG_GAUGE:
        json_uint(w, PROG_GET(pr, f, uint64_t));
        break;
    case PROG_ORDINAL:
        if (PROG_GET(pr, f, uint64_t) > 0) {
            json_uint(w, PROG_GET(pr, f, uint64_t));
        } else {
            json_null(w);           /* epochs start at 1: not known yet */
        }
        break;
    case PROG_FLAG:
        json_bool(w, PROG_GET(pr, f, bool));
        break;
    case PROG_REAL:
        json_real(w, PROG_GET(pr, f, double));
        break;
    case PROG_STR:
        json_str_or_null(w, (const char *)pr + prog_desc[f].off);
        break;
    case PROG_STATE:
        json_str(w, mig_state_names[PROG_GET(pr, f, enum mig_state)]);
        break;
    }
}

bool prog_set_json(struct mig_progress *pr, int f, const struct json_doc *d, uint32_t node)
{
    const struct json_node *n = &d->nodes[node];
    enum prog_type t = prog_desc[f].type;
    uint64_t u;
    double v;

    if (n->type == JSON_NULL) {
        if (t == PROG_REAL) {
            *PROG_AT(pr, f, double) = NAN;
        } else if (t == PROG_STR) {
            *PROG_AT(pr, f, char) = '\0';
        } else if (t == PROG_ORDINAL) {
            *PROG_AT(pr, f, uint64_t) = 0;
        }
        return t == PROG_REAL || t == PROG_STR || t == PROG_ORDINAL;
    }
    switch (t) {
    case PROG_COUNTER:
    case PROG_GAUGE:
    case PROG_ORDINAL:
        if (json_get_u64(n, UINT64_MAX, &u)) {
            *PROG_AT(pr, f, uint64_t) = u;
            return true;
        } else if (json_get_double(n, &v)) {
            *PROG_AT(pr, f, uint64_t) = count_of(v);
            return true;
        }
        return false;
    case PROG_FLAG:
        if (n->type == JSON_TRUE || n->type == JSON_FALSE) {
            *PROG_AT(pr, f, bool) = n->type == JSON_TRUE;
            return true;
        }
        return false;
    case PROG_REAL:
        return json_get_double(n, PROG_AT(pr, f, double));
    case PROG_STR:
    case PROG_STATE:
        if (json_get_cstr(n) == NULL) {
            return false;
        }
        prog_set_text(pr, f, json_get_cstr(n));
        return true;
    }
    return false;
}

double prog_eta_sec(const struct mig_progress *pr)
{
    if (pr->to[0] == '\0' || pr->arcs_done == 0 || !(pr->elapsed_sec > 0) ||
        pr->arcs_done > pr->arcs_total) {
        return NAN;
    }
    return (double)(pr->arcs_total - pr->arcs_done) * pr->elapsed_sec /
           (double)pr->arcs_done;
}
