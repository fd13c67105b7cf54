/*
 * keyed_gcra.c -- GCRA per key in a keyed table (keyed.c has the table).
 *
 * The same rule as gcra.c, on the key's entry instead of a slot: a request
 * of cost c at time now conforms if max(TAT, now) + c*T - now <= tau, and
 * then the entry becomes (key, max(TAT, now) + c*T) by ONE 128-bit CAS over
 * (tag, TAT), so the decision holds only for the exact key and TAT it read
 * (no ABA with a reuse of the entry). A key without an entry has a full
 * bucket: it is inserted (keyed.c) and decided on like any other.
 *
 * "now" here is the table's virtual time V(now) and T its unit T0
 * (keyed_rate.c): a rate change moves V's slope, never a TAT. Delays handed
 * back to the caller are converted to clock ns.
 */
#include <string.h>

#include "layout.h"

#define ROUNDS 1000         /* CAS rounds before giving up with SG_E_BUSY */
#define PENDING_GRACE 1000000ULL /* ns: a PENDING entry younger than this is not taken */

struct look {
    struct sg_kl_entry *hit, *spare; /* the key's entry; the first reusable one */
    uint64_t tag, tat, stag, stat;
};

static inline uint64_t home_of(const struct sg_kl_handle *kh, uint64_t h)
{
    return ((h & 0xffffffffULL) * kh->slots) >> 32; /* < slots (slots < 2^32) */
}

static int reusable(uint64_t tag, uint64_t tat, uint64_t now)
{
    uint32_t st = KT_STATE(tag);
    if (st == KT_LIVE)
        return tat <= now; /* a full bucket: exactly like a fresh key */
    if (st == KT_PENDING) /* an insert in flight (or one whose inserter died) */
        return tat <= now && now - tat >= PENDING_GRACE;
    return 1; /* RETIRED, or state bits 0 with a non-zero tag (corrupt) */
}

/* Scans the key's window up to the first EMPTY entry. */
static void look(const struct sg_kl_handle *kh, uint64_t home, uint64_t fp, uint64_t now,
                 struct look *L)
{
    L->hit = L->spare = NULL;
    for (uint32_t i = 0; i < SG_KL_PROBES; i++) {
        struct sg_kl_entry *e = sg_kl_at(kh, home, i);
        uint64_t t, x;
        sg_kl_load(e, &t, &x);
        uint32_t st = KT_STATE(t);
        if (KT_FP(t) == fp && (st == KT_LIVE || st == KT_PENDING) && t != 0) {
            L->hit = e;
            L->tag = t;
            L->tat = x;
            return;
        }
        if (!L->spare && (t == 0 || reusable(t, x, now))) {
            L->spare = e;
            L->stag = t;
            L->stat = x;
        }
        if (t == 0)
            return;
    }
}

/* A decision for the caller: the delay in clock ns (act_ns is a clock
 * time), the TAT in virtual ns (for cancel). */
static void fill(struct sg_decision *out, const struct sg_kl_now *r, uint64_t vdelay,
                 uint64_t now, uint64_t tat)
{
    if (out) {
        uint64_t d = sg_kl_real_ns(r, vdelay);
        out->delay_ns = d > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)d;
        out->act_ns = sg_sat_add(now, (uint64_t)out->delay_ns);
        out->tat_ns = tat;
    }
}

static int full(const struct sg_kl_handle *kh, const struct sg_kl_now *r, uint64_t now,
                struct sg_decision *out)
{
    struct sg_kl_counters *c = sg_kl_stripe(kh);
    /* relaxed: counters are statistics */
    if (kh->flags & SG_KL_ON_FULL_ALLOW) {
        atomic_fetch_add_explicit(&c->full_allowed, 1, memory_order_relaxed);
        fill(out, r, 0, now, 0);
        return SG_OK;
    }
    atomic_fetch_add_explicit(&c->full_rejected, 1, memory_order_relaxed);
    fill(out, r, kh->t0_ns, now, 0); /* entries free up as buckets refill */
    return SG_R_KL_FULL;
}

/* What one decision needs: clock and virtual now, cost and tolerance. */
struct ask {
    uint64_t now, v, inc, tol;
    int64_t max_wait;
    struct sg_kl_now r;
};

/* The GCRA step on the key's entry: 1 decided, 0 lost a race (look again). */
static int gcra(const struct sg_kl_handle *kh, const struct look *L, const struct ask *a,
                struct sg_decision *out, int *rc)
{
    struct sg_kl_counters *c = sg_kl_stripe(kh);
    uint64_t v = a->v, base = L->tat > v ? L->tat : v, nt = sg_sat_add(base, a->inc);
    uint64_t ahead = nt - v, vd = ahead > a->tol ? ahead - a->tol : 0;
    uint64_t d = vd ? sg_kl_real_ns(&a->r, vd) : 0;
    if (vd > 0 && (d > (uint64_t)INT64_MAX || (int64_t)d > a->max_wait)) {
        atomic_fetch_add_explicit(&c->rejected, 1, memory_order_relaxed);
        fill(out, &a->r, vd, a->now, L->tat);
        *rc = SG_R_RATE_LIMITED;
        return 1;
    }
    if (!sg_kl_cas(L->hit, L->tag, L->tat, L->tag, nt))
        return 0;
    atomic_fetch_add_explicit(&c->accepted, 1, memory_order_relaxed);
    if (vd > 0)
        atomic_fetch_add_explicit(&c->waited, 1, memory_order_relaxed);
    fill(out, &a->r, vd, a->now, nt);
    *rc = SG_OK;
    return 1;
}

/* Gives the key an entry: CAS the spare to (key, PENDING, now), then settle. */
static void insert(const struct sg_kl_handle *kh, uint64_t home, uint64_t fp, uint64_t now,
                   const struct look *L)
{
    struct sg_kl_counters *c = sg_kl_stripe(kh);
    if (!sg_kl_cas(L->spare, L->stag, L->stat, fp | KT_PENDING, now))
        return; /* someone else changed it: look again */
    atomic_fetch_add_explicit(&c->inserted, 1, memory_order_relaxed);
    uint32_t st = KT_STATE(L->stag);
    if (st == KT_LIVE || st == KT_PENDING)
        atomic_fetch_add_explicit(&c->evicted, 1, memory_order_relaxed);
    sg_kl_settle(kh, home, fp);
}

static int decide(const struct sg_kl_handle *kh, uint64_t now, uint64_t hash, uint64_t cp,
                  int64_t max_wait, struct sg_decision *out)
{
    uint64_t cost = cp >> 2;
    if (!kh)
        return SG_E_ARG;
    struct sg_kl_handle k = *kh; /* read once: a close() in another thread clears
                                  * kh->table; the range stays mapped (detached) */
    kh = &k;
    if (!kh->table || cost == 0)
        return SG_E_ARG;
    struct ask a;
    sg_kl_rate_now(kh, now, &a.r);
    a.now = now;
    a.v = a.r.vnow;
    a.inc = sg_sat_mul(cost, kh->t0_ns);
    a.tol = a.r.tol[cp & 3];
    a.max_wait = max_wait;
    if (a.inc > a.tol)
        return SG_E_COST; /* can never conform */
    uint64_t fp = KT_FP(hash), home = home_of(kh, hash);
    struct look L;
    for (int r = 0; r < ROUNDS; r++) {
        look(kh, home, fp, a.v, &L);
        int rc;
        if (L.hit && KT_STATE(L.tag) == KT_PENDING)
            sg_kl_settle(kh, home, fp); /* help the insert finish, then decide */
        else if (L.hit && gcra(kh, &L, &a, out, &rc))
            return rc;
        else if (!L.hit && !L.spare)
            return full(kh, &a.r, now, out);
        else if (!L.hit)
            insert(kh, home, fp, a.v, &L);
    }
    return SG_E_BUSY;
}

static inline uint64_t hash_key(const struct sg_kl_handle *kh, const char *key, uint64_t len)
{
    return sg_siphash24(kh->k0, kh->k1, key, len);
}

int sg_kl_decide_at(const struct sg_kl_handle *kh, uint64_t now, const char *key, uint64_t len,
                    uint64_t cp, int64_t max_wait_ns, struct sg_decision *out)
{
    if (!kh || (!key && len))
        return SG_E_ARG;
    return decide(kh, now, hash_key(kh, key, len), cp, max_wait_ns, out);
}

int sg_kl_allow(const struct sg_kl_handle *kh, const char *key, uint64_t len, uint64_t cp)
{
    return decide(kh, sg_kl_now(kh), hash_key(kh, key, len), cp, -1, NULL);
}

int sg_kl_reserve(const struct sg_kl_handle *kh, const char *key, uint64_t len, uint64_t cp,
                  int64_t max_wait_ns, struct sg_decision *out)
{
    return decide(kh, sg_kl_now(kh), hash_key(kh, key, len), cp, max_wait_ns, out);
}

/* Gives back a reservation not yet due (as sg_limiter_cancel_at): its cost
 * minus what was reserved after it, never below "full". A key whose entry
 * is gone (reused: its bucket was full) has nothing to give back. */
int sg_kl_cancel_at(const struct sg_kl_handle *kh, uint64_t now, const char *key, uint64_t len,
                    uint64_t cp, const struct sg_decision *d)
{
    if (!kh)
        return SG_E_ARG;
    struct sg_kl_handle k = *kh; /* read once: a close() in another thread clears
                                  * kh->table; the range stays mapped (detached) */
    kh = &k;
    if (!kh->table || !d || (cp >> 2) == 0 || (!key && len))
        return SG_E_ARG;
    if (now >= d->act_ns || d->delay_ns < 0)
        return SG_OK;
    uint64_t hash = hash_key(kh, key, len), fp = KT_FP(hash), home = home_of(kh, hash);
    uint64_t inc = sg_sat_mul(cp >> 2, kh->t0_ns);
    struct sg_kl_now rn;
    sg_kl_rate_now(kh, now, &rn);
    now = rn.vnow; /* TATs are virtual */
    struct look L;
    for (int r = 0; r < ROUNDS; r++) {
        look(kh, home, fp, now, &L);
        if (!L.hit)
            return SG_OK;
        uint64_t later = L.tat > d->tat_ns ? L.tat - d->tat_ns : 0;
        uint64_t refund = inc > later ? inc - later : 0;
        if (refund == 0)
            return SG_OK;
        uint64_t nt = L.tat - refund;
        if (nt > L.tat || nt < now)
            nt = now;
        if (sg_kl_cas(L.hit, L.tag, L.tat, L.tag, nt)) {
            struct sg_kl_counters *c = sg_kl_stripe(kh);
            atomic_fetch_sub_explicit(&c->accepted, 1, memory_order_relaxed);
            return SG_OK;
        }
    }
    return SG_E_BUSY;
}

/* Reads the key's tokens (at its priority) and the delay until cost would
 * conform; changes nothing. A key without an entry has a full bucket. */
int sg_kl_peek_at(const struct sg_kl_handle *kh, uint64_t now, const char *key, uint64_t len,
                  uint64_t cp, double *tokens, int64_t *delay_ns)
{
    if (!kh)
        return SG_E_ARG;
    struct sg_kl_handle k = *kh; /* read once: a close() in another thread clears
                                  * kh->table; the range stays mapped (detached) */
    kh = &k;
    if (!kh->table || !tokens || !delay_ns || (cp >> 2) == 0 || (!key && len))
        return SG_E_ARG;
    struct sg_kl_now rn;
    sg_kl_rate_now(kh, now, &rn);
    now = rn.vnow; /* TATs are virtual */
    uint64_t hash = hash_key(kh, key, len), T = kh->t0_ns, tol = rn.tol[cp & 3];
    struct look L;
    look(kh, home_of(kh, hash), KT_FP(hash), now, &L);
    uint64_t tat = L.hit ? L.tat : 0, ahead = tat > now ? tat - now : 0;
    *tokens = ahead >= tol ? 0.0 : (double)(tol - ahead) / (double)T;
    uint64_t nt = sg_sat_add(tat > now ? tat : now, sg_sat_mul(cp >> 2, T)) - now;
    uint64_t d = nt > tol ? sg_kl_real_ns(&rn, nt - tol) : 0;
    *delay_ns = d > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)d;
    return SG_OK;
}
