/*
 * envelope.c - MQTT topic names, the "up" batch envelope and the ack
 * envelope.
 *
 *   up   {"v":1,"agent":"<agent>","items":[<notification>,...]}
 *   ack  {"v":1,"acks":[{"id":"..","ok":true},
 *                       {"id":"..","ok":false,"reason":"..","field":".."}]}
 *
 * The batch builder copies already-serialized notifications verbatim into
 * one buffer allocated up front at the caller's cap: the agent never
 * re-parses what its outbox holds, and a batch can never outgrow the MQTT
 * payload budget it was sized for.
 */
#include "proto.h"
#include "proto_internal.h"

#include "error.h"

#include <cjson/cJSON.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- topics ----------------------------------------------------------- */

#define TOPIC_AGENTS "tidings/v1/agents/"

static const char *const topic_suffix[] = {
    [PROTO_TOPIC_LOCAL_NOTIFY] = NULL, [PROTO_TOPIC_UP] = "up",
    [PROTO_TOPIC_ACK] = "ack",         [PROTO_TOPIC_DOWN] = "down",
    [PROTO_TOPIC_POLICY] = "policy",   [PROTO_TOPIC_RECEIPTS] = "receipts",
    [PROTO_TOPIC_STATUS] = "status",   [PROTO_TOPIC_HUB_STATUS] = "status",
};
#define N_TOPICS (sizeof(topic_suffix) / sizeof(topic_suffix[0]))

bool proto_agent_id_valid(const char *agent)
{
    size_t len;

    if (!agent) {
        return false;
    }
    len = strnlen(agent, PROTO_AGENT_MAX + 1);
    if (len < 1 || len > PROTO_AGENT_MAX) {
        return false;
    }
    /* One topic level: no '/', and none of the wildcards '+' '#'. */
    for (size_t i = 0; i < len; i++) {
        char c = agent[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-')) {
            return false;
        }
    }
    return true;
}

int proto_topic_hub(const char *topic, char *hub, size_t len)
{
    static const char pre[] = "tidings/v1/hubs/", post[] = "/status";
    size_t tl = topic ? strlen(topic) : 0;
    if (tl <= sizeof(pre) - 1 + sizeof(post) - 1 || strncmp(topic, pre, sizeof(pre) - 1) != 0 ||
        strcmp(topic + tl - (sizeof(post) - 1), post) != 0) {
        return -EINVAL;
    }
    size_t hl = tl - (sizeof(pre) - 1) - (sizeof(post) - 1);
    if (hl >= len || hl > PROTO_AGENT_MAX) {
        return -EINVAL;
    }
    memcpy(hub, topic + sizeof(pre) - 1, hl);
    hub[hl] = '\0';
    return proto_agent_id_valid(hub) ? 0 : -EINVAL;
}

int proto_topic(char *buf, size_t len, enum proto_topic_kind kind, const char *agent)
{
    int n;

    if (!buf || (unsigned)kind >= N_TOPICS) {
        return -EINVAL;
    }
    if (kind == PROTO_TOPIC_LOCAL_NOTIFY) {
        n = snprintf(buf, len, "tidings/v1/local/notify");
    } else {
        if (!proto_agent_id_valid(agent)) {
            if (len > 0) {
                buf[0] = '\0';
            }
            return -EINVAL;
        }
        n = snprintf(buf, len, "%s%s/%s",
                     kind == PROTO_TOPIC_HUB_STATUS ? "tidings/v1/hubs/" : TOPIC_AGENTS, agent,
                     topic_suffix[kind]);
    }
    if (n < 0 || (size_t)n >= len) {
        /* Never hand out a truncated topic: it would name another one. */
        if (len > 0) {
            buf[0] = '\0';
        }
        return -ENOSPC;
    }
    return 0;
}

int proto_topic_agent(const char *topic, const char *suffix, char *agent, size_t len)
{
    const char *a, *slash;
    size_t alen;
    char tmp[PROTO_AGENT_MAX + 1];

    if (!topic || !suffix || !suffix[0] || strchr(suffix, '/')) {
        return -EINVAL;
    }
    if (strncmp(topic, TOPIC_AGENTS, sizeof(TOPIC_AGENTS) - 1) != 0) {
        return -EINVAL;
    }
    a = topic + sizeof(TOPIC_AGENTS) - 1;
    slash = strchr(a, '/');
    if (!slash || strcmp(slash + 1, suffix) != 0) {
        return -EINVAL;
    }
    alen = (size_t)(slash - a);
    if (alen < 1 || alen > PROTO_AGENT_MAX) {
        return -EINVAL;
    }
    memcpy(tmp, a, alen);
    tmp[alen] = '\0';
    if (!proto_agent_id_valid(tmp)) {
        return -EINVAL;
    }
    if (agent) {
        if (len <= alen) {
            return -ENOSPC;
        }
        memcpy(agent, tmp, alen + 1);
    }
    return 0;
}

/* --- up batch builder ------------------------------------------------- */

static const char batch_tail[] = "]}";
#define TAIL_LEN (sizeof(batch_tail) - 1)

int proto_batch_init(struct proto_batch *b, size_t cap, const char *agent)
{
    int n;

    if (!b) {
        return -EINVAL;
    }
    memset(b, 0, sizeof(*b));
    /* The agent id goes into the JSON unescaped: only a valid id is safe. */
    if (!proto_agent_id_valid(agent) || cap < PROTO_BATCH_MIN_CAP || cap == SIZE_MAX) {
        return -EINVAL;
    }
    b->buf = malloc(cap + 1); /* + 1: the NUL after finish */
    if (!b->buf) {
        return -ENOMEM;
    }
    n = snprintf(b->buf, cap + 1, "{\"v\":%d,\"agent\":\"%s\",\"items\":[", PROTO_VERSION, agent);
    /* Cannot fail: the header is at most PROTO_BATCH_OVERHEAD - TAIL_LEN. */
    b->len = (size_t)n;
    b->cap = cap;
    b->count = 0;
    return 0;
}

int proto_batch_add(struct proto_batch *b, const char *item, size_t len)
{
    size_t need;

    if (!b || !b->buf || !item || len < 2 || item[0] != '{' || item[len - 1] != '}') {
        return -EINVAL;
    }
    need = len + (b->count > 0 ? 1 : 0);
    /* Keep room for the tail so finish can never fail; checked without any
     * addition that could overflow. */
    if (b->len + TAIL_LEN > b->cap || need > b->cap - b->len - TAIL_LEN) {
        return -ENOSPC;
    }
    if (b->count > 0) {
        b->buf[b->len++] = ',';
    }
    memcpy(b->buf + b->len, item, len);
    b->len += len;
    b->count++;
    return 0;
}

int proto_batch_finish(struct proto_batch *b)
{
    if (!b || !b->buf) {
        return -EINVAL;
    }
    if (b->len + TAIL_LEN > b->cap) {
        return -ENOSPC;
    }
    memcpy(b->buf + b->len, batch_tail, TAIL_LEN + 1); /* with the NUL */
    b->len += TAIL_LEN;
    return 0;
}

int proto_batch_reset(struct proto_batch *b)
{
    const char *open;

    if (!b || !b->buf) {
        return -EINVAL;
    }
    /* The agent id holds no '[', so the first one closes the header. */
    open = memchr(b->buf, '[', b->len);
    if (!open) {
        return -EINVAL;
    }
    b->len = (size_t)(open - b->buf) + 1;
    b->count = 0;
    return 0;
}

void proto_batch_free(struct proto_batch *b)
{
    if (!b) {
        return;
    }
    free(b->buf);
    memset(b, 0, sizeof(*b));
}

/* --- envelope parsing ------------------------------------------------- */

/* Parse an envelope's outer object and check "v". Nesting: the envelope,
 * its array and then a full notification. */
static int parse_envelope(const char *buf, size_t len, cJSON **out, struct proto_error *err)
{
    cJSON *root = NULL, *v;
    int rc;

    *out = NULL;
    rc = proto_json_parse(buf, len, PROTO_MAX_DEPTH + 2, &root, err);
    if (rc) {
        return rc;
    }
    if (!cJSON_IsObject(root)) {
        proto_err_set(err, PROTO_R_NOT_OBJECT, NULL, "envelope must be a JSON object");
        rc = TDG_EINVAL_INPUT;
        goto fail;
    }
    rc = proto_check_dup_keys(root, "", err);
    if (rc) {
        goto fail;
    }
    /* Anything but the number 1 (absent, "1", 2) is another version. */
    v = cJSON_GetObjectItemCaseSensitive(root, "v");
    if (!cJSON_IsNumber(v) || v->valuedouble != (double)PROTO_VERSION) {
        proto_err_set(err, PROTO_R_BAD_VERSION, "v", "expected \"v\":%d", PROTO_VERSION);
        rc = TDG_EINVAL_INPUT;
        goto fail;
    }
    *out = root;
    return 0;
fail:
    cJSON_Delete(root);
    return rc;
}

/* Fetch a required member of the given cJSON type check. */
static int need_member(const cJSON *obj, const char *key, cJSON_bool (*is)(const cJSON *),
                       const char *want, cJSON **out, struct proto_error *err)
{
    cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, key);

    *out = NULL;
    if (!j) {
        proto_err_set(err, PROTO_R_MISSING_FIELD, key, "required");
        return TDG_EINVAL_INPUT;
    }
    if (!is(j)) {
        proto_err_set(err, PROTO_R_WRONG_TYPE, key, "expected %s", want);
        return TDG_EINVAL_INPUT;
    }
    *out = j;
    return 0;
}

static int batch_parse(const char *buf, size_t len, char *agent_out, size_t agent_len,
                       proto_item_cb cb, void *arg, struct proto_error *err, bool owned)
{
    cJSON *root, *agent, *items, *it, *next;
    int rc;

    rc = parse_envelope(buf, len, &root, err);
    if (rc) {
        return rc;
    }
    rc = need_member(root, "agent", cJSON_IsString, "a string", &agent, err);
    if (rc == 0 && !proto_agent_id_valid(agent->valuestring)) {
        proto_err_set(err, PROTO_R_BAD_VALUE, "agent", "1..%d of A-Z a-z 0-9 . _ -",
                      PROTO_AGENT_MAX);
        rc = TDG_EINVAL_INPUT;
    }
    if (rc == 0) {
        rc = need_member(root, "items", cJSON_IsArray, "an array", &items, err);
    }
    if (rc == 0 && agent_out) {
        if (agent_len <= strlen(agent->valuestring)) {
            rc = -ENOSPC;
        } else {
            memcpy(agent_out, agent->valuestring, strlen(agent->valuestring) + 1);
        }
    }
    if (rc) {
        cJSON_Delete(root);
        return rc;
    }
    /* Take next first: the callback may detach the item it is given. */
    for (it = items->child; it; it = next) {
        next = it->next;
        if (cb && owned) {
            cb(cJSON_DetachItemViaPointer(items, it), arg); /* a root, now the callback's */
        } else if (cb) {
            cb(it, arg);
        }
    }
    cJSON_Delete(root);
    return 0;
}

int proto_batch_parse(const char *buf, size_t len, char *agent_out, size_t agent_len,
                      proto_item_cb cb, void *arg, struct proto_error *err)
{
    return batch_parse(buf, len, agent_out, agent_len, cb, arg, err, false);
}

int proto_batch_parse_owned(const char *buf, size_t len, char *agent_out, size_t agent_len,
                            proto_item_cb cb, void *arg, struct proto_error *err)
{
    return batch_parse(buf, len, agent_out, agent_len, cb, arg, err, true);
}

/* --- acks ------------------------------------------------------------- */

/* The ack envelope into w: the bytes cJSON_PrintUnformatted wrote for the
 * tree this used to build ({"v":1,"acks":[...]}, keys in that order, the
 * reason and field only when !ok, the field only when not empty). */
static void write_acks(struct proto_jw *w, const struct proto_ack *acks, size_t n)
{
    proto_jw_raw(w, "{\"v\":1,\"acks\":[", sizeof("{\"v\":1,\"acks\":[") - 1);
    for (size_t i = 0; i < n; i++) {
        const struct proto_ack *a = &acks[i];
        proto_jw_raw(w, i ? ",{\"id\":" : "{\"id\":", i ? 7 : 6);
        /* Bounded: the arrays need not be NUL-terminated. */
        proto_jw_str(w, a->id, sizeof(a->id) - 1);
        if (a->ok) {
            proto_jw_raw(w, ",\"ok\":true}", sizeof(",\"ok\":true}") - 1);
            continue;
        }
        proto_jw_raw(w, ",\"ok\":false,\"reason\":", sizeof(",\"ok\":false,\"reason\":") - 1);
        proto_jw_str(w, proto_reason_code(a->reason), SIZE_MAX);
        if (a->field[0]) {
            proto_jw_raw(w, ",\"field\":", sizeof(",\"field\":") - 1);
            proto_jw_str(w, a->field, sizeof(a->field) - 1);
        }
        proto_jw_raw(w, "}", 1);
    }
    proto_jw_raw(w, "]}", 2);
}

char *proto_acks_serialize(const struct proto_ack *acks, size_t n, size_t *len)
{
    if ((!acks && n > 0) || n > (SIZE_MAX - 64) / 128) {
        return NULL;
    }
    /* Written straight into the result, no tree: sized for the usual ack
     * (an id and "ok"), and written again at the exact size when escapes
     * or rejections made it longer. */
    size_t cap = 64 + n * 128;
    for (int pass = 0; pass < 2; pass++) {
        char *s = malloc(cap);
        if (!s) {
            return NULL;
        }
        struct proto_jw w = {.p = s, .cap = cap};
        write_acks(&w, acks, n);
        if (proto_jw_end(&w)) {
            if (len) {
                *len = w.len;
            }
            return s;
        }
        free(s);
        cap = w.len + 1;
    }
    return NULL; /* cannot happen: the second pass has the exact size */
}

static int parse_one_ack(const cJSON *o, int i, struct proto_ack *a, struct proto_error *err)
{
    char field[sizeof(err->field)];
    const cJSON *id, *ok, *reason, *fld;

    memset(a, 0, sizeof(*a));
    snprintf(field, sizeof(field), "acks[%d]", i);
    if (!cJSON_IsObject(o)) {
        proto_err_set(err, PROTO_R_WRONG_TYPE, field, "expected an object");
        return TDG_EINVAL_INPUT;
    }
    id = cJSON_GetObjectItemCaseSensitive(o, "id");
    ok = cJSON_GetObjectItemCaseSensitive(o, "ok");
    snprintf(field, sizeof(field), "acks[%d].id", i);
    if (!id) {
        proto_err_set(err, PROTO_R_MISSING_FIELD, field, "required");
        return TDG_EINVAL_INPUT;
    }
    if (!cJSON_IsString(id)) {
        proto_err_set(err, PROTO_R_WRONG_TYPE, field, "expected a string");
        return TDG_EINVAL_INPUT;
    }
    if (!proto_id_valid(id->valuestring)) {
        proto_err_set(err, PROTO_R_BAD_VALUE, field, "not a valid notification id");
        return TDG_EINVAL_INPUT;
    }
    snprintf(field, sizeof(field), "acks[%d].ok", i);
    if (!ok) {
        proto_err_set(err, PROTO_R_MISSING_FIELD, field, "required");
        return TDG_EINVAL_INPUT;
    }
    if (!cJSON_IsBool(ok)) {
        proto_err_set(err, PROTO_R_WRONG_TYPE, field, "expected a boolean");
        return TDG_EINVAL_INPUT;
    }
    memcpy(a->id, id->valuestring, strlen(id->valuestring) + 1);
    a->ok = cJSON_IsTrue(ok);
    a->reason = PROTO_OK;
    if (a->ok) {
        return 0;
    }
    /* A hub newer than this agent may send codes we do not know yet: the
     * item is still rejected, just less specifically. */
    reason = cJSON_GetObjectItemCaseSensitive(o, "reason");
    if (!cJSON_IsString(reason) || !proto_reason_from_code(reason->valuestring, &a->reason) ||
        a->reason == PROTO_OK) {
        a->reason = PROTO_R_BAD_VALUE;
    }
    fld = cJSON_GetObjectItemCaseSensitive(o, "field");
    /* Only text that can be logged as is ("\u0000" would arrive as 0xFF). */
    if (cJSON_IsString(fld) &&
        proto_utf8_valid((const unsigned char *)fld->valuestring, strlen(fld->valuestring), NULL)) {
        proto_copy_trunc(a->field, sizeof(a->field), fld->valuestring);
    }
    return 0;
}

int proto_acks_parse(const char *buf, size_t len, struct proto_ack **out, size_t *n,
                     struct proto_error *err)
{
    cJSON *root, *arr;
    const cJSON *o;
    struct proto_ack *v = NULL;
    size_t count = 0, i = 0;
    int rc;

    *out = NULL;
    *n = 0;
    rc = parse_envelope(buf, len, &root, err);
    if (rc) {
        return rc;
    }
    rc = need_member(root, "acks", cJSON_IsArray, "an array", &arr, err);
    if (rc) {
        cJSON_Delete(root);
        return rc;
    }
    for (o = arr->child; o; o = o->next) {
        count++;
    }
    if (count > 0) {
        v = calloc(count, sizeof(*v));
        if (!v) {
            cJSON_Delete(root);
            return -ENOMEM;
        }
    }
    for (o = arr->child; o; o = o->next, i++) {
        rc = parse_one_ack(o, (int)i, &v[i], err);
        if (rc) {
            free(v);
            cJSON_Delete(root);
            return rc;
        }
    }
    cJSON_Delete(root);
    *out = v;
    *n = count;
    return 0;
}

/* --- receipts writing --------------------------------------------------- */

/* Written straight into the caller's buffer, not through cJSON: building a
 * tree of allocations and printing each number with "%1.15g" + sscanf cost
 * ~26k instructions per receipt in the hub. The text is the one cJSON
 * printed (test_receipts_write compares them byte for byte). */

/* The writer (struct proto_jw: bounded, counting like snprintf) and its
 * string escaping are json_print.c's, shared with the hub's payloads. */
#define RW_LIT(w, lit) proto_jw_raw((w), (lit), sizeof(lit) - 1)

#define RW_MS_PER_DAY INT64_C(86400000)

/* The date part of the last day written ("YYYY-MM-DDT"): receipts of one
 * message mostly share it, and proto_format_rfc3339 (snprintf of seven
 * fields) was a tenth of the cost. */
struct rw_day {
    bool set;
    int64_t day;
    char ymd[11];
};

static void put2(char *p, int64_t v)
{
    p[0] = (char)('0' + v / 10);
    p[1] = (char)('0' + v % 10);
}

/* at as proto_format_rfc3339 writes it, quoted. */
static void rw_at(struct proto_jw *w, int64_t ms, struct rw_day *dc)
{
    /* proto_format_rfc3339's range: it clamps to these. */
    static const int64_t lo = INT64_C(-62167219200000); /* 0000-01-01T00:00:00Z */
    static const int64_t hi = INT64_C(253402300799999); /* 9999-12-31T23:59:59.999Z */
    ms = ms < lo ? lo : ms > hi ? hi : ms;
    int64_t day = ms / RW_MS_PER_DAY, rem = ms % RW_MS_PER_DAY;
    if (rem < 0) {
        rem += RW_MS_PER_DAY;
        day--;
    }
    if (!dc->set || dc->day != day) {
        char at[32];
        proto_format_rfc3339(day * RW_MS_PER_DAY, at, sizeof(at));
        memcpy(dc->ymd, at, sizeof(dc->ymd));
        dc->day = day;
        dc->set = true;
    }
    /* "YYYY-MM-DDTHH:MM:SS.mmmZ" */
    char t[1 + 11 + 13 + 1];
    t[0] = '"';
    memcpy(t + 1, dc->ymd, sizeof(dc->ymd));
    char *p = t + 12;
    put2(p, rem / 3600000);
    p[2] = ':';
    put2(p + 3, rem / 60000 % 60);
    p[5] = ':';
    put2(p + 6, rem / 1000 % 60);
    p[8] = '.';
    p[9] = (char)('0' + rem % 1000 / 100);
    put2(p + 10, rem % 100);
    p[12] = 'Z';
    t[sizeof(t) - 1] = '"';
    proto_jw_raw(w, t, sizeof(t));
}

static void rw_receipt(struct proto_jw *w, const struct proto_receipt *x, struct rw_day *dc)
{
    RW_LIT(w, "{\"id\":");
    proto_jw_str(w, x->id, sizeof(x->id) - 1);
    RW_LIT(w, ",\"state\":");
    proto_jw_str(w, x->state, sizeof(x->state) - 1);
    RW_LIT(w, ",\"reason\":");
    proto_jw_str(w, x->reason, sizeof(x->reason) - 1);
    RW_LIT(w, ",\"at\":");
    rw_at(w, x->at_ms, dc);
    RW_LIT(w, ",\"channels\":[");
    unsigned nch = x->nch < PROTO_RECEIPT_MAX_CHANNELS ? x->nch : PROTO_RECEIPT_MAX_CHANNELS;
    for (unsigned c = 0; c < nch; c++) {
        const struct proto_receipt_channel *ch = &x->ch[c];
        if (c > 0) {
            RW_LIT(w, ",");
        }
        RW_LIT(w, "{\"channel\":");
        proto_jw_str(w, ch->channel, sizeof(ch->channel) - 1);
        RW_LIT(w, ",\"result\":");
        proto_jw_str(w, ch->result, sizeof(ch->result) - 1);
        RW_LIT(w, ",\"status\":");
        proto_jw_int(w, ch->status);
        RW_LIT(w, ",\"reason\":");
        proto_jw_str(w, ch->reason, sizeof(ch->reason) - 1);
        RW_LIT(w, ",\"attempts\":");
        proto_jw_int(w, ch->attempts);
        RW_LIT(w, "}");
    }
    RW_LIT(w, "]}");
}

/* Either arr[0..n-1] or *ptrs[0..n-1]. */
static size_t write_receipts(char *buf, size_t cap, const struct proto_receipt *arr,
                             const struct proto_receipt *const *ptrs, size_t n)
{
    struct proto_jw w = {.p = buf, .cap = buf ? cap : 0};
    struct rw_day dc = {.set = false};
    RW_LIT(&w, "{\"v\":");
    proto_jw_int(&w, PROTO_VERSION);
    RW_LIT(&w, ",\"receipts\":[");
    for (size_t i = 0; i < n; i++) {
        if (i > 0) {
            RW_LIT(&w, ",");
        }
        rw_receipt(&w, ptrs ? ptrs[i] : &arr[i], &dc);
    }
    RW_LIT(&w, "]}");
    proto_jw_end(&w);
    return w.len;
}

size_t proto_receipts_write(char *buf, size_t cap, const struct proto_receipt *const *r, size_t n)
{
    return write_receipts(buf, cap, NULL, r, n);
}

char *proto_receipts_serialize(const struct proto_receipt *r, size_t n, size_t *len)
{
    if (!r && n > 0) {
        return NULL;
    }
    size_t need = write_receipts(NULL, 0, r, NULL, n);
    char *s = malloc(need + 1);
    if (!s) {
        return NULL;
    }
    write_receipts(s, need + 1, r, NULL, n);
    if (len) {
        *len = need;
    }
    return s;
}

/* --- receipts parsing --------------------------------------------------- */

static const char *const receipt_states[] = {"delivered", "failed", "suppressed", "expired",
                                             "dropped", NULL};
static const char *const receipt_results[] = {"ok", "retry", "drop", "interrupted", "sending",
                                              NULL};

static bool in_set(const char *s, const char *const *set)
{
    for (size_t i = 0; set[i]; i++) {
        if (strcmp(s, set[i]) == 0) {
            return true;
        }
    }
    return false;
}

/* An optional string member: absent -> "" (0); else copied, truncated at a
 * character boundary (reasons are for people; a long provider message must
 * not cost the whole receipt). */
static int opt_text(const cJSON *o, const char *key, const char *field, char *dst, size_t dstlen,
                    struct proto_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    dst[0] = '\0';
    if (!v) {
        return 0;
    }
    if (!cJSON_IsString(v)) {
        proto_err_set(err, PROTO_R_WRONG_TYPE, field, "expected a string");
        return TDG_EINVAL_INPUT;
    }
    proto_copy_trunc(dst, dstlen, v->valuestring);
    return 0;
}

/* A required string member from a fixed set (or, with set NULL, 1..max-1
 * bytes of [a-z0-9_-]). */
static int req_word(const cJSON *o, const char *key, const char *field, const char *const *set,
                    char *dst, size_t dstlen, struct proto_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v) {
        proto_err_set(err, PROTO_R_MISSING_FIELD, field, "required");
        return TDG_EINVAL_INPUT;
    }
    if (!cJSON_IsString(v)) {
        proto_err_set(err, PROTO_R_WRONG_TYPE, field, "expected a string");
        return TDG_EINVAL_INPUT;
    }
    const char *s = v->valuestring;
    size_t n = strlen(s);
    if (n == 0) {
        proto_err_set(err, PROTO_R_EMPTY, field, "must not be empty");
        return TDG_EINVAL_INPUT;
    }
    if (set && !in_set(s, set)) {
        proto_err_set(err, PROTO_R_BAD_VALUE, field, "unknown value");
        return TDG_EINVAL_INPUT;
    }
    if (n >= dstlen) {
        proto_err_set(err, PROTO_R_TOO_LONG, field, "%zu bytes max, got %zu", dstlen - 1, n);
        return TDG_EINVAL_INPUT;
    }
    for (size_t i = 0; !set && i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-')) {
            proto_err_set(err, PROTO_R_BAD_VALUE, field, "a-z 0-9 _ - only");
            return TDG_EINVAL_INPUT;
        }
    }
    memcpy(dst, s, n + 1);
    return 0;
}

/* An optional integer member in [lo, hi]; absent -> 0. */
static int opt_int(const cJSON *o, const char *key, const char *field, double lo, double hi,
                   double *out, struct proto_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    *out = 0;
    if (!v) {
        return 0;
    }
    if (!cJSON_IsNumber(v)) {
        proto_err_set(err, PROTO_R_WRONG_TYPE, field, "expected an integer");
        return TDG_EINVAL_INPUT;
    }
    if (!(v->valuedouble >= lo && v->valuedouble <= hi)) {
        proto_err_set(err, PROTO_R_OUT_OF_RANGE, field, "%.0f..%.0f", lo, hi);
        return TDG_EINVAL_INPUT;
    }
    /* In range, so the cast is defined. */
    if (v->valuedouble != (double)(int64_t)v->valuedouble) {
        proto_err_set(err, PROTO_R_WRONG_TYPE, field, "expected an integer");
        return TDG_EINVAL_INPUT;
    }
    *out = v->valuedouble;
    return 0;
}

static int parse_receipt_channel(const cJSON *o, int i, int c, struct proto_receipt_channel *ch,
                                 struct proto_error *err)
{
    char f[48];
    double num;
    int rc;

    snprintf(f, sizeof(f), "receipts[%d].channels[%d]", i, c);
    if (!cJSON_IsObject(o)) {
        proto_err_set(err, PROTO_R_WRONG_TYPE, f, "expected an object");
        return TDG_EINVAL_INPUT;
    }
    snprintf(f, sizeof(f), "receipts[%d].channels[%d].channel", i, c);
    if ((rc = req_word(o, "channel", f, NULL, ch->channel, sizeof(ch->channel), err))) {
        return rc;
    }
    snprintf(f, sizeof(f), "receipts[%d].channels[%d].result", i, c);
    if ((rc = req_word(o, "result", f, receipt_results, ch->result, sizeof(ch->result), err))) {
        return rc;
    }
    snprintf(f, sizeof(f), "receipts[%d].channels[%d].status", i, c);
    if ((rc = opt_int(o, "status", f, 0, 999, &num, err))) {
        return rc;
    }
    ch->status = (int)num;
    snprintf(f, sizeof(f), "receipts[%d].channels[%d].attempts", i, c);
    if ((rc = opt_int(o, "attempts", f, 0, 1000000, &num, err))) {
        return rc;
    }
    ch->attempts = (unsigned)num;
    snprintf(f, sizeof(f), "receipts[%d].channels[%d].reason", i, c);
    return opt_text(o, "reason", f, ch->reason, sizeof(ch->reason), err);
}

static int parse_one_receipt(const cJSON *o, int i, struct proto_receipt *r,
                             struct proto_error *err)
{
    char f[48];
    const cJSON *id, *at, *chs, *c;
    int rc, k = 0;

    memset(r, 0, sizeof(*r));
    snprintf(f, sizeof(f), "receipts[%d]", i);
    if (!cJSON_IsObject(o)) {
        proto_err_set(err, PROTO_R_WRONG_TYPE, f, "expected an object");
        return TDG_EINVAL_INPUT;
    }
    snprintf(f, sizeof(f), "receipts[%d].id", i);
    id = cJSON_GetObjectItemCaseSensitive(o, "id");
    if (!id) {
        proto_err_set(err, PROTO_R_MISSING_FIELD, f, "required");
        return TDG_EINVAL_INPUT;
    }
    if (!cJSON_IsString(id)) {
        proto_err_set(err, PROTO_R_WRONG_TYPE, f, "expected a string");
        return TDG_EINVAL_INPUT;
    }
    if (!proto_id_valid(id->valuestring)) {
        proto_err_set(err, PROTO_R_BAD_VALUE, f, "not a valid notification id");
        return TDG_EINVAL_INPUT;
    }
    memcpy(r->id, id->valuestring, strlen(id->valuestring) + 1);
    snprintf(f, sizeof(f), "receipts[%d].state", i);
    if ((rc = req_word(o, "state", f, receipt_states, r->state, sizeof(r->state), err))) {
        return rc;
    }
    snprintf(f, sizeof(f), "receipts[%d].reason", i);
    if ((rc = opt_text(o, "reason", f, r->reason, sizeof(r->reason), err))) {
        return rc;
    }
    snprintf(f, sizeof(f), "receipts[%d].at", i);
    at = cJSON_GetObjectItemCaseSensitive(o, "at");
    if (!at) {
        proto_err_set(err, PROTO_R_MISSING_FIELD, f, "required");
        return TDG_EINVAL_INPUT;
    }
    if (!cJSON_IsString(at)) {
        proto_err_set(err, PROTO_R_WRONG_TYPE, f, "expected a string");
        return TDG_EINVAL_INPUT;
    }
    if (proto_parse_rfc3339(at->valuestring, &r->at_ms) != 0) {
        proto_err_set(err, PROTO_R_BAD_TIME, f, "expected an RFC 3339 time");
        return TDG_EINVAL_INPUT;
    }
    snprintf(f, sizeof(f), "receipts[%d].channels", i);
    chs = cJSON_GetObjectItemCaseSensitive(o, "channels");
    if (!chs) {
        return 0;
    }
    if (!cJSON_IsArray(chs)) {
        proto_err_set(err, PROTO_R_WRONG_TYPE, f, "expected an array");
        return TDG_EINVAL_INPUT;
    }
    for (c = chs->child; c; c = c->next, k++) {
        if (k >= PROTO_RECEIPT_MAX_CHANNELS) {
            proto_err_set(err, PROTO_R_TOO_LONG, f, "%d channels max",
                          PROTO_RECEIPT_MAX_CHANNELS);
            return TDG_EINVAL_INPUT;
        }
        if ((rc = parse_receipt_channel(c, i, k, &r->ch[k], err))) {
            return rc;
        }
    }
    r->nch = (unsigned)k;
    return 0;
}

int proto_receipts_parse(const char *buf, size_t len, proto_receipt_cb cb, void *arg,
                         struct proto_error *err)
{
    cJSON *root, *arr;
    const cJSON *o;
    int rc, i = 0;
    struct proto_receipt *r;

    rc = parse_envelope(buf, len, &root, err);
    if (rc) {
        return rc;
    }
    rc = need_member(root, "receipts", cJSON_IsArray, "an array", &arr, err);
    if (rc) {
        cJSON_Delete(root);
        return rc;
    }
    r = malloc(sizeof(*r));
    if (!r) {
        cJSON_Delete(root);
        return -ENOMEM;
    }
    for (o = arr->child; o; o = o->next, i++) {
        struct proto_error e;
        memset(&e, 0, sizeof(e));
        if (parse_one_receipt(o, i, r, &e) == 0) {
            cb(arg, r, NULL);
        } else {
            cb(arg, NULL, &e);
        }
    }
    free(r);
    cJSON_Delete(root);
    return 0;
}
