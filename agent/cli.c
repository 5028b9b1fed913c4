/* cli.c - `tidings-agent send` and `tidings-agent status` (see cli.h). */
#include "cli.h"

#include "agent.h"
#include "config.h"
#include "error.h"
#include "proto.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define JSON_FILE_MAX (64 * 1024) /* --json input; a notification is at most 4096 bytes */
#define REPLY_MAX (1024 * 1024)   /* one reply line (a status is about 1 KiB) */
#define DEFAULT_TIMEOUT_MS 30000

/* --- arguments ------------------------------------------------------------ */

struct args {
    int argc;
    char **argv;
    int i;
    const char *cmd;
    const char *val;
    bool bad;
};

/* Does argv[i] name option `name` ("--name value" or "--name=value")? If so
 * val is its value; a missing value is reported and sets bad. */
static bool opt(struct args *a, const char *name)
{
    const char *arg = a->argv[a->i];
    size_t n = strlen(name);
    if (strncmp(arg, name, n) != 0 || (arg[n] != '\0' && arg[n] != '=')) {
        return false;
    }
    if (arg[n] == '=') {
        a->val = arg + n + 1;
        return true;
    }
    if (a->i + 1 >= a->argc) {
        fprintf(stderr, "tidings-agent %s: %s needs a value (see tidings-agent %s --help)\n",
                a->cmd, name, a->cmd);
        a->bad = true;
        a->val = "";
        return true;
    }
    a->val = a->argv[++a->i];
    return true;
}

static int bad_arg(const char *cmd, const char *option, const char *why, const char *value)
{
    fprintf(stderr, "tidings-agent %s: %s '%s': %s\n", cmd, option, value, why);
    return CLI_INVALID;
}

/* Common options: where the agent is. */
struct conn_opts {
    const char *config; /* -c FILE */
    const char *socket; /* --socket PATH */
    uint64_t timeout_ms;
};

/* 1 if argv[i] was a common option (consumed), 0 if not, or an exit code
 * (as a negative number) on a bad value. */
static int common_opt(struct args *a, struct conn_opts *co)
{
    if (opt(a, "-c") || opt(a, "--config")) {
        co->config = a->val;
        return 1;
    }
    if (opt(a, "--socket")) {
        co->socket = a->val;
        return 1;
    }
    if (opt(a, "--timeout")) {
        uint64_t ms = 0;
        if (a->bad) {
            return 1;
        }
        if (config_parse_duration(a->val, &ms) < 0 || ms == 0) {
            bad_arg(a->cmd, "--timeout", "expected a duration such as 5s or 500ms", a->val);
            a->bad = true;
            return 1;
        }
        co->timeout_ms = ms;
        return 1;
    }
    return 0;
}

/* The socket path: --socket, else socket.path of the config (or its
 * default <state_dir>/agent.sock). 0 or an exit code. */
static int socket_path(const char *cmd, const struct conn_opts *co, char *buf, size_t len)
{
    if (co->socket) {
        if ((size_t)snprintf(buf, len, "%s", co->socket) >= len) {
            return bad_arg(cmd, "--socket", "too long for a unix socket path", co->socket);
        }
        return 0;
    }
    static struct agent_config cfg; /* large: keep it off the stack */
    char err[CONFIG_ERR_MAX + 256];
    if (config_defaults(agent_config_table, agent_config_table_len, &cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "tidings-agent %s: %s\n", cmd, err);
        return CLI_FAIL;
    }
    if (co->config && config_load(agent_config_table, agent_config_table_len, &cfg, co->config, err,
                                  sizeof(err)) < 0) {
        fprintf(stderr, "tidings-agent %s: %s\n", cmd, err);
        return CLI_INVALID;
    }
    if (agent_socket_path(&cfg, buf, len) < 0) {
        fprintf(stderr, "tidings-agent %s: the socket path is too long; use --socket\n", cmd);
        return CLI_INVALID;
    }
    return 0;
}

/* --- talking to the agent --------------------------------------------------- */

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int wait_fd(int fd, short ev, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - mono_ms();
        if (left <= 0) {
            return -ETIMEDOUT;
        }
        struct pollfd p = {.fd = fd, .events = ev};
        int n = poll(&p, 1, left > 60000 ? 60000 : (int)left);
        if (n > 0) {
            return 0;
        }
        if (n < 0 && errno != EINTR) {
            return -errno;
        }
    }
}

/*
 * Send one request line and read the one reply line. *reply is malloc'd
 * (NUL-terminated, newline removed). 0, or an exit code with the message
 * printed.
 */
static int exchange(const char *cmd, const char *path, const char *req, size_t reqlen,
                    uint64_t timeout_ms, char **reply)
{
    *reply = NULL;
    int64_t deadline = mono_ms() + (int64_t)timeout_ms;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        fprintf(stderr, "tidings-agent %s: socket: %s\n", cmd, strerror(errno));
        return CLI_FAIL;
    }
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path)) {
        close(fd);
        return bad_arg(cmd, "socket path", "too long for a unix socket path", path);
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        close(fd);
        fprintf(stderr, "tidings-agent %s: cannot reach the agent at %s: %s%s\n", cmd, path,
                strerror(e),
                e == ENOENT || e == ECONNREFUSED
                    ? " (is tidings-agent running? the socket is socket.path, by default "
                      "<state_dir>/agent.sock; pass -c CONFIG or --socket PATH)"
                    : "");
        return CLI_UNREACHABLE;
    }
    int rc = 0;
    size_t off = 0;
    while (off < reqlen && rc == 0) {
        ssize_t n = send(fd, req + off, reqlen - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += (size_t)n;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            rc = wait_fd(fd, POLLOUT, deadline);
        } else if (n < 0 && errno != EINTR) {
            rc = -errno;
        }
    }
    size_t cap = 4096, len = 0;
    char *buf = rc == 0 ? malloc(cap) : NULL;
    if (rc == 0 && !buf) {
        rc = -ENOMEM;
    }
    while (rc == 0) {
        if (len > 0 && memchr(buf, '\n', len)) {
            break;
        }
        if (len + 1 >= cap) {
            if (cap >= REPLY_MAX) {
                rc = -EMSGSIZE;
                break;
            }
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                rc = -ENOMEM;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        ssize_t n = recv(fd, buf + len, cap - 1 - len, 0);
        if (n > 0) {
            len += (size_t)n;
        } else if (n == 0) {
            rc = -ECONNRESET;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            rc = wait_fd(fd, POLLIN, deadline);
        } else if (errno != EINTR) {
            rc = -errno;
        }
    }
    close(fd);
    if (rc < 0) {
        free(buf);
        fprintf(stderr, "tidings-agent %s: no reply from the agent at %s: %s%s\n", cmd, path,
                rc == -ETIMEDOUT ? "timed out" : strerror(-rc),
                strcmp(cmd, "send") == 0
                    ? "; it may or may not have been accepted: resending with the same --id is "
                      "safe"
                    : "");
        return rc == -ENOMEM || rc == -EMSGSIZE ? CLI_FAIL : CLI_UNREACHABLE;
    }
    char *nl = memchr(buf, '\n', len);
    *nl = '\0';
    *reply = buf;
    return 0;
}

/* Print the request with its newline and exchange it. */
static int request(const char *cmd, const char *path, cJSON *req, uint64_t timeout_ms,
                   cJSON **reply)
{
    *reply = NULL;
    char *txt = cJSON_PrintUnformatted(req);
    if (!txt) {
        fprintf(stderr, "tidings-agent %s: out of memory\n", cmd);
        return CLI_FAIL;
    }
    size_t n = strlen(txt);
    char *line = malloc(n + 1);
    if (!line) {
        free(txt);
        fprintf(stderr, "tidings-agent %s: out of memory\n", cmd);
        return CLI_FAIL;
    }
    memcpy(line, txt, n);
    line[n] = '\n';
    free(txt);
    char *raw = NULL;
    int rc = exchange(cmd, path, line, n + 1, timeout_ms, &raw);
    free(line);
    if (rc != 0) {
        return rc;
    }
    *reply = cJSON_Parse(raw);
    if (!*reply || !cJSON_IsObject(*reply)) {
        fprintf(stderr, "tidings-agent %s: unreadable reply from the agent: %.200s\n", cmd, raw);
        cJSON_Delete(*reply);
        *reply = NULL;
        free(raw);
        return CLI_FAIL;
    }
    free(raw);
    return 0;
}

static const char *jstr(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* A reply with ok:false: print it and map its code to an exit code. */
static int refused(const char *cmd, const cJSON *reply)
{
    const char *code = jstr(reply, "error");
    const char *field = jstr(reply, "field");
    const char *detail = jstr(reply, "detail");
    code = code ? code : "unknown";
    enum proto_reason r;
    if (proto_reason_from_code(code, &r)) {
        if (field && field[0]) {
            fprintf(stderr, "tidings-agent %s: invalid notification: field '%s': %s%s%s\n", cmd,
                    field, code, detail ? ": " : "", detail ? detail : "");
        } else {
            fprintf(stderr, "tidings-agent %s: invalid notification: %s%s%s\n", cmd, code,
                    detail ? ": " : "", detail ? detail : "");
        }
        return CLI_INVALID;
    }
    if (strcmp(code, "full") == 0) {
        fprintf(stderr, "tidings-agent %s: not accepted: the agent's outbox is full (%s)\n", cmd,
                detail ? detail : "over budget");
        return CLI_REFUSED;
    }
    if (strcmp(code, "storage") == 0 || strcmp(code, "internal") == 0) {
        fprintf(stderr, "tidings-agent %s: not accepted: %s error in the agent: %s\n", cmd, code,
                detail ? detail : "-");
        return CLI_REFUSED;
    }
    if (strcmp(code, "busy") == 0) {
        fprintf(stderr, "tidings-agent %s: the agent is busy: %s; try again\n", cmd,
                detail ? detail : "too many clients");
        return CLI_UNREACHABLE;
    }
    fprintf(stderr, "tidings-agent %s: the agent answered %s: %s\n", cmd, code,
            detail ? detail : "-");
    return CLI_FAIL;
}

/* --- send ------------------------------------------------------------------- */

static void send_usage(FILE *out)
{
    fprintf(out,
            "usage: tidings-agent send --title T --body B [options]\n"
            "Queue one notification with the running agent; prints its id once it is stored.\n"
            "\n"
            "  --title TEXT          title (a title or a body is required)\n"
            "  --body TEXT           body\n"
            "  --to RECIPIENT        user:<id>, group:<id> or local (required unless in --json)\n"
            "  --category NAME       preference category, e.g. security, orders\n"
            "  --priority P          low | normal | high | critical (default normal)\n"
            "  --ttl DURATION        expiry, e.g. 30s, 15m, 2h, 1d (whole seconds, max 28d)\n"
            "  --id ID               idempotency key: the same id twice is sent once\n"
            "  --collapse-key KEY    replaces an earlier notification with the same key\n"
            "  --channel CH          restrict to push, sms, email, desktop, local; repeat or\n"
            "                        separate with commas\n"
            "  --data KEY=VALUE      custom data (string value); repeat for more keys\n"
            "  --json FILE|-         start from this notification object (- reads stdin);\n"
            "                        the options above replace its fields\n"
            "  -c, --config FILE     the agent's config file (to find its socket)\n"
            "  --socket PATH         the agent's socket (default: socket.path, or\n"
            "                        <state_dir>/agent.sock)\n"
            "  --timeout DURATION    give up waiting for the agent (default 30s)\n"
            "\n"
            "Exit: 0 accepted (also a duplicate), 2 invalid input, 3 outbox full or storage\n"
            "error, 4 agent not reachable or busy (resending with the same --id is safe).\n");
}

static bool set_str(cJSON *n, const char *key, const char *val)
{
    cJSON_DeleteItemFromObjectCaseSensitive(n, key);
    return cJSON_AddStringToObject(n, key, val) != NULL;
}

/* A JSON text carrying the escape \u0000 inside a string: cJSON would cut
 * the text short there, so refuse it as the agent would (bad_value). */
static bool has_nul_escape(const char *s, size_t len)
{
    bool in_str = false;
    for (size_t i = 0; i < len; i++) {
        if (!in_str) {
            in_str = s[i] == '"';
        } else if (s[i] == '\\') {
            if (i + 5 < len && s[i + 1] == 'u' && memcmp(s + i + 2, "0000", 4) == 0) {
                return true;
            }
            i++;
        } else if (s[i] == '"') {
            in_str = false;
        }
    }
    return false;
}

/* Read --json FILE (or stdin for "-") as an object. NULL with the message
 * printed. */
static cJSON *read_json(const char *file)
{
    FILE *f = strcmp(file, "-") == 0 ? stdin : fopen(file, "rb");
    if (!f) {
        fprintf(stderr, "tidings-agent send: --json '%s': %s\n", file, strerror(errno));
        return NULL;
    }
    char *buf = malloc(JSON_FILE_MAX + 2);
    size_t len = buf ? fread(buf, 1, JSON_FILE_MAX + 1, f) : 0;
    bool rerr = ferror(f);
    if (f != stdin) {
        fclose(f);
    }
    cJSON *o = NULL;
    if (!buf) {
        fprintf(stderr, "tidings-agent send: out of memory\n");
    } else if (rerr) {
        fprintf(stderr, "tidings-agent send: --json '%s': read error\n", file);
    } else if (len > JSON_FILE_MAX) {
        fprintf(stderr,
                "tidings-agent send: --json '%s': too_large: over %d bytes "
                "(a notification is at most %d)\n",
                file, JSON_FILE_MAX, PROTO_MAX_WIRE);
    } else if (has_nul_escape(buf, len)) {
        fprintf(stderr, "tidings-agent send: invalid notification: bad_value: \\u0000 is not "
                        "allowed in text\n");
    } else {
        buf[len] = '\0';
        o = cJSON_ParseWithLengthOpts(buf, len + 1, NULL, true);
        if (!o) {
            fprintf(stderr,
                    "tidings-agent send: invalid notification: malformed_json: --json "
                    "'%s' is not valid JSON\n",
                    file);
        } else if (!cJSON_IsObject(o)) {
            fprintf(stderr,
                    "tidings-agent send: invalid notification: not_object: --json '%s' "
                    "must hold one JSON object\n",
                    file);
            cJSON_Delete(o);
            o = NULL;
        }
    }
    free(buf);
    return o;
}

static const char *const channel_names[] = {"push", "sms", "email", "desktop", "local", NULL};

/* Add the channels of one --channel value ("push" or "push,sms"). */
static int add_channels(cJSON *arr, const char *val)
{
    const char *p = val;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        int known = -1;
        for (int k = 0; channel_names[k]; k++) {
            if (strlen(channel_names[k]) == n && memcmp(channel_names[k], p, n) == 0) {
                known = k;
            }
        }
        if (known < 0) {
            return bad_arg("send", "--channel", "expected push, sms, email, desktop or local", val);
        }
        const cJSON *it;
        cJSON_ArrayForEach(it, arr)
        {
            if (strcmp(it->valuestring, channel_names[known]) == 0) {
                return bad_arg("send", "--channel", "channel given twice", val);
            }
        }
        cJSON *s = cJSON_CreateString(channel_names[known]);
        if (!s || !cJSON_AddItemToArray(arr, s)) {
            cJSON_Delete(s);
            return CLI_FAIL;
        }
        if (!comma) {
            return 0;
        }
        p = comma + 1;
    }
}

static int cmd_send(int argc, char **argv)
{
    struct args a = {.argc = argc, .argv = argv, .cmd = "send"};
    struct conn_opts co = {.timeout_ms = DEFAULT_TIMEOUT_MS};
    const char *json_file = NULL;
    /* Field options are applied after --json is read, so they win over it
     * wherever they appear on the line. */
    struct field {
        const char *key, *val;
    } fields[16];
    size_t nfields = 0;
    const char *datas[64];
    size_t ndata = 0;
    const char *chans[16];
    size_t nchan = 0;
    int64_t ttl_s = -1;
    static const struct {
        const char *opt, *key;
    } str_opts[] = {
        {"--title", "title"},
        {"--body", "body"},
        {"--to", "to"},
        {"--category", "category"},
        {"--priority", "priority"},
        {"--id", "id"},
        {"--collapse-key", "collapse_key"},
    };

    for (a.i = 1; a.i < argc; a.i++) {
        const char *arg = argv[a.i];
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            send_usage(stdout);
            return CLI_OK;
        }
        int c = common_opt(&a, &co);
        if (a.bad) {
            return CLI_INVALID;
        }
        if (c) {
            continue;
        }
        bool done = false;
        for (size_t k = 0; k < sizeof(str_opts) / sizeof(str_opts[0]) && !done; k++) {
            if (opt(&a, str_opts[k].opt)) {
                if (a.bad) {
                    return CLI_INVALID;
                }
                if (nfields == sizeof(fields) / sizeof(fields[0])) {
                    return bad_arg("send", str_opts[k].opt, "too many options", a.val);
                }
                fields[nfields++] = (struct field){str_opts[k].key, a.val};
                done = true;
            }
        }
        if (done) {
            continue;
        }
        if (opt(&a, "--ttl")) {
            uint64_t ms;
            if (a.bad) {
                return CLI_INVALID;
            }
            if (config_parse_duration(a.val, &ms) < 0) {
                return bad_arg("send", "--ttl", "expected a duration such as 30s, 15m, 2h, 1d",
                               a.val);
            }
            if (ms % 1000 != 0) {
                return bad_arg("send", "--ttl", "whole seconds only", a.val);
            }
            if (ms / 1000 > PROTO_TTL_MAX) {
                return bad_arg("send", "--ttl", "at most 28d (2419200s)", a.val);
            }
            ttl_s = (int64_t)(ms / 1000);
        } else if (opt(&a, "--channel")) {
            if (a.bad) {
                return CLI_INVALID;
            }
            if (nchan == sizeof(chans) / sizeof(chans[0])) {
                return bad_arg("send", "--channel", "given too often", a.val);
            }
            chans[nchan++] = a.val;
        } else if (opt(&a, "--data")) {
            if (a.bad) {
                return CLI_INVALID;
            }
            const char *eq = strchr(a.val, '=');
            if (!eq || eq == a.val) {
                return bad_arg("send", "--data", "expected KEY=VALUE", a.val);
            }
            if ((size_t)(eq - a.val) > PROTO_DATA_KEY_MAX) {
                return bad_arg("send", "--data", "key over 64 bytes", a.val);
            }
            if (ndata == sizeof(datas) / sizeof(datas[0])) {
                return bad_arg("send", "--data", "given too often", a.val);
            }
            datas[ndata++] = a.val;
        } else if (opt(&a, "--json")) {
            if (a.bad) {
                return CLI_INVALID;
            }
            json_file = a.val;
        } else {
            fprintf(stderr,
                    "tidings-agent send: unknown option '%s' (see tidings-agent send "
                    "--help)\n",
                    arg);
            return CLI_INVALID;
        }
    }
    for (size_t k = 0; k < nfields; k++) {
        if (strcmp(fields[k].key, "priority") == 0) {
            const char *p = fields[k].val;
            if (strcmp(p, "low") && strcmp(p, "normal") && strcmp(p, "high") &&
                strcmp(p, "critical")) {
                return bad_arg("send", "--priority", "expected low, normal, high or critical", p);
            }
        }
    }
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    int rc = socket_path("send", &co, path, sizeof(path));
    if (rc != 0) {
        return rc;
    }

    cJSON *n = json_file ? read_json(json_file) : cJSON_CreateObject();
    if (!n) {
        return json_file ? CLI_INVALID : CLI_FAIL;
    }
    bool ok = true;
    for (size_t k = 0; k < nfields && ok; k++) {
        ok = set_str(n, fields[k].key, fields[k].val);
    }
    if (ok && ttl_s >= 0) {
        cJSON_DeleteItemFromObjectCaseSensitive(n, "ttl");
        ok = cJSON_AddNumberToObject(n, "ttl", (double)ttl_s) != NULL;
    }
    if (ok && nchan > 0) {
        cJSON_DeleteItemFromObjectCaseSensitive(n, "channels");
        cJSON *arr = cJSON_AddArrayToObject(n, "channels");
        ok = arr != NULL;
        for (size_t k = 0; k < nchan && ok; k++) {
            rc = add_channels(arr, chans[k]);
            if (rc != 0) {
                cJSON_Delete(n);
                return rc;
            }
        }
    }
    if (ok && ndata > 0) {
        cJSON *data = cJSON_GetObjectItemCaseSensitive(n, "data");
        if (!cJSON_IsObject(data)) {
            cJSON_DeleteItemFromObjectCaseSensitive(n, "data");
            data = cJSON_AddObjectToObject(n, "data");
        }
        for (size_t k = 0; k < ndata && data && ok; k++) {
            const char *eq = strchr(datas[k], '=');
            char key[PROTO_DATA_KEY_MAX + 1];
            memcpy(key, datas[k], (size_t)(eq - datas[k]));
            key[eq - datas[k]] = '\0';
            ok = set_str(data, key, eq + 1); /* a later --data KEY wins */
        }
        ok = ok && data;
    }
    cJSON *req = cJSON_CreateObject();
    ok = ok && req && cJSON_AddStringToObject(req, "op", "send");
    if (!ok || !cJSON_AddItemToObject(req, "notification", n)) {
        cJSON_Delete(n);
        cJSON_Delete(req);
        fprintf(stderr, "tidings-agent send: out of memory\n");
        return CLI_FAIL;
    }
    cJSON *reply = NULL;
    rc = request("send", path, req, co.timeout_ms, &reply);
    cJSON_Delete(req);
    if (rc != 0) {
        return rc;
    }
    if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(reply, "ok"))) {
        rc = refused("send", reply);
        cJSON_Delete(reply);
        return rc;
    }
    const char *id = jstr(reply, "id");
    if (!id) {
        fprintf(stderr, "tidings-agent send: the agent's reply has no id\n");
        cJSON_Delete(reply);
        return CLI_FAIL;
    }
    printf("%s\n", id);
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(reply, "duplicate"))) {
        fprintf(stderr, "tidings-agent send: %s was already accepted (duplicate: sent once)\n", id);
    }
    cJSON_Delete(reply);
    return fflush(stdout) == 0 ? CLI_OK : CLI_FAIL;
}

/* --- status ----------------------------------------------------------------- */

static void status_usage(FILE *out)
{
    fprintf(out, "usage: tidings-agent status [--json] [--id ID] [-c FILE | --socket PATH]\n"
                 "Show the running agent's uplink, queues, local delivery, preferences and\n"
                 "counters; with --id, what became of one notification.\n"
                 "\n"
                 "  --json                the status object as JSON (for scripts)\n"
                 "  --id ID               what became of one notification: for this box\n"
                 "                        (to:local, or sent down by the hub) its state on\n"
                 "                        each delivery backend and the preference rule; for\n"
                 "                        the hub, queued/in flight/dropped here, then the\n"
                 "                        hub's receipt: delivered, failed (reason),\n"
                 "                        suppressed (rule), expired or dropped, per channel\n"
                 "  -c, --config FILE     the agent's config file (to find its socket)\n"
                 "  --socket PATH         the agent's socket (default: socket.path, or\n"
                 "                        <state_dir>/agent.sock)\n"
                 "  --timeout DURATION    give up waiting for the agent (default 30s)\n"
                 "\n"
                 "Exit: 0 shown, 2 bad option, 3 --id not found (never sent through this\n"
                 "agent, no receipt yet, or pruned), 4 agent not reachable.\n");
}

static double jnum(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

static const cJSON *jobj(const cJSON *o, const char *key)
{
    return cJSON_GetObjectItemCaseSensitive(o, key);
}

/* "950ms", "4.2s", "3m12s", "2h05m", "3d04h" */
static void fmt_age(double ms, char *buf, size_t len)
{
    uint64_t v = ms > 0 ? (uint64_t)ms : 0;
    if (v < 1000) {
        snprintf(buf, len, "%llums", (unsigned long long)v);
    } else if (v < 60000) {
        snprintf(buf, len, "%.1fs", (double)v / 1000.0);
    } else if (v < 3600000) {
        snprintf(buf, len, "%llum%02llus", (unsigned long long)(v / 60000),
                 (unsigned long long)(v / 1000 % 60));
    } else if (v < 86400000) {
        snprintf(buf, len, "%lluh%02llum", (unsigned long long)(v / 3600000),
                 (unsigned long long)(v / 60000 % 60));
    } else {
        snprintf(buf, len, "%llud%02lluh", (unsigned long long)(v / 86400000),
                 (unsigned long long)(v / 3600000 % 24));
    }
}

/* A time member: "2026-..Z (age ago)" or the fallback text. */
static void fmt_when(const cJSON *o, const char *key, double now_ms, const char *none, char *buf,
                     size_t len)
{
    char key_ms[48];
    snprintf(key_ms, sizeof(key_ms), "%s_ms", key);
    const char *t = jstr(o, key);
    double ms = jnum(o, key_ms);
    if (!t || ms <= 0) {
        snprintf(buf, len, "%s", none);
        return;
    }
    char age[32];
    fmt_age(now_ms - ms, age, sizeof(age));
    snprintf(buf, len, "%s (%s ago)", t, age);
}

static void print_status(const cJSON *st)
{
    const cJSON *up = jobj(st, "uplink");
    const cJSON *q = jobj(st, "queue");
    const cJSON *ing = jobj(st, "ingest");
    const cJSON *so = jobj(st, "socket");
    double now = jnum(st, "now_ms");
    char a[96], b[96];

    fmt_age(now - jnum(st, "started_ms"), a, sizeof(a));
    printf("agent       %s (tidings-agent %s), up %s\n",
           jstr(st, "agent") ? jstr(st, "agent") : "?",
           jstr(st, "version") ? jstr(st, "version") : "?", a);
    bool conn = cJSON_IsTrue(jobj(up, "connected"));
    fmt_when(up, "since", now, "never connected since start", a, sizeof(a));
    printf("uplink      %s%s%s\n", conn ? "connected since " : "NOT connected",
           conn ? "" : (jnum(up, "since_ms") > 0 ? ", lost " : ": "), a);
    fmt_when(up, "last_sync", now, "none since start", b, sizeof(b));
    printf("last sync   %s\n", b);
    const cJSON *oldest = jobj(q, "oldest_age_ms");
    if (cJSON_IsNumber(oldest)) {
        fmt_age(oldest->valuedouble, a, sizeof(a));
    } else {
        snprintf(a, sizeof(a), "-");
    }
    printf("queue       %.0f total: %.0f waiting, %.0f in flight; %.0f bytes; oldest %s\n",
           jnum(q, "total"), jnum(q, "queued"), jnum(q, "in_flight"), jnum(q, "bytes"), a);
    const cJSON *byp = jobj(q, "by_priority");
    if (cJSON_IsObject(byp)) {
        printf("            critical %.0f, high %.0f, normal %.0f, low %.0f\n",
               jnum(byp, "critical"), jnum(byp, "high"), jnum(byp, "normal"), jnum(byp, "low"));
    } else {
        printf("            by priority: unavailable (%s)\n",
               jstr(q, "error") ? jstr(q, "error") : "?");
    }
    const cJSON *lo = jobj(st, "local");
    if (cJSON_IsObject(lo)) {
        char be[96] = "";
        size_t off = 0;
        const cJSON *bk;
        cJSON_ArrayForEach(bk, jobj(lo, "backends"))
        {
            if (cJSON_IsString(bk) && off < sizeof(be)) {
                int w =
                    snprintf(be + off, sizeof(be) - off, "%s%s", off ? "," : "", bk->valuestring);
                off += w > 0 ? (size_t)w : 0;
            }
        }
        if (jstr(lo, "error")) {
            printf("local       %.0f rows (max %.0f); by state: unavailable (%s)\n",
                   jnum(lo, "rows"), jnum(lo, "max_rows"), jstr(lo, "error"));
        } else {
            printf("local       %.0f pending (%.0f held for quiet hours), %.0f delivered, "
                   "%.0f suppressed, %.0f dropped, %.0f failed, %.0f expired\n",
                   jnum(lo, "pending"), jnum(lo, "held"), jnum(lo, "delivered"),
                   jnum(lo, "suppressed"), jnum(lo, "dropped"), jnum(lo, "failed"),
                   jnum(lo, "expired"));
        }
        /* A time to come: "at .. (in ..)". */
        if (jstr(lo, "next_due") && jnum(lo, "next_due_ms") > now) {
            char in[32];
            fmt_age(jnum(lo, "next_due_ms") - now, in, sizeof(in));
            snprintf(a, sizeof(a), "%s (in %s)", jstr(lo, "next_due"), in);
        } else {
            fmt_when(lo, "next_due", now, "-", a, sizeof(a));
        }
        printf("            %.0f rows (max %.0f), %.0f in flight, rejected full %.0f; "
               "backends %s; next due %s\n",
               jnum(lo, "rows"), jnum(lo, "max_rows"), jnum(lo, "in_flight"),
               jnum(lo, "rejected_full"), be[0] ? be : "(none)", a);
    }
    const cJSON *po = jobj(st, "policy");
    if (cJSON_IsObject(po)) {
        const char *lu = jstr(po, "local_user");
        if (cJSON_IsNumber(jobj(po, "version"))) {
            fmt_when(po, "applied", now, "-", a, sizeof(a));
            printf("policy      snapshot version %.0f, %.0f users, applied %s; local user %s\n",
                   jnum(po, "version"), jnum(po, "users"), a, lu && lu[0] ? lu : "(none)");
        } else {
            printf("policy      no snapshot yet (everything allowed); local user %s\n",
                   lu && lu[0] ? lu : "(none)");
        }
    }
    const cJSON *m = jobj(ing, "mqtt");
    const cJSON *s = jobj(ing, "socket");
    const cJSON *dn = jobj(ing, "down");
    static const char *const rows[] = {"received", "accepted", "duplicates",
                                       "invalid",  "full",     "errors"};
    printf("\n%-12s %12s %12s %12s\n", "ingest", "mqtt", "socket", "down (hub)");
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        printf("%-12s %12.0f %12.0f %12.0f\n", rows[i], jnum(m, rows[i]), jnum(s, rows[i]),
               jnum(dn, rows[i]));
    }
    printf("\nhub         acked %.0f, rejected %.0f\n", jnum(up, "acked"),
           jnum(up, "hub_rejected"));
    printf("batches     sent %.0f (%.0f notifications), ack timeouts %.0f\n",
           jnum(up, "batches_sent"), jnum(up, "rows_sent"), jnum(up, "ack_timeouts"));
    /* The outbox's one drop reason: the full policy drop_oldest_lowest made
     * room for a newer or more important notification. Each is on record
     * (status --id names it), the newest OUTBOX_DROPPED_KEEP kept. */
    printf("outbox      rejected while full %.0f; dropped to make room (full policy "
           "drop_oldest_lowest) %.0f since start, %.0f on record (status --id <id>)\n",
           jnum(q, "rejected_full"), jnum(q, "dropped"), jnum(q, "dropped_records"));
    printf("socket      %s: connected %.0f (max %.0f), connections %.0f, refused busy %.0f, "
           "dropped for not reading %.0f\n",
           jstr(so, "path") ? jstr(so, "path") : "?", jnum(so, "clients"), jnum(so, "max_clients"),
           jnum(so, "connections"), jnum(so, "refused_busy"), jnum(so, "slow_disconnects"));
}

/* The rows of one local notification, as a table. */
static void print_local(const char *id, const cJSON *rows, double now_ms)
{
    printf("id %s\n", id);
    printf("%-9s %-11s %-28s %-8s %s\n", "backend", "state", "rule", "attempts", "detail");
    const cJSON *r;
    cJSON_ArrayForEach(r, rows)
    {
        const char *state = jstr(r, "state");
        const char *rule = jstr(r, "rule");
        const char *reason = jstr(r, "reason");
        const char *receipt = jstr(r, "receipt");
        char detail[256] = "";
        if (state && strcmp(state, "pending") == 0 && jnum(r, "due_ms") > now_ms) {
            char age[32];
            fmt_age(jnum(r, "due_ms") - now_ms, age, sizeof(age));
            snprintf(detail, sizeof(detail), "due %s (in %s)%s%s", jstr(r, "due"), age,
                     reason ? "; last: " : "", reason ? reason : "");
        } else {
            snprintf(detail, sizeof(detail), "%s%s%s%s", jstr(r, "updated") ? "at " : "",
                     jstr(r, "updated") ? jstr(r, "updated") : "", reason ? "; " : "",
                     reason ? reason : "");
        }
        if (receipt) {
            size_t l = strlen(detail);
            snprintf(detail + l, sizeof(detail) - l, "; receipt %s", receipt);
        }
        printf("%-9s %-11s %-28s %-8.0f %s\n", jstr(r, "backend") ? jstr(r, "backend") : "?",
               state ? state : "?", rule ? rule : "-", jnum(r, "attempts"), detail);
    }
}

/* Where it is in the outbox, and the hub's receipt, as lines. */
static void print_hub(const cJSON *ob, const cJSON *hub)
{
    if (cJSON_IsObject(ob)) {
        const char *st = jstr(ob, "state");
        if (st && strcmp(st, "dropped") == 0) {
            printf("outbox      dropped at %s: %s\n", jstr(ob, "dropped") ? jstr(ob, "dropped") : "?",
                   jstr(ob, "reason") ? jstr(ob, "reason") : "");
        } else {
            printf("outbox      %s (accepted %s): %s\n", st ? st : "?",
                   jstr(ob, "accepted") ? jstr(ob, "accepted") : "?",
                   st && strcmp(st, "in_flight") == 0 ? "sent to the hub, not acknowledged yet"
                                                      : "waiting to be sent to the hub");
        }
    }
    if (!cJSON_IsObject(hub)) {
        return;
    }
    const char *reason = jstr(hub, "reason");
    printf("hub         %s%s%s at %s (receipt received %s)\n", jstr(hub, "state") ? jstr(hub, "state") : "?",
           reason && *reason ? ": " : "", reason && *reason ? reason : "",
           jstr(hub, "at") ? jstr(hub, "at") : "?", jstr(hub, "received") ? jstr(hub, "received") : "?");
    const cJSON *chs = jobj(hub, "channels");
    if (cJSON_GetArraySize(chs) == 0) {
        return;
    }
    printf("%-9s %-11s %-7s %-8s %s\n", "channel", "result", "status", "attempts", "reason");
    const cJSON *c;
    cJSON_ArrayForEach(c, chs)
    {
        printf("%-9s %-11s %-7.0f %-8.0f %s\n", jstr(c, "channel") ? jstr(c, "channel") : "?",
               jstr(c, "result") ? jstr(c, "result") : "?", jnum(c, "status"),
               jnum(c, "attempts"), jstr(c, "reason") ? jstr(c, "reason") : "");
    }
}

/* status --id ID: {"op":"lookup","id":ID}. */
static int status_local(const char *path, const char *id, bool json, uint64_t timeout_ms)
{
    cJSON *req = cJSON_CreateObject();
    if (!req || !cJSON_AddStringToObject(req, "op", "lookup") ||
        !cJSON_AddStringToObject(req, "id", id)) {
        cJSON_Delete(req);
        fprintf(stderr, "tidings-agent status: out of memory\n");
        return CLI_FAIL;
    }
    cJSON *reply = NULL;
    int rc = request("status", path, req, timeout_ms, &reply);
    cJSON_Delete(req);
    if (rc != 0) {
        return rc;
    }
    const cJSON *rows = jobj(reply, "local");
    if (!cJSON_IsTrue(jobj(reply, "ok")) || !cJSON_IsArray(rows)) {
        const char *e = jstr(reply, "error");
        if (e && strcmp(e, "not_found") == 0) {
            fprintf(stderr, "tidings-agent status: id %s: %s\n", id,
                    jstr(reply, "detail") ? jstr(reply, "detail") : "not found");
            cJSON_Delete(reply);
            return CLI_REFUSED;
        }
        rc = refused("status", reply);
        cJSON_Delete(reply);
        return rc;
    }
    if (json) {
        cJSON_DeleteItemFromObjectCaseSensitive(reply, "ok");
        char *txt = cJSON_Print(reply);
        if (!txt) {
            cJSON_Delete(reply);
            fprintf(stderr, "tidings-agent status: out of memory\n");
            return CLI_FAIL;
        }
        printf("%s\n", txt);
        free(txt);
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        if (cJSON_GetArraySize(rows) > 0) {
            print_local(id, rows, (double)ts.tv_sec * 1000.0 + (double)(ts.tv_nsec / 1000000));
        } else {
            printf("id %s\n", id);
        }
        print_hub(jobj(reply, "outbox"), jobj(reply, "hub"));
    }
    cJSON_Delete(reply);
    return fflush(stdout) == 0 ? CLI_OK : CLI_FAIL;
}

static int cmd_status(int argc, char **argv)
{
    struct args a = {.argc = argc, .argv = argv, .cmd = "status"};
    struct conn_opts co = {.timeout_ms = DEFAULT_TIMEOUT_MS};
    bool json = false;
    const char *id = NULL;
    for (a.i = 1; a.i < argc; a.i++) {
        const char *arg = argv[a.i];
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            status_usage(stdout);
            return CLI_OK;
        }
        int c = common_opt(&a, &co);
        if (a.bad) {
            return CLI_INVALID;
        }
        if (c) {
            continue;
        }
        if (strcmp(arg, "--json") == 0) {
            json = true;
        } else if (opt(&a, "--id")) {
            if (a.bad) {
                return CLI_INVALID;
            }
            if (!proto_id_valid(a.val)) {
                return bad_arg("status", "--id", "1..64 of [A-Za-z0-9._:-]", a.val);
            }
            id = a.val;
        } else {
            fprintf(stderr,
                    "tidings-agent status: unknown option '%s' (see tidings-agent "
                    "status --help)\n",
                    arg);
            return CLI_INVALID;
        }
    }
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    int rc = socket_path("status", &co, path, sizeof(path));
    if (rc != 0) {
        return rc;
    }
    if (id) {
        return status_local(path, id, json, co.timeout_ms);
    }
    cJSON *req = cJSON_CreateObject();
    if (!req || !cJSON_AddStringToObject(req, "op", "status")) {
        cJSON_Delete(req);
        fprintf(stderr, "tidings-agent status: out of memory\n");
        return CLI_FAIL;
    }
    cJSON *reply = NULL;
    rc = request("status", path, req, co.timeout_ms, &reply);
    cJSON_Delete(req);
    if (rc != 0) {
        return rc;
    }
    const cJSON *st = jobj(reply, "status");
    if (!cJSON_IsTrue(jobj(reply, "ok")) || !cJSON_IsObject(st)) {
        rc = refused("status", reply);
        cJSON_Delete(reply);
        return rc;
    }
    if (json) {
        char *txt = cJSON_Print(st);
        if (!txt) {
            cJSON_Delete(reply);
            fprintf(stderr, "tidings-agent status: out of memory\n");
            return CLI_FAIL;
        }
        printf("%s\n", txt);
        free(txt);
    } else {
        print_status(st);
    }
    cJSON_Delete(reply);
    return fflush(stdout) == 0 ? CLI_OK : CLI_FAIL;
}

/* --- dispatch --------------------------------------------------------------- */

bool cli_is_command(const char *name)
{
    return strcmp(name, "send") == 0 || strcmp(name, "status") == 0;
}

int cli_run(int argc, char **argv)
{
    if (strcmp(argv[0], "send") == 0) {
        return cmd_send(argc, argv);
    }
    if (strcmp(argv[0], "status") == 0) {
        return cmd_status(argc, argv);
    }
    fprintf(stderr, "tidings-agent: unknown command '%s'\n", argv[0]);
    return CLI_INVALID;
}
