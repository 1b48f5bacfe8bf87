"""A real Dask cluster for tests: `dask scheduler` and 2 `dask worker --nthreads 1 --nanny` processes on
tcp://127.0.0.1 (free ports), started through core.cluster (the `cluster` command's own code) and
always stopped. Use the `dask_cluster` fixture (import it into a test module or conftest)."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator

import pytest

from geoseg.core.cluster import Cluster, start

WORKERS = 2


def worker_pids(address: str) -> list[int]:
    """The worker processes (not their nannies) the scheduler knows now."""
    from distributed import Client

    with Client(address, timeout=10, set_as_default=False) as client:
        return sorted(client.run(os.getpid).values())


def wait_for_workers(address: str, n: int, timeout: float = 60.0) -> None:
    from distributed import Client

    with Client(address, timeout=10, set_as_default=False) as client:
        client.wait_for_workers(n, timeout=timeout)


def kill_worker(pid: int) -> None:
    """SIGKILL a worker process; its nanny starts a new one."""
    os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory) -> Iterator[Cluster]:
    log = open(tmp_path_factory.mktemp("dask") / "cluster.log", "wb")  # closed below
    cluster = start(
        workers=WORKERS,
        port=0,
        host="127.0.0.1",
        scheduler_file=str(tmp_path_factory.mktemp("dask-file") / "scheduler.json"),
        python=sys.executable,
        dashboard=False,
        output=log.fileno(),
    )
    try:
        wait_for_workers(cluster.address, WORKERS)
        yield cluster
    finally:
        cluster.stop()
        log.close()


def free_port() -> int:
    """A TCP port nothing listens on (for the unreachable-scheduler cases)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


__all__ = ["Cluster", "dask_cluster", "free_port", "kill_worker", "wait_for_workers", "wait_until", "worker_pids"]
