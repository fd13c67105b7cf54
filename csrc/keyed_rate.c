/*
 * keyed_rate.c -- a keyed table's rate: virtual time and rate changes.
 *
 * TATs of a keyed table are virtual ns (layout.h): V(now) = v + (now - c) *
 * T0 / T. A rate record (c, v, T, burst, tolerances) is published
 * whole through a double buffer and a selector (seqlock, as the policy of a
 * slot); a change writes the record that is not live under the writer lease
 * and then bumps the selector, so a reader sees the old record or the new
 * one, never a mix. The lease is taken over only when its holder is proven
 * dead (Python: pid + start time), so a writer that was merely stopped can
 * never resume into a record someone else now owns.
 */
#include <string.h>

#include "layout.h"

void sg_kl_tolerances(uint64_t t0, uint64_t burst, const uint32_t share[SG_PRIORITIES],
                      sg_a64 tol[SG_PRIORITIES])
{
    for (int i = 0; i < SG_PRIORITIES; i++) {
        uint32_t s = share[i] > 4 * SG_PPM ? 4 * SG_PPM : share[i];
        uint64_t t = sg_mul_ppm(sg_sat_mul(t0, burst), s);
        ST(&tol[i], t < t0 ? t0 : t); /* every priority may take one token */
    }
}

void sg_kl_rate_init(struct sg_kl_rate *r, uint64_t t0, uint64_t burst, uint64_t fingerprint,
                     const uint32_t share[SG_PRIORITIES])
{
    ST(&r->c_ns, 0);
    ST(&r->v_ns, 0);
    ST(&r->emission_ns, t0);
    ST(&r->burst, burst);
    ST(&r->fingerprint, fingerprint);
    sg_kl_tolerances(t0, burst, share, r->tol);
}

/* Reads the live record and V(now); every value is made usable (the table
 * is untrusted: a scribbled record still gives valid decisions). */
void sg_kl_rate_now(const struct sg_kl_handle *kh, uint64_t now, struct sg_kl_now *out)
{
    struct sg_kl_header *h = kh->table;
    uint64_t c = 0, v = 0;
    for (int i = 0; i < 16; i++) {
        /* A21: pairs with R21 in sg_kl_set_rate_at() */
        uint64_t sel = atomic_load_explicit(&h->rsel, memory_order_acquire);
        struct sg_kl_rate *r = &h->rate[sel & 1];
        c = LD(&r->c_ns);
        v = LD(&r->v_ns);
        out->emission_ns = LD(&r->emission_ns);
        out->burst = LD(&r->burst);
        out->fingerprint = LD(&r->fingerprint);
        for (int k = 0; k < SG_PRIORITIES; k++)
            out->tol[k] = LD(&r->tol[k]);
        atomic_thread_fence(memory_order_acquire);
        if (LD(&h->rsel) == sel)
            break;
    }
    out->t0 = kh->t0_ns;
    if (out->emission_ns == 0)
        out->emission_ns = 1;
    for (int k = 0; k < SG_PRIORITIES; k++)
        if (out->tol[k] < kh->t0_ns)
            out->tol[k] = kh->t0_ns;
    out->vnow = v;
    if (now > c && out->emission_ns == out->t0 && c == 0 && v == 0)
        out->vnow = now; /* the rate never changed: no division on the hot path */
    else if (now > c) {
        sg_u128 d = (sg_u128)(now - c) * out->t0 / out->emission_ns;
        out->vnow = d > (sg_u128)(UINT64_MAX - v) ? UINT64_MAX : v + (uint64_t)d;
    }
}

/* A span of virtual ns as clock ns, rounded up (a delay to sleep). */
uint64_t sg_kl_real_ns(const struct sg_kl_now *r, uint64_t virt)
{
    if (r->emission_ns == r->t0)
        return virt;
    sg_u128 x = ((sg_u128)virt * r->emission_ns + r->t0 - 1) / r->t0;
    return x > UINT64_MAX ? UINT64_MAX : (uint64_t)x;
}

/* Changes the rate and burst at time now, keeping every key's debt in
 * tokens. lease: the caller's (pid << 32 | start time), never 0. */
int sg_kl_set_rate_at(const struct sg_kl_handle *kh, uint64_t now, uint64_t emission_ns,
                      uint32_t burst, uint64_t fingerprint, uint64_t lease)
{
    if (!kh || !kh->table || emission_ns == 0 || burst == 0 || lease == 0)
        return SG_E_ARG;
    struct sg_kl_header *h = kh->table;
    uint64_t cur = 0;
    /* acq_rel: owning the lease orders our record writes after the previous
     * writer's; on failure the lease is someone else's. */
    if (!atomic_compare_exchange_strong_explicit(&h->lease, &cur, lease, memory_order_acq_rel,
                                                 memory_order_acquire))
        return SG_E_BUSY;
    struct sg_kl_now r;
    sg_kl_rate_now(kh, now, &r); /* V(now) under the old rate */
    uint64_t sel = LD(&h->rsel);  /* relaxed: the lease orders writers */
    struct sg_kl_rate *n = &h->rate[(sel + 1) & 1];
    ST(&n->c_ns, now);
    ST(&n->v_ns, r.vnow);
    ST(&n->emission_ns, emission_ns);
    ST(&n->burst, burst);
    ST(&n->fingerprint, fingerprint);
    sg_kl_tolerances(kh->t0_ns, burst, h->share_ppm, n->tol);
    /* R21: publishes the record just written; pairs with A21. */
    atomic_store_explicit(&h->rsel, sel + 1, memory_order_release);
    atomic_store_explicit(&h->lease, 0, memory_order_release);
    return SG_OK;
}

/* Frees the writer lease `lease` (its holder was proven dead by the caller). */
int sg_kl_takeover(const struct sg_kl_handle *kh, uint64_t lease)
{
    if (!kh || !kh->table || lease == 0)
        return SG_E_ARG;
    struct sg_kl_header *h = kh->table;
    /* release: nothing to publish; acquire on failure to report BUSY */
    if (atomic_compare_exchange_strong_explicit(&h->lease, &lease, 0, memory_order_release,
                                                memory_order_acquire))
        return SG_OK;
    return SG_E_BUSY;
}
