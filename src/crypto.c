/*
 * crypto: HMAC, digests and Ed25519 verification on OpenSSL's libcrypto,
 * plus base64/hex codecs and constant-time comparison written here (they
 * are short, and OpenSSL's base64 decoder is lenient about things a
 * signature check should refuse). The only module that includes OpenSSL
 * headers.
 *
 * It must never keep state, log, or compare a secret or a signature with
 * memcmp/strcmp.
 */
#include "crypto.h"

#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "util.h"

static const EVP_MD *md_of(enum crypto_alg alg)
{
    switch (alg) {
    case CRYPTO_MD5:
        return EVP_md5();
    case CRYPTO_SHA1:
        return EVP_sha1();
    case CRYPTO_SHA256:
        return EVP_sha256();
    case CRYPTO_SHA512:
        return EVP_sha512();
    }
    return NULL;
}

size_t crypto_digest_size(enum crypto_alg alg)
{
    switch (alg) {
    case CRYPTO_MD5:
        return 16;
    case CRYPTO_SHA1:
        return 20;
    case CRYPTO_SHA256:
        return 32;
    case CRYPTO_SHA512:
        return 64;
    }
    return 0;
}

size_t crypto_hmac(enum crypto_alg alg, const void *key, size_t key_len,
                   const void *msg, size_t msg_len,
                   unsigned char out[CRYPTO_MAX_DIGEST])
{
    const EVP_MD *md = md_of(alg);
    unsigned int n = 0;
    static const unsigned char empty[1];

    if (!md || key_len > 0x7fffffff)
        return 0;
    /* HMAC() treats a NULL key as "reuse the previous one": never pass it */
    if (!HMAC(md, key_len ? key : empty, (int)key_len, msg_len ? msg : empty,
              msg_len, out, &n))
        return 0;
    return n;
}

size_t crypto_digest(enum crypto_alg alg, const void *msg, size_t msg_len,
                     unsigned char out[CRYPTO_MAX_DIGEST])
{
    const EVP_MD *md = md_of(alg);
    unsigned int n = 0;
    static const unsigned char empty[1];

    if (!md || !EVP_Digest(msg_len ? msg : empty, msg_len, out, &n, md, NULL))
        return 0;
    return n;
}

bool crypto_ed25519_verify(const unsigned char pub[CRYPTO_ED25519_KEY],
                           const void *msg, size_t msg_len,
                           const unsigned char sig[CRYPTO_ED25519_SIG])
{
    EVP_PKEY *key;
    EVP_MD_CTX *ctx;
    bool ok = false;
    static const unsigned char empty[1];

    key = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pub,
                                      CRYPTO_ED25519_KEY);
    if (!key)
        return false;
    ctx = EVP_MD_CTX_new();
    if (ctx && EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, key) == 1)
        ok = EVP_DigestVerify(ctx, sig, CRYPTO_ED25519_SIG,
                              msg_len ? msg : empty, msg_len) == 1;
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(key);
    return ok;
}

static const char b64[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *crypto_base64_encode(const void *in, size_t len)
{
    const unsigned char *p = in;
    char *out = xmalloc((len + 2) / 3 * 4 + 1), *o = out;
    size_t i = 0;

    for (; i + 2 < len; i += 3) {
        *o++ = b64[p[i] >> 2];
        *o++ = b64[((p[i] & 3) << 4) | (p[i + 1] >> 4)];
        *o++ = b64[((p[i + 1] & 15) << 2) | (p[i + 2] >> 6)];
        *o++ = b64[p[i + 2] & 63];
    }
    if (i < len) {
        *o++ = b64[p[i] >> 2];
        if (i + 1 < len) {
            *o++ = b64[((p[i] & 3) << 4) | (p[i + 1] >> 4)];
            *o++ = b64[(p[i + 1] & 15) << 2];
        } else {
            *o++ = b64[(p[i] & 3) << 4];
            *o++ = '=';
        }
        *o++ = '=';
    }
    *o = '\0';
    return out;
}

static int b64_val(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

long crypto_base64_decode(const char *s, unsigned char *out, size_t cap)
{
    size_t n = strlen(s), o = 0;
    unsigned acc = 0;
    int bits = 0;

    /* up to two '=' and only where they complete a quantum */
    if (n % 4 == 0 && n >= 4) {
        if (s[n - 1] == '=')
            n--;
        if (s[n - 1] == '=')
            n--;
    }
    if (n % 4 == 1)
        return -1;
    for (size_t i = 0; i < n; i++) {
        int v = b64_val(s[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o >= cap)
                return -1;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    /* leftover bits must be zero, or two encodings would decode alike */
    if (acc != 0)
        return -1;
    return (long)o;
}

void crypto_hex(const void *in, size_t len, char *out)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = in;

    for (size_t i = 0; i < len; i++) {
        out[2 * i] = hex[p[i] >> 4];
        out[2 * i + 1] = hex[p[i] & 15];
    }
    out[2 * len] = '\0';
}

bool crypto_memeq(const void *a, const void *b, size_t len)
{
    return CRYPTO_memcmp(a, b, len) == 0;
}

bool crypto_streq(const char *a, const char *b)
{
    size_t n = strlen(a);

    if (n != strlen(b))
        return false;
    return crypto_memeq(a, b, n);
}
