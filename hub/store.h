/*
 * store.h - the hub's durable state: notifications, attempts, users, devices.
 *
 * SQLite is the embedded backend; every query lives here so a PostgreSQL
 * backend can implement the same functions.
 *
 * Writes go into one transaction opened on demand and committed once per
 * loop iteration by store_commit(): the hub acks an agent and starts a
 * provider request only after the commit that recorded it. That gives group
 * commit at high rates and the ordering the delivery guarantees need.
 *
 * Notification states: queued -> sending -> delivered | failed | suppressed |
 * expired | dropped; queued/sending <-> scheduled (waiting on a timer of the
 * scheduler: deliver_at, quiet hours, fallback). Attempt states: sending -> ok | retry | drop |
 * interrupted (the hub stopped while it was in flight).
 */
#ifndef TIDINGS_STORE_H
#define TIDINGS_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "db.h"
#include "proto.h"

typedef struct store store_t;

int store_open(const char *path, enum db_sync sync, store_t **out, char *err, size_t errlen);
void store_close(store_t *s);

/* Commit the open transaction, if any. 0 or negative error (rolled back). */
int store_commit(store_t *s);

/* Record an accepted notification as queued (or expired, when its ttl,
 * counted from accepted_at, has already passed). *inserted is false when the
 * id was already known (dedupe: the agent resent it). */
int store_add_notification(store_t *s, const struct notification *n, const char *agent,
                           const char *json, size_t len, int64_t now_ms, bool *inserted);
/* The same, but a row that is neither a duplicate nor expired is recorded
 * as already taken ('sending', as store_take_queued leaves it): the caller
 * hands it to the fanout at once (*taken true), with no queue round trip. */
int store_add_notification_taken(store_t *s, const struct notification *n, const char *agent,
                                 const char *json, size_t len, int64_t now_ms, bool *inserted,
                                 bool *taken);

/* One notification for store_add_notifications: in, then out. */
struct store_new {
    const struct notification *n; /* n->id, ->to, ->category: read during the call only */
    const char *json;             /* the text stored, len bytes (no NUL needed) */
    size_t len;
    bool take;     /* as store_add_notification_taken (else as store_add_notification) */
    int rc;        /* out: 0, or the error of the statement that held this row (not stored) */
    bool inserted; /* out: false when the id was known: stored before, or earlier in rows */
    bool taken;    /* out: with take, inserted and not expired */
};

/* Rows per statement of store_add_notifications. */
#define STORE_ADD_MAX 16

/* Record n notifications of one agent, as store_add_notification(_taken)
 * would one after another, but with multi-row INSERTs of up to
 * STORE_ADD_MAX rows (half the cost per row of one statement each). An id
 * that appears twice in rows is stored once: the first is inserted, the
 * later ones are duplicates. A statement that fails stores none of its
 * rows (each gets rc < 0) and the others still run. Returns 0, or the
 * first error (also in the rows it concerns). */
int store_add_notifications(store_t *s, const char *agent, int64_t now_ms, struct store_new *rows,
                            size_t n);

typedef void (*store_notification_cb)(void *arg, const char *id, const char *json, size_t len,
                                      int64_t expires_ms);
/* Move up to max (at most 1024 per call) queued notifications (priority first, then oldest) to
 * 'sending' and hand each to cb. Returns how many, or a negative error. */
int store_take_queued(store_t *s, unsigned max, store_notification_cb cb, void *arg);

/* Set a notification's state with a reason ("" for none). */
int store_set_state(store_t *s, const char *id, const char *state, const char *reason,
                    int64_t now_ms);

/* Record an attempt before it is sent. */
int store_attempt_begin(store_t *s, const char *id, const char *channel, int64_t device_id,
                        int64_t now_ms, int64_t *attempt_id);
/* Record its outcome: state "ok" / "retry" / "drop". */
int store_attempt_end(store_t *s, int64_t attempt_id, const char *state, int status,
                      const char *reason, const char *provider_id, int64_t now_ms);

/* ---- Directory (store_dir.c; docs/directory.md) --------------------------
 *
 * Users, devices, groups and agent bindings. Phone, email and device tokens
 * are stored only as AES-256-GCM ciphertext (hub/pii.h) plus a keyed hash
 * for lookups; every function below that reads or writes them needs the
 * keyring attached with store_set_pii() first (TDG_ECRYPTO otherwise).
 * Plaintext handed to a callback is valid only during that call.
 *
 * Return convention: 0 (or a count) on success, a negative error; "1/0"
 * functions return 1 found/done, 0 not found. Bad input is TDG_EINVAL_INPUT
 * (store_user_check/store_device_check name the field). Writes go into the
 * iteration transaction (committed by store_commit). */
struct pii;
/* Attach the keyring the directory encrypts with (not owned; outlives s). */
void store_set_pii(store_t *s, struct pii *k);

#define STORE_USER_ID_MAX 122 /* user and group ids, as in "to": A-Z a-z 0-9 . _ @ + - */
#define STORE_MAX_DEVICES 5  /* active ios/android/desktop devices per user */
#define STORE_TOKEN_MAX 255  /* device token bytes */

struct store_user {
    char id[STORE_USER_ID_MAX + 1];
    char tz[64];     /* IANA name, "UTC" by default */
    char locale[36]; /* BCP 47, "" for none */
    char phone[32];  /* E.164 (+ and 8-15 digits), "" for none */
    char email[256]; /* "" for none */
    int64_t created_ms, updated_ms;
};
/* Which fields store_user_put sets (the others keep their value; on create
 * they take the defaults above). A set phone/email of "" removes it. */
enum {
    STORE_USER_TZ = 1u << 0,
    STORE_USER_LOCALE = 1u << 1,
    STORE_USER_PHONE = 1u << 2,
    STORE_USER_EMAIL = 1u << 3,
    STORE_USER_ALL = 0xfu,
};
/* Validate u's id and the fields in mask without touching the store.
 * 0, or TDG_EINVAL_INPUT with *field set ("id", "tz", "locale", "phone",
 * "email"). */
int store_user_check(const struct store_user *u, unsigned fields, const char **field);
/* Create the user, or update the fields in mask. A changed phone or email
 * becomes a new, active endpoint (a number opted out by SMS 21610 is active
 * again only when the phone changes or store_device_enable() is called). */
int store_user_put(store_t *s, const struct store_user *u, unsigned fields, int64_t now_ms);
/* 1 and *out filled (phone/email decrypted), 0 no such user, or error. */
int store_user_get(store_t *s, const char *user_id, struct store_user *out);
/* Erase the user and everything held about them: devices and contact
 * points (ciphertexts and hashes), group memberships, bindings naming
 * user:<id>. 1 removed, 0 no such user, or error. */
int store_user_remove(store_t *s, const char *user_id);
typedef void (*store_user_cb)(void *arg, const struct store_user *u);
/* Every user, by id. Returns the count, or a negative error. */
int store_user_list(store_t *s, store_user_cb cb, void *arg);
/* Is there such a user? 1, 0 or a negative error. */
int store_user_exists(store_t *s, const char *user_id);
/* Compatibility for the bootstrap config: create the user, or set its tz. */
int store_user_upsert(store_t *s, const char *user_id, const char *tz, int64_t now_ms);

/* What fanout needs of an endpoint: active ios/android/desktop devices,
 * plus the user's phone as platform "sms" and email as platform "email"
 * (contact points: they never count toward STORE_MAX_DEVICES). */
struct store_device {
    int64_t id;
    const char *user_id, *platform, *token, *app, *environment;
};
typedef void (*store_device_cb)(void *arg, const struct store_device *d);
/* Active endpoints of a user, oldest first. Returns the count, or error.
 * Answered from an in-memory cache of committed rows when it can
 * (docs/directory.md, "The endpoints cache"). */
int store_user_devices(store_t *s, const char *user_id, store_device_cb cb, void *arg);
/* Lookups answered from that cache and lookups that read the database
 * since the store was opened (tests, diagnostics). */
void store_dir_cache_stats(store_t *s, uint64_t *hits, uint64_t *misses);

/* Everything about one endpoint, for the admin API. */
struct store_device_info {
    int64_t id;
    char user_id[STORE_USER_ID_MAX + 1];
    char platform[16];    /* ios, android, desktop; sms, email for contact points */
    char token[256];      /* decrypted */
    char app[256];        /* APNs topic / bundle id, FCM project, "" */
    char environment[16]; /* production, sandbox */
    char state[16];       /* active, disabled, flagged */
    char state_reason[256];
    int64_t state_ms, registered_ms, last_active_ms; /* 0 when never */
};
typedef void (*store_device_info_cb)(void *arg, const struct store_device_info *d);
/* Validate a device before store_device_add: platform one of ios, android,
 * desktop; token 1..STORE_TOKEN_MAX printable bytes; environment production
 * or sandbox ("" = production). 0 or TDG_EINVAL_INPUT with *field set. */
int store_device_check(const char *platform, const char *token, const char *app,
                       const char *environment, const char **field);
/* Register a device for a user (who must exist: TDG_ENOTFOUND). The same
 * platform + token registered again (for this or another user: the app was
 * reinstalled or logged in as someone else) moves to this user and is active
 * again with registered_ms = now. TDG_EDEVICE_LIMIT when the user already has
 * STORE_MAX_DEVICES active devices. *id (optional) gets the device id. */
int store_device_add(store_t *s, const char *user_id, const char *platform, const char *token,
                     const char *app, const char *environment, int64_t now_ms, int64_t *id);
/* 1 removed (ciphertext and hash erased), 0 no such device, or error. */
int store_device_remove(store_t *s, int64_t device_id);
/* Make a disabled/flagged device (or opted-out contact point) active again.
 * 1 done, 0 no such device, TDG_EDEVICE_LIMIT, or error. */
int store_device_enable(store_t *s, int64_t device_id, int64_t now_ms);
/* Set state "active" / "disabled" / "flagged" with a reason (fanout, on a
 * provider's answer; an SMS 21610 marks the phone "disabled"). */
int store_device_set_state(store_t *s, int64_t device_id, const char *state, const char *reason,
                           int64_t now_ms);
/* APNs 410 Unregistered: disable the device (state "disabled", reason)
 * only if it was registered at or before invalid_since_ms (the 410's
 * timestamp); a device registered again after it stays active (DESIGN,
 * Channels). 1 disabled, 0 kept (registered later, or no such device), or
 * error. */
int store_device_disable_if_stale(store_t *s, int64_t device_id, const char *reason,
                                  int64_t invalid_since_ms, int64_t now_ms);
/* Record that the device was active (a receipt, an app check-in). */
int store_device_touch(store_t *s, int64_t device_id, int64_t now_ms);
/* 1 and *out filled, 0 no such device, or error. */
int store_device_get(store_t *s, int64_t device_id, struct store_device_info *out);
/* All endpoints of a user in every state (contact points too), by id.
 * Returns the count, or error. */
int store_device_list(store_t *s, const char *user_id, store_device_info_cb cb, void *arg);
/* Endpoints whose platform and token (or phone/email for "sms"/"email")
 * equal value, found through the keyed hash: "who has this number".
 * Returns the count, or error. */
int store_device_lookup(store_t *s, const char *platform, const char *value,
                        store_device_info_cb cb, void *arg);
/* Compatibility for the bootstrap config: ios/android/desktop go through
 * store_device_add; "sms"/"email" set the user's phone/email. */
int store_device_upsert(store_t *s, const char *user_id, const char *platform, const char *token,
                        const char *app, const char *environment, int64_t now_ms);

typedef void (*store_name_cb)(void *arg, const char *name);
/* Groups, for "to": "group:<id>" (ids as user ids). add is idempotent;
 * remove drops the group, its memberships and bindings naming group:<id>
 * (1 removed, 0 none). Members must exist (TDG_ENOTFOUND for a missing
 * group or user). Listing functions return the count, or error. */
int store_group_add(store_t *s, const char *group, int64_t now_ms);
int store_group_remove(store_t *s, const char *group);
int store_group_exists(store_t *s, const char *group);
int store_group_member_add(store_t *s, const char *group, const char *user_id, int64_t now_ms);
int store_group_member_remove(store_t *s, const char *group, const char *user_id);
int store_group_members(store_t *s, const char *group, store_name_cb cb, void *arg);
/* One page of a group's members, in user id order: the ones after `after`
 * ("" or NULL: from the first), at most limit (1..STORE_GROUP_PAGE_MAX).
 * Returns the count (< limit: that was the last page), or error. Keyset
 * paging on the primary key (group_id, user_id): one index range scan per
 * page, memory bounded by limit, and a member added or removed between
 * pages never shifts another out of its page. For fanning out to groups of
 * any size: pass the last id of one page as `after` of the next. */
#define STORE_GROUP_PAGE_MAX 10000
int store_group_members_page(store_t *s, const char *group, const char *after, unsigned limit,
                             store_name_cb cb, void *arg);
int store_group_list(store_t *s, store_name_cb cb, void *arg);
/* Groups a user belongs to (for an export). */
int store_user_groups(store_t *s, const char *user_id, store_name_cb cb, void *arg);

/* Agent bindings: agent A may send to recipient R in category C when a
 * binding (agent, subject, category) has
 *   agent    = A or "*" (any agent),
 *   subject  = R exactly ("user:<id>" or "group:<id>"), "*" (any recipient),
 *              or "group:<g>" where R is user:<u> and u is a member of g,
 *   category = C or "*" (a notification without category needs "*").
 * No binding: not allowed. */
struct store_binding {
    const char *agent, *subject, *category;
    int64_t created_ms;
};
typedef void (*store_binding_cb)(void *arg, const struct store_binding *b);
/* Validate a binding: agent "*" or an MQTT-level-safe id, subject "*",
 * "user:<id>" or "group:<id>", category "*" or a proto category. */
int store_binding_check(const char *agent, const char *subject, const char *category,
                        const char **field);
/* Idempotent. */
int store_binding_add(store_t *s, const char *agent, const char *subject, const char *category,
                      int64_t now_ms);
/* 1 removed, 0 no such binding, or error. */
int store_binding_remove(store_t *s, const char *agent, const char *subject,
                         const char *category);
/* Bindings of agent (exact, "*" bindings included only when agent is
 * "*"), or all when agent is NULL. Returns the count, or error. */
int store_binding_list(store_t *s, const char *agent, store_binding_cb cb, void *arg);
/* May agent send to recipient to ("user:<id>" / "group:<id>") in category
 * (NULL or "" = none)? 1 yes, 0 no, or error. */
int store_agent_allowed(store_t *s, const char *agent, const char *to, const char *category);
/* As store_agent_allowed, for any category: tells a refusal for the
 * recipient ("to") from one for the category. 1, 0 or error. */
int store_agent_reaches(store_t *s, const char *agent, const char *to);
/* Users agent may send to (any category), each once: direct bindings,
 * members of bound groups, every user for a "*" subject. Count or error. */
int store_agent_users(store_t *s, const char *agent, store_name_cb cb, void *arg);

/* Re-encrypt up to max stored values whose key is not the keyring's current
 * one (and recompute their lookup hashes), continuing where the previous
 * call stopped. Returns how many were rewritten: call (and commit) until it
 * returns 0 after adding a key. The hub does this at start
 * (docs/directory.md). */
int store_dir_reencrypt(store_t *s, unsigned max, int64_t now_ms);
/* How many sealed values the directory holds (a hub refuses to create a new
 * key file for a store that already has some). 0 or error. */
int store_dir_sealed_count(store_t *s, int64_t *out);

/* After a restart: notifications left 'sending' go back to 'queued' and
 * their open attempts become 'interrupted'. Returns how many were requeued. */
int store_recover(store_t *s, int64_t now_ms);

/* Count of notifications by state, for logs and tests. */
int store_count_state(store_t *s, const char *state, int64_t *out);

/* --- Policy (store_policy.c; docs/hub-policy.md) --------------------------
 * Preferences are one validated JSON document per user (format in
 * docs/hub-policy.md, checked by policy_prefs_parse in hub/policy.h).
 * Writes go into the iteration transaction like every other write. */
struct policy_error; /* hub/policy.h: the bad field's path and what is wrong */
#define STORE_PREF_MAX 16384 /* bytes of one user's preference document */

/* The preference document of user_id, NUL-terminated into buf. Returns 1
 * (found), 0 (none set: buf "" and everything is allowed), -ENOSPC (buf too
 * small), or a negative store error. */
int store_pref_get(store_t *s, const char *user_id, char *buf, size_t len);
/* Validate json (len bytes) with policy_prefs_parse and make it user_id's
 * preferences, replacing any; json NULL or len 0 removes them. err (may be
 * NULL) names the bad field. Returns 0, TDG_EINVAL_INPUT (err filled;
 * nothing stored), TDG_ENOTFOUND (no such user), TDG_ETOOBIG (over
 * STORE_PREF_MAX), or a negative store error. The change applies to every
 * notification not yet sent; afterwards call hub_policy_changed() so caches
 * drop it and the agents' snapshots are published again. */
int store_pref_set(store_t *s, const char *user_id, const char *json, size_t len, int64_t now_ms,
                   struct policy_error *err);

/* What the planner needs of a user in one query: the time zone (directory)
 * into tz and the preference document into buf ("" when none). 1 found,
 * 0 no such user, -ENOSPC, or a negative store error. */
int store_pref_load(store_t *s, const char *user_id, char *buf, size_t len, char *tz,
                    size_t tz_len);

/* One stored policy decision (one per notification, user and channel). */
struct store_decision {
    const char *notification_id, *user_id;
    const char *channel; /* "push", "sms", "email", ...; "" for the whole user */
    const char *action;  /* "allow", "suppress", "hold", "drop", "schedule", "fallback", "replan" */
    const char *rule;    /* "quiet_hours", "category_opt_out:marketing", "fallback:sms", ... */
    int64_t until_ms;    /* hold / schedule / fallback: when it is looked at again; else 0 */
    int64_t at_ms;       /* when it was decided */
};
typedef void (*store_decision_cb)(void *arg, const struct store_decision *d);
/* Record a decision (iteration transaction). */
int store_decision_add(store_t *s, const struct store_decision *d);
/* The decisions of a notification, oldest first (for `tidingsctl status`).
 * Returns the count or a negative error. */
int store_decisions_of(store_t *s, const char *notification_id, store_decision_cb cb, void *arg);

/* Frequency caps: a "cap event" is recorded when a notification of a
 * category is let through to a user; the count since since_ms is what the
 * cap is checked against. */
int store_cap_record(store_t *s, const char *user_id, const char *category,
                     const char *notification_id, int64_t now_ms);
int store_cap_count(store_t *s, const char *user_id, const char *category, int64_t since_ms,
                    int64_t *count);

/* The policy revision: grows by one with every preference change; it is
 * the "version" of every published agent snapshot. */
int store_policy_revision(store_t *s, int64_t *rev);
int store_policy_revision_bump(store_t *s, int64_t *rev);
/* Notifications in state 'scheduled' (waiting on a timer), counted on the
 * partial index notifications_scheduled (metrics, `tidingsctl stats`). */
int store_count_scheduled(store_t *s, int64_t *n);

/* --- Scheduler (store_sched.c; docs/hub-policy.md) ------------------------
 * One durable table of timers: deliver_at, quiet-hours holds, fallback
 * steps, retries. A notification waiting on one is in state 'scheduled'
 * (outside the work index: store_take_queued never sees it). */
struct store_timer {
    int64_t id;
    int64_t due_ms;              /* wall clock, Unix ms */
    const char *kind;            /* "deliver_at", "hold", "fallback", "retry" */
    const char *notification_id;
    const char *payload;         /* kind-specific, e.g. the user id; "" for none */
};
typedef void (*store_timer_cb)(void *arg, const struct store_timer *t);
/* Add a timer (iteration transaction). *id (may be NULL) gets its id. */
int store_timer_add(store_t *s, int64_t due_ms, const char *kind, const char *notification_id,
                    const char *payload, int64_t *id);
/* The earliest due time: 1 and *due_ms, 0 when there is no timer, or error. */
int store_timer_next(store_t *s, int64_t *due_ms);
/* Delete up to max timers due at or before now_ms, earliest first, and hand
 * each to cb (in the iteration transaction: if it is not committed, they
 * fire again after a restart). Returns how many, or a negative error. */
int store_timer_take_due(store_t *s, int64_t now_ms, unsigned max, store_timer_cb cb, void *arg);
/* Delete the timers of a notification: of one kind (NULL: any) and whose
 * payload starts with payload (NULL: any; "alice\n" for one user's).
 * Returns how many, or a negative error. */
int store_timer_cancel(store_t *s, const char *notification_id, const char *kind,
                       const char *payload);
/* How many timers a notification has left. */
int store_timer_count_of(store_t *s, const char *notification_id, int64_t *count);
/* A user's policy timers (kinds deliver_at, hold, fallback, whose payload
 * starts with "<user>\n") with id > after_id, by id, at most max: each to cb
 * (read only; cb must not write: collect, then act). How many, or error. A
 * scan of the timers table: preference changes are rare. */
int store_timer_of_user(store_t *s, const char *user_id, int64_t after_id, unsigned max,
                        store_timer_cb cb, void *arg);
/* Delete one timer by id: 1 deleted, 0 already gone, or error. */
int store_timer_delete(store_t *s, int64_t id);
/* At start, before store_recover(): notifications waiting for a provider
 * retry (a "retry" timer) become 'scheduled', so they are not requeued and
 * sent at once; the retry timer requeues them when it comes due. How many. */
int store_timer_hold_retries(store_t *s);

/* The stored body of a notification and its expiry, for work resumed by a
 * timer: 1 found (buf NUL-terminated), 0 not found, -ENOSPC, or error. */
int store_notification_get(store_t *s, const char *id, char *buf, size_t len,
                           int64_t *expires_ms, char *state, size_t state_len);

/* What the parts of a notification came to (when it was delivered in parts:
 * group members, holds, fallback steps), for its terminal state. */
struct store_outcome {
    int64_t ok_attempts, attempts;
    char drop_rule[64];     /* first "drop" decision's rule, "" when none */
    char suppress_rule[64]; /* first "suppress" decision's rule, "" when none */
    char last_reason[128];  /* reason of the last failed attempt, "" when none */
};
int store_outcome_of(store_t *s, const char *notification_id, struct store_outcome *o);

/* --- Channels (store_channels.c; docs/channels.md) -------------------------
 *
 * What providers say after a send: delivery status by provider id (the SMS
 * SID, which the attempt carries as provider_id), and SMS opt-out/opt-in. */

/* Rank of a provider status: 1 queued/accepted/scheduled, 2 sending,
 * 3 sent/received, 4 delivered/undelivered/failed/canceled, 5 read; 0 for
 * a status this store does not know. */
int store_status_rank(const char *status);
/* Record status (and error code, 0 = none) for channel's provider_id.
 * Idempotent and monotonic: only a status of higher rank replaces the one
 * stored. 1 stored, 0 already there (or further), TDG_EINVAL_INPUT for an
 * empty field or unknown status, or error. */
int store_provider_status(store_t *s, const char *channel, const char *provider_id,
                          const char *status, int error_code, int64_t now_ms);
/* 1 and status/error_code/updates (changes stored) filled, 0 none, or error. */
int store_provider_status_get(store_t *s, const char *channel, const char *provider_id,
                              char *status, size_t cap, int *error_code, int64_t *updates);
/* A number texted an opt-out (STOP, ...) or opt-in (START, UNSTOP, ...)
 * keyword: opting out disables its active "sms" endpoints with reason
 * "opted_out:<keyword>"; opting in makes endpoints that an opt-out (or a
 * 21610 answer, "opted_out:21610") disabled active again, and nothing else.
 * Returns how many endpoints changed, or error. */
int store_sms_opt(store_t *s, const char *number, bool opted_out, const char *keyword,
                  int64_t now_ms);
/* What a channel follows after a send (channel_env.watch; SMS status
 * polling), so a restarted hub goes on: until_ms > 0 records provider_id
 * (sent under account) until then, until_ms == 0 forgets it. 0 or error. */
int store_provider_watch(store_t *s, const char *channel, const char *provider_id,
                         const char *account, int64_t until_ms);
/* At start: forget the channel's records past their deadline (until_ms <=
 * now_ms) or whose status is already final (provider_status rank >= 4),
 * then call fn for each one left with the last status recorded ("" none).
 * fn may write to the store. Returns how many, or error. */
typedef void (*store_watch_fn)(void *arg, const char *provider_id, const char *account,
                               int64_t until_ms, const char *last_status);
int store_provider_watch_each(store_t *s, const char *channel, int64_t now_ms,
                              store_watch_fn fn, void *arg);

/* --- Admin (store_admin.c; docs/tidingsctl.md) ----------------------------
 * Reads of the admin API that no other domain owns, dead-letter requeue,
 * an audit trail, and a savepoint so one admin command is applied whole or
 * not at all inside the iteration transaction. */
/* Open a savepoint (in the iteration transaction) / release it, keeping or
 * rolling back what was written since. 0 or error. */
int store_admin_begin(store_t *s);
int store_admin_end(store_t *s, bool keep);

/* A notification row. Strings are valid during the callback only. */
struct store_admin_row {
    int64_t seq; /* arrival order (rowid): the cursor of a log page */
    const char *id, *agent, *recipient, *category, *state, *reason, *body;
    const char *channels; /* channels attempted, comma-separated ("" none) */
    int priority, attempts;
    int64_t received_ms, updated_ms, expires_ms;
};
typedef void (*store_admin_row_cb)(void *arg, const struct store_admin_row *r);
/* The row of notification id: 1 (cb called), 0 unknown, or error. */
int store_admin_notification(store_t *s, const char *id, store_admin_row_cb cb, void *arg);

struct store_admin_attempt {
    int64_t id, device_id;
    const char *channel, *platform, *state, *reason, *provider_id;
    int status;                       /* provider's HTTP / SMTP status, 0 none */
    int64_t started_ms, finished_ms;  /* finished 0: still open */
};
typedef void (*store_admin_attempt_cb)(void *arg, const struct store_admin_attempt *a);
/* Up to max attempts of a notification, oldest first. Count or error. */
int store_admin_attempts(store_t *s, const char *id, unsigned max, store_admin_attempt_cb cb,
                         void *arg);

/* A receipt of a notification: in the outbox (confirmed_ms 0: not yet
 * confirmed by the broker) or from receipt_log (kept 30 days, at most 1M). */
struct store_admin_receipt {
    const char *agent, *state;
    int64_t queued_ms, confirmed_ms;
};
typedef void (*store_admin_receipt_cb)(void *arg, const struct store_admin_receipt *r);
/* Up to max receipts of a notification, oldest first. Count or error. */
int store_admin_receipts(store_t *s, const char *id, unsigned max, store_admin_receipt_cb cb,
                         void *arg);

/* A log page. NULL strings and 0 times match anything. */
struct store_admin_filter {
    const char *user, *category, *channel, *state;
    int64_t since_ms, until_ms; /* arrival time window */
    /* changed_after_ms < 0: newest first, rows with seq < cursor (0: from
     * the newest). >= 0: rows changed after (changed_after_ms, cursor),
     * oldest change first, among the newest 10,000 (`tail`). */
    int64_t changed_after_ms, cursor;
    unsigned limit;
};
int store_admin_log(store_t *s, const struct store_admin_filter *f, store_admin_row_cb cb,
                    void *arg);
/* Dead letters (failed, dropped; state NULL: both), newest first. */
int store_admin_dlq(store_t *s, const char *state, unsigned limit, store_admin_row_cb cb,
                    void *arg);
/* A dead letter back to 'queued'. 0, TDG_ENOTFOUND (no such id, or not
 * failed/dropped, or its recipient was erased), or error. */
int store_admin_requeue(store_t *s, const char *id, int64_t now_ms);

/* The audit trail of admin changes; target is a notification id, an agent,
 * ... ("" when naming it would keep personal data, e.g. a removed user). */
int store_admin_audit(store_t *s, int64_t now_ms, const char *command, const char *target,
                      const char *detail, const char *client);
struct store_admin_audit {
    int64_t at_ms;
    const char *command, *detail, *client;
};
typedef void (*store_admin_audit_cb)(void *arg, const struct store_admin_audit *a);
int store_admin_audit_of(store_t *s, const char *target, unsigned max, store_admin_audit_cb cb,
                         void *arg);

/* Queue depths by state (queued, scheduled, failed, dropped), from indexes;
 * 'sending' is not indexed (schema v9): the fanout counts it (fanout_jobs). */
typedef void (*store_admin_count_cb)(void *arg, const char *state, int64_t n);
int store_admin_queue_counts(store_t *s, store_admin_count_cb cb, void *arg);
/* Attempts started since since_ms by channel and state, with the mean
 * duration of finished ones. */
typedef void (*store_admin_channel_cb)(void *arg, const char *channel, const char *state,
                                       int64_t n, double mean_ms);
int store_admin_channel_stats(store_t *s, int64_t since_ms, store_admin_channel_cb cb, void *arg);

/* GDPR: notifications to user:<id> that are still pending end 'dropped'
 * ("recipient removed"); every body to that user is replaced by
 * {"redacted":true} and the recipient by "erased". *erased (optional) gets
 * how many rows were redacted. */
int store_admin_erase_notifications(store_t *s, const char *user_id, int64_t now_ms,
                                    int64_t *erased);

/* GDPR: erase a user (`tidingsctl user remove`), in the iteration
 * transaction: store_user_remove (devices, contact points, memberships,
 * bindings), store_policy_forget_user, store_timer_forget_user, the
 * provider reasons of attempts to the user's endpoints and notifications
 * redacted, then store_admin_erase_notifications. Ids, states and times
 * stay for the delivery log; STORE_REMOVED_USER stands where the user id
 * was. docs/tidingsctl.md "GDPR". */
#define STORE_REMOVED_USER "(removed)"
int store_admin_forget_user(store_t *s, const char *user_id, int64_t now_ms, int64_t *erased);
/* Preferences and cap events deleted; decisions kept with user_id
 * STORE_REMOVED_USER (store_policy.c). */
int store_policy_forget_user(store_t *s, const char *user_id);
/* Timers whose payload names the user ("<user>\n...") name
 * STORE_REMOVED_USER instead; they still fire (the planner finds no such
 * user and that part ends). Returns how many (store_sched.c). */
int store_timer_forget_user(store_t *s, const char *user_id);

#endif
