"""One training run's state: model, data, optimiser, schedule, AMP, and what a checkpoint
saves and restores. `core.train.train` drives it epoch by epoch."""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np

from . import __version__
from .card import recommended_tiling
from .checkpoint import load_checkpoint, save_model
from .dataset import ChipDataset, ChipsFolder, augment_batch
from .errors import Cancelled, GeoSegError, IsCancelled, Progress
from .metrics import confusion_matrix
from .options import IGNORE_INDEX

if TYPE_CHECKING:
    from .train import TrainParams

log = logging.getLogger("geoseg")



def output_paths(model_path: str) -> dict[str, str]:
    """The files a run owns, all beside OUTPUT_MODEL with the same stem."""
    stem = model_path[:-3] if model_path.endswith(".pt") else model_path
    return {"model": stem + ".pt", "onnx": stem + ".onnx", "metrics": stem + ".metrics.csv",
            "last": stem + ".last.pt"}


def class_weight_tensor(p: TrainParams, chips: ChipsFolder):
    if p.class_weights == "none":
        return None
    from .losses import inverse_frequency_weights

    counts = chips.dataset["class_pixel_counts_by_split"]["train"]
    return inverse_frequency_weights([counts.get(str(c["value"]), 0) for c in chips.classes])


def default_workers() -> int:
    """Loader processes: none on 2 cores (they would compete with the training step), and none
    where workers would be started by re-running `sys.executable` (Windows/macOS spawn): inside
    QGIS that is the QGIS program itself."""
    import multiprocessing
    import sys

    cpus = os.cpu_count() or 1
    exe = os.path.basename(sys.executable).lower()
    if cpus <= 2 or multiprocessing.get_start_method(allow_none=True) not in (None, "fork") or \
            not exe.startswith("python"):
        return 0
    return min(4, cpus // 2)


class Run:
    """One training run's state; split out of `train` so each step reads on its own."""

    def __init__(self, p: TrainParams, chips: ChipsFolder, device: str) -> None:
        import torch

        from ..models.receptive import receptive_field_radius
        from ..models.registry import build_model
        from .losses import build_loss

        self.p, self.chips, self.device = p, chips, device
        self.paths = output_paths(p.output_model)
        torch.manual_seed(p.seed)
        self.model = build_model(p.architecture, chips.in_channels, len(chips.classes), **p.model_options)
        self.radius = receptive_field_radius(self.model, chips.in_channels, min(chips.chip_size, 256))
        self.model.to(device)
        if device == "cuda":
            self.model.to(memory_format=torch.channels_last)
        weights = class_weight_tensor(p, chips)
        self.weights = weights
        self.loss_fn = build_loss(p.loss, len(chips.classes),
                                  None if weights is None else weights.to(device), IGNORE_INDEX)
        workers = default_workers() if p.num_workers is None else p.num_workers
        self.loader_gen = torch.Generator().manual_seed(p.seed)
        self.aug_gen = torch.Generator().manual_seed(p.seed + 1)
        train_ds = ChipDataset(chips, chips.train)
        drop_last = len(train_ds) > p.batch_size and len(train_ds) % p.batch_size == 1  # no batch of 1 for BN
        self.train_loader = torch.utils.data.DataLoader(
            train_ds, batch_size=p.batch_size, shuffle=True, generator=self.loader_gen, num_workers=workers,
            drop_last=drop_last, pin_memory=device == "cuda", persistent_workers=workers > 0)
        val_rows = chips.validation or chips.train
        if not chips.validation:
            log.warning("chips.csv has no validation chips; validating on the training chips (optimistic).")
        self.val_loader = torch.utils.data.DataLoader(
            ChipDataset(chips, val_rows), batch_size=p.batch_size, shuffle=False, num_workers=workers,
            pin_memory=device == "cuda", persistent_workers=workers > 0)
        self.steps = len(self.train_loader)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=p.learning_rate, weight_decay=p.weight_decay)
        total = p.epochs * self.steps
        if p.schedule == "onecycle":
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(self.optimizer, max_lr=p.learning_rate,
                                                                 total_steps=max(total, 2))
        else:
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(total, 1))
        self.amp_dtype = None
        self.scaler = None
        if device == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            if self.amp_dtype == torch.float16:
                self.scaler = torch.amp.GradScaler("cuda")
        self.start_epoch = 0
        self.best_miou = -1.0
        self.best_epoch = 0
        self.history: list[dict] = []

    # ------------------------------------------------------------ state
    def card(self) -> dict:
        ds = self.chips.dataset
        best = next((h for h in self.history if h["epoch"] == self.best_epoch), None)
        names = [c["name"] for c in self.chips.classes]
        return {
            "geoseg_version": __version__,
            "classes": self.chips.classes,
            "bands": ds["bands"],
            "in_channels": self.chips.in_channels,
            "chip_size": self.chips.chip_size,
            "normalization": {"mean": ds["normalization"]["mean"], "std": ds["normalization"]["std"]},
            "architecture": self.p.architecture,
            "architecture_options": self.model.options,
            "crs": ds.get("crs"),
            "pixel_size": ds.get("pixel_size"),
            "data_type": ds.get("data_type"),
            "nodata": ds.get("nodata"),
            "background": ds.get("background"),
            "ignore_background": self.p.ignore_background,
            "recommended": recommended_tiling(self.chips.chip_size, self.radius),
            "metrics": None if best is None else {
                "epoch": best["epoch"], "val_miou": best["val_miou"], "val_oa": best["val_oa"],
                "val_macro_f1": best["val_macro_f1"],
                "per_class_iou": dict(zip(names, best["per_class_iou"], strict=True))},
            "training": {k: v for k, v in asdict(self.p).items() if k not in ("chips_dir", "output_model")},
            "epochs_run": len(self.history),
            "split": ds.get("split"),
            "dataset_sha256": self.chips.sha256,
        }

    def resume(self) -> None:
        import torch

        state = load_checkpoint(self.paths["last"], "RESUME")
        if state.get("dataset_sha256") != self.chips.sha256:
            raise GeoSegError("RESUME: the chips folder differs from the one this run was trained on "
                              "(chips.csv or dataset.json changed); start a new run instead.")
        if state.get("architecture") != self.p.architecture:
            raise GeoSegError(f"RESUME: the saved run trains {state.get('architecture')}, not {self.p.architecture}.")
        self.model.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.loader_gen.set_state(state["loader_rng"])
        self.aug_gen.set_state(state["aug_rng"])
        torch.set_rng_state(state["torch_rng"])
        self.start_epoch = int(state["epoch"])
        self.best_miou = float(state["best_miou"])
        self.best_epoch = int(state["best_epoch"])
        self.history = [dict(h) for h in state["history"]]
        log.info("Resuming %s after epoch %d (best val mIoU %.4f at epoch %d).", self.paths["model"],
                 self.start_epoch, self.best_miou, self.best_epoch)

    def save_last(self, epoch: int) -> None:
        import torch

        save_model(self.paths["last"], self.model.state_dict(), self.card(), {
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "loader_rng": self.loader_gen.get_state(), "aug_rng": self.aug_gen.get_state(),
            "torch_rng": torch.get_rng_state(), "epoch": epoch, "best_miou": self.best_miou,
            "best_epoch": self.best_epoch, "history": self.history, "dataset_sha256": self.chips.sha256,
            "architecture": self.p.architecture})

    # ------------------------------------------------------------ epochs
    def _forward(self, x):
        import torch

        if self.amp_dtype is not None:
            with torch.autocast("cuda", dtype=self.amp_dtype):
                return self.model(x)
        return self.model(x)

    def _loss(self, out, y):
        if isinstance(out, list | tuple):  # deep supervision: every head learns the target
            return sum(self.loss_fn(o.float(), y) for o in out) / len(out)
        return self.loss_fn(out.float(), y)

    def train_epoch(self, epoch: int, progress: Progress, cancelled: IsCancelled,
                    report: Callable[[object], None] | None = None) -> float:
        import torch

        from .train import BatchReport

        self.model.train()
        total, n = 0.0, 0
        for b, (x, y) in enumerate(self.train_loader):
            if cancelled():
                raise Cancelled(self._cancel_message(epoch, b))
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            if self.p.augment:
                x, y = augment_batch(x, y, self.aug_gen)
            if self.device == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            self.optimizer.zero_grad(set_to_none=True)
            loss = self._loss(self._forward(x), y)
            if not torch.isfinite(loss):
                raise GeoSegError(f"Training diverged (loss is {loss.item()}) at epoch {epoch + 1}; lower "
                                  "LEARNING_RATE or check the chips for extreme values.")
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
            self.scheduler.step()
            total += loss.item() * x.shape[0]
            n += x.shape[0]
            progress((epoch + (b + 1) / self.steps) / self.p.epochs)
            if report is not None:
                report(BatchReport(epoch + 1, self.p.epochs, b + 1, self.steps, loss.item()))
        return total / max(n, 1)

    def validate_epoch(self, cancelled: IsCancelled, epoch: int) -> tuple[float, np.ndarray]:
        import torch

        self.model.eval()
        k = len(self.chips.classes)
        cm = np.zeros((k, k), dtype=np.int64)
        total, n = 0.0, 0
        with torch.inference_mode():
            for x, y in self.val_loader:
                if cancelled():
                    raise Cancelled(self._cancel_message(epoch, None))
                x = x.to(self.device, non_blocking=True)
                y = y.to(self.device, non_blocking=True)
                if self.device == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                out = self._forward(x).float()
                total += self.loss_fn(out, y).item() * x.shape[0]
                n += x.shape[0]
                cm += confusion_matrix(y.cpu().numpy(), out.argmax(1).cpu().numpy(), k, IGNORE_INDEX)
        return total / max(n, 1), cm

    def _cancel_message(self, epoch: int, batch: int | None) -> str:
        step = "during validation" if batch is None else f"batch {batch + 1}"
        where = f"Training cancelled in epoch {epoch + 1}, {step}"
        if self.best_epoch:
            return (f"{where}. The best model so far (epoch {self.best_epoch}, validation mIoU "
                    f"{self.best_miou:.4f}) is saved in {self.paths['model']}; train again with RESUME to "
                    "continue.")
        return f"{where}, before the first epoch finished; nothing was written."

    def write_metrics(self) -> None:
        names = [c["name"] for c in self.chips.classes]
        folder = os.path.dirname(os.path.abspath(self.paths["metrics"]))
        tmp = os.path.join(folder, f".{os.path.basename(self.paths['metrics'])}.partial")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["epoch", "train_loss", "val_loss", "val_oa", "val_miou", "val_macro_f1", "lr", "seconds"]
                       + [f"iou_{n}" for n in names])
            for h in self.history:
                w.writerow([h["epoch"], f"{h['train_loss']:.6f}", f"{h['val_loss']:.6f}", f"{h['val_oa']:.6f}",
                            f"{h['val_miou']:.6f}", f"{h['val_macro_f1']:.6f}", f"{h['lr']:.3e}",
                            f"{h['seconds']:.2f}"]
                           + ["" if v is None else f"{v:.6f}" for v in h["per_class_iou"]])
        os.replace(tmp, self.paths["metrics"])


def nan_to_none(values: list[float]) -> list[float | None]:
    return [None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v) for v in values]
