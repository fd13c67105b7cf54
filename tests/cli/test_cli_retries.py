"""inspect (text, JSON, Prometheus) and watch show attempts, retries, denials and the budget."""
from __future__ import annotations

import json

import shmguard as sg

from _cli_helpers import cli

BUDGET = sg.Policy(min_requests=10**6, retry_budget=0.0, retry_budget_min_per_second=0.5,
                   retry_budget_window=6.0)


def down() -> None:
    raise ConnectionError("down")


def _drive(svc: sg.ResilienceService) -> None:
    svc.register_endpoint("budgeted", BUDGET)
    svc.register_endpoint("plain", sg.Policy(min_requests=10**6))
    for _ in range(2):   # 3 retries allowed in the window: 1 + 3, then 1 + refused
        try:
            svc.execute("budgeted", down, retries=5, backoff=0)
        except ConnectionError:
            pass
    try:
        svc.execute("plain", down, retries=2, backoff=0)
    except ConnectionError:
        pass
    svc.execute("plain", lambda: None)


def test_inspect_json_and_text(svc, segname):
    _drive(svc)
    snap = json.loads(cli("inspect", segname, "--json").stdout)
    eps = {e["name"]: e for e in snap["endpoints"]}
    assert eps["budgeted"]["retries"] == {
        "attempts": 5, "retries": 3, "denied": 2,
        "budget": {"window_seconds": 6.0, "attempts": 5, "retries": 3, "allowed": 3}}
    assert eps["plain"]["retries"] == {"attempts": 4, "retries": 2, "denied": 0, "budget": None}
    assert eps["budgeted"]["policy"]["retry_budget"] == {
        "ratio": 0.0, "min_per_second": 0.5, "window_seconds": 6.0}
    text = cli("inspect", segname).stdout
    assert "retries 3 denied 2 budget 3/3 per 6.0s" in text
    assert "retries 2 denied 0" in text
    assert all(len(line) <= 80 for line in text.splitlines())


def test_prometheus_and_watch(svc, segname):
    _drive(svc)
    text = cli("inspect", segname, "--prometheus").stdout
    for line in ('shmguard_attempts_total{segment="%s",endpoint="budgeted"} 5',
                 'shmguard_retries_total{segment="%s",endpoint="budgeted"} 3',
                 'shmguard_retries_denied_total{segment="%s",endpoint="budgeted"} 2',
                 'shmguard_retry_budget_allowed{segment="%s",endpoint="budgeted"} 3',
                 'shmguard_retries_total{segment="%s",endpoint="plain"} 2'):
        assert line % segname in text.splitlines(), line
    assert "# TYPE shmguard_retries_denied_total counter" in text
    assert 'shmguard_retry_budget_allowed{segment="%s",endpoint="plain"}' % segname not in text
    out = cli("watch", segname, "--once").stdout
    assert "retries 3 denied 2 budget 3/3" in out and "retries 2 denied 0" in out
