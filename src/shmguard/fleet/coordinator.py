"""The Redis side of the fleet tier: one Lua script call per endpoint and sync.

Everything read back from Redis is untrusted: a reply that is not exactly
the script's shape, or a grant outside [0, fleet rate], raises
:class:`FleetError` naming the value; the agent then counts an error and
keeps its grant to its end, then takes the safe share.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from typing import Any

from shmguard.errors import ShmguardError
from shmguard.fleet.config import RedisFleet

__all__ = ["Coordinator", "FleetError", "Grant", "Episode", "parse_grant", "parse_episode"]


class FleetError(ShmguardError):
    """Redis was unreachable, refused the request, or answered something malformed."""


@dataclass(frozen=True)
class Grant:
    rate: float          # requests/s granted to this host
    remaining: float     # seconds the grant lasts from when it was asked for
    hosts: int           # live hosts in the fleet, this one included
    grace: bool          # Redis lost its state: shares are being rebuilt


@dataclass(frozen=True)
class Episode:
    born: int            # ms (Redis time) the breaker record was made: a restart makes a new one
    seq: int             # episode number: +1 per fleet-wide open and per close
    open: bool           # an open episode is running
    remaining: float     # seconds it stays open
    origin: str          # host that opened or closed it


def _int(v: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(v, bytes):
        v = v.decode("ascii", "replace")
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise FleetError(f"fleet reply: {what} must be an integer, got {v!r}")
    try:
        n = int(v)
    except ValueError:
        raise FleetError(f"fleet reply: {what} must be an integer, got {v!r}") from None
    if not lo <= n <= hi:
        raise FleetError(f"fleet reply: {what} must be in [{lo}, {hi}], got {n}")
    return n


def parse_grant(reply: Any, rate: float, lease_ms: int) -> Grant:
    """Returns the script's reply as a :class:`Grant`; raises :class:`FleetError` if malformed."""
    if not isinstance(reply, (list, tuple)) or len(reply) != 4:
        raise FleetError(f"fleet reply must be a list of 4 values, got {reply!r:.200}")
    raw = reply[0].decode("ascii", "replace") if isinstance(reply[0], bytes) else reply[0]
    try:
        g = float(raw)
    except (TypeError, ValueError):
        raise FleetError(f"fleet reply: grant must be a number, got {raw!r:.80}") from None
    if not math.isfinite(g) or not 0 <= g <= rate * (1 + 1e-9):
        raise FleetError(f"fleet reply: grant {g!r} is outside [0, {rate:g}] (the fleet rate)")
    left = _int(reply[1], "lease", 1, lease_ms)
    hosts = _int(reply[2], "hosts", 1, 1_000_000)
    grace = _int(reply[3], "grace", 0, 1)
    return Grant(min(g, rate), left / 1000, hosts, bool(grace))


def parse_episode(reply: Any) -> Episode:
    """Returns the breaker script's reply as an :class:`Episode`; raises :class:`FleetError`."""
    if not isinstance(reply, (list, tuple)) or len(reply) != 5:
        raise FleetError(f"fleet breaker reply must be a list of 5 values, got {reply!r:.200}")
    origin = reply[4]
    if not isinstance(origin, bytes) or len(origin) > 128:
        raise FleetError(f"fleet breaker reply: origin must be a host id, got {origin!r:.80}")
    return Episode(_int(reply[0], "born", 0, 2**53), _int(reply[1], "seq", 0, 2**53),
                   bool(_int(reply[2], "state", 0, 1)),
                   _int(reply[3], "remaining", 0, 86_400_000) / 1000,
                   origin.decode("utf-8", "replace"))


# the probe lease: taken if free, extended by its holder (atomic: never another's)
_GATE = """if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
return 0"""


class Coordinator:
    """A Redis client and the share script (one per agent; not thread safe)."""

    def __init__(self, cfg: RedisFleet) -> None:
        import redis  # only here: the core never imports redis without fleet=
        self.cfg = cfg
        timeout = cfg.timeout or max(cfg.refresh, 0.05)
        self.client = redis.Redis.from_url(cfg.url, socket_timeout=timeout,
                                           socket_connect_timeout=timeout)
        here = resources.files("shmguard.fleet")
        self.script = self.client.register_script(here.joinpath("share.lua").read_text("utf-8"))
        self.bscript = self.client.register_script(here.joinpath("breaker.lua").read_text("utf-8"))
        self.gscript = self.client.register_script(_GATE)
        self.errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)

    def share(self, endpoint: str, host: str, epoch: int, demand: float, rate: float,
              held: float, seen: int) -> Grant:
        """Reports demand and returns this host's grant; raises :class:`FleetError`."""
        lease_ms = max(1, round(self.cfg.lease * 1000))
        args: list[str | int] = [host, epoch, repr(float(demand)), repr(float(rate)), lease_ms,
                                 repr(float(held)), seen]
        try:
            reply = self.script(keys=[self.cfg.rate_key(endpoint)], args=args)
        except self.errors as exc:
            raise FleetError(f"fleet: Redis at {self.cfg.url!r}: {exc}") from exc
        return parse_grant(reply, rate, lease_ms)

    def breaker(self, endpoint: str, host: str, op: str, remaining: float) -> Episode:
        """Publishes "open" (for ``remaining`` s) or "close", or reads ("read") the episode."""
        args: list[str | int] = [host, op, max(0, round(remaining * 1000)),
                                 max(1, round(self.cfg.lease * 40_000))]
        try:
            reply = self.bscript(keys=[f"{self.cfg.prefix}:breaker:{endpoint}"], args=args)
        except self.errors as exc:
            raise FleetError(f"fleet: Redis at {self.cfg.url!r}: {exc}") from exc
        return parse_episode(reply)

    def probe_gate(self, endpoint: str, host: str, seconds: float) -> bool:
        """Takes the fleet's half-open probe lease (SET NX PX) or, if this host holds it,
        extends it to ``seconds`` from now; reports whether this host holds it."""
        key, px = f"{self.cfg.prefix}:probe:{endpoint}", max(1, round(seconds * 1000))
        try:
            reply = self.gscript(keys=[key], args=[host, px])
        except self.errors as exc:
            raise FleetError(f"fleet: Redis at {self.cfg.url!r}: {exc}") from exc
        return bool(_int(reply, "probe gate", 0, 1))

    def hosts(self, endpoint: str) -> dict[str, dict[str, float]]:
        """Returns the hosts recorded for ``endpoint`` (grant, expiry, demand); for the CLI."""
        try:
            raw = self.client.hgetall(self.cfg.rate_key(endpoint))
            now = self.client.time()
        except self.errors as exc:
            raise FleetError(f"fleet: Redis at {self.cfg.url!r}: {exc}") from exc
        now_ms = int(now[0]) * 1000 + int(now[1]) // 1000
        out: dict[str, dict[str, float]] = {}
        for f, v in raw.items():
            name = f.decode("utf-8", "replace") if isinstance(f, bytes) else str(f)
            val = v.decode("ascii", "replace") if isinstance(v, bytes) else str(v)
            if not name.startswith("h:"):
                continue
            parts = val.split("|")
            try:
                g, e, d = float(parts[0]), float(parts[1]), float(parts[2])
            except (ValueError, IndexError):
                out[name[2:]] = {"malformed": 1.0}
                continue
            out[name[2:]] = {"grant": g, "left": (e - now_ms) / 1000, "demand": d}
        return out

    def close(self) -> None:
        try:
            self.client.close()
        except self.errors:
            pass
