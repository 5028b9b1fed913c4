/* test_deliver.c - local delivery backends: registry, log, exec, desktop without a bus. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "deliver.h"
#include "error.h"
#include "loop.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static char dir[64];
static loop_t *loop;
static int saved_stderr = -1;
static char errlog[128];

/* --- fixtures --------------------------------------------------------------- */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path) < 0 ? -1 : 0;
}

static void write_script(const char *name, const char *text)
{
    char p[160];
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0755);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/tidings-deliver-XXXXXX");
    if (!mkdtemp(dir)) {
        return -1;
    }
    /* Helper programs: plain sh, each does one thing. $1 is our dir. */
    write_script("ok.sh", "#!/bin/sh\n"
                          "cat > \"$1/stdin.json\"\n"
                          "echo \"id=$TIDINGS_ID prio=$TIDINGS_PRIORITY cat=$TIDINGS_CATEGORY "
                          "args=$#\"\n"
                          "exit 0\n");
    write_script("fail.sh", "#!/bin/sh\ncat >/dev/null\necho 'it went wrong' >&2\nexit 3\n");
    write_script("slow.sh", "#!/bin/sh\necho $$ > \"$1/slow.pid\"\nsleep 30\n");
    write_script("stubborn.sh",
                 "#!/bin/sh\ntrap '' TERM\necho $$ > \"$1/stubborn.pid\"\nsleep 30\nsleep 30\n");
    write_script("huge.sh", "#!/bin/sh\nhead -c 5000000 /dev/zero | tr '\\000' x\n"
                            "head -c 3000000 /dev/zero | tr '\\000' y >&2\nexit 0\n");
    write_script("noread.sh", "#!/bin/sh\nexit 0\n");
    write_script("selfkill.sh", "#!/bin/sh\ncat >/dev/null\nkill -9 $$\n");
    write_script("count.sh", "#!/bin/sh\ncat >/dev/null\necho x >> \"$1/count\"\nsleep 0.2\n");
    write_script("notexec.sh", "#!/bin/sh\nexit 0\n");
    /* Exit 5 if descriptor $2 reached the program. */
    write_script("fds.sh", "#!/bin/sh\ncat >/dev/null\n[ -e /proc/$$/fd/$2 ] && exit 5\nexit 0\n");
    char p[160];
    snprintf(p, sizeof(p), "%s/notexec.sh", dir);
    chmod(p, 0644);
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    return 0;
}

static int test_setup(void **state)
{
    (void)state;
    loop = loop_create();
    /* Capture the log (stderr) to check what was said and how often. */
    snprintf(errlog, sizeof(errlog), "%s/stderr.log", dir);
    fflush(stderr);
    saved_stderr = dup(2);
    int fd = open(errlog, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || !loop) {
        return -1;
    }
    dup2(fd, 2);
    close(fd);
    return 0;
}

static int test_teardown(void **state)
{
    (void)state;
    loop_destroy(loop);
    loop = NULL;
    dup2(saved_stderr, 2);
    close(saved_stderr);
    return 0;
}

/* The captured log so far (static buffer). */
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

static struct deliver_config base_config(const char *backends)
{
    struct deliver_config c;
    char err[256];
    assert_int_equal(
        config_defaults(deliver_config_table, deliver_config_table_len, &c, err, sizeof(err)), 0);
    snprintf(c.backends, sizeof(c.backends), "%s", backends);
    return c;
}

static struct notification *notif(const char *json)
{
    struct notification *n = calloc(1, sizeof(*n));
    assert_non_null(n);
    struct proto_error pe;
    if (proto_parse(json, strlen(json), n, &pe) != 0) {
        fail_msg("bad test notification: %s", pe.detail);
    }
    return n;
}

static void notif_free(struct notification *n)
{
    notification_free(n);
    free(n);
}

/* --- waiting for results ------------------------------------------------------ */

struct waiter {
    struct deliver_result res[16];
    int n, want;
    bool in_call; /* set around deliver_send: a callback then would be a bug */
    bool sync_callback;
};

static void on_done(void *arg, const struct deliver_result *r)
{
    struct waiter *w = arg;
    if (w->in_call) {
        w->sync_callback = true;
    }
    if (w->n < 16) {
        w->res[w->n] = *r;
    }
    w->n++;
    if (w->n >= w->want) {
        loop_stop(loop);
    }
}

static bool timed_out;
static void on_guard(loop_t *l, uint64_t id, void *arg)
{
    (void)id;
    (void)arg;
    timed_out = true;
    loop_stop(l);
}

static void run_until(struct waiter *w, int want, uint64_t max_ms)
{
    w->want = want;
    if (w->n >= want) {
        return;
    }
    timed_out = false;
    uint64_t guard = loop_timer_add(loop, max_ms, on_guard, NULL);
    while (w->n < want && !timed_out) {
        loop_run(loop);
    }
    loop_timer_cancel(loop, guard);
    if (w->n < want) {
        fail_msg("only %d of %d results within %llu ms", w->n, want, (unsigned long long)max_ms);
    }
    assert_false(w->sync_callback);
}

static void send_one(deliver_t *d, size_t i, const struct notification *n, struct waiter *w)
{
    w->in_call = true;
    assert_int_equal(deliver_send(d, i, n, on_done, w), 0);
    w->in_call = false;
}

static deliver_t *make(const struct deliver_config *c)
{
    deliver_t *d = NULL;
    char err[256] = "";
    int rc = deliver_create(loop, c, NULL, NULL, &d, err, sizeof(err));
    if (rc != 0) {
        fail_msg("deliver_create: %s (%s)", err, tdg_strerror(rc));
    }
    return d;
}

static bool exists(const char *name)
{
    char p[160];
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    return access(p, F_OK) == 0;
}

static pid_t read_pid(const char *name)
{
    char p[160], buf[32] = "";
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    int fd = open(p, O_RDONLY);
    assert_true(fd >= 0);
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    assert_true(n > 0);
    return (pid_t)strtol(buf, NULL, 10);
}

/* Does process group pg still have a live (non-zombie) member? Killed
 * members linger as zombies until init reaps them, and kill(2) still finds
 * zombies, so look at /proc instead. */
static bool group_alive(pid_t pg)
{
    DIR *d = opendir("/proc");
    assert_non_null(d);
    bool alive = false;
    struct dirent *e;
    while (!alive && (e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') {
            continue;
        }
        char p[64], buf[512];
        snprintf(p, sizeof(p), "/proc/%.20s/stat", e->d_name);
        int fd = open(p, O_RDONLY);
        if (fd < 0) {
            continue;
        }
        ssize_t n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (n <= 0) {
            continue;
        }
        buf[n] = '\0';
        /* "pid (comm) S ppid pgrp ...": comm may hold anything, so parse
         * after the last ')'. */
        char *rp = strrchr(buf, ')');
        char state;
        long ppid, pgrp;
        if (rp && sscanf(rp + 1, " %c %ld %ld", &state, &ppid, &pgrp) == 3 && pgrp == pg &&
            state != 'Z' && state != 'X') {
            alive = true;
        }
    }
    closedir(d);
    return alive;
}

static bool group_gone(pid_t pg)
{
    for (int i = 0; i < 300; i++) {
        if (!group_alive(pg)) {
            return true;
        }
        usleep(10000);
    }
    return false;
}

/* --- registry and config --------------------------------------------------------- */

struct host_config {
    int other;
    struct deliver_config deliver;
};

static void test_registry_and_config(void **state)
{
    (void)state;
    assert_non_null(deliver_find("log"));
    assert_non_null(deliver_find("exec"));
#ifdef TIDINGS_DESKTOP_NOTIFY
    assert_non_null(deliver_find("desktop"));
    assert_int_equal(deliver_find("desktop")->channel, PROTO_CH_DESKTOP);
#endif
    assert_null(deliver_find("pager"));
    assert_int_equal(deliver_find("exec")->channel, PROTO_CH_LOCAL);
    assert_string_equal(deliver_status_name(DELIVER_UNAVAILABLE), "unavailable");

    /* The entries work inside a host struct, as in the agent's table. */
    static const struct config_entry table[] = {
        DELIVER_CONFIG_ENTRIES(struct host_config, deliver),
    };
    struct host_config hc;
    char err[256];
    assert_int_equal(
        config_defaults(table, sizeof(table) / sizeof(table[0]), &hc, err, sizeof(err)), 0);
    assert_string_equal(hc.deliver.backends, DELIVER_DEFAULT_BACKENDS);
    assert_int_equal(hc.deliver.exec_timeout_ms, 10000);
    assert_int_equal(hc.deliver.desktop_expire_ms, -1);
    assert_string_equal(hc.deliver.desktop_app_name, "Tidings");
    assert_int_equal(config_set(table, sizeof(table) / sizeof(table[0]), &hc,
                                "deliver.exec.timeout", "250ms", err, sizeof(err)),
                     0);
    assert_int_equal(hc.deliver.exec_timeout_ms, 250);
    assert_int_equal(config_set(table, sizeof(table) / sizeof(table[0]), &hc,
                                "deliver.exec.max_running", "0", err, sizeof(err)),
                     TDG_ECONFIG);

    struct deliver_config c = base_config("log, bogus");
    deliver_t *d = NULL;
    assert_int_equal(deliver_create(loop, &c, NULL, NULL, &d, err, sizeof(err)), TDG_ECONFIG);
    assert_non_null(strstr(err, "bogus"));
    c = base_config("log,log");
    assert_int_equal(deliver_create(loop, &c, NULL, NULL, &d, err, sizeof(err)), TDG_ECONFIG);
    assert_non_null(strstr(err, "twice"));
    c = base_config("exec");
    assert_int_equal(deliver_create(loop, &c, NULL, NULL, &d, err, sizeof(err)), TDG_ECONFIG);
    assert_non_null(strstr(err, "deliver.exec.path"));
    snprintf(c.exec_path, sizeof(c.exec_path), "ok.sh");
    assert_int_equal(deliver_create(loop, &c, NULL, NULL, &d, err, sizeof(err)), TDG_ECONFIG);
    snprintf(c.exec_path, sizeof(c.exec_path), "%s/notexec.sh", dir);
    assert_int_equal(deliver_create(loop, &c, NULL, NULL, &d, err, sizeof(err)), TDG_ECONFIG);
    snprintf(c.exec_path, sizeof(c.exec_path), "%s/missing.sh", dir);
    assert_int_equal(deliver_create(loop, &c, NULL, NULL, &d, err, sizeof(err)), TDG_ECONFIG);
    assert_null(d);

    c = base_config("");
    d = make(&c);
    assert_int_equal(deliver_count(d), 0);
    deliver_destroy(d);
    c = base_config(" log , ");
    d = make(&c);
    assert_int_equal(deliver_count(d), 1);
    assert_string_equal(deliver_name(d, 0), "log");
    assert_int_equal(deliver_channel(d, 0), PROTO_CH_LOCAL);
    struct notification *n = notif("{\"to\":\"local\",\"title\":\"t\"}");
    assert_int_equal(deliver_send(d, 1, n, on_done, NULL), -EINVAL);
    notif_free(n);
    deliver_destroy(d);
    deliver_destroy(NULL);
}

/* --- log ------------------------------------------------------------------------ */

static void test_log_stderr(void **state)
{
    (void)state;
    struct deliver_config c = base_config("log");
    deliver_t *d = make(&c);
    struct notification *n = notif("{\"id\":\"n-1\",\"to\":\"local\",\"priority\":\"high\","
                                   "\"category\":\"security\",\"title\":\"Door \\\"A\\\" open\","
                                   "\"body\":\"line1\\nFAKE ERROR agent: forged\"}");
    struct waiter w = {0};
    send_one(d, 0, n, &w);
    run_until(&w, 1, 2000);
    assert_int_equal(w.res[0].status, DELIVER_OK);
    const char *log = logged();
    assert_non_null(strstr(log, "notify: id=n-1 to=local priority=high category=security "
                                "title=\"Door \\\"A\\\" open\" body=\"line1\\nFAKE ERROR"));
    /* The newline in the body did not start a line of its own. */
    assert_null(strstr(log, "\nFAKE ERROR"));
    notif_free(n);
    deliver_destroy(d);
}

static void test_log_syslog(void **state)
{
    (void)state;
    char sock[100]; /* fits sun_path */
    snprintf(sock, sizeof(sock), "%.80s/log.sock", dir);
    int srv = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(srv >= 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock);
    assert_int_equal(bind(srv, (struct sockaddr *)&sa, sizeof(sa)), 0);

    struct deliver_config c = base_config("log");
    c.log_target = 1;
    snprintf(c.log_syslog_path, sizeof(c.log_syslog_path), "%s", sock);
    deliver_t *d = make(&c);
    struct notification *n =
        notif("{\"id\":\"s-1\",\"to\":\"local\",\"priority\":\"critical\",\"title\":\"Fire\"}");
    struct waiter w = {0};
    send_one(d, 0, n, &w);
    run_until(&w, 1, 2000);
    assert_int_equal(w.res[0].status, DELIVER_OK);
    char buf[1100];
    ssize_t len = recv(srv, buf, sizeof(buf) - 1, MSG_DONTWAIT);
    assert_true(len > 0);
    buf[len] = '\0';
    char want[64];
    snprintf(want, sizeof(want), "<10>tidings-agent[%ld]: id=s-1 ", (long)getpid());
    assert_memory_equal(buf, want, strlen(want)); /* user.crit */

    /* The logger goes away: unavailable, said once. */
    close(srv);
    unlink(sock);
    send_one(d, 0, n, &w);
    send_one(d, 0, n, &w);
    run_until(&w, 3, 2000);
    assert_int_equal(w.res[1].status, DELIVER_UNAVAILABLE);
    assert_int_equal(w.res[2].status, DELIVER_UNAVAILABLE);
    assert_non_null(strstr(w.res[1].reason, "log.sock"));
    assert_int_equal(count_of(logged(), "log deliveries are unavailable"), 1);
    notif_free(n);
    deliver_destroy(d);
}

/* --- exec ------------------------------------------------------------------------- */

static struct deliver_config exec_config(const char *script)
{
    struct deliver_config c = base_config("exec");
    snprintf(c.exec_path, sizeof(c.exec_path), "%s/%s", dir, script);
    snprintf(c.exec_args, sizeof(c.exec_args), "%s", dir);
    return c;
}

static void test_exec_ok(void **state)
{
    (void)state;
    struct deliver_config c = exec_config("ok.sh");
    snprintf(c.exec_args, sizeof(c.exec_args), "  %s  two three ", dir);
    deliver_t *d = make(&c);
    const char *json = "{\"id\":\"ok-1\",\"to\":\"local\",\"category\":\"orders\","
                       "\"priority\":\"low\",\"title\":\"Hi\",\"body\":\"there\"}";
    struct notification *n = notif(json);
    struct waiter w = {0};
    send_one(d, 0, n, &w);
    notif_free(n); /* borrowed for the call only */
    run_until(&w, 1, 5000);
    assert_int_equal(w.res[0].status, DELIVER_OK);
    assert_string_equal(w.res[0].reason, "");
    /* The program got the notification, compactly serialized, on stdin. */
    char p[160], buf[512] = "";
    snprintf(p, sizeof(p), "%s/stdin.json", dir);
    int fd = open(p, O_RDONLY);
    assert_true(fd >= 0);
    assert_true(read(fd, buf, sizeof(buf) - 1) > 0);
    close(fd);
    assert_string_equal(buf, "{\"id\":\"ok-1\",\"to\":\"local\",\"category\":\"orders\","
                             "\"priority\":\"low\",\"title\":\"Hi\",\"body\":\"there\"}");
    /* Its stdout was logged; the environment and the three fixed args. */
    assert_non_null(strstr(logged(), "stdout=\"id=ok-1 prio=low cat=orders args=3\\n\""));
    deliver_destroy(d);
}

static void test_exec_failures(void **state)
{
    (void)state;
    struct deliver_config c = exec_config("fail.sh");
    deliver_t *d = make(&c);
    struct notification *n = notif("{\"id\":\"f-1\",\"to\":\"local\",\"title\":\"x\"}");
    struct waiter w = {0};
    send_one(d, 0, n, &w);
    run_until(&w, 1, 5000);
    assert_int_equal(w.res[0].status, DELIVER_FAIL);
    assert_string_equal(w.res[0].reason, "exit 3");
    assert_non_null(strstr(logged(), "stderr=\"it went wrong\\n\""));
    deliver_destroy(d);

    /* Killed by a signal. */
    c = exec_config("selfkill.sh");
    d = make(&c);
    send_one(d, 0, n, &w);
    run_until(&w, 2, 5000);
    assert_int_equal(w.res[1].status, DELIVER_FAIL);
    assert_non_null(strstr(w.res[1].reason, "signal 9"));
    deliver_destroy(d);

    /* A program that does not read its stdin is fine (no SIGPIPE death). */
    c = exec_config("noread.sh");
    d = make(&c);
    send_one(d, 0, n, &w);
    run_until(&w, 3, 5000);
    assert_int_equal(w.res[2].status, DELIVER_OK);
    deliver_destroy(d);

    /* The program disappears after start-up: fail with the reason. */
    write_script("gone.sh", "#!/bin/sh\nexit 0\n");
    c = exec_config("gone.sh");
    d = make(&c);
    char p[160];
    snprintf(p, sizeof(p), "%s/gone.sh", dir);
    unlink(p);
    send_one(d, 0, n, &w);
    run_until(&w, 4, 5000);
    assert_int_equal(w.res[3].status, DELIVER_FAIL);
    /* glibc's posix_spawn reports the exec error; where it cannot (under
     * valgrind, which turns its vfork-clone into a fork) the child exits
     * 127, the shell convention for "command not found". */
    if (strcmp(w.res[3].reason, "exit 127") != 0) {
        assert_non_null(strstr(w.res[3].reason, "cannot run"));
        assert_non_null(strstr(w.res[3].reason, "No such file"));
    }
    notif_free(n);
    deliver_destroy(d);
}

static void test_exec_timeout(void **state)
{
    (void)state;
    struct deliver_config c = exec_config("slow.sh");
    c.exec_timeout_ms = 300;
    deliver_t *d = make(&c);
    struct notification *n = notif("{\"id\":\"t-1\",\"to\":\"local\",\"title\":\"x\"}");
    struct waiter w = {0};
    uint64_t t0 = clock_mono_ms();
    send_one(d, 0, n, &w);
    run_until(&w, 1, 5000);
    uint64_t took = clock_mono_ms() - t0;
    assert_int_equal(w.res[0].status, DELIVER_FAIL);
    assert_string_equal(w.res[0].reason, "timeout after 300 ms");
    assert_true(took >= 300 && took < 2500);
    /* The whole process group is gone: the script and its sleep. */
    pid_t pg = read_pid("slow.pid");
    assert_true(group_gone(pg));
    deliver_destroy(d);

    /* SIGTERM ignored: SIGKILL after the grace period. */
    c = exec_config("stubborn.sh");
    c.exec_timeout_ms = 200;
    c.exec_kill_grace_ms = 200;
    d = make(&c);
    t0 = clock_mono_ms();
    send_one(d, 0, n, &w);
    run_until(&w, 2, 5000);
    took = clock_mono_ms() - t0;
    assert_int_equal(w.res[1].status, DELIVER_FAIL);
    assert_string_equal(w.res[1].reason, "timeout after 200 ms");
    assert_true(took >= 400 && took < 3000);
    pg = read_pid("stubborn.pid");
    assert_true(group_gone(pg));
    notif_free(n);
    deliver_destroy(d);
}

static void test_exec_no_inherited_fds(void **state)
{
    (void)state;
    /* A descriptor opened without O_CLOEXEC, as a library might. */
    int leak = open("/dev/null", O_RDONLY);
    assert_true(leak > 2);
    struct deliver_config c = exec_config("fds.sh");
    snprintf(c.exec_args, sizeof(c.exec_args), "%s %d", dir, leak);
    deliver_t *d = make(&c);
    struct notification *n = notif("{\"id\":\"fd-1\",\"to\":\"local\",\"title\":\"x\"}");
    struct waiter w = {0};
    send_one(d, 0, n, &w);
    run_until(&w, 1, 5000);
#if defined(__GLIBC__) && __GLIBC_PREREQ(2, 34)
    assert_int_equal(w.res[0].status, DELIVER_OK);
#endif
    close(leak);
    notif_free(n);
    deliver_destroy(d);
}

static void test_exec_huge_output(void **state)
{
    (void)state;
    struct deliver_config c = exec_config("huge.sh");
    c.exec_output_max = 100;
    deliver_t *d = make(&c);
    struct notification *n = notif("{\"id\":\"h-1\",\"to\":\"local\",\"title\":\"x\"}");
    struct waiter w = {0};
    send_one(d, 0, n, &w);
    run_until(&w, 1, 20000);
    assert_int_equal(w.res[0].status, DELIVER_OK);
    const char *log = logged();
    assert_non_null(strstr(log, "stdout=\"xxxxxxxxxx"));
    assert_non_null(strstr(log, "(+4999900 bytes not kept)"));
    assert_non_null(strstr(log, "(+2999900 bytes not kept)"));
    notif_free(n);
    deliver_destroy(d);
}

static void test_exec_no_shell(void **state)
{
    (void)state;
    struct deliver_config c = exec_config("ok.sh");
    deliver_t *d = make(&c);
    /* Shell syntax in every text field: none of it may run. */
    char json[1024];
    snprintf(json, sizeof(json),
             "{\"id\":\"m-1\",\"to\":\"local\",\"category\":\"security\","
             "\"title\":\"$(touch %s/pwned1)\",\"body\":\"`touch %s/pwned2`; touch %s/pwned3 "
             "&& echo ${HOME} | sh\",\"data\":{\"k\":\"$(touch %s/pwned4)\"}}",
             dir, dir, dir, dir);
    struct notification *n = notif(json);
    struct waiter w = {0};
    send_one(d, 0, n, &w);
    run_until(&w, 1, 5000);
    assert_int_equal(w.res[0].status, DELIVER_OK);
    assert_false(exists("pwned1"));
    assert_false(exists("pwned2"));
    assert_false(exists("pwned3"));
    assert_false(exists("pwned4"));
    /* The text arrived unchanged, as JSON data. */
    char p[160], buf[1024] = "";
    snprintf(p, sizeof(p), "%s/stdin.json", dir);
    int fd = open(p, O_RDONLY);
    assert_true(fd >= 0);
    assert_true(read(fd, buf, sizeof(buf) - 1) > 0);
    close(fd);
    char want[128];
    snprintf(want, sizeof(want), "\"title\":\"$(touch %s/pwned1)\"", dir);
    assert_non_null(strstr(buf, want));
    notif_free(n);
    deliver_destroy(d);
}

static void test_exec_queue(void **state)
{
    (void)state;
    struct deliver_config c = exec_config("count.sh");
    c.exec_max_running = 1;
    c.exec_queue_max = 2;
    deliver_t *d = make(&c);
    struct notification *n = notif("{\"id\":\"q-1\",\"to\":\"local\",\"title\":\"x\"}");
    struct waiter w = {0};
    for (int i = 0; i < 4; i++) {
        send_one(d, 0, n, &w);
    }
    run_until(&w, 4, 10000);
    /* The fourth is over budget (1 running + 2 waiting) and comes back
     * first, as a retry; the others ran one after the other. */
    assert_int_equal(w.res[0].status, DELIVER_RETRY);
    assert_non_null(strstr(w.res[0].reason, "queue full"));
    for (int i = 1; i < 4; i++) {
        assert_int_equal(w.res[i].status, DELIVER_OK);
    }
    notif_free(n);
    deliver_destroy(d);
}

static void test_exec_destroy_in_flight(void **state)
{
    (void)state;
    struct deliver_config c = exec_config("slow.sh");
    char pidfile[160];
    snprintf(pidfile, sizeof(pidfile), "%s/slow.pid", dir);
    unlink(pidfile);
    deliver_t *d = make(&c);
    struct notification *n = notif("{\"id\":\"d-1\",\"to\":\"local\",\"title\":\"x\"}");
    struct waiter w = {0};
    send_one(d, 0, n, &w);
    send_one(d, 0, n, &w);
    send_one(d, 0, n, &w);
    /* Let the first start, then shut down: no callbacks, no leftovers. */
    uint64_t until = clock_mono_ms() + 3000;
    while (!exists("slow.pid") && clock_mono_ms() < until) {
        timed_out = false;
        uint64_t g = loop_timer_add(loop, 20, on_guard, NULL);
        loop_run(loop);
        loop_timer_cancel(loop, g);
    }
    assert_true(exists("slow.pid"));
    pid_t pg = read_pid("slow.pid");
    assert_true(group_alive(pg));
    deliver_destroy(d);
    assert_int_equal(w.n, 0);
    assert_true(group_gone(pg));
    assert_non_null(strstr(logged(), "abandoned at shutdown"));
    notif_free(n);
}

/* --- desktop without a bus ------------------------------------------------------ */

#ifdef TIDINGS_DESKTOP_NOTIFY
static void test_desktop_no_bus(void **state)
{
    (void)state;
    struct deliver_config c = base_config("desktop,log");
    snprintf(c.desktop_bus, sizeof(c.desktop_bus), "unix:path=%s/no-such-bus", dir);
    deliver_t *d = make(&c); /* not an error: a headless box */
    assert_int_equal(deliver_count(d), 2);
    assert_string_equal(deliver_name(d, 0), "desktop");
    struct notification *n = notif("{\"id\":\"nb-1\",\"to\":\"local\",\"title\":\"x\"}");
    struct waiter w = {0};
    for (int i = 0; i < 3; i++) {
        send_one(d, 0, n, &w);
    }
    send_one(d, 1, n, &w); /* the log backend still delivers */
    run_until(&w, 4, 3000);
    int unavailable = 0, ok = 0;
    for (int i = 0; i < 4; i++) {
        unavailable += w.res[i].status == DELIVER_UNAVAILABLE;
        ok += w.res[i].status == DELIVER_OK;
    }
    assert_int_equal(unavailable, 3);
    assert_int_equal(ok, 1);
    assert_non_null(strstr(w.res[0].reason, "no session bus"));
    /* Said once, not once per notification. */
    assert_int_equal(count_of(logged(), "desktop: no session bus"), 1);
    notif_free(n);
    deliver_destroy(d);

    /* No address in the environment at all. */
    char *addr = getenv("DBUS_SESSION_BUS_ADDRESS");
    char *rt = getenv("XDG_RUNTIME_DIR");
    char *saved_addr = addr ? strdup(addr) : NULL;
    char *saved_rt = rt ? strdup(rt) : NULL;
    unsetenv("DBUS_SESSION_BUS_ADDRESS");
    unsetenv("XDG_RUNTIME_DIR");
    c = base_config("desktop");
    d = make(&c);
    n = notif("{\"id\":\"nb-2\",\"to\":\"local\",\"title\":\"x\"}");
    struct waiter w2 = {0};
    send_one(d, 0, n, &w2);
    run_until(&w2, 1, 3000);
    assert_int_equal(w2.res[0].status, DELIVER_UNAVAILABLE);
    notif_free(n);
    deliver_destroy(d);
    if (saved_addr) {
        setenv("DBUS_SESSION_BUS_ADDRESS", saved_addr, 1);
    }
    if (saved_rt) {
        setenv("XDG_RUNTIME_DIR", saved_rt, 1);
    }
    free(saved_addr);
    free(saved_rt);
}
#endif

static void test_escape(void **state)
{
    (void)state;
    char out[32];
    assert_int_equal(deliver_escape(out, sizeof(out), "a\"b\\c\n\x01", 7), 13);
    assert_string_equal(out, "a\\\"b\\\\c\\n\\x01");
    /* Cut with dots, never in the middle of a UTF-8 sequence. */
    char small[10];
    deliver_escape(small, sizeof(small), "abcd\xc3\xa9\xc3\xa9\xc3\xa9", 10);
    assert_string_equal(small, "abcd...");
    deliver_escape(small, sizeof(small), "abcdef", 6);
    assert_string_equal(small, "abcdef");
    deliver_escape(small, 2, "abcdef", 6);
    assert_string_equal(small, "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_escape),
        cmocka_unit_test_setup_teardown(test_registry_and_config, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_log_stderr, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_log_syslog, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_exec_ok, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_exec_failures, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_exec_timeout, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_exec_no_inherited_fds, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_exec_huge_output, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_exec_no_shell, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_exec_queue, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_exec_destroy_in_flight, test_setup, test_teardown),
#ifdef TIDINGS_DESKTOP_NOTIFY
        cmocka_unit_test_setup_teardown(test_desktop_no_bus, test_setup, test_teardown),
#endif
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
