/*
 * chain.c -- the counters of a named fallback chain, host-wide.
 *
 * A named chain (svc.fallback_chain(..., name=)) keeps which step served
 * how often in its own small shared-memory object beside its segment,
 * /shmguard.<uid>.<segment>~fc~<name> (SG_FC_SIZE bytes), so `shmguard
 * inspect` and every process see the same counts.
 *
 * Offset table (bytes)
 *   0    line 0: magic, version, steps, creator, init word (written once)
 *   64   lines 1-8: step endpoint names, 64 bytes each (written once)
 *   576  lines 9-10: counters: served[SG_FC_MAX_STEPS], last, failed
 *   704  lines 11-15: zero
 *
 * The creator writes lines 0-8 and publishes the init word last (R40);
 * readers check it first (A40). Counters only ever grow, by relaxed
 * fetch-adds: they are statistics, nothing is decided from them.
 * The object is untrusted like the segment: every size and index is
 * checked before use.
 */
#include <string.h>

#include "layout.h"

#define SG_FC_MAGIC 0x314e4843474d4853ULL /* "SHMGCHN1" little-endian */
#define SG_FC_VERSION 1u
#define FC_COUNTERS (SG_FC_MAX_STEPS + 2)

struct sg_fc_header {
    alignas(SG_CACHE_LINE) uint64_t magic;   /**< SG_FC_MAGIC */
    uint32_t version;                        /**< SG_FC_VERSION */
    uint32_t steps;                          /**< 1..SG_FC_MAX_STEPS */
    uint64_t created_unix_ns;                /**< wall clock at creation */
    uint32_t creator_pid;                    /**< pid of the creator */
    sg_a32 init;                             /**< SG_INIT_READY, published last (R40) */
    uint32_t name_len[SG_FC_MAX_STEPS];      /**< bytes of each step's name */
    alignas(SG_CACHE_LINE) char name[SG_FC_MAX_STEPS][SG_NAME_MAX]; /**< lines 1-8 */
    alignas(SG_CACHE_LINE) sg_a64 count[FC_COUNTERS]; /**< served per step, last, failed */
};

_Static_assert(sizeof(struct sg_fc_header) <= SG_FC_SIZE, "chain object fits SG_FC_SIZE");
_Static_assert(offsetof(struct sg_fc_header, name) == 64, "names: lines 1-8");
_Static_assert(offsetof(struct sg_fc_header, count) == 9 * 64, "counters: lines 9-10");
_Static_assert(SG_FC_LAST == SG_FC_MAX_STEPS && SG_FC_FAILED == SG_FC_MAX_STEPS + 1,
               "counter indices");

int sg_fc_init(void *base, uint64_t len, uint32_t steps, const char *names,
               const uint32_t *name_len, uint32_t pid, uint64_t unix_ns)
{
    if (!base || !names || !name_len || len < SG_FC_SIZE || steps == 0 ||
        steps > SG_FC_MAX_STEPS)
        return SG_E_ARG;
    struct sg_fc_header *h = (struct sg_fc_header *)base;
    for (uint32_t i = 0; i < steps; i++) {
        if (name_len[i] == 0 || name_len[i] > SG_NAME_MAX)
            return SG_E_ARG;
        h->name_len[i] = name_len[i];
        memcpy(h->name[i], names + (uint64_t)i * SG_NAME_MAX, name_len[i]);
    }
    h->magic = SG_FC_MAGIC;
    h->version = SG_FC_VERSION;
    h->steps = steps;
    h->created_unix_ns = unix_ns;
    h->creator_pid = pid;
    /* R40: publishes lines 0-8; pairs with A40 in sg_fc_check(). */
    atomic_store_explicit(&h->init, SG_INIT_READY, memory_order_release);
    return SG_OK;
}

int sg_fc_check(const void *base, uint64_t len, struct sg_fc_view *out)
{
    if (!base || !out)
        return SG_E_ARG;
    if (len < SG_FC_SIZE)
        return SG_E_TRUNCATED;
    struct sg_fc_header *h = (struct sg_fc_header *)base;
    /* A40: pairs with R40; after it lines 0-8 are stable. */
    if (atomic_load_explicit(&h->init, memory_order_acquire) != SG_INIT_READY)
        return h->magic == 0 ? SG_E_NOT_READY : SG_E_MAGIC;
    if (h->magic != SG_FC_MAGIC)
        return SG_E_MAGIC;
    if (h->version != SG_FC_VERSION)
        return SG_E_VERSION;
    memset(out, 0, sizeof *out);
    uint32_t steps = h->steps; /* read once: the object may be scribbled meanwhile */
    if (steps == 0 || steps > SG_FC_MAX_STEPS)
        return SG_E_CORRUPT;
    for (uint32_t i = 0; i < steps; i++) {
        uint32_t n = h->name_len[i];
        if (n == 0 || n > SG_NAME_MAX)
            return SG_E_CORRUPT;
        out->name_len[i] = n;
        memcpy(out->name[i], h->name[i], n);
    }
    out->steps = steps;
    out->created_unix_ns = h->created_unix_ns;
    out->creator_pid = h->creator_pid;
    /* relaxed: statistics only */
    for (uint32_t i = 0; i < FC_COUNTERS; i++)
        out->count[i] = LD(&h->count[i]);
    return SG_OK;
}

int sg_fc_count(void *base, uint64_t len, uint32_t which)
{
    if (!base || len < SG_FC_SIZE || which >= FC_COUNTERS)
        return SG_E_ARG;
    struct sg_fc_header *h = (struct sg_fc_header *)base;
    /* relaxed: a statistic; the mapping was validated when it was opened */
    atomic_fetch_add_explicit(&h->count[which], 1, memory_order_relaxed);
    return SG_OK;
}
