/* channel.c - what every channel shares (see channel.h). */
#include "channel.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>

const char *channel_result_name(enum channel_result r)
{
    switch (r) {
    case CHANNEL_OK:
        return "ok";
    case CHANNEL_RETRY:
        return "retry";
    case CHANNEL_DROP:
        return "drop";
    }
    return "unknown";
}

int channel_add_header(struct channel_request *req, const char *fmt, ...)
{
    if (req->nheaders >= CHANNEL_MAX_HEADERS) {
        return -ENOSPC;
    }
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(req->headers[req->nheaders], sizeof(req->headers[0]), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(req->headers[0])) {
        return -ENOSPC;
    }
    req->nheaders++;
    return 0;
}

int channel_drop(struct channel_outcome *out, const char *reason, int device_action, int err)
{
    out->result = CHANNEL_DROP;
    snprintf(out->reason, sizeof(out->reason), "%s", reason);
    out->device_action = device_action;
    return err;
}
