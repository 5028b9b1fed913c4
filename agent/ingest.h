/*
 * ingest.h - turning bytes from any local way in into an outbox row.
 *
 * ingest_submit validates one notification (proto v1), assigns an id when it
 * has none, and adds it to the outbox's open transaction. The caller commits
 * (once per loop iteration) and only then tells a sender it was accepted.
 */
#ifndef TIDINGS_INGEST_H
#define TIDINGS_INGEST_H

#include <stddef.h>
#include <stdint.h>

#include "outbox.h"
#include "proto.h"

struct ingest_stats {
    uint64_t received, accepted, duplicates, invalid, full, errors;
};

struct ingest_result {
    int rc;                         /* 0, TDG_EDUPLICATE (accepted once), or an error */
    char id[PROTO_ID_MAX + 1];      /* the notification's id when known */
    struct proto_error perr;        /* when rc is TDG_EINVAL_INPUT / TDG_ETOOBIG */
};

/* Validate and queue one notification from `source` ("mqtt", "socket").
 * Returns res->rc. Rejections are logged with their reason and field. */
int ingest_submit(outbox_t *ob, const char *source, const char *buf, size_t len,
                  struct ingest_result *res, struct ingest_stats *st);

#endif
