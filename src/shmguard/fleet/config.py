"""RedisFleet: where the fleet coordinator lives and how often hosts talk to it.

This module imports nothing from redis: a service without ``fleet=`` never
loads the client (``shmguard[fleet]`` installs it).
"""
from __future__ import annotations

import math
import socket
from dataclasses import dataclass

from shmguard.errors import PolicyError

__all__ = ["RedisFleet", "coerce", "default_host_id"]


@dataclass(frozen=True)
class RedisFleet:
    """The fleet tier's coordinator: a Redis the hosts share.

    Every ``refresh`` seconds the host's agent reports its demand and
    receives a grant that lasts ``lease`` seconds (on Redis's clock). A
    grant not renewed in time (Redis unreachable) is kept to its end, then
    the host falls to the safe share: ``offline_rate`` if given, else the
    fleet rate divided by the hosts seen at the last sync.

    :param url: ``redis://host:port/db`` or ``rediss://...``.
    :param refresh: seconds between two syncs of the agent (> 0, <= lease / 4).
    :param lease: seconds a grant lasts; the agent's own lease in the
        segment is half of it, so a dead agent's successor renews the grant in time.
    :param prefix: key prefix in Redis (one fleet per prefix).
    :param offline_rate: the safe share (requests/s) per host without a live grant.
    :param timeout: socket timeout of one Redis call (default: ``refresh``).

    >>> RedisFleet("redis://cache:6379/0", refresh=0.5, lease=5.0).lease
    5.0
    """

    url: str
    refresh: float = 0.5
    lease: float = 5.0
    prefix: str = "shmguard"
    offline_rate: float | None = None
    timeout: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise PolicyError(f"fleet url must be redis://, rediss:// or unix://, got {self.url!r}")
        for name in ("refresh", "lease"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or not 0.01 <= v <= 3600:
                raise PolicyError(f"fleet {name} must be in [0.01, 3600] s, got {v!r}")
        if self.refresh > self.lease / 4:
            raise PolicyError(f"fleet refresh {self.refresh!r} s must be <= lease / 4 "
                              f"({self.lease / 4:g} s): a grant must survive a missed sync")
        if not isinstance(self.prefix, str) or not self.prefix or not self.prefix.isprintable() \
                or len(self.prefix) > 64:
            raise PolicyError(f"fleet prefix must be 1..64 printable characters, got {self.prefix!r}")
        o = self.offline_rate
        if o is not None and (isinstance(o, bool) or not isinstance(o, (int, float))
                              or not math.isfinite(o) or o <= 0):
            raise PolicyError(f"fleet offline_rate must be a rate > 0, got {o!r}")
        t = self.timeout
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float))
                              or not math.isfinite(t) or not 0 < t <= 60):
            raise PolicyError(f"fleet timeout must be in (0, 60] s, got {t!r}")

    def rate_key(self, endpoint: str) -> str:
        """Returns the Redis key of ``endpoint``'s fleet rate."""
        return f"{self.prefix}:rate:{endpoint}"


def coerce(fleet: object) -> RedisFleet:
    """Returns ``fleet`` as a :class:`RedisFleet` (a URL string is accepted)."""
    if isinstance(fleet, RedisFleet):
        return fleet
    if isinstance(fleet, str):
        return RedisFleet(fleet)
    raise PolicyError(f"fleet must be a Redis URL or a shmguard.RedisFleet, got {fleet!r}")


def default_host_id(host_id: object) -> str:
    """Returns the host id (default: the hostname), validated."""
    hid = socket.gethostname() if host_id is None else host_id
    if not isinstance(hid, str) or not hid or len(hid) > 128 or not hid.isprintable() or "|" in hid:
        raise PolicyError(f"host_id must be 1..128 printable characters without '|', got {hid!r}")
    return hid
