/*
 * ringrec.c — the ring record, <prefix>:ring in Redis (docs/ARCHITECTURE.md, "The index"): the ring
 * the data obeys, as field/value pairs (epoch, compat, hash, hash_tag,
 * points, servers as JSON), read back into a ring, and fingerprinted so two
 * proxies can tell whether they serve the same ring.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mem.h"
#include "ringrec.h"

static void json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') {
            fprintf(f, "\\%c", *s);
        } else if ((unsigned char)*s < 0x20) {
            fprintf(f, "\\u%04x", (unsigned char)*s);
        } else {
            fputc(*s, f);
        }
    }
    fputc('"', f);
}

int ringrec_fields(const struct ring *r, uint64_t epoch, char **fields)
{
    char *servers = NULL;
    size_t len = 0;
    int n = 0;
    FILE *f = open_memstream(&servers, &len);

    if (f == NULL) {
        return -1;
    }
    fputc('[', f);
    for (uint32_t i = 0; i < r->nservers; i++) {
        fprintf(f, "%s{\"identity\":", i ? "," : "");
        json_string(f, r->servers[i].identity);
        fprintf(f, ",\"addr\":");
        json_string(f, r->servers[i].addr);
        fprintf(f, ",\"weight\":%u}", r->servers[i].weight);
    }
    fputc(']', f);
    fclose(f);

    char tag[3] = { r->tag[0], r->tag[1], '\0' };
    if (asprintf(&fields[n++], "epoch") < 0 ||
        asprintf(&fields[n++], "%llu", (unsigned long long)epoch) < 0 ||
        asprintf(&fields[n++], "compat") < 0 ||
        asprintf(&fields[n++], "%s", ring_compat_names[r->compat]) < 0 ||
        asprintf(&fields[n++], "hash") < 0 ||
        asprintf(&fields[n++], "%s", hash_names[r->hash]) < 0 ||
        asprintf(&fields[n++], "hash_tag") < 0 ||
        asprintf(&fields[n++], "%s", r->has_tag ? tag : "") < 0 ||
        asprintf(&fields[n++], "points") < 0 ||
        asprintf(&fields[n++], "%u", r->npoints) < 0 ||
        asprintf(&fields[n++], "servers") < 0) {
        free(servers);
        ringrec_fields_free(fields, n - 1);
        return -1;
    }
    fields[n++] = servers;
    return n;
}

void ringrec_fields_free(char **fields, int n)
{
    for (int i = 0; i < n; i++) {
        free(fields[i]);
    }
}

/* Fingerprint of a ring: md5 of its record without the epoch, in hex. */
void ringrec_fingerprint(const struct ring *r, char out[RINGREC_FP_SIZE])
{
    char *fields[RINGREC_FIELDS * 2];
    int n = ringrec_fields(r, 0, fields);
    uint8_t d[16];
    char *all = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&all, &len);

    /* A fingerprint of nothing would name every ring alike: no way out
     * but to stop (mem.h). */
    if (n < 0 || f == NULL) {
        rp_oom("a ring fingerprint", 0);
    }
    for (int i = 2; i < n; i++) {
        fprintf(f, "%s\n", fields[i]);
    }
    if (fclose(f) != 0 || all == NULL) {
        rp_oom("a ring fingerprint", len);
    }
    hash_md5_digest(all ? all : "", len, d);
    for (int i = 0; i < 16; i++) {
        snprintf(out + 2 * i, 3, "%02x", d[i]);
    }
    free(all);
    if (n > 0) {
        ringrec_fields_free(fields, n);
    }
}

/*
 * Reading the record back. It comes from Redis, which anyone with access can
 * write, so it is read as untrusted input: a bounded, length-aware reader of
 * exactly the JSON that ringrec_fields writes (plus JSON whitespace and any
 * valid escape), which refuses everything else. Nothing is read past the end
 * of a value and nothing is written past a buffer; the first violation
 * refuses the whole record.
 */

struct jcur {
    const char *p, *end;
};

static void j_space(struct jcur *j)
{
    while (j->p < j->end &&
           (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) {
        j->p++;
    }
}

/* The next token is the character c: skip it. */
static bool j_char(struct jcur *j, char c)
{
    j_space(j);
    if (j->p < j->end && *j->p == c) {
        j->p++;
        return true;
    }
    return false;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* The 4 hex digits of a \u escape at j->p: advances past them. */
static bool j_hex4(struct jcur *j, uint32_t *cp)
{
    *cp = 0;
    if (j->end - j->p < 4) {
        return false;
    }
    for (int i = 0; i < 4; i++) {
        int d = hex_digit(*j->p++);
        if (d < 0) {
            return false;
        }
        *cp = *cp << 4 | (uint32_t)d;
    }
    return true;
}

struct jout {
    char *buf;
    size_t cap, len;        /* cap counts the NUL */
};

static bool j_put(struct jout *o, uint32_t byte)
{
    if (o->len + 1 >= o->cap) {
        return false;
    }
    o->buf[o->len++] = (char)byte;
    return true;
}

/* Code point cp (1..0x10ffff, no surrogate) as UTF-8. */
static bool j_put_utf8(struct jout *o, uint32_t cp)
{
    if (cp < 0x80) {
        return j_put(o, cp);
    }
    if (cp < 0x800) {
        return j_put(o, 0xc0 | cp >> 6) && j_put(o, 0x80 | (cp & 0x3f));
    }
    if (cp < 0x10000) {
        return j_put(o, 0xe0 | cp >> 12) && j_put(o, 0x80 | (cp >> 6 & 0x3f)) &&
               j_put(o, 0x80 | (cp & 0x3f));
    }
    return j_put(o, 0xf0 | cp >> 18) && j_put(o, 0x80 | (cp >> 12 & 0x3f)) &&
           j_put(o, 0x80 | (cp >> 6 & 0x3f)) && j_put(o, 0x80 | (cp & 0x3f));
}

/*
 * A JSON string into out[0..cap), NUL-terminated: false if it is not one, has
 * a raw control character, a bad escape or an escaped NUL (a C string cannot
 * hold it), or needs more than cap - 1 bytes. Other bytes pass as they are.
 */
static bool j_string(struct jcur *j, char *out, size_t cap)
{
    struct jout o = { out, cap, 0 };

    if (!j_char(j, '"')) {
        return false;
    }
    while (j->p < j->end) {
        unsigned char c = (unsigned char)*j->p++;
        if (c == '"') {
            out[o.len] = '\0';
            return true;
        }
        if (c < 0x20) {
            return false;
        }
        if (c != '\\') {
            if (!j_put(&o, c)) {
                return false;
            }
            continue;
        }
        if (j->p == j->end) {
            return false;
        }
        uint32_t cp;
        switch (*j->p++) {
        case '"':  cp = '"'; break;
        case '\\': cp = '\\'; break;
        case '/':  cp = '/'; break;
        case 'b':  cp = '\b'; break;
        case 'f':  cp = '\f'; break;
        case 'n':  cp = '\n'; break;
        case 'r':  cp = '\r'; break;
        case 't':  cp = '\t'; break;
        case 'u':
            if (!j_hex4(j, &cp) || cp == 0 || (cp >= 0xdc00 && cp <= 0xdfff)) {
                return false;
            }
            if (cp >= 0xd800 && cp <= 0xdbff) {
                /* a high surrogate: only with the low one that completes it */
                uint32_t lo;
                if (j->end - j->p < 2 || j->p[0] != '\\' || j->p[1] != 'u') {
                    return false;
                }
                j->p += 2;
                if (!j_hex4(j, &lo) || lo < 0xdc00 || lo > 0xdfff) {
                    return false;
                }
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            }
            break;
        default:
            return false;
        }
        if (!j_put_utf8(&o, cp)) {
            return false;
        }
    }
    return false;       /* no closing quote */
}

/* A JSON integer 0..max: digits only, no sign, fraction, exponent or
 * leading zero. */
static bool j_uint(struct jcur *j, uint64_t max, uint64_t *v)
{
    const char *start;

    j_space(j);
    start = j->p;
    *v = 0;
    while (j->p < j->end && *j->p >= '0' && *j->p <= '9') {
        uint64_t d = (uint64_t)(*j->p - '0');
        if (*v > (max - d) / 10) {
            return false;
        }
        *v = *v * 10 + d;
        j->p++;
    }
    if (j->p == start || (*start == '0' && j->p - start > 1)) {
        return false;
    }
    /* a number runs to a delimiter: "1.5", "1e3", "12abc" are refused */
    return j->p == j->end || (*j->p != '.' && *j->p != 'e' && *j->p != 'E' &&
                              !(*j->p >= 'a' && *j->p <= 'z'));
}

/* A server's strings, decoded. */
struct rec_server {
    char identity[RINGREC_STR_MAX + 1];
    char addr[RINGREC_STR_MAX + 1];
};

/* {"identity":"...","addr":"...","weight":N}, keys in any order, each once. */
static bool j_server(struct jcur *j, struct rec_server *rs,
                     struct ring_server_spec *spec)
{
    bool have_identity = false, have_addr = false, have_weight = false;

    if (!j_char(j, '{')) {
        return false;
    }
    do {
        char key[16];
        if (!j_string(j, key, sizeof(key)) || !j_char(j, ':')) {
            return false;
        }
        if (strcmp(key, "identity") == 0 && !have_identity) {
            have_identity = true;
            if (!j_string(j, rs->identity, sizeof(rs->identity)) ||
                rs->identity[0] == '\0') {
                return false;
            }
        } else if (strcmp(key, "addr") == 0 && !have_addr) {
            have_addr = true;
            if (!j_string(j, rs->addr, sizeof(rs->addr)) || rs->addr[0] == '\0') {
                return false;
            }
        } else if (strcmp(key, "weight") == 0 && !have_weight) {
            uint64_t w;
            have_weight = true;
            if (!j_uint(j, RINGREC_WEIGHT_MAX, &w) || w == 0) {
                return false;
            }
            spec->weight = (uint32_t)w;
        } else {
            return false;       /* an unknown key, or one given twice */
        }
    } while (j_char(j, ','));
    if (!j_char(j, '}') || !have_identity || !have_addr || !have_weight) {
        return false;
    }
    spec->identity = rs->identity;
    spec->addr = rs->addr;
    return true;
}

static int str_ptr_cmp(const void *x, const void *y)
{
    return strcmp(*(const char *const *)x, *(const char *const *)y);
}

/* Does strs[0..n) hold a string twice? Sorts strs. */
static bool has_duplicate(const char **strs, uint32_t n)
{
    qsort(strs, n, sizeof(*strs), str_ptr_cmp);
    for (uint32_t i = 1; i < n; i++) {
        if (strcmp(strs[i - 1], strs[i]) == 0) {
            return true;
        }
    }
    return false;
}

/*
 * The servers value: [server,...], nothing after it but whitespace, 1 to
 * RINGREC_MAX_SERVERS servers, no identity or address twice (the config
 * refuses both, src/config.c pool_check). On success *specs and *strs hold
 * *n servers; free both whatever the outcome.
 */
static bool parse_servers(const char *json, struct ring_server_spec **specs,
                          struct rec_server **strs, uint32_t *n)
{
    struct jcur j = { json, json + strlen(json) };
    uint32_t cap = 0;

    *specs = NULL;
    *strs = NULL;
    *n = 0;
    if (!j_char(&j, '[')) {
        return false;
    }
    if (!j_char(&j, ']')) {
        do {
            if (*n == RINGREC_MAX_SERVERS) {
                return false;
            }
            if (*n == cap) {
                cap = cap ? cap * 2 : 16;
                if (cap > RINGREC_MAX_SERVERS) {
                    cap = RINGREC_MAX_SERVERS;
                }
                struct ring_server_spec *ns = realloc(*specs, cap * sizeof(**specs));
                if (ns == NULL) {
                    return false;
                }
                *specs = ns;
                struct rec_server *nr = realloc(*strs, cap * sizeof(**strs));
                if (nr == NULL) {
                    return false;
                }
                *strs = nr;
            }
            if (!j_server(&j, &(*strs)[*n], &(*specs)[*n])) {
                return false;
            }
            (*n)++;
        } while (j_char(&j, ','));
        if (!j_char(&j, ']')) {
            return false;
        }
    }
    j_space(&j);
    if (j.p != j.end || *n == 0) {
        return false;
    }
    /* realloc moved the strings: point the specs at where they are now */
    for (uint32_t i = 0; i < *n; i++) {
        (*specs)[i].identity = (*strs)[i].identity;
        (*specs)[i].addr = (*strs)[i].addr;
    }
    const char **sorted = malloc(*n * sizeof(*sorted));
    bool dup = sorted == NULL;
    for (int which = 0; !dup && which < 2; which++) {
        for (uint32_t i = 0; i < *n; i++) {
            sorted[i] = which ? (*specs)[i].addr : (*specs)[i].identity;
        }
        dup = has_duplicate(sorted, *n);
    }
    free(sorted);
    return !dup;
}

/* A whole decimal number 0..max, as ringrec_fields writes it. */
static bool dec_field(const char *s, uint64_t max, uint64_t *v)
{
    struct jcur j = { s, s + strlen(s) };

    return *s >= '0' && *s <= '9' && j_uint(&j, max, v) && j.p == j.end;
}

struct ring *ringrec_parse(const char *const *kv, size_t n_kv, uint64_t *epoch)
{
    const char *vals[RINGREC_FIELDS] = { NULL };
    enum { F_EPOCH, F_COMPAT, F_HASH, F_TAG, F_POINTS, F_SERVERS };
    static const char *const names[RINGREC_FIELDS] = {
        [F_EPOCH] = "epoch", [F_COMPAT] = "compat", [F_HASH] = "hash",
        [F_TAG] = "hash_tag", [F_POINTS] = "points", [F_SERVERS] = "servers",
    };
    struct ring_params params = { .hash = HASH_MD5 };
    uint64_t e = 0, points;

    for (size_t i = 0; i + 1 < n_kv; i += 2) {
        if (kv[i] == NULL || kv[i + 1] == NULL) {
            return NULL;
        }
        for (int f = 0; f < RINGREC_FIELDS; f++) {
            if (strcmp(kv[i], names[f]) == 0) {
                if (vals[f] != NULL) {
                    return NULL;        /* a field twice: not from HGETALL */
                }
                vals[f] = kv[i + 1];
            }
        }
        /* other fields: a later version's, ignored */
    }
    if (vals[F_COMPAT] == NULL || vals[F_HASH] == NULL || vals[F_SERVERS] == NULL) {
        return NULL;
    }
    /* epoch and points are optional, but must be numbers when present */
    if ((vals[F_EPOCH] != NULL && !dec_field(vals[F_EPOCH], UINT64_MAX, &e)) ||
        (vals[F_POINTS] != NULL && !dec_field(vals[F_POINTS], UINT32_MAX, &points))) {
        return NULL;
    }
    int hk = hash_by_name(vals[F_HASH]);
    if (hk < 0) {
        return NULL;
    }
    params.hash = (enum hash_kind)hk;
    int compat = -1;
    for (int c = 0; c < RING_COMPAT_COUNT; c++) {
        if (strcmp(vals[F_COMPAT], ring_compat_names[c]) == 0) {
            compat = c;
        }
    }
    if (compat < 0) {
        return NULL;
    }
    params.compat = (enum ring_compat)compat;
    if (vals[F_TAG] != NULL && vals[F_TAG][0] != '\0') {
        if (strlen(vals[F_TAG]) != 2) {
            return NULL;
        }
        params.has_tag = true;
        memcpy(params.tag, vals[F_TAG], 2);
    }

    struct ring_server_spec *specs;
    struct rec_server *strs;
    uint32_t n;
    struct ring *r = NULL;
    char err[256];
    if (parse_servers(vals[F_SERVERS], &specs, &strs, &n)) {
        params.servers = specs;
        params.nservers = n;
        r = ring_build(&params, err, sizeof(err));
    }
    free(specs);
    free(strs);
    if (r != NULL && vals[F_EPOCH] != NULL) {
        *epoch = e;
    }
    return r;
}

bool ringrec_matches(const char *const *kv, size_t n_kv, const struct ring *r)
{
    uint64_t epoch;
    struct ring *rec = ringrec_parse(kv, n_kv, &epoch);
    char a[RINGREC_FP_SIZE], b[RINGREC_FP_SIZE];

    if (rec == NULL) {
        return false;
    }
    ringrec_fingerprint(rec, a);
    ringrec_fingerprint(r, b);
    ring_unref(rec);
    return strcmp(a, b) == 0;
}
