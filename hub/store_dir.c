/* store_dir.c - the directory: users, devices, contact points, groups, agent
 * bindings (see store.h, "Directory", and docs/directory.md). */
#include "store_int.h"

#include "channels/email.h"
#include "channels/sms.h"
#include "error.h"
#include "log.h"
#include "pii.h"
#include "tz.h"

#include <mbedtls/platform_util.h>

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Schema v2. Version 1 kept tokens (and, as pseudo-devices, phone numbers
 * and addresses) in plaintext; those tables are dropped, not converted: SQL
 * cannot encrypt, and v1 directories held only the bootstrap config's rows,
 * which the hub writes again at every start.
 *
 * Phone and email are user fields in the API but rows of devices (platform
 * "sms" / "email", at most one each per user) in the schema, so fanout,
 * attempts and provider answers (an SMS 21610 opt-out disables the row with
 * its reason and time) treat every endpoint alike. token holds the sealed
 * value, token_hash the keyed lookup hash. */
const char store_sql_directory[] =
    "DROP TABLE devices;"
    "DROP TABLE users;"
    "CREATE TABLE users ("
    "  id TEXT PRIMARY KEY,"
    "  tz TEXT NOT NULL DEFAULT 'UTC',"
    "  locale TEXT NOT NULL DEFAULT '',"
    "  created_ms INTEGER NOT NULL,"
    "  updated_ms INTEGER NOT NULL"
    ");"
    "CREATE TABLE devices ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,"
    "  platform TEXT NOT NULL,"
    "  token BLOB NOT NULL,"
    "  token_hash BLOB NOT NULL,"
    "  app TEXT NOT NULL DEFAULT '',"
    "  environment TEXT NOT NULL DEFAULT 'production',"
    "  state TEXT NOT NULL DEFAULT 'active',"
    "  state_reason TEXT NOT NULL DEFAULT '',"
    "  state_ms INTEGER NOT NULL DEFAULT 0,"
    "  registered_ms INTEGER NOT NULL,"
    "  last_active_ms INTEGER NOT NULL DEFAULT 0"
    ");"
    "CREATE UNIQUE INDEX devices_token ON devices(platform, token_hash)"
    "  WHERE platform NOT IN ('sms', 'email');"
    "CREATE UNIQUE INDEX devices_contact ON devices(user_id, platform)"
    "  WHERE platform IN ('sms', 'email');"
    "CREATE INDEX devices_by_user ON devices(user_id, state);"
    "CREATE INDEX devices_by_hash ON devices(token_hash);"
    "CREATE TABLE user_groups ("
    "  id TEXT PRIMARY KEY,"
    "  created_ms INTEGER NOT NULL"
    ");"
    "CREATE TABLE group_members ("
    "  group_id TEXT NOT NULL REFERENCES user_groups(id) ON DELETE CASCADE,"
    "  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,"
    "  added_ms INTEGER NOT NULL,"
    "  PRIMARY KEY (group_id, user_id)"
    ") WITHOUT ROWID;"
    "CREATE INDEX group_members_by_user ON group_members(user_id);"
    "CREATE TABLE agent_bindings ("
    "  agent TEXT NOT NULL,"
    "  subject TEXT NOT NULL,"
    "  category TEXT NOT NULL,"
    "  created_ms INTEGER NOT NULL,"
    "  PRIMARY KEY (agent, subject, category)"
    ") WITHOUT ROWID;"
    "CREATE INDEX agent_bindings_by_subject ON agent_bindings(subject);";

#define SEALED_MAX (STORE_TOKEN_MAX + PII_OVERHEAD)

/* --- helpers ------------------------------------------------------------ */

void store_set_pii(store_t *s, struct pii *k)
{
    s->pii = k;
    s->reencrypt_after = 0; /* a new keyring: a new pass */
    store_dir_cache_clear(s); /* decrypted with the old one */
    /* Deleted rows' bytes (ciphertexts, lookup hashes) are overwritten, not
     * left in free pages: erasing a user erases the bytes. */
    if (k && db_exec(s->db, "PRAGMA secure_delete=ON") < 0) {
        LOG_WARN("store", "cannot enable secure_delete: %s", sqlite3_errmsg(s->db));
    }
}

static int need_pii(store_t *s)
{
    if (!s->pii) {
        LOG_ERROR("store", "directory: no PII keyring attached (store_set_pii)");
        return TDG_ECRYPTO;
    }
    return 0;
}

static bool is_contact(const char *platform)
{
    return strcmp(platform, "sms") == 0 || strcmp(platform, "email") == 0;
}

/* The AAD context of a sealed endpoint: it names the row's platform and
 * user, so a ciphertext copied to another user's row does not open. */
static void seal_context(const char *platform, const char *user_id, char *ctx, size_t cap)
{
    snprintf(ctx, cap, "devices.token/%s/%s", platform, user_id);
}

/* Lookup hash domain is the platform; addresses are compared lowercased. */
static void endpoint_hash(store_t *s, const char *platform, const char *value,
                          unsigned char out[PII_HASH_LEN])
{
    if (strcmp(platform, "email") == 0) {
        char low[256];
        size_t n = strlen(value) < sizeof(low) - 1 ? strlen(value) : sizeof(low) - 1;
        for (size_t i = 0; i < n; i++) {
            low[i] = (char)tolower((unsigned char)value[i]);
        }
        low[n] = '\0';
        pii_hash(s->pii, platform, low, out);
    } else {
        pii_hash(s->pii, platform, value, out);
    }
}

static int seal_endpoint(store_t *s, const char *platform, const char *user_id, const char *value,
                         unsigned char *out, size_t cap, size_t *outlen)
{
    char ctx[128];
    seal_context(platform, user_id, ctx, sizeof(ctx));
    return pii_seal(s->pii, ctx, value, strlen(value), out, cap, outlen);
}

static int open_endpoint(store_t *s, int64_t id, const char *platform, const char *user_id,
                         const void *blob, int blen, char *out, size_t cap)
{
    char ctx[128];
    seal_context(platform, user_id, ctx, sizeof(ctx));
    int rc = blob && blen > 0 ? pii_open(s->pii, ctx, blob, (size_t)blen, out, cap, NULL)
                              : TDG_EINVAL_INPUT;
    if (rc < 0) {
        char kid[PII_KEY_ID_MAX + 1] = "?";
        if (blob && blen > 0) {
            pii_sealed_key_id(blob, (size_t)blen, kid, sizeof(kid));
        }
        LOG_ERROR("store", "device %lld (%s of user %s): cannot decrypt (key id %s): %s",
                  (long long)id, platform, user_id, kid,
                  rc == TDG_ENOTFOUND ? "key not in the PII key file" : tdg_strerror(rc));
    }
    return rc;
}

static const char *col_text(sqlite3_stmt *st, int i)
{
    const char *t = (const char *)sqlite3_column_text(st, i);
    return t ? t : "";
}

/* Step a one-row query: 1 row (left positioned: caller resets), 0 none
 * (reset), or error (reset). */
static int step_one(store_t *s, sqlite3_stmt *st, const char *what)
{
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        return 1;
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_DONE ? 0 : store_fail(s, rc, what);
}

static void done(sqlite3_stmt *st)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

static int changes(store_t *s)
{
    return sqlite3_changes(s->db) > 0 ? 1 : 0;
}

/* --- validation ----------------------------------------------------------- */

/* A user or group id as the "to" field allows it (docs/proto.md). */
static bool dir_id_valid(const char *id)
{
    size_t n = strnlen(id, STORE_USER_ID_MAX + 1);
    if (n < 1 || n > STORE_USER_ID_MAX) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)id[i];
        if (!isalnum(c) && !strchr("._@+-", c)) {
            return false;
        }
    }
    return true;
}

static bool locale_valid(const char *l)
{
    size_t n = strlen(l);
    if (n > PROTO_LOCALE_MAX) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        if (!isalnum((unsigned char)l[i]) && l[i] != '-' && l[i] != '_') {
            return false;
        }
    }
    return true;
}

int store_user_check(const struct store_user *u, unsigned fields, const char **field)
{
    const char *f = NULL;
    if (!dir_id_valid(u->id)) {
        f = "id";
    } else if ((fields & STORE_USER_TZ) && !tz_name_valid(u->tz)) {
        f = "tz";
    } else if ((fields & STORE_USER_LOCALE) && !locale_valid(u->locale)) {
        f = "locale";
    } else if ((fields & STORE_USER_PHONE) && u->phone[0] && !sms_e164_valid(u->phone)) {
        f = "phone";
    } else if ((fields & STORE_USER_EMAIL) && u->email[0] && !email_address_valid(u->email)) {
        f = "email";
    }
    if (field) {
        *field = f ? f : "";
    }
    return f ? TDG_EINVAL_INPUT : 0;
}

static bool token_valid(const char *t)
{
    size_t n = strnlen(t, STORE_TOKEN_MAX + 1);
    if (n < 1 || n > STORE_TOKEN_MAX) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)t[i];
        if (c <= 0x20 || c == 0x7f) {
            return false;
        }
    }
    return true;
}

int store_device_check(const char *platform, const char *token, const char *app,
                       const char *environment, const char **field)
{
    const char *f = NULL;
    if (!platform || (strcmp(platform, "ios") != 0 && strcmp(platform, "android") != 0 &&
                      strcmp(platform, "desktop") != 0)) {
        f = "platform";
    } else if (!token || !token_valid(token)) {
        f = "token";
    } else if (app && (strlen(app) > 255 || strpbrk(app, "\r\n"))) {
        f = "app";
    } else if (environment && environment[0] && strcmp(environment, "production") != 0 &&
               strcmp(environment, "sandbox") != 0) {
        f = "environment";
    }
    if (field) {
        *field = f ? f : "";
    }
    return f ? TDG_EINVAL_INPUT : 0;
}

/* "user:<id>" / "group:<id>" with a valid id. */
static bool recipient_valid(const char *r)
{
    if (strncmp(r, "user:", 5) == 0) {
        return dir_id_valid(r + 5);
    }
    if (strncmp(r, "group:", 6) == 0) {
        return dir_id_valid(r + 6);
    }
    return false;
}

static bool category_valid(const char *c)
{
    size_t n = strlen(c);
    if (n < 1 || n > PROTO_CATEGORY_MAX) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char ch = c[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_' || ch == '.' ||
              ch == '-')) {
            return false;
        }
    }
    return true;
}

int store_binding_check(const char *agent, const char *subject, const char *category,
                        const char **field)
{
    const char *f = NULL;
    if (!agent || (strcmp(agent, "*") != 0 && !proto_agent_id_valid(agent))) {
        f = "agent";
    } else if (!subject || (strcmp(subject, "*") != 0 && !recipient_valid(subject))) {
        f = "subject";
    } else if (!category || (strcmp(category, "*") != 0 && !category_valid(category))) {
        f = "category";
    }
    if (field) {
        *field = f ? f : "";
    }
    return f ? TDG_EINVAL_INPUT : 0;
}

/* --- users ------------------------------------------------------------- */

static const char SQL_USER_EXISTS[] = "SELECT 1 FROM users WHERE id = ?1";
static const char SQL_USER_GET[] =
    "SELECT id, tz, locale, created_ms, updated_ms FROM users WHERE id = ?1";
static const char SQL_USER_INSERT[] =
    "INSERT INTO users(id, tz, locale, created_ms, updated_ms) VALUES (?1, ?2, ?3, ?4, ?4)";
static const char SQL_USER_SET_TZ[] = "UPDATE users SET tz = ?2, updated_ms = ?3 WHERE id = ?1";
static const char SQL_USER_SET_LOCALE[] =
    "UPDATE users SET locale = ?2, updated_ms = ?3 WHERE id = ?1";
static const char SQL_USER_TOUCH[] = "UPDATE users SET updated_ms = ?2 WHERE id = ?1";
static const char SQL_USER_LIST[] =
    "SELECT id, tz, locale, created_ms, updated_ms FROM users ORDER BY id";
static const char SQL_USER_DELETE[] = "DELETE FROM users WHERE id = ?1";
static const char SQL_CONTACT_GET[] =
    "SELECT id, token, token_hash FROM devices WHERE user_id = ?1 AND platform = ?2";
static const char SQL_CONTACT_DELETE[] = "DELETE FROM devices WHERE user_id = ?1 AND platform = ?2";
static const char SQL_DEVICE_INSERT[] =
    "INSERT INTO devices(user_id, platform, token, token_hash, app, environment, state_ms,"
    " registered_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)";
static const char SQL_USER_DEVICES_DELETE[] = "DELETE FROM devices WHERE user_id = ?1";
static const char SQL_USER_MEMBERSHIPS_DELETE[] = "DELETE FROM group_members WHERE user_id = ?1";
static const char SQL_SUBJECT_BINDINGS_DELETE[] = "DELETE FROM agent_bindings WHERE subject = ?1";

int store_user_exists(store_t *s, const char *user_id)
{
    sqlite3_stmt *st = store_stmt(s, SQL_USER_EXISTS);
    if (!st) {
        return TDG_EDB;
    }
    store_bind_text(st, 1, user_id);
    int rc = step_one(s, st, "user exists");
    if (rc == 1) {
        done(st);
    }
    return rc;
}

static int run_text_ms(store_t *s, const char *sql, const char *a, const char *b, int64_t ms,
                       const char *what)
{
    sqlite3_stmt *st = store_stmt(s, sql);
    if (!st) {
        return TDG_EDB;
    }
    store_bind_text(st, 1, a);
    store_bind_text(st, 2, b);
    sqlite3_bind_int64(st, 3, ms);
    return store_run(s, st, what);
}

static int run_text(store_t *s, const char *sql, const char *a, const char *b, const char *what)
{
    sqlite3_stmt *st = store_stmt(s, sql);
    if (!st) {
        return TDG_EDB;
    }
    store_bind_text(st, 1, a);
    if (b) {
        store_bind_text(st, 2, b);
    }
    return store_run(s, st, what);
}

/* Set the user's phone ("sms") or email ("email") contact point: "" removes
 * it; the same value keeps the row (and its state: an opted-out number stays
 * opted out); a new value replaces the row with a new, active one. */
static int set_contact(store_t *s, const char *user_id, const char *platform, const char *value,
                       int64_t now_ms)
{
    sqlite3_stmt *st = store_stmt(s, SQL_CONTACT_GET);
    if (!st) {
        return TDG_EDB;
    }
    unsigned char h[PII_HASH_LEN];
    if (value[0]) {
        endpoint_hash(s, platform, value, h);
    }
    store_bind_text(st, 1, user_id);
    store_bind_text(st, 2, platform);
    int rc = step_one(s, st, "contact get");
    if (rc < 0) {
        return rc;
    }
    if (rc == 1) {
        bool same = value[0] && sqlite3_column_bytes(st, 2) == PII_HASH_LEN &&
                    memcmp(sqlite3_column_blob(st, 2), h, PII_HASH_LEN) == 0;
        done(st);
        if (same) {
            return 0;
        }
        if ((rc = run_text(s, SQL_CONTACT_DELETE, user_id, platform, "contact delete")) < 0) {
            return rc;
        }
    }
    if (!value[0]) {
        return 0;
    }
    unsigned char sealed[SEALED_MAX];
    size_t slen;
    if ((rc = seal_endpoint(s, platform, user_id, value, sealed, sizeof(sealed), &slen)) < 0) {
        return rc;
    }
    st = store_stmt(s, SQL_DEVICE_INSERT);
    if (!st) {
        return TDG_EDB;
    }
    store_bind_text(st, 1, user_id);
    store_bind_text(st, 2, platform);
    sqlite3_bind_blob(st, 3, sealed, (int)slen, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 4, h, PII_HASH_LEN, SQLITE_TRANSIENT);
    store_bind_text(st, 5, "");
    store_bind_text(st, 6, "production");
    sqlite3_bind_int64(st, 7, now_ms);
    return store_run(s, st, "contact insert");
}

int store_user_put(store_t *s, const struct store_user *u, unsigned fields, int64_t now_ms)
{
    const char *field;
    int rc = store_user_check(u, fields, &field);
    if (rc < 0) {
        LOG_WARN("store", "user %s: bad %s", dir_id_valid(u->id) ? u->id : "?", field);
        return rc;
    }
    if ((fields & (STORE_USER_PHONE | STORE_USER_EMAIL)) && (rc = need_pii(s)) < 0) {
        return rc;
    }
    if ((rc = store_tx(s)) < 0) {
        return rc;
    }
    int exists = store_user_exists(s, u->id);
    if (exists < 0) {
        return exists;
    }
    if (!exists) {
        sqlite3_stmt *st = store_stmt(s, SQL_USER_INSERT);
        if (!st) {
            return TDG_EDB;
        }
        store_bind_text(st, 1, u->id);
        store_bind_text(st, 2, (fields & STORE_USER_TZ) ? u->tz : "UTC");
        store_bind_text(st, 3, (fields & STORE_USER_LOCALE) ? u->locale : "");
        sqlite3_bind_int64(st, 4, now_ms);
        if ((rc = store_run(s, st, "user insert")) < 0) {
            return rc;
        }
    } else {
        if ((fields & STORE_USER_TZ) &&
            (rc = run_text_ms(s, SQL_USER_SET_TZ, u->id, u->tz, now_ms, "user tz")) < 0) {
            return rc;
        }
        if ((fields & STORE_USER_LOCALE) &&
            (rc = run_text_ms(s, SQL_USER_SET_LOCALE, u->id, u->locale, now_ms, "user locale")) <
                0) {
            return rc;
        }
        if (fields & (STORE_USER_PHONE | STORE_USER_EMAIL)) {
            sqlite3_stmt *st = store_stmt(s, SQL_USER_TOUCH);
            if (!st) {
                return TDG_EDB;
            }
            store_bind_text(st, 1, u->id);
            sqlite3_bind_int64(st, 2, now_ms);
            if ((rc = store_run(s, st, "user touch")) < 0) {
                return rc;
            }
        }
    }
    if ((fields & STORE_USER_PHONE) && (rc = set_contact(s, u->id, "sms", u->phone, now_ms)) < 0) {
        return rc;
    }
    if ((fields & STORE_USER_EMAIL) &&
        (rc = set_contact(s, u->id, "email", u->email, now_ms)) < 0) {
        return rc;
    }
    return 0;
}

int store_user_upsert(store_t *s, const char *user_id, const char *tz, int64_t now_ms)
{
    struct store_user u = {0};
    snprintf(u.id, sizeof(u.id), "%s", user_id);
    snprintf(u.tz, sizeof(u.tz), "%s", tz && *tz ? tz : "UTC");
    return store_user_put(s, &u, STORE_USER_TZ, now_ms);
}

/* Fill u's phone and email from its contact rows. */
static int read_contacts(store_t *s, struct store_user *u)
{
    static const char *const platforms[] = {"sms", "email"};
    char *const dest[] = {u->phone, u->email};
    const size_t cap[] = {sizeof(u->phone), sizeof(u->email)};
    for (int i = 0; i < 2; i++) {
        dest[i][0] = '\0';
        sqlite3_stmt *st = store_stmt(s, SQL_CONTACT_GET);
        if (!st) {
            return TDG_EDB;
        }
        store_bind_text(st, 1, u->id);
        store_bind_text(st, 2, platforms[i]);
        int rc = step_one(s, st, "contact get");
        if (rc < 0) {
            return rc;
        }
        if (rc == 1) {
            /* Undecryptable (logged): left empty, the user still reads. */
            if (open_endpoint(s, sqlite3_column_int64(st, 0), platforms[i], u->id,
                              sqlite3_column_blob(st, 1), sqlite3_column_bytes(st, 1), dest[i],
                              cap[i]) < 0) {
                dest[i][0] = '\0';
            }
            done(st);
        }
    }
    return 0;
}

static void user_from_row(sqlite3_stmt *st, struct store_user *u)
{
    memset(u, 0, sizeof(*u));
    snprintf(u->id, sizeof(u->id), "%s", col_text(st, 0));
    snprintf(u->tz, sizeof(u->tz), "%s", col_text(st, 1));
    snprintf(u->locale, sizeof(u->locale), "%s", col_text(st, 2));
    u->created_ms = sqlite3_column_int64(st, 3);
    u->updated_ms = sqlite3_column_int64(st, 4);
}

int store_user_get(store_t *s, const char *user_id, struct store_user *out)
{
    int rc = need_pii(s);
    if (rc < 0) {
        return rc;
    }
    sqlite3_stmt *st = store_stmt(s, SQL_USER_GET);
    if (!st) {
        return TDG_EDB;
    }
    store_bind_text(st, 1, user_id);
    if ((rc = step_one(s, st, "user get")) <= 0) {
        return rc;
    }
    user_from_row(st, out);
    done(st);
    if ((rc = read_contacts(s, out)) < 0) {
        memset(out, 0, sizeof(*out));
        return rc;
    }
    return 1;
}

int store_user_list(store_t *s, store_user_cb cb, void *arg)
{
    int rc = need_pii(s);
    if (rc < 0) {
        return rc;
    }
    /* Collect ids first: read_contacts runs other statements, and the
     * callback may too. Bounded by the user count, in chunks. */
    sqlite3_stmt *st = store_stmt(s, SQL_USER_LIST);
    if (!st) {
        return TDG_EDB;
    }
    size_t n = 0, cap = 0;
    struct store_user *users = NULL;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 64;
            struct store_user *nu = realloc(users, nc * sizeof(*nu));
            if (!nu) {
                rc = -ENOMEM;
                break;
            }
            users = nu;
            cap = nc;
        }
        user_from_row(st, &users[n++]);
    }
    done(st);
    if (rc != SQLITE_DONE) {
        free(users);
        return rc == -ENOMEM ? rc : store_fail(s, rc, "user list");
    }
    rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        rc = read_contacts(s, &users[i]);
        if (rc == 0) {
            cb(arg, &users[i]);
        }
    }
    for (size_t i = 0; i < n; i++) {
        memset(users[i].phone, 0, sizeof(users[i].phone));
        memset(users[i].email, 0, sizeof(users[i].email));
    }
    free(users);
    return rc < 0 ? rc : (int)n;
}

int store_user_remove(store_t *s, const char *user_id)
{
    int rc = store_tx(s);
    if (rc < 0) {
        return rc;
    }
    int exists = store_user_exists(s, user_id);
    if (exists <= 0) {
        return exists;
    }
    char subject[STORE_USER_ID_MAX + 8];
    snprintf(subject, sizeof(subject), "user:%s", user_id);
    /* Explicit deletes (not only ON DELETE CASCADE) so erasure does not
     * depend on the connection's foreign_keys setting. */
    if ((rc = run_text(s, SQL_USER_DEVICES_DELETE, user_id, NULL, "user devices delete")) < 0 ||
        (rc = run_text(s, SQL_USER_MEMBERSHIPS_DELETE, user_id, NULL, "user groups delete")) <
            0 ||
        (rc = run_text(s, SQL_SUBJECT_BINDINGS_DELETE, subject, NULL, "user bindings delete")) <
            0 ||
        (rc = run_text(s, SQL_USER_DELETE, user_id, NULL, "user delete")) < 0) {
        return rc;
    }
    LOG_INFO("store", "user %s removed with its devices, contact points, memberships and "
             "bindings", user_id);
    return 1;
}

/* --- devices ----------------------------------------------------------- */

#define DEVICE_COLS                                                                             \
    "id, user_id, platform, token, app, environment, state, state_reason, state_ms,"            \
    " registered_ms, last_active_ms"

static const char SQL_ACTIVE[] = "SELECT id, user_id, platform, token, app, environment"
                                 " FROM devices WHERE user_id = ?1 AND state = 'active'"
                                 " ORDER BY id";
static const char SQL_DEVICE_GET[] = "SELECT " DEVICE_COLS " FROM devices WHERE id = ?1";
static const char SQL_DEVICE_LIST[] =
    "SELECT " DEVICE_COLS " FROM devices WHERE user_id = ?1 ORDER BY id";
static const char SQL_DEVICE_LOOKUP[] =
    "SELECT " DEVICE_COLS " FROM devices WHERE token_hash = ?1 AND platform = ?2 ORDER BY id";
static const char SQL_DEVICE_BY_TOKEN[] =
    "SELECT id, user_id, state FROM devices WHERE platform = ?1 AND token_hash = ?2"
    " AND platform NOT IN ('sms', 'email')";
static const char SQL_ACTIVE_COUNT[] =
    "SELECT count(*) FROM devices WHERE user_id = ?1 AND state = 'active'"
    " AND platform NOT IN ('sms', 'email') AND id != ?2";
static const char SQL_DEVICE_MOVE[] =
    "UPDATE devices SET user_id = ?2, token = ?3, app = ?4, environment = ?5, state = 'active',"
    " state_reason = '', state_ms = ?6, registered_ms = ?6 WHERE id = ?1";
/* Disabled and flagged devices stay for diagnosis ("why didn't I get it?"),
 * but at most STORE_MAX_DEVICES of them per user: the oldest go. */
static const char SQL_PRUNE_INACTIVE[] =
    "DELETE FROM devices WHERE id IN (SELECT id FROM devices WHERE user_id = ?1"
    " AND state != 'active' AND platform NOT IN ('sms', 'email')"
    " ORDER BY state_ms DESC, id DESC LIMIT -1 OFFSET ?2)";
static const char SQL_DEVICE_DELETE[] = "DELETE FROM devices WHERE id = ?1";
static const char SQL_DEVICE_STATE[] =
    "UPDATE devices SET state = ?2, state_reason = ?3, state_ms = ?4 WHERE id = ?1";
static const char SQL_DEVICE_TOUCH[] =
    "UPDATE devices SET last_active_ms = max(last_active_ms, ?2) WHERE id = ?1";
/* APNs 410: the token is invalid since ?5; a registration after that
 * (store_device_add sets registered_ms) keeps the device. One statement, so
 * a registration in the same transaction is never overwritten. */
static const char SQL_DEVICE_DISABLE_STALE[] =
    "UPDATE devices SET state = 'disabled', state_reason = ?2, state_ms = ?3"
    " WHERE id = ?1 AND registered_ms <= ?4";

/* --- the active endpoints of a user, cached -------------------------------
 *
 * The fanout asks for a user's active endpoints for every notification;
 * reading them costs a query and one AES-GCM decryption per endpoint (about
 * 14k instructions per notification with one device, 1/30 of the hub's
 * work). So the answer is kept per user, decrypted, in memory.
 *
 * Invalidation does not depend on the callers: an update hook on the
 * connection sees every row written to `devices` or `users` (by any store
 * file, any trigger or cascade) and empties the whole cache (zeroing the
 * plaintext) and marks it dirty; a dirty cache is neither read nor filled
 * until the transaction ends (commit or rollback hook), because until then
 * a ROLLBACK TO a savepoint could undo what a read saw. So the cache only
 * ever holds committed rows, and a directory write is seen by the next
 * lookup. A new keyring (store_set_pii), erasure (it deletes rows: the
 * hook) and store_close empty it too. Directory writes are rare (admin API,
 * provider answers that disable a device); the hot path writes other
 * tables, which the hook passes over after one comparison.
 *
 * Bounded: DCACHE_SLOTS users, direct-mapped by a hash of the id (a
 * collision replaces the older entry), at most DCACHE_ROWS endpoints each
 * (5 devices + phone + email); a user with more, or with an endpoint that
 * cannot be decrypted (logged every time, as before), is not cached. */
#define DCACHE_SLOTS 256
#define DCACHE_ROWS (STORE_MAX_DEVICES + 2)

struct dcache_entry {
    unsigned n;
    struct store_device dev[DCACHE_ROWS]; /* strings point into buf */
    size_t len;
    char user[STORE_USER_ID_MAX + 1];
    char buf[]; /* user_id, platform, token, app, environment of each row */
};

struct dir_cache {
    struct dcache_entry *slot[DCACHE_SLOTS];
    bool dirty;     /* directory rows written in the open transaction */
    unsigned busy;  /* callbacks of a cached answer running: clear later */
    bool clear_due; /* a clear was asked while busy */
    uint64_t gen;   /* +1 for every directory row written and every rollback */
    uint64_t hits, misses;
};

static unsigned dcache_hash(const char *user)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)user; *p; p++) {
        h = (h ^ *p) * 16777619u;
    }
    return h % DCACHE_SLOTS;
}

static void dcache_free_entry(struct dcache_entry *e)
{
    if (e) {
        mbedtls_platform_zeroize(e, sizeof(*e) + e->len);
        free(e);
    }
}

static void dcache_clear(struct dir_cache *c)
{
    if (c->busy) {
        c->clear_due = true;
        return;
    }
    c->clear_due = false;
    for (size_t i = 0; i < DCACHE_SLOTS; i++) {
        dcache_free_entry(c->slot[i]);
        c->slot[i] = NULL;
    }
}

void store_dir_cache_clear(store_t *s)
{
    if (s->dcache) {
        dcache_clear(s->dcache);
    }
}

/* The connection's hooks, one set for the endpoints cache and the receipts
 * kept in memory (store_engine.c); arg is the store. */
static void dcache_on_update(void *arg, int op, const char *dbname, const char *table,
                             sqlite3_int64 rowid)
{
    (void)dbname;
    store_t *s = arg;
    struct dir_cache *c = s->dcache;
    /* first letters first: the hot path writes notifications, attempts,
     * decisions, receipts - this is called for each of those rows */
    if ((table[0] == 'd' && strcmp(table, "devices") == 0) ||
        (table[0] == 'u' && strcmp(table, "users") == 0)) {
        c->dirty = true;
        c->gen++;
        dcache_clear(c);
        return;
    }
    store_rmem_on_update(s, op, table, rowid);
}

static int dcache_on_commit(void *arg)
{
    store_t *s = arg;
    s->dcache->dirty = false;
    return 0; /* 0: go on with the commit */
}

static void dcache_on_rollback(void *arg)
{
    store_t *s = arg;
    struct dir_cache *c = s->dcache;
    c->dirty = false;
    c->gen++;
    dcache_clear(c);
    store_rmem_undo(s);
}

int store_dir_open(store_t *s)
{
    struct dir_cache *c = calloc(1, sizeof(*c));
    if (!c) {
        return -ENOMEM;
    }
    /* Opened inside a transaction (cannot happen from store_open, but
     * cheap to get right): what it wrote is not known, so dirty. */
    c->dirty = !sqlite3_get_autocommit(s->db);
    s->dcache = c;
    sqlite3_update_hook(s->db, dcache_on_update, s);
    sqlite3_commit_hook(s->db, dcache_on_commit, s);
    sqlite3_rollback_hook(s->db, dcache_on_rollback, s);
    return 0;
}

void store_dir_close(store_t *s)
{
    struct dir_cache *c = s->dcache;
    if (!c) {
        return;
    }
    sqlite3_update_hook(s->db, NULL, NULL);
    sqlite3_commit_hook(s->db, NULL, NULL);
    sqlite3_rollback_hook(s->db, NULL, NULL);
    c->busy = 0;
    dcache_clear(c);
    free(c);
    s->dcache = NULL;
}

void store_dir_cache_stats(store_t *s, uint64_t *hits, uint64_t *misses)
{
    *hits = s->dcache ? s->dcache->hits : 0;
    *misses = s->dcache ? s->dcache->misses : 0;
}

/* The answer for user_id from the cache: its count, or -1 when not there. */
static int dcache_get(store_t *s, const char *user_id, store_device_cb cb, void *arg)
{
    struct dir_cache *c = s->dcache;
    if (!c || c->dirty) {
        return -1;
    }
    struct dcache_entry *e = c->slot[dcache_hash(user_id)];
    if (!e || strcmp(e->user, user_id) != 0) {
        return -1;
    }
    c->hits++;
    /* cb may write the directory (the hook then clears the cache): the
     * entry stays until the last callback has run. */
    c->busy++;
    unsigned n = e->n;
    for (unsigned i = 0; i < n; i++) {
        cb(arg, &e->dev[i]);
    }
    c->busy--;
    if (c->clear_due && !c->busy) {
        dcache_clear(c);
    }
    return (int)n;
}

/* The rows read from the database, about to be cached. */
struct dcache_fill {
    unsigned n;
    bool bad; /* not cacheable: too many rows, one not decryptable, no memory */
    size_t len;
    struct {
        int64_t id;
        size_t off[5]; /* user_id, platform, token, app, environment in buf */
    } row[DCACHE_ROWS];
    char buf[DCACHE_ROWS * (STORE_USER_ID_MAX + 16 + STORE_TOKEN_MAX + 256 + 16 + 5)];
};

static void fill_add(struct dcache_fill *f, const struct store_device *d)
{
    if (f->bad || f->n >= DCACHE_ROWS) {
        f->bad = true;
        return;
    }
    const char *v[5] = {d->user_id, d->platform, d->token, d->app, d->environment};
    for (int i = 0; i < 5; i++) {
        size_t l = strlen(v[i]) + 1;
        if (l > sizeof(f->buf) - f->len) {
            f->bad = true;
            return;
        }
        f->row[f->n].off[i] = f->len;
        memcpy(f->buf + f->len, v[i], l);
        f->len += l;
    }
    f->row[f->n].id = d->id;
    f->n++;
}

/* Cache what was read, unless the directory may have changed since the
 * read began (gen: e.g. a callback wrote and committed), or the answer is
 * being handed out (busy: the slot may be the one iterated). */
static void fill_install(store_t *s, const char *user_id, struct dcache_fill *f, uint64_t gen)
{
    struct dir_cache *c = s->dcache;
    if (!c || c->dirty || c->busy || c->gen != gen || f->bad ||
        strlen(user_id) > STORE_USER_ID_MAX) {
        return;
    }
    struct dcache_entry *e = malloc(sizeof(*e) + f->len);
    if (!e) {
        return; /* not cached: the next call reads the database again */
    }
    memset(e, 0, sizeof(*e));
    e->n = f->n;
    e->len = f->len;
    snprintf(e->user, sizeof(e->user), "%s", user_id);
    memcpy(e->buf, f->buf, f->len);
    for (unsigned i = 0; i < f->n; i++) {
        e->dev[i] = (struct store_device){
            .id = f->row[i].id,
            .user_id = e->buf + f->row[i].off[0],
            .platform = e->buf + f->row[i].off[1],
            .token = e->buf + f->row[i].off[2],
            .app = e->buf + f->row[i].off[3],
            .environment = e->buf + f->row[i].off[4],
        };
    }
    unsigned h = dcache_hash(user_id);
    dcache_free_entry(c->slot[h]);
    c->slot[h] = e;
}

int store_user_devices(store_t *s, const char *user_id, store_device_cb cb, void *arg)
{
    int rc = need_pii(s);
    if (rc < 0) {
        return rc;
    }
    int cached = dcache_get(s, user_id, cb, arg);
    if (cached >= 0) {
        return cached;
    }
    if (s->dcache) {
        s->dcache->misses++;
    }
    sqlite3_stmt *st = store_stmt(s, SQL_ACTIVE);
    if (!st) {
        return TDG_EDB;
    }
    store_bind_text(st, 1, user_id);
    int n = 0;
    char token[STORE_TOKEN_MAX + 1];
    struct dcache_fill fill; /* about 5 KB */
    fill.n = 0;
    fill.len = 0;
    fill.bad = !s->dcache;
    uint64_t gen = s->dcache ? s->dcache->gen : 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t id = sqlite3_column_int64(st, 0);
        const char *platform = col_text(st, 2);
        if (open_endpoint(s, id, platform, user_id, sqlite3_column_blob(st, 3),
                          sqlite3_column_bytes(st, 3), token, sizeof(token)) < 0) {
            fill.bad = true;
            continue; /* logged; the other endpoints still get it */
        }
        struct store_device d = {
            .id = id,
            .user_id = col_text(st, 1),
            .platform = platform,
            .token = token,
            .app = col_text(st, 4),
            .environment = col_text(st, 5),
        };
        fill_add(&fill, &d);
        cb(arg, &d);
        n++;
    }
    memset(token, 0, sizeof(token));
    done(st);
    if (rc != SQLITE_DONE) {
        fill.bad = true;
    } else {
        fill_install(s, user_id, &fill, gen);
    }
    mbedtls_platform_zeroize(fill.buf, fill.len);
    if (rc != SQLITE_DONE) {
        return store_fail(s, rc, "devices");
    }
    return n;
}

/* Row of DEVICE_COLS -> info (token decrypted; "" when it cannot be, which
 * is logged: the row's other fields still tell the operator about it). */
static int info_from_row(store_t *s, sqlite3_stmt *st, struct store_device_info *d)
{
    memset(d, 0, sizeof(*d));
    d->id = sqlite3_column_int64(st, 0);
    snprintf(d->user_id, sizeof(d->user_id), "%s", col_text(st, 1));
    snprintf(d->platform, sizeof(d->platform), "%s", col_text(st, 2));
    snprintf(d->app, sizeof(d->app), "%s", col_text(st, 4));
    snprintf(d->environment, sizeof(d->environment), "%s", col_text(st, 5));
    snprintf(d->state, sizeof(d->state), "%s", col_text(st, 6));
    snprintf(d->state_reason, sizeof(d->state_reason), "%s", col_text(st, 7));
    d->state_ms = sqlite3_column_int64(st, 8);
    d->registered_ms = sqlite3_column_int64(st, 9);
    d->last_active_ms = sqlite3_column_int64(st, 10);
    if (open_endpoint(s, d->id, d->platform, d->user_id, sqlite3_column_blob(st, 3),
                      sqlite3_column_bytes(st, 3), d->token, sizeof(d->token)) < 0) {
        d->token[0] = '\0';
    }
    return 0;
}

/* Run st (bound) over DEVICE_COLS rows; each decrypted row goes to cb. The
 * rows are collected first so cb may use the store. */
static int each_device(store_t *s, sqlite3_stmt *st, store_device_info_cb cb, void *arg,
                       const char *what)
{
    struct store_device_info *rows = NULL;
    size_t n = 0, cap = 0;
    int rc, err = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 8;
            struct store_device_info *nr = realloc(rows, nc * sizeof(*nr));
            if (!nr) {
                err = -ENOMEM;
                break;
            }
            rows = nr;
            cap = nc;
        }
        if ((err = info_from_row(s, st, &rows[n])) < 0) {
            break;
        }
        n++;
    }
    done(st);
    if (err == 0 && rc != SQLITE_DONE) {
        err = store_fail(s, rc, what);
    }
    for (size_t i = 0; i < n && err == 0; i++) {
        cb(arg, &rows[i]);
    }
    for (size_t i = 0; i < n; i++) {
        memset(rows[i].token, 0, sizeof(rows[i].token));
    }
    free(rows);
    return err < 0 ? err : (int)n;
}

int store_device_get(store_t *s, int64_t device_id, struct store_device_info *out)
{
    int rc = need_pii(s);
    if (rc < 0) {
        return rc;
    }
    sqlite3_stmt *st = store_stmt(s, SQL_DEVICE_GET);
    if (!st) {
        return TDG_EDB;
    }
    sqlite3_bind_int64(st, 1, device_id);
    if ((rc = step_one(s, st, "device get")) <= 0) {
        return rc;
    }
    rc = info_from_row(s, st, out);
    done(st);
    return rc < 0 ? rc : 1;
}

int store_device_list(store_t *s, const char *user_id, store_device_info_cb cb, void *arg)
{
    int rc = need_pii(s);
    if (rc < 0) {
        return rc;
    }
    sqlite3_stmt *st = store_stmt(s, SQL_DEVICE_LIST);
    if (!st) {
        return TDG_EDB;
    }
    store_bind_text(st, 1, user_id);
    return each_device(s, st, cb, arg, "device list");
}

int store_device_lookup(store_t *s, const char *platform, const char *value,
                        store_device_info_cb cb, void *arg)
{
    int rc = need_pii(s);
    if (rc < 0) {
        return rc;
    }
    sqlite3_stmt *st = store_stmt(s, SQL_DEVICE_LOOKUP);
    if (!st) {
        return TDG_EDB;
    }
    unsigned char h[PII_HASH_LEN];
    endpoint_hash(s, platform, value, h);
    sqlite3_bind_blob(st, 1, h, PII_HASH_LEN, SQLITE_TRANSIENT);
    store_bind_text(st, 2, platform);
    return each_device(s, st, cb, arg, "device lookup");
}

/* Active push/desktop devices of user, not counting except_id. */
static int active_count(store_t *s, const char *user_id, int64_t except_id)
{
    sqlite3_stmt *st = store_stmt(s, SQL_ACTIVE_COUNT);
    if (!st) {
        return TDG_EDB;
    }
    store_bind_text(st, 1, user_id);
    sqlite3_bind_int64(st, 2, except_id);
    int rc = step_one(s, st, "device count");
    if (rc <= 0) {
        return rc < 0 ? rc : 0;
    }
    int n = sqlite3_column_int(st, 0);
    done(st);
    return n;
}

int store_device_add(store_t *s, const char *user_id, const char *platform, const char *token,
                     const char *app, const char *environment, int64_t now_ms, int64_t *id)
{
    const char *field;
    int rc = store_device_check(platform, token, app, environment, &field);
    if (rc < 0) {
        LOG_WARN("store", "device for user %s: bad %s", user_id, field);
        return rc;
    }
    if ((rc = need_pii(s)) < 0 || (rc = store_tx(s)) < 0) {
        return rc;
    }
    if (!app) {
        app = "";
    }
    if (!environment || !environment[0]) {
        environment = "production";
    }
    int exists = store_user_exists(s, user_id);
    if (exists <= 0) {
        return exists < 0 ? exists : TDG_ENOTFOUND;
    }
    unsigned char h[PII_HASH_LEN];
    endpoint_hash(s, platform, token, h);
    char tag[PII_LOG_TAG_LEN + 1];
    pii_log_tag(s->pii, platform, token, tag);

    sqlite3_stmt *st = store_stmt(s, SQL_DEVICE_BY_TOKEN);
    if (!st) {
        return TDG_EDB;
    }
    store_bind_text(st, 1, platform);
    sqlite3_bind_blob(st, 2, h, PII_HASH_LEN, SQLITE_TRANSIENT);
    int64_t old_id = 0;
    char old_user[STORE_USER_ID_MAX + 1] = "";
    if ((rc = step_one(s, st, "device by token")) < 0) {
        return rc;
    }
    if (rc == 1) {
        old_id = sqlite3_column_int64(st, 0);
        snprintf(old_user, sizeof(old_user), "%s", col_text(st, 1));
        done(st);
    }
    int n = active_count(s, user_id, old_id);
    if (n < 0) {
        return n;
    }
    if (n >= STORE_MAX_DEVICES) {
        LOG_WARN("store", "user %s: %s device %s refused: already %d active devices", user_id,
                 platform, tag, n);
        return TDG_EDEVICE_LIMIT;
    }
    unsigned char sealed[SEALED_MAX];
    size_t slen;
    if ((rc = seal_endpoint(s, platform, user_id, token, sealed, sizeof(sealed), &slen)) < 0) {
        return rc;
    }
    if (old_id) {
        /* Registered again (maybe by another user: the app was reinstalled
         * or logged in as someone else): it moves, and is active again with
         * a new registration time, which a later 410 is compared against. */
        st = store_stmt(s, SQL_DEVICE_MOVE);
        if (!st) {
            return TDG_EDB;
        }
        sqlite3_bind_int64(st, 1, old_id);
        store_bind_text(st, 2, user_id);
        sqlite3_bind_blob(st, 3, sealed, (int)slen, SQLITE_TRANSIENT);
        store_bind_text(st, 4, app);
        store_bind_text(st, 5, environment);
        sqlite3_bind_int64(st, 6, now_ms);
        if ((rc = store_run(s, st, "device move")) < 0) {
            return rc;
        }
        if (strcmp(old_user, user_id) != 0) {
            LOG_INFO("store", "%s device %s (id %lld) moved from user %s to %s", platform, tag,
                     (long long)old_id, old_user, user_id);
        }
    } else {
        st = store_stmt(s, SQL_DEVICE_INSERT);
        if (!st) {
            return TDG_EDB;
        }
        store_bind_text(st, 1, user_id);
        store_bind_text(st, 2, platform);
        sqlite3_bind_blob(st, 3, sealed, (int)slen, SQLITE_TRANSIENT);
        sqlite3_bind_blob(st, 4, h, PII_HASH_LEN, SQLITE_TRANSIENT);
        store_bind_text(st, 5, app);
        store_bind_text(st, 6, environment);
        sqlite3_bind_int64(st, 7, now_ms);
        if ((rc = store_run(s, st, "device insert")) < 0) {
            return rc;
        }
        old_id = sqlite3_last_insert_rowid(s->db);
    }
    st = store_stmt(s, SQL_PRUNE_INACTIVE);
    if (!st) {
        return TDG_EDB;
    }
    store_bind_text(st, 1, user_id);
    sqlite3_bind_int(st, 2, STORE_MAX_DEVICES);
    if ((rc = store_run(s, st, "device prune")) < 0) {
        return rc;
    }
    if (id) {
        *id = old_id;
    }
    return 0;
}

int store_device_upsert(store_t *s, const char *user_id, const char *platform, const char *token,
                        const char *app, const char *environment, int64_t now_ms)
{
    if (is_contact(platform)) {
        struct store_user u = {0};
        snprintf(u.id, sizeof(u.id), "%s", user_id);
        bool sms = strcmp(platform, "sms") == 0;
        if (strlen(token) >= (sms ? sizeof(u.phone) : sizeof(u.email))) {
            return TDG_EINVAL_INPUT;
        }
        snprintf(sms ? u.phone : u.email, sms ? sizeof(u.phone) : sizeof(u.email), "%s", token);
        return store_user_put(s, &u, sms ? STORE_USER_PHONE : STORE_USER_EMAIL, now_ms);
    }
    return store_device_add(s, user_id, platform, token, app, environment, now_ms, NULL);
}

int store_device_remove(store_t *s, int64_t device_id)
{
    int rc = store_tx(s);
    if (rc < 0) {
        return rc;
    }
    sqlite3_stmt *st = store_stmt(s, SQL_DEVICE_DELETE);
    if (!st) {
        return TDG_EDB;
    }
    sqlite3_bind_int64(st, 1, device_id);
    if ((rc = store_run(s, st, "device delete")) < 0) {
        return rc;
    }
    return changes(s);
}

int store_device_set_state(store_t *s, int64_t device_id, const char *state, const char *reason,
                           int64_t now_ms)
{
    if (strcmp(state, "active") != 0 && strcmp(state, "disabled") != 0 &&
        strcmp(state, "flagged") != 0) {
        return TDG_EINVAL_INPUT;
    }
    int rc = store_tx(s);
    if (rc < 0) {
        return rc;
    }
    sqlite3_stmt *st = store_stmt(s, SQL_DEVICE_STATE);
    if (!st) {
        return TDG_EDB;
    }
    sqlite3_bind_int64(st, 1, device_id);
    store_bind_text(st, 2, state);
    store_bind_text(st, 3, reason ? reason : "");
    sqlite3_bind_int64(st, 4, now_ms);
    return store_run(s, st, "device state");
}

int store_device_disable_if_stale(store_t *s, int64_t device_id, const char *reason,
                                  int64_t invalid_since_ms, int64_t now_ms)
{
    int rc = store_tx(s);
    if (rc < 0) {
        return rc;
    }
    sqlite3_stmt *st = store_stmt(s, SQL_DEVICE_DISABLE_STALE);
    if (!st) {
        return TDG_EDB;
    }
    sqlite3_bind_int64(st, 1, device_id);
    store_bind_text(st, 2, reason ? reason : "");
    sqlite3_bind_int64(st, 3, now_ms);
    sqlite3_bind_int64(st, 4, invalid_since_ms);
    if ((rc = store_run(s, st, "device disable if stale")) < 0) {
        return rc;
    }
    return changes(s);
}

int store_device_enable(store_t *s, int64_t device_id, int64_t now_ms)
{
    int rc = store_tx(s);
    if (rc < 0) {
        return rc;
    }
    sqlite3_stmt *st = store_stmt(s, SQL_DEVICE_GET);
    if (!st) {
        return TDG_EDB;
    }
    sqlite3_bind_int64(st, 1, device_id);
    if ((rc = step_one(s, st, "device get")) <= 0) {
        return rc;
    }
    char user[STORE_USER_ID_MAX + 1], platform[16], state[16];
    snprintf(user, sizeof(user), "%s", col_text(st, 1));
    snprintf(platform, sizeof(platform), "%s", col_text(st, 2));
    snprintf(state, sizeof(state), "%s", col_text(st, 6));
    done(st);
    if (strcmp(state, "active") == 0) {
        return 1;
    }
    if (!is_contact(platform)) {
        int n = active_count(s, user, device_id);
        if (n < 0) {
            return n;
        }
        if (n >= STORE_MAX_DEVICES) {
            return TDG_EDEVICE_LIMIT;
        }
    }
    if ((rc = store_device_set_state(s, device_id, "active", "", now_ms)) < 0) {
        return rc;
    }
    return 1;
}

int store_device_touch(store_t *s, int64_t device_id, int64_t now_ms)
{
    int rc = store_tx(s);
    if (rc < 0) {
        return rc;
    }
    sqlite3_stmt *st = store_stmt(s, SQL_DEVICE_TOUCH);
    if (!st) {
        return TDG_EDB;
    }
    sqlite3_bind_int64(st, 1, device_id);
    sqlite3_bind_int64(st, 2, now_ms);
    return store_run(s, st, "device touch");
}

/* --- groups ------------------------------------------------------------ */

static const char SQL_GROUP_ADD[] =
    "INSERT INTO user_groups(id, created_ms) VALUES (?1, ?2) ON CONFLICT(id) DO NOTHING";
static const char SQL_GROUP_EXISTS[] = "SELECT 1 FROM user_groups WHERE id = ?1";
static const char SQL_GROUP_MEMBERS_DELETE[] = "DELETE FROM group_members WHERE group_id = ?1";
static const char SQL_GROUP_DELETE[] = "DELETE FROM user_groups WHERE id = ?1";
static const char SQL_MEMBER_ADD[] =
    "INSERT INTO group_members(group_id, user_id, added_ms) VALUES (?1, ?2, ?3)"
    " ON CONFLICT(group_id, user_id) DO NOTHING";
static const char SQL_MEMBER_REMOVE[] =
    "DELETE FROM group_members WHERE group_id = ?1 AND user_id = ?2";
static const char SQL_MEMBERS[] =
    "SELECT user_id FROM group_members WHERE group_id = ?1 ORDER BY user_id";
static const char SQL_GROUPS[] = "SELECT id FROM user_groups ORDER BY id";
static const char SQL_USER_GROUPS[] =
    "SELECT group_id FROM group_members WHERE user_id = ?1 ORDER BY group_id";

/* Run st (bound) over one-text-column rows, collected first (cb may use the
 * store). Count or error. */
static int each_name(store_t *s, sqlite3_stmt *st, store_name_cb cb, void *arg, const char *what)
{
    char (*names)[PROTO_TO_MAX + 1] = NULL;
    size_t n = 0, cap = 0;
    int rc, err = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 32;
            void *nn = realloc(names, nc * sizeof(*names));
            if (!nn) {
                err = -ENOMEM;
                break;
            }
            names = nn;
            cap = nc;
        }
        snprintf(names[n++], sizeof(names[0]), "%s", col_text(st, 0));
    }
    done(st);
    if (err == 0 && rc != SQLITE_DONE) {
        err = store_fail(s, rc, what);
    }
    for (size_t i = 0; i < n && err == 0; i++) {
        cb(arg, names[i]);
    }
    free(names);
    return err < 0 ? err : (int)n;
}

int store_group_add(store_t *s, const char *group, int64_t now_ms)
{
    if (!dir_id_valid(group)) {
        return TDG_EINVAL_INPUT;
    }
    int rc = store_tx(s);
    if (rc < 0) {
        return rc;
    }
    sqlite3_stmt *st = store_stmt(s, SQL_GROUP_ADD);
    if (!st) {
        return TDG_EDB;
    }
    store_bind_text(st, 1, group);
    sqlite3_bind_int64(st, 2, now_ms);
    return store_run(s, st, "group add");
}

int store_group_exists(store_t *s, const char *group)
{
    sqlite3_stmt *st = store_stmt(s, SQL_GROUP_EXISTS);
    if (!st) {
        return TDG_EDB;
    }
    store_bind_text(st, 1, group);
    int rc = step_one(s, st, "group exists");
    if (rc == 1) {
        done(st);
    }
    return rc;
}

int store_group_remove(store_t *s, const char *group)
{
    int rc = store_tx(s);
    if (rc < 0) {
        return rc;
    }
    int exists = store_group_exists(s, group);
    if (exists <= 0) {
        return exists;
    }
    char subject[STORE_USER_ID_MAX + 8];
    snprintf(subject, sizeof(subject), "group:%s", group);
    if ((rc = run_text(s, SQL_GROUP_MEMBERS_DELETE, group, NULL, "group members delete")) < 0 ||
        (rc = run_text(s, SQL_SUBJECT_BINDINGS_DELETE, subject, NULL, "group bindings delete")) <
            0 ||
        (rc = run_text(s, SQL_GROUP_DELETE, group, NULL, "group delete")) < 0) {
        return rc;
    }
    return 1;
}

int store_group_member_add(store_t *s, const char *group, const char *user_id, int64_t now_ms)
{
    int rc = store_tx(s);
    if (rc < 0) {
        return rc;
    }
    int g = store_group_exists(s, group);
    int u = g > 0 ? store_user_exists(s, user_id) : 0;
    if (g < 0 || u < 0) {
        return g < 0 ? g : u;
    }
    if (!g || !u) {
        return TDG_ENOTFOUND;
    }
    return run_text_ms(s, SQL_MEMBER_ADD, group, user_id, now_ms, "member add");
}

int store_group_member_remove(store_t *s, const char *group, const char *user_id)
{
    int rc = store_tx(s);
    if (rc < 0) {
        return rc;
    }
    if ((rc = run_text(s, SQL_MEMBER_REMOVE, group, user_id, "member remove")) < 0) {
        return rc;
    }
    return changes(s);
}

int store_group_members(store_t *s, const char *group, store_name_cb cb, void *arg)
{
    sqlite3_stmt *st = store_stmt(s, SQL_MEMBERS);
    if (!st) {
        return TDG_EDB;
    }
    store_bind_text(st, 1, group);
    return each_name(s, st, cb, arg, "group members");
}

static const char SQL_MEMBERS_PAGE[] =
    "SELECT user_id FROM group_members WHERE group_id = ?1 AND user_id > ?2"
    " ORDER BY user_id LIMIT ?3";

int store_group_members_page(store_t *s, const char *group, const char *after, unsigned limit,
                             store_name_cb cb, void *arg)
{
    if (limit == 0 || limit > STORE_GROUP_PAGE_MAX) {
        return TDG_EINVAL_INPUT;
    }
    sqlite3_stmt *st = store_stmt(s, SQL_MEMBERS_PAGE);
    if (!st) {
        return TDG_EDB;
    }
    store_bind_text(st, 1, group);
    store_bind_text(st, 2, after ? after : "");
    sqlite3_bind_int(st, 3, (int)limit);
    return each_name(s, st, cb, arg, "group members page");
}

int store_group_list(store_t *s, store_name_cb cb, void *arg)
{
    sqlite3_stmt *st = store_stmt(s, SQL_GROUPS);
    if (!st) {
        return TDG_EDB;
    }
    return each_name(s, st, cb, arg, "group list");
}

int store_user_groups(store_t *s, const char *user_id, store_name_cb cb, void *arg)
{
    sqlite3_stmt *st = store_stmt(s, SQL_USER_GROUPS);
    if (!st) {
        return TDG_EDB;
    }
    store_bind_text(st, 1, user_id);
    return each_name(s, st, cb, arg, "user groups");
}

/* --- agent bindings ---------------------------------------------------- */

static const char SQL_BINDING_ADD[] =
    "INSERT INTO agent_bindings(agent, subject, category, created_ms) VALUES (?1, ?2, ?3, ?4)"
    " ON CONFLICT(agent, subject, category) DO NOTHING";
static const char SQL_BINDING_REMOVE[] =
    "DELETE FROM agent_bindings WHERE agent = ?1 AND subject = ?2 AND category = ?3";
static const char SQL_BINDINGS_ALL[] = "SELECT agent, subject, category, created_ms"
                                       " FROM agent_bindings ORDER BY agent, subject, category";
static const char SQL_BINDINGS_OF[] = "SELECT agent, subject, category, created_ms"
                                      " FROM agent_bindings WHERE agent = ?1"
                                      " ORDER BY subject, category";
/* ?1 agent, ?2 recipient, ?3 category ('' = none: only '*' matches), ?4 the
 * user id when the recipient is a user (NULL otherwise), ?5 1 = any
 * category. */
static const char SQL_ALLOWED[] =
    "SELECT 1 FROM agent_bindings"
    " WHERE agent IN (?1, '*') AND (?5 = 1 OR category IN (?3, '*'))"
    "   AND (subject IN (?2, '*')"
    "        OR (?4 IS NOT NULL AND subject IN"
    "            (SELECT 'group:' || group_id FROM group_members WHERE user_id = ?4)))"
    " LIMIT 1";
static const char SQL_AGENT_USERS[] =
    "SELECT substr(b.subject, 6) FROM agent_bindings b"
    "  JOIN users u ON u.id = substr(b.subject, 6)"
    "  WHERE b.agent IN (?1, '*') AND substr(b.subject, 1, 5) = 'user:'"
    " UNION"
    " SELECT m.user_id FROM agent_bindings b"
    "  JOIN group_members m ON b.subject = 'group:' || m.group_id"
    "  WHERE b.agent IN (?1, '*')"
    " UNION"
    " SELECT u.id FROM users u WHERE EXISTS"
    "  (SELECT 1 FROM agent_bindings b WHERE b.agent IN (?1, '*') AND b.subject = '*')"
    " ORDER BY 1";

int store_binding_add(store_t *s, const char *agent, const char *subject, const char *category,
                      int64_t now_ms)
{
    const char *field;
    int rc = store_binding_check(agent, subject, category, &field);
    if (rc < 0) {
        return rc;
    }
    if ((rc = store_tx(s)) < 0) {
        return rc;
    }
    sqlite3_stmt *st = store_stmt(s, SQL_BINDING_ADD);
    if (!st) {
        return TDG_EDB;
    }
    store_bind_text(st, 1, agent);
    store_bind_text(st, 2, subject);
    store_bind_text(st, 3, category);
    sqlite3_bind_int64(st, 4, now_ms);
    return store_run(s, st, "binding add");
}

int store_binding_remove(store_t *s, const char *agent, const char *subject,
                         const char *category)
{
    int rc = store_tx(s);
    if (rc < 0) {
        return rc;
    }
    sqlite3_stmt *st = store_stmt(s, SQL_BINDING_REMOVE);
    if (!st) {
        return TDG_EDB;
    }
    store_bind_text(st, 1, agent);
    store_bind_text(st, 2, subject);
    store_bind_text(st, 3, category);
    if ((rc = store_run(s, st, "binding remove")) < 0) {
        return rc;
    }
    return changes(s);
}

int store_binding_list(store_t *s, const char *agent, store_binding_cb cb, void *arg)
{
    sqlite3_stmt *st = store_stmt(s, agent ? SQL_BINDINGS_OF : SQL_BINDINGS_ALL);
    if (!st) {
        return TDG_EDB;
    }
    if (agent) {
        store_bind_text(st, 1, agent);
    }
    /* Few rows per agent; the callback must not use the store. */
    int n = 0, rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct store_binding b = {
            .agent = col_text(st, 0),
            .subject = col_text(st, 1),
            .category = col_text(st, 2),
            .created_ms = sqlite3_column_int64(st, 3),
        };
        cb(arg, &b);
        n++;
    }
    done(st);
    return rc == SQLITE_DONE ? n : store_fail(s, rc, "binding list");
}

static int allowed(store_t *s, const char *agent, const char *to, const char *category, bool any)
{
    sqlite3_stmt *st = store_stmt(s, SQL_ALLOWED);
    if (!st) {
        return TDG_EDB;
    }
    store_bind_text(st, 1, agent);
    store_bind_text(st, 2, to);
    store_bind_text(st, 3, category ? category : "");
    store_bind_text(st, 4, strncmp(to, "user:", 5) == 0 ? to + 5 : NULL);
    sqlite3_bind_int(st, 5, any ? 1 : 0);
    int rc = step_one(s, st, "agent allowed");
    if (rc == 1) {
        done(st);
    }
    return rc;
}

int store_agent_allowed(store_t *s, const char *agent, const char *to, const char *category)
{
    return allowed(s, agent, to, category, false);
}

int store_agent_reaches(store_t *s, const char *agent, const char *to)
{
    return allowed(s, agent, to, NULL, true);
}

int store_agent_users(store_t *s, const char *agent, store_name_cb cb, void *arg)
{
    sqlite3_stmt *st = store_stmt(s, SQL_AGENT_USERS);
    if (!st) {
        return TDG_EDB;
    }
    store_bind_text(st, 1, agent);
    return each_name(s, st, cb, arg, "agent users");
}

/* --- key rotation ------------------------------------------------------ */

static const char SQL_REENC_SCAN[] =
    "SELECT id, user_id, platform, token FROM devices WHERE id > ?1 ORDER BY id LIMIT ?2";
static const char SQL_REENC_SET[] = "UPDATE devices SET token = ?2, token_hash = ?3 WHERE id = ?1";

int store_dir_reencrypt(store_t *s, unsigned max, int64_t now_ms)
{
    (void)now_ms;
    int rc = need_pii(s);
    if (rc < 0 || (rc = store_tx(s)) < 0) {
        return rc;
    }
    if (max == 0) {
        return 0;
    }
    /* Walk the table by id from the cursor, a page at a time, and rewrite
     * the rows under an old key; stop after max rewrites or at the end
     * (then the cursor starts over). Each row is read whole before it is
     * updated, so the scan never runs under its own update. */
    struct row {
        int64_t id;
        char user[STORE_USER_ID_MAX + 1], platform[16];
        unsigned char blob[SEALED_MAX];
        int blen;
    };
    enum { PAGE = 64 };
    struct row *rows = malloc(PAGE * sizeof(*rows));
    if (!rows) {
        return -ENOMEM;
    }
    unsigned rewritten = 0;
    bool end = false;
    while (rc == 0 && rewritten < max && !end) {
        sqlite3_stmt *st = store_stmt(s, SQL_REENC_SCAN);
        if (!st) {
            rc = TDG_EDB;
            break;
        }
        sqlite3_bind_int64(st, 1, s->reencrypt_after);
        sqlite3_bind_int(st, 2, PAGE);
        int n = 0, step;
        while ((step = sqlite3_step(st)) == SQLITE_ROW) {
            struct row *r = &rows[n];
            r->id = sqlite3_column_int64(st, 0);
            snprintf(r->user, sizeof(r->user), "%s", col_text(st, 1));
            snprintf(r->platform, sizeof(r->platform), "%s", col_text(st, 2));
            r->blen = sqlite3_column_bytes(st, 3);
            if (r->blen < 0 || (size_t)r->blen > sizeof(r->blob)) {
                r->blen = -1;
            } else if (r->blen > 0) {
                memcpy(r->blob, sqlite3_column_blob(st, 3), (size_t)r->blen);
            }
            n++;
        }
        done(st);
        if (step != SQLITE_DONE) {
            rc = store_fail(s, step, "reencrypt scan");
            break;
        }
        end = n < PAGE;
        for (int i = 0; i < n && rc == 0 && rewritten < max; i++) {
            struct row *r = &rows[i];
            s->reencrypt_after = r->id;
            if (r->blen <= 0 || pii_is_current(s->pii, r->blob, (size_t)r->blen)) {
                continue;
            }
            char plain[STORE_TOKEN_MAX + 1];
            if (open_endpoint(s, r->id, r->platform, r->user, r->blob, r->blen, plain,
                              sizeof(plain)) < 0) {
                continue; /* logged: a key missing from the file */
            }
            unsigned char sealed[SEALED_MAX], h[PII_HASH_LEN];
            size_t slen;
            endpoint_hash(s, r->platform, plain, h);
            rc = seal_endpoint(s, r->platform, r->user, plain, sealed, sizeof(sealed), &slen);
            memset(plain, 0, sizeof(plain));
            if (rc < 0) {
                break;
            }
            sqlite3_stmt *u = store_stmt(s, SQL_REENC_SET);
            if (!u) {
                rc = TDG_EDB;
                break;
            }
            sqlite3_bind_int64(u, 1, r->id);
            sqlite3_bind_blob(u, 2, sealed, (int)slen, SQLITE_TRANSIENT);
            sqlite3_bind_blob(u, 3, h, PII_HASH_LEN, SQLITE_TRANSIENT);
            if ((rc = store_run(s, u, "reencrypt")) == 0) {
                rewritten++;
            }
        }
        if (end && rewritten < max) {
            s->reencrypt_after = 0; /* pass complete */
        }
    }
    memset(rows, 0, PAGE * sizeof(*rows));
    free(rows);
    return rc < 0 ? rc : (int)rewritten;
}

static const char SQL_SEALED_COUNT[] = "SELECT count(*) FROM devices";

int store_dir_sealed_count(store_t *s, int64_t *out)
{
    sqlite3_stmt *st = store_stmt(s, SQL_SEALED_COUNT);
    if (!st) {
        return TDG_EDB;
    }
    int rc = step_one(s, st, "sealed count");
    if (rc < 0) {
        return rc;
    }
    *out = rc == 1 ? sqlite3_column_int64(st, 0) : 0;
    done(st);
    return 0;
}
