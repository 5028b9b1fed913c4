/*
 * harness.h - what component tests share to run the fake provider servers
 * (tests/fakes) as child processes: a private temp dir, commands without a
 * shell, a fake started with its output in a log file and its port read
 * from the port file it writes, and stopped again.
 *
 * Children get PR_SET_PDEATHSIG(SIGKILL), so they die with the test even if
 * it crashes or ctest kills it on its timeout. Nothing here uses cmocka:
 * functions return 0 or -1 with a message in `why` (the tests turn that
 * into fail_msg), so tools such as apns_send_rate use it too.
 */
#ifndef TIDINGS_TEST_HARNESS_H
#define TIDINGS_TEST_HARNESS_H

#include <stddef.h>
#include <sys/types.h>

#define HARNESS_PATH_MAX 320

/* A child process started by harness_start. */
struct harness_child {
    pid_t pid; /* -1 (or 0) when not running */
    int port;  /* what it wrote to its port file */
    char name[32];
    char log_path[HARNESS_PATH_MAX]; /* its stdout and stderr */
};

/* Sleep ms milliseconds (EINTR resumed). */
void harness_sleep_ms(long ms);

/* 2 * nbytes lowercase hex characters of getrandom() into out (NUL
 * terminated; out holds at least 2 * nbytes + 1). nbytes <= 32. 0 or -1. */
int harness_random_hex(char *out, size_t nbytes);

/* A fresh 0700 directory "$TMPDIR/tidings-<tag>-XXXXXX" (TMPDIR unset:
 * /tmp) into dir. 0 or -1 (errno set). */
int harness_mkdtemp(char *dir, size_t cap, const char *tag);

/* Remove dir and everything below it (no shell; symlinks not followed).
 * 0 or -1. */
int harness_rmtree(const char *dir);

/* Run argv (argv[0] a path; no shell) with stdout and stderr appended to
 * log_path (NULL: inherited), and wait. Its exit status, or -1 when it
 * could not run or died of a signal. */
int harness_run(const char *const argv[], const char *log_path);

/* gen-certs.sh DIR [KEY_ID] (the test CA, server certificate and, with
 * key_id, an APNs auth key), output in DIR/gen.log. 0 or -1. */
int harness_gen_certs(const char *gen_certs, const char *dir, const char *key_id);

/*
 * Start argv (argv[0] a path, execv) as c, named name in messages, with
 * stdout and stderr in log_path (truncated), and wait up to timeout_ms for
 * a port > 0 in port_path (removed first; the fakes write it atomically).
 * 0 with c->pid and c->port set; -1 with why set when it exits first or
 * does not listen in time (then it is stopped and its log printed).
 */
int harness_start(struct harness_child *c, const char *name, const char *const argv[],
                  const char *log_path, const char *port_path, int timeout_ms, char *why,
                  size_t whylen);

/* SIGTERM, up to 5 s for it to exit, then SIGKILL; reaped. Nothing when c
 * is not running. */
void harness_stop(struct harness_child *c);

/* Print c's log to stdout under a "--- <name> log" line (for failures). */
void harness_dump_log(const struct harness_child *c);

#endif
