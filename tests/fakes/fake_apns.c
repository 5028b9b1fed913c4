/*
 * fake-apns — a fake Apple Push Notification service that speaks the real
 * protocol, for the hub's APNs channel tests, the demo and benchmarks.
 *
 * One thread, one epoll loop (the server core is h2server.c, shared with
 * fake-fcm). Each connection is a non-blocking OpenSSL stream (TLS 1.2+,
 * ALPN "h2" only) feeding an nghttp2 server session. Requests are checked
 * the way APNs documents (path, method, headers, ES256 provider token,
 * payload), optionally answered by a script (status, delay, GOAWAY, drop,
 * an answer cut off) and logged one JSON line each. docs/fakes.md is the
 * user's guide; this file keeps the why.
 *
 * Speed matters (a benchmark drives it with h2load at >= 50,000 req/s):
 * request objects come from a pool, JWT signatures are verified once per
 * token per connection, payloads are checked without allocating, output
 * is batched into one buffer per connection and the record is flushed
 * once per socket write rather than once per request.
 */
#include "apns_jwt.h"
#include "apns_record.h"
#include "apns_rules.h"
#include "h2server.h"
#include "jsonlite.h"

#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <arpa/inet.h>
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

#define MAX_REQS 8192               /* request objects alive at once, all connections */
#define MAX_CONCURRENT_STREAMS 1000 /* what we advertise per connection */
#define HDR_ARENA 8192              /* header bytes kept per request; also advertised */
#define MAX_HDRS 64
#define BODY_LIMIT 4096      /* Apple: 4 KB for regular notifications */
#define BODY_LIMIT_VOIP 5120 /* Apple: 5 KB for VoIP notifications */
#define RESP_BODY_MAX 160
#define JWT_CACHE 4 /* distinct tokens remembered per connection */
#define MAX_TOPIC 255
#define COLLAPSE_ID_MAX 64

#define PATH_PREFIX "/3/device/"
#define PATH_PREFIX_LEN (sizeof(PATH_PREFIX) - 1)

typedef struct server server;
typedef struct conn conn;

typedef struct hdr_ref {
    uint16_t name_off;
    uint16_t name_len;
    uint16_t value_off;
    uint16_t value_len;
} hdr_ref;

/*
 * One stream's request and answer. Pooled: allocated once, reused for the
 * life of the process, returned when nghttp2 closes the stream (or when
 * the connection goes). Only the fields up to the buffers are reset per
 * use; the buffers are bounded by their length fields.
 */
typedef struct req {
    struct req *next; /* connection's list, or the pool's free list */
    struct req *prev;
    conn *c;
    int32_t id;
    h2s_timer timer; /* queued while a delayed answer waits */
    bool dup_headers;
    bool answered;
    uint16_t nhdr;
    uint16_t arena_len;
    uint32_t body_len; /* bytes received; the first BODY_LIMIT_VOIP are kept */
    enum apns_jwt_verdict jwt;
    const char *team; /* team id of the key that signed the token; "" for none */
    int status;
    int64_t timestamp_ms;  /* 410 only */
    int64_t retry_after_s; /* -1: no header */
    enum fake_cut cut;     /* break the answer off after its start */
    char reason[APNS_REASON_MAX];
    char apns_id[37];
    char resp[RESP_BODY_MAX];
    size_t resp_len;
    size_t resp_off;
    hdr_ref hdr[MAX_HDRS];
    char body[BODY_LIMIT_VOIP];
    char arena[HDR_ARENA];
} req;

typedef struct jwt_entry {
    char *tok; /* NULL when the slot is empty */
    size_t len;
    enum apns_jwt_verdict sig; /* OK or INVALID: the time is checked per use */
    int key;
    int64_t iat;
} jwt_entry;

/* A connection: the shared core's part first (h2server.h), then ours. */
struct conn {
    h2s_conn base;
    server *srv;
    req *reqs;
    jwt_entry jwt[JWT_CACHE];
    unsigned jwt_next;
    int cert;            /* with --client-ca: CERT_* (decided after the handshake) */
    char cert_uid[256];  /* the client certificate's UID (bundle id), "" when none */
};

enum { CERT_UNKNOWN = 0, CERT_NONE, CERT_OK, CERT_BAD };

typedef struct options {
    const char *listen;
    const char *cert;
    const char *key;
    const char *auth_keys[APNS_JWT_MAX_KEYS];
    const char *key_ids[APNS_JWT_MAX_KEYS];
    const char *team_ids[APNS_JWT_MAX_KEYS];
    int n_auth_keys;
    int n_key_ids;
    int n_team_ids;
    const char *topic;
    const char *team_topics[APNS_JWT_MAX_KEYS]; /* "TEAMID=topic,topic" */
    int n_team_topics;
    const char *client_ca;
    const char *record;
    bool no_record;
    const char *script;
    const char *port_file;
    bool strict_refresh;
    bool verbose;
} options;

struct server {
    const options *opt;
    h2s_server *h2s;
    SSL_CTX *ctx;
    nghttp2_session_callbacks *cbs;
    apns_keyring *keys;
    apns_rules rules;
    apns_record *rec;
    bool rec_failed;
    uint64_t requests;
    req *free_reqs;
    size_t nreqs;
    uint64_t rng;
    bool warned_reqs;
};

/* ---- small helpers ------------------------------------------------------ */

static void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void logmsg(const char *fmt, ...)
{
    va_list ap;

    fputs("fake-apns: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* splitmix64: apns-ids only need to be unique, not secret. */
static uint64_t rng_next(server *s)
{
    uint64_t z = (s->rng += 0x9E3779B97F4A7C15ULL);

    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* Writes a random (version 4) UUID in canonical lowercase 8-4-4-4-12 form. */
static void uuid4(server *s, char out[37])
{
    static const char hex[] = "0123456789abcdef";
    uint8_t b[16];
    uint64_t a = rng_next(s);
    uint64_t c = rng_next(s);
    int i;
    int o = 0;

    memcpy(b, &a, 8);
    memcpy(b + 8, &c, 8);
    b[6] = (uint8_t)((b[6] & 0x0F) | 0x40);
    b[8] = (uint8_t)((b[8] & 0x3F) | 0x80);
    for (i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) {
            out[o++] = '-';
        }
        out[o++] = hex[b[i] >> 4];
        out[o++] = hex[b[i] & 15];
    }
    out[o] = '\0';
}

static bool is_hex_char(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* Canonical UUID text: 8-4-4-4-12 hex digits (either case). */
static bool uuid_valid(const char *p, size_t n)
{
    size_t i;

    if (n != 36) {
        return false;
    }
    for (i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (p[i] != '-') {
                return false;
            }
        } else if (!is_hex_char(p[i])) {
            return false;
        }
    }
    return true;
}

static bool bytes_is(apns_bytes b, const char *lit)
{
    size_t n = strlen(lit);

    return b.n == n && memcmp(b.p, lit, n) == 0;
}

static bool bytes_ends_with(apns_bytes b, const char *base, const char *suffix)
{
    size_t nb = strlen(base);
    size_t ns = strlen(suffix);

    return b.n == nb + ns && memcmp(b.p, base, nb) == 0 && memcmp(b.p + nb, suffix, ns) == 0;
}

/* ---- request objects and the delay heap -------------------------------- */

static req *req_get(server *s)
{
    req *r = s->free_reqs;

    if (r != NULL) {
        s->free_reqs = r->next;
        return r;
    }
    if (s->nreqs >= MAX_REQS) {
        return NULL;
    }
    r = malloc(sizeof(*r));
    if (r != NULL) {
        s->nreqs++;
    }
    return r;
}

static void req_put(server *s, req *r)
{
    r->next = s->free_reqs;
    s->free_reqs = r;
}

/* Unlinks r from its connection and the heap and returns it to the pool. */
static void req_release(server *s, req *r)
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
    req_put(s, r);
}

/* ---- headers ------------------------------------------------------------ */

/* First header named name; .p is NULL when there is none. */
static apns_bytes req_header(const req *r, const char *name)
{
    size_t n = strlen(name);
    apns_bytes b = {NULL, 0};
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

/* ---- the record --------------------------------------------------------- */

static const char *cert_name(int v)
{
    switch (v) {
    case CERT_NONE:
        return "none";
    case CERT_OK:
        return "ok";
    case CERT_BAD:
        return "bad";
    default:
        return "";
    }
}

static void record_req(conn *c, const req *r, const char *action)
{
    server *s = c->srv;
    apns_record_header hs[MAX_HDRS];
    apns_record_entry e;
    apns_bytes path = req_header(r, ":path");
    size_t n = 0;
    uint16_t i;

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
    e.method = req_header(r, ":method");
    e.path = path;
    if (path.n >= PATH_PREFIX_LEN && memcmp(path.p, PATH_PREFIX, PATH_PREFIX_LEN) == 0) {
        e.token.p = path.p + PATH_PREFIX_LEN;
        e.token.n = path.n - PATH_PREFIX_LEN;
    }
    if (e.method.p == NULL) {
        e.method.p = "";
    }
    if (e.path.p == NULL) {
        e.path.p = "";
    }
    if (e.token.p == NULL) {
        e.token.p = "";
    }
    e.headers = hs;
    e.nheaders = n;
    e.body.p = r->body;
    e.body.n = r->body_len < BODY_LIMIT_VOIP ? r->body_len : BODY_LIMIT_VOIP;
    e.jwt = apns_jwt_verdict_name(r->jwt);
    e.team = r->team != NULL ? r->team : "";
    e.cert = cert_name(c->cert);
    e.cert_uid = c->cert_uid;
    e.status = r->status;
    e.reason = r->reason;
    e.apns_id = r->apns_id;
    e.action = action;
    apns_record_write(s->rec, &e);
}

/* Pushes buffered record lines to the file; called before any socket write. */
static void record_flush(server *s)
{
    int rc;

    if (s->rec == NULL) {
        return;
    }
    rc = apns_record_flush(s->rec);
    if (rc != 0 && !s->rec_failed) {
        s->rec_failed = true;
        logmsg("writing the record failed: %s (reported once)", strerror(-rc));
    }
}

/* ---- answering ---------------------------------------------------------- */

static ssize_t resp_read(nghttp2_session *h2, int32_t stream_id, uint8_t *buf, size_t length,
                         uint32_t *data_flags, nghttp2_data_source *source, void *user_data)
{
    req *r = source->ptr;
    size_t n = r->resp_len - r->resp_off;

    (void)user_data;
    if (r->cut != FAKE_CUT_NONE) {
        return h2s_cut_read(&r->c->base, h2, stream_id, r->cut, r->resp, r->resp_len,
                            &r->resp_off, buf, length);
    }
    if (n > length) {
        n = length;
    }
    memcpy(buf, r->resp + r->resp_off, n);
    r->resp_off += n;
    if (r->resp_off == r->resp_len) {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    }
    return (ssize_t)n;
}

#define NV(n, v, vl)                                                                               \
    {                                                                                              \
        (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, (vl), NGHTTP2_NV_FLAG_NONE                  \
    }

/*
 * Records r and submits its answer (r->status and friends). nghttp2 copies
 * the header values, so the stack buffers here may go.
 * Returns 0, or an nghttp2 error code.
 */
static int respond(conn *c, req *r)
{
    char status_str[4];
    char clen[12];
    char retry[24];
    nghttp2_nv nva[6];
    size_t n = 0;
    nghttp2_data_provider prd;
    int rv;

    record_req(c, r, fake_cut_action(r->cut));
    c->srv->requests++;
    r->answered = true;
    snprintf(status_str, sizeof(status_str), "%03d", r->status);
    nva[n++] = (nghttp2_nv)NV(":status", status_str, 3);
    nva[n++] = (nghttp2_nv)NV("apns-id", r->apns_id, strlen(r->apns_id));
    if (r->retry_after_s >= 0) {
        int l = snprintf(retry, sizeof(retry), "%" PRId64, r->retry_after_s);
        nva[n++] = (nghttp2_nv)NV("retry-after", retry, (size_t)l);
    }
    r->resp_len = 0;
    r->resp_off = 0;
    if (r->status == 200 && r->cut == FAKE_CUT_NONE) {
        return nghttp2_submit_response(c->base.h2, r->id, nva, n, NULL);
    }
    if (r->status == 200) {
        /* a cut 200: HEADERS without END_STREAM, then cut_read decides */
        prd.source.ptr = r;
        prd.read_callback = resp_read;
        return nghttp2_submit_response(c->base.h2, r->id, nva, n, &prd);
    }
    if (r->status == 410) {
        r->resp_len = (size_t)snprintf(r->resp, sizeof(r->resp),
                                       "{\"reason\":\"%s\",\"timestamp\":%" PRId64 "}", r->reason,
                                       r->timestamp_ms);
    } else {
        r->resp_len = (size_t)snprintf(r->resp, sizeof(r->resp), "{\"reason\":\"%s\"}", r->reason);
    }
    r->resp_off = 0;
    {
        int l = snprintf(clen, sizeof(clen), "%zu", r->resp_len);
        nva[n++] = (nghttp2_nv)NV("content-type", "application/json", 16);
        nva[n++] = (nghttp2_nv)NV("content-length", clen, (size_t)l);
    }
    prd.source.ptr = r;
    prd.read_callback = resp_read;
    rv = nghttp2_submit_response(c->base.h2, r->id, nva, n, &prd);
    return rv;
}

static void set_answer(req *r, int status, const char *reason)
{
    r->status = status;
    snprintf(r->reason, sizeof(r->reason), "%s", reason);
}

/*
 * The provider-token verdict for r, from the connection's cache when this
 * exact token was seen before on it. *too_soon is set when
 * --strict-token-refresh refuses the token as a refresh within 20 minutes.
 */
static enum apns_jwt_verdict check_auth(conn *c, const req *r, bool *too_soon, int *key)
{
    server *s = c->srv;
    apns_bytes auth = req_header(r, "authorization");
    const char *tok;
    size_t len;
    jwt_entry *e = NULL;
    unsigned i;
    int64_t now_s;
    enum apns_jwt_verdict v;

    *too_soon = false;
    *key = -1;
    if (auth.p == NULL) {
        return APNS_JWT_MISSING;
    }
    if (auth.n <= 7 || strncasecmp(auth.p, "bearer ", 7) != 0) {
        return APNS_JWT_INVALID;
    }
    tok = auth.p + 7;
    len = auth.n - 7;
    if (len > APNS_JWT_MAX_TOKEN) {
        return APNS_JWT_INVALID;
    }
    for (i = 0; i < JWT_CACHE; i++) {
        if (c->jwt[i].tok != NULL && c->jwt[i].len == len && memcmp(c->jwt[i].tok, tok, len) == 0) {
            e = &c->jwt[i];
            break;
        }
    }
    if (e == NULL) {
        /* A new token on this connection: verify once, remember the verdict.
         * The slot's copy is the only allocation per distinct token. */
        char *copy = malloc(len);
        e = &c->jwt[c->jwt_next];
        c->jwt_next = (c->jwt_next + 1) % JWT_CACHE;
        free(e->tok);
        e->tok = NULL;
        e->sig = apns_jwt_verify(s->keys, tok, len, &e->key, &e->iat);
        if (copy == NULL) {
            return e->sig;
        }
        memcpy(copy, tok, len);
        e->tok = copy;
        e->len = len;
    }
    if (e->sig != APNS_JWT_OK) {
        return APNS_JWT_INVALID;
    }
    *key = e->key;
    now_s = h2s_now_real_ms() / 1000;
    v = apns_jwt_check_time(e->iat, now_s);
    if (v == APNS_JWT_OK && s->opt->strict_refresh &&
        apns_keyring_note_token(s->keys, e->key, tok, len, now_s) != 0) {
        *too_soon = true;
    }
    return v;
}

static bool push_type_valid(apns_bytes t)
{
    static const char *const types[] = {"alert",        "background",   "voip",
                                        "complication", "fileprovider", "mdm",
                                        "liveactivity", "pushtotalk",   "location"};
    size_t i;

    for (i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        if (bytes_is(t, types[i])) {
            return true;
        }
    }
    return false;
}

/* With --topic: the bundle id itself or Apple's suffixed forms of it. */
static bool topic_allowed(const char *base, apns_bytes t)
{
    static const char *const suffixes[] = {"",
                                           ".voip",
                                           ".complication",
                                           ".pushkit.fileprovider",
                                           ".push-type.liveactivity",
                                           ".voip-ptt",
                                           ".location-query"};
    size_t i;

    for (i = 0; i < sizeof(suffixes) / sizeof(suffixes[0]); i++) {
        if (bytes_ends_with(t, base, suffixes[i])) {
            return true;
        }
    }
    return false;
}

static bool all_digits(apns_bytes b, size_t max)
{
    size_t i;

    if (b.n == 0 || b.n > max) {
        return false;
    }
    for (i = 0; i < b.n; i++) {
        if (b.p[i] < '0' || b.p[i] > '9') {
            return false;
        }
    }
    return true;
}

/* With --team-topics: the team that owns topic t, or NULL when no team
 * claims it (then any configured key may push to it). */
static const char *topic_team(const server *s, apns_bytes t, size_t *team_len)
{
    int i;

    for (i = 0; i < s->opt->n_team_topics; i++) {
        const char *spec = s->opt->team_topics[i];
        const char *eq = strchr(spec, '=');
        const char *p = eq + 1;
        while (*p) {
            size_t n = strcspn(p, ",");
            if (n == t.n && memcmp(p, t.p, n) == 0) {
                *team_len = (size_t)(eq - spec);
                return spec;
            }
            p += n;
            if (*p == ',') {
                p++;
            }
        }
    }
    return NULL;
}

/* The client certificate's verdict, once per connection (--client-ca). */
static void check_cert(conn *c)
{
    X509 *x;
    X509_NAME *name;
    int idx;

    if (c->cert != CERT_UNKNOWN) {
        return;
    }
    x = SSL_get1_peer_certificate(c->base.ssl);
    if (x == NULL) {
        c->cert = CERT_NONE;
        return;
    }
    c->cert = SSL_get_verify_result(c->base.ssl) == X509_V_OK ? CERT_OK : CERT_BAD;
    name = X509_get_subject_name(x);
    idx = X509_NAME_get_index_by_NID(name, NID_userId, -1);
    if (idx >= 0) {
        ASN1_STRING *d = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, idx));
        int n = ASN1_STRING_length(d);
        if (n > 0 && (size_t)n < sizeof(c->cert_uid)) {
            memcpy(c->cert_uid, ASN1_STRING_get0_data(d), (size_t)n);
            c->cert_uid[n] = '\0';
        }
    }
    X509_free(x);
}


/*
 * Checks a request in the order documented in docs/fakes.md and sets its
 * answer (200 when all is well). Returns false when the first failure was
 * found: r->status/reason say which.
 */
static bool validate(conn *c, req *r, apns_bytes *token)
{
    server *s = c->srv;
    apns_bytes method = req_header(r, ":method");
    apns_bytes path = req_header(r, ":path");
    apns_bytes topic = req_header(r, "apns-topic");
    apns_bytes push_type = req_header(r, "apns-push-type");
    apns_bytes prio = req_header(r, "apns-priority");
    apns_bytes exp = req_header(r, "apns-expiration");
    apns_bytes collapse = req_header(r, "apns-collapse-id");
    apns_bytes id = req_header(r, "apns-id");
    size_t limit = BODY_LIMIT;
    bool too_soon;
    int key;
    const char *owner;
    size_t owner_len = 0;
    bool by_cert;

    token->p = NULL;
    token->n = 0;
    if (path.p != NULL && path.n >= PATH_PREFIX_LEN &&
        memcmp(path.p, PATH_PREFIX, PATH_PREFIX_LEN) == 0) {
        token->p = path.p + PATH_PREFIX_LEN;
        token->n = path.n - PATH_PREFIX_LEN;
    }
    /* The verdict is worked out even when an earlier check fails, so the
     * record always says what the token was. */
    r->jwt = check_auth(c, r, &too_soon, &key);
    r->team = key >= 0 ? s->opt->team_ids[key] : "";
    if (s->opt->client_ca != NULL) {
        check_cert(c);
    }
    /* A verified client certificate authenticates the connection; the
     * authorization header is then not looked at (Apple: certificate or
     * token). */
    by_cert = c->cert == CERT_OK;
    owner = topic.p != NULL ? topic_team(s, topic, &owner_len) : NULL;

    if (token->p == NULL) {
        set_answer(r, 404, "BadPath");
    } else if (!bytes_is(method, "POST")) {
        set_answer(r, 405, "MethodNotAllowed");
    } else if (r->dup_headers) {
        set_answer(r, 400, "DuplicateHeaders");
    } else if (!by_cert && c->cert == CERT_BAD) {
        set_answer(r, 403, "BadCertificate");
    } else if (by_cert && c->cert_uid[0] && topic.p != NULL && topic.n > 0 &&
               !topic_allowed(c->cert_uid, topic)) {
        /* a certificate serves its own bundle id (and its suffixed forms) */
        set_answer(r, 400, "TopicDisallowed");
    } else if (by_cert) {
        goto common;
    } else if (r->jwt == APNS_JWT_MISSING) {
        set_answer(r, 403, "MissingProviderToken");
    } else if (r->jwt == APNS_JWT_INVALID) {
        set_answer(r, 403, "InvalidProviderToken");
    } else if (r->jwt == APNS_JWT_EXPIRED) {
        set_answer(r, 403, "ExpiredProviderToken");
    } else if (too_soon) {
        set_answer(r, 429, "TooManyProviderTokenUpdates");
    } else if (owner != NULL &&
               (strlen(r->team) != owner_len || memcmp(r->team, owner, owner_len) != 0)) {
        /* the topic belongs to another team: this team's key is no good */
        set_answer(r, 403, "InvalidProviderToken");
    } else {
        goto common;
    }
    return false;
common:
    if (topic.p == NULL || topic.n == 0) {
        set_answer(r, 400, "MissingTopic");
    } else if (s->opt->topic != NULL && !topic_allowed(s->opt->topic, topic)) {
        set_answer(r, 400, "TopicDisallowed");
    } else if (token->n == 0) {
        set_answer(r, 400, "MissingDeviceToken");
    } else if (!apns_token_valid(token->p, token->n)) {
        set_answer(r, 400, "BadDeviceToken");
    } else if (push_type.p != NULL && !push_type_valid(push_type)) {
        set_answer(r, 400, "InvalidPushType");
    } else if (prio.p != NULL && !bytes_is(prio, "10") && !bytes_is(prio, "5") &&
               !bytes_is(prio, "1")) {
        set_answer(r, 400, "BadPriority");
    } else if (prio.p != NULL && bytes_is(prio, "10") && push_type.p != NULL &&
               bytes_is(push_type, "background")) {
        /* Apple: background notifications must use priority 5. */
        set_answer(r, 400, "BadPriority");
    } else if (exp.p != NULL && !all_digits(exp, 18)) {
        set_answer(r, 400, "BadExpirationDate");
    } else if (collapse.p != NULL && collapse.n > COLLAPSE_ID_MAX) {
        set_answer(r, 400, "BadCollapseId");
    } else if (id.p != NULL && !uuid_valid(id.p, id.n)) {
        set_answer(r, 400, "BadMessageId");
    } else if (r->body_len == 0) {
        set_answer(r, 400, "PayloadEmpty");
    } else {
        if (push_type.p != NULL && bytes_is(push_type, "voip")) {
            limit = BODY_LIMIT_VOIP;
        }
        if (r->body_len > limit) {
            set_answer(r, 413, "PayloadTooLarge");
        } else if (jsonlite_check_apns_payload(r->body, r->body_len) != JSONLITE_OK) {
            /* Apple lists no reason for a payload that is not JSON or has
             * no "aps" dictionary; PayloadEmpty ("the message payload is
             * empty") is the closest it has. See docs/fakes.md. */
            set_answer(r, 400, "PayloadEmpty");
        } else {
            set_answer(r, 200, "");
            return true;
        }
    }
    return false;
}

/* Queues GOAWAY so that r's stream and every later one go unanswered. */
static void send_goaway(conn *c, req *r, const apns_rule *rule)
{
    char dbg[64];
    size_t dlen = 0;
    int32_t last = r->id - 2;

    if (last < 0) {
        last = 0;
    }
    if (rule->reason[0] != '\0') {
        /* Apple puts {"reason":...} in GOAWAY debug data too. */
        dlen = (size_t)snprintf(dbg, sizeof(dbg), "{\"reason\":\"%s\"}", rule->reason);
    }
    nghttp2_submit_goaway(c->base.h2, NGHTTP2_FLAG_NONE, last, NGHTTP2_NO_ERROR,
                          dlen > 0 ? (const uint8_t *)dbg : NULL, dlen);
    c->base.goaway = true;
    c->base.goaway_last = last;
}

/*
 * A request is complete (END_STREAM seen). Decide, record and answer.
 * Returns 0, or NGHTTP2_ERR_CALLBACK_FAILURE to stop nghttp2 reading any
 * further (a drop rule fired, so the rest of the input must go unseen).
 */
static int handle_request(conn *c, req *r)
{
    server *s = c->srv;
    apns_bytes token;
    apns_bytes id;
    const apns_rule *rule = NULL;
    int64_t delay_ms = 0;

    if (c->base.goaway && r->id > c->base.goaway_last) {
        return 0; /* beyond our GOAWAY: the client replays it elsewhere */
    }
    r->retry_after_s = -1;
    r->timestamp_ms = 0;
    id = req_header(r, "apns-id");
    if (id.p != NULL && uuid_valid(id.p, id.n)) {
        memcpy(r->apns_id, id.p, 36);
        r->apns_id[36] = '\0';
    } else {
        uuid4(s, r->apns_id);
    }

    if (validate(c, r, &token) && s->rules.n > 0) {
        rule = apns_rules_match(&s->rules, token.p, token.n);
    }
    if (rule != NULL) {
        switch (rule->action) {
        case APNS_ACT_DROP:
            set_answer(r, 0, "");
            record_req(c, r, "drop");
            s->requests++;
            c->base.drop = true;
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        case APNS_ACT_GOAWAY:
            set_answer(r, 0, "");
            record_req(c, r, "goaway");
            s->requests++;
            send_goaway(c, r, rule);
            return 0;
        case APNS_ACT_REPLY:
            set_answer(r, rule->status, rule->reason);
            r->retry_after_s = rule->retry_after_s;
            r->cut = rule->cut;
            r->timestamp_ms = rule->timestamp_ms >= 0 ? rule->timestamp_ms : h2s_now_real_ms();
            delay_ms = rule->delay_ms;
            break;
        }
    }
    if (delay_ms > 0) {
        /* Answer later without blocking the loop; the record line is
         * written when the answer goes out. */
        h2s_timer_add(s->h2s, &r->timer, h2s_now_mono_ms() + delay_ms);
        return 0;
    }
    if (respond(c, r) != 0) {
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    return 0;
}

/* ---- nghttp2 callbacks -------------------------------------------------- */

static int on_begin_headers(nghttp2_session *h2, const nghttp2_frame *frame, void *user_data)
{
    conn *c = user_data;
    server *s = c->srv;
    req *r;

    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
        return 0;
    }
    r = req_get(s);
    if (r == NULL) {
        if (!s->warned_reqs) {
            s->warned_reqs = true;
            logmsg("%d requests in flight: refusing streams (reported once)", MAX_REQS);
        }
        nghttp2_submit_rst_stream(h2, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                                  NGHTTP2_REFUSED_STREAM);
        return 0;
    }
    r->c = c;
    r->id = frame->hd.stream_id;
    r->timer.idx = -1;
    r->dup_headers = false;
    r->answered = false;
    r->nhdr = 0;
    r->arena_len = 0;
    r->body_len = 0;
    r->jwt = APNS_JWT_MISSING;
    r->status = 0;
    r->cut = FAKE_CUT_NONE;
    r->reason[0] = '\0';
    r->apns_id[0] = '\0';
    r->prev = NULL;
    r->next = c->reqs;
    if (c->reqs != NULL) {
        c->reqs->prev = r;
    }
    c->reqs = r;
    nghttp2_session_set_stream_user_data(h2, r->id, r);
    return 0;
}

static int on_header(nghttp2_session *h2, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user_data)
{
    req *r;
    hdr_ref *h;
    uint16_t i;

    (void)flags;
    (void)user_data;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
        return 0; /* trailers are ignored */
    }
    r = nghttp2_session_get_stream_user_data(h2, frame->hd.stream_id);
    if (r == NULL) {
        return 0;
    }
    if (r->nhdr == MAX_HDRS || namelen + valuelen > (size_t)(HDR_ARENA - r->arena_len)) {
        /* Beyond the SETTINGS_MAX_HEADER_LIST_SIZE we advertised: the
         * stream is reset rather than answered with a made-up reason. */
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    if (namelen > 0 && name[0] != ':') {
        for (i = 0; i < r->nhdr && !r->dup_headers; i++) {
            if (r->hdr[i].name_len == namelen &&
                memcmp(r->arena + r->hdr[i].name_off, name, namelen) == 0) {
                r->dup_headers = true;
            }
        }
    }
    h = &r->hdr[r->nhdr++];
    h->name_off = r->arena_len;
    h->name_len = (uint16_t)namelen;
    memcpy(r->arena + r->arena_len, name, namelen);
    r->arena_len = (uint16_t)(r->arena_len + namelen);
    h->value_off = r->arena_len;
    h->value_len = (uint16_t)valuelen;
    memcpy(r->arena + r->arena_len, value, valuelen);
    r->arena_len = (uint16_t)(r->arena_len + valuelen);
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
    if (r->body_len < BODY_LIMIT_VOIP) {
        size_t room = BODY_LIMIT_VOIP - r->body_len;
        memcpy(r->body + r->body_len, data, len < room ? len : room);
    }
    /* Keep counting past the limit (saturating) so 413 knows the size. */
    r->body_len = len > UINT32_MAX - r->body_len ? UINT32_MAX : r->body_len + (uint32_t)len;
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
    if (r == NULL || r->answered) {
        return 0;
    }
    return handle_request(c, r);
}

static int on_stream_close(nghttp2_session *h2, int32_t stream_id, uint32_t error_code,
                           void *user_data)
{
    conn *c = user_data;
    req *r = nghttp2_session_get_stream_user_data(h2, stream_id);

    (void)error_code;
    if (r != NULL) {
        nghttp2_session_set_stream_user_data(h2, stream_id, NULL);
        req_release(c->srv, r);
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
    unsigned i;

    /* The session is gone and called no stream-close callbacks, so the
     * connection's request objects go back to the pool here. */
    while (c->reqs != NULL) {
        req_release(c->srv, c->reqs);
    }
    for (i = 0; i < JWT_CACHE; i++) {
        free(c->jwt[i].tok);
    }
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

/* ---- TLS ---------------------------------------------------------------- */

/*
 * ALPN: "h2" or nothing. Returning ALERT_FATAL makes OpenSSL send the
 * no_application_protocol alert, as APNs does to an HTTP/1.1 client.
 */
static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    unsigned int i = 0;

    (void)ssl;
    (void)arg;
    while (i < inlen) {
        unsigned int l = in[i];
        if (l == 2 && i + 1 + l <= inlen && memcmp(in + i + 1, "h2", 2) == 0) {
            *out = in + i + 1;
            *outlen = 2;
            return SSL_TLSEXT_ERR_OK;
        }
        i += 1 + l;
    }
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

/* A client offering no ALPN at all is refused the same way. */
static int client_hello_cb(SSL *ssl, int *al, void *arg)
{
    const unsigned char *ext;
    size_t len;

    (void)arg;
    if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_application_layer_protocol_negotiation, &ext,
                                  &len) != 1) {
        *al = SSL_AD_NO_APPLICATION_PROTOCOL;
        return SSL_CLIENT_HELLO_ERROR;
    }
    return SSL_CLIENT_HELLO_SUCCESS;
}

static int accept_any_cert(int ok, X509_STORE_CTX *x)
{
    (void)ok;
    (void)x;
    return 1; /* the verdict is read per connection with SSL_get_verify_result */
}

static SSL_CTX *make_tls(const options *o)
{
    SSL_CTX *ctx = h2s_tls_ctx_new("fake-apns", o->cert, o->key);
    char buf[256];

    if (ctx == NULL) {
        return NULL;
    }
    SSL_CTX_set_read_ahead(ctx, 1);
    if (o->client_ca != NULL) {
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(o->client_ca);
        if (names == NULL || SSL_CTX_load_verify_locations(ctx, o->client_ca, NULL) != 1) {
            ERR_error_string_n(ERR_get_error(), buf, sizeof(buf));
            logmsg("--client-ca %s: %s", o->client_ca, buf);
            sk_X509_NAME_pop_free(names, X509_NAME_free);
            SSL_CTX_free(ctx);
            return NULL;
        }
        SSL_CTX_set_client_CA_list(ctx, names);
        /* Ask for a certificate, accept the handshake whatever comes, and
         * answer per request (MissingProviderToken, BadCertificate) as
         * Apple does, instead of failing the handshake. */
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, accept_any_cert);
    }
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
    SSL_CTX_set_client_hello_cb(ctx, client_hello_cb, NULL);
    return ctx;
}

/* ---- listening, signals, the loop --------------------------------------- */

static void reload_rules(h2s_server *hs)
{
    server *s = h2s_user(hs);
    apns_rules nr;
    char err[512];

    if (s->opt->script == NULL) {
        logmsg("SIGHUP: no --script to reload");
        return;
    }
    if (apns_rules_load(s->opt->script, &nr, err, sizeof(err)) != 0) {
        logmsg("SIGHUP: %s (keeping the old rules)", err);
        return;
    }
    apns_rules_free(&s->rules);
    s->rules = nr;
    logmsg("reloaded %zu rules from %s", nr.n, s->opt->script);
}

/* h2server hook: a delayed answer is due. */
static void on_timer(h2s_server *hs, h2s_timer *t)
{
    req *r = (req *)(void *)((char *)t - offsetof(req, timer));
    conn *c = r->c;

    (void)hs;
    if (c->base.dead || (c->base.goaway && r->id > c->base.goaway_last)) {
        return;
    }
    if (respond(c, r) != 0) {
        h2s_conn_kill(&c->base);
        return;
    }
    h2s_conn_pump(&c->base);
}

/* h2server hooks: the record is on disk before any answer leaves, and at
 * the end of every loop turn (before a dropped connection is closed). */
static void before_write(h2s_server *hs)
{
    record_flush(h2s_user(hs));
}

/* ---- command line ------------------------------------------------------- */

static void usage(FILE *f)
{
    fputs("usage: fake-apns --listen HOST:PORT --cert FILE --key FILE\n"
          "                 --auth-key PEM --key-id ID --team-id ID [...more triples]\n"
          "                 [--topic BUNDLE_ID] [--team-topics TEAMID=topic,...]\n"
          "                 [--client-ca PEM] [--record FILE | --no-record]\n"
          "                 [--script FILE] [--port-file FILE] [--strict-token-refresh]\n"
          "                 [--verbose]\n"
          "A fake APNs (HTTP/2 over TLS, ALPN h2) for tests; see docs/fakes.md.\n",
          f);
}

/* Parses argv into o. Returns 0, 1 for --help, or -1 after printing why. */
static int parse_args(int argc, char **argv, options *o)
{
    enum {
        OPT_LISTEN = 256,
        OPT_CERT,
        OPT_KEY,
        OPT_AUTH_KEY,
        OPT_KEY_ID,
        OPT_TEAM_ID,
        OPT_TOPIC,
        OPT_TEAM_TOPICS,
        OPT_CLIENT_CA,
        OPT_RECORD,
        OPT_NO_RECORD,
        OPT_SCRIPT,
        OPT_PORT_FILE,
        OPT_STRICT,
        OPT_VERBOSE,
        OPT_HELP
    };
    static const struct option longopts[] = {
        {"listen", required_argument, NULL, OPT_LISTEN},
        {"cert", required_argument, NULL, OPT_CERT},
        {"key", required_argument, NULL, OPT_KEY},
        {"auth-key", required_argument, NULL, OPT_AUTH_KEY},
        {"key-id", required_argument, NULL, OPT_KEY_ID},
        {"team-id", required_argument, NULL, OPT_TEAM_ID},
        {"topic", required_argument, NULL, OPT_TOPIC},
        {"team-topics", required_argument, NULL, OPT_TEAM_TOPICS},
        {"client-ca", required_argument, NULL, OPT_CLIENT_CA},
        {"record", required_argument, NULL, OPT_RECORD},
        {"no-record", no_argument, NULL, OPT_NO_RECORD},
        {"script", required_argument, NULL, OPT_SCRIPT},
        {"port-file", required_argument, NULL, OPT_PORT_FILE},
        {"strict-token-refresh", no_argument, NULL, OPT_STRICT},
        {"verbose", no_argument, NULL, OPT_VERBOSE},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    int opt;

    memset(o, 0, sizeof(*o));
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
        case OPT_AUTH_KEY:
        case OPT_KEY_ID:
        case OPT_TEAM_ID: {
            const char **v = opt == OPT_AUTH_KEY ? o->auth_keys
                             : opt == OPT_KEY_ID ? o->key_ids
                                                 : o->team_ids;
            int *n = opt == OPT_AUTH_KEY ? &o->n_auth_keys
                     : opt == OPT_KEY_ID ? &o->n_key_ids
                                         : &o->n_team_ids;
            if (*n == APNS_JWT_MAX_KEYS) {
                logmsg("--%s: at most %d", longopts[opt - OPT_LISTEN].name, APNS_JWT_MAX_KEYS);
                return -1;
            }
            v[(*n)++] = optarg;
            break;
        }
        case OPT_TOPIC:
            if (optarg[0] == '\0' || strlen(optarg) > MAX_TOPIC) {
                logmsg("--topic: 1..%d characters", MAX_TOPIC);
                return -1;
            }
            o->topic = optarg;
            break;
        case OPT_TEAM_TOPICS: {
            const char *eq = strchr(optarg, '=');
            if (eq == NULL || eq == optarg || eq[1] == '\0' || strstr(optarg, ",,") != NULL ||
                eq[strlen(eq) - 1] == ',') {
                logmsg("--team-topics: TEAMID=topic[,topic...]");
                return -1;
            }
            if (o->n_team_topics == APNS_JWT_MAX_KEYS) {
                logmsg("--team-topics: at most %d", APNS_JWT_MAX_KEYS);
                return -1;
            }
            o->team_topics[o->n_team_topics++] = optarg;
            break;
        }
        case OPT_CLIENT_CA:
            o->client_ca = optarg;
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
        case OPT_STRICT:
            o->strict_refresh = true;
            break;
        case OPT_VERBOSE:
            o->verbose = true;
            break;
        case OPT_HELP:
            usage(stdout);
            return 1;
        default:
            /* getopt_long has said which option was wrong. */
            usage(stderr);
            return -1;
        }
    }
    if (optind < argc) {
        logmsg("unexpected argument '%s'", argv[optind]);
        return -1;
    }
    if (o->listen == NULL) {
        logmsg("--listen is required");
        return -1;
    }
    if (o->cert == NULL) {
        logmsg("--cert is required");
        return -1;
    }
    if (o->key == NULL) {
        logmsg("--key is required");
        return -1;
    }
    if (o->n_auth_keys == 0 && o->client_ca == NULL) {
        logmsg("--auth-key is required (with --key-id and --team-id), or --client-ca");
        return -1;
    }
    if (o->n_key_ids != o->n_auth_keys || o->n_team_ids != o->n_auth_keys) {
        logmsg("--auth-key, --key-id and --team-id come in triples (got %d, %d, %d)",
               o->n_auth_keys, o->n_key_ids, o->n_team_ids);
        return -1;
    }
    if (o->record != NULL && o->no_record) {
        logmsg("--record and --no-record exclude each other");
        return -1;
    }
    return 0;
}

/* ---- main --------------------------------------------------------------- */

static int setup(server *s, const options *o)
{
    char err[512];
    h2s_config hc;
    int i;

    s->opt = o;
    if (getrandom(&s->rng, sizeof(s->rng), 0) != (ssize_t)sizeof(s->rng)) {
        s->rng = (uint64_t)h2s_now_real_ms() ^ ((uint64_t)getpid() << 32);
    }
    s->keys = apns_keyring_create();
    if (s->keys == NULL) {
        logmsg("out of memory");
        return 1;
    }
    for (i = 0; i < o->n_auth_keys; i++) {
        if (apns_keyring_add(s->keys, o->auth_keys[i], o->key_ids[i], o->team_ids[i], err,
                             sizeof(err)) != 0) {
            logmsg("--auth-key: %s", err);
            return 2;
        }
    }
    if (o->script != NULL && apns_rules_load(o->script, &s->rules, err, sizeof(err)) != 0) {
        logmsg("%s", err);
        return 2;
    }
    s->ctx = make_tls(o);
    if (s->ctx == NULL) {
        return 2;
    }
    if (o->record != NULL) {
        s->rec = apns_record_open(o->record, err, sizeof(err));
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
    hc.name = "fake-apns";
    hc.listen = o->listen;
    hc.port_file = o->port_file;
    hc.verbose = o->verbose;
    hc.ctx = s->ctx;
    hc.cbs = s->cbs;
    hc.max_concurrent_streams = MAX_CONCURRENT_STREAMS;
    hc.max_header_list = HDR_ARENA;
    hc.local_window = 1 << 24;
    hc.out_initial = H2S_OUT_HIGH * 2;
    hc.max_timers = MAX_REQS;
    hc.conn_size = sizeof(conn);
    hc.hooks.conn_open = conn_open;
    hc.hooks.conn_free = conn_free;
    hc.hooks.goaway_pending = goaway_pending;
    hc.hooks.timer = on_timer;
    hc.hooks.before_write = before_write;
    hc.hooks.end_of_turn = before_write;
    hc.hooks.reload = reload_rules;
    hc.user = s;
    return h2s_create(&hc, &s->h2s);
}

static void teardown(server *s)
{
    h2s_destroy(s->h2s); /* connections first: their requests go back to the pool */
    s->h2s = NULL;
    while (s->free_reqs != NULL) {
        req *r = s->free_reqs;
        s->free_reqs = r->next;
        free(r);
    }
    if (s->rec != NULL && apns_record_close(s->rec) != 0) {
        logmsg("closing the record failed");
    }
    if (s->cbs != NULL) {
        nghttp2_session_callbacks_del(s->cbs);
    }
    SSL_CTX_free(s->ctx);
    apns_rules_free(&s->rules);
    apns_keyring_destroy(s->keys);
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
    /* OpenSSL writes to sockets with write(2): a vanished peer must give
     * EPIPE, not kill the fake. */
    signal(SIGPIPE, SIG_IGN);
    s = calloc(1, sizeof(*s));
    if (s == NULL) {
        logmsg("out of memory");
        return 1;
    }
    rc = setup(s, &o);
    if (rc == 0) {
        rc = h2s_run(s->h2s) == 0 ? 0 : 1;
        logmsg("stopping: %" PRIu64 " requests on %" PRIu64 " connections", s->requests,
               h2s_connections(s->h2s));
    }
    teardown(s);
    free(s);
    return rc;
}
