/*
 * test_tenants.c - several credentials in one channel, and APNs certificate
 * auth, against the real fakes on a real Tidings loop.
 *
 * usage: test_tenants FAKE_APNS FAKE_FCM GEN_CERTS_SH FCM_GEN_ACCOUNT_SH PYTHON FAKE_SMS_PY
 *
 *  - two APNs keys of two teams: fake-apns knows both keys and which team
 *    owns which topic (--team-topics), so a request signed by the wrong
 *    team's key fails; each topic's request must carry its own team's JWT;
 *  - APNs provider certificates (PEM, PEM + separate key, PKCS#12 with a
 *    password) as TLS client certificates, verified by fake-apns against a
 *    test CA made here; a wrong PKCS#12 password is an init error; a
 *    certificate from elsewhere gets 403 BadCertificate; neither a
 *    certificate nor a token gets 403 MissingProviderToken;
 *  - two Firebase projects with their own service accounts against one
 *    fake-fcm that knows both (a token of one project is refused for the
 *    other);
 *  - two SMS senders picked by destination prefix, and delivery status by
 *    polling the message resource until its final status.
 *
 * Keys and certificates are made at run time in a temp dir (removed at the
 * end); fakes are child processes that die with the test (PR_SET_PDEATHSIG).
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <cjson/cJSON.h>

#include "apns.h"
#include "config.h"
#include "harness.h"
#include "error.h"
#include "fcm.h"
#include "http.h"
#include "httpd.h"
#include "log.h"
#include "loop.h"
#include "sms.h"

#define GUARD_MS 30000
#define MAX_CALLS 16

static const char *fake_apns, *fake_fcm, *gen_certs, *gen_account, *python, *fake_sms;
static char dir[256];
static loop_t *loop;

/* --- processes ----------------------------------------------------------------- */

/* Run argv to completion (output to DIR/cmd.log); its exit status. */
static int run(const char *const *argv)
{
    char log[300];
    snprintf(log, sizeof(log), "%s/cmd.log", dir);
    return harness_run(argv, log);
}

struct fake {
    struct harness_child c;
    int port;
    char port_file[300];
};

static void dump(const char *path)
{
    FILE *f = fopen(path, "r");
    char line[512];
    if (!f) {
        return;
    }
    printf("--- %s\n", path);
    while (fgets(line, sizeof(line), f)) {
        printf("%s", line);
    }
    fclose(f);
}

/* Start argv (which names port_file as its --port-file) and wait for the port. */
static void fake_start(struct fake *fk, const char *name, const char *const *argv)
{
    char log[300], why[256];
    snprintf(log, sizeof(log), "%s/%s.log", dir, name);
    if (harness_start(&fk->c, name, argv, log, fk->port_file, 15000, why, sizeof(why)) < 0) {
        fail_msg("%s", why);
    }
    fk->port = fk->c.port;
}

static void fake_stop(struct fake *fk)
{
    harness_stop(&fk->c);
}

static void write_file(const char *path, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void write_file(const char *path, const char *fmt, ...)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fclose(f);
}

/* The record's lines (a JSON array of objects; caller deletes). */
static cJSON *read_record(const char *path)
{
    cJSON *all = cJSON_CreateArray();
    FILE *f = fopen(path, "r");
    if (!f) {
        return all;
    }
    static char line[1 << 16];
    while (fgets(line, sizeof(line), f)) {
        cJSON *j = cJSON_Parse(line);
        if (j) {
            cJSON_AddItemToArray(all, j);
        }
    }
    fclose(f);
    return all;
}

static const char *jstr(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : "";
}

static int jint(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valueint : -1;
}

/* --- sending through a channel ---------------------------------------------------- */

struct call {
    int done;
    struct channel_outcome o;
};

struct batch {
    struct call calls[MAX_CALLS];
    int expected, got;
};

static struct batch *cur;

static void on_done(void *ctx, const struct channel_outcome *o)
{
    struct call *c = ctx;
    c->done++;
    c->o = *o;
    if (++cur->got >= cur->expected) {
        loop_stop(loop);
    }
}

static void on_guard(loop_t *l, uint64_t id, void *arg)
{
    (void)id;
    *(bool *)arg = true;
    loop_stop(l);
}

struct dev {
    const char *platform, *token, *app;
};

/* Send one delivery per device through ops/state and wait for every
 * outcome. */
static void send_all(const struct channel_ops *ops, void *st, const struct dev *devs, int n,
                     struct batch *b)
{
    static struct notification notes[MAX_CALLS];
    static struct channel_device cd[MAX_CALLS];
    static struct channel_delivery dl[MAX_CALLS];
    memset(b, 0, sizeof(*b));
    b->expected = n;
    cur = b;
    for (int i = 0; i < n; i++) {
        memset(&notes[i], 0, sizeof(notes[i]));
        notes[i].id = "01HF6Y1M6Z8Q3R4S5T6V7W8X9Y";
        notes[i].to = "user:alice";
        notes[i].to_kind = PROTO_TO_USER;
        notes[i].to_id = "alice";
        notes[i].priority = PROTO_PRIO_NORMAL;
        notes[i].channels = PROTO_CH_ALL;
        notes[i].title = "Door";
        notes[i].body = "Front door opened";
        cd[i] = (struct channel_device){.user_id = "alice", .platform = devs[i].platform,
                                        .token = devs[i].token, .app = devs[i].app,
                                        .environment = "production"};
        dl[i] = (struct channel_delivery){.attempt_id = (uint64_t)i + 1, .n = &notes[i],
                                          .dev = &cd[i], .now_ms = clock_wall_ms()};
        assert_int_equal(ops->send(st, &dl[i], on_done, &b->calls[i]), 0);
    }
    bool timed_out = false;
    uint64_t guard = loop_timer_add(loop, GUARD_MS, on_guard, &timed_out);
    while (b->got < n && !timed_out) {
        loop_run(loop);
    }
    loop_timer_cancel(loop, guard);
    assert_false(timed_out);
    for (int i = 0; i < n; i++) {
        assert_int_equal(b->calls[i].done, 1);
    }
}

static void expect(const struct call *c, enum channel_result r, int status, const char *reason)
{
    if (c->o.result != r || c->o.status != status || strcmp(c->o.reason, reason) != 0) {
        fail_msg("got %s %d '%s', want %s %d '%s'", channel_result_name(c->o.result),
                 c->o.status, c->o.reason, channel_result_name(r), status, reason);
    }
}

static void *open_channel(const struct channel_ops *ops, const void *cfg,
                          const struct channel_env *envp)
{
    struct channel_env env = {.loop = loop};
    void *st = NULL;
    char err[512] = "";
    int rc = ops->init(envp ? envp : &env, cfg, &st, err, sizeof(err));
    if (rc != 0) {
        fail_msg("%s init: %s: %s", ops->name, tdg_strerror(rc), err);
    }
    return st;
}

static void set(const struct channel_ops *ops, void *cfg, const char *k, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void set(const struct channel_ops *ops, void *cfg, const char *k, const char *fmt, ...)
{
    char v[1024], err[CONFIG_ERR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(v, sizeof(v), fmt, ap);
    va_end(ap);
    if (config_set(ops->config, ops->config_n, cfg, k, v, err, sizeof(err)) != 0) {
        fail_msg("config %s: %s", k, err);
    }
}

static void defaults(const struct channel_ops *ops, void *cfg)
{
    char err[CONFIG_ERR_MAX];
    assert_int_equal(config_defaults(ops->config, ops->config_n, cfg, err, sizeof(err)), 0);
}

/* --- APNs: two teams ------------------------------------------------------------------- */

#define TOK_A "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1"
#define TOK_B "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2"

static struct fake apns_fake;
static char apns_record[300];

static void apns_fake_start(bool client_ca)
{
    char cert[300], key[300], k1[300], k2[300], ca[300], script[300];
    snprintf(cert, sizeof(cert), "%s/server.crt", dir);
    snprintf(key, sizeof(key), "%s/server.key", dir);
    snprintf(k1, sizeof(k1), "%s/AuthKey_KEYONE0001.p8", dir);
    snprintf(k2, sizeof(k2), "%s/AuthKey_KEYTWO0002.p8", dir);
    snprintf(ca, sizeof(ca), "%s/push_ca.crt", dir);
    snprintf(apns_record, sizeof(apns_record), "%s/apns.jsonl", dir);
    snprintf(script, sizeof(script), "%s/apns.script", dir);
    write_file(script, "# nothing scripted\n");
    snprintf(apns_fake.port_file, sizeof(apns_fake.port_file), "%s/apns.port", dir);
    unlink(apns_fake.port_file);
    unlink(apns_record);
    const char *argv[40] = {fake_apns, "--listen", "127.0.0.1:0", "--cert", cert, "--key", key,
                            "--auth-key", k1, "--key-id", "KEYONE0001", "--team-id",
                            "TEAMONE001", "--auth-key", k2, "--key-id", "KEYTWO0002",
                            "--team-id", "TEAMTWO002", "--team-topics",
                            "TEAMONE001=com.one.app", "--team-topics",
                            "TEAMTWO002=com.two.app,com.two.extra", "--record", apns_record,
                            "--script", script, "--port-file", apns_fake.port_file};
    int i = 29;
    if (client_ca) {
        argv[i++] = "--client-ca";
        argv[i++] = ca;
    }
    argv[i] = NULL;
    fake_start(&apns_fake, "fake-apns", argv);
}

static void apns_base(struct apns_config *c)
{
    defaults(&apns_channel, c);
    set(&apns_channel, c, "apns.url", "https://127.0.0.1:%d", apns_fake.port);
    set(&apns_channel, c, "apns.ca_file", "%s/ca.crt", dir);
}

static void apns_key_one(struct apns_config *c)
{
    apns_base(c);
    set(&apns_channel, c, "apns.key_file", "%s/AuthKey_KEYONE0001.p8", dir);
    set(&apns_channel, c, "apns.key_id", "KEYONE0001");
    set(&apns_channel, c, "apns.team_id", "TEAMONE001");
}

/* A tenants dir with one file (text made by fmt); returns the dir. */
static const char *tenant_dir(const char *name, const char *file, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static const char *tenant_dir(const char *name, const char *file, const char *fmt, ...)
{
    static char d[300];
    char path[400], text[2048];
    snprintf(d, sizeof(d), "%s/%s", dir, name);
    mkdir(d, 0700);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    snprintf(path, sizeof(path), "%s/%s", d, file);
    write_file(path, "%s", text);
    return d;
}

static void test_apns_two_teams(void **state)
{
    (void)state;
    apns_fake_start(false);
    struct apns_config c;
    apns_key_one(&c);
    set(&apns_channel, &c, "apns.topics", "com.one.app");
    set(&apns_channel, &c, "apns.tenants_dir", "%s",
        tenant_dir("apns-teams", "team-two.conf",
                   "apns.url = https://127.0.0.1:%d\napns.ca_file = %s/ca.crt\n"
                   "apns.key_file = %s/AuthKey_KEYTWO0002.p8\napns.key_id = KEYTWO0002\n"
                   "apns.team_id = TEAMTWO002\napns.topics = com.two.app, com.two.extra\n",
                   apns_fake.port, dir, dir));
    void *st = open_channel(&apns_channel, &c, NULL);
    assert_int_equal(channel_set_count(st), 2);
    const struct dev devs[] = {{"ios", TOK_A, "com.one.app"},
                               {"ios", TOK_B, "com.two.app"},
                               {"ios", TOK_A, "com.two.extra"},
                               {"ios", TOK_B, "com.three.app"}};
    struct batch b;
    send_all(&apns_channel, st, devs, 4, &b);
    expect(&b.calls[0], CHANNEL_OK, 200, "");
    expect(&b.calls[1], CHANNEL_OK, 200, "");
    expect(&b.calls[2], CHANNEL_OK, 200, "");
    expect(&b.calls[3], CHANNEL_DROP, 0, "NoCredentialForTopic: com.three.app");
    /* one token per key, shared by all its requests */
    struct apns_stats s1, s2;
    assert_int_equal(apns_get_tenant_stats(st, 0, &s1), 0);
    assert_int_equal(apns_get_tenant_stats(st, 1, &s2), 0);
    assert_int_equal(s1.token_signs, 1);
    assert_int_equal(s2.token_signs, 1);
    assert_int_equal(s1.ok, 1);
    assert_int_equal(s2.ok, 2);
    assert_int_equal(apns_get_tenant_stats(st, 2, &s2), -ENOENT);
    assert_int_equal(channel_set_unserved(st), 1);
    apns_channel.destroy(st);

    /* The fake saw each topic signed by its own team (and nothing else). */
    cJSON *rec = read_record(apns_record);
    assert_int_equal(cJSON_GetArraySize(rec), 3);
    const cJSON *line;
    cJSON_ArrayForEach(line, rec)
    {
        const cJSON *h = cJSON_GetObjectItemCaseSensitive(line, "headers");
        const char *topic = jstr(h, "apns-topic");
        const char *want = strcmp(topic, "com.one.app") == 0 ? "TEAMONE001" : "TEAMTWO002";
        assert_string_equal(jstr(line, "team"), want);
        assert_string_equal(jstr(line, "jwt"), "ok");
        assert_int_equal(jint(line, "status"), 200);
    }
    cJSON_Delete(rec);

    /* The fake really checks: team one's key claiming team two's topic is
     * refused as Apple would. */
    apns_key_one(&c);
    set(&apns_channel, &c, "apns.topics", "com.two.app");
    st = open_channel(&apns_channel, &c, NULL);
    const struct dev wrong[] = {{"ios", TOK_A, "com.two.app"}};
    send_all(&apns_channel, st, wrong, 1, &b);
    expect(&b.calls[0], CHANNEL_DROP, 403, "InvalidProviderToken");
    apns_channel.destroy(st);
    fake_stop(&apns_fake);
}

/* --- APNs: provider certificates --------------------------------------------------- */

static void apns_cert(struct apns_config *c, const char *file, const char *key, const char *pw)
{
    apns_base(c);
    set(&apns_channel, c, "apns.cert_file", "%s/%s", dir, file);
    if (key) {
        set(&apns_channel, c, "apns.cert_key_file", "%s/%s", dir, key);
    }
    if (pw) {
        char path[300];
        snprintf(path, sizeof(path), "%s/p12.pw", dir);
        write_file(path, "%s\n", pw);
        set(&apns_channel, c, "apns.cert_password_file", "%s", path);
    }
}

static void on_http(void *ctx, const struct http_response *r)
{
    struct call *c = ctx;
    c->done++;
    c->o.status = r->status;
    snprintf(c->o.reason, sizeof(c->o.reason), "%.*s", (int)(r->body_len < 90 ? r->body_len : 90),
             r->body ? r->body : "");
    loop_stop(loop);
}

static void test_apns_certificates(void **state)
{
    (void)state;
    apns_fake_start(true);
    struct apns_config c;
    struct batch b;
    const struct dev dv[] = {{"ios", TOK_A, "com.cert.app"}, {"ios", TOK_B, "com.other.app"}};

    /* PEM with certificate and key in one file; a topic the certificate
     * is not for is TopicDisallowed */
    apns_cert(&c, "apns-com.cert.app.pem", NULL, NULL);
    void *st = open_channel(&apns_channel, &c, NULL);
    send_all(&apns_channel, st, dv, 2, &b);
    expect(&b.calls[0], CHANNEL_OK, 200, "");
    expect(&b.calls[1], CHANNEL_DROP, 400, "TopicDisallowed");
    apns_channel.destroy(st);
    cJSON *rec = read_record(apns_record);
    const cJSON *first = cJSON_GetArrayItem(rec, 0);
    assert_non_null(first);
    assert_string_equal(jstr(first, "cert"), "ok");
    assert_string_equal(jstr(first, "cert_uid"), "com.cert.app");
    assert_string_equal(jstr(first, "jwt"), "missing"); /* no authorization header */
    assert_null(cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(first, "headers"), "authorization"));
    cJSON_Delete(rec);

    /* PEM certificate and key apart; PKCS#12 with its password */
    apns_cert(&c, "apns-com.cert.app.crt", "apns-com.cert.app.key", NULL);
    st = open_channel(&apns_channel, &c, NULL);
    send_all(&apns_channel, st, dv, 1, &b);
    expect(&b.calls[0], CHANNEL_OK, 200, "");
    apns_channel.destroy(st);
    apns_cert(&c, "apns-com.cert.app.p12", NULL, "p12-test-pass");
    st = open_channel(&apns_channel, &c, NULL);
    send_all(&apns_channel, st, dv, 1, &b);
    expect(&b.calls[0], CHANNEL_OK, 200, "");
    apns_channel.destroy(st);

    /* a wrong PKCS#12 password, and none, are clear init errors */
    char err[512];
    struct channel_env env = {.loop = loop};
    apns_cert(&c, "apns-com.cert.app.p12", NULL, "not-the-password");
    st = NULL;
    assert_int_equal(apns_channel.init(&env, &c, &st, err, sizeof(err)), TDG_ECONFIG);
    assert_non_null(strstr(err, "apns.cert_file: "));
    assert_non_null(strstr(err, "wrong password for the PKCS#12 file"));
    apns_cert(&c, "apns-com.cert.app.p12", NULL, NULL);
    assert_int_equal(apns_channel.init(&env, &c, &st, err, sizeof(err)), TDG_ECONFIG);
    assert_non_null(strstr(err, "wrong password for the PKCS#12 file (none given)"));
    /* a key that is not the certificate's */
    apns_cert(&c, "apns-com.cert.app.crt", "apns-com.rogue.app.key", NULL);
    assert_int_equal(apns_channel.init(&env, &c, &st, err, sizeof(err)), TDG_ECONFIG);
    assert_non_null(strstr(err, "private key does not match the certificate"));

    /* a certificate the fake's CA did not issue: 403 BadCertificate */
    apns_cert(&c, "apns-com.rogue.app.p12", NULL, "p12-test-pass");
    st = open_channel(&apns_channel, &c, NULL);
    const struct dev rogue[] = {{"ios", TOK_A, "com.rogue.app"}};
    send_all(&apns_channel, st, rogue, 1, &b);
    expect(&b.calls[0], CHANNEL_DROP, 403, "BadCertificate");
    apns_channel.destroy(st);

    /* neither a certificate nor a token: 403 MissingProviderToken (the
     * channel cannot be set up that way, so the plain HTTP client asks) */
    http_t *h = NULL;
    char ca[300];
    snprintf(ca, sizeof(ca), "%s/ca.crt", dir);
    struct http_opts ho = {.ca_file = ca};
    assert_int_equal(http_create(loop, &ho, &h), 0);
    static struct channel_request req;
    memset(&req, 0, sizeof(req));
    snprintf(req.url, sizeof(req.url), "https://127.0.0.1:%d/3/device/%s", apns_fake.port, TOK_A);
    snprintf(req.method, sizeof(req.method), "POST");
    assert_int_equal(channel_add_header(&req, "apns-topic: com.cert.app"), 0);
    req.body_len = (size_t)snprintf(req.body, sizeof(req.body), "{\"aps\":{\"alert\":\"x\"}}");
    struct call hc = {0};
    struct http_req_opts ro = {.require_h2 = true};
    assert_int_equal(http_request(h, &req, &ro, on_http, &hc), 0);
    while (!hc.done) {
        loop_run(loop);
    }
    assert_int_equal(hc.o.status, 403);
    assert_string_equal(hc.o.reason, "{\"reason\":\"MissingProviderToken\"}");
    http_destroy(h);

    /* token tenants still work on a fake that asks for certificates */
    apns_key_one(&c);
    st = open_channel(&apns_channel, &c, NULL);
    const struct dev one[] = {{"ios", TOK_A, "com.one.app"}};
    send_all(&apns_channel, st, one, 1, &b);
    expect(&b.calls[0], CHANNEL_OK, 200, "");
    apns_channel.destroy(st);
    fake_stop(&apns_fake);
}

/* --- FCM: two projects ------------------------------------------------------------- */

static void test_fcm_two_projects(void **state)
{
    (void)state;
    struct fake fk = {0};
    char cert[300], key[300], sa1[300], sa2[300], rec_path[300], script[300];
    snprintf(cert, sizeof(cert), "%s/server.crt", dir);
    snprintf(key, sizeof(key), "%s/server.key", dir);
    snprintf(sa1, sizeof(sa1), "%s/sa1/service-account.json", dir);
    snprintf(sa2, sizeof(sa2), "%s/sa2/service-account.json", dir);
    snprintf(rec_path, sizeof(rec_path), "%s/fcm.jsonl", dir);
    snprintf(script, sizeof(script), "%s/fcm.script", dir);
    write_file(script, "# nothing scripted\n");
    snprintf(fk.port_file, sizeof(fk.port_file), "%s/fcm.port", dir);
    const char *argv[] = {fake_fcm, "--listen", "127.0.0.1:0", "--cert", cert, "--key", key,
                          "--service-account", sa1, "--service-account", sa2, "--record",
                          rec_path, "--script", script, "--port-file", fk.port_file, NULL};
    fake_start(&fk, "fake-fcm", argv);

    struct fcm_config c;
    defaults(&fcm_channel, &c);
    set(&fcm_channel, &c, "fcm.service_account_file", "%s", sa1);
    set(&fcm_channel, &c, "fcm.send_url", "https://127.0.0.1:%d", fk.port);
    set(&fcm_channel, &c, "fcm.token_url", "https://127.0.0.1:%d/token", fk.port);
    set(&fcm_channel, &c, "fcm.ca_file", "%s/ca.crt", dir);
    set(&fcm_channel, &c, "fcm.tenants_dir", "%s",
        tenant_dir("fcm-projects", "two.conf",
                   "fcm.service_account_file = %s\nfcm.send_url = https://127.0.0.1:%d\n"
                   "fcm.token_url = https://127.0.0.1:%d/token\nfcm.ca_file = %s/ca.crt\n",
                   sa2, fk.port, fk.port, dir));
    void *st = open_channel(&fcm_channel, &c, NULL);
    assert_string_equal(fcm_tenant_project(st, 0), "proj-one-test");
    assert_string_equal(fcm_tenant_project(st, 1), "proj-two-test");
    const struct dev devs[] = {{"android", "dXJ1:APA91bOne", "proj-one-test"},
                               {"android", "dXJ2:APA91bTwo", "proj-two-test"},
                               {"android", "dXJ3:APA91bDef", ""},
                               {"android", "dXJ4:APA91bNon", "proj-none-test"}};
    struct batch b;
    send_all(&fcm_channel, st, devs, 4, &b);
    expect(&b.calls[0], CHANNEL_OK, 200, "");
    expect(&b.calls[1], CHANNEL_OK, 200, "");
    expect(&b.calls[2], CHANNEL_OK, 200, "");
    expect(&b.calls[3], CHANNEL_DROP, 0, "NoCredentialForProject: proj-none-test");
    assert_non_null(strstr(b.calls[1].o.provider_id, "projects/proj-two-test/messages/"));
    struct fcm_stats s0, s1;
    assert_int_equal(fcm_get_tenant_stats(st, 0, &s0), 0);
    assert_int_equal(fcm_get_tenant_stats(st, 1, &s1), 0);
    assert_int_equal(s0.token_fetches, 1); /* each project its own token */
    assert_int_equal(s1.token_fetches, 1);
    assert_int_equal(s0.ok, 2);
    assert_int_equal(s1.ok, 1);
    fcm_channel.destroy(st);

    /* A token request per account, signed by that account's key */
    cJSON *rec = read_record(rec_path);
    int tokens = 0, sends = 0;
    const cJSON *line;
    cJSON_ArrayForEach(line, rec)
    {
        if (strcmp(jstr(line, "endpoint"), "token") == 0) {
            tokens++;
            assert_string_equal(jstr(line, "auth"), "ok");
        } else if (strcmp(jstr(line, "endpoint"), "send") == 0) {
            sends++;
            assert_int_equal(jint(line, "status"), 200);
        }
    }
    assert_int_equal(tokens, 2);
    assert_int_equal(sends, 3);
    cJSON_Delete(rec);

    /* The fake really checks: one account's key claiming the other's
     * project gets Google's 403. */
    defaults(&fcm_channel, &c);
    set(&fcm_channel, &c, "fcm.service_account_file", "%s", sa1);
    set(&fcm_channel, &c, "fcm.project_id", "proj-two-test");
    set(&fcm_channel, &c, "fcm.send_url", "https://127.0.0.1:%d", fk.port);
    set(&fcm_channel, &c, "fcm.token_url", "https://127.0.0.1:%d/token", fk.port);
    set(&fcm_channel, &c, "fcm.ca_file", "%s/ca.crt", dir);
    st = open_channel(&fcm_channel, &c, NULL);
    const struct dev wrong[] = {{"android", "dXJ2:APA91bTwo", "proj-two-test"}};
    send_all(&fcm_channel, st, wrong, 1, &b);
    expect(&b.calls[0], CHANNEL_DROP, 403, "PERMISSION_DENIED");
    fcm_channel.destroy(st);
    fake_stop(&fk);
}

/* --- SMS: two senders, delivery status by polling ------------------------------------ */

struct status_log {
    int n;
    struct {
        char sid[64], status[24];
        int code;
    } e[32];
};

static void on_status(void *arg, const char *channel, const char *sid, const char *status,
                      int code)
{
    struct status_log *l = arg;
    assert_string_equal(channel, "sms");
    if (l->n < 32) {
        snprintf(l->e[l->n].sid, sizeof(l->e[0].sid), "%s", sid);
        snprintf(l->e[l->n].status, sizeof(l->e[0].status), "%s", status);
        l->e[l->n].code = code;
        l->n++;
    }
}

/* The last status reported for sid, or NULL. */
static const char *last_status(const struct status_log *l, const char *sid, int *code)
{
    const char *s = NULL;
    for (int i = 0; i < l->n; i++) {
        if (strcmp(l->e[i].sid, sid) == 0) {
            s = l->e[i].status;
            *code = l->e[i].code;
        }
    }
    return s;
}

static void on_tick(loop_t *l, uint64_t id, void *arg)
{
    (void)id;
    (void)arg;
    loop_stop(l);
}

static void sms_base(struct sms_config *c, int port, const char *sid, const char *tokf)
{
    defaults(&sms_channel, c);
    set(&sms_channel, c, "sms.api_url", "https://127.0.0.1:%d", port);
    set(&sms_channel, c, "sms.account_sid", "%s", sid);
    set(&sms_channel, c, "sms.auth_token_file", "%s", tokf);
    set(&sms_channel, c, "sms.from", "+15005550006");
    set(&sms_channel, c, "sms.ca_file", "%s/ca.crt", dir);
}

static void test_sms_senders_and_status(void **state)
{
    (void)state;
    struct fake fk = {0};
    char cert[300], key[300], tokf[300], rec_path[300], script[300];
    const char *sid = "AC0123456789abcdef0123456789abcdef";
    snprintf(cert, sizeof(cert), "%s/server.crt", dir);
    snprintf(key, sizeof(key), "%s/server.key", dir);
    snprintf(tokf, sizeof(tokf), "%s/sms.token", dir);
    write_file(tokf, "%08x%08x\n", (unsigned)rand(), (unsigned)getpid());
    snprintf(rec_path, sizeof(rec_path), "%s/sms.jsonl", dir);
    snprintf(script, sizeof(script), "%s/sms.script", dir);
    write_file(script, "to +447700900456 flow sent,undelivered error-code 30003\n"
                       "to +15551230000 flow queued,sending,sent,delivered\n");
    snprintf(fk.port_file, sizeof(fk.port_file), "%s/sms.port", dir);
    const char *argv[] = {python, fake_sms, "--listen", "127.0.0.1:0", "--cert", cert, "--key",
                          key, "--account-sid", sid, "--auth-token-file", tokf, "--sender",
                          "+15005550006", "--sender", "+447700900123", "--record", rec_path,
                          "--script", script, "--port-file", fk.port_file, NULL};
    fake_start(&fk, "fake-sms", argv);

    struct sms_config c;
    sms_base(&c, fk.port, sid, tokf);
    set(&sms_channel, &c, "sms.rate", "100");
    set(&sms_channel, &c, "sms.status_poll", "100ms");
    set(&sms_channel, &c, "sms.tenants_dir", "%s",
        tenant_dir("sms-senders", "uk.conf",
                   "sms.api_url = https://127.0.0.1:%d\nsms.account_sid = %s\n"
                   "sms.auth_token_file = %s\nsms.from = +447700900123\nsms.prefixes = +44\n"
                   "sms.ca_file = %s/ca.crt\nsms.rate = 100\nsms.status_poll = 100ms\n",
                   fk.port, sid, tokf, dir));
    struct status_log log = {0};
    struct channel_env env = {.loop = loop, .status = on_status, .status_arg = &log};
    void *st = open_channel(&sms_channel, &c, &env);
    const struct dev devs[] = {{"sms", "+15551230000", ""}, {"sms", "+447700900456", ""}};
    struct batch b;
    send_all(&sms_channel, st, devs, 2, &b);
    expect(&b.calls[0], CHANNEL_OK, 201, "gsm7 segments=1");
    expect(&b.calls[1], CHANNEL_OK, 201, "gsm7 segments=1");

    /* poll until both messages reached their final status */
    int c0 = 0, c1 = 0;
    for (int i = 0; i < 300; i++) {
        const char *s0 = last_status(&log, b.calls[0].o.provider_id, &c0);
        const char *s1 = last_status(&log, b.calls[1].o.provider_id, &c1);
        if (s0 && s1 && strcmp(s0, "delivered") == 0 && strcmp(s1, "undelivered") == 0) {
            break;
        }
        loop_timer_add(loop, 50, on_tick, NULL);
        loop_run(loop);
    }
    int code = 0;
    const char *s0 = last_status(&log, b.calls[0].o.provider_id, &code);
    assert_non_null(s0);
    assert_string_equal(s0, "delivered");
    assert_int_equal(code, 0);
    const char *s1 = last_status(&log, b.calls[1].o.provider_id, &code);
    assert_non_null(s1);
    assert_string_equal(s1, "undelivered");
    assert_int_equal(code, 30003);
    /* every change once, in order, none repeated */
    char seq[256] = "";
    for (int i = 0; i < log.n; i++) {
        if (strcmp(log.e[i].sid, b.calls[0].o.provider_id) == 0) {
            strncat(seq, log.e[i].status, sizeof(seq) - strlen(seq) - 2);
            strncat(seq, ",", sizeof(seq) - strlen(seq) - 1);
        }
    }
    assert_string_equal(seq, "queued,sending,sent,delivered,");
    struct sms_stats s;
    assert_int_equal(sms_get_tenant_stats(st, 0, &s), 0);
    assert_int_equal(s.polled_final, 1);
    assert_int_equal(s.watching, 0);
    assert_int_equal(s.polls, 4);
    assert_int_equal(sms_get_tenant_stats(st, 1, &s), 0);
    assert_int_equal(s.polled_final, 1);
    assert_int_equal(s.polls, 2);
    sms_channel.destroy(st);

    /* each destination left from its own sender */
    cJSON *rec = read_record(rec_path);
    const cJSON *line;
    int posts = 0;
    cJSON_ArrayForEach(line, rec)
    {
        if (strcmp(jstr(line, "method"), "POST") == 0) {
            const cJSON *p = cJSON_GetObjectItemCaseSensitive(line, "params");
            const char *to = jstr(p, "To");
            assert_string_equal(jstr(p, "From"),
                                strncmp(to, "+44", 3) == 0 ? "+447700900123" : "+15005550006");
            posts++;
        }
    }
    assert_int_equal(posts, 2);
    cJSON_Delete(rec);
    fake_stop(&fk);
}


/* --- SMS: delivery status by callback into an HTTP listener ------------------------- */

struct hook_ctx {
    void *chan;
    int posts, refused;
};

static void on_status_post(void *arg, const struct httpd_req *req, struct httpd_resp *resp)
{
    struct hook_ctx *h = arg;
    char why[128];
    h->posts++;
    resp->status = sms_status_callback(h->chan, req->body, req->body_len,
                                       httpd_req_header(req, "X-Twilio-Signature"), why,
                                       sizeof(why));
    if (resp->status != 200) {
        h->refused++;
        printf("refused: %s\n", why);
    }
}

static void test_sms_status_callbacks(void **state)
{
    (void)state;
    httpd_t *hd = NULL;
    char err[256];
    assert_int_equal(httpd_create(loop, "127.0.0.1:0", &hd, err, sizeof(err)), 0);
    struct hook_ctx hc = {0};
    assert_int_equal(httpd_route(hd, "POST", "/v1/sms/status", on_status_post, &hc), 0);

    struct fake fk = {0};
    char cert[300], key[300], tokf[300], rec_path[300];
    const char *sid = "AC0123456789abcdef0123456789abcdef";
    snprintf(cert, sizeof(cert), "%s/server.crt", dir);
    snprintf(key, sizeof(key), "%s/server.key", dir);
    snprintf(tokf, sizeof(tokf), "%s/sms.token", dir);
    write_file(tokf, "cb%08x%08x\n", (unsigned)rand(), (unsigned)getpid());
    snprintf(rec_path, sizeof(rec_path), "%s/sms-cb.jsonl", dir);
    snprintf(fk.port_file, sizeof(fk.port_file), "%s/sms-cb.port", dir);
    const char *argv[] = {python, fake_sms, "--listen", "127.0.0.1:0", "--cert", cert, "--key",
                          key, "--account-sid", sid, "--auth-token-file", tokf, "--record",
                          rec_path, "--port-file", fk.port_file, "--callbacks",
                          "--status-step-ms", "50", NULL};
    fake_start(&fk, "fake-sms-cb", argv);

    struct sms_config c;
    sms_base(&c, fk.port, sid, tokf);
    set(&sms_channel, &c, "sms.status_callback_url", "http://127.0.0.1:%d/v1/sms/status",
        httpd_port(hd));
    struct status_log log = {0};
    struct channel_env env = {.loop = loop, .status = on_status, .status_arg = &log};
    void *st = open_channel(&sms_channel, &c, &env);
    hc.chan = st;
    const struct dev devs[] = {{"sms", "+15551230000", ""}};
    struct batch b;
    send_all(&sms_channel, st, devs, 1, &b);
    expect(&b.calls[0], CHANNEL_OK, 201, "gsm7 segments=1");
    int code = 0;
    for (int i = 0; i < 300; i++) {
        const char *s = last_status(&log, b.calls[0].o.provider_id, &code);
        if (s && strcmp(s, "delivered") == 0) {
            break;
        }
        loop_timer_add(loop, 50, on_tick, NULL);
        loop_run(loop);
    }
    const char *s = last_status(&log, b.calls[0].o.provider_id, &code);
    assert_non_null(s);
    assert_string_equal(s, "delivered");
    assert_int_equal(hc.refused, 0);
    assert_int_equal(hc.posts, 2); /* sent, delivered: signed by the fake, checked here */
    struct sms_stats ss;
    sms_get_stats(st, &ss);
    assert_int_equal(ss.polls, 0); /* no polling configured */
    sms_channel.destroy(st);
    fake_stop(&fk);
    httpd_destroy(hd);
}

/* --- main -------------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr,
                "usage: %s FAKE_APNS FAKE_FCM GEN_CERTS_SH FCM_GEN_ACCOUNT_SH PYTHON FAKE_SMS\n",
                argv[0]);
        return 2;
    }
    fake_apns = argv[1];
    fake_fcm = argv[2];
    gen_certs = argv[3];
    gen_account = argv[4];
    python = argv[5];
    fake_sms = argv[6];
    signal(SIGPIPE, SIG_IGN);
    log_set_level(LOG_LVL_WARN);
    srand((unsigned)time(NULL));
    if (harness_mkdtemp(dir, sizeof(dir), "tenants") < 0) {
        perror("mkdtemp");
        return 1;
    }
    char sa1[300], sa2[300];
    snprintf(sa1, sizeof(sa1), "%s/sa1", dir);
    snprintf(sa2, sizeof(sa2), "%s/sa2", dir);
    const char *g1[] = {gen_certs, dir, "KEYONE0001", NULL};
    const char *g2[] = {gen_certs, dir, "KEYTWO0002", NULL};
    const char *g3[] = {gen_certs, "--apns-cert", dir, "com.cert.app", "p12-test-pass", NULL};
    const char *g4[] = {gen_certs,       "--apns-cert", dir, "com.rogue.app", "p12-test-pass",
                        "self-signed", NULL};
    const char *g5[] = {gen_account, sa1, "proj-one-test", NULL};
    const char *g6[] = {gen_account, sa2, "proj-two-test", NULL};
    const char *const *gens[] = {g1, g2, g3, g4, g5, g6};
    for (size_t i = 0; i < sizeof(gens) / sizeof(gens[0]); i++) {
        if (run(gens[i]) != 0) {
            char log[300];
            snprintf(log, sizeof(log), "%s/cmd.log", dir);
            dump(log);
            fprintf(stderr, "key/certificate generation failed (%s)\n", gens[i][0]);
            return 1;
        }
    }
    loop = loop_create();
    if (!loop) {
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_apns_two_teams),
        cmocka_unit_test(test_apns_certificates),
        cmocka_unit_test(test_fcm_two_projects),
        cmocka_unit_test(test_sms_senders_and_status),
        cmocka_unit_test(test_sms_status_callbacks),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    loop_destroy(loop);
    harness_rmtree(dir);
    return rc;
}
