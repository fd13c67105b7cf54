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
        /* one CAS counts and (if stale) rotates; w refreshes on failure */
        if (atomic_compare_exchange_strong_explicit(b, &w, nw, memory_order_relaxed,
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
