/*
 * throttle.c -- client-side adaptive throttling (Google SRE book, "Handling
 * overload"), pooled host-wide.
 *
 * Every process of the host counts into the same time buckets of the slot,
 * so each one decides from the whole host's evidence, not 1/N of it:
 *
 *     p = max(0, (requests - K * accepts) / (requests + 1))
 *
 * over the last throttle_window_ns (SG_THROTTLE_BUCKETS buckets); p is 0
 * while requests < throttle_min_requests. A call is refused locally with
 * probability p; a refused call counts as a request and never as an accept,
 * so throttling fades as soon as the dependency's accepts recover.
 *
 *   requests = outcomes recorded (calls that reached the dependency, not
 *              ignored) + calls throttled here
 *   accepts  = recorded successes (+ failures the caller reports as not
 *              overload-class, sg_throttle_accept)
 * Calls the breaker or the limiter refuse are neither.
 *
 * Randomness: the n-th draw of a slot (n from a shared counter, bumped only
 * while p > 0) uses splitmix64(seed + n), seed = the policy's fingerprint.
 * A run under the manual clock is therefore reproducible, and a healthy
 * endpoint pays for no draw.
 */
#include <string.h>

#include "layout.h"

#define NB SG_THROTTLE_BUCKETS

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

/* One request (and maybe one accept) into the bucket of `now`: count and
 * rotate a stale bucket in one CAS (the breaker window's rule). */
static void count(struct sg_throttle_area *a, uint64_t bucket_ns, uint64_t now, uint64_t req,
                  uint64_t acc)
{
    uint64_t ep = now / bucket_ns;
    sg_a64 *b = &a->bucket[ep % NB];
    uint64_t w = LD(b); /* relaxed: counts carry no other data */
    for (;;) {
        uint64_t nw;
        if (WB_EPOCH(w) == (ep & WB_EMASK)) {
            uint64_t r = WB_HI(w) + req, c = WB_LO(w) + acc;
            nw = WB_MAKE(ep, r > WB_CMAX ? WB_CMAX : r, c > WB_CMAX ? WB_CMAX : c);
        } else {
            nw = WB_MAKE(ep, req, acc);
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

static void sum(const struct sg_throttle_area *ca, uint64_t bucket_ns, uint64_t now, uint64_t *req,
                uint64_t *acc)
{
    struct sg_throttle_area *a = (struct sg_throttle_area *)ca;
    uint64_t cur = now / bucket_ns;
    *req = *acc = 0;
    for (uint64_t i = 0; i < NB && i <= cur; i++) {
        uint64_t e = cur - i, w = LD(&a->bucket[e % NB]);
        if (WB_EPOCH(w) == (e & WB_EMASK)) {
            *req += WB_HI(w);
            *acc += WB_LO(w);
        }
    }
}

/* p = num / den, or 0 (returns 0) while below min_requests or healthy. */
static int chance(const struct thr *t, uint64_t req, uint64_t acc, uint64_t *num, uint64_t *den)
{
    uint64_t r = req * 1000, ka = acc * t->k_milli; /* < 2^26 * 2^32: no overflow */
    if (req < t->min_requests || r <= ka)
        return 0;
    *num = r - ka;
    *den = (req + 1) * 1000;
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
    uint64_t req, acc, num, den;
    sum(&s->throttle, t.bucket_ns, now, &req, &acc);
    if (!chance(&t, req, acc, &num, &den))
        return SG_OK;
    /* relaxed: the counter only has to hand out distinct n */
    uint64_t n = atomic_fetch_add_explicit(&s->throttle.draws, 1, memory_order_relaxed);
    if (splitmix64(t.seed + n) % den >= num)
        return SG_OK;
    count(&s->throttle, t.bucket_ns, now, 1, 0); /* a throttled call is a request */
    atomic_fetch_add_explicit(&s->throttle.throttled, 1, memory_order_relaxed);
    return SG_R_THROTTLED;
}

void sg_throttle_count(struct sg_slot *s, const struct sg_policy_view *p, uint64_t now, int outcome)
{
    struct thr t;
    if (outcome == SG_IGNORE ||
        !thr_from(p->throttle_window_ns, p->fingerprint, p->throttle_k_milli,
                  p->throttle_min_requests, &t))
        return;
    count(&s->throttle, t.bucket_ns, now, 1, outcome == SG_SUCCESS);
}

int sg_throttle_record_at(void *slot, uint64_t now, int outcome)
{
    if (!slot || outcome < SG_SUCCESS || outcome > SG_IGNORE)
        return SG_E_ARG;
    struct sg_policy_view p;
    sg_policy_load(slot, &p);
    sg_throttle_count(slot, &p, now, outcome);
    return SG_OK;
}

int sg_throttle_accept(const struct sg_handle *h)
{
    struct thr t;
    if (!h || !h->slot)
        return SG_E_ARG;
    struct sg_slot *s = h->slot;
    if (thr_load(s, &t))
        count(&s->throttle, t.bucket_ns, sg_now_h(h), 0, 1);
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
    uint64_t num, den;
    out->window_ns = t.bucket_ns * NB;
    out->k_milli = t.k_milli;
    sum(&s->throttle, t.bucket_ns, now, &out->requests, &out->accepts);
    if (chance(&t, out->requests, out->accepts, &num, &den))
        out->probability_ppm = (uint32_t)(num * SG_PPM / den);
    return SG_OK;
}
