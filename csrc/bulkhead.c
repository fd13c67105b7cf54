/*
 * bulkhead.c -- host-wide concurrency tickets: at most `limit` calls in flight.
 *
 * Each ticket is ONE 64-bit word (0 = free; else pid | generation | grant
 * time), taken by one CAS from 0 and given back by one CAS from the exact
 * word to 0. So at most `limit` words are non-zero at any instant: nothing
 * is counted up and then undone. A dead holder's word is reclaimed by a CAS
 * from the word seen (the holder is judged dead from outside, with psutil);
 * a stalled but live holder keeps its ticket. With a ticket lease (off by
 * default) a word older than the lease counts as free.
 *
 * The limit word (layout.h) follows the policy: max_concurrent, or in quota
 * mode ceil(quota x attached processes), recounted once per SG_BH_REFRESH_NS
 * by the caller whose token carries SG_BH_REFRESH. When the limit shrinks,
 * words at [limit, span) may still be held; no ticket is granted until they
 * are back ("drain"), so old and new tickets together never exceed it.
 *
 * Waiters sleep on the 32-bit futex word wake_seq; a release bumps it and
 * wakes ONE sleeper, only when `sleepers` says someone sleeps (bulkhead_wait.c).
 */
#include <string.h>

#include "layout.h"

#define SC memory_order_seq_cst
/* token (int64 > 0): | refresh 1 (49) | one 1 (48) | index 6 (47:42) | gen 10 | time 32 | */
#define TK_ONE (1ULL << 48)
#define TK_INDEX(t) ((uint32_t)(((uint64_t)(t) >> 42) & 0x3fu))
#define TK_WORD(t, pid) (((uint64_t)((pid) & 0x3fffffu) << 42) | ((uint64_t)(t) & TW_LOW))

struct bh_pol {
    uint32_t n, reserve, quota_ppm, seq7;
    uint64_t lease_ns;
};

/* Per thread: tells two grants of one process apart (ABA on a ticket word). */
static _Thread_local uint32_t generation;

/* The bulkhead fields of the live policy (seqlock, as lim_load in gcra.c). */
static void bh_policy(struct sg_slot *s, struct bh_pol *out)
{
    uint32_t mc = 0;
    for (int tries = 0; tries < 16; tries++) {
        /* A2: pairs with R2 in sg_policy_publish(). */
        uint64_t seq = atomic_load_explicit(&s->policy_seq, memory_order_acquire);
        struct sg_policy_raw *p = &s->policy[seq & 1];
        mc = LD(&p->max_concurrent);
        out->quota_ppm = LD(&p->quota_ppm);
        out->lease_ns = LD(&p->ticket_lease_ns);
        out->seq7 = (uint32_t)seq & 0x7fu;
        atomic_thread_fence(memory_order_acquire);
        if (LD(&s->policy_seq) == seq)
            break;
    }
    out->n = mc & 0xffu; /* untrusted: clamp what indexes the ticket array */
    out->reserve = (mc >> 8) & 0xffu;
    if (out->n > SG_MAX_TICKETS)
        out->n = SG_MAX_TICKETS;
    if (out->n || out->quota_ppm > SG_PPM)
        out->quota_ppm = out->n ? 0 : SG_PPM;
}

static uint32_t quota_limit(uint32_t ppm, uint32_t procs)
{
    uint64_t l = ((uint64_t)(procs ? procs : 1) * ppm + SG_PPM - 1) / SG_PPM;
    return l < 1 ? 1 : l > SG_MAX_TICKETS ? SG_MAX_TICKETS : (uint32_t)l;
}

static uint32_t max3(uint32_t a, uint32_t b, uint32_t c)
{
    uint32_t m = a > b ? a : b;
    return m > c ? m : c;
}

/* The limit word for the policy P with `procs` counted: the span still covers
 * every word the previous limit let out. */
static uint64_t wanted(uint64_t lw, const struct bh_pol *p, uint32_t procs, uint64_t now)
{
    int valid = (lw & BL_VALID) != 0;
    uint32_t lim = p->n ? p->n : p->quota_ppm ? quota_limit(p->quota_ppm, procs) : 0;
    uint32_t span = max3(valid ? BL_SPAN(lw) : 0, valid ? BL_LIM(lw) : 0, lim);
    uint64_t w = BL_MAKE(p->seq7, span > SG_MAX_TICKETS ? SG_MAX_TICKETS : span, lim, procs, now);
    return valid ? (w & ~0xffffffULL) | BL_STAMP(lw) : w & ~0xffffffULL; /* keep the stamp */
}

/* serial, 2^20 ns units: ages up to 2^31 units (26 days; leases are at most
 * 20). A grant "in the future" was made by a clock ahead of ours: age 0, so
 * a process whose clock is behind never takes a live ticket as expired. */
static uint64_t age_ns(uint32_t then_u, uint64_t now)
{
    int32_t d = (int32_t)((uint32_t)(now >> 20) - then_u);
    return d < 0 ? 0 : (uint64_t)d << 20;
}

static int expired(uint64_t w, uint64_t now, uint64_t lease_ns)
{
    return lease_ns && age_ns(TW_TIME(w), now) >= lease_ns;
}

/* Words [limit, span) may still be held after a shrink: close the span once
 * none is (then retry), else report 0 (no ticket until they are back). */
static int drain(struct sg_bulkhead_area *b, uint64_t lw, uint64_t now, uint64_t lease_ns)
{
    for (uint32_t i = BL_LIM(lw); i < BL_SPAN(lw) && i < SG_MAX_TICKETS; i++) {
        uint64_t w = atomic_load_explicit(&b->ticket[i], SC);
        if (w && !expired(w, now, lease_ns))
            return 0;
    }
    uint64_t nw = (lw & ~(0xffULL << 48)) | ((uint64_t)BL_LIM(lw) << 48);
    atomic_compare_exchange_strong_explicit(&b->limit, &lw, nw, SC, SC); /* lost: retry anyway */
    return 1;
}

/* One pass over the words a caller of `prio` may take: CRITICAL scans down
 * from the top (the reserved words first); the others start at a per-process
 * hint inside [0, limit - reserve). A CAS lost moves on to the next word. */
static int take(struct sg_bulkhead_area *b, uint32_t lim, uint32_t reserve, uint32_t prio,
                uint64_t mine, uint64_t now, uint64_t lease_ns, uint32_t *idx)
{
    if (reserve >= lim)
        reserve = lim - 1;
    uint32_t top = prio == 3 ? lim : lim - reserve, start = TW_PID(mine) % top;
    for (uint32_t k = 0; k < top; k++) {
        uint32_t i = prio == 3 ? top - 1 - k : (start + k < top ? start + k : start + k - top);
        uint64_t w = atomic_load_explicit(&b->ticket[i], memory_order_relaxed);
        if (w != 0 && !expired(w, now, lease_ns))
            continue;
        /* seq_cst: the grant is ordered with the limit word re-read after it */
        if (atomic_compare_exchange_strong_explicit(&b->ticket[i], &w, mine, SC,
                                                    memory_order_relaxed)) {
            if (w != 0) /* an expired lease taken over */
                atomic_fetch_add_explicit(&b->reclaimed, 1, memory_order_relaxed);
            *idx = i;
            return 1;
        }
    }
    return 0;
}

/* Statistics of a grant (relaxed: counters carry no data). */
static void granted(struct sg_bulkhead_area *b, uint64_t lw, uint32_t mode)
{
    atomic_fetch_add_explicit(&b->acquired, 1, memory_order_relaxed);
    if (mode & SG_BH_WAITED)
        atomic_fetch_add_explicit(&b->waited, 1, memory_order_relaxed);
    uint32_t n = 0, end = BL_SPAN(lw) > BL_LIM(lw) ? BL_SPAN(lw) : BL_LIM(lw);
    for (uint32_t i = 0; i < end && i < SG_MAX_TICKETS; i++)
        n += LD(&b->ticket[i]) != 0;
    uint64_t pk = LD(&b->peak);
    while (pk < n && !atomic_compare_exchange_weak_explicit(&b->peak, &pk, n, memory_order_relaxed,
                                                            memory_order_relaxed))
        ; /* pk refreshes on failure */
}

/* Quota mode: one caller per SG_BH_REFRESH_NS moves the stamp and is told to
 * count the attached processes (sg_bulkhead_set_procs_at). */
static int64_t refresh_due(struct sg_bulkhead_area *b, const struct bh_pol *p, uint64_t now)
{
    uint64_t lw = atomic_load_explicit(&b->limit, memory_order_relaxed);
    if (!p->quota_ppm || (uint64_t)((((uint32_t)(now >> 20)) - BL_STAMP(lw)) & 0xffffffu) << 20 <
                             SG_BH_REFRESH_NS)
        return 0;
    uint64_t nw = (lw & ~0xffffffULL) | ((now >> 20) & 0xffffffULL);
    /* relaxed: an election only; whoever wins counts, lw refreshes on loss */
    int won = atomic_compare_exchange_strong_explicit(&b->limit, &lw, nw, memory_order_relaxed,
                                                      memory_order_relaxed);
    return won ? (int64_t)SG_BH_REFRESH : 0;
}

int64_t sg_bulkhead_acquire_at(void *slot, uint64_t now, uint32_t pid, uint32_t mode)
{
    struct sg_slot *s = slot;
    if (!s || pid == 0)
        return SG_E_ARG;
    struct sg_bulkhead_area *b = &s->bulkhead;
    struct bh_pol p;
    bh_policy(s, &p);
    uint64_t mine = ((uint64_t)(pid & 0x3fffffu) << 42) |
                    ((uint64_t)(generation++ & 0x3ffu) << 32) | ((now >> 20) & 0xffffffffULL);
    for (int round = 0; round < 8; round++) {
        uint64_t lw = atomic_load_explicit(&b->limit, SC);
        uint64_t want = wanted(lw, &p, (lw & BL_VALID) ? BL_PROCS(lw) : 0, now);
        if (want != lw) { /* follow the policy first; lw refreshes on failure */
            atomic_compare_exchange_strong_explicit(&b->limit, &lw, want, SC, SC);
            continue;
        }
        if (BL_LIM(lw) == 0)
            return 0; /* no bulkhead */
        if (BL_SPAN(lw) > BL_LIM(lw)) {
            if (!drain(b, lw, now, p.lease_ns))
                break;
            continue;
        }
        uint32_t i;
        if (!take(b, BL_LIM(lw), p.reserve, mode & 3, mine, now, p.lease_ns, &i))
            break;
        /* Validate after winning (rule): the limit we granted under must still
         * be the limit. If it moved, undo before anyone ran with the ticket. */
        if ((atomic_load_explicit(&b->limit, SC) ^ lw) & BL_SHAPE) {
            uint64_t w = mine;
            if (atomic_compare_exchange_strong_explicit(&b->ticket[i], &w, 0, SC,
                                                        memory_order_relaxed))
                sg_bulkhead_freed(b);
            continue;
        }
        granted(b, lw, mode);
        return (int64_t)(TK_ONE | ((uint64_t)i << 42) | (mine & TW_LOW)) | refresh_due(b, &p, now);
    }
    if (!(mode & SG_BH_QUIET))
        atomic_fetch_add_explicit(&b->rejected, 1, memory_order_relaxed);
    return SG_R_BULKHEAD_FULL;
}

int sg_bulkhead_release_at(void *slot, uint32_t pid, int64_t ticket)
{
    struct sg_slot *s = slot;
    if (!s || ticket <= 0 || !((uint64_t)ticket & TK_ONE))
        return SG_E_ARG;
    uint64_t w = TK_WORD(ticket, pid);
    /* seq_cst: the free word is ordered before our sleepers load (sg_bulkhead_freed()) */
    if (!atomic_compare_exchange_strong_explicit(&s->bulkhead.ticket[TK_INDEX(ticket)], &w, 0, SC,
                                                 memory_order_relaxed))
        return SG_E_NOT_FOUND; /* no longer ours: its lease ended and it was taken */
    return sg_bulkhead_freed(&s->bulkhead);
}

int sg_bulkhead_reclaim(void *slot, uint32_t index, uint64_t expected)
{
    struct sg_slot *s = slot;
    if (!s || index >= SG_MAX_TICKETS || expected == 0)
        return SG_E_ARG;
    /* fails if the word moved: the holder released it, or it was re-granted */
    if (!atomic_compare_exchange_strong_explicit(&s->bulkhead.ticket[index], &expected, 0, SC,
                                                 memory_order_relaxed))
        return SG_E_BUSY;
    atomic_fetch_add_explicit(&s->bulkhead.reclaimed, 1, memory_order_relaxed);
    sg_bulkhead_freed(&s->bulkhead);
    return SG_OK;
}

int sg_bulkhead_set_procs_at(void *slot, uint64_t now, uint32_t procs)
{
    struct sg_slot *s = slot;
    if (!s)
        return SG_E_ARG;
    struct bh_pol p;
    bh_policy(s, &p);
    procs = procs > 0xffffu ? 0xffffu : procs;
    uint64_t lw = atomic_load_explicit(&s->bulkhead.limit, SC);
    uint64_t nw;
    do { /* lw refreshes on failure */
        nw = (wanted(lw, &p, procs, now) & ~0xffffffULL) | ((now >> 20) & 0xffffffULL);
    } while (!atomic_compare_exchange_strong_explicit(&s->bulkhead.limit, &lw, nw, SC, SC));
    if (BL_LIM(nw) > BL_LIM(lw))
        sg_bulkhead_freed(&s->bulkhead); /* more tickets: a sleeper may go */
    return (int)BL_LIM(nw);
}

int sg_bulkhead_sync_at(void *slot, uint64_t now)
{
    struct sg_slot *s = slot;
    if (!s)
        return SG_E_ARG;
    struct bh_pol p;
    bh_policy(s, &p);
    uint64_t lw = atomic_load_explicit(&s->bulkhead.limit, SC), nw;
    do { /* lw refreshes on failure */
        nw = wanted(lw, &p, (lw & BL_VALID) ? BL_PROCS(lw) : 0, now);
    } while (nw != lw &&
             !atomic_compare_exchange_strong_explicit(&s->bulkhead.limit, &lw, nw, SC, SC));
    return (int)BL_LIM(nw);
}

int sg_bulkhead_give_up(void *slot)
{
    struct sg_slot *s = slot;
    if (!s)
        return SG_E_ARG;
    atomic_fetch_add_explicit(&s->bulkhead.rejected, 1, memory_order_relaxed);
    sg_bulkhead_freed(&s->bulkhead); /* pass on a wake-up this waiter may have taken */
    return SG_OK;
}

int sg_bulkhead_snapshot_at(const void *slot, uint64_t now, struct sg_bulkhead_view *out)
{
    struct sg_slot *s = (struct sg_slot *)slot;
    if (!s || !out)
        return SG_E_ARG;
    memset(out, 0, sizeof *out);
    struct sg_bulkhead_area *b = &s->bulkhead;
    struct bh_pol p;
    bh_policy(s, &p);
    uint64_t lw = atomic_load_explicit(&b->limit, memory_order_acquire);
    uint64_t w = wanted(lw, &p, (lw & BL_VALID) ? BL_PROCS(lw) : 0, now);
    out->limit = BL_LIM(w);
    out->reserve = p.reserve >= out->limit ? (out->limit ? out->limit - 1 : 0) : p.reserve;
    out->span = BL_SPAN(w);
    out->quota_ppm = p.quota_ppm;
    out->procs = BL_PROCS(w);
    out->quota_age_ns = (lw & BL_VALID) ? age_ns(BL_STAMP(lw), now) & ((1ULL << 44) - 1) : 0;
    out->ticket_lease_ns = p.lease_ns;
    out->sleepers = LD(&b->sleepers);
    out->wake_seq = LD(&b->wake_seq);
    for (uint32_t i = 0; i < SG_MAX_TICKETS; i++) {
        uint64_t t = LD(&b->ticket[i]);
        out->word[i] = t;
        if (t) {
            out->in_flight++;
            out->holder_pid[i] = TW_PID(t);
            out->held_ns[i] = age_ns(TW_TIME(t), now);
        }
    }
    out->acquired = LD(&b->acquired);
    out->rejected = LD(&b->rejected);
    out->waited = LD(&b->waited);
    out->reclaimed = LD(&b->reclaimed);
    out->peak = LD(&b->peak);
    return SG_OK;
}
