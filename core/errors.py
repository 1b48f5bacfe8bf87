"""Exceptions whose message is meant for the user, shown as-is by every front-end, and the
progress/cancel callbacks every core entry point takes."""

from collections.abc import Callable

Progress = Callable[[float], None]  # fraction done, 0..1
IsCancelled = Callable[[], bool]  # polled at every safe stopping point


class GeoSegError(Exception):
    """Bad input or an impossible request; the message says what and how to fix it.

    `param` is the Processing name of the parameter the error is about (e.g. "EPOCHS"), when it is
    about one: the dialogs mark that field."""

    def __init__(self, *args: object, param: str | None = None) -> None:
        super().__init__(*args)
        self.param = param


class Cancelled(GeoSegError):
    """The user cancelled; partial output has been removed."""

    def __init__(self, message: str = "Cancelled by the user; nothing was written.") -> None:
        super().__init__(message)


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an error's text (its type when it has none), for a one-line message."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:limit]


def one_line(e: BaseException, limit: int = 300) -> str:
    """An error's whole text on one line (its type when it has none): for errors whose point comes
    after the first line, like onnxruntime's "Got: 48 Expected: 64"."""
    text = " ".join(ln.strip() for ln in str(e).splitlines() if ln.strip()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
