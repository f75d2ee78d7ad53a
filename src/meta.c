/* meta.c — memcached's meta protocol: one request or reply line in, a struct
 * out.
 *
 * Design notes. Requests are judged the way memcached 1.6.18 judges them
 * (proto_text.c's meta commands, util.c's numbers, base64.c), so that a
 * client behind the proxy gets the answers memcached gives, and the proxy
 * frames an ms's data exactly as the backend will. What the real server
 * answers, pinned by tests/integration/test_meta.py:
 *
 * - Tokens are separated by ' ' only (a tab belongs to its token); a NUL
 *   ends the line; at most 23 tokens are cut, the rest is one more token.
 * - A command is "m" + one letter, exactly two bytes; "mx" answers ERROR.
 * - Order of the checks: fewer than two tokens (ERROR; me: bad format);
 *   the key token over 250 bytes (bad format: the length of the *encoded*
 *   key for b); ms without a length (bad format); more than 17 flag tokens
 *   ("options flags are too long" for mg, "options flags too long" for the
 *   others); ms's length (strtol, 0 .. INT32_MAX-2, else bad format); then
 *   the flags, left to right.
 * - A flag is its token's first byte; the rest is its argument ("vfoo" is
 *   v). A byte >= 127 or a letter seen before stops at once ("duplicate
 *   flag"), an unknown letter too ("invalid flag"). Bad arguments do not
 *   stop: the last message set wins ("mg k Tx b" says "error decoding key"),
 *   and a bad F sets none (so "bad command line format" unless another
 *   did). md and ma answer any flag error "invalid or duplicate flag".
 * - Then the M mode (ms: E A P R S, ma: I + D -) and only then an O token
 *   longer than 32 bytes ("opaque token too long"). Every flag is accepted
 *   by every command (mg takes F, C, M...); an ms mode error hides an O
 *   error.
 * - Base64 (b) follows memcached's decoder: bytes outside the alphabet are
 *   skipped, the others must be a multiple of four, and decoding stops after
 *   the first group with padding (one '=' drops one byte, two drop two,
 *   more is an error). The decoded bytes are the key memcached stores: "Zm9v"
 *   with b is the item "foo".
 * - me reads only its key and a third token exactly "b"; its errors are all
 *   "bad command line format". mn answers MN whatever follows.
 * - After an ms line whose length was read, memcached reads length + 2
 *   bytes whatever the error ("swallow"): the value is always data. Before
 *   that (no length, a bad one, too many tokens) the next bytes are the next
 *   command line.
 * - Errors are sent even under q.
 */
#include "meta.h"
#include "proto.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>

#define MC_MAX_TOKENS 23        /* memcached's MAX_TOKENS, less its end token */

static const char ERR_ERROR[]      = "ERROR";
static const char ERR_FORMAT[]     = "CLIENT_ERROR bad command line format";
static const char ERR_TOO_MANY_MG[] = "CLIENT_ERROR options flags are too long";
static const char ERR_TOO_MANY[]   = "CLIENT_ERROR options flags too long";
static const char ERR_DUPLICATE[]  = "CLIENT_ERROR duplicate flag";
static const char ERR_INVALID[]    = "CLIENT_ERROR invalid flag";
static const char ERR_DECODE[]     = "CLIENT_ERROR error decoding key";
static const char ERR_TOKEN[]      = "CLIENT_ERROR bad token in command line format";
static const char ERR_M_LENGTH[]   = "CLIENT_ERROR incorrect length for M token";
static const char ERR_INITIAL[]    = "CLIENT_ERROR invalid numeric initial value";
static const char ERR_DELTA[]      = "CLIENT_ERROR invalid numeric delta value";
static const char ERR_MD_MA_FLAG[] = "CLIENT_ERROR invalid or duplicate flag";
static const char ERR_OPAQUE[]     = "CLIENT_ERROR opaque token too long";
static const char ERR_MS_MODE[]    = "CLIENT_ERROR invalid mode for ms M token";
static const char ERR_MA_MODE[]    = "CLIENT_ERROR invalid mode for ma M token";
const char META_ERR_BAD_CHUNK[]    = "CLIENT_ERROR bad data chunk";

const char *const meta_cmd_name[META_CMD_COUNT] = {
#define META_CMD_NAME(id, name) [META_CMD_##id] = name,
    META_CMD_LIST(META_CMD_NAME)
#undef META_CMD_NAME
};

const char *const meta_rsp_name[META_RSP_COUNT] = {
#define META_RSP_NAME(id, name) [META_RSP_##id] = name,
    META_RSP_LIST(META_RSP_NAME)
#undef META_RSP_NAME
};

struct tok {
    const char *p;
    size_t len;
};

/* ---- Base64, as memcached's base64.c decodes keys ---------------------- */

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    if (c == '=')
        return 0;
    return -1;
}

/* Decode src[0..len) into out (len / 4 * 3 bytes suffice); 0 on failure. */
static size_t b64_decode(const char *src, size_t len, uint8_t *out)
{
    size_t count = 0, n = 0, o = 0;
    unsigned char block[4];
    int pad = 0;

    for (size_t i = 0; i < len; i++)
        count += b64_value((unsigned char)src[i]) >= 0;
    if (count == 0 || count % 4)
        return 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64_value((unsigned char)src[i]);
        if (v < 0)
            continue;
        pad += src[i] == '=';
        block[n++] = (unsigned char)v;
        if (n < 4)
            continue;
        out[o++] = (uint8_t)(block[0] << 2 | block[1] >> 4);
        out[o++] = (uint8_t)(block[1] << 4 | block[2] >> 2);
        out[o++] = (uint8_t)(block[2] << 6 | block[3]);
        n = 0;
        if (pad) {
            if (pad > 2)
                return 0;
            return o - (size_t)pad;
        }
    }
    return o;
}

/* ---- Requests ---------------------------------------------------------- */

static int fail(struct meta_req *req, const char *error)
{
    req->error = error;
    return META_ERR;
}

/* memcached's tokenizer: at most MC_MAX_TOKENS tokens, split on ' '. */
static size_t tokenize(const char *p, const char *end, struct tok *t)
{
    size_t n = 0;

    while (n < MC_MAX_TOKENS) {
        while (p < end && *p == ' ')
            p++;
        if (p == end)
            break;
        const char *start = p;
        while (p < end && *p != ' ')
            p++;
        t[n++] = (struct tok){ start, (size_t)(p - start) };
    }
    return n;
}

static void set_hkey_plain(struct meta_req *req)
{
    req->hkey = (const uint8_t *)req->key;
    req->hkeylen = req->keylen;
}

/*
 * The flag tokens t[0..n), as memcached's _meta_flag_preparse reads them.
 * Returns NULL, or the error memcached answers (for md and ma the caller
 * replaces it with theirs).
 */
static const char *parse_flags(const struct tok *t, size_t n, struct meta_req *req,
                               uint8_t *keybuf)
{
    bool seen[127] = { false };
    const char *error = NULL;
    bool bad = false;

    for (size_t i = 0; i < n; i++) {
        unsigned char o = (unsigned char)t[i].p[0];
        const char *arg = t[i].p + 1;
        size_t arg_len = t[i].len - 1;
        int32_t i32;
        uint32_t u32;
        uint64_t u64;

        if (o >= 127 || seen[o])
            return ERR_DUPLICATE;
        seen[o] = true;
        req->flags[req->nflags++] = (struct meta_flag){
            (char)o, arg, (uint32_t)arg_len };
        switch (o) {
        case 'b': {
            size_t got = b64_decode(req->key, req->keylen, keybuf);
            req->base64 = true;
            if (got == 0) {
                error = ERR_DECODE;
                bad = true;
            } else {
                req->hkey = keybuf;
                req->hkeylen = (uint32_t)got;
            }
            break;
        }
        case 'N': case 'T': case 'R':
            if (!proto_strtol32(arg, arg_len, &i32)) {
                error = ERR_TOKEN;
                bad = true;
            }
            req->vivify |= o == 'N';
            break;
        case 'F':
            if (!proto_strtoul32(arg, arg_len, &u32))
                bad = true;             /* memcached sets no message */
            break;
        case 'C':
            if (!proto_strtoull(arg, arg_len, &req->cas)) {
                error = ERR_TOKEN;
                bad = true;
            } else {
                req->has_cas = true;
            }
            break;
        case 'M':
            if (t[i].len != 2) {
                error = ERR_M_LENGTH;
                bad = true;
            } else {
                req->mode = arg[0];
            }
            break;
        case 'J': case 'D':
            if (!proto_strtoull(arg, arg_len, &u64)) {
                error = o == 'J' ? ERR_INITIAL : ERR_DELTA;
                bad = true;
            }
            break;
        case 'O':
            req->opaque = arg;
            req->opaque_len = (uint32_t)arg_len;
            break;
        case 'q':
            req->quiet = true;
            break;
        case 'k':
            req->ret_key = true;
            break;
        case 'I':
            req->invalidate = true;
            break;
        case 'P': case 'L': case 'l': case 's': case 't': case 'c': case 'f':
        case 'v': case 'h': case 'u':
            break;
        default:
            return ERR_INVALID;
        }
    }
    return bad ? (error ? error : ERR_FORMAT) : NULL;
}

static bool opaque_too_long(const struct meta_req *req)
{
    return req->opaque != NULL && req->opaque_len + 1 > META_OPAQUE_MAX;
}

/* mg, ms, md, ma: "<cmd> <key> [<datalen>] <flags>*" */
static int parse_keyed(const struct tok *t, size_t n, struct meta_req *req,
                       uint8_t *keybuf)
{
    bool ms = req->cmd == META_CMD_MS;
    size_t first = ms ? 3 : 2;

    if (n < 2)
        return fail(req, ERR_ERROR);
    req->key = t[1].p;
    req->keylen = (uint32_t)t[1].len;
    if (t[1].len > META_KEY_MAX)
        return fail(req, ERR_FORMAT);
    set_hkey_plain(req);
    if (ms && n == 2)
        return fail(req, ERR_FORMAT);
    if (n > 2 + META_FLAGS_MAX)     /* memcached counts tokens, the key's too */
        return fail(req, req->cmd == META_CMD_MG ? ERR_TOO_MANY_MG : ERR_TOO_MANY);
    if (ms) {
        int32_t vlen;
        if (!proto_strtol32(t[2].p, t[2].len, &vlen) || vlen < 0 || vlen > INT_MAX - 2)
            return fail(req, ERR_FORMAT);
        req->datalen = vlen;
        req->swallow = true;    /* from here on, errors drop the data */
    }
    const char *error = parse_flags(t + first, n - first, req, keybuf);
    if (error != NULL) {
        bool md_ma = req->cmd == META_CMD_MD || req->cmd == META_CMD_MA;
        return fail(req, md_ma ? ERR_MD_MA_FLAG : error);
    }
    if (ms && !(req->mode == 0 || strchr("EAPRS", req->mode)))
        return fail(req, ERR_MS_MODE);
    if (req->cmd == META_CMD_MA && !(req->mode == 0 || strchr("I+D-", req->mode)))
        return fail(req, ERR_MA_MODE);
    if (opaque_too_long(req))
        return fail(req, ERR_OPAQUE);
    req->quiet_drops = req->quiet ? meta_quiet_drops(req->cmd, false) : 0;
    req->swallow = false;
    return META_OK;
}

/* me <key> [b]: only a third token exactly "b" counts. */
static int parse_me(const struct tok *t, size_t n, struct meta_req *req,
                    uint8_t *keybuf)
{
    if (n < 2 || t[1].len > META_KEY_MAX)
        return fail(req, ERR_FORMAT);
    req->key = t[1].p;
    req->keylen = (uint32_t)t[1].len;
    set_hkey_plain(req);
    if (n >= 3 && t[2].len == 1 && t[2].p[0] == 'b') {
        size_t got = b64_decode(req->key, req->keylen, keybuf);
        if (got == 0)
            return fail(req, ERR_FORMAT);
        req->base64 = true;
        req->hkey = keybuf;
        req->hkeylen = (uint32_t)got;
    }
    return META_OK;
}

int meta_parse_request(const char *line, size_t len, struct meta_req *req,
                       uint8_t keybuf[META_KEYBUF_SIZE])
{
    struct tok t[MC_MAX_TOKENS];
    const char *s = line;

    /* Most lines are text commands: their first token does not start with
     * an m, and they need not be tokenized here. */
    while (s < line + len && *s == ' ')
        s++;
    if (s == line + len || *s != 'm')
        return META_NOT_META;
    const char *nul = memchr(line, '\0', len);
    const char *end = nul ? nul : line + len;

    memset(req, 0, sizeof(*req));
    req->datalen = -1;
    size_t n = len ? tokenize(line, end, t) : 0;
    if (n == 0 || t[0].len != 2 || t[0].p[0] != 'm')
        return META_NOT_META;
    for (int c = META_CMD_NONE + 1; c < META_CMD_COUNT; c++) {
        if (t[0].p[1] == meta_cmd_name[c][1])
            req->cmd = (enum meta_cmd)c;
    }
    switch (req->cmd) {
    case META_CMD_MN:
        return META_OK;
    case META_CMD_ME:
        return parse_me(t, n, req, keybuf);
    case META_CMD_NONE:
        return fail(req, ERR_ERROR);
    default:
        return parse_keyed(t, n, req, keybuf);
    }
}

uint32_t meta_quiet_drops(enum meta_cmd cmd, bool vivified)
{
    switch (cmd) {
    case META_CMD_MG:
        return META_RSP_BIT(EN);
    case META_CMD_MS:
    case META_CMD_MD:
        return META_RSP_BIT(HD);
    case META_CMD_MA:
        return vivified ? 0 : META_RSP_BIT(HD) | META_RSP_BIT(VA);
    default:
        return 0;
    }
}

bool meta_data_ok(const char *block, int64_t datalen)
{
    return datalen >= 0 && block[datalen] == '\r' && block[datalen + 1] == '\n';
}

size_t meta_format_request(const struct meta_req *req, char *buf, size_t cap)
{
    size_t o = 0;
    int n;

    if (req->cmd == META_CMD_NONE || req->cmd == META_CMD_MN || req->key == NULL)
        return 0;
    n = snprintf(buf, cap, "%s %.*s", meta_cmd_name[req->cmd], (int)req->keylen,
                 req->key);
    if (n < 0 || (size_t)n >= cap)
        return 0;
    o = (size_t)n;
    if (req->cmd == META_CMD_ME) {
        n = req->base64 ? snprintf(buf + o, cap - o, " b") : 0;
    } else if (req->cmd == META_CMD_MS) {
        n = snprintf(buf + o, cap - o, " %lld", (long long)req->datalen);
    } else {
        n = 0;
    }
    if (n < 0 || (size_t)n >= cap - o)
        return 0;
    o += (size_t)n;
    for (uint32_t i = 0; req->cmd != META_CMD_ME && i < req->nflags; i++) {
        const struct meta_flag *f = &req->flags[i];
        n = snprintf(buf + o, cap - o, " %c%.*s", f->letter, (int)f->arg_len, f->arg);
        if (n < 0 || (size_t)n >= cap - o)
            return 0;
        o += (size_t)n;
    }
    return o;
}

/* ---- Replies ------------------------------------------------------------ */

enum meta_reply_rc meta_parse_reply(const char *line, size_t len,
                                    struct meta_rsp *rsp)
{
    const char *sp = len ? memchr(line, ' ', len) : NULL;
    size_t wlen = sp ? (size_t)(sp - line) : len;
    int kind = -1;

    memset(rsp, 0, sizeof(*rsp));
    for (int k = 0; k < META_RSP_COUNT; k++) {
        if (strlen(meta_rsp_name[k]) == wlen && memcmp(line, meta_rsp_name[k], wlen) == 0) {
            kind = k;
            break;
        }
    }
    if (kind < 0)
        return META_REPLY_UNKNOWN;
    rsp->kind = (enum meta_rsp_kind)kind;
    size_t i = sp ? wlen + 1 : len;
    if (rsp->kind == META_RSP_VA) {
        uint64_t v = 0;
        if (i >= len || line[i] < '0' || line[i] > '9')
            return META_REPLY_NO_LENGTH;
        for (; i < len && line[i] >= '0' && line[i] <= '9'; i++) {
            unsigned d = (unsigned)(line[i] - '0');
            v = v > (UINT64_MAX - d) / 10 ? UINT64_MAX : v * 10 + d;
        }
        if (i < len && line[i] != ' ')
            return META_REPLY_BAD_LENGTH;
        rsp->vlen = v;
        i += i < len;
    }
    if (i < len) {
        rsp->flags = line + i;
        rsp->flags_len = len - i;
    }
    return META_REPLY_OK;
}

size_t meta_drop_flags(const char *flags, size_t len, const char *drop, char *out)
{
    size_t n = 0;
    bool first = true;

    for (size_t i = 0; i <= len && len > 0;) {
        const char *sp = memchr(flags + i, ' ', len - i);
        size_t tlen = sp != NULL ? (size_t)(sp - (flags + i)) : len - i;
        /* an empty token (two spaces) has no letter: kept as written */
        if (tlen == 0 || strchr(drop, flags[i]) == NULL || flags[i] == '\0') {
            if (!first) {
                out[n++] = ' ';
            }
            memcpy(out + n, flags + i, tlen);
            n += tlen;
            first = false;
        }
        i += tlen + 1;
    }
    return n;
}
