"""Training under torchrun (DistributedDataParallel): the process group, the data each process gets,
and the points where the processes agree.

`python -m geoseg.core train …` started by `torchrun --nproc_per_node N` (one or several machines)
finds WORLD_SIZE, RANK and LOCAL_RANK in its environment (torchrun's; read, never set here) and
trains one share of every batch in each process. The rules that make N processes give the run one
process gives:

- BATCH_SIZE stays the global batch: each process takes BATCH_SIZE / N chips of it (`per_rank_batch`).
- `TrainShards` shuffles exactly as the single-process loader (torch's RandomSampler) does, from the
  run's seeded generator, and gives process r the r-th contiguous piece of every global batch: the
  union of the pieces is the single-process batch, at any N. torch's DistributedSampler is not used:
  it pads the data with repeated chips and shuffles differently from one process, so 1 and N processes
  (and a run resumed with another N) would train on different batches.
- Validation is shared out by whole batches (`ValShards`) and its loss sums and confusion matrix are
  summed over the processes: every process sees the metrics one process would compute.
- Every point where the processes could part ways (an error, a cancel, a diverged loss in one of them)
  ends in `Group.sums`/`Group.fail`: a status all-reduce first, so when one process fails every process
  stops with the same message instead of waiting for it in a collective (the process group's timeout
  remains the backstop for an error inside torch's own collectives).

Rank 0 also prints `@geoseg {json}` progress lines when the launcher (core.torchrun) asks for them.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import numpy as np

from .errors import Cancelled, GeoSegError, Progress, first_line
from .reports import BatchReport, EpochReport, TrainResult

if TYPE_CHECKING:
    from torch import Generator, Tensor, nn

log = logging.getLogger("geoseg")

T = TypeVar("T")

# A collective that waits longer than this ends the run with an error instead of hanging: a process that
# died inside a step, or a node that went away. Long enough for rank 0's writes (checkpoint, ONNX) at the
# end of an epoch, which the others wait for.
TIMEOUT = timedelta(minutes=10)

OK, CANCELLED, FAILED = 0, 1, 2

PROGRESS_ENV = "GEOSEG_PROGRESS"  # set by the launcher (core.torchrun) in its child's environment
PREFIX = "@geoseg "

Report = Callable[[BatchReport | EpochReport], None]


@dataclass(frozen=True)
class World:
    """Where this process stands among torchrun's processes (size 1: no torchrun)."""

    size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.size > 1

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> World:
        """torchrun's WORLD_SIZE, RANK and LOCAL_RANK (absent: a single process)."""
        try:
            size = int(env.get("WORLD_SIZE", "1") or 1)
            rank = int(env.get("RANK", "0") or 0)
            local = int(env.get("LOCAL_RANK", str(rank)) or 0)
        except ValueError:
            raise GeoSegError(
                f"WORLD_SIZE, RANK and LOCAL_RANK must be integers (got {env.get('WORLD_SIZE')!r}, "
                f"{env.get('RANK')!r}, {env.get('LOCAL_RANK')!r}); start the run with torchrun."
            ) from None
        if size < 1 or not 0 <= rank < size:
            raise GeoSegError(f"RANK {rank} does not fit WORLD_SIZE {size}; start the run with torchrun.")
        return cls(size, rank, local)


def per_rank_batch(batch: int, world: int) -> int:
    """Chips per process in a step: BATCH_SIZE is the global batch, shared equally."""
    if batch % world:
        lower, upper = world * max(1, batch // world), world * (batch // world + 1)
        options = f"{lower} or {upper}" if lower != batch else f"{upper}"
        raise GeoSegError(
            f"BATCH_SIZE {batch} cannot be shared equally by {world} processes (it is the global batch; each "
            f"process takes BATCH_SIZE / {world}). Use a multiple of {world}, e.g. {options}.",
            param="BATCH_SIZE",
        )
    return batch // world


class TrainShards:
    """This process's chips of each epoch, in batch order (a torch Sampler: `__iter__`, `__len__`).

    The shuffle is torch's RandomSampler's from the same generator, draw for draw (it draws a second,
    unused permutation at the end of every epoch; so does this), so one process trains exactly as it
    did before DDP existed and a resumed run continues the same sequence at any number of processes.
    Process r takes the r-th of `world` equal pieces of every global batch. The last, partial batch is
    cut to a multiple of `world` chips (equal pieces: DDP averages the processes' gradients), and left
    out when that leaves no chip, or one chip per process where a batch holds more (no BatchNorm
    statistics from a single chip; one process: as before, a last batch of 1 is dropped)."""

    def __init__(self, n: int, batch: int, world: World, generator: Generator) -> None:
        self.n, self.batch, self.world, self.generator = n, batch, world, generator
        self.piece = per_rank_batch(batch, world.size)
        tail = n % batch
        tail_piece = tail // world.size
        keep_tail = tail_piece > 1 or (tail_piece == 1 and (self.piece == 1 or n < batch))
        self.batches = n // batch + (1 if keep_tail else 0)
        self.tail_piece = tail_piece if keep_tail else 0

    def __iter__(self) -> Iterator[int]:
        import torch

        order = torch.randperm(self.n, generator=self.generator).tolist()
        torch.randperm(self.n, generator=self.generator)  # RandomSampler's empty remainder draw
        r = self.world.rank
        for b in range(self.batches):
            chunk = order[b * self.batch : (b + 1) * self.batch]
            size = len(chunk) // self.world.size
            yield from chunk[r * size : (r + 1) * size]

    def __len__(self) -> int:
        return (self.batches - (1 if self.tail_piece else 0)) * self.piece + self.tail_piece


class ValShards:
    """Validation chips in order, shared out by whole batches (process r: batches r, r + N, …), so every
    batch is the one a single process evaluates and the summed loss and confusion matrix are its own."""

    def __init__(self, n: int, batch: int, world: World) -> None:
        self.n, self.batch, self.world = n, batch, world

    def _indices(self) -> list[int]:
        out: list[int] = []
        for start in range(self.world.rank * self.batch, self.n, self.world.size * self.batch):
            out.extend(range(start, min(start + self.batch, self.n)))
        return out

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        return len(self._indices())


def augment_shard(x: Tensor, y: Tensor, generator: Generator, world: World) -> tuple[Tensor, Tensor]:
    """`augment_batch` of this process's piece as it would be augmented within the whole global batch:
    the piece sits at its place in a batch of zeros, so every process draws the whole batch's random
    numbers (their generators stay equal, as a resumed run at another N needs) and takes its own."""
    from .dataset import augment_batch

    if not world.enabled:
        return augment_batch(x, y, generator)
    n = x.shape[0]
    at = slice(world.rank * n, (world.rank + 1) * n)
    big_x = x.new_zeros((n * world.size, *x.shape[1:]))
    big_y = y.new_zeros((n * world.size, *y.shape[1:]))
    big_x[at], big_y[at] = x, y
    ax, ay = augment_batch(big_x, big_y, generator)
    return ax[at].contiguous(), ay[at].contiguous()


class Group:
    """The run's process group; with one process every method is the identity (no torch.distributed)."""

    def __init__(self, world: World | None = None, device: str = "cpu") -> None:
        self.world, self.device = world or World(), device

    @property
    def enabled(self) -> bool:
        return self.world.enabled

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes the outputs and reports progress."""
        return self.world.rank == 0

    def _tensor(self, values: Any) -> Tensor:
        import torch

        return torch.as_tensor(np.asarray(values, dtype=np.float64), device=self.device)

    def _status(self, status: int, message: str) -> None:
        """All processes: sum of (cancelled, failed) flags; when any is set, everyone learns who and why
        and raises (the process that failed re-raises its own error in `fail`)."""
        import torch.distributed as dist

        flags = self._tensor([status == CANCELLED, status == FAILED])
        dist.all_reduce(flags)
        cancelled, failed = (int(v) for v in flags.tolist())
        if not (cancelled or failed):
            return
        reports: list[Any] = [None] * self.world.size
        dist.all_gather_object(reports, (self.world.rank, status, message))
        if status != OK:
            return
        rank, _, text = next(r for r in reports if r[1] == (FAILED if failed else CANCELLED))
        if not failed:
            raise Cancelled(text)
        raise GeoSegError(f"Process {rank} of {self.world.size} failed: {text}")

    def sums(self, values: Any = ()) -> np.ndarray:
        """Every process calls this at the same point with as many values: their sums over the processes.
        Raises in every process when another one failed or was cancelled (see `fail`)."""
        if not self.enabled:
            return np.asarray(values, dtype=np.float64)
        import torch.distributed as dist

        self._status(OK, "")
        total = self._tensor(values)
        if total.numel():
            dist.all_reduce(total)
        return total.cpu().numpy()

    def barrier(self) -> None:
        self.sums(())

    def fail(self, error: BaseException) -> NoReturn:
        """Tell the other processes (waiting in `sums`) that this one stops, then raise `error`."""
        if self.enabled:
            cancelled = isinstance(error, Cancelled)
            text = str(error) if isinstance(error, GeoSegError) else f"{type(error).__name__}: {first_line(error)}"
            self._status(CANCELLED if cancelled else FAILED, text)
        raise error

    def together(self, work: Callable[[], T]) -> T:
        """`work()` in every process, then agree: all go on, or all raise (the first failure's message)."""
        try:
            result = work()
        except BaseException as e:  # noqa: BLE001  (any error: the others must hear of it)
            self.fail(e)
        self.barrier()
        return result

    def main_first(self, work: Callable[[], T]) -> T:
        """`work()` in rank 0, then in the others (e.g. a download into a shared cache: one fetches it)."""
        if not self.enabled:
            return work()
        result: T | None = None
        for turn in (True, False):
            if self.main == turn:
                try:
                    result = work()
                except BaseException as e:  # noqa: BLE001
                    self.fail(e)
            self.barrier()
        return result  # type: ignore[return-value]  # set in this process's turn

    def on_main(self, work: Callable[[], object]) -> None:
        """`work()` in rank 0 only (the writes); the others wait for it and stop with it when it fails."""
        self.together(lambda: work() if self.main else None)

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model for training steps: DDP over `model` (its parameters as they require grad now)."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.world.local_rank] if self.device == "cuda" else None
        # buffers are not broadcast in every forward (a collective inside the step); rank 0's BatchNorm
        # statistics, the ones saved, reach the others before each validation (`share_buffers`)
        return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)

    def share_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) to every process: all validate the saved model."""
        if not self.enabled:
            return
        import torch.distributed as dist

        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


LOCAL = Group()


@contextmanager
def process_group(world: World, device: str) -> Iterator[Group]:
    """torch.distributed for this run: NCCL on CUDA (each process on the GPU of its LOCAL_RANK), gloo on
    the CPU; destroyed at the end, also after an error."""
    import torch
    import torch.distributed as dist

    if device == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise GeoSegError(
                f"DEVICE: process {world.rank} (local rank {world.local_rank}) has no GPU of its own: this machine "
                f"has {torch.cuda.device_count()}. Start at most that many processes per machine (--nproc_per_node)."
            )
        torch.cuda.set_device(world.local_rank)  # "cuda" below means this process's GPU
    backend = "nccl" if device == "cuda" and dist.is_nccl_available() else "gloo"  # (Windows: no NCCL)
    dist.init_process_group(backend, timeout=TIMEOUT, world_size=world.size, rank=world.rank)
    try:
        yield Group(world, device)
    finally:
        dist.destroy_process_group()


@contextmanager
def quiet_unless_main(group: Group) -> Iterator[None]:
    """Only rank 0 logs progress (the others' INFO lines would repeat it N times); warnings still show."""
    logger = logging.getLogger("geoseg")
    level = logger.level
    if not group.main:
        logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


# ---------------------------------------------------------------- progress lines of rank 0 (for core.torchrun)
def _emit(kind: str, payload: dict[str, Any]) -> None:
    print(PREFIX + json.dumps({"type": kind, **payload}), flush=True)


def progress_lines(progress: Progress, report: Report | None) -> tuple[Progress, Report | None]:
    """`progress` and `report`, also printed as `@geoseg` lines when the launcher asked for them."""
    if os.environ.get(PROGRESS_ENV) != "1":
        return progress, report

    def progress_line(f: float) -> None:
        progress(f)
        _emit("progress", {"fraction": f})

    def report_line(r: BatchReport | EpochReport) -> None:
        if report is not None:
            report(r)
        _emit("batch" if isinstance(r, BatchReport) else "epoch", asdict(r))

    return progress_line, report_line


def emit_result(r: TrainResult) -> None:
    if os.environ.get(PROGRESS_ENV) == "1":
        _emit("result", {**{k: v for k, v in asdict(r).items() if k != "card"}, "card": r.card.to_json()})


def parse_line(line: str) -> tuple[str, Any] | None:
    """("progress", fraction) | ("batch", BatchReport) | ("epoch", EpochReport) | ("result", TrainResult);
    None for any other line (or a damaged one)."""
    from .card import ModelCard

    if not line.startswith(PREFIX):
        return None
    try:
        data = json.loads(line[len(PREFIX) :])
        kind = data.pop("type")
        if kind == "progress":
            return kind, float(data["fraction"])
        if kind == "result":
            data["card"] = ModelCard.from_json(data["card"])
        record = {"batch": BatchReport, "epoch": EpochReport, "result": TrainResult}[kind]
        return kind, record(**data)
    except (ValueError, TypeError, KeyError, AttributeError, GeoSegError):
        return None
