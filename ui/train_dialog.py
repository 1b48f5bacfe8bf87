"""The "Train model" dialog: widgets → core.train.TrainParams → train() in a QgsTask, with a live plot.

Thin over core on purpose: every rule about training lives in core.train so that this dialog, the
Processing algorithm and the CLI agree. The dialog checks the inputs cheaply, plots the per-epoch
reports, fills the per-class table at the end, remembers the last values and reports the outcome.
torch is imported only when the dialog is built (the plugin must load without it).
"""

from __future__ import annotations

import os
from typing import Any

from matplotlib.backends.backend_qt5agg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qgis.gui import QgsCollapsibleGroupBox, QgsFileWidget
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QObject, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
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
from ..core.train import BatchReport, EpochReport, TrainParams, TrainResult, resolve_device, train, validate
from .base_dialog import ERROR_STYLE, GeoSegDialog
from .settings import apply_defaults
from .tasks import CoreTask

SETTINGS_PREFIX = "geoseg/train/"
DEVICE_LABELS = ("Auto (GPU when available)", "CPU", "CUDA GPU")
CLASS_WEIGHT_LABELS = ("None", "Inverse class frequency")
SCHEDULE_LABELS = ("One-cycle", "Cosine")
TORCH_MISSING = "torch is not installed: training is unavailable (install torch into QGIS's Python)."


class _Reporter(QObject):
    """Carries training reports from the worker thread to the dialog (queued to the main thread).

    Separate from the dialog so that a report emitted after the dialog was deleted is dropped
    instead of failing the training."""

    epoch = pyqtSignal(object)
    batch = pyqtSignal(object)

    def report(self, r: EpochReport | BatchReport) -> None:
        # nothing else here: this runs on the worker thread
        (self.epoch if isinstance(r, EpochReport) else self.batch).emit(r)


class TrainDialog(GeoSegDialog):
    """Non-modal dialog; training runs in the task manager so QGIS stays responsive."""

    settings_prefix = SETTINGS_PREFIX
    last_result: TrainResult | None

    def __init__(self, iface: Any, parent: QWidget | None = None) -> None:
        super().__init__(iface, "GeoSeg — Train model", "GeoSegTrainDialog", parent)
        self.history: list[EpochReport] = []
        self.torch_ok = False
        self._reporter: _Reporter | None = None
        self._setup()

    # ---------------------------------------------------------------- layout
    def _build(self, root: QVBoxLayout) -> None:
        self._help_label(root, "Trains a segmentation model on a chips folder written by Export training chips. The "
                         "checkpoint with the best validation mIoU is saved as .pt, with the ONNX model and per-epoch "
                         "metrics beside it.")
        columns = QHBoxLayout()
        root.addLayout(columns)
        left = QVBoxLayout()
        columns.addLayout(left, 1)

        data = self._group(left, "Data and model")
        self.chipsDir = self._add(data, "Chips folder", QgsFileWidget(self), "chipsDir",
                                  "Folder written by Export training chips (chips.csv, dataset.json, images/, masks/).",
                                  "chips_dir")
        self.chipsDir.setStorageMode(QgsFileWidget.GetDirectory)
        self.chipsDir.setDialogTitle("Chips folder")
        self.architecture = self._combo(data, "Architecture", ARCHITECTURE_LABELS, "architecture",
                                        "Network to train: UNet, UNet++, DeepLabv3+ or FCN.", "architecture")
        self.epochs = self._add(data, "Epochs", self._spin(1, 10000, 20), "epochs",
                                "Passes over the training chips; validation runs after each.", "epochs")
        self.batchSize = self._add(data, "Batch size", self._spin(1, 1024, 8), "batchSize",
                                   "Chips per optimisation step; lower it when memory runs out.", "batch_size")
        self.learningRate = self._add(data, "Learning rate", self._double(1e-5, 0.9, 0.001, 5, 0.0005),
                                      "learningRate", "Maximum learning rate of the schedule (AdamW).", "learning_rate")
        self.loss = self._combo(data, "Loss", LOSS_LABELS, "loss", "Training loss; Dice + cross-entropy "
                                "suits most datasets, focal/Tversky help with rare classes.", "loss")
        self.loss.setCurrentIndex(2)
        self.device = self._combo(data, "Device", DEVICE_LABELS, "device",
                                  "Where to train: Auto uses the CUDA GPU when torch sees one, else the CPU.", "device")
        apply_defaults(self.device, self.batchSize)  # GeoSeg ▸ Settings; remembered values override them
        self.deviceLabel = self._add(data, "", QLabel(self), "deviceLabel", "What Auto resolves to on this machine.")
        self.deviceLabel.setWordWrap(True)
        self.seed = self._add(data, "Random seed", self._spin(0, 2147483647, 0), "seed",
                              "The same seed and data give the same initial weights, batches and augmentation.", "seed")
        self.outputModel = self._add(data, "Output model (.pt)", QgsFileWidget(self), "outputModel",
                                     "Best checkpoint (.pt); the .onnx model, .metrics.csv and .last.pt (resumable "
                                     "state) are written beside it. GeoSeg never overwrites.", "output_model")
        self.outputModel.setStorageMode(QgsFileWidget.SaveFile)
        self.outputModel.setFilter("*.pt")
        self.outputModel.setDialogTitle("Output model")

        adv = self._group(left, "Advanced", QgsCollapsibleGroupBox)
        self.classWeights = self._combo(adv, "Class weights", CLASS_WEIGHT_LABELS, "classWeights",
                                        "Inverse class frequency weighs rare classes up in the loss.", "class_weights")
        self.ignoreBackground = self._add(adv, "", QCheckBox("Ignore the background class", self),
                                          "ignoreBackground", "For incomplete labels: learn only the labelled classes.",
                                          "ignore_background")
        self.schedule = self._combo(adv, "Learning-rate schedule", SCHEDULE_LABELS, "schedule",
                                    "One-cycle: warm up then anneal. Cosine: anneal from the start.", "schedule")
        self.patience = self._add(adv, "Early stopping patience", self._spin(0, 10000, 0), "patience",
                                  "Stop after this many epochs without a better validation mIoU; 0 = off.", "patience")
        self.patience.setSpecialValueText("off")
        self.augment = self._add(adv, "", QCheckBox("Augment (flips, rotations, brightness, contrast, gamma)", self),
                                 "augment", "Random flips, 90° rotations and photometric changes per training batch.",
                                 "augment")
        self.augment.setChecked(True)
        self.resume = self._add(adv, "", QCheckBox("Resume the interrupted run of the output model", self), "resume",
                                "Continue from the .last.pt state beside the output model (same chips).")
        # resume is deliberately not remembered: it only makes sense right after an interrupted run
        self.modelOptions = self._add(adv, "Model options (JSON)", QLineEdit(self), "modelOptions",
                                      'Architecture options as a JSON object, e.g. {"base_width": 16, "depth": 3}.',
                                      "model_options")
        self.modelOptions.setPlaceholderText('{"base_width": 16}')
        left.addStretch(1)

        right = QVBoxLayout()
        columns.addLayout(right, 1)
        self.figure = Figure(figsize=(5, 4), tight_layout=True)
        self.lossAxes = self.figure.add_subplot(2, 1, 1)
        self.miouAxes = self.figure.add_subplot(2, 1, 2, sharex=self.lossAxes)
        self.trainLine = self.lossAxes.plot([], [], "o-", label="training")[0]
        self.valLine = self.lossAxes.plot([], [], "o-", label="validation")[0]
        self.miouLine = self.miouAxes.plot([], [], "o-", color="tab:green", label="validation mIoU")[0]
        self.lossAxes.set_ylabel("loss")
        self.lossAxes.legend(loc="upper right")
        self.miouAxes.set_ylabel("validation mIoU")
        self.miouAxes.set_xlabel("epoch")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setObjectName("plotCanvas")
        self.canvas.setToolTip("Training and validation loss (top) and validation mIoU (bottom) per epoch.")
        self.canvas.setMinimumSize(360, 280)
        right.addWidget(self.canvas, 2)
        self.classTable = QTableWidget(0, 2, self)
        self.classTable.setObjectName("classTable")
        self.classTable.setToolTip("Validation IoU per class of the best epoch, filled when training ends.")
        self.classTable.setHorizontalHeaderLabels(["Class", "IoU"])
        self.classTable.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
        self.classTable.verticalHeader().setVisible(False)
        self.classTable.setEditTriggers(QTableWidget.NoEditTriggers)
        right.addWidget(self.classTable, 1)

        self._add_run_controls(root, "training",
                               "Problems with the inputs, the epoch just finished and the outcome of the run.",
                               "Train in the background.",
                               "Stop training within one batch; the best checkpoint of the finished epochs stays.")
        self._probe_device()

    def _probe_device(self) -> None:
        """Import torch now (not when the plugin loads) and show what "Auto" means here."""
        try:
            import torch

            cuda = torch.cuda.is_available()
            where = f"CUDA GPU ({torch.cuda.get_device_name(0)})" if cuda else "CPU (torch sees no GPU)"
            self.deviceLabel.setText(f"Auto trains on the {where}; torch {torch.__version__}.")
            self.torch_ok = True
        except Exception:  # noqa: BLE001  (a missing or broken torch must not break the dialog)
            self.torch_ok = False
            self.deviceLabel.setText(TORCH_MISSING)
            self.deviceLabel.setStyleSheet(ERROR_STYLE)

    def _can_run(self) -> bool:
        return self.torch_ok

    # ---------------------------------------------------------------- params
    def params(self) -> TrainParams:
        """Build core's parameters from the widgets; GeoSegError says what is missing."""
        chips_dir = self.chipsDir.filePath().strip()
        if not chips_dir:
            raise GeoSegError("Chips folder: choose the folder written by Export training chips.")
        output = self.outputModel.filePath().strip()
        if not output:
            raise GeoSegError("Output model: choose the .pt file to write.")
        if not output.endswith(".pt"):
            raise GeoSegError(f"Output model: the file name must end in .pt (got {output}); the ONNX model is "
                              "written beside it with .onnx.")
        options = parse_model_options(self.modelOptions.text())
        return TrainParams(
            chips_dir=chips_dir,
            output_model=output,
            architecture=ARCHITECTURES[self.architecture.currentIndex()],
            epochs=self.epochs.value(),
            batch_size=self.batchSize.value(),
            learning_rate=self.learningRate.value(),
            loss=LOSSES[self.loss.currentIndex()],
            class_weights=CLASS_WEIGHTS[self.classWeights.currentIndex()],
            ignore_background=self.ignoreBackground.isChecked(),
            device=DEVICES[self.device.currentIndex()],
            seed=self.seed.value(),
            schedule=SCHEDULES[self.schedule.currentIndex()],
            patience=self.patience.value(),
            augment=self.augment.isChecked(),
            resume=self.resume.isChecked(),
            model_options=options,
        )

    def _checked_params(self) -> TrainParams:
        if not self.torch_ok:
            raise GeoSegError(TORCH_MISSING)
        p = self.params()
        if not os.path.isdir(p.chips_dir):
            raise GeoSegError(f"Chips folder: {p.chips_dir} does not exist.")
        for name in ("chips.csv", "dataset.json"):
            if not os.path.isfile(os.path.join(p.chips_dir, name)):
                raise GeoSegError(f"Chips folder: {p.chips_dir} has no {name}; choose a folder written by "
                                  "Export training chips.")
        validate(p)  # names, ranges, model options, existing outputs (never overwrite), resume state
        resolve_device(p.device)  # torch is already imported: only asks whether CUDA is there
        return p

    # ---------------------------------------------------------------- running
    def _create_task(self, p: TrainParams) -> CoreTask:
        """Clear the plot and table; epoch reports come back through a _Reporter (queued to this thread)."""
        self.history = []
        self._redraw()
        self.classTable.setRowCount(0)
        self.progress.setFormat("%p%")
        self._reporter = _Reporter()
        self._reporter.epoch.connect(self._on_epoch)
        self._reporter.batch.connect(self._on_batch)
        return CoreTask(f"GeoSeg: train {self.architecture.currentText()} → {os.path.basename(p.output_model)}",
                        train, p, self._on_success, self._on_error, report=self._reporter.report)

    def _on_batch(self, r: BatchReport) -> None:
        """Live loss in the progress bar's text."""
        if not sip.isdeleted(self):
            self.progress.setFormat(f"epoch {r.epoch}/{r.epochs} · batch {r.batch}/{r.batches} · "
                                    f"loss {r.loss:.4f} · %p%")

    def _on_epoch(self, report: EpochReport) -> None:
        """Main thread: one finished epoch → history, plot and status line."""
        if sip.isdeleted(self):
            return
        self.history.append(report)
        self._redraw()
        self._show_message(f"Epoch {report.epoch}/{report.epochs}: training loss {report.train_loss:.4f}, "
                           f"validation loss {report.val_loss:.4f}, validation mIoU {report.val_miou:.4f} "
                           f"(best epoch {report.best_epoch}).", error=False)

    def _redraw(self) -> None:
        epochs = [r.epoch for r in self.history]
        self.trainLine.set_data(epochs, [r.train_loss for r in self.history])
        self.valLine.set_data(epochs, [r.val_loss for r in self.history])
        self.miouLine.set_data(epochs, [r.val_miou for r in self.history])
        for ax in (self.lossAxes, self.miouAxes):
            ax.relim()
            ax.autoscale_view()
        self.canvas.draw_idle()

    def _fill_class_table(self, per_class_iou: dict[str, float | None]) -> None:
        self.classTable.setRowCount(len(per_class_iou))
        for row, (name, iou) in enumerate(per_class_iou.items()):
            self.classTable.setItem(row, 0, QTableWidgetItem(str(name)))
            self.classTable.setItem(row, 1, QTableWidgetItem("—" if iou is None else f"{iou:.4f}"))

    def _success_text(self, result: TrainResult) -> str:
        arch = ARCHITECTURE_LABELS[ARCHITECTURES.index(result.card["architecture"])]
        text = (f"Trained {arch}: best validation mIoU {result.val_miou:.4f} at epoch {result.best_epoch}; "
                f"model saved to {result.model_path} (and {os.path.basename(result.onnx_path)})")
        if result.stopped_early:
            text += f"; stopped early after {result.epochs_run} epochs"
        return text

    def _show_result(self, result: TrainResult) -> None:
        if not sip.isdeleted(self):
            self._fill_class_table((result.card.get("metrics") or {}).get("per_class_iou") or {})
