/*
 * test_desktop.c - the desktop backend against a real notification server.
 *
 * Run by test_desktop.sh, which provides an X server (Xvfb), a private
 * session bus ($DBUS_SESSION_BUS_ADDRESS) with nothing on it, and a
 * dbus-monitor recording every Notify call. This program:
 *   1. delivers with no notification server -> unavailable, logged once;
 *   2. starts the server (argv[2...], e.g. dunst) itself, waits until it
 *      owns org.freedesktop.Notifications (NameHasOwner, no fixed sleeps);
 *   3. delivers -> ok with the server's id; closes it and invokes an action
 *      through the server -> receipts; collapse_key -> replaces_id;
 *   4. stops the server -> unavailable again, logged once more; a server
 *      that never answers -> retry after the reply timeout;
 *   5. stops the bus itself -> connection lost, logged once, unavailable.
 * The script then checks in the monitor's record that summary, body and
 * urgency arrived as sent.
 *
 *   test_desktop TMPDIR SERVER [ARGS...]
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "deliver.h"
#include "error.h"
#include "loop.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <systemd/sd-bus.h>
#include <unistd.h>

extern char **environ;

static const char *tmpdir;
static char **server_argv;
static pid_t server_pid;
static loop_t *loop;
static deliver_t *dlv;
static char errlog[256];

/* --- results and receipts ------------------------------------------------------ */

struct waiter {
    struct deliver_result res[8];
    int n;
};

struct receipts {
    char id[8][PROTO_ID_MAX + 1];
    char detail[8][64];
    enum deliver_receipt_kind kind[8];
    int n;
};
static struct receipts rcpt;
static int want_results, want_receipts;
static struct waiter *cur;
static bool timed_out;

static void on_done(void *arg, const struct deliver_result *r)
{
    struct waiter *w = arg;
    if (w->n < 8) {
        w->res[w->n] = *r;
    }
    w->n++;
    if (w->n >= want_results && rcpt.n >= want_receipts) {
        loop_stop(loop);
    }
}

static void on_receipt(void *arg, const struct deliver_receipt *r)
{
    (void)arg;
    if (rcpt.n < 8) {
        snprintf(rcpt.id[rcpt.n], sizeof(rcpt.id[0]), "%s", r->id);
        snprintf(rcpt.detail[rcpt.n], sizeof(rcpt.detail[0]), "%s", r->detail);
        rcpt.kind[rcpt.n] = r->kind;
    }
    rcpt.n++;
    if ((!cur || cur->n >= want_results) && rcpt.n >= want_receipts) {
        loop_stop(loop);
    }
}

static void on_guard(loop_t *l, uint64_t id, void *arg)
{
    (void)id;
    (void)arg;
    timed_out = true;
    loop_stop(l);
}

/* Run the loop until w has `results` results and `receipts` receipts came. */
static void run_until(struct waiter *w, int results, int receipts, uint64_t max_ms)
{
    cur = w;
    want_results = results;
    want_receipts = receipts;
    timed_out = false;
    uint64_t guard = loop_timer_add(loop, max_ms, on_guard, NULL);
    while ((w->n < results || rcpt.n < receipts) && !timed_out) {
        loop_run(loop);
    }
    loop_timer_cancel(loop, guard);
    if (w->n < results || rcpt.n < receipts) {
        fail_msg("got %d/%d results, %d/%d receipts within %llu ms", w->n, results, rcpt.n,
                 receipts, (unsigned long long)max_ms);
    }
}

static void send(const char *json, struct waiter *w)
{
    struct notification n;
    struct proto_error pe;
    if (proto_parse(json, strlen(json), &n, &pe) != 0) {
        fail_msg("bad test notification: %s", pe.detail);
    }
    assert_int_equal(deliver_send(dlv, 0, &n, on_done, w), 0);
    notification_free(&n);
}

/* --- the bus, from the test's side (blocking calls are fine here) ---------------- */

static bool name_has_owner(void)
{
    sd_bus *b = NULL;
    assert_true(sd_bus_open_user(&b) >= 0);
    sd_bus_error e = SD_BUS_ERROR_NULL;
    sd_bus_message *reply = NULL;
    int r = sd_bus_call_method(b, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                               "org.freedesktop.DBus", "NameHasOwner", &e, &reply, "s",
                               "org.freedesktop.Notifications");
    int has = 0;
    if (r >= 0) {
        sd_bus_message_read(reply, "b", &has);
    }
    sd_bus_message_unref(reply);
    sd_bus_error_free(&e);
    sd_bus_flush_close_unref(b);
    return has != 0;
}

/* Wait (bounded) until NameHasOwner says `want`. */
static void wait_owner(bool want)
{
    for (int i = 0; i < 500; i++) {
        if (name_has_owner() == want) {
            return;
        }
        usleep(20000);
    }
    fail_msg("org.freedesktop.Notifications %s an owner after 10 s",
             want ? "still has no" : "still has");
}

static void server_call(const char *iface, const char *method, uint32_t arg)
{
    sd_bus *b = NULL;
    assert_true(sd_bus_open_user(&b) >= 0);
    sd_bus_error e = SD_BUS_ERROR_NULL;
    int r = sd_bus_call_method(b, "org.freedesktop.Notifications", "/org/freedesktop/Notifications",
                               iface, method, &e, NULL, "u", arg);
    if (r < 0) {
        fail_msg("%s.%s: %s", iface, method, e.message ? e.message : strerror(-r));
    }
    sd_bus_error_free(&e);
    sd_bus_flush_close_unref(b);
}

static const char *logged(void)
{
    static char buf[65536];
    int fd = open(errlog, O_RDONLY);
    ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : 0;
    if (fd >= 0) {
        close(fd);
    }
    buf[n > 0 ? n : 0] = '\0';
    return buf;
}

static int count_of(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle)) {
        n++;
    }
    return n;
}

/* --- tests, in order ---------------------------------------------------------------- */

static void test_no_server(void **state)
{
    (void)state;
    assert_false(name_has_owner());
    struct waiter w = {0};
    for (int i = 0; i < 3; i++) {
        send("{\"id\":\"ns-1\",\"to\":\"local\",\"title\":\"nobody listens\"}", &w);
    }
    run_until(&w, 3, 0, 10000);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(w.res[i].status, DELIVER_UNAVAILABLE);
        assert_non_null(strstr(w.res[i].reason, "ServiceUnknown"));
    }
    assert_int_equal(count_of(logged(), "no notification server"), 1);
}

static void start_server(void)
{
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    char out[300];
    snprintf(out, sizeof(out), "%s/server.log", tmpdir);
    posix_spawn_file_actions_addopen(&fa, 1, out, O_WRONLY | O_CREAT | O_APPEND, 0600);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    int e = posix_spawnp(&server_pid, server_argv[0], &fa, NULL, server_argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (e != 0) {
        fail_msg("cannot start %s: %s", server_argv[0], strerror(e));
    }
    /* For the script's cleanup if this program dies first. */
    char pidfile[300];
    snprintf(pidfile, sizeof(pidfile), "%s/server.pid", tmpdir);
    FILE *f = fopen(pidfile, "w");
    assert_non_null(f);
    fprintf(f, "%ld\n", (long)server_pid);
    fclose(f);
}

static void stop_server(void)
{
    if (server_pid > 0) {
        kill(server_pid, SIGTERM);
        while (waitpid(server_pid, NULL, 0) < 0 && errno == EINTR) {
        }
        server_pid = 0;
    }
}

static void test_notify(void **state)
{
    (void)state;
    start_server();
    wait_owner(true);
    struct waiter w = {0};
    /* Title and body with markup and shell syntax: shown as text. */
    send("{\"id\":\"dt-1\",\"to\":\"local\",\"priority\":\"high\","
         "\"title\":\"Tidings desktop test: <b>not bold</b> & $(echo hi)\","
         "\"body\":\"Parcel 4711 <b>arrives</b> & more\"}",
         &w);
    run_until(&w, 1, 0, 10000);
    assert_int_equal(w.res[0].status, DELIVER_OK);
    long sid = strtol(w.res[0].ref, NULL, 10);
    assert_true(sid > 0);
    assert_int_equal(count_of(logged(), "notification server reachable again"), 1);

    /* Closed through the server: a "closed" receipt for our id. */
    server_call("org.freedesktop.Notifications", "CloseNotification", (uint32_t)sid);
    run_until(&w, 1, 1, 10000);
    assert_string_equal(rcpt.id[0], "dt-1");
    assert_int_equal(rcpt.kind[0], DELIVER_RECEIPT_CLOSED);
    assert_string_equal(rcpt.detail[0], "closed");
}

static void test_action(void **state)
{
    (void)state;
    struct waiter w = {0};
    send("{\"id\":\"dt-2\",\"to\":\"local\",\"priority\":\"low\",\"title\":\"Click me\","
         "\"body\":\"low urgency\"}",
         &w);
    run_until(&w, 1, 1, 10000);
    assert_int_equal(w.res[0].status, DELIVER_OK);
    /* What "dunstctl action 0" does: the default action of the first
     * notification shown, as if the user clicked it. */
    int before = rcpt.n;
    server_call("org.dunstproject.cmd0", "NotificationAction", 0);
    run_until(&w, 1, before + 1, 10000);
    assert_string_equal(rcpt.id[before], "dt-2");
    assert_int_equal(rcpt.kind[before], DELIVER_RECEIPT_ACTION);
    assert_string_equal(rcpt.detail[before], "default");
    server_call("org.freedesktop.Notifications", "CloseNotification",
                (uint32_t)strtol(w.res[0].ref, NULL, 10));
    run_until(&w, 1, before + 2, 10000);
    assert_string_equal(rcpt.id[before + 1], "dt-2");
    assert_string_equal(rcpt.detail[before + 1], "closed");
}

static void test_collapse(void **state)
{
    (void)state;
    struct waiter w = {0};
    send("{\"id\":\"c-1\",\"to\":\"local\",\"title\":\"Order 7: packed\",\"collapse_key\":\"o7\"}",
         &w);
    run_until(&w, 1, rcpt.n, 10000);
    send("{\"id\":\"c-2\",\"to\":\"local\",\"title\":\"Order 7: shipped\",\"collapse_key\":\"o7\"}",
         &w);
    run_until(&w, 2, rcpt.n, 10000);
    send("{\"id\":\"c-3\",\"to\":\"local\",\"title\":\"Order 8: packed\",\"collapse_key\":\"o8\"}",
         &w);
    run_until(&w, 3, rcpt.n, 10000);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(w.res[i].status, DELIVER_OK);
    }
    /* The second replaced the first on screen; the third is its own. */
    assert_string_equal(w.res[0].ref, w.res[1].ref);
    assert_string_not_equal(w.res[0].ref, w.res[2].ref);
    /* Receipts of the replaced one now name the newer notification. */
    int before = rcpt.n;
    server_call("org.freedesktop.Notifications", "CloseNotification",
                (uint32_t)strtol(w.res[1].ref, NULL, 10));
    run_until(&w, 3, before + 1, 10000);
    assert_string_equal(rcpt.id[before], "c-2");
}

static void test_server_gone(void **state)
{
    (void)state;
    stop_server();
    wait_owner(false);
    struct waiter w = {0};
    send("{\"id\":\"g-1\",\"to\":\"local\",\"title\":\"gone\"}", &w);
    send("{\"id\":\"g-2\",\"to\":\"local\",\"title\":\"gone\"}", &w);
    run_until(&w, 2, rcpt.n, 10000);
    assert_int_equal(w.res[0].status, DELIVER_UNAVAILABLE);
    assert_int_equal(w.res[1].status, DELIVER_UNAVAILABLE);
    /* Once per outage: the first at start, this one now. */
    assert_int_equal(count_of(logged(), "no notification server"), 2);
}

/* Run the loop in short slices until the log contains `needle`. */
static bool wait_logged(const char *needle, uint64_t max_ms)
{
    uint64_t until = clock_mono_ms() + max_ms;
    while (!strstr(logged(), needle) && clock_mono_ms() < until) {
        timed_out = false;
        uint64_t g = loop_timer_add(loop, 20, on_guard, NULL);
        loop_run(loop);
        loop_timer_cancel(loop, g);
    }
    return strstr(logged(), needle) != NULL;
}

/* A second connection that owns the server's name and never answers. */
static sd_bus *silent_owner(void)
{
    sd_bus *b = NULL;
    assert_true(sd_bus_open_user(&b) >= 0);
    int r = sd_bus_request_name(b, "org.freedesktop.Notifications", 0);
    if (r < 0) {
        fail_msg("RequestName: %s", strerror(-r));
    }
    return b;
}

static void test_silent_server(void **state)
{
    (void)state;
    /* The reply timeout comes from sd-bus through the loop's timer. */
    sd_bus *side = silent_owner();
    struct deliver_config c;
    char err[256];
    assert_int_equal(
        config_defaults(deliver_config_table, deliver_config_table_len, &c, err, sizeof(err)), 0);
    snprintf(c.backends, sizeof(c.backends), "desktop");
    c.desktop_timeout_ms = 300;
    deliver_t *d2 = NULL;
    assert_int_equal(deliver_create(loop, &c, NULL, NULL, &d2, err, sizeof(err)), 0);
    struct notification n;
    struct proto_error pe;
    const char *json = "{\"id\":\"sl-1\",\"to\":\"local\",\"title\":\"anyone?\"}";
    assert_int_equal(proto_parse(json, strlen(json), &n, &pe), 0);
    struct waiter w = {0};
    uint64_t t0 = clock_mono_ms();
    assert_int_equal(deliver_send(d2, 0, &n, on_done, &w), 0);
    notification_free(&n);
    run_until(&w, 1, rcpt.n, 10000);
    uint64_t took = clock_mono_ms() - t0;
    assert_int_equal(w.res[0].status, DELIVER_RETRY);
    assert_non_null(strstr(w.res[0].reason, "NoReply"));
    assert_true(took >= 250 && took < 3000);
    deliver_destroy(d2);
    sd_bus_flush_close_unref(side);
    wait_owner(false);
}

/* A done callback that delivers again from inside the callback, as a
 * caller retrying at once would: the backend must cope while sd-bus is in
 * the middle of tearing the connection down. */
static int redelivered;
static void on_done_again(void *arg, const struct deliver_result *r)
{
    on_done(arg, r);
    if (redelivered++ == 0) {
        send("{\"id\":\"b-0b\",\"to\":\"local\",\"title\":\"again\"}", arg);
    }
}

static void test_bus_gone(void **state)
{
    (void)state;
    /* A call in flight when the bus goes: a silent owner holds it. */
    sd_bus *side = silent_owner();
    struct waiter w0 = {0};
    struct notification n;
    struct proto_error pe;
    const char *json = "{\"id\":\"b-0\",\"to\":\"local\",\"title\":\"in flight\"}";
    assert_int_equal(proto_parse(json, strlen(json), &n, &pe), 0);
    assert_int_equal(deliver_send(dlv, 0, &n, on_done_again, &w0), 0);
    notification_free(&n);
    /* Let the call go out. */
    timed_out = false;
    uint64_t g = loop_timer_add(loop, 100, on_guard, NULL);
    loop_run(loop);
    loop_timer_cancel(loop, g);
    assert_int_equal(w0.n, 0);

    /* The session ends: the bus daemon goes away under the connection. */
    char pidfile[300], buf[32] = "";
    snprintf(pidfile, sizeof(pidfile), "%s/bus.pid", tmpdir);
    int fd = open(pidfile, O_RDONLY);
    assert_true(fd >= 0);
    assert_true(read(fd, buf, sizeof(buf) - 1) > 0);
    close(fd);
    pid_t bus = (pid_t)strtol(buf, NULL, 10);
    assert_true(bus > 0);
    assert_int_equal(kill(bus, SIGTERM), 0);
    assert_true(wait_logged("desktop: session bus connection lost", 10000));
    run_until(&w0, 2, rcpt.n, 10000);
    assert_int_equal(w0.res[0].status, DELIVER_UNAVAILABLE);
    assert_int_equal(w0.res[1].status, DELIVER_UNAVAILABLE);
    sd_bus_flush_close_unref(side);
    struct waiter w = {0};
    send("{\"id\":\"b-1\",\"to\":\"local\",\"title\":\"no bus\"}", &w);
    send("{\"id\":\"b-2\",\"to\":\"local\",\"title\":\"no bus\"}", &w);
    run_until(&w, 2, rcpt.n, 10000);
    assert_int_equal(w.res[0].status, DELIVER_UNAVAILABLE);
    assert_int_equal(w.res[1].status, DELIVER_UNAVAILABLE);
    assert_non_null(strstr(w.res[0].reason, "no session bus"));
    /* One line for the outage, none per notification. */
    assert_int_equal(count_of(logged(), "session bus connection lost"), 1);
    assert_int_equal(count_of(logged(), "no session bus"), 0);
}

static int group_setup(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    loop = loop_create();
    if (!loop) {
        return -1;
    }
    snprintf(errlog, sizeof(errlog), "%s/agent.log", tmpdir);
    int fd = open(errlog, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) {
        return -1;
    }
    dup2(fd, 2);
    close(fd);
    struct deliver_config c;
    char err[256];
    if (config_defaults(deliver_config_table, deliver_config_table_len, &c, err, sizeof(err)) < 0) {
        return -1;
    }
    snprintf(c.backends, sizeof(c.backends), "desktop");
    c.desktop_timeout_ms = 5000;
    /* desktop_bus "": the session bus from the environment, as deployed. */
    if (deliver_create(loop, &c, on_receipt, NULL, &dlv, err, sizeof(err)) < 0) {
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    deliver_destroy(dlv);
    stop_server();
    loop_destroy(loop);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s TMPDIR SERVER [ARGS...]\n", argv[0]);
        return 2;
    }
    tmpdir = argv[1];
    server_argv = argv + 2;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_server),   cmocka_unit_test(test_notify),
        cmocka_unit_test(test_action),      cmocka_unit_test(test_collapse),
        cmocka_unit_test(test_server_gone), cmocka_unit_test(test_silent_server),
        cmocka_unit_test(test_bus_gone),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
