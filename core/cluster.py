# ruff: noqa: RUF009  (p() is dataclasses.field with metadata: evaluated once, on purpose)
"""`python -m geoseg.core cluster`: a Dask scheduler and its workers on this machine, as subprocesses.

For one machine with several GPUs (`--gpus N`: one worker per GPU, each seeing only its own through
CUDA_VISIBLE_DEVICES in its environment, with the resource GPU=1), or to try SCHEDULER out. Each
worker runs one task at a time (`--nthreads 1`): a task already runs its own reader, inference and
writer threads. The processes are started with an explicitly located Python (inside QGIS
`sys.executable` is the QGIS binary), never as a LocalCluster inside the calling process, and are
stopped on Ctrl+C or SIGTERM.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass

from .errors import GeoSegError, IsCancelled
from .params import p

STARTUP_TIMEOUT = 60.0  # seconds for the scheduler to write its file


@dataclass(frozen=True)
class ClusterParams:
    """The command line's `cluster` command (no Processing algorithm: a cluster outlives one run)."""

    workers: int = p(2, name="WORKERS", label="Workers", minimum=1, help="Worker processes (one task each at a time).")
    gpus: int = p(
        0,
        name="GPUS",
        label="GPUs",
        minimum=0,
        help="One worker per GPU instead (CUDA_VISIBLE_DEVICES=i and the resource GPU=1 for worker i); 0: WORKERS.",
    )
    port: int = p(8786, name="PORT", label="Scheduler port", minimum=0, help="The scheduler's TCP port (0: any free).")
    host: str = p(
        "",
        name="HOST",
        label="Host",
        help="Address the scheduler listens on (e.g. 127.0.0.1 for this machine only); empty: Dask's default.",
    )
    scheduler_file: str | None = p(
        None,
        name="SCHEDULER_FILE",
        label="Scheduler file",
        kind="file_out",
        help="JSON file the scheduler writes its address to (give it as SCHEDULER, or to `dask worker "
        "--scheduler-file` on other machines); default: a temporary file.",
    )
    python: str | None = p(
        None,
        name="PYTHON",
        label="Python",
        kind="file",
        help="The Python interpreter that has dask, distributed and GeoSeg's dependencies; default: this "
        "Python when it is one, else the one core.deps finds.",
    )


def find_python(given: str | None = None) -> str:
    """The interpreter to start scheduler and workers with (never the QGIS binary)."""
    if given:
        return given
    from .deps import find_python as located

    exe = located()
    if not exe:
        raise GeoSegError(
            "PYTHON: no Python interpreter of this version was found; give one with --python.", param="PYTHON"
        )
    return exe


def child_env(gpu: int | None = None, base: dict | None = None) -> dict[str, str]:
    """A child's environment: GeoSeg importable (its package folder on PYTHONPATH), and for a GPU
    worker that GPU only. This process's own environment is left alone."""
    env = dict(os.environ if base is None else base)
    package = importlib.import_module(__name__.split(".")[0])
    root = os.path.dirname(os.path.abspath(next(iter(package.__path__))))
    env["PYTHONPATH"] = os.pathsep.join(x for x in (root, env.get("PYTHONPATH", "")) if x)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    return env


class Cluster:
    """A running scheduler and its workers; `stop()` ends them (workers first)."""

    def __init__(
        self, scheduler: subprocess.Popen, workers: list[subprocess.Popen], address: str, file: str, own: bool
    ) -> None:
        self.scheduler, self.workers, self.address, self.file = scheduler, workers, address, file
        self.own = own  # the scheduler file's folder is ours (a temporary one): removed by stop()

    def alive(self) -> bool:
        return all(x.poll() is None for x in [self.scheduler, *self.workers])

    def stop(self, timeout: float = 10.0) -> None:
        for group in (self.workers, [self.scheduler]):
            for proc in group:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            for proc in group:
                try:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self.own:
            shutil.rmtree(os.path.dirname(self.file), ignore_errors=True)


def _wait_for_file(path: str, scheduler: subprocess.Popen) -> str:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if scheduler.poll() is not None:
            raise GeoSegError(f"The Dask scheduler exited at start (status {scheduler.returncode}); see its output.")
        try:
            with open(path, encoding="utf-8") as f:
                return str(json.load(f)["address"])
        except (OSError, ValueError, KeyError):
            time.sleep(0.1)
    raise GeoSegError(f"The Dask scheduler did not start within {STARTUP_TIMEOUT:.0f} s.")


def start(
    workers: int = 2,
    gpus: int = 0,
    port: int = 8786,
    host: str = "",
    scheduler_file: str | None = None,
    python: str | None = None,
    dashboard: bool = True,
    output: int | None = None,
) -> Cluster:
    """Start `dask scheduler` and its `dask worker --nthreads 1` processes; return when the
    scheduler's address is known. `output`: where the children's output goes (None: inherited)."""
    exe = find_python(python)
    file = scheduler_file or os.path.join(tempfile.mkdtemp(prefix="geoseg-dask-"), "scheduler.json")
    if os.path.exists(file):
        os.remove(file)  # a stale file of an earlier scheduler would give its address
    board = [] if dashboard else ["--no-dashboard"]
    cmd = [exe, "-m", "dask", "scheduler", "--port", str(port), "--scheduler-file", file, *board]
    kw: dict = {"stdout": output, "stderr": output} if output is not None else {}
    scheduler = subprocess.Popen([*cmd, *(["--host", host] if host else [])], env=child_env(), **kw)
    procs: list[subprocess.Popen] = []
    try:
        address = _wait_for_file(file, scheduler)
        for i in range(gpus or workers):
            gpu = ["--resources", "GPU=1"] if gpus else []
            worker = [exe, "-m", "dask", "worker", address, "--nthreads", "1", "--nanny", *gpu]
            worker += ["--no-dashboard"] if not dashboard else []
            procs.append(subprocess.Popen(worker, env=child_env(i if gpus else None), **kw))
    except BaseException:
        Cluster(scheduler, procs, "", file, not scheduler_file).stop()
        raise
    return Cluster(scheduler, procs, address, file, not scheduler_file)


def run(c: ClusterParams, cancelled: IsCancelled) -> str:
    """The command: start, print the address, wait for Ctrl+C or SIGTERM (or a child's end), stop."""
    from .errors import Cancelled

    cluster = start(c.workers, c.gpus, c.port, c.host, c.scheduler_file, c.python)
    try:
        n = len(cluster.workers)
        print(f"Dask scheduler at {cluster.address} (scheduler file {cluster.file}) with {n} workers.", flush=True)
        print(f"Segment with SCHEDULER={cluster.address} (or --scheduler {cluster.address}); Ctrl+C stops.", flush=True)
        while not cancelled():
            if not cluster.alive():
                raise GeoSegError("A process of the Dask cluster exited; the cluster was stopped.")
            time.sleep(0.2)
    finally:
        cluster.stop()
    raise Cancelled(f"Cancelled by the user: the scheduler and its {n} workers were stopped.")
