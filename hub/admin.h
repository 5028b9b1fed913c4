/*
 * admin.h - the hub's admin API: MQTT 5 request/response for tidingsctl.
 *
 * A request is a JSON object published on
 *     tidings/v1/admin/request/<command>          e.g. .../request/user/add
 * with the MQTT 5 properties Response Topic (under tidings/v1/admin/reply/)
 * and Correlation Data. The hubs take requests through a shared
 * subscription, so exactly one hub answers. The answer goes to the Response
 * Topic with the same Correlation Data:
 *     {"ok":true, ...}
 *     {"ok":false,"error":{"code":"bad_value","field":"tz","message":"..."}}
 * Who may send which command is the broker's ACL on the request topics (one
 * topic per command, so an ACL can grant read-only commands only); the hub
 * answers only on tidings/v1/admin/reply/..., never on another topic a
 * requester names, so the admin API cannot be used to publish elsewhere.
 *
 * A command that writes runs inside a savepoint of the iteration transaction
 * (applied whole or not at all), and every answer is published only after
 * that transaction is committed (hub.c's before-sleep hook): "ok" means on
 * disk. If the commit fails, writing commands are answered "storage".
 *
 * Commands, their fields and answers: docs/tidingsctl.md.
 */
#ifndef TIDINGS_ADMIN_H
#define TIDINGS_ADMIN_H

#include <stdbool.h>
#include <stddef.h>

#include "dispatch.h"
#include "fanout.h"
#include "intake.h"
#include "mqtt.h"
#include "store.h"

#define ADMIN_REQUEST_PREFIX "tidings/v1/admin/request/"
#define ADMIN_REPLY_PREFIX "tidings/v1/admin/reply/"
#define ADMIN_REQUEST_MAX (64 * 1024) /* bytes of one request */
#define ADMIN_PENDING_MAX 256         /* answers held per loop iteration */

typedef struct admin admin_t;

/* What the admin API reads and drives; not owned, outlives the admin. */
struct admin_env {
    store_t *store;
    fanout_t *fanout;
    intake_t *intake;
    const struct fanout_route *routes; /* copied */
    size_t nroutes;
    dispatch_t *dispatch; /* providers and their breakers (stats); may be NULL */
    /* Called after a committed write that changed preferences or bindings
     * of user_id (NULL: of anyone), so the hub can refresh what depends on
     * them (agents' policy snapshots). May be NULL. */
    void (*changed)(void *arg, const char *user_id);
    void *changed_arg;
};

admin_t *admin_create(const struct admin_env *env);
void admin_destroy(admin_t *a);

/* Is topic an admin request (under ADMIN_REQUEST_PREFIX)? */
bool admin_is_request(const char *topic);

/* Handle one request message (its response topic and correlation data
 * say where the answer goes). The answer is held until admin_flush. */
void admin_handle(admin_t *a, const struct mqtt_msg *m);

/* After store_commit: publish the held answers (committed false: writing
 * commands are answered "storage" instead). */
void admin_flush(admin_t *a, mqtt_t *mqtt, bool committed);

/* Answers waiting for a commit. */
size_t admin_pending(const admin_t *a);

#endif
