/* socket.c - the unix socket for local programs (see socket.h). */
#include "socket.h"

#include "error.h"
#include "log.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* Read buffer: one maximal line plus whatever follows it in the same read. */
#define IN_CAP (2 * SOCKET_LINE_MAX)
/* Connections accepted per wake-up, so a flood of connects cannot starve the
 * clients already connected. */
#define ACCEPT_BURST 16
/* Prepared, not yet stored notifications across all clients: validation
 * happens as lines are read, storage right before the commit, and this
 * bounds what waits in between. */
#define PENDING_BYTES_MAX (4u * 1024 * 1024)
/* Out of file descriptors: retry accepting after this long instead of
 * spinning on a listener that stays readable. */
#define ACCEPT_RETRY_MS 200
/* Nesting levels the envelope scanner follows (the notification's own limit
 * is PROTO_MAX_DEPTH; proto_parse checks it properly). */
#define SCAN_DEPTH_MAX (PROTO_MAX_DEPTH + 2)

enum reply_kind { R_SEND, R_ERROR, R_STATUS, R_LOCAL };

/* One request of the current round, answered at socket_server_committed(). */
struct reply {
    enum reply_kind kind;
    bool stored; /* R_SEND: handed to ops.queue; rc is its result */
    int rc;
    const char *code; /* R_ERROR: static reason code */
    char field[48];
    char detail[128];
    struct ingest_item item; /* R_SEND: id always; json until stored */
};

struct conn {
    socket_server_t *srv;
    struct conn *prev, *next;
    int fd;          /* -1 once closed; the struct lives until its round is answered */
    uint64_t serial; /* for logs */
    long pid;        /* peer process (SO_PEERCRED), for logs; 0 unknown */
    char *in;        /* IN_CAP bytes */
    size_t in_len;
    bool discarding; /* skipping the rest of an over-long line */
    bool eof;        /* the client shut down its writing side */
    bool stalled;    /* complete lines wait in `in` (a bound was reached) */
    struct reply *rp;
    unsigned nrp, cap_rp;
    char *out;
    size_t out_off, out_len, out_cap;
    uint64_t wtimer;
    uint64_t last_progress_ms; /* last write that moved bytes, or when output began */
    unsigned events;           /* what the loop watches now */
};

struct socket_server {
    loop_t *loop;
    struct socket_ops ops;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    char lock_path[sizeof(((struct sockaddr_un *)0)->sun_path) + 8];
    int lfd, lockfd;
    bool bound;
    unsigned max_clients;
    uint64_t write_timeout_ms;
    struct conn *conns;
    unsigned nconns;
    uint64_t next_serial;
    size_t pending_bytes;
    uint64_t resume_timer, accept_timer;
    bool busy_logged, accept_err_logged;
    struct socket_stats st;
};

/* --- connections --------------------------------------------------------- */

static size_t out_pending(const struct conn *c)
{
    return c->out_len - c->out_off;
}

static bool conn_can_read(const struct conn *c)
{
    return c->fd >= 0 && !c->eof && c->in_len < IN_CAP && out_pending(c) < SOCKET_OUT_HIGH;
}

static void conn_set_events(struct conn *c)
{
    if (c->fd < 0) {
        return;
    }
    unsigned want = (conn_can_read(c) ? LOOP_READ : 0) | (out_pending(c) ? LOOP_WRITE : 0);
    if (want != c->events && loop_fd_mod(c->srv->loop, c->fd, want) == 0) {
        c->events = want;
    }
}

/* Close the descriptor; the struct stays while replies of this round are
 * still to be resolved (their rows are stored all the same). */
static void conn_shutdown(struct conn *c)
{
    if (c->fd < 0) {
        return;
    }
    socket_server_t *s = c->srv;
    loop_fd_del(s->loop, c->fd);
    close(c->fd);
    c->fd = -1;
    if (c->wtimer) {
        loop_timer_cancel(s->loop, c->wtimer);
        c->wtimer = 0;
    }
    free(c->out);
    c->out = NULL;
    c->out_off = c->out_len = c->out_cap = 0;
    c->in_len = 0;
    c->stalled = false;
    LOG_DEBUG("socket", "client %llu disconnected", (unsigned long long)c->serial);
}

static void conn_free(struct conn *c)
{
    socket_server_t *s = c->srv;
    conn_shutdown(c);
    for (unsigned i = 0; i < c->nrp; i++) {
        if (c->rp[i].kind == R_SEND && !c->rp[i].stored) {
            s->pending_bytes -= c->rp[i].item.len;
        }
        ingest_item_free(&c->rp[i].item);
    }
    if (c->prev) {
        c->prev->next = c->next;
    } else {
        s->conns = c->next;
    }
    if (c->next) {
        c->next->prev = c->prev;
    }
    s->nconns--;
    if (s->busy_logged && s->nconns < s->max_clients) {
        LOG_INFO("socket", "below max_clients=%u again: accepting new clients", s->max_clients);
        s->busy_logged = false;
    }
    free(c->rp);
    free(c->in);
    free(c);
}

/* Close now; free unless replies of this round are still owed. After this
 * the caller must not use c. */
static void conn_drop(struct conn *c)
{
    conn_shutdown(c);
    if (c->nrp == 0) {
        conn_free(c);
    }
}

/* Append to the output backlog. 0, or -ENOBUFS past SOCKET_OUT_MAX, -ENOMEM. */
static int out_append(struct conn *c, const char *p, size_t n)
{
    if (out_pending(c) == 0) {
        c->out_off = c->out_len = 0;
        c->last_progress_ms = loop_now_ms(c->srv->loop);
    }
    if (out_pending(c) + n > SOCKET_OUT_MAX) {
        return -ENOBUFS;
    }
    if (c->out_len + n > c->out_cap && c->out_off > 0) {
        memmove(c->out, c->out + c->out_off, out_pending(c));
        c->out_len -= c->out_off;
        c->out_off = 0;
    }
    if (c->out_len + n > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 4096;
        while (cap < c->out_len + n) {
            cap *= 2;
        }
        char *o = realloc(c->out, cap);
        if (!o) {
            return -ENOMEM;
        }
        c->out = o;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
    return 0;
}

static void on_write_timeout(loop_t *loop, uint64_t id, void *arg);

/* A half-closed client that has every reply: nothing more will happen. */
static bool conn_done(const struct conn *c)
{
    return c->eof && c->nrp == 0 && out_pending(c) == 0 && !c->stalled;
}

/* Write what the socket takes. Returns false if c was dropped. */
static bool conn_flush(struct conn *c)
{
    socket_server_t *s = c->srv;
    while (out_pending(c) > 0) {
        ssize_t n = send(c->fd, c->out + c->out_off, out_pending(c), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            c->out_off += (size_t)n;
            c->last_progress_ms = loop_now_ms(s->loop);
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        }
        /* EPIPE, ECONNRESET: the client is gone; what it sent stays stored. */
        LOG_DEBUG("socket", "client %llu: write: %s", (unsigned long long)c->serial,
                  n < 0 ? strerror(errno) : "closed");
        conn_drop(c);
        return false;
    }
    if (out_pending(c) == 0) {
        c->out_off = c->out_len = 0;
        if (c->out_cap > SOCKET_OUT_HIGH) {
            /* A burst is over: do not keep its buffer for the connection's life. */
            free(c->out);
            c->out = NULL;
            c->out_cap = 0;
        }
        if (c->wtimer) {
            loop_timer_cancel(s->loop, c->wtimer);
            c->wtimer = 0;
        }
        if (conn_done(c)) {
            conn_drop(c);
            return false;
        }
    } else if (!c->wtimer) {
        c->wtimer = loop_timer_add(s->loop, s->write_timeout_ms, on_write_timeout, c);
    }
    conn_set_events(c);
    return true;
}

static void on_write_timeout(loop_t *loop, uint64_t id, void *arg)
{
    (void)id;
    struct conn *c = arg;
    socket_server_t *s = c->srv;
    c->wtimer = 0;
    if (c->fd < 0 || out_pending(c) == 0) {
        return;
    }
    uint64_t idle = loop_now_ms(loop) - c->last_progress_ms;
    if (idle < s->write_timeout_ms) {
        c->wtimer = loop_timer_add(loop, s->write_timeout_ms - idle, on_write_timeout, c);
        return;
    }
    s->st.slow_disconnects++;
    LOG_WARN("socket",
             "client %llu (pid %ld) read none of its replies for %llums "
             "(%zu bytes waiting): disconnected",
             (unsigned long long)c->serial, c->pid, (unsigned long long)idle, out_pending(c));
    conn_drop(c);
}

/* --- replies ------------------------------------------------------------- */

/* Room for one more reply of this round. false on ENOMEM. */
static bool reply_reserve(struct conn *c)
{
    if (c->nrp < c->cap_rp) {
        return true;
    }
    unsigned cap = c->cap_rp ? c->cap_rp * 2 : 8;
    cap = cap > SOCKET_BATCH_MAX ? SOCKET_BATCH_MAX : cap;
    if (cap <= c->cap_rp) {
        return false;
    }
    struct reply *r = realloc(c->rp, cap * sizeof(*r));
    if (!r) {
        return false;
    }
    c->rp = r;
    c->cap_rp = cap;
    return true;
}

/* The next reply slot; process_input reserved it (one per line at most). */
static struct reply *reply_new(struct conn *c, enum reply_kind kind)
{
    struct reply *r = &c->rp[c->nrp++];
    memset(r, 0, sizeof(*r));
    r->kind = kind;
    return r;
}

static void reply_error(struct conn *c, const char *code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Queue an error reply. field may be NULL or "". */
static void reply_error(struct conn *c, const char *code, const char *field, const char *fmt, ...)
{
    struct reply *r = reply_new(c, R_ERROR);
    r->code = code;
    snprintf(r->field, sizeof(r->field), "%s", field ? field : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->detail, sizeof(r->detail), fmt, ap);
    va_end(ap);
}

/* Render {"ok":false,...}; id may be NULL. 0 or negative (out_append). */
static int render_error(struct conn *c, const char *code, const char *field, const char *detail,
                        const char *id)
{
    cJSON *o = cJSON_CreateObject();
    int rc = -ENOMEM;
    if (!o || !cJSON_AddFalseToObject(o, "ok") || !cJSON_AddStringToObject(o, "error", code)) {
        goto out;
    }
    if (id && id[0] && !cJSON_AddStringToObject(o, "id", id)) {
        goto out;
    }
    if (field && field[0] && !cJSON_AddStringToObject(o, "field", field)) {
        goto out;
    }
    if (detail && detail[0] && !cJSON_AddStringToObject(o, "detail", detail)) {
        goto out;
    }
    char *txt = cJSON_PrintUnformatted(o);
    if (txt) {
        size_t n = strlen(txt);
        txt[n] = '\n'; /* replaces the NUL; length known, not printed as a string */
        rc = out_append(c, txt, n + 1);
        free(txt);
    }
out:
    cJSON_Delete(o);
    return rc;
}

static int render_status(struct conn *c)
{
    socket_server_t *s = c->srv;
    cJSON *st = s->ops.status ? s->ops.status(s->ops.arg) : NULL;
    cJSON *o = cJSON_CreateObject();
    if (!st || !o || !cJSON_AddTrueToObject(o, "ok")) {
        cJSON_Delete(st);
        cJSON_Delete(o);
        return render_error(c, "internal", NULL, "out of memory", NULL);
    }
    cJSON_AddItemToObject(o, "status", st);
    char *txt = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!txt) {
        return render_error(c, "internal", NULL, "out of memory", NULL);
    }
    size_t n = strlen(txt);
    txt[n] = '\n';
    int rc = out_append(c, txt, n + 1);
    free(txt);
    return rc;
}

/* {"ok":true,"id":"..",<the lookup's members: "local", "outbox", "hub">}
 * for what the agent knows of a notification, or not_found. */
static int render_local(struct conn *c, const char *id)
{
    socket_server_t *s = c->srv;
    cJSON *rows = NULL;
    int rc = s->ops.lookup ? s->ops.lookup(s->ops.arg, id, &rows) : TDG_ENOTFOUND;
    if (rc == TDG_ENOTFOUND) {
        return render_error(c, "not_found", "id",
                            "not known here: never sent through this agent, no receipt from the "
                            "hub yet, or pruned (deliver.retention, receipts.retention)",
                            id);
    }
    if (rc < 0) {
        return render_error(c, "storage", NULL, tdg_strerror(rc), id);
    }
    cJSON *o = cJSON_CreateObject();
    if (!o || !cJSON_AddTrueToObject(o, "ok") || !cJSON_AddStringToObject(o, "id", id)) {
        cJSON_Delete(rows);
        cJSON_Delete(o);
        return render_error(c, "internal", NULL, "out of memory", NULL);
    }
    /* Move the lookup's members into the reply. */
    while (rows && rows->child) {
        cJSON *m = cJSON_DetachItemViaPointer(rows, rows->child);
        cJSON_AddItemToObject(o, m->string, m); /* copies the key, then frees the old */
    }
    cJSON_Delete(rows);
    char *txt = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!txt) {
        return render_error(c, "internal", NULL, "out of memory", NULL);
    }
    size_t n = strlen(txt);
    txt[n] = '\n';
    rc = out_append(c, txt, n + 1);
    free(txt);
    return rc;
}

/* Resolve one send against the round's commit: count, and render unless
 * the client is gone. */
static int resolve_send(struct conn *c, struct reply *r, int commit_rc)
{
    struct ingest_stats *in = &c->srv->st.in;
    const char *id = r->item.id;
    if (!r->stored) {
        /* Not reachable when store() ran before committed(); refuse safely. */
        in->errors++;
        return c->fd < 0 ? 0 : render_error(c, "storage", NULL, "not stored", id);
    }
    if (r->rc == 0 || r->rc == TDG_EDUPLICATE) {
        if (commit_rc < 0) {
            /* Rolled back: nothing of this round was accepted, duplicates of
             * rows added in the same round included. */
            if (r->rc == 0) {
                in->accepted--;
            } else {
                in->duplicates--;
            }
            in->errors++;
            return c->fd < 0 ? 0 : render_error(c, "storage", NULL, tdg_strerror(commit_rc), id);
        }
        if (c->fd < 0) {
            return 0;
        }
        char line[PROTO_ID_MAX + 64];
        int n = snprintf(line, sizeof(line), "{\"ok\":true,\"id\":\"%s\",\"duplicate\":%s}\n", id,
                         r->rc == TDG_EDUPLICATE ? "true" : "false");
        return out_append(c, line, (size_t)n);
    }
    if (c->fd < 0) {
        return 0;
    }
    if (r->rc == TDG_EFULL) {
        return render_error(c, "full", NULL,
                            "queue over budget (outbox.max_rows/max_bytes; deliver.max_rows for "
                            "to:local)",
                            id);
    }
    return render_error(c, "storage", NULL, tdg_strerror(r->rc), id);
}

/* --- requests ------------------------------------------------------------ */

static size_t skip_ws(const char *p, size_t len, size_t i)
{
    while (i < len && (p[i] == ' ' || p[i] == '\t' || p[i] == '\r' || p[i] == '\n')) {
        i++;
    }
    return i;
}

/* p[i] is '"'. Index after the closing quote, or 0 if the string is bad. */
static size_t skip_string(const char *p, size_t len, size_t i)
{
    for (i++; i < len; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch == '"') {
            return i + 1;
        }
        if (ch == '\\') {
            i++;
        } else if (ch < 0x20) {
            return 0;
        }
    }
    return 0;
}

/*
 * Index after the JSON value at p[i], or 0. Structural only (strings,
 * brackets, scalar tokens): the envelope needs the extent of its members;
 * the notification's bytes are checked strictly by proto_parse afterwards.
 */
static size_t skip_value(const char *p, size_t len, size_t i)
{
    char closer[SCAN_DEPTH_MAX];
    int depth = 0;
    do {
        i = skip_ws(p, len, i);
        if (i >= len) {
            return 0;
        }
        char ch = p[i];
        if (ch == '"') {
            if (!(i = skip_string(p, len, i))) {
                return 0;
            }
        } else if (ch == '{' || ch == '[') {
            if (depth == SCAN_DEPTH_MAX) {
                return 0;
            }
            closer[depth++] = ch == '{' ? '}' : ']';
            i++;
        } else if (ch == '}' || ch == ']') {
            if (depth == 0 || closer[depth - 1] != ch) {
                return 0;
            }
            depth--;
            i++;
        } else if (ch == ',' || ch == ':') {
            if (depth == 0) {
                return 0;
            }
            i++;
        } else {
            size_t start = i;
            while (i < len && p[i] && strchr("+-.0123456789eEtruefalsn", p[i])) {
                i++;
            }
            if (i == start) {
                return 0;
            }
        }
    } while (depth > 0);
    return i;
}

struct request {
    int op_type; /* 0 absent, 1 string, 2 another type */
    const char *op;
    size_t op_len;
    int id_type; /* "id" of the local op: as op_type */
    const char *id;
    size_t id_len;
    const char *nt; /* the notification's bytes, as sent */
    size_t nt_len;
};

static bool key_is(const char *k, size_t klen, const char *want)
{
    return klen == strlen(want) && memcmp(k, want, klen) == 0;
}

static int bad_request(struct proto_error *e, enum proto_reason r, const char *field,
                       const char *detail)
{
    e->reason = r;
    snprintf(e->field, sizeof(e->field), "%s", field);
    snprintf(e->detail, sizeof(e->detail), "%s", detail);
    return TDG_EINVAL_INPUT;
}

/*
 * Find "op" and "notification" in a request line. Keys are matched as
 * written (no escapes); other members are skipped, so newer clients may add
 * some. 0, or TDG_EINVAL_INPUT with e filled.
 */
static int scan_request(const char *p, size_t len, struct request *rq, struct proto_error *e)
{
    memset(rq, 0, sizeof(*rq));
    size_t i = skip_ws(p, len, 0);
    if (i >= len || p[i] != '{') {
        size_t end = i < len ? skip_value(p, len, i) : 0;
        if (end && skip_ws(p, len, end) == len) {
            return bad_request(e, PROTO_R_NOT_OBJECT, "op", "a request is a JSON object");
        }
        return bad_request(e, PROTO_R_MALFORMED_JSON, "op",
                           "a request is one JSON object per line");
    }
    i = skip_ws(p, len, i + 1);
    if (i < len && p[i] == '}') {
        i++;
    } else {
        for (;;) {
            if (i >= len || p[i] != '"') {
                return bad_request(e, PROTO_R_MALFORMED_JSON, "op", "expected a member name");
            }
            size_t ks = i + 1;
            if (!(i = skip_string(p, len, i))) {
                return bad_request(e, PROTO_R_MALFORMED_JSON, "op", "bad member name");
            }
            size_t klen = i - 1 - ks;
            i = skip_ws(p, len, i);
            if (i >= len || p[i] != ':') {
                return bad_request(e, PROTO_R_MALFORMED_JSON, "op", "expected ':'");
            }
            size_t vs = skip_ws(p, len, i + 1);
            size_t ve = skip_value(p, len, vs);
            if (!ve) {
                return bad_request(e, PROTO_R_MALFORMED_JSON, "op", "bad or truncated value");
            }
            if (key_is(p + ks, klen, "op")) {
                if (rq->op_type) {
                    return bad_request(e, PROTO_R_DUPLICATE_KEY, "op", "op given twice");
                }
                rq->op_type = p[vs] == '"' ? 1 : 2;
                rq->op = p + vs + 1;
                rq->op_len = ve - vs >= 2 ? ve - vs - 2 : 0;
            } else if (key_is(p + ks, klen, "id")) {
                if (rq->id_type) {
                    return bad_request(e, PROTO_R_DUPLICATE_KEY, "id", "id given twice");
                }
                rq->id_type = p[vs] == '"' ? 1 : 2;
                rq->id = p + vs + 1;
                rq->id_len = ve - vs >= 2 ? ve - vs - 2 : 0;
            } else if (key_is(p + ks, klen, "notification")) {
                if (rq->nt) {
                    return bad_request(e, PROTO_R_DUPLICATE_KEY, "notification",
                                       "notification given twice");
                }
                rq->nt = p + vs;
                rq->nt_len = ve - vs;
            }
            i = skip_ws(p, len, ve);
            if (i < len && p[i] == ',') {
                i = skip_ws(p, len, i + 1);
                continue;
            }
            if (i < len && p[i] == '}') {
                i++;
                break;
            }
            return bad_request(e, PROTO_R_MALFORMED_JSON, "op", "expected ',' or '}'");
        }
    }
    if (skip_ws(p, len, i) != len) {
        return bad_request(e, PROTO_R_MALFORMED_JSON, "op", "trailing data after the request");
    }
    return 0;
}

/* Handle one complete line (newline excluded). Queues at most one reply. */
static void handle_line(struct conn *c, const char *p, size_t len)
{
    socket_server_t *s = c->srv;
    if (skip_ws(p, len, 0) == len) {
        return; /* a blank line is not a request */
    }
    struct request rq;
    struct proto_error pe;
    memset(&pe, 0, sizeof(pe));
    int rc = scan_request(p, len, &rq, &pe);
    if (rc == 0 && rq.op_type == 0) {
        rc = bad_request(&pe, PROTO_R_MISSING_FIELD, "op", "op is required: send, status or lookup");
    } else if (rc == 0 && rq.op_type == 2) {
        rc = bad_request(&pe, PROTO_R_WRONG_TYPE, "op",
                         "op must be a string: send, status or lookup");
    }
    if (rc == 0 && key_is(rq.op, rq.op_len, "status")) {
        s->st.status_requests++;
        reply_new(c, R_STATUS);
        return;
    }
    if (rc == 0 && (key_is(rq.op, rq.op_len, "lookup") || key_is(rq.op, rq.op_len, "local"))) {
        /* Ids are 1..64 of [A-Za-z0-9._:-]: no escapes, so the bytes between
         * the quotes are the id. */
        char id[PROTO_ID_MAX + 1];
        if (rq.id_type == 0) {
            rc = bad_request(&pe, PROTO_R_MISSING_FIELD, "id", "lookup needs the notification's id");
        } else if (rq.id_type == 2) {
            rc = bad_request(&pe, PROTO_R_WRONG_TYPE, "id", "id must be a string");
        } else if (rq.id_len == 0 || rq.id_len > PROTO_ID_MAX) {
            rc = bad_request(&pe, PROTO_R_BAD_VALUE, "id", "1..64 of [A-Za-z0-9._:-]");
        } else {
            memcpy(id, rq.id, rq.id_len);
            id[rq.id_len] = '\0';
            if (!proto_id_valid(id)) {
                rc = bad_request(&pe, PROTO_R_BAD_VALUE, "id", "1..64 of [A-Za-z0-9._:-]");
            }
        }
        if (rc == 0) {
            s->st.status_requests++;
            struct reply *r = reply_new(c, R_LOCAL);
            snprintf(r->item.id, sizeof(r->item.id), "%s", id);
            return;
        }
    }
    if (rc == 0 && !key_is(rq.op, rq.op_len, "send")) {
        rc =
            bad_request(&pe, PROTO_R_BAD_VALUE, "op", "unknown op; expected send, status or lookup");
    } else if (rc == 0 && !rq.nt) {
        rc = bad_request(&pe, PROTO_R_MISSING_FIELD, "notification",
                         "send needs a notification object");
    }
    if (rc < 0) {
        s->st.in.received++;
        s->st.in.invalid++;
        LOG_WARN("socket", "client %llu: bad request (%zu bytes): %s field=%s %s",
                 (unsigned long long)c->serial, len, proto_reason_code(pe.reason), pe.field,
                 pe.detail);
        reply_error(c, proto_reason_code(pe.reason), pe.field, "%s", pe.detail);
        return;
    }
    struct reply *r = reply_new(c, R_SEND);
    struct ingest_result res;
    rc = ingest_prepare("socket", rq.nt, rq.nt_len, &r->item, &res, &s->st.in);
    if (rc == TDG_EINVAL_INPUT || rc == TDG_ETOOBIG) {
        r->kind = R_ERROR;
        r->code = proto_reason_code(res.perr.reason);
        snprintf(r->field, sizeof(r->field), "%s", res.perr.field);
        snprintf(r->detail, sizeof(r->detail), "%s", res.perr.detail);
    } else if (rc < 0) {
        r->kind = R_ERROR;
        r->code = "internal";
        snprintf(r->detail, sizeof(r->detail), "%s", tdg_strerror(rc));
    } else {
        s->pending_bytes += r->item.len;
    }
}

/*
 * Turn complete lines into requests until a bound is reached (requests per
 * round, the client's reply backlog, prepared bytes overall); then the rest
 * waits in `in` and c->stalled says so. Returns false if c was dropped (out
 * of memory for its replies: dropping beats answering out of order).
 */
static bool process_input(struct conn *c)
{
    socket_server_t *s = c->srv;
    size_t pos = 0;
    c->stalled = false;
    while (pos < c->in_len) {
        if (c->nrp >= SOCKET_BATCH_MAX || out_pending(c) >= SOCKET_OUT_HIGH ||
            s->pending_bytes >= PENDING_BYTES_MAX) {
            c->stalled = true;
            break;
        }
        const char *start = c->in + pos;
        size_t avail = c->in_len - pos;
        const char *nl = memchr(start, '\n', avail);
        if (c->discarding) {
            if (!nl) {
                pos = c->in_len;
                break;
            }
            pos += (size_t)(nl - start) + 1;
            c->discarding = false;
            continue;
        }
        size_t line;
        if (nl) {
            line = (size_t)(nl - start);
        } else if (avail > SOCKET_LINE_MAX) {
            line = avail; /* over-long and still going: answer now, skip the rest */
            c->discarding = true;
        } else if (c->eof) {
            line = avail; /* the last line may lack its newline */
        } else {
            break;
        }
        if (!reply_reserve(c)) {
            LOG_ERROR("socket", "client %llu: out of memory for replies: disconnected",
                      (unsigned long long)c->serial);
            conn_drop(c);
            return false;
        }
        if (line > SOCKET_LINE_MAX) {
            s->st.in.received++;
            s->st.in.invalid++;
            LOG_WARN("socket", "client %llu: request line over %d bytes: too_large",
                     (unsigned long long)c->serial, SOCKET_LINE_MAX);
            reply_error(c, "too_large", NULL, "a request line is at most %d bytes",
                        SOCKET_LINE_MAX);
        } else {
            size_t l = line;
            if (l > 0 && start[l - 1] == '\r') {
                l--;
            }
            handle_line(c, start, l);
        }
        pos += line + (nl ? 1 : 0);
    }
    if (pos > 0) {
        memmove(c->in, c->in + pos, c->in_len - pos);
        c->in_len -= pos;
    }
    return true;
}

/* Read once (level-triggered: more data wakes us again). false if dropped. */
static bool conn_read(struct conn *c)
{
    ssize_t n;
    do {
        n = recv(c->fd, c->in + c->in_len, IN_CAP - c->in_len, MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    if (n > 0) {
        c->in_len += (size_t)n;
    } else if (n == 0) {
        c->eof = true;
    } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
        LOG_DEBUG("socket", "client %llu: read: %s", (unsigned long long)c->serial,
                  strerror(errno));
        conn_drop(c);
        return false;
    }
    if (!process_input(c)) {
        return false;
    }
    if (conn_done(c)) {
        conn_drop(c);
        return false;
    }
    return true;
}

static void on_conn_event(loop_t *loop, int fd, unsigned events, void *arg)
{
    (void)loop;
    (void)fd;
    struct conn *c = arg;
    if ((events & (LOOP_WRITE | LOOP_ERROR)) && out_pending(c) > 0) {
        if (!conn_flush(c)) {
            return;
        }
        /* The client caught up: take its waiting lines. */
        if (c->stalled && out_pending(c) < SOCKET_OUT_HIGH && !process_input(c)) {
            return;
        }
    }
    if ((events & (LOOP_READ | LOOP_ERROR)) && conn_can_read(c)) {
        if (!conn_read(c)) {
            return;
        }
    }
    conn_set_events(c);
}

static void conn_new(socket_server_t *s, int fd)
{
    struct conn *c = calloc(1, sizeof(*c));
    char *in = malloc(IN_CAP);
    if (!c || !in) {
        free(c);
        free(in);
        close(fd);
        LOG_ERROR("socket", "out of memory for a new client");
        return;
    }
    c->srv = s;
    c->fd = fd;
    c->in = in;
    c->serial = ++s->next_serial;
    struct ucred cred;
    socklen_t clen = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) == 0) {
        c->pid = (long)cred.pid;
    }
    if (loop_fd_add(s->loop, fd, LOOP_READ, on_conn_event, c) < 0) {
        free(in);
        free(c);
        close(fd);
        LOG_ERROR("socket", "cannot watch a new client");
        return;
    }
    c->events = LOOP_READ;
    c->next = s->conns;
    if (s->conns) {
        s->conns->prev = c;
    }
    s->conns = c;
    s->nconns++;
    s->st.connections++;
    LOG_DEBUG("socket", "client %llu connected (pid %ld)", (unsigned long long)c->serial, c->pid);
}

static void on_accept(loop_t *loop, int fd, unsigned events, void *arg);

static void on_accept_retry(loop_t *loop, uint64_t id, void *arg)
{
    (void)id;
    socket_server_t *s = arg;
    s->accept_timer = 0;
    loop_fd_mod(loop, s->lfd, LOOP_READ);
}

static void refuse_busy(socket_server_t *s, int fd)
{
    char line[128];
    int n = snprintf(line, sizeof(line),
                     "{\"ok\":false,\"error\":\"busy\",\"detail\":\"too many clients (%u)\"}\n",
                     s->max_clients);
    /* Best effort: a fresh socket's buffer takes one short line. */
    if (send(fd, line, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
        LOG_DEBUG("socket", "busy reply: %s", strerror(errno));
    }
    close(fd);
    s->st.refused_busy++;
    if (!s->busy_logged) {
        LOG_WARN("socket", "max_clients=%u reached: refusing new clients with busy",
                 s->max_clients);
        s->busy_logged = true;
    }
}

static void on_accept(loop_t *loop, int fd, unsigned events, void *arg)
{
    (void)fd;
    (void)events;
    socket_server_t *s = arg;
    for (int k = 0; k < ACCEPT_BURST; k++) {
        int cfd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) {
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                return;
            }
            /* EMFILE, ENFILE, ENOBUFS, ENOMEM: the pending connection keeps
             * the listener readable; pause instead of spinning. */
            if (!s->accept_err_logged) {
                LOG_ERROR("socket", "accept on %s: %s; pausing new clients for %dms", s->path,
                          strerror(errno), ACCEPT_RETRY_MS);
                s->accept_err_logged = true;
            }
            if (loop_fd_mod(loop, s->lfd, 0) == 0 && !s->accept_timer) {
                s->accept_timer = loop_timer_add(loop, ACCEPT_RETRY_MS, on_accept_retry, s);
            }
            return;
        }
        s->accept_err_logged = false;
        if (s->nconns >= s->max_clients) {
            refuse_busy(s, cfd);
            continue;
        }
        conn_new(s, cfd);
    }
}

/* --- round: store, then answer ------------------------------------------- */

unsigned socket_server_store(socket_server_t *s)
{
    unsigned added = 0;
    int fail = 0;
    for (struct conn *c = s->conns; c; c = c->next) {
        for (unsigned i = 0; i < c->nrp; i++) {
            struct reply *r = &c->rp[i];
            if (r->kind != R_SEND || r->stored) {
                continue;
            }
            r->rc = fail ? fail : s->ops.queue(s->ops.arg, &r->item);
            switch (r->rc) {
            case 0:
                s->st.in.accepted++;
                added++;
                break;
            case TDG_EDUPLICATE:
                s->st.in.duplicates++;
                break;
            case TDG_EFULL:
                s->st.in.full++;
                break;
            default:
                s->st.in.errors++;
                fail = r->rc;
                break;
            }
            s->pending_bytes -= r->item.len;
            ingest_item_free(&r->item);
            r->stored = true;
        }
    }
    return added;
}

static void on_resume(loop_t *loop, uint64_t id, void *arg)
{
    (void)loop;
    (void)id;
    socket_server_t *s = arg;
    s->resume_timer = 0;
    struct conn *next;
    for (struct conn *c = s->conns; c; c = next) {
        next = c->next;
        if (c->fd >= 0 && c->stalled) {
            if (!process_input(c)) {
                continue;
            }
            if (conn_done(c)) {
                conn_drop(c);
                continue;
            }
            conn_set_events(c);
        }
    }
}

void socket_server_committed(socket_server_t *s, int commit_rc)
{
    bool more = false;
    struct conn *next;
    for (struct conn *c = s->conns; c; c = next) {
        next = c->next;
        for (unsigned i = 0; i < c->nrp; i++) {
            struct reply *r = &c->rp[i];
            int rc = 0;
            if (r->kind == R_SEND) {
                rc = resolve_send(c, r, commit_rc);
            } else if (c->fd < 0) {
                rc = 0;
            } else if (r->kind == R_STATUS) {
                rc = render_status(c);
            } else if (r->kind == R_LOCAL) {
                rc = render_local(c, r->item.id);
            } else {
                rc = render_error(c, r->code, r->field, r->detail, NULL);
            }
            if (rc < 0 && c->fd >= 0) {
                LOG_WARN("socket",
                         "client %llu (pid %ld): reply backlog over %d bytes: "
                         "disconnected",
                         (unsigned long long)c->serial, c->pid, SOCKET_OUT_MAX);
                conn_shutdown(c);
            }
            ingest_item_free(&r->item);
        }
        c->nrp = 0;
        if (c->fd < 0) {
            conn_free(c);
            continue;
        }
        if (!conn_flush(c)) {
            continue;
        }
        if (c->stalled && out_pending(c) < SOCKET_OUT_HIGH) {
            more = true;
        }
    }
    /* Lines left waiting by a bound: take them in the next iteration (the
     * loop is about to sleep, and no fd may wake it for them). */
    if (more && !s->resume_timer) {
        s->resume_timer = loop_timer_add(s->loop, 0, on_resume, s);
    }
}

/* --- lifetime ------------------------------------------------------------ */

/* Is someone accepting on path? 1 yes, 0 no (stale), or -errno. */
static int probe_live(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -errno;
    }
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int rc = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
    int e = errno;
    close(fd);
    if (rc == 0 || e == EAGAIN || e == EINPROGRESS) {
        return 1;
    }
    if (e == ECONNREFUSED || e == ENOENT) {
        return 0;
    }
    return -e;
}

int socket_server_create(loop_t *loop, const struct socket_opts *o, const struct socket_ops *ops,
                         socket_server_t **out, char *err, size_t errlen)
{
    if (!o->path || !o->path[0] || strlen(o->path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        snprintf(err, errlen, "socket.path '%s': 1..%zu bytes", o->path ? o->path : "",
                 sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
        return TDG_ECONFIG;
    }
    if (o->max_clients < 1 || o->write_timeout_ms < 1 || !ops->queue) {
        snprintf(err, errlen, "socket: max_clients and write_timeout must be positive");
        return TDG_ECONFIG;
    }
    socket_server_t *s = calloc(1, sizeof(*s));
    if (!s) {
        return -ENOMEM;
    }
    s->loop = loop;
    s->ops = *ops;
    s->lfd = s->lockfd = -1;
    s->max_clients = o->max_clients;
    s->write_timeout_ms = o->write_timeout_ms;
    s->st.max_clients = o->max_clients;
    snprintf(s->path, sizeof(s->path), "%s", o->path);
    snprintf(s->lock_path, sizeof(s->lock_path), "%s.lock", o->path);

    int rc;
    /* The lock makes "is it stale?" race-free: two agents starting at once
     * cannot both decide to replace the file. */
    s->lockfd = open(s->lock_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (s->lockfd < 0) {
        rc = -errno;
        snprintf(err, errlen, "socket lock %s: %s", s->lock_path, strerror(errno));
        goto fail;
    }
    if (flock(s->lockfd, LOCK_EX | LOCK_NB) < 0) {
        rc = -errno;
        if (errno == EWOULDBLOCK) {
            snprintf(err, errlen,
                     "socket %s: another tidings-agent is running on it (%s is locked)", s->path,
                     s->lock_path);
            rc = -EADDRINUSE;
        } else {
            snprintf(err, errlen, "socket lock %s: %s", s->lock_path, strerror(errno));
        }
        goto fail;
    }
    struct stat sb;
    if (lstat(s->path, &sb) == 0) {
        if (!S_ISSOCK(sb.st_mode)) {
            snprintf(err, errlen, "socket %s: exists and is not a socket; not replacing it",
                     s->path);
            rc = -EEXIST;
            goto fail;
        }
        int live = probe_live(s->path);
        if (live != 0) {
            rc = live > 0 ? -EADDRINUSE : live;
            snprintf(err, errlen, "socket %s: %s", s->path,
                     live > 0 ? "another program is listening on it" : strerror(-live));
            goto fail;
        }
        if (unlink(s->path) < 0 && errno != ENOENT) {
            rc = -errno;
            snprintf(err, errlen, "socket %s: cannot remove the stale socket: %s", s->path,
                     strerror(errno));
            goto fail;
        }
        LOG_INFO("socket", "removed stale socket %s (left by an agent that did not stop cleanly)",
                 s->path);
    } else if (errno != ENOENT) {
        rc = -errno;
        snprintf(err, errlen, "socket %s: %s", s->path, strerror(errno));
        goto fail;
    }

    s->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->lfd < 0) {
        rc = -errno;
        snprintf(err, errlen, "socket: %s", strerror(errno));
        goto fail;
    }
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path, s->path, strlen(s->path) + 1);
    /* The file is created by bind with the umask applied: 0600 from the
     * first instant, so no other user can connect in between. The process
     * is single-threaded, so the umask change affects nothing else. */
    mode_t old = umask(0177);
    int b = bind(s->lfd, (struct sockaddr *)&sa, sizeof(sa));
    int be = errno;
    umask(old);
    if (b < 0) {
        rc = -be;
        snprintf(err, errlen, "socket %s: bind: %s", s->path, strerror(be));
        goto fail;
    }
    s->bound = true;
    if (chmod(s->path, 0600) < 0 || listen(s->lfd, 128) < 0) {
        rc = -errno;
        snprintf(err, errlen, "socket %s: %s", s->path, strerror(errno));
        goto fail;
    }
    if ((rc = loop_fd_add(loop, s->lfd, LOOP_READ, on_accept, s)) < 0) {
        snprintf(err, errlen, "socket %s: event loop: %s", s->path, tdg_strerror(rc));
        goto fail;
    }
    LOG_INFO("socket", "listening on %s (mode 0600, max_clients=%u)", s->path, s->max_clients);
    *out = s;
    return 0;
fail:
    socket_server_destroy(s);
    return rc;
}

void socket_server_destroy(socket_server_t *s)
{
    if (!s) {
        return;
    }
    while (s->conns) {
        conn_free(s->conns);
    }
    if (s->resume_timer) {
        loop_timer_cancel(s->loop, s->resume_timer);
    }
    if (s->accept_timer) {
        loop_timer_cancel(s->loop, s->accept_timer);
    }
    if (s->lfd >= 0) {
        loop_fd_del(s->loop, s->lfd);
        close(s->lfd);
    }
    /* Only the holder of the lock removes the file: it is ours. */
    if (s->bound) {
        unlink(s->path);
    }
    if (s->lockfd >= 0) {
        close(s->lockfd);
    }
    free(s);
}

void socket_server_get_stats(const socket_server_t *s, struct socket_stats *st)
{
    *st = s->st;
    st->clients = s->nconns;
}
