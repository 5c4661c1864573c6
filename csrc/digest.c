/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Block digests for online verify and data-integrity-alg (digest.h).
 *
 * crc32c is the one users pick for both (DRBD's documentation suggests it; the kernel has it in
 * hardware), so it is ours: on x86-64 with SSE4.2 the crc32 instruction eats 8 bytes per step
 * (about 8 GB/s on one core, against ~0.5 GB/s for the byte table), chosen once at run time; the
 * table is the portable fallback. The output is the kernel's crypto "crc32c" shash: ~crc, little
 * endian (RFC 3720's check value for "123456789" is 0xe3069283, bytes 83 92 06 e3).
 *
 * The hashes (md5, sha1, sha2, sha3) go through libcrypto's EVP_Digest; the EVP_MD of each is
 * fetched once (OpenSSL 3 makes a per-call implicit fetch take a lock). */
#include <errno.h>
#include <pthread.h>
#include <string.h>

#include <openssl/evp.h>

#include "digest.h"
#include "mirror.h"

static uint32_t crc_table[256];
static int have_sse42;
static const EVP_MD *evp[RM_DIGEST_LAST + 1];
static pthread_once_t once = PTHREAD_ONCE_INIT;

static const char *const evp_names[RM_DIGEST_LAST + 1] = {
    [RM_DIGEST_MD5] = "MD5",           [RM_DIGEST_SHA1] = "SHA1",
    [RM_DIGEST_SHA224] = "SHA224",     [RM_DIGEST_SHA256] = "SHA256",
    [RM_DIGEST_SHA384] = "SHA384",     [RM_DIGEST_SHA512] = "SHA512",
    [RM_DIGEST_SHA3_224] = "SHA3-224", [RM_DIGEST_SHA3_256] = "SHA3-256",
    [RM_DIGEST_SHA3_384] = "SHA3-384", [RM_DIGEST_SHA3_512] = "SHA3-512",
};

static void init_once(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[i] = c;
    }
#if defined(__x86_64__)
    __builtin_cpu_init();
    have_sse42 = __builtin_cpu_supports("sse4.2");
#endif
    for (int a = 0; a <= RM_DIGEST_LAST; a++)
        if (evp_names[a])
            evp[a] = EVP_get_digestbyname(evp_names[a]);
}

static uint32_t crc32c_table(uint32_t crc, const unsigned char *p, size_t len)
{
    while (len--)
        crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(uint32_t crc, const unsigned char *p, size_t len)
{
    uint64_t c = crc;

    while (len && ((uintptr_t)p & 7)) {
        c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
        len--;
    }
    while (len >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = __builtin_ia32_crc32di(c, v);
        p += 8;
        len -= 8;
    }
    while (len--)
        c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
    return (uint32_t)c;
}
#endif

uint32_t crc32c_update(uint32_t crc, const void *buf, size_t len)
{
    pthread_once(&once, init_once);
#if defined(__x86_64__)
    if (have_sse42)
        return crc32c_hw(crc, buf, len);
#endif
    return crc32c_table(crc, buf, len);
}

int digest_size(int alg)
{
    pthread_once(&once, init_once);
    if (alg == RM_DIGEST_CRC32C)
        return 4;
    if (alg > 0 && alg <= RM_DIGEST_LAST && evp[alg])
        return EVP_MD_get_size(evp[alg]);
    return 0;
}

int digest_compute(int alg, const void *buf, size_t len, unsigned char *out)
{
    unsigned int n = 0;

    if (alg == RM_DIGEST_CRC32C) {
        uint32_t c = ~crc32c_update(0xffffffffu, buf, len);
        out[0] = (unsigned char)c;
        out[1] = (unsigned char)(c >> 8);
        out[2] = (unsigned char)(c >> 16);
        out[3] = (unsigned char)(c >> 24);
        return 4;
    }
    if (digest_size(alg) <= 0 || !EVP_Digest(buf, len, out, &n, evp[alg], NULL))
        return -EINVAL;
    return (int)n;
}
