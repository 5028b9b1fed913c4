/* test_receipts_write.c - the receipts encoder (proto/envelope.c) writes
 * byte for byte what the cJSON encoder it replaced printed: the reference
 * below is that encoder, kept here. Edge cases (every escape, fields
 * filled to the last byte with no NUL, channel counts past the maximum,
 * extreme numbers and times, the date cache across days) and random
 * receipts; proto_receipts_write's snprintf contract at every size. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "proto.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- the reference: proto_receipts_serialize before it wrote directly ---- */

static void bounded(char *dst, const char *src, size_t size)
{
    memcpy(dst, src, size);
    dst[size - 1] = '\0';
}

static char *ref_serialize(const struct proto_receipt *r, size_t n)
{
    cJSON *root = cJSON_CreateObject(), *arr;
    char *s = NULL;
    if (!root || !cJSON_AddNumberToObject(root, "v", PROTO_VERSION)) {
        goto out;
    }
    if (!(arr = cJSON_AddArrayToObject(root, "receipts"))) {
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const struct proto_receipt *x = &r[i];
        char id[sizeof(x->id)], state[sizeof(x->state)], reason[sizeof(x->reason)], at[32];
        cJSON *o = cJSON_CreateObject(), *chs;
        if (!o) {
            goto out;
        }
        cJSON_AddItemToArray(arr, o);
        bounded(id, x->id, sizeof(id));
        bounded(state, x->state, sizeof(state));
        bounded(reason, x->reason, sizeof(reason));
        proto_format_rfc3339(x->at_ms, at, sizeof(at));
        if (!cJSON_AddStringToObject(o, "id", id) || !cJSON_AddStringToObject(o, "state", state) ||
            !cJSON_AddStringToObject(o, "reason", reason) ||
            !cJSON_AddStringToObject(o, "at", at) ||
            !(chs = cJSON_AddArrayToObject(o, "channels"))) {
            goto out;
        }
        unsigned nch = x->nch < PROTO_RECEIPT_MAX_CHANNELS ? x->nch : PROTO_RECEIPT_MAX_CHANNELS;
        for (unsigned c = 0; c < nch; c++) {
            const struct proto_receipt_channel *ch = &x->ch[c];
            char cname[sizeof(ch->channel)], result[sizeof(ch->result)], cr[sizeof(ch->reason)];
            cJSON *co = cJSON_CreateObject();
            if (!co) {
                goto out;
            }
            cJSON_AddItemToArray(chs, co);
            bounded(cname, ch->channel, sizeof(cname));
            bounded(result, ch->result, sizeof(result));
            bounded(cr, ch->reason, sizeof(cr));
            if (!cJSON_AddStringToObject(co, "channel", cname) ||
                !cJSON_AddStringToObject(co, "result", result) ||
                !cJSON_AddNumberToObject(co, "status", ch->status) ||
                !cJSON_AddStringToObject(co, "reason", cr) ||
                !cJSON_AddNumberToObject(co, "attempts", ch->attempts)) {
                goto out;
            }
        }
    }
    s = cJSON_PrintUnformatted(root);
out:
    cJSON_Delete(root);
    return s;
}

/* --- comparisons ---------------------------------------------------------- */

/* Both encoders, and the pointer form at every buffer size around the
 * length (snprintf's contract). */
static void same(const struct proto_receipt *r, size_t n)
{
    char *want = ref_serialize(r, n);
    assert_non_null(want);
    size_t len = 0;
    char *got = proto_receipts_serialize(r, n, &len);
    assert_non_null(got);
    assert_int_equal(len, strlen(want));
    assert_string_equal(got, want);

    const struct proto_receipt **p = calloc(n ? n : 1, sizeof(*p));
    assert_non_null(p);
    for (size_t i = 0; i < n; i++) {
        p[i] = &r[i];
    }
    assert_int_equal(proto_receipts_write(NULL, 0, p, n), len);
    char *buf = malloc(len + 2);
    assert_non_null(buf);
    size_t sizes[] = {1, 2, len / 2, len, len + 1, len + 2};
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        size_t cap = sizes[k];
        if (cap == 0) {
            continue;
        }
        memset(buf, 'X', len + 2);
        assert_int_equal(proto_receipts_write(buf, cap, p, n), len);
        size_t w = cap - 1 < len ? cap - 1 : len;
        if (w > 0) {
            assert_memory_equal(buf, want, w);
        }
        assert_int_equal(buf[w], '\0');
        for (size_t j = w + 1; j < len + 2; j++) {
            assert_int_equal(buf[j], 'X'); /* nothing written past the NUL */
        }
    }
    free(buf);
    free(p);
    free(got);
    free(want);
}

static struct proto_receipt *make(size_t n)
{
    struct proto_receipt *r = calloc(n, sizeof(*r));
    assert_non_null(r);
    return r;
}

static void test_empty_and_plain(void **state)
{
    (void)state;
    same(NULL, 0);
    struct proto_receipt *r = make(3);
    snprintf(r[0].id, sizeof(r[0].id), "01JABCDEFGH00000000");
    snprintf(r[0].state, sizeof(r[0].state), "delivered");
    r[0].at_ms = INT64_C(1763781000123);
    r[0].nch = 1;
    snprintf(r[0].ch[0].channel, sizeof(r[0].ch[0].channel), "apns");
    snprintf(r[0].ch[0].result, sizeof(r[0].ch[0].result), "ok");
    r[0].ch[0].status = 200;
    r[0].ch[0].attempts = 1;
    snprintf(r[1].id, sizeof(r[1].id), "x");
    snprintf(r[1].state, sizeof(r[1].state), "suppressed");
    snprintf(r[1].reason, sizeof(r[1].reason), "quiet_hours");
    r[1].at_ms = 0; /* no channels */
    r[2] = r[0];
    r[2].nch = 2;
    r[2].ch[1] = r[2].ch[0];
    snprintf(r[2].ch[1].channel, sizeof(r[2].ch[1].channel), "sms");
    snprintf(r[2].ch[1].result, sizeof(r[2].ch[1].result), "drop");
    snprintf(r[2].ch[1].reason, sizeof(r[2].ch[1].reason), "21610");
    r[2].ch[1].status = 400;
    r[2].ch[1].attempts = 3;
    same(r, 3);
    free(r);
}

/* Every byte value 1..255 in every string; fields full to the last byte
 * (no NUL: the encoder stops at size - 1). */
static void test_escapes_and_full_fields(void **state)
{
    (void)state;
    struct proto_receipt *r = make(2);
    char all[256];
    for (int i = 1; i < 256; i++) {
        all[i - 1] = (char)i;
    }
    all[255] = '\0';
    memcpy(r[0].id, all, sizeof(r[0].id) - 1);
    memcpy(r[0].state, "\"\\\b\f\n\r\t\x01\x1f\x7f", 11);
    memcpy(r[0].reason, all, sizeof(r[0].reason) - 1);
    r[0].nch = PROTO_RECEIPT_MAX_CHANNELS;
    for (unsigned c = 0; c < PROTO_RECEIPT_MAX_CHANNELS; c++) {
        memcpy(r[0].ch[c].channel, all + c * 16, sizeof(r[0].ch[c].channel) - 1);
        memcpy(r[0].ch[c].result, all + 100 + c, sizeof(r[0].ch[c].result) - 1);
        memcpy(r[0].ch[c].reason, all + c, sizeof(r[0].ch[c].reason) - 1);
    }
    /* no NUL anywhere in the second one's strings */
    memset(r[1].id, 'i', sizeof(r[1].id));
    memset(r[1].state, '"', sizeof(r[1].state));
    memset(r[1].reason, '\n', sizeof(r[1].reason));
    r[1].nch = PROTO_RECEIPT_MAX_CHANNELS + 5; /* past the maximum: 8 written */
    for (unsigned c = 0; c < PROTO_RECEIPT_MAX_CHANNELS; c++) {
        memset(r[1].ch[c].channel, 'c', sizeof(r[1].ch[c].channel));
        memset(r[1].ch[c].result, '\\', sizeof(r[1].ch[c].result));
        memset(r[1].ch[c].reason, 0x01, sizeof(r[1].ch[c].reason));
    }
    same(r, 2);
    free(r);
}

static void test_numbers_and_times(void **state)
{
    (void)state;
    const int statuses[] = {0, 1, -1, 200, 999, INT_MAX, INT_MIN, -40000};
    const unsigned attempts[] = {0, 1, 9, 10, 99, 100, 65536, UINT_MAX};
    const int64_t times[] = {
        0,
        -1,
        1,
        999,
        1000,
        86399999,
        86400000,
        -86400000,
        -86400001,
        INT64_C(951782400000),    /* 2000-02-29 */
        INT64_C(4107542399999),   /* 2100-02-28T23:59:59.999 */
        INT64_C(-62167219200000), /* the earliest written */
        INT64_C(-62167219200001), /* clamped up */
        INT64_C(253402300799999), /* the latest written */
        INT64_C(253402300800000), /* clamped down */
        INT64_MIN,
        INT64_MAX,
        INT64_C(1763781000123),
        INT64_C(1763781000123) + 86400000,
        INT64_C(1763781000123),
    };
    size_t n = sizeof(times) / sizeof(times[0]);
    struct proto_receipt *r = make(n);
    for (size_t i = 0; i < n; i++) {
        snprintf(r[i].id, sizeof(r[i].id), "n-%zu", i);
        snprintf(r[i].state, sizeof(r[i].state), "failed");
        r[i].at_ms = times[i];
        r[i].nch = 1;
        snprintf(r[i].ch[0].channel, sizeof(r[i].ch[0].channel), "fcm");
        snprintf(r[i].ch[0].result, sizeof(r[i].ch[0].result), "retry");
        r[i].ch[0].status = statuses[i % 8];
        r[i].ch[0].attempts = attempts[(i + 3) % 8];
    }
    same(r, n);
    /* one at a time too: the date is worked out afresh in each message */
    for (size_t i = 0; i < n; i++) {
        same(&r[i], 1);
    }
    free(r);
}

static uint64_t rng = 0x9E3779B97F4A7C15u;

static uint64_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void rand_text(char *dst, size_t size)
{
    size_t len = (size_t)(next_rand() % (size + 1)); /* size: no NUL at all */
    for (size_t i = 0; i < len && i < size; i++) {
        dst[i] = (char)(1 + next_rand() % 255);
    }
    if (len < size) {
        dst[len] = '\0';
    }
}

static void test_random(void **state)
{
    (void)state;
    for (int round = 0; round < 200; round++) {
        size_t n = (size_t)(next_rand() % 12);
        struct proto_receipt *r = make(n ? n : 1);
        for (size_t i = 0; i < n; i++) {
            rand_text(r[i].id, sizeof(r[i].id));
            rand_text(r[i].state, sizeof(r[i].state));
            rand_text(r[i].reason, sizeof(r[i].reason));
            r[i].at_ms =
                (int64_t)(next_rand() % INT64_C(500000000000000)) - INT64_C(100000000000000);
            r[i].nch = (unsigned)(next_rand() % (PROTO_RECEIPT_MAX_CHANNELS + 2));
            for (unsigned c = 0; c < PROTO_RECEIPT_MAX_CHANNELS; c++) {
                rand_text(r[i].ch[c].channel, sizeof(r[i].ch[c].channel));
                rand_text(r[i].ch[c].result, sizeof(r[i].ch[c].result));
                rand_text(r[i].ch[c].reason, sizeof(r[i].ch[c].reason));
                r[i].ch[c].status = (int)(int32_t)(uint32_t)next_rand();
                r[i].ch[c].attempts = (unsigned)next_rand();
            }
        }
        same(r, n);
        free(r);
    }
}

/* What the agent gets back: the parser reads what the encoder wrote. */
static void on_receipt(void *arg, const struct proto_receipt *r, const struct proto_error *bad)
{
    struct proto_receipt *out = arg;
    assert_null(bad);
    assert_non_null(r);
    *out = *r;
}

static void test_parses_back(void **state)
{
    (void)state;
    struct proto_receipt in = {.at_ms = INT64_C(1763781000123), .nch = 1};
    snprintf(in.id, sizeof(in.id), "01JABCDEFGH00000000");
    snprintf(in.state, sizeof(in.state), "failed");
    snprintf(in.reason, sizeof(in.reason), "provider said \"no\"\n\xc3\xa9");
    snprintf(in.ch[0].channel, sizeof(in.ch[0].channel), "apns");
    snprintf(in.ch[0].result, sizeof(in.ch[0].result), "drop");
    snprintf(in.ch[0].reason, sizeof(in.ch[0].reason), "Unregistered");
    in.ch[0].status = 410;
    in.ch[0].attempts = 2;
    const struct proto_receipt *p = &in;
    char buf[1024];
    size_t len = proto_receipts_write(buf, sizeof(buf), &p, 1);
    assert_true(len < sizeof(buf));
    struct proto_receipt out;
    memset(&out, 0, sizeof(out));
    struct proto_error e;
    assert_int_equal(proto_receipts_parse(buf, len, on_receipt, &out, &e), 0);
    assert_string_equal(out.id, in.id);
    assert_string_equal(out.reason, in.reason);
    assert_int_equal(out.at_ms, in.at_ms);
    assert_int_equal(out.nch, 1);
    assert_string_equal(out.ch[0].result, "drop");
    assert_int_equal(out.ch[0].status, 410);
    assert_int_equal(out.ch[0].attempts, 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_and_plain),   cmocka_unit_test(test_escapes_and_full_fields),
        cmocka_unit_test(test_numbers_and_times), cmocka_unit_test(test_random),
        cmocka_unit_test(test_parses_back),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
