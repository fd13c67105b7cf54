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
 * wakes ONE sleeper, only when `sleepers` says someone sleeps.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#endif

#include "layout.h"

#define SC memory_order_seq_cst
#define LW_VALID (1ULL << 63)
#define LW_SEQ(w) ((uint32_t)((w) >> 56) & 0x7fu)
#define LW_SPAN(w) ((uint32_t)((w) >> 48) & 0xffu)
#define LW_LIM(w) ((uint32_t)((w) >> 40) & 0xffu)
#define LW_PROCS(w) ((uint32_t)((w) >> 24) & 0xffffu)
#define LW_STAMP(w) ((uint32_t)(w) & 0xffffffu)
#define LW_SHAPE (0xffffULL << 48 | 0xffULL << 40) /* valid, seq, span, limit */
#define LW_MAKE(seq, span, lim, procs, now)                                                       \
    (LW_VALID | ((uint64_t)((seq) & 0x7fu) << 56) | ((uint64_t)((span) & 0xffu) << 48) |        \
     ((uint64_t)((lim) & 0xffu) << 40) | ((uint64_t)((procs) & 0xffffu) << 24) |                \
     (((now) >> 20) & 0xffffffULL))
#define TW_PID(w) ((uint32_t)((w) >> 42))
#define TW_TIME(w) ((uint32_t)(w))
#define TW_LOW 0x3ffffffffffULL /* generation 10 | grant time 32 */
/* token (int64 > 0): | refresh 1 (49) | one 1 (48) | index 6 (47:42) | gen 10 | time 32 | */
#define TK_ONE (1ULL << 48)
#define TK_INDEX(t) ((uint32_t)(((uint64_t)(t) >> 42) & 0x3fu))
#define TK_WORD(t, pid) (((uint64_t)((pid) & 0x3fffffu) << 42) | ((uint64_t)(t) & TW_LOW))

struct bh_pol {
    uint32_t n, reserve, quota_ppm, seq7;
    uint64_t lease_ns;
};

static _Atomic uint32_t cached_pid, generation;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void forget_pid(void) { atomic_store_explicit(&cached_pid, 0, memory_order_relaxed); }
static void watch_forks(void) { pthread_atfork(NULL, NULL, forget_pid); }

/* getpid() is a system call in glibc >= 2.25: cache it, forgotten in fork children. */
static uint32_t my_pid(void)
{
    uint32_t p = atomic_load_explicit(&cached_pid, memory_order_relaxed);
    if (p == 0) {
        pthread_once(&atfork_once, watch_forks);
        p = (uint32_t)getpid();
        atomic_store_explicit(&cached_pid, p, memory_order_relaxed);
    }
    return p;
}

#ifdef __linux__
/* The mapping is shared between processes: no FUTEX_PRIVATE_FLAG (the futex
 * key is then the page, not this process's address space). */
static int futex_wait(sg_a32 *w, uint32_t val, uint64_t ns)
{
    if (ns > 3600ULL * 1000000000ULL)
        ns = 3600ULL * 1000000000ULL;
    struct timespec ts = {(time_t)(ns / 1000000000ULL), (long)(ns % 1000000000ULL)};
    return (int)syscall(SYS_futex, (uint32_t *)w, FUTEX_WAIT, val, &ts, NULL, 0);
}
static int futex_wake(sg_a32 *w, int n)
{
    long r = syscall(SYS_futex, (uint32_t *)w, FUTEX_WAKE, n, NULL, NULL, 0);
    return r < 0 ? 0 : (int)r;
}
#else /* no futex: sleep the slice (the caller retries) */
static int futex_wait(sg_a32 *w, uint32_t val, uint64_t ns)
{
    (void)w, (void)val;
    struct timespec ts = {(time_t)(ns / 1000000000ULL), (long)(ns % 1000000000ULL)};
    nanosleep(&ts, NULL);
    return -1;
}
static int futex_wake(sg_a32 *w, int n) { return (void)w, (void)n, 0; }
#endif

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
    int valid = (lw & LW_VALID) != 0;
    uint32_t lim = p->n ? p->n : p->quota_ppm ? quota_limit(p->quota_ppm, procs) : 0;
    uint32_t span = max3(valid ? LW_SPAN(lw) : 0, valid ? LW_LIM(lw) : 0, lim);
    uint64_t w = LW_MAKE(p->seq7, span > SG_MAX_TICKETS ? SG_MAX_TICKETS : span, lim, procs, now);
    return valid ? (w & ~0xffffffULL) | LW_STAMP(lw) : w & ~0xffffffULL; /* keep the stamp */
}

static uint64_t age_ns(uint32_t then_u, uint64_t now)
{
    return (uint64_t)((uint32_t)(now >> 20) - then_u) << 20; /* serial, 2^20 ns units */
}

static int expired(uint64_t w, uint64_t now, uint64_t lease_ns)
{
    return lease_ns && age_ns(TW_TIME(w), now) >= lease_ns;
}

/* A ticket went back to 0: wake ONE sleeper, if any sleeps. seq_cst pairs
 * with the waiter's sleepers increment before its try (sg_bulkhead_wait):
 * either it sees the free word, or we see it counted and bump wake_seq. */
static int freed(struct sg_bulkhead_area *b)
{
    if (atomic_load_explicit(&b->sleepers, SC) == 0)
        return 0;
    atomic_fetch_add_explicit(&b->wake_seq, 1, SC);
    return futex_wake(&b->wake_seq, 1);
}

/* Words [limit, span) may still be held after a shrink: close the span once
 * none is (then retry), else report 0 (no ticket until they are back). */
static int drain(struct sg_bulkhead_area *b, uint64_t lw, uint64_t now, uint64_t lease_ns)
{
    for (uint32_t i = LW_LIM(lw); i < LW_SPAN(lw) && i < SG_MAX_TICKETS; i++) {
        uint64_t w = atomic_load_explicit(&b->ticket[i], SC);
        if (w && !expired(w, now, lease_ns))
            return 0;
    }
    uint64_t nw = (lw & ~(0xffULL << 48)) | ((uint64_t)LW_LIM(lw) << 48);
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
    uint32_t n = 0, end = LW_SPAN(lw) > LW_LIM(lw) ? LW_SPAN(lw) : LW_LIM(lw);
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
    if (!p->quota_ppm || (uint64_t)((((uint32_t)(now >> 20)) - LW_STAMP(lw)) & 0xffffffu) << 20 <
                             SG_BH_REFRESH_NS)
        return 0;
    uint64_t nw = (lw & ~0xffffffULL) | ((now >> 20) & 0xffffffULL);
    /* relaxed: an election only; whoever wins counts, lw refreshes on loss */
    return atomic_compare_exchange_strong_explicit(&b->limit, &lw, nw, memory_order_relaxed,
                                                   memory_order_relaxed) ? (int64_t)SG_BH_REFRESH : 0;
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
                    ((uint64_t)(atomic_fetch_add_explicit(&generation, 1, memory_order_relaxed) &
                                0x3ffu) << 32) | ((now >> 20) & 0xffffffffULL);
    for (int round = 0; round < 8; round++) {
        uint64_t lw = atomic_load_explicit(&b->limit, SC);
        uint64_t want = wanted(lw, &p, (lw & LW_VALID) ? LW_PROCS(lw) : 0, now);
        if (want != lw) { /* follow the policy first; lw refreshes on failure */
            atomic_compare_exchange_strong_explicit(&b->limit, &lw, want, SC, SC);
            continue;
        }
        if (LW_LIM(lw) == 0)
            return 0; /* no bulkhead */
        if (LW_SPAN(lw) > LW_LIM(lw)) {
            if (!drain(b, lw, now, p.lease_ns))
                break;
            continue;
        }
        uint32_t i;
        if (!take(b, LW_LIM(lw), p.reserve, mode & 3, mine, now, p.lease_ns, &i))
            break;
        /* Validate after winning (rule): the limit we granted under must still
         * be the limit. If it moved, undo before anyone ran with the ticket. */
        if ((atomic_load_explicit(&b->limit, SC) ^ lw) & LW_SHAPE) {
            uint64_t w = mine;
            if (atomic_compare_exchange_strong_explicit(&b->ticket[i], &w, 0, SC,
                                                        memory_order_relaxed))
                freed(b);
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
    /* seq_cst: the free word is ordered before our sleepers load (freed()) */
    if (!atomic_compare_exchange_strong_explicit(&s->bulkhead.ticket[TK_INDEX(ticket)], &w, 0, SC,
                                                 memory_order_relaxed))
        return SG_E_NOT_FOUND; /* no longer ours: its lease ended and it was taken */
    return freed(&s->bulkhead);
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
    freed(&s->bulkhead);
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
    if (LW_LIM(nw) > LW_LIM(lw))
        freed(&s->bulkhead); /* more tickets: a sleeper may go */
    return (int)LW_LIM(nw);
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
        nw = wanted(lw, &p, (lw & LW_VALID) ? LW_PROCS(lw) : 0, now);
    } while (nw != lw &&
             !atomic_compare_exchange_strong_explicit(&s->bulkhead.limit, &lw, nw, SC, SC));
    return (int)LW_LIM(nw);
}

int sg_bulkhead_give_up(void *slot)
{
    struct sg_slot *s = slot;
    if (!s)
        return SG_E_ARG;
    atomic_fetch_add_explicit(&s->bulkhead.rejected, 1, memory_order_relaxed);
    freed(&s->bulkhead); /* pass on a wake-up this waiter may have taken */
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
    uint64_t w = wanted(lw, &p, (lw & LW_VALID) ? LW_PROCS(lw) : 0, now);
    out->limit = LW_LIM(w);
    out->reserve = p.reserve >= out->limit ? (out->limit ? out->limit - 1 : 0) : p.reserve;
    out->span = LW_SPAN(w);
    out->quota_ppm = p.quota_ppm;
    out->procs = LW_PROCS(w);
    out->quota_age_ns = (lw & LW_VALID) ? age_ns(LW_STAMP(lw), now) & ((1ULL << 44) - 1) : 0;
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

/* ---- handle forms: the clock and this process's pid ------------------------ */

int64_t sg_bulkhead_acquire(const struct sg_handle *h, uint32_t mode)
{
    struct sg_slot *s = h->slot;
    /* Fast "no bulkhead": a limit word synced to the live policy, limit 0.
     * relaxed: a call racing a policy publish may decide under either one. */
    uint64_t lw = atomic_load_explicit(&s->bulkhead.limit, memory_order_relaxed);
    if ((lw & LW_VALID) && LW_LIM(lw) == 0 && LW_SEQ(lw) == (LD(&s->policy_seq) & 0x7fu))
        return 0;
    return sg_bulkhead_acquire_at(s, sg_now_h(h), my_pid(), mode);
}

int sg_bulkhead_release(const struct sg_handle *h, int64_t ticket)
{
    return ticket == 0 ? SG_OK : sg_bulkhead_release_at(h->slot, my_pid(), ticket);
}

/* One slice of a wait: count ourselves a sleeper BEFORE trying (see freed()),
 * try, and if every ticket is out sleep until a release or the slice ends.
 * After a wake-up it tries once more. timeout 0: one try, no sleep. Returns
 * the token (also written to out[0] before returning, so a caller
 * interrupted right after the call still finds it and gives it back) or
 * SG_R_BULKHEAD_FULL; out[1] = 1 if a release woke us. */
int64_t sg_bulkhead_wait(const struct sg_handle *h, uint32_t mode, uint64_t timeout_ns,
                         int64_t *out)
{
    struct sg_bulkhead_area *b = &((struct sg_slot *)h->slot)->bulkhead;
    out[0] = out[1] = 0;
    if (timeout_ns == 0)
        return out[0] = sg_bulkhead_acquire(h, mode);
    atomic_fetch_add_explicit(&b->sleepers, 1, SC);
    uint32_t seq = atomic_load_explicit(&b->wake_seq, SC);
    int64_t t = sg_bulkhead_acquire_at(h->slot, sg_now_h(h), my_pid(), mode | SG_BH_QUIET);
    if (t == SG_R_BULKHEAD_FULL) {
        out[1] = futex_wait(&b->wake_seq, seq, timeout_ns) == 0;
        if (out[1] || atomic_load_explicit(&b->wake_seq, SC) != seq) /* a release: try again */
            t = sg_bulkhead_acquire_at(h->slot, sg_now_h(h), my_pid(), mode | SG_BH_QUIET);
    }
    atomic_fetch_sub_explicit(&b->sleepers, 1, SC);
    return out[0] = t;
}
