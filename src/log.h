/* log.h — greppable log lines: time, level, module, message. */
#ifndef RP_LOG_H
#define RP_LOG_H

#define LOG_LEVEL_CODEC(X) \
    X(ERROR, "error")      \
    X(WARN, "warn")        \
    X(NOTICE, "notice")    \
    X(INFO, "info")        \
    X(DEBUG, "debug")

#define LOG_LEVEL_ENUM(e, name) LOG_##e,
enum log_level { LOG_LEVEL_CODEC(LOG_LEVEL_ENUM) LOG_LEVEL_COUNT };
#undef LOG_LEVEL_ENUM

/* Open the log (path NULL: stderr). Returns 0 or -errno. */
int log_open(const char *path, int level);
/* Reopen the same path (after logrotate moved it); SIGUSR1 calls this. */
int log_reopen(void);
void log_close(void);
int log_enabled(int level);

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

#endif
