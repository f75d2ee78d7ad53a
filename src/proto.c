/* proto.c — memcached text protocol: one request or reply line in, a struct out.
 *
 * Design notes. Requests are judged the way memcached 1.6.18 (proto_text.c,
 * util.c) judges them, so that a client behind the proxy gets the answers it
 * would get from memcached, and so that the proxy frames value data exactly
 * as the backend will:
 *
 * - Tokens are separated by ' ' only; tabs, \r and control bytes belong to
 *   tokens (and so to keys). A NUL byte ends the line (memcached strlen()s it).
 * - memcached tokenizes at most 23 tokens; the last of those is where it looks
 *   for "noreply" and "HTTP/". Only get/gets/gat/gats read further.
 * - "noreply" is the last token of the line, nowhere else, and it silences
 *   error replies too ("set k 0 0 x noreply" answers nothing).
 * - Numbers follow safe_strtoul / safe_strtol / safe_strtoull: libc's strtol
 *   family (leading white space, a sign, decimal digits), then the token may
 *   go on only after a white-space byte ("5\tjunk" is 5). 32-bit results are
 *   the 64-bit value truncated: flags 4294967297 is stored as 1, length
 *   4294967297 reads 1 byte. The proxy reports those truncated values, which
 *   is what the backend will act on when it receives the same line.
 * - Which error wins is memcached's order, command by command: the token
 *   count ("ERROR") first, then e.g. the key length before numbers, but gat's
 *   exptime before its keys and delete's hold time before its key.
 * - Names memcached knows but a proxy cannot route (meta commands, slabs,
 *   lru_crawler, ...) answer "ERROR"; bget is get. That and the reply parser,
 *   strict about the shape of what memcached prints, are ours.
 */
#include "proto.h"

#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#define MC_MAX_TOKENS 23        /* memcached's MAX_TOKENS, less its end token */

static const char ERR_ERROR[]    = "ERROR";
static const char ERR_FORMAT[]   = "CLIENT_ERROR bad command line format";
static const char ERR_DELETE[]   = "CLIENT_ERROR bad command line format.  "
                                   "Usage: delete <key> [noreply]";
static const char ERR_EXPTIME[]  = "CLIENT_ERROR invalid exptime argument";
static const char ERR_DELTA[]    = "CLIENT_ERROR invalid numeric delta argument";
static const char ERR_SHUTDOWN[] = "ERROR: shutdown not enabled";

const char *const proto_cmd_name[PROTO_CMD_COUNT] = {
#define PROTO_CMD_NAME(id, name) [PROTO_CMD_##id] = name,
    PROTO_CMD_LIST(PROTO_CMD_NAME)
#undef PROTO_CMD_NAME
};

const char *const proto_rsp_name[PROTO_RSP_COUNT] = {
#define PROTO_RSP_NAME(id, name) [PROTO_RSP_##id] = name,
    PROTO_RSP_LIST(PROTO_RSP_NAME)
#undef PROTO_RSP_NAME
};

struct tok {
    const char *p;
    size_t len;
};

/* A request line cut into memcached's tokens. */
struct line {
    const char *p, *end;
    struct tok t[MC_MAX_TOKENS];
    size_t n;
};

static bool tok_is(const struct tok *t, const char *s)
{
    size_t n = strlen(s);
    return t->len == n && memcmp(t->p, s, n) == 0;
}

static const char *skip_spaces(const char *p, const char *end)
{
    while (p < end && *p == ' ')
        p++;
    return p;
}

static const char *skip_token(const char *p, const char *end)
{
    while (p < end && *p != ' ')
        p++;
    return p;
}

static void tokenize(struct line *l)
{
    const char *p = l->p;

    l->n = 0;
    while (l->n < MC_MAX_TOKENS) {
        p = skip_spaces(p, l->end);
        if (p == l->end)
            break;
        const char *start = p;
        p = skip_token(p, l->end);
        l->t[l->n++] = (struct tok){ start, (size_t)(p - start) };
    }
}

/* ---- Numbers, as memcached's util.c reads them ------------------------ */

static bool c_isspace(char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r');
}

/* What strtoull() sees in a token: value modulo 2^64 (negated for '-'),
 * *range false on overflow (ERANGE). False if there are no digits or the
 * digits are followed by anything but the token's end or white space. */
static bool scan_number(const char *p, size_t len, uint64_t *value, bool *neg,
                        bool *range)
{
    const char *end = p + len;
    uint64_t v = 0;

    *neg = false;
    *range = true;
    while (p < end && c_isspace(*p))
        p++;
    if (p < end && (*p == '+' || *p == '-'))
        *neg = *p++ == '-';
    if (p == end || *p < '0' || *p > '9')
        return false;
    for (; p < end && *p >= '0' && *p <= '9'; p++) {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            *range = false;
        v = v * 10 + d;
    }
    if (p < end && !c_isspace(*p))
        return false;
    *value = *neg ? 0 - v : v;
    return true;
}

/* safe_strtoull: unsigned 64-bit; a '-' anywhere in the token rejects only
 * results with the top bit set ("-1" is rejected, "-0" is 0). */
bool proto_strtoull(const char *p, size_t len, uint64_t *out)
{
    uint64_t v;
    bool neg, range;

    if (!scan_number(p, len, &v, &neg, &range) || !range)
        return false;
    if ((v >> 63) && memchr(p, '-', len) != NULL)
        return false;
    *out = v;
    return true;
}

/* safe_strtoul on LP64: the same, truncated to 32 bits. */
bool proto_strtoul32(const char *p, size_t len, uint32_t *out)
{
    uint64_t v;

    if (!proto_strtoull(p, len, &v))
        return false;
    *out = (uint32_t)v;
    return true;
}

/* safe_strtol on LP64: strtol's range is int64, then truncated to 32 bits. */
bool proto_strtol32(const char *p, size_t len, int32_t *out)
{
    uint64_t v;
    bool neg, range;

    if (!scan_number(p, len, &v, &neg, &range) || !range)
        return false;
    /* v is the two's complement bit pattern; its magnitude must fit int64 */
    if (neg ? (v != 0 && v < (UINT64_C(1) << 63))
            : (v > (uint64_t)INT64_MAX))
        return false;
    uint32_t u = (uint32_t)v;
    *out = u <= INT32_MAX ? (int32_t)u : -(int32_t)(UINT32_MAX - u) - 1;
    return true;
}

/* Whole-token unsigned decimal, as backends print them: digits only. */
static bool strict_u64(const char *p, size_t len, uint64_t *out)
{
    uint64_t v = 0;

    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9')
            return false;
        unsigned d = (unsigned)(p[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

/* ---- Requests ---------------------------------------------------------- */

static int fail(struct proto_req *req, const char *error)
{
    req->error = error;
    return PROTO_ERR;
}

static bool last_is_noreply(const struct line *l)
{
    return tok_is(&l->t[l->n - 1], "noreply");
}

static void set_key(struct proto_req *req, const struct tok *t)
{
    req->key = req->keys = t->p;
    req->keylen = (uint32_t)t->len;
    req->keys_len = t->len;
    req->nkeys = 1;
}

static const char *rest_of_line(const struct line *l, size_t *len)
{
    const char *p = skip_spaces(l->t[0].p + l->t[0].len, l->end);
    const char *end = l->end;

    while (end > p && end[-1] == ' ')
        end--;
    *len = (size_t)(end - p);
    return *len ? p : NULL;
}

/* The keys of get/gets/gat/gats: every token from p to the line's end. */
static int parse_keys(const struct line *l, const char *p,
                      struct proto_req *req)
{
    const char *first = NULL, *last_end = NULL;
    uint32_t n = 0;

    for (;;) {
        p = skip_spaces(p, l->end);
        if (p == l->end)
            break;
        const char *start = p;
        p = skip_token(p, l->end);
        if ((size_t)(p - start) > PROTO_KEY_MAX)
            return fail(req, ERR_FORMAT);
        if (!first) {
            first = start;
            req->keylen = (uint32_t)(p - start);
        }
        last_end = p;
        n++;
    }
    req->nkeys = n;
    if (n) {
        req->key = req->keys = first;
        req->keys_len = (size_t)(last_end - first);
    }
    return PROTO_OK;
}

static int parse_get(const struct line *l, struct proto_req *req)
{
    if (l->n < 2)
        return fail(req, ERR_ERROR);
    return parse_keys(l, l->t[1].p, req);
}

static int parse_gat(const struct line *l, struct proto_req *req)
{
    int32_t exptime;

    if (l->n < 2)
        return fail(req, ERR_ERROR);
    if (!proto_strtol32(l->t[1].p, l->t[1].len, &exptime))
        return fail(req, ERR_EXPTIME);
    req->exptime = exptime;
    return parse_keys(l, l->t[1].p + l->t[1].len, req);
}

/* set/add/replace/append/prepend <key> <flags> <exptime> <bytes> [noreply],
 * cas <key> <flags> <exptime> <bytes> <cas> [noreply] */
static int parse_store(const struct line *l, struct proto_req *req)
{
    size_t nargs = req->cmd == PROTO_CMD_CAS ? 6 : 5;
    int32_t exptime, bytes;

    if (l->n != nargs && l->n != nargs + 1)
        return fail(req, ERR_ERROR);
    req->noreply = last_is_noreply(l);
    if (l->t[1].len > PROTO_KEY_MAX)
        return fail(req, ERR_FORMAT);
    set_key(req, &l->t[1]);
    if (!proto_strtoul32(l->t[2].p, l->t[2].len, &req->flags) ||
        !proto_strtol32(l->t[3].p, l->t[3].len, &exptime) ||
        !proto_strtol32(l->t[4].p, l->t[4].len, &bytes))
        return fail(req, ERR_FORMAT);
    if (req->cmd == PROTO_CMD_CAS && !proto_strtoull(l->t[5].p, l->t[5].len, &req->cas))
        return fail(req, ERR_FORMAT);
    if (bytes < 0 || bytes > INT_MAX - 2)
        return fail(req, ERR_FORMAT);
    req->exptime = exptime;
    req->bytes = bytes;
    return PROTO_OK;
}

/* delete <key> [0] [noreply]: the old "hold time" may only be 0. */
static int parse_delete(const struct line *l, struct proto_req *req)
{
    if (l->n < 2 || l->n > 4)
        return fail(req, ERR_ERROR);
    if (l->n > 2) {
        bool hold_is_zero = tok_is(&l->t[2], "0");
        req->noreply = last_is_noreply(l);
        if (!(l->n == 3 && (hold_is_zero || req->noreply)) &&
            !(l->n == 4 && hold_is_zero && req->noreply))
            return fail(req, ERR_DELETE);
    }
    if (l->t[1].len > PROTO_KEY_MAX)
        return fail(req, ERR_FORMAT);
    set_key(req, &l->t[1]);
    return PROTO_OK;
}

/* incr/decr <key> <delta> [noreply] */
static int parse_arith(const struct line *l, struct proto_req *req)
{
    if (l->n != 3 && l->n != 4)
        return fail(req, ERR_ERROR);
    req->noreply = last_is_noreply(l);
    if (l->t[1].len > PROTO_KEY_MAX)
        return fail(req, ERR_FORMAT);
    set_key(req, &l->t[1]);
    if (!proto_strtoull(l->t[2].p, l->t[2].len, &req->delta))
        return fail(req, ERR_DELTA);
    return PROTO_OK;
}

/* touch <key> <exptime> [noreply] */
static int parse_touch(const struct line *l, struct proto_req *req)
{
    int32_t exptime;

    if (l->n != 3 && l->n != 4)
        return fail(req, ERR_ERROR);
    req->noreply = last_is_noreply(l);
    if (l->t[1].len > PROTO_KEY_MAX)
        return fail(req, ERR_FORMAT);
    set_key(req, &l->t[1]);
    if (!proto_strtol32(l->t[2].p, l->t[2].len, &exptime))
        return fail(req, ERR_EXPTIME);
    req->exptime = exptime;
    return PROTO_OK;
}

/* flush_all [delay] [noreply]; a delay of 0 or less means now. */
static int parse_flush_all(const struct line *l, struct proto_req *req)
{
    int32_t delay;

    if (l->n > 3)
        return fail(req, ERR_ERROR);
    req->noreply = last_is_noreply(l);
    if (l->n != (req->noreply ? 2u : 1u)) {
        if (!proto_strtol32(l->t[1].p, l->t[1].len, &delay))
            return fail(req, ERR_EXPTIME);
        req->delay = delay;
        req->has_delay = true;
    }
    return PROTO_OK;
}

/* verbosity <level> [noreply] (a third token is ignored, like memcached) */
static int parse_verbosity(const struct line *l, struct proto_req *req)
{
    if (l->n != 2 && l->n != 3)
        return fail(req, ERR_ERROR);
    req->noreply = last_is_noreply(l);
    if (!proto_strtoul32(l->t[1].p, l->t[1].len, &req->level))
        return fail(req, ERR_FORMAT);
    req->args = rest_of_line(l, &req->args_len);
    return PROTO_OK;
}

static int parse_stats(const struct line *l, struct proto_req *req)
{
    req->args = rest_of_line(l, &req->args_len);
    return PROTO_OK;
}

/* version and quit ignore whatever follows them */
static int parse_bare(const struct line *l, struct proto_req *req)
{
    (void)l;
    (void)req;
    return PROTO_OK;
}

typedef int (*parse_fn)(const struct line *l, struct proto_req *req);

static const parse_fn parsers[PROTO_CMD_COUNT] = {
    [PROTO_CMD_GET]       = parse_get,
    [PROTO_CMD_GETS]      = parse_get,
    [PROTO_CMD_GAT]       = parse_gat,
    [PROTO_CMD_GATS]      = parse_gat,
    [PROTO_CMD_SET]       = parse_store,
    [PROTO_CMD_ADD]       = parse_store,
    [PROTO_CMD_REPLACE]   = parse_store,
    [PROTO_CMD_APPEND]    = parse_store,
    [PROTO_CMD_PREPEND]   = parse_store,
    [PROTO_CMD_CAS]       = parse_store,
    [PROTO_CMD_DELETE]    = parse_delete,
    [PROTO_CMD_INCR]      = parse_arith,
    [PROTO_CMD_DECR]      = parse_arith,
    [PROTO_CMD_TOUCH]     = parse_touch,
    [PROTO_CMD_FLUSH_ALL] = parse_flush_all,
    [PROTO_CMD_VERSION]   = parse_bare,
    [PROTO_CMD_VERBOSITY] = parse_verbosity,
    [PROTO_CMD_STATS]     = parse_stats,
    [PROTO_CMD_QUIT]      = parse_bare,
};

/* Other names memcached 1.6.18 (Debian's build) knows. They are not routed
 * through a proxy, but they are not unknown either: no HTTP check. */
static const struct {
    const char *name;
    enum proto_cmd alias;       /* NONE: refused with `error` */
    const char *error;
} other_cmds[] = {
    { "bget",          PROTO_CMD_GET,  NULL },  /* ancient get alias */
    { "shutdown",      PROTO_CMD_NONE, ERR_SHUTDOWN },
    { "cache_memlimit", PROTO_CMD_NONE, ERR_ERROR },
    { "slabs",         PROTO_CMD_NONE, ERR_ERROR },
    { "lru_crawler",   PROTO_CMD_NONE, ERR_ERROR },
    { "lru",           PROTO_CMD_NONE, ERR_ERROR },
    { "watch",         PROTO_CMD_NONE, ERR_ERROR },
    { "extstore",      PROTO_CMD_NONE, ERR_ERROR },
    { "refresh_certs", PROTO_CMD_NONE, ERR_ERROR },
};

/* Not a command: memcached answers "ERROR", or, for a name outside its
 * first-letter families whose last token starts with "HTTP/", hangs up. */
static int parse_unknown(const struct line *l, struct proto_req *req)
{
    const struct tok *cmd = &l->t[0], *last = &l->t[l->n - 1];

    for (size_t i = 0; i < sizeof(other_cmds) / sizeof(other_cmds[0]); i++) {
        if (!tok_is(cmd, other_cmds[i].name))
            continue;
        if (other_cmds[i].alias == PROTO_CMD_NONE)
            return fail(req, other_cmds[i].error);
        req->cmd = other_cmds[i].alias;
        return parsers[req->cmd](l, req);
    }
    if (!memchr("gsacidt", cmd->p[0], 7) &&
        !(cmd->p[0] == 'm' && cmd->len == 2) &&
        last->len >= 5 && memcmp(last->p, "HTTP/", 5) == 0)
        req->close = true;
    return fail(req, ERR_ERROR);
}

int proto_parse_request(const char *line, size_t len, struct proto_req *req)
{
    struct line l;

    memset(req, 0, sizeof(*req));
    if (len == 0)
        return fail(req, ERR_ERROR);
    const char *nul = memchr(line, '\0', len);
    l.p = line;
    l.end = nul ? nul : line + len;
    tokenize(&l);
    if (l.n == 0 || l.t[0].len < 2)
        return fail(req, ERR_ERROR);
    for (int c = PROTO_CMD_NONE + 1; c < PROTO_CMD_COUNT; c++) {
        if (tok_is(&l.t[0], proto_cmd_name[c])) {
            req->cmd = (enum proto_cmd)c;
            return parsers[c](&l, req);
        }
    }
    return parse_unknown(&l, req);
}

void proto_keys_begin(const struct proto_req *req, struct proto_key_iter *it)
{
    it->p = req->keys;
    it->end = req->keys ? req->keys + req->keys_len : NULL;
}

bool proto_keys_next(struct proto_key_iter *it, const char **key,
                     uint32_t *keylen)
{
    const char *p = it->p ? skip_spaces(it->p, it->end) : NULL;

    if (p == NULL || p == it->end)
        return false;
    it->p = skip_token(p, it->end);
    *key = p;
    *keylen = (uint32_t)(it->p - p);
    return true;
}

size_t proto_format_request(const struct proto_req *req, char *buf, size_t cap)
{
    const char *name = proto_cmd_name[req->cmd];
    int k = (int)req->keylen;
    int n;

    switch (req->cmd) {
    case PROTO_CMD_GET:
    case PROTO_CMD_GETS: {
        /* Nine in ten requests: the name alone, without a printf. */
        size_t len = strlen(name);
        if (len >= cap) {
            return 0;
        }
        memcpy(buf, name, len + 1);
        return len;
    }
    case PROTO_CMD_GAT:
    case PROTO_CMD_GATS:
    case PROTO_CMD_TOUCH:
        n = req->cmd == PROTO_CMD_TOUCH ?
            snprintf(buf, cap, "%s %.*s %" PRId64, name, k, req->key, req->exptime) :
            snprintf(buf, cap, "%s %" PRId64, name, req->exptime);
        break;
    case PROTO_CMD_SET:
    case PROTO_CMD_ADD:
    case PROTO_CMD_REPLACE:
    case PROTO_CMD_APPEND:
    case PROTO_CMD_PREPEND:
        n = snprintf(buf, cap, "%s %.*s %" PRIu32 " %" PRId64 " %" PRId64, name, k,
                     req->key, req->flags, req->exptime, req->bytes);
        break;
    case PROTO_CMD_CAS:
        n = snprintf(buf, cap, "%s %.*s %" PRIu32 " %" PRId64 " %" PRId64 " %" PRIu64,
                     name, k, req->key, req->flags, req->exptime, req->bytes, req->cas);
        break;
    case PROTO_CMD_DELETE:
        n = snprintf(buf, cap, "%s %.*s", name, k, req->key);
        break;
    case PROTO_CMD_INCR:
    case PROTO_CMD_DECR:
        n = snprintf(buf, cap, "%s %.*s %" PRIu64, name, k, req->key, req->delta);
        break;
    case PROTO_CMD_FLUSH_ALL:
        n = req->has_delay ? snprintf(buf, cap, "%s %" PRId64, name, req->delay) :
                             snprintf(buf, cap, "%s", name);
        break;
    default:
        return 0;
    }
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

bool proto_line_may_grow(const char *buf, size_t len)
{
    size_t i = 0;

    while (i < len && buf[i] == ' ')
        i++;
    if (i > 100)
        return false;
    buf += i;
    len -= i;
    return (len >= 4 && memcmp(buf, "get ", 4) == 0) ||
           (len >= 5 && memcmp(buf, "gets ", 5) == 0);
}

/* ---- Replies ------------------------------------------------------------ */

/* "VALUE <key> <flags> <bytes>[ <cas>]", single spaces, as memcached prints it */
static int parse_value(const char *p, const char *end, struct proto_rsp *rsp)
{
    struct tok t[4];
    size_t n = 0;
    uint64_t v;

    while (p < end) {
        if (n == 4)
            return PROTO_ERR;
        const char *start = p;
        p = skip_token(p, end);
        if (p == start)
            return PROTO_ERR;
        t[n++] = (struct tok){ start, (size_t)(p - start) };
        if (p < end && ++p == end)      /* a trailing space */
            return PROTO_ERR;
    }
    if (n < 3 || t[0].len > PROTO_KEY_MAX || memchr(t[0].p, '\0', t[0].len))
        return PROTO_ERR;
    rsp->key = t[0].p;
    rsp->keylen = (uint32_t)t[0].len;
    if (!strict_u64(t[1].p, t[1].len, &v) || v > UINT32_MAX)
        return PROTO_ERR;
    rsp->flags = (uint32_t)v;
    if (!strict_u64(t[2].p, t[2].len, &v) || v > INT64_MAX)
        return PROTO_ERR;
    rsp->bytes = (int64_t)v;
    if (n == 4) {
        if (!strict_u64(t[3].p, t[3].len, &rsp->cas))
            return PROTO_ERR;
        rsp->has_cas = true;
    }
    return PROTO_OK;
}

int proto_parse_reply(const char *line, size_t len, struct proto_rsp *rsp)
{
    const char *end = line + len;
    const char *sp = len ? memchr(line, ' ', len) : NULL;
    size_t wlen = sp ? (size_t)(sp - line) : len;
    const char *rest = sp ? sp + 1 : end;      /* after the first space */
    int kind = -1;

    memset(rsp, 0, sizeof(*rsp));
    if (len == 0)
        return PROTO_ERR;
    if (strict_u64(line, len, &rsp->number)) {
        rsp->kind = PROTO_RSP_NUMBER;
        return PROTO_OK;
    }
    for (int k = 0; k < PROTO_RSP_COUNT; k++) {
        if (k != PROTO_RSP_NUMBER && strlen(proto_rsp_name[k]) == wlen &&
            memcmp(line, proto_rsp_name[k], wlen) == 0) {
            kind = k;
            break;
        }
    }
    if (kind < 0)
        return PROTO_ERR;
    rsp->kind = (enum proto_rsp_kind)kind;

    switch (rsp->kind) {
    case PROTO_RSP_VALUE:
        return sp ? parse_value(rest, end, rsp) : PROTO_ERR;
    case PROTO_RSP_STAT: {
        const char *name_end = sp ? skip_token(rest, end) : NULL;
        if (name_end == NULL || name_end == rest || name_end == end)
            return PROTO_ERR;
        rsp->key = rest;
        rsp->keylen = (uint32_t)(name_end - rest);
        rsp->text = name_end + 1;
        rsp->text_len = (size_t)(end - rsp->text);
        return PROTO_OK;
    }
    case PROTO_RSP_VERSION:
        if (!sp)
            return PROTO_ERR;
        /* fall through */
    case PROTO_RSP_ERROR:
    case PROTO_RSP_CLIENT_ERROR:
    case PROTO_RSP_SERVER_ERROR:
        rsp->text = rest;
        rsp->text_len = (size_t)(end - rest);
        return PROTO_OK;
    default:                    /* a bare word: nothing may follow */
        return sp ? PROTO_ERR : PROTO_OK;
    }
}

#define RSP(kind) (1u << PROTO_RSP_##kind)
#define RSP_ERRORS (RSP(ERROR) | RSP(CLIENT_ERROR) | RSP(SERVER_ERROR))

/* The replies memcached sends to each command (besides the errors). */
static const uint32_t reply_kinds[PROTO_CMD_COUNT] = {
    [PROTO_CMD_GET]       = RSP(VALUE) | RSP(END),
    [PROTO_CMD_GETS]      = RSP(VALUE) | RSP(END),
    [PROTO_CMD_GAT]       = RSP(VALUE) | RSP(END),
    [PROTO_CMD_GATS]      = RSP(VALUE) | RSP(END),
    [PROTO_CMD_SET]       = RSP(STORED) | RSP(NOT_STORED) | RSP(EXISTS) | RSP(NOT_FOUND),
    [PROTO_CMD_ADD]       = RSP(STORED) | RSP(NOT_STORED) | RSP(EXISTS) | RSP(NOT_FOUND),
    [PROTO_CMD_REPLACE]   = RSP(STORED) | RSP(NOT_STORED) | RSP(EXISTS) | RSP(NOT_FOUND),
    [PROTO_CMD_APPEND]    = RSP(STORED) | RSP(NOT_STORED) | RSP(EXISTS) | RSP(NOT_FOUND),
    [PROTO_CMD_PREPEND]   = RSP(STORED) | RSP(NOT_STORED) | RSP(EXISTS) | RSP(NOT_FOUND),
    [PROTO_CMD_CAS]       = RSP(STORED) | RSP(NOT_STORED) | RSP(EXISTS) | RSP(NOT_FOUND),
    [PROTO_CMD_DELETE]    = RSP(DELETED) | RSP(NOT_FOUND),
    [PROTO_CMD_INCR]      = RSP(NUMBER) | RSP(NOT_FOUND),
    [PROTO_CMD_DECR]      = RSP(NUMBER) | RSP(NOT_FOUND),
    [PROTO_CMD_TOUCH]     = RSP(TOUCHED) | RSP(NOT_FOUND),
    [PROTO_CMD_FLUSH_ALL] = RSP(OK),
    [PROTO_CMD_VERBOSITY] = RSP(OK),
    [PROTO_CMD_VERSION]   = RSP(VERSION),
    [PROTO_CMD_STATS]     = RSP(STAT) | RSP(END),
};

bool proto_reply_fits(enum proto_cmd cmd, const struct proto_rsp *rsp)
{
    if (cmd == PROTO_CMD_NONE || cmd >= PROTO_CMD_COUNT || cmd == PROTO_CMD_QUIT ||
        rsp->kind >= PROTO_RSP_COUNT)
        return false;
    if ((reply_kinds[cmd] | RSP_ERRORS) & (1u << rsp->kind) & ~RSP(VALUE))
        return true;
    if (rsp->kind != PROTO_RSP_VALUE || !(reply_kinds[cmd] & RSP(VALUE)))
        return false;
    /* gets and gats answer each value's CAS; get and gat never do */
    return rsp->has_cas == (cmd == PROTO_CMD_GETS || cmd == PROTO_CMD_GATS);
}

#undef RSP_ERRORS
#undef RSP

_Static_assert(PROTO_RSP_COUNT <= 32, "reply_kinds[] holds one bit per reply kind");

/* proto_cmd_is_storage() relies on the storage commands being contiguous. */
_Static_assert(PROTO_CMD_CAS - PROTO_CMD_SET == 5 && PROTO_CMD_ADD == PROTO_CMD_SET + 1,
               "storage commands must stay contiguous in PROTO_CMD_LIST");

bool proto_key_ok(const char *s, size_t len)
{
    if (len == 0 || len > PROTO_KEY_MAX) {
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        if ((unsigned char)s[i] <= ' ' || (unsigned char)s[i] == 0x7f) {
            return false;
        }
    }
    return true;
}
