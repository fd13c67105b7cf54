"""ResilienceService: the per-process facade over one shared segment.

Endpoint name -> slot index is cached per process, so the hot path is a
dict lookup plus one C call to admit and one to record.
"""
from __future__ import annotations

import functools
import os
import threading
import time
import weakref
from typing import Any, Awaitable, Callable, NoReturn, TypeVar

from shmguard import _capi, probes
from shmguard._capi import ffi, lib
from shmguard.breaker import Breaker
from shmguard.errors import (CircuitOpenError, InvalidNameError, PolicyConflictError,
                             PolicyError, RateLimitedError, ShmguardError)
from shmguard.limiter import NS, Limiter, pack, wait_ns
from shmguard.policy import Outcome, Policy, PolicyPresets, Priority
from shmguard.result import Err, Ok
from shmguard.segment import Segment
from shmguard.stats import (BreakerMode, BreakerSnapshot, BreakerState, EndpointStats,
                            LimiterMetrics, Probe)

T = TypeVar("T")
__all__ = ["ResilienceService"]

_CP = tuple(pack(1, p) for p in Priority)
_NORMAL = Priority.NORMAL
_LEASE = 0xF << 34  # token bits naming a half-open probe lease

try:  # the one-crossing execute path (csrc/hot.c); the Python path below is equivalent
    from shmguard._hot import ABI_VERSION as _HOT_ABI
    from shmguard._hot import execute as _hot_execute
    if _HOT_ABI != _capi.ABI_VERSION:  # a stale build: use the Python path
        _hot_execute = None
except ImportError:  # pragma: no cover - a build without it still works, slower
    _hot_execute = None
_STATE = {0: (BreakerState.CLOSED, BreakerMode.NORMAL), 1: (BreakerState.OPEN, BreakerMode.NORMAL),
          2: (BreakerState.HALF_OPEN, BreakerMode.NORMAL),
          3: (BreakerState.OPEN, BreakerMode.FORCED_OPEN),
          4: (BreakerState.CLOSED, BreakerMode.FORCED_CLOSED),
          5: (BreakerState.CLOSED, BreakerMode.METRICS_ONLY)}
REGISTER_WAIT = 5.0
CLAIM_STALE_NS = 2 * NS
RECLAIM_EVERY = 0.05


def validate_endpoint(name: object) -> bytes:
    """Returns the endpoint name as bytes; raises :class:`InvalidNameError`."""
    if not isinstance(name, str):
        raise InvalidNameError(f"endpoint name must be a str, got {name!r}")
    if not name:
        raise InvalidNameError("endpoint name must not be empty")
    if not name.isascii() or not name.isprintable():
        raise InvalidNameError(f"endpoint name {name!r} must be printable ASCII")
    raw = name.encode("ascii")
    if len(raw) > lib.SG_NAME_MAX:
        raise InvalidNameError(f"endpoint name {name[:20]!r}... is {len(raw)} bytes; "
                               f"the limit is {lib.SG_NAME_MAX}")
    return raw


class _Endpoint:
    """Process-local view of one slot: handle, bound C calls, local policy."""

    __slots__ = ("name", "index", "h", "hp", "policy", "svc", "admit", "record", "acquire",
                 "allow1", "allow_cp", "next_reclaim", "next_metrics", "breaker", "limiter",
                 "probe")

    def __init__(self, svc: ResilienceService, name: str, index: int, policy: Policy) -> None:
        self.svc = svc
        self.name = name
        self.index = index
        self.policy = policy
        self.h = ffi.new("struct sg_handle *")
        _capi.check(lib.sg_handle_init(self.h, svc.segment.base, svc.segment.size, index),
                    "handle", svc.name)
        self.bind()
        self.next_reclaim = 0.0
        self.next_metrics = 0.0
        self.probe: Callable[[], Any] | None = None
        self.breaker = Breaker(self)
        self.limiter = Limiter(self)

    def bind(self) -> None:
        self.admit, self.record, self.acquire = lib.sg_admit, lib.sg_breaker_record, lib.sg_breaker_acquire
        self.allow1, self.allow_cp = lib.sg_allow, lib.sg_allow_cp
        self.hp = int(ffi.cast("uintptr_t", self.h))  # the handle's address, for _hot

    def unbind(self) -> None:
        def closed(*_: Any) -> Any:
            raise ShmguardError(f"service {self.svc.name!r} is closed")
        self.admit = self.record = self.acquire = self.allow1 = self.allow_cp = closed
        self.hp = 0  # _hot calls closed_error() instead of touching the unmapped slot

    # -- called back by shmguard._hot.execute on its uncommon paths -------------
    def closed_error(self) -> NoReturn:
        raise ShmguardError(f"service {self.svc.name!r} is closed")

    def slow_admit(self, tok: int, cp: int) -> int:
        """A rejection or a probe permit: raise, reclaim, or run the health probe."""
        priority = Priority(cp & 3)
        if tok < 0:
            tok = self.svc._admit_slow(self, tok, priority, None)
        if tok & _LEASE and self.probe is not None:
            tok = self.svc._probe_instead(self, tok, priority, None)
        return tok

    def record_success(self, tok: int) -> None:
        t = self.record(self.h, tok | Outcome.SUCCESS)
        if t or self.svc.on_metrics_update is not None:
            self.svc._after(self, t, tok)

    def record_exception(self, exc: BaseException, tok: int) -> None:
        outcome = self.policy.classify(exc) if isinstance(exc, Exception) else Outcome.IGNORE
        t = self.record(self.h, tok | outcome)
        if t or self.svc.on_metrics_update is not None:
            self.svc._after(self, t, tok)

    def after_record(self, t: int, tok: int) -> None:
        self.svc._after(self, t, tok)


class ResilienceService:
    """Host-wide breakers and rate limiters for named endpoints.

    Creates the segment ``name`` (default: env ``SHMGUARD_SEGMENT``, else
    "default") or attaches to it. Fork children inherit the mapping; spawn
    children and unrelated processes attach by name.

    Thread safe and process safe. Callbacks (``on_state_change(endpoint, old,
    new)``, ``on_metrics_update(endpoint, state, metrics)``) run in the
    process, and thread, whose call made the transition, never under a lock;
    an exception in a callback propagates to that call.

    :param policy: default policy for endpoints registered implicitly
        (``PolicyPresets.standard()``).
    :param capacity: slots when creating (ignored when attaching).
    :param manual_clock: on creation, a clock that only moves when told
        (:meth:`set_clock`, :meth:`advance`), shared by all processes (tests).

    >>> with ResilienceService("doc-example") as svc:   # doctest: +SKIP
    ...     svc.register_endpoint("cache", PolicyPresets.network())
    ...     svc.execute("cache", lambda: 42)
    42
    """

    def __init__(self, name: str | None = None, *, policy: Policy | None = None,
                 capacity: int = 256, manual_clock: bool = False, allow_foreign: bool = False,
                 create: bool = True) -> None:
        if name is None:
            name = os.environ.get("SHMGUARD_SEGMENT") or "default"
        if policy is not None and not isinstance(policy, Policy):
            raise PolicyError(f"policy must be a shmguard.Policy, got {policy!r}")
        self.default_policy = policy or PolicyPresets.standard()
        self.segment = Segment(name, create=create, capacity=capacity, manual_clock=manual_clock,
                               allow_foreign=allow_foreign)
        self.name = name
        self._eps: dict[str, _Endpoint] = {}
        self._lock = threading.Lock()  # guards _eps inserts only (process-local)
        _LIVE.add(self)
        self.on_state_change: Callable[[str, BreakerState, BreakerState], Any] | None = None
        self.on_metrics_update: Callable[[str, BreakerState, EndpointStats], Any] | None = None
        self.metrics_interval = 1.0

    # -- life cycle -----------------------------------------------------------
    def __reduce__(self) -> tuple[Any, ...]:
        """Pickles as "attach to the same segment by name" (spawn children, executors)."""
        return (_reattach, (self.name, self.default_policy, self.segment.allow_foreign))

    def __enter__(self) -> ResilienceService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Detaches this process; the segment stays for the others."""
        for ep in self._eps.values():
            ep.unbind()
        self.segment.close()

    def unlink(self) -> bool:
        """Removes the segment's name from the host; reports whether it existed."""
        return self.segment.unlink()

    @property
    def closed(self) -> bool:
        return self.segment.closed

    # -- clock --------------------------------------------------------------------
    def now_ns(self) -> int:
        return self.segment.now_ns()

    def set_clock(self, now_ns: int) -> None:
        self.segment.set_clock(now_ns)

    def advance(self, seconds: float) -> int:
        """Moves the manual clock on by ``seconds``; returns the new time (ns)."""
        now = self.segment.now_ns() + int(seconds * NS)
        self.segment.set_clock(now)
        return now

    # -- registration ---------------------------------------------------------------
    def register_endpoint(self, name: str, policy: Policy | None = None, *,
                          replace: bool = False,
                          health_probe: Callable[[], Any] | None = None) -> None:
        """Registers ``name`` with ``policy`` (default: the service's).

        Idempotent for the same policy. Another policy for an existing
        endpoint raises :class:`PolicyConflictError` unless ``replace=True``,
        which publishes it to every process.

        :param health_probe: see :meth:`set_health_probe`.
        """
        policy = policy or self.default_policy
        if not isinstance(policy, Policy):
            raise PolicyError(f"policy must be a shmguard.Policy, got {policy!r}")
        ep, created = self._register(name, policy)
        if health_probe is not None:
            self.set_health_probe(name, health_probe)
        if created:
            return
        view = self._policy_view(ep)
        if view.fingerprint == policy.fingerprint:
            ep.policy = policy
            return
        if not replace:
            raise PolicyConflictError(
                f"endpoint {name!r} already exists in segment {self.name!r} with another policy "
                "(pass replace=True to replace it for every process)")
        new = policy.fill_view(ffi.new("struct sg_policy_view *"))
        deadline = time.monotonic() + REGISTER_WAIT
        while (rc := lib.sg_policy_publish(ep.h, new, os.getpid())) == lib.SG_E_BUSY:
            if time.monotonic() > deadline:
                raise ShmguardError(f"endpoint {name!r}: policy writer lease stayed busy")
            time.sleep(0.001)
        _capi.check(rc, f"publish policy of {name!r}", self.name)
        ep.policy = policy

    def _register(self, name: str, policy: Policy) -> tuple[_Endpoint, bool]:
        raw = validate_endpoint(name)
        view = policy.fill_view(ffi.new("struct sg_policy_view *"))
        idx, claim = ffi.new("uint32_t *"), ffi.new("uint64_t *")
        deadline = time.monotonic() + REGISTER_WAIT
        seg = self.segment
        while True:
            rc = lib.sg_table_register(seg.base, seg.size, raw, len(raw), view, os.getpid(),
                                       CLAIM_STALE_NS, idx, claim)
            if rc != lib.SG_E_BUSY:
                break
            # a claim by another process is in the way: is its owner alive?
            if not probes.pid_alive((claim[0] >> 32) & 0x3FFFFFFF):
                lib.sg_table_takeover(seg.base, seg.size, idx[0], claim[0])
                continue
            if time.monotonic() > deadline:
                raise ShmguardError(f"endpoint {name!r}: a slot claim stayed busy")
            time.sleep(0.0005)
        if rc == lib.SG_E_FULL:
            from shmguard.errors import CapacityError
            raise CapacityError(f"cannot register endpoint {name!r}: segment {self.name!r} is "
                                f"full ({seg.capacity} slots); create it with a larger capacity")
        _capi.check(rc, f"register {name!r}", self.name)
        with self._lock:
            ep = self._eps.get(name)
            if ep is None or ep.index != idx[0]:
                ep = _Endpoint(self, name, idx[0], policy)
                self._eps[name] = ep
        return ep, rc == lib.SG_CREATED

    def _endpoint(self, name: str) -> _Endpoint:
        ep = self._eps.get(name)
        if ep is None:
            ep, _ = self._register(name, self.default_policy)
        return ep

    def set_health_probe(self, endpoint: str, probe: Callable[[], Any] | None) -> None:
        """Lets ``probe()`` stand in for real traffic as the half-open probe.

        When this process gets a probe permit, it runs ``probe()`` (an
        exception or a false result is a failure) instead of the caller's
        call; if that closes the breaker the call proceeds, otherwise it is
        rejected with :class:`CircuitOpenError`. Per process.
        """
        if probe is not None and not callable(probe):
            raise PolicyError(f"health_probe must be callable, got {probe!r}")
        self._endpoint(endpoint).probe = probe

    def probe(self, endpoint: str) -> bool | None:
        """Runs the endpoint's health probe if a half-open permit is free now.

        :returns: the probe's outcome (True: healthy), or None when no probe
            was due (closed, still open, or every permit out).
        """
        ep = self._endpoint(endpoint)
        if ep.probe is None:
            raise ShmguardError(f"endpoint {endpoint!r} has no health probe in this process")
        tok = self._acquire(ep)
        if tok < 0 or not tok & _LEASE:
            return None  # nothing due; a closed-state token needs no record
        return self._run_probe(ep, tok)

    def _run_probe(self, ep: _Endpoint, tok: int) -> bool:
        assert ep.probe is not None
        try:
            ok = bool(ep.probe())
        except Exception:
            ok = False
        except BaseException:
            self.record(ep.name, tok, Outcome.IGNORE)
            raise
        self.record(ep.name, tok, Outcome.SUCCESS if ok else Outcome.FAILURE)
        return ok

    def _probe_instead(self, ep: _Endpoint, tok: int, priority: Priority,
                       timeout: float | None) -> int:
        """The admitted call got a probe permit and a health probe exists."""
        if self._run_probe(ep, tok) and self.breaker_state(ep.name) == BreakerState.CLOSED:
            return self._admit_slow(ep, None, priority, timeout)
        raise self._open_error(ep)

    def endpoints(self) -> list[str]:
        """Returns the names of every endpoint in the segment (all processes)."""
        seg, out = self.segment, []
        v = ffi.new("struct sg_slot_view *")
        for i in range(seg.refresh().capacity):
            if lib.sg_slot_snapshot(seg.base, seg.size, i, v) == 0 and v.kind == lib.SG_SLOT_READY:
                out.append(ffi.unpack(v.name, v.name_len).decode("ascii", "replace"))
        return sorted(out)

    def breaker(self, endpoint: str) -> Breaker:
        """Returns the breaker handle of ``endpoint`` (registering it if new)."""
        return self._endpoint(endpoint).breaker

    def limiter(self, endpoint: str) -> Limiter:
        """Returns the limiter handle of ``endpoint`` (registering it if new)."""
        return self._endpoint(endpoint).limiter

    # -- execution ------------------------------------------------------------------------
    def execute(self, endpoint: str, fn: Callable[..., T], /, *args: Any,
                priority: Priority = Priority.NORMAL, timeout: float | None = None,
                **kwargs: Any) -> T:
        """Runs ``fn(*args, **kwargs)`` if the endpoint admits it, and records the outcome.

        :param timeout: how long to wait for the rate limit (None: do not wait).
        :raises CircuitOpenError: the breaker is open.
        :raises RateLimitedError: no token within ``timeout``.
        :returns: what ``fn`` returns; its exceptions are re-raised.
        """
        ep = self._eps.get(endpoint) or self._endpoint(endpoint)
        cp = 5 if priority is _NORMAL else _CP[priority]
        if timeout is None and _hot_execute is not None and self.on_metrics_update is None:
            # admit, call and record in one C call (shmguard._hot)
            return _hot_execute(ep, ep.hp, cp, fn, args, kwargs or None)  # type: ignore[no-any-return]
        if timeout is None:
            tok = ep.admit(ep.h, cp)
            if tok < 0:
                tok = self._admit_slow(ep, tok, priority, None)
        else:
            tok = self._admit_slow(ep, None, priority, timeout)
        if tok & _LEASE and ep.probe is not None:
            tok = self._probe_instead(ep, tok, priority, timeout)
        try:
            result = fn(*args, **kwargs) if kwargs else fn(*args)
        except BaseException as exc:
            ep.record_exception(exc, tok)
            raise
        ep.record_success(tok)
        return result

    async def execute_async(self, endpoint: str, coro_fn: Callable[..., Awaitable[T]], /,
                            *args: Any, priority: Priority = Priority.NORMAL,
                            timeout: float | None = None, **kwargs: Any) -> T:
        """Awaits ``coro_fn(*args, **kwargs)`` if admitted, like :meth:`execute`.

        Waiting for the rate limit sleeps with ``asyncio.sleep`` (never blocks
        the loop); cancelling gives back the reservation and any probe permit,
        and a cancelled call counts as neither success nor failure.
        """
        from shmguard import aio
        return await aio.execute_async(self, endpoint, coro_fn, *args, priority=priority,
                                       timeout=timeout, **kwargs)

    def try_execute(self, endpoint: str, fn: Callable[..., T], /, *args: Any,
                    priority: Priority = Priority.NORMAL, timeout: float | None = None,
                    **kwargs: Any) -> Ok[T] | Err:
        """Like :meth:`execute`, but returns ``Ok(value)`` or ``Err(exception)``."""
        try:
            return Ok(self.execute(endpoint, fn, *args, priority=priority, timeout=timeout,
                                   **kwargs))
        except Exception as exc:
            return Err(exc)

    def admit(self, endpoint: str, priority: Priority = Priority.NORMAL,
              timeout: float | None = None) -> int:
        """Returns an admission token (breaker + limiter) or raises a rejection.

        The low-level half of :meth:`execute`; finish with :meth:`record`.
        """
        ep = self._eps.get(endpoint) or self._endpoint(endpoint)
        return self._admit_slow(ep, None, priority, timeout)

    def record(self, endpoint: str, token: int, outcome: Outcome) -> None:
        """Records the outcome of a call admitted by :meth:`admit`."""
        ep = self._eps[endpoint]
        t = ep.record(ep.h, token | int(outcome))
        if t or self.on_metrics_update is not None:
            self._after(ep, t, token)

    def _admit_slow(self, ep: _Endpoint, tok: int | None, priority: Priority,
                    timeout: float | None) -> int:
        """Admits (waiting up to ``timeout``) or raises the matching rejection."""
        cp = pack(1, priority)
        if tok is None:
            tok = self._admit_once(ep, cp, timeout)
        if tok == -lib.SG_R_PROBES_FULL and self._reclaim_probes(ep):
            tok = self._admit_once(ep, cp, timeout)  # a dead holder's permit came back
        if tok >= 0:
            return tok
        rc = -tok
        if rc in (lib.SG_R_OPEN, lib.SG_R_PROBES_FULL):
            raise self._open_error(ep)
        if rc == lib.SG_R_RATE_LIMITED:
            m = self._limiter_metrics(ep, priority)
            wait = 0.0 if m.tokens >= 1 or not m.effective_rate else (1 - m.tokens) / m.effective_rate
            raise RateLimitedError(ep.name, wait,
                                   f"endpoint {ep.name!r} is rate limited "
                                   f"({m.effective_rate:g}/s); retry after {wait:.3f}s")
        raise self._rc_error(ep, rc)

    def _admit_once(self, ep: _Endpoint, cp: int, timeout: float | None) -> int:
        if timeout is None:
            return int(ep.admit(ep.h, cp))
        d = ffi.new("struct sg_decision *")
        tok = int(lib.sg_admit_wait(ep.h, cp, wait_ns(timeout), d))
        if tok >= 0 and d.delay_ns > 0:
            try:
                time.sleep(d.delay_ns / NS)
            except BaseException:
                lib.sg_release_probe(ep.h, tok)
                lib.sg_limiter_cancel(ep.h, cp, d)
                raise
        return tok

    def _rc_error(self, ep: _Endpoint, rc: int) -> ShmguardError:
        if rc == lib.SG_E_COST:
            return PolicyError(f"cost exceeds burst {self._policy_view(ep).burst} of "
                               f"endpoint {ep.name!r}")
        try:
            _capi.check(rc, f"endpoint {ep.name!r}", self.name)
        except ShmguardError as exc:
            return exc
        return ShmguardError(f"endpoint {ep.name!r}: unexpected code {rc}")

    def _open_error(self, ep: _Endpoint) -> CircuitOpenError:
        wait = lib.sg_breaker_retry_after(ep.h) / NS
        return CircuitOpenError(ep.name, wait, f"circuit of endpoint {ep.name!r} is open; "
                                               f"retry after {wait:.3f}s")

    def _after(self, ep: _Endpoint, t: int, tok: int) -> None:
        """Fires callbacks for what sg_breaker_record reported (``t``)."""
        if t < 0:
            raise self._rc_error(ep, -t)  # a bad token: never decode it as a transition
        if t & lib.SG_T_ECHO_HALF_OPEN:
            self._transition(ep, lib.SG_T_TO_HALF_OPEN, False)
        t &= 7
        if t in (lib.SG_T_TO_OPEN, lib.SG_T_TO_HALF_OPEN, lib.SG_T_TO_CLOSED):
            self._transition(ep, t, bool((tok >> 34) & 0xF))
        elif self.on_metrics_update is not None and time.monotonic() >= ep.next_metrics:
            ep.next_metrics = time.monotonic() + self.metrics_interval
            st = self.stats(ep.name)
            self.on_metrics_update(ep.name, st.breaker_state, st)

    def _transition(self, ep: _Endpoint, t: int, was_probe: bool) -> None:
        new = {lib.SG_T_TO_OPEN: BreakerState.OPEN, lib.SG_T_TO_HALF_OPEN: BreakerState.HALF_OPEN,
               lib.SG_T_TO_CLOSED: BreakerState.CLOSED}.get(t)
        if new is None:
            return
        old = {BreakerState.OPEN: BreakerState.HALF_OPEN if was_probe else BreakerState.CLOSED,
               BreakerState.HALF_OPEN: BreakerState.OPEN,
               BreakerState.CLOSED: BreakerState.HALF_OPEN}[new]
        if self.on_state_change is not None:
            self.on_state_change(ep.name, old, new)
        if self.on_metrics_update is not None:
            ep.next_metrics = time.monotonic() + self.metrics_interval
            self.on_metrics_update(ep.name, new, self.stats(ep.name))

    def _acquire(self, ep: _Endpoint) -> int:
        """A breaker-only token; if every probe permit is out, first frees dead holders'."""
        tok = int(ep.acquire(ep.h))
        if tok == -lib.SG_R_PROBES_FULL and self._reclaim_probes(ep):
            tok = int(ep.acquire(ep.h))
        return tok

    def _reclaim_probes(self, ep: _Endpoint) -> int:
        """Frees half-open permits whose holder died; returns how many."""
        self.segment.base  # raises once closed
        now = time.monotonic()
        if now < ep.next_reclaim:
            return 0
        ep.next_reclaim = now + RECLAIM_EVERY
        snap = self._breaker_snapshot(ep)
        lease = self._policy_view(ep).probe_lease_ns / NS
        freed = 0
        for p in snap.probes:
            if not probes.holder_alive(p.pid, started_before=time.time() - (lease - p.lease_left)):
                freed += lib.sg_breaker_reclaim(ep.h.slot, p.index, p.word) == lib.SG_OK
        return freed

    def _force(self, ep: _Endpoint, state: int) -> None:
        before = self._breaker_snapshot(ep).state
        rc = lib.sg_breaker_force_at(ep.h.slot, self.now_ns(), state)
        if rc == lib.SG_E_ARG:
            raise self._rc_error(ep, rc)
        after = self._breaker_snapshot(ep).state
        if after != before and self.on_state_change is not None:
            self.on_state_change(ep.name, before, after)

    # -- state and statistics --------------------------------------------------------------
    def _policy_view(self, ep: _Endpoint) -> Any:
        self.segment.base  # raises once closed: never touch an unmapped slot
        v = ffi.new("struct sg_policy_view *")
        lib.sg_policy_read(ep.h, v)
        return v

    def _breaker_snapshot(self, ep: _Endpoint) -> BreakerSnapshot:
        v = ffi.new("struct sg_breaker_view *")
        _capi.check(lib.sg_breaker_snapshot_at(ep.h.slot, self.now_ns(), v), "breaker", self.name)
        state, mode = _STATE[v.state]
        pr = tuple(Probe(v.probe_pid[i], v.probe_lease_left_ns[i] / NS, i, v.probe_word[i])
                   for i in range(lib.SG_MAX_PROBES) if v.probe_pid[i])
        return BreakerSnapshot(state, mode, v.generation, v.state_age_ns / NS,
                               v.open_remaining_ns / NS, v.calls, v.failures, v.slow,
                               v.threshold_ppm / 1e6, v.baseline_ppm / 1e6,
                               v.half_open_successes, pr, v.opens, v.successes_total,
                               v.failures_total, v.ignored_total, v.rejected_total)

    def _limiter_metrics(self, ep: _Endpoint, priority: Priority = Priority.HIGH) -> LimiterMetrics:
        v = ffi.new("struct sg_limiter_view *")
        _capi.check(lib.sg_limiter_snapshot_at(ep.h.slot, self.now_ns(), int(priority), v),
                    "limiter", self.name)
        by = {str(p): {"accepted": v.accepted[p], "rejected": v.rejected[p], "waited": v.waited[p]}
              for p in Priority}
        return LimiterMetrics(sum(v.accepted), sum(v.rejected), sum(v.waited), by,
                              v.win_accepted, v.win_rejected, v.win_ns / NS, v.tokens,
                              v.effective_rate, v.scale_ppm / 1e6)

    def breaker_state(self, endpoint: str) -> BreakerState:
        """Reports the endpoint's breaker state (host-wide)."""
        return self._breaker_snapshot(self._endpoint(endpoint)).state

    def stats(self, endpoint: str) -> EndpointStats:
        """Returns the endpoint's statistics, read from the segment."""
        ep = self._endpoint(endpoint)
        b = self._breaker_snapshot(ep)
        pv = self._policy_view(ep)
        rate = None if pv.flags & lib.SG_POL_NO_LIMIT else NS / pv.emission_ns
        return EndpointStats(ep.name, b.state, b.failure_rate, self._limiter_metrics(ep), b,
                             rate, pv.burst)

    def all_stats(self) -> list[EndpointStats]:
        """Returns statistics for every endpoint in the segment."""
        return [self.stats(n) for n in self.endpoints()]

    def adjust_rate(self, endpoint: str, health: float) -> None:
        """Scales the endpoint's rate by a health score in [0, 1] (drops at once, recovers gradually)."""
        if isinstance(health, bool) or not isinstance(health, (int, float)) or not 0 <= health <= 1:
            raise PolicyError(f"health must be in [0, 1], got {health!r}")
        ep = self._endpoint(endpoint)
        _capi.check(lib.sg_limiter_scale_at(ep.h.slot, self.now_ns(), round(health * 1e6)),
                    "adjust_rate", self.name)

    # -- sugar -----------------------------------------------------------------------------------
    def protect(self, endpoint: str, *, priority: Priority = Priority.NORMAL,
                timeout: float | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: every call of the function goes through :meth:`execute`."""
        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            import inspect
            if inspect.iscoroutinefunction(fn):
                from shmguard import aio
                return aio.protect_async(self, endpoint, fn, priority, timeout)  # type: ignore[return-value]

            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> T:
                return self.execute(endpoint, fn, *args, priority=priority, timeout=timeout,
                                    **kwargs)
            return wrapper
        return deco

    def guard(self, endpoint: str, *, priority: Priority = Priority.NORMAL,
              timeout: float | None = None) -> Any:
        """Context manager: admits on entry, records the block's outcome on exit."""
        return _Guard(self, endpoint, priority, timeout)


_LIVE: weakref.WeakSet[ResilienceService] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A parent thread may have held a service's lock at fork: the child's
    # copy would stay locked forever. The mapping itself is inherited as is.
    for svc in list(_LIVE):
        svc._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _reattach(name: str, policy: Policy, allow_foreign: bool) -> ResilienceService:
    return ResilienceService(name, policy=policy, create=False, allow_foreign=allow_foreign)


class _Guard:
    __slots__ = ("svc", "endpoint", "priority", "timeout", "tok")

    def __init__(self, svc: ResilienceService, endpoint: str, priority: Priority,
                 timeout: float | None) -> None:
        self.svc, self.endpoint, self.priority, self.timeout = svc, endpoint, priority, timeout
        self.tok = -1

    def __enter__(self) -> _Guard:
        self.tok = self.svc.admit(self.endpoint, self.priority, self.timeout)
        return self

    def __exit__(self, et: Any, exc: Any, tb: Any) -> None:
        ep = self.svc._eps[self.endpoint]
        if exc is None:
            outcome = Outcome.SUCCESS
        elif isinstance(exc, Exception):
            outcome = ep.policy.classify(exc)
        else:
            outcome = Outcome.IGNORE
        self.svc.record(self.endpoint, self.tok, outcome)

    async def __aenter__(self) -> _Guard:
        from shmguard import aio
        self.tok = await aio.admit_async(self.svc, self.endpoint, self.priority, self.timeout)
        return self

    async def __aexit__(self, et: Any, exc: Any, tb: Any) -> None:
        self.__exit__(et, exc, tb)
