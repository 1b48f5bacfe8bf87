"""One training run's state: model, data, optimiser, schedule, AMP, and what a checkpoint
saves and restores. `core.train.train` drives it epoch by epoch."""

from __future__ import annotations

import csv
import logging
import math
import os
import re
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, NoReturn, cast

import numpy as np

from . import __version__
from .card import ModelCard, card_errors, recommended_tiling
from .checkpoint import load_checkpoint, save_model
from .dataset import ChipDataset, ChipsFolder
from .ddp import LOCAL, Group, TrainShards, ValShards, augment_shard
from .errors import Cancelled, GeoSegError, IsCancelled, Progress, first_line
from .memory import (
    check_budget,
    is_out_of_memory,
    leaf_output_bytes,
    memory_budget_mb,
    release_cuda_cache,
    retry_halving_batch,
)
from .metrics import confusion_matrix
from .options import IGNORE_INDEX
from .reports import BatchReport
from .staging import atomic_write, remove_stale_partials

if TYPE_CHECKING:
    from torch import Tensor
    from torch.utils.data import DataLoader, Dataset

    from .params import TrainParams
    from .weights import ResolvedWeights

log = logging.getLogger("geoseg")

# Memory of a training step ≈ weights, gradients and AdamW's two moments (4 × the parameters)
# + per sample: the layer outputs kept for backward, their gradients and the loss's temporaries
# (ACTIVATION_FACTOR × the outputs of one forward pass) + the input and the mask. Against the
# peak-RSS growth of real CPU steps (torch 2.13; UNet/UNet++/FCN/DeepLabv3+, 64-128 px, batch
# 2-8) it came out between 0.8× and 1.8× the measured figure; for tiny models (a few MB of
# activations) torch's fixed ~20 MB dominates and it is low (0.3×). An estimate for a budget, not a cap.
ACTIVATION_FACTOR = 2.5


def output_paths(model_path: str) -> dict[str, str]:
    """The files a run owns, all beside OUTPUT_MODEL with the same stem."""
    stem = model_path[:-3] if model_path.endswith(".pt") else model_path
    return {"model": stem + ".pt", "onnx": stem + ".onnx", "metrics": stem + ".metrics.csv", "last": stem + ".last.pt"}


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
    if (
        cpus <= 2
        or multiprocessing.get_start_method(allow_none=True) not in (None, "fork")
        or not exe.startswith("python")
    ):
        return 0
    return min(4, cpus // 2)


def effective_model_options(p: TrainParams) -> dict:
    """MODEL_OPTIONS with ENCODER applied (GeoSegError naming the parameter when they disagree or the
    architecture has no ResNet encoder); not yet validated against the architecture."""
    options = dict(p.model_options)
    if p.encoder == "default":
        return options
    if p.architecture not in ("unet", "unetpp", "deeplabv3plus"):
        raise GeoSegError(
            f"ENCODER: {p.architecture} has no ResNet encoder option; use ARCHITECTURE unet, unetpp or deeplabv3plus, "
            "or leave ENCODER at the architecture's default.",
            param="ENCODER",
        )
    if options.get("encoder", p.encoder) != p.encoder:
        raise GeoSegError(
            f"ENCODER is {p.encoder} but MODEL_OPTIONS sets encoder {options['encoder']!r}; set only one.",
            param="ENCODER",
        )
    options["encoder"] = p.encoder
    return options


def check_encoder_params(p: TrainParams, options: dict) -> None:
    """ENCODER_WEIGHTS and FREEZE_ENCODER_EPOCHS against the architecture (cheap: no download, no torch)."""
    from ..models.registry import has_resnet_encoder
    from .weights import check_weights_spec

    resnet = has_resnet_encoder(p.architecture, options)
    spec = (p.encoder_weights or "").strip()
    if spec:
        if not resnet:
            raise GeoSegError(
                f"ENCODER_WEIGHTS: the plain {p.architecture} has no pretrained encoder; set ENCODER to resnet18, "
                "resnet34 or resnet50 (UNet, DeepLabv3+).",
                param="ENCODER_WEIGHTS",
            )
        if options.get("encoder_weights"):
            raise GeoSegError(
                "ENCODER_WEIGHTS and MODEL_OPTIONS encoder_weights are both set; give the weights once.",
                param="ENCODER_WEIGHTS",
            )
        check_weights_spec(spec, str(options.get("encoder", "resnet18")))
    if p.freeze_encoder_epochs < 0:
        raise GeoSegError(
            f"FREEZE_ENCODER_EPOCHS must be 0 or more (got {p.freeze_encoder_epochs}).", param="FREEZE_ENCODER_EPOCHS"
        )
    if p.freeze_encoder_epochs and not (spec or options.get("encoder_weights")):
        raise GeoSegError(
            "FREEZE_ENCODER_EPOCHS: there are no pretrained encoder weights to keep (set ENCODER_WEIGHTS); "
            "a frozen random encoder would stay random.",
            param="FREEZE_ENCODER_EPOCHS",
        )


def card_dict(
    p: TrainParams,
    chips: ChipsFolder,
    options: dict,
    radius: int,
    history: list[dict],
    best_epoch: int,
    encoder: dict | None = None,
) -> dict:
    """The model card (as JSON) of a run: dataset.json's description, the parameters, the metrics so far."""
    ds = chips.dataset
    best = next((h for h in history if h["epoch"] == best_epoch), None)
    names = [c["name"] for c in chips.classes]
    return {
        "geoseg_version": __version__,
        "classes": chips.classes,
        "bands": ds["bands"],
        "in_channels": chips.in_channels,
        "chip_size": chips.chip_size,
        "normalization": {"mean": ds["normalization"]["mean"], "std": ds["normalization"]["std"]},
        "architecture": p.architecture,
        "architecture_options": options,
        **({"encoder": encoder} if encoder is not None else {}),
        "crs": ds.get("crs"),
        "pixel_size": ds.get("pixel_size"),
        "data_type": ds.get("data_type"),
        "nodata": ds.get("nodata"),
        "background": ds.get("background"),
        "ignore_background": p.ignore_background,
        "recommended": recommended_tiling(chips.chip_size, radius),
        "metrics": None
        if best is None
        else {
            "epoch": best["epoch"],
            "val_miou": best["val_miou"],
            "val_oa": best["val_oa"],
            "val_macro_f1": best["val_macro_f1"],
            "per_class_iou": dict(zip(names, best["per_class_iou"], strict=True)),
        },
        "training": {k: v for k, v in asdict(p).items() if k not in ("chips_dir", "output_model", "weights_cache")},
        "epochs_run": len(history),
        "split": ds.get("split"),
        "dataset_sha256": chips.sha256,
    }


# card fields that come from a parameter rather than from the chips folder's dataset.json
CARD_FIELD_PARAMS = {"architecture_options": "MODEL_OPTIONS", "ignore_background": "IGNORE_BACKGROUND"}


def check_card_before_training(p: TrainParams, chips: ChipsFolder, options: dict) -> None:
    """Build the card this run will write, from dataset.json and the parameters, before the first
    epoch and before any output exists: a card GeoSeg would refuse later (and refuse to load) is
    refused now, naming CHIPS (dataset.json) or the parameter at fault."""
    errors = card_errors(card_dict(p, chips, options, 0, [], 0))
    if not errors:
        return
    fields = [m.group(1) for e in errors if (m := re.match(r"card field (\w+)", e))]
    param = next((CARD_FIELD_PARAMS[f] for f in fields if f in CARD_FIELD_PARAMS), None)
    shown = "; ".join(errors[:3]) + (f"; and {len(errors) - 3} more" if len(errors) > 3 else "")
    if param is not None:
        raise GeoSegError(f"{param}: the model card would be invalid ({shown}).", param=param)
    raise GeoSegError(
        f"CHIPS: dataset.json describes the data in a way GeoSeg cannot put in a model card ({shown}); "
        "fix dataset.json, or export the chips again.",
        param="CHIPS",
    )


def _as_dataset(ds: ChipDataset) -> Dataset[tuple[Tensor, Tensor]]:
    """`ds` typed as torch's Dataset: it is map-style (`__len__`, `__getitem__`), all DataLoader uses;
    dataset.py does not subclass torch's Dataset so that it imports without torch."""
    return cast("Dataset[tuple[Tensor, Tensor]]", ds)


class Run:
    """One training run's state; split out of `train` so each step reads on its own."""

    def __init__(
        self,
        p: TrainParams,
        chips: ChipsFolder,
        device: str,
        encoder_weights: ResolvedWeights | None = None,
        group: Group = LOCAL,
    ) -> None:
        import torch

        from ..models.receptive import receptive_field_radius
        from ..models.registry import build_model
        from .losses import build_loss

        self.p, self.chips, self.device, self.group = p, chips, device, group
        self.paths = output_paths(p.output_model)
        torch.manual_seed(p.seed)
        options = effective_model_options(p)
        try:
            self.model = build_model(p.architecture, chips.in_channels, len(chips.classes), **options)
        except ValueError as e:  # encoder_weights that are not a matching torchvision state dict
            raise GeoSegError(f"MODEL_OPTIONS: {first_line(e, 400)}.", param="MODEL_OPTIONS") from None
        self.encoder_card = self._init_encoder(encoder_weights)
        self.radius = receptive_field_radius(self.model, chips.in_channels, min(chips.chip_size, 256))
        if group.enabled and device == "cuda":  # batch statistics over all GPUs' pieces of the batch
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.model.to(device)
        if device == "cuda":
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stub omits memory_format
        weights = class_weight_tensor(p, chips)
        self.loss_fn = build_loss(
            p.loss, len(chips.classes), None if weights is None else weights.to(device), IGNORE_INDEX
        )
        self.workers = default_workers() if p.num_workers is None else p.num_workers
        self.loader_gen = torch.Generator().manual_seed(p.seed)
        self.aug_gen = torch.Generator().manual_seed(p.seed + 1)
        if not chips.validation:
            log.warning("chips.csv has no validation chips; validating on the training chips (optimistic).")
        self.budget_mb = memory_budget_mb(p.memory_budget_mb)
        self.step_memory = self._measure_step_memory() if self.budget_mb > 0 else (0.0, 0.0)
        self.batch_size = self.val_batch_size = p.batch_size
        self._build_loaders()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=p.learning_rate, weight_decay=p.weight_decay)
        self._build_scheduler()
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
        self._start_state: dict | None = None  # the state the first epoch of this process starts from
        self.net: torch.nn.Module = self.model  # what training steps run: DDP over the model (`wrap`)
        self._wrapped_frozen: bool | None = None

    def wrap(self) -> None:
        """(Re)wrap the model in DDP for the parameters that train now (every process calls it at the same
        point: DDP's constructor is a collective). Freezing the encoder changes them, so it wraps again."""
        frozen = self._encoder_frozen()
        if self.group.enabled and frozen != self._wrapped_frozen:
            self.net = self.group.wrap(self.model)
            self._wrapped_frozen = frozen

    def _encoder_frozen(self) -> bool:
        encoder = getattr(self.model, "encoder", None)
        return encoder is not None and not any(q.requires_grad for q in encoder.parameters())

    def _init_encoder(self, weights: ResolvedWeights | None) -> dict | None:
        """Load ENCODER_WEIGHTS into the ResNet encoder; the card's `encoder` record (None: no ResNet)."""
        from ..models.resnet import ResNetEncoder, load_torchvision_weights
        from .weights import file_sha256

        encoder = getattr(self.model, "encoder", None)
        if not isinstance(encoder, ResNetEncoder):
            return None
        record: dict[str, Any] = {"name": encoder.name, "weights": None, "weights_sha256": None}
        info = getattr(self.model, "encoder_init", None)  # MODEL_OPTIONS encoder_weights, loaded when built
        legacy = cast(dict[str, Any], self.model.options).get("encoder_weights")
        if weights is not None:
            try:
                info = load_torchvision_weights(encoder, weights.path)
            except ValueError as e:
                raise GeoSegError(f"ENCODER_WEIGHTS: {first_line(e, 400)}.", param="ENCODER_WEIGHTS") from None
            record.update(weights=weights.name, weights_sha256=weights.sha256)
            if weights.named is not None:
                record.update(
                    weights_url=weights.named.url,
                    input_scaling=weights.named.scaling,
                    licence=weights.named.licence,
                )
        elif legacy:
            record.update(weights=os.path.basename(legacy), weights_sha256=file_sha256(legacy))
        if info:
            record.update(info)
            log.info(
                "Encoder %s initialised from %s; first convolution: %s.",
                encoder.name,
                record["weights"],
                info["first_conv"],
            )
        return record

    def set_encoder_frozen(self, epoch: int) -> None:
        """FREEZE_ENCODER_EPOCHS: the encoder's parameters take no step in the first N epochs."""
        encoder = getattr(self.model, "encoder", None)
        if encoder is None or not self.p.freeze_encoder_epochs:
            return
        frozen = epoch < self.p.freeze_encoder_epochs
        if epoch in (0, self.p.freeze_encoder_epochs) or epoch == self.start_epoch:
            log.info("Epoch %d: encoder %s.", epoch + 1, "frozen" if frozen else "trained")
        for q in encoder.parameters():
            q.requires_grad_(not frozen)
        self.wrap()

    def _build_loaders(self) -> None:
        """(Re)build the loaders for `batch_size` / `val_batch_size` (again after an out-of-memory)."""
        import torch

        from .packed import collate_batch, training_datasets

        workers, pin, world = self.workers, self.device == "cuda", self.group.world
        train_ds, val_ds = training_datasets(self.chips)  # packed: a batch is one read (core.packed)
        # batch_size is the global batch; each process loads its piece of it (core.ddp)
        self.train_sampler = TrainShards(len(train_ds), self.batch_size, world, self.loader_gen)
        if not self.train_sampler.batches:
            raise GeoSegError(
                f"CHIPS: {len(train_ds)} training chip(s) cannot be shared by {world.size} processes; "
                "export more chips or start fewer processes.",
                param="CHIPS",
            )
        self.train_loader: DataLoader[tuple[Tensor, Tensor]] = torch.utils.data.DataLoader(
            _as_dataset(train_ds),
            batch_size=self.train_sampler.piece,
            sampler=self.train_sampler,
            generator=self.loader_gen,  # the loader draws its base seed here first, as before DDP: same batches
            num_workers=workers,
            pin_memory=pin,
            persistent_workers=workers > 0,
            collate_fn=collate_batch,
        )
        self.val_loader: DataLoader[tuple[Tensor, Tensor]] = torch.utils.data.DataLoader(
            _as_dataset(val_ds),
            batch_size=self.val_batch_size,
            sampler=ValShards(len(val_ds), self.val_batch_size, world),
            num_workers=workers,
            pin_memory=pin,
            persistent_workers=workers > 0,
            collate_fn=collate_batch,
        )
        self.steps = len(self.train_loader)

    def _build_scheduler(self, epoch: int = 0) -> None:
        """A fresh schedule over `epochs × steps` batches, advanced to the start of `epoch` (after a
        batch-size change the number of steps per epoch changes; the learning rate at each fraction
        of the run stays the same)."""
        import warnings

        import torch

        total = self.p.epochs * self.steps
        self.scheduler: torch.optim.lr_scheduler.LRScheduler
        if self.p.schedule == "onecycle":
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
                self.optimizer, max_lr=self.p.learning_rate, total_steps=max(total, 2)
            )
        else:
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(total, 1))
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended here
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(epoch * self.steps):
                self.scheduler.step()

    # ------------------------------------------------------------ memory
    def _measure_step_memory(self) -> tuple[float, float]:
        """(fixed bytes, bytes per sample) of one training step, from one forward pass at batch 1
        with hooks summing every layer's output (eval mode: no statistics or random state change)."""
        import torch

        chip, c = self.chips.chip_size, self.chips.in_channels
        was_training = self.model.training
        try:
            self.model.eval()
            with torch.no_grad():
                outputs = leaf_output_bytes(
                    self.model, lambda: self.model(torch.zeros(1, c, chip, chip, device=self.device))
                )
        finally:
            self.model.train(was_training)
        params = sum(q.numel() * q.element_size() for q in self.model.parameters())
        per_sample = ACTIVATION_FACTOR * outputs + chip * chip * (4 * c + 8)  # + float input, int64 mask
        log.info(
            "Memory budget %.0f MB: a training step needs about %.0f MB + %.1f MB per chip.",
            self.budget_mb,
            4 * params / 1e6,
            per_sample / 1e6,
        )
        return 4.0 * params, per_sample

    def step_bytes(self, batch: int) -> float:
        """Estimated memory of one training step at `batch` (0 when no budget is set)."""
        fixed, per_sample = self.step_memory
        return fixed + batch * per_sample

    def _restart_epoch(self, batch: int, epoch: int) -> None:
        """After an out of memory in epoch `epoch`, the batch halved to `batch`: restart the epoch from
        the state it started with, so the run stays the run it would have been at the smaller batch."""
        self.batch_size = self.val_batch_size = batch
        self._build_loaders()
        self._restore(self._epoch_start_state(epoch))
        self._build_scheduler(epoch)
        release_cuda_cache()

    def _epoch_start_state(self, epoch: int) -> dict:
        if epoch == self.start_epoch and self._start_state is not None:
            return self._start_state
        state = load_checkpoint(self.paths["last"], "RESUME")  # written at the end of the previous epoch
        if int(state["epoch"]) != epoch:
            raise GeoSegError(
                f"Out of memory in epoch {epoch + 1}, and {self.paths['last']} does not hold the "
                "state of the previous epoch to restart from."
            )
        return state

    def remember_start(self) -> None:
        """Keep (on the CPU) the state the first epoch starts from, for a restart after an OOM."""
        import copy

        if self._start_state is None:
            self._start_state = copy.deepcopy(_to_cpu(self._state()))

    def _state(self) -> dict:
        import torch

        return {
            "state_dict": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "loader_rng": self.loader_gen.get_state(),
            "aug_rng": self.aug_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
        }

    def _restore(self, state: dict) -> None:
        import copy

        import torch

        self.model.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))  # it would alias the saved tensors
        self.loader_gen.set_state(state["loader_rng"])
        self.aug_gen.set_state(state["aug_rng"])
        torch.set_rng_state(state["torch_rng"])

    # ------------------------------------------------------------ state
    def card(self) -> ModelCard:
        """The card of the model as it is now (validated: a checkpoint never carries a wrong one)."""
        options = cast(dict[str, Any], self.model.options)  # set by models.registry.build_model
        card = card_dict(self.p, self.chips, options, self.radius, self.history, self.best_epoch, self.encoder_card)
        return ModelCard.from_dict(card, "OUTPUT_MODEL")

    def resume(self) -> None:
        """Continue from `.last.pt`, in any number of processes (every process reads it; rank 0 writes)."""
        if self.group.main:
            for path in self.paths.values():  # temporary files of a killed run (the files themselves are whole)
                for name in remove_stale_partials(path):
                    log.info("Removed %s, left behind by an interrupted write.", name)
        state = load_checkpoint(self.paths["last"], "RESUME")
        missing = [
            k
            for k in (
                "optimizer",
                "scheduler",
                "loader_rng",
                "aug_rng",
                "torch_rng",
                "epoch",
                "best_miou",
                "best_epoch",
                "history",
            )
            if k not in state
        ]
        if missing:
            raise GeoSegError(
                f"RESUME: {self.paths['last']} is not a resumable training state " f"(it lacks {', '.join(missing)})."
            )
        if state.get("dataset_sha256") != self.chips.sha256:
            raise GeoSegError(
                "RESUME: the chips folder differs from the one this run was trained on "
                "(chips.csv or dataset.json changed); start a new run instead."
            )
        if state.get("architecture") != self.p.architecture:
            raise GeoSegError(f"RESUME: the saved run trains {state.get('architecture')}, not {self.p.architecture}.")
        saved_batch = int(state.get("batch_size") or self.p.batch_size)
        if saved_batch != self.batch_size:  # the run had halved its batch after running out of memory
            log.warning("Resuming with batch size %d, the size the interrupted run had fallen back to.", saved_batch)
            self.batch_size = self.val_batch_size = saved_batch
            self._build_loaders()
            self._build_scheduler()
        try:
            self._restore(state)
            mine = self.scheduler.state_dict()
            if all(state["scheduler"].get(k) == mine.get(k) for k in ("total_steps", "T_max")):
                self.scheduler.load_state_dict(state["scheduler"])
            else:  # more EPOCHS, or another number of processes cut the last partial batch differently:
                self._build_scheduler(int(state["epoch"]))  # the schedule over this run's steps, at its epoch
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise GeoSegError(
                f"RESUME: {self.paths['last']} does not fit this run's model or settings "
                f"({first_line(e, 160)}); start a new run instead."
            ) from None
        self.start_epoch = int(state["epoch"])
        self.best_miou = float(state["best_miou"])
        self.best_epoch = int(state["best_epoch"])
        self.history = [dict(h) for h in state["history"]]
        self._start_state = None if self.group.enabled else state  # (an OOM restart: one process only)
        if self.group.main:
            self._complete_outputs(state)
        log.info(
            "Resuming %s after epoch %d (best val mIoU %.4f at epoch %d).",
            self.paths["model"],
            self.start_epoch,
            self.best_miou,
            self.best_epoch,
        )

    def _complete_outputs(self, state: dict) -> None:
        """A run killed after saving its state but before the best model or the metrics: the state
        holds everything to write them again (the state is saved first in every epoch)."""
        if self.best_epoch and self.best_epoch == int(state["epoch"]):
            have = None
            if os.path.isfile(self.paths["model"]):
                try:
                    card = load_checkpoint(self.paths["model"], "RESUME")["card"]
                    have = card.metrics.epoch if card.metrics is not None else None
                except GeoSegError:
                    have = None
            if have != self.best_epoch:
                log.info("Writing %s again from the saved state of epoch %d.", self.paths["model"], self.best_epoch)
                save_model(self.paths["model"], self.model.state_dict(), self.card())
        self.write_metrics()

    def save_last(self, epoch: int) -> None:
        save_model(
            self.paths["last"],
            self.model.state_dict(),
            self.card(),
            {
                **self._state(),
                "scheduler": self.scheduler.state_dict(),
                "epoch": epoch,
                "best_miou": self.best_miou,
                "best_epoch": self.best_epoch,
                "history": self.history,
                "dataset_sha256": self.chips.sha256,
                "architecture": self.p.architecture,
                "batch_size": self.batch_size,  # the global batch, whatever the number of processes
                "processes": self.group.world.size,
            },
        )

    # ------------------------------------------------------------ epochs
    def _forward(self, x):
        """Logits of `x`: in training through `self.net` (DDP under torchrun), in evaluation the model itself
        (no collective: each process validates its own share)."""
        import torch

        net = self.net if self.model.training else self.model
        if self.amp_dtype is not None:
            with torch.autocast("cuda", dtype=self.amp_dtype):
                return net(x)
        return net(x)

    def _loss(self, out, y):
        if isinstance(out, list | tuple):  # deep supervision: every head learns the target
            return sum(self.loss_fn(o.float(), y) for o in out) / len(out)
        return self.loss_fn(out.float(), y)

    def train_epoch(
        self,
        epoch: int,
        progress: Progress,
        cancelled: IsCancelled,
        report: Callable[[BatchReport], None] | None = None,
    ) -> float:
        """One epoch; on out of memory (CUDA, CPU, or over the budget) the epoch restarts at half the batch.
        Under torchrun an out of memory is an error instead: every process would have to halve at once."""
        if self.group.enabled:
            return self._train_epoch(epoch, progress, cancelled, report)
        self.remember_start()
        loss, _ = retry_halving_batch(
            lambda _batch: self._train_epoch(epoch, progress, cancelled, report),
            self.batch_size,
            "training",
            lambda batch: self._restart_epoch(batch, epoch),
        )
        return loss

    def _train_epoch(
        self,
        epoch: int,
        progress: Progress,
        cancelled: IsCancelled,
        report: Callable[[BatchReport], None] | None = None,
    ) -> float:
        """The steps of one epoch. Under torchrun the processes agree twice a step (core.ddp.Group): when
        every one holds its piece of the batch, and on the loss (summed: the global batch's mean)."""
        import torch

        self.model.train()
        self.set_encoder_frozen(epoch)
        total, n = 0.0, 0.0
        batches = iter(self.train_loader)
        for b in range(self.steps):
            try:
                if cancelled():
                    raise Cancelled(self._cancel_message(epoch, b))
                x, y = self._next_batch(batches)
            except BaseException as e:  # noqa: BLE001  (every process must hear of it)
                self._stop(e)
            self.group.barrier()
            try:
                self.optimizer.zero_grad(set_to_none=True)
                loss = self._loss(self._forward(x), y)
                if not torch.isfinite(loss):
                    raise GeoSegError(
                        f"Training diverged (loss is {loss.item()}) at epoch {epoch + 1}; lower "
                        "LEARNING_RATE or check the chips for extreme values."
                    )
            except BaseException as e:  # noqa: BLE001
                self._stop(e)
            loss_sum, count = (float(v) for v in self.group.sums((loss.item() * x.shape[0], x.shape[0])))
            self._backward(loss)
            total += loss_sum
            n += count
            progress((epoch + (b + 1) / self.steps) / self.p.epochs)
            if report is not None:
                report(BatchReport(epoch + 1, self.p.epochs, b + 1, self.steps, loss_sum / count))
        next(batches, None)  # the loader's end (its sampler has drawn the epoch's permutations)
        return total / max(n, 1)

    def _next_batch(self, batches):
        """This process's next piece of the batch, on the device, augmented, within the memory budget."""
        import torch

        x, y = next(batches)
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if self.p.augment:
            x, y = augment_shard(x, y, self.aug_gen, self.group.world)
        if self.device == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        if self.budget_mb > 0:
            check_budget(self.step_bytes(x.shape[0]), self.budget_mb, f"A training step at batch size {x.shape[0]}")
        return x, y

    def _backward(self, loss) -> None:
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.scheduler.step()

    def _stop(self, e: BaseException) -> NoReturn:
        """Raise `e` here and make every other process stop too; under torchrun an out of memory becomes a
        clear error (one process cannot halve the batch on its own)."""
        if self.group.enabled and not isinstance(e, GeoSegError) and is_out_of_memory(e):
            e = GeoSegError(
                f"Out of memory at {self.train_sampler.piece} chips per process ({first_line(e)}). With several "
                "processes GeoSeg does not halve the batch (they would all have to, at the same step): lower "
                "BATCH_SIZE, or use a smaller model or smaller chips.",
                param="BATCH_SIZE",
            )
        self.group.fail(e)

    def validate_epoch(self, cancelled: IsCancelled, epoch: int) -> tuple[float, np.ndarray]:
        """Validation changes no state, so after an out of memory it simply runs again at half the batch
        (one process; under torchrun it is an error, as in training)."""

        def smaller(batch: int) -> None:
            self.val_batch_size = batch
            self._build_loaders()

        if self.group.enabled:
            return self._validate_epoch(cancelled, epoch)
        result, _ = retry_halving_batch(
            lambda _batch: self._validate_epoch(cancelled, epoch), self.val_batch_size, "validation", smaller
        )
        return result

    def _validate_epoch(self, cancelled: IsCancelled, epoch: int) -> tuple[float, np.ndarray]:
        """(mean loss, confusion matrix) over the validation chips: each process its share of the batches
        (with rank 0's BatchNorm statistics, the model that is saved), summed over the processes."""
        k = len(self.chips.classes)
        self.group.share_buffers(self.model)
        try:
            total, n, cm = self._validate_share(cancelled, epoch, k)
        except BaseException as e:  # noqa: BLE001
            self._stop(e)
        sums = self.group.sums(np.concatenate([[total, n], cm.ravel()]))
        return float(sums[0]) / max(float(sums[1]), 1.0), np.rint(sums[2:]).astype(np.int64).reshape(k, k)

    def _validate_share(self, cancelled: IsCancelled, epoch: int, k: int) -> tuple[float, int, np.ndarray]:
        import torch

        self.model.eval()
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
        return total, n, cm

    def _cancel_message(self, epoch: int, batch: int | None) -> str:
        step = "during validation" if batch is None else f"batch {batch + 1}"
        where = f"Training cancelled in epoch {epoch + 1}, {step}"
        if self.best_epoch:
            return (
                f"{where}. The best model so far (epoch {self.best_epoch}, validation mIoU "
                f"{self.best_miou:.4f}) is saved in {self.paths['model']}; train again with RESUME to "
                "continue."
            )
        return f"{where}, before the first epoch finished; nothing was written."

    def write_metrics(self) -> None:
        names = [c["name"] for c in self.chips.classes]
        with atomic_write(self.paths["metrics"], "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(
                ["epoch", "train_loss", "val_loss", "val_oa", "val_miou", "val_macro_f1", "lr", "seconds", "batch_size"]
                + [f"iou_{n}" for n in names]
            )
            for h in self.history:
                w.writerow(
                    [
                        h["epoch"],
                        f"{h['train_loss']:.6f}",
                        f"{h['val_loss']:.6f}",
                        f"{h['val_oa']:.6f}",
                        f"{h['val_miou']:.6f}",
                        f"{h['val_macro_f1']:.6f}",
                        f"{h['lr']:.3e}",
                        f"{h['seconds']:.2f}",
                        h.get("batch_size", self.p.batch_size),
                    ]
                    + ["" if v is None else f"{v:.6f}" for v in h["per_class_iou"]]
                )


def _to_cpu(obj):
    """The same nested state with every tensor on the CPU (a snapshot must not hold GPU memory)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu")
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def nan_to_none(values: list[float]) -> list[float | None]:
    return [None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v) for v in values]
