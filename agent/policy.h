/*
 * policy.h - the agent's offline copy of the hub's preferences.
 *
 * The hub publishes, retained, on tidings/v1/agents/{agent}/policy a
 * snapshot of the preferences of the users bound to this agent (format in
 * docs/policy.md). The agent keeps the last accepted one in SQLite
 * (policy_store_*) and applies it to what it delivers on this box
 * (policy_decide), so local and desktop delivery follow the user's wishes
 * while the hub is unreachable.
 *
 * Rules, in the order they are checked (the first that applies decides):
 *   no snapshot, no user, user not in the snapshot -> ALLOW  "no_preference"
 *   user opted out of everything                   -> SUPPRESS "opt_out"
 *   user opted out of the notification's category  -> SUPPRESS "category_opt_out:<category>"
 *   the category has this channel switched off     -> SUPPRESS "channel_off:<channel>"
 *   inside the user's quiet hours, mode hold       -> HOLD until the window ends, "quiet_hours"
 *   inside the user's quiet hours, mode drop       -> DROP "quiet_hours_drop"
 *   inside quiet hours but priority critical       -> ALLOW "critical_bypass" (marked)
 *   otherwise                                      -> ALLOW "allow"
 * Categories match exactly (byte for byte): "push" never matches
 * "push_marketing". Quiet hours are wall-clock times in the user's IANA zone,
 * DST-correct (see docs/policy.md for gaps and overlaps). The per-user
 * fields, the rules after the user lookup and the quiet-hours arithmetic
 * are the hub's too: proto/prefs.h.
 *
 * Not thread-safe (uses the tz cache); meant for the agent's loop thread.
 */
#ifndef TIDINGS_POLICY_H
#define TIDINGS_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "db.h"
#include "prefs.h" /* policy_error, policy_action, policy_decision: shared with the hub */
#include "proto.h"

#define POLICY_SNAPSHOT_MAX (1024 * 1024) /* bytes of one snapshot message */
#define POLICY_USERS_MAX 1024             /* users in one snapshot */
#define POLICY_CATEGORIES_MAX PREFS_CATEGORIES_MAX /* categories per user (64) */
#define POLICY_USER_ID_MAX 122            /* as the <id> of "user:<id>" (proto) */

typedef struct policy_snapshot policy_snapshot_t;

/* Why a snapshot is refused: struct policy_error (prefs.h), the field by
 * its JSON path ("users.alice.quiet_hours.start") and what is wrong. */

/* Parse and validate a snapshot (buf need not be NUL-terminated). Every
 * known field is checked; unknown fields are ignored (a newer hub may add
 * some). A time zone that is valid but missing from this box's database is
 * accepted: that user's quiet hours then run in UTC, the decision says so
 * (tz_fallback) and a warning is logged once per parse.
 * Returns 0 and *out (free with policy_snapshot_free), or TDG_ETOOBIG
 * (over POLICY_SNAPSHOT_MAX), TDG_EINVAL_INPUT with *err filled, or -ENOMEM. */
int policy_snapshot_parse(const char *buf, size_t len, policy_snapshot_t **out,
                          struct policy_error *err);
void policy_snapshot_free(policy_snapshot_t *s);

/* The snapshot's "version" (set by the hub, grows with every change). */
int64_t policy_snapshot_version(const policy_snapshot_t *s);
/* Number of users in the snapshot. */
size_t policy_snapshot_user_count(const policy_snapshot_t *s);

/* The decision (enum policy_action, struct policy_decision,
 * policy_action_name) is prefs.h's: the hub's decisions look the same. */

/* Decide whether notification n may be delivered now on `channel` (one
 * PROTO_CH_* bit: PROTO_CH_DESKTOP for the desktop backend, PROTO_CH_LOCAL
 * for hooks and the log) to user user_id, at now_ms (UTC ms).
 * s may be NULL (no snapshot yet) and user_id NULL or "" (no user known):
 * both allow. For "to":"local" pass the configured local user; for
 * "user:<id>" pass n->to_id. Pure apart from the tz cache; never fails:
 * returns 0 with *d filled, or TDG_EINVAL_INPUT for a NULL n or d. */
int policy_decide(const policy_snapshot_t *s, const struct notification *n, const char *user_id,
                  enum proto_channel channel, int64_t now_ms, struct policy_decision *d);

/* The time zone of user_id in s, for wall times given "in the user's zone"
 * ("deliver_at" with "tz":"user"): NULL when there is no snapshot, no such
 * user, or the zone is not on this box (then UTC applies). Borrowed from s. */
struct tz;
const struct tz *policy_user_tz(const policy_snapshot_t *s, const char *user_id);

/* --- persistence --------------------------------------------------------- */

typedef struct policy_store policy_store_t;

/* Open (create) the store at path, e.g. "<state_dir>/policy.db": its own
 * SQLite file (0600, WAL, `sync`) with its own schema version, so it never
 * interferes with the outbox's migrations. 0, or a negative error with err
 * set (see db_open: a corrupt file is reported, never reset). */
int policy_store_open(const char *path, enum db_sync sync, policy_store_t **out, char *err,
                      size_t errlen);
/* Close; safe with NULL. */
void policy_store_close(policy_store_t *st);

/* The last accepted snapshot, parsed again: 0 and *out (NULL when none was
 * ever stored), or a negative error (TDG_EDB..., or TDG_EINVAL_INPUT if the
 * stored text no longer parses, e.g. after a downgrade; logged). */
int policy_store_load(policy_store_t *st, policy_snapshot_t **out);

/* Handle a snapshot message from the hub: parse, and if valid make it the
 * stored snapshot (durable when this returns). An identical re-delivery
 * (the retained message after every reconnect) is not written again; a
 * version lower than the stored one is accepted but logged. *changed (may
 * be NULL) tells whether the stored snapshot changed.
 * Returns 0 and *out (the new snapshot; the caller swaps it in and frees
 * the old one), or the policy_snapshot_parse errors (nothing stored, the
 * previous snapshot stays), or a database error. */
int policy_store_accept(policy_store_t *st, const char *buf, size_t len, int64_t now_ms,
                        policy_snapshot_t **out, bool *changed, struct policy_error *err);

#endif
