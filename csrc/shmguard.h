/*
 * shmguard.h -- the whole Python <-> C contract.
 *
 * Everything between CDEF-BEGIN and CDEF-END is also read by cffi
 * (csrc/ffi_build.py), so the compiler and the binding see ONE text.
 * Keep that part to plain types: no _Atomic, no alignas, no macros with
 * expressions (cffi accepts "#define NAME <integer>" only).
 *
 * Conventions: every function returns an `enum sg_rc` (or a packed int64
 * token; negative values are the `enum sg_rc` rejection or error itself); times are nanoseconds on the
 * segment's clock and end in _ns; outputs go through trailing pointers.
 * Nothing here allocates, sets errno or takes a lock.
 */
#ifndef SHMGUARD_H
#define SHMGUARD_H

#include <stdint.h>

/* CDEF-BEGIN */
#define SG_LAYOUT_VERSION 5
#define SG_ABI_VERSION 5
#define SG_HEADER_SIZE 512
#define SG_SLOT_SIZE 2048
#define SG_NAME_MAX 64
#define SG_MAX_BUCKETS 16
#define SG_MAX_PROBES 8
#define SG_STAT_BUCKETS 8
#define SG_PRIORITIES 4
#define SG_MAX_CAPACITY 65536
#define SG_PPM 1000000
#define SG_MAX_TICKETS 64

/* Return codes: one convention for every function (rule).
 *   0 and positive: success (SG_OK, SG_CREATED; tokens are >= 0).
 *   negative:       a rejection (SG_R_*: the call may not go ahead now) or an
 *                   error (SG_E_*: bad input, a busy lease, a corrupt segment).
 * Functions returning int64_t tokens return these negative values as they
 * are, so `x < 0` is the one test for "not admitted" everywhere. */
enum sg_rc {
    SG_OK = 0,
    SG_CREATED = 1,          /**< register: a new slot was made */
    SG_R_OPEN = -2,          /**< breaker open: call rejected */
    SG_R_PROBES_FULL = -3,   /**< half-open and every probe permit is leased */
    SG_R_RATE_LIMITED = -4,  /**< limiter: not conforming now */
    SG_R_BULKHEAD_FULL = -5, /**< bulkhead: every ticket is out (bulkhead.c) */
    SG_R_THROTTLED = -7,     /**< adaptive throttling rejected the call locally */
    SG_R_RETRY_BUDGET = -8,  /**< retry budget: no retry left in the window */
    SG_E_BUSY = -10,         /**< a live claim or writer lease is in the way */
    SG_E_FULL = -11,         /**< slot table full */
    SG_E_NOT_FOUND = -12,
    SG_E_ARG = -13,          /**< bad argument (index, length, enum) */
    SG_E_COST = -14,         /**< cost can never conform (exceeds burst) */
    SG_E_GONE = -15,         /**< handle: its endpoint was removed (or the service closed) */
    SG_E_NOT_READY = -20,    /**< segment header not published yet */
    SG_E_MAGIC = -21,
    SG_E_VERSION = -22,
    SG_E_SIZE = -23,         /**< header sizes disagree with each other */
    SG_E_TRUNCATED = -24,    /**< mapping shorter than the header claims */
    SG_E_CORRUPT = -25,      /**< a slot or word fails validation */
    SG_E_CLOCK = -26         /**< manual clock call on a real-clock segment */
};

/* Breaker modes (state field of the breaker word). */
enum sg_bstate {
    SG_CLOSED = 0, SG_OPEN = 1, SG_HALF_OPEN = 2,
    SG_FORCED_OPEN = 3, SG_FORCED_CLOSED = 4, SG_METRICS_ONLY = 5
};

/* What sg_record did to the breaker (for callbacks). */
enum sg_transition {
    SG_T_NONE = 0, SG_T_TO_OPEN = 1, SG_T_TO_HALF_OPEN = 2, SG_T_TO_CLOSED = 3,
    SG_T_STALE = 16              /* sg_breaker_record: outcome of an older generation, dropped */
};

/* Outcome bits ORed into a token by the caller of sg_record(). */
enum sg_outcome { SG_SUCCESS = 1, SG_FAILURE = 2, SG_IGNORE = 3 };

/* Slot kinds (sg_slot_view.kind). */
#define SG_SLOT_EMPTY 0
#define SG_SLOT_CLAIMED 1
#define SG_SLOT_READY 2
#define SG_SLOT_DELETED 3        /* removed endpoint: reusable */
#define SG_SLOT_ABANDONED 4      /* claim of a stalled (live) registrant: skipped */

/* Header flags. */
#define SG_HDR_MANUAL_CLOCK 1

/* Policy as the caller fills it; copied into the slot by C. */
struct sg_policy_view {
    uint64_t emission_ns;        /* 1/rate, rounded up */
    uint64_t bucket_ns;          /* window / buckets */
    uint64_t open_ns;            /* break duration */
    uint64_t open_max_ns;        /* cap when backoff grows it */
    uint64_t probe_lease_ns;     /* half-open permit lease */
    uint64_t slow_call_ns;       /* 0 = slow calls not tracked */
    uint64_t recovery_ns;        /* adaptive rate: time to recover fully */
    uint64_t fingerprint;        /* hash of the whole Python policy */
    uint32_t share_ppm[4];       /* burst share per priority (CRITICAL > 1e6 ok) */
    uint32_t failure_ppm;        /* failure-ratio threshold */
    uint32_t slow_ppm;           /* slow-call ratio threshold */
    uint32_t adaptive_max_ppm;   /* adaptive threshold ceiling */
    uint32_t min_requests;
    uint32_t buckets;
    uint32_t half_open_max;
    uint32_t success_threshold;
    uint32_t flags;              /* SG_POL_* */
    uint32_t rate_floor_ppm;
    uint32_t jitter_ppm;
    uint32_t backoff_milli;      /* 1000 = no growth */
    uint32_t burst;
    /* round 2: each group belongs to one csrc file (0 = feature off) */
    uint64_t max_wait_ns;        /* bulkhead.c: longest wait for a ticket */
    uint64_t ticket_lease_ns;    /* bulkhead.c: 0 = held until released or the holder dies */
    uint64_t retry_window_ns;    /* budget.c: the retry budget's window */
    uint64_t throttle_window_ns; /* throttle.c: adaptive throttling window */
    uint64_t predict_horizon_ns; /* predict.c: predictive breaking horizon */
    uint32_t max_concurrent;     /* bulkhead.c: tickets (bits 0-7, <= SG_MAX_TICKETS) | CRITICAL reserve (bits 8-15) */
    uint32_t quota_ppm;          /* bulkhead.c: tickets as a share of attached processes */
    uint32_t retry_ratio_ppm;    /* budget.c: retries per first attempt */
    uint32_t retry_min_milli;    /* budget.c: retries per second always allowed, x1000 */
    uint32_t throttle_k_milli;   /* throttle.c: the SRE book's K, x1000 */
    uint32_t throttle_min_requests;
};
#define SG_POL_ADAPTIVE 1
#define SG_POL_NO_LIMIT 2
#define SG_POL_FLEET_RATE 4      /* fleet/: rate and burst are fleet-wide */
#define SG_POL_FLEET_BREAKER 8   /* fleet/: breaker state shared across hosts */
#define SG_POL_OVERRIDDEN 16     /* the CLI changed the registered policy (set-rate) */

/* Header line 3 (host identity), as stored; see layout.h. */
#define SG_HOST_LINE 192         /* its byte offset in the header */
#define SG_MIX_PID_NS 1          /* an attacher from another pid namespace (opted in) */
#define SG_MIX_TIME_NS 2         /* an attacher from another time namespace (opted in) */
struct sg_host_view {
    uint64_t claim;              /* init claim: done 1 | pid 22 | pid-ns tag 9 | start ticks 32 */
    uint64_t boot_id[2];         /* /proc/sys/kernel/random/boot_id (0: unknown) */
    uint64_t pid_ns;             /* inode of /proc/self/ns/pid (0: unknown) */
    uint64_t time_ns;            /* inode of /proc/self/ns/time (0: no time namespaces) */
    int64_t mono_offset_ns;      /* the time namespace's monotonic offset */
    uint64_t created_mono_ns;    /* the creator's CLOCK_MONOTONIC at creation */
    uint64_t mixed;              /* SG_MIX_* */
};

struct sg_header_view {
    uint64_t total_size;
    uint64_t created_unix_ns;
    uint32_t layout_version;
    uint32_t capacity;
    uint32_t slot_size;
    uint32_t creator_uid;
    uint32_t creator_pid;
    uint32_t flags;
    uint32_t used;
    struct sg_host_view host;
};

struct sg_slot_view {
    char name[64];
    uint32_t name_len;
    uint32_t kind;               /* 0 empty, 1 claimed, 2 ready */
    uint32_t claim_pid;
    uint32_t claim_age_ms;
    uint64_t policy_seq;
    uint64_t word;               /* the raw state word (takeover / abandon) */
};

struct sg_breaker_view {
    uint32_t state;              /* enum sg_bstate */
    uint32_t generation;
    uint64_t state_age_ns;       /* time in this state */
    uint64_t open_remaining_ns;  /* OPEN: time until half-open */
    uint64_t calls;              /* in window (success + failure) */
    uint64_t failures;
    uint64_t slow;
    uint32_t threshold_ppm;      /* effective (after adaptation) */
    uint32_t baseline_ppm;
    uint32_t half_open_successes;
    uint32_t probes_in_flight;
    uint32_t probe_pid[8];
    uint64_t probe_lease_left_ns[8];
    uint64_t probe_word[8];
    uint64_t opens;
    uint64_t open_streak;
    uint64_t successes_total;
    uint64_t failures_total;
    uint64_t ignored_total;
    uint64_t rejected_total;
};

struct sg_limiter_view {
    double tokens;               /* free now, full-burst priority */
    double effective_rate;       /* per second, after adaptation */
    uint32_t scale_ppm;          /* adaptive rate scale now */
    uint32_t scale_target_ppm;
    uint64_t accepted[4];
    uint64_t rejected[4];
    uint64_t waited[4];
    uint64_t win_accepted;       /* over the stats window */
    uint64_t win_rejected;
    uint64_t win_ns;             /* span the window covers */
    uint64_t wait_ns;            /* until one token is free at this priority (after queued reservations) */
};

/* A limiter decision with its delay (reserve / wait paths). */
struct sg_decision {
    int64_t delay_ns;            /* >0: wait this long (reserved) or retry after */
    uint64_t act_ns;             /* clock time the reservation conforms */
    uint64_t tat_ns;             /* TAT this reservation left (for cancel) */
    uint64_t took_ns;            /* what it added to the TAT (cancel refunds at most this) */
};

/* Per-process handle of one slot (process memory, never shared). */
struct sg_handle {
    void *slot;
    void *clock;                 /* manual clock word, or NULL for monotonic */
    void *base;
    uint64_t map_len;
    uint32_t index;
    uint32_t pad;
    uint64_t ready;              /* the READY word (incarnation) the handle is bound to */
};

/* segment.c */
uint64_t sg_segment_size(uint32_t capacity);
/* claim: CAS the init claim from `expected` (0 or a dead holder's) to `claim`;
 * write: the claim holder (host->claim) writes the header in place;
 * publish: makes it visible (SG_E_BUSY: the claim was taken over, nothing published);
 * init: claim + write + publish of a private zeroed buffer (tests, bench). */
int sg_segment_claim(void *base, uint64_t len, uint64_t expected, uint64_t claim,
                     uint64_t *seen);
int sg_segment_write(void *base, uint64_t len, uint32_t capacity, uint32_t uid,
                     uint32_t pid, uint64_t unix_ns, uint32_t flags,
                     const struct sg_host_view *host);
int sg_segment_init(void *base, uint64_t len, uint32_t capacity, uint32_t uid,
                    uint32_t pid, uint64_t unix_ns, uint32_t flags);
int sg_segment_publish(void *base, uint64_t len, uint64_t claim);
int sg_segment_mix(void *base, uint64_t bits);
uint64_t sg_segment_mixed(const void *base);
int sg_segment_check(const void *base, uint64_t len, struct sg_header_view *out);
int sg_handle_init(struct sg_handle *h, void *base, uint64_t len, uint32_t index);
uint64_t sg_clock_now(const void *base);
/* slot_detach.c: replaces a mapping with private zero pages (close under concurrent use) */
int sg_segment_detach(void *base, uint64_t len);
int sg_segment_map(void *base, uint64_t len, int fd);
int sg_clock_set(void *base, uint64_t now_ns);

/* table.c */
/* register: SG_E_BUSY with index_out and claim_out naming a claim in the way;
 * the caller judges its owner (proven dead: takeover; alive past a bound:
 * abandon) and calls again. A claim is never taken over by age here. */
int sg_table_register(void *base, uint64_t len, const char *name, uint32_t name_len,
                      const struct sg_policy_view *pol, uint32_t pid,
                      uint32_t *index_out, uint64_t *claim_out);
int sg_table_find(void *base, uint64_t len, const char *name, uint32_t name_len,
                  uint32_t *index_out);
/* takeover: a CLAIMED or ABANDONED word whose owner is proven dead -> DELETED;
 * abandon: a CLAIMED word of a live owner -> ABANDONED (its publish fails) */
int sg_table_takeover(void *base, uint64_t len, uint32_t index, uint64_t claim_word);
int sg_table_abandon(void *base, uint64_t len, uint32_t index, uint64_t claim_word);
/* unregister: READY name -> DELETED (handles bound to it get SG_E_GONE) */
int sg_table_unregister(void *base, uint64_t len, const char *name, uint32_t name_len);
/* bind: sg_handle_init, then checks the slot is READY with `name` (else SG_E_NOT_FOUND) */
int sg_handle_bind(struct sg_handle *h, void *base, uint64_t len, uint32_t index,
                   const char *name, uint32_t name_len);
/* SG_OK while the handle's endpoint is the one it was bound to, else SG_E_GONE */
int sg_handle_check(const struct sg_handle *h);
int sg_slot_snapshot(const void *base, uint64_t len, uint32_t index,
                     struct sg_slot_view *out);
int sg_policy_read(const struct sg_handle *h, struct sg_policy_view *out);
int sg_policy_publish(const struct sg_handle *h, const struct sg_policy_view *pol,
                      uint32_t pid, uint64_t *lease_out);
int sg_policy_takeover(const struct sg_handle *h, uint64_t lease_word);
int sg_policy_check(const struct sg_policy_view *pol);

/* breaker.c: explicit-time core, then handle forms that read the clock */
int64_t sg_breaker_acquire_at(void *slot, uint64_t now_ns, uint32_t pid);
/* acquire as a caller that read the breaker word `seen` earlier (step tests
 * replay interleavings with it); the word is only a starting point */
int64_t sg_breaker_acquire_seen(void *slot, uint64_t now_ns, uint32_t pid, uint64_t seen);
int sg_breaker_record_at(void *slot, uint64_t now_ns, int64_t token);
int sg_breaker_force_at(void *slot, uint64_t now_ns, uint32_t state);
int sg_breaker_reclaim(void *slot, uint32_t probe, uint64_t expected_word);
int sg_breaker_snapshot_at(const void *slot, uint64_t now_ns, struct sg_breaker_view *out);
int64_t sg_breaker_acquire(const struct sg_handle *h);
int sg_breaker_record(const struct sg_handle *h, int64_t token);
uint64_t sg_breaker_retry_after(const struct sg_handle *h);

/* gcra.c */
int sg_limiter_decide_at(void *slot, uint64_t now_ns, uint64_t cost, uint32_t priority,
                         int64_t max_wait_ns, struct sg_decision *out);
int sg_limiter_cancel_at(void *slot, uint64_t now_ns, uint64_t cost_prio,
                         const struct sg_decision *d);
int sg_limiter_cancel(const struct sg_handle *h, uint64_t cost_prio, const struct sg_decision *d);
int sg_limiter_scale_at(void *slot, uint64_t now_ns, uint32_t health_ppm);
/* after a new policy rate: start a regime at that rate keeping the debt in
 * tokens (SG_E_BUSY: another change is under way, retry) */
int sg_limiter_retune_at(void *slot, uint64_t now_ns);
int sg_limiter_snapshot_at(const void *slot, uint64_t now_ns, uint32_t priority,
                           struct sg_limiter_view *out);
int sg_allow(const struct sg_handle *h);
int sg_allow_cp(const struct sg_handle *h, uint64_t cost_prio);
int sg_reserve(const struct sg_handle *h, uint64_t cost_prio, int64_t max_wait_ns,
               struct sg_decision *out);

/* gcra.c, hold: a server's Retry-After (adapters/): no priority conforms before until_ns */
int sg_limiter_hold_at(void *slot, uint64_t now_ns, uint64_t until_ns);
int sg_limiter_hold(const struct sg_handle *h, uint64_t until_ns);
/* reads only: how long until cost_prio would conform (0: now; INT64_MAX: never) */
int sg_limiter_delay_at(const void *slot, uint64_t now_ns, uint64_t cost_prio, int64_t *delay_out);

/* admit.c: breaker + limiter in one crossing (execute's hot path) */
int64_t sg_admit(const struct sg_handle *h, uint64_t cost_prio);
/* sg_admit, also reporting the clock reading it decided at (for the bulkhead grant) */
int64_t sg_admit_now(const struct sg_handle *h, uint64_t cost_prio, uint64_t *now_out);
int64_t sg_admit_wait(const struct sg_handle *h, uint64_t cost_prio, int64_t max_wait_ns,
                      struct sg_decision *out);
void sg_release_probe(const struct sg_handle *h, int64_t token);

/* bulkhead.c: host-wide concurrency tickets (lines 18-26 of a slot)
 * A ticket token is > 0 (0: the endpoint has no bulkhead); see bulkhead.c. */
#define SG_BH_QUIET 4            /* acquire mode bit: a waiter; do not count a rejection */
#define SG_BH_WAITED 8           /* acquire mode bit: granted after waiting (counted) */
#define SG_BH_REFRESH 562949953421312 /* token bit 49: quota mode, count processes now */
#define SG_BH_REFRESH_NS 1000000000   /* quota: attached processes recounted this often */

struct sg_bulkhead_view {
    uint32_t limit;              /* tickets now (0: no bulkhead) */
    uint32_t reserve;            /* of those, only CRITICAL may take the last `reserve` */
    uint32_t in_flight;          /* tickets held now */
    uint32_t span;               /* words that may be held (> limit while draining) */
    uint32_t quota_ppm;          /* 0: fixed max_concurrent */
    uint32_t procs;              /* quota: attached processes counted */
    uint32_t sleepers;           /* waiters asleep now (a hint) */
    uint32_t wake_seq;
    uint64_t quota_age_ns;       /* since procs was counted */
    uint64_t ticket_lease_ns;
    uint64_t acquired, rejected, waited, reclaimed, peak;
    uint32_t holder_pid[64];     /* 0: free */
    uint64_t held_ns[64];        /* age of each held ticket */
    uint64_t word[64];           /* the raw ticket words (for sg_bulkhead_reclaim) */
};

int sg_bulkhead_sync_at(void *slot, uint64_t now_ns);
int64_t sg_bulkhead_acquire_at(void *slot, uint64_t now_ns, uint32_t pid, uint32_t mode);
int sg_bulkhead_release_at(void *slot, uint32_t pid, int64_t ticket);
int sg_bulkhead_reclaim(void *slot, uint32_t index, uint64_t expected_word);
int sg_bulkhead_set_procs_at(void *slot, uint64_t now_ns, uint32_t procs);
int sg_bulkhead_give_up(void *slot);
int sg_bulkhead_snapshot_at(const void *slot, uint64_t now_ns, struct sg_bulkhead_view *out);
int64_t sg_bulkhead_wait(const struct sg_handle *h, uint32_t mode, uint64_t timeout_ns,
                         int64_t *out);  /* out[0]: the token (also returned); out[1]: woken */
int64_t sg_bulkhead_acquire(const struct sg_handle *h, uint32_t mode);
int64_t sg_bulkhead_acquire_now(const struct sg_handle *h, uint32_t mode, uint64_t now_ns);
int sg_bulkhead_release(const struct sg_handle *h, int64_t ticket);
int sg_bulkhead_park_begin(const struct sg_handle *h, uint32_t *seq); /* the asyncio watcher */
int sg_bulkhead_park_wait(const struct sg_handle *h, uint32_t seq, uint64_t timeout_ns);

/* budget.c: host-wide retry budget (line 27) */
#define SG_BUDGET_BUCKETS 6
struct sg_budget_view {
    uint64_t attempts;           /* admitted calls in the window (first attempts + retries) */
    uint64_t retries;            /* retries granted in the window */
    uint64_t allowed;            /* retries the window allows now (ratio x first + min) */
    uint64_t retries_total;      /* retries granted, ever (counted also without a budget) */
    uint64_t denied_total;       /* retries the budget refused, ever */
    uint64_t window_ns;          /* the policy's retry window (0: no budget) */
};
int sg_budget_deposit_at(void *slot, uint64_t now_ns);
int sg_budget_withdraw_at(void *slot, uint64_t now_ns);
int sg_budget_snapshot_at(const void *slot, uint64_t now_ns, struct sg_budget_view *out);
int sg_budget_withdraw(const struct sg_handle *h);

/* throttle.c: SRE adaptive throttling (lines 28-29) */
#define SG_THROTTLE_BUCKETS 10
#define SG_POL_THROTTLE_ON 256   /* policy flag: the caller reports failures (sg_throttle_report) */
struct sg_throttle_view {
    uint64_t requests;           /* in the window: calls that reached the dependency + throttled */
    uint64_t accepts;            /* in the window: answered without an overload-class failure */
    uint64_t requests_total;     /* ever */
    uint64_t accepts_total;
    uint64_t throttled_total;
    uint64_t window_ns;          /* 0: throttling is off */
    uint32_t probability_ppm;    /* chance that a call is throttled now */
    uint32_t k_milli;
    uint32_t working;            /* newest buckets in a row with accepts and no overload */
    uint32_t pad;
};
/* decide: SG_OK or SG_R_THROTTLED (a throttled call is counted); sg_admit calls it.
 * record: one outcome (SG_SUCCESS accepted, SG_FAILURE overload, SG_IGNORE neither);
 *   sg_breaker_record counts its outcomes itself.
 * report: one failure the caller classified (SG_POL_THROTTLE_ON): overload or answered. */
int sg_throttle_decide_at(void *slot, uint64_t now_ns);
int sg_throttle_record_at(void *slot, uint64_t now_ns, int outcome);
int sg_throttle_report(const struct sg_handle *h, int overload);
int sg_throttle_snapshot_at(const void *slot, uint64_t now_ns, struct sg_throttle_view *out);

/* predict.c: predictive breaking (line 30) */
struct sg_predict_view {
    int32_t level_ppm;           /* failure ratio: Holt level (bucket ratio) */
    int32_t trend_ppm;           /* failure ratio: change per bucket */
    int32_t slow_level_ppm;      /* slow-call ratio (latency): level */
    int32_t slow_trend_ppm;
    uint32_t forecast_ppm;       /* failure ratio forecast at now + horizon */
    uint32_t slow_forecast_ppm;
    uint32_t valid;              /* bit 0: failure series, bit 1: slow series hold a state */
    uint32_t pad;
    uint64_t horizon_ns;         /* 0: prediction is off */
    uint64_t opens;              /* opens decided by the forecast, ever */
};
/* observe: folds completed buckets since since_ns (as a landing failure does) and
 *   returns 1 when the forecast would open the breaker, else 0.
 * snapshot: the state as the last fold left it, read only. */
int sg_predict_observe_at(void *slot, uint64_t now_ns, uint64_t since_ns,
                          struct sg_predict_view *out);
int sg_predict_snapshot_at(const void *slot, uint64_t now_ns, struct sg_predict_view *out);

/* fleet.c: fleet share and breaker events written by the host's agent (line 31) */

/* chain.c: counters of a named fallback chain (its own shared-memory object) */
#define SG_FC_SIZE 1024
#define SG_FC_MAX_STEPS 8
#define SG_FC_LAST 8              /* counter index: `last` served */
#define SG_FC_FAILED 9            /* counter index: every step failed, no `last` */
struct sg_fc_view {
    uint64_t created_unix_ns;
    uint32_t creator_pid;
    uint32_t steps;
    uint32_t name_len[8];
    char name[8][64];            /* step endpoint names (not NUL-terminated at 64) */
    uint64_t count[10];          /* served by step i (0..steps-1), then last, failed */
};
int sg_fc_init(void *base, uint64_t len, uint32_t steps, const char *names,
               const uint32_t *name_len, uint32_t pid, uint64_t unix_ns);
int sg_fc_check(const void *base, uint64_t len, struct sg_fc_view *out);
int sg_fc_count(void *base, uint64_t len, uint32_t which);

/* keyed.c: keyed limiter tables (their own shared-memory objects) */
#define SG_KL_HEADER_SIZE 1024
#define SG_KL_STRIPES 8           /* counter stripes (lines) of a keyed table */
#define SG_KL_ENTRY_SIZE 16
#define SG_KL_PROBES 16           /* entries a key may live in: its window */
#define SG_KL_MAX_CAPACITY 67108864
#define SG_KL_ON_FULL_ALLOW 1     /* no entry free: admit (and count) */
enum sg_kl_rc {
    SG_R_KL_FULL = -30           /* no entry free for a new key: rejected (on_full=reject) */
};
#define SG_KL_TOP_MAX 1000

/* What the creator writes into a new table (Python fills it). */
struct sg_kl_config {
    uint64_t emission_ns;        /* 1/rate, rounded up */
    uint64_t seed0, seed1;       /* SipHash key */
    uint64_t fingerprint;        /* hash of the numbers (attach compares it) */
    uint32_t capacity;           /* live keys (entries = 2 x capacity) */
    uint32_t burst;
    uint32_t share_ppm[4];       /* burst share per priority */
    uint32_t flags;              /* SG_KL_ON_FULL_ALLOW */
    uint32_t pad;
};

struct sg_kl_view {
    uint64_t total_size;
    uint64_t slots;
    uint64_t emission_ns;        /* the current interval (live rate record) */
    uint64_t fingerprint;        /* of the current rate and burst */
    uint64_t created_unix_ns;
    uint32_t capacity;
    uint32_t burst;              /* current */
    uint32_t share_ppm[4];
    uint32_t flags;
    uint32_t creator_pid;
    uint64_t accepted, rejected, waited, full_rejected, full_allowed;
    uint64_t inserted, evicted, folded;
    uint64_t rate_changes;       /* records published after creation */
    uint64_t lease;              /* rate writer lease word (0: free) */
};

/* Per-process handle of one table (process memory; sizes and seed are
 * copied from the validated header, so later scribbles cannot widen them). */
struct sg_kl_handle {
    void *table;
    void *clock;                 /* the segment's manual clock word, or NULL */
    uint64_t map_len;
    uint64_t slots;
    uint64_t k0, k1;             /* SipHash key */
    uint64_t t0_ns;              /* emission interval at creation: the unit of TATs */
    uint32_t flags;
    uint32_t stripe;             /* counter stripe of this process (pid; set after fork too) */
};

/* One entry as the scan reports it (top-N hottest keys). */
struct sg_kl_entry_view {
    uint64_t fingerprint;        /* the tag without its state bits */
    uint64_t ahead_ns;           /* time until its bucket is full again */
    uint64_t index;
    double tokens;               /* free now at full-burst priority */
    uint32_t state;
    uint32_t pad;
};

struct sg_kl_scan {
    uint64_t live;               /* entries whose TAT > now (keys not at a full bucket) */
    uint64_t used;               /* entries ever used (tag != 0) */
    uint64_t pending;
    uint32_t top_n;              /* entries filled in the caller's top array */
    uint32_t pad;
};

uint64_t sg_siphash24(uint64_t k0, uint64_t k1, const char *data, uint64_t len);
uint64_t sg_kl_size(uint32_t capacity);
int sg_kl_init(void *base, uint64_t len, const struct sg_kl_config *cfg, uint32_t pid,
               uint64_t unix_ns);
int sg_kl_check(const void *base, uint64_t len, struct sg_kl_view *out);
int sg_kl_handle_init(struct sg_kl_handle *kh, void *base, uint64_t len, const void *seg_base,
                      uint64_t seg_len);
uint64_t sg_kl_now(const struct sg_kl_handle *kh);
int sg_kl_decide_at(const struct sg_kl_handle *kh, uint64_t now_ns, const char *key,
                    uint64_t len, uint64_t cost_prio, int64_t max_wait_ns,
                    struct sg_decision *out);
int sg_kl_allow(const struct sg_kl_handle *kh, const char *key, uint64_t len, uint64_t cost_prio);
int sg_kl_reserve(const struct sg_kl_handle *kh, const char *key, uint64_t len,
                  uint64_t cost_prio, int64_t max_wait_ns, struct sg_decision *out);
int sg_kl_cancel_at(const struct sg_kl_handle *kh, uint64_t now_ns, const char *key,
                    uint64_t len, uint64_t cost_prio, const struct sg_decision *d);
int sg_kl_peek_at(const struct sg_kl_handle *kh, uint64_t now_ns, const char *key,
                  uint64_t len, uint64_t cost_prio, double *tokens, int64_t *delay_ns);
int sg_kl_set_rate_at(const struct sg_kl_handle *kh, uint64_t now_ns, uint64_t emission_ns,
                      uint32_t burst, uint64_t fingerprint, uint64_t lease);
int sg_kl_takeover(const struct sg_kl_handle *kh, uint64_t lease);
int sg_kl_scan_at(const struct sg_kl_handle *kh, uint64_t now_ns, uint32_t top_max,
                  struct sg_kl_entry_view *top, struct sg_kl_scan *out);
/* fleet.c: the agent lease (header line 4) and a slot's fleet share (line 31) */
#define SG_FLEET_NONE 0          /* mode: no share applied yet */
#define SG_FLEET_GRANTED 1       /* mode: a grant from Redis, lease running */
#define SG_FLEET_SAFE 2          /* mode: no live grant: the documented safe share */
struct sg_fleet_agent_view {
    uint64_t word;               /* the lease word (for release) */
    uint64_t start_s;            /* holder's start time, unix s (informational) */
    uint64_t remaining_ns;       /* until the deadline (0: free or expired) */
    uint32_t pid;
    uint32_t epoch;
    uint32_t live;
    uint32_t pad;
};
struct sg_fleet_view {
    uint64_t expires_ns;         /* the grant's lease ends (segment clock) */
    uint64_t synced_ns;          /* last successful sync (segment clock) */
    uint64_t errors;             /* Redis errors, total */
    uint32_t share_ppm;          /* of the policy's (fleet) rate; 0: none yet */
    uint32_t epoch;              /* agent epoch that applied it */
    uint32_t hosts;              /* live hosts at the last sync */
    uint32_t mode;               /* SG_FLEET_* */
    uint32_t force;              /* apply: start a new regime even if the share is unchanged */
    uint32_t pad;
};
int sg_fleet_lease_at(void *base, uint64_t len, uint64_t now_ns, uint32_t pid, uint64_t start_s,
                      uint64_t lease_ns, uint64_t *word_io);
int sg_fleet_release(void *base, uint64_t len, uint64_t word);
int sg_fleet_agent_at(const void *base, uint64_t len, uint64_t now_ns,
                      struct sg_fleet_agent_view *out);
int sg_fleet_apply_at(void *base, uint64_t len, void *slot, uint64_t now_ns, uint64_t word,
                      const struct sg_fleet_view *in);
int sg_fleet_error(void *slot);
int sg_fleet_snapshot(const void *slot, struct sg_fleet_view *out);
int sg_limiter_share_at(void *slot, uint64_t now_ns, uint32_t share_ppm,
                        uint64_t fleet_word);
/* breaker.c, for the fleet agent: OPEN (for remaining_ns) or CLOSED, only from generation gen */
int sg_breaker_fleet_at(void *slot, uint64_t now_ns, uint32_t gen, uint32_t state,
                        uint64_t remaining_ns);
/* CDEF-END */

#endif /* SHMGUARD_H */
