/*
 * hub.h - tidings-hub: configuration and lifetime.
 *
 * The hub takes agents' batches from the central broker (shared
 * subscription), stores them, acks after commit, and fans them out to the
 * providers through the channels.
 */
#ifndef TIDINGS_HUB_H
#define TIDINGS_HUB_H

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
    /* A user and one iOS device created at start (until the admin CLI). */
    char bootstrap_user[64];
    char bootstrap_tz[64];
    char bootstrap_ios_token[256];
    char bootstrap_ios_app[256];
    char bootstrap_ios_env[16];
    char bootstrap_android_token[256];
    char bootstrap_phone[32];
    char bootstrap_email[256];
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

#endif
