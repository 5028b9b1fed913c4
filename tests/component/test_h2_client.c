/*
 * test_h2_client.c - the HTTP client (hub/http.h, HTTP/2 on nghttp2 +
 * OpenSSL, HTTP/1.1 fallback on libcurl) on a real loop, against real
 * servers: the fake APNs (a child process, port 0), a small scripted HTTP/2
 * server forked from this test (for what the fake cannot do: a low
 * SETTINGS_MAX_CONCURRENT_STREAMS, refused streams, large bodies), a
 * Python HTTP/1.1 server, and sockets that never answer.
 *
 * usage: test_h2_client FAKE_APNS GEN_CERTS_SH [same-thread]
 *
 * Every test runs against the default client (h2 and HTTP/1.1 on the
 * client's worker thread) and, with "same-thread", against a client on the
 * test's own loop (http_opts.same_thread); ctest runs both. Every done
 * callback checks that it runs on the test's (the caller's) thread.
 *
 * TIDINGS_H2_LONG_N sets the request count of the long-connection test
 * (default 120000; valgrind runs use fewer).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <cjson/cJSON.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "error.h"
#include "harness.h"
#include "http.h"
#include "jwt.h"
#include "log.h"
#include "loop.h"

#define KEY_ID "ABC123DEFG"
#define TEAM_ID "DEF123GHIJ"
#define TOPIC "com.example.tidings"
#define MAX_REQS 256
#define GUARD_MS 30000

static const char *fake_bin;
static bool same_thread;      /* argv[3] == "same-thread" */
static pthread_t test_thread; /* the caller's: every done runs here */
static int wrong_thread;      /* done callbacks that ran elsewhere */

static void check_thread(void)
{
    if (!pthread_equal(pthread_self(), test_thread)) {
        wrong_thread++;
    }
}
static const char *gen_certs;
static char dir[256];
static char dir2[300]; /* a second CA */
static loop_t *loop;
static char jwt[JWT_TOKEN_MAX];

/* The fake (or the mini server, or the HTTP/1.1 server): one child at a
 * time, started and stopped through tests/component/harness.c. */
static struct harness_child child = {.pid = -1};
static int port;
static http_t *client;
static char record_path[320], script_path[320], port_path[320], log_path[320];

static void dump_log(void)
{
    harness_dump_log(&child);
}

/* --- fake-apns ------------------------------------------------------------ */

static void fake_start_on(const char *listen, const char *script, bool record)
{
    snprintf(script_path, sizeof(script_path), "%s/rules.txt", dir);
    snprintf(port_path, sizeof(port_path), "%s/port", dir);
    snprintf(record_path, sizeof(record_path), "%s/record.jsonl", dir);
    snprintf(log_path, sizeof(log_path), "%s/fake.log", dir);
    unlink(record_path);
    FILE *f = fopen(script_path, "w");
    assert_non_null(f);
    fputs(script, f);
    fclose(f);
    char cert[300], key[300], pub[300];
    snprintf(cert, sizeof(cert), "%s/server.crt", dir);
    snprintf(key, sizeof(key), "%s/server.key", dir);
    snprintf(pub, sizeof(pub), "%s/authkey_pub.pem", dir);
    const char *argv[24];
    int i = 0;
    argv[i++] = fake_bin;
    argv[i++] = "--listen";
    argv[i++] = listen;
    argv[i++] = "--cert";
    argv[i++] = cert;
    argv[i++] = "--key";
    argv[i++] = key;
    argv[i++] = "--auth-key";
    argv[i++] = pub;
    argv[i++] = "--key-id";
    argv[i++] = KEY_ID;
    argv[i++] = "--team-id";
    argv[i++] = TEAM_ID;
    argv[i++] = "--topic";
    argv[i++] = TOPIC;
    if (record) {
        argv[i++] = "--record";
        argv[i++] = record_path;
    } else {
        argv[i++] = "--no-record";
    }
    argv[i++] = "--script";
    argv[i++] = script_path;
    argv[i++] = "--port-file";
    argv[i++] = port_path;
    argv[i] = NULL;
    char why[256];
    if (harness_start(&child, "fake-apns", argv, log_path, port_path, 10000, why, sizeof(why)) <
        0) {
        fail_msg("%s", why);
    }
    port = child.port;
}

static void fake_start(const char *script)
{
    fake_start_on("127.0.0.1:0", script, true);
}

/* --- the client and requests ------------------------------------------------- */

struct call {
    int calls;
    int error;
    int status;
    int version;
    char text[HTTP_ERROR_TEXT_MAX];
    char apns_id[64];
    uint64_t elapsed_ms;
    size_t body_len;
    size_t body_x; /* bytes of the body that are 'x' (the mini server's) */
};

static struct call calls[MAX_REQS];
static int expected, got;
static bool in_request; /* done must never run inside http_request */
static bool timed_out;

static void on_done(void *ctx, const struct http_response *r)
{
    struct call *c = ctx;
    check_thread();
    assert_false(in_request);
    c->calls++;
    c->error = r->error;
    c->status = r->status;
    c->version = r->version;
    c->elapsed_ms = r->elapsed_ms;
    c->body_len = r->body_len;
    c->body_x = 0;
    for (size_t k = 0; k < r->body_len; k++) {
        c->body_x += r->body[k] == 'x';
    }
    assert_int_equal(r->body[r->body_len], '\0');
    snprintf(c->text, sizeof(c->text), "%s", r->error_text);
    const char *id = http_response_header(r, "apns-id");
    snprintf(c->apns_id, sizeof(c->apns_id), "%s", id ? id : "");
    got++;
    if (expected > 0 && got >= expected) {
        loop_stop(loop);
    }
}

static void on_stop(loop_t *l, uint64_t id, void *arg)
{
    (void)id;
    bool *flag = arg;
    if (flag) {
        *flag = true;
    }
    loop_stop(l);
}

static void run_for(uint64_t ms)
{
    assert_true(loop_timer_add(loop, ms, on_stop, NULL) != 0);
    assert_int_equal(loop_run(loop), 0);
}

/* Run until `expected` answers came (then 50 ms more, to catch doubles). */
static void run_until_done(void)
{
    timed_out = false;
    uint64_t guard = loop_timer_add(loop, GUARD_MS, on_stop, &timed_out);
    assert_true(guard != 0);
    if (got < expected) {
        assert_int_equal(loop_run(loop), 0);
    }
    loop_timer_cancel(loop, guard);
    if (timed_out) {
        dump_log();
        fail_msg("only %d of %d answers in %d ms", got, expected, GUARD_MS);
    }
    run_for(50);
}

static void client_open(const struct http_opts *o)
{
    assert_int_equal(http_create(loop, o, &client), 0);
}

static struct http_opts default_opts(void)
{
    char ca[320];
    static char ca_copy[320];
    snprintf(ca, sizeof(ca), "%s/ca.crt", dir);
    memcpy(ca_copy, ca, sizeof(ca));
    struct http_opts o = {.ca_file = ca_copy, .timeout_ms = 10000, .same_thread = same_thread};
    return o;
}

static void token_hex(char *out, int i)
{
    static const char hx[] = "0123456789abcdef";
    for (int k = 0; k < 64; k++) {
        out[k] = hx[(i + k) % 16];
    }
    out[64] = '\0';
}

/* An APNs request to host:port for token number tok, body carrying n. */
static void build(struct channel_request *q, const char *host, int p, int tok, int n)
{
    memset(q, 0, sizeof(*q));
    char t[65];
    token_hex(t, tok);
    snprintf(q->url, sizeof(q->url), "https://%s:%d/3/device/%s", host, p, t);
    snprintf(q->method, sizeof(q->method), "POST");
    int hl = snprintf(q->headers[0], sizeof(q->headers[0]), "authorization: bearer %s", jwt);
    assert_true(hl > 0 && (size_t)hl < sizeof(q->headers[0]));
    snprintf(q->headers[1], sizeof(q->headers[1]), "apns-topic: %s", TOPIC);
    snprintf(q->headers[2], sizeof(q->headers[2]), "apns-push-type: alert");
    q->nheaders = 3;
    int len = snprintf(q->body, sizeof(q->body), "{\"aps\":{\"alert\":\"hi\"},\"n\":%d}", n);
    q->body_len = (size_t)len;
}

static const char *const capture[] = {"apns-id", NULL};

static void send_one(const struct channel_request *q, int i, const struct http_req_opts *ro)
{
    struct http_req_opts def = {.require_h2 = true, .capture = capture};
    in_request = true;
    int rc = http_request(client, q, ro ? ro : &def, on_done, &calls[i]);
    in_request = false;
    if (rc != 0) {
        fail_msg("http_request %d: %s", i, tdg_strerror(rc));
    }
}

static void reset_calls(int n)
{
    memset(calls, 0, sizeof(calls));
    expected = n;
    got = 0;
}

/* Send n requests to the fake (token i % ntok) and wait for all. */
static void send_n(int n, int ntok)
{
    reset_calls(n);
    struct channel_request q;
    for (int i = 0; i < n; i++) {
        build(&q, "127.0.0.1", port, i % ntok, i);
        send_one(&q, i, NULL);
    }
    run_until_done();
    for (int i = 0; i < n; i++) {
        assert_int_equal(calls[i].calls, 1);
    }
}

static void expect_all_ok(int n)
{
    for (int i = 0; i < n; i++) {
        if (calls[i].error != 0 || calls[i].status != 200) {
            dump_log();
            fail_msg("request %d: error %s status %d: %s", i, tdg_errname(calls[i].error),
                     calls[i].status, calls[i].text);
        }
        assert_int_equal(calls[i].version, 20);
    }
}

/* The fake's record: how many lines with status 200 carry body "n":i, per
 * i; distinct connections; goaway lines. */
struct record_summary {
    int ok_per_n[MAX_REQS];
    int lines, conns, goaways;
};

static void read_record(struct record_summary *s)
{
    memset(s, 0, sizeof(*s));
    FILE *f = fopen(record_path, "r");
    assert_non_null(f);
    static char line[16384];
    double seen[64];
    while (fgets(line, sizeof(line), f)) {
        cJSON *j = cJSON_Parse(line);
        assert_non_null(j);
        s->lines++;
        double conn = cJSON_GetObjectItemCaseSensitive(j, "conn")->valuedouble;
        bool dup = false;
        for (int i = 0; i < s->conns; i++) {
            dup = dup || seen[i] == conn;
        }
        if (!dup && s->conns < 64) {
            seen[s->conns++] = conn;
        }
        const char *action = cJSON_GetObjectItemCaseSensitive(j, "action")->valuestring;
        int status = (int)cJSON_GetObjectItemCaseSensitive(j, "status")->valuedouble;
        if (strcmp(action, "goaway") == 0) {
            s->goaways++;
        }
        cJSON *body = cJSON_Parse(cJSON_GetObjectItemCaseSensitive(j, "body")->valuestring);
        const cJSON *n = cJSON_GetObjectItemCaseSensitive(body, "n");
        if (status == 200 && cJSON_IsNumber(n) && n->valueint >= 0 && n->valueint < MAX_REQS) {
            s->ok_per_n[n->valueint]++;
        }
        cJSON_Delete(body);
        cJSON_Delete(j);
    }
    fclose(f);
}

static struct http_stats stats(void)
{
    struct http_stats s;
    http_get_stats(client, &s);
    return s;
}

static int setup(void **state)
{
    (void)state;
    client = NULL;
    reset_calls(0);
    wrong_thread = 0;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    assert_int_equal(wrong_thread, 0);
    http_destroy(client);
    client = NULL;
    harness_stop(&child);
    return 0;
}

/* --- a small scripted HTTP/2 server (child process) ----------------------- */

struct mini_opts {
    uint32_t max_streams; /* SETTINGS_MAX_CONCURRENT_STREAMS */
    int delay_ms;         /* answer each request this long after it ends */
    size_t body_len;      /* response body bytes */
    int refuse;           /* RST_STREAM(REFUSED_STREAM) the first N requests */
};

struct mini_stream {
    int32_t id;
    int64_t due;
    bool open;
};

struct mini {
    struct mini_opts o;
    SSL *ssl;
    nghttp2_session *s;
    struct mini_stream st[4096];
    int nst, open, max_open, requests, refused;
    const char *result;
    char *body;
};

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void mini_result(struct mini *m)
{
    FILE *f = fopen(m->result, "w");
    if (f) {
        fprintf(f, "%d %d %d\n", m->max_open, m->requests, m->refused);
        fclose(f);
    }
}

static ssize_t mini_send(nghttp2_session *s, const uint8_t *data, size_t len, int flags, void *u)
{
    (void)s;
    (void)flags;
    struct mini *m = u;
    int n = SSL_write(m->ssl, data, (int)len);
    return n > 0 ? n : NGHTTP2_ERR_CALLBACK_FAILURE;
}

static ssize_t mini_body(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                         nghttp2_data_source *src, void *u)
{
    (void)s;
    (void)id;
    (void)u;
    size_t *left = src->ptr;
    size_t n = *left < len ? *left : len;
    memset(buf, 'x', n);
    *left -= n;
    if (*left == 0) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        free(left);
    }
    return (ssize_t)n;
}

static int mini_frame(nghttp2_session *s, const nghttp2_frame *f, void *u)
{
    struct mini *m = u;
    if ((f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) &&
        (f->hd.flags & NGHTTP2_FLAG_END_STREAM) && m->nst < 4096) {
        m->requests++;
        if (m->refused < m->o.refuse) {
            m->refused++;
            nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, f->hd.stream_id,
                                      NGHTTP2_REFUSED_STREAM);
            return 0;
        }
        m->st[m->nst++] = (struct mini_stream){f->hd.stream_id, mono_ms() + m->o.delay_ms, true};
    }
    if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_REQUEST) {
        m->open++;
        if (m->open > m->max_open) {
            m->max_open = m->open;
        }
        mini_result(m);
    }
    return 0;
}

static int mini_close(nghttp2_session *s, int32_t id, uint32_t code, void *u)
{
    (void)s;
    (void)id;
    (void)code;
    struct mini *m = u;
    m->open--;
    mini_result(m);
    return 0;
}

static int mini_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                     const unsigned char *in, unsigned inlen, void *arg)
{
    (void)ssl;
    (void)arg;
    unsigned char *o = NULL;
    if (nghttp2_select_next_protocol(&o, outlen, in, inlen) != 1) {
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    *out = o;
    return SSL_TLSEXT_ERR_OK;
}

static void mini_answer_due(struct mini *m)
{
    int64_t now = mono_ms();
    for (int i = 0; i < m->nst; i++) {
        struct mini_stream *x = &m->st[i];
        if (!x->open || x->due > now) {
            continue;
        }
        x->open = false;
        char cl[32];
        snprintf(cl, sizeof(cl), "%zu", m->o.body_len);
        nghttp2_nv nv[] = {
            {(uint8_t *)":status", (uint8_t *)"200", 7, 3, 0},
            {(uint8_t *)"content-length", (uint8_t *)cl, 14, strlen(cl), 0},
            {(uint8_t *)"apns-id", (uint8_t *)"mini", 7, 4, 0},
        };
        size_t *left = malloc(sizeof(*left));
        *left = m->o.body_len;
        nghttp2_data_provider dp = {.source.ptr = left, .read_callback = mini_body};
        nghttp2_submit_response(m->s, x->id, nv, 3, m->o.body_len ? &dp : NULL);
        if (!m->o.body_len) {
            free(left);
        }
    }
}

/* Serve connections one after another until killed. Never returns. */
static void mini_serve(int lfd, const struct mini_opts *o, const char *result)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    char cert[300], key[300];
    snprintf(cert, sizeof(cert), "%s/server.crt", dir);
    snprintf(key, sizeof(key), "%s/server.key", dir);
    if (!ctx || SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        _exit(3);
    }
    SSL_CTX_set_alpn_select_cb(ctx, mini_alpn, NULL);
    static struct mini m;
    m.o = *o;
    m.result = result;
    mini_result(&m);
    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0) {
            continue;
        }
        m.ssl = SSL_new(ctx);
        SSL_set_fd(m.ssl, fd);
        if (SSL_accept(m.ssl) != 1) {
            SSL_free(m.ssl);
            close(fd);
            continue;
        }
        nghttp2_session_callbacks *cb;
        nghttp2_session_callbacks_new(&cb);
        nghttp2_session_callbacks_set_send_callback(cb, mini_send);
        nghttp2_session_callbacks_set_on_frame_recv_callback(cb, mini_frame);
        nghttp2_session_callbacks_set_on_stream_close_callback(cb, mini_close);
        nghttp2_session_server_new(&m.s, cb, &m);
        nghttp2_session_callbacks_del(cb);
        nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, o->max_streams}};
        nghttp2_submit_settings(m.s, NGHTTP2_FLAG_NONE, iv, 1);
        m.nst = 0;
        m.open = 0;
        for (;;) {
            mini_answer_due(&m);
            if (nghttp2_session_send(m.s) != 0) {
                break;
            }
            struct pollfd p = {.fd = fd, .events = POLLIN};
            if (SSL_pending(m.ssl) == 0 && poll(&p, 1, 5) <= 0) {
                continue;
            }
            uint8_t buf[16384];
            int n = SSL_read(m.ssl, buf, sizeof(buf));
            if (n <= 0 || nghttp2_session_mem_recv(m.s, buf, (size_t)n) < 0) {
                break;
            }
        }
        nghttp2_session_del(m.s);
        SSL_free(m.ssl);
        close(fd);
    }
}

/* A TCP listener on 127.0.0.1 at a free port (its address in *a). A test
 * that never accepts on it gets connections whose TCP handshake the backlog
 * completes and whose TLS nobody answers: connections stuck in set-up. The
 * caller closes the fd. */
static int loopback_listener(struct sockaddr_in *a, int backlog)
{
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(lfd >= 0);
    *a = (struct sockaddr_in){.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(lfd, (struct sockaddr *)a, sizeof(*a)), 0);
    assert_int_equal(listen(lfd, backlog), 0);
    socklen_t al = sizeof(*a);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)a, &al), 0);
    return lfd;
}

/* Start the mini server on 127.0.0.1:0; sets port. */
static void mini_start(const struct mini_opts *o)
{
    struct sockaddr_in a;
    int lfd = loopback_listener(&a, 16);
    port = ntohs(a.sin_port);
    snprintf(record_path, sizeof(record_path), "%s/mini.txt", dir);
    unlink(record_path);
    fflush(stdout);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        signal(SIGTERM, SIG_DFL);
        mini_serve(lfd, o, record_path);
    }
    close(lfd);
    /* a fork of this test, not an exec: stopped like the others */
    child.pid = pid;
    snprintf(child.name, sizeof(child.name), "mini server");
    child.log_path[0] = '\0';
}

static void mini_read(int *max_open, int *requests, int *refused)
{
    FILE *f = fopen(record_path, "r");
    assert_non_null(f);
    assert_int_equal(fscanf(f, "%d %d %d", max_open, requests, refused), 3);
    fclose(f);
}

/* --- tests ------------------------------------------------------------------ */

/* GOAWAY in the middle of a burst: streams above last_stream_id go again on
 * a new connection, each request is processed exactly once, and every done
 * runs once with 200. */
static void test_goaway_replays_exactly_once(void **state)
{
    (void)state;
    char t[65], script[256];
    token_hex(t, 7);
    snprintf(script, sizeof(script), "token %s goaway reason Shutdown times 1\n", t);
    fake_start(script);
    struct http_opts o = default_opts();
    o.max_host_connections = 1;
    client_open(&o);
    const int n = 60;
    reset_calls(n);
    struct channel_request q;
    for (int i = 0; i < n; i++) {
        build(&q, "127.0.0.1", port, i == 20 ? 7 : 1, i);
        send_one(&q, i, NULL);
    }
    run_until_done();
    expect_all_ok(n);
    for (int i = 0; i < n; i++) {
        assert_int_equal(calls[i].calls, 1);
        assert_int_equal(strlen(calls[i].apns_id), 36);
    }
    struct record_summary r;
    read_record(&r);
    for (int i = 0; i < n; i++) {
        if (r.ok_per_n[i] != 1) {
            fail_msg("request %d processed %d times", i, r.ok_per_n[i]);
        }
    }
    assert_int_equal(r.goaways, 1);
    assert_int_equal(r.conns, 2);
    struct http_stats s = stats();
    assert_true(s.goaways == 1);
    assert_true(s.connects == 2);
    assert_true(s.replayed >= 1 && s.replayed <= 40);
    assert_true(s.resets_sent == 0);
    printf("GOAWAY: %" PRIu64 " requests replayed on connection 2\n", s.replayed);
}

/* Our own stream limit: 5 streams, 20 requests answered after 200 ms:
 * 15 wait in the queue, four waves on one connection. */
static void test_stream_limit_queues(void **state)
{
    (void)state;
    fake_start("token * delay 200\n");
    struct http_opts o = default_opts();
    o.max_host_connections = 1;
    o.max_concurrent_streams = 5;
    client_open(&o);
    reset_calls(20);
    struct channel_request q;
    for (int i = 0; i < 20; i++) {
        build(&q, "127.0.0.1", port, i, i);
        send_one(&q, i, NULL);
    }
    assert_true(stats().queued == 20); /* nothing connected yet */
    run_for(100);
    struct http_stats s = stats();
    assert_true(s.connections == 1);
    if (s.queued != 15) {
        fail_msg("queued %u, want 15", s.queued);
    }
    uint64_t t0 = clock_mono_ms();
    run_until_done();
    expect_all_ok(20);
    uint64_t waited = clock_mono_ms() - t0 + 100;
    assert_true(waited >= 750); /* 4 waves of 200 ms */
    assert_true(stats().connects == 1);
    struct record_summary r;
    read_record(&r);
    assert_int_equal(r.conns, 1);
}

/* The server's limit: SETTINGS_MAX_CONCURRENT_STREAMS 3 while we would use
 * 100. The server never sees more than 3 open streams. */
static void test_peer_stream_limit(void **state)
{
    (void)state;
    struct mini_opts mo = {.max_streams = 3, .delay_ms = 50};
    mini_start(&mo);
    struct http_opts o = default_opts();
    o.max_host_connections = 1;
    client_open(&o);
    reset_calls(30);
    struct channel_request q;
    for (int i = 0; i < 30; i++) {
        build(&q, "127.0.0.1", port, i, i);
        send_one(&q, i, NULL);
    }
    run_until_done();
    expect_all_ok(30);
    int max_open, requests, refused;
    mini_read(&max_open, &requests, &refused);
    printf("server saw at most %d streams open, %d requests\n", max_open, requests);
    assert_true(max_open <= 3);
    assert_int_equal(requests, 30);
}

/* Start the mini server with mo, open a client with the default options,
 * send n requests (ids 0..n-1) and wait until each was answered 200. */
static void mini_send_all_ok(const struct mini_opts *mo, int n)
{
    mini_start(mo);
    struct http_opts o = default_opts();
    client_open(&o);
    reset_calls(n);
    struct channel_request q;
    for (int i = 0; i < n; i++) {
        build(&q, "127.0.0.1", port, i, i);
        send_one(&q, i, NULL);
    }
    run_until_done();
    expect_all_ok(n);
}

/* REFUSED_STREAM from the server: not processed, so sent again (and the
 * request that is refused more than MAX_REPLAYS times fails). */
static void test_refused_stream_replayed(void **state)
{
    (void)state;
    struct mini_opts mo = {.max_streams = 100, .refuse = 2};
    mini_send_all_ok(&mo, 5);
    struct http_stats s = stats();
    assert_true(s.replayed == 2);
    assert_true(s.resets_sent == 0);
}

/* An answer over HTTP_BODY_MAX is cut off with TDG_ETOOBIG (status kept);
 * one just under it arrives whole. */
static void test_body_cap(void **state)
{
    (void)state;
    struct mini_opts mo = {.max_streams = 100, .body_len = HTTP_BODY_MAX + 1000};
    mini_start(&mo);
    struct http_opts o = default_opts();
    client_open(&o);
    reset_calls(1);
    struct channel_request q;
    build(&q, "127.0.0.1", port, 1, 0);
    send_one(&q, 0, NULL);
    run_until_done();
    assert_int_equal(calls[0].error, TDG_ETOOBIG);
    assert_int_equal(calls[0].status, 200);
    assert_true(stats().resets_sent == 1); /* abnormal: we stopped reading */
}

/* Several connections: one stream each is not enough, so more connections
 * open (spaced by connection_spacing_ms) up to max_host_connections. */
static void test_several_connections(void **state)
{
    (void)state;
    fake_start("token * delay 400\n");
    struct http_opts o = default_opts();
    o.max_host_connections = 3;
    o.max_concurrent_streams = 4;
    o.connection_spacing_ms = 50;
    client_open(&o);
    const int n = 24;
    reset_calls(n);
    struct channel_request q;
    for (int i = 0; i < n; i++) {
        build(&q, "127.0.0.1", port, i, i);
        send_one(&q, i, NULL);
    }
    run_until_done();
    expect_all_ok(n);
    struct record_summary r;
    read_record(&r);
    assert_int_equal(r.conns, 3);
    struct http_stats s = stats();
    assert_true(s.connects == 3);
    assert_true(s.connections == 3);
}

/* A server that accepts TCP but never speaks TLS: the connect timeout
 * (not the request timeout) ends it, and says so. */
static void test_connect_timeout_tls_black_hole(void **state)
{
    (void)state;
    struct sockaddr_in a;
    int lfd = loopback_listener(&a, 16); /* never accepted */
    struct http_opts o = default_opts();
    o.connect_timeout_ms = 300;
    client_open(&o);
    reset_calls(2);
    struct channel_request q;
    build(&q, "127.0.0.1", ntohs(a.sin_port), 1, 0);
    send_one(&q, 0, NULL);
    send_one(&q, 1, NULL);
    run_until_done();
    close(lfd);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(calls[i].error, -ETIMEDOUT);
        if (!strstr(calls[i].text, "TLS handshake")) {
            fail_msg("text: %s", calls[i].text);
        }
        assert_true(calls[i].elapsed_ms >= 250 && calls[i].elapsed_ms < 3000);
    }
    struct http_stats s = stats();
    assert_true(s.connect_failures == 1); /* one connection for both */
    assert_true(s.connections == 0);
}

/* A TCP black hole: a listener whose backlog is full drops our SYN. */
static void test_connect_timeout_tcp_black_hole(void **state)
{
    (void)state;
    struct sockaddr_in a;
    int lfd = loopback_listener(&a, 0);
    int fill[4];
    for (int i = 0; i < 4; i++) {
        fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        connect(fill[i], (struct sockaddr *)&a, sizeof(a));
    }
    harness_sleep_ms(50);
    struct http_opts o = default_opts();
    o.connect_timeout_ms = 300;
    client_open(&o);
    reset_calls(1);
    struct channel_request q;
    build(&q, "127.0.0.1", ntohs(a.sin_port), 1, 0);
    send_one(&q, 0, NULL);
    run_until_done();
    for (int i = 0; i < 4; i++) {
        close(fill[i]);
    }
    close(lfd);
    assert_int_equal(calls[0].error, -ETIMEDOUT);
    printf("full backlog -> %s\n", calls[0].text);
    assert_non_null(strstr(calls[0].text, "timed out after 300 ms"));
}

/* A certificate from another CA, and one for another address: clear TLS
 * errors, no request reaches the server. */
static void test_tls_verification_fails(void **state)
{
    (void)state;
    fake_start("");
    char ca2[340];
    snprintf(ca2, sizeof(ca2), "%s/ca.crt", dir2);
    struct http_opts o = default_opts();
    o.ca_file = ca2;
    client_open(&o);
    reset_calls(1);
    struct channel_request q;
    build(&q, "127.0.0.1", port, 1, 0);
    send_one(&q, 0, NULL);
    run_until_done();
    printf("wrong CA -> %s\n", calls[0].text);
    assert_int_equal(calls[0].error, TDG_EHTTP);
    assert_non_null(strstr(calls[0].text, "not trusted"));
    assert_non_null(strstr(calls[0].text, "issuer"));
    http_destroy(client);
    client = NULL;
    harness_stop(&child);

    /* The right CA, but the certificate names 127.0.0.1 and localhost. */
    fake_start_on("127.0.0.2:0", "", true);
    o = default_opts();
    client_open(&o);
    reset_calls(1);
    build(&q, "127.0.0.2", port, 1, 0);
    send_one(&q, 0, NULL);
    run_until_done();
    printf("wrong address -> %s\n", calls[0].text);
    assert_int_equal(calls[0].error, TDG_EHTTP);
    assert_non_null(strstr(calls[0].text, "mismatch"));

    int lines = 0;
    FILE *f = fopen(record_path, "r");
    if (f) {
        char line[16384];
        while (fgets(line, sizeof(line), f)) {
            lines++;
        }
        fclose(f);
    }
    assert_int_equal(lines, 0);
}

/* Host name verification by name: localhost is in the certificate. */
static void test_tls_by_name(void **state)
{
    (void)state;
    fake_start("");
    struct http_opts o = default_opts();
    client_open(&o);
    reset_calls(1);
    struct channel_request q;
    build(&q, "localhost", port, 1, 0);
    send_one(&q, 0, NULL);
    run_until_done();
    expect_all_ok(1);
}

/* An idle connection is pinged (and answered) and stays; after the idle
 * limit it is closed, and the next request opens a new one. */
static void test_ping_on_idle_then_close(void **state)
{
    (void)state;
    fake_start("");
    struct http_opts o = default_opts();
    o.ping_interval_ms = 100;
    o.idle_close_ms = 1200;
    client_open(&o);
    send_n(1, 1);
    expect_all_ok(1);
    run_for(550);
    struct http_stats s = stats();
    printf("after 550 ms idle: pings sent %" PRIu64 " acked %" PRIu64 "\n", s.pings_sent,
           s.pings_acked);
    assert_true(s.pings_sent >= 3);
    assert_true(s.pings_acked >= 3 && s.pings_acked <= s.pings_sent);
    assert_true(s.connections == 1);
    send_n(1, 1);
    expect_all_ok(1);
    assert_true(stats().connects == 1); /* the same connection */
    run_for(1500);
    s = stats();
    assert_true(s.connections == 0);
    send_n(1, 1);
    expect_all_ok(1);
    assert_true(stats().connects == 2);
}

/* A server that stops answering while requests are in flight (stopped
 * with SIGSTOP): the PING goes unanswered and the connection is given up
 * long before the request timeout. */
static void test_dead_server_detected(void **state)
{
    (void)state;
    fake_start("token * delay 60000\n");
    struct http_opts o = default_opts();
    o.ping_interval_ms = 200;
    o.timeout_ms = 20000;
    client_open(&o);
    reset_calls(3);
    struct channel_request q;
    for (int i = 0; i < 3; i++) {
        build(&q, "127.0.0.1", port, i, i);
        send_one(&q, i, NULL);
    }
    run_for(100); /* on the wire, held by the fake */
    kill(child.pid, SIGSTOP);
    run_until_done();
    kill(child.pid, SIGCONT);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(calls[i].error, -ETIMEDOUT);
        if (!strstr(calls[i].text, "PING")) {
            fail_msg("text: %s", calls[i].text);
        }
        assert_true(calls[i].elapsed_ms < 2000);
    }
    struct http_stats s = stats();
    assert_true(s.pings_sent >= 1);
    assert_true(s.connections == 0);
}

/* An IPv6 literal: parsed, connected over ::1, verified against the
 * certificate's addresses (127.0.0.1 only: a mismatch, as it should be). */
static void test_ipv6_literal(void **state)
{
    (void)state;
    fake_start_on("[::1]:0", "", true);
    struct http_opts o = default_opts();
    client_open(&o);
    reset_calls(1);
    struct channel_request q;
    build(&q, "[::1]", port, 1, 0);
    send_one(&q, 0, NULL);
    run_until_done();
    printf("[::1] -> %s\n", calls[0].text);
    assert_int_equal(calls[0].error, TDG_EHTTP);
    assert_non_null(strstr(calls[0].text, "[::1]:"));
    assert_non_null(strstr(calls[0].text, "IP address mismatch"));
}

static int stray_calls;
static void on_stray(void *ctx, const struct http_response *r)
{
    (void)ctx;
    (void)r;
    check_thread();
    stray_calls++;
}

/* Destroy with requests on streams, in the queue, and on a connection that
 * is still being set up: no callback, nothing leaks (ASan/valgrind). */
static void test_destroy_with_everything_in_flight(void **state)
{
    (void)state;
    fake_start("token * delay 5000\n");
    struct sockaddr_in a;
    int lfd = loopback_listener(&a, 16);
    struct http_opts o = default_opts();
    o.max_host_connections = 1;
    o.max_concurrent_streams = 3;
    client_open(&o);
    stray_calls = 0;
    struct channel_request q;
    for (int i = 0; i < 10; i++) {
        build(&q, "127.0.0.1", port, i, i);
        assert_int_equal(http_request(client, &q, NULL, on_stray, NULL), 0);
    }
    build(&q, "127.0.0.1", ntohs(a.sin_port), 1, 0);
    assert_int_equal(http_request(client, &q, NULL, on_stray, NULL), 0);
    run_for(300);
    struct http_stats s = stats();
    assert_true(s.connections == 2);
    assert_true(s.queued == 8); /* 7 behind the 3 streams, 1 connecting */
    assert_int_equal(http_inflight(client), 11);
    http_destroy(client);
    client = NULL;
    run_for(50);
    close(lfd);
    assert_int_equal(stray_calls, 0);
}

/* The in-flight bound, and a timeout while queued. */
static void test_ebusy_and_queued_timeout(void **state)
{
    (void)state;
    fake_start("token * delay 3000\n");
    struct http_opts o = default_opts();
    o.max_inflight = 4;
    o.max_host_connections = 1;
    o.max_concurrent_streams = 2;
    client_open(&o);
    reset_calls(4);
    struct channel_request q;
    struct http_req_opts ro = {.require_h2 = true, .timeout_ms = 300};
    for (int i = 0; i < 4; i++) {
        build(&q, "127.0.0.1", port, i, i);
        send_one(&q, i, &ro);
    }
    build(&q, "127.0.0.1", port, 9, 9);
    assert_int_equal(http_request(client, &q, &ro, on_done, &calls[9]), -EBUSY);
    run_until_done();
    for (int i = 0; i < 4; i++) {
        assert_int_equal(calls[i].error, -ETIMEDOUT);
        assert_non_null(strstr(calls[i].text, "timed out"));
    }
    assert_int_equal(calls[9].calls, 0);
    assert_int_equal(http_inflight(client), 0);
    struct http_stats s = stats();
    assert_true(s.resets_sent == 2); /* the two on streams; the queued ones never left */
}

/* A long-lived connection: many requests, no GOAWAY (no stream resets to
 * trip the server's rapid-reset protection), no replay, one connection. */
static long long_n = 120000;
static long long_started, long_done, long_bad;
static struct channel_request long_req;

static void on_long(void *ctx, const struct http_response *r)
{
    (void)ctx;
    check_thread();
    long_done++;
    if (r->error != 0 || r->status != 200) {
        long_bad++;
    }
    if (long_started < long_n) {
        long_started++;
        if (http_request(client, &long_req, NULL, on_long, NULL) != 0) {
            long_bad++;
        }
    }
    if (long_done == long_n) {
        loop_stop(loop);
    }
}

static void test_long_connection_no_goaway(void **state)
{
    (void)state;
    fake_start_on("127.0.0.1:0", "", false);
    struct http_opts o = default_opts();
    o.max_host_connections = 1;
    o.max_concurrent_streams = 1000;
    o.max_inflight = 1000;
    client_open(&o);
    build(&long_req, "127.0.0.1", port, 3, 0);
    long_started = long_done = long_bad = 0;
    uint64_t t0 = clock_mono_ms();
    for (int i = 0; i < 1000 && long_started < long_n; i++) {
        long_started++;
        assert_int_equal(http_request(client, &long_req, NULL, on_long, NULL), 0);
    }
    timed_out = false;
    uint64_t guard = loop_timer_add(loop, 120000, on_stop, &timed_out);
    assert_int_equal(loop_run(loop), 0);
    loop_timer_cancel(loop, guard);
    uint64_t ms = clock_mono_ms() - t0;
    struct http_stats s = stats();
    printf("%ld requests on one connection in %" PRIu64 " ms: goaways=%" PRIu64
           " resets_sent=%" PRIu64 " replayed=%" PRIu64 " connects=%" PRIu64 "\n",
           long_done, ms, s.goaways, s.resets_sent, s.replayed, s.connects);
    assert_false(timed_out);
    assert_int_equal(long_bad, 0);
    assert_true(s.goaways == 0);
    assert_true(s.resets_sent == 0);
    assert_true(s.replayed == 0);
    assert_true(s.connects == 1);
    assert_true(s.connections == 1);
}

/* HTTP/1.1-only server: a request that allows HTTP/1.1 goes over libcurl;
 * one that requires h2 fails with -EPROTO. */
static const char http1_server[] =
    "import http.server, ssl, sys\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    protocol_version = 'HTTP/1.1'\n"
    "    def do_POST(self):\n"
    "        self.rfile.read(int(self.headers.get('content-length', 0)))\n"
    "        self.send_response(201)\n"
    "        self.send_header('apns-id', 'h1-' + self.headers.get('apns-topic', ''))\n"
    "        self.send_header('content-length', '2')\n"
    "        self.end_headers()\n"
    "        self.wfile.write(b'ok')\n"
    "    def log_message(self, *a):\n"
    "        pass\n"
    "srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), H)\n"
    "ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n"
    "ctx.load_cert_chain(sys.argv[1], sys.argv[2])\n"
    "ctx.set_alpn_protocols(['http/1.1'])\n"
    "srv.socket = ctx.wrap_socket(srv.socket, server_side=True)\n"
    "open(sys.argv[3] + '.tmp', 'w').write('%d\\n' % srv.server_address[1])\n"
    "import os; os.rename(sys.argv[3] + '.tmp', sys.argv[3])\n"
    "srv.serve_forever()\n";

static void test_http1_fallback(void **state)
{
    (void)state;
    const char *py = "/usr/bin/python3";
    if (access(py, X_OK) != 0) {
        skip();
    }
    char cert[300], key[300];
    snprintf(cert, sizeof(cert), "%s/server.crt", dir);
    snprintf(key, sizeof(key), "%s/server.key", dir);
    snprintf(port_path, sizeof(port_path), "%s/port1", dir);
    snprintf(log_path, sizeof(log_path), "%s/http1.log", dir);
    const char *argv[] = {py, "-c", http1_server, cert, key, port_path, NULL};
    char why[256];
    if (harness_start(&child, "HTTP/1.1 test server", argv, log_path, port_path, 10000, why,
                      sizeof(why)) < 0) {
        fail_msg("%s", why);
    }
    port = child.port;
    struct http_opts o = default_opts();
    client_open(&o);
    struct channel_request q;
    struct http_req_opts h1ok = {.require_h2 = false, .capture = capture};
    struct http_req_opts h2only = {.require_h2 = true, .capture = capture};
    reset_calls(3);
    build(&q, "127.0.0.1", port, 1, 0);
    send_one(&q, 0, &h1ok);
    send_one(&q, 1, &h2only);
    send_one(&q, 2, &h1ok);
    run_until_done();
    for (int i = 0; i < 3; i += 2) {
        if (calls[i].error != 0) {
            fail_msg("request %d: %s", i, calls[i].text);
        }
        assert_int_equal(calls[i].status, 201);
        assert_int_equal(calls[i].version, 11);
        assert_string_equal(calls[i].apns_id, "h1-" TOPIC);
    }
    assert_int_equal(calls[1].error, -EPROTO);
    assert_non_null(strstr(calls[1].text, "HTTP/2 required"));
    /* Known now: the next request goes straight to HTTP/1.1. */
    reset_calls(1);
    send_one(&q, 0, &h1ok);
    run_until_done();
    assert_int_equal(calls[0].status, 201);
    struct http_stats s = stats();
    assert_true(s.h1_requests == 3);
    assert_true(s.connects == 0);
}

/* Everything in the request is copied: scribbling over it right after
 * http_request (before anything is written) changes nothing. */
static void test_request_is_copied(void **state)
{
    (void)state;
    fake_start("");
    struct http_opts o = default_opts();
    client_open(&o);
    reset_calls(2);
    static struct channel_request q;
    for (int i = 0; i < 2; i++) {
        build(&q, "127.0.0.1", port, i, i);
        send_one(&q, i, NULL);
        memset(&q, 0x55, sizeof(q));
    }
    run_until_done();
    expect_all_ok(2);
    struct record_summary r;
    read_record(&r);
    assert_int_equal(r.ok_per_n[0], 1);
    assert_int_equal(r.ok_per_n[1], 1);
}

/* Malformed requests are refused at once (no callback). */
static void test_bad_requests(void **state)
{
    (void)state;
    struct http_opts o = default_opts();
    client_open(&o);
    struct channel_request q;
    build(&q, "127.0.0.1", 1, 1, 0);
    snprintf(q.url, sizeof(q.url), "https://127.0.0.1:99999/x");
    assert_int_equal(http_request(client, &q, NULL, on_stray, NULL), -EINVAL);
    snprintf(q.url, sizeof(q.url), "https:///x");
    assert_int_equal(http_request(client, &q, NULL, on_stray, NULL), -EINVAL);
    snprintf(q.url, sizeof(q.url), "https://host/a b");
    assert_int_equal(http_request(client, &q, NULL, on_stray, NULL), -EINVAL);
    build(&q, "127.0.0.1", 1, 1, 0);
    snprintf(q.headers[0], sizeof(q.headers[0]), "no colon");
    assert_int_equal(http_request(client, &q, NULL, on_stray, NULL), -EINVAL);
    build(&q, "127.0.0.1", 1, 1, 0);
    snprintf(q.method, sizeof(q.method), "BREW");
    assert_int_equal(http_request(client, &q, NULL, on_stray, NULL), -EINVAL);
    assert_int_equal(http_inflight(client), 0);
    /* Refused connection: an answer with -ECONNREFUSED, later. */
    reset_calls(1);
    build(&q, "127.0.0.1", 1, 1, 0);
    send_one(&q, 0, NULL);
    run_until_done();
    assert_int_equal(calls[0].error, -ECONNREFUSED);
}


/* --- answers intact, on the caller's thread, exactly once ------------------- */

#define MANY_N 3000
static const char *const capture2[] = {"apns-id", "retry-after", NULL};

struct answer {
    int calls, error, status, version;
    char body[128];
    size_t body_len;
    char apns_id[40];
    char retry_after[16];
};
static struct answer *answers;
static int answers_got, answers_want;

static void on_answer(void *ctx, const struct http_response *r)
{
    struct answer *a = ctx;
    check_thread();
    assert_false(in_request);
    a->calls++;
    a->error = r->error;
    a->status = r->status;
    a->version = r->version;
    a->body_len = r->body_len;
    snprintf(a->body, sizeof(a->body), "%.*s", (int)r->body_len, r->body);
    assert_int_equal(r->body[r->body_len], '\0');
    const char *v = http_response_header(r, "apns-id");
    snprintf(a->apns_id, sizeof(a->apns_id), "%s", v ? v : "");
    v = http_response_header(r, "retry-after");
    snprintf(a->retry_after, sizeof(a->retry_after), "%s", v ? v : "");
    if (++answers_got >= answers_want) {
        loop_stop(loop);
    }
}

static void uuid_for(char *out, size_t len, int i)
{
    snprintf(out, len, "%08x-0000-4000-8000-%012x", (unsigned)i * 2654435761u, (unsigned)i);
}

/* Thousands of requests at once, four kinds of answer: each done runs
 * once, on the caller's thread, with its own status, body and captured
 * headers (the fake echoes the apns-id each request sent). */
static void test_many_answers_intact(void **state)
{
    (void)state;
    char t1[65], t2[65], t3[65], script[512];
    token_hex(t1, 1);
    token_hex(t2, 2);
    token_hex(t3, 3);
    snprintf(script, sizeof(script),
             "token %s status 410 reason Unregistered timestamp 1700000000000\n"
             "token %s status 429 reason TooManyRequests retry-after 7\n"
             "token %s status 400 reason BadDeviceToken\n",
             t1, t2, t3);
    fake_start_on("127.0.0.1:0", script, false);
    struct http_opts o = default_opts();
    o.max_inflight = MANY_N;
    client_open(&o);
    answers = calloc(MANY_N, sizeof(*answers));
    assert_non_null(answers);
    answers_got = 0;
    answers_want = MANY_N;
    struct http_req_opts ro = {.require_h2 = true, .capture = capture2};
    struct channel_request q;
    for (int i = 0; i < MANY_N; i++) {
        build(&q, "127.0.0.1", port, i % 16, i);
        char id[40];
        uuid_for(id, sizeof(id), i);
        snprintf(q.headers[q.nheaders++], sizeof(q.headers[0]), "apns-id: %s", id);
        in_request = true;
        int rc = http_request(client, &q, &ro, on_answer, &answers[i]);
        in_request = false;
        assert_int_equal(rc, 0);
    }
    assert_int_equal(http_inflight(client), MANY_N);
    assert_int_equal(http_request(client, &q, &ro, on_answer, &answers[0]), -EBUSY);
    timed_out = false;
    uint64_t guard = loop_timer_add(loop, GUARD_MS, on_stop, &timed_out);
    assert_int_equal(loop_run(loop), 0);
    loop_timer_cancel(loop, guard);
    if (timed_out) {
        dump_log();
        fail_msg("only %d of %d answers", answers_got, MANY_N);
    }
    run_for(50); /* no doubles */
    assert_int_equal(answers_got, MANY_N);
    assert_int_equal(http_inflight(client), 0);
    for (int i = 0; i < MANY_N; i++) {
        struct answer *a = &answers[i];
        char id[40];
        uuid_for(id, sizeof(id), i);
        if (a->calls != 1 || a->error != 0 || a->version != 20 || strcmp(a->apns_id, id) != 0) {
            fail_msg("request %d: calls %d error %s version %d apns-id '%s' (want %s)", i,
                     a->calls, tdg_errname(a->error), a->version, a->apns_id, id);
        }
        switch (i % 16) {
        case 1:
            assert_int_equal(a->status, 410);
            assert_string_equal(a->body, "{\"reason\":\"Unregistered\",\"timestamp\":1700000000000}");
            assert_int_equal(a->body_len, strlen(a->body));
            break;
        case 2:
            assert_int_equal(a->status, 429);
            assert_string_equal(a->body, "{\"reason\":\"TooManyRequests\"}");
            assert_string_equal(a->retry_after, "7");
            break;
        case 3:
            assert_int_equal(a->status, 400);
            assert_string_equal(a->body, "{\"reason\":\"BadDeviceToken\"}");
            assert_string_equal(a->retry_after, "");
            break;
        default:
            assert_int_equal(a->status, 200);
            assert_int_equal(a->body_len, 0);
            assert_string_equal(a->retry_after, "");
        }
    }
    struct http_stats s = stats();
    assert_true(s.requests == MANY_N);
    assert_true(s.queued == 0);
    free(answers);
    answers = NULL;
}

/* A body far over the small answers (the worker's hand-back copies it
 * whole): every byte arrives, with the captured header. */
static void test_big_body_intact(void **state)
{
    (void)state;
    const size_t len = 20000;
    struct mini_opts mo = {.max_streams = 100, .body_len = len};
    mini_send_all_ok(&mo, 5);
    for (int i = 0; i < 5; i++) {
        assert_string_equal(calls[i].apns_id, "mini");
        assert_int_equal(calls[i].body_len, len);
        assert_int_equal(calls[i].body_x, len);
    }
}

/* Destroy while requests are everywhere: not yet handed over, on streams,
 * queued for a stream, on a connection being set up, and (most likely)
 * answered but not yet delivered to this thread. No callback after
 * http_destroy, nothing leaks (ASan). */
static int everywhere_calls;
static void on_everywhere(void *ctx, const struct http_response *r)
{
    (void)ctx;
    (void)r;
    check_thread();
    everywhere_calls++;
    loop_stop(loop); /* leave the answers after it where they are */
}

static void test_destroy_everywhere(void **state)
{
    (void)state;
    char t7[65], script[128];
    token_hex(t7, 7);
    snprintf(script, sizeof(script), "token %s delay 5000\n", t7);
    fake_start(script);
    struct sockaddr_in a;
    int lfd = loopback_listener(&a, 16);
    struct http_opts o = default_opts();
    o.max_host_connections = 1;
    o.max_concurrent_streams = 3;
    client_open(&o);
    everywhere_calls = 0;
    struct channel_request q;
    for (int i = 0; i < 10; i++) { /* 3 on streams, 7 queued */
        build(&q, "127.0.0.1", port, 7, i);
        assert_int_equal(http_request(client, &q, NULL, on_everywhere, NULL), 0);
    }
    build(&q, "127.0.0.1", ntohs(a.sin_port), 1, 0); /* never gets past TCP accept */
    assert_int_equal(http_request(client, &q, NULL, on_everywhere, NULL), 0);
    run_for(300);
    assert_int_equal(everywhere_calls, 0);
    /* Answered at once (another origin: its own connection, set up by a
     * first request whose done stops the loop); two more are handed over
     * (the loop runs just its 0 ms timers) and answered while this thread
     * does not run its loop. */
    build(&q, "localhost", port, 8, 100);
    assert_int_equal(http_request(client, &q, NULL, on_everywhere, NULL), 0);
    run_for(GUARD_MS); /* until that answer */
    assert_int_equal(everywhere_calls, 1);
    for (int i = 0; i < 2; i++) {
        build(&q, "localhost", port, 9 + i, 101 + i);
        assert_int_equal(http_request(client, &q, NULL, on_everywhere, NULL), 0);
    }
    run_for(0);
    int before = everywhere_calls;
    /* Not a wait for a result: only gives the worker time to hand back
     * those two, so that destroy finds them there. */
    harness_sleep_ms(100);
    for (int i = 0; i < 5; i++) { /* never handed over */
        build(&q, "127.0.0.1", port, 1, 200 + i);
        assert_int_equal(http_request(client, &q, NULL, on_everywhere, NULL), 0);
    }
    assert_int_equal(http_inflight(client), 10 + 1 + 3 + 5 - before);
    http_destroy(client);
    client = NULL;
    run_for(50);
    close(lfd);
    assert_int_equal(everywhere_calls, before);
}

/* --- main ------------------------------------------------------------------------ */

static int group_setup(void **state)
{
    (void)state;
    if (harness_mkdtemp(dir, sizeof(dir), "h2") < 0) {
        return -1;
    }
    snprintf(dir2, sizeof(dir2), "%s/other", dir);
    if (mkdir(dir2, 0700) != 0 || harness_gen_certs(gen_certs, dir, KEY_ID) < 0 ||
        harness_gen_certs(gen_certs, dir2, NULL) < 0) {
        return -1;
    }
    char keyf[320], err[128];
    snprintf(keyf, sizeof(keyf), "%s/AuthKey_%s.p8", dir, KEY_ID);
    jwt_signer *sg = NULL;
    if (jwt_signer_create_file(keyf, &sg, err, sizeof(err)) != 0) {
        fprintf(stderr, "key: %s\n", err);
        return -1;
    }
    int n = jwt_es256_provider_token(sg, KEY_ID, TEAM_ID, time(NULL), jwt, sizeof(jwt));
    jwt_signer_destroy(sg);
    if (n < 0) {
        return -1;
    }
    const char *ln = getenv("TIDINGS_H2_LONG_N");
    if (ln && *ln) {
        long_n = strtol(ln, NULL, 10);
    }
    loop = loop_create();
    return loop ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    harness_stop(&child);
    loop_destroy(loop);
    return harness_rmtree(dir);
}

int main(int argc, char **argv)
{
    if (argc != 3 && !(argc == 4 && strcmp(argv[3], "same-thread") == 0)) {
        fprintf(stderr, "usage: %s FAKE_APNS GEN_CERTS_SH [same-thread]\n", argv[0]);
        return 2;
    }
    fake_bin = argv[1];
    gen_certs = argv[2];
    same_thread = argc == 4;
    test_thread = pthread_self();
    log_set_level(LOG_LVL_ERROR);
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_goaway_replays_exactly_once),
        T(test_stream_limit_queues),
        T(test_peer_stream_limit),
        T(test_refused_stream_replayed),
        T(test_body_cap),
        T(test_several_connections),
        T(test_connect_timeout_tls_black_hole),
        T(test_connect_timeout_tcp_black_hole),
        T(test_tls_verification_fails),
        T(test_tls_by_name),
        T(test_ping_on_idle_then_close),
        T(test_dead_server_detected),
        T(test_ipv6_literal),
        T(test_destroy_with_everything_in_flight),
        T(test_ebusy_and_queued_timeout),
        T(test_long_connection_no_goaway),
        T(test_http1_fallback),
        T(test_request_is_copied),
        T(test_bad_requests),
        T(test_many_answers_intact),
        T(test_big_body_intact),
        T(test_destroy_everywhere),
    };
#undef T
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
