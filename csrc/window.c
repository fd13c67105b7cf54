/*
 * window.c -- the breaker's rolling window: K time buckets, each ONE word
 * [epoch | failures | successes] (and a twin [epoch | slow | ignored]), so
 * counting and rotating a stale bucket happen in one CAS (rule).
 *
 * Buckets older than the window, or from before the current state began
 * (the time in the breaker word, passed in as since_ns), are not counted:
 * the floor is derived from the word, so a close and its "forget the old
 * window" are one CAS, and a closer killed right after it leaves no stale
 * window behind. On rotation the finished bucket's failure ratio feeds a
 * long-horizon baseline (EWMA, 1/16) used by the adaptive threshold.
 *
 * A bucket keeps only 20 bits of its epoch, so a bucket untouched for 2^20
 * epochs would alias back into the window. The slot's `wepoch` word holds
 * the newest epoch in full; a bump into a newer epoch first sweeps the
 * counts of every bucket that falls out of the window (one sweep per
 * bucket period), and only then advances `wepoch`. So a bucket with counts
 * is never older than the window before `wepoch`, and its 20 bits name its
 * epoch without ambiguity. A sweeper killed before the advance leaves the
 * sweep to the next caller.
 */
#include "layout.h"

static void fold_baseline(struct sg_slot *s, uint64_t old)
{
    uint64_t f = WB_HI(old), ok = WB_LO(old), n = f + ok;
    if (n == 0)
        return;
    int64_t ratio = (int64_t)(f * SG_PPM / n);
    uint64_t b = LD(&s->baseline_ppm);
    for (;;) {
        int64_t cur = b > SG_PPM ? SG_PPM : (int64_t)b; /* untrusted word */
        uint64_t nb = (uint64_t)(cur + (ratio - cur) / 16);
        /* relaxed: a statistic read only by the threshold; b refreshes */
        if (atomic_compare_exchange_strong_explicit(&s->baseline_ppm, &b, nb,
                                                    memory_order_relaxed, memory_order_relaxed))
            return;
    }
}

/* Zero the counts of the buckets of `arr` that are out of the window at
 * epoch ep, judged against wepoch == n (every bucket with counts was
 * written at an epoch <= n, and after n - 2^20). Returns 0 if wepoch moved
 * meanwhile (the caller re-reads it): a bucket newer than n is never taken
 * for an old one. */
static int sweep(struct sg_slot *s, sg_a64 *arr, uint32_t nb, uint64_t n, uint64_t ep, int all,
                 int fold)
{
    for (uint32_t i = 0; i < nb; i++) {
        /* acquire: pairs with the release of bump()'s CAS (R5), so a bucket
         * written after a newer advance shows that advance below */
        uint64_t w = atomic_load_explicit(&arr[i], memory_order_acquire);
        if ((WB_HI(w) | WB_LO(w)) == 0)
            continue;
        if (atomic_load_explicit(&s->wepoch, memory_order_acquire) != n)
            return 0;
        uint64_t age = (n - WB_EPOCH(w)) & WB_EMASK; /* epochs since it was written */
        if (!all && age <= n && n - age + nb > ep)
            continue; /* still in the window at ep */
        /* relaxed: a count; fails harmlessly if the bucket moved on */
        if (atomic_compare_exchange_strong_explicit(&arr[i], &w, WB_MAKE(WB_EPOCH(w), 0, 0),
                                                    memory_order_relaxed, memory_order_relaxed) &&
            fold)
            fold_baseline(s, w);
    }
    return 1;
}

/* Move wepoch on to ep, sweeping first. A jump backwards by more than a
 * window (a policy with longer buckets) empties the window. */
static void advance(struct sg_slot *s, const struct sg_policy_view *p, uint64_t ep, uint64_t n)
{
    int fold = (p->flags & SG_POL_ADAPTIVE) != 0;
    for (;;) {
        int all = n > ep;
        if (sweep(s, s->bucket, p->buckets, n, ep, all, fold) &&
            sweep(s, s->slow, p->buckets, n, ep, all, 0) &&
            /* acq_rel: the sweep precedes the advance; n refreshes */
            atomic_compare_exchange_strong_explicit(&s->wepoch, &n, ep, memory_order_acq_rel,
                                                    memory_order_acquire))
            return;
        n = atomic_load_explicit(&s->wepoch, memory_order_acquire);
        if (!(ep > n || n - ep > p->buckets))
            return; /* someone else advanced far enough */
    }
}

/* Count one outcome into the bucket of `now`. hi/lo: increments of the two
 * count fields (0 or 1). Returns nothing: statistics never fail. */
static void bump(struct sg_slot *s, sg_a64 *arr, uint64_t abs_epoch, uint32_t nb, int hi, int lo,
                 int fold)
{
    sg_a64 *b = &arr[abs_epoch % nb];
    uint64_t e = abs_epoch & WB_EMASK;
    uint64_t w = LD(b); /* relaxed: counts carry no other data */
    for (;;) {
        uint64_t nw;
        int rotated = WB_EPOCH(w) != e;
        if (!rotated) {
            uint64_t h = WB_HI(w) + (uint64_t)hi, l = WB_LO(w) + (uint64_t)lo;
            nw = WB_MAKE(e, h > WB_CMAX ? WB_CMAX : h, l > WB_CMAX ? WB_CMAX : l);
        } else {
            nw = WB_MAKE(e, hi, lo);
        }
        /* one CAS counts and (if stale) rotates; w refreshes on failure.
         * R5: release pairs with sweep()'s acquire. */
        if (atomic_compare_exchange_strong_explicit(b, &w, nw, memory_order_release,
                                                    memory_order_relaxed)) {
            if (rotated && fold)
                fold_baseline(s, w);
            return;
        }
    }
}

void sg_window_add(struct sg_slot *s, const struct sg_policy_view *p, uint64_t now, int outcome,
                   int slow)
{
    uint64_t ep = now / p->bucket_ns;
    /* acquire: pairs with advance()'s CAS; same cache line as the breaker
     * word, so this costs one compare on the hot path */
    uint64_t n = atomic_load_explicit(&s->wepoch, memory_order_acquire);
    if (ep > n || n - ep > p->buckets)
        advance(s, p, ep, n);
    if (outcome == SG_IGNORE) {
        bump(s, s->slow, ep, p->buckets, 0, 1, 0);
        return;
    }
    bump(s, s->bucket, ep, p->buckets, outcome == SG_FAILURE, outcome == SG_SUCCESS,
         (p->flags & SG_POL_ADAPTIVE) != 0);
    if (slow)
        bump(s, s->slow, ep, p->buckets, 1, 0, 0);
}

void sg_window_sum(const struct sg_slot *cs, const struct sg_policy_view *p, uint64_t now,
                   uint64_t since_ns, struct sg_window_sum *out)
{
    struct sg_slot *s = (struct sg_slot *)cs;
    uint32_t nb = p->buckets;
    uint64_t cur = now / p->bucket_ns, floor = since_ns / p->bucket_ns;
    uint32_t cm = (uint32_t)(cur % nb);
    out->failures = out->successes = out->slow = 0;
    for (uint32_t i = 0; i < nb; i++) {
        /* bucket i holds the newest epoch e <= cur with e % nb == i */
        uint64_t e = cur - (cm >= i ? cm - i : cm + nb - i);
        if (e < floor || e > cur)
            continue;
        uint64_t w = LD(&s->bucket[i]);
        if (WB_EPOCH(w) == (e & WB_EMASK)) {
            out->failures += WB_HI(w);
            out->successes += WB_LO(w);
        }
        if (p->slow_call_ns) {
            uint64_t sw = LD(&s->slow[i]);
            if (WB_EPOCH(sw) == (e & WB_EMASK))
                out->slow += WB_HI(sw);
        }
    }
}

/* After a close: the floor (from the word) already drops earlier buckets;
 * empty the current one too, which may hold calls from before the open.
 * Best effort: a closer killed before this store leaves at most that one
 * bucket's old counts, which age out with it. */
void sg_window_reset(struct sg_slot *s, const struct sg_policy_view *p, uint64_t now)
{
    uint64_t cur = now / p->bucket_ns;
    ST(&s->bucket[cur % p->buckets], WB_MAKE(cur, 0, 0));
    ST(&s->slow[cur % p->buckets], WB_MAKE(cur, 0, 0));
}

uint32_t sg_window_threshold(const struct sg_slot *s, const struct sg_policy_view *p)
{
    if (!(p->flags & SG_POL_ADAPTIVE))
        return p->failure_ppm;
    uint64_t b = LD(&((struct sg_slot *)s)->baseline_ppm);
    uint64_t t = (b > SG_PPM ? SG_PPM : b) + p->failure_ppm;
    uint64_t hi = p->adaptive_max_ppm > p->failure_ppm ? p->adaptive_max_ppm : p->failure_ppm;
    return (uint32_t)(t > hi ? hi : t);
}
