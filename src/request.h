/*
 * request.h — client commands in flight and their fragments.
 *
 * A request is one client command; a fragment is the part of it one backend
 * connection (backend.c) or the migration (move.c) answers. This layer
 * splits a multi-get into shares, matches each VALUE a backend returns to
 * the share's next key, assembles the reply in the client's key order and
 * applies a reply's index effect (cmd.h). It calls nothing above it: the
 * transport completes a fragment through frag_ops (backend.h) that
 * request_new installs, and a request tells its owner (client.c) what it
 * needs through the request_owner_ops the owner registers.
 *
 * Ownership: a request is freed by its owner once its reply is out
 * (client_advance), or here once it is done if it has no client any more
 * (noreply, or its client closed first: the backends' answers must still
 * be read off their connections). Fragment buffers and the key copy belong
 * to the request.
 */
#ifndef RP_REQUEST_H
#define RP_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>
#include <event2/buffer.h>

#include "proto.h"

struct pool;
struct client;
struct bconn;
struct request;
struct frag_ops;

/* No share: key_frag of a key without one, frag_of_backend's empty slot. A
 * multi-get may need a share per key (each key whose owner is changing
 * during a resize gets its own), so share indices are 32 bits. */
#define FRAG_NONE UINT32_MAX

/*
 * A fragment is the part of a request that one backend connection answers:
 * the whole request for a single-key command, one backend's share of the
 * keys of a multi-get, one backend's "flush_all". Fragments sit in their
 * connection's FIFO in the order they were written, so replies match them
 * in order.
 */
struct frag {
    struct request *req;
    const struct frag_ops *ops; /* how the transport completes it (request_new) */
    enum proto_cmd cmd;         /* what replies must fit (proto_reply_fits) */
    struct bconn *conn;         /* the connection whose FIFO holds it, or NULL */
    TAILQ_ENTRY(frag) link;
    struct evbuffer *buf;       /* multi-backend get: this share's VALUE blocks */
    uint32_t cursor;            /* retrieval: next request key to match */
    uint64_t sent_ms;           /* when queued on the connection */
    bool retrieval;             /* replies are VALUE...END, not one line */
    bool joined;                /* the next fragment on its connection shares
                                   its get line, so its END (bconn_push_get) */
    bool failed;
    /* A client's meta command (client.c: client_meta): the reply kinds
     * (META_RSP_BIT) that fit it; 0: a text command. */
    uint32_t meta_fits;
    bool meta_fence;            /* q: an "mn" follows it; its MN ends it */
    bool meta_answered;         /* fenced: its one reply came before MN */
    uint8_t meta_kind;          /* that reply's kind (enum meta_rsp_kind) */
};
TAILQ_HEAD(frag_queue, frag);

/*
 * What a request asks of its owner (client.c registers these): the owner's
 * queue order and memory budget are the owner's, never edited here.
 */
struct request_owner_ops {
    /* Every fragment is in (r->done): replies may move out. */
    void (*done)(struct request *r);
    /* Where r's reply goes if it can go out now (r heads the owner's
     * queue), else NULL and it is kept in r->reply. */
    struct evbuffer *(*out)(struct request *r);
    /* r's reply buffers grew by held bytes, or its commands in flight by
     * sent bytes (negative: shrank). */
    void (*budget)(struct request *r, ptrdiff_t held, ptrdiff_t sent);
    /* r is about to be freed: the owner forgets it (after budget gave back
     * what it held). */
    void (*release)(struct request *r);
};

/*
 * One client command. It stays in its client's queue until its reply has
 * been appended to the client's output, so replies leave in request order.
 */
struct request {
    struct pool *pool;
    uint64_t *stats;            /* where it counts (client.h: client.stats) */
    struct client *client;      /* answered to; NULL: nobody (noreply, gone) */
    /* Whose memory budget it counts in: set from creation until it is freed
     * or its client is closed, noreply or not. Only passed to `oops`. */
    struct client *owner;
    const struct request_owner_ops *oops;
    size_t held;                /* bytes of reply and shares it holds now */
    size_t sent;                /* bytes of the command it sent */
    bool detached;              /* noreply: in owner->quiet, not in reqs */
    TAILQ_ENTRY(request) link;  /* the owner's queue */
    enum proto_cmd cmd;
    bool quiet;                 /* noreply: nothing goes to the client */
    bool done;
    bool counted;               /* in the pool's in-flight count (gen) */
    uint32_t gen;               /* the pool's routing generation when routed */
    uint32_t nfrags, pending;
    uint32_t hits;              /* VALUE blocks received */
    bool flushes_index;         /* flush_all now: the index empties too */
    /* A meta command: the reply kinds (META_RSP_BIT) that store the key
     * (index it), and the kinds an empty answer under q stands for. */
    uint32_t meta_stores, meta_quiet_drops;
    bool meta_read;             /* mg: its answer counts as a hit or a miss */
    uint32_t keylen;            /* one key (get, or store in an indexed pool) */
    uint32_t hash;              /* that key's ring hash (pool_key_hash) */
    struct frag *frags;
    struct frag frag1;          /* frags points here when nfrags == 1 */
    struct evbuffer *reply;     /* the reply, while it cannot go out yet */
    char *error_line;           /* fan-out: first failure, sent instead of OK */
    /* multi-backend get: the keys in request order, and which share has each */
    uint32_t nkeys;
    char *keys;                 /* copy of the key span (or of the one key) */
    uint32_t *key_off;
    uint32_t *key_frag;         /* FRAG_NONE: a miss without a share */
    uint32_t *key_hit;          /* bytes of its VALUE block in its share; 0 miss */
};
TAILQ_HEAD(request_queue, request);

/*
 * A new request of nfrags fragments for client c (its owner), counted in
 * the pool's routing generation if it has fragments. The owner appends it
 * to its own queue. NULL: out of memory.
 */
struct request *request_new(struct pool *p, struct client *c,
                            const struct request_owner_ops *oops,
                            enum proto_cmd cmd, uint32_t nfrags);
void request_reply(struct request *r, const char *data, size_t len);
void request_reply_line(struct request *r, const char *line);
/* A fragment is complete; the last one completes the request. */
void request_frag_done(struct frag *f);
void request_orphan(struct request *r);     /* its client is gone */
/* The command's bytes (line and value) now queued for a backend: they count
 * against the owner's budget until the request is freed. */
void request_hold(struct request *r, size_t sent);
/* Fail a fragment: a one-fragment request replies `line`; a multi-get or
 * a fan-out replies `line` (alone) once every fragment is in. */
void request_frag_fail(struct frag *f, const char *line);
/* Fail the n fragments marked failed that were never sent (may free r). */
void request_fail_unsent(struct request *r, uint32_t n, const char *line);
void request_free(struct request *r);
/* A multi-get whose answer cannot be trusted: it replies `line` instead. */
void request_fail_retrieval(struct request *r, const char *line);

/* Where a fragment's reply bytes go now; NULL: discard them. */
struct evbuffer *request_frag_sink(struct frag *f);

/*
 * A multi-get: keep a copy of its keys, each key's share (key_frag, taken
 * over) and room for its hits.
 */
void request_set_keys(struct request *r, const struct proto_req *req, uint32_t *key_frag);

/*
 * A value found for key `key` (its index in a multi-get, else 0) of
 * fragment f, produced by the migration from a meta reply: written as the
 * text protocol's VALUE block where f's reply goes, and counted as a hit.
 */
void request_value(struct frag *f, uint32_t key, const char *kname, size_t klen,
                   uint32_t flags, bool with_cas, uint64_t cas,
                   const char *value, size_t vlen);

/* A multi-get's share while it is built (client.c writes it out). */
#define REQUEST_SHARE_MOVING 0x80000000u   /* target: a moving key's own share */
struct request_share {
    uint32_t target;            /* backend slot (pool_share_slot), or
                                   REQUEST_SHARE_MOVING | the moving key's index */
    uint32_t len;               /* its line so far, "\r\n" included */
    uint32_t prev;              /* the same backend's line before, or FRAG_NONE */
    uint32_t hash;              /* a moving key's share: its ring hash */
    enum { REQUEST_SHARE_UNSENT, REQUEST_SHARE_WRITING, REQUEST_SHARE_WRITTEN } state;
    struct bconn *bc;
};

/*
 * Split a multi-get's keys into shares, each key routed once (pool_route):
 * a backend's keys go in lines of at most PROTO_LINE_MAX bytes (head_len:
 * the line's head, proto_format_request), each line a share; a key whose
 * owner is changing gets a share of its own. sh and key_frag have room for
 * req->nkeys entries; key_frag[i] is key i's share. Returns the number of
 * shares; *nmoving: how many are moving keys'.
 */
uint32_t request_split(struct pool *p, const struct proto_req *req, size_t head_len,
                       struct request_share *sh, uint32_t *key_frag, uint32_t *nmoving);

/* What the transport calls for a request's fragments (backend.h frag_ops). */
extern const struct frag_ops request_frag_ops;

#endif
