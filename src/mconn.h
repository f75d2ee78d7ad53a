/* mconn.h — a meta-protocol connection to one memcached, for moving keys. */
#ifndef RP_MCONN_H
#define RP_MCONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct mconn;

#define MREPLY_CODEC(X)                                 \
    X(VA, "VA")         /* a value follows */           \
    X(HD, "HD")         /* done, no value */            \
    X(EN, "EN")         /* miss */                      \
    X(NS, "NS")         /* not stored */                \
    X(EX, "EX")         /* CAS mismatch */              \
    X(NF, "NF")         /* not found */                 \
    X(FAIL, "FAIL")     /* error reply, or the connection failed */

#define MREPLY_ENUM(e, name) MREPLY_##e,
enum mreply_status { MREPLY_CODEC(MREPLY_ENUM) MREPLY_COUNT };
#undef MREPLY_ENUM
extern const char *const mreply_names[MREPLY_COUNT];

struct mreply {
    enum mreply_status status;
    const char *flags;          /* the reply's flags, e.g. "f0 t-1 c123" */
    size_t flags_len;
    const char *value;          /* VA: the value, without "\r\n" */
    size_t value_len;
    const char *error;          /* FAIL: the server's error line, or what
                                   went wrong with the connection */
};

/* Called once per command, in order; r and its pointers live for the call. */
typedef void (*mconn_cb)(void *arg, const struct mreply *r);

struct mconn *mconn_new(struct event_base *base, const char *host, uint16_t port,
                        bool is_unix, uint32_t timeout_ms);
void mconn_free(struct mconn *c);   /* pending callbacks get FAIL */

/* Queue "line\r\n" (and data + "\r\n" when data != NULL). */
int mconn_send(struct mconn *c, const char *line, size_t len, const void *data,
               size_t data_len, mconn_cb cb, void *arg);
uint32_t mconn_pending(const struct mconn *c);

/* The value of flag `f` in a reply's flags (e.g. 'c' in "c123"); false if absent. */
bool mreply_flag(const struct mreply *r, char f, int64_t *value);

#endif
