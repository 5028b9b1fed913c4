/* pii.c - keyring, AES-256-GCM sealing and lookup hashes (see pii.h). */
#include "pii.h"

#include "error.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sys/random.h>

#include <mbedtls/gcm.h>
#include <mbedtls/md.h>
#include <mbedtls/platform_util.h>

#define PII_VERSION 0x01
#define KEY_LEN 32
#define FILE_MAX 65536 /* a key file with PII_MAX_KEYS lines is ~6 KB */
#define LINE_MAX_ 512

struct pii_key {
    char id[PII_KEY_ID_MAX + 1];
    mbedtls_gcm_context gcm;
};

struct pii {
    struct pii_key keys[PII_MAX_KEYS];
    size_t n;        /* keys[n - 1] is current */
    mbedtls_md_context_t hmac; /* keyed with the lookup key */
};

static const char lookup_label[] = "tidings-pii-lookup-v1";

/* --- file reading ------------------------------------------------------ */

/* Read the whole key file after checking that it is a regular file only
 * its owner can read. *buf is malloc'd and NUL-terminated. */
static int read_keyfile(const char *path, char **buf, size_t *len, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, "%s: cannot open PII key file: %s", path, strerror(e));
        return -e;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        close(fd);
        snprintf(err, errlen, "%s: %s", path, strerror(e));
        return -e;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        snprintf(err, errlen, "%s: PII key file is not a regular file", path);
        return TDG_ECONFIG;
    }
    if (st.st_mode & (S_IRWXG | S_IRWXO)) {
        close(fd);
        snprintf(err, errlen,
                 "%s: PII key file has mode %04o; it must be readable by its owner only "
                 "(chmod 600 %s)",
                 path, (unsigned)(st.st_mode & 07777), path);
        return TDG_ECONFIG;
    }
    if (st.st_size > FILE_MAX) {
        close(fd);
        snprintf(err, errlen, "%s: PII key file larger than %d bytes", path, FILE_MAX);
        return TDG_ECONFIG;
    }
    char *b = malloc((size_t)st.st_size + 1);
    if (!b) {
        close(fd);
        return -ENOMEM;
    }
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, b + got, (size_t)st.st_size - got);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            int e = r < 0 ? errno : EIO;
            close(fd);
            mbedtls_platform_zeroize(b, got);
            free(b);
            snprintf(err, errlen, "%s: read: %s", path, strerror(e));
            return -e;
        }
        got += (size_t)r;
    }
    close(fd);
    b[got] = '\0';
    *buf = b;
    *len = got;
    return 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

static bool parse_hex32(const char *s, unsigned char out[KEY_LEN])
{
    if (strlen(s) != 2 * KEY_LEN) {
        return false;
    }
    for (size_t i = 0; i < KEY_LEN; i++) {
        int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            return false;
        }
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    return true;
}

static bool id_valid(const char *id)
{
    size_t n = strlen(id);
    if (n < 1 || n > PII_KEY_ID_MAX) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-')) {
            return false;
        }
    }
    return true;
}

/* One parsed line: up to three whitespace-separated words. */
struct line {
    char words[3][LINE_MAX_];
    int n;
    bool extra; /* more than three words */
};

static void split(const char *s, size_t len, struct line *l)
{
    memset(l, 0, sizeof(*l));
    size_t i = 0;
    while (i < len) {
        while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r')) {
            i++;
        }
        if (i >= len || s[i] == '#') {
            break;
        }
        size_t start = i;
        while (i < len && s[i] != ' ' && s[i] != '\t' && s[i] != '\r') {
            i++;
        }
        if (l->n == 3) {
            l->extra = true;
            break;
        }
        size_t wl = i - start < LINE_MAX_ - 1 ? i - start : LINE_MAX_ - 1;
        memcpy(l->words[l->n], s + start, wl);
        l->words[l->n][wl] = '\0';
        l->n++;
    }
}

/* Parse buf into the keyring's keys and lookup secret. Errors name
 * path:line. */
static int parse_keyfile(pii_t *k, const char *path, const char *buf, size_t len,
                         unsigned char lookup[KEY_LEN], bool *have_lookup,
                         unsigned char first[KEY_LEN], char *err, size_t errlen)
{
    int lineno = 0;
    size_t pos = 0;
    int rc = 0;
    struct line *l = malloc(sizeof(*l));
    if (!l) {
        return -ENOMEM;
    }
    while (pos < len && rc == 0) {
        lineno++;
        const char *nl = memchr(buf + pos, '\n', len - pos);
        size_t ll = nl ? (size_t)(nl - (buf + pos)) : len - pos;
        if (ll >= LINE_MAX_) {
            snprintf(err, errlen, "%s:%d: line longer than %d bytes", path, lineno, LINE_MAX_ - 1);
            rc = TDG_ECONFIG;
            break;
        }
        split(buf + pos, ll, l);
        pos += ll + (nl ? 1 : 0);
        if (l->n == 0) {
            continue;
        }
        unsigned char raw[KEY_LEN];
        if (strcmp(l->words[0], "lookup") == 0) {
            if (l->n != 2 || l->extra) {
                snprintf(err, errlen, "%s:%d: expected 'lookup <64 hex digits>'", path, lineno);
                rc = TDG_ECONFIG;
            } else if (*have_lookup) {
                snprintf(err, errlen, "%s:%d: a second lookup line", path, lineno);
                rc = TDG_ECONFIG;
            } else if (!parse_hex32(l->words[1], lookup)) {
                snprintf(err, errlen, "%s:%d: lookup secret must be 64 hex digits (32 bytes)",
                         path, lineno);
                rc = TDG_ECONFIG;
            } else {
                *have_lookup = true;
            }
        } else if (strcmp(l->words[0], "key") == 0) {
            if (l->n != 3 || l->extra) {
                snprintf(err, errlen, "%s:%d: expected 'key <id> <64 hex digits>'", path, lineno);
                rc = TDG_ECONFIG;
            } else if (!id_valid(l->words[1])) {
                snprintf(err, errlen,
                         "%s:%d: key id '%.20s' must be 1-%d of A-Z a-z 0-9 . _ -", path,
                         lineno, l->words[1], PII_KEY_ID_MAX);
                rc = TDG_ECONFIG;
            } else if (!parse_hex32(l->words[2], raw)) {
                snprintf(err, errlen, "%s:%d: key %s must be 64 hex digits (32 bytes)", path,
                         lineno, l->words[1]);
                rc = TDG_ECONFIG;
            } else if (k->n == PII_MAX_KEYS) {
                snprintf(err, errlen, "%s:%d: more than %d keys", path, lineno, PII_MAX_KEYS);
                rc = TDG_ECONFIG;
            } else {
                for (size_t i = 0; i < k->n; i++) {
                    if (strcmp(k->keys[i].id, l->words[1]) == 0) {
                        snprintf(err, errlen, "%s:%d: key id %s given twice", path, lineno,
                                 l->words[1]);
                        rc = TDG_ECONFIG;
                    }
                }
                if (rc == 0) {
                    struct pii_key *key = &k->keys[k->n];
                    mbedtls_gcm_init(&key->gcm);
                    if (mbedtls_gcm_setkey(&key->gcm, MBEDTLS_CIPHER_ID_AES, raw, 8 * KEY_LEN) !=
                        0) {
                        mbedtls_gcm_free(&key->gcm);
                        snprintf(err, errlen, "%s:%d: cannot set AES key", path, lineno);
                        rc = TDG_ECRYPTO;
                    } else {
                        snprintf(key->id, sizeof(key->id), "%.16s", l->words[1]); /* id_valid: <= 16 */
                        if (k->n == 0) {
                            memcpy(first, raw, KEY_LEN);
                        }
                        k->n++;
                    }
                }
            }
            mbedtls_platform_zeroize(raw, sizeof(raw));
        } else {
            snprintf(err, errlen, "%s:%d: unknown entry '%.20s' (expected 'key' or 'lookup')",
                     path, lineno, l->words[0]);
            rc = TDG_ECONFIG;
        }
        mbedtls_platform_zeroize(l, sizeof(*l));
    }
    mbedtls_platform_zeroize(l, sizeof(*l));
    free(l);
    if (rc == 0 && k->n == 0) {
        snprintf(err, errlen, "%s:%d: no 'key <id> <64 hex digits>' line", path, lineno);
        rc = TDG_ECONFIG;
    }
    return rc;
}

/* --- keyring ----------------------------------------------------------- */

int pii_load(const char *path, pii_t **out, char *err, size_t errlen)
{
    char *buf = NULL;
    size_t len = 0;
    int rc = read_keyfile(path, &buf, &len, err, errlen);
    if (rc < 0) {
        return rc;
    }
    pii_t *k = calloc(1, sizeof(*k));
    if (!k) {
        mbedtls_platform_zeroize(buf, len);
        free(buf);
        return -ENOMEM;
    }
    mbedtls_md_init(&k->hmac);
    unsigned char lookup[KEY_LEN], first[KEY_LEN], derived[KEY_LEN];
    bool have_lookup = false;
    rc = parse_keyfile(k, path, buf, len, lookup, &have_lookup, first, err, errlen);
    mbedtls_platform_zeroize(buf, len);
    free(buf);
    const mbedtls_md_info_t *sha = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
    if (rc == 0) {
        /* The lookup key is derived, never the secret itself, so the same
         * bytes used as an AES key (no lookup line) never key HMAC too. */
        const unsigned char *secret = have_lookup ? lookup : first;
        if (mbedtls_md_hmac(sha, secret, KEY_LEN, (const unsigned char *)lookup_label,
                            sizeof(lookup_label) - 1, derived) != 0 ||
            mbedtls_md_setup(&k->hmac, sha, 1) != 0 ||
            mbedtls_md_hmac_starts(&k->hmac, derived, KEY_LEN) != 0) {
            snprintf(err, errlen, "%s: cannot derive the lookup key", path);
            rc = TDG_ECRYPTO;
        }
    }
    mbedtls_platform_zeroize(lookup, sizeof(lookup));
    mbedtls_platform_zeroize(first, sizeof(first));
    mbedtls_platform_zeroize(derived, sizeof(derived));
    if (rc < 0) {
        pii_destroy(k);
        return rc;
    }
    *out = k;
    return 0;
}

void pii_destroy(pii_t *k)
{
    if (!k) {
        return;
    }
    for (size_t i = 0; i < k->n; i++) {
        mbedtls_gcm_free(&k->keys[i].gcm); /* zeroizes the key schedule */
    }
    mbedtls_md_free(&k->hmac);
    mbedtls_platform_zeroize(k, sizeof(*k));
    free(k);
}

const char *pii_current_id(const pii_t *k)
{
    return k->keys[k->n - 1].id;
}

/* --- key file writing -------------------------------------------------- */

/* Keys and nonces come from the kernel's CSPRNG (what mbedtls' entropy
 * source would read too), without a DRBG state to keep or reseed. */
static int random_bytes(unsigned char *out, size_t n)
{
    while (n > 0) {
        ssize_t r = getrandom(out, n, 0);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            return TDG_ECRYPTO;
        }
        out += r;
        n -= (size_t)r;
    }
    return 0;
}

static void to_hex(const unsigned char *b, size_t n, char *out)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[b[i] >> 4];
        out[2 * i + 1] = hex[b[i] & 15];
    }
    out[2 * n] = '\0';
}

static int write_all(int fd, const char *s, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w < 0) {
            return -errno;
        }
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Write content to path (O_EXCL, 0600) and fsync it. */
static int write_new(const char *path, const char *content, size_t len, char *err, size_t errlen)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, "%s: cannot create PII key file: %s", path, strerror(e));
        return -e;
    }
    int rc = write_all(fd, content, len);
    if (rc == 0 && fsync(fd) < 0) {
        rc = -errno;
    }
    close(fd);
    if (rc < 0) {
        snprintf(err, errlen, "%s: write: %s", path, strerror(-rc));
        unlink(path);
    }
    return rc;
}

int pii_generate(const char *path, char *err, size_t errlen)
{
    unsigned char raw[2 * KEY_LEN];
    if (random_bytes(raw, sizeof(raw)) < 0) {
        snprintf(err, errlen, "%s: no random bytes for a new key", path);
        return TDG_ECRYPTO;
    }
    char lookup_hex[2 * KEY_LEN + 1], key_hex[2 * KEY_LEN + 1];
    to_hex(raw, KEY_LEN, lookup_hex);
    to_hex(raw + KEY_LEN, KEY_LEN, key_hex);
    char content[512];
    int n = snprintf(content, sizeof(content),
                     "# Tidings PII keys (docs/directory.md). Keep this file 0600 and back it up:\n"
                     "# without it the directory's phone numbers, emails and tokens are lost.\n"
                     "# The last key line is the current key; keep older ones while rows use them.\n"
                     "lookup %s\n"
                     "key k1 %s\n",
                     lookup_hex, key_hex);
    int rc = write_new(path, content, (size_t)n, err, errlen);
    mbedtls_platform_zeroize(raw, sizeof(raw));
    mbedtls_platform_zeroize(content, sizeof(content));
    mbedtls_platform_zeroize(lookup_hex, sizeof(lookup_hex));
    mbedtls_platform_zeroize(key_hex, sizeof(key_hex));
    return rc;
}

int pii_add_key(const char *path, char *id, size_t idlen, char *err, size_t errlen)
{
    /* Validate the file as it is first: never append to a broken one. */
    pii_t *k = NULL;
    int rc = pii_load(path, &k, err, errlen);
    if (rc < 0) {
        return rc;
    }
    unsigned long next = 1;
    for (size_t i = 0; i < k->n; i++) {
        const char *kid = k->keys[i].id;
        if (kid[0] == 'k' && kid[1] >= '0' && kid[1] <= '9') {
            char *end = NULL;
            unsigned long v = strtoul(kid + 1, &end, 10);
            if (end && *end == '\0' && v >= next && v < 1000000000ul) {
                next = v + 1;
            }
        }
    }
    pii_destroy(k);
    char *buf = NULL;
    size_t len = 0;
    if ((rc = read_keyfile(path, &buf, &len, err, errlen)) < 0) {
        return rc;
    }
    unsigned char raw[KEY_LEN];
    char key_hex[2 * KEY_LEN + 1];
    char newid[PII_KEY_ID_MAX + 1];
    snprintf(newid, sizeof(newid), "k%lu", next);
    char tmp[4096];
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.new", path) >= sizeof(tmp)) {
        rc = -ENAMETOOLONG;
        snprintf(err, errlen, "%s: path too long", path);
    } else if (random_bytes(raw, sizeof(raw)) < 0) {
        rc = TDG_ECRYPTO;
        snprintf(err, errlen, "%s: no random bytes for a new key", path);
    }
    char *content = NULL;
    size_t clen = 0;
    if (rc == 0) {
        to_hex(raw, KEY_LEN, key_hex);
        size_t cap = len + 128;
        content = malloc(cap);
        if (!content) {
            rc = -ENOMEM;
        } else {
            memcpy(content, buf, len);
            clen = len;
            if (clen > 0 && content[clen - 1] != '\n') {
                content[clen++] = '\n';
            }
            clen += (size_t)snprintf(content + clen, cap - clen, "key %s %s\n", newid, key_hex);
        }
    }
    if (rc == 0) {
        unlink(tmp); /* a leftover of an interrupted earlier run */
        rc = write_new(tmp, content, clen, err, errlen);
    }
    if (rc == 0 && rename(tmp, path) < 0) {
        rc = -errno;
        snprintf(err, errlen, "%s: rename: %s", path, strerror(-rc));
        unlink(tmp);
    }
    mbedtls_platform_zeroize(raw, sizeof(raw));
    mbedtls_platform_zeroize(key_hex, sizeof(key_hex));
    mbedtls_platform_zeroize(buf, len);
    free(buf);
    if (content) {
        mbedtls_platform_zeroize(content, clen);
        free(content);
    }
    if (rc == 0) {
        snprintf(id, idlen, "%s", newid);
    }
    return rc;
}

/* --- sealing ----------------------------------------------------------- */

/* The AAD: context, then the value's header (version, id length, id). */
static int make_aad(const char *context, const unsigned char *hdr, size_t hlen,
                    unsigned char *aad, size_t cap, size_t *alen)
{
    size_t cl = strlen(context);
    if (cl + 1 + hlen > cap) {
        return -ENOSPC;
    }
    memcpy(aad, context, cl);
    aad[cl] = 0;
    memcpy(aad + cl + 1, hdr, hlen);
    *alen = cl + 1 + hlen;
    return 0;
}

int pii_seal(pii_t *k, const char *context, const void *pt, size_t len, unsigned char *out,
             size_t cap, size_t *outlen)
{
    struct pii_key *key = &k->keys[k->n - 1];
    size_t il = strlen(key->id);
    size_t hlen = 2 + il;
    if (len > cap || cap - len < hlen + PII_NONCE_LEN + PII_TAG_LEN) {
        return -ENOSPC;
    }
    out[0] = PII_VERSION;
    out[1] = (unsigned char)il;
    memcpy(out + 2, key->id, il);
    unsigned char *nonce = out + hlen;
    unsigned char *ct = nonce + PII_NONCE_LEN;
    unsigned char *tag = ct + len;
    if (random_bytes(nonce, PII_NONCE_LEN) < 0) {
        return TDG_ECRYPTO;
    }
    unsigned char aad[512];
    size_t alen;
    if (make_aad(context, out, hlen, aad, sizeof(aad), &alen) < 0) {
        return -ENOSPC;
    }
    if (mbedtls_gcm_crypt_and_tag(&key->gcm, MBEDTLS_GCM_ENCRYPT, len, nonce, PII_NONCE_LEN, aad,
                                  alen, pt, ct, PII_TAG_LEN, tag) != 0) {
        return TDG_ECRYPTO;
    }
    *outlen = hlen + PII_NONCE_LEN + len + PII_TAG_LEN;
    return 0;
}

/* Split a sealed value; 0 or TDG_EINVAL_INPUT. */
static int parse_sealed(const unsigned char *in, size_t len, size_t *hlen, size_t *ctlen)
{
    if (len < 2 || in[0] != PII_VERSION || in[1] < 1 || in[1] > PII_KEY_ID_MAX) {
        return TDG_EINVAL_INPUT;
    }
    size_t h = 2 + (size_t)in[1];
    if (len < h + PII_NONCE_LEN + PII_TAG_LEN) {
        return TDG_EINVAL_INPUT;
    }
    *hlen = h;
    *ctlen = len - h - PII_NONCE_LEN - PII_TAG_LEN;
    return 0;
}

int pii_sealed_key_id(const unsigned char *in, size_t len, char *id, size_t idlen)
{
    size_t hlen, ctlen;
    if (parse_sealed(in, len, &hlen, &ctlen) < 0 || idlen < (size_t)in[1] + 1) {
        return TDG_EINVAL_INPUT;
    }
    memcpy(id, in + 2, in[1]);
    id[in[1]] = '\0';
    return 0;
}

bool pii_is_current(const pii_t *k, const unsigned char *in, size_t len)
{
    size_t hlen, ctlen;
    if (parse_sealed(in, len, &hlen, &ctlen) < 0) {
        return false;
    }
    const char *cur = k->keys[k->n - 1].id;
    return strlen(cur) == in[1] && memcmp(cur, in + 2, in[1]) == 0;
}

int pii_open(pii_t *k, const char *context, const unsigned char *in, size_t len, char *out,
             size_t cap, size_t *outlen)
{
    size_t hlen, ctlen;
    if (parse_sealed(in, len, &hlen, &ctlen) < 0) {
        return TDG_EINVAL_INPUT;
    }
    struct pii_key *key = NULL;
    for (size_t i = k->n; i-- > 0;) {
        if (strlen(k->keys[i].id) == in[1] && memcmp(k->keys[i].id, in + 2, in[1]) == 0) {
            key = &k->keys[i];
            break;
        }
    }
    if (!key) {
        return TDG_ENOTFOUND;
    }
    if (ctlen + 1 > cap) {
        return -ENOSPC;
    }
    unsigned char aad[512];
    size_t alen;
    if (make_aad(context, in, hlen, aad, sizeof(aad), &alen) < 0) {
        return -ENOSPC;
    }
    const unsigned char *nonce = in + hlen;
    const unsigned char *ct = nonce + PII_NONCE_LEN;
    if (mbedtls_gcm_auth_decrypt(&key->gcm, ctlen, nonce, PII_NONCE_LEN, aad, alen,
                                 ct + ctlen, PII_TAG_LEN, ct, (unsigned char *)out) != 0) {
        mbedtls_platform_zeroize(out, ctlen);
        return TDG_ECRYPTO;
    }
    out[ctlen] = '\0';
    if (outlen) {
        *outlen = ctlen;
    }
    return 0;
}

/* --- lookup hashes ----------------------------------------------------- */

void pii_hash(pii_t *k, const char *domain, const char *value, unsigned char out[PII_HASH_LEN])
{
    /* The md context holds the keyed inner/outer pads: reset, not rekey. */
    mbedtls_md_hmac_reset(&k->hmac);
    mbedtls_md_hmac_update(&k->hmac, (const unsigned char *)domain, strlen(domain) + 1);
    mbedtls_md_hmac_update(&k->hmac, (const unsigned char *)value, strlen(value));
    mbedtls_md_hmac_finish(&k->hmac, out);
}

void pii_log_tag(pii_t *k, const char *domain, const char *value, char out[PII_LOG_TAG_LEN + 1])
{
    unsigned char h[PII_HASH_LEN];
    pii_hash(k, domain, value, h);
    to_hex(h, PII_LOG_TAG_LEN / 2, out);
}
