"""What a training run reports: per batch, per epoch, and at the end.

Plain records shared by the training driver (`core.train`), the run state (`core.trainer`) and
the front-ends; `core.train` re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .card import ModelCard


@dataclass(frozen=True)
class BatchReport:
    """Sent to the `report` callback after every training batch (live loss)."""

    epoch: int
    epochs: int
    batch: int
    batches: int
    loss: float


@dataclass(frozen=True)
class EpochReport:
    """Sent to the `report` callback after every epoch (the dialog plots these)."""

    epoch: int
    epochs: int
    train_loss: float
    val_loss: float
    val_miou: float
    val_oa: float
    val_macro_f1: float
    per_class_iou: list[float]
    best_epoch: int
    seconds: float
    batch_size: int = 0  # the batch size this epoch ran at (smaller than asked after an out of memory)


@dataclass(frozen=True)
class TrainResult:
    model_path: str
    onnx_path: str
    metrics_path: str
    best_epoch: int
    val_miou: float
    epochs_run: int
    stopped_early: bool
    device: str
    card: ModelCard
    history: list[dict]
