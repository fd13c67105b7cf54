/*
 * rate.c -- the limiter's rate regime: what a TAT nanosecond is worth, and
 * how a rate change keeps the debt in tokens (x/time/rate's SetLimit).
 *
 * A regime is a rate record: the base emission interval, the scale
 * (adaptive rate) it runs at, and its start t0. The TAT counts in the
 * regime's VIRTUAL time, which runs at scale / to: a flat regime (from ==
 * to) runs with the clock, so the TAT is plain GCRA; a rising regime
 * (recovery) ramps from -> to over recovery_ns and its virtual time runs
 * slower, so debt is repaid at the rate of the moment (no lock-out after a
 * drop near zero). Times are 64-bit: nothing wraps.
 *
 * A change (adjust_rate, a new policy rate) starts a new regime at its own
 * time: it claims the rate-change word, writes the INACTIVE record, flips
 * the active one, converts the TAT (debt in tokens kept:
 *   TAT' = t0 + (TAT - V_old(t0)) * T_new / T_old, rounded up)
 * and clears the claim. The TAT word carries its regime's tag, so a TAT one
 * regime behind is converted by whichever CAS moves it next (a decider
 * does not wait for the changer), and a decider whose view of the regime
 * is older than the TAT's re-reads it: no CAS ever mixes two regimes'
 * units (rule: one CAS loop on one word). A changer that dies leaves a
 * claim the next changer completes after its deadline; record words carry
 * the claim's sequence, so a stalled changer that resumes finds its CASes
 * failing.
 */
#include "layout.h"

#define CHANGE_LEASE_NS 1000000000ULL /* a change takes microseconds */
#define TT_MAX ((1ULL << 62) - 1)
#define MAX_RECOVERY_NS 86400000000000ULL

struct rec {
    uint64_t Tb, t0;
    uint32_t tag, from, to;
};

struct pol {
    uint64_t T, R;
    uint32_t burst, share, flags, floor;
};

static void pol_load(struct sg_slot *s, uint32_t prio, struct pol *o)
{
    for (int tries = 0; tries < 16; tries++) {
        /* A2 (seqlock over the policy buffers, see policy.c). */
        uint64_t seq = atomic_load_explicit(&s->policy_seq, memory_order_acquire);
        struct sg_policy_raw *p = &s->policy[seq & 1];
        o->T = LD(&p->emission_ns);
        o->R = LD(&p->recovery_ns);
        o->burst = LD(&p->burst);
        o->share = LD(&p->share_ppm[prio & 3]);
        o->flags = LD(&p->flags);
        atomic_thread_fence(memory_order_acquire);
        if (LD(&s->policy_seq) == seq)
            break;
    }
    /* untrusted slot: never divide by or loop on 0 */
    if (o->T < 1) o->T = 1;
    if (o->burst < 1) o->burst = 1;
    if (o->share > 4 * SG_PPM) o->share = 4 * SG_PPM;
    if (o->R > MAX_RECOVERY_NS) o->R = MAX_RECOVERY_NS;
}

/* Reads record a; 0 if its words are of different writers (torn). */
static int rec_read(struct sg_slot *s, uint32_t a, struct rec *r)
{
    /* acquire: pairs with the release CASes of write_rec() (R6) */
    uint64_t w0 = atomic_load_explicit(&s->rrec[a & 1][0], memory_order_acquire);
    uint64_t w1 = atomic_load_explicit(&s->rrec[a & 1][1], memory_order_acquire);
    uint64_t w2 = atomic_load_explicit(&s->rrec[a & 1][2], memory_order_acquire);
    r->Tb = RR_VAL(w0);
    r->t0 = RR_VAL(w1);
    r->tag = RR_TAG(w2);
    uint32_t f = (uint32_t)((w2 >> 41) & 0xfffffu), t = (uint32_t)((w2 >> 21) & 0xfffffu);
    r->from = f >= SG_PPM ? 1 : SG_PPM - f; /* untrusted: scale in [1, 1e6] */
    r->to = t >= SG_PPM ? 1 : SG_PPM - t;
    if (r->from > r->to)
        r->from = r->to;
    return RR_SEQ2(w0) == RR_SEQ2(w1) && RR_SEQ2(w0) == (RR_SEQ(w2) & 3u);
}

/* The regime's emission interval in virtual ns (capped: tol never saturates). */
static uint64_t rec_T(const struct rec *r, const struct pol *p)
{
    uint64_t Tb = r->Tb ? r->Tb : p->T, cap = (1ULL << 62) / p->burst;
    if (r->to != SG_PPM) {
        unsigned __int128 x = ((unsigned __int128)Tb * SG_PPM + r->to - 1) / r->to;
        Tb = x > cap ? cap : (uint64_t)x;
    }
    return Tb > cap ? cap : Tb;
}

static uint32_t rec_scale(const struct rec *r, uint64_t now, uint64_t R)
{
    if (r->from == r->to || now >= r->t0 + R || R == 0)
        return r->to;
    uint64_t tau = now > r->t0 ? now - r->t0 : 0;
    return r->from + (uint32_t)((unsigned __int128)(r->to - r->from) * tau / R);
}

/* Virtual time: t0 + integral of scale/to from t0 (rounded down: slower). */
static uint64_t rec_vnow(const struct rec *r, uint64_t now, uint64_t R)
{
    if (r->from == r->to || now <= r->t0)
        return now;
    uint64_t tau = now - r->t0, d = r->to - r->from;
    if (R == 0 || tau >= R) {
        uint64_t lag = (uint64_t)(((unsigned __int128)d * R + 2ULL * r->to - 1) / (2ULL * r->to));
        return lag > now ? 0 : now - lag;
    }
    unsigned __int128 num = (unsigned __int128)r->from * tau +
                            (unsigned __int128)d * tau * tau / (2 * R);
    return r->t0 + (uint64_t)(num / r->to);
}

static void fill(struct sg_rate *o, const struct rec *r, const struct pol *p, uint64_t now,
                 uint32_t active)
{
    o->T = rec_T(r, p);
    o->vnow = rec_vnow(r, now, p->R);
    o->t0 = r->t0;
    o->R = p->R;
    o->s_now = rec_scale(r, now, p->R);
    o->s_to = r->to;
    o->tag = r->tag;
    o->active = active;
    o->flags = p->flags;
    o->burst = p->burst;
    if (p->flags & SG_POL_FLEET_RATE) { /* fleet/: a host's share of the burst as of its rate */
        uint64_t b = (uint64_t)p->burst * r->to / SG_PPM;
        o->burst = b < 1 ? 1 : (uint32_t)b;
    }
    o->share = p->share;
    o->Tb = r->Tb ? r->Tb : p->T;
    o->drift = r->Tb != 0 && r->Tb != p->T;
}

int sg_rate_load(struct sg_slot *s, uint64_t now, uint32_t prio, struct sg_rate *out)
{
    struct pol p;
    struct rec r;
    pol_load(s, prio, &p);
    /* fast path, the common case: a flat regime at full scale (plain GCRA) */
    uint64_t cw = atomic_load_explicit(&s->rchange, memory_order_acquire); /* A6 */
    uint32_t a = RC_ACTIVE(cw);
    uint64_t w0 = atomic_load_explicit(&s->rrec[a][0], memory_order_acquire);
    uint64_t w2 = atomic_load_explicit(&s->rrec[a][2], memory_order_acquire);
    if ((w2 & (((1ULL << 40) - 1) << 21)) == 0 && RR_SEQ2(w0) == (RR_SEQ(w2) & 3u)) {
        uint64_t Tb = RR_VAL(w0) ? RR_VAL(w0) : p.T;
        out->T = out->Tb = Tb;
        out->vnow = now;
        out->t0 = 0;
        out->R = p.R;
        out->s_now = out->s_to = SG_PPM;
        out->tag = RR_TAG(w2);
        out->active = a;
        out->flags = p.flags;
        out->burst = p.burst;
        out->share = p.share;
        out->drift = Tb != p.T;
        return SG_OK;
    }
    for (int tries = 0; tries < 16; tries++) {
        /* A6: pairs with the commit (R7) of change() */
        a = RC_ACTIVE(atomic_load_explicit(&s->rchange, memory_order_acquire));
        if (rec_read(s, a, &r))
            break; /* else a change rewrote it after we read `a`: again */
    }
    fill(out, &r, &p, now, a);
    return SG_OK;
}

/* TAT (in regime A) converted into regime B at B's start. */
static uint64_t convert(uint64_t tv, const struct rec *A, const struct rec *B, const struct pol *p)
{
    uint64_t t0 = B->t0 > TT_MAX ? TT_MAX : B->t0, va = rec_vnow(A, t0, p->R);
    if (tv <= va)
        return t0; /* no debt at the change */
    uint64_t TA = rec_T(A, p), TB = rec_T(B, p);
    unsigned __int128 d = ((unsigned __int128)(tv - va) * TB + TA - 1) / TA;
    return d >= TT_MAX - t0 ? TT_MAX : t0 + (uint64_t)d;
}

int sg_rate_convert(struct sg_slot *s, const struct sg_rate *r, uint64_t tat, uint64_t *tv)
{
    if (TT_TAG(tat) != ((r->tag - 1) & 3u))
        return 0; /* not one regime behind ours: our view is old */
    struct rec A, B;
    struct pol p;
    pol_load(s, 0, &p);
    if (!rec_read(s, r->active ^ 1u, &A) || A.tag != ((r->tag - 1) & 7u) ||
        !rec_read(s, r->active, &B) || B.tag != r->tag)
        return 0;
    *tv = convert(TT_NS(tat), &A, &B, &p);
    return 1;
}

uint64_t sg_rate_real_delay(const struct sg_rate *r, uint64_t dv)
{
    if (dv == 0 || r->s_now >= r->s_to)
        return dv;
    /* virtual time runs at >= s_now / to from now on (a rise only rises) */
    unsigned __int128 x = ((unsigned __int128)dv * r->s_to + r->s_now - 1) / r->s_now;
    return x > INT64_MAX ? (uint64_t)INT64_MAX : (uint64_t)x;
}

/* R6: writes record b word by word, each by CAS from the contents read
 * while our claim held (`old`): a stalled earlier claimant that resumes
 * expects contents older than ours, so its CASes fail. If one of ours
 * fails, such a writer got there first: read again and rewrite, while the
 * claim is still ours. Returns 0 if the claim was lost. */
static int write_rec(struct sg_slot *s, uint32_t b, uint64_t mine, const uint64_t w[3])
{
    for (int tries = 0; tries < 8; tries++) {
        uint64_t old[3];
        for (int i = 0; i < 3; i++)
            old[i] = atomic_load_explicit(&s->rrec[b][i], memory_order_acquire);
        if (atomic_load_explicit(&s->rchange, memory_order_acquire) != mine)
            return 0;
        int ok = 1;
        for (int i = 0; i < 3 && ok; i++)
            ok = atomic_compare_exchange_strong_explicit(&s->rrec[b][i], &old[i], w[i],
                                                         memory_order_release,
                                                         memory_order_relaxed);
        if (ok)
            return 1;
    }
    return 0;
}

/* Converts the TAT out of regime `from_tag` (the other record) into the
 * active one, if it is still there. */
static void convert_tat(struct sg_slot *s, uint32_t active, uint32_t from_tag)
{
    struct rec A, B;
    struct pol p;
    pol_load(s, 0, &p);
    if (!rec_read(s, active ^ 1u, &A) || !rec_read(s, active, &B) || A.tag != from_tag)
        return;
    uint64_t tat = atomic_load_explicit(&s->tat, memory_order_acquire);
    while (TT_TAG(tat) == (from_tag & 3u)) {
        uint64_t nt = TT_MAKE(B.tag, convert(TT_NS(tat), &A, &B, &p));
        /* same CAS shape as decide(); tat refreshes on failure */
        if (atomic_compare_exchange_strong_explicit(&s->tat, &tat, nt, memory_order_release,
                                                    memory_order_acquire))
            return;
    }
}

/* Completes a change whose claimant died (or stalled) past its deadline. */
static void complete(struct sg_slot *s, uint64_t cw)
{
    struct rec B;
    uint32_t a = RC_ACTIVE(cw);
    if (rec_read(s, a, &B))
        convert_tat(s, a, (B.tag - 1) & 7u);
    atomic_compare_exchange_strong_explicit(&s->rchange, &cw, RC_MAKE(0, a, RC_SEQ(cw) + 1, 0),
                                            memory_order_acq_rel, memory_order_relaxed);
}

/* The fleet share applied to the slot (fleet.c w[0], ppm; untrusted): an
 * adaptive target never goes above it. Before the first grant: 1 ppm. */
static uint32_t fleet_cap(const struct sg_slot *s)
{
    uint32_t ppm = (uint32_t)LD(&s->fleet.w[0]);
    return ppm == 0 ? 1 : ppm > SG_PPM ? SG_PPM : ppm;
}

/* Starts a new regime at now. health_ppm > SG_PPM: keep the target (a new
 * policy rate); else the new adaptive target (on a fleet rate, at most the
 * host's share). exact: that target at once, both ways, without the floor
 * (a fleet share, fleet.c), and only while the slot's fleet word still
 * reads `*fence`: checked after winning the claim, so an agent that stalled
 * after its check never writes a share its successor replaced. */
static int change(struct sg_slot *s, uint64_t now, uint32_t health_ppm, int exact,
                  const uint64_t *fence)
{
    struct pol p;
    struct rec A;
    struct sg_policy_view pv;
    pol_load(s, 0, &p);
    sg_policy_load(s, &pv);
    p.floor = pv.rate_floor_ppm; /* sanitized: <= SG_PPM */
    uint64_t cw = atomic_load_explicit(&s->rchange, memory_order_acquire);
    if (RC_PENDING(cw)) {
        if ((now >> 20) < RC_DL(cw))
            return SG_E_BUSY; /* another change is under way */
        complete(s, cw);
        return SG_E_BUSY;     /* the caller retries on the completed word */
    }
    uint32_t a = RC_ACTIVE(cw), seq = RC_SEQ(cw) + 1;
    uint64_t mine = RC_MAKE(1, a, RC_SEQ(cw), sg_sat_add(now, CHANGE_LEASE_NS) >> 20);
    /* acq_rel: the claim orders us after the previous change */
    if (!atomic_compare_exchange_strong_explicit(&s->rchange, &cw, mine, memory_order_acq_rel,
                                                 memory_order_acquire))
        return SG_E_BUSY;
    /* A31: pairs with fleet.c's CAS of w[0] (R31), which precedes its change */
    if (fence && atomic_load_explicit(&s->fleet.w[0], memory_order_acquire) != *fence) {
        atomic_compare_exchange_strong_explicit(&s->rchange, &mine, cw, memory_order_release,
                                                memory_order_relaxed); /* give the claim back */
        return SG_E_GONE; /* a newer share (or agent) owns the slot now */
    }
    rec_read(s, a, &A); /* active: stable while we hold the claim */
    uint32_t cur = rec_scale(&A, now, p.R), from = cur, to = A.to;
    if (health_ppm <= SG_PPM) {
        to = health_ppm < p.floor && !exact ? p.floor : health_ppm;
        if (!exact && pv.flags & SG_POL_FLEET_RATE && to > fleet_cap(s))
            to = fleet_cap(s);
        if (to < 1)
            to = 1;
        from = to <= cur || exact ? to : cur; /* drops at once, rises ramp */
    }
    uint64_t w[3] = {RR_MK(seq, p.T), RR_MK(seq, now), RR_MK2(A.tag + 1, from, to, seq)};
    if (!write_rec(s, a ^ 1u, mine, w))
        return SG_E_BUSY;
    /* R7: the commit publishes the new record; pairs with A6 */
    uint64_t committed = RC_MAKE(1, a ^ 1u, RC_SEQ(cw), RC_DL(mine));
    if (!atomic_compare_exchange_strong_explicit(&s->rchange, &mine, committed,
                                                 memory_order_acq_rel, memory_order_relaxed))
        return SG_E_BUSY; /* taken over while stalled: nothing of ours is live */
    convert_tat(s, a ^ 1u, A.tag & 7u);
    atomic_compare_exchange_strong_explicit(&s->rchange, &committed, RC_MAKE(0, a ^ 1u, seq, 0),
                                            memory_order_release, memory_order_relaxed);
    return SG_OK;
}

/* Adaptive rate: drops apply at once, rises ramp over recovery_ns. */
int sg_limiter_scale_at(void *slot, uint64_t now, uint32_t health_ppm)
{
    if (!slot || health_ppm > SG_PPM)
        return SG_E_ARG;
    return change(slot, now, health_ppm, 0, NULL);
}

/* A new policy rate: a new regime that keeps the debt in tokens. */
int sg_limiter_retune_at(void *slot, uint64_t now)
{
    if (!slot)
        return SG_E_ARG;
    return change(slot, now, SG_PPM + 1, 0, NULL);
}

/* fleet/: this host's share of a fleet-wide rate, ppm of the policy's rate;
 * applies at once both ways and keeps the debt in tokens (fleet.c), while
 * the slot's fleet word is still `fleet_word` (0: no grant yet). */
int sg_limiter_share_at(void *slot, uint64_t now, uint32_t share_ppm, uint64_t fleet_word)
{
    if (!slot || share_ppm < 1 || share_ppm > SG_PPM)
        return SG_E_ARG;
    return change(slot, now, share_ppm, 1, &fleet_word);
}
