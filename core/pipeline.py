"""Threads joined by bounded queues, for streaming work (read → compute → write) that must
never leave a thread blocked: when any stage fails or the run is cancelled, every wait ends."""

from __future__ import annotations

import enum
import os
import queue
import sys
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


BACKGROUND_NICE = 19  # a background stage's scheduling priority (the lowest)


def lower_this_threads_priority() -> None:
    """The calling thread yields its core to any busier one: on Linux each thread has its own nice
    value, so this touches no other thread and ends with the thread. (Elsewhere the call would
    renice the whole process, or another one: left alone there.)"""
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
        except OSError:  # a sandbox that forbids it: only a little slower
            pass


class Stage(threading.Thread):
    """A pipeline thread that keeps its exception for the main thread and stops the others.

    `background`: the stage runs at the lowest priority, so that work beside a model computing on
    the same cores (reading, writing) fills the model's idle moments instead of preempting its
    threads (issue 18, measured on 2 cores, medians of 4-6 runs each: segment 4-6 % faster with the light,
    medium and heavy benchmark models; the class map is the same)."""

    def __init__(self, name: str, work: Callable[[], None], stop: threading.Event, background: bool = False) -> None:
        super().__init__(name=name, daemon=True)
        self.work, self.stop, self.background = work, stop, background
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            if self.background:
                lower_this_threads_priority()
            self.work()
        except Stop:
            pass
        except BaseException as e:  # noqa: BLE001  (handed to the main thread, which raises it)
            self.error = e
            self.stop.set()
