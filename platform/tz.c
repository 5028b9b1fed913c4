/*
 * tz.c - TZif reader, POSIX TZ rules and local <-> UTC conversion (see tz.h).
 *
 * The file is read whole (at most TZ_FILE_MAX bytes) and every count, index
 * and offset is checked before it is used: a truncated, corrupt or hostile
 * file gives TDG_EINVAL_INPUT with the reason logged, never a crash. All
 * multi-byte fields are big-endian and read byte by byte, so nothing depends
 * on the host's endianness or alignment.
 */
#include "tz.h"

#include "error.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TZ_HEADER_LEN 44
#define TZ_MAX_COUNT 65536        /* no count can exceed the file size anyway */
#define TZ_MAX_TYPES 256          /* RFC 8536: typecnt <= 256 */
#define TZ_MAX_OFFSET (26 * 3600) /* RFC 8536 asks for -25:59:59..+25:59:59 */
#define TZ_FOOTER_MAX 128         /* POSIX TZ strings are ~30 bytes */
#define TZ_YEAR_LIMIT 1000000

struct tz_type {
    int32_t off;
    bool dst;
    char abbr[TZ_ABBR_MAX + 1];
};

/* One date of a POSIX TZ rule: Jn, n or Mm.w.d, and the local time of day
 * (seconds, may be negative or above 24h in version 3) it happens at. */
struct tz_rule_date {
    char kind; /* 'J' (1..365, no Feb 29), 'D' (0..365), 'M' */
    int n;     /* J and D */
    int m, w, d;
    int32_t time;
};

struct tz_rule {
    bool present;
    bool has_dst;
    struct tz_type std, dst;
    struct tz_rule_date start, end;
};

struct tz {
    char *name;
    unsigned refs;
    bool cached;
    uint64_t last_use;
    int64_t *trans; /* ascending transition instants, seconds */
    uint8_t *idx;   /* type index per transition */
    size_t ntrans;
    struct tz_type *types;
    size_t ntypes;
    struct tz_rule rule;
};

static char zone_dir[256] = TZ_DEFAULT_DIR;
static tz_t *cache[TZ_CACHE_MAX];
static uint64_t use_clock;

/* --- calendar -------------------------------------------------------- */

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0))) {
        q--;
    }
    return q;
}

static bool is_leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

int tz_days_in_month(int64_t year, int month)
{
    static const int dim[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (month < 1 || month > 12) {
        return 0;
    }
    return dim[month - 1] + (month == 2 && is_leap(year) ? 1 : 0);
}

/* Howard Hinnant's days_from_civil, on int64_t. */
int64_t tz_days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = floor_div(y, 400);
    int64_t yoe = y - era * 400;
    int64_t mp = (m + 9) % 12;
    int64_t doy = (153 * mp + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

void tz_civil_from_days(int64_t z, int64_t *year, int *month, int *day)
{
    z += 719468;
    int64_t era = floor_div(z, 146097);
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    int d = (int)(doy - (153 * mp + 2) / 5 + 1);
    int m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *year = yoe + era * 400 + (m <= 2);
    *month = m;
    *day = d;
}

/* --- names and files ------------------------------------------------- */

bool tz_name_valid(const char *name)
{
    if (!name) {
        return false;
    }
    size_t len = strlen(name);
    if (len == 0 || len > TZ_NAME_MAX || name[0] == '/' || name[len - 1] == '/') {
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '+' || c == '-' || c == '/';
        if (!ok) {
            return false;
        }
        /* The charset has no '.', so "." and ".." components cannot occur;
         * an empty component ("a//b") is refused for a canonical name. */
        if (c == '/' && name[i + 1] == '/') {
            return false;
        }
    }
    return true;
}

/* Read the whole file into a malloc'd buffer of at most TZ_FILE_MAX bytes. */
static int read_file(const char *path, unsigned char **out, size_t *outlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        int e = errno;
        return (e == ENOENT || e == ENOTDIR) ? TDG_ENOTFOUND : -e;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    if (S_ISDIR(st.st_mode)) {
        close(fd);
        return TDG_ENOTFOUND; /* "America" is a folder, not a zone */
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return TDG_EINVAL_INPUT;
    }
    if (st.st_size > TZ_FILE_MAX) {
        close(fd);
        return TDG_ETOOBIG;
    }
    /* One byte more than allowed, to notice a file that grew meanwhile. */
    unsigned char *buf = malloc(TZ_FILE_MAX + 1);
    if (!buf) {
        close(fd);
        return -ENOMEM;
    }
    size_t len = 0;
    for (;;) {
        ssize_t r = read(fd, buf + len, TZ_FILE_MAX + 1 - len);
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            int e = errno;
            free(buf);
            close(fd);
            return -e;
        }
        if (r == 0) {
            break;
        }
        len += (size_t)r;
        if (len > TZ_FILE_MAX) {
            free(buf);
            close(fd);
            return TDG_ETOOBIG;
        }
    }
    close(fd);
    *out = buf;
    *outlen = len;
    return 0;
}

/* --- TZif ------------------------------------------------------------ */

static uint32_t be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static int64_t sbe64(const unsigned char *p)
{
    uint64_t u = ((uint64_t)be32(p) << 32) | be32(p + 4);
    /* Two's complement without implementation-defined conversion. */
    return u <= (uint64_t)INT64_MAX ? (int64_t)u : -(int64_t)(~u) - 1;
}

static int32_t sbe32(const unsigned char *p)
{
    uint32_t u = be32(p);
    return u <= (uint32_t)INT32_MAX ? (int32_t)u : -(int32_t)(~u) - 1;
}

struct tzif_header {
    char version; /* 0, '2', '3', '4' */
    uint32_t isutcnt, isstdcnt, leapcnt, timecnt, typecnt, charcnt;
};

struct parse_ctx {
    const char *path;
    const unsigned char *p;
    size_t len, pos;
};

static int bad(const struct parse_ctx *c, const char *why)
{
    LOG_WARN("tz", "%s: not a usable TZif file: %s (offset %zu)", c->path, why, c->pos);
    return TDG_EINVAL_INPUT;
}

static int parse_header(struct parse_ctx *c, struct tzif_header *h)
{
    if (c->len - c->pos < TZ_HEADER_LEN) {
        return bad(c, "truncated header");
    }
    const unsigned char *p = c->p + c->pos;
    if (memcmp(p, "TZif", 4) != 0) {
        return bad(c, "no TZif magic");
    }
    h->version = (char)p[4];
    if (h->version != 0 && (h->version < '2' || h->version > '4')) {
        return bad(c, "unknown version");
    }
    h->isutcnt = be32(p + 20);
    h->isstdcnt = be32(p + 24);
    h->leapcnt = be32(p + 28);
    h->timecnt = be32(p + 32);
    h->typecnt = be32(p + 36);
    h->charcnt = be32(p + 40);
    c->pos += TZ_HEADER_LEN;
    /* Bound every count first: the products below then cannot overflow a
     * 32-bit size_t. */
    if (h->isutcnt > TZ_MAX_COUNT || h->isstdcnt > TZ_MAX_COUNT || h->leapcnt > TZ_MAX_COUNT ||
        h->timecnt > TZ_MAX_COUNT || h->typecnt > TZ_MAX_COUNT || h->charcnt > TZ_MAX_COUNT) {
        return bad(c, "count out of range");
    }
    if (h->typecnt == 0 || h->typecnt > TZ_MAX_TYPES) {
        return bad(c, "typecnt must be 1..256");
    }
    if (h->charcnt == 0) {
        return bad(c, "charcnt is 0");
    }
    if ((h->isutcnt != 0 && h->isutcnt != h->typecnt) ||
        (h->isstdcnt != 0 && h->isstdcnt != h->typecnt)) {
        return bad(c, "isutcnt/isstdcnt must be 0 or typecnt");
    }
    return 0;
}

static size_t block_len(const struct tzif_header *h, size_t timesize)
{
    return (size_t)h->timecnt * timesize + h->timecnt + (size_t)h->typecnt * 6 + h->charcnt +
           (size_t)h->leapcnt * (timesize + 4) + h->isstdcnt + h->isutcnt;
}

static int parse_block(struct parse_ctx *c, const struct tzif_header *h, size_t timesize, tz_t *tz)
{
    if (c->len - c->pos < block_len(h, timesize)) {
        return bad(c, "truncated data block");
    }
    if (h->leapcnt != 0) {
        /* The "right/" zones count leap seconds in their timestamps; Tidings
         * works in POSIX time, where they do not exist. */
        return bad(c, "leap-second zones (right/...) are not supported");
    }
    const unsigned char *p = c->p + c->pos;
    tz->ntrans = h->timecnt;
    tz->ntypes = h->typecnt;
    tz->trans = calloc(h->timecnt ? h->timecnt : 1, sizeof(*tz->trans));
    tz->idx = calloc(h->timecnt ? h->timecnt : 1, 1);
    tz->types = calloc(h->typecnt, sizeof(*tz->types));
    if (!tz->trans || !tz->idx || !tz->types) {
        return -ENOMEM;
    }
    for (size_t i = 0; i < h->timecnt; i++) {
        tz->trans[i] = timesize == 8 ? sbe64(p + i * 8) : sbe32(p + i * 4);
        if (i > 0 && tz->trans[i] <= tz->trans[i - 1]) {
            return bad(c, "transition times not ascending");
        }
    }
    p += (size_t)h->timecnt * timesize;
    for (size_t i = 0; i < h->timecnt; i++) {
        if (p[i] >= h->typecnt) {
            return bad(c, "transition type index out of range");
        }
        tz->idx[i] = p[i];
    }
    p += h->timecnt;
    const unsigned char *chars = p + (size_t)h->typecnt * 6;
    for (size_t i = 0; i < h->typecnt; i++) {
        const unsigned char *t = p + i * 6;
        int32_t off = sbe32(t);
        if (off < -TZ_MAX_OFFSET || off > TZ_MAX_OFFSET) {
            return bad(c, "UT offset out of range");
        }
        if (t[4] > 1) {
            return bad(c, "isdst is not 0 or 1");
        }
        if (t[5] >= h->charcnt) {
            return bad(c, "designation index out of range");
        }
        const unsigned char *abbr = chars + t[5];
        size_t room = h->charcnt - t[5];
        const unsigned char *nul = memchr(abbr, '\0', room);
        if (!nul) {
            return bad(c, "designation not terminated");
        }
        size_t alen = (size_t)(nul - abbr);
        if (alen > TZ_ABBR_MAX) {
            alen = TZ_ABBR_MAX;
        }
        tz->types[i].off = off;
        tz->types[i].dst = t[4] == 1;
        memcpy(tz->types[i].abbr, abbr, alen);
        tz->types[i].abbr[alen] = '\0';
    }
    c->pos += block_len(h, timesize);
    return 0;
}

/* --- POSIX TZ strings ("CET-1CEST,M3.5.0,M10.5.0/3") ---------------- */

struct ps {
    const char *s;
    size_t i;
};

static bool ps_digit(const struct ps *p)
{
    return p->s[p->i] >= '0' && p->s[p->i] <= '9';
}

static int ps_num(struct ps *p, int min, int max, int *out)
{
    if (!ps_digit(p)) {
        return -1;
    }
    int v = 0;
    int digits = 0;
    while (ps_digit(p)) {
        if (++digits > 3) {
            return -1;
        }
        v = v * 10 + (p->s[p->i++] - '0');
    }
    if (v < min || v > max) {
        return -1;
    }
    *out = v;
    return 0;
}

static int ps_name(struct ps *p, char *out)
{
    size_t n = 0;
    if (p->s[p->i] == '<') {
        p->i++;
        while (p->s[p->i] && p->s[p->i] != '>') {
            char ch = p->s[p->i];
            bool ok = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
                      (ch >= '0' && ch <= '9') || ch == '+' || ch == '-';
            if (!ok) {
                return -1;
            }
            if (n < TZ_ABBR_MAX) {
                out[n] = ch;
            }
            n++;
            p->i++;
        }
        if (p->s[p->i] != '>') {
            return -1;
        }
        p->i++;
    } else {
        while ((p->s[p->i] >= 'A' && p->s[p->i] <= 'Z') ||
               (p->s[p->i] >= 'a' && p->s[p->i] <= 'z')) {
            if (n < TZ_ABBR_MAX) {
                out[n] = p->s[p->i];
            }
            n++;
            p->i++;
        }
    }
    if (n < 3) {
        return -1;
    }
    out[n < TZ_ABBR_MAX ? n : TZ_ABBR_MAX] = '\0';
    return 0;
}

/* [+-]hh[:mm[:ss]] with hours in 0..max_h; seconds out, sign applied. */
static int ps_time(struct ps *p, int max_h, int32_t *out)
{
    int sign = 1;
    if (p->s[p->i] == '+' || p->s[p->i] == '-') {
        sign = p->s[p->i] == '-' ? -1 : 1;
        p->i++;
    }
    int h = 0, m = 0, s = 0;
    if (ps_num(p, 0, max_h, &h) < 0) {
        return -1;
    }
    if (p->s[p->i] == ':') {
        p->i++;
        if (ps_num(p, 0, 59, &m) < 0) {
            return -1;
        }
        if (p->s[p->i] == ':') {
            p->i++;
            if (ps_num(p, 0, 59, &s) < 0) {
                return -1;
            }
        }
    }
    *out = sign * (int32_t)(h * 3600 + m * 60 + s);
    return 0;
}

static int ps_date(struct ps *p, struct tz_rule_date *d)
{
    memset(d, 0, sizeof(*d));
    d->time = 2 * 3600; /* default 02:00 */
    char c = p->s[p->i];
    if (c == 'J') {
        p->i++;
        d->kind = 'J';
        if (ps_num(p, 1, 365, &d->n) < 0) {
            return -1;
        }
    } else if (c == 'M') {
        p->i++;
        d->kind = 'M';
        if (ps_num(p, 1, 12, &d->m) < 0 || p->s[p->i++] != '.' || ps_num(p, 1, 5, &d->w) < 0 ||
            p->s[p->i++] != '.' || ps_num(p, 0, 6, &d->d) < 0) {
            return -1;
        }
    } else {
        d->kind = 'D';
        if (ps_num(p, 0, 365, &d->n) < 0) {
            return -1;
        }
    }
    if (p->s[p->i] == '/') {
        p->i++;
        /* Version 3 allows -167..167 hours (RFC 8536 3.3.1). */
        if (ps_time(p, 167, &d->time) < 0) {
            return -1;
        }
    }
    return 0;
}

/* Parse a POSIX TZ string into rule. Empty string: no rule. */
static int parse_posix(const char *s, struct tz_rule *r)
{
    memset(r, 0, sizeof(*r));
    if (s[0] == '\0') {
        return 0;
    }
    struct ps p = {s, 0};
    int32_t off;
    if (ps_name(&p, r->std.abbr) < 0 || ps_time(&p, 24, &off) < 0) {
        return -1;
    }
    r->std.off = -off; /* POSIX counts west of Greenwich as positive */
    r->present = true;
    if (s[p.i] == '\0') {
        return 0;
    }
    if (ps_name(&p, r->dst.abbr) < 0) {
        return -1;
    }
    r->has_dst = true;
    r->dst.dst = true;
    r->dst.off = r->std.off + 3600;
    if (s[p.i] != ',' && s[p.i] != '\0') {
        if (ps_time(&p, 24, &off) < 0) {
            return -1;
        }
        r->dst.off = -off;
    }
    if (s[p.i] == '\0') {
        /* No rule given: POSIX leaves it to the implementation; use the US
         * rules, as glibc and tzcode do. */
        r->start = (struct tz_rule_date){.kind = 'M', .m = 3, .w = 2, .d = 0, .time = 7200};
        r->end = (struct tz_rule_date){.kind = 'M', .m = 11, .w = 1, .d = 0, .time = 7200};
        return 0;
    }
    if (s[p.i++] != ',' || ps_date(&p, &r->start) < 0 || s[p.i++] != ',' ||
        ps_date(&p, &r->end) < 0 || s[p.i] != '\0') {
        return -1;
    }
    return 0;
}

/* Day number (from 1970-01-01) of rule date d in year y. */
static int64_t rule_day(int64_t y, const struct tz_rule_date *d)
{
    int64_t jan1 = tz_days_from_civil(y, 1, 1);
    switch (d->kind) {
    case 'J':
        /* Julian day 1..365; February 29 is never counted. */
        return jan1 + d->n - 1 + (is_leap(y) && d->n >= 60 ? 1 : 0);
    case 'D':
        return jan1 + d->n;
    default: {
        int64_t first = tz_days_from_civil(y, d->m, 1);
        int64_t wday_first = (first + 4) % 7; /* 1970-01-01 was a Thursday */
        if (wday_first < 0) {
            wday_first += 7;
        }
        int64_t day = first + (d->d - wday_first + 7) % 7 + (int64_t)(d->w - 1) * 7;
        int64_t last = first + tz_days_in_month(y, d->m) - 1;
        while (day > last) {
            day -= 7; /* week 5 means "the last" */
        }
        return day;
    }
    }
}

static const struct tz_type *rule_type(const struct tz_rule *r, int64_t t)
{
    if (!r->has_dst) {
        return &r->std;
    }
    int64_t y;
    int mo, d;
    tz_civil_from_days(floor_div(t + r->std.off, 86400), &y, &mo, &d);
    /* Start is given in standard time, end in daylight time. */
    int64_t start = rule_day(y, &r->start) * 86400 + r->start.time - r->std.off;
    int64_t end = rule_day(y, &r->end) * 86400 + r->end.time - r->dst.off;
    bool dst;
    if (start < end) {
        dst = t >= start && t < end;
    } else {
        dst = !(t >= end && t < start); /* southern hemisphere */
    }
    return dst ? &r->dst : &r->std;
}

static const struct tz_type *type_at(const tz_t *tz, int64_t t)
{
    if (tz->ntrans == 0) {
        return tz->rule.present ? rule_type(&tz->rule, t) : &tz->types[0];
    }
    if (t < tz->trans[0]) {
        return &tz->types[0]; /* RFC 8536: type 0 before the first transition */
    }
    if (t >= tz->trans[tz->ntrans - 1]) {
        return tz->rule.present ? rule_type(&tz->rule, t) : &tz->types[tz->idx[tz->ntrans - 1]];
    }
    size_t lo = 0, hi = tz->ntrans - 1; /* trans[lo] <= t < trans[hi] */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (tz->trans[mid] <= t) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    return &tz->types[tz->idx[lo]];
}

/* --- loading --------------------------------------------------------- */

static void tz_destroy(tz_t *tz)
{
    if (!tz) {
        return;
    }
    free(tz->name);
    free(tz->trans);
    free(tz->idx);
    free(tz->types);
    free(tz);
}

static int parse_tzif(const char *path, const unsigned char *buf, size_t len, tz_t *tz)
{
    struct parse_ctx c = {path, buf, len, 0};
    struct tzif_header h;
    int rc = parse_header(&c, &h);
    if (rc < 0) {
        return rc;
    }
    if (h.version == 0) {
        return parse_block(&c, &h, 4, tz);
    }
    /* Version 2+: skip the 32-bit block, use the 64-bit one and the footer. */
    size_t skip = block_len(&h, 4);
    if (c.len - c.pos < skip) {
        return bad(&c, "truncated version 1 block");
    }
    c.pos += skip;
    if ((rc = parse_header(&c, &h)) < 0) {
        return rc;
    }
    if ((rc = parse_block(&c, &h, 8, tz)) < 0) {
        return rc;
    }
    if (c.pos >= c.len || c.p[c.pos] != '\n') {
        return bad(&c, "missing footer");
    }
    c.pos++;
    const unsigned char *nl = memchr(c.p + c.pos, '\n', c.len - c.pos);
    if (!nl) {
        return bad(&c, "footer not terminated");
    }
    size_t flen = (size_t)(nl - (c.p + c.pos));
    if (flen > TZ_FOOTER_MAX) {
        return bad(&c, "footer too long");
    }
    char footer[TZ_FOOTER_MAX + 1];
    memcpy(footer, c.p + c.pos, flen);
    footer[flen] = '\0';
    if (strlen(footer) != flen || parse_posix(footer, &tz->rule) < 0) {
        return bad(&c, "bad POSIX TZ string in footer");
    }
    return 0;
}

int tz_load_file(const char *path, tz_t **out)
{
    unsigned char *buf = NULL;
    size_t len = 0;
    int rc = read_file(path, &buf, &len);
    if (rc < 0) {
        return rc;
    }
    tz_t *tz = calloc(1, sizeof(*tz));
    if (!tz || !(tz->name = strdup(path))) {
        free(tz);
        free(buf);
        return -ENOMEM;
    }
    rc = parse_tzif(path, buf, len, tz);
    free(buf);
    if (rc < 0) {
        tz_destroy(tz);
        return rc;
    }
    tz->refs = 1;
    *out = tz;
    return 0;
}

/* A UTC zone without any file, for boxes without the tz database. */
static int builtin_utc(tz_t **out)
{
    tz_t *tz = calloc(1, sizeof(*tz));
    if (!tz) {
        return -ENOMEM;
    }
    tz->types = calloc(1, sizeof(*tz->types));
    if (!tz->types) {
        free(tz);
        return -ENOMEM;
    }
    memcpy(tz->types[0].abbr, "UTC", 4);
    tz->ntypes = 1;
    tz->refs = 1;
    *out = tz;
    return 0;
}

static void cache_put(tz_t *tz)
{
    size_t slot = TZ_CACHE_MAX;
    for (size_t i = 0; i < TZ_CACHE_MAX; i++) {
        if (!cache[i]) {
            slot = i;
            break;
        }
        /* Evict the least recently used zone nobody holds. */
        if (cache[i]->refs == 0 &&
            (slot == TZ_CACHE_MAX || cache[i]->last_use < cache[slot]->last_use)) {
            slot = i;
        }
    }
    if (slot == TZ_CACHE_MAX) {
        return; /* all held: the caller gets a private copy */
    }
    tz_destroy(cache[slot]);
    cache[slot] = tz;
    tz->cached = true;
}

int tz_load(const char *name, tz_t **out)
{
    if (!tz_name_valid(name)) {
        return TDG_EINVAL_INPUT;
    }
    for (size_t i = 0; i < TZ_CACHE_MAX; i++) {
        if (cache[i] && strcmp(cache[i]->name, name) == 0) {
            cache[i]->refs++;
            cache[i]->last_use = ++use_clock;
            *out = cache[i];
            return 0;
        }
    }
    char path[sizeof(zone_dir) + TZ_NAME_MAX + 2];
    snprintf(path, sizeof(path), "%s/%s", zone_dir, name);
    tz_t *tz = NULL;
    int rc = tz_load_file(path, &tz);
    if (rc == TDG_ENOTFOUND && (strcmp(name, "UTC") == 0 || strcmp(name, "Etc/UTC") == 0)) {
        rc = builtin_utc(&tz);
    }
    if (rc < 0) {
        return rc;
    }
    char *n = strdup(name);
    if (!n) {
        tz_destroy(tz);
        return -ENOMEM;
    }
    free(tz->name);
    tz->name = n;
    tz->last_use = ++use_clock;
    cache_put(tz);
    *out = tz;
    return 0;
}

void tz_free(tz_t *tz)
{
    if (!tz) {
        return;
    }
    if (tz->refs > 0) {
        tz->refs--;
    }
    if (tz->refs == 0 && !tz->cached) {
        tz_destroy(tz);
    }
}

const char *tz_name(const tz_t *tz)
{
    return tz->name ? tz->name : "UTC";
}

void tz_cache_flush(void)
{
    for (size_t i = 0; i < TZ_CACHE_MAX; i++) {
        if (cache[i] && cache[i]->refs == 0) {
            tz_destroy(cache[i]);
            cache[i] = NULL;
        } else if (cache[i]) {
            /* Still held: hand it over to its holders, freed by the last
             * tz_free(), so a later load reads the file afresh. */
            cache[i]->cached = false;
            cache[i] = NULL;
        }
    }
}

int tz_set_dir(const char *dir)
{
    if (!dir) {
        dir = TZ_DEFAULT_DIR;
    }
    if (strlen(dir) >= sizeof(zone_dir)) {
        return -ENAMETOOLONG;
    }
    snprintf(zone_dir, sizeof(zone_dir), "%s", dir);
    tz_cache_flush();
    return 0;
}

/* --- conversions ----------------------------------------------------- */

int32_t tz_offset_at(const tz_t *tz, int64_t utc_ms, bool *is_dst)
{
    const struct tz_type *t = type_at(tz, floor_div(utc_ms, 1000));
    if (is_dst) {
        *is_dst = t->dst;
    }
    return t->off;
}

void tz_utc_to_local(const tz_t *tz, int64_t utc_ms, struct tz_tm *tm)
{
    int64_t secs = floor_div(utc_ms, 1000);
    const struct tz_type *t = type_at(tz, secs);
    int64_t local = secs + t->off;
    int64_t days = floor_div(local, 86400);
    int64_t sod = local - days * 86400;
    memset(tm, 0, sizeof(*tm));
    tz_civil_from_days(days, &tm->year, &tm->month, &tm->day);
    tm->hour = (int)(sod / 3600);
    tm->minute = (int)(sod % 3600 / 60);
    tm->second = (int)(sod % 60);
    tm->ms = (int)(utc_ms - secs * 1000);
    int64_t wd = (days + 4) % 7;
    tm->wday = (int)(wd < 0 ? wd + 7 : wd);
    tm->yday = (int)(days - tz_days_from_civil(tm->year, 1, 1));
    tm->utc_offset_s = t->off;
    tm->is_dst = t->dst;
    memcpy(tm->abbr, t->abbr, sizeof(tm->abbr));
}

static int64_t off_s(const tz_t *tz, int64_t t)
{
    return type_at(tz, t)->off;
}

int tz_local_to_utc(const tz_t *tz, int64_t year, int month, int day, int hour, int minute,
                    int second, enum tz_ambiguity amb, int64_t *utc_ms, enum tz_resolution *how)
{
    if (year < -TZ_YEAR_LIMIT || year > TZ_YEAR_LIMIT || day < 1 ||
        day > tz_days_in_month(year, month) || hour < 0 || hour > 23 || minute < 0 || minute > 59 ||
        second < 0 || second > 59) {
        return TDG_EINVAL_INPUT;
    }
    int64_t wall =
        tz_days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second;
    /* The offsets in effect around this wall time: offsets stay within
     * +-26 h, so every instant whose wall clock can read `wall` lies within
     * two days of it. Sampling every 12 h finds every offset of real zones,
     * whose transitions are months (at least days) apart. */
    int64_t offs[9] = {0};
    size_t noffs = 0;
    for (int k = 0; k < 9; k++) {
        int64_t o = off_s(tz, wall - 2 * 86400 + (int64_t)k * 43200);
        bool seen = false;
        for (size_t i = 0; i < noffs; i++) {
            seen = seen || offs[i] == o;
        }
        if (!seen) {
            offs[noffs++] = o;
        }
    }
    int64_t lo_valid = INT64_MAX, hi_valid = INT64_MIN;
    int nvalid = 0;
    int64_t omin = offs[0], omax = offs[0];
    for (size_t i = 0; i < noffs; i++) {
        omin = offs[i] < omin ? offs[i] : omin;
        omax = offs[i] > omax ? offs[i] : omax;
        int64_t t = wall - offs[i];
        if (off_s(tz, t) == offs[i]) {
            nvalid++;
            lo_valid = t < lo_valid ? t : lo_valid;
            hi_valid = t > hi_valid ? t : hi_valid;
        }
    }
    enum tz_resolution res;
    int64_t t;
    if (nvalid == 1) {
        res = TZ_EXACT;
        t = lo_valid;
    } else if (nvalid > 1) {
        res = TZ_OVERLAP;
        t = amb == TZ_LATER ? hi_valid : lo_valid;
    } else {
        /* In a gap: the wall clock t + off(t) jumps over `wall`. Find the
         * first instant whose wall clock is past it - the transition. */
        res = TZ_GAP;
        int64_t lo = wall - omax - 1; /* wall clock <= wall - 1 */
        int64_t hi = wall - omin + 1; /* wall clock >= wall + 1 */
        while (hi - lo > 1) {
            int64_t mid = lo + (hi - lo) / 2;
            if (mid + off_s(tz, mid) > wall) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        t = hi;
    }
    *utc_ms = t * 1000;
    if (how) {
        *how = res;
    }
    return 0;
}
