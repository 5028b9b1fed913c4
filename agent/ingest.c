/* ingest.c - validate, id, queue (see ingest.h). */
#include "ingest.h"

#include "error.h"
#include "log.h"
#include "loop.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int ingest_prepare(const char *source, const char *buf, size_t len, struct ingest_item *it,
                   struct ingest_result *res, struct ingest_stats *st)
{
    return ingest_prepare_ex(source, buf, len, 0, it, res, st);
}

int ingest_prepare_ex(const char *source, const char *buf, size_t len, unsigned flags,
                      struct ingest_item *it, struct ingest_result *res, struct ingest_stats *st)
{
    memset(res, 0, sizeof(*res));
    memset(it, 0, sizeof(*it));
    if (st) {
        st->received++;
    }
    struct notification n;
    int rc = proto_parse(buf, len, &n, &res->perr);
    if (rc < 0) {
        if (st) {
            if (rc == TDG_EINVAL_INPUT || rc == TDG_ETOOBIG) {
                st->invalid++;
            } else {
                st->errors++;
            }
        }
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
            if (st) {
                st->invalid++;
            }
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
            if (st) {
                st->errors++;
            }
            notification_free(&n);
            return res->rc = rc;
        }
    }
    /* Accepted at preparation: the way in commits within the same loop
     * iteration, so this is the acceptance time to the millisecond. */
    int64_t now = clock_wall_ms();
    if ((flags & INGEST_KEEP_ACCEPTED) && n.accepted_at_ms > 0) {
        now = n.accepted_at_ms; /* the hub's acceptance: the ttl counts from it */
        rc = 0;
    } else {
        rc = proto_set_accepted(&n, now);
    }
    if (rc == TDG_ETOOBIG) {
        if (st) {
            st->invalid++;
        }
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
        if (st) {
            st->errors++;
        }
        notification_free(&n);
        return res->rc = rc;
    }
    snprintf(res->id, sizeof(res->id), "%s", n.id);
    snprintf(it->id, sizeof(it->id), "%s", n.id);
    it->json = proto_serialize(&n, &it->len);
    if (!it->json) {
        if (st) {
            st->errors++;
        }
        notification_free(&n);
        return res->rc = -ENOMEM;
    }
    it->priority = (int)n.priority;
    it->local = n.to_kind == PROTO_TO_LOCAL;
    it->channels = n.channels;
    it->created_ms = now;
    it->expires_ms = proto_expires_ms(&n, now);
    notification_free(&n);
    return 0;
}

void ingest_count(const char *source, const char *id, int rc, struct ingest_stats *st)
{
    switch (rc) {
    case 0:
        if (st) {
            st->accepted++;
        }
        LOG_DEBUG("ingest", "%s: queued id=%s", source, id);
        break;
    case TDG_EDUPLICATE:
        if (st) {
            st->duplicates++;
        }
        LOG_DEBUG("ingest", "%s: duplicate id=%s accepted once", source, id);
        break;
    case TDG_EFULL:
        if (st) {
            st->full++;
        }
        break;
    default:
        if (st) {
            st->errors++;
        }
        LOG_ERROR("ingest", "%s: cannot queue id=%s: %s", source, id, tdg_strerror(rc));
        break;
    }
}

int ingest_queue(outbox_t *ob, const char *source, const struct ingest_item *it,
                 struct ingest_stats *st)
{
    int rc =
        outbox_add(ob, it->id, it->priority, it->created_ms, it->expires_ms, it->json, it->len);
    ingest_count(source, it->id, rc, st);
    return rc;
}

void ingest_item_free(struct ingest_item *it)
{
    free(it->json);
    it->json = NULL;
    it->len = 0;
}
