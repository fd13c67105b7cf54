/*
 * table.c -- the slot table: open addressing on FNV-1a of the name.
 *
 * Slot lifecycle by CAS on the state word:
 *   EMPTY -> CLAIMED(pid, time) -> READY
 * A claim older than `stale_ns` is taken over by CAS (its owner died or
 * stalled); a younger one makes the caller retry (SG_E_BUSY) after judging
 * the claimant's liveness itself. Two processes registering one name at
 * once: the second sees the first's CLAIMED slot on its probe path and
 * waits, so the name ends in ONE slot. Slots are never freed.
 */
#include <string.h>

#include "layout.h"

#define CLAIM_SHIFT 20

static uint64_t fnv1a(const char *p, uint32_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (uint32_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static int check_name(const char *name, uint32_t n)
{
    if (!name || n == 0 || n > SG_NAME_MAX)
        return SG_E_ARG;
    for (uint32_t i = 0; i < n; i++)
        if (name[i] == 0)
            return SG_E_ARG;
    return SG_OK;
}

static int name_matches(const struct sg_slot *s, uint64_t hash, const char *name, uint32_t n)
{
    /* Fields below were published before READY (R1) and are read after A1. */
    return s->name_hash == hash && s->name_len == n && memcmp(s->name, name, n) == 0;
}

static uint32_t claim_age_ms(uint64_t w, uint64_t now)
{
    uint32_t units = (uint32_t)(now >> CLAIM_SHIFT) - SK_TIME(w); /* serial */
    return (uint32_t)(((uint64_t)units << CLAIM_SHIFT) / 1000000ULL);
}

static void zero_area(sg_a64 *w, size_t bytes)
{
    for (size_t i = 0; i < bytes / sizeof *w; i++)
        ST(&w[i], 0);
}

static void fill_slot(struct sg_slot *s, uint64_t hash, const char *name, uint32_t n,
                      const struct sg_policy_view *pol, uint64_t now)
{
    /* We own the claim: nobody reads a non-READY slot, so plain writes and
     * relaxed stores are enough; R1 below publishes them. A dead earlier
     * claimant may have left anything here, so every field is rewritten. */
    memset(s->name, 0, sizeof s->name);
    memcpy(s->name, name, n);
    s->name_hash = hash;
    s->name_len = n;
    ST(&s->policy_seq, 0);
    ST(&s->policy_lease, 0);
    sg_policy_store(&s->policy[0], pol);
    sg_policy_store(&s->policy[1], pol);
    ST(&s->bword, BW_MAKE(SG_CLOSED, 0, now));
    ST(&s->ho, 0);
    ST(&s->streak, 0);
    ST(&s->baseline_ppm, 0);
    ST(&s->last_fail, 0);
    ST(&s->opens, 0);
    ST(&s->wepoch, 0);
    ST(&s->judged, 0);
    for (int i = 0; i < SG_MAX_PROBES; i++)
        ST(&s->lease[i], 0);
    for (int i = 0; i < SG_MAX_BUCKETS; i++) {
        ST(&s->bucket[i], 0);
        ST(&s->slow[i], 0);
    }
    ST(&s->tat, 0);
    ST(&s->rchange, 0);
    for (int i = 0; i < 6; i++)
        ST(&s->rrec[i / 3][i % 3], 0);
    ST(&s->rrec[0][0], RR_MK(0, pol->emission_ns)); /* the regime's rate (rate.c) */
    for (int i = 0; i < SG_PRIORITIES; i++) {
        ST(&s->accepted[i], 0);
        ST(&s->rejected[i], 0);
        ST(&s->waited[i], 0);
    }
    ST(&s->b_success, 0);
    ST(&s->b_failure, 0);
    ST(&s->b_ignored, 0);
    ST(&s->b_rejected, 0);
    for (int i = 0; i < SG_STAT_BUCKETS; i++)
        ST(&s->lwin[i], 0);
    zero_area(s->bulkhead.w, sizeof s->bulkhead);
    zero_area(s->budget.bucket, sizeof s->budget); /* the whole area: buckets then totals */
    zero_area(s->throttle.bucket, sizeof s->throttle);
    zero_area(&s->predict.fail, sizeof s->predict);
    zero_area(s->fleet.w, sizeof s->fleet);
}

/* Fill a claimed slot and publish it; fails if our claim was taken over. */
static int publish(struct sg_header *h, struct sg_slot *s, uint64_t claim, uint64_t hash,
                   const char *name, uint32_t n, const struct sg_policy_view *pol)
{
    fill_slot(s, hash, name, n, pol, sg_clock_now(h));
    uint64_t expected = claim;
    /* R1: publishes name, hash and policy before READY; pairs with A1 in
     * probe(). CAS (not store) so a claimant that was taken over while
     * stalled cannot publish over the new owner. */
    if (!atomic_compare_exchange_strong_explicit(&s->state, &expected,
                                                 SK_MAKE(SG_SK_READY, 0, 0),
                                                 memory_order_release, memory_order_relaxed))
        return SG_E_BUSY;
    atomic_fetch_add_explicit(&h->used, 1, memory_order_relaxed); /* statistic */
    return SG_CREATED;
}

static int probe(void *base, uint64_t len, const char *name, uint32_t n,
                 const struct sg_policy_view *pol, uint32_t pid, uint64_t stale_ns,
                 uint32_t *index_out, uint64_t *claim_out)
{
    struct sg_header_view v;
    int rc = sg_segment_check(base, len, &v);
    if (rc != SG_OK)
        return rc;
    if ((rc = check_name(name, n)) != SG_OK || !index_out)
        return rc ? rc : SG_E_ARG;
    uint64_t hash = fnv1a(name, n);
    uint32_t cap = v.capacity;
    for (uint32_t i = 0; i < cap; i++) {
        uint32_t idx = (uint32_t)((hash + i) % cap);
        struct sg_slot *s = sg_slot_at(base, idx);
        /* A1: pairs with R1 in publish(). */
        uint64_t w = atomic_load_explicit(&s->state, memory_order_acquire);
    again:
        switch (SK_KIND(w)) {
        case SG_SK_READY:
            if (name_matches(s, hash, name, n)) {
                *index_out = idx;
                return SG_OK;
            }
            continue;
        case SG_SK_EMPTY:
            if (!pol)
                return SG_E_NOT_FOUND; /* lookup: the name would be here */
            break;                     /* claim it below */
        case SG_SK_CLAIMED:
            if ((uint64_t)claim_age_ms(w, sg_mono_ns()) * 1000000ULL < stale_ns) {
                *index_out = idx;
                if (claim_out)
                    *claim_out = w;
                return SG_E_BUSY;
            }
            if (!pol)
                continue; /* lookup passes a dead claim */
            break;        /* a dead or stalled claim: take it over below */
        default:
            return SG_E_CORRUPT;
        }
        uint64_t claim = SK_MAKE(SG_SK_CLAIMED, pid, sg_mono_ns() >> CLAIM_SHIFT);
        /* acq_rel: on success we own the slot; on failure w is refreshed
         * (acquire, as A1) and we look at the slot again. */
        if (atomic_compare_exchange_strong_explicit(&s->state, &w, claim, memory_order_acq_rel,
                                                    memory_order_acquire)) {
            *index_out = idx;
            return publish(base, s, claim, hash, name, n, pol);
        }
        goto again;
    }
    return pol ? SG_E_FULL : SG_E_NOT_FOUND;
}

int sg_table_register(void *base, uint64_t len, const char *name, uint32_t name_len,
                      const struct sg_policy_view *pol, uint32_t pid, uint64_t stale_ns,
                      uint32_t *index_out, uint64_t *claim_out)
{
    if (!pol)
        return SG_E_ARG;
    int rc = sg_policy_check(pol);
    if (rc != SG_OK)
        return rc;
    return probe(base, len, name, name_len, pol, pid, stale_ns, index_out, claim_out);
}

int sg_table_find(void *base, uint64_t len, const char *name, uint32_t name_len,
                  uint32_t *index_out)
{
    return probe(base, len, name, name_len, NULL, 0, 2000000000ULL, index_out, NULL);
}

/* Take over a claim the caller judged dead (its pid is gone). */
int sg_table_takeover(void *base, uint64_t len, uint32_t index, uint64_t claim_word)
{
    struct sg_header_view v;
    int rc = sg_segment_check(base, len, &v);
    if (rc != SG_OK)
        return rc;
    if (index >= v.capacity || SK_KIND(claim_word) != SG_SK_CLAIMED)
        return SG_E_ARG;
    struct sg_slot *s = sg_slot_at(base, index);
    uint64_t mine = SK_MAKE(SG_SK_EMPTY, 0, 0);
    /* Back to EMPTY: the next registrant claims it through the normal path.
     * acq_rel: pairs with the claimant's CAS. */
    if (!atomic_compare_exchange_strong_explicit(&s->state, &claim_word, mine,
                                                 memory_order_acq_rel, memory_order_relaxed))
        return SG_E_BUSY;
    return SG_OK;
}

int sg_slot_snapshot(const void *base, uint64_t len, uint32_t index, struct sg_slot_view *out)
{
    struct sg_header_view v;
    int rc = sg_segment_check(base, len, &v);
    if (rc != SG_OK)
        return rc;
    if (!out || index >= v.capacity)
        return SG_E_ARG;
    struct sg_slot *s = sg_slot_at(base, index);
    memset(out, 0, sizeof *out);
    uint64_t w = atomic_load_explicit(&s->state, memory_order_acquire); /* A1 */
    out->kind = SK_KIND(w);
    if (out->kind == SG_SK_CLAIMED) {
        out->claim_pid = SK_PID(w);
        out->claim_age_ms = claim_age_ms(w, sg_mono_ns());
    } else if (out->kind == SG_SK_READY) {
        uint32_t n = s->name_len;
        if (n == 0 || n > SG_NAME_MAX)
            return SG_E_CORRUPT; /* untrusted: never copy past the field */
        memcpy(out->name, s->name, n);
        out->name_len = n;
        out->policy_seq = atomic_load_explicit(&s->policy_seq, memory_order_acquire);
    } else if (out->kind != SG_SK_EMPTY) {
        return SG_E_CORRUPT;
    }
    return SG_OK;
}
