"""What counts as a network failure, across HTTP client libraries, without importing them.

:class:`NetworkFailure` is a marker class: ``isinstance(exc, NetworkFailure)``
(and so a policy whose ``failure_exceptions`` holds it) is true for

- the builtins: ``ConnectionError``, ``TimeoutError``, ``socket.timeout``,
  ``socket.gaierror``, ``socket.herror``, ``asyncio.TimeoutError``;
- the errors of client libraries *already imported* by the process (looked up
  in ``sys.modules`` when an exception is classified, so none of them is a
  dependency): ``requests.ConnectionError`` and ``requests.Timeout``,
  httpx's transport errors (``ConnectError``, ``ReadTimeout``, ... but not
  ``UnsupportedProtocol``, a caller's mistake), ``urllib.error.URLError``,
  ``aiohttp.ClientConnectionError`` and ``aiohttp.ServerTimeoutError``,
  urllib3's ``ProtocolError`` and ``TimeoutError``;
- an HTTP error raised for a 5xx answer: ``urllib.error.HTTPError``,
  ``requests.HTTPError`` (``raise_for_status()``), ``httpx.HTTPStatusError``,
  ``aiohttp.ClientResponseError``. A 4xx answer is the caller's problem, not
  the dependency's, and counts as a success.

``except NetworkFailure:`` also works for the class-based part.
"""
from __future__ import annotations

import asyncio
import socket
import sys
from typing import Any

__all__ = ["NetworkFailure", "BUILTIN_NETWORK_ERRORS", "LIBRARY_ERRORS", "STATUS_ERRORS"]

BUILTIN_NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError, TimeoutError, socket.timeout, socket.gaierror, socket.herror,
    asyncio.TimeoutError,
)

#: module -> class names that are network failures whatever their content
LIBRARY_ERRORS: dict[str, tuple[str, ...]] = {
    "requests.exceptions": ("ConnectionError", "Timeout"),
    "httpx": ("TimeoutException", "NetworkError", "ProtocolError", "ProxyError"),
    "urllib.error": ("URLError",),
    "aiohttp": ("ClientConnectionError", "ServerTimeoutError"),
    "urllib3.exceptions": ("ProtocolError", "TimeoutError", "NewConnectionError"),
}

#: module -> (class name, attribute path of the HTTP status): a failure when status >= 500
STATUS_ERRORS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "urllib.error": (("HTTPError", ("code",)),),
    "requests.exceptions": (("HTTPError", ("response", "status_code")),),
    "httpx": (("HTTPStatusError", ("response", "status_code")),),
    "aiohttp": (("ClientResponseError", ("status",)),),
}

# module object id -> resolved classes; a module imported later is resolved then
_resolved: dict[str, tuple[int, tuple[type[BaseException], ...]]] = {}


def _classes(module: str, names: tuple[str, ...]) -> tuple[type[BaseException], ...]:
    mod = sys.modules.get(module)
    if mod is None:
        return ()
    hit = _resolved.get(module)
    if hit is not None and hit[0] == id(mod):
        return hit[1]
    found = tuple(c for c in (getattr(mod, n, None) for n in names)
                  if isinstance(c, type) and issubclass(c, BaseException))
    _resolved[module] = (id(mod), found)
    return found


def _status(exc: BaseException, path: tuple[str, ...]) -> int:
    value: Any = exc
    for attr in path:
        value = getattr(value, attr, None)
    return value if isinstance(value, int) else 0


def _status_failure(exc: BaseException) -> bool | None:
    """True/False for an HTTP status error (5xx or not); None for anything else."""
    for module, entries in STATUS_ERRORS.items():
        mod = sys.modules.get(module)
        if mod is None:
            continue
        for name, path in entries:
            cls = getattr(mod, name, None)
            if isinstance(cls, type) and isinstance(exc, cls):
                return _status(exc, path) >= 500
    return None


def _class_failure(cls: type) -> bool:
    if issubclass(cls, BUILTIN_NETWORK_ERRORS):
        return True
    return any(issubclass(cls, _classes(m, names)) for m, names in LIBRARY_ERRORS.items()
               if m in sys.modules)


class _NetworkFailureMeta(type):
    def __instancecheck__(cls, exc: Any) -> bool:
        if not isinstance(exc, BaseException):
            return False
        by_status = _status_failure(exc)
        if by_status is not None:
            return by_status  # an HTTPError is a URLError: its status decides
        return _class_failure(type(exc))

    def __subclasscheck__(cls, sub: Any) -> bool:
        return isinstance(sub, type) and (type.__subclasscheck__(cls, sub) or _class_failure(sub))


class NetworkFailure(Exception, metaclass=_NetworkFailureMeta):
    """Marker: matches every network failure listed in the module docstring."""
