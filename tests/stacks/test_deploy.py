"""A changed policy never fails a deploy: the newest registration wins host-wide, with a warning."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

import shmguard as sg
from shmguard.policychange import PolicyChangedWarning

from _cli_helpers import cli  # noqa: E402

OLD = sg.Policy(rate=10, burst=5)
NEW = sg.Policy(rate=20, burst=5, open_timeout=5.0)


def _attach(segname: str) -> sg.ResilienceService:
    return sg.ResilienceService(segname, create=False)


def test_new_policy_takes_effect_everywhere_with_a_warning_and_a_callback(
        segname: str, svc: sg.ResilienceService) -> None:
    svc.register_endpoint("api", OLD)
    seen: list[tuple[str, dict[str, Any]]] = []
    with _attach(segname) as deployed:       # a worker of the new release
        deployed.on_policy_change = lambda ep, diff: seen.append((ep, diff))
        with pytest.warns(PolicyChangedWarning,
                          match=r"'api' .*replaced the policy for every process "
                                r"\(rate 10.0 -> 20.0, open_timeout 30.0 -> 5.0\)"):
            deployed.register_endpoint("api", NEW)
        deployed.register_endpoint("api", NEW)        # the next new worker: no change, silent
        # (pytest turns warnings into errors: a second warning would fail here)
    assert seen == [("api", {"rate": (10.0, 20.0), "open_timeout": (30.0, 5.0)})]
    assert svc.stats("api").rate == pytest.approx(20)  # the old worker sees it at once


def test_on_conflict_raise_keep_and_replace(segname: str, svc: sg.ResilienceService) -> None:
    svc.register_endpoint("api", OLD)
    with _attach(segname) as other:
        with pytest.raises(sg.PolicyConflictError, match=r"rate 10.0 -> 20.0.*on_conflict"):
            other.register_endpoint("api", NEW, on_conflict="raise")
        other.register_endpoint("api", NEW, on_conflict="keep")         # silent, unchanged
        assert svc.stats("api").rate == pytest.approx(10)
        assert other._eps["api"].policy is NEW                          # local classification
        other.register_endpoint("api", NEW, replace=True)               # the old spelling
        assert svc.stats("api").rate == pytest.approx(20)
        other.register_endpoint("api", OLD, on_conflict="replace")      # silent as well
        assert svc.stats("api").rate == pytest.approx(10)
        with pytest.raises(sg.PolicyError, match="on_conflict must be"):
            other.register_endpoint("api", OLD, on_conflict="newest")


def test_process_local_changes_are_named(svc: sg.ResilienceService) -> None:
    svc.register_endpoint("api", OLD)
    with pytest.warns(PolicyChangedWarning, match=r"\(process-local fields\)"):
        svc.register_endpoint("api", OLD.replace(failure_exceptions=(OSError,)))


def test_set_rate_is_an_override_until_the_code_registers_again(
        segname: str, realsvc: sg.ResilienceService) -> None:
    realsvc.register_endpoint("api", OLD)
    cli("set-rate", segname, "api", "2")
    pol = json.loads(cli("inspect", segname, "--json").stdout)["endpoints"][0]["policy"]
    assert pol["overridden"] is True
    assert "(set-rate override)" in cli("inspect", segname).stdout
    assert f'shmguard_policy_overridden{{segment="{segname}",endpoint="api"}} 1' in cli(
        "inspect", segname, "--prometheus").stdout
    with _attach(segname) as keeper:
        keeper.register_endpoint("api", OLD, on_conflict="keep")
    assert realsvc.stats("api").rate == pytest.approx(2)             # keep: the override stays
    with _attach(segname) as restarted:
        with pytest.warns(PolicyChangedWarning, match=r"restored the registered policy over "
                                                      r"a CLI override for every process \(rate 2.0 -> 10.0"):
            restarted.register_endpoint("api", OLD)
    assert realsvc.stats("api").rate == pytest.approx(10)
    pol = json.loads(cli("inspect", segname, "--json").stdout)["endpoints"][0]["policy"]
    assert pol["overridden"] is False


def test_a_redeploy_with_warnings_as_errors_off_boots(segname: str,
                                                      svc: sg.ResilienceService) -> None:
    """A new process registering an edited policy starts (it failed to boot before)."""
    svc.register_endpoint("api", OLD)
    code = textwrap.dedent(f"""
        import shmguard as sg
        svc = sg.ResilienceService({segname!r})
        svc.register_endpoint("api", sg.Policy(rate=20, burst=5, open_timeout=5.0))
        print(svc.stats("api").rate)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "20.0"
    assert "PolicyChangedWarning: endpoint 'api'" in r.stderr


APP = """
import shmguard as sg
svc = sg.ResilienceService()                      # $SHMGUARD_SEGMENT
svc.register_endpoint("api", sg.Policy(rate={rate}, burst=5))

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(svc.stats("api").rate).encode()]
"""


@pytest.mark.slow
def test_gunicorn_reload_with_an_edited_policy_boots(segname: str, tmp_path: Any) -> None:
    """The deploy that failed: HUP after a policy edit; every new worker boots, the master stays."""
    import os
    import signal
    import time
    import urllib.request
    from _procs import Running, free_port, tool, wait_up
    app = tmp_path / "app.py"
    app.write_text(APP.format(rate=10))
    port = free_port()
    server = Running([tool("gunicorn"), "--workers", "2", "--bind", f"127.0.0.1:{port}",
                      "app:app"], str(tmp_path), {"SHMGUARD_SEGMENT": segname})

    def rate() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            return r.read().decode()
    try:
        wait_up(port, server)
        assert rate() == "10.0"
        app.write_text(APP.format(rate=20))
        os.kill(server.proc.pid, signal.SIGHUP)       # gunicorn's reload: new workers, new code
        deadline = time.monotonic() + 60
        while rate() != "20.0" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert rate() == "20.0" and server.proc.poll() is None
    finally:
        out = server.stop()
    assert "PolicyChangedWarning: endpoint 'api'" in out and "rate 10.0 -> 20.0" in out, out
    assert "Worker failed to boot" not in out and "Traceback" not in out, out


@pytest.mark.parametrize("old, new, diff", [
    (sg.Policy(rate=10), sg.Policy(), {"rate": (10.0, None), "burst": (10, 1)}),
    (sg.Policy(), sg.Policy(adaptive=True), {"adaptive": (False, True)}),
    (sg.Policy(open_timeout=5), sg.Policy(open_timeout=6),      # open_timeout_max follows
     {"open_timeout": (5.0, 6.0)}),
    (sg.Policy(failure_threshold=0.5), sg.Policy(failure_threshold=0.4),   # so does the
     {"failure_threshold": (0.5, 0.4)}),                                   # adaptive ceiling
    (sg.Policy(half_open_max_calls=2), sg.Policy(half_open_max_calls=3),   # and success_threshold
     {"half_open_max_calls": (2, 3)}),
    (sg.Policy(window=10), sg.Policy(window=20, window_buckets=5),
     {"window": (10.0, 20.0), "window_buckets": (10, 5)}),
    (sg.Policy(), sg.Policy(jitter_seed=7), {"process-local fields": (
        "exception classification or jitter_seed", "changed")}),
    (sg.Policy(), sg.Policy(), {}),
])
def test_changes_are_named_in_the_policys_words(old: sg.Policy, new: sg.Policy,
                                                 diff: dict[str, Any]) -> None:
    from shmguard._capi import ffi
    from shmguard.policychange import changes
    views = [p.fill_view(ffi.new("struct sg_policy_view *")) for p in (old, new)]
    assert changes(*views) == diff
