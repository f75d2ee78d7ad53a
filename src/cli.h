/* cli.h — the operator commands: test a config, locate keys, show and diff rings. */
#ifndef RP_CLI_H
#define RP_CLI_H

#include <stdio.h>

/* Each returns the process exit status and writes to out (errors to stderr). */
int cli_test_config(const char *path, FILE *out);
int cli_locate(const char *path, const char *pool, char *const keys[], int nkeys,
               FILE *out);
int cli_ring(const char *path, const char *pool, int show_points, FILE *out);
int cli_diff(const char *old_path, const char *new_path, FILE *out);
/* `index stats` and `index check` (sample: keys to check). */
int cli_index(const char *what, const char *path, const char *pool, long sample,
              FILE *out);

#endif
