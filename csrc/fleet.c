/*
 * fleet.c -- the host side of the fleet tier (src/shmguard/fleet/): the
 * agent lease in the segment header (line 4) and the fleet area of a slot
 * (line 31), where the agent applies the share of a fleet-wide rate that
 * Redis granted this host.
 *
 * Agent lease word (header agent[0]; 0 = never held):
 *  63          42 41        32 31                          0
 * +--------------+------------+-----------------------------+
 * |   pid 22     |  epoch 10  |   deadline (ns >> 20) 32    |
 * +--------------+------------+-----------------------------+
 * A deadline lease by design (DESIGN, round 2): the holder renews it every
 * refresh; once its deadline has passed (the holder died or stalled) any
 * attached process may take it, bumping the epoch. agent[1] holds the
 * holder's start time (unix s, informational: the inspector shows it).
 *
 * Fleet area (slot line 31):
 *   w[0] applied: | epoch 10 (41:32) | share ppm 32 (31:0) |  (0: none yet)
 *   w[1] grant lease end (segment clock ns)      w[2] last sync (ns)
 *   w[3] Redis errors, total                     w[4] | mode 8 | hosts 32 |
 * A stale agent (its lease taken over while it was stopped) that resumes
 * finds its apply refused: the lease word is no longer its own, and w[0]
 * names a newer epoch (serial compare), so its CAS fails; one stopped after
 * those checks finds w[0] changed once it wins the rate change's claim
 * (rate.c checks it there), so it never writes its share over a newer one.
 */
#include "layout.h"

#define AG_PID(w) ((uint32_t)((w) >> 42))
#define AG_EPOCH(w) ((uint32_t)(((w) >> 32) & 0x3ffu))
#define AG_DL(w) ((uint32_t)((w) & 0xffffffffu))
#define AG_MAKE(pid, e, dl) (((uint64_t)((pid) & 0x3fffffu) << 42) | \
                             ((uint64_t)((e) & 0x3ffu) << 32) | ((uint64_t)(dl) & 0xffffffffu))
#define FA_EPOCH(w) ((uint32_t)(((w) >> 32) & 0x3ffu))
#define FA_PPM(w) ((uint32_t)(w))
#define MAX_LEASE_NS (3600ULL * 1000000000ULL)

static struct sg_header *hdr(void *base, uint64_t len)
{
    if (!base || len < SG_HEADER_SIZE)
        return NULL;
    struct sg_header *h = base;
    return h->magic == SG_MAGIC ? h : NULL;
}

/* Serial compare of 32-bit (ns >> 20) times: a is before b. */
static int before(uint32_t a, uint32_t b)
{
    return (int32_t)(a - b) < 0;
}

/* Whether lease word w is live at nowq: its deadline not passed and at most
 * the longest lease ahead (a deadline 26+ days old wraps round to "ahead"
 * in 32 bits: such a word, left by a holder long dead, is expired). */
static int live_at(uint64_t w, uint32_t nowq)
{
    return w != 0 && !before(AG_DL(w), nowq) &&
           AG_DL(w) - nowq <= (uint32_t)(MAX_LEASE_NS >> 20) + 1u;
}

int sg_fleet_lease_at(void *base, uint64_t len, uint64_t now, uint32_t pid, uint64_t start_s,
                      uint64_t lease_ns, uint64_t *word_io)
{
    struct sg_header *h = hdr(base, len);
    if (!h || !word_io || pid == 0 || pid > 0x3fffffu || lease_ns == 0 || lease_ns > MAX_LEASE_NS)
        return SG_E_ARG;
    uint32_t dl = (uint32_t)(sg_sat_add(now, lease_ns) >> 20), nowq = (uint32_t)(now >> 20);
    /* acquire: pairs with the release CAS below (R30) of the previous holder */
    uint64_t cur = atomic_load_explicit(&h->agent[0], memory_order_acquire);
    uint64_t next;
    if (cur == *word_io && AG_PID(cur) == pid && live_at(cur, nowq))
        next = AG_MAKE(pid, AG_EPOCH(cur), dl); /* ours and live: renew */
    else if (!live_at(cur, nowq))
        next = AG_MAKE(pid, AG_EPOCH(cur) + 1, dl); /* free or expired: take it */
    else {
        *word_io = cur; /* another live holder */
        return SG_E_BUSY;
    }
    /* R30: a single CAS; a racer (or a stale holder resuming) fails on it */
    if (!atomic_compare_exchange_strong_explicit(&h->agent[0], &cur, next, memory_order_acq_rel,
                                                 memory_order_acquire)) {
        *word_io = cur;
        return SG_E_BUSY;
    }
    ST(&h->agent[1], start_s); /* informational only */
    *word_io = next;
    return SG_OK;
}

int sg_fleet_release(void *base, uint64_t len, uint64_t word)
{
    struct sg_header *h = hdr(base, len);
    if (!h || word == 0)
        return SG_E_ARG;
    /* keep the epoch, drop the deadline to "long past": free at once */
    uint64_t freed = AG_MAKE(AG_PID(word), AG_EPOCH(word), AG_DL(word) - 0x80000000u);
    return atomic_compare_exchange_strong_explicit(&h->agent[0], &word, freed,
                                                   memory_order_release, memory_order_relaxed)
               ? SG_OK : SG_E_BUSY;
}

int sg_fleet_agent_at(const void *base, uint64_t len, uint64_t now, struct sg_fleet_agent_view *out)
{
    struct sg_header *h = hdr((void *)base, len);
    if (!h || !out)
        return SG_E_ARG;
    uint64_t w = atomic_load_explicit(&h->agent[0], memory_order_acquire);
    uint32_t nowq = (uint32_t)(now >> 20);
    out->word = w;
    out->pid = AG_PID(w);
    out->epoch = AG_EPOCH(w);
    out->start_s = LD(&h->agent[1]);
    out->live = live_at(w, nowq);
    out->remaining_ns = out->live ? (uint64_t)(AG_DL(w) - nowq) << 20 : 0;
    return SG_OK;
}

/* Whether `word` is the live lease now. */
static int holds(struct sg_header *h, uint64_t word, uint64_t now)
{
    uint64_t cur = atomic_load_explicit(&h->agent[0], memory_order_acquire); /* A30 */
    return cur == word && live_at(cur, (uint32_t)(now >> 20));
}

int sg_fleet_apply_at(void *base, uint64_t len, void *slot, uint64_t now, uint64_t word,
                      const struct sg_fleet_view *in)
{
    struct sg_header *h = hdr(base, len);
    if (!h || !slot || !in || in->share_ppm < 1 || in->share_ppm > SG_PPM || in->mode > 255)
        return SG_E_ARG;
    if (!holds(h, word, now))
        return SG_E_BUSY;
    struct sg_fleet_area *f = &((struct sg_slot *)slot)->fleet;
    uint32_t ep = AG_EPOCH(word);
    uint64_t cur = atomic_load_explicit(&f->w[0], memory_order_acquire);
    uint64_t next = ((uint64_t)ep << 32) | in->share_ppm;
    /* a newer epoch wrote here: we are a stale agent (serial compare on 10 bits) */
    if (cur != 0 && ((FA_EPOCH(cur) - ep) & 0x3ffu) != 0 && ((FA_EPOCH(cur) - ep) & 0x3ffu) < 512)
        return SG_E_BUSY;
    int changed = cur != next;
    /* R31: pairs with rate.c's fence (A31), checked after its claim is won */
    if (changed && !atomic_compare_exchange_strong_explicit(&f->w[0], &cur, next,
                                                            memory_order_acq_rel,
                                                            memory_order_relaxed))
        return SG_E_BUSY; /* another writer moved it; the caller retries next refresh */
    /* relaxed: statistics of the sync, read by snapshots only */
    ST(&f->w[1], in->expires_ns);
    ST(&f->w[2], in->synced_ns);
    ST(&f->w[4], ((uint64_t)in->mode << 32) | in->hosts);
    if (!changed && FA_PPM(cur) == in->share_ppm && !in->force)
        return SG_OK;
    return sg_limiter_share_at(slot, now, in->share_ppm, next); /* SG_E_GONE: superseded */
}

int sg_fleet_error(void *slot)
{
    if (!slot)
        return SG_E_ARG;
    atomic_fetch_add_explicit(&((struct sg_slot *)slot)->fleet.w[3], 1, memory_order_relaxed);
    return SG_OK;
}

int sg_fleet_snapshot(const void *slot, struct sg_fleet_view *out)
{
    if (!slot || !out)
        return SG_E_ARG;
    struct sg_fleet_area *f = &((struct sg_slot *)slot)->fleet;
    uint64_t w0 = atomic_load_explicit(&f->w[0], memory_order_acquire);
    uint64_t w4 = LD(&f->w[4]);
    out->share_ppm = FA_PPM(w0) > SG_PPM ? SG_PPM : FA_PPM(w0); /* untrusted */
    out->epoch = FA_EPOCH(w0);
    out->expires_ns = LD(&f->w[1]);
    out->synced_ns = LD(&f->w[2]);
    out->errors = LD(&f->w[3]);
    out->hosts = (uint32_t)w4;
    out->mode = (uint32_t)(w4 >> 32) & 0xffu;
    out->force = 0;
    return SG_OK;
}
