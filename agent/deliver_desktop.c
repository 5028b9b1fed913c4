/*
 * deliver_desktop.c - the "desktop" backend: org.freedesktop.Notifications
 * over the D-Bus session bus, with sd-bus (libsystemd), on the agent's loop.
 *
 * Notify(app_name, replaces_id, "", summary, body, ["default","Open"],
 *        {"urgency": byte}, expire_timeout) is sent with sd_bus_call_async;
 * the bus socket is an fd watch of the loop and sd-bus's own deadline (reply
 * timeouts) a loop timer, both refreshed after every call into sd-bus. The
 * id the server returns is recorded (a bounded map) so that its
 * ActionInvoked and NotificationClosed signals become receipts for the
 * notification's id; a notification with a collapse_key replaces the one
 * shown earlier with the same key (replaces_id).
 *
 * summary = title (or the body when there is no title, body then empty);
 * body = body with &, < and > escaped, since servers may render body markup
 * and notification text must never become markup. Urgency: low 0, normal 1,
 * high and critical 2.
 *
 * No session bus, or no notification server on it (ServiceUnknown,
 * NameHasNoOwner, failed activation) -> DELIVER_UNAVAILABLE, said once in
 * the log per outage; reconnecting to a missing bus is tried at most every
 * DESK_RECONNECT_MS. A reply timeout -> DELIVER_RETRY; any other D-Bus error
 * -> DELIVER_FAIL with the error name.
 *
 * Signals are matched on path and interface, not on the sender: any client
 * of the user's own session bus could fake a receipt, which is within the
 * trust of that session.
 */
#include "deliver.h"

#include "error.h"
#include "log.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-bus.h>

#define DESK_INFLIGHT_MAX 64                   /* Notify calls awaiting a reply */
#define DESK_MAP_MAX 256                       /* server ids remembered for receipts */
#define DESK_RECONNECT_MS 10000                /* at most one bus connect attempt per this */
#define DESK_PROCESS_ROUNDS 64                 /* sd_bus_process calls per wake-up */
#define DESK_BODY_MAX (PROTO_MAX_WIRE * 5 + 1) /* every byte escaped as "&amp;" */

static const char NOTIF_NAME[] = "org.freedesktop.Notifications";
static const char NOTIF_PATH[] = "/org/freedesktop/Notifications";

enum avail { AVAIL_UNKNOWN = 0, AVAIL_OK, AVAIL_NO_BUS, AVAIL_NO_SERVER };

struct desk_job {
    struct desk_state *st;
    struct desk_job *prev, *next;
    sd_bus_slot *slot; /* the pending call; NULL once answered */
    uint64_t timer;    /* report timer for results known at once */
    char id[PROTO_ID_MAX + 1];
    char collapse[PROTO_COLLAPSE_MAX + 1];
    struct deliver_result res;
    deliver_done_cb done;
    void *arg;
};

struct desk_map {
    uint32_t server_id; /* 0: free */
    char id[PROTO_ID_MAX + 1];
    char collapse[PROTO_COLLAPSE_MAX + 1];
};

struct desk_state {
    loop_t *loop;
    const struct deliver_config *cfg;
    deliver_receipt_cb on_receipt;
    void *receipt_arg;
    sd_bus *bus;
    sd_bus_slot *match;
    int fd;
    unsigned events;
    uint64_t timer; /* sd-bus deadline timer, 0 when none */
    uint64_t timer_at_ms;
    uint64_t next_connect_ms;
    enum avail avail;
    bool in_process;     /* inside sd_bus_process: callbacks must not touch the
                            watch or drop the bus; process() does it after */
    char last_error[96]; /* why the bus is missing, for results and the log */
    struct desk_job *jobs;
    size_t inflight;
    struct desk_map map[DESK_MAP_MAX];
    size_t map_next;
};

static void process(struct desk_state *st);

/* --- availability, said once per change ----------------------------------- */

static void set_avail(struct desk_state *st, enum avail a, const char *why)
{
    if (st->avail == a) {
        return;
    }
    enum avail was = st->avail;
    st->avail = a;
    switch (a) {
    case AVAIL_OK:
        if (was == AVAIL_NO_BUS || was == AVAIL_NO_SERVER) {
            LOG_INFO("deliver", "desktop: notification server reachable again");
        }
        break;
    case AVAIL_NO_BUS:
        LOG_WARN("deliver",
                 "desktop: no session bus (%s); desktop notifications are unavailable "
                 "and stay with the other backends until it appears",
                 why);
        break;
    case AVAIL_NO_SERVER:
        LOG_WARN("deliver",
                 "desktop: no notification server on the session bus (%s); desktop "
                 "notifications are unavailable until one appears",
                 why);
        break;
    case AVAIL_UNKNOWN:
        break;
    }
}

/* --- jobs ------------------------------------------------------------------ */

static void job_unlink(struct desk_job *j)
{
    if (j->prev) {
        j->prev->next = j->next;
    } else {
        j->st->jobs = j->next;
    }
    if (j->next) {
        j->next->prev = j->prev;
    }
    j->prev = j->next = NULL;
}

static void job_report(struct desk_job *j)
{
    struct desk_state *st = j->st;
    job_unlink(j);
    if (j->slot) {
        j->slot = sd_bus_slot_unref(j->slot);
        st->inflight--;
    }
    deliver_done_cb done = j->done;
    void *arg = j->arg;
    struct deliver_result res = j->res;
    free(j);
    done(arg, &res);
}

static void on_report(loop_t *loop, uint64_t id, void *arg)
{
    (void)loop;
    (void)id;
    struct desk_job *j = arg;
    j->timer = 0;
    job_report(j);
}

/* Report a result known now, from the loop (never inside deliver()). */
static int report_later(struct desk_job *j)
{
    j->timer = loop_timer_add(j->st->loop, 0, on_report, j);
    return j->timer ? 0 : -ENOMEM;
}

/* --- the id map -------------------------------------------------------------- */

static struct desk_map *map_find(struct desk_state *st, uint32_t sid)
{
    for (size_t i = 0; i < DESK_MAP_MAX; i++) {
        if (st->map[i].server_id == sid && sid != 0) {
            return &st->map[i];
        }
    }
    return NULL;
}

static uint32_t map_collapse(struct desk_state *st, const char *key)
{
    if (!key[0]) {
        return 0;
    }
    for (size_t i = 0; i < DESK_MAP_MAX; i++) {
        if (st->map[i].server_id && strcmp(st->map[i].collapse, key) == 0) {
            return st->map[i].server_id;
        }
    }
    return 0;
}

static void map_put(struct desk_state *st, uint32_t sid, const char *id, const char *collapse)
{
    struct desk_map *m = map_find(st, sid);
    if (!m) {
        /* Oldest first out: a notification still open after 256 newer ones
         * loses its receipts, nothing else. */
        m = &st->map[st->map_next];
        st->map_next = (st->map_next + 1) % DESK_MAP_MAX;
    }
    m->server_id = sid;
    snprintf(m->id, sizeof(m->id), "%s", id);
    snprintf(m->collapse, sizeof(m->collapse), "%s", collapse);
}

/* --- the bus on the loop ------------------------------------------------------ */

static void drop_bus(struct desk_state *st)
{
    if (!st->bus) {
        return;
    }
    if (st->fd >= 0) {
        loop_fd_del(st->loop, st->fd);
        st->fd = -1;
    }
    loop_timer_cancel(st->loop, st->timer);
    st->timer = 0;
    /* Calls still waiting never got their answer: a retry, from the loop. */
    for (struct desk_job *j = st->jobs; j; j = j->next) {
        if (j->slot) {
            j->slot = sd_bus_slot_unref(j->slot);
            st->inflight--;
            j->res.status = DELIVER_RETRY;
            snprintf(j->res.reason, sizeof(j->res.reason), "session bus connection closed");
            if (!j->timer) {
                report_later(j);
            }
        }
    }
    st->match = sd_bus_slot_unref(st->match);
    /* Not sd_bus_flush_close_unref: flushing blocks. */
    st->bus = sd_bus_close_unref(st->bus);
}

static void on_timer(loop_t *loop, uint64_t id, void *arg)
{
    (void)loop;
    (void)id;
    struct desk_state *st = arg;
    st->timer = 0;
    process(st);
}

static void on_bus_fd(loop_t *loop, int fd, unsigned events, void *arg)
{
    (void)loop;
    (void)fd;
    (void)events;
    process(arg);
}

/* After every call into sd-bus: watch what it wants, arm what it waits for. */
static void update_watch(struct desk_state *st)
{
    if (!st->bus || st->in_process) {
        return;
    }
    int ev = sd_bus_get_events(st->bus);
    if (ev < 0) {
        snprintf(st->last_error, sizeof(st->last_error), "%s", strerror(-ev));
        drop_bus(st);
        return;
    }
    unsigned want = ((ev & POLLIN) ? LOOP_READ : 0u) | ((ev & POLLOUT) ? LOOP_WRITE : 0u);
    if (want != st->events) {
        loop_fd_mod(st->loop, st->fd, want);
        st->events = want;
    }
    uint64_t usec = UINT64_MAX;
    if (sd_bus_get_timeout(st->bus, &usec) < 0) {
        usec = UINT64_MAX;
    }
    uint64_t at_ms = usec == UINT64_MAX ? UINT64_MAX : (usec + 999) / 1000;
    if (st->timer && st->timer_at_ms == at_ms) {
        return;
    }
    loop_timer_cancel(st->loop, st->timer);
    st->timer = 0;
    if (at_ms != UINT64_MAX) {
        uint64_t now = clock_mono_ms(); /* sd-bus uses CLOCK_MONOTONIC too */
        st->timer = loop_timer_add(st->loop, at_ms > now ? at_ms - now : 0, on_timer, st);
        st->timer_at_ms = at_ms;
    }
}

static void process(struct desk_state *st)
{
    for (int round = 0; st->bus && round < DESK_PROCESS_ROUNDS; round++) {
        st->in_process = true;
        int r = sd_bus_process(st->bus, NULL);
        st->in_process = false;
        if (r < 0) {
            if (st->avail != AVAIL_NO_BUS) {
                LOG_WARN("deliver",
                         "desktop: session bus connection lost (%s); desktop "
                         "notifications are unavailable until it is back",
                         strerror(-r));
            }
            snprintf(st->last_error, sizeof(st->last_error), "connection lost: %s", strerror(-r));
            st->avail = AVAIL_NO_BUS; /* said above, or already said */
            drop_bus(st);
            return;
        }
        if (r == 0) {
            update_watch(st);
            return;
        }
    }
    /* More work queued inside sd-bus than one wake-up should do: come back
     * soon, after the loop served the others. */
    if (st->bus) {
        update_watch(st);
        if (!st->timer || st->timer_at_ms != 0) {
            loop_timer_cancel(st->loop, st->timer);
            st->timer = loop_timer_add(st->loop, 0, on_timer, st);
            st->timer_at_ms = 0;
        }
    }
}

static const char *close_reason(uint32_t r)
{
    switch (r) {
    case 1:
        return "expired";
    case 2:
        return "dismissed";
    case 3:
        return "closed";
    default:
        return "undefined";
    }
}

static int on_signal(sd_bus_message *m, void *userdata, sd_bus_error *ret_error)
{
    (void)ret_error;
    struct desk_state *st = userdata;
    const char *member = sd_bus_message_get_member(m);
    if (!member) {
        return 0;
    }
    uint32_t sid = 0;
    const char *detail = NULL;
    enum deliver_receipt_kind kind;
    if (strcmp(member, "ActionInvoked") == 0) {
        if (sd_bus_message_read(m, "us", &sid, &detail) < 0) {
            return 0;
        }
        kind = DELIVER_RECEIPT_ACTION;
    } else if (strcmp(member, "NotificationClosed") == 0) {
        uint32_t reason = 0;
        if (sd_bus_message_read(m, "uu", &sid, &reason) < 0) {
            return 0;
        }
        detail = close_reason(reason);
        kind = DELIVER_RECEIPT_CLOSED;
    } else {
        return 0;
    }
    struct desk_map *e = map_find(st, sid);
    if (!e) {
        return 0; /* another application's notification */
    }
    char id[PROTO_ID_MAX + 1];
    char det[64];
    snprintf(id, sizeof(id), "%s", e->id);
    /* An action key comes from the server: bound it and keep it printable. */
    deliver_escape(det, sizeof(det), detail, strlen(detail));
    if (kind == DELIVER_RECEIPT_CLOSED) {
        e->server_id = 0; /* closed: the id may be reused by the server */
        e->collapse[0] = '\0';
    }
    LOG_DEBUG("deliver", "desktop: id=%s server_id=%u %s %s", id, sid,
              kind == DELIVER_RECEIPT_ACTION ? "action" : "closed", det);
    if (st->on_receipt) {
        struct deliver_receipt rc = {.backend = "desktop", .id = id, .kind = kind, .detail = det};
        st->on_receipt(st->receipt_arg, &rc);
    }
    return 0;
}

static int connect_bus(struct desk_state *st)
{
    sd_bus *b = NULL;
    int r;
    if (st->cfg->desktop_bus[0]) {
        if ((r = sd_bus_new(&b)) < 0 || (r = sd_bus_set_address(b, st->cfg->desktop_bus)) < 0 ||
            (r = sd_bus_set_bus_client(b, 1)) < 0 || (r = sd_bus_start(b)) < 0) {
            sd_bus_unref(b);
            return r;
        }
    } else if ((r = sd_bus_open_user(&b)) < 0) {
        /* Neither $DBUS_SESSION_BUS_ADDRESS nor $XDG_RUNTIME_DIR/bus. */
        return r;
    }
    st->bus = b;
    st->fd = sd_bus_get_fd(b);
    if (st->fd < 0) {
        r = st->fd;
        st->fd = -1;
        drop_bus(st);
        return r;
    }
    r = sd_bus_match_signal_async(b, &st->match, NULL, NOTIF_PATH, NOTIF_NAME, NULL, on_signal,
                                  NULL, st);
    if (r >= 0) {
        st->events = LOOP_READ;
        r = loop_fd_add(st->loop, st->fd, st->events, on_bus_fd, st);
        if (r < 0) {
            st->fd = -1;
        }
    }
    if (r < 0) {
        drop_bus(st);
        return r;
    }
    update_watch(st);
    return 0;
}

/* The reply to Notify. */
static int on_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error)
{
    (void)ret_error;
    struct desk_job *j = userdata;
    struct desk_state *st = j->st;
    const sd_bus_error *e = sd_bus_message_get_error(m);
    if (e && sd_bus_error_is_set(e)) {
        const char *name = e->name ? e->name : "unknown";
        snprintf(j->res.reason, sizeof(j->res.reason), "%s: %s", name,
                 e->message ? e->message : "");
        if (sd_bus_error_has_name(e, SD_BUS_ERROR_SERVICE_UNKNOWN) ||
            sd_bus_error_has_name(e, SD_BUS_ERROR_NAME_HAS_NO_OWNER) ||
            strncmp(name, "org.freedesktop.DBus.Error.Spawn.", 33) == 0) {
            j->res.status = DELIVER_UNAVAILABLE;
            set_avail(st, AVAIL_NO_SERVER, name);
        } else if (sd_bus_error_has_name(e, SD_BUS_ERROR_NO_REPLY) ||
                   sd_bus_error_has_name(e, SD_BUS_ERROR_TIMEOUT)) {
            if (!sd_bus_is_open(sd_bus_message_get_bus(m))) {
                /* Synthesized while the connection closes. */
                j->res.status = DELIVER_UNAVAILABLE;
                snprintf(j->res.reason, sizeof(j->res.reason), "session bus connection lost");
            } else {
                j->res.status = DELIVER_RETRY;
            }
        } else {
            j->res.status = DELIVER_FAIL;
        }
    } else {
        uint32_t sid = 0;
        int r = sd_bus_message_read(m, "u", &sid);
        if (r < 0) {
            j->res.status = DELIVER_FAIL;
            snprintf(j->res.reason, sizeof(j->res.reason), "bad Notify reply: %s", strerror(-r));
        } else {
            j->res.status = DELIVER_OK;
            snprintf(j->res.ref, sizeof(j->res.ref), "%u", sid);
            map_put(st, sid, j->id, j->collapse);
            set_avail(st, AVAIL_OK, NULL);
        }
    }
    job_report(j);
    return 0;
}

/* Escape text for a body that the server may read as markup. */
static void escape_markup(char *out, size_t cap, const char *in)
{
    size_t o = 0;
    for (; in && *in; in++) {
        const char *rep = NULL;
        switch (*in) {
        case '&':
            rep = "&amp;";
            break;
        case '<':
            rep = "&lt;";
            break;
        case '>':
            rep = "&gt;";
            break;
        default:
            break;
        }
        size_t n = rep ? strlen(rep) : 1;
        if (o + n >= cap) {
            break; /* cannot happen within DESK_BODY_MAX; bounded anyway */
        }
        if (rep) {
            memcpy(out + o, rep, n);
        } else {
            out[o] = *in;
        }
        o += n;
    }
    out[o] = '\0';
}

static uint8_t urgency(enum proto_priority p)
{
    switch (p) {
    case PROTO_PRIO_LOW:
        return 0;
    case PROTO_PRIO_NORMAL:
        return 1;
    case PROTO_PRIO_HIGH:
    case PROTO_PRIO_CRITICAL:
        return 2;
    }
    return 1;
}

static int send_notify(struct desk_state *st, struct desk_job *j, const struct notification *n)
{
    const char *summary = n->title ? n->title : (n->body ? n->body : "");
    const char *body_src = n->title ? n->body : NULL;
    char *body = malloc(DESK_BODY_MAX);
    if (!body) {
        return -ENOMEM;
    }
    escape_markup(body, DESK_BODY_MAX, body_src);
    sd_bus_message *m = NULL;
    int r =
        sd_bus_message_new_method_call(st->bus, &m, NOTIF_NAME, NOTIF_PATH, NOTIF_NAME, "Notify");
    if (r >= 0) {
        r = sd_bus_message_append(m, "susss", st->cfg->desktop_app_name,
                                  map_collapse(st, j->collapse), "", summary, body);
    }
    if (r >= 0) {
        r = sd_bus_message_append(m, "as", 2, "default", "Open");
    }
    if (r >= 0) {
        r = sd_bus_message_append(m, "a{sv}", 1, "urgency", "y", urgency(n->priority));
    }
    if (r >= 0) {
        r = sd_bus_message_append(m, "i", (int32_t)st->cfg->desktop_expire_ms);
    }
    if (r >= 0) {
        r = sd_bus_call_async(st->bus, &j->slot, m, on_reply, j,
                              st->cfg->desktop_timeout_ms * 1000u);
    }
    sd_bus_message_unref(m);
    free(body);
    return r;
}

/* --- ops ----------------------------------------------------------------------- */

static int desk_init(const struct deliver_env *env, void **state, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    struct desk_state *st = calloc(1, sizeof(*st));
    if (!st) {
        return -ENOMEM;
    }
    st->loop = env->loop;
    st->cfg = env->cfg;
    st->on_receipt = env->on_receipt;
    st->receipt_arg = env->receipt_arg;
    st->fd = -1;
    /* Connect now so that the log says early whether desktop notifications
     * will work; a missing bus is not an error (a headless gateway). */
    int r = connect_bus(st);
    if (r < 0) {
        snprintf(st->last_error, sizeof(st->last_error), "%s", strerror(-r));
        set_avail(st, AVAIL_NO_BUS, st->last_error);
        st->next_connect_ms = clock_mono_ms() + DESK_RECONNECT_MS;
    }
    *state = st;
    return 0;
}

static int desk_deliver(void *state, const struct notification *n, deliver_done_cb done, void *arg)
{
    struct desk_state *st = state;
    struct desk_job *j = calloc(1, sizeof(*j));
    if (!j) {
        return -ENOMEM;
    }
    j->st = st;
    j->done = done;
    j->arg = arg;
    snprintf(j->id, sizeof(j->id), "%s", n->id ? n->id : "");
    snprintf(j->collapse, sizeof(j->collapse), "%s", n->collapse_key ? n->collapse_key : "");
    j->next = st->jobs;
    if (st->jobs) {
        st->jobs->prev = j;
    }
    st->jobs = j;

    if (!st->bus && clock_mono_ms() >= st->next_connect_ms) {
        int r = connect_bus(st);
        if (r < 0) {
            snprintf(st->last_error, sizeof(st->last_error), "%s", strerror(-r));
            st->next_connect_ms = clock_mono_ms() + DESK_RECONNECT_MS;
        }
    }
    int r = 0;
    if (!st->bus) {
        set_avail(st, AVAIL_NO_BUS, st->last_error);
        j->res.status = DELIVER_UNAVAILABLE;
        snprintf(j->res.reason, sizeof(j->res.reason), "no session bus: %s", st->last_error);
        r = report_later(j);
    } else if (st->inflight >= DESK_INFLIGHT_MAX) {
        j->res.status = DELIVER_RETRY;
        j->res.retry_after_ms = st->cfg->desktop_timeout_ms;
        snprintf(j->res.reason, sizeof(j->res.reason), "%d Notify calls already waiting",
                 DESK_INFLIGHT_MAX);
        r = report_later(j);
    } else {
        r = send_notify(st, j, n);
        if (r >= 0) {
            st->inflight++;
            update_watch(st); /* may drop the bus: then j is reported later */
        } else if (r == -ENOTCONN || r == -ECONNRESET || r == -EPIPE) {
            /* The connection died since the last wake-up. Inside a callback
             * of sd_bus_process the bus stays: process() drops it when
             * sd-bus reports the end. */
            snprintf(st->last_error, sizeof(st->last_error), "%s", strerror(-r));
            if (!st->in_process) {
                drop_bus(st);
                set_avail(st, AVAIL_NO_BUS, st->last_error);
            }
            j->res.status = DELIVER_UNAVAILABLE;
            snprintf(j->res.reason, sizeof(j->res.reason), "session bus: %s", st->last_error);
            r = report_later(j);
        } else if (r != -ENOMEM) {
            j->res.status = DELIVER_FAIL;
            snprintf(j->res.reason, sizeof(j->res.reason), "cannot build Notify: %s", strerror(-r));
            r = report_later(j);
        }
    }
    if (r < 0) {
        job_unlink(j);
        free(j);
        return r;
    }
    return 0;
}

static void desk_destroy(void *state)
{
    struct desk_state *st = state;
    if (!st) {
        return;
    }
    /* Abandon everything: no callbacks after destroy. */
    while (st->jobs) {
        struct desk_job *j = st->jobs;
        job_unlink(j);
        loop_timer_cancel(st->loop, j->timer);
        sd_bus_slot_unref(j->slot);
        free(j);
    }
    st->inflight = 0;
    drop_bus(st);
    free(st);
}

const struct deliver_ops deliver_desktop_ops = {
    .name = "desktop",
    .channel = PROTO_CH_DESKTOP,
    .init = desk_init,
    .deliver = desk_deliver,
    .destroy = desk_destroy,
};
