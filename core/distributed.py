"""Prediction on a Dask cluster (issue 19): the same strip engine, one task per block of tile rows.

The global tiling (core.grid.make_tiling) is cut into blocks of consecutive whole tile rows
(strips). A block's kept rows start and end where its first and last strips' kept spans do, so the
halo comes from the grid itself: each task runs core.stream's `stream_tiles` on its strips (reader, inference
and writer threads, memory bounded as in one process) and writes exactly those rows into its own
part GeoTIFF, and the parts put together are the single-process map pixel for pixel.

Tasks get file paths and the frozen SegmentParams, never GDAL handles; a worker opens the raster and
the model once per worker thread (cached, keyed by the parameters and the files' sizes and times).
A part is written under a temporary name and renamed when complete, so a retried task (retries=2, a
worker killed and restarted by its nanny) replaces only its own part. The client follows the futures
for progress and cancel, records finished parts in a manifest, then streams the parts (through a
VRT) into the staged outputs with the same writer as in-process: same CRS, geotransform, nodata,
colour table and overviews.

Dask is imported only here and only when a scheduler is used: it is an optional dependency.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from osgeo import gdal

from .card import ModelCard
from .errors import Cancelled, GeoSegError, IsCancelled, Progress, first_line
from .gdalx import with_gdal_exceptions
from .grid import Window
from .params import SegmentParams
from .raster import RasterInfo, window_geotransform
from .stream import FiniteOutputs, PyramidWriter, new_map, stream_tiles

log = logging.getLogger("geoseg")

ENV = "DASK_SCHEDULER_ADDRESS"  # read as dask reads it, never set
CONNECT_TIMEOUT = 10.0  # seconds to reach the scheduler, and for it to have a worker
TASKS_PER_WORKER = 4  # blocks per worker: a lost or slow worker costs a fraction of its share
MAX_TILES_PER_TASK = 2048  # and a block stays short enough to retry cheaply on huge rasters
RETRIES = 2
POLL = 0.1  # seconds between cancel checks while waiting on the futures
CHUNK_BYTES = 64 * 2**20  # assembly: rows read from the parts at a time
MANIFEST = "manifest.json"
REMOVING = ".removing-"  # a parts folder being deleted
REMOVE_WAIT = 10.0  # seconds for the tasks of a cancelled run to stop writing into it
START = (
    "start one with `python -m geoseg.core cluster --workers N` (or `dask scheduler` and `dask worker ADDRESS`), "
    "or leave SCHEDULER empty to segment in this process"
)
_HOST_PORT = re.compile(r"^(?:tcp://)?\[?([^\[\]/]+?)\]?:(\d+)/?$")

__all__ = ["ClusterPredict", "blocks", "connect", "predict_part", "scheduler_address"]


# ----------------------------------------------------------------------------- connecting
def scheduler_address(value: str | None, environ: Any = os.environ) -> str | None:
    """SCHEDULER, or (empty) $DASK_SCHEDULER_ADDRESS as dask honours it; None: in-process."""
    return (value or "").strip() or environ.get(ENV, "").strip() or None


def import_distributed() -> Any:
    """The `distributed` module, or a GeoSegError saying what to install."""
    try:
        import distributed
    except ImportError:
        from .deps import missing_for

        lacking = " ".join(missing_for("cluster")) or "distributed"
        raise GeoSegError(
            f"SCHEDULER: segmenting on a Dask cluster needs the Python packages dask and distributed; this Python "
            f"lacks {lacking}. Install them with `pip install {lacking}` (the version the scheduler and workers "
            "run), or leave SCHEDULER empty to segment in this process.",
            param="SCHEDULER",
        ) from None
    return distributed


def _address_of(value: str) -> str:
    """The scheduler's address: `value` itself, or read from a scheduler file."""
    if "://" in value or (_HOST_PORT.match(value) and not os.path.exists(value)):
        return value
    if not os.path.isfile(value):
        raise GeoSegError(
            f"SCHEDULER: {value} is neither a scheduler address (tcp://host:port) nor an existing scheduler file "
            f"(written by `dask scheduler --scheduler-file`); {START}.",
            param="SCHEDULER",
        )
    try:
        with open(value, encoding="utf-8") as f:
            address = json.load(f)["address"]
        if not isinstance(address, str):
            raise TypeError("address is not a string")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise GeoSegError(
            f"SCHEDULER: {value} is not a scheduler file written by `dask scheduler --scheduler-file` "
            f"({first_line(e)}).",
            param="SCHEDULER",
        ) from None
    return address


def _unreachable(address: str, why: str) -> GeoSegError:
    return GeoSegError(f"SCHEDULER: could not connect to {address}: {why} — {START}.", param="SCHEDULER")


def _probe(address: str) -> None:
    """A TCP address that refuses connections fails at once (the Dask client would retry until its
    timeout); other protocols are left to the client."""
    m = _HOST_PORT.match(address)
    if not m:
        return
    try:
        socket.create_connection((m.group(1), int(m.group(2))), timeout=CONNECT_TIMEOUT).close()
    except OSError as e:
        raise _unreachable(address, e.strerror or str(e) or type(e).__name__) from None


def connect(value: str) -> Any:
    """A `distributed.Client` of the scheduler at `value` (address or scheduler file) with at least
    one worker; GeoSegError (param SCHEDULER) otherwise. It is not made dask's default client."""
    distributed = import_distributed()
    address = _address_of(value)
    _probe(address)
    try:
        client = distributed.Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except Exception as e:  # noqa: BLE001  (OSError, TimeoutError, protocol errors of every kind)
        raise _unreachable(address, first_line(e)) from None
    try:
        client.wait_for_workers(1, timeout=CONNECT_TIMEOUT)
    except Exception:  # noqa: BLE001  (TimeoutError)
        client.close()
        raise GeoSegError(
            f"SCHEDULER: the scheduler at {address} has no workers; start some with "
            f"`dask worker {address} --nthreads 1` on each machine (or use `python -m geoseg.core cluster`).",
            param="SCHEDULER",
        ) from None
    return client


# ----------------------------------------------------------------------------- partition
def blocks(tiling: Any, workers: int) -> list[tuple[int, int]]:
    """Strip ranges [a, b) of the tiling: several per worker, each at most MAX_TILES_PER_TASK tiles
    (at least one strip)."""
    rows, per_row = len(tiling.ys), len(tiling.xs)
    size = -(-rows // (TASKS_PER_WORKER * max(1, workers)))
    size = max(1, min(size, MAX_TILES_PER_TASK // per_row))
    return [(a, min(a + size, rows)) for a in range(0, rows, size)]


def geometry(tiling: Any) -> tuple:
    """What the parts depend on in a tiling: its tiles and kept spans (not how they were chosen)."""
    return (
        tiling.chip,
        list(tiling.xs),
        list(tiling.ys),
        [list(k) for k in tiling.keep_x],
        [list(k) for k in tiling.keep_y],
    )


def part_tiling(tiling: Any, block: tuple[int, int]) -> Any:
    a, b = block
    return dataclasses.replace(tiling, ys=tiling.ys[a:b], keep_y=tiling.keep_y[a:b])


def part_info(info: RasterInfo, tiling: Any, block: tuple[int, int]) -> RasterInfo:
    """The grid of a block's part: the kept rows of its strips, full width."""
    y0, y1 = tiling.keep_y[block[0]][0], tiling.keep_y[block[1] - 1][1]
    gt = window_geotransform(info.geotransform, Window(0, y0, info.width, y1 - y0))
    return dataclasses.replace(info, height=y1 - y0, geotransform=gt)


def _stat(path: str | None) -> list | None:
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:  # a /vsi… path or a GDAL connection string: its name only
        return [path]
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


def fingerprint(p: SegmentParams, tiling: Any = None) -> str:
    """What the parts depend on: the parameters (not SCHEDULER and the post-steps), the input,
    model and card files (path, size, time) and the tiling."""
    params = dataclasses.asdict(p)
    for name in ("scheduler", "sieve", "vector_path"):
        params.pop(name, None)
    data = {
        "params": params,
        "files": [_stat(p.input_path), _stat(p.model_path), _stat(p.card_path)],
        "tiling": geometry(tiling) if tiling is not None else None,
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


# ----------------------------------------------------------------------------- the parts folder
def part_paths(folder: str, index: int) -> tuple[str, str]:
    """(class map, probabilities) of part `index`."""
    stem = os.path.join(folder, f"part-{index:05d}")
    return stem + ".tif", stem + ".prob.tif"


class Parts:
    """The hidden folder `.NAME.parts/` beside OUTPUT: the parts and a manifest (JSON) of the run's
    fingerprint, blocks and finished parts, written by the client only.

    A rerun with the same fingerprint reuses the finished parts (resumable prediction); another
    fingerprint discards them. The folder is removed on success, on cancel and on an error: an error
    usually means something must change (and a change discards the parts anyway), and bad input
    must leave nothing behind. Only a killed client (SIGKILL, a crash, a lost laptop) cannot clean
    up: that is the case resuming is for, and rerunning the same command picks its parts up."""

    def __init__(self, output_path: str, key: str, layout: list[tuple[int, int]], prob: bool) -> None:
        out = os.path.abspath(output_path)
        self.folder = os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.parts")
        self.key, self.blocks, self.prob = key, layout, prob
        self.done: dict[int, dict] = {}  # part index → what its task returned

    def open(self) -> None:
        """Resume from an earlier run's manifest when its fingerprint is ours; else start afresh."""
        old = self._read()
        if old is not None and old.get("fingerprint") == self.key:
            self.blocks = [(int(a), int(b)) for a, b in old["blocks"]]
            self.done = {int(i): r for i, r in old["done"].items() if self._complete(int(i))}
            log.info("Resuming: %d of %d parts were finished by an earlier run.", len(self.done), len(self.blocks))
        elif os.path.lexists(self.folder):
            log.info("Discarding the parts of an earlier run with other inputs or parameters (%s).", self.folder)
            self.remove()
        parent, name = os.path.split(self.folder)
        for stale in os.listdir(parent):  # left by a client killed while it removed its parts
            if stale.startswith(name + REMOVING):
                shutil.rmtree(os.path.join(parent, stale), ignore_errors=True)
        os.makedirs(self.folder, exist_ok=True)
        self._write()

    def _complete(self, index: int) -> bool:
        cls, prob = part_paths(self.folder, index)
        return os.path.isfile(cls) and (not self.prob or os.path.isfile(prob))

    def _read(self) -> dict | None:
        try:
            with open(os.path.join(self.folder, MANIFEST), encoding="utf-8") as f:
                data = json.load(f)
            return data if isinstance(data, dict) and isinstance(data.get("done"), dict) else None
        except (OSError, ValueError):
            return None

    def _write(self) -> None:
        path = os.path.join(self.folder, MANIFEST)
        tmp = f"{path}.{os.getpid()}.tmp"
        data = {"fingerprint": self.key, "blocks": self.blocks, "prob": self.prob, "done": self.done}
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, path)

    def finish(self, index: int, result: dict) -> None:
        self.done[index] = result
        self._write()

    def paths(self, prob: bool) -> list[str]:
        return [part_paths(self.folder, i)[1 if prob else 0] for i in range(len(self.blocks))]

    def remove(self) -> None:
        """Rename, then delete: a task still running (a cancelled future runs to its next batch) sees
        the folder gone at once and stops, and whatever it still writes goes with the renamed folder."""
        trash = f"{self.folder}{REMOVING}{uuid.uuid4().hex[:8]}"
        try:
            os.rename(self.folder, trash)
        except OSError:
            trash = self.folder  # gone already, or the rename is refused: delete in place
        deadline = time.monotonic() + REMOVE_WAIT
        while os.path.lexists(trash):
            shutil.rmtree(trash, ignore_errors=True)
            if time.monotonic() > deadline:
                log.warning("Could not remove %s; delete it by hand.", trash)
                break
            time.sleep(0.05)


# ----------------------------------------------------------------------------- worker side
@dataclasses.dataclass(frozen=True)
class Engine:
    """What a worker needs of core.predict (opening the raster and the model as `segment` does), handed
    in by `segment`: predict imports this module, so this module cannot import predict back (the layers'
    no-cycle rule, tests/core/test_architecture.py). Module-level functions only, so that it pickles
    by reference into the tasks. The stages themselves come from core.stream."""

    preflight: Callable[..., Any]  # _preflight: p → (model, ds, info, tiling, bands, grid)
    open_engine: Callable[..., Any]  # _open_engine: (p, model, tiling) → _Engine


@dataclasses.dataclass
class _WorkerState:
    key: str
    ds: gdal.Dataset
    info: RasterInfo
    tiling: Any
    bands: list[int] | None
    source: gdal.Dataset | None
    card: ModelCard
    run: Any  # core.predict._Engine: backend, inference, class rule


_cache = threading.local()  # one opened raster and model per worker thread (GDAL handles are per thread)


def _worker_state(p: SegmentParams, engine: Engine) -> _WorkerState:
    key = fingerprint(dataclasses.replace(p, output_path="", probabilities_path=None))  # any run's outputs
    state: _WorkerState | None = getattr(_cache, "state", None)
    if state is None or state.key != key:
        _cache.state = state = None  # the old model and raster go before the new ones come
        model, ds, info, tiling, bands, grid = engine.preflight(p)
        run = engine.open_engine(p, model, tiling)
        source = grid.input_ds if grid.plan.warp else None
        state = _WorkerState(key, ds, info, tiling, bands, source, model.card, run)
        _cache.state = state
    return state


def _check_visible(paths: Sequence[tuple[str, str]], folder: str) -> None:
    """The shared-storage requirement, said plainly when a worker does not meet it."""
    host = socket.gethostname()
    for name, path in paths:
        if not os.path.exists(path):
            raise GeoSegError(
                f"{name}: the Dask worker on {host} cannot see {path}. The workers must see the input, the model "
                "and the output folder at the same paths as this computer (shared storage such as NFS or SMB, "
                "or /vsis3/, /vsigs/ paths).",
                param=name,
            )
    if not os.path.isdir(folder):
        raise GeoSegError(
            f"OUTPUT: the Dask worker on {host} cannot see the folder {folder}; the output folder must be on "
            "storage that every worker shares, at the same path.",
            param="OUTPUT",
        )


@with_gdal_exceptions
def predict_part(
    engine: Engine,
    p: SegmentParams,
    tiling: Any,
    block: tuple[int, int],
    folder: str,
    index: int,
    prob: bool,
    visible: Sequence[tuple[str, str]] = (),
) -> dict:
    """One task, run in a worker: strips [a, b) of `tiling` into part `index` in `folder`; returns
    the non-finite output counts and how the model ran. Stops (Cancelled) when the client removes
    the folder (cancel)."""
    _check_visible(visible, folder)
    t0 = time.perf_counter()
    state = _worker_state(p, engine)
    t1 = time.perf_counter()
    if geometry(state.tiling) != geometry(tiling):
        raise GeoSegError(
            f"INPUT: the Dask worker on {socket.gethostname()} sees a different raster or model at these paths "
            "(its tiling differs from the client's); the workers must share the client's files.",
            param="INPUT",
        )
    final = part_paths(folder, index)
    tag = f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}.tif"
    tmp = (final[0] + tag, final[1] + tag if prob else None)
    finite = FiniteOutputs()
    try:
        stream_tiles(
            state.ds,
            state.info,
            part_tiling(tiling, block),
            state.run.infer,
            state.card,
            tmp[0],
            tmp[1],
            state.run.tiles_per_batch,
            lambda f: None,
            lambda: not os.path.isdir(folder),
            state.run.rule,
            state.bands,
            source=state.source,
            part=(part_info(state.info, tiling, block), finite),
        )
        if tmp[1]:
            os.replace(tmp[1], final[1])
        os.replace(tmp[0], final[0])  # last: the class map's presence means the part is whole
    finally:
        for t in tmp:
            if t and os.path.exists(t):
                os.remove(t)
    backend, provider, batch, final_batch = state.run.summary()
    return {
        "valid": finite.valid,
        "bad": finite.bad,
        "backend": backend,
        "provider": provider,
        "batch": batch,
        "final_batch": final_batch,
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "open_seconds": t1 - t0,  # opening the raster and the model (once per worker: then ~0)
        "seconds": time.perf_counter() - t1,
    }


# ----------------------------------------------------------------------------- client side
class ClusterPredict:
    """`core.stream.stream_tiles`'s stand-in in `segment` (same call): the tiles are predicted on a Dask
    cluster and the parts assembled into the (staged) outputs here. A context manager: connecting
    happens on entry (before any output exists), the client is closed on exit."""

    def __init__(
        self, p: SegmentParams, address: str, info: RasterInfo, tiling: Any, card: ModelCard, engine: Engine
    ) -> None:
        self.p, self.address, self.info, self.tiling, self.card, self.engine = p, address, info, tiling, card, engine
        self.client: Any = None
        self.results: list[dict] = []

    def __enter__(self) -> ClusterPredict:
        self.client = connect(self.address)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def summary(self) -> tuple[str, str, int, int]:
        """(backend, provider, batch size at the start, the smallest at the end) over the parts."""
        if not self.results:
            return "dask", "", 0, 0
        r = self.results[0]
        return r["backend"], r["provider"], r["batch"], min(x["final_batch"] for x in self.results)

    def __call__(
        self,
        out: str,
        prob: str | None,
        _batch: int,
        progress: Progress,
        cancelled: IsCancelled,
        _rule: object = None,
        _bands: object = None,
        source: gdal.Dataset | None = None,
    ) -> str | None:
        """Predict every part (resuming finished ones), check the outputs are finite, assemble."""
        workers = len(self.client.scheduler_info()["workers"])
        key = fingerprint(self.p, self.tiling)
        parts = Parts(self.p.output_path, key, blocks(self.tiling, workers), prob is not None)
        parts.open()
        try:
            self._run(parts, workers, lambda f: progress(0.9 * f), cancelled)
            finite = FiniteOutputs()
            for r in parts.done.values():
                finite.valid += r["valid"]
                finite.bad += r["bad"]
            warning = finite.verdict()
            t0 = time.perf_counter()
            steps = [(out, False)] + ([(prob, True)] if prob else [])
            for i, (dst, is_prob) in enumerate(steps):
                share = 0.1 / len(steps)
                assemble(
                    parts.paths(is_prob),
                    dst,
                    self.info,
                    self.card,
                    is_prob,
                    _span(progress, 0.9 + i * share, share),
                    cancelled,
                )
            _log_times(parts, time.perf_counter() - t0)
        except BaseException:
            parts.remove()  # on cancel and error alike: see Parts
            raise
        parts.remove()
        self.results = list(parts.done.values())
        if warning:
            log.warning(warning)
        progress(1.0)
        return warning

    def _run(self, parts: Parts, workers: int, progress: Progress, cancelled: IsCancelled) -> None:
        """Submit the unfinished parts and follow them; cancel cancels them."""
        distributed = import_distributed()
        p = self.p
        visible = [
            (n, x)
            for n, x in (("INPUT", p.input_path), ("MODEL", p.model_path), ("CARD", p.card_path))
            if x and os.path.exists(x)
        ]
        per_row = len(self.tiling.xs)
        tiles = {i: (b - a) * per_row for i, (a, b) in enumerate(parts.blocks)}
        done = sum(tiles[i] for i in parts.done)
        todo = [i for i in range(len(parts.blocks)) if i not in parts.done]
        log.info(
            "Dask: %d parts (%d tile rows each at most) on %d workers at %s; %d to predict.",
            len(parts.blocks),
            max(b - a for a, b in parts.blocks),
            workers,
            self.address,
            len(todo),
        )
        run = uuid.uuid4().hex[:8]
        futures = {
            self.client.submit(
                predict_part,
                self.engine,
                p,
                self.tiling,
                parts.blocks[i],
                parts.folder,
                i,
                parts.prob,
                visible,
                key=f"geoseg-part-{i}-{run}",
                retries=RETRIES,
                pure=False,
            ): i
            for i in todo
        }
        progress(done / self.tiling.tiles)
        pending = distributed.as_completed(list(futures), loop=self.client.loop)
        try:
            while not pending.is_empty():
                if cancelled():
                    raise Cancelled()
                if not pending.has_ready():
                    time.sleep(POLL)
                    continue
                for f in pending.next_batch(block=False):
                    i = futures.pop(f)
                    parts.finish(i, _result(f))
                    done += tiles[i]
                    progress(done / self.tiling.tiles)
        finally:
            if futures:
                self.client.cancel(list(futures), force=True)


def _log_times(parts: Parts, assembly: float) -> None:
    """Where the time went: what the time model for N workers needs (benchmarks/dask_scale.py)."""
    runs = [r for r in parts.done.values() if "seconds" in r]
    work = sum(r["seconds"] for r in runs)
    opened = [r["open_seconds"] for r in runs if r["open_seconds"] > 0.05]
    log.info(
        "Dask: %d parts, %.2f s per part on a worker, model opened in %.2f s per worker; assembled in %.2f s.",
        len(parts.blocks),
        work / max(1, len(runs)),
        sum(opened) / max(1, len(opened)),
        assembly,
    )


def _span(progress: Progress, start: float, span: float) -> Progress:
    return lambda f: progress(start + span * f)


def _result(future: Any) -> dict:
    """A finished task's result; its error as a GeoSegError (a worker's own, or what Dask says)."""
    try:
        return future.result()
    except GeoSegError:
        raise
    except ImportError as e:
        raise GeoSegError(
            f"SCHEDULER: a Dask worker cannot import {e.name or first_line(e)}; install GeoSeg and its "
            "dependencies (the same versions as here) on every worker, and start the workers with that Python.",
            param="SCHEDULER",
        ) from None
    except Exception as e:  # noqa: BLE001  (KilledWorker, a lost scheduler, a worker's unexpected error)
        raise GeoSegError(
            f"SCHEDULER: a part failed on the Dask cluster ({type(e).__name__}: {first_line(e, 300)}).",
            param="SCHEDULER",
        ) from None


@with_gdal_exceptions
def assemble(
    paths: list[str],
    dst: str,
    info: RasterInfo,
    card: ModelCard,
    prob: bool,
    progress: Progress,
    cancelled: IsCancelled,
) -> None:
    """The parts (in order, top to bottom) through a VRT into `dst` on `info`'s grid, written as the
    in-process run writes a map (core.stream: styled, overviews streamed)."""
    vrt_path = os.path.join(os.path.dirname(paths[0]), "prob.vrt" if prob else "classes.vrt")
    vrt = gdal.BuildVRT(vrt_path, paths)
    if vrt is None or (vrt.RasterXSize, vrt.RasterYSize) != (info.width, info.height):
        size = "none" if vrt is None else f"{vrt.RasterXSize} × {vrt.RasterYSize}"
        raise GeoSegError(f"OUTPUT: the parts put together are {size} pixels, not {info.width} × {info.height}.")
    bands = vrt.RasterCount
    out = new_map(dst, info, card, prob)
    rows: Any = None
    try:
        rows = PyramidWriter(out)
        step = max(1, min(info.height, CHUNK_BYTES // (info.width * bands * 4)))
        for y in range(0, info.height, step):
            if cancelled():
                raise Cancelled()
            n = min(step, info.height - y)
            rows.write(vrt.ReadAsArray(0, y, info.width, n).reshape(bands, n, info.width))
            vrt.FlushCache()
            progress((y + n) / info.height)
        rows.close()
    finally:
        rows = out = vrt = None  # close (flush) before the file is renamed or removed
