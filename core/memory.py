"""Out-of-memory handling shared by training and segmentation: recognise an OOM from any
backend, simulate one on CPU with a memory budget, and halve the batch instead of failing.

Why: a CUDA OOM (or a CPU machine swapping to death) is the commonest way a long run dies; the
right answer is almost always "the same run with half the batch", and the user should be told.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import GeoSegError, first_line

log = logging.getLogger("geoseg")

T = TypeVar("T")

BUDGET_ENV = "GEOSEG_MEMORY_BUDGET_MB"


class BudgetExceeded(MemoryError):
    """A batch would need more memory than the configured budget (a simulated OOM on CPU)."""


def memory_budget_mb(explicit: float = 0.0) -> float:
    """The budget in MB: an explicit value wins, else $GEOSEG_MEMORY_BUDGET_MB, else 0 (none)."""
    if explicit and explicit > 0:
        return float(explicit)
    try:
        return max(0.0, float(os.environ.get(BUDGET_ENV, "0") or 0))
    except ValueError:
        raise GeoSegError(
            f"{BUDGET_ENV} must be a number of megabytes " f"(got {os.environ.get(BUDGET_ENV)!r})."
        ) from None


def check_budget(need_bytes: float, budget_mb: float, what: str) -> None:
    """Raise BudgetExceeded when `need_bytes` does not fit in `budget_mb` (0 = no budget)."""
    if budget_mb > 0 and need_bytes > budget_mb * 1e6:
        raise BudgetExceeded(f"{what} needs about {_mb(need_bytes / 1e6)} MB, over the {_mb(budget_mb)} MB budget")


def _mb(x: float) -> str:
    """Megabytes for a message: whole numbers, but no "0 MB" for a tiny test budget."""
    return f"{x:.0f}" if x >= 10 else f"{x:.2g}"


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA/CPU OOMs from torch or onnxruntime and for a simulated budget OOM."""
    if isinstance(exc, MemoryError):  # includes BudgetExceeded
        return True
    name = type(exc).__name__
    if name == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError without importing torch here
        return True
    text = str(exc).lower()
    return any(
        s in text
        for s in (
            "out of memory",
            "failed to allocate memory",
            "cudaerrormemoryallocation",
            "bad_alloc",
            "cuda_error_out_of_memory",
        )
    )


def halve_batch(batch: int, exc: BaseException, what: str) -> int:
    """The next batch size after an OOM at `batch`, with a warning; a clear error at batch 1."""
    if batch <= 1:
        raise GeoSegError(
            f"Out of memory in {what} even with batch size 1 ({first_line(exc)}). "
            f"Use a smaller chip size or model, or the CPU."
        ) from None
    new = batch // 2
    log.warning("Out of memory in %s at batch size %d; retrying with batch size %d.", what, batch, new)
    return new


def retry_halving_batch(
    work: Callable[[int], T], batch: int, what: str, halved: Callable[[int], None] = lambda batch: None
) -> tuple[T, int]:
    """`work(batch)`, and after an out of memory (any backend, or over a budget) `work` again at half
    the batch, until it succeeds; (its result, the batch it ran at). Each retry logs the error's
    first line (info) and the halving (warning); `halved(new)` then resets the caller's state for
    the smaller batch. At batch 1 a GeoSegError says what to do; other errors pass through."""
    while True:
        try:
            return work(batch), batch
        except GeoSegError:
            raise
        except Exception as e:  # an OOM comes as RuntimeError, MemoryError or a backend's own error
            if not is_out_of_memory(e):
                raise
            oom = e.with_traceback(None)  # let the failed step's tensors go
        log.info("%s", first_line(oom))
        release_cuda_cache()
        batch = halve_batch(batch, oom, what)
        halved(batch)


def leaf_output_bytes(model: Any, forward: Callable[[], object]) -> int:
    """Bytes of every tensor the leaf modules of `model` output while `forward()` runs: forward
    hooks count them and are removed afterwards (an upper bound of the activation memory)."""
    import torch

    total = 0

    def count(_module, _inputs, output) -> None:
        nonlocal total
        for t in output if isinstance(output, tuple | list) else (output,):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        forward()
    finally:
        for h in hooks:
            h.remove()
    return total


def release_cuda_cache() -> None:
    """Give cached CUDA blocks back after an OOM, when torch is loaded at all."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- estimates before allocating
# A parameter can ask for more memory than any machine has (CHIP_SIZE=100000, a model
# 1,000,000 channels wide); numpy or torch would then fail deep inside with a traceback, or
# the machine would swap. The step estimates its memory from the parameters alone and refuses
# with the figure before anything is allocated or written. The estimates are rough (within
# ×2) and only refuse what cannot fit the whole machine (or the explicit memory budget).
TRAIN_ACTIVATION_FACTOR = 2.5  # as in trainer.py: outputs kept for backward, their gradients, loss temporaries


def machine_memory_bytes(device: str = "cpu") -> float:
    """All the memory of the device: the GPU's for "cuda", else the physical RAM (0: unknown)."""
    if device == "cuda":
        try:
            import torch

            return float(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)
        except Exception:  # noqa: BLE001  (no CUDA torch: nothing to compare with)
            return 0.0
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):  # Windows: no sysconf
        return 0.0


def _gb(b: float) -> str:
    gb = b / 1e9
    return f"{gb:.0f} GB" if gb >= 10 else f"{gb:.2g} GB" if gb >= 0.01 else f"{b / 1e6:.2g} MB"


def require_memory(
    need_bytes: float, what: str, param: str, hint: str, budget_mb: float = 0.0, device: str = "cpu"
) -> None:
    """GeoSegError naming `param` when `need_bytes` exceeds the budget, or else the whole machine."""
    limit = budget_mb * 1e6 if budget_mb > 0 else machine_memory_bytes(device)
    if limit > 0 and need_bytes > limit:
        where = (
            f"the {_mb(budget_mb)} MB memory budget"
            if budget_mb > 0
            else f"the {_gb(limit)} of {'this GPU' if device == 'cuda' else 'this machine'}"
        )
        raise GeoSegError(
            f"{param}: {what} needs about {_gb(need_bytes)} of memory, more than {where}. {hint}", param=param
        )


def export_bytes(chip: int, bands: int, itemsize: int, width: int, in_flight: int) -> float:
    """Chip export: `in_flight` chips at a time, each its pixels (bands × itemsize), a float64 copy
    for the band statistics, a validity mask and a label mask; plus one strip of rasterized labels."""
    return float(in_flight) * chip * chip * (bands * (itemsize + 8) + 2) + float(chip) * max(width, chip)


def training_bytes(architecture: str, in_channels: int, classes: int, options: dict, chip: int) -> float:
    """One training step at batch size 1: weights, gradients and AdamW's two moments (16 bytes a
    parameter), activations kept for backward (TRAIN_ACTIVATION_FACTOR × the leaf outputs of one
    forward pass) and the input. Measured on torch's "meta" device: nothing is allocated."""
    import torch

    from ..models.registry import build_model

    with torch.device("meta"):
        model = build_model(
            architecture,
            in_channels,
            classes,
            **{**options, "encoder_weights": None} if "encoder_weights" in options else options,
        )
    params = sum(p.numel() for p in model.parameters())
    try:
        model.eval()
        x = torch.zeros(1, in_channels, chip, chip, device="meta")
        with torch.no_grad():
            acts = leaf_output_bytes(model, lambda: model(x))
    except Exception:  # noqa: BLE001  (an operation without a meta kernel: count the weights alone)
        acts = 0
    return 16.0 * params + TRAIN_ACTIVATION_FACTOR * acts + chip * chip * (4.0 * in_channels + 8)
