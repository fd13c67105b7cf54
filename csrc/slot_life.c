/*
 * slot_life.c -- a slot's life after its claim: taking over or setting aside
 * claims (table.c explains when), removing an endpoint, binding handles to
 * one incarnation, and the test hook that stalls a process at a chosen point.
 */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "layout.h"

void sg_test_stall(const char *point)
{
    static int fired; /* once per process: the resumed process runs on */
    const char *want = getenv("SHMGUARD_TEST_STALL");
    if (!fired && want && strcmp(want, point) == 0) {
        fired = 1;
        raise(SIGSTOP);
    }
}

/* CAS one slot's word `from` -> `to` after validating the segment and index. */
static int swap_word(void *base, uint64_t len, uint32_t index, uint64_t from, uint64_t to)
{
    struct sg_header_view v;
    int rc = sg_segment_check(base, len, &v);
    if (rc != SG_OK)
        return rc;
    if (index >= v.capacity)
        return SG_E_ARG;
    struct sg_slot *s = sg_slot_at(base, index);
    /* acq_rel: pairs with the claimant's CAS (and its fill before release) */
    if (!atomic_compare_exchange_strong_explicit(&s->state, &from, to, memory_order_acq_rel,
                                                 memory_order_relaxed))
        return SG_E_BUSY;
    return SG_OK;
}

/* Take over a claim whose owner the caller proved dead (pid + start time). */
int sg_table_takeover(void *base, uint64_t len, uint32_t index, uint64_t claim_word)
{
    uint32_t k = SK_KIND(claim_word);
    if (k != SG_SK_CLAIMED && k != SG_SK_ABANDONED)
        return SG_E_ARG;
    return swap_word(base, len, index, claim_word, SK_DELETED);
}

/* Set aside a claim whose owner is alive but stalled: nobody reuses the slot. */
int sg_table_abandon(void *base, uint64_t len, uint32_t index, uint64_t claim_word)
{
    if (SK_KIND(claim_word) != SG_SK_CLAIMED)
        return SG_E_ARG;
    return swap_word(base, len, index, claim_word,
                     (claim_word & ~(3ULL << 62)) | ((uint64_t)SG_SK_ABANDONED << 62));
}

int sg_table_unregister(void *base, uint64_t len, const char *name, uint32_t name_len)
{
    uint32_t idx;
    int rc = sg_table_find(base, len, name, name_len, &idx);
    if (rc != SG_OK)
        return rc;
    uint64_t w = atomic_load_explicit(&sg_slot_at(base, idx)->state, memory_order_acquire);
    if (SK_KIND(w) != SG_SK_READY)
        return SG_E_NOT_FOUND; /* removed meanwhile */
    rc = swap_word(base, len, idx, w, SK_DELETED);
    if (rc == SG_OK) /* relaxed: a statistic */
        atomic_fetch_sub_explicit(&((struct sg_header *)base)->used, 1, memory_order_relaxed);
    return rc == SG_E_BUSY ? SG_E_NOT_FOUND : rc;
}

int sg_handle_bind(struct sg_handle *h, void *base, uint64_t len, uint32_t index,
                   const char *name, uint32_t name_len)
{
    int rc = sg_handle_init(h, base, len, index);
    if (rc != SG_OK)
        return rc;
    struct sg_slot *s = h->slot;
    /* the name was published before the word h->ready (A1 in
     * sg_handle_init); the word read again after it proves the name
     * belongs to that incarnation */
    int ok = h->ready != SK_GONE && sg_slot_named(s, name, name_len);
    atomic_thread_fence(memory_order_acquire);
    if (!ok || LD(&s->state) != h->ready) {
        h->ready = SK_GONE;
        return SG_E_NOT_FOUND;
    }
    return SG_OK;
}

int sg_handle_check(const struct sg_handle *h)
{
    return h && sg_hslot(h) ? SG_OK : SG_E_GONE;
}
