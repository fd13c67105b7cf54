/*
 * predict.c -- predictive breaking: Holt's double exponential smoothing of
 * the breaker window's bucket ratios, and a forecast over a horizon.
 *
 * Two series, one word each: the failure ratio of a bucket (failures /
 * calls) and its slow-call ratio (slow / calls: latency as the breaker sees
 * it). For each completed bucket with calls, in order:
 *
 *     Lp = L + T*dt                        (dt: buckets since the last one)
 *     L' = Lp + alpha * (y - Lp)
 *     T' = T + beta * ((L' - L) / dt - T)
 *
 * in integers (ppm, truncating), then the forecast for now + horizon is
 * L' + T' * (buckets from the middle of the last observed bucket). The
 * breaker opens early when the trend is rising and the forecast reaches the
 * threshold (slow_ppm for the slow series).
 *
 * Cheap and deterministic: the words are folded only when a failure or a
 * slow call lands (never per success), each completed bucket once (a CAS
 * per fold; the loser re-reads and finds nothing left to fold). A series
 * restarts from its next bucket when its last observation is older than the
 * window or older than the breaker state (the floor the window uses too).
 */
#include <string.h>

#include "layout.h"

#define ALPHA_PPM 300000 /* level smoothing (bench/overload.py picked 0.3 / 0.1: no false */
#define BETA_PPM 100000  /* opens at 10-100 calls/s, horizon 2 s) */
#define HW_EMASK ((1ULL << 23) - 1)
#define HW_EPOCH(w) ((w) >> 41)
#define HW_TREND(w) ((int64_t)((int32_t)((uint32_t)((w) >> 20) << 11) >> 11))
#define HW_LEVEL(w) ((int64_t)((w) & 0xfffffULL))
#define HW_MAKE(e, t, l) ((((uint64_t)(e) & HW_EMASK) << 41) | \
                          (((uint64_t)(t) & 0x1fffffULL) << 20) | ((uint64_t)(l) & 0xfffffULL))

struct holt {
    int64_t level, trend;
    uint64_t last; /* bucket (absolute epoch) of the last observation */
};

static int64_t clamp(int64_t v, int64_t lo, int64_t hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

static void step(struct holt *h, int64_t y, int64_t dt)
{
    int64_t lp = h->level + h->trend * dt;
    int64_t l = clamp(lp + (y - lp) * ALPHA_PPM / SG_PPM, 0, SG_PPM);
    h->trend = clamp(h->trend + ((l - h->level) / dt - h->trend) * BETA_PPM / SG_PPM, -SG_PPM, SG_PPM);
    h->level = l;
}

/* The ratio (ppm) of completed bucket e, if it holds calls. */
static int ratio(struct sg_slot *s, uint32_t nb, uint64_t e, int slow, int64_t *y)
{
    uint64_t w = LD(&s->bucket[e % nb]); /* relaxed: counts carry no other data */
    if (WB_EPOCH(w) != (e & WB_EMASK) || WB_HI(w) + WB_LO(w) == 0)
        return 0;
    uint64_t n = WB_HI(w) + WB_LO(w), k = WB_HI(w);
    if (slow) {
        uint64_t sw = LD(&s->slow[e % nb]);
        k = WB_EPOCH(sw) == (e & WB_EMASK) ? WB_HI(sw) : 0;
        k = k > n ? n : k; /* untrusted words */
    }
    *y = (int64_t)(k * SG_PPM / n);
    return 1;
}

/* Decodes a Holt word; returns 0 when it holds no state for this episode. */
static int decode(uint64_t w, uint64_t cur, uint32_t nb, uint64_t floor, struct holt *h)
{
    uint64_t d = (cur - HW_EPOCH(w)) & HW_EMASK;
    if (w == 0 || d == 0 || d > nb || d > cur || cur - d < floor)
        return 0;
    h->last = cur - d;
    h->level = clamp(HW_LEVEL(w), 0, SG_PPM);
    h->trend = clamp(HW_TREND(w), -SG_PPM, SG_PPM);
    return 1;
}

/* Folds the completed buckets after the word's last observation (up to
 * cur - 1) into the word; returns 1 and the state when it holds one. */
static int fold(struct sg_slot *s, sg_a64 *wp, uint32_t nb, uint64_t cur, uint64_t floor, int slow,
                struct holt *out)
{
    uint64_t w = LD(wp); /* relaxed: a statistic, self-contained in one word */
    for (;;) {
        struct holt h;
        int have = decode(w, cur, nb, floor, &h);
        uint64_t from = have ? h.last + 1 : cur >= nb ? cur - nb + 1 : 0; /* no wrap at cur = max */
        if (from < floor)
            from = floor;
        for (uint64_t e = from; e < cur; e++) {
            int64_t y;
            if (!ratio(s, nb, e, slow, &y))
                continue;
            if (have)
                step(&h, y, (int64_t)(e - h.last));
            else
                h.level = y, h.trend = 0, have = 1;
            h.last = e;
        }
        if (!have)
            return 0;
        *out = h;
        uint64_t nw = HW_MAKE(h.last, h.trend, h.level);
        /* w refreshes on failure: another process folded first; re-decode */
        if (nw == w || atomic_compare_exchange_strong_explicit(wp, &w, nw, memory_order_relaxed,
                                                               memory_order_relaxed))
            return 1;
    }
}

/* Forecast (ppm) for now + horizon from the middle of the last bucket. */
static int64_t forecast(const struct holt *h, uint64_t now, uint64_t bucket_ns, uint64_t horizon)
{
    uint64_t mid = sg_sat_add(sg_sat_mul(h->last, bucket_ns), bucket_ns / 2);
    uint64_t ahead = sg_sat_add(now, horizon) - (mid < now ? mid : now);
    uint64_t milli = sg_sat_mul(ahead, 1000) / bucket_ns;
    if (milli > 1000000000ULL)
        milli = 1000000000ULL;
    return clamp(h->level + h->trend * (int64_t)milli / 1000, 0, SG_PPM);
}

static int observe(struct sg_slot *s, const struct sg_policy_view *p, uint64_t now,
                   uint64_t since, uint32_t threshold, struct sg_predict_view *out)
{
    uint64_t cur = now / p->bucket_ns, floor = since / p->bucket_ns;
    struct holt f, sl;
    int trip = 0;
    if (fold(s, &s->predict.fail, p->buckets, cur, floor, 0, &f)) {
        int64_t fc = forecast(&f, now, p->bucket_ns, p->predict_horizon_ns);
        trip = f.trend > 0 && fc >= (int64_t)threshold;
        if (out)
            out->valid |= 1, out->level_ppm = (int32_t)f.level, out->trend_ppm = (int32_t)f.trend,
                out->forecast_ppm = (uint32_t)fc;
    }
    if (p->slow_ppm && fold(s, &s->predict.slow, p->buckets, cur, floor, 1, &sl)) {
        int64_t fc = forecast(&sl, now, p->bucket_ns, p->predict_horizon_ns);
        trip |= sl.trend > 0 && fc >= (int64_t)p->slow_ppm;
        if (out)
            out->valid |= 2, out->slow_level_ppm = (int32_t)sl.level,
                out->slow_trend_ppm = (int32_t)sl.trend, out->slow_forecast_ppm = (uint32_t)fc;
    }
    return trip;
}

int sg_predict_trips(struct sg_slot *s, const struct sg_policy_view *p, uint64_t now,
                     uint64_t since_ns, uint32_t threshold_ppm)
{
    if (!p->predict_horizon_ns)
        return 0;
    return observe(s, p, now, since_ns, threshold_ppm, NULL);
}

static void view_head(struct sg_slot *s, const struct sg_policy_view *p, struct sg_predict_view *out)
{
    memset(out, 0, sizeof *out);
    out->horizon_ns = p->predict_horizon_ns;
    out->opens = LD(&s->predict.opens);
}

int sg_predict_observe_at(void *slot, uint64_t now, uint64_t since_ns, struct sg_predict_view *out)
{
    struct sg_slot *s = slot;
    if (!s || !out)
        return SG_E_ARG;
    struct sg_policy_view p;
    sg_policy_load(s, &p);
    view_head(s, &p, out);
    return observe(s, &p, now, since_ns, sg_window_threshold(s, &p), out);
}

int sg_predict_snapshot_at(const void *slot, uint64_t now, struct sg_predict_view *out)
{
    struct sg_slot *s = (struct sg_slot *)slot;
    if (!s || !out)
        return SG_E_ARG;
    struct sg_policy_view p;
    sg_policy_load(s, &p);
    view_head(s, &p, out);
    uint64_t cur = now / p.bucket_ns;
    struct holt h;
    /* read only: the state as the last failure left it (floor 0) */
    if (decode(LD(&s->predict.fail), cur + 1, p.buckets + 1, 0, &h)) {
        out->valid |= 1, out->level_ppm = (int32_t)h.level, out->trend_ppm = (int32_t)h.trend;
        out->forecast_ppm = (uint32_t)forecast(&h, now, p.bucket_ns, p.predict_horizon_ns);
    }
    if (decode(LD(&s->predict.slow), cur + 1, p.buckets + 1, 0, &h)) {
        out->valid |= 2, out->slow_level_ppm = (int32_t)h.level, out->slow_trend_ppm = (int32_t)h.trend;
        out->slow_forecast_ppm = (uint32_t)forecast(&h, now, p.bucket_ns, p.predict_horizon_ns);
    }
    return SG_OK;
}
