/* test_directory.c - the hub's directory (hub/store_dir.c): users and their
 * contact points, the 5-device limit, groups, agent bindings, erasure, key
 * rotation, and that no plaintext PII reaches the database file. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "error.h"
#include "pii.h"
#include "proto.h"
#include "snapshot.h"
#include "store.h"
#include "testdb.h"

#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[64], dbpath[128], keyfile[128];
static store_t *S;
static pii_t *K;
static const int64_t NOW = 1700000000000;

static void open_all(void)
{
    char err[512] = "";
    if (pii_load(keyfile, &K, err, sizeof(err)) != 0) {
        fail_msg("pii_load: %s", err);
    }
    if (store_open(dbpath, DB_SYNC_NORMAL, &S, err, sizeof(err)) != 0) {
        fail_msg("store_open: %s", err);
    }
    store_set_pii(S, K);
}

static void close_all(void)
{
    store_close(S);
    S = NULL;
    pii_destroy(K);
    K = NULL;
}

static int setup(void **state)
{
    (void)state;
    if (testdb_tmpdir(dir, sizeof(dir), "/tmp/tidings-dir-XXXXXX", dbpath, sizeof(dbpath), "hub.db") < 0) {
        return -1;
    }
    snprintf(keyfile, sizeof(keyfile), "%s/pii.keys", dir);
    char err[256];
    if (pii_generate(keyfile, err, sizeof(err)) != 0) {
        return -1;
    }
    open_all();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (S) {
        close_all();
    }
    const char *suffix[] = {"", "-wal", "-shm"};
    char p[160];
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof(p), "%s%s", dbpath, suffix[i]);
        unlink(p);
    }
    unlink(keyfile);
    snprintf(p, sizeof(p), "%s.new", keyfile);
    unlink(p);
    rmdir(dir);
    return 0;
}

static void put_user(const char *id, const char *phone, const char *email)
{
    struct store_user u = {0};
    snprintf(u.id, sizeof(u.id), "%s", id);
    snprintf(u.tz, sizeof(u.tz), "Europe/Berlin");
    snprintf(u.locale, sizeof(u.locale), "de-DE");
    snprintf(u.phone, sizeof(u.phone), "%s", phone);
    snprintf(u.email, sizeof(u.email), "%s", email);
    assert_int_equal(store_user_put(S, &u, STORE_USER_ALL, NOW), 0);
    assert_int_equal(store_commit(S), 0);
}

/* --- collectors --- */

struct devs {
    int n;
    char platform[16][16];
    char token[16][256];
    int64_t id[16];
};

static void collect_dev(void *arg, const struct store_device *d)
{
    struct devs *c = arg;
    if (c->n < 16) {
        snprintf(c->platform[c->n], 16, "%s", d->platform);
        snprintf(c->token[c->n], 256, "%s", d->token);
        c->id[c->n] = d->id;
        c->n++;
    }
}

struct infos {
    int n;
    struct store_device_info d[16];
};

static void collect_info(void *arg, const struct store_device_info *d)
{
    struct infos *c = arg;
    if (c->n < 16) {
        c->d[c->n++] = *d;
    }
}

struct names {
    int n;
    char v[16][80];
};

static void collect_name(void *arg, const char *name)
{
    struct names *c = arg;
    if (c->n < 16) {
        snprintf(c->v[c->n++], 80, "%s", name);
    }
}

/* --- raw file scan --- */

static unsigned char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        *len = 0;
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc(n > 0 ? (size_t)n : 1);
    assert_non_null(b);
    *len = fread(b, 1, n > 0 ? (size_t)n : 0, f);
    fclose(f);
    return b;
}

static bool contains(const unsigned char *hay, size_t n, const void *needle, size_t m)
{
    for (size_t i = 0; m && i + m <= n; i++) {
        if (memcmp(hay + i, needle, m) == 0) {
            return true;
        }
    }
    return false;
}

/* Does any of hub.db, -wal, -shm contain needle? */
static bool db_files_contain(const void *needle, size_t m)
{
    const char *suffix[] = {"", "-wal", "-shm"};
    for (int i = 0; i < 3; i++) {
        char p[160];
        snprintf(p, sizeof(p), "%s%s", dbpath, suffix[i]);
        size_t len;
        unsigned char *b = read_file(p, &len);
        bool hit = b && contains(b, len, needle, m);
        free(b);
        if (hit) {
            return true;
        }
    }
    return false;
}

/* --- tests --- */

static void test_user_round_trip(void **state)
{
    (void)state;
    put_user("alice", "+4915112345678", "Alice@Example.com");
    struct store_user u;
    assert_int_equal(store_user_get(S, "alice", &u), 1);
    assert_string_equal(u.id, "alice");
    assert_string_equal(u.tz, "Europe/Berlin");
    assert_string_equal(u.locale, "de-DE");
    assert_string_equal(u.phone, "+4915112345678");
    assert_string_equal(u.email, "Alice@Example.com");
    assert_int_equal(u.created_ms, NOW);
    assert_int_equal(store_user_get(S, "bob", &u), 0);
    assert_int_equal(store_user_exists(S, "alice"), 1);
    assert_int_equal(store_user_exists(S, "bob"), 0);

    /* Update only the locale: the rest stays. */
    struct store_user v = {0};
    snprintf(v.id, sizeof(v.id), "alice");
    snprintf(v.locale, sizeof(v.locale), "en");
    assert_int_equal(store_user_put(S, &v, STORE_USER_LOCALE, NOW + 1), 0);
    assert_int_equal(store_user_get(S, "alice", &u), 1);
    assert_string_equal(u.locale, "en");
    assert_string_equal(u.tz, "Europe/Berlin");
    assert_string_equal(u.phone, "+4915112345678");
    /* Clearing the email. */
    assert_int_equal(store_user_put(S, &v, STORE_USER_EMAIL, NOW + 2), 0);
    assert_int_equal(store_user_get(S, "alice", &u), 1);
    assert_string_equal(u.email, "");
    assert_string_equal(u.phone, "+4915112345678");

    /* Bad fields are named. */
    const char *field = NULL;
    struct store_user bad = {0};
    snprintf(bad.id, sizeof(bad.id), "al ice");
    assert_int_equal(store_user_check(&bad, 0, &field), TDG_EINVAL_INPUT);
    assert_string_equal(field, "id");
    snprintf(bad.id, sizeof(bad.id), "carol");
    snprintf(bad.phone, sizeof(bad.phone), "0151 123");
    assert_int_equal(store_user_put(S, &bad, STORE_USER_PHONE, NOW), TDG_EINVAL_INPUT);
    assert_int_equal(store_user_check(&bad, STORE_USER_PHONE, &field), TDG_EINVAL_INPUT);
    assert_string_equal(field, "phone");
    snprintf(bad.email, sizeof(bad.email), "no-at-sign");
    assert_int_equal(store_user_check(&bad, STORE_USER_EMAIL, &field), TDG_EINVAL_INPUT);
    assert_string_equal(field, "email");
    snprintf(bad.tz, sizeof(bad.tz), "../etc/passwd");
    assert_int_equal(store_user_check(&bad, STORE_USER_TZ, &field), TDG_EINVAL_INPUT);
    assert_string_equal(field, "tz");
    assert_int_equal(store_user_exists(S, "carol"), 0);

}

struct ulist {
    int n;
    char id[8][STORE_USER_ID_MAX + 1];
    char phone[8][32];
};

static void collect_user(void *arg, const struct store_user *u)
{
    struct ulist *c = arg;
    if (c->n < 8) {
        snprintf(c->id[c->n], sizeof(c->id[0]), "%s", u->id);
        snprintf(c->phone[c->n], 32, "%s", u->phone);
        c->n++;
    }
}

static void test_user_list(void **state)
{
    (void)state;
    put_user("bob", "", "bob@example.com");
    put_user("alice", "+4915112345678", "");
    struct ulist l = {0};
    assert_int_equal(store_user_list(S, collect_user, &l), 2);
    assert_string_equal(l.id[0], "alice");
    assert_string_equal(l.phone[0], "+4915112345678");
    assert_string_equal(l.id[1], "bob");
    assert_string_equal(l.phone[1], "");
}

static void test_fanout_endpoints(void **state)
{
    (void)state;
    put_user("alice", "+4915112345678", "alice@example.com");
    int64_t ios = 0;
    assert_int_equal(
        store_device_add(S, "alice", "ios", "aabbcc", "com.example.app", "sandbox", NOW, &ios), 0);
    assert_int_equal(store_commit(S), 0);
    struct devs d = {0};
    assert_int_equal(store_user_devices(S, "alice", collect_dev, &d), 3);
    /* Contact points first (created with the user), then the device. */
    assert_string_equal(d.platform[0], "sms");
    assert_string_equal(d.token[0], "+4915112345678");
    assert_string_equal(d.platform[1], "email");
    assert_string_equal(d.token[1], "alice@example.com");
    assert_string_equal(d.platform[2], "ios");
    assert_string_equal(d.token[2], "aabbcc");
    assert_int_equal(d.id[2], ios);

    /* SMS 21610: the phone is opted out with reason and time ... */
    int64_t phone_id = d.id[0];
    assert_int_equal(store_device_set_state(S, phone_id, "disabled", "21610 opted out", NOW + 5),
                     0);
    assert_int_equal(store_commit(S), 0);
    memset(&d, 0, sizeof(d));
    assert_int_equal(store_user_devices(S, "alice", collect_dev, &d), 2);
    struct store_device_info info;
    assert_int_equal(store_device_get(S, phone_id, &info), 1);
    assert_string_equal(info.state, "disabled");
    assert_string_equal(info.state_reason, "21610 opted out");
    assert_int_equal(info.state_ms, NOW + 5);
    assert_string_equal(info.token, "+4915112345678");
    /* ... setting the same number again keeps it opted out ... */
    put_user("alice", "+4915112345678", "alice@example.com");
    memset(&d, 0, sizeof(d));
    assert_int_equal(store_user_devices(S, "alice", collect_dev, &d), 2);
    /* ... a new number is a new, active endpoint. */
    put_user("alice", "+4915199999999", "alice@example.com");
    memset(&d, 0, sizeof(d));
    assert_int_equal(store_user_devices(S, "alice", collect_dev, &d), 3);
    assert_int_equal(store_device_get(S, phone_id, &info), 0);
    /* Lookup by number: who has it? */
    struct infos found = {0};
    assert_int_equal(store_device_lookup(S, "sms", "+4915199999999", collect_info, &found), 1);
    assert_string_equal(found.d[0].user_id, "alice");
    memset(&found, 0, sizeof(found));
    assert_int_equal(store_device_lookup(S, "email", "ALICE@example.com", collect_info, &found),
                     1);
    memset(&found, 0, sizeof(found));
    assert_int_equal(store_device_lookup(S, "sms", "+4915112345678", collect_info, &found), 0);
    /* Touch records last activity. */
    assert_int_equal(store_device_touch(S, ios, NOW + 9), 0);
    assert_int_equal(store_device_get(S, ios, &info), 1);
    assert_int_equal(info.last_active_ms, NOW + 9);
    assert_string_equal(info.environment, "sandbox");
    assert_string_equal(info.app, "com.example.app");
    /* The bootstrap's compatibility call. */
    assert_int_equal(store_device_upsert(S, "alice", "email", "new@example.com", "", "", NOW), 0);
    struct store_user u;
    assert_int_equal(store_user_get(S, "alice", &u), 1);
    assert_string_equal(u.email, "new@example.com");
}

static void test_device_limit(void **state)
{
    (void)state;
    put_user("alice", "+4915112345678", "alice@example.com");
    char tok[32];
    int64_t ids[6];
    for (int i = 0; i < STORE_MAX_DEVICES; i++) {
        snprintf(tok, sizeof(tok), "token-%d", i);
        assert_int_equal(store_device_add(S, "alice", i % 2 ? "android" : "ios", tok, "", "",
                                          NOW + i, &ids[i]),
                         0);
    }
    /* Phone and email do not count: five devices are in. A sixth is not. */
    assert_int_equal(store_device_add(S, "alice", "desktop", "token-5", "", "", NOW, &ids[5]),
                     TDG_EDEVICE_LIMIT);
    assert_string_equal(tdg_strerror(TDG_EDEVICE_LIMIT),
                        "user already has the maximum number of devices (5)");
    /* Registering one of the five again is not a new device. */
    assert_int_equal(store_device_add(S, "alice", "ios", "token-0", "", "", NOW + 50, NULL), 0);
    assert_int_equal(store_commit(S), 0);
    struct devs d = {0};
    assert_int_equal(store_user_devices(S, "alice", collect_dev, &d), 7);
    /* A disabled device frees its place, and cannot be enabled while five
     * others are active. */
    assert_int_equal(store_device_set_state(S, ids[1], "disabled", "Unregistered", NOW + 60), 0);
    assert_int_equal(store_device_add(S, "alice", "desktop", "token-5", "", "", NOW, &ids[5]), 0);
    assert_int_equal(store_device_enable(S, ids[1], NOW + 70), TDG_EDEVICE_LIMIT);
    assert_int_equal(store_device_remove(S, ids[5]), 1);
    assert_int_equal(store_device_remove(S, ids[5]), 0);
    assert_int_equal(store_device_enable(S, ids[1], NOW + 70), 1);
    struct infos all = {0};
    assert_int_equal(store_device_list(S, "alice", collect_info, &all), 7);
    /* Bad devices and unknown users. */
    const char *field;
    assert_int_equal(store_device_check("blackberry", "t", "", "", &field), TDG_EINVAL_INPUT);
    assert_string_equal(field, "platform");
    assert_int_equal(store_device_check("ios", "has space", "", "", &field), TDG_EINVAL_INPUT);
    assert_string_equal(field, "token");
    assert_int_equal(store_device_check("ios", "t", "", "staging", &field), TDG_EINVAL_INPUT);
    assert_string_equal(field, "environment");
    assert_int_equal(store_device_add(S, "alice", "sms", "+4915100000000", "", "", NOW, NULL),
                     TDG_EINVAL_INPUT);
    assert_int_equal(store_device_add(S, "nobody", "ios", "zz", "", "", NOW, NULL),
                     TDG_ENOTFOUND);
}

static void test_device_moves(void **state)
{
    (void)state;
    put_user("alice", "", "");
    put_user("bob", "", "");
    int64_t a = 0, b = 0;
    assert_int_equal(store_device_add(S, "alice", "ios", "shared-token", "x", "", NOW, &a), 0);
    assert_int_equal(store_device_set_state(S, a, "disabled", "Unregistered", NOW + 1), 0);
    /* Registered again by bob: the same row moves, active again. */
    assert_int_equal(store_device_add(S, "bob", "ios", "shared-token", "x", "", NOW + 2, &b), 0);
    assert_int_equal(a, b);
    struct store_device_info info;
    assert_int_equal(store_device_get(S, b, &info), 1);
    assert_string_equal(info.user_id, "bob");
    assert_string_equal(info.state, "active");
    assert_int_equal(info.registered_ms, NOW + 2);
    struct devs d = {0};
    assert_int_equal(store_user_devices(S, "alice", collect_dev, &d), 0);
    /* The same token on another platform is another device. */
    assert_int_equal(store_device_add(S, "alice", "android", "shared-token", "", "", NOW, &a), 0);
    assert_true(a != b);
}

/* APNs 410 with a timestamp: a device registered at or before it is
 * disabled; one registered again after it stays active. */
static void test_device_disable_if_stale(void **state)
{
    (void)state;
    put_user("alice", "", "");
    int64_t a = 0;
    assert_int_equal(store_device_add(S, "alice", "ios", "tok-410", "x", "", NOW, &a), 0);
    /* registered again at NOW + 100; a 410 that says "invalid since NOW + 50" */
    assert_int_equal(store_device_add(S, "alice", "ios", "tok-410", "x", "", NOW + 100, NULL), 0);
    assert_int_equal(store_device_disable_if_stale(S, a, "Unregistered", NOW + 50, NOW + 200), 0);
    struct store_device_info info;
    assert_int_equal(store_device_get(S, a, &info), 1);
    assert_string_equal(info.state, "active");
    /* the registration time itself counts as stale (<=) */
    assert_int_equal(store_device_disable_if_stale(S, a, "Unregistered", NOW + 100, NOW + 300),
                     1);
    assert_int_equal(store_device_get(S, a, &info), 1);
    assert_string_equal(info.state, "disabled");
    assert_string_equal(info.state_reason, "Unregistered");
    assert_int_equal(info.state_ms, NOW + 300);
    assert_int_equal(store_device_disable_if_stale(S, 999999, "Unregistered", NOW, NOW), 0);
}

static void test_groups(void **state)
{
    (void)state;
    put_user("alice", "", "");
    put_user("bob", "", "");
    assert_int_equal(store_group_add(S, "family", NOW), 0);
    assert_int_equal(store_group_add(S, "family", NOW), 0);
    assert_int_equal(store_group_add(S, "bad group", NOW), TDG_EINVAL_INPUT);
    assert_int_equal(store_group_member_add(S, "family", "alice", NOW), 0);
    assert_int_equal(store_group_member_add(S, "family", "bob", NOW), 0);
    assert_int_equal(store_group_member_add(S, "family", "bob", NOW), 0);
    assert_int_equal(store_group_member_add(S, "family", "nobody", NOW), TDG_ENOTFOUND);
    assert_int_equal(store_group_member_add(S, "nogroup", "bob", NOW), TDG_ENOTFOUND);
    struct names m = {0};
    assert_int_equal(store_group_members(S, "family", collect_name, &m), 2);
    assert_string_equal(m.v[0], "alice");
    assert_string_equal(m.v[1], "bob");
    struct names g = {0};
    assert_int_equal(store_group_add(S, "admins", NOW), 0);
    assert_int_equal(store_group_list(S, collect_name, &g), 2);
    assert_string_equal(g.v[0], "admins");
    struct names ug = {0};
    assert_int_equal(store_user_groups(S, "bob", collect_name, &ug), 1);
    assert_string_equal(ug.v[0], "family");
    assert_int_equal(store_group_member_remove(S, "family", "bob"), 1);
    assert_int_equal(store_group_member_remove(S, "family", "bob"), 0);
    assert_int_equal(store_group_exists(S, "family"), 1);
    assert_int_equal(store_binding_add(S, "gw1", "group:family", "*", NOW), 0);
    assert_int_equal(store_group_remove(S, "family"), 1);
    assert_int_equal(store_group_remove(S, "family"), 0);
    assert_int_equal(store_group_exists(S, "family"), 0);
    /* Its bindings went with it. */
    assert_int_equal(store_agent_allowed(S, "gw1", "group:family", "x"), 0);
    assert_int_equal(store_commit(S), 0);
}

static void test_bindings(void **state)
{
    (void)state;
    put_user("alice", "", "");
    put_user("bob", "", "");
    put_user("carol", "", "");
    /* No binding: nothing allowed. */
    assert_int_equal(store_agent_allowed(S, "gw1", "user:alice", "security"), 0);
    /* A user and a category. */
    assert_int_equal(store_binding_add(S, "gw1", "user:alice", "security", NOW), 0);
    assert_int_equal(store_binding_add(S, "gw1", "user:alice", "security", NOW), 0);
    assert_int_equal(store_agent_allowed(S, "gw1", "user:alice", "security"), 1);
    assert_int_equal(store_agent_allowed(S, "gw1", "user:alice", "orders"), 0);
    assert_int_equal(store_agent_allowed(S, "gw1", "user:alice", NULL), 0);
    assert_int_equal(store_agent_reaches(S, "gw1", "user:alice"), 1);
    assert_int_equal(store_agent_reaches(S, "gw1", "user:bob"), 0);
    assert_int_equal(store_agent_allowed(S, "gw2", "user:alice", "security"), 0);
    /* Category wildcard. */
    assert_int_equal(store_binding_add(S, "gw1", "user:bob", "*", NOW), 0);
    assert_int_equal(store_agent_allowed(S, "gw1", "user:bob", "orders"), 1);
    assert_int_equal(store_agent_allowed(S, "gw1", "user:bob", NULL), 1);
    /* Subject wildcard for one agent, agent wildcard for one user. */
    assert_int_equal(store_binding_add(S, "gw3", "*", "marketing", NOW), 0);
    assert_int_equal(store_agent_allowed(S, "gw3", "user:carol", "marketing"), 1);
    assert_int_equal(store_agent_allowed(S, "gw3", "group:any", "marketing"), 1);
    assert_int_equal(store_agent_allowed(S, "gw3", "user:carol", "security"), 0);
    assert_int_equal(store_binding_add(S, "*", "user:carol", "security", NOW), 0);
    assert_int_equal(store_agent_allowed(S, "gw9", "user:carol", "security"), 1);
    assert_int_equal(store_agent_allowed(S, "gw9", "user:alice", "security"), 0);
    /* A group binding allows the group and each current member. */
    assert_int_equal(store_group_add(S, "family", NOW), 0);
    assert_int_equal(store_group_member_add(S, "family", "alice", NOW), 0);
    assert_int_equal(store_binding_add(S, "gw4", "group:family", "*", NOW), 0);
    assert_int_equal(store_agent_allowed(S, "gw4", "group:family", "orders"), 1);
    assert_int_equal(store_agent_allowed(S, "gw4", "user:alice", "orders"), 1);
    assert_int_equal(store_agent_allowed(S, "gw4", "user:bob", "orders"), 0);
    assert_int_equal(store_agent_allowed(S, "gw1", "group:family", "security"), 0);
    /* Users an agent may send to. */
    struct names u = {0};
    assert_int_equal(store_agent_users(S, "gw1", collect_name, &u), 3);
    assert_string_equal(u.v[0], "alice");
    assert_string_equal(u.v[1], "bob");
    assert_string_equal(u.v[2], "carol"); /* through the "*" agent binding */
    memset(&u, 0, sizeof(u));
    assert_int_equal(store_agent_users(S, "gw4", collect_name, &u), 2);
    assert_string_equal(u.v[0], "alice");
    assert_string_equal(u.v[1], "carol");
    memset(&u, 0, sizeof(u));
    assert_int_equal(store_agent_users(S, "gw3", collect_name, &u), 3);
    /* Revoking. */
    assert_int_equal(store_binding_remove(S, "gw1", "user:alice", "security"), 1);
    assert_int_equal(store_binding_remove(S, "gw1", "user:alice", "security"), 0);
    assert_int_equal(store_agent_allowed(S, "gw1", "user:alice", "security"), 0);
    /* Bad bindings are named. */
    const char *field;
    assert_int_equal(store_binding_check("gw/1", "*", "*", &field), TDG_EINVAL_INPUT);
    assert_string_equal(field, "agent");
    assert_int_equal(store_binding_check("gw1", "alice", "*", &field), TDG_EINVAL_INPUT);
    assert_string_equal(field, "subject");
    assert_int_equal(store_binding_check("gw1", "user:alice", "Bad Cat", &field),
                     TDG_EINVAL_INPUT);
    assert_string_equal(field, "category");
    assert_int_equal(store_binding_add(S, "gw1", "user:", "*", NOW), TDG_EINVAL_INPUT);
    assert_int_equal(store_commit(S), 0);
}

struct blist {
    int n;
    char line[16][160];
};

static void collect_binding(void *arg, const struct store_binding *b)
{
    struct blist *c = arg;
    if (c->n < 16) {
        snprintf(c->line[c->n++], 160, "%s %s %s", b->agent, b->subject, b->category);
    }
}

static void test_binding_list(void **state)
{
    (void)state;
    assert_int_equal(store_binding_add(S, "gw2", "*", "*", NOW), 0);
    assert_int_equal(store_binding_add(S, "gw1", "user:alice", "orders", NOW), 0);
    assert_int_equal(store_binding_add(S, "gw1", "group:family", "*", NOW), 0);
    struct blist l = {0};
    assert_int_equal(store_binding_list(S, NULL, collect_binding, &l), 3);
    assert_string_equal(l.line[0], "gw1 group:family *");
    assert_string_equal(l.line[1], "gw1 user:alice orders");
    assert_string_equal(l.line[2], "gw2 * *");
    memset(&l, 0, sizeof(l));
    assert_int_equal(store_binding_list(S, "gw1", collect_binding, &l), 2);
}

/* Sealed token bytes of every device row, read with a separate
 * connection (what an attacker with the file would see). */
struct blob {
    unsigned char b[512];
    int len;
};

static int raw_blobs(struct blob *out, int max)
{
    sqlite3 *db;
    assert_int_equal(sqlite3_open_v2(dbpath, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT token FROM devices", -1, &st, NULL),
                     SQLITE_OK);
    int n = 0;
    while (sqlite3_step(st) == SQLITE_ROW && n < max) {
        out[n].len = sqlite3_column_bytes(st, 0);
        assert_true(out[n].len > 0 && out[n].len <= (int)sizeof(out[n].b));
        memcpy(out[n].b, sqlite3_column_blob(st, 0), (size_t)out[n].len);
        n++;
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

static void test_no_plaintext_and_erasure(void **state)
{
    (void)state;
    static const char phone[] = "+4915187654321";
    static const char email[] = "erika.mustermann@example.org";
    static const char token[] = "9f2c4e6a8b0d1f3e5a7c9b1d3f5e7a9c2b4d6f8e0a1c3e5b7d9f1a3c5e7b9d1f";
    static const char fcm[] = "fcm-registration-token-erika-0123456789";
    put_user("erika", phone, email);
    assert_int_equal(store_device_add(S, "erika", "ios", token, "com.example", "", NOW, NULL), 0);
    assert_int_equal(store_device_add(S, "erika", "android", fcm, "", "", NOW, NULL), 0);
    assert_int_equal(store_group_add(S, "g", NOW), 0);
    assert_int_equal(store_group_member_add(S, "g", "erika", NOW), 0);
    assert_int_equal(store_binding_add(S, "gw1", "user:erika", "*", NOW), 0);
    put_user("max", "+4915100000001", "max@example.org");
    assert_int_equal(store_commit(S), 0);

    /* Committed (WAL) and checkpointed (main file): no plaintext anywhere,
     * while the plaintext fields (the control) are found. */
    const char *secrets[] = {phone, email, token, fcm, "4915187654321", "mustermann"};
    assert_true(db_files_contain("Europe/Berlin", 13));
    for (size_t i = 0; i < 6; i++) {
        assert_false(db_files_contain(secrets[i], strlen(secrets[i])));
    }
    close_all();
    assert_true(db_files_contain("Europe/Berlin", 13));
    for (size_t i = 0; i < 6; i++) {
        assert_false(db_files_contain(secrets[i], strlen(secrets[i])));
    }
    open_all();
    struct blob before[8];
    int nb = raw_blobs(before, 8);
    assert_int_equal(nb, 6); /* erika: sms, email, ios, android; max: sms, email */
    for (int i = 0; i < nb; i++) {
        assert_true(db_files_contain(before[i].b, (size_t)before[i].len));
    }

    /* Erase erika: devices, contact points, memberships, bindings. */
    assert_int_equal(store_user_remove(S, "erika"), 1);
    assert_int_equal(store_user_remove(S, "erika"), 0);
    assert_int_equal(store_commit(S), 0);
    assert_int_equal(store_user_exists(S, "erika"), 0);
    struct infos found = {0};
    assert_int_equal(store_device_lookup(S, "sms", phone, collect_info, &found), 0);
    assert_int_equal(store_device_lookup(S, "ios", token, collect_info, &found), 0);
    struct names m = {0};
    assert_int_equal(store_group_members(S, "g", collect_name, &m), 0);
    assert_int_equal(store_agent_allowed(S, "gw1", "user:erika", "x"), 0);
    close_all();
    /* The ciphertexts of her rows are gone from the file too (secure
     * delete), max's are still there. */
    struct blob after[8];
    int na = raw_blobs(after, 8);
    assert_int_equal(na, 2);
    int gone = 0;
    for (int i = 0; i < nb; i++) {
        bool kept = false;
        for (int j = 0; j < na; j++) {
            kept = kept || (before[i].len == after[j].len &&
                            memcmp(before[i].b, after[j].b, (size_t)after[j].len) == 0);
        }
        if (!kept) {
            assert_false(db_files_contain(before[i].b, (size_t)before[i].len));
            gone++;
        }
    }
    assert_int_equal(gone, 4);
    open_all();
}

/* --- GDPR: forgetting a user everywhere (store_admin_forget_user) --- */

static int64_t raw_int(const char *sql)
{
    sqlite3 *db;
    assert_int_equal(sqlite3_open_v2(dbpath, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        fail_msg("%s: %s", sql, sqlite3_errmsg(db));
    }
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static void add_notif(const char *json)
{
    struct notification n;
    struct proto_error pe;
    if (proto_parse(json, strlen(json), &n, &pe) != 0) {
        fail_msg("bad test notification %s: %s", json, pe.detail);
    }
    bool inserted = false;
    assert_int_equal(store_add_notification(S, &n, "gw1", json, strlen(json), NOW, &inserted), 0);
    assert_true(inserted);
    notification_free(&n);
}

static void decide(const char *id, const char *user, const char *action, const char *rule)
{
    struct store_decision d = {.notification_id = id, .user_id = user, .channel = "push",
                               .action = action, .rule = rule, .at_ms = NOW};
    assert_int_equal(store_decision_add(S, &d), 0);
}

static void test_forget_user(void **state)
{
    (void)state;
    static const char phone[] = "+4915187654321";
    put_user("erika", phone, "erika.mustermann@example.org");
    put_user("max", "+4915100000001", "max@example.org");
    int64_t dev = 0, att = 0;
    assert_int_equal(store_device_add(S, "erika", "ios", "ab12cd34ef56ab12cd34ef56ab12cd34",
                                      "com.example", "", NOW, &dev), 0);
    assert_int_equal(store_group_add(S, "g", NOW), 0);
    assert_int_equal(store_group_member_add(S, "g", "erika", NOW), 0);
    assert_int_equal(store_group_member_add(S, "g", "max", NOW), 0);
    assert_int_equal(store_binding_add(S, "gw1", "user:erika", "*", NOW), 0);
    assert_int_equal(store_binding_add(S, "gw1", "user:max", "*", NOW), 0);
    static const char prefs[] = "{\"caps\":{\"orders\":{\"max\":5,\"window\":\"1d\"}}}";
    assert_int_equal(store_pref_set(S, "erika", prefs, strlen(prefs), NOW, NULL), 0);
    assert_int_equal(store_pref_set(S, "max", prefs, strlen(prefs), NOW, NULL), 0);

    /* n1 to her, failed with a provider text quoting the number. */
    add_notif("{\"id\":\"n1\",\"to\":\"user:erika\",\"category\":\"orders\","
              "\"title\":\"Secret for Erika\",\"body\":\"door code 4711\"}");
    decide("n1", "erika", "allow", "allow");
    assert_int_equal(store_cap_record(S, "erika", "orders", "n1", NOW), 0);
    assert_int_equal(store_attempt_begin(S, "n1", "sms", dev, NOW, &att), 0);
    assert_int_equal(store_attempt_end(S, att, "drop", 400, "The 'To' number +4915187654321 is "
                                       "not a valid phone number", "", NOW), 0);
    assert_int_equal(store_set_state(S, "n1", "failed",
                                     "sms: 400 The 'To' number +4915187654321 is not valid", NOW),
                     0);
    /* n2 to the group: her part waits on a fallback timer, max's too. */
    add_notif("{\"id\":\"n2\",\"to\":\"group:g\",\"category\":\"orders\",\"title\":\"News\"}");
    decide("n2", "erika", "allow", "allow");
    decide("n2", "max", "allow", "allow");
    assert_int_equal(store_cap_record(S, "max", "orders", "n2", NOW), 0);
    assert_int_equal(store_attempt_begin(S, "n2", "apns", dev, NOW, &att), 0);
    assert_int_equal(store_attempt_end(S, att, "retry", 0, "erika's phone +4915187654321 busy",
                                       "", NOW), 0);
    assert_int_equal(store_timer_add(S, NOW + 60000, "fallback", "n2", "erika\n1\n123", NULL), 0);
    assert_int_equal(store_timer_add(S, NOW + 60000, "fallback", "n2", "max\n1\n123", NULL), 0);
    /* a user whose id starts like hers is someone else */
    assert_int_equal(store_timer_add(S, NOW + 60000, "hold", "n2", "erika.b\n0\n123", NULL), 0);
    /* n3 to her, scheduled */
    add_notif("{\"id\":\"n3\",\"to\":\"user:erika\",\"title\":\"Later\",\"body\":\"secret plan\"}");
    assert_int_equal(store_set_state(S, "n3", "scheduled", "", NOW), 0);
    decide("n3", "erika", "schedule", "deliver_at");
    assert_int_equal(store_timer_add(S, NOW + 60000, "deliver_at", "n3", "erika\n", NULL), 0);
    assert_int_equal(store_commit(S), 0);

    char *snap = NULL;
    size_t snap_len = 0;
    assert_int_equal(snapshot_build(S, "gw1", 1, &snap, &snap_len), 0);
    assert_non_null(strstr(snap, "\"erika\""));
    free(snap);

    int64_t erased = -1;
    assert_int_equal(store_admin_forget_user(S, "erika", NOW + 1, &erased), 0);
    assert_int_equal(store_commit(S), 0);
    assert_int_equal(erased, 2); /* n1, n3 */
    assert_int_equal(store_user_exists(S, "erika"), 0);

    /* Decisions stay for the delivery log, naming no one; hers only. */
    assert_int_equal(raw_int("SELECT count(*) FROM decisions WHERE user_id = 'erika'"), 0);
    assert_int_equal(raw_int("SELECT count(*) FROM decisions WHERE user_id = '(removed)'"), 3);
    assert_int_equal(raw_int("SELECT count(*) FROM decisions WHERE user_id = 'max'"), 1);
    assert_int_equal(raw_int("SELECT count(*) FROM decisions WHERE notification_id = 'n3'"
                             " AND action = 'schedule' AND rule = 'deliver_at'"), 1);
    /* Caps and preferences: gone for her, kept for max. */
    assert_int_equal(raw_int("SELECT count(*) FROM cap_events WHERE user_id = 'erika'"), 0);
    assert_int_equal(raw_int("SELECT count(*) FROM cap_events WHERE user_id = 'max'"), 1);
    assert_int_equal(raw_int("SELECT count(*) FROM prefs WHERE user_id = 'erika'"), 0);
    assert_int_equal(raw_int("SELECT count(*) FROM prefs WHERE user_id = 'max'"), 1);
    /* Timers still fire (so n2 ends) but name no one. */
    assert_int_equal(raw_int("SELECT count(*) FROM timers"), 4);
    assert_int_equal(raw_int("SELECT count(*) FROM timers WHERE instr(payload, 'erika' || char(10))"
                             " = 1"), 0);
    assert_int_equal(raw_int("SELECT count(*) FROM timers WHERE payload = '(removed)' || char(10)"
                             " || '1' || char(10) || '123'"), 1);
    assert_int_equal(raw_int("SELECT count(*) FROM timers WHERE payload = '(removed)' || char(10)"),
                     1);
    assert_int_equal(raw_int("SELECT count(*) FROM timers WHERE payload = 'erika.b' || char(10)"
                             " || '0' || char(10) || '123'"), 1);
    assert_int_equal(raw_int("SELECT count(*) FROM timers WHERE payload = 'max' || char(10)"
                             " || '1' || char(10) || '123'"), 1);
    /* Her notifications: ids, states and times kept; body, recipient and
     * the provider's text gone. The group's notification keeps its body. */
    assert_int_equal(raw_int("SELECT count(*) FROM notifications WHERE id = 'n1' AND state ="
                             " 'failed' AND reason = 'redacted' AND recipient = 'erased' AND body"
                             " = '{\"redacted\":true}' AND received_ms > 0"), 1);
    assert_int_equal(raw_int("SELECT count(*) FROM notifications WHERE id = 'n3' AND state ="
                             " 'dropped' AND reason = 'recipient removed'"), 1);
    assert_int_equal(raw_int("SELECT count(*) FROM notifications WHERE id = 'n2' AND recipient ="
                             " 'group:g' AND instr(body, 'News') > 0"), 1);
    assert_int_equal(raw_int("SELECT count(*) FROM attempts WHERE reason <> 'redacted'"), 0);
    assert_int_equal(raw_int("SELECT count(*) FROM attempts WHERE status = 400 AND state = 'drop'"),
                     1);
    assert_int_equal(raw_int("SELECT count(*) FROM receipts WHERE notification_id = 'n1'"
                             " AND reason = 'redacted'"), 1);
    assert_int_equal(raw_int("SELECT count(*) FROM receipts WHERE instr(reason, '4915187654321')"),
                     0);

    /* Her agent's next snapshot leaves her out; max stays. */
    assert_int_equal(snapshot_build(S, "gw1", 2, &snap, &snap_len), 0);
    assert_null(strstr(snap, "erika"));
    assert_non_null(strstr(snap, "\"max\""));
    free(snap);

    /* Nothing of it in the file (checkpointed at close; secure delete). */
    close_all();
    const char *gone[] = {"4915187654321", "Secret for Erika", "door code 4711", "secret plan",
                          "user:erika", "mustermann"};
    for (size_t i = 0; i < sizeof(gone) / sizeof(gone[0]); i++) {
        if (db_files_contain(gone[i], strlen(gone[i]))) {
            fail_msg("the database file still holds '%s'", gone[i]);
        }
    }
    open_all();
}

/* Groups beyond any fixed cap: keyset pages over the members. */
static void test_group_pages(void **state)
{
    (void)state;
    assert_int_equal(store_group_add(S, "big", NOW), 0);
    char id[32];
    for (int i = 0; i < 25; i++) {
        snprintf(id, sizeof(id), "m%03d", (i * 7) % 25); /* added out of order */
        assert_int_equal(store_user_upsert(S, id, "UTC", NOW), 0);
        assert_int_equal(store_group_member_add(S, "big", id, NOW), 0);
    }
    assert_int_equal(store_commit(S), 0);
    char after[80] = "";
    int total = 0, pages = 0;
    for (;;) {
        struct names m = {0};
        int n = store_group_members_page(S, "big", after, 10, collect_name, &m);
        assert_true(n >= 0);
        assert_int_equal(n, m.n);
        for (int i = 0; i < m.n; i++) {
            snprintf(id, sizeof(id), "m%03d", total + i);
            assert_string_equal(m.v[i], id); /* in id order, none twice, none missed */
        }
        total += n;
        pages++;
        if (n < 10) {
            break;
        }
        snprintf(after, sizeof(after), "%s", m.v[m.n - 1]);
        if (pages == 1) {
            /* a member added behind the cursor shifts no later page */
            assert_int_equal(store_user_upsert(S, "a-first", "UTC", NOW), 0);
            assert_int_equal(store_group_member_add(S, "big", "a-first", NOW), 0);
        }
    }
    assert_int_equal(total, 25);
    assert_int_equal(pages, 3);
    struct names m = {0};
    assert_int_equal(store_group_members_page(S, "big", "m024", 10, collect_name, &m), 0);
    assert_int_equal(store_group_members_page(S, "none", NULL, 10, collect_name, &m), 0);
    assert_int_equal(store_group_members_page(S, "big", NULL, 0, collect_name, &m),
                     TDG_EINVAL_INPUT);
    assert_int_equal(store_group_members_page(S, "big", NULL, STORE_GROUP_PAGE_MAX + 1,
                                              collect_name, &m),
                     TDG_EINVAL_INPUT);
}

static void test_rotation(void **state)
{
    (void)state;
    put_user("alice", "+4915112345678", "alice@example.com");
    assert_int_equal(store_device_add(S, "alice", "ios", "tok-a", "", "", NOW, NULL), 0);
    put_user("bob", "+4915100000002", "");
    assert_int_equal(store_commit(S), 0);
    struct blob before[8];
    int nb = raw_blobs(before, 8);
    assert_int_equal(nb, 4);
    close_all();

    char err[512], id[PII_KEY_ID_MAX + 1];
    assert_int_equal(pii_add_key(keyfile, id, sizeof(id), err, sizeof(err)), 0);
    assert_string_equal(id, "k2");
    open_all();
    /* Old rows still readable under the new keyring. */
    struct store_user u;
    assert_int_equal(store_user_get(S, "alice", &u), 1);
    assert_string_equal(u.phone, "+4915112345678");
    /* Re-encrypt in small steps until done. */
    int total = 0, n;
    while ((n = store_dir_reencrypt(S, 3, NOW)) > 0) {
        total += n;
        assert_int_equal(store_commit(S), 0);
    }
    assert_int_equal(n, 0);
    assert_int_equal(total, 4);
    assert_int_equal(store_dir_reencrypt(S, 3, NOW), 0);
    struct blob after[8];
    assert_int_equal(store_commit(S), 0);
    int na = raw_blobs(after, 8);
    assert_int_equal(na, 4);
    for (int i = 0; i < na; i++) {
        char kid[PII_KEY_ID_MAX + 1];
        assert_int_equal(pii_sealed_key_id(after[i].b, (size_t)after[i].len, kid, sizeof(kid)),
                         0);
        assert_string_equal(kid, "k2");
    }
    /* Lookups still find the rows (same lookup key). */
    struct infos found = {0};
    assert_int_equal(store_device_lookup(S, "sms", "+4915100000002", collect_info, &found), 1);
    assert_string_equal(found.d[0].user_id, "bob");
    struct devs d = {0};
    assert_int_equal(store_user_devices(S, "alice", collect_dev, &d), 3);
    assert_string_equal(d.token[2], "tok-a");
}

static void test_missing_key(void **state)
{
    (void)state;
    put_user("alice", "+4915112345678", "");
    close_all();
    /* A key file that lost k1: alice's phone cannot be opened. */
    FILE *f = fopen(keyfile, "w");
    assert_non_null(f);
    fprintf(f, "key k9 %s\n",
            "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff");
    fclose(f);
    assert_int_equal(chmod(keyfile, 0600), 0);
    open_all();
    struct store_user u;
    assert_int_equal(store_user_get(S, "alice", &u), 1); /* still readable ... */
    assert_string_equal(u.phone, "");                     /* ... without the phone */
    struct devs d = {0};
    assert_int_equal(store_user_devices(S, "alice", collect_dev, &d), 0);
    struct infos all = {0};
    assert_int_equal(store_device_list(S, "alice", collect_info, &all), 1);
    assert_string_equal(all.d[0].platform, "sms");
    assert_string_equal(all.d[0].token, "");
    /* Re-encryption skips it (nothing to rewrite it from) and ends. */
    assert_int_equal(store_dir_reencrypt(S, 10, NOW), 0);
}

static void test_no_keyring(void **state)
{
    (void)state;
    put_user("alice", "+4915112345678", "");
    store_set_pii(S, NULL);
    struct store_user u;
    assert_int_equal(store_user_get(S, "alice", &u), TDG_ECRYPTO);
    struct devs d = {0};
    assert_int_equal(store_user_devices(S, "alice", collect_dev, &d), TDG_ECRYPTO);
    /* Users without PII still work. */
    assert_int_equal(store_user_upsert(S, "bob", "UTC", NOW), 0);
    store_set_pii(S, K);
}

/* --- the endpoints cache (store_user_devices) --- */

static void cache_stats(uint64_t *hits, uint64_t *misses)
{
    store_dir_cache_stats(S, hits, misses);
}

/* Count the user's endpoints; *hit: answered from the cache. */
static int devices_of(const char *user, struct devs *d, bool *hit)
{
    uint64_t h0, m0, h1, m1;
    cache_stats(&h0, &m0);
    memset(d, 0, sizeof(*d));
    int n = store_user_devices(S, user, collect_dev, d);
    cache_stats(&h1, &m1);
    assert_int_equal((h1 - h0) + (m1 - m0), 1);
    *hit = h1 > h0;
    return n;
}

static void test_devices_cache(void **state)
{
    (void)state;
    put_user("alice", "+4915112345678", "");
    int64_t ios;
    assert_int_equal(store_device_add(S, "alice", "ios", "tok-ios-1", "app", "", NOW, &ios), 0);
    assert_int_equal(store_commit(S), 0);
    struct devs d;
    bool hit;
    assert_int_equal(devices_of("alice", &d, &hit), 2);
    assert_false(hit);
    assert_int_equal(devices_of("alice", &d, &hit), 2);
    assert_true(hit);
    assert_string_equal(d.platform[0], "sms");
    assert_string_equal(d.token[0], "+4915112345678");
    assert_string_equal(d.token[1], "tok-ios-1");
    assert_int_equal(d.id[1], ios);
    /* Another user's answer is cached on its own (none: cached too). */
    assert_int_equal(store_user_upsert(S, "bob", "UTC", NOW), 0);
    assert_int_equal(store_commit(S), 0);
    assert_int_equal(devices_of("bob", &d, &hit), 0);
    assert_false(hit);
    assert_int_equal(devices_of("bob", &d, &hit), 0);
    assert_true(hit);

    /* A write is seen at once: inside its transaction (read from the
     * database, not cached: dirty) and after the commit. */
    assert_int_equal(store_device_set_state(S, ios, "disabled", "test", NOW), 0);
    assert_int_equal(devices_of("alice", &d, &hit), 1);
    assert_false(hit);
    assert_int_equal(devices_of("alice", &d, &hit), 1);
    assert_false(hit);
    assert_int_equal(store_commit(S), 0);
    assert_int_equal(devices_of("alice", &d, &hit), 1);
    assert_false(hit);
    assert_int_equal(devices_of("alice", &d, &hit), 1);
    assert_true(hit);
    assert_int_equal(store_device_enable(S, ios, NOW), 1);
    assert_int_equal(store_commit(S), 0);
    assert_int_equal(devices_of("alice", &d, &hit), 2);
    assert_false(hit);

    /* Undone by ROLLBACK TO a savepoint: never served from the cache. */
    assert_int_equal(devices_of("alice", &d, &hit), 2);
    assert_true(hit);
    assert_int_equal(store_admin_begin(S), 0);
    assert_int_equal(store_device_add(S, "alice", "android", "tok-and-1", "", "", NOW, NULL), 0);
    assert_int_equal(devices_of("alice", &d, &hit), 3);
    assert_false(hit);
    assert_int_equal(store_admin_end(S, false), 0);
    assert_int_equal(devices_of("alice", &d, &hit), 2);
    assert_false(hit);
    assert_int_equal(store_commit(S), 0);
    assert_int_equal(devices_of("alice", &d, &hit), 2);
    assert_int_equal(devices_of("alice", &d, &hit), 2);
    assert_true(hit);

    /* A new contact point through store_user_put (users + devices). */
    put_user("alice", "+4915199999999", "a@example.com");
    assert_int_equal(devices_of("alice", &d, &hit), 3);
    assert_false(hit);
    bool seen_new = false;
    for (int i = 0; i < d.n; i++) {
        seen_new |= strcmp(d.token[i], "+4915199999999") == 0;
    }
    assert_true(seen_new);

    /* Erasure empties it. */
    assert_int_equal(devices_of("alice", &d, &hit), 3);
    assert_true(hit);
    assert_int_equal(store_user_remove(S, "alice"), 1);
    assert_int_equal(store_commit(S), 0);
    assert_int_equal(devices_of("alice", &d, &hit), 0);
    assert_false(hit);
    /* Every directory write empties all of it (bob's answer too). */
    assert_int_equal(devices_of("bob", &d, &hit), 0);
    assert_false(hit);
    /* A new keyring empties it (its answers were decrypted with the old). */
    assert_int_equal(devices_of("bob", &d, &hit), 0);
    assert_true(hit);
    store_set_pii(S, K);
    assert_int_equal(devices_of("bob", &d, &hit), 0);
    assert_false(hit);
}

/* A callback that writes the directory while a cached answer is being
 * handed out: the entry it iterates stays valid (ASan), and the write is
 * seen by the next lookup. */
struct disabler {
    int n;
    int64_t disable;
};

static void disable_cb(void *arg, const struct store_device *d)
{
    struct disabler *c = arg;
    c->n++;
    if (d->id == c->disable) {
        assert_int_equal(store_device_set_state(S, d->id, "disabled", "in callback", NOW), 0);
    }
}

static void test_devices_cache_write_in_callback(void **state)
{
    (void)state;
    put_user("alice", "", "");
    int64_t a, b;
    assert_int_equal(store_device_add(S, "alice", "ios", "tok-a", "", "", NOW, &a), 0);
    assert_int_equal(store_device_add(S, "alice", "ios", "tok-b", "", "", NOW, &b), 0);
    assert_int_equal(store_commit(S), 0);
    struct devs d;
    bool hit;
    assert_int_equal(devices_of("alice", &d, &hit), 2);
    assert_int_equal(devices_of("alice", &d, &hit), 2);
    assert_true(hit);
    struct disabler c = {0, a};
    assert_int_equal(store_user_devices(S, "alice", disable_cb, &c), 2);
    assert_int_equal(c.n, 2);
    assert_int_equal(store_commit(S), 0);
    assert_int_equal(devices_of("alice", &d, &hit), 1);
    assert_false(hit);
    assert_int_equal(d.id[0], b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_user_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_user_list, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fanout_endpoints, setup, teardown),
        cmocka_unit_test_setup_teardown(test_device_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_device_moves, setup, teardown),
        cmocka_unit_test_setup_teardown(test_device_disable_if_stale, setup, teardown),
        cmocka_unit_test_setup_teardown(test_groups, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bindings, setup, teardown),
        cmocka_unit_test_setup_teardown(test_binding_list, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_plaintext_and_erasure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_forget_user, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_pages, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rotation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_keyring, setup, teardown),
        cmocka_unit_test_setup_teardown(test_devices_cache, setup, teardown),
        cmocka_unit_test_setup_teardown(test_devices_cache_write_in_callback, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
