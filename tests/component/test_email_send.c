/*
 * test_email_send.c - the email channel's send path (hub/smtp.c over libcurl
 * multi) against a real SMTP server: tests/fakes/fake_smtp.py (aiosmtpd with
 * STARTTLS required and AUTH PLAIN/LOGIN), on a real Tidings loop, for every
 * reply mapping; plus the fake's own refusals of plaintext MAIL and AUTH,
 * checked over a raw socket.
 *
 * usage: test_email_send PYTHON FAKE_SMTP_PY GEN_CERTS_SH
 *
 * Once per run: a temp dir with a test CA and server certificate made by
 * gen-certs.sh, and a random password (only in a 0600 file that both the
 * fake and the channel read). Per test: a fake started as a child process
 * with that test's script (port 0, port read from --port-file), a fresh
 * channel pointed at it, both stopped in teardown. The child gets
 * PR_SET_PDEATHSIG so it dies with us whatever happens; the temp dir is
 * removed in the group teardown.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include <cjson/cJSON.h>

#include "config.h"
#include "harness.h"
#include "email.h"
#include "error.h"
#include "log.h"
#include "loop.h"

#define USER "tidings-hub"
#define FROM_ADDR "alerts@example.com"
#define MAX_SENDS 16
#define GUARD_MS 30000

static const char *python;
static const char *fake_py;
static const char *gen_certs;
static char dir[256];
static char pw_path[320], mail_dir[320];
static loop_t *loop;

static struct harness_child fake = {.pid = -1};
static int fake_port;
static void *chan;
static char record_path[320], script_path[320], port_path[320], log_path[320];

static void random_hex(char *out, size_t nbytes)
{
    assert_int_equal(harness_random_hex(out, nbytes), 0);
}

/* --- the fake as a child process ------------------------------------------- */

static void dump_log(void)
{
    harness_dump_log(&fake);
}

/* Start the fake with script; extra is NULL or one more flag. */
static void fake_start_with(const char *script, const char *pw_file, const char *extra)
{
    unlink(record_path);
    FILE *f = fopen(script_path, "w");
    assert_non_null(f);
    fputs(script, f);
    fclose(f);

    char cert[300], key[300];
    snprintf(cert, sizeof(cert), "%s/server.crt", dir);
    snprintf(key, sizeof(key), "%s/server.key", dir);
    const char *argv[] = {
        python,        fake_py,     "--listen",   "127.0.0.1:0", "--cert",          cert,
        "--key",       key,         "--username", USER,          "--password-file", pw_file,
        "--record",    record_path, "--mail-dir", mail_dir,      "--script",        script_path,
        "--port-file", port_path,   extra,        NULL};
    char why[256];
    if (harness_start(&fake, "fake-smtp", argv, log_path, port_path, 15000, why, sizeof(why)) <
        0) {
        fail_msg("%s", why);
    }
    fake_port = fake.port;
}

static void fake_start(const char *script)
{
    fake_start_with(script, pw_path, NULL);
}

static void fake_stop(void)
{
    harness_stop(&fake);
}

/* --- the record --------------------------------------------------------------- */

#define MAX_LINES 64
static cJSON *rec[MAX_LINES];
static int nrec;

static void record_free(void)
{
    for (int i = 0; i < nrec; i++) {
        cJSON_Delete(rec[i]);
    }
    nrec = 0;
}

static int record_load(void)
{
    record_free();
    FILE *f = fopen(record_path, "r");
    if (!f) {
        return 0;
    }
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0 && nrec < MAX_LINES) {
        cJSON *j = cJSON_Parse(line);
        assert_non_null(j);
        rec[nrec++] = j;
    }
    free(line);
    fclose(f);
    return nrec;
}

static const char *jstr(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int count_event(const char *event)
{
    int n = 0;
    for (int i = 0; i < nrec; i++) {
        const char *e = jstr(rec[i], "event");
        n += e && strcmp(e, event) == 0;
    }
    return n;
}

/* --- the channel --------------------------------------------------------------------- */

static void cfg_set(struct email_config *c, const char *k, const char *v)
{
    char err[CONFIG_ERR_MAX];
    if (config_set(email_channel.config, email_channel.config_n, c, k, v, err, sizeof(err)) != 0) {
        fail_msg("config %s: %s", k, err);
    }
}

static void config_for(struct email_config *c, int port)
{
    char err[CONFIG_ERR_MAX], v[512];
    assert_int_equal(
        config_defaults(email_channel.config, email_channel.config_n, c, err, sizeof(err)), 0);
    snprintf(v, sizeof(v), "smtp://127.0.0.1:%d", port);
    cfg_set(c, "email.smtp_url", v);
    cfg_set(c, "email.username", USER);
    cfg_set(c, "email.password_file", pw_path);
    cfg_set(c, "email.from",
            "Tidings T\xc3\xbcrw\xc3\xa4"
            "chter <" FROM_ADDR ">");
    snprintf(v, sizeof(v), "%s/ca.crt", dir);
    cfg_set(c, "email.ca_file", v);
    cfg_set(c, "email.timeout", "10s");
}

static void chan_open(const struct email_config *c)
{
    struct channel_env env = {.loop = loop, .http = NULL};
    char err[256] = "";
    int rc = email_channel.init(&env, c, &chan, err, sizeof(err));
    if (rc != 0) {
        fail_msg("init: %s: %s", tdg_strerror(rc), err);
    }
}

static void chan_open_default(void)
{
    struct email_config c;
    config_for(&c, fake_port);
    chan_open(&c);
}

static int setup(void **state)
{
    (void)state;
    chan = NULL;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (chan) {
        email_channel.destroy(chan);
        chan = NULL;
    }
    fake_stop();
    record_free();
    return 0;
}

/* --- sending ------------------------------------------------------------------------- */

struct call {
    struct waiter *w;
    int calls;
    uint64_t done_ms;
    struct channel_outcome o;
};

struct waiter {
    int expected, got;
    bool timed_out;
    bool in_send;
    struct call calls[MAX_SENDS];
};

static void on_done(void *ctx, const struct channel_outcome *o)
{
    struct call *c = ctx;
    struct waiter *w = c->w;
    assert_false(w->in_send);
    c->calls++;
    c->o = *o;
    c->done_ms = clock_mono_ms();
    w->got++;
    if (w->got >= w->expected) {
        loop_stop(loop);
    }
}

static void on_guard(loop_t *l, uint64_t id, void *arg)
{
    (void)id;
    struct waiter *w = arg;
    w->timed_out = true;
    loop_stop(l);
}

static void on_settle(loop_t *l, uint64_t id, void *arg)
{
    (void)id;
    (void)arg;
    loop_stop(l);
}

struct fixture {
    struct notification n;
    struct channel_device dev;
    struct channel_delivery d;
    char to[128];
    char id[32];
};

static void fixture(struct fixture *f, const char *to, const char *title, const char *body)
{
    static int seq;
    memset(f, 0, sizeof(*f));
    snprintf(f->to, sizeof(f->to), "%s", to);
    snprintf(f->id, sizeof(f->id), "mail-%d", ++seq);
    f->n.id = f->id;
    f->n.to = "user:alice";
    f->n.to_id = "alice";
    f->n.title = title;
    f->n.body = body;
    f->n.priority = PROTO_PRIO_NORMAL;
    f->dev.user_id = "alice";
    f->dev.platform = "email";
    f->dev.token = f->to;
    f->d.attempt_id = 1;
    f->d.n = &f->n;
    f->d.dev = &f->dev;
    f->d.now_ms = clock_wall_ms();
}

static struct waiter W;
static struct fixture FX[MAX_SENDS];

static void send_wait(int n)
{
    memset(&W, 0, sizeof(W));
    W.expected = n;
    for (int i = 0; i < n; i++) {
        W.calls[i].w = &W;
        W.in_send = true;
        int rc = email_channel.send(chan, &FX[i].d, on_done, &W.calls[i]);
        W.in_send = false;
        if (rc != 0) {
            fail_msg("send %d: %s", i, tdg_strerror(rc));
        }
    }
    uint64_t guard = loop_timer_add(loop, GUARD_MS, on_guard, &W);
    assert_true(guard != 0);
    assert_int_equal(loop_run(loop), 0);
    loop_timer_cancel(loop, guard);
    if (W.timed_out) {
        dump_log();
        fail_msg("only %d of %d sends finished in %d ms", W.got, n, GUARD_MS);
    }
    assert_true(loop_timer_add(loop, 50, on_settle, NULL) != 0);
    assert_int_equal(loop_run(loop), 0);
    for (int i = 0; i < n; i++) {
        assert_int_equal(W.calls[i].calls, 1);
    }
}

static const struct channel_outcome *send_one(const char *to, const char *title, const char *body)
{
    fixture(&FX[0], to, title, body);
    send_wait(1);
    return &W.calls[0].o;
}

static void expect(const struct channel_outcome *o, enum channel_result result, int status,
                   const char *reason_prefix)
{
    if (o->result != result || (status >= 0 && o->status != status) ||
        strncmp(o->reason, reason_prefix, strlen(reason_prefix)) != 0) {
        dump_log();
        fail_msg("got result=%d status=%d reason='%s'; want result=%d status=%d reason='%s...'",
                 o->result, o->status, o->reason, result, status, reason_prefix);
    }
}

/* --- tests: delivery ------------------------------------------------------------------ */

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    static char buf[EMAIL_MESSAGE_MAX + 1];
    *len = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[*len] = '\0';
    return buf;
}

/* The message arrives over STARTTLS + AUTH byte for byte as formatted
 * (dot-stuffing included: lines starting with '.' survive), and the
 * outcome carries the server's queue id. */
static void test_ok_stored(void **state)
{
    (void)state;
    fake_start("");
    chan_open_default();
    const char *title = "T\xc3\xbcr offen \xe2\x80\x94 \xf0\x9f\x9a\xaa";
    const char *body = "Die Haust\xc3\xbcr ist offen.\n.\n..two dots\n.leading\nend";
    fixture(&FX[0], "alice@example.org", title, body);
    send_wait(1);
    const struct channel_outcome *o = &W.calls[0].o;
    expect(o, CHANNEL_OK, 250, "");
    assert_int_equal(strlen(o->provider_id), 10);

    assert_int_equal(record_load(), 1);
    cJSON *r = rec[0];
    assert_string_equal(jstr(r, "event"), "message");
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "tls")));
    const char *tv = jstr(r, "tls_version");
    assert_true(strcmp(tv, "TLSv1.3") == 0 || strcmp(tv, "TLSv1.2") == 0);
    assert_string_equal(jstr(r, "auth"), "PLAIN");
    assert_string_equal(jstr(r, "user"), USER);
    assert_string_equal(jstr(r, "helo"), "example.com");
    assert_string_equal(jstr(r, "mail_from"), FROM_ADDR);
    const cJSON *rcpts = cJSON_GetObjectItemCaseSensitive(r, "rcpt_to");
    assert_int_equal(cJSON_GetArraySize(rcpts), 1);
    assert_string_equal(cJSON_GetArrayItem(rcpts, 0)->valuestring, "alice@example.org");
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r, "problems")), 0);
    assert_string_equal(jstr(r, "queue_id"), o->provider_id);

    /* what arrived == what format builds for the same delivery */
    static struct email_message m;
    struct channel_outcome fo;
    assert_int_equal(email_format_message(chan, &FX[0].d, &m, &fo), 0);
    size_t len = 0;
    char *got = slurp(jstr(r, "file"), &len);
    assert_int_equal(len, m.len);
    assert_memory_equal(got, m.data, m.len);
    assert_non_null(strstr(got, "\r\n.\r\n..two dots\r\n.leading\r\n"));
}

static void test_auth_login(void **state)
{
    (void)state;
    fake_start("");
    struct email_config c;
    config_for(&c, fake_port);
    cfg_set(&c, "email.auth", "login");
    chan_open(&c);
    expect(send_one("bob@example.org", "Hi", "there"), CHANNEL_OK, 250, "");
    assert_int_equal(record_load(), 1);
    assert_string_equal(jstr(rec[0], "auth"), "LOGIN");
}

static void test_reject_550(void **state)
{
    (void)state;
    fake_start("rcpt gone@example.org reject-550\n");
    chan_open_default();
    expect(send_one("gone@example.org", "Hi", "there"), CHANNEL_DROP, 550,
           "550 5.1.1 Mailbox unavailable");
    assert_int_equal(record_load(), 1);
    assert_string_equal(jstr(rec[0], "event"), "rcpt");
}

static void test_reject_553(void **state)
{
    (void)state;
    fake_start("rcpt odd@example.org reject-553\n");
    chan_open_default();
    expect(send_one("odd@example.org", "Hi", "there"), CHANNEL_DROP, 553, "553 5.1.3");
}

static void test_reject_4xx_retries(void **state)
{
    (void)state;
    fake_start("rcpt busy@example.org reject-4xx\n");
    chan_open_default();
    expect(send_one("busy@example.org", "Hi", "there"), CHANNEL_RETRY, 451,
           "451 4.3.0 Temporary failure");
}

static void test_data_replies(void **state)
{
    (void)state;
    fake_start("rcpt big@example.org at data reply 552 5.3.4 Message too big for system\n"
               "rcpt later@example.org at data reply 451 4.7.1 Greylisted\n");
    chan_open_default();
    expect(send_one("big@example.org", "Hi", "there"), CHANNEL_DROP, 552,
           "552 5.3.4 Message too big for system");
    expect(send_one("later@example.org", "Hi", "there"), CHANNEL_RETRY, 451,
           "451 4.7.1 Greylisted");
    /* and the connection stays usable for the next one */
    expect(send_one("fine@example.org", "Hi", "there"), CHANNEL_OK, 250, "");
}

/* A ticker on the loop: the largest gap between ticks shows whether
 * anything blocked the loop. */
static uint64_t tick_last, tick_max_gap;
static uint64_t tick_id;

static void on_tick(loop_t *l, uint64_t id, void *arg)
{
    (void)id;
    (void)arg;
    uint64_t now = clock_mono_ms();
    if (tick_last && now - tick_last > tick_max_gap) {
        tick_max_gap = now - tick_last;
    }
    tick_last = now;
    tick_id = loop_timer_add(l, 10, on_tick, NULL);
}

static void ticker_start(void)
{
    tick_last = 0;
    tick_max_gap = 0;
    tick_id = loop_timer_add(loop, 10, on_tick, NULL);
}

static void ticker_stop(void)
{
    loop_timer_cancel(loop, tick_id);
}

static void test_slow(void **state)
{
    (void)state;
    fake_start("rcpt slow@example.org delay 3000\n"
               "rcpt calm@example.org delay 300\n");
    struct email_config c;
    config_for(&c, fake_port);
    cfg_set(&c, "email.timeout", "1500ms");
    chan_open(&c);
    uint64_t t0 = clock_mono_ms();
    ticker_start();
    /* the last reply before the timeout was DATA's 354 */
    expect(send_one("slow@example.org", "Hi", "there"), CHANNEL_RETRY, -1, "timeout:");
    if (W.calls[0].done_ms - t0 >= 2900) {
        fail_msg("timed out after %llu ms", (unsigned long long)(W.calls[0].done_ms - t0));
    }
    expect(send_one("calm@example.org", "Hi", "there"), CHANNEL_OK, 250, "");
    ticker_stop();
    /* While the server sat on the message for seconds, the loop ran on:
     * libcurl's blocking wait for that reply happens on a worker thread. */
    if (tick_max_gap > 250) {
        fail_msg("the loop was blocked for %llu ms", (unsigned long long)tick_max_gap);
    }
}

static void test_dropped_connection(void **state)
{
    (void)state;
    fake_start("rcpt cut@example.org drop\n"
               "rcpt cutdata@example.org at data drop\n");
    chan_open_default();
    const struct channel_outcome *o = send_one("cut@example.org", "Hi", "there");
    assert_int_equal(o->result, CHANNEL_RETRY);
    assert_memory_equal(o->reason, "lost:", 5);
    o = send_one("cutdata@example.org", "Hi", "there");
    assert_int_equal(o->result, CHANNEL_RETRY);
    expect(send_one("after@example.org", "Hi", "there"), CHANNEL_OK, 250, "");
}

static void test_wrong_password(void **state)
{
    (void)state;
    char other[320], pw[40];
    snprintf(other, sizeof(other), "%s/other-pw", dir);
    random_hex(pw, 12);
    FILE *f = fopen(other, "w");
    assert_non_null(f);
    fprintf(f, "%s\n", pw);
    fclose(f);
    fake_start_with("", other, NULL);
    chan_open_default();
    expect(send_one("alice@example.org", "Hi", "there"), CHANNEL_DROP, 535,
           "auth_failed: 535 5.7.8");
    assert_int_equal(record_load(), 1);
    assert_string_equal(jstr(rec[0], "event"), "auth");
    assert_int_equal(count_event("message"), 0);
}

/* A server certificate we cannot verify: refused, nothing sent. */
static void test_tls_unverified(void **state)
{
    (void)state;
    fake_start("");
    struct email_config c;
    config_for(&c, fake_port);
    cfg_set(&c, "email.ca_file", "");
    char v[512];
    snprintf(v, sizeof(v), "%s/other-ca.crt", dir);
    /* a CA that did not sign the server: make one with gen-certs.sh */
    char other[300];
    snprintf(other, sizeof(other), "%s/other", dir);
    assert_int_equal(mkdir(other, 0700), 0);
    assert_int_equal(harness_gen_certs(gen_certs, other, NULL), 0);
    snprintf(v, sizeof(v), "%s/other/ca.crt", dir);
    cfg_set(&c, "email.ca_file", v);
    chan_open(&c);
    /* status: the last reply before the handshake, STARTTLS's 220 */
    expect(send_one("alice@example.org", "Hi", "there"), CHANNEL_DROP, -1, "tls_failed:");
    assert_int_equal(record_load(), 0);
}

/* A server that never offers STARTTLS: the channel must not fall back to
 * plaintext: no AUTH, no MAIL, nothing of the message. */
static void test_no_starttls_refused(void **state)
{
    (void)state;
    fake_start_with("", pw_path, "--no-starttls");
    chan_open_default();
    const struct channel_outcome *o = send_one("alice@example.org", "Secret", "plaintext?");
    assert_int_equal(o->result, CHANNEL_DROP);
    assert_memory_equal(o->reason, "tls_failed:", 11);
    assert_int_equal(record_load(), 0); /* no auth attempt, no message */
}

static void test_connection_refused(void **state)
{
    (void)state;
    fake_start("");
    int port = fake_port;
    fake_stop();
    struct email_config c;
    config_for(&c, port);
    chan_open(&c);
    const struct channel_outcome *o = send_one("alice@example.org", "Hi", "there");
    assert_int_equal(o->result, CHANNEL_RETRY);
    assert_memory_equal(o->reason, "connect:", 8);
}

static void test_header_injection_not_sent(void **state)
{
    (void)state;
    fake_start("");
    chan_open_default();
    expect(send_one("alice@example.org", "Hi\r\nBcc: victim@example.net", "x"), CHANNEL_DROP, 0,
           "header_injection");
    expect(send_one("alice@example.org\r\nRCPT TO:<victim@example.net>", "Hi", "x"), CHANNEL_DROP,
           0, "header_injection");
    expect(send_one("not an address", "Hi", "x"), CHANNEL_DROP, 0, "invalid_address");
    assert_int_equal(record_load(), 0);
}

/* Two connections, six messages: all delivered, idle connections reused
 * (at most two distinct client ports at the server). */
static void test_connections_reused(void **state)
{
    (void)state;
    fake_start("");
    struct email_config c;
    config_for(&c, fake_port);
    cfg_set(&c, "email.connections", "2");
    chan_open(&c);
    for (int i = 0; i < 6; i++) {
        char to[64];
        snprintf(to, sizeof(to), "user%d@example.org", i);
        fixture(&FX[i], to, "Batch", "message");
    }
    send_wait(6);
    for (int i = 0; i < 6; i++) {
        expect(&W.calls[i].o, CHANNEL_OK, 250, "");
    }
    assert_int_equal(record_load(), 6);
    char peers[6][64];
    int npeers = 0;
    for (int i = 0; i < nrec; i++) {
        const char *p = jstr(rec[i], "peer");
        bool seen = false;
        for (int k = 0; k < npeers; k++) {
            seen = seen || strcmp(peers[k], p) == 0;
        }
        if (!seen) {
            snprintf(peers[npeers++], sizeof(peers[0]), "%s", p);
        }
    }
    if (npeers > 2) {
        fail_msg("%d connections for 6 messages with email.connections = 2", npeers);
    }
}

static void test_queue_busy(void **state)
{
    (void)state;
    fake_start("rcpt * delay 400\n");
    struct email_config c;
    config_for(&c, fake_port);
    cfg_set(&c, "email.connections", "1");
    cfg_set(&c, "email.queue_max", "1");
    chan_open(&c);
    for (int i = 0; i < 3; i++) {
        char to[64];
        snprintf(to, sizeof(to), "q%d@example.org", i);
        fixture(&FX[i], to, "Queue", "x");
    }
    send_wait(3);
    expect(&W.calls[0].o, CHANNEL_OK, 250, "");
    expect(&W.calls[1].o, CHANNEL_OK, 250, "");
    expect(&W.calls[2].o, CHANNEL_RETRY, 0, "busy:");
    /* the busy one was answered at once, long before the others */
    assert_true(W.calls[2].done_ms < W.calls[0].done_ms);
}

static int cb_count;

static void count_cb(void *ctx, const struct channel_outcome *o)
{
    (void)ctx;
    (void)o;
    cb_count++;
}

static void test_destroy_with_pending(void **state)
{
    (void)state;
    fake_start("rcpt * delay 5000\n");
    struct email_config c;
    config_for(&c, fake_port);
    cfg_set(&c, "email.connections", "1");
    chan_open(&c);
    cb_count = 0;
    for (int i = 0; i < 3; i++) {
        char to[64];
        snprintf(to, sizeof(to), "p%d@example.org", i);
        fixture(&FX[i], to, "Pending", "x");
        assert_int_equal(email_channel.send(chan, &FX[i].d, count_cb, NULL), 0);
    }
    fixture(&FX[3], "bad address", "Pending", "x");
    assert_int_equal(email_channel.send(chan, &FX[3].d, count_cb, NULL), 0);
    assert_true(loop_timer_add(loop, 300, on_settle, NULL) != 0);
    assert_int_equal(loop_run(loop), 0);
    assert_int_equal(cb_count, 1);
    email_channel.destroy(chan);
    chan = NULL;
    assert_true(loop_timer_add(loop, 100, on_settle, NULL) != 0);
    assert_int_equal(loop_run(loop), 0);
    assert_int_equal(cb_count, 1);
}

/* --- tests: the fake refuses plaintext ------------------------------------------------ */

static int sock_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    return fd;
}

/* Read one whole reply (all "NNN-" lines and the final "NNN ") into buf. */
static void read_reply(int fd, char *buf, size_t cap)
{
    size_t n = 0;
    for (;;) {
        assert_true(n + 1 < cap);
        ssize_t r = recv(fd, buf + n, cap - 1 - n, 0);
        assert_true(r > 0);
        n += (size_t)r;
        buf[n] = '\0';
        /* done when the last complete line has a space after the code */
        if (n >= 2 && buf[n - 2] == '\r' && buf[n - 1] == '\n') {
            char *last = buf;
            for (char *p = buf; p + 2 < buf + n; p++) {
                if (p[0] == '\r' && p[1] == '\n') {
                    last = p + 2;
                }
            }
            if (strlen(last) >= 4 && last[3] == ' ') {
                return;
            }
        }
    }
}

static void say(int fd, const char *line, char *reply, size_t cap)
{
    assert_int_equal(send(fd, line, strlen(line), 0), (ssize_t)strlen(line));
    read_reply(fd, reply, cap);
}

static void test_fake_refuses_plaintext(void **state)
{
    (void)state;
    fake_start("");
    int fd = sock_connect(fake_port);
    char r[2048];
    read_reply(fd, r, sizeof(r));
    assert_memory_equal(r, "220 ", 4);
    say(fd, "EHLO client.test\r\n", r, sizeof(r));
    assert_non_null(strstr(r, "250-STARTTLS"));
    assert_null(strstr(r, "AUTH")); /* no mechanisms offered in plaintext */
    say(fd, "AUTH PLAIN AHRpZGluZ3MtaHViAHg=\r\n", r, sizeof(r));
    assert_memory_equal(r, "530 ", 4);
    say(fd, "MAIL FROM:<alerts@example.com>\r\n", r, sizeof(r));
    assert_memory_equal(r, "530 ", 4);
    say(fd, "RCPT TO:<alice@example.org>\r\n", r, sizeof(r));
    assert_memory_equal(r, "530 ", 4);
    say(fd, "QUIT\r\n", r, sizeof(r));
    assert_memory_equal(r, "221 ", 4);
    close(fd);
    assert_int_equal(record_load(), 0);
}

/* --- main -------------------------------------------------------------------------------- */

static int group_setup(void **state)
{
    (void)state;
    if (harness_mkdtemp(dir, sizeof(dir), "mailsend") < 0 ||
        harness_gen_certs(gen_certs, dir, NULL) < 0) {
        return -1;
    }
    char pw[40];
    random_hex(pw, 12);
    snprintf(pw_path, sizeof(pw_path), "%s/password", dir);
    int fd = open(pw_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || dprintf(fd, "%s\n", pw) < 0) {
        return -1;
    }
    close(fd);
    snprintf(mail_dir, sizeof(mail_dir), "%s/mail", dir);
    snprintf(record_path, sizeof(record_path), "%s/record.jsonl", dir);
    snprintf(script_path, sizeof(script_path), "%s/script.txt", dir);
    snprintf(port_path, sizeof(port_path), "%s/port", dir);
    snprintf(log_path, sizeof(log_path), "%s/fake.log", dir);
    loop = loop_create();
    return loop ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    fake_stop();
    loop_destroy(loop);
    return harness_rmtree(dir);
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s PYTHON FAKE_SMTP_PY GEN_CERTS_SH\n", argv[0]);
        return 2;
    }
    python = argv[1];
    fake_py = argv[2];
    gen_certs = argv[3];
    signal(SIGPIPE, SIG_IGN);
    log_set_level(getenv("TIDINGS_TEST_DEBUG") ? LOG_LVL_DEBUG : LOG_LVL_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_ok_stored, setup, teardown),
        cmocka_unit_test_setup_teardown(test_auth_login, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reject_550, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reject_553, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reject_4xx_retries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_data_replies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_slow, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dropped_connection, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_password, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_unverified, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_starttls_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connection_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_header_injection_not_sent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connections_reused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_busy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_destroy_with_pending, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fake_refuses_plaintext, setup, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
