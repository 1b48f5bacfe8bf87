"""Exceptions whose message is meant for the user, shown as-is by every front-end, and the
progress/cancel callbacks every core entry point takes."""

from collections.abc import Callable

Progress = Callable[[float], None]  # fraction done, 0..1
IsCancelled = Callable[[], bool]  # polled at every safe stopping point


class GeoSegError(Exception):
    """Bad input or an impossible request; the message says what and how to fix it."""


class Cancelled(GeoSegError):
    """The user cancelled; partial output has been removed."""

    def __init__(self, message: str = "Cancelled by the user; nothing was written.") -> None:
        super().__init__(message)
