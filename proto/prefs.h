/*
 * prefs.h - the preference fields and rules the agent and the hub share.
 *
 * The hub keeps each user's preferences (hub/policy.h); the agent applies a
 * snapshot of them offline (agent/policy.h). Both must answer the same for
 * the same preferences (DESIGN.md, "Policy"), so what they have in common
 * lives here, once:
 *   - parsing the common fields: a category's opt_out and channels_off, and
 *     the quiet_hours window ("HH:MM" start and end, mode hold/drop), with
 *     errors that name the field by its JSON path;
 *   - the rules both check, in order (opt-out, category opt-out, channel
 *     off, quiet hours with the critical bypass; docs/policy.md "The rules");
 *   - the quiet-hours arithmetic in the user's IANA zone, DST-correct
 *     (docs/policy.md "Quiet hours and time"), and deliver_at in the user's
 *     zone.
 * What only one side has stays there: the hub's caps, channel order and
 * fallback; the agent's snapshot, its users and its SQLite store.
 *
 * The decision and error types keep the policy_ names both sides' APIs
 * already use. Pure apart from the time zones passed in (platform/tz.h):
 * no I/O, no globals.
 */
#ifndef TIDINGS_PREFS_H
#define TIDINGS_PREFS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto.h"
#include "tz.h"

#define PREFS_CATEGORIES_MAX 64 /* categories per user, the hub's and the snapshot's */
#define POLICY_RULE_MAX 64      /* "category_opt_out:" + 32-byte category */

/* Why a preference document or snapshot was refused: the field by its JSON
 * path ("categories.marketing.channels_off[1]") and what is wrong with it. */
struct policy_error {
    char field[192];
    char detail[128];
};

enum policy_action {
    POLICY_ALLOW = 0, /* deliver now */
    POLICY_SUPPRESS,  /* never on this channel: terminal "suppressed" (rule) */
    POLICY_HOLD,      /* ask again at hold_until_ms (preferences may change meanwhile) */
    POLICY_DROP,      /* quiet hours in drop mode: terminal "dropped" (rule) */
};

/* Stable lower-case name: "allow", "suppress", "hold", "drop". */
const char *policy_action_name(enum policy_action a);

struct policy_decision {
    enum policy_action action;
    char rule[POLICY_RULE_MAX]; /* always set; names are stable (stored, reported) */
    int64_t hold_until_ms;      /* POLICY_HOLD: UTC ms the quiet window ends; else 0 */
    bool critical_bypass;       /* critical priority went through quiet hours */
    bool tz_fallback;           /* quiet hours with no zone: UTC was used */
};

/* One category's entry: opt_out and channels_off. */
struct prefs_category {
    char name[PROTO_CATEGORY_MAX + 1];
    bool opt_out;
    unsigned channels_off; /* PROTO_CH_* bits */
};

/* A daily quiet window in wall-clock time of the user's zone. */
struct prefs_quiet {
    bool set;       /* false: no quiet hours */
    int start, end; /* minutes after local midnight; end < start wraps past midnight */
    bool drop;      /* mode "drop"; else "hold" */
};

/* --- parsing ------------------------------------------------------------ */

/* Fill err (may be NULL) with field and a printf-style detail. Returns
 * TDG_EINVAL_INPUT, so that a parser can `return prefs_fail(...)`. */
int prefs_fail(struct policy_error *err, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* out = a + b + c (any may be NULL), cut to fit policy_error.field (out has
 * at least that size). */
void prefs_path(char *out, const char *a, const char *b, const char *c);

/* The first key that obj (an object) has twice, or NULL. Quadratic: meant
 * for the small objects of a preference document. */
const char *prefs_dup_key(const struct cJSON *obj);

/* Check obj's member names. known NULL (lenient, the agent's snapshot: a
 * newer hub may add fields): unknown members are ignored, a duplicate is
 * refused as path, "key '<k>' given twice". known a NULL-terminated list
 * (strict, the hub's documents: a misspelt key must not quietly mean "no
 * preference"): a duplicate is refused as path.<k>, "given twice", an
 * unknown member as path.<k>, "unknown field". path "" is the top level.
 * 0 or TDG_EINVAL_INPUT with *err filled. */
int prefs_check_keys(const struct cJSON *obj, const char *path, const char *const *known,
                     struct policy_error *err);

/* The boolean member key of parent into *out; absent keeps *out. Anything
 * else than true/false is refused as path.key. 0 or TDG_EINVAL_INPUT. */
int prefs_get_bool(const struct cJSON *parent, const char *key, const char *path, bool *out,
                   struct policy_error *err);

/* A category name as in proto: 1..PROTO_CATEGORY_MAX of [a-z0-9_.-]. */
bool prefs_category_valid(const char *s);

/* The PROTO_CH_* bit of a channel name ("push", "sms", "email", "desktop",
 * "local"), 0 when unknown. */
unsigned prefs_channel_bit(const char *s);

/* "HH:MM", exactly five characters, 00:00..23:59, into minutes after
 * midnight. 0 or TDG_EINVAL_INPUT (*minutes untouched). */
int prefs_parse_hhmm(const char *s, int *minutes);

/* Parse the member c of a "categories" object (its key is the category)
 * into *out: opt_out, channels_off. path: the category's field path
 * ("users.alice.categories.m", "categories.m"). strict: refuse unknown
 * members (see prefs_check_keys). 0 or TDG_EINVAL_INPUT with *err filled. */
int prefs_parse_category(const struct cJSON *c, const char *path, bool strict,
                         struct prefs_category *out, struct policy_error *err);

/* Parse a "quiet_hours" object q into *out (out->set on success). path: its
 * field path ("users.alice.quiet_hours", "quiet_hours"). strict as above.
 * 0 or TDG_EINVAL_INPUT with *err filled. */
int prefs_parse_quiet(const struct cJSON *q, const char *path, bool strict, struct prefs_quiet *out,
                      struct policy_error *err);

/* Parse buf (len bytes, need not be NUL-terminated) as exactly one JSON
 * value followed by nothing but whitespace. 0 and *root (free with
 * cJSON_Delete), or TDG_EINVAL_INPUT with field "" and "not valid JSON
 * (near byte N)" or "trailing data after the JSON object" (cJSON does not
 * tell a failed allocation from bad JSON). The caller checks its own size
 * limit first. */
int prefs_json_parse(const char *buf, size_t len, struct cJSON **root, struct policy_error *err);

/* Add the snapshot form of c to the object cats: "<name>":{"opt_out":true,
 * "channels_off":[...]} with only what is set; nothing when neither is.
 * Add q as "quiet_hours":{"start","end","mode"} to obj; nothing when not
 * set. Both: 0 or -ENOMEM. The parsers above read what these write. */
int prefs_category_to_json(const struct prefs_category *c, struct cJSON *cats);
int prefs_quiet_to_json(const struct prefs_quiet *q, struct cJSON *obj);

/* --- deciding ----------------------------------------------------------- */

/* d->action = a, d->rule = rule, or "rule:arg" when arg is not NULL. */
void prefs_set_rule(struct policy_decision *d, enum policy_action a, const char *rule,
                    const char *arg);

/* Is now_ms inside the quiet window q, in zone tz (NULL: UTC)? If so,
 * *end_ms is the UTC instant the window ends. Windows are instants: the
 * wall times of the windows starting on the local days before, of and
 * after today are resolved with tz_local_to_utc (a gap moves to its end, an
 * overlap takes the earlier instant), start included, end excluded. */
bool prefs_in_quiet(const struct prefs_quiet *q, const tz_t *tz, int64_t now_ms, int64_t *end_ms);

/* The rules agent and hub share, for a user who has preferences, in order
 * (the first that applies decides):
 *   opt_out                               -> SUPPRESS "opt_out"
 *   cat->opt_out                          -> SUPPRESS "category_opt_out:<c>"
 *   channel in cat->channels_off          -> SUPPRESS "channel_off:<channel>"
 *   inside quiet hours, priority critical -> ALLOW "critical_bypass" (marked)
 *   inside quiet hours, mode hold         -> HOLD "quiet_hours", until its end
 *   inside quiet hours, mode drop         -> DROP "quiet_hours_drop"
 *   otherwise                             -> ALLOW "allow"
 * cat: the entry of n's category (exact match), NULL when none. quiet: the
 * window (NULL or not set: none), evaluated in tz (NULL: UTC, and
 * d->tz_fallback is set when a window exists). *d is overwritten. */
void prefs_decide(bool opt_out, const struct prefs_category *cat, const struct prefs_quiet *quiet,
                  const tz_t *tz, const struct notification *n, enum proto_channel channel,
                  int64_t now_ms, struct policy_decision *d);

/* n's "deliver_at" as UTC ms: the absolute time, or the wall time of
 * "tz":"user" in tz (NULL: UTC; a gap moves to its end, an overlap takes
 * the earlier instant). 0 when n has none (or an unreadable wall time). */
int64_t prefs_deliver_at(const struct notification *n, const tz_t *tz);

#endif
