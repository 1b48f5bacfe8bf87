"""The "Assess accuracy" dialog: class map + reference (raster, or polygons with a class field) →
core.assess.AssessParams → assess() in a QgsTask; the figures and a per-class table are shown after the run.

Thin over core on purpose: the confusion matrix, the metrics and both reports live in core.assess so
that this dialog, the Processing algorithm and the CLI agree. The dialog turns layers into paths,
checks the inputs cheaply, and shows what core wrote (the JSON report holds the per-class figures
with the class names of the prediction raster).
"""

from __future__ import annotations

import json
import os
from typing import Any

from qgis.core import QgsFieldProxyModel, QgsMapLayerProxyModel, QgsRasterLayer, QgsSettings, QgsVectorLayer
from qgis.gui import QgsFieldComboBox, QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QUrl
from qgis.PyQt.QtGui import QDesktopServices
from qgis.PyQt.QtWidgets import (
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..adapter.layers import raster_source, vector_source
from ..core.assess import AssessParams, AssessResult, assess, validate
from ..core.errors import GeoSegError
from .base_dialog import GeoSegDialog
from .tasks import CoreTask

SETTINGS_PREFIX = "geoseg/assess/"
CLASS_FIELD_KEY = "class_field"  # remembered by name: a combo index means nothing for another layer
TABLE_COLUMNS = ("Class", "Value", "Precision %", "Recall %", "F1 %", "IoU %", "Reference pixels")


def pct(value: float | None) -> str:
    """A fraction as a percentage with two decimals; undefined (None) as "—", like the HTML report."""
    return "—" if value is None else f"{100 * value:.2f}"


class AssessDialog(GeoSegDialog):
    """Non-modal dialog; the assessment runs in the task manager so QGIS stays responsive."""

    settings_prefix = SETTINGS_PREFIX
    params_class = AssessParams
    last_result: AssessResult | None

    def __init__(self, iface: Any, parent: QWidget | None = None) -> None:
        super().__init__(iface, "GeoSeg — Assess accuracy", "GeoSegAssessDialog", parent)
        self._wanted_field = ""  # the remembered class field, chosen again when a layer has it
        self.last_report: dict | None = None  # the JSON report of the last successful run
        self._setup()

    # ---------------------------------------------------------------- layout
    def _build(self, root: QVBoxLayout) -> None:
        self._help_label(
            root,
            "Compares a class map (e.g. written by Segment raster) with reference data: a "
            "raster on the same grid, or polygons with an integer class field (pixels outside "
            "every polygon are not counted). Nodata in either is excluded. Writes a JSON and an "
            "HTML report with the confusion matrix, overall accuracy, per-class precision, "
            "recall, F1 and IoU, mean IoU and macro F1.",
        )
        inputs = self._group(root, "Inputs")
        self.predictionLayer = self._add(
            inputs,
            "Class map (prediction)",
            QgsMapLayerComboBox(self),
            "predictionLayer",
            "Single-band integer class raster to assess (a GDAL "
            "file layer, e.g. the GeoTIFF written by Segment raster).",
        )
        self.predictionLayer.setFilters(QgsMapLayerProxyModel.RasterLayer)
        self.referenceLayer = self._add(
            inputs,
            "Reference",
            QgsMapLayerComboBox(self),
            "referenceLayer",
            "The truth: a class raster on the prediction's grid (same size, pixel "
            "size, origin and CRS), or polygons with an integer class field.",
        )
        self.referenceLayer.setFilters(QgsMapLayerProxyModel.RasterLayer | QgsMapLayerProxyModel.PolygonLayer)
        self.classField = self._add(
            inputs,
            "Class field",
            QgsFieldComboBox(self),
            "classField",
            "Integer field of the reference polygons holding each polygon's class value.",
        )
        self.classField.setFilters(QgsFieldProxyModel.Int | QgsFieldProxyModel.LongLong)
        self.classField.setAllowEmptyFieldName(True)
        self.classFieldLabel = inputs.labelForField(self.classField)
        # one reference picker for both of core's reference parameters (a raster, or polygons)
        self.fields.update(
            prediction_path=self.predictionLayer,
            reference_path=self.referenceLayer,
            reference_vector=self.referenceLayer,
            class_field=self.classField,
        )

        output = self._group(root, "Output")
        self.rest_form = output  # parameters added to AssessParams without a place of their own
        self.reportFile = self._add(
            output,
            "Report (.html or .json)",
            QgsFileWidget(self),
            "reportFile",
            "Report to write: the .json and the .html are both written, beside each " "other. GeoSeg never overwrites.",
            "report_file",
        )
        self.reportFile.setStorageMode(QgsFileWidget.SaveFile)
        self.reportFile.setFilter("HTML (*.html);;JSON (*.json)")
        self.reportFile.setDialogTitle("Accuracy report")
        self.fields["report_path"] = self.reportFile

        result = self._group(root, "Result")
        self.summaryLabel = self._add(
            result,
            None,
            QLabel(self),
            "summaryLabel",
            "Overall accuracy, mean IoU and macro F1 of the last run, over the pixels "
            "with both a prediction and a reference.",
        )
        self.summaryLabel.setWordWrap(True)
        self.classTable = self._add(
            result,
            None,
            QTableWidget(0, len(TABLE_COLUMNS), self),
            "classTable",
            "Per-class precision, recall, F1 and IoU of the last run (— : never "
            "predicted), with the number of reference pixels.",
        )
        self.classTable.setHorizontalHeaderLabels(list(TABLE_COLUMNS))
        self.classTable.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        self.classTable.horizontalHeader().setSectionResizeMode(0, QHeaderView.Stretch)
        self.classTable.verticalHeader().setVisible(False)
        self.classTable.setEditTriggers(QTableWidget.NoEditTriggers)
        self.classTable.setMinimumHeight(140)
        row = QHBoxLayout()
        row.addStretch(1)
        self.openReportButton = self._button(
            row, "Open report", "openReportButton", "Open the HTML report of the last run in the web browser."
        )
        self.openReportButton.setEnabled(False)
        self.openReportButton.clicked.connect(self.open_report)
        result.addRow(row)

        self._add_run_controls(
            root,
            "assessment",
            "Problems with the inputs and the outcome of the last run.",
            "Assess the class map in the background.",
            "Stop the running assessment; no report is written.",
        )
        self.referenceLayer.layerChanged.connect(self._reference_changed)
        self._reference_changed(self.referenceLayer.currentLayer())

    def _reference_changed(self, layer: Any) -> None:
        """The class field belongs to polygon references only: shown, and filled, for them alone."""
        vector = isinstance(layer, QgsVectorLayer)
        self.classField.setLayer(layer if vector else None)
        if vector and self._wanted_field and layer.fields().indexOf(self._wanted_field) >= 0:
            self.classField.setField(self._wanted_field)
        self.classField.setVisible(vector)
        if self.classFieldLabel is not None:
            self.classFieldLabel.setVisible(vector)

    def set_layers(self, prediction: QgsRasterLayer | None, reference: Any = None) -> None:
        """Preselect the class map and the reference (scripts, tests)."""
        self.predictionLayer.setLayer(prediction)
        self.referenceLayer.setLayer(reference)

    # ---------------------------------------------------------------- params
    def params(self) -> AssessParams:
        """Build core's AssessParams from the widgets; GeoSegError says what is missing (GUI-only checks:
        a class map, a reference and a report must be chosen; every rule about them is core's `validate`)."""
        prediction = self._about(
            "PREDICTION", raster_source, self.predictionLayer.currentLayer(), "Class map (prediction)"
        )
        reference = self.referenceLayer.currentLayer()
        if reference is None:
            raise GeoSegError(
                "Reference: choose a class raster on the prediction's grid or a polygon layer.", param="REFERENCE"
            )
        report = self.reportFile.filePath().strip()
        if not report:
            raise GeoSegError(
                "Report: choose the .html or .json file to write (both are written).", param="OUTPUT_REPORT"
            )
        if isinstance(reference, QgsVectorLayer):
            return self.params_class(
                prediction_path=prediction,
                report_path=report,
                reference_vector=self._about("REFERENCE_VECTOR", vector_source, reference, self._temp_dirs),
                class_field=self.classField.currentField() or None,
                **self.field_values(),
            )
        return self.params_class(
            **self.field_values(),
            prediction_path=prediction,
            report_path=report,
            reference_path=self._about("REFERENCE", raster_source, reference, "Reference"),
        )

    def _checked_params(self) -> AssessParams:
        """`params()` plus core's cheap checks (class field, report names, never overwrite), before any work."""
        p = self.params()
        validate(p)
        return p

    # ---------------------------------------------------------------- running
    def _create_task(self, p: AssessParams) -> CoreTask:
        self._clear_result()
        return CoreTask(
            f"GeoSeg: assess {os.path.basename(p.prediction_path)} → " f"{os.path.basename(p.report_path)}",
            assess,
            p,
            self._on_success,
            self._on_error,
        )

    def _clear_result(self) -> None:
        self.last_report = None
        self.summaryLabel.setText("")
        self.classTable.setRowCount(0)
        self.openReportButton.setEnabled(False)

    def _success_text(self, result: AssessResult) -> str:
        return (
            f"Assessed over {result.pixels} pixels: overall accuracy {pct(result.overall_accuracy)} %, "
            f"mean IoU {pct(result.mean_iou)} %, macro F1 {pct(result.macro_f1)} %. "
            f"Report: {result.html_path}"
        )

    def _show_result(self, result: AssessResult) -> None:
        """The figures and the per-class table, from the JSON report core wrote (it names the classes)."""
        if sip.isdeleted(self):
            return
        with open(result.report_path, encoding="utf-8") as f:
            self.last_report = json.load(f)
        self.summaryLabel.setText(
            f"<b>Overall accuracy {pct(result.overall_accuracy)} %</b> · mean IoU {pct(result.mean_iou)} % · "
            f"macro F1 {pct(result.macro_f1)} % · {result.pixels} pixels"
        )
        classes = self.last_report["classes"]
        self.classTable.setRowCount(len(classes))
        for row, c in enumerate(classes):
            cells = (
                str(c["name"]),
                str(c["value"]),
                pct(c["precision"]),
                pct(c["recall"]),
                pct(c["f1"]),
                pct(c["iou"]),
                str(c["support"]),
            )
            for col, text in enumerate(cells):
                self.classTable.setItem(row, col, QTableWidgetItem(text))
        self.openReportButton.setEnabled(True)

    def open_report(self) -> bool:
        """Open the last HTML report with the desktop's handler for files (usually the web browser)."""
        if self.last_result is None:
            return False
        return QDesktopServices.openUrl(QUrl.fromLocalFile(self.last_result.html_path))

    # ---------------------------------------------------------------- settings
    def save_settings(self) -> None:
        super().save_settings()
        field = self.classField.currentField() if isinstance(self.referenceLayer.currentLayer(), QgsVectorLayer) else ""
        if field:
            self._wanted_field = field
            QgsSettings().setValue(self.settings_prefix + CLASS_FIELD_KEY, field)

    def restore_settings(self) -> None:
        super().restore_settings()
        self._wanted_field = QgsSettings().value(self.settings_prefix + CLASS_FIELD_KEY, "", type=str) or ""
        self._reference_changed(self.referenceLayer.currentLayer())
