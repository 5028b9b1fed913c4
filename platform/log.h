/*
 * log.h - levelled logging to stderr.
 *
 * One line per event: "2026-11-21T22:49:47.123Z INFO  outbox: message".
 * Messages should carry numbers as key=value pairs so they can be grepped.
 * Thread-safe: any thread may log. Each line is formatted into a bounded
 * buffer on the caller's stack (gmtime_r, no static state) and written with
 * one write(2), so lines of different threads never interleave; the level is
 * an atomic.
 */
#ifndef TIDINGS_LOG_H
#define TIDINGS_LOG_H

enum log_level { LOG_LVL_ERROR = 0, LOG_LVL_WARN, LOG_LVL_INFO, LOG_LVL_DEBUG };

void log_set_level(enum log_level level);
enum log_level log_get_level(void);
/* Parses "error", "warn", "info", "debug". Returns 0 or -EINVAL. */
int log_level_parse(const char *s, enum log_level *out);

void log_msg(enum log_level level, const char *module, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define LOG_ERROR(mod, ...) log_msg(LOG_LVL_ERROR, mod, __VA_ARGS__)
#define LOG_WARN(mod, ...) log_msg(LOG_LVL_WARN, mod, __VA_ARGS__)
#define LOG_INFO(mod, ...) log_msg(LOG_LVL_INFO, mod, __VA_ARGS__)
#define LOG_DEBUG(mod, ...)                                                  \
    do {                                                                     \
        if (log_get_level() >= LOG_LVL_DEBUG) {                              \
            log_msg(LOG_LVL_DEBUG, mod, __VA_ARGS__);                        \
        }                                                                    \
    } while (0)

#endif
