"""The one signal-to-cancel bridge: SIGTERM (a desktop session ending, a job scheduler, `kill`)
and, on the command line, SIGINT (Ctrl+C) become the run's cancel flag, so a killed run cleans up
exactly as a cancelled one does (partial files removed, training's last complete checkpoint kept)
and then exits non-zero with a message saying which signal stopped it.

Handlers belong to the program that owns the process. GeoSeg installs them only where the
process is its own: the command line (`python -m geoseg.core`) and Processing runs under
`qgis_process` (algorithms/base.py decides), never inside the QGIS desktop. They are installed only
in the main thread (Python allows no other) and only over handlers Python knows (a handler
installed from C is left alone); the previous handler comes back when the run ends.

A second signal while the run is still winding down raises `Cancelled` at once from the handler
(as Python's own Ctrl+C does): the staged writers remove their partial files on any exception.
SIGKILL cannot be caught: every run removes stale partials of its own outputs when it starts
(core.staging.remove_stale_partials).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import Any

from .errors import Cancelled, IsCancelled

_received: list[int] = []  # signals received by the runs now inside `cancel_on_signals`


class SignalCancel:
    """The cancel check of one run: true once one of its signals arrived (or `also()` says so)."""

    def __init__(self, also: IsCancelled = lambda: False) -> None:
        self.signum: int | None = None
        self.also = also

    def __call__(self) -> bool:
        return self.signum is not None or bool(self.also())

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def explain(self, message: str) -> str:
        """`message` (a cancel message) said as what a signal caused."""
        if self.signum is None:
            return message
        text = message.replace("Cancelled by the user", "Cancelled").strip()
        return f"Stopped by {self.name}: {text}"

    def exit_status(self) -> int:
        """The shell's convention for a process ended by a signal (128 + its number)."""
        return 128 + self.signum if self.signum is not None else 1


def received() -> int | None:
    """The signal the current run received (None: none yet); for code that waits on its own."""
    return _received[-1] if _received else None


Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers  # what signal.signal takes back


def _handler(flag: SignalCancel):
    def handle(signum: int, frame) -> None:
        if flag.signum is not None:  # a second signal: stop now, wherever the run is
            raise Cancelled(f"Stopped by {signal.Signals(signum).name} (again); nothing was written.")
        flag.signum = signum
        _received.append(signum)

    return handle


@contextmanager
def cancel_on_signals(
    signals: Sequence[int] = (signal.SIGTERM,), also: IsCancelled = lambda: False
) -> Iterator[SignalCancel]:
    """Yield the run's cancel check: true once one of `signals` arrives, or when `also()` is.

    Outside the main thread nothing is installed (the check is then `also` alone)."""
    flag = SignalCancel(also)
    previous: dict[int, Handler] = {}
    if threading.current_thread() is threading.main_thread():
        for s in signals:
            old = signal.getsignal(s)
            if old is None:  # installed by C code: not ours to replace, nor could we restore it
                continue
            previous[s] = old
            signal.signal(s, _handler(flag))
    try:
        yield flag
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
        if flag.signum is not None and flag.signum in _received:
            _received.remove(flag.signum)
