/*
 * gcra.c -- the rate limiter: GCRA on ONE atomic theoretical arrival time.
 *
 * With emission interval T (= 1/rate) and tolerance tau (= burst * T, scaled
 * by the priority's share), a request of cost c at time now conforms if
 *     max(TAT, now) + c*T - now <= tau
 * and then TAT becomes max(TAT, now) + c*T, by one CAS (rule: lock-free, no
 * read-modify-write of two words). A waiter that can be served within its
 * budget reserves by the same CAS and is told the exact delay.
 *
 * Priorities are tolerances: LOW and NORMAL see part of the burst, HIGH all
 * of it, CRITICAL a bounded extra share ("bypass when possible").
 */
#include <string.h>

#include "layout.h"

struct lim {
    uint64_t T;    /* effective emission interval (after adaptive scale) */
    uint64_t tol;  /* tolerance for the asked priority */
    uint32_t flags;
};

static uint32_t scale_now(struct sg_slot *s, uint64_t now, uint64_t recovery_ns, uint32_t *target)
{
    /* relaxed: the scale is a rate hint; every value of the word is valid. */
    uint64_t w = LD(&s->scale);
    if (w == 0) {
        if (target) *target = SG_PPM;
        return SG_PPM;
    }
    uint32_t from = RS_FROM(w), to = RS_TO(w);
    if (from < 1) from = 1;
    if (to < 1) to = 1;
    if (from > SG_PPM) from = SG_PPM;
    if (to > SG_PPM) to = SG_PPM;
    if (target) *target = to;
    if (to <= from)
        return to;
    uint64_t el = (uint64_t)((((uint32_t)(now >> RS_TSHIFT)) - RS_TIME(w)) & 0xffffffu) << RS_TSHIFT;
    if (recovery_ns == 0 || el >= recovery_ns)
        return to;
    return from + (uint32_t)(((uint64_t)(to - from) * el) / recovery_ns);
}

static void lim_load(struct sg_slot *s, uint64_t now, uint32_t prio, struct lim *out)
{
    uint64_t T, rec;
    uint32_t burst, share, flags;
    for (int tries = 0; tries < 16; tries++) {
        /* A2 (seqlock over the policy buffers, see policy.c). */
        uint64_t seq = atomic_load_explicit(&s->policy_seq, memory_order_acquire);
        struct sg_policy_raw *p = &s->policy[seq & 1];
        T = LD(&p->emission_ns);
        rec = LD(&p->recovery_ns);
        burst = LD(&p->burst);
        share = LD(&p->share_ppm[prio & 3]);
        flags = LD(&p->flags);
        atomic_thread_fence(memory_order_acquire);
        if (LD(&s->policy_seq) == seq)
            break;
    }
    if (T < 1) T = 1;      /* untrusted slot: never divide by or loop on 0 */
    if (burst < 1) burst = 1;
    if (share > 4 * SG_PPM) share = 4 * SG_PPM;
    uint32_t sc = scale_now(s, now, rec, NULL);
    if (sc != SG_PPM)
        T = sg_mul_ppm(T, (uint64_t)SG_PPM * SG_PPM / sc);
    out->T = T;
    uint64_t tol = sg_mul_ppm(sg_sat_mul(T, burst), share);
    out->tol = tol < T ? T : tol; /* every priority may take one token */
    out->flags = flags;
}

static void stat_window(struct sg_slot *s, uint64_t now, int accepted)
{
    uint64_t sec = now / LW_NS;
    sg_a64 *b = &s->lwin[sec % SG_STAT_BUCKETS];
    uint64_t e = sec & 0xffff, inc = accepted ? (1ULL << 24) : 1ULL;
    uint64_t w = LD(b); /* relaxed: statistics carry no data */
    for (;;) {
        if (LW_EPOCH(w) == e) {
            atomic_fetch_add_explicit(b, inc, memory_order_relaxed);
            return;
        }
        /* stale bucket: rotate and count in one CAS; w refreshes on failure */
        if (atomic_compare_exchange_strong_explicit(b, &w, (e << 48) | inc,
                                                    memory_order_relaxed, memory_order_relaxed))
            return;
    }
}

static int decide(struct sg_slot *s, uint64_t now, uint64_t cost, uint32_t prio,
                  int64_t max_wait_ns, struct sg_decision *out)
{
    if (prio >= SG_PRIORITIES || cost == 0)
        return SG_E_ARG;
    struct lim L;
    lim_load(s, now, prio, &L);
    int64_t delay = 0;
    uint64_t nt = now;
    if (!(L.flags & SG_POL_NO_LIMIT)) {
        uint64_t inc = sg_sat_mul(cost, L.T);
        if (inc > L.tol)
            return SG_E_COST; /* can never conform */
        uint64_t tat = atomic_load_explicit(&s->tat, memory_order_acquire);
        for (;;) {
            uint64_t base = tat > now ? tat : now;
            nt = sg_sat_add(base, inc);
            uint64_t ahead = nt - now;
            uint64_t d = ahead > L.tol ? ahead - L.tol : 0;
            delay = d > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)d;
            if (delay > 0 && delay > max_wait_ns) {
                atomic_fetch_add_explicit(&s->rejected[prio], 1, memory_order_relaxed);
                stat_window(s, now, 0);
                if (out) {
                    out->delay_ns = delay;
                    out->act_ns = sg_sat_add(now, (uint64_t)delay);
                    out->tat_ns = tat;
                }
                return SG_R_RATE_LIMITED;
            }
            /* release/acquire: the TAT is the only state; the pair keeps the
             * CAS shape of the breaker word. tat refreshes on failure. */
            if (atomic_compare_exchange_strong_explicit(&s->tat, &tat, nt, memory_order_release,
                                                        memory_order_acquire))
                break;
        }
    }
    atomic_fetch_add_explicit(&s->accepted[prio], 1, memory_order_relaxed);
    if (delay > 0)
        atomic_fetch_add_explicit(&s->waited[prio], 1, memory_order_relaxed);
    stat_window(s, now, 1);
    if (out) {
        out->delay_ns = delay;
        out->act_ns = now + (uint64_t)delay;
        out->tat_ns = nt;
    }
    return SG_OK;
}

int sg_limiter_decide_at(void *slot, uint64_t now_ns, uint64_t cost, uint32_t priority,
                         int64_t max_wait_ns, struct sg_decision *out)
{
    if (!slot)
        return SG_E_ARG;
    return decide(slot, now_ns, cost, priority, max_wait_ns, out);
}

int sg_allow(const struct sg_handle *h)
{
    return decide(h->slot, sg_now_h(h), 1, 1, -1, NULL);
}

int sg_allow_cp(const struct sg_handle *h, uint64_t cp)
{
    return decide(h->slot, sg_now_h(h), cp >> 2, (uint32_t)(cp & 3), -1, NULL);
}

int sg_reserve(const struct sg_handle *h, uint64_t cp, int64_t max_wait_ns, struct sg_decision *out)
{
    return decide(h->slot, sg_now_h(h), cp >> 2, (uint32_t)(cp & 3), max_wait_ns, out);
}

/* Give back a reservation not yet acted on: refund its cost minus what was
 * reserved after it (as x/time/rate does), never below "full". */
int sg_limiter_cancel_at(void *slot, uint64_t now, uint64_t cp, const struct sg_decision *d)
{
    struct sg_slot *s = slot;
    uint32_t prio = (uint32_t)(cp & 3);
    if (!s || !d || (cp >> 2) == 0)
        return SG_E_ARG;
    if (now >= d->act_ns || d->delay_ns < 0)
        return SG_OK; /* already conforming: the caller used it */
    struct lim L;
    lim_load(s, now, prio, &L);
    uint64_t inc = sg_sat_mul(cp >> 2, L.T);
    uint64_t tat = atomic_load_explicit(&s->tat, memory_order_acquire);
    for (;;) {
        uint64_t later = tat > d->tat_ns ? tat - d->tat_ns : 0;
        uint64_t refund = inc > later ? inc - later : 0;
        if (refund == 0)
            return SG_OK;
        uint64_t nt = tat - refund;
        if (nt > tat || nt < now)
            nt = now; /* never below "full burst available" */
        /* same CAS shape as decide(); tat refreshes on failure */
        if (atomic_compare_exchange_strong_explicit(&s->tat, &tat, nt, memory_order_release,
                                                    memory_order_acquire))
            break;
    }
    atomic_fetch_sub_explicit(&s->accepted[prio], 1, memory_order_relaxed);
    if (d->delay_ns > 0)
        atomic_fetch_sub_explicit(&s->waited[prio], 1, memory_order_relaxed);
    return SG_OK;
}

int sg_limiter_cancel(const struct sg_handle *h, uint64_t cp, const struct sg_decision *d)
{
    return sg_limiter_cancel_at(h->slot, sg_now_h(h), cp, d);
}

/* Adaptive rate: drops apply at once, rises ramp over recovery_ns. */
int sg_limiter_scale_at(void *slot, uint64_t now, uint32_t health_ppm)
{
    struct sg_slot *s = slot;
    if (!s || health_ppm > SG_PPM)
        return SG_E_ARG;
    struct sg_policy_view p;
    sg_policy_load(s, &p);
    uint32_t target = health_ppm < p.rate_floor_ppm ? p.rate_floor_ppm : health_ppm;
    if (target < 1)
        target = 1;
    uint64_t w = atomic_load_explicit(&s->scale, memory_order_acquire);
    for (;;) {
        uint32_t cur = scale_now(s, now, p.recovery_ns, NULL);
        uint64_t nw;
        if (target == SG_PPM && cur == SG_PPM)
            nw = 0;
        else if (target <= cur)
            nw = RS_MAKE(target, target, now);
        else
            nw = RS_MAKE(cur, target, now);
        /* w refreshes on failure */
        if (atomic_compare_exchange_strong_explicit(&s->scale, &w, nw, memory_order_release,
                                                    memory_order_acquire))
            return SG_OK;
    }
}

int sg_limiter_snapshot_at(const void *slot, uint64_t now, uint32_t prio, struct sg_limiter_view *out)
{
    struct sg_slot *s = (struct sg_slot *)slot;
    if (!s || !out || prio >= SG_PRIORITIES)
        return SG_E_ARG;
    memset(out, 0, sizeof *out);
    struct sg_policy_view p;
    sg_policy_load(s, &p);
    struct lim L;
    lim_load(s, now, prio, &L);
    uint64_t tat = atomic_load_explicit(&s->tat, memory_order_acquire);
    uint64_t ahead = tat > now ? tat - now : 0;
    if (p.flags & SG_POL_NO_LIMIT)
        out->tokens = (double)p.burst;
    else
        out->tokens = ahead >= L.tol ? 0.0 : (double)(L.tol - ahead) / (double)L.T;
    out->effective_rate = (p.flags & SG_POL_NO_LIMIT) ? 0.0 : 1e9 / (double)L.T; /* 0: no limit */
    out->scale_ppm = scale_now(s, now, p.recovery_ns, &out->scale_target_ppm);
    for (int i = 0; i < SG_PRIORITIES; i++) {
        out->accepted[i] = LD(&s->accepted[i]);
        out->rejected[i] = LD(&s->rejected[i]);
        out->waited[i] = LD(&s->waited[i]);
    }
    uint64_t sec = now / LW_NS;
    for (uint64_t k = 0; k < SG_STAT_BUCKETS; k++) {
        if (k > sec)
            break;
        uint64_t w = LD(&s->lwin[(sec - k) % SG_STAT_BUCKETS]);
        if (LW_EPOCH(w) != ((sec - k) & 0xffff))
            continue;
        out->win_accepted += LW_ACC(w);
        out->win_rejected += LW_REJ(w);
    }
    out->win_ns = (SG_STAT_BUCKETS - 1) * LW_NS + now % LW_NS;
    return SG_OK;
}

/* Hold: the server said "Retry-After": move the TAT so that no priority
 * conforms before until_ns. With tolerance tol_p a request of cost 1
 * conforms once max(TAT, now) + T - now <= tol_p, so TAT = until + tol - T
 * for the largest tolerance holds every priority. The TAT only ever moves
 * forward here (never a refund), so the rate bound is untouched; an
 * endpoint without a limit has no TAT to hold (SG_OK, nothing done). */
int sg_limiter_hold_at(void *slot, uint64_t now, uint64_t until)
{
    struct sg_slot *s = slot;
    if (!s)
        return SG_E_ARG;
    if (until <= now)
        return SG_OK;
    uint64_t need = 0;
    for (uint32_t prio = 0; prio < SG_PRIORITIES; prio++) {
        struct lim L;
        lim_load(s, now, prio, &L);
        if (L.flags & SG_POL_NO_LIMIT)
            return SG_OK;
        uint64_t v = sg_sat_add(until, L.tol - L.T); /* lim_load keeps tol >= T */
        if (v > need)
            need = v;
    }
    uint64_t tat = atomic_load_explicit(&s->tat, memory_order_acquire);
    for (;;) {
        if (tat >= need)
            return SG_OK;
        /* same CAS shape as decide(); tat refreshes on failure */
        if (atomic_compare_exchange_strong_explicit(&s->tat, &tat, need, memory_order_release,
                                                    memory_order_acquire))
            return SG_OK;
    }
}

int sg_limiter_hold(const struct sg_handle *h, uint64_t until)
{
    return sg_limiter_hold_at(h->slot, sg_now_h(h), until);
}

/* The delay decide() would report for cost_prio now, without taking or
 * counting anything (a rejection's retry-after, also after a hold). */
int sg_limiter_delay_at(const void *slot, uint64_t now, uint64_t cp, int64_t *delay_out)
{
    struct sg_slot *s = (struct sg_slot *)slot;
    uint32_t prio = (uint32_t)(cp & 3);
    if (!s || !delay_out || (cp >> 2) == 0)
        return SG_E_ARG;
    struct lim L;
    lim_load(s, now, prio, &L);
    *delay_out = 0;
    if (L.flags & SG_POL_NO_LIMIT)
        return SG_OK;
    uint64_t inc = sg_sat_mul(cp >> 2, L.T);
    if (inc > L.tol) {
        *delay_out = INT64_MAX;
        return SG_E_COST;
    }
    /* acquire: pairs with the release CAS of decide() */
    uint64_t tat = atomic_load_explicit(&s->tat, memory_order_acquire);
    uint64_t ahead = sg_sat_add(tat > now ? tat : now, inc) - now;
    uint64_t d = ahead > L.tol ? ahead - L.tol : 0;
    *delay_out = d > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)d;
    return SG_OK;
}
