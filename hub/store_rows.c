/* store_rows.c - rows of one INSERT buffered in the iteration and written
 * up to STORE_ROWS_MAX per statement (see store_int.h "Buffered rows").
 *
 * Why: the decision and the attempt every notification writes cost one
 * statement each (bind, step, reset: ~10k instructions, callgrind,
 * hub-cost); a 16-row INSERT ... VALUES (...), (...) pays the statement's
 * fixed part once, about half the time per row (measured with the same
 * table and indexes). The rows belong to the iteration's transaction either
 * way: they are written before the COMMIT (store_commit), before any
 * statement that reads their table or sets a savepoint (store_stmt), and
 * dropped with the transaction if it fails, as the rows of a failed
 * statement would be. */
#include "store_int.h"

#include "error.h"
#include "log.h"

#include <stdlib.h>
#include <string.h>

/* Statements for 1, 2, 4, 8, 16 rows: any count is written as at most
 * five statements, largest first, each prepared on first use. */
_Static_assert(STORE_ROWS_MAX == 1 << (STORE_ROWS_SIZES - 1), "STORE_ROWS_SIZES");

static sqlite3_stmt *rows_stmt(store_t *s, struct store_rows *r, unsigned k)
{
    if (r->st[k]) {
        return r->st[k];
    }
    unsigned rows = 1u << k;
    size_t hl = strlen(r->def->head), tl = strlen(r->def->tuple);
    size_t len = hl + rows * (tl + 1) + 1;
    char *sql = malloc(len);
    if (!sql) {
        return NULL;
    }
    memcpy(sql, r->def->head, hl);
    size_t at = hl;
    for (unsigned i = 0; i < rows; i++) {
        if (i > 0) {
            sql[at++] = ',';
        }
        memcpy(sql + at, r->def->tuple, tl);
        at += tl;
    }
    sql[at] = '\0';
    if (db_prepare(s->db, sql, &r->st[k]) < 0) {
        r->st[k] = NULL;
    }
    free(sql);
    return r->st[k];
}

static void bind_row(struct store_rows *r, sqlite3_stmt *st, int first, unsigned row)
{
    const struct store_rows_def *def = r->def;
    for (unsigned c = 0; c < def->ncols; c++) {
        const struct store_rows_val *v = &r->v[row][c];
        int i = first + (int)c;
        if (def->text_mask & (1u << c)) {
            sqlite3_bind_text(st, i, r->arena + v->off, (int)v->len, SQLITE_STATIC);
        } else {
            sqlite3_bind_int64(st, i, v->i);
        }
    }
}

int store_rows_flush(store_t *s, struct store_rows *r)
{
    unsigned done = 0;
    int rc = 0;
    while (done < r->n && rc == 0) {
        unsigned k = STORE_ROWS_SIZES - 1;
        while ((1u << k) > r->n - done) {
            k--;
        }
        sqlite3_stmt *st = rows_stmt(s, r, k);
        if (!st) {
            rc = TDG_EDB;
            break;
        }
        for (unsigned i = 0; i < (1u << k); i++) {
            bind_row(r, st, (int)(i * r->def->ncols) + 1, done + i);
        }
        rc = store_run(s, st, r->def->what);
        /* OR IGNORE (store_int.h): a row left out would be lost silently;
         * none can be (every NOT NULL column is bound, ids are new), and
         * if one ever is, the transaction fails instead. */
        if (rc == 0 && sqlite3_changes(s->db) != (int)(1u << k)) {
            LOG_ERROR("store", "%s: %d of %u rows written", r->def->what, sqlite3_changes(s->db),
                      1u << k);
            rc = TDG_EDB;
        }
        done += 1u << k;
    }
    store_rows_drop(r);
    return rc;
}

void store_rows_drop(struct store_rows *r)
{
    r->n = 0;
    r->used = 0;
}

int store_rows_add(store_t *s, struct store_rows *r, const struct store_rows_in *in)
{
    const struct store_rows_def *def = r->def;
    size_t need = 0, len[STORE_ROWS_COLS] = {0};
    for (unsigned c = 0; c < def->ncols; c++) {
        if (def->text_mask & (1u << c)) {
            len[c] = strlen(in[c].s ? in[c].s : "");
            need += len[c];
        }
    }
    if (need > sizeof(r->arena)) {
        return TDG_ETOOBIG; /* callers' texts are bounded far below this */
    }
    int rc;
    if ((r->n == STORE_ROWS_MAX || r->used + need > sizeof(r->arena)) &&
        (rc = store_rows_flush(s, r)) < 0) {
        return rc;
    }
    for (unsigned c = 0; c < def->ncols; c++) {
        struct store_rows_val *v = &r->v[r->n][c];
        if (def->text_mask & (1u << c)) {
            v->off = (uint32_t)r->used;
            v->len = (uint32_t)len[c];
            if (len[c] > 0) {
                memcpy(r->arena + r->used, in[c].s, len[c]);
            }
            r->used += len[c];
        } else {
            v->i = in[c].i;
        }
    }
    r->n++;
    return 0;
}

void store_rows_close(struct store_rows *r)
{
    for (unsigned k = 0; k < STORE_ROWS_SIZES; k++) {
        sqlite3_finalize(r->st[k]);
        r->st[k] = NULL;
    }
    store_rows_drop(r);
}

int store_pending_flush(store_t *s)
{
    if (s->pend_err < 0) {
        return s->pend_err;
    }
    int rc = 0;
    if (s->dec_rows.n > 0) {
        rc = store_rows_flush(s, &s->dec_rows);
    }
    if (rc == 0 && s->att_rows.n > 0) {
        rc = store_rows_flush(s, &s->att_rows);
    }
    if (rc < 0) {
        /* The transaction has lost rows: only its rollback is right. */
        s->pend_err = rc;
        store_rows_drop(&s->dec_rows);
        store_rows_drop(&s->att_rows);
    }
    return rc;
}
