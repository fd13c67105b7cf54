/*
 * siphash.c -- SipHash-2-4 (Aumasson and Bernstein, 2012), from the paper's
 * reference algorithm: a keyed 64-bit hash, so a client that does not know
 * the key cannot craft keys that collide (hash flooding). Keyed limiters
 * hash every key with their table's own random key (keyed.c).
 *
 * Checked against the paper's test vector and a Python transcription of
 * the algorithm in tests/core/test_keyed_steps.py.
 */
#include <string.h>

#include "shmguard.h"

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                   \
    do {                                                                                           \
        v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);                                  \
        v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                                                     \
        v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                                                     \
        v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);                                  \
    } while (0)

static inline uint64_t le64(const unsigned char *p)
{
    uint64_t m;
    memcpy(&m, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    m = __builtin_bswap64(m);
#endif
    return m;
}

uint64_t sg_siphash24(uint64_t k0, uint64_t k1, const char *data, uint64_t len)
{
    uint64_t v0 = 0x736f6d6570736575ULL ^ k0, v1 = 0x646f72616e646f6dULL ^ k1;
    uint64_t v2 = 0x6c7967656e657261ULL ^ k0, v3 = 0x7465646279746573ULL ^ k1;
    const unsigned char *p = (const unsigned char *)data;
    const unsigned char *end = p + (len - (len & 7));
    uint64_t b = len << 56;
    for (; p != end; p += 8) {
        uint64_t m = le64(p);
        v3 ^= m;
        SIPROUND;
        SIPROUND;
        v0 ^= m;
    }
    for (unsigned i = (unsigned)(len & 7); i > 0; i--)
        b |= (uint64_t)p[i - 1] << (8 * (i - 1));
    v3 ^= b;
    SIPROUND;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}
