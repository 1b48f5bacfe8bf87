"""geoseg:train — Train segmentation model (thin over core.train.train)."""

from __future__ import annotations

from qgis.core import QgsProcessingOutputFile, QgsProcessingOutputNumber

from ..core.params import TrainParams
from .base import GeoSegAlgorithm, add_parameters, params_from_parameters, require_torch


class TrainAlgorithm(GeoSegAlgorithm):
    _name = "train"
    _display = "Train segmentation model"
    _help = (
        "Trains a UNet, UNet++, DeepLabv3+ or FCN on a chips folder written by Export training chips.\n\n"
        "Images are normalised with dataset.json's band statistics; mask value 255 is ignored. Training uses "
        "AdamW with a one-cycle (or cosine) schedule and augmentation (flips, 90° rotations, brightness, "
        "contrast, gamma), validates every epoch and keeps the checkpoint with the best validation mIoU in "
        "OUTPUT_MODEL (.pt). The ONNX model is written beside it (same name, .onnx), with the per-epoch "
        "metrics (.metrics.csv) and the resumable training state (.last.pt). Both model files carry the "
        "model card (classes, bands, normalisation, chip size, recommended stride and crop, metrics).\n\n"
        "Uses the GPU when DEVICE is auto and torch sees CUDA (with mixed precision). Existing files are "
        "never overwritten; RESUME continues an interrupted run from its last completed epoch."
    )

    def initAlgorithm(self, config=None) -> None:
        add_parameters(self, TrainParams)  # core/params.py defines them
        self.addOutput(QgsProcessingOutputFile("OUTPUT_ONNX", self.tr("ONNX model")))
        self.addOutput(QgsProcessingOutputFile("METRICS", self.tr("Per-epoch metrics (CSV)")))
        self.addOutput(QgsProcessingOutputNumber("VAL_MIOU", self.tr("Best validation mIoU")))
        self.addOutput(QgsProcessingOutputNumber("BEST_EPOCH", self.tr("Best epoch")))

    def processAlgorithm(self, parameters, context, feedback):
        require_torch()
        from ..core.train import train

        params = params_from_parameters(self, TrainParams, parameters, context, feedback)
        r = self.run_core(train, params, feedback)
        feedback.pushInfo(
            f"Best validation mIoU {r.val_miou:.4f} at epoch {r.best_epoch} of {r.epochs_run} "
            f"(device {r.device}). Model: {r.model_path}; ONNX: {r.onnx_path}."
        )
        return {
            "OUTPUT_MODEL": r.model_path,
            "OUTPUT_ONNX": r.onnx_path,
            "METRICS": r.metrics_path,
            "VAL_MIOU": r.val_miou,
            "BEST_EPOCH": r.best_epoch,
        }
