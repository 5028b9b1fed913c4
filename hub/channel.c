/* channel.c - what every channel shares (see channel.h). */
#include "channel.h"

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
