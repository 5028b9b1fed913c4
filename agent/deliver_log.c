/*
 * deliver_log.c - the "log" backend: one line per notification, on stderr
 * through log.h or to the system logger.
 *
 * The syslog target talks to the logger's datagram socket itself, with
 * MSG_DONTWAIT, instead of syslog(3): glibc's syslog() blocks when the
 * logger stalls, and nothing may block the agent's loop. A full socket
 * buffer is a DELIVER_RETRY; no logger at all is DELIVER_UNAVAILABLE (said
 * once in the agent's log).
 */
#include "deliver.h"

#include "error.h"
#include "log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define LOG_TEXT_MAX 320 /* escaped title or body in the line */

struct log_job {
    struct log_state *st;
    struct log_job *prev, *next;
    uint64_t timer;
    struct deliver_result res;
    deliver_done_cb done;
    void *arg;
};

struct log_state {
    loop_t *loop;
    const struct deliver_config *cfg;
    bool syslog;
    int fd;               /* syslog socket, -1 when not connected */
    bool down_logged;     /* "no system logger" said once per outage */
    struct log_job *jobs; /* results waiting for their callback */
};

/* syslog severities (RFC 5424), spelled out: <syslog.h> clashes with
 * log.h's LOG_INFO / LOG_DEBUG macros. */
enum { SEV_CRIT = 2, SEV_WARNING = 4, SEV_NOTICE = 5, SEV_INFO = 6, FAC_USER = 1 };

static int severity(enum proto_priority p)
{
    switch (p) {
    case PROTO_PRIO_LOW:
        return SEV_INFO;
    case PROTO_PRIO_NORMAL:
        return SEV_NOTICE;
    case PROTO_PRIO_HIGH:
        return SEV_WARNING;
    case PROTO_PRIO_CRITICAL:
        return SEV_CRIT;
    }
    return SEV_NOTICE;
}

static int connect_syslog(struct log_state *st)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t plen = strlen(st->cfg->log_syslog_path);
    if (plen >= sizeof(sa.sun_path)) {
        return -ENAMETOOLONG;
    }
    memcpy(sa.sun_path, st->cfg->log_syslog_path, plen + 1);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -errno;
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    st->fd = fd;
    return 0;
}

static int log_init(const struct deliver_env *env, void **state, char *err, size_t errlen)
{
    struct log_state *st = calloc(1, sizeof(*st));
    if (!st) {
        snprintf(err, errlen, "log backend: out of memory");
        return -ENOMEM;
    }
    st->loop = env->loop;
    st->cfg = env->cfg;
    st->fd = -1;
    st->syslog = env->cfg->log_target == 1;
    if (st->syslog) {
        if (env->cfg->log_syslog_path[0] != '/') {
            snprintf(err, errlen, "deliver.log.syslog_socket: must be an absolute path");
            free(st);
            return TDG_ECONFIG;
        }
        /* No logger yet is not fatal: it may start after the agent. */
        (void)connect_syslog(st);
    }
    *state = st;
    return 0;
}

static void job_unlink(struct log_job *j)
{
    if (j->prev) {
        j->prev->next = j->next;
    } else {
        j->st->jobs = j->next;
    }
    if (j->next) {
        j->next->prev = j->prev;
    }
}

static void on_report(loop_t *loop, uint64_t id, void *arg)
{
    (void)loop;
    (void)id;
    struct log_job *j = arg;
    job_unlink(j);
    deliver_done_cb done = j->done;
    void *darg = j->arg;
    struct deliver_result res = j->res;
    free(j);
    done(darg, &res);
}

/* Send one datagram; reconnect once if the logger restarted. */
static enum deliver_status send_syslog(struct log_state *st, const char *msg, size_t len,
                                       char *reason, size_t rlen)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        if (st->fd < 0) {
            int rc = connect_syslog(st);
            if (rc < 0) {
                snprintf(reason, rlen, "no system logger at %s: %s", st->cfg->log_syslog_path,
                         tdg_strerror(rc));
                return DELIVER_UNAVAILABLE;
            }
        }
        ssize_t w = send(st->fd, msg, len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w >= 0) {
            return DELIVER_OK;
        }
        int e = errno;
        if (e == EAGAIN || e == EWOULDBLOCK || e == ENOBUFS) {
            snprintf(reason, rlen, "system logger busy");
            return DELIVER_RETRY;
        }
        close(st->fd);
        st->fd = -1;
        snprintf(reason, rlen, "system logger at %s: %s", st->cfg->log_syslog_path, strerror(e));
    }
    return DELIVER_UNAVAILABLE;
}

static int log_deliver(void *state, const struct notification *n, deliver_done_cb done, void *arg)
{
    struct log_state *st = state;
    struct log_job *j = calloc(1, sizeof(*j));
    if (!j) {
        return -ENOMEM;
    }
    char title[LOG_TEXT_MAX], body[LOG_TEXT_MAX];
    deliver_escape(title, sizeof(title), n->title ? n->title : "", n->title ? strlen(n->title) : 0);
    deliver_escape(body, sizeof(body), n->body ? n->body : "", n->body ? strlen(n->body) : 0);
    /* id, to, category and priority passed proto's validation: they hold no
     * quotes or control characters. */
    char line[900];
    snprintf(line, sizeof(line), "id=%s to=%s priority=%s category=%s title=\"%s\" body=\"%s\"",
             n->id ? n->id : "-", n->to ? n->to : "-", proto_priority_name(n->priority),
             n->category ? n->category : "-", title, body);
    j->res.status = DELIVER_OK;
    if (st->syslog) {
        char dgram[1024];
        int len = snprintf(dgram, sizeof(dgram), "<%d>tidings-agent[%ld]: %s",
                           FAC_USER * 8 + severity(n->priority), (long)getpid(), line);
        size_t dlen = len < 0 ? 0 : (size_t)len < sizeof(dgram) ? (size_t)len : sizeof(dgram) - 1;
        j->res.status = send_syslog(st, dgram, dlen, j->res.reason, sizeof(j->res.reason));
        if (j->res.status == DELIVER_UNAVAILABLE && !st->down_logged) {
            LOG_WARN("deliver", "log: %s; log deliveries are unavailable until it is back",
                     j->res.reason);
            st->down_logged = true;
        } else if (j->res.status == DELIVER_OK && st->down_logged) {
            LOG_INFO("deliver", "log: system logger at %s is back", st->cfg->log_syslog_path);
            st->down_logged = false;
        }
        if (j->res.status == DELIVER_RETRY) {
            j->res.retry_after_ms = 1000;
        }
    } else {
        log_msg(LOG_LVL_INFO, "notify", "%s", line);
    }
    /* The line is written; the result is reported from the loop so that a
     * caller never sees its callback run inside its own call. */
    j->st = st;
    j->done = done;
    j->arg = arg;
    j->timer = loop_timer_add(st->loop, 0, on_report, j);
    if (!j->timer) {
        free(j);
        return -ENOMEM;
    }
    j->next = st->jobs;
    if (st->jobs) {
        st->jobs->prev = j;
    }
    st->jobs = j;
    return 0;
}

static void log_destroy(void *state)
{
    struct log_state *st = state;
    if (!st) {
        return;
    }
    while (st->jobs) {
        struct log_job *j = st->jobs;
        loop_timer_cancel(st->loop, j->timer);
        st->jobs = j->next;
        free(j);
    }
    if (st->fd >= 0) {
        close(st->fd);
    }
    free(st);
}

const struct deliver_ops deliver_log_ops = {
    .name = "log",
    .channel = PROTO_CH_LOCAL,
    .init = log_init,
    .deliver = log_deliver,
    .destroy = log_destroy,
};
