"""Training: chips folder → best checkpoint (`.pt`), ONNX model and per-epoch metrics CSV.

AdamW with a one-cycle or cosine schedule, validation every epoch, best checkpoint by
validation mIoU, early stopping, resume, AMP and channels_last on CUDA. Cancel is checked at
every batch; the last completed epoch's checkpoint always stays usable.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable

import numpy as np

from .checkpoint import load_checkpoint, save_model, save_onnx
from .dataset import open_chips
from .ddp import LOCAL, Group, World, emit_result, per_rank_batch, process_group, progress_lines, quiet_unless_main
from .device import resolve_device  # also re-exported: it lived here
from .errors import Cancelled, GeoSegError, IsCancelled, Progress
from .gdalx import with_gdal_exceptions
from .memory import require_memory, training_bytes
from .metrics import metrics_from_confusion
from .options import ARCHITECTURES, CLASS_WEIGHTS, LOSSES, SCHEDULES
from .params import TrainParams  # defined once there, with its front-end metadata
from .reports import BatchReport, EpochReport, TrainResult  # also re-exported: they lived here
from .staging import check_new_file, remove_stale_outputs
from .trainer import (
    Run,
    check_card_before_training,
    check_encoder_params,
    effective_model_options,
    nan_to_none,
    output_paths,
)

log = logging.getLogger("geoseg")


# Complexity kept: a flat list of independent parameter checks, one `if …: raise` each, in the parameters'
# order.
def validate(p: TrainParams) -> None:  # noqa: C901, PLR0912
    """Cheap checks before reading any chip."""
    if p.architecture not in ARCHITECTURES:
        raise GeoSegError(
            f"ARCHITECTURE must be one of {', '.join(ARCHITECTURES)} (got '{p.architecture}').", param="ARCHITECTURE"
        )
    if p.loss not in LOSSES:
        raise GeoSegError(f"LOSS must be one of {', '.join(LOSSES)} (got '{p.loss}').", param="LOSS")
    if p.class_weights not in CLASS_WEIGHTS:
        raise GeoSegError(
            f"CLASS_WEIGHTS must be one of {', '.join(CLASS_WEIGHTS)} (got '{p.class_weights}').", param="CLASS_WEIGHTS"
        )
    if p.schedule not in SCHEDULES:
        raise GeoSegError(f"SCHEDULE must be one of {', '.join(SCHEDULES)} (got '{p.schedule}').", param="SCHEDULE")
    if p.epochs < 1:
        raise GeoSegError(f"EPOCHS must be at least 1 (got {p.epochs}).", param="EPOCHS")
    if p.batch_size < 1:
        raise GeoSegError(f"BATCH_SIZE must be at least 1 (got {p.batch_size}).", param="BATCH_SIZE")
    if not p.memory_budget_mb >= 0:
        raise GeoSegError(
            f"MEMORY_BUDGET must be 0 (none) or a number of megabytes (got {p.memory_budget_mb}).",
            param="MEMORY_BUDGET",
        )
    if not 0 < p.learning_rate < 1:
        raise GeoSegError(f"LEARNING_RATE must be between 0 and 1 (got {p.learning_rate}).", param="LEARNING_RATE")
    from ..models.registry import validate_options  # no torch import

    try:
        validate_options(p.architecture, **effective_model_options(p))
    except ValueError as e:
        raise GeoSegError(f"MODEL_OPTIONS: {e}.", param="MODEL_OPTIONS") from None
    if not p.output_model:
        raise GeoSegError("OUTPUT_MODEL: no output file given.", param="OUTPUT_MODEL")
    if not p.output_model.endswith(".pt"):
        raise GeoSegError(
            f"OUTPUT_MODEL must end in .pt (got {p.output_model}); the ONNX model is written "
            "beside it with the same name and .onnx.",
            param="OUTPUT_MODEL",
        )
    _check_encoder_weights(p.model_options.get("encoder_weights"))
    check_encoder_params(p, effective_model_options(p))
    paths = output_paths(p.output_model)
    if p.resume:
        if not os.path.isfile(paths["last"]):
            raise GeoSegError(
                f"RESUME: there is no training state to resume ({paths['last']} not found).", param="RESUME"
            )
    elif os.path.isfile(paths["last"]):
        raise GeoSegError(
            f"OUTPUT_MODEL: {paths['last']} already exists: it holds the saved state of an earlier training run "
            "(interrupted, or finished). Set RESUME to continue that run (with more EPOCHS if it finished), or "
            "choose a new OUTPUT_MODEL. GeoSeg never overwrites existing output.",
            param="OUTPUT_MODEL",
        )
    else:
        for key in ("model", "onnx", "metrics"):
            check_new_file(paths[key], "OUTPUT_MODEL", param="OUTPUT_MODEL")
    folder = os.path.dirname(os.path.abspath(p.output_model))
    if not os.path.isdir(folder):  # created in train(), like every other GeoSeg output's folder
        parent = folder
        while not os.path.isdir(parent):
            parent = os.path.dirname(parent)
        folder = parent
    if not os.access(folder, os.W_OK) or folder.startswith(("/sys", "/proc")):
        raise GeoSegError(f"OUTPUT_MODEL: cannot write in {folder}.", param="OUTPUT_MODEL")


def _check_encoder_weights(path: object) -> None:
    """MODEL_OPTIONS encoder_weights: an existing file (read, without unpickling, when the model is built)."""
    if path is None or path == "":
        return
    if not isinstance(path, str):
        raise GeoSegError(
            f"MODEL_OPTIONS: encoder_weights must be the path of a torchvision ResNet .pth file (got {path!r}).",
            param="MODEL_OPTIONS",
        )
    if os.path.isdir(path):
        raise GeoSegError(
            f"MODEL_OPTIONS: encoder_weights {path} is a folder; give the torchvision ResNet .pth file.",
            param="MODEL_OPTIONS",
        )
    if not os.path.isfile(path):
        raise GeoSegError(
            f"MODEL_OPTIONS: encoder_weights file not found: {path} (give the path of a torchvision ResNet "
            ".pth file; GeoSeg downloads nothing).",
            param="MODEL_OPTIONS",
        )


def _encoder_weights(p: TrainParams, options: dict, progress: Progress, cancelled: IsCancelled):
    """ENCODER_WEIGHTS as a checked local file (None: none); a named weight is downloaded here, on first
    use, into the cache (the dialog's QGIS profile, $GEOSEG_CACHE or ~/.cache/geoseg)."""
    if not (p.encoder_weights or "").strip():
        return None
    from .weights import resolve_weights

    return resolve_weights(
        p.encoder_weights or "", str(options.get("encoder", "resnet18")), p.weights_cache, progress, cancelled
    )


@with_gdal_exceptions
def train(
    p: TrainParams,
    progress: Progress = lambda f: None,
    cancelled: IsCancelled = lambda: False,
    report: Callable[[BatchReport | EpochReport], None] | None = None,
) -> TrainResult:
    """Train as described by `p`; raise GeoSegError (or Cancelled) on failure.

    Started by torchrun (WORLD_SIZE > 1 in the environment), each process trains its share of every
    batch (core.ddp); rank 0 reports progress and writes the outputs, the others wait for it."""
    world = World.from_env()
    if not world.enabled:
        return _train(p, progress, cancelled, report, LOCAL)
    per_rank_batch(p.batch_size, world.size)  # before any process waits for another
    with process_group(world, resolve_device(p.device)) as group, quiet_unless_main(group):
        if group.main:
            progress, report = progress_lines(progress, report)
        else:
            progress, report = (lambda f: None), None
        result = _train(p, progress, cancelled, report, group)
        if group.main:
            emit_result(result)
        return result


def _setup(p: TrainParams, group: Group) -> tuple:
    """Every check before training, in every process; nothing is written yet."""
    from ..models.registry import validate_options  # no torch import

    started = time.time()
    validate(p)
    if group.main:
        remove_stale_outputs(output_paths(p.output_model).values(), started)  # left by a killed run (SIGKILL)
    chips = open_chips(p.chips_dir, p.ignore_background)
    options = effective_model_options(p)
    check_card_before_training(p, chips, validate_options(p.architecture, **options))
    device = resolve_device(p.device)
    require_memory(
        training_bytes(p.architecture, chips.in_channels, len(chips.classes), options, chips.chip_size),
        f"training this {p.architecture} on {chips.chip_size}-pixel chips, even at batch size 1,",
        "MODEL_OPTIONS",
        "Use a smaller model (base_width, depth) or smaller chips.",
        device=device,
    )
    return chips, options, device


def _train(
    p: TrainParams,
    progress: Progress,
    cancelled: IsCancelled,
    report: Callable[[BatchReport | EpochReport], None] | None,
    group: Group,
) -> TrainResult:
    chips, options, device = group.together(lambda: _setup(p, group))
    weights = group.main_first(lambda: _encoder_weights(p, options, progress, cancelled))  # one download
    run = group.together(lambda: Run(p, chips, device, weights, group))
    run.wrap()
    out_dir = os.path.dirname(os.path.abspath(p.output_model))
    new_dir = not os.path.isdir(out_dir)
    group.on_main(lambda: os.makedirs(out_dir, exist_ok=True))  # only now: every check before it writes nothing
    if p.resume:
        group.together(run.resume)
    created = not p.resume
    log.info(
        "Training %s on %s: %d training / %d validation chips, %d classes, device %s%s.",
        p.architecture,
        chips.path,
        len(chips.train),
        len(chips.validation),
        len(chips.classes),
        device,
        f", {group.world.size} processes of {run.batch_size // group.world.size} chips" if group.enabled else "",
    )
    stopped_early = False
    try:
        for epoch in range(run.start_epoch, p.epochs):
            _epoch(run, epoch, progress, cancelled, report)
            created = False  # from here on the files hold a usable model: keep them whatever happens
            if p.patience and epoch + 1 - run.best_epoch >= p.patience:
                log.info("Early stop: no better validation mIoU for %d epochs.", p.patience)
                stopped_early = True
                break
        group.on_main(lambda: _export_best(run))
        card = load_checkpoint(run.paths["model"])["card"]
        progress(1.0)
    except BaseException:
        if created and group.main:  # failed or cancelled before the first epoch finished: leave nothing behind
            for key in ("model", "last", "metrics", "onnx"):
                if os.path.exists(run.paths[key]):
                    os.remove(run.paths[key])
            if new_dir and os.path.isdir(out_dir) and not os.listdir(out_dir):
                os.rmdir(out_dir)
        raise
    return TrainResult(
        run.paths["model"],
        run.paths["onnx"],
        run.paths["metrics"],
        run.best_epoch,
        run.best_miou,
        len(run.history),
        stopped_early,
        device,
        card,
        run.history,
    )


def _epoch(
    run: Run,
    epoch: int,
    progress: Progress,
    cancelled: IsCancelled,
    report: Callable[[BatchReport | EpochReport], None] | None,
) -> None:
    """Train, validate, record and (rank 0) write one epoch."""
    t0 = time.perf_counter()
    train_loss = run.train_epoch(epoch, progress, cancelled, report)
    val_loss, cm = run.validate_epoch(cancelled, epoch)
    m = metrics_from_confusion(cm)
    miou = 0.0 if math.isnan(m.mean_iou) else float(m.mean_iou)
    run.history.append(
        {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_oa": float(m.overall_accuracy),
            "val_miou": miou,
            "val_macro_f1": float(np.nan_to_num(m.macro_f1)),
            "per_class_iou": nan_to_none(list(m.iou)),
            "lr": run.optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - t0,
            "batch_size": run.batch_size,
        }
    )
    if miou > run.best_miou:
        run.best_miou, run.best_epoch = miou, epoch + 1
    run.group.on_main(lambda: _write_epoch(run, epoch))
    h = run.history[-1]
    log.info(
        "epoch %d/%d: train loss %.4f, val loss %.4f, val mIoU %.4f (best %.4f, epoch %d)%s",
        epoch + 1,
        run.p.epochs,
        train_loss,
        val_loss,
        miou,
        run.best_miou,
        run.best_epoch,
        f", batch size {run.batch_size}" if run.batch_size != run.p.batch_size else "",
    )
    if report is not None:
        report(
            EpochReport(
                epoch + 1,
                run.p.epochs,
                train_loss,
                val_loss,
                miou,
                h["val_oa"],
                h["val_macro_f1"],
                h["per_class_iou"],
                run.best_epoch,
                h["seconds"],
                run.batch_size,
            )
        )


def _write_epoch(run: Run, epoch: int) -> None:
    # the resumable state first: a kill after it leaves what RESUME needs to write the rest again
    run.save_last(epoch + 1)
    if run.best_epoch == epoch + 1:
        save_model(run.paths["model"], run.model.state_dict(), run.card())
    run.write_metrics()


def _export_best(run: Run) -> None:
    """The ONNX model of the best checkpoint, rebuilt from the file as any user loads it (a plain model:
    no DDP, no SyncBatchNorm), written beside the target and renamed only once checked."""
    from .checkpoint import model_from_checkpoint

    best = load_checkpoint(run.paths["model"])
    save_onnx(run.paths["onnx"], model_from_checkpoint(best).eval(), best["card"])


@with_gdal_exceptions
def export_model_onnx(
    model_path: str, onnx_path: str, cancelled: IsCancelled = lambda: False, fmt: str = "geoseg"
) -> str:
    """`.pt` → `.onnx` with the same card (geoseg:exportonnx; `fmt` "deepness" also for Deepness);
    missing folders are created, as for every GeoSeg output, and removed again when it fails."""
    from .checkpoint import model_from_checkpoint

    started = time.time()
    if not onnx_path:
        raise GeoSegError("OUTPUT: no output file given.", param="OUTPUT")
    if not onnx_path.endswith(".onnx"):
        raise GeoSegError(f"OUTPUT must end in .onnx (got {onnx_path}).", param="OUTPUT")
    if os.path.isdir(onnx_path):
        raise GeoSegError(f"OUTPUT: {onnx_path} is a folder; give the .onnx file to write.", param="OUTPUT")
    check_new_file(onnx_path, "OUTPUT", param="OUTPUT")
    remove_stale_outputs((onnx_path,), started)  # left by a killed run (SIGKILL)
    state = load_checkpoint(model_path)
    model = model_from_checkpoint(state)
    if cancelled():
        raise Cancelled()
    if fmt not in ("geoseg", "deepness"):
        raise GeoSegError(f"FORMAT must be geoseg or deepness (got {fmt!r}).", param="FORMAT")
    save_onnx(onnx_path, model.eval(), state["card"], "OUTPUT", cancelled, fmt)
    return onnx_path
