/*
 * email.h - email channel: RFC 5322 messages over SMTP submission with
 * STARTTLS and AUTH (hub/smtp.h).
 *
 * One channel instance is one submission server (email.smtp_url), one login
 * and one sender (email.from: "addr@example.com" or "Display Name
 * <addr@example.com>"). TLS is mandatory: smtp:// must upgrade with
 * STARTTLS, smtps:// is TLS from the start; plaintext is never used.
 *
 * The recipient's address is channel_device.token until the directory
 * carries an address per user. Addresses are plain ASCII
 * local@domain (dot-atom local part, letters/digits/hyphens domain); anything
 * else is dropped as "invalid_address" before sending.
 *
 * The message: Date (from channel_delivery.now_ms, UTC), From, To, Subject
 * (the title, or the body's first line; UTF-8 as RFC 2047 B encoded-words of
 * at most 76 characters per line), Message-ID <tidings-<id>@<from domain>>
 * (stable across retries, so a receiving system can collapse duplicates),
 * MIME-Version, text/plain; charset=UTF-8 in quoted-printable, and
 * Auto-Submitted: auto-generated (RFC 3834: no vacation replies). A CR or LF
 * in any header value (title, addresses, display name) drops the delivery
 * as "header_injection": it is never passed through or "cleaned".
 *
 * See docs/channels.md for the tables.
 */
#ifndef TIDINGS_EMAIL_H
#define TIDINGS_EMAIL_H

#include <stddef.h>
#include <stdint.h>

#include "channel.h"
#include "smtp.h"

#define EMAIL_ADDR_MAX 254            /* RFC 5321 path limit */
#define EMAIL_LOCAL_MAX 64            /* RFC 5321 local-part limit */
#define EMAIL_MESSAGE_MAX (32 * 1024) /* ~2x what the largest notification needs */

/* Filled by config_defaults/config_load from email_channel.config. */
struct email_config {
    char smtp_url[256];      /* email.smtp_url: smtp://host:587 or smtps://host:465 */
    char username[256];      /* email.username: AUTH login; empty = no AUTH */
    char password[256];      /* email.password (prefer password_file) */
    char password_file[512]; /* email.password_file */
    char from[512];          /* email.from: "addr" or "Name <addr>" */
    char helo[256];          /* email.helo: EHLO name; empty = the from domain */
    char ca_file[512];       /* email.ca_file */
    int auth;                /* email.auth: auto / plain / login */
    uint64_t timeout_ms;     /* email.timeout */
    int64_t connections;     /* email.connections: SMTP connections at once */
    int64_t queue_max;       /* email.queue_max: messages waiting for a connection */
};

extern const struct channel_ops email_channel;

/* One formatted message: the SMTP envelope and the RFC 5322 text. */
struct email_message {
    char mail_from[EMAIL_ADDR_MAX + 1];
    char rcpt_to[EMAIL_ADDR_MAX + 1];
    char data[EMAIL_MESSAGE_MAX];
    size_t len;
};

/*
 * Pure: build the message for d into m. 0, or a negative error with
 * outcome->reason set ("invalid_address", "header_injection", "bad_utf8",
 * "no_content", "too_large") for a permanent drop. This is what send uses;
 * the ops table's format renders the same message into a channel_request
 * (url = smtp_url, headers "mail-from: <a>" and "rcpt-to: <b>", body = the
 * message) and reports TDG_ETOOBIG ("too_large") when the message does not
 * fit channel_request.body (5 KiB today; a notification of 4 KiB of non-Latin
 * text can need ~13 KiB once quoted-printable).
 */
int email_format_message(void *state, const struct channel_delivery *d, struct email_message *m,
                         struct channel_outcome *outcome);

/* Is a a plain local@domain address (see above)? */
int email_address_valid(const char *a);

/*
 * Pure mapping of one SMTP transfer's result to an outcome (exposed for
 * tests). 250 -> ok with provider_id = the queue id from the final reply
 * ("queued as X", "id=X") when there is one; 4xx -> retry; 5xx -> drop with
 * the reply; TLS failure and AUTH refused (5xx) -> drop; no connection,
 * timeout, connection lost -> retry.
 */
void email_map_result(const struct smtp_result *r, struct channel_outcome *out);

struct email_stats {
    uint64_t sent, ok, retry, drop;
};
void email_get_stats(void *state, struct email_stats *out);

#endif
