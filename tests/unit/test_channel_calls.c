/* test_channel_calls.c - what hub/channel.c keeps for every channel: calls in
 * flight (defer, finish, counts, abort), the shared outcomes, the tenants'
 * claim check and the secret readers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "channel.h"
#include "error.h"
#include "http.h"

struct counts {
    uint64_t sent, ok, retry, drop;
};

/* A channel's own call: the shared part first, then its own. */
struct test_call {
    struct channel_call base;
    char *body;
};

static unsigned released;

static void test_release(struct channel_call *base)
{
    struct test_call *c = (struct test_call *)base;
    free(c->body);
    free(c);
    released++;
}

struct seen {
    unsigned calls;
    struct channel_outcome last;
    loop_t *stop; /* loop_stop on done when set */
};

static void on_done(void *ctx, const struct channel_outcome *o)
{
    struct seen *s = ctx;
    s->calls++;
    s->last = *o;
    if (s->stop) {
        loop_stop(s->stop);
    }
}

static void on_guard(loop_t *loop, uint64_t id, void *arg)
{
    (void)id;
    *(int *)arg = 1;
    loop_stop(loop);
}

/* One channel instance's calls, counted into n, reported into s. */
struct fixture {
    struct counts n;
    struct channel_calls cs;
    struct seen s;
};

static void fixture_init(struct fixture *f, loop_t *loop, void (*release)(struct channel_call *))
{
    memset(f, 0, sizeof(*f));
    channel_calls_init(&f->cs, loop, &f->n.sent, &f->n.ok, &f->n.retry, &f->n.drop, release);
    released = 0;
}

static struct test_call *new_call(struct channel_calls *cs, struct seen *s)
{
    struct test_call *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    c->body = strdup("form body");
    assert_non_null(c->body);
    channel_call_init(cs, &c->base, on_done, s);
    return c;
}

static void test_deferred_outcome_after_send(void **state)
{
    (void)state;
    loop_t *loop = loop_create();
    assert_non_null(loop);
    struct fixture f;
    fixture_init(&f, loop, test_release);
    f.s.stop = loop;

    struct test_call *c = new_call(&f.cs, &f.s);
    struct channel_outcome o;
    assert_int_equal(channel_drop(&o, "BadDeviceToken", CHANNEL_DEVICE_FLAG, -1), -1);
    assert_int_equal(channel_call_defer(&c->base, &o), 0);
    /* accepted and live, but done has not run: never inside send */
    assert_int_equal(f.s.calls, 0);
    assert_int_equal(f.n.sent, 1);
    assert_ptr_equal(f.cs.head, &c->base);

    int timed_out = 0;
    uint64_t guard = loop_timer_add(loop, 10000, on_guard, &timed_out);
    assert_int_equal(loop_run(loop), 0);
    loop_timer_cancel(loop, guard);
    assert_int_equal(timed_out, 0);
    assert_int_equal(f.s.calls, 1);
    assert_int_equal(f.s.last.result, CHANNEL_DROP);
    assert_string_equal(f.s.last.reason, "BadDeviceToken");
    assert_int_equal(f.s.last.device_action, CHANNEL_DEVICE_FLAG);
    assert_int_equal(f.n.drop, 1);
    assert_int_equal(f.n.ok + f.n.retry, 0);
    assert_null(f.cs.head);
    assert_int_equal(released, 1);
    loop_destroy(loop);
}

static void test_finish_counts_and_unlinks(void **state)
{
    (void)state;
    struct fixture f;
    fixture_init(&f, NULL, test_release);

    struct test_call *a = new_call(&f.cs, &f.s);
    struct test_call *b = new_call(&f.cs, &f.s);
    struct test_call *c = new_call(&f.cs, &f.s);
    channel_call_link(&a->base);
    channel_call_link(&b->base);
    channel_call_link(&c->base);
    assert_int_equal(f.n.sent, 3);

    struct channel_outcome o = {.result = CHANNEL_OK};
    channel_call_finish(&b->base, &o); /* from the middle */
    channel_retry(&o, 1500, "HTTP %d", 503);
    channel_call_finish(&c->base, &o); /* the head */
    assert_int_equal(f.s.calls, 2);
    assert_int_equal(f.s.last.result, CHANNEL_RETRY);
    assert_int_equal(f.s.last.retry_after_ms, 1500);
    assert_string_equal(f.s.last.reason, "HTTP 503");
    assert_ptr_equal(f.cs.head, &a->base);
    assert_null(a->base.prev);
    assert_null(a->base.next);

    o = (struct channel_outcome){.result = CHANNEL_DROP};
    channel_call_finish(&a->base, &o);
    assert_null(f.cs.head);
    assert_int_equal(f.n.ok, 1);
    assert_int_equal(f.n.retry, 1);
    assert_int_equal(f.n.drop, 1);
    assert_int_equal(f.n.sent, 3);
    assert_int_equal(released, 3);
}

static void test_abort_frees_without_done(void **state)
{
    (void)state;
    loop_t *loop = loop_create();
    assert_non_null(loop);
    struct fixture f;
    fixture_init(&f, loop, test_release);

    struct test_call *a = new_call(&f.cs, &f.s);
    struct test_call *b = new_call(&f.cs, &f.s);
    channel_call_link(&a->base);
    struct channel_outcome o;
    channel_retry(&o, 0, "rate_limited:local");
    assert_int_equal(channel_call_defer(&b->base, &o), 0);
    channel_calls_abort(&f.cs);
    assert_null(f.cs.head);
    assert_int_equal(released, 2);

    /* the deferred timer was cancelled: a loop turn reports nothing */
    int timed_out = 0;
    loop_timer_add(loop, 1, on_guard, &timed_out);
    assert_int_equal(loop_run(loop), 0);
    assert_int_equal(timed_out, 1);
    assert_int_equal(f.s.calls, 0);
    assert_int_equal(f.n.ok + f.n.retry + f.n.drop, 0);
    loop_destroy(loop);
}

static void test_release_defaults_to_free(void **state)
{
    (void)state;
    struct fixture f;
    fixture_init(&f, NULL, NULL);
    struct channel_call *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    channel_call_init(&f.cs, c, on_done, &f.s);
    channel_call_link(c);
    channel_calls_abort(&f.cs); /* ASan: nothing leaks */
    assert_null(f.cs.head);
    assert_int_equal(f.s.calls, 0);
}

static void test_no_answer(void **state)
{
    (void)state;
    struct channel_outcome o;
    memset(&o, 0x5a, sizeof(o));
    struct http_response r = {.status = 0, .error = -ETIMEDOUT, .error_text = "timed out"};
    channel_no_answer(&o, &r);
    assert_int_equal(o.result, CHANNEL_RETRY);
    assert_int_equal(o.status, 0);
    assert_int_equal(o.retry_after_ms, 0);
    assert_int_equal(o.device_action, CHANNEL_DEVICE_NONE);
    assert_string_equal(o.provider_id, "");
    assert_string_equal(o.reason, "timed out");

    /* no text (a fake transport): the error's name */
    r = (struct http_response){.status = 200, .error = -ECONNRESET, .error_text = NULL};
    channel_no_answer(&o, &r);
    assert_int_equal(o.status, 200);
    assert_string_equal(o.reason, tdg_strerror(-ECONNRESET));
    r.error_text = "";
    channel_no_answer(&o, &r);
    assert_string_equal(o.reason, tdg_strerror(-ECONNRESET));
}

static void test_no_tenant(void **state)
{
    (void)state;
    struct channel_outcome o;
    memset(&o, 0x5a, sizeof(o));
    assert_int_equal(channel_no_tenant(&o, "NoCredentialForTopic: %.4s", "com.example"), -1);
    assert_int_equal(o.result, CHANNEL_DROP);
    assert_int_equal(o.device_action, CHANNEL_DEVICE_NONE);
    assert_int_equal(o.status, 0);
    assert_string_equal(o.reason, "NoCredentialForTopic: com.");
}

/* Tenants for the claim check: a list of claims each. */
struct tenant {
    const char *claims[4];
    unsigned n;
};

static const char *const *claims_of(const void *t, unsigned *n)
{
    const struct tenant *x = t;
    *n = x->n;
    return x->claims;
}

static void test_check_claims(void **state)
{
    (void)state;
    struct tenant a = {{"+1", "+44"}, 2}, b = {{"+49", "+1"}, 2}, c = {{"+33", "+33"}, 2};
    struct tenant d = {{0}, 0};
    const char *names[] = {"main config", "b.conf", "c.conf"};
    char err[256] = "";

    void *ok[] = {&a, &d};
    assert_int_equal(
        channel_check_claims(ok, names, 0, claims_of, "sms.prefixes", err, sizeof(err)), 0);
    assert_int_equal(
        channel_check_claims(ok, names, 1, claims_of, "sms.prefixes", err, sizeof(err)), 0);

    void *clash[] = {&a, &b};
    assert_int_equal(
        channel_check_claims(clash, names, 1, claims_of, "sms.prefixes", err, sizeof(err)),
        TDG_ECONFIG);
    assert_string_equal(err, "b.conf: sms.prefixes: +1 is already served by main config");

    void *twice[] = {&a, &d, &c}; /* one tenant naming a claim twice */
    assert_int_equal(
        channel_check_claims(twice, names, 2, claims_of, "apns.topics", err, sizeof(err)),
        TDG_ECONFIG);
    assert_string_equal(err, "c.conf: apns.topics: +33 is already served by c.conf");
}

static void write_file(char *path, size_t cap, const char *text)
{
    const char *dir = getenv("TMPDIR");
    snprintf(path, cap, "%s/test_channel_calls.XXXXXX", dir && *dir ? dir : "/tmp");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t len = strlen(text);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    close(fd);
}

static void test_read_secret(void **state)
{
    (void)state;
    char path[256], buf[32];
    write_file(path, sizeof(path), "pass word \t\r\nsecond line\n");
    assert_int_equal(channel_read_secret(path, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "pass word"); /* trailing blanks cut */
    assert_int_equal(channel_read_secret_line(path, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "pass word \t"); /* only the line ending */
    assert_int_equal(channel_read_secret_line(path, buf, 11), -ENOSPC);
    assert_int_equal(channel_read_secret_line(path, buf, 12), 0);
    unlink(path);

    write_file(path, sizeof(path), "");
    assert_int_equal(channel_read_secret(path, buf, sizeof(buf)), -ENODATA);
    assert_int_equal(channel_read_secret_line(path, buf, sizeof(buf)), -ENODATA);
    unlink(path);
    assert_int_equal(channel_read_secret_line(path, buf, sizeof(buf)), -ENOENT);
}

/* The printf-free header helpers write what channel_add_header writes, and
 * refuse what it refuses (a line that does not fit a slot, no free slot). */
static void test_header_helpers(void **state)
{
    (void)state;
    static struct channel_request a, b;
    char value[300];
    for (size_t vn = 0; vn < sizeof(value); vn += 7) {
        memset(value, 'v', vn);
        value[vn] = '\0';
        channel_request_reset(&a);
        channel_request_reset(&b);
        int ra = channel_add_header(&a, "apns-topic: %s", value);
        int rb = channel_add_header_str(&b, "apns-topic: ", value);
        assert_int_equal(ra, rb);
        assert_int_equal(a.nheaders, b.nheaders);
        if (ra == 0) {
            assert_string_equal(a.headers[0], b.headers[0]);
        }
    }
    static const int64_t nums[] = {0, 5, 10, -1, 1763779200, INT64_MAX, INT64_MIN, -987654321};
    for (size_t i = 0; i < sizeof(nums) / sizeof(nums[0]); i++) {
        channel_request_reset(&a);
        channel_request_reset(&b);
        assert_int_equal(channel_add_header(&a, "apns-expiration: %lld", (long long)nums[i]), 0);
        assert_int_equal(channel_add_header_int(&b, "apns-expiration: ", nums[i]), 0);
        assert_string_equal(a.headers[0], b.headers[0]);
    }
    channel_request_reset(&b);
    for (unsigned i = 0; i < CHANNEL_MAX_HEADERS; i++) {
        assert_int_equal(channel_add_header_str(&b, "x: ", "y"), 0);
    }
    assert_int_equal(channel_add_header_str(&b, "x: ", "y"), -ENOSPC);
    assert_int_equal(channel_add_header_int(&b, "x: ", 1), -ENOSPC);
    assert_int_equal(b.nheaders, CHANNEL_MAX_HEADERS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_deferred_outcome_after_send),
        cmocka_unit_test(test_finish_counts_and_unlinks),
        cmocka_unit_test(test_abort_frees_without_done),
        cmocka_unit_test(test_release_defaults_to_free),
        cmocka_unit_test(test_no_answer),
        cmocka_unit_test(test_no_tenant),
        cmocka_unit_test(test_check_claims),
        cmocka_unit_test(test_read_secret),
        cmocka_unit_test(test_header_helpers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
