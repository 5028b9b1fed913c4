/* test_policy.c - preference snapshots, every rule, quiet hours across DST. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "error.h"
#include "policy.h"
#include "tz.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* --- helpers ------------------------------------------------------------- */

static int64_t utc_ms(int64_t y, int mo, int d, int h, int mi)
{
    return (tz_days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60) * 1000;
}

static policy_snapshot_t *parse_ok(const char *json)
{
    policy_snapshot_t *s = NULL;
    struct policy_error e;
    int rc = policy_snapshot_parse(json, strlen(json), &s, &e);
    if (rc != 0) {
        fail_msg("snapshot refused: %s: %s", e.field, e.detail);
    }
    return s;
}

static struct notification *notif(const char *category, const char *priority)
{
    char json[256];
    int n = snprintf(json, sizeof(json), "{\"to\":\"user:alice\",\"title\":\"hi\"%s%s%s%s%s%s}",
                     category ? ",\"category\":\"" : "", category ? category : "",
                     category ? "\"" : "", priority ? ",\"priority\":\"" : "",
                     priority ? priority : "", priority ? "\"" : "");
    struct notification *nt = calloc(1, sizeof(*nt));
    assert_non_null(nt);
    struct proto_error pe;
    if (proto_parse(json, (size_t)n, nt, &pe) != 0) {
        fail_msg("bad test notification %s: %s", json, pe.detail);
    }
    return nt;
}

static void notif_free(struct notification *nt)
{
    notification_free(nt);
    free(nt);
}

/* Decide for alice on the desktop channel and check action and rule. */
static struct policy_decision decide(const policy_snapshot_t *s, const char *user,
                                     const char *category, const char *priority,
                                     enum proto_channel ch, int64_t now)
{
    struct notification *nt = notif(category, priority);
    struct policy_decision d;
    assert_int_equal(policy_decide(s, nt, user, ch, now, &d), 0);
    notif_free(nt);
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

static const char *full_snapshot =
    "{\"v\":1,\"version\":7,\"users\":{"
    "\"alice\":{\"tz\":\"Europe/Berlin\",\"opt_out\":false,"
    "  \"categories\":{\"marketing\":{\"opt_out\":true},"
    "                  \"security\":{\"channels_off\":[\"sms\",\"desktop\"]},"
    "                  \"push_marketing\":{\"opt_out\":true},"
    "                  \"orders\":{\"opt_out\":false}},"
    "  \"quiet_hours\":{\"start\":\"22:00\",\"end\":\"07:00\",\"mode\":\"hold\"}},"
    "\"bob\":{\"tz\":\"America/New_York\",\"opt_out\":true},"
    "\"carol\":{\"tz\":\"America/New_York\","
    "  \"quiet_hours\":{\"start\":\"22:00\",\"end\":\"07:00\",\"mode\":\"drop\"}},"
    "\"dave\":{\"categories\":{\"push\":{\"opt_out\":true}}},"
    "\"erin\":{}"
    "},\"frequency_caps\":{\"marketing\":3}}";

static int teardown(void **state)
{
    (void)state;
    tz_cache_flush();
    return 0;
}

/* --- rules --------------------------------------------------------------- */

static void test_parse_full(void **state)
{
    (void)state;
    policy_snapshot_t *s = parse_ok(full_snapshot);
    assert_int_equal(policy_snapshot_version(s), 7);
    assert_int_equal(policy_snapshot_user_count(s), 5);
    policy_snapshot_free(s);
    s = parse_ok("{\"v\":1,\"version\":0,\"users\":{}}");
    assert_int_equal(policy_snapshot_user_count(s), 0);
    policy_snapshot_free(s);
    /* Whitespace around the object is fine; unknown fields at every level
     * are ignored (a newer hub may add some). */
    s = parse_ok(" \n{\"v\":1,\"version\":1,\"new\":[1,2],\"users\":{\"a\":{\"devices\":[],"
                 "\"categories\":{\"x\":{\"cap\":5}},\"quiet_hours\":{\"start\":\"01:00\","
                 "\"end\":\"02:00\",\"days\":[1]}}}}\r\n");
    policy_snapshot_free(s);
}

static void test_missing_preferences_allow(void **state)
{
    (void)state;
    int64_t now = utc_ms(2026, 6, 1, 12, 0);
    EXPECT(decide(NULL, "alice", "marketing", NULL, PROTO_CH_DESKTOP, now), POLICY_ALLOW,
           "no_preference");
    policy_snapshot_t *s = parse_ok(full_snapshot);
    EXPECT(decide(s, NULL, "marketing", NULL, PROTO_CH_DESKTOP, now), POLICY_ALLOW,
           "no_preference");
    EXPECT(decide(s, "", "marketing", NULL, PROTO_CH_DESKTOP, now), POLICY_ALLOW, "no_preference");
    EXPECT(decide(s, "zed", "marketing", NULL, PROTO_CH_DESKTOP, now), POLICY_ALLOW,
           "no_preference");
    /* A user with no preferences at all. */
    EXPECT(decide(s, "erin", "marketing", NULL, PROTO_CH_DESKTOP, now), POLICY_ALLOW, "allow");
    /* A category alice has no entry for, and no category. */
    EXPECT(decide(s, "alice", "billing", NULL, PROTO_CH_DESKTOP, now), POLICY_ALLOW, "allow");
    EXPECT(decide(s, "alice", NULL, NULL, PROTO_CH_DESKTOP, now), POLICY_ALLOW, "allow");
    /* An explicit opt_out:false is an allow. */
    EXPECT(decide(s, "alice", "orders", NULL, PROTO_CH_DESKTOP, now), POLICY_ALLOW, "allow");
    /* User ids are case-sensitive and exact. */
    EXPECT(decide(s, "Alice", "marketing", NULL, PROTO_CH_DESKTOP, now), POLICY_ALLOW,
           "no_preference");
    EXPECT(decide(s, "alic", "marketing", NULL, PROTO_CH_DESKTOP, now), POLICY_ALLOW,
           "no_preference");
    struct policy_decision d;
    assert_int_equal(policy_decide(s, NULL, "alice", PROTO_CH_DESKTOP, now, &d), TDG_EINVAL_INPUT);
    policy_snapshot_free(s);
}

static void test_opt_outs(void **state)
{
    (void)state;
    policy_snapshot_t *s = parse_ok(full_snapshot);
    int64_t now = utc_ms(2026, 6, 1, 12, 0); /* 14:00 in Berlin: no quiet hours */
    EXPECT(decide(s, "bob", "orders", NULL, PROTO_CH_DESKTOP, now), POLICY_SUPPRESS, "opt_out");
    EXPECT(decide(s, "bob", NULL, NULL, PROTO_CH_LOCAL, now), POLICY_SUPPRESS, "opt_out");
    /* Critical passes quiet hours only, not an opt-out. */
    EXPECT(decide(s, "bob", "security", "critical", PROTO_CH_DESKTOP, now), POLICY_SUPPRESS,
           "opt_out");
    EXPECT(decide(s, "alice", "marketing", NULL, PROTO_CH_DESKTOP, now), POLICY_SUPPRESS,
           "category_opt_out:marketing");
    EXPECT(decide(s, "alice", "marketing", "critical", PROTO_CH_LOCAL, now), POLICY_SUPPRESS,
           "category_opt_out:marketing");
    /* Channel off for one category: that channel only. */
    EXPECT(decide(s, "alice", "security", NULL, PROTO_CH_DESKTOP, now), POLICY_SUPPRESS,
           "channel_off:desktop");
    EXPECT(decide(s, "alice", "security", NULL, PROTO_CH_LOCAL, now), POLICY_ALLOW, "allow");
    EXPECT(decide(s, "alice", "orders", NULL, PROTO_CH_DESKTOP, now), POLICY_ALLOW, "allow");
    policy_snapshot_free(s);
}

static void test_substring_trap(void **state)
{
    (void)state;
    policy_snapshot_t *s = parse_ok(full_snapshot);
    int64_t now = utc_ms(2026, 6, 1, 12, 0);
    /* alice opted out of "push_marketing" and "marketing", not "push". */
    EXPECT(decide(s, "alice", "push", NULL, PROTO_CH_DESKTOP, now), POLICY_ALLOW, "allow");
    EXPECT(decide(s, "alice", "push_marketing", NULL, PROTO_CH_DESKTOP, now), POLICY_SUPPRESS,
           "category_opt_out:push_marketing");
    EXPECT(decide(s, "alice", "marketing2", NULL, PROTO_CH_DESKTOP, now), POLICY_ALLOW, "allow");
    EXPECT(decide(s, "alice", "market", NULL, PROTO_CH_DESKTOP, now), POLICY_ALLOW, "allow");
    /* dave opted out of "push" only. */
    EXPECT(decide(s, "dave", "push_marketing", NULL, PROTO_CH_DESKTOP, now), POLICY_ALLOW, "allow");
    EXPECT(decide(s, "dave", "pus", NULL, PROTO_CH_DESKTOP, now), POLICY_ALLOW, "allow");
    EXPECT(decide(s, "dave", "push", NULL, PROTO_CH_DESKTOP, now), POLICY_SUPPRESS,
           "category_opt_out:push");
    policy_snapshot_free(s);
}

/* --- quiet hours ---------------------------------------------------------- */

static policy_snapshot_t *quiet(const char *tz, const char *start, const char *end,
                                const char *mode)
{
    char json[512];
    snprintf(json, sizeof(json),
             "{\"v\":1,\"version\":1,\"users\":{\"u\":{\"tz\":\"%s\",\"quiet_hours\":"
             "{\"start\":\"%s\",\"end\":\"%s\",\"mode\":\"%s\"}}}}",
             tz, start, end, mode);
    return parse_ok(json);
}

static void expect_hold(const policy_snapshot_t *s, int64_t now, int64_t until, int line)
{
    struct policy_decision d = decide(s, "u", NULL, NULL, PROTO_CH_DESKTOP, now);
    if (d.action != POLICY_HOLD || strcmp(d.rule, "quiet_hours") != 0 || d.hold_until_ms != until) {
        fail_msg("line %d: got %s/%s until %lld, want hold until %lld", line,
                 policy_action_name(d.action), d.rule, (long long)d.hold_until_ms,
                 (long long)until);
    }
}

static void expect_allow(const policy_snapshot_t *s, int64_t now, int line)
{
    struct policy_decision d = decide(s, "u", NULL, NULL, PROTO_CH_DESKTOP, now);
    if (d.action != POLICY_ALLOW || strcmp(d.rule, "allow") != 0) {
        fail_msg("line %d: got %s/%s until %lld, want allow", line, policy_action_name(d.action),
                 d.rule, (long long)d.hold_until_ms);
    }
}

#define HOLD(s, now, until) expect_hold(s, now, until, __LINE__)
#define ALLOW(s, now) expect_allow(s, now, __LINE__)

static void test_quiet_same_day(void **state)
{
    (void)state;
    /* 13:00-14:00 Berlin (CEST in June: UTC+2). */
    policy_snapshot_t *s = quiet("Europe/Berlin", "13:00", "14:00", "hold");
    ALLOW(s, utc_ms(2026, 6, 1, 10, 59));
    HOLD(s, utc_ms(2026, 6, 1, 11, 0), utc_ms(2026, 6, 1, 12, 0));
    HOLD(s, utc_ms(2026, 6, 1, 11, 59), utc_ms(2026, 6, 1, 12, 0));
    ALLOW(s, utc_ms(2026, 6, 1, 12, 0));
    ALLOW(s, utc_ms(2026, 6, 1, 23, 0));
    policy_snapshot_free(s);
}

static void test_quiet_wraps_midnight(void **state)
{
    (void)state;
    /* 22:00-07:00 Berlin, CET in January (UTC+1). */
    policy_snapshot_t *s = quiet("Europe/Berlin", "22:00", "07:00", "hold");
    ALLOW(s, utc_ms(2026, 1, 15, 20, 59));                           /* 21:59 */
    HOLD(s, utc_ms(2026, 1, 15, 21, 0), utc_ms(2026, 1, 16, 6, 0));  /* 22:00 */
    HOLD(s, utc_ms(2026, 1, 15, 22, 30), utc_ms(2026, 1, 16, 6, 0)); /* 23:30 */
    HOLD(s, utc_ms(2026, 1, 15, 23, 0), utc_ms(2026, 1, 16, 6, 0));  /* 00:00 */
    HOLD(s, utc_ms(2026, 1, 16, 5, 59), utc_ms(2026, 1, 16, 6, 0));  /* 06:59 */
    ALLOW(s, utc_ms(2026, 1, 16, 6, 0));                             /* 07:00 */
    ALLOW(s, utc_ms(2026, 1, 16, 12, 0));
    /* Across a year boundary. */
    HOLD(s, utc_ms(2026, 12, 31, 23, 30), utc_ms(2027, 1, 1, 6, 0));
    policy_snapshot_free(s);
}

static void test_quiet_drop_and_critical(void **state)
{
    (void)state;
    policy_snapshot_t *s = parse_ok(full_snapshot);
    /* carol: New York, 22:00-07:00, drop. 2026-06-02 03:00Z = 23:00 EDT. */
    int64_t night = utc_ms(2026, 6, 2, 3, 0);
    struct policy_decision d = decide(s, "carol", "orders", NULL, PROTO_CH_DESKTOP, night);
    EXPECT(d, POLICY_DROP, "quiet_hours_drop");
    assert_int_equal(d.hold_until_ms, 0);
    assert_false(d.critical_bypass);
    EXPECT(decide(s, "carol", "orders", "high", PROTO_CH_LOCAL, night), POLICY_DROP,
           "quiet_hours_drop");
    d = decide(s, "carol", "orders", "critical", PROTO_CH_DESKTOP, night);
    EXPECT(d, POLICY_ALLOW, "critical_bypass");
    assert_true(d.critical_bypass);
    /* alice (hold) at night: critical passes and is marked; others wait. */
    int64_t berlin_night = utc_ms(2026, 6, 1, 22, 30); /* 00:30 CEST */
    d = decide(s, "alice", "security", "critical", PROTO_CH_LOCAL, berlin_night);
    EXPECT(d, POLICY_ALLOW, "critical_bypass");
    assert_true(d.critical_bypass);
    d = decide(s, "alice", "security", "high", PROTO_CH_LOCAL, berlin_night);
    EXPECT(d, POLICY_HOLD, "quiet_hours");
    assert_int_equal(d.hold_until_ms, utc_ms(2026, 6, 2, 5, 0));
    /* Critical outside quiet hours: a plain allow, not marked. */
    d = decide(s, "alice", "security", "critical", PROTO_CH_LOCAL, utc_ms(2026, 6, 1, 12, 0));
    EXPECT(d, POLICY_ALLOW, "allow");
    assert_false(d.critical_bypass);
    /* Opt-outs come before quiet hours. */
    EXPECT(decide(s, "alice", "marketing", NULL, PROTO_CH_DESKTOP, berlin_night), POLICY_SUPPRESS,
           "category_opt_out:marketing");
    policy_snapshot_free(s);
}

static void test_quiet_berlin_dst(void **state)
{
    (void)state;
    policy_snapshot_t *s = quiet("Europe/Berlin", "22:00", "07:00", "hold");
    /* Night into 2026-03-29 (CET -> CEST at 01:00Z): 23:00 CET = 22:00Z;
     * the window ends 07:00 CEST = 05:00Z, not 06:00Z. */
    HOLD(s, utc_ms(2026, 3, 28, 22, 0), utc_ms(2026, 3, 29, 5, 0));
    HOLD(s, utc_ms(2026, 3, 29, 1, 0), utc_ms(2026, 3, 29, 5, 0)); /* 03:00 CEST */
    ALLOW(s, utc_ms(2026, 3, 29, 5, 0));
    /* The evening after: 22:00 CEST = 20:00Z. */
    ALLOW(s, utc_ms(2026, 3, 29, 19, 59));
    HOLD(s, utc_ms(2026, 3, 29, 20, 0), utc_ms(2026, 3, 30, 5, 0));
    /* Night into 2026-10-25 (CEST -> CET at 01:00Z): starts 22:00 CEST =
     * 20:00Z, ends 07:00 CET = 06:00Z (a 10-hour night). */
    ALLOW(s, utc_ms(2026, 10, 24, 19, 59));
    HOLD(s, utc_ms(2026, 10, 24, 20, 0), utc_ms(2026, 10, 25, 6, 0));
    HOLD(s, utc_ms(2026, 10, 25, 1, 30), utc_ms(2026, 10, 25, 6, 0));
    HOLD(s, utc_ms(2026, 10, 25, 5, 59), utc_ms(2026, 10, 25, 6, 0));
    ALLOW(s, utc_ms(2026, 10, 25, 6, 0));
    policy_snapshot_free(s);

    /* A start inside the spring gap (02:30 does not exist on 03-29): the
     * window starts when the clock jumps, 03:00 CEST = 01:00Z. */
    s = quiet("Europe/Berlin", "02:30", "04:00", "hold");
    ALLOW(s, utc_ms(2026, 3, 29, 0, 59)); /* 01:59 CET */
    HOLD(s, utc_ms(2026, 3, 29, 1, 0), utc_ms(2026, 3, 29, 2, 0));
    ALLOW(s, utc_ms(2026, 3, 29, 2, 0));
    /* An ordinary day: 02:30 CEST = 00:30Z. */
    HOLD(s, utc_ms(2026, 4, 5, 0, 30), utc_ms(2026, 4, 5, 2, 0));
    policy_snapshot_free(s);

    /* An end inside the autumn overlap (02:30 happens twice on 10-25): the
     * window ends the first time the clock shows 02:30 (CEST, 00:30Z). */
    s = quiet("Europe/Berlin", "22:00", "02:30", "hold");
    HOLD(s, utc_ms(2026, 10, 24, 23, 0), utc_ms(2026, 10, 25, 0, 30));
    ALLOW(s, utc_ms(2026, 10, 25, 0, 45)); /* 02:45 CEST */
    ALLOW(s, utc_ms(2026, 10, 25, 1, 15)); /* 02:15 CET, the second pass */
    policy_snapshot_free(s);

    /* A start inside the overlap: from the first 02:15 (CEST, 00:15Z) on,
     * without a hole when the clock goes back (02:05 CET is still inside). */
    s = quiet("Europe/Berlin", "02:15", "05:00", "hold");
    ALLOW(s, utc_ms(2026, 10, 25, 0, 10));
    HOLD(s, utc_ms(2026, 10, 25, 0, 20), utc_ms(2026, 10, 25, 4, 0));
    HOLD(s, utc_ms(2026, 10, 25, 1, 5), utc_ms(2026, 10, 25, 4, 0));
    ALLOW(s, utc_ms(2026, 10, 25, 4, 0));
    policy_snapshot_free(s);
}

static void test_quiet_new_york_dst(void **state)
{
    (void)state;
    policy_snapshot_t *s = quiet("America/New_York", "22:00", "07:00", "hold");
    /* Night into 2026-03-08: 22:00 EST = 03:00Z; ends 07:00 EDT = 11:00Z. */
    ALLOW(s, utc_ms(2026, 3, 8, 2, 59));
    HOLD(s, utc_ms(2026, 3, 8, 3, 0), utc_ms(2026, 3, 8, 11, 0));
    HOLD(s, utc_ms(2026, 3, 8, 7, 30), utc_ms(2026, 3, 8, 11, 0)); /* 03:30 EDT */
    ALLOW(s, utc_ms(2026, 3, 8, 11, 0));
    /* Night into 2026-11-01: 22:00 EDT = 02:00Z; ends 07:00 EST = 12:00Z. */
    HOLD(s, utc_ms(2026, 11, 1, 2, 30), utc_ms(2026, 11, 1, 12, 0));
    HOLD(s, utc_ms(2026, 11, 1, 6, 30), utc_ms(2026, 11, 1, 12, 0)); /* 01:30 EST */
    ALLOW(s, utc_ms(2026, 11, 1, 12, 0));
    policy_snapshot_free(s);

    /* 01:00-02:00 on 2026-11-01: from the first 01:00 (EDT, 05:00Z) to
     * 02:00 EST (07:00Z): two real hours. */
    s = quiet("America/New_York", "01:00", "02:00", "hold");
    ALLOW(s, utc_ms(2026, 11, 1, 4, 59));
    HOLD(s, utc_ms(2026, 11, 1, 5, 0), utc_ms(2026, 11, 1, 7, 0));
    HOLD(s, utc_ms(2026, 11, 1, 6, 30), utc_ms(2026, 11, 1, 7, 0));
    ALLOW(s, utc_ms(2026, 11, 1, 7, 0));
    policy_snapshot_free(s);

    /* 02:00-03:00 on 2026-03-08 lies entirely in the gap: no quiet time. */
    s = quiet("America/New_York", "02:00", "03:00", "hold");
    ALLOW(s, utc_ms(2026, 3, 8, 6, 59));
    ALLOW(s, utc_ms(2026, 3, 8, 7, 0));
    HOLD(s, utc_ms(2026, 3, 9, 6, 30), utc_ms(2026, 3, 9, 7, 0)); /* next day, EDT */
    policy_snapshot_free(s);
}

static void test_quiet_half_hour_zones(void **state)
{
    (void)state;
    policy_snapshot_t *s = quiet("Asia/Kolkata", "22:30", "06:30", "hold");
    ALLOW(s, utc_ms(2026, 6, 1, 16, 59));                         /* 22:29 IST */
    HOLD(s, utc_ms(2026, 6, 1, 17, 0), utc_ms(2026, 6, 2, 1, 0)); /* 22:30 IST */
    ALLOW(s, utc_ms(2026, 6, 2, 1, 0));
    policy_snapshot_free(s);
    /* Adelaide, DST ends 2026-04-05 03:00 ACDT: the window 22:00-07:00
     * starts 22:00 ACDT (11:30Z) and ends 07:00 ACST (21:30Z). */
    s = quiet("Australia/Adelaide", "22:00", "07:00", "hold");
    HOLD(s, utc_ms(2026, 4, 4, 11, 30), utc_ms(2026, 4, 4, 21, 30));
    ALLOW(s, utc_ms(2026, 4, 4, 21, 30));
    policy_snapshot_free(s);
}

static void test_tz_fallback(void **state)
{
    (void)state;
    /* A valid name this box does not have: accepted, quiet hours in UTC. */
    policy_snapshot_t *s = quiet("Mars/Olympus_Mons", "22:00", "07:00", "hold");
    struct policy_decision d =
        decide(s, "u", NULL, NULL, PROTO_CH_DESKTOP, utc_ms(2026, 6, 1, 23, 0));
    EXPECT(d, POLICY_HOLD, "quiet_hours");
    assert_true(d.tz_fallback);
    assert_int_equal(d.hold_until_ms, utc_ms(2026, 6, 2, 7, 0));
    d = decide(s, "u", NULL, NULL, PROTO_CH_DESKTOP, utc_ms(2026, 6, 1, 12, 0));
    EXPECT(d, POLICY_ALLOW, "allow");
    assert_true(d.tz_fallback);
    policy_snapshot_free(s);
    /* No tz at all means UTC, and is not a fallback. */
    s = parse_ok("{\"v\":1,\"version\":1,\"users\":{\"u\":{\"quiet_hours\":"
                 "{\"start\":\"22:00\",\"end\":\"07:00\"}}}}");
    d = decide(s, "u", NULL, NULL, PROTO_CH_DESKTOP, utc_ms(2026, 6, 1, 23, 0));
    EXPECT(d, POLICY_HOLD, "quiet_hours"); /* mode defaults to hold */
    assert_false(d.tz_fallback);
    assert_int_equal(d.hold_until_ms, utc_ms(2026, 6, 2, 7, 0));
    policy_snapshot_free(s);
}

/* --- malformed snapshots --------------------------------------------------- */

struct bad_case {
    const char *json;
    const char *field;
};

static void test_malformed(void **state)
{
    (void)state;
    static const struct bad_case cases[] = {
        {"", ""},
        {"{", ""},
        {"{\"v\":1,\"version\":1,\"users\":{}} x", ""},
        {"[]", ""},
        {"null", ""},
        {"{\"version\":1,\"users\":{}}", "v"},
        {"{\"v\":2,\"version\":1,\"users\":{}}", "v"},
        {"{\"v\":\"1\",\"version\":1,\"users\":{}}", "v"},
        {"{\"v\":1,\"users\":{}}", "version"},
        {"{\"v\":1,\"version\":-1,\"users\":{}}", "version"},
        {"{\"v\":1,\"version\":1.5,\"users\":{}}", "version"},
        {"{\"v\":1,\"version\":\"3\",\"users\":{}}", "version"},
        {"{\"v\":1,\"version\":1e300,\"users\":{}}", "version"},
        {"{\"v\":1,\"version\":1}", "users"},
        {"{\"v\":1,\"version\":1,\"users\":[]}", "users"},
        {"{\"v\":1,\"version\":1,\"users\":null}", "users"},
        {"{\"v\":1,\"v\":1,\"version\":1,\"users\":{}}", "v"},
        {"{\"v\":1,\"version\":1,\"users\":{\"al ice\":{}}}", "users.al ice"},
        {"{\"v\":1,\"version\":1,\"users\":{\"\":{}}}", "users."},
        {"{\"v\":1,\"version\":1,\"users\":{\"alice\":1}}", "users.alice"},
        {"{\"v\":1,\"version\":1,\"users\":{\"alice\":{},\"alice\":{}}}", "users.alice"},
        {"{\"v\":1,\"version\":1,\"users\":{\"alice\":{\"opt_out\":true,\"opt_out\":false}}}",
         "users.alice"},
        {"{\"v\":1,\"version\":1,\"users\":{\"alice\":{\"opt_out\":\"yes\"}}}",
         "users.alice.opt_out"},
        {"{\"v\":1,\"version\":1,\"users\":{\"alice\":{\"opt_out\":1}}}", "users.alice.opt_out"},
        {"{\"v\":1,\"version\":1,\"users\":{\"alice\":{\"tz\":5}}}", "users.alice.tz"},
        {"{\"v\":1,\"version\":1,\"users\":{\"alice\":{\"tz\":\"../../etc/passwd\"}}}",
         "users.alice.tz"},
        {"{\"v\":1,\"version\":1,\"users\":{\"alice\":{\"tz\":\"/etc/localtime\"}}}",
         "users.alice.tz"},
        {"{\"v\":1,\"version\":1,\"users\":{\"alice\":{\"tz\":\"\"}}}", "users.alice.tz"},
        {"{\"v\":1,\"version\":1,\"users\":{\"alice\":{\"categories\":[]}}}",
         "users.alice.categories"},
        {"{\"v\":1,\"version\":1,\"users\":{\"alice\":{\"categories\":{\"Marketing\":{}}}}}",
         "users.alice.categories.Marketing"},
        {"{\"v\":1,\"version\":1,\"users\":{\"alice\":{\"categories\":"
         "{\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\":{}}}}}",
         "users.alice.categories.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"},
        {"{\"v\":1,\"version\":1,\"users\":{\"alice\":{\"categories\":{\"m\":true}}}}",
         "users.alice.categories.m"},
        {"{\"v\":1,\"version\":1,\"users\":{\"alice\":{\"categories\":{\"m\":{},\"m\":{}}}}}",
         "users.alice.categories.m"},
        {"{\"v\":1,\"version\":1,\"users\":{\"alice\":{\"categories\":"
         "{\"m\":{\"opt_out\":\"true\"}}}}}",
         "users.alice.categories.m.opt_out"},
        {"{\"v\":1,\"version\":1,\"users\":{\"alice\":{\"categories\":"
         "{\"m\":{\"channels_off\":\"sms\"}}}}}",
         "users.alice.categories.m.channels_off"},
        {"{\"v\":1,\"version\":1,\"users\":{\"alice\":{\"categories\":"
         "{\"m\":{\"channels_off\":[1]}}}}}",
         "users.alice.categories.m.channels_off[0]"},
        {"{\"v\":1,\"version\":1,\"users\":{\"alice\":{\"categories\":"
         "{\"m\":{\"channels_off\":[\"sms\",\"fax\"]}}}}}",
         "users.alice.categories.m.channels_off[1]"},
        {"{\"v\":1,\"version\":1,\"users\":{\"alice\":{\"categories\":"
         "{\"m\":{\"channels_off\":[\"sms\",\"sms\"]}}}}}",
         "users.alice.categories.m.channels_off[1]"},
        {"{\"v\":1,\"version\":1,\"users\":{\"alice\":{\"categories\":"
         "{\"m\":{\"channels_off\":[\"SMS\"]}}}}}",
         "users.alice.categories.m.channels_off[0]"},
        {"{\"v\":1,\"version\":1,\"users\":{\"alice\":{\"quiet_hours\":\"22-7\"}}}",
         "users.alice.quiet_hours"},
        {"{\"v\":1,\"version\":1,\"users\":{\"alice\":{\"quiet_hours\":{\"end\":\"07:00\"}}}}",
         "users.alice.quiet_hours.start"},
        {"{\"v\":1,\"version\":1,\"users\":{\"alice\":{\"quiet_hours\":{\"start\":\"22:00\"}}}}",
         "users.alice.quiet_hours.end"},
        {"{\"v\":1,\"version\":1,\"users\":{\"alice\":{\"quiet_hours\":"
         "{\"start\":\"24:00\",\"end\":\"07:00\"}}}}",
         "users.alice.quiet_hours.start"},
        {"{\"v\":1,\"version\":1,\"users\":{\"alice\":{\"quiet_hours\":"
         "{\"start\":\"7:00\",\"end\":\"08:00\"}}}}",
         "users.alice.quiet_hours.start"},
        {"{\"v\":1,\"version\":1,\"users\":{\"alice\":{\"quiet_hours\":"
         "{\"start\":\"22:00\",\"end\":\"07:60\"}}}}",
         "users.alice.quiet_hours.end"},
        {"{\"v\":1,\"version\":1,\"users\":{\"alice\":{\"quiet_hours\":"
         "{\"start\":\"22:00\",\"end\":700}}}}",
         "users.alice.quiet_hours.end"},
        {"{\"v\":1,\"version\":1,\"users\":{\"alice\":{\"quiet_hours\":"
         "{\"start\":\"22:00\",\"end\":\"07:00:00\"}}}}",
         "users.alice.quiet_hours.end"},
        {"{\"v\":1,\"version\":1,\"users\":{\"alice\":{\"quiet_hours\":"
         "{\"start\":\"22:00\",\"end\":\"07:00\",\"mode\":\"snooze\"}}}}",
         "users.alice.quiet_hours.mode"},
        {"{\"v\":1,\"version\":1,\"users\":{\"alice\":{\"quiet_hours\":"
         "{\"start\":\"22:00\",\"end\":\"07:00\",\"mode\":1}}}}",
         "users.alice.quiet_hours.mode"},
        {"{\"v\":1,\"version\":1,\"users\":{\"alice\":{\"quiet_hours\":"
         "{\"start\":\"22:00\",\"end\":\"22:00\"}}}}",
         "users.alice.quiet_hours"},
        {"{\"v\":1,\"version\":1,\"users\":{\"alice\":{\"quiet_hours\":"
         "{\"start\":\"22:00\",\"start\":\"23:00\",\"end\":\"07:00\"}}}}",
         "users.alice.quiet_hours"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        policy_snapshot_t *s = (policy_snapshot_t *)1;
        struct policy_error e;
        int rc = policy_snapshot_parse(cases[i].json, strlen(cases[i].json), &s, &e);
        if (rc != TDG_EINVAL_INPUT || s != NULL || strcmp(e.field, cases[i].field) != 0 ||
            e.detail[0] == '\0') {
            fail_msg("case %zu %s: rc=%d field='%s' detail='%s' (want field '%s')", i,
                     cases[i].json, rc, e.field, e.detail, cases[i].field);
        }
    }
}

static void test_bounds(void **state)
{
    (void)state;
    /* Over the size limit. */
    size_t big = POLICY_SNAPSHOT_MAX + 1;
    char *buf = malloc(big);
    assert_non_null(buf);
    memset(buf, ' ', big);
    policy_snapshot_t *s = NULL;
    struct policy_error e;
    assert_int_equal(policy_snapshot_parse(buf, big, &s, &e), TDG_ETOOBIG);
    assert_null(s);
    free(buf);

    /* POLICY_USERS_MAX users pass, one more does not. */
    size_t cap = 64 + (POLICY_USERS_MAX + 1) * 24;
    buf = malloc(cap);
    assert_non_null(buf);
    for (int extra = 0; extra <= 1; extra++) {
        size_t n = (size_t)snprintf(buf, cap, "{\"v\":1,\"version\":1,\"users\":{");
        for (int i = 0; i < POLICY_USERS_MAX + extra; i++) {
            n += (size_t)snprintf(buf + n, cap - n, "%s\"user%d\":{}", i ? "," : "", i);
        }
        n += (size_t)snprintf(buf + n, cap - n, "}}");
        int rc = policy_snapshot_parse(buf, n, &s, &e);
        if (extra) {
            assert_int_equal(rc, TDG_EINVAL_INPUT);
            assert_string_equal(e.field, "users");
        } else {
            assert_int_equal(rc, 0);
            assert_int_equal(policy_snapshot_user_count(s), POLICY_USERS_MAX);
            struct notification *nt = notif(NULL, NULL);
            struct policy_decision d;
            assert_int_equal(policy_decide(s, nt, "user517", PROTO_CH_LOCAL, 0, &d), 0);
            assert_string_equal(d.rule, "allow");
            assert_int_equal(policy_decide(s, nt, "user5170", PROTO_CH_LOCAL, 0, &d), 0);
            assert_string_equal(d.rule, "no_preference");
            notif_free(nt);
            policy_snapshot_free(s);
        }
    }
    /* POLICY_CATEGORIES_MAX + 1 categories. */
    size_t n = (size_t)snprintf(buf, cap,
                                "{\"v\":1,\"version\":1,\"users\":{\"a\":{"
                                "\"categories\":{");
    for (int i = 0; i <= POLICY_CATEGORIES_MAX; i++) {
        n += (size_t)snprintf(buf + n, cap - n, "%s\"c%d\":{}", i ? "," : "", i);
    }
    n += (size_t)snprintf(buf + n, cap - n, "}}}}");
    assert_int_equal(policy_snapshot_parse(buf, n, &s, &e), TDG_EINVAL_INPUT);
    assert_string_equal(e.field, "users.a.categories");
    free(buf);
    /* Not NUL-terminated input: only len bytes are read. */
    const char *txt = "{\"v\":1,\"version\":3,\"users\":{}}GARBAGE";
    assert_int_equal(policy_snapshot_parse(txt, strlen(txt) - 7, &s, &e), 0);
    assert_int_equal(policy_snapshot_version(s), 3);
    policy_snapshot_free(s);
}

/* --- store ------------------------------------------------------------------ */

static void test_store(void **state)
{
    (void)state;
    char dir[] = "/tmp/tidings-policy-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof(path), "%s/policy.db", dir);
    char err[256];
    policy_store_t *st = NULL;
    assert_int_equal(policy_store_open(path, DB_SYNC_NORMAL, &st, err, sizeof(err)), 0);
    policy_snapshot_t *s = (policy_snapshot_t *)1;
    assert_int_equal(policy_store_load(st, &s), 0);
    assert_null(s); /* nothing stored yet */

    struct policy_error e;
    bool changed = false;
    assert_int_equal(
        policy_store_accept(st, full_snapshot, strlen(full_snapshot), 1000, &s, &changed, &e), 0);
    assert_true(changed);
    assert_int_equal(policy_snapshot_version(s), 7);
    policy_snapshot_free(s);
    /* The retained message again: nothing to write. */
    assert_int_equal(
        policy_store_accept(st, full_snapshot, strlen(full_snapshot), 2000, &s, &changed, &e), 0);
    assert_false(changed);
    policy_snapshot_free(s);
    /* A bad snapshot is refused and the stored one stays. */
    const char *bad = "{\"v\":1,\"version\":8,\"users\":{\"x\":{\"tz\":3}}}";
    s = NULL;
    assert_int_equal(policy_store_accept(st, bad, strlen(bad), 3000, &s, &changed, &e),
                     TDG_EINVAL_INPUT);
    assert_null(s);
    assert_false(changed);
    assert_string_equal(e.field, "users.x.tz");
    policy_store_close(st);

    /* After a restart the last accepted snapshot decides as before. */
    assert_int_equal(policy_store_open(path, DB_SYNC_NORMAL, &st, err, sizeof(err)), 0);
    assert_int_equal(policy_store_load(st, &s), 0);
    assert_non_null(s);
    assert_int_equal(policy_snapshot_version(s), 7);
    EXPECT(decide(s, "alice", "marketing", NULL, PROTO_CH_DESKTOP, utc_ms(2026, 6, 1, 12, 0)),
           POLICY_SUPPRESS, "category_opt_out:marketing");
    policy_snapshot_free(s);
    /* A lower version is still taken (logged): the hub is the authority. */
    const char *older = "{\"v\":1,\"version\":2,\"users\":{}}";
    assert_int_equal(policy_store_accept(st, older, strlen(older), 4000, &s, &changed, &e), 0);
    assert_true(changed);
    assert_int_equal(policy_snapshot_version(s), 2);
    policy_snapshot_free(s);
    assert_int_equal(policy_store_load(st, &s), 0);
    assert_int_equal(policy_snapshot_version(s), 2);
    policy_snapshot_free(s);
    policy_store_close(st);
    policy_store_close(NULL);

    /* A file that is not a database: a clear error naming it, not a reset. */
    char junk[128];
    snprintf(junk, sizeof(junk), "%s/junk.db", dir);
    int fd = open(junk, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    char garbage[4096];
    memset(garbage, 'x', sizeof(garbage));
    assert_int_equal(write(fd, garbage, sizeof(garbage)), (ssize_t)sizeof(garbage));
    close(fd);
    st = NULL;
    assert_true(policy_store_open(junk, DB_SYNC_NORMAL, &st, err, sizeof(err)) < 0);
    assert_null(st);
    assert_non_null(strstr(err, "junk.db"));

    const char *suffix[] = {"", "-wal", "-shm"};
    for (int i = 0; i < 3; i++) {
        char p[160];
        snprintf(p, sizeof(p), "%s%s", path, suffix[i]);
        unlink(p);
        snprintf(p, sizeof(p), "%s%s", junk, suffix[i]);
        unlink(p);
    }
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_full),
        cmocka_unit_test(test_missing_preferences_allow),
        cmocka_unit_test(test_opt_outs),
        cmocka_unit_test(test_substring_trap),
        cmocka_unit_test(test_quiet_same_day),
        cmocka_unit_test(test_quiet_wraps_midnight),
        cmocka_unit_test(test_quiet_drop_and_critical),
        cmocka_unit_test(test_quiet_berlin_dst),
        cmocka_unit_test(test_quiet_new_york_dst),
        cmocka_unit_test(test_quiet_half_hour_zones),
        cmocka_unit_test(test_tz_fallback),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_bounds),
        cmocka_unit_test(test_store),
    };
    return cmocka_run_group_tests(tests, NULL, teardown);
}
