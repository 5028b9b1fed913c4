/* httpd.c - small strict HTTP/1.1 server on the event loop (see httpd.h). */
#include "httpd.h"

#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <unistd.h>

#define MOD "httpd"

struct route {
    char method[16];
    char path[128];
    httpd_handler cb;
    void *arg;
};

struct parsed {
    char *method, *target, *version;
    struct httpd_header hdr[HTTPD_MAX_HEADERS];
    size_t nh;
};

struct conn {
    httpd_t *h;
    int fd;
    uint64_t timer;
    /* reading */
    char in[HTTPD_MAX_HEAD + HTTPD_MAX_BODY + 1];
    size_t in_len;
    size_t head_len; /* bytes up to and including the blank line; 0 = not yet */
    size_t body_want;
    /* writing */
    char *out;
    size_t out_len, out_off;
    bool writing;
    bool parsed;
    struct parsed p; /* points into in[] */
};

struct httpd {
    loop_t *loop;
    int fd;
    int port;
    struct route routes[HTTPD_MAX_ROUTES];
    size_t nroutes;
    struct conn *conns[HTTPD_MAX_CONNS];
    bool full_logged;
};

/* --- responses ----------------------------------------------------------- */

void httpd_resp_append(struct httpd_resp *r, const char *data, size_t len)
{
    if (r->failed) {
        return;
    }
    if (len > HTTPD_MAX_RESPONSE - r->len) {
        r->failed = 1;
        return;
    }
    if (r->len + len + 1 > r->cap) {
        size_t cap = r->cap ? r->cap : 1024;
        while (cap < r->len + len + 1) {
            cap *= 2;
        }
        char *b = realloc(r->body, cap);
        if (!b) {
            r->failed = 1;
            return;
        }
        r->body = b;
        r->cap = cap;
    }
    memcpy(r->body + r->len, data, len);
    r->len += len;
    r->body[r->len] = '\0';
}

void httpd_resp_printf(struct httpd_resp *r, const char *fmt, ...)
{
    char small[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0) {
        r->failed = 1;
        return;
    }
    if ((size_t)n < sizeof(small)) {
        httpd_resp_append(r, small, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) {
        r->failed = 1;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    httpd_resp_append(r, big, (size_t)n);
    free(big);
}

const char *httpd_req_header(const struct httpd_req *req, const char *name)
{
    for (size_t i = 0; i < req->nheaders; i++) {
        if (strcasecmp(req->headers[i].name, name) == 0) {
            return req->headers[i].value;
        }
    }
    return NULL;
}

static const char *status_text(int s)
{
    switch (s) {
    case 200:
        return "OK";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 413:
        return "Content Too Large";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 503:
        return "Service Unavailable";
    case 505:
        return "HTTP Version Not Supported";
    }
    return "Status";
}

/* --- connections ----------------------------------------------------------- */

static void conn_close(struct conn *c)
{
    httpd_t *h = c->h;
    loop_fd_del(h->loop, c->fd);
    close(c->fd);
    if (c->timer) {
        loop_timer_cancel(h->loop, c->timer);
    }
    for (size_t i = 0; i < HTTPD_MAX_CONNS; i++) {
        if (h->conns[i] == c) {
            h->conns[i] = NULL;
        }
    }
    free(c->out);
    free(c);
}

static void on_conn_timer(loop_t *loop, uint64_t id, void *arg)
{
    (void)loop;
    (void)id;
    struct conn *c = arg;
    c->timer = 0;
    LOG_DEBUG(MOD, "connection timed out after %dms", HTTPD_IDLE_MS);
    conn_close(c);
}

static void conn_flush(struct conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            loop_fd_mod(c->h->loop, c->fd, LOOP_WRITE);
            return;
        }
        conn_close(c);
        return;
    }
    /* All written: half-close so the peer reads to EOF, then close. */
    shutdown(c->fd, SHUT_WR);
    conn_close(c);
}

/* Queue the whole answer (head + body) and start writing. */
static void conn_answer(struct conn *c, int status, const char *ctype, const char *extra,
                        const char *body, size_t blen)
{
    char head[512];
    int hl = snprintf(head, sizeof(head),
                      "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                      "Cache-Control: no-store\r\n%sConnection: close\r\n\r\n",
                      status, status_text(status), ctype, blen, extra ? extra : "");
    if (hl < 0 || (size_t)hl >= sizeof(head)) {
        conn_close(c);
        return;
    }
    c->out = malloc((size_t)hl + blen);
    if (!c->out) {
        conn_close(c);
        return;
    }
    memcpy(c->out, head, (size_t)hl);
    if (blen) {
        memcpy(c->out + hl, body, blen);
    }
    c->out_len = (size_t)hl + blen;
    c->writing = true;
    conn_flush(c);
}

static void conn_error(struct conn *c, int status, const char *why)
{
    LOG_DEBUG(MOD, "answering %d: %s", status, why);
    char body[160];
    int n = snprintf(body, sizeof(body), "%d %s: %s\n", status, status_text(status), why);
    conn_answer(c, status, "text/plain; charset=utf-8", NULL, body,
                n > 0 && (size_t)n < sizeof(body) ? (size_t)n : 0);
}

static bool is_tchar(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

/* Find the end of the head ("\r\n\r\n"); refuse bare LF early. */
static int find_head_end(struct conn *c)
{
    for (size_t i = 0; i < c->in_len; i++) {
        if (c->in[i] == '\n' && (i == 0 || c->in[i - 1] != '\r')) {
            return -1;
        }
        if (i >= 3 && memcmp(c->in + i - 3, "\r\n\r\n", 4) == 0) {
            c->head_len = i + 1;
            return 1;
        }
    }
    return 0;
}

/* Parse the head in place. 0, or an HTTP status for the error (why set). */
static int parse_head(struct conn *c, struct parsed *p, const char **why)
{
    char *s = c->in;
    c->in[c->head_len - 2] = '\0'; /* cut the final CRLF: lines end "\r\n" */
    char *line = s, *next = strstr(line, "\r\n");
    if (!next) {
        *why = "no request line";
        return 400;
    }
    *next = '\0';
    /* request line: METHOD SP target SP version, single spaces */
    p->method = line;
    char *sp1 = strchr(line, ' ');
    if (!sp1) {
        *why = "bad request line";
        return 400;
    }
    *sp1 = '\0';
    p->target = sp1 + 1;
    char *sp2 = strchr(p->target, ' ');
    if (!sp2) {
        *why = "bad request line";
        return 400;
    }
    *sp2 = '\0';
    p->version = sp2 + 1;
    if (!*p->method || strlen(p->method) > 15) {
        *why = "bad method";
        return 400;
    }
    for (const char *m = p->method; *m; m++) {
        if (!is_tchar(*m)) {
            *why = "bad method";
            return 400;
        }
    }
    if (p->target[0] != '/') {
        *why = "target must be an absolute path";
        return 400;
    }
    for (const char *t = p->target; *t; t++) {
        if ((unsigned char)*t <= 0x20 || (unsigned char)*t >= 0x7f) {
            *why = "bad character in target";
            return 400;
        }
    }
    if (strcmp(p->version, "HTTP/1.1") != 0 && strcmp(p->version, "HTTP/1.0") != 0) {
        *why = "HTTP/1.0 or HTTP/1.1 only";
        return strncmp(p->version, "HTTP/", 5) == 0 ? 505 : 400;
    }
    line = next + 2;
    while (*line) {
        next = strstr(line, "\r\n");
        if (next) {
            *next = '\0';
        }
        if (*line == ' ' || *line == '\t') {
            *why = "obsolete line folding";
            return 400;
        }
        char *colon = strchr(line, ':');
        if (!colon || colon == line) {
            *why = "header line without a name";
            return 400;
        }
        *colon = '\0';
        for (const char *n = line; *n; n++) {
            if (!is_tchar(*n)) {
                *why = "bad header name";
                return 400;
            }
        }
        char *v = colon + 1;
        while (*v == ' ' || *v == '\t') {
            v++;
        }
        size_t vl = strlen(v);
        while (vl > 0 && (v[vl - 1] == ' ' || v[vl - 1] == '\t')) {
            v[--vl] = '\0';
        }
        for (const char *q = v; *q; q++) {
            if ((unsigned char)*q < 0x20 && *q != '\t') {
                *why = "control character in a header value";
                return 400;
            }
        }
        if (p->nh >= HTTPD_MAX_HEADERS) {
            *why = "too many header fields";
            return 431;
        }
        p->hdr[p->nh].name = line;
        p->hdr[p->nh].value = v;
        p->nh++;
        if (!next) {
            break;
        }
        line = next + 2;
    }
    return 0;
}

static void dispatch_request(struct conn *c, struct parsed *p)
{
    httpd_t *h = c->h;
    char *q = strchr(p->target, '?');
    struct httpd_req req = {
        .method = p->method,
        .path = p->target,
        .query = "",
        .headers = p->hdr,
        .nheaders = p->nh,
        .body = c->in + c->head_len,
        .body_len = c->body_want,
    };
    if (q) {
        *q = '\0';
        req.query = q + 1;
    }
    c->in[c->head_len + c->body_want] = '\0';
    const struct route *hit = NULL;
    char allow[128] = "";
    for (size_t i = 0; i < h->nroutes; i++) {
        if (strcmp(h->routes[i].path, req.path) != 0) {
            continue;
        }
        if (strcmp(h->routes[i].method, req.method) == 0 ||
            (strcmp(req.method, "HEAD") == 0 && strcmp(h->routes[i].method, "GET") == 0)) {
            hit = &h->routes[i];
            break;
        }
        size_t l = strlen(allow);
        snprintf(allow + l, sizeof(allow) - l, "%s%s", l ? ", " : "", h->routes[i].method);
    }
    if (!hit) {
        if (allow[0]) {
            char extra[160];
            snprintf(extra, sizeof(extra), "Allow: %s\r\n", allow);
            static const char body[] = "405 Method Not Allowed\n";
            conn_answer(c, 405, "text/plain; charset=utf-8", extra, body, sizeof(body) - 1);
        } else {
            conn_error(c, 404, "no such path");
        }
        return;
    }
    struct httpd_resp resp = {.status = 200};
    snprintf(resp.content_type, sizeof(resp.content_type), "text/plain; charset=utf-8");
    hit->cb(hit->arg, &req, &resp);
    if (resp.failed) {
        free(resp.body);
        conn_error(c, 500, "response too large or out of memory");
        return;
    }
    bool head_only = strcmp(req.method, "HEAD") == 0;
    conn_answer(c, resp.status, resp.content_type, NULL, resp.body ? resp.body : "",
                head_only ? 0 : resp.len);
    free(resp.body);
}

/* A complete head is in: parse and check it; the body's size is then known.
 * 0, or -1 when an error answer was sent (c may be gone). */
static int on_head(struct conn *c)
{
    struct parsed *p = &c->p;
    const char *why = "";
    int st = parse_head(c, p, &why);
    if (st) {
        conn_error(c, st, why);
        return -1;
    }
    struct httpd_req tmp = {.headers = p->hdr, .nheaders = p->nh};
    if (strcmp(p->version, "HTTP/1.1") == 0 && !httpd_req_header(&tmp, "host")) {
        conn_error(c, 400, "HTTP/1.1 request without Host");
        return -1;
    }
    if (httpd_req_header(&tmp, "transfer-encoding")) {
        conn_error(c, 501, "Transfer-Encoding is not supported; send Content-Length");
        return -1;
    }
    const char *cl = NULL;
    for (size_t i = 0; i < p->nh; i++) {
        if (strcasecmp(p->hdr[i].name, "content-length") == 0) {
            if (cl) {
                conn_error(c, 400, "Content-Length given twice");
                return -1;
            }
            cl = p->hdr[i].value;
        }
    }
    c->body_want = 0;
    if (cl) {
        if (!*cl || strlen(cl) > 9 || strspn(cl, "0123456789") != strlen(cl)) {
            conn_error(c, 400, "bad Content-Length");
            return -1;
        }
        c->body_want = (size_t)strtoul(cl, NULL, 10);
        if (c->body_want > HTTPD_MAX_BODY) {
            conn_error(c, 413, "body over the limit");
            return -1;
        }
    }
    c->parsed = true;
    return 0;
}

static void on_conn_io(loop_t *loop, int fd, unsigned events, void *arg)
{
    (void)loop;
    (void)fd;
    struct conn *c = arg;
    if (c->writing) {
        if (events & LOOP_ERROR) {
            conn_close(c);
            return;
        }
        conn_flush(c);
        return;
    }
    for (;;) {
        size_t room = sizeof(c->in) - 1 - c->in_len;
        if (room == 0) {
            conn_error(c, c->parsed ? 413 : 431, "request too large");
            return;
        }
        ssize_t n = recv(c->fd, c->in + c->in_len, room, 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return;
        }
        if (n <= 0) {
            conn_close(c); /* peer closed or error before a full request */
            return;
        }
        c->in_len += (size_t)n;
        if (!c->parsed) {
            int r = find_head_end(c);
            if (r < 0) {
                conn_error(c, 400, "bare LF: lines must end with CRLF");
                return;
            }
            if (r == 0 || c->head_len > HTTPD_MAX_HEAD) {
                if (c->in_len > HTTPD_MAX_HEAD) {
                    conn_error(c, 431, "request head over the limit");
                    return;
                }
                continue;
            }
            if (on_head(c) < 0) {
                return;
            }
        }
        if (c->in_len - c->head_len >= c->body_want) {
            /* Complete; bytes after the body are ignored (one request per
             * connection). dispatch_request may free c. */
            dispatch_request(c, &c->p);
            return;
        }
    }
}

static void on_accept(loop_t *loop, int fd, unsigned events, void *arg)
{
    (void)events;
    (void)fd;
    httpd_t *h = arg;
    for (int i = 0; i < 16; i++) {
        int cfd = accept4(h->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                LOG_WARN(MOD, "accept: %s", strerror(errno));
            }
            return;
        }
        size_t slot = 0;
        while (slot < HTTPD_MAX_CONNS && h->conns[slot]) {
            slot++;
        }
        if (slot == HTTPD_MAX_CONNS) {
            if (!h->full_logged) {
                LOG_WARN(MOD, "%d connections open: closing new ones until one ends",
                         HTTPD_MAX_CONNS);
                h->full_logged = true;
            }
            close(cfd);
            continue;
        }
        h->full_logged = false;
        struct conn *c = calloc(1, sizeof(*c));
        if (!c) {
            close(cfd);
            continue;
        }
        c->h = h;
        c->fd = cfd;
        if (loop_fd_add(loop, cfd, LOOP_READ, on_conn_io, c) < 0) {
            close(cfd);
            free(c);
            continue;
        }
        c->timer = loop_timer_add(loop, HTTPD_IDLE_MS, on_conn_timer, c);
        h->conns[slot] = c;
    }
}

int httpd_route(httpd_t *h, const char *method, const char *path, httpd_handler cb, void *arg)
{
    if (!path || path[0] != '/' || strlen(path) >= sizeof(h->routes[0].path) || !method ||
        !*method || strlen(method) >= sizeof(h->routes[0].method)) {
        return -EINVAL;
    }
    for (size_t i = 0; i < h->nroutes; i++) {
        if (strcmp(h->routes[i].method, method) == 0 && strcmp(h->routes[i].path, path) == 0) {
            return -EEXIST;
        }
    }
    if (h->nroutes >= HTTPD_MAX_ROUTES) {
        return -ENOSPC;
    }
    struct route *r = &h->routes[h->nroutes++];
    snprintf(r->method, sizeof(r->method), "%s", method);
    snprintf(r->path, sizeof(r->path), "%s", path);
    r->cb = cb;
    r->arg = arg;
    return 0;
}

int httpd_port(const httpd_t *h)
{
    return h->port;
}

int httpd_create(loop_t *loop, const char *listen_on, httpd_t **out, char *err, size_t errlen)
{
    char host[128];
    const char *colon = strrchr(listen_on, ':');
    if (!colon || colon == listen_on || !colon[1]) {
        snprintf(err, errlen, "'%s': expected HOST:PORT", listen_on);
        return -EINVAL;
    }
    size_t hl = (size_t)(colon - listen_on);
    const char *hs = listen_on;
    if (hs[0] == '[' && hl >= 2 && hs[hl - 1] == ']') {
        hs++;
        hl -= 2;
    }
    if (hl == 0 || hl >= sizeof(host)) {
        snprintf(err, errlen, "'%s': bad host", listen_on);
        return -EINVAL;
    }
    memcpy(host, hs, hl);
    host[hl] = '\0';
    const char *port = colon + 1;
    if (strspn(port, "0123456789") != strlen(port) || strlen(port) > 5 ||
        strtoul(port, NULL, 10) > 65535) {
        snprintf(err, errlen, "'%s': bad port", listen_on);
        return -EINVAL;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE};
    struct addrinfo *ai = NULL;
    int g = getaddrinfo(host, port, &hints, &ai);
    if (g != 0 || !ai) {
        snprintf(err, errlen, "'%s': host must be a numeric address (%s)", listen_on,
                 gai_strerror(g));
        return -EINVAL;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        int e = errno;
        freeaddrinfo(ai);
        snprintf(err, errlen, "socket: %s", strerror(e));
        return -e;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 64) < 0) {
        int e = errno;
        freeaddrinfo(ai);
        close(fd);
        snprintf(err, errlen, "'%s': %s", listen_on, strerror(e));
        return -e;
    }
    freeaddrinfo(ai);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    int bound = 0;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET) {
            bound = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            bound = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
        }
    }
    httpd_t *h = calloc(1, sizeof(*h));
    if (!h) {
        close(fd);
        return -ENOMEM;
    }
    h->loop = loop;
    h->fd = fd;
    h->port = bound;
    int rc = loop_fd_add(loop, fd, LOOP_READ, on_accept, h);
    if (rc < 0) {
        close(fd);
        free(h);
        snprintf(err, errlen, "event loop: %s", strerror(-rc));
        return rc;
    }
    *out = h;
    return 0;
}

void httpd_destroy(httpd_t *h)
{
    if (!h) {
        return;
    }
    for (size_t i = 0; i < HTTPD_MAX_CONNS; i++) {
        if (h->conns[i]) {
            conn_close(h->conns[i]);
        }
    }
    loop_fd_del(h->loop, h->fd);
    close(h->fd);
    free(h);
}
