/*
 * proto.h - the Tidings wire format, v1. No I/O.
 *
 * A notification is a JSON object of at most PROTO_MAX_WIRE bytes (UTF-8).
 * proto_parse() validates every field rule of DESIGN.md and either fills a
 * struct notification or reports exactly one rejection: a stable reason code
 * and the field it concerns. Unknown fields are kept (forward compatibility):
 * the parsed object keeps the whole cJSON tree, and proto_serialize() writes
 * it back with them.
 *
 * Envelopes carried over MQTT:
 *   up    (agent -> hub)  {"v":1,"agent":"<agent>","items":[<notification>,...]}
 *   ack   (hub -> agent)  {"v":1,"acks":[{"id":"..","ok":true},
 *                                        {"id":"..","ok":false,"reason":"..","field":".."}]}
 *   receipts (hub -> agent) {"v":1,"receipts":[...]}  (proto_receipts_serialize)
 * A batch is parsed item by item so one bad item never rejects the others.
 */
#ifndef TIDINGS_PROTO_H
#define TIDINGS_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct cJSON;

#define PROTO_VERSION 1
#define PROTO_MAX_WIRE 4096    /* bytes per notification on the wire */
#define PROTO_ID_MAX 64        /* id length limit */
#define PROTO_TO_MAX 128       /* "user:<id>" / "group:<id>" / "local" */
#define PROTO_CATEGORY_MAX 32
#define PROTO_COLLAPSE_MAX 64
#define PROTO_LOCALE_MAX 35    /* BCP 47 tag */
#define PROTO_TEMPLATE_MAX 64
#define PROTO_AGENT_MAX 64     /* agent id: one MQTT topic level */
#define PROTO_TTL_MAX (28 * 24 * 3600) /* 28 days, FCM's maximum */
#define PROTO_GENERATED_ID_LEN 26      /* ULID-style, Crockford base32 */
#define PROTO_DATA_KEY_MAX 64  /* bytes per key of "data" */
#define PROTO_MAX_DEPTH 64     /* JSON nesting levels in one notification */
/* Largest "up" envelope around zero items: {"v":1,"agent":"<64>","items":[]} */
#define PROTO_BATCH_OVERHEAD 96
/* Smallest batch cap that always takes one maximal notification. */
#define PROTO_BATCH_MIN_CAP (PROTO_BATCH_OVERHEAD + PROTO_MAX_WIRE)

/* X(enum, "stable_code", "message") - codes are API: never renumber/rename. */
#define PROTO_REASON_TABLE(X)                                                         \
    X(PROTO_OK, "ok", "ok")                                                           \
    X(PROTO_R_TOO_LARGE, "too_large", "notification exceeds 4096 bytes")              \
    X(PROTO_R_BAD_UTF8, "bad_utf8", "not valid UTF-8")                                \
    X(PROTO_R_MALFORMED_JSON, "malformed_json", "not valid JSON")                     \
    X(PROTO_R_NOT_OBJECT, "not_object", "not a JSON object")                          \
    X(PROTO_R_MISSING_FIELD, "missing_field", "required field missing")               \
    X(PROTO_R_WRONG_TYPE, "wrong_type", "field has the wrong type")                   \
    X(PROTO_R_TOO_LONG, "too_long", "field value too long")                           \
    X(PROTO_R_EMPTY, "empty", "field value empty")                                    \
    X(PROTO_R_BAD_VALUE, "bad_value", "field value not allowed")                      \
    X(PROTO_R_BAD_RECIPIENT, "bad_recipient", "to must be user:<id>, group:<id> or local") \
    X(PROTO_R_BAD_TIME, "bad_time", "not an RFC 3339 time")                           \
    X(PROTO_R_OUT_OF_RANGE, "out_of_range", "number out of range")                    \
    X(PROTO_R_NO_CONTENT, "no_content", "title or body required")                     \
    X(PROTO_R_DUPLICATE_KEY, "duplicate_key", "field given twice")                    \
    X(PROTO_R_BAD_VERSION, "bad_version", "unsupported envelope version")             \
    X(PROTO_R_UNKNOWN_RECIPIENT, "unknown_recipient", "no such user or group")            \
    X(PROTO_R_NOT_ALLOWED, "not_allowed", "this agent may not send to this recipient")    \
    X(PROTO_R_OVER_QUOTA, "over_quota", "agent over its rate or quota")

enum proto_reason {
#define PROTO_X_ENUM(e, code, msg) e,
    PROTO_REASON_TABLE(PROTO_X_ENUM)
#undef PROTO_X_ENUM
    PROTO_REASON_COUNT
};

/* Stable snake_case code ("too_long"); "unknown" for out-of-range values. */
const char *proto_reason_code(enum proto_reason r);
/* Human message; never NULL. */
const char *proto_reason_message(enum proto_reason r);
/* Look up a stable code ("too_long"). true and *out set, or false if unknown. */
bool proto_reason_from_code(const char *code, enum proto_reason *out);

struct proto_error {
    enum proto_reason reason;
    char field[48];   /* "title", "data", "channels[2]"; "" when not about one field */
    char detail[128]; /* e.g. "64 bytes max, got 80" */
};

enum proto_priority { PROTO_PRIO_LOW = 0, PROTO_PRIO_NORMAL, PROTO_PRIO_HIGH, PROTO_PRIO_CRITICAL };
const char *proto_priority_name(enum proto_priority p);

enum proto_channel {
    PROTO_CH_PUSH = 1u << 0,
    PROTO_CH_SMS = 1u << 1,
    PROTO_CH_EMAIL = 1u << 2,
    PROTO_CH_DESKTOP = 1u << 3,
    PROTO_CH_LOCAL = 1u << 4,
};
#define PROTO_CH_ALL 0x1fu
/* "push", "sms", ... for one PROTO_CH_* bit; "unknown" for anything else. */
const char *proto_channel_name(enum proto_channel c);

enum proto_to_kind { PROTO_TO_USER, PROTO_TO_GROUP, PROTO_TO_LOCAL };

/*
 * A parsed, validated notification. String fields point into `json` (owned by
 * the struct) and stay valid until notification_free() or a call that
 * modifies the tree (proto_set_id). Absent optional strings are NULL.
 */
struct notification {
    struct cJSON *json;        /* the whole object, unknown fields included */
    const char *id;            /* NULL until assigned */
    const char *to;            /* full "user:alice" string */
    enum proto_to_kind to_kind;
    const char *to_id;         /* part after "user:" / "group:"; "" for local */
    const char *category;      /* NULL when absent */
    enum proto_priority priority; /* PROTO_PRIO_NORMAL when absent */
    const char *title, *body;  /* NULL when absent or ""; at least one non-NULL
                                  unless template_name is set */
    const struct cJSON *data;  /* object or NULL */
    unsigned channels;         /* PROTO_CH_* mask; PROTO_CH_ALL when absent */
    int64_t ttl_s;             /* 0 = no expiry */
    bool has_deliver_at;
    int64_t deliver_at_ms;     /* absolute Unix ms when deliver_at_user_tz is false */
    bool deliver_at_user_tz;   /* "tz":"user": deliver_at_local is wall time */
    const char *deliver_at_local; /* "2026-11-22T08:00:00" (no offset) when user tz */
    const char *collapse_key;
    int64_t accepted_at_ms;    /* "accepted_at": when Tidings accepted it; 0 = not yet */
    const char *template_name, *locale;
    const struct cJSON *vars;
};

/* Parse and validate one notification from buf (not NUL-terminated; len bytes).
 * Returns 0 and fills *n, or TDG_EINVAL_INPUT / TDG_ETOOBIG with *err filled
 * (TDG_ETOOBIG exactly when err->reason is PROTO_R_TOO_LARGE), or -ENOMEM.
 * A notification whose compact serialization would exceed PROTO_MAX_WIRE
 * (cJSON writes 1e14 as 100000000000000) is too_large as well, so
 * proto_serialize() output always fits PROTO_MAX_WIRE.
 * On failure *n holds nothing to free (notification_free on it is harmless). */
int proto_parse(const char *buf, size_t len, struct notification *n, struct proto_error *err);

/* Validate an already-parsed cJSON object; takes ownership of obj on success
 * AND on failure (it is freed on failure). Same results as proto_parse.
 * obj must be a root (no siblings): an element still linked into another
 * tree is refused with not_object and NOT freed. */
int proto_from_json(struct cJSON *obj, struct notification *n, struct proto_error *err);

/* Validate a borrowed tree in place (e.g. a batch item, see proto_item_cb)
 * whose compact serialization is known to be exactly compact_len bytes
 * (it was just printed): the same checks and results as proto_parse on that
 * text, without parsing or printing again. item is neither owned nor freed;
 * on success n points into it (valid while item lives) and n->json is NULL,
 * so notification_free(n) leaves item alone. */
int proto_item_check(struct cJSON *item, size_t compact_len, struct notification *n,
                     struct proto_error *err);

/* Give n the id `id` (replacing any; a new "id" member goes first). 0,
 * TDG_EINVAL_INPUT if id is invalid, TDG_ETOOBIG if the serialized
 * notification would then exceed PROTO_MAX_WIRE, or -ENOMEM; on failure n is
 * unchanged. Only n->id moves; the other pointers of n stay valid. */
int proto_set_id(struct notification *n, const char *id);

/* Stamp "accepted_at" (RFC 3339, ms) with the time Tidings accepted n,
 * replacing any value the sender gave: device clocks are often wrong, and
 * the ttl counts from acceptance. 0, TDG_ETOOBIG (no room within 4096
 * bytes; n unchanged) or -ENOMEM. */
int proto_set_accepted(struct notification *n, int64_t ms);

/* When n expires (accepted_at + ttl) in Unix ms, or 0 for never. A
 * notification not yet accepted counts from now_ms. */
int64_t proto_expires_ms(const struct notification *n, int64_t now_ms);

/* Serialize compactly. Returns a malloc'd NUL-terminated string (free with
 * free()) and its length in *len, or NULL on ENOMEM. */
char *proto_serialize(const struct notification *n, size_t *len);

void notification_free(struct notification *n);

/* Is id acceptable as a notification id (1..64 bytes of [A-Za-z0-9._:-])? */
bool proto_id_valid(const char *id);

/* Generate a new time-ordered, unique id: 26 chars of Crockford base32, a
 * 48-bit millisecond timestamp then 80 random bits (getrandom); monotonic
 * within a process (same ms: random part incremented). out must hold
 * PROTO_GENERATED_ID_LEN + 1 bytes. 0 or -errno. Thread-safe. */
int proto_id_new(char *out);

/* Parse "2026-11-21T22:49:47Z" / "...+01:00" / fractional seconds to Unix ms.
 * 0 or TDG_EINVAL_INPUT. */
int proto_parse_rfc3339(const char *s, int64_t *out_ms);
/* Format Unix ms as "2026-11-21T22:49:47.123Z". buf >= 25 bytes (shorter
 * buffers get a truncated, NUL-terminated string). Times outside the years
 * 0000..9999 are clamped to those bounds. */
void proto_format_rfc3339(int64_t ms, char *buf, size_t len);
/* Parse a local wall time "2026-11-22T08:00" or "2026-11-22T08:00:00" (no
 * offset, no fraction; the deliver_at form used with "tz":"user") into its
 * civil fields counted as if they were UTC, e.g. "1970-01-01T00:00:01" ->
 * 1000. The caller applies the user's time zone. 0 or TDG_EINVAL_INPUT. */
int proto_parse_local_time(const char *s, int64_t *out_wall_ms);

/* --- topics ---------------------------------------------------------- */

enum proto_topic_kind {
    PROTO_TOPIC_LOCAL_NOTIFY, /* tidings/v1/local/notify (agent ignored) */
    PROTO_TOPIC_UP,           /* tidings/v1/agents/{agent}/up */
    PROTO_TOPIC_ACK,
    PROTO_TOPIC_DOWN,
    PROTO_TOPIC_POLICY,
    PROTO_TOPIC_RECEIPTS,
    PROTO_TOPIC_STATUS,
    PROTO_TOPIC_HUB_STATUS,   /* tidings/v1/hubs/{hub}/status ("agent" is the hub id) */
};

/* Every hub's retained "online" / will "offline": agents send only while at
 * least one hub is online, so a batch is never published into a shared
 * subscription that nobody holds (it would be dropped by the broker and only
 * resent after the ack timeout, behind newer ones). */
#define PROTO_TOPIC_HUBS_STATUS_FILTER "tidings/v1/hubs/+/status"
/* The hub id of "tidings/v1/hubs/<hub>/status". 0 or -EINVAL. */
int proto_topic_hub(const char *topic, char *hub, size_t len);

/* Is agent usable as one topic level (1..64 of [A-Za-z0-9._-])? */
bool proto_agent_id_valid(const char *agent);
/* Build a topic. 0, -EINVAL for a bad agent id, -ENOSPC if buf is too small. */
int proto_topic(char *buf, size_t len, enum proto_topic_kind kind, const char *agent);
/* Extract the agent id from "tidings/v1/agents/<agent>/<suffix>" if the topic
 * ends in /suffix. 0, -EINVAL, or -ENOSPC if len <= strlen(agent id). agent
 * may be NULL to only check the topic. */
int proto_topic_agent(const char *topic, const char *suffix, char *agent, size_t len);

/* --- envelopes -------------------------------------------------------- */

/* Bounded builder for an "up" batch. Items are already-serialized
 * notifications (as stored in the outbox) and are copied verbatim. */
struct proto_batch {
    char *buf;
    size_t len, cap; /* cap is the hard ceiling in bytes */
    unsigned count;
};
/* 0, -EINVAL (bad agent id, or cap < PROTO_BATCH_MIN_CAP), or -ENOMEM.
 * cap: maximum envelope size in bytes; the buffer (cap + 1 bytes) is
 * allocated here once. */
int proto_batch_init(struct proto_batch *b, size_t cap, const char *agent);
/* Append one item. 0, -ENOSPC if it would not fit (batch unchanged; room for
 * the closing "]}" is always kept), or -EINVAL if item is not shaped like a
 * JSON object ("{...}"). An empty batch with cap >= PROTO_BATCH_MIN_CAP
 * always takes an item of up to PROTO_MAX_WIRE bytes. */
int proto_batch_add(struct proto_batch *b, const char *item, size_t len);
/* Close the envelope; b->buf/b->len is then the payload (also NUL-terminated).
 * Call once, and add nothing afterwards. 0, or -ENOSPC if called twice. */
int proto_batch_finish(struct proto_batch *b);
/* Empty the batch for reuse: same agent, cap and buffer, no items, not
 * finished. 0, or -EINVAL if b was never initialized. Use this (or
 * proto_batch_free) between batches: calling proto_batch_init again on a
 * live batch leaks its buffer. */
int proto_batch_reset(struct proto_batch *b);
void proto_batch_free(struct proto_batch *b);

/* Called for each item of a batch, in order; item is the raw element
 * (borrowed: it is freed when proto_batch_parse returns, and the callback
 * must not free or detach it). To keep it, copy it (cJSON_Duplicate(item, 1),
 * then proto_from_json on the copy) or print it and proto_parse the text; or
 * print it and check it in place with proto_item_check. */
typedef void (*proto_item_cb)(struct cJSON *item, void *arg);
/* Parse an "up" envelope; agent id copied to agent_out (may be NULL). 0, or
 * TDG_EINVAL_INPUT with err filled when the envelope itself is bad (then no
 * callback ran), -ENOSPC if agent_len <= strlen(agent id), or -ENOMEM.
 * Items may be any JSON value; the callback validates (proto_from_json). */
int proto_batch_parse(const char *buf, size_t len, char *agent_out, size_t agent_len,
                      proto_item_cb cb, void *arg, struct proto_error *err);
/* The same, but each item is detached from the batch before the callback,
 * which then owns it (a root: free it with cJSON_Delete, or keep it, e.g. as
 * the json of a notification checked with proto_item_check). */
int proto_batch_parse_owned(const char *buf, size_t len, char *agent_out, size_t agent_len,
                            proto_item_cb cb, void *arg, struct proto_error *err);

/* A bounded JSON text writer (json_print.c), the one place that escapes
 * strings as cJSON prints them: the hub's payloads, the receipts envelope
 * and proto_json_print write through it. Bytes go to p while they fit in
 * cap - 1 (room for the NUL, which the caller writes: proto_jw_end); len
 * counts every byte written, also past cap, as snprintf does, so
 * len >= cap means the text did not fit. p may be NULL when cap is 0. */
struct proto_jw {
    char *p;
    size_t cap, len;
};
/* n bytes of s as they are. Inline: the writers call it for every
 * punctuation mark and key. */
static inline void proto_jw_raw(struct proto_jw *w, const char *s, size_t n)
{
    if (w->len + 1 < w->cap) {
        size_t room = w->cap - 1 - w->len;
        memcpy(w->p + w->len, s, n < room ? n : room);
    }
    w->len += n;
}
/* A JSON string of the first max bytes of s at most (SIZE_MAX: to the NUL):
 * '"' and '\' escaped, \b \f \n \r \t, other bytes below 0x20 as
 * \u00xx (lower-case hex), everything else (0x7f, UTF-8) as is. */
void proto_jw_str(struct proto_jw *w, const char *s, size_t max);
/* An integer as cJSON prints one (below 1e15: its decimal digits). */
void proto_jw_int(struct proto_jw *w, int64_t v);

/* v in decimal, without printf: written at the end of buf (PROTO_I64_BUF
 * bytes), NUL-terminated; returns where it starts in buf. */
#define PROTO_I64_BUF 24
const char *proto_i64_str(int64_t v, char buf[PROTO_I64_BUF]);
/* NUL-terminate what was written; true when all of it fit. */
bool proto_jw_end(struct proto_jw *w);

/* Compact JSON text of item into buf (cap bytes, NUL included): the same
 * bytes cJSON_PrintUnformatted writes, printed faster (json_print.c). The
 * length, or -1 when it does not fit (buf then holds ""). */
long proto_json_print(const struct cJSON *item, char *buf, size_t cap);

/* The JSON type of j for error messages ("expected string, got number"):
 * "string", "number", "boolean", "null", "array", "object"; "invalid" for
 * NULL or anything else. */
const char *proto_json_type(const struct cJSON *j);

struct proto_ack {
    char id[PROTO_ID_MAX + 1];
    bool ok;
    enum proto_reason reason; /* when !ok */
    char field[48];
};
/* Serialize acks. malloc'd string (free()) or NULL on ENOMEM. */
char *proto_acks_serialize(const struct proto_ack *acks, size_t n, size_t *len);
/* Parse an ack envelope into a malloc'd array (*out, free(); NULL when *n is
 * 0). An unknown or missing reason code on a failed ack maps to
 * PROTO_R_BAD_VALUE; "field" longer than 47 bytes is truncated. 0,
 * TDG_EINVAL_INPUT with err filled (any bad entry rejects the envelope), or
 * -ENOMEM. */
int proto_acks_parse(const char *buf, size_t len, struct proto_ack **out, size_t *n,
                     struct proto_error *err);

/* Receipts (hub -> agent, tidings/v1/agents/{agent}/receipts): the terminal
 * state of each notification and what each channel did:
 *   {"v":1,"receipts":[{"id":"..","state":"delivered","reason":"",
 *     "at":"<RFC 3339>","channels":[{"channel":"apns","result":"ok",
 *     "status":200,"reason":"","attempts":1}]}]}
 * state: delivered | failed | suppressed | expired | dropped. Per channel,
 * result is the state of its deciding attempt (the last successful one, or
 * else the last one): ok | retry | drop | interrupted | sending. Delivered
 * at least once: an agent may see the same receipt twice. */
#define PROTO_RECEIPT_MAX_CHANNELS 8
struct proto_receipt_channel {
    char channel[16];
    char result[16];
    int status;        /* HTTP status or SMTP code; 0 = no answer */
    unsigned attempts; /* requests made on this channel */
    char reason[128];
};
struct proto_receipt {
    char id[PROTO_ID_MAX + 1];
    char state[16];
    char reason[256];
    int64_t at_ms;
    unsigned nch;
    struct proto_receipt_channel ch[PROTO_RECEIPT_MAX_CHANNELS];
};
/* Serialize receipts. malloc'd string (free()) or NULL on ENOMEM. */
char *proto_receipts_serialize(const struct proto_receipt *r, size_t n, size_t *len);
/* The same text for the receipts *r[0..n-1] (pointers: a caller picks them
 * out of a larger array), written into buf (cap bytes; buf may be NULL when
 * cap is 0) as snprintf does: the length of the whole text is returned;
 * when it is >= cap, buf holds a NUL-terminated prefix (if cap > 0) and the
 * caller writes again into a larger buffer. Strings are copied as JSON
 * strings, escaped as cJSON prints them; no allocation. */
size_t proto_receipts_write(char *buf, size_t cap, const struct proto_receipt *const *r, size_t n);
/* Called once per entry of a receipts envelope, in order: with r (borrowed
 * for the call) when the entry is valid, or with r NULL and bad naming the
 * field (e.g. "receipts[2].state") when it is not. */
typedef void (*proto_receipt_cb)(void *arg, const struct proto_receipt *r,
                                 const struct proto_error *bad);
/* Parse a receipts envelope. Each entry is checked on its own (a bad one
 * never affects the others): id (a valid notification id), state (one of
 * the five), at (RFC 3339) are required; reason is optional text, cut at
 * 255 bytes on a character boundary; channels optional, at most
 * PROTO_RECEIPT_MAX_CHANNELS, each with channel (1..15 of a-z 0-9 _ -),
 * result (ok|retry|drop|interrupted|sending), optional integers status
 * (0..999) and attempts, optional reason (cut at 127 bytes). Unknown members
 * are ignored. 0, TDG_EINVAL_INPUT with err filled when the envelope itself
 * is bad (then no callback ran), or -ENOMEM. */
int proto_receipts_parse(const char *buf, size_t len, proto_receipt_cb cb, void *arg,
                         struct proto_error *err);

#endif
