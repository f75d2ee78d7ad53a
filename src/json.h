/*
 * json.h — the project's one JSON writer and one JSON reader
 * (docs/ARCHITECTURE.md, "Observability"): the admin port's views, the ring
 * record's server list in Redis (ringrec.c), and what `ringproxy status`
 * reads back (status_cli.c). No libevent here: the fuzz targets link it alone.
 */
#ifndef RP_JSON_H
#define RP_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define JSON_MAX_DEPTH 32           /* containers inside containers, both ways */

/* --- writing ------------------------------------------------------------------- */

/*
 * A builder: commas and nesting are tracked, so callers say only what comes
 * next. Output goes to an owned buffer, or, with a sink, to the sink each
 * time JSON_W_CHUNK bytes gathered (and at json_w_finish). At most `max`
 * bytes are produced in all; past that, or deeper than JSON_MAX_DEPTH, or
 * out of memory, the writer fails: further calls do nothing and
 * json_w_finish says so.
 */
#define JSON_W_CHUNK 16384

enum json_w_flags {
    /* Strings are text for people (admin views): a byte that does not start
     * a valid UTF-8 sequence becomes U+FFFD and DEL is escaped, so any
     * output parses as UTF-8. Without it, bytes >= 0x20 other than '"' and
     * '\\' pass as they are (the ring record: its bytes are its identity). */
    JSON_W_UTF8 = 1,
};

typedef void json_sink_fn(void *arg, const char *data, size_t len);

struct json_w {
    char *buf;                      /* owned; NUL-terminated while not failed */
    size_t len, cap, max, total;
    unsigned flags;
    bool failed;
    bool after_key;                 /* the next value is a member's */
    uint32_t depth;
    uint64_t has_value;             /* bit d: the container at depth d is not empty */
    json_sink_fn *sink;
    void *sink_arg;
};

void json_w_init(struct json_w *w, size_t max, unsigned flags);
void json_w_sink(struct json_w *w, json_sink_fn *sink, void *arg);
/* Flush to the sink; 0, or -1 when the writer failed (the output is then
 * incomplete). The buffer stays the caller's to free with json_w_free. */
int json_w_finish(struct json_w *w);
void json_w_free(struct json_w *w);

void json_obj(struct json_w *w);
void json_obj_end(struct json_w *w);
void json_arr(struct json_w *w);
void json_arr_end(struct json_w *w);
void json_key(struct json_w *w, const char *key);
void json_keyn(struct json_w *w, const char *key, size_t len);
void json_str(struct json_w *w, const char *s);     /* NULL: "" */
void json_strn(struct json_w *w, const char *s, size_t len);
void json_str_or_null(struct json_w *w, const char *s); /* NULL or "": null */
void json_uint(struct json_w *w, uint64_t v);
void json_real(struct json_w *w, double v);         /* %.9g; not finite: null */
void json_bool(struct json_w *w, bool v);
void json_null(struct json_w *w);
/* A number's text as it stands (the caller vouches for its syntax). */
void json_number_text(struct json_w *w, const char *text, size_t len);

/* Length of the valid UTF-8 sequence at s[0..n) (1 to 4), or 0 if none
 * starts there (admin.c's Prometheus escaping asks too). */
size_t json_utf8_seq(const unsigned char *s, size_t n);

/* --- reading ------------------------------------------------------------------- */

enum json_type { JSON_NULL, JSON_FALSE, JSON_TRUE, JSON_NUMBER, JSON_STRING,
                 JSON_ARRAY, JSON_OBJECT };

/*
 * A parsed document is its values in document order: a container's
 * children follow it, and `end` is the index past its whole subtree (its
 * next sibling), so walking needs no recursion.
 */
struct json_node {
    enum json_type type;
    uint32_t end;
    uint32_t count;                 /* array, object: children */
    const char *key;                /* an object member's name (decoded), else NULL */
    uint32_t keylen;
    const char *str;                /* string: decoded bytes; number: its text;
                                       NUL-terminated; a string may hold NULs */
    uint32_t len;
};

struct json_doc {
    struct json_node *nodes;        /* nodes[0] is the root */
    uint32_t n;
    char *arena;                    /* the decoded strings */
};

/* What a parse accepts; zero fields take the defaults below. */
struct json_limits {
    size_t max_len;                 /* bytes of input (default 16 MiB) */
    uint32_t max_nodes;             /* values (default 1 << 20) */
    uint32_t max_depth;             /* at most JSON_MAX_DEPTH (the default) */
};

/*
 * Parse exactly one value (RFC 8259, with whitespace around it) from
 * s[0..len); nothing else may follow. Strict: no trailing commas, comments,
 * leading zeros, raw control bytes in strings, lone surrogates, or numbers a
 * double cannot hold (1e400). String bytes >= 0x20 need not be UTF-8 (the
 * ring record keeps identities as bytes). Duplicate member names are kept;
 * json_member returns the first. Never reads outside s[0..len), never
 * recurses. Returns 0, or -1 with a reason in err (and *d empty).
 */
int json_parse(struct json_doc *d, const char *s, size_t len,
               const struct json_limits *lim, char *err, size_t errlen);
void json_doc_free(struct json_doc *d);

/* Children of container i: for (c = json_first(d, i); c; c = json_next(d, i, c)).
 * 0 (the root, never a child) ends the walk. */
uint32_t json_first(const struct json_doc *d, uint32_t i);
uint32_t json_next(const struct json_doc *d, uint32_t parent, uint32_t c);
/* The first member of object i named key, or 0. */
uint32_t json_member(const struct json_doc *d, uint32_t i, const char *key);

/* A number written as digits only (no sign, fraction or exponent), <= max. */
bool json_get_u64(const struct json_node *n, uint64_t max, uint64_t *v);
bool json_get_double(const struct json_node *n, double *v);
/* A string holding no NUL, as a C string; else NULL. */
const char *json_get_cstr(const struct json_node *n);

/* Write the value at node i (and its subtree) again. */
void json_w_node(struct json_w *w, const struct json_doc *d, uint32_t i);

#endif
