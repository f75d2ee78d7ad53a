/*
 * status_cli.c — `ringproxy status`: which ring each pool's data obeys and how
 * far a migration has got, read from a running proxy's admin port (GET
 * /migration) or, when none answers, from each pool's Redis index (docs/ARCHITECTURE.md, "The index").
 * Blocking sockets and hiredis: an operator command, not the data path.
 */
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <hiredis/hiredis.h>

#include "cli.h"
#include "config.h"
#include "index.h"
#include "json.h"
#include "progress.h"
#include "ringrec.h"

#define STATUS_TIMEOUT_SEC 3
#define STATUS_MAX_REPLY (16u << 20)
#define STATUS_BAR_WIDTH 20
#define STATUS_HOLDER_SILENT_SEC 15    /* the lease lapses after 10 s */

/* What one source says about one pool. */
struct pool_status {
    char name[256];
    char state[32];             /* a mig_state name, or "none" (no index) */
    char note[256];             /* a line worth adding, or "" */
    char index_health[32];      /* the proxy's index health ("" unknown) */
    char index_error[192];      /* ... what Redis said */
    char rebuild[128];          /* the index rebuild: an adopt state, or the
                                   <prefix>:index field ("" unknown) */
    double rebuild_keys;
    bool indexed;
    /* the migration's progress, as far as the source tells it (progress.h);
     * epoch 0 and eta_sec NAN are "not known" */
    struct mig_progress pr;
    /* the index sweeper (docs/ARCHITECTURE.md, "The sweeper"); "" unknown */
    char sweep_state[32], sweep_note[128];
    double sweep_pass, sweep_sets_done, sweep_sets, sweep_passes, sweep_checked,
           sweep_removed, sweep_restored;
};

static void status_init(struct pool_status *st)
{
    memset(st, 0, sizeof(*st));
    st->pr.elapsed_sec = st->pr.eta_sec = NAN;
}

/* Redis and the admin port are data: no control byte reaches the terminal. */
static void status_clean(char *s)
{
    for (; *s != '\0'; s++) {
        *s = (unsigned char)*s < 0x20 || (unsigned char)*s == 0x7f ? '?' : *s;
    }
}

static void status_clean_progress(struct pool_status *st)
{
    for (int f = 0; f < PROG_COUNT; f++) {
        if (prog_desc[f].type == PROG_STR) {
            status_clean((char *)&st->pr + prog_desc[f].off);
        }
    }
}

/* --- printing ------------------------------------------------------------------ */

const char *cli_fmt_count(double v, char *buf, size_t len)
{
    char digits[32];
    size_t n, o = 0;

    snprintf(digits, sizeof(digits), "%.0f", v >= 0 && isfinite(v) ? v : 0);
    n = strlen(digits);
    for (size_t i = 0; i < n && o + 2 < len; i++) {
        if (i > 0 && (n - i) % 3 == 0) {
            buf[o++] = ',';
        }
        buf[o++] = digits[i];
    }
    buf[o] = '\0';
    return buf;
}

static void print_eta(FILE *out, double s)
{
    if (!isfinite(s) || s < 0) {
        return;
    } else if (s < 90) {
        fprintf(out, "  ~%.0f s left", ceil(s));
    } else if (s < 90 * 60) {
        fprintf(out, "  ~%.0f min left", ceil(s / 60));
    } else {
        fprintf(out, "  ~%.1f h left", s / 3600);
    }
}

/* "  index sweep: ..." when the source said anything about the sweeper. */
static void print_sweep(const struct pool_status *st, FILE *out)
{
    char n1[32], n2[32], n3[32];

    if (st->sweep_state[0] == '\0') {
        return;
    }
    fprintf(out, "  index sweep: %s", st->sweep_state);
    if (st->sweep_pass > 0 && st->sweep_sets > 0) {
        fprintf(out, ", pass %.0f at set %.0f/%.0f", st->sweep_pass, st->sweep_sets_done,
                st->sweep_sets);
    } else if (st->sweep_pass > 0) {
        fprintf(out, ", pass %.0f at set %.0f", st->sweep_pass, st->sweep_sets_done);
    }
    if (st->sweep_checked > 0 || st->sweep_removed > 0) {
        fprintf(out, "; %s looked at, %s removed, %s put back",
                cli_fmt_count(st->sweep_checked, n1, sizeof(n1)),
                cli_fmt_count(st->sweep_removed, n2, sizeof(n2)),
                cli_fmt_count(st->sweep_restored, n3, sizeof(n3)));
    }
    if (st->sweep_note[0] != '\0') {
        fprintf(out, " (%s)", st->sweep_note);
    }
    fprintf(out, "\n");
}

static void print_pool(const struct pool_status *st, FILE *out)
{
    char n1[32], n2[32];

    fprintf(out, "%s: ", st->name);
    if (!st->indexed) {
        fprintf(out, "no index (keys are not moved when the ring changes)\n");
        return;
    }
    fprintf(out, "%s", st->state);
    if (st->pr.epoch > 0) {
        fprintf(out, ", epoch %llu", (unsigned long long)st->pr.epoch);
    }
    if (st->pr.lease) {
        fprintf(out, ", this proxy moves the keys");
    }
    fprintf(out, "\n");
    const struct mig_progress *pr = &st->pr;
    if (pr->arcs_total > 0) {
        double frac = (double)pr->arcs_done / (double)pr->arcs_total;
        int filled = (int)(frac * STATUS_BAR_WIDTH);
        fputs("  [", out);
        for (int i = 0; i < STATUS_BAR_WIDTH; i++) {
            fputc(i < filled ? '#' : '.', out);
        }
        fprintf(out, "]  %.1f%%  arcs %llu/%llu  keys moved %s  stale %s",
                100.0 * frac, (unsigned long long)pr->arcs_done,
                (unsigned long long)pr->arcs_total,
                cli_fmt_count((double)pr->keys_moved, n1, sizeof(n1)),
                cli_fmt_count((double)pr->keys_stale, n2, sizeof(n2)));
        if (pr->keys_failed > 0) {
            fprintf(out, "  failed %s", cli_fmt_count((double)pr->keys_failed, n1,
                                                      sizeof(n1)));
        }
        print_eta(out, pr->eta_sec);
        fprintf(out, "\n");
    }
    if (pr->closing_sources > 0) {
        fprintf(out, "  closing pass: sources %llu/%llu done  keys listed in moving arcs %s"
                "  unknown to the index, moved %s",
                (unsigned long long)pr->closing_sources_done,
                (unsigned long long)pr->closing_sources,
                cli_fmt_count((double)pr->closing_listed, n1, sizeof(n1)),
                cli_fmt_count((double)pr->unindexed_moved, n2, sizeof(n2)));
        if (pr->closing_refused > 0) {
            fprintf(out, "  refused by %llu server%s", (unsigned long long)pr->closing_refused,
                    pr->closing_refused == 1 ? "" : "s");
        }
        fprintf(out, "\n");
    }
    if (pr->blocked[0] != '\0') {
        fprintf(out, "  blocked: %s\n", pr->blocked);
    }
    if (pr->copies_in_doubt > 0) {
        fprintf(out, "  copies in doubt: %llu (a new owner did not answer; each is "
                "settled before the migration ends)\n",
                (unsigned long long)pr->copies_in_doubt);
    }
    if (pr->pending) {
        fprintf(out, "  a newer ring waits for this migration to end\n");
    }
    print_sweep(st, out);
    if (st->note[0] != '\0') {
        fprintf(out, "  %s\n", st->note);
    }
    if (st->index_health[0] != '\0' && strcmp(st->index_health, "ok") != 0) {
        fprintf(out, "  index %s: %s\n", st->index_health, st->index_error);
    }
    if (st->rebuild[0] != '\0' && strcmp(st->rebuild, "none") != 0 &&
        strncmp(st->rebuild, "done", 4) != 0) {
        fprintf(out, "  index rebuild from the backends: %s", st->rebuild);
        if (strcmp(st->rebuild, "running") == 0) {
            fprintf(out, ", %s keys indexed so far", cli_fmt_count(st->rebuild_keys, n1,
                                                               sizeof(n1)));
        }
        fprintf(out, "\n");
    }
}

/* --- the admin port -------------------------------------------------------------- */

/* GET path over HTTP/1.0; the body of a 200 reply into *body (malloc'd). */
static int http_get(const char *host, int port, const char *path, char **body,
                    char *err, size_t errlen)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };
    struct addrinfo *res = NULL;
    struct timeval tv = { STATUS_TIMEOUT_SEC, 0 };
    char portstr[8], *buf = NULL;
    size_t len = 0, cap = 0;
    int fd = -1, rc = -1, gai;

    snprintf(portstr, sizeof(portstr), "%d", port);
    if ((gai = getaddrinfo(host, portstr, &hints, &res)) != 0) {
        snprintf(err, errlen, "%s", gai_strerror(gai));
        return -1;
    }
    snprintf(err, errlen, "no address");
    for (struct addrinfo *ai = res; ai != NULL && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            continue;
        }
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
            snprintf(err, errlen, "%s", strerror(errno));
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd < 0) {
        return -1;
    }
    char req[512];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, host);
    if (n < 0 || (size_t)n >= sizeof(req) || send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
        snprintf(err, errlen, "cannot send the request: %s", strerror(errno));
        goto out;
    }
    for (;;) {
        if (len + 4096 + 1 > cap) {
            char *nb = cap < STATUS_MAX_REPLY ? realloc(buf, cap = cap ? cap * 2 : 65536) : NULL;
            if (nb == NULL) {
                snprintf(err, errlen, "reply too large");
                goto out;
            }
            buf = nb;
        }
        ssize_t got = recv(fd, buf + len, cap - len - 1, 0);
        if (got < 0 && errno == EINTR) {
            continue;
        }
        if (got < 0) {
            snprintf(err, errlen, "%s", errno == EAGAIN ? "timed out" : strerror(errno));
            goto out;
        }
        if (got == 0) {
            break;
        }
        len += (size_t)got;
    }
    buf[len] = '\0';
    int code = 0;
    char *start = strstr(buf, "\r\n\r\n");
    if (sscanf(buf, "HTTP/%*d.%*d %d", &code) != 1 || start == NULL) {
        snprintf(err, errlen, "not an HTTP reply");
        goto out;
    }
    if (code != 200) {
        snprintf(err, errlen, "HTTP status %d", code);
        goto out;
    }
    if ((*body = strdup(start + 4)) == NULL) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    rc = 0;
out:
    free(buf);
    close(fd);
    return rc;
}

/* status's own fields of a pool's /migration object; the progress fields
 * are progress.h's. */
enum field_type { F_STR, F_NUM, F_BOOL };

static const struct status_field {
    const char *key;
    enum field_type type;
    size_t off, len;
} status_fields[] = {
#define STR(k, f) { k, F_STR, offsetof(struct pool_status, f), \
                    sizeof(((struct pool_status *)0)->f) }
#define NUM(k, f) { k, F_NUM, offsetof(struct pool_status, f), 0 }
#define BOOL(k, f) { k, F_BOOL, offsetof(struct pool_status, f), 0 }
    STR("name", name), STR("state", state),
    STR("index_health", index_health), STR("index_error", index_error),
    BOOL("indexed", indexed),
    STR("rebuild", rebuild), NUM("rebuild_keys", rebuild_keys),
    STR("sweep_state", sweep_state), STR("sweep_note", sweep_note),
    NUM("sweep_pass", sweep_pass), NUM("sweep_sets_done", sweep_sets_done),
    NUM("sweep_sets", sweep_sets), NUM("sweep_passes", sweep_passes),
    NUM("sweep_checked", sweep_checked), NUM("sweep_removed", sweep_removed),
    NUM("sweep_restored", sweep_restored),
#undef STR
#undef NUM
#undef BOOL
};

/* One of status's own fields from member c; a value of another type than
 * the field's is skipped, as a member nobody knows is. */
static void status_field_set(struct pool_status *st, const struct status_field *f,
                             const struct json_node *v)
{
    char *dst = (char *)st + f->off;
    const char *s;

    if (f->type == F_STR && (s = json_get_cstr(v)) != NULL) {
        snprintf(dst, f->len, "%s", s);
    } else if (f->type == F_NUM && v->type == JSON_NUMBER) {
        json_get_double(v, (double *)dst);
    } else if (f->type == F_BOOL && (v->type == JSON_TRUE || v->type == JSON_FALSE)) {
        *(bool *)dst = v->type == JSON_TRUE;
    }
}

/* One pool's object (node i) into st; false if it is not an object. */
static bool json_pool(const struct json_doc *d, uint32_t i, struct pool_status *st)
{
    status_init(st);
    if (d->nodes[i].type != JSON_OBJECT) {
        return false;
    }
    for (uint32_t c = json_first(d, i); c != 0; c = json_next(d, i, c)) {
        const struct json_node *v = &d->nodes[c];
        if (memchr(v->key, '\0', v->keylen) != NULL) {
            continue;
        }
        for (int f = 0; f < PROG_COUNT; f++) {
            if (prog_desc[f].type != PROG_STATE && prog_desc[f].json[0] != '\0' &&
                strcmp(v->key, prog_desc[f].json) == 0) {
                prog_set_json(&st->pr, f, d, c);
            }
        }
        for (size_t f = 0; f < sizeof(status_fields) / sizeof(status_fields[0]); f++) {
            if (strcmp(v->key, status_fields[f].key) == 0) {
                status_field_set(st, &status_fields[f], v);
            }
        }
    }
    status_clean_progress(st);
    return true;
}

/* Every pool of a /migration reply, {"pools":[{flat object}, ...]}; returns
 * how many (or -1: malformed). */
static int json_pools(const char *body, size_t len, struct pool_status **out)
{
    const struct json_limits lim = { .max_len = STATUS_MAX_REPLY };
    struct json_doc d;
    uint32_t list;
    int n = 0;

    *out = NULL;
    if (json_parse(&d, body, len, &lim, NULL, 0) != 0) {
        return -1;
    }
    if ((list = json_member(&d, 0, "pools")) == 0 || d.nodes[list].type != JSON_ARRAY ||
        (d.nodes[list].count > 0 &&
         (*out = calloc(d.nodes[list].count, sizeof(**out))) == NULL)) {
        json_doc_free(&d);
        return -1;
    }
    for (uint32_t c = json_first(&d, list); c != 0; c = json_next(&d, list, c)) {
        if (!json_pool(&d, c, &(*out)[n++])) {
            free(*out);
            *out = NULL;
            json_doc_free(&d);
            return -1;
        }
    }
    json_doc_free(&d);
    return n;
}

/* Print the pools the admin port reports; -1 when it cannot be read. */
static int status_from_admin(const char *addr, int port, const char *pool, FILE *out,
                             char *err, size_t errlen)
{
    struct pool_status *pools;
    char *body = NULL;
    int n, shown = 0;

    if (port == 0) {
        return -1;
    }
    if (http_get(addr, port, "/migration", &body, err, errlen) != 0) {
        return -1;
    }
    n = json_pools(body, strlen(body), &pools);
    free(body);
    if (n < 0) {
        snprintf(err, errlen, "GET /migration: not the JSON expected");
        return -1;
    }
    fprintf(out, "ringproxy status (admin port %s:%d)\n", addr, port);
    for (int i = 0; i < n; i++) {
        if (pool == NULL || strcmp(pools[i].name, pool) == 0) {
            print_pool(&pools[i], out);
            shown++;
        }
    }
    if (pool != NULL && shown == 0) {
        fprintf(out, "%s: not served by the proxy on %s:%d\n", pool, addr, port);
    }
    free(pools);
    return 0;
}

/* --- Redis --------------------------------------------------------------------- */

/* HGETALL key; a field's value or NULL. */
static const char *hash_field(const redisReply *h, const char *field)
{
    for (size_t j = 0; h != NULL && h->type == REDIS_REPLY_ARRAY && j + 1 < h->elements; j += 2) {
        if (h->element[j]->type == REDIS_REPLY_STRING &&
            h->element[j + 1]->type == REDIS_REPLY_STRING &&
            strcmp(h->element[j]->str, field) == 0) {
            return h->element[j + 1]->str;
        }
    }
    return NULL;
}

static double hash_num(const redisReply *h, const char *field)
{
    const char *v = hash_field(h, field);
    return v != NULL ? strtod(v, NULL) : 0;
}

/* Does the ring record describe the same ring as the config? */
static bool record_matches(const redisReply *rec, const struct conf_pool *p)
{
    char err[256];
    struct ring *r = conf_pool_ring(p, err, sizeof(err));
    bool same = r != NULL && cli_record_matches(rec, r);

    ring_unref(r);
    return same;
}

/* The sweeper's position, as its lease holder keeps it in <prefix>:index:sweep
 * (this pass's counts), and who holds the lease. */
static void status_sweep_from_redis(redisContext *rc, const struct conf_pool *p,
                                    struct pool_status *st)
{
    redisReply *h = redisCommand(rc, "HGETALL %s:index:sweep", p->index.prefix);
    redisReply *lock = h != NULL ? redisCommand(rc, "GET %s:index:sweep:lock",
                                                p->index.prefix) : NULL;

    if (h != NULL && h->type == REDIS_REPLY_ARRAY && h->elements > 0) {
        const char *holder = hash_field(h, "holder");
        bool held = lock != NULL && lock->type == REDIS_REPLY_STRING;
        snprintf(st->sweep_state, sizeof(st->sweep_state), "%s",
                 held ? "sweeping" : "no proxy sweeps now");
        st->sweep_pass = hash_num(h, "pass");
        st->sweep_sets_done = hash_num(h, "point");
        st->sweep_checked = hash_num(h, "checked");
        st->sweep_removed = hash_num(h, "removed");
        snprintf(st->sweep_note, sizeof(st->sweep_note), "this pass; last by %.80s, %.0f s "
                 "ago", holder != NULL ? holder : "?",
                 (double)time(NULL) - hash_num(h, "updated"));
    } else if (p->index.sweep_rate == 0) {
        snprintf(st->sweep_state, sizeof(st->sweep_state), "off");
    }
    freeReplyObject(h);
    freeReplyObject(lock);
}

/* One indexed pool from its Redis keys; -1 when Redis cannot be read. */
static int status_from_redis(const struct conf_pool *p, struct pool_status *st,
                             char *err, size_t errlen)
{
    redisContext *rc = cli_redis_open(&p->index, err, errlen);
    redisReply *ring = NULL, *mig = NULL;

    if (rc == NULL) {
        return -1;
    }
    ring = redisCommand(rc, "HGETALL %s:ring", p->index.prefix);
    mig = ring != NULL ? redisCommand(rc, "HGETALL %s:migration", p->index.prefix) : NULL;
    if (cli_redis_failed(rc, ring, &p->index, "HGETALL <prefix>:ring", err, errlen) ||
        cli_redis_failed(rc, mig, &p->index, "HGETALL <prefix>:migration", err, errlen) ||
        ring->type != REDIS_REPLY_ARRAY || mig->type != REDIS_REPLY_ARRAY) {
        if (ring != NULL && mig != NULL && ring->type != REDIS_REPLY_ERROR &&
            mig->type != REDIS_REPLY_ERROR) {
            snprintf(err, errlen, "Redis %s: unexpected reply to HGETALL",
                     p->index.redis.text);
        }
        freeReplyObject(ring);
        freeReplyObject(mig);
        redisFree(rc);
        return -1;
    }
    st->indexed = true;
    if (ring->elements == 0) {
        snprintf(st->state, sizeof(st->state), "none");
        snprintf(st->note, sizeof(st->note), "no ring record %s:ring yet: no proxy "
                 "has served this pool with this index", p->index.prefix);
    } else {
        const char *epoch = hash_field(ring, "epoch");
        if (epoch != NULL) {
            prog_set_text(&st->pr, PROG_F_epoch, epoch);
        }
    }
    if (ring->elements > 0 && hash_field(mig, "to") == NULL) {
        snprintf(st->state, sizeof(st->state), "idle");
        if (!record_matches(ring, p)) {
            snprintf(st->note, sizeof(st->note), "the config's ring differs from the "
                     "recorded one: a migration starts when the proxy loads it");
        }
    } else if (hash_field(mig, "to") != NULL) {
        /* Only the lease holder writes progress, once a second. */
        const char *holder = hash_field(mig, "holder");
        double updated = hash_num(mig, "updated"), started = hash_num(mig, "started");
        double silent = (double)time(NULL) - updated;
        for (int f = 0; f < PROG_COUNT; f++) {
            const char *v = prog_desc[f].hash[0] ? hash_field(mig, prog_desc[f].hash) : NULL;
            if (v != NULL) {
                prog_set_text(&st->pr, f, v);
            }
        }
        prog_set_text(&st->pr, PROG_F_to, hash_field(mig, "to"));
        status_clean_progress(st);
        const char *phase = hash_field(mig, "phase");
        snprintf(st->state, sizeof(st->state), "%s", phase != NULL ? phase : "waiting");
        if (holder == NULL) {
            snprintf(st->note, sizeof(st->note), "no proxy holds the migration lease yet");
        } else if (silent > STATUS_HOLDER_SILENT_SEC) {
            snprintf(st->note, sizeof(st->note), "lease holder %s silent for %.0f s",
                     holder, silent);
        } else {
            snprintf(st->note, sizeof(st->note), "moved by %s", holder);
        }
        if (started > 0 && updated > started) {
            st->pr.elapsed_sec = updated - started;
        }
        st->pr.eta_sec = prog_eta_sec(&st->pr);
    }
    redisReply *rb = redisCommand(rc, "HGET %s:index rebuild", p->index.prefix);
    if (rb != NULL && rb->type == REDIS_REPLY_STRING) {
        snprintf(st->rebuild, sizeof(st->rebuild), "%s", rb->str);
        for (char *c = st->rebuild; *c != '\0'; c++) {
            *c = (unsigned char)*c < 0x20 || (unsigned char)*c == 0x7f ? '?' : *c;
        }
    }
    freeReplyObject(rb);
    status_sweep_from_redis(rc, p, st);
    freeReplyObject(ring);
    freeReplyObject(mig);
    redisFree(rc);
    return 0;
}

int cli_status(const char *path, const char *pool, const char *admin_addr,
               int admin_port, FILE *out)
{
    struct conf_errors errs;
    struct config *c = config_load(path, &errs);
    char why[256], err[512];
    int read = 0, failed = 0;

    for (size_t i = 0; i < errs.n; i++) {
        fprintf(stderr, "%s\n", errs.msgs[i]);
    }
    conf_errors_free(&errs);
    if (c == NULL) {
        return 1;
    }
    if (pool != NULL && config_pool(c, pool) == NULL) {
        fprintf(stderr, "%s: no pool named '%s'\n", path, pool);
        config_free(c);
        return 1;
    }
    if (status_from_admin(admin_addr, admin_port, pool, out, why, sizeof(why)) == 0) {
        config_free(c);
        return 0;
    }
    if (admin_port == 0) {
        fprintf(out, "ringproxy status (Redis; admin port not asked: -P 0)\n");
    } else {
        fprintf(out, "ringproxy status (Redis; admin port %s:%d: %s)\n", admin_addr,
                admin_port, why);
    }
    for (uint32_t i = 0; i < c->npools; i++) {
        const struct conf_pool *p = &c->pools[i];
        struct pool_status st;
        if (pool != NULL && strcmp(p->name, pool) != 0) {
            continue;
        }
        status_init(&st);
        snprintf(st.name, sizeof(st.name), "%s", p->name);
        if (!p->index.enabled) {
            print_pool(&st, out);
        } else if (status_from_redis(p, &st, err, sizeof(err)) != 0) {
            fprintf(out, "%s: unknown: %s\n", p->name, err);
            failed++;
        } else {
            print_pool(&st, out);
            read++;
        }
    }
    config_free(c);
    if (read == 0) {
        fprintf(stderr, "ringproxy status: nothing to read: the admin port did not "
                "answer and no indexed pool's Redis could be read\n");
    } else if (failed > 0) {
        fprintf(stderr, "ringproxy status: %d pool%s Redis could not be read\n",
                failed, failed == 1 ? "'s" : "s'");
    }
    return read > 0 && failed == 0 ? 0 : 1;
}
