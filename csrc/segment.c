/*
 * segment.c -- header creation and validation, the clock, slot handles.
 *
 * The segment is untrusted input: sg_segment_check() validates every size
 * the header claims against the mapping's real length before any slot is
 * touched, and sg_handle_init() bounds-checks the slot index.
 */
#define _POSIX_C_SOURCE 200809L
#include <string.h>
#include <time.h>

#include "layout.h"

uint64_t sg_segment_size(uint32_t capacity)
{
    return (uint64_t)sizeof(struct sg_header) + (uint64_t)capacity * sizeof(struct sg_slot);
}

/* Called once by the creator (it made the object with O_CREAT|O_EXCL and
 * sized it, so the bytes are zero and nobody else writes them yet). */
int sg_segment_init(void *base, uint64_t len, uint32_t capacity, uint32_t uid,
                    uint32_t pid, uint64_t unix_ns, uint32_t flags)
{
    if (!base || capacity == 0 || capacity > SG_MAX_CAPACITY || len < sg_segment_size(capacity))
        return SG_E_ARG;
    struct sg_header *h = base;
    h->magic = SG_MAGIC;
    h->layout_version = SG_LAYOUT_VERSION;
    h->header_size = sizeof(struct sg_header);
    h->total_size = sg_segment_size(capacity);
    h->capacity = capacity;
    h->slot_size = sizeof(struct sg_slot);
    h->creator_uid = uid;
    h->creator_pid = pid;
    h->created_unix_ns = unix_ns;
    h->flags = flags & SG_HDR_MANUAL_CLOCK;
    ST(&h->manual_now_ns, 0);
    ST(&h->used, 0);
    /* R0: publishes every header field above; pairs with A0 in
     * sg_segment_check(). */
    atomic_store_explicit(&h->init, SG_INIT_READY, memory_order_release);
    return SG_OK;
}

int sg_segment_check(const void *base, uint64_t len, struct sg_header_view *out)
{
    if (!base || !out)
        return SG_E_ARG;
    if (len < sizeof(struct sg_header))
        return SG_E_TRUNCATED;
    const struct sg_header *h = base;
    /* A0: pairs with R0; after it the plain header fields are stable. */
    if (atomic_load_explicit(&((struct sg_header *)h)->init, memory_order_acquire) != SG_INIT_READY)
        return h->magic == 0 ? SG_E_NOT_READY : SG_E_MAGIC;
    if (h->magic != SG_MAGIC)
        return SG_E_MAGIC;
    if (h->layout_version != SG_LAYOUT_VERSION)
        return SG_E_VERSION;
    /* Read each claimed size once into locals: the header may change under
     * us if someone scribbles on it, so never re-read what we checked. */
    uint32_t cap = h->capacity, ssz = h->slot_size, hsz = h->header_size;
    uint64_t total = h->total_size;
    if (hsz != sizeof(struct sg_header) || ssz != sizeof(struct sg_slot) || cap == 0 ||
        cap > SG_MAX_CAPACITY || total != sg_segment_size(cap))
        return SG_E_SIZE;
    if (total > len)
        return SG_E_TRUNCATED;
    memset(out, 0, sizeof *out);
    out->total_size = total;
    out->created_unix_ns = h->created_unix_ns;
    out->layout_version = h->layout_version;
    out->capacity = cap;
    out->slot_size = ssz;
    out->creator_uid = h->creator_uid;
    out->creator_pid = h->creator_pid;
    out->flags = h->flags;
    /* relaxed: a statistic, no data depends on it */
    out->used = LD(&((struct sg_header *)h)->used);
    return SG_OK;
}

uint64_t sg_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

uint64_t sg_now_h(const struct sg_handle *h)
{
    if (h->clock)
        /* acquire: a test that sets the clock then signals another process
         * expects that process to see the new time (pairs with R9). */
        return atomic_load_explicit((sg_a64 *)h->clock, memory_order_acquire);
    return sg_mono_ns();
}

uint64_t sg_clock_now(const void *base)
{
    const struct sg_header *h = base;
    if (h && (h->flags & SG_HDR_MANUAL_CLOCK))
        return atomic_load_explicit(&((struct sg_header *)h)->manual_now_ns, memory_order_acquire);
    return sg_mono_ns();
}

int sg_clock_set(void *base, uint64_t now_ns)
{
    struct sg_header *h = base;
    if (!h || !(h->flags & SG_HDR_MANUAL_CLOCK))
        return SG_E_CLOCK;
    /* R9: pairs with the acquire loads in sg_now_h()/sg_clock_now(). */
    atomic_store_explicit(&h->manual_now_ns, now_ns, memory_order_release);
    return SG_OK;
}

int sg_handle_init(struct sg_handle *hd, void *base, uint64_t len, uint32_t index)
{
    struct sg_header_view v;
    int rc = sg_segment_check(base, len, &v);
    if (rc != SG_OK)
        return rc;
    if (!hd || index >= v.capacity)
        return SG_E_ARG;
    struct sg_header *h = base;
    memset(hd, 0, sizeof *hd);
    hd->base = base;
    hd->map_len = len;
    hd->index = index;
    hd->slot = sg_slot_at(base, index);
    hd->clock = (v.flags & SG_HDR_MANUAL_CLOCK) ? (void *)&h->manual_now_ns : NULL;
    /* A1: the incarnation the handle is bound to (see sg_hslot) */
    uint64_t w = atomic_load_explicit(&((struct sg_slot *)hd->slot)->state, memory_order_acquire);
    hd->ready = SK_KIND(w) == SG_SK_READY ? w : SK_GONE;
    return SG_OK;
}

/* Caller has checked index < capacity (sg_segment_check / sg_handle_init). */
struct sg_slot *sg_slot_at(const void *base, uint32_t index)
{
    return (struct sg_slot *)((char *)base + sizeof(struct sg_header) +
                              (uint64_t)index * sizeof(struct sg_slot));
}
