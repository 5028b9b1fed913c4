/*
 * store_channels.c - provider-side state the channels report after a send
 * (see store.h, "Channels", and store_int.h).
 *
 * provider_status: what the provider says became of a message it accepted,
 * by (channel, provider id) -- for SMS the message SID, which the attempt
 * row carries as its provider_id, so "SELECT ... FROM attempts JOIN
 * provider_status USING (provider_id)" gives the final status per attempt.
 * Updates are idempotent and never go backwards: a status only replaces one
 * of lower rank (queued < sending < sent < final), so a callback and a poll
 * answering the same thing, or callbacks arriving out of order, leave the
 * row as the furthest status seen.
 *
 * SMS opt-out / opt-in lives on the number's endpoint in the directory
 * (state "disabled", reason "opted_out:<keyword>"; numbers are kept sealed
 * there, so no table here holds one).
 */
#include "store_int.h"

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

/* Schema v6: see store.c's migration list. */
const char store_sql_channels[] =
    "CREATE TABLE provider_status ("
    "  channel TEXT NOT NULL,"
    "  provider_id TEXT NOT NULL,"
    "  status TEXT NOT NULL,"
    "  rank INTEGER NOT NULL,"
    "  error_code INTEGER NOT NULL DEFAULT 0,"
    "  updates INTEGER NOT NULL DEFAULT 1,"
    "  updated_ms INTEGER NOT NULL,"
    "  PRIMARY KEY (channel, provider_id)"
    ") WITHOUT ROWID;"
    /* what a channel still follows after a send (SMS status polling), so a
     * restarted hub goes on: account names the sender, until_ms (Unix ms)
     * when to give up */
    "CREATE TABLE provider_watch ("
    "  channel TEXT NOT NULL,"
    "  provider_id TEXT NOT NULL,"
    "  account TEXT NOT NULL,"
    "  until_ms INTEGER NOT NULL,"
    "  PRIMARY KEY (channel, provider_id)"
    ") WITHOUT ROWID;";

static const char SQL_WATCH_PUT[] =
    "INSERT INTO provider_watch(channel, provider_id, account, until_ms) VALUES (?1, ?2, ?3, ?4)"
    " ON CONFLICT(channel, provider_id) DO UPDATE SET account = excluded.account,"
    " until_ms = excluded.until_ms";

static const char SQL_WATCH_DEL[] =
    "DELETE FROM provider_watch WHERE channel = ?1 AND provider_id = ?2";

/* Past their deadline, or already final (a callback said so while nobody
 * polled): nothing left to follow. */
static const char SQL_WATCH_PRUNE[] =
    "DELETE FROM provider_watch WHERE channel = ?1 AND (until_ms <= ?2 OR provider_id IN"
    " (SELECT provider_id FROM provider_status WHERE channel = ?1 AND rank >= 4))";

static const char SQL_WATCH_LIST[] =
    "SELECT w.provider_id, w.account, w.until_ms, COALESCE(p.status, '') FROM provider_watch w"
    " LEFT JOIN provider_status p ON p.channel = w.channel AND p.provider_id = w.provider_id"
    " WHERE w.channel = ?1 ORDER BY w.until_ms, w.provider_id";

static const char SQL_STATUS_PUT[] =
    "INSERT INTO provider_status(channel, provider_id, status, rank, error_code, updated_ms)"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
    " ON CONFLICT(channel, provider_id) DO UPDATE SET status = excluded.status,"
    " rank = excluded.rank, error_code = excluded.error_code, updated_ms = excluded.updated_ms,"
    " updates = updates + 1 WHERE excluded.rank > provider_status.rank";

static const char SQL_STATUS_GET[] =
    "SELECT status, error_code, updates FROM provider_status WHERE channel = ?1 AND"
    " provider_id = ?2";

int store_status_rank(const char *status)
{
    static const struct {
        const char *name;
        int rank;
    } ranks[] = {
        {"scheduled", 1},   {"accepted", 1},  {"queued", 1},    {"sending", 2},
        {"sent", 3},        {"receiving", 3}, {"received", 3},  {"undelivered", 4},
        {"failed", 4},      {"canceled", 4},  {"delivered", 4}, {"read", 5},
    };
    for (size_t i = 0; i < sizeof(ranks) / sizeof(ranks[0]); i++) {
        if (strcmp(status, ranks[i].name) == 0) {
            return ranks[i].rank;
        }
    }
    return 0;
}

int store_provider_status(store_t *s, const char *channel, const char *provider_id,
                          const char *status, int error_code, int64_t now_ms)
{
    if (!channel || !*channel || !provider_id || !*provider_id || !status || !*status) {
        return TDG_EINVAL_INPUT;
    }
    int rank = store_status_rank(status);
    if (rank == 0) {
        return TDG_EINVAL_INPUT;
    }
    int rc = store_tx(s);
    if (rc < 0) {
        return rc;
    }
    sqlite3_stmt *st = store_stmt(s, SQL_STATUS_PUT);
    if (!st) {
        return TDG_EDB;
    }
    store_bind_text(st, 1, channel);
    store_bind_text(st, 2, provider_id);
    store_bind_text(st, 3, status);
    sqlite3_bind_int(st, 4, rank);
    sqlite3_bind_int(st, 5, error_code);
    sqlite3_bind_int64(st, 6, now_ms);
    rc = store_run(s, st, "provider status");
    if (rc < 0) {
        return rc;
    }
    return sqlite3_changes(s->db) > 0 ? 1 : 0;
}

int store_provider_status_get(store_t *s, const char *channel, const char *provider_id,
                              char *status, size_t cap, int *error_code, int64_t *updates)
{
    sqlite3_stmt *st = store_stmt(s, SQL_STATUS_GET);
    if (!st) {
        return TDG_EDB;
    }
    store_bind_text(st, 1, channel);
    store_bind_text(st, 2, provider_id);
    int rc = sqlite3_step(st);
    int ret = 0;
    if (rc == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(st, 0);
        snprintf(status, cap, "%s", t ? (const char *)t : "");
        if (error_code) {
            *error_code = sqlite3_column_int(st, 1);
        }
        if (updates) {
            *updates = sqlite3_column_int64(st, 2);
        }
        ret = 1;
    } else if (rc != SQLITE_DONE) {
        ret = store_fail(s, rc, "provider status get");
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return ret;
}

/* --- SMS opt-out / opt-in ------------------------------------------------ */

struct opt_ctx {
    store_t *s;
    bool opted_out;
    const char *keyword;
    int64_t now_ms;
    int changed;
    int rc;
};

static void opt_device(void *arg, const struct store_device_info *d)
{
    struct opt_ctx *c = arg;
    if (c->rc < 0) {
        return;
    }
    int rc = 0;
    if (c->opted_out && strcmp(d->state, "active") == 0) {
        char reason[64];
        snprintf(reason, sizeof(reason), "opted_out:%s", c->keyword);
        rc = store_device_set_state(c->s, d->id, "disabled", reason, c->now_ms);
        c->changed += rc == 0;
    } else if (!c->opted_out && strcmp(d->state, "active") != 0 &&
               strncmp(d->state_reason, "opted_out", 9) == 0) {
        /* only what an opt-out did is undone: a number disabled for another
         * reason stays so */
        rc = store_device_enable(c->s, d->id, c->now_ms);
        c->changed += rc > 0;
    }
    if (rc < 0) {
        c->rc = rc;
    }
}

int store_sms_opt(store_t *s, const char *number, bool opted_out, const char *keyword,
                  int64_t now_ms)
{
    if (!number || number[0] != '+' || !keyword || !*keyword) {
        return TDG_EINVAL_INPUT;
    }
    int rc = store_tx(s);
    if (rc < 0) {
        return rc;
    }
    struct opt_ctx c = {s, opted_out, keyword, now_ms, 0, 0};
    rc = store_device_lookup(s, "sms", number, opt_device, &c);
    if (rc < 0) {
        return rc;
    }
    if (c.rc < 0) {
        return c.rc;
    }
    return c.changed;
}

/* --- what channels follow after a send ------------------------------------ */

int store_provider_watch(store_t *s, const char *channel, const char *provider_id,
                         const char *account, int64_t until_ms)
{
    if (!channel || !*channel || !provider_id || !*provider_id ||
        (until_ms > 0 && (!account || !*account))) {
        return TDG_EINVAL_INPUT;
    }
    int rc = store_tx(s);
    if (rc < 0) {
        return rc;
    }
    sqlite3_stmt *st = store_stmt(s, until_ms > 0 ? SQL_WATCH_PUT : SQL_WATCH_DEL);
    if (!st) {
        return TDG_EDB;
    }
    store_bind_text(st, 1, channel);
    store_bind_text(st, 2, provider_id);
    if (until_ms > 0) {
        store_bind_text(st, 3, account);
        sqlite3_bind_int64(st, 4, until_ms);
    }
    return store_run(s, st, "provider watch");
}

struct watch_row {
    char id[128], account[128], last[24];
    int64_t until_ms;
};

int store_provider_watch_each(store_t *s, const char *channel, int64_t now_ms,
                              store_watch_fn fn, void *arg)
{
    int rc = store_tx(s);
    if (rc < 0) {
        return rc;
    }
    sqlite3_stmt *st = store_stmt(s, SQL_WATCH_PRUNE);
    if (!st) {
        return TDG_EDB;
    }
    store_bind_text(st, 1, channel);
    sqlite3_bind_int64(st, 2, now_ms);
    if ((rc = store_run(s, st, "provider watch prune")) < 0) {
        return rc;
    }
    st = store_stmt(s, SQL_WATCH_LIST);
    if (!st) {
        return TDG_EDB;
    }
    /* Rows are copied out first so that fn may write to the store (forget a
     * stale row) without disturbing this read. */
    store_bind_text(st, 1, channel);
    struct watch_row *rows = NULL;
    size_t n = 0, cap = 0;
    int ret = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 64;
            struct watch_row *r = ncap <= SIZE_MAX / sizeof(*r) ? realloc(rows, ncap * sizeof(*r))
                                                                 : NULL;
            if (!r) {
                ret = -ENOMEM;
                break;
            }
            rows = r;
            cap = ncap;
        }
        const unsigned char *id = sqlite3_column_text(st, 0);
        const unsigned char *acct = sqlite3_column_text(st, 1);
        const unsigned char *last = sqlite3_column_text(st, 3);
        snprintf(rows[n].id, sizeof(rows[n].id), "%s", id ? (const char *)id : "");
        snprintf(rows[n].account, sizeof(rows[n].account), "%s", acct ? (const char *)acct : "");
        snprintf(rows[n].last, sizeof(rows[n].last), "%s", last ? (const char *)last : "");
        rows[n].until_ms = sqlite3_column_int64(st, 2);
        n++;
    }
    if (ret == 0 && rc != SQLITE_DONE) {
        ret = store_fail(s, rc, "provider watch list");
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    for (size_t i = 0; ret == 0 && i < n; i++) {
        fn(arg, rows[i].id, rows[i].account, rows[i].until_ms, rows[i].last);
    }
    free(rows);
    return ret < 0 ? ret : (int)(n > INT_MAX ? INT_MAX : n);
}
