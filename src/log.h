/* log.h — greppable log lines: time, level, module, message. */
#ifndef RP_LOG_H
#define RP_LOG_H

#include <stdbool.h>
#include <stdint.h>

#define LOG_LEVEL_CODEC(X) \
    X(ERROR, "error")      \
    X(WARN, "warn")        \
    X(NOTICE, "notice")    \
    X(INFO, "info")        \
    X(DEBUG, "debug")

#define LOG_LEVEL_ENUM(e, name) LOG_##e,
enum log_level { LOG_LEVEL_CODEC(LOG_LEVEL_ENUM) LOG_LEVEL_COUNT };
#undef LOG_LEVEL_ENUM

/* Open the log (path NULL: stderr). Returns 0, or -1 with errno set. */
int log_open(const char *path, int level);
/* Reopen the same path (after logrotate moved it); SIGUSR1 calls this. */
int log_reopen(void);
void log_close(void);
int log_enabled(int level);
/* While fd >= 0, every error line, without its time and level, is also
 * written to fd: a daemon's parent reports them (src/proxy.c). */
void log_mirror_errors(int fd);

void log_write(int level, const char *module, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_error(mod, ...)  log_write(LOG_ERROR, mod, __VA_ARGS__)
#define log_warn(mod, ...)   log_write(LOG_WARN, mod, __VA_ARGS__)
#define log_notice(mod, ...) log_write(LOG_NOTICE, mod, __VA_ARGS__)
#define log_info(mod, ...)   log_write(LOG_INFO, mod, __VA_ARGS__)
#define log_debug(mod, ...)                                              \
    do {                                                                 \
        if (log_enabled(LOG_DEBUG)) log_write(LOG_DEBUG, mod, __VA_ARGS__); \
    } while (0)

/*
 * Rate-limited lines, for events a peer can repeat at will (a bad byte per
 * connection, a timeout per client, accept failing at the fd limit): each
 * call site writes at most `per_sec` lines a second; the rest are counted
 * and "(suppressed K similar lines)" is written once the second is over
 * (at the site's next line or at log_tick(), whichever comes first).
 * A site is a static struct log_limit; log_limited() declares one per use.
 */
struct log_limit {
    const char *module;
    int level;
    uint32_t per_sec;
    uint32_t written;           /* in the current window */
    uint64_t window_ms;         /* start of the current window (monotonic) */
    uint64_t suppressed;        /* since the window started */
    struct log_limit *next;     /* in the list of sites with suppressed lines */
    bool listed;
};

void log_write_limited(struct log_limit *lim, int level, const char *module,
                       uint32_t per_sec, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* Write the summaries of windows that are over (the proxy's tick calls it). */
void log_tick(void);

#define log_limited(level, per_sec, mod, ...)                            \
    do {                                                                 \
        static struct log_limit log_site_;                               \
        log_write_limited(&log_site_, level, mod, per_sec, __VA_ARGS__); \
    } while (0)

#endif
