/*
 * segment.c -- header creation (claimed, written in place, published) and
 * validation, the clock, slot handles.
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

static int claim_live(uint64_t w)
{
    return w != 0 && !(w & SG_CLAIM_DONE);
}

/* CAS the init claim from `expected` to `claim` (the caller proved the
 * holder of `expected` dead, or `expected` is 0: nobody claimed). */
int sg_segment_claim(void *base, uint64_t len, uint64_t expected, uint64_t claim,
                     uint64_t *seen)
{
    if (!base || !seen || len < sizeof(struct sg_header) || !claim_live(claim) ||
        (expected & SG_CLAIM_DONE))
        return SG_E_ARG;
    struct sg_header *h = base;
    uint64_t w = expected;
    /* acq_rel: the winner's header writes come after (R0 publishes them);
     * the acquire side sees a dead holder's partial writes, which it
     * overwrites. w holds the current word on failure. */
    if (atomic_compare_exchange_strong_explicit(&h->host.claim, &w, claim, memory_order_acq_rel,
                                                memory_order_acquire)) {
        *seen = claim;
        return SG_OK;
    }
    *seen = w;
    return SG_E_BUSY;
}

/* Written by the holder of the init claim only (a creator that sized the
 * object, or an attacher that took over a dead creator's claim): nobody
 * else writes the header before it is published. Lines 1-7 are zeroed, so
 * a dead holder's partial writes are gone; slots were never written (no
 * process registers before the header is published). */
int sg_segment_write(void *base, uint64_t len, uint32_t capacity, uint32_t uid,
                     uint32_t pid, uint64_t unix_ns, uint32_t flags,
                     const struct sg_host_view *host)
{
    if (!base || !host || capacity == 0 || capacity > SG_MAX_CAPACITY ||
        len < sg_segment_size(capacity) || !claim_live(host->claim))
        return SG_E_ARG;
    struct sg_header *h = base;
    /* relaxed: we hold the claim (our CAS ordered us after it) */
    if (LD(&h->host.claim) != host->claim)
        return SG_E_BUSY;
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
    h->host.boot_id[0] = host->boot_id[0];
    h->host.boot_id[1] = host->boot_id[1];
    h->host.pid_ns = host->pid_ns;
    h->host.time_ns = host->time_ns;
    h->host.mono_offset_ns = host->mono_offset_ns;
    h->host.created_mono_ns = host->created_mono_ns;
    ST(&h->host.mixed, 0);
    for (int i = 0; i < 8; i++)
        ST(&h->agent[i], 0);
    memset(h->reserved, 0, sizeof h->reserved);
    return SG_OK;
}

int sg_segment_publish(void *base, uint64_t len, uint64_t claim)
{
    if (!base || len < sizeof(struct sg_header) || !claim_live(claim))
        return SG_E_ARG;
    struct sg_header *h = base;
    uint64_t w = claim;
    /* acq_rel: a holder whose claim was taken over (it was judged dead but
     * resumed) fails here and publishes nothing. */
    if (!atomic_compare_exchange_strong_explicit(&h->host.claim, &w, claim | SG_CLAIM_DONE,
                                                 memory_order_acq_rel, memory_order_relaxed))
        return SG_E_BUSY;
    /* R0: publishes every header field written by sg_segment_write(); pairs
     * with A0 in sg_segment_check(). */
    atomic_store_explicit(&h->init, SG_INIT_READY, memory_order_release);
    return SG_OK;
}

/* Claim, write and publish at once: a private buffer nobody else sees
 * (tests, bench), with no host identity. */
int sg_segment_init(void *base, uint64_t len, uint32_t capacity, uint32_t uid,
                    uint32_t pid, uint64_t unix_ns, uint32_t flags)
{
    struct sg_host_view host;
    memset(&host, 0, sizeof host);
    host.claim = ((uint64_t)(pid & 0x3fffffu) << 41) | 1u;
    if (!base || len < sizeof(struct sg_header))
        return SG_E_ARG;
    /* relaxed: private, whatever the buffer held */
    ST(&((struct sg_header *)base)->host.claim, host.claim);
    int rc = sg_segment_write(base, len, capacity, uid, pid, unix_ns, flags, &host);
    return rc == SG_OK ? sg_segment_publish(base, len, host.claim) : rc;
}

int sg_segment_mix(void *base, uint64_t bits)
{
    struct sg_header *h = base;
    if (!h || (bits & ~(uint64_t)(SG_MIX_PID_NS | SG_MIX_TIME_NS)))
        return SG_E_ARG;
    /* release: pairs with the acquire in sg_segment_mixed(); a process that
     * sees the bit stops judging pids from then on. */
    atomic_fetch_or_explicit(&h->host.mixed, bits, memory_order_release);
    return SG_OK;
}

uint64_t sg_segment_mixed(const void *base)
{
    const struct sg_header *h = base;
    if (!h)
        return 0;
    return atomic_load_explicit(&((struct sg_header *)h)->host.mixed, memory_order_acquire);
}

static void host_view(const struct sg_header *h, struct sg_host_view *out)
{
    struct sg_header *m = (struct sg_header *)h;
    out->claim = LD(&m->host.claim); /* relaxed: informative once published */
    out->boot_id[0] = h->host.boot_id[0];
    out->boot_id[1] = h->host.boot_id[1];
    out->pid_ns = h->host.pid_ns;
    out->time_ns = h->host.time_ns;
    out->mono_offset_ns = h->host.mono_offset_ns;
    out->created_mono_ns = h->host.created_mono_ns;
    out->mixed = atomic_load_explicit(&m->host.mixed, memory_order_acquire);
}

int sg_segment_check(const void *base, uint64_t len, struct sg_header_view *out)
{
    if (!base || !out)
        return SG_E_ARG;
    if (len < sizeof(struct sg_header))
        return SG_E_TRUNCATED;
    const struct sg_header *h = base;
    /* A0: pairs with R0; after it the plain header fields are stable. */
    if (atomic_load_explicit(&((struct sg_header *)h)->init, memory_order_acquire) != SG_INIT_READY) {
        /* being initialised (or its initialiser died): a claim and no done
         * bit. A done claim without the init word is a corrupt header. */
        uint64_t c = LD(&((struct sg_header *)h)->host.claim);
        if ((c & SG_CLAIM_DONE) == 0 && (h->magic == 0 || h->magic == SG_MAGIC)) {
            memset(out, 0, sizeof *out);
            out->host.claim = c; /* who initialises it (the caller judges) */
            return SG_E_NOT_READY;
        }
        return SG_E_MAGIC;
    }
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
    host_view(h, &out->host);
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
