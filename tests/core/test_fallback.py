"""Fallback chains: the next endpoint serves when one is rejected or fails."""
from __future__ import annotations

import asyncio

import pytest

import shmguard as sg


def primary(key: str) -> str:
    return f"primary:{key}"


def replica(key: str) -> str:
    return f"replica:{key}"


def down(key: str) -> str:
    raise ConnectionError(f"down:{key}")


@pytest.fixture
def eps(svc):
    for name in ("primary", "replica"):
        svc.register_endpoint(name, sg.Policy(failure_exceptions=(ConnectionError,)))
    return svc


def test_primary_open_replica_serves(eps):
    eps.breaker("primary").force_open()
    chain = eps.fallback_chain([("primary", primary), ("replica", replica)], name="users")
    assert chain("k") == "replica:k"
    assert chain.stats() == {"primary": 0, "replica": 1, "last": 0, "failed": 0}
    assert eps.stats("primary").breaker.rejected == 1 and eps.stats("replica").attempts == 1
    assert "users" in repr(chain) and "primary -> replica" in repr(chain)


def test_primary_serves_when_healthy(eps):
    chain = eps.fallback_chain([("primary", primary), ("replica", replica)])
    assert [chain("a"), chain("b")] == ["primary:a", "primary:b"]
    assert chain.stats()["primary"] == 2 and eps.stats("replica").attempts == 0


def test_all_open_last_serves_with_the_chained_errors(eps):
    eps.breaker("primary").force_open()
    got: list[BaseException] = []

    def last(exc: Exception) -> str:
        got.append(exc)
        return "cached"
    chain = eps.fallback_chain([("primary", primary), ("replica", down)], last=last)
    assert chain("k") == "cached"
    assert isinstance(got[0], ConnectionError)               # the replica's failure...
    assert isinstance(got[0].__cause__, sg.CircuitOpenError)  # ...caused by the open primary
    assert chain.stats() == {"primary": 0, "replica": 0, "last": 1, "failed": 0}
    assert eps.stats("replica").breaker.failures == 1


def test_without_last_the_final_error_is_raised_with_its_causes(eps):
    eps.breaker("replica").force_open()
    chain = eps.fallback_chain([("primary", down), ("replica", replica)])
    with pytest.raises(sg.CircuitOpenError) as ei:
        chain("k")
    assert isinstance(ei.value.__cause__, ConnectionError)
    assert chain.stats()["failed"] == 1


def test_a_non_failure_is_raised_at_once(eps):
    def bad(key: str) -> str:
        raise KeyError(key)                    # a success by the policy: the caller erred
    chain = eps.fallback_chain([("primary", bad), ("replica", replica)], last=lambda e: "x")
    with pytest.raises(KeyError):
        chain("k")
    assert eps.stats("replica").attempts == 0


def test_expired_deadline_goes_straight_to_last(eps):
    chain = eps.fallback_chain([("primary", primary), ("replica", replica)],
                               last=lambda exc: type(exc).__name__)
    with sg.deadline(0):
        assert chain("k") == "DeadlineExceededError"
    assert eps.stats("primary").attempts == eps.stats("replica").attempts == 0


def test_execute_fallback_is_the_one_step_form(eps):
    eps.breaker("primary").force_open()
    assert eps.execute("primary", primary, "k", fallback=lambda exc: "fb") == "fb"
    assert eps.execute("replica", down, "k", fallback=lambda exc: str(exc)) == "down:k"
    assert eps.execute("replica", replica, "k", fallback=lambda exc: "fb") == "replica:k"
    with pytest.raises(KeyError):
        eps.execute("replica", lambda: {}["x"], fallback=lambda exc: "fb")


async def primary_async(key: str) -> str:
    return f"primary:{key}"


async def replica_async(key: str) -> str:
    await asyncio.sleep(0)
    return f"replica:{key}"


async def down_async(key: str) -> str:
    raise ConnectionError(key)


def test_async_chain(eps):
    eps.breaker("primary").force_open()
    chain = eps.fallback_chain([("primary", primary_async), ("replica", replica_async)])
    assert isinstance(chain, sg.AsyncFallbackChain)
    assert asyncio.run(chain("k")) == "replica:k"

    async def last(exc: Exception) -> str:
        return f"cached after {type(exc).__name__}"
    chain2 = eps.fallback_chain([("primary", primary_async), ("replica", down_async)], last=last)
    assert asyncio.run(chain2("k")) == "cached after ConnectionError"
    assert chain2.stats()["last"] == 1
    assert asyncio.run(eps.execute_async("primary", primary_async, "k",
                                         fallback=lambda exc: "fb")) == "fb"


@pytest.mark.parametrize("steps", [[], [("primary",)], [("primary", 3)], [("", primary)],
                                   [("primary", primary), ("replica", replica_async)]])
def test_bad_chains_are_refused(eps, steps):
    with pytest.raises(sg.ShmguardError):
        eps.fallback_chain(steps)
