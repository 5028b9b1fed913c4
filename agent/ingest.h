/*
 * ingest.h - turning bytes from any way in into a stored row (outbox, or
 * the local delivery queue for "to":"local").
 *
 * Two steps, so a way in can validate as it reads and store later:
 *   ingest_prepare  validates one notification (proto v1), assigns an id
 *                   when it has none and serializes it (unknown fields kept);
 *   ingest_queue    adds a prepared notification to the outbox's open
 *                   transaction.
 * The caller routes "to":"local" items (it->local) to the local delivery
 * queue instead (agent/localq.h), commits (once per loop iteration) and
 * only then tells a sender it was accepted.
 */
#ifndef TIDINGS_INGEST_H
#define TIDINGS_INGEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "outbox.h"
#include "proto.h"

/* Counters of one way in ("mqtt", "socket"). received = notifications
 * handed in; each ends in exactly one of accepted, duplicates, invalid,
 * full, errors (a failed commit moves accepted to errors). */
struct ingest_stats {
    uint64_t received, accepted, duplicates, invalid, full, errors;
};

struct ingest_result {
    int rc;                    /* 0, TDG_EDUPLICATE (accepted once), or an error */
    char id[PROTO_ID_MAX + 1]; /* the notification's id when known */
    struct proto_error perr;   /* when rc is TDG_EINVAL_INPUT / TDG_ETOOBIG */
};

/* A validated notification waiting to be queued. Owns json. */
struct ingest_item {
    char id[PROTO_ID_MAX + 1];
    bool local;         /* "to":"local": for this box only, never for the hub */
    unsigned channels;  /* PROTO_CH_* mask the notification allows */
    int priority;       /* enum proto_priority */
    int64_t created_ms; /* wall clock when prepared */
    int64_t expires_ms; /* 0 = no expiry */
    char *json;         /* compact serialization (malloc'd), at most PROTO_MAX_WIRE bytes */
    size_t len;
};

/* Validate buf (len bytes, no NUL needed), assign an id if absent, serialize.
 * 0 with *it filled (release with ingest_item_free); TDG_EINVAL_INPUT or
 * TDG_ETOOBIG with res->perr filled (logged with reason and field); or
 * another negative error. res->id holds the id when known. Counts received
 * and invalid/errors in st (may be NULL). */
int ingest_prepare(const char *source, const char *buf, size_t len, struct ingest_item *it,
                   struct ingest_result *res, struct ingest_stats *st);

/* ingest_prepare with flags: INGEST_KEEP_ACCEPTED keeps an "accepted_at"
 * the notification already carries (the hub's, on downlink notifications:
 * their ttl counts from the hub's acceptance) and stamps one only when it
 * has none. */
#define INGEST_KEEP_ACCEPTED 0x1u
int ingest_prepare_ex(const char *source, const char *buf, size_t len, unsigned flags,
                      struct ingest_item *it, struct ingest_result *res, struct ingest_stats *st);

/* Count the result rc of storing item id (0, TDG_EDUPLICATE, TDG_EFULL or an
 * error) in st (may be NULL) and log it as ingest_queue does: for ways of
 * storing other than the outbox (the local delivery queue). */
void ingest_count(const char *source, const char *id, int rc, struct ingest_stats *st);

/* Add a prepared item to the outbox's open transaction (the item is not
 * consumed). 0, TDG_EDUPLICATE (same id already stored: accepted once),
 * TDG_EFULL (over budget), or another negative error (logged). Counts the
 * outcome in st (may be NULL). Nothing is durable until outbox_commit. */
int ingest_queue(outbox_t *ob, const char *source, const struct ingest_item *it,
                 struct ingest_stats *st);

/* Free the item's json; safe on a zeroed or already freed item. */
void ingest_item_free(struct ingest_item *it);

#endif
