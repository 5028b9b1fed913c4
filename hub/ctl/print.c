/* print.c - tables and key/value blocks (see print.h). */
#include "print.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define CELL_MAX 512

static const cJSON *lookup(const cJSON *obj, const char *key)
{
    char part[64];
    const cJSON *v = obj;
    while (v && *key) {
        size_t len = strcspn(key, ".");
        if (len >= sizeof(part)) {
            return NULL;
        }
        memcpy(part, key, len);
        part[len] = '\0';
        v = cJSON_GetObjectItemCaseSensitive(v, part);
        key += len;
        if (*key == '.') {
            key++;
        }
    }
    return v;
}

const char *print_cell(const cJSON *obj, const char *key, char *buf, size_t len)
{
    const cJSON *v = lookup(obj, key);
    if (!v || cJSON_IsNull(v)) {
        snprintf(buf, len, "-");
    } else if (cJSON_IsString(v)) {
        const char *s = v->valuestring;
        /* Times: the hub's RFC 3339 with ms; seconds are enough here. */
        size_t n = strlen(s);
        if (n == 24 && s[10] == 'T' && s[19] == '.' && s[23] == 'Z') {
            snprintf(buf, len, "%.19sZ", s);
        } else {
            snprintf(buf, len, "%s", *s ? s : "-");
        }
    } else if (cJSON_IsBool(v)) {
        snprintf(buf, len, "%s", cJSON_IsTrue(v) ? "yes" : "no");
    } else if (cJSON_IsNumber(v)) {
        double d = v->valuedouble;
        if (d == floor(d) && fabs(d) < 1e15) {
            snprintf(buf, len, "%lld", (long long)d);
        } else {
            snprintf(buf, len, "%.3g", d);
        }
    } else if (cJSON_IsArray(v)) {
        buf[0] = '\0';
        size_t at = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, v)
        {
            char one[128];
            const char *t = cJSON_IsString(e) ? e->valuestring : "?";
            snprintf(one, sizeof(one), "%s%s", at ? "," : "", t);
            size_t ol = strlen(one);
            if (at + ol + 1 >= len) {
                break;
            }
            memcpy(buf + at, one, ol + 1);
            at += ol;
        }
        if (!at) {
            snprintf(buf, len, "-");
        }
    } else {
        char *t = cJSON_PrintUnformatted(v);
        snprintf(buf, len, "%s", t ? t : "?");
        free(t);
    }
    /* one line per row: control characters become spaces */
    for (char *p = buf; *p; p++) {
        if ((unsigned char)*p < 0x20) {
            *p = ' ';
        }
    }
    return buf;
}

/* Display width of a UTF-8 string (code points; good enough for tables). */
static int width(const char *s)
{
    int w = 0;
    for (; *s; s++) {
        if (((unsigned char)*s & 0xC0) != 0x80) {
            w++;
        }
    }
    return w;
}

/* Cut s to at most max code points, marking the cut with '~'. */
static void cut(char *s, int max)
{
    int w = 0;
    for (char *p = s; *p; p++) {
        if (((unsigned char)*p & 0xC0) != 0x80) {
            if (w == max - 1 && width(p) > 1) {
                p[0] = '~';
                p[1] = '\0';
                return;
            }
            w++;
        }
    }
}

static void pad(FILE *out, const char *s, int w, bool last)
{
    fputs(s, out);
    if (!last) {
        for (int i = width(s); i < w + 2; i++) {
            fputc(' ', out);
        }
    }
}

void print_table(FILE *out, const cJSON *arr, const struct col *cols, size_t ncols)
{
    int n = cJSON_GetArraySize(arr);
    if (n == 0) {
        fprintf(out, "(none)\n");
        return;
    }
    int w[32] = {0};
    if (ncols > 32) {
        ncols = 32;
    }
    char buf[CELL_MAX];
    for (size_t c = 0; c < ncols; c++) {
        w[c] = width(cols[c].header);
    }
    const cJSON *row;
    cJSON_ArrayForEach(row, arr)
    {
        for (size_t c = 0; c < ncols; c++) {
            print_cell(row, cols[c].key, buf, sizeof(buf));
            cut(buf, cols[c].max ? cols[c].max : 40);
            int cw = width(buf);
            if (cw > w[c]) {
                w[c] = cw;
            }
        }
    }
    for (size_t c = 0; c < ncols; c++) {
        pad(out, cols[c].header, w[c], c + 1 == ncols);
    }
    fputc('\n', out);
    cJSON_ArrayForEach(row, arr)
    {
        for (size_t c = 0; c < ncols; c++) {
            print_cell(row, cols[c].key, buf, sizeof(buf));
            cut(buf, cols[c].max ? cols[c].max : 40);
            pad(out, buf, w[c], c + 1 == ncols);
        }
        fputc('\n', out);
    }
}

void print_fields(FILE *out, const cJSON *obj, const struct col *fields, size_t n)
{
    int w = 0;
    for (size_t i = 0; i < n; i++) {
        int fw = width(fields[i].header);
        if (fw > w) {
            w = fw;
        }
    }
    char buf[CELL_MAX];
    for (size_t i = 0; i < n; i++) {
        print_cell(obj, fields[i].key, buf, sizeof(buf));
        fprintf(out, "  %s:%*s %s\n", fields[i].header, w - width(fields[i].header), "", buf);
    }
}
