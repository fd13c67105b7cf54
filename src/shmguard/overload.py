"""Overload control read from the slot: adaptive throttling and predictive breaking.

The decisions live in C (csrc/throttle.c, csrc/predict.c) and run inside
admission and recording; this module turns their snapshots into
:class:`~shmguard.stats.ThrottleStats` and :class:`~shmguard.stats.PredictionStats`
and builds the :class:`~shmguard.errors.ThrottledError` of a refused call.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shmguard import _capi
from shmguard._capi import ffi, lib
from shmguard.errors import ThrottledError
from shmguard.stats import PredictionStats, ThrottleStats

if TYPE_CHECKING:
    from shmguard._endpoint import Endpoint

__all__ = ["throttle_stats", "prediction_stats", "throttled_error", "throttle_view",
           "predict_view"]

NS = 1_000_000_000
PPM = 1_000_000


def throttle_view(slot: Any, now_ns: int, segment: str) -> Any:
    """Returns the C ``struct sg_throttle_view`` of a slot at ``now_ns``."""
    v = ffi.new("struct sg_throttle_view *")
    _capi.check(lib.sg_throttle_snapshot_at(slot, now_ns, v), "throttle", segment)
    return v


def predict_view(slot: Any, now_ns: int, segment: str) -> Any:
    """Returns the C ``struct sg_predict_view`` of a slot at ``now_ns`` (read only)."""
    v = ffi.new("struct sg_predict_view *")
    _capi.check(lib.sg_predict_snapshot_at(slot, now_ns, v), "prediction", segment)
    return v


def throttle_stats(slot: Any, now_ns: int, segment: str) -> ThrottleStats:
    """Reports the slot's throttling counts (host-wide) at ``now_ns``."""
    v = throttle_view(slot, now_ns, segment)
    return ThrottleStats(v.window_ns != 0, v.k_milli / 1000, v.window_ns / NS, v.requests,
                         v.accepts, v.probability_ppm / PPM, v.requests_total, v.accepts_total,
                         v.throttled_total)


def prediction_stats(slot: Any, now_ns: int, segment: str) -> PredictionStats:
    """Reports the slot's forecast state at ``now_ns``."""
    v = predict_view(slot, now_ns, segment)
    f, s = bool(v.valid & 1), bool(v.valid & 2)
    return PredictionStats(v.horizon_ns != 0, v.horizon_ns / NS,
                           v.level_ppm / PPM if f else None, v.trend_ppm / PPM if f else None,
                           v.forecast_ppm / PPM if f else None,
                           v.slow_level_ppm / PPM if s else None,
                           v.slow_trend_ppm / PPM if s else None,
                           v.slow_forecast_ppm / PPM if s else None, v.opens)


def throttled_error(ep: Endpoint) -> ThrottledError:
    """Returns the error for a call that adaptive throttling refused."""
    p = throttle_view(ep.h.slot, ep.seg.now_ns(), ep.seg.name).probability_ppm / PPM
    return ThrottledError(ep.name, p, f"endpoint {ep.name!r} is overloaded: adaptive throttling "
                                      f"refused the call (p={p:.3f})")
