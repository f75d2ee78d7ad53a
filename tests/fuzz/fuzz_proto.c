/* fuzz_proto.c — libFuzzer target for src/proto.c.
 *
 * The input is split into lines ("\n", one "\r" before it dropped, as
 * evbuffer_search_eol does); each line, and the whole input as one line, goes
 * through both parsers. Checked on every line:
 *
 * - memory: every span a parser returns lies inside the line; keys are 1..250
 *   bytes without ' ' or NUL, and iteration yields exactly nkeys of them;
 * - the verdict equals a reference: memcached 1.6.18's own algorithm
 *   (tokenize_command, process_command_ascii, safe_strto* on libc's strtol
 *   family) re-implemented below over a NUL-terminated copy, for every
 *   command ringproxy parses;
 * - a parsed request re-printed canonically parses to the same fields, and so
 *   does the line the proxy rebuilds for a backend (proto_format_request);
 *   a parsed reply re-printed is byte for byte the line it came from, and
 *   proto_reply_fits accepts it for the commands memcached sends it to.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FORMAT  "CLIENT_ERROR bad command line format"
#define EXPTIME "CLIENT_ERROR invalid exptime argument"
#define DELTA   "CLIENT_ERROR invalid numeric delta argument"
#define USAGE   "CLIENT_ERROR bad command line format.  " \
                "Usage: delete <key> [noreply]"

static bool within(const char *p, size_t n, const char *line, size_t len)
{
    return p >= line && n <= len && (size_t)(p - line) <= len - n;
}

static bool plain_key(const char *k, size_t n)
{
    return n >= 1 && n <= PROTO_KEY_MAX && !memchr(k, ' ', n) &&
           !memchr(k, '\0', n);
}

/* ---- reference: memcached's algorithm, on a NUL-terminated copy --------- */

struct mtok { char *value; size_t length; };

#define REF_MAX_TOKENS 24

/* memcached's tokenize_command(): tokens end at ' ', the last one is a
 * terminal token whose value is the unparsed rest (or NULL) */
static size_t ref_tokenize(char *command, struct mtok *tokens, size_t max)
{
    char *s = command, *e = command;
    size_t ntokens = 0, len = strlen(command);

    for (size_t i = 0; i < len; i++) {
        if (*e == ' ') {
            if (s != e) {
                tokens[ntokens].value = s;
                tokens[ntokens].length = (size_t)(e - s);
                ntokens++;
                *e = '\0';
                if (ntokens == max - 1) {
                    e++;
                    s = e;
                    break;
                }
            }
            s = e + 1;
        }
        e++;
    }
    if (s != e) {
        tokens[ntokens].value = s;
        tokens[ntokens].length = (size_t)(e - s);
        ntokens++;
    }
    tokens[ntokens].value = *e == '\0' ? NULL : e;
    tokens[ntokens].length = 0;
    return ntokens + 1;
}

static bool ref_space(char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r');
}

static bool ref_strtoull(const char *str, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(str, &end, 10);
    if (errno == ERANGE || end == str)
        return false;
    if (!ref_space(*end) && *end != '\0')
        return false;
    if ((long long)v < 0 && strchr(str, '-'))
        return false;
    *out = v;
    return true;
}

static bool ref_strtoul(const char *str, uint32_t *out)
{
    uint64_t v;
    if (!ref_strtoull(str, &v))
        return false;
    *out = (uint32_t)v;
    return true;
}

static bool ref_strtol(const char *str, int32_t *out)
{
    char *end;
    errno = 0;
    long v = strtol(str, &end, 10);
    if (errno == ERANGE || end == str)
        return false;
    if (!ref_space(*end) && *end != '\0')
        return false;
    *out = (int32_t)v;      /* LP64: keeps the low 32 bits */
    return true;
}

struct ref {
    int status;
    const char *error;
    bool noreply, close;
    enum proto_cmd cmd;
    size_t key_off, keylen;     /* offset into the line */
    bool has_key;
    uint32_t nkeys, flags, level;
    int32_t exptime, bytes, delay;
    bool has_delay;
    uint64_t cas, delta;
};

static int ref_fail(struct ref *r, const char *error)
{
    r->status = PROTO_ERR;
    r->error = error;
    return r->status;
}

static bool ref_noreply(struct ref *r, struct mtok *t, size_t ntokens)
{
    if (t[ntokens - 2].value && strcmp(t[ntokens - 2].value, "noreply") == 0)
        r->noreply = true;
    return r->noreply;
}

static void ref_key(struct ref *r, const char *buf, const struct mtok *t)
{
    r->has_key = true;
    r->key_off = (size_t)(t->value - buf);
    r->keylen = t->length;
}

static int ref_get(struct ref *r, char *buf, struct mtok *t, size_t ntokens,
                   bool touch)
{
    struct mtok *k = &t[1];

    (void)ntokens;
    if (touch) {
        if (!ref_strtol(t[1].value, &r->exptime))
            return ref_fail(r, EXPTIME);
        k++;
    }
    do {
        for (; k->length != 0; k++) {
            if (k->length > PROTO_KEY_MAX)
                return ref_fail(r, FORMAT);
            if (r->nkeys++ == 0)
                ref_key(r, buf, k);
        }
        if (k->value != NULL) {
            ref_tokenize(k->value, t, REF_MAX_TOKENS);
            k = t;
        }
    } while (k->value != NULL);
    return PROTO_OK;
}

static int ref_update(struct ref *r, char *buf, struct mtok *t,
                      size_t ntokens, bool cas)
{
    ref_noreply(r, t, ntokens);
    if (t[1].length > PROTO_KEY_MAX)
        return ref_fail(r, FORMAT);
    ref_key(r, buf, &t[1]);
    if (!(ref_strtoul(t[2].value, &r->flags) &&
          ref_strtol(t[3].value, &r->exptime) &&
          ref_strtol(t[4].value, &r->bytes)))
        return ref_fail(r, FORMAT);
    if (cas && !ref_strtoull(t[5].value, &r->cas))
        return ref_fail(r, FORMAT);
    if (r->bytes < 0 || r->bytes > INT_MAX - 2)
        return ref_fail(r, FORMAT);
    return PROTO_OK;
}

static enum proto_cmd cmd_of(const char *name)
{
    for (int c = 0; c < PROTO_CMD_COUNT; c++)
        if (strcmp(proto_cmd_name[c], name) == 0)
            return (enum proto_cmd)c;
    abort();
}

static int ref_verdict(char *buf, struct ref *r)
{
    struct mtok t[REF_MAX_TOKENS];
    size_t n = ref_tokenize(buf, t, REF_MAX_TOKENS);
    const char *c;

#define IS(name) (strcmp(c, name) == 0 && (r->cmd = cmd_of(name), true))
#define WANT(lo, hi) do { if (n < (lo) || n > (hi)) return ref_fail(r, "ERROR"); } while (0)
    memset(r, 0, sizeof(*r));
    if (n < 2 || t[0].length < 2)
        return ref_fail(r, "ERROR");
    c = t[0].value;
    if (c[0] == 'm' && t[0].length == 2)
        return ref_fail(r, "ERROR");            /* meta: not proxied */
    if (c[0] == 'g') {
        WANT(3, SIZE_MAX);
        if (IS("get") || IS("gets"))
            return ref_get(r, buf, t, n, false);
        if (IS("gat") || IS("gats"))
            return ref_get(r, buf, t, n, true);
        return ref_fail(r, "ERROR");
    }
    if (c[0] == 's') {
        if (IS("set")) {
            WANT(6, 7);
            return ref_update(r, buf, t, n, false);
        }
        if (IS("stats"))
            return PROTO_OK;
        if (strcmp(c, "shutdown") == 0)
            return ref_fail(r, "ERROR: shutdown not enabled");
        return ref_fail(r, "ERROR");
    }
    if (c[0] == 'a') {
        if (IS("add") || IS("append")) {
            WANT(6, 7);
            return ref_update(r, buf, t, n, false);
        }
        return ref_fail(r, "ERROR");
    }
    if (c[0] == 'c') {
        if (IS("cas")) {
            WANT(7, 8);
            return ref_update(r, buf, t, n, true);
        }
        return ref_fail(r, "ERROR");
    }
    if (c[0] == 'i' || c[0] == 'd') {
        if (IS("incr") || IS("decr")) {
            WANT(4, 5);
            ref_noreply(r, t, n);
            if (t[1].length > PROTO_KEY_MAX)
                return ref_fail(r, FORMAT);
            ref_key(r, buf, &t[1]);
            if (!ref_strtoull(t[2].value, &r->delta))
                return ref_fail(r, DELTA);
            return PROTO_OK;
        }
        if (IS("delete")) {
            WANT(3, 5);
            if (n > 3) {
                bool zero = strcmp(t[2].value, "0") == 0;
                bool nr = ref_noreply(r, t, n);
                if (!((n == 4 && (zero || nr)) || (n == 5 && zero && nr)))
                    return ref_fail(r, USAGE);
            }
            if (t[1].length > PROTO_KEY_MAX)
                return ref_fail(r, FORMAT);
            ref_key(r, buf, &t[1]);
            return PROTO_OK;
        }
        return ref_fail(r, "ERROR");
    }
    if (c[0] == 't') {
        if (IS("touch")) {
            WANT(4, 5);
            ref_noreply(r, t, n);
            if (t[1].length > PROTO_KEY_MAX)
                return ref_fail(r, FORMAT);
            ref_key(r, buf, &t[1]);
            if (!ref_strtol(t[2].value, &r->exptime))
                return ref_fail(r, EXPTIME);
            return PROTO_OK;
        }
        return ref_fail(r, "ERROR");
    }
    if (IS("replace") || IS("prepend")) {
        WANT(6, 7);
        return ref_update(r, buf, t, n, false);
    }
    if (strcmp(c, "bget") == 0) {
        r->cmd = PROTO_CMD_GET;
        WANT(3, SIZE_MAX);
        return ref_get(r, buf, t, n, false);
    }
    if (IS("flush_all")) {
        WANT(2, 4);
        ref_noreply(r, t, n);
        if (n != (r->noreply ? 3u : 2u)) {
            if (!ref_strtol(t[1].value, &r->delay))
                return ref_fail(r, EXPTIME);
            r->has_delay = true;
        }
        return PROTO_OK;
    }
    if (IS("version") || IS("quit"))
        return PROTO_OK;
    if (strcmp(c, "lru_crawler") == 0 || strcmp(c, "watch") == 0 ||
        strcmp(c, "lru") == 0 || strcmp(c, "extstore") == 0 ||
        strcmp(c, "refresh_certs") == 0)
        return ref_fail(r, "ERROR");
    if (IS("verbosity")) {
        WANT(3, 4);
        ref_noreply(r, t, n);
        if (!ref_strtoul(t[1].value, &r->level))
            return ref_fail(r, FORMAT);
        return PROTO_OK;
    }
    if (strncmp(t[n - 2].value, "HTTP/", 5) == 0)
        r->close = true;
    return ref_fail(r, "ERROR");
#undef IS
#undef WANT
}

/* ---- requests ------------------------------------------------------------ */

static void check_keys(const struct proto_req *req, const char *line,
                       size_t len)
{
    struct proto_key_iter it;
    const char *key;
    uint32_t keylen, n = 0;

    if (req->nkeys == 0) {
        assert(req->key == NULL && req->keys == NULL);
        return;
    }
    assert(within(req->key, req->keylen, line, len));
    assert(plain_key(req->key, req->keylen));
    assert(within(req->keys, req->keys_len, line, len));
    assert(req->keys == req->key);
    proto_keys_begin(req, &it);
    while (proto_keys_next(&it, &key, &keylen)) {
        assert(within(key, keylen, req->keys, req->keys_len));
        assert(plain_key(key, keylen));
        if (n == 0)
            assert(key == req->key && keylen == req->keylen);
        n++;
        assert(n <= req->nkeys);
    }
    assert(n == req->nkeys);
    /* the span ends with the last key */
    assert(req->keys[req->keys_len - 1] != ' ');
}

static bool is_storage(enum proto_cmd c)
{
    return c >= PROTO_CMD_SET && c <= PROTO_CMD_CAS;
}

/* A storage request printed canonically parses to the same fields. */
static void check_reprint(const struct proto_req *req)
{
    static char buf[PROTO_KEY_MAX + 128];
    struct proto_req again;
    int n;

    if (!is_storage(req->cmd))
        return;
    n = snprintf(buf, sizeof(buf), "%s %.*s %" PRIu32 " %" PRId64 " %" PRId64,
                 proto_cmd_name[req->cmd], (int)req->keylen, req->key,
                 req->flags, req->exptime, req->bytes);
    if (req->cmd == PROTO_CMD_CAS)
        n += snprintf(buf + n, sizeof(buf) - (size_t)n, " %" PRIu64, req->cas);
    if (req->noreply)
        n += snprintf(buf + n, sizeof(buf) - (size_t)n, " noreply");
    assert(proto_parse_request(buf, (size_t)n, &again) == PROTO_OK);
    assert(again.cmd == req->cmd && again.flags == req->flags &&
           again.exptime == req->exptime && again.bytes == req->bytes &&
           again.cas == req->cas && again.noreply == req->noreply &&
           again.keylen == req->keylen &&
           memcmp(again.key, req->key, req->keylen) == 0);
}

/* The line rebuilt for a backend (proto_format_request) parses to the same
 * command with the same fields, keys and all, and has no noreply. */
static void check_rebuilt(const struct proto_req *req)
{
    static char buf[PROTO_FORMAT_MAX + 2 * PROTO_KEY_MAX + 4];
    struct proto_req again;
    size_t n = proto_format_request(req, buf, PROTO_FORMAT_MAX);

    if (n == 0) {
        assert(req->cmd == PROTO_CMD_VERSION || req->cmd == PROTO_CMD_VERBOSITY ||
               req->cmd == PROTO_CMD_STATS || req->cmd == PROTO_CMD_QUIT);
        return;
    }
    assert(n < PROTO_FORMAT_MAX && buf[n] == '\0' && buf[0] != ' ');
    assert(!strstr(buf, "  ") && buf[n - 1] != ' ');
    bool retrieval = req->cmd >= PROTO_CMD_GET && req->cmd <= PROTO_CMD_GATS;
    if (retrieval) {
        if (req->nkeys == 0)
            return;                 /* "gat <exptime>" alone is not sent */
        buf[n++] = ' ';
        memcpy(buf + n, req->key, req->keylen);
        n += req->keylen;
    }
    assert(proto_parse_request(buf, n, &again) == PROTO_OK);
    assert(again.cmd == req->cmd && !again.noreply);
    assert(again.keylen == req->keylen &&
           (req->keylen == 0 || memcmp(again.key, req->key, req->keylen) == 0));
    assert(again.flags == req->flags && again.exptime == req->exptime &&
           again.bytes == req->bytes && again.cas == req->cas &&
           again.delta == req->delta && again.delay == req->delay &&
           again.has_delay == req->has_delay);
    if (retrieval)
        assert(again.nkeys == 1);
}

static void check_request(const char *line, size_t len)
{
    struct proto_req req;
    struct ref ref;
    int rc = proto_parse_request(line, len, &req);
    char *copy;

    assert(rc == PROTO_OK || rc == PROTO_ERR);
    assert(req.cmd < PROTO_CMD_COUNT);
    if (rc == PROTO_ERR) {
        assert(req.error && req.error[0]);
        assert(!strchr(req.error, '\r') && !strchr(req.error, '\n'));
    } else {
        assert(req.error == NULL && !req.close && req.cmd != PROTO_CMD_NONE);
    }
    if (req.close)
        assert(strcmp(req.error, "ERROR") == 0);
    if (rc == PROTO_OK)
        check_keys(&req, line, len);
    else if (req.key)
        assert(within(req.key, req.keylen, line, len));
    if (req.args) {
        assert(req.args_len > 0 && within(req.args, req.args_len, line, len));
        assert(req.args[0] != ' ' && req.args[req.args_len - 1] != ' ');
    }
    if (rc == PROTO_OK && is_storage(req.cmd))
        assert(req.bytes >= 0 && req.bytes <= INT_MAX - 2);
    assert(req.exptime >= INT32_MIN && req.exptime <= INT32_MAX);
    assert(req.delay >= INT32_MIN && req.delay <= INT32_MAX);
    if (rc == PROTO_OK) {
        check_reprint(&req);
        check_rebuilt(&req);
    }

    /* the reference verdict */
    copy = malloc(len + 1);
    assert(copy);
    memcpy(copy, line, len);
    copy[len] = '\0';
    ref_verdict(copy, &ref);
    free(copy);
    assert(rc == ref.status);
    assert(req.noreply == ref.noreply);
    assert(req.close == ref.close);
    if (rc == PROTO_ERR) {
        assert(strcmp(req.error, ref.error) == 0);
        return;
    }
    assert(req.cmd == ref.cmd);
    assert(req.nkeys == ref.nkeys ||
           (req.nkeys == 1 && !ref.nkeys && ref.has_key));
    assert((req.key != NULL) == ref.has_key);
    if (ref.has_key)
        assert((size_t)(req.key - line) == ref.key_off &&
               req.keylen == ref.keylen);
    assert(req.flags == ref.flags && req.exptime == ref.exptime &&
           req.bytes == ref.bytes && req.cas == ref.cas &&
           req.delta == ref.delta && req.delay == ref.delay &&
           req.has_delay == ref.has_delay && req.level == ref.level);
}

/* ---- replies ------------------------------------------------------------- */

/* line without the leading zeros of its numbers (tokens from the skip-th on
 * that are all digits), into buf; returns the new length or -1 if too long */
static int strip_zeros(const char *line, size_t len, size_t skip, char *buf,
                       size_t size)
{
    size_t n = 0, tok = 0;

    for (size_t i = 0; i < len; tok++) {
        size_t j = i;
        while (j < len && line[j] != ' ')
            j++;
        size_t k = i;
        bool digits = tok >= skip && j > i;
        for (size_t d = i; d < j; d++)
            digits = digits && line[d] >= '0' && line[d] <= '9';
        while (digits && k + 1 < j && line[k] == '0')
            k++;
        if (n + (j - k) + 1 > size)
            return -1;
        memcpy(buf + n, line + k, j - k);
        n += j - k;
        if (j < len)
            buf[n++] = ' ';
        i = j + 1;
    }
    return (int)n;
}

/* A parsed reply printed back is the line it came from, leading zeros aside. */
static void check_reply(const char *line, size_t len)
{
    static char buf[PROTO_KEY_MAX + 128], canon[8192];
    struct proto_rsp rsp;
    int n = 0;

    if (proto_parse_reply(line, len, &rsp) != PROTO_OK)
        return;
    assert(rsp.kind < PROTO_RSP_COUNT);
    /* every reply fits some command sent to backends, and errors fit all */
    bool fits_one = false;
    for (int c = PROTO_CMD_GET; c <= PROTO_CMD_FLUSH_ALL; c++) {
        bool fits = proto_reply_fits((enum proto_cmd)c, &rsp);
        fits_one = fits_one || fits;
        if (rsp.kind == PROTO_RSP_ERROR || rsp.kind == PROTO_RSP_CLIENT_ERROR ||
            rsp.kind == PROTO_RSP_SERVER_ERROR)
            assert(fits);
        if (rsp.kind == PROTO_RSP_VALUE)
            assert(fits == (c >= PROTO_CMD_GET && c <= PROTO_CMD_GATS &&
                            rsp.has_cas == (c == PROTO_CMD_GETS || c == PROTO_CMD_GATS)));
    }
    assert(fits_one || rsp.kind == PROTO_RSP_VERSION || rsp.kind == PROTO_RSP_STAT);
    assert(!proto_reply_fits(PROTO_CMD_NONE, &rsp) &&
           !proto_reply_fits(PROTO_CMD_QUIT, &rsp));
    const char *name = proto_rsp_name[rsp.kind];
    switch (rsp.kind) {
    case PROTO_RSP_VALUE:
        assert(within(rsp.key, rsp.keylen, line, len));
        assert(plain_key(rsp.key, rsp.keylen));
        assert(rsp.bytes >= 0);
        n = snprintf(buf, sizeof(buf), "VALUE %.*s %" PRIu32 " %" PRId64,
                     (int)rsp.keylen, rsp.key, rsp.flags, rsp.bytes);
        if (rsp.has_cas)
            n += snprintf(buf + n, sizeof(buf) - (size_t)n, " %" PRIu64,
                          rsp.cas);
        break;
    case PROTO_RSP_NUMBER:
        n = snprintf(buf, sizeof(buf), "%" PRIu64, rsp.number);
        break;
    case PROTO_RSP_STAT:
        assert(within(rsp.key, rsp.keylen, line, len) && rsp.keylen > 0);
        assert(within(rsp.text, rsp.text_len, line, len));
        assert(rsp.text == rsp.key + rsp.keylen + 1);
        assert(len == 5 + rsp.keylen + 1 + rsp.text_len);
        return;
    case PROTO_RSP_VERSION:
    case PROTO_RSP_ERROR:
    case PROTO_RSP_CLIENT_ERROR:
    case PROTO_RSP_SERVER_ERROR:
        assert(within(rsp.text, rsp.text_len, line, len));
        assert(memcmp(line, name, strlen(name)) == 0);
        assert(rsp.text == line + len - rsp.text_len);
        if (len > strlen(name))     /* "NAME" or "NAME <text>" */
            assert(line[strlen(name)] == ' ' &&
                   len == strlen(name) + 1 + rsp.text_len);
        else
            assert(rsp.kind != PROTO_RSP_VERSION && rsp.text_len == 0);
        return;
    default:
        n = snprintf(buf, sizeof(buf), "%s", name);
        break;
    }
    if (rsp.kind == PROTO_RSP_VALUE || rsp.kind == PROTO_RSP_NUMBER) {
        int c = strip_zeros(line, len, rsp.kind == PROTO_RSP_VALUE ? 2 : 0,
                            canon, sizeof(canon));
        if (c < 0)
            return;
        line = canon;
        len = (size_t)c;
    }
    assert((size_t)n == len && memcmp(buf, line, len) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data, *end = p + size;

    check_request(p, size);
    check_reply(p, size);
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *eol = nl ? nl : end;
        size_t len = (size_t)(eol - p);
        if (nl && len > 0 && eol[-1] == '\r')
            len--;
        check_request(p, len);
        check_reply(p, len);
        (void)proto_line_may_grow(p, len);
        p = nl ? nl + 1 : end;
    }
    return 0;
}
