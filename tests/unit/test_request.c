/* test_request.c — the request layer and the transport's reply matching.
 *
 * request_assemble is driven through the fragment callbacks the transport
 * calls (request_frag_ops): a multi-get split over shares completes in
 * every order, with hits, misses, a failed share and CAS values. Then
 * bconn_process is fed byte strings the way a backend could send them
 * (split at every byte, pipelined, hostile) on one connection of a pool
 * with one backend; no socket is needed: the bytes go straight into the
 * connection's input buffer. The client is a stand-in that the request
 * layer never looks into (request_owner_ops).
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <event2/buffer.h>
#include <event2/event.h>

#include "backend.h"
#include "cmd.h"
#include "defer.h"
#include "pool.h"
#include "proto.h"
#include "request.h"
#include "check_run.h"

#define MAX_DONE 16

static struct {
    struct event_base *base;
    struct worker w;
    struct conf_pool conf;
    struct pool p;
    struct backend *be;        /* on the heap: backend_close frees it */
    struct bconn *bc;
    struct evbuffer *out;       /* what the client would be sent */
    int done;                   /* requests completed */
    enum proto_cmd done_cmd[MAX_DONE];
    ptrdiff_t held, sent;       /* the owner's budget */
} F;

/* The stand-in client: an address the request layer only passes back. */
#define CLIENT ((struct client *)&F)

static void owner_done(struct request *r)
{
    if (F.done < MAX_DONE) {
        F.done_cmd[F.done] = r->cmd;
    }
    F.done++;
    r->client = NULL;           /* as client_advance: replied, then freed */
    request_free(r);
}

static struct evbuffer *owner_out(struct request *r)
{
    (void)r;
    return F.out;               /* every request heads the queue here */
}

static void owner_budget(struct request *r, ptrdiff_t held, ptrdiff_t sent)
{
    (void)r;
    F.held += held;
    F.sent += sent;
}

static void owner_release(struct request *r)
{
    (void)r;
}

static const struct request_owner_ops owner_ops = {
    owner_done, owner_out, owner_budget, owner_release,
};

static void setup(void)
{
    char err[256];

    memset(&F, 0, sizeof(F));
    F.base = event_base_new();
    F.w.base = F.base;
    TAILQ_INIT(&F.w.dirty_conns);
    TAILQ_INIT(&F.w.dirty_clients);
    F.conf.name = "t";
    F.conf.item_size_max = 1024;
    F.conf.server_connections = 1;
    F.conf.server_retry_timeout = 30000;
    F.conf.server_failure_limit = 2;
    F.conf.server_max_queue = 1 << 20;
    F.p.w = &F.w;
    F.p.conf = &F.conf;
    F.p.name = "t";
    TAILQ_INIT(&F.p.clients);
    F.w.defer = defer_new(F.base);
    ck_assert_ptr_nonnull(F.w.defer);
    F.be = calloc(1, sizeof(*F.be));
    ck_assert_ptr_nonnull(F.be);
    ck_assert_int_eq(backend_init(F.be, &F.p, 0, "s1", "127.0.0.1:11211", err,
                                  sizeof(err)), 0);
    F.bc = &F.be->conns[0];
    F.out = evbuffer_new();
}

static void teardown(void)
{
    backend_close(F.be);
    ck_assert(defer_run(F.w.defer));    /* frees the backend */
    defer_free(F.w.defer);
    evbuffer_free(F.out);
    event_base_free(F.base);
    /* every request freed gave its budget back */
    ck_assert_int_eq(F.held, 0);
    ck_assert_int_eq(F.sent, 0);
    ck_assert_uint_eq(F.p.inflight_now, 0);
}

/* A request for a command line, split into nfrags shares by key_frag (one
 * entry per key; NULL: one fragment, no share table). */
static struct request *mk(const char *line, uint32_t nfrags, const uint32_t *key_frag)
{
    struct proto_req req;

    ck_assert_int_eq(proto_parse_request(line, strlen(line), &req), PROTO_OK);
    struct request *r = request_new(&F.p, CLIENT, &owner_ops, req.cmd, nfrags);
    ck_assert_ptr_nonnull(r);
    bool retrieval = cmd_info(req.cmd)->kind == CMD_KIND_RETRIEVAL;
    for (uint32_t j = 0; j < nfrags; j++) {
        r->frags[j].retrieval = retrieval;
        r->frags[j].cursor = UINT32_MAX;
    }
    if (key_frag != NULL) {
        uint32_t *kf = malloc(req.nkeys * sizeof(*kf));
        memcpy(kf, key_frag, req.nkeys * sizeof(*kf));
        request_set_keys(r, &req, kf);
        for (uint32_t i = req.nkeys; i-- > 0;) {
            r->frags[kf[i]].cursor = i;     /* each share's first key */
        }
    } else {
        r->keys = strndup(req.key, req.keylen);
        r->keylen = req.keylen;
        r->nkeys = retrieval ? 1 : 0;
        r->frags[0].cursor = 0;
    }
    request_hold(r, strlen(line));
    return r;
}

static char *out_str(void)
{
    size_t n = evbuffer_get_length(F.out);
    char *s = malloc(n + 1);

    evbuffer_remove(F.out, s, n);
    s[n] = '\0';
    return s;
}

#define ck_out(want)                                                          \
    do {                                                                      \
        char *got_ = out_str();                                               \
        ck_assert_str_eq(got_, want);                                         \
        free(got_);                                                           \
    } while (0)

/* --- request_assemble, through the transport's callbacks ------------------ */

/* The backend of share f returns a VALUE block for key k. */
static void give_value(struct frag *f, const char *k, const char *v, const char *cas)
{
    struct evbuffer *in = evbuffer_new();
    char line[128];
    struct proto_rsp rsp;
    int n = cas ? snprintf(line, sizeof(line), "VALUE %s 0 %zu %s", k, strlen(v), cas)
                : snprintf(line, sizeof(line), "VALUE %s 0 %zu", k, strlen(v));

    ck_assert_int_eq(proto_parse_reply(line, (size_t)n, &rsp), PROTO_OK);
    int i = f->ops->match(f, &rsp);
    ck_assert_int_ge(i, 0);
    evbuffer_add_printf(in, "%s\r\n%s\r\n", line, v);
    size_t len = evbuffer_get_length(in);
    f->ops->value(f, (uint32_t)i, in, len);
    ck_assert_uint_eq(evbuffer_get_length(in), 0);
    evbuffer_free(in);
}

/* The share's last line (END, or an error). */
static void give_end(struct frag *f, const char *line)
{
    struct evbuffer *in = evbuffer_new();
    struct proto_rsp rsp;

    ck_assert_int_eq(proto_parse_reply(line, strlen(line), &rsp), PROTO_OK);
    evbuffer_add_printf(in, "%s\r\n", line);
    f->ops->end(f, &rsp, in, strlen(line) + 2, line, strlen(line));
    ck_assert_uint_eq(evbuffer_get_length(in), 0);
    evbuffer_free(in);
}

/* get a b c d e f over 3 shares (a d | b e | c f): a, c, e, f hit. */
static const uint32_t six_keys[] = { 0, 1, 2, 0, 1, 2 };

static void complete_share(struct request *r, uint32_t j)
{
    struct frag *f = &r->frags[j];

    if (j == 0) {
        give_value(f, "a", "A", NULL);              /* d misses */
    } else if (j == 1) {
        give_value(f, "e", "E", NULL);              /* b misses */
    } else {
        give_value(f, "c", "C", NULL);
        give_value(f, "f", "F", NULL);
    }
    give_end(f, "END");
}

START_TEST(a_multiget_assembles_in_key_order_whatever_order_shares_complete)
{
    static const uint32_t orders[6][3] = {
        { 0, 1, 2 }, { 0, 2, 1 }, { 1, 0, 2 }, { 1, 2, 0 }, { 2, 0, 1 }, { 2, 1, 0 },
    };

    for (int o = 0; o < 6; o++) {
        struct request *r = mk("get a b c d e f", 3, six_keys);
        for (int s = 0; s < 3; s++) {
            ck_assert_int_eq(F.done, o);
            ck_assert_uint_eq(evbuffer_get_length(F.out), 0);  /* nothing early */
            complete_share(r, orders[o][s]);
        }
        ck_assert_int_eq(F.done, o + 1);
        ck_out("VALUE a 0 1\r\nA\r\nVALUE c 0 1\r\nC\r\nVALUE e 0 1\r\nE\r\n"
               "VALUE f 0 1\r\nF\r\nEND\r\n");
    }
    ck_assert_uint_eq(F.p.stats[STAT_get_hits], 6 * 4);
    ck_assert_uint_eq(F.p.stats[STAT_get_misses], 6 * 2);
}
END_TEST

START_TEST(a_failed_share_answers_the_whole_get_with_its_error)
{
    struct request *r = mk("get a b c d e f", 3, six_keys);

    complete_share(r, 0);
    request_frag_fail(&r->frags[1], BACKEND_ERR_DOWN);
    ck_assert_int_eq(F.done, 0);
    complete_share(r, 2);
    ck_assert_int_eq(F.done, 1);
    ck_out(BACKEND_ERR_DOWN "\r\n");
}
END_TEST

START_TEST(a_share_answering_an_error_leaves_its_keys_as_misses)
{
    struct request *r = mk("get a b c d e f", 3, six_keys);

    complete_share(r, 2);
    give_end(&r->frags[1], "SERVER_ERROR out of memory");
    complete_share(r, 0);
    ck_assert_int_eq(F.done, 1);
    ck_out("VALUE a 0 1\r\nA\r\nVALUE c 0 1\r\nC\r\nVALUE f 0 1\r\nF\r\nEND\r\n");
}
END_TEST

START_TEST(gets_shares_keep_their_cas_values)
{
    static const uint32_t kf[] = { 0, 1, 0 };
    struct request *r = mk("gets a b c", 2, kf);

    give_value(&r->frags[1], "b", "BB", "18446744073709551615");
    give_end(&r->frags[1], "END");
    give_value(&r->frags[0], "a", "A", "7");
    give_value(&r->frags[0], "c", "C", "0");
    give_end(&r->frags[0], "END");
    ck_out("VALUE a 0 1 7\r\nA\r\nVALUE b 0 2 18446744073709551615\r\nBB\r\n"
           "VALUE c 0 1 0\r\nC\r\nEND\r\n");
}
END_TEST

START_TEST(a_value_for_a_key_of_another_share_or_already_passed_does_not_match)
{
    struct request *r = mk("get a b c d e f", 3, six_keys);
    struct proto_rsp rsp;

    ck_assert_int_eq(proto_parse_reply("VALUE b 0 1", 11, &rsp), PROTO_OK);
    ck_assert_int_eq(r->frags[0].ops->match(&r->frags[0], &rsp), -1);   /* share 1's */
    give_value(&r->frags[0], "d", "D", NULL);
    ck_assert_int_eq(proto_parse_reply("VALUE a 0 1", 11, &rsp), PROTO_OK);
    ck_assert_int_eq(r->frags[0].ops->match(&r->frags[0], &rsp), -1);   /* passed */
    ck_assert_int_eq(proto_parse_reply("VALUE d 0 1", 11, &rsp), PROTO_OK);
    ck_assert_int_eq(r->frags[0].ops->match(&r->frags[0], &rsp), -1);   /* answered */
    give_end(&r->frags[0], "END");
    complete_share(r, 1);
    complete_share(r, 2);
    ck_out("VALUE c 0 1\r\nC\r\nVALUE d 0 1\r\nD\r\nVALUE e 0 1\r\nE\r\n"
           "VALUE f 0 1\r\nF\r\nEND\r\n");
}
END_TEST

/* --- bconn_process: bytes from a backend ------------------------------------- */

static struct request *push(const char *line)
{
    struct request *r = mk(line, 1, NULL);

    bconn_push(F.bc, &r->frags[0]);
    return r;
}

static int feed(const char *bytes, size_t n)
{
    evbuffer_add(F.bc->in, bytes, n);
    return bconn_process(F.bc);
}

static int feeds(const char *s)
{
    return feed(s, strlen(s));
}

START_TEST(a_reply_split_at_every_byte_completes_once_whole)
{
    static const char reply[] = "VALUE k 5 3\r\nabc\r\nEND\r\n";
    size_t len = sizeof(reply) - 1;

    for (size_t cut = 0; cut <= len; cut++) {
        push("get k");
        ck_assert_int_eq(feed(reply, cut), 0);
        ck_assert_int_eq(F.done, (int)cut + (cut == len));  /* at its END */
        ck_assert_int_eq(feed(reply + cut, len - cut), 0);
        ck_assert_int_eq(F.done, (int)cut + 1);
        ck_out(reply);
        ck_assert_uint_eq(evbuffer_get_length(F.bc->in), 0);
    }
    ck_assert_uint_eq(F.bc->nfrags, 0);
    ck_assert_uint_eq(F.be->stats[STAT_BE_protocol_errors], 0);
}
END_TEST

START_TEST(a_reply_fed_byte_by_byte_completes_at_its_last_byte)
{
    static const char reply[] = "VALUE k 0 2 9\r\nhi\r\nEND\r\n";
    size_t len = sizeof(reply) - 1;

    push("gets k");
    for (size_t i = 0; i < len; i++) {
        ck_assert_int_eq(F.done, 0);
        ck_assert_int_eq(feed(reply + i, 1), 0);
    }
    ck_assert_int_eq(F.done, 1);
    ck_out(reply);
}
END_TEST

START_TEST(pipelined_replies_complete_their_fragments_in_order)
{
    push("get a");
    push("set b 0 0 1");
    push("delete c");
    push("incr d 1");
    push("touch e 10");
    ck_assert_uint_eq(F.bc->nfrags, 5);
    ck_assert_int_eq(feeds("END\r\nSTORED\r\nNOT_FOUND\r\n5\r\nTOUCHED\r\n"), 0);
    ck_assert_int_eq(F.done, 5);
    ck_assert_int_eq(F.done_cmd[0], PROTO_CMD_GET);
    ck_assert_int_eq(F.done_cmd[1], PROTO_CMD_SET);
    ck_assert_int_eq(F.done_cmd[2], PROTO_CMD_DELETE);
    ck_assert_int_eq(F.done_cmd[3], PROTO_CMD_INCR);
    ck_assert_int_eq(F.done_cmd[4], PROTO_CMD_TOUCH);
    ck_out("END\r\nSTORED\r\nNOT_FOUND\r\n5\r\nTOUCHED\r\n");
    ck_assert_uint_eq(F.bc->nfrags, 0);
    ck_assert_uint_eq(F.p.stats[STAT_get_misses], 1);
}
END_TEST

/* A protocol error: the connection is declared broken, every fragment on
 * it fails with "connection lost", nothing of the bad reply reaches a client. */
static void expect_broken(int rc, int nreqs)
{
    ck_assert_int_eq(rc, -1);
    ck_assert_int_eq(F.done, nreqs);
    ck_assert_uint_eq(F.be->stats[STAT_BE_protocol_errors], 1);
    ck_assert_uint_eq(F.bc->nfrags, 0);
    ck_assert_uint_eq(evbuffer_get_length(F.bc->in), 0);
    ck_assert_int_eq(F.be->failures, 1);
}

START_TEST(a_value_for_a_key_not_asked_breaks_the_connection)
{
    push("get k");
    push("get l");
    expect_broken(feeds("VALUE x 0 1\r\nA\r\nEND\r\n"), 2);
    ck_out(BACKEND_ERR_LOST "\r\n" BACKEND_ERR_LOST "\r\n");
}
END_TEST

START_TEST(a_second_value_for_the_same_key_breaks_the_connection)
{
    push("get k");
    expect_broken(feeds("VALUE k 0 1\r\nA\r\nVALUE k 0 1\r\nB\r\nEND\r\n"), 1);
    /* the first block had gone out already: the error follows it */
    ck_out("VALUE k 0 1\r\nA\r\n" BACKEND_ERR_LOST "\r\n");
}
END_TEST

START_TEST(a_value_longer_than_item_size_max_breaks_the_connection_at_once)
{
    push("get k");
    /* only the line: its 2000 bytes are never waited for */
    expect_broken(feeds("VALUE k 0 2000\r\n"), 1);
    ck_out(BACKEND_ERR_LOST "\r\n");
}
END_TEST

START_TEST(value_data_without_its_crlf_breaks_the_connection)
{
    push("get k");
    expect_broken(feeds("VALUE k 0 1\r\nAB\r\nEND\r\n"), 1);
    ck_out(BACKEND_ERR_LOST "\r\n");
}
END_TEST

START_TEST(a_reply_of_the_wrong_kind_breaks_the_connection)
{
    push("set k 0 0 1");
    expect_broken(feeds("END\r\n"), 1);
    ck_out(BACKEND_ERR_LOST "\r\n");
}
END_TEST

START_TEST(a_value_to_a_delete_breaks_the_connection)
{
    push("delete k");
    expect_broken(feeds("VALUE k 0 1\r\n"), 1);
    ck_out(BACKEND_ERR_LOST "\r\n");
}
END_TEST

START_TEST(a_reply_without_a_request_breaks_the_connection)
{
    expect_broken(feeds("STORED\r\n"), 0);
}
END_TEST

START_TEST(an_endless_line_breaks_the_connection)
{
    char junk[5000];

    memset(junk, 'x', sizeof(junk));
    push("get k");
    expect_broken(feed(junk, sizeof(junk)), 1);
}
END_TEST

START_TEST(replies_before_a_bad_one_are_delivered)
{
    push("get a");
    push("get b");
    expect_broken(feeds("VALUE a 0 1\r\nA\r\nEND\r\nNOT_A_REPLY\r\n"), 2);
    ck_out("VALUE a 0 1\r\nA\r\nEND\r\n" BACKEND_ERR_LOST "\r\n");
}
END_TEST

/* --- meta replies (client.c: client_meta_forward sets the fragment up) ------ */

/* A client's meta command on the connection: fits from cmd_meta_table; a
 * quiet one is followed by the proxy's "mn", whose MN ends it. */
static struct request *push_meta(enum meta_cmd cmd, bool quiet)
{
    struct request *r = request_new(&F.p, CLIENT, &owner_ops, PROTO_CMD_NONE, 1);

    ck_assert_ptr_nonnull(r);
    r->frags[0].meta_fits = cmd_meta_info(cmd)->replies;
    r->frags[0].meta_fence = quiet;
    r->meta_quiet_drops = quiet ? meta_quiet_drops(cmd, false) : 0;
    bconn_push(F.bc, &r->frags[0]);
    return r;
}

START_TEST(meta_replies_pass_through_in_order_and_quiet_ones_end_at_mn)
{
    static const char replies[] =
        "VA 3 f5 k Oabc\r\nxyz\r\n" "MN\r\n" "NS k\r\nMN\r\n" "EN\r\n"
        "CLIENT_ERROR bad data chunk\r\n" "HD c9\r\n";
    size_t len = sizeof(replies) - 1;

    for (size_t cut = 0; cut <= len; cut++) {
        F.done = 0;
        push_meta(META_CMD_MG, false);
        push_meta(META_CMD_MD, true);   /* suppressed HD: only the MN */
        push_meta(META_CMD_MS, true);   /* NS is sent under q, then MN */
        push_meta(META_CMD_MG, false);
        push_meta(META_CMD_MA, false);
        push_meta(META_CMD_MS, false);
        ck_assert_int_eq(feed(replies, cut), 0);
        ck_assert_int_eq(feed(replies + cut, len - cut), 0);
        ck_assert_int_eq(F.done, 6);
        ck_out("VA 3 f5 k Oabc\r\nxyz\r\nNS k\r\nEN\r\n"
               "CLIENT_ERROR bad data chunk\r\nHD c9\r\n");
    }
    ck_assert_uint_eq(F.be->stats[STAT_BE_protocol_errors], 0);
}
END_TEST

START_TEST(a_meta_reply_that_does_not_fit_breaks_the_connection)
{
    push_meta(META_CMD_MD, false);
    expect_broken(feeds("VA 1\r\nx\r\n"), 1);
    ck_out(BACKEND_ERR_LOST "\r\n");
}
END_TEST

START_TEST(an_mn_the_proxy_did_not_send_breaks_the_connection)
{
    push_meta(META_CMD_MG, false);
    expect_broken(feeds("MN\r\n"), 1);
    ck_out(BACKEND_ERR_LOST "\r\n");
}
END_TEST

START_TEST(two_replies_before_the_fence_break_the_connection)
{
    push_meta(META_CMD_MS, true);
    /* the first reply went out: the failure adds nothing after it */
    expect_broken(feeds("NS\r\nNS\r\nMN\r\n"), 1);
    ck_out("NS\r\n");
}
END_TEST

START_TEST(a_meta_value_longer_than_item_size_max_breaks_the_connection_at_once)
{
    push_meta(META_CMD_MG, false);
    expect_broken(feeds("VA 2000 f0\r\n"), 1);
    ck_out(BACKEND_ERR_LOST "\r\n");
}
END_TEST

START_TEST(every_meta_command_has_a_row)
{
    for (int c = 1; c < META_CMD_COUNT; c++) {
        const struct cmd_meta_info *mi = cmd_meta_info((enum meta_cmd)c);
        ck_assert_msg(mi->kind != CMD_META_KIND_NONE, "%s has no row", meta_cmd_name[c]);
        ck_assert(mi->kind == CMD_META_KIND_LOCAL || mi->replies != 0);
        ck_assert((mi->stores & ~mi->replies) == 0);
    }
}
END_TEST

/* --- the command table ------------------------------------------------------- */

START_TEST(every_command_has_a_complete_row)
{
    for (int c = 1; c < PROTO_CMD_COUNT; c++) {
        const struct cmd_info *ci = cmd_info((enum proto_cmd)c);
        ck_assert_msg(ci->kind != CMD_KIND_NONE, "%s has no row", proto_cmd_name[c]);
        if (ci->kind != CMD_KIND_LOCAL) {
            ck_assert_int_ge(ci->stat, 0);
            ck_assert_int_lt(ci->stat, STAT_POOL_COUNT);
        }
        if (ci->kind == CMD_KIND_RETRIEVAL || ci->kind == CMD_KIND_STORAGE ||
            ci->kind == CMD_KIND_KEYED) {
            ck_assert_msg(ci->move != CMD_MOVE_NONE, "%s: no rule on a moving key",
                          proto_cmd_name[c]);
        }
        if (ci->move == CMD_MOVE_RMW) {
            ck_assert_ptr_nonnull(ci->meta.verb);
            ck_assert_int_ne(ci->answer, CMD_ANSWER_NONE);
        }
        ck_assert(ci->kind != CMD_KIND_STORAGE || ci->index == CMD_INDEX_ADD);
    }
}
END_TEST

static Suite *request_suite(void)
{
    Suite *s = suite_create("request");
    TCase *tc = tcase_create("assemble");

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, a_multiget_assembles_in_key_order_whatever_order_shares_complete);
    tcase_add_test(tc, a_failed_share_answers_the_whole_get_with_its_error);
    tcase_add_test(tc, a_share_answering_an_error_leaves_its_keys_as_misses);
    tcase_add_test(tc, gets_shares_keep_their_cas_values);
    tcase_add_test(tc, a_value_for_a_key_of_another_share_or_already_passed_does_not_match);
    suite_add_tcase(s, tc);

    tc = tcase_create("bconn_process");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, a_reply_split_at_every_byte_completes_once_whole);
    tcase_add_test(tc, a_reply_fed_byte_by_byte_completes_at_its_last_byte);
    tcase_add_test(tc, pipelined_replies_complete_their_fragments_in_order);
    tcase_add_test(tc, a_value_for_a_key_not_asked_breaks_the_connection);
    tcase_add_test(tc, a_second_value_for_the_same_key_breaks_the_connection);
    tcase_add_test(tc, a_value_longer_than_item_size_max_breaks_the_connection_at_once);
    tcase_add_test(tc, value_data_without_its_crlf_breaks_the_connection);
    tcase_add_test(tc, a_reply_of_the_wrong_kind_breaks_the_connection);
    tcase_add_test(tc, a_value_to_a_delete_breaks_the_connection);
    tcase_add_test(tc, a_reply_without_a_request_breaks_the_connection);
    tcase_add_test(tc, an_endless_line_breaks_the_connection);
    tcase_add_test(tc, replies_before_a_bad_one_are_delivered);
    tcase_add_test(tc, meta_replies_pass_through_in_order_and_quiet_ones_end_at_mn);
    tcase_add_test(tc, a_meta_reply_that_does_not_fit_breaks_the_connection);
    tcase_add_test(tc, an_mn_the_proxy_did_not_send_breaks_the_connection);
    tcase_add_test(tc, two_replies_before_the_fence_break_the_connection);
    tcase_add_test(tc, a_meta_value_longer_than_item_size_max_breaks_the_connection_at_once);
    suite_add_tcase(s, tc);

    tc = tcase_create("cmd table");
    tcase_add_test(tc, every_command_has_a_complete_row);
    tcase_add_test(tc, every_meta_command_has_a_row);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return check_run(request_suite());
}
