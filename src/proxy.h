/* proxy.h — the serving process: pools, listeners, signals, reload. */
#ifndef RP_PROXY_H
#define RP_PROXY_H

#define RINGPROXY_VERSION "0.1.0"
/* The memcached version we speak for: clients read features from it. */
#define PROXY_MEMCACHED_VERSION "1.6.18"

struct proxy_options {
    const char *conf_path;
    const char *pid_path;
    const char *log_path;
    const char *admin_addr;
    int admin_port;         /* 0: no admin HTTP */
    const char *stats_addr;
    int stats_port;         /* nutcracker's stats JSON (nstats.h); 0: off */
    long stats_interval;    /* -i, ms: accepted, not used (0: not given) */
    long mbuf_size;         /* -m, bytes: accepted, not used (0: not given) */
    int log_level;
    int daemonize;
    const char *user;       /* -u: become this user once listening */
    int threads;            /* -T: event-loop threads; 0: one per core (at
                               most 8); -1: the file's `threads:` */
    int threads_active;     /* --threads-active: config.h's CONF_ACTIVE_*
                               or a count; PROXY_ACTIVE_UNSET: the file's */
};

#define PROXY_ACTIVE_UNSET (-2)

/* Run until SIGTERM/SIGINT; returns the process exit status. */
int proxy_main(const struct proxy_options *o);

#endif
