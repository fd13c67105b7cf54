/*
 * breaker.c -- the circuit breaker word and its transitions.
 *
 * State, generation and the time the state began live in ONE 64-bit word
 * changed by one CAS (rule). Every transition bumps the generation; a
 * permit (token) carries the generation it was granted in, and outcomes of
 * an older generation are dropped (the gobreaker trick).
 *
 *   CLOSED --(window: calls >= min, ratio >= threshold)--> OPEN
 *   OPEN   --(open duration elapsed, first caller)--------> HALF_OPEN
 *   HALF_OPEN --(success_threshold successes)-------------> CLOSED
 *   HALF_OPEN --(one failure)-----------------------------> OPEN
 *
 * Half-open probes are leases (pid | generation | deadline) in
 * SG_MAX_PROBES words; a lease of another generation or past its deadline
 * is free, and one whose holder died is reclaimed from outside.
 */
#define _POSIX_C_SOURCE 200809L
#include <string.h>
#include <unistd.h>

#include "layout.h"

/* ---- token (int64, >= 0) --------------------------------------------------
 * | 0 | gen 25 (62:38) | lease+1 4 (37:34) | to-half-open 1 (33) |
 * | start (ns >> 16) 31 (32:2) | outcome 2 (1:0, set by the caller) |
 */
#define TK_GEN(t) ((uint32_t)(((uint64_t)(t) >> 38) & BW_GMASK))
#define TK_LEASE(t) ((uint32_t)(((uint64_t)(t) >> 34) & 0xfu))
#define TK_HOFLAG (1ULL << 33)
#define TK_START(t) ((uint32_t)(((uint64_t)(t) >> 2) & 0x7fffffffu))
#define TK_MAKE(g, l, now) ((int64_t)((((uint64_t)(g) & BW_GMASK) << 38) | ((uint64_t)(l) << 34) | \
                                      ((((now) >> 16) & 0x7fffffffULL) << 2)))
#define LS_UNITS(ns) ((uint32_t)((ns) >> 20))
/* judged word: | generation 25 (63:39) | bucket epoch + 1 39 | (0: none) */
#define JG_MAKE(g, ep) ((((uint64_t)(g) & BW_GMASK) << 39) | (((ep) + 1) & ((1ULL << 39) - 1)))

static uint64_t state_age(uint64_t w, uint64_t now)
{
    return (((now >> BW_TSHIFT) - BW_TIME(w)) & BW_TMASK) << BW_TSHIFT;
}

/* When the current state began (never before 0, whatever the word says). */
static uint64_t state_began(uint64_t w, uint64_t now)
{
    uint64_t age = state_age(w, now);
    return age > now ? 0 : now - age;
}

static uint64_t splitmix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* Break duration for the OPEN state of generation g: grows by backoff per
 * consecutive open, capped, with deterministic jitter seeded by the policy
 * fingerprint and the generation, so every process computes the same. */
static uint64_t open_duration(struct sg_slot *s, const struct sg_policy_view *p, uint32_t g)
{
    uint64_t d = p->open_ns, streak = LD(&s->streak);
    for (uint64_t i = 1; i < streak && i < 64 && d < p->open_max_ns; i++)
        d = sg_sat_mul(d, p->backoff_milli) / 1000;
    if (d > p->open_max_ns)
        d = p->open_max_ns;
    if (p->jitter_ppm) {
        uint64_t r = splitmix(p->fingerprint ^ g) % (2ULL * SG_PPM + 1); /* 0..2e6 */
        int64_t j = ((int64_t)r - SG_PPM) * (int64_t)p->jitter_ppm / SG_PPM; /* +-jitter */
        uint64_t delta = sg_mul_ppm(d, (uint64_t)(j < 0 ? -j : j));
        d = j < 0 ? d - delta : sg_sat_add(d, delta);
    }
    return d ? d : 1;
}

static int lease_live(uint64_t lw, uint32_t gen, uint64_t now)
{
    if (lw == 0 || LS_GEN(lw) != (gen & 0x3ffu))
        return 0;
    return (int32_t)(LS_DEADLINE(lw) - LS_UNITS(now)) > 0; /* serial compare */
}

/* A live lease of generation gen ending further ahead than one policy lease
 * (lease_ns) was set by a clock ahead of ours, or under a longer lease since
 * cut: taken down to now + lease_ns, so it ends when the retry-after we
 * report says (pid and generation kept: the holder's release still
 * matches). Returns the word to judge. acq_rel/acquire as the lease CAS;
 * on failure lw refreshes and is judged as it now is. */
static uint64_t lease_bounded(sg_a64 *lp, uint64_t lw, uint32_t gen, uint64_t now, uint64_t lease_ns)
{
    uint32_t lim = LS_UNITS(sg_sat_add(now, lease_ns));
    if (!lease_live(lw, gen, now) || (int32_t)(LS_DEADLINE(lw) - lim) <= 0)
        return lw;
    uint64_t nw = LS_MAKE(LS_PID(lw), LS_GEN(lw), lim);
    return atomic_compare_exchange_strong_explicit(lp, &lw, nw, memory_order_acq_rel,
                                                   memory_order_acquire) ? nw : lw;
}

/* An unexpired lease of a generation AFTER gen (serial compare of the low
 * 10 bits: 1..511 ahead). Seen by a caller whose breaker word is stale (it
 * was preempted after reading it): that lease belongs to a newer half-open
 * episode and must not be taken as free. */
static int lease_ahead(uint64_t lw, uint32_t gen, uint64_t now)
{
    uint32_t d = (LS_GEN(lw) - gen) & 0x3ffu;
    return lw != 0 && d != 0 && d < 0x200u && (int32_t)(LS_DEADLINE(lw) - LS_UNITS(now)) > 0;
}

/* CAS the breaker word from w to nw; on success do the side effects of
 * entering the new state. R3: release publishes the transition; pairs with
 * the acquire loads (A3) of the word. */
static int transition(struct sg_slot *s, const struct sg_policy_view *p, uint64_t *w, uint32_t to,
                      uint64_t now)
{
    uint32_t from = BW_STATE(*w);
    uint64_t nw = BW_MAKE(to, BW_GEN(*w) + 1, now);
    if (!atomic_compare_exchange_strong_explicit(&s->bword, w, nw, memory_order_acq_rel,
                                                 memory_order_acquire))
        return 0; /* *w refreshed */
    /* relaxed below: backoff and statistics; a reader racing them sees the
     * previous value, which is still a valid one. */
    if (to == SG_OPEN) {
        atomic_fetch_add_explicit(&s->opens, 1, memory_order_relaxed);
        if (from == SG_HALF_OPEN)
            atomic_fetch_add_explicit(&s->streak, 1, memory_order_relaxed);
        else
            ST(&s->streak, 1);
    } else if (to == SG_CLOSED) {
        ST(&s->streak, 0);
        sg_window_reset(s, p, now);
    } else if (to != SG_HALF_OPEN) {
        sg_window_reset(s, p, now); /* a mode change starts a fresh window */
    }
    *w = nw;
    return 1;
}

/* Acquire as a caller that read the breaker word `w` (maybe a while ago). */
static int64_t acquire(struct sg_slot *s, uint64_t now, uint32_t pid, uint64_t w)
{
    uint64_t flag = 0;
    struct sg_policy_view p;
    int have_p = 0, trust = 0;
    for (;;) {
    again:
        switch (BW_STATE(w)) {
        case SG_CLOSED:
        case SG_FORCED_CLOSED:
        case SG_METRICS_ONLY:
            return TK_MAKE(BW_GEN(w), 0, now);
        case SG_OPEN:
            if (!have_p)
                sg_policy_load(s, &p), have_p = 1;
            /* compare in word units (2^20 ns): the word keeps no finer time,
             * so half-open may begin up to ~2 ms before the exact duration */
            if ((state_age(w, now) >> BW_TSHIFT) < (open_duration(s, &p, BW_GEN(w)) >> BW_TSHIFT))
                goto rejected;
            if (transition(s, &p, &w, SG_HALF_OPEN, now))
                flag = TK_HOFLAG;
            continue; /* w is the new or the refreshed word */
        case SG_HALF_OPEN: {
            if (!have_p)
                sg_policy_load(s, &p), have_p = 1;
            uint32_t g = BW_GEN(w);
            if (pid == 0)
                pid = (uint32_t)getpid();
            int stale = 0;
            for (uint32_t i = 0; i < p.half_open_max; i++) {
                uint64_t lw = atomic_load_explicit(&s->lease[i], memory_order_acquire);
                lw = lease_bounded(&s->lease[i], lw, g, now, p.probe_lease_ns);
                if (lease_live(lw, g, now))
                    continue;
                if (!trust && lease_ahead(lw, g, now)) {
                    stale = 1; /* overwriting it would free a newer episode's permit */
                    break;
                }
                uint64_t mine = LS_MAKE(pid, g, LS_UNITS(sg_sat_add(now, p.probe_lease_ns)));
                /* seq_cst (S1): the lease CAS, the re-check below and the
                 * transition CAS are in one total order, so a caller that
                 * read the word before an episode ended and then won a lease
                 * freed after that end sees the new word here. lw refreshes
                 * on failure and we move on to the next word. */
                if (!atomic_compare_exchange_strong_explicit(&s->lease[i], &lw, mine,
                                                             memory_order_seq_cst,
                                                             memory_order_acquire))
                    continue;
                /* Validate after winning (rule): a permit is granted only for
                 * the episode that is current NOW, not the one we read. */
                uint64_t nw = atomic_load_explicit(&s->bword, memory_order_seq_cst); /* S1 */
                if (nw == w)
                    return TK_MAKE(g, i + 1, now) | (int64_t)flag;
                /* ended meanwhile: give the lease back (only if still ours)
                 * and decide again on the current word */
                atomic_compare_exchange_strong_explicit(&s->lease[i], &mine, 0, memory_order_release,
                                                        memory_order_relaxed);
                w = nw;
                goto again;
            }
            if (stale) {
                /* A3 again: decide on the current word. If it has not moved,
                 * the "newer" lease is corrupt: trust the word, reuse it. */
                uint64_t nw = atomic_load_explicit(&s->bword, memory_order_acquire);
                trust = nw == w;
                w = nw;
                continue;
            }
            atomic_fetch_add_explicit(&s->b_rejected, 1, memory_order_relaxed);
            return SG_R_PROBES_FULL;
        }
        case SG_FORCED_OPEN:
            goto rejected;
        default:
            return SG_E_CORRUPT;
        }
    }
rejected:
    atomic_fetch_add_explicit(&s->b_rejected, 1, memory_order_relaxed);
    return SG_R_OPEN;
}

int64_t sg_breaker_acquire_at(void *slot, uint64_t now, uint32_t pid)
{
    struct sg_slot *s = slot;
    if (!s)
        return SG_E_ARG;
    /* A3: pairs with R3 in transition(). */
    return acquire(s, now, pid, atomic_load_explicit(&s->bword, memory_order_acquire));
}

int64_t sg_breaker_acquire_seen(void *slot, uint64_t now, uint32_t pid, uint64_t seen)
{
    if (!slot)
        return SG_E_ARG;
    return acquire(slot, now, pid, seen);
}

/* The newest failure's time, a hint for the success path (relaxed: a
 * success that misses a racing failure's hint leaves the judging to that
 * failure, which sums after its own count). Kept monotone. */
static void note_failure(struct sg_slot *s, uint64_t now)
{
    uint64_t lf = LD(&s->last_fail);
    while (lf < now && !atomic_compare_exchange_weak_explicit(&s->last_fail, &lf, now,
                                                              memory_order_relaxed,
                                                              memory_order_relaxed))
        ; /* lf refreshes on failure */
}

/* Could a failure (or slow call) of the last `window` still be counted? */
static int recent_failure(struct sg_slot *s, const struct sg_policy_view *p, uint64_t now)
{
    uint64_t lf = LD(&s->last_fail); /* same cache line as the word: cheap */
    return lf != 0 && (lf >= now || now - lf < sg_sat_mul(p->bucket_ns, (uint64_t)p->buckets + 1));
}

static void release_lease(struct sg_slot *s, uint32_t l, uint32_t gen, uint32_t pid)
{
    if (l == 0 || l > SG_MAX_PROBES)
        return;
    sg_a64 *lp = &s->lease[l - 1];
    uint64_t lw = atomic_load_explicit(lp, memory_order_acquire);
    if (lw != 0 && LS_PID(lw) == (pid & 0x3fffffu) && LS_GEN(lw) == (gen & 0x3ffu))
        /* release: our outcome (recorded before) precedes the free permit */
        atomic_compare_exchange_strong_explicit(lp, &lw, 0, memory_order_release,
                                                memory_order_relaxed);
}

static int record(void *slot, uint64_t now, int64_t token)
{
    struct sg_slot *s = slot;
    int outcome = (int)(token & 3);
    if (!s || token < 0 || outcome == 0)
        return SG_E_ARG;
    uint32_t gen = TK_GEN(token), l = TK_LEASE(token);
    sg_a64 *tot = outcome == SG_SUCCESS ? &s->b_success
                  : outcome == SG_FAILURE ? &s->b_failure : &s->b_ignored;
    atomic_fetch_add_explicit(tot, 1, memory_order_relaxed); /* statistic */
    struct sg_policy_view p;
    sg_policy_load(s, &p);
    if (p.throttle_k_milli) /* throttle.c: whatever the generation, the call reached the dependency */
        sg_throttle_count(s, &p, now, outcome);
    uint64_t took = (uint64_t)((((uint32_t)(now >> 16)) - TK_START(token)) & 0x7fffffffu) << 16;
    /* a slow failure is slow too (as resilience4j counts it) */
    int slow = p.slow_call_ns && outcome != SG_IGNORE && took >= p.slow_call_ns;
    uint64_t w = atomic_load_explicit(&s->bword, memory_order_acquire); /* A3 */
    if (BW_GEN(w) != gen)
        return SG_T_STALE;
    switch (BW_STATE(w)) {
    case SG_CLOSED:
    case SG_METRICS_ONLY: {
        int bad = outcome == SG_FAILURE || slow;
        if (bad)
            note_failure(s, now);
        sg_window_add(s, &p, now, outcome, slow);
        /* The window is judged when a failure or a slow call lands, and when
         * a success lands while a failure is in the window: that success may
         * bring the calls up to min_requests. Skipped, to keep the success
         * path short: a success in a window without failures (it cannot
         * trip), and one in the same bucket period and generation as a
         * judgement that found min_requests and no trip (the window's
         * buckets and floor are the same, so a success only lowers the
         * ratios; failures judge for themselves). */
        if (BW_STATE(w) != SG_CLOSED || outcome == SG_IGNORE)
            return SG_T_NONE;
        uint64_t jw = JG_MAKE(gen, now / p.bucket_ns);
        if (!bad && (!recent_failure(s, &p, now) || LD(&s->judged) == jw))
            return SG_T_NONE;
        struct sg_window_sum sum;
        sg_window_sum(s, &p, now, state_began(w, now), &sum);
        uint64_t calls = sum.failures + sum.successes;
        if (calls < p.min_requests)
            return SG_T_NONE;
        uint32_t thr = sg_window_threshold(s, &p);
        int trip = sum.failures * SG_PPM >= (uint64_t)thr * calls ||
                   (p.slow_ppm && sum.slow * SG_PPM >= (uint64_t)p.slow_ppm * calls);
        /* predict.c: the trend forecasts crossing the threshold within the horizon */
        int early = !trip && sg_predict_trips(s, &p, now, state_began(w, now), thr);
        /* If the CAS loses, someone else changed the state: nothing to do. */
        if ((trip || early) && transition(s, &p, &w, SG_OPEN, now)) {
            if (early)
                atomic_fetch_add_explicit(&s->predict.opens, 1, memory_order_relaxed);
            return SG_T_TO_OPEN;
        }
        if (!trip && !early)
            ST(&s->judged, jw); /* relaxed: a hint; a stale one only costs a sum */
        return SG_T_NONE;
    }
    case SG_HALF_OPEN:
        if (l == 0 || outcome == SG_IGNORE)
            return SG_T_NONE;
        if (outcome == SG_FAILURE || slow)
            return transition(s, &p, &w, SG_OPEN, now) ? SG_T_TO_OPEN : SG_T_NONE;
        for (uint64_t ho = LD(&s->ho);;) {
            uint64_t n = HO_GEN(ho) == gen ? (uint64_t)HO_SUCC(ho) + 1 : 1;
            /* relaxed: the count is re-validated against the word's gen by
             * the CAS below; ho refreshes on failure. */
            if (atomic_compare_exchange_strong_explicit(&s->ho, &ho, HO_MAKE(gen, n),
                                                        memory_order_relaxed,
                                                        memory_order_relaxed)) {
                if (n >= p.success_threshold && transition(s, &p, &w, SG_CLOSED, now))
                    return SG_T_TO_CLOSED;
                return SG_T_NONE;
            }
        }
    default:
        return SG_T_NONE; /* forced modes record nothing */
    }
}

int sg_breaker_record_at(void *slot, uint64_t now, int64_t token)
{
    int t = record(slot, now, token);
    /* Free the probe permit only AFTER its outcome landed: a failed probe has
     * reopened the breaker (new generation) before its permit can be taken,
     * so no second probe slips into the episode it just ended. */
    if (t >= 0 && TK_LEASE(token))
        release_lease(slot, TK_LEASE(token), TK_GEN(token), (uint32_t)getpid());
    return t;
}

int sg_breaker_force_at(void *slot, uint64_t now, uint32_t state)
{
    struct sg_slot *s = slot;
    if (!s || state > SG_METRICS_ONLY || state == SG_HALF_OPEN)
        return SG_E_ARG;
    struct sg_policy_view p;
    sg_policy_load(s, &p);
    uint64_t w = atomic_load_explicit(&s->bword, memory_order_acquire); /* A3 */
    while (!transition(s, &p, &w, state, now))
        ; /* w refreshed: retry until our transition lands */
    if (state == SG_CLOSED) {
        ST(&s->baseline_ppm, 0); /* a reset forgets the history too */
        sg_throttle_reset(s);    /* throttle.c: and the throttling window */
        return SG_T_TO_CLOSED;
    }
    return state == SG_OPEN || state == SG_FORCED_OPEN ? SG_T_TO_OPEN : SG_T_NONE;
}

int sg_breaker_reclaim(void *slot, uint32_t probe, uint64_t expected)
{
    struct sg_slot *s = slot;
    if (!s || probe >= SG_MAX_PROBES || expected == 0)
        return SG_E_ARG;
    /* acq_rel: pairs with the holder's acquiring CAS; fails if the word moved */
    return atomic_compare_exchange_strong_explicit(&s->lease[probe], &expected, 0,
                                                   memory_order_acq_rel, memory_order_relaxed)
               ? SG_OK : SG_E_BUSY;
}

int sg_breaker_snapshot_at(const void *slot, uint64_t now, struct sg_breaker_view *out)
{
    struct sg_slot *s = (struct sg_slot *)slot;
    if (!s || !out)
        return SG_E_ARG;
    memset(out, 0, sizeof *out);
    struct sg_policy_view p;
    sg_policy_load(s, &p);
    uint64_t w = atomic_load_explicit(&s->bword, memory_order_acquire); /* A3 */
    uint32_t st = BW_STATE(w);
    if (st > SG_METRICS_ONLY)
        return SG_E_CORRUPT;
    out->state = st;
    out->generation = BW_GEN(w);
    out->state_age_ns = state_age(w, now);
    if (st == SG_OPEN) {
        uint64_t d = open_duration(s, &p, BW_GEN(w));
        out->open_remaining_ns = d > out->state_age_ns ? d - out->state_age_ns : 0;
    }
    struct sg_window_sum sum;
    /* a mode's window starts when the mode did; OPEN and half-open show
     * the window that tripped */
    int counting = st != SG_OPEN && st != SG_HALF_OPEN;
    sg_window_sum(s, &p, now, counting ? state_began(w, now) : 0, &sum);
    out->calls = sum.failures + sum.successes;
    out->failures = sum.failures;
    out->slow = sum.slow;
    out->threshold_ppm = sg_window_threshold(s, &p);
    out->baseline_ppm = (uint32_t)(LD(&s->baseline_ppm) > SG_PPM ? SG_PPM : LD(&s->baseline_ppm));
    uint64_t ho = LD(&s->ho);
    out->half_open_successes = HO_GEN(ho) == BW_GEN(w) ? HO_SUCC(ho) : 0;
    for (uint32_t i = 0; i < SG_MAX_PROBES; i++) {
        uint64_t lw = LD(&s->lease[i]);
        out->probe_word[i] = lw;
        if (st == SG_HALF_OPEN && i < p.half_open_max && lease_live(lw, BW_GEN(w), now)) {
            out->probes_in_flight++;
            out->probe_pid[i] = LS_PID(lw);
            /* exact: the lease ends at deadline << 20 (live: >= 1 unit ahead,
             * so this is > 0). Never more than the policy's lease: a deadline
             * further ahead was set by a clock ahead of ours; the next
             * acquire takes it down to that (lease_bounded), so a retry-after
             * is never weeks and is honoured. */
            uint64_t left = ((uint64_t)(LS_DEADLINE(lw) - LS_UNITS(now)) << 20) -
                            (now & ((1ULL << 20) - 1));
            out->probe_lease_left_ns[i] = left > p.probe_lease_ns ? p.probe_lease_ns : left;
        }
    }
    out->opens = LD(&s->opens);
    out->open_streak = LD(&s->streak);
    out->successes_total = LD(&s->b_success);
    out->failures_total = LD(&s->b_failure);
    out->ignored_total = LD(&s->b_ignored);
    out->rejected_total = LD(&s->b_rejected);
    return SG_OK;
}

int64_t sg_breaker_acquire(const struct sg_handle *h)
{
    struct sg_slot *s = sg_hslot(h);
    return s ? sg_breaker_acquire_at(s, sg_now_h(h), 0) : SG_E_GONE;
}

int sg_breaker_record(const struct sg_handle *h, int64_t token)
{
    /* a half-open transition made by this token's admission was reported
     * at admission (the token's to-half-open bit), never again here */
    struct sg_slot *s = sg_hslot(h);
    return s ? sg_breaker_record_at(s, sg_now_h(h), token) : SG_E_GONE;
}

uint64_t sg_breaker_retry_after(const struct sg_handle *h)
{
    struct sg_breaker_view v;
    struct sg_slot *s = sg_hslot(h);
    if (s == NULL || sg_breaker_snapshot_at(s, sg_now_h(h), &v) != SG_OK)
        return 0;
    if (v.state == SG_OPEN)
        return v.open_remaining_ns;
    uint64_t best = 0;
    for (int i = 0; i < SG_MAX_PROBES; i++)
        if (v.probe_pid[i] && (best == 0 || v.probe_lease_left_ns[i] < best))
            best = v.probe_lease_left_ns[i];
    return best;
}

/* ---- admission: breaker then limiter, one crossing ------------------------ */

void sg_release_probe(const struct sg_handle *h, int64_t token)
{
    if (token >= 0 && sg_hslot(h) != NULL)
        release_lease(h->slot, TK_LEASE(token), TK_GEN(token), (uint32_t)getpid());
}

static int64_t admit(const struct sg_handle *h, uint64_t cp, int64_t max_wait, struct sg_decision *d,
                     uint64_t *now_out)
{
    if (sg_hslot(h) == NULL)
        return SG_E_GONE;
    uint64_t now = sg_now_h(h);
    if (now_out)
        *now_out = now;
    int64_t tok = sg_breaker_acquire_at(h->slot, now, 0);
    if (tok < 0)
        return tok;
    /* throttle.c: the soft brake after the breaker's hard stop; a half-open
     * probe is the breaker's own question and is never throttled */
    if (TK_LEASE(tok) == 0 && sg_throttle_enabled(h->slot) &&
        sg_throttle_decide_at(h->slot, now) < 0)
        return SG_R_THROTTLED;
    int rc = sg_limiter_decide_at(h->slot, now, cp >> 2, (uint32_t)(cp & 3), max_wait, d);
    if (rc != SG_OK) {
        sg_release_probe(h, tok);
        return rc;
    }
    sg_budget_admitted(h->slot, now); /* budget.c: a no-op unless a retry budget is set */
    return tok;
}

int64_t sg_admit(const struct sg_handle *h, uint64_t cp)
{
    return admit(h, cp, -1, NULL, NULL);
}

int64_t sg_admit_now(const struct sg_handle *h, uint64_t cp, uint64_t *now_out)
{
    return admit(h, cp, -1, NULL, now_out);
}

int64_t sg_admit_wait(const struct sg_handle *h, uint64_t cp, int64_t max_wait_ns,
                      struct sg_decision *out)
{
    return admit(h, cp, max_wait_ns, out, NULL);
}

/* fleet/ (the host's fleet agent): moves the breaker to OPEN or CLOSED on
 * another host's word, only while it is still in generation `gen` and in a
 * normal state (never over manual control, never over newer local
 * evidence). An OPEN lasts `remaining_ns` from now (at most its own break
 * duration); on an OPEN breaker it sets the remaining time, same generation. */
int sg_breaker_fleet_at(void *slot, uint64_t now, uint32_t gen, uint32_t state,
                        uint64_t remaining_ns)
{
    struct sg_slot *s = slot;
    if (!s || (state != SG_OPEN && state != SG_CLOSED))
        return SG_E_ARG;
    struct sg_policy_view p;
    sg_policy_load(s, &p);
    uint64_t w = atomic_load_explicit(&s->bword, memory_order_acquire); /* A3 */
    uint32_t st = BW_STATE(w);
    if (BW_GEN(w) != (gen & BW_GMASK) || st > SG_HALF_OPEN)
        return SG_E_BUSY;
    if (state == SG_CLOSED)
        return st == SG_CLOSED || transition(s, &p, &w, SG_CLOSED, now) ? SG_OK : SG_E_BUSY;
    if (st != SG_OPEN && !transition(s, &p, &w, SG_OPEN, now))
        return SG_E_BUSY;
    uint64_t d = open_duration(s, &p, BW_GEN(w)), back = d > remaining_ns ? d - remaining_ns : 0;
    uint64_t nw = BW_MAKE(SG_OPEN, BW_GEN(w), back > now ? 0 : now - back);
    /* R3 as in transition(); a failed CAS means someone moved on: keep theirs */
    atomic_compare_exchange_strong_explicit(&s->bword, &w, nw, memory_order_acq_rel,
                                            memory_order_relaxed);
    return SG_OK;
}
