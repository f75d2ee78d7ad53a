/*
 * iobuf.h — a socket read into, and a write from, an evbuffer, with the
 * fewest allocations and the cheapest system calls for the common case of
 * small unpipelined requests and replies (docs/ARCHITECTURE.md, "What a
 * request costs").
 *
 * Both work on any stream socket (TCP, unix) the caller owns; neither takes
 * ownership of the buffer or the descriptor. SIGPIPE is ignored by the
 * process (proxy.c), and the write asks for MSG_NOSIGNAL as well.
 */
#ifndef RP_IOBUF_H
#define RP_IOBUF_H

#include <stddef.h>
#include <sys/types.h>

struct evbuffer;

/* The most one iobuf_read takes from the socket. */
#define IOBUF_READ_MAX 16384

/*
 * Read at most IOBUF_READ_MAX bytes from fd and append them to b. Returns
 * the bytes read, 0 at end of stream, -1 with errno set on an error
 * (EAGAIN included) or when no memory is left for them (ENOMEM: bytes may
 * have been taken from the socket and lost, so the caller closes it). An empty b is read through a stack buffer with recv(2):
 * no 16 KB chain is allocated for a 30-byte command and freed when it is
 * consumed; otherwise straight into b's free space.
 */
ssize_t iobuf_read(struct evbuffer *b, int fd);

/*
 * Write as much of b as the socket takes and drain what went. Returns the
 * bytes written or -1 with errno set (EAGAIN included), as
 * evbuffer_write(3). One contiguous chain (a reply, a batch of commands) is
 * one send(2), which skips the file layer writev(2) goes through.
 */
int iobuf_write(struct evbuffer *b, int fd);

#endif
