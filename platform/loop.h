/*
 * loop.h - an event loop (epoll + a timer heap + signalfd).
 *
 * Single-threaded: a loop belongs to the thread that calls loop_run(); every
 * callback runs there, and no function may be called on it from another
 * thread (hand work over through an eventfd the loop watches). A process
 * has one main loop; a worker thread may run a private loop of its own (the
 * hub's HTTP client thread, hub/http.c). The MQTT client (platform/mqtt.c)
 * is driven from the main loop, the HTTP/2 clients from theirs, through fd
 * watches and timers. Signals (loop_signal) belong on the main loop only. A loop with nothing to do sleeps in epoll_wait with no
 * timeout: no timers are armed by the loop itself, so an idle process does
 * not wake up.
 *
 * Before each sleep the loop calls the registered "before sleep" hooks; they
 * are where work batched during one iteration is flushed (e.g. one SQLite
 * commit for every message read in that iteration).
 */
#ifndef TIDINGS_LOOP_H
#define TIDINGS_LOOP_H

#include <stdint.h>

typedef struct loop loop_t;

#define LOOP_READ 0x1u
#define LOOP_WRITE 0x2u
#define LOOP_ERROR 0x4u /* reported only, never requested: EPOLLERR/EPOLLHUP */

typedef void (*loop_fd_cb)(loop_t *loop, int fd, unsigned events, void *arg);
typedef void (*loop_timer_cb)(loop_t *loop, uint64_t timer_id, void *arg);
typedef void (*loop_hook_cb)(loop_t *loop, void *arg);
typedef void (*loop_signal_cb)(loop_t *loop, int signo, void *arg);

/* Returns NULL on failure (errno set). */
loop_t *loop_create(void);
/* Frees the loop. Watched fds are not closed: their owners close them. */
void loop_destroy(loop_t *loop);

/* Watch fd for events (LOOP_READ|LOOP_WRITE). One watch per fd. 0 or -errno. */
int loop_fd_add(loop_t *loop, int fd, unsigned events, loop_fd_cb cb, void *arg);
/* Change the events of an existing watch. 0 or -errno (-ENOENT if not watched). */
int loop_fd_mod(loop_t *loop, int fd, unsigned events);
/* Stop watching fd. Safe to call from inside that fd's callback. 0 or -ENOENT. */
int loop_fd_del(loop_t *loop, int fd);

/* One-shot timer firing after delay_ms. Returns an id > 0, or 0 on ENOMEM.
 * Ids are never reused within a loop, so cancelling a fired id is harmless. */
uint64_t loop_timer_add(loop_t *loop, uint64_t delay_ms, loop_timer_cb cb, void *arg);
/* Cancel a pending timer. 0, or -ENOENT if it already fired or never existed. */
int loop_timer_cancel(loop_t *loop, uint64_t timer_id);

/* Register a hook run before every sleep. At most 16 hooks. 0 or -ENOSPC. */
int loop_before_sleep(loop_t *loop, loop_hook_cb cb, void *arg);

/* Deliver signo through the loop (signalfd); the signal is blocked for the
 * thread. At most 8 signals. 0 or -errno. */
int loop_signal(loop_t *loop, int signo, loop_signal_cb cb, void *arg);

/* Run until loop_stop(). Returns 0, or -errno if epoll fails. */
int loop_run(loop_t *loop);
/* Ask loop_run() to return after the current iteration. */
void loop_stop(loop_t *loop);

/* Monotonic milliseconds, refreshed at each wake-up (cheap). */
uint64_t loop_now_ms(loop_t *loop);
/* Fresh monotonic and wall-clock milliseconds (a clock_gettime call each). */
uint64_t clock_mono_ms(void);
int64_t clock_wall_ms(void);

#endif
