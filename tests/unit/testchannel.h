/*
 * testchannel.h - a channel for fanout unit tests: every send is recorded
 * and held until the test answers it (testchannel_answer), as a provider
 * that takes its time would. Route it with .ops = &testchannel_ops and
 * .state = a struct testchannel.
 */
#ifndef TIDINGS_TESTCHANNEL_H
#define TIDINGS_TESTCHANNEL_H

#include "channel.h"
#include "proto.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>

#define TESTCHANNEL_MAX 64

struct testchannel_sent {
    char platform[16];
    char id[PROTO_ID_MAX + 1];
    channel_done_cb done;
    void *ctx;
};

struct testchannel {
    struct testchannel_sent sent[TESTCHANNEL_MAX];
    int nsent;
};

static inline int testchannel_send(void *state, const struct channel_delivery *d,
                                   channel_done_cb done, void *ctx)
{
    struct testchannel *c = state;
    assert_true(c->nsent < TESTCHANNEL_MAX);
    struct testchannel_sent *s = &c->sent[c->nsent++];
    snprintf(s->platform, sizeof(s->platform), "%s", d->dev->platform);
    snprintf(s->id, sizeof(s->id), "%s", d->n->id);
    s->done = done;
    s->ctx = ctx;
    return 0;
}

static const struct channel_ops testchannel_ops = {.name = "fake", .send = testchannel_send};

/* Answer send i with result r, HTTP-like status and provider reason. */
static inline void testchannel_answer(struct testchannel *c, int i, enum channel_result r,
                                      int status, const char *reason)
{
    struct channel_outcome o = {.result = r, .status = status};
    snprintf(o.reason, sizeof(o.reason), "%s", reason);
    c->sent[i].done(c->sent[i].ctx, &o);
}

#endif
