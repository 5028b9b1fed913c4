/*
 * policy.h - the hub's preference rules (pure: no I/O, time passed in).
 *
 * One user's preferences are a validated JSON document (docs/hub-policy.md):
 * the per-user object of the agent snapshot (docs/policy.md) plus hub-only
 * fields: frequency caps per category and a channel order with fallback.
 *
 * policy_decide() checks, in this order; the first rule that applies decides.
 * Rule names are stable: they are stored with every decision and reported as
 * the reason of a terminal state.
 *   no preferences                                  -> ALLOW    "no_preference"
 *   opted out of everything                         -> SUPPRESS "opt_out"
 *   opted out of the notification's category        -> SUPPRESS "category_opt_out:<c>"
 *   the category has this channel switched off      -> SUPPRESS "channel_off:<channel>"
 *   inside quiet hours, priority critical           -> ALLOW    "critical_bypass" (marked)
 *   inside quiet hours, mode hold                   -> HOLD     "quiet_hours" (until the end)
 *   inside quiet hours, mode drop                   -> DROP     "quiet_hours_drop"
 *   over the category's frequency cap               -> SUPPRESS "cap:<c>"
 *   otherwise                                       -> ALLOW    "allow"
 * The first seven are the agent's rules, the same code: proto/prefs.h (the
 * common fields, the rules, the quiet-hours arithmetic with DST gaps and
 * overlaps: docs/policy.md).
 *
 * Not thread-safe only in that time zones come from the tz cache (loop thread).
 */
#ifndef TIDINGS_HUB_POLICY_H
#define TIDINGS_HUB_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "prefs.h" /* policy_error, policy_action, policy_decision: shared with the agent */
#include "proto.h"
#include "tz.h"

#define POLICY_PREFS_MAX 16384     /* bytes of one user's preference document */
#define POLICY_CATEGORIES_MAX PREFS_CATEGORIES_MAX /* categories (and caps) per user: 64 */
#define POLICY_FALLBACK_MAX 3      /* steps of a channel order: push, sms, email */
#define POLICY_USER_ID_MAX 122     /* as the <id> of "user:<id>" */
#define POLICY_AFTER_MAX_MS (7 * 86400000LL)  /* latest fallback step */
#define POLICY_WINDOW_MAX_MS (30 * 86400000LL) /* longest cap window */
#define POLICY_CAP_MAX 1000000

typedef struct policy_prefs policy_prefs_t;

/* Why a document is refused: struct policy_error (prefs.h), the field by
 * its JSON path ("categories.marketing.channels_off[1]") and what is wrong. */

/* Parse and validate one user's preference document (buf need not be
 * NUL-terminated). Unknown fields are refused (a typo must not pass as "no
 * preference"), duplicate keys too. Returns 0 and *out (free with
 * policy_prefs_free), TDG_ETOOBIG, TDG_EINVAL_INPUT with *err filled, or
 * -ENOMEM. */
int policy_prefs_parse(const char *buf, size_t len, policy_prefs_t **out,
                       struct policy_error *err);
void policy_prefs_free(policy_prefs_t *p);

/* The decision (enum policy_action, struct policy_decision,
 * policy_action_name) is prefs.h's: the agent's decisions look the same. */

/* The frequency cap of category in p: true with *max and *window_ms, or
 * false when there is none (p NULL, category NULL, no cap set). */
bool policy_cap(const policy_prefs_t *p, const char *category, int64_t *max, int64_t *window_ms);

/* Decide whether n may go to its recipient now on `channel` (one PROTO_CH_*
 * bit). p: the user's preferences, NULL when none are set (allow). tz: the
 * user's zone (NULL: UTC, and d->tz_fallback when quiet hours apply).
 * cap_count: notifications of n's category let through to this user within
 * the cap's window (policy_cap), not counting n. Returns 0 with *d filled,
 * or TDG_EINVAL_INPUT for a NULL n or d. */
int policy_decide(const policy_prefs_t *p, const tz_t *tz, const struct notification *n,
                  enum proto_channel channel, int64_t now_ms, int64_t cap_count,
                  struct policy_decision *d);

/* The channel order with fallback. Step 0 is tried first; step i (i > 0)
 * is tried when no channel of the earlier steps has had a provider success
 * within after_ms of the first attempt. Returns the number of steps (0:
 * no order set, every channel at once) and fills steps[0..n). */
struct policy_step {
    enum proto_channel channel; /* PROTO_CH_PUSH / _SMS / _EMAIL */
    int64_t after_ms;           /* 0 for step 0; never decreasing */
};
size_t policy_fallback(const policy_prefs_t *p, struct policy_step steps[POLICY_FALLBACK_MAX]);

/* The user's object of the agent snapshot (docs/policy.md): tz, opt_out,
 * categories (opt_out, channels_off) and quiet_hours, hub-only fields left
 * out. p may be NULL (then only tz). Appends compact JSON to out (bounded
 * by cap: -ENOSPC when it does not fit, out unchanged). 0 or error. */
int policy_snapshot_user(const policy_prefs_t *p, const char *tz_name, char *out, size_t cap,
                         size_t *len);

/* Resolve "deliver_at" to UTC ms for one recipient: the absolute time, or
 * the wall time of "tz":"user" in tz (NULL: UTC; a wall time in a DST gap
 * moves to the end of the gap, one in an overlap takes the earlier instant).
 * 0 when n has no deliver_at. The agent reads it the same: prefs_deliver_at. */
int64_t policy_deliver_at(const struct notification *n, const tz_t *tz);

/* Parse a duration "30s", "10m", "2h", "1d" (a number and one unit) into
 * ms. 0 or TDG_EINVAL_INPUT. */
int policy_parse_duration(const char *s, int64_t *ms);

/* Planning one recipient of a notification: the one pure function the
 * fanout's planner and `tidingsctl send --dry-run` share (docs/hub-policy.md
 * "Planning a notification"). */
enum policy_plan_next {
    POLICY_PLAN_DONE = 0,    /* nothing more for this user after the items */
    POLICY_PLAN_DELIVER_AT,  /* wait until at_ms ("deliver_at" timer); no items */
    POLICY_PLAN_HOLD,        /* quiet hours: look again at at_ms ("hold" timer, step) */
    POLICY_PLAN_FALLBACK,    /* run fallback step `step` at at_ms ("fallback" timer) */
};
#define POLICY_PLAN_ITEMS (POLICY_FALLBACK_MAX * 3)
struct policy_plan_item {
    unsigned step;              /* fallback step (0 without a channel order) */
    enum proto_channel channel; /* the class decided on */
    struct policy_decision d;   /* ALLOW: send to every endpoint of the class */
};
struct policy_plan {
    size_t n;                   /* items[0..n), in decision order */
    struct policy_plan_item items[POLICY_PLAN_ITEMS];
    unsigned allowed;           /* ALLOW items */
    enum policy_plan_next next; /* what follows */
    int64_t at_ms;              /* DELIVER_AT, HOLD, FALLBACK: when */
    unsigned step;              /* HOLD: the step held; FALLBACK: the step to run */
    int64_t started_ms;         /* when step 0 ran (the fallback "after" counts from it) */
    size_t nsteps;              /* the channel order's steps (0: none, every class at once) */
    struct policy_step steps[POLICY_FALLBACK_MAX];
    unsigned first_step, visited; /* steps first_step.. +visited-1 were decided (with an
                                   * order, each one > 0 is a "fallback:<ch>" record) */
    bool drop, suppress;        /* a DROP / SUPPRESS item exists (first rule: the items) */
};
/* Plan one recipient at now_ms. p, tz: their preferences and zone (NULL:
 * none / UTC). classes: the PROTO_CH_* classes the user has a usable
 * endpoint for (enabled channel, allowed by the notification's channels).
 * step: the fallback step to start at (0 at first; a resumed timer's: a
 * step beyond the order, after a preference change, plans nothing);
 * resumed: true when a timer resumes the plan (deliver_at is not looked at
 * again); started_ms: when step 0 ran, for a resumed "fallback" (<= 0: now).
 * cap_count as policy_decide. Mirrors the rules of docs/hub-policy.md:
 * deliver_at in the future waits; per step, each available class of it is
 * decided; a held step with nothing allowed waits for the hold; a step with
 * something allowed schedules the next step; a step with nothing to send
 * moves to the next at once. Pure: no I/O. 0 or TDG_EINVAL_INPUT. */
int policy_plan(const policy_prefs_t *p, const tz_t *tz, const struct notification *n,
                unsigned classes, unsigned step, bool resumed, int64_t started_ms, int64_t now_ms,
                int64_t cap_count, struct policy_plan *out);

#endif
