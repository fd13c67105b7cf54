/* bench/gcra_bench.c -- C-level cost of one GCRA decision, one breaker
 * acquire+record and one bulkhead ticket acquire+release, without Python. Built and run by bench/core.py. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "shmguard.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

#define N 2000000
#define REPS 9

int main(void)
{
    uint64_t size = sg_segment_size(4);
    void *base = aligned_alloc(64, size);
    memset(base, 0, size);
    if (sg_segment_init(base, size, 4, 0, 1, 0, 0) != SG_OK)
        return 1;
    struct sg_policy_view p;
    memset(&p, 0, sizeof p);
    p.emission_ns = 1; p.bucket_ns = 1000000000ULL; p.open_ns = p.open_max_ns = 30000000000ULL;
    p.probe_lease_ns = 10000000000ULL; p.recovery_ns = 10000000000ULL;
    for (int i = 0; i < 4; i++) p.share_ppm[i] = 1000000;
    p.share_ppm[1] = 800000;
    p.failure_ppm = 500000; p.adaptive_max_ppm = 750000; p.min_requests = 10; p.buckets = 10;
    p.half_open_max = 1; p.success_threshold = 1; p.backoff_milli = 1000; p.burst = 1000000000u;
    uint32_t idx;
    uint64_t claim;
    if (sg_table_register(base, size, "bench", 5, &p, 1, &idx, &claim) < 0)
        return 2;
    struct sg_handle h, hb;
    sg_handle_init(&h, base, size, idx);
    p.flags = SG_POL_NO_LIMIT;
    p.max_concurrent = 4; /* a bulkhead endpoint: acquire + release of one ticket */
    if (sg_table_register(base, size, "bh", 2, &p, 1, &idx, &claim) < 0)
        return 3;
    sg_handle_init(&hb, base, size, idx);
    double t_decide[REPS], t_allow[REPS], t_br[REPS], t_bh[REPS];
    uint64_t now = 1000000000000ULL;
    for (int r = 0; r < REPS; r++) {
        double t = now_s();
        for (int i = 0; i < N; i++)
            sg_limiter_decide_at(h.slot, now += 3, 1, 1, -1, NULL);
        t_decide[r] = (now_s() - t) * 1e9 / N;
        t = now_s();
        for (int i = 0; i < N; i++)
            sg_allow(&h);
        t_allow[r] = (now_s() - t) * 1e9 / N;
        t = now_s();
        for (int i = 0; i < N; i++) {
            int64_t tok = sg_breaker_acquire_at(h.slot, now += 3, 0);
            sg_breaker_record_at(h.slot, now, tok | 1);
        }
        t_br[r] = (now_s() - t) * 1e9 / N;
        t = now_s();
        for (int i = 0; i < N; i++)
            sg_bulkhead_release(&hb, sg_bulkhead_acquire(&hb, 1 | SG_BH_QUIET));
        t_bh[r] = (now_s() - t) * 1e9 / N;
    }
    qsort(t_bh, REPS, sizeof(double), cmp);
    qsort(t_decide, REPS, sizeof(double), cmp);
    qsort(t_allow, REPS, sizeof(double), cmp);
    qsort(t_br, REPS, sizeof(double), cmp);
    printf("gcra_decide_ns %.1f %.1f %.1f\n", t_decide[REPS / 2], t_decide[0], t_decide[REPS - 1]);
    printf("allow_with_clock_ns %.1f %.1f %.1f\n", t_allow[REPS / 2], t_allow[0], t_allow[REPS - 1]);
    printf("breaker_acquire_record_ns %.1f %.1f %.1f\n", t_br[REPS / 2], t_br[0], t_br[REPS - 1]);
    printf("bulkhead_acquire_release_ns %.1f %.1f %.1f\n", t_bh[REPS / 2], t_bh[0], t_bh[REPS - 1]);
    free(base);
    return 0;
}
