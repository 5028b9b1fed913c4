/* test_prefs.c - the preference fields and rules agent and hub share
 * (proto/prefs.h): parsing strict and lenient, the JSON writers read back,
 * the rules in order, quiet hours across DST, deliver_at in a zone. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "error.h"
#include "prefs.h"
#include "tz.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- helpers ------------------------------------------------------------- */

static int64_t utc_ms(int64_t y, int mo, int d, int h, int mi)
{
    return (tz_days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60) * 1000;
}

static cJSON *json(const char *text)
{
    cJSON *j = NULL;
    struct policy_error e;
    if (prefs_json_parse(text, strlen(text), &j, &e) != 0) {
        fail_msg("bad test JSON %s: %s", text, e.detail);
    }
    return j;
}

static struct notification *notif_json(const char *text)
{
    struct notification *nt = calloc(1, sizeof(*nt));
    assert_non_null(nt);
    struct proto_error pe;
    if (proto_parse(text, strlen(text), nt, &pe) != 0) {
        fail_msg("bad test notification %s: %s", text, pe.detail);
    }
    return nt;
}

static struct notification *notif(const char *category, bool critical)
{
    char text[256];
    snprintf(text, sizeof(text), "{\"to\":\"user:a\",\"title\":\"t\"%s%s%s%s}",
             category ? ",\"category\":\"" : "", category ? category : "", category ? "\"" : "",
             critical ? ",\"priority\":\"critical\"" : "");
    return notif_json(text);
}

static void notif_free(struct notification *nt)
{
    notification_free(nt);
    free(nt);
}

/* Parse the first member of the object text as a category at path. */
static int category(const char *text, bool strict, struct prefs_category *out,
                    struct policy_error *e)
{
    cJSON *j = json(text);
    memset(out, 0, sizeof(*out));
    memset(e, 0, sizeof(*e));
    char path[sizeof(e->field)];
    prefs_path(path, "categories.", j->child->string, NULL);
    int rc = prefs_parse_category(j->child, path, strict, out, e);
    cJSON_Delete(j);
    return rc;
}

static int quiet(const char *text, bool strict, struct prefs_quiet *out, struct policy_error *e)
{
    cJSON *j = json(text);
    memset(out, 0, sizeof(*out));
    memset(e, 0, sizeof(*e));
    int rc = prefs_parse_quiet(j, "quiet_hours", strict, out, e);
    cJSON_Delete(j);
    return rc;
}

#define ERR(rc, e, f, detail_part)                                                                 \
    do {                                                                                           \
        assert_int_equal((rc), TDG_EINVAL_INPUT);                                                  \
        assert_string_equal((e).field, (f));                                                       \
        assert_non_null(strstr((e).detail, (detail_part)));                                        \
    } while (0)

/* --- parsing ------------------------------------------------------------- */

static void test_hhmm(void **state)
{
    (void)state;
    int m = -1;
    assert_int_equal(prefs_parse_hhmm("00:00", &m), 0);
    assert_int_equal(m, 0);
    assert_int_equal(prefs_parse_hhmm("23:59", &m), 0);
    assert_int_equal(m, 23 * 60 + 59);
    assert_int_equal(prefs_parse_hhmm("07:30", &m), 0);
    assert_int_equal(m, 450);
    static const char *const bad[] = {"24:00", "07:60", "7:00", "07:000", "07-00",
                                      "0a:00", "",      "07:0", " 7:00",  "-1:00"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        m = -1;
        assert_int_equal(prefs_parse_hhmm(bad[i], &m), TDG_EINVAL_INPUT);
        assert_int_equal(m, -1); /* untouched */
    }
}

static void test_category_fields(void **state)
{
    (void)state;
    struct prefs_category c;
    struct policy_error e;
    assert_int_equal(category("{\"news\":{\"opt_out\":true,\"channels_off\":[\"sms\",\"local\"]}}",
                              true, &c, &e),
                     0);
    assert_string_equal(c.name, "news");
    assert_true(c.opt_out);
    assert_int_equal(c.channels_off, PROTO_CH_SMS | PROTO_CH_LOCAL);
    assert_int_equal(category("{\"news\":{}}", true, &c, &e), 0);
    assert_false(c.opt_out);
    assert_int_equal(c.channels_off, 0);

    ERR(category("{\"News\":{}}", true, &c, &e), e, "categories.News", "category must be");
    ERR(category("{\"news\":[]}", true, &c, &e), e, "categories.news", "got array");
    ERR(category("{\"news\":{\"opt_out\":1}}", true, &c, &e), e, "categories.news.opt_out",
        "must be true or false, got number");
    ERR(category("{\"news\":{\"channels_off\":\"sms\"}}", true, &c, &e), e,
        "categories.news.channels_off", "must be an array, got string");
    ERR(category("{\"news\":{\"channels_off\":[\"sms\",\"fax\"]}}", true, &c, &e), e,
        "categories.news.channels_off[1]", "unknown channel");
    ERR(category("{\"news\":{\"channels_off\":[\"sms\",2]}}", true, &c, &e), e,
        "categories.news.channels_off[1]", "must be a string, got number");
    ERR(category("{\"news\":{\"channels_off\":[\"sms\",\"email\",\"sms\"]}}", true, &c, &e), e,
        "categories.news.channels_off[2]", "channel given twice");
}

/* Strict (the hub's documents) refuses unknown members and names the
 * duplicate member; lenient (the agent's snapshot) ignores unknown members
 * and names the object. */
static void test_strict_and_lenient(void **state)
{
    (void)state;
    struct prefs_category c;
    struct prefs_quiet q;
    struct policy_error e;
    ERR(category("{\"news\":{\"opt_out\":true,\"opt_ot\":true}}", true, &c, &e), e,
        "categories.news.opt_ot", "unknown field");
    assert_int_equal(category("{\"news\":{\"opt_out\":true,\"later\":1}}", false, &c, &e), 0);
    assert_true(c.opt_out);
    ERR(category("{\"news\":{\"opt_out\":true,\"opt_out\":false}}", true, &c, &e), e,
        "categories.news.opt_out", "given twice");
    ERR(category("{\"news\":{\"opt_out\":true,\"opt_out\":false}}", false, &c, &e), e,
        "categories.news", "key 'opt_out' given twice");

    ERR(quiet("{\"start\":\"22:00\",\"end\":\"07:00\",\"moed\":\"drop\"}", true, &q, &e), e,
        "quiet_hours.moed", "unknown field");
    assert_int_equal(quiet("{\"start\":\"22:00\",\"end\":\"07:00\",\"x\":1}", false, &q, &e), 0);
    assert_true(q.set);
    ERR(quiet("{\"start\":\"22:00\",\"start\":\"21:00\",\"end\":\"07:00\"}", false, &q, &e), e,
        "quiet_hours", "key 'start' given twice");

    /* The top level ("" path) names the member alone. */
    cJSON *j = json("{\"a\":1,\"b\":2}");
    static const char *const known[] = {"a", NULL};
    ERR(prefs_check_keys(j, "", known, &e), e, "b", "unknown field");
    assert_int_equal(prefs_check_keys(j, "", NULL, &e), 0);
    cJSON_Delete(j);
}

static void test_quiet_fields(void **state)
{
    (void)state;
    struct prefs_quiet q;
    struct policy_error e;
    assert_int_equal(quiet("{\"start\":\"22:00\",\"end\":\"07:00\"}", true, &q, &e), 0);
    assert_true(q.set);
    assert_int_equal(q.start, 22 * 60);
    assert_int_equal(q.end, 7 * 60);
    assert_false(q.drop); /* hold by default */
    assert_int_equal(
        quiet("{\"start\":\"01:00\",\"end\":\"02:00\",\"mode\":\"drop\"}", true, &q, &e), 0);
    assert_true(q.drop);

    ERR(quiet("[]", true, &q, &e), e, "quiet_hours", "must be an object, got array");
    ERR(quiet("{\"end\":\"07:00\"}", true, &q, &e), e, "quiet_hours.start", "missing");
    ERR(quiet("{\"start\":\"22:00\"}", true, &q, &e), e, "quiet_hours.end", "missing");
    ERR(quiet("{\"start\":2200,\"end\":\"07:00\"}", true, &q, &e), e, "quiet_hours.start",
        "got number");
    ERR(quiet("{\"start\":\"22:00\",\"end\":\"7:00\"}", true, &q, &e), e, "quiet_hours.end",
        "between 00:00 and 23:59");
    ERR(quiet("{\"start\":\"22:00\",\"end\":\"22:00\"}", true, &q, &e), e, "quiet_hours",
        "start and end are equal");
    ERR(quiet("{\"start\":\"22:00\",\"end\":\"07:00\",\"mode\":\"later\"}", true, &q, &e), e,
        "quiet_hours.mode", "must be \"hold\" or \"drop\"");
    ERR(quiet("{\"start\":\"22:00\",\"end\":\"07:00\",\"mode\":true}", true, &q, &e), e,
        "quiet_hours.mode", "got boolean");
    assert_false(q.set); /* refused: not marked set */
}

static void test_json_parse(void **state)
{
    (void)state;
    cJSON *j = NULL;
    struct policy_error e;
    const char *ok = "{\"a\":1} \n\t\r";
    assert_int_equal(prefs_json_parse(ok, strlen(ok), &j, &e), 0);
    assert_non_null(j);
    cJSON_Delete(j);
    j = NULL;
    /* Not NUL-terminated: only len bytes are read. */
    assert_int_equal(prefs_json_parse("{\"a\":1}XYZ", 7, &j, &e), 0);
    cJSON_Delete(j);
    j = NULL;
    ERR(prefs_json_parse("{\"a\":1}x", 8, &j, &e), e, "", "trailing data");
    assert_null(j);
    ERR(prefs_json_parse("{\"a\":", 5, &j, &e), e, "", "not valid JSON");
    assert_null(j);
}

/* What the writers produce, the parsers read back the same. */
static void test_to_json_round_trip(void **state)
{
    (void)state;
    struct prefs_category c = {
        .name = "news", .opt_out = true, .channels_off = PROTO_CH_PUSH | PROTO_CH_DESKTOP};
    struct prefs_category none = {.name = "quiet"};
    struct prefs_quiet q = {.set = true, .start = 23 * 60 + 5, .end = 6 * 60, .drop = true};
    cJSON *u = cJSON_CreateObject();
    cJSON *cats = cJSON_AddObjectToObject(u, "categories");
    assert_int_equal(prefs_category_to_json(&c, cats), 0);
    assert_int_equal(prefs_category_to_json(&none, cats), 0); /* nothing set: left out */
    assert_int_equal(prefs_quiet_to_json(&q, u), 0);
    struct prefs_quiet unset = {0};
    assert_int_equal(prefs_quiet_to_json(&unset, cats), 0); /* not set: left out */
    char *text = cJSON_PrintUnformatted(u);
    assert_string_equal(text, "{\"categories\":{\"news\":{\"opt_out\":true,\"channels_off\":"
                              "[\"push\",\"desktop\"]}},\"quiet_hours\":{\"start\":\"23:05\","
                              "\"end\":\"06:00\",\"mode\":\"drop\"}}");
    free(text);

    struct prefs_category c2 = {0};
    struct prefs_quiet q2 = {0};
    struct policy_error e;
    const cJSON *cj = cJSON_GetObjectItemCaseSensitive(u, "categories")->child;
    assert_int_equal(prefs_parse_category(cj, "categories.news", true, &c2, &e), 0);
    assert_string_equal(c2.name, c.name);
    assert_true(c2.opt_out);
    assert_int_equal(c2.channels_off, c.channels_off);
    assert_int_equal(
        prefs_parse_quiet(cJSON_GetObjectItemCaseSensitive(u, "quiet_hours"), "q", true, &q2, &e),
        0);
    assert_true(q2.set);
    assert_int_equal(q2.start, q.start);
    assert_int_equal(q2.end, q.end);
    assert_true(q2.drop);
    cJSON_Delete(u);
}

/* --- deciding ------------------------------------------------------------ */

static struct policy_decision decide(bool opt_out, const struct prefs_category *cat,
                                     const struct prefs_quiet *q, const tz_t *tz,
                                     const char *category_name, bool critical,
                                     enum proto_channel ch, int64_t now)
{
    struct notification *n = notif(category_name, critical);
    struct policy_decision d;
    memset(&d, 0x5a, sizeof(d)); /* overwritten entirely */
    prefs_decide(opt_out, cat, q, tz, n, ch, now, &d);
    notif_free(n);
    return d;
}

static void test_rules_in_order(void **state)
{
    (void)state;
    struct prefs_category cat = {.name = "news", .opt_out = true, .channels_off = PROTO_CH_SMS};
    struct prefs_quiet q = {.set = true, .start = 0, .end = 23 * 60 + 59};
    int64_t now = utc_ms(2026, 6, 1, 12, 0);

    struct policy_decision d = decide(true, &cat, &q, NULL, "news", true, PROTO_CH_SMS, now);
    assert_int_equal(d.action, POLICY_SUPPRESS);
    assert_string_equal(d.rule, "opt_out");
    d = decide(false, &cat, &q, NULL, "news", true, PROTO_CH_SMS, now);
    assert_string_equal(d.rule, "category_opt_out:news");
    cat.opt_out = false;
    d = decide(false, &cat, &q, NULL, "news", true, PROTO_CH_SMS, now);
    assert_int_equal(d.action, POLICY_SUPPRESS);
    assert_string_equal(d.rule, "channel_off:sms");
    assert_false(d.critical_bypass);
    /* Critical passes quiet hours only, and is marked. */
    d = decide(false, &cat, &q, NULL, "news", true, PROTO_CH_PUSH, now);
    assert_int_equal(d.action, POLICY_ALLOW);
    assert_string_equal(d.rule, "critical_bypass");
    assert_true(d.critical_bypass);
    assert_true(d.tz_fallback); /* a window, no zone: UTC */
    d = decide(false, &cat, &q, NULL, "news", false, PROTO_CH_PUSH, now);
    assert_int_equal(d.action, POLICY_HOLD);
    assert_string_equal(d.rule, "quiet_hours");
    assert_int_equal(d.hold_until_ms, utc_ms(2026, 6, 1, 23, 59));
    q.drop = true;
    d = decide(false, &cat, &q, NULL, "news", false, PROTO_CH_PUSH, now);
    assert_int_equal(d.action, POLICY_DROP);
    assert_string_equal(d.rule, "quiet_hours_drop");
    assert_int_equal(d.hold_until_ms, 0);
    /* No window (NULL or not set), no category entry: allow, unmarked. */
    d = decide(false, NULL, NULL, NULL, NULL, true, PROTO_CH_PUSH, now);
    assert_int_equal(d.action, POLICY_ALLOW);
    assert_string_equal(d.rule, "allow");
    assert_false(d.critical_bypass);
    assert_false(d.tz_fallback);
    assert_int_equal(d.hold_until_ms, 0);
    struct prefs_quiet off = {0};
    d = decide(false, NULL, &off, NULL, NULL, false, PROTO_CH_PUSH, now);
    assert_string_equal(d.rule, "allow");
    assert_false(d.tz_fallback);

    struct policy_decision r;
    prefs_set_rule(&r, POLICY_SUPPRESS, "cap", "news");
    assert_int_equal(r.action, POLICY_SUPPRESS);
    assert_string_equal(r.rule, "cap:news");
    assert_string_equal(policy_action_name(POLICY_HOLD), "hold");
    assert_string_equal(policy_action_name(POLICY_DROP), "drop");
}

/* 22:00-07:00 in Berlin: a night is as long as the clock says, and a
 * window end in the spring gap moves to the end of the gap. */
static void test_in_quiet_dst(void **state)
{
    (void)state;
    tz_t *berlin = NULL;
    assert_int_equal(tz_load("Europe/Berlin", &berlin), 0);
    struct prefs_quiet q = {.set = true, .start = 22 * 60, .end = 7 * 60};
    int64_t end = 0;
    /* 2026-03-28 21:59 CET = 20:59Z: not yet. */
    assert_false(prefs_in_quiet(&q, berlin, utc_ms(2026, 3, 28, 20, 59), &end));
    /* 22:00 CET = 21:00Z .. 07:00 CEST = 05:00Z: 8 hours. */
    assert_true(prefs_in_quiet(&q, berlin, utc_ms(2026, 3, 28, 21, 0), &end));
    assert_int_equal(end, utc_ms(2026, 3, 29, 5, 0));
    assert_false(prefs_in_quiet(&q, berlin, utc_ms(2026, 3, 29, 5, 0), &end)); /* end excluded */
    /* Autumn: 22:00 CEST = 20:00Z .. 07:00 CET = 06:00Z: 10 hours. */
    assert_true(prefs_in_quiet(&q, berlin, utc_ms(2026, 10, 24, 20, 0), &end));
    assert_int_equal(end, utc_ms(2026, 10, 25, 6, 0));
    /* 02:00-02:30 on the spring-forward night does not exist: the start and
     * end both move to 03:00 CEST, an empty window. */
    struct prefs_quiet gap = {.set = true, .start = 2 * 60, .end = 2 * 60 + 30};
    assert_false(prefs_in_quiet(&gap, berlin, utc_ms(2026, 3, 29, 1, 0), &end));
    assert_int_equal(end, 0);
    /* Without a zone the same window runs in UTC. */
    assert_true(prefs_in_quiet(&q, NULL, utc_ms(2026, 3, 28, 22, 0), &end));
    assert_int_equal(end, utc_ms(2026, 3, 29, 7, 0));
    tz_free(berlin);
}

/* deliver_at: absolute, or a wall time in the user's zone (Berlin). */
static void test_deliver_at(void **state)
{
    (void)state;
    static const struct {
        const char *fields; /* after "to" and "title" */
        bool in_zone;       /* Berlin, else no zone (UTC) */
        int64_t y;
        int mo, d, h, mi; /* expected UTC; y 0: expect 0 */
    } cases[] = {
        {",\"deliver_at\":\"2026-07-01T08:00:00Z\"", true, 2026, 7, 1, 8, 0}, /* absolute */
        {",\"deliver_at\":\"2026-07-01T08:00\",\"tz\":\"user\"", true, 2026, 7, 1, 6, 0}, /* CEST */
        {",\"deliver_at\":\"2026-07-01T08:00\",\"tz\":\"user\"", false, 2026, 7, 1, 8, 0}, /* UTC */
        /* Overlap: 02:30 on 2026-10-25 happens twice; the earlier (CEST) wins. */
        {",\"deliver_at\":\"2026-10-25T02:30\",\"tz\":\"user\"", true, 2026, 10, 25, 0, 30},
        /* Gap: 02:30 on 2026-03-29 does not exist; the end of the gap, 03:00 CEST. */
        {",\"deliver_at\":\"2026-03-29T02:30\",\"tz\":\"user\"", true, 2026, 3, 29, 1, 0},
        {"", true, 0, 0, 0, 0, 0}, /* none */
    };
    tz_t *berlin = NULL;
    assert_int_equal(tz_load("Europe/Berlin", &berlin), 0);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char text[256];
        snprintf(text, sizeof(text), "{\"to\":\"user:a\",\"title\":\"t\"%s}", cases[i].fields);
        struct notification *n = notif_json(text);
        int64_t want =
            cases[i].y ? utc_ms(cases[i].y, cases[i].mo, cases[i].d, cases[i].h, cases[i].mi) : 0;
        if (prefs_deliver_at(n, cases[i].in_zone ? berlin : NULL) != want) {
            fail_msg("case %zu (%s): got %lld, want %lld", i, text,
                     (long long)prefs_deliver_at(n, cases[i].in_zone ? berlin : NULL),
                     (long long)want);
        }
        notif_free(n);
    }
    tz_free(berlin);
}

/* prefs_set_rule writes "rule:arg" (or "rule") as snprintf would, cut at
 * the field's size. */
static void test_set_rule(void **state)
{
    (void)state;
    /* want: room for the whole text, then cut where the field ends. */
    char rule[POLICY_RULE_MAX + 10], arg[POLICY_RULE_MAX + 10], want[3 * POLICY_RULE_MAX];
    for (size_t rn = 1; rn < sizeof(rule); rn += 3) {
        memset(rule, 'r', rn);
        rule[rn] = '\0';
        for (size_t an = 0; an < sizeof(arg); an += 5) {
            memset(arg, 'a', an);
            arg[an] = '\0';
            struct policy_decision d;
            memset(&d, 0x55, sizeof(d));
            prefs_set_rule(&d, POLICY_SUPPRESS, rule, arg);
            snprintf(want, sizeof(want), "%s:%s", rule, arg);
            want[POLICY_RULE_MAX - 1] = '\0';
            assert_string_equal(d.rule, want);
            assert_int_equal(d.action, POLICY_SUPPRESS);
            prefs_set_rule(&d, POLICY_ALLOW, rule, NULL);
            snprintf(want, sizeof(want), "%s", rule);
            want[POLICY_RULE_MAX - 1] = '\0';
            assert_string_equal(d.rule, want);
            assert_int_equal(d.action, POLICY_ALLOW);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hhmm),
        cmocka_unit_test(test_set_rule),
        cmocka_unit_test(test_category_fields),
        cmocka_unit_test(test_strict_and_lenient),
        cmocka_unit_test(test_quiet_fields),
        cmocka_unit_test(test_json_parse),
        cmocka_unit_test(test_to_json_round_trip),
        cmocka_unit_test(test_rules_in_order),
        cmocka_unit_test(test_in_quiet_dst),
        cmocka_unit_test(test_deliver_at),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
