/* test_httpd.c - the metrics registry's text format, and the HTTP server's
 * strict parsing, routes and limits, over real loopback sockets on one loop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "httpd.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"

/* --- metrics ------------------------------------------------------------ */

static void collect(void *arg)
{
    struct metric *g = arg;
    g->v = -7;
}

static void test_metrics_text(void **state)
{
    (void)state;
    metrics_t *m = metrics_create();
    assert_non_null(m);
    struct metric *ok = metrics_series(m, METRIC_COUNTER, "tidings_hub_attempts_total",
                                       "Provider requests by outcome", "channel=apns,result=ok");
    struct metric *rt = metrics_series(m, METRIC_COUNTER, "tidings_hub_attempts_total", NULL,
                                       "channel=apns,result=retry");
    assert_non_null(ok);
    assert_ptr_equal(ok, metrics_series(m, METRIC_COUNTER, "tidings_hub_attempts_total", NULL,
                                        "channel=apns,result=ok"));
    ok->v += 3;
    rt->v++;
    const char *keys[] = {"reason"};
    const char *vals[] = {"a \"quoted\"\\reason\nx"};
    struct metric *odd = metrics_series_kv(m, METRIC_COUNTER, "tidings_hub_failures_total",
                                           "Failures\nby reason", keys, vals, 1);
    assert_non_null(odd);
    odd->v = 1;
    struct metric *g = metrics_series(m, METRIC_GAUGE, "tidings_hub_queue_depth", "depth", "");
    assert_int_equal(metrics_on_collect(m, collect, g), 0);
    struct metric *h =
        metrics_series(m, METRIC_HISTOGRAM, "tidings_hub_latency_ms", "latency", "channel=apns");
    metrics_observe(h, 0.5);
    metrics_observe(h, 3);
    metrics_observe(h, 99999);
    /* a type clash and a bad name are refused */
    assert_null(metrics_series(m, METRIC_GAUGE, "tidings_hub_attempts_total", NULL, ""));
    assert_null(metrics_series(m, METRIC_GAUGE, "9bad", NULL, ""));
    assert_null(metrics_series(m, METRIC_GAUGE, "good", NULL, "novalue"));
    size_t len = 0;
    char *t = metrics_render(m, &len);
    assert_non_null(t);
    assert_int_equal(strlen(t), len);
    assert_non_null(strstr(t, "# HELP tidings_hub_attempts_total Provider requests by outcome\n"
                              "# TYPE tidings_hub_attempts_total counter\n"
                              "tidings_hub_attempts_total{channel=\"apns\",result=\"ok\"} 3\n"
                              "tidings_hub_attempts_total{channel=\"apns\",result=\"retry\"} 1\n"));
    assert_non_null(strstr(t, "# HELP tidings_hub_failures_total Failures\\nby reason\n"));
    assert_non_null(
        strstr(t, "tidings_hub_failures_total{reason=\"a \\\"quoted\\\"\\\\reason\\nx\"} 1\n"));
    assert_non_null(
        strstr(t, "# TYPE tidings_hub_queue_depth gauge\ntidings_hub_queue_depth -7\n"));
    assert_non_null(strstr(t, "tidings_hub_latency_ms_bucket{channel=\"apns\",le=\"1\"} 1\n"));
    assert_non_null(strstr(t, "tidings_hub_latency_ms_bucket{channel=\"apns\",le=\"5\"} 2\n"));
    assert_non_null(strstr(t, "tidings_hub_latency_ms_bucket{channel=\"apns\",le=\"30000\"} 2\n"));
    assert_non_null(strstr(t, "tidings_hub_latency_ms_bucket{channel=\"apns\",le=\"+Inf\"} 3\n"));
    assert_non_null(strstr(t, "tidings_hub_latency_ms_count{channel=\"apns\"} 3\n"));
    assert_non_null(strstr(t, "tidings_hub_latency_ms_sum{channel=\"apns\"} 100002.500\n"));
    free(t);
    metrics_destroy(m);
}

static void test_metrics_limit(void **state)
{
    (void)state;
    log_set_level(LOG_LVL_ERROR);
    metrics_t *m = metrics_create();
    char labels[64];
    int made = 0;
    for (int i = 0; i < METRICS_MAX_SERIES + 10; i++) {
        snprintf(labels, sizeof(labels), "i=%d", i);
        if (metrics_series(m, METRIC_COUNTER, "c", "c", labels)) {
            made++;
        }
    }
    assert_int_equal(made, METRICS_MAX_SERIES);
    metrics_destroy(m);
}

/* --- httpd --------------------------------------------------------------- */

struct client {
    char buf[65536];
    size_t len;
};

static void on_client(loop_t *loop, int fd, unsigned ev, void *arg)
{
    (void)ev;
    struct client *c = arg;
    for (;;) {
        ssize_t n = recv(fd, c->buf + c->len, sizeof(c->buf) - 1 - c->len, 0);
        if (n > 0) {
            c->len += (size_t)n;
            c->buf[c->len] = '\0';
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            return;
        }
        loop_fd_del(loop, fd);
        loop_stop(loop);
        return;
    }
}

static void on_timeout(loop_t *loop, uint64_t id, void *arg)
{
    (void)id;
    (void)arg;
    loop_stop(loop);
}

/* Send raw bytes to the server, run the loop until it closes; return the
 * answer (static buffer). */
static const char *roundtrip(loop_t *loop, int port, const char *raw, size_t rawlen)
{
    static struct client c;
    memset(&c, 0, sizeof(c));
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    size_t off = 0;
    while (off < rawlen) {
        ssize_t n = send(fd, raw + off, rawlen - off, MSG_NOSIGNAL);
        if (n <= 0) {
            break; /* the server may answer and close early (e.g. 413) */
        }
        off += (size_t)n;
    }
    int fl = 1;
    (void)fl;
    struct timeval tv = {0};
    (void)tv;
    assert_int_equal(loop_fd_add(loop, fd, LOOP_READ, on_client, &c), 0);
    uint64_t t = loop_timer_add(loop, 5000, on_timeout, NULL);
    loop_run(loop);
    loop_timer_cancel(loop, t);
    loop_fd_del(loop, fd);
    close(fd);
    return c.buf;
}

static const char *req(loop_t *loop, int port, const char *raw)
{
    return roundtrip(loop, port, raw, strlen(raw));
}

static void hello(void *arg, const struct httpd_req *r, struct httpd_resp *resp)
{
    (void)arg;
    snprintf(resp->content_type, sizeof(resp->content_type), "application/json");
    httpd_resp_printf(resp, "{\"path\":\"%s\",\"query\":\"%s\",\"body\":\"%s\",\"x\":\"%s\"}",
                      r->path, r->query, r->body,
                      httpd_req_header(r, "X-Test") ? httpd_req_header(r, "x-test") : "");
}

static void unavailable(void *arg, const struct httpd_req *r, struct httpd_resp *resp)
{
    (void)arg;
    (void)r;
    resp->status = 503;
    httpd_resp_append(resp, "down\n", 5);
}

static void test_httpd(void **state)
{
    (void)state;
    loop_t *loop = loop_create();
    httpd_t *h = NULL;
    char err[256];
    assert_int_equal(httpd_create(loop, "nonsense", &h, err, sizeof(err)), -EINVAL);
    assert_int_equal(httpd_create(loop, "localhost:80", &h, err, sizeof(err)), -EINVAL);
    assert_int_equal(httpd_create(loop, "127.0.0.1:99999", &h, err, sizeof(err)), -EINVAL);
    assert_int_equal(httpd_create(loop, "127.0.0.1:0", &h, err, sizeof(err)), 0);
    int port = httpd_port(h);
    assert_true(port > 0);
    assert_int_equal(httpd_route(h, "GET", "/hello", hello, NULL), 0);
    assert_int_equal(httpd_route(h, "POST", "/hello", hello, NULL), 0);
    assert_int_equal(httpd_route(h, "GET", "/down", unavailable, NULL), 0);
    assert_int_equal(httpd_route(h, "GET", "/hello", hello, NULL), -EEXIST);
    assert_int_equal(httpd_route(h, "GET", "nope", hello, NULL), -EINVAL);

    const char *a = req(loop, port, "GET /hello?x=1 HTTP/1.1\r\nHost: a\r\nX-Test:  v  \r\n\r\n");
    assert_non_null(strstr(a, "HTTP/1.1 200 OK\r\n"));
    assert_non_null(strstr(a, "Content-Type: application/json\r\n"));
    assert_non_null(strstr(a, "Connection: close\r\n"));
    assert_non_null(
        strstr(a, "\r\n\r\n{\"path\":\"/hello\",\"query\":\"x=1\",\"body\":\"\",\"x\":\"v\"}"));

    a = req(loop, port, "POST /hello HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nabcde");
    assert_non_null(strstr(a, "\"body\":\"abcde\""));
    /* a body arriving in a later segment is waited for */
    a = req(loop, port, "POST /hello HTTP/1.0\r\nContent-Length: 0\r\n\r\n");
    assert_non_null(strstr(a, "HTTP/1.1 200 OK"));
    a = req(loop, port, "HEAD /hello HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_non_null(strstr(a, "HTTP/1.1 200 OK"));
    assert_null(strstr(a, "{\"path\""));
    assert_non_null(strstr(req(loop, port, "GET /down HTTP/1.1\r\nHost: a\r\n\r\n"),
                           "HTTP/1.1 503 Service Unavailable"));
    assert_non_null(
        strstr(req(loop, port, "GET /nope HTTP/1.1\r\nHost: a\r\n\r\n"), "HTTP/1.1 404 "));
    a = req(loop, port, "DELETE /hello HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_non_null(strstr(a, "HTTP/1.1 405 "));
    assert_non_null(strstr(a, "Allow: GET, POST\r\n"));

    /* strict parsing */
    static const char *const bad[] = {
        "GET /hello HTTP/1.1\nHost: a\n\n",                      /* bare LF */
        "GET /hello HTTP/1.1\r\n\r\n",                           /* no Host */
        "GET hello HTTP/1.1\r\nHost: a\r\n\r\n",                 /* not a path */
        "G(T /hello HTTP/1.1\r\nHost: a\r\n\r\n",                /* bad method */
        "GET /hello HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",     /* obs-fold */
        "GET /hello HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n", /* space in name */
        "GET /hello HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n",
        "POST /hello HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        "POST /hello HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
        "GET /hello  HTTP/1.1\r\nHost: a\r\n\r\n", /* double space */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        a = req(loop, port, bad[i]);
        if (!strstr(a, "HTTP/1.1 400 ")) {
            fail_msg("case %zu: expected 400, got: %.60s", i, a);
        }
    }
    assert_non_null(
        strstr(req(loop, port, "GET /hello HTTP/2.0\r\nHost: a\r\n\r\n"), "HTTP/1.1 505 "));
    assert_non_null(strstr(
        req(loop, port, "POST /hello HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"),
        "HTTP/1.1 501 "));
    assert_non_null(strstr(
        req(loop, port, "POST /hello HTTP/1.1\r\nHost: a\r\nContent-Length: 9999999\r\n\r\n"),
        "HTTP/1.1 413 "));
    /* a head over the limit */
    size_t big = HTTPD_MAX_HEAD + 100;
    char *raw = malloc(big + 64);
    int n = snprintf(raw, big + 64, "GET /hello HTTP/1.1\r\nHost: a\r\nX-Big: ");
    memset(raw + n, 'x', big);
    memcpy(raw + n + big, "\r\n\r\n", 5);
    assert_non_null(strstr(roundtrip(loop, port, raw, strlen(raw)), "HTTP/1.1 431 "));
    free(raw);
    /* too many header fields */
    char many[4096];
    size_t pos = (size_t)snprintf(many, sizeof(many), "GET /hello HTTP/1.1\r\nHost: a\r\n");
    for (int i = 0; i < HTTPD_MAX_HEADERS + 1; i++) {
        pos += (size_t)snprintf(many + pos, sizeof(many) - pos, "X-%d: y\r\n", i);
    }
    snprintf(many + pos, sizeof(many) - pos, "\r\n");
    assert_non_null(strstr(req(loop, port, many), "HTTP/1.1 431 "));

    httpd_destroy(h);
    loop_destroy(loop);
}

int main(void)
{
    log_set_level(LOG_LVL_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_metrics_text),
        cmocka_unit_test(test_metrics_limit),
        cmocka_unit_test(test_httpd),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
