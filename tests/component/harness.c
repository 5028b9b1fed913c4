/*
 * harness.c - child processes and temp dirs for component tests (see
 * harness.h).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* nftw's FTW_DEPTH | FTW_PHYS */
#endif
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

void harness_sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

int harness_random_hex(char *out, size_t nbytes)
{
    unsigned char b[32];
    if (nbytes > sizeof(b) || getrandom(b, nbytes, 0) != (ssize_t)nbytes) {
        return -1;
    }
    for (size_t i = 0; i < nbytes; i++) {
        snprintf(out + 2 * i, 3, "%02x", b[i]);
    }
    out[2 * nbytes] = '\0';
    return 0;
}

int harness_mkdtemp(char *dir, size_t cap, const char *tag)
{
    const char *base = getenv("TMPDIR");
    int n = snprintf(dir, cap, "%s/tidings-%s-XXXXXX", base && *base ? base : "/tmp", tag);
    if (n < 0 || (size_t)n >= cap) {
        errno = ENAMETOOLONG;
        return -1;
    }
    return mkdtemp(dir) ? 0 : -1;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    return (flag == FTW_DP ? rmdir(path) : unlink(path)) == 0 || errno == ENOENT ? 0 : -1;
}

int harness_rmtree(const char *dir)
{
    if (!dir || !dir[0]) {
        return -1;
    }
    return nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* In the child: stdout and stderr to path (flags: O_TRUNC or O_APPEND). */
static void redirect(const char *path, int flags)
{
    if (!path) {
        return;
    }
    int fd = open(path, O_WRONLY | O_CREAT | flags, 0600);
    if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
    }
}

int harness_run(const char *const argv[], const char *log_path)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        return -1;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        redirect(log_path, O_APPEND);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0) {
        if (errno != EINTR) {
            return -1;
        }
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int harness_gen_certs(const char *gen_certs, const char *dir, const char *key_id)
{
    char log[HARNESS_PATH_MAX];
    snprintf(log, sizeof(log), "%s/gen.log", dir);
    const char *argv[] = {gen_certs, dir, key_id, NULL};
    int rc = harness_run(argv, log);
    if (rc != 0) {
        fprintf(stderr, "%s %s failed (%d); see %s\n", gen_certs, dir, rc, log);
        return -1;
    }
    return 0;
}

void harness_dump_log(const struct harness_child *c)
{
    FILE *f = fopen(c->log_path, "r");
    if (!f) {
        return;
    }
    char line[512];
    printf("--- %s log\n", c->name);
    while (fgets(line, sizeof(line), f)) {
        printf("%s", line);
    }
    fclose(f);
}

int harness_start(struct harness_child *c, const char *name, const char *const argv[],
                  const char *log_path, const char *port_path, int timeout_ms, char *why,
                  size_t whylen)
{
    c->pid = -1;
    c->port = 0;
    snprintf(c->name, sizeof(c->name), "%s", name);
    snprintf(c->log_path, sizeof(c->log_path), "%s", log_path);
    unlink(port_path);
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(why, whylen, "%s: fork: %s", name, strerror(errno));
        return -1;
    }
    if (pid == 0) {
        /* die with the test, whatever happens to it */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        redirect(log_path, O_TRUNC);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    c->pid = pid;
    for (int waited = 0; waited <= timeout_ms; waited += 10) {
        FILE *pf = fopen(port_path, "r");
        if (pf) {
            int port = 0;
            int ok = fscanf(pf, "%d", &port);
            fclose(pf);
            if (ok == 1 && port > 0) {
                c->port = port;
                return 0;
            }
        }
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            c->pid = -1;
            harness_dump_log(c);
            snprintf(why, whylen, "%s exited before listening (status %d)", name, st);
            return -1;
        }
        harness_sleep_ms(10);
    }
    harness_dump_log(c);
    harness_stop(c);
    snprintf(why, whylen, "%s did not write its port file in %d ms", name, timeout_ms);
    return -1;
}

void harness_stop(struct harness_child *c)
{
    if (c->pid <= 0) {
        return;
    }
    kill(c->pid, SIGTERM);
    for (int i = 0; i < 500; i++) {
        if (waitpid(c->pid, NULL, WNOHANG) == c->pid) {
            c->pid = -1;
            return;
        }
        harness_sleep_ms(10);
    }
    kill(c->pid, SIGKILL);
    waitpid(c->pid, NULL, 0);
    c->pid = -1;
}
