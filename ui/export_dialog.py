"""The "Export training chips" dialog: widgets → core.chips.ExportParams → export_chips in a QgsTask.

Thin over core on purpose: every rule about chips lives in core.chips so that this dialog, the
Processing algorithm and the CLI agree. The dialog only turns QGIS layers into paths GDAL/OGR
can open, remembers the last values and reports the outcome.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsFieldProxyModel,
    QgsMapLayerProxyModel,
    QgsProject,
    QgsSettings,
    QgsVectorLayer,
)
from qgis.gui import QgsFieldComboBox, QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt import sip
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..core.chips import MODES, ExportParams, ExportResult, export_chips, validate
from ..core.errors import GeoSegError
from ..core.split import SPLIT_METHODS
from .sources import raster_source, vector_source
from .tasks import CoreTask

SETTINGS_PREFIX = "geoseg/export/"
MODE_LABELS = ("All", "Positive", "Divided")
SPLIT_LABELS = ("Random", "Spatial blocks")
ERROR_STYLE = "color: #c00000;"
INDEX_SUFFIX = "_index.gpkg"


def index_path_for(output_dir: str) -> str:
    """The chip index is a sibling of the output folder (core wants that folder new or empty)."""
    return os.path.normpath(output_dir) + INDEX_SUFFIX


class ExportChipsDialog(QDialog):
    """Non-modal dialog; the export runs in the task manager so QGIS stays responsive."""

    def __init__(self, iface: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.iface = iface
        self.task: CoreTask | None = None
        self.last_result: ExportResult | None = None
        self.last_error: str | None = None
        self._temp_dirs: list[str] = []
        self.setWindowTitle("GeoSeg — Export training chips")
        self.setObjectName("GeoSegExportChipsDialog")
        self._build()
        self.restore_settings()
        self._update_block_size()
        self._set_running(False)

    # ---------------------------------------------------------------- layout
    def _build(self) -> None:
        root = QVBoxLayout(self)
        help_label = QLabel(
            "Cuts a raster and label polygons into image/mask chips (GeoTIFF) for training a "
            "segmentation model, with a train/validation split, chips.csv and dataset.json.")
        help_label.setWordWrap(True)
        help_label.setObjectName("helpLabel")
        root.addWidget(help_label)

        inputs = self._group(root, "Inputs")
        self.inputLayer = self._add(inputs, "Input raster", QgsMapLayerComboBox(self), "inputLayer",
                                    "Raster to cut into image chips (a GDAL file layer, e.g. a GeoTIFF).")
        self.inputLayer.setFilters(QgsMapLayerProxyModel.RasterLayer)
        self.labelsLayer = self._add(inputs, "Label polygons", QgsMapLayerComboBox(self), "labelsLayer",
                                     "Polygons burnt into the mask chips; reprojected to the raster CRS.")
        self.labelsLayer.setFilters(QgsMapLayerProxyModel.PolygonLayer)
        self.classField = self._add(
            inputs, "Class field", QgsFieldComboBox(self), "classField",
            "Integer field with the class value (0-254) of each polygon; empty: every polygon is class 1.")
        self.classField.setFilters(QgsFieldProxyModel.Int | QgsFieldProxyModel.LongLong)
        self.classField.setAllowEmptyFieldName(True)
        self.nameField = self._add(inputs, "Class name field", QgsFieldComboBox(self), "nameField",
                                   "Optional text field naming each class, written to dataset.json.")
        self.nameField.setFilters(QgsFieldProxyModel.String)
        self.nameField.setAllowEmptyFieldName(True)
        self.labelsLayer.layerChanged.connect(self._labels_changed)
        self._labels_changed(self.labelsLayer.currentLayer())

        chips = self._group(root, "Chips")
        self.chipSize = self._add(chips, "Chip size (pixels)", self._spin(8, 8192, 256), "chipSize",
                                  "Width and height of each chip in raster pixels.")
        self.strideX = self._add(chips, "Stride X (pixels)", self._stride(), "strideX",
                                 "Horizontal step between chip origins; smaller than the chip size "
                                 "gives overlapping chips.")
        self.strideY = self._add(chips, "Stride Y (pixels)", self._stride(), "strideY",
                                 "Vertical step between chip origins; smaller than the chip size "
                                 "gives overlapping chips.")
        self.mode = self._add(chips, "Mode", QComboBox(self), "mode",
                              "All: keep every chip. Positive: only chips holding a label. "
                              "Divided: write positive/ and background/ sub-folders.")
        self.mode.addItems(MODE_LABELS)
        self.background = self._add(chips, "Background value", self._spin(0, 254, 0), "background",
                                    "Mask value outside the polygons (255 marks ignored pixels).")
        self.maxNodata = self._add(chips, "Maximum nodata fraction", self._double(0.01, 1.0, 1.0),
                                   "maxNodata", "Chips with a larger share of nodata pixels are skipped.")

        split = self._group(root, "Train / validation split")
        self.validationFraction = self._add(split, "Validation fraction", self._double(0.0, 0.99, 0.2),
                                            "validationFraction",
                                            "Share of the exported chips marked 'validation' in chips.csv.")
        self.splitMethod = self._add(split, "Split method", QComboBox(self), "splitMethod",
                                     "Random: chips drawn at random. Spatial blocks: whole square blocks "
                                     "go to validation, keeping neighbouring chips on one side.")
        self.splitMethod.addItems(SPLIT_LABELS)
        self.splitMethod.currentIndexChanged.connect(self._update_block_size)
        self.blockSize = self._add(split, "Block size (pixels)", self._spin(0, 100000, 0), "blockSize",
                                   "Side of the spatial blocks in pixels; 0: four chips.")
        self.blockSize.setSpecialValueText("default (4 chips)")
        self.seed = self._add(split, "Random seed", self._spin(0, 2147483647, 0), "seed",
                              "The same seed gives the same split.")

        output = self._group(root, "Output")
        self.outputDir = self._add(output, "Output folder", QgsFileWidget(self), "outputDir",
                                   "New or empty folder for images/, masks/, chips.csv and dataset.json; "
                                   "GeoSeg never overwrites.")
        self.outputDir.setStorageMode(QgsFileWidget.GetDirectory)
        self.outputDir.setDialogTitle("Output folder for the chips")
        self.indexCheck = QCheckBox("Write chip index (GeoPackage) and add it to the map", self)
        self.indexCheck.setObjectName("indexCheck")
        self.indexCheck.setToolTip(f"Writes the chip footprints to <output folder>{INDEX_SUFFIX}, "
                                   "next to the output folder.")
        self.indexCheck.setChecked(True)
        output.addRow(self.indexCheck)

        self.messageLabel = QLabel(self)
        self.messageLabel.setObjectName("messageLabel")
        self.messageLabel.setWordWrap(True)
        self.messageLabel.setToolTip("Problems with the inputs and the outcome of the last run.")
        root.addWidget(self.messageLabel)
        self.progress = QProgressBar(self)
        self.progress.setObjectName("progress")
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.progress.setToolTip("Progress of the running export.")
        root.addWidget(self.progress)

        buttons = QHBoxLayout()
        buttons.addStretch(1)
        self.runButton = self._button(buttons, "Run", "runButton", "Export the chips in the background.")
        self.cancelButton = self._button(buttons, "Cancel", "cancelButton",
                                         "Stop the running export; nothing is left behind.")
        self.closeButton = self._button(buttons, "Close", "closeButton",
                                        "Close the dialog; a running export goes on.")
        self.runButton.clicked.connect(self.run)
        self.cancelButton.clicked.connect(self.cancel)
        self.closeButton.clicked.connect(self.close)
        self.runButton.setDefault(True)
        root.addLayout(buttons)

    def _group(self, root: QVBoxLayout, title: str) -> QFormLayout:
        box = QGroupBox(title, self)
        form = QFormLayout(box)
        root.addWidget(box)
        return form

    def _add(self, form: QFormLayout, label: str, widget: Any, name: str, tip: str) -> Any:
        widget.setObjectName(name)
        widget.setToolTip(tip)
        form.addRow(label, widget)
        return widget

    def _spin(self, lo: int, hi: int, value: int) -> QSpinBox:
        spin = QSpinBox(self)
        spin.setRange(lo, hi)
        spin.setValue(value)
        return spin

    def _stride(self) -> QSpinBox:
        spin = self._spin(0, 8192, 0)
        spin.setSpecialValueText("= chip size")
        return spin

    def _double(self, lo: float, hi: float, value: float) -> QDoubleSpinBox:
        spin = QDoubleSpinBox(self)
        spin.setDecimals(2)
        spin.setRange(lo, hi)
        spin.setSingleStep(0.05)
        spin.setValue(value)
        return spin

    def _button(self, row: QHBoxLayout, text: str, name: str, tip: str) -> QPushButton:
        button = QPushButton(text, self)
        button.setObjectName(name)
        button.setToolTip(tip)
        button.setAutoDefault(False)
        row.addWidget(button)
        return button

    def _labels_changed(self, layer: Any) -> None:
        self.classField.setLayer(layer)
        self.nameField.setLayer(layer)

    def _update_block_size(self, *_: Any) -> None:
        self.blockSize.setEnabled(SPLIT_METHODS[self.splitMethod.currentIndex()] == "blocks")

    def _set_running(self, running: bool) -> None:
        self.runButton.setEnabled(not running)
        self.cancelButton.setEnabled(running)

    # ---------------------------------------------------------------- params
    def params(self) -> ExportParams:
        """Build core's parameters from the widgets; GeoSegError says what is missing."""
        input_path = raster_source(self.inputLayer.currentLayer())
        labels = self.labelsLayer.currentLayer()
        if labels is None:
            raise GeoSegError("Label polygons: choose a polygon layer.")
        output_dir = self.outputDir.filePath().strip()
        if not output_dir:
            raise GeoSegError("Output folder: choose a new or empty folder for the chips.")
        labels_path = vector_source(labels, self._temp_dirs)
        return ExportParams(
            input_path=input_path,
            labels_path=labels_path,
            output_dir=output_dir,
            class_field=self.classField.currentField() or None,
            name_field=self.nameField.currentField() or None,
            chip_size=self.chipSize.value(),
            stride_x=self.strideX.value() or None,
            stride_y=self.strideY.value() or None,
            mode=MODES[self.mode.currentIndex()],
            background=self.background.value(),
            max_nodata_fraction=self.maxNodata.value(),
            validation_fraction=self.validationFraction.value(),
            split_method=SPLIT_METHODS[self.splitMethod.currentIndex()],
            block_size=self.blockSize.value() or None,
            seed=self.seed.value(),
            index_path=index_path_for(output_dir) if self.indexCheck.isChecked() else None,
        )

    def validate_inputs(self) -> ExportParams | None:
        """Params when the inputs pass core's cheap checks; otherwise None and the problem shown."""
        try:
            p = self.params()
            validate(p)
            out = os.path.abspath(p.output_dir)
            if os.path.isdir(out) and os.listdir(out):
                raise GeoSegError(f"Output folder: {out} is not empty. GeoSeg never overwrites existing "
                                  "output; choose a new or empty folder.")
        except GeoSegError as e:
            self._remove_temp_dirs()
            self._show_message(str(e), error=True)
            return None
        self._show_message("", error=False)
        return p

    # ---------------------------------------------------------------- running
    def run(self) -> CoreTask | None:
        """Start the export in the task manager; returns the task (None when inputs are invalid)."""
        if self.task is not None:
            return None  # one export at a time; Run is disabled meanwhile
        p = self.validate_inputs()
        if p is None:
            return None
        self.save_settings()
        self.last_result = None
        self.last_error = None
        self.progress.setValue(0)
        task = CoreTask(f"GeoSeg: export chips to {os.path.basename(os.path.normpath(p.output_dir))}",
                        export_chips, p, self._on_success, self._on_error)
        task.progressChanged.connect(self._on_progress)
        self.task = task  # the task manager does not keep the Python wrapper alive
        self._set_running(True)
        QgsApplication.taskManager().addTask(task)
        return task

    def cancel(self) -> None:
        """Ask the running task to stop; core removes its partial output."""
        if self.task is not None:
            self.task.cancel()

    def _on_progress(self, value: float) -> None:
        if not sip.isdeleted(self):
            self.progress.setValue(int(value))

    def _on_success(self, result: ExportResult) -> None:
        self.last_result = result
        self.last_error = None
        text = (f"Exported {result.n_chips} chips ({result.n_train} train, {result.n_validation} "
                f"validation) to {result.output_dir}")
        try:
            self.iface.messageBar().pushMessage("GeoSeg", text, Qgis.Success, 10)
            if result.index_path:
                name = f"GeoSeg chips — {os.path.basename(result.output_dir)}"
                layer = QgsVectorLayer(result.index_path, name, "ogr")
                if layer.isValid():
                    QgsProject.instance().addMapLayer(layer)
        finally:  # Run must come back even if reporting failed
            self._finish(text, error=False)

    def _on_error(self, message: str) -> None:
        cancelled = self.task is not None and self.task.isCanceled()
        self.last_result = None
        self.last_error = message
        try:
            level = Qgis.Warning if cancelled else Qgis.Critical
            self.iface.messageBar().pushMessage("GeoSeg", message, level, 10 if cancelled else 0)
        finally:
            self._finish(message, error=True)

    def _finish(self, message: str, error: bool) -> None:
        self.task = None
        self._remove_temp_dirs()
        if sip.isdeleted(self):  # the plugin was unloaded while the task ran
            return
        self._show_message(message, error)
        if not error:
            self.progress.setValue(100)
        self._set_running(False)

    def closeEvent(self, event: Any) -> None:
        """Closing only hides the dialog; a running export goes on and reports when done."""
        if self.task is None:
            self._remove_temp_dirs()
        super().closeEvent(event)

    def _show_message(self, text: str, error: bool) -> None:
        self.messageLabel.setStyleSheet(ERROR_STYLE if error else "")
        self.messageLabel.setText(text)

    def _remove_temp_dirs(self) -> None:
        for folder in self._temp_dirs:
            shutil.rmtree(folder, ignore_errors=True)
        self._temp_dirs.clear()

    # ---------------------------------------------------------------- settings
    def save_settings(self) -> None:
        """Remember the values so the next export starts from them (layers are per project)."""
        s = QgsSettings()
        for key, value in self._setting_values().items():
            s.setValue(SETTINGS_PREFIX + key, value)

    def _setting_values(self) -> dict[str, Any]:
        return {
            "chip_size": self.chipSize.value(),
            "stride_x": self.strideX.value(),
            "stride_y": self.strideY.value(),
            "mode": self.mode.currentIndex(),
            "background": self.background.value(),
            "max_nodata_fraction": self.maxNodata.value(),
            "validation_fraction": self.validationFraction.value(),
            "split_method": self.splitMethod.currentIndex(),
            "block_size": self.blockSize.value(),
            "seed": self.seed.value(),
            "output_dir": self.outputDir.filePath(),
            "write_index": self.indexCheck.isChecked(),
        }

    def restore_settings(self) -> None:
        """Load the values saved by the last run; absent or unreadable values keep the defaults."""
        s = QgsSettings()
        defaults = self._setting_values()
        values: dict[str, Any] = {}
        for key, default in defaults.items():
            try:
                values[key] = s.value(SETTINGS_PREFIX + key, default, type=type(default))
            except TypeError:
                values[key] = default
        self.chipSize.setValue(values["chip_size"])
        self.strideX.setValue(values["stride_x"])
        self.strideY.setValue(values["stride_y"])
        if 0 <= values["mode"] < self.mode.count():
            self.mode.setCurrentIndex(values["mode"])
        self.background.setValue(values["background"])
        self.maxNodata.setValue(values["max_nodata_fraction"])
        self.validationFraction.setValue(values["validation_fraction"])
        if 0 <= values["split_method"] < self.splitMethod.count():
            self.splitMethod.setCurrentIndex(values["split_method"])
        self.blockSize.setValue(values["block_size"])
        self.seed.setValue(values["seed"])
        self.outputDir.setFilePath(values["output_dir"])
        self.indexCheck.setChecked(values["write_index"])
