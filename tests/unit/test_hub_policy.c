/* test_hub_policy.c - the hub's preference rules (hub/policy.c): parsing with
 * field-naming errors, every rule in order, quiet hours across DST in
 * America/New_York, Europe/Berlin, Asia/Kolkata and Australia/Adelaide,
 * caps counted in the store on a simulated clock, the fallback order, the
 * agent snapshot object, deliver_at in the user's zone. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "error.h"
#include "policy.h"
#include "store.h"
#include "tz.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int64_t utc_ms(int64_t y, int mo, int d, int h, int mi)
{
    return (tz_days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60) * 1000;
}

static policy_prefs_t *parse_ok(const char *json)
{
    policy_prefs_t *p = NULL;
    struct policy_error e;
    int rc = policy_prefs_parse(json, strlen(json), &p, &e);
    if (rc != 0) {
        fail_msg("preferences refused: %s: %s", e.field, e.detail);
    }
    return p;
}

static struct notification *notif_json(const char *json)
{
    struct notification *nt = calloc(1, sizeof(*nt));
    assert_non_null(nt);
    struct proto_error pe;
    if (proto_parse(json, strlen(json), nt, &pe) != 0) {
        fail_msg("bad test notification %s: %s", json, pe.detail);
    }
    return nt;
}

static struct notification *notif(const char *category, const char *priority)
{
    char json[256];
    snprintf(json, sizeof(json), "{\"to\":\"user:alice\",\"title\":\"hi\"%s%s%s%s%s%s}",
             category ? ",\"category\":\"" : "", category ? category : "", category ? "\"" : "",
             priority ? ",\"priority\":\"" : "", priority ? priority : "", priority ? "\"" : "");
    return notif_json(json);
}

static void notif_free(struct notification *nt)
{
    notification_free(nt);
    free(nt);
}

static struct policy_decision decide_tz(const policy_prefs_t *p, const char *zone,
                                        const char *category, const char *priority,
                                        enum proto_channel ch, int64_t now, int64_t cap_count)
{
    tz_t *tz = NULL;
    if (zone) {
        assert_int_equal(tz_load(zone, &tz), 0);
    }
    struct notification *nt = notif(category, priority);
    struct policy_decision d;
    assert_int_equal(policy_decide(p, tz, nt, ch, now, cap_count, &d), 0);
    notif_free(nt);
    tz_free(tz);
    return d;
}

#define EXPECT(d, act, rulestr)                                                                    \
    do {                                                                                           \
        struct policy_decision d_ = (d);                                                           \
        if (d_.action != (act) || strcmp(d_.rule, (rulestr)) != 0) {                               \
            fail_msg("line %d: got %s/%s, want %s/%s", __LINE__, policy_action_name(d_.action),    \
                     d_.rule, policy_action_name(act), rulestr);                                   \
        }                                                                                          \
    } while (0)

static int teardown(void **state)
{
    (void)state;
    tz_cache_flush();
    return 0;
}

static const char *full =
    "{\"opt_out\":false,"
    " \"categories\":{\"marketing\":{\"opt_out\":true},"
    "                 \"security\":{\"channels_off\":[\"sms\",\"desktop\"]},"
    "                 \"push_marketing\":{\"opt_out\":true},"
    "                 \"news\":{}},"
    " \"quiet_hours\":{\"start\":\"22:00\",\"end\":\"07:00\",\"mode\":\"hold\"},"
    " \"caps\":{\"news\":{\"max\":3,\"window\":\"1d\"}},"
    " \"fallback\":[{\"channel\":\"push\"},{\"channel\":\"sms\",\"after\":\"10m\"},"
    "              {\"channel\":\"email\",\"after\":\"30m\"}]}";

/* --- rules --------------------------------------------------------------- */

static void test_rules_in_order(void **state)
{
    (void)state;
    policy_prefs_t *p = parse_ok(full);
    int64_t day = utc_ms(2026, 6, 10, 12, 0);   /* 14:00 CEST */
    int64_t night = utc_ms(2026, 6, 10, 21, 0); /* 23:00 CEST */
    const char *z = "Europe/Berlin";
    /* No preferences at all: allow. */
    EXPECT(decide_tz(NULL, z, "marketing", NULL, PROTO_CH_PUSH, night, 0), POLICY_ALLOW,
           "no_preference");
    EXPECT(decide_tz(p, z, "marketing", NULL, PROTO_CH_PUSH, day, 0), POLICY_SUPPRESS,
           "category_opt_out:marketing");
    /* Opt-outs win over critical, and over quiet hours. */
    EXPECT(decide_tz(p, z, "marketing", "critical", PROTO_CH_PUSH, night, 0), POLICY_SUPPRESS,
           "category_opt_out:marketing");
    EXPECT(decide_tz(p, z, "security", NULL, PROTO_CH_SMS, day, 0), POLICY_SUPPRESS,
           "channel_off:sms");
    EXPECT(decide_tz(p, z, "security", NULL, PROTO_CH_PUSH, day, 0), POLICY_ALLOW, "allow");
    /* Categories match exactly. */
    EXPECT(decide_tz(p, z, "push", NULL, PROTO_CH_PUSH, day, 0), POLICY_ALLOW, "allow");
    EXPECT(decide_tz(p, z, "marketing2", NULL, PROTO_CH_PUSH, day, 0), POLICY_ALLOW, "allow");
    EXPECT(decide_tz(p, z, NULL, NULL, PROTO_CH_PUSH, day, 0), POLICY_ALLOW, "allow");
    /* Quiet hours: hold to 07:00 CEST = 05:00Z; critical passes, marked. */
    struct policy_decision d = decide_tz(p, z, "security", NULL, PROTO_CH_PUSH, night, 0);
    EXPECT(d, POLICY_HOLD, "quiet_hours");
    assert_int_equal(d.hold_until_ms, utc_ms(2026, 6, 11, 5, 0));
    d = decide_tz(p, z, "security", "critical", PROTO_CH_PUSH, night, 0);
    EXPECT(d, POLICY_ALLOW, "critical_bypass");
    assert_true(d.critical_bypass);
    d = decide_tz(p, z, "security", "critical", PROTO_CH_PUSH, day, 0);
    EXPECT(d, POLICY_ALLOW, "allow");
    assert_false(d.critical_bypass);
    /* Caps: under the cap allows, at the cap suppresses; held ones are not
     * capped (they are decided again when the window ends). */
    EXPECT(decide_tz(p, z, "news", NULL, PROTO_CH_PUSH, day, 2), POLICY_ALLOW, "allow");
    EXPECT(decide_tz(p, z, "news", NULL, PROTO_CH_PUSH, day, 3), POLICY_SUPPRESS, "cap:news");
    EXPECT(decide_tz(p, z, "news", NULL, PROTO_CH_PUSH, night, 3), POLICY_HOLD, "quiet_hours");
    EXPECT(decide_tz(p, z, "news", "critical", PROTO_CH_PUSH, night, 9), POLICY_SUPPRESS,
           "cap:news");
    int64_t max, win;
    assert_true(policy_cap(p, "news", &max, &win));
    assert_int_equal(max, 3);
    assert_int_equal(win, 86400000);
    assert_false(policy_cap(p, "security", &max, &win));
    assert_false(policy_cap(p, NULL, &max, &win));
    policy_prefs_free(p);

    p = parse_ok("{\"opt_out\":true,\"quiet_hours\":{\"start\":\"00:00\",\"end\":\"23:59\"}}");
    EXPECT(decide_tz(p, z, "security", "critical", PROTO_CH_EMAIL, day, 0), POLICY_SUPPRESS,
           "opt_out");
    policy_prefs_free(p);

    p = parse_ok("{\"quiet_hours\":{\"start\":\"22:00\",\"end\":\"07:00\",\"mode\":\"drop\"}}");
    EXPECT(decide_tz(p, z, NULL, "high", PROTO_CH_PUSH, night, 0), POLICY_DROP,
           "quiet_hours_drop");
    EXPECT(decide_tz(p, z, NULL, "critical", PROTO_CH_PUSH, night, 0), POLICY_ALLOW,
           "critical_bypass");
    /* No zone: UTC, and the decision says so. */
    d = decide_tz(p, NULL, NULL, NULL, PROTO_CH_PUSH, utc_ms(2026, 6, 10, 23, 0), 0);
    EXPECT(d, POLICY_DROP, "quiet_hours_drop");
    assert_true(d.tz_fallback);
    policy_prefs_free(p);

    p = parse_ok("{}");
    EXPECT(decide_tz(p, z, "x", NULL, PROTO_CH_PUSH, night, 0), POLICY_ALLOW, "allow");
    policy_prefs_free(p);
}

static void test_fallback_order(void **state)
{
    (void)state;
    policy_prefs_t *p = parse_ok(full);
    struct policy_step st[POLICY_FALLBACK_MAX];
    assert_int_equal(policy_fallback(p, st), 3);
    assert_int_equal(st[0].channel, PROTO_CH_PUSH);
    assert_int_equal(st[0].after_ms, 0);
    assert_int_equal(st[1].channel, PROTO_CH_SMS);
    assert_int_equal(st[1].after_ms, 600000);
    assert_int_equal(st[2].channel, PROTO_CH_EMAIL);
    assert_int_equal(st[2].after_ms, 1800000);
    policy_prefs_free(p);
    assert_int_equal(policy_fallback(NULL, st), 0);
    p = parse_ok("{\"opt_out\":false}");
    assert_int_equal(policy_fallback(p, st), 0);
    policy_prefs_free(p);
}

/* --- quiet hours across DST ------------------------------------------------ */

static policy_prefs_t *quiet(const char *start, const char *end)
{
    char json[160];
    snprintf(json, sizeof(json), "{\"quiet_hours\":{\"start\":\"%s\",\"end\":\"%s\"}}", start,
             end);
    return parse_ok(json);
}

#define HOLD(p, zone, now, until)                                                                  \
    do {                                                                                           \
        struct policy_decision h_ = decide_tz(p, zone, NULL, NULL, PROTO_CH_PUSH, now, 0);         \
        EXPECT(h_, POLICY_HOLD, "quiet_hours");                                                    \
        if (h_.hold_until_ms != (until)) {                                                         \
            fail_msg("line %d: held until %lld, want %lld", __LINE__, (long long)h_.hold_until_ms, \
                     (long long)(until));                                                          \
        }                                                                                          \
    } while (0)
#define ALLOW(p, zone, now)                                                                        \
    EXPECT(decide_tz(p, zone, NULL, NULL, PROTO_CH_PUSH, now, 0), POLICY_ALLOW, "allow")

static void test_quiet_berlin_dst(void **state)
{
    (void)state;
    const char *z = "Europe/Berlin";
    policy_prefs_t *p = quiet("22:00", "07:00");
    /* Spring forward (2026-03-29 01:00Z): 23:00 CET -> 07:00 CEST = 05:00Z
     * (an 8-hour night). */
    HOLD(p, z, utc_ms(2026, 3, 28, 22, 0), utc_ms(2026, 3, 29, 5, 0));
    HOLD(p, z, utc_ms(2026, 3, 29, 1, 0), utc_ms(2026, 3, 29, 5, 0));
    ALLOW(p, z, utc_ms(2026, 3, 29, 5, 0));
    ALLOW(p, z, utc_ms(2026, 3, 29, 19, 59));
    HOLD(p, z, utc_ms(2026, 3, 29, 20, 0), utc_ms(2026, 3, 30, 5, 0));
    /* Fall back (2026-10-25 01:00Z): 22:00 CEST = 20:00Z to 07:00 CET = 06:00Z. */
    ALLOW(p, z, utc_ms(2026, 10, 24, 19, 59));
    HOLD(p, z, utc_ms(2026, 10, 24, 20, 0), utc_ms(2026, 10, 25, 6, 0));
    HOLD(p, z, utc_ms(2026, 10, 25, 1, 30), utc_ms(2026, 10, 25, 6, 0));
    ALLOW(p, z, utc_ms(2026, 10, 25, 6, 0));
    policy_prefs_free(p);
    /* A start inside the spring gap begins when the clock jumps. */
    p = quiet("02:30", "04:00");
    ALLOW(p, z, utc_ms(2026, 3, 29, 0, 59));
    HOLD(p, z, utc_ms(2026, 3, 29, 1, 0), utc_ms(2026, 3, 29, 2, 0));
    ALLOW(p, z, utc_ms(2026, 3, 29, 2, 0));
    policy_prefs_free(p);
    /* An end inside the autumn overlap: the first 02:30 (CEST). */
    p = quiet("22:00", "02:30");
    HOLD(p, z, utc_ms(2026, 10, 24, 23, 0), utc_ms(2026, 10, 25, 0, 30));
    ALLOW(p, z, utc_ms(2026, 10, 25, 0, 45));
    ALLOW(p, z, utc_ms(2026, 10, 25, 1, 15));
    policy_prefs_free(p);
}

static void test_quiet_new_york_dst(void **state)
{
    (void)state;
    const char *z = "America/New_York";
    policy_prefs_t *p = quiet("22:00", "07:00");
    /* 2026-03-08: 22:00 EST = 03:00Z to 07:00 EDT = 11:00Z. */
    ALLOW(p, z, utc_ms(2026, 3, 8, 2, 59));
    HOLD(p, z, utc_ms(2026, 3, 8, 3, 0), utc_ms(2026, 3, 8, 11, 0));
    HOLD(p, z, utc_ms(2026, 3, 8, 7, 30), utc_ms(2026, 3, 8, 11, 0));
    ALLOW(p, z, utc_ms(2026, 3, 8, 11, 0));
    /* 2026-11-01: 22:00 EDT = 02:00Z to 07:00 EST = 12:00Z. */
    HOLD(p, z, utc_ms(2026, 11, 1, 2, 30), utc_ms(2026, 11, 1, 12, 0));
    HOLD(p, z, utc_ms(2026, 11, 1, 6, 30), utc_ms(2026, 11, 1, 12, 0));
    ALLOW(p, z, utc_ms(2026, 11, 1, 12, 0));
    policy_prefs_free(p);
    /* 01:00-02:00 on the fall-back night lasts two real hours. */
    p = quiet("01:00", "02:00");
    ALLOW(p, z, utc_ms(2026, 11, 1, 4, 59));
    HOLD(p, z, utc_ms(2026, 11, 1, 5, 0), utc_ms(2026, 11, 1, 7, 0));
    HOLD(p, z, utc_ms(2026, 11, 1, 6, 30), utc_ms(2026, 11, 1, 7, 0));
    ALLOW(p, z, utc_ms(2026, 11, 1, 7, 0));
    policy_prefs_free(p);
    /* 02:00-03:00 on the spring-forward night does not exist. */
    p = quiet("02:00", "03:00");
    ALLOW(p, z, utc_ms(2026, 3, 8, 6, 59));
    ALLOW(p, z, utc_ms(2026, 3, 8, 7, 0));
    HOLD(p, z, utc_ms(2026, 3, 9, 6, 30), utc_ms(2026, 3, 9, 7, 0));
    policy_prefs_free(p);
}

static void test_quiet_half_hour_zones(void **state)
{
    (void)state;
    policy_prefs_t *p = quiet("22:30", "06:30");
    ALLOW(p, "Asia/Kolkata", utc_ms(2026, 6, 1, 16, 59));
    HOLD(p, "Asia/Kolkata", utc_ms(2026, 6, 1, 17, 0), utc_ms(2026, 6, 2, 1, 0));
    ALLOW(p, "Asia/Kolkata", utc_ms(2026, 6, 2, 1, 0));
    policy_prefs_free(p);
    /* Adelaide (+10:30 -> +09:30 on 2026-04-05 03:00 ACDT). */
    p = quiet("22:00", "07:00");
    HOLD(p, "Australia/Adelaide", utc_ms(2026, 4, 4, 11, 30), utc_ms(2026, 4, 4, 21, 30));
    ALLOW(p, "Australia/Adelaide", utc_ms(2026, 4, 4, 21, 30));
    /* Spring forward (2026-10-04 02:00 ACST -> 03:00 ACDT, 16:30Z on 10-03):
     * 22:00 ACST = 12:30Z to 07:00 ACDT = 20:30Z. */
    HOLD(p, "Australia/Adelaide", utc_ms(2026, 10, 3, 12, 30), utc_ms(2026, 10, 3, 20, 30));
    ALLOW(p, "Australia/Adelaide", utc_ms(2026, 10, 3, 20, 30));
    policy_prefs_free(p);
}

/* --- parsing -------------------------------------------------------------- */

static void refused(const char *json, const char *field, const char *detail_part)
{
    policy_prefs_t *p = NULL;
    struct policy_error e;
    int rc = policy_prefs_parse(json, strlen(json), &p, &e);
    if (rc == 0) {
        policy_prefs_free(p);
        fail_msg("accepted: %s", json);
    }
    assert_null(p);
    if (strcmp(e.field, field) != 0 || !strstr(e.detail, detail_part)) {
        fail_msg("%s: got field '%s' detail '%s', want '%s' / '%s'", json, e.field, e.detail,
                 field, detail_part);
    }
}

static void test_parse_errors(void **state)
{
    (void)state;
    refused("[]", "", "must be a JSON object");
    refused("{", "", "not valid JSON");
    refused("{} x", "", "trailing data");
    refused("{\"opt_out\":\"yes\"}", "opt_out", "must be true or false, got string");
    refused("{\"optout\":true}", "optout", "unknown field");
    refused("{\"opt_out\":true,\"opt_out\":false}", "opt_out", "given twice");
    refused("{\"tz\":\"UTC\"}", "tz", "belongs to the user");
    refused("{\"categories\":[]}", "categories", "must be an object");
    refused("{\"categories\":{\"Mark\":{}}}", "categories.Mark", "category must be");
    refused("{\"categories\":{\"m\":{\"opt_out\":1}}}", "categories.m.opt_out",
            "must be true or false");
    refused("{\"categories\":{\"m\":{\"channels_off\":[\"sms\",\"fax\"]}}}",
            "categories.m.channels_off[1]", "unknown channel");
    refused("{\"categories\":{\"m\":{\"channels_off\":[\"sms\",\"sms\"]}}}",
            "categories.m.channels_off[1]", "given twice");
    refused("{\"categories\":{\"m\":{\"mute\":true}}}", "categories.m.mute", "unknown field");
    refused("{\"quiet_hours\":{\"start\":\"24:00\",\"end\":\"07:00\"}}", "quiet_hours.start",
            "HH:MM");
    refused("{\"quiet_hours\":{\"start\":\"22:00\"}}", "quiet_hours.end", "missing");
    refused("{\"quiet_hours\":{\"start\":\"22:00\",\"end\":\"22:00\"}}", "quiet_hours",
            "equal");
    refused("{\"quiet_hours\":{\"start\":\"22:00\",\"end\":\"07:00\",\"mode\":\"mute\"}}",
            "quiet_hours.mode", "hold");
    refused("{\"caps\":{\"news\":3}}", "caps.news", "must be an object");
    refused("{\"caps\":{\"news\":{\"max\":3}}}", "caps.news.window", "missing");
    refused("{\"caps\":{\"news\":{\"max\":-1,\"window\":\"1d\"}}}", "caps.news.max",
            "integer");
    refused("{\"caps\":{\"news\":{\"max\":1.5,\"window\":\"1d\"}}}", "caps.news.max",
            "integer");
    refused("{\"caps\":{\"news\":{\"max\":3,\"window\":\"1y\"}}}", "caps.news.window",
            "duration");
    refused("{\"caps\":{\"news\":{\"max\":3,\"window\":\"31d\"}}}", "caps.news.window",
            "1s..30d");
    refused("{\"fallback\":{}}", "fallback", "must be an array");
    refused("{\"fallback\":[]}", "fallback", "1..3 steps");
    refused("{\"fallback\":[{\"channel\":\"desktop\"}]}", "fallback[0].channel", "push");
    refused("{\"fallback\":[{\"channel\":\"push\",\"after\":\"1m\"}]}", "fallback[0].after",
            "first step");
    refused("{\"fallback\":[{\"channel\":\"push\"},{\"channel\":\"sms\"}]}", "fallback[1].after",
            "missing");
    refused("{\"fallback\":[{\"channel\":\"push\"},{\"channel\":\"push\",\"after\":\"1m\"}]}",
            "fallback[1].channel", "given twice");
    refused("{\"fallback\":[{\"channel\":\"push\"},{\"channel\":\"sms\",\"after\":\"30m\"},"
            "{\"channel\":\"email\",\"after\":\"10m\"}]}",
            "fallback[2].after", "not be earlier");
    refused("{\"fallback\":[{\"channel\":\"push\"},{\"channel\":\"sms\",\"after\":\"8d\"}]}",
            "fallback[1].after", "0s..7d");
    /* Too big. */
    size_t big = POLICY_PREFS_MAX + 10;
    char *b = malloc(big + 1);
    assert_non_null(b);
    memset(b, ' ', big);
    b[0] = '{';
    b[big - 1] = '}';
    b[big] = '\0';
    policy_prefs_t *p = NULL;
    struct policy_error e;
    assert_int_equal(policy_prefs_parse(b, big, &p, &e), TDG_ETOOBIG);
    free(b);

    int64_t ms;
    assert_int_equal(policy_parse_duration("90s", &ms), 0);
    assert_int_equal(ms, 90000);
    assert_int_equal(policy_parse_duration("2h", &ms), 0);
    assert_int_equal(ms, 7200000);
    assert_int_not_equal(policy_parse_duration("h", &ms), 0);
    assert_int_not_equal(policy_parse_duration("10", &ms), 0);
    assert_int_not_equal(policy_parse_duration("10mm", &ms), 0);
    assert_int_not_equal(policy_parse_duration("99999999999s", &ms), 0);
}

/* --- the agent snapshot object --------------------------------------------- */

static void test_snapshot_user(void **state)
{
    (void)state;
    policy_prefs_t *p = parse_ok(full);
    char out[2048];
    size_t len = 0;
    assert_int_equal(policy_snapshot_user(p, "Europe/Berlin", out, sizeof(out), &len), 0);
    assert_int_equal(len, strlen(out));
    cJSON *j = cJSON_Parse(out);
    assert_non_null(j);
    assert_string_equal(cJSON_GetObjectItem(j, "tz")->valuestring, "Europe/Berlin");
    assert_true(cJSON_IsFalse(cJSON_GetObjectItem(j, "opt_out")));
    cJSON *cats = cJSON_GetObjectItem(j, "categories");
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(cJSON_GetObjectItem(cats, "marketing"), "opt_out")));
    cJSON *off = cJSON_GetObjectItem(cJSON_GetObjectItem(cats, "security"), "channels_off");
    assert_int_equal(cJSON_GetArraySize(off), 2);
    assert_string_equal(cJSON_GetArrayItem(off, 0)->valuestring, "sms");
    assert_string_equal(cJSON_GetArrayItem(off, 1)->valuestring, "desktop");
    assert_null(cJSON_GetObjectItem(cats, "news")); /* only a cap: hub-only */
    assert_null(cJSON_GetObjectItem(j, "caps"));
    assert_null(cJSON_GetObjectItem(j, "fallback"));
    cJSON *q = cJSON_GetObjectItem(j, "quiet_hours");
    assert_string_equal(cJSON_GetObjectItem(q, "start")->valuestring, "22:00");
    assert_string_equal(cJSON_GetObjectItem(q, "end")->valuestring, "07:00");
    assert_string_equal(cJSON_GetObjectItem(q, "mode")->valuestring, "hold");
    cJSON_Delete(j);
    /* The user's object is itself valid preferences minus tz: the round
     * trip keeps every rule the agent applies. */
    policy_prefs_free(p);
    /* Bounded: too small a buffer is -ENOSPC and leaves out unchanged. */
    len = 0;
    out[0] = 'X';
    assert_int_equal(policy_snapshot_user(NULL, "UTC", out, 8, &len), -ENOSPC);
    assert_int_equal(len, 0);
    assert_int_equal(policy_snapshot_user(NULL, NULL, out, sizeof(out), &len), 0);
    assert_string_equal(out, "{\"tz\":\"UTC\"}");
}

/* --- deliver_at ------------------------------------------------------------ */

static void test_deliver_at(void **state)
{
    (void)state;
    tz_t *ny = NULL;
    assert_int_equal(tz_load("America/New_York", &ny), 0);
    struct notification *n = notif_json("{\"to\":\"user:a\",\"title\":\"t\","
                                        "\"deliver_at\":\"2026-11-22T08:00:00Z\"}");
    assert_int_equal(policy_deliver_at(n, ny), utc_ms(2026, 11, 22, 8, 0));
    notif_free(n);
    n = notif_json("{\"to\":\"user:a\",\"title\":\"t\",\"deliver_at\":\"2026-11-22T08:00\","
                   "\"tz\":\"user\"}");
    assert_int_equal(policy_deliver_at(n, ny), utc_ms(2026, 11, 22, 13, 0)); /* EST */
    assert_int_equal(policy_deliver_at(n, NULL), utc_ms(2026, 11, 22, 8, 0)); /* UTC */
    notif_free(n);
    /* In the spring gap: 02:30 on 2026-03-08 does not exist -> 03:00 EDT. */
    n = notif_json("{\"to\":\"user:a\",\"title\":\"t\",\"deliver_at\":\"2026-03-08T02:30\","
                   "\"tz\":\"user\"}");
    assert_int_equal(policy_deliver_at(n, ny), utc_ms(2026, 3, 8, 7, 0));
    notif_free(n);
    n = notif_json("{\"to\":\"user:a\",\"title\":\"t\"}");
    assert_int_equal(policy_deliver_at(n, ny), 0);
    notif_free(n);
    tz_free(ny);
}

/* --- caps in the store, on a simulated clock ------------------------------ */

static void test_caps_store(void **state)
{
    (void)state;
    char dir[] = "/tmp/test_hub_policy.XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof(path), "%s/hub.db", dir);
    store_t *s = NULL;
    char err[256];
    assert_int_equal(store_open(path, DB_SYNC_NORMAL, &s, err, sizeof(err)), 0);
    assert_int_equal(store_user_upsert(s, "alice", "Europe/Berlin", 1), 0);
    assert_int_equal(store_commit(s), 0);

    policy_prefs_t *p = parse_ok(full);
    int64_t max, win;
    assert_true(policy_cap(p, "news", &max, &win));
    int64_t t0 = utc_ms(2026, 6, 10, 8, 0); /* 10:00 CEST: outside quiet hours */
    /* Five news notifications an hour apart: 3 pass, 2 are capped. */
    int allowed = 0;
    for (int i = 0; i < 5; i++) {
        int64_t now = t0 + (int64_t)i * 3600000;
        int64_t count;
        assert_int_equal(store_cap_count(s, "alice", "news", now - win, &count), 0);
        struct policy_decision d =
            decide_tz(p, "Europe/Berlin", "news", NULL, PROTO_CH_PUSH, now, count);
        if (d.action == POLICY_ALLOW) {
            allowed++;
            char id[16];
            snprintf(id, sizeof(id), "n%d", i);
            assert_int_equal(store_cap_record(s, "alice", "news", id, now), 0);
        } else {
            EXPECT(d, POLICY_SUPPRESS, "cap:news");
        }
    }
    assert_int_equal(allowed, 3);
    /* A day after the first one, the window has room for one again. */
    int64_t now = t0 + win + 1;
    int64_t count;
    assert_int_equal(store_cap_count(s, "alice", "news", now - win, &count), 0);
    assert_int_equal(count, 2);
    EXPECT(decide_tz(p, "Europe/Berlin", "news", NULL, PROTO_CH_PUSH, now, count), POLICY_ALLOW,
           "allow");
    /* Other users and categories do not count. */
    assert_int_equal(store_cap_count(s, "bob", "news", 0, &count), 0);
    assert_int_equal(count, 0);
    assert_int_equal(store_cap_count(s, "alice", "orders", 0, &count), 0);
    assert_int_equal(count, 0);
    policy_prefs_free(p);

    /* Preferences through the store: validated, field named, revision grows. */
    int64_t r0, r1;
    assert_int_equal(store_policy_revision(s, &r0), 0);
    struct policy_error e;
    const char *bad = "{\"quiet_hours\":{\"start\":\"7\",\"end\":\"08:00\"}}";
    assert_int_equal(store_pref_set(s, "alice", bad, strlen(bad), t0, &e), TDG_EINVAL_INPUT);
    assert_string_equal(e.field, "quiet_hours.start");
    assert_int_equal(store_pref_set(s, "nobody", full, strlen(full), t0, &e), TDG_ENOTFOUND);
    assert_int_equal(store_pref_set(s, "alice", full, strlen(full), t0, &e), 0);
    assert_int_equal(store_commit(s), 0);
    assert_int_equal(store_policy_revision(s, &r1), 0);
    assert_int_equal(r1, r0 + 1);
    char buf[STORE_PREF_MAX];
    assert_int_equal(store_pref_get(s, "alice", buf, sizeof(buf)), 1);
    assert_string_equal(buf, full);
    assert_int_equal(store_pref_get(s, "alice", buf, 4), -ENOSPC);
    assert_int_equal(store_pref_get(s, "bob", buf, sizeof(buf)), 0);
    assert_string_equal(buf, "");
    assert_int_equal(store_pref_set(s, "alice", NULL, 0, t0, &e), 0);
    assert_int_equal(store_pref_get(s, "alice", buf, sizeof(buf)), 0);

    /* Decisions are listed per notification, in order. */
    struct store_decision d1 = {.notification_id = "n1", .user_id = "alice", .channel = "push",
                                .action = "hold", .rule = "quiet_hours", .until_ms = 5,
                                .at_ms = 1};
    struct store_decision d2 = {.notification_id = "n1", .user_id = "alice", .channel = "push",
                                .action = "allow", .rule = "allow", .at_ms = 6};
    assert_int_equal(store_decision_add(s, &d1), 0);
    assert_int_equal(store_decision_add(s, &d2), 0);
    assert_int_equal(store_commit(s), 0);
    assert_int_equal(store_decisions_of(s, "n1", NULL, NULL), 2);
    assert_int_equal(store_decisions_of(s, "n2", NULL, NULL), 0);
    store_close(s);
    static const char *const sfx[] = {"", "-wal", "-shm"};
    for (int i = 0; i < 3; i++) {
        char f[160];
        snprintf(f, sizeof(f), "%s%s", path, sfx[i]);
        unlink(f);
    }
    assert_int_equal(rmdir(dir), 0);
}

/* --- policy_plan: the planner's one function (fanout and --dry-run) ------- */

static void test_plan(void **state)
{
    (void)state;
    const unsigned PUSH = PROTO_CH_PUSH, SMS = PROTO_CH_SMS, MAIL = PROTO_CH_EMAIL;
    const int64_t now = utc_ms(2024, 1, 10, 12, 0);
    struct policy_plan pl;
    struct notification *nt = notif("orders", NULL);

    /* no preferences: every available class at once, nothing after */
    assert_int_equal(policy_plan(NULL, NULL, nt, PUSH | SMS, 0, false, 0, now, 0, &pl), 0);
    assert_int_equal(pl.n, 2);
    assert_int_equal(pl.items[0].channel, PROTO_CH_PUSH);
    assert_int_equal(pl.items[1].channel, PROTO_CH_SMS);
    assert_int_equal(pl.items[0].d.action, POLICY_ALLOW);
    assert_int_equal(pl.allowed, 2);
    assert_int_equal(pl.next, POLICY_PLAN_DONE);
    assert_int_equal(pl.nsteps, 0);

    /* a channel order: step 0 now, step 1 at first attempt + after */
    policy_prefs_t *p = parse_ok("{\"fallback\":[{\"channel\":\"push\"},{\"channel\":\"sms\","
                                 "\"after\":\"10m\"},{\"channel\":\"email\",\"after\":\"30m\"}]}");
    assert_int_equal(policy_plan(p, NULL, nt, PUSH | SMS | MAIL, 0, false, 0, now, 0, &pl), 0);
    assert_int_equal(pl.n, 1);
    assert_int_equal(pl.items[0].channel, PROTO_CH_PUSH);
    assert_int_equal(pl.items[0].step, 0);
    assert_int_equal(pl.next, POLICY_PLAN_FALLBACK);
    assert_int_equal(pl.step, 1);
    assert_int_equal(pl.at_ms, now + 600000);
    assert_int_equal(pl.started_ms, now);
    assert_int_equal(pl.first_step, 0);
    assert_int_equal(pl.visited, 1);
    /* ... the fallback timer resumes step 1; step 2 counts from step 0 */
    int64_t later = now + 600000;
    assert_int_equal(policy_plan(p, NULL, nt, PUSH | SMS | MAIL, 1, true, now, later, 0, &pl), 0);
    assert_int_equal(pl.n, 1);
    assert_int_equal(pl.items[0].channel, PROTO_CH_SMS);
    assert_int_equal(pl.items[0].step, 1);
    assert_int_equal(pl.next, POLICY_PLAN_FALLBACK);
    assert_int_equal(pl.step, 2);
    assert_int_equal(pl.at_ms, now + 1800000);
    /* no push endpoint: step 0 has nothing, step 1 runs at once */
    assert_int_equal(policy_plan(p, NULL, nt, SMS | MAIL, 0, false, 0, now, 0, &pl), 0);
    assert_int_equal(pl.n, 1);
    assert_int_equal(pl.items[0].channel, PROTO_CH_SMS);
    assert_int_equal(pl.items[0].step, 1);
    assert_int_equal(pl.visited, 2);
    assert_int_equal(pl.next, POLICY_PLAN_FALLBACK);
    assert_int_equal(pl.at_ms, now + 1800000);
    /* a step beyond the order (the order shrank meanwhile): nothing */
    assert_int_equal(policy_plan(p, NULL, nt, PUSH | SMS | MAIL, 5, true, now, now, 0, &pl), 0);
    assert_int_equal(pl.n, 0);
    assert_int_equal(pl.visited, 0);
    assert_int_equal(pl.next, POLICY_PLAN_DONE);
    /* the last step: done after it */
    assert_int_equal(policy_plan(p, NULL, nt, MAIL, 2, true, now, now, 0, &pl), 0);
    assert_int_equal(pl.n, 1);
    assert_int_equal(pl.next, POLICY_PLAN_DONE);
    policy_prefs_free(p);

    /* channel off for push: suppressed on step 0, step 1 at once */
    p = parse_ok("{\"categories\":{\"orders\":{\"channels_off\":[\"push\"]}},\"fallback\":[{"
                 "\"channel\":\"push\"},{\"channel\":\"sms\",\"after\":\"10m\"}]}");
    assert_int_equal(policy_plan(p, NULL, nt, PUSH | SMS, 0, false, 0, now, 0, &pl), 0);
    assert_int_equal(pl.n, 2);
    assert_int_equal(pl.items[0].d.action, POLICY_SUPPRESS);
    assert_string_equal(pl.items[0].d.rule, "channel_off:push");
    assert_int_equal(pl.items[1].d.action, POLICY_ALLOW);
    assert_int_equal(pl.items[1].step, 1);
    assert_true(pl.suppress);
    assert_int_equal(pl.next, POLICY_PLAN_DONE);
    policy_prefs_free(p);

    /* quiet hours (UTC 11:00-13:00): held until 13:00, step 0 kept */
    p = parse_ok("{\"quiet_hours\":{\"start\":\"11:00\",\"end\":\"13:00\",\"mode\":\"hold\"},"
                 "\"fallback\":[{\"channel\":\"push\"},{\"channel\":\"sms\",\"after\":\"1m\"}]}");
    assert_int_equal(policy_plan(p, NULL, nt, PUSH | SMS, 0, false, 0, now, 0, &pl), 0);
    assert_int_equal(pl.n, 1);
    assert_int_equal(pl.items[0].d.action, POLICY_HOLD);
    assert_int_equal(pl.next, POLICY_PLAN_HOLD);
    assert_int_equal(pl.step, 0);
    assert_int_equal(pl.at_ms, utc_ms(2024, 1, 10, 13, 0));
    assert_int_equal(pl.allowed, 0);
    policy_prefs_free(p);
    notif_free(nt);

    /* deliver_at ahead: wait, no decision; resumed by its timer: planned */
    nt = notif_json(
        "{\"to\":\"user:alice\",\"title\":\"x\",\"deliver_at\":\"2024-01-10T15:00:00Z\"}");
    assert_int_equal(policy_plan(NULL, NULL, nt, PUSH, 0, false, 0, now, 0, &pl), 0);
    assert_int_equal(pl.next, POLICY_PLAN_DELIVER_AT);
    assert_int_equal(pl.at_ms, utc_ms(2024, 1, 10, 15, 0));
    assert_int_equal(pl.n, 0);
    assert_int_equal(policy_plan(NULL, NULL, nt, PUSH, 0, true, 0, now, 0, &pl), 0);
    assert_int_equal(pl.n, 1);
    assert_int_equal(pl.items[0].d.action, POLICY_ALLOW);
    notif_free(nt);
    assert_int_equal(policy_plan(NULL, NULL, NULL, PUSH, 0, false, 0, now, 0, &pl),
                     TDG_EINVAL_INPUT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_rules_in_order, teardown),
        cmocka_unit_test_teardown(test_fallback_order, teardown),
        cmocka_unit_test_teardown(test_quiet_berlin_dst, teardown),
        cmocka_unit_test_teardown(test_quiet_new_york_dst, teardown),
        cmocka_unit_test_teardown(test_quiet_half_hour_zones, teardown),
        cmocka_unit_test_teardown(test_parse_errors, teardown),
        cmocka_unit_test_teardown(test_snapshot_user, teardown),
        cmocka_unit_test_teardown(test_deliver_at, teardown),
        cmocka_unit_test_teardown(test_caps_store, teardown),
        cmocka_unit_test(test_plan),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
