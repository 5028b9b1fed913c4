/*
 * config.h - typed configuration tables.
 *
 * A module describes its settings as an array of config_entry; values live in
 * a plain struct at the given offsets. The same table gives the defaults, the
 * parser for "key = value" files and -o key=value overrides, and the example
 * config printed by --help-config. Parsers return errors, they never exit.
 *
 * File syntax: one "key = value" per line; '#' starts a comment line; blank
 * lines are ignored; values may be wrapped in double quotes. Sizes take
 * K/M/G suffixes (1024-based); durations take ms/s/m/h/d (a bare number is
 * seconds). Unknown keys, bad values and duplicates are errors reported as
 * "file:line: key: reason".
 */
#ifndef TIDINGS_CONFIG_H
#define TIDINGS_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum config_type {
    CONFIG_STRING,   /* char[size] at offset, NUL-terminated; longer is an error */
    CONFIG_INT,      /* int64_t, within [min, max] */
    CONFIG_BOOL,     /* bool: true/false/yes/no/on/off/1/0 */
    CONFIG_SIZE,     /* uint64_t bytes: 512, 64K, 16M, 1G; within [min, max] */
    CONFIG_DURATION, /* uint64_t milliseconds: 250ms, 30s, 5m, 2h, 1d; within [min, max] */
    CONFIG_ENUM,     /* int index into choices (NULL-terminated) */
};

struct config_entry {
    const char *key;
    enum config_type type;
    const char *def; /* default, as text; NULL means "" / 0 */
    size_t offset;
    size_t size; /* CONFIG_STRING: buffer size */
    const char *help;
    const char *const *choices; /* CONFIG_ENUM */
    int64_t min, max;           /* numeric bounds; both 0 = unbounded */
};

#define CONFIG_ERR_MAX 256

/* Apply every default. 0, or TDG_ECONFIG with err set (a bad default is a bug). */
int config_defaults(const struct config_entry *t, size_t n, void *base, char *err, size_t errlen);

/* Parse a file over the current values. 0, -errno if it cannot be read, or
 * TDG_ECONFIG with err = "path:line: key: reason". */
int config_load(const struct config_entry *t, size_t n, void *base, const char *path, char *err,
                size_t errlen);

/* Set one key from text ("-o key=value"). 0 or TDG_ECONFIG with err set. */
int config_set(const struct config_entry *t, size_t n, void *base, const char *key,
               const char *value, char *err, size_t errlen);

/* Print the table as a commented example config (defaults and help). */
void config_print(const struct config_entry *t, size_t n, FILE *out);

/* Parsers shared with the CLI. 0 or -EINVAL / -ERANGE. */
int config_parse_size(const char *s, uint64_t *out);
int config_parse_duration(const char *s, uint64_t *out_ms);

#endif
