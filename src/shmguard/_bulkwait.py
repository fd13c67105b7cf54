"""asyncio waits for a bulkhead ticket: woken by a release, never polling, never blocking the loop.

One watcher thread per endpoint and process sleeps on the slot's futex word
for every asyncio task of the process waiting for that endpoint's tickets
(csrc/bulkhead_wait.c, ``sg_bulkhead_park_*``). Waiting tasks queue in
arrival order; the watcher lets the first one try again when a release
moves the word (wake one: a release wakes one sleeper, and the watcher one
task), and once when a task joins the queue (a release that came between
the task's failed try and the watcher's sleep is not lost). A turn is
always given after the watcher counted itself a sleeper, so a release after
the task's try always moves the word. Every slice (50 ms) without a release
it looks for tickets of dead holders and gives a turn only if it freed one:
a wait with every holder alive costs no try at all.

The task itself takes the ticket, on its own loop, so a cancelled task can
never be handed a ticket; a task that was let try but was cancelled or
timed out first passes its turn to the next one.
"""
from __future__ import annotations

import asyncio
import collections
import os
import threading
from typing import TYPE_CHECKING, Any

from shmguard._capi import ffi, lib

if TYPE_CHECKING:
    from shmguard._endpoint import Endpoint

__all__ = ["wait_turn", "tries"]

SLICE_NS = 50_000_000
_watchers: dict[int, _Watcher] = {}
_lock = threading.Lock()
#: tries that asyncio waiters made after their first, per process (tests read it)
tries = 0


class _Watcher:
    """The sleeping thread of one endpoint in this process, and the tasks queued on it."""

    def __init__(self, ep: Endpoint) -> None:
        self.ep = ep
        self.queue: collections.deque[asyncio.Future[None]] = collections.deque()
        self.fresh = False  # a task joined since the last sleep began
        self.stopping = False  # the service is closing: leave the slot alone
        self.thread: threading.Thread | None = None

    @staticmethod
    def join(ep: Endpoint, fut: asyncio.Future[None], first: bool) -> _Watcher:
        """Queues a waiting task of ``ep`` (at the head when it keeps its place) on the
        endpoint's watcher, made and started if it has none. Finding the watcher and
        queueing are one step under the lock, as its thread's exit (empty queue) is:
        a task never joins a watcher that has just left."""
        with _lock:
            w = _watchers.get(id(ep))
            if w is None:
                w = _watchers[id(ep)] = _Watcher(ep)
            (w.queue.appendleft if first else w.queue.append)(fut)
            w.fresh = w.fresh or not first  # a newcomer tried before it queued
            if w.thread is None:
                w.thread = threading.Thread(target=w._run, daemon=True,
                                            name=f"shmguard-bulkhead-{ep.name}")
                w.thread.start()
            return w

    def leave(self, fut: asyncio.Future[None]) -> None:
        with _lock:
            try:
                self.queue.remove(fut)
            except ValueError:
                pass

    def next_turn(self) -> None:
        """Lets the first queued task that is still waiting try again."""
        with _lock:
            while self.queue:
                fut = self.queue.popleft()
                if fut.done():
                    continue
                try:
                    fut.get_loop().call_soon_threadsafe(self._let_try, fut)
                    return
                except RuntimeError:  # its loop is closed: the task is gone
                    continue

    def _let_try(self, fut: asyncio.Future[None]) -> None:
        """On the task's loop: its turn, or (cancelled or timed out meanwhile) the next one's."""
        if fut.done():
            self.next_turn()
        else:
            fut.set_result(None)

    def _run(self) -> None:
        from shmguard import _tickets
        seq = ffi.new("uint32_t *")
        h = self.ep.h
        pending = False  # a release (or a reclaim) since the last turn was given
        while True:
            with _lock:
                if not self.queue or self.stopping:
                    self.thread = None
                    _watchers.pop(id(self.ep), None)
                    return
                fresh, self.fresh = self.fresh, False
            # counted a sleeper BEFORE the task tries: a release after that try moves
            # the word and ends the sleep below (csrc/bulkhead_wait.c)
            if lib.sg_bulkhead_park_begin(h, seq) != lib.SG_OK:
                self._drop_all()
                return
            if fresh or pending:
                self.next_turn()
            moved = lib.sg_bulkhead_park_wait(h, seq[0], SLICE_NS)
            if moved < 0:
                self._drop_all()
                return
            pending = bool(moved) or _tickets.reclaim(self.ep) > 0

    def _drop_all(self) -> None:
        """The service was closed: every task tries once more (and gets its error)."""
        with _lock:
            queue, self.queue = list(self.queue), collections.deque()
            self.thread = None
            _watchers.pop(id(self.ep), None)
        for fut in queue:
            try:
                fut.get_loop().call_soon_threadsafe(_wake, fut)
            except RuntimeError:
                pass


def stop(ep: Endpoint) -> None:
    """Before ``ep``'s slot is unmapped: ends its watcher (at most one slice, 50 ms) and
    lets its tasks try once more (they get the closed service's error)."""
    with _lock:
        w = _watchers.get(id(ep))
        if w is None:
            return
        w.stopping = True
        thread = w.thread
    if thread is not None and thread is not threading.current_thread():
        thread.join(2 * SLICE_NS / 1e9)
    w._drop_all()


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def wait_turn(ep: Endpoint, left: float, first: bool) -> None:
    """Waits (up to ``left`` seconds) until the task may try for a ticket again.

    ``first``: the task was let try before and keeps its place at the head.
    """
    global tries
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    w = _Watcher.join(ep, fut, first)
    try:
        await asyncio.wait_for(fut, left)
    except asyncio.TimeoutError:
        pass
    except BaseException:
        if fut.done() and not fut.cancelled():
            w.next_turn()  # it was let try but will not: the next one may
        raise
    finally:
        w.leave(fut)
    tries += 1


def _after_fork_in_child() -> None:
    # the watcher threads did not survive the fork; their tasks belong to the parent
    global _lock
    _lock = threading.Lock()
    _watchers.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
