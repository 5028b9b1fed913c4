/*
 * test_socket.c - the agent's unix socket protocol (agent/socket.h) against a
 * real outbox in a temporary directory.
 *
 * The server runs on its own loop in a second thread, exactly as the agent
 * drives it (store, one commit, committed, in a before-sleep hook); the test
 * thread is the client, with plain blocking sockets, and is the only thread
 * that asserts. Nothing is shared while the loop runs except the injected
 * commit failure (atomic); stats are read after the loop thread has ended.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "cli.h"
#include "error.h"
#include "ingest.h"
#include "loop.h"
#include "outbox.h"
#include "socket.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define WAIT_MS 5000

/* snprintf that fails the test instead of truncating. */
#define FMT(buf, ...) assert_true(snprintf(buf, sizeof(buf), __VA_ARGS__) < (int)sizeof(buf))

struct harness {
    char dir[64], sock[128], db[128];
    loop_t *loop;
    outbox_t *ob;
    socket_server_t *srv;
    pthread_t th;
    int stop[2];
    atomic_int inject;      /* next round with rows reports this commit result */
    size_t status_pad;      /* bytes of padding in each status reply */
    struct socket_stats st; /* after stop */
};

static struct harness H;

/* --- server side (loop thread) ------------------------------------------- */

static int h_queue(void *arg, const struct ingest_item *it)
{
    struct harness *h = arg;
    return ingest_queue(h->ob, "socket", it, NULL);
}

static cJSON *h_status(void *arg)
{
    struct harness *h = arg;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddTrueToObject(o, "test");
    if (h->status_pad) {
        char *pad = malloc(h->status_pad + 1);
        memset(pad, 'p', h->status_pad);
        pad[h->status_pad] = '\0';
        cJSON_AddStringToObject(o, "pad", pad);
        free(pad);
    }
    return o;
}

/* The local delivery lookup: one fixed row for "known", nothing else. */
static int h_lookup(void *arg, const char *id, cJSON **out)
{
    (void)arg;
    if (strcmp(id, "known") != 0) {
        return TDG_ENOTFOUND;
    }
    cJSON *a = cJSON_CreateArray();
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "backend", "exec");
    cJSON_AddStringToObject(o, "state", "pending");
    cJSON_AddStringToObject(o, "rule", "quiet_hours");
    cJSON_AddItemToArray(a, o);
    /* The agent's lookup answers an object whose members the reply carries. */
    cJSON *r = cJSON_CreateObject();
    cJSON_AddItemToObject(r, "local", a);
    cJSON *hub = cJSON_AddObjectToObject(r, "hub");
    cJSON_AddStringToObject(hub, "state", "delivered");
    *out = r;
    return 0;
}

static void h_hook(loop_t *loop, void *arg)
{
    (void)loop;
    struct harness *h = arg;
    unsigned added = socket_server_store(h->srv);
    int rc = outbox_commit(h->ob);
    if (added > 0 && rc == 0) {
        rc = atomic_exchange(&h->inject, 0);
    }
    socket_server_committed(h->srv, rc);
}

static void h_on_stop(loop_t *loop, int fd, unsigned events, void *arg)
{
    (void)fd;
    (void)events;
    (void)arg;
    loop_stop(loop);
}

static void *h_run(void *arg)
{
    struct harness *h = arg;
    loop_run(h->loop);
    return NULL;
}

/* Start a server: max_clients, write timeout, outbox row budget (0: none),
 * bytes of padding in status replies. */
static void h_start_pad(unsigned max_clients, uint64_t write_timeout_ms, uint64_t max_rows,
                        size_t status_pad)
{
    struct harness *h = &H;
    memset(h, 0, sizeof(*h));
    h->status_pad = status_pad;
    snprintf(h->dir, sizeof(h->dir), "/tmp/tidings-sock-XXXXXX");
    assert_non_null(mkdtemp(h->dir));
    FMT(h->sock, "%s/agent.sock", h->dir);
    FMT(h->db, "%s/outbox.db", h->dir);
    h->loop = loop_create();
    assert_non_null(h->loop);
    char err[256];
    struct outbox_limits lim = {.max_rows = max_rows};
    if (outbox_open(h->db, DB_SYNC_NORMAL, &lim, &h->ob, err, sizeof(err)) < 0) {
        fail_msg("outbox_open: %s", err);
    }
    struct socket_opts o = {
        .path = h->sock, .max_clients = max_clients, .write_timeout_ms = write_timeout_ms};
    struct socket_ops ops = {.queue = h_queue, .status = h_status, .lookup = h_lookup, .arg = h};
    if (socket_server_create(h->loop, &o, &ops, &h->srv, err, sizeof(err)) < 0) {
        fail_msg("socket_server_create: %s", err);
    }
    assert_int_equal(loop_before_sleep(h->loop, h_hook, h), 0);
    assert_int_equal(pipe(h->stop), 0);
    assert_int_equal(loop_fd_add(h->loop, h->stop[0], LOOP_READ, h_on_stop, h), 0);
    assert_int_equal(pthread_create(&h->th, NULL, h_run, h), 0);
}

static void h_start(unsigned max_clients, uint64_t write_timeout_ms, uint64_t max_rows)
{
    h_start_pad(max_clients, write_timeout_ms, max_rows, 0);
}

static void rm_dir(const char *dir)
{
    char p[192];
    static const char *const names[] = {"agent.sock",    "agent.sock.lock", "outbox.db",
                                        "outbox.db-wal", "outbox.db-shm",   "other.sock",
                                        "plain-file"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        FMT(p, "%s/%s", dir, names[i]);
        unlink(p);
    }
    rmdir(dir);
}

/* Stop the loop, keep the stats, tear everything down. */
static void h_stop(void)
{
    struct harness *h = &H;
    assert_int_equal(write(h->stop[1], "x", 1), 1);
    pthread_join(h->th, NULL);
    socket_server_get_stats(h->srv, &h->st);
    loop_fd_del(h->loop, h->stop[0]);
    close(h->stop[0]);
    close(h->stop[1]);
    socket_server_destroy(h->srv);
    outbox_close(h->ob);
    loop_destroy(h->loop);
    struct stat sb;
    assert_int_equal(stat(h->sock, &sb), -1); /* the file is removed on destroy */
    rm_dir(h->dir);
}

/* --- client side (test thread) --------------------------------------------- */

struct client {
    int fd;
    char buf[1 << 16];
    size_t len;
};

static int connect_to(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    FMT(sa.sun_path, "%s", path);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

static struct client *cl_open(void)
{
    struct client *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    c->fd = connect_to(H.sock);
    assert_true(c->fd >= 0);
    return c;
}

static void cl_close(struct client *c)
{
    if (c->fd >= 0) {
        close(c->fd);
    }
    free(c);
}

static void cl_write(struct client *c, const char *s, size_t n)
{
    size_t off = 0;
    while (off < n) {
        ssize_t w = send(c->fd, s + off, n - off, MSG_NOSIGNAL);
        assert_true(w > 0);
        off += (size_t)w;
    }
}

static void cl_puts(struct client *c, const char *s)
{
    cl_write(c, s, strlen(s));
}

/* Next reply line (newline removed) into out; false on EOF or timeout. */
static bool cl_line(struct client *c, char *out, size_t outlen)
{
    for (;;) {
        char *nl = memchr(c->buf, '\n', c->len);
        if (nl) {
            size_t n = (size_t)(nl - c->buf);
            assert_true(n < outlen);
            memcpy(out, c->buf, n);
            out[n] = '\0';
            memmove(c->buf, nl + 1, c->len - n - 1);
            c->len -= n + 1;
            return true;
        }
        assert_true(c->len < sizeof(c->buf));
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        if (poll(&p, 1, WAIT_MS) <= 0) {
            return false;
        }
        ssize_t r = recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len, 0);
        if (r <= 0) {
            return false;
        }
        c->len += (size_t)r;
    }
}

/* Send one line, return the parsed reply (caller deletes). */
static cJSON *cl_ask(struct client *c, const char *line)
{
    cl_puts(c, line);
    cl_puts(c, "\n");
    char buf[1 << 16];
    assert_true(cl_line(c, buf, sizeof(buf)));
    cJSON *r = cJSON_Parse(buf);
    if (!r) {
        fail_msg("reply is not JSON: %s", buf);
    }
    return r;
}

static bool is_ok(const cJSON *r)
{
    return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "ok"));
}

static const char *str(const cJSON *r, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(r, key);
    return cJSON_IsString(v) ? v->valuestring : "";
}

static void assert_error(const char *line, const char *code, const char *field)
{
    struct client *c = cl_open();
    cJSON *r = cl_ask(c, line);
    if (is_ok(r) || strcmp(str(r, "error"), code) != 0 || strcmp(str(r, "field"), field) != 0) {
        char *t = cJSON_PrintUnformatted(r);
        fail_msg("%s -> %s (wanted %s field '%s')", line, t, code, field);
    }
    cJSON_Delete(r);
    cl_close(c);
}

static int db_count(const char *where_id)
{
    sqlite3 *db;
    assert_int_equal(sqlite3_open_v2(H.db, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db,
                                        where_id ? "SELECT count(*) FROM outbox WHERE id = ?"
                                                 : "SELECT count(*) FROM outbox",
                                        -1, &st, NULL),
                     SQLITE_OK);
    if (where_id) {
        sqlite3_bind_text(st, 1, where_id, -1, SQLITE_STATIC);
    }
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int n = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Wait (polling the database, not sleeping for a guess) until id is stored. */
static bool wait_stored(const char *id)
{
    uint64_t deadline = now_ms() + WAIT_MS;
    while (now_ms() < deadline) {
        if (db_count(id) == 1) {
            return true;
        }
        struct timespec ts = {0, 10 * 1000000};
        nanosleep(&ts, NULL);
    }
    return false;
}

/* --- tests ----------------------------------------------------------------- */

static void test_send_then_duplicate(void **state)
{
    (void)state;
    h_start(8, 5000, 0);
    struct client *c = cl_open();
    const char *req = "{\"op\":\"send\",\"notification\":{\"id\":\"s-1\",\"to\":\"user:alice\","
                      "\"title\":\"Hi\"}}";
    cJSON *r = cl_ask(c, req);
    assert_true(is_ok(r));
    assert_string_equal(str(r, "id"), "s-1");
    assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(r, "duplicate")));
    cJSON_Delete(r);
    /* The reply came after the commit: another connection sees the row now. */
    assert_int_equal(db_count("s-1"), 1);
    r = cl_ask(c, req);
    assert_true(is_ok(r));
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "duplicate")));
    cJSON_Delete(r);
    assert_int_equal(db_count(NULL), 1);
    cl_close(c);
    h_stop();
    assert_int_equal(H.st.in.received, 2);
    assert_int_equal(H.st.in.accepted, 1);
    assert_int_equal(H.st.in.duplicates, 1);
}

static void test_generated_id_and_crlf(void **state)
{
    (void)state;
    h_start(8, 5000, 0);
    struct client *c = cl_open();
    cJSON *r = cl_ask(c, "{\"notification\":{\"to\":\"local\",\"body\":\"b\"}, \"op\":\"send\","
                         "\"x_future\":[1,{\"a\":\"}\"}]}\r");
    assert_true(is_ok(r));
    assert_int_equal(strlen(str(r, "id")), 26);
    assert_int_equal(db_count(str(r, "id")), 1);
    cJSON_Delete(r);
    cl_close(c);
    h_stop();
}

static void test_invalid_requests(void **state)
{
    (void)state;
    h_start(8, 5000, 0);
    assert_error("{\"op\":\"send\",\"notification\":{\"to\":\"nobody\",\"title\":\"x\"}}",
                 "bad_recipient", "to");
    assert_error("{\"op\":\"send\",\"notification\":{\"title\":\"x\"}}", "missing_field", "to");
    assert_error("{\"op\":\"send\",\"notification\":{\"to\":\"local\"}}", "no_content", "");
    assert_error("{\"op\":\"send\",\"notification\":{\"to\":\"local\",\"title\":01}}",
                 "malformed_json", "");
    assert_error("{\"op\":\"send\",\"notification\":{\"to\":\"local\",\"title\":\"\xc3\x28\"}}",
                 "bad_utf8", "");
    assert_error("{\"op\":\"send\",\"notification\":[1]}", "not_object", "");
    assert_error("{\"op\":\"send\",\"notification\":{\"to\":\"local\",\"title\":\"a\\u0000b\"}}",
                 "bad_value", "title");
    assert_error("{\"op\":\"send\"}", "missing_field", "notification");
    assert_error("{\"op\":\"fly\"}", "bad_value", "op");
    assert_error("{\"op\":7}", "wrong_type", "op");
    assert_error("{\"notification\":{}}", "missing_field", "op");
    assert_error("{\"op\":\"send\",\"op\":\"status\"}", "duplicate_key", "op");
    assert_error("{\"op\":\"send\"", "malformed_json", "op");
    assert_error("{\"op\":\"send\",\"notification\":{\"to\":\"local\"}", "malformed_json", "op");
    assert_error("hello", "malformed_json", "op");
    assert_error("[1,2]", "not_object", "op");
    assert_error("{\"op\":\"status\"} trailing", "malformed_json", "op");
    /* The connection survives every rejection. */
    struct client *c = cl_open();
    cJSON *r = cl_ask(c, "{\"op\":\"nope\"}");
    assert_false(is_ok(r));
    cJSON_Delete(r);
    cl_puts(c, "\n   \n"); /* blank lines are not requests: no replies */
    r = cl_ask(c, "{\"op\":\"status\"}");
    assert_true(is_ok(r));
    assert_true(cJSON_IsTrue(
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(r, "status"), "test")));
    cJSON_Delete(r);
    cl_close(c);
    h_stop();
    assert_int_equal(H.st.in.accepted, 0);
    assert_int_equal(H.st.in.invalid, 18);
    assert_int_equal(H.st.status_requests, 1);
}

/* {"op":"local","id":..}: what became of a local notification. */
static void test_local_lookup(void **state)
{
    (void)state;
    h_start(8, 5000, 0);
    struct client *c = cl_open();
    cJSON *r = cl_ask(c, "{\"op\":\"local\",\"id\":\"known\",\"x_future\":1}");
    assert_true(is_ok(r));
    assert_string_equal(str(r, "id"), "known");
    const cJSON *rows = cJSON_GetObjectItemCaseSensitive(r, "local");
    assert_true(cJSON_IsArray(rows));
    assert_int_equal(cJSON_GetArraySize(rows), 1);
    assert_string_equal(str(cJSON_GetArrayItem(rows, 0), "rule"), "quiet_hours");
    cJSON_Delete(r);
    /* "lookup" is the same request under its documented name. */
    r = cl_ask(c, "{\"op\":\"lookup\",\"id\":\"known\"}");
    assert_true(is_ok(r));
    assert_string_equal(str(r, "id"), "known");
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r, "local")), 1);
    assert_string_equal(str(cJSON_GetObjectItemCaseSensitive(r, "hub"), "state"), "delivered");
    cJSON_Delete(r);
    cl_close(c);
    assert_error("{\"op\":\"lookup\",\"id\":\"other\"}", "not_found", "id");
    assert_error("{\"op\":\"lookup\"}", "missing_field", "id");
    assert_error("{\"op\":\"local\",\"id\":\"other\"}", "not_found", "id");
    assert_error("{\"op\":\"local\"}", "missing_field", "id");
    assert_error("{\"op\":\"local\",\"id\":7}", "wrong_type", "id");
    assert_error("{\"op\":\"local\",\"id\":\"a b\"}", "bad_value", "id");
    assert_error("{\"op\":\"local\",\"id\":\"\"}", "bad_value", "id");
    assert_error("{\"op\":\"local\",\"id\":\"a\",\"id\":\"b\"}", "duplicate_key", "id");
    char big[256];
    FMT(big, "{\"op\":\"local\",\"id\":\"%0*d\"}", 65, 0);
    assert_error(big, "bad_value", "id");
    h_stop();
}

static void test_oversized_line_then_next_request(void **state)
{
    (void)state;
    h_start(8, 5000, 0);
    struct client *c = cl_open();
    size_t big = SOCKET_LINE_MAX + 5000;
    char *line = malloc(big);
    memset(line, 'a', big);
    /* In two writes: the server sees the line grow past the limit. */
    cl_write(c, line, big / 2);
    cl_write(c, line, big - big / 2);
    cl_puts(c, "\n{\"op\":\"send\",\"notification\":{\"id\":\"after-big\",\"to\":\"local\","
               "\"title\":\"t\"}}\n");
    char buf[4096];
    assert_true(cl_line(c, buf, sizeof(buf)));
    cJSON *r = cJSON_Parse(buf);
    assert_non_null(r);
    assert_false(is_ok(r));
    assert_string_equal(str(r, "error"), "too_large");
    cJSON_Delete(r);
    assert_true(cl_line(c, buf, sizeof(buf)));
    r = cJSON_Parse(buf);
    assert_true(is_ok(r));
    assert_string_equal(str(r, "id"), "after-big");
    cJSON_Delete(r);
    /* Exactly SOCKET_LINE_MAX bytes is still a line (an invalid one). */
    memset(line, ' ', SOCKET_LINE_MAX);
    memcpy(line, "{\"op\":\"status\"}", 15);
    cl_write(c, line, SOCKET_LINE_MAX);
    cl_puts(c, "\n");
    assert_true(cl_line(c, buf, sizeof(buf)));
    r = cJSON_Parse(buf);
    assert_true(is_ok(r));
    cJSON_Delete(r);
    free(line);
    cl_close(c);
    h_stop();
}

/* Write everything and read n replies at once (poll both ways), so neither
 * side's buffer fills while the other waits. */
static void pipeline(struct client *c, const char *out, size_t outlen, char **replies, int n)
{
    size_t off = 0;
    int got = 0;
    while (got < n) {
        struct pollfd p = {.fd = c->fd, .events = POLLIN | (off < outlen ? POLLOUT : 0)};
        assert_true(poll(&p, 1, WAIT_MS) > 0);
        if ((p.revents & POLLOUT) && off < outlen) {
            ssize_t w = send(c->fd, out + off, outlen - off, MSG_NOSIGNAL | MSG_DONTWAIT);
            assert_true(w > 0 || errno == EAGAIN);
            off += w > 0 ? (size_t)w : 0;
        }
        if (p.revents & (POLLIN | POLLHUP)) {
            ssize_t r = recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len, MSG_DONTWAIT);
            assert_true(r > 0);
            c->len += (size_t)r;
            char *nl;
            while (got < n && (nl = memchr(c->buf, '\n', c->len))) {
                size_t l = (size_t)(nl - c->buf);
                replies[got] = strndup(c->buf, l);
                memmove(c->buf, nl + 1, c->len - l - 1);
                c->len -= l + 1;
                got++;
            }
        }
    }
}

static void test_pipeline_1000_in_order(void **state)
{
    (void)state;
    h_start(8, 5000, 0);
    enum { N = 1000 };
    size_t cap = N * 128, len = 0;
    char *out = malloc(cap);
    for (int i = 0; i < N; i++) {
        /* every 100th is invalid: its error must arrive in its place */
        len += (size_t)snprintf(out + len, cap - len,
                                i % 100 == 99
                                    ? "{\"op\":\"send\",\"notification\":{\"id\":\"p-%d\"}}\n"
                                    : "{\"op\":\"send\",\"notification\":{\"id\":\"p-%d\","
                                      "\"to\":\"local\",\"title\":\"t\"}}\n",
                                i);
    }
    struct client *c = cl_open();
    char **replies = calloc(N, sizeof(*replies));
    pipeline(c, out, len, replies, N);
    for (int i = 0; i < N; i++) {
        cJSON *r = cJSON_Parse(replies[i]);
        assert_non_null(r);
        if (i % 100 == 99) {
            assert_false(is_ok(r));
            assert_string_equal(str(r, "field"), "to");
        } else {
            char want[32];
            snprintf(want, sizeof(want), "p-%d", i);
            if (!is_ok(r) || strcmp(str(r, "id"), want) != 0) {
                fail_msg("reply %d: %s (wanted %s)", i, replies[i], want);
            }
        }
        cJSON_Delete(r);
        free(replies[i]);
    }
    free(replies);
    free(out);
    assert_int_equal(db_count(NULL), N - N / 100);
    cl_close(c);
    h_stop();
    assert_int_equal(H.st.in.accepted, N - N / 100);
    assert_int_equal(H.st.in.invalid, N / 100);
}

static void test_full(void **state)
{
    (void)state;
    h_start(8, 5000, 2);
    struct client *c = cl_open();
    for (int i = 0; i < 3; i++) {
        char req[128];
        snprintf(req, sizeof(req),
                 "{\"op\":\"send\",\"notification\":{\"id\":\"f-%d\",\"to\":\"local\",\"title\":"
                 "\"t\"}}",
                 i);
        cJSON *r = cl_ask(c, req);
        if (i < 2) {
            assert_true(is_ok(r));
        } else {
            assert_false(is_ok(r));
            assert_string_equal(str(r, "error"), "full");
            assert_string_equal(str(r, "id"), "f-2");
        }
        cJSON_Delete(r);
    }
    cl_close(c);
    h_stop();
    assert_int_equal(H.st.in.full, 1);
}

static void test_commit_failure_is_storage(void **state)
{
    (void)state;
    h_start(8, 5000, 0);
    struct client *c = cl_open();
    atomic_store(&H.inject, TDG_EDB);
    cJSON *r = cl_ask(c, "{\"op\":\"send\",\"notification\":{\"id\":\"c-1\",\"to\":\"local\","
                         "\"title\":\"t\"}}");
    assert_false(is_ok(r));
    assert_string_equal(str(r, "error"), "storage");
    assert_string_equal(str(r, "id"), "c-1");
    cJSON_Delete(r);
    /* The next round commits normally. */
    r = cl_ask(c, "{\"op\":\"send\",\"notification\":{\"id\":\"c-2\",\"to\":\"local\","
                  "\"title\":\"t\"}}");
    assert_true(is_ok(r));
    cJSON_Delete(r);
    cl_close(c);
    h_stop();
    assert_int_equal(H.st.in.errors, 1);
    assert_int_equal(H.st.in.accepted, 1);
}

static void test_max_clients_busy(void **state)
{
    (void)state;
    h_start(2, 5000, 0);
    struct client *a = cl_open();
    struct client *b = cl_open();
    cJSON *r = cl_ask(a, "{\"op\":\"status\"}"); /* both are accepted by now */
    cJSON_Delete(r);
    r = cl_ask(b, "{\"op\":\"status\"}");
    cJSON_Delete(r);
    struct client *c = cl_open(); /* the third is told and closed */
    char buf[512];
    assert_true(cl_line(c, buf, sizeof(buf)));
    r = cJSON_Parse(buf);
    assert_string_equal(str(r, "error"), "busy");
    cJSON_Delete(r);
    assert_false(cl_line(c, buf, sizeof(buf))); /* EOF */
    cl_close(c);
    cl_close(a);
    /* A slot is free again once a's close is seen: poll for it. A refused
     * connection may be closed before our request is even written. */
    bool ok = false;
    uint64_t deadline = now_ms() + WAIT_MS;
    while (!ok && now_ms() < deadline) {
        struct client *d = cl_open();
        const char *req = "{\"op\":\"status\"}\n";
        (void)!send(d->fd, req, strlen(req), MSG_NOSIGNAL);
        ok = cl_line(d, buf, sizeof(buf)) && strstr(buf, "\"ok\":true") != NULL;
        cl_close(d);
    }
    assert_true(ok);
    cl_close(b);
    h_stop();
    assert_true(H.st.refused_busy >= 1);
}

static void test_client_that_never_reads_is_dropped(void **state)
{
    (void)state;
    h_start_pad(8, 200, 0, 16 * 1024);
    struct client *c = cl_open();
    for (int i = 0; i < 128; i++) {
        cl_puts(c, "{\"op\":\"status\"}\n");
    }
    /* Never read. The server stops reading us, then drops us after 200 ms
     * without progress: our end sees the hang-up. */
    struct pollfd p = {.fd = c->fd, .events = 0};
    assert_int_equal(poll(&p, 1, WAIT_MS), 1);
    assert_true(p.revents & POLLHUP);
    cl_close(c);
    /* Others are unaffected. */
    struct client *d = cl_open();
    cJSON *r = cl_ask(d, "{\"op\":\"status\"}");
    assert_true(is_ok(r));
    cJSON_Delete(r);
    cl_close(d);
    h_stop();
    assert_int_equal(H.st.slow_disconnects, 1);
}

static void test_gone_before_reply_still_stored(void **state)
{
    (void)state;
    h_start(8, 5000, 0);
    struct client *c = cl_open();
    cl_puts(c, "{\"op\":\"send\",\"notification\":{\"id\":\"gone-1\",\"to\":\"local\","
               "\"title\":\"t\"}}\n");
    close(c->fd);
    c->fd = -1;
    cl_close(c);
    assert_true(wait_stored("gone-1"));
    h_stop();
    assert_int_equal(H.st.in.accepted, 1);
}

static void test_half_close_gets_every_reply(void **state)
{
    (void)state;
    h_start(8, 5000, 0);
    struct client *c = cl_open();
    /* The last request has no newline: EOF ends it. */
    cl_puts(c,
            "{\"op\":\"send\",\"notification\":{\"id\":\"h-1\",\"to\":\"local\",\"title\":\"t\"}}\n"
            "{\"op\":\"send\",\"notification\":{\"id\":\"h-2\",\"to\":\"local\",\"title\":\"t\"}}");
    shutdown(c->fd, SHUT_WR);
    char buf[512];
    assert_true(cl_line(c, buf, sizeof(buf)));
    assert_non_null(strstr(buf, "\"h-1\""));
    assert_true(cl_line(c, buf, sizeof(buf)));
    assert_non_null(strstr(buf, "\"h-2\""));
    assert_false(cl_line(c, buf, sizeof(buf))); /* then the server closes */
    cl_close(c);
    h_stop();
}

static void test_socket_file(void **state)
{
    (void)state;
    h_start(8, 5000, 0);
    struct stat sb;
    assert_int_equal(lstat(H.sock, &sb), 0);
    assert_true(S_ISSOCK(sb.st_mode));
    assert_int_equal(sb.st_mode & 0777, 0600);
    /* A second server on the same path: refused, naming the path. */
    loop_t *l2 = loop_create();
    socket_server_t *s2 = NULL;
    char err[512];
    struct socket_opts o = {.path = H.sock, .max_clients = 1, .write_timeout_ms = 1000};
    struct socket_ops ops = {.queue = h_queue, .arg = &H};
    assert_true(socket_server_create(l2, &o, &ops, &s2, err, sizeof(err)) < 0);
    assert_non_null(strstr(err, H.sock));
    assert_non_null(strstr(err, "another tidings-agent"));
    /* The first one still works. */
    struct client *c = cl_open();
    cJSON *r = cl_ask(c, "{\"op\":\"status\"}");
    assert_true(is_ok(r));
    cJSON_Delete(r);
    cl_close(c);
    h_stop();

    /* Stale: a socket file nobody listens on (as a kill -9 leaves it). */
    char dir[64], path[128], other[128];
    snprintf(dir, sizeof(dir), "/tmp/tidings-sock-XXXXXX");
    assert_non_null(mkdtemp(dir));
    FMT(path, "%s/agent.sock", dir);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    FMT(sa.sun_path, "%s", path);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    close(fd);
    o.path = path;
    assert_int_equal(socket_server_create(l2, &o, &ops, &s2, err, sizeof(err)), 0);
    assert_int_equal(lstat(path, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    fd = connect_to(path);
    assert_true(fd >= 0);
    close(fd);
    socket_server_destroy(s2);

    /* Live, without our lock: another program listens there. */
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fd, 1), 0);
    assert_true(socket_server_create(l2, &o, &ops, &s2, err, sizeof(err)) < 0);
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, "listening"));
    close(fd);
    unlink(path);

    /* Not a socket: never replaced. */
    FMT(other, "%s/plain-file", dir);
    FILE *f = fopen(other, "w");
    fputs("keep me", f);
    fclose(f);
    o.path = other;
    assert_true(socket_server_create(l2, &o, &ops, &s2, err, sizeof(err)) < 0);
    assert_non_null(strstr(err, "not a socket"));
    assert_int_equal(lstat(other, &sb), 0);
    assert_true(S_ISREG(sb.st_mode));
    FMT(other, "%s/plain-file.lock", dir);
    unlink(other);
    loop_destroy(l2);
    rm_dir(dir);
}

/* Run the CLI in this process against the server thread. */
static int cli(const char *a0, ...)
{
    char *argv[32];
    int argc = 0;
    va_list ap;
    va_start(ap, a0);
    for (const char *a = a0; a && argc < 31; a = va_arg(ap, const char *)) {
        argv[argc++] = (char *)a;
    }
    va_end(ap);
    argv[argc] = NULL;
    return cli_run(argc, argv);
}

static void test_cli_exit_codes(void **state)
{
    (void)state;
    h_start(8, 5000, 2);
    const char *s = H.sock;
    assert_int_equal(cli("send", "--socket", s, "--to", "user:alice", "--title", "x", "--id",
                         "cli-1", "--priority", "high", "--ttl", "90s", "--channel", "push,sms",
                         "--data", "k=v", "--data", "k=w", "--category", "orders", NULL),
                     CLI_OK);
    assert_int_equal(db_count("cli-1"), 1);
    assert_int_equal(
        cli("send", "--socket", s, "--to", "user:alice", "--title", "x", "--id", "cli-1", NULL),
        CLI_OK); /* duplicate: accepted once */
    /* Refused by the agent: the reason names the field. */
    assert_int_equal(cli("send", "--socket", s, "--to", "nobody", "--title", "x", NULL),
                     CLI_INVALID);
    assert_int_equal(cli("send", "--socket", s, "--to", "user:alice", NULL), CLI_INVALID);
    /* Refused locally: the message names the option. */
    assert_int_equal(cli("send", "--socket", s, "--title", "x", "--priority", "urgent", NULL),
                     CLI_INVALID);
    assert_int_equal(cli("send", "--socket", s, "--title", "x", "--ttl", "1500ms", NULL),
                     CLI_INVALID);
    assert_int_equal(cli("send", "--socket", s, "--title", "x", "--ttl", "29d", NULL), CLI_INVALID);
    assert_int_equal(cli("send", "--socket", s, "--title", "x", "--channel", "push,push", NULL),
                     CLI_INVALID);
    assert_int_equal(cli("send", "--socket", s, "--title", "x", "--data", "=v", NULL), CLI_INVALID);
    assert_int_equal(cli("send", "--socket", s, "--title", NULL), CLI_INVALID);
    assert_int_equal(cli("send", "--socket", s, "--bogus", NULL), CLI_INVALID);
    assert_int_equal(cli("send", "--json", "/nonexistent/n.json", "--socket", s, NULL),
                     CLI_INVALID);
    assert_int_equal(cli("status", "--socket", s, "--bogus", NULL), CLI_INVALID);
    assert_int_equal(cli("status", "--socket", s, "--timeout", "soon", NULL), CLI_INVALID);
    assert_int_equal(cli("send", "--help", NULL), CLI_OK);
    assert_int_equal(cli("status", "--help", NULL), CLI_OK);
    /* Status, both forms. */
    assert_int_equal(cli("status", "--socket", s, "--json", NULL), CLI_OK);
    assert_int_equal(cli("status", "--socket", s, NULL), CLI_OK);
    /* Over budget (max_rows 2): exit 3. */
    assert_int_equal(cli("send", "--socket", s, "--to", "local", "--title", "y", NULL), CLI_OK);
    assert_int_equal(cli("send", "--socket", s, "--to", "local", "--title", "z", NULL),
                     CLI_REFUSED);
    /* Nobody there: exit 4. */
    char gone[192];
    FMT(gone, "%s/none.sock", H.dir);
    assert_int_equal(cli("send", "--socket", gone, "--to", "local", "--title", "x", NULL),
                     CLI_UNREACHABLE);
    h_stop();
    assert_int_equal(H.st.in.accepted, 2);
    assert_int_equal(H.st.in.duplicates, 1);
    assert_int_equal(H.st.in.full, 1);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_send_then_duplicate),
        cmocka_unit_test(test_generated_id_and_crlf),
        cmocka_unit_test(test_invalid_requests),
        cmocka_unit_test(test_local_lookup),
        cmocka_unit_test(test_oversized_line_then_next_request),
        cmocka_unit_test(test_pipeline_1000_in_order),
        cmocka_unit_test(test_full),
        cmocka_unit_test(test_commit_failure_is_storage),
        cmocka_unit_test(test_max_clients_busy),
        cmocka_unit_test(test_client_that_never_reads_is_dropped),
        cmocka_unit_test(test_gone_before_reply_still_stored),
        cmocka_unit_test(test_half_close_gets_every_reply),
        cmocka_unit_test(test_socket_file),
        cmocka_unit_test(test_cli_exit_codes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
