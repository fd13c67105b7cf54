/*
 * bulkhead_wait.c -- the sleeping side of bulkhead.c: the futex word, the
 * wake-up of ONE sleeper per release, and the handle forms (this process's
 * pid and the segment's clock).
 *
 * A waiter counts itself in `sleepers` BEFORE it tries, then sleeps on
 * wake_seq; a release that sees a sleeper bumps wake_seq and wakes one
 * (FUTEX_WAKE 1). Either the waiter's try sees the freed word, or the
 * release sees the waiter counted: no wake-up is lost, and nobody polls.
 * A waiter killed while counted leaves `sleepers` one too high; the next
 * release whose FUTEX_WAKE wakes nobody forgets one, so the count heals
 * instead of costing every later release a futex call (glibc's
 * process-shared semaphores keep such a count forever). If that forgets a
 * waiter that was about to sleep, the waiter still sees wake_seq moved and
 * does not sleep; at worst a later sleeper is woken by its slice's timeout
 * (SLICE, 50 ms) instead of a release.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#endif

#include "layout.h"

#define SC memory_order_seq_cst

static _Atomic uint32_t cached_pid;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void forget_pid(void) { atomic_store_explicit(&cached_pid, 0, memory_order_relaxed); }
static void watch_forks(void) { pthread_atfork(NULL, NULL, forget_pid); }

/* getpid() is a system call in glibc >= 2.25: cache it, forgotten in fork children. */
static uint32_t my_pid(void)
{
    uint32_t p = atomic_load_explicit(&cached_pid, memory_order_relaxed);
    if (p == 0) {
        pthread_once(&atfork_once, watch_forks);
        p = (uint32_t)getpid();
        atomic_store_explicit(&cached_pid, p, memory_order_relaxed);
    }
    return p;
}

#ifdef __linux__
/* The mapping is shared between processes: no FUTEX_PRIVATE_FLAG (the futex
 * key is then the page, not this process's address space). */
static int futex_wait(sg_a32 *w, uint32_t val, uint64_t ns)
{
    if (ns > 3600ULL * 1000000000ULL)
        ns = 3600ULL * 1000000000ULL;
    struct timespec ts = {(time_t)(ns / 1000000000ULL), (long)(ns % 1000000000ULL)};
    return (int)syscall(SYS_futex, (uint32_t *)w, FUTEX_WAIT, val, &ts, NULL, 0);
}
static int futex_wake(sg_a32 *w, int n)
{
    long r = syscall(SYS_futex, (uint32_t *)w, FUTEX_WAKE, n, NULL, NULL, 0);
    return r < 0 ? 0 : (int)r;
}
#else /* no futex: sleep the slice (the caller retries) */
static int futex_wait(sg_a32 *w, uint32_t val, uint64_t ns)
{
    (void)w, (void)val;
    struct timespec ts = {(time_t)(ns / 1000000000ULL), (long)(ns % 1000000000ULL)};
    nanosleep(&ts, NULL);
    return -1;
}
static int futex_wake(sg_a32 *w, int n) { return (void)w, (void)n, 0; }
#endif

/* A ticket went back to 0: wake ONE sleeper, if any sleeps. seq_cst pairs
 * with the waiter's sleepers increment before its try (sg_bulkhead_wait):
 * either it sees the free word, or we see it counted and bump wake_seq. */
int sg_bulkhead_freed(struct sg_bulkhead_area *b)
{
    uint32_t n = atomic_load_explicit(&b->sleepers, SC);
    if (n == 0)
        return 0;
    atomic_fetch_add_explicit(&b->wake_seq, 1, SC);
    int woken = futex_wake(&b->wake_seq, 1);
    /* Nobody was asleep: one counted waiter died (or has not slept yet, and
     * will not, wake_seq having moved). Forget one; n refreshes on failure
     * and we leave it (someone else changed the count). */
    if (woken == 0)
        atomic_compare_exchange_strong_explicit(&b->sleepers, &n, n - 1, memory_order_relaxed,
                                                memory_order_relaxed);
    return woken;
}

/* A waiter leaves: one sleeper less, never below 0 (a release may have
 * forgotten it already, see sg_bulkhead_freed). c refreshes on failure. */
static void leave(struct sg_bulkhead_area *b)
{
    uint32_t c = atomic_load_explicit(&b->sleepers, SC);
    while (c && !atomic_compare_exchange_weak_explicit(&b->sleepers, &c, c - 1, SC, SC))
        ;
}

/* ---- handle forms: the clock and this process's pid ------------------------ */

int64_t sg_bulkhead_acquire(const struct sg_handle *h, uint32_t mode)
{
    return sg_bulkhead_acquire_now(h, mode, 0);
}

/* sg_bulkhead_acquire with the caller's clock reading `now` (0: read it here):
 * execute's one crossing grants the ticket at its admission time. */
int64_t sg_bulkhead_acquire_now(const struct sg_handle *h, uint32_t mode, uint64_t now)
{
    struct sg_slot *s = h->slot;
    if (s == NULL) /* a closed service */
        return SG_E_GONE;
    /* Fast "no bulkhead": a limit word synced to the live policy, limit 0.
     * relaxed: a call racing a policy publish may decide under either one.
     * It writes nothing, so it needs no incarnation check: a caller that
     * gets 0 from a removed endpoint's slot takes no ticket anywhere. */
    uint64_t lw = atomic_load_explicit(&s->bulkhead.limit, memory_order_relaxed);
    if ((lw & BL_VALID) && BL_LIM(lw) == 0 && BL_SEQ(lw) == (LD(&s->policy_seq) & 0x7fu))
        return 0;
    if (sg_hslot(h) == NULL) /* a removed endpoint: its slot may be another's */
        return SG_E_GONE;
    return sg_bulkhead_acquire_at(s, now ? now : sg_now_h(h), my_pid(), mode);
}

int sg_bulkhead_release(const struct sg_handle *h, int64_t ticket)
{
    if (ticket == 0)
        return SG_OK;
    struct sg_slot *s = sg_hslot(h); /* a removed endpoint's tickets are not the new one's */
    return s ? sg_bulkhead_release_at(s, my_pid(), ticket) : SG_E_GONE;
}

/* Counts the caller a sleeper BEFORE it tries (see sg_bulkhead_freed()) and
 * reads wake_seq: a release after this moves the word. */
static uint32_t count_in(struct sg_bulkhead_area *b)
{
    atomic_fetch_add_explicit(&b->sleepers, 1, SC);
    return atomic_load_explicit(&b->wake_seq, SC);
}

/* Sleeps until a release moves wake_seq past `seq` or timeout_ns ends; 1: it
 * moved (a release since count_in), 0: the slice ended. */
static int sleep_moved(struct sg_bulkhead_area *b, uint32_t seq, uint64_t timeout_ns)
{
    if (atomic_load_explicit(&b->wake_seq, SC) != seq)
        return 1;
    return (timeout_ns > 0 && futex_wait(&b->wake_seq, seq, timeout_ns) == 0) ||
           atomic_load_explicit(&b->wake_seq, SC) != seq;
}

/* One slice of a wait: count ourselves a sleeper, try, and if every ticket
 * is out sleep until a release or the slice ends. After a wake-up it tries
 * once more. timeout 0: one try, no sleep. Returns the token (also written to
 * out[0] before returning, so a caller interrupted right after the call
 * still finds it and gives it back) or SG_R_BULKHEAD_FULL; out[1] = 1 if a
 * release moved the word meanwhile. */
int64_t sg_bulkhead_wait(const struct sg_handle *h, uint32_t mode, uint64_t timeout_ns,
                         int64_t *out)
{
    out[0] = out[1] = 0;
    if (sg_hslot(h) == NULL) /* a closed service or a removed endpoint */
        return out[0] = SG_E_GONE;
    struct sg_bulkhead_area *b = &((struct sg_slot *)h->slot)->bulkhead;
    if (timeout_ns == 0)
        return out[0] = sg_bulkhead_acquire(h, mode);
    uint32_t seq = count_in(b);
    int64_t t = sg_bulkhead_acquire_at(h->slot, sg_now_h(h), my_pid(), mode | SG_BH_QUIET);
    if (t == SG_R_BULKHEAD_FULL) {
        out[1] = sleep_moved(b, seq, timeout_ns);
        if (sg_hslot(h) == NULL) /* removed while we slept: take nothing */
            t = SG_E_GONE;
        else if (out[1]) /* a release: try again */
            t = sg_bulkhead_acquire_at(h->slot, sg_now_h(h), my_pid(), mode | SG_BH_QUIET);
    }
    leave(b);
    return out[0] = t;
}

/* ---- parking: a process's one watcher thread for its asyncio waiters ---------
 * The watcher counts itself a sleeper (park_begin), lets a waiter try (in
 * Python, on its event loop), then sleeps until a release moves wake_seq or
 * the slice ends (park_wait): the two halves of sg_bulkhead_wait() with the
 * try in between done elsewhere, so no wake-up is lost between the waiter's
 * failed try and the sleep. */
int sg_bulkhead_park_begin(const struct sg_handle *h, uint32_t *seq)
{
    if (sg_hslot(h) == NULL || seq == NULL) /* a closed service or a removed endpoint */
        return SG_E_GONE;
    *seq = count_in(&((struct sg_slot *)h->slot)->bulkhead);
    return SG_OK;
}

/* 1: a release moved wake_seq since park_begin; 0: the slice ended;
 * SG_E_GONE: the service was closed or the endpoint removed meanwhile. Leaves
 * the sleepers count (of the slot it counted in) unless the mapping is gone. */
int sg_bulkhead_park_wait(const struct sg_handle *h, uint32_t seq, uint64_t timeout_ns)
{
    if (h->slot == NULL) /* closed meanwhile: the count heals at the next release */
        return SG_E_GONE;
    struct sg_bulkhead_area *b = &((struct sg_slot *)h->slot)->bulkhead;
    int moved = sleep_moved(b, seq, timeout_ns);
    leave(b);
    return sg_hslot(h) == NULL ? SG_E_GONE : moved;
}
