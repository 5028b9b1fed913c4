/*
 * main.c - tidingsctl: the hub operator's tool (docs/tidingsctl.md).
 *
 *   tidingsctl [connection options] <command> [arguments] [--json]
 *
 * Every command is one entry of the table below: its words, the admin
 * request topic, its arguments (each mapped to a field of the JSON
 * request), and how its answer is printed. Requests go to the hub over
 * MQTT 5 request/response (client.c); tidingsctl never opens the hub's
 * database. Exit codes: enum ctl_exit (client.h).
 */
#include "client.h"
#include "config.h"
#include "error.h"
#include "print.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define ARGS_MAX 20
#define FILE_MAX (64 * 1024)

/* --- connection settings: config file, then flags ----------------------- */

struct settings {
    char host[256];
    int64_t port;
    char username[128];
    char password[256];
    char cafile[256];
    char certfile[256];
    char keyfile[256];
    bool insecure;
    uint64_t timeout_ms;
};

#define OFF(f) offsetof(struct settings, f), sizeof(((struct settings *)0)->f)
static const struct config_entry settings_table[] = {
    {"host", CONFIG_STRING, "127.0.0.1", OFF(host), "Broker host (-h)", NULL, 0, 0},
    {"port", CONFIG_INT, "1883", OFF(port), "Broker port (-p)", NULL, 1, 65535},
    {"username", CONFIG_STRING, "", OFF(username), "Broker user with admin rights (-u)", NULL, 0,
     0},
    {"password", CONFIG_STRING, "", OFF(password), "Its password (-P); keep this file 0600", NULL,
     0, 0},
    {"cafile", CONFIG_STRING, "", OFF(cafile), "CA certificate: use TLS (--cafile)", NULL, 0, 0},
    {"certfile", CONFIG_STRING, "", OFF(certfile), "Client certificate (--cert)", NULL, 0, 0},
    {"keyfile", CONFIG_STRING, "", OFF(keyfile), "Client key (--key)", NULL, 0, 0},
    {"insecure", CONFIG_BOOL, "false", OFF(insecure),
     "Do not check the broker's host name (--insecure)", NULL, 0, 0},
    {"timeout", CONFIG_DURATION, "5s", OFF(timeout_ms),
     "How long to wait for the broker and a hub (--timeout)", NULL, 100, 3600000},
};
#define N_SETTINGS (sizeof(settings_table) / sizeof(settings_table[0]))

/* --- commands ------------------------------------------------------------ */

enum kind {
    K_STR,  /* string */
    K_INT,  /* integer */
    K_SECS, /* duration ("90s", "2h", "1d"; bare number = seconds) -> integer seconds */
    K_FLAG, /* true when given */
    K_LIST, /* "a,b,c" -> ["a","b","c"]; repeatable */
    K_KV,   /* key=value into an object; repeatable */
    K_JSON, /* a JSON value */
    K_FILE, /* a file ("-" = stdin) holding a JSON value */
};

struct arg {
    const char *flag; /* "--tz"; NULL: positional, in order */
    const char *key;  /* request field; "a.b" nests */
    enum kind kind;
    bool required;
    const char *meta;
    const char *help;
};

struct command;
typedef void (*print_fn)(const struct command *cmd, const cJSON *reply);
/* A command that does more than one request and print (tail, agent add). */
typedef int (*run_fn)(const struct command *cmd, ctl_session_t *s, cJSON *req, bool json);

struct command {
    const char *name;  /* "user add" */
    const char *topic; /* "user/add" */
    const char *summary;
    struct arg args[ARGS_MAX];
    print_fn print;
    run_fn run;
};

static void print_ok(const struct command *cmd, const cJSON *reply);
static void print_user(const struct command *cmd, const cJSON *reply);
static void print_users(const struct command *cmd, const cJSON *reply);
static void print_devices(const struct command *cmd, const cJSON *reply);
static void print_device(const struct command *cmd, const cJSON *reply);
static void print_pretty(const struct command *cmd, const cJSON *reply);
static void print_bindings(const struct command *cmd, const cJSON *reply);
static void print_group(const struct command *cmd, const cJSON *reply);
static void print_groups(const struct command *cmd, const cJSON *reply);
static void print_send(const struct command *cmd, const cJSON *reply);
static void print_status(const struct command *cmd, const cJSON *reply);
static void print_log(const struct command *cmd, const cJSON *reply);
static void print_stats(const struct command *cmd, const cJSON *reply);
static void print_requeued(const struct command *cmd, const cJSON *reply);
static void print_ping(const struct command *cmd, const cJSON *reply);
static int run_tail(const struct command *cmd, ctl_session_t *s, cJSON *req, bool json);
static int run_agent_add(const struct command *cmd, ctl_session_t *s, cJSON *req, bool json);

#define USER_POS                                                                                   \
    {                                                                                              \
        NULL, "user", K_STR, true, "USER", "user id"                                               \
    }
#define USER_FIELDS                                                                                \
    {"--tz", "tz", K_STR, false, "ZONE", "IANA time zone, e.g. Europe/Berlin"},                    \
        {"--locale", "locale", K_STR, false, "TAG", "BCP 47 locale, e.g. de-DE"},                  \
        {"--phone", "phone", K_STR, false, "E164", "phone number for SMS, e.g. +4915112345678"},   \
    {                                                                                              \
        "--email", "email", K_STR, false, "ADDRESS", "email address"                               \
    }
#define LOG_FILTERS                                                                                \
    {"--user", "user", K_STR, false, "USER", "only notifications to this user"},                   \
        {"--category", "category", K_STR, false, "CATEGORY", "only this category"},                \
        {"--channel", "channel", K_STR,                                                            \
         false,       "CHANNEL", "only those attempted on apns, fcm, sms or email"},               \
        {"--state",                                                                                \
         "state",                                                                                  \
         K_STR,                                                                                    \
         false,                                                                                    \
         "STATE",                                                                                  \
         "queued, sending, scheduled, delivered, failed, suppressed, expired or dropped"},         \
        {"--since", "since", K_STR,                                                                \
         false,     "TIME",  "received at or after (RFC 3339, or 15m/2h/7d ago)"},                 \
    {                                                                                              \
        "--until", "until", K_STR, false, "TIME", "received at or before (same forms)"             \
    }

/* Hand-written registration (STYLE rule 4): one entry per command. */
static const struct command commands[] = {
    {"user add", "user/add", "create a user", {USER_POS, USER_FIELDS}, print_user, NULL},
    {"user set",
     "user/set",
     "change a user's time zone, locale, phone or email (\"\" removes)",
     {USER_POS, USER_FIELDS},
     print_user,
     NULL},
    {"user show", "user/show", "show a user", {USER_POS}, print_user, NULL},
    {"user list",
     "user/list",
     "list users",
     {{"--limit", "limit", K_INT, false, "N", "at most N (default 100)"}},
     print_users,
     NULL},
    {"user remove",
     "user/remove",
     "remove a user and erase their personal data (GDPR)",
     {USER_POS},
     print_ok,
     NULL},
    {"user export",
     "user/export",
     "everything held about a user, as JSON (GDPR): user, devices, preferences, groups, "
     "bindings, recent notifications",
     {USER_POS},
     print_pretty,
     NULL},
    {"device add",
     "device/add",
     "register a device for a user",
     {USER_POS,
      {"--platform", "platform", K_STR, true, "PLATFORM", "ios, android or desktop"},
      {"--token", "token", K_STR, true, "TOKEN", "APNs device token / FCM registration token"},
      {"--app", "app", K_STR, false, "APP", "APNs topic (bundle id) / FCM project"},
      {"--env", "environment", K_STR, false, "ENV", "production (default) or sandbox"}},
     print_device,
     NULL},
    {"device list",
     "device/list",
     "a user's devices and contact points, with flagged/disabled ones and why",
     {USER_POS},
     print_devices,
     NULL},
    {"device remove",
     "device/remove",
     "remove a device (its token is erased)",
     {{NULL, "device", K_INT, true, "DEVICE", "device id (from device list)"}},
     print_ok,
     NULL},
    {"device enable",
     "device/enable",
     "make a flagged or disabled device active again",
     {{NULL, "device", K_INT, true, "DEVICE", "device id (from device list)"}},
     print_ok,
     NULL},
    {"pref show",
     "pref/show",
     "a user's preferences (opt-outs, quiet hours, fallback, caps)",
     {USER_POS},
     print_pretty,
     NULL},
    {"pref set",
     "pref/set",
     "replace a user's preferences with a JSON document (docs/hub-policy.md); {} clears them",
     {USER_POS,
      {NULL, "prefs", K_JSON, false, "JSON", "the preference document"},
      {"--file", "prefs", K_FILE, false, "FILE", "read the document from FILE (- = stdin)"}},
     print_ok,
     NULL},
    {"agent add",
     "agent/add",
     "register an agent and what it may send; prints its broker credentials and ACL lines",
     {{NULL, "agent", K_STR, true, "AGENT", "agent id (as in the agent's agent.id)"},
      {"--user", "users", K_LIST, false, "USER", "may send to these users (repeatable)"},
      {"--group", "groups", K_LIST, false, "GROUP", "may send to these groups' members"},
      {"--category", "categories", K_LIST, false, "CATEGORY",
       "only these categories (default: any)"}},
     NULL,
     run_agent_add},
    {"agent list",
     "agent/list",
     "agents' bindings",
     {{NULL, "agent", K_STR, false, "AGENT", "only this agent"}},
     print_bindings,
     NULL},
    {"agent allow",
     "agent/allow",
     "let an agent send to a user or group",
     {{NULL, "agent", K_STR, true, "AGENT", "agent id, or * for any"},
      {NULL, "subject", K_STR, true, "SUBJECT", "user:<id>, group:<id> or *"},
      {"--category", "category", K_STR, false, "CATEGORY", "only this category (default: any)"}},
     print_ok,
     NULL},
    {"agent revoke",
     "agent/revoke",
     "take a binding away",
     {{NULL, "agent", K_STR, true, "AGENT", "agent id, or *"},
      {NULL, "subject", K_STR, true, "SUBJECT", "user:<id>, group:<id> or *"},
      {"--category", "category", K_STR, false, "CATEGORY", "that category's binding (default: *)"}},
     print_ok,
     NULL},
    {"group add",
     "group/add",
     "create a group (\"to\": \"group:<id>\" reaches every member)",
     {{NULL, "group", K_STR, true, "GROUP", "group id"},
      {"--member", "members", K_LIST, false, "USER", "a member (repeatable, or u1,u2)"}},
     print_group,
     NULL},
    {"group remove",
     "group/remove",
     "remove a group, its memberships and the agents' bindings naming it",
     {{NULL, "group", K_STR, true, "GROUP", "group id"}},
     print_ok,
     NULL},
    {"group list",
     "group/list",
     "groups with their member counts, or one group's members",
     {{NULL, "group", K_STR, false, "GROUP", "only this group: list its members"},
      {"--limit", "limit", K_INT, false, "N", "at most N groups (default 100)"}},
     print_groups,
     NULL},
    {"group member add",
     "group/member/add",
     "add a user to a group",
     {{NULL, "group", K_STR, true, "GROUP", "group id"},
      {NULL, "user", K_STR, true, "USER", "user id"}},
     print_group,
     NULL},
    {"group member remove",
     "group/member/remove",
     "take a user out of a group",
     {{NULL, "group", K_STR, true, "GROUP", "group id"},
      {NULL, "user", K_STR, true, "USER", "user id"}},
     print_group,
     NULL},
    {"send",
     "send",
     "send a notification as the admin (every field of proto v1)",
     {{"--to", "notification.to", K_STR, false, "TO", "user:<id> or group:<id>"},
      {"--title", "notification.title", K_STR, false, "TEXT", "title"},
      {"--body", "notification.body", K_STR, false, "TEXT", "body"},
      {"--id", "notification.id", K_STR, false, "ID", "idempotency key (default: generated)"},
      {"--category", "notification.category", K_STR, false, "CATEGORY", "preference category"},
      {"--priority", "notification.priority", K_STR, false, "PRIORITY",
       "low, normal, high or critical"},
      {"--data", "notification.data", K_KV, false, "KEY=VALUE", "custom data (repeatable)"},
      {"--channels", "notification.channels", K_LIST, false, "LIST", "push,sms,email,desktop"},
      {"--ttl", "notification.ttl", K_SECS, false, "DURATION", "expire after (90s, 1h, 2d)"},
      {"--deliver-at", "notification.deliver_at", K_STR, false, "TIME",
       "RFC 3339, or local wall time with --user-tz"},
      {"--tz", "notification.tz", K_STR, false, "user",
       "\"user\": --deliver-at is the user's wall time"},
      {"--collapse-key", "notification.collapse_key", K_STR, false, "KEY",
       "replaces an earlier one"},
      {"--template", "notification.template", K_STR, false, "NAME", "server-side template"},
      {"--vars", "notification.vars", K_JSON, false, "JSON", "template variables (object)"},
      {"--locale", "notification.locale", K_STR, false, "TAG", "template locale"},
      {"--file", "notification", K_FILE, false, "FILE",
       "the whole notification as JSON (- = stdin)"},
      {"--dry-run", "dry_run", K_FLAG, false, NULL,
       "send nothing; show which channels would be used and the rule that decided each"}},
     print_send,
     NULL},
    {"status",
     "status",
     "the whole story of one notification and why it is where it is",
     {{NULL, "id", K_STR, true, "ID", "notification id"}},
     print_status,
     NULL},
    {"log",
     "log",
     "notifications, newest first",
     {LOG_FILTERS,
      {"--limit", "limit", K_INT, false, "N", "at most N rows (default 50, max 1000)"},
      {"--before", "before", K_INT, false, "SEQ", "older than this page cursor (\"next\")"}},
     print_log,
     NULL},
    {"tail",
     "log",
     "follow notifications as they change, from now (or every change of those received "
     "--since); Ctrl-C stops",
     {LOG_FILTERS,
      {"--count", "@count", K_INT, false, "N", "stop after N rows"},
      {"--for", "@for", K_SECS, false, "DURATION", "stop after this long"}},
     NULL,
     run_tail},
    {"stats",
     "stats",
     "per channel sent/failed/rate, queue depths",
     {{"--window", "window", K_STR, false, "DURATION", "rates over this window (default 1h)"}},
     print_stats,
     NULL},
    {"dlq list",
     "dlq/list",
     "failed and dropped notifications (the dead letters)",
     {{"--state", "state", K_STR, false, "STATE", "failed or dropped"},
      {"--limit", "limit", K_INT, false, "N", "at most N (default 50)"}},
     print_log,
     NULL},
    {"dlq retry",
     "dlq/retry",
     "send dead letters again (recorded in their status)",
     {{NULL, "id", K_STR, false, "ID", "notification id"},
      {"--all", "all", K_FLAG, false, NULL, "every dead letter (up to --limit)"},
      {"--limit", "limit", K_INT, false, "N", "with --all: at most N (default 100)"}},
     print_requeued,
     NULL},
    {"ping", "ping", "check that a hub answers", {{0}}, print_ping, NULL},
};
#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

static const char *prog = "tidingsctl";

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    return CTL_USAGE;
}

static size_t nargs(const struct command *c)
{
    size_t n = 0;
    while (n < ARGS_MAX && c->args[n].key) {
        n++;
    }
    return n;
}

static void command_help(FILE *out, const struct command *c)
{
    fprintf(out, "usage: %s [options] %s", prog, c->name);
    size_t n = nargs(c);
    for (size_t i = 0; i < n; i++) {
        const struct arg *a = &c->args[i];
        if (!a->flag) {
            fprintf(out, a->required ? " %s" : " [%s]", a->meta);
        }
    }
    for (size_t i = 0; i < n; i++) {
        const struct arg *a = &c->args[i];
        if (a->flag) {
            fprintf(out, a->required ? " %s %s" : " [%s%s%s]", a->flag, a->meta ? " " : "",
                    a->meta ? a->meta : "");
        }
    }
    fprintf(out, " [--json]\n\n  %s\n\n", c->summary);
    for (size_t i = 0; i < n; i++) {
        const struct arg *a = &c->args[i];
        char left[64];
        if (a->flag) {
            snprintf(left, sizeof(left), "%s%s%s", a->flag, a->meta ? " " : "",
                     a->meta ? a->meta : "");
        } else {
            snprintf(left, sizeof(left), "%s", a->meta);
        }
        fprintf(out, "  %-24s %s%s\n", left, a->help, a->required ? " (required)" : "");
    }
    fprintf(out, "  %-24s %s\n  %-24s %s\n", "--json", "print the hub's answer as JSON", "--help",
            "this help");
}

static void main_help(FILE *out)
{
    fprintf(out,
            "usage: %s [options] <command> [arguments] [--json]\n\n"
            "Administer a Tidings hub over MQTT 5 request/response.\n\n"
            "Options (also from ~/.config/tidings/ctl.conf, see --help-config):\n"
            "  -h HOST          broker host (default 127.0.0.1)\n"
            "  -p PORT          broker port (default 1883)\n"
            "  -u USER          broker user with admin rights\n"
            "  -P PASSWORD      its password (prefer the config file: -P shows in ps)\n"
            "  --cafile FILE    CA certificate: connect with TLS\n"
            "  --cert FILE      client certificate;  --key FILE  its key\n"
            "  --insecure       do not check the broker's host name\n"
            "  -c, --config FILE  settings file (default ~/.config/tidings/ctl.conf)\n"
            "  --timeout DURATION  wait this long for the broker and a hub (default 5s)\n"
            "  --json           print answers as JSON\n"
            "  --help           this help; <command> --help for a command's\n"
            "  --version\n\n"
            "Commands:\n",
            prog);
    for (size_t i = 0; i < N_COMMANDS; i++) {
        fprintf(out, "  %-19s %s\n", commands[i].name, commands[i].summary);
    }
    fprintf(out, "\nExit codes: 0 ok, 1 the hub refused (error shown), 2 usage error, 3 no "
                 "answer / cannot connect, 4 not authorized.\n");
}

/* --- building the request --------------------------------------------- */

/* The object that holds the last part of a dotted key, created on the way. */
static cJSON *parent_of(cJSON *root, const char *key, const char **leaf)
{
    cJSON *o = root;
    const char *dot;
    char part[64];
    while ((dot = strchr(key, '.'))) {
        size_t len = (size_t)(dot - key);
        if (len >= sizeof(part)) {
            return NULL;
        }
        memcpy(part, key, len);
        part[len] = '\0';
        cJSON *next = cJSON_GetObjectItemCaseSensitive(o, part);
        if (!next) {
            next = cJSON_AddObjectToObject(o, part);
        }
        if (!cJSON_IsObject(next)) {
            return NULL;
        }
        o = next;
        key = dot + 1;
    }
    *leaf = key;
    return o;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f) {
        return NULL;
    }
    char *buf = malloc(FILE_MAX + 1);
    size_t n = buf ? fread(buf, 1, FILE_MAX + 1, f) : 0;
    if (f != stdin) {
        fclose(f);
    }
    if (!buf || n > FILE_MAX) {
        free(buf);
        errno = EFBIG;
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* Put one argument value into the request. CTL_OK or CTL_USAGE (said). */
static int set_arg(cJSON *req, const struct arg *a, const char *value)
{
    const char *name = a->flag ? a->flag : a->meta;
    const char *leaf;
    cJSON *parent = parent_of(req, a->key, &leaf);
    if (!parent) {
        return usage_error("%s: cannot be combined with the arguments before it", name);
    }
    cJSON *v = NULL;
    switch (a->kind) {
    case K_STR:
        v = cJSON_CreateString(value);
        break;
    case K_INT: {
        char *end;
        errno = 0;
        long long x = strtoll(value, &end, 10);
        if (errno || end == value || *end) {
            return usage_error("%s: '%s' is not an integer", name, value);
        }
        v = cJSON_CreateNumber((double)x);
        break;
    }
    case K_SECS: {
        uint64_t ms;
        if (config_parse_duration(value, &ms) < 0 || ms % 1000 != 0) {
            return usage_error("%s: '%s' is not a duration in whole seconds (90s, 15m, 2h, 1d)",
                               name, value);
        }
        v = cJSON_CreateNumber((double)(ms / 1000));
        break;
    }
    case K_FLAG:
        v = cJSON_CreateTrue();
        break;
    case K_LIST: {
        cJSON *arr = cJSON_GetObjectItemCaseSensitive(parent, leaf);
        if (!arr) {
            arr = cJSON_AddArrayToObject(parent, leaf);
        }
        const char *p = value;
        while (arr && *p) {
            size_t len = strcspn(p, ",");
            if (len > 0) {
                char item[256];
                snprintf(item, sizeof(item), "%.*s", (int)len, p);
                cJSON_AddItemToArray(arr, cJSON_CreateString(item));
            }
            p += len;
            if (*p == ',') {
                p++;
            }
        }
        return CTL_OK;
    }
    case K_KV: {
        const char *eq = strchr(value, '=');
        if (!eq || eq == value) {
            return usage_error("%s: expected KEY=VALUE, got '%s'", name, value);
        }
        cJSON *obj = cJSON_GetObjectItemCaseSensitive(parent, leaf);
        if (!obj) {
            obj = cJSON_AddObjectToObject(parent, leaf);
        }
        char k[128];
        snprintf(k, sizeof(k), "%.*s", (int)(eq - value), value);
        if (!obj || cJSON_GetObjectItemCaseSensitive(obj, k)) {
            return usage_error("%s: key '%s' given twice", name, k);
        }
        cJSON_AddStringToObject(obj, k, eq + 1);
        return CTL_OK;
    }
    case K_JSON:
        v = cJSON_Parse(value);
        if (!v) {
            return usage_error("%s: not valid JSON: %.60s", name, value);
        }
        break;
    case K_FILE: {
        size_t len = 0;
        char *text = read_file(value, &len);
        if (!text) {
            return usage_error("%s: %s: %s", name, value, strerror(errno));
        }
        v = cJSON_ParseWithLength(text, len);
        free(text);
        if (!v) {
            return usage_error("%s: %s is not valid JSON", name, value);
        }
        /* A whole notification from a file: flags given with it win. */
        cJSON *old = cJSON_GetObjectItemCaseSensitive(parent, leaf);
        if (old && cJSON_IsObject(old) && cJSON_IsObject(v)) {
            cJSON *f = old->child;
            while (f) {
                cJSON *next = f->next;
                cJSON_DeleteItemFromObjectCaseSensitive(v, f->string);
                cJSON_AddItemToObject(v, f->string, cJSON_DetachItemViaPointer(old, f));
                f = next;
            }
        }
        break;
    }
    }
    if (!v) {
        return usage_error("out of memory");
    }
    if (cJSON_GetObjectItemCaseSensitive(parent, leaf) && a->kind != K_FILE) {
        cJSON_Delete(v);
        return usage_error("%s given twice", name);
    }
    cJSON_DeleteItemFromObjectCaseSensitive(parent, leaf);
    cJSON_AddItemToObject(parent, leaf, v);
    return CTL_OK;
}

/* Parse a command's arguments into req. CTL_OK, CTL_USAGE, or -1 when
 * --help was printed. */
static int parse_args(const struct command *c, int argc, char **argv, cJSON *req)
{
    size_t n = nargs(c), pos = 0;
    for (int i = 0; i < argc; i++) {
        const char *s = argv[i];
        if (strcmp(s, "--help") == 0) {
            command_help(stdout, c);
            return -1;
        }
        if (s[0] == '-' && s[1] == '-' && s[2]) {
            const char *eq = strchr(s, '=');
            size_t flen = eq ? (size_t)(eq - s) : strlen(s);
            const struct arg *a = NULL;
            for (size_t k = 0; k < n; k++) {
                if (c->args[k].flag && strlen(c->args[k].flag) == flen &&
                    strncmp(c->args[k].flag, s, flen) == 0) {
                    a = &c->args[k];
                }
            }
            if (!a) {
                usage_error("%s: unknown option '%.*s' (see %s %s --help)", c->name, (int)flen, s,
                            prog, c->name);
                return CTL_USAGE;
            }
            const char *value;
            if (a->kind == K_FLAG) {
                if (eq) {
                    return usage_error("%s takes no value", a->flag);
                }
                value = "";
            } else if (eq) {
                value = eq + 1;
            } else if (i + 1 < argc) {
                value = argv[++i];
            } else {
                return usage_error("%s needs a value (%s)", a->flag, a->meta);
            }
            if (set_arg(req, a, value) != CTL_OK) {
                return CTL_USAGE;
            }
            continue;
        }
        /* positional */
        while (pos < n && c->args[pos].flag) {
            pos++;
        }
        if (pos >= n) {
            return usage_error("%s: unexpected argument '%s' (see %s %s --help)", c->name, s, prog,
                               c->name);
        }
        if (set_arg(req, &c->args[pos], s) != CTL_OK) {
            return CTL_USAGE;
        }
        pos++;
    }
    for (size_t k = 0; k < n; k++) {
        const struct arg *a = &c->args[k];
        const char *leaf;
        cJSON *parent = parent_of(req, a->key, &leaf);
        if (a->required && (!parent || !cJSON_GetObjectItemCaseSensitive(parent, leaf))) {
            return usage_error("%s: %s is required (see %s %s --help)", c->name,
                               a->flag ? a->flag : a->meta, prog, c->name);
        }
    }
    return CTL_OK;
}

/* --- answers ------------------------------------------------------------- */

static void print_json(const cJSON *v)
{
    char *t = cJSON_Print(v);
    if (t) {
        printf("%s\n", t);
        free(t);
    }
}

static void print_ok(const struct command *cmd, const cJSON *reply)
{
    (void)reply;
    printf("ok: %s\n", cmd->name);
}

static void print_pretty(const struct command *cmd, const cJSON *reply)
{
    (void)cmd;
    cJSON *copy = cJSON_Duplicate(reply, 1);
    if (copy) {
        cJSON_DeleteItemFromObjectCaseSensitive(copy, "ok");
        print_json(copy);
        cJSON_Delete(copy);
    }
}

static const struct col user_fields[] = {
    {"user", "user.id", 0},         {"time zone", "user.tz", 0},    {"locale", "user.locale", 0},
    {"phone", "user.phone", 0},     {"email", "user.email", 60},    {"created", "user.created", 0},
    {"updated", "user.updated", 0}, {"devices", "user.devices", 0},
};

static void print_user(const struct command *cmd, const cJSON *reply)
{
    (void)cmd;
    print_fields(stdout, reply, user_fields, sizeof(user_fields) / sizeof(user_fields[0]));
}

static void print_users(const struct command *cmd, const cJSON *reply)
{
    (void)cmd;
    static const struct col cols[] = {{"USER", "id", 0},       {"TZ", "tz", 0},
                                      {"LOCALE", "locale", 0}, {"PHONE", "phone", 0},
                                      {"EMAIL", "email", 0},   {"CREATED", "created", 0}};
    print_table(stdout, cJSON_GetObjectItemCaseSensitive(reply, "items"), cols, 6);
}

static const struct col device_cols[] = {
    {"ID", "id", 0},          {"PLATFORM", "platform", 0}, {"TOKEN", "token", 24},
    {"APP", "app", 0},        {"ENV", "environment", 0},   {"STATE", "state", 0},
    {"REASON", "reason", 48}, {"SINCE", "state_since", 0}, {"LAST ACTIVE", "last_active", 0},
};

static void print_devices(const struct command *cmd, const cJSON *reply)
{
    (void)cmd;
    print_table(stdout, cJSON_GetObjectItemCaseSensitive(reply, "items"), device_cols,
                sizeof(device_cols) / sizeof(device_cols[0]));
}

static void print_device(const struct command *cmd, const cJSON *reply)
{
    (void)cmd;
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(reply, "device");
    char buf[64];
    printf("device %s registered\n", print_cell(d, "id", buf, sizeof(buf)));
}

static void print_bindings(const struct command *cmd, const cJSON *reply)
{
    (void)cmd;
    static const struct col cols[] = {{"AGENT", "agent", 0},
                                      {"SUBJECT", "subject", 0},
                                      {"CATEGORY", "category", 0},
                                      {"SINCE", "created", 0}};
    print_table(stdout, cJSON_GetObjectItemCaseSensitive(reply, "items"), cols, 4);
}

static void print_group(const struct command *cmd, const cJSON *reply)
{
    (void)cmd;
    char buf[160], n[32];
    printf("group %s: %s member(s)\n", print_cell(reply, "group", buf, sizeof(buf)),
           print_cell(reply, "total", n, sizeof(n)));
    const cJSON *m;
    cJSON_ArrayForEach(m, cJSON_GetObjectItemCaseSensitive(reply, "members"))
    {
        if (cJSON_IsString(m)) {
            printf("  %s\n", m->valuestring);
        }
    }
}

static void print_groups(const struct command *cmd, const cJSON *reply)
{
    if (cJSON_GetObjectItemCaseSensitive(reply, "group")) {
        print_group(cmd, reply);
        return;
    }
    static const struct col cols[] = {{"GROUP", "id", 0}, {"MEMBERS", "members", 0}};
    print_table(stdout, cJSON_GetObjectItemCaseSensitive(reply, "items"), cols, 2);
}

static void print_send(const struct command *cmd, const cJSON *reply)
{
    (void)cmd;
    const cJSON *plan = cJSON_GetObjectItemCaseSensitive(reply, "plan");
    char buf[128];
    if (plan) {
        printf("dry run for %s: nothing was sent\n", print_cell(reply, "to", buf, sizeof(buf)));
        static const struct col cols[] = {
            {"USER", "user", 0},       {"DEVICE", "device", 0}, {"PLATFORM", "platform", 0},
            {"CHANNEL", "channel", 0}, {"STEP", "step", 0},     {"ACTION", "action", 0},
            {"RULE", "rule", 48},      {"WHEN", "when", 0},
        };
        print_table(stdout, plan, cols, sizeof(cols) / sizeof(cols[0]));
        return;
    }
    const cJSON *dup = cJSON_GetObjectItemCaseSensitive(reply, "duplicate");
    printf("%s %s\n", cJSON_IsTrue(dup) ? "already known (same id), not queued again:" : "queued:",
           print_cell(reply, "id", buf, sizeof(buf)));
}

static void print_status(const struct command *cmd, const cJSON *reply)
{
    (void)cmd;
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(reply, "notification");
    char buf[512];
    printf("%s\n", print_cell(reply, "explanation", buf, sizeof(buf)));
    printf("\nnotification\n");
    static const struct col f[] = {
        {"id", "id", 0},
        {"to", "to", 0},
        {"from agent", "agent", 0},
        {"category", "category", 0},
        {"priority", "priority", 0},
        {"state", "state", 0},
        {"reason", "reason", 0},
        {"received", "received", 0},
        {"updated", "updated", 0},
        {"expires", "expires", 0},
        {"title", "notification.title", 0},
        {"body", "notification.body", 0},
    };
    print_fields(stdout, n, f, sizeof(f) / sizeof(f[0]));
    printf("\npolicy decisions\n");
    static const struct col dc[] = {{"AT", "at", 0},           {"USER", "user", 0},
                                    {"CHANNEL", "channel", 0}, {"ACTION", "action", 0},
                                    {"RULE", "rule", 48},      {"UNTIL", "until", 0}};
    print_table(stdout, cJSON_GetObjectItemCaseSensitive(reply, "decisions"), dc, 6);
    printf("\nattempts\n");
    static const struct col ac[] = {
        {"#", "attempt", 0},         {"STARTED", "started", 0},
        {"CHANNEL", "channel", 0},   {"DEVICE", "device", 0},
        {"STATE", "state", 0},       {"STATUS", "status", 0},
        {"REASON", "reason", 40},    {"PROVIDER ID", "provider_id", 40},
        {"FINISHED", "finished", 0},
    };
    print_table(stdout, cJSON_GetObjectItemCaseSensitive(reply, "attempts"), ac,
                sizeof(ac) / sizeof(ac[0]));
    const cJSON *rc = cJSON_GetObjectItemCaseSensitive(reply, "receipts");
    printf("\nreceipts\n");
    if (cJSON_GetArraySize(rc) > 0) {
        const cJSON *r;
        cJSON_ArrayForEach(r, rc)
        {
            printf("  %s\n", print_cell(r, "text", buf, sizeof(buf)));
        }
    } else if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(reply, "terminal"))) {
        printf("  (none on record: confirmed receipts are kept 30 days)\n");
    } else {
        printf("  (none yet: a receipt goes to the sending agent at the terminal state)\n");
    }
    const cJSON *adm = cJSON_GetObjectItemCaseSensitive(reply, "admin");
    if (cJSON_GetArraySize(adm) > 0) {
        printf("\nadmin actions\n");
        static const struct col adc[] = {
            {"AT", "at", 0}, {"COMMAND", "command", 0}, {"DETAIL", "detail", 60}};
        print_table(stdout, adm, adc, 3);
    }
}

static const struct col log_cols[] = {
    {"RECEIVED", "received", 0}, {"ID", "id", 28},         {"TO", "to", 24},
    {"CATEGORY", "category", 0}, {"PRIO", "priority", 0},  {"STATE", "state", 0},
    {"CHANNELS", "channels", 0}, {"REASON", "reason", 40},
};

static void print_log(const struct command *cmd, const cJSON *reply)
{
    (void)cmd;
    print_table(stdout, cJSON_GetObjectItemCaseSensitive(reply, "items"), log_cols,
                sizeof(log_cols) / sizeof(log_cols[0]));
    const cJSON *next = cJSON_GetObjectItemCaseSensitive(reply, "next");
    if (cJSON_IsNumber(next)) {
        printf("(more: --before %lld)\n", (long long)next->valuedouble);
    }
}

static void print_stats(const struct command *cmd, const cJSON *reply)
{
    (void)cmd;
    char buf[64];
    printf("channels (last %s s)\n", print_cell(reply, "window_s", buf, sizeof(buf)));
    static const struct col cols[] = {
        {"CHANNEL", "channel", 0},      {"ENABLED", "enabled", 0},  {"SENT", "sent", 0},
        {"FAILED", "failed", 0},        {"RETRIED", "retried", 0},  {"IN FLIGHT", "in_flight", 0},
        {"SUCCESS", "success_rate", 0}, {"PER S", "per_second", 0}, {"MEAN MS", "mean_ms", 0},
        {"BREAKER", "breaker", 0},
    };
    print_table(stdout, cJSON_GetObjectItemCaseSensitive(reply, "channels"), cols,
                sizeof(cols) / sizeof(cols[0]));
    printf("\nqueues\n");
    static const struct col q[] = {
        {"queued", "queues.queued", 0},       {"sending", "queues.sending", 0},
        {"scheduled", "queues.scheduled", 0},
        {"failed (dlq)", "queues.failed", 0}, {"dropped (dlq)", "queues.dropped", 0},
        {"in memory", "queues.in_memory", 0}, {"acks pending", "queues.acks_pending", 0},
    };
    print_fields(stdout, reply, q, sizeof(q) / sizeof(q[0]));
    const cJSON *prov = cJSON_GetObjectItemCaseSensitive(reply, "providers");
    if (cJSON_GetArraySize(prov) > 0) {
        printf("\nproviders\n");
        static const struct col pc[] = {{"CHANNEL", "channel", 0},
                                        {"PROVIDER", "provider", 0},
                                        {"BREAKER", "breaker", 0},
                                        {"IN FLIGHT", "in_flight", 0}};
        print_table(stdout, prov, pc, 4);
    }
    const cJSON *tot = cJSON_GetObjectItemCaseSensitive(reply, "totals");
    if (tot && tot->child) {
        printf("\nterminal states, all time\n");
        for (const cJSON *t = tot->child; t; t = t->next) {
            printf("  %-12s %lld\n", t->string, (long long)t->valuedouble);
        }
    }
    printf("\nsince the hub started\n");
    static const struct col s[] = {
        {"accepted", "since_start.accepted", 0}, {"duplicates", "since_start.duplicates", 0},
        {"rejected", "since_start.rejected", 0}, {"delivered", "since_start.delivered", 0},
        {"failed", "since_start.failed", 0},     {"expired", "since_start.expired", 0},
        {"attempts", "since_start.attempts", 0}, {"retries", "since_start.retries", 0},
    };
    print_fields(stdout, reply, s, sizeof(s) / sizeof(s[0]));
}

static void print_requeued(const struct command *cmd, const cJSON *reply)
{
    (void)cmd;
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(reply, "requeued");
    printf("queued again: %d\n", cJSON_GetArraySize(r));
    const cJSON *e;
    cJSON_ArrayForEach(e, r)
    {
        if (cJSON_IsString(e)) {
            printf("  %s\n", e->valuestring);
        }
    }
}

static void print_ping(const struct command *cmd, const cJSON *reply)
{
    (void)cmd;
    char buf[64];
    printf("a hub answered (its time %s)\n", print_cell(reply, "time", buf, sizeof(buf)));
}

/* The answer: exit code, printed as asked. */
static int answer(const struct command *c, const char *text, bool json, cJSON **out)
{
    cJSON *r = cJSON_Parse(text);
    if (!r || !cJSON_IsObject(r)) {
        cJSON_Delete(r);
        fprintf(stderr, "%s: %s: the hub's answer is not JSON: %.80s\n", prog, c->name, text);
        return CTL_NO_ANSWER;
    }
    const cJSON *ok = cJSON_GetObjectItemCaseSensitive(r, "ok");
    int code = cJSON_IsTrue(ok) ? CTL_OK : CTL_REFUSED;
    if (json) {
        print_json(r);
    }
    if (code != CTL_OK) {
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(r, "error");
        char msg[300], field[80], ecode[40];
        print_cell(e, "message", msg, sizeof(msg));
        print_cell(e, "field", field, sizeof(field));
        print_cell(e, "code", ecode, sizeof(ecode));
        if (strcmp(field, "-") != 0) {
            fprintf(stderr, "%s: %s: %s (field %s, %s)\n", prog, c->name, msg, field, ecode);
        } else {
            fprintf(stderr, "%s: %s: %s (%s)\n", prog, c->name, msg, ecode);
        }
    } else if (!json && c->print) {
        c->print(c, r);
    }
    if (out) {
        *out = r;
    } else {
        cJSON_Delete(r);
    }
    return code;
}

static int request(const struct command *c, ctl_session_t *s, const cJSON *req, bool json,
                   cJSON **out)
{
    char *payload = cJSON_PrintUnformatted(req);
    if (!payload) {
        return usage_error("out of memory");
    }
    char *reply = NULL;
    char err[512];
    int rc = ctl_request(s, c->topic, payload, &reply, err, sizeof(err));
    free(payload);
    if (rc != 0) {
        fprintf(stderr, "%s: %s\n", prog, err);
        return rc;
    }
    rc = answer(c, reply, json, out);
    free(reply);
    return rc;
}

/* --- commands that do more ----------------------------------------------- */

static volatile sig_atomic_t stop;
static void on_stop(int sig)
{
    (void)sig;
    stop = 1;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* tail: poll "log" for changes since a cursor, once a second. The first
 * poll starts at the hub's present (changed_after = its now). */
static int run_tail(const struct command *cmd, ctl_session_t *s, cJSON *req, bool json)
{
    int64_t count = -1, for_s = -1;
    cJSON *v;
    if ((v = cJSON_GetObjectItemCaseSensitive(req, "@count"))) {
        count = (int64_t)v->valuedouble;
        cJSON_DeleteItemFromObjectCaseSensitive(req, "@count");
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(req, "@for"))) {
        for_s = (int64_t)v->valuedouble;
        cJSON_DeleteItemFromObjectCaseSensitive(req, "@for");
    }
    signal(SIGINT, on_stop);
    signal(SIGTERM, on_stop);
    double after = 0, cursor = 0;
    cJSON *r = NULL;
    int rc;
    if (!cJSON_GetObjectItemCaseSensitive(req, "since")) {
        /* From the present, by the hub's clock: ask for it first. With
         * --since, every change of what arrived since then is shown. */
        cJSON *probe = cJSON_Duplicate(req, 1);
        cJSON_AddNumberToObject(probe, "limit", 1);
        rc = request(cmd, s, probe, false, &r);
        cJSON_Delete(probe);
        if (rc != CTL_OK) {
            cJSON_Delete(r);
            return rc;
        }
        after = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(r, "now_ms"));
        cJSON_Delete(r);
    }
    int64_t end = for_s >= 0 ? mono_ms() + for_s * 1000 : INT64_MAX;
    int64_t shown = 0;
    bool header = false;
    cJSON_AddNumberToObject(req, "limit", 200);
    cJSON *ca = cJSON_AddNumberToObject(req, "changed_after", after);
    cJSON *cu = cJSON_AddNumberToObject(req, "cursor", cursor);
    while (!stop && mono_ms() < end && (count < 0 || shown < count)) {
        cJSON_SetNumberValue(ca, after);
        cJSON_SetNumberValue(cu, cursor);
        char *payload = cJSON_PrintUnformatted(req);
        char *reply = NULL;
        char err[512];
        rc = payload ? ctl_request(s, cmd->topic, payload, &reply, err, sizeof(err)) : CTL_USAGE;
        free(payload);
        if (rc != 0) {
            fprintf(stderr, "%s: %s\n", prog, err);
            return rc;
        }
        r = cJSON_Parse(reply);
        free(reply);
        if (!r || !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "ok"))) {
            char *t = r ? cJSON_PrintUnformatted(r) : NULL;
            fprintf(stderr, "%s: tail: %s\n", prog, t ? t : "bad answer");
            free(t);
            cJSON_Delete(r);
            return CTL_REFUSED;
        }
        after = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(r, "changed_after"));
        cursor = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(r, "cursor"));
        const cJSON *items = cJSON_GetObjectItemCaseSensitive(r, "items");
        const cJSON *row;
        cJSON_ArrayForEach(row, items)
        {
            if (count >= 0 && shown >= count) {
                break;
            }
            char b[8][160];
            if (json) {
                char *t = cJSON_PrintUnformatted(row);
                printf("%s\n", t ? t : "{}");
                free(t);
            } else {
                if (!header) {
                    printf("%-20s  %-28s  %-20s  %-10s  %-10s  %s\n", "UPDATED", "ID", "TO",
                           "STATE", "CHANNELS", "REASON");
                    header = true;
                }
                printf("%-20s  %-28s  %-20s  %-10s  %-10s  %s\n",
                       print_cell(row, "updated", b[0], sizeof(b[0])),
                       print_cell(row, "id", b[1], sizeof(b[1])),
                       print_cell(row, "to", b[2], sizeof(b[2])),
                       print_cell(row, "state", b[3], sizeof(b[3])),
                       print_cell(row, "channels", b[4], sizeof(b[4])),
                       print_cell(row, "reason", b[5], sizeof(b[5])));
            }
            shown++;
        }
        fflush(stdout);
        bool full = cJSON_GetArraySize(items) >= 200;
        cJSON_Delete(r);
        if (!full) {
            for (int i = 0; i < 10 && !stop && mono_ms() < end; i++) {
                usleep(100 * 1000);
            }
        }
    }
    return CTL_OK;
}

/* agent add: register the bindings, then print what the broker needs. The
 * password is made here and never sent to the hub. */
static int run_agent_add(const struct command *cmd, ctl_session_t *s, cJSON *req, bool json)
{
    cJSON *r = NULL;
    int rc = request(cmd, s, req, false, &r);
    if (rc != CTL_OK) {
        if (json && r) {
            print_json(r);
        }
        cJSON_Delete(r);
        return rc;
    }
    unsigned char rnd[18];
    char pw[40];
    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
        cJSON_Delete(r);
        return usage_error("getrandom: %s", strerror(errno));
    }
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t n = 0;
    for (size_t i = 0; i + 2 < sizeof(rnd); i += 3) {
        unsigned v = (unsigned)rnd[i] << 16 | (unsigned)rnd[i + 1] << 8 | rnd[i + 2];
        pw[n++] = b64[(v >> 18) & 63];
        pw[n++] = b64[(v >> 12) & 63];
        pw[n++] = b64[(v >> 6) & 63];
        pw[n++] = b64[v & 63];
    }
    pw[n] = '\0';
    const char *agent = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(r, "agent"));
    cJSON *broker = cJSON_GetObjectItemCaseSensitive(r, "broker");
    if (json) {
        if (broker) {
            cJSON_AddStringToObject(broker, "password", pw);
        }
        print_json(r);
        cJSON_Delete(r);
        return CTL_OK;
    }
    printf("agent %s registered\n\nbindings\n", agent ? agent : "?");
    print_bindings(cmd, r);
    printf("\nbroker credentials (Tidings keeps no copy of the password):\n"
           "  username: %s\n  password: %s\n"
           "  in the agent's config: uplink.username = %s / uplink.password = <the password>\n\n"
           "add them to the broker's password file:\n"
           "  mosquitto_passwd /etc/mosquitto/passwd %s\n\n"
           "ACL lines for the broker's acl_file:\n",
           agent, pw, agent, agent);
    const cJSON *line;
    cJSON_ArrayForEach(line, cJSON_GetObjectItemCaseSensitive(broker, "acl"))
    {
        if (cJSON_IsString(line)) {
            printf("  %s\n", line->valuestring);
        }
    }
    cJSON_Delete(r);
    return CTL_OK;
}

/* --- main ------------------------------------------------------------------ */

/* The command whose words ("group member add") start argv; *used = how
 * many words it took. */
static const struct command *find_command(int argc, char **argv, int *used)
{
    for (size_t i = 0; i < N_COMMANDS; i++) {
        const char *p = commands[i].name;
        int w = 0;
        while (*p && w < argc) {
            size_t len = strcspn(p, " ");
            if (strlen(argv[w]) != len || strncmp(argv[w], p, len) != 0) {
                break;
            }
            w++;
            p += len;
            if (*p == ' ') {
                p++;
            } else {
                *used = w;
                return &commands[i];
            }
        }
    }
    return NULL;
}

/* "user" alone, or a wrong verb: list that noun's commands. */
static bool noun_help(const char *noun, FILE *out)
{
    bool any = false;
    size_t len = strlen(noun);
    for (size_t i = 0; i < N_COMMANDS; i++) {
        const char *name = commands[i].name;
        if (strncmp(name, noun, len) == 0 && name[len] == ' ') {
            if (!any) {
                fprintf(out, "%s commands:\n", noun);
            }
            fprintf(out, "  %s %-19s %s\n", prog, name, commands[i].summary);
            any = true;
        }
    }
    return any;
}

/* For the bash completion: command words, or one command's flags. */
static int complete(int argc, char **argv)
{
    if (argc == 0) {
        for (size_t i = 0; i < N_COMMANDS; i++) {
            printf("%s\n", commands[i].name);
        }
        return 0;
    }
    int used;
    const struct command *c = find_command(argc, argv, &used);
    if (!c) {
        return 1;
    }
    for (size_t k = 0; k < nargs(c); k++) {
        if (c->args[k].flag) {
            printf("%s\n", c->args[k].flag);
        }
    }
    printf("--json\n--help\n");
    return 0;
}

static int load_settings(struct settings *st, const char *path, bool explicit_path)
{
    char err[CONFIG_ERR_MAX + 256];
    if (config_defaults(settings_table, N_SETTINGS, st, err, sizeof(err)) < 0) {
        return usage_error("%s", err);
    }
    char def[512];
    if (!path) {
        const char *xdg = getenv("XDG_CONFIG_HOME");
        const char *home = getenv("HOME");
        if (xdg && *xdg) {
            snprintf(def, sizeof(def), "%s/tidings/ctl.conf", xdg);
        } else if (home && *home) {
            snprintf(def, sizeof(def), "%s/.config/tidings/ctl.conf", home);
        } else {
            return CTL_OK;
        }
        path = def;
    }
    struct stat sb;
    if (stat(path, &sb) < 0) {
        if (errno == ENOENT && !explicit_path) {
            return CTL_OK;
        }
        return usage_error("config %s: %s", path, strerror(errno));
    }
    int rc = config_load(settings_table, N_SETTINGS, st, path, err, sizeof(err));
    if (rc < 0) {
        return usage_error("%s", rc == TDG_ECONFIG ? err : strerror(-rc));
    }
    if (st->password[0] && (sb.st_mode & 077)) {
        fprintf(stderr,
                "%s: warning: %s holds a password and is readable by others (chmod 600 "
                "it)\n",
                prog, path);
    }
    return CTL_OK;
}

int main(int argc, char **argv)
{
    struct settings st;
    const char *config = getenv("TIDINGS_CTL_CONFIG");
    bool json = false;
    /* First pass: the config file (flags override what it says). */
    for (int i = 1; i < argc; i++) {
        if ((strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) && i + 1 < argc) {
            config = argv[i + 1];
        }
    }
    int rc = load_settings(&st, config, config != NULL);
    if (rc != CTL_OK) {
        return rc;
    }
    const char *env_pw = getenv("TIDINGS_CTL_PASSWORD");
    if (env_pw && *env_pw) {
        snprintf(st.password, sizeof(st.password), "%s", env_pw);
    }
    /* Connection options come before the command; --json, --timeout and
     * --help are also taken after it. */
    char *rest[256];
    int nrest = 0;
    bool in_command = false;
    char err[CONFIG_ERR_MAX + 64];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        const char *key = NULL;
        if (strcmp(a, "--json") == 0) {
            json = true;
            continue;
        }
        if (strcmp(a, "--timeout") == 0) {
            key = "timeout";
        } else if (!in_command) {
            if (strcmp(a, "-h") == 0) {
                key = "host";
            } else if (strcmp(a, "-p") == 0) {
                key = "port";
            } else if (strcmp(a, "-u") == 0) {
                key = "username";
            } else if (strcmp(a, "-P") == 0) {
                key = "password";
            } else if (strcmp(a, "--cafile") == 0) {
                key = "cafile";
            } else if (strcmp(a, "--cert") == 0) {
                key = "certfile";
            } else if (strcmp(a, "--key") == 0) {
                key = "keyfile";
            } else if (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) {
                i++;
                continue;
            } else if (strcmp(a, "--insecure") == 0) {
                st.insecure = true;
                continue;
            } else if (strcmp(a, "--help") == 0) {
                main_help(stdout);
                return CTL_OK;
            } else if (strcmp(a, "--version") == 0) {
                printf("tidingsctl 0.1.0\n");
                return CTL_OK;
            } else if (strcmp(a, "--help-config") == 0) {
                config_print(settings_table, N_SETTINGS, stdout);
                return CTL_OK;
            } else if (strcmp(a, "--complete") == 0) {
                return complete(argc - i - 1, argv + i + 1);
            } else if (a[0] == '-' && a[1]) {
                fprintf(stderr, "%s: unknown option '%s'\n", prog, a);
                main_help(stderr);
                return CTL_USAGE;
            } else {
                in_command = true;
            }
        }
        if (key) {
            if (!v) {
                return usage_error("%s needs a value", a);
            }
            if (config_set(settings_table, N_SETTINGS, &st, key, v, err, sizeof(err)) < 0) {
                return usage_error("%s: %s", a, err);
            }
            i++;
            continue;
        }
        if (nrest >= (int)(sizeof(rest) / sizeof(rest[0]))) {
            return usage_error("too many arguments");
        }
        rest[nrest++] = argv[i];
    }
    if (nrest == 0) {
        main_help(stderr);
        return CTL_USAGE;
    }
    int used = 0;
    const struct command *c = find_command(nrest, rest, &used);
    if (!c) {
        if (noun_help(rest[0], stderr)) {
            return nrest > 1 && strcmp(rest[1], "--help") != 0
                       ? usage_error("%s: unknown command '%s %s'", rest[0], rest[0], rest[1])
                       : (nrest > 1 ? CTL_OK : CTL_USAGE);
        }
        fprintf(stderr, "%s: unknown command '%s' (see %s --help)\n", prog, rest[0], prog);
        return CTL_USAGE;
    }
    cJSON *req = cJSON_CreateObject();
    if (!req) {
        return usage_error("out of memory");
    }
    rc = parse_args(c, nrest - used, rest + used, req);
    if (rc != CTL_OK) {
        cJSON_Delete(req);
        return rc < 0 ? CTL_OK : rc;
    }
    struct ctl_conn conn = {
        .host = st.host,
        .port = (int)st.port,
        .username = st.username,
        .password = st.password,
        .cafile = st.cafile,
        .certfile = st.certfile,
        .keyfile = st.keyfile,
        .insecure = st.insecure,
        .timeout_ms = (int)st.timeout_ms,
    };
    ctl_session_t *s = NULL;
    char cerr[512];
    rc = ctl_connect(&conn, &s, cerr, sizeof(cerr));
    if (rc != 0) {
        fprintf(stderr, "%s: %s\n", prog, cerr);
        cJSON_Delete(req);
        return rc;
    }
    rc = c->run ? c->run(c, s, req, json) : request(c, s, req, json, NULL);
    ctl_close(s);
    cJSON_Delete(req);
    return rc;
}
