"""The "Train model" dialog: widgets → core.train.TrainParams → train() in a QgsTask, with a live plot.

Thin over core on purpose: every rule about training lives in core.train so that this dialog, the
Processing algorithm and the CLI agree. The dialog checks the inputs cheaply, plots the per-epoch
reports, fills the per-class table at the end, remembers the last values and reports the outcome.
torch is imported only when the dialog is built (the plugin must load without it).
"""

from __future__ import annotations

import functools
import os
from typing import Any

from matplotlib.backends.backend_qt5agg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qgis.core import QgsApplication
from qgis.gui import QgsCollapsibleGroupBox, QgsFileWidget
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QObject, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core import options
from ..core.dataset import check_chips_folder
from ..core.ddp import per_rank_batch
from ..core.device import resolve_device
from ..core.errors import GeoSegError
from ..core.options import (
    ARCHITECTURE_LABELS,
    ARCHITECTURES,
)
from ..core.reports import BatchReport, EpochReport, TrainResult
from ..core.torchrun import train_torchrun
from ..core.train import TrainParams, train, validate
from .base_dialog import ERROR_STYLE, GeoSegDialog
from .settings import apply_defaults
from .tasks import CoreTask

SETTINGS_PREFIX = "geoseg/train/"
DEVICE_LABELS, CLASS_WEIGHT_LABELS, SCHEDULE_LABELS = (
    options.DEVICE_LABELS,
    options.CLASS_WEIGHT_LABELS,
    options.SCHEDULE_LABELS,
)  # the names are core/options.py's
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
    params_class = TrainParams

    def __init__(self, iface: Any, parent: QWidget | None = None) -> None:
        super().__init__(iface, "GeoSeg — Train model", "GeoSegTrainDialog", parent)
        self.history: list[EpochReport] = []
        self.torch_ok = False
        self._reporter: _Reporter | None = None
        self._setup()

    # ---------------------------------------------------------------- layout
    def _build(self, root: QVBoxLayout) -> None:
        self._help_label(
            root,
            "Trains a segmentation model on a chips folder written by Export training chips. The "
            "checkpoint with the best validation mIoU is saved as .pt, with the ONNX model and per-epoch "
            "metrics beside it.",
        )
        columns = QHBoxLayout()
        root.addLayout(columns)
        left = QVBoxLayout()
        columns.addLayout(left, 1)

        data = self._group(left, "Data and model")
        self.chipsDir = self._add(
            data,
            "Chips folder",
            QgsFileWidget(self),
            "chipsDir",
            "Folder written by Export training chips (chips.csv, dataset.json, images/, masks/).",
            "chips_dir",
        )
        self.chipsDir.setStorageMode(QgsFileWidget.GetDirectory)
        self.chipsDir.setDialogTitle("Chips folder")
        self.fields["chips_dir"] = self.chipsDir
        # widgets, labels, tooltips, ranges, defaults and choices from core/params.py (TrainParams)
        self.architecture = self._field(data, "architecture", "architecture", "architecture")
        self.epochs = self._field(data, "epochs", "epochs", "epochs")
        self.batchSize = self._field(data, "batch_size", "batchSize", "batch_size")
        self.learningRate = self._field(data, "learning_rate", "learningRate", "learning_rate")
        self.loss = self._field(data, "loss", "loss", "loss")
        self.device = self._field(data, "device", "device", "device")
        apply_defaults(self.device, self.batchSize)  # GeoSeg ▸ Settings; remembered values override them
        self.deviceLabel = self._add(data, "", QLabel(self), "deviceLabel", "What Auto resolves to on this machine.")
        self.deviceLabel.setWordWrap(True)
        # several GPUs: torchrun in a child process (core.torchrun); the row is shown only when there are
        self.gpus = self._add(
            data,
            "Several GPUs",
            QSpinBox(self),
            "gpus",
            "Train on this many GPUs at once: torchrun starts one process per GPU and each takes BATCH_SIZE / N "
            "chips of every batch. 1: train inside QGIS.",
        )
        self.gpus.setPrefix("Use ")
        self.gpus.setSuffix(" GPU(s)")
        self.gpusLabel = data.labelForField(self.gpus)
        self.show_gpus(0)
        self.seed = self._field(data, "seed", "seed", "seed")
        self.outputModel = self._add(
            data,
            "Output model (.pt)",
            QgsFileWidget(self),
            "outputModel",
            "Best checkpoint (.pt); the .onnx model, .metrics.csv and .last.pt (resumable "
            "state) are written beside it. GeoSeg never overwrites.",
            "output_model",
        )
        self.outputModel.setStorageMode(QgsFileWidget.SaveFile)
        self.outputModel.setFilter("*.pt")
        self.outputModel.setDialogTitle("Output model")
        self.fields["output_model"] = self.outputModel

        adv = self._group(left, "Advanced", QgsCollapsibleGroupBox)
        self.rest_form = adv  # parameters added to TrainParams without a place of their own
        self.classWeights = self._field(adv, "class_weights", "classWeights", "class_weights")
        self.ignoreBackground = self._field(adv, "ignore_background", "ignoreBackground", "ignore_background")
        self.schedule = self._field(adv, "schedule", "schedule", "schedule")
        self.weightDecay = self._field(adv, "weight_decay", "weightDecay", "weight_decay")
        self.patience = self._field(adv, "patience", "patience", "patience")
        self.augment = self._field(adv, "augment", "augment", "augment")
        # resume is deliberately not remembered: it only makes sense right after an interrupted run
        self.resume = self._field(adv, "resume", "resume")
        self.memoryBudget = self._field(adv, "memory_budget_mb", "memoryBudget", "memory_budget_mb")
        self.modelOptions = self._field(adv, "model_options", "modelOptions", "model_options")
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

        self._add_run_controls(
            root,
            "training",
            "Problems with the inputs, the epoch just finished and the outcome of the run.",
            "Train in the background.",
            "Stop training within one batch; the best checkpoint of the finished epochs stays.",
        )
        self._probe_device()

    def _probe_device(self) -> None:
        """Import torch now (not when the plugin loads) and show what "Auto" means here."""
        try:
            import torch

            cuda = torch.cuda.is_available()
            where = f"CUDA GPU ({torch.cuda.get_device_name(0)})" if cuda else "CPU (torch sees no GPU)"
            self.deviceLabel.setText(f"Auto trains on the {where}; torch {torch.__version__}.")
            self.torch_ok = True
            self.show_gpus(torch.cuda.device_count() if cuda else 0)
        except Exception:  # noqa: BLE001  (a missing or broken torch must not break the dialog)
            self.torch_ok = False
            self.deviceLabel.setText(TORCH_MISSING)
            self.deviceLabel.setStyleSheet(ERROR_STYLE)

    def show_gpus(self, count: int) -> None:
        """The "Use N GPUs" row, when torch sees more than one GPU (1 to `count`; 1, in QGIS, by default)."""
        self.gpus.setRange(1, max(1, count))
        for widget in (self.gpus, self.gpusLabel):
            if widget is not None:
                widget.setVisible(count > 1)

    def _can_run(self) -> bool:
        return self.torch_ok

    # ---------------------------------------------------------------- params
    def params(self) -> TrainParams:
        """Build core's parameters from the widgets; GeoSegError says what is missing."""
        chips_dir = self.chipsDir.filePath().strip()
        if not chips_dir:
            raise GeoSegError("Chips folder: choose the folder written by Export training chips.", param="CHIPS")
        output = self.outputModel.filePath().strip()
        if not output:
            raise GeoSegError("Output model: choose the .pt file to write.", param="OUTPUT_MODEL")
        if not output.endswith(".pt"):  # core says it too; the dialog words it for its own label
            raise GeoSegError(
                f"Output model: the file name must end in .pt (got {output}); the ONNX model is "
                "written beside it with .onnx.",
                param="OUTPUT_MODEL",
            )
        # named encoder weights are downloaded once into the QGIS profile (progress and cancel: the task's)
        cache = os.path.join(QgsApplication.qgisSettingsDirPath(), "geoseg")
        return self.params_class(chips_dir=chips_dir, output_model=output, weights_cache=cache, **self.field_values())

    def _checked_params(self) -> TrainParams:
        if not self.torch_ok:
            raise GeoSegError(TORCH_MISSING)
        p = self.params()
        check_chips_folder(p.chips_dir)  # core's own folder checks (the full dataset check runs in the task)
        validate(p)  # names, ranges, model options, existing outputs (never overwrite), resume state
        if self.gpus.value() > 1:
            per_rank_batch(p.batch_size, self.gpus.value())  # BATCH_SIZE is shared by the GPUs
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
        gpus = self.gpus.value()
        return CoreTask(
            f"GeoSeg: train {self.architecture.currentText()} → {os.path.basename(p.output_model)}"
            + (f" on {gpus} GPUs" if gpus > 1 else ""),
            train if gpus <= 1 else functools.partial(train_torchrun, processes=gpus),
            p,
            self._on_success,
            self._on_error,
            report=self._reporter.report,
        )

    def _on_batch(self, r: BatchReport) -> None:
        """Live loss in the progress bar's text."""
        if not sip.isdeleted(self):
            self.progress.setFormat(
                f"epoch {r.epoch}/{r.epochs} · batch {r.batch}/{r.batches} · " f"loss {r.loss:.4f} · %p%"
            )

    def _on_epoch(self, report: EpochReport) -> None:
        """Main thread: one finished epoch → history, plot and status line."""
        if sip.isdeleted(self):
            return
        self.history.append(report)
        self._redraw()
        self._show_message(
            f"Epoch {report.epoch}/{report.epochs}: training loss {report.train_loss:.4f}, "
            f"validation loss {report.val_loss:.4f}, validation mIoU {report.val_miou:.4f} "
            f"(best epoch {report.best_epoch}).",
            error=False,
        )

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
        arch = ARCHITECTURE_LABELS[ARCHITECTURES.index(result.card.architecture)]
        text = (
            f"Trained {arch}: best validation mIoU {result.val_miou:.4f} at epoch {result.best_epoch}; "
            f"model saved to {result.model_path} (and {os.path.basename(result.onnx_path)})"
        )
        if result.stopped_early:
            text += f"; stopped early after {result.epochs_run} epochs"
        return text

    def _show_result(self, result: TrainResult) -> None:
        if not sip.isdeleted(self):
            self._fill_class_table((result.card.metrics.per_class_iou if result.card.metrics else None) or {})
