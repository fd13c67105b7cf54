/*
 * throttle.c -- client-side adaptive throttling (Google SRE book, "Handling
 * overload"), pooled host-wide.
 *
 * Every process of the host counts into the same time buckets of the slot,
 * so each one decides from the whole host's evidence, not 1/N of it:
 *
 *     p = max(0, (requests - K * accepts) / (requests + 1)) * (NB - working) / NB
 *
 * over the last throttle_window_ns (NB = SG_THROTTLE_BUCKETS buckets); p is 0
 * while requests < throttle_min_requests. A call is refused locally with
 * probability p; a refused call counts as a request and never as an accept.
 *
 *   requests = outcomes recorded (calls that reached the dependency, not
 *              ignored) + calls throttled here
 *   accepts  = recorded successes, and failures the caller reports as not
 *              overload-class (sg_throttle_report, with SG_POL_THROTTLE_ON)
 *   working  = the newest buckets in a row that hold accepts and no
 *              overload-class failure (go-zero's googleBreaker does this)
 * Calls the breaker or the limiter refuse are neither.
 *
 * Recovery. The SRE formula alone recovers slowly: while p is near 1 the
 * throttled calls fill the window with requests, and accepts grow only by
 * the trickle that passes (e-folding time window/2K). Two additions bound it
 * to about one window, as go-zero does: `working` scales p down by one
 * bucket's share per healthy bucket, and while p > 0 one call is let
 * through whenever none passed for a bucket's width (last_pass), so every
 * bucket of a recovered dependency sees an accept.
 *
 * Randomness: the n-th draw of a slot (n from a shared counter, bumped only
 * while p > 0) uses splitmix64(seed + n), seed = the policy's fingerprint.
 * A run under the manual clock is therefore reproducible, and a healthy
 * endpoint pays for no draw and writes no shared word when admitted.
 */
#include <string.h>

#include "layout.h"

#define NB SG_THROTTLE_BUCKETS
/* bucket word: | epoch 19 (63:45) | overload 1 (44) | requests 22 (43:22) | accepts 22 (21:0) | */
#define TB_EMASK ((1ULL << 19) - 1)
#define TB_EPOCH(w) ((w) >> 45)
#define TB_OVER(w) (((w) >> 44) & 1u)
#define TB_MAKE(e, o, r, a) ((((uint64_t)(e) & TB_EMASK) << 45) | ((uint64_t)(o) << 44) | \
                             (((uint64_t)(r) & WB_CMAX) << 22) | ((uint64_t)(a) & WB_CMAX))

struct thr {
    uint64_t bucket_ns, seed;
    uint32_t k_milli, min_requests;
};

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static int thr_from(uint64_t window_ns, uint64_t seed, uint32_t k, uint32_t min_req, struct thr *t)
{
    t->bucket_ns = window_ns / NB ? window_ns / NB : 1; /* untrusted: never divide by 0 */
    t->seed = seed;
    t->k_milli = k;
    t->min_requests = min_req;
    return k != 0;
}

/* The four throttling fields of the live policy (cheaper than a whole
 * sg_policy_load on the admission path); returns 0 when throttling is off. */
static int thr_load(struct sg_slot *s, struct thr *t)
{
    uint64_t win = 0, seed = 0;
    uint32_t k = 0, mr = 0;
    if (!sg_throttle_enabled(s))
        return 0; /* most endpoints stop here */
    for (int tries = 0; tries < 16; tries++) {
        /* A2 (seqlock over the policy buffers, see policy.c). */
        uint64_t seq = atomic_load_explicit(&s->policy_seq, memory_order_acquire);
        struct sg_policy_raw *p = &s->policy[seq & 1];
        k = LD(&p->throttle_k_milli);
        win = LD(&p->throttle_window_ns);
        mr = LD(&p->throttle_min_requests);
        seed = LD(&p->fingerprint);
        atomic_thread_fence(memory_order_acquire);
        if (LD(&s->policy_seq) == seq)
            break;
    }
    return thr_from(win, seed, k, mr, t);
}

/* One request (and maybe one accept, or the overload mark) into the bucket
 * of `now`: count and rotate a stale bucket in one CAS (the window's rule). */
static void count(struct sg_throttle_area *a, uint64_t bucket_ns, uint64_t now, uint64_t req,
                  uint64_t acc, uint64_t over)
{
    uint64_t ep = now / bucket_ns;
    sg_a64 *b = &a->bucket[ep % NB];
    uint64_t w = LD(b); /* relaxed: counts carry no other data */
    for (;;) {
        uint64_t nw;
        if (TB_EPOCH(w) == (ep & TB_EMASK)) {
            uint64_t r = WB_HI(w) + req, c = WB_LO(w) + acc;
            nw = TB_MAKE(ep, TB_OVER(w) | over, r > WB_CMAX ? WB_CMAX : r, c > WB_CMAX ? WB_CMAX : c);
        } else {
            nw = TB_MAKE(ep, over, req, acc);
        }
        /* w refreshes on failure */
        if (atomic_compare_exchange_strong_explicit(b, &w, nw, memory_order_relaxed,
                                                    memory_order_relaxed))
            break;
    }
    /* relaxed: statistics */
    if (req)
        atomic_fetch_add_explicit(&a->requests, req, memory_order_relaxed);
    if (acc)
        atomic_fetch_add_explicit(&a->accepts, acc, memory_order_relaxed);
}

struct tsum {
    uint64_t req, acc;
    uint32_t working;
};

/* Sums the window, newest bucket first (so `working` is the newest run). */
static void sum(const struct sg_throttle_area *ca, uint64_t bucket_ns, uint64_t now, struct tsum *o)
{
    struct sg_throttle_area *a = (struct sg_throttle_area *)ca;
    uint64_t cur = now / bucket_ns, req = 0, acc = 0;
    uint32_t idx = (uint32_t)(cur % NB), working = 0, run = 1;
    for (uint64_t i = 0; i < NB && i <= cur; i++, idx = idx ? idx - 1 : NB - 1) {
        uint64_t w = LD(&a->bucket[idx]);
        if (TB_EPOCH(w) != ((cur - i) & TB_EMASK))
            continue; /* empty: neither breaks nor extends the run */
        req += WB_HI(w);
        acc += WB_LO(w);
        run &= !TB_OVER(w);
        working += run & (WB_LO(w) != 0);
    }
    o->req = req;
    o->acc = acc;
    o->working = working;
}

/* p = num / den; returns 0 (p = 0) below min_requests or when healthy. */
static int chance(const struct thr *t, const struct tsum *m, uint64_t *num, uint64_t *den)
{
    uint64_t r = m->req * 1000, ka = m->acc * t->k_milli; /* < 2^26 * 2^32: no overflow */
    if (m->req < t->min_requests || r <= ka || m->working >= NB)
        return 0;
    *num = (r - ka) * (NB - m->working);
    *den = (m->req + 1) * 1000 * NB;
    return 1;
}

int sg_throttle_decide_at(void *slot, uint64_t now)
{
    struct sg_slot *s = slot;
    struct thr t;
    if (!s)
        return SG_E_ARG;
    if (!thr_load(s, &t))
        return SG_OK;
    struct tsum m;
    uint64_t num, den;
    sum(&s->throttle, t.bucket_ns, now, &m);
    if (!chance(&t, &m, &num, &den))
        return SG_OK;
    /* relaxed: last_pass only paces the forced passes; any value is valid */
    uint64_t lp = LD(&s->throttle.last_pass);
    if ((lp > now || now - lp >= t.bucket_ns) &&
        atomic_compare_exchange_strong_explicit(&s->throttle.last_pass, &lp, now,
                                                memory_order_relaxed, memory_order_relaxed))
        return SG_OK; /* nothing passed for a bucket's width: this one goes */
    /* relaxed: the counter only has to hand out distinct n */
    uint64_t n = atomic_fetch_add_explicit(&s->throttle.draws, 1, memory_order_relaxed);
    if (splitmix64(t.seed + n) % den >= num) {
        ST(&s->throttle.last_pass, now);
        return SG_OK;
    }
    count(&s->throttle, t.bucket_ns, now, 1, 0, 0); /* a throttled call is a request */
    atomic_fetch_add_explicit(&s->throttle.throttled, 1, memory_order_relaxed);
    return SG_R_THROTTLED;
}

void sg_throttle_count(struct sg_slot *s, const struct sg_policy_view *p, uint64_t now, int outcome)
{
    struct thr t;
    if (outcome == SG_IGNORE || (outcome == SG_FAILURE && (p->flags & SG_POL_THROTTLE_ON)) ||
        !thr_from(p->throttle_window_ns, p->fingerprint, p->throttle_k_milli,
                  p->throttle_min_requests, &t))
        return; /* with SG_POL_THROTTLE_ON the caller reports failures itself */
    count(&s->throttle, t.bucket_ns, now, 1, outcome == SG_SUCCESS, outcome == SG_FAILURE);
}

/* A manual reset (sg_breaker_force_at CLOSED) forgets the window; totals stay.
 * Relaxed stores: a count racing the reset may land in a zeroed bucket or be
 * lost, either is a valid window. */
void sg_throttle_reset(struct sg_slot *s)
{
    for (int i = 0; i < NB; i++)
        ST(&s->throttle.bucket[i], 0);
    ST(&s->throttle.last_pass, 0);
}

int sg_throttle_record_at(void *slot, uint64_t now, int outcome)
{
    if (!slot || outcome < SG_SUCCESS || outcome > SG_IGNORE)
        return SG_E_ARG;
    struct sg_policy_view p;
    sg_policy_load(slot, &p);
    p.flags &= ~(uint32_t)SG_POL_THROTTLE_ON; /* an explicit outcome: count it */
    sg_throttle_count(slot, &p, now, outcome);
    return SG_OK;
}

int sg_throttle_report(const struct sg_handle *h, int overload)
{
    struct thr t;
    if (!h)
        return SG_E_ARG;
    struct sg_slot *s = sg_hslot(h);
    if (s == NULL)
        return SG_E_GONE;
    if (thr_load(s, &t))
        count(&s->throttle, t.bucket_ns, sg_now_h(h), 1, !overload, overload != 0);
    return SG_OK;
}

int sg_throttle_snapshot_at(const void *slot, uint64_t now, struct sg_throttle_view *out)
{
    struct sg_slot *s = (struct sg_slot *)slot;
    struct thr t;
    if (!s || !out)
        return SG_E_ARG;
    memset(out, 0, sizeof *out);
    out->requests_total = LD(&s->throttle.requests);
    out->accepts_total = LD(&s->throttle.accepts);
    out->throttled_total = LD(&s->throttle.throttled);
    if (!thr_load(s, &t))
        return SG_OK;
    struct tsum m;
    uint64_t num, den;
    out->window_ns = t.bucket_ns * NB;
    out->k_milli = t.k_milli;
    sum(&s->throttle, t.bucket_ns, now, &m);
    out->requests = m.req;
    out->accepts = m.acc;
    out->working = m.working;
    if (chance(&t, &m, &num, &den))
        out->probability_ppm = (uint32_t)(num * SG_PPM / den); /* num < 2^39: no overflow */
    return SG_OK;
}
