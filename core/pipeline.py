"""Threads joined by bounded queues, for streaming work (read → compute → write) that must
never leave a thread blocked: when any stage fails or the run is cancelled, every wait ends."""

from __future__ import annotations

import enum
import queue
import threading
from collections.abc import Callable
from typing import Final, Generic, TypeVar

QUEUE_DEPTH = 1  # batches waiting between stages: one ready batch keeps the next stage busy
T = TypeVar("T")


class _End(enum.Enum):
    END = "end"


END: Final = _End.END  # end of a stage's stream (an enum member, so `item is not END` narrows the type)


class Stop(Exception):
    """The pipeline is shutting down because another stage failed or the run was cancelled."""


class Pipe(Generic[T]):
    """A bounded queue between two stages whose waits end when the pipeline stops, so a failed
    or cancelled run never leaves a thread blocked on a full or empty queue."""

    def __init__(self, stop: threading.Event, depth: int = QUEUE_DEPTH) -> None:
        self.queue: queue.Queue[T | _End] = queue.Queue(depth)
        self.stop = stop

    def put(self, item: T | _End) -> None:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                pass
        raise Stop()

    def get(self) -> T | _End:
        while not self.stop.is_set():
            try:
                return self.queue.get(timeout=0.1)
            except queue.Empty:
                pass
        raise Stop()


class Stage(threading.Thread):
    """A pipeline thread that keeps its exception for the main thread and stops the others.

    It runs at the process's own priority: a lower one (tried in issue 18) is inherited by the
    threads it starts, GDAL's shared compression pool included, which outlive the run."""

    def __init__(self, name: str, work: Callable[[], None], stop: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self.work, self.stop = work, stop
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.work()
        except Stop:
            pass
        except BaseException as e:  # noqa: BLE001  (handed to the main thread, which raises it)
            self.error = e
            self.stop.set()
