"""KeyedLimiter: a host-wide GCRA rate limit per key (per tenant, user, token, address).

Every key gets its own bucket of ``burst`` tokens refilled at ``rate`` per
second, shared by every process of the host: 8 workers together admit at
most ``burst + rate x elapsed`` requests of one key (at the priority's share
of the burst, as for endpoints). Keys are ``str`` or ``bytes`` of any
length; only a keyed hash of them is stored (SipHash-2-4 under the table's
random key), in an entry of 16 bytes.

Memory is bounded by ``capacity``: the table holds ``2 x capacity`` entries
of 16 bytes (32 bytes per key of capacity). A key whose bucket is full again
needs no entry, so its entry is reused at once: the table serves any number
of keys over time as long as the keys *not* at a full bucket fit. When a new
key finds no free entry in its probe window, ``on_full`` decides: "reject"
(the key is refused, counted in ``full_rejections``) or "allow" (admitted
without a limit, counted in ``full_allowed``); known keys are unaffected.

Changing the rate or burst (``svc.keyed_limiter(name, rate, burst,
replace=True)``, ``shmguard set-rate --keyed``) keeps each key's debt in
tokens: TATs are virtual time (csrc/keyed_rate.c).

Thread safe and process safe; no lock. Verbs as :class:`~shmguard.Limiter`:

>>> kl = svc.keyed_limiter("api", rate=10, burst=20)       # doctest: +SKIP
>>> kl.allow("tenant-42")                                  # doctest: +SKIP
True
"""
from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass
from typing import Any, Union

from shmguard import _capi
from shmguard._capi import ffi, lib
from shmguard._keyed_shm import KeyedTable
from shmguard.errors import PolicyError, ShmguardError
from shmguard.limiter import FOREVER_NS, pack, wait_ns
from shmguard.policy import Priority


__all__ = ["KeyedLimiter", "KeyedStats", "HotKey", "KeyedReservation", "Key"]

Key = Union[str, bytes]
NS = 1_000_000_000
_NORMAL = Priority.NORMAL
_ONE = 1
_LIMITED = lib.SG_R_RATE_LIMITED
_FULL = lib.SG_R_KL_FULL


def key_bytes(key: object) -> bytes:
    """Returns the bytes a key is hashed from (UTF-8 for str)."""
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, bytes):
        return key
    raise TypeError(f"key must be str or bytes, got {type(key).__name__} {key!r:.40}")


def allow(t: KeyedTable, key: Key, cost: int = 1, priority: Priority = _NORMAL) -> bool:
    """Reports whether ``cost`` tokens of ``key`` were free now (and takes them).

    :meth:`KeyedLimiter.allow`; called with a key only, it runs in C
    (csrc/hot_keyed.c), which hands every other case to this function.
    """
    raw = key_bytes(key)
    cp = 5 if cost is _ONE and priority is _NORMAL else pack(cost, priority)
    if t.closed:
        raise ShmguardError(f"{t.what} is closed in this process")
    rc = lib.sg_kl_allow(t.kh, raw, len(raw), cp)
    if rc == 0:
        return True
    if rc == _LIMITED or rc == _FULL:
        return False
    raise _error(t, rc, "allow", cost, priority)


def _error(t: KeyedTable, rc: int, verb: str, cost: int, priority: Priority) -> ShmguardError:
    if t.closed:
        return ShmguardError(f"{t.what} is closed in this process")
    if rc == lib.SG_E_COST:
        return PolicyError(f"{verb}(cost={cost}) exceeds burst {t.refresh().burst} of {t.what} at "
                           f"priority {Priority(priority)}")
    if rc == lib.SG_E_BUSY:
        return ShmguardError(f"{t.what}: the key's entry stayed contended")
    return ShmguardError(f"{t.what}: {verb} failed with code {rc}")


@dataclass(frozen=True)
class HotKey:
    """One of the keys furthest from a full bucket (keys themselves are never stored)."""

    fingerprint: str   # 62 bits of the key's SipHash, hex
    tokens: float      # free now, at full-burst priority
    refill: float      # seconds until its bucket is full again
    index: int         # entry index


@dataclass(frozen=True)
class KeyedStats:
    """Counters and occupancy of a keyed limiter (host-wide)."""

    name: str
    rate: float
    burst: int
    capacity: int
    entries: int
    memory_bytes: int
    on_full: str
    live_keys: int         # keys not at a full bucket now (entries in use)
    used_entries: int      # entries ever used (the rest were never touched)
    accepted: int
    rejected: int
    waited: int
    inserted: int          # keys given an entry
    evicted: int           # ... in an entry another key had left (TAT <= now)
    full_rejections: int   # new keys refused: no free entry (on_full="reject")
    full_allowed: int      # new keys admitted unlimited: no free entry (on_full="allow")
    folded: int            # duplicate entries of one key merged (concurrent inserts)
    rate_changes: int      # rate or burst changed since creation (replace=True)
    hot: tuple[HotKey, ...] = ()

    def acceptance_rate(self) -> float:
        done = self.accepted + self.rejected + self.full_rejections
        return self.accepted / done if done else 1.0


class KeyedReservation:
    """A place in one key's schedule; ``ok`` and ``delay`` as :class:`~shmguard.Reservation`."""

    __slots__ = ("ok", "delay", "_kl", "_key", "_cp", "_d", "_cancelled")

    def __init__(self, kl: KeyedLimiter, key: bytes, ok: bool, cp: int, d: Any) -> None:
        self.ok = ok
        self.delay = max(0, d.delay_ns) / NS
        self._kl, self._key, self._cp, self._d = kl, key, cp, d
        self._cancelled = not ok

    def cancel(self) -> None:
        """Gives the reserved tokens back if the reservation has not come due."""
        kl = self._kl
        if self._cancelled or kl.closed:
            return
        self._cancelled = True
        lib.sg_kl_cancel_at(kl._t.kh, kl.now_ns(), self._key, len(self._key), self._cp, self._d)

    def __repr__(self) -> str:
        return f"<KeyedReservation ok={self.ok} delay={self.delay:.6f}s>"


class KeyedLimiter:
    """A rate limit per key, shared by every process of the host (see the module docstring).

    Made by :meth:`ResilienceService.keyed_limiter`; not constructed directly.
    ``allow(key, cost=1, priority=Priority.NORMAL) -> bool`` reports whether
    ``cost`` tokens of ``key`` were free now (and takes them); with a key
    only, it is one C call (see :func:`allow`).
    """

    __slots__ = ("name", "_t", "allow", "__weakref__")

    def __init__(self, table: KeyedTable) -> None:
        self.name = table.name
        self._t = table
        hot = _capi.hot
        self.allow: Any = (hot.bind_kl_allow(int(ffi.cast("uintptr_t", table.kh)), table, allow)
                           if hot is not None else functools.partial(allow, table))

    # -- decisions -------------------------------------------------------------------

    def reserve(self, key: Key, cost: int = 1, priority: Priority = _NORMAL,
                max_wait: float | None = None) -> KeyedReservation:
        """Returns a reservation for ``key``; granted if it comes due within ``max_wait``."""
        return self._reserve("reserve", key, cost, priority, wait_ns(max_wait))

    def _reserve(self, verb: str, key: Key, cost: int, priority: Priority,
                 max_wait_ns: int) -> KeyedReservation:
        raw, cp = key_bytes(key), pack(cost, priority)
        d = ffi.new("struct sg_decision *")
        rc = lib.sg_kl_reserve(self._kh(), raw, len(raw), cp, max_wait_ns, d)
        if rc not in (0, _LIMITED, _FULL):
            raise self._error(rc, verb, cost, priority)
        return KeyedReservation(self, raw, rc == 0, cp, d)

    def wait(self, key: Key, cost: int = 1, timeout: float | None = None,
             priority: Priority = _NORMAL) -> bool:
        """Reports whether ``cost`` tokens of ``key`` were obtained within ``timeout``.

        Sleeps exactly the computed delay; an interrupted sleep gives the reservation back.
        """
        r = self._reserve("wait", key, cost, priority, wait_ns(timeout))
        if r.ok and r.delay > 0:
            try:
                time.sleep(r.delay)
            except BaseException:
                r.cancel()
                raise
        return r.ok

    async def wait_async(self, key: Key, cost: int = 1, timeout: float | None = None,
                         priority: Priority = _NORMAL) -> bool:
        """Like :meth:`wait`, sleeping with ``asyncio.sleep``; cancelling gives the tokens back."""
        r = self._reserve("wait", key, cost, priority, wait_ns(timeout))
        if r.ok and r.delay > 0:
            try:
                await asyncio.sleep(r.delay)
            except BaseException:
                r.cancel()
                raise
        return r.ok

    # -- reads -----------------------------------------------------------------------------
    def _peek(self, key: Key, cost: int, priority: Priority) -> tuple[float, int]:
        raw = key_bytes(key)
        tokens, delay = ffi.new("double *"), ffi.new("int64_t *")
        rc = lib.sg_kl_peek_at(self._kh(), self.now_ns(), raw, len(raw), pack(cost, priority),
                               tokens, delay)
        if rc != 0:
            raise self._error(rc, "peek", cost, priority)
        return float(tokens[0]), int(delay[0])

    def tokens(self, key: Key, priority: Priority = Priority.HIGH) -> float:
        """Reports how many tokens of ``key`` ``priority`` could take now."""
        return self._peek(key, 1, priority)[0]

    def retry_after(self, key: Key, cost: int = 1, priority: Priority = _NORMAL) -> float:
        """Reports the seconds until ``cost`` tokens of ``key`` conform (0: now)."""
        delay = self._peek(key, cost, priority)[1]
        return FOREVER_NS / NS if delay >= FOREVER_NS else delay / NS

    def stats(self, top: int = 0) -> KeyedStats:
        """Returns the limiter's counters and occupancy, with the ``top`` hottest keys.

        Counts live keys by scanning the table in C (a few ms per million entries).
        """
        from shmguard._keyed_stats import read_stats
        return read_stats(self._t, self.now_ns(), top)

    # -- plumbing --------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._t.closed

    def now_ns(self) -> int:
        return self._t.segment.now_ns()

    def _kh(self) -> Any:
        if self._t.closed:
            raise ShmguardError(f"{self._t.what} is closed in this process")
        return self._t.kh

    def close(self) -> None:
        """Unmaps the table in this process; later calls raise :class:`ShmguardError`."""
        self._t.close()

    def _error(self, rc: int, verb: str, cost: int, priority: Priority) -> ShmguardError:
        return _error(self._t, rc, verb, cost, priority)

    def __repr__(self) -> str:
        return f"<KeyedLimiter {self.name!r} of segment {self._t.segment.name!r}>"
