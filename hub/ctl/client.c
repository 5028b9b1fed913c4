/* client.c - request/response over MQTT 5 for tidingsctl (see client.h). */
#include "client.h"

#include <errno.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <time.h>

#define CTL_REQUEST_PREFIX "tidings/v1/admin/request/"
#define CTL_REPLY_PREFIX "tidings/v1/admin/reply/"
#define CTL_REPLY_MAX (16u << 20) /* bytes of one answer */

struct ctl_session {
    struct mosquitto *mosq;
    const struct ctl_conn *c;
    char client_id[48];
    char reply_topic[96];
    /* what the callbacks saw */
    bool connected, refused, lost, suback, denied;
    int connack; /* CONNACK reason when refused */
    int pub_mid, pub_reason;
    bool puback;
    unsigned char corr[16];
    char *reply;
    bool oversize;
    char tls_err[200]; /* the first OpenSSL error libmosquitto logged */
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void cb_connect(struct mosquitto *m, void *obj, int rc, int flags,
                       const mosquitto_property *props)
{
    (void)m;
    (void)flags;
    (void)props;
    struct ctl_session *s = obj;
    if (rc == 0) {
        s->connected = true;
    } else {
        s->refused = true;
        s->connack = rc;
    }
}

/* libmosquitto reports why a TLS handshake failed only in its log
 * ("OpenSSL Error[0]: error:0A000086:SSL routines::certificate verify
 * failed"): keep the first such line for the error message. */
static void cb_log(struct mosquitto *m, void *obj, int level, const char *str)
{
    (void)m;
    struct ctl_session *s = obj;
    if (level == MOSQ_LOG_ERR && !s->tls_err[0] && str && strncmp(str, "OpenSSL Error", 13) == 0) {
        const char *p = strstr(str, "]: ");
        snprintf(s->tls_err, sizeof(s->tls_err), "%s", p ? p + 3 : str);
    }
}

static void cb_disconnect(struct mosquitto *m, void *obj, int rc, const mosquitto_property *props)
{
    (void)m;
    (void)rc;
    (void)props;
    struct ctl_session *s = obj;
    s->lost = true;
    s->connected = false;
}

static void cb_subscribe(struct mosquitto *m, void *obj, int mid, int n, const int *granted,
                         const mosquitto_property *props)
{
    (void)m;
    (void)mid;
    (void)props;
    struct ctl_session *s = obj;
    s->suback = true;
    if (n < 1 || granted[0] >= 0x80) {
        s->denied = true;
    }
}

static void cb_publish(struct mosquitto *m, void *obj, int mid, int reason,
                       const mosquitto_property *props)
{
    (void)m;
    (void)props;
    struct ctl_session *s = obj;
    if (mid == s->pub_mid) {
        s->puback = true;
        s->pub_reason = reason;
    }
}

static void cb_message(struct mosquitto *m, void *obj, const struct mosquitto_message *msg,
                       const mosquitto_property *props)
{
    (void)m;
    struct ctl_session *s = obj;
    if (s->reply || strcmp(msg->topic, s->reply_topic) != 0) {
        return;
    }
    void *corr = NULL;
    uint16_t len = 0;
    if (!mosquitto_property_read_binary(props, MQTT_PROP_CORRELATION_DATA, &corr, &len, false)) {
        return;
    }
    bool mine = len == sizeof(s->corr) && memcmp(corr, s->corr, len) == 0;
    free(corr);
    if (!mine) {
        return; /* an answer to an earlier request that timed out */
    }
    if ((size_t)msg->payloadlen > CTL_REPLY_MAX) {
        s->oversize = true;
        return;
    }
    s->reply = malloc((size_t)msg->payloadlen + 1);
    if (s->reply) {
        memcpy(s->reply, msg->payload, (size_t)msg->payloadlen);
        s->reply[msg->payloadlen] = '\0';
    }
}

/* Does a packet wait inside OpenSSL or the socket without a new poll event? */
static bool read_pending(struct mosquitto *m)
{
    SSL *ssl = mosquitto_ssl_get(m);
    if (ssl && SSL_pending(ssl) > 0) {
        return true;
    }
    int avail = 0;
    int sock = mosquitto_socket(m);
    return sock >= 0 && ioctl(sock, FIONREAD, &avail) == 0 && avail > 0;
}

enum wait_for { W_CONNECT, W_SUBACK, W_REPLY };

static bool done(const struct ctl_session *s, enum wait_for w)
{
    if (s->refused || s->lost || s->denied || s->oversize) {
        return true;
    }
    switch (w) {
    case W_CONNECT:
        return s->connected;
    case W_SUBACK:
        return s->suback;
    case W_REPLY:
        return s->reply != NULL || (s->puback && s->pub_reason >= 0x80);
    }
    return true;
}

/* Drive libmosquitto until the condition holds, the connection fails or
 * the deadline passes. 0 when the condition holds, -1 otherwise. */
static int pump(struct ctl_session *s, enum wait_for w, int64_t deadline, char *err, size_t errlen)
{
    while (!done(s, w)) {
        int64_t left = deadline - now_ms();
        if (left <= 0) {
            return -1;
        }
        int sock = mosquitto_socket(s->mosq);
        if (sock < 0) {
            s->lost = true;
            break;
        }
        struct pollfd pfd = {.fd = sock, .events = POLLIN};
        if (mosquitto_want_write(s->mosq)) {
            pfd.events |= POLLOUT;
        }
        int rc = poll(&pfd, 1, (int)(left < 1000 ? left : 1000));
        if (rc < 0 && errno != EINTR) {
            snprintf(err, errlen, "poll: %s", strerror(errno));
            s->lost = true;
            break;
        }
        int mrc = MOSQ_ERR_SUCCESS;
        if (rc > 0 && (pfd.revents & (POLLIN | POLLERR | POLLHUP))) {
            for (int i = 0; i < 64 && mrc == MOSQ_ERR_SUCCESS; i++) {
                mrc = mosquitto_loop_read(s->mosq, 1);
                if (done(s, w) || !read_pending(s->mosq)) {
                    break;
                }
            }
        }
        if (mrc == MOSQ_ERR_SUCCESS && (rc > 0 && (pfd.revents & POLLOUT))) {
            mrc = mosquitto_loop_write(s->mosq, 1);
        }
        if (mrc == MOSQ_ERR_SUCCESS) {
            mrc = mosquitto_loop_misc(s->mosq);
        }
        if (mrc != MOSQ_ERR_SUCCESS && !s->refused) {
            snprintf(err, errlen, "%s",
                     mrc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(mrc));
            s->lost = true;
        }
    }
    return done(s, w) && !s->refused && !s->lost && !s->denied && !s->oversize ? 0 : -1;
}

static int fail_conn(struct ctl_session *s, const char *what, char *err, size_t errlen,
                     const char *detail)
{
    const struct ctl_conn *c = s->c;
    if (s->refused) {
        bool auth = s->connack == MQTT_RC_NOT_AUTHORIZED ||
                    s->connack == MQTT_RC_BAD_USERNAME_OR_PASSWORD || s->connack == 5 ||
                    s->connack == 4;
        snprintf(err, errlen, "broker %s:%d refused the connection: %s%s", c->host, c->port,
                 mosquitto_reason_string(s->connack),
                 auth ? " (check -u/-P or the config file's username/password)" : "");
        return auth ? CTL_NOT_AUTHORIZED : CTL_NO_ANSWER;
    }
    if (s->denied) {
        snprintf(err, errlen,
                 "not authorized to subscribe to %s (the broker's ACL must let the "
                 "admin user read tidings/v1/admin/reply/#)",
                 s->reply_topic);
        return CTL_NOT_AUTHORIZED;
    }
    if (s->lost && s->tls_err[0]) {
        snprintf(err, errlen,
                 "cannot %s broker %s:%d: TLS handshake failed: %s (check --cafile: the CA "
                 "that signed the broker's certificate; --cert/--key if the broker requires a "
                 "client certificate; the host name, or --insecure)",
                 what, c->host, c->port, s->tls_err);
        return CTL_NO_ANSWER;
    }
    if (s->lost) {
        /* Under TLS 1.3 a broker's "certificate required" alert may come
         * after the handshake, as a broken connection: say what to check. */
        bool tls_hint = !s->connected && c->cafile && *c->cafile && !(c->certfile && *c->certfile);
        snprintf(err, errlen, "cannot %s broker %s:%d: %s%s", what, c->host, c->port,
                 detail && *detail ? detail : "connection lost",
                 tls_hint ? " (over TLS: does the broker require a client certificate? give "
                            "--cert and --key)"
                          : "");
        return CTL_NO_ANSWER;
    }
    snprintf(err, errlen, "cannot reach broker %s:%d within %d.%d s", c->host, c->port,
             c->timeout_ms / 1000, (c->timeout_ms % 1000) / 100);
    return CTL_NO_ANSWER;
}

int ctl_connect(const struct ctl_conn *c, ctl_session_t **out, char *err, size_t errlen)
{
    mosquitto_lib_init();
    struct ctl_session *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return CTL_USAGE;
    }
    s->c = c;
    unsigned char rnd[8];
    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
        snprintf(err, errlen, "getrandom: %s", strerror(errno));
        free(s);
        return CTL_USAGE;
    }
    int n = snprintf(s->client_id, sizeof(s->client_id), "tidingsctl-");
    for (size_t i = 0; i < sizeof(rnd); i++) {
        n += snprintf(s->client_id + n, sizeof(s->client_id) - (size_t)n, "%02x", rnd[i]);
    }
    snprintf(s->reply_topic, sizeof(s->reply_topic), CTL_REPLY_PREFIX "%s", s->client_id);
    s->mosq = mosquitto_new(s->client_id, true, s);
    if (!s->mosq) {
        snprintf(err, errlen, "mosquitto_new: %s", strerror(errno));
        free(s);
        return CTL_USAGE;
    }
    mosquitto_int_option(s->mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
    mosquitto_int_option(s->mosq, MOSQ_OPT_TCP_NODELAY, 1);
    mosquitto_connect_v5_callback_set(s->mosq, cb_connect);
    mosquitto_disconnect_v5_callback_set(s->mosq, cb_disconnect);
    mosquitto_subscribe_v5_callback_set(s->mosq, cb_subscribe);
    mosquitto_publish_v5_callback_set(s->mosq, cb_publish);
    mosquitto_message_v5_callback_set(s->mosq, cb_message);
    mosquitto_log_callback_set(s->mosq, cb_log);
    int rc = MOSQ_ERR_SUCCESS;
    if (c->username && *c->username) {
        rc = mosquitto_username_pw_set(s->mosq, c->username,
                                       c->password && *c->password ? c->password : NULL);
    }
    if (rc == MOSQ_ERR_SUCCESS && c->cafile && *c->cafile) {
        rc = mosquitto_tls_set(s->mosq, c->cafile, NULL,
                               c->certfile && *c->certfile ? c->certfile : NULL,
                               c->keyfile && *c->keyfile ? c->keyfile : NULL, NULL);
        if (rc == MOSQ_ERR_SUCCESS && c->insecure) {
            rc = mosquitto_tls_insecure_set(s->mosq, true);
        }
        if (rc != MOSQ_ERR_SUCCESS) {
            snprintf(err, errlen, "TLS setup (cafile %s, cert %s, key %s): %s", c->cafile,
                     c->certfile ? c->certfile : "-", c->keyfile ? c->keyfile : "-",
                     mosquitto_strerror(rc));
            ctl_close(s);
            return CTL_USAGE;
        }
    }
    if (rc != MOSQ_ERR_SUCCESS) {
        snprintf(err, errlen, "%s", mosquitto_strerror(rc));
        ctl_close(s);
        return CTL_USAGE;
    }
    int64_t deadline = now_ms() + c->timeout_ms;
    rc = mosquitto_connect_async(s->mosq, c->host, c->port, 30);
    if (rc != MOSQ_ERR_SUCCESS) {
        /* (with TLS the handshake may already fail here) */
        s->lost = true;
        int code = fail_conn(s, "connect to", err, errlen,
                             rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
        ctl_close(s);
        return code;
    }
    char detail[256] = "";
    if (pump(s, W_CONNECT, deadline, detail, sizeof(detail)) < 0) {
        int code = fail_conn(s, "connect to", err, errlen, detail);
        ctl_close(s);
        return code;
    }
    if (mosquitto_subscribe_v5(s->mosq, NULL, s->reply_topic, 1, 0, NULL) != MOSQ_ERR_SUCCESS ||
        pump(s, W_SUBACK, deadline, detail, sizeof(detail)) < 0) {
        int code = fail_conn(s, "subscribe on", err, errlen, detail);
        ctl_close(s);
        return code;
    }
    *out = s;
    return 0;
}

int ctl_request(ctl_session_t *s, const char *command, const char *payload, char **reply, char *err,
                size_t errlen)
{
    char topic[160];
    snprintf(topic, sizeof(topic), CTL_REQUEST_PREFIX "%s", command);
    if (getrandom(s->corr, sizeof(s->corr), 0) != (ssize_t)sizeof(s->corr)) {
        snprintf(err, errlen, "getrandom: %s", strerror(errno));
        return CTL_USAGE;
    }
    free(s->reply);
    s->reply = NULL;
    s->puback = false;
    mosquitto_property *props = NULL;
    int rc = mosquitto_property_add_string(&props, MQTT_PROP_RESPONSE_TOPIC, s->reply_topic);
    if (rc == MOSQ_ERR_SUCCESS) {
        rc = mosquitto_property_add_binary(&props, MQTT_PROP_CORRELATION_DATA, s->corr,
                                           sizeof(s->corr));
    }
    /* The request expires with the caller's patience: a hub that starts
     * later must not act on a request nobody waits for any more. */
    uint32_t expiry = (uint32_t)(s->c->timeout_ms + 999) / 1000;
    if (rc == MOSQ_ERR_SUCCESS) {
        rc = mosquitto_property_add_int32(&props, MQTT_PROP_MESSAGE_EXPIRY_INTERVAL, expiry);
    }
    if (rc == MOSQ_ERR_SUCCESS) {
        rc = mosquitto_publish_v5(s->mosq, &s->pub_mid, topic, (int)strlen(payload), payload, 1,
                                  false, props);
    }
    mosquitto_property_free_all(&props);
    if (rc != MOSQ_ERR_SUCCESS) {
        snprintf(err, errlen, "publish to %s: %s", topic, mosquitto_strerror(rc));
        return CTL_NO_ANSWER;
    }
    int64_t deadline = now_ms() + s->c->timeout_ms;
    char detail[256] = "";
    if (pump(s, W_REPLY, deadline, detail, sizeof(detail)) == 0) {
        if (s->reply) {
            *reply = s->reply;
            s->reply = NULL;
            return 0;
        }
        snprintf(err, errlen,
                 "not authorized to publish on %s (%s): the broker's ACL does not "
                 "allow this command for this user",
                 topic, mosquitto_reason_string(s->pub_reason));
        return CTL_NOT_AUTHORIZED;
    }
    if (s->oversize) {
        snprintf(err, errlen, "the answer is larger than %u bytes", CTL_REPLY_MAX);
        return CTL_NO_ANSWER;
    }
    if (s->lost || s->refused || s->denied) {
        return fail_conn(s, "talk to", err, errlen, detail);
    }
    snprintf(err, errlen,
             "no answer from a hub within %d.%d s (is tidings-hub running and "
             "connected to %s:%d?)",
             s->c->timeout_ms / 1000, (s->c->timeout_ms % 1000) / 100, s->c->host, s->c->port);
    return CTL_NO_ANSWER;
}

void ctl_close(ctl_session_t *s)
{
    if (!s) {
        return;
    }
    if (s->mosq) {
        if (s->connected) {
            mosquitto_disconnect(s->mosq);
            mosquitto_loop_write(s->mosq, 1);
        }
        mosquitto_destroy(s->mosq);
    }
    free(s->reply);
    free(s);
    mosquitto_lib_cleanup();
}
