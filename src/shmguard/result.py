"""``Ok`` / ``Err``: the result of :meth:`ResilienceService.try_execute`."""
from __future__ import annotations

from typing import Any, Generic, NoReturn, TypeVar

T = TypeVar("T")

__all__ = ["Ok", "Err", "Result"]


class Ok(Generic[T]):
    """A successful result holding ``value``."""

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    error = None

    def is_ok(self) -> bool:
        return True

    def is_err(self) -> bool:
        return False

    def unwrap(self) -> T:
        return self.value

    def unwrap_or(self, default: Any) -> T:
        return self.value

    def __repr__(self) -> str:
        return f"Ok({self.value!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ok) and other.value == self.value

    __hash__ = None  # type: ignore[assignment]


class Err:
    """A failed result holding ``error`` (the exception)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error

    value = None

    def is_ok(self) -> bool:
        return False

    def is_err(self) -> bool:
        return True

    def unwrap(self) -> NoReturn:
        raise self.error

    def unwrap_or(self, default: T) -> T:
        return default

    def __repr__(self) -> str:
        return f"Err({self.error!r})"


Result = Ok[T] | Err
