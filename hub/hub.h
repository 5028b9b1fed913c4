/*
 * hub.h - tidings-hub: configuration and lifetime.
 *
 * The hub takes agents' batches from the central broker (shared
 * subscription), stores them, acks after commit, and fans them out to the
 * providers through the channels.
 */
#ifndef TIDINGS_HUB_H
#define TIDINGS_HUB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "loop.h"

struct hub_config {
    char state_dir[256];
    int log_level;
    char broker_host[256];
    int64_t broker_port;
    char broker_username[128];
    char broker_password[256];
    char broker_cafile[256];
    char broker_certfile[256];
    char broker_keyfile[256];
    char share_group[64];
    char channels[128];
    char client_id[64];
    int synchronous;
    int64_t max_jobs;
    int64_t max_attempts;
    uint64_t retry_base_ms, retry_cap_ms;
    /* fanout engine, observability, shutdown (docs/engine.md) */
    char metrics_listen[80];
    uint64_t shutdown_grace_ms;
    int64_t agent_rate, agent_burst, agent_quota;
    uint64_t intake_hold_bytes; /* intake.hold: backpressure (intake.h) */
    uint64_t intake_hold_ms;
    bool intake_parse_thread;   /* intake.parse_thread: parse batches off the loop */
    int64_t receipts_batch;
    /* A user and one iOS device created at start (until the admin CLI). */
    char bootstrap_user[64];
    char bootstrap_tz[64];
    char bootstrap_ios_token[256];
    char bootstrap_ios_app[256];
    char bootstrap_ios_env[16];
    char bootstrap_android_token[256];
    char bootstrap_phone[32];
    char bootstrap_email[256];
    char bootstrap_agents[256]; /* agents bound to bootstrap.user: "a,b" or "*" */
    char bootstrap_prefs[4096]; /* preferences of bootstrap.user (JSON) */
    bool policy_snapshots;      /* publish agents' preference snapshots */
    char pii_keyfile[256];      /* docs/directory.md */
};

/* The hub's settings: hub keys plus every channel's "<channel>.*" keys. */
typedef struct hub_settings hub_settings_t;

/* Build settings with all defaults applied. NULL on ENOMEM. */
hub_settings_t *hub_settings_create(char *err, size_t errlen);
void hub_settings_destroy(hub_settings_t *s);
int hub_settings_load(hub_settings_t *s, const char *path, char *err, size_t errlen);
int hub_settings_set(hub_settings_t *s, const char *key, const char *value, char *err,
                     size_t errlen);
void hub_settings_print(const hub_settings_t *s, FILE *out);

typedef struct hub hub_t;

int hub_create(loop_t *loop, const hub_settings_t *s, hub_t **out, char *err, size_t errlen);
void hub_destroy(hub_t *h);

/* Graceful shutdown (SIGTERM): stop taking uplinks and starting sends, let
 * in-flight provider requests finish for up to shutdown.grace, commit and
 * publish, then stop the loop; what is still in flight stays 'sending' and
 * is recovered at the next start. A second call does nothing. */
void hub_shutdown(hub_t *h);

/* The preferences, time zone or agent bindings of user_id (NULL: of
 * anyone) changed and are committed: drop cached preferences, re-plan the
 * user's waiting notifications, and publish the affected agents' policy
 * snapshots again - in the next loop iteration, after its commit
 * (docs/hub-policy.md). */
void hub_policy_changed(hub_t *h, const char *user_id);

#endif
