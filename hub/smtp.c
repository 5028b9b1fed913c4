/*
 * smtp.c - SMTP submission for the email channel: libcurl on a small pool
 * of worker threads, results handed back to the loop through an eventfd.
 *
 * Why threads and not curl's multi interface, as hub/http.c does: libcurl
 * reads the server's reply to the end-of-data "." with a *blocking* wait
 * inside its SMTP "done" phase (smtp_done -> smtp_block_statemach), in
 * every version to date (curl issue #8555, "known issue", listed in curl's
 * TODO under "More non-blocking"). Through the multi interface that stall
 * lands on the hub's loop for as long as the server takes to accept the
 * message (content scanning: often seconds), freezing APNs/FCM traffic and
 * MQTT with it. STYLE rule 8: work that must block goes to a worker queue,
 * not to the loop. So each worker owns one easy handle (one SMTP connection,
 * reused across messages) and runs curl_easy_perform; nothing of curl ever
 * runs on the loop thread.
 *
 * Threading contract (the only shared state is struct smtp's queues):
 *   - loop thread: smtp_send pushes to `pending` under `mu` and signals
 *     `cv`; on_wake drains `finished` under `mu` and calls done callbacks
 *     with `mu` released; smtp_destroy stops and joins the workers.
 *   - workers: pop from `pending`, perform, push to `finished`, write the
 *     eventfd. They never log, never touch the loop, never call callbacks.
 *   - a job belongs to exactly one place at a time: pending, a worker, or
 *     finished; whoever takes it out of a list owns it.
 *
 * curl codes are mapped to smtp_fail / negative errors here and nowhere else.
 */
#include "smtp.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <curl/curl.h>

#include "error.h"
#include "log.h"

#define MOD "smtp"

#define DEF_MAX_ACTIVE 2u
#define MAX_ACTIVE_CAP 64u
#define DEF_QUEUE_MAX 1024u
#define DEF_TIMEOUT_MS 60000u
#define DEF_CONNECT_TIMEOUT_MS 10000u
#define URL_MAX 512
#define HELO_MAX 255

struct job {
    struct job *next;
    smtp_t *s;
    curl_socket_t *sock; /* the worker's connection socket while it runs */
    smtp_done_cb done;
    void *ctx;

    char from[SMTP_ADDR_MAX + 3]; /* "<addr>" */
    char rcpt[SMTP_ADDR_MAX + 3];
    struct curl_slist rcpt_node;
    char *msg;
    size_t len, off;

    /* filled by the worker */
    CURLcode cc;
    int code;                       /* last reply code (curl's, or from the lines seen) */
    int line_code;                  /* code of `reply` */
    char reply[SMTP_REPLY_MAX + 1]; /* last reply line */
    char errbuf[CURL_ERROR_SIZE];
    uint64_t start_ms, end_ms;
    uint64_t deadline_ms; /* start + timeout: enforced in on_progress */
    bool timed_out;       /* on_progress aborted it for the deadline */
};

struct jlist {
    struct job *head, *tail;
};

struct smtp {
    loop_t *loop;
    int efd; /* eventfd: workers -> loop "finished is not empty" */

    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct jlist pending, finished; /* under mu */
    unsigned npending, nrunning;    /* under mu */
    atomic_bool stopping;

    pthread_t threads[MAX_ACTIVE_CAP];
    unsigned nthreads;
    bool mu_ok, cv_ok, curl_ok;

    unsigned max_active, queue_max;
    uint64_t timeout_ms, connect_timeout_ms;
    enum smtp_auth auth;
    char url[URL_MAX];
    char *ca_file;
    char *username;
    char *password;
};

const char *smtp_fail_name(enum smtp_fail f)
{
    switch (f) {
    case SMTP_FAIL_NONE:
        return "none";
    case SMTP_FAIL_CONNECT:
        return "connect";
    case SMTP_FAIL_TIMEOUT:
        return "timeout";
    case SMTP_FAIL_TLS:
        return "tls";
    case SMTP_FAIL_AUTH:
        return "auth";
    case SMTP_FAIL_REPLY:
        return "reply";
    case SMTP_FAIL_LOST:
        return "lost";
    }
    return "?";
}

static void jlist_push(struct jlist *l, struct job *j)
{
    j->next = NULL;
    if (l->tail) {
        l->tail->next = j;
    } else {
        l->head = j;
    }
    l->tail = j;
}

static struct job *jlist_pop(struct jlist *l)
{
    struct job *j = l->head;
    if (j) {
        l->head = j->next;
        if (!l->head) {
            l->tail = NULL;
        }
        j->next = NULL;
    }
    return j;
}

static void job_free(struct job *j)
{
    free(j->msg);
    free(j);
}

/* --- errors ---------------------------------------------------------- */

/* Classify a finished transfer from curl's code and the last reply code. */
static enum smtp_fail classify(CURLcode c, int code, int *err)
{
    switch (c) {
    case CURLE_OK:
        *err = 0;
        return SMTP_FAIL_NONE;
    case CURLE_COULDNT_CONNECT:
        *err = -ECONNREFUSED;
        return SMTP_FAIL_CONNECT;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        *err = -EHOSTUNREACH;
        return SMTP_FAIL_CONNECT;
    case CURLE_OPERATION_TIMEDOUT:
        *err = -ETIMEDOUT;
        return SMTP_FAIL_TIMEOUT;
    case CURLE_LOGIN_DENIED:
    case CURLE_AUTH_ERROR:
        *err = -EACCES;
        return SMTP_FAIL_AUTH;
    case CURLE_USE_SSL_FAILED:    /* STARTTLS not offered, or refused */
    case CURLE_SSL_CONNECT_ERROR: /* handshake failed */
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
        *err = -EPROTO;
        return SMTP_FAIL_TLS;
    case CURLE_OUT_OF_MEMORY:
        *err = -ENOMEM;
        return SMTP_FAIL_LOST;
    default:
        break;
    }
    /* MAIL/RCPT refused (CURLE_SEND_ERROR "RCPT failed: 550"), final reply
     * after DATA not 250 (CURLE_WEIRD_SERVER_REPLY): the reply code tells.
     * A 2xx/3xx code with an error means the connection went away after
     * that reply. */
    if (code >= 400 && code <= 599) {
        *err = TDG_EHTTP;
        return SMTP_FAIL_REPLY;
    }
    *err = -ECONNRESET;
    return SMTP_FAIL_LOST;
}

/* --- worker side ------------------------------------------------------ */

/* The message, fed to curl's upload. */
static size_t on_read(char *buf, size_t size, size_t nitems, void *userdata)
{
    struct job *j = userdata;
    size_t room = size * nitems;
    size_t left = j->len - j->off;
    size_t n = left < room ? left : room;
    memcpy(buf, j->msg + j->off, n);
    j->off += n;
    return n;
}

/* Every server reply line ("250-SIZE 1048576", "550 5.1.1 ..."); curl
 * passes them as "headers". Keep the last one and its code (but see QUIT). */
static size_t on_reply(char *ptr, size_t size, size_t nitems, void *userdata)
{
    struct job *j = userdata;
    size_t n = size * nitems;
    size_t len = n;
    while (len > 0 && (ptr[len - 1] == '\r' || ptr[len - 1] == '\n')) {
        len--;
    }
    /* After a refusal curl says QUIT: its "221 Bye" must not hide the
     * refusal, which is what the channel reports. */
    bool bye = len >= 3 && memcmp(ptr, "221", 3) == 0;
    if (!bye && len >= 3 && ptr[0] >= '2' && ptr[0] <= '5' && ptr[1] >= '0' && ptr[1] <= '9' &&
        ptr[2] >= '0' && ptr[2] <= '9') {
        j->line_code = (ptr[0] - '0') * 100 + (ptr[1] - '0') * 10 + (ptr[2] - '0');
        if (len > SMTP_REPLY_MAX) {
            len = SMTP_REPLY_MAX;
        }
        /* Replies are ASCII; anything else would only garble logs. */
        for (size_t i = 0; i < len; i++) {
            unsigned char c = (unsigned char)ptr[i];
            j->reply[i] = (c < 0x20 || c > 0x7e) ? '?' : (char)c;
        }
        j->reply[len] = '\0';
    }
    return n;
}

/*
 * Called by curl at least once a second, also inside its blocking wait for
 * the reply to the end of the message. Aborts the transfer when the client
 * is being destroyed, and enforces timeout_ms itself: in that wait curl
 * 7.88 honours neither CURLOPT_TIMEOUT_MS nor the server response timeout
 * (seen: a 1.5 s timeout waited 8 s for a slow server, polling every
 * second), so a server that never answers would hold a worker forever.
 */
static int on_progress(void *clientp, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    (void)dltotal;
    (void)dlnow;
    (void)ultotal;
    (void)ulnow;
    struct job *j = clientp;
    bool stop = atomic_load(&j->s->stopping);
    if (!stop && clock_mono_ms() < j->deadline_ms) {
        return 0;
    }
    j->timed_out = !stop;
    /* Aborting alone is not enough: curl then closes the connection
     * politely, sending QUIT and waiting (up to 120 s, with none of our
     * callbacks) for a server that is not answering. Shut the socket first
     * so that QUIT fails at once. */
    if (*j->sock != CURL_SOCKET_BAD) {
        shutdown(*j->sock, SHUT_RDWR);
    }
    return 1;
}

/* The worker's connection socket, tracked so on_progress can shut it
 * (CURLINFO_ACTIVESOCKET is not available in curl's "done" phase). */
static int on_sockopt(void *clientp, curl_socket_t fd, curlsocktype purpose)
{
    (void)purpose;
    curl_socket_t *slot = clientp;
    *slot = fd;
    return CURL_SOCKOPT_OK;
}

static int on_close(void *clientp, curl_socket_t fd)
{
    curl_socket_t *slot = clientp;
    if (*slot == fd) {
        *slot = CURL_SOCKET_BAD;
    }
    return close(fd);
}

static CURLcode setup_easy(smtp_t *s, CURL *e, struct job *j)
{
    CURLcode c = CURLE_OK;
#define SET(opt, val)                                                                              \
    do {                                                                                           \
        if (c == CURLE_OK) {                                                                       \
            c = curl_easy_setopt(e, opt, val);                                                     \
        }                                                                                          \
    } while (0)
    SET(CURLOPT_URL, s->url);
#if LIBCURL_VERSION_NUM >= 0x075500
    SET(CURLOPT_PROTOCOLS_STR, "smtp,smtps");
#else
    SET(CURLOPT_PROTOCOLS, (long)(CURLPROTO_SMTP | CURLPROTO_SMTPS));
#endif
    SET(CURLOPT_NOSIGNAL, 1L); /* required with threads */
    /* Never plaintext: STARTTLS must succeed, or the transfer fails before
     * AUTH and before any address or byte of the message is sent. */
    SET(CURLOPT_USE_SSL, (long)CURLUSESSL_ALL);
    SET(CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
    if (s->ca_file) {
        SET(CURLOPT_CAINFO, s->ca_file);
    }
    if (s->username) {
        SET(CURLOPT_USERNAME, s->username);
        SET(CURLOPT_PASSWORD, s->password ? s->password : "");
        if (s->auth == SMTP_AUTH_PLAIN) {
            SET(CURLOPT_LOGIN_OPTIONS, "AUTH=PLAIN");
        } else if (s->auth == SMTP_AUTH_LOGIN) {
            SET(CURLOPT_LOGIN_OPTIONS, "AUTH=LOGIN");
        }
    }
    SET(CURLOPT_MAIL_FROM, j->from);
    SET(CURLOPT_MAIL_RCPT, &j->rcpt_node);
    SET(CURLOPT_UPLOAD, 1L);
    SET(CURLOPT_READFUNCTION, on_read);
    SET(CURLOPT_READDATA, (void *)j);
    SET(CURLOPT_INFILESIZE_LARGE, (curl_off_t)j->len);
    SET(CURLOPT_HEADERFUNCTION, on_reply);
    SET(CURLOPT_HEADERDATA, (void *)j);
    SET(CURLOPT_ERRORBUFFER, j->errbuf);
    SET(CURLOPT_NOPROGRESS, 0L);
    SET(CURLOPT_XFERINFOFUNCTION, on_progress);
    SET(CURLOPT_XFERINFODATA, (void *)j);
    SET(CURLOPT_TIMEOUT_MS, (long)s->timeout_ms);

    SET(CURLOPT_CONNECTTIMEOUT_MS, (long)s->connect_timeout_ms);
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    SET(CURLOPT_MAXCONNECTS, 1L); /* one connection per worker */
    SET(CURLOPT_SOCKOPTFUNCTION, on_sockopt);
    SET(CURLOPT_SOCKOPTDATA, (void *)j->sock);
    SET(CURLOPT_CLOSESOCKETFUNCTION, on_close);
    SET(CURLOPT_CLOSESOCKETDATA, (void *)j->sock);
#undef SET
    return c;
}

/* One transfer on the worker's handle. */
static void perform(smtp_t *s, CURL *e, curl_socket_t *sock, struct job *j)
{
    j->sock = sock;
    j->start_ms = clock_mono_ms();
    j->deadline_ms = j->start_ms + s->timeout_ms;
    curl_easy_reset(e); /* options only: the cached connection is kept */
    j->cc = setup_easy(s, e, j);
    if (j->cc == CURLE_OK) {
        j->cc = curl_easy_perform(e);
    }
    long code = 0;
    if (curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code) == CURLE_OK && code > 0) {
        j->code = (int)code;
    } else {
        j->code = j->line_code;
    }
    if (j->cc != CURLE_OK && j->errbuf[0] == '\0') {
        snprintf(j->errbuf, sizeof(j->errbuf), "%s", curl_easy_strerror(j->cc));
    }
    j->end_ms = clock_mono_ms();
}

static void *worker(void *arg)
{
    smtp_t *s = arg;
    CURL *e = curl_easy_init();
    curl_socket_t sock = CURL_SOCKET_BAD; /* e's one connection */
    for (;;) {
        pthread_mutex_lock(&s->mu);
        while (!atomic_load(&s->stopping) && !s->pending.head) {
            pthread_cond_wait(&s->cv, &s->mu);
        }
        if (atomic_load(&s->stopping)) {
            pthread_mutex_unlock(&s->mu);
            break;
        }
        struct job *j = jlist_pop(&s->pending);
        s->npending--;
        s->nrunning++;
        pthread_mutex_unlock(&s->mu);

        if (!e) {
            e = curl_easy_init();
        }
        if (e) {
            perform(s, e, &sock, j);
            if (j->cc != CURLE_OK) {
                /* After a failure the connection may be mid-transaction
                 * (a timeout while the server still owes the DATA reply):
                 * never reuse it. A fresh handle has no cached connection. */
                curl_easy_cleanup(e);
                e = NULL;
                sock = CURL_SOCKET_BAD;
            }
        } else {
            j->cc = CURLE_OUT_OF_MEMORY;
            snprintf(j->errbuf, sizeof(j->errbuf), "out of memory");
        }

        pthread_mutex_lock(&s->mu);
        s->nrunning--;
        jlist_push(&s->finished, j);
        pthread_mutex_unlock(&s->mu);
        uint64_t one = 1;
        ssize_t w = write(s->efd, &one, sizeof(one)); /* cannot block: counter */
        (void)w;
    }
    if (e) {
        curl_easy_cleanup(e);
    }
    return NULL;
}

/* --- loop side ----------------------------------------------------------- */

static void deliver(struct job *j)
{
    struct smtp_result r;
    memset(&r, 0, sizeof(r));
    r.code = j->code;
    if (j->line_code != j->code) {
        /* The line we kept belongs to another reply; do not pair them. */
        j->reply[0] = '\0';
    }
    if (j->timed_out) {
        j->cc = CURLE_OPERATION_TIMEDOUT;
        snprintf(j->errbuf, sizeof(j->errbuf), "no reply within the timeout");
    }
    r.fail = classify(j->cc, r.code, &r.error);
    if (j->cc == CURLE_OK) {
        j->errbuf[0] = '\0';
    }
    r.reply = j->reply;
    r.error_text = j->errbuf;
    r.elapsed_ms = j->end_ms > j->start_ms ? j->end_ms - j->start_ms : 0;
    j->done(j->ctx, &r);
}

static void on_wake(loop_t *loop, int fd, unsigned events, void *arg)
{
    (void)loop;
    (void)events;
    smtp_t *s = arg;
    uint64_t n;
    ssize_t r = read(fd, &n, sizeof(n));
    (void)r;
    pthread_mutex_lock(&s->mu);
    struct jlist done = s->finished;
    s->finished.head = s->finished.tail = NULL;
    pthread_mutex_unlock(&s->mu);
    struct job *j;
    while ((j = jlist_pop(&done)) != NULL) {
        deliver(j); /* may call smtp_send: mu is not held */
        job_free(j);
    }
}

/* --- public ------------------------------------------------------------ */

static bool has_crlf(const char *v)
{
    return strchr(v, '\r') != NULL || strchr(v, '\n') != NULL;
}

/* A bare address as SMTP carries it: printable ASCII, no spaces or <>. */
static bool addr_ok(const char *a)
{
    size_t n = 0;
    for (; a[n]; n++) {
        unsigned char c = (unsigned char)a[n];
        if (c <= 0x20 || c >= 0x7f || c == '<' || c == '>' || n >= SMTP_ADDR_MAX) {
            return false;
        }
    }
    return n > 0;
}

static char *dup_opt(const char *v)
{
    return v && *v ? strdup(v) : NULL;
}

static void wipe_free(char *p)
{
    if (p) {
        explicit_bzero(p, strlen(p));
        free(p);
    }
}

int smtp_create(loop_t *loop, const struct smtp_opts *opts, smtp_t **out)
{
    *out = NULL;
    const char *url = opts->url ? opts->url : "";
    const char *helo = opts->helo && *opts->helo ? opts->helo : "localhost";
    if ((strncmp(url, "smtp://", 7) != 0 && strncmp(url, "smtps://", 8) != 0) || has_crlf(url) ||
        has_crlf(helo) || strchr(helo, '/') || strlen(helo) > HELO_MAX) {
        return -EINVAL;
    }
    /* curl takes the EHLO name from the URL path: smtp://host:port/<helo>. */
    const char *host = url + (url[4] == 's' ? 8 : 7);
    const char *slash = strchr(host, '/');
    size_t base = slash ? (size_t)(slash - url) : strlen(url);
    if (base == (size_t)(host - url)) {
        return -EINVAL; /* no host */
    }

    smtp_t *s = calloc(1, sizeof(*s));
    if (!s) {
        return -ENOMEM;
    }
    s->loop = loop;
    s->efd = -1;
    atomic_init(&s->stopping, false);
    int rc = 0;
    int n = snprintf(s->url, sizeof(s->url), "%.*s/%s", (int)base, url, helo);
    if (n < 0 || (size_t)n >= sizeof(s->url)) {
        rc = -EINVAL;
        goto fail;
    }
    /* Before any thread: curl_global_init is not thread-safe everywhere. */
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        rc = TDG_EHTTP;
        goto fail;
    }
    s->curl_ok = true;
    const curl_version_info_data *vi = curl_version_info(CURLVERSION_NOW);
    bool has_smtp = false;
    for (const char *const *p = vi->protocols; p && *p; p++) {
        has_smtp = has_smtp || strcmp(*p, "smtp") == 0;
    }
    if (!has_smtp || !(vi->features & CURL_VERSION_SSL)) {
        LOG_ERROR(MOD, "libcurl %s lacks SMTP or TLS", vi->version);
        rc = TDG_EHTTP;
        goto fail;
    }
    s->max_active = opts->max_active ? opts->max_active : DEF_MAX_ACTIVE;
    if (s->max_active > MAX_ACTIVE_CAP) {
        s->max_active = MAX_ACTIVE_CAP;
    }
    s->queue_max = opts->queue_max ? opts->queue_max : DEF_QUEUE_MAX;
    s->timeout_ms = opts->timeout_ms ? opts->timeout_ms : DEF_TIMEOUT_MS;
    s->connect_timeout_ms =
        opts->connect_timeout_ms ? opts->connect_timeout_ms : DEF_CONNECT_TIMEOUT_MS;
    s->auth = opts->auth;
    s->ca_file = dup_opt(opts->ca_file);
    s->username = dup_opt(opts->username);
    s->password = dup_opt(opts->password);
    if ((opts->ca_file && *opts->ca_file && !s->ca_file) ||
        (opts->username && *opts->username && !s->username) ||
        (opts->password && *opts->password && !s->password)) {
        rc = -ENOMEM;
        goto fail;
    }
    if (pthread_mutex_init(&s->mu, NULL) != 0) {
        rc = -ENOMEM;
        goto fail;
    }
    s->mu_ok = true;
    if (pthread_cond_init(&s->cv, NULL) != 0) {
        rc = -ENOMEM;
        goto fail;
    }
    s->cv_ok = true;
    s->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (s->efd < 0) {
        rc = -errno;
        goto fail;
    }
    rc = loop_fd_add(loop, s->efd, LOOP_READ, on_wake, s);
    if (rc < 0) {
        close(s->efd);
        s->efd = -1;
        goto fail;
    }
    for (unsigned i = 0; i < s->max_active; i++) {
        int e = pthread_create(&s->threads[i], NULL, worker, s);
        if (e != 0) {
            rc = -e;
            goto fail;
        }
        s->nthreads++;
    }
    *out = s;
    return 0;
fail:
    smtp_destroy(s);
    return rc;
}

void smtp_destroy(smtp_t *s)
{
    if (!s) {
        return;
    }
    if (s->mu_ok) {
        pthread_mutex_lock(&s->mu);
        atomic_store(&s->stopping, true);
        /* Jobs not started are simply dropped (no callbacks). */
        struct job *j;
        while ((j = jlist_pop(&s->pending)) != NULL) {
            job_free(j);
        }
        s->npending = 0;
        if (s->cv_ok) {
            pthread_cond_broadcast(&s->cv);
        }
        pthread_mutex_unlock(&s->mu);
    }
    /* A worker in a transfer notices `stopping` in curl's progress callback
     * (at least once a second) and aborts; join waits for that. */
    for (unsigned i = 0; i < s->nthreads; i++) {
        pthread_join(s->threads[i], NULL);
    }
    struct job *j;
    while ((j = jlist_pop(&s->finished)) != NULL) {
        job_free(j);
    }
    if (s->efd >= 0) {
        loop_fd_del(s->loop, s->efd);
        close(s->efd);
    }
    if (s->cv_ok) {
        pthread_cond_destroy(&s->cv);
    }
    if (s->mu_ok) {
        pthread_mutex_destroy(&s->mu);
    }
    free(s->ca_file);
    wipe_free(s->username);
    wipe_free(s->password);
    explicit_bzero(s->url, sizeof(s->url));
    if (s->curl_ok) {
        curl_global_cleanup();
    }
    free(s);
}

unsigned smtp_active(const smtp_t *s)
{
    smtp_t *m = (smtp_t *)s;
    pthread_mutex_lock(&m->mu);
    unsigned n = m->nrunning;
    pthread_mutex_unlock(&m->mu);
    return n;
}

unsigned smtp_queued(const smtp_t *s)
{
    smtp_t *m = (smtp_t *)s;
    pthread_mutex_lock(&m->mu);
    unsigned n = m->npending;
    pthread_mutex_unlock(&m->mu);
    return n;
}

int smtp_send(smtp_t *s, const char *mail_from, const char *rcpt_to, const char *msg, size_t len,
              smtp_done_cb done, void *ctx)
{
    if (atomic_load(&s->stopping)) {
        return TDG_ECLOSED;
    }
    if (!addr_ok(mail_from) || !addr_ok(rcpt_to) || !done) {
        return -EINVAL;
    }
    if (len > SMTP_MESSAGE_MAX) {
        return TDG_ETOOBIG;
    }
    struct job *j = calloc(1, sizeof(*j));
    if (!j) {
        return -ENOMEM;
    }
    j->msg = malloc(len ? len : 1);
    if (!j->msg) {
        free(j);
        return -ENOMEM;
    }
    memcpy(j->msg, msg, len);
    j->len = len;
    j->s = s;
    j->done = done;
    j->ctx = ctx;
    snprintf(j->from, sizeof(j->from), "<%s>", mail_from);
    snprintf(j->rcpt, sizeof(j->rcpt), "<%s>", rcpt_to);
    j->rcpt_node.data = j->rcpt;
    j->rcpt_node.next = NULL;

    pthread_mutex_lock(&s->mu);
    /* Room: a free worker, or a place in the queue behind the busy ones. */
    unsigned idle =
        s->max_active > s->nrunning + s->npending ? s->max_active - s->nrunning - s->npending : 0;
    unsigned queued_beyond = s->npending > (s->max_active - s->nrunning)
                                 ? s->npending - (s->max_active - s->nrunning)
                                 : 0;
    if (idle == 0 && queued_beyond >= s->queue_max) {
        pthread_mutex_unlock(&s->mu);
        job_free(j);
        return -EBUSY;
    }
    jlist_push(&s->pending, j);
    s->npending++;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return 0;
}
