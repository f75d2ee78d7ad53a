/*
 * config.c — the YAML pool file (docs/ARCHITECTURE.md, "The config file"), a superset of twemproxy's.
 *
 * The file is loaded as a libyaml document (so every node keeps its line and
 * column) and walked with one table of directives per mapping: pool, index,
 * migration. Each row names a key, its parser, where the value goes and its
 * default; the same parsers read the defaults, so a default can never be a
 * value the file could not have written. Parsing never stops at the first
 * error: every problem is collected so `ringproxy -t` can show them all.
 *
 * A hostile or broken file must cost a reload bounded time (it runs on the
 * event loop), so the bytes are checked before libyaml builds a document:
 * at most CONF_FILE_MAX of them, nesting at most CONF_DEPTH_MAX deep (libyaml
 * spends time proportional to the depth on every token), no aliases (one
 * alias may stand for a large node as often as it is written). Past
 * CONF_ERRORS_MAX errors are only counted; pools and servers are capped, and
 * duplicate servers are found by sorting, not by comparing every pair.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <yaml.h>

#include "config.h"
#include "ringrec.h"
#include "sweep.h"

_Static_assert(CONF_SERVERS_MAX == RINGREC_MAX_SERVERS &&
               CONF_STR_MAX == RINGREC_STR_MAX,
               "a ring the config accepts must fit a ring record");

struct conf_ctx {
    const char *path;
    size_t nservers;        /* servers in every pool so far */
    yaml_document_t *doc;
    struct conf_errors *errs;
    const char *pool_name;
};

struct conf_directive;
typedef void (*conf_parse_fn)(struct conf_ctx *cx, yaml_node_t *node,
                              const char *text, void *field,
                              const struct conf_directive *d);

struct conf_directive {
    const char *name;
    conf_parse_fn parse;
    size_t offset;
    const char *defval;     /* parsed by `parse` when the key is absent */
    int64_t min, max;       /* for numbers */
};

/* Record "FILE:LINE:COL: msg" (line 0: no position known). */
static void conf_verror(struct conf_ctx *cx, size_t line0, size_t col0,
                        const char *fmt, va_list ap)
{
    char msg[512];
    char *line = NULL;

    if (cx->errs->n >= CONF_ERRORS_MAX) {
        cx->errs->more++;
        return;
    }
    if (cx->errs->n == cx->errs->cap) {
        size_t cap = cx->errs->cap ? cx->errs->cap * 2 : 8;
        char **msgs = realloc(cx->errs->msgs, (cap + 1) * sizeof(*msgs));
        if (msgs == NULL) {
            cx->errs->more++;
            return;
        }
        cx->errs->msgs = msgs;
        cx->errs->cap = cap;    /* one spare slot for the "... and K more" */
    }
    vsnprintf(msg, sizeof(msg), fmt, ap);
    int len = line0 > 0 ?
        asprintf(&line, "%s:%zu:%zu: %s", cx->path, line0, col0, msg) :
        asprintf(&line, "%s: %s", cx->path, msg);
    if (len < 0) {
        cx->errs->more++;   /* out of memory: still counted as an error */
        return;
    }
    cx->errs->msgs[cx->errs->n++] = line;
}

/* After parsing: the errors past CONF_ERRORS_MAX as one last line. */
static void conf_errors_finish(struct conf_ctx *cx)
{
    struct conf_errors *e = cx->errs;
    char *line = NULL;

    if (e->more == 0) {
        return;
    }
    if (e->msgs == NULL) {
        e->msgs = calloc(1, sizeof(*e->msgs));
        e->cap = 0;
    }
    if (e->msgs != NULL && asprintf(&line, "%s: ... and %zu more error%s",
                                    cx->path, e->more,
                                    e->more == 1 ? "" : "s") >= 0) {
        e->msgs[e->n++] = line;     /* the spare slot conf_verror kept */
    }
}

static void conf_error_at(struct conf_ctx *cx, int line, int col,
                          const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void conf_error_at(struct conf_ctx *cx, int line, int col,
                          const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    conf_verror(cx, (size_t)line, (size_t)col, fmt, ap);
    va_end(ap);
}

/* An error at a node (NULL: a default value, which has no position). */
static void conf_error(struct conf_ctx *cx, const yaml_node_t *node,
                       const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void conf_error(struct conf_ctx *cx, const yaml_node_t *node,
                       const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    conf_verror(cx, node ? node->start_mark.line + 1 : 0,
                node ? node->start_mark.column + 1 : 0, fmt, ap);
    va_end(ap);
}

static const char *node_type_name(const yaml_node_t *n)
{
    switch (n->type) {
    case YAML_SCALAR_NODE:
        return "a scalar";
    case YAML_SEQUENCE_NODE:
        return "a list";
    case YAML_MAPPING_NODE:
        return "a mapping";
    default:
        return "nothing";
    }
}

static const char *scalar(yaml_node_t *n)
{
    return n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

/* --- addresses ---------------------------------------------------------- */

static void addr_free(struct conf_addr *a)
{
    free(a->text);
    free(a->host);
    memset(a, 0, sizeof(*a));
}

static int parse_port(const char *s, uint16_t *port)
{
    char *end;

    errno = 0;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || errno != 0 || v < 1 || v > 65535) {
        return -1;
    }
    *port = (uint16_t)v;
    return 0;
}

/*
 * "host:port", "[ipv6]:port" or "/path/to/socket"; returns 0 or -1 with a
 * reason. An IPv6 address must be in brackets: "::1:11211" is itself an
 * IPv6 address, so the unbracketed form cannot say where the port starts
 * (docs/ARCHITECTURE.md, "Addresses and names").
 */
static int addr_parse(const char *s, size_t len, struct conf_addr *a,
                      const char **why)
{
    memset(a, 0, sizeof(*a));
    if (len > CONF_STR_MAX) {
        *why = "longer than 255 bytes";
        return -1;
    }
    /* bound or connected truncated, a path would name another file */
    if (len > 0 && s[0] == '/' && len >= sizeof(((struct sockaddr_un *)NULL)->sun_path)) {
        *why = "a unix socket path holds at most 107 bytes";
        return -1;
    }
    a->text = strndup(s, len);
    if (a->text == NULL) {
        *why = "out of memory";
        return -1;
    }
    if (len > 0 && s[0] == '/') {
        a->is_unix = true;
        a->host = strdup(a->text);
        return a->host != NULL ? 0 : -1;
    }
    const char *host = a->text;
    size_t hostlen;
    char *colon;
    if (a->text[0] == '[') {
        char *close = strchr(a->text, ']');
        if (close == NULL || close[1] != ':') {
            *why = "expected [ipv6]:port";
            goto err;
        }
        a->is_ipv6 = true;
        host = a->text + 1;
        hostlen = (size_t)(close - host);
        colon = close + 1;
    } else {
        colon = strrchr(a->text, ':');
        if (colon == NULL || colon == a->text) {
            *why = "expected host:port or an absolute unix socket path";
            goto err;
        }
        hostlen = (size_t)(colon - a->text);
    }
    if (parse_port(colon + 1, &a->port) != 0) {
        *why = "port must be a number from 1 to 65535";
        goto err;
    }
    a->host = strndup(host, hostlen);
    if (a->host == NULL) {
        *why = "out of memory";
        goto err;
    }
    if (a->is_ipv6) {
        struct in6_addr in6;
        if (inet_pton(AF_INET6, a->host, &in6) != 1) {
            *why = "not an IPv6 address between the brackets";
            goto err;
        }
        return 0;
    }
    if (memchr(a->host, ':', hostlen) != NULL) {
        *why = "an IPv6 address must be in brackets, as [::1]:11211";
        goto err;
    }
    for (const char *p = a->host; *p; p++) {
        if (*p == ' ' || *p == '/' || *p == '[' || *p == ']') {
            *why = "host must be a name, an IPv4 address or [an IPv6 address]";
            goto err;
        }
    }
    if (*a->host == '\0') {
        *why = "the host is empty";
        goto err;
    }
    return 0;

err:
    addr_free(a);
    return -1;
}

/* --- scalar parsers (also used for defaults: node may be NULL) ------------ */

static void parse_int(struct conf_ctx *cx, yaml_node_t *node, const char *text,
                      void *field, const struct conf_directive *d)
{
    char *end;

    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (*text == '\0' || *end != '\0' || errno != 0 || v < d->min || v > d->max) {
        conf_error(cx, node, "%s: expected an integer from %lld to %lld, got '%s'",
                   d->name, (long long)d->min, (long long)d->max, text);
        return;
    }
    *(int64_t *)field = v;
}

/* `auto`, `all` (config.h: CONF_ACTIVE_*), or an integer as parse_int. */
static void parse_threads_active(struct conf_ctx *cx, yaml_node_t *node, const char *text,
                                 void *field, const struct conf_directive *d)
{
    if (strcmp(text, "auto") == 0 || strcmp(text, "all") == 0) {
        *(int64_t *)field = *text == 'a' && text[1] == 'u' ? CONF_ACTIVE_AUTO : CONF_ACTIVE_ALL;
        return;
    }
    errno = 0;
    char *end;
    long long v = strtoll(text, &end, 10);
    if (*text == '\0' || *end != '\0' || errno != 0 || v < d->min || v > d->max) {
        conf_error(cx, node, "%s: expected auto, all or an integer from %lld to %lld, got '%s'",
                   d->name, (long long)d->min, (long long)d->max, text);
        return;
    }
    *(int64_t *)field = v;
}

/* A byte count with an optional k/m suffix (1024-based), as memcached's -I. */
static void parse_size(struct conf_ctx *cx, yaml_node_t *node, const char *text,
                       void *field, const struct conf_directive *d)
{
    char *end;

    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (*end == 'k' || *end == 'K') {
        v *= 1024, end++;
    } else if (*end == 'm' || *end == 'M') {
        v *= 1024 * 1024, end++;
    }
    if (*text == '\0' || *end != '\0' || errno != 0 || v < d->min || v > d->max) {
        conf_error(cx, node, "%s: expected a size from %lld to %lld bytes "
                   "(suffix k or m allowed), got '%s'", d->name,
                   (long long)d->min, (long long)d->max, text);
        return;
    }
    *(int64_t *)field = v;
}

static void parse_bool(struct conf_ctx *cx, yaml_node_t *node, const char *text,
                       void *field, const struct conf_directive *d)
{
    if (strcmp(text, "true") == 0) {
        *(bool *)field = true;
    } else if (strcmp(text, "false") == 0) {
        *(bool *)field = false;
    } else {
        conf_error(cx, node, "%s: expected true or false, got '%s'", d->name, text);
    }
}

static void parse_string(struct conf_ctx *cx, yaml_node_t *node, const char *text,
                         void *field, const struct conf_directive *d)
{
    char **dst = field;

    if (*text == '\0') {
        conf_error(cx, node, "%s: expected a non-empty string", d->name);
        return;
    }
    free(*dst);
    if ((*dst = strdup(text)) == NULL) {
        conf_error(cx, node, "%s: out of memory", d->name);
    }
}

static void parse_addr(struct conf_ctx *cx, yaml_node_t *node, const char *text,
                       void *field, const struct conf_directive *d)
{
    struct conf_addr *a = field, parsed;
    const char *why = "";

    if (addr_parse(text, strlen(text), &parsed, &why) != 0) {
        conf_error(cx, node, "%s: bad address '%s': %s", d->name, text, why);
        return;
    }
    addr_free(a);
    *a = parsed;
}

/*
 * A pool's listen: host:port, a unix socket path, or twemproxy's
 * "/path/to/socket 0666", the path and the socket's mode (octal, at most
 * 0777). listen.text is the address without the mode, so a reload that
 * changes only the mode keeps the socket (proxy.c, plan_commit).
 */
static void parse_listen(struct conf_ctx *cx, yaml_node_t *node, const char *text,
                         void *field, const struct conf_directive *d)
{
    struct conf_pool *p = (struct conf_pool *)((char *)field - d->offset);
    const char *sp = strrchr(text, ' '), *mode;
    struct conf_addr parsed;
    const char *why = "";
    size_t len;
    char *end;

    p->listen_mode = -1;
    if (sp == NULL) {
        parse_addr(cx, node, text, field, d);
        return;
    }
    if (text[0] != '/') {
        conf_error(cx, node, "%s: bad address '%s': a mode (\"/path/to/socket "
                   "0666\") is for a unix socket path only", d->name, text);
        return;
    }
    mode = sp + 1;
    errno = 0;
    long v = strtol(mode, &end, 8);
    if (strlen(mode) < 3 || strlen(mode) > 4 || *end != '\0' || errno != 0 ||
        strspn(mode, "01234567") != strlen(mode) || v < 0 || v > 0777) {
        conf_error(cx, node, "%s: bad mode '%s' for unix socket '%.*s': expected "
                   "octal permissions from 000 to 0777, such as 0666", d->name, mode,
                   (int)(sp - text), text);
        return;
    }
    for (len = (size_t)(sp - text); len > 0 && text[len - 1] == ' '; len--) {
    }
    if (addr_parse(text, len, &parsed, &why) != 0) {
        conf_error(cx, node, "%s: bad address '%.*s': %s", d->name, (int)len, text,
                   why);
        return;
    }
    addr_free(field);
    *(struct conf_addr *)field = parsed;
    p->listen_mode = v;
}

static void parse_hash(struct conf_ctx *cx, yaml_node_t *node, const char *text,
                       void *field, const struct conf_directive *d)
{
    int h = hash_by_name(text);

    if (h < 0) {
        char names[256] = "";
        for (int i = 0; i < HASH_COUNT; i++) {
            strcat(names, i ? ", " : "");
            strcat(names, hash_names[i]);
        }
        conf_error(cx, node, "%s: unknown hash '%s' (expected one of: %s)",
                   d->name, text, names);
        return;
    }
    *(int64_t *)field = h;
}

static void parse_compat(struct conf_ctx *cx, yaml_node_t *node, const char *text,
                         void *field, const struct conf_directive *d)
{
    for (int i = 0; i < RING_COMPAT_COUNT; i++) {
        if (strcmp(text, ring_compat_names[i]) == 0) {
            *(int64_t *)field = i;
            return;
        }
    }
    conf_error(cx, node, "%s: expected libmemcached or libketama, got '%s'",
               d->name, text);
}

static void parse_distribution(struct conf_ctx *cx, yaml_node_t *node,
                               const char *text, void *field,
                               const struct conf_directive *d)
{
    (void)field;
    if (strcmp(text, "ketama") == 0) {
        return;
    }
    if (strcmp(text, "modula") == 0 || strcmp(text, "random") == 0) {
        conf_error(cx, node, "%s: '%s' is not supported: it remaps most keys "
                   "whenever a server is added or removed, which defeats "
                   "migration; use ketama", d->name, text);
        return;
    }
    conf_error(cx, node, "%s: expected ketama, got '%s'", d->name, text);
}

static void parse_hash_tag(struct conf_ctx *cx, yaml_node_t *node,
                           const char *text, void *field,
                           const struct conf_directive *d)
{
    struct conf_pool *p = (struct conf_pool *)((char *)field - d->offset);

    if (strlen(text) != 2) {
        conf_error(cx, node, "%s: expected exactly two characters, e.g. \"{}\", "
                   "got '%s'", d->name, text);
        return;
    }
    p->has_tag = true;
    memcpy(p->hash_tag, text, 2);
}

/* --- mappings ------------------------------------------------------------ */

static void parse_table(struct conf_ctx *cx, yaml_node_t *map, void *base,
                        const struct conf_directive *tab, size_t ntab,
                        bool *seen);

static void parse_servers(struct conf_ctx *cx, yaml_node_t *node,
                          const char *text, void *field,
                          const struct conf_directive *d);

static const struct conf_directive index_directives[] = {
    { "redis", parse_addr, offsetof(struct conf_index, redis), NULL, 0, 0 },
    { "db", parse_int, offsetof(struct conf_index, db), "0", 0, 1 << 20 },
    { "prefix", parse_string, offsetof(struct conf_index, prefix), NULL, 0, 0 },
    { "password", parse_string, offsetof(struct conf_index, password), NULL, 0, 0 },
    { "queue_max", parse_int, offsetof(struct conf_index, queue_max), "100000",
      1, INT32_MAX },
    { "reply_timeout", parse_int, offsetof(struct conf_index, reply_timeout), "10000",
      100, 3600000 },
    { "rebuild_rate", parse_int, offsetof(struct conf_index, rebuild_rate), "50000",
      0, INT32_MAX },
    { "sweep_rate", parse_int, offsetof(struct conf_index, sweep_rate),
      SWEEP_RATE_DEFAULT, 0, INT32_MAX },
    { "sweep_interval", parse_int, offsetof(struct conf_index, sweep_interval), "60000",
      0, 86400000 },
};

static const struct conf_directive migration_directives[] = {
    { "rate", parse_int, offsetof(struct conf_migration, rate), "50000", 0,
      INT32_MAX },
    { "delete_source", parse_bool, offsetof(struct conf_migration, delete_source),
      "true", 0, 0 },
    { "inflight", parse_int, offsetof(struct conf_migration, inflight), "16", 1,
      4096 },
    { "liveness", parse_int, offsetof(struct conf_migration, liveness), "10000", 0,
      3600000 },
    { "follow_unknown_servers", parse_bool, offsetof(struct conf_migration, follow_unknown),
      "false", 0, 0 },
};

#define NELEMS(a) (sizeof(a) / sizeof((a)[0]))

static void parse_index(struct conf_ctx *cx, yaml_node_t *node,
                        const char *text, void *field,
                        const struct conf_directive *d)
{
    struct conf_index *ix = field;
    bool seen[NELEMS(index_directives)] = { false };

    (void)text;
    if (node->type != YAML_MAPPING_NODE) {
        conf_error(cx, node, "%s: expected a mapping (redis, db, prefix, ...), "
                   "got %s", d->name, node_type_name(node));
        return;
    }
    parse_table(cx, node, ix, index_directives, NELEMS(index_directives), seen);
    if (!seen[0]) {
        conf_error(cx, node, "index: 'redis' is required (host:port or a "
                   "unix socket path)");
    }
    ix->enabled = true;
}

static void parse_migration(struct conf_ctx *cx, yaml_node_t *node,
                            const char *text, void *field,
                            const struct conf_directive *d)
{
    bool seen[NELEMS(migration_directives)] = { false };

    (void)text;
    if (node->type != YAML_MAPPING_NODE) {
        conf_error(cx, node, "%s: expected a mapping (rate, delete_source, "
                   "inflight), got %s", d->name, node_type_name(node));
        return;
    }
    parse_table(cx, node, field, migration_directives,
                NELEMS(migration_directives), seen);
}

#define POOL(f) offsetof(struct conf_pool, f)

/* twemproxy's keys with twemproxy's defaults (but timeout: twemproxy waits
 * forever, which turns a stopped server into clients that hang silently),
 * then ringproxy's own. */
static const struct conf_directive pool_directives[] = {
    { "listen", parse_listen, POOL(listen), NULL, 0, 0 },
    { "hash", parse_hash, POOL(hash), "fnv1a_64", 0, 0 },
    { "hash_tag", parse_hash_tag, POOL(hash_tag), NULL, 0, 0 },
    { "distribution", parse_distribution, POOL(distribution), "ketama", 0, 0 },
    { "timeout", parse_int, POOL(timeout), "5000", -1, INT32_MAX },
    { "backlog", parse_int, POOL(backlog), "512", 1, INT32_MAX },
    { "reuseport", parse_bool, POOL(reuseport), "true", 0, 0 },
    { "preconnect", parse_bool, POOL(preconnect), "false", 0, 0 },
    { "redis", parse_bool, POOL(redis), "false", 0, 0 },
    { "tcpkeepalive", parse_bool, POOL(tcpkeepalive), "false", 0, 0 },
    { "server_connections", parse_int, POOL(server_connections), "1", 1, 1024 },
    { "auto_eject_hosts", parse_bool, POOL(auto_eject_hosts), "false", 0, 0 },
    { "server_retry_timeout", parse_int, POOL(server_retry_timeout), "30000", 1,
      INT32_MAX },
    { "server_failure_limit", parse_int, POOL(server_failure_limit), "2", 1,
      INT32_MAX },
    { "client_connections", parse_int, POOL(client_connections), "0", 0,
      INT32_MAX },
    { "servers", parse_servers, POOL(servers), NULL, 0, 0 },
    { "compat", parse_compat, POOL(compat), "libmemcached", 0, 0 },
    { "item_size_max", parse_size, POOL(item_size_max), "1m", 1024,
      1024 * 1024 * 1024 },
    { "client_timeout", parse_int, POOL(client_timeout), "0", 0, INT32_MAX },
    { "value_timeout", parse_int, POOL(value_timeout), "10000", 0, INT32_MAX },
    { "client_max_memory", parse_size, POOL(client_max_memory), "64m", 2 << 20,
      INT64_C(1) << 40 },
    { "server_max_queue", parse_size, POOL(server_max_queue), "16m", 64 << 10,
      INT64_C(1) << 40 },
    { "index", parse_index, POOL(index), NULL, 0, 0 },
    { "migration", parse_migration, POOL(migration), NULL, 0, 0 },
};

/* Whether the file set a directive (seen[] is indexed like the table). */
static bool pool_set(const struct conf_pool *p, const char *name)
{
    for (size_t i = 0; i < NELEMS(pool_directives); i++) {
        if (strcmp(pool_directives[i].name, name) == 0) {
            return p->seen[i];
        }
    }
    return false;
}

static void parse_table(struct conf_ctx *cx, yaml_node_t *map, void *base,
                        const struct conf_directive *tab, size_t ntab,
                        bool *seen)
{
    for (yaml_node_pair_t *pr = map->data.mapping.pairs.start;
         pr < map->data.mapping.pairs.top; pr++) {
        yaml_node_t *k = yaml_document_get_node(cx->doc, pr->key);
        yaml_node_t *v = yaml_document_get_node(cx->doc, pr->value);
        const char *name = scalar(k);
        size_t i;

        if (name == NULL) {
            conf_error(cx, k, "expected a key name, got %s", node_type_name(k));
            continue;
        }
        for (i = 0; i < ntab && strcmp(tab[i].name, name) != 0; i++) {
        }
        if (i == ntab) {
            char names[512] = "";
            for (size_t j = 0; j < ntab; j++) {
                strcat(names, j ? ", " : "");
                strcat(names, tab[j].name);
            }
            conf_error(cx, k, "unknown key '%s' (expected one of: %s)", name, names);
            continue;
        }
        if (seen[i]) {
            conf_error(cx, k, "duplicate key '%s'", name);
            continue;
        }
        seen[i] = true;
        const char *text = scalar(v);
        bool wants_scalar = tab[i].parse != parse_servers &&
                            tab[i].parse != parse_index &&
                            tab[i].parse != parse_migration;
        if (wants_scalar && text == NULL) {
            conf_error(cx, v, "%s: expected a single value, got %s", name,
                       node_type_name(v));
            continue;
        }
        tab[i].parse(cx, v, text, (char *)base + tab[i].offset, &tab[i]);
    }
    for (size_t i = 0; i < ntab; i++) {
        if (!seen[i] && tab[i].defval != NULL) {
            tab[i].parse(cx, NULL, tab[i].defval, (char *)base + tab[i].offset,
                         &tab[i]);
        }
    }
}

/* --- servers ------------------------------------------------------------- */

static void server_free(struct conf_server *s)
{
    addr_free(&s->addr);
    free(s->name);
    free(s->identity);
}

static int parse_weight(const char *s, uint32_t *w)
{
    char *end;

    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (*s == '\0' || *end != '\0' || errno != 0 || v < 1 || v > UINT32_MAX / 2) {
        return -1;
    }
    *w = (uint32_t)v;
    return 0;
}

/* twemproxy's "host:port:weight [name]" or "/path:weight [name]". */
static int server_from_string(struct conf_ctx *cx, yaml_node_t *n,
                              struct conf_server *s)
{
    const char *text = scalar(n);
    const char *sp = strchr(text, ' ');
    size_t spec_len = sp ? (size_t)(sp - text) : strlen(text);
    const char *colon = memrchr(text, ':', spec_len);
    const char *why = "";
    char weight[32];

    if (colon == NULL || (size_t)(text + spec_len - colon - 1) >= sizeof(weight)) {
        conf_error(cx, n, "server '%s': expected host:port:weight [name]", text);
        return -1;
    }
    memcpy(weight, colon + 1, (size_t)(text + spec_len - colon - 1));
    weight[text + spec_len - colon - 1] = '\0';
    if (parse_weight(weight, &s->weight) != 0) {
        conf_error(cx, n, "server '%s': weight must be a positive integer, "
                   "got '%s'", text, weight);
        return -1;
    }
    if (addr_parse(text, (size_t)(colon - text), &s->addr, &why) != 0) {
        conf_error(cx, n, "server '%s': %s", text, why);
        return -1;
    }
    if (sp != NULL) {
        while (*sp == ' ') {
            sp++;
        }
        if (*sp == '\0' || strchr(sp, ' ') != NULL) {
            conf_error(cx, n, "server '%s': the name must be one word", text);
            return -1;
        }
        if (strlen(sp) > CONF_STR_MAX) {
            conf_error(cx, n, "server '%.40s...': the name is longer than %d "
                       "bytes", text, CONF_STR_MAX);
            return -1;
        }
        if ((s->name = strdup(sp)) == NULL) {
            conf_error(cx, n, "out of memory");
            return -1;
        }
    }
    return 0;
}

/* {addr: host:port, weight: N, name: X} */
static int server_from_map(struct conf_ctx *cx, yaml_node_t *n,
                           struct conf_server *s)
{
    bool have_addr = false, have_weight = false;
    int rc = 0;

    s->weight = 1;
    for (yaml_node_pair_t *pr = n->data.mapping.pairs.start;
         pr < n->data.mapping.pairs.top; pr++) {
        yaml_node_t *k = yaml_document_get_node(cx->doc, pr->key);
        yaml_node_t *v = yaml_document_get_node(cx->doc, pr->value);
        const char *key = scalar(k), *val = scalar(v);
        const char *why = "";

        if (key == NULL || val == NULL) {
            conf_error(cx, k, "server: expected addr, weight and name as "
                       "single values");
            rc = -1;
        } else if (strcmp(key, "addr") == 0 && !have_addr) {
            have_addr = true;
            if (addr_parse(val, strlen(val), &s->addr, &why) != 0) {
                conf_error(cx, v, "server addr '%s': %s", val, why);
                rc = -1;
            }
        } else if (strcmp(key, "weight") == 0 && !have_weight) {
            have_weight = true;
            if (parse_weight(val, &s->weight) != 0) {
                conf_error(cx, v, "server weight: expected a positive integer, "
                           "got '%s'", val);
                rc = -1;
            }
        } else if (strcmp(key, "name") == 0 && s->name == NULL) {
            if (*val == '\0' || strchr(val, ' ') != NULL) {
                conf_error(cx, v, "server name: expected one word, got '%s'", val);
                rc = -1;
            } else if (strlen(val) > CONF_STR_MAX) {
                conf_error(cx, v, "server name '%.40s...': longer than %d bytes",
                           val, CONF_STR_MAX);
                rc = -1;
            }
            if ((s->name = strdup(val)) == NULL) {
                conf_error(cx, v, "out of memory");
                rc = -1;
            }
        } else if (strcmp(key, "addr") == 0 || strcmp(key, "weight") == 0 ||
                   strcmp(key, "name") == 0) {
            conf_error(cx, k, "duplicate key '%s'", key);
            rc = -1;
        } else {
            conf_error(cx, k, "unknown key '%s' in server (expected one of: "
                       "addr, weight, name)", key);
            rc = -1;
        }
    }
    if (!have_addr && rc == 0) {
        conf_error(cx, n, "server: 'addr' is required");
        rc = -1;
    }
    return rc;
}

static void parse_servers(struct conf_ctx *cx, yaml_node_t *node,
                          const char *text, void *field,
                          const struct conf_directive *d)
{
    struct conf_pool *p = (struct conf_pool *)((char *)field - d->offset);
    yaml_node_item_t *it;

    (void)text;
    if (node->type != YAML_SEQUENCE_NODE) {
        conf_error(cx, node, "servers: expected a list, got %s",
                   node_type_name(node));
        return;
    }
    size_t n = (size_t)(node->data.sequence.items.top -
                        node->data.sequence.items.start);
    if (n > CONF_SERVERS_MAX - cx->nservers) {
        conf_error(cx, node, "servers: %zu servers here and %zu before; a file "
                   "may list at most %d", n, cx->nservers, CONF_SERVERS_MAX);
        return;
    }
    cx->nservers += n;
    p->servers = calloc(n ? n : 1, sizeof(*p->servers));
    if (p->servers == NULL) {
        conf_error(cx, node, "out of memory");
        return;
    }
    for (it = node->data.sequence.items.start; it < node->data.sequence.items.top;
         it++) {
        yaml_node_t *sn = yaml_document_get_node(cx->doc, *it);
        struct conf_server *s = &p->servers[p->nservers];
        int rc;

        p->last_server_end = sn->end_mark.index;
        p->last_server_line = (int)sn->start_mark.line + 1;
        p->last_server_col = (int)sn->start_mark.column + 1;
        memset(s, 0, sizeof(*s));
        s->line = (int)sn->start_mark.line + 1;
        s->col = (int)sn->start_mark.column + 1;
        if (sn->type == YAML_SCALAR_NODE) {
            rc = server_from_string(cx, sn, s);
        } else if (sn->type == YAML_MAPPING_NODE) {
            rc = server_from_map(cx, sn, s);
        } else {
            conf_error(cx, sn, "server: expected \"host:port:weight [name]\" or "
                       "{addr, weight, name}, got %s", node_type_name(sn));
            rc = -1;
        }
        if (rc != 0) {
            server_free(s);
            continue;
        }
        p->nservers++;
    }
    if (n == 0) {
        conf_error(cx, node, "servers: the list is empty; a pool needs at least "
                   "one server");
    }
}

/* The identity decides placement (docs/ARCHITECTURE.md, "Ring placement"). */
static char *server_identity(const struct conf_pool *p, const struct conf_server *s)
{
    char *id = NULL;

    if (s->name != NULL) {
        return strdup(s->name);
    }
    if (p->compat == RING_COMPAT_LIBKETAMA || s->addr.is_unix) {
        return strdup(s->addr.text);
    }
    if (s->addr.port == CONF_DEFAULT_PORT) {
        return asprintf(&id, "%s", s->addr.host) < 0 ? NULL : id;
    }
    /* libmemcached hashes the host as given to it, unbracketed, then
     * ":port": "::1:11212" for [::1]:11212 (update_continuum's format). */
    if (s->addr.is_ipv6) {
        return asprintf(&id, "%s:%u", s->addr.host, s->addr.port) < 0 ? NULL : id;
    }
    return strdup(s->addr.text);
}

/* Servers by identity (by_addr: by address), then by position in the file. */
static int server_cmp(const struct conf_server *a, const struct conf_server *b,
                      bool by_addr)
{
    int d = by_addr ? strcmp(a->addr.text, b->addr.text) :
                      strcmp(a->identity, b->identity);

    return d != 0 ? d : (a < b ? -1 : a > b);
}

static int server_cmp_identity(const void *x, const void *y)
{
    return server_cmp(*(struct conf_server *const *)x,
                      *(struct conf_server *const *)y, false);
}

static int server_cmp_addr(const void *x, const void *y)
{
    return server_cmp(*(struct conf_server *const *)x,
                      *(struct conf_server *const *)y, true);
}

/*
 * A server whose identity, or else whose address, an earlier server has is
 * an error, reported in file order. Sorting keeps this O(n log n) for the
 * largest pool (a pairwise check costs seconds at CONF_SERVERS_MAX).
 */
static void pool_check_duplicates(struct conf_ctx *cx, const struct conf_pool *p)
{
    uint32_t n = p->nservers;
    struct conf_server **by = calloc(n ? n : 1, sizeof(*by));
    const struct conf_server **dup_id = calloc(n ? n : 1, sizeof(*dup_id));
    const struct conf_server **dup_addr = calloc(n ? n : 1, sizeof(*dup_addr));

    if (by == NULL || dup_id == NULL || dup_addr == NULL) {
        conf_error_at(cx, p->line, p->col, "out of memory");
        goto out;
    }
    for (uint32_t i = 0; i < n; i++) {
        if (p->servers[i].identity == NULL) {
            goto out;       /* reported already */
        }
        by[i] = &p->servers[i];
    }
    /* After sorting, the first of each run is the earliest in the file. */
    qsort(by, n, sizeof(*by), server_cmp_identity);
    for (uint32_t i = 1, first = 0; i < n; i++) {
        if (strcmp(by[i]->identity, by[first]->identity) != 0) {
            first = i;
        } else {
            dup_id[by[i] - p->servers] = by[first];
        }
    }
    qsort(by, n, sizeof(*by), server_cmp_addr);
    for (uint32_t i = 1, first = 0; i < n; i++) {
        if (strcmp(by[i]->addr.text, by[first]->addr.text) != 0) {
            first = i;
        } else {
            dup_addr[by[i] - p->servers] = by[first];
        }
    }
    for (uint32_t i = 0; i < n; i++) {
        const struct conf_server *s = &p->servers[i];
        if (dup_id[i] != NULL) {
            conf_error_at(cx, s->line, s->col, "pool '%s': duplicate server "
                          "identity '%s' (also at line %d)", p->name,
                          s->identity, dup_id[i]->line);
        } else if (dup_addr[i] != NULL) {
            conf_error_at(cx, s->line, s->col, "pool '%s': duplicate server "
                          "address '%s' (also at line %d)", p->name,
                          s->addr.text, dup_addr[i]->line);
        }
    }
out:
    free(by);
    free(dup_id);
    free(dup_addr);
}

static void pool_check(struct conf_ctx *cx, yaml_node_t *pool_node,
                       struct conf_pool *p)
{
    if (!pool_set(p, "listen")) {
        conf_error(cx, pool_node, "pool '%s': 'listen' is required", p->name);
    }
    if (!pool_set(p, "servers")) {
        conf_error(cx, pool_node, "pool '%s': 'servers' is required", p->name);
    }
    if (p->redis) {
        conf_error(cx, pool_node, "pool '%s': redis: true is not supported; "
                   "ringproxy proxies memcached pools only", p->name);
    }
    if (p->compat == RING_COMPAT_LIBKETAMA && !pool_set(p, "hash")) {
        p->hash = HASH_MD5;     /* libketama hashes keys with MD5 */
    }
    if (p->index.enabled && p->index.prefix == NULL &&
        asprintf(&p->index.prefix, "rp:%s", p->name) < 0) {
        p->index.prefix = NULL;
        conf_error(cx, pool_node, "pool '%s': out of memory", p->name);
    }
    if (p->index.prefix != NULL && strlen(p->index.prefix) > CONF_PREFIX_MAX) {
        conf_error(cx, pool_node, "pool '%.40s': index.prefix '%.40s...' (by default "
                   "rp:<pool name>) is longer than %d bytes", p->name, p->index.prefix,
                   CONF_PREFIX_MAX);
    }
    for (uint32_t i = 0; i < p->nservers; i++) {
        struct conf_server *s = &p->servers[i];
        s->identity = server_identity(p, s);
        if (s->identity == NULL) {
            conf_error_at(cx, s->line, s->col, "out of memory");
        }
    }
    pool_check_duplicates(cx, p);
}

static void pool_free(struct conf_pool *p)
{
    free(p->name);
    addr_free(&p->listen);
    for (uint32_t i = 0; i < p->nservers; i++) {
        server_free(&p->servers[i]);
    }
    free(p->servers);
    addr_free(&p->index.redis);
    free(p->index.prefix);
    free(p->index.password);
}

void config_free(struct config *c)
{
    if (c == NULL) {
        return;
    }
    for (uint32_t i = 0; i < c->npools; i++) {
        pool_free(&c->pools[i]);
    }
    free(c->pools);
    free(c->path);
    free(c);
}

void conf_errors_free(struct conf_errors *errs)
{
    if (errs == NULL) {
        return;
    }
    for (size_t i = 0; i < errs->n; i++) {
        free(errs->msgs[i]);
    }
    free(errs->msgs);
    errs->msgs = NULL;
    errs->n = 0;
}

/* Process-wide settings: top-level keys whose value is a single value (a
 * pool's is a mapping). Absent: the field stays 0, "not set". */
static const struct conf_directive global_directives[] = {
    { "threads", parse_int, offsetof(struct config, threads), NULL, 0, CONF_THREADS_MAX },
    { "threads_active", parse_threads_active, offsetof(struct config, threads_active), NULL,
      1, CONF_THREADS_MAX },
};

/* A top-level key with a single value: a global directive, or an error. */
static void parse_global(struct conf_ctx *cx, yaml_node_t *k, yaml_node_t *v,
                         struct config *c, bool *seen)
{
    const char *name = scalar(k), *text = scalar(v);
    size_t i;

    for (i = 0; i < NELEMS(global_directives) &&
         strcmp(global_directives[i].name, name) != 0; i++) {
    }
    if (i == NELEMS(global_directives)) {
        conf_error(cx, v, "pool '%s': expected a mapping of settings, got %s",
                   name, node_type_name(v));
        return;
    }
    if (seen[i]) {
        conf_error(cx, k, "duplicate key '%s'", name);
        return;
    }
    seen[i] = true;
    global_directives[i].parse(cx, v, text, (char *)c + global_directives[i].offset,
                               &global_directives[i]);
}

static void parse_pools(struct conf_ctx *cx, yaml_node_t *root, struct config *c)
{
    size_t n = (size_t)(root->data.mapping.pairs.top - root->data.mapping.pairs.start);
    bool global_seen[NELEMS(global_directives)] = { false };

    c->threads = -1;

    if (n > CONF_POOLS_MAX) {
        conf_error(cx, root, "%zu pools; a file may define at most %d", n,
                   CONF_POOLS_MAX);
        return;
    }
    c->pools = calloc(n ? n : 1, sizeof(*c->pools));
    if (c->pools == NULL) {
        conf_error(cx, root, "out of memory");
        return;
    }
    for (yaml_node_pair_t *pr = root->data.mapping.pairs.start;
         pr < root->data.mapping.pairs.top; pr++) {
        yaml_node_t *k = yaml_document_get_node(cx->doc, pr->key);
        yaml_node_t *v = yaml_document_get_node(cx->doc, pr->value);
        const char *name = scalar(k);

        if (name == NULL || *name == '\0') {
            conf_error(cx, k, "expected a pool name");
            continue;
        }
        if (config_pool(c, name) != NULL) {
            conf_error(cx, k, "duplicate pool '%s'", name);
            continue;
        }
        if (v->type == YAML_SCALAR_NODE) {
            parse_global(cx, k, v, c, global_seen);
            continue;
        }
        if (v->type != YAML_MAPPING_NODE) {
            conf_error(cx, v, "pool '%s': expected a mapping of settings, got %s",
                       name, node_type_name(v));
            continue;
        }
        struct conf_pool *p = &c->pools[c->npools++];
        if ((p->name = strdup(name)) == NULL) {
            conf_error(cx, k, "out of memory");
            c->npools--;
            continue;
        }
        p->line = (int)k->start_mark.line + 1;
        p->col = (int)k->start_mark.column + 1;
        cx->pool_name = name;
        /* Section defaults first; the file's values override them. */
        bool mig_seen[NELEMS(migration_directives)] = { false };
        yaml_node_t empty = { .type = YAML_MAPPING_NODE };
        parse_table(cx, &empty, &p->migration, migration_directives,
                    NELEMS(migration_directives), mig_seen);
        parse_table(cx, v, p, pool_directives, NELEMS(pool_directives), p->seen);
        pool_check(cx, k, p);
    }
    for (uint32_t i = 0; i < c->npools; i++) {
        for (uint32_t j = 0; j < i; j++) {
            if (c->pools[i].listen.text && c->pools[j].listen.text &&
                strcmp(c->pools[i].listen.text, c->pools[j].listen.text) == 0) {
                conf_error_at(cx, c->pools[i].line, c->pools[i].col,
                              "pool '%s': listen address %s is already used by "
                              "pool '%s'", c->pools[i].name,
                              c->pools[i].listen.text, c->pools[j].name);
            }
        }
    }
}

/*
 * Walk the events once before libyaml builds the document: refuse nesting
 * past CONF_DEPTH_MAX and aliases, and report a syntax error (such as a file
 * that ends inside a flow list) with its position. Returns 0 when the
 * document may be loaded.
 */
static int conf_prescan(struct conf_ctx *cx, const char *buf, size_t len)
{
    yaml_parser_t parser;
    yaml_event_t ev;
    int depth = 0, rc = -1;

    if (!yaml_parser_initialize(&parser)) {
        conf_error(cx, NULL, "out of memory");
        return -1;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)buf, len);
    for (;;) {
        if (!yaml_parser_parse(&parser, &ev)) {
            conf_error_at(cx, (int)parser.problem_mark.line + 1,
                          (int)parser.problem_mark.column + 1,
                          "YAML syntax error: %s%s%s", parser.problem,
                          parser.context ? " " : "",
                          parser.context ? parser.context : "");
            break;
        }
        yaml_event_type_t type = ev.type;
        int line = (int)ev.start_mark.line + 1, col = (int)ev.start_mark.column + 1;
        yaml_event_delete(&ev);
        if (type == YAML_SEQUENCE_START_EVENT || type == YAML_MAPPING_START_EVENT) {
            if (++depth > CONF_DEPTH_MAX) {
                conf_error_at(cx, line, col, "nested more than %d levels deep",
                              CONF_DEPTH_MAX);
                break;
            }
        } else if (type == YAML_SEQUENCE_END_EVENT ||
                   type == YAML_MAPPING_END_EVENT) {
            depth--;
        } else if (type == YAML_ALIAS_EVENT) {
            conf_error_at(cx, line, col, "YAML aliases (*name) are not "
                          "supported; write the value out");
            break;
        } else if (type == YAML_DOCUMENT_END_EVENT) {
            rc = 0;     /* a second document is ignored, as the loader does */
            break;
        } else if (type == YAML_STREAM_END_EVENT) {
            rc = 0;
            break;
        }
    }
    yaml_parser_delete(&parser);
    return rc;
}

/*
 * A file cut short by a partial write can still be valid YAML: a `servers:`
 * list that ends early is a smaller pool, with keys moving for nothing. An
 * editor ends the last line with a newline; a cut rarely does. So a file
 * whose last server runs to the very end, without a newline, is refused.
 */
static void conf_check_truncated(struct conf_ctx *cx, const struct config *c,
                                 const char *buf, size_t len)
{
    size_t end = len;

    if (len == 0 || buf[len - 1] == '\n') {
        return;
    }
    while (end > 0 && (buf[end - 1] == ' ' || buf[end - 1] == '\t')) {
        end--;
    }
    for (uint32_t i = 0; i < c->npools; i++) {
        const struct conf_pool *p = &c->pools[i];
        if (p->last_server_end != 0 && p->last_server_end >= end) {
            conf_error_at(cx, p->last_server_line, p->last_server_col,
                          "pool '%s': the "
                          "file ends inside the servers list without a final "
                          "newline; is it truncated?", p->name);
        }
    }
}

struct config *config_load_buffer(const char *name, const char *buf, size_t len,
                                  struct conf_errors *errs)
{
    struct conf_ctx cx = { .path = name, .errs = errs };
    yaml_parser_t parser;
    yaml_document_t doc;
    struct config *c = NULL;

    memset(errs, 0, sizeof(*errs));
    if (len > CONF_FILE_MAX) {
        conf_error(&cx, NULL, "%zu bytes; a config file may have at most %u",
                   len, CONF_FILE_MAX);
        goto done;
    }
    if (conf_prescan(&cx, buf, len) != 0) {
        goto done;
    }
    if (!yaml_parser_initialize(&parser)) {
        conf_error(&cx, NULL, "out of memory");
        goto done;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)buf, len);
    if (!yaml_parser_load(&parser, &doc)) {
        conf_error_at(&cx, (int)parser.problem_mark.line + 1,
                      (int)parser.problem_mark.column + 1,
                      "YAML syntax error: %s%s%s", parser.problem,
                      parser.context ? " " : "",
                      parser.context ? parser.context : "");
        yaml_parser_delete(&parser);
        goto done;
    }
    cx.doc = &doc;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    c = calloc(1, sizeof(*c));
    if (c == NULL || (c->path = strdup(name)) == NULL) {
        conf_error(&cx, NULL, "out of memory");
    } else if (root == NULL) {
        conf_error_at(&cx, 1, 1, "the file is empty; expected at least one pool");
    } else if (root->type != YAML_MAPPING_NODE) {
        conf_error(&cx, root, "expected a mapping of pool names to pools, got %s",
                   node_type_name(root));
    } else {
        parse_pools(&cx, root, c);
        if (c->npools == 0 && errs->n == 0) {
            conf_error(&cx, root, "no pools defined");
        }
        conf_check_truncated(&cx, c, buf, len);
    }
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
done:
    conf_errors_finish(&cx);
    if (errs->n > 0 || errs->more > 0) {
        config_free(c);
        return NULL;
    }
    return c;
}

/* Read at most CONF_FILE_MAX bytes (one more tells that there are more). */
struct config *config_load(const char *path, struct conf_errors *errs)
{
    struct conf_ctx cx = { .path = path, .errs = errs };
    size_t cap = 64 * 1024, len = 0;
    char *buf = NULL;
    struct config *c = NULL;
    FILE *f;

    memset(errs, 0, sizeof(*errs));
    f = fopen(path, "r");
    if (f == NULL) {
        conf_error(&cx, NULL, "cannot open: %s", strerror(errno));
        return NULL;
    }
    for (;;) {
        if (len == cap || buf == NULL) {
            char *nb;
            cap = buf == NULL ? cap : cap * 2;
            if (cap > CONF_FILE_MAX + 1) {
                cap = CONF_FILE_MAX + 1;
            }
            if ((nb = realloc(buf, cap)) == NULL) {
                conf_error(&cx, NULL, "out of memory");
                goto out;
            }
            buf = nb;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0 || len > CONF_FILE_MAX) {
            break;
        }
    }
    if (ferror(f)) {
        conf_error(&cx, NULL, "cannot read: %s", strerror(errno));
        goto out;
    }
    if (len > CONF_FILE_MAX) {
        conf_error(&cx, NULL, "larger than %u bytes, the most a config file "
                   "may have", CONF_FILE_MAX);
        goto out;
    }
    c = config_load_buffer(path, buf, len, errs);
out:
    free(buf);
    fclose(f);
    return c;
}

int conf_addr_parse(const char *s, struct conf_addr *a, const char **why)
{
    return addr_parse(s, strlen(s), a, why);
}

void conf_addr_free(struct conf_addr *a)
{
    addr_free(a);
}

bool conf_pool_same_ring(const struct conf_pool *a, const struct conf_pool *b)
{
    if (a->hash != b->hash || a->compat != b->compat || a->has_tag != b->has_tag ||
        (a->has_tag && memcmp(a->hash_tag, b->hash_tag, 2) != 0) ||
        a->nservers != b->nservers) {
        return false;
    }
    for (uint32_t i = 0; i < a->nservers; i++) {
        const struct conf_server *x = &a->servers[i], *y = &b->servers[i];
        if (x->weight != y->weight || strcmp(x->identity, y->identity) != 0 ||
            strcmp(x->addr.text, y->addr.text) != 0) {
            return false;
        }
    }
    return true;
}

const struct conf_pool *config_pool(const struct config *c, const char *name)
{
    for (uint32_t i = 0; i < c->npools; i++) {
        if (c->pools[i].name != NULL && strcmp(c->pools[i].name, name) == 0) {
            return &c->pools[i];
        }
    }
    return NULL;
}

struct ring *conf_pool_ring(const struct conf_pool *p, char *err, size_t errlen)
{
    struct ring_server_spec *specs = calloc(p->nservers ? p->nservers : 1,
                                            sizeof(*specs));
    struct ring *r;

    if (specs == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    for (uint32_t i = 0; i < p->nservers; i++) {
        specs[i] = (struct ring_server_spec){ .identity = p->servers[i].identity,
            .addr = p->servers[i].addr.text, .weight = p->servers[i].weight };
    }
    struct ring_params params = {
        .compat = (enum ring_compat)p->compat, .hash = (enum hash_kind)p->hash,
        .has_tag = p->has_tag, .servers = specs, .nservers = p->nservers };
    memcpy(params.tag, p->hash_tag, 2);
    r = ring_build(&params, err, errlen);
    free(specs);
    return r;
}

/* --- settings in effect (`stats settings`) --------------------------------- */

/* A value as text into buf; false when there is none to show. */
typedef bool conf_format_fn(const void *field, const struct conf_directive *d,
                            char *buf, size_t len);

static bool format_int(const void *field, const struct conf_directive *d, char *buf,
                       size_t len)
{
    (void)d;
    snprintf(buf, len, "%lld", (long long)*(const int64_t *)field);
    return true;
}

static bool format_bool(const void *field, const struct conf_directive *d,
                        char *buf, size_t len)
{
    (void)d;
    snprintf(buf, len, "%s", *(const bool *)field ? "true" : "false");
    return true;
}

static bool format_string(const void *field, const struct conf_directive *d,
                          char *buf, size_t len)
{
    const char *s = *(char *const *)field;

    if (s == NULL || strcmp(d->name, "password") == 0) {
        return false;
    }
    snprintf(buf, len, "%s", s);
    return true;
}

static bool format_addr(const void *field, const struct conf_directive *d,
                        char *buf, size_t len)
{
    const struct conf_addr *a = field;

    (void)d;
    if (a->text == NULL) {
        return false;
    }
    snprintf(buf, len, "%s", a->text);
    return true;
}

static bool format_listen(const void *field, const struct conf_directive *d,
                          char *buf, size_t len)
{
    const struct conf_pool *p = (const struct conf_pool *)((const char *)field -
                                                           d->offset);

    if (p->listen_mode < 0) {
        return format_addr(field, d, buf, len);
    }
    snprintf(buf, len, "%s %04llo", p->listen.text,
             (unsigned long long)p->listen_mode);
    return true;
}

static bool format_hash(const void *field, const struct conf_directive *d,
                        char *buf, size_t len)
{
    int64_t h = *(const int64_t *)field;

    (void)d;
    snprintf(buf, len, "%s", h >= 0 && h < HASH_COUNT ? hash_names[h] : "?");
    return true;
}

static bool format_compat(const void *field, const struct conf_directive *d,
                          char *buf, size_t len)
{
    int64_t c = *(const int64_t *)field;

    (void)d;
    snprintf(buf, len, "%s", c >= 0 && c < RING_COMPAT_COUNT ? ring_compat_names[c] : "?");
    return true;
}

static bool format_distribution(const void *field, const struct conf_directive *d,
                                char *buf, size_t len)
{
    (void)field, (void)d;
    snprintf(buf, len, "ketama");
    return true;
}

static bool format_hash_tag(const void *field, const struct conf_directive *d,
                            char *buf, size_t len)
{
    const struct conf_pool *p = (const struct conf_pool *)((const char *)field -
                                                           d->offset);

    if (!p->has_tag) {
        return false;
    }
    snprintf(buf, len, "%.2s", p->hash_tag);
    return true;
}

static bool format_servers(const void *field, const struct conf_directive *d,
                           char *buf, size_t len)
{
    const struct conf_pool *p = (const struct conf_pool *)((const char *)field -
                                                           d->offset);

    snprintf(buf, len, "%u", p->nservers);
    return true;
}

/* How each parser's value is shown; a mapping (index, migration) is walked
 * by its own table instead: format NULL. */
static const struct {
    conf_parse_fn parse;
    conf_format_fn *format;
} conf_formats[] = {
    { parse_int, format_int },
    { parse_size, format_int },
    { parse_bool, format_bool },
    { parse_string, format_string },
    { parse_addr, format_addr },
    { parse_listen, format_listen },
    { parse_hash, format_hash },
    { parse_compat, format_compat },
    { parse_distribution, format_distribution },
    { parse_hash_tag, format_hash_tag },
    { parse_servers, format_servers },
};

static void settings_table(const void *base, const struct conf_directive *tab,
                           size_t ntab, const char *prefix, conf_setting_fn *fn,
                           void *arg)
{
    char name[128], value[512];

    for (size_t i = 0; i < ntab; i++) {
        for (size_t f = 0; f < NELEMS(conf_formats); f++) {
            if (conf_formats[f].parse == tab[i].parse &&
                conf_formats[f].format((const char *)base + tab[i].offset, &tab[i],
                                       value, sizeof(value))) {
                snprintf(name, sizeof(name), "%s%s", prefix, tab[i].name);
                fn(arg, name, value);
            }
        }
    }
}

void conf_pool_settings(const struct conf_pool *p, conf_setting_fn *fn, void *arg)
{
    settings_table(p, pool_directives, NELEMS(pool_directives), "", fn, arg);
    if (p->index.enabled) {
        settings_table(&p->index, index_directives, NELEMS(index_directives),
                       "index:", fn, arg);
        settings_table(&p->migration, migration_directives,
                       NELEMS(migration_directives), "migration:", fn, arg);
    }
}
