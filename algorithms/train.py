"""geoseg:train — Train segmentation model (thin over core.train.train)."""

from __future__ import annotations

from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from ..core.errors import GeoSegError
from ..core.options import (
    ARCHITECTURE_LABELS,
    ARCHITECTURES,
    CLASS_WEIGHTS,
    DEVICES,
    LOSS_LABELS,
    LOSSES,
    SCHEDULES,
    parse_model_options,
)
from .base import GeoSegAlgorithm, advanced, require_torch

Int = QgsProcessingParameterNumber.Integer
Dbl = QgsProcessingParameterNumber.Double


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
        self.addParameter(QgsProcessingParameterFile(
            "CHIPS", self.tr("Chips folder (from Export training chips)"), QgsProcessingParameterFile.Folder))
        self.addParameter(QgsProcessingParameterEnum(
            "ARCHITECTURE", self.tr("Architecture"), list(ARCHITECTURE_LABELS), defaultValue=0))
        self.addParameter(QgsProcessingParameterNumber("EPOCHS", self.tr("Epochs"), Int, 20, minValue=1))
        self.addParameter(QgsProcessingParameterNumber("BATCH_SIZE", self.tr("Batch size"), Int, 8, minValue=1))
        self.addParameter(QgsProcessingParameterNumber(
            "LEARNING_RATE", self.tr("Learning rate (maximum of the schedule)"), Dbl, 0.001, minValue=1e-7,
            maxValue=0.99))
        self.addParameter(QgsProcessingParameterEnum("LOSS", self.tr("Loss"), list(LOSS_LABELS), defaultValue=2))
        self.addParameter(QgsProcessingParameterEnum(
            "DEVICE", self.tr("Device"), ["Auto (GPU when available)", "CPU", "CUDA GPU"], defaultValue=0))
        self.addParameter(QgsProcessingParameterNumber("SEED", self.tr("Random seed"), Int, 0, minValue=0))
        self.addParameter(QgsProcessingParameterFileDestination(
            "OUTPUT_MODEL", self.tr("Output model (.pt)"), "PyTorch checkpoint (*.pt)"))
        advanced(self, [
            QgsProcessingParameterEnum("CLASS_WEIGHTS", self.tr("Class weights"),
                                       ["None", "Inverse class frequency"], defaultValue=0),
            QgsProcessingParameterBoolean("IGNORE_BACKGROUND", self.tr(
                "Ignore the background class (incomplete labels: learn only the labelled classes)"), False),
            QgsProcessingParameterEnum("SCHEDULE", self.tr("Learning-rate schedule"), ["One-cycle", "Cosine"],
                                       defaultValue=0),
            QgsProcessingParameterNumber("WEIGHT_DECAY", self.tr("Weight decay (AdamW)"), Dbl, 1e-4, minValue=0),
            QgsProcessingParameterNumber("PATIENCE", self.tr("Early stopping patience (epochs; 0 = off)"), Int, 0,
                                         minValue=0),
            QgsProcessingParameterBoolean("AUGMENT", self.tr("Augment (flips, rotations, brightness, contrast, "
                                                             "gamma)"), True),
            QgsProcessingParameterBoolean("RESUME", self.tr("Resume the interrupted run of OUTPUT_MODEL"), False),
            QgsProcessingParameterString("MODEL_OPTIONS", self.tr(
                'Architecture options as JSON, e.g. {"base_width": 16, "depth": 3}'), "", optional=True),
            QgsProcessingParameterNumber("MEMORY_BUDGET", self.tr(
                "Memory budget of a training step (MB; 0 = none): halve the batch when over it"), Dbl, 0,
                minValue=0),
        ])
        self.addOutput(QgsProcessingOutputFile("OUTPUT_ONNX", self.tr("ONNX model")))
        self.addOutput(QgsProcessingOutputFile("METRICS", self.tr("Per-epoch metrics (CSV)")))
        self.addOutput(QgsProcessingOutputNumber("VAL_MIOU", self.tr("Best validation mIoU")))
        self.addOutput(QgsProcessingOutputNumber("BEST_EPOCH", self.tr("Best epoch")))

    def processAlgorithm(self, parameters, context, feedback):
        require_torch()
        from ..core.train import TrainParams, train

        try:
            options = parse_model_options(self.parameterAsString(parameters, "MODEL_OPTIONS", context))
        except GeoSegError as e:
            raise QgsProcessingException(str(e)) from None
        params = TrainParams(
            chips_dir=self.parameterAsFile(parameters, "CHIPS", context),
            output_model=self.parameterAsFileOutput(parameters, "OUTPUT_MODEL", context),
            architecture=ARCHITECTURES[self.parameterAsEnum(parameters, "ARCHITECTURE", context)],
            epochs=self.parameterAsInt(parameters, "EPOCHS", context),
            batch_size=self.parameterAsInt(parameters, "BATCH_SIZE", context),
            learning_rate=self.parameterAsDouble(parameters, "LEARNING_RATE", context),
            loss=LOSSES[self.parameterAsEnum(parameters, "LOSS", context)],
            device=DEVICES[self.parameterAsEnum(parameters, "DEVICE", context)],
            seed=self.parameterAsInt(parameters, "SEED", context),
            class_weights=CLASS_WEIGHTS[self.parameterAsEnum(parameters, "CLASS_WEIGHTS", context)],
            ignore_background=self.parameterAsBoolean(parameters, "IGNORE_BACKGROUND", context),
            schedule=SCHEDULES[self.parameterAsEnum(parameters, "SCHEDULE", context)],
            weight_decay=self.parameterAsDouble(parameters, "WEIGHT_DECAY", context),
            patience=self.parameterAsInt(parameters, "PATIENCE", context),
            augment=self.parameterAsBoolean(parameters, "AUGMENT", context),
            resume=self.parameterAsBoolean(parameters, "RESUME", context),
            model_options=options,
            memory_budget_mb=self.parameterAsDouble(parameters, "MEMORY_BUDGET", context),
        )
        r = self.run_core(train, params, feedback)
        feedback.pushInfo(f"Best validation mIoU {r.val_miou:.4f} at epoch {r.best_epoch} of {r.epochs_run} "
                          f"(device {r.device}). Model: {r.model_path}; ONNX: {r.onnx_path}.")
        return {"OUTPUT_MODEL": r.model_path, "OUTPUT_ONNX": r.onnx_path, "METRICS": r.metrics_path,
                "VAL_MIOU": r.val_miou, "BEST_EPOCH": r.best_epoch}
