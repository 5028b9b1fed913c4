/*
 * socket.h - the agent's unix socket for local programs.
 *
 * A SOCK_STREAM listener at a path (mode 0600). Clients write one JSON
 * request per line and get one reply line per request, in order; they may
 * pipeline (write many requests before reading). Requests:
 *
 *   {"op":"send","notification":{...}}
 *       -> {"ok":true,"id":"..","duplicate":false}   once the row is committed
 *       -> {"ok":false,"error":"<code>","field":"..","detail":".."}
 *          code: a proto reason code (invalid input), "full" (outbox over
 *          budget), "storage" (the add or the commit failed: not accepted)
 *   {"op":"status"}
 *       -> {"ok":true,"status":{...}}                 see docs/agent.md
 *   {"op":"lookup","id":".."}    (also "op":"local", the older name)
 *       -> {"ok":true,"id":"..","local":[..],"outbox":..,"hub":..}
 *          its local delivery rows, where it is in the outbox, the hub's receipt
 *       -> {"ok":false,"error":"not_found","field":"id",...}
 *
 * Anything else gets ok:false naming the field "op" (malformed_json,
 * not_object, missing_field, wrong_type, bad_value). A line longer than
 * SOCKET_LINE_MAX bytes gets too_large and is skipped up to its newline; the
 * connection stays usable. A blank line is not a request (no reply).
 *
 * Replies to sends come only after the commit that made them durable: the
 * owner of the outbox calls socket_server_store() and then, after its one
 * commit per loop iteration, socket_server_committed(). Validation happens as
 * lines are read; the rows are added to the outbox only inside
 * socket_server_store(), right before the commit, so no other commit (an
 * ack, a take) can carry them and the reply always states the outcome of
 * exactly the commit that held them.
 *
 * Bounds: SOCKET_LINE_MAX per line, max_clients connections (one more is
 * told "busy" and closed), SOCKET_BATCH_MAX requests per connection per
 * commit, and a per-connection output buffer: above SOCKET_OUT_HIGH bytes
 * the connection is not read until its client reads; a client that takes
 * none of its replies for write_timeout_ms is disconnected (logged once).
 * A client that goes away before its replies changes nothing: what it sent
 * is still stored.
 *
 * Single-threaded: everything runs on the loop the server was created on.
 */
#ifndef TIDINGS_SOCKET_H
#define TIDINGS_SOCKET_H

#include <stddef.h>
#include <stdint.h>

#include "ingest.h"
#include "loop.h"

struct cJSON;

#define SOCKET_LINE_MAX 8192             /* bytes per request line, newline excluded */
#define SOCKET_BATCH_MAX 256             /* requests per connection per commit */
#define SOCKET_OUT_HIGH (64 * 1024)      /* stop reading a client above this backlog */
#define SOCKET_OUT_MAX (4 * 1024 * 1024) /* hard ceiling of one client's backlog */

struct socket_opts {
    const char *path;          /* at most 107 bytes (sun_path) */
    unsigned max_clients;      /* >= 1 */
    uint64_t write_timeout_ms; /* >= 1 */
};

struct socket_ops {
    /* Add one prepared notification to the outbox's open transaction:
     * ingest_queue()'s results (0, TDG_EDUPLICATE, TDG_EFULL, error). */
    int (*queue)(void *arg, const struct ingest_item *it);
    /* The status object for {"op":"status"}: a new cJSON object the server
     * takes ownership of, or NULL when out of memory. */
    struct cJSON *(*status)(void *arg);
    /* What became of notification id ({"op":"lookup"}, also "local"): 0
     * and *out, a new JSON object whose members ("local", "outbox", "hub":
     * docs/agent.md) the server moves into the reply and then frees;
     * TDG_ENOTFOUND, or an error. Called after the round's commit. May be
     * NULL (always not_found). */
    int (*lookup)(void *arg, const char *id, struct cJSON **out);
    void *arg;
};

struct socket_stats {
    struct ingest_stats in;    /* sends; malformed requests count as received + invalid */
    uint64_t connections;      /* accepted since start */
    uint64_t refused_busy;     /* refused: max_clients reached */
    uint64_t slow_disconnects; /* dropped for not reading their replies */
    uint64_t status_requests;
    unsigned clients; /* connected now */
    unsigned max_clients;
};

typedef struct socket_server socket_server_t;

/* Listen on opts->path. A leftover socket file nobody listens on (a killed
 * agent) is replaced; a live listener, a lock held by another agent
 * (path + ".lock"), or a file that is not a socket is an error naming the
 * path. 0 and *out, or a negative error with err set. */
int socket_server_create(loop_t *loop, const struct socket_opts *opts, const struct socket_ops *ops,
                         socket_server_t **out, char *err, size_t errlen);

/* Close every client (replies still owed are lost, rows already stored stay
 * stored), remove the socket file and free. Prepared but unstored sends are
 * dropped: call store + commit + committed first to keep them. Safe with NULL. */
void socket_server_destroy(socket_server_t *s);

/* Before the commit: queue every send read since the last call. After a
 * storage error the rest of the round is refused with "storage" without
 * touching the outbox (the transaction's state is unknown). Returns the
 * number of rows added. */
unsigned socket_server_store(socket_server_t *s);

/* After the commit: commit_rc is outbox_commit()'s result (0 = durable).
 * Writes every reply of the round, in order per connection. */
void socket_server_committed(socket_server_t *s, int commit_rc);

void socket_server_get_stats(const socket_server_t *s, struct socket_stats *st);

#endif
