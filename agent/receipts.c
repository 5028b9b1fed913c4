/* receipts.c - the hub's receipts kept at the edge (see receipts.h). */
#include "receipts.h"

#include "db.h"
#include "error.h"
#include "log.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { ST_PUT, ST_PRUNE_ROWS, ST_PRUNE_AGE, ST_FIND, ST_N };

static const char *const sql[ST_N] = {
    /* REPLACE gives the row a new seq (the newest); an older outcome of the
     * same id (smaller `at`) never replaces a newer one. */
    [ST_PUT] = "INSERT OR REPLACE INTO receipts(id, state, reason, at_ms, received_ms, channels) "
               "SELECT ?1, ?2, ?3, ?4, ?5, ?6 "
               "WHERE NOT EXISTS (SELECT 1 FROM receipts WHERE id = ?1 AND at_ms > ?4)",
    /* seq grows by one per write: everything more than max_rows below the
     * newest goes (gaps left by replaced rows make it keep a few fewer). One
     * descent to the largest rowid, then a range delete. */
    [ST_PRUNE_ROWS] = "DELETE FROM receipts WHERE seq <= (SELECT max(seq) FROM receipts) - ?1",
    [ST_PRUNE_AGE] = "DELETE FROM receipts WHERE received_ms < ?1",
    [ST_FIND] = "SELECT state, reason, at_ms, received_ms, channels FROM receipts WHERE id = ?",
};

struct receipts {
    outbox_t *ob;
    sqlite3 *db;
    sqlite3_stmt *st[ST_N];
    struct receipts_opts o;
    struct receipts_stats stats;
    bool err_logged;
};

int receipts_create(outbox_t *ob, const struct receipts_opts *o, receipts_t **out, char *err,
                    size_t errlen)
{
    receipts_t *r = calloc(1, sizeof(*r));
    if (!r) {
        snprintf(err, errlen, "receipts: out of memory");
        return -ENOMEM;
    }
    r->ob = ob;
    r->db = outbox_db(ob);
    r->o = *o;
    for (int i = 0; i < ST_N; i++) {
        int rc = db_prepare(r->db, sql[i], &r->st[i]);
        if (rc < 0) {
            snprintf(err, errlen, "receipts: %s", sqlite3_errmsg(r->db));
            receipts_destroy(r);
            return rc;
        }
    }
    *out = r;
    return 0;
}

void receipts_destroy(receipts_t *r)
{
    if (!r) {
        return;
    }
    for (int i = 0; i < ST_N; i++) {
        sqlite3_finalize(r->st[i]);
    }
    free(r);
}

static int fail(receipts_t *r, const char *what, int src)
{
    int rc = db_err(src) ? db_err(src) : TDG_EDB;
    if (!r->err_logged) {
        LOG_ERROR("receipts", "%s: %s", what, sqlite3_errmsg(r->db));
        r->err_logged = true;
    }
    return rc;
}

static int run(receipts_t *r, sqlite3_stmt *s, const char *what)
{
    int step = sqlite3_step(s);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    if (step != SQLITE_DONE) {
        return fail(r, what, step);
    }
    r->err_logged = false;
    return 0;
}

/* The channels as stored: a JSON array, built with cJSON (never pasted). */
static char *channels_json(const struct proto_receipt *x)
{
    cJSON *arr = cJSON_CreateArray();
    bool ok = arr != NULL;
    for (unsigned i = 0; ok && i < x->nch && i < PROTO_RECEIPT_MAX_CHANNELS; i++) {
        const struct proto_receipt_channel *c = &x->ch[i];
        cJSON *o = cJSON_CreateObject();
        ok = o && cJSON_AddItemToArray(arr, o) &&
             cJSON_AddStringToObject(o, "channel", c->channel) &&
             cJSON_AddStringToObject(o, "result", c->result) &&
             cJSON_AddNumberToObject(o, "status", c->status) &&
             cJSON_AddNumberToObject(o, "attempts", c->attempts) &&
             cJSON_AddStringToObject(o, "reason", c->reason);
    }
    char *s = ok ? cJSON_PrintUnformatted(arr) : NULL;
    cJSON_Delete(arr);
    return s;
}

int receipts_put(receipts_t *r, const struct proto_receipt *x, int64_t now_ms)
{
    r->stats.received++;
    char *chs = channels_json(x);
    if (!chs) {
        return -ENOMEM;
    }
    int rc = outbox_begin(r->ob);
    if (rc < 0) {
        free(chs);
        return rc;
    }
    sqlite3_stmt *s = r->st[ST_PUT];
    sqlite3_bind_text(s, 1, x->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, x->state, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 3, x->reason, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 4, x->at_ms);
    sqlite3_bind_int64(s, 5, now_ms);
    sqlite3_bind_text(s, 6, chs, -1, SQLITE_STATIC);
    rc = run(r, s, "store");
    if (rc == 0 && sqlite3_changes(r->db) > 0) {
        r->stats.stored++;
    }
    free(chs);
    return rc;
}

int receipts_prune(receipts_t *r, int64_t now_ms)
{
    int rc = outbox_begin(r->ob);
    if (rc < 0) {
        return rc;
    }
    sqlite3_stmt *s = r->st[ST_PRUNE_ROWS];
    sqlite3_bind_int64(s, 1, r->o.max_rows > INT64_MAX ? INT64_MAX : (int64_t)r->o.max_rows);
    if ((rc = run(r, s, "prune")) < 0) {
        return rc;
    }
    r->stats.pruned += (uint64_t)sqlite3_changes(r->db);
    s = r->st[ST_PRUNE_AGE];
    int64_t keep = r->o.retention_ms > (uint64_t)now_ms ? 0 : now_ms - (int64_t)r->o.retention_ms;
    sqlite3_bind_int64(s, 1, keep);
    if ((rc = run(r, s, "prune")) < 0) {
        return rc;
    }
    r->stats.pruned += (uint64_t)sqlite3_changes(r->db);
    return 0;
}

static bool add_time(cJSON *o, const char *key, const char *key_ms, int64_t ms)
{
    char buf[32];
    proto_format_rfc3339(ms, buf, sizeof(buf));
    return cJSON_AddStringToObject(o, key, buf) && cJSON_AddNumberToObject(o, key_ms, (double)ms);
}

int receipts_find(receipts_t *r, const char *id, cJSON **out)
{
    *out = NULL;
    sqlite3_stmt *s = r->st[ST_FIND];
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    int step = sqlite3_step(s);
    int rc = 0;
    if (step == SQLITE_ROW) {
        const char *state = (const char *)sqlite3_column_text(s, 0);
        const char *reason = (const char *)sqlite3_column_text(s, 1);
        const char *chs = (const char *)sqlite3_column_text(s, 4);
        cJSON *o = cJSON_CreateObject();
        cJSON *arr = chs ? cJSON_Parse(chs) : NULL;
        if (!cJSON_IsArray(arr)) {
            cJSON_Delete(arr);
            arr = cJSON_CreateArray();
        }
        bool ok = o && arr && cJSON_AddStringToObject(o, "state", state ? state : "") &&
                  cJSON_AddStringToObject(o, "reason", reason ? reason : "") &&
                  add_time(o, "at", "at_ms", sqlite3_column_int64(s, 2)) &&
                  add_time(o, "received", "received_ms", sqlite3_column_int64(s, 3));
        if (ok) {
            cJSON_AddItemToObject(o, "channels", arr);
            *out = o;
        } else {
            cJSON_Delete(arr);
            cJSON_Delete(o);
            rc = -ENOMEM;
        }
    } else if (step == SQLITE_DONE) {
        rc = TDG_ENOTFOUND;
    } else {
        rc = fail(r, "find", step);
    }
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return rc;
}

void receipts_count_invalid(receipts_t *r, uint64_t n)
{
    r->stats.invalid += n;
}

void receipts_get_stats(const receipts_t *r, struct receipts_stats *st)
{
    *st = r->stats;
}
