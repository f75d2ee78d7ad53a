/*
 * notify.c — tell a service manager when the proxy serves, reloads and stops
 * (systemd's Type=notify; docs/ARCHITECTURE.md, "Running as a service").
 *
 * The protocol is a datagram of "KEY=VALUE" lines sent to the AF_UNIX socket
 * $NOTIFY_SOCKET names: a path, or an abstract name written with a leading
 * '@'. It is cheap enough to speak directly, so there is no libsystemd
 * dependency. Sends never block (the manager reads its socket promptly; a
 * full one loses a state change, which is logged, rather than stall the
 * event loop).
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "notify.h"

static int notify_fd = -1;
static int notify_failed;      /* a send failed: logged once */

int notify_init(void)
{
    const char *path = getenv("NOTIFY_SOCKET");
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    size_t len;

    if (path == NULL || *path == '\0' || notify_fd >= 0) {
        return 0;
    }
    len = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || len >= sizeof(sa.sun_path)) {
        log_error("notify", "NOTIFY_SOCKET '%.60s' is not a unix socket path "
                  "or an abstract name (@...) that fits %zu bytes; not "
                  "notifying the service manager", path, sizeof(sa.sun_path) - 1);
        return -1;
    }
    memcpy(sa.sun_path, path, len);
    if (path[0] == '@') {
        sa.sun_path[0] = '\0';
    }
    notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (notify_fd < 0 ||
        connect(notify_fd, (struct sockaddr *)&sa,
                (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len)) != 0) {
        log_error("notify", "cannot connect to NOTIFY_SOCKET %s: %s; not "
                  "notifying the service manager", path, strerror(errno));
        notify_close();
        return -1;
    }
    return 0;
}

static void notify_send(const char *state)
{
    size_t len = strlen(state);

    if (notify_fd < 0) {
        return;
    }
    ssize_t n = send(notify_fd, state, len, MSG_NOSIGNAL);
    if (n != (ssize_t)len && !notify_failed) {
        notify_failed = 1;
        log_warn("notify", "could not tell the service manager '%s': %s",
                 state, n < 0 ? strerror(errno) : "short write");
    }
}

void notify_ready(void)
{
    notify_send("READY=1\nSTATUS=serving");
}

void notify_reloading(void)
{
    struct timespec ts;
    char msg[80];

    clock_gettime(CLOCK_MONOTONIC, &ts);
    snprintf(msg, sizeof(msg), "RELOADING=1\nSTATUS=reloading\nMONOTONIC_USEC=%llu",
             (unsigned long long)ts.tv_sec * 1000000ULL +
             (unsigned long long)ts.tv_nsec / 1000ULL);
    notify_send(msg);
}

void notify_stopping(void)
{
    notify_send("STOPPING=1\nSTATUS=stopping");
}

void notify_close(void)
{
    if (notify_fd >= 0) {
        close(notify_fd);
        notify_fd = -1;
    }
}
