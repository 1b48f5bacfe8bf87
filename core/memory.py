"""Out-of-memory handling shared by training and segmentation: recognise an OOM from any
backend, simulate one on CPU with a memory budget, and halve the batch instead of failing.

Why: a CUDA OOM (or a CPU machine swapping to death) is the commonest way a long run dies; the
right answer is almost always "the same run with half the batch", and the user should be told.
"""

from __future__ import annotations

import logging
import os

from .errors import GeoSegError, first_line

log = logging.getLogger("geoseg")

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
        raise GeoSegError(f"{BUDGET_ENV} must be a number of megabytes "
                          f"(got {os.environ.get(BUDGET_ENV)!r}).") from None


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
    return any(s in text for s in ("out of memory", "failed to allocate memory", "cudaerrormemoryallocation",
                                   "bad_alloc", "cuda_error_out_of_memory"))


def halve_batch(batch: int, exc: BaseException, what: str) -> int:
    """The next batch size after an OOM at `batch`, with a warning; a clear error at batch 1."""
    if batch <= 1:
        raise GeoSegError(f"Out of memory in {what} even with batch size 1 ({first_line(exc)}). "
                          f"Use a smaller chip size or model, or the CPU.") from None
    new = batch // 2
    log.warning("Out of memory in %s at batch size %d; retrying with batch size %d.", what, batch, new)
    return new


def release_cuda_cache() -> None:
    """Give cached CUDA blocks back after an OOM, when torch is loaded at all."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
