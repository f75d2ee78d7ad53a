/* main.c — command line: serve a config, or run an operator command. */
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "config.h"
#include "evmem.h"
#include "log.h"
#include "nstats.h"
#include "proxy.h"

#define ADMIN_PORT_DEFAULT 22223      /* nutcracker's stats port + 1 */
#define ADMIN_ADDR_DEFAULT "127.0.0.1"
#define STATS_PORT_DEFAULT 22222      /* nutcracker's */
#define STATS_ADDR_DEFAULT "0.0.0.0"  /* nutcracker's */

/* Without -c, the first of these that exists (nutcracker's own convention is
 * conf/nutcracker.yml under the working directory; Debian's package moves it
 * to /etc/nutcracker/). */
static const char *const default_conf_paths[] = {
    "conf/ringproxy.yml",
    "/etc/ringproxy/ringproxy.yml",
};

/*
 * nutcracker's -v levels (0 emerg .. 5 notice .. 11 pverb, its default 5)
 * to ours (log.h): one table, documented in the usage text and the README.
 */
static const enum log_level verbosity_levels[] = {
    LOG_ERROR, LOG_ERROR, LOG_ERROR, LOG_ERROR,     /* emerg alert crit error */
    LOG_WARN, LOG_NOTICE, LOG_INFO,                  /* warn notice info */
    LOG_DEBUG, LOG_DEBUG, LOG_DEBUG, LOG_DEBUG, LOG_DEBUG, /* debug .. pverb */
};
#define VERBOSITY_MAX ((int)(sizeof(verbosity_levels) / sizeof(verbosity_levels[0])) - 1)
#define VERBOSITY_DEFAULT 5

#define RINGPROXY_USAGE                                                        \
    "usage: ringproxy [-c FILE] [-t] [-d] [-D] [-p PIDFILE] [-o LOGFILE]\n"    \
    "                 [-v LEVEL] [-s STATS_PORT] [-a STATS_ADDR] [-i MS] [-m N]\n" \
    "                 [-P ADMIN_PORT] [-A ADMIN_ADDR] [-u USER] [-T N]\n"      \
    "       ringproxy locate -c FILE [--pool NAME] KEY...\n"                   \
    "       ringproxy ring -c FILE [--pool NAME] [--points]\n"                 \
    "       ringproxy diff OLD_FILE NEW_FILE\n"                                \
    "       ringproxy index stats -c FILE [--pool NAME]\n"                     \
    "       ringproxy index check -c FILE [--pool NAME] [--sample N]\n"        \
    "       ringproxy index rebuild -c FILE [--pool NAME]\n"                  \
    "       ringproxy index sweep -c FILE [--pool NAME] [--rate N]\n"          \
    "       ringproxy status -c FILE [--pool NAME] [-P ADMIN_PORT] [-A ADMIN_ADDR]\n" \
    "       ringproxy -V | -h\n"                                               \
    "\n"                                                                       \
    "  -c, --conf-file FILE     the pool file (YAML; twemproxy's format works);\n" \
    "                           default conf/ringproxy.yml, else\n"           \
    "                           /etc/ringproxy/ringproxy.yml\n"               \
    "  -t, --test-conf          check the file, print every error, exit 0/1\n" \
    "  -d, --daemonize          run in the background; exits 0 once serving,\n" \
    "                           1 with the reason if it cannot start\n"        \
    "  -D, --describe-stats     print the stats port's fields and exit\n"     \
    "  -u, --user USER          run as USER once the listeners are bound\n"    \
    "  -T, --threads N          event-loop threads (overrides the file's\n"   \
    "                           `threads:`; 0 = one per core, at most 8)\n"    \
    "      --threads-active N   how many of them serve clients: auto (the\n"  \
    "                           default), all, or a count (overrides the\n"   \
    "                           file's `threads_active:`)\n"                 \
    "  -p, --pid-file FILE      write the process id here\n"                   \
    "  -o, --output FILE        log here (reopened on SIGUSR1), default stderr\n" \
    "  -v, --verbose LEVEL      nutcracker's 0..11 (default 5): 0-3 error,\n"  \
    "                           4 warn, 5 notice, 6 info, 7-11 debug\n"       \
    "  -s, --stats-port PORT    nutcracker's stats JSON port (default 22222,\n" \
    "                           0 = off)\n"                                    \
    "  -a, --stats-addr ADDR    its address (default 0.0.0.0)\n"              \
    "  -i, --stats-interval MS  accepted for nutcracker's command line; the\n" \
    "                           stats port always answers current counters\n" \
    "  -m, --mbuf-size N        accepted for nutcracker's command line (512 to\n" \
    "                           16777216); buffers grow as needed\n"         \
    "  -P, --admin-port PORT    admin HTTP port: /metrics, /healthz, /ring,\n" \
    "                           /migration (default 22223, 0 = off)\n"        \
    "  -A, --admin-addr ADDR    admin HTTP address (default 127.0.0.1)\n"      \
    "  -V, --version            print the version\n"                           \
    "  -h, --help               print this text\n"                             \
    "\n"                                                                       \
    "Signals: SIGHUP reloads the file, SIGUSR1 reopens the log, SIGTERM and\n" \
    "SIGINT stop after in-flight replies are sent.\n"

/*
 * path made absolute against the working directory, in buf (a daemon runs
 * in "/", where a relative -c, -p or -o would name another file). Returns
 * path itself when it is absolute, NULL when it does not fit or the working
 * directory is unknown.
 */
static const char *absolute_path(const char *path, char *buf, size_t size)
{
    char cwd[4096];

    if (path == NULL || path[0] == '/') {
        return path;
    }
    if (getcwd(cwd, sizeof(cwd)) == NULL) {
        return NULL;
    }
    int n = snprintf(buf, size, "%s/%s", cwd, path);
    return n > 0 && (size_t)n < size ? buf : NULL;
}

static int usage(FILE *f, int rc)
{
    fputs(RINGPROXY_USAGE, f);
    return rc;
}

/* `locate`, `ring`: -c FILE, --pool NAME, --points, then arguments. */
static int operator_command(int argc, char **argv)
{
    static const struct option opts[] = {
        { "conf-file", required_argument, NULL, 'c' },
        { "pool", required_argument, NULL, 'P' },
        { "points", no_argument, NULL, 'x' },
        { "sample", required_argument, NULL, 'n' },
        { "rate", required_argument, NULL, 'r' },
        { NULL, 0, NULL, 0 },
    };
    const char *cmd = argv[0], *conf = NULL, *pool = NULL, *what = NULL;
    int points = 0, ch;
    long sample = 1000, rate = 0;
    char *end;

    if (strcmp(cmd, "index") == 0) {
        if (argc < 2 || (strcmp(argv[1], "stats") != 0 && strcmp(argv[1], "check") != 0 &&
                         strcmp(argv[1], "rebuild") != 0 && strcmp(argv[1], "sweep") != 0)) {
            fprintf(stderr, "usage: ringproxy index stats|check|rebuild|sweep -c FILE ...\n");
            return 2;
        }
        what = argv[1];
        argc--, argv++;
    }

    optind = 1;
    while ((ch = getopt_long(argc, argv, "c:", opts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            conf = optarg;
            break;
        case 'P':
            pool = optarg;
            break;
        case 'x':
            points = 1;
            break;
        case 'n':
            sample = strtol(optarg, NULL, 10);
            if (sample <= 0) {
                fprintf(stderr, "ringproxy index check: --sample takes a positive number\n");
                return 2;
            }
            break;
        case 'r':
            if (what == NULL || strcmp(what, "sweep") != 0) {
                fprintf(stderr, "ringproxy %s: --rate is for index sweep only\n", cmd);
                return 2;
            }
            rate = strtol(optarg, &end, 10);
            if (*end != '\0' || rate < 0) {
                fprintf(stderr, "ringproxy index sweep: --rate takes entries per second "
                        "(0: unlimited)\n");
                return 2;
            }
            break;
        default:
            return usage(stderr, 2);
        }
    }
    if (conf == NULL) {
        fprintf(stderr, "ringproxy %s: -c FILE is required\n", cmd);
        return 2;
    }
    if (what != NULL && strcmp(what, "sweep") == 0) {
        return cli_index_sweep(conf, pool, rate, stdout);
    }
    if (what != NULL) {
        return cli_index(what, conf, pool, sample, stdout);
    }
    if (strcmp(cmd, "locate") == 0) {
        if (optind >= argc) {
            fprintf(stderr, "ringproxy locate: give at least one key\n");
            return 2;
        }
        return cli_locate(conf, pool, argv + optind, argc - optind, stdout);
    }
    return cli_ring(conf, pool, points, stdout);
}

/* A port number from 0 to 65535 for flag, or -1 with the reason printed. */
static int port_arg(const char *cmd, const char *flag, const char *arg)
{
    char *end;
    long v = strtol(arg, &end, 10);

    if (*arg == '\0' || *end != '\0' || v < 0 || v > 65535) {
        fprintf(stderr, "%s: %s takes a port from 0 to 65535, got '%s'\n", cmd, flag, arg);
        return -1;
    }
    return (int)v;
}

/* A decimal from min to max for flag, or -1 with the reason printed. */
static long bounded_arg(const char *flag, const char *arg, long min, long max)
{
    char *end;
    long v = strtol(arg, &end, 10);

    if (*arg == '\0' || *end != '\0' || v < min || v > max) {
        fprintf(stderr, "ringproxy: %s takes a number from %ld to %ld, got '%s'\n",
                flag, min, max, arg);
        return -1;
    }
    return v;
}

/* `status`: -c FILE, --pool NAME, and where the admin port is (-P, -A; the
 * older -s, -a and their long names still work here). */
static int status_command(int argc, char **argv)
{
    static const struct option opts[] = {
        { "conf-file", required_argument, NULL, 'c' },
        { "pool", required_argument, NULL, 'x' },
        { "admin-port", required_argument, NULL, 'P' },
        { "admin-addr", required_argument, NULL, 'A' },
        { "stats-port", required_argument, NULL, 'P' },
        { "stats-addr", required_argument, NULL, 'A' },
        { NULL, 0, NULL, 0 },
    };
    const char *conf = NULL, *pool = NULL, *addr = ADMIN_ADDR_DEFAULT;
    int port = ADMIN_PORT_DEFAULT, ch;

    optind = 1;
    while ((ch = getopt_long(argc, argv, "c:P:A:s:a:", opts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            conf = optarg;
            break;
        case 'x':
            pool = optarg;
            break;
        case 'P':
        case 's':
            if ((port = port_arg("ringproxy status", ch == 'P' ? "--admin-port" : "-s",
                                 optarg)) < 0) {
                return 2;
            }
            break;
        case 'A':
        case 'a':
            addr = optarg;
            break;
        default:
            return usage(stderr, 2);
        }
    }
    if (conf == NULL || optind < argc) {
        fprintf(stderr, "usage: ringproxy status -c FILE [--pool NAME] [-P ADMIN_PORT] "
                "[-A ADMIN_ADDR]\n");
        return 2;
    }
    return cli_status(conf, pool, addr, port, stdout);
}

/* Without -c: the first default path that exists, or NULL (reason printed). */
static const char *default_conf(void)
{
    size_t n = sizeof(default_conf_paths) / sizeof(default_conf_paths[0]);

    for (size_t i = 0; i < n; i++) {
        if (access(default_conf_paths[i], F_OK) == 0) {
            return default_conf_paths[i];
        }
    }
    fprintf(stderr, "ringproxy: no -c FILE, and neither %s nor %s exists\n",
            default_conf_paths[0], default_conf_paths[1]);
    return NULL;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "conf-file", required_argument, NULL, 'c' },
        { "test-conf", no_argument, NULL, 't' },
        { "daemonize", no_argument, NULL, 'd' },
        { "describe-stats", no_argument, NULL, 'D' },
        { "pid-file", required_argument, NULL, 'p' },
        { "output", required_argument, NULL, 'o' },
        { "verbose", required_argument, NULL, 'v' },
        { "stats-port", required_argument, NULL, 's' },
        { "stats-addr", required_argument, NULL, 'a' },
        { "stats-interval", required_argument, NULL, 'i' },
        { "mbuf-size", required_argument, NULL, 'm' },
        { "admin-port", required_argument, NULL, 'P' },
        { "admin-addr", required_argument, NULL, 'A' },
        { "user", required_argument, NULL, 'u' },
        { "threads", required_argument, NULL, 'T' },
        { "threads-active", required_argument, NULL, 1001 },
        { "version", no_argument, NULL, 'V' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    static char abs_paths[3][4096];
    struct proxy_options o = { .log_level = verbosity_levels[VERBOSITY_DEFAULT],
                               .admin_port = ADMIN_PORT_DEFAULT,
                               .admin_addr = ADMIN_ADDR_DEFAULT,
                               .stats_port = STATS_PORT_DEFAULT,
                               .stats_addr = STATS_ADDR_DEFAULT, .threads = -1,
                               .threads_active = PROXY_ACTIVE_UNSET };
    int test_only = 0, describe = 0, ch;
    long v;

    evmem_install();    /* before libevent allocates anything */

    if (argc > 1 && (strcmp(argv[1], "locate") == 0 || strcmp(argv[1], "ring") == 0 ||
                     strcmp(argv[1], "index") == 0)) {
        return operator_command(argc - 1, argv + 1);
    }
    if (argc > 1 && strcmp(argv[1], "status") == 0) {
        return status_command(argc - 1, argv + 1);
    }
    if (argc > 1 && strcmp(argv[1], "diff") == 0) {
        if (argc != 4) {
            fprintf(stderr, "usage: ringproxy diff OLD_FILE NEW_FILE\n");
            return 2;
        }
        return cli_diff(argv[2], argv[3], stdout);
    }
    while ((ch = getopt_long(argc, argv, "c:tdDp:o:v:s:a:i:m:P:A:u:T:Vh", opts,
                             NULL)) != -1) {
        char *end;

        switch (ch) {
        case 'c':
            o.conf_path = optarg;
            break;
        case 't':
            test_only = 1;
            break;
        case 'd':
            o.daemonize = 1;
            break;
        case 'D':
            describe = 1;
            break;
        case 'p':
            o.pid_path = optarg;
            break;
        case 'o':
            o.log_path = optarg;
            break;
        case 'v':
            if ((v = bounded_arg("-v", optarg, 0, VERBOSITY_MAX)) < 0) {
                return 2;
            }
            o.log_level = verbosity_levels[v];
            break;
        case 's':
            if ((o.stats_port = port_arg("ringproxy", "-s", optarg)) < 0) {
                return 2;
            }
            break;
        case 'a':
            o.stats_addr = optarg;
            break;
        case 'i':
            if ((o.stats_interval = bounded_arg("-i", optarg, 1, INT32_MAX)) < 0) {
                return 2;
            }
            break;
        case 'm':
            if ((o.mbuf_size = bounded_arg("-m", optarg, 512, 16777216)) < 0) {
                return 2;
            }
            break;
        case 'P':
            if ((o.admin_port = port_arg("ringproxy", "--admin-port", optarg)) < 0) {
                return 2;
            }
            break;
        case 'A':
            o.admin_addr = optarg;
            break;
        case 'u':
            o.user = optarg;
            break;
        case 'T':
            v = strtol(optarg, &end, 10);
            if (*end != '\0' || *optarg == '\0' || v < 0 || v > CONF_THREADS_MAX) {
                fprintf(stderr, "ringproxy: -T takes a thread count from 0 to %d\n",
                        CONF_THREADS_MAX);
                return 2;
            }
            o.threads = (int)v;
            break;
        case 1001:
            v = strtol(optarg, &end, 10);
            if (strcmp(optarg, "auto") == 0) {
                o.threads_active = CONF_ACTIVE_AUTO;
            } else if (strcmp(optarg, "all") == 0) {
                o.threads_active = CONF_ACTIVE_ALL;
            } else if (*end != '\0' || *optarg == '\0' || v < 1 || v > CONF_THREADS_MAX) {
                fprintf(stderr, "ringproxy: --threads-active takes auto, all or a count "
                        "from 1 to %d\n", CONF_THREADS_MAX);
                return 2;
            } else {
                o.threads_active = (int)v;
            }
            break;
        case 'V':
            printf("ringproxy %s\n", RINGPROXY_VERSION);
            return 0;
        case 'h':
            return usage(stdout, 0);
        default:
            return usage(stderr, 2);
        }
    }
    if (optind < argc) {
        fprintf(stderr, "ringproxy: unexpected argument '%s'\n", argv[optind]);
        return usage(stderr, 2);
    }
    if (describe) {
        nstats_describe(stdout);
        return 0;
    }
    if (o.conf_path == NULL && (o.conf_path = default_conf()) == NULL) {
        return usage(stderr, 2);
    }
    if (test_only) {
        return cli_test_config(o.conf_path, stdout);
    }
    if (o.daemonize) {
        const char **paths[] = { &o.conf_path, &o.pid_path, &o.log_path };
        for (int i = 0; i < 3; i++) {
            const char *abs = absolute_path(*paths[i], abs_paths[i],
                                            sizeof(abs_paths[i]));
            if (abs == NULL && *paths[i] != NULL) {
                fprintf(stderr, "ringproxy: cannot make %s absolute\n", *paths[i]);
                return 1;
            }
            *paths[i] = abs;
        }
    }
    return proxy_main(&o);
}
