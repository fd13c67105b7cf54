"""Drop-in HTTP client adapters: every request goes through a host-wide endpoint.

- :mod:`shmguard.adapters.requests`: ``ResilientAdapter`` for ``requests.Session.mount``;
- :mod:`shmguard.adapters.httpx`: ``ResilientTransport`` / ``AsyncResilientTransport``.

Each imports its client library only when imported itself (optional extras
``shmguard[requests]``, ``shmguard[httpx]``).
"""
