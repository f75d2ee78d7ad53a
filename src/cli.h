/*
 * cli.h — the operator commands: test a config, locate keys, show and diff
 * rings, inspect the index, and follow a migration.
 */
#ifndef RP_CLI_H
#define RP_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

/* Each returns the process exit status and writes to out (errors to stderr). */
int cli_test_config(const char *path, FILE *out);
int cli_locate(const char *path, const char *pool, char *const keys[], int nkeys,
               FILE *out);
int cli_ring(const char *path, const char *pool, int show_points, FILE *out);
int cli_diff(const char *old_path, const char *new_path, FILE *out);
/* A blocking connection to a pool's index Redis (AUTH, SELECT done and a
 * PING answered), or NULL with the reason in err. Free with redisFree. */
struct redisContext;
struct conf_index;
struct redisContext *cli_redis_open(const struct conf_index *ix, char *err,
                                    size_t errlen);
/*
 * Did Redis fail to answer `what` with r (NULL: the connection failed, or
 * an error reply)? Then the reason goes into err: Redis' own words and,
 * for a refusal, its class (auth_failed, refused_oom, ...: index.h). An
 * error reply is never an empty answer. r stays the caller's.
 */
struct redisReply;
bool cli_redis_failed(const struct redisContext *rc, const struct redisReply *r,
                      const struct conf_index *ix, const char *what, char *err,
                      size_t errlen);

/*
 * The index script's `op` with n arguments (layout.h) on a connection
 * cli_redis_open made: appended (0 or -1; read the reply with
 * redisGetReply), or sent and its reply returned (NULL: the connection
 * failed; the reply is the caller's). lens NULL: strings.
 */
int cli_index_append(struct redisContext *rc, const char *prefix, const char *op, int n,
                     const char *const *args, const size_t *lens);
struct redisReply *cli_index_script(struct redisContext *rc, const char *prefix,
                                    const char *op, int n, const char *const *args,
                                    const size_t *lens);
/* The listpack thresholds the last connection opened reported (layout.h). */
struct lay_limits;
const struct lay_limits *cli_index_limits(void);

/* Does an HGETALL reply of <prefix>:ring describe ring r? */
struct ring;
bool cli_record_matches(const struct redisReply *rec, const struct ring *r);

/* `index stats` and `index check` (sample: keys to check). */
int cli_index(const char *what, const char *path, const char *pool, long sample,
              FILE *out);
/* `index rebuild` of one indexed pool (src/rebuild_cli.c). */
struct conf_pool;
int cli_index_rebuild(const struct conf_pool *p, FILE *out);
/*
 * The ring a pool's data obeys: <prefix>:ring, with this file's address for
 * every server the file lists; `file` itself (a new reference) and *epoch 0
 * when nothing is recorded yet. NULL with err when Redis fails or the record
 * cannot be read.
 */
struct ring *cli_data_ring(struct redisContext *rc, const struct conf_pool *p,
                           const struct ring *file, uint64_t *epoch, char *err,
                           size_t errlen);
/* `index sweep`: one pass of the index sweeper (rate: entries per second,
 * 0 = unlimited). 0 when every pass completed, 1 if Redis refused, a
 * migration runs, or it was interrupted. */
int cli_index_sweep(const char *path, const char *pool, long rate, FILE *out);

/* `status`: each pool's state and migration progress, from the admin port at
 * admin_addr:admin_port (0: skip it) or else from the pools' Redis index. */
int cli_status(const char *path, const char *pool, const char *admin_addr,
               int admin_port, FILE *out);

/* 12345 -> "12,345" into buf (operator commands' counts). */
const char *cli_fmt_count(double v, char *buf, size_t len);

#endif
