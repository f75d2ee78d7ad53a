/*
 * test_iobuf.c — socket reads into and writes from evbuffers (src/iobuf.h):
 * an empty buffer and a buffer holding a partial command both end up with
 * the bytes in order, a read takes at most IOBUF_READ_MAX, EAGAIN and end
 * of stream are told apart, and a write of one chain or of several sends
 * every byte in order and drains only what the socket took.
 */
#include <check.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "iobuf.h"
#include "check_run.h"

/* A connected pair of non-blocking stream sockets: [0] ours, [1] the peer. */
static void pair(int sv[2])
{
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
}

/* The buffer's bytes as a NUL-terminated string (freed by the caller). */
static char *contents(struct evbuffer *b)
{
    size_t n = evbuffer_get_length(b);
    char *s = malloc(n + 1);

    ck_assert_int_eq(evbuffer_copyout(b, s, n), (ev_ssize_t)n);
    s[n] = '\0';
    return s;
}

START_TEST(reads_append_to_empty_and_partial_buffers)
{
    int sv[2];
    struct evbuffer *b = evbuffer_new();

    pair(sv);
    errno = 0;
    ck_assert_int_eq(iobuf_read(b, sv[0]), -1);
    ck_assert_int_eq(errno, EAGAIN);
    ck_assert_int_eq(write(sv[1], "get a\r\nse", 9), 9);
    ck_assert_int_eq(iobuf_read(b, sv[0]), 9);
    ck_assert_int_eq(write(sv[1], "t b 0 0 1\r\n", 11), 11);
    ck_assert_int_eq(iobuf_read(b, sv[0]), 11);     /* into the partial buffer */
    char *s = contents(b);
    ck_assert_str_eq(s, "get a\r\nset b 0 0 1\r\n");
    free(s);
    close(sv[1]);
    ck_assert_int_eq(iobuf_read(b, sv[0]), 0);
    ck_assert_int_eq(evbuffer_get_length(b), 20);
    close(sv[0]);
    evbuffer_free(b);
}
END_TEST

START_TEST(a_read_takes_at_most_the_chunk)
{
    enum { N = IOBUF_READ_MAX + 3616 };
    int sv[2];
    struct evbuffer *b = evbuffer_new();
    char *data = malloc(N), *s;

    for (size_t i = 0; i < N; i++) {
        data[i] = (char)('a' + i % 26);
    }
    pair(sv);
    ck_assert_int_eq(write(sv[1], data, N), N);
    ck_assert_int_eq(iobuf_read(b, sv[0]), IOBUF_READ_MAX);
    ck_assert_int_eq(iobuf_read(b, sv[0]), N - IOBUF_READ_MAX);
    ck_assert_int_eq(evbuffer_get_length(b), N);
    s = contents(b);
    ck_assert(memcmp(s, data, N) == 0);
    free(s);
    free(data);
    close(sv[0]);
    close(sv[1]);
    evbuffer_free(b);
}
END_TEST

START_TEST(writes_send_every_chain_in_order)
{
    static const char second[] = "0123456789\r\nEND\r\n";
    int sv[2];
    struct evbuffer *b = evbuffer_new();
    char got[64];

    pair(sv);
    evbuffer_add(b, "VALUE k 0 10\r\n", 14);
    ck_assert_int_eq(iobuf_write(b, sv[0]), 14);            /* one chain */
    ck_assert_int_eq(evbuffer_get_length(b), 0);
    evbuffer_add(b, "VALUE k 0 10\r\n", 14);
    evbuffer_add_reference(b, second, sizeof(second) - 1, NULL, NULL);  /* a second chain */
    ck_assert_int_eq(iobuf_write(b, sv[0]), 14 + 17);
    ck_assert_int_eq(evbuffer_get_length(b), 0);
    ck_assert_int_eq(read(sv[1], got, sizeof(got)), 14 + 14 + 17);
    ck_assert(memcmp(got, "VALUE k 0 10\r\nVALUE k 0 10\r\n0123456789\r\nEND\r\n", 45) == 0);
    close(sv[0]);
    close(sv[1]);
    evbuffer_free(b);
}
END_TEST

START_TEST(a_full_socket_keeps_the_rest)
{
    enum { N = 4 << 20 };
    int sv[2];
    struct evbuffer *b = evbuffer_new();
    char *data = calloc(1, N);

    pair(sv);
    evbuffer_add(b, data, N);
    int n = iobuf_write(b, sv[0]);
    ck_assert_int_gt(n, 0);
    ck_assert_int_lt(n, N);
    ck_assert_int_eq(evbuffer_get_length(b), (size_t)(N - n));
    errno = 0;
    ck_assert_int_eq(iobuf_write(b, sv[0]), -1);
    ck_assert_int_eq(errno, EAGAIN);
    ck_assert_int_eq(evbuffer_get_length(b), (size_t)(N - n));
    free(data);
    close(sv[0]);
    close(sv[1]);
    evbuffer_free(b);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("iobuf");
    TCase *tc = tcase_create("io");

    tcase_add_test(tc, reads_append_to_empty_and_partial_buffers);
    tcase_add_test(tc, a_read_takes_at_most_the_chunk);
    tcase_add_test(tc, writes_send_every_chain_in_order);
    tcase_add_test(tc, a_full_socket_keeps_the_rest);
    suite_add_tcase(s, tc);
    return check_run(s);
}
