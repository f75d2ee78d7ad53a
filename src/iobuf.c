/*
 * iobuf.c — socket reads into and writes from evbuffers (iobuf.h says why
 * they are not evbuffer_read/evbuffer_write).
 */
#include "iobuf.h"

#include <errno.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <event2/buffer.h>

/* Into b's own free space, as many chains as two iovecs reach. */
static ssize_t iobuf_read_into(struct evbuffer *b, int fd)
{
    struct evbuffer_iovec v[2];
    int nv = evbuffer_reserve_space(b, IOBUF_READ_MAX, v, 2);

    if (nv < 1) {
        errno = ENOMEM;
        return -1;
    }
    ssize_t n = readv(fd, v, nv);
    ssize_t left = n > 0 ? n : 0;
    for (int i = 0; i < nv; i++) {
        size_t take = (size_t)left < v[i].iov_len ? (size_t)left : v[i].iov_len;
        v[i].iov_len = take;
        left -= (ssize_t)take;
    }
    evbuffer_commit_space(b, v, n > 0 ? nv : 0);
    return n;
}

ssize_t iobuf_read(struct evbuffer *b, int fd)
{
    if (evbuffer_get_length(b) > 0) {
        return iobuf_read_into(b, fd);  /* a value or a batch still arriving */
    }
    char buf[IOBUF_READ_MAX];
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n > 0 && evbuffer_add(b, buf, (size_t)n) != 0) {
        errno = ENOMEM;
        return -1;
    }
    return n;
}

int iobuf_write(struct evbuffer *b, int fd)
{
    struct evbuffer_iovec v;
    size_t len = evbuffer_get_length(b);

    /* With a length, evbuffer_peek counts every chain it needs, not only
     * the ones it fills in. */
    if (len == 0 || evbuffer_peek(b, (ev_ssize_t)len, NULL, &v, 1) != 1 || v.iov_len < len) {
        return evbuffer_write(b, fd);   /* several chains (or none): writev */
    }
    ssize_t n = send(fd, v.iov_base, len, MSG_NOSIGNAL);
    if (n > 0) {
        evbuffer_drain(b, (size_t)n);
    }
    return (int)n;
}
