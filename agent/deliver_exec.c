/*
 * deliver_exec.c - the "exec" backend: run a configured program with the
 * notification as JSON on its stdin.
 *
 * No shell and no interpolation: the program is spawned directly
 * (posix_spawn) with deliver.exec.path as argv[0] and the fixed words of
 * deliver.exec.args; notification text only ever travels through the stdin
 * pipe. The environment is the agent's plus TIDINGS_ID, TIDINGS_PRIORITY and
 * TIDINGS_CATEGORY, whose values proto's validation restricts to
 * [A-Za-z0-9._:-].
 *
 * Nothing blocks the loop: stdin, stdout and stderr are non-blocking pipes
 * watched by the loop; a loop timer enforces deliver.exec.timeout (SIGTERM
 * to the program's process group, SIGKILL after kill_grace). The child is
 * reaped with waitpid(WNOHANG) once its output pipes are closed, polling
 * briefly if it has not exited yet - no SIGCHLD handler, no pidfd (kernels on
 * gateways may predate it).
 *
 * Results: exit status 0 -> ok; any other exit -> fail "exit N"; killed ->
 * fail "signal N"; timeout -> fail "timeout after N ms"; cannot start ->
 * fail with the errno text; too many waiting -> retry.
 *
 * The process must not die of SIGPIPE when a program exits without reading
 * its stdin: init sets SIGPIPE to ignored if it is still at its default
 * (agent/main.c ignores it anyway).
 */
#include "deliver.h"

#include "error.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define EXEC_ARGS_MAX 16
#define EXEC_ENV_MAX 512     /* environment entries passed on */
#define EXEC_READ_ROUNDS 16  /* reads per wake-up per pipe, for fairness */
#define EXEC_POLL_FIRST_MS 5 /* reap polling: 5, 10, 20 ... 200 ms */
#define EXEC_POLL_MAX_MS 200

enum phase { QUEUED, RUNNING, TERM_SENT, KILL_SENT, REPORT };

struct outbuf {
    char *buf;
    size_t len;
    uint64_t dropped;
};

struct exec_job {
    struct exec_state *st;
    struct exec_job *prev, *next; /* in st->queue (QUEUED, REPORT) or st->running */
    enum phase phase;
    char id[PROTO_ID_MAX + 1];
    char category[PROTO_CATEGORY_MAX + 1];
    enum proto_priority priority;
    char *json;
    size_t json_len, json_off;
    pid_t pid;
    int in_fd, out_fd, err_fd;
    struct outbuf out, err;
    uint64_t t_deadline, t_poll;
    uint64_t poll_ms;
    uint64_t started_ms;
    bool timed_out;
    struct deliver_result res; /* preset for REPORT jobs */
    deliver_done_cb done;
    void *arg;
};

struct job_list {
    struct exec_job *head, *tail;
    size_t n;
};

struct exec_state {
    loop_t *loop;
    const struct deliver_config *cfg;
    char *argv[EXEC_ARGS_MAX + 2];
    char argbuf[sizeof(((struct deliver_config *)0)->exec_args)];
    struct job_list queue; /* waiting to start, or waiting to report */
    struct job_list running;
    uint64_t kick; /* timer that starts queued jobs; 0 when none */
};

/* --- lists --------------------------------------------------------------- */

static void list_push(struct job_list *l, struct exec_job *j)
{
    j->next = NULL;
    j->prev = l->tail;
    if (l->tail) {
        l->tail->next = j;
    } else {
        l->head = j;
    }
    l->tail = j;
    l->n++;
}

static void list_remove(struct job_list *l, struct exec_job *j)
{
    if (j->prev) {
        j->prev->next = j->next;
    } else {
        l->head = j->next;
    }
    if (j->next) {
        j->next->prev = j->prev;
    } else {
        l->tail = j->prev;
    }
    j->prev = j->next = NULL;
    l->n--;
}

/* --- helpers -------------------------------------------------------------- */

static void close_fd(struct exec_job *j, int *fd)
{
    if (*fd >= 0) {
        loop_fd_del(j->st->loop, *fd);
        close(*fd);
        *fd = -1;
    }
}

static void job_free(struct exec_job *j)
{
    free(j->json);
    free(j->out.buf);
    free(j->err.buf);
    free(j);
}

static void log_output(const struct exec_job *j, const char *name, const struct outbuf *o)
{
    if (o->len == 0 && o->dropped == 0) {
        return;
    }
    char esc[700];
    deliver_escape(esc, sizeof(esc), o->buf ? o->buf : "", o->len);
    if (o->dropped) {
        LOG_INFO("deliver", "exec: id=%s %s=\"%s\" (+%llu bytes not kept)", j->id, name, esc,
                 (unsigned long long)o->dropped);
    } else {
        LOG_INFO("deliver", "exec: id=%s %s=\"%s\"", j->id, name, esc);
    }
}

static void start_kick(struct exec_state *st);

/* The job is over: log, report, free, and let the next one start. */
static void finish(struct exec_job *j)
{
    struct exec_state *st = j->st;
    if (j->phase == REPORT) {
        list_remove(&st->queue, j);
    } else {
        list_remove(&st->running, j);
        loop_timer_cancel(st->loop, j->t_deadline);
        loop_timer_cancel(st->loop, j->t_poll);
        close_fd(j, &j->in_fd);
        close_fd(j, &j->out_fd);
        close_fd(j, &j->err_fd);
        uint64_t ms = loop_now_ms(st->loop) - j->started_ms;
        if (j->res.status == DELIVER_OK) {
            LOG_INFO("deliver", "exec: id=%s pid=%ld ok in %llums", j->id, (long)j->pid,
                     (unsigned long long)ms);
        } else {
            LOG_WARN("deliver", "exec: id=%s pid=%ld failed: %s (after %llums)", j->id,
                     (long)j->pid, j->res.reason, (unsigned long long)ms);
        }
        log_output(j, "stdout", &j->out);
        log_output(j, "stderr", &j->err);
    }
    deliver_done_cb done = j->done;
    void *arg = j->arg;
    struct deliver_result res = j->res;
    job_free(j);
    if (st->queue.head) {
        start_kick(st);
    }
    done(arg, &res);
}

static void set_exit_result(struct exec_job *j, int status)
{
    struct deliver_result *r = &j->res;
    if (j->timed_out) {
        r->status = DELIVER_FAIL;
        snprintf(r->reason, sizeof(r->reason), "timeout after %llu ms",
                 (unsigned long long)j->st->cfg->exec_timeout_ms);
    } else if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        r->status = DELIVER_OK;
        r->reason[0] = '\0';
    } else if (WIFEXITED(status)) {
        r->status = DELIVER_FAIL;
        snprintf(r->reason, sizeof(r->reason), "exit %d", WEXITSTATUS(status));
    } else if (WIFSIGNALED(status)) {
        r->status = DELIVER_FAIL;
        snprintf(r->reason, sizeof(r->reason), "signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    } else {
        r->status = DELIVER_FAIL;
        snprintf(r->reason, sizeof(r->reason), "wait status 0x%x", (unsigned)status);
    }
}

static void on_poll(loop_t *loop, uint64_t id, void *arg);

/* Reap the child if it has exited; otherwise poll again a little later. */
static void try_reap(struct exec_job *j)
{
    int status = 0;
    pid_t r;
    do {
        r = waitpid(j->pid, &status, WNOHANG);
    } while (r < 0 && errno == EINTR);
    if (r == j->pid) {
        set_exit_result(j, status);
        finish(j);
        return;
    }
    if (r < 0 && errno == ECHILD) {
        /* Reaped elsewhere (SIGCHLD set to SIG_IGN by someone): the exit
         * status is lost, so success cannot be claimed. */
        set_exit_result(j, 0);
        if (!j->timed_out) {
            j->res.status = DELIVER_FAIL;
            snprintf(j->res.reason, sizeof(j->res.reason), "exit status lost (reaped elsewhere)");
        }
        finish(j);
        return;
    }
    /* Output closed but still running (or closed its stdout early). */
    j->poll_ms = j->poll_ms ? j->poll_ms * 2 : EXEC_POLL_FIRST_MS;
    if (j->poll_ms > EXEC_POLL_MAX_MS) {
        j->poll_ms = EXEC_POLL_MAX_MS;
    }
    loop_timer_cancel(j->st->loop, j->t_poll);
    j->t_poll = loop_timer_add(j->st->loop, j->poll_ms, on_poll, j);
}

static void on_poll(loop_t *loop, uint64_t id, void *arg)
{
    (void)loop;
    (void)id;
    struct exec_job *j = arg;
    j->t_poll = 0;
    try_reap(j);
}

static void on_deadline(loop_t *loop, uint64_t id, void *arg)
{
    (void)id;
    struct exec_job *j = arg;
    j->t_deadline = 0;
    if (j->pid <= 0) {
        return; /* never: a running job has a child; kill(-0) would hit us */
    }
    if (j->phase == RUNNING) {
        j->timed_out = true;
        j->phase = TERM_SENT;
        /* The whole process group: a script's own children go too, and
         * their copies of the pipes close with them. */
        kill(-j->pid, SIGTERM);
        j->t_deadline = loop_timer_add(loop, j->st->cfg->exec_kill_grace_ms, on_deadline, j);
    } else if (j->phase == TERM_SENT) {
        j->phase = KILL_SENT;
        kill(-j->pid, SIGKILL);
        try_reap(j);
    }
}

/* Both output pipes at EOF: the program has exited or closed them. */
static void outputs_maybe_done(struct exec_job *j)
{
    if (j->out_fd < 0 && j->err_fd < 0) {
        try_reap(j);
    }
}

static void on_output(loop_t *loop, int fd, unsigned events, void *arg)
{
    (void)loop;
    (void)events;
    struct exec_job *j = arg;
    bool is_out = fd == j->out_fd;
    struct outbuf *o = is_out ? &j->out : &j->err;
    size_t cap = (size_t)j->st->cfg->exec_output_max;
    char chunk[4096];
    for (int round = 0; round < EXEC_READ_ROUNDS; round++) {
        ssize_t r = read(fd, chunk, sizeof(chunk));
        if (r > 0) {
            size_t keep = (size_t)r;
            if (o->len + keep > cap) {
                keep = cap > o->len ? cap - o->len : 0;
            }
            if (keep) {
                memcpy(o->buf + o->len, chunk, keep);
                o->len += keep;
            }
            o->dropped += (uint64_t)r - keep;
            continue;
        }
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return; /* more later */
        }
        /* EOF, or an error that will not go away. */
        close_fd(j, is_out ? &j->out_fd : &j->err_fd);
        outputs_maybe_done(j);
        return;
    }
}

static void on_stdin(loop_t *loop, int fd, unsigned events, void *arg)
{
    (void)loop;
    (void)fd;
    (void)events;
    struct exec_job *j = arg;
    while (j->json_off < j->json_len) {
        ssize_t w = write(j->in_fd, j->json + j->json_off, j->json_len - j->json_off);
        if (w > 0) {
            j->json_off += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return; /* the loop calls again when there is room */
        }
        /* EPIPE: the program does not read its stdin. Its exit status
         * decides the result, not this. */
        break;
    }
    close_fd(j, &j->in_fd); /* EOF for the program */
}

static int set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 ? -errno : 0;
}

/* Environment: the agent's (bounded), without any TIDINGS_* of its own,
 * plus the three TIDINGS_* values of this notification. */
static char **build_env(const struct exec_job *j, char *vars, size_t vlen)
{
    size_t n = 0;
    while (environ && environ[n] && n < EXEC_ENV_MAX) {
        n++;
    }
    char **envp = calloc(n + 4, sizeof(*envp));
    if (!envp) {
        return NULL;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (strncmp(environ[i], "TIDINGS_", 8) != 0) {
            envp[k++] = environ[i];
        }
    }
    int a = snprintf(vars, vlen, "TIDINGS_ID=%s", j->id);
    int b = snprintf(vars + a + 1, vlen - (size_t)a - 1, "TIDINGS_PRIORITY=%s",
                     proto_priority_name(j->priority));
    snprintf(vars + a + b + 2, vlen - (size_t)(a + b) - 2, "TIDINGS_CATEGORY=%s", j->category);
    envp[k++] = vars;
    envp[k++] = vars + a + 1;
    envp[k++] = vars + a + b + 2;
    envp[k] = NULL;
    return envp;
}

static int spawn(struct exec_job *j)
{
    struct exec_state *st = j->st;
    int inp[2] = {-1, -1}, outp[2] = {-1, -1}, errp[2] = {-1, -1};
    int rc = 0;
    if (pipe2(inp, O_CLOEXEC) < 0 || pipe2(outp, O_CLOEXEC) < 0 || pipe2(errp, O_CLOEXEC) < 0) {
        rc = -errno;
        goto out;
    }
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&attr);
    /* dup2 onto 0/1/2 clears close-on-exec there; the agent's own
     * descriptors are O_CLOEXEC and do not reach the program. */
    posix_spawn_file_actions_adddup2(&fa, inp[0], 0);
    posix_spawn_file_actions_adddup2(&fa, outp[1], 1);
    posix_spawn_file_actions_adddup2(&fa, errp[1], 2);
#if defined(__GLIBC__) && __GLIBC_PREREQ(2, 34)
    /* And close everything else: a library may have opened a descriptor
     * without O_CLOEXEC (a broker socket), which the program must not get. */
    posix_spawn_file_actions_addclosefrom_np(&fa, 3);
#endif
    /* The loop blocks the signals it handles (signalfd) and the agent
     * ignores SIGPIPE: give the program a clean mask and default actions,
     * and its own process group so a timeout can stop all of it. */
    sigset_t empty, all;
    sigemptyset(&empty);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attr, &empty);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setpgroup(&attr, 0);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF |
                                        POSIX_SPAWN_SETPGROUP);
    char vars[3 * 40 + PROTO_ID_MAX + PROTO_CATEGORY_MAX];
    char **envp = build_env(j, vars, sizeof(vars));
    if (!envp) {
        rc = -ENOMEM;
    } else {
        int e = posix_spawn(&j->pid, st->argv[0], &fa, &attr, st->argv, envp);
        rc = -e;
        free(envp);
    }
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    if (rc < 0) {
        goto out;
    }
    j->in_fd = inp[1];
    j->out_fd = outp[0];
    j->err_fd = errp[0];
    inp[1] = outp[0] = errp[0] = -1;
    close(inp[0]);
    close(outp[1]);
    close(errp[1]);
    inp[0] = outp[1] = errp[1] = -1;
    if ((rc = set_nonblock(j->in_fd)) < 0 || (rc = set_nonblock(j->out_fd)) < 0 ||
        (rc = set_nonblock(j->err_fd)) < 0 ||
        (rc = loop_fd_add(st->loop, j->out_fd, LOOP_READ, on_output, j)) < 0 ||
        (rc = loop_fd_add(st->loop, j->err_fd, LOOP_READ, on_output, j)) < 0 ||
        (rc = loop_fd_add(st->loop, j->in_fd, LOOP_WRITE, on_stdin, j)) < 0) {
        /* Started but cannot be watched: stop it now. */
        kill(-j->pid, SIGKILL);
        while (waitpid(j->pid, NULL, 0) < 0 && errno == EINTR) {
        }
        close_fd(j, &j->in_fd);
        close_fd(j, &j->out_fd);
        close_fd(j, &j->err_fd);
        j->pid = 0;
        return rc;
    }
    return 0;
out:
    for (int i = 0; i < 2; i++) {
        if (inp[i] >= 0) {
            close(inp[i]);
        }
        if (outp[i] >= 0) {
            close(outp[i]);
        }
        if (errp[i] >= 0) {
            close(errp[i]);
        }
    }
    return rc;
}

static void on_kick(loop_t *loop, uint64_t id, void *arg)
{
    (void)id;
    struct exec_state *st = arg;
    st->kick = 0;
    struct exec_job *j = st->queue.head;
    while (j) {
        struct exec_job *next = j->next;
        if (j->phase == REPORT) {
            finish(j); /* may re-arm the kick: harmless */
        } else if (st->running.n < (size_t)st->cfg->exec_max_running) {
            list_remove(&st->queue, j);
            list_push(&st->running, j);
            j->phase = RUNNING;
            j->started_ms = loop_now_ms(loop);
            int rc = spawn(j);
            if (rc < 0) {
                j->res.status = DELIVER_FAIL;
                snprintf(j->res.reason, sizeof(j->res.reason), "cannot run %s: %s", st->argv[0],
                         tdg_strerror(rc));
                finish(j);
            } else {
                j->t_deadline = loop_timer_add(loop, st->cfg->exec_timeout_ms, on_deadline, j);
            }
        }
        j = next;
        /* finish() may have started a kick of its own; one is enough. */
    }
}

static void start_kick(struct exec_state *st)
{
    if (!st->kick) {
        st->kick = loop_timer_add(st->loop, 0, on_kick, st);
    }
}

/* --- ops ------------------------------------------------------------------- */

static int exec_init(const struct deliver_env *env, void **state, char *err, size_t errlen)
{
    const struct deliver_config *cfg = env->cfg;
    if (cfg->exec_path[0] != '/') {
        snprintf(err, errlen, "deliver.exec.path: must be an absolute path (got '%s')",
                 cfg->exec_path);
        return TDG_ECONFIG;
    }
    if (access(cfg->exec_path, X_OK) < 0) {
        snprintf(err, errlen, "deliver.exec.path: %s: %s", cfg->exec_path, strerror(errno));
        return TDG_ECONFIG;
    }
    struct exec_state *st = calloc(1, sizeof(*st));
    if (!st) {
        return -ENOMEM;
    }
    st->loop = env->loop;
    st->cfg = cfg;
    /* argv: the path, then the words of exec_args split at spaces. */
    snprintf(st->argbuf, sizeof(st->argbuf), "%s", cfg->exec_args);
    size_t argc = 0;
    st->argv[argc++] = (char *)cfg->exec_path;
    char *p = st->argbuf;
    while (*p) {
        while (*p == ' ') {
            *p++ = '\0';
        }
        if (!*p) {
            break;
        }
        if (argc == EXEC_ARGS_MAX + 1) {
            snprintf(err, errlen, "deliver.exec.args: at most %d arguments", EXEC_ARGS_MAX);
            free(st);
            return TDG_ECONFIG;
        }
        st->argv[argc++] = p;
        while (*p && *p != ' ') {
            p++;
        }
    }
    st->argv[argc] = NULL;
    struct sigaction sa;
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) {
        signal(SIGPIPE, SIG_IGN);
    }
    *state = st;
    return 0;
}

static int exec_deliver(void *state, const struct notification *n, deliver_done_cb done, void *arg)
{
    struct exec_state *st = state;
    struct exec_job *j = calloc(1, sizeof(*j));
    if (!j) {
        return -ENOMEM;
    }
    j->st = st;
    j->done = done;
    j->arg = arg;
    j->in_fd = j->out_fd = j->err_fd = -1;
    j->priority = n->priority;
    snprintf(j->id, sizeof(j->id), "%s", n->id ? n->id : "");
    snprintf(j->category, sizeof(j->category), "%s", n->category ? n->category : "");
    size_t waiting = st->queue.n;
    /* Jobs start from the kick timer, so count what is queued and running
     * together against both budgets. */
    if (waiting + st->running.n >=
        (size_t)st->cfg->exec_max_running + (size_t)st->cfg->exec_queue_max) {
        j->phase = REPORT;
        j->res.status = DELIVER_RETRY;
        j->res.retry_after_ms = st->cfg->exec_timeout_ms;
        snprintf(j->res.reason, sizeof(j->res.reason), "exec queue full (%zu waiting)", waiting);
    } else {
        size_t cap = (size_t)st->cfg->exec_output_max;
        j->json = proto_serialize(n, &j->json_len);
        j->out.buf = malloc(cap ? cap : 1);
        j->err.buf = malloc(cap ? cap : 1);
        if (!j->json || !j->out.buf || !j->err.buf) {
            job_free(j);
            return -ENOMEM;
        }
        j->phase = QUEUED;
    }
    list_push(&st->queue, j);
    start_kick(st);
    if (!st->kick) {
        list_remove(&st->queue, j);
        job_free(j);
        return -ENOMEM;
    }
    return 0;
}

static void exec_destroy(void *state)
{
    struct exec_state *st = state;
    if (!st) {
        return;
    }
    loop_timer_cancel(st->loop, st->kick);
    while (st->running.head) {
        struct exec_job *j = st->running.head;
        list_remove(&st->running, j);
        loop_timer_cancel(st->loop, j->t_deadline);
        loop_timer_cancel(st->loop, j->t_poll);
        close_fd(j, &j->in_fd);
        close_fd(j, &j->out_fd);
        close_fd(j, &j->err_fd);
        /* Shutting down: stop the program and reap it (SIGKILL makes the
         * wait short). */
        if (j->pid > 0) {
            kill(-j->pid, SIGKILL);
            while (waitpid(j->pid, NULL, 0) < 0 && errno == EINTR) {
            }
        }
        LOG_WARN("deliver", "exec: id=%s abandoned at shutdown (pid=%ld killed)", j->id,
                 (long)j->pid);
        job_free(j);
    }
    while (st->queue.head) {
        struct exec_job *j = st->queue.head;
        list_remove(&st->queue, j);
        job_free(j);
    }
    free(st);
}

const struct deliver_ops deliver_exec_ops = {
    .name = "exec",
    .channel = PROTO_CH_LOCAL,
    .init = exec_init,
    .deliver = exec_deliver,
    .destroy = exec_destroy,
};
