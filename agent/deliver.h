/*
 * deliver.h - local delivery backends behind one interface.
 *
 * A backend shows or hands over one notification on this box: "desktop"
 * (org.freedesktop.Notifications over the D-Bus session bus), "exec" (a
 * configured program gets the notification as JSON on stdin) and "log" (a
 * line on stderr or syslog). Each is one file with one ops table;
 * registration is the hand-written array in deliver.c.
 *
 * Everything runs on the agent's event loop and nothing blocks it: the
 * desktop backend makes asynchronous D-Bus calls with the bus socket watched
 * by the loop, the exec backend spawns its program with pipes watched by the
 * loop and a loop timer for the timeout.
 *
 * Results (deliver_done_cb):
 *   DELIVER_OK           shown / handed over
 *   DELIVER_RETRY        a passing problem (bus reply timeout, queue full):
 *                        try again later
 *   DELIVER_FAIL         this notification failed on this backend; reason
 *                        says why ("exit 3", "timeout after 10000 ms", a D-Bus
 *                        error name) - terminal for this backend
 *   DELIVER_UNAVAILABLE  the backend cannot deliver anything right now (no
 *                        session bus, no notification server): not the
 *                        notification's fault, the caller keeps it for the
 *                        other backends and may try this one again later
 * Not thread-safe: loop thread only.
 */
#ifndef TIDINGS_DELIVER_H
#define TIDINGS_DELIVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "loop.h"
#include "proto.h"

#define DELIVER_REASON_MAX 160
#define DELIVER_BACKENDS_MAX 4 /* enabled at once */

enum deliver_status { DELIVER_OK = 0, DELIVER_RETRY, DELIVER_FAIL, DELIVER_UNAVAILABLE };

/* "ok", "retry", "fail", "unavailable". */
const char *deliver_status_name(enum deliver_status s);

struct deliver_result {
    enum deliver_status status;
    char reason[DELIVER_REASON_MAX]; /* "" for ok; why, otherwise */
    uint64_t retry_after_ms;         /* DELIVER_RETRY: a suggested delay (0: use your backoff) */
    char ref[32];                    /* backend's handle when ok, e.g. the desktop
                                        notification id "17"; "" if none */
};

/* Called exactly once for every deliver() that returned 0, always later from
 * the loop (never from inside deliver()), and never after the backend was
 * destroyed: deliveries still running at destroy are abandoned without a
 * callback, so the caller must treat them as not delivered. res is only
 * valid during the call. */
typedef void (*deliver_done_cb)(void *arg, const struct deliver_result *res);

enum deliver_receipt_kind {
    DELIVER_RECEIPT_ACTION, /* the user invoked an action; detail = action key ("default") */
    DELIVER_RECEIPT_CLOSED, /* closed; detail = "expired", "dismissed", "closed", "undefined" */
};

/* Something happened to a delivered notification (desktop: the server's
 * ActionInvoked / NotificationClosed signals). Pointers valid during the
 * call only. */
struct deliver_receipt {
    const char *backend; /* "desktop" */
    const char *id;      /* the notification's id */
    enum deliver_receipt_kind kind;
    const char *detail;
};
typedef void (*deliver_receipt_cb)(void *arg, const struct deliver_receipt *r);

/* Settings of every backend; one struct so it can sit inside the agent's
 * config struct (see DELIVER_CONFIG_ENTRIES). */
struct deliver_config {
    char backends[64];           /* enabled backends in order: "desktop,exec,log" */
    int log_target;              /* index into deliver_log_targets: stderr, syslog */
    char log_syslog_path[108];   /* the syslog socket (AF_UNIX datagram) */
    char desktop_bus[256];       /* D-Bus address; "" = the user's session bus */
    char desktop_app_name[32];   /* app_name sent to the server */
    int64_t desktop_expire_ms;   /* expire_timeout; -1 = the server's default, 0 = never */
    uint64_t desktop_timeout_ms; /* reply timeout of one Notify call */
    char exec_path[256];         /* absolute path of the hook program */
    char exec_args[256];         /* fixed arguments, split at spaces; no shell, no expansion */
    uint64_t exec_timeout_ms;    /* then SIGTERM, then SIGKILL after exec_kill_grace_ms */
    uint64_t exec_kill_grace_ms;
    uint64_t exec_output_max; /* bytes of stdout and of stderr kept for the log */
    int64_t exec_max_running; /* hooks running at once */
    int64_t exec_queue_max;   /* hooks waiting to run; beyond that: DELIVER_RETRY */
};

#ifdef TIDINGS_DESKTOP_NOTIFY
#define DELIVER_DEFAULT_BACKENDS "desktop,log"
#else
#define DELIVER_DEFAULT_BACKENDS "log"
#endif

extern const char *const deliver_log_targets[]; /* {"stderr", "syslog", NULL} */

#define DELIVER_CFG_OFF_(type, member, f) offsetof(type, member.f), sizeof(((type *)0)->member.f)

/* The config entries of struct deliver_config living at `member` of `type`:
 * put DELIVER_CONFIG_ENTRIES(struct agent_config, deliver) into the agent's
 * table and the keys below appear in its file parser and --help-config. */
/* clang-format off */
#define DELIVER_CONFIG_ENTRIES(type, member)                                                       \
    {"deliver.backends", CONFIG_STRING, DELIVER_DEFAULT_BACKENDS,                                  \
     DELIVER_CFG_OFF_(type, member, backends),                                                     \
     "Local delivery backends in order, comma-separated; each gets every local "                   \
     "notification: desktop, exec, log",                                                           \
     NULL, 0, 0},                                                                                  \
    {"deliver.log.target", CONFIG_ENUM, "stderr",                                                  \
     DELIVER_CFG_OFF_(type, member, log_target),                                                   \
     "Where the log backend writes: stderr (the agent's log) or syslog",                           \
     deliver_log_targets, 0, 0},                                                                   \
    {"deliver.log.syslog_socket", CONFIG_STRING, "/dev/log",                                       \
     DELIVER_CFG_OFF_(type, member, log_syslog_path),                                              \
     "The system logger's socket, for deliver.log.target = syslog",                                \
     NULL, 0, 0},                                                                                  \
    {"deliver.desktop.bus", CONFIG_STRING, "",                                                     \
     DELIVER_CFG_OFF_(type, member, desktop_bus),                                                  \
     "D-Bus address of the session bus (empty: $DBUS_SESSION_BUS_ADDRESS, else "                   \
     "$XDG_RUNTIME_DIR/bus)",                                                                      \
     NULL, 0, 0},                                                                                  \
    {"deliver.desktop.app_name", CONFIG_STRING, "Tidings",                                         \
     DELIVER_CFG_OFF_(type, member, desktop_app_name),                                             \
     "Application name shown by the notification server",                                          \
     NULL, 0, 0},                                                                                  \
    {"deliver.desktop.expire", CONFIG_INT, "-1",                                                   \
     DELIVER_CFG_OFF_(type, member, desktop_expire_ms),                                            \
     "Milliseconds a desktop notification stays (-1: the server's default, 0: until "              \
     "closed)",                                                                                    \
     NULL, -1, 86400000},                                                                          \
    {"deliver.desktop.timeout", CONFIG_DURATION, "5s",                                             \
     DELIVER_CFG_OFF_(type, member, desktop_timeout_ms),                                           \
     "How long to wait for the notification server's reply",                                       \
     NULL, 100, 600000},                                                                           \
    {"deliver.exec.path", CONFIG_STRING, "",                                                       \
     DELIVER_CFG_OFF_(type, member, exec_path),                                                    \
     "Absolute path of the program the exec backend runs (notification JSON on its "               \
     "stdin)",                                                                                     \
     NULL, 0, 0},                                                                                  \
    {"deliver.exec.args", CONFIG_STRING, "",                                                       \
     DELIVER_CFG_OFF_(type, member, exec_args),                                                    \
     "Fixed arguments, separated by spaces (no shell, no quoting, no expansion)",                  \
     NULL, 0, 0},                                                                                  \
    {"deliver.exec.timeout", CONFIG_DURATION, "10s",                                               \
     DELIVER_CFG_OFF_(type, member, exec_timeout_ms),                                              \
     "Stop the program (SIGTERM, then SIGKILL) after this long",                                   \
     NULL, 10, 3600000},                                                                           \
    {"deliver.exec.kill_grace", CONFIG_DURATION, "2s",                                             \
     DELIVER_CFG_OFF_(type, member, exec_kill_grace_ms),                                           \
     "Time between SIGTERM and SIGKILL on timeout",                                                \
     NULL, 10, 60000},                                                                             \
    {"deliver.exec.output_max", CONFIG_SIZE, "1K",                                                 \
     DELIVER_CFG_OFF_(type, member, exec_output_max),                                              \
     "Bytes of the program's stdout and of its stderr kept for the log (the rest is "              \
     "read and discarded)",                                                                        \
     NULL, 0, 65536},                                                                              \
    {"deliver.exec.max_running", CONFIG_INT, "2",                                                  \
     DELIVER_CFG_OFF_(type, member, exec_max_running),                                             \
     "Programs running at once",                                                                   \
     NULL, 1, 64},                                                                                 \
    {"deliver.exec.queue_max", CONFIG_INT, "64",                                                   \
     DELIVER_CFG_OFF_(type, member, exec_queue_max),                                               \
     "Notifications waiting for a free slot; beyond that the result is retry",                     \
     NULL, 0, 4096}
/* clang-format on */

/* The same entries with offsets into a bare struct deliver_config (tests,
 * tools). */
extern const struct config_entry deliver_config_table[];
extern const size_t deliver_config_table_len;

/* What a backend's init gets. Valid until its destroy. */
struct deliver_env {
    loop_t *loop;
    const struct deliver_config *cfg;
    deliver_receipt_cb on_receipt; /* may be NULL */
    void *receipt_arg;
};

struct deliver_ops {
    const char *name; /* "desktop", "exec", "log" */
    unsigned channel; /* the preference channel it counts as: PROTO_CH_DESKTOP or PROTO_CH_LOCAL */
    /* Set up; 0 and *state, or a negative error with err set (bad config).
     * A missing bus or notification server is NOT an init error: the
     * backend reports DELIVER_UNAVAILABLE per notification instead. */
    int (*init)(const struct deliver_env *env, void **state, char *err, size_t errlen);
    /* Start delivering n (borrowed for the call only: what is needed is
     * copied). 0: done will be called later; negative (-ENOMEM): done will
     * not be called. */
    int (*deliver)(void *state, const struct notification *n, deliver_done_cb done, void *arg);
    /* Abandon what is in flight (no callbacks), free everything. NULL-safe. */
    void (*destroy)(void *state);
};

extern const struct deliver_ops deliver_log_ops;
extern const struct deliver_ops deliver_exec_ops;
#ifdef TIDINGS_DESKTOP_NOTIFY
extern const struct deliver_ops deliver_desktop_ops;
#endif

/* The registry: every backend built in, by name. NULL if unknown. */
const struct deliver_ops *deliver_find(const char *name);

/* For backends: copy len bytes of untrusted text into out (cap > 0) for a
 * log line: printable ASCII and UTF-8 bytes stay, '"' and '\\' are
 * escaped, control bytes become \n, \t or \xHH, so a title can never forge a
 * log line. Cut with "..." when it does not fit. Always NUL-terminates;
 * returns the length written. */
size_t deliver_escape(char *out, size_t cap, const char *in, size_t len);

/* --- the set of enabled backends ------------------------------------------ */

typedef struct deliver deliver_t;

/* Initialise the backends named in cfg->backends, in that order. 0 and *out,
 * or TDG_ECONFIG (unknown, duplicate or not-built-in backend, more than
 * DELIVER_BACKENDS_MAX) / a backend's init error, with err set. cfg is
 * copied. on_receipt (may be NULL) gets every backend's receipts. */
int deliver_create(loop_t *loop, const struct deliver_config *cfg, deliver_receipt_cb on_receipt,
                   void *receipt_arg, deliver_t **out, char *err, size_t errlen);
/* The same with the backends given as ops tables, in order, instead of by
 * name from cfg->backends (tests: a scripted backend; tools). */
int deliver_create_ops(loop_t *loop, const struct deliver_config *cfg,
                       const struct deliver_ops *const *ops, size_t n,
                       deliver_receipt_cb on_receipt, void *receipt_arg, deliver_t **out, char *err,
                       size_t errlen);
/* Destroy every backend (in-flight deliveries abandoned, no callbacks).
 * Not from inside a done or receipt callback: return to the loop first. */
void deliver_destroy(deliver_t *d);

size_t deliver_count(const deliver_t *d);
const char *deliver_name(const deliver_t *d, size_t i);
unsigned deliver_channel(const deliver_t *d, size_t i);

/* Deliver n through backend i (see deliver_ops.deliver). -EINVAL for a bad i. */
int deliver_send(deliver_t *d, size_t i, const struct notification *n, deliver_done_cb done,
                 void *arg);

#endif
