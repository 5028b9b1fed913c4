/* mqtt_codec.c - MQTT 5 packet encoding and strict decoding (see mqtt_codec.h). */
#include "mqtt_codec.h"

#include "error.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int mqtt_buf_reserve(struct mqtt_buf *b, size_t more)
{
    size_t max = b->max ? b->max : (size_t)MQTT_MAX_REMAINING + 5;
    if (more > max || b->len > max - more) {
        return TDG_EFULL;
    }
    size_t need = b->len + more;
    if (need <= b->cap) {
        return 0;
    }
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) {
        cap = cap > max / 2 ? max : cap * 2;
    }
    uint8_t *p = realloc(b->p, cap);
    if (!p) {
        return -ENOMEM;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

void mqtt_buf_free(struct mqtt_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

size_t mqtt_varint_put(uint8_t *out, uint32_t v)
{
    if (v > MQTT_MAX_REMAINING) {
        return 0;
    }
    size_t n = 0;
    do {
        uint8_t byte = (uint8_t)(v & 0x7Fu);
        v >>= 7;
        out[n++] = (uint8_t)(byte | (v ? 0x80u : 0u));
    } while (v);
    return n;
}

int mqtt_varint_get(const uint8_t *p, size_t len, uint32_t *v)
{
    uint32_t val = 0;
    for (size_t i = 0; i < 4; i++) {
        if (i >= len) {
            return 0;
        }
        val |= (uint32_t)(p[i] & 0x7Fu) << (7 * i);
        if (!(p[i] & 0x80u)) {
            *v = val;
            return (int)i + 1;
        }
    }
    return -1;
}

bool mqtt_utf8_valid(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c == 0) {
            return false;
        }
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t k;
        uint32_t cp, min;
        if ((c & 0xE0) == 0xC0) {
            k = 1, cp = c & 0x1Fu, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            k = 2, cp = c & 0x0Fu, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            k = 3, cp = c & 0x07u, min = 0x10000;
        } else {
            return false;
        }
        if (n - i <= k) {
            return false;
        }
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80) {
                return false;
            }
            cp = (cp << 6) | (s[i + j] & 0x3Fu);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
            return false;
        }
        i += k + 1;
    }
    return true;
}

static const char *const type_names[16] = {"reserved type 0", "CONNECT",  "CONNACK",     "PUBLISH",
                                           "PUBACK",          "PUBREC",   "PUBREL",      "PUBCOMP",
                                           "SUBSCRIBE",       "SUBACK",   "UNSUBSCRIBE", "UNSUBACK",
                                           "PINGREQ",         "PINGRESP", "DISCONNECT",  "AUTH"};

const char *mqtt_type_name(unsigned type)
{
    return type < 16 ? type_names[type] : "?";
}

const char *mqtt_reason_string(uint8_t code)
{
    switch (code) {
    case 0x00:
        return "success";
    case 0x04:
        return "disconnect with will message";
    case 0x10:
        return "no matching subscribers";
    case 0x80:
        return "unspecified error";
    case 0x81:
        return "malformed packet";
    case 0x82:
        return "protocol error";
    case 0x83:
        return "implementation specific error";
    case 0x84:
        return "unsupported protocol version";
    case 0x85:
        return "client identifier not valid";
    case 0x86:
        return "bad user name or password";
    case 0x87:
        return "not authorized";
    case 0x88:
        return "server unavailable";
    case 0x89:
        return "server busy";
    case 0x8A:
        return "banned";
    case 0x8B:
        return "server shutting down";
    case 0x8C:
        return "bad authentication method";
    case 0x8D:
        return "keep alive timeout";
    case 0x8E:
        return "session taken over";
    case 0x8F:
        return "topic filter invalid";
    case 0x90:
        return "topic name invalid";
    case 0x91:
        return "packet identifier in use";
    case 0x93:
        return "receive maximum exceeded";
    case 0x94:
        return "topic alias invalid";
    case 0x95:
        return "packet too large";
    case 0x96:
        return "message rate too high";
    case 0x97:
        return "quota exceeded";
    case 0x98:
        return "administrative action";
    case 0x99:
        return "payload format invalid";
    case 0x9A:
        return "retain not supported";
    case 0x9B:
        return "QoS not supported";
    case 0x9C:
        return "use another server";
    case 0x9D:
        return "server moved";
    case 0x9E:
        return "shared subscriptions not supported";
    case 0x9F:
        return "connection rate exceeded";
    case 0xA0:
        return "maximum connect time";
    case 0xA1:
        return "subscription identifiers not supported";
    case 0xA2:
        return "wildcard subscriptions not supported";
    default:
        return "unknown reason";
    }
}

/* --- encoding --------------------------------------------------------------- */

static void put8(struct mqtt_buf *b, uint8_t v)
{
    b->p[b->len++] = v;
}

static void put16(struct mqtt_buf *b, uint16_t v)
{
    b->p[b->len++] = (uint8_t)(v >> 8);
    b->p[b->len++] = (uint8_t)(v & 0xFFu);
}

static void put32(struct mqtt_buf *b, uint32_t v)
{
    put16(b, (uint16_t)(v >> 16));
    put16(b, (uint16_t)(v & 0xFFFFu));
}

static void putbin(struct mqtt_buf *b, const void *p, size_t n)
{
    put16(b, (uint16_t)n);
    if (n) {
        memcpy(b->p + b->len, p, n);
        b->len += n;
    }
}

static void putraw(struct mqtt_buf *b, const void *p, size_t n)
{
    if (n) {
        memcpy(b->p + b->len, p, n);
        b->len += n;
    }
}

static void putvar(struct mqtt_buf *b, uint32_t v)
{
    b->len += mqtt_varint_put(b->p + b->len, v);
}

static size_t varint_size(size_t v)
{
    return v < 128 ? 1 : v < 16384 ? 2 : v < 2097152 ? 3 : 4;
}

/* Reserve a whole packet: fixed header byte, remaining length rl. */
static int begin(struct mqtt_buf *b, uint8_t first, size_t rl)
{
    if (rl > MQTT_MAX_REMAINING) {
        return -EINVAL;
    }
    int rc = mqtt_buf_reserve(b, 1 + varint_size(rl) + rl);
    if (rc < 0) {
        return rc;
    }
    put8(b, first);
    putvar(b, (uint32_t)rl);
    return 0;
}

static size_t slen(const char *s)
{
    return s ? strlen(s) : 0;
}

int mqtt_enc_connect(struct mqtt_buf *b, const struct mqtt_connect_params *c)
{
    size_t id_len = slen(c->client_id), user_len = slen(c->username);
    size_t pass_len = slen(c->password), wt_len = slen(c->will_topic);
    bool will = wt_len > 0;
    if (id_len > 65535 || user_len > 65535 || pass_len > 65535 || wt_len > 65535 ||
        c->will_len > 65535 || c->will_qos < 0 || c->will_qos > 1) {
        return -EINVAL;
    }
    size_t props = (c->session_expiry ? 5 : 0) +
                   (c->receive_max && c->receive_max < 65535 ? 3 : 0) + (c->max_packet ? 5 : 0);
    size_t rl = 10 + varint_size(props) + props + 2 + id_len;
    if (will) {
        rl += 1 + 2 + wt_len + 2 + c->will_len;
    }
    if (user_len) {
        rl += 2 + user_len;
    }
    if (c->password) {
        rl += 2 + pass_len;
    }
    int rc = begin(b, MQTT_CONNECT << 4, rl);
    if (rc < 0) {
        return rc;
    }
    putbin(b, "MQTT", 4);
    put8(b, 5);
    uint8_t flags = c->clean_start ? 0x02 : 0;
    if (will) {
        flags |= 0x04 | (uint8_t)(c->will_qos << 3) | (c->will_retain ? 0x20 : 0);
    }
    if (user_len) {
        flags |= 0x80;
    }
    if (c->password) {
        flags |= 0x40;
    }
    put8(b, flags);
    put16(b, c->keepalive);
    putvar(b, (uint32_t)props);
    if (c->session_expiry) {
        put8(b, MQTT_P_SESSION_EXPIRY);
        put32(b, c->session_expiry);
    }
    if (c->receive_max && c->receive_max < 65535) {
        put8(b, MQTT_P_RECEIVE_MAXIMUM);
        put16(b, c->receive_max);
    }
    if (c->max_packet) {
        put8(b, MQTT_P_MAXIMUM_PACKET_SIZE);
        put32(b, c->max_packet);
    }
    putbin(b, c->client_id, id_len);
    if (will) {
        put8(b, 0); /* will properties */
        putbin(b, c->will_topic, wt_len);
        putbin(b, c->will_payload, c->will_len);
    }
    if (user_len) {
        putbin(b, c->username, user_len);
    }
    if (c->password) {
        putbin(b, c->password, pass_len);
    }
    return 0;
}

/* Remaining length of a PUBLISH, or 0 when a field is out of range. */
static size_t publish_rl(const struct mqtt_publish_params *pp, size_t *props)
{
    size_t tl = slen(pp->topic), rt = slen(pp->response_topic);
    if (tl == 0 || tl > 65535 || rt > 65535 || pp->corr_len > 65535 || pp->qos < 0 || pp->qos > 1 ||
        (pp->qos == 1 && pp->id == 0) || pp->len > MQTT_MAX_REMAINING) {
        return 0;
    }
    *props = (pp->expiry_s ? 5 : 0) + (pp->response_topic ? 3 + rt : 0) +
             (pp->corr_len ? 3 + pp->corr_len : 0);
    size_t rl = 2 + tl + (pp->qos ? 2 : 0) + varint_size(*props) + *props;
    if (pp->len > MQTT_MAX_REMAINING - rl) {
        return 0;
    }
    return rl + pp->len;
}

size_t mqtt_publish_size(const struct mqtt_publish_params *pp)
{
    size_t props;
    size_t rl = publish_rl(pp, &props);
    return rl ? 1 + varint_size(rl) + rl : 0;
}

int mqtt_enc_publish(struct mqtt_buf *b, const struct mqtt_publish_params *pp)
{
    size_t props;
    size_t rl = publish_rl(pp, &props);
    if (rl == 0) {
        return -EINVAL;
    }
    uint8_t first = (uint8_t)(MQTT_PUBLISH << 4 | (pp->dup ? 0x08 : 0) | (pp->qos << 1) |
                              (pp->retain ? 0x01 : 0));
    int rc = begin(b, first, rl);
    if (rc < 0) {
        return rc;
    }
    putbin(b, pp->topic, strlen(pp->topic));
    if (pp->qos) {
        put16(b, pp->id);
    }
    putvar(b, (uint32_t)props);
    if (pp->expiry_s) {
        put8(b, MQTT_P_MESSAGE_EXPIRY);
        put32(b, pp->expiry_s);
    }
    if (pp->response_topic) {
        put8(b, MQTT_P_RESPONSE_TOPIC);
        putbin(b, pp->response_topic, strlen(pp->response_topic));
    }
    if (pp->corr_len) {
        put8(b, MQTT_P_CORRELATION_DATA);
        putbin(b, pp->corr, pp->corr_len);
    }
    putraw(b, pp->payload, pp->len);
    return 0;
}

int mqtt_enc_puback(struct mqtt_buf *b, uint16_t id, uint8_t reason)
{
    if (id == 0) {
        return -EINVAL;
    }
    /* Success with no properties: the short form (remaining length 2). */
    int rc = begin(b, MQTT_PUBACK << 4, reason ? 3 : 2);
    if (rc < 0) {
        return rc;
    }
    put16(b, id);
    if (reason) {
        put8(b, reason);
    }
    return 0;
}

int mqtt_enc_subscribe(struct mqtt_buf *b, uint16_t id, const char *filter, int qos)
{
    size_t fl = slen(filter);
    if (id == 0 || fl == 0 || fl > 65535 || qos < 0 || qos > 1) {
        return -EINVAL;
    }
    int rc = begin(b, MQTT_SUBSCRIBE << 4 | 0x02, 2 + 1 + 2 + fl + 1);
    if (rc < 0) {
        return rc;
    }
    put16(b, id);
    put8(b, 0); /* no properties */
    putbin(b, filter, fl);
    put8(b, (uint8_t)qos); /* retain handling 0, RAP 0, NL 0 */
    return 0;
}

int mqtt_enc_pingreq(struct mqtt_buf *b)
{
    return begin(b, MQTT_PINGREQ << 4, 0);
}

int mqtt_enc_disconnect(struct mqtt_buf *b, uint8_t reason)
{
    int rc = begin(b, MQTT_DISCONNECT << 4, reason ? 1 : 0);
    if (rc == 0 && reason) {
        put8(b, reason);
    }
    return rc;
}

/* --- decoding --------------------------------------------------------------- */

__attribute__((format(printf, 3, 4))) static int refuse(char *why, size_t whylen, const char *fmt,
                                                        ...)
{
    if (why && whylen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, whylen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

int mqtt_frame(const uint8_t *p, size_t len, uint32_t max_packet, size_t *total, char *why,
               size_t whylen)
{
    if (len < 2) {
        return 0;
    }
    uint32_t rl;
    int n = mqtt_varint_get(p + 1, len - 1, &rl);
    if (n == 0) {
        return 0;
    }
    if (n < 0) {
        return refuse(why, whylen, "%s: remaining length longer than 4 bytes",
                      mqtt_type_name(p[0] >> 4));
    }
    size_t t = 1 + (size_t)n + rl;
    if (max_packet && t > max_packet) {
        return refuse(why, whylen, "%s of %zu bytes over the maximum packet size %u",
                      mqtt_type_name(p[0] >> 4), t, (unsigned)max_packet);
    }
    *total = t;
    return 1;
}

/* A cursor over a packet's bytes. */
struct rd {
    const uint8_t *p;
    size_t len, off;
};

static bool rd_u8(struct rd *r, uint8_t *v)
{
    if (r->len - r->off < 1) {
        return false;
    }
    *v = r->p[r->off++];
    return true;
}

static bool rd_u16(struct rd *r, uint16_t *v)
{
    if (r->len - r->off < 2) {
        return false;
    }
    *v = (uint16_t)(r->p[r->off] << 8 | r->p[r->off + 1]);
    r->off += 2;
    return true;
}

static bool rd_u32(struct rd *r, uint32_t *v)
{
    uint16_t hi, lo;
    if (r->len - r->off < 4 || !rd_u16(r, &hi) || !rd_u16(r, &lo)) {
        return false;
    }
    *v = (uint32_t)hi << 16 | lo;
    return true;
}

/* Binary data (2-byte length + bytes): false when it runs past the end. */
static bool rd_bin(struct rd *r, const uint8_t **p, size_t *n)
{
    uint16_t l;
    if (!rd_u16(r, &l) || r->len - r->off < l) {
        return false;
    }
    *p = r->p + r->off;
    *n = l;
    r->off += l;
    return true;
}

enum ptype { PT_BYTE, PT_U16, PT_U32, PT_VARINT, PT_STRING, PT_BINARY, PT_PAIR, PT_NONE };

static enum ptype prop_type(uint32_t id)
{
    switch (id) {
    case MQTT_P_PAYLOAD_FORMAT:
    case MQTT_P_REQUEST_PROBLEM_INFO:
    case MQTT_P_REQUEST_RESPONSE_INFO:
    case MQTT_P_MAXIMUM_QOS:
    case MQTT_P_RETAIN_AVAILABLE:
    case MQTT_P_WILDCARD_SUB_AVAILABLE:
    case MQTT_P_SUB_ID_AVAILABLE:
    case MQTT_P_SHARED_SUB_AVAILABLE:
        return PT_BYTE;
    case MQTT_P_SERVER_KEEP_ALIVE:
    case MQTT_P_RECEIVE_MAXIMUM:
    case MQTT_P_TOPIC_ALIAS_MAXIMUM:
    case MQTT_P_TOPIC_ALIAS:
        return PT_U16;
    case MQTT_P_MESSAGE_EXPIRY:
    case MQTT_P_SESSION_EXPIRY:
    case MQTT_P_WILL_DELAY:
    case MQTT_P_MAXIMUM_PACKET_SIZE:
        return PT_U32;
    case MQTT_P_SUBSCRIPTION_ID:
        return PT_VARINT;
    case MQTT_P_CONTENT_TYPE:
    case MQTT_P_RESPONSE_TOPIC:
    case MQTT_P_ASSIGNED_CLIENT_ID:
    case MQTT_P_AUTH_METHOD:
    case MQTT_P_RESPONSE_INFO:
    case MQTT_P_SERVER_REFERENCE:
    case MQTT_P_REASON_STRING:
        return PT_STRING;
    case MQTT_P_CORRELATION_DATA:
    case MQTT_P_AUTH_DATA:
        return PT_BINARY;
    case MQTT_P_USER_PROPERTY:
        return PT_PAIR;
    default:
        return PT_NONE;
    }
}

static bool has_wildcard(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '+' || s[i] == '#') {
            return true;
        }
    }
    return false;
}

/* The property list at r (length first), into out. Unused properties are
 * skipped by their type; an unknown identifier cannot be skipped (its
 * length is unknown) and refuses the packet. */
static int rd_props(struct rd *r, struct mqtt_pkt *out, const char *pkt, char *why, size_t whylen)
{
    uint32_t plen;
    int n = mqtt_varint_get(r->p + r->off, r->len - r->off, &plen);
    if (n <= 0) {
        return refuse(why, whylen, "%s: %s property length", pkt,
                      n == 0 ? "truncated" : "malformed");
    }
    r->off += (size_t)n;
    if (plen > r->len - r->off) {
        return refuse(why, whylen,
                      "%s: properties of %u bytes run past the packet's end (%zu left)", pkt,
                      (unsigned)plen, r->len - r->off);
    }
    struct rd pr = {r->p + r->off, plen, 0};
    r->off += plen;
    uint64_t seen = 0;
    while (pr.off < pr.len) {
        uint32_t id;
        n = mqtt_varint_get(pr.p + pr.off, pr.len - pr.off, &id);
        if (n <= 0) {
            return refuse(why, whylen, "%s: malformed property identifier", pkt);
        }
        pr.off += (size_t)n;
        enum ptype t = prop_type(id);
        if (t == PT_NONE) {
            return refuse(why, whylen, "%s: unknown property 0x%02x", pkt, (unsigned)id);
        }
        if (id != MQTT_P_USER_PROPERTY && id != MQTT_P_SUBSCRIPTION_ID) {
            if (seen & ((uint64_t)1 << id)) {
                return refuse(why, whylen, "%s: property 0x%02x more than once", pkt, (unsigned)id);
            }
            seen |= (uint64_t)1 << id;
        }
        uint8_t b8 = 0;
        uint16_t b16 = 0;
        uint32_t b32 = 0;
        const uint8_t *bp = NULL, *bp2 = NULL;
        size_t bn = 0, bn2 = 0;
        bool ok;
        switch (t) {
        case PT_BYTE:
            ok = rd_u8(&pr, &b8);
            break;
        case PT_U16:
            ok = rd_u16(&pr, &b16);
            break;
        case PT_U32:
            ok = rd_u32(&pr, &b32);
            break;
        case PT_VARINT:
            n = mqtt_varint_get(pr.p + pr.off, pr.len - pr.off, &b32);
            ok = n > 0;
            if (ok) {
                pr.off += (size_t)n;
            }
            break;
        case PT_STRING:
        case PT_BINARY:
            ok = rd_bin(&pr, &bp, &bn);
            break;
        case PT_PAIR:
            ok = rd_bin(&pr, &bp, &bn) && rd_bin(&pr, &bp2, &bn2);
            break;
        default:
            ok = false;
            break;
        }
        if (!ok) {
            return refuse(why, whylen, "%s: property 0x%02x truncated", pkt, (unsigned)id);
        }
        if ((t == PT_STRING || t == PT_PAIR) &&
            (!mqtt_utf8_valid(bp, bn) || (t == PT_PAIR && !mqtt_utf8_valid(bp2, bn2)))) {
            return refuse(why, whylen, "%s: property 0x%02x is not valid UTF-8", pkt, (unsigned)id);
        }
        switch (id) {
        case MQTT_P_SERVER_KEEP_ALIVE:
            out->has_server_keepalive = true;
            out->server_keepalive = b16;
            break;
        case MQTT_P_RECEIVE_MAXIMUM:
            if (b16 == 0) {
                return refuse(why, whylen, "%s: receive maximum 0", pkt);
            }
            out->receive_max = b16;
            break;
        case MQTT_P_MAXIMUM_PACKET_SIZE:
            if (b32 == 0) {
                return refuse(why, whylen, "%s: maximum packet size 0", pkt);
            }
            out->max_packet = b32;
            break;
        case MQTT_P_MAXIMUM_QOS:
            if (b8 > 1) {
                return refuse(why, whylen, "%s: maximum QoS %u", pkt, (unsigned)b8);
            }
            out->max_qos = b8;
            break;
        case MQTT_P_MESSAGE_EXPIRY:
            out->has_expiry = true;
            out->expiry = b32;
            break;
        case MQTT_P_RESPONSE_TOPIC:
            if (bn == 0 || has_wildcard((const char *)bp, bn)) {
                return refuse(why, whylen, "%s: response topic %s", pkt,
                              bn ? "has a wildcard" : "is empty");
            }
            out->response_topic = (const char *)bp;
            out->response_topic_len = bn;
            break;
        case MQTT_P_CORRELATION_DATA:
            out->corr = bp;
            out->corr_len = bn;
            break;
        case MQTT_P_REASON_STRING:
            out->reason_string = (const char *)bp;
            out->reason_string_len = bn;
            break;
        case MQTT_P_TOPIC_ALIAS:
            /* We send no Topic Alias Maximum: the broker may use none. */
            return refuse(why, whylen, "%s: topic alias %u (none allowed)", pkt, (unsigned)b16);
        case MQTT_P_SUBSCRIPTION_ID:
            if (b32 == 0) {
                return refuse(why, whylen, "%s: subscription identifier 0", pkt);
            }
            break;
        case MQTT_P_PAYLOAD_FORMAT:
            if (b8 > 1) {
                return refuse(why, whylen, "%s: payload format indicator %u", pkt, (unsigned)b8);
            }
            break;
        default:
            break; /* known, unused: skipped */
        }
    }
    return 0;
}

static int flags_must_be(uint8_t flags, uint8_t want, const char *pkt, char *why, size_t whylen)
{
    if (flags != want) {
        return refuse(why, whylen, "%s: fixed header flags 0x%x (must be 0x%x)", pkt,
                      (unsigned)flags, (unsigned)want);
    }
    return 0;
}

int mqtt_decode(const uint8_t *p, size_t len, struct mqtt_pkt *out, char *why, size_t whylen)
{
    memset(out, 0, sizeof(*out));
    out->receive_max = 65535;
    out->max_qos = 1;
    size_t total;
    if (mqtt_frame(p, len, 0, &total, why, whylen) != 1 || total != len) {
        return refuse(why, whylen, "%s: length does not match its remaining length",
                      mqtt_type_name(len ? p[0] >> 4 : 0));
    }
    uint32_t rl = 0;
    int n = mqtt_varint_get(p + 1, len - 1, &rl);
    if (n <= 0) { /* mqtt_frame checked it; kept for the compiler and for safety */
        return refuse(why, whylen, "%s: bad remaining length", mqtt_type_name(p[0] >> 4));
    }
    struct rd r = {p + 1 + n, rl, 0};
    out->type = p[0] >> 4;
    out->flags = p[0] & 0x0F;
    const char *pkt = mqtt_type_name(out->type);
    switch (out->type) {
    case MQTT_CONNACK: {
        uint8_t ack;
        if (flags_must_be(out->flags, 0, pkt, why, whylen) < 0) {
            return -1;
        }
        if (!rd_u8(&r, &ack) || !rd_u8(&r, &out->reason)) {
            return refuse(why, whylen, "CONNACK: truncated (%u bytes)", (unsigned)rl);
        }
        if (ack & 0xFE) {
            return refuse(why, whylen, "CONNACK: reserved acknowledge flags 0x%02x", ack);
        }
        out->session_present = ack & 1;
        if (rd_props(&r, out, pkt, why, whylen) < 0) {
            return -1;
        }
        break;
    }
    case MQTT_PUBLISH: {
        out->dup = out->flags & 0x08;
        out->qos = (out->flags >> 1) & 3;
        out->retain = out->flags & 1;
        if (out->qos == 3) {
            return refuse(why, whylen, "PUBLISH: QoS 3");
        }
        if (out->qos == 2) {
            return refuse(why, whylen, "PUBLISH: QoS 2 (every subscription is QoS 1 at most)");
        }
        if (out->qos == 0 && out->dup) {
            return refuse(why, whylen, "PUBLISH: DUP set on QoS 0");
        }
        const uint8_t *t;
        if (!rd_bin(&r, &t, &out->topic_len)) {
            return refuse(why, whylen, "PUBLISH: topic runs past the packet's end");
        }
        out->topic = (const char *)t;
        if (out->topic_len == 0) {
            return refuse(why, whylen, "PUBLISH: empty topic");
        }
        if (!mqtt_utf8_valid(t, out->topic_len)) {
            return refuse(why, whylen, "PUBLISH: topic is not valid UTF-8");
        }
        if (has_wildcard(out->topic, out->topic_len)) {
            return refuse(why, whylen, "PUBLISH: topic has a wildcard");
        }
        if (out->qos) {
            if (!rd_u16(&r, &out->id)) {
                return refuse(why, whylen, "PUBLISH: truncated packet identifier");
            }
            if (out->id == 0) {
                return refuse(why, whylen, "PUBLISH: packet identifier 0");
            }
        }
        if (rd_props(&r, out, pkt, why, whylen) < 0) {
            return -1;
        }
        out->payload = r.p + r.off;
        out->payload_len = r.len - r.off;
        r.off = r.len;
        break;
    }
    case MQTT_PUBACK:
        if (flags_must_be(out->flags, 0, pkt, why, whylen) < 0) {
            return -1;
        }
        if (!rd_u16(&r, &out->id)) {
            return refuse(why, whylen, "PUBACK: truncated (%u bytes)", (unsigned)rl);
        }
        if (out->id == 0) {
            return refuse(why, whylen, "PUBACK: packet identifier 0");
        }
        if (r.off < r.len) {
            rd_u8(&r, &out->reason);
        }
        if (r.off < r.len && rd_props(&r, out, pkt, why, whylen) < 0) {
            return -1;
        }
        break;
    case MQTT_SUBACK:
        if (flags_must_be(out->flags, 0, pkt, why, whylen) < 0) {
            return -1;
        }
        if (!rd_u16(&r, &out->id)) {
            return refuse(why, whylen, "SUBACK: truncated (%u bytes)", (unsigned)rl);
        }
        if (out->id == 0) {
            return refuse(why, whylen, "SUBACK: packet identifier 0");
        }
        if (rd_props(&r, out, pkt, why, whylen) < 0) {
            return -1;
        }
        if (r.off >= r.len) {
            return refuse(why, whylen, "SUBACK: no reason codes");
        }
        out->sub_reasons = r.p + r.off;
        out->nsub_reasons = r.len - r.off;
        out->reason = out->sub_reasons[0];
        r.off = r.len;
        break;
    case MQTT_PINGRESP:
        if (flags_must_be(out->flags, 0, pkt, why, whylen) < 0) {
            return -1;
        }
        break;
    case MQTT_DISCONNECT:
        if (flags_must_be(out->flags, 0, pkt, why, whylen) < 0) {
            return -1;
        }
        if (r.off < r.len) {
            rd_u8(&r, &out->reason);
        }
        if (r.off < r.len && rd_props(&r, out, pkt, why, whylen) < 0) {
            return -1;
        }
        break;
    case MQTT_CONNECT:
    case MQTT_SUBSCRIBE:
    case MQTT_UNSUBSCRIBE:
    case MQTT_PINGREQ:
        return refuse(why, whylen, "%s: a packet only a client sends", pkt);
    case MQTT_PUBREC:
    case MQTT_PUBREL:
    case MQTT_PUBCOMP:
        return refuse(why, whylen, "%s: QoS 2 flow, never started", pkt);
    case MQTT_UNSUBACK:
        return refuse(why, whylen, "UNSUBACK: no UNSUBSCRIBE was sent");
    case MQTT_AUTH:
        return refuse(why, whylen, "AUTH: no enhanced authentication was asked for");
    default:
        return refuse(why, whylen, "unknown packet type %u", (unsigned)out->type);
    }
    if (r.off != r.len) {
        return refuse(why, whylen, "%s: %zu bytes after the end of its fields", pkt, r.len - r.off);
    }
    return 0;
}
