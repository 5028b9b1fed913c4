/*
 * time.c - RFC 3339 timestamps and local wall times, without libc's time
 * functions: timegm() is not in C11, mktime() depends on the process time
 * zone, and 32-bit time_t on armhf ends in 2038. Everything here is int64_t
 * milliseconds and proleptic Gregorian arithmetic.
 */
#include "proto.h"

#include "error.h"

#include <stdio.h>
#include <string.h>

#define MS_PER_DAY INT64_C(86400000)

/* Days since 1970-01-01 of a civil date (H. Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    int64_t era;
    unsigned yoe, doy, doe;

    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = (unsigned)(y - era * 400);
    doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

/* Inverse of days_from_civil. */
static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    int64_t era;
    unsigned doe, yoe, doy, mp;

    z += 719468;
    era = (z >= 0 ? z : z - 146096) / 146097;
    doe = (unsigned)(z - era * 146097);
    yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

static bool is_leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static unsigned days_in_month(int64_t y, unsigned m)
{
    static const unsigned char dim[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return m == 2 && is_leap(y) ? 29 : dim[m - 1];
}

/* Exactly n ASCII digits at s. */
static bool digits(const char *s, int n, unsigned *out)
{
    unsigned v = 0;

    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return false;
        }
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    *out = v;
    return true;
}

/*
 * "YYYY-MM-DDTHH:MM:SS" (the ":SS" optional when secs_optional) at s, as ms
 * of a civil time counted as if UTC. *end is set past the consumed text.
 * RFC 3339 allows a lower-case 't'. Seconds 60 (leap seconds) are refused:
 * we cannot know whether that minute had one.
 */
static int parse_civil(const char *s, bool secs_optional, int64_t *out_ms, const char **end)
{
    unsigned y, mo, d, h, mi, sec = 0;

    if (!digits(s, 4, &y) || s[4] != '-' || !digits(s + 5, 2, &mo) || s[7] != '-' ||
        !digits(s + 8, 2, &d) || (s[10] != 'T' && s[10] != 't') || !digits(s + 11, 2, &h) ||
        s[13] != ':' || !digits(s + 14, 2, &mi)) {
        return TDG_EINVAL_INPUT;
    }
    s += 16;
    if (s[0] == ':') {
        if (!digits(s + 1, 2, &sec)) {
            return TDG_EINVAL_INPUT;
        }
        s += 3;
    } else if (!secs_optional) {
        return TDG_EINVAL_INPUT;
    }
    if (mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 59) {
        return TDG_EINVAL_INPUT;
    }
    *out_ms = (days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec) * 1000;
    *end = s;
    return 0;
}

int proto_parse_rfc3339(const char *s, int64_t *out_ms)
{
    int64_t ms;
    const char *p;
    unsigned frac = 0, oh, om;

    if (!s || !out_ms || parse_civil(s, false, &ms, &p) != 0) {
        return TDG_EINVAL_INPUT;
    }
    if (*p == '.') {
        int nd = 0;
        p++;
        /* Any number of digits; milliseconds keep the first three. */
        while (*p >= '0' && *p <= '9') {
            if (nd < 3) {
                frac = frac * 10 + (unsigned)(*p - '0');
            }
            nd++;
            p++;
        }
        if (nd == 0) {
            return TDG_EINVAL_INPUT;
        }
        for (; nd < 3; nd++) {
            frac *= 10;
        }
    }
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int sign = *p == '+' ? 1 : -1;
        if (!digits(p + 1, 2, &oh) || p[3] != ':' || !digits(p + 4, 2, &om) || oh > 23 || om > 59) {
            return TDG_EINVAL_INPUT;
        }
        /* local = UTC + offset, so UTC = local - offset. */
        ms -= sign * (int64_t)(oh * 3600 + om * 60) * 1000;
        p += 6;
    } else {
        return TDG_EINVAL_INPUT;
    }
    if (*p != '\0') {
        return TDG_EINVAL_INPUT;
    }
    *out_ms = ms + frac;
    return 0;
}

int proto_parse_local_time(const char *s, int64_t *out_wall_ms)
{
    int64_t ms;
    const char *p;

    if (!s || !out_wall_ms || parse_civil(s, true, &ms, &p) != 0 || *p != '\0') {
        return TDG_EINVAL_INPUT;
    }
    *out_wall_ms = ms;
    return 0;
}

void proto_format_rfc3339(int64_t ms, char *buf, size_t len)
{
    static const int64_t lo = INT64_C(-62167219200000); /* 0000-01-01T00:00:00Z */
    static const int64_t hi = INT64_C(253402300799999); /* 9999-12-31T23:59:59.999Z */
    int64_t days, rem, y;
    unsigned m, d;

    if (!buf || len == 0) {
        return;
    }
    if (ms < lo) {
        ms = lo;
    } else if (ms > hi) {
        ms = hi;
    }
    /* Floor division: times before 1970 have a negative ms. */
    days = ms / MS_PER_DAY;
    rem = ms % MS_PER_DAY;
    if (rem < 0) {
        rem += MS_PER_DAY;
        days--;
    }
    civil_from_days(days, &y, &m, &d);
    snprintf(buf, len, "%04d-%02u-%02uT%02d:%02d:%02d.%03dZ", (int)y, m, d, (int)(rem / 3600000),
             (int)(rem / 60000 % 60), (int)(rem / 1000 % 60), (int)(rem % 1000));
}
