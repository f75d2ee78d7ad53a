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
#include "json.h"
#include "ringrec.h"

int ringrec_fields(const struct ring *r, uint64_t epoch, char **fields)
{
    struct json_w w;
    char *servers;
    int n = 0;

    /* Bytes as they are (no JSON_W_UTF8): the record, and so the
     * fingerprint, must stay what every proxy of the fleet writes. */
    json_w_init(&w, SIZE_MAX, 0);
    json_arr(&w);
    for (uint32_t i = 0; i < r->nservers; i++) {
        json_obj(&w);
        json_key(&w, "identity");
        json_str(&w, r->servers[i].identity);
        json_key(&w, "addr");
        json_str(&w, r->servers[i].addr);
        json_key(&w, "weight");
        json_uint(&w, r->servers[i].weight);
        json_obj_end(&w);
    }
    json_arr_end(&w);
    if (json_w_finish(&w) != 0 || w.buf == NULL) {
        json_w_free(&w);
        return -1;
    }
    servers = w.buf;

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
 * write, so it is read as untrusted input: json_parse (bounded, strict) and
 * then exactly the shape ringrec_fields writes, refusing everything else;
 * the first violation refuses the whole record.
 */

/* A server's strings, decoded. */
struct rec_server {
    char identity[RINGREC_STR_MAX + 1];
    char addr[RINGREC_STR_MAX + 1];
};

/* A non-empty string of at most RINGREC_STR_MAX bytes, no NUL, into out. */
static bool rec_string(const struct json_node *n, char out[RINGREC_STR_MAX + 1])
{
    const char *s = json_get_cstr(n);

    if (s == NULL || n->len == 0 || n->len > RINGREC_STR_MAX) {
        return false;
    }
    memcpy(out, s, n->len + 1);
    return true;
}

/* {"identity":"...","addr":"...","weight":N}, keys in any order, each once. */
static bool rec_server(const struct json_doc *d, uint32_t obj, struct rec_server *rs,
                       struct ring_server_spec *spec)
{
    bool have_identity = false, have_addr = false, have_weight = false;

    if (d->nodes[obj].type != JSON_OBJECT) {
        return false;
    }
    for (uint32_t c = json_first(d, obj); c != 0; c = json_next(d, obj, c)) {
        const struct json_node *m = &d->nodes[c];
        uint64_t w;
        if (m->keylen == 8 && memcmp(m->key, "identity", 8) == 0 && !have_identity) {
            have_identity = rec_string(m, rs->identity);
            if (!have_identity) {
                return false;
            }
        } else if (m->keylen == 4 && memcmp(m->key, "addr", 4) == 0 && !have_addr) {
            have_addr = rec_string(m, rs->addr);
            if (!have_addr) {
                return false;
            }
        } else if (m->keylen == 6 && memcmp(m->key, "weight", 6) == 0 && !have_weight) {
            if (!json_get_u64(m, RINGREC_WEIGHT_MAX, &w) || w == 0) {
                return false;
            }
            have_weight = true;
            spec->weight = (uint32_t)w;
        } else {
            return false;       /* an unknown key, or one given twice */
        }
    }
    return have_identity && have_addr && have_weight;
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
    /* an array of objects of three members: nothing deeper, nothing more */
    const struct json_limits lim = { .max_depth = 2,
                                     .max_nodes = 1 + RINGREC_MAX_SERVERS * 4 };
    struct json_doc d;
    uint32_t count;

    *specs = NULL;
    *strs = NULL;
    *n = 0;
    if (json_parse(&d, json, strlen(json), &lim, NULL, 0) != 0) {
        return false;
    }
    count = d.nodes[0].count;
    if (d.nodes[0].type != JSON_ARRAY || count == 0 || count > RINGREC_MAX_SERVERS ||
        (*specs = calloc(count, sizeof(**specs))) == NULL ||
        (*strs = calloc(count, sizeof(**strs))) == NULL) {
        json_doc_free(&d);
        return false;
    }
    for (uint32_t c = json_first(&d, 0); c != 0; c = json_next(&d, 0, c)) {
        if (!rec_server(&d, c, &(*strs)[*n], &(*specs)[*n])) {
            json_doc_free(&d);
            return false;
        }
        (*n)++;
    }
    json_doc_free(&d);
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

/* A whole decimal number 0..max, as ringrec_fields writes it: digits only,
 * no leading zero. (A Redis field, not JSON.) */
static bool dec_field(const char *s, uint64_t max, uint64_t *v)
{
    uint64_t x = 0;

    if (*s == '\0' || (s[0] == '0' && s[1] != '\0')) {
        return false;
    }
    for (; *s != '\0'; s++) {
        uint64_t d = (uint64_t)(*s - '0');
        if (*s < '0' || *s > '9' || x > (max - d) / 10) {
            return false;
        }
        x = x * 10 + d;
    }
    *v = x;
    return true;
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
