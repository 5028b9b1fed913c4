/* print.h - tidingsctl's human-readable output: aligned tables and
 * key/value blocks from the hub's JSON answers. */
#ifndef TIDINGS_CTL_PRINT_H
#define TIDINGS_CTL_PRINT_H

#include <cjson/cJSON.h>
#include <stdio.h>

struct col {
    const char *header;
    const char *key; /* field of each row; "a.b" for a nested one */
    int max;         /* widest a cell may be (longer is cut with "~"); 0 = 40 */
};

/* One row per element of arr; columns sized to their content. "(none)"
 * when arr is empty. */
void print_table(FILE *out, const cJSON *arr, const struct col *cols, size_t ncols);

/* "  label: value" lines for the given fields of obj, labels aligned. */
void print_fields(FILE *out, const cJSON *obj, const struct col *fields, size_t n);

/* The text of a scalar field ("-" for null/absent); into buf. */
const char *print_cell(const cJSON *obj, const char *key, char *buf, size_t len);

#endif
