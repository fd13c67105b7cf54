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
 *
 * Time and T are those of the rate regime (rate.c): at full rate plain
 * nanoseconds and the policy's T (the fast path); after a rate change the
 * TAT carries its regime's tag and a TAT one regime behind is converted in
 * the same CAS that moves it, so the debt is kept in tokens.
 */
#include <string.h>

#include "layout.h"

/* How far past its tolerance a TAT may run ahead of now: the longer of one
 * burst (tol) and an hour. Reservations and holds never reach further, so
 * under one clock a TAT beyond is impossible: it was written by a process
 * whose clock is ahead of ours (a restored checkpoint, a foreign boot or
 * time namespace that slipped past the attach checks), or kept in tokens
 * across a rate cut with over an hour queued. It is read as this bound, and
 * decide() writes it down to the bound when it rejects on it, so the wait
 * and retry-after it reports (<= the bound, never weeks) are the real ones:
 * a host behind is served once they have passed (never earlier). */
#define AHEAD_MAX_NS 3600000000000ULL /* 1 h */

static inline uint64_t ahead_max(uint64_t tol)
{
    return tol > AHEAD_MAX_NS ? tol : AHEAD_MAX_NS;
}

static inline uint64_t tat_sane(uint64_t tv, uint64_t vnow, uint64_t tol)
{
    uint64_t lim = sg_sat_add(sg_sat_add(vnow, tol), ahead_max(tol));
    return tv > lim ? lim : tv;
}

struct lim {
    struct sg_rate r;
    uint64_t tol;  /* tolerance for the asked priority, virtual ns */
};

/* The common case, kept short for the hot path: a flat regime at full
 * scale and the policy's rate (then the TAT is plain GCRA in real ns). */
static inline __attribute__((always_inline)) int lim_fast(struct sg_slot *s, uint64_t now, uint32_t prio, struct lim *out)
{
    uint64_t T = 1;
    uint32_t burst = 1, share = 0, flags = 0;
    for (int tries = 0; tries < 16; tries++) {
        /* A2 (seqlock over the policy buffers, see policy.c). */
        uint64_t seq = atomic_load_explicit(&s->policy_seq, memory_order_acquire);
        struct sg_policy_raw *p = &s->policy[seq & 1];
        T = LD(&p->emission_ns);
        burst = LD(&p->burst);
        share = LD(&p->share_ppm[prio & 3]);
        flags = LD(&p->flags);
        atomic_thread_fence(memory_order_acquire);
        if (LD(&s->policy_seq) == seq)
            break;
    }
    /* A6 (rate.c): the active rate record */
    uint32_t a = RC_ACTIVE(atomic_load_explicit(&s->rchange, memory_order_acquire));
    uint64_t w0 = atomic_load_explicit(&s->rrec[a][0], memory_order_acquire);
    uint64_t w2 = atomic_load_explicit(&s->rrec[a][2], memory_order_acquire);
    if ((w2 & (((1ULL << 40) - 1) << 21)) != 0 || RR_VAL(w0) != T ||
        RR_SEQ2(w0) != (RR_SEQ(w2) & 3u) || T < 1 || burst < 1 || share > 4 * SG_PPM)
        return 0;
    out->r.T = T;
    out->r.vnow = now;
    out->r.s_now = out->r.s_to = SG_PPM;
    out->r.tag = RR_TAG(w2);
    out->r.active = a;
    out->r.flags = flags;
    out->r.burst = burst;
    out->r.share = share;
    return 1;
}

static inline __attribute__((always_inline)) void lim_load(struct sg_slot *s, uint64_t now, uint32_t prio, struct lim *out)
{
    if (!lim_fast(s, now, prio, out)) {
        sg_rate_load(s, now, prio, &out->r);
        if (out->r.drift && sg_limiter_retune_at(s, now) == SG_OK) /* a publish not followed */
            sg_rate_load(s, now, prio, &out->r);
    }
    uint64_t T = out->r.T, tol = sg_mul_ppm(sg_sat_mul(T, out->r.burst), out->r.share);
    out->tol = tol < T ? T : tol; /* every priority may take one token */
}

/* The TAT word `cur` in our regime's virtual ns; 0 if our view of the
 * regime is older than the TAT's (the caller reloads it). */
static int tat_value(struct sg_slot *s, const struct lim *L, uint64_t cur, uint64_t *tv)
{
    if (TT_TAG(cur) == (L->r.tag & 3u)) {
        *tv = TT_NS(cur);
        return 1;
    }
    return sg_rate_convert(s, &L->r, cur, tv); /* one regime behind: converted */
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

static int reject(struct sg_slot *s, uint64_t now, uint32_t prio, int64_t delay, uint64_t cur,
                  struct sg_decision *out)
{
    atomic_fetch_add_explicit(&s->rejected[prio], 1, memory_order_relaxed);
    stat_window(s, now, 0);
    if (out) {
        out->delay_ns = delay;
        out->act_ns = sg_sat_add(now, (uint64_t)delay);
        out->tat_ns = cur;
        out->took_ns = 0;
    }
    return SG_R_RATE_LIMITED;
}

static int decide(struct sg_slot *s, uint64_t now, uint64_t cost, uint32_t prio,
                  int64_t max_wait_ns, struct sg_decision *out)
{
    if (prio >= SG_PRIORITIES || cost == 0)
        return SG_E_ARG;
    struct lim L;
    lim_load(s, now, prio, &L);
    int64_t delay = 0;
    uint64_t nt = now, took = 0;
    if (!(L.r.flags & SG_POL_NO_LIMIT)) {
        uint64_t inc = sg_sat_mul(cost, L.r.T);
        if (inc > L.tol)
            return SG_E_COST; /* can never conform */
        uint64_t cur = atomic_load_explicit(&s->tat, memory_order_acquire), tv;
        for (int tries = 0;; tries++) {
            if (!tat_value(s, &L, cur, &tv)) {
                if (tries < 8) { /* the regime changed under us: read it again */
                    lim_load(s, now, prio, &L);
                    inc = sg_sat_mul(cost, L.r.T);
                    if (inc > L.tol)
                        return SG_E_COST;
                    cur = atomic_load_explicit(&s->tat, memory_order_acquire);
                    continue;
                }
                tv = TT_NS(cur); /* a tag no regime explains (corrupt): take it as ours */
            }
            uint64_t vnow = L.r.vnow, sane = tat_sane(tv, vnow, L.tol);
            uint64_t base = sane > vnow ? sane : vnow;
            nt = sg_sat_add(base, inc);
            uint64_t ahead = nt - vnow;
            uint64_t d = ahead > L.tol ? ahead - L.tol : 0;
            int64_t mw = max_wait_ns;
            if (d > ahead_max(L.tol) || sane != tv) /* never queued that far; a clock ahead */
                mw = -1;
            if (d && L.r.s_now < L.r.s_to)
                d = sg_rate_real_delay(&L.r, d); /* recovering: virtual ns run slower */
            delay = d > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)d;
            /* a TAT past the word's 2^62 ns horizon is never stored (it
             * would saturate and lose debt): such a request waits forever */
            if ((delay > 0 && delay > mw) || nt > TT_NS(~0ULL)) {
                uint64_t seen = cur;
                /* the bound is the TAT from now on (else a host behind would
                 * be refused past the retry-after it was told); relaxed on
                 * failure: someone moved it, theirs stands */
                if (sane != tv && sane <= TT_NS(~0ULL))
                    atomic_compare_exchange_strong_explicit(&s->tat, &seen, TT_MAKE(L.r.tag, sane),
                                                            memory_order_release,
                                                            memory_order_relaxed);
                return reject(s, now, prio, delay, cur, out);
            }
            took = nt - base;
            nt = TT_MAKE(L.r.tag, nt);
            /* release/acquire: the TAT is the only state; the pair keeps the
             * CAS shape of the breaker word. cur refreshes on failure; a TAT
             * of another regime fails it too (the tag is in the word). */
            if (atomic_compare_exchange_strong_explicit(&s->tat, &cur, nt, memory_order_release,
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
        out->took_ns = took;
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
    struct sg_slot *s = sg_hslot(h);
    return s ? decide(s, sg_now_h(h), 1, 1, -1, NULL) : SG_E_GONE;
}

int sg_allow_cp(const struct sg_handle *h, uint64_t cp)
{
    struct sg_slot *s = sg_hslot(h);
    return s ? decide(s, sg_now_h(h), cp >> 2, (uint32_t)(cp & 3), -1, NULL) : SG_E_GONE;
}

int sg_reserve(const struct sg_handle *h, uint64_t cp, int64_t max_wait_ns, struct sg_decision *out)
{
    struct sg_slot *s = sg_hslot(h);
    return s ? decide(s, sg_now_h(h), cp >> 2, (uint32_t)(cp & 3), max_wait_ns, out)
             : SG_E_GONE;
}

/* Give back a reservation not yet acted on (now <= its time to act, as
 * x/time/rate): refund what it took minus what was reserved after it, never
 * below "full". What it took is fixed when it was granted; after a rate
 * change (another regime) nothing is given back. */
int sg_limiter_cancel_at(void *slot, uint64_t now, uint64_t cp, const struct sg_decision *d)
{
    struct sg_slot *s = slot;
    uint32_t prio = (uint32_t)(cp & 3);
    if (!s || !d || (cp >> 2) == 0)
        return SG_E_ARG;
    if (now > d->act_ns || d->delay_ns < 0)
        return SG_OK; /* past its time to act: the caller used it */
    struct sg_rate r;
    sg_rate_load(s, now, prio, &r);
    uint64_t mine = TT_NS(d->tat_ns), tat = atomic_load_explicit(&s->tat, memory_order_acquire);
    for (;;) {
        if (TT_TAG(tat) != TT_TAG(d->tat_ns) || TT_TAG(tat) != (r.tag & 3u))
            return SG_OK;
        uint64_t tv = TT_NS(tat), later = tv > mine ? tv - mine : 0;
        uint64_t refund = d->took_ns > later ? d->took_ns - later : 0;
        if (refund == 0)
            return SG_OK;
        uint64_t nt = tv - refund;
        if (nt > tv || nt < r.vnow)
            nt = r.vnow; /* never below "full burst available" */
        /* same CAS shape as decide(); tat refreshes on failure */
        if (atomic_compare_exchange_strong_explicit(&s->tat, &tat, TT_MAKE(r.tag, nt),
                                                    memory_order_release, memory_order_acquire))
            break;
    }
    atomic_fetch_sub_explicit(&s->accepted[prio], 1, memory_order_relaxed);
    if (d->delay_ns > 0)
        atomic_fetch_sub_explicit(&s->waited[prio], 1, memory_order_relaxed);
    return SG_OK;
}

int sg_limiter_cancel(const struct sg_handle *h, uint64_t cp, const struct sg_decision *d)
{
    struct sg_slot *s = sg_hslot(h);
    return s ? sg_limiter_cancel_at(s, sg_now_h(h), cp, d) : SG_E_GONE;
}

int sg_limiter_snapshot_at(const void *slot, uint64_t now, uint32_t prio, struct sg_limiter_view *out)
{
    struct sg_slot *s = (struct sg_slot *)slot;
    if (!s || !out || prio >= SG_PRIORITIES)
        return SG_E_ARG;
    memset(out, 0, sizeof *out);
    struct lim L;
    sg_rate_load(s, now, prio, &L.r); /* a read never changes the regime */
    uint64_t T = L.r.T, tol = sg_mul_ppm(sg_sat_mul(T, L.r.burst), L.r.share);
    L.tol = tol < T ? T : tol;
    uint64_t cur = atomic_load_explicit(&s->tat, memory_order_acquire), tv;
    if (!tat_value(s, &L, cur, &tv))
        tv = TT_NS(cur);
    tv = tat_sane(tv, L.r.vnow, L.tol);
    uint64_t ahead = tv > L.r.vnow ? tv - L.r.vnow : 0;
    int unlimited = (L.r.flags & SG_POL_NO_LIMIT) != 0;
    if (unlimited)
        out->tokens = (double)L.r.burst;
    else
        out->tokens = ahead >= L.tol ? 0.0 : (double)(L.tol - ahead) / (double)T;
    /* per second at the scale of the moment (0: no limit) */
    out->effective_rate = unlimited ? 0.0 : 1e9 * (double)L.r.s_now / SG_PPM / (double)L.r.Tb;
    out->scale_ppm = L.r.s_now;
    out->scale_target_ppm = L.r.s_to;
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
    if (!unlimited) {
        /* a cost-1 request conforms when tat + T - vnow <= tol */
        uint64_t need = sg_sat_add(ahead, T);
        out->wait_ns = sg_rate_real_delay(&L.r, need > L.tol ? need - L.tol : 0);
    }
    return SG_OK;
}

/* tol for the regime and priority in L->r (read-only callers: no retune) */
static void lim_read(struct sg_slot *s, uint64_t now, uint32_t prio, struct lim *L)
{
    sg_rate_load(s, now, prio, &L->r);
    uint64_t T = L->r.T, tol = sg_mul_ppm(sg_sat_mul(T, L->r.burst), L->r.share);
    L->tol = tol < T ? T : tol;
}

/* Hold: the server said "Retry-After": move the TAT so that no priority
 * conforms before until_ns. With tolerance tol_p a request of cost 1
 * conforms once max(TAT, v) + T - v <= tol_p (v: the regime's virtual
 * time), so TAT = V(until) + tol - T for the largest tolerance holds every
 * priority. The TAT only ever moves forward here (never a refund), so the
 * rate bound is untouched; an endpoint without a limit has no TAT to hold
 * (SG_OK, nothing done). A hold is advisory: under a storm of rate changes
 * it gives up after a few tries. */
int sg_limiter_hold_at(void *slot, uint64_t now, uint64_t until)
{
    struct sg_slot *s = slot;
    if (!s)
        return SG_E_ARG;
    if (until <= now)
        return SG_OK;
    if (until - now > AHEAD_MAX_NS)
        until = now + AHEAD_MAX_NS; /* a hold reaches no further than a reservation */
    for (int tries = 0; tries < 8; tries++) {
        struct lim L;
        uint64_t need = 0;
        uint32_t tag = 0;
        int mixed = 0;
        for (uint32_t prio = 0; prio < SG_PRIORITIES; prio++) {
            lim_read(s, until, prio, &L); /* virtual time at `until` */
            if (L.r.flags & SG_POL_NO_LIMIT)
                return SG_OK;
            mixed |= prio && L.r.tag != tag;
            tag = L.r.tag;
            uint64_t v = sg_sat_add(L.r.vnow, L.tol - L.r.T); /* tol >= T */
            if (v > need)
                need = v;
        }
        if (mixed || need > TT_NS(~0ULL))
            continue; /* a rate change between the loads: again */
        uint64_t cur = atomic_load_explicit(&s->tat, memory_order_acquire), tv;
        if (!tat_value(s, &L, cur, &tv))
            continue;
        if (tv >= need)
            return SG_OK;
        /* same CAS shape as decide(); a TAT of another regime fails it too */
        if (atomic_compare_exchange_strong_explicit(&s->tat, &cur, TT_MAKE(tag, need),
                                                    memory_order_release, memory_order_acquire))
            return SG_OK;
    }
    return SG_OK;
}

int sg_limiter_hold(const struct sg_handle *h, uint64_t until)
{
    struct sg_slot *s = sg_hslot(h);
    return s ? sg_limiter_hold_at(s, sg_now_h(h), until) : SG_E_GONE;
}

/* The delay decide() would report for cost_prio now, without taking or
 * counting anything (a rejection's retry-after: it counts the reservations
 * already queued and any hold). */
int sg_limiter_delay_at(const void *slot, uint64_t now, uint64_t cp, int64_t *delay_out)
{
    struct sg_slot *s = (struct sg_slot *)slot;
    uint32_t prio = (uint32_t)(cp & 3);
    if (!s || !delay_out || (cp >> 2) == 0)
        return SG_E_ARG;
    struct lim L;
    lim_read(s, now, prio, &L);
    *delay_out = 0;
    if (L.r.flags & SG_POL_NO_LIMIT)
        return SG_OK;
    uint64_t inc = sg_sat_mul(cp >> 2, L.r.T);
    if (inc > L.tol) {
        *delay_out = INT64_MAX;
        return SG_E_COST;
    }
    /* acquire: pairs with the release CAS of decide() */
    uint64_t cur = atomic_load_explicit(&s->tat, memory_order_acquire), tv;
    if (!tat_value(s, &L, cur, &tv))
        tv = TT_NS(cur); /* a change under way: the nearest estimate */
    uint64_t vnow = L.r.vnow;
    tv = tat_sane(tv, vnow, L.tol);
    uint64_t ahead = sg_sat_add(tv > vnow ? tv : vnow, inc) - vnow;
    uint64_t d = sg_rate_real_delay(&L.r, ahead > L.tol ? ahead - L.tol : 0);
    *delay_out = d > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)d;
    return SG_OK;
}
