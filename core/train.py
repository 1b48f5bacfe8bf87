"""Training: chips folder → best checkpoint (`.pt`), ONNX model and per-epoch metrics CSV.

AdamW with a one-cycle or cosine schedule, validation every epoch, best checkpoint by
validation mIoU, early stopping, resume, AMP and channels_last on CUDA. Cancel is checked at
every batch; the last completed epoch's checkpoint always stays usable.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .checkpoint import load_checkpoint, save_model
from .dataset import open_chips
from .errors import GeoSegError, IsCancelled, Progress
from .metrics import metrics_from_confusion
from .options import ARCHITECTURES, CLASS_WEIGHTS, DEVICES, LOSSES, SCHEDULES
from .staging import check_new_file
from .trainer import Run, nan_to_none, output_paths

log = logging.getLogger("geoseg")



@dataclass(frozen=True)
class TrainParams:
    """Everything training needs; built by the dialog, the algorithm and the CLI alike."""

    chips_dir: str
    output_model: str
    architecture: str = "unet"
    epochs: int = 20
    batch_size: int = 8
    learning_rate: float = 1e-3
    loss: str = "dice_ce"
    class_weights: str = "none"
    ignore_background: bool = False
    device: str = "auto"
    seed: int = 0
    schedule: str = "onecycle"
    weight_decay: float = 1e-4
    patience: int = 0  # epochs without improvement before stopping; 0 = never stop early
    augment: bool = True
    resume: bool = False
    num_workers: int | None = None  # None: chosen from the CPU count
    memory_budget_mb: float = 0.0  # estimated memory of a training step; 0: $GEOSEG_MEMORY_BUDGET_MB or none
    model_options: dict = field(default_factory=dict)


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
    card: dict
    history: list[dict]


def resolve_device(name: str) -> str:
    import torch

    if name not in DEVICES:
        raise GeoSegError(f"DEVICE must be one of {', '.join(DEVICES)} (got '{name}').")
    if name == "cuda" and not torch.cuda.is_available():
        raise GeoSegError(f"DEVICE: CUDA was requested, but this torch ({torch.__version__}) sees no CUDA "
                          "device. Choose auto or cpu, or install a CUDA build of torch.")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def validate(p: TrainParams) -> None:
    """Cheap checks before reading any chip."""
    if p.architecture not in ARCHITECTURES:
        raise GeoSegError(f"ARCHITECTURE must be one of {', '.join(ARCHITECTURES)} (got '{p.architecture}').")
    if p.loss not in LOSSES:
        raise GeoSegError(f"LOSS must be one of {', '.join(LOSSES)} (got '{p.loss}').")
    if p.class_weights not in CLASS_WEIGHTS:
        raise GeoSegError(f"CLASS_WEIGHTS must be one of {', '.join(CLASS_WEIGHTS)} (got '{p.class_weights}').")
    if p.schedule not in SCHEDULES:
        raise GeoSegError(f"SCHEDULE must be one of {', '.join(SCHEDULES)} (got '{p.schedule}').")
    if p.epochs < 1:
        raise GeoSegError(f"EPOCHS must be at least 1 (got {p.epochs}).")
    if p.batch_size < 1:
        raise GeoSegError(f"BATCH_SIZE must be at least 1 (got {p.batch_size}).")
    if not p.memory_budget_mb >= 0:
        raise GeoSegError(f"MEMORY_BUDGET must be 0 (none) or a number of megabytes (got {p.memory_budget_mb}).")
    if not 0 < p.learning_rate < 1:
        raise GeoSegError(f"LEARNING_RATE must be between 0 and 1 (got {p.learning_rate}).")
    from ..models.registry import validate_options  # no torch import

    try:
        validate_options(p.architecture, **p.model_options)
    except ValueError as e:
        raise GeoSegError(f"MODEL_OPTIONS: {e}.") from None
    if not p.output_model:
        raise GeoSegError("OUTPUT_MODEL: no output file given.")
    if not p.output_model.endswith(".pt"):
        raise GeoSegError(f"OUTPUT_MODEL must end in .pt (got {p.output_model}); the ONNX model is written "
                          "beside it with the same name and .onnx.")
    paths = output_paths(p.output_model)
    if p.resume:
        if not os.path.isfile(paths["last"]):
            raise GeoSegError(f"RESUME: there is no training state to resume ({paths['last']} not found).")
    else:
        for key in ("model", "onnx", "metrics", "last"):
            check_new_file(paths[key], "OUTPUT_MODEL")
    folder = os.path.dirname(os.path.abspath(p.output_model))
    if not os.path.isdir(folder):  # created in train(), like every other GeoSeg output's folder
        parent = folder
        while not os.path.isdir(parent):
            parent = os.path.dirname(parent)
        folder = parent
    if not os.access(folder, os.W_OK) or folder.startswith(("/sys", "/proc")):
        raise GeoSegError(f"OUTPUT_MODEL: cannot write in {folder}.")


def train(p: TrainParams, progress: Progress = lambda f: None, cancelled: IsCancelled = lambda: False,
          report: Callable[[BatchReport | EpochReport], None] | None = None) -> TrainResult:
    """Train as described by `p`; raise GeoSegError (or Cancelled) on failure."""
    validate(p)
    chips = open_chips(p.chips_dir, p.ignore_background)
    device = resolve_device(p.device)
    from ..models.export import export_onnx  # torch and onnx only now that work starts

    out_dir = os.path.dirname(os.path.abspath(p.output_model))
    new_dir = not os.path.isdir(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    run = Run(p, chips, device)
    if p.resume:
        run.resume()
    created = not p.resume
    log.info("Training %s on %s: %d training / %d validation chips, %d classes, device %s.", p.architecture,
             chips.path, len(chips.train), len(chips.validation), len(chips.classes), device)
    stopped_early = False
    try:
        for epoch in range(run.start_epoch, p.epochs):
            t0 = time.perf_counter()
            train_loss = run.train_epoch(epoch, progress, cancelled, report)
            val_loss, cm = run.validate_epoch(cancelled, epoch)
            m = metrics_from_confusion(cm)
            miou = 0.0 if math.isnan(m.mean_iou) else float(m.mean_iou)
            run.history.append({
                "epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "val_oa": float(m.overall_accuracy),
                "val_miou": miou, "val_macro_f1": float(np.nan_to_num(m.macro_f1)),
                "per_class_iou": nan_to_none(list(m.iou)), "lr": run.optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - t0, "batch_size": run.batch_size})
            if miou > run.best_miou:
                run.best_miou, run.best_epoch = miou, epoch + 1
                save_model(run.paths["model"], run.model.state_dict(), run.card())
            run.save_last(epoch + 1)
            run.write_metrics()
            created = False  # from here on the files hold a usable model: keep them whatever happens
            h = run.history[-1]
            log.info("epoch %d/%d: train loss %.4f, val loss %.4f, val mIoU %.4f (best %.4f, epoch %d)%s",
                     epoch + 1, p.epochs, train_loss, val_loss, miou, run.best_miou, run.best_epoch,
                     f", batch size {run.batch_size}" if run.batch_size != p.batch_size else "")
            if report is not None:
                report(EpochReport(epoch + 1, p.epochs, train_loss, val_loss, miou, h["val_oa"], h["val_macro_f1"],
                                   h["per_class_iou"], run.best_epoch, h["seconds"], run.batch_size))
            if p.patience and epoch + 1 - run.best_epoch >= p.patience:
                log.info("Early stop: no better validation mIoU for %d epochs.", p.patience)
                stopped_early = True
                break
        best = load_checkpoint(run.paths["model"])
        run.model.load_state_dict(best["state_dict"])
        card = best["card"]
        # export_onnx writes beside the target and renames only a checked model
        export_onnx(run.model.to("cpu").eval(), chips.in_channels, run.paths["onnx"],
                    metadata={"geoseg": json.dumps(card)})
        progress(1.0)
    except BaseException:
        if created:  # failed or cancelled before the first epoch finished: leave nothing behind
            for key in ("model", "last", "metrics", "onnx"):
                if os.path.exists(run.paths[key]):
                    os.remove(run.paths[key])
            if new_dir and not os.listdir(out_dir):
                os.rmdir(out_dir)
        raise
    return TrainResult(run.paths["model"], run.paths["onnx"], run.paths["metrics"], run.best_epoch,
                       run.best_miou, len(run.history), stopped_early, device, card, run.history)


def export_model_onnx(model_path: str, onnx_path: str) -> str:
    """`.pt` → `.onnx` with the same card (geoseg:exportonnx)."""
    from ..models.export import export_onnx
    from .checkpoint import model_from_checkpoint

    if not onnx_path.endswith(".onnx"):
        raise GeoSegError(f"OUTPUT must end in .onnx (got {onnx_path}).")
    check_new_file(onnx_path, "OUTPUT")
    state = load_checkpoint(model_path)
    model = model_from_checkpoint(state)
    card = state["card"]
    export_onnx(model.eval(), card["in_channels"], onnx_path, metadata={"geoseg": json.dumps(card)})
    return onnx_path
