/*
 * json.c — the JSON writer and reader of json.h.
 *
 * Design notes
 * - The writer escapes '"', '\\' and control bytes (as \u00XX, lowercase
 *   hex, which the ring record's fingerprint depends on: ringrec.c); what
 *   else it does to bytes is the JSON_W_UTF8 flag's choice.
 * - The reader is iterative: containers open on an explicit stack bounded by
 *   the depth limit. Decoded strings and number texts go to one arena sized
 *   from the input before parsing starts (a value never decodes longer than
 *   its text plus its NUL), so no pointer moves while the document lives.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

#define JSON_DEFAULT_MAX_LEN (16u << 20)
#define JSON_DEFAULT_MAX_NODES (1u << 20)

/* --- writing ------------------------------------------------------------------- */

void json_w_init(struct json_w *w, size_t max, unsigned flags)
{
    memset(w, 0, sizeof(*w));
    w->max = max;
    w->flags = flags;
}

void json_w_sink(struct json_w *w, json_sink_fn *sink, void *arg)
{
    w->sink = sink;
    w->sink_arg = arg;
}

static void w_flush(struct json_w *w)
{
    if (w->sink != NULL && w->len > 0 && !w->failed) {
        w->sink(w->sink_arg, w->buf, w->len);
        w->len = 0;
    }
}

static void w_add(struct json_w *w, const void *p, size_t n)
{
    if (w->failed) {
        return;
    }
    if (n > w->max - w->total) {
        w->failed = true;
        return;
    }
    if (w->len + n + 1 > w->cap) {
        size_t cap = w->cap ? w->cap : 256;
        while (cap < w->len + n + 1) {
            cap *= 2;
        }
        char *nb = realloc(w->buf, cap);
        if (nb == NULL) {
            w->failed = true;
            return;
        }
        w->buf = nb;
        w->cap = cap;
    }
    memcpy(w->buf + w->len, p, n);
    w->len += n;
    w->total += n;
    w->buf[w->len] = '\0';
    if (w->sink != NULL && w->len >= JSON_W_CHUNK) {
        w_flush(w);
    }
}

static void w_lit(struct json_w *w, const char *s)
{
    w_add(w, s, strlen(s));
}

/* Before a value: the comma that separates it from the one before. */
static void w_value(struct json_w *w)
{
    if (w->after_key) {
        w->after_key = false;
        return;
    }
    if (w->depth > 0) {
        uint64_t bit = 1ull << (w->depth - 1);
        if (w->has_value & bit) {
            w_add(w, ",", 1);
        }
        w->has_value |= bit;
    }
}

int json_w_finish(struct json_w *w)
{
    w_flush(w);
    return w->failed || w->depth != 0 ? -1 : 0;
}

void json_w_free(struct json_w *w)
{
    free(w->buf);
    w->buf = NULL;
    w->len = w->cap = 0;
}

static void w_open(struct json_w *w, const char *c)
{
    w_value(w);
    if (w->depth >= JSON_MAX_DEPTH) {
        w->failed = true;
        return;
    }
    w_add(w, c, 1);
    w->depth++;
    w->has_value &= ~(1ull << (w->depth - 1));
}

static void w_close(struct json_w *w, const char *c)
{
    if (w->depth == 0 || w->after_key) {
        w->failed = true;
        return;
    }
    w->depth--;
    w_add(w, c, 1);
}

void json_obj(struct json_w *w) { w_open(w, "{"); }
void json_obj_end(struct json_w *w) { w_close(w, "}"); }
void json_arr(struct json_w *w) { w_open(w, "["); }
void json_arr_end(struct json_w *w) { w_close(w, "]"); }

size_t json_utf8_seq(const unsigned char *s, size_t n)
{
    uint32_t cp;
    size_t len;

    if (s[0] < 0x80) {
        return 1;
    } else if (s[0] >= 0xc2 && s[0] <= 0xdf) {
        len = 2, cp = s[0] & 0x1f;
    } else if (s[0] >= 0xe0 && s[0] <= 0xef) {
        len = 3, cp = s[0] & 0x0f;
    } else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
        len = 4, cp = s[0] & 0x07;
    } else {
        return 0;
    }
    if (len > n) {
        return 0;
    }
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) {
            return 0;
        }
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (len == 4 && (cp < 0x10000 || cp > 0x10ffff))) {
        return 0;
    }
    return len;
}

static void w_string(struct json_w *w, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s, *end = p + len;
    bool utf8 = (w->flags & JSON_W_UTF8) != 0;

    w_add(w, "\"", 1);
    while (p < end) {
        /* the longest run that needs no escape goes out at once (without
         * JSON_W_UTF8, that is every byte from 0x20 but '"' and '\\') */
        const unsigned char *run = p;
        size_t n;
        while (p < end && *p >= 0x20 && *p != '"' && *p != '\\' &&
               (!utf8 || (*p < 0x7f))) {
            p++;
        }
        w_add(w, run, (size_t)(p - run));
        if (p == end) {
            break;
        }
        if (*p == '"' || *p == '\\') {
            char esc[2] = { '\\', (char)*p };
            w_add(w, esc, 2);
            p++;
        } else if (*p < 0x20 || (utf8 && *p == 0x7f)) {
            char esc[6] = { '\\', 'u', '0', '0', hex[*p >> 4], hex[*p & 15] };
            w_add(w, esc, 6);
            p++;
        } else if ((n = json_utf8_seq(p, (size_t)(end - p))) == 0) {
            w_lit(w, "\\ufffd");
            p++;
        } else {
            w_add(w, p, n);
            p += n;
        }
    }
    w_add(w, "\"", 1);
}

void json_keyn(struct json_w *w, const char *key, size_t len)
{
    if (w->depth == 0 || w->after_key) {
        w->failed = true;
        return;
    }
    w_value(w);
    w_string(w, key, len);
    w_add(w, ":", 1);
    w->after_key = true;
}

void json_key(struct json_w *w, const char *key)
{
    json_keyn(w, key, strlen(key));
}

void json_strn(struct json_w *w, const char *s, size_t len)
{
    w_value(w);
    w_string(w, s, len);
}

void json_str(struct json_w *w, const char *s)
{
    json_strn(w, s != NULL ? s : "", s != NULL ? strlen(s) : 0);
}

void json_str_or_null(struct json_w *w, const char *s)
{
    if (s == NULL || *s == '\0') {
        json_null(w);
    } else {
        json_str(w, s);
    }
}

void json_uint(struct json_w *w, uint64_t v)
{
    char t[24];
    int n = snprintf(t, sizeof(t), "%llu", (unsigned long long)v);

    json_number_text(w, t, (size_t)n);
}

void json_real(struct json_w *w, double v)
{
    char t[40];

    if (!isfinite(v)) {
        json_null(w);
        return;
    }
    int n = snprintf(t, sizeof(t), "%.9g", v);
    json_number_text(w, t, (size_t)n);
}

void json_bool(struct json_w *w, bool v)
{
    w_value(w);
    w_lit(w, v ? "true" : "false");
}

void json_null(struct json_w *w)
{
    w_value(w);
    w_lit(w, "null");
}

void json_number_text(struct json_w *w, const char *text, size_t len)
{
    w_value(w);
    w_add(w, text, len);
}

void json_w_node(struct json_w *w, const struct json_doc *d, uint32_t i)
{
    uint32_t open[JSON_MAX_DEPTH + 1], nopen = 0;
    uint32_t end = d->nodes[i].end;

    for (uint32_t j = i; j < end; j++) {
        const struct json_node *n = &d->nodes[j];
        /* close the containers this node is past */
        while (nopen > 0 && d->nodes[open[nopen - 1]].end <= j) {
            nopen--;
            (d->nodes[open[nopen]].type == JSON_OBJECT ? json_obj_end : json_arr_end)(w);
        }
        if (n->key != NULL && j != i) {
            json_keyn(w, n->key, n->keylen);
        }
        switch (n->type) {
        case JSON_NULL: json_null(w); break;
        case JSON_FALSE: json_bool(w, false); break;
        case JSON_TRUE: json_bool(w, true); break;
        case JSON_NUMBER: json_number_text(w, n->str, n->len); break;
        case JSON_STRING: json_strn(w, n->str, n->len); break;
        case JSON_ARRAY:
        case JSON_OBJECT:
            (n->type == JSON_OBJECT ? json_obj : json_arr)(w);
            if (nopen <= JSON_MAX_DEPTH) {
                open[nopen++] = j;
            } else {
                w->failed = true;
            }
            break;
        }
    }
    while (nopen > 0) {
        nopen--;
        (d->nodes[open[nopen]].type == JSON_OBJECT ? json_obj_end : json_arr_end)(w);
    }
}

/* --- reading ------------------------------------------------------------------- */

struct jp {
    const char *p, *end;
    struct json_doc *d;
    uint32_t cap, max_nodes;
    size_t arena_len;
    const char *why;
};

static void jp_space(struct jp *j)
{
    while (j->p < j->end &&
           (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) {
        j->p++;
    }
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static bool jp_hex4(struct jp *j, uint32_t *cp)
{
    *cp = 0;
    if (j->end - j->p < 4) {
        return false;
    }
    for (int i = 0; i < 4; i++) {
        int v = hex_digit(*j->p++);
        if (v < 0) {
            return false;
        }
        *cp = *cp << 4 | (uint32_t)v;
    }
    return true;
}

static size_t utf8_put(char *o, uint32_t cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    } else if (cp < 0x800) {
        o[0] = (char)(0xc0 | cp >> 6);
        o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    } else if (cp < 0x10000) {
        o[0] = (char)(0xe0 | cp >> 12);
        o[1] = (char)(0x80 | (cp >> 6 & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | cp >> 18);
    o[1] = (char)(0x80 | (cp >> 12 & 0x3f));
    o[2] = (char)(0x80 | (cp >> 6 & 0x3f));
    o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* The escape after a backslash (j->p past it) into o; bytes written, or 0. An
 * escape's text (2 or 6 or 12 bytes) is never shorter than its UTF-8. */
static size_t jp_escape(struct jp *j, char *o)
{
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    uint32_t cp, lo;

    if (j->p == j->end) {
        return 0;
    }
    char c = *j->p++;
    const char *e = c != '\0' ? strchr(from, c) : NULL;
    if (e != NULL) {
        o[0] = to[e - from];
        return 1;
    }
    if (c != 'u' || !jp_hex4(j, &cp) || (cp >= 0xdc00 && cp <= 0xdfff)) {
        return 0;
    }
    if (cp >= 0xd800 && cp <= 0xdbff) {
        /* a high surrogate: only with the low one that completes it */
        if (j->end - j->p < 2 || j->p[0] != '\\' || j->p[1] != 'u') {
            return 0;
        }
        j->p += 2;
        if (!jp_hex4(j, &lo) || lo < 0xdc00 || lo > 0xdfff) {
            return 0;
        }
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
    }
    return utf8_put(o, cp);
}

/* The string at j->p (its '"') into the arena: *out, *len. */
static bool jp_string(struct jp *j, const char **out, uint32_t *len)
{
    char *o = j->d->arena + j->arena_len, *start = o;

    j->p++;                                 /* the opening quote */
    while (j->p < j->end) {
        unsigned char c = (unsigned char)*j->p++;
        if (c == '"') {
            *o = '\0';
            *out = start;
            *len = (uint32_t)(o - start);
            j->arena_len += (size_t)(o - start) + 1;
            return true;
        }
        if (c < 0x20) {
            j->why = "a control byte in a string";
            return false;
        }
        if (c != '\\') {
            *o++ = (char)c;
            continue;
        }
        size_t n = jp_escape(j, o);
        if (n == 0) {
            j->why = "a bad escape in a string";
            return false;
        }
        o += n;
    }
    j->why = "a string without its closing quote";
    return false;
}

static bool is_digit(const struct jp *j)
{
    return j->p < j->end && *j->p >= '0' && *j->p <= '9';
}

/* -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? into the arena, as text. */
static bool jp_number(struct jp *j, const char **out, uint32_t *len)
{
    const char *start = j->p;

    if (j->p < j->end && *j->p == '-') {
        j->p++;
    }
    if (!is_digit(j)) {
        goto bad;
    }
    if (*j->p++ != '0') {
        while (is_digit(j)) {
            j->p++;
        }
    } else if (is_digit(j)) {
        j->why = "a number with a leading zero";
        return false;
    }
    if (j->p < j->end && *j->p == '.') {
        j->p++;
        if (!is_digit(j)) {
            goto bad;
        }
        while (is_digit(j)) {
            j->p++;
        }
    }
    if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
        j->p++;
        if (j->p < j->end && (*j->p == '+' || *j->p == '-')) {
            j->p++;
        }
        if (!is_digit(j)) {
            goto bad;
        }
        while (is_digit(j)) {
            j->p++;
        }
    }
    size_t n = (size_t)(j->p - start);
    char *o = j->d->arena + j->arena_len;
    memcpy(o, start, n);
    o[n] = '\0';
    j->arena_len += n + 1;
    if (isinf(strtod(o, NULL))) {
        j->why = "a number out of a double's range";
        return false;
    }
    *out = o;
    *len = (uint32_t)n;
    return true;
bad:
    j->why = "a malformed number";
    return false;
}

static bool jp_literal(struct jp *j, const char *lit)
{
    size_t n = strlen(lit);

    if ((size_t)(j->end - j->p) < n || memcmp(j->p, lit, n) != 0) {
        j->why = "an unknown literal";
        return false;
    }
    j->p += n;
    return true;
}

static struct json_node *jp_node(struct jp *j, enum json_type type)
{
    struct json_doc *d = j->d;

    if (d->n == j->max_nodes) {
        j->why = "too many values";
        return NULL;
    }
    if (d->n == j->cap) {
        uint32_t cap = j->cap ? j->cap * 2 : 64;
        if (cap > j->max_nodes) {
            cap = j->max_nodes;
        }
        struct json_node *nn = realloc(d->nodes, (size_t)cap * sizeof(*nn));
        if (nn == NULL) {
            j->why = "out of memory";
            return NULL;
        }
        d->nodes = nn;
        j->cap = cap;
    }
    struct json_node *n = &d->nodes[d->n++];
    memset(n, 0, sizeof(*n));
    n->type = type;
    n->end = d->n;
    return n;
}

/* One scalar or the opening of a container at j->p (whitespace skipped). */
static struct json_node *jp_value(struct jp *j)
{
    struct json_node *n = NULL;
    const char *s;
    uint32_t len;

    if (j->p == j->end) {
        j->why = "a value expected";
        return NULL;
    }
    switch (*j->p) {
    case '{':
    case '[':
        n = jp_node(j, *j->p == '{' ? JSON_OBJECT : JSON_ARRAY);
        j->p++;
        return n;
    case '"':
        if (!jp_string(j, &s, &len) || (n = jp_node(j, JSON_STRING)) == NULL) {
            return NULL;
        }
        break;
    case 't':
        return jp_literal(j, "true") ? jp_node(j, JSON_TRUE) : NULL;
    case 'f':
        return jp_literal(j, "false") ? jp_node(j, JSON_FALSE) : NULL;
    case 'n':
        return jp_literal(j, "null") ? jp_node(j, JSON_NULL) : NULL;
    default:
        if (!jp_number(j, &s, &len) || (n = jp_node(j, JSON_NUMBER)) == NULL) {
            return NULL;
        }
        break;
    }
    n->str = s;
    n->len = len;
    return n;
}

/* An object member's name and its ':', before its value. */
static bool jp_key(struct jp *j, const char **k, uint32_t *klen)
{
    jp_space(j);
    if (j->p == j->end || *j->p != '"') {
        j->why = "a member name expected";
        return false;
    }
    if (!jp_string(j, k, klen)) {
        return false;
    }
    jp_space(j);
    if (j->p == j->end || *j->p != ':') {
        j->why = "':' expected after a member name";
        return false;
    }
    j->p++;
    return true;
}

int json_parse(struct json_doc *d, const char *s, size_t len,
               const struct json_limits *lim, char *err, size_t errlen)
{
    struct json_limits l = lim != NULL ? *lim : (struct json_limits){ 0 };
    uint32_t stack[JSON_MAX_DEPTH], depth = 0;
    struct jp j = { .p = s, .end = s + len, .d = d };

    memset(d, 0, sizeof(*d));
    l.max_len = l.max_len ? l.max_len : JSON_DEFAULT_MAX_LEN;
    l.max_nodes = l.max_nodes ? l.max_nodes : JSON_DEFAULT_MAX_NODES;
    l.max_depth = l.max_depth && l.max_depth < JSON_MAX_DEPTH ? l.max_depth : JSON_MAX_DEPTH;
    j.max_nodes = l.max_nodes;
    if (len > l.max_len || len > UINT32_MAX / 2) {
        j.why = "the document is too long";
        goto bad;
    }
    /* every value decodes to at most its text and a NUL */
    if ((d->arena = malloc(2 * len + 2)) == NULL) {
        j.why = "out of memory";
        goto bad;
    }
    for (;;) {
        /* a value: the root, an array's element, or (after its name) an
         * object's member */
        const char *k = NULL;
        uint32_t klen = 0;
        struct json_node *top = depth > 0 ? &d->nodes[stack[depth - 1]] : NULL;
        if (top != NULL && top->type == JSON_OBJECT && !jp_key(&j, &k, &klen)) {
            goto bad;
        }
        jp_space(&j);
        struct json_node *n = jp_value(&j);
        if (n == NULL) {
            goto bad;
        }
        n->key = k;
        n->keylen = klen;
        if (depth > 0) {
            d->nodes[stack[depth - 1]].count++;     /* (jp_value may have moved nodes) */
        }
        if (n->type == JSON_OBJECT || n->type == JSON_ARRAY) {
            char close = n->type == JSON_OBJECT ? '}' : ']';
            if (depth == l.max_depth) {
                j.why = "nested too deep";
                goto bad;
            }
            stack[depth++] = d->n - 1;
            jp_space(&j);
            if (j.p == j.end || *j.p != close) {
                continue;                           /* its first value next */
            }
            j.p++;
            depth--;
        }
        /* after a value: a comma and the next one, or containers' ends */
        for (;;) {
            if (depth == 0) {
                goto done;
            }
            top = &d->nodes[stack[depth - 1]];
            jp_space(&j);
            if (j.p == j.end) {
                j.why = "the document ends inside a container";
                goto bad;
            }
            char c = *j.p++;
            if (c == ',') {
                break;
            }
            if (c != (top->type == JSON_OBJECT ? '}' : ']')) {
                j.why = "',' or the container's end expected";
                goto bad;
            }
            top->end = d->n;
            depth--;
        }
    }
done:
    jp_space(&j);
    if (j.p != j.end) {
        j.why = "garbage after the value";
        goto bad;
    }
    return 0;
bad:
    if (err != NULL && errlen > 0) {
        snprintf(err, errlen, "%s at byte %zu", j.why ? j.why : "malformed",
                 (size_t)(j.p - s));
    }
    json_doc_free(d);
    return -1;
}

void json_doc_free(struct json_doc *d)
{
    free(d->nodes);
    free(d->arena);
    memset(d, 0, sizeof(*d));
}

uint32_t json_first(const struct json_doc *d, uint32_t i)
{
    return d->nodes[i].count > 0 ? i + 1 : 0;
}

uint32_t json_next(const struct json_doc *d, uint32_t parent, uint32_t c)
{
    uint32_t next = d->nodes[c].end;

    return next < d->nodes[parent].end ? next : 0;
}

uint32_t json_member(const struct json_doc *d, uint32_t i, const char *key)
{
    size_t len = strlen(key);

    if (d->nodes[i].type != JSON_OBJECT) {
        return 0;
    }
    for (uint32_t c = json_first(d, i); c != 0; c = json_next(d, i, c)) {
        if (d->nodes[c].keylen == len && memcmp(d->nodes[c].key, key, len) == 0) {
            return c;
        }
    }
    return 0;
}

bool json_get_u64(const struct json_node *n, uint64_t max, uint64_t *v)
{
    uint64_t x = 0;

    if (n->type != JSON_NUMBER || n->len == 0) {
        return false;
    }
    for (uint32_t i = 0; i < n->len; i++) {
        char c = n->str[i];
        if (c < '0' || c > '9') {
            return false;               /* a sign, fraction or exponent */
        }
        uint64_t dg = (uint64_t)(c - '0');
        if (x > (max - dg) / 10 || dg > max) {
            return false;
        }
        x = x * 10 + dg;
    }
    *v = x;
    return true;
}

bool json_get_double(const struct json_node *n, double *v)
{
    if (n->type != JSON_NUMBER) {
        return false;
    }
    *v = strtod(n->str, NULL);
    return true;
}

const char *json_get_cstr(const struct json_node *n)
{
    if (n->type != JSON_STRING || memchr(n->str, '\0', n->len) != NULL) {
        return NULL;
    }
    return n->str;
}
