/*
 * layout.h -- the map of a shmguard segment. Private to csrc/.
 *
 * Offset table (bytes)
 *   0        struct sg_header      (512: 8 cache lines)
 *   512      struct sg_slot[cap]   (2048 each: 32 cache lines)
 *
 * Header lines: 0 identity and sizes, 1 manual clock, 2 used slots,
 *   3 host identity (boot, namespaces, init claim), 4 fleet agent lease, 5-7 reserved.
 *
 * Slot, one cache line per part (no false sharing between parts):
 *   line 0      control: state word, hash, name length, policy seq + lease, incarnation
 *   line 1      name bytes
 *   lines 2-7   policy[2] (double buffer; seq low bit picks the live one)
 *   line 8      breaker: word, half-open word, streak, baseline, last failure, opens,
 *               newest window epoch, last judgement
 *   line 9      probe leases[8]
 *   lines 10-11 window buckets[16]   [epoch | failures | successes]
 *   lines 12-13 slow buckets[16]     [epoch | slow | ignored]
 *   line 14     limiter: TAT, rate-change word, rate records[2] (3 words each)
 *   line 15     limiter totals: accepted[4], rejected[4]
 *   line 16     waited[4], breaker totals (success, failure, ignored, rejected)
 *   line 17     limiter stats window[8]  [epoch | accepted | rejected]
 *   line 18     bulkhead control          (bulkhead.c)
 *   lines 19-26 bulkhead tickets[64]      (bulkhead.c)
 *   line 27     retry budget              (budget.c)
 *   lines 28-29 adaptive throttling       (throttle.c)
 *   line 30     predictive breaking       (predict.c)
 *   line 31     fleet share and events    (fleet.c)
 * An area's words are all zero in a fresh slot (fill_slot), and zero means
 * "nothing recorded yet" for every area.
 *
 * Any change here bumps SG_LAYOUT_VERSION (shmguard.h).
 */
#ifndef SHMGUARD_LAYOUT_H
#define SHMGUARD_LAYOUT_H

#include <stdalign.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "shmguard.h"

#define SG_MAGIC 0x4452415547484d53ULL /* "SHMGUARD" little-endian */
#define SG_INIT_READY 0x52454459u      /* "REDY" */
#define SG_CACHE_LINE 64

typedef _Atomic uint64_t sg_a64;
typedef _Atomic uint32_t sg_a32;

/* Relaxed helpers: used for fields whose ordering is carried by another
 * acquire/release pair named at the call site. */
#define LD(p) atomic_load_explicit((p), memory_order_relaxed)
#define ST(p, v) atomic_store_explicit((p), (v), memory_order_relaxed)

/* ---- slot state word ---------------------------------------------------
 *  63    62 61                        32 31                          0
 * +--------+----------------------------+-----------------------------+
 * | kind 2 |         pid 30             |  claim time (ns >> 20) 32   |
 * +--------+----------------------------+-----------------------------+
 * kind: 0 EMPTY (word 0) or DELETED (word SK_DELETED: removed, reusable,
 *       probes pass it); 1 CLAIMED (pid, time valid); 2 READY (low 32 bits:
 *       the incarnation, handles compare the whole word); 3 ABANDONED (a
 *       claim whose owner stalled: pid, time kept; nobody reuses it until
 *       the owner is proven dead or gives it up, so a resumed claimant's
 *       fill lands in a slot nobody else owns).
 */
#define SG_SK_EMPTY 0u
#define SG_SK_CLAIMED 1u
#define SG_SK_READY 2u
#define SG_SK_ABANDONED 3u
#define SK_DELETED (1ULL << 61)
#define SK_GONE UINT64_MAX /* a handle bound to no READY word: every call fails */
#define SK_KIND(w) ((uint32_t)((w) >> 62))
#define SK_PID(w) ((uint32_t)(((w) >> 32) & 0x3fffffffu))
#define SK_TIME(w) ((uint32_t)((w) & 0xffffffffu))
#define SK_MAKE(k, pid, t) (((uint64_t)(k) << 62) | (((uint64_t)(pid) & 0x3fffffffu) << 32) | \
                            ((uint64_t)(t) & 0xffffffffu))

/* ---- breaker word ------------------------------------------------------
 *  63     61 60                    36 35                              0
 * +---------+------------------------+---------------------------------+
 * | state 3 |     generation 25      |  state began (ns >> 20) 36      |
 * +---------+------------------------+---------------------------------+
 * ONE CAS changes all three (rule): a reader never sees OPEN with a stale
 * opened-at time. Time is serial (wraps after ~2.3 years; ages compare
 * modulo 2^36).
 */
#define BW_TSHIFT 20
#define BW_TMASK ((1ULL << 36) - 1)
#define BW_GMASK ((1u << 25) - 1)
#define BW_STATE(w) ((uint32_t)((w) >> 61))
#define BW_GEN(w) ((uint32_t)(((w) >> 36) & BW_GMASK))
#define BW_TIME(w) ((w) & BW_TMASK)
#define BW_MAKE(s, g, now) (((uint64_t)(s) << 61) | ((uint64_t)((g) & BW_GMASK) << 36) | \
                            (((now) >> BW_TSHIFT) & BW_TMASK))

/* ---- half-open word ----------------------------------------------------
 * | generation 25 (63:39) | unused | successes 20 (19:0) |
 * Successes count only for the generation they name.
 */
#define HO_GEN(w) ((uint32_t)((w) >> 39) & BW_GMASK)
#define HO_SUCC(w) ((uint32_t)((w) & 0xfffffu))
#define HO_MAKE(g, s) (((uint64_t)((g) & BW_GMASK) << 39) | ((uint64_t)(s) & 0xfffffu))

/* ---- probe lease word (0 = free) ---------------------------------------
 * | pid 22 (63:42) | generation low 10 (41:32) | deadline (ns >> 20) 32 |
 * A lease is live only while its generation matches the breaker's and its
 * deadline has not passed; a dead holder is judged from outside (psutil)
 * and reclaimed with sg_breaker_reclaim().
 */
#define LS_PID(w) ((uint32_t)((w) >> 42))
#define LS_GEN(w) ((uint32_t)(((w) >> 32) & 0x3ffu))
#define LS_DEADLINE(w) ((uint32_t)((w) & 0xffffffffu))
#define LS_MAKE(pid, g, dl) (((uint64_t)((pid) & 0x3fffffu) << 42) | \
                             ((uint64_t)((g) & 0x3ffu) << 32) | ((uint64_t)(dl) & 0xffffffffu))

/* ---- window bucket word --------------------------------------------------
 * | epoch 20 (63:44) | failures 22 (43:22) | successes 22 (21:0) |
 * slow buckets:      | epoch 20 | slow 22 | ignored 22 |
 * Counting and rotating a stale bucket happen in one CAS (rule).
 * Counts saturate at 2^22 - 1.
 */
#define WB_EMASK 0xfffffULL
#define WB_CMAX 0x3fffffULL
#define WB_EPOCH(w) ((w) >> 44)
#define WB_HI(w) (((w) >> 22) & WB_CMAX)
#define WB_LO(w) ((w) & WB_CMAX)
#define WB_MAKE(e, hi, lo) ((((uint64_t)(e) & WB_EMASK) << 44) | (((uint64_t)(hi) & WB_CMAX) << 22) | \
                            ((uint64_t)(lo) & WB_CMAX))

/* ---- limiter stats bucket (one second each) ------------------------------
 * | epoch 16 (63:48) | accepted 24 (47:24) | rejected 24 (23:0) |
 */
#define LW_NS 1000000000ULL
#define LW_EPOCH(w) ((w) >> 48)
#define LW_ACC(w) (((w) >> 24) & 0xffffffULL)
#define LW_REJ(w) ((w) & 0xffffffULL)

/* ---- limiter TAT word (rate.c, gcra.c) -----------------------------------
 * | regime tag 2 (63:62) | TAT in the regime's virtual time, ns 62 |
 * The tag (the record's tag, mod 4) names the rate record the TAT is
 * expressed in; a TAT one regime behind is converted (debt kept in tokens)
 * in the CAS that next moves it. 62 bits hold any TAT a policy allows
 * (burst x emission <= 2^62) up to 2^62 - now; beyond, it saturates.
 */
#define TT_TAG(w) ((uint32_t)((w) >> 62))
#define TT_NS(w) ((w) & ((1ULL << 62) - 1))
#define TT_MAKE(tag, ns) (((uint64_t)((tag) & 3u) << 62) | ((ns) & ((1ULL << 62) - 1)))

/* ---- rate-change word (rate.c) --------------------------------------------
 * | pending 1 (63) | active record 1 (62) | seq 22 (61:40) | deadline (ns >> 20) 40 |
 * A change claims it (pending), writes the inactive record, flips active,
 * converts the TAT and clears it (seq + 1). A pending change past its
 * deadline is completed by whoever finds it.
 */
#define RC_PENDING(w) ((uint32_t)((w) >> 63))
#define RC_ACTIVE(w) ((uint32_t)(((w) >> 62) & 1u))
#define RC_SEQ(w) ((uint32_t)(((w) >> 40) & 0x3fffffu))
#define RC_DL(w) ((w) & ((1ULL << 40) - 1))
#define RC_MAKE(p, a, seq, dl) (((uint64_t)(p) << 63) | ((uint64_t)(a) << 62) | \
                                (((uint64_t)(seq) & 0x3fffffu) << 40) | ((dl) & ((1ULL << 40) - 1)))

/* ---- rate record: 3 words, each carrying the writer's seq ------------------
 * w0 | seq 2 | base emission ns 62 (0: the policy's) |
 * w1 | seq 2 | regime start t0 ns 62 |
 * w2 | tag 3 | from 20 | to 20 | seq 21 |   scale = 1e6 - field (0 = full)
 * Virtual time runs at scale / to: flat when from == to; a rise ramps from
 * -> to over recovery_ns. All zero: full rate, the policy's emission.
 */
#define RR_SEQ2(w) ((uint32_t)((w) >> 62))
#define RR_VAL(w) ((w) & ((1ULL << 62) - 1))
#define RR_MK(seq, v) (((uint64_t)((seq) & 3u) << 62) | ((v) & ((1ULL << 62) - 1)))
#define RR_TAG(w) ((uint32_t)((w) >> 61))
#define RR_FROM(w) (SG_PPM - (uint32_t)(((w) >> 41) & 0xfffffu))
#define RR_TO(w) (SG_PPM - (uint32_t)(((w) >> 21) & 0xfffffu))
#define RR_SEQ(w) ((uint32_t)((w) & 0x1fffffu))
#define RR_MK2(tag, from, to, seq) (((uint64_t)((tag) & 7u) << 61) | \
                                    ((uint64_t)(SG_PPM - (from)) << 41) | \
                                    ((uint64_t)(SG_PPM - (to)) << 21) | ((uint64_t)(seq) & 0x1fffffu))

/* ---- header line 3: host identity and the init claim (segment.c) ---------
 * Same order as struct sg_host_view (shmguard.h), which copies it.
 * claim word: | done 1 (63) | pid 22 (62:41) | pid-ns tag 9 (40:32) | start ticks 32 |
 *   0: nobody initialises the header yet. The process whose CAS 0 -> its claim
 *   (or dead claim -> its claim) wins writes the header IN PLACE; it publishes
 *   by CAS claim -> claim | done, then the init word (R0). A resumed loser's
 *   CAS fails: it never publishes.
 * mixed: SG_MIX_* bits ORed by attachers from other namespaces (opted in);
 *   with SG_MIX_PID_NS no pid in the segment is judged alive or dead.
 */
#define SG_CLAIM_DONE (1ULL << 63)
struct sg_host_line {
    sg_a64 claim;                          /**< init claim (above) */
    uint64_t boot_id[2];                   /**< the creator's boot id, 128 bits */
    uint64_t pid_ns;                       /**< inode of the creator's pid namespace */
    uint64_t time_ns;                      /**< inode of its time namespace (0: none) */
    int64_t mono_offset_ns;                /**< its time namespace's monotonic offset */
    uint64_t created_mono_ns;              /**< its CLOCK_MONOTONIC at creation */
    sg_a64 mixed;                          /**< SG_MIX_* (above) */
};

struct sg_header {
    alignas(SG_CACHE_LINE) uint64_t magic; /**< SG_MAGIC */
    uint32_t layout_version;               /**< SG_LAYOUT_VERSION */
    uint32_t header_size;                  /**< sizeof(struct sg_header) */
    uint64_t total_size;                   /**< header + capacity * slot_size */
    uint32_t capacity;                     /**< number of slots */
    uint32_t slot_size;                    /**< sizeof(struct sg_slot) */
    uint32_t creator_uid;                  /**< uid of the creator */
    uint32_t creator_pid;                  /**< pid of the creator */
    uint64_t created_unix_ns;              /**< wall clock at creation */
    uint32_t flags;                        /**< SG_HDR_* */
    sg_a32 init;                           /**< SG_INIT_READY, published last (R0) */
    alignas(SG_CACHE_LINE) sg_a64 manual_now_ns; /**< manual clock (tests) */
    alignas(SG_CACHE_LINE) sg_a32 used;    /**< READY slots (statistics only) */
    alignas(SG_CACHE_LINE) struct sg_host_line host; /**< line 3: host identity (below) */
    alignas(SG_CACHE_LINE) sg_a64 agent[8];  /**< line 4: fleet agent lease (fleet.c): [0] lease word, [1] holder start */
    alignas(SG_CACHE_LINE) uint64_t reserved[24]; /**< lines 5-7: zero; future use */
};

/* Policy as stored: same fields as sg_policy_view, atomics so a reader may
 * race a writer of the OTHER buffer without a data race. */
struct sg_policy_raw {
    sg_a64 emission_ns, bucket_ns, open_ns, open_max_ns;  /**< see view */
    sg_a64 probe_lease_ns, slow_call_ns, recovery_ns, fingerprint;
    sg_a32 share_ppm[4];                                  /**< per priority */
    sg_a32 failure_ppm, slow_ppm, adaptive_max_ppm, min_requests;
    sg_a32 buckets, half_open_max, success_threshold, flags;
    sg_a32 rate_floor_ppm, jitter_ppm, backoff_milli, burst;
    sg_a64 max_wait_ns, ticket_lease_ns, retry_window_ns;   /**< round 2: see view */
    sg_a64 throttle_window_ns, predict_horizon_ns;
    sg_a32 max_concurrent, quota_ppm, retry_ratio_ppm, retry_min_milli;
    sg_a32 throttle_k_milli, throttle_min_requests;
};

/* Round-2 areas of a slot. Each is owned by the csrc file named beside it,
 * which gives the words names (keeping the size, asserted below). */
/* ---- bulkhead limit word (bulkhead.c) -------------------------------------
 * | valid 1 | policy seq 7 | span 8 | limit 8 | procs 16 | stamp (ns >> 20) 24 |
 * limit: tickets now (0: no bulkhead); span: words that may still be held
 * (> limit while a shrink drains); procs: attached processes last counted
 * (quota mode); stamp: when they were counted.
 * ---- ticket word (0 = free) ------------------------------------------------
 * | pid 22 (63:42) | per-process generation 10 (41:32) | granted (ns >> 20) 32 |
 */
#define BL_VALID (1ULL << 63)
#define BL_SEQ(w) ((uint32_t)((w) >> 56) & 0x7fu)
#define BL_SPAN(w) ((uint32_t)((w) >> 48) & 0xffu)
#define BL_LIM(w) ((uint32_t)((w) >> 40) & 0xffu)
#define BL_PROCS(w) ((uint32_t)((w) >> 24) & 0xffffu)
#define BL_STAMP(w) ((uint32_t)(w) & 0xffffffu)
#define BL_SHAPE (0xffffULL << 48 | 0xffULL << 40) /* valid, seq, span, limit */
#define BL_MAKE(seq, span, lim, procs, now)                                                       \
    (BL_VALID | ((uint64_t)((seq) & 0x7fu) << 56) | ((uint64_t)((span) & 0xffu) << 48) |        \
     ((uint64_t)((lim) & 0xffu) << 40) | ((uint64_t)((procs) & 0xffffu) << 24) |                \
     (((now) >> 20) & 0xffffffULL))
#define TW_PID(w) ((uint32_t)((w) >> 42))
#define TW_TIME(w) ((uint32_t)(w))
#define TW_LOW 0x3ffffffffffULL /* generation 10 | grant time 32 */
struct sg_bulkhead_area {
    union {
        sg_a64 w[8 + SG_MAX_TICKETS];   /**< the whole area (zeroed by fill_slot) */
        struct {
            sg_a32 wake_seq;            /**< futex word: bumped by a release that has sleepers */
            sg_a32 sleepers;            /**< waiters inside a futex wait (hint) */
            sg_a64 limit;               /**< limit word (above) */
            sg_a64 acquired;            /**< tickets granted, ever */
            sg_a64 rejected;            /**< acquires refused (none free in time) */
            sg_a64 waited;              /**< tickets granted after waiting */
            sg_a64 reclaimed;           /**< tickets taken back from dead or expired holders */
            sg_a64 peak;                /**< most tickets out at once, seen at a grant */
            sg_a64 reserved7;           /**< zero */
            sg_a64 ticket[SG_MAX_TICKETS]; /**< lines 19-26 */
        };
    };
};                                      /**< lines 18-26: bulkhead.c */
/* Retry budget (budget.c): SG_BUDGET_BUCKETS window buckets, each
 * | epoch 20 | attempts 22 | retries 22 | (WB_* above), then two totals. */
struct sg_budget_area {
    sg_a64 bucket[SG_BUDGET_BUCKETS]; /**< [epoch | attempts | retries] over the window */
    sg_a64 retries_total;             /**< retries granted, ever (also without a budget) */
    sg_a64 denied_total;              /**< retries the budget refused, ever */
};                                                         /**< line 27: budget.c */
struct sg_throttle_area {                                   /**< lines 28-29: throttle.c */
    sg_a64 bucket[SG_THROTTLE_BUCKETS]; /**< [epoch 19 | overload 1 | requests 22 | accepts 22] */
    sg_a64 requests, accepts, throttled; /**< totals, ever */
    sg_a64 draws;                        /**< random draws made (the n-th uses n) */
    sg_a64 last_pass;                    /**< while throttling: when a call last passed (ns) */
    sg_a64 reserved;                     /**< zero */
};
/* Holt word (predict.c): | last observed bucket 23 (63:41) |
 * trend, ppm per bucket, signed 21 (40:20) | level ppm 20 (19:0) | */
struct sg_predict_area {                                    /**< line 30: predict.c */
    sg_a64 fail;                         /**< Holt word of the failure ratio */
    sg_a64 slow;                         /**< Holt word of the slow-call ratio */
    sg_a64 opens;                        /**< opens decided by the forecast */
    sg_a64 reserved[5];                  /**< zero */
};
struct sg_fleet_area { sg_a64 w[8]; };                     /**< line 31: fleet.c */

struct sg_slot {
    /* line 0: control */
    alignas(SG_CACHE_LINE) sg_a64 state; /**< kind | pid | claim time */
    uint64_t name_hash;                  /**< FNV-1a of the name (before READY) */
    uint32_t name_len;                   /**< 1..SG_NAME_MAX (before READY) */
    uint32_t pad0;
    sg_a64 policy_seq;                   /**< publish count; low bit = live buffer */
    sg_a64 policy_lease;                 /**< writer lease: pid 22 | deadline 42 */
    sg_a64 incarn;                       /**< last incarnation published (table.c) */
    /* line 1 */
    alignas(SG_CACHE_LINE) char name[SG_NAME_MAX]; /**< not NUL-terminated at 64 */
    /* lines 2-7 */
    alignas(SG_CACHE_LINE) struct sg_policy_raw policy[2];
    /* line 8: breaker */
    alignas(SG_CACHE_LINE) sg_a64 bword; /**< state | gen | since */
    sg_a64 ho;                           /**< half-open successes of a gen */
    sg_a64 streak;                       /**< consecutive opens (backoff) */
    sg_a64 baseline_ppm;                 /**< long-horizon failure ratio */
    sg_a64 last_fail;                    /**< time of the newest failure or slow call (hint) */
    sg_a64 opens;                        /**< transitions to OPEN, ever */
    sg_a64 wepoch;                       /**< newest window epoch (full 64 bits; window.c) */
    sg_a64 judged;                       /**< last judgement without a trip: gen | epoch (hint) */
    /* line 9 */
    alignas(SG_CACHE_LINE) sg_a64 lease[SG_MAX_PROBES];
    /* lines 10-13 */
    alignas(SG_CACHE_LINE) sg_a64 bucket[SG_MAX_BUCKETS];
    alignas(SG_CACHE_LINE) sg_a64 slow[SG_MAX_BUCKETS];
    /* line 14: limiter */
    alignas(SG_CACHE_LINE) sg_a64 tat;   /**< GCRA theoretical arrival time */
    sg_a64 rchange;                      /**< rate-change word (rate.c) */
    sg_a64 rrec[2][3];                   /**< rate records (rate.c) */
    /* line 15 */
    alignas(SG_CACHE_LINE) sg_a64 accepted[SG_PRIORITIES];
    sg_a64 rejected[SG_PRIORITIES];
    /* line 16 */
    alignas(SG_CACHE_LINE) sg_a64 waited[SG_PRIORITIES];
    sg_a64 b_success, b_failure, b_ignored, b_rejected;
    /* line 17 */
    alignas(SG_CACHE_LINE) sg_a64 lwin[SG_STAT_BUCKETS];
    /* lines 18-31: round-2 areas */
    alignas(SG_CACHE_LINE) struct sg_bulkhead_area bulkhead;
    alignas(SG_CACHE_LINE) struct sg_budget_area budget;
    alignas(SG_CACHE_LINE) struct sg_throttle_area throttle;
    alignas(SG_CACHE_LINE) struct sg_predict_area predict;
    alignas(SG_CACHE_LINE) struct sg_fleet_area fleet;
};

_Static_assert(sizeof(struct sg_header) == SG_HEADER_SIZE, "header is 8 cache lines");
_Static_assert(offsetof(struct sg_header, host) == SG_HOST_LINE, "host identity line");
_Static_assert(sizeof(struct sg_host_line) == 64 && sizeof(struct sg_host_view) == 64,
               "host identity is one line");
_Static_assert(offsetof(struct sg_host_line, boot_id) == offsetof(struct sg_host_view, boot_id) &&
               offsetof(struct sg_host_line, created_mono_ns) ==
                   offsetof(struct sg_host_view, created_mono_ns) &&
               offsetof(struct sg_host_line, mixed) == offsetof(struct sg_host_view, mixed),
               "the view mirrors the line");
_Static_assert(offsetof(struct sg_header, agent) == 4 * 64, "fleet agent line");
_Static_assert(sizeof(struct sg_policy_raw) == 192, "policy is 3 cache lines");
_Static_assert(sizeof(struct sg_slot) == SG_SLOT_SIZE, "slot is 2 KiB");
_Static_assert(offsetof(struct sg_slot, incarn) < 64, "control line is one line");
_Static_assert(offsetof(struct sg_slot, bword) == 8 * 64, "breaker line");
_Static_assert(offsetof(struct sg_slot, judged) == 8 * 64 + 56, "breaker line is one line");
_Static_assert(offsetof(struct sg_slot, tat) == 14 * 64, "limiter line");
_Static_assert(offsetof(struct sg_slot, lwin) == 17 * 64, "stats line");
_Static_assert(offsetof(struct sg_slot, accepted) == 15 * 64, "limiter line is one line");
_Static_assert(offsetof(struct sg_slot, bulkhead) == 18 * 64, "bulkhead lines");
_Static_assert(sizeof(struct sg_bulkhead_area) == 9 * 64, "bulkhead: 9 lines");
_Static_assert(offsetof(struct sg_slot, bulkhead.ticket) == 19 * 64, "tickets: lines 19-26");
_Static_assert(offsetof(struct sg_slot, budget) == 27 * 64, "budget line");
_Static_assert(sizeof(struct sg_budget_area) == 64, "budget: 1 line");
_Static_assert(offsetof(struct sg_slot, throttle) == 28 * 64, "throttle lines");
_Static_assert(sizeof(struct sg_throttle_area) == 2 * 64, "throttle: 2 lines");
_Static_assert(offsetof(struct sg_slot, predict) == 30 * 64, "predict line");
_Static_assert(sizeof(struct sg_predict_area) == 64, "predict: 1 line");
_Static_assert(offsetof(struct sg_slot, fleet) == 31 * 64, "fleet line");
_Static_assert(sizeof(struct sg_fleet_area) == 64, "fleet: 1 line");

/* ---- keyed limiter tables (keyed.c) --------------------------------------
 * Each keyed limiter is its OWN shared-memory object
 * (/shmguard.<uid>.<segment>~kl~<name>), not part of the segment map above,
 * so its layout has its own magic and version (SG_KL_VERSION).
 *
 * Offset table (bytes)
 *   0     struct sg_kl_header      (1024: 16 cache lines)
 *   1024  struct sg_kl_entry[slots] (16 each; slots = 2 x capacity)
 *
 * Header lines: 0-1 identity, sizes, hash seed (written once by the
 *   creator before the init word); 2 rate selector and writer lease; 3-6
 *   the rate records rate[2] (double buffer, rsel picks one); 7-14 the
 *   counters, one line per stripe (a process counts in the stripe of its
 *   pid, so processes deciding on different keys share no written line);
 *   15 reserved.
 *
 * Virtual time: TATs are not clock times but "virtual" ns in units of the
 * emission interval at creation (T0): V(now) = v + (now - c) * T0 / T for
 * the current interval T (rounded down: V never runs ahead). A table whose
 * rate never changed has c = v = 0 and T = T0: V(now) = now. Changing the
 * rate at time c starts a new record (c, V(c), new T): every key keeps
 * its debt in tokens (V - TAT is unchanged at c), so an exhausted key stays
 * exhausted (DESIGN: x/time/rate's SetLimit).
 *
 * Entry: two 64-bit words that change TOGETHER, by one 128-bit CAS
 * (cmpxchg16b; -mcx16 on x86-64):
 *    63                                                 2 1    0
 *   +----------------------------------------------------+------+
 *   |   fingerprint: SipHash-2-4 of the key, bits 63..2   |state |   tag
 *   +----------------------------------------------------+------+
 *   |   GCRA theoretical arrival time (ns, segment clock)        |   tat
 *   +-----------------------------------------------------------+
 * tag == 0 is EMPTY (never used: a probe stops there). state 1 LIVE,
 * 2 PENDING (inserted, duplicates not yet folded: nobody decides on it),
 * 3 RETIRED (folded away; reusable). A LIVE or PENDING entry whose
 * tat <= now holds a full bucket, exactly like a key never seen: it is
 * reusable by any key.
 *
 * Why one 128-bit word and not a tag word and a TAT word with their own
 * CASes: an entry is reused for another key while a process may be deciding
 * on its old key's TAT. With two words, that process's TAT CAS could land
 * after the reuse (the TAT value repeats: ABA) and charge the new key, or a
 * reuse could land between a GCRA read and write. With one CAS over
 * (tag, tat) a decision succeeds only on the exact (key, TAT) it read.
 */
#define SG_KL_MAGIC 0x4445594b47484d53ULL /* "SMHGKYED" little-endian */
#define SG_KL_VERSION 1u
#define KT_EMPTY 0u
#define KT_LIVE 1u
#define KT_PENDING 2u
#define KT_RETIRED 3u
#define KT_STATE(t) ((uint32_t)((t) & 3u))
#define KT_FP(t) ((t) & ~3ULL)

struct sg_kl_entry {
    alignas(16) uint64_t tag; /**< fingerprint | state (accessed atomically) */
    uint64_t tat;             /**< GCRA TAT, ns (accessed atomically) */
};

/* A rate record: what a decision needs, published whole (double buffer). */
struct sg_kl_rate {
    alignas(SG_CACHE_LINE) sg_a64 c_ns;  /**< clock time the record starts */
    sg_a64 v_ns;                         /**< V(c_ns) */
    sg_a64 emission_ns;                  /**< T: the current interval */
    sg_a64 burst;                        /**< tokens */
    sg_a64 fingerprint;                  /**< hash of (rate, burst) */
    sg_a64 tol[SG_PRIORITIES];           /**< tolerance per priority, virtual ns */
    sg_a64 reserved;                     /**< zero */
};

/* Counters of one stripe (relaxed: statistics only; a view sums the stripes). */
struct sg_kl_counters {
    alignas(SG_CACHE_LINE) sg_a64 accepted; /**< admitted decisions */
    sg_a64 rejected;                        /**< not conforming */
    sg_a64 waited;                          /**< admitted with a delay */
    sg_a64 full_rejected;                   /**< no entry free: on_full=reject */
    sg_a64 full_allowed;                    /**< no entry free: on_full=allow */
    sg_a64 inserted;                        /**< new keys given an entry */
    sg_a64 evicted;                         /**< ... of them in another key's expired entry */
    sg_a64 folded;                          /**< duplicate entries folded (races) */
};

struct sg_kl_header {
    /* lines 0-1: written by the creator before init (R20) */
    alignas(SG_CACHE_LINE) uint64_t magic; /**< SG_KL_MAGIC */
    uint32_t version;                      /**< SG_KL_VERSION */
    uint32_t header_size;                  /**< sizeof(struct sg_kl_header) */
    uint64_t total_size;                   /**< header + slots * entry size */
    uint64_t slots;                        /**< entries: 2 x capacity */
    uint32_t capacity;                     /**< live keys it is sized for */
    uint32_t entry_size;                   /**< sizeof(struct sg_kl_entry) */
    uint64_t emission_ns;                  /**< T0: the interval at creation, unit of TATs */
    uint32_t burst;                        /**< tokens at creation */
    uint32_t flags;                        /**< SG_KL_ON_FULL_ALLOW */
    uint32_t share_ppm[SG_PRIORITIES];     /**< burst share per priority */
    uint64_t seed[2];                      /**< SipHash key (os.urandom) */
    uint64_t fingerprint;                  /**< hash of (rate, burst) at creation */
    uint64_t created_unix_ns;              /**< wall clock at creation */
    uint32_t creator_pid;                  /**< pid of the creator */
    sg_a32 init;                           /**< SG_INIT_READY, published last (R20) */
    /* line 2 */
    alignas(SG_CACHE_LINE) sg_a64 rsel;   /**< publish count; low bit = live record (R21) */
    sg_a64 lease;                          /**< rate writer: pid 32 | start (unix s) 32; 0 free */
    /* lines 3-6 */
    alignas(SG_CACHE_LINE) struct sg_kl_rate rate[2];
    /* lines 7-14 */
    alignas(SG_CACHE_LINE) struct sg_kl_counters stripe[SG_KL_STRIPES];
    alignas(SG_CACHE_LINE) uint64_t reserved[8]; /**< line 15: zero */
};

_Static_assert(sizeof(struct sg_kl_entry) == SG_KL_ENTRY_SIZE, "keyed entry is 16 bytes");
_Static_assert(sizeof(struct sg_kl_header) == SG_KL_HEADER_SIZE, "keyed header is 16 lines");
_Static_assert(offsetof(struct sg_kl_header, rsel) == 2 * 64, "keyed rate selector line");
_Static_assert(offsetof(struct sg_kl_header, rate) == 3 * 64, "keyed rate records");
_Static_assert(offsetof(struct sg_kl_header, stripe) == 7 * 64, "keyed counter stripes");
_Static_assert(sizeof(struct sg_kl_counters) == 64, "a stripe is one line");
_Static_assert(sizeof(struct sg_kl_rate) == 2 * 64, "a rate record is 2 lines");

/* One entry as one 128-bit value (the CAS unit). */
__extension__ typedef unsigned __int128 sg_u128;
union sg_kl_word {
    struct sg_kl_entry e;
    sg_u128 w;
};

/* Reads a consistent (tag, tat) pair without writing: tag, tat, tag again;
 * a pair whose tag did not change is one state of the entry (every write
 * is one 128-bit CAS; a tag that left and came back in between would need
 * a whole reuse cycle). Under heavy churn the last read is returned: it is
 * used only to decide a rejection or as a CAS's expected value, which fails
 * on anything but the exact current state. */
static inline void sg_kl_load(struct sg_kl_entry *e, uint64_t *tag, uint64_t *tat)
{
    uint64_t t1, x, t2;
    for (int i = 0; i < 8; i++) {
        /* acquire: the tat read stays after the first tag read and before
         * the second; pairs with the CAS's full barrier (sg_kl_cas) */
        t1 = __atomic_load_n(&e->tag, __ATOMIC_ACQUIRE);
        x = __atomic_load_n(&e->tat, __ATOMIC_ACQUIRE);
        t2 = __atomic_load_n(&e->tag, __ATOMIC_RELAXED);
        if (t1 == t2)
            break;
    }
    *tag = t2;
    *tat = x;
}

/* The only write to an entry: (tag, tat) -> (ntag, ntat) if it still holds
 * exactly (tag, tat). A full barrier (lock cmpxchg16b). */
static inline int sg_kl_cas(struct sg_kl_entry *e, uint64_t tag, uint64_t tat, uint64_t ntag,
                            uint64_t ntat)
{
    union sg_kl_word o, n;
    o.e.tag = tag;
    o.e.tat = tat;
    n.e.tag = ntag;
    n.e.tat = ntat;
    return __sync_bool_compare_and_swap((sg_u128 *)(void *)e, o.w, n.w);
}

/* Internal, shared between keyed.c, keyed_gcra.c and keyed_rate.c. */
void sg_kl_settle(const struct sg_kl_handle *kh, uint64_t home, uint64_t fp);
struct sg_kl_now {
    uint64_t vnow;              /* V(now), virtual ns */
    uint64_t t0, emission_ns, burst, fingerprint;
    uint64_t tol[SG_PRIORITIES]; /* virtual ns, >= T0 */
};
void sg_kl_rate_now(const struct sg_kl_handle *kh, uint64_t now, struct sg_kl_now *out);
uint64_t sg_kl_real_ns(const struct sg_kl_now *r, uint64_t virt);
void sg_kl_tolerances(uint64_t t0, uint64_t burst, const uint32_t share[SG_PRIORITIES],
                      sg_a64 tol[SG_PRIORITIES]);
void sg_kl_rate_init(struct sg_kl_rate *r, uint64_t t0, uint64_t burst, uint64_t fingerprint,
                     const uint32_t share[SG_PRIORITIES]);
static inline struct sg_kl_counters *sg_kl_stripe(const struct sg_kl_handle *kh)
{
    return &((struct sg_kl_header *)kh->table)->stripe[kh->stripe & (SG_KL_STRIPES - 1)];
}
static inline struct sg_kl_entry *sg_kl_at(const struct sg_kl_handle *kh, uint64_t home,
                                           uint32_t i)
{
    uint64_t idx = home + i; /* home < slots and slots >= SG_KL_PROBES */
    if (idx >= kh->slots)
        idx -= kh->slots;
    return (struct sg_kl_entry *)((char *)kh->table + sizeof(struct sg_kl_header)) + idx;
}

/* Saturating 64-bit arithmetic (policies at the extremes never wrap). */
static inline uint64_t sg_sat_add(uint64_t a, uint64_t b)
{
    uint64_t r;
    return __builtin_add_overflow(a, b, &r) ? UINT64_MAX : r;
}
static inline uint64_t sg_sat_mul(uint64_t a, uint64_t b)
{
    uint64_t r;
    return __builtin_mul_overflow(a, b, &r) ? UINT64_MAX : r;
}
/* a * ppm / 1e6, saturating. Split so both divisions are by the constant
 * 1e6 (a multiply and shift), never a 128-bit division: this is on the
 * limiter's hot path. Exact: (q*1e6 + r)*ppm/1e6 = q*ppm + r*ppm/1e6. */
static inline uint64_t sg_mul_ppm(uint64_t a, uint64_t ppm)
{
    uint64_t q = a / SG_PPM, r = a % SG_PPM, hi, lo;
    if (__builtin_mul_overflow(q, ppm, &hi) || __builtin_mul_overflow(r, ppm, &lo))
        return UINT64_MAX;
    return sg_sat_add(hi, lo / SG_PPM);
}

/* The handle's slot while it still holds the incarnation the handle was
 * bound to (sg_handle_init), else NULL: a closed service (slot NULL) or a
 * removed endpoint whose slot may now be another's. relaxed: a check, not
 * an ordering; a call stalled between this check and its CAS is the one
 * window left (the fill resets every word, so such a CAS fails). */
static inline struct sg_slot *sg_hslot(const struct sg_handle *h)
{
    struct sg_slot *s = h->slot;
    return s != NULL && LD(&s->state) == h->ready ? s : NULL;
}

/* Test hook: raise(SIGSTOP), once per process, when env SHMGUARD_TEST_STALL
 * names `point` (cold paths only: registration fill, policy publish). */
void sg_test_stall(const char *point);
/* table.c: the slot holds `name` (its fields as published before READY) */
int sg_slot_named(const struct sg_slot *s, const char *name, uint32_t n);

/* Internal, shared between csrc files. */
uint64_t sg_now_h(const struct sg_handle *h);
uint64_t sg_mono_ns(void);
struct sg_slot *sg_slot_at(const void *base, uint32_t index);
void sg_policy_load(const struct sg_slot *s, struct sg_policy_view *out);
void sg_policy_store(struct sg_policy_raw *p, const struct sg_policy_view *v);

/* rate.c: the limiter's rate regime (virtual time, conversions, changes) */
struct sg_rate {
    uint64_t T;        /**< emission interval in virtual ns (the regime's target rate) */
    uint64_t vnow;     /**< virtual now */
    uint64_t t0;       /**< regime start */
    uint64_t R;        /**< recovery_ns */
    uint64_t Tb;       /**< base emission interval of the regime */
    uint32_t s_now;    /**< scale now, ppm */
    uint32_t s_to;     /**< scale the regime ramps to */
    uint32_t tag;      /**< regime tag (TAT words carry it) */
    uint32_t active;   /**< record index */
    uint32_t flags;    /**< the policy's (SG_POL_*) */
    uint32_t burst;
    uint32_t share;    /**< burst share of the asked priority, ppm */
    uint32_t drift;    /**< the policy's rate is not the regime's: retune */
};
int sg_rate_load(struct sg_slot *s, uint64_t now, uint32_t prio, struct sg_rate *out);
int sg_rate_convert(struct sg_slot *s, const struct sg_rate *r, uint64_t tat, uint64_t *tv);
uint64_t sg_rate_real_delay(const struct sg_rate *r, uint64_t d_virtual);

struct sg_window_sum {
    uint64_t failures, successes, slow;
};
void sg_window_add(struct sg_slot *s, const struct sg_policy_view *p, uint64_t now, int outcome,
                   int slow);
void sg_window_sum(const struct sg_slot *s, const struct sg_policy_view *p, uint64_t now,
                   uint64_t since_ns, struct sg_window_sum *out);
void sg_window_reset(struct sg_slot *s, const struct sg_policy_view *p, uint64_t now);
uint32_t sg_window_threshold(const struct sg_slot *s, const struct sg_policy_view *p);
void sg_throttle_count(struct sg_slot *s, const struct sg_policy_view *p, uint64_t now,
                       int outcome);
void sg_throttle_reset(struct sg_slot *s);
/* Whether the live policy throttles: the admission path asks before calling
 * throttle.c, so an endpoint without throttling pays two loads. A2: one
 * field needs no seqlock re-check. */
static inline int sg_throttle_enabled(struct sg_slot *s)
{
    uint64_t seq = atomic_load_explicit(&s->policy_seq, memory_order_acquire);
    return LD(&s->policy[seq & 1].throttle_k_milli) != 0;
}
int sg_predict_trips(struct sg_slot *s, const struct sg_policy_view *p, uint64_t now,
                     uint64_t since_ns, uint32_t threshold_ppm);
/* bulkhead_wait.c: a ticket went back to 0; wakes one sleeper (returns how many woke) */
int sg_bulkhead_freed(struct sg_bulkhead_area *b);

/* budget.c: deposits one admitted attempt while the policy has a retry budget */
void sg_budget_admitted(struct sg_slot *s, uint64_t now);

#endif /* SHMGUARD_LAYOUT_H */
