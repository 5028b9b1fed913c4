/* test_tz.c - TZif reader, POSIX footer rules, local <-> UTC around DST. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "error.h"
#include "tz.h"

#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[64];

/* Unix seconds of a UTC civil time, through the module's own calendar
 * helper (checked against known values in test_calendar). */
static int64_t utc_s(int64_t y, int mo, int d, int h, int mi, int s)
{
    return tz_days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s;
}

static int64_t utc_ms(int64_t y, int mo, int d, int h, int mi, int s)
{
    return utc_s(y, mo, d, h, mi, s) * 1000;
}

static tz_t *load(const char *name)
{
    tz_t *tz = NULL;
    int rc = tz_load(name, &tz);
    if (rc != 0) {
        fail_msg("tz_load(%s): %s", name, tdg_strerror(rc));
    }
    return tz;
}

static void expect_offset(const tz_t *tz, int64_t ms, int32_t off, bool dst)
{
    bool is_dst = !dst;
    assert_int_equal(tz_offset_at(tz, ms, &is_dst), off);
    assert_int_equal(is_dst, dst);
}

static void expect_l2u(const tz_t *tz, int64_t y, int mo, int d, int h, int mi,
                       enum tz_ambiguity amb, int64_t want_ms, enum tz_resolution want_how)
{
    int64_t got = 0;
    enum tz_resolution how = (enum tz_resolution) - 1;
    assert_int_equal(tz_local_to_utc(tz, y, mo, d, h, mi, 0, amb, &got, &how), 0);
    assert_int_equal(got, want_ms);
    assert_int_equal(how, want_how);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path) < 0 ? -1 : 0;
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/tidings-tz-XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    tz_set_dir(NULL);
    tz_cache_flush();
    return 0;
}

static void test_calendar(void **state)
{
    (void)state;
    assert_int_equal(tz_days_from_civil(1970, 1, 1), 0);
    assert_int_equal(tz_days_from_civil(2000, 3, 1), 11017);
    assert_int_equal(tz_days_from_civil(1969, 12, 31), -1);
    int64_t y;
    int m, d;
    tz_civil_from_days(20541, &y, &m, &d); /* 2026-03-29 */
    assert_int_equal(y, 2026);
    assert_int_equal(m, 3);
    assert_int_equal(d, 29);
    tz_civil_from_days(-719468, &y, &m, &d);
    assert_int_equal(y, 0);
    assert_int_equal(m, 3);
    assert_int_equal(d, 1);
    assert_int_equal(tz_days_in_month(2024, 2), 29);
    assert_int_equal(tz_days_in_month(2100, 2), 28);
    assert_int_equal(tz_days_in_month(2000, 2), 29);
    assert_int_equal(tz_days_in_month(2026, 13), 0);
    /* 2026-01-01 is a Thursday, 2026-01-01T00:00:00Z = 1767225600. */
    assert_int_equal(utc_s(2026, 1, 1, 0, 0, 0), 1767225600);
}

static void test_names(void **state)
{
    (void)state;
    const char *good[] = {"UTC",       "Europe/Berlin",          "America/Argentina/Buenos_Aires",
                          "Etc/GMT+5", "America/Port-au-Prince", "Etc/GMT-14"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        assert_true(tz_name_valid(good[i]));
    }
    const char *badn[] = {"",
                          "/etc/passwd",
                          "../etc/passwd",
                          "Europe/../../etc/shadow",
                          "Europe//Berlin",
                          "Europe/Berlin/",
                          "Europe/Ber lin",
                          "Europe/Berlin;rm",
                          "Europe/Berlin\n",
                          "./UTC",
                          "Europe/.",
                          "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"};
    for (size_t i = 0; i < sizeof(badn) / sizeof(badn[0]); i++) {
        assert_false(tz_name_valid(badn[i]));
        tz_t *tz = NULL;
        assert_int_equal(tz_load(badn[i], &tz), TDG_EINVAL_INPUT);
        assert_null(tz);
    }
    assert_false(tz_name_valid(NULL));
    tz_t *tz = NULL;
    assert_int_equal(tz_load("Mars/Olympus_Mons", &tz), TDG_ENOTFOUND);
    assert_int_equal(tz_load("America", &tz), TDG_ENOTFOUND); /* a folder */
    assert_int_equal(tz_load("UTC/Nothing", &tz), TDG_ENOTFOUND);
    assert_null(tz);
}

static void test_utc(void **state)
{
    (void)state;
    tz_t *tz = load("UTC");
    expect_offset(tz, utc_ms(2026, 7, 1, 12, 0, 0), 0, false);
    struct tz_tm tm;
    tz_utc_to_local(tz, utc_ms(2026, 11, 21, 22, 49, 47) + 123, &tm);
    assert_int_equal(tm.year, 2026);
    assert_int_equal(tm.month, 11);
    assert_int_equal(tm.day, 21);
    assert_int_equal(tm.hour, 22);
    assert_int_equal(tm.minute, 49);
    assert_int_equal(tm.second, 47);
    assert_int_equal(tm.ms, 123);
    assert_int_equal(tm.wday, 6); /* Saturday */
    assert_int_equal(tm.yday, 324);
    assert_string_equal(tm.abbr, "UTC");
    expect_l2u(tz, 2026, 3, 29, 2, 30, TZ_EARLIER, utc_ms(2026, 3, 29, 2, 30, 0), TZ_EXACT);
    /* Before 1970: negative milliseconds round toward the earlier second. */
    tz_utc_to_local(tz, -1, &tm);
    assert_int_equal(tm.year, 1969);
    assert_int_equal(tm.hour, 23);
    assert_int_equal(tm.second, 59);
    assert_int_equal(tm.ms, 999);
    tz_free(tz);
}

static void test_new_york_2026(void **state)
{
    (void)state;
    tz_t *tz = load("America/New_York");
    /* DST starts Sunday 2026-03-08 at 02:00 EST = 07:00Z. */
    expect_offset(tz, utc_ms(2026, 3, 8, 6, 59, 59), -18000, false);
    expect_offset(tz, utc_ms(2026, 3, 8, 7, 0, 0), -14400, true);
    /* DST ends Sunday 2026-11-01 at 02:00 EDT = 06:00Z. */
    expect_offset(tz, utc_ms(2026, 11, 1, 5, 59, 59), -14400, true);
    expect_offset(tz, utc_ms(2026, 11, 1, 6, 0, 0), -18000, false);

    /* 02:30 on 2026-03-08 does not exist: first instant after the gap. */
    expect_l2u(tz, 2026, 3, 8, 2, 30, TZ_EARLIER, utc_ms(2026, 3, 8, 7, 0, 0), TZ_GAP);
    expect_l2u(tz, 2026, 3, 8, 2, 0, TZ_EARLIER, utc_ms(2026, 3, 8, 7, 0, 0), TZ_GAP);
    expect_l2u(tz, 2026, 3, 8, 1, 59, TZ_EARLIER, utc_ms(2026, 3, 8, 6, 59, 0), TZ_EXACT);
    expect_l2u(tz, 2026, 3, 8, 3, 0, TZ_EARLIER, utc_ms(2026, 3, 8, 7, 0, 0), TZ_EXACT);
    /* 01:30 on 2026-11-01 happens twice: EDT (05:30Z) then EST (06:30Z). */
    expect_l2u(tz, 2026, 11, 1, 1, 30, TZ_EARLIER, utc_ms(2026, 11, 1, 5, 30, 0), TZ_OVERLAP);
    expect_l2u(tz, 2026, 11, 1, 1, 30, TZ_LATER, utc_ms(2026, 11, 1, 6, 30, 0), TZ_OVERLAP);
    expect_l2u(tz, 2026, 11, 1, 2, 0, TZ_EARLIER, utc_ms(2026, 11, 1, 7, 0, 0), TZ_EXACT);
    expect_l2u(tz, 2026, 7, 4, 12, 0, TZ_EARLIER, utc_ms(2026, 7, 4, 16, 0, 0), TZ_EXACT);

    struct tz_tm tm;
    tz_utc_to_local(tz, utc_ms(2026, 11, 1, 6, 30, 0), &tm);
    assert_int_equal(tm.hour, 1);
    assert_int_equal(tm.minute, 30);
    assert_false(tm.is_dst);
    assert_string_equal(tm.abbr, "EST");
    assert_int_equal(tm.utc_offset_s, -18000);
    tz_utc_to_local(tz, utc_ms(2026, 11, 1, 5, 30, 0), &tm);
    assert_int_equal(tm.hour, 1);
    assert_true(tm.is_dst);
    assert_string_equal(tm.abbr, "EDT");
    /* Before the first transition: local mean time, type 0 (-4:56:02). */
    expect_offset(tz, utc_ms(1800, 1, 1, 0, 0, 0), -17762, false);
    tz_free(tz);
}

static void test_berlin_2026(void **state)
{
    (void)state;
    tz_t *tz = load("Europe/Berlin");
    /* CET -> CEST on Sunday 2026-03-29 at 01:00Z (02:00 -> 03:00). */
    expect_offset(tz, utc_ms(2026, 3, 29, 0, 59, 59), 3600, false);
    expect_offset(tz, utc_ms(2026, 3, 29, 1, 0, 0), 7200, true);
    /* CEST -> CET on Sunday 2026-10-25 at 01:00Z (03:00 -> 02:00). */
    expect_offset(tz, utc_ms(2026, 10, 25, 0, 59, 59), 7200, true);
    expect_offset(tz, utc_ms(2026, 10, 25, 1, 0, 0), 3600, false);

    expect_l2u(tz, 2026, 3, 29, 2, 30, TZ_EARLIER, utc_ms(2026, 3, 29, 1, 0, 0), TZ_GAP);
    expect_l2u(tz, 2026, 3, 29, 2, 30, TZ_LATER, utc_ms(2026, 3, 29, 1, 0, 0), TZ_GAP);
    expect_l2u(tz, 2026, 10, 25, 2, 30, TZ_EARLIER, utc_ms(2026, 10, 25, 0, 30, 0), TZ_OVERLAP);
    expect_l2u(tz, 2026, 10, 25, 2, 30, TZ_LATER, utc_ms(2026, 10, 25, 1, 30, 0), TZ_OVERLAP);
    expect_l2u(tz, 2026, 10, 25, 3, 0, TZ_EARLIER, utc_ms(2026, 10, 25, 2, 0, 0), TZ_EXACT);
    expect_l2u(tz, 2026, 1, 15, 22, 0, TZ_EARLIER, utc_ms(2026, 1, 15, 21, 0, 0), TZ_EXACT);

    struct tz_tm tm;
    tz_utc_to_local(tz, utc_ms(2026, 3, 29, 1, 0, 0), &tm);
    assert_int_equal(tm.hour, 3);
    assert_string_equal(tm.abbr, "CEST");
    assert_int_equal(tm.wday, 0);
    tz_free(tz);
}

static void test_half_hour_zones(void **state)
{
    (void)state;
    tz_t *in = load("Asia/Kolkata");
    expect_offset(in, utc_ms(2026, 6, 1, 0, 0, 0), 19800, false);
    struct tz_tm tm;
    tz_utc_to_local(in, utc_ms(2026, 6, 1, 0, 0, 0), &tm);
    assert_int_equal(tm.hour, 5);
    assert_int_equal(tm.minute, 30);
    assert_string_equal(tm.abbr, "IST");
    expect_l2u(in, 2026, 6, 1, 5, 30, TZ_EARLIER, utc_ms(2026, 6, 1, 0, 0, 0), TZ_EXACT);
    /* The footer rule (no DST) past the last transition. */
    expect_offset(in, utc_ms(2090, 1, 1, 0, 0, 0), 19800, false);
    tz_free(in);

    tz_t *ad = load("Australia/Adelaide");
    /* Southern hemisphere: DST in January, not in June. */
    expect_offset(ad, utc_ms(2026, 1, 15, 0, 0, 0), 37800, true);
    expect_offset(ad, utc_ms(2026, 6, 15, 0, 0, 0), 34200, false);
    /* ACDT ends Sunday 2026-04-05 03:00 local = 2026-04-04T16:30Z. */
    expect_offset(ad, utc_ms(2026, 4, 4, 16, 29, 59), 37800, true);
    expect_offset(ad, utc_ms(2026, 4, 4, 16, 30, 0), 34200, false);
    /* ACDT starts Sunday 2026-10-04 02:00 local = 2026-10-03T16:30Z. */
    expect_offset(ad, utc_ms(2026, 10, 3, 16, 29, 59), 34200, false);
    expect_offset(ad, utc_ms(2026, 10, 3, 16, 30, 0), 37800, true);
    expect_l2u(ad, 2026, 10, 4, 2, 15, TZ_EARLIER, utc_ms(2026, 10, 3, 16, 30, 0), TZ_GAP);
    expect_l2u(ad, 2026, 4, 5, 2, 15, TZ_EARLIER, utc_ms(2026, 4, 4, 15, 45, 0), TZ_OVERLAP);
    expect_l2u(ad, 2026, 4, 5, 2, 15, TZ_LATER, utc_ms(2026, 4, 4, 16, 45, 0), TZ_OVERLAP);
    /* 2090, from the footer "ACST-9:30ACDT,M10.1.0,M4.1.0/3". */
    expect_offset(ad, utc_ms(2090, 4, 1, 16, 29, 59), 37800, true);
    expect_offset(ad, utc_ms(2090, 4, 1, 16, 30, 0), 34200, false);
    tz_free(ad);
}

static void test_far_future_footer(void **state)
{
    (void)state;
    tz_t *ny = load("America/New_York");
    /* 2090: second Sunday of March is 03-12, first Sunday of November 11-05. */
    expect_offset(ny, utc_ms(2090, 3, 12, 6, 59, 59), -18000, false);
    expect_offset(ny, utc_ms(2090, 3, 12, 7, 0, 0), -14400, true);
    expect_offset(ny, utc_ms(2090, 11, 5, 5, 59, 59), -14400, true);
    expect_offset(ny, utc_ms(2090, 11, 5, 6, 0, 0), -18000, false);
    expect_l2u(ny, 2090, 3, 12, 2, 30, TZ_EARLIER, utc_ms(2090, 3, 12, 7, 0, 0), TZ_GAP);
    expect_l2u(ny, 2090, 11, 5, 1, 30, TZ_EARLIER, utc_ms(2090, 11, 5, 5, 30, 0), TZ_OVERLAP);
    struct tz_tm tm;
    tz_utc_to_local(ny, utc_ms(2090, 7, 1, 16, 0, 0), &tm);
    assert_int_equal(tm.year, 2090);
    assert_int_equal(tm.hour, 12);
    assert_string_equal(tm.abbr, "EDT");
    tz_free(ny);

    tz_t *be = load("Europe/Berlin");
    expect_offset(be, utc_ms(2090, 3, 26, 0, 59, 59), 3600, false);
    expect_offset(be, utc_ms(2090, 3, 26, 1, 0, 0), 7200, true);
    expect_offset(be, utc_ms(2090, 10, 29, 0, 59, 59), 7200, true);
    expect_offset(be, utc_ms(2090, 10, 29, 1, 0, 0), 3600, false);
    /* Year 2400 (a leap year) and 2100 (not). */
    expect_offset(be, utc_ms(2400, 7, 1, 0, 0, 0), 7200, true);
    expect_offset(be, utc_ms(2100, 12, 1, 0, 0, 0), 3600, false);
    tz_free(be);
}

static void test_bad_local_times(void **state)
{
    (void)state;
    tz_t *tz = load("Europe/Berlin");
    int64_t out;
    assert_int_equal(tz_local_to_utc(tz, 2026, 2, 29, 0, 0, 0, TZ_EARLIER, &out, NULL),
                     TDG_EINVAL_INPUT);
    assert_int_equal(tz_local_to_utc(tz, 2026, 13, 1, 0, 0, 0, TZ_EARLIER, &out, NULL),
                     TDG_EINVAL_INPUT);
    assert_int_equal(tz_local_to_utc(tz, 2026, 1, 1, 24, 0, 0, TZ_EARLIER, &out, NULL),
                     TDG_EINVAL_INPUT);
    assert_int_equal(tz_local_to_utc(tz, 2026, 1, 1, 0, 60, 0, TZ_EARLIER, &out, NULL),
                     TDG_EINVAL_INPUT);
    assert_int_equal(tz_local_to_utc(tz, 2026, 1, 1, 0, 0, 60, TZ_EARLIER, &out, NULL),
                     TDG_EINVAL_INPUT);
    assert_int_equal(tz_local_to_utc(tz, 2026, 0, 1, 0, 0, 0, TZ_EARLIER, &out, NULL),
                     TDG_EINVAL_INPUT);
    assert_int_equal(tz_local_to_utc(tz, 99999999, 1, 1, 0, 0, 0, TZ_EARLIER, &out, NULL),
                     TDG_EINVAL_INPUT);
    assert_int_equal(tz_local_to_utc(tz, 2024, 2, 29, 12, 0, 0, TZ_EARLIER, &out, NULL), 0);
    tz_free(tz);
}

static void test_cache(void **state)
{
    (void)state;
    tz_t *a = load("Europe/Berlin");
    tz_t *b = load("Europe/Berlin");
    assert_ptr_equal(a, b); /* shared */
    assert_string_equal(tz_name(a), "Europe/Berlin");
    tz_free(a);
    tz_free(b);
    /* More zones than the cache holds, all held at once: still correct. */
    const char *names[] = {"Europe/Berlin",
                           "Europe/Paris",
                           "Europe/London",
                           "Europe/Rome",
                           "Europe/Madrid",
                           "Europe/Vienna",
                           "Europe/Oslo",
                           "Europe/Athens",
                           "Asia/Tokyo",
                           "Asia/Kolkata",
                           "Asia/Dubai",
                           "America/Chicago",
                           "America/Denver",
                           "America/New_York",
                           "America/Sao_Paulo",
                           "Australia/Sydney",
                           "Australia/Adelaide",
                           "Pacific/Auckland",
                           "UTC",
                           "Africa/Cairo"};
    enum { N = sizeof(names) / sizeof(names[0]) };
    tz_t *held[N];
    for (size_t i = 0; i < N; i++) {
        held[i] = load(names[i]);
    }
    for (size_t i = 0; i < N; i++) {
        assert_string_equal(tz_name(held[i]), names[i]);
        tz_free(held[i]);
    }
    tz_cache_flush();
    /* A handle outlives a flush. */
    tz_t *c = load("Asia/Tokyo");
    tz_cache_flush();
    expect_offset(c, utc_ms(2026, 1, 1, 0, 0, 0), 32400, false);
    tz_free(c);
}

/* --- hand-made and damaged files --------------------------------------- */

static void write_file(const char *name, const void *buf, size_t len)
{
    char p[160];
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, buf, len), (ssize_t)len);
    close(fd);
}

static size_t put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
    return 4;
}

static size_t put64(unsigned char *p, int64_t v)
{
    uint64_t u = (uint64_t)v;
    put32(p, (uint32_t)(u >> 32));
    return 4 + put32(p + 4, (uint32_t)u);
}

static size_t header(unsigned char *p, char version, uint32_t timecnt, uint32_t typecnt,
                     uint32_t charcnt)
{
    memset(p, 0, 44);
    memcpy(p, "TZif", 4);
    p[4] = (unsigned char)version;
    put32(p + 32, timecnt);
    put32(p + 36, typecnt);
    put32(p + 40, charcnt);
    return 44;
}

/* A version 2 file: two types ("AAA" offset off0, "BBB" off1 dst), ntrans
 * transitions at trans[] alternating 1,0,1..., and footer. */
static size_t build(unsigned char *b, const int64_t *trans, uint32_t ntrans, int32_t off0,
                    int32_t off1, const char *footer)
{
    size_t n = 0;
    /* Minimal version 1 block: one type, no transitions. */
    n += header(b + n, '2', 0, 1, 4);
    n += put32(b + n, 0);
    b[n++] = 0;
    b[n++] = 0;
    memcpy(b + n, "UTC", 4);
    n += 4;
    n += header(b + n, '2', ntrans, 2, 8);
    for (uint32_t i = 0; i < ntrans; i++) {
        n += put64(b + n, trans[i]);
    }
    for (uint32_t i = 0; i < ntrans; i++) {
        b[n++] = (unsigned char)((i + 1) % 2);
    }
    n += put32(b + n, (uint32_t)off0);
    b[n++] = 0;
    b[n++] = 0;
    n += put32(b + n, (uint32_t)off1);
    b[n++] = 1;
    b[n++] = 4;
    memcpy(b + n, "AAA\0BBB", 8);
    n += 8;
    b[n++] = '\n';
    memcpy(b + n, footer, strlen(footer));
    n += strlen(footer);
    b[n++] = '\n';
    return n;
}

static int load_built(const char *footer, tz_t **out)
{
    unsigned char b[512];
    size_t n = build(b, NULL, 0, 0, 3600, footer);
    write_file("built", b, n);
    char p[160];
    snprintf(p, sizeof(p), "%s/built", dir);
    return tz_load_file(p, out);
}

static void test_posix_footers(void **state)
{
    (void)state;
    tz_t *tz = NULL;
    /* No rule given after the DST name: the US rules, one hour ahead. */
    assert_int_equal(load_built("EST5EDT", &tz), 0);
    expect_offset(tz, utc_ms(2026, 3, 8, 7, 0, 0), -14400, true);
    expect_offset(tz, utc_ms(2026, 3, 8, 6, 59, 59), -18000, false);
    tz_free(tz);
    /* Quoted names, minutes in the offset. */
    assert_int_equal(load_built("<+0330>-3:30", &tz), 0);
    struct tz_tm tm;
    tz_utc_to_local(tz, 0, &tm);
    assert_string_equal(tm.abbr, "+0330");
    assert_int_equal(tm.utc_offset_s, 12600);
    tz_free(tz);
    /* Julian days: J60 is always March 1; n=59 is Feb 29 in leap years. */
    assert_int_equal(load_built("XXX3YYY,J60/2,J300/2", &tz), 0);
    expect_offset(tz, utc_ms(2024, 3, 1, 5, 0, 0), -7200, true);
    expect_offset(tz, utc_ms(2024, 3, 1, 4, 59, 59), -10800, false);
    tz_free(tz);
    assert_int_equal(load_built("XXX3YYY,59/2,300/2", &tz), 0);
    expect_offset(tz, utc_ms(2024, 2, 29, 5, 0, 0), -7200, true);
    expect_offset(tz, utc_ms(2026, 3, 1, 5, 0, 0), -7200, true);
    expect_offset(tz, utc_ms(2026, 3, 1, 4, 59, 59), -10800, false);
    tz_free(tz);
    /* Version 3 extension: DST all year ("EST5EDT,0/0,J365/25"). */
    assert_int_equal(load_built("EST5EDT,0/0,J365/25", &tz), 0);
    expect_offset(tz, utc_ms(2026, 1, 1, 12, 0, 0), -14400, true);
    expect_offset(tz, utc_ms(2026, 12, 31, 23, 0, 0), -14400, true);
    expect_offset(tz, utc_ms(2026, 7, 1, 0, 0, 0), -14400, true);
    tz_free(tz);
    /* Negative rule time (version 3): -1 hour of the previous day. */
    assert_int_equal(load_built("AAA0BBB,M3.5.0/-1,M10.5.0", &tz), 0);
    expect_offset(tz, utc_ms(2026, 3, 28, 23, 0, 0), 3600, true);
    expect_offset(tz, utc_ms(2026, 3, 28, 22, 59, 59), 0, false);
    tz_free(tz);
    /* Empty footer: the last type stays. */
    assert_int_equal(load_built("", &tz), 0);
    expect_offset(tz, utc_ms(2090, 1, 1, 0, 0, 0), 0, false);
    tz_free(tz);

    const char *bad_footers[] = {"CET",
                                 "C-1",
                                 "CET-1CEST,M13.1.0,M10.5.0",
                                 "CET-1CEST,M3.5.0",
                                 "CET-1CEST,M3.6.0,M10.5.0",
                                 "CET-1CEST,M3.5.7,M10.5.0",
                                 "CET-25",
                                 "CET-1CEST,J0,J365",
                                 "CET-1CEST,366,1",
                                 "CET-1CEST,M3.5.0/168,M10.5.0",
                                 "CET-1x",
                                 "<+05",
                                 "<+0 5>-5",
                                 "CET-1CEST,M3.5.0,M10.5.0 ",
                                 "CET-1:60",
                                 "CET-1000"};
    for (size_t i = 0; i < sizeof(bad_footers) / sizeof(bad_footers[0]); i++) {
        tz = NULL;
        int rc = load_built(bad_footers[i], &tz);
        if (rc != TDG_EINVAL_INPUT) {
            fail_msg("footer '%s' accepted (rc=%d)", bad_footers[i], rc);
        }
        assert_null(tz);
    }
}

/* Layout of build() with two transitions: the version 1 header and block
 * (44 + 10 bytes), the version 2 header, then its data. */
#define V2H 54
#define V2DATA (V2H + 44)

static void expect_bad_file(const void *buf, size_t len, int want)
{
    write_file("bad", buf, len);
    char p[160];
    snprintf(p, sizeof(p), "%s/bad", dir);
    tz_t *tz = NULL;
    int rc = tz_load_file(p, &tz);
    assert_int_equal(rc, want);
    assert_null(tz);
}

static void test_corrupt_files(void **state)
{
    (void)state;
    unsigned char b[1024];
    expect_bad_file("", 0, TDG_EINVAL_INPUT);
    expect_bad_file("TZif", 4, TDG_EINVAL_INPUT);
    expect_bad_file("not a zone file at all, just some text that is long enough to be a header", 74,
                    TDG_EINVAL_INPUT);

    int64_t tr[2] = {1000, 2000};
    size_t n = build(b, tr, 2, 0, 3600, "AAA0");
    /* The well-formed file loads... */
    write_file("ok", b, n);
    char p[160];
    snprintf(p, sizeof(p), "%s/ok", dir);
    tz_t *tz = NULL;
    assert_int_equal(tz_load_file(p, &tz), 0);
    expect_offset(tz, 999000, 0, false);
    expect_offset(tz, 1000000, 3600, true);
    expect_offset(tz, 2000000, 0, false);
    tz_free(tz);
    /* ...and every truncation of it is refused. */
    for (size_t cut = 0; cut < n; cut++) {
        expect_bad_file(b, cut, TDG_EINVAL_INPUT);
    }

    unsigned char c[1024];
    /* Bad version byte. */
    memcpy(c, b, n);
    c[4] = '9';
    expect_bad_file(c, n, TDG_EINVAL_INPUT);
    /* Huge counts (would overflow a 32-bit size computation). */
    memcpy(c, b, n);
    put32(c + V2H + 32, 0xffffffffu); /* second header's timecnt */
    expect_bad_file(c, n, TDG_EINVAL_INPUT);
    memcpy(c, b, n);
    put32(c + 32, 0x40000000u); /* first header's timecnt */
    expect_bad_file(c, n, TDG_EINVAL_INPUT);
    /* Zero types. */
    memcpy(c, b, n);
    put32(c + V2H + 36, 0);
    expect_bad_file(c, n, TDG_EINVAL_INPUT);
    /* Transitions out of order. */
    int64_t rev[2] = {2000, 1000};
    expect_bad_file(c, build(c, rev, 2, 0, 3600, "AAA0"), TDG_EINVAL_INPUT);
    memcpy(c, b, n);
    /* Type index out of range (first index byte after the times). */
    c[V2DATA + 16] = 7;
    expect_bad_file(c, n, TDG_EINVAL_INPUT);
    /* Offset out of range. */
    expect_bad_file(c, build(c, tr, 2, 0, 200000, "AAA0"), TDG_EINVAL_INPUT);
    /* Designation index past charcnt. */
    memcpy(c, b, n);
    c[V2DATA + 16 + 2 + 6 + 5] = 9; /* type 1's designation index */
    expect_bad_file(c, n, TDG_EINVAL_INPUT);
    /* Footer with a NUL inside. */
    size_t m = build(c, tr, 2, 0, 3600, "AAA0");
    c[m - 3] = '\0';
    expect_bad_file(c, m, TDG_EINVAL_INPUT);
    /* Leap seconds are refused. */
    memcpy(c, b, n);
    put32(c + V2H + 28, 1);
    expect_bad_file(c, n, TDG_EINVAL_INPUT);

    /* Random damage to a real file never crashes (under ASan in CI). */
    unsigned char *real = malloc(TZ_FILE_MAX);
    assert_non_null(real);
    int fd = open(TZ_DEFAULT_DIR "/Europe/Berlin", O_RDONLY);
    assert_true(fd >= 0);
    ssize_t rl = read(fd, real, TZ_FILE_MAX);
    close(fd);
    assert_true(rl > 100);
    unsigned seed = 12345;
    unsigned char *dmg = malloc((size_t)rl);
    assert_non_null(dmg);
    for (int round = 0; round < 300; round++) {
        memcpy(dmg, real, (size_t)rl);
        for (int k = 0; k < 4; k++) {
            seed = seed * 1103515245u + 12345u;
            size_t at = (seed >> 8) % (size_t)rl;
            dmg[at] = (unsigned char)(seed >> 3);
        }
        write_file("dmg", dmg, (size_t)rl);
        snprintf(p, sizeof(p), "%s/dmg", dir);
        tz = NULL;
        if (tz_load_file(p, &tz) == 0) {
            struct tz_tm tm;
            tz_utc_to_local(tz, utc_ms(2026, 3, 29, 1, 0, 0), &tm);
            int64_t out;
            (void)tz_local_to_utc(tz, 2026, 3, 29, 2, 30, 0, TZ_EARLIER, &out, NULL);
            tz_free(tz);
        }
    }
    free(dmg);
    free(real);

    /* Over the size limit. */
    unsigned char *big = calloc(1, TZ_FILE_MAX + 10);
    assert_non_null(big);
    memcpy(big, b, n);
    expect_bad_file(big, TZ_FILE_MAX + 10, TDG_ETOOBIG);
    free(big);
    /* Not a regular file. */
    assert_int_equal(tz_load_file("/dev/null", &tz), TDG_EINVAL_INPUT);
}

static void test_zone_dir(void **state)
{
    (void)state;
    unsigned char b[512];
    size_t n = build(b, NULL, 0, 0, 3600, "AAA-2");
    char sub[160];
    snprintf(sub, sizeof(sub), "%s/Test", dir);
    mkdir(sub, 0755);
    write_file("Test/Zone", b, n);
    write_file("Test/Broken", b, n / 2);
    assert_int_equal(tz_set_dir(dir), 0);
    tz_t *tz = NULL;
    assert_int_equal(tz_load("Test/Zone", &tz), 0);
    expect_offset(tz, 0, 7200, false);
    tz_free(tz);
    assert_int_equal(tz_load("Test/Broken", &tz), TDG_EINVAL_INPUT);
    assert_int_equal(tz_load("Europe/Berlin", &tz), TDG_ENOTFOUND);
    /* UTC works without a database. */
    assert_int_equal(tz_load("UTC", &tz), 0);
    expect_offset(tz, utc_ms(2026, 7, 1, 0, 0, 0), 0, false);
    tz_free(tz);
    assert_int_equal(tz_load("Etc/UTC", &tz), 0);
    tz_free(tz);
    assert_int_equal(tz_set_dir(NULL), 0);
    assert_int_equal(tz_load("Europe/Berlin", &tz), 0);
    tz_free(tz);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_calendar),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_utc),
        cmocka_unit_test(test_new_york_2026),
        cmocka_unit_test(test_berlin_2026),
        cmocka_unit_test(test_half_hour_zones),
        cmocka_unit_test(test_far_future_footer),
        cmocka_unit_test(test_bad_local_times),
        cmocka_unit_test(test_cache),
        cmocka_unit_test(test_posix_footers),
        cmocka_unit_test(test_corrupt_files),
        cmocka_unit_test(test_zone_dir),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
