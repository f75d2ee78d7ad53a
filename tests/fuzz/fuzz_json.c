/* fuzz_json.c — libFuzzer target for the JSON reader and writer (src/json.c).
 *
 * The input is a document, in an exact-size heap copy so ASan sees any read
 * past it. Checked whenever json_parse accepts it:
 *
 * - the tree is well formed: every subtree ends within its parent, counts
 *   match the children walked, strings and number texts are NUL-terminated;
 * - json_w_node writes it out again (bytes as they are) and that output
 *   parses to the same tree: same types, member names, string bytes and
 *   number texts (a differential check of writer against reader);
 * - written with JSON_W_UTF8 it parses too, and then its strings are UTF-8;
 * - a second write of the re-parsed tree is byte-equal to the first.
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_tree(const struct json_doc *d)
{
    assert(d->n >= 1 && d->nodes[0].end == d->n && d->nodes[0].key == NULL);
    for (uint32_t i = 0; i < d->n; i++) {
        const struct json_node *n = &d->nodes[i];
        assert(n->end > i && n->end <= d->n);
        if (n->type == JSON_STRING || n->type == JSON_NUMBER) {
            assert(n->str[n->len] == '\0');
        }
        if (n->type != JSON_ARRAY && n->type != JSON_OBJECT) {
            assert(n->end == i + 1 && n->count == 0);
            continue;
        }
        uint32_t count = 0;
        for (uint32_t c = json_first(d, i); c != 0; c = json_next(d, i, c)) {
            assert(c > i && d->nodes[c].end <= n->end);
            assert((d->nodes[c].key != NULL) == (n->type == JSON_OBJECT));
            count++;
        }
        assert(count == n->count);
    }
}

static void assert_same(const struct json_doc *a, const struct json_doc *b)
{
    assert(a->n == b->n);
    for (uint32_t i = 0; i < a->n; i++) {
        const struct json_node *x = &a->nodes[i], *y = &b->nodes[i];
        assert(x->type == y->type && x->end == y->end && x->count == y->count);
        assert((x->key == NULL) == (y->key == NULL));
        assert(x->key == NULL ||
               (x->keylen == y->keylen && memcmp(x->key, y->key, x->keylen) == 0));
        if (x->type == JSON_STRING || x->type == JSON_NUMBER) {
            assert(x->len == y->len && memcmp(x->str, y->str, x->len) == 0);
        }
    }
}

/* Write d again under flags; the output, or NULL (the writer's bounds). */
static char *rewrite(const struct json_doc *d, unsigned flags, size_t *len)
{
    struct json_w w;

    json_w_init(&w, 1u << 24, flags);
    json_w_node(&w, d, 0);
    int rc = json_w_finish(&w);
    assert(rc == 0);
    *len = w.len;
    return w.buf;
}

static bool valid_utf8(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;

    for (size_t i = 0; i < len;) {
        size_t n = json_utf8_seq(p + i, len - i);
        if (n == 0) {
            return false;
        }
        i += n;
    }
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *in = malloc(size ? size : 1);
    struct json_doc d, again, text;
    char err[128];

    if (in == NULL) {
        return 0;
    }
    memcpy(in, data, size);
    if (json_parse(&d, in, size, NULL, err, sizeof(err)) != 0) {
        assert(d.nodes == NULL && d.arena == NULL && err[0] != '\0');
        free(in);
        return 0;
    }
    check_tree(&d);

    size_t len, len2, tlen;
    char *out = rewrite(&d, 0, &len);
    assert(json_parse(&again, out, len, NULL, err, sizeof(err)) == 0);
    assert_same(&d, &again);
    char *out2 = rewrite(&again, 0, &len2);
    assert(len == len2 && memcmp(out, out2, len) == 0);

    char *t = rewrite(&d, JSON_W_UTF8, &tlen);
    assert(valid_utf8(t, tlen));
    assert(json_parse(&text, t, tlen, NULL, err, sizeof(err)) == 0);
    assert(text.n == d.n);
    for (uint32_t i = 0; i < text.n; i++) {
        const struct json_node *n = &text.nodes[i];
        assert(n->type == d.nodes[i].type);
        assert(n->type != JSON_STRING || valid_utf8(n->str, n->len));
        assert(n->key == NULL || valid_utf8(n->key, n->keylen));
    }

    json_doc_free(&text);
    json_doc_free(&again);
    json_doc_free(&d);
    free(t);
    free(out2);
    free(out);
    free(in);
    return 0;
}
