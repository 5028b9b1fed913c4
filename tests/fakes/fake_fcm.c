/*
 * fake-fcm — a fake Firebase Cloud Messaging HTTP v1 API and Google OAuth2
 * token endpoint that speak the real protocol, for the hub's FCM channel
 * tests and the demo.
 *
 * One thread, one epoll loop. Each connection is a non-blocking OpenSSL
 * stream (TLS 1.2+). ALPN picks HTTP/2 (an nghttp2 server session driven
 * through mem_recv/mem_send) or HTTP/1.1 (a small parser here): Google
 * serves both, and a client that offers no ALPN gets HTTP/1.1. Two
 * endpoints:
 *
 *   POST /token                             form grant_type=jwt-bearer&assertion=<RS256 JWT>
 *   POST /v1/projects/{project}/messages:send  Bearer <access token>, JSON message
 *
 * The assertion's signature is verified against the service account's key
 * and its claims checked (iss, aud, scope, iat/exp); access tokens are
 * issued and remembered with a server-side lifetime. Send requests are
 * checked like the real API (token, project, message shape, string data)
 * and answered 200 {"name":..} or with Google's google.rpc.Status bodies;
 * a script answers per registration token (status/errorCode, Retry-After,
 * delay, GOAWAY, drop). Every request is logged as one JSON line.
 * docs/fakes.md is the user's guide; this file keeps the why.
 *
 * The epoll/TLS/nghttp2 server core is h2server.c, shared with fake-apns;
 * fake-apns is tuned for h2load rates (pooled requests) and stays h2-only,
 * this one trades speed for HTTP/1.1 and simpler per-request objects.
 */
#include "fcm_auth.h"
#include "fcm_check.h"
#include "fcm_record.h"
#include "fcm_rules.h"
#include "h2server.h"

#include <cjson/cJSON.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_REQS 8192              /* requests alive at once, all connections */
#define MAX_CONCURRENT_STREAMS 100 /* what we advertise per HTTP/2 connection */
#define HDR_ARENA 8192             /* header bytes kept per request; also advertised */
#define MAX_HDRS 64
#define BODY_MAX (64 * 1024)                    /* request bodies beyond this are refused */
#define H1_IN_MAX (BODY_MAX + HDR_ARENA + 4096) /* one HTTP/1.1 request, buffered */
#define CLAIMS_MAX 1024
#define DEFAULT_TTL_S 3599

#define SEND_PREFIX "/v1/projects/"
#define SEND_SUFFIX "/messages:send"
#define TOKEN_PATH "/token"
#define GRANT_JWT "urn:ietf:params:oauth:grant-type:jwt-bearer"
#define WWW_AUTH "Bearer realm=\"https://accounts.google.com/\", error=\"invalid_token\""

typedef struct server server;
typedef struct conn conn;

typedef struct hdr_ref {
    uint16_t name_off;
    uint16_t name_len;
    uint16_t value_off;
    uint16_t value_len;
} hdr_ref;

/* One request and its answer; allocated per request, freed when the stream
 * closes (h2), when the answer is written (h1) or with the connection. */
typedef struct req {
    struct req *next;
    struct req *prev;
    conn *c;
    int64_t id;      /* h2 stream id; h1 request number on the connection */
    h2s_timer timer; /* queued while a delayed answer waits */
    bool answered;
    bool h1_close; /* h1: the client asked for Connection: close (or HTTP/1.0) */
    uint16_t nhdr;
    uint16_t arena_len;
    size_t body_len; /* bytes received; the first BODY_MAX are kept */
    char *body;
    size_t body_cap;
    /* the answer */
    int status;
    char *resp;
    size_t resp_len;
    size_t resp_off;
    char retry_after[48];
    bool www_auth;
    enum fake_cut cut; /* break the answer off after its start */
    /* for the record */
    const char *endpoint;
    const char *auth;
    char error[48];
    char name[200];
    char claims[CLAIMS_MAX];
    int acct; /* the service account the token (request) or access token (send) is of */
    char devtok[FCM_REG_TOKEN_MAX + 1];
    hdr_ref hdr[MAX_HDRS];
    char arena[HDR_ARENA];
} req;

/* A connection: the shared core's part first (h2server.h), then ours. */
struct conn {
    h2s_conn base;
    server *srv;
    bool closing; /* h1: close once the output is written */
    req *reqs;
    /* HTTP/1.1 */
    char *in;
    size_t in_len;
    bool h1_busy;      /* a request is being answered: later input waits */
    bool h1_continued; /* "100 Continue" sent for the request being read */
    int64_t h1_seq;
};

#define FCM_MAX_ACCOUNTS 8 /* --service-account may repeat: one project each */

typedef struct options {
    const char *listen;
    const char *cert;
    const char *key;
    const char *account; /* the first --service-account */
    const char *accounts[FCM_MAX_ACCOUNTS];
    int n_accounts;
    const char *account_pub;
    const char *client_email;
    const char *project;
    const char *token_aud;
    const char *record;
    bool no_record;
    const char *script;
    const char *port_file;
    int64_t token_ttl_s;
    int64_t expires_in_s;
    bool alpn_h2;
    bool alpn_h1;
    bool h2_first;
    bool verbose;
} options;

struct server {
    const options *opt;
    h2s_server *h2s;
    SSL_CTX *ctx;
    nghttp2_session_callbacks *cbs;
    fcm_auth *auth;      /* == auths[0] */
    const char *project; /* == projects[0] */
    fcm_auth *auths[FCM_MAX_ACCOUNTS];
    const char *projects[FCM_MAX_ACCOUNTS];
    int nauth;
    fcm_rules rules;
    fcm_record *rec;
    bool rec_failed;
    uint64_t requests;
    uint64_t messages;
    size_t nreqs;
    bool warned_reqs;
};

/* ---- small helpers ------------------------------------------------------ */

static void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void logmsg(const char *fmt, ...)
{
    va_list ap;

    fputs("fake-fcm: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static bool bytes_is(fcm_bytes b, const char *lit)
{
    size_t n = strlen(lit);

    return b.p != NULL && b.n == n && memcmp(b.p, lit, n) == 0;
}

/* First header named name (lowercase); .p is NULL when there is none. */
static fcm_bytes req_header(const req *r, const char *name)
{
    size_t n = strlen(name);
    fcm_bytes b = {NULL, 0};
    uint16_t i;

    for (i = 0; i < r->nhdr; i++) {
        if (r->hdr[i].name_len == n && memcmp(r->arena + r->hdr[i].name_off, name, n) == 0) {
            b.p = r->arena + r->hdr[i].value_off;
            b.n = r->hdr[i].value_len;
            return b;
        }
    }
    return b;
}

/* Appends one header to r's arena. Returns 0, or -1 when it does not fit. */
static int req_add_header(req *r, const char *name, size_t nl, const char *value, size_t vl)
{
    hdr_ref *h;

    if (r->nhdr == MAX_HDRS || nl + vl > (size_t)(HDR_ARENA - r->arena_len)) {
        return -1;
    }
    h = &r->hdr[r->nhdr++];
    h->name_off = r->arena_len;
    h->name_len = (uint16_t)nl;
    memcpy(r->arena + r->arena_len, name, nl);
    r->arena_len = (uint16_t)(r->arena_len + nl);
    h->value_off = r->arena_len;
    h->value_len = (uint16_t)vl;
    memcpy(r->arena + r->arena_len, value, vl);
    r->arena_len = (uint16_t)(r->arena_len + vl);
    return 0;
}

static int req_add_body(req *r, const uint8_t *data, size_t len)
{
    if (r->body_len < BODY_MAX) {
        size_t keep = len < BODY_MAX - r->body_len ? len : BODY_MAX - r->body_len;
        if (r->body_len + keep > r->body_cap) {
            size_t ncap = r->body_cap ? r->body_cap * 2 : 4096;
            char *nb;
            while (ncap < r->body_len + keep) {
                ncap *= 2;
            }
            if (ncap > BODY_MAX) {
                ncap = BODY_MAX;
            }
            nb = realloc(r->body, ncap);
            if (nb == NULL) {
                return -1;
            }
            r->body = nb;
            r->body_cap = ncap;
        }
        memcpy(r->body + r->body_len, data, keep);
    }
    /* Keep counting past the limit (saturating) so the answer knows. */
    r->body_len = len > SIZE_MAX - r->body_len ? SIZE_MAX : r->body_len + len;
    return 0;
}

/* ---- requests and the delay heap ---------------------------------------- */

static req *req_new(conn *c, int64_t id)
{
    server *s = c->srv;
    req *r;

    if (s->nreqs >= MAX_REQS) {
        if (!s->warned_reqs) {
            s->warned_reqs = true;
            logmsg("%d requests in flight: refusing more (reported once)", MAX_REQS);
        }
        return NULL;
    }
    r = calloc(1, sizeof(*r));
    if (r == NULL) {
        return NULL;
    }
    s->nreqs++;
    r->c = c;
    r->id = id;
    r->timer.idx = -1;
    r->endpoint = "other";
    r->auth = "missing";
    r->next = c->reqs;
    if (c->reqs != NULL) {
        c->reqs->prev = r;
    }
    c->reqs = r;
    return r;
}

static void req_free(server *s, req *r)
{
    conn *c = r->c;

    h2s_timer_cancel(s->h2s, &r->timer);
    if (r->prev != NULL) {
        r->prev->next = r->next;
    } else {
        c->reqs = r->next;
    }
    if (r->next != NULL) {
        r->next->prev = r->prev;
    }
    free(r->body);
    free(r->resp);
    free(r);
    s->nreqs--;
}

/* ---- the record --------------------------------------------------------- */

static void record_req(conn *c, const req *r, const char *action)
{
    server *s = c->srv;
    fcm_record_header hs[MAX_HDRS];
    fcm_record_entry e;
    size_t n = 0;
    uint16_t i;
    int rc;

    if (s->rec == NULL) {
        return;
    }
    for (i = 0; i < r->nhdr; i++) {
        const hdr_ref *h = &r->hdr[i];
        if (h->name_len > 0 && r->arena[h->name_off] == ':') {
            continue;
        }
        hs[n].name.p = r->arena + h->name_off;
        hs[n].name.n = h->name_len;
        hs[n].value.p = r->arena + h->value_off;
        hs[n].value.n = h->value_len;
        n++;
    }
    memset(&e, 0, sizeof(e));
    e.conn = c->base.id;
    e.stream = r->id;
    e.proto = c->base.proto == H2S_H2 ? "h2" : "http/1.1";
    e.method = req_header(r, ":method");
    e.path = req_header(r, ":path");
    if (e.method.p == NULL) {
        e.method.p = "";
    }
    if (e.path.p == NULL) {
        e.path.p = "";
    }
    e.endpoint = r->endpoint;
    e.device_token.p = r->devtok;
    e.device_token.n = strlen(r->devtok);
    e.headers = hs;
    e.nheaders = n;
    e.body.p = r->body != NULL ? r->body : "";
    e.body.n = r->body_len < BODY_MAX ? r->body_len : BODY_MAX;
    e.claims.p = r->claims;
    e.claims.n = strlen(r->claims);
    e.auth = r->auth;
    e.status = r->status;
    e.error = r->error;
    e.name = r->name;
    e.action = action;
    rc = fcm_record_write(s->rec, &e);
    if (rc != 0 && !s->rec_failed) {
        s->rec_failed = true;
        logmsg("writing the record failed: %s (reported once)", strerror(-rc));
    }
}

/* ---- answers ------------------------------------------------------------ */

/* Takes ownership of a cJSON-printed body. */
static void set_body_json(req *r, cJSON *j)
{
    free(r->resp);
    r->resp = j != NULL ? cJSON_Print(j) : NULL;
    r->resp_len = r->resp != NULL ? strlen(r->resp) : 0;
    r->resp_off = 0;
    cJSON_Delete(j);
}

/*
 * A google.rpc.Status error, as FCM answers:
 * {"error":{"code":404,"message":"..","status":"NOT_FOUND","details":[
 *   {"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":".."},
 *   {"@type":"type.googleapis.com/google.rpc.BadRequest","fieldViolations":[..]}]}}
 */
static void answer_rpc(req *r, int status, const char *error_code, const char *message,
                       const char *field)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(root, "error");
    cJSON *details;

    r->status = status;
    snprintf(r->error, sizeof(r->error), "%s", error_code[0] ? error_code : fcm_rpc_status(status));
    if (message == NULL || message[0] == '\0') {
        message = fcm_default_message(error_code, status);
    }
    cJSON_AddNumberToObject(e, "code", status);
    cJSON_AddStringToObject(e, "message", message);
    cJSON_AddStringToObject(e, "status", fcm_rpc_status(status));
    if (error_code[0] != '\0' || (field != NULL && field[0] != '\0')) {
        details = cJSON_AddArrayToObject(e, "details");
        if (error_code[0] != '\0') {
            cJSON *d = cJSON_CreateObject();
            cJSON_AddStringToObject(d, "@type",
                                    "type.googleapis.com/google.firebase.fcm.v1.FcmError");
            cJSON_AddStringToObject(d, "errorCode", error_code);
            cJSON_AddItemToArray(details, d);
        }
        if (field != NULL && field[0] != '\0') {
            cJSON *d = cJSON_CreateObject();
            cJSON *fv;
            cJSON *v = cJSON_CreateObject();
            cJSON_AddStringToObject(d, "@type", "type.googleapis.com/google.rpc.BadRequest");
            fv = cJSON_AddArrayToObject(d, "fieldViolations");
            cJSON_AddStringToObject(v, "field", field);
            cJSON_AddStringToObject(v, "description", message);
            cJSON_AddItemToArray(fv, v);
            cJSON_AddItemToArray(details, d);
        }
    }
    set_body_json(r, root);
}

static void answer_oauth_error(req *r, int status, const char *error, const char *desc)
{
    cJSON *root = cJSON_CreateObject();

    r->status = status;
    snprintf(r->error, sizeof(r->error), "%s", error);
    cJSON_AddStringToObject(root, "error", error);
    cJSON_AddStringToObject(root, "error_description", desc);
    set_body_json(r, root);
}

static ssize_t resp_read(nghttp2_session *h2, int32_t stream_id, uint8_t *buf, size_t length,
                         uint32_t *data_flags, nghttp2_data_source *source, void *user_data)
{
    req *r = source->ptr;
    size_t n = r->resp_len - r->resp_off;

    (void)user_data;
    if (r->cut != FAKE_CUT_NONE) {
        return h2s_cut_read(&r->c->base, h2, stream_id, r->cut, r->resp, r->resp_len, &r->resp_off,
                            buf, length);
    }
    if (n > length) {
        n = length;
    }
    if (n > 0) {
        memcpy(buf, r->resp + r->resp_off, n);
    }
    r->resp_off += n;
    if (r->resp_off == r->resp_len) {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    }
    return (ssize_t)n;
}

/* Appends to the connection's output (HTTP/1.1 answers). */
static int out_append(conn *c, const uint8_t *d, size_t n)
{
    return h2s_out_append(&c->base, d, n);
}

#define NV(n, v, vl)                                                                               \
    {                                                                                              \
        (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, (vl), NGHTTP2_NV_FLAG_NONE                  \
    }

static const char *reason_phrase(int s)
{
    switch (s) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 411:
        return "Length Required";
    case 413:
        return "Payload Too Large";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 503:
        return "Service Unavailable";
    default:
        return "Status";
    }
}

/*
 * Records r and sends its answer. h2: submitted to nghttp2 (the stream's
 * close frees r). h1: written to the output buffer and r freed here.
 * Returns 0, or -1 when the connection must go.
 */
static int respond(conn *c, req *r)
{
    char status_str[4];
    char clen[24];

    record_req(c, r, fake_cut_action(r->cut));
    c->srv->requests++;
    r->answered = true;
    snprintf(status_str, sizeof(status_str), "%03d", r->status);
    snprintf(clen, sizeof(clen), "%zu", r->resp_len);
    if (c->base.proto == H2S_H2) {
        nghttp2_nv nva[6];
        size_t n = 0;
        nghttp2_data_provider prd;
        nva[n++] = (nghttp2_nv)NV(":status", status_str, 3);
        nva[n++] = (nghttp2_nv)NV("content-type", "application/json; charset=UTF-8", 31);
        nva[n++] = (nghttp2_nv)NV("content-length", clen, strlen(clen));
        if (r->retry_after[0] != '\0') {
            nva[n++] = (nghttp2_nv)NV("retry-after", r->retry_after, strlen(r->retry_after));
        }
        if (r->www_auth) {
            nva[n++] = (nghttp2_nv)NV("www-authenticate", WWW_AUTH, sizeof(WWW_AUTH) - 1);
        }
        prd.source.ptr = r;
        prd.read_callback = resp_read;
        return nghttp2_submit_response(c->base.h2, (int32_t)r->id, nva, n, &prd) == 0 ? 0 : -1;
    }
    {
        char head[512];
        int hl = snprintf(head, sizeof(head),
                          "HTTP/1.1 %d %s\r\ncontent-type: application/json; charset=UTF-8\r\n"
                          "content-length: %zu\r\n%s%s%s%s%s\r\n",
                          r->status, reason_phrase(r->status), r->resp_len,
                          r->retry_after[0] ? "retry-after: " : "", r->retry_after,
                          r->retry_after[0] ? "\r\n" : "",
                          r->www_auth ? "www-authenticate: " WWW_AUTH "\r\n" : "",
                          r->h1_close ? "connection: close\r\n" : "");
        bool close_after = r->h1_close;
        int rc = 0;
        /* A cut answer over HTTP/1.1: the head (and half the body for
         * "body"), then the connection closes, whatever the variant. */
        size_t blen = r->cut == FAKE_CUT_NONE   ? r->resp_len
                      : r->cut == FAKE_CUT_BODY ? r->resp_len / 2
                                                : 0;
        if (hl < 0 || (size_t)hl >= sizeof(head) ||
            out_append(c, (const uint8_t *)head, (size_t)hl) != 0 ||
            (blen > 0 && out_append(c, (const uint8_t *)r->resp, blen) != 0)) {
            rc = -1;
        }
        if (r->cut != FAKE_CUT_NONE) {
            c->base.cut_close = true;
        }
        req_free(c->srv, r);
        c->h1_busy = false;
        if (close_after) {
            c->closing = true;
        }
        return rc;
    }
}

/* Answers for requests that are not even HTTP we understand (h1 only). */
static void h1_fail(conn *c, int status)
{
    char head[256];
    int hl = snprintf(head, sizeof(head),
                      "HTTP/1.1 %d %s\r\ncontent-length: 0\r\nconnection: close\r\n\r\n", status,
                      reason_phrase(status));

    out_append(c, (const uint8_t *)head, (size_t)hl);
    c->closing = true;
}

/* ---- the two endpoints -------------------------------------------------- */

/* Decodes application/x-www-form-urlencoded value v[0..n) into out. */
static size_t form_decode(const char *v, size_t n, char *out, size_t cap)
{
    size_t i, o = 0;

    for (i = 0; i < n && o + 1 < cap; i++) {
        char ch = v[i];
        if (ch == '+') {
            ch = ' ';
        } else if (ch == '%' && i + 2 < n) {
            char hx[3] = {v[i + 1], v[i + 2], '\0'};
            char *end;
            long x = strtol(hx, &end, 16);
            if (*end == '\0') {
                ch = (char)x;
                i += 2;
            }
        }
        out[o++] = ch;
    }
    out[o] = '\0';
    return o;
}

/* The raw value of form field name, or .p NULL. */
static fcm_bytes form_field(const char *body, size_t n, const char *name)
{
    size_t nl = strlen(name);
    size_t i = 0;
    fcm_bytes b = {NULL, 0};

    while (i < n) {
        size_t end = i;
        while (end < n && body[end] != '&') {
            end++;
        }
        if (end - i > nl && memcmp(body + i, name, nl) == 0 && body[i + nl] == '=') {
            b.p = body + i + nl + 1;
            b.n = end - i - nl - 1;
            return b;
        }
        i = end + 1;
    }
    return b;
}

static bool media_type_is(fcm_bytes ct, const char *type)
{
    size_t n = strlen(type);

    return ct.p != NULL && ct.n >= n && strncasecmp(ct.p, type, n) == 0 &&
           (ct.n == n || ct.p[n] == ';' || ct.p[n] == ' ');
}

/*
 * Checks a token request (method, content type, grant type, assertion).
 * Returns true when it passed (the script, then fcm_auth_issue, answer it),
 * false when r already holds the OAuth error answer.
 */
static bool check_token(conn *c, req *r)
{
    server *s = c->srv;
    const options *o = s->opt;
    fcm_bytes method = req_header(r, ":method");
    fcm_bytes ct = req_header(r, "content-type");
    fcm_bytes host = req_header(r, ":authority");
    const char *body = r->body != NULL ? r->body : "";
    size_t blen = r->body_len < BODY_MAX ? r->body_len : BODY_MAX;
    fcm_bytes gt, as;
    char grant[128];
    char aud[512];
    char oerr[48], desc[300];
    char *assertion;

    r->endpoint = "token";
    r->auth = "invalid";
    if (host.p == NULL) {
        host = req_header(r, "host");
    }
    if (!bytes_is(method, "POST")) {
        answer_oauth_error(r, 405, "invalid_request", "The token endpoint takes POST only.");
        return false;
    }
    if (!media_type_is(ct, "application/x-www-form-urlencoded")) {
        answer_oauth_error(r, 400, "invalid_request",
                           "Content-Type must be application/x-www-form-urlencoded");
        return false;
    }
    gt = form_field(body, blen, "grant_type");
    if (gt.p == NULL) {
        answer_oauth_error(r, 400, "invalid_request", "Missing required parameter: grant_type");
        return false;
    }
    form_decode(gt.p, gt.n, grant, sizeof(grant));
    if (strcmp(grant, GRANT_JWT) != 0) {
        snprintf(desc, sizeof(desc), "Invalid grant_type: %.100s", grant);
        answer_oauth_error(r, 400, "unsupported_grant_type", desc);
        return false;
    }
    as = form_field(body, blen, "assertion");
    if (as.p == NULL || as.n == 0) {
        answer_oauth_error(r, 400, "invalid_request", "Missing required parameter: assertion");
        return false;
    }
    /* The audience a Google client signs for is the token endpoint's URL. */
    if (o->token_aud != NULL) {
        snprintf(aud, sizeof(aud), "%s", o->token_aud);
    } else {
        snprintf(aud, sizeof(aud), "https://%.*s" TOKEN_PATH, (int)(host.n < 256 ? host.n : 256),
                 host.p != NULL ? host.p : "");
    }
    assertion = malloc(as.n + 1);
    if (assertion == NULL) {
        answer_oauth_error(r, 500, "server_error", "out of memory");
        return false;
    }
    {
        size_t al = form_decode(as.p, as.n, assertion, as.n + 1);
        int rc = fcm_auth_check_assertion(s->auth, assertion, al, aud, h2s_now_real_ms() / 1000,
                                          oerr, sizeof(oerr), desc, sizeof(desc), r->claims,
                                          sizeof(r->claims));
        /* Several accounts: the one the assertion's iss names answers. */
        r->acct = 0;
        for (int i = 1; i < s->nauth; i++) {
            char iss[300];
            snprintf(iss, sizeof(iss), "\"iss\":\"%s\"", fcm_auth_client_email(s->auths[i]));
            if (strstr(r->claims, iss) != NULL) {
                r->acct = i;
                rc = fcm_auth_check_assertion(s->auths[i], assertion, al, aud,
                                              h2s_now_real_ms() / 1000, oerr, sizeof(oerr), desc,
                                              sizeof(desc), r->claims, sizeof(r->claims));
                break;
            }
        }
        free(assertion);
        if (rc != 0) {
            answer_oauth_error(r, 400, oerr, desc);
            return false;
        }
    }
    r->auth = "ok";
    return true;
}

/* {"access_token":"ya29...","expires_in":3599,"token_type":"Bearer"} */
static void answer_token_ok(server *s, req *r)
{
    char tok[FCM_AUTH_TOKEN_LEN];
    cJSON *j = cJSON_CreateObject();

    fcm_auth_issue(s->auths[r->acct], h2s_now_real_ms(), s->opt->token_ttl_s * 1000, tok);
    cJSON_AddStringToObject(j, "access_token", tok);
    cJSON_AddNumberToObject(j, "expires_in", (double)s->opt->expires_in_s);
    cJSON_AddStringToObject(j, "token_type", "Bearer");
    r->status = 200;
    set_body_json(r, j);
}

/* "/v1/projects/{p}/messages:send" -> p, or .p NULL. */
static fcm_bytes send_project(fcm_bytes path)
{
    const size_t pl = sizeof(SEND_PREFIX) - 1, sl = sizeof(SEND_SUFFIX) - 1;
    fcm_bytes p = {NULL, 0};
    size_t i;

    if (path.p == NULL || path.n <= pl + sl || memcmp(path.p, SEND_PREFIX, pl) != 0 ||
        memcmp(path.p + path.n - sl, SEND_SUFFIX, sl) != 0) {
        return p;
    }
    for (i = pl; i < path.n - sl; i++) {
        if (path.p[i] == '/' || path.p[i] == '?') {
            return p;
        }
    }
    p.p = path.p + pl;
    p.n = path.n - pl - sl;
    return p;
}

static void set_retry_after(req *r, const fcm_rule *rule)
{
    if (rule->retry_after_s < 0) {
        return;
    }
    if (rule->retry_after_date) {
        time_t t = (time_t)(h2s_now_real_ms() / 1000 + rule->retry_after_s);
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(r->retry_after, sizeof(r->retry_after), "%a, %d %b %Y %H:%M:%S GMT", &tm);
    } else {
        snprintf(r->retry_after, sizeof(r->retry_after), "%" PRId64, rule->retry_after_s);
    }
}

static void answer_send_ok(server *s, req *r, bool validate_only)
{
    cJSON *j = cJSON_CreateObject();
    uint64_t rnd = 0;

    if (validate_only) {
        snprintf(r->name, sizeof(r->name), "projects/%s/messages/fake_message_id",
                 s->projects[r->acct]);
    } else {
        s->messages++;
        if (getrandom(&rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
            rnd = (uint64_t)h2s_now_real_ms() * 2654435761u + s->messages;
        }
        /* Google's shape: 0:<16 digits>%<16 hex>. */
        snprintf(r->name, sizeof(r->name), "projects/%s/messages/0:%016" PRIu64 "%%%016" PRIx64,
                 s->projects[r->acct], (uint64_t)h2s_now_real_ms() * 1000 + s->messages % 1000,
                 rnd);
    }
    cJSON_AddStringToObject(j, "name", r->name);
    r->status = 200;
    set_body_json(r, j);
}

/*
 * Checks a send request in the order documented in docs/fakes.md and sets
 * its answer. Returns true when it passed every check (the script decides
 * next), false when r already holds an error answer.
 */
static bool check_send(conn *c, req *r, bool *validate_only)
{
    server *s = c->srv;
    fcm_bytes method = req_header(r, ":method");
    fcm_bytes path = req_header(r, ":path");
    fcm_bytes auth = req_header(r, "authorization");
    fcm_bytes ct = req_header(r, "content-type");
    fcm_bytes project = send_project(path);
    enum fcm_token_verdict v;
    fcm_check_result cr;
    char msg[300];

    r->endpoint = "send";
    if (!bytes_is(method, "POST")) {
        answer_rpc(r, 404, "", "Requested entity was not found.", NULL);
        return false;
    }
    if (auth.p == NULL) {
        v = FCM_TOK_MISSING;
    } else if (auth.n <= 7 || strncasecmp(auth.p, "Bearer ", 7) != 0) {
        v = FCM_TOK_INVALID;
    } else {
        /* Each account knows the tokens it issued; the best verdict wins. */
        v = FCM_TOK_INVALID;
        for (int i = 0; i < s->nauth && v != FCM_TOK_OK; i++) {
            enum fcm_token_verdict vi =
                fcm_auth_check_token(s->auths[i], auth.p + 7, auth.n - 7, h2s_now_real_ms());
            if (vi == FCM_TOK_OK || vi == FCM_TOK_EXPIRED) {
                v = vi;
                r->acct = i;
            }
        }
    }
    r->auth = fcm_token_verdict_name(v);
    if (v == FCM_TOK_MISSING) {
        answer_rpc(r, 401, "",
                   "Request is missing required authentication credential. Expected OAuth 2 "
                   "access token, login cookie or other valid authentication credential. See "
                   "https://developers.google.com/identity/sign-in/web/devconsole-project.",
                   NULL);
        return false;
    }
    if (v != FCM_TOK_OK) {
        answer_rpc(r, 401, "", NULL, NULL);
        r->www_auth = true;
        return false;
    }
    /* An access token is good for its own project only. */
    if (project.n != strlen(s->projects[r->acct]) ||
        memcmp(project.p, s->projects[r->acct], project.n) != 0) {
        snprintf(msg, sizeof(msg),
                 "Permission 'cloudmessaging.messages.create' denied on resource "
                 "'//cloudresourcemanager.googleapis.com/projects/%.*s' (or it may not exist).",
                 (int)(project.n < 100 ? project.n : 100), project.p);
        answer_rpc(r, 403, "", msg, NULL);
        return false;
    }
    if (!media_type_is(ct, "application/json")) {
        answer_rpc(r, 400, "", "Invalid JSON payload received. Unexpected token.", NULL);
        return false;
    }
    if (r->body_len > BODY_MAX) {
        snprintf(msg, sizeof(msg), "Request payload size exceeds the limit: %d bytes.", BODY_MAX);
        answer_rpc(r, 400, "", msg, NULL);
        return false;
    }
    if (fcm_check_message(r->body != NULL ? r->body : "", r->body_len, &cr, r->devtok,
                          sizeof(r->devtok)) != 200) {
        answer_rpc(r, cr.status, cr.error, cr.message, cr.field);
        return false;
    }
    *validate_only = cr.validate_only;
    return true;
}

/* Queues GOAWAY so that r's stream and every later one go unanswered
 * (HTTP/1.1: nothing more is read; the connection closes once written). */
static void send_goaway(conn *c, req *r)
{
    if (c->base.proto == H2S_H2) {
        int32_t last = (int32_t)r->id - 2;
        if (last < 0) {
            last = 0;
        }
        nghttp2_submit_goaway(c->base.h2, NGHTTP2_FLAG_NONE, last, NGHTTP2_NO_ERROR, NULL, 0);
        c->base.goaway = true;
        c->base.goaway_last = last;
    } else {
        c->base.goaway = true;
        c->closing = true;
    }
}

/*
 * A request is complete. Decide, record and answer (now or after a delay).
 * Returns 0, or -1 when the connection must be dropped at once (a drop rule
 * fired, so the rest of the input must go unseen).
 */
static int handle_request(conn *c, req *r)
{
    server *s = c->srv;
    fcm_bytes path = req_header(r, ":path");
    const fcm_rule *rule = NULL;
    bool validate_only = false;

    if (c->base.goaway && (c->base.proto != H2S_H2 || r->id > c->base.goaway_last)) {
        return 0; /* beyond our GOAWAY: the client replays it elsewhere */
    }
    if (bytes_is(path, TOKEN_PATH)) {
        if (check_token(c, r)) {
            rule = fcm_rules_match(&s->rules, FCM_RULE_OAUTH, "", 0);
            if (rule == NULL || (rule->action == FCM_ACT_REPLY && rule->status == 200)) {
                answer_token_ok(s, r);
            }
        }
    } else if (send_project(path).p != NULL) {
        if (check_send(c, r, &validate_only)) {
            rule = fcm_rules_match(&s->rules, FCM_RULE_SEND, r->devtok, strlen(r->devtok));
            if (rule == NULL || (rule->action == FCM_ACT_REPLY && rule->status == 200)) {
                answer_send_ok(s, r, validate_only);
            }
        }
    } else {
        answer_rpc(r, 404, "", "Requested entity was not found.", NULL);
    }

    if (rule != NULL) {
        switch (rule->action) {
        case FCM_ACT_DROP:
            r->status = 0;
            r->name[0] = '\0';
            r->error[0] = '\0';
            record_req(c, r, "drop");
            s->requests++;
            c->base.drop = true;
            return -1;
        case FCM_ACT_GOAWAY:
            r->status = 0;
            r->name[0] = '\0';
            r->error[0] = '\0';
            record_req(c, r, "goaway");
            s->requests++;
            send_goaway(c, r);
            if (c->base.proto == H2S_H1) {
                req_free(s, r);
            }
            return 0;
        case FCM_ACT_REPLY:
            if (rule->status != 200) {
                if (rule->target == FCM_RULE_OAUTH) {
                    answer_oauth_error(r, rule->status, rule->error,
                                       rule->message[0] ? rule->message : "scripted answer");
                } else {
                    answer_rpc(r, rule->status, rule->error, rule->message, NULL);
                    if (rule->status == 401 && rule->error[0] == '\0') {
                        r->www_auth = true;
                    }
                }
            }
            set_retry_after(r, rule);
            r->cut = rule->cut;
            if (rule->delay_ms > 0) {
                /* Answer later without blocking the loop; the record line
                 * is written when the answer goes out. */
                h2s_timer_add(s->h2s, &r->timer, h2s_now_mono_ms() + rule->delay_ms);
                return 0;
            }
            break;
        }
    }
    return respond(c, r);
}

/* ---- nghttp2 callbacks -------------------------------------------------- */

static int on_begin_headers(nghttp2_session *h2, const nghttp2_frame *frame, void *user_data)
{
    conn *c = user_data;
    req *r;

    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
        return 0;
    }
    r = req_new(c, frame->hd.stream_id);
    if (r == NULL) {
        nghttp2_submit_rst_stream(h2, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                                  NGHTTP2_REFUSED_STREAM);
        return 0;
    }
    nghttp2_session_set_stream_user_data(h2, frame->hd.stream_id, r);
    return 0;
}

static int on_header(nghttp2_session *h2, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user_data)
{
    req *r;

    (void)flags;
    (void)user_data;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
        return 0; /* trailers are ignored */
    }
    r = nghttp2_session_get_stream_user_data(h2, frame->hd.stream_id);
    if (r == NULL) {
        return 0;
    }
    if (req_add_header(r, (const char *)name, namelen, (const char *)value, valuelen) != 0) {
        /* Beyond the SETTINGS_MAX_HEADER_LIST_SIZE we advertised. */
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    return 0;
}

static int on_data_chunk(nghttp2_session *h2, uint8_t flags, int32_t stream_id, const uint8_t *data,
                         size_t len, void *user_data)
{
    req *r = nghttp2_session_get_stream_user_data(h2, stream_id);

    (void)flags;
    (void)user_data;
    if (r == NULL) {
        return 0;
    }
    if (req_add_body(r, data, len) != 0) {
        nghttp2_submit_rst_stream(h2, NGHTTP2_FLAG_NONE, stream_id, NGHTTP2_INTERNAL_ERROR);
    }
    return 0;
}

static int on_frame_recv(nghttp2_session *h2, const nghttp2_frame *frame, void *user_data)
{
    conn *c = user_data;
    req *r;

    if ((frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) ||
        !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        return 0;
    }
    r = nghttp2_session_get_stream_user_data(h2, frame->hd.stream_id);
    if (r == NULL || r->answered || r->timer.idx >= 0) {
        return 0;
    }
    return handle_request(c, r) == 0 ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
}

static int on_stream_close(nghttp2_session *h2, int32_t stream_id, uint32_t error_code,
                           void *user_data)
{
    conn *c = user_data;
    req *r = nghttp2_session_get_stream_user_data(h2, stream_id);

    (void)error_code;
    if (r != NULL) {
        nghttp2_session_set_stream_user_data(h2, stream_id, NULL);
        req_free(c->srv, r);
    }
    return 0;
}

static int make_callbacks(server *s)
{
    if (nghttp2_session_callbacks_new(&s->cbs) != 0) {
        return -1;
    }
    nghttp2_session_callbacks_set_on_begin_headers_callback(s->cbs, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(s->cbs, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(s->cbs, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_recv_callback(s->cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(s->cbs, on_stream_close);
    return 0;
}

/* ---- HTTP/1.1 ------------------------------------------------------------- */

static char lower_ascii(char ch)
{
    return (ch >= 'A' && ch <= 'Z') ? (char)(ch - 'A' + 'a') : ch;
}

/*
 * Parses one request head (ending in CRLF CRLF at in[0..hlen)) into a new
 * request with ":method", ":path" and ":authority" pseudo-headers, so both
 * protocols are answered by the same code. Returns the request, or NULL
 * with *status set to the answer to give before closing.
 */
static req *h1_parse_head(conn *c, const char *in, size_t hlen, size_t *clen, int *status)
{
    const char *p = in;
    const char *end = in + hlen;
    const char *eol = memchr(p, '\r', hlen);
    const char *sp1, *sp2;
    req *r;
    bool has_len = false;

    *clen = 0;
    *status = 400;
    if (eol == NULL || eol + 1 >= end || eol[1] != '\n') {
        return NULL;
    }
    sp1 = memchr(p, ' ', (size_t)(eol - p));
    sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1)) : NULL;
    if (sp2 == NULL || sp1 == p || sp2 == sp1 + 1) {
        return NULL;
    }
    if ((size_t)(eol - sp2 - 1) != 8 ||
        (memcmp(sp2 + 1, "HTTP/1.1", 8) != 0 && memcmp(sp2 + 1, "HTTP/1.0", 8) != 0)) {
        return NULL;
    }
    r = req_new(c, ++c->h1_seq);
    if (r == NULL) {
        *status = 503;
        return NULL;
    }
    r->h1_close = memcmp(sp2 + 1, "HTTP/1.0", 8) == 0;
    if (req_add_header(r, ":method", 7, p, (size_t)(sp1 - p)) != 0 ||
        req_add_header(r, ":path", 5, sp1 + 1, (size_t)(sp2 - sp1 - 1)) != 0) {
        goto bad;
    }
    p = eol + 2;
    while (p < end) {
        const char *le = memchr(p, '\r', (size_t)(end - p));
        const char *colon;
        const char *v, *ve;
        char name[64];
        size_t nl, k;
        if (le == NULL || le + 1 >= end || le[1] != '\n') {
            goto bad;
        }
        if (le == p) {
            break; /* the blank line */
        }
        colon = memchr(p, ':', (size_t)(le - p));
        if (colon == NULL || colon == p || (size_t)(colon - p) >= sizeof(name)) {
            goto bad;
        }
        nl = (size_t)(colon - p);
        for (k = 0; k < nl; k++) {
            name[k] = lower_ascii(p[k]);
        }
        v = colon + 1;
        ve = le;
        while (v < ve && (*v == ' ' || *v == '\t')) {
            v++;
        }
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) {
            ve--;
        }
        if (nl == 4 && memcmp(name, "host", 4) == 0) {
            if (req_add_header(r, ":authority", 10, v, (size_t)(ve - v)) != 0) {
                goto bad;
            }
        }
        if (nl == 17 && memcmp(name, "transfer-encoding", 17) == 0) {
            *status = 501; /* curl sends content-length for what we need */
            goto fail;
        }
        if (nl == 14 && memcmp(name, "content-length", 14) == 0) {
            char num[24];
            char *e;
            unsigned long long x;
            size_t vl = (size_t)(ve - v);
            if (vl == 0 || vl >= sizeof(num) || has_len) {
                goto bad;
            }
            memcpy(num, v, vl);
            num[vl] = '\0';
            errno = 0;
            x = strtoull(num, &e, 10);
            if (errno != 0 || *e != '\0' || num[0] < '0' || num[0] > '9') {
                goto bad;
            }
            if (x > BODY_MAX) {
                *status = 413;
                goto fail;
            }
            *clen = (size_t)x;
            has_len = true;
        }
        if (nl == 10 && memcmp(name, "connection", 10) == 0 && (size_t)(ve - v) == 5 &&
            strncasecmp(v, "close", 5) == 0) {
            r->h1_close = true;
        }
        if (req_add_header(r, name, nl, v, (size_t)(ve - v)) != 0) {
            *status = 431;
            goto fail;
        }
        p = le + 2;
    }
    return r;
bad:
    *status = 400;
fail:
    req_free(c->srv, r);
    return NULL;
}

static const char *find_head_end(const char *p, size_t n)
{
    size_t i;

    for (i = 0; i + 3 < n; i++) {
        if (p[i] == '\r' && p[i + 1] == '\n' && p[i + 2] == '\r' && p[i + 3] == '\n') {
            return p + i + 4;
        }
    }
    return NULL;
}

/*
 * Handles complete requests in the input buffer, one at a time: a request
 * whose answer is delayed holds later ones back (HTTP/1.1 answers in
 * order). Returns -1 when the connection must be dropped at once.
 */
static int h1_process(conn *c)
{
    while (!c->base.dead && !c->h1_busy && !c->closing && !c->base.drop) {
        const char *he = find_head_end(c->in, c->in_len);
        size_t hlen, clen = 0;
        int status;
        req *r;

        if (he == NULL) {
            if (c->in_len > HDR_ARENA) {
                h1_fail(c, 431);
            }
            return 0;
        }
        hlen = (size_t)(he - c->in);
        r = h1_parse_head(c, c->in, hlen, &clen, &status);
        if (r == NULL) {
            h1_fail(c, status);
            return 0;
        }
        if (c->in_len - hlen < clen) {
            /* The body is still coming: parse the head again then (cheap,
             * and keeps no half-built state across reads). A client that
             * waits for "100 Continue" (curl does above 1 KiB) gets it. */
            fcm_bytes expect = req_header(r, "expect");
            if (!c->h1_continued && expect.p != NULL && expect.n == 12 &&
                strncasecmp(expect.p, "100-continue", 12) == 0) {
                static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
                out_append(c, (const uint8_t *)cont, sizeof(cont) - 1);
                c->h1_continued = true;
            }
            req_free(c->srv, r);
            c->h1_seq--;
            return 0;
        }
        if (clen > 0 && req_add_body(r, (const uint8_t *)c->in + hlen, clen) != 0) {
            req_free(c->srv, r);
            h1_fail(c, 503);
            return 0;
        }
        memmove(c->in, c->in + hlen + clen, c->in_len - hlen - clen);
        c->in_len -= hlen + clen;
        c->h1_busy = true;
        c->h1_continued = false;
        if (handle_request(c, r) != 0) {
            return -1;
        }
    }
    return 0;
}

/* ---- connections -------------------------------------------------------- */

/* h2server hooks: a connection comes and goes. */
static void conn_open(h2s_conn *hc)
{
    conn *c = (conn *)hc;

    c->srv = h2s_user(hc->srv);
}

static void conn_free(h2s_conn *hc)
{
    conn *c = (conn *)hc;

    /* The session is gone and called no stream-close callbacks, so the
     * connection's requests are freed here. */
    while (c->reqs != NULL) {
        req_free(c->srv, c->reqs);
    }
    free(c->in);
}

/* After a GOAWAY: a stream we promised to answer is still unanswered. */
static bool goaway_pending(h2s_conn *hc)
{
    const conn *c = (const conn *)hc;
    const req *r;

    for (r = c->reqs; r != NULL; r = r->next) {
        if (r->id <= hc->goaway_last) {
            return true;
        }
    }
    return false;
}

/* h2server hooks for HTTP/1.1: ALPN chose http/1.1 (or the client offered
 * none, possible only when --alpn allows http/1.1). */
static int h1_start(h2s_conn *hc)
{
    conn *c = (conn *)hc;

    c->in = malloc(H1_IN_MAX);
    return c->in != NULL ? 0 : -1;
}

/* Bytes from TLS. -1: drop now. */
static int h1_feed(h2s_conn *hc, const uint8_t *d, size_t n)
{
    conn *c = (conn *)hc;

    if (c->closing || c->base.goaway) {
        return 0; /* nothing after a close or GOAWAY is read */
    }
    if (n > H1_IN_MAX - c->in_len) {
        h1_fail(c, 413);
        return 0;
    }
    memcpy(c->in + c->in_len, d, n);
    c->in_len += n;
    return h1_process(c);
}

/* Closing, and every answer written. */
static bool h1_done(h2s_conn *hc)
{
    const conn *c = (const conn *)hc;

    return c->closing && c->reqs == NULL;
}

/* ---- TLS ---------------------------------------------------------------- */

/* Does the client's ALPN list (in[0..inlen)) hold proto? */
static const unsigned char *alpn_find(const unsigned char *in, unsigned int inlen,
                                      const char *proto)
{
    unsigned int i = 0;
    size_t pl = strlen(proto);

    while (i < inlen) {
        unsigned int l = in[i];
        if (l == pl && i + 1 + l <= inlen && memcmp(in + i + 1, proto, pl) == 0) {
            return in + i + 1;
        }
        i += 1 + l;
    }
    return NULL;
}

/* ALPN in the server's order of preference among what --alpn allows; none
 * in common is a fatal no_application_protocol alert. */
static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    const options *o = arg;
    const char *order[2];
    int n = 0, i;

    (void)ssl;
    if (o->h2_first) {
        if (o->alpn_h2) {
            order[n++] = "h2";
        }
        if (o->alpn_h1) {
            order[n++] = "http/1.1";
        }
    } else {
        if (o->alpn_h1) {
            order[n++] = "http/1.1";
        }
        if (o->alpn_h2) {
            order[n++] = "h2";
        }
    }
    for (i = 0; i < n; i++) {
        const unsigned char *p = alpn_find(in, inlen, order[i]);
        if (p != NULL) {
            *out = p;
            *outlen = (unsigned char)strlen(order[i]);
            return SSL_TLSEXT_ERR_OK;
        }
    }
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

/* Without HTTP/1.1, a client offering no ALPN at all is refused too. */
static int client_hello_cb(SSL *ssl, int *al, void *arg)
{
    const options *o = arg;
    const unsigned char *ext;
    size_t len;

    if (!o->alpn_h1 &&
        SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_application_layer_protocol_negotiation, &ext,
                                  &len) != 1) {
        *al = SSL_AD_NO_APPLICATION_PROTOCOL;
        return SSL_CLIENT_HELLO_ERROR;
    }
    return SSL_CLIENT_HELLO_SUCCESS;
}

static SSL_CTX *make_tls(const options *o)
{
    SSL_CTX *ctx = h2s_tls_ctx_new("fake-fcm", o->cert, o->key);

    if (ctx == NULL) {
        return NULL;
    }
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, (void *)o);
    SSL_CTX_set_client_hello_cb(ctx, client_hello_cb, (void *)o);
    return ctx;
}

/* ---- listening, signals, the loop --------------------------------------- */

static void reload_rules(h2s_server *hs)
{
    server *s = h2s_user(hs);
    fcm_rules nr;
    char err[512];

    if (s->opt->script == NULL) {
        logmsg("SIGHUP: no --script to reload");
        return;
    }
    if (fcm_rules_load(s->opt->script, &nr, err, sizeof(err)) != 0) {
        logmsg("SIGHUP: %s (keeping the old rules)", err);
        return;
    }
    fcm_rules_free(&s->rules);
    s->rules = nr;
    logmsg("reloaded %zu rules from %s", nr.n, s->opt->script);
}

/* h2server hook: a delayed answer is due. */
static void on_timer(h2s_server *hs, h2s_timer *t)
{
    req *r = (req *)(void *)((char *)t - offsetof(req, timer));
    conn *c = r->c;

    (void)hs;
    if (c->base.dead ||
        (c->base.proto == H2S_H2 && c->base.goaway && r->id > c->base.goaway_last)) {
        return;
    }
    if (respond(c, r) != 0) {
        h2s_conn_kill(&c->base);
        return;
    }
    /* HTTP/1.1: the next pipelined request may go now. */
    if (c->base.proto == H2S_H1 && h1_process(c) != 0) {
        h2s_conn_kill(&c->base);
        return;
    }
    h2s_conn_pump(&c->base);
}

/* ---- command line ------------------------------------------------------- */

static void usage(FILE *f)
{
    fputs("usage: fake-fcm --listen HOST:PORT --cert FILE --key FILE\n"
          "                (--service-account JSON | --service-account-pub PEM --client-email E)\n"
          "                [--project ID] [--token-ttl S] [--expires-in S] [--token-aud URL]\n"
          "                [--alpn h2,http/1.1] [--record FILE | --no-record] [--script FILE]\n"
          "                [--port-file FILE] [--verbose]\n"
          "A fake FCM HTTP v1 API and OAuth2 token endpoint (TLS, HTTP/2 or HTTP/1.1)\n"
          "for tests; see docs/fakes.md.\n",
          f);
}

static int parse_seconds(const char *opt, const char *v, int64_t *out)
{
    char *end;
    long long x;

    errno = 0;
    x = strtoll(v, &end, 10);
    if (errno != 0 || *end != '\0' || v[0] < '0' || v[0] > '9' || x < 1 || x > 86400) {
        logmsg("--%s: 1..86400 seconds", opt);
        return -1;
    }
    *out = x;
    return 0;
}

/* "h2,http/1.1" in preference order. */
static int parse_alpn(const char *v, options *o)
{
    const char *p = v;

    o->alpn_h2 = o->alpn_h1 = false;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n == 2 && memcmp(p, "h2", 2) == 0 && !o->alpn_h2) {
            o->alpn_h2 = true;
            o->h2_first = !o->alpn_h1;
        } else if (n == 8 && memcmp(p, "http/1.1", 8) == 0 && !o->alpn_h1) {
            o->alpn_h1 = true;
        } else {
            logmsg("--alpn %s: a list of h2 and http/1.1", v);
            return -1;
        }
        p += n;
        if (*p == ',') {
            p++;
        }
    }
    if (!o->alpn_h2 && !o->alpn_h1) {
        logmsg("--alpn: empty");
        return -1;
    }
    return 0;
}

static int parse_args(int argc, char **argv, options *o)
{
    enum {
        OPT_LISTEN = 256,
        OPT_CERT,
        OPT_KEY,
        OPT_ACCOUNT,
        OPT_ACCOUNT_PUB,
        OPT_CLIENT_EMAIL,
        OPT_PROJECT,
        OPT_TOKEN_TTL,
        OPT_EXPIRES_IN,
        OPT_TOKEN_AUD,
        OPT_ALPN,
        OPT_RECORD,
        OPT_NO_RECORD,
        OPT_SCRIPT,
        OPT_PORT_FILE,
        OPT_VERBOSE,
        OPT_HELP
    };
    static const struct option longopts[] = {
        {"listen", required_argument, NULL, OPT_LISTEN},
        {"cert", required_argument, NULL, OPT_CERT},
        {"key", required_argument, NULL, OPT_KEY},
        {"service-account", required_argument, NULL, OPT_ACCOUNT},
        {"service-account-pub", required_argument, NULL, OPT_ACCOUNT_PUB},
        {"client-email", required_argument, NULL, OPT_CLIENT_EMAIL},
        {"project", required_argument, NULL, OPT_PROJECT},
        {"token-ttl", required_argument, NULL, OPT_TOKEN_TTL},
        {"expires-in", required_argument, NULL, OPT_EXPIRES_IN},
        {"token-aud", required_argument, NULL, OPT_TOKEN_AUD},
        {"alpn", required_argument, NULL, OPT_ALPN},
        {"record", required_argument, NULL, OPT_RECORD},
        {"no-record", no_argument, NULL, OPT_NO_RECORD},
        {"script", required_argument, NULL, OPT_SCRIPT},
        {"port-file", required_argument, NULL, OPT_PORT_FILE},
        {"verbose", no_argument, NULL, OPT_VERBOSE},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    int opt;
    bool have_expires = false;

    memset(o, 0, sizeof(*o));
    o->token_ttl_s = DEFAULT_TTL_S;
    o->alpn_h2 = o->alpn_h1 = o->h2_first = true;
    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (opt) {
        case OPT_LISTEN:
            o->listen = optarg;
            break;
        case OPT_CERT:
            o->cert = optarg;
            break;
        case OPT_KEY:
            o->key = optarg;
            break;
        case OPT_ACCOUNT:
            if (o->n_accounts == FCM_MAX_ACCOUNTS) {
                logmsg("--service-account: at most %d", FCM_MAX_ACCOUNTS);
                return -1;
            }
            o->accounts[o->n_accounts++] = optarg;
            o->account = o->accounts[0];
            break;
        case OPT_ACCOUNT_PUB:
            o->account_pub = optarg;
            break;
        case OPT_CLIENT_EMAIL:
            o->client_email = optarg;
            break;
        case OPT_PROJECT:
            o->project = optarg;
            break;
        case OPT_TOKEN_AUD:
            o->token_aud = optarg;
            break;
        case OPT_RECORD:
            o->record = optarg;
            break;
        case OPT_NO_RECORD:
            o->no_record = true;
            break;
        case OPT_SCRIPT:
            o->script = optarg;
            break;
        case OPT_PORT_FILE:
            o->port_file = optarg;
            break;
        case OPT_VERBOSE:
            o->verbose = true;
            break;
        case OPT_TOKEN_TTL:
            if (parse_seconds("token-ttl", optarg, &o->token_ttl_s) != 0) {
                return -1;
            }
            break;
        case OPT_EXPIRES_IN:
            if (parse_seconds("expires-in", optarg, &o->expires_in_s) != 0) {
                return -1;
            }
            have_expires = true;
            break;
        case OPT_ALPN:
            if (parse_alpn(optarg, o) != 0) {
                return -1;
            }
            break;
        case OPT_HELP:
            usage(stdout);
            return 1;
        default:
            usage(stderr);
            return -1;
        }
    }
    if (!have_expires) {
        o->expires_in_s = o->token_ttl_s;
    }
    if (optind < argc) {
        logmsg("unexpected argument '%s'", argv[optind]);
        return -1;
    }
    if (o->listen == NULL || o->cert == NULL || o->key == NULL) {
        logmsg("--listen, --cert and --key are required");
        return -1;
    }
    if ((o->account == NULL) == (o->account_pub == NULL)) {
        logmsg("one of --service-account and --service-account-pub is required");
        return -1;
    }
    if (o->account_pub != NULL && (o->client_email == NULL || o->project == NULL)) {
        logmsg("--service-account-pub needs --client-email and --project");
        return -1;
    }
    if (o->n_accounts > 1 && o->project != NULL) {
        logmsg("--project goes with one service account (several: each key names its project)");
        return -1;
    }
    if (o->account != NULL && o->client_email != NULL) {
        logmsg("--client-email goes with --service-account-pub (the key names its own)");
        return -1;
    }
    if (o->record != NULL && o->no_record) {
        logmsg("--record and --no-record exclude each other");
        return -1;
    }
    return 0;
}

/* ---- main --------------------------------------------------------------- */

static bool project_valid(const char *p)
{
    size_t i;

    for (i = 0; p[i]; i++) {
        char ch = p[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '.' || ch == ':' || ch == '_') ||
            i >= 100) {
            return false;
        }
    }
    return i > 0;
}

static uint64_t issued_total(const server *s)
{
    uint64_t n = 0;
    for (int i = 0; i < s->nauth; i++) {
        n += fcm_auth_issued(s->auths[i]);
    }
    return n;
}

static int setup(server *s, const options *o)
{
    char err[512];
    h2s_config hc;

    s->opt = o;
    s->nauth = o->n_accounts > 0 ? o->n_accounts : 1;
    for (int i = 0; i < s->nauth; i++) {
        s->auths[i] = fcm_auth_create();
        if (s->auths[i] == NULL) {
            logmsg("out of memory");
            return 1;
        }
        if (o->account != NULL
                ? fcm_auth_load_account(s->auths[i], o->accounts[i], err, sizeof(err)) != 0
                : fcm_auth_load_pub(s->auths[i], o->account_pub, o->client_email, err,
                                    sizeof(err)) != 0) {
            logmsg("--service-account%s: %s", o->account != NULL ? "" : "-pub", err);
            return 2;
        }
        s->projects[i] = o->project != NULL ? o->project : fcm_auth_project(s->auths[i]);
        if (!project_valid(s->projects[i])) {
            logmsg("--project: missing or not a project id (and the key names none)");
            return 2;
        }
        for (int j = 0; j < i; j++) {
            if (strcmp(s->projects[i], s->projects[j]) == 0) {
                logmsg("--service-account: two keys of project %s", s->projects[i]);
                return 2;
            }
        }
    }
    s->auth = s->auths[0];
    s->project = s->projects[0];
    if (o->script != NULL && fcm_rules_load(o->script, &s->rules, err, sizeof(err)) != 0) {
        logmsg("%s", err);
        return 2;
    }
    s->ctx = make_tls(o);
    if (s->ctx == NULL) {
        return 2;
    }
    if (o->record != NULL) {
        s->rec = fcm_record_open(o->record, err, sizeof(err));
        if (s->rec == NULL) {
            logmsg("--record %s", err);
            return 2;
        }
    }
    if (make_callbacks(s) != 0) {
        logmsg("out of memory");
        return 1;
    }
    memset(&hc, 0, sizeof(hc));
    hc.name = "fake-fcm";
    hc.listen = o->listen;
    hc.port_file = o->port_file;
    hc.verbose = o->verbose;
    hc.ctx = s->ctx;
    hc.cbs = s->cbs;
    hc.max_concurrent_streams = MAX_CONCURRENT_STREAMS;
    hc.max_header_list = HDR_ARENA;
    hc.local_window = 0;
    hc.out_initial = 64 * 1024;
    hc.max_timers = MAX_REQS;
    hc.conn_size = sizeof(conn);
    hc.hooks.conn_open = conn_open;
    hc.hooks.conn_free = conn_free;
    hc.hooks.h1_start = h1_start;
    hc.hooks.h1_feed = h1_feed;
    hc.hooks.h1_done = h1_done;
    hc.hooks.goaway_pending = goaway_pending;
    hc.hooks.timer = on_timer;
    hc.hooks.reload = reload_rules;
    hc.user = s;
    return h2s_create(&hc, &s->h2s);
}

static void teardown(server *s)
{
    h2s_destroy(s->h2s);
    s->h2s = NULL;
    if (s->rec != NULL && fcm_record_close(s->rec) != 0) {
        logmsg("closing the record failed");
    }
    if (s->cbs != NULL) {
        nghttp2_session_callbacks_del(s->cbs);
    }
    SSL_CTX_free(s->ctx);
    fcm_rules_free(&s->rules);
    for (int i = 0; i < s->nauth; i++) {
        fcm_auth_destroy(s->auths[i]);
    }
}

int main(int argc, char **argv)
{
    options o;
    server *s;
    int rc;

    rc = parse_args(argc, argv, &o);
    if (rc != 0) {
        return rc > 0 ? 0 : 2;
    }
    /* A vanished peer must give EPIPE, not kill the fake. */
    signal(SIGPIPE, SIG_IGN);
    s = calloc(1, sizeof(*s));
    if (s == NULL) {
        logmsg("out of memory");
        return 1;
    }
    rc = setup(s, &o);
    if (rc == 0) {
        rc = h2s_run(s->h2s) == 0 ? 0 : 1;
        logmsg("stopping: %" PRIu64 " requests (%" PRIu64 " messages, %" PRIu64
               " access tokens) on %" PRIu64 " connections",
               s->requests, s->messages, issued_total(s), h2s_connections(s->h2s));
    }
    teardown(s);
    free(s);
    return rc;
}
