"""Training: chips folder → best checkpoint (`.pt`), ONNX model and per-epoch metrics CSV.

AdamW with a one-cycle or cosine schedule, validation every epoch, best checkpoint by
validation mIoU, early stopping, resume, AMP and channels_last on CUDA. Cancel is checked at
every batch; the last completed epoch's checkpoint always stays usable.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from . import __version__
from .card import recommended_tiling
from .checkpoint import load_checkpoint, save_model
from .dataset import ChipDataset, ChipsFolder, augment_batch, open_chips
from .errors import Cancelled, GeoSegError
from .metrics import confusion_matrix, metrics_from_confusion
from .options import ARCHITECTURES, CLASS_WEIGHTS, DEVICES, IGNORE_INDEX, LOSSES, SCHEDULES
from .staging import check_new_file

log = logging.getLogger("geoseg")

Progress = Callable[[float], None]
IsCancelled = Callable[[], bool]


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
    model_options: dict = field(default_factory=dict)


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


def output_paths(model_path: str) -> dict[str, str]:
    """The files a run owns, all beside OUTPUT_MODEL with the same stem."""
    stem = model_path[:-3] if model_path.endswith(".pt") else model_path
    return {"model": stem + ".pt", "onnx": stem + ".onnx", "metrics": stem + ".metrics.csv",
            "last": stem + ".last.pt"}


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
    if not os.path.isdir(folder):
        raise GeoSegError(f"OUTPUT_MODEL: folder {folder} does not exist.")
    if not os.access(folder, os.W_OK) or folder.startswith(("/sys", "/proc")):
        raise GeoSegError(f"OUTPUT_MODEL: cannot write in {folder}.")


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


class _Run:
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

    def train_epoch(self, epoch: int, progress: Progress, cancelled: IsCancelled) -> float:
        import torch

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


def _nan_to_none(values: list[float]) -> list[float | None]:
    return [None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v) for v in values]


def train(p: TrainParams, progress: Progress = lambda f: None, cancelled: IsCancelled = lambda: False,
          report: Callable[[EpochReport], None] | None = None) -> TrainResult:
    """Train as described by `p`; raise GeoSegError (or Cancelled) on failure."""
    validate(p)
    chips = open_chips(p.chips_dir, p.ignore_background)
    device = resolve_device(p.device)
    from ..models.export import export_onnx  # torch and onnx only now that work starts

    run = _Run(p, chips, device)
    if p.resume:
        run.resume()
    created = not p.resume
    log.info("Training %s on %s: %d training / %d validation chips, %d classes, device %s.", p.architecture,
             chips.path, len(chips.train), len(chips.validation), len(chips.classes), device)
    stopped_early = False
    try:
        for epoch in range(run.start_epoch, p.epochs):
            t0 = time.perf_counter()
            train_loss = run.train_epoch(epoch, progress, cancelled)
            val_loss, cm = run.validate_epoch(cancelled, epoch)
            m = metrics_from_confusion(cm)
            miou = 0.0 if math.isnan(m.mean_iou) else float(m.mean_iou)
            run.history.append({
                "epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "val_oa": float(m.overall_accuracy),
                "val_miou": miou, "val_macro_f1": float(np.nan_to_num(m.macro_f1)),
                "per_class_iou": _nan_to_none(list(m.iou)), "lr": run.optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - t0})
            if miou > run.best_miou:
                run.best_miou, run.best_epoch = miou, epoch + 1
                save_model(run.paths["model"], run.model.state_dict(), run.card())
            run.save_last(epoch + 1)
            run.write_metrics()
            created = False  # from here on the files hold a usable model: keep them whatever happens
            h = run.history[-1]
            log.info("epoch %d/%d: train loss %.4f, val loss %.4f, val mIoU %.4f (best %.4f, epoch %d)",
                     epoch + 1, p.epochs, train_loss, val_loss, miou, run.best_miou, run.best_epoch)
            if report is not None:
                report(EpochReport(epoch + 1, p.epochs, train_loss, val_loss, miou, h["val_oa"], h["val_macro_f1"],
                                   h["per_class_iou"], run.best_epoch, h["seconds"]))
            if p.patience and epoch + 1 - run.best_epoch >= p.patience:
                log.info("Early stop: no better validation mIoU for %d epochs.", p.patience)
                stopped_early = True
                break
        best = load_checkpoint(run.paths["model"])
        run.model.load_state_dict(best["state_dict"])
        card = best["card"]
        tmp = os.path.join(os.path.dirname(os.path.abspath(run.paths["onnx"])),
                           f".{os.path.basename(run.paths['onnx'])}.partial.onnx")
        try:
            export_onnx(run.model.to("cpu").eval(), chips.in_channels, tmp, metadata={"geoseg": _json(card)})
            os.replace(tmp, run.paths["onnx"])
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        progress(1.0)
    except BaseException:
        if created:  # failed or cancelled before the first epoch finished: leave nothing behind
            for key in ("model", "last", "metrics", "onnx"):
                if os.path.exists(run.paths[key]):
                    os.remove(run.paths[key])
        raise
    return TrainResult(run.paths["model"], run.paths["onnx"], run.paths["metrics"], run.best_epoch,
                       run.best_miou, len(run.history), stopped_early, device, card, run.history)


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj)


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
    folder = os.path.dirname(os.path.abspath(onnx_path))
    tmp = os.path.join(folder, f".{os.path.basename(onnx_path)}.partial.onnx")
    try:
        export_onnx(model.eval(), card["in_channels"], tmp, metadata={"geoseg": _json(card)})
        os.replace(tmp, onnx_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return onnx_path
