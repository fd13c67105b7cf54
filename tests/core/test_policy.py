"""Policies: validated when built, the field named in every error."""
from __future__ import annotations

import math

import pytest

import shmguard as sg

BAD = [
    ("failure_threshold", 0.0), ("failure_threshold", 1.5), ("failure_threshold", math.nan),
    ("failure_threshold", -0.1), ("min_requests", 0), ("min_requests", 2.5),
    ("window", 0), ("window", -1.0), ("window", math.inf), ("window_buckets", 0),
    ("window_buckets", 17), ("open_timeout", 0), ("open_timeout", math.nan),
    ("backoff", 0.5), ("jitter", 1.5), ("half_open_max_calls", 0), ("half_open_max_calls", 9),
    ("success_threshold", 0), ("probe_lease", 0), ("slow_call_duration", -1.0),
    ("slow_call_threshold", 0), ("rate", 0), ("rate", -5), ("rate", math.nan), ("rate", 1e12),
    ("burst", 0), ("burst", 2**31 + 1), ("burst", 1.5), ("rate_floor", 2), ("recovery", -1),
    ("adaptive_max_threshold", 0.1), ("failure_exceptions", (int,)),
    ("ignored_exceptions", [ValueError]), ("min_requests", True), ("rate", "100"),
]


@pytest.mark.parametrize("field,value", BAD, ids=[f"{f}={v!r}" for f, v in BAD])
def test_invalid_fields_name_themselves(field, value):
    with pytest.raises(sg.PolicyError) as ei:
        sg.Policy(**{field: value})
    assert field in str(ei.value)
    assert isinstance(ei.value, ValueError)


def test_priority_shares_validated():
    with pytest.raises(sg.PolicyError, match=r"priority_shares\[LOW\]"):
        sg.Policy(priority_shares=(0.0, 0.8, 1.0, 1.1))
    with pytest.raises(sg.PolicyError, match="4 values"):
        sg.Policy(priority_shares=(1.0, 1.0))


def test_presets_carry_the_seed_numbers():
    expect = {
        "critical": (0.3, 5, 50, 75), "standard": (0.5, 10, 100, 200),
        "network": (0.4, 10, 150, 300), "high_throughput": (0.6, 15, 500, 1000),
        "relaxed": (0.7, 20, 200, 500),
    }
    for name, (thr, mn, rate, burst) in expect.items():
        p = getattr(sg.PolicyPresets, name)()
        assert (p.failure_threshold, p.min_requests, p.rate, p.burst) == (thr, mn, rate, burst)


def test_network_preset_counts_network_errors_only():
    p = sg.PolicyPresets.network()
    assert p.classify(ConnectionResetError()) == sg.Outcome.FAILURE
    assert p.classify(TimeoutError()) == sg.Outcome.FAILURE
    assert p.classify(KeyError("x")) == sg.Outcome.SUCCESS   # the service answered


def test_builder_chains_and_validates():
    p = (sg.PolicyBuilder.from_preset(sg.PolicyPresets.network())
         .with_breaker_threshold(0.4).with_rate_limit(200, burst=300).adaptive(True)
         .with_min_requests(7).with_open_timeout(2.0).with_half_open_max_calls(3)
         .with_probe_lease(5.0).with_window(20.0, buckets=5).build())
    assert (p.failure_threshold, p.rate, p.burst, p.adaptive) == (0.4, 200, 300, True)
    assert (p.min_requests, p.open_timeout, p.half_open_max_calls) == (7, 2.0, 3)
    assert (p.probe_lease, p.window, p.window_buckets) == (5.0, 20.0, 5)
    assert p.failure_exceptions == sg.PolicyPresets.network().failure_exceptions
    with pytest.raises(sg.PolicyError, match="failure_threshold"):
        sg.PolicyBuilder().with_breaker_threshold(2).build()


def test_fingerprint_is_stable_and_sensitive():
    a, b = sg.PolicyPresets.standard(), sg.PolicyPresets.standard()
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint != a.replace(rate=101).fingerprint
    assert a.fingerprint != a.replace(ignored_exceptions=(KeyError,)).fingerprint


def test_ignored_beats_failure():
    p = sg.Policy(ignored_exceptions=(KeyError,))
    assert p.classify(KeyError()) == sg.Outcome.IGNORE
    assert p.classify(ValueError()) == sg.Outcome.FAILURE
