/*
 * loop.c - epoll event loop with a timer heap, before-sleep hooks and signalfd.
 *
 * Timers live in a binary min-heap ordered by (deadline, id). The loop is
 * meant for tens of live timers (protocol clients, retry ticks): long lists
 * of due times belong in the durable scheduler, which arms one timer for the
 * nearest one. Cancellation is therefore a linear search, kept simple on
 * purpose.
 */
#include "loop.h"

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#define LOOP_MAX_HOOKS 16
#define LOOP_MAX_SIGNALS 8
#define LOOP_MAX_EVENTS 64
#define LOOP_MAX_FDS 65536 /* fd table ceiling */
#define LOOP_MAX_TIMERS 100000

struct fd_watch {
    loop_fd_cb cb;
    void *arg;
    unsigned events;
    bool active;
};

struct timer {
    uint64_t deadline;
    uint64_t id;
    loop_timer_cb cb;
    void *arg;
};

struct hook {
    loop_hook_cb cb;
    void *arg;
};

struct sig {
    int signo;
    loop_signal_cb cb;
    void *arg;
};

struct loop {
    int epfd;
    struct fd_watch *fds;
    size_t nfds; /* size of fds[] */
    struct timer *heap;
    size_t ntimers, cap_timers;
    uint64_t next_timer_id;
    struct hook hooks[LOOP_MAX_HOOKS];
    size_t nhooks;
    struct sig sigs[LOOP_MAX_SIGNALS];
    size_t nsigs;
    int sigfd;
    sigset_t sigmask;
    uint64_t now;
    bool stop;
};

uint64_t clock_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int64_t clock_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + (int64_t)ts.tv_nsec / 1000000;
}

loop_t *loop_create(void)
{
    loop_t *l = calloc(1, sizeof(*l));
    if (!l) {
        return NULL;
    }
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (l->epfd < 0) {
        free(l);
        return NULL;
    }
    l->sigfd = -1;
    sigemptyset(&l->sigmask);
    l->next_timer_id = 1;
    l->now = clock_mono_ms();
    return l;
}

void loop_destroy(loop_t *l)
{
    if (!l) {
        return;
    }
    if (l->sigfd >= 0) {
        close(l->sigfd);
        sigprocmask(SIG_UNBLOCK, &l->sigmask, NULL);
    }
    close(l->epfd);
    free(l->fds);
    free(l->heap);
    free(l);
}

static uint32_t to_epoll(unsigned events)
{
    uint32_t e = 0;
    if (events & LOOP_READ) {
        e |= EPOLLIN;
    }
    if (events & LOOP_WRITE) {
        e |= EPOLLOUT;
    }
    return e;
}

int loop_fd_add(loop_t *l, int fd, unsigned events, loop_fd_cb cb, void *arg)
{
    if (fd < 0 || fd >= LOOP_MAX_FDS || !cb) {
        return -EINVAL;
    }
    if ((size_t)fd >= l->nfds) {
        size_t n = l->nfds ? l->nfds : 64;
        while (n <= (size_t)fd) {
            n *= 2;
        }
        struct fd_watch *f = realloc(l->fds, n * sizeof(*f));
        if (!f) {
            return -ENOMEM;
        }
        memset(f + l->nfds, 0, (n - l->nfds) * sizeof(*f));
        l->fds = f;
        l->nfds = n;
    }
    if (l->fds[fd].active) {
        return -EEXIST;
    }
    struct epoll_event ev = {.events = to_epoll(events), .data.fd = fd};
    if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        return -errno;
    }
    l->fds[fd] = (struct fd_watch){.cb = cb, .arg = arg, .events = events, .active = true};
    return 0;
}

int loop_fd_mod(loop_t *l, int fd, unsigned events)
{
    if (fd < 0 || (size_t)fd >= l->nfds || !l->fds[fd].active) {
        return -ENOENT;
    }
    if (l->fds[fd].events == events) {
        return 0;
    }
    struct epoll_event ev = {.events = to_epoll(events), .data.fd = fd};
    if (epoll_ctl(l->epfd, EPOLL_CTL_MOD, fd, &ev) < 0) {
        return -errno;
    }
    l->fds[fd].events = events;
    return 0;
}

int loop_fd_del(loop_t *l, int fd)
{
    if (fd < 0 || (size_t)fd >= l->nfds || !l->fds[fd].active) {
        return -ENOENT;
    }
    /* The fd may already be closed by its owner; epoll dropped it then. */
    epoll_ctl(l->epfd, EPOLL_CTL_DEL, fd, NULL);
    l->fds[fd].active = false;
    return 0;
}

static bool timer_before(const struct timer *a, const struct timer *b)
{
    return a->deadline < b->deadline || (a->deadline == b->deadline && a->id < b->id);
}

static void heap_up(struct timer *h, size_t i)
{
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!timer_before(&h[i], &h[p])) {
            break;
        }
        struct timer t = h[i];
        h[i] = h[p];
        h[p] = t;
        i = p;
    }
}

static void heap_down(struct timer *h, size_t n, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && timer_before(&h[l], &h[m])) {
            m = l;
        }
        if (r < n && timer_before(&h[r], &h[m])) {
            m = r;
        }
        if (m == i) {
            return;
        }
        struct timer t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

static void heap_remove(loop_t *l, size_t i)
{
    l->ntimers--;
    if (i == l->ntimers) {
        return;
    }
    l->heap[i] = l->heap[l->ntimers];
    heap_up(l->heap, i);
    heap_down(l->heap, l->ntimers, i);
}

uint64_t loop_timer_add(loop_t *l, uint64_t delay_ms, loop_timer_cb cb, void *arg)
{
    if (!cb || l->ntimers >= LOOP_MAX_TIMERS) {
        return 0;
    }
    if (l->ntimers == l->cap_timers) {
        size_t n = l->cap_timers ? l->cap_timers * 2 : 16;
        struct timer *h = realloc(l->heap, n * sizeof(*h));
        if (!h) {
            return 0;
        }
        l->heap = h;
        l->cap_timers = n;
    }
    /* Deadlines are taken from a fresh clock so a timer armed late in a long
     * iteration does not fire early. */
    uint64_t now = clock_mono_ms();
    uint64_t deadline = delay_ms > UINT64_MAX - now ? UINT64_MAX : now + delay_ms;
    uint64_t id = l->next_timer_id++;
    l->heap[l->ntimers] = (struct timer){.deadline = deadline, .id = id, .cb = cb, .arg = arg};
    heap_up(l->heap, l->ntimers);
    l->ntimers++;
    return id;
}

int loop_timer_cancel(loop_t *l, uint64_t id)
{
    for (size_t i = 0; i < l->ntimers; i++) {
        if (l->heap[i].id == id) {
            heap_remove(l, i);
            return 0;
        }
    }
    return -ENOENT;
}

int loop_before_sleep(loop_t *l, loop_hook_cb cb, void *arg)
{
    if (l->nhooks >= LOOP_MAX_HOOKS) {
        return -ENOSPC;
    }
    l->hooks[l->nhooks++] = (struct hook){.cb = cb, .arg = arg};
    return 0;
}

static void on_signalfd(loop_t *l, int fd, unsigned events, void *arg)
{
    (void)events;
    (void)arg;
    struct signalfd_siginfo si;
    while (read(fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        for (size_t i = 0; i < l->nsigs; i++) {
            if ((uint32_t)l->sigs[i].signo == si.ssi_signo) {
                l->sigs[i].cb(l, l->sigs[i].signo, l->sigs[i].arg);
            }
        }
    }
}

int loop_signal(loop_t *l, int signo, loop_signal_cb cb, void *arg)
{
    if (l->nsigs >= LOOP_MAX_SIGNALS) {
        return -ENOSPC;
    }
    sigaddset(&l->sigmask, signo);
    if (sigprocmask(SIG_BLOCK, &l->sigmask, NULL) < 0) {
        return -errno;
    }
    int fd = signalfd(l->sigfd, &l->sigmask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (fd < 0) {
        return -errno;
    }
    if (l->sigfd < 0) {
        int rc = loop_fd_add(l, fd, LOOP_READ, on_signalfd, NULL);
        if (rc < 0) {
            close(fd);
            return rc;
        }
        l->sigfd = fd;
    }
    l->sigs[l->nsigs++] = (struct sig){.signo = signo, .cb = cb, .arg = arg};
    return 0;
}

void loop_stop(loop_t *l)
{
    l->stop = true;
}

uint64_t loop_now_ms(loop_t *l)
{
    return l->now;
}

static void run_timers(loop_t *l)
{
    /* Only timers due at entry run in this pass: a callback that re-arms a
     * zero-delay timer cannot starve the fds. */
    uint64_t limit = l->next_timer_id;
    while (l->ntimers > 0 && l->heap[0].deadline <= l->now && l->heap[0].id < limit) {
        struct timer t = l->heap[0];
        heap_remove(l, 0);
        t.cb(l, t.id, t.arg);
        if (l->stop) {
            return;
        }
    }
}

int loop_run(loop_t *l)
{
    struct epoll_event evs[LOOP_MAX_EVENTS];
    l->stop = false;
    while (!l->stop) {
        for (size_t i = 0; i < l->nhooks; i++) {
            l->hooks[i].cb(l, l->hooks[i].arg);
        }
        if (l->stop) {
            break;
        }
        int timeout = -1;
        if (l->ntimers > 0) {
            uint64_t now = clock_mono_ms();
            uint64_t d = l->heap[0].deadline;
            timeout = d <= now ? 0 : (d - now > 86400000u ? 86400000 : (int)(d - now));
        }
        int n = epoll_wait(l->epfd, evs, LOOP_MAX_EVENTS, timeout);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        l->now = clock_mono_ms();
        for (int i = 0; i < n && !l->stop; i++) {
            int fd = evs[i].data.fd;
            /* A callback earlier in this batch may have removed this watch. */
            if ((size_t)fd >= l->nfds || !l->fds[fd].active) {
                continue;
            }
            unsigned ev = 0;
            if (evs[i].events & (EPOLLIN | EPOLLPRI)) {
                ev |= LOOP_READ;
            }
            if (evs[i].events & EPOLLOUT) {
                ev |= LOOP_WRITE;
            }
            if (evs[i].events & (EPOLLERR | EPOLLHUP)) {
                ev |= LOOP_ERROR;
            }
            struct fd_watch w = l->fds[fd];
            w.cb(l, fd, ev, w.arg);
        }
        if (!l->stop) {
            run_timers(l);
        }
    }
    return 0;
}
