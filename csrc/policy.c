/*
 * policy.c -- the policy every process of the host sees for one slot.
 *
 * Two buffers and a sequence word: a writer (holding the slot's writer
 * lease, taken over only from a holder proven dead) fills the buffer that
 * is NOT live, then publishes it by a CAS of policy_seq with release order
 * (R2). Readers copy the live buffer and
 * re-check the sequence (seqlock over two buffers), so a reader never
 * blocks and a writer that dies mid-write leaves the live buffer intact.
 */
#include <math.h>
#include <string.h>

#include "layout.h"

#define LEASE_SHIFT 20
#define LEASE_NS 500000000ULL /* a publish takes microseconds */

void sg_policy_store(struct sg_policy_raw *p, const struct sg_policy_view *v)
{
    /* relaxed: ordered before the reader by R1 (registration) or R2. */
    ST(&p->emission_ns, v->emission_ns);
    ST(&p->bucket_ns, v->bucket_ns);
    ST(&p->open_ns, v->open_ns);
    ST(&p->open_max_ns, v->open_max_ns);
    ST(&p->probe_lease_ns, v->probe_lease_ns);
    ST(&p->slow_call_ns, v->slow_call_ns);
    ST(&p->recovery_ns, v->recovery_ns);
    ST(&p->fingerprint, v->fingerprint);
    for (int i = 0; i < 4; i++)
        ST(&p->share_ppm[i], v->share_ppm[i]);
    ST(&p->failure_ppm, v->failure_ppm);
    ST(&p->slow_ppm, v->slow_ppm);
    ST(&p->adaptive_max_ppm, v->adaptive_max_ppm);
    ST(&p->min_requests, v->min_requests);
    ST(&p->buckets, v->buckets);
    ST(&p->half_open_max, v->half_open_max);
    ST(&p->success_threshold, v->success_threshold);
    ST(&p->flags, v->flags);
    ST(&p->rate_floor_ppm, v->rate_floor_ppm);
    ST(&p->jitter_ppm, v->jitter_ppm);
    ST(&p->backoff_milli, v->backoff_milli);
    ST(&p->burst, v->burst);
    ST(&p->max_wait_ns, v->max_wait_ns);
    ST(&p->ticket_lease_ns, v->ticket_lease_ns);
    ST(&p->retry_window_ns, v->retry_window_ns);
    ST(&p->throttle_window_ns, v->throttle_window_ns);
    ST(&p->predict_horizon_ns, v->predict_horizon_ns);
    ST(&p->max_concurrent, v->max_concurrent);
    ST(&p->quota_ppm, v->quota_ppm);
    ST(&p->retry_ratio_ppm, v->retry_ratio_ppm);
    ST(&p->retry_min_milli, v->retry_min_milli);
    ST(&p->throttle_k_milli, v->throttle_k_milli);
    ST(&p->throttle_min_requests, v->throttle_min_requests);
}

static void copy_out(const struct sg_policy_raw *p, struct sg_policy_view *v)
{
    struct sg_policy_raw *q = (struct sg_policy_raw *)p;
    v->emission_ns = LD(&q->emission_ns);
    v->bucket_ns = LD(&q->bucket_ns);
    v->open_ns = LD(&q->open_ns);
    v->open_max_ns = LD(&q->open_max_ns);
    v->probe_lease_ns = LD(&q->probe_lease_ns);
    v->slow_call_ns = LD(&q->slow_call_ns);
    v->recovery_ns = LD(&q->recovery_ns);
    v->fingerprint = LD(&q->fingerprint);
    for (int i = 0; i < 4; i++)
        v->share_ppm[i] = LD(&q->share_ppm[i]);
    v->failure_ppm = LD(&q->failure_ppm);
    v->slow_ppm = LD(&q->slow_ppm);
    v->adaptive_max_ppm = LD(&q->adaptive_max_ppm);
    v->min_requests = LD(&q->min_requests);
    v->buckets = LD(&q->buckets);
    v->half_open_max = LD(&q->half_open_max);
    v->success_threshold = LD(&q->success_threshold);
    v->flags = LD(&q->flags);
    v->rate_floor_ppm = LD(&q->rate_floor_ppm);
    v->jitter_ppm = LD(&q->jitter_ppm);
    v->backoff_milli = LD(&q->backoff_milli);
    v->burst = LD(&q->burst);
    v->max_wait_ns = LD(&q->max_wait_ns);
    v->ticket_lease_ns = LD(&q->ticket_lease_ns);
    v->retry_window_ns = LD(&q->retry_window_ns);
    v->throttle_window_ns = LD(&q->throttle_window_ns);
    v->predict_horizon_ns = LD(&q->predict_horizon_ns);
    v->max_concurrent = LD(&q->max_concurrent);
    v->quota_ppm = LD(&q->quota_ppm);
    v->retry_ratio_ppm = LD(&q->retry_ratio_ppm);
    v->retry_min_milli = LD(&q->retry_min_milli);
    v->throttle_k_milli = LD(&q->throttle_k_milli);
    v->throttle_min_requests = LD(&q->throttle_min_requests);
}

/* Clamp what the hot paths index or divide by: the slot is untrusted. */
static void sanitize(struct sg_policy_view *v)
{
    if (v->buckets < 1) v->buckets = 1;
    if (v->buckets > SG_MAX_BUCKETS) v->buckets = SG_MAX_BUCKETS;
    if (v->half_open_max < 1) v->half_open_max = 1;
    if (v->half_open_max > SG_MAX_PROBES) v->half_open_max = SG_MAX_PROBES;
    if (v->bucket_ns < 1) v->bucket_ns = 1;
    if (v->emission_ns < 1) v->emission_ns = 1;
    if (v->burst < 1) v->burst = 1;
    if (v->success_threshold < 1) v->success_threshold = 1;
    if (v->min_requests < 1) v->min_requests = 1;
    if (v->backoff_milli < 1000) v->backoff_milli = 1000;
    if (v->failure_ppm < 1) v->failure_ppm = 1;
    if (v->failure_ppm > SG_PPM) v->failure_ppm = SG_PPM;
    if (v->rate_floor_ppm > SG_PPM) v->rate_floor_ppm = SG_PPM;
    /* ratios above 1: a threshold no window can reach (breaker never opens)
     * and a jitter above 100% (open_duration's d - delta would wrap) */
    if (v->slow_ppm > SG_PPM) v->slow_ppm = SG_PPM;
    if (v->adaptive_max_ppm > SG_PPM) v->adaptive_max_ppm = SG_PPM;
    if (v->jitter_ppm > SG_PPM) v->jitter_ppm = SG_PPM;
    for (int i = 0; i < 4; i++)
        if (v->share_ppm[i] > 4 * SG_PPM) v->share_ppm[i] = 4 * SG_PPM;
    if ((v->max_concurrent & 0xffu) > SG_MAX_TICKETS) /* bits 8-15: CRITICAL reserve */
        v->max_concurrent = (v->max_concurrent & 0xff00u) | SG_MAX_TICKETS;
    if (v->quota_ppm > SG_PPM) v->quota_ppm = SG_PPM;
}

void sg_policy_load(const struct sg_slot *s, struct sg_policy_view *out)
{
    struct sg_slot *m = (struct sg_slot *)s;
    for (int tries = 0; tries < 16; tries++) {
        /* A2: pairs with R2 in sg_policy_publish(). */
        uint64_t seq = atomic_load_explicit(&m->policy_seq, memory_order_acquire);
        copy_out(&s->policy[seq & 1], out);
        atomic_thread_fence(memory_order_acquire); /* copy before re-check */
        if (LD(&m->policy_seq) == seq)
            break; /* no publish overlapped the copy */
    }
    sanitize(out);
}

int sg_policy_read(const struct sg_handle *h, struct sg_policy_view *out)
{
    if (!h || !out)
        return SG_E_ARG;
    if (sg_hslot(h) == NULL)
        return SG_E_GONE;
    sg_policy_load(h->slot, out);
    return SG_OK;
}

int sg_policy_check(const struct sg_policy_view *v)
{
    if (!v)
        return SG_E_ARG;
    int no_limit = (v->flags & SG_POL_NO_LIMIT) != 0;
    if ((!no_limit && v->emission_ns < 1) || v->bucket_ns < 1 || v->buckets < 1 ||
        v->buckets > SG_MAX_BUCKETS || v->half_open_max < 1 || v->half_open_max > SG_MAX_PROBES ||
        v->success_threshold < 1 || v->failure_ppm < 1 || v->failure_ppm > SG_PPM ||
        v->min_requests < 1 || v->burst < 1 || v->open_ns < 1 || v->open_max_ns < v->open_ns ||
        v->probe_lease_ns < (1ULL << LEASE_SHIFT) || v->backoff_milli < 1000 ||
        v->jitter_ppm > SG_PPM || v->rate_floor_ppm > SG_PPM || v->slow_ppm > SG_PPM ||
        v->adaptive_max_ppm > SG_PPM)
        return SG_E_ARG;
    /* bulkhead: tickets (bits 0-7) | CRITICAL reserve (8-15), or a quota; not both */
    if ((v->max_concurrent & 0xffu) > SG_MAX_TICKETS || (v->max_concurrent >> 16) ||
        v->quota_ppm > SG_PPM || ((v->max_concurrent & 0xffu) && v->quota_ppm))
        return SG_E_ARG;
    for (int i = 0; i < 4; i++)
        if (v->share_ppm[i] < 1 || v->share_ppm[i] > 4 * SG_PPM)
            return SG_E_ARG;
    return SG_OK;
}

/* Publishes `pol` for every process. The writer lease (pid 22 | deadline
 * 42, ns >> 20) is taken only when free: a held one gives SG_E_BUSY with
 * the word in *lease_out, and the caller frees it with sg_policy_takeover()
 * once it proved the holder dead (pid + start time); its deadline alone
 * never hands it over (DESIGN round 2: a stalled writer is alive), so
 * writers never overlap. Only a deadline-only judgement (opt-in,
 * shared_namespaces) takes a live writer's lease; the seq CAS then stops
 * it only if another publish landed between its seq read and its CAS: one
 * that resumes later publishes whole over the newer policy, and one that
 * overlaps the next writer shares its buffer (two buffers cannot keep a
 * stale writer out; README says so). */
int sg_policy_publish(const struct sg_handle *h, const struct sg_policy_view *pol, uint32_t pid,
                      uint64_t *lease_out)
{
    if (!h)
        return SG_E_ARG;
    struct sg_slot *s = sg_hslot(h);
    if (s == NULL)
        return SG_E_GONE;
    int rc = sg_policy_check(pol);
    if (rc != SG_OK)
        return rc;
    uint64_t now = sg_mono_ns();
    uint64_t mine = ((uint64_t)(pid & 0x3fffffu) << 42) |
                    (((now + LEASE_NS) >> LEASE_SHIFT) & ((1ULL << 42) - 1));
    uint64_t cur = 0;
    /* acq_rel: owning the lease orders our writes after the previous
     * holder's; on failure cur is refreshed and reported. */
    if (!atomic_compare_exchange_strong_explicit(&s->policy_lease, &cur, mine,
                                                 memory_order_acq_rel, memory_order_acquire)) {
        if (lease_out)
            *lease_out = cur;
        return SG_E_BUSY;
    }
    sg_test_stall("publish");
    uint64_t seq = LD(&s->policy_seq); /* relaxed: the lease orders writers */
    sg_policy_store(&s->policy[(seq + 1) & 1], pol);
    /* R2: publishes the buffer just written; pairs with A2. A CAS: a seq
     * moved by another writer means our lease was taken: publish nothing. */
    int ok = atomic_compare_exchange_strong_explicit(&s->policy_seq, &seq, seq + 1,
                                                     memory_order_release, memory_order_relaxed);
    uint64_t held = mine;
    atomic_compare_exchange_strong_explicit(&s->policy_lease, &held, 0, memory_order_release,
                                            memory_order_relaxed);
    return ok ? SG_OK : SG_E_BUSY;
}

/* Frees a writer lease whose holder the caller proved dead (exact word). */
int sg_policy_takeover(const struct sg_handle *h, uint64_t lease_word)
{
    struct sg_slot *s = h ? sg_hslot(h) : NULL;
    if (s == NULL)
        return SG_E_GONE;
    if (lease_word == 0)
        return SG_E_ARG;
    /* acq_rel: pairs with the holder's lease CAS */
    return atomic_compare_exchange_strong_explicit(&s->policy_lease, &lease_word, 0,
                                                   memory_order_acq_rel, memory_order_relaxed)
               ? SG_OK : SG_E_BUSY;
}
