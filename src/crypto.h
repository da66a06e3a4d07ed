/*
 * crypto: the few primitives provider webhooks and requests need, behind
 * postern's own names so that only crypto.c includes OpenSSL: HMACs and
 * plain digests, Ed25519 verification, base64 and hex, and a
 * constant-time comparison. Pure functions: no I/O, no globals, no state.
 */
#ifndef POSTERN_CRYPTO_H
#define POSTERN_CRYPTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum crypto_alg {
    CRYPTO_MD5,    /* 16 bytes */
    CRYPTO_SHA1,   /* 20 bytes */
    CRYPTO_SHA256, /* 32 bytes */
    CRYPTO_SHA512, /* 64 bytes */
};

#define CRYPTO_MAX_DIGEST 64
#define CRYPTO_ED25519_KEY 32
#define CRYPTO_ED25519_SIG 64

/* Digest size of alg in bytes. */
size_t crypto_digest_size(enum crypto_alg alg);

/*
 * HMAC-alg(key, msg) into out (at least crypto_digest_size(alg) bytes).
 * Returns the digest size, or 0 when the library failed.
 */
size_t crypto_hmac(enum crypto_alg alg, const void *key, size_t key_len,
                   const void *msg, size_t msg_len,
                   unsigned char out[CRYPTO_MAX_DIGEST]);

/* Plain alg(msg) into out. Returns the digest size, or 0 on failure. */
size_t crypto_digest(enum crypto_alg alg, const void *msg, size_t msg_len,
                     unsigned char out[CRYPTO_MAX_DIGEST]);

/*
 * true when sig (64 bytes) is a valid Ed25519 signature of msg under the
 * raw 32-byte public key pub (RFC 8032, pure Ed25519).
 */
bool crypto_ed25519_verify(const unsigned char pub[CRYPTO_ED25519_KEY],
                           const void *msg, size_t msg_len,
                           const unsigned char sig[CRYPTO_ED25519_SIG]);

/* Standard base64 with padding; returned owned (free with free()). */
char *crypto_base64_encode(const void *in, size_t len);

/*
 * Decodes standard base64 (padding optional, no whitespace) into out.
 * Returns the decoded length, or -1 when s is malformed or the result
 * does not fit in cap bytes.
 */
long crypto_base64_decode(const char *s, unsigned char *out, size_t cap);

/* Lowercase hex of in into out (2 * len + 1 bytes, NUL-terminated). */
void crypto_hex(const void *in, size_t len, char *out);

/* Constant-time equality of len bytes (the time depends on len only). */
bool crypto_memeq(const void *a, const void *b, size_t len);

/*
 * Constant-time equality of two strings: false at once when the lengths
 * differ (a length is not secret), else crypto_memeq.
 */
bool crypto_streq(const char *a, const char *b);

#endif
