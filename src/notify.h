/* notify.h — the service manager's readiness protocol (systemd's sd_notify),
 * spoken without libsystemd: one datagram per state change to the socket
 * named by $NOTIFY_SOCKET (docs/ARCHITECTURE.md, "Running as a service").
 * The module owns one socket, opened by notify_init and closed by
 * notify_close; every call is a no-op when the process was not started with
 * $NOTIFY_SOCKET. */
#ifndef RP_NOTIFY_H
#define RP_NOTIFY_H

/* Read $NOTIFY_SOCKET and connect to it (before privileges are dropped: the
 * permission is checked here). Returns 0 (also when it is not set), or -1
 * when it is set but unusable, which is logged; serving goes on regardless. */
int notify_init(void);

/* The proxy serves: started, or a reload is over (applied or refused). */
void notify_ready(void);
/* SIGHUP: a reload begins (with the monotonic time systemd asks for). */
void notify_reloading(void);
/* SIGTERM/SIGINT: stopping after in-flight replies. */
void notify_stopping(void);

void notify_close(void);

#endif
