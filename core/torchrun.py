"""Training on several GPUs from a front-end: start `torchrun … -m geoseg.core train …` as a child
process, follow rank 0's progress lines, and cancel it.

Why a child process: DDP needs one process per GPU, and inside QGIS `sys.executable` is the QGIS
program, not a Python (core.deps.find_python locates the interpreter; the child gets GeoSeg and its
installed packages through PYTHONPATH in its own environment: nothing here changes this process's).
The child's rank 0 prints one `@geoseg {json}` line per batch, per epoch and at the end when
GEOSEG_PROGRESS is set in its environment (core.ddp `progress_lines`, `emit_result`); everything else it
prints goes to the log.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from typing import IO, Any

from .ddp import PROGRESS_ENV, Report, parse_line
from .errors import Cancelled, GeoSegError, IsCancelled, Progress
from .reports import TrainResult

log = logging.getLogger("geoseg")

PACKAGE = __name__.split(".")[0]  # "geoseg"
STOP_GRACE_S = 60.0  # after SIGTERM: torchrun gives its workers 30 s before it kills them itself


# ---------------------------------------------------------------- the launcher's side
def package_parent() -> str:
    """The folder holding the `geoseg` package (QGIS's plugins folder; in a checkout, .build/pythonpath)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def torchrun_command(p: Any, processes: int, python: str) -> list[str]:
    """`python -m torch.distributed.run --standalone --nproc-per-node N -m geoseg.core train …` with the
    options that rebuild `p` (core.cli, from the parameter schema): one machine, N processes."""
    from .cli import args_from_params

    return [
        python,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        f"--nproc-per-node={processes}",
        "-m",
        f"{PACKAGE}.core",
        "train",
        *args_from_params(p),
    ]


def child_env(p: Any, base: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: this one, plus GeoSeg and this interpreter's packages (torch installed in
    the QGIS profile) on PYTHONPATH, progress lines on, the weights cache the dialog uses."""
    env = dict(os.environ if base is None else base)
    paths = [package_parent(), *(q for q in sys.path if q and os.path.isdir(q))]
    paths += [q for q in env.get("PYTHONPATH", "").split(os.pathsep) if q]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(os.path.abspath(q) for q in paths))
    env[PROGRESS_ENV] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    if getattr(p, "weights_cache", None):
        env["GEOSEG_CACHE"] = p.weights_cache
    return env


def _read_lines(stream: IO[str], lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


def _stop(proc: subprocess.Popen, sig: int) -> None:
    """`sig` to the child's process group (torchrun passes SIGTERM on to its workers)."""
    try:
        if os.name == "posix":
            os.killpg(proc.pid, sig)
        elif sig == signal.SIGTERM:
            proc.terminate()
        else:
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass


class _Follow:
    """What the child said: reports passed on, errors and the last lines kept for the message."""

    def __init__(self, progress: Progress, report: Report | None) -> None:
        self.progress, self.report = progress, report
        self.result: TrainResult | None = None
        self.errors: list[str] = []
        self.tail: deque[str] = deque(maxlen=15)

    def line(self, line: str) -> None:
        parsed = parse_line(line)
        if parsed is None:
            if line.startswith("error: "):
                self.errors.append(line[len("error: ") :])
            if line.strip():
                self.tail.append(line)
                log.info("%s", line)
            return
        kind, value = parsed
        if kind == "progress":
            self.progress(value)
        elif kind == "result":
            self.result = value
        elif self.report is not None:
            self.report(value)

    def failure(self, status: int, cancelled: bool) -> GeoSegError:
        message = self.errors[0] if self.errors else ""
        if cancelled:
            for prefix in ("Stopped by SIGTERM: ", "Stopped by SIGTERM (again); "):
                message = message.removeprefix(prefix)
            return Cancelled(message or "Training cancelled; torchrun was stopped.")
        if message:
            name = message.split(":", 1)[0]
            return GeoSegError(message, param=name if name.isupper() and name.isidentifier() else None)
        tail = " | ".join(self.tail)
        return GeoSegError(f"torchrun ended with exit status {status} and no GeoSeg error; its last lines: {tail}")


def train_torchrun(
    p: Any,
    processes: int,
    progress: Progress = lambda f: None,
    cancelled: IsCancelled = lambda: False,
    report: Report | None = None,
    python: str | None = None,
) -> TrainResult:
    """`train(p)` in `processes` processes on this machine under torchrun (one per GPU): progress and
    reports from rank 0's lines, cancel by SIGTERM to the child's process group (the run then cleans up
    as a cancelled one does), the result as rank 0 reported it. The checks that need no torch run here
    first, so a bad parameter is named before anything starts."""
    from .ddp import per_rank_batch
    from .deps import find_python
    from .train import validate

    validate(p)
    per_rank_batch(p.batch_size, processes)
    python = python or find_python()
    if not python:
        raise GeoSegError("No Python interpreter of this version was found to start torchrun with.")
    cmd = torchrun_command(p, processes, python)
    log.info("Starting %s", " ".join(cmd))
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=child_env(p),
        start_new_session=os.name == "posix",
    )
    assert proc.stdout is not None
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
    follow = _Follow(progress, report)
    stopped: float | None = None
    while True:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            line = ""
        if line is None:
            break
        follow.line(line)
        if stopped is None and cancelled():
            stopped = time.monotonic()
            _stop(proc, signal.SIGTERM)
        elif stopped is not None and time.monotonic() - stopped > STOP_GRACE_S:
            _stop(proc, getattr(signal, "SIGKILL", signal.SIGTERM))
    status = proc.wait()
    if status == 0 and follow.result is not None:  # (a cancel that came as it ended: the output is complete)
        return follow.result
    raise follow.failure(status, stopped is not None)
