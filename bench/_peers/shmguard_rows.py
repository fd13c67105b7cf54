"""shmguard's own contenders, written against its public API:

    svc = sg.ResilienceService(name, policy=policy)
    svc.register_endpoint("ep", policy)
    svc.limiter("ep").allow() -> bool
    p = svc.breaker("ep").allow(); p.success()
    svc.execute("ep", fn)
    svc.close(); svc.unlink()          # or sg.unlink(name)

If ``import shmguard`` fails nothing is registered and the suite prints
"shmguard not installed: its rows skipped"; the ratio lines then read n/a.
"""

from __future__ import annotations

import os
import uuid
from functools import partial
from typing import Any, Dict

from .registry import (
    HUGE,
    REGISTRY,
    BreakerCheck,
    InprocContender,
    SharedContender,
    promise_token,
)

try:
    import shmguard as sg
except Exception as _exc:  # noqa: BLE001 - any import failure means "not installed"
    sg = None
    _IMPORT_ERROR = repr(_exc)
else:
    _IMPORT_ERROR = ""

SKIP_MESSAGE = "shmguard not installed: its rows skipped"


def _noop():
    return None


async def _anoop():
    return None


def _policy(rate: float, burst: int):
    return (sg.PolicyBuilder.from_preset(sg.PolicyPresets.standard())
            .with_rate_limit(rate, burst=burst).build())


def _segment_name() -> str:
    return f"bench-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _open(name: str, policy):
    svc = sg.ResilienceService(name, policy=policy)
    svc.register_endpoint("ep", policy)
    return svc


def _dispose(svc, name: str) -> None:
    try:
        svc.close()
    finally:
        try:
            svc.unlink()
        except Exception:  # noqa: BLE001 - already unlinked, or close() did it
            try:
                sg.unlink(name)
            except Exception:  # noqa: BLE001
                pass


# --- in-process ----------------------------------------------------------------


def _make_inproc(what: str):
    name = _segment_name()
    svc = _open(name, _policy(float(HUGE), HUGE))
    closer = partial(_dispose, svc, name)
    if what == "limiter":
        return svc.limiter("ep").allow, closer
    if what == "breaker":
        br = svc.breaker("ep")

        def allow_success():
            br.allow().success()

        return allow_success, closer
    if what == "reserve":
        return svc.limiter("ep").reserve, closer
    if what == "wait":
        return svc.limiter("ep").wait, closer
    if what == "guard":
        guard = svc.guard

        def with_guard():
            with guard("ep"):
                _noop()

        return with_guard, closer
    if what == "execute_async":
        execute_async = svc.execute_async

        async def call_async():
            return await execute_async("ep", _anoop)

        return call_async, closer
    execute = svc.execute

    def guarded():
        # the same shape as the peers' rows (a function making one guarded
        # call); functools.partial would add ~90 ns of its own argument merging
        return execute("ep", _noop)

    return guarded, closer


def _make_limiter():
    return _make_inproc("limiter")


def _make_breaker():
    return _make_inproc("breaker")


def _make_execute():
    return _make_inproc("execute")


# --- shared (multi-process) ------------------------------------------------------

_PARENT_SERVICES: Dict[str, Any] = {}


def _rate_burst(cfg):
    if cfg["mode"] == "throughput":
        return float(HUGE), HUGE
    return float(cfg["rate"]), int(cfg["burst"])


def _parent_setup(cfg):
    name = f"bench-{cfg['key']}"
    _PARENT_SERVICES[name] = _open(name, _policy(*_rate_burst(cfg)))
    return {"name": name}


def _parent_teardown(cfg, shared):
    name = shared["name"] if shared else f"bench-{cfg['key']}"
    svc = _PARENT_SERVICES.pop(name, None)
    if svc is not None:
        _dispose(svc, name)


def _child_limiter(cfg):
    svc = _open(cfg["shared"]["name"], _policy(*_rate_burst(cfg)))
    return svc.limiter("ep").allow


def _child_breaker(cfg):
    svc = _open(cfg["shared"]["name"], _policy(*_rate_burst(cfg)))
    br = svc.breaker("ep")

    def allow_success():
        br.allow().success()

    return allow_success


def _promise(cfg):
    return promise_token(cfg["rate"], cfg["burst"],
                         f"token bucket {int(cfg['rate'])}/s, burst {int(cfg['burst'])}")


# Breaker check, configured like the pybreaker row: every call fails, so a
# failure-ratio breaker with min_requests=5 opens after 5 failures; open for
# 2 s; one half-open probe (the preset's default).
BREAKER_MIN_REQUESTS = 5
BREAKER_OPEN_S = 2.0


def _breaker_policy():
    b = (sg.PolicyBuilder.from_preset(sg.PolicyPresets.standard())
         .with_rate_limit(float(HUGE), burst=HUGE))
    if hasattr(b, "with_min_requests"):
        b = b.with_min_requests(BREAKER_MIN_REQUESTS)
    if hasattr(b, "with_open_timeout"):
        b = b.with_open_timeout(BREAKER_OPEN_S)
    return b.build()


def _check_breaker(cfg):
    svc = _open(cfg["shared"]["name"], _breaker_policy())
    return partial(svc.execute, "ep")


def _parent_setup_breaker(cfg):
    name = f"bench-{cfg['key']}"
    _PARENT_SERVICES[name] = _open(name, _breaker_policy())
    return {"name": name}


def register() -> bool:
    if sg is None:
        REGISTRY.messages.append(SKIP_MESSAGE)
        print(SKIP_MESSAGE, flush=True)
        return False
    REGISTRY.add_inproc(InprocContender("shmguard limiter.allow()", "limiter", _make_limiter,
                                        peer="shmguard"))
    REGISTRY.add_inproc(InprocContender("shmguard breaker.allow().success()", "breaker",
                                        _make_breaker, peer="shmguard"))
    REGISTRY.add_inproc(InprocContender("shmguard execute(fn)", "breaker", _make_execute,
                                        peer="shmguard"))
    for label, what, group, is_async in (
            ("shmguard limiter.reserve()", "reserve", "limiter", False),
            ("shmguard limiter.wait()", "wait", "limiter", False),
            ("shmguard with svc.guard(ep): fn()", "guard", "breaker", False),
            ("shmguard await execute_async(fn)", "execute_async", "breaker", True)):
        REGISTRY.add_inproc(InprocContender(label, group, partial(_make_inproc, what),
                                            peer="shmguard", is_async=is_async))
    REGISTRY.add_shared(SharedContender("shmguard limiter (shared memory)", "limiter", "shm",
                                        _child_limiter, peer="shmguard",
                                        parent_setup=_parent_setup, parent_teardown=_parent_teardown,
                                        promise=_promise, note="200/s, burst 50"))
    REGISTRY.add_shared(SharedContender("shmguard breaker allow+success (shared memory)", "breaker",
                                        "shm", _child_breaker, peer="shmguard",
                                        parent_setup=_parent_setup, parent_teardown=_parent_teardown,
                                        correctness=False))
    configurable = all(hasattr(sg.PolicyBuilder, m) for m in ("with_min_requests", "with_open_timeout"))
    REGISTRY.add_breaker_check(BreakerCheck(
        "shmguard execute (shared memory)", _check_breaker, peer="shmguard",
        parent_setup=_parent_setup_breaker, parent_teardown=_parent_teardown,
        threshold=BREAKER_MIN_REQUESTS if configurable else None,
        reset_s=BREAKER_OPEN_S if configurable else 0.0,
        note=(f"standard preset, min_requests={BREAKER_MIN_REQUESTS} (all calls fail), "
              f"open_timeout={BREAKER_OPEN_S:g}s" if configurable
              else "standard preset (failure-ratio breaker)")))
    return True
