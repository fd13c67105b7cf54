/*
 * budget.c -- the host-wide retry budget (line 27 of a slot).
 *
 * Finagle's RetryBudget (ttl, minRetriesPerSec, percentCanRetry) and
 * Envoy's retry budgets cap retries as a share of traffic, per process or
 * per proxy. Here the counts live in the slot, so the cap holds for every
 * process of the host together: over the window,
 *     retries <= ratio x first attempts + min_per_second x window.
 *
 * The window is SG_BUDGET_BUCKETS time buckets, each ONE word
 * [epoch | attempts | retries] (the breaker window's format, WB_* in
 * layout.h), so counting and rotating a stale bucket happen in one CAS.
 * Attempts are every admitted call (sg_admit deposits them while a budget is
 * set), retries the withdrawals granted here; first attempts are their
 * difference. A withdrawal sums the buckets, decides, and CASes the current
 * bucket: an older bucket of the window is written only by a process whose
 * clock has reached a later epoch (it rotates it), and then it has left this
 * decision's window as well; so the CAS on the current word validates the
 * sum, up to the window sliding by one bucket. A process killed anywhere
 * leaves valid words (a grant killed before its total is counted is in the
 * bucket, not in retries_total).
 *
 * Totals (retries granted, retries denied) are counted even without a
 * budget, so `stats()` shows retries made by execute(retries=N) anyway.
 */
#include <string.h>

#include "layout.h"

/* The policy's retry window, read without the seqlock: deposits only ask
 * "is a budget set, and how long are its buckets"; a torn read during a
 * republish makes one deposit land in the other window's bucket, which
 * ages out with it. Relaxed: the value carries no other data. */
static uint64_t window_ns(struct sg_slot *s)
{
    uint64_t seq = LD(&s->policy_seq);
    return LD(&s->policy[seq & 1].retry_window_ns);
}

static uint64_t bucket_ns(uint64_t window)
{
    uint64_t b = window / SG_BUDGET_BUCKETS;
    return b ? b : 1; /* untrusted slot: never divide by 0 */
}

/* Counts one attempt into the bucket of `epoch`. */
static void deposit(struct sg_budget_area *a, uint64_t epoch)
{
    sg_a64 *b = &a->bucket[epoch % SG_BUDGET_BUCKETS];
    uint64_t e = epoch & WB_EMASK;
    uint64_t w = LD(b); /* relaxed: counts carry no other data */
    for (;;) {
        uint64_t nw;
        if (WB_EPOCH(w) == e) {
            uint64_t h = WB_HI(w) + 1;
            nw = WB_MAKE(e, h > WB_CMAX ? WB_CMAX : h, WB_LO(w)); /* saturates */
        } else {
            nw = WB_MAKE(e, 1, 0);
        }
        /* one CAS counts and (if stale) rotates; w refreshes on failure */
        if (atomic_compare_exchange_strong_explicit(b, &w, nw, memory_order_relaxed,
                                                    memory_order_relaxed))
            return;
    }
}

void sg_budget_admitted(struct sg_slot *s, uint64_t now)
{
    uint64_t win = window_ns(s);
    if (win == 0)
        return; /* no budget: the admission path pays one load and a branch */
    deposit(&s->budget, now / bucket_ns(win));
}

int sg_budget_deposit_at(void *slot, uint64_t now_ns)
{
    if (!slot)
        return SG_E_ARG;
    sg_budget_admitted(slot, now_ns);
    return SG_OK;
}

/* Sums the buckets of the window ending at `epoch`, the current one given
 * as the word `w` read by the caller (so a CAS on it validates the sum). */
static void window_sum(struct sg_budget_area *a, uint64_t epoch, uint64_t w, uint64_t *att,
                       uint64_t *ret)
{
    *att = *ret = 0;
    for (uint64_t k = 0; k < SG_BUDGET_BUCKETS && k <= epoch; k++) {
        uint64_t e = epoch - k;
        /* relaxed: older buckets change only when they become current again,
         * at a later epoch than this decision's */
        uint64_t bw = k ? LD(&a->bucket[e % SG_BUDGET_BUCKETS]) : w;
        if (WB_EPOCH(bw) == (e & WB_EMASK)) {
            *att += WB_HI(bw);
            *ret += WB_LO(bw);
        }
    }
}

/* Retries the window allows: ratio x first attempts + min x window. */
static uint64_t allowed(const struct sg_policy_view *p, uint64_t att, uint64_t ret)
{
    uint64_t first = att > ret ? att - ret : 0;
    uint64_t by_ratio = sg_mul_ppm(first, p->retry_ratio_ppm);
    /* retry_min_milli is per 1000 s: window_ns x milli / 1e12 */
    uint64_t by_min = sg_mul_ppm(p->retry_window_ns, p->retry_min_milli) / SG_PPM;
    return sg_sat_add(by_ratio, by_min);
}

int sg_budget_withdraw_at(void *slot, uint64_t now)
{
    struct sg_slot *s = slot;
    if (!s)
        return SG_E_ARG;
    struct sg_policy_view p;
    sg_policy_load(s, &p);
    struct sg_budget_area *a = &s->budget;
    if (p.retry_window_ns == 0) {
        atomic_fetch_add_explicit(&a->retries_total, 1, memory_order_relaxed);
        return SG_OK; /* no budget: every retry is granted, and counted */
    }
    uint64_t epoch = now / bucket_ns(p.retry_window_ns), e = epoch & WB_EMASK;
    sg_a64 *cur = &a->bucket[epoch % SG_BUDGET_BUCKETS];
    uint64_t w = LD(cur); /* relaxed: counts carry no other data */
    for (;;) {
        uint64_t att, ret;
        window_sum(a, epoch, w, &att, &ret);
        if (ret + 1 > allowed(&p, att, ret)) {
            atomic_fetch_add_explicit(&a->denied_total, 1, memory_order_relaxed);
            return SG_R_RETRY_BUDGET;
        }
        uint64_t l = WB_EPOCH(w) == e ? WB_LO(w) + 1 : 1;
        uint64_t nw = WB_MAKE(e, WB_EPOCH(w) == e ? WB_HI(w) : 0, l > WB_CMAX ? WB_CMAX : l);
        /* one CAS grants the retry; a deposit or withdrawal that raced us
         * changed the word: w refreshes and we decide again on the new sum */
        if (atomic_compare_exchange_strong_explicit(cur, &w, nw, memory_order_relaxed,
                                                    memory_order_relaxed))
            break;
    }
    atomic_fetch_add_explicit(&a->retries_total, 1, memory_order_relaxed);
    return SG_OK;
}

int sg_budget_snapshot_at(const void *slot, uint64_t now, struct sg_budget_view *out)
{
    struct sg_slot *s = (struct sg_slot *)slot;
    if (!s || !out)
        return SG_E_ARG;
    memset(out, 0, sizeof *out);
    struct sg_policy_view p;
    sg_policy_load(s, &p);
    struct sg_budget_area *a = &s->budget;
    out->retries_total = LD(&a->retries_total);
    out->denied_total = LD(&a->denied_total);
    out->window_ns = p.retry_window_ns;
    if (p.retry_window_ns == 0)
        return SG_OK;
    uint64_t epoch = now / bucket_ns(p.retry_window_ns);
    window_sum(a, epoch, LD(&a->bucket[epoch % SG_BUDGET_BUCKETS]), &out->attempts,
               &out->retries);
    out->allowed = allowed(&p, out->attempts, out->retries);
    return SG_OK;
}

int sg_budget_withdraw(const struct sg_handle *h)
{
    struct sg_slot *s = sg_hslot(h);
    return s ? sg_budget_withdraw_at(s, sg_now_h(h)) : SG_E_GONE;
}
