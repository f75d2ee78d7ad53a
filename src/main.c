/* main.c — command line: serve a config, or run an operator command. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "config.h"
#include "proxy.h"

#define ADMIN_PORT_DEFAULT 22222
#define ADMIN_ADDR_DEFAULT "127.0.0.1"

#define RINGPROXY_USAGE                                                        \
    "usage: ringproxy -c FILE [-t] [-d] [-p PIDFILE] [-o LOGFILE] [-v LEVEL]\n" \
    "                 [-s ADMIN_PORT] [-a ADMIN_ADDR] [-u USER] [-T N]\n"       \
    "       ringproxy locate -c FILE [--pool NAME] KEY...\n"                   \
    "       ringproxy ring -c FILE [--pool NAME] [--points]\n"                 \
    "       ringproxy diff OLD_FILE NEW_FILE\n"                                \
    "       ringproxy index stats -c FILE [--pool NAME]\n"                     \
    "       ringproxy index check -c FILE [--pool NAME] [--sample N]\n"        \
    "       ringproxy index rebuild -c FILE [--pool NAME]\n"                  \
    "       ringproxy index sweep -c FILE [--pool NAME] [--rate N]\n"          \
    "       ringproxy status -c FILE [--pool NAME] [-s ADMIN_PORT] [-a ADMIN_ADDR]\n" \
    "       ringproxy -V | -h\n"                                               \
    "\n"                                                                       \
    "  -c, --conf-file FILE     the pool file (YAML; twemproxy's format works)\n" \
    "  -t, --test-conf          check the file, print every error, exit 0/1\n" \
    "  -d, --daemonize          run in the background; exits 0 once serving,\n" \
    "                           1 with the reason if it cannot start\n"        \
    "  -u, --user USER          run as USER once the listeners are bound\n"    \
    "  -T, --threads N          event-loop threads (overrides the file's\n"   \
    "                           `threads:`; 0 = one per core, at most 8)\n"    \
    "  -p, --pid-file FILE      write the process id here\n"                   \
    "  -o, --output FILE        log here (reopened on SIGUSR1), default stderr\n" \
    "  -v, --verbose LEVEL      0 error, 1 warn, 2 notice (default), 3 info,\n" \
    "                           4 debug\n"                                     \
    "  -s, --stats-port PORT    admin HTTP port (default 22222, 0 = off)\n"    \
    "  -a, --stats-addr ADDR    admin HTTP address (default 127.0.0.1)\n"      \
    "  -V, --version            print the version\n"                           \
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

/* `status`: -c FILE, --pool NAME, and where the admin port is (-s, -a). */
static int status_command(int argc, char **argv)
{
    static const struct option opts[] = {
        { "conf-file", required_argument, NULL, 'c' },
        { "pool", required_argument, NULL, 'P' },
        { "stats-port", required_argument, NULL, 's' },
        { "stats-addr", required_argument, NULL, 'a' },
        { NULL, 0, NULL, 0 },
    };
    const char *conf = NULL, *pool = NULL, *addr = ADMIN_ADDR_DEFAULT;
    int port = ADMIN_PORT_DEFAULT, ch;
    char *end;

    optind = 1;
    while ((ch = getopt_long(argc, argv, "c:s:a:", opts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            conf = optarg;
            break;
        case 'P':
            pool = optarg;
            break;
        case 's':
            port = (int)strtol(optarg, &end, 10);
            if (*end != '\0' || port < 0 || port > 65535) {
                fprintf(stderr, "ringproxy status: -s takes a port from 0 to 65535\n");
                return 2;
            }
            break;
        case 'a':
            addr = optarg;
            break;
        default:
            return usage(stderr, 2);
        }
    }
    if (conf == NULL || optind < argc) {
        fprintf(stderr, "usage: ringproxy status -c FILE [--pool NAME] [-s ADMIN_PORT] "
                "[-a ADMIN_ADDR]\n");
        return 2;
    }
    return cli_status(conf, pool, addr, port, stdout);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "conf-file", required_argument, NULL, 'c' },
        { "test-conf", no_argument, NULL, 't' },
        { "daemonize", no_argument, NULL, 'd' },
        { "pid-file", required_argument, NULL, 'p' },
        { "output", required_argument, NULL, 'o' },
        { "verbose", required_argument, NULL, 'v' },
        { "stats-port", required_argument, NULL, 's' },
        { "stats-addr", required_argument, NULL, 'a' },
        { "user", required_argument, NULL, 'u' },
        { "threads", required_argument, NULL, 'T' },
        { "version", no_argument, NULL, 'V' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    static char abs_paths[3][4096];
    struct proxy_options o = { .log_level = 2, .admin_port = ADMIN_PORT_DEFAULT,
                               .admin_addr = ADMIN_ADDR_DEFAULT, .threads = -1 };
    int test_only = 0, ch;

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
    while ((ch = getopt_long(argc, argv, "c:tdp:o:v:s:a:u:T:Vh", opts, NULL)) != -1) {
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
        case 'p':
            o.pid_path = optarg;
            break;
        case 'o':
            o.log_path = optarg;
            break;
        case 'v':
            o.log_level = (int)strtol(optarg, &end, 10);
            if (*end != '\0' || o.log_level < 0 || o.log_level > 4) {
                fprintf(stderr, "ringproxy: -v takes a level from 0 to 4\n");
                return 2;
            }
            break;
        case 's':
            o.admin_port = (int)strtol(optarg, &end, 10);
            if (*end != '\0' || o.admin_port < 0 || o.admin_port > 65535) {
                fprintf(stderr, "ringproxy: -s takes a port from 0 to 65535\n");
                return 2;
            }
            break;
        case 'a':
            o.admin_addr = optarg;
            break;
        case 'u':
            o.user = optarg;
            break;
        case 'T':
            o.threads = (int)strtol(optarg, &end, 10);
            if (*end != '\0' || *optarg == '\0' || o.threads < 0 ||
                o.threads > CONF_THREADS_MAX) {
                fprintf(stderr, "ringproxy: -T takes a thread count from 0 to %d\n",
                        CONF_THREADS_MAX);
                return 2;
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
    if (o.conf_path == NULL) {
        fprintf(stderr, "ringproxy: -c FILE is required\n");
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
