"""The host's fleet agent: a daemon thread in every process of the service.

One of them at a time holds the agent lease in the segment header (fleet.c:
pid, epoch, deadline); it syncs every fleet endpoint with Redis each
``refresh``. The others try to take the lease each ``refresh``: when the
holder dies or stalls past its deadline (half the grant lease), one of
them takes over, before the host's grant in Redis runs out. Workers never
talk to Redis: they decide in the segment as always.
"""
from __future__ import annotations

import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import psutil

from shmguard._capi import ffi, lib
from shmguard.fleet.config import RedisFleet
from shmguard.fleet.breakers import BreakerSync
from shmguard.fleet.sync import EndpointSync, start_share
from shmguard.fleet.view import fleet_endpoints

if TYPE_CHECKING:
    from shmguard.fleet.coordinator import Coordinator
    from shmguard.segment import Segment

__all__ = ["Agent"]

NS = 1_000_000_000
T = TypeVar("T")


class _Stopped(Exception):
    """The service closed while a Redis call was out: the segment may be unmapped."""


class Agent:
    """The fleet agent of one service (one process); thread safe to start and stop."""

    def __init__(self, seg_of: Any, cfg: RedisFleet, host_id: str) -> None:
        self._seg_of = seg_of  # a callable returning the service's segment (lazy services)
        self.cfg = cfg
        self.host_id = host_id
        self.word = 0
        self.last_error = ""
        self.syncs = 0
        self._coord: Coordinator | None = None
        self._eps: dict[int, EndpointSync] = {}
        self._brk: dict[int, BreakerSync] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_s = int(psutil.Process().create_time())
        self._lock = threading.Lock()
        # held while the thread touches the segment, released around Redis calls
        # (remote): close() takes it before unmapping, so no access outlives the mapping
        self._mapped = threading.Lock()
        self._pid = os.getpid()
        _AGENTS.add(self)

    @property
    def seg(self) -> Segment:
        seg: Segment = self._seg_of()
        return seg

    def coordinator(self) -> Coordinator:
        if self._coord is None:
            from shmguard.fleet.coordinator import Coordinator
            self._coord = Coordinator(self.cfg)
        return self._coord

    def start(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive() and self._thread.ident and \
                    self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._stop.clear()
            self._coord = None  # a fork child needs its own connection
            self._thread = threading.Thread(target=self._run, name="shmguard-fleet-agent",
                                            daemon=True)
            self._thread.start()

    def attach(self, slot: Any, rate: bool) -> None:
        """A fleet endpoint was registered here: a fleet rate is ~0 until its first grant; sync soon."""
        if rate:
            start_share(slot, self.seg.now_ns())
        self.start()
        self._wake.set()

    def stop(self) -> None:
        """Stops the thread and frees the lease at once (a successor need not wait)."""
        self._stop.set()
        self._wake.set()
        with self._mapped:  # the thread is out of the segment, and stays out
            if self.word and not self.seg.closed:
                lib.sg_fleet_release(self.seg.base, self.seg.size, self.word)
            self.word = 0
        t = self._thread
        if t is not None and t is not threading.current_thread() and self._pid == os.getpid():
            t.join(timeout=self.cfg.timeout or max(1.0, 2 * self.cfg.refresh))
        if self._coord is not None:
            self._coord.close()

    def epoch(self) -> int:
        return (self.word >> 32) & 0x3FF

    def holds(self) -> bool:
        v = ffi.new("struct sg_fleet_agent_view *")
        lib.sg_fleet_agent_at(self.seg.base, self.seg.size, self.seg.now_ns(), v)
        return bool(v.live) and v.word == self.word

    def _lease(self) -> bool:
        """Renews or takes the agent lease; reports whether this process holds it."""
        seg = self.seg
        w = ffi.new("uint64_t *", self.word)
        rc = lib.sg_fleet_lease_at(seg.base, seg.size, seg.now_ns(), os.getpid() & 0x3FFFFF,
                                   self._start_s, int(self.cfg.lease * NS / 2), w)
        if rc == lib.SG_OK:
            if w[0] >> 32 != self.word >> 32:
                self._eps.clear()  # a new term (pid, epoch): measure demand afresh
                self._brk.clear()
            self.word = w[0]
            return True
        self.word = 0
        return False

    def remote(self, call: Callable[..., T], *args: Any) -> T:
        """Runs a Redis call without holding the segment; raises _Stopped if closed meanwhile."""
        self._mapped.release()
        try:
            return call(*args)
        finally:
            self._mapped.acquire()
            if self._stop.is_set():
                raise _Stopped()

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                with self._mapped:
                    if self._stop.is_set():
                        break
                    if not self.seg.closed and self._lease():
                        self.tick()
            except _Stopped:
                break
            except Exception as exc:  # the agent must outlive any one bad sync
                self.last_error = f"{type(exc).__name__}: {exc}"
            left = self.cfg.refresh - (time.monotonic() - began)
            self._wake.wait(max(0.0, left))
            self._wake.clear()

    def tick(self) -> None:
        """Syncs every fleet endpoint of the segment once (the lease holder only)."""
        for idx, name, h, pv in self._fleet_endpoints():
            if pv.flags & lib.SG_POL_FLEET_RATE and not pv.flags & lib.SG_POL_NO_LIMIT \
                    and pv.emission_ns > 0:
                ep = self._eps.get(idx)
                if ep is None or ep.name != name:
                    ep = self._eps[idx] = EndpointSync(name, idx, h)
                ep.sync(self, NS / pv.emission_ns)
            if pv.flags & lib.SG_POL_FLEET_BREAKER:
                br = self._brk.get(idx)
                if br is None or br.name != name:
                    br = self._brk[idx] = BreakerSync(name, h)
                br.sync(self, pv)
            # renewed between endpoints: a live holder whose Redis calls are slow keeps it
            # (and reaches every endpoint); a stopped one's lease still runs out
            if self._stop.is_set() or not self._lease():
                return
        self.syncs += 1

    def _fleet_endpoints(self) -> list[tuple[int, str, Any, Any]]:
        known = {i: b.h for i, b in self._brk.items()} | {i: e.h for i, e in self._eps.items()}
        out = fleet_endpoints(self.seg, known)
        for i, _, h, _ in out:
            if known.get(i) is not h:  # a new endpoint in the slot: its sync starts afresh
                self._eps.pop(i, None)
                self._brk.pop(i, None)
        return out


_AGENTS: weakref.WeakSet[Agent] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # the parent's agent thread may have held a lock at fork; the child has no
    # agent thread and does not hold the parent's lease
    for a in list(_AGENTS):
        a._lock, a._mapped = threading.Lock(), threading.Lock()
        a._thread, a.word, a._coord = None, 0, None
        a._eps.clear()
        a._brk.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
