/*
 * table.c -- the slot table: open addressing on FNV-1a of the name.
 *
 * Slot lifecycle by CAS on the state word (layout.h):
 *   EMPTY or DELETED -> CLAIMED(pid, time) -> READY(incarnation) -> DELETED
 *   CLAIMED -> ABANDONED (owner alive but stalled) -> DELETED (owner proven
 *   dead, or the owner itself once its publish failed)
 * A name's chain runs from its home slot to the first EMPTY; DELETED and
 * ABANDONED slots are passed. A CLAIMED slot on the chain makes the caller
 * wait (SG_E_BUSY): its name is not known yet. The caller (Python, with
 * psutil) judges the claimant: proven dead (pid + start time) -> takeover;
 * alive past a bound -> abandon. Age alone never hands the slot to another
 * owner (DESIGN round 2), so a claimant resuming inside its fill writes
 * only into a slot nobody else owns, and its publish CAS fails.
 *
 * One name, one slot: a claimant re-scans its whole chain after its claim
 * (a seq_cst fence between the two, so of two overlapping claimants at
 * least one sees the other) and gives its claim up if it finds the name
 * READY or another claim.
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

int sg_slot_named(const struct sg_slot *s, const char *name, uint32_t n)
{
    return check_name(name, n) == SG_OK && name_matches(s, fnv1a(name, n), name, n);
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

/* Gives up our claim (or the ABANDONED form of it): the slot is reusable. */
static void release_claim(struct sg_slot *s, uint64_t claim)
{
    uint64_t w = claim;
    /* release: our fill writes happen before the slot is reusable; on
     * failure w is refreshed and tells whether it was abandoned. */
    if (!atomic_compare_exchange_strong_explicit(&s->state, &w, SK_DELETED, memory_order_release,
                                                 memory_order_relaxed)) {
        w = (claim & ~(3ULL << 62)) | ((uint64_t)SG_SK_ABANDONED << 62);
        atomic_compare_exchange_strong_explicit(&s->state, &w, SK_DELETED, memory_order_release,
                                                memory_order_relaxed);
    }
}

/* Fill a claimed slot and publish it as a new incarnation; SG_E_BUSY if our
 * claim was abandoned meanwhile (the slot is then given up). */
static int publish(struct sg_header *h, struct sg_slot *s, uint64_t claim, uint64_t hash,
                   const char *name, uint32_t n, const struct sg_policy_view *pol)
{
    sg_test_stall("fill");
    fill_slot(s, hash, name, n, pol, sg_clock_now(h));
    /* relaxed: only the claim owner bumps it; R1 below publishes it */
    uint64_t inc = (atomic_fetch_add_explicit(&s->incarn, 1, memory_order_relaxed) + 1) & 0xffffffffu;
    uint64_t expected = claim;
    /* R1: publishes name, hash and policy before READY; pairs with A1 in
     * scan() and sg_handle_init(). CAS (not store): an abandoned claimant
     * cannot publish. */
    if (!atomic_compare_exchange_strong_explicit(&s->state, &expected,
                                                 SK_MAKE(SG_SK_READY, 0, inc ? inc : 1),
                                                 memory_order_release, memory_order_relaxed)) {
        release_claim(s, claim);
        return SG_E_BUSY;
    }
    atomic_fetch_add_explicit(&h->used, 1, memory_order_relaxed); /* statistic */
    return SG_CREATED;
}

struct chain {
    uint32_t idx;    /* found name, or the claim in the way */
    uint64_t word;   /* that slot's word */
    uint32_t free;   /* first reusable slot (cap: none) */
    uint64_t fword;  /* its word */
};

/* Walks name's chain. SG_OK: READY with the name at c->idx. SG_E_BUSY: a
 * claim (not `skip`) at c->idx (lookups pass claims). SG_E_NOT_FOUND:
 * not there; c->free names the first reusable slot. */
static int scan(void *base, uint32_t cap, uint64_t hash, const char *name, uint32_t n,
                uint32_t skip, int lookup, struct chain *c)
{
    c->free = cap;
    for (uint32_t i = 0; i < cap; i++) {
        uint32_t idx = (uint32_t)((hash + i) % cap);
        struct sg_slot *s = sg_slot_at(base, idx);
        /* A1: pairs with R1 in publish(); seq_cst after a claim (see top) */
        uint64_t w = atomic_load_explicit(&s->state, memory_order_seq_cst);
        if (idx == skip)
            continue;
        switch (SK_KIND(w)) {
        case SG_SK_READY:
            if (name_matches(s, hash, name, n)) {
                c->idx = idx, c->word = w;
                return SG_OK;
            }
            continue;
        case SG_SK_EMPTY:
            if (w != 0 && w != SK_DELETED)
                return SG_E_CORRUPT;
            if (c->free == cap)
                c->free = idx, c->fword = w;
            if (w == 0)
                return SG_E_NOT_FOUND; /* the chain ends here */
            continue;
        case SG_SK_CLAIMED:
            if (lookup)
                continue;
            c->idx = idx, c->word = w;
            return SG_E_BUSY;
        default:
            continue; /* ABANDONED: nobody's, skipped */
        }
    }
    return SG_E_NOT_FOUND;
}

static int probe(void *base, uint64_t len, const char *name, uint32_t n,
                 const struct sg_policy_view *pol, uint32_t pid, uint32_t *index_out,
                 uint64_t *claim_out)
{
    struct sg_header_view v;
    int rc = sg_segment_check(base, len, &v);
    if (rc != SG_OK)
        return rc;
    if ((rc = check_name(name, n)) != SG_OK || !index_out)
        return rc ? rc : SG_E_ARG;
    uint64_t hash = fnv1a(name, n);
    struct chain c;
    for (int tries = 0; tries < 64; tries++) {
        rc = scan(base, v.capacity, hash, name, n, v.capacity, pol == NULL, &c);
        if (rc != SG_E_NOT_FOUND || pol == NULL)
            break;
        if (c.free == v.capacity)
            return SG_E_FULL;
        struct sg_slot *s = sg_slot_at(base, c.free);
        uint64_t claim = SK_MAKE(SG_SK_CLAIMED, pid, sg_mono_ns() >> CLAIM_SHIFT);
        /* seq_cst: the claim is ordered before our re-scan's loads (and
         * another claimant's) ; on failure the slot changed: scan again. */
        if (!atomic_compare_exchange_strong_explicit(&s->state, &c.fword, claim,
                                                     memory_order_seq_cst, memory_order_relaxed))
            continue;
        *index_out = c.free;
        rc = scan(base, v.capacity, hash, name, n, c.free, 0, &c);
        if (rc != SG_E_NOT_FOUND) { /* the name elsewhere, or a claim: not ours to take */
            release_claim(s, claim);
            break;
        }
        rc = publish(base, s, claim, hash, name, n, pol);
        if (rc != SG_E_BUSY)
            return rc;
    }
    if (rc == SG_OK || rc == SG_E_BUSY) {
        *index_out = c.idx;
        if (claim_out)
            *claim_out = c.word;
    }
    return rc;
}

int sg_table_register(void *base, uint64_t len, const char *name, uint32_t name_len,
                      const struct sg_policy_view *pol, uint32_t pid, uint32_t *index_out,
                      uint64_t *claim_out)
{
    if (!pol)
        return SG_E_ARG;
    int rc = sg_policy_check(pol);
    if (rc != SG_OK)
        return rc;
    return probe(base, len, name, name_len, pol, pid, index_out, claim_out);
}

int sg_table_find(void *base, uint64_t len, const char *name, uint32_t name_len,
                  uint32_t *index_out)
{
    return probe(base, len, name, name_len, NULL, 0, index_out, NULL);
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
    out->word = w;
    if (out->kind == SG_SK_ABANDONED)
        out->kind = SG_SLOT_ABANDONED;
    else if (w == SK_DELETED)
        out->kind = SG_SLOT_DELETED;
    if (out->kind == SG_SK_CLAIMED || out->kind == SG_SLOT_ABANDONED) {
        out->claim_pid = SK_PID(w);
        out->claim_age_ms = claim_age_ms(w, sg_mono_ns());
    } else if (out->kind == SG_SK_READY) {
        uint32_t n = s->name_len;
        if (n == 0 || n > SG_NAME_MAX)
            return SG_E_CORRUPT; /* untrusted: never copy past the field */
        memcpy(out->name, s->name, n);
        out->name_len = n;
        out->policy_seq = atomic_load_explicit(&s->policy_seq, memory_order_acquire);
    } else if (out->kind == SG_SK_EMPTY && w != 0) {
        return SG_E_CORRUPT;
    }
    return SG_OK;
}
