/*
 * log.c — one line per event: "2026-11-26T10:00:00.123Z notice reload: ...".
 *
 * The log is the one piece of process-wide state: a file descriptor and a
 * level, shared by every module as stderr would be. Lines are written with a
 * single write(2) so concurrent writers never interleave within a line.
 *
 * Rate limits (log_limited in log.h) are per call site: a window of one
 * second on the monotonic clock, a count of lines written in it, and a count
 * of lines suppressed. Sites with suppressed lines sit in a list, so that
 * log_tick() can write their summaries even when the site falls silent.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"

#define LOG_LEVEL_NAME(e, name) [LOG_##e] = name,
static const char *const log_level_names[LOG_LEVEL_COUNT] = {
    LOG_LEVEL_CODEC(LOG_LEVEL_NAME)
};
#undef LOG_LEVEL_NAME

static struct {
    int fd;
    int level;
    char *path;
    int mirror_fd;          /* error lines also go here; -1: nowhere */
} logger = { .fd = STDERR_FILENO, .level = LOG_NOTICE, .mirror_fd = -1 };

void log_mirror_errors(int fd)
{
    logger.mirror_fd = fd;
}

static int log_open_path(const char *path)
{
    return open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
}

int log_open(const char *path, int level)
{
    logger.level = level;
    if (path == NULL) {
        return 0;
    }
    int fd = log_open_path(path);
    if (fd < 0) {
        return -1;
    }
    free(logger.path);
    logger.path = strdup(path);
    logger.fd = fd;
    return 0;
}

int log_reopen(void)
{
    if (logger.path == NULL) {
        return 0;
    }
    int fd = log_open_path(logger.path);
    if (fd < 0) {
        log_error("log", "cannot reopen %s: %s", logger.path, strerror(errno));
        return -1;
    }
    dup2(fd, logger.fd);
    close(fd);
    return 0;
}

void log_close(void)
{
    if (logger.path != NULL) {
        close(logger.fd);
        logger.fd = STDERR_FILENO;
        free(logger.path);
        logger.path = NULL;
    }
}

int log_enabled(int level)
{
    return level <= logger.level;
}

static void log_vwrite(int level, const char *module, const char *fmt, va_list ap)
{
    char line[2048];
    struct timeval tv;
    struct tm tm;

    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ %s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                     tm.tm_min, tm.tm_sec, (int)(tv.tv_usec / 1000),
                     log_level_names[level]);
    int text = n;           /* "module: message" starts here */
    n += snprintf(line + n, sizeof(line) - (size_t)n, "%s: ", module);
    n += vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    if (n > (int)sizeof(line) - 2) {
        n = (int)sizeof(line) - 2;
    }
    line[n++] = '\n';
    ssize_t rc = write(logger.fd, line, (size_t)n);
    if (level == LOG_ERROR && logger.mirror_fd >= 0) {
        rc = write(logger.mirror_fd, line + text, (size_t)(n - text));
    }
    (void)rc;
}

void log_write(int level, const char *module, const char *fmt, ...)
{
    va_list ap;

    if (!log_enabled(level)) {
        return;
    }
    va_start(ap, fmt);
    log_vwrite(level, module, fmt, ap);
    va_end(ap);
}

/* --- rate-limited sites ------------------------------------------------- */

#define LOG_WINDOW_MS 1000

/* Sites are static structs shared by every thread that logs there: their
 * counts and the list are kept under one lock (never on a hot path: a
 * limited line is an error or a warning). */
static pthread_mutex_t limited_lock = PTHREAD_MUTEX_INITIALIZER;
static struct log_limit *limited_sites;    /* sites with suppressed lines */

static void log_summary(struct log_limit *lim)
{
    if (lim->suppressed > 0) {
        log_write(lim->level, lim->module, "(suppressed %llu similar lines)",
                  (unsigned long long)lim->suppressed);
        lim->suppressed = 0;
    }
}

void log_write_limited(struct log_limit *lim, int level, const char *module,
                       uint32_t per_sec, const char *fmt, ...)
{
    va_list ap;

    if (!log_enabled(level)) {
        return;
    }
    uint64_t now = rp_clock_ms();
    pthread_mutex_lock(&limited_lock);
    if (lim->module == NULL || now - lim->window_ms >= LOG_WINDOW_MS) {
        log_summary(lim);
        lim->window_ms = now;
        lim->written = 0;
    }
    lim->module = module;
    lim->level = level;
    lim->per_sec = per_sec;
    if (lim->written >= per_sec) {
        lim->suppressed++;
        if (!lim->listed) {
            lim->listed = true;
            lim->next = limited_sites;
            limited_sites = lim;
        }
        pthread_mutex_unlock(&limited_lock);
        return;
    }
    lim->written++;
    pthread_mutex_unlock(&limited_lock);
    va_start(ap, fmt);
    log_vwrite(level, module, fmt, ap);
    va_end(ap);
}

void log_tick(void)
{
    uint64_t now = rp_clock_ms();

    pthread_mutex_lock(&limited_lock);
    for (struct log_limit **pp = &limited_sites; *pp != NULL;) {
        struct log_limit *lim = *pp;
        if (lim->suppressed > 0 && now - lim->window_ms < LOG_WINDOW_MS) {
            pp = &lim->next;
            continue;
        }
        if (lim->suppressed > 0) {
            log_summary(lim);
            /* A new window: a line right after the summary is written. */
            lim->window_ms = now;
            lim->written = 0;
        }
        lim->listed = false;
        *pp = lim->next;
    }
    pthread_mutex_unlock(&limited_lock);
}
