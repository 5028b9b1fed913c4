/*
 * tz.h - IANA time zones from the system database, without TZ or localtime.
 *
 * A zone is read from its TZif file (RFC 8536, versions 1 to 4) under the
 * zone directory (default /usr/share/zoneinfo): the transitions it lists,
 * and its footer POSIX TZ rule ("CET-1CEST,M3.5.0,M10.5.0/3") for instants
 * past the last listed transition. Nothing touches the process environment
 * or the C library's global time zone, so two zones can be used side by side.
 *
 * Times are int64_t Unix milliseconds (UTC) and never pass through time_t,
 * so everything stays right after 2038 on 32-bit ARM.
 *
 * Loaded zones are kept in a small cache (TZ_CACHE_MAX entries) and shared:
 * tz_load() of a name already loaded is a lookup. Not thread-safe: the cache
 * is process-global and meant for the one event loop thread.
 *
 * Resolution of local (wall-clock) times, used by tz_local_to_utc():
 *   - a wall time that does not exist (the clock jumps over it, e.g. 02:30
 *     on the night DST starts) resolves to the first instant after the gap
 *     (the instant the clock jumps: 03:00 new time);
 *   - a wall time that exists twice (the clock goes back over it, e.g. 01:30
 *     on the night DST ends in New York) resolves to the earlier instant by
 *     default (TZ_EARLIER), or the later one with TZ_LATER.
 */
#ifndef TIDINGS_TZ_H
#define TIDINGS_TZ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TZ_NAME_MAX 64          /* bytes of an IANA name, "America/Argentina/Buenos_Aires" */
#define TZ_FILE_MAX (64 * 1024) /* TZif files are a few KiB; anything larger is refused */
#define TZ_ABBR_MAX 15          /* "CEST", "+0530"; longer designations are cut */
#define TZ_CACHE_MAX 16         /* zones kept loaded */
#define TZ_DEFAULT_DIR "/usr/share/zoneinfo"

typedef struct tz tz_t;

/* Broken-down local time. */
struct tz_tm {
    int64_t year;         /* proleptic Gregorian, e.g. 2026 */
    int month;            /* 1..12 */
    int day;              /* 1..31 */
    int hour;             /* 0..23 */
    int minute;           /* 0..59 */
    int second;           /* 0..59 */
    int ms;               /* 0..999 */
    int wday;             /* 0 = Sunday .. 6 */
    int yday;             /* 0..365 */
    int32_t utc_offset_s; /* local = UTC + offset; +3600 for CET, -18000 for EST */
    bool is_dst;
    char abbr[TZ_ABBR_MAX + 1]; /* "CEST"; "" when the zone gives none */
};

/* How tz_local_to_utc() resolves a wall time that occurs twice. */
enum tz_ambiguity { TZ_EARLIER = 0, TZ_LATER };

/* What tz_local_to_utc() found (optional output). */
enum tz_resolution {
    TZ_EXACT = 0, /* the wall time exists once */
    TZ_GAP,       /* did not exist: moved to the first instant after the gap */
    TZ_OVERLAP,   /* existed twice: resolved by the tz_ambiguity given */
};

/* Is name acceptable as a zone name? 1..TZ_NAME_MAX bytes of [A-Za-z0-9_+-/],
 * no leading '/', no empty component, no "." or ".." component. Checked by
 * tz_load() too; exposed so configuration and snapshot parsers can report a
 * bad name before any file is touched. */
bool tz_name_valid(const char *name);

/* Load the zone `name` (e.g. "Europe/Berlin", "UTC") from the zone
 * directory, or take it from the cache. On success *out is a shared,
 * read-only handle: release it with tz_free(). "UTC" (also "Etc/UTC") works
 * even when the database is not installed.
 * Returns 0, or:
 *   TDG_EINVAL_INPUT  the name is not valid (see tz_name_valid)
 *   TDG_ENOTFOUND     no such zone in the database
 *   TDG_ETOOBIG       the file is larger than TZ_FILE_MAX
 *   TDG_EINVAL_INPUT  the file is not a usable TZif file (logged with why)
 *   -errno            the file could not be read
 */
int tz_load(const char *name, tz_t **out);

/* Release a handle from tz_load()/tz_load_file(). Safe with NULL. */
void tz_free(tz_t *tz);

/* The zone's name as given to tz_load() (the path for tz_load_file()). */
const char *tz_name(const tz_t *tz);

/* UTC offset in seconds at the instant utc_ms (local = UTC + offset), and
 * whether DST is in effect then (is_dst may be NULL). Never fails. */
int32_t tz_offset_at(const tz_t *tz, int64_t utc_ms, bool *is_dst);

/* The local time at instant utc_ms. Never fails for years within
 * +-2^31 of today; the whole tm is filled. */
void tz_utc_to_local(const tz_t *tz, int64_t utc_ms, struct tz_tm *tm);

/* The instant (UTC ms) at which the wall clock of tz shows the given local
 * time; gaps and overlaps are resolved as described at the top of this file
 * (how, optional, says which case applied). Fields must be a real calendar
 * date and time: month 1..12, day within the month, hour 0..23, minute
 * 0..59, second 0..59. Returns 0, or TDG_EINVAL_INPUT for an impossible
 * date or time, or a year outside -1000000..1000000. */
int tz_local_to_utc(const tz_t *tz, int64_t year, int month, int day, int hour, int minute,
                    int second, enum tz_ambiguity amb, int64_t *utc_ms, enum tz_resolution *how);

/* Set the zone directory (default TZ_DEFAULT_DIR; NULL restores it) and
 * drop unreferenced cached zones. For boards with the database elsewhere
 * and for tests. At most 255 bytes; 0 or -ENAMETOOLONG. */
int tz_set_dir(const char *dir);

/* Free every cached zone that no handle refers to any more (e.g. after a
 * tzdata update, or before exit so leak checkers stay quiet). */
void tz_cache_flush(void);

/* Internal entry point, exposed for tests and tools: parse the TZif file at
 * path (not cached; same size limit and errors as tz_load). */
int tz_load_file(const char *path, tz_t **out);

/* Calendar helpers (proleptic Gregorian, no time zone). Days are counted
 * from 1970-01-01 = 0 and may be negative. */
int64_t tz_days_from_civil(int64_t year, int month, int day);
void tz_civil_from_days(int64_t days, int64_t *year, int *month, int *day);
/* 28..31 for a valid month, 0 otherwise. */
int tz_days_in_month(int64_t year, int month);

#endif
