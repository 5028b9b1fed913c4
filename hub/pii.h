/*
 * pii.h - encryption of personal data at rest: a keyring from a key file,
 * AES-256-GCM sealing, keyed lookup hashes (docs/directory.md).
 *
 * Key file: one entry a line, '#' comments and blank lines ignored.
 *
 *     lookup <64 hex>       the lookup-hash secret (at most one line)
 *     key <id> <64 hex>     an AES-256 key; the LAST key line is current
 *
 * Ids are 1..16 of A-Z a-z 0-9 . _ -, unique. The file must be a regular
 * file that only its owner can read (mode 0600 or stricter): anything else
 * is refused with an error naming the file. Without a lookup line, the
 * lookup secret is the first key (which must then stay in the file).
 *
 * A sealed value is
 *
 *     0x01 | id length | id | nonce (12, random) | ciphertext | tag (16)
 *
 * and the AAD is the caller's context string followed by the 2 + id length
 * header bytes, so a value cannot be moved to another row or field (the
 * context names it) nor its key id changed undetected. Opening uses the key
 * the value names: after a new key is added, old values stay readable until
 * re-sealed (store_dir_reencrypt).
 *
 * Lookup hashes are HMAC-SHA256 under a key derived from the lookup secret,
 * over "<domain>\0<value>": deterministic, so equal values can be found
 * without decrypting, and useless without the key file.
 *
 * A pii_t is used from one thread (the hub's loop).
 */
#ifndef TIDINGS_PII_H
#define TIDINGS_PII_H

#include <stdbool.h>
#include <stddef.h>

typedef struct pii pii_t;

#define PII_KEY_ID_MAX 16
#define PII_MAX_KEYS 64
#define PII_NONCE_LEN 12
#define PII_TAG_LEN 16
#define PII_HASH_LEN 32
/* Bytes a sealed value adds to its plaintext, at most. */
#define PII_OVERHEAD (2 + PII_KEY_ID_MAX + PII_NONCE_LEN + PII_TAG_LEN)
/* A short keyed tag for logs (hex chars + NUL): never log PII itself. */
#define PII_LOG_TAG_LEN 8

/* Load the key file at path. On error, err holds "path: ..." or
 * "path:line: ..." and the result is TDG_ECONFIG (bad content or mode) or
 * -errno (cannot open). */
int pii_load(const char *path, pii_t **out, char *err, size_t errlen);

/* Create a new key file at path (which must not exist: -EEXIST) with a
 * fresh lookup secret and one key "k1", mode 0600. */
int pii_generate(const char *path, char *err, size_t errlen);

/* Append a fresh random key to the key file at path; it becomes current on
 * the next pii_load. Its id ("k<n>", one above the highest such id) goes to
 * id. The file is replaced atomically (written beside it, then renamed). */
int pii_add_key(const char *path, char *id, size_t idlen, char *err, size_t errlen);

void pii_destroy(pii_t *k);

/* The current key's id. */
const char *pii_current_id(const pii_t *k);

/* Seal len bytes of pt under the current key, bound to context (a short
 * NUL-terminated string naming where the value lives). out needs
 * len + PII_OVERHEAD bytes. 0, -ENOSPC, or TDG_ECRYPTO. */
int pii_seal(pii_t *k, const char *context, const void *pt, size_t len, unsigned char *out,
             size_t cap, size_t *outlen);

/* Open a sealed value into out as a NUL-terminated string (cap must exceed
 * the plaintext length: -ENOSPC). TDG_EINVAL_INPUT for a value that is not a
 * sealed value, TDG_ENOTFOUND when its key id is not in the keyring,
 * TDG_ECRYPTO when the tag does not verify (tampered, or wrong context). */
int pii_open(pii_t *k, const char *context, const unsigned char *in, size_t len, char *out,
             size_t cap, size_t *outlen);

/* Is in sealed under the current key? */
bool pii_is_current(const pii_t *k, const unsigned char *in, size_t len);

/* The key id a sealed value names, into id. 0 or TDG_EINVAL_INPUT. */
int pii_sealed_key_id(const unsigned char *in, size_t len, char *id, size_t idlen);

/* Lookup hash of value in domain (e.g. a platform name). */
void pii_hash(pii_t *k, const char *domain, const char *value, unsigned char out[PII_HASH_LEN]);

/* First PII_LOG_TAG_LEN hex chars of the lookup hash, for logs. */
void pii_log_tag(pii_t *k, const char *domain, const char *value,
                 char out[PII_LOG_TAG_LEN + 1]);

#endif
