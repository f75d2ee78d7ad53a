/*
 * ringrec.c — the ring record, <prefix>:ring in Redis (DESIGN §5): the ring
 * the data obeys, as field/value pairs (epoch, compat, hash, hash_tag,
 * points, servers as JSON), read back into a ring, and fingerprinted so two
 * proxies can tell whether they serve the same ring.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
        return -ENOMEM;
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
        return -ENOMEM;
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

    for (int i = 2; f != NULL && i < n; i++) {
        fprintf(f, "%s\n", fields[i]);
    }
    if (f != NULL) {
        fclose(f);
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

/* Parse a JSON string at *p into a malloc'd C string; advances *p. */
static char *json_str(const char **p)
{
    const char *s = *p;
    char *out, *o;

    while (*s == ' ') {
        s++;
    }
    if (*s++ != '"' || (out = malloc(strlen(s) + 1)) == NULL) {
        return NULL;
    }
    for (o = out; *s && *s != '"'; s++) {
        if (*s == '\\' && s[1] == 'u') {
            *o++ = (char)strtol((char[]){ s[2], s[3], s[4], s[5], 0 }, NULL, 16);
            s += 5;
        } else if (*s == '\\' && s[1]) {
            *o++ = *++s;
        } else {
            *o++ = *s;
        }
    }
    *o = '\0';
    *p = *s ? s + 1 : s;
    return out;
}

struct ring *ringrec_parse(const char *const *kv, size_t n_kv, uint64_t *epoch)
{
    const char *compat = NULL, *hash = NULL, *tag = NULL, *servers = NULL;
    struct ring_server_spec *specs = NULL;
    char **strs = NULL;
    uint32_t n = 0, nstr = 0, cap = 0;
    struct ring *r = NULL;
    char err[256];

    for (size_t j = 0; j + 1 < n_kv; j += 2) {
        const char *k = kv[j], *v = kv[j + 1];
        if (strcmp(k, "compat") == 0) compat = v;
        else if (strcmp(k, "hash") == 0) hash = v;
        else if (strcmp(k, "hash_tag") == 0) tag = v;
        else if (strcmp(k, "servers") == 0) servers = v;
        else if (strcmp(k, "epoch") == 0) *epoch = strtoull(v, NULL, 10);
    }
    if (compat == NULL || hash == NULL || servers == NULL) {
        return NULL;
    }
    struct ring_params params = { .hash = HASH_MD5 };
    int hk = hash_by_name(hash);
    if (hk < 0) {
        return NULL;
    }
    params.hash = (enum hash_kind)hk;
    params.compat = strcmp(compat, "libketama") == 0 ? RING_COMPAT_LIBKETAMA :
                                                       RING_COMPAT_LIBMEMCACHED;
    if (tag != NULL && strlen(tag) == 2) {
        params.has_tag = true;
        memcpy(params.tag, tag, 2);
    }
    /* [{"identity":"mc1","addr":"127.0.0.1:11212","weight":1},...] */
    const char *p = strchr(servers, '[');
    while (p != NULL && (p = strchr(p, '{')) != NULL) {
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            struct ring_server_spec *ns = realloc(specs, cap * sizeof(*ns));
            char **nstrs = realloc(strs, 2 * cap * sizeof(*nstrs));
            specs = ns ? ns : specs;
            strs = nstrs ? nstrs : strs;
            if (ns == NULL || nstrs == NULL) {
                goto out;
            }
        }
        struct ring_server_spec *s = &specs[n];
        p++;
        memset(s, 0, sizeof(*s));
        for (int field = 0; field < 3; field++) {
            char *name = json_str(&p);
            if (name == NULL || (p = strchr(p, ':')) == NULL) {
                free(name);
                goto out;
            }
            p++;
            if (strcmp(name, "weight") == 0) {
                s->weight = (uint32_t)strtoul(p, (char **)&p, 10);
            } else {
                char *v = json_str(&p);
                if (v == NULL) {
                    free(name);
                    goto out;
                }
                strs[nstr++] = v;
                if (strcmp(name, "identity") == 0) s->identity = v;
                else s->addr = v;
            }
            free(name);
            while (*p == ',' || *p == ' ') {
                p++;
            }
        }
        if (s->identity == NULL || s->addr == NULL) {
            goto out;
        }
        n++;
    }
    params.servers = specs;
    params.nservers = n;
    r = n > 0 ? ring_build(&params, err, sizeof(err)) : NULL;
out:
    for (uint32_t i = 0; i < nstr; i++) {
        free(strs[i]);
    }
    free(strs);
    free(specs);
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
