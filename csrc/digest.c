/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Block digests for online verify and data-integrity-alg (digest.h).
 *
 * crc32c is the one users pick for both (DRBD's documentation suggests it; the kernel has it in
 * hardware), so it is ours: on x86-64 with SSE4.2 the crc32 instruction, chosen once at run
 * time; the byte table is the portable fallback (~0.5 GB/s). The instruction has a latency of
 * three cycles and a throughput of one, so one chain of it runs at a third of its speed (9 GB/s
 * here): long inputs run three independent chains over three adjacent stretches and join them
 * by "shifting" a CRC over the zeros of the next stretch with precomputed GF(2) operator tables
 * (Mark Adler's method, the one zlib's crc32_combine uses), 21 GB/s here on 1 MiB. That matters:
 * with data-integrity-alg the sender digests each frame under the connection's send lock. The output is the kernel's crypto "crc32c" shash: ~crc, little
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

#define POLY 0x82F63B78u        /* CRC-32C, reflected */
#define LONG_STRETCH 8192
#define SHORT_STRETCH 256

static uint32_t crc_table[256];
static uint32_t shift_long[4][256], shift_short[4][256];   /* zeros operators, a byte at a time */
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

/* GF(2) matrix (32 columns) times vector. */
static uint32_t gf2_times(const uint32_t *mat, uint32_t vec)
{
    uint32_t sum = 0;

    for (; vec; vec >>= 1, mat++)
        if (vec & 1)
            sum ^= *mat;
    return sum;
}

static void gf2_square(uint32_t *square, const uint32_t *mat)
{
    for (int n = 0; n < 32; n++)
        square[n] = gf2_times(mat, mat[n]);
}

/* Tables applying `len` (a power of two) zero bytes to a CRC register, one per operand byte. */
static void make_shift_tables(uint32_t tables[4][256], size_t len)
{
    uint32_t odd[32], even[32], *op = even;

    odd[0] = POLY;                      /* one zero bit */
    for (int n = 1; n < 32; n++)
        odd[n] = 1u << (n - 1);
    gf2_square(even, odd);              /* two zero bits */
    gf2_square(odd, even);              /* four */
    for (;;) {
        gf2_square(even, odd);          /* 8, 32, 128... bits: 1, 4, 16... bytes */
        op = even;
        if ((len >>= 1) == 0)
            break;
        gf2_square(odd, even);          /* 2, 8, 32... bytes */
        op = odd;
        if ((len >>= 1) == 0)
            break;
    }
    for (uint32_t n = 0; n < 256; n++)
        for (int k = 0; k < 4; k++)
            tables[k][n] = gf2_times(op, n << (8 * k));
}

static inline uint32_t shift(uint32_t tables[4][256], uint32_t crc)
{
    return tables[0][crc & 0xff] ^ tables[1][(crc >> 8) & 0xff] ^ tables[2][(crc >> 16) & 0xff] ^
           tables[3][crc >> 24];
}

static void init_once(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[i] = c;
    }
    make_shift_tables(shift_long, LONG_STRETCH);
    make_shift_tables(shift_short, SHORT_STRETCH);
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
/* Whole runs of 3 * stretch bytes: three chains over adjacent stretches, then joined. */
__attribute__((target("sse4.2"))) static uint64_t three_chains(uint64_t c, const unsigned char **pp, size_t *lenp,
                                                              size_t stretch, uint32_t tables[4][256])
{
    const unsigned char *p = *pp;

    for (; *lenp >= 3 * stretch; *lenp -= 3 * stretch) {
        uint64_t c1 = 0, c2 = 0, v0, v1, v2;
        const unsigned char *end = p + stretch;
        do {
            memcpy(&v0, p, 8);
            memcpy(&v1, p + stretch, 8);
            memcpy(&v2, p + 2 * stretch, 8);
            c = __builtin_ia32_crc32di(c, v0);
            c1 = __builtin_ia32_crc32di(c1, v1);
            c2 = __builtin_ia32_crc32di(c2, v2);
            p += 8;
        } while (p < end);
        c = shift(tables, (uint32_t)c) ^ (uint32_t)c1;
        c = shift(tables, (uint32_t)c) ^ (uint32_t)c2;
        p += 2 * stretch;
    }
    *pp = p;
    return c;
}

__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(uint32_t crc, const unsigned char *p, size_t len)
{
    uint64_t c = crc;

    while (len && ((uintptr_t)p & 7)) {
        c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
        len--;
    }
    c = three_chains(c, &p, &len, LONG_STRETCH, shift_long);
    c = three_chains(c, &p, &len, SHORT_STRETCH, shift_short);
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
