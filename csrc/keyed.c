/*
 * keyed.c -- keyed limiter tables: creation, validation, handles, settling
 * of concurrent inserts, and the statistics scan. The decisions themselves
 * are in keyed_gcra.c.
 *
 * A key lives in one 16-byte entry (layout.h) inside its window: the
 * SG_KL_PROBES entries from its home (linear probing on SipHash-2-4 of the
 * key under the table's random key). No lock anywhere:
 *
 * - Find: scan the window up to the first EMPTY entry; the key's entry is
 *   the lowest LIVE or PENDING one carrying its fingerprint.
 * - Insert (key absent): CAS the first reusable entry (EMPTY, RETIRED, or
 *   any entry whose TAT <= now: a full bucket, exactly like a key never
 *   seen) to (key, PENDING, now), then settle.
 * - Settle: after a full barrier, scan the window again; fold every other
 *   entry of the key into the lowest one and mark that one LIVE. Nobody
 *   decides on a PENDING entry: a finder settles it first.
 *
 * Why settling: two processes can insert the same absent key into two
 * different entries (an entry before the first one's choice expires between
 * the two scans). Each inserter CASes, then fences, then rescans the whole
 * window, so at least one of them sees the other (store -> fence -> load on
 * both sides). Folding is "TAT of the lower = max(both TATs), then retire
 * the higher by a CAS that fails if the higher changed": max is idempotent,
 * so any process may repeat a fold a killed process left half done, and a
 * decision on the higher entry either lands before the retire (and is
 * folded again) or fails its CAS and finds the lower entry. When two
 * entries of a key meet, one of them is still PENDING (no decision made
 * on it, TAT <= its insert time), so max loses no charge: the per-key bound
 * stays exact.
 */
#include <string.h>

#include "layout.h"

#define SETTLE_ROUNDS 64

uint64_t sg_kl_size(uint32_t capacity)
{
    uint64_t slots = 2ULL * capacity < SG_KL_PROBES ? SG_KL_PROBES : 2ULL * capacity;
    return sizeof(struct sg_kl_header) + slots * sizeof(struct sg_kl_entry);
}

/* Called once by the creator: the object is fresh (ftruncate: zero pages,
 * allocated lazily), so only the header is written. */
int sg_kl_init(void *base, uint64_t len, const struct sg_kl_config *c, uint32_t pid,
               uint64_t unix_ns)
{
    if (!base || ((uintptr_t)base & 15) || !c || c->capacity == 0 ||
        c->capacity > SG_KL_MAX_CAPACITY ||
        c->emission_ns == 0 || c->burst == 0 || len < sg_kl_size(c->capacity))
        return SG_E_ARG;
    for (int i = 0; i < SG_PRIORITIES; i++)
        if (c->share_ppm[i] == 0 || c->share_ppm[i] > 4 * SG_PPM)
            return SG_E_ARG;
    struct sg_kl_header *h = base;
    h->magic = SG_KL_MAGIC;
    h->version = SG_KL_VERSION;
    h->header_size = sizeof *h;
    h->total_size = sg_kl_size(c->capacity);
    h->slots = (h->total_size - sizeof *h) / sizeof(struct sg_kl_entry);
    h->capacity = c->capacity;
    h->entry_size = sizeof(struct sg_kl_entry);
    h->emission_ns = c->emission_ns;
    h->burst = c->burst;
    h->flags = c->flags & SG_KL_ON_FULL_ALLOW;
    memcpy(h->share_ppm, c->share_ppm, sizeof h->share_ppm);
    h->seed[0] = c->seed0;
    h->seed[1] = c->seed1;
    h->fingerprint = c->fingerprint;
    h->created_unix_ns = unix_ns;
    h->creator_pid = pid;
    sg_kl_rate_init(&h->rate[0], c->emission_ns, c->burst, c->fingerprint, c->share_ppm);
    ST(&h->rsel, 0);
    ST(&h->lease, 0);
    /* R20: publishes the fields above; pairs with A20 in sg_kl_check(). */
    atomic_store_explicit(&h->init, SG_INIT_READY, memory_order_release);
    return SG_OK;
}

static void counters(struct sg_kl_header *h, struct sg_kl_view *out)
{
    /* relaxed: statistics, no data depends on them; a view sums the stripes */
    for (int i = 0; i < SG_KL_STRIPES; i++) {
        struct sg_kl_counters *c = &h->stripe[i];
        out->accepted += LD(&c->accepted);
        out->rejected += LD(&c->rejected);
        out->waited += LD(&c->waited);
        out->full_rejected += LD(&c->full_rejected);
        out->full_allowed += LD(&c->full_allowed);
        out->inserted += LD(&c->inserted);
        out->evicted += LD(&c->evicted);
        out->folded += LD(&c->folded);
    }
    out->rate_changes = LD(&h->rsel);
    out->lease = LD(&h->lease);
}

/* The live rate record into the view (the identity fields are creation's). */
static void live_rate(struct sg_kl_header *h, uint64_t t0, struct sg_kl_view *out)
{
    struct sg_kl_handle tmp;
    struct sg_kl_now r;
    memset(&tmp, 0, sizeof tmp);
    tmp.table = h;
    tmp.t0_ns = t0;
    sg_kl_rate_now(&tmp, 0, &r);
    out->emission_ns = r.emission_ns;
    out->burst = r.burst > UINT32_MAX ? UINT32_MAX : r.burst ? (uint32_t)r.burst : 1;
    out->fingerprint = r.fingerprint;
}

int sg_kl_check(const void *base, uint64_t len, struct sg_kl_view *out)
{
    if (!base || !out || ((uintptr_t)base & 15))
        return SG_E_ARG; /* entries must be 16-byte aligned for the 128-bit CAS */
    if (len < sizeof(struct sg_kl_header))
        return SG_E_TRUNCATED;
    struct sg_kl_header *h = (struct sg_kl_header *)base;
    /* A20: pairs with R20; after it the identity lines are stable. */
    if (atomic_load_explicit(&h->init, memory_order_acquire) != SG_INIT_READY)
        return h->magic == 0 ? SG_E_NOT_READY : SG_E_MAGIC;
    if (h->magic != SG_KL_MAGIC)
        return SG_E_MAGIC;
    if (h->version != SG_KL_VERSION)
        return SG_E_VERSION;
    /* each claimed size read once: the header may be scribbled meanwhile */
    uint32_t cap = h->capacity;
    uint64_t slots = h->slots, total = h->total_size, T = h->emission_ns;
    if (h->header_size != sizeof *h || h->entry_size != sizeof(struct sg_kl_entry) || cap == 0 ||
        cap > SG_KL_MAX_CAPACITY || total != sg_kl_size(cap) ||
        slots != (total - sizeof *h) / sizeof(struct sg_kl_entry) || T == 0 || h->burst == 0)
        return SG_E_SIZE;
    if (total > len)
        return SG_E_TRUNCATED;
    memset(out, 0, sizeof *out);
    out->total_size = total;
    out->slots = slots;
    out->created_unix_ns = h->created_unix_ns;
    out->capacity = cap;
    memcpy(out->share_ppm, h->share_ppm, sizeof out->share_ppm);
    out->flags = h->flags & SG_KL_ON_FULL_ALLOW;
    out->creator_pid = h->creator_pid;
    live_rate(h, T, out);
    counters(h, out);
    return SG_OK;
}

int sg_kl_handle_init(struct sg_kl_handle *kh, void *base, uint64_t len, const void *seg_base,
                      uint64_t seg_len)
{
    struct sg_kl_view v;
    struct sg_header_view sv;
    if (!kh)
        return SG_E_ARG;
    int rc = sg_kl_check(base, len, &v);
    if (rc == SG_OK)
        rc = sg_segment_check(seg_base, seg_len, &sv);
    if (rc != SG_OK)
        return rc;
    const struct sg_kl_header *h = base;
    uint64_t t0 = h->emission_ns; /* checked above; read once more, so check again */
    if (t0 == 0)
        return SG_E_SIZE;
    memset(kh, 0, sizeof *kh);
    kh->table = base;
    kh->map_len = len;
    kh->slots = v.slots;
    kh->k0 = h->seed[0];
    kh->k1 = h->seed[1];
    kh->t0_ns = t0;
    kh->flags = v.flags;
    if (sv.flags & SG_HDR_MANUAL_CLOCK)
        kh->clock = (void *)&((struct sg_header *)seg_base)->manual_now_ns;
    return SG_OK;
}

uint64_t sg_kl_now(const struct sg_kl_handle *kh)
{
    if (kh->clock) /* acquire: pairs with R9 (sg_clock_set) */
        return atomic_load_explicit((sg_a64 *)kh->clock, memory_order_acquire);
    return sg_mono_ns();
}

static int owned(uint64_t tag, uint64_t fp)
{
    uint32_t st = KT_STATE(tag);
    return KT_FP(tag) == fp && (st == KT_LIVE || st == KT_PENDING);
}

/* Folds entry hi of key fp into entry lo (see the top of this file).
 * Returns 0 when hi no longer holds the key, -1 when lo stopped holding it
 * (the caller scans again). */
static int fold(struct sg_kl_counters *c, struct sg_kl_entry *lo, struct sg_kl_entry *hi,
                uint64_t fp)
{
    for (int tries = 0; tries < SETTLE_ROUNDS; tries++) {
        uint64_t th, xh, tl, xl;
        sg_kl_load(hi, &th, &xh);
        if (!owned(th, fp))
            return 0;
        sg_kl_load(lo, &tl, &xl);
        if (!owned(tl, fp))
            return -1;
        /* lo's TAT = max(lo, hi): idempotent, so a repeat by a helper is harmless */
        if (xh > xl && !sg_kl_cas(lo, tl, xl, tl, xh))
            continue;
        /* retire hi only as it was when merged; a decision on it meanwhile
         * makes this fail and the loop merges its new TAT */
        if (sg_kl_cas(hi, th, xh, KT_RETIRED, 0)) {
            atomic_fetch_add_explicit(&c->folded, 1, memory_order_relaxed);
            return 0;
        }
    }
    return -1;
}

static int settle_once(const struct sg_kl_handle *kh, uint64_t home, uint64_t fp)
{
    struct sg_kl_counters *c = sg_kl_stripe(kh);
    struct sg_kl_entry *low = NULL;
    for (uint32_t i = 0; i < SG_KL_PROBES; i++) {
        struct sg_kl_entry *e = sg_kl_at(kh, home, i);
        uint64_t t, x;
        sg_kl_load(e, &t, &x);
        if (t == 0)
            break;
        if (!owned(t, fp))
            continue;
        if (!low)
            low = e;
        else if (fold(c, low, e, fp) < 0)
            return -1;
    }
    if (!low)
        return 0;
    uint64_t t, x;
    sg_kl_load(low, &t, &x);
    if (!owned(t, fp))
        return -1;
    if (KT_STATE(t) == KT_LIVE || sg_kl_cas(low, t, x, fp | KT_LIVE, x))
        return 0;
    return -1;
}

void sg_kl_settle(const struct sg_kl_handle *kh, uint64_t home, uint64_t fp)
{
    /* F1: orders our insert CAS before the scan below (Dekker pair with the
     * other inserter's F1); the CAS is a full barrier on x86 already. */
    atomic_thread_fence(memory_order_seq_cst);
    for (int r = 0; r < SETTLE_ROUNDS; r++)
        if (settle_once(kh, home, fp) == 0)
            return;
}

static void top_insert(struct sg_kl_entry_view *top, uint32_t max, uint32_t *n,
                       const struct sg_kl_entry_view *v)
{
    /* the caller checked that v beats the smallest when the array is full:
     * that one drops off the end */
    uint32_t i = *n < max ? (*n)++ : max - 1;
    while (i > 0 && top[i - 1].ahead_ns < v->ahead_ns) {
        top[i] = top[i - 1];
        i--;
    }
    top[i] = *v;
}

/* Counts entries and keeps the top_max with the most debt (hottest keys).
 * Reads only; a statistic (entries change while it runs). */
int sg_kl_scan_at(const struct sg_kl_handle *kh, uint64_t now, uint32_t top_max,
                  struct sg_kl_entry_view *top, struct sg_kl_scan *out)
{
    if (!kh)
        return SG_E_ARG;
    struct sg_kl_handle k = *kh; /* read once: a close() in another thread clears
                                  * kh->table; the range stays mapped (detached) */
    kh = &k;
    if (!kh->table || !out || top_max > SG_KL_TOP_MAX || (top_max && !top))
        return SG_E_ARG;
    memset(out, 0, sizeof *out);
    struct sg_kl_now r;
    sg_kl_rate_now(kh, now, &r);
    now = r.vnow; /* TATs are virtual */
    uint32_t n = 0;
    for (uint64_t i = 0; i < kh->slots; i++) {
        uint64_t t, x;
        sg_kl_load(sg_kl_at(kh, i, 0), &t, &x);
        if (t == 0)
            continue;
        out->used++;
        uint32_t st = KT_STATE(t);
        if (st == KT_PENDING)
            out->pending++;
        if ((st != KT_LIVE && st != KT_PENDING) || x <= now)
            continue;
        out->live++;
        if (top_max && (n < top_max || top[n - 1].ahead_ns < x - now)) {
            struct sg_kl_entry_view v = {KT_FP(t), x - now, i, 0.0, st, 0};
            top_insert(top, top_max, &n, &v);
        }
    }
    for (uint32_t k = 0; k < n; k++) { /* virtual debt -> tokens and clock time */
        uint64_t tol = r.tol[2], a = top[k].ahead_ns; /* HIGH: the whole burst */
        top[k].tokens = a >= tol ? 0.0 : (double)(tol - a) / (double)kh->t0_ns;
        top[k].ahead_ns = sg_kl_real_ns(&r, a);
    }
    out->top_n = n;
    return SG_OK;
}
