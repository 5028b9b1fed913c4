/* ingest.c - validate, id, queue (see ingest.h). */
#include "ingest.h"

#include "error.h"
#include "log.h"
#include "loop.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int ingest_submit(outbox_t *ob, const char *source, const char *buf, size_t len,
                  struct ingest_result *res, struct ingest_stats *st)
{
    memset(res, 0, sizeof(*res));
    st->received++;
    struct notification n;
    int rc = proto_parse(buf, len, &n, &res->perr);
    if (rc < 0) {
        st->invalid++;
        res->rc = rc;
        LOG_WARN("ingest", "%s: rejected notification (%zu bytes): %s field=%s %s", source, len,
                 proto_reason_code(res->perr.reason), res->perr.field[0] ? res->perr.field : "-",
                 res->perr.detail);
        return rc;
    }
    if (!n.id) {
        char id[PROTO_GENERATED_ID_LEN + 1];
        rc = proto_id_new(id);
        if (rc == 0) {
            rc = proto_set_id(&n, id);
        }
        if (rc == TDG_ETOOBIG) {
            /* The generated id pushed it over the wire limit: the sender's
             * notification is too large, say so as proto_parse would. */
            st->invalid++;
            res->perr.reason = PROTO_R_TOO_LARGE;
            snprintf(res->perr.field, sizeof(res->perr.field), "id");
            snprintf(res->perr.detail, sizeof(res->perr.detail),
                     "no room for a generated id within %d bytes", PROTO_MAX_WIRE);
            LOG_WARN("ingest", "%s: rejected notification (%zu bytes): too_large field=id %s",
                     source, len, res->perr.detail);
            notification_free(&n);
            return res->rc = rc;
        }
        if (rc < 0) {
            st->errors++;
            notification_free(&n);
            return res->rc = rc;
        }
    }
    int64_t now = clock_wall_ms();
    rc = proto_set_accepted(&n, now);
    if (rc == TDG_ETOOBIG) {
        st->invalid++;
        res->perr.reason = PROTO_R_TOO_LARGE;
        snprintf(res->perr.field, sizeof(res->perr.field), "accepted_at");
        snprintf(res->perr.detail, sizeof(res->perr.detail),
                 "no room for the acceptance time within %d bytes", PROTO_MAX_WIRE);
        LOG_WARN("ingest", "%s: rejected notification (%zu bytes): too_large field=accepted_at",
                 source, len);
        notification_free(&n);
        return res->rc = rc;
    }
    if (rc < 0) {
        st->errors++;
        notification_free(&n);
        return res->rc = rc;
    }
    snprintf(res->id, sizeof(res->id), "%s", n.id);
    size_t out_len = 0;
    char *json = proto_serialize(&n, &out_len);
    if (!json) {
        st->errors++;
        notification_free(&n);
        return res->rc = -ENOMEM;
    }
    int64_t expires = proto_expires_ms(&n, now);
    rc = outbox_add(ob, n.id, (int)n.priority, now, expires, json, out_len);
    free(json);
    notification_free(&n);
    switch (rc) {
    case 0:
        st->accepted++;
        LOG_DEBUG("ingest", "%s: queued id=%s", source, res->id);
        break;
    case TDG_EDUPLICATE:
        st->duplicates++;
        LOG_DEBUG("ingest", "%s: duplicate id=%s accepted once", source, res->id);
        break;
    case TDG_EFULL:
        st->full++;
        break;
    default:
        st->errors++;
        LOG_ERROR("ingest", "%s: cannot queue id=%s: %s", source, res->id, tdg_strerror(rc));
        break;
    }
    return res->rc = rc;
}
