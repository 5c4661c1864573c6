/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Digests of blocks (verify-alg, data-integrity-alg): crc32c here (the CPU's crc32 instruction
 * when it has one), the cryptographic hashes through OpenSSL's EVP one-shot API. Algorithms are
 * the RM_DIGEST_* numbers of mirror.h, which also travel on the wire (OV_REQUEST flags).
 * Layer: a leaf library with no state; any layer may call it (tests/unit/test_c_layers.py). */
#ifndef RM_DIGEST_H
#define RM_DIGEST_H

#include <stddef.h>
#include <stdint.h>

#define DIGEST_MAX 64             /* = RM_DIGEST_MAX_SIZE */

/* Bytes of one digest of `alg`, or 0 when this build cannot compute it. */
int digest_size(int alg);
/* Digest of buf[0..len) into out (digest_size(alg) bytes): returns that size, or -EINVAL. */
int digest_compute(int alg, const void *buf, size_t len, unsigned char *out);
/* CRC-32C (Castagnoli, iSCSI): crc = 0xffffffff to start, the result is ~crc. */
uint32_t crc32c_update(uint32_t crc, const void *buf, size_t len);

#endif
